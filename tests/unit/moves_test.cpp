// Move jobs (moves/): the mover's events applied to a job, the job as the
// store keeps it, and the file store's compare-and-set rules.
#include "moves/move_job.hpp"
#include "moves/move_store.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <doctest/doctest.h>

#include <filesystem>
#include <random>

using namespace isthmus;
using namespace isthmus::moves;
namespace asio = boost::asio;

namespace {

Job job_of(std::string id, std::string user) {
  Job job;
  job.id = std::move(id);
  job.user = std::move(user);
  job.to = "b";
  job.owner = "i1";
  job.epoch = 1;
  job.created = job.updated = now_iso();
  return job;
}

template <typename T>
T run(asio::io_context& io, asio::awaitable<T> a) {
  auto f = asio::co_spawn(io, std::move(a), asio::use_future);
  io.restart();
  io.run();
  return f.get();
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device r;
    path = std::filesystem::temp_directory_path() / ("isthmus-moves-" + std::to_string(r()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("moves: the mover's events change the job") {
  Job job = job_of("20261203T000001Z-00000a", "alice@example.org");
  PassClock clock;
  const auto t0 = Clock::now();
  CHECK(apply_mover_line(job, R"({"event":"started","user":"alice@example.org","from":"a","to":"b","mover":"dsync","resume":false})", t0, clock));
  CHECK(job.from == "a");
  CHECK(job.mover == "dsync");
  CHECK(apply_mover_line(job, R"({"event":"step","number":1,"name":"precopy","status":"started","text":"[1/7] precopy","seconds":0})", t0, clock));
  CHECK(job.step == "precopy");
  CHECK(job.step_number == 1);
  REQUIRE_FALSE(job.history.empty());
  CHECK(job.history.back().text == "[1/7] precopy");
  // Progress: not worth a write of its own; the rate over the pass.
  CHECK_FALSE(apply_mover_line(job, R"({"event":"progress","step":"precopy","pass":1,"folders_done":0,"folders":3,"messages":0,"bytes":0,"bytes_total":4000000})", t0, clock));
  CHECK_FALSE(apply_mover_line(job, R"({"event":"progress","step":"precopy","pass":1,"folders_done":1,"folders":3,"messages":10,"bytes":1000000,"bytes_total":4000000})", t0 + std::chrono::seconds(2), clock));
  CHECK(job.progress.messages == 10);
  CHECK(job.progress.rate == doctest::Approx(500000));
  REQUIRE(job.progress.eta_seconds);
  CHECK(*job.progress.eta_seconds == doctest::Approx(6));
  // Negative or absurd numbers do not wrap around.
  apply_mover_line(job, R"({"event":"progress","step":"precopy","pass":1,"messages":-5,"bytes":"x"})", t0, clock);
  CHECK(job.progress.messages == 0);
  CHECK(job.progress.bytes == 0);
  CHECK(apply_mover_line(job, R"({"event":"journal","data":{"user":"alice@example.org","status":"running"}})", t0, clock));
  CHECK(job.journal["status"] == "running");
  CHECK(clock.journal_events == 1);
  // A new pass does not forget the journal events counted (they are acknowledged).
  apply_mover_line(job, R"({"event":"progress","step":"precopy","pass":2})", t0, clock);
  CHECK(clock.journal_events == 1);
  // A journal that is not an object (too large for a line) keeps the last.
  apply_mover_line(job, R"({"event":"journal","data":null,"too_large":99999})", t0, clock);
  CHECK(job.journal["status"] == "running");
  CHECK(apply_mover_line(job, R"({"event":"finished","exit":0,"text":"moved alice","interruption_seconds":1.5})", t0, clock));
  CHECK(job.exit_code == 0);
  CHECK(job.result == "moved alice");
  CHECK(job.interruption_seconds == doctest::Approx(1.5));
}

TEST_CASE("moves: stray output, control characters and deep nesting are history text") {
  Job job = job_of("20261203T000001Z-00000a", "alice@example.org");
  PassClock clock;
  CHECK(apply_mover_line(job, "Traceback (most recent call last):\r\n", Clock::now(), clock));
  CHECK(job.history.back().text.find("mover: Traceback") == 0);
  apply_mover_line(job, "{\"event\":\"say\",\"text\":\"evil\\u001b[2Jline\\nforged\"}", Clock::now(), clock);
  CHECK(job.history.back().text.find('\x1b') == std::string::npos);
  CHECK(job.history.back().text.find('\n') == std::string::npos);
  std::string deep(100000, '[');
  apply_mover_line(job, "{\"event\":\"say\",\"text\":" + deep, Clock::now(), clock);
  CHECK(job.history.back().text.rfind("mover: ", 0) == 0);
  apply_mover_line(job, R"({"event":"step","number":99,"name":"x","status":"started"})", Clock::now(), clock);
  CHECK(job.step_number == -1);  // out of range: ignored
  for (int i = 0; i < 500; ++i) job.say(now_iso(), "line");
  CHECK(job.history.size() == kMaxHistory);
}

TEST_CASE("moves: exit codes and states") {
  CHECK(state_after_exit(0) == "done");
  CHECK(state_after_exit(7) == "verify_failed");
  CHECK(state_after_exit(3) == "failed");
  CHECK(state_after_exit(-1) == "failed");
  CHECK(is_terminal("aborted"));
  CHECK_FALSE(is_terminal("aborting"));
  CHECK_FALSE(is_known_state("sleeping"));
}

TEST_CASE("moves: a stored job reads back the same; a document that is not a job is refused") {
  Job job = job_of("20261203T000001Z-00000a", "alice@example.org");
  job.from = "a";
  job.step = "copy";
  job.step_number = 4;
  job.progress.bytes = 123;
  job.exit_code = 3;
  job.say("2026-12-03T00:00:00Z", "hello");
  job.say("2026-12-03T00:00:01Z", "folder Entw\xc3\xbcrfe copied \\ 3 \x1b[2J");
  CHECK(job.history.back().text == "folder Entw\xc3\xbcrfe copied \\ 3  [2J");
  job.journal = nlohmann::json{{"status", "running"}};
  auto back = from_stored_json(to_stored_json(job));
  REQUIRE(back);
  CHECK(to_stored_json(*back) == to_stored_json(job));  // read back and written again: the same
  auto again = from_stored_json(nlohmann::json::parse(to_stored_json(*back).dump()));
  REQUIRE(again);
  CHECK(to_stored_json(*again) == to_stored_json(job));
  CHECK_FALSE(to_api_json(job, true).contains("journal"));
  CHECK_FALSE(to_api_json(job, false).contains("history"));
  CHECK_FALSE(from_stored_json(nlohmann::json{{"id", "x"}}));
  auto bad_id = to_stored_json(job);
  bad_id["id"] = "../../etc/passwd";
  CHECK_FALSE(from_stored_json(bad_id));
  auto option_user = to_stored_json(job);
  option_user["user"] = "--config=/tmp/x";
  CHECK_FALSE(from_stored_json(option_user));
  CHECK(valid_job_id(new_job_id()));
  CHECK_FALSE(valid_job_id("20261203T000001Z-00000G"));
  CHECK_FALSE(from_stored_json(nlohmann::json::array()));
  auto bad_state = to_stored_json(job);
  bad_state["state"] = "sleeping";
  CHECK_FALSE(from_stored_json(bad_state));
  CHECK(new_job_id().size() == 23);
  CHECK(new_job_id() != new_job_id());
}

TEST_CASE("moves: the file store: one unfinished job per user, compare-and-set, restart") {
  TempDir dir;
  asio::io_context io;
  {
    auto store = make_file_store(dir.path, "i1");
    CHECK_THROWS_AS(make_file_store(dir.path, "i2"), std::runtime_error);  // one process per folder
    Job a = job_of("20261203T000001Z-00000a", "alice@example.org");
    CHECK(run(io, store->insert(a)).status == StoreStatus::ok);
    auto second = run(io, store->insert(job_of("20261203T000002Z-00000b", "alice@example.org")));
    CHECK(second.status == StoreStatus::conflict);
    CHECK(second.other_id == "20261203T000001Z-00000a");
    CHECK(run(io, store->insert(job_of("20261203T000003Z-00000c", "bob@example.org"))).status == StoreStatus::ok);
    // A write at a stale epoch is refused.
    Job stale = a;
    stale.epoch = 7;
    CHECK(run(io, store->update(stale)).status == StoreStatus::lost);
    // Taken while this process holds it: refused; with any_lease, at epoch + 1: taken.
    Job next = a;
    next.owner = "i2";
    next.epoch = 2;
    CHECK(run(io, store->take(next, "running", false)).status == StoreStatus::lost);
    CHECK(run(io, store->take(next, "failed", true)).status == StoreStatus::lost);  // not as listed
    CHECK(run(io, store->take(next, "running", true)).status == StoreStatus::ok);
    CHECK(run(io, store->update(a)).status == StoreStatus::lost);  // the old owner's write
    CHECK(run(io, store->request_abort("20261203T000001Z-00000a")).status == StoreStatus::ok);
    auto listed = run(io, store->list("20261203T000001Z-00000a"));
    REQUIRE(listed.jobs.size() == 1);
    CHECK(listed.jobs[0].job.abort_requested);
    CHECK(listed.jobs[0].job.owner == "i2");
    CHECK_FALSE(listed.jobs[0].lease_expired);
    // A failed job keeps its user: no second move until it is resumed or aborted.
    next.state = "failed";
    CHECK(run(io, store->update(next)).status == StoreStatus::ok);
    CHECK(run(io, store->insert(job_of("20261203T000004Z-00000d", "alice@example.org"))).status ==
          StoreStatus::conflict);
    CHECK(run(io, store->request_abort("20261203T000001Z-00000a")).status == StoreStatus::lost);
    CHECK(run(io, store->open_jobs()).jobs.size() == 2);
    next.state = "done";
    CHECK(run(io, store->update(next)).status == StoreStatus::ok);
    CHECK(run(io, store->insert(job_of("20261203T000004Z-00000d", "alice@example.org"))).status == StoreStatus::ok);
    CHECK(run(io, store->list("nope")).status == StoreStatus::not_found);
  }
  // A new process: the unfinished jobs' leases have run out (nobody renews them).
  auto store = make_file_store(dir.path, "i1");
  auto listed = run(io, store->list(""));
  REQUIRE(listed.jobs.size() == 3);  // j1, j3, j4 (j2 was refused)
  CHECK(listed.jobs[0].job.id == "20261203T000004Z-00000d");  // newest first
  for (const auto& stored : listed.jobs)
    CHECK(stored.lease_expired == !is_terminal(stored.job.state));
}
