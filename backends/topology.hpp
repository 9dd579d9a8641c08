#pragma once
// Islands and nodes as the running instance sees them: the config's islands
// with resolved addresses, plus per-node state (session counts, recent
// failures) that outlives config reloads because it is kept by node name.
// A Topology is immutable once built and shared between worker threads.

#include "common/deadline.hpp"
#include "config/config.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace isthmus::backends {

// Mutable, thread-safe state of one node. Sessions report what they see
// here; routing reads it without locks.
class NodeState {
 public:
  explicit NodeState(std::string name) : name_(std::move(name)) {}
  const std::string& name() const { return name_; }

  int sessions() const { return sessions_.load(std::memory_order_relaxed); }
  // LMTP connections this instance holds to the node (lmtp.max_node_connections).
  bool take_lmtp_connection(unsigned limit) {
    int now = lmtp_.load(std::memory_order_relaxed);
    do {
      if (now >= static_cast<int>(limit)) return false;
    } while (!lmtp_.compare_exchange_weak(now, now + 1, std::memory_order_relaxed));
    return true;
  }
  void give_back_lmtp_connection() { lmtp_.fetch_sub(1, std::memory_order_relaxed); }
  int lmtp_connections() const { return lmtp_.load(std::memory_order_relaxed); }
  void add_session() { sessions_.fetch_add(1, std::memory_order_relaxed); }
  void remove_session() { sessions_.fetch_sub(1, std::memory_order_relaxed); }

  // Passive reports from real sessions. A node that just failed a connect
  // or a greeting is tried after the others for `suspect_for`; a success
  // clears that. The same failures also go to the health checker
  // (backends/health_checker.hpp), which decides whether the node is down.
  void report_failure(Clock::time_point now);
  void report_success();
  bool suspect(Clock::time_point now) const;
  static constexpr auto suspect_for = std::chrono::seconds(10);

  // Published by the health checker (its thread writes, workers read), per
  // protocol: DBMail and a split Cyrus run one daemon per protocol, so a
  // node can serve POP3 with its imapd dead. A node down for a protocol
  // gets no new sessions of it while its island has a node up for it.
  bool down(config::Protocol protocol) const {
    const auto i = index(protocol);
    return i < down_.size() && down_[i].load(std::memory_order_relaxed);
  }
  void set_down(config::Protocol protocol, bool down) {
    if (const auto i = index(protocol); i < down_.size())
      down_[i].store(down, std::memory_order_relaxed);
  }
  // Down for any protocol: what the active role goes by (a role holder
  // must serve every protocol of its island; docs/health.md).
  bool down() const {
    for (const auto& d : down_)
      if (d.load(std::memory_order_relaxed)) return true;
    return false;
  }
  // Every protocol at once (a node no longer checked is up).
  void set_down(bool down) {
    for (auto& d : down_) d.store(down, std::memory_order_relaxed);
  }

  // Drained at run time (the admin API, later): no new sessions, the
  // existing ones stay. The config's "drain" is Node::drain; either drains.
  bool draining() const { return draining_.load(std::memory_order_relaxed); }
  void set_draining(bool draining) { draining_.store(draining, std::memory_order_relaxed); }

 private:
  std::string name_;
  std::atomic<int> sessions_{0};
  std::atomic<int> lmtp_{0};
  std::atomic<Clock::rep> last_failure_{0};  // Clock ticks; 0: none
  static std::size_t index(config::Protocol protocol) { return static_cast<std::size_t>(protocol); }
  std::array<std::atomic<bool>, config::kProtocolCount> down_{};  // by config::Protocol
  std::atomic<bool> draining_{false};
};

// Holds one session on a node for as long as it lives (counts towards
// "fewest sessions" in the balance policy).
class NodeLease {
 public:
  NodeLease() = default;
  explicit NodeLease(std::shared_ptr<NodeState> state) : state_(std::move(state)) {
    if (state_) state_->add_session();
  }
  NodeLease(NodeLease&& other) noexcept : state_(std::move(other.state_)) {}
  NodeLease& operator=(NodeLease&& other) noexcept {
    if (this != &other) {
      release();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  NodeLease(const NodeLease&) = delete;
  NodeLease& operator=(const NodeLease&) = delete;
  ~NodeLease() { release(); }
  void release() {
    if (state_) state_->remove_session();
    state_.reset();
  }

 private:
  std::shared_ptr<NodeState> state_;
};

struct Node {
  std::string name;
  std::string island;
  std::string host;
  boost::asio::ip::address address;
  std::map<config::Protocol, std::uint16_t> ports;
  config::TlsMode tls = config::TlsMode::none;
  std::map<config::Protocol, config::TlsMode> tls_by_protocol;  // overrides `tls`
  std::string tls_name;  // the name its certificate must carry
  bool drain = false;    // the config drains it
  std::shared_ptr<NodeState> state;

  std::optional<boost::asio::ip::tcp::endpoint> endpoint(config::Protocol protocol) const;
  // TLS to the node for `protocol` (a node may take IMAP over STARTTLS and
  // LMTP in clear on a private network).
  config::TlsMode tls_for(config::Protocol protocol) const {
    auto it = tls_by_protocol.find(protocol);
    return it == tls_by_protocol.end() ? tls : it->second;
  }
  // No new sessions: drained by the config or at run time.
  bool draining() const { return drain || state->draining(); }
};

// Who holds an active-passive island's active role, and the epoch that
// counts its moves. Written only by the role store (backends/role_store.hpp)
// on the health checker's thread, read by the router on every login:
// published as an immutable value behind an atomic pointer. Kept across
// reloads by island name, like NodeState.
class IslandRole {
 public:
  struct Holder {
    std::string node;
    std::uint64_t epoch = 1;
  };
  explicit IslandRole(std::string node)
      : current_(std::make_shared<const Holder>(Holder{std::move(node), 1})) {}
  std::shared_ptr<const Holder> current() const {
    return current_.load(std::memory_order_acquire);
  }
  // The role to `node`, one epoch on; returns the new epoch.
  std::uint64_t move_to(std::string node) {
    auto next = std::make_shared<const Holder>(Holder{std::move(node), current()->epoch + 1});
    current_.store(next, std::memory_order_release);
    return next->epoch;
  }
  // As a shared role store says (backends/role_store.hpp).
  void set(Holder holder) {
    current_.store(std::make_shared<const Holder>(std::move(holder)), std::memory_order_release);
  }

 private:
  std::atomic<std::shared_ptr<const Holder>> current_;
};

struct Island {
  std::string name;
  config::IslandPolicy policy = config::IslandPolicy::balance;
  std::vector<std::shared_ptr<const Node>> nodes;
  config::Health health;
  std::shared_ptr<IslandRole> role;  // active-passive only

  const Node* node(std::string_view name) const;
};

// Active-passive: where the role should go now, if it should move. The
// holder keeps it while it is not down (no failback when an old holder
// returns: an operator promotes). A down holder hands it to the first node
// in config order that is neither down nor draining; with none, it stays.
std::optional<std::string> role_successor(const Island& island);

class Topology {
 public:
  // Builds from a validated config, resolving host names (blocking: call it
  // from the main thread, never from a worker). Node state is taken over
  // from `previous` for nodes of the same name. Throws config::ConfigError
  // when a host cannot be resolved.
  static std::shared_ptr<const Topology> build(const config::Config& config,
                                               const Topology* previous);

  const Island* island(std::string_view name) const;
  const std::vector<Island>& islands() const { return islands_; }
  std::shared_ptr<NodeState> state_of(std::string_view node) const;
  std::shared_ptr<IslandRole> role_of(std::string_view island) const;

 private:
  std::vector<Island> islands_;
};

}  // namespace isthmus::backends
