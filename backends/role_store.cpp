#include "backends/role_store.hpp"

#include "backends/role_hook.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace isthmus::backends {

RolePublisher::RolePublisher(RoleStoreContext& context) : context_(context) {
  if (!context_.settings.hook.empty()) hooks_ = std::make_unique<HookRunner>();
}

RolePublisher::~RolePublisher() = default;

void RolePublisher::publish(const Island& island, const IslandRole::Holder& next,
                            const std::string& why, bool moved_here) {
  if (!island.role) return;
  auto old = island.role->current();
  if (old->node == next.node && old->epoch == next.epoch) return;
  // The last line of the fence: whatever a store says, an epoch never goes
  // back (the stores refuse and log such rows before they get here).
  if (next.epoch <= old->epoch) {
    spdlog::error("role: island {}: refusing epoch {} ({}) after epoch {} ({})", island.name,
                  next.epoch, next.node, old->epoch, old->node);
    return;
  }
  island.role->set(next);
  if (old->node == next.node) {
    spdlog::info("role: island {}: {} keeps the active role, epoch {} ({})", island.name,
                 next.node, next.epoch, why);
    return;
  }
  spdlog::warn("role: island {}: the active role moves from {} to {}, epoch {} ({})",
               island.name, old->node, next.node, next.epoch, why);
  if (context_.events.close_sessions)
    context_.events.close_sessions(
        old->node, fmt::format("{} lost island {}'s active role", old->node, island.name));
  if (moved_here && hooks_) {
    HookRunner::Job job;
    job.argv = context_.settings.hook;
    job.env = {{"ISTHMUS_EVENT", "role-change"},
               {"ISLAND", island.name},
               {"OLD_NODE", old->node},
               {"NEW_NODE", next.node},
               {"EPOCH", std::to_string(next.epoch)},
               {"INSTANCE", context_.instance}};
    job.timeout = context_.settings.hook_timeout;
    job.what = fmt::format("island {} epoch {} ({} -> {})", island.name, next.epoch, old->node,
                           next.node);
    hooks_->run(std::move(job));
  }
}

std::string promote_problem(const Island* island, std::string_view island_name,
                            std::string_view node) {
  if (!island) return fmt::format("no island \"{}\"", island_name);
  if (!island->role)
    return fmt::format("island \"{}\" is not active-passive (it has no active role)",
                       island_name);
  const Node* target = island->node(node);
  if (!target) return fmt::format("\"{}\" is not a node of island \"{}\"", node, island_name);
  if (target->state->down()) return fmt::format("node \"{}\" is down", node);
  return "";
}

namespace {

class LocalRoleStore final : public RoleStore {
 public:
  explicit LocalRoleStore(RoleStoreContext context)
      : context_(std::move(context)), publisher_(context_) {}

  void follow(std::shared_ptr<const Topology> topology) override {
    topology_ = std::move(topology);
    health_changed();
  }

  void health_changed() override {
    if (!topology_) return;
    for (const auto& island : topology_->islands()) {
      if (!island.role) continue;
      auto holder = island.role->current();
      if (auto next = role_successor(island)) {
        publisher_.publish(island, {*next, holder->epoch + 1},
                           fmt::format("{} is down; it will not move back by itself (promote "
                                       "to move it)",
                                       holder->node),
                           true);
      } else if (const Node* node = island.node(holder->node); node && node->state->down()) {
        spdlog::error("role: island {}: {} holds the active role and is down, and no other "
                      "node is up: the role stays",
                      island.name, holder->node);
      }
    }
  }

  void promote(std::string island_name, std::string node,
               std::function<void(std::string)> done) override {
    const Island* island = topology_ ? topology_->island(island_name) : nullptr;
    std::string problem = promote_problem(island, island_name, node);
    if (problem.empty()) {
      auto holder = island->role->current();
      if (holder->node != node)
        publisher_.publish(*island, {node, holder->epoch + 1}, "promoted by an operator", true);
    }
    done(problem);
  }

  void stop() override {}

 private:
  RoleStoreContext context_;
  RolePublisher publisher_;
  std::shared_ptr<const Topology> topology_;
};

}  // namespace

std::unique_ptr<RoleStore> make_local_role_store(RoleStoreContext context) {
  return std::make_unique<LocalRoleStore>(std::move(context));
}

}  // namespace isthmus::backends
