"""The POP3 front door end to end: real Dovecot nodes in two islands (the
lab), the real isthmus binary, Python's poplib as the client we did not
write and a raw socket for byte-exact cases; scripted fake POP3 nodes for
what Dovecot will not do on demand."""
import os
import poplib
import random
import re
import socket
import tempfile
import threading
import time
import unittest

from support import (FakePop3Node, Lab, ODD_PASSWORD, ODD_USER, PASSWORD, RawPop3, binary,
                     fake_pop3_config, make_message, plain, procs, session_end_lines, session_of,
                     start_isthmus, wait_for)
from lab.tls import make_ca  # noqa: E402  (support puts tests/ on the path)

AUTHFAIL = b"-ERR [AUTH] Authentication failed."
TEMPFAIL = b"-ERR [SYS/TEMP] Service temporarily unavailable, please try again later."
IN_USE = b"-ERR [IN-USE] Mailbox is in use, please try again later."
PRIVACY = (b"-ERR [AUTH] Plaintext authentication is disallowed on non-secure connections; "
           b"use STLS.")
GREETING = b"+OK Isthmus ready."
CAPA_BEFORE_LOGIN = (b"+OK Capability list follows\r\nCAPA\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\n"
                     b"AUTH-RESP-CODE\r\nPIPELINING\r\nTOP\r\nUIDL\r\nIMPLEMENTATION Isthmus\r\n"
                     b".\r\n")

# bob's only message, on island b; a decoy for him on island a. Lines that
# start with "." must be dot-stuffed on the wire and come out intact.
DOTTY_BODY = "first line\n.starts with a dot\n..two dots\n.\n. \nlast line\n"
BOB_MESSAGE = make_message("home of bob is b", DOTTY_BODY)

LAB = None

# What the node itself answers after login (relayed byte for byte): the
# texts differ between the kinds of node.
NODE_REPLIES = {
    "dovecot": {"retr": b"+OK %d octets", "quit": b"+OK Logging out.", "capa": b"+OK",
                "list": b"+OK 1 messages:"},
    "cyrus": {"retr": b"+OK Message follows", "quit": b"+OK",
              "capa": b"+OK List of capabilities follows", "list": b"+OK scan listing follows"},
}


def node_says(what: str, size: int = 0) -> bytes:
    text = NODE_REPLIES[LAB.kind][what]
    return text % size if b"%d" in text else text


def setUpModule():
    global LAB
    LAB = Lab(isthmus_ports={"imap": 0, "pop3": 0})
    unittest.addModuleCleanup(LAB.close)
    LAB.start()
    LAB.put_message("bob@example.org", BOB_MESSAGE)
    LAB.put_message("bob@example.org", make_message("decoy on a", "x\n"), island="a")
    LAB.put_message("alice@example.org", make_message("home of alice is a", "hello\n"))
    LAB.put_message(ODD_USER, make_message(f"home of {ODD_USER} is a", "hello\n"))


def start_own_isthmus(**overrides):
    """An isthmus of its own (fresh pop3 port, own counters and node state)
    next to the shared one."""
    listeners = [{"name": "pop3", "protocol": "pop3", "address": "127.0.0.1",
                  "port": procs.free_port()}]
    return LAB.start_isthmus(binary(), listeners=overrides.pop("listeners", listeners),
                             **overrides)


def in_parallel(*calls):
    """Runs CALLS in threads, waits for all; re-raises the first exception."""
    errors = []

    def run(call):
        try:
            call()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def poplib_logs_in(port, user="alice@example.org", password=PASSWORD):
    """A poplib session through PORT, logged in; the caller quits."""
    p = poplib.POP3("127.0.0.1", port, timeout=10)
    p.user(user)
    p.pass_(password)
    return p


# -- against real Dovecot nodes ----------------------------------------------

class Pop3FrontDoor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ix = LAB.start_isthmus(binary())
        cls.port = cls.ix.port("pop3")

    def pop(self) -> poplib.POP3:
        p = poplib.POP3("127.0.0.1", self.port, timeout=10)
        self.addCleanup(self._quit, p)
        return p

    @staticmethod
    def _quit(p):
        try:
            p.quit()
        except Exception:
            pass

    def raw(self, **kwargs) -> RawPop3:
        c = RawPop3(self.port, **kwargs)
        self.addCleanup(c.close)
        self.assertEqual(c.greeting(), GREETING)
        return c

    # -- routing and relay

    def test_poplib_user_pass_retrieves_the_message_of_the_users_island(self):
        p = self.pop()
        self.assertEqual(p.getwelcome(), GREETING)
        self.assertEqual(p.user("bob@example.org"), b"+OK")
        self.assertEqual(p.pass_(PASSWORD), b"+OK Logged in.")
        # Only the message of island b's store: the decoy on a is not there.
        self.assertEqual(p.stat(), (1, len(BOB_MESSAGE)))
        resp, lines, _ = p.retr(1)
        self.assertTrue(resp.startswith(b"+OK"), resp)
        # poplib undoes the dot-stuffing: what it got is the message, intact.
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", BOB_MESSAGE)

    def test_dot_stuffed_lines_cross_byte_for_byte(self):
        c = self.raw()
        self.assertEqual(c.log_in("bob", PASSWORD), b"+OK Logged in.")
        self.assertEqual(c.command("RETR 1"), node_says("retr", len(BOB_MESSAGE)))
        body = c.multiline()
        self.assertEqual(body[-7:], [b"", b"first line", b"..starts with a dot", b"...two dots",
                                     b"..", b".. ", b"last line"])
        self.assertEqual(c.command("TOP 1 0")[:3], b"+OK")
        self.assertIn(b"Subject: home of bob is b", c.multiline())
        self.assertEqual(c.command("QUIT"), node_says("quit"))
        self.assertTrue(c.is_closed())

    def test_a_large_message_is_relayed_intact(self):
        body = "".join(f".{i:06d} " + "0123456789abcdef" * 4 + "\n" for i in range(15000))
        msg = make_message("big one", body)  # ~1 MB, every line dot-stuffed on the wire
        LAB.put_message("dave@example.org", msg)
        p = poplib_logs_in(self.port, "dave@example.org")
        self.addCleanup(self._quit, p)
        count, _ = p.stat()
        _, lines, _ = p.retr(count)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", msg)

    def test_after_login_the_client_talks_to_the_node(self):
        c = self.raw()
        self.assertEqual(c.log_in("alice", PASSWORD), b"+OK Logged in.")
        # Dovecot's post-login CAPA: no USER/SASL, no "IMPLEMENTATION Isthmus".
        self.assertEqual(c.command("CAPA"), node_says("capa"))
        caps = c.multiline()
        self.assertIn(b"UIDL", caps)
        self.assertNotIn(b"IMPLEMENTATION Isthmus", caps)
        self.assertNotIn(b"USER", caps)
        self.assertEqual(c.command("UIDL")[:3], b"+OK")
        self.assertEqual(len(c.multiline()), 1)
        # Errors are Dovecot's now, not Isthmus' "Log in first."
        self.assertEqual(c.command("FROB")[:4], b"-ERR")
        self.assertNotEqual(c.command("RETR 99"), b"-ERR Log in first.")

    # -- before login

    def test_the_greeting_and_capa_before_login(self):
        c = self.raw()
        c.send("CAPA\r\n")
        expected = CAPA_BEFORE_LOGIN.split(b"\r\n")[:-1]
        self.assertEqual([c.line() for _ in expected], expected)
        p = self.pop()
        self.assertEqual(p.capa(), {"CAPA": [], "USER": [], "SASL": ["PLAIN"], "RESP-CODES": [],
                                    "AUTH-RESP-CODE": [], "PIPELINING": [], "TOP": [],
                                    "UIDL": [], "IMPLEMENTATION": ["Isthmus"]})
        self.assertEqual(p.noop(), b"+OK")

    def test_commands_before_login(self):
        c = self.raw()
        for command in ("STAT", "LIST", "RETR 1", "DELE 1", "RSET", "TOP 1 0", "UIDL", "LAST"):
            self.assertEqual(c.command(command), b"-ERR Log in first.", command)
        self.assertEqual(c.command("NOOP"), b"+OK")
        self.assertEqual(c.command("noop"), b"+OK")
        self.assertEqual(c.command("APOP alice 0123456789abcdef0123456789abcdef"),
                         b"-ERR APOP is not supported; use USER/PASS or AUTH PLAIN.")
        self.assertEqual(c.command("STLS"), b"-ERR STLS is not available.")
        self.assertEqual(c.command("FROB"), b"-ERR Unknown command.")
        # Only Isthmus may tell a node who the client is.
        self.assertEqual(c.command("XCLIENT ADDR=192.0.2.1 PORT=1"), b"-ERR Unknown command.")
        self.assertEqual(c.command("USER"), b"-ERR USER needs a name.")
        self.assertEqual(c.command("PASS demo"), b"-ERR No user name given; USER first.")
        self.assertEqual(c.command("AUTH"), b"+OK")
        self.assertEqual(c.multiline(), [b"PLAIN"])
        self.assertEqual(c.command("QUIT"), b"+OK Logging out.")
        self.assertTrue(c.is_closed())
        wait_for(lambda: any(e.get("ended") == "client logged out before login"
                             and e["client"].endswith(f":{c.local_port}")
                             for e in session_end_lines(self.ix.log_text())),
                 what="the session-end line")

    # -- credentials

    def test_auth_plain_with_initial_response(self):
        c = self.raw()
        self.assertEqual(c.command("AUTH PLAIN " + plain("bob@example.org", PASSWORD)),
                         b"+OK Logged in.")
        self.assertEqual(c.command("STAT"), b"+OK 1 %d" % len(BOB_MESSAGE))

    def test_auth_plain_without_initial_response(self):
        c = self.raw()
        self.assertEqual(c.command("AUTH PLAIN"), b"+ ")
        self.assertEqual(c.command(plain("bob", PASSWORD)), b"+OK Logged in.")
        self.assertEqual(c.command("STAT"), b"+OK 1 %d" % len(BOB_MESSAGE))
        # The same, the response pipelined behind the command.
        c = self.raw()
        c.send("AUTH PLAIN\r\n" + plain("bob", PASSWORD) + "\r\nSTAT\r\n")
        self.assertEqual([c.line() for _ in range(3)],
                         [b"+ ", b"+OK Logged in.", b"+OK 1 %d" % len(BOB_MESSAGE)])

    def test_auth_plain_with_an_authorization_identity_equal_to_the_user(self):
        c = self.raw()
        self.assertEqual(c.command("auth plain " + plain("bob@example.org", PASSWORD,
                                                         authzid="bob@example.org")),
                         b"+OK Logged in.")
        self.assertEqual(c.command("STAT"), b"+OK 1 %d" % len(BOB_MESSAGE))

    def test_auth_cancelled_with_a_star(self):
        c = self.raw()
        self.assertEqual(c.command("AUTH PLAIN"), b"+ ")
        self.assertEqual(c.command("*"), b"-ERR Authentication cancelled.")
        self.assertEqual(c.command("NOOP"), b"+OK")
        self.assertEqual(c.command("AUTH PLAIN " + plain("alice", PASSWORD)), b"+OK Logged in.")

    def test_auth_with_bad_data(self):
        c = self.raw()
        self.assertEqual(c.command("AUTH PLAIN !!!!"), b"-ERR Invalid base64 data.")
        self.assertEqual(c.command("AUTH PLAIN"), b"+ ")
        self.assertEqual(c.command("not base64 at all"), b"-ERR Invalid base64 data.")
        self.assertEqual(c.command("AUTH PLAIN ="), b"-ERR Invalid SASL PLAIN message.")
        self.assertEqual(c.command("AUTH PLAIN dXNlcgBwYXNz"),  # "user\0pass": one NUL
                         b"-ERR Invalid SASL PLAIN message.")
        self.assertEqual(c.command("AUTH CRAM-MD5"), b"-ERR Unsupported authentication mechanism.")
        self.assertEqual(c.command("AUTH PLAIN " + plain("alice", PASSWORD)), b"+OK Logged in.")

    def test_passwords_with_spaces_quotes_and_backslashes(self):
        # PASS takes the rest of the line, spaces and all.
        p = poplib_logs_in(self.port, ODD_USER, ODD_PASSWORD)
        self.addCleanup(self._quit, p)
        self.assertEqual(p.stat()[0], 1)
        c = self.raw()
        self.assertEqual(c.command("AUTH PLAIN " + plain(ODD_USER, ODD_PASSWORD)),
                         b"+OK Logged in.")

    def test_wrong_then_right_password_on_one_connection(self):
        p = self.pop()
        p.user("alice@example.org")
        with self.assertRaises(poplib.error_proto) as failed:
            p.pass_("Wr0ng-passw0rd")
        self.assertEqual(failed.exception.args[0], AUTHFAIL)
        p.user("alice@example.org")
        self.assertEqual(p.pass_(PASSWORD), b"+OK Logged in.")
        self.assertEqual(p.stat()[0], 1)

    def test_an_unknown_user_gets_the_same_answer_as_a_wrong_password(self):
        answers = []
        for user, password in (("alice@example.org", "nope"), ("nobody@example.org", PASSWORD),
                               ("bad\x7fname", PASSWORD)):
            c = self.raw()
            answers.append(c.log_in(user, password))
            self.assertEqual(c.command("NOOP"), b"+OK")  # still in pre-auth
        self.assertEqual(answers, [AUTHFAIL] * 3)

    # -- pipelining

    def test_pipelined_login_stat_quit(self):
        c = self.raw()
        c.send("USER bob\r\nPASS demo\r\nSTAT\r\nQUIT\r\n")
        data = c.read_until_closed()
        self.assertEqual(data, b"+OK\r\n+OK Logged in.\r\n+OK 1 %d\r\n" % len(BOB_MESSAGE)
                         + node_says("quit") + b"\r\n")

    def test_pipelined_auth_plain_retr_list(self):
        c = self.raw()
        c.send("AUTH PLAIN " + plain("bob", PASSWORD) + "\r\nRETR 1\r\nLIST\r\nQUIT\r\n")
        self.assertEqual(c.line(), b"+OK Logged in.")
        self.assertEqual(c.line(), node_says("retr", len(BOB_MESSAGE)))
        self.assertEqual(c.multiline()[-1], b"last line")
        self.assertEqual(c.line(), node_says("list"))
        self.assertEqual(c.multiline(), [b"1 %d" % len(BOB_MESSAGE)])
        self.assertEqual(c.line(), node_says("quit"))
        self.assertTrue(c.is_closed())

    # -- what the node sees

    def node_login(self, session: str) -> dict:
        def find():
            for node in LAB.nodes.values():
                for login in node.logins():
                    if login.get("session") == session:
                        return dict(login, node=node.name)
            return None
        return wait_for(find, what=f"the node's login line for session {session}")

    def test_the_node_sees_the_clients_port_and_isthmus_session_id(self):
        c = self.raw()
        self.assertEqual(c.log_in("alice", PASSWORD), b"+OK Logged in.")
        session = wait_for(lambda: session_of(self.ix.log_text(), c.local_port),
                           what="the login line")
        login = self.node_login(session)
        self.assertTrue(login["ok"], login)
        self.assertEqual(login["service"], "pop3-login")
        self.assertIn(login["node"], ("a-left", "a-right"))
        self.assertEqual(login["user"], "alice@example.org")
        self.assertEqual(login["rip"], "127.0.0.1")
        self.assertEqual(login["rport"], str(c.local_port))
        self.assertEqual(login["real_rip"], "127.0.0.1")
        self.assertNotEqual(login["real_rport"], login["rport"])  # Isthmus' own port

    def test_the_node_sees_the_clients_address(self):
        c = self.raw(source="127.0.0.5")
        self.assertEqual(c.command("AUTH PLAIN " + plain("bob", PASSWORD)), b"+OK Logged in.")
        log = wait_for(lambda: re.search(rf"session=(\S+) login ok user=bob@example.org .* "
                                         rf"client=127\.0\.0\.5:{c.local_port} ",
                                         self.ix.log_text()), what="the login line")
        login = self.node_login(log.group(1))
        self.assertIn(login["node"], ("b-left", "b-right"))
        self.assertEqual((login["rip"], login["rport"]), ("127.0.0.5", str(c.local_port)))
        self.assertEqual(login["real_rip"], "127.0.0.1")

    # -- the log

    def test_one_log_line_per_session_end_and_never_a_password(self):
        p = poplib_logs_in(self.port, ODD_USER, ODD_PASSWORD)
        p.stat()
        p.quit()
        c = self.raw()
        self.assertEqual(c.command("AUTH PLAIN " + plain("nobody", "AlsoSecret99")), AUTHFAIL)
        self.assertEqual(c.log_in("alice", "Secret-Wrong-77"), AUTHFAIL)
        c.close()

        def ended():
            return [e for e in session_end_lines(self.ix.log_text())
                    if e.get("user") == ODD_USER]
        end = wait_for(ended, what="erin's session-end line")[-1]
        log = self.ix.log_text()
        for secret in (ODD_PASSWORD, "AlsoSecret99", "Secret-Wrong-77"):
            self.assertNotIn(secret, log)
        sessions = [e["session"] for e in session_end_lines(log)]
        self.assertEqual(len(sessions), len(set(sessions)), "a session ended twice")
        self.assertEqual(end["proto"], "pop3")
        # After QUIT both sides close: whichever Isthmus notices first.
        self.assertIn(end["ended"], ("node closed", "client closed"))
        self.assertEqual(end["island"], "a")
        self.assertIn(end["node"], ("a-left", "a-right"))
        self.assertTrue(end["client"].startswith("127.0.0.1:"))
        self.assertGreater(int(end["in"]), 0)
        self.assertGreater(int(end["out"]), 0)
        self.assertRegex(end["duration"], r"^\d+\.\d{3}s$")


class Pop3PlaintextPolicy(unittest.TestCase):
    """Without TLS, passwords are only taken from trusted networks or on a
    listener that allows plaintext."""

    def test_no_plaintext_from_an_untrusted_client(self):
        ix = start_own_isthmus(trusted_networks=[])
        self.addCleanup(ix.stop)
        with RawPop3(ix.port("pop3")) as c:
            self.assertEqual(c.greeting(), GREETING)
            c.send("CAPA\r\n")
            self.assertEqual(c.line(), b"+OK Capability list follows")
            self.assertEqual(c.multiline(), [b"CAPA", b"RESP-CODES", b"AUTH-RESP-CODE",
                                             b"PIPELINING", b"TOP", b"UIDL",
                                             b"IMPLEMENTATION Isthmus"])
            self.assertEqual(c.command("USER alice"), PRIVACY)
            self.assertEqual(c.command("PASS demo"), PRIVACY)
            self.assertEqual(c.command("AUTH PLAIN " + plain("alice", PASSWORD)), PRIVACY)
            self.assertEqual(c.command("AUTH PLAIN"), PRIVACY)  # no "+ ": no password asked
            self.assertEqual(c.command("AUTH"), b"+OK")
            self.assertEqual(c.multiline(), [])
            self.assertEqual(c.command("AUTH CRAM-MD5"),
                             b"-ERR Unsupported authentication mechanism.")
            self.assertEqual(c.command("NOOP"), b"+OK")
        self.assertNotIn("login ok", ix.log_text())

    def test_a_listener_that_allows_plaintext(self):
        port = procs.free_port()
        ix = start_own_isthmus(trusted_networks=[], listeners=[
            {"name": "pop3", "protocol": "pop3", "address": "127.0.0.1", "port": port,
             "allow_plaintext_auth": True}])
        self.addCleanup(ix.stop)
        p = poplib.POP3("127.0.0.1", port, timeout=10)
        self.assertEqual(p.capa()["SASL"], ["PLAIN"])
        p.user("alice")
        self.assertEqual(p.pass_(PASSWORD), b"+OK Logged in.")
        self.assertEqual(p.stat()[0], 1)
        p.quit()


class Pop3Stls(unittest.TestCase):
    """STLS on a listener with a certificate: offered before TLS, and after
    it the client may send a password even from an untrusted network."""

    @classmethod
    def setUpClass(cls):
        cls.ca = make_ca(os.path.join(LAB.root, "pki-pop3"))
        cls.cert = cls.ca.issue("isthmus", dns=["isthmus.lab.test"], ips=["127.0.0.1"])

    def start(self, **overrides):
        port = procs.free_port()
        ix = start_own_isthmus(
            tls={"certificate": self.cert.cert_path, "key": self.cert.key_path},
            listeners=[{"name": "pop3", "protocol": "pop3", "address": "127.0.0.1",
                        "port": port, "tls": "starttls"}], **overrides)
        self.addCleanup(ix.stop)
        c = RawPop3(port)
        self.addCleanup(c.close)
        self.assertEqual(c.greeting(), GREETING)
        return ix, c

    def stls(self, c: RawPop3):
        self.assertEqual(c.command("STLS"), b"+OK Begin TLS negotiation now.")
        self.assertEqual(c.buf, b"")
        c.sock = self.ca.context().wrap_socket(c.sock, server_hostname="isthmus.lab.test")

    def test_stls_then_plaintext_auth_from_an_untrusted_client(self):
        ix, c = self.start(trusted_networks=[])
        c.send("CAPA\r\n")
        self.assertEqual(c.line(), b"+OK Capability list follows")
        self.assertEqual(c.multiline(), [b"CAPA", b"STLS", b"RESP-CODES", b"AUTH-RESP-CODE",
                                         b"PIPELINING", b"TOP", b"UIDL",
                                         b"IMPLEMENTATION Isthmus"])
        self.assertEqual(c.command("USER alice"), PRIVACY)
        self.stls(c)
        c.send("CAPA\r\n")
        self.assertEqual(c.line(), b"+OK Capability list follows")
        caps = c.multiline()
        self.assertEqual(caps[:3], [b"CAPA", b"USER", b"SASL PLAIN"])
        self.assertNotIn(b"STLS", caps)
        self.assertEqual(c.command("STLS"), b"-ERR TLS is already active.")
        self.assertEqual(c.log_in("alice", PASSWORD), b"+OK Logged in.")
        self.assertEqual(c.command("STAT")[:5], b"+OK 1")
        self.assertEqual(c.command("QUIT"), node_says("quit"))
        c.close()  # the node closed after QUIT; the session ends when the client does too
        end = wait_for(lambda: [e for e in session_end_lines(ix.log_text())
                                if e.get("user") == "alice@example.org"], what="the end line")
        self.assertNotEqual(end[-1]["tls"], "-")

    def test_what_was_said_before_stls_is_forgotten(self):
        _, c = self.start()
        # The USER before STLS is forgotten (RFC 2595), and a command
        # pipelined behind STLS is dropped, never run after the handshake.
        self.assertEqual(c.command("USER alice"), b"+OK")
        self.stls(c)
        self.assertEqual(c.command("PASS demo"), b"-ERR No user name given; USER first.")
        c.send("STLS\r\nUSER alice\r\n")
        self.assertEqual(c.line(), b"-ERR TLS is already active.")
        self.assertEqual(c.line(), b"+OK")
        _, c = self.start()
        c.send("STLS\r\nUSER alice\r\n")
        self.assertEqual(c.line(), b"+OK Begin TLS negotiation now.")
        c.sock = self.ca.context().wrap_socket(c.sock, server_hostname="isthmus.lab.test")
        self.assertEqual(c.command("PASS demo"), b"-ERR No user name given; USER first.")


class Pop3Failover(unittest.TestCase):
    """Nodes that are down, against real Dovecot nodes: a-left and the whole
    of island b are stopped for this class (in parallel: a Dovecot stop
    takes a second). A fresh isthmus per test, so what one test taught it
    about a node cannot steer the next."""

    @classmethod
    def setUpClass(cls):
        cls.down = [LAB.node("a-left")] + LAB.island_nodes("b")
        in_parallel(*(n.stop for n in cls.down))
        cls.addClassCleanup(in_parallel, *(n.start for n in cls.down))

    def setUp(self):
        self.ix = start_own_isthmus(timeouts={"connect": "1s"})
        self.addCleanup(self.ix.stop)
        self.port = self.ix.port("pop3")

    def logins_since(self, mark: int, user: str) -> list[str]:
        return re.findall(rf"login ok user={re.escape(user)} island=\w+ node=(\S+)",
                          self.ix.log_text()[mark:])

    def test_a_stopped_left_node_is_skipped(self):
        mark = len(self.ix.log_text())
        for _ in range(4):
            p = poplib_logs_in(self.port, "alice")
            self.assertEqual(p.stat()[0], 1)
            p.quit()
        self.assertEqual(self.logins_since(mark, "alice@example.org"), ["a-right"] * 4)
        self.assertIn("node=a-left: the node refused the connection", self.ix.log_text()[mark:])

    def test_a_whole_island_down_is_a_temporary_failure(self):
        with RawPop3(self.port) as c:
            self.assertEqual(c.greeting(), GREETING)
            self.assertEqual(c.log_in("bob", PASSWORD), TEMPFAIL)
            self.assertEqual(c.command("AUTH PLAIN " + plain("bob", PASSWORD)), TEMPFAIL)
            # The client stays in pre-auth and island a is not affected.
            self.assertEqual(c.command("NOOP"), b"+OK")
            self.assertEqual(c.log_in("alice", PASSWORD), b"+OK Logged in.")
            self.assertEqual(c.command("STAT")[:5], b"+OK 1")
        log = self.ix.log_text()
        self.assertRegex(log, r"login failed user=bob@example.org island=b .*no node of the island")
        self.assertIn("node=b-left: the node refused the connection", log)
        self.assertIn("node=b-right: the node refused the connection", log)


class Pop3BadInput(unittest.TestCase):
    """Bad input ends in a protocol error, never in a crash or a hang; the
    process goes on serving."""

    def start(self, **overrides):
        ix = start_own_isthmus(**overrides)
        self.addCleanup(ix.stop)
        return ix

    def still_serving(self, ix):
        self.assertTrue(ix.running())
        p = poplib_logs_in(ix.port("pop3"))
        self.assertEqual(p.stat()[0], 1)
        p.quit()

    def test_garbage_gets_err_and_the_process_survives(self):
        ix = self.start()
        with RawPop3(ix.port("pop3")) as c:
            c.greeting()
            for junk, answer in ((b"\x00\x01\x02\r\n", b"-ERR Unknown command."),
                                 (b"\r\n", b"-ERR Unknown command."),
                                 (b" NOOP\r\n", b"-ERR Unknown command."),
                                 (b"NOOPNOOPNOOP\r\n", b"-ERR Unknown command."),
                                 (b"\xff\xfeUSER x\r\n", b"-ERR Unknown command."),
                                 (b"USER\r\n", b"-ERR USER needs a name."),
                                 (b"user bob\n", b"+OK")):  # bare LF, lower case
                c.send(junk)
                self.assertEqual(c.line(), answer, junk)
            self.assertEqual(c.command("PASS demo"), b"+OK Logged in.")
            self.assertEqual(c.command("STAT"), b"+OK 1 %d" % len(BOB_MESSAGE))
        rng = random.Random(7)
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", ix.port("pop3")), timeout=5) as s:
                s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
                s.shutdown(socket.SHUT_WR)
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass
        self.still_serving(ix)

    def test_a_line_too_long_ends_the_session(self):
        ix = self.start(limits={"max_line": 1024})
        with RawPop3(ix.port("pop3")) as c:
            c.greeting()
            # 1024 characters is the limit, allowed.
            self.assertEqual(c.command(b"NOOP " + b"x" * 1019), b"+OK")
            c.send(b"USER " + b"x" * 5000)  # no line end yet
            self.assertEqual(c.line(), b"-ERR Line too long.")
            self.assertTrue(c.is_closed())
        with RawPop3(ix.port("pop3")) as c:
            c.greeting()
            self.assertEqual(c.command(b"NOOP " + b"x" * 1020), b"-ERR Line too long.")
            self.assertTrue(c.is_closed())
        with RawPop3(ix.port("pop3")) as c:  # in the AUTH continuation, too
            c.greeting()
            self.assertEqual(c.command("AUTH PLAIN"), b"+ ")
            self.assertEqual(c.command(b"A" * 2000), b"-ERR Line too long.")
            self.assertTrue(c.is_closed())
        wait_for(lambda: [e["ended"] for e in session_end_lines(ix.log_text())].count(
            "client protocol error: Line too long") == 3, what="3 session-end lines")
        self.still_serving(ix)

    def test_a_line_at_the_limit_split_between_cr_and_lf(self):
        ix = self.start(limits={"max_line": 1024})
        with RawPop3(ix.port("pop3")) as c:
            c.greeting()
            c.send(b"NOOP " + b"x" * 1019 + b"\r")
            time.sleep(0.2)
            c.send(b"\n")
            self.assertEqual(c.line(), b"+OK")

    def test_too_many_commands_before_login(self):
        ix = self.start(limits={"max_preauth_commands": 5})
        with RawPop3(ix.port("pop3")) as c:
            c.greeting()
            c.send("NOOP\r\n" * 10)
            data = c.read_until_closed()
        self.assertEqual(data, b"+OK\r\n" * 5 + b"-ERR Too many commands before login.\r\n")
        wait_for(lambda: "too many commands before login"
                 in [e["ended"] for e in session_end_lines(ix.log_text())],
                 what="the session-end line")
        self.still_serving(ix)

    def test_the_preauth_deadline_and_not_after_login(self):
        ix = self.start(timeouts={"preauth": "1s"})
        idle = RawPop3(ix.port("pop3"))
        self.addCleanup(idle.close)
        idle.greeting()
        started = time.monotonic()
        busy = poplib_logs_in(ix.port("pop3"))
        self.assertEqual(idle.line(), b"-ERR Disconnected for inactivity.")
        self.assertTrue(idle.is_closed())
        self.assertLess(time.monotonic() - started, 3)
        time.sleep(max(0.0, 1.2 - (time.monotonic() - started)))
        # Past the pre-auth deadline, the relayed session goes on.
        self.assertEqual(busy.stat()[0], 1)
        busy.quit()
        wait_for(lambda: "pre-auth timeout"
                 in [e["ended"] for e in session_end_lines(ix.log_text())],
                 what="the session-end line")

    def test_sigterm_before_login(self):
        ix = self.start()
        with RawPop3(ix.port("pop3")) as c:
            c.greeting()
            c.send("USER alice\r\n")
            self.assertEqual(c.line(), b"+OK")
            ix.proc.signal(15)
            self.assertEqual(c.line(), b"-ERR [SYS/TEMP] Server shutting down.")
            self.assertTrue(c.is_closed())
        self.assertEqual(ix.proc.wait(10), 0)


# -- against scripted fake nodes ---------------------------------------------

USERS_MAP = "user@example.org main\n"


class Pop3FakeNodes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if LAB.kind != "dovecot":
            raise unittest.SkipTest("scripted fake nodes only: run once, in the Dovecot variant")

    def island(self, *behaviours, **overrides):
        """Starts fake nodes (in this order) as island "main" and isthmus in
        front; returns (port, nodes). The router rotates between equally
        loaded nodes: tests that need an order check both outcomes."""
        nodes = [FakePop3Node(b) for b in behaviours]
        for n in nodes:
            self.addCleanup(n.close)
        config = fake_pop3_config({"main": [(f"n{i}-{n.behaviour}", n.port)
                                            for i, n in enumerate(nodes)]}, **overrides)
        # Under the lab's root, so it goes when the lab does.
        self.ix = start_isthmus(config, USERS_MAP, tempfile.mkdtemp(prefix="fake-", dir=LAB.root))
        self.addCleanup(self.ix.stop)
        return self.ix.port("pop3"), nodes

    def raw(self, port) -> RawPop3:
        c = RawPop3(port)
        self.addCleanup(c.close)
        self.assertEqual(c.greeting(), GREETING)
        return c

    def login(self, port, password="good") -> bytes:
        with RawPop3(port) as c:
            c.greeting()
            return c.log_in("user@example.org", password)

    def test_credentials_go_as_sasl_plain_after_xclient(self):
        port, (node,) = self.island("dovecot_like")
        c = self.raw(port)
        self.assertEqual(c.log_in("User", "good"), b"+OK Logged in.")
        self.assertEqual(c.command("STAT"), b"+OK fake STAT done")
        session = wait_for(lambda: session_of(self.ix.log_text(), c.local_port), what="login")
        # The client's address and port, Isthmus' session id, one hop used.
        xclient = f"XCLIENT ADDR=127.0.0.1 PORT={c.local_port} SESSION={session} TTL=4"
        self.assertEqual(node.received, [
            f"CAPA\r\n{xclient}\r\nAUTH PLAIN {plain('user@example.org', 'good')}\r\n"
            f"STAT\r\n".encode()])

    def test_credentials_go_as_user_and_pass_to_a_node_without_sasl(self):
        for behaviour in ("no_sasl", "no_capa"):
            with self.subTest(behaviour=behaviour):
                port, (node,) = self.island(behaviour)
                c = self.raw(port)
                self.assertEqual(c.log_in("User", "we ird"), b"+OK Logged in.")
                self.assertEqual(c.command("NOOP"), b"+OK fake NOOP done")
                # No XCLIENT either: the greeting did not offer it.
                self.assertEqual(node.received,
                                 [b"CAPA\r\nUSER user@example.org\r\nPASS we ird\r\nNOOP\r\n"])

    def test_a_password_with_a_line_break_never_reaches_a_node(self):
        # No server takes a password with CR or LF (over USER/PASS it would
        # inject a command): refused before any node is contacted.
        port, (node,) = self.island("no_sasl")
        c = self.raw(port)
        injection = plain("user@example.org", "good\r\nDELE 1")
        self.assertEqual(c.command("AUTH PLAIN " + injection), AUTHFAIL)
        self.assertEqual(node.connections, 0)
        self.assertIn("a password with NUL, CR or LF", self.ix.log_text())
        self.assertEqual(c.log_in("user", "good"), b"+OK Logged in.")

    def test_a_refused_xclient_is_not_fatal(self):
        port, (node,) = self.island("xclient_refused")
        self.assertEqual(self.login(port), b"+OK Logged in.")
        self.assertTrue(node.received[0].startswith(b"CAPA\r\nXCLIENT ADDR=127.0.0.1 "))

    def test_in_use_is_passed_through_and_the_other_node_not_tried(self):
        port, (locked, good) = self.island("in_use", "dovecot_like")
        outcomes = []
        for _ in range(4):
            before = (locked.connections, good.connections)
            with RawPop3(port) as c:
                c.greeting()
                answer = c.log_in("user", "good")
                if answer == IN_USE:
                    self.assertEqual(c.command("NOOP"), b"+OK")  # still in pre-auth
                else:
                    self.assertEqual(answer, b"+OK Logged in.")
                    self.assertEqual(c.command("QUIT"), b"+OK fake QUIT done")
            delta = (locked.connections - before[0], good.connections - before[1])
            outcomes.append(answer)
            self.assertEqual(delta, (1, 0) if answer == IN_USE else (0, 1), outcomes)
        self.assertIn(IN_USE, outcomes)
        log = self.ix.log_text()
        self.assertIn(FakePop3Node.SECRET.decode(), log)  # the log has the node's text
        self.assertNotRegex(log, r"node=n0-in_use: .*trying the next node")

    def test_the_nodes_refusal_text_never_reaches_the_client(self):
        for behaviour, answer in (("says_err_with_detail", AUTHFAIL), ("in_use", IN_USE),
                                  ("says_sys_temp", TEMPFAIL)):
            with self.subTest(behaviour=behaviour):
                port, _ = self.island(behaviour)
                with RawPop3(port) as c:
                    c.greeting()
                    self.assertEqual(c.log_in("user", "good"), answer)
                    c.send("QUIT\r\n")
                    rest = c.read_until_closed()
                self.assertEqual(rest, b"+OK Logging out.\r\n")
                self.assertIn(FakePop3Node.SECRET.decode(), self.ix.log_text())

    def test_a_wrong_password_is_not_retried_on_the_other_node(self):
        port, nodes = self.island("dovecot_like", "dovecot_like")
        self.assertEqual(self.login(port, password="bad"), AUTHFAIL)
        self.assertEqual(sum(n.connections for n in nodes), 1)

    def test_dead_or_broken_nodes_are_skipped(self):
        for broken in ("banner_hangs", "err_greeting", "garbage_greeting", "says_sys_temp",
                       "answers_before_asked"):
            with self.subTest(broken=broken):
                port, (bad, good) = self.island(broken, "dovecot_like",
                                                timeouts={"connect": "300ms"})
                # Whichever node the router picks first, the login works.
                for _ in range(2):
                    self.assertEqual(self.login(port), b"+OK Logged in.")
                self.assertGreaterEqual(bad.connections, 1)
                self.assertRegex(self.ix.log_text(), rf"node=n0-{broken}: .*trying the next node")

    def test_only_broken_nodes_give_a_temporary_failure(self):
        port, nodes = self.island("err_greeting", "garbage_greeting")
        self.assertEqual(self.login(port), TEMPFAIL)
        self.assertEqual(sorted(n.connections for n in nodes), [1, 1])
        self.assertIn("no node left to try", self.ix.log_text())

    def test_a_node_that_drops_a_login_after_the_credentials_fails_that_login_only(self):
        port, (bad, good) = self.island("closes_after_login", "dovecot_like")
        answers = [self.login(port) for _ in range(4)]
        self.assertLessEqual(set(answers), {TEMPFAIL, b"+OK Logged in."}, answers)
        self.assertEqual(answers.count(TEMPFAIL), bad.connections, answers)
        self.assertGreaterEqual(bad.connections, 2, "a dropping node must not become suspect")
        self.assertNotRegex(self.ix.log_text(), r"node=n0-closes_after_login: .*trying the next")

    def test_pipelined_commands_reach_the_node_in_order_after_login(self):
        port, (node,) = self.island("dovecot_like")
        with RawPop3(port) as c:
            c.send("USER user\r\nPASS good\r\nSTAT\r\nLIST\r\nQUIT\r\n")
            data = c.read_until_closed()
        self.assertEqual(data, GREETING + b"\r\n+OK\r\n+OK Logged in.\r\n+OK fake STAT done\r\n"
                               b"+OK fake LIST done\r\n+OK fake QUIT done\r\n")
        after_login = node.received[0].split(b"AUTH PLAIN ", 1)[1].split(b"\r\n", 1)[1]
        self.assertEqual(after_login, b"STAT\r\nLIST\r\nQUIT\r\n")

    def test_an_unknown_user_never_reaches_a_node(self):
        port, (node,) = self.island("dovecot_like")
        with RawPop3(port) as c:
            c.greeting()
            self.assertEqual(c.log_in("stranger@example.org", "good"), AUTHFAIL)
            self.assertEqual(c.command("AUTH PLAIN " + plain("stranger", "good")), AUTHFAIL)
        self.assertEqual(node.connections, 0)

    def test_a_wrong_password_and_an_unknown_user_wait_the_same_delay(self):
        port, _ = self.island("dovecot_like", timeouts={"auth_failure_delay": "300ms"})
        with RawPop3(port) as c:
            c.greeting()
            times = {}
            for user, password in (("user", "bad"), ("stranger", "good")):
                started = time.monotonic()
                self.assertEqual(c.log_in(user, password), AUTHFAIL)
                times[user] = time.monotonic() - started
        for user, took in times.items():
            self.assertGreaterEqual(took, 0.3, times)
            self.assertLess(took, 1.0, times)

    def test_poplib_against_an_old_node(self):
        port, _ = self.island("no_capa")
        p = poplib.POP3("127.0.0.1", port, timeout=10)
        self.assertEqual(p.user("user@example.org"), b"+OK")
        self.assertEqual(p.pass_("good"), b"+OK Logged in.")
        self.assertEqual(p.noop(), b"+OK fake NOOP done")
        self.assertEqual(p.quit(), b"+OK fake QUIT done")
        wait_for(lambda: re.search(r"proto=pop3 end .* ended=\"(node|client) closed\"",
                                   self.ix.log_text()), what="the session-end line")


if __name__ == "__main__":
    unittest.main(verbosity=2)
