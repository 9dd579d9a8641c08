#include "director/login_name.hpp"

#include "common/strings.hpp"

#include <algorithm>

namespace isthmus::director {

std::optional<std::string> normalise_login(std::string_view raw, const config::LoginNames& rules) {
  if (raw.empty() || raw.size() > rules.max_length) return std::nullopt;
  bool bad = std::any_of(raw.begin(), raw.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7f;
  });
  if (bad) return std::nullopt;
  std::string name = rules.lowercase ? ascii_lowercase(raw) : std::string(raw);
  if (name.front() == '@' || name.back() == '@') return std::nullopt;
  if (name.find('@') == std::string::npos && !rules.default_domain.empty()) {
    name += '@';
    name += rules.lowercase ? ascii_lowercase(rules.default_domain) : rules.default_domain;
    if (name.size() > rules.max_length) return std::nullopt;
  }
  return name;
}

}  // namespace isthmus::director
