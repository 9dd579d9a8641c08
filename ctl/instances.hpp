#pragma once
// The Isthmus instances isthmusctl talks to: read from its config file
// (/etc/isthmus/isthmusctl.json, --config, $ISTHMUSCTL_CONFIG) and picked
// with --instance. docs/isthmusctl.md, "Configuration".

#include <optional>
#include <string>
#include <vector>

namespace isthmus::ctl {

inline constexpr const char* kDefaultConfig = "/etc/isthmus/isthmusctl.json";
inline constexpr double kDefaultTimeout = 5.0;  // seconds

// One instance's admin API: a unix socket, or an http:// or https:// URL
// (with a bearer token read from token_file).
struct Instance {
  std::string name;
  std::optional<std::string> socket_path;
  std::optional<std::string> url;
  std::optional<std::string> token_file;
  double timeout = kDefaultTimeout;  // seconds, per request
  std::optional<std::string> token;  // loaded by load_token()
  // Another HTTP API than Isthmus' (the mover's doveadm HTTP API): the
  // whole Authorization header value, sent instead of the bearer token;
  // for https, the CAs to check the server with ("": the system's) and
  // whether to check it at all.
  std::optional<std::string> authorization;
  std::string ca_file;
  bool verify = true;
  // From the URL:
  std::string scheme;
  std::string host;
  std::string port;
  std::string prefix;  // the URL's path, without a trailing "/"

  // Throws UsageError for a URL that is not http(s)://HOST[:PORT][/PATH].
  static Instance with_socket(std::string name, std::string path);
  static Instance with_url(std::string name, std::string url,
                           std::optional<std::string> token_file);

  bool is_unix() const { return socket_path.has_value(); }
  const std::string& address() const { return socket_path ? *socket_path : *url; }
  // How messages name the instance: `i2 (http://10.0.0.2:8025)`.
  std::string label() const;
  // Reads token_file (URLs only); throws UsageError.
  void load_token();
};

// What the global options say about the instances.
struct Selection {
  std::optional<std::string> config;      // --config
  std::vector<std::string> instances;     // --instance, in order
  std::optional<std::string> token_file;  // --token-file
  std::optional<std::string> timeout;     // --timeout
};

// The instances a command talks to, in order, duplicates dropped, tokens
// loaded. `environment_config` is $ISTHMUSCTL_CONFIG (empty: unset).
// Throws UsageError.
std::vector<Instance> select_instances(const Selection& selection,
                                       const std::string& environment_config);

}  // namespace isthmus::ctl
