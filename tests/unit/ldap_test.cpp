#include "config/config.hpp"
#include "director/directory.hpp"
#include "director/ldap_directory.hpp"
#include "ldap/client.hpp"
#include "ldap/filter.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <doctest/doctest.h>

#include <cctype>
#include <chrono>
#include <optional>
#include <string>

using namespace isthmus;
using director::LookupStatus;
using ldap::escape_filter_value;

namespace {

std::string render(std::string_view filter_template, std::string_view user) {
  return director::render_ldap_filter(director::parse_template(filter_template),
                                      director::split_login(user));
}

const std::string kDefaultFilter = config::LdapDirectory{}.filter;

// True if `filter` is one parenthesised item whose parentheses balance and
// whose value parts hold no '*', '(' , ')' or NUL that is not escaped.
bool one_equality_item(std::string_view filter, std::string_view attribute) {
  const std::string head = "(" + std::string(attribute) + "=";
  if (filter.substr(0, head.size()) != head || filter.back() != ')') return false;
  auto value = filter.substr(head.size(), filter.size() - head.size() - 1);
  for (std::size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    if (c == '*' || c == '(' || c == ')' || c == '\0') return false;
    if (c == '\\') {  // must be \XX
      if (i + 2 >= value.size()) return false;
      if (!std::isxdigit(static_cast<unsigned char>(value[i + 1])) ||
          !std::isxdigit(static_cast<unsigned char>(value[i + 2])))
        return false;
      i += 2;
    }
  }
  return true;
}

ldap::Entry entry(std::string dn,
                  std::vector<std::pair<std::string, std::vector<std::string>>> attributes) {
  ldap::Entry e;
  e.dn = std::move(dn);
  e.attributes = std::move(attributes);
  return e;
}

ldap::SearchResult answered(std::vector<ldap::Entry> entries) {
  ldap::SearchResult r;
  r.ok = true;
  r.server = "ldap://127.0.0.1:389/";
  r.entries = std::move(entries);
  return r;
}

template <typename T>
T run_on(boost::asio::io_context& io, boost::asio::awaitable<T> task) {
  std::optional<T> out;
  boost::asio::co_spawn(
      io, [&]() -> boost::asio::awaitable<void> { out = co_await std::move(task); },
      boost::asio::detached);
  io.run();
  io.restart();
  REQUIRE(out.has_value());
  return std::move(*out);
}

ldap::ClientSettings settings_for(std::vector<std::string> uris) {
  ldap::ClientSettings s;
  s.uris = std::move(uris);
  s.bind_dn = "cn=isthmus,ou=services,dc=example,dc=org";
  s.bind_password = "secret-service-password";
  s.pool_size = 2;
  s.connect_timeout = std::chrono::milliseconds(200);
  s.max_backoff = std::chrono::milliseconds(500);
  return s;
}

}  // namespace

TEST_CASE("ldap filter escaping: * ( ) \\ and NUL become \\2a \\28 \\29 \\5c \\00 (RFC 4515)") {
  CHECK(escape_filter_value("alice@example.org") == "alice@example.org");
  CHECK(escape_filter_value("*") == "\\2a");
  CHECK(escape_filter_value("(") == "\\28");
  CHECK(escape_filter_value(")") == "\\29");
  CHECK(escape_filter_value("\\") == "\\5c");
  CHECK(escape_filter_value(std::string("a\0b", 3)) == "a\\00b");
  CHECK(escape_filter_value("a*b(c)d\\e") == "a\\2ab\\28c\\29d\\5ce");
  CHECK(escape_filter_value("") == "");
  // Other punctuation is not special in a filter value.
  CHECK(escape_filter_value("a=b&|!~<>:,+\"'%_ ") == "a=b&|!~<>:,+\"'%_ ");
  // An escape sequence typed by the user is taken literally.
  CHECK(escape_filter_value("\\2a") == "\\5c2a");
}

TEST_CASE("ldap filter escaping: UTF-8 kept as it is, malformed octets escaped") {
  CHECK(escape_filter_value("jürgen.müller@example.org") == "jürgen.müller@example.org");
  CHECK(escape_filter_value("ñandú") == "ñandú");
  CHECK(escape_filter_value("日本語") == "日本語");
  CHECK(escape_filter_value("\xF0\x9F\x93\xA7") == "\xF0\x9F\x93\xA7");  // U+1F4E7, 4 octets
  CHECK(escape_filter_value("\xC3") == "\\c3");                          // cut short
  CHECK(escape_filter_value("\xFF\xFE") == "\\ff\\fe");                  // never UTF-8
  CHECK(escape_filter_value("\xC0\xAA") == "\\c0\\aa");                  // overlong '*'
  CHECK(escape_filter_value("\xED\xA0\x80") == "\\ed\\a0\\80");          // a surrogate
  CHECK(escape_filter_value("a\x80" "b") == "a\\80b");                   // stray continuation
}

TEST_CASE("ldap filter rendering: nasty login names stay one literal value") {
  const std::string filter_template = "(uid=%{user})";
  for (std::string user : {"*", "*@example.org", "alice@example.org)(uid=*", "*)(|(mailIsland=*",
                           "alice)(&)@example.org", "\\2a@example.org", "\\", "a\\",
                           "alice' OR '1'='1@example.org", "jürgen.müller@example.org"}) {
    CAPTURE(user);
    const std::string rendered = render(filter_template, user);
    CHECK(one_equality_item(rendered, "uid"));
  }
  CHECK(render(filter_template, "alice@example.org)(uid=*") ==
        "(uid=alice@example.org\\29\\28uid=\\2a)");
  CHECK(render(filter_template, "*)(|(mailIsland=*") == "(uid=\\2a\\29\\28|\\28mailIsland=\\2a)");
  CHECK(render(filter_template, std::string("alice\0@example.org", 18)) ==
        "(uid=alice\\00@example.org)");
  CHECK(render(filter_template, "jürgen@example.org") == "(uid=jürgen@example.org)");

  const std::string long_user(5000, '*');
  const std::string rendered = render(filter_template, long_user + "@example.org");
  CHECK(rendered.size() == 5 + 3 * 5000 + 12 + 1);
  CHECK(one_equality_item(rendered, "uid"));
}

TEST_CASE("ldap filter rendering: the default filter, %{localpart} and %{domain}") {
  CHECK(render(kDefaultFilter, "alice@example.org") ==
        "(&(objectClass=mailIslandUser)(uid=alice@example.org))");
  CHECK(render("(&(uid=%{localpart})(dc=%{domain}))", "a*b@ex(ample).org") ==
        "(&(uid=a\\2ab)(dc=ex\\28ample\\29.org))");
  CHECK(render("(&(uid=%{localpart})(dc=%{domain}))", "nodomain") == "(&(uid=nodomain)(dc=))");
  // The local part ends at the last '@'.
  CHECK(render("(uid=%{localpart})", "a@b@example.org") == "(uid=a@b)");
}

TEST_CASE("ldap search answer: one entry is found, with state, node login and {CRYPT} hash") {
  config::LdapDirectory settings;
  settings.password_attribute = "userPassword";
  auto result = director::interpret_ldap_search(
      settings, answered({entry("uid=ivan@example.org,ou=people,dc=example,dc=org",
                                {{"mailisland", {"a"}},
                                 {"mailAccountState", {"Moving"}},
                                 {"mailNodeLogin", {"ivan.legacy@example.org"}},
                                 {"userPassword", {"{crypt}$6$salt$hash"}}})}), "user@example.org");
  REQUIRE(result.status == LookupStatus::found);
  CHECK(result.entry.island == "a");
  CHECK(result.entry.state == director::AccountState::moving);
  CHECK(result.entry.node_login == "ivan.legacy@example.org");
  CHECK(result.entry.dn == "uid=ivan@example.org,ou=people,dc=example,dc=org");
  CHECK(result.entry.password_hash == "$6$salt$hash");

  // No state attribute: active. No node login: empty (the login name is used).
  result = director::interpret_ldap_search(
      settings, answered({entry("uid=bob,dc=example,dc=org", {{"mailIsland", {"b"}}})}), "user@example.org");
  REQUIRE(result.status == LookupStatus::found);
  CHECK(result.entry.state == director::AccountState::active);
  CHECK(result.entry.node_login.empty());
  CHECK(result.entry.password_hash.empty());
}

TEST_CASE("ldap search answer: no entry is not found; an entry without an island is broken") {
  config::LdapDirectory settings;
  auto result = director::interpret_ldap_search(settings, answered({}), "user@example.org");
  CHECK(result.status == LookupStatus::not_found);
  result = director::interpret_ldap_search(
      settings,
      answered({entry("uid=x,dc=example,dc=org", {{"mailAccountState", {"active"}}})}), "user@example.org");
  // Mail for it must wait, not bounce (a temporary failure everywhere).
  CHECK(result.status == LookupStatus::unavailable);
  CHECK(result.detail.find("directory data error") != std::string::npos);
  CHECK(result.detail.find("has no mailIsland value") != std::string::npos);
}

TEST_CASE("ldap search answer: the node is told the directory's spelling of the name") {
  config::LdapDirectory settings;
  auto one = [&](std::vector<std::string> uids, std::string_view user) {
    return director::interpret_ldap_search(
        settings,
        answered({entry("cn=x,dc=example,dc=org", {{"mailIsland", {"a"}}, {"uid", uids}})}),
        user);
  };
  // caseIgnoreMatch matched "alİce" (U+0130) to alice's entry: the node
  // must log in alice, whom the routing chose, not a look-alike.
  auto result = one({"alice@example.org"}, "al\xc4\xb0" "ce@example.org");
  REQUIRE(result.status == LookupStatus::found);
  CHECK(result.entry.login == "alice@example.org");
  // Several values: the exact one, else the one equal but for ASCII case.
  result = one({"alias@example.org", "alice@example.org"}, "alice@example.org");
  CHECK(result.entry.login == "alice@example.org");
  result = one({"alias@example.org", "Alice@Example.org"}, "alice@example.org");
  CHECK(result.entry.login == "Alice@Example.org");
  // Several values and none is the name: ambiguous, a directory data error.
  result = one({"x@example.org", "y@example.org"}, "alice@example.org");
  CHECK(result.status == LookupStatus::unavailable);
  // No login attribute on the entry: the normalised name is used.
  result = director::interpret_ldap_search(
      settings, answered({entry("cn=x,dc=example,dc=org", {{"mailIsland", {"a"}}})}),
      "alice@example.org");
  CHECK(result.entry.login.empty());
}

TEST_CASE("ldap search answer: ambiguity, unknown states and failures are unavailable") {
  config::LdapDirectory settings;
  auto result = director::interpret_ldap_search(
      settings, answered({entry("uid=a,dc=example,dc=org", {{"mailIsland", {"a"}}}),
                          entry("uid=b,dc=example,dc=org", {{"mailIsland", {"b"}}})}), "user@example.org");
  CHECK(result.status == LookupStatus::unavailable);
  CHECK(result.detail.find("filter matched 2 entries") != std::string::npos);

  auto over = answered({entry("uid=a,dc=example,dc=org", {{"mailIsland", {"a"}}})});
  over.size_limit_exceeded = true;
  result = director::interpret_ldap_search(settings, over, "user@example.org");
  CHECK(result.status == LookupStatus::unavailable);
  CHECK(result.detail.find("filter matched more than 1 entries") != std::string::npos);

  result = director::interpret_ldap_search(
      settings, answered({entry("uid=a,dc=example,dc=org",
                                {{"mailIsland", {"a"}}, {"mailAccountState", {"frozen"}}})}), "user@example.org");
  CHECK(result.status == LookupStatus::unavailable);
  CHECK(result.detail.find("unknown mailAccountState value \"frozen\"") != std::string::npos);

  result = director::interpret_ldap_search(
      settings, answered({entry("uid=a,dc=example,dc=org", {{"mailIsland", {"a", "b"}}})}), "user@example.org");
  CHECK(result.status == LookupStatus::unavailable);

  ldap::SearchResult failed;
  failed.error = "ldap://127.0.0.1:1/: connect: Connection refused";
  result = director::interpret_ldap_search(settings, failed, "user@example.org");
  CHECK(result.status == LookupStatus::unavailable);
  CHECK(result.detail.find("Connection refused") != std::string::npos);
}

TEST_CASE("ldap client: URIs that are not ldap:// or ldaps:// are refused at creation") {
  boost::asio::io_context io;
  CHECK_THROWS_AS(ldap::Client::create(io.get_executor(), settings_for({"http://x/"})),
                  std::invalid_argument);
  CHECK_THROWS_AS(ldap::Client::create(io.get_executor(), settings_for({})),
                  std::invalid_argument);
  CHECK_NOTHROW(ldap::Client::create(io.get_executor(),
                                     settings_for({"ldap://127.0.0.1:389/", "ldaps://[::1]/"})));
}

TEST_CASE("ldap client: an empty password is rejected without asking any server") {
  boost::asio::io_context io;
  auto client = ldap::Client::create(io.get_executor(), settings_for({"ldap://127.0.0.1:1/"}));
  auto bound = run_on(io, client->check_password("uid=alice,dc=example,dc=org", "",
                                                 Deadline::after(std::chrono::seconds(1))));
  CHECK(bound.outcome == ldap::BindOutcome::rejected);
  CHECK(client->stats().connects + client->stats().connect_failures == 0);
  client->close();
}

TEST_CASE("ldap client: a refused server is unavailable at once, then in backoff") {
  boost::asio::io_context io;
  // A port nobody listens on: bind one, note it, close it.
  boost::asio::ip::tcp::acceptor probe(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  const auto port = probe.local_endpoint().port();
  probe.close();
  auto client = ldap::Client::create(
      io.get_executor(), settings_for({"ldap://127.0.0.1:" + std::to_string(port) + "/"}));
  ldap::SearchRequest request;
  request.base = "dc=example,dc=org";
  request.filter = "(uid=alice)";
  const auto started = Clock::now();
  auto result = run_on(io, client->search(request, Deadline::after(std::chrono::seconds(2))));
  CHECK_FALSE(result.ok);
  CHECK(result.error.find("connect") != std::string::npos);
  CHECK(result.error.find("secret-service-password") == std::string::npos);
  // In backoff now: the next search fails without connecting.
  result = run_on(io, client->search(request, Deadline::after(std::chrono::seconds(2))));
  CHECK_FALSE(result.ok);
  CHECK(result.error.find("in backoff") != std::string::npos);
  CHECK(Clock::now() - started < std::chrono::seconds(1));
  CHECK(client->stats().connect_failures == 1);
  client->close();
}

TEST_CASE("ldap client: a server that accepts and never answers times out within the deadline") {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor silent(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  silent.listen();  // the kernel completes handshakes; nobody ever reads
  const auto port = silent.local_endpoint().port();
  auto settings = settings_for({"ldap://127.0.0.1:" + std::to_string(port) + "/"});
  settings.connect_timeout = std::chrono::milliseconds(2000);
  auto client = ldap::Client::create(io.get_executor(), settings);
  ldap::SearchRequest request;
  request.base = "dc=example,dc=org";
  request.filter = "(uid=alice)";
  const auto started = Clock::now();
  auto result = run_on(io, client->search(request, Deadline::after(std::chrono::milliseconds(300))));
  const auto took = Clock::now() - started;
  CHECK_FALSE(result.ok);
  CHECK(took >= std::chrono::milliseconds(250));
  CHECK(took < std::chrono::milliseconds(900));
  client->close();
}
