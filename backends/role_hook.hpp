#pragma once
// The role-change hook: a program an operator configures (roles.hook) to run
// when this instance moves an island's active role, e.g. to move a service
// IP. Contract (docs/health.md): run directly (no shell) with the config's
// arguments; the environment is Isthmus' own plus ISTHMUS_EVENT=role-change,
// ISLAND, OLD_NODE, NEW_NODE, EPOCH and INSTANCE; standard input is
// /dev/null; standard output and error are read (the last line is logged);
// killed (its whole process group) after roles.hook_timeout. Its exit status
// is logged; it cannot undo the move.

#include "common/deadline.hpp"
#include "config/config.hpp"

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace isthmus::backends {

struct HookOutcome {
  enum class Kind : std::uint8_t { exited, killed_by_signal, timed_out, failed_to_start };
  Kind kind = Kind::failed_to_start;
  int code = -1;  // exit status, or the signal
  std::string output;  // the last non-empty line of its output (sanitized, bounded)
  std::string error;   // failed_to_start: why
  Clock::duration took{};
  bool ok() const { return kind == Kind::exited && code == 0; }
  std::string describe() const;  // "exited 0 after 0.12s", "killed after 10s (timeout)"
};

// Runs `argv` with `extra_env` added to the environment and waits for it,
// at most `timeout` (then SIGKILLs its process group). Blocking.
HookOutcome run_hook(const std::vector<std::string>& argv,
                     const std::map<std::string, std::string>& extra_env,
                     Clock::duration timeout);

// Runs hooks one after another on a thread of its own, in the order asked
// (a second move of the same island waits for the first hook), and logs
// each outcome. run() never blocks.
class HookRunner {
 public:
  HookRunner();
  ~HookRunner();  // runs the hooks still queued (each bounded by its timeout) first
  HookRunner(const HookRunner&) = delete;
  HookRunner& operator=(const HookRunner&) = delete;

  struct Job {
    std::vector<std::string> argv;
    std::map<std::string, std::string> env;
    Clock::duration timeout{};
    std::string what;  // for the log: "island a epoch 2 (a-left -> a-right)"
  };
  void run(Job job);

 private:
  void loop();
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace isthmus::backends
