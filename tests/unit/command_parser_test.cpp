#include "proxy/imap/command_parser.hpp"

#include <doctest/doctest.h>

#include <random>

using namespace isthmus::proxy::imap;

namespace {

ParseLimits limits() { return ParseLimits{1024, 256}; }

ParseResult parse_all(CommandParser& parser, std::string& buffer) { return parser.parse(buffer); }

// Feeds `input` one byte at a time; returns the events seen, in order, and
// the commands parsed.
struct Fed {
  std::vector<ParseEvent> events;
  std::vector<Command> commands;
  std::vector<std::string> bad_tags;
};

Fed feed_bytewise(std::string_view input, ParseLimits l = limits()) {
  CommandParser parser(l);
  std::string buffer;
  Fed fed;
  for (char c : input) {
    buffer += c;
    for (;;) {
      auto r = parser.parse(buffer);
      if (r.event == ParseEvent::need_more) break;
      fed.events.push_back(r.event);
      if (r.event == ParseEvent::command) fed.commands.push_back(r.command);
      if (r.event == ParseEvent::bad || r.event == ParseEvent::literal_refused)
        fed.bad_tags.push_back(r.tag);
      if (r.event == ParseEvent::continuation || r.event == ParseEvent::fatal) break;
    }
  }
  return fed;
}

}  // namespace

TEST_CASE("a simple command: tag, upper-cased name, atoms") {
  CommandParser parser(limits());
  std::string buffer = "a1 login alice secret\r\n";
  auto r = parse_all(parser, buffer);
  REQUIRE(r.event == ParseEvent::command);
  CHECK(r.command.tag == "a1");
  CHECK(r.command.name == "LOGIN");
  REQUIRE(r.command.args.size() == 2);
  CHECK(r.command.args[0].value == "alice");
  CHECK(r.command.args[0].kind == Token::Kind::atom);
  CHECK(r.command.args[1].value == "secret");
  CHECK(buffer.empty());
}

TEST_CASE("incomplete input asks for more and keeps the bytes") {
  CommandParser parser(limits());
  std::string buffer = "a1 LOGIN alice sec";
  CHECK(parser.parse(buffer).event == ParseEvent::need_more);
  CHECK(buffer == "a1 LOGIN alice sec");
  buffer += "ret\r";
  CHECK(parser.parse(buffer).event == ParseEvent::need_more);
  buffer += "\n";
  auto r = parser.parse(buffer);
  REQUIRE(r.event == ParseEvent::command);
  CHECK(r.command.args[1].value == "secret");
}

TEST_CASE("quoted strings with escapes") {
  CommandParser parser(limits());
  std::string buffer = "t LOGIN \"al ice\" \"p\\\"a\\\\ss word\"\r\n";
  auto r = parser.parse(buffer);
  REQUIRE(r.event == ParseEvent::command);
  CHECK(r.command.args[0].kind == Token::Kind::quoted);
  CHECK(r.command.args[0].value == "al ice");
  CHECK(r.command.args[1].value == "p\"a\\ss word");
}

TEST_CASE("quoted strings: empty, 8-bit, and invalid escapes") {
  CommandParser parser(limits());
  std::string buffer = "t LOGIN \"\" \"p\xc3\xa4ss\"\r\n";
  auto r = parser.parse(buffer);
  REQUIRE(r.event == ParseEvent::command);
  CHECK(r.command.args[0].value.empty());
  CHECK(r.command.args[1].value == "p\xc3\xa4ss");

  buffer = "t LOGIN \"a\\b\" x\r\nu NOOP\r\n";
  r = parser.parse(buffer);
  CHECK(r.event == ParseEvent::bad);
  CHECK(r.tag == "t");
  r = parser.parse(buffer);
  REQUIRE(r.event == ParseEvent::command);
  CHECK(r.command.name == "NOOP");
}

TEST_CASE("NUL, CR or LF inside a quoted string is bad") {
  for (std::string inner : {std::string("a\0b", 3), std::string("a\rb")}) {
    CommandParser parser(limits());
    std::string buffer = "t LOGIN \"" + inner + "\" x\r\nn NOOP\r\n";
    auto r = parser.parse(buffer);
    CHECK(r.event == ParseEvent::bad);
    CHECK(parser.parse(buffer).command.name == "NOOP");
  }
}

TEST_CASE("synchronising literals: one continuation each, then the command") {
  CommandParser parser(limits());
  std::string buffer = "a LOGIN {5}\r\n";
  CHECK(parser.parse(buffer).event == ParseEvent::continuation);
  CHECK(parser.parse(buffer).event == ParseEvent::need_more);  // not asked twice
  buffer += "alice {8}\r\n";
  CHECK(parser.parse(buffer).event == ParseEvent::continuation);
  buffer += "pa ss\"wd\r\n";
  auto r = parser.parse(buffer);
  REQUIRE(r.event == ParseEvent::command);
  CHECK(r.command.args[0].kind == Token::Kind::literal);
  CHECK(r.command.args[0].value == "alice");
  CHECK(r.command.args[1].value == "pa ss\"wd");
  CHECK(buffer.empty());
}

TEST_CASE("non-synchronising literals (LITERAL+) need no continuation") {
  CommandParser parser(limits());
  std::string buffer = "a LOGIN {5+}\r\nalice {4+}\r\n\"p w\r\n";
  auto r = parser.parse(buffer);
  REQUIRE(r.event == ParseEvent::command);
  CHECK(r.command.args[0].value == "alice");
  CHECK(r.command.args[1].value == "\"p w");
}

TEST_CASE("a literal may hold CR LF and spaces") {
  CommandParser parser(limits());
  std::string buffer = "a LOGIN {5+}\r\na\r\nb  {1+}\r\nx\r\n";
  auto r = parser.parse(buffer);
  REQUIRE(r.event == ParseEvent::command);
  CHECK(r.command.args[0].value == "a\r\nb ");
}

TEST_CASE("literals split across reads, byte by byte") {
  auto fed = feed_bytewise("a LOGIN {5}\r\nalice {6}\r\nsecret\r\nb NOOP\r\n");
  REQUIRE(fed.commands.size() == 2);
  CHECK(fed.commands[0].args[0].value == "alice");
  CHECK(fed.commands[0].args[1].value == "secret");
  CHECK(fed.commands[1].name == "NOOP");
  // Exactly two continuations, before the literal data.
  CHECK(std::count(fed.events.begin(), fed.events.end(), ParseEvent::continuation) == 2);
}

TEST_CASE("a synchronising literal over the limit is refused, and the client can go on") {
  CommandParser parser(limits());
  std::string buffer = "a LOGIN {100000}\r\n";
  auto r = parser.parse(buffer);
  CHECK(r.event == ParseEvent::literal_refused);
  CHECK(r.tag == "a");
  CHECK(buffer.empty());
  buffer = "b NOOP\r\n";
  CHECK(parser.parse(buffer).command.name == "NOOP");
}

TEST_CASE("a non-synchronising literal over the limit is fatal") {
  CommandParser parser(limits());
  std::string buffer = "a LOGIN {100000+}\r\n";
  CHECK(parser.parse(buffer).event == ParseEvent::fatal);
}

TEST_CASE("the literals of one command are bounded together") {
  CommandParser parser(limits());  // 256 each, 1024 together
  std::string buffer;
  for (int i = 0; i < 5; ++i) buffer += (i == 0 ? "a ID (" : " ") + std::string("{250+}\r\n") + std::string(250, 'x');
  buffer += ")\r\n";
  CHECK(parser.parse(buffer).event == ParseEvent::fatal);
}

TEST_CASE("a line over the limit is fatal, whether or not it has ended") {
  CommandParser parser(limits());
  std::string buffer = "a LOGIN " + std::string(2000, 'x');
  CHECK(parser.parse(buffer).event == ParseEvent::fatal);
  CommandParser parser2(limits());
  std::string buffer2 = "a LOGIN " + std::string(600, 'x') + " " + std::string(600, 'y') + "\r\n";
  CHECK(parser2.parse(buffer2).event == ParseEvent::fatal);
}

TEST_CASE("bare LF ends a line; empty lines are skipped") {
  CommandParser parser(limits());
  std::string buffer = "\r\n\na NOOP\nb CAPABILITY\r\n";
  CHECK(parser.parse(buffer).command.name == "NOOP");
  CHECK(parser.parse(buffer).command.name == "CAPABILITY");
}

TEST_CASE("pipelined commands come out one at a time, the rest stays buffered") {
  CommandParser parser(limits());
  std::string buffer = "a LOGIN u p\r\nb SELECT INBOX\r\nc LOGOUT\r\n";
  auto r = parser.parse(buffer);
  CHECK(r.command.name == "LOGIN");
  CHECK(buffer == "b SELECT INBOX\r\nc LOGOUT\r\n");
}

TEST_CASE("bad tags and missing commands are answered BAD") {
  struct Case {
    std::string input;
    std::string tag;
  };
  for (const auto& c : {Case{"+tag NOOP\r\n", "*"}, Case{"a\r\n", "a"}, Case{"* NOOP\r\n", "*"},
                        Case{"a  NOOP\r\n", "a"}, Case{"a NOOP \r\n", "a"},
                        Case{"a NO(OP\r\n", "a"}, Case{"a LOGIN a\"b\" c\r\n", "a"}}) {
    CAPTURE(c.input);
    CommandParser parser(limits());
    std::string buffer = c.input + "z NOOP\r\n";
    auto r = parser.parse(buffer);
    CHECK(r.event == ParseEvent::bad);
    CHECK(r.tag == c.tag);
    auto next = parser.parse(buffer);
    CHECK(next.event == ParseEvent::command);
    CHECK(next.command.tag == "z");
  }
}

TEST_CASE("a bad line whose end has not arrived is skipped when it does") {
  CommandParser parser(limits());
  std::string buffer = "a LOGIN \"x\\q";
  CHECK(parser.parse(buffer).event == ParseEvent::bad);
  buffer += "more junk";
  CHECK(parser.parse(buffer).event == ParseEvent::need_more);
  buffer += " end\r\nb NOOP\r\n";
  CHECK(parser.parse(buffer).command.tag == "b");
}

TEST_CASE("parenthesised lists (ID)") {
  CommandParser parser(limits());
  std::string buffer = "a ID (\"name\" \"Thunder bird\" \"version\" NIL)\r\n";
  auto r = parser.parse(buffer);
  REQUIRE(r.event == ParseEvent::command);
  REQUIRE(r.command.args.size() == 6);
  CHECK(r.command.args[0].kind == Token::Kind::list_open);
  CHECK(r.command.args[4].is_nil());
  CHECK(r.command.args[5].kind == Token::Kind::list_close);

  for (std::string bad : {"a ID (\"x\" \"y\"\r\n", "a ID \"x\")\r\n", "a ID ( \"x\")\r\n"}) {
    CommandParser p(limits());
    CHECK(p.parse(bad).event == ParseEvent::bad);
  }
}

TEST_CASE("NUL inside a literal is bad") {
  CommandParser parser(limits());
  std::string buffer = std::string("a LOGIN {3+}\r\na\0b x\r\n", 21);
  CHECK(parser.parse(buffer).event == ParseEvent::bad);
}

TEST_CASE("raw lines for AUTHENTICATE") {
  CommandParser parser(limits());
  std::string buffer = "AGFsaWNlAGRlbW8=\r\nnext";
  auto r = parser.parse_line(buffer);
  REQUIRE(r.event == ParseEvent::command);
  CHECK(r.message == "AGFsaWNlAGRlbW8=");
  CHECK(buffer == "next");
  CHECK(parser.parse_line(buffer).event == ParseEvent::need_more);
  buffer = std::string(2000, 'A');
  CHECK(parser.parse_line(buffer).event == ParseEvent::fatal);
}

TEST_CASE("random input never crashes and always makes progress or waits") {
  std::mt19937 rng(12345);
  const std::string alphabet = "aB1 \"\\{}+()*%]\r\n\0\x80\xff~NILOGIN";
  for (int round = 0; round < 3000; ++round) {
    CommandParser parser(limits());
    std::string buffer;
    int len = static_cast<int>(rng() % 200);
    for (int i = 0; i < len; ++i) buffer += alphabet[rng() % alphabet.size()];
    for (int steps = 0; steps < 1000; ++steps) {
      auto before = buffer.size();
      auto r = parser.parse(buffer);
      if (r.event == ParseEvent::need_more || r.event == ParseEvent::fatal ||
          r.event == ParseEvent::continuation)
        break;
      REQUIRE(buffer.size() < before);  // progress: every answer consumed input
    }
  }
}

TEST_CASE("malformed and over-long tags are never echoed: the answer is untagged") {
  // A tag of 65 bytes: "* BAD", not the tag.
  auto fed = feed_bytewise(std::string(65, 'a') + " NOOP\r\n");
  REQUIRE(fed.bad_tags.size() == 1);
  CHECK(fed.bad_tags[0] == "*");
  // 64 bytes is still a tag.
  fed = feed_bytewise(std::string(64, 'a') + " NOOP\r\n");
  REQUIRE(fed.commands.size() == 1);
  CHECK(fed.commands[0].tag == std::string(64, 'a'));
  // Bytes no tag may hold: non-ASCII, '+', '{' after tag characters.
  for (std::string line : {"ab\xc3\xa9 NOOP\r\n", "a+b NOOP\r\n", "a{b NOOP\r\n",
                           "a\"b NOOP\r\n"}) {
    fed = feed_bytewise(line);
    REQUIRE(fed.bad_tags.size() == 1);
    CHECK(fed.bad_tags[0] == "*");
  }
  // A well-formed tag with a broken rest is still answered under its tag.
  fed = feed_bytewise("t1 LOGIN (\r\n");
  REQUIRE(fed.bad_tags.size() == 1);
  CHECK(fed.bad_tags[0] == "t1");
}

TEST_CASE("a too-long line is fatal however it is cut, also when it turns bad later (fuzz finding)") {
  // The tag alone is past the line limit, then comes a byte that makes the
  // line bad. In one segment the parser used to answer BAD and go on; byte
  // by byte it hit the limit first and closed. Both must close.
  const ParseLimits small{200, 100};
  const std::string input = "a" + std::string(300, 'x') + "\"cmd\r\n";
  CommandParser parser(small);
  std::string buffer = input;
  auto r = parser.parse(buffer);
  CHECK(r.event == ParseEvent::fatal);
  auto fed = feed_bytewise(input, small);
  REQUIRE(!fed.events.empty());
  CHECK(fed.events.back() == ParseEvent::fatal);
  // A long quoted string that ends in a bare CR: the same.
  const std::string quoted = "a LOGIN \"" + std::string(300, 'q') + "\r\n";
  CommandParser p2(small);
  buffer = quoted;
  CHECK(p2.parse(buffer).event == ParseEvent::fatal);
  // Short bad lines stay BAD (and the session goes on).
  CommandParser p3(small);
  buffer = "a\"cmd\r\nb NOOP\r\n";
  CHECK(p3.parse(buffer).event == ParseEvent::bad);
  CHECK(p3.parse(buffer).event == ParseEvent::command);
}

TEST_CASE("a too-long line is fatal even when its last byte is a backslash or CR (fuzz finding)") {
  // In one segment the scan stopped before the last "\" (or CR) it could
  // not judge yet and the length check did not count it: need_more, while
  // the same bytes one at a time had already closed the session.
  const ParseLimits small{200, 100};
  for (const std::string& tail : {std::string("\\"), std::string("\r")}) {
    const std::string input = "b BOGUS \"" + std::string(250, 'I') + tail;
    CommandParser parser(small);
    std::string buffer = input;
    CHECK(parser.parse(buffer).event == ParseEvent::fatal);
    auto fed = feed_bytewise(input, small);
    REQUIRE(!fed.events.empty());
    CHECK(fed.events.back() == ParseEvent::fatal);
  }
  // Literal data that is still arriving does not count as line.
  CommandParser lit(ParseLimits{50, 100});
  std::string buffer = "a LOGIN {90+}\r\n" + std::string(89, 'x');
  CHECK(lit.parse(buffer).event == ParseEvent::need_more);
  buffer += "x\r\n";
  CHECK(lit.parse(buffer).event == ParseEvent::command);
}

TEST_CASE("a bad byte that needs one more to be known is judged with that byte (fuzz finding)") {
  // The backslash at offset 202 makes the line too long only once the byte
  // after it (which makes the escape invalid) is counted: byte by byte the
  // parser closed, in one segment it answered BAD.
  const ParseLimits small{200, 100};
  const std::string input = "x LOGIN \"" + std::string(193, 'p') + "\\Z\"\r\nx2 NOOP\r\n";
  REQUIRE(input[202] == '\\');
  CommandParser parser(small);
  std::string buffer = input;
  CHECK(parser.parse(buffer).event == ParseEvent::fatal);
  auto fed = feed_bytewise(input, small);
  REQUIRE(!fed.events.empty());
  CHECK(fed.events.back() == ParseEvent::fatal);
  // One byte shorter, both answer BAD and go on.
  const std::string shorter = "x LOGIN \"" + std::string(192, 'p') + "\\Z\"\r\nx2 NOOP\r\n";
  CommandParser p2(small);
  buffer = shorter;
  CHECK(p2.parse(buffer).event == ParseEvent::bad);
  CHECK(p2.parse(buffer).event == ParseEvent::command);
  CHECK(feed_bytewise(shorter, small).events ==
        std::vector<ParseEvent>{ParseEvent::bad, ParseEvent::command});
}

TEST_CASE("a literal refused at the end of a line already too long closes, however it is cut (fuzz finding)") {
  // "{1171}" is too large (literal_refused, the session goes on) but the
  // line before it is past max_line: byte by byte the parser had closed
  // before the "}" arrived.
  const ParseLimits small{200, 100};
  const std::string input = "a LOGIN " + std::string(187, 'u') + " {1171}\r\nb NOOP\r\n";
  CommandParser parser(small);
  std::string buffer = input;
  CHECK(parser.parse(buffer).event == ParseEvent::fatal);
  auto fed = feed_bytewise(input, small);
  REQUIRE(!fed.events.empty());
  CHECK(fed.events.back() == ParseEvent::fatal);
  // A short line with a literal too large is still refused and goes on.
  CommandParser p2(small);
  buffer = "a LOGIN u {1171}\r\nb NOOP\r\n";
  CHECK(p2.parse(buffer).event == ParseEvent::literal_refused);
  CHECK(p2.parse(buffer).event == ParseEvent::command);
}

TEST_CASE("the line limit counts a quoted string's bytes on the wire, escapes included (fuzz finding)") {
  // 100 escaped backslashes: 200 bytes on the wire, 100 once decoded. The
  // limit counted the decoded size when the string was complete, the raw
  // bytes while it was arriving: accepted in one segment, BYE byte by byte.
  const ParseLimits small{200, 100};
  std::string escaped;
  for (int i = 0; i < 100; ++i) escaped += "\\\\";
  const std::string input = "a LOGIN \"" + escaped + "\" x\r\n";
  CommandParser parser(small);
  std::string buffer = input;
  CHECK(parser.parse(buffer).event == ParseEvent::fatal);
  auto fed = feed_bytewise(input, small);
  REQUIRE(!fed.events.empty());
  CHECK(fed.events.back() == ParseEvent::fatal);
}
