#pragma once
// The daemon's move jobs (docs/isthmusctl.md, "Moves"): start one
// (POST /v1/moves), follow it (GET /v1/moves/ID every second, from another
// instance when the one asked stops answering), list them, abort or resume
// one. The job JSON is untrusted and may lack any field (older or newer
// daemons): the pure functions here read it defensively and print only
// cleaned, bounded text.

#include "ctl/admin_client.hpp"
#include "ctl/commands.hpp"
#include "ctl/text.hpp"

#include <optional>
#include <string>
#include <vector>

namespace isthmus::ctl {

inline constexpr int kExitVerifyFailed = 7;  // move: the verification failed
inline constexpr int kExitDetached = 130;    // move: Ctrl-C while following

// The exit code a job in a terminal state earns (done 0, verify_failed 7,
// failed or aborted 3; a state unknown to this isthmusctl with "finished"
// set: 3), or nothing while it runs.
std::optional<int> move_exit_code(const Json& job);

// "12.3 MB", "512 B" (decimal units, as isthmus-move shows them).
std::string show_bytes(double bytes);

// The one progress line of a followed job, at most `width` characters:
// "[1/7] precopy [######----] 45% 1.2 GB/2.7 GB 12.3 MB/s ETA 2m05s".
std::string move_progress_line(const Json& job, std::size_t width);

// The `moves` table (ID, USER, FROM, TO, MOVER, STATE, STEP, PROGRESS,
// OWNER, UPDATED), or "no moves".
std::string moves_table(const Json& moves);

// The history lines of a job not shown yet, each "AT  TEXT" cleaned; the
// history may be cut at its start by the daemon (bounded), so the last line
// shown is looked for rather than counted.
class HistoryCursor {
 public:
  std::vector<std::string> new_lines(const Json& history);

 private:
  std::optional<Json> last_;
};

// move, moves, move-abort, move-resume: prints, returns the exit code.
int run_move_job(const Command& command, const std::vector<Instance>& instances);

}  // namespace isthmus::ctl
