// The static user map (director/static_directory), as an operator writes
// it: "LOGIN ISLAND [state=...] [node_login=...]", "*@domain ISLAND",
// "* ISLAND", comments.
//
// Invariants: a map is accepted or refused with a ConfigError (clean text,
// never another exception); in an accepted map every listed user is found
// on its island by its normalised name, every domain rule and the default
// answer for names they cover.

#include "common/strings.hpp"
#include "config/config.hpp"
#include "director/login_name.hpp"
#include "director/static_directory.hpp"
#include "fuzz_check.hpp"

using namespace isthmus;
using isthmus::fuzz::as_view;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  config::LoginNames rules;
  rules.lowercase = (data[0] & 1) != 0;
  rules.default_domain = (data[0] & 2) != 0 ? "example.org" : "";
  rules.max_length = (data[0] & 4) != 0 ? 32 : 256;
  const std::string_view text = as_view(data + 1, size - 1);
  auto known = [](std::string_view island) { return island != "unknown"; };

  std::shared_ptr<director::StaticDirectory> dir;
  try {
    dir = director::StaticDirectory::parse(text, "fuzz.map", rules, known);
  } catch (const config::ConfigError& e) {
    for (unsigned char c : std::string_view(e.what())) FUZZ_CHECK(c >= 0x20 || c == '\n');
    return 0;
  }
  FUZZ_CHECK(dir != nullptr);

  // Every line, read again the simple way.
  std::string_view rest = text;
  while (!rest.empty()) {
    auto lf = rest.find('\n');
    std::string_view line = rest.substr(0, lf);
    rest = lf == std::string_view::npos ? std::string_view() : rest.substr(lf + 1);
    line = line.substr(0, line.find('#'));
    line = trim(line);
    if (line.empty()) continue;
    auto end = line.find_first_of(" \t");
    FUZZ_CHECK(end != std::string_view::npos);
    std::string_view key = line.substr(0, end);
    std::string_view after = trim(line.substr(end));
    std::string island(after.substr(0, after.find_first_of(" \t")));
    if (key == "*") {
      FUZZ_CHECK(dir->find("nobody-listed-\x01").status == director::LookupStatus::found);
    } else if (key.substr(0, 2) == "*@") {
      std::string domain(key.substr(2));
      if (rules.lowercase) domain = ascii_lowercase(domain);
      auto r = dir->find("nobody-listed-\x01@" + domain);
      FUZZ_CHECK(r.status == director::LookupStatus::found);
      FUZZ_CHECK(r.entry.island == island);
    } else {
      auto name = director::normalise_login(key, rules);
      FUZZ_CHECK(name.has_value());
      auto r = dir->find(*name);
      FUZZ_CHECK(r.status == director::LookupStatus::found);
      FUZZ_CHECK(r.entry.island == island);
      FUZZ_CHECK(r.detail == "user");
    }
  }
  return 0;
}
