#include "backends/health.hpp"
#include "backends/node_login.hpp"
#include "backends/topology.hpp"
#include "backends/sieve_node_login.hpp"
#include "common/managesieve.hpp"

#include <doctest/doctest.h>

using namespace isthmus;
using namespace isthmus::managesieve;

TEST_CASE("ManageSieve lines: atoms, quoted strings, literals, lists") {
  auto p = parse_line("AUTHENTICATE \"PLAIN\" \"AGFsaWNlAHNlY3JldA==\"\r\nNOOP\r\n", 1024);
  REQUIRE(p.status == Status::complete);
  CHECK(p.consumed == 45);
  auto c = to_command(p.items);
  REQUIRE(c);
  CHECK(c->name == "AUTHENTICATE");
  CHECK(c->arguments == std::vector<std::string>{"PLAIN", "AGFsaWNlAHNlY3JldA=="});

  // Literals, non-synchronising from a client; octets taken as they are.
  const std::string put = "putscript \"a\" {12+}\r\nkeep;\r\nstop;\r\n";
  p = parse_line(put, 1024);
  REQUIRE(p.status == Status::complete);
  CHECK(p.consumed == put.size());
  c = to_command(p.items);
  REQUIRE(c);
  CHECK(c->name == "PUTSCRIPT");
  CHECK(c->arguments[1] == "keep;\r\nstop;");

  // Escapes in quoted strings: \" and \\ only.
  p = parse_line("NOOP \"a\\\"b\\\\c\"\r\n", 1024);
  REQUIRE(p.status == Status::complete);
  CHECK(p.items[1].text == "a\"b\\c");
  p = parse_line("NOOP \"a\\nb\"\r\nNOOP\r\n", 1024);
  CHECK(p.status == Status::bad);
  CHECK(p.consumed == 13);  // the bad line is skipped, not the next

  // A response with a code and arguments.
  p = parse_line("NO (SASL \"dGVzdA==\") \"Authentication failed.\"\r\n", 1024);
  REQUIRE(p.status == Status::complete);
  auto r = to_response(p.items);
  REQUIRE(r);
  CHECK(r->kind == Response::Kind::no);
  CHECK(r->code == "SASL");
  CHECK(r->code_args == std::vector<std::string>{"dGVzdA=="});
  CHECK(r->text == "Authentication failed.");

  // Capabilities and a challenge.
  r = to_response(parse_line("\"SASL\" \"PLAIN OAUTHBEARER\"\r\n", 1024).items);
  REQUIRE(r);
  CHECK(r->kind == Response::Kind::capability);
  CHECK(r->name == "SASL");
  CHECK(r->text == "PLAIN OAUTHBEARER");
  r = to_response(parse_line("\"STARTTLS\"\r\n", 1024).items);
  REQUIRE(r);
  CHECK(r->kind == Response::Kind::challenge);  // the caller tells them apart
  CHECK(r->name == "STARTTLS");
  r = to_response(parse_line("{4}\r\nabcd\r\n", 1024).items);
  REQUIRE(r);
  CHECK(r->text == "abcd");
}

TEST_CASE("ManageSieve lines: incomplete, hostile and oversized input") {
  CHECK(parse_line("NOOP", 1024).status == Status::need_more);
  CHECK(parse_line("NOOP \"abc", 1024).status == Status::need_more);
  CHECK(parse_line("PUTSCRIPT \"a\" {10+}\r\nkeep", 1024).status == Status::need_more);
  // A literal larger than the bound is refused before its octets arrive.
  CHECK(parse_line("PUTSCRIPT \"a\" {99999999+}\r\n", 1024).status == Status::too_long);
  CHECK(parse_line("NOOP {99999999999+}\r\n", 1024).status == Status::bad);
  CHECK(parse_line(std::string(2000, 'A'), 1024).status == Status::too_long);
  CHECK(parse_line(std::string("NOOP {3+}\r\na\0b\r\n", 16), 1024).status == Status::bad);
  CHECK(parse_line(std::string("NOOP \"a\0b\"\r\n", 12), 1024).status == Status::bad);
  CHECK(parse_line("NOOP ((\"a\"))\r\n", 1024).status == Status::bad);
  CHECK(parse_line("NOOP  \"a\"\r\n", 1024).status == Status::bad);
  CHECK(parse_line("NOOP\r\r\n", 1024).status == Status::bad);
  CHECK(!to_command(parse_line("\"NOOP\"\r\n", 1024).items));
  CHECK(!to_command(parse_line("NOOP atom\r\n", 1024).items));
  CHECK(!to_response(parse_line("MAYBE \"x\"\r\n", 1024).items));
}

TEST_CASE("ManageSieve strings written back parse to the same text") {
  for (std::string text : {std::string("plain"), std::string("with \"quotes\" and \\"),
                           std::string("two\r\nlines"), std::string(2000, 'x')}) {
    for (bool from_client : {true, false}) {
      const std::string line = "NOOP " + string_item(text, from_client) + "\r\n";
      auto p = parse_line(line, 4096);
      REQUIRE(p.status == Status::complete);
      CHECK(p.consumed == line.size());
      CHECK(p.items[1].text == text);
    }
  }
  CHECK(string_item("two\r\nlines", true) == "{10+}\r\ntwo\r\nlines");
  CHECK(string_item("two\r\nlines", false) == "{10}\r\ntwo\r\nlines");
}

TEST_CASE("ManageSieve: what a node's NO to AUTHENTICATE means") {
  CHECK(backends::classify_sieve_refusal("") == Failure::auth_failed);
  CHECK(backends::classify_sieve_refusal("SASL") == Failure::auth_failed);
  CHECK(backends::classify_sieve_refusal("TRYLATER") == Failure::node_unavailable);
  CHECK(backends::classify_sieve_refusal("ENCRYPT-NEEDED") == Failure::node_unavailable);
  CHECK(backends::classify_sieve_refusal("REFERRAL") == Failure::node_referral);
}

TEST_CASE("ManageSieve health checks: capability lines, then OK") {
  using config::Protocol;
  CHECK(backends::greeting_continues(Protocol::managesieve, "\"IMPLEMENTATION\" \"Dovecot\""));
  CHECK(!backends::greeting_continues(Protocol::managesieve, "OK \"ready\""));
  CHECK(!backends::greeting_continues(Protocol::imap, "\"x\""));
  CHECK(!backends::greeting_problem(Protocol::managesieve, "\"SASL\" \"PLAIN\""));
  CHECK(!backends::greeting_problem(Protocol::managesieve, "OK \"Dovecot ready.\""));
  CHECK(backends::greeting_problem(Protocol::managesieve, "BYE \"Too many connections\""));
  CHECK(backends::greeting_problem(Protocol::managesieve, "* OK IMAP ready"));
  CHECK(backends::greeting_problem(Protocol::managesieve, "OKAY"));
}

TEST_CASE("ManageSieve health has a slot of its own in the node's state") {
  backends::NodeState state("n1");
  state.set_down(config::Protocol::managesieve, true);
  CHECK(state.down(config::Protocol::managesieve));
  CHECK(!state.down(config::Protocol::imap));
  CHECK(!state.down(config::Protocol::lmtp));
  CHECK(!state.draining());  // once written past the end of the array
  state.set_draining(true);
  state.set_down(config::Protocol::managesieve, false);
  CHECK(state.draining());
  CHECK(!state.down());
}

TEST_CASE("ManageSieve lines fed a byte at a time are parsed a bounded number of times") {
  auto feed = [](const std::string& wire) {
    std::string buffer;
    ParseGate gate;
    int parses = 0;
    std::vector<Parsed> lines;
    for (char c : wire) {
      buffer += c;
      for (;;) {
        if (!gate.worth_parsing(buffer)) break;
        ++parses;
        Parsed p = parse_line(buffer, 1 << 20);
        if (p.status == Status::need_more) {
          gate.waiting(p, buffer.size());
          break;
        }
        buffer.erase(0, p.consumed);
        gate.reset();
        lines.push_back(std::move(p));
      }
    }
    return std::make_pair(parses, lines);
  };
  const std::string quoted_line = "NOOP \"" + std::string(20000, 'a') + "\"\r\n";
  auto [parses, lines] = feed(quoted_line + "LOGOUT\r\n");
  REQUIRE(lines.size() == 2);
  CHECK(lines[0].items[1].text.size() == 20000);
  CHECK(parses <= 4);  // not one per byte
  const std::string script(30000, 'x');
  const std::string literal_line = "PUTSCRIPT \"s\" {30000+}\r\n" + script + "\r\n";
  auto [parses2, lines2] = feed(literal_line);
  REQUIRE(lines2.size() == 1);
  CHECK(lines2[0].items[2].text == script);
  CHECK(parses2 <= 4);
  // Literal data full of line ends waits for the literal's end, not each LF.
  std::string lf_script;
  for (int i = 0; i < 3000; ++i) lf_script += "keep;\r\n";
  auto [parses3, lines3] =
      feed("PUTSCRIPT \"s\" {" + std::to_string(lf_script.size()) + "+}\r\n" + lf_script + "\r\n");
  REQUIRE(lines3.size() == 1);
  CHECK(parses3 <= 4);
}
