#include "moves/move_jobs.hpp"

#include "common/log.hpp"
#include "moves/move_job.hpp"
#include "moves/move_store.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <list>
#include <map>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace isthmus::moves {

namespace asio = boost::asio;
using json = nlohmann::json;

namespace {

constexpr auto kKillGrace = std::chrono::seconds(10);  // SIGTERM, then SIGKILL
constexpr auto kForgetEvery = std::chrono::minutes(10);

// One run of the mover: a child process in its own process group that dies
// with the thread that started it, its output (stdout and stderr) read line
// by line on that thread.
class Child {
 public:
  using LineHandler = std::function<void(std::string)>;
  using ExitHandler = std::function<void(int code, std::string why)>;

  Child(std::string job, std::vector<std::string> argv, LineHandler on_line, ExitHandler on_exit)
      : job_(std::move(job)),
        argv_(std::move(argv)),
        on_line_(std::move(on_line)),
        on_exit_(std::move(on_exit)) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) == 0) {
      stdin_read_ = fds[0];
      stdin_write_ = fds[1];
      ::fcntl(stdin_write_, F_SETFL, O_NONBLOCK);
    }
    thread_ = std::thread([this] { run(); });
  }
  ~Child() {
    stop();
    if (thread_.joinable()) thread_.join();
    if (stdin_write_ >= 0) ::close(stdin_write_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  const std::string& job() const { return job_; }
  void stop() { stop_ = true; }       // SIGTERM, SIGKILL kKillGrace later
  void kill_now() { kill_ = true; }   // SIGKILL at once (the job is someone else's)
  bool finished() const { return finished_; }
  // A line to the mover's standard input ("stored" after its journal is in
  // the store). Never blocks: the mover reads one line per journal event.
  void send(std::string_view line) {
    if (stdin_write_ < 0) return;
    auto n = ::write(stdin_write_, line.data(), line.size());
    (void)n;  // the mover is gone (EPIPE): its exit is on its way
  }

 private:
  void run() {
    std::vector<char*> args;
    for (auto& a : argv_) args.push_back(a.data());
    args.push_back(nullptr);
    int fds[2];
    if (stdin_read_ < 0 || ::pipe2(fds, O_CLOEXEC) != 0) {
      finish(-1, std::string("pipe: ") + std::strerror(errno));
      return;
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      // Only async-signal-safe calls from here to exec.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(126);
      ::setpgid(0, 0);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      for (int s : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD}) ::sigaction(s, &dfl, nullptr);
      ::dup2(stdin_read_, 0);
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      ::close_range(3, ~0U, 0);
      ::execve(args[0], args.data(), environ);
      ::_exit(127);
    }
    ::close(fds[1]);
    ::close(stdin_read_);
    stdin_read_ = -1;
    if (pid > 0) ::setpgid(pid, pid);  // also here: a kill(-pid) right away must find it
    if (pid < 0) {
      ::close(fds[0]);
      finish(-1, std::string("fork: ") + std::strerror(errno));
      return;
    }
    std::string buffer;
    bool skipping = false;  // inside a line longer than kMaxLine
    bool open = true;
    bool terminated = false;
    Clock::time_point terminated_at{};
    int status = 0;
    bool exited = false;
    auto take_lines = [&] {
      std::size_t start = 0;
      for (;;) {
        auto nl = buffer.find('\n', start);
        if (nl == std::string::npos) break;
        if (!skipping) on_line_(buffer.substr(start, nl - start));
        skipping = false;
        start = nl + 1;
      }
      buffer.erase(0, start);
      if (buffer.size() > kMaxLine) {
        if (!skipping) on_line_("(a line of more than 1 MiB, not read)");
        skipping = true;
        buffer.clear();
      }
    };
    auto read_some = [&] {
      char chunk[65536];
      auto n = ::read(fds[0], chunk, sizeof chunk);
      if (n > 0) {
        buffer.append(chunk, static_cast<std::size_t>(n));
        take_lines();
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        open = false;
      }
      return n > 0;
    };
    bool killed = false;
    while (!exited) {
      if (kill_ && !killed) {
        ::kill(-pid, SIGKILL);
        killed = true;
      }
      if (stop_ && !terminated) {
        ::kill(-pid, SIGTERM);
        terminated = true;
        terminated_at = Clock::now();
      } else if (terminated && Clock::now() - terminated_at > kKillGrace) {
        ::kill(-pid, SIGKILL);
        terminated_at = Clock::now() + std::chrono::hours(1);
      }
      if (open) {
        pollfd p{fds[0], POLLIN, 0};
        if (::poll(&p, 1, 200) > 0) read_some();
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      exited = ::waitpid(pid, &status, WNOHANG) == pid;
    }
    // What it wrote just before it ended (its own children may still hold
    // the pipe: read only what is there).
    ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
    while (open && read_some()) {
    }
    if (!buffer.empty() && !skipping) on_line_(buffer);
    ::close(fds[0]);
    if (WIFEXITED(status)) finish(WEXITSTATUS(status), "");
    else finish(-1, fmt::format("killed by signal {}", WTERMSIG(status)));
  }

  void finish(int code, std::string why) {
    on_exit_(code, std::move(why));
    finished_ = true;
  }

  std::string job_;
  std::vector<std::string> argv_;
  LineHandler on_line_;
  ExitHandler on_exit_;
  int stdin_read_ = -1;   // the mover's standard input (closed here once it runs)
  int stdin_write_ = -1;  // ours
  std::atomic<bool> stop_{false};
  std::atomic<bool> kill_{false};
  std::atomic<bool> finished_{false};
  std::thread thread_;
};

enum class Mode : std::uint8_t { fresh, resume, abort };

json error_body(const std::string& text) { return json{{"error", text}}; }

}  // namespace

struct MoveJobs::Impl {
  struct Local {
    Job job;
    Mode mode = Mode::fresh;
    std::unique_ptr<Child> child;
    PassClock clock;
    bool writing = false;
    bool dirty = false;
    std::uint64_t acked = 0;      // journal events acknowledged to the mover
    bool abort_refused = false;   // asked after the switch started: said once
    std::string fatal;            // why this instance stopped the mover itself
    std::string problem;          // the store's last error, for the log
    Clock::time_point renewed = Clock::now();  // the last renewed lease (when its write was sent)
  };

  config::Moves settings;
  std::string instance;
  asio::io_context io{1};
  std::unique_ptr<Store> store;
  std::thread thread;
  std::map<std::string, std::shared_ptr<Local>> local;
  std::list<std::unique_ptr<Child>> retired;  // stopped, joined when finished
  std::atomic<std::size_t> running_here{0};
  bool started_up = false;
  std::atomic<bool> stopped{false};
  Clock::time_point last_forget{};

  Impl(const config::Config& config) : settings(config.moves), instance(config.instance) {
    std::error_code ec;
    std::filesystem::create_directories(settings.dir / "journals", ec);
    if (ec)
      throw std::runtime_error(fmt::format("moves: cannot create {}: {}",
                                           (settings.dir / "journals").string(), ec.message()));
    if (settings.store == config::MoveStoreKind::sql)
      store = make_sql_store(io.get_executor(), config.roles.sql, settings.lease);
    else
      store = make_file_store(settings.dir, instance);
  }

  std::filesystem::path journal_path(const std::string& id) const {
    return settings.dir / "journals" / (id + ".json");
  }

  // --- the job's mover

  void launch(const std::shared_ptr<Local>& l, Mode mode) {
    auto& job = l->job;
    const auto journal = journal_path(job.id);
    if (mode != Mode::fresh && job.journal.is_object()) {
      // The journal as the store holds it (another instance may have written
      // it). The mover waited for each journal to be stored before acting on
      // it, so this one is not behind what any run did.
      const auto temporary = journal.string() + ".tmp";
      {
        std::ofstream out(temporary, std::ios::trunc);
        out << job.journal.dump(-1, ' ', false, json::error_handler_t::replace);
      }
      std::error_code ec;
      std::filesystem::rename(temporary, journal, ec);
    } else if (mode == Mode::resume) {
      mode = Mode::fresh;  // the mover had not saved a journal: start again
    } else if (mode == Mode::abort) {
      // No journal: the mover had not begun to change anything.
      job.state = "aborted";
      job.finished = now_iso();
      job.result = "aborted before the mover changed anything";
      job.say(job.finished, "aborted: " + job.result);
      spdlog::info("move {} of {}: {}", job.id, sanitize(job.user, 100), job.result);
      persist(l);
      return;
    }
    l->mode = mode;
    std::vector<std::string> argv{settings.mover.string(), "--config",
                                  settings.mover_config.string(), "move"};
    if (mode == Mode::fresh) {
      argv.insert(argv.end(), {"--to", job.to});
      if (!job.mover.empty()) argv.insert(argv.end(), {"--mover", job.mover});
    } else {
      argv.push_back(mode == Mode::abort ? "--abort" : "--resume");
    }
    argv.insert(argv.end(),
                {"--events", "--events-ack", "--journal-file", journal.string(), "--", job.user});
    l->acked = 0;
    l->clock = PassClock{};
    const char* what = mode == Mode::fresh ? "started" : mode == Mode::resume ? "resumed" : "abort run";
    job.say(now_iso(), fmt::format("{} on {} (epoch {})", what, instance, job.epoch));
    spdlog::info("move {} of {}: mover {} on {} (epoch {}): {}", job.id, sanitize(job.user, 100),
                 what, instance, job.epoch, sanitize(fmt::format("{}", fmt::join(argv, " ")), 400));
    auto on_line = [this, l](std::string line) {
      asio::post(io, [this, l, line = std::move(line)] { mover_line(l, line); });
    };
    auto on_exit = [this, l](int code, std::string why) {
      asio::post(io, [this, l, code, why = std::move(why)] { mover_exit(l, code, why); });
    };
    l->child =
        std::make_unique<Child>(job.id, std::move(argv), std::move(on_line), std::move(on_exit));
    running_here = local.size();
  }

  bool current(const std::shared_ptr<Local>& l) const {
    auto it = local.find(l->job.id);
    return it != local.end() && it->second == l;
  }

  void mover_line(const std::shared_ptr<Local>& l, const std::string& line) {
    if (!current(l)) return;
    const int step = l->job.step_number;
    const bool important = apply_mover_line(l->job, line, Clock::now(), l->clock);
    if (l->job.step_number != step)
      spdlog::info("move {} of {}: step {} {}", l->job.id, sanitize(l->job.user, 100),
                   l->job.step_number, l->job.step);
    if (l->clock.journal_unusable && l->fatal.empty()) {
      // It waits for a "stored" this instance cannot give: a take-over would
      // resume from an older journal than what it does next.
      l->fatal = fmt::format(
          "the mover's journal no longer fits in an event line; finish the move by hand on this "
          "host: {} --config {} move --resume --journal-file {} -- USER",
          settings.mover.string(), settings.mover_config.string(),
          journal_path(l->job.id).string());
      if (l->child) l->child->kill_now();
    }
    if (important) persist(l);
  }

  void mover_exit(const std::shared_ptr<Local>& l, int code, const std::string& why) {
    if (!current(l)) return;
    auto& job = l->job;
    retire(l);
    if (job.state == "aborting" && l->mode != Mode::abort && code != 0 && l->fatal.empty()) {
      launch(l, Mode::abort);  // the mover stopped: now undo what it did
      persist(l);
      return;
    }
    if (job.state == "aborting" && l->mode != Mode::abort && code == 0)
      job.say(now_iso(), "the move finished before the abort reached it");
    job.exit_code = code;
    if (!l->fatal.empty()) job.result = l->fatal;
    if (l->mode == Mode::abort) {
      job.state = code == 0 ? "aborted" : "failed";
      if (code != 0 && job.result.empty())
        job.result = fmt::format("the abort run failed (exit {}{}): see the history", code,
                                 why.empty() ? "" : ", " + why);
    } else {
      job.state = state_after_exit(code);
      if (job.result.empty())
        job.result = code == 0 ? "done"
                               : fmt::format("the mover ended with exit {}{}", code,
                                             why.empty() ? "" : " (" + why + ")");
    }
    job.finished = now_iso();
    job.say(job.finished, fmt::format("{}: {}", job.state, job.result));
    spdlog::log(job.state == "done" || job.state == "aborted" ? spdlog::level::info
                                                              : spdlog::level::warn,
                "move {} of {}: {} (exit {}): {}", job.id, sanitize(job.user, 100), job.state,
                code, sanitize(job.result, 400));
    persist(l);
  }

  void retire(const std::shared_ptr<Local>& l) {
    if (l->child) {
      l->child->stop();
      retired.push_back(std::move(l->child));
    }
    retired.remove_if([](const auto& c) { return c->finished(); });
  }

  // Drops a job this instance no longer runs (another has it, or the lease
  // could not be renewed): its mover is stopped at once.
  void let_go(const std::shared_ptr<Local>& l, const std::string& why) {
    if (!current(l)) return;
    spdlog::error("move {} of {}: stopping its mover here: {}", l->job.id,
                  sanitize(l->job.user, 100), why);
    if (l->child) l->child->kill_now();
    retire(l);
    store->release(l->job.id);
    local.erase(l->job.id);
    running_here = local.size();
  }

  // --- the store

  void persist(const std::shared_ptr<Local>& l) {
    if (l->writing) {
      l->dirty = true;
      return;
    }
    l->writing = true;
    asio::co_spawn(io, write_loop(l), asio::detached);
  }

  asio::awaitable<void> write_loop(std::shared_ptr<Local> l) {
    do {
      l->dirty = false;
      l->job.updated = now_iso();
      Job snapshot = l->job;
      const auto journals = l->clock.journal_events;
      // The lease counts from when the write was sent (the database adds
      // moves.lease to its clock when it runs it): conservative here.
      const auto sent = Clock::now();
      auto answer = co_await store->update(snapshot);
      if (!current(l)) break;
      if (answer.status == StoreStatus::ok) {
        l->renewed = sent;
        // The journals this write stored: the mover may act on them now.
        if (l->child) {
          for (; l->acked < journals; ++l->acked) l->child->send("stored\n");
        }
        if (is_terminal(snapshot.state)) {
          local.erase(snapshot.id);
          running_here = local.size();
          std::error_code ec;
          // A failed job's journal stays: what a resume by hand reads.
          if (snapshot.state != "failed") std::filesystem::remove(journal_path(snapshot.id), ec);
          break;
        }
      } else if (answer.status == StoreStatus::lost || answer.status == StoreStatus::not_found) {
        let_go(l, "the job was taken over by another instance (its epoch changed)");
        break;
      } else {
        // The store did not answer: the next poll writes again; fence()
        // stops the mover before the lease can run out.
        l->problem = answer.detail;
        break;
      }
    } while (l->dirty);
    l->writing = false;
  }

  asio::awaitable<void> poll_loop() {
    asio::steady_timer timer(io);
    while (!stopped) {
      co_await tick();
      timer.expires_after(settings.poll_interval);
      auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      if (ec) break;
    }
  }

  // Runs on its own timer, not behind the store's answers: a mover whose
  // lease was last renewed two thirds of moves.lease ago is killed, so it is
  // gone before another instance may take the job (poll_interval <= lease/3).
  asio::awaitable<void> fence_loop() {
    asio::steady_timer timer(io);
    while (!stopped) {
      timer.expires_after(settings.poll_interval / 2);
      auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      if (ec || stopped) break;
      std::vector<std::shared_ptr<Local>> late;
      for (auto& [id, l] : local) {
        if (!is_terminal(l->job.state) && Clock::now() - l->renewed > settings.lease * 2 / 3)
          late.push_back(l);
      }
      for (auto& l : late)
        let_go(l, fmt::format("its lease could not be renewed for {}s ({}); another instance may "
                              "take the job over",
                              std::chrono::duration_cast<std::chrono::seconds>(
                                  Clock::now() - l->renewed).count(),
                              sanitize(l->problem.empty() ? "no answer" : l->problem, 300)));
    }
  }

  asio::awaitable<void> tick() {
    std::vector<std::shared_ptr<Local>> mine;
    for (auto& [id, l] : local) mine.push_back(l);
    for (auto& l : mine) persist(l);  // renews the lease
    auto listed = co_await store->open_jobs();
    if (listed.status != StoreStatus::ok || stopped) co_return;
    for (auto& stored : listed.jobs) {
      auto& job = stored.job;
      if (auto it = local.find(job.id); it != local.end()) {
        if (job.abort_requested && it->second->job.state == "running") begin_abort(it->second);
        continue;
      }
      if (is_terminal(job.state) || local.size() >= settings.max_running || stopped) continue;
      // Our own unfinished job at start (this instance was stopped or
      // killed): ours again at once. Anyone's whose lease ran out: taken over.
      const bool own = !started_up && job.owner == instance;
      if (!own && !stored.lease_expired) continue;
      co_await take_over(std::move(job), own);
    }
    started_up = true;
    if (Clock::now() - last_forget > kForgetEvery) {
      last_forget = Clock::now();
      co_await store->forget_finished(settings.keep);
    }
  }

  asio::awaitable<bool> take_over(Job job, bool any_lease, bool abort_it = false) {
    // Never while a mover of this job still runs here (let go, dying).
    for (const auto& child : retired) {
      if (child->job() == job.id && !child->finished()) co_return false;
    }
    const std::string was = job.state;
    Job next = job;
    const std::string before = job.owner;
    next.owner = instance;
    next.epoch = job.epoch + 1;
    const bool abort = abort_it || job.state == "aborting" || job.abort_requested;
    next.state = abort ? "aborting" : "running";
    next.abort_requested = false;
    next.updated = now_iso();
    next.say(next.updated, before == instance
                               ? fmt::format("resumed by {} after its restart", instance)
                               : fmt::format("taken over by {} from {} (its lease ran out)",
                                             instance, before.empty() ? "nobody" : before));
    auto answer = co_await store->take(next, was, any_lease);
    if (answer.status != StoreStatus::ok) co_return false;  // someone else was quicker
    if (stopped || local.count(next.id)) co_return false;   // its lease runs out; taken later
    spdlog::warn("move {} of {}: {} (epoch {})", next.id, sanitize(next.user, 100),
                 next.history.back().text, next.epoch);
    auto l = std::make_shared<Local>();
    l->job = std::move(next);
    local[l->job.id] = l;
    launch(l, abort ? Mode::abort : Mode::resume);
    co_return true;
  }

  void begin_abort(const std::shared_ptr<Local>& l) {
    if (l->job.step_number >= kSwitchStep) {
      if (!l->abort_refused) {
        l->abort_refused = true;
        l->job.say(now_iso(), "abort refused: the switch has started; the move finishes");
        persist(l);
      }
      return;
    }
    l->job.state = "aborting";
    l->job.say(now_iso(), "abort asked: stopping the mover, then undoing what it did");
    spdlog::info("move {} of {}: aborting", l->job.id, sanitize(l->job.user, 100));
    if (l->child) l->child->stop();  // its exit starts the abort run
    persist(l);
  }

  // --- the admin API

  json shown(const StoredJob& stored, bool with_history) const {
    if (auto it = local.find(stored.job.id); it != local.end())
      return to_api_json(it->second->job, with_history);
    json out = to_api_json(stored.job, with_history);
    if (!is_terminal(stored.job.state) && stored.lease_expired) out["state"] = "waiting";
    return out;
  }

  asio::awaitable<MoveAnswer> start(MoveRequest request) {
    if (local.size() >= settings.max_running)
      co_return MoveAnswer{503, error_body(fmt::format(
                                    "this instance runs {} moves already (moves.max_running); "
                                    "start it on another instance or later",
                                    local.size()))};
    auto l = std::make_shared<Local>();
    auto& job = l->job;
    job.id = new_job_id();
    job.user = request.user;
    job.to = request.to;
    job.mover = request.mover;
    job.owner = instance;
    job.epoch = 1;
    job.created = job.updated = now_iso();
    auto answer = co_await store->insert(job);
    if (answer.status == StoreStatus::conflict)
      co_return MoveAnswer{409, json{{"error", fmt::format("{} has a move that is not done with: "
                                                           "{} (follow it, or resume or abort "
                                                           "it if it failed)",
                                                           job.user, answer.other_id)},
                                     {"id", answer.other_id}}};
    if (answer.status != StoreStatus::ok)
      co_return MoveAnswer{503, error_body("the move store did not take the job: " +
                                           sanitize(answer.detail, 300))};
    if (stopped)  // recorded, not started: taken over once its lease runs out
      co_return MoveAnswer{503, error_body("the instance is stopping; the move starts elsewhere")};
    local[job.id] = l;
    launch(l, Mode::fresh);
    co_return MoveAnswer{202, to_api_json(job, true)};
  }

  asio::awaitable<MoveAnswer> list() {
    auto listed = co_await store->list("");
    if (listed.status != StoreStatus::ok)
      co_return MoveAnswer{503, error_body("the move store does not answer: " +
                                           sanitize(listed.detail, 300))};
    json moves = json::array();
    for (const auto& stored : listed.jobs) moves.push_back(shown(stored, false));
    co_return MoveAnswer{200, json{{"moves", std::move(moves)}}};
  }

  asio::awaitable<MoveAnswer> get(std::string id) {
    auto listed = co_await store->list(id);
    if (listed.status == StoreStatus::not_found || (listed.status == StoreStatus::ok && listed.jobs.empty()))
      co_return MoveAnswer{404, error_body("no move " + sanitize(id, 80))};
    if (listed.status != StoreStatus::ok)
      co_return MoveAnswer{503, error_body("the move store does not answer: " +
                                           sanitize(listed.detail, 300))};
    co_return MoveAnswer{200, shown(listed.jobs.front(), true)};
  }

  asio::awaitable<MoveAnswer> abort(std::string id) {
    if (auto it = local.find(id); it != local.end()) {
      auto l = it->second;
      if (l->job.state == "aborting") co_return MoveAnswer{202, to_api_json(l->job, true)};
      if (l->job.step_number >= kSwitchStep)
        co_return MoveAnswer{409, error_body("the switch has started: the move finishes (abort "
                                             "only before step 6)")};
      begin_abort(l);
      co_return MoveAnswer{202, to_api_json(l->job, true)};
    }
    auto listed = co_await store->list(id);
    if (listed.status != StoreStatus::ok || listed.jobs.empty())
      co_return listed.status == StoreStatus::unavailable
          ? MoveAnswer{503, error_body("the move store does not answer: " + sanitize(listed.detail, 300))}
          : MoveAnswer{404, error_body("no move " + sanitize(id, 80))};
    auto stored = listed.jobs.front();
    auto& job = stored.job;
    if (job.step_number >= kSwitchStep && job.state != "aborting")
      co_return MoveAnswer{409, error_body(fmt::format(
                                    "the move is {} and its switch has started: it cannot be "
                                    "aborted",
                                    job.state))};
    const bool failed = job.state == "failed";
    if (is_terminal(job.state) && !failed)
      co_return MoveAnswer{409, error_body("the move has ended: " + job.state)};
    if (failed || stored.lease_expired) {
      // Nobody runs it: this instance runs the abort.
      if (local.size() >= settings.max_running)
        co_return MoveAnswer{503, error_body("this instance runs its maximum of moves")};
      const bool taken = co_await take_over(job, failed, true);
      if (!taken)
        co_return MoveAnswer{409, error_body("the job changed meanwhile; ask again")};
      co_return MoveAnswer{202, to_api_json(local[id]->job, true)};
    }
    auto answer = co_await store->request_abort(id);
    if (answer.status != StoreStatus::ok)
      co_return MoveAnswer{409, error_body("the abort was not recorded: " + sanitize(answer.detail, 300))};
    job.abort_requested = true;
    spdlog::info("move {} of {}: abort asked of its owner {}", id, sanitize(job.user, 100),
                 sanitize(job.owner, 100));
    co_return MoveAnswer{202, to_api_json(job, true)};
  }

  asio::awaitable<MoveAnswer> resume(std::string id) {
    if (local.count(id))
      co_return MoveAnswer{409, error_body("the move is running on this instance")};
    auto listed = co_await store->list(id);
    if (listed.status != StoreStatus::ok || listed.jobs.empty())
      co_return listed.status == StoreStatus::unavailable
          ? MoveAnswer{503, error_body("the move store does not answer: " + sanitize(listed.detail, 300))}
          : MoveAnswer{404, error_body("no move " + sanitize(id, 80))};
    auto& job = listed.jobs.front().job;
    if (job.state != "failed")
      co_return MoveAnswer{409, error_body(fmt::format(
                                    "only a failed move can be resumed; this one is {}{}",
                                    job.state,
                                    is_terminal(job.state) ? "" : " on " + sanitize(job.owner, 100)))};
    if (local.size() >= settings.max_running)
      co_return MoveAnswer{503, error_body("this instance runs its maximum of moves")};
    job.exit_code.reset();
    job.result.clear();
    job.finished.clear();
    auto taken = co_await take_over(job, true);
    if (!taken)
      co_return MoveAnswer{409, error_body("the job changed meanwhile, or the user has another "
                                           "move under way")};
    co_return MoveAnswer{202, to_api_json(local[id]->job, true)};
  }
};

MoveJobs::MoveJobs(const config::Config& config) : impl_(std::make_shared<Impl>(config)) {
  auto* impl = impl_.get();
  spdlog::info("moves: jobs in the {} store; mover {} with {}", impl->store->describe(),
               impl->settings.mover.string(), impl->settings.mover_config.string());
  asio::co_spawn(impl->io, impl->poll_loop(), asio::detached);
  asio::co_spawn(impl->io, impl->fence_loop(), asio::detached);
  impl->thread = std::thread([impl] {
    try {
      impl->io.run();
    } catch (const std::exception& e) {
      spdlog::critical("moves: the jobs' thread failed: {}", e.what());
    }
  });
}

MoveJobs::~MoveJobs() { stop(); }

void MoveJobs::stop() {
  if (!impl_ || impl_->stopped) return;
  auto* impl = impl_.get();
  std::promise<void> done;
  std::list<std::unique_ptr<Child>> children;
  asio::post(impl->io, [impl, &done, &children] {
    impl->stopped = true;
    for (auto& [id, l] : impl->local) {
      if (l->child) {
        spdlog::info("move {}: stopping its mover (the instance stops; the job is resumed or "
                     "taken over later)",
                     id);
        l->child->stop();
        impl->retired.push_back(std::move(l->child));
      }
    }
    impl->local.clear();
    children.swap(impl->retired);
    done.set_value();
  });
  if (done.get_future().wait_for(std::chrono::seconds(30)) != std::future_status::ready)
    spdlog::error("moves: the jobs' thread does not answer; stopping without it");
  impl->stopped = true;
  impl->io.stop();
  if (impl->thread.joinable()) impl->thread.join();
  children.clear();  // joins: each mover gets kKillGrace after SIGTERM
}

// Each runs on the jobs' thread; the caller resumes on its own executor.
// (No helper taking a lambda: GCC 12 destroys a coroutine's closure-type
// parameter twice.)
#define ISTHMUS_ON_JOBS_THREAD(call)                                              \
  auto impl = impl_;                                                              \
  if (impl->stopped) co_return MoveAnswer{503, error_body("the instance is stopping")}; \
  co_return co_await asio::co_spawn(impl->io, impl->call, asio::use_awaitable)

asio::awaitable<MoveAnswer> MoveJobs::start(MoveRequest request) {
  ISTHMUS_ON_JOBS_THREAD(start(std::move(request)));
}
asio::awaitable<MoveAnswer> MoveJobs::list() { ISTHMUS_ON_JOBS_THREAD(list()); }
asio::awaitable<MoveAnswer> MoveJobs::get(std::string id) {
  ISTHMUS_ON_JOBS_THREAD(get(std::move(id)));
}
asio::awaitable<MoveAnswer> MoveJobs::abort(std::string id) {
  ISTHMUS_ON_JOBS_THREAD(abort(std::move(id)));
}
asio::awaitable<MoveAnswer> MoveJobs::resume(std::string id) {
  ISTHMUS_ON_JOBS_THREAD(resume(std::move(id)));
}
#undef ISTHMUS_ON_JOBS_THREAD

json MoveJobs::status() const {
  return json{{"store", impl_->store->describe()}, {"running_here", impl_->running_here.load()}};
}

}  // namespace isthmus::moves
