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

enum class Protocol : std::uint8_t { imap, pop3, lmtp };
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
  std::string tls_name;  // the name its certificate must carry; default: host

  std::optional<std::uint16_t> port_for(Protocol protocol) const;
};

enum class IslandPolicy : std::uint8_t {
  balance,  // any healthy node; new sessions go to the one with the fewest
};
std::string_view name_of(IslandPolicy policy);

struct Island {
  std::string name;
  IslandPolicy policy = IslandPolicy::balance;
  std::vector<Node> nodes;
};

struct DirectoryConfig {
  std::string type = "static";
  std::filesystem::path file;  // static: the user map, resolved against the config's folder
};

struct LoginNames {
  bool lowercase = true;
  std::string default_domain;  // added to names without '@'; empty: none
  std::size_t max_length = 256;
};

struct Timeouts {
  Duration preauth = std::chrono::seconds(60);   // connect to logged in, whole
  Duration login = std::chrono::seconds(30);     // one login attempt, all nodes tried
  Duration connect = std::chrono::seconds(5);    // one TCP connect to a node
  Duration idle = std::chrono::minutes(30);      // relayed session with no traffic
  Duration shutdown_grace = std::chrono::seconds(30);
  Duration auth_failure_delay = std::chrono::seconds(2);
  Duration lmtp_idle = std::chrono::minutes(5);      // MTA: waiting for its next command
  Duration lmtp_command = std::chrono::seconds(60);  // node: one command's answer
  Duration lmtp_data = std::chrono::minutes(10);     // message in, or the node's final answers
};

struct Limits {
  std::size_t max_line = 8192;       // one command line, literals excluded
  std::size_t max_literal = 8192;    // one literal before login
  std::size_t max_preauth_commands = 30;
  std::uint64_t max_message_size = 50ULL << 20;  // LMTP SIZE
  std::size_t max_recipients = 1000;             // LMTP recipients per transaction
};

struct Lmtp {
  std::filesystem::path spool_dir = "/tmp";    // large messages go to unlinked files here
  std::size_t memory_spool = 1 << 20;          // bytes kept in memory before that
  std::string hostname;                        // in greetings and LHLO; default: host name
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

struct Config {
  std::filesystem::path path;  // the file it came from
  std::string instance;        // a name for this instance (logs, admin)
  unsigned workers = 0;        // 0: one per core
  LogSettings log;
  std::vector<Listener> listeners;
  std::vector<Island> islands;
  DirectoryConfig directory;
  LoginNames login_names;
  Timeouts timeouts;
  Limits limits;
  Lmtp lmtp;
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
