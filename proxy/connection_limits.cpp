#include "proxy/connection_limits.hpp"

#include <algorithm>
#include <functional>

#include <sys/resource.h>

namespace isthmus::proxy {

PreloginLimiter::Shard& PreloginLimiter::shard_of(const std::string& key) const {
  return shards_[std::hash<std::string>{}(key) % shards_.size()];
}

bool PreloginLimiter::acquire(const std::string& key, std::size_t cap) {
  auto& shard = shard_of(key);
  std::lock_guard lock(shard.mutex);
  auto& count = shard.counts[key];
  if (cap != 0 && count >= cap) {
    if (count == 0) shard.counts.erase(key);
    return false;
  }
  ++count;
  return true;
}

void PreloginLimiter::release(const std::string& key) {
  auto& shard = shard_of(key);
  std::lock_guard lock(shard.mutex);
  auto it = shard.counts.find(key);
  if (it == shard.counts.end()) return;
  if (--it->second == 0) shard.counts.erase(it);
}

std::size_t PreloginLimiter::held(const std::string& key) const {
  auto& shard = shard_of(key);
  std::lock_guard lock(shard.mutex);
  auto it = shard.counts.find(key);
  return it == shard.counts.end() ? 0 : it->second;
}

std::size_t connection_limit(std::size_t configured) {
  if (configured != 0) return configured;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY)
    return 100000;
  constexpr rlim_t kReserve = 64;
  const rlim_t usable = limit.rlim_cur > 2 * kReserve ? limit.rlim_cur - kReserve : limit.rlim_cur / 2;
  return std::max<std::size_t>(8, static_cast<std::size_t>(usable / 2));
}

}  // namespace isthmus::proxy
