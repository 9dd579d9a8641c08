#pragma once
// OAuth 2.0 token introspection (RFC 7662) for auth.mode "directory": is
// this bearer token active, and does it belong to the user who presents
// it? One HTTPS POST per check (Boost.Beast, on the caller's executor: no
// blocking), the endpoint's certificate checked (chain and name), every
// step within the caller's deadline. The token never reaches a log line.
//
//   POST /introspect HTTP/1.1
//   Authorization: Basic base64(client_id:client_secret)     (if configured)
//   Content-Type: application/x-www-form-urlencoded
//
//   token=...&token_type_hint=access_token
//
// answered with JSON: {"active": true, "<user_claim>": "alice@...", "exp": ...}

#include "common/deadline.hpp"
#include "config/config.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>

#include <memory>
#include <string>

namespace isthmus::director {

enum class TokenCheck : std::uint8_t {
  accepted,     // active, and the claim names the user
  rejected,     // inactive (expired, revoked, unknown), or someone else's
  unavailable,  // the endpoint could not answer (a temporary failure)
};
std::string_view name_of(TokenCheck check);

struct TokenVerdict {
  TokenCheck check = TokenCheck::unavailable;
  std::string detail;           // for the log (never the token)
  Clock::duration valid_for{};  // how long an accepted verdict may be remembered
};

// What an introspection answer means for `user` (normalised): pure,
// exposed for tests. `now_unix` compares with "exp".
TokenVerdict interpret_introspection(std::string_view body, std::string_view user,
                                     const config::OAuth2& settings,
                                     const config::LoginNames& names, std::int64_t now_unix);

class OAuthIntrospector {
 public:
  // Throws config::ConfigError when the URL or the CA cannot be used.
  OAuthIntrospector(const config::OAuth2& settings, const config::LoginNames& names,
                    const std::string& source);
  ~OAuthIntrospector();

  boost::asio::awaitable<TokenVerdict> introspect(std::string token, std::string user,
                                                  Deadline deadline) const;

 private:
  config::OAuth2 settings_;
  config::LoginNames names_;
  std::string host_;
  std::string port_;
  std::string host_header_;  // host[:port], IPv6 in brackets
  std::string target_;
  std::shared_ptr<boost::asio::ssl::context> tls_;
};

}  // namespace isthmus::director
