#include "sql/client.hpp"

#include "common/log.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <fmt/format.h>
#include <mysql.h>
#include <spdlog/spdlog.h>

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <list>
#include <mutex>
#include <random>
#include <unordered_map>

namespace isthmus::sql {

namespace asio = boost::asio;
using std::chrono::milliseconds;

namespace {

// Connector/C's global state is made once, before any handle (mysql_init
// would do it lazily, and that is not thread-safe).
void init_library() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (mysql_library_init(0, nullptr, nullptr) != 0)
      throw std::runtime_error("MariaDB Connector/C could not be initialised");
  });
}

std::string seconds_text(Clock::duration d) {
  return fmt::format("{:.1f}s", std::chrono::duration<double>(d).count());
}

// The libmysql "cannot connect" family (CR_* 2000..2999) and the server
// errors that say the server or this connection is going away, overloaded,
// or not ready (a Galera/NDB node that is not synced): another connection
// or server may well succeed.
bool is_transient_server_error(unsigned number) {
  switch (number) {
    case 1040:  // ER_CON_COUNT_ERROR: too many connections
    case 1047:  // ER_UNKNOWN_COM_ERROR: WSREP has not yet prepared node for application use
    case 1053:  // ER_SERVER_SHUTDOWN
    case 1077:  // ER_NORMAL_SHUTDOWN
    case 1078:  // ER_GOT_SIGNAL
    case 1079:  // ER_SHUTDOWN_COMPLETE
    case 1152:  // ER_ABORTING_CONNECTION
    case 1153:  // ER_NET_PACKET_TOO_LARGE
    case 1154:  // ER_NET_READ_ERROR_FROM_PIPE
    case 1155:  // ER_NET_FCNTL_ERROR
    case 1156:  // ER_NET_PACKETS_OUT_OF_ORDER
    case 1157:  // ER_NET_UNCOMPRESS_ERROR
    case 1158:  // ER_NET_READ_ERROR
    case 1159:  // ER_NET_READ_INTERRUPTED
    case 1160:  // ER_NET_ERROR_ON_WRITE
    case 1161:  // ER_NET_WRITE_INTERRUPTED
    case 1180:  // ER_ERROR_DURING_COMMIT
    case 1205:  // ER_LOCK_WAIT_TIMEOUT
    case 1213:  // ER_LOCK_DEADLOCK
    case 1296:  // ER_GET_ERRMSG: "Got error N from NDBCLUSTER" (temporary NDB errors)
    case 1297:  // ER_GET_TEMPORARY_ERRMSG
    case 1317:  // ER_QUERY_INTERRUPTED
    case 1615:  // ER_NEED_REPREPARE
    case 1927:  // ER_CONNECTION_KILLED
    case 1969:  // ER_STATEMENT_TIMEOUT
    case 3024:  // MySQL ER_QUERY_TIMEOUT (max_execution_time)
    case 4031:  // ER_CLIENT_INTERACTION_TIMEOUT: disconnected for inactivity
      return true;
    default:
      return false;
  }
}

}  // namespace

ErrorKind classify_error(unsigned error_number) {
  if (error_number >= 2000 && error_number < 3000) return ErrorKind::connection;  // CR_*
  if (error_number >= 5000) return ErrorKind::connection;  // Connector/C's own (CR_MARIADB_*)
  if (is_transient_server_error(error_number)) return ErrorKind::connection;
  return ErrorKind::statement;
}

Clock::duration backoff_after(unsigned failures, Clock::duration max_backoff) {
  if (failures == 0) return Clock::duration::zero();
  Clock::duration step = std::min<Clock::duration>(milliseconds(500), max_backoff);
  for (unsigned i = 1; i < failures && step < max_backoff; ++i) step *= 2;
  return std::min(step, max_backoff);
}

// ---------------------------------------------------------------------------
// One connection: a MYSQL handle in non-blocking mode whose socket the
// executor watches. Not shared: the pool hands it to one query at a time.

struct Outcome {
  enum class Kind : std::uint8_t { ok, timed_out, connection, statement };
  Kind kind = Kind::ok;
  std::string message;  // for the log
  bool ok() const { return kind == Kind::ok; }
};

class Connection {
 public:
  Connection(asio::any_io_executor executor, const ClientSettings& settings, std::size_t server)
      : settings_(settings),
        address_(settings.servers.at(server)),
        server_(server),
        socket_(std::move(executor)) {}
  ~Connection() { close(); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  std::size_t server() const { return server_; }
  const ServerAddress& address() const { return address_; }
  std::size_t runs() const { return runs_; }  // queries started on it

  asio::awaitable<Outcome> connect(Deadline deadline);
  asio::awaitable<Outcome> run(const std::string& sql, const std::vector<std::string>& params,
                               Statement kind,
                               std::size_t max_rows, QueryResult& out, Deadline deadline);

  // True if an idle connection has something to read: the server closed it
  // (EOF) or sent an error before closing it (wait_timeout, KILL, shutdown).
  bool looks_closed() const;

  std::string describe() const;  // server version, TLS, for the log

 private:
  template <typename Resume>
  asio::awaitable<bool> drive(int status, Deadline deadline, Resume resume);
  asio::awaitable<int> wait_events(int status, Deadline deadline);
  void watch_socket(bool reassign);
  void abandon();
  void close();
  Outcome failure(const char* action) const;
  Outcome stmt_failure(MYSQL_STMT* stmt, const char* action) const;
  Outcome timed_out(const char* action, Deadline deadline) const;
  asio::awaitable<Outcome> drain_more_results(MYSQL_STMT* stmt, Deadline deadline);

  const ClientSettings& settings_;
  ServerAddress address_;
  std::size_t server_;
  MYSQL* mysql_ = nullptr;
  asio::posix::stream_descriptor socket_;  // watches mysql_'s socket; never closes it
  bool connecting_ = false;
  std::size_t runs_ = 0;
  bool unusable_ = false;  // the library kept an operation we could not finish: leak, never close
  Clock::time_point started_{};
  std::unordered_map<std::string, MYSQL_STMT*> statements_;  // prepared, by text

  // The operation in progress: its _cont (so that abandon() can finish it)
  // and the results the library writes when it completes.
  std::function<int(int)> pending_;
  int pending_status_ = 0;
  MYSQL* connect_ret_ = nullptr;
  int int_ret_ = 0;
};

Outcome Connection::failure(const char* action) const {
  unsigned number = mysql_ ? mysql_errno(mysql_) : 0;
  Outcome o;
  // While connecting, any error (even "access denied") makes this server
  // unusable for now; afterwards, the number tells.
  bool statement = !connecting_ && classify_error(number) == ErrorKind::statement;
  o.kind = statement ? Outcome::Kind::statement : Outcome::Kind::connection;
  o.message = fmt::format("{}: {} (error {})", action,
                          sanitize(mysql_ ? mysql_error(mysql_) : "out of memory", 300), number);
  return o;
}

Outcome Connection::stmt_failure(MYSQL_STMT* stmt, const char* action) const {
  unsigned number = mysql_stmt_errno(stmt);
  Outcome o;
  o.kind = classify_error(number) == ErrorKind::statement ? Outcome::Kind::statement
                                                          : Outcome::Kind::connection;
  o.message =
      fmt::format("{}: {} (error {})", action, sanitize(mysql_stmt_error(stmt), 300), number);
  return o;
}

Outcome Connection::timed_out(const char* action, Deadline deadline) const {
  Outcome o;
  o.kind = Outcome::Kind::timed_out;
  o.message =
      fmt::format("{}: no answer within {}", action, seconds_text(deadline.when() - started_));
  return o;
}

void Connection::watch_socket(bool reassign) {
  my_socket fd = mysql_ ? mysql_get_socket(mysql_) : MARIADB_INVALID_SOCKET;
  if (socket_.is_open() && (reassign || fd < 0 || socket_.native_handle() != fd)) socket_.release();
  if (!socket_.is_open() && fd >= 0) {
    boost::system::error_code ec;
    socket_.assign(fd, ec);
  }
}

bool Connection::looks_closed() const {
  if (!mysql_ || unusable_) return true;
  my_socket fd = mysql_get_socket(mysql_);
  if (fd < 0) return true;
  char byte;
  ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) return true;  // EOF
  if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
  // Bytes while idle: on a plain connection, the error packet a server
  // sends before it closes one (wait_timeout, KILL, shutdown). Under TLS
  // they may be a record the library has not read yet (a TLS 1.3 session
  // ticket): keep it; if it is dead, the query fails at once and is retried.
  return !settings_.tls;
}

asio::awaitable<int> Connection::wait_events(int status, Deadline deadline) {
  // During the connect, Connector/C may close its socket and open another
  // one for the next address of a name: watch whatever it uses now.
  watch_socket(connecting_);
  Deadline wait_deadline = deadline;
  bool library_timer = false;
  if (status & MYSQL_WAIT_TIMEOUT) {
    auto library = Deadline::after(milliseconds(mysql_get_timeout_value_ms(mysql_)));
    if (library.when() < deadline.when()) {
      wait_deadline = library;
      library_timer = true;
    }
  }
  const int io = status & (MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_EXCEPT);
  for (;;) {
    if (io != 0 && socket_.is_open()) {
      auto type = (status & MYSQL_WAIT_READ)    ? asio::posix::descriptor_base::wait_read
                  : (status & MYSQL_WAIT_WRITE) ? asio::posix::descriptor_base::wait_write
                                                : asio::posix::descriptor_base::wait_error;
      // The socket or the timer, whichever comes first; the other is
      // cancelled. Not common/deadline.hpp's until(): its guards live in a
      // per-thread wheel, and coroutines still pending when the directory
      // thread stops are destroyed later on another thread (LoopDirectory).
      asio::steady_timer timer(socket_.get_executor(), wait_deadline.when());
      auto group = asio::experimental::make_parallel_group(socket_.async_wait(type, asio::deferred),
                                                           timer.async_wait(asio::deferred));
      auto [order, ec, timer_ec] =
          co_await group.async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
      (void)timer_ec;
      const bool socket_first = order[0] == 0;
      if (socket_first && ec != asio::error::operation_aborted) {
        pollfd p{socket_.native_handle(), 0, 0};
        if (status & MYSQL_WAIT_READ) p.events |= POLLIN;
        if (status & MYSQL_WAIT_WRITE) p.events |= POLLOUT;
        if (status & MYSQL_WAIT_EXCEPT) p.events |= POLLPRI;
        ::poll(&p, 1, 0);
        int ready = 0;
        const short broken = POLLERR | POLLHUP | POLLNVAL;
        if ((status & MYSQL_WAIT_READ) && (p.revents & (POLLIN | broken))) ready |= MYSQL_WAIT_READ;
        if ((status & MYSQL_WAIT_WRITE) && (p.revents & (POLLOUT | broken)))
          ready |= MYSQL_WAIT_WRITE;
        if ((status & MYSQL_WAIT_EXCEPT) && (p.revents & POLLPRI)) ready |= MYSQL_WAIT_EXCEPT;
        if (ec && ready == 0) ready = io;  // let the library find out what is wrong
        if (ready != 0) co_return ready;
        continue;  // spurious wake-up
      }
    } else {
      co_await sleep_until(wait_deadline);
    }
    if (wait_deadline.expired()) co_return library_timer ? MYSQL_WAIT_TIMEOUT : 0;
  }
}

// Runs one non-blocking call to its end: `status` is what its _start
// returned, `resume(ready)` calls its _cont. False if `deadline` came first;
// the call has then been abandoned and the connection must be closed.
template <typename Resume>
asio::awaitable<bool> Connection::drive(int status, Deadline deadline, Resume resume) {
  pending_ = resume;
  pending_status_ = status;
  while (pending_status_ != 0) {
    int ready = co_await wait_events(pending_status_, deadline);
    if (ready == 0) {
      abandon();
      co_return false;
    }
    pending_status_ = resume(ready);
  }
  pending_ = nullptr;
  co_return true;
}

// A call suspended half-way cannot simply be dropped: Connector/C would
// later try to switch back into it (mysql_close sends COM_QUIT through the
// same code). Make every further read and write fail (mariadb_cancel shuts
// the socket down) and tell the call its wait timed out until it returns.
void Connection::abandon() {
  if (!pending_) return;
  if (mysql_) mariadb_cancel(mysql_);
  for (int i = 0; i < 64 && pending_status_ != 0; ++i)
    pending_status_ = pending_(MYSQL_WAIT_TIMEOUT);
  if (pending_status_ != 0) {
    unusable_ = true;
    spdlog::error(
        "{}: server {}: the client library did not finish an abandoned call; leaking "
        "the connection",
        settings_.name, address_.text);
  }
  pending_ = nullptr;
  pending_status_ = 0;
}

void Connection::close() {
  abandon();
  if (socket_.is_open()) socket_.release();  // the fd is Connector/C's to close
  if (unusable_) return;
  if (mysql_) mysql_close(mysql_);  // sends COM_QUIT; invalidates the statements
  mysql_ = nullptr;
  for (auto& [text, stmt] : statements_) mysql_stmt_close(stmt);  // only frees them now
  statements_.clear();
}

std::string Connection::describe() const {
  if (!mysql_) return "not connected";
  const char* cipher = mysql_get_ssl_cipher(mysql_);
  const char* charset = mysql_character_set_name(mysql_);
  return fmt::format("server {}, {}, charset {}", sanitize(mysql_get_server_info(mysql_), 80),
                     cipher ? fmt::format("TLS {}", sanitize(cipher, 60)) : std::string("no TLS"),
                     sanitize(charset ? charset : "?", 40));
}

asio::awaitable<Outcome> Connection::connect(Deadline deadline) {
  started_ = Clock::now();
  connecting_ = true;
  mysql_ = mysql_init(nullptr);
  if (!mysql_) co_return failure("connecting");
  mysql_options(mysql_, MYSQL_OPT_NONBLOCK, nullptr);
  unsigned protocol = MYSQL_PROTOCOL_TCP;  // never the unix socket for "localhost"
  mysql_options(mysql_, MYSQL_OPT_PROTOCOL, &protocol);
  // utf8mb4: with the server's default connection charset a non-ASCII
  // parameter would be converted before the comparison and never match.
  mysql_options(mysql_, MYSQL_SET_CHARSET_NAME, "utf8mb4");
  unsigned no_local_infile = 0;  // a hostile server must not read our files
  mysql_options(mysql_, MYSQL_OPT_LOCAL_INFILE, &no_local_infile);
  mysql_optionsv(mysql_, MYSQL_OPT_CONNECT_ATTR_ADD, "program_name", "isthmus");
  if (settings_.tls) {
    my_bool on = 1;
    mysql_options(mysql_, MYSQL_OPT_SSL_ENFORCE, &on);
    if (!settings_.tls_ca.empty()) {
      mysql_options(mysql_, MYSQL_OPT_SSL_CA, settings_.tls_ca.c_str());
    } else if (settings_.tls_verify) {
      // Connector/C checks the server's name only when a CA is given.
      mysql_options(mysql_, MYSQL_OPT_SSL_CAPATH, "/etc/ssl/certs");
    }
    my_bool verify = settings_.tls_verify ? 1 : 0;
    mysql_options(mysql_, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify);
  }

  connect_ret_ = nullptr;
  int status =
      mysql_real_connect_start(&connect_ret_, mysql_, address_.host.c_str(), settings_.user.c_str(),
                               settings_.password.c_str(), settings_.database.c_str(),
                               address_.port, nullptr, CLIENT_MULTI_RESULTS);
  auto resume = [this](int ready) { return mysql_real_connect_cont(&connect_ret_, mysql_, ready); };
  bool done = co_await drive(status, deadline, resume);
  if (!done) co_return timed_out("connecting", deadline);
  if (!connect_ret_) {
    Outcome o = failure("connecting");
    connecting_ = false;
    co_return o;
  }
  connecting_ = false;
  watch_socket(true);
  co_return Outcome{};
}

asio::awaitable<Outcome> Connection::drain_more_results(MYSQL_STMT* stmt, Deadline deadline) {
  // A CALL answers with its result set and then a status result; the
  // connection is usable again only once every result has been read.
  for (int guard = 0; guard < 16 && mysql_stmt_more_results(stmt); ++guard) {
    int_ret_ = 0;
    int status = mysql_stmt_next_result_start(&int_ret_, stmt);
    auto resume = [this, stmt](int ready) {
      return mysql_stmt_next_result_cont(&int_ret_, stmt, ready);
    };
    bool done = co_await drive(status, deadline, resume);
    if (!done) co_return timed_out("reading further results", deadline);
    if (int_ret_ > 0) co_return stmt_failure(stmt, "reading further results");
    if (int_ret_ < 0) break;
    if (mysql_stmt_field_count(stmt) == 0) continue;
    // Another result set: read and drop its rows.
    unsigned columns = mysql_stmt_field_count(stmt);
    std::vector<MYSQL_BIND> binds(columns);
    std::vector<unsigned long> lengths(columns);
    std::vector<my_bool> nulls(columns);
    for (unsigned c = 0; c < columns; ++c) {
      binds[c].buffer_type = MYSQL_TYPE_STRING;
      binds[c].length = &lengths[c];
      binds[c].is_null = &nulls[c];
    }
    mysql_stmt_bind_result(stmt, binds.data());
    for (;;) {
      int_ret_ = 0;
      int fetch = mysql_stmt_fetch_start(&int_ret_, stmt);
      auto resume_fetch = [this, stmt](int ready) {
        return mysql_stmt_fetch_cont(&int_ret_, stmt, ready);
      };
      bool fetched = co_await drive(fetch, deadline, resume_fetch);
      if (!fetched) co_return timed_out("reading further results", deadline);
      if (int_ret_ == MYSQL_NO_DATA) break;
      if (int_ret_ == 1) co_return stmt_failure(stmt, "reading further results");
    }
  }
  co_return Outcome{};
}

asio::awaitable<Outcome> Connection::run(const std::string& sql,
                                         const std::vector<std::string>& params, Statement kind,
                                         std::size_t max_rows, QueryResult& out,
                                         Deadline deadline) {
  started_ = Clock::now();
  ++runs_;
  MYSQL_STMT* stmt = nullptr;
  auto cached = statements_.find(sql);
  if (cached != statements_.end()) {
    stmt = cached->second;
  } else {
    stmt = mysql_stmt_init(mysql_);
    if (!stmt) co_return failure("preparing the query");
    statements_.emplace(sql, stmt);  // closed with the connection whatever happens
    int_ret_ = 0;
    int status = mysql_stmt_prepare_start(&int_ret_, stmt, sql.data(), sql.size());
    auto resume = [this, stmt](int ready) {
      return mysql_stmt_prepare_cont(&int_ret_, stmt, ready);
    };
    bool done = co_await drive(status, deadline, resume);
    if (!done) co_return timed_out("preparing the query", deadline);
    if (int_ret_ != 0) {
      Outcome o = stmt_failure(stmt, "preparing the query");
      if (o.kind == Outcome::Kind::statement) {
        statements_.erase(sql);
        mysql_stmt_close(stmt);  // never prepared: nothing to tell the server
      }
      co_return o;
    }
  }

  Outcome wrong;
  wrong.kind = Outcome::Kind::statement;
  if (mysql_stmt_param_count(stmt) != params.size()) {
    wrong.message = fmt::format("the query has {} parameters (?), {} expected",
                                mysql_stmt_param_count(stmt), params.size());
    co_return wrong;
  }
  const unsigned columns = mysql_stmt_field_count(stmt);
  if (kind == Statement::select && columns == 0) {
    wrong.message = "the query returns no columns (it must be a SELECT)";
    co_return wrong;
  }
  if (kind == Statement::modify && columns != 0) {
    wrong.message = "the statement returns rows (it must change rows, not SELECT them)";
    co_return wrong;
  }

  // Parameters, bound as strings: the server sees data, never SQL.
  std::vector<MYSQL_BIND> binds(params.size());
  std::vector<unsigned long> lengths(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    lengths[i] = params[i].size();
    binds[i].buffer_type = MYSQL_TYPE_STRING;
    binds[i].buffer = const_cast<char*>(params[i].data());
    binds[i].buffer_length = lengths[i];
    binds[i].length = &lengths[i];
  }
  if (!params.empty() && mysql_stmt_bind_param(stmt, binds.data()) != 0) {
    co_return stmt_failure(stmt, "binding the parameters");
  }

  int_ret_ = 0;
  int status = mysql_stmt_execute_start(&int_ret_, stmt);
  auto resume_execute = [this, stmt](int ready) {
    return mysql_stmt_execute_cont(&int_ret_, stmt, ready);
  };
  bool executed = co_await drive(status, deadline, resume_execute);
  if (!executed) co_return timed_out("running the query", deadline);
  if (int_ret_ != 0) co_return stmt_failure(stmt, "running the query");
  if (kind == Statement::modify) {
    out.columns = 0;
    out.row_count = 0;
    out.rows.clear();
    out.affected_rows = mysql_stmt_affected_rows(stmt);
    co_return co_await drain_more_results(stmt, deadline);
  }

  // Rows, one at a time off the wire (bounded memory whatever the query
  // returns): each column is first fetched with no buffer to learn its
  // length, then read into a string of that length.
  out.columns = columns;
  out.row_count = 0;
  out.rows.clear();
  std::vector<MYSQL_BIND> results(columns);
  std::vector<unsigned long> result_lengths(columns);
  std::vector<my_bool> nulls(columns);
  std::vector<my_bool> truncated(columns);
  for (unsigned c = 0; c < columns; ++c) {
    results[c].buffer_type = MYSQL_TYPE_STRING;
    results[c].length = &result_lengths[c];
    results[c].is_null = &nulls[c];
    results[c].error = &truncated[c];
  }
  if (mysql_stmt_bind_result(stmt, results.data()) != 0)
    co_return stmt_failure(stmt, "binding the result");
  for (;;) {
    int_ret_ = 0;
    int fetch = mysql_stmt_fetch_start(&int_ret_, stmt);
    auto resume_fetch = [this, stmt](int ready) {
      return mysql_stmt_fetch_cont(&int_ret_, stmt, ready);
    };
    bool fetched = co_await drive(fetch, deadline, resume_fetch);
    if (!fetched) co_return timed_out("reading the rows", deadline);
    if (int_ret_ == MYSQL_NO_DATA) break;
    if (int_ret_ == 1) co_return stmt_failure(stmt, "reading the rows");
    ++out.row_count;
    if (out.rows.size() >= max_rows) continue;
    Row row(columns);
    for (unsigned c = 0; c < columns; ++c) {
      if (nulls[c]) continue;
      std::string value(result_lengths[c], '\0');
      if (!value.empty()) {
        MYSQL_BIND one{};
        unsigned long got = 0;
        one.buffer_type = MYSQL_TYPE_STRING;
        one.buffer = value.data();
        one.buffer_length = value.size();
        one.length = &got;
        if (mysql_stmt_fetch_column(stmt, &one, c, 0) != 0)
          co_return stmt_failure(stmt, "reading a column");
        value.resize(std::min<std::size_t>(got, value.size()));
      }
      row[c] = std::move(value);
    }
    out.rows.push_back(std::move(row));
  }
  Outcome more = co_await drain_more_results(stmt, deadline);
  co_return more;
}

// ---------------------------------------------------------------------------
// The pool.

class Pool : public std::enable_shared_from_this<Pool> {
 public:
  Pool(asio::any_io_executor executor, ClientSettings settings)
      : executor_(std::move(executor)),
        settings_(std::move(settings)),
        random_(std::random_device{}()) {
    init_library();
    servers_.resize(settings_.servers.size());
  }

  asio::awaitable<QueryResult> query(std::string sql, std::vector<std::string> params,
                                     Statement kind, Deadline deadline, std::size_t max_rows);
  asio::awaitable<void> warm_up();

  const ClientSettings& settings() const { return settings_; }
  const asio::any_io_executor& executor() const { return executor_; }

 private:
  struct ServerState {
    unsigned failures = 0;         // in a row
    Clock::time_point retry_at{};  // no new connection before
    std::string last_error;        // why it failed last
    bool ever_connected = false;
  };

  struct Attempts {  // what went wrong, for the lookup's detail
    std::string text;
    void add(std::string_view what) {
      if (!text.empty()) text += "; ";
      text += what;
    }
  };

  asio::awaitable<std::unique_ptr<Connection>> acquire(Deadline deadline, Attempts& attempts);
  asio::awaitable<std::unique_ptr<Connection>> connect_any(Deadline deadline, Attempts& attempts);
  void release(std::unique_ptr<Connection> connection);
  void discard(std::unique_ptr<Connection> connection);
  void server_failed(std::size_t server, std::string_view why);
  void server_connected(const Connection& connection);
  void wake_one();

  asio::any_io_executor executor_;
  ClientSettings settings_;
  std::vector<ServerState> servers_;
  std::vector<std::unique_ptr<Connection>> idle_;  // the most recently used last
  unsigned open_ = 0;                              // idle + in use + connecting
  std::list<asio::steady_timer*> waiters_;         // queries waiting for a connection
  std::minstd_rand random_;
};

void Pool::wake_one() {
  if (!waiters_.empty()) waiters_.front()->cancel();
}

void Pool::release(std::unique_ptr<Connection> connection) {
  idle_.push_back(std::move(connection));
  wake_one();
}

void Pool::discard(std::unique_ptr<Connection> connection) {
  connection.reset();
  --open_;
  wake_one();
}

void Pool::server_failed(std::size_t server, std::string_view why) {
  auto& state = servers_[server];
  ++state.failures;
  auto backoff = backoff_after(state.failures, settings_.max_backoff);
  // Jitter (75..100%) so that directors started together do not retry together.
  std::uniform_real_distribution<double> spread(0.75, 1.0);
  backoff = std::chrono::duration_cast<Clock::duration>(backoff * spread(random_));
  state.retry_at = Clock::now() + backoff;
  state.last_error = std::string(why);
  spdlog::warn("{}: server {} failed ({} in a row): {}; no new connection to it for {}",
               settings_.name, settings_.servers[server].text, state.failures, why,
               seconds_text(backoff));
  // Its idle connections are no better: a hung server hangs them all.
  std::erase_if(idle_, [this, server](const std::unique_ptr<Connection>& c) {
    if (c->server() != server) return false;
    --open_;
    return true;
  });
}

void Pool::server_connected(const Connection& connection) {
  auto& state = servers_[connection.server()];
  const auto& name = settings_.servers[connection.server()].text;
  if (state.failures > 0) {
    spdlog::info("{}: server {} is back after {} failures ({})", settings_.name, name,
                 state.failures, connection.describe());
  } else if (!state.ever_connected) {
    spdlog::info("{}: connected to server {} ({})", settings_.name, name, connection.describe());
  } else {
    spdlog::debug("{}: new connection to server {}", settings_.name, name);
  }
  state.failures = 0;
  state.retry_at = {};
  state.ever_connected = true;
}

asio::awaitable<std::unique_ptr<Connection>> Pool::connect_any(Deadline deadline,
                                                               Attempts& attempts) {
  const auto now = Clock::now();
  bool tried = false;
  for (std::size_t i = 0; i < servers_.size(); ++i) {
    if (servers_[i].retry_at > now) continue;
    if (deadline.expired()) break;
    tried = true;
    auto connection = std::make_unique<Connection>(executor_, settings_, i);
    Outcome outcome = co_await connection->connect(deadline.within(settings_.connect_timeout));
    if (outcome.ok()) {
      server_connected(*connection);
      co_return connection;
    }
    connection.reset();
    attempts.add(fmt::format("{}: {}", settings_.servers[i].text, outcome.message));
    server_failed(i, outcome.message);
  }
  if (!tried) {
    auto next = std::min_element(
        servers_.begin(), servers_.end(),
        [](const ServerState& a, const ServerState& b) { return a.retry_at < b.retry_at; });
    auto index = static_cast<std::size_t>(next - servers_.begin());
    attempts.add(fmt::format("every server failed recently; next connect to {} in {} (it "
                             "failed {} in a row, last: {})",
                             settings_.servers[index].text,
                             seconds_text(std::max(next->retry_at - now, Clock::duration{})),
                             next->failures, next->last_error));
  }
  co_return nullptr;
}

asio::awaitable<std::unique_ptr<Connection>> Pool::acquire(Deadline deadline, Attempts& attempts) {
  for (;;) {
    while (!idle_.empty()) {
      auto connection = std::move(idle_.back());
      idle_.pop_back();
      if (!connection->looks_closed()) co_return connection;
      spdlog::debug("{}: server {} closed an idle connection", settings_.name,
                    connection->address().text);
      discard(std::move(connection));
    }
    if (open_ < std::max(1u, settings_.pool)) {
      ++open_;
      auto connection = co_await connect_any(deadline, attempts);
      if (!connection) {
        --open_;
        wake_one();
      }
      co_return connection;
    }
    if (deadline.expired()) {
      attempts.add(fmt::format("all {} connections stayed busy", settings_.pool));
      co_return nullptr;
    }
    // Wait for a connection to come back (release and discard wake us).
    asio::steady_timer timer(executor_, deadline.when());
    auto place = waiters_.insert(waiters_.end(), &timer);
    struct Unlist {
      std::list<asio::steady_timer*>& list;
      std::list<asio::steady_timer*>::iterator place;
      ~Unlist() { list.erase(place); }
    } unlist{waiters_, place};
    co_await timer.async_wait(use_tuple);
  }
}

asio::awaitable<QueryResult> Pool::query(std::string sql, std::vector<std::string> params,
                                         Statement kind, Deadline deadline,
                                         std::size_t max_rows) {
  auto self = shared_from_this();  // pending coroutines keep the pool alive
  QueryResult result;
  Attempts attempts;
  const std::size_t max_attempts = settings_.pool + settings_.servers.size() + 1;
  for (std::size_t attempt = 0; attempt < max_attempts; ++attempt) {
    if (deadline.expired()) break;
    auto connection = co_await acquire(deadline, attempts);
    if (!connection) break;
    const bool fresh = connection->runs() == 0;
    const std::size_t server = connection->server();
    const std::string& name = settings_.servers[server].text;
    Outcome outcome = co_await connection->run(sql, params, kind, max_rows, result,
                                               deadline.within(settings_.connect_timeout));
    switch (outcome.kind) {
      case Outcome::Kind::ok:
        result.status = QueryStatus::ok;
        result.server = name;
        result.error.clear();
        release(std::move(connection));
        co_return result;
      case Outcome::Kind::statement:
        // The server answered: the query is wrong for this database.
        result.status = QueryStatus::rejected;
        result.server = name;
        result.error = fmt::format("{}: {}", name, outcome.message);
        release(std::move(connection));
        co_return result;
      case Outcome::Kind::timed_out:
        attempts.add(fmt::format("{}: {}", name, outcome.message));
        discard(std::move(connection));
        server_failed(server, outcome.message);
        break;
      case Outcome::Kind::connection:
        attempts.add(fmt::format("{}: {}", name, outcome.message));
        discard(std::move(connection));
        // A connection that sat idle may have been closed by the server
        // (wait_timeout, a restart): not the server's fault. A new one
        // failing is.
        if (fresh)
          server_failed(server, outcome.message);
        else
          spdlog::info("{}: server {}: a pooled connection failed ({}); trying another",
                       settings_.name, name, outcome.message);
        break;
    }
  }
  result.status = QueryStatus::failed;
  result.rows.clear();
  result.row_count = 0;
  if (attempts.text.empty()) attempts.add("out of time");
  result.error = std::move(attempts.text);
  co_return result;
}

asio::awaitable<void> Pool::warm_up() {
  auto self = shared_from_this();
  Attempts attempts;
  auto budget = settings_.connect_timeout *
                static_cast<int>(std::max<std::size_t>(1, settings_.servers.size()));
  auto connection = co_await acquire(Deadline::after(budget), attempts);
  if (connection) release(std::move(connection));
  // Failures were logged by server_failed().
}

// ---------------------------------------------------------------------------

Client::Client(asio::any_io_executor executor, ClientSettings settings)
    : pool_(std::make_shared<Pool>(std::move(executor), std::move(settings))) {}

Client::~Client() = default;

asio::awaitable<QueryResult> Client::query(std::string sql, std::vector<std::string> params,
                                           Deadline deadline, std::size_t max_rows) {
  auto pool = pool_;
  co_return co_await pool->query(std::move(sql), std::move(params), Statement::select, deadline,
                                 max_rows);
}

asio::awaitable<QueryResult> Client::execute(std::string sql, std::vector<std::string> params,
                                             Deadline deadline) {
  auto pool = pool_;
  co_return co_await pool->query(std::move(sql), std::move(params), Statement::modify, deadline,
                                 0);
}

void Client::warm_up() {
  auto pool = pool_;
  std::string name = pool->settings().name;
  auto done = [name](std::exception_ptr error) {
    if (!error) return;
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      spdlog::error("{}: warm-up failed unexpectedly: {}", name, e.what());
    }
  };
  // The pool's executor is the one it was built with.
  asio::co_spawn(pool->executor(), pool->warm_up(), done);
}

}  // namespace isthmus::sql
