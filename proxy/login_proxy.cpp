#include "proxy/login_proxy.hpp"

#include "common/log.hpp"
#include "common/net.hpp"
#include "config/duration.hpp"
#include "director/login_name.hpp"
#include "director/router.hpp"

#include <boost/asio/this_coro.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>

namespace isthmus::proxy {
namespace {

Failure connect_failure(const boost::system::error_code& ec) {
  return ec == boost::asio::error::timed_out ? Failure::node_timeout : Failure::node_refused;
}

// Rotates the order among equally loaded nodes (see director::candidates).
std::size_t next_spin() {
  static std::atomic<std::size_t> spin{0};
  return spin.fetch_add(1, std::memory_order_relaxed);
}

struct Verdict {
  Failure failure = Failure::none;
  std::string detail;
};

// Directory authentication: a remembered verdict, or the directory's.
boost::asio::awaitable<Verdict> check_password(const Runtime& runtime, const std::string& user,
                                               const director::UserEntry& entry,
                                               const std::string& password) {
  const auto& config = *runtime.config;
  auto& guard = *runtime.auth_guard;
  director::PasswordCheck check = director::PasswordCheck::unavailable;
  std::string how = "remembered";
  const std::string stored = entry.password_hash + '\n' + entry.dn;
  if (auto known = guard.remembered(user, stored, password, Clock::now())) {
    check = *known;
  } else {
    how = std::string(runtime.directory->kind());
    check = co_await runtime.directory->check_password(entry, password);
    guard.remember(user, stored, password, check, config.auth.outcome_cache_ttl, Clock::now());
  }
  Verdict verdict;
  switch (check) {
    case director::PasswordCheck::accepted: break;
    case director::PasswordCheck::rejected:
      verdict.failure = Failure::auth_failed;
      verdict.detail = fmt::format("wrong password ({} verdict)", how);
      break;
    case director::PasswordCheck::unavailable:
      verdict.failure = Failure::directory_down;
      verdict.detail = "the directory could not check the password";
      break;
    case director::PasswordCheck::unsupported:
      verdict.failure = Failure::directory_down;
      verdict.detail = entry.dn.empty() && entry.password_hash.empty()
                           ? "nothing to check the password against: the directory gave no "
                             "password hash or DN for the user (check directory and auth config)"
                           : "the stored password hash has a scheme Isthmus cannot check";
      break;
  }
  co_return verdict;
}

// Directory authentication with a bearer token: a remembered verdict, or
// the introspection endpoint's (remembered at most until the token's exp).
boost::asio::awaitable<Verdict> check_token(const Runtime& runtime, const std::string& user,
                                            const std::string& token, Deadline deadline) {
  auto& guard = *runtime.auth_guard;
  Verdict verdict;
  if (!runtime.oauth) {
    verdict.failure = Failure::directory_down;
    verdict.detail = "no introspection endpoint to check the token (auth.oauth2.introspection_url)";
    co_return verdict;
  }
  constexpr std::string_view kStored = "oauth2-introspection";
  if (auto known = guard.remembered(user, kStored, token, Clock::now())) {
    if (*known == director::PasswordCheck::rejected) {
      verdict.failure = Failure::auth_failed;
      verdict.detail = "token refused (remembered verdict)";
    }
    co_return verdict;
  }
  auto answer = co_await runtime.oauth->introspect(token, user, deadline);
  switch (answer.check) {
    case director::TokenCheck::accepted:
      guard.remember(user, kStored, token, director::PasswordCheck::accepted, answer.valid_for,
                     Clock::now());
      break;
    case director::TokenCheck::rejected:
      guard.remember(user, kStored, token, director::PasswordCheck::rejected,
                     runtime.config->auth.oauth2.cache_ttl, Clock::now());
      verdict.failure = Failure::auth_failed;
      verdict.detail = "token refused: " + answer.detail;
      break;
    case director::TokenCheck::unavailable:
      verdict.failure = Failure::directory_down;
      verdict.detail = answer.detail;
      break;
  }
  co_return verdict;
}

}  // namespace

void report_node_failure(const Runtime& runtime, const backends::Node& node,
                         config::Protocol protocol, Failure failure) {
  const auto& policy = policy_of(failure);
  if (!policy.node_suspect) return;
  node.state->report_failure(Clock::now());
  if (runtime.health)
    runtime.health->report_failure(node.name, protocol,
                                   fmt::format("{}: a session: {}", config::name_of(protocol),
                                               policy.description));
}

// After the checks that need no directory and no node (credentials,
// name, throttle): the lookup, the password check in directory mode, and
// the island's nodes in the router's order. `user` is the normalised name.
static boost::asio::awaitable<LoginOutcome> log_in_to_island(const Runtime& runtime,
                                                             LoginRequest request,
                                                             const std::string& normalised_user,
                                                             const NodeLoginFn& node_login,
                                                             Deadline deadline) {
  LoginOutcome outcome;
  const auto& config = *runtime.config;
  const std::optional<std::string> user = normalised_user;
  outcome.user = *user;

  // The mailbox owner decides the island: the authorization identity when
  // the client gave one that differs from the login name.
  std::string owner = *user;
  std::string authzid;
  if (!request.authzid.empty()) {
    auto normalised = director::normalise_login(request.authzid, config.login_names);
    if (!normalised) {
      outcome.failure = Failure::bad_login_name;
      outcome.detail = "authorization identity not acceptable";
      co_return outcome;
    }
    if (*normalised != *user) {
      owner = *normalised;
      authzid = *normalised;
    }
  }

  auto found = co_await runtime.directory->lookup(owner);
  switch (found.status) {
    case director::LookupStatus::found: break;
    case director::LookupStatus::not_found:
      outcome.failure = Failure::unknown_user;
      outcome.detail = fmt::format("{} directory has no island for {}", runtime.directory->kind(),
                                   sanitize(owner, 100));
      co_return outcome;
    case director::LookupStatus::unavailable:
      outcome.failure = Failure::directory_down;
      outcome.detail = sanitize(found.detail);
      co_return outcome;
  }
  // The island value came from the directory: only a configured name is
  // ever used (or logged unescaped).
  const backends::Island* island = runtime.topology->island(found.entry.island);
  if (!island) {
    outcome.failure = Failure::unknown_island;
    outcome.detail = fmt::format("directory data error: island \"{}\" is not configured",
                                 sanitize(found.entry.island, 100));
    co_return outcome;
  }
  outcome.island = island->name;
  if (found.entry.state == director::AccountState::disabled) {
    outcome.failure = Failure::account_disabled;
    outcome.detail = "the directory says the account is disabled";
    co_return outcome;
  }
  if (found.entry.state == director::AccountState::moving) {
    outcome.failure = Failure::account_moving;
    outcome.detail = "the account is being moved; try again when the move is done";
    co_return outcome;
  }

  // Each proxy on the way takes one from the TTL; at 0 the login has looped.
  const unsigned ttl = request.ttl == 0 ? config.proxy_ttl : std::min(request.ttl, config.proxy_ttl);
  if (ttl <= 1) {
    outcome.failure = Failure::proxy_loop;
    outcome.detail = fmt::format("proxy TTL {} reached; check for proxies routing to each other",
                                 ttl);
    co_return outcome;
  }

  backends::Credentials credentials;
  // The node is told the name the directory matched (its own spelling, or
  // the node login it gives), never the client's bytes: a directory that
  // folds case or normalises differently must not route one user while
  // the node logs in another.
  const std::string& node_user = !found.entry.node_login.empty() ? found.entry.node_login
                                 : !found.entry.login.empty()    ? found.entry.login
                                                                 : owner;
  if (authzid.empty()) {
    credentials.user = node_user;
  } else {
    credentials.user = *user;  // who logs in (an admin acting for the owner)
    credentials.authzid = node_user;
  }
  credentials.password = std::move(request.password);
  credentials.mechanism = request.mechanism;
  if (config.auth.mode == config::AuthMode::directory) {
    // Isthmus checks the password (or the token); the node is told who logs in.
    if (!authzid.empty()) {
      outcome.failure = Failure::auth_failed;
      outcome.detail = "an authorization identity is not accepted with directory authentication";
      co_return outcome;
    }
    Verdict verdict;
    if (is_oauth(credentials.mechanism))
      verdict = co_await check_token(runtime, *user, credentials.password, deadline);
    else
      verdict = co_await check_password(runtime, *user, found.entry, credentials.password);
    if (verdict.failure != Failure::none) {
      outcome.failure = verdict.failure;
      outcome.detail = std::move(verdict.detail);
      co_return outcome;
    }
    const auto& auth = config.auth;
    if (!auth.master_user.empty()) {
      credentials.password = auth.master_password;
      credentials.mechanism = SaslMechanism::plain;
      if (auth.master_style == config::MasterStyle::sasl) {
        credentials.user = auth.master_user;
        credentials.authzid = node_user;
      } else {
        credentials.user = node_user + auth.master_separator + auth.master_user;
      }
    }
  }
  backends::ForwardedClient forwarded;
  forwarded.ip = unmapped(request.client_remote.address()).to_string();
  forwarded.port = request.client_remote.port();
  forwarded.connected_ip = unmapped(request.client_local.address()).to_string();
  forwarded.connected_port = request.client_local.port();
  forwarded.session_id = request.session_id;
  forwarded.ttl = ttl - 1;

  auto nodes = director::candidates(*island, request.protocol, Clock::now(), next_spin());
  std::string tried;
  auto executor = co_await boost::asio::this_coro::executor;
  for (const auto& node : nodes) {
    if (deadline.expired()) break;
    outcome.node = node->name;
    backends::NodeLease lease(node->state);
    auto endpoint = *node->endpoint(request.protocol);
    Transport connection{boost::asio::ip::tcp::socket(executor)};
    auto connect = [&connection, endpoint](auto token) {
      return connection.socket().async_connect(endpoint, token);
    };
    auto [ec] = co_await until(deadline.within(config.timeouts.connect), connect);
    backends::NodeLoginResult result;
    // A node gets `connect` to accept the connection and the same again to
    // greet (and, for implicit TLS, to finish the handshake): one that accepts
    // but never speaks (frozen, overloaded) is skipped as quickly as one that
    // refuses.
    const Deadline greeting = deadline.within(config.timeouts.connect);
    const config::TlsMode tls_mode = node->tls_for(request.protocol);
    backends::NodeTlsSetup tls{tls_mode, runtime.node_tls.get(), node->tls_name,
                               config.node_tls.verify};
    if (ec) {
      result.failure = connect_failure(ec);
      result.detail = fmt::format("connect to {}: {}", format_endpoint(endpoint), ec.message());
    } else {
      boost::system::error_code ignored;
      connection.socket().set_option(boost::asio::ip::tcp::no_delay(true), ignored);
      if (tls_mode == config::TlsMode::implicit) {
        auto tls_ec = co_await connection.start_tls_as_client(*tls.context, tls.name, tls.verify,
                                                              greeting);
        if (tls_ec) {
          result.failure = tls_ec == boost::asio::error::timed_out ? Failure::node_timeout
                                                                   : Failure::node_tls;
          result.detail =
              "TLS handshake with the node failed: " + connection.tls_failure_reason(tls_ec);
        }
      }
      if (result.failure == Failure::none) {
        backends::NodeLoginParams params{credentials, forwarded, tls, greeting, deadline};
        result = co_await node_login(connection, params);
      }
    }
    // A node that failed after it had bytes the client chose (a name, a
    // password) may have failed because of them: that is this login's
    // failure, never the node's (no health report, no next node).
    if (result.client_data_sent && policy_of(result.failure).node_suspect) {
      result.detail = fmt::format("{} ({} after the client's credentials were sent)", result.detail,
                                  name_of(result.failure));
      result.failure = Failure::login_dropped;
    }
    if (result.failure == Failure::none) {
      node->state->report_success();
      outcome.failure = Failure::none;
      outcome.detail = "logged in";
      outcome.node_connection.emplace(std::move(connection));
      outcome.lease = std::move(lease);
      outcome.node_result = std::move(result);
      co_return outcome;
    }
    const auto& policy = policy_of(result.failure);
    report_node_failure(runtime, *node, request.protocol, result.failure);
    tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", node->name, result.detail);
    if (!policy.try_next_node) {
      outcome.failure = result.failure;
      outcome.detail = std::move(tried);
      co_return outcome;
    }
    spdlog::log(policy.log_level, "session={} login user={} island={} node={}: {} ({}); {}",
                request.session_id, sanitize(*user, 100), island->name, node->name,
                policy.description, result.detail,
                &node == &nodes.back() ? "no node left to try" : "trying the next node");
    connection.close();
  }
  outcome.failure = Failure::no_node;
  outcome.detail = tried.empty() ? fmt::format("the island has no node to try (none serves {} or "
                                              "all are draining)",
                                              config::name_of(request.protocol))
                                : tried;
  co_return outcome;
}

namespace {

// Credentials no server takes are refused before any directory or node
// sees them (a node that drops such a login must not be blamed for it).
std::optional<std::string> credentials_problem(const LoginRequest& request,
                                               const config::Config& config) {
  if (is_oauth(request.mechanism)) {
    if (!config.auth.oauth2.enabled || (request.mechanism == SaslMechanism::oauthbearer
                                            ? !config.auth.oauth2.oauthbearer
                                            : !config.auth.oauth2.xoauth2))
      return fmt::format("{} is not offered here (auth.oauth2)", name_of(request.mechanism));
    if (request.password.size() > config.auth.oauth2.max_token)
      return fmt::format("a bearer token of {} bytes (auth.oauth2.max_token is {})",
                         request.password.size(), config.auth.oauth2.max_token);
    if (!valid_bearer_token(request.password)) return "a malformed bearer token";
    return std::nullopt;
  }
  // Directory mode over a static directory (no passwords in it): tokens only.
  if (config.auth.mode == config::AuthMode::directory && config.directory.type == "static")
    return "a password, where only bearer tokens are taken (auth.mode directory with a static "
           "directory)";
  const auto& password = request.password;
  if (password.size() > config.limits.max_password)
    return fmt::format("a password of {} bytes (limits.max_password is {})", password.size(),
                       config.limits.max_password);
  if (password.find_first_of(std::string_view("\0\r\n", 3)) != std::string::npos)
    return "a password with NUL, CR or LF";
  return std::nullopt;
}

// Failures that count against the address and the name in the throttle:
// whatever the client is told "authentication failed" for, and logins a
// node dropped after it had the client's credentials.
bool counts_as_failed_login(Failure failure) {
  const auto answer = policy_of(failure).answer;
  return answer == ClientAnswer::auth_failed || answer == ClientAnswer::authz_failed ||
         failure == Failure::login_dropped;
}

}  // namespace

boost::asio::awaitable<LoginOutcome> log_in_through_island(const Runtime& runtime,
                                                           LoginRequest request,
                                                           const NodeLoginFn& node_login,
                                                           Deadline deadline) {
  const auto started = Clock::now();
  const auto protocol = request.protocol;
  const auto& config = *runtime.config;
  auto& guard = *runtime.auth_guard;
  const auto throttle = director::ThrottleSettings::from(config);
  const std::string address = director::AuthGuard::address_key(
      unmapped(request.client_remote.address()), throttle.ipv6_prefix);

  LoginOutcome outcome;
  auto user = director::normalise_login(request.login_name, config.login_names);
  // The throttle's name for this attempt: the normalised name, or the raw
  // one (bounded) when it is not acceptable.
  const std::string throttle_user =
      user ? *user : request.login_name.substr(0, config.login_names.max_length);
  const auto keys = guard.keys(address, throttle_user, request.password);
  if (auto problem = credentials_problem(request, config)) {
    outcome.failure = Failure::bad_credentials;
    outcome.user = user.value_or("");
    outcome.detail = std::move(*problem);
  } else if (!user) {
    outcome.failure = Failure::bad_login_name;
    outcome.detail = "login name not acceptable";
  } else {
    // The throttle: this address's and this name's failures decide when
    // the check may start; nothing is asked of a directory or a node before.
    const auto admission = guard.admit(keys, Clock::now(), throttle);
    if (admission.refused) {
      outcome.failure = Failure::throttled;
      outcome.user = *user;
      outcome.detail = fmt::format("the wait for a check would exceed auth.max_throttle_wait ({})",
                                   config::format_duration(std::chrono::duration_cast<std::chrono::milliseconds>(throttle.max_wait)));
    } else {
      const auto waited = admission.start - Clock::now();
      if (waited > Clock::duration::zero()) {
        spdlog::info("session={} login user={} client={}: throttled, checking in {}ms ({})",
                     request.session_id, sanitize(*user, 100), request.client,
                     std::chrono::duration_cast<std::chrono::milliseconds>(waited).count(),
                     admission.user_wait > admission.address_wait
                         ? "failed logins for this name"
                         : "failed logins from this address");
        bool waited_out = true;
        if (request.pause) waited_out = co_await request.pause(admission.start);
        else co_await sleep_until(Deadline::at(admission.start));
        deadline = Deadline::at(deadline.when() + waited);  // the login's own budget is whole
        if (!waited_out) {
          outcome.failure = Failure::shutdown;
          outcome.user = *user;
          outcome.detail = "the session was stopped while its check waited for the throttle";
        }
      }
      if (outcome.failure == Failure::none)
        outcome = co_await log_in_to_island(runtime, std::move(request), *user, node_login,
                                            deadline);
    }
  }
  // An active-passive island whose role moved while this login was on its
  // way: the old holder's sessions are being closed; do not add one.
  if (outcome.failure == Failure::none) {
    const auto* island = runtime.topology->island(outcome.island);
    if (island && island->role) {
      auto holder = island->role->current();
      if (holder->node != outcome.node) {
        outcome.failure = Failure::node_unavailable;
        outcome.detail = fmt::format("island {}'s active role moved to {} during the login",
                                     outcome.island, holder->node);
        if (outcome.node_connection) outcome.node_connection->close();
        outcome.node_connection.reset();
        outcome.lease.release();
      }
    }
  }
  if (outcome.failure == Failure::none) guard.succeeded(keys, Clock::now(), throttle);
  else if (counts_as_failed_login(outcome.failure)) guard.failed(keys, Clock::now(), throttle);
  if (runtime.metrics) runtime.metrics->login(protocol, outcome.failure, Clock::now() - started);
  co_return outcome;
}

}  // namespace isthmus::proxy
