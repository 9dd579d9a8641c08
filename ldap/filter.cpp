#include "ldap/filter.hpp"

#include <cstdint>

namespace isthmus::ldap {

namespace {

// The length of the well-formed UTF-8 sequence (RFC 3629 section 4) that
// starts at `at`, or 0 if the octets there are not one.
std::size_t utf8_sequence_length(std::string_view text, std::size_t at) {
  const auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(text[i]); };
  const std::uint8_t lead = byte(at);
  std::size_t length = 0;
  std::uint8_t low = 0x80;
  std::uint8_t high = 0xBF;  // the allowed range of the second octet
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // no overlong forms
    if (lead == 0xED) high = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // no overlong forms
    if (lead == 0xF4) high = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (at + length > text.size()) return 0;
  if (byte(at + 1) < low || byte(at + 1) > high) return 0;
  for (std::size_t i = 2; i < length; ++i) {
    if (byte(at + i) < 0x80 || byte(at + i) > 0xBF) return 0;
  }
  return length;
}

void append_escaped(std::string& out, std::uint8_t octet) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('\\');
  out.push_back(kHex[octet >> 4]);
  out.push_back(kHex[octet & 0x0F]);
}

}  // namespace

std::string escape_filter_value(std::string_view value) {
  std::string out;
  out.reserve(value.size() + 8);
  std::size_t at = 0;
  while (at < value.size()) {
    const auto octet = static_cast<std::uint8_t>(value[at]);
    if (octet < 0x80) {
      if (octet == '*' || octet == '(' || octet == ')' || octet == '\\' || octet == '\0') {
        append_escaped(out, octet);
      } else {
        out.push_back(static_cast<char>(octet));
      }
      ++at;
      continue;
    }
    const std::size_t length = utf8_sequence_length(value, at);
    if (length == 0) {
      append_escaped(out, octet);
      ++at;
      continue;
    }
    out.append(value.substr(at, length));
    at += length;
  }
  return out;
}

}  // namespace isthmus::ldap
