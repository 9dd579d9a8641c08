// The copy engine's node sessions (moves/imap_session, moves/imap_copy)
// against scripted nodes on loopback: what a broken or hostile node may
// send (a body before its UID, a body not asked for, a response without
// end, a connection closed in the middle of a literal, a listing that does
// not add up, a refused APPEND) ends the pass with a reason, never a crash,
// a hang or a message taken for another; and a body is streamed in bounded
// chunks, whatever its size. The copy's success paths run against real
// Dovecot nodes (tests/system/test_move.py).
#include "moves/imap_copy.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/asio/write.hpp>
#include <doctest/doctest.h>

#include <atomic>
#include <functional>
#include <thread>

using namespace isthmus;
using namespace isthmus::moves::imap;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

// One scripted IMAP node: greets, then hands every command (tag, text with
// its literals inline) to SCRIPT, which returns the bytes to send back
// ("" for nothing; ending with kClose: those bytes, then the connection
// closed), or kDefault: the login (SASL-IR PLAIN) accepted, NAMESPACE with
// a personal and a shared namespace, LOGOUT, anything else "OK".
const std::string kClose = "\x01" "close";
const std::string kDefault = "\x02" "default";

class ScriptedNode {
 public:
  using Script = std::function<std::string(const std::string& tag, const std::string& command)>;

  explicit ScriptedNode(Script script)
      : acceptor_(io_, {asio::ip::address_v4::loopback(), 0}), script_(std::move(script)),
        thread_([this] { serve(); }) {}
  ~ScriptedNode() {
    stop_ = true;
    boost::system::error_code ec;
    tcp::socket poke(io_);
    poke.connect(acceptor_.local_endpoint(), ec);
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  std::vector<std::string> commands() {
    std::lock_guard lock(mutex_);
    return commands_;
  }

 private:
  void serve() {
    while (!stop_) {
      tcp::socket s(io_);
      boost::system::error_code ec;
      acceptor_.accept(s, ec);
      if (ec || stop_) break;
      session(s);
    }
  }
  void session(tcp::socket& s) {
    boost::system::error_code ec;
    asio::write(s, asio::buffer(std::string("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN "
                                            "LITERAL+ MULTIAPPEND UIDPLUS] ready\r\n")),
                ec);
    asio::streambuf in;
    for (;;) {
      std::string text;
      for (;;) {  // a command line, with its literals
        auto n = asio::read_until(s, in, "\r\n", ec);
        if (ec) return;
        std::string line(asio::buffers_begin(in.data()), asio::buffers_begin(in.data()) + n - 2);
        in.consume(n);
        text += line;
        auto literal = literal_at_end(line);
        if (!literal) break;
        if (line.find("+}") == std::string::npos)
          asio::write(s, asio::buffer(std::string("+ go on\r\n")), ec);
        if (in.size() < *literal) asio::read(s, in, asio::transfer_exactly(*literal - in.size()), ec);
        if (ec) return;
        text += "\r\n" + std::string(asio::buffers_begin(in.data()),
                                     asio::buffers_begin(in.data()) + *literal);
        in.consume(*literal);
      }
      auto space = text.find(' ');
      const std::string tag = text.substr(0, space);
      const std::string command = space == std::string::npos ? "" : text.substr(space + 1);
      {
        std::lock_guard lock(mutex_);
        commands_.push_back(command);
      }
      std::string reply = script_(tag, command);
      if (reply == kDefault) {
        if (command.starts_with("AUTHENTICATE PLAIN"))
          reply = tag + " OK [CAPABILITY IMAP4rev1 LITERAL+ MULTIAPPEND UIDPLUS] Logged in\r\n";
        else if (command == "NAMESPACE")
          reply = "* NAMESPACE ((\"\" \"/\")) NIL ((\"shared/\" \"/\"))\r\n" + tag + " OK done\r\n";
        else if (command == "LOGOUT")
          reply = "* BYE bye\r\n" + tag + " OK done\r\n";
        else
          reply = tag + " OK\r\n";
      }
      const bool close = reply.ends_with(kClose);
      if (close) reply.resize(reply.size() - kClose.size());
      if (!reply.empty()) asio::write(s, asio::buffer(reply), ec);
      if (ec || close) return;
    }
  }

  asio::io_context io_;
  tcp::acceptor acceptor_;
  Script script_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::vector<std::string> commands_;
  std::thread thread_;
};

Endpoint endpoint_of(const ScriptedNode& node, const std::string& name = "n") {
  Endpoint e;
  e.name = name;
  e.host = "127.0.0.1";
  e.port = node.port();
  return e;
}

MasterLogin master() {
  MasterLogin login;
  login.user = "master";
  login.password = "secret";
  return login;
}

// Runs RUN (a coroutine) to its end; returns the ImapError's text, or ""
// when none was thrown.
template <typename R>
std::string outcome(R run) {
  asio::io_context io;
  auto done = asio::co_spawn(io, run(), asio::use_future);
  io.run();
  try {
    done.get();
  } catch (const ImapError& e) {
    return e.what();
  }
  return "";
}

// Runs F (a coroutine taking the session) on a fresh session to NODE.
template <typename F>
std::string with_session(const ScriptedNode& node, F f) {
  return outcome([&]() -> asio::awaitable<void> {
    auto session = co_await Session::open(endpoint_of(node), nullptr, master(), "alice",
                                          std::chrono::seconds(5), "test");
    co_await f(*session);
  });
}

// The same with a session to each of two nodes (source, destination).
template <typename F>
std::string with_pair(const ScriptedNode& a, const ScriptedNode& b, F f) {
  return outcome([&]() -> asio::awaitable<void> {
    auto src = co_await Session::open(endpoint_of(a, "src"), nullptr, master(), "alice",
                                      std::chrono::seconds(5), "test");
    auto dst = co_await Session::open(endpoint_of(b, "dst"), nullptr, master(), "alice",
                                      std::chrono::seconds(5), "test");
    co_await f(*src, *dst);
  });
}

bool sent(const std::vector<std::string>& commands, std::string_view start) {
  for (const auto& c : commands)
    if (c.starts_with(start)) return true;
  return false;
}

struct Collect : BodySink {
  std::vector<std::pair<std::uint32_t, std::string>> bodies;
  std::size_t largest_chunk = 0;
  asio::awaitable<void> begin(std::uint32_t uid, std::uint64_t) override {
    bodies.emplace_back(uid, "");
    co_return;
  }
  asio::awaitable<void> chunk(std::string_view data) override {
    largest_chunk = std::max(largest_chunk, data.size());
    bodies.back().second += data;
    co_return;
  }
  asio::awaitable<void> end() override { co_return; }
};

std::string literal(const std::string& body) {
  return "{" + std::to_string(body.size()) + "}\r\n" + body;
}

}  // namespace

TEST_CASE("imap session: logs in as the master user, learns the namespaces, leaves others' out") {
  ScriptedNode node([](const std::string& tag, const std::string& command) -> std::string {
    if (command == "CAPABILITY") return tag + " OK none\r\n";
    if (command == "LIST \"\" \"*\"")
      return "* LIST (\\HasNoChildren) \"/\" INBOX\r\n"
             "* LIST (\\Noselect) \"/\" shared/bob\r\n"
             "* LIST () \"/\" " + literal("Caf\xc3\xa9 \"x\"") + "\r\n" + tag + " OK done\r\n";
    return kDefault;
  });
  std::vector<std::pair<std::string, std::vector<std::string>>> folders;
  auto error = with_session(node, [&folders](Session& s) -> asio::awaitable<void> {
    CHECK(s.delimiter() == "/");
    CHECK(s.has("UIDPLUS"));
    CHECK(s.has("literal+"));
    folders = co_await s.list();
  });
  CHECK(error == "");
  REQUIRE(folders.size() == 2);
  CHECK(folders[0].first == "INBOX");
  CHECK(folders[1].first == "Caf\xc3\xa9 \"x\"");
  auto commands = node.commands();
  REQUIRE(!commands.empty());
  // SASL PLAIN, Dovecot style: "alice*master" NUL secret.
  CHECK(commands[0].starts_with("AUTHENTICATE PLAIN "));
}

TEST_CASE("imap session: a refused master login, a node down, no NAMESPACE: named reasons") {
  ScriptedNode refusing([](const std::string& tag, const std::string& command) -> std::string {
    if (command.starts_with("AUTHENTICATE")) return tag + " NO [AUTHENTICATIONFAILED] nope\r\n";
    return kDefault;
  });
  auto error = with_session(refusing, [](Session&) -> asio::awaitable<void> { co_return; });
  CHECK(error.find("the master login for alice failed") != std::string::npos);
  CHECK(error.find("node n (127.0.0.1:") != std::string::npos);

  ScriptedNode no_namespace([](const std::string& tag, const std::string& command) -> std::string {
    if (command == "NAMESPACE") return tag + " BAD unknown command\r\n";
    return kDefault;
  });
  error = with_session(no_namespace, [](Session&) -> asio::awaitable<void> { co_return; });
  CHECK(error.find("NAMESPACE: BAD") != std::string::npos);

  asio::io_context io;
  auto run = [&]() -> asio::awaitable<void> {
    Endpoint e;
    e.name = "gone";
    e.host = "127.0.0.1";
    e.port = 1;  // nothing listens there
    co_await Session::open(e, nullptr, master(), "alice", std::chrono::seconds(2), "t");
  };
  auto done = asio::co_spawn(io, run(), asio::use_future);
  io.run();
  CHECK_THROWS_WITH_AS(done.get(), doctest::Contains("gone (127.0.0.1:1): cannot connect"),
                       ImapError);
}

TEST_CASE("imap session: bodies are streamed in bounded chunks, each to its UID") {
  const std::string big(5 * 1024 * 1024 + 17, 'x');
  const std::string small = "Subject: hi\r\n\r\nbody\r\n";
  ScriptedNode node([&](const std::string& tag, const std::string& command) -> std::string {
    if (command.starts_with("UID FETCH 3,7 "))
      return "* 1 FETCH (UID 3 BODY[] " + literal(big) + ")\r\n* 2 FETCH (UID 7 BODY[] " +
             literal(small) + " FLAGS (\\Seen))\r\n* 3 EXISTS\r\n" + tag + " OK done\r\n";
    return kDefault;
  });
  Collect sink;
  std::vector<std::uint32_t> got;
  auto error = with_session(node, [&](Session& s) -> asio::awaitable<void> {
    std::vector<std::uint32_t> uids{7, 3};
    got = co_await s.fetch_bodies(uids, sink);
    CHECK(s.exists_now() == 3);
  });
  CHECK(error == "");
  CHECK(got == std::vector<std::uint32_t>{3, 7});
  REQUIRE(sink.bodies.size() == 2);
  CHECK(sink.bodies[0].first == 3);
  CHECK(sink.bodies[0].second == big);
  CHECK(sink.bodies[1].second == small);
  CHECK(sink.largest_chunk <= kChunk);
}

TEST_CASE("imap session: a hostile node's bodies end the pass with a reason") {
  struct Case {
    const char* what;
    std::string answer;  // to UID FETCH 5 (UID BODY.PEEK[]), before the tagged OK
    const char* error;
  };
  const std::vector<Case> cases = {
      {"a body before its UID", "* 1 FETCH (BODY[] {3}\r\nabc UID 5)\r\n", "without the UID"},
      {"a body for a UID not asked for", "* 1 FETCH (UID 6 BODY[] {3}\r\nabc)\r\n",
       "without the UID asked for"},
      {"the same UID twice",
       "* 1 FETCH (UID 5 BODY[] {3}\r\nabc)\r\n* 1 FETCH (UID 5 BODY[] {3}\r\nabc)\r\n",
       "sent twice"},
      {"a response over 1 MiB", "* 1 FETCH (UID 5 FLAGS (\\Seen) X {2000000}\r\n" +
                                     std::string(2000000, 'y') + ")\r\n",
       "longer than 1 MiB"},
      {"a line without end", std::string(1100000, 'z'), "longer than 1 MiB"},
  };
  for (const auto& c : cases) {
    const std::string what = c.what;
    CAPTURE(what);
    ScriptedNode node([&c](const std::string& tag, const std::string& command) -> std::string {
      if (command.starts_with("UID FETCH 5 ")) return c.answer + tag + " OK done\r\n";
      return kDefault;
    });
    Collect sink;
    auto error = with_session(node, [&sink](Session& s) -> asio::awaitable<void> {
      std::vector<std::uint32_t> uids{5};
      co_await s.fetch_bodies(uids, sink);
    });
    CAPTURE(error);
    CHECK(error.find(c.error) != std::string::npos);
    CHECK(error.find("node n (127.0.0.1:") != std::string::npos);
  }
}

TEST_CASE("imap session: a node that closes in the middle of a body ends the pass") {
  ScriptedNode node([](const std::string&, const std::string& command) -> std::string {
    if (command.starts_with("UID FETCH 5 ")) return "* 1 FETCH (UID 5 BODY[] {100}\r\npart" + kClose;
    return kDefault;
  });
  Collect sink;
  auto error = with_session(node, [&sink](Session& s) -> asio::awaitable<void> {
    std::vector<std::uint32_t> uids{5};
    co_await s.fetch_bodies(uids, sink);
  });
  CHECK(error.find("closed the connection") != std::string::npos);
  REQUIRE(sink.bodies.size() == 1);
  CHECK(sink.bodies[0].second == "part");
}

TEST_CASE("imap copy: a listing that does not add up is read again, then fails") {
  std::atomic<int> selects{0};
  ScriptedNode node([&selects](const std::string& tag, const std::string& command) -> std::string {
    if (command.starts_with("EXAMINE")) {
      ++selects;
      return "* 2 EXISTS\r\n* OK [UIDVALIDITY 9] x\r\n" + tag + " OK done\r\n";
    }
    if (command.starts_with("UID FETCH 1:* "))
      return "* 1 FETCH (UID 4 RFC822.SIZE 10 FLAGS (\\Seen) INTERNALDATE \"01-Jan-2020 10:00:00 "
             "+0000\" BODY[HEADER.FIELDS (MESSAGE-ID)] {21}\r\nMessage-ID: <a@b>\r\n\r\n)\r\n"
             "* 7 FETCH (FLAGS (\\Seen) UID 9)\r\n" +  // another session's flag change
             tag + " OK done\r\n";
    return kDefault;
  });
  auto error = with_session(node, [](Session& s) -> asio::awaitable<void> {
    co_await list_folder(s, "INBOX", false);
  });
  CAPTURE(error);
  CHECK(error.find("1 messages read, but the folder holds 2") != std::string::npos);
  CHECK(selects.load() == 5);
}

TEST_CASE("imap copy: mail delivered while a folder is listed joins the listing") {
  // EXISTS says 2 at EXAMINE; a message arrives during "UID FETCH 1:*"
  // (its EXISTS comes before the tagged OK) and then another during the
  // fetch of the arrivals. The listing takes them in ("UID FETCH 3:*",
  // "4:*") rather than reading the whole folder again, which a folder
  // receiving mail every few seconds never got through. Second round: the
  // same through the CONDSTORE listing (UIDs, CHANGEDSINCE).
  auto line = [](int seq, int uid) {
    return "* " + std::to_string(seq) + " FETCH (UID " + std::to_string(uid) +
           " RFC822.SIZE 10 FLAGS (\\Seen) INTERNALDATE \"01-Jan-2020 10:00:00 +0000\" "
           "BODY[HEADER.FIELDS (MESSAGE-ID)] {21}\r\nMessage-ID: <" +
           std::to_string(uid) + "@b>\r\n\r\n)\r\n";
  };
  int exists = 2;
  std::atomic<int> selects{0};
  ScriptedNode node([&](const std::string& tag, const std::string& command) -> std::string {
    const std::string ok = tag + " OK done\r\n";
    if (command.starts_with("AUTHENTICATE PLAIN"))
      return tag + " OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS CONDSTORE] in\r\n";
    if (command.starts_with("EXAMINE")) {
      ++selects;
      return "* " + std::to_string(exists) + " EXISTS\r\n* OK [UIDVALIDITY 9] x\r\n"
             "* OK [UIDNEXT " + std::to_string(exists + 1) + "] x\r\n"
             "* OK [HIGHESTMODSEQ " + std::to_string(exists * 10) + "] x\r\n" + ok;
    }
    // A message arrives while the node answers: its EXISTS before the OK.
    auto arrives = [&]() { return "* " + std::to_string(++exists) + " EXISTS\r\n"; };
    if (command.starts_with("UID FETCH 1:* (UID)")) {
      std::string out;
      for (int uid = 1; uid <= exists; ++uid)
        out += "* " + std::to_string(uid) + " FETCH (UID " + std::to_string(uid) + ")\r\n";
      return out + arrives() + ok;
    }
    if (command.find("CHANGEDSINCE") != std::string::npos) return ok;
    const bool full = command.starts_with("UID FETCH 1:* (UID RFC822.SIZE");
    const auto colon = command.find(":*");
    if (command.starts_with("UID FETCH ") && colon != std::string::npos) {
      const int from = full ? 1 : std::stoi(command.substr(10, colon - 10));
      std::string out;
      for (int uid = from; uid <= exists; ++uid) out += line(uid, uid);
      // The first full listing and the first arrivals fetch each see one more.
      if (full || from == 3) out += arrives();
      return out + ok;
    }
    return kDefault;
  });
  std::vector<Msg> first, second;
  auto error = with_session(node, [&](Session& s) -> asio::awaitable<void> {
    PassCache cache;
    first = co_await list_folder(s, "INBOX", false, &cache);
    second = co_await list_folder(s, "INBOX", false, &cache);
  });
  CAPTURE(error);
  CHECK(error.empty());
  REQUIRE(first.size() == 4);
  for (std::size_t i = 0; i < first.size(); ++i) CHECK(first[i].uid == i + 1);
  CHECK(first.back().message_id == "<4@b>");
  CHECK(second.size() == 5);  // 4, and the one that came during its UIDs
  CHECK(second.back().uid == 5);
  CHECK(selects.load() == 2);  // never read again from the start
  const auto commands = node.commands();
  CHECK(sent(commands, "UID FETCH 3:* "));
  CHECK(sent(commands, "UID FETCH 4:* "));
  CHECK(sent(commands, "UID FETCH 5:* "));
}

TEST_CASE("imap session: a refused APPEND names the folder; a message's bytes must match") {
  ScriptedNode node([](const std::string& tag, const std::string& command) -> std::string {
    if (command.starts_with("APPEND")) return tag + " NO [OVERQUOTA] Quota exceeded\r\n";
    return kDefault;
  });
  Msg msg;
  msg.uid = 1;
  msg.flags = {"\\Seen", "$Label1"};
  msg.date = "01-Jan-2020 10:00:00 +0000";
  auto error = with_session(node, [&msg](Session& s) -> asio::awaitable<void> {
    co_await s.append_begin("Archive", msg, 5);
    co_await s.append_write("hello");
    co_await s.append_end();
    co_await s.append_results();
  });
  CHECK(error.find("APPEND to Archive") != std::string::npos);
  CHECK(error.find("OVERQUOTA") != std::string::npos);
  auto commands = node.commands();
  REQUIRE(commands.size() >= 2);
  // MULTIAPPEND offered: a synchronizing literal (the node's "+" first).
  CHECK(commands.back() ==
        "APPEND \"Archive\" (\\Seen $Label1) \"01-Jan-2020 10:00:00 +0000\" {5}\r\nhello");

  error = with_session(node, [&msg](Session& s) -> asio::awaitable<void> {
    co_await s.append_begin("Archive", msg, 5);
    co_await s.append_write("hello!");
  });
  CHECK(error.find("more bytes than the literal announced") != std::string::npos);

  Msg bad = msg;
  bad.flags = {"\\Seen", "bad)flag"};
  error = with_session(node, [&bad](Session& s) -> asio::awaitable<void> {
    co_await s.append_begin("Archive", bad, 5);
  });
  CHECK(error.find("not a valid IMAP flag") != std::string::npos);
}

TEST_CASE("imap session: a node's kept responses count by what they hold, not their bytes") {
  // 20,000 one-byte atoms: 40 kB on the wire, over a megabyte as values.
  std::string atoms;
  for (int i = 0; i < 20000; ++i) atoms += " a";
  ScriptedNode node([&atoms](const std::string& tag, const std::string& command) -> std::string {
    if (command == "XSTUFF") return "* XSTUFF" + atoms + "\r\n" + tag + " OK done\r\n";
    return kDefault;
  });
  auto error = with_session(node, [](Session& s) -> asio::awaitable<void> {
    co_await s.run("XSTUFF", "XSTUFF", true, 1024 * 1024);
  });
  CHECK(error.find("XSTUFF: the answer runs over 1 MiB") != std::string::npos);
  error = with_session(node, [](Session& s) -> asio::awaitable<void> {
    auto answer = co_await s.run("XSTUFF", "XSTUFF", true, 4 * 1024 * 1024);
    CHECK(answer.untagged.size() == 1);
  });
  CHECK(error.empty());
}

TEST_CASE("imap copy: a listing never holds more messages than the folder") {
  ScriptedNode node([](const std::string& tag, const std::string& command) -> std::string {
    if (command.starts_with("EXAMINE"))
      return "* 1 EXISTS\r\n* OK [UIDVALIDITY 9] x\r\n" + tag + " OK\r\n";
    if (command.starts_with("UID FETCH 1:* ")) {
      std::string out;
      for (int uid = 1; uid <= 3; ++uid)
        out += "* 1 FETCH (UID " + std::to_string(uid) + " RFC822.SIZE 10)\r\n";
      return out + tag + " OK done\r\n";
    }
    return kDefault;
  });
  auto error = with_session(node, [](Session& s) -> asio::awaitable<void> {
    co_await list_folder(s, "INBOX", false);
  });
  CAPTURE(error);
  CHECK(error.find("more messages listed than the folder holds (1)") != std::string::npos);
}

TEST_CASE("imap copy: a source recreated since the last pass: nothing removed from the destination") {
  // Pass 1: the source's INBOX holds <a@b> (the destination has it), and
  // maybe a folder Projects this move created. Pass 2: the source's INBOX
  // is empty (and Projects gone): the user's deletions if its UIDVALIDITY
  // is the same, a recreated store (an unmounted disk) if not.
  struct Case {
    bool recreated, projects;
  };
  for (const Case c : {Case{false, true}, Case{true, false}, Case{true, true}}) {
    CAPTURE(c.recreated);
    CAPTURE(c.projects);
    std::atomic<bool> emptied{false};
    const auto listing = [](int uid) {
      return "* 1 FETCH (UID " + std::to_string(uid) +
             " RFC822.SIZE 10 FLAGS (\\Seen) INTERNALDATE \"01-Jan-2020 10:00:00 +0000\" "
             "BODY[HEADER.FIELDS (MESSAGE-ID)] {21}\r\nMessage-ID: <a@b>\r\n\r\n)\r\n";
    };
    ScriptedNode src([&](const std::string& tag, const std::string& command) -> std::string {
      const std::string ok = tag + " OK done\r\n";
      if (command.starts_with("LIST ")) {
        std::string out = "* LIST () \"/\" INBOX\r\n";
        if (c.projects && !emptied) out += "* LIST () \"/\" Projects\r\n";
        return out + ok;
      }
      if (command.starts_with("EXAMINE") && command.find("Projects") != std::string::npos)
        return "* 0 EXISTS\r\n* OK [UIDVALIDITY 5] x\r\n" + ok;
      if (command.starts_with("EXAMINE")) {
        if (!emptied) return "* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n" + ok;
        return std::string("* 0 EXISTS\r\n* OK [UIDVALIDITY ") + (c.recreated ? "8" : "7") +
               "] x\r\n" + ok;
      }
      if (command.starts_with("UID FETCH 1:* ")) return listing(4) + ok;
      return kDefault;
    });
    ScriptedNode dst([&](const std::string& tag, const std::string& command) -> std::string {
      const std::string ok = tag + " OK done\r\n";
      if (command.starts_with("LIST ")) {
        std::string out = "* LIST () \"/\" INBOX\r\n";
        if (c.projects) out += "* LIST () \"/\" Projects\r\n";
        return out + ok;
      }
      const bool select = command.starts_with("SELECT") || command.starts_with("EXAMINE");
      if (select && command.find("Projects") != std::string::npos)
        return "* 0 EXISTS\r\n* OK [UIDVALIDITY 4] x\r\n" + ok;
      if (select) return "* 1 EXISTS\r\n* OK [UIDVALIDITY 3] x\r\n" + ok;
      if (command.starts_with("UID FETCH 1:* ")) return listing(1) + ok;
      return kDefault;
    });
    CopyState state;
    if (c.projects) state.created_folders = {"Projects"};
    PassCache cache;
    PassOptions options;
    options.expunge_allowed = true;
    PassTotals first, second;
    auto error = with_pair(src, dst, [&](Session& s, Session& d) -> asio::awaitable<void> {
      first = co_await copy_pass(s, d, state, cache, options);
      emptied = true;
      second = co_await copy_pass(s, d, state, cache, options);
    });
    CAPTURE(error);
    CHECK(first.already == 1);
    CHECK(first.expunged == 0);
    const auto commands = dst.commands();
    if (!c.recreated) {
      CHECK(error.empty());
      CHECK(second.deleted_folders == 1);
      CHECK(second.expunged == 1);
      CHECK(sent(commands, "DELETE"));
      CHECK(sent(commands, "UID EXPUNGE 1"));
      continue;
    }
    CHECK(error.find("folder INBOX changed its UIDVALIDITY from 7 to 8") != std::string::npos);
    CHECK(error.find("nothing was removed from the destination") != std::string::npos);
    CHECK(error.find(c.projects ? "1 folder this move created went away from it"
                                : "1 message on the destination is not on it now") !=
          std::string::npos);
    CHECK_FALSE(sent(commands, "DELETE"));
    CHECK_FALSE(sent(commands, "UID STORE"));
    CHECK_FALSE(sent(commands, "UID EXPUNGE"));
  }
}

TEST_CASE("imap copy: a source folder gone or never listed whole: skipped while the user is active") {
  // The source lists Projects, then refuses to open it (the user deleted
  // it meanwhile), or its listing never adds up (EXISTS says 2, one
  // message comes). A tolerant pass (the pre-copy) skips it and goes on
  // with the same session; a pass with the user locked out fails on it.
  const std::string inbox_listing =
      "* 1 FETCH (UID 4 RFC822.SIZE 10 FLAGS (\\Seen) INTERNALDATE \"01-Jan-2020 10:00:00 "
      "+0000\" BODY[HEADER.FIELDS (MESSAGE-ID)] {21}\r\nMessage-ID: <a@b>\r\n\r\n)\r\n";
  for (const bool tolerant : {true, false}) {
    for (const bool refused : {true, false}) {
      CAPTURE(tolerant);
      CAPTURE(refused);
      bool in_projects = false;
      ScriptedNode src([&](const std::string& tag, const std::string& command) -> std::string {
        const std::string ok = tag + " OK done\r\n";
        if (command.starts_with("LIST "))
          return "* LIST () \"/\" Projects\r\n* LIST () \"/\" INBOX\r\n" + ok;
        if (command.starts_with("EXAMINE")) {
          in_projects = command.find("Projects") != std::string::npos;
          if (in_projects && refused)
            return tag + " NO [NONEXISTENT] Mailbox doesn't exist: Projects\r\n";
          return std::string("* ") + (in_projects ? "2" : "1") +
                 " EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n" + ok;
        }
        if (command.starts_with("UID FETCH 1:* ")) return inbox_listing + ok;
        return kDefault;
      });
      ScriptedNode dst([&](const std::string& tag, const std::string& command) -> std::string {
        const std::string ok = tag + " OK done\r\n";
        if (command.starts_with("LIST "))
          return "* LIST () \"/\" INBOX\r\n* LIST () \"/\" Projects\r\n" + ok;
        if (command.starts_with("SELECT") || command.starts_with("EXAMINE"))
          return "* 1 EXISTS\r\n* OK [UIDVALIDITY 3] x\r\n" + ok;
        if (command.starts_with("UID FETCH 1:* ")) return inbox_listing + ok;
        return kDefault;
      });
      CopyState state;
      PassCache cache;
      PassOptions options;
      options.tolerant = tolerant;
      PassTotals totals, second;
      auto error = with_pair(src, dst, [&](Session& s, Session& d) -> asio::awaitable<void> {
        totals = co_await copy_pass(s, d, state, cache, options);
        // A second pass of the same run: a folder refused again is not a
        // rename in flight (no read right?): the pre-copy fails on it.
        if (tolerant) second = co_await copy_pass(s, d, state, cache, options);
      });
      CAPTURE(error);
      if (tolerant) {
        CHECK(totals.skipped_folders == 1);
        CHECK(totals.already == 1);  // INBOX, after the skipped folder, on the same session
        if (refused) {
          CHECK(error.find("EXAMINE Projects: NO [NONEXISTENT]") != std::string::npos);
        } else {
          CHECK(error.empty());
          CHECK(second.skipped_folders == 1);  // still busy: skipped again
        }
      } else {
        CHECK(error.find(refused ? "EXAMINE Projects: NO [NONEXISTENT] Mailbox doesn't exist"
                                 : "1 messages read, but the folder holds 2") !=
              std::string::npos);
      }
    }
  }
}

TEST_CASE("imap copy: from a node with prefix \"\" to one with \"INBOX.\" (Cyrus): names swapped") {
  // The source (Dovecot's layout) lists INBOX, Sent, Archive/2024 and a
  // child of INBOX; the destination (Cyrus without altnamespace) has INBOX
  // and a shared folder outside its prefix, which is not the user's.
  ScriptedNode src([&](const std::string& tag, const std::string& command) -> std::string {
    const std::string ok = tag + " OK done\r\n";
    if (command.starts_with("LIST "))
      return "* LIST () \"/\" INBOX\r\n* LIST () \"/\" Sent\r\n"
             "* LIST (\\Noselect) \"/\" Archive\r\n* LIST () \"/\" Archive/2024\r\n"
             "* LIST () \"/\" INBOX/Sent\r\n" +
             ok;
    if (command.starts_with("LSUB ")) return "* LSUB () \"/\" Archive/2024\r\n" + ok;
    if (command.starts_with("EXAMINE")) return "* 0 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n" + ok;
    return kDefault;
  });
  ScriptedNode dst([&](const std::string& tag, const std::string& command) -> std::string {
    const std::string ok = tag + " OK done\r\n";
    if (command == "NAMESPACE")
      return "* NAMESPACE ((\"INBOX.\" \".\")) ((\"user.\" \".\")) ((\"\" \".\"))\r\n" + ok;
    if (command.starts_with("LIST "))
      return "* LIST () \".\" INBOX\r\n* LIST () \".\" public\r\n" + ok;
    if (command.starts_with("SELECT") || command.starts_with("EXAMINE"))
      return "* 0 EXISTS\r\n* OK [UIDVALIDITY 3] x\r\n" + ok;
    return kDefault;
  });
  CopyState state;
  PassCache cache;
  PassOptions options;
  std::vector<std::pair<std::string, std::vector<std::string>>> dst_listed;
  auto error = with_pair(src, dst, [&](Session& s, Session& d) -> asio::awaitable<void> {
    co_await copy_pass(s, d, state, cache, options);
    dst_listed = co_await d.list();
  });
  CAPTURE(error);
  CHECK(error.empty());
  CHECK(state.created_folders ==
        std::vector<std::string>{"INBOX.Sent", "INBOX.Archive.2024", "INBOX.INBOX.Sent"});
  const auto commands = dst.commands();
  CHECK(sent(commands, "CREATE \"INBOX.Sent\""));
  CHECK(sent(commands, "SUBSCRIBE \"INBOX.Archive.2024\""));
  CHECK(sent(commands, "SELECT \"INBOX.INBOX.Sent\""));
  CHECK_FALSE(sent(commands, "CREATE \"Sent\""));
  // Cyrus' shared folder (namespace prefix "") is not taken for the user's.
  REQUIRE(dst_listed.size() == 1);
  CHECK(dst_listed[0].first == "INBOX");
}

TEST_CASE("imap copy: two source folders that would be one on the destination: refused") {
  // Cyrus (prefix "INBOX.") towards a node without a prefix: INBOX.inbox.X
  // and INBOX.INBOX.X are both INBOX/X (the INBOX level in any case); a
  // selectable INBOX.INBOX would be INBOX. A \Noselect INBOX.INBOX (the
  // parent of INBOX.INBOX.X) is no collision.
  struct Case {
    const char* listing;
    const char* error;
  };
  for (const Case c :
       {Case{"* LIST () \".\" INBOX.inbox.X\r\n* LIST () \".\" INBOX.INBOX.X\r\n",
             "folders INBOX.inbox.X and INBOX.INBOX.X would both be INBOX/X on the destination"},
        Case{"* LIST () \".\" INBOX.INBOX\r\n",
             "folders INBOX and INBOX.INBOX would both be INBOX on the destination"},
        Case{"* LIST (\\Noselect) \".\" INBOX.INBOX\r\n* LIST () \".\" INBOX.INBOX.X\r\n", ""}}) {
    CAPTURE(c.listing);
    ScriptedNode src([&](const std::string& tag, const std::string& command) -> std::string {
      const std::string ok = tag + " OK done\r\n";
      if (command == "NAMESPACE") return "* NAMESPACE ((\"INBOX.\" \".\")) NIL NIL\r\n" + ok;
      if (command.starts_with("LIST "))
        return "* LIST () \".\" INBOX\r\n" + std::string(c.listing) + ok;
      if (command.starts_with("EXAMINE")) return "* 0 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n" + ok;
      return kDefault;
    });
    ScriptedNode dst([&](const std::string& tag, const std::string& command) -> std::string {
      const std::string ok = tag + " OK done\r\n";
      if (command.starts_with("LIST ")) return "* LIST () \"/\" INBOX\r\n" + ok;
      if (command.starts_with("SELECT")) return "* 0 EXISTS\r\n* OK [UIDVALIDITY 3] x\r\n" + ok;
      return kDefault;
    });
    CopyState state;
    PassCache cache;
    PassOptions options;
    auto error = with_pair(src, dst, [&](Session& s, Session& d) -> asio::awaitable<void> {
      co_await copy_pass(s, d, state, cache, options);
    });
    CAPTURE(error);
    if (*c.error) {
      CHECK(error.find(c.error) != std::string::npos);
      CHECK_FALSE(sent(dst.commands(), "CREATE"));
    } else {
      CHECK(error.empty());
      CHECK(state.created_folders == std::vector<std::string>{"INBOX/X"});
    }
  }
}

TEST_CASE("imap session: a node's status word is logged as text, control bytes escaped") {
  ScriptedNode node([](const std::string& tag, const std::string& command) -> std::string {
    if (command == "NOOP") return tag + " NO\x1b]0;owned\x07\r[7/7]\tdone\r\n";
    return kDefault;
  });
  auto error = with_session(node, [](Session& s) -> asio::awaitable<void> {
    co_await s.run("NOOP", "NOOP");
  });
  CAPTURE(error);
  CHECK(error.find("NOOP: ") != std::string::npos);
  CHECK(error.find('\x1b') == std::string::npos);
  CHECK(error.find('\x07') == std::string::npos);
  CHECK(error.find('\r') == std::string::npos);
  CHECK(error.find('\t') == std::string::npos);
}
