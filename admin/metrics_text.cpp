#include "admin/metrics_text.hpp"

#include "director/caching_directory.hpp"

#include <fmt/format.h>

namespace isthmus::admin {

std::string render_metrics(const proxy::Runtime& runtime, std::string_view version) {
  std::string out;
  using proxy::prometheus_escape;
  proxy::write_family_header(out, "isthmus_build_info", "gauge", "The running version (always 1).");
  out += fmt::format("isthmus_build_info{{version=\"{}\",instance=\"{}\"}} 1\n",
                     prometheus_escape(version), prometheus_escape(runtime.config->instance));
  proxy::write_family_header(out, "isthmus_config_generation", "gauge",
                             "1 for the first config, +1 per reload.");
  out += fmt::format("isthmus_config_generation {}\n", runtime.generation);
  if (runtime.metrics) runtime.metrics->render(out);

  const auto& islands = runtime.topology->islands();
  auto each_node = [&](auto&& sample) {
    for (const auto& island : islands)
      for (const auto& node : island.nodes)
        out += fmt::format("{}{{island=\"{}\",node=\"{}\"}} {}\n", sample.first,
                           prometheus_escape(island.name), prometheus_escape(node->name),
                           sample.second(island, *node));
  };
  using Sample = std::function<long(const backends::Island&, const backends::Node&)>;
  proxy::write_family_header(out, "isthmus_node_sessions", "gauge",
                             "Sessions on each node now (IMAP, POP3).");
  each_node(std::pair<std::string, Sample>{
      "isthmus_node_sessions",
      [](const backends::Island&, const backends::Node& n) { return long{n.state->sessions()}; }});
  proxy::write_family_header(out, "isthmus_node_up", "gauge",
         "Per protocol the node serves: 1 unless the health checks marked it down (0).");
  for (const auto& island : islands)
    for (const auto& node : island.nodes)
      for (const auto& [protocol, port] : node->ports) {
        (void)port;
        out += fmt::format("isthmus_node_up{{island=\"{}\",node=\"{}\",protocol=\"{}\"}} {}\n",
                           prometheus_escape(island.name), prometheus_escape(node->name),
                           config::name_of(protocol), node->state->down(protocol) ? 0 : 1);
      }
  proxy::write_family_header(out, "isthmus_node_draining", "gauge",
                             "1 while the node is drained (config or API).");
  each_node(std::pair<std::string, Sample>{
      "isthmus_node_draining",
      [](const backends::Island&, const backends::Node& n) { return n.draining() ? 1L : 0L; }});
  proxy::write_family_header(out, "isthmus_node_active_role", "gauge",
         "Active-passive islands: 1 for the node holding the active role, else 0.");
  for (const auto& island : islands) {
    if (!island.role) continue;
    auto holder = island.role->current();
    for (const auto& node : island.nodes)
      out += fmt::format("isthmus_node_active_role{{island=\"{}\",node=\"{}\"}} {}\n",
                         prometheus_escape(island.name), prometheus_escape(node->name),
                         holder->node == node->name ? 1 : 0);
  }
  proxy::write_family_header(out, "isthmus_island_role_epoch", "gauge",
         "Active-passive islands: the epoch of the active role (+1 per move).");
  for (const auto& island : islands)
    if (island.role)
      out += fmt::format("isthmus_island_role_epoch{{island=\"{}\"}} {}\n",
                         prometheus_escape(island.name), island.role->current()->epoch);

  if (runtime.auth_guard) {
    const auto t = runtime.auth_guard->stats();
    proxy::write_family_header(out, "isthmus_auth_throttle_delayed_total", "counter",
           "Login checks held back by the throttle, by lane: address (failures from the "
           "client's address) or user (failures against the login name from any address).");
    out += fmt::format("isthmus_auth_throttle_delayed_total{{lane=\"address\"}} {}\n",
                       t.delayed_address);
    out += fmt::format("isthmus_auth_throttle_delayed_total{{lane=\"user\"}} {}\n",
                       t.delayed_user);
    proxy::write_family_header(out, "isthmus_auth_throttle_refused_total", "counter",
           "Logins refused at once because their check would wait longer than "
           "auth.max_throttle_wait.");
    out += fmt::format("isthmus_auth_throttle_refused_total {}\n", t.refused);
    proxy::write_family_header(out, "isthmus_auth_throttle_exempt_total", "counter",
           "Logins with credentials that logged in before (auth.known_good_ttl): never held back.");
    out += fmt::format("isthmus_auth_throttle_exempt_total {}\n", t.exempt);
    proxy::write_family_header(out, "isthmus_auth_throttle_failures_total", "counter",
           "Failed logins counted by the throttle.");
    out += fmt::format("isthmus_auth_throttle_failures_total {}\n", t.failures);
    proxy::write_family_header(out, "isthmus_auth_throttle_wait_seconds_total", "counter",
           "Time login checks were held back, in all.");
    out += fmt::format("isthmus_auth_throttle_wait_seconds_total {:.6f}\n",
                       static_cast<double>(t.wait_micros) / 1e6);
    proxy::write_family_header(out, "isthmus_auth_throttle_entries", "gauge",
           "Throttle table slots in use, by table (each holds auth.throttle_entries).");
    for (auto [table, value] : {std::pair{"address", t.address_entries},
                                {"user", t.user_entries},
                                {"known_good", t.known_good_entries}})
      out += fmt::format("isthmus_auth_throttle_entries{{table=\"{}\"}} {}\n", table, value);
  }

  if (auto cache = std::dynamic_pointer_cast<director::CachingDirectory>(runtime.directory)) {
    auto stats = cache->stats();
    proxy::write_family_header(out, "isthmus_directory_cache_lookups_total", "counter",
           "Directory lookups by how the cache answered: hit (memory), miss (asked the "
           "directory), coalesced (waited for the same user's lookup), stale (expired entry "
           "served because the directory failed), failed (directory failed, nothing to serve).");
    for (auto [result, value] :
         {std::pair{"hit", stats.hits}, {"miss", stats.misses}, {"coalesced", stats.coalesced},
          {"stale", stats.stale}, {"failed", stats.failures}})
      out += fmt::format("isthmus_directory_cache_lookups_total{{result=\"{}\"}} {}\n", result,
                         value);
    proxy::write_family_header(out, "isthmus_directory_cache_evictions_total", "counter",
           "Entries dropped to stay within max_entries.");
    out += fmt::format("isthmus_directory_cache_evictions_total {}\n", stats.evictions);
    proxy::write_family_header(out, "isthmus_directory_cache_entries", "gauge",
                               "Users in the cache now.");
    out += fmt::format("isthmus_directory_cache_entries {}\n", stats.entries);
  }
  return out;
}

}  // namespace isthmus::admin
