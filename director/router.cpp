#include "director/router.hpp"

#include <algorithm>

namespace isthmus::director {

std::vector<std::shared_ptr<const backends::Node>> candidates(const backends::Island& island,
                                                             config::Protocol protocol,
                                                             Clock::time_point now,
                                                             std::size_t spin) {
  struct Ranked {
    bool down;
    bool suspect;
    int sessions;
    std::size_t turn;
    std::shared_ptr<const backends::Node> node;
  };
  std::vector<Ranked> ranked;
  const std::size_t count = island.nodes.size();
  bool any_up = false;
  // Active-passive: the role holder is the only candidate. When it is down
  // the health checker moves the role (role_successor); until then, or when
  // no other node is up, the holder is tried as the all-down rule says.
  std::string holder;
  if (island.policy == config::IslandPolicy::active_passive && island.role)
    holder = island.role->current()->node;
  for (std::size_t i = 0; i < count; ++i) {
    const auto& node = island.nodes[i];
    if (!holder.empty() && node->name != holder) continue;
    // Draining is the operator's word: no new sessions, even when the
    // island's other nodes are down.
    if (!node->endpoint(protocol) || node->draining()) continue;
    const bool down = node->state->down(protocol);
    any_up |= !down;
    ranked.push_back({down, node->state->suspect(now), node->state->sessions(),
                      (i + count - spin % count) % count, node});
  }
  // Down nodes get no new sessions while a node of the island is up. When
  // all are down, they are all tried anyway: the last verdict may be stale
  // (a check interval old), and a refused login costs the client more than
  // a try that fails fast.
  if (any_up)
    ranked.erase(std::remove_if(ranked.begin(), ranked.end(), [](const Ranked& r) { return r.down; }),
                 ranked.end());
  std::sort(ranked.begin(), ranked.end(), [](const Ranked& a, const Ranked& b) {
    if (a.suspect != b.suspect) return !a.suspect;
    if (a.sessions != b.sessions) return a.sessions < b.sessions;
    return a.turn < b.turn;
  });
  std::vector<std::shared_ptr<const backends::Node>> out;
  out.reserve(ranked.size());
  for (auto& r : ranked) out.push_back(std::move(r.node));
  return out;
}

}  // namespace isthmus::director
