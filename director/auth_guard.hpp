#pragma once
// What keeps password guessing cheap for Isthmus and dear for the guesser
// (docs/tls-and-trust.md, "What a hostile client can and cannot do"):
//
// - a short memory of verdicts per (user, password), so the same guesses
//   sprayed again cost the directory nothing (only a keyed digest of the
//   password is kept, never the password);
// - a throttle in two lanes, applied *before* a login is checked (before
//   the directory lookup and before any node sees the credentials):
//     address lane: failures from one client address (IPv6: its /64) make
//       that address's next check wait; parallel logins from it queue one
//       penalty apart;
//     user lane: failures against one login name, from any address,
//       (password spraying) make the next check of that name wait, queued
//       the same way.
//   A penalty doubles per failure from `timeouts.auth_failure_delay` up to
//   `auth.max_failure_delay`; failures weigh less with time (half-life
//   `auth.failure_half_life`). A check that would wait longer than
//   `auth.max_throttle_wait` is refused at once, as a temporary failure.
// - exemptions, so that nobody is delayed by someone else's failures
//   against another user: credentials that logged in within
//   `auth.known_good_ttl` skip both lanes; an address the user logged in
//   from within that time skips the user lane.
//
// Every table has a fixed number of slots (`auth.throttle_entries` each),
// set-associative: a full set drops its least weighty entry, so a flood of
// fresh addresses cannot push out the ones that earned a penalty. Keys are
// keyed digests (a random key per process): nobody can aim collisions.
// Shared by all workers (a mutex per set group), kept across reloads.

#include "common/deadline.hpp"
#include "config/config.hpp"
#include "director/directory.hpp"

#include <boost/asio/ip/address.hpp>

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace isthmus::director {

// The throttle's settings, from the config (auth.* and timeouts.auth_failure_delay).
struct ThrottleSettings {
  Clock::duration base = std::chrono::seconds(2);       // the first penalty
  Clock::duration max_delay = std::chrono::seconds(15); // the largest penalty
  Clock::duration half_life = std::chrono::minutes(5);  // a failure's weight halves
  Clock::duration max_wait = std::chrono::seconds(30);  // longer: refused at once
  Clock::duration known_good_ttl = std::chrono::hours(24 * 7);
  unsigned ipv6_prefix = 64;

  static ThrottleSettings from(const config::Config& config);
};

enum class ThrottleLane : std::uint8_t { address, user };

struct Admission {
  bool refused = false;                  // waiting would exceed max_wait
  Clock::time_point start{};             // when the check may begin (<= now: at once)
  Clock::duration address_wait{};        // how much of the wait each lane asked for
  Clock::duration user_wait{};
  bool known_good = false;               // credentials that logged in before: no lane
  bool familiar = false;                 // the user logged in from this address: no user lane
};

struct ThrottleStats {
  std::uint64_t delayed_address = 0;  // checks that waited for the address lane
  std::uint64_t delayed_user = 0;     // ... for the user lane
  std::uint64_t refused = 0;          // refused at once (wait > max_wait)
  std::uint64_t failures = 0;         // failed logins counted
  std::uint64_t wait_micros = 0;      // total wait imposed
  std::uint64_t exempt = 0;           // admitted without a lane (known-good credentials)
  std::size_t address_entries = 0;    // slots in use now
  std::size_t user_entries = 0;
  std::size_t known_good_entries = 0;
  std::size_t capacity = 0;           // slots per table
};

class AuthGuard {
 public:
  // `entries`: slots per throttle table (rounded up to a multiple of the
  // set size). Fixed for the life of the process.
  explicit AuthGuard(std::size_t entries = 65536);
  ~AuthGuard();
  AuthGuard(const AuthGuard&) = delete;
  AuthGuard& operator=(const AuthGuard&) = delete;

  // -- verdict memory (directory authentication) --
  // `stored` is what the password was checked against (the hash, the DN):
  // a verdict is forgotten as soon as the directory holds a new hash.
  std::optional<PasswordCheck> remembered(std::string_view user, std::string_view stored,
                                          std::string_view password, Clock::time_point now);
  // Only accepted and rejected are remembered (failures are not verdicts).
  void remember(std::string_view user, std::string_view stored, std::string_view password,
                PasswordCheck verdict, Clock::duration ttl, Clock::time_point now);

  // -- the throttle --
  // The key of a client address: the address itself, IPv6 cut to its
  // `ipv6_prefix` (one host usually holds a whole /64).
  static std::string address_key(const boost::asio::ip::address& address, unsigned ipv6_prefix);

  // The keys of one login attempt in the throttle's tables, computed once
  // (the password is used here only, as an input to a keyed digest).
  struct Keys {
    std::uint64_t address = 0;     // the address_key
    std::uint64_t user = 0;        // the login name
    std::uint64_t credentials = 0; // (name, password)
    std::uint64_t familiar = 0;    // (name, address)
  };
  Keys keys(std::string_view address, std::string_view user, std::string_view password) const;

  // Before checking a login: when the check may start. Reserves that
  // moment in the lanes that delayed it, so parallel checks queue behind
  // each other.
  Admission admit(const Keys& keys, Clock::time_point now, const ThrottleSettings& settings);
  // A login that failed for its credentials (or for something the client
  // sent): counts in both lanes.
  void failed(const Keys& keys, Clock::time_point now, const ThrottleSettings& settings);
  // A login that succeeded: its credentials and the (name, address) pair
  // are exempt from now on for `known_good_ttl`.
  void succeeded(const Keys& keys, Clock::time_point now, const ThrottleSettings& settings);

  ThrottleStats stats() const;

  static constexpr std::size_t kMaxVerdicts = 200000;

  class PenaltyTable;  // set-associative, defined in auth_guard.cpp
  class ExpiryTable;

 private:
  struct Verdict {
    PasswordCheck verdict;
    Clock::time_point expires;
  };
  struct VerdictShard {
    std::mutex mutex;
    std::unordered_map<std::string, Verdict> entries;
  };
  static constexpr std::size_t kShards = 16;

  std::string digest(std::string_view a, std::string_view b, std::string_view c) const;
  std::uint64_t key64(std::string_view kind, std::string_view a, std::string_view b = {}) const;

  std::array<unsigned char, 32> key_{};
  std::array<VerdictShard, kShards> verdicts_;
  std::unique_ptr<PenaltyTable> addresses_;
  std::unique_ptr<PenaltyTable> users_;
  std::unique_ptr<ExpiryTable> known_good_;  // (user, password) that logged in
  std::unique_ptr<ExpiryTable> familiar_;    // (user, address) that logged in
  std::atomic<std::uint64_t> delayed_address_{0};
  std::atomic<std::uint64_t> delayed_user_{0};
  std::atomic<std::uint64_t> refused_{0};
  std::atomic<std::uint64_t> failures_{0};
  std::atomic<std::uint64_t> wait_micros_{0};
  std::atomic<std::uint64_t> exempt_{0};
};

}  // namespace isthmus::director
