"""The LDAP directory end to end (issue 5): a real slapd started here
(tests/lab/slapd.py, seeded from tests/lab/directory_data.py), real Dovecot
nodes in two islands (the lab), the real isthmus binary, and clients we did
not write: imaplib, poplib and smtplib.LMTP.

What must hold: users are routed by their entry's island; disabled and
moving accounts get the answers of their state; names that are not in the
directory -- injection attempts included -- fail exactly like a wrong
password; a directory that fails (dead port, wrong CA, stopped, frozen)
gives temporary errors, never "no such user", and never plaintext when TLS
was asked for; and everything recovers without restarting Isthmus."""
import imaplib
import os
import poplib
import re
import smtplib
import time
import unittest
import uuid

from support import Lab, binary, make_message, plain, procs, wait_for
from lab import directory_data as dd  # noqa: E402  (support puts tests/ on the path)
from lab.dovecot import user_maildir  # noqa: E402
from lab.slapd import Slapd  # noqa: E402
from lab.tls import make_ca  # noqa: E402

PASSWORD = dd.PASSWORD
AUTHFAILED = "[AUTHENTICATIONFAILED]"
UNAVAILABLE = "[UNAVAILABLE]"
POP3_TEMP = b"-ERR [SYS/TEMP]"
LMTP_DIRECTORY_DOWN = "4.3.0"

# Users the lab's Dovecot nodes do not know by default, added for these tests.
EXTRA_NODE_USERS = {dd.LONG_USER: PASSWORD, "zoe@other.test": PASSWORD}

LAB = None
CA = None           # the lab CA that signed slapd's certificate
SLAPD = None        # shared by the tests that do not break it
IX = None           # isthmus on SLAPD over plain ldap://


def setUpModule():
    global LAB, CA, SLAPD, IX
    LAB = Lab(isthmus_ports={"imap": 0, "pop3": 0, "lmtp": 0})
    unittest.addModuleCleanup(LAB.close)
    for node in LAB.nodes.values():
        node.users.update(EXTRA_NODE_USERS)
    LAB.start()
    for user in dd.USERS:
        if user.login in ("alice@example.org", "bob@example.org", dd.LONG_USER):
            LAB.put_message(user.login, make_message(f"home of {user.login} is {user.island}",
                                                     "hello\n"), island=user.island)
    LAB.put_message("alice@example.org", make_message("decoy on b", "x\n"), island="b")
    CA = make_ca(os.path.join(LAB.root, "ldap-pki"))
    leaf = CA.issue("slapd", dns=["ldap.lab.test"], ips=["127.0.0.1"])
    SLAPD = Slapd(os.path.join(LAB.root, "slapd"), procs.free_port(), tls=leaf,
                  ldaps_port=procs.free_port())
    SLAPD.start()
    unittest.addModuleCleanup(SLAPD.stop)
    IX = start_isthmus(SLAPD)


def ldap_settings(slapd: Slapd, **overrides) -> dict:
    settings = {
        "uris": [slapd.url],
        "bind_dn": dd.SERVICE_DN,
        "bind_password_file": slapd.service_pw_path,
        "base": dd.PEOPLE_DN,
        "scope": "sub",
        "filter": "(&(objectClass=mailIslandUser)(uid=%{user}))",
        "pool": 2,
        "timeout": "1s",
        "connect_timeout": "700ms",
        "max_backoff": "1s",
    }
    settings.update(overrides)
    return settings


def start_isthmus(slapd: Slapd, cache: dict | None = None, config: dict | None = None,
                  **ldap_overrides):
    """An isthmus of its own on the lab's nodes, its directory in SLAPD
    (CONFIG: more top-level keys)."""
    listeners = [{"name": p, "protocol": p, "address": "127.0.0.1", "port": procs.free_port()}
                 for p in ("imap", "pop3", "lmtp")]
    directory = {"type": "ldap", "file": None, "ldap": ldap_settings(slapd, **ldap_overrides),
                 "cache": cache or {"positive_ttl": "1s", "negative_ttl": "1s",
                                    "stale_if_error": "1h"}}
    return LAB.start_isthmus(binary(), listeners=listeners, directory=directory,
                             lmtp={"hostname": "isthmus.lab.test"}, **(config or {}))


# -- clients ----------------------------------------------------------------

def imap_login(ix, user: str, password: str = PASSWORD) -> imaplib.IMAP4:
    """Logged in with AUTHENTICATE PLAIN (any octets in the name); raises
    imaplib.IMAP4.error with the server's answer if refused."""
    m = imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=10)
    try:
        m.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode())
    except BaseException:
        try:
            m.shutdown()
        except OSError:
            pass
        raise
    return m


def imap_refusal(ix, user: str, password: str = PASSWORD) -> str:
    """The NO text of a login that must fail."""
    try:
        m = imap_login(ix, user, password)
    except imaplib.IMAP4.error as e:
        return str(e)
    m.logout()
    raise AssertionError(f"{user!r} logged in")


def inbox_subjects(m: imaplib.IMAP4) -> list[str]:
    typ, _ = m.select("INBOX")
    assert typ == "OK"
    typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    return [part[1].decode().strip() for part in data if isinstance(part, tuple)]


def pop3_pass(ix, user: str, password: str = PASSWORD) -> bytes:
    """The answer to PASS (a poplib error's text if refused)."""
    p = poplib.POP3("127.0.0.1", ix.port("pop3"), timeout=10)
    try:
        p.user(user)
        return p.pass_(password)
    except poplib.error_proto as e:
        return e.args[0]
    finally:
        try:
            p.quit()
        except (poplib.error_proto, OSError):
            p.close()


def lmtp_rcpt(ix, user: str) -> tuple[int, str]:
    """RCPT TO:<user> in a fresh LMTP transaction: (code, text). Sent with
    docmd, byte for byte: smtplib's rcpt() would pass the address through
    email.utils.parseaddr, which drops the space in "alice @example.org"."""
    with smtplib.LMTP("127.0.0.1", ix.port("lmtp"), timeout=10) as s:
        s.ehlo_or_helo_if_needed()
        code, _ = s.mail("sender@example.net")
        assert code == 250, code
        code, text = s.docmd("RCPT", f"TO:<{user}>")
        s.rset()
        return code, text.decode(errors="replace")


def copies(island: str, user: str, token: str) -> int:
    maildir = user_maildir(LAB.store(island), user)
    found = 0
    for sub in ("new", "cur"):
        d = os.path.join(maildir, sub)
        for name in os.listdir(d) if os.path.isdir(d) else ():
            with open(os.path.join(d, name), "rb") as f:
                found += token.encode() in f.read()
    return found


def log_since(ix, mark: int) -> str:
    return ix.log_text()[mark:]


# -- the shared directory -----------------------------------------------------

class Routing(unittest.TestCase):
    def test_imap_users_reach_the_store_of_their_island(self):
        for user, island in (("alice@example.org", "a"), ("bob@example.org", "b")):
            with self.subTest(user=user):
                m = imap_login(IX, user)
                subjects = inbox_subjects(m)
                m.logout()
                self.assertIn(f"Subject: home of {user} is {island}", subjects)
                self.assertNotIn("Subject: decoy on b", subjects)
        for user in ("carol@example.org", "dave@example.org"):  # dave: {SSHA} in LDAP
            with self.subTest(user=user):
                imap_login(IX, user).logout()

    def test_imap_login_command_and_a_short_name_with_the_default_domain(self):
        m = imaplib.IMAP4("127.0.0.1", IX.port("imap"), timeout=10)
        m.login("Bob", PASSWORD)  # normalised to bob@example.org before the lookup
        self.assertIn("Subject: home of bob@example.org is b", inbox_subjects(m))
        m.logout()

    def test_pop3_users_on_both_islands(self):
        for user, island in (("alice@example.org", "a"), ("bob@example.org", "b")):
            with self.subTest(user=user):
                p = poplib.POP3("127.0.0.1", IX.port("pop3"), timeout=10)
                p.user(user)
                self.assertTrue(p.pass_(PASSWORD).startswith(b"+OK"))
                count, _ = p.stat()
                tops = [b"\n".join(p.top(i, 0)[1]) for i in range(1, count + 1)]
                p.quit()
                self.assertTrue(any(f"home of {user} is {island}".encode() in t for t in tops))
                self.assertFalse(any(b"decoy on b" in t for t in tops))

    def test_lmtp_delivers_to_users_on_both_islands(self):
        token = "t" + uuid.uuid4().hex[:12]
        users = {"alice@example.org": "a", "bob@example.org": "b", "zoe@other.test": "b"}
        with smtplib.LMTP("127.0.0.1", IX.port("lmtp"), timeout=10) as s:
            s.ehlo("mta.example.net")
            self.assertEqual(s.mail("sender@example.net")[0], 250)
            for user in users:
                self.assertEqual(s.rcpt(user), (250, b"2.1.5 OK"), user)
            # smtplib reads one reply to DATA; LMTP sends one per recipient.
            replies = [s.data(make_message(f"lmtp {token}", "hi\n"))]
            replies += [s.getreply() for _ in range(len(users) - 1)]
            s.quit()
        self.assertEqual([code for code, _ in replies], [250] * len(users), replies)
        for user, island in users.items():
            other = "b" if island == "a" else "a"
            self.assertEqual(copies(island, user, token), 1, user)
            self.assertEqual(copies(other, user, token), 0, user)

    def test_a_long_non_ascii_name_is_found_and_routed(self):
        # The lab's Dovecot nodes refuse non-ASCII login names (Dovecot's
        # default auth_username_chars), so the node says no; what is shown
        # here is that the directory found the entry and routed to island b.
        mark = len(IX.log_text())
        self.assertIn(AUTHFAILED, imap_refusal(IX, dd.LONG_USER))
        self.assertTrue(pop3_pass(IX, dd.LONG_USER).startswith(b"-ERR [AUTH]"))
        lines = [line for line in log_since(IX, mark).splitlines()
                 if "login failed" in line and r"user=j\xc3\xbcrgen" in line]
        self.assertEqual(len(lines), 2, log_since(IX, mark))
        for line in lines:
            self.assertIn(" island=b ", line)
            self.assertRegex(line, r"b-(left|right): login refused")


class Names(unittest.TestCase):
    """One login normalisation; the node is told the name the directory
    matched; values from the directory are escaped in every log field."""

    def node_logins_since(self, marks: dict) -> list[dict]:
        out = []
        for name, node in LAB.nodes.items():
            out += node.logins()[marks[name]:]
        return out

    def test_a_name_slapd_folds_logs_in_the_user_it_matched(self):
        # slapd's caseIgnoreMatch folds U+0130 (I with a dot) and fullwidth
        # letters to alice's uid: routed to alice's island, so the node must
        # be told alice, never the look-alike the client typed.
        for typed in ("al\u0130ce@example.org", "\uff41\uff4c\uff49\uff43\uff45@example.org"):
            with self.subTest(typed=typed):
                marks = {name: len(node.logins()) for name, node in LAB.nodes.items()}
                m = imap_login(IX, typed)
                self.assertEqual(inbox_subjects(m), ["Subject: home of alice@example.org is a"])
                m.logout()
                users = {e.get("user") for e in self.node_logins_since(marks) if e["ok"]}
                self.assertEqual(users, {"alice@example.org"})

    def test_names_with_two_at_signs_are_refused_like_unknown_users(self):
        mark = len(SLAPD.log_text())
        self.assertIn(AUTHFAILED, imap_refusal(IX, "alice@example.org@example.org"))
        self.assertNotIn("alice@example.org@example.org", SLAPD.log_text()[mark:])

    def test_an_island_value_with_a_line_break_is_escaped_and_temporary(self):
        carol = dd.BY_LOGIN["carol@example.org"]
        SLAPD.modify(carol.dn, "mailIsland", "a\r\n2099-01-01 FORGED critical everything is fine")
        self.addCleanup(SLAPD.modify, carol.dn, "mailIsland", carol.island)
        time.sleep(1.2)  # the 1 s cache
        mark = len(IX.log_text())
        self.assertIn(UNAVAILABLE, imap_refusal(IX, "carol@example.org"))
        code, _ = lmtp_rcpt(IX, "carol@example.org")
        self.assertEqual(code, 451)
        log = log_since(IX, mark)
        self.assertIn('island "a\\x0d\\x0a2099-01-01 FORGED', log)
        self.assertFalse([line for line in log.splitlines() if line.startswith("2099-01-01")],
                         "a forged log line")


class IslandChanges(unittest.TestCase):
    def test_a_user_moved_in_the_directory_loses_the_sessions_on_the_old_island(self):
        # A change made outside `isthmusctl move` (an operator edits the
        # entry): once the cache refreshes the user, the sessions on the
        # old island are closed, so no client goes on writing there.
        carol = dd.BY_LOGIN["carol@example.org"]
        old = imap_login(IX, "carol@example.org")
        self.addCleanup(lambda: old.shutdown() if old.sock else None)
        old.select("INBOX")
        SLAPD.modify(carol.dn, "mailIsland", "b")
        self.addCleanup(SLAPD.modify, carol.dn, "mailIsland", carol.island)
        time.sleep(1.2)  # the cache's positive_ttl is 1 s
        new = imap_login(IX, "carol@example.org")  # refreshes the entry: island b now
        new.logout()
        wait_for(lambda: 'ended="closed: the directory moved the user from island a to b"'
                 in IX.log_text(), timeout=10, what="the old island's session to close")
        with self.assertRaises((imaplib.IMAP4.abort, OSError)):
            for _ in range(20):
                old.noop()
                time.sleep(0.1)
        self.assertIn("carol@example.org moved from island a to island b", IX.log_text())


class AccountStates(unittest.TestCase):
    def test_a_disabled_account_is_refused_like_a_wrong_password(self):
        self.assertIn(AUTHFAILED, imap_refusal(IX, "eve@example.org"))
        self.assertTrue(pop3_pass(IX, "eve@example.org").startswith(b"-ERR [AUTH]"))
        code, text = lmtp_rcpt(IX, "eve@example.org")
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith("5.2.1"), text)

    def test_a_moving_account_gets_a_temporary_failure(self):
        self.assertIn(UNAVAILABLE, imap_refusal(IX, "mallory@example.org"))
        self.assertTrue(pop3_pass(IX, "mallory@example.org").startswith(POP3_TEMP))
        code, text = lmtp_rcpt(IX, "mallory@example.org")
        self.assertEqual(code, 451)
        self.assertTrue(text.startswith("4.2.1"), text)


class AbsentNames(unittest.TestCase):
    def test_every_absent_name_fails_like_a_wrong_password(self):
        long_absent = "x" * 200 + "@example.org"
        for user in dd.ABSENT_LOOKUPS + (long_absent, "ghöst@example.org"):
            with self.subTest(user=user):
                if "\0" in user:
                    # RFC 4616: NUL separates SASL PLAIN's fields, so no PLAIN
                    # message can carry this name (Isthmus says BAD).
                    self.assertIn("Invalid SASL PLAIN", imap_refusal(IX, user))
                else:
                    answer = imap_refusal(IX, user)
                    self.assertIn(AUTHFAILED, answer)
                    self.assertNotIn(UNAVAILABLE, answer)
                self.assertTrue(pop3_pass(IX, user).startswith(b"-ERR [AUTH]"))

    def test_absent_recipients_are_unknown_users_over_lmtp(self):
        for user in dd.ABSENT_LOOKUPS:
            with self.subTest(user=user):
                code, text = lmtp_rcpt(IX, user)
                if any(c in user for c in " \0"):
                    # Not an RFC 5321 address: refused before any lookup.
                    self.assertEqual(code // 100, 5, text)
                else:
                    self.assertEqual((code, text[:5]), (550, "5.1.1"), text)

    def test_injection_attempts_reach_slapd_escaped(self):
        imap_refusal(IX, "alice@example.org)(uid=*")
        with open(SLAPD.log_path, errors="replace") as f:
            log = f.read()
        self.assertRegex(log, r'filter="\(&\(objectClass=mailIslandUser\)'
                              r'\(uid=alice@example.org\\29\\28uid=\\2[aA]\)\)"')


# -- failover and TLS -----------------------------------------------------------

class FailoverAndTls(unittest.TestCase):
    def test_a_dead_first_uri_fails_over_to_the_second(self):
        dead = procs.free_port()
        ix = start_isthmus(SLAPD, uris=[f"ldap://127.0.0.1:{dead}/", SLAPD.url])
        imap_login(ix, "alice@example.org").logout()
        self.assertTrue(pop3_pass(ix, "bob@example.org").startswith(b"+OK"))
        log = ix.log_text()
        self.assertIn(f"ldap: server ldap://127.0.0.1:{dead}/ failed", log)
        self.assertIn(f"ldap: connected to {SLAPD.url}", log)
        ix.stop()

    def test_ldaps_with_the_lab_ca(self):
        ix = start_isthmus(SLAPD, uris=[SLAPD.ldaps_url], tls={"ca": CA.cert_path})
        imap_login(ix, "bob@example.org").logout()
        self.assertIn(f"ldap: connected to {SLAPD.ldaps_url} for searches (TLS",
                      ix.log_text())
        ix.stop()

    def test_starttls_with_the_lab_ca(self):
        ix = start_isthmus(SLAPD, starttls=True, tls={"ca": CA.cert_path})
        imap_login(ix, "alice@example.org").logout()
        self.assertIn(f"ldap: connected to {SLAPD.url} for searches (StartTLS",
                      ix.log_text())
        ix.stop()

    def test_a_wrong_ca_fails_closed_for_ldaps_and_starttls(self):
        other = make_ca(os.path.join(LAB.root, "other-pki"), "Other CA")
        for name, overrides in (("ldaps", {"uris": [SLAPD.ldaps_url]}),
                                ("starttls", {"starttls": True})):
            with self.subTest(mode=name):
                ix = start_isthmus(SLAPD, tls={"ca": other.cert_path}, **overrides)
                self.assertIn(UNAVAILABLE, imap_refusal(ix, "alice@example.org"))
                code, text = lmtp_rcpt(ix, "bob@example.org")
                self.assertEqual((code, text[:5]), (451, LMTP_DIRECTORY_DOWN), text)
                log = ix.log_text()
                self.assertIn("TLS handshake failed", log)
                self.assertNotIn("ldap: connected to", log)
                ix.stop()


# -- directory authentication: a bind as the user ----------------------------------

class DirectoryAuthentication(unittest.TestCase):
    """auth.mode "directory": LDAP decides (a bind as the entry's DN); the
    node is logged in to as the master user on the user's behalf, so it
    would accept any password -- only the directory can refuse one."""

    @classmethod
    def setUpClass(cls):
        master_pw = os.path.join(LAB.root, "master.pw")
        with open(master_pw, "w") as f:
            f.write("masterpw")
        cls.ix = start_isthmus(SLAPD, config={"auth": {
            "mode": "directory", "master_user": "master", "master_password_file": master_pw,
            "master_style": "dovecot"}})
        cls.addClassCleanup(cls.ix.stop)

    def binds_of(self, dn: str) -> list[str]:
        """slapd's RESULT lines for the binds as DN (err=0, err=49...)."""
        with open(SLAPD.log_path, errors="replace") as f:
            lines = f.read().splitlines()
        ops = {re.search(r"conn=\d+ op=\d+", l).group(0) for l in lines
               if f'BIND dn="{dn}"' in l}
        return [l for l in lines if "RESULT" in l and "tag=97" in l
                and re.search(r"conn=\d+ op=\d+", l).group(0) in ops]

    def test_the_right_password_binds_and_logs_in(self):
        dn = dd.BY_LOGIN["dave@example.org"].dn  # {SSHA} in LDAP: slapd checks it
        imap_login(self.ix, "dave@example.org").logout()
        # slapd logs a RESULT after it has sent it: wait for the line.
        wait_for(lambda: any("err=0" in l for l in self.binds_of(dn)), what="slapd's err=0")

    def test_a_wrong_password_is_refused_by_the_directory(self):
        dn = dd.BY_LOGIN["carol@example.org"].dn
        self.assertIn(AUTHFAILED, imap_refusal(self.ix, "carol@example.org", "not-demo"))
        wait_for(lambda: any("err=49" in l for l in self.binds_of(dn)), what="slapd's err=49")
        self.assertTrue(pop3_pass(self.ix, "carol@example.org", "still-not").startswith(
            b"-ERR [AUTH]"))
        self.assertNotIn("not-demo", self.ix.log_text())

    def test_an_empty_password_never_reaches_slapd(self):
        dn = dd.BY_LOGIN["bob@example.org"].dn
        before = len(self.binds_of(dn))
        self.assertTrue(pop3_pass(self.ix, "bob@example.org", "").startswith(b"-ERR"))
        self.assertEqual(len(self.binds_of(dn)), before)


# -- outages: a slapd of their own ------------------------------------------------

class Outages(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.slapd = Slapd(os.path.join(LAB.root, "slapd-outage"), procs.free_port())
        cls.slapd.start()
        cls.addClassCleanup(cls.slapd.stop)

    def setUp(self):
        if not self.slapd.running():
            self.slapd.start()

    def test_a_stopped_slapd_serves_cached_users_and_recovers(self):
        ix = start_isthmus(self.slapd)
        imap_login(ix, "alice@example.org").logout()  # alice is cached now
        self.slapd.stop()
        time.sleep(1.3)  # past positive_ttl: only stale_if_error keeps alice
        mark = len(ix.log_text())

        imap_login(ix, "alice@example.org").logout()
        self.assertIn(UNAVAILABLE, imap_refusal(ix, "carol@example.org"))
        self.assertTrue(pop3_pass(ix, "dave@example.org").startswith(POP3_TEMP))
        code, text = lmtp_rcpt(ix, "bob@example.org")
        self.assertEqual((code, text[:5]), (451, LMTP_DIRECTORY_DOWN), text)
        # An absent user is not "unknown" while the directory cannot say so.
        self.assertIn(UNAVAILABLE, imap_refusal(ix, "nobody@example.org"))
        code, text = lmtp_rcpt(ix, "nobody@example.org")
        self.assertEqual(code, 451, text)

        log = log_since(ix, mark)
        self.assertRegex(log, rf"ldap: server {re.escape(self.slapd.url)} failed .*connect")
        self.assertIn("Connection refused", log)
        self.assertNotRegex(log, r"(?i)no island for carol")

        self.slapd.start()
        started = time.monotonic()
        wait_for(lambda: self._logs_in(ix, "carol@example.org"), timeout=8,
                 what="carol to log in after slapd came back")
        self.assertLess(time.monotonic() - started, 5)  # max_backoff is 1s
        self.assertIn(f"ldap: server {self.slapd.url} works again", ix.log_text())
        code, _ = lmtp_rcpt(ix, "bob@example.org")
        self.assertEqual(code, 250)
        ix.stop()

    def test_a_frozen_slapd_is_a_temporary_error_within_the_timeout(self):
        ix = start_isthmus(self.slapd)
        imap_login(ix, "alice@example.org").logout()  # a pooled connection exists
        self.slapd.pause()
        try:
            started = time.monotonic()
            self.assertIn(UNAVAILABLE, imap_refusal(ix, "carol@example.org"))
            took = time.monotonic() - started
            self.assertLess(took, 2.5)  # lookup timeout 1s (+ the login's own work)
            started = time.monotonic()
            code, text = lmtp_rcpt(ix, "dave@example.org")
            self.assertEqual((code, text[:5]), (451, LMTP_DIRECTORY_DOWN), text)
            self.assertLess(time.monotonic() - started, 2.5)
        finally:
            self.slapd.resume()
        wait_for(lambda: self._logs_in(ix, "carol@example.org"), timeout=8,
                 what="carol to log in after SIGCONT")
        code, _ = lmtp_rcpt(ix, "dave@example.org")
        self.assertEqual(code, 250)
        log = ix.log_text()
        self.assertRegex(log, r"ldap: server .* failed .*no answer in time")
        ix.stop()

    def test_isthmus_stops_cleanly_while_a_lookup_waits_on_a_frozen_slapd(self):
        # The lookup outlives the shutdown grace. A worker waits for the
        # directory thread's answer (bounded by the lookup timeout, 3s here)
        # before it can finish; then the directory goes away.
        ix = start_isthmus(self.slapd, timeout="3s", connect_timeout="2s",
                           config={"timeouts": {"shutdown_grace": "1s"}})
        imap_login(ix, "alice@example.org").logout()
        self.slapd.pause()
        try:
            m = imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=10)
            m.send(b"a LOGIN carol@example.org demo\r\n")  # the lookup hangs in slapd
            time.sleep(0.5)
            started = time.monotonic()
            self.assertEqual(ix.stop(), 0)  # raises if it crashed or hung
            self.assertLess(time.monotonic() - started, 4.5)
            m.shutdown()
            self.assertIn("ldap: connected to", ix.log_text())
        finally:
            self.slapd.resume()

    @staticmethod
    def _logs_in(ix, user: str) -> bool:
        try:
            imap_login(ix, user).logout()
            return True
        except imaplib.IMAP4.error:
            return False


if __name__ == "__main__":
    unittest.main(verbosity=2)
