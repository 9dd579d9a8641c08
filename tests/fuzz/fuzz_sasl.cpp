// SASL PLAIN (common/sasl) and base64 (common/strings): what a client sends
// to AUTHENTICATE PLAIN / AUTH PLAIN, decoded and split.
//
// Invariants: base64 decoding is strict, so it accepts only canonical text
// and encode(decode(t)) == t; decode(encode(b)) == b for any bytes; a PLAIN
// message splits into three NUL-free fields that put back together give
// the message. OAUTHBEARER / XOAUTH2 messages (RFC 7628): a parsed message
// names a user without NUL or ^A and a token that is a valid RFC 6750
// b64token; written back with oauthbearer_message / xoauth2_message it
// parses to the same user and token.

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

void check_bearer(std::string_view message) {
  if (auto bearer = parse_oauthbearer(message)) {
    FUZZ_CHECK(valid_bearer_token(bearer->token));
    FUZZ_CHECK(bearer->user.find('\0') == std::string::npos);
    auto again = parse_oauthbearer(oauthbearer_message(bearer->user, bearer->token));
    FUZZ_CHECK(again && again->user == bearer->user && again->token == bearer->token);
  }
  if (auto bearer = parse_xoauth2(message)) {
    FUZZ_CHECK(valid_bearer_token(bearer->token));
    FUZZ_CHECK(!bearer->user.empty() && bearer->user.find('\0') == std::string::npos);
    FUZZ_CHECK(bearer->user.find('\x01') == std::string::npos);
    auto again = parse_xoauth2(xoauth2_message(bearer->user, bearer->token));
    FUZZ_CHECK(again && again->user == bearer->user && again->token == bearer->token);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  // The input as what the client typed (base64 text).
  if (auto decoded = decode_base64(input)) {
    FUZZ_CHECK(encode_base64(*decoded) == input);
    check_plain(*decoded);
    check_bearer(*decoded);
  }
  // The input as raw bytes.
  const std::string encoded = encode_base64(input);
  FUZZ_CHECK(encoded.size() == (size + 2) / 3 * 4);
  auto back = decode_base64(encoded);
  FUZZ_CHECK(back.has_value() && *back == input);
  check_plain(input);
  check_bearer(input);
  return 0;
}
