#pragma once
// The admin API (docs/operations.md): HTTP/1.1 with JSON bodies, on a unix
// socket (guarded by its file mode, 0660) and/or a TCP address (every
// request needs `Authorization: Bearer <token>`), served by Boost.Beast on a
// thread of its own, never on a worker. It reads what the workers publish
// (topology, node state, roles, metrics) and acts through the Server
// (sessions, kicks), the health checker (promote) and the composition root
// (reload). GET /metrics is Prometheus' text format.

#include "config/config.hpp"
#include "moves/move_jobs.hpp"
#include "proxy/runtime.hpp"
#include "proxy/server.hpp"

#include <functional>
#include <memory>
#include <string>

namespace isthmus::admin {

struct AdminContext {
  proxy::RuntimeHolder* holder = nullptr;
  proxy::Server* server = nullptr;
  // Reloads the config as SIGHUP does (on the main thread) and waits:
  // "" and the new generation, or the problems (the old config stays).
  std::function<std::string(std::uint64_t& generation)> reload;
  std::string version;
  // Move jobs (POST/GET /v1/moves); null when the config has no "moves".
  moves::MoveJobs* moves = nullptr;
};

class AdminServer {
 public:
  // Binds what `settings` asks for and starts serving. Throws
  // std::runtime_error naming the address when it cannot bind.
  AdminServer(AdminContext context, const config::Admin& settings);
  ~AdminServer();  // stop()
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  void stop();  // closes the listeners and open connections; joins the thread

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus::admin
