#pragma once
// Directory: where a user lives. One interface; implementations (static
// file today; LDAP, SQL and a caching decorator later) are chosen by config.
// Lookups are asynchronous so that network directories never block a worker.

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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
  std::string node_login;     // the login name on the node; empty: `login`
  // The directory's own spelling of the name it matched (a directory may
  // fold case or normalise differently from Isthmus); empty: the
  // normalised name. The node is told this name, never the client's bytes.
  std::string login;
  std::string dn;             // LDAP: the user's entry, for directory authentication
  std::string password_hash;  // SQL: crypt(3) hash, for directory authentication
};

struct LookupResult {
  LookupStatus status = LookupStatus::not_found;
  UserEntry entry;
  std::string detail;  // for logs: how it was found or why it failed
};

// A lookup that failed, or found nothing; `detail` is for the log.
LookupResult unavailable_result(std::string detail);
LookupResult not_found_result(std::string detail);

// A login name cut for query templates: %{user} is the whole normalised
// name, %{localpart} what comes before its last '@', %{domain} what comes
// after (empty for a name without '@'). %{value}: the value a write
// template sets (directory.sql.writes), empty for lookups.
struct LoginParts {
  std::string user;
  std::string localpart;
  std::string domain;
  std::string value;
};
LoginParts split_login(std::string_view user);

// A filter or query template cut at its placeholders. Each implementation
// renders the values its own safe way: RFC 4515 escaping for LDAP, bound
// parameters for SQL. The config loader has rejected unknown placeholders.
struct TemplatePiece {
  enum class Field : std::uint8_t { none, user, localpart, domain, value };
  std::string text;          // literal text before the field
  Field field = Field::none; // none only for the last piece
};
std::vector<TemplatePiece> parse_template(std::string_view text);
const std::string& value_of(const LoginParts& parts, TemplatePiece::Field field);

// Directory authentication (auth mode "directory"): the answer to "is this
// the user's password?".
enum class PasswordCheck : std::uint8_t {
  accepted,
  rejected,
  unavailable,  // the directory could not answer: a temporary failure
  unsupported,  // nothing to check against (no DN, no hash): a configuration problem
};
std::string_view name_of(PasswordCheck check);

// A change of a user's account in the directory: what `isthmusctl move`
// writes (docs/move.md). Either or both; the island is written first.
struct AccountChange {
  std::optional<std::string> island;
  std::optional<AccountState> state;
};
enum class WriteStatus : std::uint8_t {
  written,      // the directory took the change
  unsupported,  // this directory (or its config) has no writes
  failed,       // the directory refused it or could not be reached: `detail` says
};
struct WriteResult {
  WriteStatus status = WriteStatus::failed;
  std::string detail;  // for the operator and the log
};

class Directory {
 public:
  virtual ~Directory() = default;
  // `user` is a normalised login name (see login_name.hpp).
  virtual boost::asio::awaitable<LookupResult> lookup(std::string user) = 0;
  virtual std::string_view kind() const = 0;

  // Checks `password` for the user `entry` was found for. The default
  // verifies entry.password_hash with crypt(3) off the worker threads
  // (password_hash.hpp); the LDAP directory binds as entry.dn instead.
  virtual boost::asio::awaitable<PasswordCheck> check_password(const UserEntry& entry,
                                                               std::string password);

  // Writes `change` for `user` (normalised), whose entry a lookup has just
  // returned (`entry`: its DN for LDAP). With the directory's write
  // settings (directory.sql.writes, directory.ldap.writes); the default:
  // unsupported. Never throws for a directory's trouble.
  virtual boost::asio::awaitable<WriteResult> write_account(std::string user, UserEntry entry,
                                                            AccountChange change);
  // Whether write_account() is configured at all (GET /v1/status says it).
  virtual bool takes_writes() const { return false; }
};

}  // namespace isthmus::director
