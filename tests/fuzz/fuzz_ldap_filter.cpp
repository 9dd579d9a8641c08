// RFC 4515 escaping of values put into LDAP filters (ldap/filter).
//
// Invariants: the output holds none of * ( ) NUL unescaped, every backslash
// starts a \XX escape, the output is well-formed UTF-8 (or ASCII), and
// unescaping gives back the input exactly (so escaping is injective: two
// different login names can never become the same filter value).

#include "fuzz_check.hpp"
#include "ldap/filter.hpp"

using isthmus::fuzz::as_view;

namespace {

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80           ? 1
                    : (c >> 5) == 0x6  ? 2
                    : (c >> 4) == 0xE  ? 3
                    : (c >> 3) == 0x1E ? 4
                                       : 0;
    if (n == 0 || i + n > s.size()) return false;
    std::uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (std::size_t k = 1; k < n; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = cp << 6 | (d & 0x3F);
    }
    const std::uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  const std::string out = isthmus::ldap::escape_filter_value(input);
  FUZZ_CHECK(valid_utf8(out));
  std::string back;
  for (std::size_t i = 0; i < out.size(); ++i) {
    char c = out[i];
    FUZZ_CHECK(c != '*' && c != '(' && c != ')' && c != '\0');
    if (c == '\\') {
      FUZZ_CHECK(i + 2 < out.size());
      int hi = hex(out[i + 1]), lo = hex(out[i + 2]);
      FUZZ_CHECK(hi >= 0 && lo >= 0);
      back += static_cast<char>(hi << 4 | lo);
      i += 2;
    } else {
      back += c;
    }
  }
  FUZZ_CHECK(back == input);
  return 0;
}
