#include "backends/pop3_node_login.hpp"
#include "proxy/pop3/pop3_command.hpp"

#include <doctest/doctest.h>

using namespace isthmus;
using namespace isthmus::proxy::pop3;

TEST_CASE("POP3 lines: CRLF or LF, bounded, rest kept") {
  std::string buffer = "USER alice\r\nPASS se cret\nQU";
  auto a = take_line(buffer, 255);
  REQUIRE(a.status == Pop3Line::Status::line);
  CHECK(a.text == "USER alice");
  auto b = take_line(buffer, 255);
  CHECK(b.text == "PASS se cret");
  CHECK(take_line(buffer, 255).status == Pop3Line::Status::need_more);
  CHECK(buffer == "QU");
  buffer = std::string(300, 'x');
  CHECK(take_line(buffer, 255).status == Pop3Line::Status::too_long);
  buffer = std::string(300, 'x') + "\r\n";
  CHECK(take_line(buffer, 255).status == Pop3Line::Status::too_long);
  // A line of exactly the limit whose LF has not arrived yet is not too long.
  buffer = std::string(255, 'x') + "\r";
  CHECK(take_line(buffer, 255).status == Pop3Line::Status::need_more);
  buffer += "\n";
  CHECK(take_line(buffer, 255).text.size() == 255);
}

TEST_CASE("POP3 commands: keyword upper-cased, the argument kept whole") {
  auto pass = parse_command("pass my secret  word");
  REQUIRE(pass);
  CHECK(pass->keyword == "PASS");
  CHECK(pass->argument == "my secret  word");
  CHECK(parse_command("CAPA")->argument.empty());
  CHECK_FALSE(parse_command(""));
  CHECK_FALSE(parse_command(" USER x"));
  CHECK_FALSE(parse_command("US3R x"));
  CHECK_FALSE(parse_command("TOOLONGKEYWORD"));
}

TEST_CASE("a POP3 node's refusals (RFC 2449 / 3206 response codes)") {
  using backends::classify_pop3_refusal;
  CHECK(classify_pop3_refusal("-ERR [AUTH] Authentication failed.") == Failure::auth_failed);
  CHECK(classify_pop3_refusal("-ERR [IN-USE] Mailbox locked") == Failure::mailbox_in_use);
  CHECK(classify_pop3_refusal("-ERR [SYS/TEMP] try later") == Failure::node_unavailable);
  CHECK(classify_pop3_refusal("-ERR [LOGIN-DELAY] too soon") == Failure::login_delay);
  CHECK(classify_pop3_refusal("-ERR [SYS/PERM] disabled") == Failure::auth_failed);
  CHECK(classify_pop3_refusal("-ERR no") == Failure::auth_failed);
  CHECK(classify_pop3_refusal("-ERR ] [") == Failure::auth_failed);
}

TEST_CASE("what Isthmus tells a node about the client") {
  backends::ForwardedClient c{"203.0.113.9", 50123, "192.0.2.1", 993, "abc123", 4};
  CHECK(backends::pop3_xclient(c) == "XCLIENT ADDR=203.0.113.9 PORT=50123 SESSION=abc123 TTL=4");
}
