#include "sql/config_settings.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace isthmus::sql {

ClientSettings client_settings(const config::SqlConnection& settings, std::string name) {
  ClientSettings out;
  for (const auto& text : settings.servers) {
    auto address = parse_server_address(text);
    if (!address)
      throw std::runtime_error(fmt::format("{}: server \"{}\" is not host:port", name, text));
    out.servers.push_back(std::move(*address));
  }
  if (out.servers.empty()) throw std::runtime_error(name + ": no servers");
  out.database = settings.database;
  out.user = settings.user;
  out.password = settings.password;
  out.tls = settings.tls;
  out.tls_ca = settings.tls_options.ca.string();
  out.tls_verify = settings.tls_options.verify;
  out.pool = settings.pool;
  out.connect_timeout = settings.connect_timeout;
  out.max_backoff = settings.max_backoff;
  out.name = std::move(name);
  return out;
}

}  // namespace isthmus::sql
