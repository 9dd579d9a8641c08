#include "config/config.hpp"

#include <algorithm>

namespace isthmus::config {

std::string_view name_of(Protocol protocol) {
  switch (protocol) {
    case Protocol::imap: return "imap";
    case Protocol::pop3: return "pop3";
    case Protocol::lmtp: return "lmtp";
    case Protocol::managesieve: return "managesieve";
  }
  return "?";
}

std::optional<Protocol> protocol_from_name(std::string_view name) {
  if (name == "imap") return Protocol::imap;
  if (name == "pop3") return Protocol::pop3;
  if (name == "lmtp") return Protocol::lmtp;
  if (name == "managesieve") return Protocol::managesieve;
  return std::nullopt;
}

std::string_view name_of(TlsMode mode) {
  switch (mode) {
    case TlsMode::none: return "none";
    case TlsMode::starttls: return "starttls";
    case TlsMode::implicit: return "implicit";
  }
  return "?";
}

std::string_view name_of(IslandPolicy policy) {
  switch (policy) {
    case IslandPolicy::balance: return "balance";
    case IslandPolicy::active_passive: return "active-passive";
  }
  return "?";
}

std::optional<std::uint16_t> Node::port_for(Protocol protocol) const {
  auto it = ports.find(protocol);
  if (it == ports.end()) return std::nullopt;
  return it->second;
}

const Island* Config::find_island(std::string_view name) const {
  auto it = std::find_if(islands.begin(), islands.end(),
                         [&](const Island& island) { return island.name == name; });
  return it == islands.end() ? nullptr : &*it;
}

}  // namespace isthmus::config

namespace isthmus::config {

// The CalMail-style lookup of deploy/sql/calmail-schema.sql.
std::string_view default_sql_query() {
  return "SELECT a.island, a.state, a.password, "
         "COALESCE(a.node_login, CONCAT(a.localpart, '@', d.name)) AS node_login "
         "FROM account a JOIN domain d ON d.id = a.domain_id "
         "WHERE a.localpart = %{localpart} AND d.name = %{domain}";
}

}  // namespace isthmus::config
