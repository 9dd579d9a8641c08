#include "proxy/sieve/sieve_session.hpp"

#include "backends/sieve_node_login.hpp"
#include "common/log.hpp"
#include "common/sasl.hpp"
#include "common/strings.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <array>

namespace isthmus::proxy::sieve {
namespace {

namespace asio = boost::asio;


constexpr std::string_view kEncryptNeeded =
    "NO (ENCRYPT-NEEDED) \"Plaintext authentication is disallowed on non-secure connections; "
    "use STARTTLS.\"\r\n";

// Commands of the authenticated state (RFC 5804 section 2): "log in
// first", not "unknown command".
bool needs_login(std::string_view name) {
  static constexpr std::array<std::string_view, 11> kAfterLogin{
      "HAVESPACE", "PUTSCRIPT", "LISTSCRIPTS", "SETACTIVE", "GETSCRIPT", "DELETESCRIPT",
      "RENAMESCRIPT", "CHECKSCRIPT", "UNAUTHENTICATE", "GETMETADATA", "SETMETADATA"};
  return std::find(kAfterLogin.begin(), kAfterLogin.end(), name) != kAfterLogin.end();
}

void cleanse(std::vector<std::string>& strings) {
  for (auto& s : strings) OPENSSL_cleanse(s.data(), s.size());
}

}  // namespace

SieveSession::SieveSession(SessionRegistry& registry, asio::ip::tcp::socket client,
                           std::shared_ptr<const Runtime> runtime,
                           std::shared_ptr<const config::Listener> listener)
    : Session(registry, std::move(client), std::move(runtime), std::move(listener)),
      config_(*runtime_->config) {}

std::string SieveSession::capabilities() const {
  std::string caps = "\"IMPLEMENTATION\" \"Isthmus\"\r\n";
  std::string sasl;
  if (plaintext_auth_allowed()) {
    sasl = "PLAIN";
    if (mechanism_offered(SaslMechanism::oauthbearer)) sasl += " OAUTHBEARER";
    if (mechanism_offered(SaslMechanism::xoauth2)) sasl += " XOAUTH2";
  }
  caps += "\"SASL\" " + managesieve::quoted(sasl) + "\r\n";
  caps += "\"SIEVE\" " + managesieve::quoted(config_.managesieve.sieve_extensions) + "\r\n";
  if (!config_.managesieve.notify_methods.empty())
    caps += "\"NOTIFY\" " + managesieve::quoted(config_.managesieve.notify_methods) + "\r\n";
  if (config_.managesieve.max_redirects != 0)
    caps += fmt::format("\"MAXREDIRECTS\" \"{}\"\r\n", config_.managesieve.max_redirects);
  if (tls_available()) caps += "\"STARTTLS\"\r\n";
  caps += "\"VERSION\" \"1.0\"\r\nOK \"Isthmus ready.\"\r\n";
  return caps;
}

asio::awaitable<bool> SieveSession::run() {
  bool ready = co_await begin();
  if (!ready) co_return false;
  if (!take_prelogin_slot()) {
    co_await send("BYE (TRYLATER) \"Too many connections from your address; try again later.\"\r\n",
                  Deadline::after(std::chrono::seconds(5)));
    co_return false;
  }
  bool greeted = co_await reply(capabilities());
  if (!greeted) co_return false;
  Next next = co_await serve_preauth();
  if (next != Next::logged_in) co_return false;
  bool handed = co_await hand_over(from_node_, in_, Deadline::after(config_.timeouts.login));
  co_return handed;
}

asio::awaitable<SieveSession::Next> SieveSession::serve_preauth() {
  for (;;) {
    if (stop_requested() != StopKind::none)
      co_return co_await goodbye("BYE (TRYLATER) \"Server shutting down.\"\r\n",
                                 "shutdown before login");
    if (untrusted_proxy_header() || http_request_line()) co_return Next::end;
    auto parsed = next_line();
    if (parsed.status == managesieve::Status::too_long)
      co_return co_await goodbye("BYE \"Line too long.\"\r\n",
                                 "client protocol error: Line too long");
    if (parsed.status == managesieve::Status::need_more) {
      Next next = co_await read_client();
      if (next == Next::end) co_return Next::end;
      continue;
    }
    if (++commands_ > config_.limits.max_preauth_commands) {
      spdlog::info("session={} client={}: more than {} commands before login, disconnecting",
                   record_.id, record_.client, config_.limits.max_preauth_commands);
      co_return co_await goodbye("BYE \"Too many commands before login.\"\r\n",
                                 "too many commands before login");
    }
    if (parsed.status == managesieve::Status::bad) {
      spdlog::debug("session={} client={}: bad command line: {}", record_.id, record_.client,
                    parsed.error);
      Next next = co_await answer("NO " + managesieve::quoted("Syntax error: " + parsed.error + ".") + "\r\n");
      if (next == Next::end) co_return Next::end;
      continue;
    }
    auto command = managesieve::to_command(parsed.items);
    if (!command) {
      Next next = co_await answer("NO \"Syntax error: a command name and strings expected.\"\r\n");
      if (next == Next::end) co_return Next::end;
      continue;
    }
    const std::string& name = command->name;
    Next next = Next::keep_going;
    if (name == "CAPABILITY") {
      next = co_await answer(capabilities());
    } else if (name == "AUTHENTICATE") {
      next = co_await handle_authenticate(command->arguments);
    } else if (name == "STARTTLS") {
      next = co_await handle_starttls();
    } else if (name == "NOOP") {
      // RFC 5804 section 2.13: an argument comes back as the TAG code.
      if (command->arguments.empty())
        next = co_await answer("OK \"Done.\"\r\n");
      else
        next = co_await answer("OK (TAG " +
                               managesieve::string_item(command->arguments.front(), false) +
                               ") \"Done.\"\r\n");
    } else if (name == "LOGOUT") {
      co_await reply("OK \"Logout completed.\"\r\n");
      set_ended("client logged out before login");
      co_return Next::end;
    } else if (needs_login(name)) {
      next = co_await answer("NO \"Log in first.\"\r\n");
    } else {
      next = co_await answer("NO \"Unknown command.\"\r\n");
    }
    cleanse(command->arguments);
    if (next != Next::keep_going) co_return next;
  }
}

// RFC 5804 section 2.1: AUTHENTICATE "mechanism" [initial-response]; without
// one, the server sends an empty challenge ("") and the client a string;
// "*" cancels.
asio::awaitable<SieveSession::Next> SieveSession::handle_authenticate(
    std::vector<std::string>& arguments) {
  if (arguments.empty() || arguments.size() > 2)
    co_return co_await answer("NO \"AUTHENTICATE needs a mechanism.\"\r\n");
  const auto mechanism = sasl_mechanism_from(arguments[0]);
  if (!mechanism || !mechanism_offered(*mechanism))
    co_return co_await answer("NO \"Unsupported authentication mechanism.\"\r\n");
  if (!plaintext_auth_allowed()) co_return co_await answer(std::string(kEncryptNeeded));
  std::string response;
  if (arguments.size() == 2) {
    response = std::move(arguments[1]);
  } else {
    bool asked = co_await reply("\"\"\r\n");
    if (!asked) co_return Next::end;
    auto line = co_await read_parsed();
    if (!line) co_return Next::end;
    if (line->status == managesieve::Status::bad || line->items.size() != 1 ||
        line->items[0].kind != managesieve::Item::Kind::string)
      co_return co_await answer("NO \"Syntax error: a SASL response is one string.\"\r\n");
    response = std::move(line->items[0].text);
    if (response == "*") co_return co_await answer("NO \"Authentication cancelled.\"\r\n");
  }
  auto decoded = response.empty() ? std::optional<std::string>("") : decode_base64(response);
  OPENSSL_cleanse(response.data(), response.size());
  if (!decoded) co_return co_await answer("NO \"Invalid base64 data.\"\r\n");
  if (is_oauth(*mechanism)) {
    auto bearer = *mechanism == SaslMechanism::oauthbearer ? parse_oauthbearer(*decoded)
                                                           : parse_xoauth2(*decoded);
    OPENSSL_cleanse(decoded->data(), decoded->size());
    if (!bearer)
      co_return co_await answer(fmt::format("NO \"Invalid {} message.\"\r\n", name_of(*mechanism)));
    co_return co_await log_in(std::move(bearer->user), {}, std::move(bearer->token), *mechanism);
  }
  auto plain = parse_sasl_plain(*decoded);
  OPENSSL_cleanse(decoded->data(), decoded->size());
  if (!plain) co_return co_await answer("NO \"Invalid SASL PLAIN message.\"\r\n");
  co_return co_await log_in(std::move(plain->authcid), std::move(plain->authzid),
                            std::move(plain->password), SaslMechanism::plain);
}

// RFC 5804 section 2.2: OK, the handshake, then the capabilities again
// (what was said before TLS is forgotten).
asio::awaitable<SieveSession::Next> SieveSession::handle_starttls() {
  if (client_.is_tls()) co_return co_await answer("NO \"TLS is already active.\"\r\n");
  if (!tls_available()) co_return co_await answer("NO \"STARTTLS is not available.\"\r\n");
  bool sent = co_await reply("OK \"Begin TLS negotiation now.\"\r\n");
  if (!sent) co_return Next::end;
  bool secured = co_await start_tls();
  if (!secured) co_return Next::end;
  gate_.reset();  // what came before the handshake is gone
  co_return co_await answer(capabilities());
}

asio::awaitable<SieveSession::Next> SieveSession::log_in(std::string user, std::string authzid,
                                                         std::string password,
                                                         SaslMechanism mechanism) {
  LoginRequest request;
  request.protocol = config::Protocol::managesieve;
  request.login_name = std::move(user);
  request.authzid = std::move(authzid);
  request.password = std::move(password);
  request.mechanism = mechanism;
  const Deadline deadline = Deadline::after(config_.timeouts.login);
  const auto started = Clock::now();
  LoginOutcome outcome =
      co_await log_in_island(std::move(request), backends::log_in_managesieve, deadline);

  if (outcome.failure == Failure::none) {
    from_node_ = std::move(outcome.node_result.pending);
    bool sent = co_await send("OK \"Logged in.\"\r\n", deadline);
    co_return sent ? Next::logged_in : Next::end;
  }

  const auto& policy = policy_of(outcome.failure);
  std::string text;
  if (policy.answer == ClientAnswer::auth_failed || policy.answer == ClientAnswer::authz_failed) {
    // The same answer, at the same time after the command, for a wrong
    // password and an unknown user.
    co_await pause_until(started + auth_failure_delay());
    if (is_oauth(mechanism)) {
      // RFC 7628 section 3.2.2: the error as a challenge first; the
      // client answers it (with "AQ==") and then gets the NO.
      bool asked = co_await reply(managesieve::quoted(oauth_failure_challenge()) + "\r\n");
      if (!asked) co_return Next::end;
      auto dummy = co_await read_parsed();
      if (!dummy) co_return Next::end;
    }
    text = "NO \"Authentication failed.\"\r\n";
  } else if (policy.answer == ClientAnswer::in_use) {
    text = "NO (TRYLATER) \"Account is in use, please try again later.\"\r\n";
  } else if (policy.answer == ClientAnswer::login_delay) {
    text = "NO (TRYLATER) \"Logging in too often, please wait before trying again.\"\r\n";
  } else {
    text = "NO (TRYLATER) \"Service temporarily unavailable, please try again later.\"\r\n";
  }
  co_return co_await answer(text);
}

managesieve::Parsed SieveSession::next_line() {
  managesieve::Parsed parsed;
  if (!gate_.worth_parsing(in_)) {
    parsed.status = in_.size() > max_line() ? managesieve::Status::too_long
                                            : managesieve::Status::need_more;
    return parsed;
  }
  parsed = managesieve::parse_line(in_, max_line());
  if (parsed.status == managesieve::Status::need_more) {
    gate_.waiting(parsed, in_.size());
  } else if (parsed.status != managesieve::Status::too_long) {
    OPENSSL_cleanse(in_.data(), parsed.consumed);  // it may have held credentials
    in_.erase(0, parsed.consumed);
    gate_.reset();
  }
  return parsed;
}

asio::awaitable<std::optional<managesieve::Parsed>> SieveSession::read_parsed() {
  for (;;) {
    auto parsed = next_line();
    if (parsed.status == managesieve::Status::complete ||
        parsed.status == managesieve::Status::bad)
      co_return parsed;
    if (parsed.status == managesieve::Status::too_long) {
      co_await goodbye("BYE \"Line too long.\"\r\n", "client protocol error: Line too long");
      co_return std::nullopt;
    }
    Next next = co_await read_client();
    if (next == Next::end) co_return std::nullopt;
  }
}

asio::awaitable<SieveSession::Next> SieveSession::read_client() {
  auto ec = co_await read_more(preauth_deadline_);
  if (!ec) co_return Next::keep_going;
  if (stop_requested() != StopKind::none)
    co_return co_await goodbye("BYE (TRYLATER) \"Server shutting down.\"\r\n",
                               "shutdown before login");
  if (ec == asio::error::timed_out)
    co_return co_await goodbye("BYE \"Disconnected for inactivity.\"\r\n", "pre-auth timeout");
  set_ended(ec == asio::error::eof ? "client closed before login" : "client connection lost");
  co_return Next::end;
}

asio::awaitable<SieveSession::Next> SieveSession::answer(std::string text) {
  bool sent = co_await reply(text);
  co_return sent ? Next::keep_going : Next::end;
}

asio::awaitable<SieveSession::Next> SieveSession::goodbye(std::string text, std::string ended) {
  set_ended(std::move(ended));
  co_await send(text, Deadline::after(std::chrono::seconds(5)));
  co_return Next::end;
}

}  // namespace isthmus::proxy::sieve
