#include "backends/imap_node_login.hpp"

#include "backends/imap_reply.hpp"
#include "common/line_reader.hpp"
#include "common/log.hpp"
#include "common/strings.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>

namespace isthmus::backends {

Credentials::~Credentials() {
  if (!password.empty()) OPENSSL_cleanse(password.data(), password.size());
}

namespace {

// Lines from a node may be long (capability lists, referrals) but not endless.
constexpr std::size_t kMaxNodeLine = 64 * 1024;
// The longest AUTHENTICATE line with an initial response (RFC 4959) sent to
// a node; longer responses go after the "+" continuation, which servers
// accept up to larger sizes than a command line (Dovecot: 4 KiB lines
// before login, 8 KiB SASL responses).
constexpr std::size_t kMaxSaslIrLine = 1024;

Failure failure_of(ReadStatus status) {
  switch (status) {
    case ReadStatus::ok: return Failure::none;
    case ReadStatus::timeout: return Failure::node_timeout;
    case ReadStatus::too_long: return Failure::node_protocol;
    case ReadStatus::closed:
    case ReadStatus::error: return Failure::node_closed;
  }
  return Failure::node_closed;
}

const char* what_of(ReadStatus status) {
  switch (status) {
    case ReadStatus::ok: return "ok";
    case ReadStatus::timeout: return "no answer in time";
    case ReadStatus::too_long: return "line too long";
    case ReadStatus::closed: return "connection closed";
    case ReadStatus::error: return "connection broken";
  }
  return "?";
}

// A NO to the credentials: is it about the credentials, or a temporary
// condition on the node (RFC 5530 response codes)?
Failure classify_refusal(const ImapReply& reply) {
  auto code = code_name(reply);
  if (code == "INUSE") return Failure::mailbox_in_use;
  if (code == "UNAVAILABLE" || code == "SERVERBUG" || code == "LIMIT" || code == "OVERQUOTA" ||
      code == "CONTACTADMIN")
    return Failure::node_unavailable;
  // RFC 2221: the user is on another server. Isthmus does not forward
  // referrals (and does not offer LOGIN-REFERRALS): a temporary failure,
  // logged with the URL, never "wrong password".
  if (code == "REFERRAL") return Failure::node_referral;
  if (code == "AUTHORIZATIONFAILED") return Failure::authorization_failed;
  if (reply.status == ImapReply::Status::bad) return Failure::node_protocol;
  return Failure::auth_failed;  // AUTHENTICATIONFAILED, EXPIRED or none
}

class ImapNodeLogin {
 public:
  explicit ImapNodeLogin(Transport& node, const NodeLoginParams& params)
      : node_(node), params_(params), credentials_(params.credentials),
        greeting_deadline_(params.greeting), deadline_(params.deadline), reader_(kMaxNodeLine) {}

  boost::asio::awaitable<NodeLoginResult> run() {
    bool ok = co_await read_greeting();
    if (ok && caps_.empty()) ok = co_await ask_capabilities();
    if (ok) ok = speaks_imap();
    if (ok && params_.tls.mode == config::TlsMode::starttls) ok = co_await start_tls();
    if (ok) ok = speaks_imap();
    if (ok && has_capability(caps_, "LOGINDISABLED")) {
      // Credentials never leave in plaintext, whatever the config says.
      fail(Failure::node_tls, "node refuses plaintext login (LOGINDISABLED) without TLS");
      ok = false;
    }
    if (ok && has_capability(caps_, "ID")) queue_identity();
    if (ok) ok = co_await send_credentials();
    if (ok) ok = co_await await_login_answer();
    if (ok && post_login_caps_.empty()) ok = co_await ask_capabilities(/*post_login=*/true);
    if (ok) {
      result_.capabilities = post_login_caps_;
      result_.pending = reader_.take_buffered();
    }
    co_return std::move(result_);
  }

 private:
  void fail(Failure failure, std::string detail) {
    result_.failure = failure;
    result_.detail = std::move(detail);
  }

  // RFC 3501 section 7.2.1 / RFC 9051: a server lists IMAP4rev1 or
  // IMAP4rev2. A node that does not is not an IMAP server (a port mix-up,
  // an HTTP proxy): a node failure, the next node is tried.
  bool speaks_imap() {
    if (has_capability(caps_, "IMAP4rev1") || has_capability(caps_, "IMAP4rev2")) return true;
    fail(Failure::node_protocol, "the node's capabilities name neither IMAP4rev1 nor IMAP4rev2");
    return false;
  }

  boost::asio::awaitable<std::optional<ImapReply>> next_reply(const char* while_doing) {
    const Deadline deadline = greeted_ ? deadline_ : greeting_deadline_;
    auto read = co_await reader_.read_line(node_, deadline);
    if (read.status != ReadStatus::ok) {
      fail(failure_of(read.status), fmt::format("{} while {}", what_of(read.status), while_doing));
      co_return std::nullopt;
    }
    co_return parse_imap_reply(read.line);
  }

  // `client_bytes`: the text carries bytes the client chose (its name or
  // password); from then on a failure is the login's own, not the node's.
  boost::asio::awaitable<bool> send(std::string_view text, const char* while_doing,
                                    bool client_bytes = false) {
    // A node speaks only when spoken to: bytes that arrived before this
    // command are an answer to something not yet sent (a forged STARTTLS
    // or login answer, RFC 3501 section 2.2.2) or garbage. Either way the
    // node is not believed.
    if (!reader_.buffer().empty()) {
      fail(Failure::node_protocol,
           fmt::format("the node sent {} bytes nobody asked for before {} (\"{}\")",
                       reader_.buffer().size(), while_doing, sanitize(reader_.buffer(), 40)));
      co_return false;
    }
    if (client_bytes) result_.client_data_sent = true;
    if (!queued_.empty()) {
      queued_ += text;
      text = queued_;
    }
    auto [ec, n] = co_await node_.write_all(boost::asio::buffer(text), deadline_);
    if (!queued_.empty()) OPENSSL_cleanse(queued_.data(), queued_.size());
    queued_.clear();
    if (ec) {
      fail(ec == boost::asio::error::timed_out ? Failure::node_timeout : Failure::node_closed,
           fmt::format("cannot send while {}: {}", while_doing, ec.message()));
      co_return false;
    }
    co_return true;
  }

  boost::asio::awaitable<bool> read_greeting() {
    auto reply = co_await next_reply("reading the greeting");
    if (!reply) co_return false;
    greeted_ = true;
    if (reply->kind == ImapReply::Kind::untagged && reply->status == ImapReply::Status::ok) {
      caps_ = capabilities_in(*reply);
      co_return true;
    }
    if (reply->kind == ImapReply::Kind::untagged && reply->status == ImapReply::Status::bye) {
      fail(Failure::node_unavailable, "greeting was BYE: " + sanitize(reply->text));
    } else {
      fail(Failure::node_protocol, "unexpected greeting");
    }
    co_return false;
  }

  // CAPABILITY before login (caps_) or after it (post_login_caps_).
  boost::asio::awaitable<bool> ask_capabilities(bool post_login = false) {
    std::string tag = next_tag();
    bool sent = co_await send(tag + " CAPABILITY\r\n", "asking for capabilities");
    if (!sent) co_return false;
    std::string found;
    for (;;) {
      auto reply = co_await next_reply("reading capabilities");
      if (!reply) co_return false;
      if (reply->kind == ImapReply::Kind::untagged) {
        if (auto text = capability_text(*reply); !text.empty()) found = text;
        if (reply->status == ImapReply::Status::bye) {
          fail(Failure::node_closed, "BYE while reading capabilities");
          co_return false;
        }
        continue;
      }
      if (reply->kind == ImapReply::Kind::tagged && reply->tag == tag) {
        if (reply->status != ImapReply::Status::ok || found.empty()) {
          fail(Failure::node_protocol, "CAPABILITY failed");
          co_return false;
        }
        if (post_login) post_login_caps_ = found;
        else caps_ = split_capabilities(found);
        co_return true;
      }
      fail(Failure::node_protocol, "unexpected line while reading capabilities");
      co_return false;
    }
  }

  // STARTTLS (RFC 3501 section 6.2.1). The node must offer it and say OK;
  // anything it sent after the OK is dropped before the handshake (a
  // man-in-the-middle could have injected it). Capabilities are asked again
  // afterwards: they may change under TLS.
  boost::asio::awaitable<bool> start_tls() {
    if (!has_capability(caps_, "STARTTLS")) {
      fail(Failure::node_tls, "node does not offer STARTTLS");
      co_return false;
    }
    std::string tag = next_tag();
    bool sent = co_await send(tag + " STARTTLS\r\n", "starting TLS");
    if (!sent) co_return false;
    for (;;) {
      auto reply = co_await next_reply("waiting for the STARTTLS answer");
      if (!reply) co_return false;
      if (reply->kind == ImapReply::Kind::untagged && reply->status != ImapReply::Status::bye)
        continue;
      if (reply->kind == ImapReply::Kind::tagged && reply->tag == tag &&
          reply->status == ImapReply::Status::ok)
        break;
      fail(Failure::node_tls, "node refused STARTTLS: " + sanitize(reply->text));
      co_return false;
    }
    // Nothing may follow the OK before the handshake: such bytes were
    // injected (CVE-2011-0411 the other way round).
    if (!reader_.buffer().empty()) {
      fail(Failure::node_tls, fmt::format("{} bytes after the STARTTLS answer, before TLS",
                                          reader_.buffer().size()));
      co_return false;
    }
    auto ec = co_await node_.start_tls_as_client(*params_.tls.context, params_.tls.name,
                                                 params_.tls.verify, deadline_);
    if (ec) {
      fail(Failure::node_tls,
           "TLS handshake with the node failed: " + node_.tls_failure_reason(ec));
      co_return false;
    }
    caps_.clear();
    co_return co_await ask_capabilities();
  }

  // Who the client really is, for the node's logs and limits. The ID
  // command goes out in the same write as the credentials (one round trip
  // less per login); its answer does not matter (Dovecot answers
  // "* ID NIL") and is skipped wherever it arrives before the login answer.
  void queue_identity() {
    id_tag_ = next_tag();
    queued_ = id_tag_ + " " + imap_forwarding_id(params_.client) + "\r\n";
  }

  // The SASL mechanism the node is asked for: PLAIN, or for a bearer
  // login the one the client used if the node offers it, else the other.
  std::optional<SaslMechanism> node_mechanism() const {
    auto offered = [this](SaslMechanism m) {
      return has_capability(caps_, "AUTH=" + std::string(name_of(m)));
    };
    const SaslMechanism wanted = credentials_.mechanism;
    if (!is_oauth(wanted)) return offered(wanted) ? std::optional(wanted) : std::nullopt;
    if (offered(wanted)) return wanted;
    const auto other = wanted == SaslMechanism::oauthbearer ? SaslMechanism::xoauth2
                                                            : SaslMechanism::oauthbearer;
    if (offered(other)) return other;
    return std::nullopt;
  }

  boost::asio::awaitable<bool> send_credentials() {
    login_tag_ = next_tag();
    const auto mechanism = node_mechanism();
    if (is_oauth(credentials_.mechanism) && !mechanism) {
      fail(Failure::node_unavailable, "the node offers neither AUTH=OAUTHBEARER nor AUTH=XOAUTH2");
      co_return false;
    }
    if (mechanism) {
      // RFC 4616: [authzid] NUL authcid NUL passwd; RFC 7628; XOAUTH2.
      std::string message =
          *mechanism == SaslMechanism::plain
              ? sasl_plain_message(credentials_.authzid, credentials_.user, credentials_.password)
          : *mechanism == SaslMechanism::oauthbearer
              ? oauthbearer_message(credentials_.user, credentials_.password)
              : xoauth2_message(credentials_.user, credentials_.password);
      std::string encoded = encode_base64(message);
      OPENSSL_cleanse(message.data(), message.size());
      const std::string name(name_of(*mechanism));
      bool sent;
      const std::size_t ir_line = login_tag_.size() + 15 + name.size() + encoded.size() + 2;
      if (has_capability(caps_, "SASL-IR") && ir_line <= kMaxSaslIrLine) {  // RFC 4959
        std::string line = login_tag_ + " AUTHENTICATE " + name + " " + encoded + "\r\n";
        sent = co_await send(line, "sending credentials", true);
        OPENSSL_cleanse(line.data(), line.size());
      } else {
        sent = co_await send(login_tag_ + " AUTHENTICATE " + name + "\r\n",
                             "starting AUTHENTICATE");
        if (sent) sent = co_await await_continuation();
        if (sent) sent = co_await send(encoded + "\r\n", "sending credentials", true);
      }
      OPENSSL_cleanse(encoded.data(), encoded.size());
      co_return sent;
    }
    if (!credentials_.authzid.empty()) {
      // What the client asked for cannot be done here; not the node's fault.
      fail(Failure::auth_failed, "node offers no AUTH=PLAIN to carry an authorization identity");
      co_return false;
    }
    // LOGIN with both arguments as literals (RFC 3501 section 4.3), which
    // carry any byte but NUL, CR and LF without quoting rules.
    const bool literal_plus = has_capability(caps_, "LITERAL+");
    const bool literal_minus = has_capability(caps_, "LITERAL-");  // RFC 7888: up to 4096
    auto non_sync_ok = [&](std::size_t n) { return literal_plus || (literal_minus && n <= 4096); };
    const auto& user = credentials_.user;
    const auto& pass = credentials_.password;
    if (non_sync_ok(user.size()) && non_sync_ok(pass.size())) {
      std::string line = fmt::format("{} LOGIN {{{}+}}\r\n{} {{{}+}}\r\n{}\r\n", login_tag_,
                                     user.size(), user, pass.size(), pass);
      bool sent = co_await send(line, "sending credentials", true);
      OPENSSL_cleanse(line.data(), line.size());
      co_return sent;
    }
    bool sent = co_await send(fmt::format("{} LOGIN {{{}}}\r\n", login_tag_, user.size()),
                              "starting LOGIN");
    if (sent) sent = co_await await_continuation();
    if (sent) sent = co_await send(fmt::format("{} {{{}}}\r\n", user, pass.size()),
                                   "sending the user name", true);
    if (sent) sent = co_await await_continuation();
    if (!sent) co_return false;
    std::string line = pass + "\r\n";
    sent = co_await send(line, "sending the password", true);
    OPENSSL_cleanse(line.data(), line.size());
    co_return sent;
  }

  // Waits for "+ ..." during login; a tagged answer instead ends the login.
  boost::asio::awaitable<bool> await_continuation() {
    for (;;) {
      auto reply = co_await next_reply("waiting for a continuation");
      if (!reply) co_return false;
      if (reply->kind == ImapReply::Kind::continuation) co_return true;
      if (reply->kind == ImapReply::Kind::untagged && reply->status != ImapReply::Status::bye)
        continue;
      if (reply->kind == ImapReply::Kind::tagged && reply->tag == id_tag_) continue;
      if (reply->kind == ImapReply::Kind::tagged && reply->tag == login_tag_) {
        fail(classify_refusal(*reply), "login refused: " + sanitize(reply->text));
      } else {
        fail(Failure::node_protocol, "unexpected line while waiting for a continuation");
      }
      co_return false;
    }
  }

  boost::asio::awaitable<bool> await_login_answer() {
    for (;;) {
      auto reply = co_await next_reply("waiting for the login answer");
      if (!reply) co_return false;
      switch (reply->kind) {
        case ImapReply::Kind::untagged:
          if (reply->status == ImapReply::Status::bye) {
            fail(Failure::node_closed, "BYE during login: " + sanitize(reply->text));
            co_return false;
          }
          if (auto caps = capability_text(*reply); !caps.empty()) post_login_caps_ = caps;
          continue;
        case ImapReply::Kind::tagged:
          if (reply->tag == id_tag_) continue;  // the ID sent along with the credentials
          if (reply->tag != login_tag_) break;
          if (reply->status == ImapReply::Status::ok) {
            if (auto caps = capability_text(*reply); !caps.empty()) post_login_caps_ = caps;
            co_return true;
          }
          fail(classify_refusal(*reply),
               fmt::format("login refused: {}{}", reply->code.empty() ? "" : "[" + sanitize(reply->code, 40) + "] ",
                           sanitize(reply->text)));
          co_return false;
        case ImapReply::Kind::continuation:
          if (is_oauth(credentials_.mechanism) && !error_challenge_answered_) {
            // RFC 7628 section 3.2.2: a failed bearer login's error comes as
            // a challenge; the client answers ^A and the NO follows.
            error_challenge_answered_ = true;
            const bool answered = co_await send("AQ==\r\n", "answering the error challenge");
            if (!answered) co_return false;
            continue;
          }
          // A server asking for more SASL data after PLAIN is broken; cancel.
          co_await send("*\r\n", "cancelling AUTHENTICATE");
          break;
        case ImapReply::Kind::garbage:
          break;
      }
      fail(Failure::node_protocol, "unexpected line while waiting for the login answer");
      co_return false;
    }
  }

  std::string next_tag() { return fmt::format("X{}", ++tag_counter_); }

  Transport& node_;
  const NodeLoginParams& params_;
  const Credentials& credentials_;
  Deadline greeting_deadline_;
  Deadline deadline_;
  LineReader reader_;
  NodeLoginResult result_;
  std::vector<std::string> caps_;
  std::string post_login_caps_;
  std::string login_tag_;
  int tag_counter_ = 0;
  bool greeted_ = false;
  std::string id_tag_;  // tag of the ID sent with the credentials, if any
  std::string queued_;  // a command to send with the next write
  bool error_challenge_answered_ = false;
};

}  // namespace

boost::asio::awaitable<NodeLoginResult> log_in_imap(Transport& node, const NodeLoginParams& params) {
  ImapNodeLogin login(node, params);
  co_return co_await login.run();
}

std::string imap_forwarding_id(const ForwardedClient& c) {
  // Values are addresses, numbers and our own session ids: nothing to quote.
  return fmt::format(
      "ID (\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\" \"x-connected-ip\" \"{}\" "
      "\"x-connected-port\" \"{}\" \"x-session-id\" \"{}\" \"x-proxy-ttl\" \"{}\")",
      c.ip, c.port, c.connected_ip, c.connected_port, c.session_id, c.ttl);
}

}  // namespace isthmus::backends
