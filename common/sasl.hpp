#pragma once
// SASL messages as pure functions over bytes: what the client sent once
// base64 was decoded. Protocol sessions own the wire (IMAP AUTHENTICATE,
// POP3 AUTH, ManageSieve AUTHENTICATE); these only say what the message
// means, so every front door reads credentials the same way.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace isthmus {

// RFC 4616: [authzid] NUL authcid NUL passwd. The strings are wiped when
// the value goes away.
struct SaslPlain {
  std::string authzid;
  std::string authcid;
  std::string password;

  SaslPlain() = default;
  SaslPlain(SaslPlain&&) = default;
  SaslPlain& operator=(SaslPlain&&) = default;
  SaslPlain(const SaslPlain&) = delete;
  SaslPlain& operator=(const SaslPlain&) = delete;
  ~SaslPlain();
};

// Exactly two NULs, or nullopt. Empty fields are returned as they are (an
// empty authcid or password is the login engine's to refuse).
std::optional<SaslPlain> parse_sasl_plain(std::string_view message);

// The message a client sends for `plain` (the inverse of parse_sasl_plain).
std::string sasl_plain_message(std::string_view authzid, std::string_view authcid,
                               std::string_view password);

// The SASL mechanisms Isthmus speaks: PLAIN (RFC 4616), OAUTHBEARER (RFC
// 7628) and XOAUTH2 (Google's and Microsoft's).
enum class SaslMechanism : std::uint8_t { plain, oauthbearer, xoauth2 };
std::optional<SaslMechanism> sasl_mechanism_from(std::string_view name);  // any case
std::string_view name_of(SaslMechanism mechanism);  // "PLAIN", "OAUTHBEARER", "XOAUTH2"
inline bool is_oauth(SaslMechanism m) { return m != SaslMechanism::plain; }

// An OAuth 2.0 bearer login: who (OAUTHBEARER's GS2 a=, XOAUTH2's user=)
// and the token. Wiped when it goes away.
struct SaslBearer {
  std::string user;
  std::string token;

  SaslBearer() = default;
  SaslBearer(SaslBearer&&) = default;
  SaslBearer& operator=(SaslBearer&&) = default;
  SaslBearer(const SaslBearer&) = delete;
  SaslBearer& operator=(const SaslBearer&) = delete;
  ~SaslBearer();
};

// RFC 7628 section 3.1: gs2-header ("n" or "y", then "a=" authzid with
// =2C and =3D escapes), then ^A-separated key=value pairs with
// "auth=Bearer <token>", ended by ^A^A. nullopt if malformed, if channel
// binding is asked for ("p="), or if it names no user or token.
std::optional<SaslBearer> parse_oauthbearer(std::string_view message);
// "user=<user>^Aauth=Bearer <token>^A^A".
std::optional<SaslBearer> parse_xoauth2(std::string_view message);
// The messages a client sends (for logging in to a node).
std::string oauthbearer_message(std::string_view user, std::string_view token);
std::string xoauth2_message(std::string_view user, std::string_view token);

// RFC 6750 section 2.1 b64token: letters, digits, "-._~+/", then "=" only.
bool valid_bearer_token(std::string_view token);

// The error a server sends as its last challenge when a bearer login fails
// (RFC 7628 section 3.2.2), before the client's dummy ^A and the final NO.
std::string_view oauth_failure_challenge();

}  // namespace isthmus
