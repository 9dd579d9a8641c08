#include "common/sasl.hpp"

#include "common/strings.hpp"

#include <openssl/crypto.h>

namespace isthmus {
namespace {

void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
}

}  // namespace

SaslPlain::~SaslPlain() {
  wipe(authzid);
  wipe(authcid);
  wipe(password);
}

std::optional<SaslPlain> parse_sasl_plain(std::string_view message) {
  const auto first = message.find('\0');
  if (first == std::string_view::npos) return std::nullopt;
  const auto second = message.find('\0', first + 1);
  if (second == std::string_view::npos) return std::nullopt;
  if (message.find('\0', second + 1) != std::string_view::npos) return std::nullopt;
  SaslPlain plain;
  plain.authzid = message.substr(0, first);
  plain.authcid = message.substr(first + 1, second - first - 1);
  plain.password = message.substr(second + 1);
  return plain;
}

std::string sasl_plain_message(std::string_view authzid, std::string_view authcid,
                               std::string_view password) {
  std::string message;
  message.reserve(authzid.size() + authcid.size() + password.size() + 2);
  message.append(authzid);
  message.push_back('\0');
  message.append(authcid);
  message.push_back('\0');
  message.append(password);
  return message;
}

std::optional<SaslMechanism> sasl_mechanism_from(std::string_view name) {
  if (iequals(name, "PLAIN")) return SaslMechanism::plain;
  if (iequals(name, "OAUTHBEARER")) return SaslMechanism::oauthbearer;
  if (iequals(name, "XOAUTH2")) return SaslMechanism::xoauth2;
  return std::nullopt;
}

std::string_view name_of(SaslMechanism mechanism) {
  switch (mechanism) {
    case SaslMechanism::plain: return "PLAIN";
    case SaslMechanism::oauthbearer: return "OAUTHBEARER";
    case SaslMechanism::xoauth2: return "XOAUTH2";
  }
  return "?";
}

SaslBearer::~SaslBearer() {
  wipe(user);
  wipe(token);
}

namespace {

constexpr char kSep = '\x01';

// "Bearer <token>" (the scheme in any case, RFC 6750 section 2.1).
std::optional<std::string> bearer_of(std::string_view value) {
  if (value.size() < 8 || !iequals(value.substr(0, 7), "Bearer ")) return std::nullopt;
  std::string_view token = value.substr(7);
  if (!valid_bearer_token(token)) return std::nullopt;
  return std::string(token);
}

// key=value pairs separated by ^A and ended by ^A^A, from `rest` (which
// starts right after the first ^A); the "auth" value.
std::optional<std::string> auth_value(std::string_view rest, std::string* user_out) {
  std::optional<std::string> auth;
  for (;;) {
    const auto sep = rest.find(kSep);
    if (sep == std::string_view::npos) return std::nullopt;  // no final ^A^A
    const std::string_view pair = rest.substr(0, sep);
    rest.remove_prefix(sep + 1);
    if (pair.empty()) {
      if (!rest.empty()) return std::nullopt;  // bytes after the end
      return auth;
    }
    const auto eq = pair.find('=');
    if (eq == std::string_view::npos || eq == 0) return std::nullopt;
    const std::string_view key = pair.substr(0, eq);
    const std::string_view value = pair.substr(eq + 1);
    for (char c : key)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) return std::nullopt;
    if (key == "auth") {
      if (auth) return std::nullopt;  // twice
      auth = bearer_of(value);
      if (!auth) return std::nullopt;
    } else if (key == "user" && user_out) {
      *user_out = value;
    }
  }
}

}  // namespace

bool valid_bearer_token(std::string_view token) {
  if (token.empty()) return false;
  std::size_t i = 0;
  for (; i < token.size() && token[i] != '='; ++i) {
    const char c = token[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
    if (!ok) return false;
  }
  if (i == 0) return false;
  for (; i < token.size(); ++i)
    if (token[i] != '=') return false;
  return true;
}

std::optional<SaslBearer> parse_oauthbearer(std::string_view message) {
  // gs2-header = gs2-cb-flag "," [ "a=" saslname ] ","
  if (message.size() < 3 || (message[0] != 'n' && message[0] != 'y') || message[1] != ',')
    return std::nullopt;
  std::string_view rest = message.substr(2);
  const auto comma = rest.find(',');
  if (comma == std::string_view::npos) return std::nullopt;
  const std::string_view authzid = rest.substr(0, comma);
  rest.remove_prefix(comma + 1);
  if (rest.empty() || rest.front() != kSep) return std::nullopt;
  rest.remove_prefix(1);
  SaslBearer bearer;
  if (authzid.size() < 3 || authzid.substr(0, 2) != "a=") return std::nullopt;
  // saslname: "=2C" is ",", "=3D" is "="; any other "=" is malformed.
  const std::string_view name = authzid.substr(2);
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (name[i] != '=') {
      if (name[i] == '\0') return std::nullopt;
      bearer.user += name[i];
      continue;
    }
    if (name.substr(i, 3) == "=2C") bearer.user += ',';
    else if (name.substr(i, 3) == "=3D") bearer.user += '=';
    else return std::nullopt;
    i += 2;
  }
  auto token = auth_value(rest, nullptr);
  if (!token) return std::nullopt;
  bearer.token = std::move(*token);
  return bearer;
}

std::optional<SaslBearer> parse_xoauth2(std::string_view message) {
  SaslBearer bearer;
  std::string user;
  // The same pairs, no GS2 header: "user=" first.
  if (message.substr(0, 5) != "user=") return std::nullopt;
  auto token = auth_value(message, &user);
  if (!token || user.empty() || user.find('\0') != std::string::npos) return std::nullopt;
  bearer.user = std::move(user);
  bearer.token = std::move(*token);
  return bearer;
}

std::string oauthbearer_message(std::string_view user, std::string_view token) {
  std::string name;
  for (char c : user) {
    if (c == ',') name += "=2C";
    else if (c == '=') name += "=3D";
    else name += c;
  }
  std::string message = "n,a=" + name + ",";
  message += kSep;
  message += "auth=Bearer ";
  message += token;
  message += kSep;
  message += kSep;
  return message;
}

std::string xoauth2_message(std::string_view user, std::string_view token) {
  std::string message = "user=" + std::string(user);
  message += kSep;
  message += "auth=Bearer ";
  message += token;
  message += kSep;
  message += kSep;
  return message;
}

std::string_view oauth_failure_challenge() {
  // {"status":"invalid_token","schemes":"bearer","scope":"mail"}, base64.
  return "eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NoZW1lcyI6ImJlYXJlciIsInNjb3BlIjoibWFpbCJ9";
}

}  // namespace isthmus
