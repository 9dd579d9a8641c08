#pragma once
// Every way a session or a login can fail, classified once, with one table
// that says what follows from it: try another node? tell health the node is
// suspect? what kind of answer does the client get? how loud is the log line?
// Protocol sessions turn ClientAnswer into their own words on the wire.

#include <spdlog/common.h>

#include <cstdint>
#include <string_view>

namespace isthmus {

enum class Failure : std::uint8_t {
  none,
  // The client side.
  client_closed,     // the client went away
  client_timeout,    // pre-auth or idle deadline passed
  client_protocol,   // input we cannot recover from (line or literal too long)
  client_limit,      // too many commands before login
  // Lookup and routing.
  bad_login_name,    // empty, too long, or with control characters
  bad_credentials,   // a password no server takes (too long; NUL, CR or LF), refused first
  throttled,         // too many failed logins from the address or for the name: not checked
  unknown_user,      // no island for the user and no default
  account_disabled,  // the directory says the account is disabled
  account_moving,    // the account is being moved between islands
  directory_down,    // the directory could not answer
  unknown_island,    // the directory names an island the config does not have
  no_node,           // the island has no node left to try
  // A node, while logging in.
  node_refused,      // connect refused or unreachable
  node_timeout,      // connect, greeting or an answer did not arrive in time
  node_closed,       // the node closed the connection during login
  node_protocol,     // a greeting or answer we cannot accept
  node_unavailable,  // the node answered with a temporary failure
  node_tls,          // TLS with the node failed (handshake, certificate, no STARTTLS)
  node_is_self,      // the node is this very instance (a loop in the config)
  node_busy,         // this instance holds as many connections to the node as it may
  mailbox_in_use,    // the node says the mailbox is locked by another session
  login_delay,       // the node says the user logs in too often (POP3 LOGIN-DELAY)
  auth_failed,       // the credentials were refused
  authorization_failed,  // the credentials are right, but not for this mailbox (RFC 5530)
  node_referral,     // the node refers the login elsewhere (RFC 2221): not forwarded
  login_dropped,     // the node failed the login after it had the client's credentials
  proxy_loop,        // the login has passed through too many proxies
  plaintext_refused, // a password before TLS where that is not allowed
  // Isthmus itself.
  shutdown,          // the instance is stopping
};

// What the client is told, in protocol-neutral terms.
enum class ClientAnswer : std::uint8_t {
  none,         // nothing (the client is gone, or the session just ends)
  auth_failed,  // as for a wrong password: IMAP NO [AUTHENTICATIONFAILED]
  authz_failed, // IMAP NO [AUTHORIZATIONFAILED] (POP3: as auth_failed)
  temporary,    // try again later: IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]
  in_use,       // the mailbox is locked: IMAP NO [INUSE], POP3 -ERR [IN-USE]
  login_delay,  // too soon since the last login: POP3 -ERR [LOGIN-DELAY]
};

struct FailurePolicy {
  std::string_view name;         // stable identifier for logs and metrics
  std::string_view description;  // human-readable, for log lines
  bool try_next_node;            // during login: move on to the island's next node
  bool node_suspect;             // counts against the node's health
  ClientAnswer answer;
  spdlog::level::level_enum log_level;
};

const FailurePolicy& policy_of(Failure failure);

inline std::string_view name_of(Failure failure) { return policy_of(failure).name; }

}  // namespace isthmus
