#pragma once
// The isthmusctl commands (docs/isthmusctl.md): each asks the instances,
// prints a table or --json, and notes the exit code its failures earn.

#include "ctl/admin_client.hpp"
#include "ctl/instances.hpp"

#include <optional>
#include <string>
#include <vector>

namespace isthmus::ctl {

// Exit codes (docs/isthmusctl.md, "Exit codes"). When several apply, the
// first of kExitPrecedence wins.
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 1;        // bad command line or config
inline constexpr int kExitUnreachable = 2;  // not reached, or answered 5xx / garbage
inline constexpr int kExitRefused = 3;      // 4xx other than 401/404
inline constexpr int kExitNotFound = 4;     // 404: no such user, node or island
inline constexpr int kExitDisagree = 5;     // instances disagree (islands)
inline constexpr int kExitAuth = 6;         // 401: missing or wrong token
inline constexpr int kExitPrecedence[] = {kExitUsage, kExitAuth, kExitUnreachable,
                                          kExitRefused, kExitNotFound, kExitDisagree};

// One command line, parsed.
struct Command {
  std::string name;  // "nodes", "where", ...
  bool json = false;
  Selection selection;
  std::optional<std::string> user;    // where, kick, sessions, cache-invalidate
  std::optional<std::string> node;    // kick, sessions, drain, undrain, promote
  std::optional<std::string> island;  // kick, sessions, promote; move --to
  std::optional<std::string> mover;   // move --mover
  std::optional<std::string> job;     // move --follow, move-abort, move-resume
  bool detach = false;                // move --detach
};

// The exit code for an instance's answer of this kind.
int exit_code_of(ReplyKind kind);

// Checks the arguments, picks the instances, runs the command, prints;
// returns the exit code. `environment_config` is $ISTHMUSCTL_CONFIG.
int run_command(const Command& command, const std::string& environment_config);

}  // namespace isthmus::ctl
