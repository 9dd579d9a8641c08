#include "sql/server_address.hpp"

namespace isthmus::sql {

namespace {

std::optional<std::uint16_t> parse_port(std::string_view digits) {
  if (digits.empty() || digits.size() > 5) return std::nullopt;
  unsigned value = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value == 0 || value > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(value);
}

}  // namespace

std::optional<ServerAddress> parse_server_address(std::string_view text) {
  ServerAddress address;
  address.text = std::string(text);
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos || close == 1) return std::nullopt;
    address.host = std::string(text.substr(1, close - 1));
    if (address.host.find(':') == std::string::npos) return std::nullopt;  // not IPv6
    auto rest = text.substr(close + 1);
    if (rest.size() < 2 || rest.front() != ':') return std::nullopt;
    port = rest.substr(1);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return std::nullopt;
    auto host = text.substr(0, colon);
    // A second colon: a bare IPv6 address, or garbage. Brackets are required.
    if (host.find_first_of(":[]") != std::string_view::npos) return std::nullopt;
    address.host = std::string(host);
    port = text.substr(colon + 1);
  }
  if (address.host.find_first_of(" \t\r\n") != std::string::npos) return std::nullopt;
  auto number = parse_port(port);
  if (!number) return std::nullopt;
  address.port = *number;
  return address;
}

}  // namespace isthmus::sql
