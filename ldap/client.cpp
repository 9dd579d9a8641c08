#include "ldap/client.hpp"

#include "common/log.hpp"
#include "common/strings.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <ldap.h>
#include <openldap.h>  // ldap_init_fd, LDAP_PROTO_TCP

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <list>
#include <map>
#include <random>
#include <stdexcept>

namespace isthmus::ldap {

namespace asio = boost::asio;
using namespace boost::asio::experimental::awaitable_operators;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;

std::optional<Scope> scope_from(std::string_view name) {
  if (name == "base") return Scope::base;
  if (name == "one") return Scope::one;
  if (name == "sub") return Scope::sub;
  return std::nullopt;
}

std::string_view name_of(BindOutcome outcome) {
  switch (outcome) {
    case BindOutcome::accepted: return "accepted";
    case BindOutcome::rejected: return "rejected";
    case BindOutcome::unavailable: return "unavailable";
  }
  return "?";
}

const std::vector<std::string>* Entry::values(std::string_view attribute) const {
  for (const auto& [name, values] : attributes) {
    if (iequals(name, attribute)) return &values;
  }
  return nullptr;
}

namespace {

// The first pause after a server failed; it doubles with each further failure.
constexpr milliseconds kFirstBackoff{250};
// A connection to a server further down the list is given up when it comes
// back to its pool after this long, so that traffic returns to the first
// server once that works again.
constexpr std::chrono::seconds kFailbackAfter{60};

struct MessageFree {
  void operator()(LDAPMessage* message) const { ldap_msgfree(message); }
};
using MessagePtr = std::unique_ptr<LDAPMessage, MessageFree>;

std::string show(Clock::duration duration) {
  const auto ms = std::chrono::duration_cast<milliseconds>(duration).count();
  if (ms < 1000) return fmt::format("{}ms", ms);
  return fmt::format("{:.1f}s", static_cast<double>(ms) / 1000.0);
}

// A result code as text, with the handle's diagnostic message if it has one.
std::string describe(LDAP* ld, int code) {
  std::string text = fmt::format("{} ({})", ldap_err2string(code), code);
  char* diagnostic = nullptr;
  if (ld && ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diagnostic) == LDAP_OPT_SUCCESS &&
      diagnostic) {
    // libldap says "(unknown error code)" when it has nothing to add.
    if (*diagnostic && std::string_view(diagnostic) != "(unknown error code)")
      text += ": " + sanitize(diagnostic, 200);
    ldap_memfree(diagnostic);
  }
  return text;
}

int last_result_code(LDAP* ld) {
  int code = LDAP_OTHER;
  ldap_get_option(ld, LDAP_OPT_RESULT_CODE, &code);
  return code;
}

timeval to_timeval(Clock::duration duration) {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(duration).count();
  us = std::max<long long>(us, 1000);
  return timeval{static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
}

void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

struct Server {
  std::string uri;
  std::string host;
  std::uint16_t port = 0;
  bool ldaps = false;
  unsigned failures = 0;          // in a row
  Clock::time_point retry_at{};   // in backoff until then
  std::string last_error;
};

// One LDAP handle on one TCP connection. libldap owns the descriptor; the
// stream_descriptor only waits on it and must let go before the handle
// closes it.
class Connection {
 public:
  Connection(LDAP* ld, asio::posix::stream_descriptor descriptor, std::size_t server)
      : ld_(ld), descriptor_(std::move(descriptor)), server_(server), opened_(Clock::now()) {}
  ~Connection() {
    descriptor_.release();  // libldap closes it, not Asio
    ldap_unbind_ext(ld_, nullptr, nullptr);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  LDAP* handle() const { return ld_; }
  asio::posix::stream_descriptor& descriptor() { return descriptor_; }
  std::size_t server() const { return server_; }
  Clock::time_point opened() const { return opened_; }

  // True if libldap holds received bytes the socket no longer shows (TLS
  // records decrypted ahead): then waiting for readability would stall.
  bool data_buffered() const {
    Sockbuf* sb = nullptr;
    if (ldap_get_option(ld_, LDAP_OPT_SOCKBUF, &sb) != LDAP_OPT_SUCCESS || !sb) return false;
    return ber_sockbuf_ctrl(sb, LBER_SB_OPT_DATA_READY, nullptr) > 0;
  }

 private:
  LDAP* ld_;
  asio::posix::stream_descriptor descriptor_;
  std::size_t server_;
  Clock::time_point opened_;
};

// The complete answer to one request, or why there is none.
struct Reply {
  MessagePtr message;
  std::string error;  // no message: the connection is unusable
  bool timed_out = false;
};

struct Waiter {
  explicit Waiter(const asio::any_io_executor& executor, Clock::time_point until)
      : timer(executor, until) {}
  asio::steady_timer timer;
  bool woken = false;
};

struct Pool {
  std::string_view purpose;  // for logs: "searches", "password checks"
  bool service_bind = false;
  unsigned size = 1;
  unsigned open = 0;  // connections idle, lent out or being opened
  std::vector<std::unique_ptr<Connection>> idle;
  std::list<Waiter*> waiters;  // operations waiting for a free slot, first come first served
};

// A search sent on a shared connection, waiting for its complete result:
// the connection's reader (Impl::pump) hands it over and wakes the timer.
struct Pending {
  Pending(const asio::any_io_executor& executor, Clock::time_point until)
      : timer(executor, until) {}
  asio::steady_timer timer;
  MessagePtr message;
  bool done = false;   // answered, or the connection failed (error set)
  std::string error;
};

// A search connection, shared by pipelined searches (RFC 4511 4.1.1: the
// message ID ties each result to its request; a client may have many
// outstanding). Binds never share: they change the connection's identity.
struct Shared {
  std::unique_ptr<Connection> connection;
  std::map<int, Pending*> pending;  // message id -> the search waiting for it
  bool pumping = false;             // a reader is running
  bool dead = false;                // discarded: no new searches, the reader stops
  bool answered = false;            // it answered a search (a later failure may be staleness)
};

// Searches in flight on one connection at most; more wait for a slot.
constexpr std::size_t kPipelineDepth = 32;

// What one attempt on one connection came to.
struct Attempt {
  enum class Kind : std::uint8_t {
    answered,      // the server answered (successfully or not): keep the connection
    broken,        // the connection failed: discard it, try another
    server_busy,   // the server answered busy/unavailable: discard, blame the server
    timed_out,     // no answer in time: discard, blame the server
  };
  Kind kind = Kind::broken;
  std::string error;
};

}  // namespace

struct Client::Impl {
  Impl(asio::any_io_executor executor, ClientSettings settings)
      : executor_(std::move(executor)), settings_(std::move(settings)),
        rng_(std::random_device{}()) {
    if (settings_.uris.empty()) throw std::invalid_argument("no LDAP server URI");
    for (const auto& uri : settings_.uris) servers_.push_back(parse_server(uri));
    search_pool_.purpose = "searches";
    search_pool_.service_bind = true;
    search_pool_.size = std::max(1u, settings_.pool_size);
    auth_pool_.purpose = "password checks";
    auth_pool_.service_bind = false;
    auth_pool_.size = std::max(1u, settings_.pool_size);
  }

  static Server parse_server(const std::string& uri) {
    LDAPURLDesc* parsed = nullptr;
    const int rc = ldap_url_parse(uri.c_str(), &parsed);
    if (rc != LDAP_URL_SUCCESS || !parsed)
      throw std::invalid_argument(fmt::format("cannot parse LDAP URI \"{}\" (error {})", uri, rc));
    Server server;
    server.uri = uri;
    const std::string scheme = parsed->lud_scheme ? parsed->lud_scheme : "";
    server.host = parsed->lud_host ? parsed->lud_host : "";
    const int port = parsed->lud_port;
    ldap_free_urldesc(parsed);
    if (scheme != "ldap" && scheme != "ldaps")
      throw std::invalid_argument(fmt::format("LDAP URI \"{}\": only ldap:// and ldaps://", uri));
    if (server.host.empty())
      throw std::invalid_argument(fmt::format("LDAP URI \"{}\" names no host", uri));
    server.ldaps = scheme == "ldaps";
    server.port = static_cast<std::uint16_t>(port > 0 ? port : (server.ldaps ? 636 : 389));
    return server;
  }

  // -- connections and pools ------------------------------------------------

  // A lent connection: handed back with release() or discard(); one still
  // held when it goes away (an exception, a coroutine destroyed) is discarded.
  struct Lease {
    Impl& impl;
    Pool& pool;
    std::unique_ptr<Connection> connection;
    bool reused = false;  // came from the idle list (may have gone stale)
    std::string error;    // no connection: why
    Lease(Impl& i, Pool& p) : impl(i), pool(p) {}
    ~Lease() {
      if (connection) impl.discard(pool, std::move(connection));
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
  };

  void wake_one(Pool& pool) {
    if (pool.waiters.empty()) return;
    Waiter* waiter = pool.waiters.front();
    pool.waiters.pop_front();
    waiter->woken = true;
    waiter->timer.cancel();
  }

  void release(Lease& lease) {
    auto connection = std::move(lease.connection);
    if (closed_ || !connection) return;
    if (connection->server() > 0 && Clock::now() - connection->opened() > kFailbackAfter) {
      discard(lease.pool, std::move(connection));  // fail back to the first server
      return;
    }
    lease.pool.idle.push_back(std::move(connection));
    wake_one(lease.pool);
  }

  void discard(Pool& pool, std::unique_ptr<Connection> connection) {
    connection.reset();  // ldap_unbind_ext: the descriptor is closed
    if (closed_) return;
    ++stats_.discarded;
    --pool.open;
    wake_one(pool);
  }

  // Waits until a lent connection comes back (true) or the deadline passes.
  asio::awaitable<bool> wait_for_slot(Pool& pool, Deadline deadline) {
    Waiter waiter(executor_, deadline.when());
    auto position = pool.waiters.insert(pool.waiters.end(), &waiter);
    struct Unlist {
      Pool& pool;
      Waiter& waiter;
      std::list<Waiter*>::iterator position;
      ~Unlist() {
        if (!waiter.woken) pool.waiters.erase(position);
      }
    } unlist{pool, waiter, position};
    co_await waiter.timer.async_wait(use_tuple);
    co_return waiter.woken;
  }

  // An idle connection, a new one, or (lease.connection empty) why not.
  asio::awaitable<void> acquire(Lease& lease, Deadline deadline) {
    Pool& pool = lease.pool;
    for (;;) {
      if (!pool.idle.empty()) {
        lease.connection = std::move(pool.idle.back());
        pool.idle.pop_back();
        lease.reused = true;
        co_return;
      }
      if (pool.open < pool.size) {
        ++pool.open;
        lease.reused = false;
        std::string why;
        lease.connection = co_await open_connection(pool, deadline, why);
        if (!lease.connection) {
          --pool.open;
          wake_one(pool);
          lease.error = std::move(why);
        }
        co_return;
      }
      const bool woken = co_await wait_for_slot(pool, deadline);
      if (!woken) {
        lease.error = fmt::format("all {} LDAP connections for {} stayed busy", pool.size,
                                  pool.purpose);
        co_return;
      }
    }
  }

  void server_failed(std::size_t index, const std::string& why) {
    Server& server = servers_[index];
    ++server.failures;
    const unsigned doublings = std::min(server.failures - 1, 16u);
    auto pause = std::min<milliseconds>(kFirstBackoff * (1u << doublings), settings_.max_backoff);
    std::uniform_real_distribution<double> jitter(0.8, 1.2);
    pause = std::min<milliseconds>(
        milliseconds(static_cast<long long>(static_cast<double>(pause.count()) * jitter(rng_))),
        settings_.max_backoff);
    server.retry_at = Clock::now() + pause;
    server.last_error = why;
    spdlog::warn("ldap: server {} failed ({} in a row): {}; not tried again for {}", server.uri,
                 server.failures, why, show(pause));
  }

  void server_works(std::size_t index) {
    Server& server = servers_[index];
    if (server.failures > 0)
      spdlog::info("ldap: server {} works again after {} failure(s)", server.uri,
                   server.failures);
    server.failures = 0;
    server.retry_at = {};
    server.last_error.clear();
  }

  // A new connection to the first server that is not in backoff and works.
  asio::awaitable<std::unique_ptr<Connection>> open_connection(Pool& pool, Deadline deadline,
                                                               std::string& why) {
    std::vector<std::string> problems;
    for (std::size_t index = 0; index < servers_.size(); ++index) {
      Server& server = servers_[index];
      const auto now = Clock::now();
      if (server.retry_at > now) {
        problems.push_back(fmt::format("{} in backoff for {} more (last: {})", server.uri,
                                       show(server.retry_at - now), server.last_error));
        continue;
      }
      if (deadline.expired()) {
        problems.push_back(fmt::format("{} not tried: out of time", server.uri));
        continue;
      }
      std::string failure;
      auto connection = co_await connect(pool, index, deadline, failure);
      if (connection) {
        server_works(index);
        co_return connection;
      }
      ++stats_.connect_failures;
      server_failed(index, failure);
      problems.push_back(server.uri + ": " + failure);
    }
    why = "no LDAP server available: ";
    for (std::size_t i = 0; i < problems.size(); ++i) why += (i ? "; " : "") + problems[i];
    co_return nullptr;
  }

  bool configure_tls(LDAP* ld, std::string& why) {
    int require = settings_.verify ? LDAP_OPT_X_TLS_DEMAND : LDAP_OPT_X_TLS_NEVER;
    int min_protocol = LDAP_OPT_X_TLS_PROTOCOL_TLS1_2;
    int is_server = 0;
    if (!settings_.ca_file.empty() &&
        ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, settings_.ca_file.c_str()) !=
            LDAP_OPT_SUCCESS) {
      why = "cannot use CA file " + settings_.ca_file.string();
      return false;
    }
    if (ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &require) != LDAP_OPT_SUCCESS ||
        ldap_set_option(ld, LDAP_OPT_X_TLS_PROTOCOL_MIN, &min_protocol) != LDAP_OPT_SUCCESS) {
      why = "cannot set TLS options";
      return false;
    }
    // A TLS context for this handle alone, made from the options above.
    const int rc = ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &is_server);
    if (rc != LDAP_OPT_SUCCESS) {
      why = "cannot make a TLS context: " + describe(ld, rc);
      return false;
    }
    return true;
  }

  // TCP, TLS (ldaps:// or StartTLS) and, for the service pool, the bind;
  // all within connect_timeout and the caller's deadline.
  asio::awaitable<std::unique_ptr<Connection>> connect(Pool& pool, std::size_t index,
                                                       Deadline outer, std::string& why) {
    const Server& server = servers_[index];
    const Deadline deadline = outer.within(settings_.connect_timeout);
    const auto started = Clock::now();

    // Addresses. Names go through the system resolver (bounded by its own
    // timeouts, not by ours: prefer addresses or /etc/hosts names).
    std::vector<tcp::endpoint> endpoints;
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(server.host, ec);
    if (!ec) {
      endpoints.emplace_back(address, server.port);
    } else {
      tcp::resolver resolver(executor_);
      auto [resolve_error, results] =
          co_await resolver.async_resolve(server.host, std::to_string(server.port), use_tuple);
      if (resolve_error) {
        why = fmt::format("cannot resolve {}: {}", server.host, resolve_error.message());
        co_return nullptr;
      }
      for (const auto& result : results) endpoints.push_back(result.endpoint());
    }
    if (endpoints.empty()) {
      why = fmt::format("no address for {}", server.host);
      co_return nullptr;
    }

    tcp::socket socket(executor_);
    ec = asio::error::host_unreachable;
    for (const auto& endpoint : endpoints) {
      if (socket.is_open()) socket.close(ec);
      asio::steady_timer timer(executor_, deadline.when());
      auto connected =
          co_await (socket.async_connect(endpoint, use_tuple) || timer.async_wait(use_tuple));
      if (connected.index() == 1) {
        ec = asio::error::timed_out;
        break;
      }
      ec = std::get<0>(std::get<0>(connected));
      if (!ec) break;
    }
    if (ec) {
      why = ec == asio::error::timed_out
                ? fmt::format("connect: no answer within {}", show(Clock::now() - started))
                : "connect: " + ec.message();
      co_return nullptr;
    }
    const int fd = socket.release(ec);
    if (ec) {
      why = "connect: " + ec.message();
      co_return nullptr;
    }
    set_nonblocking(fd);
    LDAP* ld = nullptr;
    int rc = ldap_init_fd(fd, LDAP_PROTO_TCP, server.uri.c_str(), &ld);
    if (rc != LDAP_SUCCESS || !ld) {
      ::close(fd);
      why = fmt::format("cannot make an LDAP handle: {}", ldap_err2string(rc));
      co_return nullptr;
    }
    auto connection =
        std::make_unique<Connection>(ld, asio::posix::stream_descriptor(executor_, fd), index);
    int version = LDAP_VERSION3;
    ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &version);
    ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);

    const bool tls = server.ldaps || settings_.starttls;
    if (tls && !configure_tls(ld, why)) co_return nullptr;
    if (!server.ldaps && settings_.starttls) {
      // RFC 4511 4.14: StartTLS is an extended operation; TLS starts after
      // its success. A refusal fails the connection (never plaintext).
      int msgid = 0;
      rc = ldap_extended_operation(ld, LDAP_EXOP_START_TLS, nullptr, nullptr, nullptr, &msgid);
      if (rc != LDAP_SUCCESS) {
        why = "StartTLS: " + describe(ld, rc);
        co_return nullptr;
      }
      Reply reply = co_await await_result(*connection, msgid, deadline);
      if (!reply.message) {
        why = "StartTLS: " + reply.error;
        co_return nullptr;
      }
      int code = LDAP_OTHER;
      char* text = nullptr;
      rc = ldap_parse_result(ld, reply.message.get(), &code, nullptr, &text, nullptr, nullptr, 0);
      std::string server_text = text ? sanitize(text, 200) : "";
      if (text) ldap_memfree(text);
      if (rc != LDAP_SUCCESS || code != LDAP_SUCCESS) {
        why = fmt::format("StartTLS refused: {} ({}){}{}", ldap_err2string(code), code,
                          server_text.empty() ? "" : ": ", server_text);
        co_return nullptr;
      }
    }
    if (tls) {
      if (deadline.expired()) {
        why = "TLS: out of time before the handshake";
        co_return nullptr;
      }
      // Synchronous inside libldap, bounded by the network timeout.
      timeval budget = to_timeval(deadline.remaining());
      ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &budget);
      rc = ldap_install_tls(ld);
      set_nonblocking(fd);  // libldap makes the socket blocking again afterwards
      if (rc != LDAP_SUCCESS) {
        why = "TLS handshake failed (a certificate tls.ca does not vouch for, a name that "
              "does not match the URI's host, or no TLS there): " + describe(ld, rc);
        co_return nullptr;
      }
    }
    if (pool.service_bind && !settings_.bind_dn.empty()) {
      Attempt bound = co_await simple_bind(*connection, settings_.bind_dn, settings_.bind_password,
                                           deadline, rc);
      if (bound.kind != Attempt::Kind::answered) {
        why = "bind: " + bound.error;
        co_return nullptr;
      }
      if (rc != LDAP_SUCCESS) {
        why = fmt::format("bind as {} refused: {}", sanitize(settings_.bind_dn), bound.error);
        co_return nullptr;
      }
    }
    ++stats_.connects;
    spdlog::info("ldap: connected to {} for {} ({}{}) in {}", server.uri, pool.purpose,
                 server.ldaps ? "TLS" : (settings_.starttls ? "StartTLS" : "plaintext"),
                 pool.service_bind && !settings_.bind_dn.empty()
                     ? ", bound as " + sanitize(settings_.bind_dn)
                     : "",
                 show(Clock::now() - started));
    co_return connection;
  }

  // -- one request on one connection ------------------------------------------

  // Readable (an empty error_code), the deadline passed (timed_out), or an error.
  asio::awaitable<boost::system::error_code> wait_readable(Connection& connection,
                                                           Deadline deadline) {
    asio::steady_timer timer(executor_, deadline.when());
    auto woke = co_await (
        connection.descriptor().async_wait(asio::posix::descriptor_base::wait_read, use_tuple) ||
        timer.async_wait(use_tuple));
    if (woke.index() == 1) co_return asio::error::timed_out;
    co_return std::get<0>(std::get<0>(woke));
  }

  // The complete result of `msgid` (every entry and the final result of a
  // search), collected without blocking: ldap_result() with a zero timeout
  // whenever the socket is readable.
  asio::awaitable<Reply> await_result(Connection& connection, int msgid, Deadline deadline) {
    Reply reply;
    unsigned buffered_rounds = 0;
    for (;;) {
      LDAPMessage* raw = nullptr;
      timeval zero{0, 0};
      const int rc = ldap_result(connection.handle(), msgid, LDAP_MSG_ALL, &zero, &raw);
      if (rc > 0) {
        reply.message.reset(raw);
        co_return reply;
      }
      if (raw) ldap_msgfree(raw);
      if (rc < 0) {
        reply.error = describe(connection.handle(), last_result_code(connection.handle()));
        co_return reply;
      }
      if (deadline.expired()) {
        reply.timed_out = true;
        reply.error = "no answer in time";
        co_return reply;
      }
      if (connection.data_buffered() && ++buffered_rounds < 1000) {
        co_await asio::post(executor_, asio::use_awaitable);  // let others run, then read on
        continue;
      }
      buffered_rounds = 0;
      const auto waited = co_await wait_readable(connection, deadline);
      if (waited == asio::error::timed_out) {
        reply.timed_out = true;
        reply.error = "no answer in time";
        co_return reply;
      }
      if (waited) {
        reply.error = "waiting for the server: " + waited.message();
        co_return reply;
      }
    }
  }

  // A simple bind; `code` is the server's result code when answered.
  asio::awaitable<Attempt> simple_bind(Connection& connection, const std::string& dn,
                                       const std::string& password, Deadline deadline,
                                       int& code) {
    Attempt attempt;
    LDAP* ld = connection.handle();
    berval credentials{};
    credentials.bv_val = const_cast<char*>(password.data());
    credentials.bv_len = password.size();
    int msgid = 0;
    const int rc =
        ldap_sasl_bind(ld, dn.c_str(), LDAP_SASL_SIMPLE, &credentials, nullptr, nullptr, &msgid);
    if (rc != LDAP_SUCCESS) {
      attempt.error = describe(ld, rc);
      co_return attempt;
    }
    co_return co_await await_answer(connection, msgid, deadline, code, "bind");
  }

  // The result of the single-answer operation `msgid` (a bind, a modify):
  // `code` is the server's result code when it answered; busy/unavailable
  // counts as the server's trouble (try another), any other code as its
  // answer.
  asio::awaitable<Attempt> await_answer(Connection& connection, int msgid, Deadline deadline,
                                        int& code, const char* what) {
    Attempt attempt;
    LDAP* ld = connection.handle();
    Reply reply = co_await await_result(connection, msgid, deadline);
    if (!reply.message) {
      attempt.kind = reply.timed_out ? Attempt::Kind::timed_out : Attempt::Kind::broken;
      attempt.error = reply.error;
      co_return attempt;
    }
    code = LDAP_OTHER;
    char* text = nullptr;
    const int parsed =
        ldap_parse_result(ld, reply.message.get(), &code, nullptr, &text, nullptr, nullptr, 0);
    std::string server_text = text ? sanitize(text, 200) : "";
    if (text) ldap_memfree(text);
    if (parsed != LDAP_SUCCESS) {
      attempt.error = fmt::format("cannot parse the {} result: {}", what, describe(ld, parsed));
      co_return attempt;
    }
    attempt.error = fmt::format("{} ({}){}{}", ldap_err2string(code), code,
                                server_text.empty() ? "" : ": ", server_text);
    attempt.kind = code == LDAP_BUSY || code == LDAP_UNAVAILABLE ? Attempt::Kind::server_busy
                                                                 : Attempt::Kind::answered;
    co_return attempt;
  }

  static Entry read_entry(LDAP* ld, LDAPMessage* message) {
    Entry entry;
    if (char* dn = ldap_get_dn(ld, message)) {
      entry.dn = dn;
      ldap_memfree(dn);
    }
    BerElement* ber = nullptr;
    for (char* name = ldap_first_attribute(ld, message, &ber); name;
         name = ldap_next_attribute(ld, message, ber)) {
      std::vector<std::string> values;
      if (berval** raw = ldap_get_values_len(ld, message, name)) {
        for (berval** v = raw; *v; ++v) values.emplace_back((*v)->bv_val, (*v)->bv_len);
        ldap_value_free_len(raw);
      }
      entry.attributes.emplace_back(name, std::move(values));
      ldap_memfree(name);
    }
    if (ber) ber_free(ber, 0);
    return entry;
  }

  // -- searches, pipelined on shared connections ------------------------------

  void wake_searcher() {
    if (search_waiters_.empty()) return;
    Waiter* waiter = search_waiters_.front();
    search_waiters_.pop_front();
    waiter->woken = true;
    waiter->timer.cancel();
  }

  // Fails every search on `shared` with `why` and throws the connection
  // away (it closes when the last search or its reader lets go).
  void kill(Shared& shared, const std::string& why) {
    if (shared.dead) return;
    shared.dead = true;
    for (auto& [id, pending] : shared.pending) {
      pending->done = true;
      pending->error = why;
      pending->timer.cancel();
    }
    shared.pending.clear();
    boost::system::error_code ignored;
    shared.connection->descriptor().cancel(ignored);
    std::erase_if(search_live_, [&shared](const auto& s) { return s.get() == &shared; });
    if (!closed_) ++stats_.discarded;
    wake_searcher();
  }

  // The connection's one reader: whatever results are complete go to their
  // searches; then it waits for the socket, while any search is pending.
  asio::awaitable<void> pump(std::shared_ptr<Shared> shared) {
    unsigned buffered_rounds = 0;
    LDAP* ld = shared->connection->handle();
    while (!shared->dead && !shared->pending.empty()) {
      for (;;) {
        LDAPMessage* raw = nullptr;
        timeval zero{0, 0};
        const int rc = ldap_result(ld, LDAP_RES_ANY, LDAP_MSG_ALL, &zero, &raw);
        if (rc > 0) {
          MessagePtr message(raw);
          auto it = shared->pending.find(ldap_msgid(raw));
          if (it != shared->pending.end()) {  // else: an abandoned search's late answer
            Pending* pending = it->second;
            shared->pending.erase(it);
            pending->message = std::move(message);
            pending->done = true;
            pending->timer.cancel();
          }
          continue;
        }
        if (raw) ldap_msgfree(raw);
        if (rc < 0) kill(*shared, describe(ld, last_result_code(ld)));
        break;
      }
      if (shared->dead || shared->pending.empty()) break;
      if (shared->connection->data_buffered() && ++buffered_rounds < 1000) {
        co_await asio::post(executor_, asio::use_awaitable);  // let others run, then read on
        continue;
      }
      buffered_rounds = 0;
      auto [ec] = co_await shared->connection->descriptor().async_wait(
          asio::posix::descriptor_base::wait_read, use_tuple);
      if (ec && !shared->dead) kill(*shared, "waiting for the server: " + ec.message());
    }
    shared->pumping = false;
  }

  // A connection with room for one more search: a new one while the pool
  // has room and every open one is busy, else the least busy; nullptr (and
  // `why`) if none could be had before the deadline.
  asio::awaitable<std::shared_ptr<Shared>> pick(Deadline deadline, std::string& why) {
    for (;;) {
      // Fail back: an idle connection to a server further down the list goes
      // after a while, so that traffic returns to the first server.
      std::vector<std::shared_ptr<Shared>> old;
      for (const auto& s : search_live_)
        if (s->pending.empty() && s->connection->server() > 0 &&
            Clock::now() - s->connection->opened() > kFailbackAfter)
          old.push_back(s);
      for (const auto& s : old) kill(*s, "fail back");
      std::shared_ptr<Shared> best;
      for (const auto& s : search_live_)
        if (!s->dead && s->pending.size() < kPipelineDepth &&
            (!best || s->pending.size() < best->pending.size()))
          best = s;
      const std::size_t open = search_live_.size() + search_opening_;
      if ((!best || !best->pending.empty()) && open < search_pool_.size) {
        ++search_opening_;
        auto connection = co_await open_connection(search_pool_, deadline, why);
        --search_opening_;
        if (!connection) {
          wake_searcher();
          co_return best;  // maybe a busy one still serves
        }
        auto shared = std::make_shared<Shared>();
        shared->connection = std::move(connection);
        if (closed_) co_return nullptr;
        search_live_.push_back(shared);
        co_return shared;
      }
      if (best) co_return best;
      Waiter waiter(executor_, deadline.when());
      auto position = search_waiters_.insert(search_waiters_.end(), &waiter);
      co_await waiter.timer.async_wait(use_tuple);
      if (!waiter.woken) {
        search_waiters_.erase(position);
        why = fmt::format("all {} LDAP connections for searches stayed busy with {} searches "
                          "each",
                          search_pool_.size, kPipelineDepth);
        co_return nullptr;
      }
    }
  }

  // The search request on `ld`; its message id, or false and `attempt` set.
  static bool send_search(LDAP* ld, const SearchRequest& request, Deadline deadline, int& msgid,
                          Attempt& attempt, SearchResult& result) {
    std::vector<char*> attributes;
    for (const auto& name : request.attributes) attributes.push_back(const_cast<char*>(name.c_str()));
    attributes.push_back(nullptr);
    const int scope = request.scope == Scope::base  ? LDAP_SCOPE_BASE
                      : request.scope == Scope::one ? LDAP_SCOPE_ONELEVEL
                                                    : LDAP_SCOPE_SUBTREE;
    // The server's time limit (whole seconds, RFC 4511 4.5.1.5): what is left.
    const auto left = std::chrono::duration_cast<std::chrono::seconds>(deadline.remaining()) +
                      std::chrono::seconds(1);
    timeval limit{static_cast<time_t>(std::min<long long>(left.count(), 3600)), 0};
    const int rc = ldap_search_ext(ld, request.base.c_str(), scope, request.filter.c_str(),
                                   attributes.data(), 0, nullptr, nullptr, &limit,
                                   request.size_limit, &msgid);
    if (rc == LDAP_FILTER_ERROR || rc == LDAP_PARAM_ERROR) {
      attempt.kind = Attempt::Kind::answered;  // our request is wrong, not the connection
      result.error = "search not sent: " + describe(ld, rc);
      return false;
    }
    if (rc != LDAP_SUCCESS) {
      attempt.kind = Attempt::Kind::broken;
      attempt.error = "search: " + describe(ld, rc);
      return false;
    }
    return true;
  }

  // What a complete search result says.
  static Attempt interpret_search(LDAP* ld, LDAPMessage* chain, SearchResult& result) {
    Attempt attempt;
    std::vector<Entry> entries;
    int code = LDAP_OTHER;
    std::string server_text;
    bool finished = false;
    for (LDAPMessage* message = ldap_first_message(ld, chain); message;
         message = ldap_next_message(ld, message)) {
      const int type = ldap_msgtype(message);
      if (type == LDAP_RES_SEARCH_ENTRY) {
        entries.push_back(read_entry(ld, message));
      } else if (type == LDAP_RES_SEARCH_RESULT) {
        char* text = nullptr;
        if (ldap_parse_result(ld, message, &code, nullptr, &text, nullptr, nullptr, 0) ==
            LDAP_SUCCESS)
          finished = true;
        if (text) {
          server_text = sanitize(text, 200);
          ldap_memfree(text);
        }
      }
      // Search result references (referrals) are not followed.
    }
    if (!finished) {
      attempt.error = "search: no usable result message";
      return attempt;
    }
    const std::string said = fmt::format("{} ({}){}{}", ldap_err2string(code), code,
                                         server_text.empty() ? "" : ": ", server_text);
    if (code == LDAP_BUSY || code == LDAP_UNAVAILABLE) {
      attempt.kind = Attempt::Kind::server_busy;
      attempt.error = "search: " + said;
      return attempt;
    }
    attempt.kind = Attempt::Kind::answered;
    if (code == LDAP_SUCCESS || code == LDAP_SIZELIMIT_EXCEEDED) {
      result.ok = true;
      result.size_limit_exceeded = code == LDAP_SIZELIMIT_EXCEEDED;
      result.entries = std::move(entries);
    } else {
      result.error = "search failed: " + said;  // e.g. no such base, insufficient access
    }
    return attempt;
  }

  // -- the operations, retried ------------------------------------------------

  asio::awaitable<SearchResult> search(SearchRequest request, Deadline deadline) {
    SearchResult result;
    const auto started = Clock::now();
    std::vector<std::string> failures;
    const auto summary = [&] {
      std::string text;
      for (std::size_t i = 0; i < failures.size(); ++i) text += (i ? "; " : "") + failures[i];
      return text;
    };
    const std::size_t attempts = search_pool_.size + servers_.size() + 1;
    for (std::size_t n = 0; n < attempts && !deadline.expired(); ++n) {
      std::string why;
      std::shared_ptr<Shared> shared = co_await pick(deadline, why);
      if (!shared) {
        failures.push_back(why);
        result.error = summary();
        co_return result;
      }
      LDAP* ld = shared->connection->handle();
      const std::size_t server = shared->connection->server();
      result.server = servers_[server].uri;
      ++stats_.searches;
      Attempt attempt;
      int msgid = 0;
      if (send_search(ld, request, deadline, msgid, attempt, result)) {
        Pending pending(executor_, deadline.when());
        shared->pending.emplace(msgid, &pending);
        if (!shared->pumping) {
          shared->pumping = true;
          asio::co_spawn(executor_, pump(shared), asio::detached);
        }
        co_await pending.timer.async_wait(use_tuple);
        shared->pending.erase(msgid);
        wake_searcher();  // a slot is free
        if (pending.message) {
          attempt = interpret_search(ld, pending.message.get(), result);
        } else if (!pending.done) {
          ldap_abandon_ext(ld, msgid, nullptr, nullptr);
          attempt.kind = Attempt::Kind::timed_out;
          attempt.error = "search: no answer in time";
        } else {
          attempt.kind = Attempt::Kind::broken;
          attempt.error = "search: " + pending.error;
        }
      }
      if (attempt.kind == Attempt::Kind::answered) {
        shared->answered = true;
        co_return result;
      }
      // A connection that answered before may just have gone stale (the
      // server's idle timeout, a restart): that says nothing about the
      // server. A fresh one failing, or any timeout, does.
      if (!shared->answered || attempt.kind != Attempt::Kind::broken)
        server_failed(server, attempt.error);
      failures.push_back(servers_[server].uri + ": " + attempt.error);
      kill(*shared, attempt.error);
    }
    failures.push_back(fmt::format("gave up after {}", show(Clock::now() - started)));
    result.ok = false;
    result.error = summary();
    co_return result;
  }

  asio::awaitable<BindResult> check_password(std::string dn, std::string password,
                                             Deadline deadline) {
    BindResult result;
    if (password.empty()) {
      // RFC 4513 5.1.2: a simple bind with a DN and no password is an
      // "unauthenticated" bind that servers may accept. Never ask.
      result.outcome = BindOutcome::rejected;
      result.detail = "empty password (an unauthenticated bind) refused without asking";
      co_return result;
    }
    if (dn.empty()) {
      result.outcome = BindOutcome::rejected;
      result.detail = "no DN to bind as";
      co_return result;
    }
    const auto started = Clock::now();
    std::vector<std::string> failures;
    const auto summary = [&] {
      std::string text;
      for (std::size_t i = 0; i < failures.size(); ++i) text += (i ? "; " : "") + failures[i];
      return text;
    };
    const std::size_t attempts = auth_pool_.size + servers_.size() + 1;
    for (std::size_t n = 0; n < attempts && !deadline.expired(); ++n) {
      Lease lease(*this, auth_pool_);
      co_await acquire(lease, deadline);
      if (!lease.connection) {
        failures.push_back(lease.error);
        result.detail = summary();
        co_return result;
      }
      const std::size_t server = lease.connection->server();
      ++stats_.binds;
      int code = LDAP_OTHER;
      Attempt attempt = co_await simple_bind(*lease.connection, dn, password, deadline, code);
      if (attempt.kind == Attempt::Kind::answered) {
        release(lease);
        result.detail = servers_[server].uri + ": " + attempt.error;
        if (code == LDAP_SUCCESS) {
          result.outcome = BindOutcome::accepted;
        } else if (code == LDAP_INVALID_CREDENTIALS || code == LDAP_INAPPROPRIATE_AUTH) {
          result.outcome = BindOutcome::rejected;
        } else {
          result.outcome = BindOutcome::unavailable;
        }
        co_return result;
      }
      if (!lease.reused || attempt.kind != Attempt::Kind::broken)
        server_failed(server, "bind: " + attempt.error);
      failures.push_back(servers_[server].uri + ": bind: " + attempt.error);
      discard(lease.pool, std::move(lease.connection));
    }
    failures.push_back(fmt::format("gave up after {}", show(Clock::now() - started)));
    result.outcome = BindOutcome::unavailable;
    result.detail = summary();
    co_return result;
  }

  asio::awaitable<ModifyResult> modify(std::string dn, std::vector<Replacement> changes,
                                       std::string bind_dn, std::string password,
                                       Deadline deadline) {
    ModifyResult result;
    if (dn.empty() || bind_dn.empty() || password.empty()) {
      result.detail = "no entry DN, write bind DN or password";
      co_return result;
    }
    std::vector<std::string> failures;
    const std::size_t attempts = auth_pool_.size + servers_.size() + 1;
    for (std::size_t n = 0; n < attempts && !deadline.expired(); ++n) {
      Lease lease(*this, auth_pool_);
      co_await acquire(lease, deadline);
      if (!lease.connection) {
        failures.push_back(lease.error);
        break;
      }
      const std::size_t server = lease.connection->server();
      int code = LDAP_OTHER;
      Attempt attempt = co_await simple_bind(*lease.connection, bind_dn, password, deadline, code);
      if (attempt.kind == Attempt::Kind::answered && code != LDAP_SUCCESS) {
        release(lease);
        result.detail = servers_[server].uri + ": the write bind DN's bind: " + attempt.error;
        co_return result;
      }
      if (attempt.kind == Attempt::Kind::answered)
        attempt = co_await send_modify(*lease.connection, dn, changes, deadline, code);
      if (attempt.kind == Attempt::Kind::answered) {
        release(lease);
        result.ok = code == LDAP_SUCCESS;
        result.detail = servers_[server].uri + ": " + attempt.error;
        co_return result;
      }
      if (!lease.reused || attempt.kind != Attempt::Kind::broken)
        server_failed(server, "modify: " + attempt.error);
      failures.push_back(servers_[server].uri + ": " + attempt.error);
      discard(lease.pool, std::move(lease.connection));
    }
    for (std::size_t i = 0; i < failures.size(); ++i)
      result.detail += (i ? "; " : "") + failures[i];
    if (result.detail.empty()) result.detail = "no answer in time";
    co_return result;
  }

  // One modify request on a bound connection; `code` is the server's result.
  asio::awaitable<Attempt> send_modify(Connection& connection, const std::string& dn,
                                       const std::vector<Replacement>& changes,
                                       Deadline deadline, int& code) {
    Attempt attempt;
    LDAP* ld = connection.handle();
    // libldap takes char* arrays: point into `changes`, which outlives the call.
    std::vector<std::vector<char*>> values(changes.size());
    std::vector<LDAPMod> mods(changes.size());
    std::vector<LDAPMod*> list;
    for (std::size_t i = 0; i < changes.size(); ++i) {
      for (const auto& v : changes[i].values) values[i].push_back(const_cast<char*>(v.c_str()));
      values[i].push_back(nullptr);
      mods[i].mod_op = LDAP_MOD_REPLACE;
      mods[i].mod_type = const_cast<char*>(changes[i].attribute.c_str());
      mods[i].mod_values = values[i].data();
      list.push_back(&mods[i]);
    }
    list.push_back(nullptr);
    int msgid = 0;
    const int rc = ldap_modify_ext(ld, dn.c_str(), list.data(), nullptr, nullptr, &msgid);
    if (rc != LDAP_SUCCESS) {
      attempt.error = describe(ld, rc);
      co_return attempt;
    }
    co_return co_await await_answer(connection, msgid, deadline, code, "modify");
  }

  void close() {
    closed_ = true;
    auto live = search_live_;
    for (const auto& shared : live) kill(*shared, "closing");
    search_pool_.idle.clear();
    auth_pool_.idle.clear();
  }

  asio::any_io_executor executor_;
  ClientSettings settings_;
  std::vector<Server> servers_;
  Pool search_pool_;  // its settings; searches share the connections in search_live_
  std::vector<std::shared_ptr<Shared>> search_live_;
  unsigned search_opening_ = 0;
  std::list<Waiter*> search_waiters_;
  Pool auth_pool_;
  bool closed_ = false;
  std::minstd_rand rng_;
  ClientStats stats_;
};

Client::Client(asio::any_io_executor executor, ClientSettings settings)
    : impl_(std::make_unique<Impl>(std::move(executor), std::move(settings))) {}

Client::~Client() = default;

std::shared_ptr<Client> Client::create(asio::any_io_executor executor, ClientSettings settings) {
  return std::shared_ptr<Client>(new Client(std::move(executor), std::move(settings)));
}

asio::awaitable<SearchResult> Client::search(SearchRequest request, Deadline deadline) {
  auto self = shared_from_this();  // alive while this coroutine exists
  SearchResult result = co_await impl_->search(std::move(request), deadline);
  co_return result;
}

asio::awaitable<BindResult> Client::check_password(std::string dn, std::string password,
                                                   Deadline deadline) {
  auto self = shared_from_this();
  BindResult result = co_await impl_->check_password(std::move(dn), std::move(password), deadline);
  co_return result;
}

asio::awaitable<ModifyResult> Client::modify(std::string dn, std::vector<Replacement> changes,
                                             std::string bind_dn, std::string password,
                                             Deadline deadline) {
  auto self = shared_from_this();
  ModifyResult result = co_await impl_->modify(std::move(dn), std::move(changes),
                                               std::move(bind_dn), std::move(password), deadline);
  co_return result;
}

void Client::close() { impl_->close(); }

const ClientStats& Client::stats() const { return impl_->stats_; }

}  // namespace isthmus::ldap
