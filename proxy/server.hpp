#pragma once
// The listening side: N workers, each a thread with its own io_context and
// its own acceptor per listener (SO_REUSEPORT, so the kernel spreads new
// connections); a session lives on the worker that accepted it, for life.

#include "proxy/runtime.hpp"
#include "proxy/session_registry.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <memory>
#include <optional>
#include <thread>
#include <vector>

namespace isthmus::proxy {

// Which sessions an operator means: every field that is set must match.
struct SessionFilter {
  std::string user;
  std::string node;
  std::string island;
  bool matches(const SessionRecord& record) const {
    return (user.empty() || record.user == user) && (node.empty() || record.node == node) &&
           (island.empty() || record.island == island);
  }
};

// A worker as the other workers see it: its executor and its sessions
// (touched only on that executor).
struct WorkerSessions {
  boost::asio::io_context::executor_type executor;
  SessionRegistry* sessions;
};

// One session as the admin API shows it.
struct SessionInfo {
  std::string id;
  config::Protocol protocol = config::Protocol::imap;
  std::string client;
  std::string user;
  std::string island;
  std::string node;
  Phase phase = Phase::preauth;
  Clock::duration age{};
};

class Server {
 public:
  Server(RuntimeHolder& runtime, unsigned workers);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds every listener of the current config on every worker and starts
  // the worker threads. Throws std::system_error if a listener cannot bind.
  void start();

  // Stops accepting; pre-auth sessions get BYE; relayed sessions go on.
  void begin_shutdown();
  // Closes every session that is still there.
  void close_all_sessions();
  // Closes the relayed IMAP/POP3 sessions on `node`, each at a random moment
  // within `spread` (clients do not all come back at once); LMTP
  // transactions finish. `why` goes into their session-end lines. Any
  // thread; returns at once.
  void close_node_sessions(std::string node, Clock::duration spread, std::string why,
                           std::optional<config::Protocol> protocol = std::nullopt);
  // The sessions matching `filter` on every worker, and a kick of those
  // (relayed or logging in; LMTP sessions are never kicked: their
  // transactions finish). Block until every worker has answered (at most
  // `wait`): call from a thread that is not a worker's.
  std::vector<SessionInfo> sessions(const SessionFilter& filter,
                                    Clock::duration wait = std::chrono::seconds(5));
  std::size_t kick(const SessionFilter& filter, const std::string& why,
                   Clock::duration wait = std::chrono::seconds(5));

  // Sessions still alive on all workers (any thread).
  std::size_t live_sessions() const;
  // Waits for the worker threads to finish (after begin_shutdown, once the
  // sessions are gone).
  void join();

  // The ports actually bound, per listener name (useful with port 0).
  std::vector<std::pair<std::string, boost::asio::ip::tcp::endpoint>> bound() const;

 private:
  struct Worker;
  void accept_loop_ended();
  void release_workers();
  RuntimeHolder& runtime_;
  std::atomic<std::size_t> accept_loops_{0};  // running, on every worker
  std::atomic<bool> destroying_{false};
  std::atomic<std::size_t> connections_{0};  // client sessions on every worker
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<WorkerSessions> worker_sessions_;  // the same workers, for eviction
  std::vector<std::pair<std::string, boost::asio::ip::tcp::endpoint>> bound_;
};

}  // namespace isthmus::proxy
