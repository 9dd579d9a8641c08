#pragma once
// An asynchronous MySQL/MariaDB client: a bounded pool of connections made
// with MariaDB Connector/C's non-blocking API, driven by one executor (the
// directory thread). Only what the SQL directory needs: one kind of query,
// a prepared statement with string parameters, rows of nullable strings.
//
// - Servers are tried in the configured order. A server whose connect
//   fails, or that does not answer a query in time, gets no new connection
//   for a backoff that doubles per failure up to max_backoff; a connect that
//   succeeds clears it. Connections already open to other servers are used
//   whatever their server's place in the list.
// - Every wait (connect, TLS, authentication, prepare, execute, rows) is
//   bounded by the caller's Deadline, and by connect_timeout per server and
//   attempt, so a server that accepts TCP and never answers leaves time to
//   fail over to the next one.
// - A connection that fails or times out is closed and the query is run
//   again on another connection or server while the deadline allows: a
//   SELECT is safe to repeat. An error in the statement itself (syntax,
//   unknown column, no privilege) is not retried: it is a configuration
//   problem and is reported as such.
// - The connection character set is utf8mb4 (MYSQL_SET_CHARSET_NAME), so
//   non-ASCII parameters compare as the UTF-8 they are.
// - Parameters are always bound (MYSQL_BIND), never spliced into the text.
// - Prepared statements are cached per connection (by their text).
//
// Threading: construct anywhere; query() and warm_up() only from the
// executor's thread, which must be a single thread. Coroutines still
// pending when the executor's io_context is destroyed keep the pool alive
// until then (the pool is shared with them), so destroying the Client while
// the loop is stopped is safe.

#include "common/deadline.hpp"
#include "sql/server_address.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace isthmus::sql {

struct ClientSettings {
  std::vector<ServerAddress> servers;  // tried in this order
  std::string database;
  std::string user;
  std::string password;
  bool tls = false;        // require TLS
  std::string tls_ca;      // PEM bundle; empty: the system's CA directory
  bool tls_verify = true;  // the chain and the server's name (or IP)
  unsigned pool = 4;       // connections at most, over all servers
  Clock::duration connect_timeout =
      std::chrono::seconds(2);  // one server: TCP+TLS+auth; one query attempt
  Clock::duration max_backoff = std::chrono::seconds(30);
  std::string name = "sql";  // prefix of log lines
};

using Value = std::optional<std::string>;  // nullopt: SQL NULL
using Row = std::vector<Value>;

enum class QueryStatus : std::uint8_t {
  ok,
  failed,    // no server answered in time (outage, network, timeouts, all busy)
  rejected,  // a server refused the statement itself: a configuration problem
};

struct QueryResult {
  QueryStatus status = QueryStatus::failed;
  unsigned columns = 0;         // the result's column count
  std::uint64_t row_count = 0;  // rows the server returned
  std::vector<Row> rows;        // the first max_rows of them
  std::uint64_t affected_rows = 0;  // execute(): rows the statement changed
  std::string server;           // who answered (host:port as configured)
  std::string error;            // why not ok, for the log: no parameter values, no password
};

// How a failed MySQL/MariaDB error number is handled.
enum class ErrorKind : std::uint8_t {
  connection,  // the connection or the server is in trouble: close it, try
               // another
  statement,   // the statement is wrong for this database: report, do not retry
};
ErrorKind classify_error(unsigned error_number);

// The backoff after `failures` consecutive failures of one server (no jitter).
Clock::duration backoff_after(unsigned failures, Clock::duration max_backoff);

// What a statement is expected to be: rows come back, or rows change.
enum class Statement : std::uint8_t { select, modify };

class Pool;

class Client {
 public:
  Client(boost::asio::any_io_executor executor, ClientSettings settings);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Runs `sql` (with one `?` per parameter) as a prepared statement with
  // `params` bound as strings, until `deadline`. Keeps the first `max_rows`
  // rows and counts the rest. Never throws for server or network trouble.
  boost::asio::awaitable<QueryResult> query(std::string sql, std::vector<std::string> params,
                                            Deadline deadline, std::size_t max_rows = 2);

  // Runs a statement that changes rows (INSERT, UPDATE, DELETE) the same
  // way; affected_rows says how many it changed (MySQL counts a row whose
  // values did not change as unaffected). A statement whose connection
  // failed may be run again: make it safe to repeat (compare-and-set).
  boost::asio::awaitable<QueryResult> execute(std::string sql, std::vector<std::string> params,
                                              Deadline deadline);

  // Opens one connection in the background, so that a wrong password or an
  // unreachable server shows in the log at start rather than at the first
  // login. Call from the executor's thread or before it runs.
  void warm_up();

 private:
  std::shared_ptr<Pool> pool_;
};

}  // namespace isthmus::sql
