#pragma once
// Where an SQL server is: "host:port" as the config writes it.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace isthmus::sql {

struct ServerAddress {
  std::string host;        // a name, an IPv4 address, or an IPv6 address without brackets
  std::uint16_t port = 0;  // 1..65535
  std::string text;        // as configured, for logs

  bool operator==(const ServerAddress&) const = default;
};

// "db1.example.org:3306", "10.0.0.5:3306", "[2001:db8::5]:3306". nullopt for
// anything else: no port, a port outside 1..65535, an empty host, unbalanced
// brackets, or an IPv6 address without brackets ("::1:3306" is ambiguous).
std::optional<ServerAddress> parse_server_address(std::string_view text);

}  // namespace isthmus::sql
