#pragma once
// What logging in to a node takes and gives, whatever the protocol.

#include "common/deadline.hpp"
#include "common/failure.hpp"
#include "common/transport.hpp"
#include "common/sasl.hpp"
#include "config/config.hpp"

#include <boost/asio/ssl/context.hpp>

#include <string>

namespace isthmus::backends {

struct Credentials {
  std::string user;      // the login name as the node should see it
  std::string authzid;   // SASL authorization identity; empty unless the client gave one
  std::string password;  // or, for OAUTHBEARER / XOAUTH2, the bearer token
  SaslMechanism mechanism = SaslMechanism::plain;

  Credentials() = default;
  Credentials(const Credentials&) = default;
  Credentials& operator=(const Credentials&) = default;
  ~Credentials();  // wipes the password from memory
};

// What the node is told about the client (IMAP ID x-originating-ip etc.,
// POP3 XCLIENT); Dovecot believes it from its login_trusted_networks.
struct ForwardedClient {
  std::string ip;            // the client's address
  std::uint16_t port = 0;
  std::string connected_ip;  // the address the client connected to
  std::uint16_t connected_port = 0;
  std::string session_id;    // the session id in Isthmus' log lines
  unsigned ttl = 0;          // hops left for the next proxy (loop guard)
};

struct NodeTlsSetup {
  config::TlsMode mode = config::TlsMode::none;
  boost::asio::ssl::context* context = nullptr;
  std::string name;  // the name the node's certificate must carry
  bool verify = true;
};

struct NodeLoginParams {
  const Credentials& credentials;
  ForwardedClient client;
  NodeTlsSetup tls;
  Deadline greeting;  // bounds the wait for the greeting (and a TLS handshake)
  Deadline deadline;  // bounds the whole login
};

struct NodeLoginResult {
  Failure failure = Failure::none;
  std::string detail;        // for the log line: what the node said or did (sanitized)
  std::string capabilities;  // IMAP: the node's post-login capability list
  std::string pending;       // bytes the node sent after its login answer, for the client
  std::string code;          // POP3: the node's response code on refusal (e.g. "IN-USE")
  // Bytes the client chose (its login name, its password) went to the node
  // before this result: from then on a failure may be the client's doing,
  // and never counts against the node's health (proxy/login_proxy.cpp).
  bool client_data_sent = false;
};

}  // namespace isthmus::backends
