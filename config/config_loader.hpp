#pragma once
#include "config/config.hpp"

#include <filesystem>
#include <string_view>

namespace isthmus::config {

// Reads and validates a config file (JSON; // and /* */ comments allowed).
// Throws ConfigError listing every problem with its place; unknown keys are
// errors. Relative file names inside are resolved against the file's folder.
Config load_config(const std::filesystem::path& file);

// The same from text; `source` names it in error messages.
Config parse_config(std::string_view text, const std::string& source,
                    const std::filesystem::path& base_dir);

}  // namespace isthmus::config
