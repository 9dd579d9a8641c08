#include "director/oauth_introspection.hpp"

#include "common/log.hpp"
#include "common/strings.hpp"
#include "director/login_name.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <openssl/ssl.h>

#include <chrono>

namespace isthmus::director {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

std::string_view name_of(TokenCheck check) {
  switch (check) {
    case TokenCheck::accepted: return "accepted";
    case TokenCheck::rejected: return "rejected";
    case TokenCheck::unavailable: return "unavailable";
  }
  return "?";
}

TokenVerdict interpret_introspection(std::string_view body, std::string_view user,
                                     const config::OAuth2& settings,
                                     const config::LoginNames& names, std::int64_t now_unix) {
  TokenVerdict verdict;
  auto json = nlohmann::json::parse(body, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    verdict.detail = "the introspection endpoint did not answer with a JSON object";
    return verdict;
  }
  auto active = json.find("active");
  if (active == json.end() || !active->is_boolean()) {
    verdict.detail = "the introspection answer has no boolean \"active\"";
    return verdict;
  }
  if (!active->get<bool>()) {
    verdict.check = TokenCheck::rejected;
    verdict.detail = "the token is not active (expired, revoked or unknown)";
    return verdict;
  }
  auto claim = json.find(settings.user_claim);
  if (claim == json.end() || !claim->is_string()) {
    verdict.check = TokenCheck::rejected;
    verdict.detail = fmt::format("the token names no user (no \"{}\" claim)",
                                 sanitize(settings.user_claim, 40));
    return verdict;
  }
  // The claim goes through the same normalisation as the login name.
  auto owner = normalise_login(claim->get<std::string>(), names);
  if (!owner || *owner != user) {
    verdict.check = TokenCheck::rejected;
    verdict.detail = fmt::format("the token belongs to {}, not to the login name",
                                 sanitize(claim->get<std::string>(), 100));
    return verdict;
  }
  // An access token, for us: a refresh or ID token, a token issued to
  // another audience or without the scope is someone else's key.
  if (auto type = json.find("token_type"); type != json.end()) {
    const std::string t = type->is_string() ? ascii_lowercase(type->get<std::string>()) : "";
    if (t != "bearer" && t != "access_token") {
      verdict.check = TokenCheck::rejected;
      verdict.detail = fmt::format("not an access token (token_type {})",
                                   sanitize(type->dump(), 40));
      return verdict;
    }
  }
  if (!settings.audience.empty()) {
    bool ours = false;
    if (auto aud = json.find("aud"); aud != json.end()) {
      if (aud->is_string()) ours = aud->get<std::string>() == settings.audience;
      if (aud->is_array())
        for (const auto& a : *aud) ours = ours || (a.is_string() && a.get<std::string>() == settings.audience);
    }
    if (!ours) {
      verdict.check = TokenCheck::rejected;
      verdict.detail = "the token was not issued for this audience (aud)";
      return verdict;
    }
  }
  if (!settings.scope.empty()) {
    bool granted = false;
    if (auto scope = json.find("scope"); scope != json.end() && scope->is_string()) {
      const std::string scopes = " " + scope->get<std::string>() + " ";
      granted = scopes.find(" " + settings.scope + " ") != std::string::npos;
    }
    if (!granted) {
      verdict.check = TokenCheck::rejected;
      verdict.detail = fmt::format("the token lacks the scope {}", sanitize(settings.scope, 40));
      return verdict;
    }
  }
  // Times are whole seconds since 1970 within a sane range; anything else
  // is the endpoint's failure, not a reason to trust the token for ever.
  constexpr std::int64_t kLatest = 253402300799;  // 9999-12-31
  auto unix_time = [](const nlohmann::json& v) -> std::optional<std::int64_t> {
    if (v.is_number_unsigned()) {
      const auto u = v.get<std::uint64_t>();
      if (u <= static_cast<std::uint64_t>(kLatest)) return static_cast<std::int64_t>(u);
      return std::nullopt;
    }
    if (v.is_number_integer()) {
      const auto i = v.get<std::int64_t>();
      if (i >= 0 && i <= kLatest) return i;
    }
    return std::nullopt;
  };
  if (auto nbf = json.find("nbf"); nbf != json.end()) {
    auto when = unix_time(*nbf);
    if (!when) {
      verdict.detail = "the introspection answer has a malformed \"nbf\"";
      return verdict;
    }
    if (*when > now_unix) {
      verdict.check = TokenCheck::rejected;
      verdict.detail = "the token is not valid yet (nbf)";
      return verdict;
    }
  }
  verdict.check = TokenCheck::accepted;
  verdict.detail = "active token of the user";
  verdict.valid_for = settings.cache_ttl;
  if (auto exp = json.find("exp"); exp != json.end()) {
    auto when = unix_time(*exp);
    if (!when) {
      verdict.check = TokenCheck::unavailable;
      verdict.detail = "the introspection answer has a malformed \"exp\"";
      verdict.valid_for = {};
      return verdict;
    }
    if (*when <= now_unix) {
      verdict.check = TokenCheck::rejected;
      verdict.detail = "the token has expired (exp)";
      verdict.valid_for = {};
      return verdict;
    }
    const auto left = std::chrono::seconds(*when - now_unix);  // at most ~8000 years: fits
    if (left < std::chrono::duration_cast<std::chrono::seconds>(verdict.valid_for))
      verdict.valid_for = left;
  }
  return verdict;
}

namespace {

std::string url_encode(std::string_view raw) {
  std::string out;
  for (unsigned char c : raw) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~')
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

}  // namespace

OAuthIntrospector::OAuthIntrospector(const config::OAuth2& settings,
                                     const config::LoginNames& names, const std::string& source)
    : settings_(settings), names_(names) {
  // https://host[:port][/path]
  std::string_view url = settings.introspection_url;
  url.remove_prefix(8);
  const auto slash = url.find('/');
  std::string_view authority = url.substr(0, slash);
  target_ = slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
  port_ = "443";
  if (!authority.empty() && authority.front() == '[') {  // [IPv6][:port]
    const auto close = authority.find(']');
    if (close != std::string_view::npos) {
      host_ = authority.substr(1, close - 1);
      if (close + 1 < authority.size()) {
        if (authority[close + 1] == ':') port_ = authority.substr(close + 2);
        else port_.clear();  // refused below
      }
    }
  } else if (const auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host_ = authority.substr(0, colon);
    port_ = authority.substr(colon + 1);
  } else {
    host_ = authority;
  }
  if (host_.empty() || authority.find('@') != std::string_view::npos ||
      port_.find_first_not_of("0123456789") != std::string::npos || port_.empty())
    throw config::ConfigError(fmt::format("{}: /auth/oauth2/introspection_url: want "
                                          "https://host[:port][/path] (no user:password@)",
                                          source));
  host_header_ = host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_;
  if (port_ != "443") host_header_ += ":" + port_;
  tls_ = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(tls_->native_handle(), TLS1_2_VERSION);
  boost::system::error_code ec;
  if (settings.ca.empty()) tls_->set_default_verify_paths(ec);
  else tls_->load_verify_file(settings.ca.string(), ec);
  if (ec)
    throw config::ConfigError(fmt::format("{}: /auth/oauth2/ca: cannot load {}: {}", source,
                                          settings.ca.empty() ? "the system CAs" : settings.ca.string(),
                                          ec.message()));
}

OAuthIntrospector::~OAuthIntrospector() = default;

asio::awaitable<TokenVerdict> OAuthIntrospector::introspect(std::string token, std::string user,
                                                             Deadline outer) const {
  TokenVerdict verdict;
  const Deadline deadline = outer.within(settings_.timeout);
  auto executor = co_await asio::this_coro::executor;
  auto fail = [&verdict](std::string what) {
    verdict.check = TokenCheck::unavailable;
    verdict.detail = "introspection: " + std::move(what);
    return verdict;
  };

  tcp::resolver resolver(executor);
  auto resolve = [&resolver, this](auto t) { return resolver.async_resolve(host_, port_, t); };
  auto [resolve_ec, endpoints] = co_await until(deadline, resolve);
  if (resolve_ec) co_return fail(fmt::format("resolving {}: {}", host_, resolve_ec.message()));

  asio::ssl::stream<tcp::socket> stream(executor, *tls_);
  boost::system::error_code ip_ec;
  asio::ip::make_address(host_, ip_ec);
  if (ip_ec)  // SNI, for a name only (SSL_set_tlsext_host_name is a C-style-casting macro)
    SSL_ctrl(stream.native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
             const_cast<char*>(host_.c_str()));
  if (settings_.verify) {
    stream.set_verify_mode(asio::ssl::verify_peer);
    X509_VERIFY_PARAM* param = SSL_get0_param(stream.native_handle());
    if (!ip_ec) X509_VERIFY_PARAM_set1_ip_asc(param, host_.c_str());
    else SSL_set1_host(stream.native_handle(), host_.c_str());
  } else {
    stream.set_verify_mode(asio::ssl::verify_none);
  }
  boost::system::error_code connect_ec = asio::error::host_unreachable;
  for (const auto& entry : endpoints) {
    auto& socket = stream.next_layer();
    boost::system::error_code ignored;
    if (socket.is_open()) socket.close(ignored);
    auto connect = [&socket, endpoint = entry.endpoint()](auto t) {
      return socket.async_connect(endpoint, t);
    };
    std::tie(connect_ec) = co_await until(deadline, connect);
    if (!connect_ec) break;
  }
  if (connect_ec) co_return fail(fmt::format("connecting to {}: {}", host_, connect_ec.message()));
  auto handshake = [&stream](auto t) {
    return stream.async_handshake(asio::ssl::stream_base::client, t);
  };
  auto [tls_ec] = co_await until(deadline, handshake);
  if (tls_ec) {
    const long result = SSL_get_verify_result(stream.native_handle());
    co_return fail(fmt::format("TLS with {}: {}", host_,
                               result != X509_V_OK
                                   ? std::string("certificate verify failed: ") +
                                         X509_verify_cert_error_string(result)
                                   : tls_ec.message()));
  }

  http::request<http::string_body> request{http::verb::post, target_, 11};
  request.set(http::field::host, host_header_);
  request.set(http::field::user_agent, "Isthmus");
  request.set(http::field::accept, "application/json");
  request.set(http::field::content_type, "application/x-www-form-urlencoded");
  if (!settings_.client_id.empty())
    request.set(http::field::authorization,
                "Basic " + encode_base64(settings_.client_id + ":" + settings_.client_secret));
  request.body() = "token=" + url_encode(token) + "&token_type_hint=access_token";
  request.prepare_payload();
  auto write = [&stream, &request](auto t) { return http::async_write(stream, request, t); };
  auto [write_ec, written] = co_await until(deadline, write);
  (void)written;
  if (write_ec) co_return fail("sending the request: " + write_ec.message());

  boost::beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024);
  auto read = [&stream, &buffer, &parser](auto t) { return http::async_read(stream, buffer, parser, t); };
  auto [read_ec, got] = co_await until(deadline, read);
  (void)got;
  if (read_ec) co_return fail("reading the answer: " + read_ec.message());
  const auto& response = parser.get();
  if (response.result() != http::status::ok)
    co_return fail(fmt::format("the endpoint answered HTTP {}", response.result_int()));
  const auto now_unix = std::chrono::duration_cast<std::chrono::seconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
  co_return interpret_introspection(response.body(), user, settings_, names_, now_unix);
}

}  // namespace isthmus::director
