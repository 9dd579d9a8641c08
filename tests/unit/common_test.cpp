#include "common/deadline.hpp"
#include "common/failure.hpp"
#include "common/log.hpp"
#include "common/session_id.hpp"
#include "common/strings.hpp"
#include "config/duration.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <doctest/doctest.h>

#include <thread>

#include <set>

using namespace isthmus;

TEST_CASE("base64: round trips and strict decoding") {
  for (const std::string& raw : std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0alice\0demo", 11)}) {
    CHECK(decode_base64(encode_base64(raw)) == raw);
  }
  CHECK(encode_base64(std::string("\0alice@example.org\0demo", 23)) ==
        "AGFsaWNlQGV4YW1wbGUub3JnAGRlbW8=");
  CHECK_FALSE(decode_base64("abc"));        // not a multiple of 4
  CHECK_FALSE(decode_base64("ab=c"));       // padding in the middle
  CHECK_FALSE(decode_base64("a==="));       // too much padding
  CHECK_FALSE(decode_base64("ab c"));       // whitespace
  CHECK_FALSE(decode_base64("ab$c"));       // outside the alphabet
  CHECK_FALSE(decode_base64("YQ==YQ=="));   // padding before the end
  // Non-canonical padding bits (fuzz finding): one meaning, one spelling.
  CHECK(decode_base64("IA==") == std::string(" "));
  CHECK_FALSE(decode_base64("IO=="));
  CHECK_FALSE(decode_base64("QR=="));
  CHECK(decode_base64("QUI=") == std::string("AB"));
  CHECK_FALSE(decode_base64("QUJ="));
}

TEST_CASE("sanitize keeps printable ASCII and escapes the rest") {
  CHECK(sanitize("alice@example.org") == "alice@example.org");
  CHECK(sanitize(std::string("a\0b\r\n", 5)) == "a\\x00b\\x0d\\x0a");
  CHECK(sanitize("back\\slash") == "back\\x5cslash");
  CHECK(sanitize(std::string(300, 'x'), 10) == "xxxxxxxxxx...");
}

TEST_CASE("durations") {
  using std::chrono::milliseconds;
  CHECK(config::parse_duration("250ms") == milliseconds(250));
  CHECK(config::parse_duration("30s") == milliseconds(30000));
  CHECK(config::parse_duration("5m") == milliseconds(300000));
  CHECK(config::parse_duration("1h") == milliseconds(3600000));
  CHECK(config::parse_duration("0s") == milliseconds(0));
  CHECK_FALSE(config::parse_duration("30"));
  CHECK_FALSE(config::parse_duration("s"));
  CHECK_FALSE(config::parse_duration("-1s"));
  CHECK_FALSE(config::parse_duration("1.5s"));
  CHECK_FALSE(config::parse_duration("99999999999999h"));
  CHECK(config::format_duration(milliseconds(30000)) == "30s");
  CHECK(config::format_duration(milliseconds(1500)) == "1500ms");
}

TEST_CASE("deadlines: an inner budget never outlives the outer one") {
  auto outer = Deadline::after(std::chrono::seconds(1));
  CHECK(outer.within(std::chrono::seconds(10)).when() == outer.when());
  CHECK(outer.within(std::chrono::milliseconds(10)).when() < outer.when());
  CHECK(Deadline::never().within(std::chrono::seconds(1)).is_never() == false);
  CHECK_FALSE(Deadline::never().expired());
  CHECK(Deadline::after(std::chrono::seconds(-1)).expired());
  CHECK(Deadline::after(std::chrono::seconds(-1)).remaining() == Clock::duration::zero());
}

TEST_CASE("every failure has a policy with a distinct name") {
  std::set<std::string_view> names;
  for (int f = 0; f <= static_cast<int>(Failure::shutdown); ++f) {
    const auto& p = policy_of(static_cast<Failure>(f));
    CHECK(names.insert(p.name).second);
    CHECK_FALSE(p.description.empty());
  }
  // A wrong password must never make Isthmus try the other node (that
  // would double the guesses an attacker gets); a dead node must.
  CHECK_FALSE(policy_of(Failure::auth_failed).try_next_node);
  CHECK(policy_of(Failure::node_refused).try_next_node);
  CHECK(policy_of(Failure::node_timeout).node_suspect);
  // An outage is never reported as a bad password.
  CHECK(policy_of(Failure::directory_down).answer == ClientAnswer::temporary);
  CHECK(policy_of(Failure::no_node).answer == ClientAnswer::temporary);
  CHECK(policy_of(Failure::unknown_user).answer == ClientAnswer::auth_failed);
  // The table's rows follow the enum (a row out of place would give one
  // failure another's policy).
  CHECK(name_of(Failure::bad_credentials) == "bad_credentials");
  CHECK(name_of(Failure::throttled) == "throttled");
  CHECK(name_of(Failure::login_dropped) == "login_dropped");
  CHECK(name_of(Failure::shutdown) == "shutdown");
  // Whatever a client sends can fail its own login, never a node's health.
  for (auto f : {Failure::bad_credentials, Failure::throttled, Failure::login_dropped,
                 Failure::bad_login_name, Failure::auth_failed}) {
    CHECK_FALSE(policy_of(f).node_suspect);
    CHECK_FALSE(policy_of(f).try_next_node);
  }
}

TEST_CASE("session ids are short and distinct") {
  std::set<std::string> ids;
  for (int i = 0; i < 1000; ++i) {
    auto id = new_session_id();
    CHECK(id.size() == 12);
    ids.insert(id);
  }
  CHECK(ids.size() == 1000);
}

namespace {

boost::asio::awaitable<boost::system::error_code> wait_on_timer(Deadline deadline) {
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor,
                                  std::chrono::hours(1));
  auto wait = [&timer](auto token) { return timer.async_wait(token); };
  auto [ec] = co_await until(deadline, wait);
  co_return ec;
}

}  // namespace

TEST_CASE("deadlines: waits abandoned with their io_context, destroyed on another thread") {
  // A directory loop stops with lookups pending; its io_context (and the
  // frames holding deadline guards) is destroyed by another thread.
  auto io = std::make_unique<boost::asio::io_context>();
  boost::asio::co_spawn(*io, wait_on_timer(Deadline::after(std::chrono::hours(1))),
                        boost::asio::detached);
  std::thread loop([&io] { io->run_for(std::chrono::milliseconds(30)); });
  loop.join();
  io.reset();
  // Deadlines still fire for the next io_context on this thread.
  boost::asio::io_context next;
  boost::system::error_code result;
  auto store = [&result](std::exception_ptr, boost::system::error_code ec) { result = ec; };
  boost::asio::co_spawn(next, wait_on_timer(Deadline::after(std::chrono::milliseconds(60))), store);
  next.run();
  CHECK(result == boost::asio::error::timed_out);
}

#include "common/sasl.hpp"

TEST_CASE("SASL OAUTHBEARER and XOAUTH2 messages: parsed strictly, built back") {
  using namespace std::string_literals;
  auto ob = isthmus::parse_oauthbearer("n,a=alice@example.org,\x01host=imap.example.org\x01port=143\x01"
                                       "auth=Bearer vF9dft4qmT\x01\x01"s);
  REQUIRE(ob);
  CHECK(ob->user == "alice@example.org");
  CHECK(ob->token == "vF9dft4qmT");
  // =2C and =3D in the authzid; a "y" flag; a padded token.
  ob = isthmus::parse_oauthbearer("y,a=a=2Cb=3Dc@x,\x01" "auth=bearer ab+/cd==\x01\x01"s);
  REQUIRE(ob);
  CHECK(ob->user == "a,b=c@x");
  CHECK(ob->token == "ab+/cd==");
  for (std::string bad : {"p=tls-unique,a=u,\x01" "auth=Bearer t\x01\x01"s,  // channel binding
                          "n,,\x01" "auth=Bearer t\x01\x01"s,                 // no user
                          "n,a=u,\x01" "auth=Bearer t\x01"s,                  // no final ^A^A
                          "n,a=u,\x01" "auth=Bearer t\x01\x01x"s,             // bytes after the end
                          "n,a=u,\x01" "auth=Basic dXNlcg==\x01\x01"s,        // not a bearer token
                          "n,a=u,\x01" "auth=Bearer t t\x01\x01"s,            // a space in it
                          "n,a=u=4A,\x01" "auth=Bearer t\x01\x01"s,           // a bad escape
                          "n,a=u,\x01" "auth=Bearer t\x01" "auth=Bearer u\x01\x01"s,
                          "n,a=u,\x01\x01"s})                               // no token
    CHECK_FALSE(isthmus::parse_oauthbearer(bad));
  auto x = isthmus::parse_xoauth2("user=bob@example.org\x01" "auth=Bearer ya29.abc\x01\x01"s);
  REQUIRE(x);
  CHECK(x->user == "bob@example.org");
  CHECK(x->token == "ya29.abc");
  CHECK_FALSE(isthmus::parse_xoauth2("auth=Bearer ya29\x01\x01"s));
  CHECK_FALSE(isthmus::parse_xoauth2("user=\x01" "auth=Bearer ya29\x01\x01"s));
  // Round trips.
  auto back = isthmus::parse_oauthbearer(isthmus::oauthbearer_message("a,b=c@x", "tok-1"));
  REQUIRE(back);
  CHECK(back->user == "a,b=c@x");
  CHECK(back->token == "tok-1");
  auto back2 = isthmus::parse_xoauth2(isthmus::xoauth2_message("u@x", "tok_2"));
  REQUIRE(back2);
  CHECK(back2->token == "tok_2");
  CHECK(isthmus::sasl_mechanism_from("xoauth2") == isthmus::SaslMechanism::xoauth2);
  CHECK_FALSE(isthmus::sasl_mechanism_from("GSSAPI"));
}
