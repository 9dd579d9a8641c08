// The SQL directory's pure parts (template -> `?` and parameter order,
// host:port, mapping rows to a lookup result) and the client's failure
// paths against sockets that refuse or never answer (no MariaDB needed:
// the system test runs a real one).

#include "director/sql_directory.hpp"
#include "sql/client.hpp"
#include "sql/server_address.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <doctest/doctest.h>

#include <chrono>
#include <optional>
#include <thread>

using namespace isthmus;
using director::LookupStatus;
using director::SqlStatement;
using Field = director::TemplatePiece::Field;

TEST_CASE("SQL template: placeholders become ? and parameters keep their order") {
  auto s = director::sql_statement_from_template(
      "SELECT island FROM account WHERE localpart = %{localpart} AND domain = "
      "%{domain}");
  CHECK(s.text == "SELECT island FROM account WHERE localpart = ? AND domain = ?");
  CHECK(s.parameters == std::vector<Field>{Field::localpart, Field::domain});

  // Repeated and reordered placeholders each get their own ?.
  s = director::sql_statement_from_template(
      "SELECT i FROM t WHERE d = %{domain} AND (u = %{user} OR alias = "
      "%{user}) AND l = %{localpart}");
  CHECK(s.text == "SELECT i FROM t WHERE d = ? AND (u = ? OR alias = ?) AND l = ?");
  CHECK(s.parameters ==
        std::vector<Field>{Field::domain, Field::user, Field::user, Field::localpart});

  // A placeholder at the very start or end; text that only looks like one
  // stays.
  s = director::sql_statement_from_template("%{user}");
  CHECK(s.text == "?");
  s = director::sql_statement_from_template("SELECT '%{other}', x FROM t WHERE u=%{user}");
  CHECK(s.text == "SELECT '%{other}', x FROM t WHERE u=?");
  CHECK(s.parameters == std::vector<Field>{Field::user});

  // The shipped default query.
  s = director::sql_statement_from_template(config::default_sql_query());
  CHECK(s.text.find("%{") == std::string::npos);
  CHECK(s.text.find("WHERE a.localpart = ? AND d.name = ?") != std::string::npos);
  CHECK(s.parameters == std::vector<Field>{Field::localpart, Field::domain});
}

TEST_CASE("SQL write template: %{value} is bound like the login name's parts") {
  auto s = director::sql_statement_from_template(
      "UPDATE account SET state = %{value} WHERE localpart = %{localpart} AND d = %{domain}");
  CHECK(s.text == "UPDATE account SET state = ? WHERE localpart = ? AND d = ?");
  CHECK(s.parameters == std::vector<Field>{Field::value, Field::localpart, Field::domain});
  auto v = director::sql_parameters(s, "bob@example.org", "moving'; DROP TABLE account; --");
  CHECK(v == std::vector<std::string>{"moving'; DROP TABLE account; --", "bob", "example.org"});
  // A lookup binds no value.
  CHECK(director::sql_parameters(s, "bob@example.org")[0].empty());
}

TEST_CASE("SQL template: values are bound as they are, never quoted or escaped") {
  auto s = director::sql_statement_from_template(
      "SELECT i FROM t WHERE l = %{localpart} AND d = %{domain} AND u = "
      "%{user}");
  auto v = director::sql_parameters(s, "alice' OR '1'='1@example.org");
  REQUIRE(v.size() == 3);
  CHECK(v[0] == "alice' OR '1'='1");
  CHECK(v[1] == "example.org");
  CHECK(v[2] == "alice' OR '1'='1@example.org");

  v = director::sql_parameters(s, std::string("a\0b@x", 5));
  CHECK(v[0] == std::string("a\0b", 3));

  // The last '@' splits; no '@': an empty domain.
  v = director::sql_parameters(s, "a@b@example.org");
  CHECK(v[0] == "a@b");
  CHECK(v[1] == "example.org");
  v = director::sql_parameters(s, "bob");
  CHECK(v[0] == "bob");
  CHECK(v[1] == "");
}

TEST_CASE("SQL server addresses: host:port and [IPv6]:port") {
  auto a = sql::parse_server_address("10.0.0.5:3306");
  REQUIRE(a);
  CHECK(a->host == "10.0.0.5");
  CHECK(a->port == 3306);
  CHECK(a->text == "10.0.0.5:3306");

  a = sql::parse_server_address("db1.example.org:13306");
  REQUIRE(a);
  CHECK(a->host == "db1.example.org");
  CHECK(a->port == 13306);

  a = sql::parse_server_address("[2001:db8::5]:3306");
  REQUIRE(a);
  CHECK(a->host == "2001:db8::5");
  CHECK(a->port == 3306);

  a = sql::parse_server_address("[::1]:1");
  REQUIRE(a);
  CHECK(a->host == "::1");
  CHECK(a->port == 1);

  a = sql::parse_server_address("localhost:65535");
  REQUIRE(a);
  CHECK(a->port == 65535);

  for (const char* bad : {"",
                          "db",
                          "db:",
                          ":3306",
                          "db:0",
                          "db:65536",
                          "db:99999999",
                          "db:33a",
                          "db:-1",
                          "::1:3306",
                          "2001:db8::5:3306",
                          "[2001:db8::5]",
                          "[::1]3306",
                          "[::1]:",
                          "[]:3306",
                          "[10.0.0.5]:3306",
                          "[::1:3306",
                          "::1]:3306",
                          "db 1:3306",
                          "db:+3306"}) {
    CAPTURE(bad);
    CHECK_FALSE(sql::parse_server_address(bad));
  }
}

namespace {

sql::QueryResult rows_of(unsigned columns, std::vector<sql::Row> rows) {
  sql::QueryResult r;
  r.status = sql::QueryStatus::ok;
  r.columns = columns;
  r.row_count = rows.size();
  r.rows = std::move(rows);
  r.server = "db1:3306";
  return r;
}

}  // namespace

TEST_CASE("SQL rows: one row is found; columns by position, NULLs defaulted") {
  auto r = director::lookup_result_from_rows(
      rows_of(4, {{"a", "active", "$6$salt$hash", "alice.legacy@example.org"}}));
  CHECK(r.status == LookupStatus::found);
  CHECK(r.entry.island == "a");
  CHECK(r.entry.state == director::AccountState::active);
  CHECK(r.entry.password_hash == "$6$salt$hash");
  CHECK(r.entry.node_login == "alice.legacy@example.org");

  r = director::lookup_result_from_rows(
      rows_of(4, {{"b", std::nullopt, std::nullopt, std::nullopt}}));
  CHECK(r.status == LookupStatus::found);
  CHECK(r.entry.island == "b");
  CHECK(r.entry.state == director::AccountState::active);  // NULL state: active
  CHECK(r.entry.password_hash.empty());
  CHECK(r.entry.node_login.empty());

  r = director::lookup_result_from_rows(rows_of(2, {{"b", ""}}));  // empty state: active
  CHECK(r.status == LookupStatus::found);
  CHECK(r.entry.state == director::AccountState::active);

  r = director::lookup_result_from_rows(rows_of(1, {{"b"}}));  // island only
  CHECK(r.status == LookupStatus::found);
  CHECK(r.entry.island == "b");

  r = director::lookup_result_from_rows(rows_of(2, {{"a", "Disabled"}}));
  CHECK(r.status == LookupStatus::found);
  CHECK(r.entry.state == director::AccountState::disabled);
  r = director::lookup_result_from_rows(rows_of(2, {{"a", "moving"}}));
  CHECK(r.entry.state == director::AccountState::moving);
}

TEST_CASE("SQL rows: no row, empty island, several rows, odd shapes, failures") {
  auto r = director::lookup_result_from_rows(rows_of(4, {}));
  CHECK(r.status == LookupStatus::not_found);

  // A row without an island is broken data: mail waits (temporary), never bounces.
  r = director::lookup_result_from_rows(rows_of(4, {{"", "active", std::nullopt, std::nullopt}}));
  CHECK(r.status == LookupStatus::unavailable);
  CHECK(r.detail.find("directory data error") != std::string::npos);
  CHECK(r.detail.find("empty island") != std::string::npos);
  r = director::lookup_result_from_rows(rows_of(2, {{std::nullopt, "active"}}));
  CHECK(r.status == LookupStatus::unavailable);

  // Never route on an ambiguous answer.
  auto two = rows_of(2, {{"a", "active"}, {"b", "active"}});
  two.row_count = 7;  // the client keeps two rows and counts the rest
  r = director::lookup_result_from_rows(two);
  CHECK(r.status == LookupStatus::unavailable);
  CHECK(r.detail.find("query returned 7 rows") != std::string::npos);

  r = director::lookup_result_from_rows(rows_of(2, {{"a", "frozen"}}));
  CHECK(r.status == LookupStatus::unavailable);
  CHECK(r.detail.find("\"frozen\"") != std::string::npos);

  r = director::lookup_result_from_rows(
      rows_of(5, {{"a", "active", std::nullopt, std::nullopt, "x"}}));
  CHECK(r.status == LookupStatus::unavailable);
  CHECK(r.detail.find("5 columns") != std::string::npos);
  r = director::lookup_result_from_rows(rows_of(0, {}));
  CHECK(r.status == LookupStatus::unavailable);

  sql::QueryResult failed;
  failed.status = sql::QueryStatus::failed;
  failed.error = "db1:3306: connecting: refused";
  r = director::lookup_result_from_rows(failed);
  CHECK(r.status == LookupStatus::unavailable);
  CHECK(r.detail.find("db1:3306: connecting: refused") != std::string::npos);

  sql::QueryResult rejected;
  rejected.status = sql::QueryStatus::rejected;
  rejected.error = "db1:3306: preparing the query: Unknown column 'x' (error 1054)";
  r = director::lookup_result_from_rows(rejected);
  CHECK(r.status == LookupStatus::unavailable);
  CHECK(r.detail.find("Unknown column") != std::string::npos);
}

TEST_CASE(
    "SQL errors: connection trouble is retried elsewhere, statement "
    "errors are not") {
  CHECK(sql::classify_error(2002) == sql::ErrorKind::connection);  // can't connect
  CHECK(sql::classify_error(2006) == sql::ErrorKind::connection);  // server gone away
  CHECK(sql::classify_error(2013) == sql::ErrorKind::connection);  // lost connection
  CHECK(sql::classify_error(1053) == sql::ErrorKind::connection);  // server shutdown
  CHECK(sql::classify_error(1927) == sql::ErrorKind::connection);  // connection killed
  CHECK(sql::classify_error(1047) == sql::ErrorKind::connection);  // WSREP not ready
  CHECK(sql::classify_error(1064) == sql::ErrorKind::statement);   // syntax
  CHECK(sql::classify_error(1054) == sql::ErrorKind::statement);   // unknown column
  CHECK(sql::classify_error(1146) == sql::ErrorKind::statement);   // no such table
  CHECK(sql::classify_error(1142) == sql::ErrorKind::statement);   // SELECT denied
}

TEST_CASE("SQL backoff doubles per failure up to max_backoff") {
  using namespace std::chrono_literals;
  CHECK(sql::backoff_after(0, 30s) == 0s);
  CHECK(sql::backoff_after(1, 30s) == 500ms);
  CHECK(sql::backoff_after(2, 30s) == 1s);
  CHECK(sql::backoff_after(3, 30s) == 2s);
  CHECK(sql::backoff_after(7, 30s) == 30s);
  CHECK(sql::backoff_after(1000, 30s) == 30s);
  CHECK(sql::backoff_after(1, 200ms) == 200ms);
  CHECK(sql::backoff_after(5, 1s) == 1s);
}

namespace {

namespace asio = boost::asio;

// Runs one query on `client`, whose executor is `io`. The io_context runs
// on a thread of its own: the deadline wheel (common/deadline.cpp) is per
// thread and binds its timer to the first executor it sees, so each test's
// io_context gets a fresh thread (and outlives it).
sql::QueryResult run_query(sql::Client& client, asio::io_context& io, Clock::duration budget) {
  std::optional<sql::QueryResult> out;
  std::exception_ptr failure;
  auto deadline = Deadline::after(budget);
  auto store = [&out, &failure](std::exception_ptr e, sql::QueryResult r) {
    if (e)
      failure = e;
    else
      out = std::move(r);
  };
  asio::co_spawn(io, client.query("SELECT ?", {"x"}, deadline), store);
  io.restart();
  std::thread runner([&io, budget] { io.run_for(budget + std::chrono::seconds(3)); });
  runner.join();
  if (failure) std::rethrow_exception(failure);
  REQUIRE(out);
  return *out;
}

sql::ClientSettings settings_for(std::vector<std::string> servers) {
  sql::ClientSettings s;
  for (auto& text : servers) s.servers.push_back(*sql::parse_server_address(text));
  s.database = "mail";
  s.user = "isthmus";
  s.password = "secret-that-must-not-leak";
  s.pool = 2;
  s.connect_timeout = std::chrono::milliseconds(400);
  s.max_backoff = std::chrono::seconds(5);
  return s;
}

}  // namespace

TEST_CASE("SQL client: a refused server fails fast, then backs off") {
  asio::io_context io;
  // A port with nothing listening: bind, note the port, close.
  std::uint16_t port;
  {
    asio::ip::tcp::acceptor probe(io, {asio::ip::make_address("127.0.0.1"), 0});
    port = probe.local_endpoint().port();
  }
  sql::Client client(io.get_executor(), settings_for({"127.0.0.1:" + std::to_string(port)}));
  auto started = Clock::now();
  auto r = run_query(client, io, std::chrono::seconds(2));
  CHECK(r.status == sql::QueryStatus::failed);
  CHECK(Clock::now() - started < std::chrono::seconds(1));
  CHECK(r.error.find("connecting") != std::string::npos);
  CHECK(r.error.find("secret-that-must-not-leak") == std::string::npos);

  // Straight away again: the server is in its backoff, no new connect.
  r = run_query(client, io, std::chrono::seconds(2));
  CHECK(r.status == sql::QueryStatus::failed);
  CHECK(r.error.find("every server failed recently") != std::string::npos);
}

TEST_CASE(
    "SQL client: a server that accepts and never answers times out "
    "within the budget") {
  asio::io_context io;
  // Listens (the kernel completes the handshake) but never speaks.
  asio::ip::tcp::acceptor silent(io, {asio::ip::make_address("127.0.0.1"), 0});
  auto port = silent.local_endpoint().port();
  sql::Client client(io.get_executor(), settings_for({"127.0.0.1:" + std::to_string(port)}));
  auto started = Clock::now();
  auto r = run_query(client, io, std::chrono::seconds(2));
  auto took = Clock::now() - started;
  CHECK(r.status == sql::QueryStatus::failed);
  CHECK(r.error.find("no answer within") != std::string::npos);
  // connect_timeout (0.4 s) bounds the one server; the deadline wheel ticks
  // every 50 ms.
  CHECK(took >= std::chrono::milliseconds(350));
  CHECK(took < std::chrono::milliseconds(1500));
}

TEST_CASE("SQL client: the next server is tried when the first one is silent") {
  asio::io_context io;
  asio::ip::tcp::acceptor silent(io, {asio::ip::make_address("127.0.0.1"), 0});
  asio::ip::tcp::acceptor silent2(io, {asio::ip::make_address("127.0.0.1"), 0});
  auto settings = settings_for({"127.0.0.1:" + std::to_string(silent.local_endpoint().port()),
                                "127.0.0.1:" + std::to_string(silent2.local_endpoint().port())});
  sql::Client client(io.get_executor(), settings);
  auto r = run_query(client, io, std::chrono::seconds(3));
  CHECK(r.status == sql::QueryStatus::failed);
  // Both were tried, each within connect_timeout.
  CHECK(r.error.find(settings.servers[0].text) != std::string::npos);
  CHECK(r.error.find(settings.servers[1].text) != std::string::npos);
}
