#pragma once
// The shared login engine every protocol session uses: normalise the name,
// look up the island, try the island's nodes in the router's order (a node
// that refuses, times out or answers garbage is reported and skipped), and
// log in there with the protocol's own node-side login. Protocol sessions
// only turn the outcome into their own words on the wire.

#include "backends/node_login.hpp"
#include "backends/topology.hpp"
#include "common/failure.hpp"
#include "proxy/runtime.hpp"

#include <functional>
#include <optional>

namespace isthmus::proxy {

struct LoginRequest {
  config::Protocol protocol = config::Protocol::imap;
  std::string session_id;          // for log lines
  std::string client;              // "ip:port", for log lines
  std::string login_name;          // as the client sent it
  std::string authzid;             // as the client sent it; usually empty
  std::string password;  // or, for OAUTHBEARER / XOAUTH2, the bearer token
  SaslMechanism mechanism = SaslMechanism::plain;
  boost::asio::ip::tcp::endpoint client_remote;  // the client, told to the node
  boost::asio::ip::tcp::endpoint client_local;   // what it connected to
  unsigned ttl = 0;  // hops this login may still take (0: the configured proxy_ttl)
  // Waits until a moment, or until the session is asked to stop (then
  // false): the throttle's wait goes through it, so a stopping instance
  // is not held up by logins waiting their turn. Unset: a plain sleep.
  std::function<boost::asio::awaitable<bool>(Clock::time_point)> pause;
};

struct LoginOutcome {
  Failure failure = Failure::none;
  std::string user;    // normalised login name ("" if it was not acceptable)
  std::string island;
  std::string node;    // the node that answered last
  std::string detail;  // what happened, for the log line
  std::optional<Transport> node_connection;  // set on success
  backends::NodeLease lease;                  // set on success
  backends::NodeLoginResult node_result;      // capabilities and pending bytes on success
};

// Logs in on a connected node (already under TLS for implicit-TLS nodes).
using NodeLoginFn = std::function<boost::asio::awaitable<backends::NodeLoginResult>(
    Transport& node, const backends::NodeLoginParams& params)>;

// A node failed a session in a way that counts against its health (the
// failure table's node_suspect: refused, timed out, broken greeting, TLS):
// the node is suspect for a while, and the health checker counts one failed
// check at once (docs/health.md). Other failures are not reported.
// Counted against the node's `protocol` only (docs/health.md).
void report_node_failure(const Runtime& runtime, const backends::Node& node,
                         config::Protocol protocol, Failure failure);

boost::asio::awaitable<LoginOutcome> log_in_through_island(const Runtime& runtime,
                                                           LoginRequest request,
                                                           const NodeLoginFn& node_login,
                                                           Deadline deadline);

}  // namespace isthmus::proxy
