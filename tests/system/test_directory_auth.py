"""Authentication mode "directory": Isthmus checks the password itself --
crypt(3) hashes from a real MariaDB, a bind as the user against a real
slapd -- and logs in to the real Dovecot nodes as their master user
(SASL PLAIN with authzid, or Dovecot's "user*master"), so the nodes never
see the user's password. Also: the growing delay after failed logins, and
verdicts remembered per (user, password) so a spray of the same guesses
does not reach the directory again.
"""
import imaplib
import os
import poplib
import re
import time
import unittest

from support import Lab, PASSWORD, binary, procs, start_lab_and_mariadb

from lab import directory_data as dd  # noqa: E402
from lab.dovecot import MASTER_PASSWORD, MASTER_USER  # noqa: E402
from lab.slapd import Slapd  # noqa: E402

LAB = DB = SLAPD = None
MASTER_PW_FILE = None
# Users the Dovecot nodes must know besides the lab's four. Their node
# password is "demo" like everyone's: a login that works with another
# password can only have gone through the master user.
EXTRA_NODE_USERS = {"zoe@other.test": PASSWORD, "ivan.legacy@example.org": PASSWORD}


def setUpModule():
    global LAB, DB, SLAPD, MASTER_PW_FILE
    LAB = Lab(isthmus_ports={"imap": 0, "pop3": 0})
    unittest.addModuleCleanup(LAB.close)
    for node in LAB.nodes.values():
        node.users.update(EXTRA_NODE_USERS)
    # The Dovecot nodes and MariaDB start at the same time.
    DB = start_lab_and_mariadb(LAB, unittest.addModuleCleanup)
    SLAPD = Slapd(os.path.join(LAB.root, "slapd"), procs.free_port())
    SLAPD.start()
    unittest.addModuleCleanup(SLAPD.stop)
    MASTER_PW_FILE = os.path.join(LAB.root, "master.pw")
    with open(MASTER_PW_FILE, "w") as f:
        f.write(MASTER_PASSWORD + "\n")
    os.chmod(MASTER_PW_FILE, 0o600)


def sql_directory():
    return {"type": "sql", "file": None,
            "sql": {"servers": [f"127.0.0.1:{DB.port}"], "database": dd.SQL_DATABASE,
                    "user": dd.SQL_USER, "password_file": DB.password_path, "pool": 2,
                    "timeout": "2s", "connect_timeout": "1s", "max_backoff": "1s"},
            "cache": {"positive_ttl": "1s", "negative_ttl": "1s"}}


def ldap_directory():
    return {"type": "ldap", "file": None,
            "ldap": {"uris": [SLAPD.url], "bind_dn": dd.SERVICE_DN,
                     "bind_password_file": SLAPD.service_pw_path, "base": dd.PEOPLE_DN,
                     "pool": 2, "timeout": "2s", "connect_timeout": "1s",
                     "max_backoff": "1s"},
            "cache": {"positive_ttl": "1s", "negative_ttl": "1s"}}


def start(directory, *, style="sasl", master=True, delay="0s", max_delay="0s"):
    listeners = [{"name": proto, "protocol": proto, "address": "127.0.0.1",
                  "port": procs.free_port()} for proto in ("imap", "pop3")]
    auth = {"mode": "directory"}
    if master:
        auth.update({"master_user": MASTER_USER, "master_password_file": MASTER_PW_FILE,
                     "master_style": style})
    auth["max_failure_delay"] = max_delay
    return LAB.start_isthmus(binary(), listeners=listeners, directory=directory, auth=auth,
                             timeouts={"auth_failure_delay": delay})


def imap_login(ix, user, password=PASSWORD, authzid=""):
    """('OK', text) or ('NO', text); on OK, INBOX was selected."""
    m = imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=15)
    try:
        if authzid:
            response = f"{authzid}\0{user}\0{password}".encode()
            typ, data = m.authenticate("PLAIN", lambda _: response)
        else:
            typ, data = m.login(user, password)
        assert m.select("INBOX")[0] == "OK"
        m.logout()
        return typ, data[0].decode(errors="replace") if data else ""
    except imaplib.IMAP4.error as e:
        text = e.args[0] if e.args else ""
        return "NO", text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    finally:
        try:
            m.shutdown()
        except OSError:
            pass


def pop3_login(ix, user, password=PASSWORD):
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
        p.close()


def binds_as(dn: str) -> int:
    """How many BIND operations slapd logged for DN."""
    return len(re.findall(r'BIND dn="' + re.escape(dn) + '"', SLAPD.log_text(), re.I))


class SqlHashes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ix = start(sql_directory())

    def test_every_hash_scheme_logs_in_through_the_master_user(self):
        # {SHA512-CRYPT}, $2b$, {BLF-CRYPT}$2y$, $6$, yescrypt, {SHA256-CRYPT}
        # with a node login of its own (ivan.legacy).
        for user in ("alice@example.org", "carol@example.org", "bob@example.org",
                     "dave@example.org", "zoe@other.test", "ivan@example.org"):
            with self.subTest(user=user):
                self.assertEqual(imap_login(self.ix, user)[0], "OK")
        self.assertTrue(pop3_login(self.ix, "bob@example.org").startswith("+OK"))
        log = self.ix.log_text()
        self.assertIn("login ok user=ivan@example.org island=a", log)

    def test_the_node_never_sees_the_users_password(self):
        # The directory now holds another password; the nodes still have
        # "demo". Only the master user can make the new one work.
        new = "n3w-Secret"
        DB.set_account("carol@example.org", password="{SHA512-CRYPT}" + dd.hash_password(new))
        try:
            time.sleep(1.2)  # past positive_ttl
            self.assertEqual(imap_login(self.ix, "carol@example.org", new)[0], "OK")
            self.assertTrue(pop3_login(self.ix, "carol@example.org", new).startswith("+OK"))
            typ, text = imap_login(self.ix, "carol@example.org", PASSWORD)
            self.assertEqual(typ, "NO")
            self.assertIn("[AUTHENTICATIONFAILED]", text)
            self.assertIn("wrong password", self.ix.log_text())
        finally:
            DB.set_account("carol@example.org", password=dd.BCRYPT_2B)
            time.sleep(1.2)  # the cache forgets the new hash

    def test_wrong_passwords_disabled_and_unknown_users_fail_alike(self):
        for user, password in (("alice@example.org", "wrong"), ("alice@example.org", ""),
                               ("eve@example.org", PASSWORD),
                               ("nobody@example.org", PASSWORD)):
            with self.subTest(user=user, password=password):
                typ, text = imap_login(self.ix, user, password)
                self.assertEqual(typ, "NO")
                self.assertIn("[AUTHENTICATIONFAILED]", text)
        self.assertTrue(pop3_login(self.ix, "alice@example.org", "wrong").startswith("-ERR [AUTH]"))

    def test_a_hash_isthmus_cannot_check_is_a_temporary_failure(self):
        DB.set_account("dave@example.org", password="{PLAIN}demo")
        try:
            time.sleep(1.2)
            typ, text = imap_login(self.ix, "dave@example.org")
            self.assertEqual(typ, "NO")
            self.assertIn("[UNAVAILABLE]", text)
            self.assertIn("scheme Isthmus cannot check", self.ix.log_text())
        finally:
            DB.set_account("dave@example.org", password=dd.SHA512_CRYPT)
            time.sleep(1.2)

    def test_a_client_authorization_identity_is_refused(self):
        typ, text = imap_login(self.ix, "alice@example.org", authzid="bob@example.org")
        self.assertEqual(typ, "NO")
        self.assertIn("[AUTHENTICATIONFAILED]", text)


class DovecotMasterStyle(unittest.TestCase):
    def test_user_star_master_logs_in(self):
        ix = start(sql_directory(), style="dovecot")
        if LAB.kind == "cyrus":
            # Cyrus takes a master user only as SASL PLAIN with an authzid
            # (proxyservers): "user*master" is not a user it knows
            # (docs/nodes-cyrus.md).
            self.assertEqual(imap_login(ix, "alice@example.org")[0], "NO")
            return
        self.assertEqual(imap_login(ix, "alice@example.org")[0], "OK")
        self.assertTrue(pop3_login(ix, "bob@example.org").startswith("+OK"))
        typ, _ = imap_login(ix, "alice@example.org", "wrong")
        self.assertEqual(typ, "NO")


class WithoutMasterUser(unittest.TestCase):
    def test_the_checked_password_goes_to_the_node(self):
        ix = start(sql_directory(), master=False)
        self.assertEqual(imap_login(ix, "alice@example.org")[0], "OK")


class LdapBind(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ix = start(ldap_directory())

    def test_users_bind_with_their_own_password(self):
        # dave's LDAP password is {SSHA}: slapd checks it, Isthmus only binds.
        for user in ("alice@example.org", "dave@example.org", "bob@example.org"):
            with self.subTest(user=user):
                self.assertEqual(imap_login(self.ix, user)[0], "OK")
        for password in ("wrong", ""):
            typ, text = imap_login(self.ix, "alice@example.org", password)
            self.assertEqual(typ, "NO")
            self.assertIn("[AUTHENTICATIONFAILED]", text)

    def test_the_same_guess_reaches_the_directory_once(self):
        dn = dd.BY_LOGIN["carol@example.org"].dn
        before = binds_as(dn)
        for _ in range(4):
            typ, _text = imap_login(self.ix, "carol@example.org", "spray-guess-1")
            self.assertEqual(typ, "NO")
        self.assertEqual(binds_as(dn) - before, 1)
        imap_login(self.ix, "carol@example.org", "spray-guess-2")
        self.assertEqual(binds_as(dn) - before, 2)
        self.assertIn("remembered verdict", self.ix.log_text())

    def test_ldap_down_the_password_cannot_be_checked(self):
        ix = start(ldap_directory())
        self.assertEqual(imap_login(ix, "bob@example.org")[0], "OK")
        SLAPD.stop()
        try:
            # bob's entry is served stale; his remembered verdict still holds.
            self.assertEqual(imap_login(ix, "bob@example.org")[0], "OK")
            # Another password cannot be checked: a temporary failure.
            typ, text = imap_login(ix, "bob@example.org", "other-password")
            self.assertEqual(typ, "NO")
            self.assertIn("[UNAVAILABLE]", text)
        finally:
            SLAPD.start()
        # Back within max_backoff (1 s), without a restart.
        deadline = time.monotonic() + 10
        while imap_login(ix, "alice@example.org")[0] != "OK":
            self.assertLess(time.monotonic(), deadline, "no recovery after slapd came back")
            time.sleep(0.3)


class FailureDelay(unittest.TestCase):
    def test_the_delay_grows_per_address(self):
        ix = start(sql_directory(), delay="300ms", max_delay="1200ms")
        took = []
        for i in range(5):
            t0 = time.monotonic()
            typ, _ = imap_login(ix, "alice@example.org", f"wrong-{i}")
            took.append(time.monotonic() - t0)
            self.assertEqual(typ, "NO")
        # Every failure is answered 0.3 s after its command; the throttle
        # then holds the address's next check back 0.3, 0.6, 1.2, 1.2 s
        # after each failure (doubling, capped), so the later attempts wait
        # for their check, not only for their answer.
        self.assertLess(took[0], 1.0)
        self.assertGreaterEqual(took[3], 1.1)
        self.assertGreaterEqual(took[4], 1.1)
        self.assertLess(took[4], 3.0)
        self.assertIn("throttled, checking in", ix.log_text())


if __name__ == "__main__":
    unittest.main(verbosity=2)
