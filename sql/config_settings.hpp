#pragma once
// A pool's settings from the config's SQL connection block (the directory's
// "sql" and the role store's "roles.sql" share it).

#include "config/config.hpp"
#include "sql/client.hpp"

#include <string>

namespace isthmus::sql {

// `name` prefixes the pool's log lines ("sql directory", "role store").
// Throws std::runtime_error if a server is not host:port (the config
// loader has checked that already).
ClientSettings client_settings(const config::SqlConnection& settings, std::string name);

}  // namespace isthmus::sql
