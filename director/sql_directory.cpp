#include "director/sql_directory.hpp"

#include "common/log.hpp"
#include "director/directory_loop.hpp"
#include "sql/config_settings.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <stdexcept>

namespace isthmus::director {

namespace asio = boost::asio;

namespace {

// Columns by position.
constexpr unsigned kIsland = 0;
constexpr unsigned kState = 1;
constexpr unsigned kPasswordHash = 2;
constexpr unsigned kNodeLogin = 3;
constexpr unsigned kMaxColumns = 4;

class SqlDirectory final : public LoopDirectory {
 public:
  explicit SqlDirectory(const config::SqlDirectory& settings)
      : LoopDirectory("isthmus-sql"),
        statement_(sql_statement_from_template(settings.query)),
        set_state_(sql_statement_from_template(settings.set_state)),
        set_island_(sql_statement_from_template(settings.set_island)),
        timeout_(settings.timeout),
        writes_(settings.writes()),
        client_(loop().executor(), sql::client_settings(settings, "sql directory")) {
    client_.warm_up();
    if (!settings.write_user.empty()) {
      config::SqlDirectory writer = settings;
      writer.user = settings.write_user;
      writer.password = settings.write_password;
      writer.pool = 1;
      write_client_.emplace(loop().executor(),
                            sql::client_settings(writer, "sql directory (writes)"));
    }
  }

  // Nothing of ours may run while the members go away.
  ~SqlDirectory() override { stop_loop(); }

  std::string_view kind() const override { return "sql"; }
  bool takes_writes() const override { return writes_; }

 protected:
  asio::awaitable<LookupResult> lookup_in_loop(std::string user) override {
    auto params = sql_parameters(statement_, user);
    auto deadline = Deadline::after(timeout_);
    // Two rows are enough to know the answer is ambiguous; the rest are
    // counted.
    sql::QueryResult rows = co_await client_.query(statement_.text, std::move(params), deadline, 2);
    if (rows.status == sql::QueryStatus::rejected) report_rejected(rows.error);
    co_return lookup_result_from_rows(rows);
  }

  // The island first, then the state. (The admin API writes them one at
  // a time, reading the island back before it writes the state.)
  asio::awaitable<WriteResult> write_in_loop(std::string user, UserEntry /*entry*/,
                                             AccountChange change) override {
    if ((change.island && set_island_.text.empty()) || (change.state && set_state_.text.empty()))
      co_return WriteResult{WriteStatus::unsupported,
                            "directory.sql.writes is not configured (set_state and set_island)"};
    sql::Client& client = write_client_ ? *write_client_ : client_;
    const Deadline deadline = Deadline::after(timeout_);
    std::vector<std::string> done;
    for (auto [statement, value] :
         {std::pair{&set_island_, change.island},
          std::pair{&set_state_, change.state ? std::optional<std::string>(
                                                    std::string(name_of(*change.state)))
                                              : std::nullopt}}) {
      if (!value) continue;
      auto params = sql_parameters(*statement, user, *value);
      sql::QueryResult result = co_await client.execute(statement->text, std::move(params), deadline);
      if (result.status != sql::QueryStatus::ok)
        co_return WriteResult{WriteStatus::failed,
                              fmt::format("sql directory: {} of {}: {}{}",
                                          statement == &set_island_ ? "set_island" : "set_state",
                                          sanitize(user, 100), result.error,
                                          done.empty() ? "" : " (after " + done.front() + ")")};
      // One user is one row: more means the statement's WHERE is wider than
      // the lookup's (the config loader asks for the whole name).
      if (result.affected_rows > 1) {
        spdlog::error("sql directory: {} for {} changed {} rows on {}: check "
                      "/directory/sql/writes",
                      statement == &set_island_ ? "set_island" : "set_state", sanitize(user, 100),
                      result.affected_rows, result.server);
        co_return WriteResult{WriteStatus::failed,
                              fmt::format("sql directory: {} changed {} rows for one user on {} "
                                          "(its WHERE matches more than the user's row)",
                                          statement == &set_island_ ? "set_island" : "set_state",
                                          result.affected_rows, result.server)};
      }
      done.push_back(fmt::format("{} ({} row(s) changed on {})",
                                 statement == &set_island_ ? "set_island" : "set_state",
                                 result.affected_rows, result.server));
    }
    co_return WriteResult{WriteStatus::written, fmt::format("sql directory: {}", fmt::join(done, ", "))};
  }

 private:
  // A query the server refuses fails every lookup: say so loudly, but not
  // once per login.
  void report_rejected(const std::string& error) {
    auto now = Clock::now();
    if (now - last_rejected_log_ < std::chrono::seconds(10)) return;
    last_rejected_log_ = now;
    spdlog::error(
        "sql directory: the server refuses the configured query (check "
        "/directory/sql/query and the grants): {}",
        error);
  }

  SqlStatement statement_;
  SqlStatement set_state_;
  SqlStatement set_island_;
  Clock::duration timeout_;
  bool writes_ = false;
  Clock::time_point last_rejected_log_{};
  sql::Client client_;
  std::optional<sql::Client> write_client_;  // directory.sql.writes.user, when set
};

}  // namespace

SqlStatement sql_statement_from_template(std::string_view query) {
  SqlStatement statement;
  for (auto& piece : parse_template(query)) {
    statement.text += piece.text;
    if (piece.field != TemplatePiece::Field::none) {
      statement.text += '?';
      statement.parameters.push_back(piece.field);
    }
  }
  return statement;
}

std::vector<std::string> sql_parameters(const SqlStatement& statement, std::string_view user,
                                        std::string_view value) {
  auto parts = split_login(user);
  parts.value = std::string(value);
  std::vector<std::string> values;
  values.reserve(statement.parameters.size());
  for (auto field : statement.parameters) values.push_back(value_of(parts, field));
  return values;
}

LookupResult lookup_result_from_rows(const sql::QueryResult& result) {
  switch (result.status) {
    case sql::QueryStatus::ok:
      break;
    case sql::QueryStatus::failed:
      return unavailable_result("sql directory unavailable: " + result.error);
    case sql::QueryStatus::rejected:
      return unavailable_result("sql directory: the server refuses the query: " + result.error);
  }
  if (result.columns < 1 || result.columns > kMaxColumns) {
    return unavailable_result(
        fmt::format("sql directory: the query returns {} columns; it must "
                    "return 1 to 4 (island, state, "
                    "password hash, node login)",
                    result.columns));
  }
  if (result.row_count == 0) return not_found_result(fmt::format("no row on {}", result.server));
  if (result.row_count > 1 || result.rows.size() != 1) {
    return unavailable_result(
        fmt::format("sql directory: the query returned {} rows on {}; one user "
                    "must match one row at most",
                    result.row_count, result.server));
  }
  const sql::Row& row = result.rows.front();
  auto column = [&row](unsigned index) -> const sql::Value& {
    static const sql::Value absent;
    return index < row.size() ? row[index] : absent;
  };

  const auto& island = column(kIsland);
  // A row without an island is a broken row, not a missing user: bouncing
  // mail for it would lose mail (a temporary failure instead).
  if (!island || island->empty()) {
    return unavailable_result(fmt::format("sql directory: directory data error: the row on {} "
                                          "has {} island",
                                          result.server, island ? "an empty" : "a NULL"));
  }
  LookupResult found;
  found.status = LookupStatus::found;
  found.entry.island = *island;
  const auto& state = column(kState);
  if (state && !state->empty()) {
    auto parsed = account_state_from(*state);
    if (!parsed) {
      return unavailable_result(
          fmt::format("sql directory: unknown account state \"{}\" on {} "
                      "(expected active, disabled or moving)",
                      sanitize(*state, 40), result.server));
    }
    found.entry.state = *parsed;
  }
  if (const auto& hash = column(kPasswordHash)) found.entry.password_hash = *hash;
  if (const auto& node_login = column(kNodeLogin)) found.entry.node_login = *node_login;
  found.detail = fmt::format("found on {}", result.server);
  return found;
}

std::shared_ptr<Directory> make_sql_directory(const config::SqlDirectory& settings) {
  return std::make_shared<SqlDirectory>(settings);
}

}  // namespace isthmus::director
