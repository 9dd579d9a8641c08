// The `sql` role store (backends/role_store.hpp): every instance shares
// three tables (schema in deploy/sql/role-store.sql, docs/health.md):
//
//   isthmus_roles       island -> node, epoch, changed_by, changed_at
//   isthmus_instances   instance -> heartbeat_at
//   isthmus_node_views  (instance, node) -> down, seen_at
//
// Every poll_interval (and at once when a node's health changes here) an
// instance: writes its heartbeat and its view of every node of its
// active-passive islands; reads the role rows and follows them; and, for an
// island whose holder it sees down, counts the instances the store knows
// (a heartbeat within instance_expiry) and those alive now (a heartbeat
// within instance_timeout) whose fresh view has the holder down.
// Only with a strict majority does it try to move the role, by
// compare-and-set: UPDATE ... SET epoch = epoch + 1 WHERE island = ? AND
// epoch = ? -- of the instances trying at once one wins, the others follow
// the row. Times are the database's (NOW(6)), so instance clocks may
// disagree. An instance that cannot reach the store keeps the roles it
// knew, says so once, and moves nothing until the store answers.

#include "backends/role_store.hpp"

#include "common/log.hpp"
#include "config/duration.hpp"
#include "sql/client.hpp"
#include "sql/config_settings.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <map>
#include <set>

namespace isthmus::backends {

namespace asio = boost::asio;

namespace {

std::string microseconds(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
}

std::uint64_t to_epoch(const sql::Value& value) {
  if (!value) return 0;
  try {
    return std::stoull(*value);
  } catch (const std::exception&) {
    return 0;
  }
}

constexpr std::string_view kHeartbeat =
    "INSERT INTO isthmus_instances (instance, heartbeat_at) VALUES (?, NOW(6)) "
    "ON DUPLICATE KEY UPDATE heartbeat_at = NOW(6)";
// A missing row is seeded with the epoch this instance knows (never 1 after
// a move: an operator who deleted the row must not send every instance back
// to epoch 1, which they would all refuse).
constexpr std::string_view kSeedRole =
    "INSERT IGNORE INTO isthmus_roles (island, node, epoch, changed_by, changed_at) "
    "VALUES (?, ?, ?, ?, NOW(6))";
constexpr std::string_view kReadRoles =
    "SELECT island, node, epoch, changed_by FROM isthmus_roles";
// The electorate is every instance the store knows (a heartbeat within
// roles.instance_expiry), not only those heard from lately: after an
// outage of the store, the first instance back must not be "1 of 1".
constexpr std::string_view kCountVotes =
    "SELECT (SELECT COUNT(*) FROM isthmus_instances "
    "        WHERE heartbeat_at >= NOW(6) - INTERVAL ? MICROSECOND), "
    "       (SELECT COUNT(*) FROM isthmus_node_views v "
    "        JOIN isthmus_instances i ON i.instance = v.instance "
    "        WHERE v.node = ? AND v.down = 1 "
    "          AND v.seen_at >= NOW(6) - INTERVAL ? MICROSECOND "
    "          AND i.heartbeat_at >= NOW(6) - INTERVAL ? MICROSECOND)";
constexpr std::string_view kMoveRole =
    "UPDATE isthmus_roles SET node = ?, epoch = epoch + 1, changed_by = ?, changed_at = NOW(6) "
    "WHERE island = ? AND epoch = ?";

class SqlRoleStore final : public RoleStore {
 public:
  explicit SqlRoleStore(RoleStoreContext context)
      : context_(std::move(context)),
        publisher_(context_),
        client_(context_.executor, sql::client_settings(context_.settings.sql, "role store")),
        wake_(context_.executor),
        state_(std::make_shared<bool>(true)) {}

  ~SqlRoleStore() override { stop(); }

  void follow(std::shared_ptr<const Topology> topology) override {
    topology_ = std::move(topology);
    if (!started_) {
      started_ = true;
      auto alive = state_;
      auto done = [alive](std::exception_ptr e) {
        if (!e) return;
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          spdlog::error("role store: the poll loop stopped: {}", ex.what());
        }
      };
      asio::co_spawn(context_.executor, poll_loop(alive), done);
      asio::co_spawn(context_.executor, heartbeat_loop(alive), done);
    }
    poke();
  }

  void health_changed() override { poke(); }

  void promote(std::string island, std::string node,
               std::function<void(std::string)> done) override {
    auto alive = state_;
    auto report = [done](std::exception_ptr e) {
      if (e) done("unexpected error in the role store");
    };
    asio::co_spawn(context_.executor,
                   promote_now(alive, std::move(island), std::move(node), done), report);
  }

  void stop() override {
    if (!*state_) return;
    *state_ = false;
    wake_.cancel();
  }

 private:
  void poke() {
    poked_ = true;
    wake_.cancel();
  }

  Deadline query_deadline() const { return Deadline::after(context_.settings.sql.timeout); }

  // Query failed: the store is unreachable (said once) or refuses us (a
  // schema or privilege problem, said every time: an operator must act).
  void store_failed(const sql::QueryResult& result, std::string_view doing) {
    if (result.status == sql::QueryStatus::rejected) {
      spdlog::error("role store: {}: the database refused the statement: {} (is the schema of "
                    "deploy/sql/role-store.sql in place, with the privileges it needs?)",
                    doing, result.error);
    } else if (reachable_) {
      spdlog::warn("role store: unreachable while {}: {}; keeping the roles last known ({}); no "
                   "role moves until it answers",
                   doing, result.error, describe_roles());
    }
    reachable_ = false;
  }

  void store_answered() {
    if (!reachable_)
      spdlog::info("role store: reachable again; following its roles");
    reachable_ = true;
  }

  std::string describe_roles() const {
    std::string out;
    if (!topology_) return out;
    for (const auto& island : topology_->islands()) {
      if (!island.role) continue;
      auto holder = island.role->current();
      if (!out.empty()) out += ", ";
      out += fmt::format("{}: {} epoch {}", island.name, holder->node, holder->epoch);
    }
    return out.empty() ? "none" : out;
  }

  asio::awaitable<void> poll_loop(std::shared_ptr<bool> alive) {
    while (*alive) {
      poked_ = false;
      if (topology_) co_await poll_once(alive);
      if (!*alive) break;
      if (poked_) continue;
      wake_.expires_after(context_.settings.poll_interval);
      co_await wake_.async_wait(use_tuple);
    }
  }

  // The heartbeat on its own timer: a slow poll (views, roles, votes) must
  // not make this instance look dead to the others' majority count.
  asio::awaitable<void> heartbeat_loop(std::shared_ptr<bool> alive) {
    asio::steady_timer timer(context_.executor);
    while (*alive) {
      std::vector<std::string> me{context_.instance};
      auto beat = co_await client_.execute(std::string(kHeartbeat), std::move(me),
                                           query_deadline());
      if (!*alive) break;
      if (beat.status != sql::QueryStatus::ok) store_failed(beat, "writing the heartbeat");
      timer.expires_after(context_.settings.poll_interval);
      co_await timer.async_wait(use_tuple);
    }
  }

  asio::awaitable<void> poll_once(std::shared_ptr<bool> alive) {
    auto topology = topology_;
    std::vector<const Island*> islands;
    for (const auto& island : topology->islands())
      if (island.role) islands.push_back(&island);
    if (islands.empty()) co_return;

    // (Parameters go in named vectors: GCC 12 miscompiles braced lists
    // inside a co_await expression.)
    const bool viewed = co_await write_views(islands, alive);
    if (!viewed) co_return;
    const bool followed = co_await read_roles(*topology, islands, alive);
    if (!followed) co_return;
    store_answered();
    for (const Island* island : islands) {
      IslandRole::Holder holder = *island->role->current();
      const Node* node = island->node(holder.node);
      if (!node || !node->state->down()) continue;
      co_await consider_move(*island, std::move(holder), alive);
      if (!*alive) co_return;
    }
  }

  // One row per node of the active-passive islands: down or not, from here.
  asio::awaitable<bool> write_views(const std::vector<const Island*>& islands,
                                    std::shared_ptr<bool> alive) {
    std::string sql = "INSERT INTO isthmus_node_views (instance, node, down, seen_at) VALUES ";
    std::vector<std::string> params;
    for (const Island* island : islands) {
      for (const auto& node : island->nodes) {
        if (!params.empty()) sql += ", ";
        sql += "(?, ?, ?, NOW(6))";
        params.push_back(context_.instance);
        params.push_back(node->name);
        params.push_back(node->state->down() ? "1" : "0");
      }
    }
    sql += " ON DUPLICATE KEY UPDATE down = VALUES(down), seen_at = NOW(6)";
    auto result = co_await client_.execute(std::move(sql), std::move(params), query_deadline());
    if (!*alive) co_return false;
    if (result.status != sql::QueryStatus::ok) {
      store_failed(result, "writing this instance's view of the nodes");
      co_return false;
    }
    co_return true;
  }

  // Follows the rows; seeds a missing row with the config's holder.
  asio::awaitable<bool> read_roles(const Topology& topology,
                                   const std::vector<const Island*>& islands,
                                   std::shared_ptr<bool> alive) {
    std::vector<std::string> none;
    auto result = co_await client_.query(std::string(kReadRoles), std::move(none),
                                         query_deadline(), 100000);
    if (!*alive) co_return false;
    if (result.status != sql::QueryStatus::ok) {
      store_failed(result, "reading the roles");
      co_return false;
    }
    std::set<std::string, std::less<>> seen;
    for (const auto& row : result.rows) {
      if (row.size() < 4 || !row[0] || !row[1]) continue;
      const Island* island = topology.island(*row[0]);
      if (!island || !island->role) continue;  // another instance's island, or not ours
      seen.insert(*row[0]);
      const std::uint64_t epoch = to_epoch(row[2]);
      auto holder = island->role->current();
      if (*row[1] == holder->node && epoch == holder->epoch) continue;
      // Epochs are fencing tokens: never back to an epoch this instance has
      // seen superseded (a stale replica, a restored backup, a hand edit
      // that forgot the epoch). The higher one stays; an error says so.
      if (epoch <= holder->epoch) {
        if (warned_unknown_.insert(fmt::format("stale/{}/{}/{}", *row[0], *row[1], epoch)).second)
          spdlog::error("role store: island {}: the store says {} holds the role at epoch {}, "
                        "but this instance has seen epoch {} ({}); keeping epoch {} (an epoch "
                        "never goes back: to move a role by hand, raise it)",
                        island->name, sanitize(*row[1], 100), epoch, holder->epoch, holder->node,
                        holder->epoch);
        continue;
      }
      if (!island->node(*row[1])) {
        if (warned_unknown_.insert(fmt::format("{}/{}/{}", *row[0], *row[1], epoch)).second)
          spdlog::error("role store: island {}: the store says {} holds the role (epoch {}), "
                        "but it is not a node of the island here; keeping {} (check the "
                        "instances' configs)",
                        island->name, sanitize(*row[1], 100), epoch, holder->node);
        continue;
      }
      const std::string by = row[3] ? sanitize(*row[3], 100) : "?";
      const bool mine = by == context_.instance && epoch == expected_epoch_[island->name];
      publisher_.publish(*island, {*row[1], epoch},
                         fmt::format("the role store says so, moved by instance {}", by), mine);
    }
    for (const Island* island : islands) {
      if (seen.count(island->name)) continue;
      auto holder = island->role->current();
      std::vector<std::string> row{island->name, holder->node, std::to_string(holder->epoch),
                                   context_.instance};
      auto seed = co_await client_.execute(std::string(kSeedRole), std::move(row),
                                           query_deadline());
      if (!*alive) co_return false;
      if (seed.status != sql::QueryStatus::ok) {
        store_failed(seed, "adding the role row of island " + island->name);
        co_return false;
      }
      if (seed.affected_rows == 1) {
        spdlog::info("role store: island {}: no role row yet; {} holds the role (epoch {}, "
                     "as this instance knows it)",
                     island->name, holder->node, holder->epoch);
        poked_ = true;  // read it back at once
      } else if (warned_unknown_.insert("seed/" + island->name).second) {
        spdlog::error("role store: island {}: its row exists but was not read back under this "
                      "exact name (different case or too long?); following nothing for it",
                      island->name);
      }
    }
    co_return true;
  }

  // The holder looks down from here: move the role if a majority agrees.
  asio::awaitable<void> consider_move(const Island& island, IslandRole::Holder holder,
                                      std::shared_ptr<bool> alive) {
    const auto window = microseconds(context_.settings.instance_timeout);
    const auto known = microseconds(context_.settings.instance_expiry);
    std::vector<std::string> params{known, holder.node, window, window};
    auto votes = co_await client_.query(std::string(kCountVotes), std::move(params),
                                        query_deadline());
    if (!*alive) co_return;
    if (votes.status != sql::QueryStatus::ok || votes.rows.empty() || votes.rows[0].size() < 2) {
      store_failed(votes, "counting who sees " + holder.node + " down");
      co_return;
    }
    const auto live = to_epoch(votes.rows[0][0]);
    const auto down = to_epoch(votes.rows[0][1]);
    auto next = role_successor(island);
    const std::string key = fmt::format("{}/{}/{}/{}", island.name, holder.epoch, live, down);
    if (said_.size() > 1000) said_.clear();
    if (down * 2 <= live) {
      if (said_.insert(key).second)
        spdlog::warn("role: island {}: {} looks down from here, but only {} of the {} instances "
                     "the store knows see it down now; the role stays until a majority does",
                     island.name, holder.node, down, live);
      co_return;
    }
    if (!next) {
      if (said_.insert(key + "/none").second)
        spdlog::error("role: island {}: {} of the {} instances the store knows see {} down, but "
                      "no other node is up here: the role stays",
                      island.name, down, live, holder.node);
      co_return;
    }
    co_await move_role(island, holder, *next,
                       fmt::format("{} of the {} instances the store knows see {} down; it will "
                                   "not move back by itself (promote to move it)",
                                   down, live, holder.node),
                       alive);
  }

  // Compare-and-set from `holder`; "" when this instance moved it.
  asio::awaitable<std::string> move_role(const Island& island, IslandRole::Holder holder,
                                         std::string next, std::string why,
                                         std::shared_ptr<bool> alive) {
    expected_epoch_[island.name] = holder.epoch + 1;
    std::vector<std::string> params{next, context_.instance, island.name,
                                    std::to_string(holder.epoch)};
    auto moved = co_await client_.execute(std::string(kMoveRole), std::move(params),
                                          query_deadline());
    if (!*alive) co_return "stopping";
    if (moved.status != sql::QueryStatus::ok) {
      store_failed(moved, "moving the role of island " + island.name);
      co_return "the role store did not answer: " + moved.error;
    }
    if (moved.affected_rows != 1) {
      // Another instance moved it first (or an operator): follow the row.
      spdlog::info("role: island {}: the role had moved on already (epoch {} is gone); "
                   "following the role store",
                   island.name, holder.epoch);
      poke();
      co_return fmt::format("the role of island {} moved meanwhile; try again", island.name);
    }
    if (island.role->current()->epoch > holder.epoch + 1) {
      // The store moved on meanwhile (followed already): ours is superseded.
      spdlog::info("role: island {}: epoch {} was superseded before it was published; "
                   "following the role store",
                   island.name, holder.epoch + 1);
      co_return "";
    }
    publisher_.publish(island, {next, holder.epoch + 1}, why, true);
    co_return "";
  }

  asio::awaitable<void> promote_now(std::shared_ptr<bool> alive, std::string island_name,
                                    std::string node, std::function<void(std::string)> done) {
    const Island* island = topology_ ? topology_->island(island_name) : nullptr;
    std::string problem = promote_problem(island, island_name, node);
    if (!problem.empty()) {
      done(problem);
      co_return;
    }
    auto topology = topology_;  // keeps `island` alive
    auto holder = *island->role->current();
    if (holder.node == node) {
      done("");
      co_return;
    }
    std::string result = co_await move_role(*island, holder, node, "promoted by an operator",
                                            alive);
    done(result);
  }

  RoleStoreContext context_;
  RolePublisher publisher_;
  sql::Client client_;
  asio::steady_timer wake_;
  std::shared_ptr<bool> state_;  // false once stopped (shared with the coroutines)
  std::shared_ptr<const Topology> topology_;
  bool started_ = false;
  bool poked_ = false;
  bool reachable_ = true;
  std::map<std::string, std::uint64_t> expected_epoch_;  // island -> epoch our last CAS aimed at
  std::set<std::string> said_;            // "not a majority" lines already logged
  std::set<std::string> warned_unknown_;  // unknown holders already logged
};

}  // namespace

std::unique_ptr<RoleStore> make_sql_role_store(RoleStoreContext context) {
  return std::make_unique<SqlRoleStore>(std::move(context));
}

}  // namespace isthmus::backends
