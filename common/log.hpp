#pragma once
// Logging: spdlog, one line per event. Remote strings (login names, node
// replies, client IDs) go through sanitize() before they reach a log line.

#include <spdlog/spdlog.h>

#include <string>
#include <string_view>

namespace isthmus {

// Printable ASCII is kept; anything else becomes \xNN; longer input is cut
// at `max_len` and marked with "...".
std::string sanitize(std::string_view remote, std::size_t max_len = 200);

struct LogSettings {
  spdlog::level::level_enum level = spdlog::level::info;
  std::string file;  // empty: standard error
};

// Installs the process-wide logger. Throws std::runtime_error if the file
// cannot be opened.
void setup_logging(const LogSettings& settings);

}  // namespace isthmus
