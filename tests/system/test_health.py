"""Health checks against real nodes (Dovecot; Cyrus in system.health_cyrus):
a stopped node (connection refused) and a frozen one (SIGSTOP: accepts
TCP, never greets) are marked down by the active checks and get no new
logins; they come back after `rise` good checks; a node drained by config + SIGHUP gets no new sessions
while its existing ones stay. While a node fails, a client loop logs in
continuously and the figures (failed logins, seconds until traffic moved)
are printed for the release note. Timing is asserted only within sane
bounds: these machines are noisy."""
import imaplib
import json
import os
import poplib
import re
import subprocess
import threading
import time
import unittest

from support import Lab, PASSWORD, binary, wait_for
from lab.gate import Gate

INTERVAL = 1.0       # s, between checks of a node that is up
DOWN_INTERVAL = 0.5  # s, while down
TIMEOUT = 0.5        # s, one check
RISE = 2
FALL = 2
HEALTH = {"active": True, "interval": "1s", "down_interval": "500ms", "timeout": "500ms",
          "rise": RISE, "fall": FALL, "lmtp_lhlo": True}
USER = "alice@example.org"  # island a: a-left + a-right


class LoginLoop:
    """Logs in (and out) continuously with imaplib on a thread, recording
    (start, seconds, ok) for each attempt."""

    def __init__(self, port: int):
        self.port = port
        self.attempts: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            started = time.monotonic()
            ok = True
            try:
                m = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
                m.login(USER, PASSWORD)
                m.logout()
            except (OSError, imaplib.IMAP4.error):
                ok = False
            self.attempts.append((started, time.monotonic() - started, ok))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def since(self, t: float):
        return [a for a in self.attempts if a[0] >= t]


class Health(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lab = Lab()
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()

    def setUp(self):
        self.ix = self.lab.start_isthmus(binary(), timeouts={"connect": "1s"}, health=HEALTH)
        self.addCleanup(self.ix.stop)
        self.port = self.ix.port("imap")

    def login(self, user=USER):
        m = imaplib.IMAP4("127.0.0.1", self.port, timeout=15)
        m.login(user, PASSWORD)
        return m

    def log(self, mark: int = 0) -> str:
        return self.ix.log_text()[mark:]

    def wait_log(self, pattern: str, mark: int, timeout: float) -> re.Match:
        return wait_for(lambda: re.search(pattern, self.log(mark)), timeout=timeout,
                        interval=0.02, what=pattern)

    def nodes_logged_in(self, mark: int, user: str = USER) -> list[str]:
        return re.findall(rf"login ok user={re.escape(user)} island=\w+ node=(\S+)",
                          self.log(mark))

    def both_nodes_take_logins(self, within: float = 10.0):
        """Concurrent sessions spread over the island again (both are up).
        A node just back (a Cyrus node resumed from SIGSTOP on a loaded
        machine) may still fail a login's connect for a moment, which then
        goes to the other node: tried again until WITHIN seconds."""
        deadline = time.monotonic() + within
        while True:
            mark = len(self.log())
            sessions = [self.login() for _ in range(4)]
            try:
                spread = sorted(self.nodes_logged_in(mark))
            finally:
                for m in sessions:
                    m.logout()
            if spread == ["a-left"] * 2 + ["a-right"] * 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(spread, ["a-left"] * 2 + ["a-right"] * 2)

    def report(self, what: str, loop: LoginLoop, failed_at: float, down_after: float,
               bad_node_tries: int):
        during = loop.since(failed_at)
        failed = sum(1 for a in during if not a[2])
        slow = sum(1 for a in during if a[1] > 0.9)
        print(f"\nFAILOVER {what}: {failed} failed logins of {len(during)}; marked down "
              f"{down_after:.2f}s after the fault; {bad_node_tries} logins tried the bad node "
              f"first; {slow} logins slower than 0.9s", flush=True)
        return failed

    def test_a_stopped_node_goes_down_gets_no_logins_and_comes_back(self):
        left = self.lab.node("a-left")
        self.both_nodes_take_logins()
        with LoginLoop(self.port) as loop:
            time.sleep(0.5)
            mark = len(self.log())
            failed_at = time.monotonic()
            left.stop()  # connection refused from now on
            try:
                m = self.wait_log(r"health: node a-left down: 2 failed checks: (.*)", mark,
                                  timeout=FALL * INTERVAL * 1.2 + 5)
                down_after = time.monotonic() - failed_at
                down_at = mark + m.start()
                time.sleep(1.5)  # the loop keeps logging in
            finally:
                loop_attempts = len(loop.attempts)
        bad_tries = len(re.findall(r"node=a-left: the node", self.log(mark)))
        failed = self.report("node stopped (connection refused)", loop, failed_at, down_after,
                             bad_tries)
        # Refused; or, caught in the middle of Dovecot's shutdown, reset,
        # closed, or accepted by a master that no longer greets or answers.
        self.assertRegex(m.group(1), r"refused|reset|closed|no greeting|did not answer")
        # fall x interval, plus Dovecot's own ~1 s shutdown, plus noise.
        self.assertLess(down_after, FALL * INTERVAL * 1.2 + 3)
        # A refused node costs the client nothing: the login moves on.
        self.assertLessEqual(failed, 2)
        self.assertGreater(loop_attempts, 5)
        # Once down, no login tries it (but one already routed may still).
        after_down = self.ix.log_text()[down_at:]
        self.assertLessEqual(len(re.findall(r"node=a-left: the node", after_down)), 2)
        mark2 = len(self.log())
        for _ in range(6):
            self.login().logout()
        self.assertEqual(self.nodes_logged_in(mark2), ["a-right"] * 6)
        self.assertNotIn("node=a-left", self.log(mark2))

        left.start()
        started = time.monotonic()
        self.wait_log(rf"health: node a-left up again after {RISE} good checks", mark2,
                      timeout=RISE * DOWN_INTERVAL * 1.2 + 10)
        print(f"FAILOVER node stopped: back up {time.monotonic() - started:.2f}s after the "
              f"node was listening again", flush=True)
        self.both_nodes_take_logins()

    def test_a_frozen_node_goes_down_by_timeouts_and_logins_skip_it(self):
        left = self.lab.node("a-left")
        with LoginLoop(self.port) as loop:
            time.sleep(0.5)
            mark = len(self.log())
            failed_at = time.monotonic()
            left.pause()  # SIGSTOP: the kernel accepts, nobody greets
            try:
                m = self.wait_log(r"health: node a-left down: 2 failed checks: (.*)", mark,
                                  timeout=FALL * (INTERVAL * 1.2 + TIMEOUT) + 5)
                down_after = time.monotonic() - failed_at
                down_at = mark + m.start()
                time.sleep(1.5)
            except BaseException:
                left.resume()
                raise
        try:
            bad_tries = len(re.findall(r"node=a-left: the node", self.log(mark)))
            failed = self.report("node frozen (SIGSTOP, black hole)", loop, failed_at, down_after,
                                 bad_tries)
            self.assertRegex(m.group(1), r"no greeting within|did not answer")
            self.assertLess(down_after, FALL * (INTERVAL * 1.2 + TIMEOUT) + 3)
            self.assertLessEqual(failed, 2)
            after_down = self.ix.log_text()[down_at:]
            self.assertLessEqual(len(re.findall(r"node=a-left: ", after_down)), 2)
            # While down, logins go straight to a-right: none waits on the
            # frozen node's 1 s greeting deadline.
            mark2 = len(self.log())
            times = []
            for _ in range(6):
                t = time.monotonic()
                self.login().logout()
                times.append(time.monotonic() - t)
            self.assertEqual(self.nodes_logged_in(mark2), ["a-right"] * 6)
            self.assertTrue(all(t < 0.9 for t in times), times)
        finally:
            left.resume()
        self.wait_log(rf"health: node a-left up again after {RISE} good checks", mark,
                      timeout=RISE * DOWN_INTERVAL * 1.2 + 10)
        self.both_nodes_take_logins()

    def test_a_drained_node_keeps_its_sessions_and_gets_no_new_ones(self):
        mark = len(self.log())
        held = [self.login() for _ in range(2)]
        try:
            nodes = self.nodes_logged_in(mark)
            self.assertEqual(sorted(nodes), ["a-left", "a-right"])
            on_left = held[nodes.index("a-left")]
            self.ix.config["islands"][0]["nodes"][0]["drain"] = True
            self.assertEqual(self.ix.config["islands"][0]["nodes"][0]["name"], "a-left")
            self.ix.write_files()
            mark = len(self.log())
            self.ix.reload()
            self.wait_log(r"node a-left draining \(config\): no new sessions; its open sessions "
                          r"\(1\) stay",
                          mark, timeout=10)
            # New sessions go elsewhere, even though a-left has fewer.
            fresh = [self.login() for _ in range(3)]
            self.assertEqual(self.nodes_logged_in(mark), ["a-right"] * 3)
            for m in fresh:
                m.logout()
            # The existing session on a-left goes on.
            self.assertEqual(on_left.select("INBOX")[0], "OK")
            self.assertEqual(on_left.noop()[0], "OK")
            # Undrained: it takes new sessions again.
            self.ix.config["islands"][0]["nodes"][0]["drain"] = False
            self.ix.write_files()
            mark = len(self.log())
            self.ix.reload()
            self.wait_log(r"node a-left no longer draining", mark, timeout=10)
            more = [self.login() for _ in range(2)]
            for m in more:
                m.logout()
            self.assertEqual(sorted(self.nodes_logged_in(mark)), ["a-left", "a-right"])
        finally:
            for m in held:
                m.logout()


class ActivePassive(unittest.TestCase):
    """Island a as an active-passive pair: the role holder gets every
    session; when it goes down the role moves (one epoch on) and traffic
    follows; when it comes back the role stays where it is (no flapping)."""

    @classmethod
    def setUpClass(cls):
        cls.lab = Lab()
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()

    def test_sessions_on_a_node_marked_down_are_closed_spread_out(self):
        # a-left behind a gate that takes no new connections (checks time
        # out, the node goes down) while the relayed sessions through it
        # stay open: Isthmus closes them, at random moments over
        # roles.close_spread, not as one reconnect storm.
        gate = Gate(0, self.lab.node("a-left").port("imap"))
        self.addCleanup(gate.close)
        islands = [dict(i, nodes=[dict(i["nodes"][0], ports={"imap": gate.port})])
                   if i["name"] == "a" else i for i in self.lab.config["islands"]]
        ix = self.lab.start_isthmus(binary(), timeouts={"connect": "1s"}, health=HEALTH,
                                    islands=islands, roles={"close_spread": "2s"})
        self.addCleanup(ix.stop)
        sessions = [imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=15)
                    for _ in range(6)]
        for m in sessions:
            m.login(USER, PASSWORD)
        gate.black_hole()
        closed_at = {}

        def all_closed():
            for i, m in enumerate(sessions):
                if i not in closed_at:
                    try:
                        m.noop()
                    except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error):
                        closed_at[i] = time.monotonic()
            return len(closed_at) == len(sessions)

        wait_for(all_closed, timeout=20, interval=0.05, what="the sessions on a-left to close")
        spread = max(closed_at.values()) - min(closed_at.values())
        print(f"\nDOWN-NODE sessions closed over {spread:.2f}s", flush=True)
        self.assertGreater(spread, 0.5, "the sessions were closed all at once")
        self.assertEqual(ix.log_text().count('ended="closed: node a-left was marked down for imap"'),
                         len(sessions))

    def test_the_role_moves_once_on_failure_and_never_back_by_itself(self):
        config = self.lab.config
        islands = [dict(island, policy="active-passive", active="a-left")
                   if island["name"] == "a" else island for island in config["islands"]]
        ix = self.lab.start_isthmus(binary(), timeouts={"connect": "1s"}, health=HEALTH,
                                    islands=islands)
        self.addCleanup(ix.stop)
        port = ix.port("imap")

        def nodes_used(count: int) -> list[str]:
            mark = len(ix.log_text())
            for _ in range(count):
                m = imaplib.IMAP4("127.0.0.1", port, timeout=15)
                m.login(USER, PASSWORD)
                m.logout()
            return re.findall(r"login ok user=\S+ island=a node=(\S+)", ix.log_text()[mark:])

        # Balance would spread these; the holder takes them all.
        self.assertEqual(nodes_used(4), ["a-left"] * 4)
        left = self.lab.node("a-left")
        mark = len(ix.log_text())
        left.stop()
        try:
            wait_for(lambda: "role: island a: the active role moves from a-left" in
                     ix.log_text()[mark:], timeout=FALL * INTERVAL * 1.2 + 5, interval=0.05,
                     what="the role to move")
            self.assertIn("to a-right, epoch 2", ix.log_text()[mark:])
            self.assertEqual(nodes_used(3), ["a-right"] * 3)
        finally:
            left.start()
        wait_for(lambda: re.search(r"node a-left up again", ix.log_text()[mark:]),
                 timeout=RISE * DOWN_INTERVAL * 2 + 5, interval=0.05, what="a-left back up")
        time.sleep(2 * INTERVAL)
        # No failback: a-left is healthy, but a-right keeps the role.
        self.assertEqual(nodes_used(3), ["a-right"] * 3)
        self.assertEqual(ix.log_text()[mark:].count("the active role moves"), 1)


def admin_get(ix, path: str) -> str:
    """GET PATH from the admin API on the instance's unix socket."""
    sock = os.path.join(ix.run_dir, "admin.sock")
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--unix-socket", sock,
                          f"http://isthmus{path}"], capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise AssertionError(f"curl {path}: {out.stderr}")
    return out.stdout


class PerProtocol(unittest.TestCase):
    """One protocol of a node fails alone, as when DBMail's (or a split
    Cyrus') imapd dies and its pop3d lives on: the node goes down for IMAP
    only. Its IMAP sessions are closed, its POP3 sessions stay, new IMAP
    logins go to the other node while POP3 logins still reach it; the admin
    API and the metrics say which protocol is down (issue 16)."""

    @classmethod
    def setUpClass(cls):
        cls.lab = Lab(isthmus_ports={"imap": 0, "pop3": 0})
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()

    def test_a_node_down_for_imap_keeps_its_pop3_sessions(self):
        left = self.lab.node("a-left")
        gate = Gate(0, left.port("imap"), name="a-left-imap")  # only IMAP fails
        self.addCleanup(gate.close)

        def gated(node: dict) -> dict:
            if node["name"] != "a-left":
                return node
            return dict(node, ports=dict(node["ports"], imap=gate.port))

        islands = [dict(i, nodes=[gated(n) for n in i["nodes"]]) if i["name"] == "a" else i
                   for i in self.lab.config["islands"]]
        ix = self.lab.start_isthmus(binary(), timeouts={"connect": "1s"}, health=HEALTH,
                                    islands=islands, roles={"close_spread": "1s"},
                                    admin={"socket": "admin.sock"})
        self.addCleanup(ix.stop)
        wait_for(lambda: os.path.exists(os.path.join(ix.run_dir, "admin.sock")),
                 what="the admin socket")

        def node_of_login(mark: int) -> str:
            found = wait_for(lambda: re.findall(r"login ok user=\S+ island=a node=(\S+)",
                                                ix.log_text()[mark:]),
                             what="the login line")
            self.assertEqual(len(found), 1, found)
            return found[0]

        def imap_login():
            mark = len(ix.log_text())
            m = imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=15)
            m.login(USER, PASSWORD)
            return m, node_of_login(mark)

        def pop3_login():
            mark = len(ix.log_text())
            p = poplib.POP3("127.0.0.1", ix.port("pop3"), timeout=15)
            p.user(USER)
            p.pass_(PASSWORD)
            return p, node_of_login(mark)

        # Balance: both protocols' sessions spread over both nodes.
        imaps = [imap_login() for _ in range(4)]
        pops = [pop3_login() for _ in range(4)]
        for sessions in (imaps, pops):
            self.assertEqual(sorted(n for _, n in sessions), ["a-left"] * 2 + ["a-right"] * 2)

        mark = len(ix.log_text())
        gate.refuse()  # a-left's imapd is gone; its pop3d and lmtpd live on
        wait_for(lambda: re.search(r"health: node a-left down: .*imap: ", ix.log_text()[mark:]),
                 timeout=FALL * INTERVAL * 1.5 + 5, interval=0.05, what="a-left down for imap")

        def imap_alive(m) -> bool:
            try:
                return m.noop()[0] == "OK"
            except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error):
                return False

        # The IMAP sessions on a-left are closed (over close_spread), those
        # on a-right stay.
        wait_for(lambda: not any(imap_alive(m) for m, n in imaps if n == "a-left"), timeout=10,
                 what="a-left's IMAP sessions to close")
        for m, n in imaps:
            if n == "a-right":
                self.assertTrue(imap_alive(m), "an IMAP session on a-right was closed")
                m.logout()
        log = ix.log_text()[mark:]
        self.assertEqual(log.count('ended="closed: node a-left was marked down for imap"'), 2)
        # Every POP3 session is still there, a-left's included.
        time.sleep(1.5)  # past close_spread: nothing else is closed
        for p, n in pops:
            count, _size = p.stat()
            self.assertGreaterEqual(count, 0)
        log = ix.log_text()[mark:]
        self.assertNotRegex(log, r"marked down for (pop3|lmtp)")
        self.assertNotRegex(log, r"health: node a-left down: .*(pop3|lmtp): ")
        # New logins: IMAP to a-right only; POP3 still to a-left too.
        more = [imap_login() for _ in range(3)]
        self.assertEqual([n for _, n in more], ["a-right"] * 3)
        for m, _ in more:
            m.logout()
        extra = [pop3_login() for _ in range(2)]  # as many sessions on each node
        self.assertEqual(sorted(n for _, n in extra), ["a-left", "a-right"])
        for p, _ in extra:
            p.quit()
        # The admin API and the metrics say which protocol is down.
        nodes = {n["name"]: n for n in json.loads(admin_get(ix, "/v1/nodes"))["nodes"]}
        self.assertEqual(nodes["a-left"]["state"], "degraded")
        self.assertEqual(nodes["a-left"]["protocols"], {"imap": "down", "pop3": "up",
                                                         "lmtp": "up"})
        self.assertEqual(nodes["a-right"]["state"], "up")
        metrics = admin_get(ix, "/metrics")
        for protocol, up in (("imap", 0), ("pop3", 1), ("lmtp", 1)):
            self.assertIn(f'isthmus_node_up{{island="a",node="a-left",protocol="{protocol}"}} '
                          f'{up}\n', metrics)
        for p, _ in pops:
            p.quit()
        # IMAP back: the node is up again as a whole.
        gate.pass_through()
        wait_for(lambda: re.search(r"node a-left up again after \d+ good checks? of imap",
                                   ix.log_text()[mark:]),
                 timeout=RISE * DOWN_INTERVAL * 2 + 5, interval=0.05, what="a-left up for imap")
        nodes = {n["name"]: n for n in json.loads(admin_get(ix, "/v1/nodes"))["nodes"]}
        self.assertEqual(nodes["a-left"]["state"], "up")


if __name__ == "__main__":
    unittest.main(verbosity=2)
