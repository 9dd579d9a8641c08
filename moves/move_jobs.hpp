#pragma once
// Moves as jobs of the daemon (docs/move.md, "Moves as jobs of the
// daemon"): POST /v1/moves starts a move on this instance, which runs the
// mover (moves.mover, isthmus-move with --events) as a
// child process, reads its events (steps, progress, journal) and keeps the
// job in the store (moves/move_store.hpp) under a lease it renews every
// poll_interval. Every instance polls the store: it takes over a job whose
// lease ran out (its owner died or lost the store) and resumes it from the
// journal the store holds, and it stops its own mover at once when its
// write finds the job taken, or when it could not renew the lease for two
// thirds of it -- so two instances never run one move at once.
//
// The mover dies with the thread that started it (PR_SET_PDEATHSIG), so a
// killed instance leaves no mover behind; a stopped instance stops its
// movers and leaves the jobs to be taken over (by itself when it comes
// back first).
//
// Threading: a thread of its own; the admin API's calls are awaitables
// that run there and resume on the caller's executor.

#include "config/config.hpp"

#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace isthmus::moves {

struct MoveRequest {
  std::string user;   // normalised
  std::string to;     // an island of the config
  std::string mover;  // "imap", "dsync" or "" (the mover config's default)
};

// An answer for the admin API: the HTTP status and its JSON body.
struct MoveAnswer {
  int status = 500;
  nlohmann::json body;
};

class MoveJobs {
 public:
  // Starts the thread and the poll loop. Throws std::runtime_error when the
  // store cannot be opened (a file store's folder).
  explicit MoveJobs(const config::Config& config);
  ~MoveJobs();  // stop()
  MoveJobs(const MoveJobs&) = delete;
  MoveJobs& operator=(const MoveJobs&) = delete;

  // Stops the movers this instance runs (their jobs stay in the store, to be
  // taken over) and the thread. Idempotent.
  void stop();

  boost::asio::awaitable<MoveAnswer> start(MoveRequest request);
  boost::asio::awaitable<MoveAnswer> list();
  boost::asio::awaitable<MoveAnswer> get(std::string id);
  boost::asio::awaitable<MoveAnswer> abort(std::string id);
  boost::asio::awaitable<MoveAnswer> resume(std::string id);

  // For GET /v1/status: {"store": ..., "running_here": N}.
  nlohmann::json status() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace isthmus::moves
