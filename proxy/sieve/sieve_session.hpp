#pragma once
// One ManageSieve client connection (RFC 5804), from greeting to login:
// PROXY header and implicit TLS (Session::begin), the capability greeting,
// the non-authenticated state (CAPABILITY, STARTTLS, AUTHENTICATE with
// PLAIN, OAUTHBEARER or XOAUTH2, NOOP, LOGOUT), login through the island's
// node; then the session is handed to the relay, and the client manages its
// scripts on the node (PUTSCRIPT, SETACTIVE, ...) through it.

#include "common/managesieve.hpp"
#include "proxy/login_proxy.hpp"
#include "proxy/session.hpp"

namespace isthmus::proxy::sieve {

class SieveSession final : public Session {
 public:
  SieveSession(SessionRegistry& registry, boost::asio::ip::tcp::socket client,
               std::shared_ptr<const Runtime> runtime,
               std::shared_ptr<const config::Listener> listener);

  // True when logged in to a node and ready to relay; false when over.
  boost::asio::awaitable<bool> run();

 private:
  enum class Next : std::uint8_t { keep_going, logged_in, end };

  // The capability lines and the OK that ends them (greeting, CAPABILITY,
  // after STARTTLS).
  std::string capabilities() const;
  boost::asio::awaitable<Next> serve_preauth();
  boost::asio::awaitable<Next> handle_authenticate(std::vector<std::string>& arguments);
  boost::asio::awaitable<Next> handle_starttls();
  boost::asio::awaitable<Next> log_in(std::string user, std::string authzid, std::string password,
                                      SaslMechanism mechanism);
  // The next complete line from the client, parsed (a SASL response is a
  // lone string), or nullopt if the session ended.
  boost::asio::awaitable<std::optional<managesieve::Parsed>> read_parsed();
  // The line at the front of in_, parsed only when that can give a new
  // answer (managesieve::ParseGate); a complete or bad line is consumed.
  managesieve::Parsed next_line();
  boost::asio::awaitable<Next> read_client();
  boost::asio::awaitable<Next> answer(std::string text);
  boost::asio::awaitable<Next> goodbye(std::string text, std::string ended);
  boost::asio::awaitable<bool> reply(std::string_view text) { return send(text, preauth_deadline_); }

  const config::Config& config_;
  std::size_t commands_ = 0;
  managesieve::ParseGate gate_;
  std::string from_node_;  // what the node sent after its login answer
};

}  // namespace isthmus::proxy::sieve
