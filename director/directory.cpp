#include "director/directory.hpp"

#include "common/strings.hpp"
#include "director/password_hash.hpp"

#include <fmt/format.h>

namespace isthmus::director {

std::string_view name_of(AccountState state) {
  switch (state) {
    case AccountState::active: return "active";
    case AccountState::disabled: return "disabled";
    case AccountState::moving: return "moving";
  }
  return "?";
}

std::optional<AccountState> account_state_from(std::string_view text) {
  if (iequals(text, "active")) return AccountState::active;
  if (iequals(text, "disabled")) return AccountState::disabled;
  if (iequals(text, "moving")) return AccountState::moving;
  return std::nullopt;
}

std::string_view name_of(PasswordCheck check) {
  switch (check) {
    case PasswordCheck::accepted: return "accepted";
    case PasswordCheck::rejected: return "rejected";
    case PasswordCheck::unavailable: return "unavailable";
    case PasswordCheck::unsupported: return "unsupported";
  }
  return "?";
}

boost::asio::awaitable<PasswordCheck> Directory::check_password(const UserEntry& entry,
                                                                std::string password) {
  if (entry.password_hash.empty()) co_return PasswordCheck::unsupported;
  co_return co_await verify_password_hash_async(entry.password_hash, std::move(password));
}

boost::asio::awaitable<WriteResult> Directory::write_account(std::string /*user*/,
                                                             UserEntry /*entry*/,
                                                             AccountChange /*change*/) {
  co_return WriteResult{WriteStatus::unsupported,
                        fmt::format("the {} directory takes no writes", kind())};
}

LookupResult unavailable_result(std::string detail) {
  LookupResult result;
  result.status = LookupStatus::unavailable;
  result.detail = std::move(detail);
  return result;
}

LookupResult not_found_result(std::string detail) {
  LookupResult result;
  result.status = LookupStatus::not_found;
  result.detail = std::move(detail);
  return result;
}

LoginParts split_login(std::string_view user) {
  LoginParts parts;
  parts.user = std::string(user);
  auto at = user.rfind('@');
  if (at == std::string_view::npos) {
    parts.localpart = parts.user;
  } else {
    parts.localpart = std::string(user.substr(0, at));
    parts.domain = std::string(user.substr(at + 1));
  }
  return parts;
}

std::vector<TemplatePiece> parse_template(std::string_view text) {
  std::vector<TemplatePiece> pieces;
  TemplatePiece current;
  while (!text.empty()) {
    auto at = text.find("%{");
    auto end = at == std::string_view::npos ? at : text.find('}', at);
    if (end == std::string_view::npos) {
      current.text.append(text);
      break;
    }
    auto name = text.substr(at + 2, end - at - 2);
    using Field = TemplatePiece::Field;
    Field field = name == "user"        ? Field::user
                  : name == "localpart" ? Field::localpart
                  : name == "domain"    ? Field::domain
                  : name == "value"     ? Field::value
                                        : Field::none;
    if (field == Field::none) {  // not ours: literal text
      current.text.append(text.substr(0, end + 1));
    } else {
      current.text.append(text.substr(0, at));
      current.field = field;
      pieces.push_back(std::move(current));
      current = TemplatePiece{};
    }
    text.remove_prefix(end + 1);
  }
  pieces.push_back(std::move(current));
  return pieces;
}

const std::string& value_of(const LoginParts& parts, TemplatePiece::Field field) {
  static const std::string empty;
  switch (field) {
    case TemplatePiece::Field::user: return parts.user;
    case TemplatePiece::Field::localpart: return parts.localpart;
    case TemplatePiece::Field::domain: return parts.domain;
    case TemplatePiece::Field::value: return parts.value;
    case TemplatePiece::Field::none: break;
  }
  return empty;
}

}  // namespace isthmus::director
