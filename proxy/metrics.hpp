#pragma once
// Counters the sessions keep for GET /metrics (admin/metrics_text.cpp):
// fixed arrays of relaxed atomics indexed by small enums, so counting on
// the hot path is one atomic add and the label sets stay bounded (no
// per-user labels). Per-node and per-island figures are not here: they are
// read from the topology (NodeState, IslandRole) when scraped. Kept across
// reloads, like the auth guard.

#include "common/deadline.hpp"
#include "common/failure.hpp"
#include "config/config.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace isthmus::proxy {

constexpr std::size_t kProtocols = config::kProtocolCount;
constexpr std::size_t kFailures = static_cast<std::size_t>(Failure::shutdown) + 1;
// Login latency buckets (seconds), Prometheus' "le" bounds; +Inf implied.
constexpr std::array<double, 11> kLoginBuckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                               0.5,   1.0,  2.5,   5.0,  10.0};

// An LMTP recipient's or message's end, by its reply class.
enum class LmtpResult : std::uint8_t { delivered, temporary, permanent };
constexpr std::size_t kLmtpResults = 3;

// Connections closed by a limit (docs/tls-and-trust.md).
enum class ConnectionLimit : std::uint8_t {
  per_address,  // the address held limits.max_preauth_per_address already
  evicted,      // an old pre-login connection closed to admit a new one
  at_limit,     // a new connection closed: at the limit, nothing to evict
};
constexpr std::size_t kConnectionLimits = 3;

template <typename Array>
auto& protocol_slot(Array& array, config::Protocol protocol) {
  return array[static_cast<std::size_t>(protocol)];
}

class Metrics {
 public:
  void session_started(config::Protocol protocol) {
    protocol_slot(sessions_total_, protocol).fetch_add(1, std::memory_order_relaxed);
    protocol_slot(sessions_active_, protocol).fetch_add(1, std::memory_order_relaxed);
  }
  void session_ended(config::Protocol protocol, std::uint64_t bytes_in, std::uint64_t bytes_out) {
    protocol_slot(sessions_active_, protocol).fetch_sub(1, std::memory_order_relaxed);
    protocol_slot(bytes_in_, protocol).fetch_add(bytes_in, std::memory_order_relaxed);
    protocol_slot(bytes_out_, protocol).fetch_add(bytes_out, std::memory_order_relaxed);
  }
  void login(config::Protocol protocol, Failure result, Clock::duration took);
  void lmtp_recipients(LmtpResult result, std::uint64_t count) {
    if (count == 0) return;
    lmtp_recipients_[static_cast<std::size_t>(result)].fetch_add(count,
                                                                 std::memory_order_relaxed);
  }
  void connection_limited(ConnectionLimit reason) {
    limited_[static_cast<std::size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
  }
  void lmtp_message(LmtpResult result) {
    lmtp_messages_[static_cast<std::size_t>(result)].fetch_add(1, std::memory_order_relaxed);
  }

  // The families above in Prometheus' text format (# HELP, # TYPE, samples).
  void render(std::string& out) const;

 private:
  using Counter = std::atomic<std::uint64_t>;
  std::array<Counter, kProtocols> sessions_total_{};
  std::array<std::atomic<std::int64_t>, kProtocols> sessions_active_{};
  std::array<Counter, kProtocols> bytes_in_{};   // from clients
  std::array<Counter, kProtocols> bytes_out_{};  // to clients
  std::array<std::array<Counter, kFailures>, kProtocols> logins_{};
  // Cumulative per bucket is computed when rendering; here one count per
  // bucket (index kLoginBuckets.size(): above the last bound).
  std::array<std::array<Counter, kLoginBuckets.size() + 1>, kProtocols> login_buckets_{};
  std::array<Counter, kProtocols> login_micros_{};  // sum, in microseconds
  std::array<Counter, kLmtpResults> lmtp_recipients_{};
  std::array<Counter, kLmtpResults> lmtp_messages_{};
  std::array<Counter, kConnectionLimits> limited_{};
};

// Text helpers for the exposition format (admin/metrics_text.cpp uses them too).
std::string prometheus_escape(std::string_view label_value);
// "# HELP name help" and "# TYPE name type", once per family.
void write_family_header(std::string& out, std::string_view name, std::string_view type,
                         std::string_view help);

}  // namespace isthmus::proxy
