#include "backends/topology.hpp"

#include <boost/asio/io_context.hpp>
#include <fmt/format.h>

namespace isthmus::backends {

void NodeState::report_failure(Clock::time_point now) {
  auto ticks = now.time_since_epoch().count();
  last_failure_.store(ticks == 0 ? 1 : ticks, std::memory_order_relaxed);
}

void NodeState::report_success() {
  if (last_failure_.load(std::memory_order_relaxed) != 0)
    last_failure_.store(0, std::memory_order_relaxed);
}

bool NodeState::suspect(Clock::time_point now) const {
  auto ticks = last_failure_.load(std::memory_order_relaxed);
  if (ticks == 0) return false;
  return now - Clock::time_point(Clock::duration(ticks)) < suspect_for;
}

std::optional<boost::asio::ip::tcp::endpoint> Node::endpoint(config::Protocol protocol) const {
  auto it = ports.find(protocol);
  if (it == ports.end()) return std::nullopt;
  return boost::asio::ip::tcp::endpoint(address, it->second);
}

std::shared_ptr<const Topology> Topology::build(const config::Config& config,
                                                const Topology* previous) {
  auto topology = std::make_shared<Topology>();
  boost::asio::io_context io;
  boost::asio::ip::tcp::resolver resolver(io);
  std::string problems;
  for (std::size_t i = 0; i < config.islands.size(); ++i) {
    const auto& ci = config.islands[i];
    Island island{ci.name, ci.policy, {}, ci.health, nullptr};
    for (std::size_t k = 0; k < ci.nodes.size(); ++k) {
      const auto& cn = ci.nodes[k];
      auto node = std::make_shared<Node>();
      node->name = cn.name;
      node->island = ci.name;
      node->host = cn.host;
      node->ports = cn.ports;
      node->tls = cn.tls;
      node->tls_by_protocol = cn.tls_by_protocol;
      node->tls_name = cn.tls_name.empty() ? cn.host : cn.tls_name;
      node->drain = cn.drain;
      boost::system::error_code ec;
      auto address = boost::asio::ip::make_address(cn.host, ec);
      if (ec) {
        auto results = resolver.resolve(cn.host, "", ec);
        if (ec || results.empty()) {
          problems += fmt::format("{}: /islands/{}/nodes/{}/host: cannot resolve \"{}\": {}\n",
                                  config.path.string(), i, k, cn.host,
                                  ec ? ec.message() : "no address");
          continue;
        }
        address = results.begin()->endpoint().address();
      }
      node->address = address;
      if (previous) node->state = previous->state_of(cn.name);
      if (!node->state) node->state = std::make_shared<NodeState>(cn.name);
      island.nodes.push_back(std::move(node));
    }
    if (island.policy == config::IslandPolicy::active_passive) {
      // The role outlives a reload, unless its holder left the island.
      if (previous) island.role = previous->role_of(island.name);
      if (!island.role || !island.node(island.role->current()->node))
        island.role = std::make_shared<IslandRole>(ci.active);
    }
    topology->islands_.push_back(std::move(island));
  }
  if (!problems.empty()) {
    problems.pop_back();
    throw config::ConfigError(problems);
  }
  return topology;
}

const Node* Island::node(std::string_view wanted) const {
  for (const auto& n : nodes)
    if (n->name == wanted) return n.get();
  return nullptr;
}

std::optional<std::string> role_successor(const Island& island) {
  if (!island.role) return std::nullopt;
  const Node* holder = island.node(island.role->current()->node);
  if (holder && !holder->state->down()) return std::nullopt;
  for (const auto& n : island.nodes) {
    if (n.get() == holder || n->state->down() || n->draining()) continue;
    return n->name;
  }
  return std::nullopt;
}

std::shared_ptr<IslandRole> Topology::role_of(std::string_view name) const {
  const Island* found = island(name);
  return found ? found->role : nullptr;
}

const Island* Topology::island(std::string_view name) const {
  for (const auto& island : islands_)
    if (island.name == name) return &island;
  return nullptr;
}

std::shared_ptr<NodeState> Topology::state_of(std::string_view node) const {
  for (const auto& island : islands_)
    for (const auto& n : island.nodes)
      if (n->name == node) return n->state;
  return nullptr;
}

}  // namespace isthmus::backends
