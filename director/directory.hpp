#pragma once
// Directory: where a user lives. One interface; implementations (static
// file today; LDAP, SQL and a caching decorator later) are chosen by config.
// Lookups are asynchronous so that network directories never block a worker.

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace isthmus::director {

enum class LookupStatus : std::uint8_t {
  found,
  not_found,    // the directory says there is no such user
  unavailable,  // the directory could not answer (never reported as "no such user")
};

enum class AccountState : std::uint8_t {
  active,
  disabled,  // login refused as a wrong password would be; mail refused as for an unknown user
  moving,    // being moved between islands: logins and deliveries get a temporary failure
};
std::string_view name_of(AccountState state);
std::optional<AccountState> account_state_from(std::string_view text);

struct UserEntry {
  std::string island;
  AccountState state = AccountState::active;
  std::string node_login;     // the login name on the node; empty: the normalised name
  std::string dn;             // LDAP: the user's entry, for directory authentication
  std::string password_hash;  // SQL: crypt(3) hash, for directory authentication
};

struct LookupResult {
  LookupStatus status = LookupStatus::not_found;
  UserEntry entry;
  std::string detail;  // for logs: how it was found or why it failed
};

class Directory {
 public:
  virtual ~Directory() = default;
  // `user` is a normalised login name (see login_name.hpp).
  virtual boost::asio::awaitable<LookupResult> lookup(std::string user) = 0;
  virtual std::string_view kind() const = 0;
};

}  // namespace isthmus::director
