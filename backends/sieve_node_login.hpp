#pragma once
// The client side of a ManageSieve login to a node (RFC 5804): the greeting
// (capability lines, then OK), STARTTLS where configured (the capabilities
// are read again under TLS and what came before is forgotten), the client's
// identity (XCLIENT where the node offers it, as Dovecot's Pigeonhole does
// to trusted proxies), then AUTHENTICATE with PLAIN, or with the client's
// bearer token as OAUTHBEARER or XOAUTH2.

#include "backends/node_login.hpp"

namespace isthmus::backends {

boost::asio::awaitable<NodeLoginResult> log_in_managesieve(Transport& node,
                                                           const NodeLoginParams& params);

// What a node's NO (or BYE) to AUTHENTICATE means: by its response code
// (RFC 5804 section 1.3): TRYLATER is temporary, REFERRAL is not
// forwarded, AUTH-TOO-WEAK / ENCRYPT-NEEDED / TRANSITION-NEEDED say the
// node will not take PLAIN from Isthmus (a configuration problem: tried
// on the next node, the client told to come back later); any other is a
// refusal of the credentials.
Failure classify_sieve_refusal(std::string_view code);

}  // namespace isthmus::backends
