#include "director/auth_guard.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace isthmus::director {

ThrottleSettings ThrottleSettings::from(const config::Config& config) {
  ThrottleSettings s;
  s.base = config.timeouts.auth_failure_delay;
  s.max_delay = std::max<Clock::duration>(config.auth.max_failure_delay, s.base);
  s.half_life = config.auth.failure_half_life;
  s.max_wait = config.auth.max_throttle_wait;
  s.known_good_ttl = config.auth.known_good_ttl;
  s.ipv6_prefix = config.auth.ipv6_prefix;
  return s;
}

namespace {

constexpr std::size_t kWays = 4;
constexpr std::size_t kLocks = 64;

// The penalty for a weight of failures: none below one half, then `base`
// doubled per further failure, capped.
Clock::duration penalty(double score, const ThrottleSettings& s) {
  if (score < 0.5 || s.base <= Clock::duration::zero()) return Clock::duration::zero();
  const auto n = static_cast<int>(std::lround(std::max(1.0, score)));
  auto delay = s.base;
  for (int i = 1; i < n && delay < s.max_delay; ++i) delay *= 2;
  return std::min(delay, s.max_delay);
}

Clock::time_point at(Clock::rep ticks) { return Clock::time_point(Clock::duration(ticks)); }

}  // namespace

// -- the penalty lanes ----------------------------------------------------------

class AuthGuard::PenaltyTable {
 public:
  explicit PenaltyTable(std::size_t entries) : sets_((entries + kWays - 1) / kWays) {}

  // Claims the next moment this lane allows a check of `key`, not before
  // `floor`: the moment, or nullopt when it lies past `latest`. A key with
  // no weight (never failed, or forgotten) starts at `floor` and reserves
  // nothing.
  std::optional<Clock::time_point> claim(std::uint64_t key, Clock::time_point floor,
                                         Clock::time_point latest, Clock::time_point now,
                                         const ThrottleSettings& s) {
    const std::size_t index = key % sets_.size();
    std::lock_guard lock(locks_[index % kLocks]);
    Slot* slot = find(sets_[index], key);
    if (!slot) return floor;
    const auto delay = penalty(decayed(*slot, now, s), s);
    if (delay == Clock::duration::zero()) return floor;
    const auto start = std::max(floor, at(slot->next_free));
    if (start > latest) return std::nullopt;
    slot->next_free = (start + delay).time_since_epoch().count();
    return start;
  }

  void fail(std::uint64_t key, Clock::time_point now, const ThrottleSettings& s) {
    const std::size_t index = key % sets_.size();
    std::lock_guard lock(locks_[index % kLocks]);
    Set& set = sets_[index];
    Slot* slot = find(set, key);
    if (!slot) {
      // An empty way, else the one whose failures weigh least now.
      slot = &set[0];
      double lightest = 1e300;
      for (Slot& candidate : set) {
        if (candidate.key == 0) {
          slot = &candidate;
          break;
        }
        const double weight = decayed(candidate, now, s);
        if (weight < lightest) {
          lightest = weight;
          slot = &candidate;
        }
      }
      if (slot->key == 0) used_.fetch_add(1, std::memory_order_relaxed);
      *slot = Slot{key, 0.0F, now.time_since_epoch().count(), 0};
    }
    const double score = decayed(*slot, now, s) + 1.0;
    slot->score = static_cast<float>(std::min(score, 64.0));
    slot->updated = now.time_since_epoch().count();
    const auto free = now + penalty(score, s);
    slot->next_free = std::max(slot->next_free, free.time_since_epoch().count());
  }

  std::size_t used() const { return used_.load(std::memory_order_relaxed); }
  std::size_t capacity() const { return sets_.size() * kWays; }

 private:
  struct Slot {
    std::uint64_t key = 0;  // 0: empty
    float score = 0;        // failures, weighed at `updated`
    Clock::rep updated = 0;
    Clock::rep next_free = 0;  // the earliest next check
  };
  using Set = std::array<Slot, kWays>;

  static Slot* find(Set& set, std::uint64_t key) {
    for (Slot& slot : set)
      if (slot.key == key) return &slot;
    return nullptr;
  }
  static double decayed(const Slot& slot, Clock::time_point now, const ThrottleSettings& s) {
    const auto age = now - at(slot.updated);
    if (age <= Clock::duration::zero() || s.half_life <= Clock::duration::zero())
      return slot.score;
    const double halves = std::chrono::duration<double>(age) /
                          std::chrono::duration<double>(s.half_life);
    return slot.score * std::exp2(-halves);
  }

  std::vector<Set> sets_;
  std::array<std::mutex, kLocks> locks_;
  std::atomic<std::size_t> used_{0};
};

class AuthGuard::ExpiryTable {
 public:
  explicit ExpiryTable(std::size_t entries) : sets_((entries + kWays - 1) / kWays) {}

  bool contains(std::uint64_t key, Clock::time_point now) {
    const std::size_t index = key % sets_.size();
    std::lock_guard lock(locks_[index % kLocks]);
    for (const Slot& slot : sets_[index])
      if (slot.key == key) return now < at(slot.expires);
    return false;
  }

  void insert(std::uint64_t key, Clock::time_point expires) {
    const std::size_t index = key % sets_.size();
    std::lock_guard lock(locks_[index % kLocks]);
    Set& set = sets_[index];
    Slot* chosen = nullptr;
    for (Slot& slot : set)
      if (slot.key == key) chosen = &slot;
    if (!chosen) {
      // An empty way, else the one that expires first.
      chosen = &set[0];
      for (Slot& slot : set) {
        if (slot.key == 0) {
          chosen = &slot;
          break;
        }
        if (slot.expires < chosen->expires) chosen = &slot;
      }
      if (chosen->key == 0) used_.fetch_add(1, std::memory_order_relaxed);
    }
    *chosen = Slot{key, expires.time_since_epoch().count()};
  }

  std::size_t used() const { return used_.load(std::memory_order_relaxed); }

 private:
  struct Slot {
    std::uint64_t key = 0;
    Clock::rep expires = 0;
  };
  using Set = std::array<Slot, kWays>;
  std::vector<Set> sets_;
  std::array<std::mutex, kLocks> locks_;
  std::atomic<std::size_t> used_{0};
};

// -- the guard ----------------------------------------------------------------

AuthGuard::AuthGuard(std::size_t entries)
    : addresses_(std::make_unique<PenaltyTable>(std::max<std::size_t>(entries, kWays))),
      users_(std::make_unique<PenaltyTable>(std::max<std::size_t>(entries, kWays))),
      known_good_(std::make_unique<ExpiryTable>(std::max<std::size_t>(entries, kWays))),
      familiar_(std::make_unique<ExpiryTable>(std::max<std::size_t>(entries, kWays))) {
  if (RAND_bytes(key_.data(), static_cast<int>(key_.size())) != 1)
    throw std::runtime_error("no randomness for the authentication cache key");
}

AuthGuard::~AuthGuard() = default;

std::string AuthGuard::digest(std::string_view a, std::string_view b, std::string_view c) const {
  std::string message(a);
  message.push_back('\0');
  message.append(b);
  message.push_back('\0');
  message.append(c);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), out, &length);
  OPENSSL_cleanse(message.data(), message.size());
  return std::string(reinterpret_cast<const char*>(out), length);
}

std::uint64_t AuthGuard::key64(std::string_view kind, std::string_view a,
                               std::string_view b) const {
  auto d = digest(kind, a, b);
  std::uint64_t key = 0;
  std::memcpy(&key, d.data(), sizeof key);
  return key == 0 ? 1 : key;  // 0 marks an empty slot
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
  keep_bounded(shard.entries, kMaxVerdicts / kShards,
               [now](const Verdict& v) { return now >= v.expires; });
  shard.entries[key] = Verdict{verdict, now + ttl};
}

std::string AuthGuard::address_key(const boost::asio::ip::address& address, unsigned ipv6_prefix) {
  if (address.is_v4()) return address.to_string();
  auto v6 = address.to_v6();
  if (v6.is_v4_mapped())
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, v6).to_string();
  auto bytes = v6.to_bytes();
  const unsigned prefix = std::min(ipv6_prefix, 128U);
  for (unsigned bit = prefix; bit < 128; ++bit)
    bytes[bit / 8] = static_cast<unsigned char>(bytes[bit / 8] & ~(0x80U >> (bit % 8)));
  return boost::asio::ip::address_v6(bytes).to_string() + "/" + std::to_string(prefix);
}

AuthGuard::Keys AuthGuard::keys(std::string_view address, std::string_view user,
                                std::string_view password) const {
  Keys k;
  k.address = key64("address", address);
  k.user = key64("user", user);
  k.credentials = key64("good", user, password);
  k.familiar = key64("familiar", user, address);
  return k;
}

Admission AuthGuard::admit(const Keys& keys, Clock::time_point now,
                           const ThrottleSettings& settings) {
  Admission admission;
  admission.start = now;
  admission.known_good = known_good_->contains(keys.credentials, now);
  if (admission.known_good) {
    exempt_.fetch_add(1, std::memory_order_relaxed);
    return admission;
  }
  admission.familiar = familiar_->contains(keys.familiar, now);
  const auto latest = now + settings.max_wait;
  auto from_address = addresses_->claim(keys.address, now, latest, now, settings);
  if (!from_address) {
    admission.refused = true;
    refused_.fetch_add(1, std::memory_order_relaxed);
    return admission;
  }
  admission.address_wait = *from_address - now;
  admission.start = *from_address;
  if (!admission.familiar) {
    auto from_user = users_->claim(keys.user, admission.start, latest, now, settings);
    if (!from_user) {
      admission.refused = true;
      refused_.fetch_add(1, std::memory_order_relaxed);
      return admission;
    }
    admission.user_wait = *from_user - admission.start;
    admission.start = *from_user;
  }
  if (admission.address_wait > Clock::duration::zero())
    delayed_address_.fetch_add(1, std::memory_order_relaxed);
  if (admission.user_wait > Clock::duration::zero())
    delayed_user_.fetch_add(1, std::memory_order_relaxed);
  const auto waited = admission.start - now;
  if (waited > Clock::duration::zero())
    wait_micros_.fetch_add(
        static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(waited).count()),
        std::memory_order_relaxed);
  return admission;
}

void AuthGuard::failed(const Keys& keys, Clock::time_point now,
                       const ThrottleSettings& settings) {
  failures_.fetch_add(1, std::memory_order_relaxed);
  addresses_->fail(keys.address, now, settings);
  users_->fail(keys.user, now, settings);
}

void AuthGuard::succeeded(const Keys& keys, Clock::time_point now,
                          const ThrottleSettings& settings) {
  if (settings.known_good_ttl <= Clock::duration::zero()) return;
  const auto expires = now + settings.known_good_ttl;
  known_good_->insert(keys.credentials, expires);
  familiar_->insert(keys.familiar, expires);
}

ThrottleStats AuthGuard::stats() const {
  ThrottleStats s;
  s.delayed_address = delayed_address_.load(std::memory_order_relaxed);
  s.delayed_user = delayed_user_.load(std::memory_order_relaxed);
  s.refused = refused_.load(std::memory_order_relaxed);
  s.failures = failures_.load(std::memory_order_relaxed);
  s.wait_micros = wait_micros_.load(std::memory_order_relaxed);
  s.exempt = exempt_.load(std::memory_order_relaxed);
  s.address_entries = addresses_->used();
  s.user_entries = users_->used();
  s.known_good_entries = known_good_->used();
  s.capacity = addresses_->capacity();
  return s;
}

}  // namespace isthmus::director
