#include "proxy/imap/imap_session.hpp"

#include "backends/imap_node_login.hpp"
#include "common/log.hpp"
#include "common/sasl.hpp"
#include "common/strings.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <array>
#include <charconv>

namespace isthmus::proxy::imap {
namespace {

namespace asio = boost::asio;

// Commands of the authenticated and selected states (RFC 3501 section 6,
// and common extensions): before login they get "log in first", not
// "unknown command", so a confused client learns what is wrong.
bool needs_login(std::string_view name) {
  static constexpr std::array<std::string_view, 27> kAfterLogin{
      "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
      "LIST", "LSUB", "STATUS", "APPEND", "CHECK", "CLOSE", "EXPUNGE", "SEARCH", "FETCH",
      "STORE", "COPY", "MOVE", "UID", "IDLE", "ENABLE", "NAMESPACE", "GETQUOTA",
      "GETQUOTAROOT", "UNSELECT", "GETMETADATA"};
  return std::find(kAfterLogin.begin(), kAfterLogin.end(), name) != kAfterLogin.end();
}

// RFC 2971: at most 30 field-value pairs, fields up to 30 octets, values up
// to 1024 octets.
bool valid_id_arguments(const std::vector<Token>& args) {
  if (args.size() == 1 && args[0].is_nil()) return true;
  if (args.size() < 2 || args.front().kind != Token::Kind::list_open ||
      args.back().kind != Token::Kind::list_close)
    return false;
  std::size_t items = args.size() - 2;
  if (items % 2 != 0 || items / 2 > 30) return false;
  for (std::size_t i = 1; i + 1 < args.size(); i += 2) {
    const Token& field = args[i];
    const Token& value = args[i + 1];
    if (!field.is_string() || field.value.size() > 30) return false;
    if (!(value.is_string() || value.is_nil()) || value.value.size() > 1024) return false;
  }
  return true;
}

}  // namespace

ImapSession::ImapSession(SessionRegistry& registry, asio::ip::tcp::socket client,
                         std::shared_ptr<const Runtime> runtime,
                         std::shared_ptr<const config::Listener> listener)
    : Session(registry, std::move(client), std::move(runtime), std::move(listener)),
      config_(*runtime_->config),
      parser_(ParseLimits{config_.limits.max_line, config_.limits.max_literal}) {
  parser_ = CommandParser(ParseLimits{max_line(), config_.limits.max_literal});
}

std::string ImapSession::capabilities() const {
  // No LOGIN-REFERRALS: a node's referral is not forwarded (RFC 2221).
  std::string caps = "IMAP4rev1 SASL-IR ID LITERAL+";
  if (tls_available()) caps += " STARTTLS";
  // RFC 3501 section 6.2.3: LOGINDISABLED when LOGIN would be refused.
  caps += plaintext_auth_allowed() ? " AUTH=PLAIN" : " LOGINDISABLED";
  if (plaintext_auth_allowed()) {
    if (mechanism_offered(SaslMechanism::oauthbearer)) caps += " AUTH=OAUTHBEARER";
    if (mechanism_offered(SaslMechanism::xoauth2)) caps += " AUTH=XOAUTH2";
  }
  return caps;
}

asio::awaitable<bool> ImapSession::run() {
  bool ready = co_await begin();
  if (!ready) co_return false;
  if (!take_prelogin_slot()) {
    co_await send("* BYE Too many connections from your address; try again later.\r\n",
                  Deadline::after(std::chrono::seconds(5)));
    co_return false;
  }
  bool greeted =
      co_await reply(fmt::format("* OK [CAPABILITY {}] Isthmus ready.\r\n", capabilities()));
  if (!greeted) co_return false;
  Next next = co_await serve_preauth();
  if (next != Next::logged_in) co_return false;
  bool handed = co_await hand_over(from_node_, in_, Deadline::after(config_.timeouts.login));
  co_return handed;
}

asio::awaitable<ImapSession::Next> ImapSession::serve_preauth() {
  for (;;) {
    if (stop_requested() != StopKind::none)
      co_return co_await bye("Server shutting down.", "shutdown before login");
    if (untrusted_proxy_header() || http_request_line()) co_return Next::end;
    ParseResult parsed = parser_.parse(in_);
    switch (parsed.event) {
      case ParseEvent::need_more: {
        Next next = co_await read_client();
        if (next == Next::end) co_return Next::end;
        continue;
      }
      case ParseEvent::continuation: {
        bool sent = co_await reply("+ Ready for literal data\r\n");
        if (!sent) co_return Next::end;
        continue;
      }
      case ParseEvent::fatal:
        spdlog::info("session={} client={}: {}, disconnecting", record_.id, record_.client,
                     parsed.message);
        co_return co_await bye(parsed.message + ".", "client protocol error: " + parsed.message);
      case ParseEvent::bad:
      case ParseEvent::literal_refused:
        ++commands_;
        if (commands_ > config_.limits.max_preauth_commands) break;
        {
          bool sent = co_await reply(fmt::format("{} BAD {}.\r\n", parsed.tag, parsed.message));
          if (!sent) co_return Next::end;
        }
        continue;
      case ParseEvent::command: {
        ++commands_;
        if (commands_ > config_.limits.max_preauth_commands) break;
        Next next = co_await dispatch(parsed.command);
        if (next != Next::keep_going) co_return next;
        continue;
      }
    }
    spdlog::info("session={} client={}: more than {} commands before login, disconnecting",
                 record_.id, record_.client, config_.limits.max_preauth_commands);
    co_return co_await bye("Too many commands before login.", "too many commands before login");
  }
}

asio::awaitable<ImapSession::Next> ImapSession::dispatch(Command& command) {
  const std::string& name = command.name;
  const std::string& tag = command.tag;
  if (name == "LOGIN") co_return co_await handle_login(command);
  if (name == "AUTHENTICATE") co_return co_await handle_authenticate(command);
  if (name == "ID") co_return co_await handle_id(command);
  if (name == "STARTTLS") co_return co_await handle_starttls(command);
  if (name == "CAPABILITY" || name == "NOOP" || name == "LOGOUT") {
    if (!command.args.empty()) {
      co_return co_await answer(tag + " BAD Unexpected arguments.\r\n");
    }
  }
  std::string text;
  if (name == "CAPABILITY") {
    text = fmt::format("* CAPABILITY {}\r\n{} OK Pre-login capabilities listed, post-login "
                       "capabilities have more.\r\n",
                       capabilities(), tag);
  } else if (name == "NOOP") {
    text = tag + " OK NOOP completed.\r\n";
  } else if (name == "LOGOUT") {
    co_await reply("* BYE Logging out.\r\n" + tag + " OK Logout completed.\r\n");
    set_ended("client logged out before login");
    co_return Next::end;
  } else if (needs_login(name)) {
    text = tag + " BAD Log in first.\r\n";
  } else {
    text = tag + " BAD Unknown command.\r\n";
  }
  co_return co_await answer(text);
}

asio::awaitable<ImapSession::Next> ImapSession::handle_login(Command& command) {
  auto& args = command.args;
  if (args.size() != 2 || !args[0].is_astring() || !args[1].is_astring()) {
    co_return co_await answer(command.tag + " BAD Invalid arguments.\r\n");
  }
  if (!plaintext_auth_allowed()) {
    co_return co_await answer(command.tag +
                              " NO [PRIVACYREQUIRED] Plaintext authentication is disallowed on "
                              "non-secure connections; use STARTTLS.\r\n");
  }
  co_return co_await log_in(command.tag, std::move(args[0].value), {}, std::move(args[1].value));
}

asio::awaitable<ImapSession::Next> ImapSession::handle_starttls(Command& command) {
  const std::string& tag = command.tag;
  if (!command.args.empty()) co_return co_await answer(tag + " BAD Unexpected arguments.\r\n");
  if (client_.is_tls()) co_return co_await answer(tag + " BAD TLS is already active.\r\n");
  if (!tls_available()) co_return co_await answer(tag + " BAD STARTTLS is not available.\r\n");
  bool sent = co_await reply(tag + " OK Begin TLS negotiation now.\r\n");
  if (!sent) co_return Next::end;
  bool secured = co_await start_tls();
  if (!secured) co_return Next::end;
  // A fresh parser: nothing of what came before the handshake survives.
  parser_ = CommandParser(ParseLimits{max_line(), config_.limits.max_literal});
  co_return Next::keep_going;
}

// AUTHENTICATE PLAIN (RFC 4616) with or without an initial response
// (RFC 4959: "=" is an empty one); "*" cancels (RFC 3501 section 6.2.2).
asio::awaitable<ImapSession::Next> ImapSession::handle_authenticate(Command& command) {
  auto& args = command.args;
  const std::string& tag = command.tag;
  if (args.empty() || args.size() > 2 || args[0].kind != Token::Kind::atom ||
      (args.size() == 2 && args[1].kind != Token::Kind::atom)) {
    co_return co_await answer(tag + " BAD Invalid arguments.\r\n");
  }
  const auto mechanism = sasl_mechanism_from(args[0].value);
  if (!mechanism || !mechanism_offered(*mechanism)) {
    co_return co_await answer(tag + " NO Unsupported authentication mechanism.\r\n");
  }
  if (!plaintext_auth_allowed()) {
    co_return co_await answer(tag +
                              " NO [PRIVACYREQUIRED] Plaintext authentication is disallowed on "
                              "non-secure connections; use STARTTLS.\r\n");
  }
  std::string response;
  if (args.size() == 2) {
    response = args[1].value == "=" ? std::string() : std::move(args[1].value);
  } else {
    bool asked = co_await reply("+ \r\n");
    if (!asked) co_return Next::end;
    for (;;) {
      ParseResult line = parser_.parse_line(in_);
      if (line.event == ParseEvent::command) {
        response = std::move(line.message);
        break;
      }
      if (line.event == ParseEvent::fatal)
        co_return co_await bye(line.message + ".", "client protocol error: " + line.message);
      Next next = co_await read_client();
      if (next == Next::end) co_return Next::end;
    }
    if (response == "*") {
      co_return co_await answer(tag + " BAD Authentication cancelled.\r\n");
    }
  }
  auto decoded = response.empty() ? std::optional<std::string>("") : decode_base64(response);
  OPENSSL_cleanse(response.data(), response.size());
  if (!decoded) {
    co_return co_await answer(tag + " BAD Invalid base64 data.\r\n");
  }
  if (is_oauth(*mechanism)) {
    auto bearer = *mechanism == SaslMechanism::oauthbearer ? parse_oauthbearer(*decoded)
                                                           : parse_xoauth2(*decoded);
    OPENSSL_cleanse(decoded->data(), decoded->size());
    if (!bearer)
      co_return co_await answer(fmt::format("{} BAD Invalid {} message.\r\n", tag,
                                            name_of(*mechanism)));
    co_return co_await log_in(tag, std::move(bearer->user), {}, std::move(bearer->token),
                              *mechanism);
  }
  auto plain = parse_sasl_plain(*decoded);
  OPENSSL_cleanse(decoded->data(), decoded->size());
  if (!plain) co_return co_await answer(tag + " BAD Invalid SASL PLAIN message.\r\n");
  co_return co_await log_in(tag, std::move(plain->authcid), std::move(plain->authzid),
                            std::move(plain->password));
}

asio::awaitable<ImapSession::Next> ImapSession::handle_id(Command& command) {
  if (!valid_id_arguments(command.args)) {
    co_return co_await answer(command.tag + " BAD Invalid ID arguments.\r\n");
  }
  // What a client says about itself is logged, never believed, unless it is
  // a trusted proxy (e.g. another Isthmus) speaking for the client behind it.
  if (client_info_.trusted) {
    const auto before = client_info_.remote.address();
    adopt_forwarded_identity(command.args);
    // Counted from now on by the client it speaks for.
    if (client_info_.remote.address() != before && !take_prelogin_slot(/*forwarded=*/true))
      co_return co_await bye("Too many connections from your address; try again later.",
                             record_.ended);
  }
  if (spdlog::should_log(spdlog::level::debug)) {
    std::string fields;
    for (std::size_t i = 1; i + 2 < command.args.size(); i += 2)
      fields += fmt::format(" {}={}", sanitize(command.args[i].value, 30),
                            sanitize(command.args[i + 1].value, 100));
    spdlog::debug("session={} client ID:{}", record_.id, fields.empty() ? " NIL" : fields);
  }
  auto text = fmt::format("* ID (\"name\" \"Isthmus\")\r\n{} OK ID completed.\r\n", command.tag);
  co_return co_await answer(text);
}

void ImapSession::adopt_forwarded_identity(const std::vector<Token>& args) {
  auto number = [](const std::string& text, unsigned max) -> std::optional<unsigned> {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value > max) return std::nullopt;
    return value;
  };
  for (std::size_t i = 1; i + 2 < args.size(); i += 2) {
    const std::string field = ascii_lowercase(args[i].value);
    const std::string& value = args[i + 1].value;
    boost::system::error_code ec;
    if (field == "x-originating-ip") {
      auto address = asio::ip::make_address(value, ec);
      if (!ec) client_info_.remote.address(address);
    } else if (field == "x-originating-port") {
      if (auto port = number(value, 65535)) client_info_.remote.port(static_cast<std::uint16_t>(*port));
    } else if (field == "x-connected-ip") {
      auto address = asio::ip::make_address(value, ec);
      if (!ec) client_info_.local.address(address);
    } else if (field == "x-connected-port") {
      if (auto port = number(value, 65535)) client_info_.local.port(static_cast<std::uint16_t>(*port));
    } else if (field == "x-proxy-ttl") {
      if (auto ttl = number(value, 1000)) ttl_ = std::max(*ttl, 1U);
    }
  }
  record_.client = format_endpoint(client_info_.remote);
}

asio::awaitable<ImapSession::Next> ImapSession::log_in(const std::string& tag, std::string user,
                                                       std::string authzid, std::string password,
                                                       SaslMechanism mechanism) {
  LoginRequest request;
  request.protocol = config::Protocol::imap;
  request.login_name = std::move(user);
  request.authzid = std::move(authzid);
  request.password = std::move(password);
  request.mechanism = mechanism;
  request.ttl = ttl_;
  const Deadline deadline = Deadline::after(config_.timeouts.login);
  const auto started = Clock::now();
  LoginOutcome outcome =
      co_await log_in_island(std::move(request), backends::log_in_imap, deadline);

  if (outcome.failure == Failure::none) {
    const auto& caps = outcome.node_result.capabilities;
    std::string ok = caps.empty() ? tag + " OK Logged in\r\n"
                                      : fmt::format("{} OK [CAPABILITY {}] Logged in\r\n", tag, caps);
    from_node_ = std::move(outcome.node_result.pending);
    bool sent = co_await send(ok, deadline);
    co_return sent ? Next::logged_in : Next::end;
  }

  const auto& policy = policy_of(outcome.failure);
  std::string text;
  if (policy.answer == ClientAnswer::auth_failed) {
    // The same answer, at the same time after the command, whether the
    // password was wrong (the node took its time) or the user unknown (no
    // node asked): no way to probe which names exist, as long as the delay
    // is longer than a node takes to refuse.
    co_await pause_until(started + auth_failure_delay());
    if (is_oauth(mechanism)) {
      // RFC 7628 section 3.2.2: the error as a last challenge, the client's
      // dummy answer, then the failure.
      bool asked = co_await reply(fmt::format("+ {}\r\n", oauth_failure_challenge()));
      if (!asked) co_return Next::end;
      for (;;) {
        ParseResult line = parser_.parse_line(in_);
        if (line.event == ParseEvent::command) break;
        if (line.event == ParseEvent::fatal)
          co_return co_await bye(line.message + ".", "client protocol error: " + line.message);
        Next next = co_await read_client();
        if (next == Next::end) co_return Next::end;
      }
    }
    text = tag + " NO [AUTHENTICATIONFAILED] Authentication failed.\r\n";
  } else if (policy.answer == ClientAnswer::authz_failed) {
    co_await pause_until(started + auth_failure_delay());
    text = tag + " NO [AUTHORIZATIONFAILED] Authorization failed.\r\n";
  } else if (policy.answer == ClientAnswer::in_use) {
    text = tag + " NO [INUSE] Mailbox is in use, please try again later.\r\n";
  } else {
    text = tag + " NO [UNAVAILABLE] Service temporarily unavailable, please try again later.\r\n";
  }
  co_return co_await answer(text);
}

asio::awaitable<ImapSession::Next> ImapSession::read_client() {
  auto ec = co_await read_more(preauth_deadline_);
  if (!ec) co_return Next::keep_going;
  if (stop_requested() != StopKind::none)
    co_return co_await bye("Server shutting down.", "shutdown before login");
  if (ec == asio::error::timed_out)
    co_return co_await bye("Disconnected for inactivity.", "pre-auth timeout");
  set_ended(ec == asio::error::eof ? "client closed before login" : "client connection lost");
  co_return Next::end;
}

asio::awaitable<ImapSession::Next> ImapSession::answer(std::string text) {
  bool sent = co_await reply(text);
  co_return sent ? Next::keep_going : Next::end;
}

asio::awaitable<ImapSession::Next> ImapSession::bye(std::string_view text, std::string ended) {
  set_ended(std::move(ended));
  co_await send(fmt::format("* BYE {}\r\n", text), Deadline::after(std::chrono::seconds(5)));
  co_return Next::end;
}

}  // namespace isthmus::proxy::imap
