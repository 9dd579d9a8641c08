// The pure side of the C++ mailbox copy (moves/imap_wire): IMAP responses
// as nodes send them, hostile ones included, the arguments a copy writes,
// and the plan of one pass over one folder.
#include "moves/imap_wire.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <string>

using namespace isthmus::moves::imap;
namespace imap = isthmus::moves::imap;  // imap::quoted, not std::quoted found by ADL

namespace {

std::vector<Value> parse(std::string_view wire) {
  auto v = parse_values(wire);
  REQUIRE(v);
  return *v;
}

// The values written back in a form easy to compare: atoms as sent,
// strings in <>, NIL, lists in ().
std::string show(const std::vector<Value>& values);

std::string show(const Value& v) {
  switch (v.kind) {
    case Value::Kind::atom: return v.text;
    case Value::Kind::string: return "<" + v.text + ">";
    case Value::Kind::nil: return "NIL";
    case Value::Kind::list: return "(" + show(v.items) + ")";
  }
  return "?";
}

std::string show(const std::vector<Value>& values) {
  std::string out;
  for (const auto& v : values) {
    if (!out.empty()) out += ' ';
    out += show(v);
  }
  return out;
}

Msg msg(std::uint32_t uid, std::uint64_t size, std::optional<std::string> id,
        std::vector<std::string> flags = {}, std::string sha = {}) {
  Msg m;
  m.uid = uid;
  m.size = size;
  m.message_id = std::move(id);
  m.flags = std::move(flags);
  m.sha256 = std::move(sha);
  return m;
}

ListedMsg listed(std::string_view wire) { return listed_message(fetch_items(parse(wire))); }

}  // namespace

TEST_CASE("imap_wire: atoms, quoted strings, NIL and lists") {
  CHECK(show(parse(R"(12 FETCH (UID 5 FLAGS (\Seen $Junk) X "a \"b\" \\c" nil NiL))")) ==
        R"(12 FETCH (UID 5 FLAGS (\Seen $Junk) X <a "b" \c> NIL NIL))");
  CHECK(parse("LIST () NIL INBOX")[2].kind == Value::Kind::nil);
  CHECK(parse("LIST () NIL INBOX")[3].is_atom("INBOX"));
  CHECK(parse("x iNbOx")[1].is_atom("INBOX"));
  CHECK_FALSE(parse("x \"INBOX\"")[1].is_atom("INBOX"));  // a string is not an atom
  CHECK(parse("x \"INBOX\"")[1].is_text());
  CHECK(show(parse("")) == "");
  CHECK(show(parse("  \t ")) == "");
  CHECK(show(parse("\"\"")) == "<>");
  CHECK(show(parse("NILS NIL\"x\"")) == "NILS NIL\"x\"");  // an atom runs to a space
  // A quoted string without its closing quote runs to the end; a backslash
  // at the very end stays.
  CHECK(show(parse("a \"open (x) ")) == "a <open (x) >");
  CHECK(show(parse("a \"end\\")) == "a <end\\>");
  // Unclosed lists close at the end; a stray ")" is skipped.
  CHECK(show(parse("a (b (c")) == "a (b (c))");
  CHECK(show(parse(") a ) (b) )")) == "a (b)");
  CHECK(show(parse("()")) == "()");
}

TEST_CASE("imap_wire: sections after BODY and BINARY, brackets elsewhere are atom characters") {
  auto v = parse("1 FETCH (UID 7 BODY[HEADER.FIELDS (MESSAGE-ID)] {21}\r\n"
                 "Message-ID: <a@b>\r\n\r\n)");
  REQUIRE(v.size() == 3);
  REQUIRE(v[2].items.size() == 4);
  CHECK(v[2].items[2].is_atom("BODY[HEADER.FIELDS (MESSAGE-ID)]"));
  CHECK(v[2].items[3].kind == Value::Kind::string);
  CHECK(v[2].items[3].text == "Message-ID: <a@b>\r\n\r\n");
  CHECK(show(parse("(body.peek[HEADER.FIELDS (A B)]<0.10> x)")) ==
        "(body.peek[HEADER.FIELDS (A B)]<0.10> x)");
  CHECK(show(parse("(BINARY[1 (x)] BINARY.PEEK[2] BINARY.SIZE[3 ] y)")) ==
        "(BINARY[1 (x)] BINARY.PEEK[2] BINARY.SIZE[3 ] y)");
  CHECK(show(parse("(BODY[a [b c] d] e)")) == "(BODY[a [b c] d] e)");  // nested brackets
  CHECK(show(parse("(BODY[unclosed (x) y")) == "(BODY[unclosed (x) y)");
  // A keyword with "[" (legal in an atom) does not open a section.
  CHECK(show(parse("FLAGS (foo[bar baz] x)")) == "FLAGS (foo[bar baz] x)");
  CHECK(show(parse("OK [READ-WRITE] done")) == "OK [READ-WRITE] done");
  CHECK(show(parse("XBODY[a b]")) == "XBODY[a b]");
  CHECK(show(parse("BODY[]<0> BODY[1][x y]")) == "BODY[]<0> BODY[1][x y]");
}

TEST_CASE("imap_wire: literals, hostile ones included") {
  // A literal may hold anything: ")", quotes, CRLF, a literal count.
  auto v = parse("3 FETCH (UID 9 BODY[] {15}\r\n) \"x\r\n{5}\r\n(((( FLAGS ())");
  REQUIRE(v.size() == 3);
  REQUIRE(v[2].items.size() == 6);
  CHECK(v[2].items[3].text == ") \"x\r\n{5}\r\n((((");
  CHECK(v[2].items[5].kind == Value::Kind::list);
  CHECK(show(parse("a {0}\r\n b")) == "a <> b");
  CHECK(show(parse("a {3+}\r\nxyzb")) == "a <xyz> b");
  CHECK(show(parse("({2}\r\nab{1}\r\nc)")) == "(<ab> <c>)");
  CHECK(show(parse("x{2}\r\nab")) == "x <ab>");  // the count ends the line: a literal
  CHECK(show(parse("a {5}\r\nabcde")) == "a <abcde>");
  // The count larger than what follows, or absurd: the whole parse fails.
  CHECK_FALSE(parse_values("a {6}\r\nabcde"));
  CHECK_FALSE(parse_values("a {99999999999999999999}\r\nabc"));
  CHECK_FALSE(parse_values("a {4294967297}\r\nabc"));
  CHECK_FALSE(parse_values("a {4294967296}\r\nabc"));  // 2^32 but the bytes are not there
  CHECK_FALSE(parse_values("a (b {1}\r\n"));
  // A count at the end without its CRLF and bytes is a literal cut off.
  CHECK_FALSE(parse_values("a {3}"));
  CHECK_FALSE(parse_values("a {3}\r"));
  CHECK_FALSE(parse_values("a {0}"));
  // Not a count: "{", no digits, or not at the end of the line.
  CHECK(show(parse("a {} {x} {+}")) == "a {} {x} {+}");
  CHECK(show(parse("a {3} b")) == "a {3} b");
  // A CRLF that follows no count (the session never passes one) is white
  // space between values, and an atom character within one.
  CHECK(show(parse("a \r\n b")) == "a b");
  CHECK(parse("a\r\nb").size() == 1);
}

TEST_CASE("imap_wire: nesting is bounded") {
  std::string ok(kMaxDepth, '(');
  ok += "x";
  auto v = parse_values(ok);
  REQUIRE(v);
  std::size_t depth = 0;
  const Value* cur = &v->front();
  while (cur->kind == Value::Kind::list) {
    ++depth;
    REQUIRE(cur->items.size() == 1);
    cur = &cur->items.front();
  }
  CHECK(depth == kMaxDepth);
  CHECK(cur->is_atom("X"));
  CHECK_FALSE(parse_values(std::string(kMaxDepth + 1, '(')));
  CHECK_FALSE(parse_values(std::string(100000, '(')));
  // Depth counts lists open at once, not lists in all.
  std::string wide;
  for (int i = 0; i < 1000; ++i) wide += "(()) ";
  CHECK(parse(wide).size() == 1000);
  std::string deep_after_literal = "a {1}\r\nx" + std::string(kMaxDepth + 1, '(');
  CHECK_FALSE(parse_values(deep_after_literal));
  std::string closed = std::string(kMaxDepth, '(') + std::string(kMaxDepth, ')') +
                       std::string(kMaxDepth, '(');
  CHECK(parse_values(closed));
}

TEST_CASE("imap_wire: literal_at_end") {
  CHECK(literal_at_end("* 1 FETCH (BODY[] {42}") == 42u);
  CHECK(literal_at_end("{0}") == 0u);
  CHECK(literal_at_end("A1 APPEND x {7+}") == 7u);
  CHECK(literal_at_end("x{4294967296}") == 4294967296u);
  CHECK_FALSE(literal_at_end("x {4294967297}"));
  CHECK_FALSE(literal_at_end("x {99999999999999999999}"));
  CHECK_FALSE(literal_at_end("x {}"));
  CHECK_FALSE(literal_at_end("x {+}"));
  CHECK_FALSE(literal_at_end("x 12}"));
  CHECK_FALSE(literal_at_end("x {12} "));
  CHECK_FALSE(literal_at_end("x {1a}"));
  CHECK_FALSE(literal_at_end("x {-1}"));
  CHECK_FALSE(literal_at_end(""));
  CHECK_FALSE(literal_at_end("}"));
}

TEST_CASE("imap_wire: fetch_items and parse_number") {
  auto items = fetch_items(parse("12 FETCH (uid 5 FLAGS (\\Seen) \"STR\" x UID 6 (L) y ODD)"));
  CHECK(items.size() == 2);  // UID, FLAGS; the string key and the list key are skipped
  CHECK(items.at("UID").text == "6");  // a later duplicate replaces the earlier one
  CHECK(items.at("FLAGS").kind == Value::Kind::list);
  CHECK(items.count("ODD") == 0);
  CHECK(fetch_items(parse("12 EXISTS")).empty());
  CHECK(fetch_items(parse("12 FETCH UID 5")).empty());
  CHECK(fetch_items(parse("12 fetch (UID 5)")).size() == 1);
  CHECK(fetch_items(parse("FETCH (UID 5)")).empty());
  CHECK(fetch_items({}).empty());

  CHECK(parse_number("0") == 0u);
  CHECK(parse_number("00042") == 42u);
  CHECK(parse_number("18446744073709551615") == 18446744073709551615ull);
  CHECK_FALSE(parse_number("18446744073709551616"));
  CHECK_FALSE(parse_number("99999999999999999999"));
  CHECK_FALSE(parse_number("000000000000000000001"));  // 21 digits
  CHECK_FALSE(parse_number(""));
  CHECK_FALSE(parse_number("-1"));
  CHECK_FALSE(parse_number("+1"));
  CHECK_FALSE(parse_number(" 1"));
  CHECK_FALSE(parse_number("1 "));
  CHECK_FALSE(parse_number("0x10"));
}

TEST_CASE("imap_wire: flags") {
  CHECK(valid_flag("\\Seen"));
  CHECK(valid_flag("$Junk"));
  CHECK(valid_flag("foo[bar"));
  CHECK(valid_flag("NIL"));
  CHECK_FALSE(valid_flag(""));
  CHECK_FALSE(valid_flag("\\"));
  CHECK_FALSE(valid_flag("\\\\Seen"));
  CHECK_FALSE(valid_flag("\\*"));
  CHECK_FALSE(valid_flag("a b"));
  CHECK_FALSE(valid_flag("a]"));
  for (char c : std::string_view("(){%*\"\\]")) CHECK_FALSE(valid_flag(std::string("a") + c));
  CHECK_FALSE(valid_flag("caf\xc3\xa9"));
  CHECK_FALSE(valid_flag("a\x7f"));
  CHECK_FALSE(valid_flag(std::string("a\0b", 3)));
  CHECK_FALSE(valid_flag("a\r\n"));

  auto f = flags_of(parse("(\\Seen \\Recent $Junk \\RECENT \\Answered Zz)")[0]);
  REQUIRE(f);
  CHECK(*f == std::vector<std::string>{"$Junk", "Zz", "\\Answered", "\\Seen"});
  CHECK(flags_of(parse("()")[0]) == std::vector<std::string>{});
  CHECK_FALSE(flags_of(parse("\\Seen")[0]));        // not a list
  CHECK_FALSE(flags_of(parse("NIL")[0]));
  CHECK_FALSE(flags_of(parse("(\\Seen (x))")[0]));  // a list in it
  CHECK_FALSE(flags_of(parse("(\\Seen NIL)")[0]));
  CHECK_FALSE(flags_of(parse("(\"a b\")")[0]));     // not a valid flag
  CHECK_FALSE(flags_of(parse("(a\\b)")[0]));

  CHECK(selectable({}));
  CHECK(selectable({"\\HasNoChildren", "\\Marked"}));
  CHECK_FALSE(selectable({"\\HasChildren", "\\NoSelect"}));
  CHECK_FALSE(selectable({"\\noselect"}));
  CHECK_FALSE(selectable({"\\NonExistent"}));
  CHECK(selectable({"Noselect", "\\Noselectx"}));
}

TEST_CASE("imap_wire: INTERNALDATE") {
  CHECK(internaldate_epoch("17-Jul-1996 02:44:25 -0700") == 837596665);
  CHECK(internaldate_epoch("01-Jan-1970 00:00:00 +0000") == 0);
  CHECK(internaldate_epoch(" 1-Jan-1970 00:00:00 +0000") == 0);
  CHECK(internaldate_epoch("1-jan-1970 00:00:00 +0000") == 0);
  CHECK(internaldate_epoch("01-JAN-1970 00:00:01 -0000") == 1);
  CHECK(internaldate_epoch("05-Mar-2024 10:00:00 +0130") == 1709627400);
  // Zone extremes.
  CHECK(internaldate_epoch("01-Jan-1970 00:00:00 +2359") == -86340);
  CHECK(internaldate_epoch("31-Dec-1969 23:59:59 -2359") == 86339);
  CHECK(internaldate_epoch("31-Dec-9999 23:59:59 -2359") == 253402387139);
  CHECK(internaldate_epoch("01-Jan-0001 00:00:00 +2359") == -62135683140);
  CHECK_FALSE(internaldate_epoch("01-Jan-1970 00:00:00 +2400"));
  CHECK_FALSE(internaldate_epoch("01-Jan-1970 00:00:00 +0060"));
  CHECK_FALSE(internaldate_epoch("01-Jan-1970 00:00:00 0000"));
  CHECK_FALSE(internaldate_epoch("01-Jan-1970 00:00:00 +000"));
  CHECK_FALSE(internaldate_epoch("01-Jan-1970 00:00:00 +00000"));
  // Leap years.
  CHECK(internaldate_epoch("29-Feb-2000 12:00:00 +0000") == 951825600);
  CHECK(internaldate_epoch("29-Feb-2024 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("29-Feb-2023 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("29-Feb-1900 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("30-Feb-2024 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("31-Apr-2024 00:00:00 +0000"));
  CHECK(internaldate_epoch("31-Dec-2024 00:00:00 +0000"));
  // Ranges and shape.
  CHECK(internaldate_epoch("30-Jun-2015 23:59:60 +0000") ==
        *internaldate_epoch("01-Jul-2015 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("30-Jun-2015 23:59:61 +0000"));
  CHECK_FALSE(internaldate_epoch("30-Jun-2015 24:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("30-Jun-2015 23:60:00 +0000"));
  CHECK_FALSE(internaldate_epoch("00-Jun-2015 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("32-Jan-2015 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("01-Jan-0000 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("01-Foo-2015 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch(" 01-Jan-2015 00:00:00 +0000"));  // space before two digits
  CHECK_FALSE(internaldate_epoch("  1-Jan-2015 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("001-Jan-2015 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("01-Jan-15 00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("01-Jan-2015 0:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("01-Jan-2015 00:00:00 +0000 "));
  CHECK_FALSE(internaldate_epoch("01-Jan-2015T00:00:00 +0000"));
  CHECK_FALSE(internaldate_epoch("01-Jan-2015 00:00:00"));
  CHECK_FALSE(internaldate_epoch(""));
  CHECK_FALSE(internaldate_epoch(" "));
  CHECK(valid_internaldate(" 9-Sep-2009 09:09:09 +0900"));
  CHECK_FALSE(valid_internaldate("9-Sep-2009 09:09:09"));
}

TEST_CASE("imap_wire: message_id_of") {
  CHECK(message_id_of("Message-ID: <a@b>\r\n\r\n") == "<a@b>");
  CHECK(message_id_of("message-id:<a@b>") == "<a@b>");
  CHECK(message_id_of("MESSAGE-ID :  <a@b> \t\n") == "<a@b>");
  CHECK(message_id_of("Subject: x\nMessage-Id: <1@x>\nMessage-Id: <2@x>\n") == "<1@x>");
  // Folded: CRLF or LF, then space or tab.
  CHECK(message_id_of("Message-ID:\r\n <long@\r\n\t  host>\r\n\r\n") == "<long@ host>");
  CHECK(message_id_of("Message-ID:\n\t<a@b>\n") == "<a@b>");
  CHECK(message_id_of("X: y\r\n Message-ID: <not@this>\r\n") == std::nullopt);  // a continuation
  CHECK(message_id_of(" Message-ID: <first@line>") == "<first@line>");
  CHECK(message_id_of("Message-ID-X: <a@b>") == std::nullopt);
  CHECK(message_id_of("X-Message-ID: <a@b>") == std::nullopt);
  CHECK(message_id_of("Message-ID:   \r\n\r\n") == std::nullopt);
  CHECK(message_id_of("Message-ID:\r\nMessage-ID: <second@x>") == std::nullopt);  // first decides
  CHECK(message_id_of("") == std::nullopt);
  CHECK(message_id_of("\r\n\r\n") == std::nullopt);
  CHECK(message_id_of("Message-ID <a@b>") == std::nullopt);
  CHECK(message_id_of("\r\nMessage-ID: <after@blank>") == "<after@blank>");
}

TEST_CASE("imap_wire: quoted, and quoted strings read back") {
  CHECK(imap::quoted("INBOX") == "\"INBOX\"");
  CHECK(imap::quoted("") == "\"\"");
  CHECK(imap::quoted("a \"b\" c\\d") == R"("a \"b\" c\\d")");
  CHECK(imap::quoted("&AOQ-rger") == "\"&AOQ-rger\"");
  CHECK_FALSE(imap::quoted("a\r"));
  CHECK_FALSE(imap::quoted("a\nb"));
  CHECK_FALSE(imap::quoted(std::string("a\0b", 3)));
  CHECK_FALSE(imap::quoted("\xc3\xa4rger"));
  for (std::string_view text : {"x", "a \"b\" c\\d", "\\", "\"", "{3}", "(", "NIL", "\t x"}) {
    auto q = imap::quoted(text);
    REQUIRE(q);
    auto v = parse(*q);
    REQUIRE(v.size() == 1);
    CHECK(v[0].kind == Value::Kind::string);
    CHECK(v[0].text == text);
  }
}

TEST_CASE("imap_wire: uid_set") {
  CHECK(uid_set({}) == "");
  CHECK(uid_set({7}) == "7");
  CHECK(uid_set({1, 2, 3, 5}) == "1:3,5");
  CHECK(uid_set({5, 3, 1, 2}) == "1:3,5");
  CHECK(uid_set({2, 2, 1, 1, 3, 9, 9}) == "1:3,9");
  CHECK(uid_set({4, 6, 8}) == "4,6,8");
  CHECK(uid_set({4294967295u, 4294967294u, 1}) == "1,4294967294:4294967295");
}

TEST_CASE("imap_wire: map_folder swaps the personal namespace's prefix, one to one") {
  const PersonalNamespace dovecot{"", "/"}, cyrus{"INBOX.", "."}, cyrus_alt{"", "."};
  // Cyrus without altnamespace <-> Dovecot.
  CHECK(map_folder("INBOX.Sent", cyrus, dovecot) == "Sent");
  CHECK(map_folder("INBOX.Archive.2024", cyrus, dovecot) == "Archive/2024");
  CHECK(map_folder("Sent", dovecot, cyrus) == "INBOX.Sent");
  CHECK(map_folder("Archive/2024", dovecot, cyrus) == "INBOX.Archive.2024");
  // INBOX is INBOX, in any case; a child of Dovecot's INBOX keeps its place.
  CHECK(map_folder("INBOX", cyrus, dovecot) == "INBOX");
  CHECK(map_folder("inbox", dovecot, cyrus) == "INBOX");
  CHECK(map_folder("INBOX/Sent", dovecot, cyrus) == "INBOX.INBOX.Sent");
  CHECK(map_folder("INBOX.INBOX.Sent", cyrus, dovecot) == "INBOX/Sent");
  CHECK(map_folder("inbox.Sent", cyrus, dovecot) == "Sent");  // INBOX in any case
  // One to one: every name of one side maps back to itself.
  for (const char* name : {"Sent", "INBOX/Sent", "a/b/c", "INBOX", "Trash"}) {
    CAPTURE(name);
    auto there = map_folder(name, dovecot, cyrus);
    REQUIRE(there);
    CHECK(map_folder(*there, cyrus, dovecot) == name);
  }
  // Cyrus' INBOX.INBOX (the parent of INBOX.INBOX.Sent) is Dovecot's INBOX.
  CHECK(map_folder("INBOX.INBOX", cyrus, dovecot) == "INBOX");
  CHECK(map_folder("INBOX.inbox", cyrus, dovecot) == "INBOX");
  // No name: refused.
  CHECK_FALSE(map_folder("INBOX.", cyrus, dovecot));
  // A level holding the destination's delimiter cannot be named there.
  CHECK_FALSE(map_folder("a.b", dovecot, cyrus));
  // The same layout: only the delimiter (as map_name).
  CHECK(map_folder("INBOX.Sent", cyrus, cyrus) == "INBOX.Sent");
  CHECK(map_folder("Archive.2024", cyrus_alt, dovecot) == "Archive/2024");
  // Outside the source's prefix: not the user's, no name for it.
  CHECK_FALSE(map_folder("Other.x", cyrus, dovecot));
  CHECK(under_prefix("INBOX.Sent", "INBOX."));
  CHECK(under_prefix("Inbox.Sent", "INBOX."));
  CHECK_FALSE(under_prefix("INBOXSent", "INBOX."));
  CHECK_FALSE(under_prefix("Sent", ""));
  CHECK_FALSE(under_prefix("INBOX", "INBOX."));
}

TEST_CASE("imap_wire: map_name") {
  CHECK(map_name("a.b.c", ".", "/") == "a/b/c");
  CHECK(map_name("a/b", "/", ".") == "a.b");
  CHECK(map_name("INBOX", ".", "/") == "INBOX");
  CHECK(map_name("", ".", "/") == "");
  CHECK(map_name("a..b.", ".", "/") == "a//b/");
  // A level holding the destination's delimiter cannot be named there.
  CHECK_FALSE(map_name("a.b/c", ".", "/"));
  CHECK_FALSE(map_name("x/y", ".", "/"));
  // The same delimiter, or none on a side: the name as it is.
  CHECK(map_name("a/b.c", "/", "/") == "a/b.c");
  CHECK(map_name("a/b.c", "", "/") == "a/b.c");
  CHECK(map_name("a/b.c", ".", "") == "a/b.c");
  // Delimiters longer than one character (not in IMAP, but defined).
  CHECK(map_name("a::b", "::", "/") == "a/b");
  CHECK_FALSE(map_name("a::b/c", "::", "/"));
}

TEST_CASE("imap_wire: listed_message") {
  auto ok = listed("4 FETCH (UID 17 RFC822.SIZE 1234 FLAGS (\\Seen \\Recent $Label1) "
                   "INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" "
                   "BODY[HEADER.FIELDS (MESSAGE-ID)] {23}\r\nMessage-ID: <x@y.z>\r\n\r\n)");
  REQUIRE(ok.msg);
  CHECK_FALSE(ok.unsolicited);
  CHECK(ok.error.empty());
  CHECK(ok.msg->uid == 17);
  CHECK(ok.msg->size == 1234);
  CHECK(ok.msg->flags == std::vector<std::string>{"$Label1", "\\Seen"});
  CHECK(ok.msg->date == "17-Jul-1996 02:44:25 -0700");
  CHECK(ok.msg->message_id == "<x@y.z>");
  CHECK(ok.msg->key() == "1234 id <x@y.z>");

  // Without a Message-ID: the key is the body's hash, filled in later.
  auto no_id = listed("1 FETCH (UID 2 RFC822.SIZE 10 FLAGS () INTERNALDATE NIL "
                      "BODY[HEADER.FIELDS (MESSAGE-ID)] {2}\r\n\r\n)");
  REQUIRE(no_id.msg);
  CHECK_FALSE(no_id.msg->message_id);
  CHECK(no_id.msg->date.empty());
  no_id.msg->sha256 = "ab12";
  CHECK(no_id.msg->key() == "10 sha256 ab12");
  // A Message-ID longer than a header line may be is no key: the body's
  // hash pairs the message (and the listing keeps no huge keys).
  for (const std::size_t n : {kMaxMessageId, kMaxMessageId + 1, std::size_t{100000}}) {
    const std::string id = "<" + std::string(n - 2, 'a') + ">";
    const std::string header = "Message-ID: " + id + "\r\n\r\n";
    auto long_id = listed(fmt::format("1 FETCH (UID 3 RFC822.SIZE 10 BODY[HEADER.FIELDS "
                                      "(MESSAGE-ID)] {{{}}}\r\n{})",
                                      header.size(), header));
    REQUIRE(long_id.msg);
    if (n <= kMaxMessageId)
      CHECK(long_id.msg->message_id == id);
    else
      CHECK_FALSE(long_id.msg->message_id);
  }
  auto nil_header = listed("1 FETCH (UID 2 RFC822.SIZE 10 BODY[HEADER.FIELDS (MESSAGE-ID)] NIL)");
  REQUIRE(nil_header.msg);
  CHECK_FALSE(nil_header.msg->message_id);
  CHECK(nil_header.msg->flags.empty());

  // Another session's flag change: skipped, not an error.
  for (auto wire : {"9 FETCH (FLAGS (\\Seen))", "9 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (12))",
                    "9 FETCH ()", "9 FETCH (UID 4 BODY[] {1}\r\nx)"}) {
    auto u = listed(wire);
    CHECK(u.unsolicited);
    CHECK_FALSE(u.msg);
    CHECK(u.error.empty());
  }

  auto error_of = [](std::string_view wire) {
    auto r = listed(wire);
    CHECK_FALSE(r.msg);
    CHECK_FALSE(r.unsolicited);
    return r.error;
  };
  CHECK(error_of("1 FETCH (RFC822.SIZE 10)").find("UID") != std::string::npos);
  CHECK(error_of("1 FETCH (UID x RFC822.SIZE 10)").find("UID") != std::string::npos);
  CHECK(error_of("1 FETCH (UID 0 RFC822.SIZE 10)").find("UID") != std::string::npos);
  CHECK(error_of("1 FETCH (UID 4294967296 RFC822.SIZE 10)").find("UID") != std::string::npos);
  CHECK(error_of("1 FETCH (UID (1) RFC822.SIZE 10)").find("UID") != std::string::npos);
  CHECK(error_of("1 FETCH (UID 1 INTERNALDATE \"01-Jan-2000 00:00:00 +0000\")")
            .find("RFC822.SIZE") != std::string::npos);
  CHECK(error_of("1 FETCH (UID 1 RFC822.SIZE -1)").find("RFC822.SIZE") != std::string::npos);
  CHECK(error_of("1 FETCH (UID 1 RFC822.SIZE NIL)").find("RFC822.SIZE") != std::string::npos);
  CHECK(error_of("1 FETCH (UID 1 RFC822.SIZE 5 FLAGS (\"a b\"))").find("FLAGS") !=
        std::string::npos);
  CHECK(error_of("1 FETCH (UID 1 RFC822.SIZE 5 FLAGS (a\\b))").find("FLAGS") !=
        std::string::npos);
  CHECK(error_of("1 FETCH (UID 1 RFC822.SIZE 5 FLAGS NIL)").find("FLAGS") != std::string::npos);
  CHECK(error_of("1 FETCH (UID 1 RFC822.SIZE 5 FLAGS \\Seen)").find("FLAGS") !=
        std::string::npos);
  CHECK(error_of("1 FETCH (UID 1 RFC822.SIZE 5 INTERNALDATE \"29-Feb-2023 00:00:00 +0000\")")
            .find("INTERNALDATE") != std::string::npos);
  CHECK(error_of("1 FETCH (UID 1 RFC822.SIZE 5 INTERNALDATE (x))").find("INTERNALDATE") !=
        std::string::npos);
}

TEST_CASE("imap_wire: plan_folder pairs messages as multisets") {
  SUBCASE("nothing on the destination: everything to copy") {
    std::vector<Msg> src = {msg(1, 10, "<a>"), msg(2, 20, "<b>")};
    auto plan = plan_folder(src, {});
    REQUIRE(plan.todo.size() == 2);
    CHECK(plan.todo[0].uid == 1);
    CHECK(plan.todo[1].uid == 2);
    CHECK(plan.already == 0);
    CHECK(plan.extra.empty());
    CHECK(plan.restore.empty());
    CHECK(plan.flag_changes() == 0);
  }
  SUBCASE("duplicates on both sides pair one by one, in order") {
    // Three copies of <a> on the source, two on the destination; size is
    // part of the key (the same Message-ID with another size is another
    // message).
    std::vector<Msg> src = {msg(1, 10, "<a>"), msg(2, 10, "<a>"), msg(3, 10, "<a>"),
                            msg(4, 11, "<a>"), msg(5, 30, "<c>")};
    std::vector<Msg> dst = {msg(50, 10, "<a>"), msg(40, 10, "<a>", {"\\Seen"}),
                            msg(30, 99, "<z>"), msg(20, 30, "<c>"), msg(10, 30, "<c>")};
    auto plan = plan_folder(src, dst);
    REQUIRE(plan.todo.size() == 2);
    CHECK(plan.todo[0].uid == 3);
    CHECK(plan.todo[1].uid == 4);
    CHECK(plan.already == 3);
    CHECK(plan.extra == std::vector<std::uint32_t>{10, 30});
    // src 2 (no flags) took dst 40 (\Seen): its flags are restored.
    REQUIRE(plan.restore.size() == 1);
    CHECK(plan.restore[0].first.empty());
    CHECK(plan.restore[0].second == std::vector<std::uint32_t>{40});
    CHECK(plan.flag_changes() == 1);
  }
  SUBCASE("messages without a Message-ID pair by size and body hash") {
    std::vector<Msg> src = {msg(1, 10, std::nullopt, {}, "aa"), msg(2, 10, std::nullopt, {}, "bb"),
                            msg(3, 10, std::nullopt, {}, "aa")};
    std::vector<Msg> dst = {msg(7, 10, std::nullopt, {}, "aa"), msg(8, 10, "aa"),
                            msg(9, 12, std::nullopt, {}, "bb")};
    CHECK(src[0].key() == "10 sha256 aa");
    auto plan = plan_folder(src, dst);
    CHECK(plan.already == 1);
    REQUIRE(plan.todo.size() == 2);
    CHECK(plan.todo[0].uid == 2);
    CHECK(plan.todo[1].uid == 3);
    CHECK(plan.extra == std::vector<std::uint32_t>{8, 9});
  }
  SUBCASE("flags that differ: grouped by the source's flags, UIDs ascending") {
    std::vector<Msg> src = {
        msg(1, 1, "<1>", {"\\Seen"}), msg(2, 2, "<2>", {"$X", "\\Seen"}),
        msg(3, 3, "<3>", {"\\Seen"}), msg(4, 4, "<4>", {"\\Flagged"}),
        msg(5, 5, "<5>", {"\\Seen", "$X"}),  // unsorted on input: compared sorted
        msg(6, 6, "<6>", {"\\Seen"})};
    std::vector<Msg> dst = {msg(90, 1, "<1>"), msg(20, 2, "<2>", {"\\Seen"}),
                            msg(30, 3, "<3>", {"\\Answered"}), msg(40, 4, "<4>", {"\\Flagged"}),
                            msg(10, 5, "<5>", {"$X", "\\Seen"}), msg(60, 6, "<6>", {"\\seen"})};
    auto plan = plan_folder(src, dst);
    CHECK(plan.already == 6);
    CHECK(plan.todo.empty());
    CHECK(plan.extra.empty());
    REQUIRE(plan.restore.size() == 2);
    CHECK(plan.restore[0].first == std::vector<std::string>{"$X", "\\Seen"});
    CHECK(plan.restore[0].second == std::vector<std::uint32_t>{20});
    CHECK(plan.restore[1].first == std::vector<std::string>{"\\Seen"});
    CHECK(plan.restore[1].second == std::vector<std::uint32_t>{30, 60, 90});
    CHECK(plan.flag_changes() == 4);
  }
  SUBCASE("only on the destination: all extra, ascending") {
    std::vector<Msg> dst = {msg(9, 1, "<1>"), msg(3, 1, "<1>"), msg(5, 2, std::nullopt)};
    auto plan = plan_folder({}, dst);
    CHECK(plan.extra == std::vector<std::uint32_t>{3, 5, 9});
    CHECK(plan.already == 0);
  }
}
