#include "director/caching_directory.hpp"

#include "common/deadline.hpp"
#include "common/strings.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace isthmus::director {

namespace asio = boost::asio;

namespace {

// Directories bound their own lookups (seconds); this is the safety net
// that keeps one lost answer from locking a user out.
constexpr auto kStuckLookup = std::chrono::seconds(60);

// A login waiting for an answer, and the worker it lives on.
struct Waiter {
  asio::any_io_executor executor;
  asio::any_completion_handler<void(LookupResult)> handler;
};

struct Entry {
  bool has_value = false;  // result holds a found / not_found answer
  LookupResult result;
  Clock::time_point expires;
  bool in_flight = false;  // a lookup of the inner directory is running
  Clock::time_point in_flight_since;
  std::vector<Waiter> waiters;
  std::list<std::string>::iterator lru;  // in Shard::lru, front = most recent
};

struct Shard {
  std::mutex mutex;
  std::unordered_map<std::string, Entry> entries;
  std::list<std::string> lru;
};

// Completes a waiter on its own executor (the worker its session lives on).
void deliver(Waiter waiter, LookupResult result) {
  auto complete = [handler = std::move(waiter.handler), result = std::move(result)]() mutable {
    std::move(handler)(std::move(result));
  };
  asio::post(waiter.executor, std::move(complete));
}

}  // namespace

struct CachingDirectory::State {
  std::shared_ptr<Directory> inner;
  config::DirectoryCache settings;
  std::vector<Shard> shards;
  std::size_t per_shard_max = 1;
  std::atomic<std::uint64_t> hits{0}, misses{0}, coalesced{0}, stale{0}, failures{0},
      evictions{0}, entries{0};
  // While the directory is failing, expired entries are served at once for
  // a short while instead of each login waiting for another timeout first.
  static constexpr auto kRetryInterval = std::chrono::seconds(2);
  std::atomic<Clock::rep> failing_until{0};
  std::mutex observer_mutex;
  IslandChangeObserver observer;

  bool directory_failing(Clock::time_point now) const {
    return now.time_since_epoch().count() < failing_until.load(std::memory_order_relaxed);
  }

  State(std::shared_ptr<Directory> inner_directory, const config::DirectoryCache& cache_settings)
      : inner(std::move(inner_directory)), settings(cache_settings),
        shards(std::clamp<std::size_t>(cache_settings.max_entries, 1, 16)) {
    per_shard_max = std::max<std::size_t>(1, settings.max_entries / shards.size());
  }

  Shard& shard_for(const std::string& user) {
    return shards[std::hash<std::string>{}(user) % shards.size()];
  }

  // Under the shard's lock: a fresh answer, if there is one (counted).
  // While the directory fails, that includes an expired entry within
  // stale_if_error.
  std::optional<LookupResult> fresh(Shard& shard, const std::string& user, Clock::time_point now) {
    auto it = shard.entries.find(user);
    if (it == shard.entries.end() || !it->second.has_value) return std::nullopt;
    const Entry& entry = it->second;
    if (now >= entry.expires) {
      if (now >= entry.expires + settings.stale_if_error || !directory_failing(now))
        return std::nullopt;
      stale.fetch_add(1, std::memory_order_relaxed);
      LookupResult answer = entry.result;
      answer.detail = "served from cache while the directory fails (stale_if_error)";
      return answer;
    }
    shard.lru.splice(shard.lru.begin(), shard.lru, it->second.lru);
    hits.fetch_add(1, std::memory_order_relaxed);
    return entry.result;
  }

  // Under the shard's lock: the entry for `user`, made if missing, evicting
  // the least recently used idle entries beyond the bound.
  Entry& entry_for(Shard& shard, const std::string& user) {
    auto it = shard.entries.find(user);
    if (it != shard.entries.end()) return it->second;
    for (auto victim = shard.lru.end();
         shard.entries.size() >= per_shard_max && victim != shard.lru.begin();) {
      --victim;
      auto found = shard.entries.find(*victim);
      if (found->second.in_flight) continue;  // someone waits on it
      shard.entries.erase(found);
      victim = shard.lru.erase(victim);
      evictions.fetch_add(1, std::memory_order_relaxed);
      entries.fetch_sub(1, std::memory_order_relaxed);
    }
    auto [inserted, unused] = shard.entries.try_emplace(user);
    shard.lru.push_front(user);
    inserted->second.lru = shard.lru.begin();
    entries.fetch_add(1, std::memory_order_relaxed);
    return inserted->second;
  }

  void erase(Shard& shard, std::unordered_map<std::string, Entry>::iterator it) {
    shard.lru.erase(it->second.lru);
    shard.entries.erase(it);
    entries.fetch_sub(1, std::memory_order_relaxed);
  }

  // The inner directory answered (or failed): settle the entry, wake everyone.
  void settle(const std::string& user, LookupResult result) {
    auto& shard = shard_for(user);
    std::vector<Waiter> waiters;
    LookupResult answer;
    std::optional<std::pair<std::string, std::string>> moved;  // (from, to)
    {
      std::lock_guard lock(shard.mutex);
      auto it = shard.entries.find(user);
      if (it == shard.entries.end()) return;  // cleared meanwhile; nobody to wake
      Entry& entry = it->second;
      auto now = Clock::now();
      entry.in_flight = false;
      if (result.status == LookupStatus::unavailable)
        failing_until.store((now + kRetryInterval).time_since_epoch().count(),
                            std::memory_order_relaxed);
      waiters = std::move(entry.waiters);
      entry.waiters.clear();
      if (result.status != LookupStatus::unavailable) {
        if (entry.has_value && entry.result.status == LookupStatus::found &&
            result.status == LookupStatus::found &&
            entry.result.entry.island != result.entry.island)
          moved.emplace(entry.result.entry.island, result.entry.island);
        entry.has_value = true;
        entry.expires = now + (result.status == LookupStatus::found ? settings.positive_ttl
                                                                    : settings.negative_ttl);
        entry.result = result;
        answer = std::move(result);
      } else if (entry.has_value && now < entry.expires + settings.stale_if_error) {
        stale.fetch_add(1, std::memory_order_relaxed);
        auto age = std::chrono::duration_cast<std::chrono::seconds>(now - entry.expires);
        spdlog::warn("directory cache: {} directory failing ({}); serving the entry for {} "
                     "expired {}s ago (stale_if_error)",
                     inner->kind(), sanitize(result.detail, 200), sanitize(user, 100),
                     age.count());
        answer = entry.result;
        answer.detail = fmt::format("served from cache, expired {}s ago, while the directory "
                                    "fails: {}", age.count(), result.detail);
      } else {
        failures.fetch_add(1, std::memory_order_relaxed);
        answer = std::move(result);
        if (!entry.has_value) erase(shard, it);  // failures are not cached
      }
    }
    for (auto& waiter : waiters) deliver(std::move(waiter), answer);
    if (moved) {
      spdlog::warn("directory cache: {} moved from island {} to island {} in the {} directory "
                   "(not by isthmusctl move)",
                   sanitize(user, 100), sanitize(moved->first, 100), sanitize(moved->second, 100),
                   inner->kind());
      IslandChangeObserver notify;
      {
        std::lock_guard lock(observer_mutex);
        notify = observer;
      }
      if (notify) notify(user, moved->first, moved->second);
    }
  }
};

namespace {

asio::awaitable<void> fetch(std::shared_ptr<CachingDirectory> owner,
                            CachingDirectory::State& state, std::string user) {
  LookupResult result;
  try {
    result = co_await state.inner->lookup(user);
  } catch (const std::exception& e) {
    result.status = LookupStatus::unavailable;
    result.detail = e.what();
  }
  state.settle(user, std::move(result));
  (void)owner;  // kept the state alive until here
}

}  // namespace

std::shared_ptr<CachingDirectory> CachingDirectory::create(std::shared_ptr<Directory> inner,
                                                           const config::DirectoryCache& settings) {
  return std::shared_ptr<CachingDirectory>(new CachingDirectory(std::move(inner), settings));
}

CachingDirectory::CachingDirectory(std::shared_ptr<Directory> inner,
                                   const config::DirectoryCache& settings)
    : state_(std::make_unique<State>(std::move(inner), settings)) {}

CachingDirectory::~CachingDirectory() = default;

std::string_view CachingDirectory::kind() const { return state_->inner->kind(); }

const config::DirectoryCache& CachingDirectory::settings() const { return state_->settings; }

const std::shared_ptr<Directory>& CachingDirectory::inner() const { return state_->inner; }

asio::awaitable<LookupResult> CachingDirectory::lookup(std::string user) {
  State& state = *state_;
  Shard& shard = state.shard_for(user);
  {
    // The fast path: no suspension, no allocation beyond the copy.
    std::lock_guard lock(shard.mutex);
    auto hit = state.fresh(shard, user, Clock::now());
    if (hit) {
      co_return std::move(*hit);
    }
  }
  auto executor = co_await asio::this_coro::executor;
  auto self = shared_from_this();
  // Decided again under the lock: the answer may have arrived meanwhile.
  auto wait = [&state, &shard, &user, self, executor](
                  asio::any_completion_handler<void(LookupResult)> handler) {
    Waiter waiter{executor, std::move(handler)};
    std::unique_lock lock(shard.mutex);
    if (auto now_fresh = state.fresh(shard, user, Clock::now())) {
      lock.unlock();
      deliver(std::move(waiter), std::move(*now_fresh));
      return;
    }
    Entry& entry = state.entry_for(shard, user);
    entry.waiters.push_back(std::move(waiter));
    auto now = Clock::now();
    if (entry.in_flight && now - entry.in_flight_since < kStuckLookup) {
      state.coalesced.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (entry.in_flight)
      spdlog::error("directory cache: a {} lookup of {} has not finished in {}s; starting another",
                    state.inner->kind(), sanitize(user, 100),
                    std::chrono::duration_cast<std::chrono::seconds>(kStuckLookup).count());
    entry.in_flight = true;
    entry.in_flight_since = now;
    state.misses.fetch_add(1, std::memory_order_relaxed);
    lock.unlock();
    // Detached: the lookup finishes for the other waiters even if the
    // session that started it goes away.
    asio::co_spawn(executor, fetch(self, state, user), asio::detached);
  };
  LookupResult result =
      co_await asio::async_initiate<decltype(asio::use_awaitable), void(LookupResult)>(
          wait, asio::use_awaitable);
  co_return result;
}

asio::awaitable<PasswordCheck> CachingDirectory::check_password(const UserEntry& entry,
                                                                std::string password) {
  co_return co_await state_->inner->check_password(entry, std::move(password));
}

void CachingDirectory::observe_island_changes(IslandChangeObserver observer) {
  std::lock_guard lock(state_->observer_mutex);
  state_->observer = std::move(observer);
}

asio::awaitable<WriteResult> CachingDirectory::write_account(std::string user, UserEntry entry,
                                                              AccountChange change) {
  WriteResult result = co_await state_->inner->write_account(user, std::move(entry),
                                                             std::move(change));
  invalidate(user);
  co_return result;
}

bool CachingDirectory::takes_writes() const { return state_->inner->takes_writes(); }

void CachingDirectory::invalidate(std::string_view user) {
  std::string key(user);
  auto& shard = state_->shard_for(key);
  std::lock_guard lock(shard.mutex);
  auto it = shard.entries.find(key);
  if (it == shard.entries.end()) return;
  if (it->second.in_flight) {
    it->second.has_value = false;  // the running lookup will fill it anew
    return;
  }
  state_->erase(shard, it);
}

void CachingDirectory::clear() {
  for (auto& shard : state_->shards) {
    std::lock_guard lock(shard.mutex);
    for (auto it = shard.entries.begin(); it != shard.entries.end();) {
      auto next = std::next(it);
      if (it->second.in_flight) it->second.has_value = false;
      else state_->erase(shard, it);
      it = next;
    }
  }
}

CacheStats CachingDirectory::stats() const {
  CacheStats s;
  s.hits = state_->hits.load(std::memory_order_relaxed);
  s.misses = state_->misses.load(std::memory_order_relaxed);
  s.coalesced = state_->coalesced.load(std::memory_order_relaxed);
  s.stale = state_->stale.load(std::memory_order_relaxed);
  s.failures = state_->failures.load(std::memory_order_relaxed);
  s.evictions = state_->evictions.load(std::memory_order_relaxed);
  s.entries = state_->entries.load(std::memory_order_relaxed);
  return s;
}

}  // namespace isthmus::director
