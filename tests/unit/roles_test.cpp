// The role-change hook (a real child process: environment, output, exit
// status, timeout) and the local role store: who moves the role, which
// sessions are closed, when the hook runs, and what promote accepts.
#include "backends/role_hook.hpp"
#include "backends/role_store.hpp"
#include "backends/topology.hpp"

#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include <unistd.h>

using namespace isthmus;
using backends::HookOutcome;
using backends::run_hook;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

config::Config two_node_config() {
  config::Config c;
  config::Island island;
  island.name = "a";
  island.policy = config::IslandPolicy::active_passive;
  island.active = "l";
  for (const char* name : {"l", "r"}) {
    config::Node n;
    n.name = name;
    n.host = "127.0.0.1";
    n.ports[config::Protocol::imap] = 143;
    island.nodes.push_back(n);
  }
  c.islands.push_back(island);
  return c;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("hook: runs without a shell, with the role in its environment; its output is kept") {
  auto outcome = run_hook({"/bin/sh", "-c", "echo \"$ISLAND $OLD_NODE $NEW_NODE $EPOCH\"; "
                                            "echo; exit 3"},
                          {{"ISLAND", "a"}, {"OLD_NODE", "l"}, {"NEW_NODE", "r"}, {"EPOCH", "7"}},
                          seconds(10));
  CHECK(outcome.kind == HookOutcome::Kind::exited);
  CHECK(outcome.code == 3);
  CHECK_FALSE(outcome.ok());
  CHECK(outcome.output == "a l r 7");  // the last non-empty line
  CHECK(outcome.describe().rfind("exited 3 after ", 0) == 0);
}

TEST_CASE("hook: a hook that outlives its timeout is killed, with what it started") {
  const auto started = Clock::now();
  // The child sleeps too; killing only the shell would leave it holding the pipe.
  auto outcome = run_hook({"/bin/sh", "-c", "sleep 30 & echo started; wait"}, {}, milliseconds(300));
  const auto took = Clock::now() - started;
  CHECK(outcome.kind == HookOutcome::Kind::timed_out);
  CHECK(outcome.output == "started");
  CHECK(took < seconds(5));
  CHECK(outcome.describe().find("(timeout)") != std::string::npos);
}

TEST_CASE("hook: a program that cannot be started says why") {
  auto outcome = run_hook({"/nonexistent/move-ip"}, {}, seconds(1));
  CHECK(outcome.kind == HookOutcome::Kind::failed_to_start);
  CHECK(outcome.describe().find("/nonexistent/move-ip") != std::string::npos);
}

TEST_CASE("local role store: a down holder hands the role on once; sessions closed; hook runs") {
  char dir_template[] = "/tmp/isthmus-roles-XXXXXX";
  REQUIRE(::mkdtemp(dir_template));
  const std::string dir = dir_template;
  const std::string log = dir + "/hook.log";

  boost::asio::io_context io;
  auto topology = backends::Topology::build(two_node_config(), nullptr);
  std::vector<std::string> closed;
  backends::RoleStoreContext context;
  context.executor = io.get_executor();
  context.instance = "i1";
  context.settings.hook = {"/bin/sh", "-c",
                           "echo \"$INSTANCE $ISLAND $OLD_NODE $NEW_NODE $EPOCH\" >> " + log};
  context.events.close_sessions = [&closed](const std::string& node, const std::string& why) {
    closed.push_back(node + ": " + why);
  };
  {
    auto store = backends::make_local_role_store(std::move(context));
    store->follow(topology);
    CHECK(closed.empty());
    topology->state_of("l")->set_down(true);
    store->health_changed();
    CHECK(topology->island("a")->role->current()->node == "r");
    CHECK(topology->island("a")->role->current()->epoch == 2);
    REQUIRE(closed.size() == 1);
    CHECK(closed[0] == "l: l lost island a's active role");
    // l back up: no failback, nothing more closed.
    topology->state_of("l")->set_down(false);
    store->health_changed();
    CHECK(topology->island("a")->role->current()->node == "r");
    CHECK(closed.size() == 1);

    std::vector<std::string> answers;
    auto answer = [&answers](std::string problem) { answers.push_back(problem); };
    store->promote("a", "x", answer);
    store->promote("b", "l", answer);
    topology->state_of("l")->set_down(true);
    store->promote("a", "l", answer);
    topology->state_of("l")->set_down(false);
    store->promote("a", "l", answer);
    REQUIRE(answers.size() == 4);
    CHECK(answers[0] == "\"x\" is not a node of island \"a\"");
    CHECK(answers[1] == "no island \"b\"");
    CHECK(answers[2] == "node \"l\" is down");
    CHECK(answers[3] == "");
    CHECK(topology->island("a")->role->current()->node == "l");
    CHECK(topology->island("a")->role->current()->epoch == 3);
    CHECK(closed.back() == "r: r lost island a's active role");
  }  // the store's hook runner finishes the hook that runs
  // Hooks run one after the other, in order.
  CHECK(read_file(log) == "i1 a l r 2\ni1 a r l 3\n");
  std::remove(log.c_str());
  ::rmdir(dir.c_str());
}
