#include "backends/sieve_node_login.hpp"

#include "backends/pop3_node_login.hpp"
#include "common/line_reader.hpp"
#include "common/log.hpp"
#include "common/managesieve.hpp"
#include "common/sasl.hpp"
#include "common/strings.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>

namespace isthmus::backends {
namespace {

namespace ms = managesieve;

// One response (with its literals) from a node; a greeting of capability
// lines is bounded by this too, line by line.
constexpr std::size_t kMaxNodeResponse = 64 * 1024;
constexpr int kMaxCapabilityLines = 200;

class SieveNodeLogin {
 public:
  SieveNodeLogin(Transport& node, const NodeLoginParams& params)
      : node_(node), params_(params), reader_(kMaxNodeResponse) {}

  boost::asio::awaitable<NodeLoginResult> run() {
    bool ok = co_await read_capabilities("reading the greeting");
    if (ok && params_.tls.mode == config::TlsMode::starttls) ok = co_await start_tls();
    if (ok && xclient_) ok = co_await send_identity();
    if (ok) ok = co_await authenticate();
    if (ok) result_.pending = reader_.take_buffered();
    co_return std::move(result_);
  }

 private:
  void fail(Failure failure, std::string detail) {
    result_.failure = failure;
    result_.detail = std::move(detail);
  }

  // One response from the node, literals and all.
  boost::asio::awaitable<std::optional<ms::Response>> response(const char* while_doing) {
    const Deadline deadline = greeted_ ? params_.deadline : params_.greeting;
    for (;;) {
      ms::Parsed parsed;
      if (gate_.worth_parsing(reader_.buffer())) {
        parsed = ms::parse_line(reader_.buffer(), kMaxNodeResponse);
        if (parsed.status == ms::Status::need_more) gate_.waiting(parsed, reader_.buffer().size());
        else gate_.reset();
      } else if (reader_.buffer().size() > kMaxNodeResponse) {
        parsed.status = ms::Status::too_long;
      }
      if (parsed.status == ms::Status::complete) {
        std::string raw = reader_.buffer().substr(0, std::min<std::size_t>(parsed.consumed, 80));
        reader_.consume(parsed.consumed);
        auto response = ms::to_response(parsed.items);
        if (!response) {
          fail(Failure::node_protocol,
               fmt::format("unexpected answer while {}: \"{}\"", while_doing, sanitize(raw, 60)));
          co_return std::nullopt;
        }
        co_return response;
      }
      if (parsed.status == ms::Status::bad || parsed.status == ms::Status::too_long) {
        fail(Failure::node_protocol,
             fmt::format("{} while {}",
                         parsed.status == ms::Status::bad ? "bad syntax (" + parsed.error + ")"
                                                          : std::string("answer too long"),
                         while_doing));
        co_return std::nullopt;
      }
      boost::system::error_code error;
      const auto status = co_await reader_.fill(node_, deadline, error);
      if (status == ReadStatus::ok) continue;
      fail(status == ReadStatus::timeout ? Failure::node_timeout : Failure::node_closed,
           fmt::format("{} while {}",
                       status == ReadStatus::timeout ? "no answer in time" : "connection closed",
                       while_doing));
      co_return std::nullopt;
    }
  }

  // `client_bytes`: the text carries bytes the client chose (its name or
  // token); from then on a failure is the login's own, not the node's.
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

  // Capability lines until OK (the greeting; again after STARTTLS).
  boost::asio::awaitable<bool> read_capabilities(const char* while_doing) {
    sasl_.clear();
    xclient_ = false;
    for (int lines = 0;; ++lines) {
      auto r = co_await response(while_doing);
      if (!r) co_return false;
      greeted_ = true;
      using Kind = ms::Response::Kind;
      if (r->kind == Kind::ok) co_return true;
      if (r->kind == Kind::no || r->kind == Kind::bye) {
        fail(Failure::node_unavailable,
             fmt::format("{} {}: {}", r->kind == Kind::no ? "NO" : "BYE", while_doing,
                         sanitize(r->code.empty() ? r->text : r->code + " " + r->text, 100)));
        co_return false;
      }
      if (lines >= kMaxCapabilityLines) {
        fail(Failure::node_protocol, fmt::format("more than {} capability lines while {}",
                                                 kMaxCapabilityLines, while_doing));
        co_return false;
      }
      // A capability: "NAME" ["value"] (a lone string has no value).
      const std::string value = r->kind == Kind::capability ? r->text : std::string();
      if (r->name == "SASL") sasl_ = " " + ascii_lowercase(value) + " ";
      else if (r->name == "XCLIENT") xclient_ = true;
    }
  }

  // RFC 5804 section 2.2: bytes after the OK are dropped before the
  // handshake; under TLS the node sends its capabilities again, and those
  // are the ones that count (a man-in-the-middle could have added XCLIENT
  // or removed OAUTHBEARER before).
  boost::asio::awaitable<bool> start_tls() {
    bool sent = co_await send("STARTTLS\r\n", "starting TLS");
    if (!sent) co_return false;
    auto answer = co_await response("waiting for the STARTTLS answer");
    if (!answer) co_return false;
    if (answer->kind != ms::Response::Kind::ok) {
      fail(Failure::node_tls, "node refused STARTTLS: " + sanitize(answer->text, 100));
      co_return false;
    }
    if (!reader_.buffer().empty()) {
      fail(Failure::node_tls, fmt::format("{} bytes after the STARTTLS answer, before TLS",
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
    co_return co_await read_capabilities("reading the capabilities under TLS");
  }

  boost::asio::awaitable<bool> send_identity() {
    bool sent =
        co_await send(pop3_xclient(params_.client) + "\r\n", "sending the client's identity");
    if (!sent) co_return false;
    auto answer = co_await response("waiting for the XCLIENT answer");
    // A refusal is not fatal: the node sees Isthmus' address then.
    co_return answer.has_value();
  }

  // PLAIN, or for a bearer login the client's mechanism if the node lists
  // it in SASL, else the other one.
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

  // AUTHENTICATE "MECH" "initial response" (RFC 5804 section 2.1); the
  // response goes as a literal when it is long.
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
    std::string command = fmt::format("AUTHENTICATE {} {}\r\n", ms::quoted(name_of(*mechanism)),
                                      ms::string_item(encoded, true));
    OPENSSL_cleanse(encoded.data(), encoded.size());
    bool sent = co_await send(command, "sending credentials", true);
    OPENSSL_cleanse(command.data(), command.size());
    if (!sent) co_return false;
    auto answer = co_await response("waiting for the login answer");
    if (!answer) co_return false;
    if (answer->kind == ms::Response::Kind::challenge) {
      if (!is_oauth(*mechanism)) {
        // PLAIN with an initial response needs no challenge.
        fail(Failure::node_protocol, "a challenge after PLAIN with an initial response");
        co_return false;
      }
      // A failed bearer login's error challenge (RFC 7628 section 3.2.2):
      // answer ^A, then the NO follows.
      const bool answered = co_await send("\"AQ==\"\r\n", "answering the error challenge");
      if (!answered) co_return false;
      answer = co_await response("waiting for the login answer");
      if (!answer) co_return false;
    }
    using Kind = ms::Response::Kind;
    if (answer->kind == Kind::ok) co_return true;
    if (answer->kind == Kind::no || answer->kind == Kind::bye) {
      fail(classify_sieve_refusal(answer->code),
           fmt::format("login refused: {}{}{}", answer->kind == Kind::no ? "NO" : "BYE",
                       answer->code.empty() ? "" : " (" + sanitize(answer->code, 40) + ")",
                       answer->text.empty() ? "" : " " + sanitize(answer->text, 100)));
    } else {
      fail(Failure::node_protocol, "unexpected answer to AUTHENTICATE");
    }
    co_return false;
  }

  Transport& node_;
  ms::ParseGate gate_;
  const NodeLoginParams& params_;
  LineReader reader_;
  NodeLoginResult result_;
  bool greeted_ = false;
  bool xclient_ = false;
  std::string sasl_;  // " plain oauthbearer " (the SASL capability, lower case)
};

}  // namespace

Failure classify_sieve_refusal(std::string_view code) {
  const std::string c = ascii_lowercase(code);
  if (c == "trylater") return Failure::node_unavailable;
  if (c == "referral") return Failure::node_referral;
  if (c == "auth-too-weak" || c == "encrypt-needed" || c == "transition-needed")
    return Failure::node_unavailable;
  return Failure::auth_failed;
}

boost::asio::awaitable<NodeLoginResult> log_in_managesieve(Transport& node,
                                                           const NodeLoginParams& params) {
  SieveNodeLogin login(node, params);
  co_return co_await login.run();
}

}  // namespace isthmus::backends
