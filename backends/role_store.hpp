#pragma once
// Who holds each active-passive island's active role (docs/health.md).
// Envoy's split: health checks (backends/health_checker.hpp) say what each
// node looks like from here; a role store decides where the role goes and
// publishes it in the island's IslandRole, which the router reads.
//
// - `local`: this instance decides alone. A down holder hands the role to
//   the first node in config order that is up and not draining; the old
//   holder coming back does not get it back (promote moves it).
// - `sql`: a row per island in a shared MySQL/MariaDB database holds the
//   node and an epoch; it changes only by compare-and-set on the epoch, and
//   only when a majority of the live instances (heartbeats) see the holder
//   down. Every instance follows the row (sql_role_store.cpp).
//
// Whenever an island's holder changes here, by a decision or by following
// the store, the sessions on the old holder are closed (spread out:
// RoleEvents::close_sessions). The instance that moved the role runs the
// hook (backends/role_hook.hpp): once per move, whoever follows it does not.
//
// Threading: every member is called on the health checker's thread, whose
// executor the store was created with.

#include "backends/topology.hpp"
#include "config/config.hpp"

#include <boost/asio/any_io_executor.hpp>

#include <functional>
#include <memory>
#include <string>

namespace isthmus::backends {

class HookRunner;

// What the rest of the instance hears from its role store.
struct RoleEvents {
  // Close the relayed sessions on `node`, spread over a few seconds; `why`
  // ends up in their session-end lines. May be empty.
  std::function<void(const std::string& node, const std::string& why)> close_sessions;
  // Close only the relayed sessions of `protocol` on `node` (the health
  // checker, when one protocol of a node goes down). May be empty.
  std::function<void(const std::string& node, config::Protocol protocol, const std::string& why)>
      close_protocol_sessions;
};

class RoleStore {
 public:
  virtual ~RoleStore() = default;

  // The topology in force (the first call starts the store). Islands are
  // matched by name; their IslandRole objects outlive reloads.
  virtual void follow(std::shared_ptr<const Topology> topology) = 0;

  // Some node went up or down: review who holds the roles.
  virtual void health_changed() = 0;

  // An operator's promote: the role of `island` to `node`. `done` is
  // called on the checker's thread with "" when the role moved (or was
  // there already), else why not.
  virtual void promote(std::string island, std::string node,
                       std::function<void(std::string)> done) = 0;

  // Ends background work (the sql store's poll loop). Idempotent.
  virtual void stop() = 0;
};

struct RoleStoreContext {
  boost::asio::any_io_executor executor;  // the health checker's (one thread)
  std::string instance;                   // config "instance": in hooks, logs and the store
  config::Roles settings;
  RoleEvents events;
};

std::unique_ptr<RoleStore> make_local_role_store(RoleStoreContext context);
std::unique_ptr<RoleStore> make_sql_role_store(RoleStoreContext context);

// The part both stores share: publishes `next` as the island's holder, logs
// `why`, closes the old holder's sessions, and -- when `moved_here`, this
// instance made the move -- runs the hook. Does nothing if `next` is what
// the island holds already.
class RolePublisher {
 public:
  explicit RolePublisher(RoleStoreContext& context);
  ~RolePublisher();
  void publish(const Island& island, const IslandRole::Holder& next, const std::string& why,
               bool moved_here);

 private:
  RoleStoreContext& context_;
  std::unique_ptr<HookRunner> hooks_;
};

// Whether `island` can take `node` as its holder now: "" or why not.
std::string promote_problem(const Island* island, std::string_view island_name,
                            std::string_view node);

}  // namespace isthmus::backends
