#include "moves/move_store.hpp"

#include "common/log.hpp"
#include "sql/client.hpp"
#include "sql/config_settings.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace isthmus::moves {

namespace asio = boost::asio;
using json = nlohmann::json;

namespace {

// A job keeps its user from other moves until it is done with: done,
// aborted, verify_failed (the mover put the user back). A failed job may
// have left the user in state moving: resume it or abort it first.
bool holds_user(const Job& job) {
  return job.state != "done" && job.state != "aborted" && job.state != "verify_failed";
}

// ---------------------------------------------------------------- file

class FileStore final : public Store {
 public:
  FileStore(std::filesystem::path dir, std::string instance)
      : dir_(std::move(dir) / "jobs"), instance_(std::move(instance)) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec) throw std::runtime_error(fmt::format("moves: cannot create {}: {}", dir_.string(), ec.message()));
    // One process per folder: a second would run the same jobs.
    const auto lock = (dir_ / ".lock").string();
    lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd_ < 0 || ::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0)
      throw std::runtime_error(fmt::format(
          "moves: {} is in use by another process (each instance needs its own moves.dir)",
          dir_.string()));
    for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
      if (entry.path().extension() != ".json") continue;
      std::ifstream in(entry.path());
      std::stringstream text;
      text << in.rdbuf();
      auto doc = parse_bounded_json(text.str());
      auto job = from_stored_json(doc);
      if (!job) {
        spdlog::warn("moves: {} is not a move job; ignored", entry.path().string());
        continue;
      }
      jobs_[job->id] = std::move(*job);
    }
  }

  ~FileStore() override {
    if (lock_fd_ >= 0) ::close(lock_fd_);
  }
  FileStore(const FileStore&) = delete;
  FileStore& operator=(const FileStore&) = delete;

  std::string describe() const override { return "file (" + dir_.string() + ")"; }

  asio::awaitable<StoreAnswer> insert(const Job& job) override {
    for (const auto& [id, other] : jobs_) {
      if (other.user == job.user && holds_user(other))
        co_return StoreAnswer{StoreStatus::conflict, "", id};
    }
    co_return save(job);
  }

  asio::awaitable<StoreAnswer> update(const Job& job) override {
    auto it = jobs_.find(job.id);
    if (it == jobs_.end()) co_return StoreAnswer{StoreStatus::not_found, "no such job", ""};
    if (it->second.epoch != job.epoch || it->second.owner != job.owner)
      co_return StoreAnswer{StoreStatus::lost, "taken over", ""};
    const bool abort = it->second.abort_requested;
    Job copy = job;
    copy.abort_requested = copy.abort_requested || abort;
    co_return save(copy);
  }

  asio::awaitable<StoreAnswer> take(const Job& next, std::string was, bool any_lease) override {
    auto it = jobs_.find(next.id);
    if (it == jobs_.end()) co_return StoreAnswer{StoreStatus::not_found, "no such job", ""};
    if (it->second.epoch + 1 != next.epoch || it->second.state != was ||
        (!any_lease && live_.count(next.id)))
      co_return StoreAnswer{StoreStatus::lost, "held by someone else", ""};
    if (holds_user(next)) {
      for (const auto& [id, other] : jobs_) {
        if (id != next.id && other.user == next.user && holds_user(other))
          co_return StoreAnswer{StoreStatus::conflict, "", id};
      }
    }
    co_return save(next);
  }

  asio::awaitable<ListAnswer> open_jobs() override {
    ListAnswer answer{StoreStatus::ok, {}, ""};
    for (const auto& [key, job] : jobs_) {
      if (holds_user(job)) answer.jobs.push_back({job, !is_terminal(job.state) && !live_.count(key)});
    }
    co_return answer;
  }

  void release(const std::string& id) override { live_.erase(id); }

  asio::awaitable<StoreAnswer> request_abort(const std::string& id) override {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) co_return StoreAnswer{StoreStatus::not_found, "no such job", ""};
    if (is_terminal(it->second.state))
      co_return StoreAnswer{StoreStatus::lost, "finished already", ""};
    Job copy = it->second;
    copy.abort_requested = true;
    co_return save(copy);
  }

  asio::awaitable<ListAnswer> list(std::string id) override {
    ListAnswer answer{StoreStatus::ok, {}, ""};
    for (const auto& [key, job] : jobs_) {
      if (!id.empty() && key != id) continue;
      // Not renewed by this process: the instance that ran it has stopped.
      answer.jobs.push_back({job, !is_terminal(job.state) && !live_.count(key)});
    }
    std::sort(answer.jobs.begin(), answer.jobs.end(), [](const auto& a, const auto& b) {
      return a.job.id > b.job.id;
    });
    if (answer.jobs.size() > kMaxListed) answer.jobs.resize(kMaxListed);
    if (!id.empty() && answer.jobs.empty()) answer.status = StoreStatus::not_found;
    co_return answer;
  }

  asio::awaitable<void> forget_finished(Clock::duration keep) override {
    const auto cutoff = std::filesystem::file_time_type::clock::now() - keep;
    for (auto it = jobs_.begin(); it != jobs_.end();) {
      std::error_code ec;
      auto path = path_of(it->first);
      if (is_terminal(it->second.state) && std::filesystem::last_write_time(path, ec) < cutoff && !ec) {
        std::filesystem::remove(path, ec);
        it = jobs_.erase(it);
      } else {
        ++it;
      }
    }
    co_return;
  }

 private:
  std::filesystem::path path_of(const std::string& id) const { return dir_ / (id + ".json"); }

  StoreAnswer save(const Job& job) {
    const auto path = path_of(job.id);
    const auto temporary = path.string() + ".tmp";
    const std::string text = to_stored_json(job).dump(-1, ' ', false, json::error_handler_t::replace);
    int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0;
    std::size_t done = 0;
    while (ok && done < text.size()) {
      auto n = ::write(fd, text.data() + done, text.size() - done);
      ok = n > 0;
      if (ok) done += static_cast<std::size_t>(n);
    }
    ok = ok && ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
    ok = ok && ::rename(temporary.c_str(), path.c_str()) == 0;
    if (!ok)
      return StoreAnswer{StoreStatus::unavailable,
                         fmt::format("cannot write {}: {}", path.string(), std::strerror(errno)), ""};
    jobs_[job.id] = job;
    if (is_terminal(job.state)) live_.erase(job.id);
    else live_.insert(job.id);
    return StoreAnswer{StoreStatus::ok, "", ""};
  }

  std::filesystem::path dir_;
  std::string instance_;
  int lock_fd_ = -1;  // held while the store lives
  std::map<std::string, Job> jobs_;
  std::set<std::string> live_;  // jobs this process owns
};

// ---------------------------------------------------------------- sql

std::string microseconds(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
}

constexpr std::string_view kInsert =
    "INSERT INTO isthmus_moves (id, user_name, active_user, state, owner, epoch, lease_until, "
    "abort_requested, doc, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, "
    "UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, 0, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))";
constexpr std::string_view kActiveOf = "SELECT id FROM isthmus_moves WHERE active_user = ?";
// The owner's write; a terminal job releases the user (active_user NULL)
// and its lease.
constexpr std::string_view kUpdate =
    "UPDATE isthmus_moves SET state = ?, active_user = IF(? = 1, user_name, NULL), doc = ?, "
    "lease_until = IF(? = 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND), "
    "updated_at = UTC_TIMESTAMP(6) WHERE id = ? AND epoch = ? AND owner = ?";
constexpr std::string_view kTake =
    "UPDATE isthmus_moves SET state = ?, owner = ?, epoch = epoch + 1, "
    "active_user = IF(? = 1, user_name, NULL), abort_requested = 0, doc = ?, "
    "lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, updated_at = UTC_TIMESTAMP(6) "
    "WHERE id = ? AND epoch = ? AND state = ? AND (? = 1 OR lease_until < UTC_TIMESTAMP(6))";
constexpr std::string_view kRequestAbort =
    "UPDATE isthmus_moves SET abort_requested = 1, updated_at = UTC_TIMESTAMP(6) "
    "WHERE id = ? AND state IN ('running', 'waiting', 'aborting')";
constexpr std::string_view kList =
    "SELECT doc, owner, epoch, state, abort_requested, lease_until < UTC_TIMESTAMP(6), id "
    "FROM isthmus_moves ORDER BY created_at DESC, id DESC LIMIT 500";
constexpr std::string_view kOpen =
    "SELECT doc, owner, epoch, state, abort_requested, lease_until < UTC_TIMESTAMP(6), id "
    "FROM isthmus_moves WHERE active_user IS NOT NULL ORDER BY created_at, id LIMIT 500";
constexpr std::string_view kListOne =
    "SELECT doc, owner, epoch, state, abort_requested, lease_until < UTC_TIMESTAMP(6), id "
    "FROM isthmus_moves WHERE id = ?";
constexpr std::string_view kForget =
    "DELETE FROM isthmus_moves WHERE active_user IS NULL AND updated_at < UTC_TIMESTAMP(6) - INTERVAL ? "
    "MICROSECOND";

class SqlStore final : public Store {
 public:
  SqlStore(asio::any_io_executor executor, const config::SqlConnection& connection,
           Clock::duration lease)
      : client_(executor, sql::client_settings(connection, "move jobs")),
        timeout_(connection.timeout),
        lease_(lease),
        where_(fmt::format("sql (database {})", connection.database)) {
    client_.warm_up();
  }

  std::string describe() const override { return where_; }

  asio::awaitable<StoreAnswer> insert(const Job& job) override {
    std::vector<std::string> r_params{job.id, job.user, job.user, job.state, job.owner, std::to_string(job.epoch),
         microseconds(lease_), dump(job)};
    auto r = co_await client_.execute(std::string(kInsert), std::move(r_params), deadline());
    if (r.status == sql::QueryStatus::ok) co_return StoreAnswer{StoreStatus::ok, "", ""};
    // A duplicate key is a statement error to the client: is it the user's
    // unfinished job?
    std::vector<std::string> other_params{job.user};
    auto other = co_await client_.query(std::string(kActiveOf), std::move(other_params), deadline(), 1);
    if (other.status == sql::QueryStatus::ok && !other.rows.empty() && other.rows[0][0]) {
      // Our own row: the insert went through and its answer was lost (the
      // client ran it again on another connection).
      if (*other.rows[0][0] == job.id) co_return StoreAnswer{StoreStatus::ok, "", ""};
      co_return StoreAnswer{StoreStatus::conflict, "", *other.rows[0][0]};
    }
    co_return StoreAnswer{StoreStatus::unavailable, r.error, ""};
  }

  asio::awaitable<StoreAnswer> update(const Job& job) override {
    const std::string holds = holds_user(job) ? "1" : "0";
    const std::string terminal = is_terminal(job.state) ? "1" : "0";
    std::vector<std::string> r_params{job.state, holds, dump(job), terminal,
                                       microseconds(lease_), job.id, std::to_string(job.epoch),
                                       job.owner};
    auto r = co_await client_.execute(std::string(kUpdate), std::move(r_params), deadline());
    co_return changed(r);
  }

  asio::awaitable<StoreAnswer> take(const Job& next, std::string was, bool any_lease) override {
    std::vector<std::string> r_params{next.state, next.owner, holds_user(next) ? "1" : "0",
                                      dump(next), microseconds(lease_), next.id,
                                      std::to_string(next.epoch - 1), was, any_lease ? "1" : "0"};
    auto r = co_await client_.execute(std::string(kTake), std::move(r_params), deadline());
    if (r.status == sql::QueryStatus::rejected) {
      // The unique key: the user has another unfinished job.
      std::vector<std::string> other_params{next.user};
      auto other = co_await client_.query(std::string(kActiveOf), std::move(other_params), deadline(), 1);
      if (other.status == sql::QueryStatus::ok && !other.rows.empty() && other.rows[0][0] &&
          *other.rows[0][0] != next.id)
        co_return StoreAnswer{StoreStatus::conflict, "", *other.rows[0][0]};
    }
    co_return changed(r);
  }

  asio::awaitable<StoreAnswer> request_abort(const std::string& id) override {
    std::vector<std::string> r_params{id};
    auto r = co_await client_.execute(std::string(kRequestAbort), std::move(r_params), deadline());
    if (r.status == sql::QueryStatus::ok && r.affected_rows == 0)
      co_return StoreAnswer{StoreStatus::lost, "finished already (or no such job)", ""};
    co_return changed(r);
  }

  asio::awaitable<ListAnswer> list(std::string id) override {
    std::vector<std::string> params;
    if (!id.empty()) params.push_back(id);
    auto r = co_await client_.query(std::string(id.empty() ? kList : kListOne), std::move(params),
                                    deadline(), kMaxListed);
    auto answer = jobs_of(r);
    if (!id.empty() && answer.status == StoreStatus::ok && answer.jobs.empty())
      answer.status = StoreStatus::not_found;
    co_return answer;
  }

  asio::awaitable<ListAnswer> open_jobs() override {
    std::vector<std::string> none;
    auto r = co_await client_.query(std::string(kOpen), std::move(none), deadline(), kMaxListed);
    co_return jobs_of(r);
  }

  void release(const std::string&) override {}

  static ListAnswer jobs_of(const sql::QueryResult& r) {
    ListAnswer answer;
    if (r.status != sql::QueryStatus::ok) {
      answer.detail = r.error;
      return answer;
    }
    answer.status = StoreStatus::ok;
    for (const auto& row : r.rows) {
      if (row.size() < 7 || !row[0]) continue;
      auto job = from_stored_json(parse_bounded_json(*row[0]));
      if (!job || job->id != row[6].value_or("")) {
        spdlog::warn("moves: a row of isthmus_moves is not a move job; ignored");
        continue;
      }
      // The columns are what compare-and-set uses: they win over the document.
      job->owner = row[1].value_or("");
      try {
        job->epoch = std::stoull(row[2].value_or("0"));
      } catch (const std::exception&) {
        continue;
      }
      if (row[3] && is_known_state(*row[3])) job->state = *row[3];
      job->abort_requested = row[4].value_or("0") == "1";
      answer.jobs.push_back({std::move(*job), row[5].value_or("0") == "1"});
    }
    return answer;
  }

  asio::awaitable<void> forget_finished(Clock::duration keep) override {
    std::vector<std::string> r_params{microseconds(keep)};
    auto r = co_await client_.execute(std::string(kForget), std::move(r_params), deadline());
    if (r.status != sql::QueryStatus::ok)
      spdlog::warn("moves: forgetting finished jobs failed: {}", r.error);
    else if (r.affected_rows > 0)
      spdlog::info("moves: {} finished jobs older than {}s forgotten", r.affected_rows,
                   std::chrono::duration_cast<std::chrono::seconds>(keep).count());
  }

 private:
  static std::string dump(const Job& job) {
    return to_stored_json(job).dump(-1, ' ', false, json::error_handler_t::replace);
  }
  Deadline deadline() const { return Deadline::after(timeout_); }
  static StoreAnswer changed(const sql::QueryResult& r) {
    if (r.status != sql::QueryStatus::ok) return StoreAnswer{StoreStatus::unavailable, r.error, ""};
    if (r.affected_rows == 0) return StoreAnswer{StoreStatus::lost, "the row changed meanwhile", ""};
    return StoreAnswer{StoreStatus::ok, "", ""};
  }

  sql::Client client_;
  Clock::duration timeout_;
  Clock::duration lease_;
  std::string where_;
};

}  // namespace

std::unique_ptr<Store> make_file_store(std::filesystem::path dir, std::string instance) {
  return std::make_unique<FileStore>(std::move(dir), std::move(instance));
}

std::unique_ptr<Store> make_sql_store(asio::any_io_executor executor,
                                      const config::SqlConnection& connection,
                                      Clock::duration lease) {
  return std::make_unique<SqlStore>(std::move(executor), connection, lease);
}

}  // namespace isthmus::moves
