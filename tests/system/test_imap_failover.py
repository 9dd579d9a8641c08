"""Nodes that are down: a stopped node (connection refused), a frozen one
(SIGSTOP: accepts TCP, never speaks), a whole island down, and recovery,
against real Dovecot nodes. Also how logins spread over a healthy island."""
import imaplib
import re
import time
import unittest

from support import Lab, PASSWORD, RawImap, binary, wait_for


class Failover(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lab = Lab()
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()

    def setUp(self):
        # A fresh instance per test: what one test taught it about a node
        # (suspect after a failure) must not steer the next test.
        self.ix = self.lab.start_isthmus(binary(), timeouts={"connect": "1s"})
        self.addCleanup(self.ix.stop)
        self.port = self.ix.port("imap")

    def login(self, user="alice@example.org"):
        m = imaplib.IMAP4("127.0.0.1", self.port, timeout=15)
        m.login(user, PASSWORD)
        return m

    def nodes_in_log_since(self, mark: int, user: str) -> list[str]:
        log = self.ix.log_text()[mark:]
        return re.findall(rf"login ok user={re.escape(user)} island=\w+ node=(\S+)", log)

    def test_a_stopped_left_node_is_skipped(self):
        left = self.lab.node("a-left")
        left.stop()
        self.addCleanup(left.start)
        mark = len(self.ix.log_text())
        for _ in range(10):
            m = self.login()
            self.assertEqual(m.select("INBOX")[0], "OK")
            m.logout()
        self.assertEqual(self.nodes_in_log_since(mark, "alice@example.org"), ["a-right"] * 10)
        log = self.ix.log_text()[mark:]
        self.assertIn("node=a-left: the node refused the connection", log)

    def test_a_frozen_left_node_is_skipped_after_its_greeting_deadline(self):
        left = self.lab.node("a-left")
        left.pause()
        self.addCleanup(left.resume)
        mark = len(self.ix.log_text())
        times = []
        for _ in range(6):
            started = time.monotonic()
            m = self.login()
            times.append(time.monotonic() - started)
            m.logout()
        self.assertEqual(self.nodes_in_log_since(mark, "alice@example.org"), ["a-right"] * 6)
        # Only logins that try the frozen node first pay its 1 s greeting
        # deadline; once suspect it is tried last, so the others are fast.
        slow = [t for t in times if t > 0.9]
        self.assertGreaterEqual(len(slow), 1, times)
        self.assertLessEqual(len(slow), 2, times)
        self.assertTrue(all(t < 3 for t in times), times)

    def test_a_whole_island_down_is_a_temporary_failure_and_recovers(self):
        b_nodes = self.lab.island_nodes("b")
        for node in b_nodes:
            node.stop()
        try:
            with RawImap(self.port) as c:
                c.greeting()
                answer = c.command("a", "LOGIN bob@example.org demo")[-1]
                self.assertEqual(
                    answer,
                    b"a NO [UNAVAILABLE] Service temporarily unavailable, please try again later.")
                # The client stays in pre-auth and can try again.
                self.assertEqual(c.command("b", "NOOP")[-1], b"b OK NOOP completed.")
            self.assertRegex(self.ix.log_text(),
                             r"login failed user=bob@example.org island=b .*no node of the island")
            # Island a is not affected.
            self.login().logout()
        finally:
            for node in b_nodes:
                node.start()
        m = self.login("bob@example.org")
        self.assertEqual(m.select("INBOX")[0], "OK")
        m.logout()

    def test_concurrent_sessions_spread_over_the_island(self):
        mark = len(self.ix.log_text())
        sessions = [self.login("carol@example.org") for _ in range(6)]
        try:
            nodes = self.nodes_in_log_since(mark, "carol@example.org")
            self.assertEqual(sorted(nodes), ["a-left"] * 3 + ["a-right"] * 3)
        finally:
            for m in sessions:
                m.logout()


if __name__ == "__main__":
    unittest.main(verbosity=2)
