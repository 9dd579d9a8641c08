#pragma once
// The client side of an IMAP login to a node: greeting, STARTTLS where
// configured, capabilities, the client's identity (ID, RFC 2971, with
// Dovecot's x-originating-ip fields), credentials sent as SASL PLAIN or as
// literals (never pasted into a command line), then the node's post-login
// capabilities.

#include "backends/node_login.hpp"

namespace isthmus::backends {

boost::asio::awaitable<NodeLoginResult> log_in_imap(Transport& node, const NodeLoginParams& params);

// The ID command Isthmus sends to a node before login (tag excluded).
std::string imap_forwarding_id(const ForwardedClient& client);

}  // namespace isthmus::backends
