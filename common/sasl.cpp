#include "common/sasl.hpp"

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

}  // namespace isthmus
