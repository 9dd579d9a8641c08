#include "app/application.hpp"

#include "admin/admin_server.hpp"
#include "common/notify.hpp"
#include "config/config_loader.hpp"
#include "config/duration.hpp"
#include "director/caching_directory.hpp"
#include "director/ldap_directory.hpp"
#include "director/sql_directory.hpp"
#include "director/static_directory.hpp"
#include "moves/move_jobs.hpp"
#include "proxy/server.hpp"
#include "proxy/tls_contexts.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <future>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace isthmus::app {

namespace asio = boost::asio;

namespace {

constexpr const char* kVersion = "0.1.0";

// Large messages are spooled there: find out now, not with the first one.
void check_spool_dir(const config::Config& config) {
  int fd = ::open(config.lmtp.spool_dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw config::ConfigError(fmt::format("{}: /lmtp/spool_dir: cannot create files in {}: {}",
                                          config.path.string(), config.lmtp.spool_dir.string(),
                                          std::strerror(errno)));
  }
  ::close(fd);
}

// The directory a config asks for. A reload re-reads a static file, but
// keeps a network directory (its connections and its cache) when its
// settings did not change: a SIGHUP must not empty the cache that carries
// logins through a directory outage.
std::shared_ptr<director::Directory> make_directory(const config::Config& config,
                                                    const proxy::Runtime* previous,
                                                    bool connect) {
  const auto& settings = config.directory;
  if (!connect && settings.type != "static") return nullptr;
  if (previous && settings.type != "static") {
    const auto& old = previous->config->directory;
    bool same = old.type == settings.type && old.cache == settings.cache &&
                (settings.type == "ldap" ? old.ldap == settings.ldap : old.sql == settings.sql);
    if (same) return previous->directory;
  }
  std::shared_ptr<director::Directory> directory;
  if (settings.type == "ldap") {
    directory = director::make_ldap_directory(settings.ldap);
  } else if (settings.type == "sql") {
    directory = director::make_sql_directory(settings.sql);
  } else {
    auto known = [&config](std::string_view island) {
      return config.find_island(island) != nullptr;
    };
    directory = director::StaticDirectory::load(settings.file, config.login_names, known);
  }
  if (settings.cache.enabled)
    directory = director::CachingDirectory::create(std::move(directory), settings.cache);
  return directory;
}

// The health checker with the role store the config asks for.
std::shared_ptr<backends::HealthChecker> make_health_checker(const config::Config& config) {
  backends::RoleStoreContext context;
  context.instance = config.instance;
  context.settings = config.roles;
  backends::RoleStoreMaker maker;
  if (config.roles.store == config::RoleStoreKind::sql) maker = backends::make_sql_role_store;
  return std::make_shared<backends::HealthChecker>(std::move(maker), std::move(context));
}

}  // namespace

std::shared_ptr<const proxy::Runtime> build_runtime(const std::filesystem::path& config_file,
                                                    const proxy::Runtime* previous,
                                                    bool connect) {
  auto config = std::make_shared<const config::Config>(config::load_config(config_file));
  auto runtime = std::make_shared<proxy::Runtime>();
  runtime->config = config;
  runtime->topology =
      backends::Topology::build(*config, previous ? previous->topology.get() : nullptr);
  runtime->directory = make_directory(*config, previous, connect);
  // Its tables are sized once (auth.throttle_entries): a reload keeps them.
  runtime->auth_guard = previous ? previous->auth_guard
                                 : std::make_shared<director::AuthGuard>(
                                       config->auth.throttle_entries);
  runtime->metrics = previous ? previous->metrics : std::make_shared<proxy::Metrics>();
  runtime->prelogin =
      previous ? previous->prelogin : std::make_shared<proxy::PreloginLimiter>();
  // One checker (and role store) for the life of the process; --check-config
  // checks nothing.
  if (previous) runtime->health = previous->health;
  else if (connect) runtime->health = make_health_checker(*config);
  if (config->tls) runtime->server_tls = proxy::make_server_tls(*config->tls, config->path.string());
  if (config->auth.oauth2.enabled && !config->auth.oauth2.introspection_url.empty())
    runtime->oauth = std::make_shared<director::OAuthIntrospector>(
        config->auth.oauth2, config->login_names, config->path.string());
  bool nodes_use_tls = false;
  for (const auto& island : config->islands)
    for (const auto& node : island.nodes)
      for (const auto& [protocol, port] : node.ports) {
        (void)port;
        nodes_use_tls |= node.tls_for(protocol) != config::TlsMode::none;
      }
  if (nodes_use_tls) runtime->node_tls = proxy::make_node_tls(config->node_tls, config->path.string());
  bool serves_lmtp = false;
  for (const auto& l : config->listeners) serves_lmtp |= l.protocol == config::Protocol::lmtp;
  if (serves_lmtp) check_spool_dir(*config);
  runtime->generation = previous ? previous->generation + 1 : 1;
  return runtime;
}

namespace {

// Points the health checker at a runtime that is now live.
void follow_health(const proxy::Runtime& runtime) {
  if (!runtime.health) return;
  backends::HealthInputs inputs;
  inputs.topology = runtime.topology;
  inputs.node_tls = runtime.node_tls;
  inputs.verify_tls = runtime.config->node_tls.verify;
  inputs.lhlo_name = runtime.config->lmtp.hostname;
  runtime.health->update(std::move(inputs));
}

// A user the directory moved to another island (seen by the cache on a
// refresh) keeps no session on the old one: they are closed, so no client
// goes on writing to a mailbox that now lives elsewhere.
void follow_island_changes(const proxy::Runtime& runtime, proxy::Server& server) {
  auto cache = std::dynamic_pointer_cast<director::CachingDirectory>(runtime.directory);
  if (!cache) return;
  if (!runtime.config->directory.cache.close_on_island_change) {
    cache->observe_island_changes(nullptr);
    return;
  }
  cache->observe_island_changes([&server](const std::string& user, const std::string& from,
                                          const std::string& to) {
    proxy::SessionFilter filter;
    filter.user = user;
    filter.island = from;
    // Not waited for: this runs on the directory's thread.
    server.kick(filter, fmt::format("the directory moved the user from island {} to {}",
                                    sanitize(from, 100), sanitize(to, 100)),
                Clock::duration::zero());
  });
}

// Drained nodes (config "drain"), said once when that changes.
void log_drain_changes(const backends::Topology* old_topology,
                       const backends::Topology& new_topology) {
  for (const auto& island : new_topology.islands()) {
    for (const auto& node : island.nodes) {
      bool was = false;
      if (old_topology) {
        if (const auto* old_island = old_topology->island(island.name)) {
          for (const auto& old_node : old_island->nodes)
            if (old_node->name == node->name) was = old_node->drain;
        }
      }
      if (node->drain && !was)
        spdlog::info("node {} draining (config): no new sessions; its open sessions ({}) stay",
                     node->name, node->state->sessions());
      else if (!node->drain && was)
        spdlog::info("node {} no longer draining (config): it takes new sessions again",
                     node->name);
    }
  }
}

// What a reload cannot change without a restart, said out loud.
void warn_about_restart_only_changes(const config::Config& old_config,
                                     const config::Config& new_config) {
  auto same_listeners = [&] {
    if (old_config.listeners.size() != new_config.listeners.size()) return false;
    for (std::size_t i = 0; i < old_config.listeners.size(); ++i) {
      const auto& a = old_config.listeners[i];
      const auto& b = new_config.listeners[i];
      if (a.name != b.name || a.protocol != b.protocol || a.address != b.address ||
          a.port != b.port)
        return false;
    }
    return true;
  };
  if (!same_listeners())
    spdlog::warn("reload: listener changes take effect only after a restart");
  if (old_config.workers != new_config.workers)
    spdlog::warn("reload: a new worker count takes effect only after a restart");
  if (old_config.log.file != new_config.log.file)
    spdlog::warn("reload: a new log file takes effect only after a restart");
  if (old_config.admin != new_config.admin)
    spdlog::warn("reload: admin API changes take effect only after a restart");
  if (old_config.moves != new_config.moves)
    spdlog::warn("reload: changes to \"moves\" take effect only after a restart");
  auto roles_without_spread = [](config::Roles roles) {
    roles.close_spread = {};
    return roles;
  };
  if (roles_without_spread(old_config.roles) != roles_without_spread(new_config.roles) ||
      old_config.instance != new_config.instance)
    spdlog::warn("reload: changes to \"roles\" (other than close_spread) and to \"instance\" "
                 "take effect only after a restart");
}

class Lifecycle {
 public:
  Lifecycle(asio::io_context& io, proxy::RuntimeHolder& holder, proxy::Server& server,
            std::filesystem::path config_file)
      : io_(io), holder_(holder), server_(server), config_file_(std::move(config_file)),
        signals_(io, SIGHUP, SIGTERM, SIGINT), timer_(io) {}

  void start() { wait_for_signal(); }

 private:
  void wait_for_signal() {
    signals_.async_wait([this](const boost::system::error_code& ec, int signal) {
      if (ec) return;
      if (signal == SIGHUP) {
        reload();
        wait_for_signal();
      } else {
        shutdown(signal);
      }
    });
  }

  // As SIGHUP: "" when the new config is live (its generation in
  // `generation`), else what is wrong with it (the old one stays).
  std::string reload(std::uint64_t* generation = nullptr) {
    auto current = holder_.current();
    // Before READY=1 (still waiting for the directory), a reload must not
    // make systemd think the service is ready.
    bool announced = ready_.load();
    if (announced) notify::reloading();
    try {
      auto next = build_runtime(config_file_, current.get());
      warn_about_restart_only_changes(*current->config, *next->config);
      spdlog::set_level(next->config->log.level);
      holder_.publish(next);
      follow_health(*next);
      follow_island_changes(*next, server_);
      log_drain_changes(current->topology.get(), *next->topology);
      spdlog::info("reload: config generation {} from {} is live ({} islands)", next->generation,
                   config_file_.string(), next->config->islands.size());
      if (generation) *generation = next->generation;
      if (announced) notify::ready(fmt::format("config generation {} is live", next->generation));
      return "";
    } catch (const std::exception& e) {
      spdlog::error("reload failed, keeping generation {}:\n{}", current->generation, e.what());
      if (announced)
        notify::ready(fmt::format("reload failed, generation {} still live: {}",
                                  current->generation, e.what()));
      return e.what();
    }
  }

 public:
  // From another thread (the admin API): the reload runs on the main
  // thread, like SIGHUP's, and this waits for it.
  std::string reload_from_elsewhere(std::uint64_t& generation) {
    // Nothing of the caller's is captured: it may stop waiting first.
    using Outcome = std::pair<std::string, std::uint64_t>;
    auto promise = std::make_shared<std::promise<Outcome>>();
    auto answer = promise->get_future();
    if (stopping_.load()) return "the instance is stopping";
    asio::post(io_, [this, promise] {
      if (stopping_.load()) {
        promise->set_value({"the instance is stopping", 0});
        return;
      }
      std::uint64_t next = 0;
      std::string problems = reload(&next);
      promise->set_value({std::move(problems), next});
    });
    if (answer.wait_for(std::chrono::seconds(30)) != std::future_status::ready)
      return "the reload did not finish within 30s (the instance may be stopping)";
    auto [problems, next] = answer.get();
    generation = next;
    return problems;
  }

  bool stopping() const { return stopping_.load(); }
  // READY=1 (once; later reloads send RELOADING=1 and READY=1 again).
  void ready(const std::string& status) {
    if (stopping_.load() || ready_.exchange(true)) return;
    notify::ready(status);
  }

 private:
  void shutdown(int signal) {
    if (stopping_) {
      spdlog::warn("second stop signal: closing every session now");
      server_.close_all_sessions();
      return;
    }
    stopping_ = true;
    notify::stopping(fmt::format("stopping; {} sessions open", server_.live_sessions()));
    signals_.async_wait([this](const boost::system::error_code& ec, int sig) {
      if (!ec) shutdown(sig);
    });
    auto grace = holder_.current()->config->timeouts.shutdown_grace;
    spdlog::info("signal {}: stopping; {} sessions open; relayed sessions get {} to finish",
                 signal == SIGTERM ? "TERM" : "INT", server_.live_sessions(),
                 config::format_duration(grace));
    server_.begin_shutdown();
    grace_ends_ = Clock::now() + grace;
    poll();
  }

  // Every 50ms: done when no session is left; at the end of the grace
  // period, the remaining sessions are closed.
  void poll() {
    if (server_.live_sessions() == 0) {
      signals_.cancel();
      timer_.cancel();
      return;
    }
    if (!forced_ && Clock::now() >= grace_ends_) {
      forced_ = true;
      spdlog::info("grace period over: closing {} sessions", server_.live_sessions());
      server_.close_all_sessions();
    }
    timer_.expires_after(std::chrono::milliseconds(50));
    timer_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) poll();
    });
  }

  asio::io_context& io_;
  proxy::RuntimeHolder& holder_;
  proxy::Server& server_;
  std::filesystem::path config_file_;
  asio::signal_set signals_;
  asio::steady_timer timer_;
  std::atomic<bool> stopping_{false};  // read by the admin thread
  std::atomic<bool> ready_{false};     // READY=1 sent
  bool forced_ = false;
  Clock::time_point grace_ends_;
};

// Until a network directory answers one lookup (found or not: it is
// reachable), then READY=1. STATUS= says what it waits for.
asio::awaitable<void> wait_for_directory(std::shared_ptr<director::Directory> directory,
                                         std::string summary, std::string type,
                                         Lifecycle& lifecycle) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (unsigned attempt = 1; !lifecycle.stopping(); ++attempt) {
    // A name no directory holds: "not found" proves it reachable.
    auto result = co_await directory->lookup("isthmus-readiness-probe.invalid");
    if (lifecycle.stopping()) co_return;
    if (result.status != director::LookupStatus::unavailable) {
      spdlog::info("the {} directory answers: ready", type);
      lifecycle.ready(summary);
      co_return;
    }
    if (attempt == 1 || attempt % 30 == 0)
      spdlog::warn("not ready yet: the {} directory does not answer ({}); retrying every second "
                   "(\"directory\": {{\"optional\": true}} would not wait)",
                   type, result.detail);
    notify::status(fmt::format("waiting for the {} directory to answer: {}", type, result.detail));
    timer.expires_after(std::chrono::seconds(1));
    co_await timer.async_wait(asio::use_awaitable);
  }
}

// READY=1 for systemd (Type=notify), once every listener is bound (and the
// admin API too): at once with a static directory or one the config calls
// optional, else when the LDAP/SQL directory has answered.
void announce_ready(asio::io_context& io, const proxy::Runtime& runtime, std::string summary,
                    Lifecycle& lifecycle) {
  const auto& settings = runtime.config->directory;
  if (settings.type == "static" || settings.optional || !runtime.directory) {
    lifecycle.ready(summary);
    return;
  }
  notify::status(fmt::format("waiting for the {} directory to answer", settings.type));
  asio::co_spawn(io, wait_for_directory(runtime.directory, std::move(summary), settings.type,
                                        lifecycle),
                 asio::detached);
}

}  // namespace

int run(const std::filesystem::path& config_file) {
  proxy::RuntimeHolder holder;
  setup_logging(LogSettings{});  // standard error until the config says otherwise
  try {
    auto runtime = build_runtime(config_file, nullptr);
    setup_logging(runtime->config->log);
    holder.publish(runtime);
  } catch (const std::exception& e) {
    spdlog::error("cannot start:\n{}", e.what());
    return 1;
  }
  auto config = holder.current()->config;
  // Signals are handled on the main thread's io_context.
  asio::io_context io;
  proxy::Server server(holder, config->workers);
  Lifecycle lifecycle(io, holder, server, config_file);
  lifecycle.start();
  ::signal(SIGPIPE, SIG_IGN);
  try {
    server.start();
  } catch (const std::exception& e) {
    spdlog::error("cannot start: {}", e.what());
    return 1;
  }
  spdlog::info("isthmus {} ready: instance {}, {} islands, config generation {}", kVersion,
               config->instance, config->islands.size(), holder.current()->generation);
  // Move jobs: before the admin API that starts them, stopped after it.
  std::unique_ptr<moves::MoveJobs> move_jobs;
  if (config->moves.enabled) {
    try {
      move_jobs = std::make_unique<moves::MoveJobs>(*config);
    } catch (const std::exception& e) {
      spdlog::error("cannot start: {}", e.what());
      server.begin_shutdown();
      server.close_all_sessions();
      return 1;
    }
  }
  std::unique_ptr<admin::AdminServer> admin_server;
  if (!config->admin.socket.empty() || !config->admin.listen.empty()) {
    admin::AdminContext context;
    context.holder = &holder;
    context.server = &server;
    context.version = kVersion;
    context.moves = move_jobs.get();
    context.reload = [&lifecycle](std::uint64_t& generation) {
      return lifecycle.reload_from_elsewhere(generation);
    };
    try {
      admin_server = std::make_unique<admin::AdminServer>(std::move(context), config->admin);
    } catch (const std::exception& e) {
      spdlog::error("cannot start: {}", e.what());
      server.begin_shutdown();
      server.close_all_sessions();
      return 1;
    }
  }
  // The health thread calls into `server`: stopped before `server` goes,
  // however run() is left.
  struct StopHealth {
    std::shared_ptr<backends::HealthChecker> health;
    ~StopHealth() {
      if (health) health->stop();
    }
  } stop_health{holder.current()->health};
  if (auto health = holder.current()->health) {
    backends::RoleEvents events;
    events.close_sessions = [&server, &holder](const std::string& node, const std::string& why) {
      auto spread = holder.current()->config->roles.close_spread;
      spdlog::info("closing the sessions on node {} over {}: {}", node,
                   config::format_duration(spread), why);
      server.close_node_sessions(node, spread, why);
    };
    events.close_protocol_sessions = [&server, &holder](const std::string& node,
                                                        config::Protocol protocol,
                                                        const std::string& why) {
      auto spread = holder.current()->config->roles.close_spread;
      spdlog::info("closing the {} sessions on node {} over {}: {}", config::name_of(protocol),
                   node, config::format_duration(spread), why);
      server.close_node_sessions(node, spread, why, protocol);
    };
    health->set_events(std::move(events));
  }
  follow_health(*holder.current());
  follow_island_changes(*holder.current(), server);
  log_drain_changes(nullptr, *holder.current()->topology);
  announce_ready(io, *holder.current(),
                 fmt::format("serving: instance {}, {} listeners, {} islands", config->instance,
                             config->listeners.size(), config->islands.size()),
                 lifecycle);
  io.run();
  if (admin_server) admin_server->stop();
  if (move_jobs) move_jobs->stop();
  server.join();
  if (auto health = holder.current()->health) health->stop();
  spdlog::info("stopped");
  return 0;
}

}  // namespace isthmus::app
