#include "backends/role_hook.hpp"

#include "common/log.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pthread.h>

extern char** environ;

namespace isthmus::backends {

namespace {

constexpr std::size_t kMaxOutput = 64 * 1024;  // kept while it runs; the rest is read and dropped

std::string seconds(Clock::duration d) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  return fmt::format("{}.{:02}s", ms / 1000, (ms % 1000) / 10);
}

std::string last_line(const std::string& output) {
  std::size_t end = output.size();
  while (end > 0) {
    while (end > 0 && (output[end - 1] == '\n' || output[end - 1] == '\r')) --end;
    std::size_t start = output.rfind('\n', end == 0 ? 0 : end - 1);
    start = start == std::string::npos ? 0 : start + 1;
    std::string line = output.substr(start, end - start);
    if (line.find_first_not_of(" \t") != std::string::npos) return sanitize(line, 200);
    end = start;
  }
  return "";
}

}  // namespace

std::string HookOutcome::describe() const {
  switch (kind) {
    case Kind::exited: return fmt::format("exited {} after {}", code, seconds(took));
    case Kind::killed_by_signal:
      return fmt::format("killed by signal {} after {}", code, seconds(took));
    case Kind::timed_out: return fmt::format("killed after {} (timeout)", seconds(took));
    case Kind::failed_to_start: return "could not be started: " + error;
  }
  return "";
}

HookOutcome run_hook(const std::vector<std::string>& argv,
                     const std::map<std::string, std::string>& extra_env,
                     Clock::duration timeout) {
  HookOutcome outcome;
  const auto started = Clock::now();
  if (argv.empty()) {
    outcome.error = "no program";
    return outcome;
  }
  // The environment: ours, with the hook's variables replacing any of the
  // same name.
  std::vector<std::string> env_strings;
  for (char** e = environ; e && *e; ++e) {
    std::string_view entry(*e);
    auto name = entry.substr(0, entry.find('='));
    if (!extra_env.count(std::string(name))) env_strings.emplace_back(entry);
  }
  for (const auto& [name, value] : extra_env) env_strings.push_back(name + "=" + value);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (auto& s : args) argp.push_back(s.data());
  argp.push_back(nullptr);

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    outcome.error = std::string("pipe: ") + std::strerror(errno);
    return outcome;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
  // Nothing else of ours: listeners, client and node sockets (Asio does not
  // open them close-on-exec) must not outlive us in a hook's children.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  // Its own process group, so a timeout kills what it started too; default
  // signal handling and mask (Isthmus ignores SIGPIPE and blocks others).
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setsigdefault(&attributes, &all);
  posix_spawnattr_setpgroup(&attributes, 0);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                            POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argp[0], &actions, &attributes, argp.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  ::close(pipe_fds[1]);
  if (rc != 0) {
    ::close(pipe_fds[0]);
    outcome.error = fmt::format("{}: {}", argv.front(), std::strerror(rc));
    return outcome;
  }

  std::string output;
  const auto deadline = started + timeout;
  bool open = true;
  int status = 0;
  bool reaped = false;
  bool timed_out = false;
  while (!reaped) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      reaped = true;
      break;
    }
    if (open) {
      pollfd p{pipe_fds[0], POLLIN, 0};
      int ready = ::poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 50)));
      if (ready > 0) {
        char buffer[4096];
        ssize_t n = ::read(pipe_fds[0], buffer, sizeof buffer);
        if (n > 0) {
          output.append(buffer, static_cast<std::size_t>(n));
          if (output.size() > kMaxOutput) output.erase(0, output.size() - kMaxOutput);
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          open = false;
        }
      }
    } else {
      ::usleep(10000);
    }
    pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) reaped = true;
  }
  // What it wrote just before it ended (its children may hold the pipe:
  // read only what is there now).
  for (;;) {
    pollfd p{pipe_fds[0], POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) break;
    char buffer[4096];
    ssize_t n = ::read(pipe_fds[0], buffer, sizeof buffer);
    if (n <= 0) break;
    output.append(buffer, static_cast<std::size_t>(n));
    if (output.size() > kMaxOutput) output.erase(0, output.size() - kMaxOutput);
  }
  ::close(pipe_fds[0]);
  outcome.took = Clock::now() - started;
  outcome.output = last_line(output);
  if (timed_out) {
    outcome.kind = HookOutcome::Kind::timed_out;
  } else if (WIFEXITED(status)) {
    outcome.kind = HookOutcome::Kind::exited;
    outcome.code = WEXITSTATUS(status);
  } else {
    outcome.kind = HookOutcome::Kind::killed_by_signal;
    outcome.code = WIFSIGNALED(status) ? WTERMSIG(status) : -1;
  }
  return outcome;
}

HookRunner::HookRunner() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "isthmus-hook");
    loop();
  });
}

HookRunner::~HookRunner() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    if (!queue_.empty())
      spdlog::info("role hook: {} hooks still to run before stopping", queue_.size());
  }
  wake_.notify_all();
  thread_.join();
}

void HookRunner::run(Job job) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    queue_.push_back(std::move(job));
  }
  wake_.notify_one();
}

void HookRunner::loop() {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      // A role that moved is told, even when the instance stops right after.
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    spdlog::info("role hook: {}: running {}", job.what, job.argv.front());
    HookOutcome outcome = run_hook(job.argv, job.env, job.timeout);
    std::string said = outcome.output.empty() ? "" : fmt::format("; it said: {}", outcome.output);
    if (outcome.ok())
      spdlog::info("role hook: {}: {} {}{}", job.what, job.argv.front(), outcome.describe(), said);
    else
      spdlog::error("role hook: {}: {} {}{}; the role moved anyway", job.what, job.argv.front(),
                    outcome.describe(), said);
  }
}

}  // namespace isthmus::backends
