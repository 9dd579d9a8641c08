#include "proxy/server.hpp"

#include "common/log.hpp"
#include "common/transport.hpp"
#include "proxy/imap/imap_session.hpp"
#include "proxy/lmtp/lmtp_session.hpp"
#include "proxy/pop3/pop3_session.hpp"
#include "proxy/sieve/sieve_session.hpp"
#include "proxy/relay.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <future>
#include <optional>
#include <random>
#include <unordered_set>

#include <sys/socket.h>

namespace isthmus::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

struct Server::Worker {
  explicit Worker(std::atomic<std::size_t>& total) : sessions(&total) {}
  // Before io: session frames destroyed with the io_context unlist
  // themselves from it.
  SessionRegistry sessions;
  asio::io_context io{1};
  // Eviction runs a coroutine on every worker's thread, from any worker's
  // accept loop: no worker may run out of work and leave its thread while
  // an accept loop could still ask it (the asking loop would wait forever
  // and its own worker never end, so a stop hung). Released when the last
  // accept loop of every worker has ended.
  asio::executor_work_guard<asio::io_context::executor_type> busy{io.get_executor()};
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::thread thread;
};

namespace {

// One session, from accept to login; a logged-in session goes to the relay.
template <typename ProtocolSession>
asio::awaitable<void> serve(SessionRegistry& registry, tcp::socket socket,
                            std::shared_ptr<const Runtime> runtime,
                            std::shared_ptr<const config::Listener> listener) {
  auto session = std::make_unique<ProtocolSession>(registry, std::move(socket), std::move(runtime),
                                                   std::move(listener));
  bool logged_in = co_await session->run();
  if (logged_in) start_relay(std::move(session));
}

void log_escaped(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("session ended by an unexpected error: {}", ex.what());
  }
}

// On the worker that owns `sessions`: when its oldest connection not logged
// in started (max() if it has none).
asio::awaitable<Clock::time_point> oldest_start(SessionRegistry* sessions) {
  Session* oldest = sessions->oldest_not_logged_in();
  co_return oldest ? oldest->record().started : Clock::time_point::max();
}

// On the worker that owns `sessions`: closes its oldest connection not
// logged in; false if it has none (logged-in sessions are never closed
// for this).
asio::awaitable<bool> evict_local(SessionRegistry* sessions, std::shared_ptr<const Runtime> runtime,
                                  std::string why) {
  Session* oldest = sessions->oldest_not_logged_in();
  if (!oldest) co_return false;
  oldest->request_stop(StopKind::kick, why);
  if (runtime->metrics) runtime->metrics->connection_limited(ConnectionLimit::evicted);
  co_return true;
}

// Closes the oldest connection not logged in of every worker, to make room
// for a new one: each worker is asked on its own thread, and the one with
// the oldest closes it (the load balancer's connections spread over the
// workers, so the oldest may be on any of them). False if no worker has one.
asio::awaitable<bool> evict_oldest_not_logged_in(const std::vector<WorkerSessions>& workers,
                                                 std::shared_ptr<const Runtime> runtime,
                                                 std::string why) {
  // A few tries: the chosen worker's oldest may log in (or end) meanwhile.
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::optional<std::size_t> chosen;
    Clock::time_point best = Clock::time_point::max();
    for (std::size_t i = 0; i < workers.size(); ++i) {
      const auto started = co_await asio::co_spawn(workers[i].executor,
                                                   oldest_start(workers[i].sessions),
                                                   asio::use_awaitable);
      if (started < best) {
        best = started;
        chosen = i;
      }
    }
    if (!chosen) co_return false;
    const bool evicted = co_await asio::co_spawn(
        workers[*chosen].executor, evict_local(workers[*chosen].sessions, runtime, why),
        asio::use_awaitable);
    if (evicted) co_return true;
  }
  co_return false;
}

// At most one line a second about refused connections, with a count of
// the ones not logged (a flood must not become a flood of log lines).
void log_refused(const std::string& what) {
  static std::atomic<Clock::rep> last{0};
  static std::atomic<std::uint64_t> quiet{0};
  const auto now = Clock::now().time_since_epoch().count();
  auto seen = last.load(std::memory_order_relaxed);
  if (now - seen < std::chrono::duration_cast<Clock::duration>(std::chrono::seconds(1)).count() ||
      !last.compare_exchange_strong(seen, now, std::memory_order_relaxed)) {
    quiet.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const auto suppressed = quiet.exchange(0, std::memory_order_relaxed);
  spdlog::warn("{}{}", what,
               suppressed ? fmt::format(" ({} more such since the last line)", suppressed) : "");
}

// Accept errors must not spin: at the descriptor limit (EMFILE, ENFILE)
// the oldest connection not logged in is closed to make room; otherwise,
// and when there is none, back off and try again.
// `ended` is called when the loop ends, however it ends.
asio::awaitable<void> accept_loop(tcp::acceptor& acceptor,
                                  std::shared_ptr<const config::Listener> listener,
                                  RuntimeHolder& runtime, SessionRegistry& sessions,
                                  const std::vector<WorkerSessions>& workers,
                                  const std::atomic<std::size_t>& total,
                                  std::function<void()> ended) {
  struct Ended {
    std::function<void()> call;
    ~Ended() { call(); }
  } on_end{std::move(ended)};
  asio::steady_timer backoff(acceptor.get_executor());
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (ec) {
      const bool out_of_descriptors =
          ec == asio::error::no_descriptors || ec == boost::system::errc::too_many_files_open_in_system;
      bool evicted = false;
      if (out_of_descriptors)
        evicted = co_await evict_oldest_not_logged_in(workers, runtime.current(),
                                                      "evicted: out of file descriptors, the oldest "
                                                      "connection not logged in makes room");
      if (evicted) {
        log_refused(fmt::format("accept on {}: {}; closed the oldest connection not logged in",
                                format_endpoint(acceptor.local_endpoint()), ec.message()));
        continue;
      }
      log_refused(fmt::format("accept on {}: {}; pausing 100ms",
                              format_endpoint(acceptor.local_endpoint()), ec.message()));
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(use_tuple);
      continue;
    }
    auto snapshot = runtime.current();
    // The connection limit: the oldest connection not logged in makes room
    // for the new one; with none to close, the new one is closed.
    const std::size_t limit = connection_limit(snapshot->config->limits.max_connections);
    bool refuse = false;
    if (total.load(std::memory_order_relaxed) >= limit)
      refuse = !co_await evict_oldest_not_logged_in(
          workers, snapshot,
          fmt::format("evicted: {} connections (limits.max_connections); "
                      "the oldest not logged in makes room",
                      limit));
    if (refuse) {
      if (snapshot->metrics) snapshot->metrics->connection_limited(ConnectionLimit::at_limit);
      log_refused(fmt::format("{} connections (limits.max_connections) and none that is not "
                              "logged in to close: refused a connection from {}",
                              limit, peer_of(socket)));
      boost::system::error_code ignored;
      socket.close(ignored);
      continue;
    }
    boost::system::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    auto executor = acceptor.get_executor();
    switch (listener->protocol) {
      case config::Protocol::imap:
        asio::co_spawn(executor,
                       serve<imap::ImapSession>(sessions, std::move(socket), snapshot, listener),
                       log_escaped);
        break;
      case config::Protocol::pop3:
        asio::co_spawn(executor,
                       serve<pop3::Pop3Session>(sessions, std::move(socket), snapshot, listener),
                       log_escaped);
        break;
      case config::Protocol::lmtp:
        asio::co_spawn(executor,
                       serve<lmtp::LmtpSession>(sessions, std::move(socket), snapshot, listener),
                       log_escaped);
        break;
      case config::Protocol::managesieve:
        asio::co_spawn(
            executor,
            serve<sieve::SieveSession>(sessions, std::move(socket), snapshot, listener),
            log_escaped);
        break;
    }
  }
}

// On one worker: the relayed sessions on `node`, closed in about 20 steps
// over `spread`, in random order. A session is found again by its id at its
// step (it may have ended meanwhile).
asio::awaitable<void> close_spread_out(SessionRegistry& sessions, std::string node,
                                       Clock::duration spread, std::string why,
                                       std::optional<config::Protocol> protocol) {
  std::vector<std::string> ids;
  for (Session* session : sessions.sessions()) {
    const auto& record = session->record();
    if (session->phase() == Phase::relay && record.protocol != config::Protocol::lmtp &&
        record.node == node && (!protocol || record.protocol == *protocol))
      ids.push_back(record.id);
  }
  if (ids.empty()) co_return;
  std::shuffle(ids.begin(), ids.end(), std::mt19937{std::random_device{}()});
  const std::size_t steps = std::min<std::size_t>(ids.size(), 20);
  const auto start = Clock::now();
  asio::steady_timer timer(co_await asio::this_coro::executor);
  std::size_t next = 0;
  for (std::size_t step = 0; step < steps; ++step) {
    timer.expires_at(start + spread * static_cast<long>(step) / static_cast<long>(steps));
    co_await timer.async_wait(use_tuple);
    const std::size_t end = ids.size() * (step + 1) / steps;
    std::unordered_set<std::string> now(ids.begin() + static_cast<long>(next),
                                        ids.begin() + static_cast<long>(end));
    next = end;
    // Collected first: a stop may end a session (and unlist it) later only.
    std::vector<Session*> chosen;
    for (Session* session : sessions.sessions())
      if (now.count(session->record().id)) chosen.push_back(session);
    for (Session* session : chosen) session->request_stop(StopKind::kick, why);
  }
}

std::unique_ptr<tcp::acceptor> open_acceptor(asio::io_context& io, const tcp::endpoint& endpoint) {
  auto acceptor = std::make_unique<tcp::acceptor>(io);
  acceptor->open(endpoint.protocol());
  acceptor->set_option(asio::socket_base::reuse_address(true));
  int one = 1;
  if (::setsockopt(acceptor->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
    throw std::system_error(errno, std::generic_category(), "SO_REUSEPORT");
  acceptor->bind(endpoint);
  acceptor->listen(asio::socket_base::max_listen_connections);
  return acceptor;
}

}  // namespace

Server::Server(RuntimeHolder& runtime, unsigned workers) : runtime_(runtime) {
  if (workers == 0) workers = std::max(1U, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < workers; ++i) workers_.push_back(std::make_unique<Worker>(connections_));
  for (auto& worker : workers_)
    worker_sessions_.push_back({worker->io.get_executor(), &worker->sessions});
}

Server::~Server() {
  // An accept loop destroyed with its io_context must not touch the
  // workers being destroyed.
  destroying_ = true;
  for (auto& worker : workers_) worker->io.stop();
  join();
}

void Server::start() {
  auto snapshot = runtime_.current();
  for (const auto& configured : snapshot->config->listeners) {
    auto listener = std::make_shared<const config::Listener>(configured);
    tcp::endpoint endpoint(asio::ip::make_address(listener->address), listener->port);
    for (auto& worker : workers_) {
      try {
        worker->acceptors.push_back(open_acceptor(worker->io, endpoint));
      } catch (const boost::system::system_error& e) {
        throw std::runtime_error(fmt::format("listener \"{}\" on {}: {}", listener->name,
                                             format_endpoint(endpoint), e.code().message()));
      }
      // With port 0 the first bind picks the port; the others share it.
      endpoint = worker->acceptors.back()->local_endpoint();
      accept_loops_.fetch_add(1);
      asio::co_spawn(worker->io,
                     accept_loop(*worker->acceptors.back(), listener, runtime_,
                                 worker->sessions, worker_sessions_, connections_,
                                 [this] { accept_loop_ended(); }),
                     asio::detached);
    }
    bound_.emplace_back(listener->name, endpoint);
    spdlog::info("listening: {} {}{} on {}", listener->name, config::name_of(listener->protocol),
                 listener->tls == config::TlsMode::none
                     ? ""
                     : fmt::format(" ({} TLS)", config::name_of(listener->tls)),
                 format_endpoint(endpoint));
  }
  if (accept_loops_.load() == 0) release_workers();
  for (auto& worker : workers_) {
    worker->thread = std::thread([w = worker.get()] {
      // An error out of a handler must not end the thread: its sessions
      // and its accept loops (which the stop waits for) live on it.
      for (;;) {
        try {
          w->io.run();
          return;
        } catch (const std::exception& e) {
          spdlog::critical("worker: an unexpected error out of a handler: {}", e.what());
        } catch (...) {
          spdlog::critical("worker: an unexpected error out of a handler");
        }
      }
    });
  }
}

void Server::accept_loop_ended() {
  if (destroying_.load()) return;
  if (accept_loops_.fetch_sub(1) == 1) release_workers();
}

void Server::release_workers() {
  // Thread-safe: each guard is reset once, by the last accept loop to end
  // (or by start() when there is none), and resetting only tells the
  // io_context that one unit of work is done.
  for (auto& worker : workers_) worker->busy.reset();
}

void Server::begin_shutdown() {
  for (auto& worker : workers_) {
    asio::post(worker->io, [w = worker.get()] {
      for (auto& acceptor : w->acceptors) {
        boost::system::error_code ignored;
        acceptor->close(ignored);
      }
      w->sessions.stop_all(StopKind::shutdown);
    });
  }
}

void Server::close_all_sessions() {
  for (auto& worker : workers_)
    asio::post(worker->io, [w = worker.get()] { w->sessions.stop_all(StopKind::force); });
}

void Server::close_node_sessions(std::string node, Clock::duration spread, std::string why,
                                 std::optional<config::Protocol> protocol) {
  for (auto& worker : workers_) {
    asio::co_spawn(worker->io, close_spread_out(worker->sessions, node, spread, why, protocol),
                   log_escaped);
  }
}

std::vector<SessionInfo> Server::sessions(const SessionFilter& filter, Clock::duration wait) {
  std::vector<std::future<std::vector<SessionInfo>>> answers;
  for (auto& worker : workers_) {
    auto promise = std::make_shared<std::promise<std::vector<SessionInfo>>>();
    answers.push_back(promise->get_future());
    asio::post(worker->io, [w = worker.get(), promise, filter] {
      std::vector<SessionInfo> found;
      const auto now = Clock::now();
      for (Session* session : w->sessions.sessions()) {
        const auto& r = session->record();
        if (!filter.matches(r)) continue;
        found.push_back(SessionInfo{r.id, r.protocol, r.client, r.user, r.island, r.node,
                                    session->phase(), now - r.started});
      }
      promise->set_value(std::move(found));
    });
  }
  std::vector<SessionInfo> all;
  const auto until = Clock::now() + wait;
  for (auto& answer : answers) {
    if (answer.wait_until(until) != std::future_status::ready) continue;  // a stuck worker
    auto part = answer.get();
    std::move(part.begin(), part.end(), std::back_inserter(all));
  }
  return all;
}

std::size_t Server::kick(const SessionFilter& filter, const std::string& why,
                         Clock::duration wait) {
  std::vector<std::future<std::size_t>> answers;
  for (auto& worker : workers_) {
    auto promise = std::make_shared<std::promise<std::size_t>>();
    answers.push_back(promise->get_future());
    asio::post(worker->io, [w = worker.get(), promise, filter, why] {
      std::vector<Session*> chosen;
      for (Session* session : w->sessions.sessions()) {
        const auto& r = session->record();
        if (r.protocol != config::Protocol::lmtp && filter.matches(r)) chosen.push_back(session);
      }
      for (Session* session : chosen) session->request_stop(StopKind::kick, why);
      promise->set_value(chosen.size());
    });
  }
  std::size_t kicked = 0;
  const auto until = Clock::now() + wait;
  for (auto& answer : answers)
    if (answer.wait_until(until) == std::future_status::ready) kicked += answer.get();
  return kicked;
}

std::size_t Server::live_sessions() const {
  std::size_t live = 0;
  for (const auto& worker : workers_) live += worker->sessions.live();
  return live;
}

void Server::join() {
  for (auto& worker : workers_)
    if (worker->thread.joinable()) worker->thread.join();
}

std::vector<std::pair<std::string, tcp::endpoint>> Server::bound() const { return bound_; }

}  // namespace isthmus::proxy
