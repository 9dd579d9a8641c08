#pragma once
// The client side of a POP3 login to a node: greeting, STLS where
// configured, CAPA, the client's identity (XCLIENT where the node offers
// it, as Dovecot does to trusted proxies), then AUTH PLAIN (RFC 5034) or,
// for nodes without SASL, USER/PASS.

#include "backends/node_login.hpp"

namespace isthmus::backends {

boost::asio::awaitable<NodeLoginResult> log_in_pop3(Transport& node, const NodeLoginParams& params);

// The XCLIENT command Isthmus sends to a POP3 node that offers it.
std::string pop3_xclient(const ForwardedClient& client);

// What a node's "-ERR [CODE] text" means for the login (RFC 2449/3206).
Failure classify_pop3_refusal(std::string_view line);

}  // namespace isthmus::backends
