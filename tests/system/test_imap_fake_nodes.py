"""Node behaviours a real Dovecot will not produce on demand, played by
scripted fake nodes: what the client is told, what the node is sent, and
that Isthmus moves on to the next node when it should (and only then)."""
import imaplib
import re
import unittest

from support import FakeImapNode, RawImap, fake_config, plain, start_isthmus, wait_for

USERS_MAP = "user@example.org main\n"
TEMPFAIL = b"a NO [UNAVAILABLE] Service temporarily unavailable, please try again later."
AUTHFAIL = b"a NO [AUTHENTICATIONFAILED] Authentication failed."


class FakeNodes(unittest.TestCase):
    def island(self, *behaviours):
        """Starts fake nodes (in this order) as island "main" and isthmus in
        front; returns (port, nodes). The router rotates between equally
        loaded nodes, so tests that need an order use one login per
        fresh instance or check both outcomes."""
        nodes = [FakeImapNode(b) for b in behaviours]
        for n in nodes:
            self.addCleanup(n.close)
        config = fake_config({"main": [(f"n{i}-{n.behaviour}", n.port)
                                       for i, n in enumerate(nodes)]})
        ix = start_isthmus(config, USERS_MAP)
        self.addCleanup(ix.stop)
        self.ix = ix
        return ix.port("imap"), nodes

    def login(self, port, password="good"):
        with RawImap(port) as c:
            c.greeting()
            return c.command("a", f"LOGIN user@example.org {password}")[-1]

    def test_credentials_go_as_sasl_plain_when_the_node_offers_it(self):
        port, (node,) = self.island("dovecot_like")
        self.assertTrue(self.login(port).startswith(b"a OK [CAPABILITY IMAP4rev1 FAKE-POSTLOGIN]"))
        sent = node.received[0]
        self.assertIn(b"AUTHENTICATE PLAIN " + plain("user@example.org", "good").encode(), sent)
        self.assertNotIn(b"LOGIN", sent)

    def test_credentials_go_as_synchronising_literals_to_an_old_node(self):
        port, (node,) = self.island("plain_old")
        answer = self.login(port, password='"we ird"')  # quoted by the client
        # The node's OK had no capabilities: Isthmus asked for them.
        self.assertEqual(answer, b"a OK [CAPABILITY IMAP4rev1 FAKE-POSTLOGIN] Logged in")
        sent = node.received[0]
        self.assertIn(b"LOGIN {16}\r\nuser@example.org {6}\r\nwe ird\r\n", sent)

    def test_the_nodes_refusal_text_never_reaches_the_client(self):
        port, _ = self.island("says_no_with_detail")
        self.assertEqual(self.login(port), AUTHFAIL)
        self.assertIn("internal detail: ldap3 down", self.ix.log_text())  # but the log has it

    def test_a_wrong_password_is_not_retried_on_the_other_node(self):
        port, nodes = self.island("dovecot_like", "dovecot_like")
        self.assertEqual(self.login(port, password="bad"), AUTHFAIL)
        self.assertEqual(sum(n.connections for n in nodes), 1)

    def test_dead_or_broken_nodes_are_skipped(self):
        for broken in ("banner_hangs", "bye_greeting", "garbage_greeting", "says_unavailable",
                       "refuses_plaintext", "not_imap", "answers_before_asked"):
            with self.subTest(broken=broken):
                port, (bad, good) = self.island(broken, "dovecot_like")
                # Whichever node the router picks first, the login works.
                for _ in range(2):
                    self.assertTrue(self.login(port).startswith(b"a OK "))
                self.assertGreaterEqual(bad.connections, 1)
                self.assertRegex(self.ix.log_text(), rf"node=n0-{broken}: .*trying the next node")

    def test_a_node_that_answers_before_it_is_asked_is_not_believed(self):
        port, (node,) = self.island("answers_before_asked")
        self.assertEqual(self.login(port), TEMPFAIL)
        # Not a byte of the credentials went to it.
        self.assertNotIn(b"AUTHENTICATE", node.received[0])
        self.assertIn("bytes nobody asked for", self.ix.log_text())

    def test_a_referral_is_a_temporary_failure_and_authorization_keeps_its_code(self):
        port, _ = self.island("refers")
        self.assertEqual(self.login(port), TEMPFAIL)
        self.assertIn("REFERRAL imap://user@other.example/", self.ix.log_text())
        port, _ = self.island("not_authorized")
        self.assertEqual(self.login(port), b"a NO [AUTHORIZATIONFAILED] Authorization failed.")
        with RawImap(port) as c:  # LOGIN-REFERRALS is not offered: referrals are not forwarded
            self.assertNotIn(b"LOGIN-REFERRALS", c.greeting())

    def test_only_broken_nodes_give_a_temporary_failure(self):
        port, nodes = self.island("bye_greeting", "garbage_greeting")
        self.assertEqual(self.login(port), TEMPFAIL)
        self.assertEqual(sorted(n.connections for n in nodes), [1, 1])
        self.assertIn("no node left to try", self.ix.log_text())

    def test_a_node_that_drops_a_login_after_the_credentials_fails_that_login_only(self):
        # What the client sent may be why the node gave up (Dovecot drops
        # an oversized AUTHENTICATE): that login gets a temporary failure,
        # the other node is not tried with the same bytes, and the node is
        # not reported (it stays a candidate: no "suspect" ordering).
        port, (bad, good) = self.island("closes_after_login", "dovecot_like")
        answers = [self.login(port) for _ in range(4)]
        self.assertTrue(all(a == TEMPFAIL or a.startswith(b"a OK ") for a in answers), answers)
        self.assertEqual(answers.count(TEMPFAIL), bad.connections, answers)
        self.assertGreaterEqual(bad.connections, 2, "a dropping node must not become suspect")
        log = self.ix.log_text()
        self.assertIn("the node gave up on the login after it received the client's credentials",
                      log)
        self.assertNotRegex(log, r"node=n0-closes_after_login: .*trying the next node")

    def test_bytes_the_node_sends_after_its_ok_reach_the_client_in_order(self):
        port, _ = self.island("sends_extra_after_ok")
        with RawImap(port) as c:
            c.greeting()
            lines = c.command("a", "LOGIN user@example.org good")
            self.assertTrue(lines[-1].startswith(b"a OK [CAPABILITY IMAP4rev1 FAKE]"))
            self.assertEqual(c.line(), b"* 5 EXISTS")
            self.assertEqual(c.command("b", "NOOP")[-1], b"b OK fake NOOP done")

    def test_pipelined_commands_reach_the_node_in_order_after_login(self):
        port, (node,) = self.island("dovecot_like")
        with RawImap(port) as c:
            c.greeting()
            c.send("a LOGIN user@example.org good\r\nb SELECT INBOX\r\nc NOOP\r\nd LOGOUT\r\n")
            data = c.read_until_closed()
        self.assertIn(b"b OK fake SELECT done\r\nc OK fake NOOP done\r\nd OK fake LOGOUT done", data)
        after_login = node.received[0].split(b"\r\n", 1)[1]
        self.assertEqual(after_login, b"b SELECT INBOX\r\nc NOOP\r\nd LOGOUT\r\n")

    def test_an_unknown_user_never_reaches_a_node(self):
        port, (node,) = self.island("dovecot_like")
        with RawImap(port) as c:
            c.greeting()
            self.assertEqual(c.command("a", "LOGIN stranger@example.org good")[-1], AUTHFAIL)
        self.assertEqual(node.connections, 0)

    def test_imaplib_against_an_old_node(self):
        port, _ = self.island("plain_old")
        m = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        self.assertEqual(m.login("user@example.org", "good")[0], "OK")
        self.assertEqual(m.noop()[0], "OK")
        m.logout()
        wait_for(lambda: re.search(r"ended=\"(node|client) closed\"", self.ix.log_text()),
                 what="the session-end line")


if __name__ == "__main__":
    unittest.main(verbosity=2)
