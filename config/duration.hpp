#pragma once
#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace isthmus::config {

// "250ms", "30s", "5m", "1h", "0s" -> milliseconds. A bare number is not
// accepted here: the JSON loader treats numbers as seconds itself.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);

std::string format_duration(std::chrono::milliseconds d);

}  // namespace isthmus::config
