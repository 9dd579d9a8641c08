#include "proxy/pop3/pop3_session.hpp"

#include "backends/pop3_node_login.hpp"
#include "common/log.hpp"
#include "common/sasl.hpp"
#include "common/strings.hpp"
#include "proxy/pop3/pop3_command.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <array>

namespace isthmus::proxy::pop3 {
namespace {

namespace asio = boost::asio;

constexpr std::string_view kPrivacyRequired =
    "-ERR [AUTH] Plaintext authentication is disallowed on non-secure connections; use STLS.\r\n";

// Commands of the TRANSACTION state (RFC 1939): "log in first", not
// "unknown command".
bool needs_login(std::string_view keyword) {
  static constexpr std::array<std::string_view, 10> kAfterLogin{
      "STAT", "LIST", "RETR", "DELE", "RSET", "TOP", "UIDL", "LAST", "UTF8", "LANG"};
  return std::find(kAfterLogin.begin(), kAfterLogin.end(), keyword) != kAfterLogin.end();
}

}  // namespace

Pop3Session::Pop3Session(SessionRegistry& registry, asio::ip::tcp::socket client,
                         std::shared_ptr<const Runtime> runtime,
                         std::shared_ptr<const config::Listener> listener)
    : Session(registry, std::move(client), std::move(runtime), std::move(listener)),
      config_(*runtime_->config) {}

std::string Pop3Session::capabilities() const {
  std::string caps = "CAPA\r\n";
  if (plaintext_auth_allowed()) {
    caps += "USER\r\nSASL PLAIN";
    if (mechanism_offered(SaslMechanism::oauthbearer)) caps += " OAUTHBEARER";
    if (mechanism_offered(SaslMechanism::xoauth2)) caps += " XOAUTH2";
    caps += "\r\n";
  }
  if (tls_available()) caps += "STLS\r\n";
  caps += "RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nTOP\r\nUIDL\r\nIMPLEMENTATION Isthmus\r\n";
  return caps;
}

asio::awaitable<bool> Pop3Session::run() {
  bool ready = co_await begin();
  if (!ready) co_return false;
  if (!take_prelogin_slot()) {
    co_await send("-ERR [SYS/TEMP] Too many connections from your address; try again later.\r\n",
                  Deadline::after(std::chrono::seconds(5)));
    co_return false;
  }
  bool greeted = co_await reply("+OK Isthmus ready.\r\n");
  if (!greeted) co_return false;
  Next next = co_await serve_preauth();
  if (next != Next::logged_in) co_return false;
  bool handed = co_await hand_over(from_node_, in_, Deadline::after(config_.timeouts.login));
  co_return handed;
}

asio::awaitable<Pop3Session::Next> Pop3Session::serve_preauth() {
  for (;;) {
    if (stop_requested() != StopKind::none)
      co_return co_await goodbye("-ERR [SYS/TEMP] Server shutting down.\r\n",
                                 "shutdown before login");
    if (untrusted_proxy_header() || http_request_line()) co_return Next::end;
    Pop3Line line = take_line(in_, max_line());
    if (line.status == Pop3Line::Status::too_long)
      co_return co_await goodbye("-ERR Line too long.\r\n", "client protocol error: Line too long");
    if (line.status == Pop3Line::Status::need_more) {
      Next next = co_await read_client();
      if (next == Next::end) co_return Next::end;
      continue;
    }
    if (++commands_ > config_.limits.max_preauth_commands) {
      spdlog::info("session={} client={}: more than {} commands before login, disconnecting",
                   record_.id, record_.client, config_.limits.max_preauth_commands);
      co_return co_await goodbye("-ERR Too many commands before login.\r\n",
                                 "too many commands before login");
    }
    auto command = parse_command(line.text);
    OPENSSL_cleanse(line.text.data(), line.text.size());  // it may have been PASS
    if (!command) {
      Next next = co_await answer("-ERR Unknown command.\r\n");
      if (next == Next::end) co_return Next::end;
      continue;
    }
    const std::string& keyword = command->keyword;
    Next next = Next::keep_going;
    if (keyword == "CAPA") {
      next = co_await answer("+OK Capability list follows\r\n" + capabilities() + ".\r\n");
    } else if (keyword == "USER") {
      if (!plaintext_auth_allowed()) {
        next = co_await answer(std::string(kPrivacyRequired));
      } else if (command->argument.empty()) {
        next = co_await answer("-ERR USER needs a name.\r\n");
      } else {
        user_ = std::move(command->argument);
        next = co_await answer("+OK\r\n");
      }
    } else if (keyword == "PASS") {
      if (!plaintext_auth_allowed()) {
        next = co_await answer(std::string(kPrivacyRequired));
      } else if (user_.empty()) {
        next = co_await answer("-ERR No user name given; USER first.\r\n");
      } else {
        // RFC 1939: the rest of the line is the password, spaces and all.
        next = co_await log_in(std::exchange(user_, {}), {}, std::move(command->argument));
      }
    } else if (keyword == "AUTH") {
      next = co_await handle_auth(command->argument);
    } else if (keyword == "STLS") {
      next = co_await handle_stls();
    } else if (keyword == "NOOP") {
      next = co_await answer("+OK\r\n");
    } else if (keyword == "QUIT") {
      co_await reply("+OK Logging out.\r\n");
      set_ended("client logged out before login");
      co_return Next::end;
    } else if (keyword == "APOP") {
      next = co_await answer("-ERR APOP is not supported; use USER/PASS or AUTH PLAIN.\r\n");
    } else if (needs_login(keyword)) {
      next = co_await answer("-ERR Log in first.\r\n");
    } else {
      next = co_await answer("-ERR Unknown command.\r\n");
    }
    if (command) OPENSSL_cleanse(command->argument.data(), command->argument.size());
    if (next != Next::keep_going) co_return next;
  }
}

// RFC 5034: AUTH PLAIN [initial-response]; "=" is an empty response, "*"
// cancels. AUTH alone lists the mechanisms, as many servers do.
asio::awaitable<Pop3Session::Next> Pop3Session::handle_auth(const std::string& argument) {
  if (argument.empty()) {
    if (!plaintext_auth_allowed()) co_return co_await answer("+OK\r\n.\r\n");
    std::string list = "+OK\r\nPLAIN\r\n";
    if (mechanism_offered(SaslMechanism::oauthbearer)) list += "OAUTHBEARER\r\n";
    if (mechanism_offered(SaslMechanism::xoauth2)) list += "XOAUTH2\r\n";
    co_return co_await answer(list + ".\r\n");
  }
  auto sp = argument.find(' ');
  const auto mechanism = sasl_mechanism_from(argument.substr(0, sp));
  if (!mechanism || !mechanism_offered(*mechanism))
    co_return co_await answer("-ERR Unsupported authentication mechanism.\r\n");
  if (!plaintext_auth_allowed()) co_return co_await answer(std::string(kPrivacyRequired));
  std::string response;
  if (sp != std::string::npos) {
    response = argument.substr(sp + 1);
    if (response == "=") response.clear();
  } else {
    bool asked = co_await reply("+ \r\n");
    if (!asked) co_return Next::end;
    auto line = co_await read_line();
    if (!line) co_return Next::end;
    if (*line == "*") co_return co_await answer("-ERR Authentication cancelled.\r\n");
    response = std::move(*line);
  }
  auto decoded = response.empty() ? std::optional<std::string>("") : decode_base64(response);
  OPENSSL_cleanse(response.data(), response.size());
  if (!decoded) co_return co_await answer("-ERR Invalid base64 data.\r\n");
  if (is_oauth(*mechanism)) {
    auto bearer = *mechanism == SaslMechanism::oauthbearer ? parse_oauthbearer(*decoded)
                                                           : parse_xoauth2(*decoded);
    OPENSSL_cleanse(decoded->data(), decoded->size());
    if (!bearer)
      co_return co_await answer(fmt::format("-ERR Invalid {} message.\r\n", name_of(*mechanism)));
    co_return co_await log_in(std::move(bearer->user), {}, std::move(bearer->token), *mechanism);
  }
  auto plain = parse_sasl_plain(*decoded);
  OPENSSL_cleanse(decoded->data(), decoded->size());
  if (!plain) co_return co_await answer("-ERR Invalid SASL PLAIN message.\r\n");
  co_return co_await log_in(std::move(plain->authcid), std::move(plain->authzid),
                            std::move(plain->password));
}

asio::awaitable<Pop3Session::Next> Pop3Session::handle_stls() {
  if (client_.is_tls()) co_return co_await answer("-ERR TLS is already active.\r\n");
  if (!tls_available()) co_return co_await answer("-ERR STLS is not available.\r\n");
  bool sent = co_await reply("+OK Begin TLS negotiation now.\r\n");
  if (!sent) co_return Next::end;
  bool secured = co_await start_tls();
  if (!secured) co_return Next::end;
  user_.clear();  // RFC 2595: forget what was said before TLS
  co_return Next::keep_going;
}

asio::awaitable<Pop3Session::Next> Pop3Session::log_in(std::string user, std::string authzid,
                                                       std::string password,
                                                       SaslMechanism mechanism) {
  LoginRequest request;
  request.protocol = config::Protocol::pop3;
  request.login_name = std::move(user);
  request.authzid = std::move(authzid);
  request.password = std::move(password);
  request.mechanism = mechanism;
  const Deadline deadline = Deadline::after(config_.timeouts.login);
  const auto started = Clock::now();
  LoginOutcome outcome =
      co_await log_in_island(std::move(request), backends::log_in_pop3, deadline);

  if (outcome.failure == Failure::none) {
    from_node_ = std::move(outcome.node_result.pending);
    bool sent = co_await send("+OK Logged in.\r\n", deadline);
    co_return sent ? Next::logged_in : Next::end;
  }

  const auto& policy = policy_of(outcome.failure);
  std::string text;
  if (policy.answer == ClientAnswer::auth_failed || policy.answer == ClientAnswer::authz_failed) {
    // The same answer, at the same time after the command, for a wrong
    // password and an unknown user (RFC 3206 [AUTH]).
    co_await pause_until(started + auth_failure_delay());
    if (is_oauth(mechanism)) {
      // RFC 7628 section 3.2.2 (as in IMAP): the error as a challenge first.
      bool asked = co_await reply(fmt::format("+ {}\r\n", oauth_failure_challenge()));
      if (!asked) co_return Next::end;
      auto dummy = co_await read_line();
      if (!dummy) co_return Next::end;
    }
    text = "-ERR [AUTH] Authentication failed.\r\n";
  } else if (policy.answer == ClientAnswer::in_use) {
    text = "-ERR [IN-USE] Mailbox is in use, please try again later.\r\n";
  } else if (policy.answer == ClientAnswer::login_delay) {
    text = "-ERR [LOGIN-DELAY] Logging in too often, please wait before trying again.\r\n";
  } else {
    text = "-ERR [SYS/TEMP] Service temporarily unavailable, please try again later.\r\n";
  }
  co_return co_await answer(text);
}

asio::awaitable<std::optional<std::string>> Pop3Session::read_line() {
  for (;;) {
    Pop3Line line = take_line(in_, max_line());
    if (line.status == Pop3Line::Status::line) co_return std::move(line.text);
    if (line.status == Pop3Line::Status::too_long) {
      co_await goodbye("-ERR Line too long.\r\n", "client protocol error: Line too long");
      co_return std::nullopt;
    }
    Next next = co_await read_client();
    if (next == Next::end) co_return std::nullopt;
  }
}

asio::awaitable<Pop3Session::Next> Pop3Session::read_client() {
  auto ec = co_await read_more(preauth_deadline_);
  if (!ec) co_return Next::keep_going;
  if (stop_requested() != StopKind::none)
    co_return co_await goodbye("-ERR [SYS/TEMP] Server shutting down.\r\n",
                               "shutdown before login");
  if (ec == asio::error::timed_out)
    co_return co_await goodbye("-ERR Disconnected for inactivity.\r\n", "pre-auth timeout");
  set_ended(ec == asio::error::eof ? "client closed before login" : "client connection lost");
  co_return Next::end;
}

asio::awaitable<Pop3Session::Next> Pop3Session::answer(std::string text) {
  bool sent = co_await reply(text);
  co_return sent ? Next::keep_going : Next::end;
}

asio::awaitable<Pop3Session::Next> Pop3Session::goodbye(std::string text, std::string ended) {
  set_ended(std::move(ended));
  co_await send(text, Deadline::after(std::chrono::seconds(5)));
  co_return Next::end;
}

}  // namespace isthmus::proxy::pop3
