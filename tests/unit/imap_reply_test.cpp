#include "backends/imap_reply.hpp"

#include <doctest/doctest.h>

using namespace isthmus::backends;

TEST_CASE("a greeting with capabilities") {
  auto r = parse_imap_reply("* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] Dovecot ready.");
  CHECK(r.kind == ImapReply::Kind::untagged);
  CHECK(r.status == ImapReply::Status::ok);
  CHECK(code_name(r) == "CAPABILITY");
  CHECK(r.text == "Dovecot ready.");
  auto caps = capabilities_in(r);
  CHECK(caps.size() == 4);
  CHECK(has_capability(caps, "sasl-ir"));
  CHECK_FALSE(has_capability(caps, "STARTTLS"));
}

TEST_CASE("tagged answers with response codes") {
  auto r = parse_imap_reply("X2 NO [AUTHENTICATIONFAILED] Authentication failed.");
  CHECK(r.kind == ImapReply::Kind::tagged);
  CHECK(r.tag == "X2");
  CHECK(r.status == ImapReply::Status::no);
  CHECK(code_name(r) == "AUTHENTICATIONFAILED");
  auto ok = parse_imap_reply("X2 ok [CAPABILITY IMAP4rev1 IDLE] Logged in");
  CHECK(ok.status == ImapReply::Status::ok);
  CHECK(capability_text(ok) == "IMAP4rev1 IDLE");
  auto plain = parse_imap_reply("X3 BAD");
  CHECK(plain.status == ImapReply::Status::bad);
  CHECK(plain.code.empty());
}

TEST_CASE("untagged data, continuations and garbage") {
  auto caps = parse_imap_reply("* CAPABILITY IMAP4rev1 LITERAL+");
  CHECK(caps.kind == ImapReply::Kind::untagged);
  CHECK(caps.status == ImapReply::Status::data);
  CHECK(capability_text(caps) == "IMAP4rev1 LITERAL+");
  CHECK(parse_imap_reply("+ ").kind == ImapReply::Kind::continuation);
  CHECK(parse_imap_reply("+").kind == ImapReply::Kind::continuation);
  CHECK(parse_imap_reply("* BYE going away").status == ImapReply::Status::bye);
  CHECK(parse_imap_reply("").kind == ImapReply::Kind::garbage);
  CHECK(parse_imap_reply("X1 BYE x").kind == ImapReply::Kind::garbage);
  CHECK(parse_imap_reply("hello world").kind == ImapReply::Kind::garbage);
  CHECK(parse_imap_reply("* OK [unterminated code").text == "[unterminated code");
}

TEST_CASE("a bare \"*\" from a node is untagged data, not an exception (fuzz finding)") {
  ImapReply r;
  CHECK_NOTHROW(r = parse_imap_reply("*"));
  CHECK(r.kind == ImapReply::Kind::untagged);
  CHECK(r.status == ImapReply::Status::data);
  CHECK(r.text.empty());
  CHECK_NOTHROW(parse_imap_reply("* "));
}
