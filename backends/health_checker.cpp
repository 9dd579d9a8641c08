#include "backends/health_checker.hpp"

#include "backends/health.hpp"
#include "common/line_reader.hpp"
#include "common/log.hpp"
#include "common/transport.hpp"
#include "config/duration.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <map>
#include <random>
#include <set>
#include <thread>

#include <pthread.h>

namespace isthmus::backends {

namespace asio = boost::asio;

namespace {

constexpr std::size_t kMaxGreetingLine = 4096;
constexpr int kMaxGreetingLines = 50;  // a multi-line LMTP greeting or LHLO reply

struct CheckResult {
  bool ok = true;
  std::string problem;  // "imap: connect refused"
};

std::map<config::Protocol, NodeHealth> machines_for(const Node& node,
                                                    const config::Health& settings) {
  std::map<config::Protocol, NodeHealth> out;
  for (const auto& [protocol, port] : node.ports) {
    (void)port;
    out.emplace(protocol,
                NodeHealth(node.name, settings, std::string(config::name_of(protocol))));
  }
  return out;
}

// What a client says to leave politely before any login.
std::string_view goodbye(config::Protocol protocol) {
  switch (protocol) {
    case config::Protocol::imap: return "h LOGOUT\r\n";
    case config::Protocol::pop3: return "QUIT\r\n";
    case config::Protocol::lmtp: return "QUIT\r\n";
    case config::Protocol::managesieve: return "LOGOUT\r\n";
  }
  return "";
}

std::string read_problem(const LineResult& read, std::string_view waiting_for,
                         config::Duration timeout) {
  switch (read.status) {
    case ReadStatus::ok: return "";
    case ReadStatus::timeout:
      return fmt::format("no {} within {}", waiting_for, config::format_duration(timeout));
    case ReadStatus::closed: return fmt::format("closed before its {}", waiting_for);
    case ReadStatus::too_long: return fmt::format("{} line too long", waiting_for);
    case ReadStatus::error: break;
  }
  return fmt::format("reading its {}: {}", waiting_for, read.error.message());
}

}  // namespace

struct HealthChecker::Impl {
  // One checked node: a state machine per protocol it serves (DBMail and
  // a split Cyrus run a daemon per protocol: one can die alone), and its
  // check loop's timer.
  struct Target {
    Target(asio::io_context& io, std::shared_ptr<const Node> n, const config::Health& given)
        : node(std::move(n)), health(machines_for(*node, given)), settings(given), timer(io) {}
    std::shared_ptr<const Node> node;  // replaced on reload (same name)
    std::map<config::Protocol, NodeHealth> health;
    config::Health settings;
    // Down for any protocol: checked at the faster pace.
    bool any_down() const {
      for (const auto& [protocol, h] : health)
        if (h.down()) return true;
      return false;
    }
    Clock::time_point next_check(Clock::time_point now, double unit) const {
      const auto interval = any_down() ? settings.down_interval : settings.interval;
      return now + jittered(interval, unit);
    }
    Clock::time_point due{};
    asio::steady_timer timer;
    bool removed = false;
  };

  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::thread thread;
  // Only touched on the checker's thread:
  RoleEvents events;
  std::unique_ptr<RoleStore> roles;  // after io: destroyed (with its timers) before it
  HealthInputs inputs;
  std::map<std::string, std::shared_ptr<Target>, std::less<>> targets;
  std::mt19937_64 random{std::random_device{}()};

  double unit() { return std::uniform_real_distribution<double>(0.0, 1.0)(random); }

  void apply(HealthInputs next) {
    inputs = std::move(next);
    std::set<std::string, std::less<>> seen;
    const auto now = Clock::now();
    for (const auto& island : inputs.topology->islands()) {
      if (!island.health.active) continue;
      for (const auto& node : island.nodes) {
        seen.insert(node->name);
        auto it = targets.find(node->name);
        if (it != targets.end()) {
          auto& target = *it->second;
          target.node = node;
          target.settings = island.health;
          // Protocols the node no longer serves are forgotten (and up);
          // new ones start unknown.
          for (auto h = target.health.begin(); h != target.health.end();) {
            if (node->ports.count(h->first)) {
              h->second.configure(island.health);
              ++h;
            } else {
              node->state->set_down(h->first, false);
              h = target.health.erase(h);
            }
          }
          for (const auto& [protocol, port] : node->ports) {
            (void)port;
            if (!target.health.count(protocol))
              target.health.emplace(protocol, NodeHealth(node->name, island.health,
                                                         std::string(config::name_of(protocol))));
          }
          continue;
        }
        auto target = std::make_shared<Target>(io, node, island.health);
        // The first check soon, spread over a fifth of the interval.
        target->due = now + std::chrono::duration_cast<Clock::duration>(
                                island.health.interval * (kHealthJitter * unit()));
        targets.emplace(node->name, target);
        auto done = [name = node->name](std::exception_ptr e) {
          if (!e) return;
          try {
            std::rethrow_exception(e);
          } catch (const std::exception& ex) {
            spdlog::error("health: the check loop of node {} stopped: {}", name, ex.what());
          }
        };
        asio::co_spawn(io, check_loop(target), done);
      }
    }
    for (auto it = targets.begin(); it != targets.end();) {
      if (seen.count(it->first)) {
        ++it;
        continue;
      }
      it->second->removed = true;
      it->second->timer.cancel();
      it->second->node->state->set_down(false);
      it = targets.erase(it);
    }
    roles->follow(inputs.topology);
  }

  // A verdict, active or passive, about one protocol of a node into its
  // state machine and out to the workers (NodeState::down) and the log.
  void record(Target& target, config::Protocol protocol, const CheckResult& result) {
    auto machine = target.health.find(protocol);
    if (machine == target.health.end()) return;  // a protocol the node does not serve
    NodeHealth& health = machine->second;
    const auto now = Clock::now();
    const bool was_down = health.down();
    const bool node_was_down = target.any_down();
    std::optional<std::string> change;
    if (result.ok) change = health.record_success(now);
    else change = health.record_failure(result.problem, now);
    // Published before it is logged: once the line is there, routing knows.
    target.node->state->set_down(protocol, health.down());
    // Back up after `rise` good checks: no longer tried last either (the
    // suspect mark is the node's; the protocol that came back clears it,
    // or its logins would wait for the others' next checks).
    if (was_down && !health.down()) target.node->state->report_success();
    const auto proto = config::name_of(protocol);
    if (result.ok) {
      if (change) spdlog::info("health: {}", *change);
    } else if (change) {
      spdlog::warn("health: {}; it gets no new {} sessions while its island has a node up for "
                   "{}", *change, proto, proto);
    } else if (!was_down) {
      spdlog::info("health: node {}: failed check {} of {} before it is marked down: {}",
                   target.node->name, health.failures(), target.settings.fall, result.problem);
    } else {
      spdlog::debug("health: node {} still down: {}", target.node->name, result.problem);
    }
    // Only the sessions of the protocol that failed: a node whose imapd
    // died keeps serving its POP3 sessions (the role, if it held it,
    // moves: roles->health_changed below, which closes the rest).
    if (!was_down && health.down()) {
      const std::string why = fmt::format("node {} was marked down for {}", target.node->name,
                                          proto);
      if (events.close_protocol_sessions)
        events.close_protocol_sessions(target.node->name, protocol, why);
    }
    if (node_was_down != target.any_down() || was_down != health.down()) roles->health_changed();
    if (!was_down && health.down()) {
      // Down: check it again at the faster pace from now on.
      target.due = target.next_check(now, unit());
      target.timer.cancel();
    }
  }

  void report(const std::string& node, config::Protocol protocol, const std::string& reason) {
    auto it = targets.find(node);
    if (it == targets.end()) return;  // not checked (health.active false) or gone
    record(*it->second, protocol, CheckResult{false, reason});  // a session's report
  }

  asio::awaitable<void> check_loop(std::shared_ptr<Target> target) {
    while (!target->removed) {
      target->timer.expires_at(target->due);
      auto [ec] = co_await target->timer.async_wait(use_tuple);
      (void)ec;  // cancelled: removed, or due moved
      if (target->removed) break;
      if (Clock::now() < target->due) continue;
      co_await check_node(target);
      if (target->removed) break;
      target->due = target->next_check(Clock::now(), unit());
    }
  }

  // Every protocol the node serves, each with its own verdict.
  asio::awaitable<void> check_node(std::shared_ptr<Target> target) {
    auto node = target->node;
    const auto settings = target->settings;
    for (const auto& [protocol, port] : node->ports) {
      (void)port;
      std::string problem = co_await check_protocol(*node, protocol, settings);
      if (target->removed) co_return;
      record(*target, protocol,
             problem.empty() ? CheckResult{}
                             : CheckResult{false, fmt::format("{}: {}", config::name_of(protocol),
                                                              problem)});
    }
  }

  // One connection: connect, TLS for implicit-TLS nodes, the greeting (and
  // LHLO), goodbye. Returns "" when all was well, else what went wrong.
  asio::awaitable<std::string> check_protocol(const Node& node, config::Protocol protocol,
                                              const config::Health& settings) {
    const Deadline deadline = Deadline::after(settings.timeout);
    auto endpoint = *node.endpoint(protocol);
    Transport connection{asio::ip::tcp::socket(io)};
    auto connect = [&connection, endpoint](auto token) {
      return connection.socket().async_connect(endpoint, token);
    };
    auto [ec] = co_await until(deadline, connect);
    if (ec == asio::error::connection_refused) co_return "connect refused";
    if (ec == asio::error::timed_out)
      co_return fmt::format("connect timed out after {}",
                            config::format_duration(settings.timeout));
    if (ec) co_return "connect: " + ec.message();
    if (node.tls_for(protocol) == config::TlsMode::implicit) {
      if (!inputs.node_tls) co_return "implicit TLS but no TLS context";
      auto tls_ec = co_await connection.start_tls_as_client(*inputs.node_tls, node.tls_name,
                                                            inputs.verify_tls, deadline);
      if (tls_ec == asio::error::timed_out)
        co_return fmt::format("no TLS handshake within {}",
                              config::format_duration(settings.timeout));
      if (tls_ec) co_return "TLS handshake: " + connection.tls_failure_reason(tls_ec);
    }
    LineReader reader(kMaxGreetingLine);
    for (int lines = 0;; ++lines) {
      LineResult read = co_await reader.read_line(connection, deadline);
      std::string problem = read_problem(read, "greeting", settings.timeout);
      if (problem.empty()) {
        if (auto bad = greeting_problem(protocol, read.line)) problem = *bad;
      }
      if (!problem.empty()) {
        connection.close();
        co_return problem;
      }
      // LMTP greetings may span lines ("220-..."); the last has "220 ".
      // ManageSieve's is capability lines, then OK (RFC 5804 section 1.7).
      if (protocol == config::Protocol::managesieve) {
        if (greeting_continues(protocol, read.line)) {
          if (lines >= kMaxGreetingLines) co_return "greeting too long";
          continue;
        }
        break;
      }
      if (protocol != config::Protocol::lmtp || read.line.size() < 4 || read.line[3] != '-') break;
      if (lines >= kMaxGreetingLines) co_return "greeting too long";
    }
    if (protocol == config::Protocol::lmtp && settings.lmtp_lhlo) {
      std::string problem = co_await check_lhlo(connection, reader, deadline, settings.timeout);
      if (!problem.empty()) {
        connection.close();
        co_return problem;
      }
    }
    const std::string_view bye = goodbye(protocol);
    auto [write_ec, written] = co_await connection.write_all(asio::buffer(bye.data(), bye.size()),
                                                             deadline);
    (void)write_ec;
    (void)written;
    connection.close();
    co_return "";
  }

  // LHLO answered by 250 (RFC 2033 section 4.1).
  asio::awaitable<std::string> check_lhlo(Transport& connection, LineReader& reader,
                                          Deadline deadline, config::Duration timeout) {
    const std::string lhlo = "LHLO " + inputs.lhlo_name + "\r\n";
    auto [ec, written] = co_await connection.write_all(asio::buffer(lhlo), deadline);
    (void)written;
    if (ec) co_return "sending LHLO: " + ec.message();
    for (int lines = 0; lines < kMaxGreetingLines; ++lines) {
      LineResult read = co_await reader.read_line(connection, deadline);
      std::string problem = read_problem(read, "LHLO reply", timeout);
      if (!problem.empty()) co_return problem;
      if (read.line.size() < 3 || read.line.compare(0, 3, "250") != 0)
        co_return "LHLO answered: " + sanitize(read.line, 100);
      if (read.line.size() < 4 || read.line[3] != '-') co_return "";
    }
    co_return "LHLO reply too long";
  }
};

HealthChecker::HealthChecker(RoleStoreMaker roles, RoleStoreContext context)
    : impl_(std::make_unique<Impl>()) {
  context.executor = impl_->io.get_executor();
  context.events.close_sessions = [impl = impl_.get()](const std::string& node,
                                                       const std::string& why) {
    if (impl->events.close_sessions) impl->events.close_sessions(node, why);
  };
  impl_->roles = roles ? roles(std::move(context)) : make_local_role_store(std::move(context));
  impl_->thread = std::thread([impl = impl_.get()] {
    pthread_setname_np(pthread_self(), "isthmus-health");
    for (;;) {
      try {
        impl->io.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("health: unexpected error on the checker thread: {}", e.what());
      }
    }
  });
}

HealthChecker::~HealthChecker() { stop(); }

void HealthChecker::update(HealthInputs inputs) {
  if (!inputs.topology) return;
  auto apply = [impl = impl_.get(), inputs = std::move(inputs)]() mutable {
    impl->apply(std::move(inputs));
  };
  asio::post(impl_->io, std::move(apply));
}

void HealthChecker::report_failure(const std::string& node, config::Protocol protocol,
                                   std::string reason) {
  auto report = [impl = impl_.get(), node, protocol, reason = std::move(reason)] {
    impl->report(node, protocol, reason);
  };
  asio::post(impl_->io, std::move(report));
}

void HealthChecker::set_events(RoleEvents events) {
  asio::post(impl_->io, [impl = impl_.get(), events = std::move(events)]() mutable {
    impl->events = std::move(events);
  });
}

void HealthChecker::promote(std::string island, std::string node,
                            std::function<void(std::string)> done) {
  asio::post(impl_->io, [impl = impl_.get(), island = std::move(island), node = std::move(node),
                         done = std::move(done)]() mutable {
    impl->roles->promote(std::move(island), std::move(node), std::move(done));
  });
}

void HealthChecker::stop() {
  if (!impl_->thread.joinable()) return;
  impl_->work.reset();
  impl_->io.stop();
  impl_->thread.join();
  impl_->roles->stop();  // its thread is gone: nothing runs concurrently
}

}  // namespace isthmus::backends
