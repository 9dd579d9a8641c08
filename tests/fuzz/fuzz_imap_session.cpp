// The copy engine's node session (moves/imap_session, moves/imap_copy)
// against a node that sends anything: the session logs in to a loopback
// "node" that greets, accepts the master login and answers NAMESPACE
// properly, then sends the fuzzer's input as its answer to everything that
// follows, and closes. The session lists a folder (EXAMINE, the listing,
// a second listing through the CONDSTORE cache), fetches bodies into a
// sink that checks what it is given, and appends.
//
// Invariants (besides no crash, no sanitizer report, no hang: every read
// has a deadline and the node closes after its input):
// - every failure is an ImapError (nothing else escapes);
// - a body is handed to the sink only for a UID asked for, at most once,
//   in chunks of at most kChunk bytes that add up to its announced size;
// - fetch_bodies returns exactly the UIDs whose bodies the sink got;
// - a listing's messages have distinct UIDs, in ascending order.

#include "fuzz_check.hpp"
#include "moves/imap_copy.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include <set>

using namespace isthmus;
using namespace isthmus::moves::imap;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

class CheckingSink : public BodySink {
 public:
  explicit CheckingSink(const std::vector<std::uint32_t>& asked) : asked_(asked.begin(), asked.end()) {}
  asio::awaitable<void> begin(std::uint32_t uid, std::uint64_t size) override {
    FUZZ_CHECK(asked_.contains(uid));
    FUZZ_CHECK(!got.contains(uid));
    FUZZ_CHECK(!open_);
    got.insert(uid);
    open_ = true;
    left_ = size;
    co_return;
  }
  asio::awaitable<void> chunk(std::string_view data) override {
    FUZZ_CHECK(open_);
    FUZZ_CHECK(!data.empty() && data.size() <= kChunk);
    FUZZ_CHECK(data.size() <= left_);
    left_ -= data.size();
    co_return;
  }
  asio::awaitable<void> end() override {
    FUZZ_CHECK(open_ && left_ == 0);
    open_ = false;
    co_return;
  }
  std::set<std::uint32_t> got;

 private:
  std::set<std::uint32_t> asked_;
  bool open_ = false;
  std::uint64_t left_ = 0;
};

// Reads one command line (to LF) from the client; "" when it closed.
asio::awaitable<std::string> command_line(tcp::socket& s, std::string& buffer) {
  for (;;) {
    auto lf = buffer.find('\n');
    if (lf != std::string::npos) {
      std::string line = buffer.substr(0, lf);
      buffer.erase(0, lf + 1);
      co_return line;
    }
    char chunk[4096];
    auto [ec, n] = co_await s.async_read_some(asio::buffer(chunk), use_tuple);
    if (ec) co_return "";
    buffer.append(chunk, n);
  }
}

asio::awaitable<void> write_text(tcp::socket& s, std::string text) {
  co_await asio::async_write(s, asio::buffer(text), use_tuple);
}

asio::awaitable<void> node(tcp::acceptor& acceptor, std::string input) {
  auto [ec, accepted] = co_await acceptor.async_accept(use_tuple);
  if (ec) co_return;
  tcp::socket s = std::move(accepted);
  boost::system::error_code no_nagle;
  s.set_option(tcp::no_delay(true), no_nagle);  // small writes go at once
  std::string buffer;
  co_await write_text(s, "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+ MULTIAPPEND UIDPLUS] hi\r\n");
  std::string line = co_await command_line(s, buffer);  // the AUTHENTICATE
  co_await write_text(s, line.substr(0, line.find(' ')) +
               " OK [CAPABILITY IMAP4rev1 LITERAL+ MULTIAPPEND UIDPLUS CONDSTORE] in\r\n");
  line = co_await command_line(s, buffer);  // NAMESPACE
  co_await write_text(s, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n" + line.substr(0, line.find(' ')) +
               " OK done\r\n");
  // ENABLE CONDSTORE, then everything else: the input, then the end.
  line = co_await command_line(s, buffer);
  co_await write_text(s, line.substr(0, line.find(' ')) + " OK enabled\r\n");
  co_await write_text(s, input);
  boost::system::error_code ignored;
  s.shutdown(tcp::socket::shutdown_send, ignored);
  // Read what the client still sends until it closes.
  for (;;) {
    std::string more = co_await command_line(s, buffer);
    if (more.empty()) break;
  }
}

asio::awaitable<void> client(std::uint16_t port) {
  Endpoint e;
  e.name = "fuzz";
  e.host = "127.0.0.1";
  e.port = port;
  MasterLogin login;
  login.user = "master";
  login.password = "pw";
  std::unique_ptr<Session> session;
  try {
    session = co_await Session::open(e, nullptr, login, "alice", std::chrono::seconds(2), "fuzz");
  } catch (const ImapError&) {
    FUZZ_CHECK(false);  // the scripted login always works
  }
  try {
    PassCache cache;
    for (int round = 0; round < 2; ++round) {
      auto msgs = co_await list_folder(*session, "INBOX", false, &cache);
      for (std::size_t i = 1; i < msgs.size(); ++i) FUZZ_CHECK(msgs[i - 1].uid < msgs[i].uid);
    }
  } catch (const ImapError&) {
  }
  try {
    const std::vector<std::uint32_t> asked{1, 2, 5, 9};
    CheckingSink sink(asked);
    auto got = co_await session->fetch_bodies(asked, sink);
    FUZZ_CHECK(std::set<std::uint32_t>(got.begin(), got.end()) == sink.got);
    FUZZ_CHECK(got.size() == sink.got.size());
  } catch (const ImapError&) {
  }
  try {
    Msg m;
    m.uid = 1;
    m.flags = {"\\Seen"};
    co_await session->append_begin("INBOX", m, 3);
    co_await session->append_write("abc");
    co_await session->append_end();
    co_await session->append_results();
  } catch (const ImapError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 256 * 1024) return 0;
  asio::io_context io;
  tcp::acceptor acceptor(io, {asio::ip::address_v4::loopback(), 0});
  const auto port = acceptor.local_endpoint().port();
  // Both done: stop (the deadline wheel's 50 ms tick would keep run() busy).
  int running = 2;
  bool escaped = false;
  asio::co_spawn(io, node(acceptor, std::string(fuzz::as_view(data, size))),
                 [&running, &io](std::exception_ptr) {
                   if (--running == 0) io.stop();
                 });
  asio::co_spawn(io, client(port), [&escaped, &running, &io](std::exception_ptr e) {
    escaped = e != nullptr;
    if (--running == 0) io.stop();
  });
  io.run();
  FUZZ_CHECK(!escaped);
  return 0;
}
