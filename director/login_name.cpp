#include "director/login_name.hpp"

#include "common/strings.hpp"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

#include <algorithm>

namespace isthmus::director {

bool valid_utf8(std::string_view text) {
  std::size_t i = 0;
  const std::size_t n = text.size();
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  while (i < n) {
    const unsigned char c = byte(i);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t length = 0;
    unsigned char low = 0x80, high = 0xbf;  // bounds of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      length = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      length = 3;
      if (c == 0xe0) low = 0xa0;   // no overlong forms
      if (c == 0xed) high = 0x9f;  // no surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      length = 4;
      if (c == 0xf0) low = 0x90;
      if (c == 0xf4) high = 0x8f;  // nothing past U+10FFFF
    } else {
      return false;
    }
    if (i + length > n) return false;
    if (byte(i + 1) < low || byte(i + 1) > high) return false;
    for (std::size_t k = 2; k < length; ++k)
      if (byte(i + k) < 0x80 || byte(i + k) > 0xbf) return false;
    i += length;
  }
  return true;
}

namespace {

// C0, space, DEL, and the C1 controls (U+0080..U+009F, UTF-8 C2 80..C2 9F).
bool has_controls(std::string_view name) {
  for (std::size_t i = 0; i < name.size(); ++i) {
    const auto u = static_cast<unsigned char>(name[i]);
    if (u <= 0x20 || u == 0x7f) return true;
    if (u == 0xc2 && i + 1 < name.size()) {
      const auto next = static_cast<unsigned char>(name[i + 1]);
      if (next >= 0x80 && next <= 0x9f) return true;
    }
  }
  return false;
}

std::optional<std::string> to_nfc(std::string_view name) {
  if (std::all_of(name.begin(), name.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(name);  // ASCII is always NFC
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status) || nfc == nullptr) return std::nullopt;
  std::string out;
  icu::StringByteSink<std::string> sink(&out);
  nfc->normalizeUTF8(0, icu::StringPiece(name.data(), static_cast<int32_t>(name.size())), sink,
                     nullptr, status);
  if (U_FAILURE(status)) return std::nullopt;
  return out;
}

}  // namespace

std::optional<std::string> normalise_login(std::string_view raw, const config::LoginNames& rules) {
  // Bound the work before any Unicode processing (NFC may grow a name 3x).
  if (raw.empty() || raw.size() > rules.max_length) return std::nullopt;
  if (has_controls(raw) || !valid_utf8(raw)) return std::nullopt;
  auto nfc = to_nfc(raw);
  if (!nfc || has_controls(*nfc)) return std::nullopt;
  std::string name = rules.lowercase ? ascii_lowercase(*nfc) : std::move(*nfc);
  const auto ats = std::count(name.begin(), name.end(), '@');
  if (ats > 1 || name.front() == '@' || name.back() == '@') return std::nullopt;
  if (ats == 0 && !rules.default_domain.empty()) {
    name += '@';
    name += rules.lowercase ? ascii_lowercase(rules.default_domain) : rules.default_domain;
  }
  if (name.size() > rules.max_length) return std::nullopt;
  return name;
}

}  // namespace isthmus::director
