#include "proxy/session.hpp"

#include "common/log.hpp"
#include "common/net.hpp"
#include "common/session_id.hpp"
#include "director/auth_guard.hpp"
#include "proxy/proxy_protocol.hpp"
#include "proxy/session_registry.hpp"

#include <spdlog/spdlog.h>

namespace isthmus::proxy {

namespace {

// ALPN protocol IDs (IANA registry, RFC 7301) of the listeners that speak TLS.
const char* alpn_protocol(config::Protocol protocol) {
  switch (protocol) {
    case config::Protocol::imap: return "imap";
    case config::Protocol::pop3: return "pop3";
    case config::Protocol::lmtp: return nullptr;
    case config::Protocol::managesieve: return "managesieve";
  }
  return nullptr;
}

}  // namespace

bool is_http_request_line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  // METHOD SP request-target SP HTTP/d.d (RFC 9112 section 3); methods
  // are upper-case tokens.
  const auto first = line.find(' ');
  if (first == std::string_view::npos || first < 3 || first > 10) return false;
  for (char c : line.substr(0, first))
    if (c < 'A' || c > 'Z') return false;
  const auto last = line.rfind(' ');
  if (last == first) return false;
  const auto version = line.substr(last + 1);
  return version.size() == 8 && version.substr(0, 5) == "HTTP/" && version[5] >= '0' &&
         version[5] <= '9' && version[6] == '.' && version[7] >= '0' && version[7] <= '9';
}

void log_session_end(const SessionRecord& r) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - r.started);
  spdlog::info("session={} proto={} end client={} user={} island={} node={} tls={} in={} out={} "
               "duration={}.{:03}s ended=\"{}\"{}",
               r.id, config::name_of(r.protocol), r.client,
               r.user.empty() ? "-" : sanitize(r.user, 100), r.island.empty() ? "-" : r.island,
               r.node.empty() ? "-" : r.node, r.tls.empty() ? "-" : r.tls, r.bytes_in,
               r.bytes_out, ms.count() / 1000, ms.count() % 1000, r.ended,
               r.via.empty() ? "" : fmt::format(" via=\"{}\"", r.via));
}

Session::Session(SessionRegistry& registry, boost::asio::ip::tcp::socket client,
                 std::shared_ptr<const Runtime> runtime,
                 std::shared_ptr<const config::Listener> listener)
    : registry_(registry), client_(std::move(client)), runtime_(std::move(runtime)),
      listener_(std::move(listener)),
      preauth_deadline_(Deadline::after(runtime_->config->timeouts.preauth)) {
  record_.id = new_session_id();
  record_.protocol = listener_->protocol;
  boost::system::error_code ec;
  client_info_.remote = client_.socket().remote_endpoint(ec);
  client_info_.local = client_.socket().local_endpoint(ec);
  client_info_.trusted =
      any_contains(runtime_->config->trusted_networks, client_info_.remote.address());
  record_.client = format_endpoint(client_info_.remote);
  registry_position_ = registry_.add(this);
  if (runtime_->metrics) runtime_->metrics->session_started(record_.protocol);
  if (registry_.stopping() != StopKind::none) request_stop(registry_.stopping());
}

Session::~Session() {
  client_.close();
  if (node_) node_->close();
  lease_.release();
  if (record_.ended.empty()) record_.ended = "ended";
  log_session_end(record_);
  if (runtime_->metrics)
    runtime_->metrics->session_ended(record_.protocol, record_.bytes_in, record_.bytes_out);
  registry_.remove(registry_position_);
}

boost::asio::awaitable<bool> Session::begin() {
  const auto peer = client_info_.remote.address();
  if (!listener_->proxy_protocol.empty() && any_contains(listener_->proxy_protocol, peer)) {
    proxy_checked_ = true;
    // A balancer we trust: its header must come first, complete and valid,
    // within timeouts.proxy_header (a balancer sends it at once).
    const Deadline header_deadline =
        preauth_deadline_.within(runtime_->config->timeouts.proxy_header);
    for (;;) {
      ProxyParse parsed = parse_proxy_header(in_);
      if (parsed.status == ProxyParse::Status::ok) {
        record_.via = parsed.header.describe();
        if (parsed.header.has_addresses) {
          client_info_.remote = parsed.header.source;
          client_info_.local = parsed.header.destination;
          client_info_.trusted =
              any_contains(runtime_->config->trusted_networks, client_info_.remote.address());
          record_.client = format_endpoint(client_info_.remote);
        }
        in_.erase(0, parsed.consumed);
        break;
      }
      if (parsed.status == ProxyParse::Status::invalid) {
        spdlog::warn("session={} from {} (a PROXY protocol source): {}; closing", record_.id,
                     format_endpoint(client_info_.remote), parsed.error);
        set_ended("bad PROXY protocol header");
        co_return false;
      }
      auto ec = co_await read_more(header_deadline);
      if (ec) {
        set_ended(ec == boost::asio::error::timed_out ? "no PROXY protocol header in time"
                                                      : "client closed before login");
        co_return false;
      }
    }
  }
  if (listener_->tls == config::TlsMode::implicit) {
    auto ec = co_await client_.start_tls_as_server(*runtime_->server_tls, preauth_deadline_, in_,
                                                   alpn_protocol(record_.protocol));
    in_.clear();
    if (ec) {
      spdlog::info("session={} client={}: TLS handshake failed: {}", record_.id, record_.client,
                   ec == boost::asio::error::timed_out ? "timed out" : ec.message());
      set_ended("TLS handshake failed");
      co_return false;
    }
    record_.tls = client_.tls_description();
  }
  co_return true;
}

bool Session::untrusted_proxy_header() {
  if (proxy_checked_ || listener_->proxy_protocol.empty() || in_.empty()) return false;
  // Decide once enough has arrived to tell (the v2 signature is 12 bytes).
  if (in_.size() < 12 && in_.find('\n') == std::string::npos) return false;
  proxy_checked_ = true;
  if (!begins_with_proxy_signature(in_)) return false;
  spdlog::warn("session={} client={}: sent a PROXY protocol header but is not a configured PROXY "
               "source; closing",
               record_.id, record_.client);
  set_ended("PROXY header from an untrusted source");
  return true;
}

bool Session::take_prelogin_slot(bool forwarded) {
  const auto& config = *runtime_->config;
  if (!runtime_->prelogin || record_.protocol == config::Protocol::lmtp) return true;
  prelogin_slot_.release();
  if (client_info_.trusted && !forwarded) return true;
  const auto key = director::AuthGuard::address_key(unmapped(client_info_.remote.address()),
                                                    config.auth.ipv6_prefix);
  if (!runtime_->prelogin->acquire(key, config.limits.max_preauth_per_address)) {
    if (runtime_->metrics) runtime_->metrics->connection_limited(ConnectionLimit::per_address);
    set_ended(fmt::format("refused: {} connections not logged in from {} already "
                          "(limits.max_preauth_per_address)",
                          config.limits.max_preauth_per_address, key));
    return false;
  }
  prelogin_slot_ = PreloginSlot(runtime_->prelogin, key);
  return true;
}

bool Session::http_request_line() {
  if (first_line_checked_ || in_.empty()) return false;
  const auto lf = in_.find('\n');
  if (lf == std::string::npos) return false;  // decided when the line is complete
  first_line_checked_ = true;
  if (!is_http_request_line(std::string_view(in_).substr(0, lf))) return false;
  spdlog::warn("session={} client={}: the first line is an HTTP request (a browser led to a mail "
               "port: cross-protocol attack?); closing without an answer",
               record_.id, record_.client);
  set_ended("HTTP request on a mail port");
  return true;
}

boost::asio::awaitable<bool> Session::start_tls() {
  if (!in_.empty()) {
    spdlog::info("session={} client={}: discarded {} bytes sent after the TLS command before the "
                 "handshake",
                 record_.id, record_.client, in_.size());
    std::string().swap(in_);
  }
  auto ec = co_await client_.start_tls_as_server(*runtime_->server_tls, preauth_deadline_, {},
                                                 alpn_protocol(record_.protocol));
  if (ec) {
    spdlog::info("session={} client={}: TLS handshake failed: {}", record_.id, record_.client,
                 ec == boost::asio::error::timed_out ? "timed out" : ec.message());
    set_ended("TLS handshake failed");
    co_return false;
  }
  record_.tls = client_.tls_description();
  first_line_checked_ = false;  // a new stream: its first line is checked again
  co_return true;
}

boost::asio::awaitable<boost::system::error_code> Session::read_more(Deadline deadline,
                                                                     std::size_t chunk) {
  const std::size_t old = in_.size();
  in_.resize(old + chunk);
  auto [ec, n] = co_await client_.read_some(boost::asio::buffer(in_.data() + old, chunk), deadline);
  in_.resize(old + n);
  record_.bytes_in += n;
  co_return ec;
}

boost::asio::awaitable<bool> Session::pause_until(Clock::time_point when) {
  if (stop_ != StopKind::none) co_return false;
  if (when <= Clock::now()) co_return true;
  pause_ = std::make_unique<boost::asio::steady_timer>(client_.socket().get_executor(), when);
  auto [ec] = co_await pause_->async_wait(use_tuple);
  pause_.reset();
  co_return !ec && stop_ == StopKind::none;
}

void Session::request_stop(StopKind kind, std::string_view why) {
  if (kind <= stop_) return;
  stop_ = kind;
  if (pause_) pause_->cancel();
  if (kind == StopKind::kick || kind == StopKind::force) {
    set_ended(kind == StopKind::kick ? "closed: " + std::string(why) : "closed at shutdown");
    client_.close();
    if (node_) node_->close();
  } else if (phase_ == Phase::preauth) {
    // Wakes the pre-auth loop out of its read; it sees the request and says BYE.
    client_.cancel();
  }
}

boost::asio::awaitable<bool> Session::send(std::string_view text, Deadline deadline) {
  auto [ec, n] = co_await client_.write_all(boost::asio::buffer(text), deadline);
  record_.bytes_out += n;
  if (ec) set_ended(ec == boost::asio::error::timed_out ? "timed out writing to the client"
                                                        : "client connection lost");
  co_return !ec;
}

boost::asio::awaitable<bool> Session::hand_over(std::string& to_client, std::string& to_node,
                                                Deadline deadline) {
  bool ok = true;
  if (!to_client.empty()) ok = co_await send(to_client, deadline);
  if (ok && !to_node.empty()) {
    auto [ec, n] = co_await node_->write_all(boost::asio::buffer(to_node), deadline);
    if (ec) {
      set_ended("node connection lost");
      ok = false;
    }
  }
  // Assigning "" would keep the capacity; an idle session holds no buffers.
  std::string().swap(to_client);
  std::string().swap(to_node);
  co_return ok;
}

boost::asio::awaitable<LoginOutcome> Session::log_in_island(LoginRequest request,
                                                            const NodeLoginFn& node_login,
                                                            Deadline deadline) {
  set_phase(Phase::login);
  request.session_id = record_.id;
  request.client = record_.client;
  request.client_remote = client_info_.remote;
  request.client_local = client_info_.local;
  request.pause = pauser();
  const auto started = Clock::now();
  LoginOutcome outcome =
      co_await log_in_through_island(*runtime_, std::move(request), node_login, deadline);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
  record_.user = outcome.user;
  record_.island = outcome.island;
  record_.node = outcome.node;
  if (outcome.failure == Failure::none) {
    spdlog::info("session={} login ok user={} island={} node={} client={} in {}ms", record_.id,
                 sanitize(outcome.user, 100), outcome.island, outcome.node, record_.client, ms);
    node_.emplace(std::move(*outcome.node_connection));
    outcome.node_connection.reset();
    lease_ = std::move(outcome.lease);
    set_phase(Phase::relay);
    co_return outcome;
  }
  const auto& policy = policy_of(outcome.failure);
  spdlog::log(policy.log_level,
              "session={} login failed user={} island={} client={} in {}ms: {}: {}", record_.id,
              outcome.user.empty() ? "-" : sanitize(outcome.user, 100),
              outcome.island.empty() ? "-" : outcome.island, record_.client, ms,
              policy.description, outcome.detail);
  set_phase(Phase::preauth);
  co_return outcome;
}

}  // namespace isthmus::proxy
