#pragma once
// What one client address may hold open before it logs in
// (limits.max_preauth_per_address), counted over all workers. A session
// takes a slot once it knows who the client is (after a PROXY header; a
// trusted proxy's connection only once it names the client behind it) and
// gives it back when it logs in or ends. Logged-in sessions hold none.
// Kept across reloads, like the auth guard. See docs/tls-and-trust.md.

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace isthmus::proxy {

class PreloginLimiter {
 public:
  // Takes a slot for `key` (an AuthGuard::address_key); false when it holds
  // `cap` already. A cap of 0 means no cap.
  bool acquire(const std::string& key, std::size_t cap);
  void release(const std::string& key);
  // Slots `key` holds now (tests, the admin API).
  std::size_t held(const std::string& key) const;

 private:
  struct Shard {
    mutable std::mutex mutex;
    std::unordered_map<std::string, std::uint32_t> counts;  // only keys holding slots
  };
  Shard& shard_of(const std::string& key) const;
  mutable std::array<Shard, 16> shards_;
};

// One session's slot, given back when it goes.
class PreloginSlot {
 public:
  PreloginSlot() = default;
  PreloginSlot(std::shared_ptr<PreloginLimiter> limiter, std::string key)
      : limiter_(std::move(limiter)), key_(std::move(key)) {}
  PreloginSlot(PreloginSlot&& other) noexcept { *this = std::move(other); }
  PreloginSlot& operator=(PreloginSlot&& other) noexcept {
    if (this != &other) {
      release();
      limiter_ = std::move(other.limiter_);
      key_ = std::move(other.key_);
      other.limiter_.reset();
    }
    return *this;
  }
  PreloginSlot(const PreloginSlot&) = delete;
  PreloginSlot& operator=(const PreloginSlot&) = delete;
  ~PreloginSlot() { release(); }
  void release() {
    if (limiter_) limiter_->release(key_);
    limiter_.reset();
  }
  bool held() const { return limiter_ != nullptr; }

 private:
  std::shared_ptr<PreloginLimiter> limiter_;
  std::string key_;
};

// The connection limit in force: limits.max_connections, or (0) what the
// descriptor limit allows: two descriptors per connection (client and
// node) and a reserve for directories, health checks, spool files and the
// admin API.
std::size_t connection_limit(std::size_t configured);

}  // namespace isthmus::proxy
