#include "backends/lmtp_node_client.hpp"

#include "common/log.hpp"
#include "common/session_id.hpp"
#include "common/strings.hpp"
#include "common/smtp_data.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>

#include <charconv>

namespace isthmus::backends {

namespace {

bool has_extension(const std::vector<std::string>& extensions, std::string_view name) {
  for (const auto& e : extensions) {
    std::string_view word = std::string_view(e).substr(0, e.find(' '));
    if (iequals(word, name)) return true;
  }
  return false;
}

// A HELO name goes into XCLIENT only if it is plainly a host name or an
// address literal: anything else is left out rather than escaped.
bool safe_helo(std::string_view helo) {
  if (helo.empty() || helo.size() > 255) return false;
  for (char c : helo) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_' || c == ':' || c == '[' || c == ']';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

bool LmtpNodeClient::offers_sasl(const std::vector<std::string>& extensions,
                                 std::string_view mechanism) {
  for (const auto& e : extensions) {
    std::string_view line(e);
    if (!istarts_with(line, "AUTH") || line.size() < 5 || (line[4] != ' ' && line[4] != '='))
      continue;
    line.remove_prefix(5);
    while (!line.empty()) {
      const auto end = line.find(' ');
      if (iequals(line.substr(0, end), mechanism)) return true;
      if (end == std::string_view::npos) break;
      line.remove_prefix(end + 1);
    }
  }
  return false;
}

bool LmtpNodeClient::offers(std::string_view extension) const {
  return has_extension(extensions_, extension);
}

std::uint64_t LmtpNodeClient::size_limit() const {
  for (const auto& e : extensions_) {
    if (!istarts_with(e, "SIZE ")) continue;
    std::uint64_t n = 0;
    std::string_view digits = trim(std::string_view(e).substr(5));
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
    if (ec == std::errc() && end == digits.data() + digits.size()) return n;
  }
  return 0;
}

boost::asio::awaitable<NodeStep> LmtpNodeClient::reply(Deadline deadline) {
  NodeStep step;
  auto r = co_await read_smtp_reply(transport_, reader_, deadline, step.failure, step.detail);
  if (r) step.reply = std::move(*r);
  co_return step;
}

boost::asio::awaitable<NodeStep> LmtpNodeClient::command(const std::string& line,
                                                         Clock::duration timeout) {
  const Deadline deadline = Deadline::after(timeout);
  std::string wire = line + "\r\n";
  auto [ec, n] = co_await transport_.write_all(boost::asio::buffer(wire), deadline);
  if (ec) {
    NodeStep step;
    step.failure = ec == boost::asio::error::timed_out ? Failure::node_timeout : Failure::node_closed;
    step.detail = "cannot send: " + ec.message();
    co_return step;
  }
  co_return co_await reply(deadline);
}

boost::asio::awaitable<NodeStep> LmtpNodeClient::lhlo(const std::string& name,
                                                      Clock::duration timeout) {
  NodeStep step = co_await command("LHLO " + name, timeout);
  if (step.answered() && step.reply.ok()) {
    extensions_.assign(step.reply.lines.begin() + 1, step.reply.lines.end());
  } else if (step.answered()) {
    step.failure = Failure::node_protocol;
    step.detail = "LHLO refused: " + step.reply.describe();
  }
  co_return step;
}

std::string LmtpNodeClient::xclient_line(const std::vector<std::string>& extensions,
                                         const LmtpPeer& peer) {
  std::vector<std::string> offered;
  for (const auto& e : extensions) {
    if (!istarts_with(e, "XCLIENT")) continue;
    std::string_view rest = std::string_view(e).substr(7);
    while (!rest.empty()) {
      while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
      auto sp = rest.find(' ');
      if (!rest.empty()) offered.push_back(ascii_lowercase(rest.substr(0, sp)));
      rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp);
    }
  }
  auto offers = [&](std::string_view a) {
    return std::find(offered.begin(), offered.end(), a) != offered.end();
  };
  std::string line = "XCLIENT";
  if (offers("addr")) line += " ADDR=" + peer.addr;
  if (offers("port") && peer.port != 0) line += fmt::format(" PORT={}", peer.port);
  if (offers("helo") && safe_helo(peer.helo)) line += " HELO=" + peer.helo;
  if (offers("session")) line += " SESSION=" + peer.session_id;
  if (offers("ttl")) line += fmt::format(" TTL={}", peer.ttl);
  return line == "XCLIENT" ? std::string() : line;
}

boost::asio::awaitable<NodeStep> LmtpNodeClient::open(const std::string& lhlo_name,
                                                      const NodeTlsSetup& tls, const LmtpPeer& peer,
                                                      Deadline greeting,
                                                      Clock::duration command_timeout,
                                                      const LmtpNodeAuth& auth) {
  NodeStep step = co_await reply(greeting);
  if (!step.answered()) co_return step;
  // This very instance greets with its token: a node address that points
  // back here (a typo, a balancer in a circle) is refused at once.
  for (const auto& line : step.reply.lines) {
    if (line.find(instance_token()) != std::string::npos) {
      step.failure = Failure::node_is_self;
      step.detail = "the node greeted with this instance's own token: its address points back "
                    "at this Isthmus";
      co_return step;
    }
  }
  if (step.reply.code != 220) {
    step.failure = Failure::node_unavailable;
    step.detail = "greeting: " + step.reply.describe();
    co_return step;
  }
  step = co_await lhlo(lhlo_name, command_timeout);
  if (!step.answered()) co_return step;
  if (tls.mode == config::TlsMode::starttls) {
    if (!has_extension(extensions_, "STARTTLS")) {
      step.failure = Failure::node_tls;
      step.detail = "node does not offer STARTTLS";
      co_return step;
    }
    step = co_await command("STARTTLS", command_timeout);
    if (!step.answered()) co_return step;
    if (step.reply.code != 220) {
      step.failure = Failure::node_tls;
      step.detail = "node refused STARTTLS: " + step.reply.describe();
      co_return step;
    }
    reader_.take_buffered();  // nothing from before the handshake is believed
    auto ec = co_await transport_.start_tls_as_client(*tls.context, tls.name, tls.verify,
                                                      Deadline::after(command_timeout));
    if (ec) {
      step.failure = Failure::node_tls;
      step.detail = "TLS handshake with the node failed: " + transport_.tls_failure_reason(ec);
      co_return step;
    }
    step = co_await lhlo(lhlo_name, command_timeout);
    if (!step.answered()) co_return step;
  }
  if (std::string xclient = xclient_line(extensions_, peer); !xclient.empty()) {
    // A node that takes XCLIENT starts a new session: a new greeting, and
    // LHLO again, now in the MTA's name (Dovecot's Received: header takes
    // the name from this LHLO, not from XCLIENT HELO=).
    step = co_await command(xclient, command_timeout);
    if (!step.answered()) co_return step;
    if (step.reply.code == 220) {
      const std::string name = safe_helo(peer.helo) ? peer.helo : lhlo_name;
      step = co_await lhlo(name, command_timeout);
      if (!step.answered()) co_return step;
    }
  }
  if (!auth.user.empty()) {
    // After XCLIENT, which starts a new session. A node that takes no
    // AUTH PLAIN, or refuses ours, is skipped (the next node is tried);
    // not a health failure: the node is up, the config disagrees with it.
    if (!offers_sasl(extensions_, "PLAIN")) {
      step.failure = Failure::node_unavailable;
      step.detail = "the node offers no AUTH PLAIN (lmtp.node_user is set)";
      co_return step;
    }
    std::string message;
    message += '\0';
    message += auth.user;
    message += '\0';
    message += auth.password;
    std::string line = "AUTH PLAIN " + encode_base64(message);
    OPENSSL_cleanse(message.data(), message.size());
    step = co_await command(line, command_timeout);
    OPENSSL_cleanse(line.data(), line.size());
    if (!step.answered()) co_return step;
    if (step.reply.code != 235) {
      step.failure = Failure::node_unavailable;
      step.detail = "the node refused AUTH as " + sanitize(auth.user, 100) + ": " +
                    step.reply.describe();
      co_return step;
    }
  }
  step.failure = Failure::none;
  co_return step;
}

boost::asio::awaitable<DataOutcome> LmtpNodeClient::send_data(const MessageSpool& spool,
                                                              std::string_view prefix,
                                                              std::size_t recipients,
                                                              Clock::duration command_timeout,
                                                              Clock::duration final_timeout) {
  DataOutcome outcome;
  NodeStep step = co_await command("DATA", command_timeout);
  if (!step.answered() || step.reply.code == 421) {
    // Nothing of the message went out: the caller may try another node.
    outcome.failure = step.answered() ? Failure::node_closed : step.failure;
    outcome.detail = "DATA: " + (step.answered() ? step.reply.describe() : step.detail);
    co_return outcome;
  }
  if (step.reply.code != 354) {
    // Every recipient gets the node's refusal of DATA.
    outcome.replies.assign(recipients, step.reply);
    co_return outcome;
  }
  const Deadline deadline = Deadline::after(final_timeout);
  outcome.message_started = true;
  DataStuffer stuffer;
  std::string chunk;
  std::string wire;
  if (!prefix.empty()) {
    stuffer.stuff(prefix, wire);
    auto [ec, n] = co_await transport_.write_all(boost::asio::buffer(wire), deadline);
    if (ec) {
      outcome.failure = ec == boost::asio::error::timed_out ? Failure::node_timeout
                                                            : Failure::node_closed;
      outcome.detail = "while sending the message: " + ec.message();
      co_return outcome;
    }
  }
  constexpr std::size_t kChunk = 64 * 1024;
  for (std::uint64_t offset = 0; offset < spool.size(); offset += chunk.size()) {
    if (!spool.read(offset, kChunk, chunk) || chunk.empty()) {
      outcome.failure = Failure::node_protocol;  // our own spool failed: nothing was delivered
      outcome.detail = "cannot read the spooled message";
      co_return outcome;
    }
    wire.clear();
    stuffer.stuff(chunk, wire);
    auto [ec, n] = co_await transport_.write_all(boost::asio::buffer(wire), deadline);
    if (ec) {
      outcome.failure = ec == boost::asio::error::timed_out ? Failure::node_timeout
                                                            : Failure::node_closed;
      outcome.detail = "while sending the message: " + ec.message();
      co_return outcome;
    }
  }
  auto [ec, n] = co_await transport_.write_all(boost::asio::buffer(".\r\n", 3), deadline);
  if (ec) {
    outcome.failure = ec == boost::asio::error::timed_out ? Failure::node_timeout
                                                          : Failure::node_closed;
    outcome.detail = "while ending the message: " + ec.message();
    co_return outcome;
  }
  for (std::size_t i = 0; i < recipients; ++i) {
    NodeStep r = co_await reply(deadline);
    if (!r.answered() || r.reply.code == 421) {
      // 421: the node is closing; whatever it says after that is not an
      // answer for the remaining recipients.
      outcome.failure = r.answered() ? Failure::node_closed : r.failure;
      outcome.detail = fmt::format("after {} of {} replies: {}", i, recipients,
                                   r.answered() ? r.reply.describe() : r.detail);
      co_return outcome;
    }
    outcome.replies.push_back(std::move(r.reply));
  }
  co_return outcome;
}

}  // namespace isthmus::backends
