#include "director/auth_guard.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <stdexcept>

namespace isthmus::director {

AuthGuard::AuthGuard() {
  if (RAND_bytes(key_.data(), static_cast<int>(key_.size())) != 1)
    throw std::runtime_error("no randomness for the authentication cache key");
}

std::string AuthGuard::digest(std::string_view user, std::string_view stored,
                              std::string_view password) const {
  std::string message(user);
  message.push_back('\0');
  message.append(stored);
  message.push_back('\0');
  message.append(password);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), out, &length);
  OPENSSL_cleanse(message.data(), message.size());
  return std::string(reinterpret_cast<const char*>(out), length);
}

namespace {

template <typename Map, typename Expired>
void keep_bounded(Map& entries, std::size_t bound, Expired expired) {
  if (entries.size() < bound) return;
  std::erase_if(entries, [&](const auto& item) { return expired(item.second); });
  if (entries.size() >= bound) entries.clear();  // under attack: forget, don't grow
}

}  // namespace

std::optional<PasswordCheck> AuthGuard::remembered(std::string_view user,
                                                   std::string_view stored,
                                                   std::string_view password,
                                                   Clock::time_point now) {
  auto key = digest(user, stored, password);
  auto& shard = verdicts_[std::hash<std::string>{}(key) % kShards];
  std::lock_guard lock(shard.mutex);
  auto it = shard.entries.find(key);
  if (it == shard.entries.end()) return std::nullopt;
  if (now >= it->second.expires) {
    shard.entries.erase(it);
    return std::nullopt;
  }
  return it->second.verdict;
}

void AuthGuard::remember(std::string_view user, std::string_view stored,
                         std::string_view password, PasswordCheck verdict, Clock::duration ttl,
                         Clock::time_point now) {
  if (verdict != PasswordCheck::accepted && verdict != PasswordCheck::rejected) return;
  if (ttl <= Clock::duration::zero()) return;
  auto key = digest(user, stored, password);
  auto& shard = verdicts_[std::hash<std::string>{}(key) % kShards];
  std::lock_guard lock(shard.mutex);
  keep_bounded(shard.entries, kMaxEntries / kShards,
               [now](const Verdict& v) { return now >= v.expires; });
  shard.entries[key] = Verdict{verdict, now + ttl};
}

Clock::duration AuthGuard::failed_login(std::string_view address, Clock::duration base,
                                        Clock::duration max, Clock::time_point now) {
  std::string key(address);
  auto& shard = failures_[std::hash<std::string>{}(key) % kShards];
  unsigned count = 0;
  {
    std::lock_guard lock(shard.mutex);
    keep_bounded(shard.entries, kMaxEntries / kShards,
                 [now](const Failures& f) { return now - f.last >= kQuietReset; });
    auto& record = shard.entries[key];
    if (record.count > 0 && now - record.last >= kQuietReset) record.count = 0;
    record.count = std::min(record.count + 1, 30U);
    record.last = now;
    count = record.count;
  }
  auto delay = base;
  for (unsigned i = 1; i < count && delay < max; ++i) delay *= 2;
  return std::min(delay, std::max(base, max));
}

}  // namespace isthmus::director
