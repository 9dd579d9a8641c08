#pragma once
// The configuration model: what one JSON file says, validated. Loading and
// validation live in config_loader.hpp; everything else reads this model.

#include "common/log.hpp"
#include "common/net.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace isthmus::config {

using Duration = std::chrono::milliseconds;

// managesieve: RFC 5804 (port 4190).
enum class Protocol : std::uint8_t { imap, pop3, lmtp, managesieve };
// How many there are: arrays indexed by Protocol are this long.
inline constexpr std::size_t kProtocolCount = 4;
static_assert(static_cast<std::size_t>(Protocol::managesieve) + 1 == kProtocolCount);
std::string_view name_of(Protocol protocol);
std::optional<Protocol> protocol_from_name(std::string_view name);

enum class TlsMode : std::uint8_t {
  none,      // plaintext only
  starttls,  // plaintext, upgraded by STARTTLS (IMAP) / STLS (POP3)
  implicit,  // TLS from the first byte (993/995 style)
};
std::string_view name_of(TlsMode mode);

struct Listener {
  std::string name;
  Protocol protocol = Protocol::imap;
  std::string address;  // an IP address to bind
  std::uint16_t port = 0;
  TlsMode tls = TlsMode::none;
  // Sources allowed (and required) to send a PROXY protocol header; empty:
  // the listener does not accept the PROXY protocol.
  std::vector<Cidr> proxy_protocol;
  // Allow LOGIN/USER/AUTH PLAIN before TLS from any client (otherwise only
  // from trusted_networks).
  bool allow_plaintext_auth = false;
  // LMTP: the clients (MTAs) that may connect; empty: trusted_networks.
  std::vector<Cidr> allow;
};

struct Node {
  std::string name;  // unique over all islands
  std::string host;
  std::map<Protocol, std::uint16_t> ports;
  TlsMode tls = TlsMode::none;
  // "tls" given per protocol ({"imap": "starttls", "lmtp": "none"}): a node
  // may take IMAP over STARTTLS and LMTP in clear on a private network.
  std::map<Protocol, TlsMode> tls_by_protocol;
  std::string tls_name;  // the name its certificate must carry; default: host
  // Draining: no new sessions; the ones it has stay (docs/health.md).
  bool drain = false;

  std::optional<std::uint16_t> port_for(Protocol protocol) const;
  // The TLS mode for `protocol`: its own, else `tls`.
  TlsMode tls_for(Protocol protocol) const {
    auto it = tls_by_protocol.find(protocol);
    return it == tls_by_protocol.end() ? tls : it->second;
  }
};

enum class IslandPolicy : std::uint8_t {
  balance,         // any healthy node; new sessions go to the one with the fewest
  active_passive,  // only the node holding the island's active role (docs/health.md)
};
std::string_view name_of(IslandPolicy policy);

// Health checking of nodes (backends/health.hpp, docs/health.md): global
// defaults in "health", overridden per island in "islands[].health".
struct Health {
  bool active = true;                               // false: no active checks, no down state
  Duration interval = std::chrono::seconds(5);      // between checks of a node that is up
  Duration down_interval = std::chrono::seconds(2); // between checks of a node that is down
  Duration timeout = std::chrono::seconds(2);       // one check: connect, TLS, greeting (LHLO)
  unsigned rise = 2;         // consecutive good checks to come back up
  unsigned fall = 2;         // consecutive failed checks (or session reports) to go down
  bool lmtp_lhlo = false;    // LMTP: also send LHLO and expect 250
  bool operator==(const Health&) const = default;
};

struct Island {
  std::string name;
  IslandPolicy policy = IslandPolicy::balance;
  std::string active;  // active-passive: the node holding the role at start (default: the first)
  std::vector<Node> nodes;
  Health health;  // the global "health", with this island's overrides applied
};

// A cache in front of a network directory (see director/caching_directory.hpp).
struct DirectoryCache {
  bool enabled = true;
  Duration positive_ttl = std::chrono::minutes(5);  // a found user is trusted this long
  Duration negative_ttl = std::chrono::seconds(60); // "no such user" is trusted this long
  // After its TTL, an entry is still served while the directory is failing,
  // for at most this long past expiry (logged and counted each time).
  Duration stale_if_error = std::chrono::hours(1);
  std::size_t max_entries = 100000;  // least recently used entries go first
  // A refresh that finds a user on another island closes the user's
  // sessions on the old one (a change made outside `isthmusctl move`).
  bool close_on_island_change = true;
  bool operator==(const DirectoryCache&) const = default;
};

// TLS towards a directory server.
struct DirectoryTls {
  std::filesystem::path ca;  // PEM bundle; empty: the system's CAs
  bool verify = true;        // chain and host name
  bool operator==(const DirectoryTls&) const = default;
};

// LDAP: the user's entry carries the island (RFC 4511 search, RFC 4515 filter).
struct LdapDirectory {
  std::vector<std::string> uris;  // ldap://host:port or ldaps://host:port, tried in order
  bool starttls = false;          // StartTLS on ldap:// URIs (required, never optional)
  DirectoryTls tls;
  std::string bind_dn;            // the service account; empty: anonymous
  std::filesystem::path bind_password_file;
  std::string bind_password;      // read from bind_password_file at load (trailing newline dropped)
  std::string base;               // search base
  std::string scope = "sub";      // base | one | sub
  // %{user}, %{localpart}, %{domain}: RFC 4515-escaped values.
  std::string filter = "(&(objectClass=mailIslandUser)(uid=%{user}))";
  std::string island_attribute = "mailIsland";
  std::string state_attribute = "mailAccountState";       // absent on an entry: active
  std::string node_login_attribute = "mailNodeLogin";     // absent on an entry: the login name
  // The attribute the filter matches the login name against: its value is
  // the directory's spelling of the name (see UserEntry::login). Empty:
  // the normalised name as the client gave it.
  std::string login_attribute = "uid";
  std::string password_attribute;  // optional: a crypt(3) hash for authentication "directory"
  unsigned pool = 4;                                       // connections
  Duration timeout = std::chrono::seconds(3);              // one lookup, all retries
  Duration connect_timeout = std::chrono::seconds(2);      // one server, TCP + TLS + bind
  Duration max_backoff = std::chrono::seconds(30);         // between reconnects to a failing server
  // Account writes (the admin API's POST /v1/users/NAME/account, used by
  // `isthmusctl move`): the island and state attributes of the user's entry
  // are replaced, bound as this DN. Empty: no writes.
  std::string write_bind_dn;
  std::filesystem::path write_bind_password_file;
  std::string write_bind_password;
  bool operator==(const LdapDirectory&) const = default;
};

// A MySQL/MariaDB connection pool: the SQL directory's and the SQL role
// store's.
struct SqlConnection {
  std::vector<std::string> servers;  // host:port (IP addresses or names), tried in order
  std::string database;
  std::string user;
  std::filesystem::path password_file;
  std::string password;  // read from password_file at load (trailing newline dropped)
  bool tls = false;
  DirectoryTls tls_options;
  unsigned pool = 4;
  Duration timeout = std::chrono::seconds(3);  // one query, all retries
  Duration connect_timeout = std::chrono::seconds(2);
  Duration max_backoff = std::chrono::seconds(30);
  bool operator==(const SqlConnection&) const = default;
};

// SQL (MySQL, MariaDB, MySQL Cluster SQL nodes): one prepared statement.
struct SqlDirectory : SqlConnection {
  // %{user}, %{localpart}, %{domain} become ? parameters. Columns by
  // position: island, state, password hash (may be NULL), node login (may be NULL).
  std::string query;     // default: default_sql_query()
  // Account writes (POST /v1/users/NAME/account, used by `isthmusctl
  // move`): UPDATE statements with %{value} (the new state or island) and
  // %{user}, %{localpart}, %{domain}; both empty: no writes. They run with
  // write_user / its password when set, else with the lookups' account.
  std::string set_state;
  std::string set_island;
  std::string write_user;
  std::filesystem::path write_password_file;
  std::string write_password;
  bool writes() const { return !set_state.empty() || !set_island.empty(); }
  bool operator==(const SqlDirectory&) const = default;
};
std::string_view default_sql_query();

struct DirectoryConfig {
  std::string type = "static";  // static | ldap | sql
  std::filesystem::path file;   // static: the user map, resolved against the config's folder
  LdapDirectory ldap;
  SqlDirectory sql;
  DirectoryCache cache;
  // Readiness (systemd Type=notify) does not wait for an LDAP/SQL directory
  // to answer once.
  bool optional = false;
};

// Who decides whether a password is right.
enum class AuthMode : std::uint8_t {
  backend,    // the node's answer decides (Isthmus passes the client's credentials on)
  directory,  // Isthmus checks (LDAP bind as the user, or the SQL password hash)
};
enum class MasterStyle : std::uint8_t {
  sasl,     // AUTHENTICATE/AUTH PLAIN, authzid = the user, authcid = the master user
  dovecot,  // LOGIN/USER "user*master" (Dovecot's auth_master_user_separator)
};

// OAuth 2.0 bearer logins (OAUTHBEARER, RFC 7628; XOAUTH2): the section
// "auth.oauth2" turns them on (docs/oauth2.md).
struct OAuth2 {
  bool enabled = false;        // the section is there
  bool oauthbearer = true;     // mechanisms offered
  bool xoauth2 = true;
  // auth.mode "directory": Isthmus checks each token itself by RFC 7662
  // token introspection (an https:// URL), then logs in to the node as the
  // master user. auth.mode "backend": the token goes to the node unchanged.
  std::string introspection_url;
  std::string client_id;                    // HTTP Basic to the endpoint; empty: none
  std::filesystem::path client_secret_file;
  std::string client_secret;                // read from client_secret_file at load
  std::filesystem::path ca;                 // PEM bundle; empty: the system's CAs
  bool verify = true;                       // chain and name of the endpoint
  std::string user_claim = "username";      // the claim that names the user
  std::string audience;                     // non-empty: "aud" must hold it
  std::string scope;                        // non-empty: "scope" must hold it
  Duration timeout = std::chrono::seconds(3);
  Duration cache_ttl = std::chrono::seconds(60);  // a verdict is remembered (at most till exp)
  std::size_t max_token = 8192;             // bytes; longer tokens are refused up front
};

struct Auth {
  AuthMode mode = AuthMode::backend;
  // Directory mode: log in to nodes as this master user on the user's behalf;
  // empty: with the user's own (already verified) password.
  std::string master_user;
  std::filesystem::path master_password_file;
  std::string master_password;  // read from master_password_file at load
  MasterStyle master_style = MasterStyle::sasl;
  std::string master_separator = "*";
  // A verdict for (user, password) is remembered this long: a spray of the
  // same guesses costs the directory one check each.
  Duration outcome_cache_ttl = std::chrono::seconds(30);
  // The login throttle (director/auth_guard.hpp, docs/tls-and-trust.md):
  // each failure from an address (and against a login name) doubles the
  // wait before that address's (name's) next check, from
  // timeouts.auth_failure_delay up to max_failure_delay; a failure's weight
  // halves every failure_half_life.
  Duration max_failure_delay = std::chrono::seconds(15);
  Duration failure_half_life = std::chrono::minutes(5);
  // A check that would wait longer is refused at once (a temporary failure).
  Duration max_throttle_wait = std::chrono::seconds(30);
  // Credentials that logged in (and the address they logged in from) are
  // not throttled for this long; 0: never exempt.
  Duration known_good_ttl = std::chrono::hours(24 * 7);
  unsigned ipv6_prefix = 64;             // IPv6 clients are counted per /64
  std::size_t throttle_entries = 65536;  // slots per throttle table (fixed at start)
  OAuth2 oauth2;
};

struct LoginNames {
  bool lowercase = true;       // ASCII letters only; other characters are left as they are
  std::string default_domain;  // added to names without '@'; empty: none
  std::size_t max_length = 256;  // bytes of UTF-8, after normalisation
};

struct Timeouts {
  Duration preauth = std::chrono::seconds(60);   // connect to logged in, whole
  Duration proxy_header = std::chrono::seconds(3);  // a PROXY protocol header, from connect
  Duration login = std::chrono::seconds(30);     // one login attempt, all nodes tried
  Duration connect = std::chrono::seconds(5);    // one TCP connect to a node
  Duration idle = std::chrono::minutes(30);      // relayed session with no traffic
  Duration half_closed = std::chrono::seconds(60);  // after one side's FIN, the other's silence
  Duration shutdown_grace = std::chrono::seconds(30);
  Duration auth_failure_delay = std::chrono::seconds(2);
  Duration lmtp_idle = std::chrono::minutes(5);      // MTA: waiting for its next command
  Duration lmtp_command = std::chrono::seconds(60);  // node: one command's answer
  Duration lmtp_data = std::chrono::minutes(10);     // the message in from the MTA
  // The message out to a node and its final answers, from the MTA's final
  // dot: kept below the MTAs' own limits (Postfix lmtp_data_done_timeout
  // 600 s, Exim's lmtp transport timeout 5 min), so a slow node gives 451,
  // never an MTA that gave up on a delivered message (docs/lmtp.md).
  Duration lmtp_final = std::chrono::minutes(4);
};

struct Limits {
  std::size_t max_line = 8192;       // one command line, literals excluded
  std::size_t max_literal = 8192;    // one literal before login
  std::size_t max_preauth_commands = 30;
  // A password longer than this (bytes) is refused before any directory or
  // node sees it: no server takes one of several KiB.
  std::size_t max_password = 1024;
  // Connections not yet logged in, per client address (its PROXY header's
  // or ID's address where believed; IPv6 per auth.ipv6_prefix). 0: no cap.
  std::size_t max_preauth_per_address = 20;
  // Client connections in all (IMAP, POP3, LMTP); at the limit, the oldest
  // connection not yet logged in is closed to admit a new one. 0: from the
  // descriptor limit (RLIMIT_NOFILE), two per connection and a reserve.
  std::size_t max_connections = 0;
  std::uint64_t max_message_size = 50ULL << 20;  // LMTP SIZE
  std::size_t max_recipients = 1000;             // LMTP recipients per transaction
};

struct Lmtp {
  std::filesystem::path spool_dir = "/tmp";    // large messages go to unlinked files here
  std::size_t memory_spool = 1 << 20;          // bytes kept in memory before that
  std::string hostname;                        // in greetings and LHLO; default: host name
  // A message with this many Received: lines has looped (RFC 5321 section
  // 6.3): 554 5.4.6 for every recipient. Isthmus adds its own Received:.
  unsigned max_hops = 50;
  // LMTP connections this instance holds to one node at most; past that
  // the node is skipped (451 4.4.5 when no node of the island is left).
  unsigned max_node_connections = 64;
  // AUTH PLAIN to every LMTP node after LHLO (and STARTTLS), for nodes that
  // want their LMTP clients to authenticate (Cyrus' lmtpd without -a:
  // docs/nodes-cyrus.md). Empty: no AUTH.
  std::string node_user;
  std::filesystem::path node_password_file;
  std::string node_password;  // read from node_password_file at load
};

// What the ManageSieve front door says before login (RFC 5804 section
// 1.7). After login the client talks to its node, whose own CAPABILITY
// answer is the one that counts; these should match what the nodes offer.
struct ManageSieve {
  // The "SIEVE" capability: the Sieve extensions the nodes support.
  std::string sieve_extensions =
      "fileinto reject envelope encoded-character vacation subaddress "
      "comparator-i;ascii-numeric relational regex imap4flags copy include variables body "
      "enotify environment mailbox date index ihave duplicate mime foreverypart extracttext";
  std::string notify_methods = "mailto";  // "NOTIFY" (omitted when empty)
  unsigned max_redirects = 0;             // "MAXREDIRECTS" (omitted when 0)
};

// The certificate Isthmus presents to clients.
struct ServerTls {
  std::filesystem::path certificate;  // PEM, the chain (leaf first)
  std::filesystem::path key;          // PEM
  std::string min_version = "1.2";    // "1.2" or "1.3"
};

// How Isthmus checks the nodes' certificates.
struct NodeTls {
  std::filesystem::path ca;  // PEM bundle; empty: the system's CAs
  bool verify = true;        // chain and name; false only for tests
};

// Who decides an active-passive island's role, and what a move sets off
// (backends/role_store.hpp, docs/health.md).
enum class RoleStoreKind : std::uint8_t {
  local,  // this instance alone
  sql,    // a row per island shared by every instance (compare-and-set on an epoch)
};

struct Roles {
  RoleStoreKind store = RoleStoreKind::local;
  SqlConnection sql;                              // store "sql"
  Duration poll_interval = std::chrono::seconds(1);   // sql: heartbeat, views, follow the rows
  Duration instance_timeout = std::chrono::seconds(5);  // sql: a heartbeat older is a dead instance
  // sql: an instance unheard of for this long is gone for good and no longer
  // counts in the majority (until then, a dead instance is a vote against).
  Duration instance_expiry = std::chrono::hours(24);
  // Run (no shell) when this instance moves a role: ISLAND, OLD_NODE,
  // NEW_NODE, EPOCH, INSTANCE in its environment. Empty: none.
  std::vector<std::string> hook;
  Duration hook_timeout = std::chrono::seconds(10);
  // Sessions on a node that lost its island's role, or went down, are
  // closed at random moments over this long (not all clients at once).
  Duration close_spread = std::chrono::seconds(5);
  bool operator==(const Roles&) const = default;
};

// Moves as jobs of the daemon (moves/move_jobs.hpp, docs/move.md "Moves
// as jobs"): present when the config has a "moves" section.
enum class MoveStoreKind : std::uint8_t { file, sql };
struct Moves {
  bool enabled = false;
  // The mover the job runs, and its config (isthmusctl.json's "instances"
  // and "move" sections).
  std::filesystem::path mover = "/usr/lib/isthmus/isthmus-move";
  std::filesystem::path mover_config;
  // sql: the jobs in the role store's database (roles.sql), so every
  // instance sees them and takes over a dead instance's move; file: in
  // `dir`, this instance's alone. Default: sql when roles.store is sql.
  MoveStoreKind store = MoveStoreKind::file;
  std::filesystem::path dir = "/var/lib/isthmus/moves";  // journals (and file jobs)
  Duration lease = std::chrono::seconds(30);  // a job unrenewed this long is taken over
  Duration poll_interval = std::chrono::seconds(1);
  Duration keep = std::chrono::hours(24 * 7);  // finished jobs are kept this long
  unsigned max_running = 2;                    // jobs this instance runs at once
  bool operator==(const Moves&) const = default;
};

// The admin API (admin/admin_server.hpp, docs/operations.md).
struct Admin {
  std::filesystem::path socket;  // a unix socket (mode 0660); empty: none
  std::string listen;            // "127.0.0.1:8025" (TCP, needs a token); empty: none
  std::filesystem::path token_file;
  std::string token;  // read from token_file at load
  bool operator==(const Admin&) const = default;
};

struct Config {
  std::filesystem::path path;  // the file it came from
  std::string instance;        // a name for this instance (logs, admin)
  unsigned workers = 0;        // 0: one per core
  LogSettings log;
  std::vector<Listener> listeners;
  std::vector<Island> islands;
  Health health;  // the defaults; each island holds its effective settings
  Roles roles;
  Moves moves;
  Admin admin;
  DirectoryConfig directory;
  Auth auth;
  LoginNames login_names;
  Timeouts timeouts;
  Limits limits;
  Lmtp lmtp;
  ManageSieve managesieve;
  std::optional<ServerTls> tls;
  NodeTls node_tls;
  // Clients from these networks may log in without TLS, and what they say
  // about a client behind them (IMAP ID, proxy TTL) is believed.
  std::vector<Cidr> trusted_networks;
  // Hops a login may take through proxies that forward it (loop guard).
  unsigned proxy_ttl = 5;

  const Island* find_island(std::string_view name) const;
};

// Thrown by the loader; what() holds every problem found, one per line, each
// naming its place ("FILE:LINE:COL: ..." or "FILE: /json/pointer: ...").
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace isthmus::config
