#include "director/router.hpp"

#include <algorithm>

namespace isthmus::director {

std::vector<std::shared_ptr<const backends::Node>> candidates(const backends::Island& island,
                                                             config::Protocol protocol,
                                                             Clock::time_point now,
                                                             std::size_t spin) {
  struct Ranked {
    bool suspect;
    int sessions;
    std::size_t turn;
    std::shared_ptr<const backends::Node> node;
  };
  std::vector<Ranked> ranked;
  const std::size_t count = island.nodes.size();
  for (std::size_t i = 0; i < count; ++i) {
    const auto& node = island.nodes[i];
    if (!node->endpoint(protocol)) continue;
    ranked.push_back({node->state->suspect(now), node->state->sessions(),
                      (i + count - spin % count) % count, node});
  }
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
