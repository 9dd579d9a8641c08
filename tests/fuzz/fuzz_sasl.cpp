// SASL PLAIN (common/sasl) and base64 (common/strings): what a client sends
// to AUTHENTICATE PLAIN / AUTH PLAIN, decoded and split.
//
// Invariants: base64 decoding is strict, so it accepts only canonical text
// and encode(decode(t)) == t; decode(encode(b)) == b for any bytes; a PLAIN
// message splits into three NUL-free fields that put back together give
// the message.

#include "common/sasl.hpp"
#include "common/strings.hpp"
#include "fuzz_check.hpp"

using namespace isthmus;
using isthmus::fuzz::as_view;

namespace {

void check_plain(std::string_view message) {
  auto plain = parse_sasl_plain(message);
  std::size_t nuls = static_cast<std::size_t>(std::count(message.begin(), message.end(), '\0'));
  FUZZ_CHECK(plain.has_value() == (nuls == 2));
  if (!plain) return;
  for (const std::string* field : {&plain->authzid, &plain->authcid, &plain->password})
    FUZZ_CHECK(field->find('\0') == std::string::npos);
  FUZZ_CHECK(sasl_plain_message(plain->authzid, plain->authcid, plain->password) == message);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  // The input as what the client typed (base64 text).
  if (auto decoded = decode_base64(input)) {
    FUZZ_CHECK(encode_base64(*decoded) == input);
    check_plain(*decoded);
  }
  // The input as raw bytes.
  const std::string encoded = encode_base64(input);
  FUZZ_CHECK(encoded.size() == (size + 2) / 3 * 4);
  auto back = decode_base64(encoded);
  FUZZ_CHECK(back.has_value() && *back == input);
  check_plain(input);
  return 0;
}
