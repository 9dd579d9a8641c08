#pragma once
// An asynchronous LDAP client on libldap (OpenLDAP 2.5), for a directory
// that answers "where does this user live?" and "is this their password?".
//
// Threading: a Client is bound to one executor (the directory loop's
// io_context, a thread of its own). Every member function must be called
// on that thread; workers reach it through co_spawn. Nothing here ever
// blocks a worker.
//
// What it does:
// - Servers (URIs) are tried in order. A server that fails to connect,
//   negotiate TLS, bind or answer in time is put in backoff: it is not
//   tried again for 250 ms, then twice that after each further failure, up
//   to max_backoff (with +-20% jitter). While every server is in backoff a
//   request fails at once: a dead directory costs clients no waiting.
// - TLS: ldaps:// URIs, or StartTLS on ldap:// URIs when `starttls` is set.
//   Either way TLS is required: a failed handshake or a refused StartTLS
//   fails the connection, never falls back to plaintext. The CA bundle and
//   verification (chain and host name) are set on each handle with
//   LDAP_OPT_X_TLS_CACERTFILE / LDAP_OPT_X_TLS_REQUIRE_CERT /
//   LDAP_OPT_X_TLS_NEWCTX, never process-wide.
// - Two pools of at most `pool_size` connections each: searches run on
//   connections bound as the service DN (simple bind); password checks bind
//   as the user on connections of their own, never the service's.
// - Searches are pipelined: up to 32 outstanding on one connection (RFC
//   4511 4.1.1, the message ID ties each result to its request), so a
//   directory some milliseconds away does not make concurrent lookups
//   queue behind each other. A new connection is opened while the pool has
//   room and every open one is busy; one reader per connection hands each
//   complete result to its search. Binds are never pipelined.
// - Operations are driven from the socket: the request is sent, the loop
//   waits for the descriptor to become readable, and ldap_result() collects
//   what arrived without waiting (zero timeout). Every wait is bounded by
//   the caller's Deadline. A connection that times out or fails is thrown
//   away (ldap_unbind_ext) and the operation retried on another connection
//   or server while the deadline allows.
// - Connection setup: the TCP connect, StartTLS request and bind are
//   asynchronous. The TLS handshake itself runs inside libldap
//   (ldap_install_tls), synchronously on the directory thread, bounded by
//   LDAP_OPT_NETWORK_TIMEOUT = what is left of min(connect_timeout, the
//   caller's deadline): libldap offers no public way to resume a handshake.
//
// Lifetime: a Client lives in a shared_ptr; every operation keeps it alive
// while its coroutine exists. The owner calls close() after stopping the
// loop and before the io_context goes, so coroutines destroyed with the
// io_context do not hand connections back to a pool nobody drives.

#include "common/deadline.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace isthmus::ldap {

enum class Scope : std::uint8_t { base, one, sub };
std::optional<Scope> scope_from(std::string_view name);  // "base", "one", "sub"

struct ClientSettings {
  std::vector<std::string> uris;  // ldap://host:port/ or ldaps://host:port/, in order
  bool starttls = false;          // StartTLS on ldap:// URIs, required when set
  std::filesystem::path ca_file;  // PEM bundle; empty: libldap's default (system) CAs
  bool verify = true;             // chain and host name
  std::string bind_dn;            // the service account; empty: anonymous searches
  std::string bind_password;
  unsigned pool_size = 4;         // per pool (searches; password checks)
  std::chrono::milliseconds connect_timeout{2000};  // one server: TCP + TLS + bind
  std::chrono::milliseconds max_backoff{30000};
};

struct Entry {
  std::string dn;
  std::vector<std::pair<std::string, std::vector<std::string>>> attributes;

  // The values of `attribute` (case-insensitive; nullptr if absent).
  const std::vector<std::string>* values(std::string_view attribute) const;
};

struct SearchRequest {
  std::string base;
  Scope scope = Scope::sub;
  std::string filter;  // already escaped (filter.hpp)
  std::vector<std::string> attributes;
  int size_limit = 16;  // more entries than this: size_limit_exceeded
};

struct SearchResult {
  bool ok = false;             // the server answered the search
  std::vector<Entry> entries;  // when ok
  bool size_limit_exceeded = false;
  std::string server;          // the URI that answered (or failed last)
  std::string error;           // when !ok: what went wrong, for the log (no secrets)
};

enum class BindOutcome : std::uint8_t {
  accepted,
  rejected,     // invalidCredentials (or inappropriateAuthentication: no password)
  unavailable,  // no server could answer in time
};
std::string_view name_of(BindOutcome outcome);

struct BindResult {
  BindOutcome outcome = BindOutcome::unavailable;
  std::string detail;  // for the log (never the password)
};

// One attribute of an entry replaced by these values (LDAP_MOD_REPLACE).
struct Replacement {
  std::string attribute;
  std::vector<std::string> values;
};

struct ModifyResult {
  bool ok = false;
  std::string detail;  // the server's answer or why there was none (never the password)
};

struct ClientStats {
  std::uint64_t connects = 0;         // connections set up (TCP, TLS, bind)
  std::uint64_t connect_failures = 0;
  std::uint64_t discarded = 0;        // connections thrown away after an error or timeout
  std::uint64_t searches = 0;
  std::uint64_t binds = 0;            // password checks sent
};

class Client : public std::enable_shared_from_this<Client> {
 public:
  // Throws std::invalid_argument for a URI libldap cannot parse or an
  // empty list.
  static std::shared_ptr<Client> create(boost::asio::any_io_executor executor,
                                        ClientSettings settings);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // One search, retried on other connections and servers until `deadline`.
  boost::asio::awaitable<SearchResult> search(SearchRequest request, Deadline deadline);

  // Does `dn` accept `password` (a simple bind as that DN)? An empty
  // password is always rejected without asking: a simple bind with an
  // empty password is an anonymous bind that "succeeds" (RFC 4513 5.1.2).
  boost::asio::awaitable<BindResult> check_password(std::string dn, std::string password,
                                                    Deadline deadline);

  // Replaces attributes of the entry `dn` in one modify operation (atomic
  // for the entry, RFC 4511 4.6), bound as `bind_dn` with `password` on a
  // connection of the password checks' pool. Retried on another connection
  // or server only when no answer came; a server's refusal is final.
  boost::asio::awaitable<ModifyResult> modify(std::string dn, std::vector<Replacement> changes,
                                              std::string bind_dn, std::string password,
                                              Deadline deadline);

  // See "Lifetime" above. On the owner's thread, with the loop stopped.
  void close();

  const ClientStats& stats() const;

  struct Impl;  // defined in client.cpp

 private:
  Client(boost::asio::any_io_executor executor, ClientSettings settings);
  std::unique_ptr<Impl> impl_;
};

}  // namespace isthmus::ldap
