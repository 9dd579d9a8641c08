#pragma once
// The health of one node (for one protocol) as a pure state machine, and the pure parts of an
// active check (what a greeting means). No sockets, no clock of its own:
// the time is passed in, so tests drive it on a fake clock.
//
//   unknown --(good check)--> up          (quietly: it was never down)
//   unknown/up --(`fall` failures in a row)--> down   (logged at warn)
//   down --(`rise` good checks in a row)--> up        (logged at info)
//
// A failure is a failed active check or a passive report from a real
// session (connect refused, timeout, broken greeting): both count at once,
// so a node can go down between two active checks. Unknown behaves as up
// for routing. See docs/health.md.

#include "common/deadline.hpp"
#include "config/config.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace isthmus::backends {

enum class HealthState : std::uint8_t { unknown, up, down };
std::string_view name_of(HealthState state);

// The jitter on every check interval: up to this share of it either way.
inline constexpr double kHealthJitter = 0.2;

// `interval` moved by the jitter: `unit` in [0, 1] maps linearly onto
// [interval * (1 - kHealthJitter), interval * (1 + kHealthJitter)]; values
// outside are clamped. Random `unit`s spread the checks of many nodes (and
// instances) so they do not all hit at once.
Clock::duration jittered(Clock::duration interval, double unit);

class NodeHealth {
 public:
  // `protocol`, when given, names what this machine tracks in its "up
  // again" line (the checker keeps one per node and protocol).
  NodeHealth(std::string node, config::Health settings, std::string protocol = {});

  // New settings after a reload; the state and the counts stay.
  void configure(const config::Health& settings) { settings_ = settings; }

  // One failed check or passive report. Returns the log line when this
  // failure takes the node down ("node a-left down: 2 failed checks: why").
  std::optional<std::string> record_failure(std::string_view reason, Clock::time_point now);
  // One good active check. Returns the log line when this brings it back up.
  std::optional<std::string> record_success(Clock::time_point now);

  HealthState state() const { return state_; }
  bool down() const { return state_ == HealthState::down; }
  // Failures / good checks in a row (the one not counting is 0).
  unsigned failures() const { return failures_; }
  unsigned successes() const { return successes_; }
  const std::string& last_failure() const { return last_failure_; }
  Clock::time_point since() const { return since_; }  // of the current state

  // When the next check is due: `interval` (or `down_interval` while down),
  // jittered by `unit` (see jittered()), from `now`.
  Clock::time_point next_check(Clock::time_point now, double unit) const;

 private:
  std::string node_;
  std::string protocol_;
  config::Health settings_;
  HealthState state_ = HealthState::unknown;
  unsigned failures_ = 0;
  unsigned successes_ = 0;
  std::string last_failure_;
  Clock::time_point since_{};
};

// What a node's first line(s) mean for a check: nullopt for a good
// greeting, else what is wrong with it (for the log line). IMAP wants
// "* OK" (RFC 3501 section 7.1.1; PREAUTH is not what a proxy expects and
// BYE is a refusal), POP3 "+OK" (RFC 1939 section 4), LMTP a 220 reply
// (RFC 2033 section 4, RFC 5321 section 4.2; 4xx/5xx refuse).
std::optional<std::string> greeting_problem(config::Protocol protocol, std::string_view line);

// Whether a greeting line is one of several (a ManageSieve capability line:
// the greeting ends with its OK line).
bool greeting_continues(config::Protocol protocol, std::string_view line);

}  // namespace isthmus::backends
