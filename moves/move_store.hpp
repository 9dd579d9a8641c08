#pragma once
// Where move jobs live (docs/move.md, "Moves as jobs of the daemon").
//
// - `sql`: a row per job in the role store's database (table isthmus_moves,
//   deploy/sql/role-store.sql), so that every instance sees every move. The
//   owner renews a lease (lease_until, the database's clock) with every
//   write; every write is a compare-and-set on (id, owner, epoch). An
//   instance takes over a job whose lease ran out by raising its epoch
//   (UPDATE ... SET epoch = epoch + 1 WHERE id = ? AND epoch = ? AND
//   lease_until < NOW(6)): of two instances trying at once one wins, and
//   the old owner's next write finds the epoch changed and stops its mover.
//   One open job per user (a unique key on active_user, set until the job
//   is done, aborted or verify_failed: a failed job keeps it, the user may
//   be in state moving). Times are the database's UTC_TIMESTAMP(6).
// - `file`: one JSON file per job in moves.dir/jobs, this instance's alone;
//   its unfinished jobs are resumed when the instance starts again.
//
// Threading: every member on the move jobs' thread (MoveJobs' executor).

#include "config/config.hpp"
#include "moves/move_job.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <memory>
#include <string>
#include <vector>

namespace isthmus::moves {

enum class StoreStatus : std::uint8_t {
  ok,
  conflict,     // insert: the user has an unfinished job (other_id)
  lost,         // update/take: the epoch or owner changed, or the lease is still held
  not_found,    // no such job
  unavailable,  // the store did not answer (detail says why)
};

struct StoreAnswer {
  StoreStatus status = StoreStatus::unavailable;
  std::string detail;
  std::string other_id;
};

struct StoredJob {
  Job job;
  bool lease_expired = false;  // no owner renews it: free to take over
};

struct ListAnswer {
  StoreStatus status = StoreStatus::unavailable;
  std::vector<StoredJob> jobs;  // newest first
  std::string detail;
};

class Store {
 public:
  virtual ~Store() = default;
  virtual std::string describe() const = 0;  // for logs and GET /v1/status
  // A new job (epoch 1, owned by job.owner), its lease started.
  virtual boost::asio::awaitable<StoreAnswer> insert(const Job& job) = 0;
  // The owner's write of `job` as it is now; renews the lease (released
  // when the job is terminal). lost: another instance has it now.
  virtual boost::asio::awaitable<StoreAnswer> update(const Job& job) = 0;
  // `next` (owner, state, epoch already raised by one) replaces the job at
  // epoch next.epoch - 1 and in state `was` (as listed), if its lease ran
  // out or `any_lease`.
  virtual boost::asio::awaitable<StoreAnswer> take(const Job& next, std::string was,
                                                   bool any_lease) = 0;
  // Asks the owner of a running job to abort it (it reads the flag).
  virtual boost::asio::awaitable<StoreAnswer> request_abort(const std::string& id) = 0;
  // Every job (at most kMaxListed, newest first), or one.
  virtual boost::asio::awaitable<ListAnswer> list(std::string id) = 0;
  // The jobs not done with (unfinished, or failed: the user may be in
  // state moving), for the poll: at most kMaxListed, oldest first.
  virtual boost::asio::awaitable<ListAnswer> open_jobs() = 0;
  // This process no longer runs the job (file store: its lease is free).
  virtual void release(const std::string& id) = 0;
  // Forgets finished jobs older than `keep`.
  virtual boost::asio::awaitable<void> forget_finished(Clock::duration keep) = 0;
};

inline constexpr std::size_t kMaxListed = 500;

std::unique_ptr<Store> make_file_store(std::filesystem::path dir, std::string instance);
std::unique_ptr<Store> make_sql_store(boost::asio::any_io_executor executor,
                                      const config::SqlConnection& connection,
                                      Clock::duration lease);

}  // namespace isthmus::moves
