#pragma once
// Router: island -> the order in which its nodes are tried for one login.

#include "backends/topology.hpp"

#include <vector>

namespace isthmus::director {

// Balance policy: nodes that serve `protocol`, healthy before suspect, fewer
// sessions first; among equals, `spin` rotates the order so that a burst of
// logins spreads over the island instead of piling onto the first node.
std::vector<std::shared_ptr<const backends::Node>> candidates(const backends::Island& island,
                                                             config::Protocol protocol,
                                                             Clock::time_point now,
                                                             std::size_t spin);

}  // namespace isthmus::director
