#pragma once
// The LDAP directory: the user's entry carries the island.
//
// One search per lookup, on the directory thread (directory_loop.hpp):
// `base` and `scope` from the config, the filter template with %{user},
// %{localpart} and %{domain} replaced by RFC 4515-escaped values, asking
// for the island, state and node-login attributes (and the password hash
// attribute if configured). The answer, by rule:
//
//   exactly one entry with one island value   found
//   no entry                                  not_found
//   one entry without an island value         unavailable: a broken entry (mail waits)
//   more than one entry                       unavailable: never route on an ambiguous answer
//   a state value Isthmus does not know       unavailable: never a guess
//   several login values, none the name       unavailable: which one did it match?
//   any server failure or timeout             unavailable (the cache may serve a stale entry)
//
// Directory authentication binds as the entry's DN (ldap/client.hpp).

#include "config/config.hpp"
#include "director/directory.hpp"

#include <memory>
#include <string>
#include <vector>

namespace isthmus::ldap {
struct SearchResult;
}

namespace isthmus::director {

std::shared_ptr<Directory> make_ldap_directory(const config::LdapDirectory& settings);

// The search filter for one user: the template's placeholders replaced by
// RFC 4515-escaped values. Pure; exposed for tests.
std::string render_ldap_filter(const std::vector<TemplatePiece>& pieces, const LoginParts& parts);

// What a search for `user` (the normalised login name) found means for a
// lookup (the table above). Pure; exposed for tests.
LookupResult interpret_ldap_search(const config::LdapDirectory& settings,
                                   const ldap::SearchResult& result, std::string_view user);

}  // namespace isthmus::director
