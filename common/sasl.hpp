#pragma once
// SASL messages as pure functions over bytes: what the client sent once
// base64 was decoded. Protocol sessions own the wire (IMAP AUTHENTICATE,
// POP3 AUTH, ManageSieve AUTHENTICATE); these only say what the message
// means, so every front door reads credentials the same way.

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

}  // namespace isthmus
