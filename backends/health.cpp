#include "backends/health.hpp"

#include "backends/imap_reply.hpp"
#include "backends/smtp_reply.hpp"
#include "common/log.hpp"
#include "common/strings.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace isthmus::backends {

std::string_view name_of(HealthState state) {
  switch (state) {
    case HealthState::unknown: return "unknown";
    case HealthState::up: return "up";
    case HealthState::down: return "down";
  }
  return "?";
}

Clock::duration jittered(Clock::duration interval, double unit) {
  if (!(unit >= 0.0)) unit = 0.0;  // also NaN
  unit = std::min(unit, 1.0);
  const double factor = 1.0 - kHealthJitter + 2.0 * kHealthJitter * unit;
  return std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double, Clock::period>(static_cast<double>(interval.count()) * factor));
}

NodeHealth::NodeHealth(std::string node, config::Health settings, std::string protocol)
    : node_(std::move(node)), protocol_(std::move(protocol)), settings_(settings) {}

std::optional<std::string> NodeHealth::record_failure(std::string_view reason,
                                                      Clock::time_point now) {
  successes_ = 0;
  ++failures_;
  last_failure_ = std::string(reason);
  if (state_ == HealthState::down || failures_ < settings_.fall) return std::nullopt;
  state_ = HealthState::down;
  since_ = now;
  return fmt::format("node {} down: {} failed check{}: {}", node_, failures_,
                     failures_ == 1 ? "" : "s", reason);
}

std::optional<std::string> NodeHealth::record_success(Clock::time_point now) {
  failures_ = 0;
  ++successes_;
  switch (state_) {
    case HealthState::unknown:  // never down: no announcement
      state_ = HealthState::up;
      since_ = now;
      return std::nullopt;
    case HealthState::up: return std::nullopt;
    case HealthState::down: break;
  }
  if (successes_ < settings_.rise) return std::nullopt;
  const auto down_for = std::chrono::duration_cast<std::chrono::milliseconds>(now - since_);
  state_ = HealthState::up;
  since_ = now;
  return fmt::format("node {} up again after {} good check{}{} (down for {:.1f}s)", node_,
                     successes_, successes_ == 1 ? "" : "s",
                     protocol_.empty() ? "" : " of " + protocol_,
                     static_cast<double>(down_for.count()) / 1000.0);
}

Clock::time_point NodeHealth::next_check(Clock::time_point now, double unit) const {
  const auto interval = state_ == HealthState::down ? settings_.down_interval : settings_.interval;
  return now + jittered(interval, unit);
}

bool greeting_continues(config::Protocol protocol, std::string_view line) {
  // A ManageSieve capability line starts with its name as a string.
  return protocol == config::Protocol::managesieve && !line.empty() &&
         (line.front() == '"' || line.front() == '{');
}

std::optional<std::string> greeting_problem(config::Protocol protocol, std::string_view line) {
  switch (protocol) {
    case config::Protocol::imap: {
      auto reply = parse_imap_reply(line);
      if (reply.kind == ImapReply::Kind::untagged && reply.status == ImapReply::Status::ok)
        return std::nullopt;
      if (reply.kind == ImapReply::Kind::untagged && reply.status == ImapReply::Status::bye)
        return "greeting was BYE: " + sanitize(reply.text, 100);
      return "unexpected greeting: " + sanitize(line, 100);
    }
    case config::Protocol::pop3:
      if (line.substr(0, 3) == "+OK" && (line.size() == 3 || line[3] == ' '))
        return std::nullopt;
      if (istarts_with(line, "-ERR")) return "greeting was -ERR: " + sanitize(line.substr(4), 100);
      return "unexpected greeting: " + sanitize(line, 100);
    case config::Protocol::managesieve:
      if (greeting_continues(protocol, line)) return std::nullopt;  // a capability line
      if (line == "OK" || line.substr(0, 3) == "OK " ) return std::nullopt;
      if (istarts_with(line, "BYE")) return "greeting was BYE: " + sanitize(line.substr(3), 100);
      return "unexpected greeting: " + sanitize(line, 100);
    case config::Protocol::lmtp: {
      auto reply = parse_reply_line(line);
      if (reply && reply->code == 220) return std::nullopt;
      if (reply && reply->code >= 400 && reply->code < 600)
        return fmt::format("greeting was {}: {}", reply->code, sanitize(reply->text, 100));
      return "unexpected greeting: " + sanitize(line, 100);
    }
  }
  return "unknown protocol";
}

}  // namespace isthmus::backends
