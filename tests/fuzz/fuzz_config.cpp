// The config loader (config/config_loader: parse_config), JSON with // and
// /* */ comments, as an operator (or a config management tool) writes it.
//
// Invariants: a config is either accepted or refused with a ConfigError,
// never any other exception or a crash; the error names places and never
// holds raw control bytes beyond its line breaks (it goes to a terminal or
// a log); an accepted config, loaded again, is accepted again.

#include <filesystem>

#include "config/config_loader.hpp"
#include "fuzz_check.hpp"

using isthmus::fuzz::as_view;

namespace {

bool clean_message(std::string_view text) {
  for (unsigned char c : text)
    if ((c < 0x20 && c != '\n') || c == 0x7f) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  // File names in a config are read (secrets, user maps). Keep the fuzzer
  // away from device files that never end.
  for (const char* device : {"/dev", "/proc", "/sys", "\\u"})
    if (input.find(device) != std::string_view::npos) return -1;
  const std::filesystem::path base = "/nonexistent-isthmus-fuzz";
  try {
    isthmus::config::parse_config(input, "fuzz.json", base);
  } catch (const isthmus::config::ConfigError& e) {
    FUZZ_CHECK(clean_message(e.what()));
    return 0;
  }
  // Accepted: accepted again (no hidden state).
  isthmus::config::parse_config(input, "fuzz.json", base);
  return 0;
}
