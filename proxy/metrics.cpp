#include "proxy/metrics.hpp"

#include <fmt/format.h>

namespace isthmus::proxy {

namespace {

constexpr std::array<config::Protocol, kProtocols> kAll{
    config::Protocol::imap, config::Protocol::pop3, config::Protocol::lmtp,
    config::Protocol::managesieve};
// The protocols with logins (LMTP has none).
constexpr std::array<config::Protocol, 3> kLogins{
    config::Protocol::imap, config::Protocol::pop3, config::Protocol::managesieve};
constexpr std::array<std::string_view, kLmtpResults> kLmtpNames{"delivered", "temporary",
                                                                "permanent"};

}  // namespace

void write_family_header(std::string& out, std::string_view name, std::string_view type,
                         std::string_view help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

std::string prometheus_escape(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

void Metrics::login(config::Protocol protocol, Failure result, Clock::duration took) {
  const auto p = static_cast<std::size_t>(protocol);
  logins_[p][static_cast<std::size_t>(result)].fetch_add(1, std::memory_order_relaxed);
  const double seconds = std::chrono::duration<double>(took).count();
  std::size_t bucket = 0;
  while (bucket < kLoginBuckets.size() && seconds > kLoginBuckets[bucket]) ++bucket;
  login_buckets_[p][bucket].fetch_add(1, std::memory_order_relaxed);
  login_micros_[p].fetch_add(
      static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(took).count()),
      std::memory_order_relaxed);
}

void Metrics::render(std::string& out) const {
  auto get = [](const auto& counter) { return counter.load(std::memory_order_relaxed); };
  write_family_header(out, "isthmus_sessions_active", "gauge",
                      "Client sessions open now, by protocol.");
  for (auto p : kAll)
    out += fmt::format("isthmus_sessions_active{{protocol=\"{}\"}} {}\n", config::name_of(p),
                       get(protocol_slot(sessions_active_, p)));
  write_family_header(out, "isthmus_sessions_total", "counter",
                      "Client sessions accepted, by protocol.");
  for (auto p : kAll)
    out += fmt::format("isthmus_sessions_total{{protocol=\"{}\"}} {}\n", config::name_of(p),
                       get(protocol_slot(sessions_total_, p)));
  write_family_header(out, "isthmus_relayed_bytes_total", "counter",
         "Bytes of ended sessions, from and to clients, by protocol.");
  for (auto p : kAll) {
    out += fmt::format("isthmus_relayed_bytes_total{{protocol=\"{}\",direction=\"in\"}} {}\n",
                       config::name_of(p), get(protocol_slot(bytes_in_, p)));
    out += fmt::format("isthmus_relayed_bytes_total{{protocol=\"{}\",direction=\"out\"}} {}\n",
                       config::name_of(p), get(protocol_slot(bytes_out_, p)));
  }
  write_family_header(out, "isthmus_connections_limited_total", "counter",
         "Client connections closed by a limit: per_address (the address held "
         "limits.max_preauth_per_address not-yet-logged-in connections), evicted (the oldest "
         "connection not yet logged in, closed to admit a new one at the connection limit), "
         "at_limit (a new connection closed: at the limit with nothing to evict).");
  for (auto [reason, index] : {std::pair{"per_address", ConnectionLimit::per_address},
                               {"evicted", ConnectionLimit::evicted},
                               {"at_limit", ConnectionLimit::at_limit}})
    out += fmt::format("isthmus_connections_limited_total{{reason=\"{}\"}} {}\n", reason,
                       get(limited_[static_cast<std::size_t>(index)]));
  write_family_header(out, "isthmus_logins_total", "counter",
         "IMAP, POP3 and ManageSieve logins by result (ok, or the failure's name).");
  for (auto p : kLogins) {
    for (std::size_t f = 0; f < kFailures; ++f) {
      auto n = get(logins_[static_cast<std::size_t>(p)][f]);
      auto failure = static_cast<Failure>(f);
      // Every result that can happen at login, zeros included, so rates work.
      if (n == 0 && failure != Failure::none && failure != Failure::auth_failed) continue;
      out += fmt::format("isthmus_logins_total{{protocol=\"{}\",result=\"{}\"}} {}\n",
                         config::name_of(p), failure == Failure::none ? "ok" : name_of(failure),
                         n);
    }
  }
  write_family_header(out, "isthmus_login_duration_seconds", "histogram",
         "From the login command to the answer, by protocol.");
  for (auto p : kLogins) {
    const auto i = static_cast<std::size_t>(p);
    std::uint64_t cumulative = 0;
    for (std::size_t b = 0; b < kLoginBuckets.size(); ++b) {
      cumulative += get(login_buckets_[i][b]);
      out += fmt::format("isthmus_login_duration_seconds_bucket{{protocol=\"{}\",le=\"{}\"}} {}\n",
                         config::name_of(p), kLoginBuckets[b], cumulative);
    }
    cumulative += get(login_buckets_[i][kLoginBuckets.size()]);
    out += fmt::format("isthmus_login_duration_seconds_bucket{{protocol=\"{}\",le=\"+Inf\"}} {}\n",
                       config::name_of(p), cumulative);
    out += fmt::format("isthmus_login_duration_seconds_sum{{protocol=\"{}\"}} {:.6f}\n",
                       config::name_of(p), static_cast<double>(get(login_micros_[i])) / 1e6);
    out += fmt::format("isthmus_login_duration_seconds_count{{protocol=\"{}\"}} {}\n",
                       config::name_of(p), cumulative);
  }
  write_family_header(out, "isthmus_lmtp_recipients_total", "counter",
         "LMTP recipients by final answer: delivered (2xx), temporary (4xx), permanent (5xx).");
  for (std::size_t r = 0; r < kLmtpResults; ++r)
    out += fmt::format("isthmus_lmtp_recipients_total{{result=\"{}\"}} {}\n", kLmtpNames[r],
                       get(lmtp_recipients_[r]));
  write_family_header(out, "isthmus_lmtp_messages_total", "counter",
         "LMTP messages (DATA) by outcome: delivered to every accepted recipient, or not.");
  for (std::size_t r = 0; r < kLmtpResults; ++r)
    out += fmt::format("isthmus_lmtp_messages_total{{result=\"{}\"}} {}\n", kLmtpNames[r],
                       get(lmtp_messages_[r]));
}

}  // namespace isthmus::proxy
