#pragma once
// Active health checks of every node, on a thread and io_context of their
// own (never on a worker): per node, for each protocol it serves, connect
// and read the greeting within the island's health timeout (after a TLS
// handshake for implicit-TLS nodes; optionally LHLO for LMTP), then say
// goodbye (LOGOUT/QUIT). The verdicts go through a NodeHealth state machine
// per node and protocol (backends/health.hpp) and are published in
// NodeState::down(protocol), which the router reads without locks: a node
// whose imapd died still takes POP3 sessions. Routing never waits for a
// check. A protocol going down closes that protocol's sessions on the node
// only (RoleEvents::close_protocol_sessions); the active role goes by the
// node as a whole (down for any protocol: role_successor).
//
// Sessions report what they see (report_failure): those count as failed
// checks at once. The checker follows reloads (update): nodes are matched
// by name, so their health outlives a SIGHUP, like NodeState.

#include "backends/role_store.hpp"
#include "backends/topology.hpp"

#include <boost/asio/ssl/context.hpp>

#include <functional>
#include <memory>
#include <string>

namespace isthmus::backends {

// What the checker needs from one runtime snapshot.
struct HealthInputs {
  std::shared_ptr<const Topology> topology;
  std::shared_ptr<boost::asio::ssl::context> node_tls;  // set when a node uses TLS
  bool verify_tls = true;
  std::string lhlo_name = "localhost";  // for the LMTP LHLO check
};

// Makes the role store, given the checker's executor (and the events it
// must forward). Empty: a local store with default settings.
using RoleStoreMaker = std::function<std::unique_ptr<RoleStore>(RoleStoreContext)>;

class HealthChecker {
 public:
  // Starts the thread; it checks nothing until update(). `roles` (with
  // `context` less its executor and events) decides active roles.
  explicit HealthChecker(RoleStoreMaker roles = {}, RoleStoreContext context = {});
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Checks the nodes of `inputs.topology` from now on (any thread). Islands
  // with health.active false are not checked and their nodes never down.
  void update(HealthInputs inputs);

  // A real session could not use `node` for `protocol` (refused, timed
  // out, broken greeting): one failed check of that protocol, at once (any
  // thread; never blocks).
  void report_failure(const std::string& node, config::Protocol protocol, std::string reason);

  // Where sessions are closed: a node that goes down, or an old role
  // holder (any thread; applies from the next event).
  void set_events(RoleEvents events);

  // An operator's promote (role_store.hpp); `done` runs on the checker's
  // thread with "" or why not (any thread).
  void promote(std::string island, std::string node, std::function<void(std::string)> done);

  // Stops the thread; checks in flight are dropped. Idempotent; not from
  // the checker's own thread.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus::backends
