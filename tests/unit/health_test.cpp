// The health state machine on a fake clock (time is passed in; nothing
// sleeps), the jitter bounds, greeting verdicts, and what the router makes
// of down and draining nodes.
#include "backends/health.hpp"
#include "backends/health_checker.hpp"
#include "backends/topology.hpp"
#include "director/router.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <doctest/doctest.h>

#include <atomic>
#include <mutex>
#include <random>
#include <thread>

using namespace isthmus;
using backends::HealthState;
using backends::NodeHealth;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

config::Health settings(unsigned rise = 2, unsigned fall = 2) {
  config::Health h;
  h.rise = rise;
  h.fall = fall;
  h.interval = seconds(5);
  h.down_interval = seconds(2);
  return h;
}

const Clock::time_point t0 = Clock::time_point(seconds(1000));

}  // namespace

TEST_CASE("health: a node starts unknown and a good check makes it up quietly") {
  NodeHealth h("a-left", settings());
  CHECK(h.state() == HealthState::unknown);
  CHECK_FALSE(h.down());
  CHECK_FALSE(h.record_success(t0));  // nothing to announce: it was never down
  CHECK(h.state() == HealthState::up);
}

TEST_CASE("health: fall failures in a row take it down, with one log line naming the reason") {
  NodeHealth h("a-left", settings(2, 3));
  h.record_success(t0);
  CHECK_FALSE(h.record_failure("imap: connect refused", t0 + seconds(5)));
  CHECK_FALSE(h.record_failure("imap: connect refused", t0 + seconds(10)));
  CHECK(h.state() == HealthState::up);
  auto line = h.record_failure("imap: connect refused", t0 + seconds(15));
  REQUIRE(line);
  CHECK(*line == "node a-left down: 3 failed checks: imap: connect refused");
  CHECK(h.down());
  CHECK(h.since() == t0 + seconds(15));
  // Further failures keep it down without another announcement.
  CHECK_FALSE(h.record_failure("imap: connect refused", t0 + seconds(17)));
  CHECK(h.down());
}

TEST_CASE("health: a good check in between resets the failure count (hysteresis)") {
  NodeHealth h("n", settings(2, 2));
  h.record_failure("x", t0);
  h.record_success(t0 + seconds(1));
  CHECK(h.failures() == 0);
  CHECK_FALSE(h.record_failure("x", t0 + seconds(2)));
  CHECK_FALSE(h.down());
  CHECK(h.record_failure("x", t0 + seconds(3)));
  CHECK(h.down());
}

TEST_CASE("health: unknown counts as up: fall failures from the start take it down") {
  NodeHealth h("n", settings(2, 2));
  CHECK_FALSE(h.record_failure("imap: no greeting within 2s", t0));
  CHECK(h.state() == HealthState::unknown);
  CHECK(h.record_failure("imap: no greeting within 2s", t0 + seconds(1)));
  CHECK(h.down());
}

TEST_CASE("health: rise good checks in a row bring it back up; a failure restarts the count") {
  NodeHealth h("a-left", settings(3, 1));
  REQUIRE(h.record_failure("imap: connect refused", t0));
  CHECK_FALSE(h.record_success(t0 + seconds(2)));
  CHECK_FALSE(h.record_success(t0 + seconds(4)));
  CHECK_FALSE(h.record_failure("imap: connect refused", t0 + seconds(6)));  // flapping
  CHECK(h.successes() == 0);
  CHECK_FALSE(h.record_success(t0 + seconds(8)));
  CHECK_FALSE(h.record_success(t0 + seconds(10)));
  auto line = h.record_success(t0 + seconds(12));
  REQUIRE(line);
  CHECK(*line == "node a-left up again after 3 good checks (down for 12.0s)");
  CHECK(h.state() == HealthState::up);
}

TEST_CASE("health: fall 1 and rise 1 act on the first verdict") {
  NodeHealth h("n", settings(1, 1));
  h.record_success(t0);
  auto down = h.record_failure("pop3: greeting was -ERR: busy", t0 + seconds(1));
  REQUIRE(down);
  CHECK(*down == "node n down: 1 failed check: pop3: greeting was -ERR: busy");
  auto up = h.record_success(t0 + seconds(3));
  REQUIRE(up);
  CHECK(*up == "node n up again after 1 good check (down for 2.0s)");
}

TEST_CASE("health: passive reports are failures like any other: two sessions take it down") {
  // A node between two active checks: sessions see it refuse.
  NodeHealth h("n", settings(2, 2));
  h.record_success(t0);
  CHECK_FALSE(h.record_failure("a session: the node refused the connection", t0 + milliseconds(10)));
  auto line = h.record_failure("a session: the node refused the connection", t0 + milliseconds(20));
  REQUIRE(line);
  CHECK(line->find("2 failed checks: a session: the node refused") != std::string::npos);
}

TEST_CASE("health: new settings after a reload keep the state and the counts") {
  NodeHealth h("n", settings(2, 3));
  h.record_success(t0);
  h.record_failure("x", t0);
  h.record_failure("x", t0);
  CHECK_FALSE(h.down());
  h.configure(settings(2, 2));  // fall lowered: the next failure decides
  CHECK(h.failures() == 2);
  CHECK(h.record_failure("x", t0));
}

TEST_CASE("health: the next check is interval +- 20%, and the faster down_interval while down") {
  NodeHealth h("n", settings(2, 1));
  h.record_success(t0);
  CHECK(h.next_check(t0, 0.0) == t0 + seconds(4));
  CHECK(h.next_check(t0, 0.5) == t0 + seconds(5));
  CHECK(h.next_check(t0, 1.0) == t0 + seconds(6));
  h.record_failure("x", t0);
  REQUIRE(h.down());
  CHECK(h.next_check(t0, 0.0) == t0 + milliseconds(1600));
  CHECK(h.next_check(t0, 1.0) == t0 + milliseconds(2400));
}

TEST_CASE("health: jitter stays within its bounds for any draw, and clamps bad ones") {
  const auto interval = Clock::duration(seconds(5));
  CHECK(backends::jittered(interval, -1.0) == seconds(4));
  CHECK(backends::jittered(interval, 7.0) == seconds(6));
  CHECK(backends::jittered(interval, std::numeric_limits<double>::quiet_NaN()) == seconds(4));
  std::mt19937_64 random(42);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Clock::duration lowest = Clock::duration::max(), highest = Clock::duration::min();
  for (int i = 0; i < 10000; ++i) {
    auto d = backends::jittered(interval, unit(random));
    lowest = std::min(lowest, d);
    highest = std::max(highest, d);
  }
  CHECK(lowest >= seconds(4));
  CHECK(highest <= seconds(6));
  // ... and it really spreads: both ends of the range are used.
  CHECK(lowest < milliseconds(4100));
  CHECK(highest > milliseconds(5900));
}

TEST_CASE("health: greetings per protocol") {
  using backends::greeting_problem;
  using config::Protocol;
  CHECK_FALSE(greeting_problem(Protocol::imap, "* OK [CAPABILITY IMAP4rev1] Dovecot ready."));
  CHECK_FALSE(greeting_problem(Protocol::imap, "* ok ready"));
  CHECK(*greeting_problem(Protocol::imap, "* BYE too many connections") ==
        "greeting was BYE: too many connections");
  CHECK(greeting_problem(Protocol::imap, "* PREAUTH hello"));
  CHECK(greeting_problem(Protocol::imap, "+OK pop3 on the imap port"));
  CHECK(greeting_problem(Protocol::imap, "garbage\x01"));
  CHECK(greeting_problem(Protocol::imap, ""));
  CHECK_FALSE(greeting_problem(Protocol::pop3, "+OK Dovecot ready."));
  CHECK_FALSE(greeting_problem(Protocol::pop3, "+OK [XCLIENT] Dovecot (Debian) ready."));
  CHECK_FALSE(greeting_problem(Protocol::pop3, "+OK"));
  CHECK(*greeting_problem(Protocol::pop3, "-ERR [SYS/TEMP] busy") ==
        "greeting was -ERR:  [SYS/TEMP] busy");
  CHECK(greeting_problem(Protocol::pop3, "+OKAY"));
  CHECK(greeting_problem(Protocol::pop3, "* OK imap"));
  CHECK_FALSE(greeting_problem(Protocol::lmtp, "220 mx.example.org Dovecot LMTP ready"));
  CHECK_FALSE(greeting_problem(Protocol::lmtp, "220-first line"));
  CHECK(*greeting_problem(Protocol::lmtp, "421 4.3.2 shutting down") ==
        "greeting was 421: 4.3.2 shutting down");
  CHECK(greeting_problem(Protocol::lmtp, "554 no"));
  CHECK(greeting_problem(Protocol::lmtp, "250 what"));
  CHECK(greeting_problem(Protocol::lmtp, "hello"));
}

namespace {

config::Config two_node_config(bool drain_right = false, bool active_passive = false) {
  config::Config c;
  config::Island island;
  island.name = "a";
  if (active_passive) {
    island.policy = config::IslandPolicy::active_passive;
    island.active = "l";
  }
  for (auto name : {"l", "r"}) {
    config::Node n;
    n.name = name;
    n.host = "127.0.0.1";
    n.ports[config::Protocol::imap] = 1;
    n.ports[config::Protocol::pop3] = 2;
    n.drain = drain_right && std::string_view(name) == "r";
    island.nodes.push_back(n);
  }
  c.islands.push_back(island);
  return c;
}

std::shared_ptr<const backends::Topology> two_nodes(bool drain_right = false) {
  return backends::Topology::build(two_node_config(drain_right), nullptr);
}

std::vector<std::string> order(const backends::Island& island, std::size_t spin) {
  std::vector<std::string> names;
  for (const auto& node : director::candidates(island, config::Protocol::imap, Clock::now(), spin))
    names.push_back(node->name);
  return names;
}

}  // namespace

TEST_CASE("health router: a down node gets no new sessions while another is up") {
  auto topology = two_nodes();
  const auto& a = *topology->island("a");
  topology->state_of("l")->set_down(true);
  for (std::size_t spin = 0; spin < 4; ++spin) CHECK(order(a, spin) == std::vector<std::string>{"r"});
  // Even with fewer sessions than the up node.
  backends::NodeLease busy(topology->state_of("r"));
  CHECK(order(a, 0) == std::vector<std::string>{"r"});
  // Back up: the fewest sessions first again.
  topology->state_of("l")->set_down(false);
  CHECK(order(a, 0) == std::vector<std::string>{"l", "r"});
}

TEST_CASE("health router: a node down for one protocol still takes the others' sessions") {
  // DBMail and a split Cyrus run one daemon per protocol: its imapd dead,
  // a node still serves POP3 (issue 16).
  auto topology = two_nodes();
  const auto& a = *topology->island("a");
  auto names = [&](config::Protocol protocol, std::size_t spin) {
    std::vector<std::string> out;
    for (const auto& node : director::candidates(a, protocol, Clock::now(), spin))
      out.push_back(node->name);
    return out;
  };
  auto l = topology->state_of("l");
  l->set_down(config::Protocol::imap, true);
  CHECK(l->down(config::Protocol::imap));
  CHECK_FALSE(l->down(config::Protocol::pop3));
  CHECK(l->down());  // as the active role sees it: down for a protocol
  for (std::size_t spin = 0; spin < 2; ++spin) {
    CHECK(names(config::Protocol::imap, spin) == std::vector<std::string>{"r"});
    CHECK(names(config::Protocol::pop3, spin).size() == 2);
  }
  l->set_down(config::Protocol::imap, false);
  CHECK_FALSE(l->down());
  CHECK(names(config::Protocol::imap, 0).size() == 2);
  // A protocol value past the room kept is never down (and not stored).
  const auto far = static_cast<config::Protocol>(200);
  l->set_down(far, true);
  CHECK_FALSE(l->down(far));
  CHECK_FALSE(l->down());
}

TEST_CASE("health: the up-again line names the protocol of a per-protocol machine") {
  config::Health settings;
  settings.rise = 1;
  settings.fall = 1;
  backends::NodeHealth h("a-left", settings, "imap");
  auto t0 = Clock::now();
  REQUIRE(h.record_failure("imap: connect refused", t0));
  auto up = h.record_success(t0 + std::chrono::seconds(3));
  REQUIRE(up);
  CHECK(*up == "node a-left up again after 1 good check of imap (down for 3.0s)");
}

TEST_CASE("health router: every node down: all are tried anyway, in the usual order") {
  auto topology = two_nodes();
  const auto& a = *topology->island("a");
  topology->state_of("l")->set_down(true);
  topology->state_of("r")->set_down(true);
  CHECK(order(a, 0).size() == 2);
  CHECK(order(a, 0) != order(a, 1));  // still rotating
  topology->state_of("r")->report_failure(Clock::now());
  CHECK(order(a, 0) == std::vector<std::string>{"l", "r"});  // suspect last
  CHECK(order(a, 1) == std::vector<std::string>{"l", "r"});
}

TEST_CASE("health router: draining nodes get no new sessions, by config or at run time") {
  auto topology = two_nodes(/*drain_right=*/true);
  const auto& a = *topology->island("a");
  CHECK(order(a, 0) == std::vector<std::string>{"l"});
  CHECK(order(a, 1) == std::vector<std::string>{"l"});
  // Draining holds even when the other node is down: the operator said so.
  topology->state_of("l")->set_down(true);
  CHECK(order(a, 0) == std::vector<std::string>{"l"});  // down but the only one
  topology->state_of("l")->set_draining(true);
  CHECK(order(a, 0).empty());
  topology->state_of("l")->set_draining(false);
  topology->state_of("l")->set_down(false);
  // Run-time drain on a config that does not drain.
  auto plain = two_nodes();
  const auto& p = *plain->island("a");
  plain->state_of("l")->set_draining(true);
  CHECK(order(p, 0) == std::vector<std::string>{"r"});
  CHECK(order(p, 1) == std::vector<std::string>{"r"});
}

TEST_CASE("health router: down and draining flags outlive a reload (kept by node name)") {
  config::Config c;
  config::Island island;
  island.name = "a";
  config::Node n;
  n.name = "l";
  n.host = "127.0.0.1";
  n.ports[config::Protocol::imap] = 1;
  island.nodes.push_back(n);
  c.islands.push_back(island);
  auto first = backends::Topology::build(c, nullptr);
  first->state_of("l")->set_down(true);
  first->state_of("l")->set_draining(true);
  auto second = backends::Topology::build(c, first.get());
  CHECK(second->state_of("l")->down());
  CHECK(second->state_of("l")->draining());
}

TEST_CASE("active-passive: only the holder gets sessions; a down holder hands the role on") {
  auto topology = backends::Topology::build(two_node_config(false, true), nullptr);
  const auto& a = *topology->island("a");
  REQUIRE(a.role);
  CHECK(a.role->current()->node == "l");
  CHECK(a.role->current()->epoch == 1);
  for (std::size_t spin = 0; spin < 3; ++spin) CHECK(order(a, spin) == std::vector<std::string>{"l"});
  CHECK_FALSE(backends::role_successor(a));  // the holder is up: it keeps the role
  topology->state_of("l")->set_down(true);
  CHECK(order(a, 0) == std::vector<std::string>{"l"});  // until the role moves
  REQUIRE(backends::role_successor(a) == std::optional<std::string>("r"));
  CHECK(a.role->move_to("r") == 2);
  CHECK(order(a, 0) == std::vector<std::string>{"r"});
  // The old holder comes back: no failback.
  topology->state_of("l")->set_down(false);
  CHECK_FALSE(backends::role_successor(a));
  CHECK(order(a, 0) == std::vector<std::string>{"r"});
}

TEST_CASE("active-passive: a holder down for one protocol loses the role; a successor must "
          "be up for all") {
  auto topology = backends::Topology::build(two_node_config(false, true), nullptr);
  const auto& a = *topology->island("a");
  topology->state_of("l")->set_down(config::Protocol::imap, true);  // its imapd died
  REQUIRE(backends::role_successor(a) == std::optional<std::string>("r"));
  topology->state_of("r")->set_down(config::Protocol::pop3, true);  // half up: no successor
  CHECK_FALSE(backends::role_successor(a));
}

TEST_CASE("active-passive: no successor when the other node is down or draining") {
  auto topology = backends::Topology::build(two_node_config(false, true), nullptr);
  const auto& a = *topology->island("a");
  topology->state_of("l")->set_down(true);
  topology->state_of("r")->set_down(true);
  CHECK_FALSE(backends::role_successor(a));
  CHECK(order(a, 0) == std::vector<std::string>{"l"});  // tried anyway
  topology->state_of("r")->set_down(false);
  topology->state_of("r")->set_draining(true);
  CHECK_FALSE(backends::role_successor(a));
}

TEST_CASE("active-passive: the role outlives a reload, unless its holder left the island") {
  auto config = two_node_config(false, true);
  auto first = backends::Topology::build(config, nullptr);
  first->island("a")->role->move_to("r");
  auto second = backends::Topology::build(config, first.get());
  CHECK(second->island("a")->role->current()->node == "r");
  CHECK(second->island("a")->role->current()->epoch == 2);
  config.islands[0].nodes.pop_back();  // r leaves
  auto third = backends::Topology::build(config, second.get());
  CHECK(third->island("a")->role->current()->node == "l");
}

namespace {

// A POP3 "node" on loopback that greets every connection and waits for it
// to close (blocking, on its own thread): the protocol of a node that
// still works.
class GreetingServer {
 public:
  explicit GreetingServer(std::string greeting)
      : acceptor_(io_, {boost::asio::ip::address_v4::loopback(), 0}),
        greeting_(std::move(greeting)),
        thread_([this] { serve(); }) {}
  ~GreetingServer() {
    stop_ = true;
    boost::system::error_code ec;
    boost::asio::ip::tcp::socket poke(io_);
    poke.connect(acceptor_.local_endpoint(), ec);  // wakes the accept
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  int accepted() const { return accepted_.load(); }

 private:
  void serve() {
    while (!stop_) {
      boost::asio::ip::tcp::socket s(io_);
      boost::system::error_code ec;
      acceptor_.accept(s, ec);
      if (ec || stop_) break;
      ++accepted_;
      boost::asio::write(s, boost::asio::buffer(greeting_), ec);
      char buf[256];
      while (!ec) s.read_some(boost::asio::buffer(buf), ec);  // until the checker leaves
    }
  }
  boost::asio::io_context io_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::string greeting_;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

// A loopback port nobody listens on (bound, then closed).
std::uint16_t closed_port() {
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::address_v4::loopback(), 0});
  return a.local_endpoint().port();
}

template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds within) {
  const auto until = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

}  // namespace

TEST_CASE("health checker: a node whose IMAP refuses is down for IMAP only, and only its IMAP "
          "sessions are closed") {
  // DBMail's imapd dead, its pop3d alive (issue 16), checked for real on
  // loopback.
  GreetingServer pop3("+OK ready\r\n");
  config::Config c;
  config::Island island;
  island.name = "a";
  island.health.interval = milliseconds(100);
  island.health.down_interval = milliseconds(100);
  island.health.timeout = milliseconds(500);
  island.health.rise = 1;
  island.health.fall = 2;
  config::Node n;
  n.name = "l";
  n.host = "127.0.0.1";
  n.ports[config::Protocol::imap] = closed_port();
  n.ports[config::Protocol::pop3] = pop3.port();
  island.nodes.push_back(n);
  c.islands.push_back(island);
  auto topology = backends::Topology::build(c, nullptr);
  auto state = topology->state_of("l");

  std::mutex mutex;
  std::vector<std::string> closed;  // "node protocol: why" or "node *" (the checker's thread)
  backends::HealthChecker checker;
  backends::RoleEvents events;
  events.close_sessions = [&](const std::string& node, const std::string&) {
    std::lock_guard lock(mutex);
    closed.push_back(node + " *");
  };
  events.close_protocol_sessions = [&](const std::string& node, config::Protocol protocol,
                                       const std::string& why) {
    std::lock_guard lock(mutex);
    closed.push_back(node + " " + std::string(config::name_of(protocol)) + ": " + why);
  };
  checker.set_events(events);
  checker.update(backends::HealthInputs{topology, nullptr, true, "localhost"});

  REQUIRE(eventually([&] { return state->down(config::Protocol::imap); }, seconds(5)));
  // More rounds of checks: POP3 answered every one and stays up.
  REQUIRE(eventually([&, seen = pop3.accepted()] { return pop3.accepted() >= seen + 3; },
                     seconds(5)));
  CHECK_FALSE(state->down(config::Protocol::pop3));
  CHECK(state->down());  // as the active role sees the node
  checker.stop();
  std::lock_guard lock(mutex);
  CHECK(closed == std::vector<std::string>{"l imap: node l was marked down for imap"});
}
