#include "common/failure.hpp"

#include <array>

namespace isthmus {
namespace {

using L = spdlog::level::level_enum;
using A = ClientAnswer;

// Order follows the enum; checked by the static_assert below and a unit test.
constexpr std::array<FailurePolicy, 31> kPolicies{{
    {"none", "ok", false, false, A::none, L::info},
    {"client_closed", "the client closed the connection", false, false, A::none, L::info},
    {"client_timeout", "the client was idle too long", false, false, A::none, L::info},
    {"client_protocol", "the client sent input that cannot be parsed", false, false, A::none,
     L::info},
    {"client_limit", "the client sent too many commands before logging in", false, false, A::none,
     L::info},
    {"bad_login_name", "the login name is not acceptable", false, false, A::auth_failed, L::info},
    {"bad_credentials", "the credentials are not acceptable (refused before any node saw them)",
     false, false, A::auth_failed, L::info},
    {"throttled", "too many failed logins from this address or for this name; not checked",
     false, false, A::temporary, L::info},
    {"unknown_user", "no island for this user", false, false, A::auth_failed, L::info},
    {"account_disabled", "the account is disabled", false, false, A::auth_failed, L::info},
    {"account_moving", "the account is being moved to another island", false, false,
     A::temporary, L::info},
    {"directory_down", "the directory could not answer", false, false, A::temporary, L::warn},
    {"unknown_island", "the directory names an island that is not configured", false, false,
     A::temporary, L::err},
    {"no_node", "no node of the island could take the login", false, false, A::temporary,
     L::warn},
    {"node_refused", "the node refused the connection", true, true, A::temporary, L::warn},
    {"node_timeout", "the node did not answer in time", true, true, A::temporary, L::warn},
    {"node_closed", "the node closed the connection while logging in", true, true, A::temporary,
     L::warn},
    {"node_protocol", "the node answered something unexpected", true, true, A::temporary,
     L::warn},
    {"node_unavailable", "the node answered with a temporary failure", true, false, A::temporary,
     L::warn},
    {"node_tls", "TLS with the node failed", true, true, A::temporary, L::warn},
    {"node_is_self", "the node is this very instance (a routing loop in the config)", true,
     false, A::temporary, L::err},
    {"node_busy", "this instance holds as many connections to the node as it may", true, false,
     A::temporary, L::warn},
    {"mailbox_in_use", "the node says the mailbox is in use", false, false, A::in_use, L::info},
    {"login_delay", "the node says the user logs in too often", false, false, A::login_delay,
     L::info},
    {"auth_failed", "authentication failed", false, false, A::auth_failed, L::info},
    {"authorization_failed", "the node refuses this login for this mailbox (authorization)",
     false, false, A::authz_failed, L::info},
    {"node_referral", "the node refers the login to another server (not forwarded)", false,
     false, A::temporary, L::warn},
    // Not the node's fault: it had bytes the client chose (docs/health.md).
    {"login_dropped", "the node gave up on the login after it received the client's credentials",
     false, false, A::temporary, L::info},
    {"proxy_loop", "the login passed through too many proxies (a routing loop?)", false, false,
     A::temporary, L::err},
    {"plaintext_refused", "a password before TLS on a connection that requires TLS", false,
     false, A::none, L::info},
    {"shutdown", "the instance is shutting down", false, false, A::temporary, L::info},
}};

}  // namespace

static_assert(kPolicies.size() == static_cast<std::size_t>(Failure::shutdown) + 1,
              "one policy row per Failure");

const FailurePolicy& policy_of(Failure failure) {
  return kPolicies[static_cast<std::size_t>(failure)];
}

}  // namespace isthmus
