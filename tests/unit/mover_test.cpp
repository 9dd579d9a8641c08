// isthmus-move, the C++ mover (moves/mover.hpp, moves/sieve_session.hpp):
// its texts, its events (bounded lines, a journal that sheds detail), the
// static directory's rewrite of users.map, its config checks, and the
// ManageSieve session against scripted nodes, hostile ones included. The
// moves themselves run against real Dovecot nodes, Postfix, MariaDB and
// slapd in tests/system/test_move.py.
#include "moves/mover.hpp"
#include "moves/sieve_session.hpp"
#include "common/strings.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/asio/write.hpp>
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

using namespace isthmus;
using namespace isthmus::moves::mover;
namespace asio = boost::asio;
namespace fs = std::filesystem;
using tcp = asio::ip::tcp;

TEST_CASE("mover: texts as the operator reads them") {
  CHECK(show_seconds(0.25) == "250ms");
  CHECK(show_seconds(5.04) == "5.0s");
  CHECK(show_seconds(65.0) == "1m05s");
  CHECK(show_seconds(7380.0) == "2h03m");
  CHECK(show_seconds(Json("x")) == "?");
  CHECK(show_bytes(12) == "12 B");
  CHECK(show_bytes(3400) == "3.4 kB");
  CHECK(show_bytes(2'500'000'000ull) == "2.5 GB");
  CHECK(plural(1, "pass", "passes") == "1 pass");
  CHECK(plural(2, "pass", "passes") == "2 passes");
  CHECK(plural(0, "message") == "0 messages");
}

TEST_CASE("mover: durations") {
  CHECK(parse_seconds(Json("250ms"), "x") == doctest::Approx(0.25));
  CHECK(parse_seconds(Json("2m"), "x") == doctest::Approx(120));
  CHECK(parse_seconds(Json(" 1.5s "), "x") == doctest::Approx(1.5));
  CHECK(parse_seconds(Json(3), "x") == doctest::Approx(3));
  CHECK_THROWS_AS(parse_seconds(Json("-1s"), "x"), UsageError);
  CHECK_THROWS_AS(parse_seconds(Json("soon"), "x"), UsageError);
  CHECK_THROWS_AS(parse_seconds(Json(true), "x"), UsageError);
  CHECK_THROWS_AS(parse_seconds(Json(-2), "x"), UsageError);
}

TEST_CASE("mover: an event is one bounded line") {
  std::string long_text(20000, 'x');
  auto line = encode_event(Json{{"event", "say"}, {"text", long_text}});
  CHECK(line.back() == '\n');
  CHECK(line.find('\n') == line.size() - 1);
  auto parsed = Json::parse(line);
  CHECK(parsed["text"].get<std::string>().size() == kEventTextMax);
  CHECK(parsed["text"].get<std::string>().ends_with("..."));
  // A text of multi-byte characters is cut between characters.
  std::string accents;
  for (int i = 0; i < 9000; ++i) accents += "\xc3\xa9";
  parsed = Json::parse(encode_event(Json{{"event", "say"}, {"text", accents}}));
  CHECK(parsed["text"].get<std::string>().size() == (kEventTextMax - 3) * 2 + 3);

  // A journal too big sheds the copy's per-folder detail first.
  Json folders = Json::object();
  for (int i = 0; i < 3000; ++i) folders["folder " + std::to_string(i)] = Json{{"copied", i}};
  Json journal{{"user", "u"}, {"copy", {{"messages", 1}, {"folders", folders}}}, {"history", Json::array()}};
  line = encode_event(Json{{"event", "journal"}, {"data", journal}});
  CHECK(line.size() < kEventLineMax);
  parsed = Json::parse(line);
  CHECK(parsed["shed"] == Json::array({"copy.folders"}));
  CHECK(parsed["data"]["copy"]["messages"] == 1);
  CHECK_FALSE(parsed["data"]["copy"].contains("folders"));
  // One that stays too big loses its data, and says how big it was.
  journal["steps"] = std::string(70000, 's');
  parsed = Json::parse(encode_event(Json{{"event", "journal"}, {"data", journal}}));
  CHECK(parsed["data"].is_null());
  CHECK(parsed["too_large"].get<std::size_t>() > kEventLineMax);
  // Another event too big: only its name.
  parsed = Json::parse(encode_event(Json{{"event", "progress"}, {"step", std::string(70000, 'p')}}));
  CHECK(parsed == Json{{"event", "progress"}, {"too_large", parsed["too_large"]}});
}

TEST_CASE("mover: the static directory's users.map rewrite") {
  DirectorySpec spec;
  spec.lowercase = true;
  spec.default_domain = "Example.org";
  const std::vector<std::string> lines = {"# the users", "*@example.org a",
                                          "Alice a node_login=al  # the boss", "bob b", ""};
  CHECK(find_user_line(lines, spec, "alice@example.org") == 2u);
  CHECK(find_user_line(lines, spec, "bob@example.org") == 3u);
  CHECK_FALSE(find_user_line(lines, spec, "carol@example.org"));
  // State moving: the island kept, the state added, other attributes and
  // the comment kept, the other lines untouched.
  auto moved = edit_user_map(lines, spec, "alice@example.org", "a", "moving", lines[2], "a");
  CHECK(moved[2] == "Alice a node_login=al state=moving  # the boss");
  CHECK(moved[3] == "bob b");
  CHECK(moved.size() == lines.size());
  // The switch: the new island, active (no state attribute).
  auto switched = edit_user_map(moved, spec, "alice@example.org", "b", "active", lines[2], "a");
  CHECK(switched[2] == "Alice b node_login=al  # the boss");
  // A user without a line of their own gets one; a rollback to the source
  // takes it away again.
  auto added = edit_user_map(lines, spec, "carol@example.org", "a", "moving", std::nullopt, "a");
  CHECK(added.back() == "carol@example.org a state=moving");
  auto back = edit_user_map(added, spec, "carol@example.org", "a", "active", std::nullopt, "a");
  CHECK(back == lines);
}

namespace {

std::string write_file(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
  return path.string();
}

struct ConfigDir {
  fs::path dir;
  ConfigDir() {
    char tmpl[] = "/tmp/isthmus-mover-test-XXXXXX";
    dir = ::mkdtemp(tmpl);
    write_file(dir / "master.pw", "secret\n");
    write_file(dir / "doveadm.pw", "dpw\n");
  }
  ~ConfigDir() { fs::remove_all(dir); }
  std::string config(const Json& move_extra) {
    Json move{{"directory", {{"type", "isthmus"}}},
              {"login", {{"master_user", "master"}, {"master_password_file", "master.pw"}}},
              {"nodes", {{"a-left", "127.0.0.1:10143"}, {"b-left", {{"address", "[::1]:10144"}, {"tls", "starttls"}}}}}};
    for (const auto& [k, v] : move_extra.items()) move[k] = v;
    Json conf{{"instances", Json::array({{{"name", "lab"}, {"socket", (dir / "admin.sock").string()}}})},
              {"move", move}};
    return write_file(dir / "move.json", conf.dump());
  }
};

std::string usage_error(const std::string& path) {
  try {
    load_config(path);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("mover: a journal nested too deep is refused, not a crash") {
  ConfigDir d;
  const auto path = d.dir / "deep.json";
  // Deep enough to overflow a recursive parser's (or copy's) stack.
  write_file(path, "{\"history\": " + std::string(200000, '[') + std::string(200000, ']') + "}");
  Journal deep(d.dir.string(), "alice@example.org", path.string());
  CHECK_THROWS_WITH_AS(deep.load(), doctest::Contains("not a JSON object"), UsageError);
  // A journal as deep as real ones reads.
  write_file(path, R"({"steps": {"preflight": {"source_nodes": ["a-left"]}}, "history": [{"to": "b"}]})");
  Journal fine(d.dir.string(), "alice@example.org", path.string());
  auto loaded = fine.load();
  REQUIRE(loaded);
  CHECK((*loaded)["history"][0]["to"] == "b");
}

TEST_CASE("mover: the config") {
  ConfigDir d;
  auto c = load_config(d.config(Json::object()));
  CHECK(c.login.password == "secret");
  CHECK(c.nodes.at("b-left").imap.host == "::1");
  CHECK(c.nodes.at("b-left").imap.port == 10144);
  CHECK(c.nodes.at("b-left").imap.tls == config::TlsMode::starttls);
  CHECK(c.journal_dir == kDefaultJournalDir);
  CHECK(c.settle == doctest::Approx(2));
  c = load_config(d.config(Json{{"mover", "dsync"}, {"dsync", {{"password_file", "doveadm.pw"}}},
                                {"settle", "0s"}}));
  CHECK(c.mover == "dsync");
  CHECK(c.doveadm_auth == "Basic " + encode_base64("doveadm:dpw"));
  CHECK(c.settle == 0);
  CHECK(usage_error(d.config(Json{{"colour", "blue"}})).find("unknown key 'colour'") != std::string::npos);
  CHECK(usage_error(d.config(Json{{"copy_passes", 0}})).find("copy_passes") != std::string::npos);
  // The directory types written with command-line clients are refused,
  // with the way to the type that writes through the daemon.
  CHECK(usage_error(d.config(Json{{"directory", {{"type", "sql"}}}})).find("type \"isthmus\"") !=
        std::string::npos);
  CHECK(usage_error(d.config(Json{{"copier", "/bin/true"}})).find("copier must be a list") !=
        std::string::npos);
  c = load_config(d.config(Json{{"copier", Json::array({"/bin/cp", "%{from_node}"})},
                                {"copier_timeout", "2h"}}));
  CHECK(c.copier == std::vector<std::string>{"/bin/cp", "%{from_node}"});
  CHECK(c.copier_timeout == doctest::Approx(7200));
  CHECK(usage_error(d.config(Json{{"nodes", {{"a-left", "nowhere"}}}})).find("HOST:PORT") !=
        std::string::npos);
  CHECK(usage_error(d.config(Json{{"dsync", {{"password_file", "doveadm.pw"}, {"api_key_file", "doveadm.pw"}}}}))
            .find("not both") != std::string::npos);
}

// -- ManageSieve

namespace {

const std::string kClose = "\x01" "close";

// One scripted ManageSieve node: greets (SASL PLAIN), takes the master
// login, then hands every command (its literals inline) to SCRIPT, which
// returns the lines to send back.
class SieveNode {
 public:
  using Script = std::function<std::string(const std::string& command)>;
  explicit SieveNode(Script script)
      : acceptor_(io_, {asio::ip::address_v4::loopback(), 0}), script_(std::move(script)),
        thread_([this] { serve(); }) {}
  ~SieveNode() {
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
      asio::write(s, asio::buffer(std::string("\"IMPLEMENTATION\" \"scripted\"\r\n\"SASL\" \"PLAIN\"\r\n"
                                              "\"SIEVE\" \"fileinto vacation\"\r\n\"VERSION\" \"1.0\"\r\n"
                                              "OK \"ready\"\r\n")),
                  ec);
      asio::streambuf in;
      for (;;) {
        std::string text;
        for (;;) {
          auto n = asio::read_until(s, in, "\r\n", ec);
          if (ec) break;
          std::string line(asio::buffers_begin(in.data()), asio::buffers_begin(in.data()) + n - 2);
          in.consume(n);
          text += line;
          auto open = line.rfind('{');
          if (!line.ends_with("+}") || open == std::string::npos) break;
          const auto size = std::stoul(line.substr(open + 1));
          if (in.size() < size) asio::read(s, in, asio::transfer_exactly(size - in.size()), ec);
          text += "\r\n" + std::string(asio::buffers_begin(in.data()), asio::buffers_begin(in.data()) + size);
          in.consume(size);
        }
        if (ec) break;
        {
          std::lock_guard lock(mutex_);
          commands_.push_back(text);
        }
        std::string reply = text.starts_with("AUTHENTICATE") ? "OK \"logged in\"\r\n" : script_(text);
        const bool close = reply.ends_with(kClose);  // those bytes, then the connection closed
        if (close) reply.resize(reply.size() - kClose.size());
        asio::write(s, asio::buffer(reply), ec);
        if (ec || close || text == "LOGOUT") break;
      }
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

using moves::sieve::SieveSession;

template <class T>
T run(asio::io_context& io, asio::awaitable<T> task) {
  auto future = asio::co_spawn(io, std::move(task), asio::use_future);
  io.restart();
  io.run();
  return future.get();
}

std::unique_ptr<SieveSession> open(asio::io_context& io, const SieveNode& node) {
  moves::imap::Endpoint e;
  e.name = "scripted";
  e.host = "127.0.0.1";
  e.port = node.port();
  moves::imap::MasterLogin login{"master", "secret", true, "*"};
  return run(io, SieveSession::open(e, nullptr, login, "alice@example.org", std::chrono::seconds(5), "t"));
}

// A node holding SCRIPTS (name -> content), ACTIVE the active one.
SieveNode::Script holding(std::map<std::string, std::string> scripts, std::string active) {
  return [scripts, active](const std::string& command) -> std::string {
    if (command == "LISTSCRIPTS") {
      std::string out;
      for (const auto& [name, content] : scripts)
        out += "\"" + name + "\"" + (name == active ? " ACTIVE" : "") + "\r\n";
      return out + "OK\r\n";
    }
    if (command.starts_with("GETSCRIPT \"")) {
      auto name = command.substr(11, command.size() - 12);
      auto it = scripts.find(name);
      if (it == scripts.end()) return "NO \"no such script\"\r\n";
      return "{" + std::to_string(it->second.size()) + "}\r\n" + it->second + "\r\nOK\r\n";
    }
    return "OK\r\n";
  };
}

}  // namespace

TEST_CASE("mover: Sieve scripts copied over ManageSieve") {
  SieveNode source(holding({{"vacation", "vacation \"away\";\r\n"}, {"rules", "keep;\r\n"}}, "vacation"));
  SieveNode destination(holding({{"rules", "keep;\r\n"}, {"old", "discard;\r\n"}}, ""));
  asio::io_context io;
  auto src = open(io, source);
  auto dst = open(io, destination);
  auto done = run(io, moves::sieve::copy_scripts(*src, *dst));
  CHECK(done.copied == std::vector<std::string>{"vacation"});
  CHECK(done.unchanged == std::vector<std::string>{"rules"});
  CHECK(done.extra == std::vector<std::string>{"old"});
  CHECK(done.active == "vacation");
  auto sent = destination.commands();
  CHECK(std::find(sent.begin(), sent.end(),
                  "PUTSCRIPT \"vacation\" {18+}\r\nvacation \"away\";\r\n") != sent.end());
  CHECK(std::find(sent.begin(), sent.end(), "SETACTIVE \"vacation\"") != sent.end());
  // The verification sees what the copy did not (this destination is
  // scripted: nothing was stored).
  auto problems = run(io, moves::sieve::same_scripts(*src, *dst));
  REQUIRE(problems.size() == 2);
  CHECK(problems[0] == "script vacation missing on the destination");
  run(io, src->logout());
  run(io, dst->logout());
}

TEST_CASE("mover: a hostile ManageSieve node ends the copy with a reason") {
  auto fails_with = [](SieveNode::Script script) -> std::string {
    SieveNode node(std::move(script));
    asio::io_context io;
    auto session = open(io, node);
    try {
      run(io, session->scripts());
    } catch (const moves::imap::ImapError& e) {
      return e.what();
    }
    return "";
  };
  // Two active scripts.
  CHECK(fails_with([](const std::string& c) -> std::string {
          return c == "LISTSCRIPTS" ? "\"a\" ACTIVE\r\n\"b\" ACTIVE\r\nOK\r\n" : "OK\r\n";
        }).find("two active scripts") != std::string::npos);
  // A script's content that is not one string.
  CHECK(fails_with([](const std::string& c) -> std::string {
          if (c == "LISTSCRIPTS") return "\"a\"\r\nOK\r\n";
          return "\"x\" \"y\"\r\nOK\r\n";
        }).find("not one string") != std::string::npos);
  // An atom where a name belongs.
  CHECK(fails_with([](const std::string& c) -> std::string {
          return c == "LISTSCRIPTS" ? "BOGUS\r\nOK\r\n" : "OK\r\n";
        }).find("not a script name") != std::string::npos);
  // A literal announced larger than any answer may be.
  CHECK(fails_with([](const std::string& c) -> std::string {
          return c == "LISTSCRIPTS" ? "{99999999999}\r\nabc" : "OK\r\n";
        }) != "");
  // A refusal names the command and what the node said.
  CHECK(fails_with([](const std::string& c) -> std::string {
          return c == "LISTSCRIPTS" ? "NO \"quota\"\r\n" : "OK\r\n";
        }).find("LISTSCRIPTS: NO quota") != std::string::npos);
  // A node that closes in the middle.
  CHECK(fails_with([](const std::string&) -> std::string { return "\"a\"\r\n" + kClose; })
            .find("closed the connection") != std::string::npos);
}
