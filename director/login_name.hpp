#pragma once
#include "config/config.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace isthmus::director {

// The login name as Isthmus routes it: lower-cased if configured, with the
// default domain added to a bare name. nullopt if the name is not acceptable
// (empty, too long, or containing control characters or spaces), which
// the client sees as a failed login.
std::optional<std::string> normalise_login(std::string_view raw, const config::LoginNames& rules);

}  // namespace isthmus::director
