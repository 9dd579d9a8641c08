#pragma once
// What keeps password guessing cheap for Isthmus and dear for the guesser:
// - a short memory of verdicts per (user, password), so the same guesses
//   sprayed again cost the directory nothing (only a keyed digest of the
//   password is kept, never the password);
// - a delay before each "authentication failed" that doubles with every
//   failure from the same address, up to a cap, forgotten after ten quiet
//   minutes.
// Shared by all workers (sharded mutexes), kept across config reloads.

#include "common/deadline.hpp"
#include "director/directory.hpp"

#include <array>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace isthmus::director {

class AuthGuard {
 public:
  AuthGuard();

  // `stored` is what the password was checked against (the hash, the DN):
  // a verdict is forgotten as soon as the directory holds a new hash.
  std::optional<PasswordCheck> remembered(std::string_view user, std::string_view stored,
                                          std::string_view password, Clock::time_point now);
  // Only accepted and rejected are remembered (failures are not verdicts).
  void remember(std::string_view user, std::string_view stored, std::string_view password,
                PasswordCheck verdict, Clock::duration ttl, Clock::time_point now);

  // Counts a failed login from `address` and says how long its answer waits.
  Clock::duration failed_login(std::string_view address, Clock::duration base,
                               Clock::duration max, Clock::time_point now);

  static constexpr std::size_t kMaxEntries = 200000;  // per table
  static constexpr auto kQuietReset = std::chrono::minutes(10);

 private:
  struct Verdict {
    PasswordCheck verdict;
    Clock::time_point expires;
  };
  struct Failures {
    unsigned count = 0;
    Clock::time_point last;
  };
  template <typename Value>
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, Value> entries;
  };
  static constexpr std::size_t kShards = 16;

  std::string digest(std::string_view user, std::string_view stored,
                     std::string_view password) const;

  std::array<unsigned char, 32> key_{};
  std::array<Shard<Verdict>, kShards> verdicts_;
  std::array<Shard<Failures>, kShards> failures_;
};

}  // namespace isthmus::director
