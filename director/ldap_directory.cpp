#include "director/ldap_directory.hpp"

#include "common/log.hpp"
#include "common/strings.hpp"
#include "director/directory_loop.hpp"
#include "ldap/client.hpp"
#include "ldap/filter.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <stdexcept>

namespace isthmus::director {

namespace asio = boost::asio;

std::string render_ldap_filter(const std::vector<TemplatePiece>& pieces, const LoginParts& parts) {
  std::string filter;
  for (const auto& piece : pieces) {
    filter += piece.text;
    if (piece.field != TemplatePiece::Field::none)
      filter += ldap::escape_filter_value(value_of(parts, piece.field));
  }
  return filter;
}

namespace {

// Dovecot-style "{CRYPT}$6$..." holds a crypt(3) string after the prefix;
// so does OpenLDAP's userPassword with the {CRYPT} scheme.
std::string without_crypt_prefix(const std::string& stored) {
  constexpr std::string_view prefix = "{CRYPT}";
  if (istarts_with(stored, prefix)) return stored.substr(prefix.size());
  return stored;
}

// Which of an entry's login values the directory matched: the one equal to
// the login name byte for byte; else the only value; else the one equal
// but for ASCII case; else none (ambiguous).
std::optional<std::string> choose_login(const std::vector<std::string> &values,
                                        std::string_view user) {
  for (const auto &value : values)
    if (value == user) return value;
  if (values.size() == 1) return values.front();
  std::optional<std::string> folded;
  for (const auto &value : values) {
    if (!iequals(value, user)) continue;
    if (folded) return std::nullopt;
    folded = value;
  }
  return folded;
}

} // namespace

LookupResult interpret_ldap_search(const config::LdapDirectory &settings,
                                   const ldap::SearchResult &result, std::string_view user) {
  if (!result.ok)
    return unavailable_result("ldap: " + result.error);
  const auto &entries = result.entries;
  if (entries.empty())
    return not_found_result("ldap: no entry matches the filter");
  if (entries.size() > 1 || result.size_limit_exceeded) {
    std::string dns;
    for (std::size_t i = 0; i < entries.size() && i < 3; ++i)
      dns += (i ? "; " : "") + sanitize(entries[i].dn, 100);
    return unavailable_result(fmt::format(
        "ldap: filter matched {}{} entries ({}{}); refusing to route "
        "on an ambiguous answer",
        result.size_limit_exceeded ? "more than " : "", entries.size(), dns,
        entries.size() > 3 ? "; ..." : ""));
  }
  const ldap::Entry &entry = entries.front();
  const std::string dn = sanitize(entry.dn, 200);

  // A user entry without an island is a broken entry, not a missing user:
  // bouncing mail for it would lose mail (a temporary failure instead).
  const auto *island = entry.values(settings.island_attribute);
  if (!island || island->empty() || island->front().empty())
    return unavailable_result(fmt::format("ldap: directory data error: entry {} has no {} value",
                                          dn, settings.island_attribute));
  if (island->size() > 1)
    return unavailable_result(fmt::format("ldap: entry {} has {} {} values", dn,
                                          island->size(),
                                          settings.island_attribute));

  LookupResult found;
  found.status = LookupStatus::found;
  found.entry.island = island->front();
  found.entry.dn = entry.dn;

  if (!settings.state_attribute.empty()) {
    const auto *state = entry.values(settings.state_attribute);
    if (state && state->size() > 1)
      return unavailable_result(fmt::format("ldap: entry {} has {} {} values",
                                            dn, state->size(),
                                            settings.state_attribute));
    if (state && !state->empty()) { // absent: active
      auto known = account_state_from(trim(state->front()));
      if (!known)
        return unavailable_result(fmt::format(
            "ldap: entry {} has an unknown {} value \"{}\" (known: "
            "active, disabled, moving)",
            dn, settings.state_attribute, sanitize(state->front(), 40)));
      found.entry.state = *known;
    }
  }
  if (!settings.node_login_attribute.empty()) {
    const auto *node_login = entry.values(settings.node_login_attribute);
    if (node_login && node_login->size() > 1)
      return unavailable_result(fmt::format("ldap: entry {} has {} {} values",
                                            dn, node_login->size(),
                                            settings.node_login_attribute));
    if (node_login && !node_login->empty())
      found.entry.node_login = node_login->front();
  }
  if (!settings.login_attribute.empty()) {
    const auto *logins = entry.values(settings.login_attribute);
    if (logins && !logins->empty()) {
      auto chosen = choose_login(*logins, user);
      if (!chosen)
        return unavailable_result(fmt::format(
            "ldap: directory data error: entry {} has {} {} values and none is the login "
            "name {}",
            dn, logins->size(), settings.login_attribute, sanitize(user, 100)));
      found.entry.login = *chosen;
    }
  }
  if (!settings.password_attribute.empty()) {
    const auto *password = entry.values(settings.password_attribute);
    if (password && !password->empty())
      found.entry.password_hash = without_crypt_prefix(password->front());
  }
  found.detail = fmt::format("ldap: {} on {}", dn, result.server);
  return found;
}

namespace {

ldap::ClientSettings client_settings(const config::LdapDirectory& settings) {
  ldap::ClientSettings client;
  client.uris = settings.uris;
  client.starttls = settings.starttls;
  client.ca_file = settings.tls.ca;
  client.verify = settings.tls.verify;
  client.bind_dn = settings.bind_dn;
  client.bind_password = settings.bind_password;
  client.pool_size = settings.pool;
  client.connect_timeout = settings.connect_timeout;
  client.max_backoff = settings.max_backoff;
  return client;
}

class LdapDirectory final : public LoopDirectory {
 public:
  explicit LdapDirectory(const config::LdapDirectory& settings)
      : LoopDirectory("isthmus-ldap"),
        settings_(settings),
        filter_(parse_template(settings.filter)),
        scope_(ldap::scope_from(settings.scope).value_or(ldap::Scope::sub)) {
    for (const std::string* name : {&settings.island_attribute, &settings.state_attribute,
                                    &settings.node_login_attribute, &settings.password_attribute,
                                    &settings.login_attribute}) {
      if (!name->empty()) attributes_.push_back(*name);
    }
    try {
      client_ = ldap::Client::create(loop().executor(), client_settings(settings));
    } catch (const std::invalid_argument& e) {
      stop_loop();
      throw config::ConfigError(std::string("directory.ldap: ") + e.what());
    }
    spdlog::info("ldap directory: {} server(s) ({}), base \"{}\", scope {}, timeout {}ms",
                 settings.uris.size(), fmt::join(settings.uris, ", "), sanitize(settings.base),
                 settings.scope, settings.timeout.count());
  }

  ~LdapDirectory() override {
    stop_loop();  // no coroutine of ours runs after this
    client_->close();
  }

  std::string_view kind() const override { return "ldap"; }
  bool takes_writes() const override { return !settings_.write_bind_dn.empty(); }

  asio::awaitable<PasswordCheck> check_password(const UserEntry& entry,
                                                std::string password) override {
    if (entry.dn.empty()) co_return PasswordCheck::unsupported;
    std::string dn = entry.dn;  // the caller's entry may not outlive the hop
    try {
      PasswordCheck checked = co_await asio::co_spawn(
          loop().executor(), check_in_loop(std::move(dn), std::move(password)),
          asio::use_awaitable);
      co_return checked;
    } catch (const std::exception& e) {
      spdlog::error("ldap: password check failed unexpectedly: {}", e.what());
      co_return PasswordCheck::unavailable;
    }
  }

 protected:
  asio::awaitable<LookupResult> lookup_in_loop(std::string user) override {
    ldap::SearchRequest request;
    request.base = settings_.base;
    request.scope = scope_;
    request.filter = render_ldap_filter(filter_, split_login(user));
    request.attributes = attributes_;
    const Deadline deadline = Deadline::after(settings_.timeout);
    ldap::SearchResult result = co_await client_->search(std::move(request), deadline);
    co_return interpret_ldap_search(settings_, result, user);
  }

  // One modify of the user's entry: the island and/or state attribute
  // replaced (atomic for the entry), bound as directory.ldap.writes.bind_dn.
  asio::awaitable<WriteResult> write_in_loop(std::string user, UserEntry entry,
                                             AccountChange change) override {
    if (settings_.write_bind_dn.empty())
      co_return WriteResult{WriteStatus::unsupported,
                            "directory.ldap.writes is not configured (a bind DN that may change "
                            "the island and state attributes)"};
    if (change.state && settings_.state_attribute.empty())
      co_return WriteResult{WriteStatus::unsupported,
                            "directory.ldap.attributes.state is empty: no state to write"};
    std::vector<ldap::Replacement> changes;
    if (change.island) changes.push_back({settings_.island_attribute, {*change.island}});
    if (change.state)
      changes.push_back({settings_.state_attribute, {std::string(name_of(*change.state))}});
    const Deadline deadline = Deadline::after(settings_.timeout);
    ldap::ModifyResult done = co_await client_->modify(entry.dn, std::move(changes),
                                                       settings_.write_bind_dn,
                                                       settings_.write_bind_password, deadline);
    if (!done.ok)
      co_return WriteResult{WriteStatus::failed,
                            fmt::format("ldap: modify of {} ({}): {}", sanitize(entry.dn, 200),
                                        sanitize(user, 100), done.detail)};
    co_return WriteResult{WriteStatus::written,
                          fmt::format("ldap: {} modified ({})", sanitize(entry.dn, 200),
                                      done.detail)};
  }

 private:
  asio::awaitable<PasswordCheck> check_in_loop(std::string dn, std::string password) {
    const Deadline deadline = Deadline::after(settings_.timeout);
    ldap::BindResult bound = co_await client_->check_password(dn, std::move(password), deadline);
    switch (bound.outcome) {
      case ldap::BindOutcome::accepted:
        spdlog::debug("ldap: bind as {} accepted ({})", sanitize(dn), bound.detail);
        co_return PasswordCheck::accepted;
      case ldap::BindOutcome::rejected:
        spdlog::info("ldap: bind as {} rejected: {}", sanitize(dn), bound.detail);
        co_return PasswordCheck::rejected;
      case ldap::BindOutcome::unavailable:
        break;
    }
    spdlog::warn("ldap: cannot check the password of {}: {}", sanitize(dn), bound.detail);
    co_return PasswordCheck::unavailable;
  }

  config::LdapDirectory settings_;
  std::vector<TemplatePiece> filter_;
  ldap::Scope scope_;
  std::vector<std::string> attributes_;
  std::shared_ptr<ldap::Client> client_;
};

}  // namespace

std::shared_ptr<Directory> make_ldap_directory(const config::LdapDirectory& settings) {
  return std::make_shared<LdapDirectory>(settings);
}

}  // namespace isthmus::director
