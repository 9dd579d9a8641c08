#pragma once
// What every protocol session shares: the client connection (with the PROXY
// protocol header and implicit TLS handled before the protocol speaks), the
// runtime snapshot it started with, who the client is and whether it is
// trusted, its place in the worker's registry (so shutdown and, later, kicks
// can reach it), and the one log line at its end, written when the session
// object goes away. A session lives in its coroutine's frame until login; a
// relayed session is then handed to the relay (proxy/relay.hpp), which owns
// it until it ends.

#include "backends/topology.hpp"
#include "common/deadline.hpp"
#include "common/sasl.hpp"
#include "common/transport.hpp"
#include "config/config.hpp"
#include "proxy/connection_limits.hpp"
#include "proxy/login_proxy.hpp"
#include "proxy/runtime.hpp"

#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>

namespace isthmus::proxy {

class SessionRegistry;

enum class Phase : std::uint8_t { preauth, login, relay };

enum class StopKind : std::uint8_t {
  none,
  shutdown,  // the instance is stopping: pre-auth sessions say BYE and go
  kick,      // close now, for a reason (an operator's kick, a node that lost its role)
  force,     // close now (grace period over)
};

// Facts for the session-end log line.
struct SessionRecord {
  std::string id;
  config::Protocol protocol = config::Protocol::imap;
  std::string client;           // the client's address (from the PROXY header if any)
  std::string user;
  std::string island;
  std::string node;
  std::string tls;              // "-" or "TLSv1.3" for the client side
  std::string via;              // what a load balancer's PROXY v2 TLVs said (escaped), or 
  std::uint64_t bytes_in = 0;   // received from the client
  std::uint64_t bytes_out = 0;  // sent to the client
  Clock::time_point started = Clock::now();
  std::string ended;            // how it ended, in words
};

void log_session_end(const SessionRecord& record);

// "GET / HTTP/1.1" and the like: an HTTP request line (its CR optional).
bool is_http_request_line(std::string_view line);

// Who is on the other end, as far as Isthmus can tell.
struct ClientInfo {
  boost::asio::ip::tcp::endpoint remote;  // the client (the PROXY header's source)
  boost::asio::ip::tcp::endpoint local;   // what it connected to
  bool trusted = false;                   // in trusted_networks
};

class Session {
 public:
  Session(SessionRegistry& registry, boost::asio::ip::tcp::socket client,
          std::shared_ptr<const Runtime> runtime,
          std::shared_ptr<const config::Listener> listener);
  virtual ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  Phase phase() const { return phase_; }
  SessionRecord& record() { return record_; }
  Transport& client() { return client_; }
  Transport& node() { return *node_; }
  Clock::duration idle_timeout() const { return runtime_->config->timeouts.idle; }
  Clock::duration half_closed_timeout() const { return runtime_->config->timeouts.half_closed; }
  void set_ended(std::string how) {
    if (record_.ended.empty()) record_.ended = std::move(how);
  }

  // From the registry, on the session's worker thread. `why` (kick) ends up
  // in the session-end line.
  void request_stop(StopKind kind, std::string_view why = {});
  StopKind stop_requested() const { return stop_; }

 protected:
  // Before the protocol greets: the PROXY protocol header where the
  // listener takes one from this source, then the TLS handshake on an
  // implicit-TLS listener. False if the session must end (logged).
  boost::asio::awaitable<bool> begin();

  // On a PROXY-protocol listener, a source that is not allowed to send a
  // header must not send one: true (and logged) if the first bytes in in_
  // are one. Call before parsing the first command.
  bool untrusted_proxy_header();

  // Cross-protocol attacks (ALPACA): true (and logged) when the first line
  // of the stream (again after TLS starts) is an HTTP request, which is
  // then closed at once without an answer that could echo it. Call before
  // parsing each command.
  bool http_request_line();

  // STARTTLS/STLS after the protocol said OK: anything the client sent
  // after the command in the same packet is discarded, never executed
  // after the handshake (the CVE-2011-0411 class of injection).
  boost::asio::awaitable<bool> start_tls();

  // Whether the client may send a password now.
  bool plaintext_auth_allowed() const {
    return client_.is_tls() || listener_->allow_plaintext_auth || client_info_.trusted;
  }
  // How long after the command a failed login's answer goes out: always
  // the same, so the answer's timing does not tell a wrong password from an
  // unknown name. (Repeated failures are slowed before the check, by the
  // throttle in director/auth_guard.hpp, not here.)
  Clock::duration auth_failure_delay() const {
    return runtime_->config->timeouts.auth_failure_delay;
  }
  // The longest command line: limits.max_line, or longer where bearer
  // tokens (auth.oauth2.max_token, base64 and the SASL framing) must fit.
  std::size_t max_line() const {
    const auto& config = *runtime_->config;
    if (!config.auth.oauth2.enabled) return config.limits.max_line;
    return std::max(config.limits.max_line, (config.auth.oauth2.max_token + 512) * 4 / 3 + 64);
  }
  // Whether the client may use `mechanism` here (PLAIN always; the OAuth
  // ones where auth.oauth2 offers them). Like PLAIN, none before TLS
  // unless allowed (plaintext_auth_allowed).
  bool mechanism_offered(SaslMechanism mechanism) const {
    const auto& oauth = runtime_->config->auth.oauth2;
    switch (mechanism) {
      case SaslMechanism::plain: return true;
      case SaslMechanism::oauthbearer: return oauth.enabled && oauth.oauthbearer;
      case SaslMechanism::xoauth2: return oauth.enabled && oauth.xoauth2;
    }
    return false;
  }
  bool tls_available() const {
    return listener_->tls == config::TlsMode::starttls && !client_.is_tls() && runtime_->server_tls;
  }

  // Waits until `when`, or until the session is asked to stop (any kind;
  // then false). For waits that no socket would end: the throttle, the
  // failure delay.
  boost::asio::awaitable<bool> pause_until(Clock::time_point when);
  std::function<boost::asio::awaitable<bool>(Clock::time_point)> pauser() {
    return [this](Clock::time_point when) { return pause_until(when); };
  }

  // Reads more client bytes into in_, bounded by `deadline`.
  // `chunk`: how much at most (a message body is read in larger pieces).
  boost::asio::awaitable<boost::system::error_code> read_more(Deadline deadline,
                                                              std::size_t chunk = 4096);

  // Writes to the client, bounded by `deadline`; false if that failed.
  boost::asio::awaitable<bool> send(std::string_view text, Deadline deadline);

  // After a login: what the node sent past its answer goes to the client,
  // then what the client pipelined past its login command goes to the node,
  // in that order; both strings are released. False if either side failed.
  boost::asio::awaitable<bool> hand_over(std::string& to_client, std::string& to_node,
                                         Deadline deadline);

  // Takes this client's pre-login slot (limits.max_preauth_per_address):
  // false (logged, counted) when its address holds its share already; the
  // protocol then says so and ends. Connections from trusted networks take
  // none until they name the client behind them (IMAP ID from a trusted
  // proxy: call again after adopting it). A logged-in session gives its
  // slot back.
  bool take_prelogin_slot(bool forwarded = false);

  // What every protocol's login shares: `request` (protocol, name,
  // credentials, mechanism, ttl) completed with who the client is, the
  // island's node logged in to (log_in_through_island), the session record
  // and the login log line. On success the node connection and its lease
  // are the session's and the phase is relay; otherwise the phase is back
  // to preauth. The caller answers the client.
  boost::asio::awaitable<LoginOutcome> log_in_island(LoginRequest request,
                                                     const NodeLoginFn& node_login,
                                                     Deadline deadline);

  void set_phase(Phase phase) {
    phase_ = phase;
    if (phase == Phase::relay) prelogin_slot_.release();
  }

  SessionRegistry& registry_;
  Transport client_;
  std::optional<Transport> node_;
  backends::NodeLease lease_;  // counts this session on its node
  std::shared_ptr<const Runtime> runtime_;
  std::shared_ptr<const config::Listener> listener_;
  ClientInfo client_info_;
  SessionRecord record_;
  std::string in_;  // client bytes not yet parsed
  Deadline preauth_deadline_;
  PreloginSlot prelogin_slot_;

 private:
  Phase phase_ = Phase::preauth;
  StopKind stop_ = StopKind::none;
  bool proxy_checked_ = false;
  bool first_line_checked_ = false;
  std::unique_ptr<boost::asio::steady_timer> pause_;  // only while pausing
  std::list<Session*>::iterator registry_position_;
};

}  // namespace isthmus::proxy
