#include "backends/topology.hpp"
#include "config/config.hpp"
#include "director/login_name.hpp"
#include "director/router.hpp"
#include "director/static_directory.hpp"

#include <doctest/doctest.h>

using namespace isthmus;
using director::LookupStatus;

namespace {

config::LoginNames rules(std::string domain = "example.org") {
  config::LoginNames r;
  r.default_domain = std::move(domain);
  return r;
}

bool ab(std::string_view island) { return island == "a" || island == "b"; }

std::string error_of(const std::string& text) {
  try {
    director::StaticDirectory::parse(text, "users.map", rules(), ab);
  } catch (const config::ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("login names: lower-cased, default domain added, bad names refused") {
  auto r = rules();
  CHECK(director::normalise_login("Alice@Example.ORG", r) == "alice@example.org");
  CHECK(director::normalise_login("Bob", r) == "bob@example.org");
  CHECK(director::normalise_login("bob", rules("")) == "bob");
  CHECK_FALSE(director::normalise_login("", r));
  CHECK_FALSE(director::normalise_login("a b", r));
  CHECK_FALSE(director::normalise_login(std::string("a\0b", 3), r));
  CHECK_FALSE(director::normalise_login("alice\r\n", r));
  CHECK_FALSE(director::normalise_login("@example.org", r));
  CHECK_FALSE(director::normalise_login(std::string(300, 'a'), r));
  config::LoginNames keep_case = r;
  keep_case.lowercase = false;
  CHECK(director::normalise_login("Alice", keep_case) == "Alice@example.org");
  // Non-ASCII is kept as it is (and routed as it is); only ASCII is folded.
  CHECK(director::normalise_login("J\xc3\xb6rg", r) == "j\xc3\xb6rg@example.org");
  CHECK(director::normalise_login("\xc3\x96", r) == "\xc3\x96@example.org");  // Ö stays
}

TEST_CASE("login names: one normalisation: UTF-8, NFC, one '@', no controls") {
  auto r = rules();
  // NFC: o + U+0308 COMBINING DIAERESIS is the same name as U+00F6.
  CHECK(director::normalise_login("jo\xcc\x88rg", r) == "j\xc3\xb6rg@example.org");
  // Not UTF-8: a lone continuation byte, an overlong '/', a surrogate, a
  // truncated sequence, Latin-1.
  for (const char* bad : {"a\x80" "b", "a\xc0\xaf" "b", "a\xed\xa0\x80" "b", "a\xe2\x82", "J\xf6" "rg"})
    CHECK_FALSE(director::normalise_login(bad, r));
  // C1 controls (U+0085 NEXT LINE) are controls.
  CHECK_FALSE(director::normalise_login("a\xc2\x85" "b", r));
  // More than one '@' is refused (like an unknown user), whatever the
  // directory would make of it.
  CHECK_FALSE(director::normalise_login("a@b@example.org", r));
  CHECK_FALSE(director::normalise_login("alice@", r));
  CHECK(director::valid_utf8("plain ascii"));
  CHECK(director::valid_utf8("\xf0\x9f\x93\xab"));       // U+1F4EB
  CHECK_FALSE(director::valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
}

TEST_CASE("static directory: exact users, domains, default") {
  auto dir = director::StaticDirectory::parse(
      "# users\nalice@example.org a\nBOB   b   # trailing comment\n*@other.net b\n\n* a\n",
      "users.map", rules(), ab);
  CHECK(dir->find("alice@example.org").entry.island == "a");
  CHECK(dir->find("bob@example.org").entry.island == "b");
  CHECK(dir->find("x@other.net").entry.island == "b");
  CHECK(dir->find("x@other.net").detail == "domain");
  CHECK(dir->find("nobody@example.org").entry.island == "a");
  CHECK(dir->find("nobody@example.org").detail == "default");
  auto strict = director::StaticDirectory::parse("alice@example.org a\n", "m", rules(), ab);
  CHECK(strict->find("carol@example.org").status == LookupStatus::not_found);
  auto states = director::StaticDirectory::parse(
      "eve a state=disabled\nmallory b state=moving node_login=mal\n", "m", rules(), ab);
  CHECK(states->find("eve@example.org").entry.state == director::AccountState::disabled);
  CHECK(states->find("mallory@example.org").entry.state == director::AccountState::moving);
  CHECK(states->find("mallory@example.org").entry.node_login == "mal");
}

TEST_CASE("static directory: errors name file and line") {
  CHECK(error_of("alice@example.org a\nbob c\n") ==
        "users.map:2: island \"c\" is not in the config");
  CHECK(error_of("alice a\nALICE@example.org b\n") ==
        "users.map:2: \"alice@example.org\" is listed twice");
  CHECK(error_of("alice\n") ==
        "users.map:1: expected \"LOGIN-NAME ISLAND [state=...] [node_login=...]\", found 1 field");
  CHECK(error_of("alice a state=gone\n") ==
        "users.map:1: \"state=gone\": expected state=active|disabled|moving or node_login=NAME");
  CHECK(error_of("*@x.org a state=moving\n") ==
        "users.map:1: attributes are for single users, not \"*\" or \"*@domain\" rules");
  CHECK(error_of("a*b@x a\n") == "users.map:1: wildcards are only \"*\" (default) and \"*@domain\"");
  CHECK(error_of("* a\n* b\n") == "users.map:2: a second default (\"*\") rule");
  auto both = error_of("x c\ny d\n");
  CHECK(both.find("users.map:1:") != std::string::npos);
  CHECK(both.find("users.map:2:") != std::string::npos);
}

TEST_CASE("router: fewest sessions first, suspects last, equals rotate") {
  config::Config c;
  config::Island island;
  island.name = "a";
  for (auto name : {"l", "r"}) {
    config::Node n;
    n.name = name;
    n.host = "127.0.0.1";
    n.ports[config::Protocol::imap] = 1;
    island.nodes.push_back(n);
  }
  c.islands.push_back(island);
  auto topology = backends::Topology::build(c, nullptr);
  const auto& a = *topology->island("a");
  auto now = Clock::now();
  auto first = [&](std::size_t spin) {
    return director::candidates(a, config::Protocol::imap, now, spin).front()->name;
  };
  CHECK(first(0) != first(1));  // equal load: rotates

  backends::NodeLease lease(topology->state_of("l"));
  CHECK(first(0) == "r");
  CHECK(first(1) == "r");
  lease.release();

  topology->state_of("r")->report_failure(now);
  CHECK(first(0) == "l");
  CHECK(first(1) == "l");
  CHECK(director::candidates(a, config::Protocol::imap, now, 0).size() == 2);  // still tried
  topology->state_of("r")->report_success();
  CHECK(first(0) != first(1));

  CHECK(director::candidates(a, config::Protocol::pop3, now, 0).empty());

  // State survives a rebuild (a reload) for nodes of the same name.
  backends::NodeLease held(topology->state_of("l"));
  auto rebuilt = backends::Topology::build(c, topology.get());
  CHECK(rebuilt->state_of("l")->sessions() == 1);
}

TEST_CASE("static directory: a domain rule no login name can match is an error (fuzz finding)") {
  // The domain of "*@x.org\x11dave@example.org" holds an '@' and control
  // bytes: lookups take what follows a name's last '@', so it never matched.
  CHECK(error_of("*@x.org\x11" "dave@example.org a\n").find("no login name can have this domain") !=
        std::string::npos);
  CHECK(error_of("*@a@b.org a\n").find("no login name can have this domain") != std::string::npos);
  CHECK(error_of("*@example.com b\n").empty());
}
