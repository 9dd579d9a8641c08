#include "proxy/relay.hpp"

#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

#include <vector>

namespace isthmus::proxy {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

constexpr std::size_t kScratchSize = 64 * 1024;
constexpr std::size_t kTlsChunk = 16 * 1024;  // one TLS record

// One per worker thread. Used only inside one completion handler, never
// across a wait, so the sessions of a worker can share it.
char* scratch_buffer() {
  thread_local std::unique_ptr<char[]> buffer(new char[kScratchSize]);
  return buffer.get();
}

class Relay {
 public:
  explicit Relay(std::unique_ptr<Session> session)
      : session_(std::move(session)),
        up_{session_->client(), session_->node(), true, 0, {}, {}},
        down_{session_->node(), session_->client(), false, 0, {}, {}},
        idle_timeout_(session_->idle_timeout()),
        timer_(session_->client().socket().get_executor()) {}

  void start() {
    boost::system::error_code ignored;
    // Plaintext sockets are read and written with non-blocking calls from
    // the handlers; TLS streams use asynchronous operations only.
    for (Transport* t : {&session_->client(), &session_->node()})
      if (!t->is_tls()) t->socket().non_blocking(true, ignored);
    last_activity_ = Clock::now();
    wait_readable(up_);
    wait_readable(down_);
    arm_timer();
  }

 private:
  struct Direction {
    Transport& from;
    Transport& to;
    bool from_client;
    std::uint64_t bytes;
    std::vector<char> unwritten;  // only while the receiver is slow (or is TLS)
    std::vector<char> tls_in;     // read buffer, only when `from` is TLS
    bool closed = false;          // `from` sent its FIN (passed on to `to`)
  };

  void wait_readable(Direction& d) {
    if (d.from.is_tls()) return read_tls(d);
    ++outstanding_;
    d.from.socket().async_wait(tcp::socket::wait_read, [this, &d](const boost::system::error_code& ec) {
      --outstanding_;
      if (finishing_) return settle();
      if (ec) return finish(ec == asio::error::operation_aborted ? "stopped" : lost(d, true));
      pump(d);
    });
  }

  // Reads what is there and hands it on; a bounded number of rounds, then
  // back to the event loop so the worker's other sessions get their turn.
  void pump(Direction& d) {
    char* scratch = scratch_buffer();
    for (int round = 0; round < 16; ++round) {
      boost::system::error_code ec;
      std::size_t n = d.from.socket().read_some(asio::buffer(scratch, kScratchSize), ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) break;
      if (ec == asio::error::eof) return half_close(d);
      if (ec) return finish(lost(d, true));
      if (!deliver(d, scratch, n)) return;  // waiting for a write: read nothing more
      if (n < kScratchSize) break;
    }
    wait_readable(d);
  }

  // A TLS stream may hold decrypted bytes the socket no longer shows, so it
  // is read asynchronously into a buffer of its own.
  void read_tls(Direction& d) {
    if (d.tls_in.empty()) d.tls_in.resize(kTlsChunk);
    ++outstanding_;
    d.from.tls()->async_read_some(
        asio::buffer(d.tls_in), [this, &d](const boost::system::error_code& ec, std::size_t n) {
          --outstanding_;
          if (finishing_) return settle();
          if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated)
            return half_close(d);
          if (ec) return finish(ec == asio::error::operation_aborted ? "stopped" : lost(d, true));
          if (deliver(d, d.tls_in.data(), n)) read_tls(d);
        });
  }

  // Writes `n` bytes on. True if all went out at once (the caller may read
  // more); false if an asynchronous write is under way, whose completion
  // resumes reading this direction.
  bool deliver(Direction& d, const char* data, std::size_t n) {
    d.bytes += n;
    last_activity_ = Clock::now();
    std::size_t written = 0;
    if (!d.to.is_tls()) {
      boost::system::error_code ec;
      written = d.to.socket().write_some(asio::buffer(data, n), ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) {
        written = 0;
      } else if (ec) {
        finish(lost(d, false));
        return false;
      }
      if (written == n) return true;
    }
    // The receiver is slow, or TLS: keep the rest aside and read nothing
    // more from this side until it is written.
    d.unwritten.assign(data + written, data + n);
    ++outstanding_;
    auto done = [this, &d](const boost::system::error_code& ec, std::size_t) {
      --outstanding_;
      std::vector<char>().swap(d.unwritten);
      if (finishing_) return settle();
      if (ec) return finish(lost(d, false));
      wait_readable(d);
    };
    if (d.to.is_tls()) asio::async_write(*d.to.tls(), asio::buffer(d.unwritten), done);
    else asio::async_write(d.to.socket(), asio::buffer(d.unwritten), done);
    return false;
  }

  // The idle watchdog: wakes when the deadline would pass, and sleeps again
  // if there was traffic since (no timer reset on every read).
  void arm_timer() {
    ++outstanding_;
    timer_.expires_at(last_activity_ + idle_timeout_);
    timer_.async_wait([this](const boost::system::error_code& ec) {
      --outstanding_;
      if (finishing_) return settle();
      // Cancelled while not finishing: the deadline changed (a half-close); wait anew.
      if (ec == asio::error::operation_aborted) return arm_timer();
      if (ec) return finish("stopped");
      if (Clock::now() >= last_activity_ + idle_timeout_)
        return finish(first_closed_.empty() ? "idle timeout" : "half-closed timeout");
      arm_timer();
    });
  }

  // A FIN from one side is passed on as a FIN (RFC 9293 section 3.6: a
  // half-closed connection may still carry data the other way): the other
  // side's write half is shut and the other direction keeps flowing until
  // it closes too, or the idle deadline ends it. `printf 'a LOGIN ...\r\n
  // b FETCH ...\r\n' | nc` gets its answers. Towards a TLS peer the FIN
  // goes without a close_notify alert (the TLS stream is read at the same
  // time, and OpenSSL's shutdown would wait for the peer's alert).
  void half_close(Direction& d) {
    d.closed = true;
    if (first_closed_.empty()) first_closed_ = fmt::format("{} closed", peer(d, true));
    Direction& other = &d == &up_ ? down_ : up_;
    if (other.closed) return finish(fmt::format("{} closed", peer(d, true)));
    boost::system::error_code ignored;
    d.to.socket().shutdown(tcp::socket::shutdown_send, ignored);
    last_activity_ = Clock::now();
    // What is left waits at most timeouts.half_closed for traffic (a
    // client that never closes after the node's BYE must not hold its
    // descriptors for the whole idle timeout; haproxy's client-fin).
    if (session_->half_closed_timeout() < idle_timeout_) {
      idle_timeout_ = session_->half_closed_timeout();
      timer_.cancel();  // re-armed with the shorter deadline
    }
  }

  static const char* peer(const Direction& d, bool reader) {
    return d.from_client == reader ? "client" : "node";
  }
  static std::string lost(const Direction& d, bool reader) {
    return fmt::format("{} connection lost", peer(d, reader));
  }

  void finish(std::string why) {
    finishing_ = true;
    // Who closed first is what the session-end line says; what ended a
    // half-closed session otherwise (a lost connection, the idle deadline)
    // is added.
    if (!first_closed_.empty() && !why.ends_with(" closed"))
      why = fmt::format("{} first; then {}", first_closed_, why);
    else if (!first_closed_.empty())
      why = first_closed_;
    session_->set_ended(std::move(why));
    session_->client().cancel();
    session_->node().cancel();
    timer_.cancel();
    settle();
  }

  // Once every operation has come back, the relay and its session go.
  void settle() {
    if (outstanding_ > 0) return;
    auto& record = session_->record();
    record.bytes_in += up_.bytes;
    record.bytes_out += down_.bytes;
    delete this;
  }

  std::unique_ptr<Session> session_;
  Direction up_;    // client -> node
  Direction down_;  // node -> client
  Clock::duration idle_timeout_;
  asio::steady_timer timer_;
  Clock::time_point last_activity_;
  int outstanding_ = 0;
  bool finishing_ = false;
  std::string first_closed_;  // "client closed" / "node closed" at the first FIN
};

}  // namespace

void start_relay(std::unique_ptr<Session> session) { (new Relay(std::move(session)))->start(); }

}  // namespace isthmus::proxy
