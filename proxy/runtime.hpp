#pragma once
// Everything a session needs to route a login, as one immutable snapshot:
// the config, the topology built from it and the directory. A reload builds
// a new snapshot and publishes it; sessions keep the one they started with.

#include "backends/health_checker.hpp"
#include "backends/topology.hpp"
#include "config/config.hpp"
#include "director/auth_guard.hpp"
#include "director/directory.hpp"
#include "director/oauth_introspection.hpp"
#include "proxy/connection_limits.hpp"
#include "proxy/metrics.hpp"

#include <boost/asio/ssl/context.hpp>

#include <atomic>
#include <memory>

namespace isthmus::proxy {

struct Runtime {
  std::shared_ptr<const config::Config> config;
  std::shared_ptr<const backends::Topology> topology;
  std::shared_ptr<director::Directory> directory;
  std::shared_ptr<director::AuthGuard> auth_guard;  // kept across reloads
  std::shared_ptr<Metrics> metrics;                 // kept across reloads; may be null
  std::shared_ptr<PreloginLimiter> prelogin;        // kept across reloads; may be null
  // Active checks and passive reports (kept across reloads; null for
  // --check-config). Sessions report node failures to it.
  std::shared_ptr<backends::HealthChecker> health;
  std::shared_ptr<boost::asio::ssl::context> server_tls;  // set when config.tls is
  std::shared_ptr<boost::asio::ssl::context> node_tls;    // set when a node uses TLS
  // auth.oauth2 with an introspection endpoint (auth.mode "directory").
  std::shared_ptr<const director::OAuthIntrospector> oauth;
  std::uint64_t generation = 0;  // 1 for the first config, +1 per reload
};

class RuntimeHolder {
 public:
  std::shared_ptr<const Runtime> current() const { return current_.load(std::memory_order_acquire); }
  void publish(std::shared_ptr<const Runtime> runtime) {
    current_.store(std::move(runtime), std::memory_order_release);
  }

 private:
  std::atomic<std::shared_ptr<const Runtime>> current_;
};

}  // namespace isthmus::proxy
