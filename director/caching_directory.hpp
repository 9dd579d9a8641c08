#pragma once
// A cache in front of a directory: what makes a slow or failing LDAP/SQL
// server survivable.
//
// - Fresh entries (found within positive_ttl, not found within
//   negative_ttl) are answered from memory on the caller's thread, without
//   suspending: a shard's mutex, a hash probe, a copy.
// - A miss starts one lookup of the inner directory; every other login for
//   the same user, on any worker thread, waits for that one answer.
// - When the inner directory is unavailable, an expired entry is still
//   served for stale_if_error past its expiry (logged and counted).
// - At most max_entries entries; the least recently used go first.

#include "config/config.hpp"
#include "director/directory.hpp"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

namespace isthmus::director {

struct CacheStats {
  std::uint64_t hits = 0;        // fresh entry answered from memory
  std::uint64_t misses = 0;      // a lookup went to the directory
  std::uint64_t coalesced = 0;   // waited for another login's lookup of the same user
  std::uint64_t stale = 0;       // an expired entry served because the directory failed
  std::uint64_t failures = 0;    // the directory failed and nothing could be served
  std::uint64_t evictions = 0;   // entries dropped to stay within max_entries
  std::uint64_t entries = 0;     // entries now
};

class CachingDirectory final : public Directory,
                               public std::enable_shared_from_this<CachingDirectory> {
 public:
  static std::shared_ptr<CachingDirectory> create(std::shared_ptr<Directory> inner,
                                                  const config::DirectoryCache& settings);
  ~CachingDirectory() override;

  boost::asio::awaitable<LookupResult> lookup(std::string user) override;
  std::string_view kind() const override;
  boost::asio::awaitable<PasswordCheck> check_password(const UserEntry& entry,
                                                       std::string password) override;

  // Writes through to the inner directory, then drops the user's entry.
  boost::asio::awaitable<WriteResult> write_account(std::string user, UserEntry entry,
                                                    AccountChange change) override;
  bool takes_writes() const override;

  // Drops one user's entry (after an operator changed it in the directory).
  void invalidate(std::string_view user);

  // Called (on the directory's thread; keep it short) when a refresh finds
  // a cached user on another island than before: a change made outside
  // `isthmusctl move`, whose sessions on the old island must not go on
  // writing there (directory.cache.close_on_island_change).
  using IslandChangeObserver =
      std::function<void(const std::string& user, const std::string& from, const std::string& to)>;
  void observe_island_changes(IslandChangeObserver observer);
  void clear();
  CacheStats stats() const;
  const config::DirectoryCache& settings() const;
  const std::shared_ptr<Directory>& inner() const;

  struct State;  // defined in the .cpp

 private:
  CachingDirectory(std::shared_ptr<Directory> inner, const config::DirectoryCache& settings);
  std::unique_ptr<State> state_;
};

}  // namespace isthmus::director
