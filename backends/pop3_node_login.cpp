#include "backends/pop3_node_login.hpp"

#include "common/line_reader.hpp"
#include "common/log.hpp"
#include "common/sasl.hpp"
#include "common/strings.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>

namespace isthmus::backends {
namespace {

constexpr std::size_t kMaxNodeLine = 64 * 1024;
// RFC 2449 section 4: a command line is at most 255 octets with its CRLF;
// RFC 5034 section 4: an initial response that would make AUTH longer
// goes after the server's "+" continuation instead.
constexpr std::size_t kMaxCommandLine = 255;

bool is_ok(std::string_view line) { return line.substr(0, 3) == "+OK"; }
bool is_err(std::string_view line) { return line.substr(0, 4) == "-ERR"; }

class Pop3NodeLogin {
 public:
  Pop3NodeLogin(Transport& node, const NodeLoginParams& params)
      : node_(node), params_(params), reader_(kMaxNodeLine) {}

  boost::asio::awaitable<NodeLoginResult> run() {
    bool ok = co_await read_greeting();
    if (ok && params_.tls.mode == config::TlsMode::starttls) ok = co_await start_tls();
    if (ok) ok = co_await read_capabilities();
    if (ok && xclient_) ok = co_await send_identity();
    if (ok && is_oauth(params_.credentials.mechanism)) ok = co_await authenticate();
    else if (ok && sasl_plain_) ok = co_await authenticate();
    else if (ok) ok = co_await user_pass();
    if (ok) result_.pending = reader_.take_buffered();
    co_return std::move(result_);
  }

 private:
  void fail(Failure failure, std::string detail) {
    result_.failure = failure;
    result_.detail = std::move(detail);
  }

  boost::asio::awaitable<std::optional<std::string>> line(const char* while_doing) {
    const Deadline deadline = greeted_ ? params_.deadline : params_.greeting;
    auto read = co_await reader_.read_line(node_, deadline);
    if (read.status == ReadStatus::ok) co_return std::move(read.line);
    Failure failure = read.status == ReadStatus::timeout    ? Failure::node_timeout
                      : read.status == ReadStatus::too_long ? Failure::node_protocol
                                                            : Failure::node_closed;
    fail(failure, fmt::format("{} while {}",
                              read.status == ReadStatus::timeout ? "no answer in time"
                              : read.status == ReadStatus::too_long ? "line too long"
                                                                    : "connection closed",
                              while_doing));
    co_return std::nullopt;
  }

  // `client_bytes`: the text carries bytes the client chose (its name or
  // password); from then on a failure is the login's own, not the node's.
  boost::asio::awaitable<bool> send(std::string_view text, const char* while_doing,
                                    bool client_bytes = false) {
    // A node speaks only when spoken to (see imap_node_login.cpp).
    if (!reader_.buffer().empty()) {
      fail(Failure::node_protocol,
           fmt::format("the node sent {} bytes nobody asked for before {} (\"{}\")",
                       reader_.buffer().size(), while_doing, sanitize(reader_.buffer(), 40)));
      co_return false;
    }
    if (client_bytes) result_.client_data_sent = true;
    auto [ec, n] = co_await node_.write_all(boost::asio::buffer(text), params_.deadline);
    if (ec) {
      fail(ec == boost::asio::error::timed_out ? Failure::node_timeout : Failure::node_closed,
           fmt::format("cannot send while {}: {}", while_doing, ec.message()));
      co_return false;
    }
    co_return true;
  }

  boost::asio::awaitable<bool> read_greeting() {
    auto greeting = co_await line("reading the greeting");
    if (!greeting) co_return false;
    greeted_ = true;
    if (is_ok(*greeting)) {
      // Dovecot announces XCLIENT in the greeting to proxies it trusts.
      xclient_ = greeting->find("[XCLIENT]") != std::string::npos;
      co_return true;
    }
    if (is_err(*greeting)) fail(Failure::node_unavailable, "greeting was -ERR: " + sanitize(*greeting));
    else fail(Failure::node_protocol, "unexpected greeting");
    co_return false;
  }

  // STLS (RFC 2595): bytes after the +OK are dropped before the handshake.
  boost::asio::awaitable<bool> start_tls() {
    bool sent = co_await send("STLS\r\n", "starting TLS");
    if (!sent) co_return false;
    auto answer = co_await line("waiting for the STLS answer");
    if (!answer) co_return false;
    if (!is_ok(*answer)) {
      fail(Failure::node_tls, "node refused STLS: " + sanitize(*answer));
      co_return false;
    }
    if (!reader_.buffer().empty()) {
      fail(Failure::node_tls, fmt::format("{} bytes after the STLS answer, before TLS",
                                          reader_.buffer().size()));
      co_return false;
    }
    auto ec = co_await node_.start_tls_as_client(*params_.tls.context, params_.tls.name,
                                                 params_.tls.verify, params_.deadline);
    if (ec) {
      fail(Failure::node_tls,
           "TLS handshake with the node failed: " + node_.tls_failure_reason(ec));
      co_return false;
    }
    // RFC 2595 section 4: what the node said before TLS is forgotten (a
    // man-in-the-middle could have added XCLIENT to the greeting); CAPA is
    // asked again under TLS.
    xclient_ = false;
    sasl_plain_ = false;
    sasl_.clear();
    stls_ = false;
    co_return true;
  }

  // CAPA (RFC 2449): a node without it is an old one: USER/PASS then.
  boost::asio::awaitable<bool> read_capabilities() {
    bool sent = co_await send("CAPA\r\n", "asking for capabilities");
    if (!sent) co_return false;
    auto answer = co_await line("reading capabilities");
    if (!answer) co_return false;
    if (!is_ok(*answer)) co_return true;
    for (;;) {
      auto cap = co_await line("reading capabilities");
      if (!cap) co_return false;
      if (*cap == ".") co_return true;
      std::string_view c = *cap;
      if (istarts_with(c, "SASL ")) {
        sasl_ = " " + ascii_lowercase(c.substr(5)) + " ";
        sasl_plain_ = sasl_.find(" plain ") != std::string::npos;
      } else if (iequals(c, "XCLIENT") || istarts_with(c, "XCLIENT ")) {
        xclient_ = true;
      } else if (iequals(c, "STLS")) {
        stls_ = true;
      }
    }
  }

  boost::asio::awaitable<bool> send_identity() {
    bool sent = co_await send(pop3_xclient(params_.client) + "\r\n", "sending the client's identity");
    if (!sent) co_return false;
    auto answer = co_await line("waiting for the XCLIENT answer");
    co_return answer.has_value();  // a refusal is not fatal: the node sees Isthmus' address
  }

  // PLAIN, or for a bearer login the client's mechanism if the node lists
  // it in CAPA's SASL line, else the other one.
  std::optional<SaslMechanism> node_mechanism() const {
    const auto wanted = params_.credentials.mechanism;
    auto offered = [this](SaslMechanism m) {
      return sasl_.find(" " + ascii_lowercase(name_of(m)) + " ") != std::string::npos;
    };
    if (!is_oauth(wanted)) return SaslMechanism::plain;
    if (offered(wanted)) return wanted;
    const auto other = wanted == SaslMechanism::oauthbearer ? SaslMechanism::xoauth2
                                                            : SaslMechanism::oauthbearer;
    if (offered(other)) return other;
    return std::nullopt;
  }

  boost::asio::awaitable<bool> authenticate() {
    const auto& c = params_.credentials;
    const auto mechanism = node_mechanism();
    if (!mechanism) {
      fail(Failure::node_unavailable, "the node lists neither OAUTHBEARER nor XOAUTH2 in SASL");
      co_return false;
    }
    std::string message = *mechanism == SaslMechanism::plain
                              ? sasl_plain_message(c.authzid, c.user, c.password)
                          : *mechanism == SaslMechanism::oauthbearer
                              ? oauthbearer_message(c.user, c.password)
                              : xoauth2_message(c.user, c.password);
    std::string encoded = encode_base64(message);
    OPENSSL_cleanse(message.data(), message.size());
    const std::string name(name_of(*mechanism));
    bool sent = false;
    if (6 + name.size() + encoded.size() + 2 <= kMaxCommandLine) {
      std::string command = "AUTH " + name + " " + encoded + "\r\n";
      sent = co_await send(command, "sending credentials", true);
      OPENSSL_cleanse(command.data(), command.size());
    } else {
      sent = co_await send("AUTH " + name + "\r\n", "starting AUTH");
      if (sent) sent = co_await await_continuation();
      if (sent) {
        std::string response = encoded + "\r\n";
        sent = co_await send(response, "sending credentials", true);
        OPENSSL_cleanse(response.data(), response.size());
      }
    }
    OPENSSL_cleanse(encoded.data(), encoded.size());
    if (!sent) co_return false;
    co_return co_await await_login_answer();
  }

  // "+" (with or without text) after AUTH PLAIN; -ERR ends the login.
  boost::asio::awaitable<bool> await_continuation() {
    auto answer = co_await line("waiting for the AUTH continuation");
    if (!answer) co_return false;
    if (answer->size() >= 1 && (*answer)[0] == '+' &&
        (answer->size() == 1 || (*answer)[1] == ' '))
      co_return true;
    if (is_err(*answer)) fail(classify_pop3_refusal(*answer), "AUTH refused: " + sanitize(*answer));
    else fail(Failure::node_protocol, "unexpected answer to AUTH: " + sanitize(*answer, 60));
    co_return false;
  }

  // USER/PASS put the credentials on command lines, the only way POP3 has
  // without SASL; a CR, LF or NUL in them could inject a command, so such
  // credentials are not sent at all.
  boost::asio::awaitable<bool> user_pass() {
    const auto& c = params_.credentials;
    auto unsafe = [](const std::string& s) { return s.find_first_of(std::string("\r\n\0", 3)) != std::string::npos; };
    if (!c.authzid.empty()) {
      // What the client asked for cannot be done here; not the node's fault.
      fail(Failure::auth_failed, "node offers no SASL PLAIN to carry an authorization identity");
      co_return false;
    }
    if (unsafe(c.user) || unsafe(c.password)) {
      fail(Failure::auth_failed, "credentials with CR, LF or NUL cannot go in USER/PASS");
      co_return false;
    }
    bool sent = co_await send("USER " + c.user + "\r\n", "sending the user name", true);
    if (!sent) co_return false;
    auto answer = co_await line("waiting for the USER answer");
    if (!answer) co_return false;
    if (!is_ok(*answer)) {
      fail(classify_pop3_refusal(*answer), "USER refused: " + sanitize(*answer));
      co_return false;
    }
    std::string command = "PASS " + c.password + "\r\n";
    sent = co_await send(command, "sending the password", true);
    OPENSSL_cleanse(command.data(), command.size());
    if (!sent) co_return false;
    co_return co_await await_login_answer();
  }

  boost::asio::awaitable<bool> await_login_answer() {
    auto answer = co_await line("waiting for the login answer");
    if (!answer) co_return false;
    if (is_oauth(params_.credentials.mechanism) && !answer->empty() && (*answer)[0] == '+') {
      // A failed bearer login's error challenge (RFC 7628 section 3.2.2):
      // answer ^A, then the -ERR follows.
      const bool answered = co_await send("AQ==\r\n", "answering the error challenge");
      if (!answered) co_return false;
      answer = co_await line("waiting for the login answer");
      if (!answer) co_return false;
    }
    if (is_ok(*answer)) co_return true;
    if (is_err(*answer)) {
      fail(classify_pop3_refusal(*answer), "login refused: " + sanitize(*answer));
    } else {
      // A continuation after PLAIN with an initial response is broken.
      fail(Failure::node_protocol, "unexpected answer to the login: " + sanitize(*answer, 60));
    }
    co_return false;
  }

  Transport& node_;
  const NodeLoginParams& params_;
  LineReader reader_;
  NodeLoginResult result_;
  bool greeted_ = false;
  bool xclient_ = false;
  bool sasl_plain_ = false;
  std::string sasl_;  // " plain oauthbearer " (CAPA's SASL line, lower case)
  bool stls_ = false;
};

}  // namespace

Failure classify_pop3_refusal(std::string_view line) {
  auto open = line.find('[');
  auto close = line.find(']');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open)
    return Failure::auth_failed;
  std::string code = ascii_lowercase(line.substr(open + 1, close - open - 1));
  if (code == "in-use") return Failure::mailbox_in_use;
  if (code == "login-delay") return Failure::login_delay;
  if (code == "sys/temp") return Failure::node_unavailable;
  return Failure::auth_failed;  // [AUTH], [SYS/PERM], unknown codes
}

std::string pop3_xclient(const ForwardedClient& c) {
  return fmt::format("XCLIENT ADDR={} PORT={} SESSION={} TTL={}", c.ip, c.port, c.session_id,
                     c.ttl);
}

boost::asio::awaitable<NodeLoginResult> log_in_pop3(Transport& node, const NodeLoginParams& params) {
  Pop3NodeLogin login(node, params);
  co_return co_await login.run();
}

}  // namespace isthmus::backends
