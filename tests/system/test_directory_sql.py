"""The SQL directory against a real MariaDB (tests/lab/mariadb.py, seeded
from tests/lab/directory_data.py with deploy/sql/calmail-schema.sql) and
the real Dovecot lab: routing IMAP, POP3 and LMTP users on both islands,
account states, names that must find nothing (injection, wildcards, NUL),
long and non-ASCII names, failover to a second server, and outages: a
stopped MariaDB (cached users keep logging in, the others get a temporary
failure, recovery without a restart) and a frozen one (SIGSTOP: accepts
TCP, never answers).

MariaDB is started once for the file (it is the slow part); tests that
stop or freeze it start it again in their cleanup. Tests that need an
empty cache start an isthmus of their own.
"""
import imaplib
import json
import os
import poplib
import re
import smtplib
import time
import unittest
import uuid

from support import (Lab, PASSWORD, binary, curl, make_message, procs, wait_for,
                     start_lab_and_mariadb)

from lab import directory_data as dd  # noqa: E402 (support puts tests/ on sys.path)
from lab.dovecot import user_maildir  # noqa: E402

LAB = None
DB = None
SHARED = None  # the isthmus most tests use

SENDER = "sender@example.net"
# Users the Dovecot nodes must know besides the lab's four: SQL-only users,
# and ivan under the node login the directory gives for him.
EXTRA_NODE_USERS = {"zoe@other.test": PASSWORD, dd.LONG_USER: PASSWORD,
                    "ivan.legacy@example.org": PASSWORD}


def setUpModule():
    global LAB, DB, SHARED
    LAB = Lab(isthmus_ports={"imap": 0, "pop3": 0, "lmtp": 0})
    unittest.addModuleCleanup(LAB.close)
    for node in LAB.nodes.values():
        node.users.update(EXTRA_NODE_USERS)
        # Dovecot allows only [a-zA-Z0-9.@_-] in user names by default; the
        # non-ASCII user must reach its mailbox (RFC 6531 local parts).
        node.config_text = (lambda text=node.config_text:
                            text() + "\n# any octet in a user name\nauth_username_chars =\n")
    # The Dovecot nodes and MariaDB start at the same time.
    DB = start_lab_and_mariadb(LAB, unittest.addModuleCleanup)
    SHARED = start_isthmus()


def sql_directory(servers=None, **sql):
    """The /directory section for DB: short timeouts, a 1 s cache."""
    settings = {"servers": servers or [f"127.0.0.1:{DB.port}"], "database": dd.SQL_DATABASE,
                "user": dd.SQL_USER, "password_file": DB.password_path, "pool": 2,
                "timeout": "2s", "connect_timeout": "1s", "max_backoff": "1s"}
    settings.update(sql)
    return {"type": "sql", "file": None, "sql": settings,
            "cache": {"positive_ttl": "1s", "negative_ttl": "1s", "stale_if_error": "1h"}}


def start_isthmus(servers=None, **sql):
    listeners = [{"name": proto, "protocol": proto, "address": "127.0.0.1",
                  "port": procs.free_port()} for proto in ("imap", "pop3", "lmtp")]
    return LAB.start_isthmus(binary(), listeners=listeners,
                             directory=sql_directory(servers, **sql),
                             lmtp={"hostname": "isthmus.lab.test"})


def shown(user: str) -> str:
    """USER as isthmus logs it (common/log.cpp sanitize)."""
    return "".join(chr(b) if 0x20 <= b < 0x7f and b != 0x5c else f"\\x{b:02x}"
                   for b in user.encode())


# -- clients ----------------------------------------------------------------

def imap(ix) -> imaplib.IMAP4:
    return imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=15)


def imap_login(ix, user: str, password: str = PASSWORD) -> tuple[str, str]:
    """('OK', text) or ('NO', text): the tagged answer to LOGIN with the name
    as a quoted string (imaplib sends it as an atom otherwise), or to
    AUTHENTICATE PLAIN for names a quoted string cannot carry: non-ASCII."""
    m = imap(ix)
    try:
        if user.isascii() and "\x00" not in user:
            typ, data = m.login(m._quote(user), password)
        else:
            response = b"\0" + user.encode() + b"\0" + password.encode()
            typ, data = m.authenticate("PLAIN", lambda _: response)
        if typ == "OK":
            assert m.select("INBOX")[0] == "OK"
        m.logout()
        return typ, data[0].decode(errors="replace") if data else ""
    except imaplib.IMAP4.error as e:
        # login() raises with the bytes of the answer, authenticate() with text.
        text = e.args[0] if e.args else ""
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        return "NO", str(text)
    finally:
        try:
            m.shutdown()
        except OSError:
            pass


def pop3_login(ix, user: str, password: str = PASSWORD) -> str:
    """'+OK ...' or the -ERR line of USER/PASS."""
    p = poplib.POP3("127.0.0.1", ix.port("pop3"), timeout=15)
    try:
        p.user(user)
        answer = p.pass_(password).decode(errors="replace")
        p.stat()
        p.quit()
        return answer
    except poplib.error_proto as e:
        text = e.args[0]
        return text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    finally:
        try:
            p.close()
        except OSError:
            pass


def lmtp_rcpt(ix, user: str) -> tuple[int, str]:
    """The answer to RCPT TO:<USER> (then RSET and QUIT: nothing delivered)."""
    with smtplib.LMTP("127.0.0.1", ix.port("lmtp"), timeout=15) as l:
        l.command_encoding = "utf-8"
        l.ehlo("mta.example.net")
        assert l.mail(SENDER)[0] == 250
        code, text = l.docmd("RCPT", f"TO:<{user}>")
        l.rset()
        return code, text.decode(errors="replace")


def island_of_login(ix, user: str, mark: int = 0) -> str:
    found = re.findall(rf"login ok user={re.escape(shown(user))} island=(\w+)",
                       ix.log_text()[mark:])
    return found[-1] if found else ""


def login_failure_line(ix, user: str, mark: int = 0) -> str:
    lines = [line for line in ix.log_text()[mark:].splitlines()
             if f"login failed user={shown(user)} " in line]
    return lines[-1] if lines else ""


def restore_db():
    """Cleanup for outage tests: MariaDB running and answering again."""
    DB.resume()
    if not DB.running():
        DB.start()


# -- routing ------------------------------------------------------------------

class Routing(unittest.TestCase):
    def test_imap_users_on_both_islands(self):
        for user, island in (("alice@example.org", "a"), ("bob@example.org", "b"),
                             ("carol@example.org", "a"), ("dave@example.org", "b"),
                             ("zoe@other.test", "b")):
            mark = len(SHARED.log_text())
            self.assertEqual(imap_login(SHARED, user)[0], "OK", user)
            self.assertEqual(island_of_login(SHARED, user, mark), island, user)
        # Case is normalised before the lookup; the default domain is added.
        mark = len(SHARED.log_text())
        self.assertEqual(imap_login(SHARED, "Bob")[0], "OK")
        self.assertEqual(island_of_login(SHARED, "bob@example.org", mark), "b")

    def test_pop3_users_on_both_islands(self):
        for user, island in (("alice@example.org", "a"), ("dave@example.org", "b"),
                             ("zoe@other.test", "b")):
            mark = len(SHARED.log_text())
            self.assertTrue(pop3_login(SHARED, user).startswith("+OK"), user)
            self.assertEqual(island_of_login(SHARED, user, mark), island, user)

    def test_lmtp_delivers_to_users_on_both_islands(self):
        tok = "t" + uuid.uuid4().hex[:16]
        raw = make_message(f"sql {tok}", "hello\n", sender=SENDER)
        users = {"alice@example.org": "a", "bob@example.org": "b", "zoe@other.test": "b"}
        with smtplib.LMTP("127.0.0.1", SHARED.port("lmtp"), timeout=20) as l:
            l.ehlo("mta.example.net")
            self.assertEqual(l.mail(SENDER)[0], 250)
            for user in users:
                self.assertEqual(l.rcpt(user)[0], 250, user)
            replies = [l.data(raw)] + [l.getreply() for _ in range(len(users) - 1)]
            self.assertTrue(all(code == 250 for code, _ in replies), replies)
        for user, island in users.items():
            other = "b" if island == "a" else "a"
            self.assertEqual(len(messages_with(island, user, tok)), 1, user)
            self.assertEqual(messages_with(other, user, tok), [], user)

    def test_node_login_comes_from_the_directory(self):
        # ivan's row has node_login ivan.legacy@example.org; the nodes know
        # only that name, so the login works only if isthmus used it.
        self.assertEqual(imap_login(SHARED, "ivan@example.org")[0], "OK")
        self.assertTrue(pop3_login(SHARED, "ivan@example.org").startswith("+OK"))

    def test_long_non_ascii_name(self):
        mark = len(SHARED.log_text())
        self.assertEqual(imap_login(SHARED, dd.LONG_USER)[0], "OK")
        self.assertEqual(island_of_login(SHARED, dd.LONG_USER, mark), "b")
        mark = len(SHARED.log_text())
        self.assertTrue(pop3_login(SHARED, dd.LONG_USER).startswith("+OK"))
        self.assertEqual(island_of_login(SHARED, dd.LONG_USER, mark), "b")
        # Folded accents are another name (utf8mb4_nopad_bin), and so is a
        # longer one.
        folded = "jurgen.muller-ludenscheidt.nandu.strasse.postfach@example.org"
        self.assertIn("AUTHENTICATIONFAILED", imap_login(SHARED, folded)[1])
        very_long = "ü" * 100 + "@example.org"  # 200-octet local part
        self.assertIn("AUTHENTICATIONFAILED", imap_login(SHARED, very_long)[1])

    def test_disabled_account_is_refused_like_a_bad_password(self):
        bad_password = imap_login(SHARED, "alice@example.org", "wrong")
        self.assertEqual(bad_password[0], "NO")
        disabled = imap_login(SHARED, "eve@example.org")
        self.assertEqual(disabled, bad_password)
        self.assertIn("AUTHENTICATIONFAILED", disabled[1])
        self.assertEqual(pop3_login(SHARED, "eve@example.org"),
                         pop3_login(SHARED, "alice@example.org", "wrong"))
        code, text = lmtp_rcpt(SHARED, "eve@example.org")
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith("5.2.1"), text)

    def test_moving_account_gets_a_temporary_failure(self):
        typ, text = imap_login(SHARED, "mallory@example.org")
        self.assertEqual(typ, "NO")
        self.assertIn("[UNAVAILABLE]", text)
        self.assertIn("[SYS/TEMP]", pop3_login(SHARED, "mallory@example.org"))
        code, text = lmtp_rcpt(SHARED, "mallory@example.org")
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith("4.2.1"), text)

    def test_absent_names_fail_like_a_bad_password(self):
        bad_password = imap_login(SHARED, "alice@example.org", "wrong")
        self.assertIn("AUTHENTICATIONFAILED", bad_password[1])
        mark = len(SHARED.log_text())
        for name in dd.ABSENT_LOOKUPS:
            with self.subTest(name=name):
                if "\x00" in name:
                    # No IMAP string may hold a NUL (RFC 3501 CHAR8), and in
                    # SASL PLAIN it is the separator: a protocol error.
                    typ, text = imap_login(SHARED, name)
                    self.assertEqual(typ, "NO")
                    self.assertIn("BAD", text)
                else:
                    self.assertEqual(imap_login(SHARED, name), bad_password)
                answer = pop3_login(SHARED, name)
                self.assertTrue(answer.startswith("-ERR"), answer)
                self.assertNotIn("SYS/TEMP", answer)
                if "\x00" in name:
                    continue  # a line cannot carry a NUL (IMAP and POP3 refused it above)
                code, text = lmtp_rcpt(SHARED, name)
                self.assertEqual(code, 550, text)
                if " " not in name:  # a name with a space is refused before the lookup (5.1.3)
                    self.assertTrue(text.startswith("5.1.1"), text)
        log = SHARED.log_text()[mark:]
        self.assertNotIn("the directory could not answer", log)
        self.assertNotIn("sql directory unavailable", log)
        # The names that are valid logins reached the SQL directory and got "no row".
        for name in ("%@example.org", "_lice@example.org", "alice@other.test", "*@example.org",
                     "nobody@example.org"):
            self.assertRegex(log, rf"directory has no island for {re.escape(shown(name))}", name)
        # The injection attempts did no harm.
        self.assertEqual(DB.lookup("alice@example.org")[0], "a")
        self.assertEqual(DB.query("SELECT COUNT(*) FROM account")[0][0], str(len(dd.USERS)))

    def test_a_folding_query_logs_in_the_user_it_matched(self):
        # A query whose comparison folds (utf8mb4_general_ci, as many
        # schemas have) matches alice's row for "al\u0130ce": the node must be
        # told the row's spelling (the node-login column), not the client's.
        ix = start_isthmus(query="SELECT a.island, a.state, a.password, "
                                 "CONCAT(a.localpart, '@', d.name) FROM account a "
                                 "JOIN domain d ON d.id = a.domain_id "
                                 "WHERE a.localpart = %{localpart} COLLATE utf8mb4_general_ci "
                                 "AND d.name = %{domain}")
        try:
            marks = {name: len(node.logins()) for name, node in LAB.nodes.items()}
            self.assertEqual(imap_login(ix, "al\u0130ce@example.org")[0], "OK")
            users = {e.get("user") for name, node in LAB.nodes.items()
                     for e in node.logins()[marks[name]:] if e["ok"]}
            self.assertEqual(users, {"alice@example.org"})
        finally:
            ix.stop()

    def test_account_writes_through_the_admin_api(self):
        """POST /v1/users/NAME/account (what `isthmusctl move` uses) writes
        the state and island with directory.sql.writes, reads them back past
        the cache and drops the cached entry: the next login sees the new
        state at once. A statement that matches no row is reported, not
        taken for done."""
        where = "WHERE a.localpart = %{localpart} AND d.name = %{domain}"
        writes = {"set_state": "UPDATE account a JOIN domain d ON d.id = a.domain_id "
                               "SET a.state = %{value} " + where,
                  "set_island": "UPDATE account a JOIN domain d ON d.id = a.domain_id "
                                "SET a.island = %{value} " + where}
        sock = os.path.join(LAB.root, "admin-writes.sock")
        directory = sql_directory(writes=writes)
        directory["cache"]["positive_ttl"] = "5m"   # only the write drops it
        ix = LAB.start_isthmus(binary(), listeners=[{"name": "imap", "protocol": "imap",
                                                     "address": "127.0.0.1",
                                                     "port": procs.free_port()}],
                               directory=directory, admin={"socket": sock})
        self.addCleanup(ix.stop)
        self.addCleanup(DB.execute, "UPDATE account SET island = 'a', state = 'active' "
                                    "WHERE localpart = 'carol'")
        wait_for(lambda: os.path.exists(sock), timeout=10, what="the admin socket")

        def post(user, body):
            status, text = curl(["-X", "POST", "-H", "Content-Type: application/json",
                                 "--data", json.dumps(body),
                                 f"http://isthmus/v1/users/{user}/account"], unix=sock)
            return status, json.loads(text)

        user = "carol@example.org"
        self.assertEqual(imap_login(ix, user)[0], "OK")          # cached: active on a
        status, body = post(user, {"state": "moving"})
        self.assertEqual(status, 200, body)
        self.assertEqual((body["island"], body["state"]), ("a", "moving"))
        self.assertIn("set_state (1 row(s) changed", body["written"])
        self.assertIn("[UNAVAILABLE]", imap_login(ix, user)[1])   # at once, not in 5 minutes
        status, body = post(user, {"island": "b", "state": "active"})
        self.assertEqual(status, 200, body)
        self.assertEqual((body["island"], body["state"]), ("b", "active"))
        self.assertEqual(DB.query("SELECT island, state FROM account WHERE localpart = 'carol'"),
                         [("b", "active")])
        self.assertEqual(imap_login(ix, user)[0], "OK")
        self.assertIn("island=b", ix.log_text().rsplit("login ok user=carol", 1)[1][:80])
        self.assertRegex(ix.log_text(), r"POST /v1/users/carol@example\.org/account.*set_island")

        status, body = post("nobody@example.org", {"state": "moving"})
        self.assertEqual(status, 404, body)
        status, text = curl(["http://isthmus/v1/status"], unix=sock)
        self.assertTrue(json.loads(text)["directory_writes"])
        # An island written to no row: refused, and the state not written
        # at all (never active where the mail is not).
        ix.stop()
        writes["set_island"] = writes["set_island"].replace("%{localpart}",
                                                            "CONCAT(%{localpart}, '-x')")
        ix2 = LAB.start_isthmus(binary(), listeners=[{"name": "imap", "protocol": "imap",
                                                      "address": "127.0.0.1",
                                                      "port": procs.free_port()}],
                                directory=sql_directory(writes=writes),
                                admin={"socket": sock + "2"})
        self.addCleanup(ix2.stop)
        sock += "2"
        wait_for(lambda: os.path.exists(sock), timeout=10, what="the admin socket")
        status, body = post(user, {"island": "a", "state": "moving"})
        self.assertEqual(status, 502, body)
        self.assertIn("set_island (0 row(s) changed", body["error"])
        self.assertIn("the directory now answers island b, state active", body["error"])
        self.assertIn("the state was not written", body["error"])
        self.assertEqual(DB.query("SELECT island, state FROM account WHERE localpart = 'carol'"),
                         [("b", "active")])
        self.assertRegex(ix2.log_text(), r"POST /v1/users/carol@example\.org/account.*refused")

    def test_an_island_value_with_a_line_break_is_escaped_and_temporary(self):
        DB.execute("UPDATE account SET island = 'a\\r\\n2099-01-01 FORGED critical' "
                   "WHERE localpart = 'carol'")
        self.addCleanup(DB.execute, "UPDATE account SET island = 'a' WHERE localpart = 'carol'")
        time.sleep(1.2)  # the 1 s cache
        mark = len(SHARED.log_text())
        self.assertIn("[UNAVAILABLE]", imap_login(SHARED, "carol@example.org")[1])
        self.assertEqual(lmtp_rcpt(SHARED, "carol@example.org")[0], 451)
        log = SHARED.log_text()[mark:]
        self.assertIn('island "a\\x0d\\x0a2099-01-01 FORGED critical"', log)
        self.assertFalse([line for line in log.splitlines() if line.startswith("2099-01-01")])

    def test_invalid_utf8_is_just_an_unknown_name(self):
        m = imap(SHARED)
        try:
            response = b"\0" + b"al\xffice@example.org" + b"\0" + PASSWORD.encode()
            with self.assertRaises(imaplib.IMAP4.error) as caught:
                m.authenticate("PLAIN", lambda _: response)
            self.assertIn("AUTHENTICATIONFAILED", str(caught.exception))
        finally:
            m.shutdown()


def messages_with(island: str, user: str, tok: str) -> list[bytes]:
    maildir = user_maildir(LAB.store(island), user)
    found = []
    for sub in ("new", "cur"):
        d = os.path.join(maildir, sub)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
            if tok.encode() in data:
                found.append(data)
    return found


# -- failover and outages ------------------------------------------------------

class Failover(unittest.TestCase):
    def test_a_dead_first_server_is_skipped(self):
        dead = procs.free_port()  # nothing listens there
        ix = start_isthmus(servers=[f"127.0.0.1:{dead}", f"127.0.0.1:{DB.port}"])
        self.addCleanup(ix.stop)
        for user, island in (("alice@example.org", "a"), ("bob@example.org", "b"),
                             ("zoe@other.test", "b")):
            mark = len(ix.log_text())
            started = time.monotonic()
            self.assertEqual(imap_login(ix, user)[0], "OK", user)
            self.assertLess(time.monotonic() - started, 2.0)
            self.assertEqual(island_of_login(ix, user, mark), island)
        self.assertEqual(lmtp_rcpt(ix, "carol@example.org")[0], 250)
        log = ix.log_text()
        self.assertRegex(log, rf"sql directory: server 127\.0\.0\.1:{dead} failed \(1 in a row\): "
                              r"connecting: .*(?:Can't connect|refused)")
        self.assertIn(f"sql directory: connected to server 127.0.0.1:{DB.port}", log)
        self.assertIn("charset utf8mb4", log)


class Outages(unittest.TestCase):
    def test_stopped_server_cached_users_keep_working_then_recovery(self):
        ix = start_isthmus()
        self.addCleanup(ix.stop)
        self.addCleanup(restore_db)
        # Into the cache: alice by IMAP, bob by POP3, dave by LMTP.
        self.assertEqual(imap_login(ix, "alice@example.org")[0], "OK")
        self.assertTrue(pop3_login(ix, "bob@example.org").startswith("+OK"))
        self.assertEqual(lmtp_rcpt(ix, "dave@example.org")[0], 250)
        time.sleep(1.3)  # past positive_ttl: the cache must ask the directory again

        DB.stop()
        mark = len(ix.log_text())
        # Cached users go on (stale_if_error).
        self.assertEqual(imap_login(ix, "alice@example.org")[0], "OK")
        self.assertTrue(pop3_login(ix, "bob@example.org").startswith("+OK"))
        self.assertEqual(lmtp_rcpt(ix, "dave@example.org")[0], 250)
        # The others get a temporary failure, never "no such user", and fast.
        started = time.monotonic()
        typ, text = imap_login(ix, "carol@example.org")
        self.assertEqual(typ, "NO")
        self.assertIn("[UNAVAILABLE]", text)
        self.assertIn("[SYS/TEMP]", pop3_login(ix, "zoe@other.test"))
        code, text = lmtp_rcpt(ix, "ivan@example.org")
        self.assertEqual(code, 451, text)
        self.assertTrue(text.startswith("4.3.0"), text)
        # A name the directory has never seen is not "unknown" either.
        self.assertIn("[UNAVAILABLE]", imap_login(ix, "nobody@example.org")[1])
        self.assertLess(time.monotonic() - started, 4 * 2.5)
        log = ix.log_text()[mark:]
        self.assertRegex(log, rf"sql directory: server 127\.0\.0\.1:{DB.port} failed \(\d+ in a "
                              r"row\): connecting: .*Can't connect")
        self.assertRegex(login_failure_line(ix, "carol@example.org", mark),
                         r"the directory could not answer: sql directory unavailable: .*"
                         r"connecting: Can't connect")
        self.assertRegex(log, r"lmtp rcpt=ivan@example\.org: directory unavailable: sql "
                              r"directory unavailable: ")
        self.assertNotIn(DB.password, ix.log_text())

        # Back: isthmus finds it again by itself.
        DB.start()
        mark = len(ix.log_text())
        wait_for(lambda: imap_login(ix, "carol@example.org")[0] == "OK", timeout=10,
                 interval=0.3, what="carol logging in after MariaDB came back")
        self.assertEqual(island_of_login(ix, "carol@example.org", mark), "a")
        self.assertTrue(pop3_login(ix, "zoe@other.test").startswith("+OK"))
        self.assertEqual(lmtp_rcpt(ix, "ivan@example.org")[0], 250)
        self.assertRegex(ix.log_text()[mark:],
                         rf"sql directory: server 127\.0\.0\.1:{DB.port} is back after \d+ "
                         r"failures")

    def test_frozen_server_times_out_then_recovers(self):
        ix = start_isthmus(timeout="2s", connect_timeout="1s")
        self.addCleanup(ix.stop)
        self.addCleanup(restore_db)
        self.assertEqual(imap_login(ix, "alice@example.org")[0], "OK")  # a pooled connection
        DB.pause()
        mark = len(ix.log_text())
        started = time.monotonic()
        typ, text = imap_login(ix, "carol@example.org")
        took = time.monotonic() - started
        self.assertEqual(typ, "NO")
        self.assertIn("[UNAVAILABLE]", text)
        self.assertLess(took, 2.8)  # within the lookup's 2 s timeout (and some slack)
        started = time.monotonic()
        code, text = lmtp_rcpt(ix, "zoe@other.test")
        self.assertEqual(code, 451, text)
        self.assertTrue(text.startswith("4.3.0"), text)
        self.assertIn("[SYS/TEMP]", pop3_login(ix, "dave@example.org"))
        self.assertLess(time.monotonic() - started, 2 * 2.8)
        log = ix.log_text()[mark:]
        self.assertRegex(log, rf"sql directory: server 127\.0\.0\.1:{DB.port} failed \(\d+ in a "
                              r"row\): [a-z ]+: no answer within 1\.0s")
        self.assertRegex(login_failure_line(ix, "carol@example.org", mark),
                         r"the directory could not answer: sql directory unavailable: "
                         r"127\.0\.0\.1:\d+: running the query: no answer within 1\.0s")

        DB.resume()
        mark = len(ix.log_text())
        wait_for(lambda: imap_login(ix, "carol@example.org")[0] == "OK", timeout=10,
                 interval=0.3, what="carol logging in after MariaDB was resumed")
        self.assertEqual(lmtp_rcpt(ix, "zoe@other.test")[0], 250)
        self.assertRegex(ix.log_text()[mark:],
                         rf"sql directory: server 127\.0\.0\.1:{DB.port} is back after")


if __name__ == "__main__":
    unittest.main(verbosity=2)
