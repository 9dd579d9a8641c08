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

TEST_CASE("auth guard: the failure delay doubles per address, capped, reset after quiet") {
  director::AuthGuard guard;
  auto now = Clock::now();
  auto base = std::chrono::seconds(1);
  auto max = std::chrono::seconds(5);
  CHECK(guard.failed_login("192.0.2.1", base, max, now) == std::chrono::seconds(1));
  CHECK(guard.failed_login("192.0.2.1", base, max, now) == std::chrono::seconds(2));
  CHECK(guard.failed_login("192.0.2.1", base, max, now) == std::chrono::seconds(4));
  CHECK(guard.failed_login("192.0.2.1", base, max, now) == std::chrono::seconds(5));
  CHECK(guard.failed_login("192.0.2.1", base, max, now) == std::chrono::seconds(5));
  CHECK(guard.failed_login("192.0.2.2", base, max, now) == std::chrono::seconds(1));
  auto later = now + director::AuthGuard::kQuietReset + std::chrono::seconds(1);
  CHECK(guard.failed_login("192.0.2.1", base, max, later) == std::chrono::seconds(1));
  CHECK(guard.failed_login("192.0.2.3", std::chrono::seconds(0), max, now) ==
        std::chrono::seconds(0));
}
