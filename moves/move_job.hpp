#pragma once
// One move job (docs/move.md, "Moves as jobs of the daemon"): what the
// daemon knows of a move it runs or another instance runs, as the store
// keeps it and the admin API shows it, and how a line of the mover's
// output (`isthmus-move move ... --events`: one JSON object per line)
// changes it. Pure functions: unit-tested and fuzzed without a mover.

#include "common/deadline.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

namespace isthmus::moves {

// The job's states. running: a mover runs it (owner, under a lease);
// waiting: its owner's lease ran out and no instance has taken it over yet;
// aborting: an abort was asked, the mover is being stopped and its abort
// run; then one of the terminal states.
bool is_terminal(std::string_view state);  // done, failed, verify_failed, aborted
bool is_known_state(std::string_view state);

struct Progress {
  std::uint64_t pass = 0;
  std::uint64_t folders_done = 0;
  std::uint64_t folders = 0;
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;
  std::uint64_t bytes_total = 0;
  double rate = 0;                   // bytes per second in this pass
  std::optional<double> eta_seconds;  // this pass
};

struct HistoryLine {
  std::string at;  // ISO 8601, UTC
  std::string text;
};

inline constexpr std::size_t kMaxHistory = 200;    // lines kept per job
inline constexpr std::size_t kMaxLine = 1 << 20;   // a mover's line longer is not read
inline constexpr int kSteps = 7;                   // the mover's steps 0..7
inline constexpr int kSwitchStep = 6;              // from here a move cannot be aborted

struct Job {
  std::string id;
  std::string user;
  std::string from;   // known after the mover's "started" event
  std::string to;
  std::string mover;  // "imap", "dsync", or "" (the mover config's default)
  std::string state = "running";
  std::string step;
  int step_number = -1;
  std::string owner;  // the instance running it
  std::uint64_t epoch = 0;
  std::string created, updated, finished;
  Progress progress;
  std::optional<int> exit_code;
  std::string result;
  std::optional<double> interruption_seconds;
  std::deque<HistoryLine> history;
  nlohmann::json journal;  // the mover's journal (null until it saved one)
  bool abort_requested = false;

  void say(std::string at, std::string text);  // history, bounded
};

// What the admin API shows (without the journal; the history only when asked).
nlohmann::json to_api_json(const Job& job, bool with_history);
// What the store keeps (everything), and back. from_stored_json gives
// nullopt for a document that is not a job (id, user, to, state missing).
nlohmann::json to_stored_json(const Job& job);
std::optional<Job> from_stored_json(const nlohmann::json& doc);

// A JSON text parsed with its nesting bounded (deeper: discarded), so that
// neither the mover's lines nor a stored document can exhaust the stack.
nlohmann::json parse_bounded_json(std::string_view text);

// Whether `id` has the shape new_job_id() gives (it names files).
bool valid_job_id(std::string_view id);

// "2026-12-03T22:55:00Z" for now.
std::string now_iso();
// A new job's id: "20261203T225500Z-" and 6 random hex digits.
std::string new_job_id();

// Applies one line of the mover's output to `job`. `now`: the time, for the
// progress' rate. A line that is not one of the mover's events (stray output,
// a warning of Python's) goes to the history as text, sanitized. Returns
// true when the line changed something the store should hear soon (a step,
// the journal, the end), false for progress only.
struct PassClock {
  std::uint64_t pass = 0;
  std::string step;
  Clock::time_point started{};
  std::uint64_t journal_events = 0;  // journal events with a journal (to acknowledge)
  bool journal_unusable = false;     // a journal event came without one (too large)
};
bool apply_mover_line(Job& job, std::string_view line, Clock::time_point now, PassClock& clock);

// The state a mover's exit code leaves: 0 done, 7 verify_failed, else failed.
std::string state_after_exit(int exit_code);

}  // namespace isthmus::moves
