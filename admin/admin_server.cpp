#include "admin/admin_server.hpp"

#include "admin/admin_request.hpp"
#include "admin/metrics_text.hpp"
#include "common/log.hpp"
#include "common/net.hpp"
#include "director/caching_directory.hpp"
#include "director/login_name.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <future>
#include <list>
#include <thread>

#include <pthread.h>
#include <sys/stat.h>

namespace isthmus::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using json = nlohmann::json;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

namespace {

constexpr std::size_t kMaxBody = 64 * 1024;
constexpr auto kReadTimeout = std::chrono::seconds(30);   // a request, from its first byte
constexpr auto kHeaderTimeout = std::chrono::seconds(10);  // a request's header
constexpr auto kActionWait = std::chrono::seconds(10);    // promote
constexpr int kMaxConnections = 32;                       // open at once; more are closed

Response reply(const Request& request, http::status status, const json& body) {
  Response response{status, request.version()};
  response.set(http::field::content_type, "application/json");
  response.set(http::field::cache_control, "no-store");
  response.keep_alive(request.keep_alive());
  // Names from the network may hold any bytes: invalid UTF-8 is replaced,
  // never a reason to fail the answer.
  response.body() = body.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  response.prepare_payload();
  return response;
}

Response error(const Request& request, http::status status, std::string text) {
  return reply(request, status, json{{"error", std::move(text)}});
}

std::string_view phase_name(proxy::Phase phase) {
  switch (phase) {
    case proxy::Phase::preauth: return "preauth";
    case proxy::Phase::login: return "login";
    case proxy::Phase::relay: return "relay";
  }
  return "?";
}

std::string iso_time(std::chrono::system_clock::time_point t) {
  auto seconds = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

json session_json(const proxy::SessionInfo& s) {
  const auto now = std::chrono::system_clock::now();
  const auto since =
      now - std::chrono::duration_cast<std::chrono::system_clock::duration>(s.age);
  return json{{"id", s.id},
              {"protocol", config::name_of(s.protocol)},
              {"client", s.client},
              {"user", s.user},
              {"island", s.island},
              {"node", s.node},
              {"phase", phase_name(s.phase)},
              {"since", iso_time(since)},
              {"seconds", std::chrono::duration<double>(s.age).count()}};
}

json sessions_json(const std::vector<proxy::SessionInfo>& sessions) {
  json list = json::array();
  for (const auto& s : sessions) list.push_back(session_json(s));
  return list;
}

// "up" when every protocol the node serves is up, "down" when none is,
// "degraded" in between (one daemon of a node that runs one per protocol
// died: it still takes the others' sessions, but holds no active role).
std::string_view node_state(const backends::Node& node) {
  std::size_t down = 0;
  for (const auto& [protocol, port] : node.ports) {
    (void)port;
    down += node.state->down(protocol) ? 1 : 0;
  }
  if (down == 0) return "up";
  return down == node.ports.size() ? "down" : "degraded";
}

json protocol_states(const backends::Node& node) {
  json out = json::object();
  for (const auto& [protocol, port] : node.ports) {
    (void)port;
    out[std::string(config::name_of(protocol))] = node.state->down(protocol) ? "down" : "up";
  }
  return out;
}

bool same_token(std::string_view given, std::string_view expected) {
  return given.size() == expected.size() &&
         CRYPTO_memcmp(given.data(), expected.data(), given.size()) == 0;
}

}  // namespace

struct AdminServer::Impl {
  AdminContext context;
  config::Admin settings;
  asio::io_context io{1};
  std::optional<asio::local::stream_protocol::acceptor> unix_acceptor;
  std::optional<asio::ip::tcp::acceptor> tcp_acceptor;
  std::thread thread;
  const Clock::time_point started = Clock::now();
  bool stopped = false;
  // Admin thread only:
  int connections = 0;
  std::list<std::function<void()>> closers;  // one per open connection
  Clock::time_point last_refusal_logged{};
  Clock::time_point last_limit_logged{};
  std::future<void> finished;  // ready when the admin thread's loop has returned

  // --- serving

  template <typename Stream>
  asio::awaitable<void> serve(Stream stream, bool needs_token, std::string peer) {
    // stop() closes it (admin thread); unlisted when the connection ends.
    auto closer = closers.insert(closers.end(), [&stream] {
      beast::error_code ignored;
      beast::get_lowest_layer(stream).socket().close(ignored);
    });
    struct Unlist {
      std::list<std::function<void()>>& list;
      std::list<std::function<void()>>::iterator it;
      ~Unlist() { list.erase(it); }
    } unlist{closers, closer};
    beast::flat_buffer buffer;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(kMaxBody);
      parser.header_limit(16 * 1024);
      // The header first, within a short time: the token is checked before
      // a body is read, so a client without one costs little.
      stream.expires_after(kHeaderTimeout);
      auto [ec, n] = co_await http::async_read_header(stream, buffer, parser, use_tuple);
      (void)n;
      bool unauthorized = false;
      if (!ec && needs_token && !authorized(parser.get())) {
        unauthorized = true;
      } else if (!ec) {
        stream.expires_after(kReadTimeout);
        auto [body_ec, body_n] = co_await http::async_read(stream, buffer, parser, use_tuple);
        (void)body_n;
        ec = body_ec;
      }
      if (ec) {
        if (ec != http::error::end_of_stream && ec != asio::error::eof &&
            ec != beast::error::timeout && ec != asio::error::operation_aborted) {
          spdlog::info("admin: {}: bad request: {}", peer, ec.message());
          Request dummy;
          dummy.version(11);
          dummy.keep_alive(false);
          Response bad = error(dummy, http::status::bad_request, "bad request: " + ec.message());
          stream.expires_after(kReadTimeout);
          co_await http::async_write(stream, bad, use_tuple);
        }
        break;
      }
      Request request = unauthorized ? Request(parser.get().base()) : parser.release();
      Response response;
      if (unauthorized) {
        // Said once per second at most: a scan must not flood the log.
        if (Clock::now() - last_refusal_logged > std::chrono::seconds(1)) {
          last_refusal_logged = Clock::now();
          spdlog::warn("admin: {}: {} {}: missing or wrong bearer token", peer,
                       std::string(request.method_string()), sanitize(request.target(), 200));
        }
        request.keep_alive(false);
        response = error(request, http::status::unauthorized, "a bearer token is required");
        response.set(http::field::www_authenticate, "Bearer");
      } else {
        response = co_await handle(request, peer);
      }
      stream.expires_after(kReadTimeout);
      auto [write_ec, written] = co_await http::async_write(stream, response, use_tuple);
      (void)written;
      if (write_ec || !response.keep_alive()) break;
    }
    beast::error_code ignored;
    stream.socket().shutdown(asio::socket_base::shutdown_both, ignored);
  }

  template <typename Message>
  bool authorized(const Message& request) const {
    auto header = request[http::field::authorization];
    constexpr std::string_view kBearer = "Bearer ";
    if (header.size() <= kBearer.size() || !header.starts_with(kBearer)) return false;
    return same_token(header.substr(kBearer.size()), settings.token);
  }

  // Every action is logged: who asked, what, and what came of it.
  void log_action(const std::string& peer, const Request& request, std::string_view outcome) {
    spdlog::info("admin: {}: {} {}: {}", peer, std::string(request.method_string()),
                 sanitize(request.target(), 200), outcome);
  }

  asio::awaitable<Response> handle(const Request& request, const std::string& peer) {
    const auto method = request.method();
    const AdminRequest routed = route_admin_request(
        method == http::verb::get, method == http::verb::post, request.target(), request.body());
    const auto& parts = routed.parts;
    const auto& query = routed.query;
    auto text = [&routed](const char* key) { return routed.text(key); };
    auto runtime = context.holder->current();

    switch (routed.action) {
      case AdminAction::malformed_path:
        co_return error(request, http::status::bad_request, "malformed path");
      case AdminAction::not_v1:
        co_return error(request, http::status::not_found, "no such resource (try /v1/status)");
      case AdminAction::bad_body:
        co_return error(request, http::status::bad_request, "the body must be a JSON object");
      case AdminAction::metrics: {
        Response response{http::status::ok, request.version()};
        response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
        response.keep_alive(request.keep_alive());
        response.body() = render_metrics(*runtime, context.version);
        response.prepare_payload();
        co_return response;
      }
      default:
        break;
    }
    const AdminAction action = routed.action;
    if (action == AdminAction::status) co_return status(request, *runtime);
    if (action == AdminAction::nodes) co_return nodes(request, *runtime);
    if (action == AdminAction::islands) co_return islands(request, *runtime);
    if (action == AdminAction::sessions) {
      proxy::SessionFilter filter{query_value(query, "user"), query_value(query, "node"),
                                  query_value(query, "island")};
      co_return reply(request, http::status::ok,
                      json{{"sessions", sessions_json(context.server->sessions(filter))}});
    }
    if (action == AdminAction::user)
      co_return co_await user(request, *runtime, parts[2]);
    if (action == AdminAction::account)
      co_return co_await account(request, *runtime, parts[2], routed.body, peer);
    if (action == AdminAction::kick) {
      proxy::SessionFilter filter{text("user"), text("node"), text("island")};
      if (filter.user.empty() && filter.node.empty() && filter.island.empty())
        co_return error(request, http::status::bad_request,
                        "say whose sessions: {\"user\": ...}, {\"node\": ...} or "
                        "{\"island\": ...}");
      if (!filter.user.empty()) {
        if (auto normal = director::normalise_login(filter.user, runtime->config->login_names))
          filter.user = *normal;
      }
      std::string why = "kicked by an operator";
      auto kicked = context.server->kick(filter, why);
      log_action(peer, request, fmt::format("{} sessions closed ({})", kicked,
                                            sanitize(request.body(), 200)));
      co_return reply(request, http::status::ok, json{{"kicked", kicked}});
    }
    if (action == AdminAction::drain || action == AdminAction::undrain) {
      auto state = runtime->topology->state_of(parts[2]);
      if (!state)
        co_return error(request, http::status::not_found,
                        fmt::format("no node \"{}\"", sanitize(parts[2], 100)));
      const bool drain = action == AdminAction::drain;
      state->set_draining(drain);
      log_action(peer, request,
                 drain ? fmt::format("node {} draining: no new sessions; its open sessions ({}) "
                                     "stay",
                                     parts[2], state->sessions())
                       : fmt::format("node {} no longer draining (unless the config drains it)",
                                     parts[2]));
      co_return reply(request, http::status::ok, json{{"node", parts[2]}, {"draining", drain}});
    }
    if (action == AdminAction::promote)
      co_return promote(request, *runtime, parts[2], text("node"), peer);
    if (action == AdminAction::reload) {
      std::uint64_t generation = 0;
      std::string problems = context.reload(generation);
      log_action(peer, request,
                 problems.empty() ? fmt::format("config generation {}", generation)
                                  : "refused: " + problems);
      if (!problems.empty()) co_return error(request, http::status::bad_request, problems);
      co_return reply(request, http::status::ok, json{{"config_generation", generation}});
    }
    if (action == AdminAction::cache_invalidate) {
      auto cache = std::dynamic_pointer_cast<director::CachingDirectory>(runtime->directory);
      if (!cache)
        co_return error(request, http::status::conflict, "this directory has no cache");
      std::string user = text("user");
      if (user.empty()) {
        cache->clear();
      } else {
        auto normal = director::normalise_login(user, runtime->config->login_names);
        cache->invalidate(normal ? *normal : user);
      }
      log_action(peer, request,
                 user.empty() ? "the whole cache emptied"
                              : "cached entry of " + sanitize(user, 100) + " dropped");
      co_return reply(request, http::status::ok, json{{"invalidated", true}});
    }
    if (action == AdminAction::moves || action == AdminAction::move_start ||
        action == AdminAction::move || action == AdminAction::move_abort ||
        action == AdminAction::move_resume)
      co_return co_await moves(request, *runtime, routed, peer);
    co_return error(request, http::status::not_found,
                    fmt::format("no such resource: {} {}", std::string(request.method_string()),
                                sanitize(request.target(), 200)));
  }

  static bool has_island(const proxy::Runtime& runtime, const std::string& name) {
    for (const auto& island : runtime.topology->islands())
      if (island.name == name) return true;
    return false;
  }

  // The move jobs (docs/move.md, "Moves as jobs of the daemon"). Every
  // start, abort and resume is logged; a refused start too.
  asio::awaitable<Response> moves(const Request& request, const proxy::Runtime& runtime,
                                  const AdminRequest& routed, const std::string& peer) {
    if (!context.moves)
      co_return error(request, http::status::service_unavailable,
                      "moves are not configured on this instance (\"moves\" in its config, "
                      "docs/move.md)");
    auto answer_of = [&](const moves::MoveAnswer& answer, bool log) {
      if (log)
        log_action(peer, request,
                   answer.status < 300
                       ? fmt::format("{} {}", answer.status,
                                     sanitize(answer.body.value("id", std::string()), 80))
                       : fmt::format("refused ({}): {}", answer.status,
                                     sanitize(answer.body.value("error", std::string()), 300)));
      return reply(request, static_cast<http::status>(answer.status), answer.body);
    };
    const auto& parts = routed.parts;
    switch (routed.action) {
      case AdminAction::moves:
        co_return answer_of(co_await context.moves->list(), false);
      case AdminAction::move:
        co_return answer_of(co_await context.moves->get(parts[2]), false);
      case AdminAction::move_abort:
        co_return answer_of(co_await context.moves->abort(parts[2]), true);
      case AdminAction::move_resume:
        co_return answer_of(co_await context.moves->resume(parts[2]), true);
      default:
        break;
    }
    auto refuse = [&](const std::string& why) {
      log_action(peer, request, "refused: " + why);
      return error(request, http::status::bad_request, why);
    };
    for (const auto& [key, value] : routed.body.items()) {
      if (key != "user" && key != "to" && key != "mover")
        co_return refuse(fmt::format("unknown key \"{}\" (known: user, to, mover)",
                                     sanitize(key, 40)));
      if (!value.is_string()) co_return refuse(fmt::format("\"{}\" must be a string", key));
    }
    moves::MoveRequest move;
    auto normal = director::normalise_login(routed.text("user"), runtime.config->login_names);
    if (!normal)
      co_return refuse(fmt::format("\"{}\" is not an acceptable login name",
                                   sanitize(routed.text("user"), 100)));
    // The mover takes the name as its last argument: never one that reads
    // like an option (the job store refuses such a job too).
    if (normal->empty() || normal->front() == '-')
      co_return refuse(fmt::format("\"{}\" is not an acceptable login name",
                                   sanitize(*normal, 100)));
    move.user = *normal;
    move.to = routed.text("to");
    if (!has_island(runtime, move.to))
      co_return refuse(fmt::format("no island \"{}\" in this instance's config",
                                   sanitize(move.to, 100)));
    move.mover = routed.text("mover");
    if (!move.mover.empty() && move.mover != "imap" && move.mover != "dsync")
      co_return refuse("\"mover\" must be \"imap\" or \"dsync\"");
    auto answer = co_await context.moves->start(std::move(move));
    co_return answer_of(answer, true);
  }

  Response status(const Request& request, const proxy::Runtime& runtime) {
    json sessions = json::object();
    for (auto protocol : {config::Protocol::imap, config::Protocol::pop3, config::Protocol::lmtp,
                          config::Protocol::managesieve})
      sessions[std::string(config::name_of(protocol))] = 0;
    for (const auto& s : context.server->sessions({}))
      sessions[std::string(config::name_of(s.protocol))] =
          sessions[std::string(config::name_of(s.protocol))].get<int>() + 1;
    json body{{"instance", runtime.config->instance},
              {"version", context.version},
              {"config_generation", runtime.generation},
              {"config_file", runtime.config->path.string()},
              {"uptime_seconds", std::chrono::duration<double>(Clock::now() - started).count()},
              {"sessions", sessions},
              {"directory", runtime.directory ? std::string(runtime.directory->kind()) : "-"},
              {"directory_writes", runtime.directory && runtime.directory->takes_writes()},
              {"moves", context.moves ? context.moves->status() : json(nullptr)}};
    if (auto cache = std::dynamic_pointer_cast<director::CachingDirectory>(runtime.directory)) {
      auto stats = cache->stats();
      body["cache"] = json{{"entries", stats.entries}, {"hits", stats.hits},
                           {"misses", stats.misses}, {"stale", stats.stale},
                           {"failures", stats.failures}};
    }
    return reply(request, http::status::ok, body);
  }

  Response nodes(const Request& request, const proxy::Runtime& runtime) {
    json list = json::array();
    for (const auto& island : runtime.topology->islands()) {
      auto holder = island.role ? island.role->current() : nullptr;
      for (const auto& node : island.nodes) {
        json role = nullptr;
        if (holder) role = holder->node == node->name ? "active" : "standby";
        list.push_back(json{{"name", node->name},
                            {"island", island.name},
                            {"host", node->host},
                            {"state", node_state(*node)},
                            {"protocols", protocol_states(*node)},
                            {"draining", node->draining()},
                            {"drain_config", node->drain},
                            {"sessions", node->state->sessions()},
                            {"role", role}});
      }
    }
    return reply(request, http::status::ok, json{{"nodes", list}});
  }

  Response islands(const Request& request, const proxy::Runtime& runtime) {
    json list = json::array();
    for (const auto& island : runtime.topology->islands()) {
      json names = json::array();
      int sessions = 0;
      for (const auto& node : island.nodes) {
        names.push_back(node->name);
        sessions += node->state->sessions();
      }
      auto holder = island.role ? island.role->current() : nullptr;
      list.push_back(json{{"name", island.name},
                          {"policy", config::name_of(island.policy)},
                          {"holder", holder ? json(holder->node) : json(nullptr)},
                          {"epoch", holder ? json(holder->epoch) : json(nullptr)},
                          {"nodes", names},
                          {"sessions", sessions}});
    }
    return reply(request, http::status::ok, json{{"islands", list}});
  }

  asio::awaitable<Response> user(const Request& request, const proxy::Runtime& runtime,
                                 const std::string& raw) {
    auto normal = director::normalise_login(raw, runtime.config->login_names);
    if (!normal)
      co_return error(request, http::status::bad_request,
                      fmt::format("\"{}\" is not an acceptable login name", sanitize(raw, 100)));
    auto directory = runtime.directory;
    auto found = co_await directory->lookup(*normal);
    if (found.status == director::LookupStatus::unavailable)
      co_return error(request, http::status::service_unavailable,
                      "the directory could not answer: " + found.detail);
    if (found.status == director::LookupStatus::not_found)
      co_return error(request, http::status::not_found,
                      fmt::format("the directory does not know {}", sanitize(*normal, 100)));
    proxy::SessionFilter filter;
    filter.user = *normal;
    co_return reply(request, http::status::ok,
                    json{{"user", *normal},
                         {"found", true},
                         {"island", found.entry.island},
                         {"state", director::name_of(found.entry.state)},
                         {"node_login", found.entry.node_login.empty() ? *normal
                                                                       : found.entry.node_login},
                         {"sessions", sessions_json(context.server->sessions(filter))}});
  }

  // POST /v1/users/NAME/account: writes the user's island and/or state in
  // the directory (directory.sql.writes / directory.ldap.writes), reads
  // them back past the cache, and drops this instance's cached entry.
  // Both: the island first, read back, and only then the state, so that a
  // write that did not take the island never makes the user active where
  // they were. What `isthmusctl move` uses (docs/move.md); other
  // instances' caches are the caller's to drop (POST /v1/cache/invalidate).
  // Every answer, refusals included, is logged.
  asio::awaitable<Response> account(const Request& request, const proxy::Runtime& runtime,
                                    const std::string& raw, const json& body,
                                    const std::string& peer) {
    auto refuse = [&](http::status status, const std::string& why) {
      log_action(peer, request, "refused: " + why);
      return error(request, status, why);
    };
    auto normal = director::normalise_login(raw, runtime.config->login_names);
    if (!normal)
      co_return refuse(http::status::bad_request,
                       fmt::format("\"{}\" is not an acceptable login name", sanitize(raw, 100)));
    director::AccountChange change;
    for (const auto& [key, value] : body.items()) {
      if (key != "island" && key != "state")
        co_return refuse(http::status::bad_request,
                         fmt::format("unknown key \"{}\" (known: island, state)",
                                     sanitize(key, 40)));
      if (!value.is_string())
        co_return refuse(http::status::bad_request, fmt::format("\"{}\" must be a string", key));
    }
    if (auto it = body.find("island"); it != body.end()) {
      const auto name = it->get<std::string>();
      if (!has_island(runtime, name))
        co_return refuse(http::status::bad_request,
                         fmt::format("no island \"{}\" in this instance's config",
                                     sanitize(name, 100)));
      change.island = name;
    }
    if (auto it = body.find("state"); it != body.end()) {
      change.state = director::account_state_from(it->get<std::string>());
      if (!change.state)
        co_return refuse(http::status::bad_request,
                         "\"state\" must be active, disabled or moving");
    }
    if (!change.island && !change.state)
      co_return refuse(http::status::bad_request,
                       "say what to write: {\"island\": ...} and/or {\"state\": ...}");
    auto directory = runtime.directory;
    auto cache = std::dynamic_pointer_cast<director::CachingDirectory>(directory);
    // Past the cache: the entry as the directory holds it now.
    std::shared_ptr<director::Directory> source = cache ? cache->inner() : directory;
    auto found = co_await source->lookup(*normal);
    if (found.status == director::LookupStatus::unavailable)
      co_return refuse(http::status::service_unavailable,
                       "the directory could not answer: " + found.detail);
    if (found.status == director::LookupStatus::not_found)
      co_return refuse(http::status::not_found,
                       fmt::format("the directory does not know {}", sanitize(*normal, 100)));
    std::vector<director::AccountChange> steps;
    if (change.island && change.state) {
      steps.push_back({change.island, std::nullopt});
      steps.push_back({std::nullopt, change.state});
    } else {
      steps.push_back(change);
    }
    std::vector<std::string> done;
    for (const auto& step : steps) {
      auto written = co_await directory->write_account(*normal, found.entry, step);
      if (written.status != director::WriteStatus::written)
        co_return refuse(written.status == director::WriteStatus::unsupported
                             ? http::status::conflict
                             : http::status::bad_gateway,
                         written.detail + (done.empty() ? "" : " (after " + done.back() + ")"));
      auto now = co_await source->lookup(*normal);
      if (cache) cache->invalidate(*normal);
      const bool same = now.status == director::LookupStatus::found &&
                        (!step.island || now.entry.island == *step.island) &&
                        (!step.state || now.entry.state == *step.state);
      if (!same) {
        std::string answer =
            now.status == director::LookupStatus::found
                ? fmt::format("island {}, state {}", sanitize(now.entry.island, 100),
                              director::name_of(now.entry.state))
                : now.detail;
        co_return refuse(http::status::bad_gateway,
                         fmt::format("written ({}), but the directory now answers {} (does the "
                                     "write statement match the lookup?){}",
                                     written.detail, answer,
                                     steps.size() > 1 && !step.state
                                         ? "; the state was not written"
                                         : ""));
      }
      done.push_back(written.detail);
      found = std::move(now);
    }
    log_action(peer, request, fmt::format("{} of {}: {}", sanitize(body.dump(), 200),
                                          sanitize(*normal, 100), fmt::join(done, "; ")));
    co_return reply(request, http::status::ok,
                    json{{"user", *normal},
                         {"island", found.entry.island},
                         {"state", director::name_of(found.entry.state)},
                         {"written", fmt::format("{}", fmt::join(done, "; "))}});
  }

  Response promote(const Request& request, const proxy::Runtime& runtime,
                   const std::string& island, const std::string& node, const std::string& peer) {
    if (node.empty())
      return error(request, http::status::bad_request, "say which node: {\"node\": ...}");
    if (!runtime.health)
      return error(request, http::status::conflict, "no role store in this process");
    auto promise = std::make_shared<std::promise<std::string>>();
    auto answer = promise->get_future();
    runtime.health->promote(island, node,
                            [promise](std::string problem) { promise->set_value(problem); });
    if (answer.wait_for(kActionWait) != std::future_status::ready)
      return error(request, http::status::gateway_timeout, "the role store did not answer in time");
    std::string problem = answer.get();
    log_action(peer, request,
               problem.empty() ? fmt::format("{} holds island {}'s role", node, island)
                               : "refused: " + problem);
    if (!problem.empty()) {
      auto status = problem.starts_with("no island") || problem.find("is not a node") !=
                                                            std::string::npos
                        ? http::status::not_found
                        : http::status::conflict;
      return error(request, status, problem);
    }
    const auto* found = runtime.topology->island(island);
    auto holder = found && found->role ? found->role->current() : nullptr;
    return reply(request, http::status::ok,
                 json{{"island", island},
                      {"node", holder ? holder->node : node},
                      {"epoch", holder ? json(holder->epoch) : json(nullptr)}});
  }

  // --- accepting

  template <typename Acceptor, typename Stream>
  asio::awaitable<void> accept_loop(Acceptor& acceptor, bool needs_token) {
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(use_tuple);
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      if (ec) {
        spdlog::warn("admin: accept: {}", ec.message());
        asio::steady_timer pause(io, std::chrono::milliseconds(100));
        co_await pause.async_wait(use_tuple);
        continue;
      }
      std::string peer = format_peer(socket);
      if (connections >= kMaxConnections) {
        if (Clock::now() - last_limit_logged > std::chrono::seconds(1)) {
          last_limit_logged = Clock::now();
          spdlog::warn("admin: {}: {} connections open already; closing this one", peer,
                       connections);
        }
        boost::system::error_code ignored;
        socket.close(ignored);
        continue;
      }
      ++connections;
      Stream stream(std::move(socket));
      auto done = [this, peer](std::exception_ptr e) {
        --connections;
        if (!e) return;
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          spdlog::error("admin: {}: connection ended by an unexpected error: {}", peer, ex.what());
        }
      };
      asio::co_spawn(io, serve(std::move(stream), needs_token, peer), done);
    }
  }

  static std::string format_peer(const asio::local::stream_protocol::socket&) {
    return "unix socket";
  }
  static std::string format_peer(const asio::ip::tcp::socket& socket) {
    boost::system::error_code ec;
    auto remote = socket.remote_endpoint(ec);
    return ec ? "?" : format_endpoint(remote);
  }
};

AdminServer::AdminServer(AdminContext context, const config::Admin& settings)
    : impl_(std::make_unique<Impl>()) {
  impl_->context = std::move(context);
  impl_->settings = settings;
  auto& io = impl_->io;
  using UnixStream = beast::basic_stream<asio::local::stream_protocol>;
  if (!settings.socket.empty()) {
    const std::string path = settings.socket.string();
    struct stat st{};
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode))
        throw std::runtime_error(fmt::format("admin socket {}: exists and is not a socket", path));
      // A previous run's, unless something still answers on it.
      asio::local::stream_protocol::socket probe(io);
      boost::system::error_code probe_ec;
      probe.connect(asio::local::stream_protocol::endpoint(path), probe_ec);
      if (!probe_ec)
        throw std::runtime_error(fmt::format(
            "admin socket {}: another process is serving it (another instance?)", path));
      ::unlink(path.c_str());
    }
    try {
      impl_->unix_acceptor.emplace(io);
      asio::local::stream_protocol::endpoint endpoint(path);
      impl_->unix_acceptor->open(endpoint.protocol());
      // Created 0660 (not the umask's mode, not even for an instant).
      const mode_t old_mask = ::umask(0117);
      impl_->unix_acceptor->bind(endpoint);
      ::umask(old_mask);
      impl_->unix_acceptor->listen();
    } catch (const boost::system::system_error& e) {
      throw std::runtime_error(fmt::format("admin socket {}: {}", path, e.code().message()));
    }
    asio::co_spawn(io,
                   impl_->accept_loop<asio::local::stream_protocol::acceptor, UnixStream>(
                       *impl_->unix_acceptor, false),
                   asio::detached);
    spdlog::info("admin API on unix socket {}", path);
  }
  if (!settings.listen.empty()) {
    auto colon = settings.listen.rfind(':');
    std::string host = settings.listen.substr(0, colon);
    if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    asio::ip::tcp::endpoint endpoint(asio::ip::make_address(host),
                                     static_cast<std::uint16_t>(
                                         std::stoul(settings.listen.substr(colon + 1))));
    try {
      impl_->tcp_acceptor.emplace(io);
      impl_->tcp_acceptor->open(endpoint.protocol());
      impl_->tcp_acceptor->set_option(asio::socket_base::reuse_address(true));
      impl_->tcp_acceptor->bind(endpoint);
      impl_->tcp_acceptor->listen();
    } catch (const boost::system::system_error& e) {
      throw std::runtime_error(
          fmt::format("admin listen {}: {}", settings.listen, e.code().message()));
    }
    asio::co_spawn(io,
                   impl_->accept_loop<asio::ip::tcp::acceptor, beast::tcp_stream>(
                       *impl_->tcp_acceptor, true),
                   asio::detached);
    spdlog::info("admin API on {} (bearer token required)",
                 format_endpoint(impl_->tcp_acceptor->local_endpoint()));
  }
  auto finished = std::make_shared<std::promise<void>>();
  impl_->finished = finished->get_future();
  impl_->thread = std::thread([impl = impl_.get(), finished] {
    pthread_setname_np(pthread_self(), "isthmus-admin");
    for (;;) {
      try {
        impl->io.run();
        break;
      } catch (const std::exception& e) {
        spdlog::error("admin: unexpected error: {}", e.what());
      }
    }
    finished->set_value();
  });
}

AdminServer::~AdminServer() { stop(); }

void AdminServer::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  // Close the listeners and connections and let the loop run dry, so a
  // directory lookup still on its way back finds its io_context alive;
  // bounded: after 10 s the loop is stopped anyway.
  asio::post(impl_->io, [impl = impl_.get()] {
    boost::system::error_code ignored;
    if (impl->unix_acceptor) impl->unix_acceptor->close(ignored);
    if (impl->tcp_acceptor) impl->tcp_acceptor->close(ignored);
    for (auto& close : impl->closers) close();
  });
  if (impl_->thread.joinable()) {
    if (impl_->finished.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      spdlog::warn("admin: requests still running after 10s at shutdown; stopping them");
      impl_->io.stop();
    }
    impl_->thread.join();
  }
  if (impl_->unix_acceptor) {
    boost::system::error_code ignored;
    impl_->unix_acceptor->close(ignored);
    ::unlink(impl_->settings.socket.c_str());
  }
}

}  // namespace isthmus::admin
