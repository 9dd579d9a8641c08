// The directory cache against a scripted inner directory, on real
// io_contexts (one, or two on two threads for the cross-thread cases).

#include "director/caching_directory.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <doctest/doctest.h>

#include <atomic>
#include <functional>
#include <map>
#include <thread>

using namespace isthmus;
using director::LookupResult;
using director::LookupStatus;
namespace asio = boost::asio;

namespace {

// Answers from a script; optionally takes `delay` on the caller's executor,
// so that several lookups overlap.
class ScriptedDirectory final : public director::Directory {
 public:
  std::map<std::string, std::string> islands;  // user -> island
  bool down = false;
  std::chrono::milliseconds delay{0};
  std::atomic<int> calls{0};

  asio::awaitable<LookupResult> lookup(std::string user) override {
    ++calls;
    if (delay.count() > 0) {
      asio::steady_timer timer(co_await asio::this_coro::executor, delay);
      co_await timer.async_wait(asio::use_awaitable);
    }
    LookupResult result;
    if (down) {
      result.status = LookupStatus::unavailable;
      result.detail = "scripted outage";
      co_return result;
    }
    auto it = islands.find(user);
    result.status = it == islands.end() ? LookupStatus::not_found : LookupStatus::found;
    if (it != islands.end()) result.entry.island = it->second;
    co_return result;
  }
  std::string_view kind() const override { return "scripted"; }
};

config::DirectoryCache settings(std::chrono::milliseconds positive = std::chrono::minutes(5),
                                std::chrono::milliseconds negative = std::chrono::minutes(1),
                                std::chrono::milliseconds stale = std::chrono::hours(1),
                                std::size_t max_entries = 1000) {
  config::DirectoryCache s;
  s.positive_ttl = positive;
  s.negative_ttl = negative;
  s.stale_if_error = stale;
  s.max_entries = max_entries;
  return s;
}

LookupResult lookup_once(director::Directory& directory, const std::string& user) {
  asio::io_context io;
  LookupResult out;
  auto store = [&out](std::exception_ptr e, LookupResult r) {
    if (e) std::rethrow_exception(e);
    out = std::move(r);
  };
  asio::co_spawn(io, directory.lookup(user), store);
  io.run();
  return out;
}

}  // namespace

TEST_CASE("cache: a found user is answered from memory until positive_ttl") {
  auto inner = std::make_shared<ScriptedDirectory>();
  inner->islands["alice@example.org"] = "a";
  auto cache = director::CachingDirectory::create(inner, settings(std::chrono::milliseconds(100)));
  CHECK(lookup_once(*cache, "alice@example.org").entry.island == "a");
  CHECK(lookup_once(*cache, "alice@example.org").entry.island == "a");
  CHECK(inner->calls == 1);
  CHECK(cache->stats().hits == 1);
  CHECK(cache->stats().misses == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  CHECK(lookup_once(*cache, "alice@example.org").status == LookupStatus::found);
  CHECK(inner->calls == 2);
}

TEST_CASE("cache: unknown users are remembered for negative_ttl, not positive_ttl") {
  auto inner = std::make_shared<ScriptedDirectory>();
  auto cache = director::CachingDirectory::create(
      inner, settings(std::chrono::minutes(5), std::chrono::milliseconds(80)));
  CHECK(lookup_once(*cache, "nobody@example.org").status == LookupStatus::not_found);
  CHECK(lookup_once(*cache, "nobody@example.org").status == LookupStatus::not_found);
  CHECK(inner->calls == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  inner->islands["nobody@example.org"] = "b";  // created meanwhile
  CHECK(lookup_once(*cache, "nobody@example.org").entry.island == "b");
  CHECK(inner->calls == 2);
}

TEST_CASE("cache: while the directory fails, expired entries are served within stale_if_error") {
  auto inner = std::make_shared<ScriptedDirectory>();
  inner->islands["alice@example.org"] = "a";
  auto cache = director::CachingDirectory::create(
      inner, settings(std::chrono::milliseconds(50), std::chrono::milliseconds(50),
                      std::chrono::milliseconds(400)));
  CHECK(lookup_once(*cache, "alice@example.org").status == LookupStatus::found);
  inner->down = true;
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  auto stale = lookup_once(*cache, "alice@example.org");
  CHECK(stale.status == LookupStatus::found);
  CHECK(stale.entry.island == "a");
  CHECK(stale.detail.find("expired") != std::string::npos);
  CHECK(inner->calls == 2);
  // Right after a failure, stale entries are served without asking again.
  CHECK(lookup_once(*cache, "alice@example.org").status == LookupStatus::found);
  CHECK(inner->calls == 2);
  CHECK(cache->stats().stale == 2);
  // A user never seen gets the outage, never "no such user".
  auto unseen = lookup_once(*cache, "bob@example.org");
  CHECK(unseen.status == LookupStatus::unavailable);
  CHECK(cache->stats().failures == 1);
  // Past the stale window: the outage shows.
  std::this_thread::sleep_for(std::chrono::milliseconds(450));
  CHECK(lookup_once(*cache, "alice@example.org").status == LookupStatus::unavailable);
  // The directory is back: fresh answers again.
  inner->down = false;
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(lookup_once(*cache, "alice@example.org").status == LookupStatus::found);
  CHECK(lookup_once(*cache, "bob@example.org").status == LookupStatus::not_found);
}

TEST_CASE("cache: failures are not cached") {
  auto inner = std::make_shared<ScriptedDirectory>();
  inner->islands["alice@example.org"] = "a";
  inner->down = true;
  auto cache = director::CachingDirectory::create(inner, settings());
  CHECK(lookup_once(*cache, "alice@example.org").status == LookupStatus::unavailable);
  inner->down = false;
  CHECK(lookup_once(*cache, "alice@example.org").status == LookupStatus::found);
  CHECK(inner->calls == 2);
}

TEST_CASE("cache: one lookup per user however many logins wait, on any thread") {
  auto inner = std::make_shared<ScriptedDirectory>();
  inner->islands["alice@example.org"] = "a";
  inner->delay = std::chrono::milliseconds(100);
  auto cache = director::CachingDirectory::create(inner, settings());
  asio::io_context first, second;
  std::atomic<int> answered{0};
  auto count = [&answered](std::exception_ptr e, LookupResult r) {
    if (!e && r.entry.island == "a") ++answered;
  };
  for (int i = 0; i < 20; ++i) {
    asio::co_spawn(first, cache->lookup("alice@example.org"), count);
    asio::co_spawn(second, cache->lookup("alice@example.org"), count);
  }
  std::thread other([&second] { second.run(); });
  first.run();
  other.join();
  CHECK(answered == 40);
  CHECK(inner->calls == 1);
  CHECK(cache->stats().coalesced == 39);
}

TEST_CASE("cache: bounded; the least recently used entries go first") {
  auto inner = std::make_shared<ScriptedDirectory>();
  for (int i = 0; i < 10; ++i) inner->islands["u" + std::to_string(i)] = "a";
  auto cache = director::CachingDirectory::create(
      inner, settings(std::chrono::minutes(5), std::chrono::minutes(1), std::chrono::hours(1), 4));
  for (int i = 0; i < 10; ++i) lookup_once(*cache, "u" + std::to_string(i));
  CHECK(cache->stats().entries <= 4);
  CHECK(cache->stats().evictions >= 6);
  int calls = inner->calls;
  lookup_once(*cache, "u9");  // most recent: still there
  CHECK(inner->calls == calls);
}

TEST_CASE("cache: invalidate and clear drop entries") {
  auto inner = std::make_shared<ScriptedDirectory>();
  inner->islands["alice@example.org"] = "a";
  auto cache = director::CachingDirectory::create(inner, settings());
  lookup_once(*cache, "alice@example.org");
  inner->islands["alice@example.org"] = "b";  // moved by an operator
  CHECK(lookup_once(*cache, "alice@example.org").entry.island == "a");
  cache->invalidate("alice@example.org");
  CHECK(lookup_once(*cache, "alice@example.org").entry.island == "b");
  cache->clear();
  CHECK(cache->stats().entries == 0);
  CHECK(lookup_once(*cache, "alice@example.org").entry.island == "b");
  CHECK(inner->calls == 3);
}

// -- password hashes and the authentication guard -----------------------------

#include "director/auth_guard.hpp"
#include "director/password_hash.hpp"

namespace {
// "demo", hashed once with libxcrypt (the same literals as tests/lab/directory_data.py).
constexpr const char* kSha512 =
    "$6$VaCnbyo/Q/CFYQno$ie6/lMOO.0pzvvRPEgWqAQ/1eAt4fombFgHytuD9ztRcCE7vyl5RF0gEpLKCBsGuG/"
    "7ZxCAooUYxcGkgkWVe21";
constexpr const char* kBcrypt2y = "$2y$05$6Q62wVxNNqFWquWxnioGk.rB6BkhtyDezGvd3bNGJLXdlK176li0u";
constexpr const char* kYescrypt =
    "$y$j9T$fmuDjZ.VqH4hu76gXpfoV0$Tiu/u6nJpc3DYdsdQVch8BFbHtzscX2WMSxYvcOrlk2";
}  // namespace

TEST_CASE("password hashes: crypt(3) strings with and without Dovecot {SCHEME} prefixes") {
  using director::PasswordCheck;
  using director::verify_password_hash;
  CHECK(verify_password_hash(kSha512, "demo") == PasswordCheck::accepted);
  CHECK(verify_password_hash(kSha512, "Demo") == PasswordCheck::rejected);
  CHECK(verify_password_hash(std::string("{SHA512-CRYPT}") + kSha512, "demo") ==
        PasswordCheck::accepted);
  CHECK(verify_password_hash(std::string("{BLF-CRYPT}") + kBcrypt2y, "demo") ==
        PasswordCheck::accepted);
  CHECK(verify_password_hash(std::string("{CRYPT}") + kYescrypt, "demo") ==
        PasswordCheck::accepted);
  CHECK(verify_password_hash(kYescrypt, "wrong") == PasswordCheck::rejected);
  // Empty passwords and NULs never match.
  CHECK(verify_password_hash(kSha512, "") == PasswordCheck::rejected);
  CHECK(verify_password_hash(kSha512, std::string_view("demo\0x", 6)) == PasswordCheck::rejected);
  // Nothing checkable: a configuration problem, not a wrong password.
  CHECK(verify_password_hash("{PLAIN}demo", "demo") == PasswordCheck::unsupported);
  CHECK(verify_password_hash("{SSHA}abcdefgh", "demo") == PasswordCheck::unsupported);
  CHECK(verify_password_hash("demo", "demo") == PasswordCheck::unsupported);
  CHECK(verify_password_hash("", "demo") == PasswordCheck::unsupported);
  CHECK(verify_password_hash("$6$", "demo") == PasswordCheck::unsupported);
}

TEST_CASE("password hashes: checked off the worker thread, answered on it") {
  asio::io_context io;
  director::PasswordCheck result = director::PasswordCheck::unavailable;
  std::thread::id answered_on;
  auto done = [&](std::exception_ptr e, director::PasswordCheck r) {
    if (e) std::rethrow_exception(e);
    result = r;
    answered_on = std::this_thread::get_id();
  };
  asio::co_spawn(io, director::verify_password_hash_async(kSha512, "demo"), done);
  io.run();
  CHECK(result == director::PasswordCheck::accepted);
  CHECK(answered_on == std::this_thread::get_id());
}

TEST_CASE("auth guard: verdicts remembered per (user, stored hash, password) for their TTL") {
  director::AuthGuard guard;
  auto now = Clock::now();
  using director::PasswordCheck;
  CHECK_FALSE(guard.remembered("alice", "$6$h1", "guess", now));
  guard.remember("alice", "$6$h1", "guess", PasswordCheck::rejected, std::chrono::seconds(30), now);
  CHECK(guard.remembered("alice", "$6$h1", "guess", now) == PasswordCheck::rejected);
  CHECK_FALSE(guard.remembered("alice", "$6$h1", "other", now));
  CHECK_FALSE(guard.remembered("bob", "$6$h1", "guess", now));
  CHECK_FALSE(guard.remembered("alice", "$6$h1", "guess", now + std::chrono::seconds(31)));
  // A new hash in the directory (password changed): the verdict is gone.
  CHECK_FALSE(guard.remembered("alice", "$6$h2", "guess", now));
  guard.remember("alice", "$6$h1", "x", PasswordCheck::unavailable, std::chrono::seconds(30), now);
  CHECK_FALSE(guard.remembered("alice", "$6$h1", "x", now));  // failures are not verdicts
}

namespace {
director::ThrottleSettings throttle_settings() {
  director::ThrottleSettings s;
  s.base = std::chrono::seconds(1);
  s.max_delay = std::chrono::seconds(8);
  s.half_life = std::chrono::minutes(5);
  s.max_wait = std::chrono::seconds(20);
  s.known_good_ttl = std::chrono::hours(1);
  return s;
}
}  // namespace

TEST_CASE("auth throttle: a failure delays the address's next check; parallel checks queue") {
  director::AuthGuard guard(1024);
  const auto s = throttle_settings();
  const auto now = Clock::now();
  auto keys = guard.keys("192.0.2.1", "alice@example.org", "guess");
  // Nothing known: at once.
  CHECK(guard.admit(keys, now, s).start == now);
  guard.failed(keys, now, s);
  // One failure: the next check waits `base` from the failure.
  auto a = guard.admit(keys, now, s);
  CHECK_FALSE(a.refused);
  CHECK(a.start == now + std::chrono::seconds(1));
  CHECK(a.address_wait == std::chrono::seconds(1));
  // Three failures (penalty 4 s): parallel checks start 4 s apart, and the
  // one that would wait past max_wait (20 s) is refused at once.
  guard.failed(keys, now, s);
  guard.failed(keys, now, s);
  auto other = guard.keys("192.0.2.1", "bob@example.org", "guess");  // same address, other name
  std::vector<Clock::time_point> starts;
  int refused = 0;
  for (int i = 0; i < 8; ++i) {
    auto admission = guard.admit(other, now, s);
    if (admission.refused) ++refused;
    else starts.push_back(admission.start);
  }
  REQUIRE(starts.size() >= 2);
  for (std::size_t i = 1; i < starts.size(); ++i)
    CHECK(starts[i] - starts[i - 1] == std::chrono::seconds(4));
  CHECK(starts.back() - now <= s.max_wait);
  CHECK(refused == 8 - static_cast<int>(starts.size()));
  CHECK(refused > 0);
  CHECK(guard.stats().refused == static_cast<std::uint64_t>(refused));
  // Another address is not slowed by this one's failures.
  CHECK(guard.admit(guard.keys("192.0.2.2", "carol@example.org", "x"), now, s).start == now);
  // Failures weigh less with time: ten half-lives later, no penalty.
  CHECK(guard.admit(keys, now + std::chrono::minutes(60), s).start == now + std::chrono::minutes(60));
}

TEST_CASE("auth throttle: spraying one name from many addresses slows that name only") {
  director::AuthGuard guard(1024);
  const auto s = throttle_settings();
  const auto now = Clock::now();
  for (int i = 0; i < 4; ++i)
    guard.failed(guard.keys("198.51.100." + std::to_string(i), "victim@example.org", "x"), now, s);
  // A fifth address, the same name: the user lane makes it wait (4 failures: 8 s).
  auto fresh = guard.admit(guard.keys("198.51.100.99", "victim@example.org", "y"), now, s);
  CHECK(fresh.user_wait == std::chrono::seconds(8));
  CHECK(fresh.address_wait == Clock::duration::zero());
  // Someone else's name from that address: not delayed.
  CHECK(guard.admit(guard.keys("198.51.100.99", "other@example.org", "y"), now, s).start == now);
}

TEST_CASE("auth throttle: known-good credentials and familiar addresses are not held back") {
  director::AuthGuard guard(1024);
  const auto s = throttle_settings();
  const auto now = Clock::now();
  // The user logged in from home yesterday...
  auto home = guard.keys("203.0.113.7", "alice@example.org", "right");
  guard.succeeded(home, now, s);
  // ...then a guesser behind the same NAT fails many times, and someone
  // sprays her name from elsewhere.
  for (int i = 0; i < 6; ++i) {
    guard.failed(guard.keys("203.0.113.7", "bob@example.org", "x"), now, s);
    guard.failed(guard.keys("192.0.2.50", "alice@example.org", "x"), now, s);
  }
  // Her own credentials, from home: at once (known good).
  auto again = guard.admit(home, now, s);
  CHECK(again.known_good);
  CHECK(again.start == now);
  // A new password from a familiar address: the user lane is skipped, the
  // address lane (the guesser's failures there) still applies.
  auto changed = guard.admit(guard.keys("203.0.113.7", "alice@example.org", "new"), now, s);
  CHECK(changed.familiar);
  CHECK(changed.user_wait == Clock::duration::zero());
  CHECK(changed.address_wait > Clock::duration::zero());
  // Known-good expires.
  CHECK_FALSE(guard.admit(home, now + std::chrono::hours(2), s).known_good);
}

TEST_CASE("auth throttle: tables are fixed; a flood of fresh keys does not evict a penalty") {
  director::AuthGuard guard(64);  // 16 sets of 4
  const auto s = throttle_settings();
  const auto now = Clock::now();
  auto guesser = guard.keys("192.0.2.66", "x@example.org", "x");
  for (int i = 0; i < 10; ++i) guard.failed(guesser, now, s);
  for (int i = 0; i < 5000; ++i)
    guard.failed(guard.keys("10.0." + std::to_string(i / 250) + "." + std::to_string(i % 250),
                            "u" + std::to_string(i), "x"),
                 now, s);
  CHECK(guard.stats().address_entries <= 64);
  CHECK(guard.stats().user_entries <= 64);
  CHECK(guard.admit(guesser, now, s).address_wait == s.max_delay);
}

TEST_CASE("auth throttle: IPv6 clients are counted per /64, mapped IPv4 as IPv4") {
  using director::AuthGuard;
  namespace ip = boost::asio::ip;
  CHECK(AuthGuard::address_key(ip::make_address("2001:db8:1:2:aaaa::1"), 64) ==
        AuthGuard::address_key(ip::make_address("2001:db8:1:2:bbbb::9"), 64));
  CHECK(AuthGuard::address_key(ip::make_address("2001:db8:1:2::1"), 64) !=
        AuthGuard::address_key(ip::make_address("2001:db8:1:3::1"), 64));
  CHECK(AuthGuard::address_key(ip::make_address("::ffff:192.0.2.1"), 64) == "192.0.2.1");
  CHECK(AuthGuard::address_key(ip::make_address("192.0.2.1"), 64) == "192.0.2.1");
}
