#include "common/log.hpp"

#include <fmt/format.h>
#include <mutex>
#include <vector>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace isthmus {

std::string sanitize(std::string_view remote, std::size_t max_len) {
  std::string out;
  out.reserve(std::min(remote.size(), max_len) + 3);
  std::size_t taken = 0;
  for (char c : remote) {
    if (taken == max_len) {
      out += "...";
      break;
    }
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && u != '\\') {
      out += c;
    } else {
      fmt::format_to(std::back_inserter(out), "\\x{:02x}", u);
    }
    ++taken;
  }
  return out;
}

void setup_logging(const LogSettings& settings) {
  std::shared_ptr<spdlog::logger> logger;
  if (settings.file.empty()) {
    logger = std::make_shared<spdlog::logger>(
        "isthmus", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  } else {
    logger = std::make_shared<spdlog::logger>(
        "isthmus", std::make_shared<spdlog::sinks::basic_file_sink_mt>(settings.file));
  }
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  logger->set_level(settings.level);
  logger->flush_on(spdlog::level::trace);
  // spdlog::info() and friends use the default logger through a raw
  // pointer: a thread logging while it is replaced (a directory's or the
  // health checker's thread, started before the config's log settings are
  // applied) would use a destroyed logger. Replaced loggers are therefore
  // kept for the life of the process (a handful at most: one per start or
  // --check-config, never per reload).
  static std::mutex mutex;
  static std::vector<std::shared_ptr<spdlog::logger>> retired;
  std::lock_guard lock(mutex);
  if (auto old = spdlog::default_logger()) retired.push_back(std::move(old));
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace isthmus
