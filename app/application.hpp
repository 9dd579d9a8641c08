#pragma once
// The composition root: reads the config, builds the runtime snapshot
// (topology, directory), runs the server, and handles signals:
// SIGHUP reloads, SIGTERM/SIGINT shut down gracefully.

#include "proxy/runtime.hpp"

#include <filesystem>
#include <memory>

namespace isthmus::app {

// Builds a runtime from a config file: config, topology (resolving hosts;
// blocking), directory. Throws config::ConfigError listing what is wrong.
// `connect` false (--check-config): LDAP/SQL directories are validated but
// not created, so a check never opens connections to directory servers.
std::shared_ptr<const proxy::Runtime> build_runtime(const std::filesystem::path& config_file,
                                                    const proxy::Runtime* previous,
                                                    bool connect = true);

// Runs until SIGTERM/SIGINT and the graceful shutdown are done. Returns the
// process exit code.
int run(const std::filesystem::path& config_file);

}  // namespace isthmus::app
