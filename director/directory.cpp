#include "director/directory.hpp"

#include "common/strings.hpp"

namespace isthmus::director {

std::string_view name_of(AccountState state) {
  switch (state) {
    case AccountState::active: return "active";
    case AccountState::disabled: return "disabled";
    case AccountState::moving: return "moving";
  }
  return "?";
}

std::optional<AccountState> account_state_from(std::string_view text) {
  if (iequals(text, "active")) return AccountState::active;
  if (iequals(text, "disabled")) return AccountState::disabled;
  if (iequals(text, "moving")) return AccountState::moving;
  return std::nullopt;
}

}  // namespace isthmus::director
