// isthmus-directory-bench: lookups per second through Isthmus' LDAP or SQL
// directory, and the cost of a cache hit, each next to a reference measured
// in the same run on the same machine:
//
//   uncached   Isthmus' directory (its thread, its pool, `concurrency`
//              lookups in flight from one worker) vs the bare client
//              library asking the same server the same question
//              synchronously on one connection (libldap
//              ldap_search_ext_s / Connector/C mysql_stmt_execute).
//   cache hit  CachingDirectory::lookup() on fresh entries, from a
//              coroutine on a worker, vs the floor any cache pays: a
//              mutex, an unordered_map probe and a copy of the entry.
//
// Driven by bench/directory_bench.py, which starts slapd / MariaDB from the
// test lab and writes the config. Prints one JSON object.

#include "config/config_loader.hpp"
#include "director/caching_directory.hpp"
#include "director/ldap_directory.hpp"
#include "director/sql_directory.hpp"
#include "ldap/filter.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <ldap.h>
#include <mysql.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <mutex>
#include <unordered_map>

using namespace isthmus;
namespace asio = boost::asio;
using BenchClock = std::chrono::steady_clock;

namespace {

double seconds_since(BenchClock::time_point start) {
  return std::chrono::duration<double>(BenchClock::now() - start).count();
}

std::shared_ptr<director::Directory> make_inner(const config::Config& config) {
  if (config.directory.type == "ldap") return director::make_ldap_directory(config.directory.ldap);
  if (config.directory.type == "sql") return director::make_sql_directory(config.directory.sql);
  throw std::runtime_error("the bench needs an ldap or sql directory");
}

struct Rate {
  double per_second = 0;
  std::uint64_t done = 0, failed = 0;
};

// `concurrency` lookup loops on one io_context (one worker), for `seconds`.
Rate run_lookups(director::Directory& directory, const std::vector<std::string>& users,
                 unsigned concurrency, double seconds) {
  asio::io_context io;
  std::uint64_t done = 0, failed = 0;
  auto until = BenchClock::now() + std::chrono::duration_cast<BenchClock::duration>(
                                       std::chrono::duration<double>(seconds));
  auto loop = [&](unsigned first) -> asio::awaitable<void> {
    for (std::size_t i = first; BenchClock::now() < until; i += concurrency) {
      auto result = co_await directory.lookup(users[i % users.size()]);
      if (result.status == director::LookupStatus::found) ++done;
      else ++failed;
    }
  };
  auto start = BenchClock::now();
  for (unsigned c = 0; c < concurrency; ++c) asio::co_spawn(io, loop(c), asio::detached);
  io.run();
  return {static_cast<double>(done) / seconds_since(start), done, failed};
}

// The reference: libldap's synchronous search on one connection.
Rate reference_ldap(const config::LdapDirectory& s, const std::vector<std::string>& users,
                    double seconds) {
  LDAP* ld = nullptr;
  if (ldap_initialize(&ld, s.uris.front().c_str()) != LDAP_SUCCESS)
    throw std::runtime_error("ldap_initialize");
  int version = LDAP_VERSION3;
  ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &version);
  berval cred{static_cast<ber_len_t>(s.bind_password.size()),
              const_cast<char*>(s.bind_password.data())};
  if (ldap_sasl_bind_s(ld, s.bind_dn.c_str(), LDAP_SASL_SIMPLE, &cred, nullptr, nullptr,
                       nullptr) != LDAP_SUCCESS)
    throw std::runtime_error("reference bind failed");
  auto pieces = director::parse_template(s.filter);
  std::vector<std::string> attr_names = {s.island_attribute, s.state_attribute,
                                         s.node_login_attribute};
  std::vector<char*> attrs;
  for (auto& a : attr_names) attrs.push_back(a.data());
  attrs.push_back(nullptr);
  std::uint64_t done = 0, failed = 0;
  auto start = BenchClock::now();
  for (std::size_t i = 0; seconds_since(start) < seconds; ++i) {
    auto parts = director::split_login(users[i % users.size()]);
    std::string filter;
    for (const auto& p : pieces)
      filter += p.text + ldap::escape_filter_value(director::value_of(parts, p.field));
    LDAPMessage* result = nullptr;
    int rc = ldap_search_ext_s(ld, s.base.c_str(), LDAP_SCOPE_SUBTREE, filter.c_str(),
                               attrs.data(), 0, nullptr, nullptr, nullptr, 0, &result);
    if (rc == LDAP_SUCCESS && ldap_count_entries(ld, result) == 1) ++done;
    else ++failed;
    if (result) ldap_msgfree(result);
  }
  double elapsed = seconds_since(start);
  ldap_unbind_ext_s(ld, nullptr, nullptr);
  return {static_cast<double>(done) / elapsed, done, failed};
}

// The reference: Connector/C's blocking prepared statement on one connection.
Rate reference_sql(const config::SqlDirectory& s, const std::vector<std::string>& users,
                   double seconds) {
  MYSQL* db = mysql_init(nullptr);
  mysql_options(db, MYSQL_SET_CHARSET_NAME, "utf8mb4");
  auto server = s.servers.front();
  auto colon = server.rfind(':');
  std::string host = server.substr(0, colon);
  unsigned port = static_cast<unsigned>(std::stoul(server.substr(colon + 1)));
  if (!mysql_real_connect(db, host.c_str(), s.user.c_str(), s.password.c_str(),
                          s.database.c_str(), port, nullptr, 0))
    throw std::runtime_error(std::string("reference connect: ") + mysql_error(db));
  auto pieces = director::parse_template(s.query);
  std::string text;
  for (const auto& p : pieces) text += p.text + (p.field == director::TemplatePiece::Field::none ? "" : "?");
  MYSQL_STMT* stmt = mysql_stmt_init(db);
  if (mysql_stmt_prepare(stmt, text.c_str(), text.size()))
    throw std::runtime_error(std::string("reference prepare: ") + mysql_stmt_error(stmt));
  std::uint64_t done = 0, failed = 0;
  auto start = BenchClock::now();
  for (std::size_t i = 0; seconds_since(start) < seconds; ++i) {
    auto parts = director::split_login(users[i % users.size()]);
    std::vector<std::string> values;
    for (const auto& p : pieces)
      if (p.field != director::TemplatePiece::Field::none)
        values.push_back(director::value_of(parts, p.field));
    std::vector<MYSQL_BIND> binds(values.size());
    std::vector<unsigned long> lengths(values.size());
    for (std::size_t v = 0; v < values.size(); ++v) {
      binds[v] = MYSQL_BIND{};
      binds[v].buffer_type = MYSQL_TYPE_STRING;
      binds[v].buffer = values[v].data();
      lengths[v] = values[v].size();
      binds[v].length = &lengths[v];
    }
    mysql_stmt_bind_param(stmt, binds.data());
    if (mysql_stmt_execute(stmt) == 0 && mysql_stmt_store_result(stmt) == 0) {
      if (mysql_stmt_num_rows(stmt) == 1) ++done;
      else ++failed;
      mysql_stmt_free_result(stmt);
    } else {
      ++failed;
    }
  }
  double elapsed = seconds_since(start);
  mysql_stmt_close(stmt);
  mysql_close(db);
  return {static_cast<double>(done) / elapsed, done, failed};
}

// Cache hits from a coroutine: `count` lookups of warm entries.
double cache_hit_ns(director::CachingDirectory& cache, const std::vector<std::string>& users,
                    std::uint64_t count) {
  asio::io_context io;
  double ns = 0;
  auto loop = [&]() -> asio::awaitable<void> {
    for (const auto& u : users) co_await cache.lookup(u);  // warm
    auto start = BenchClock::now();
    for (std::uint64_t i = 0; i < count; ++i) co_await cache.lookup(users[i % users.size()]);
    ns = seconds_since(start) * 1e9 / static_cast<double>(count);
  };
  asio::co_spawn(io, loop(), asio::detached);
  io.run();
  return ns;
}

// The floor: a mutex, a hash probe, a copy.
double map_probe_ns(const std::vector<std::string>& users, std::uint64_t count) {
  std::mutex mutex;
  std::unordered_map<std::string, director::LookupResult> map;
  for (const auto& u : users) {
    director::LookupResult r;
    r.status = director::LookupStatus::found;
    r.entry.island = "a";
    r.entry.node_login = u;
    map[u] = r;
  }
  std::size_t sink = 0;
  auto start = BenchClock::now();
  for (std::uint64_t i = 0; i < count; ++i) {
    std::lock_guard lock(mutex);
    auto copy = map.find(users[i % users.size()])->second;
    sink += copy.entry.island.size();
  }
  double ns = seconds_since(start) * 1e9 / static_cast<double>(count);
  if (sink == 0) std::cerr << "";
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"isthmus-directory-bench: directory lookups and cache hits vs references"};
  std::string config_file, users_file;
  unsigned concurrency = 32;
  double seconds = 3;
  std::uint64_t hits = 2000000;
  app.add_option("--config", config_file, "an isthmus config with an ldap or sql directory")
      ->required();
  app.add_option("--users", users_file, "login names that exist, one per line")->required();
  app.add_option("--concurrency", concurrency, "lookups in flight");
  app.add_option("--seconds", seconds, "per uncached measurement");
  app.add_option("--hits", hits, "cache hits to time");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  auto config = config::load_config(config_file);
  std::vector<std::string> users;
  std::ifstream in(users_file);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) users.push_back(line);
  if (users.empty()) throw std::runtime_error("no users");

  auto inner = make_inner(config);
  nlohmann::json out;
  out["directory"] = config.directory.type;
  out["concurrency"] = concurrency;
  run_lookups(*inner, users, concurrency, 0.5);  // connect the pool
  Rate isthmus_rate = run_lookups(*inner, users, concurrency, seconds);
  Rate reference = config.directory.type == "ldap"
                       ? reference_ldap(config.directory.ldap, users, seconds)
                       : reference_sql(config.directory.sql, users, seconds);
  out["uncached"] = {{"isthmus_lookups_per_s", isthmus_rate.per_second},
                     {"isthmus_failed", isthmus_rate.failed},
                     {"reference_lookups_per_s", reference.per_second},
                     {"reference_failed", reference.failed},
                     {"ratio", isthmus_rate.per_second / reference.per_second}};
  auto settings = config.directory.cache;
  settings.positive_ttl = std::chrono::hours(1);
  auto cache = director::CachingDirectory::create(inner, settings);
  double hit = cache_hit_ns(*cache, users, hits);
  double floor = map_probe_ns(users, hits);
  out["cache_hit"] = {{"isthmus_ns", hit}, {"reference_ns", floor}, {"ratio", hit / floor},
                      {"isthmus_hits_per_s", 1e9 / hit}};
  auto stats = cache->stats();
  out["cache_stats"] = {{"hits", stats.hits}, {"misses", stats.misses}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}
