#pragma once
// Router: island -> the order in which its nodes are tried for one login.

#include "backends/topology.hpp"

#include <vector>

namespace isthmus::director {

// Balance policy: the nodes that serve `protocol` and are not draining.
// Nodes the health checker marks down for `protocol` are left out while any node of the
// island is up; when every such node is down, all of them are returned
// (health may be stale: trying is better than refusing outright). Among
// them: healthy before suspect, fewer sessions first; among equals, `spin`
// rotates the order so that a burst of logins spreads over the island
// instead of piling onto the first node. Draining nodes are never returned.
std::vector<std::shared_ptr<const backends::Node>> candidates(const backends::Island& island,
                                                             config::Protocol protocol,
                                                             Clock::time_point now,
                                                             std::size_t spin);

}  // namespace isthmus::director
