#pragma once
// RFC 4515 search filters: escaping a value before it goes into one.

#include <string>
#include <string_view>

namespace isthmus::ldap {

// `value` as an RFC 4515 assertion value (section 3): the five octets that
// would end or change the filter -- '*' (a wildcard), '(' and ')' (nesting),
// '\' (an escape) and NUL -- become \2a \28 \29 \5c \00. UTF-8 stays as it
// is (valueencoding allows UTF1SUBSET / UTFMB); octets that are not part of
// a well-formed UTF-8 sequence are escaped as \XX too, so the server sees
// exactly the octets it was given and never a malformed string. A pure
// function: the result is always a literal equality value, whatever the input.
std::string escape_filter_value(std::string_view value);

}  // namespace isthmus::ldap
