// Directory query templates (director/directory parse_template) as the SQL
// directory turns them into a prepared statement (%{user} -> ?, with the
// parameter order: sql_statement_from_template, sql_parameters) and the
// LDAP directory into a filter (render_ldap_filter, RFC 4515 escaping).
//
// Input: a template, a NUL, a login name (then, optionally, a NUL and the
// value a write statement sets: %{value}).
//
// Invariants:
// - the pieces put back together are the template (nothing lost or added);
// - the statement has one ? per placeholder (the config refuses templates
//   with a ? of their own), in order, and no placeholder left; putting the
//   placeholders back where the ?s are gives the template;
// - the bound values are the login name's parts, as they are;
// - a rendered LDAP filter has exactly the template's unescaped parentheses
//   and wildcards: no login name can change the filter's structure.

#include "director/directory.hpp"
#include "director/ldap_directory.hpp"
#include "director/sql_directory.hpp"
#include "fuzz_check.hpp"

using namespace isthmus::director;
using Field = TemplatePiece::Field;
using isthmus::fuzz::as_view;

namespace {

std::string placeholder(Field f) {
  switch (f) {
    case Field::user:
      return "%{user}";
    case Field::localpart:
      return "%{localpart}";
    case Field::domain:
      return "%{domain}";
    case Field::value:
      return "%{value}";
    case Field::none:
      break;
  }
  return "";
}

// '(' ')' '*' outside \XX escapes (template text may hold escapes too).
std::string structure(std::string_view filter) {
  std::string out;
  for (std::size_t i = 0; i < filter.size(); ++i) {
    if (filter[i] == '\\') {
      i += 2;
      continue;
    }
    if (filter[i] == '(' || filter[i] == ')' || filter[i] == '*') out += filter[i];
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  const auto nul = input.find('\0');
  const std::string_view tmpl = input.substr(0, nul);
  std::string_view user = nul == std::string_view::npos ? "" : input.substr(nul + 1);
  std::string_view value;
  if (const auto second = user.find('\0'); second != std::string_view::npos) {
    value = user.substr(second + 1);
    user = user.substr(0, second);
  }

  const auto pieces = parse_template(tmpl);
  FUZZ_CHECK(!pieces.empty() && pieces.back().field == Field::none);
  std::string joined;
  std::vector<Field> fields;
  for (const auto& p : pieces) {
    joined += p.text + placeholder(p.field);
    if (p.field != Field::none) fields.push_back(p.field);
  }
  FUZZ_CHECK(joined == tmpl);

  const SqlStatement s = sql_statement_from_template(tmpl);
  FUZZ_CHECK(s.parameters == fields);
  if (tmpl.find('?') == std::string_view::npos) {
    std::string back;
    std::size_t k = 0;
    for (char c : s.text) {
      if (c == '?') {
        FUZZ_CHECK(k < s.parameters.size());
        back += placeholder(s.parameters[k++]);
      } else {
        back += c;
      }
    }
    FUZZ_CHECK(k == s.parameters.size());
    FUZZ_CHECK(back == tmpl);
  }
  for (const auto& p : parse_template(s.text)) FUZZ_CHECK(p.field == Field::none);

  const auto values = sql_parameters(s, user, value);
  FUZZ_CHECK(values.size() == s.parameters.size());
  LoginParts parts = split_login(user);
  FUZZ_CHECK(parts.value.empty());
  parts.value = std::string(value);
  FUZZ_CHECK(parts.user == user);
  if (user.find('@') != std::string_view::npos)
    FUZZ_CHECK(parts.localpart + "@" + parts.domain == user);
  else
    FUZZ_CHECK(parts.localpart == user && parts.domain.empty());
  for (std::size_t i = 0; i < values.size(); ++i)
    FUZZ_CHECK(values[i] == value_of(parts, s.parameters[i]));

  // The LDAP filter from the same template: only the template decides its
  // structure. (Template text is the operator's: compare with the template
  // rendered for a harmless name.)
  // (A template with a backslash of its own could escape the value's first
  // byte: that is the operator's template, checked by the config loader.)
  if (tmpl.find('\\') == std::string_view::npos) {
    const std::string filter = render_ldap_filter(pieces, parts);
    const std::string plain = render_ldap_filter(pieces, split_login("a@b"));
    FUZZ_CHECK(structure(filter) == structure(plain));
  }
  return 0;
}
