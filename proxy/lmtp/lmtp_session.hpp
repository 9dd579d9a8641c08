#pragma once
// One MTA connection (RFC 2033 LMTP). Isthmus is the server for the MTA and
// a client to each island's node: each recipient is routed to its island,
// the island's node is asked (RCPT) and its answer goes back; after DATA,
// the message goes to every island involved, in parallel, and each
// recipient gets the answer of its own node, in RCPT order.
//
// The rule above all: 250 for a recipient only after that recipient's node
// said 250 for the message. Anything else is 4xx (the MTA keeps the message
// and retries), or 5xx only when the user really does not exist.

#include "backends/lmtp_node_client.hpp"
#include "common/smtp_data.hpp"
#include "common/spool.hpp"
#include "proxy/session.hpp"

#include <memory>
#include <vector>

namespace isthmus::proxy::lmtp {

class LmtpSession final : public Session {
 public:
  LmtpSession(SessionRegistry& registry, boost::asio::ip::tcp::socket client,
              std::shared_ptr<const Runtime> runtime,
              std::shared_ptr<const config::Listener> listener);
  ~LmtpSession() override;

  // Serves the MTA until it quits; never hands over to the relay (false).
  boost::asio::awaitable<bool> run();

 private:
  struct Recipient {
    std::string address;  // as the MTA wrote it, for logs
    std::string user;     // normalised: what the node is given
    std::size_t txn;      // its island transaction (index in txns_)
    std::optional<backends::SmtpReply> final;  // known before DATA (its node was lost)
  };
  // One of this instance's LMTP connections to a node (lmtp.max_node_connections).
  struct NodeSlot {
    std::shared_ptr<backends::NodeState> state;
    NodeSlot() = default;
    explicit NodeSlot(std::shared_ptr<backends::NodeState> s) : state(std::move(s)) {}
    NodeSlot(NodeSlot&& other) noexcept : state(std::move(other.state)) {}
    NodeSlot& operator=(NodeSlot&& other) noexcept {
      if (this != &other) {
        release();
        state = std::move(other.state);
      }
      return *this;
    }
    NodeSlot(const NodeSlot&) = delete;
    NodeSlot& operator=(const NodeSlot&) = delete;
    ~NodeSlot() { release(); }
    void release() {
      if (state) state->give_back_lmtp_connection();
      state.reset();
    }
  };
  struct IslandTxn {
    std::string island;
    std::string node;  // current node's name
    backends::NodeLease lease;
    NodeSlot slot;
    std::unique_ptr<backends::LmtpNodeClient> client;
    std::vector<std::size_t> recipients;  // accepted on the current node, in RCPT order
    std::vector<std::string> tried;       // nodes tried in this transaction
    bool failed = false;                  // no node left: later RCPTs get 451
    // Active-passive islands: the role's epoch when the transaction opened
    // on `node` (0: a balance island). A node that no longer holds the role
    // under it is fenced: it delivers nothing more (docs/lmtp.md).
    std::uint64_t epoch = 0;
    // A node refused the transaction for good (MAIL answered 5xx, e.g.
    // 552 5.3.4 for SIZE=): every recipient of the island gets it.
    std::optional<backends::SmtpReply> refusal;
    bool congested = false;  // every node was at lmtp.max_node_connections
    // The node connection may serve this MTA session's next transaction:
    // `clean` after a complete DATA (the node is back at its start), else
    // after an RSET.
    bool reusable = true;
    bool clean = false;
  };
  // A node connection kept between transactions of one MTA session (MTAs
  // send many messages on one connection): no connect, greeting, LHLO and
  // XCLIENT per message.
  struct IdleNode {
    std::string island;
    std::string node;
    std::unique_ptr<backends::LmtpNodeClient> client;
    backends::NodeLease lease;
    NodeSlot slot;
    std::uint64_t epoch = 0;
    bool needs_rset = true;
  };

  boost::asio::awaitable<bool> serve();
  boost::asio::awaitable<bool> handle_lhlo(const std::string& argument);
  boost::asio::awaitable<bool> handle_mail(const std::string& argument);
  boost::asio::awaitable<bool> handle_rcpt(const std::string& argument);
  boost::asio::awaitable<bool> handle_data();
  // The island's transaction, opening (or re-opening) it on a node if
  // needed; nullptr if no node of the island could take it.
  boost::asio::awaitable<IslandTxn*> island_txn(const std::string& island);
  boost::asio::awaitable<bool> open_txn(IslandTxn& txn);
  boost::asio::awaitable<std::optional<backends::SmtpReply>> rcpt_on_node(IslandTxn& txn,
                                                                          const std::string& user);
  // The message to every island's node at once; each recipient's reply is
  // written as soon as it and every reply before it (RCPT order) is known.
  // False if the MTA could not be written to.
  boost::asio::awaitable<bool> deliver_and_answer();
  boost::asio::awaitable<backends::DataOutcome> deliver_to(IslandTxn& txn);
  // The final replies of `txn`'s recipients from its node's outcome.
  void settle(IslandTxn& txn, const backends::DataOutcome& outcome);
  // The Received: line Isthmus adds (RFC 5321 section 4.4).
  std::string received_line() const;
  // Ends the transaction; with `keep_nodes`, the node connections that can
  // serve the next one are kept (idle_), the others closed.
  void reset_transaction(bool keep_nodes = false);
  // MAIL on `client` with the parameters the node understands.
  boost::asio::awaitable<backends::NodeStep> send_mail(backends::LmtpNodeClient& client);
  // Why `txn`'s node may no longer deliver (it lost its island's role, or
  // the epoch moved on since the transaction opened), or "" if it may.
  std::string fenced(const IslandTxn& txn) const;

  // Reads one command line; nullopt if the session is over.
  boost::asio::awaitable<std::optional<std::string>> read_command();
  boost::asio::awaitable<bool> reply(std::string text);  // adds CRLF
  boost::asio::awaitable<bool> goodbye(std::string text, std::string ended);

  const config::Config& config_;
  std::string helo_;
  bool have_mail_ = false;
  std::string mail_from_;     // the reverse path
  std::uint64_t declared_size_ = 0;  // MAIL SIZE=, 0 if none
  bool eight_bit_ = false;           // MAIL BODY=8BITMIME
  bool content_8bit_ = false;        // the message holds octets over 127
  std::string received_;             // this message's Received: line
  std::vector<Recipient> recipients_;  // those answered 250 at RCPT
  std::vector<IslandTxn> txns_;
  std::vector<IdleNode> idle_;  // at most one per island
  MessageSpool spool_;
  std::size_t errors_ = 0;
  std::size_t messages_ = 0;
};

}  // namespace isthmus::proxy::lmtp
