#include "backends/lmtp_node_client.hpp"
#include "backends/smtp_reply.hpp"
#include "common/smtp_data.hpp"
#include "proxy/lmtp/smtp_command.hpp"

#include <doctest/doctest.h>

#include <random>

using namespace isthmus;
using namespace isthmus::proxy::lmtp;

namespace {

struct Decoded {
  std::string content;
  std::size_t consumed = 0;
  bool done = false;
};

Decoded decode(std::string_view input) {
  DataDecoder d;
  Decoded out;
  out.consumed = d.feed(input, out.content);
  out.done = d.done();
  return out;
}

// Feeds `input` split at every position: the result must not depend on
// how the bytes arrive.
void check_all_splits(const std::string& input, const std::string& content, std::size_t consumed) {
  for (std::size_t cut = 0; cut <= input.size(); ++cut) {
    CAPTURE(cut);
    DataDecoder d;
    std::string out;
    std::size_t used = d.feed(std::string_view(input).substr(0, cut), out);
    if (!d.done()) used += d.feed(std::string_view(input).substr(used), out);
    CHECK(d.done());
    CHECK(out == content);
    CHECK(used == consumed);
  }
}

}  // namespace

TEST_CASE("DATA: the end is CR LF . CR LF, and dot-stuffing is undone") {
  auto d = decode("Subject: x\r\n\r\nhello\r\n..leading dot\r\n.\r\nQUIT\r\n");
  CHECK(d.done);
  CHECK(d.content == "Subject: x\r\n\r\nhello\r\n.leading dot\r\n");
  CHECK(d.consumed == std::string("Subject: x\r\n\r\nhello\r\n..leading dot\r\n.\r\n").size());
  auto empty = decode(".\r\n");
  CHECK(empty.done);
  CHECK(empty.content.empty());
}

TEST_CASE("DATA split at every byte gives the same message") {
  check_all_splits("a\r\n..b\r\n.c\r\n\r\n.\r\nNEXT", "a\r\n.b\r\nc\r\n\r\n", 17);
}

TEST_CASE("bare LF never ends the data (SMTP smuggling) and becomes CR LF") {
  // "\n.\n" is content; once a node gets it (as CR LF, dot-stuffed), it is
  // content there too.
  auto d = decode("a\n.\nMAIL FROM:<evil>\r\n.\r\n");
  CHECK(d.done);
  CHECK(d.content == "a\r\n.\r\nMAIL FROM:<evil>\r\n");
  std::string wire;
  DataStuffer stuffer;
  stuffer.stuff(d.content, wire);
  CHECK(wire == "a\r\n..\r\nMAIL FROM:<evil>\r\n");
  auto e = decode("a\r\n.\nb\r\n.\r\n");
  CHECK(e.done);
  CHECK(e.content == "a\r\n\r\nb\r\n");
  auto f = decode("a\n.\r\nb\r\n.\r\n");  // the dot line did not start after CR LF
  CHECK(f.done);
  CHECK(f.content == "a\r\n.\r\nb\r\n");
  auto g = decode("x\r\n.\n");
  CHECK_FALSE(g.done);
}

TEST_CASE("bare CRs become CR LF, like bare LFs, and never end the data") {
  auto d = decode("a\rb\r\r\n.x\r.\r\n.\r\n");
  CHECK(d.done);
  CHECK(d.content == "a\r\nb\r\n\r\nx\r\n.\r\n");
  // The smuggling shape with CRs: "\r.\r" is content, and reaches a node
  // dot-stuffed, so a node that ends lines at a lone CR sees no end either.
  auto e = decode("a\r.\rMAIL FROM:<evil>\r\n.\r\n");
  CHECK(e.done);
  CHECK(e.content == "a\r\n.\r\nMAIL FROM:<evil>\r\n");
  std::string wire;
  DataStuffer stuffer;
  stuffer.stuff(e.content, wire);
  CHECK(wire == "a\r\n..\r\nMAIL FROM:<evil>\r\n");
  CHECK(wire.find('\r') == wire.find("\r\n"));  // no CR without its LF
}

TEST_CASE("stuffing for the node undoes the decoding exactly") {
  std::mt19937 rng(99);
  const std::string alphabet = "ab.\r\n";
  for (int round = 0; round < 2000; ++round) {
    // Content as the decoder delivers it: ends with CR LF, no bare CR or LF.
    std::string content;
    int lines = static_cast<int>(rng() % 6);
    for (int l = 0; l < lines; ++l) {
      int len = static_cast<int>(rng() % 5);
      for (int i = 0; i < len; ++i) {
        char c = "ab.x"[rng() % 4];
        content += c;
      }
      content += "\r\n";
    }
    std::string wire;
    DataStuffer stuffer;
    std::size_t cut = content.empty() ? 0 : rng() % content.size();
    stuffer.stuff(std::string_view(content).substr(0, cut), wire);
    stuffer.stuff(std::string_view(content).substr(cut), wire);
    wire += ".\r\n";
    auto back = decode(wire);
    CAPTURE(content);
    CHECK(back.done);
    CHECK(back.consumed == wire.size());
    CHECK(back.content == content);
  }
}

TEST_CASE("SMTP commands and paths") {
  auto c = parse_smtp_command("mail FROM:<a@b.c> SIZE=100 BODY=8BITMIME");
  REQUIRE(c);
  CHECK(c->verb == "MAIL");
  std::string error;
  auto p = parse_path_argument(c->argument, "FROM:", error);
  REQUIRE(p);
  CHECK(p->address == "a@b.c");
  REQUIRE(p->parameters.size() == 2);
  CHECK(p->parameters[0].keyword == "SIZE");
  CHECK(p->parameters[0].value == "100");
  auto null = parse_path_argument("FROM:<>", "FROM:", error);
  REQUIRE(null);
  CHECK(null->address.empty());
  auto quoted = parse_path_argument("TO:<\"odd>local\"@example.org>", "TO:", error);
  REQUIRE(quoted);
  CHECK(quoted->address == "\"odd>local\"@example.org");
  auto routed = parse_path_argument("TO:<@relay.example:bob@example.org>", "TO:", error);
  REQUIRE(routed);
  CHECK(routed->address == "bob@example.org");
  for (const char* bad : {"TO:bob@example.org", "TO:<bob@example.org", "FROM:<a>", "TO:<a>x",
                          "TO:<a\x01@b>"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_path_argument(bad, "TO:", error));
  }
  CHECK_FALSE(parse_smtp_command(""));
  CHECK_FALSE(parse_smtp_command("M4IL x"));
}

TEST_CASE("SMTP replies: codes, enhanced codes, multi-line") {
  auto line = backends::parse_reply_line("250-PIPELINING");
  REQUIRE(line);
  CHECK(line->code == 250);
  CHECK_FALSE(line->last);
  CHECK(backends::parse_reply_line("250 2.1.5 ok")->last);
  CHECK(backends::parse_reply_line("354")->code == 354);
  CHECK_FALSE(backends::parse_reply_line("25"));
  CHECK_FALSE(backends::parse_reply_line("abc ok"));
  CHECK_FALSE(backends::parse_reply_line("650 x"));
  CHECK_FALSE(backends::parse_reply_line("250x"));

  backends::SmtpReply r;
  r.code = 550;
  r.text = "5.1.1 <bob@example.org> User unknown";
  backends::split_enhanced(r);
  CHECK(r.enhanced == "5.1.1");
  CHECK(r.text == "<bob@example.org> User unknown");
  CHECK(r.format() == "550 5.1.1 <bob@example.org> User unknown");
  backends::SmtpReply wrong_class;
  wrong_class.code = 250;
  wrong_class.text = "5.1.1 odd";
  backends::split_enhanced(wrong_class);
  CHECK(wrong_class.enhanced.empty());
  backends::SmtpReply no_code;
  no_code.code = 250;
  no_code.text = "1.2 nothing";
  backends::split_enhanced(no_code);
  CHECK(no_code.enhanced.empty());
  // A reply without an enhanced code gets the class's generic one, so an
  // MTA always sees RFC 3463 codes on what Isthmus relays.
  CHECK(no_code.format() == "250 2.0.0 1.2 nothing");
}

TEST_CASE("a source route must be followed by a mailbox (fuzz finding)") {
  using namespace isthmus::proxy::lmtp;
  std::string error;
  CHECK_FALSE(parse_path_argument("TO:<@a.example:@b.example>", "TO:", error));
  CHECK(error == "Syntax: bad source route");
  // A ':' inside a quoted local part does not end a route (fuzz finding:
  // the cut left an unbalanced quote in the address).
  CHECK_FALSE(parse_path_argument("TO:<@a\"x:y\"@d.example>", "TO:", error));
  CHECK(error == "Syntax: bad source route");
  auto ok = parse_path_argument("TO:<@a.example,@b.example:carol@example.org>", "TO:", error);
  REQUIRE(ok);
  CHECK(ok->address == "carol@example.org");
}

TEST_CASE("an enhanced code is class.subject.detail with 1-3 digit parts, or text (fuzz finding)") {
  auto split = [](int code, std::string text) {
    backends::SmtpReply r;
    r.code = code;
    r.text = std::move(text);
    backends::split_enhanced(r);
    return r;
  };
  auto ok = split(250, "2.123.456 done");
  CHECK(ok.enhanced == "2.123.456");
  auto long_subject = split(250, "2.00000000001.0 ok");
  CHECK(long_subject.enhanced.empty());
  CHECK(long_subject.text == "2.00000000001.0 ok");
  CHECK(long_subject.format() == "250 2.0.0 2.00000000001.0 ok");
  CHECK(split(550, "5.1.1234 x").enhanced.empty());
  CHECK(split(550, "55.1.1 x").enhanced.empty());
}

TEST_CASE("8-bit content is found wherever it is") {
  using isthmus::has_eight_bit;
  CHECK_FALSE(has_eight_bit(""));
  CHECK_FALSE(has_eight_bit(std::string(1000, 'a')));
  for (std::size_t at : {0UL, 7UL, 8UL, 15UL, 999UL}) {
    std::string s(1000, 'a');
    s[at] = '\xc3';
    CHECK(has_eight_bit(s));
  }
}

TEST_CASE("LMTP node AUTH: which LHLO lines offer SASL PLAIN") {
  using backends::LmtpNodeClient;
  CHECK(LmtpNodeClient::offers_sasl({"PIPELINING", "AUTH PLAIN LOGIN"}, "PLAIN"));
  CHECK(LmtpNodeClient::offers_sasl({"AUTH LOGIN plain"}, "PLAIN"));  // case-insensitive
  CHECK(LmtpNodeClient::offers_sasl({"AUTH=PLAIN"}, "PLAIN"));        // the old form
  CHECK_FALSE(LmtpNodeClient::offers_sasl({"AUTH EXTERNAL"}, "PLAIN"));  // Cyrus' lmtpd -a
  CHECK_FALSE(LmtpNodeClient::offers_sasl({"AUTH"}, "PLAIN"));
  CHECK_FALSE(LmtpNodeClient::offers_sasl({"AUTHX PLAIN"}, "PLAIN"));
  CHECK_FALSE(LmtpNodeClient::offers_sasl({"X-PLAIN", "STARTTLS"}, "PLAIN"));
  CHECK_FALSE(LmtpNodeClient::offers_sasl({"AUTH PLAINX"}, "PLAIN"));
}
