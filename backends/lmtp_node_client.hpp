#pragma once
// The client side of LMTP (RFC 2033) to one node, for one transaction:
// greeting, LHLO, STARTTLS where configured, XCLIENT where the node offers
// it (Dovecot does to trusted peers: the MTA's address and HELO reach the
// node's Received: header), AUTH PLAIN where configured (lmtp.node_user:
// Cyrus' lmtpd without -a), MAIL, RCPT, and DATA with one reply per
// recipient.

#include "backends/node_login.hpp"
#include "backends/smtp_reply.hpp"
#include "common/line_reader.hpp"
#include "common/spool.hpp"

#include <string>
#include <vector>

namespace isthmus::backends {

// Who sent the mail to Isthmus, for XCLIENT.
struct LmtpPeer {
  std::string addr;        // the MTA's address
  std::uint16_t port = 0;
  std::string helo;        // its LHLO name
  std::string session_id;  // Isthmus' session id
  unsigned ttl = 0;
};

// Who Isthmus authenticates as to the node (AUTH PLAIN, RFC 4954 and
// 4616); empty user: no AUTH.
struct LmtpNodeAuth {
  std::string user;
  std::string password;
};

struct NodeStep {
  Failure failure = Failure::none;  // none: `reply` came back (whatever its code)
  SmtpReply reply;
  std::string detail;
  bool answered() const { return failure == Failure::none; }
  // An answer that is really the node going away (RFC 5321 section 3.8:
  // 421 closes the connection), or none at all.
  bool node_lost() const { return !answered() || reply.code == 421; }
};

struct DataOutcome {
  Failure failure = Failure::none;  // none: every recipient got a reply
  bool message_started = false;     // false: nothing of the message reached the node
  std::string detail;
  std::vector<SmtpReply> replies;   // in RCPT order; fewer than asked if the node failed
};

class LmtpNodeClient {
 public:
  explicit LmtpNodeClient(Transport transport) : transport_(std::move(transport)), reader_(kMaxLine) {}

  // Greeting, LHLO, STARTTLS (tls), XCLIENT (when offered), AUTH PLAIN
  // (when `auth` names a user: the node must offer AUTH with PLAIN, and
  // say 235).
  boost::asio::awaitable<NodeStep> open(const std::string& lhlo_name, const NodeTlsSetup& tls,
                                        const LmtpPeer& peer, Deadline greeting,
                                        Clock::duration command_timeout,
                                        const LmtpNodeAuth& auth = {});
  // Whether an LHLO extension line offers SASL `mechanism` ("AUTH PLAIN
  // LOGIN", or the old "AUTH=PLAIN").
  static bool offers_sasl(const std::vector<std::string>& extensions, std::string_view mechanism);
  // One command line (without CRLF) and its reply.
  boost::asio::awaitable<NodeStep> command(const std::string& line, Clock::duration timeout);
  // DATA, then `prefix` (trace header lines, CR LF ended) and the message,
  // dot-stuffed, the final dot, then `recipients` replies; everything after
  // DATA's 354 within `final_timeout`.
  boost::asio::awaitable<DataOutcome> send_data(const MessageSpool& spool, std::string_view prefix,
                                                std::size_t recipients,
                                                Clock::duration command_timeout,
                                                Clock::duration final_timeout);
  void close() { transport_.close(); }
  // Whether the node's LHLO listed this extension (SIZE, 8BITMIME, ...).
  bool offers(std::string_view extension) const;
  // The node's LHLO "SIZE n" (RFC 1870), 0 when it gave none.
  std::uint64_t size_limit() const;

 private:
  static constexpr std::size_t kMaxLine = 16 * 1024;

  boost::asio::awaitable<NodeStep> reply(Deadline deadline);
  boost::asio::awaitable<NodeStep> lhlo(const std::string& name, Clock::duration timeout);
  static std::string xclient_line(const std::vector<std::string>& offered, const LmtpPeer& peer);

  Transport transport_;
  LineReader reader_;
  std::vector<std::string> extensions_;  // from the last LHLO
};

}  // namespace isthmus::backends
