#pragma once
// The one login-name normalisation every directory, every protocol and the
// admin API use (docs/directories.md, "Login names"):
//   1. the bytes must be valid UTF-8 (shortest forms, no surrogates);
//   2. no controls (C0, DEL, C1) and no spaces;
//   3. Unicode NFC, so "é" typed as e + U+0301 is the same name as U+00E9;
//   4. ASCII letters lower-cased when configured (nothing else is folded:
//      case rules beyond ASCII differ between directories and nodes);
//   5. the default domain added to a name without '@'; at most one '@',
//      never first or last;
//   6. at most `max_length` bytes after all that.
// What the node is then told is the directory's own spelling of the name
// it matched (UserEntry::login) or its node login, never the client's
// bytes (proxy/login_proxy.cpp).

#include "config/config.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace isthmus::director {

// nullopt if the name is not acceptable; the client sees that as a failed
// login (the same answer as for an unknown user).
std::optional<std::string> normalise_login(std::string_view raw, const config::LoginNames& rules);

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past
// U+10FFFF.
bool valid_utf8(std::string_view text);

}  // namespace isthmus::director
