"""The ManageSieve front door (RFC 5804) and OAuth 2.0 bearer logins
(OAUTHBEARER, XOAUTH2) end to end: real Dovecot nodes with Pigeonhole's
managesieved and its oauth2 passdb, the real isthmus binary, sieve-connect
(a ManageSieve client we did not write), Python's imaplib and poplib, and a
raw socket for byte-exact cases; an RFC 7662 introspection endpoint in
tests/lab/oauth.py plays the identity provider."""
import base64
import imaplib
import os
import poplib
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from support import Lab, PASSWORD, binary, procs, session_end_lines, session_of, wait_for
from lab.oauth import Introspection  # noqa: E402  (support puts tests/ on the path)
from lab.tls import make_ca  # noqa: E402

LAB = None
IDP = None
CA = None
MASTER_PW_FILE = None

SCRIPT = b'require ["fileinto"];\r\nif header :contains "subject" "lists" {\r\n  fileinto "Lists";\r\n}\r\n'


def setUpModule():
    global LAB, IDP, CA, MASTER_PW_FILE
    pki = tempfile.mkdtemp(prefix="isthmus-sieve-pki-")
    unittest.addModuleCleanup(shutil.rmtree, pki, True)
    CA = make_ca(pki)
    IDP = Introspection(tls=CA.issue("idp", ips=["127.0.0.1"]))
    unittest.addModuleCleanup(IDP.close)
    LAB = Lab(sieve=True,
              oauth2_url=IDP.http_url)
    unittest.addModuleCleanup(LAB.close)
    LAB.start()
    MASTER_PW_FILE = os.path.join(LAB.root, "master.pw")
    with open(MASTER_PW_FILE, "w") as f:
        f.write("masterpw\n")
    os.chmod(MASTER_PW_FILE, 0o600)


def start_own_isthmus(**overrides):
    """An isthmus of its own: fresh ports for its listeners (instances on
    one port would share its connections), stopped with the class."""
    listeners = [{"name": proto, "protocol": proto, "address": "127.0.0.1",
                  "port": procs.free_port()} for proto in ("managesieve", "imap", "pop3")]
    return LAB.start_isthmus(binary(), listeners=overrides.pop("listeners", listeners),
                             **overrides)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def oauthbearer(user: str, token: str) -> str:
    return f"n,a={user},\x01auth=Bearer {token}\x01\x01"


def xoauth2(user: str, token: str) -> str:
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


class RawSieve:
    """A byte-exact ManageSieve client: lines, and server literals {n}."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def response(self) -> list[bytes]:
        """Lines up to and including the OK/NO/BYE line (a literal's octets
        are folded into the line that announced it)."""
        lines = []
        while True:
            line = self.line()
            while line.endswith(b"}") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1:-1].rstrip(b"+"))
                while len(self.buf) < size + 2:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed in a literal")
                    self.buf += chunk
                line += b"\r\n" + self.buf[:size]
                self.buf = self.buf[size:]
                line += self.line()
            lines.append(line)
            if line.split(b" ")[0].upper() in (b"OK", b"NO", b"BYE"):
                return lines

    def command(self, text: str | bytes) -> list[bytes]:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.response()

    def log_in(self, user: str, password: str = PASSWORD) -> list[bytes]:
        return self.command(f'AUTHENTICATE "PLAIN" "{b64(chr(0) + user + chr(0) + password)}"')

    def closed(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


def sieve_connect(port: int, user: str, password: str, *args: str,
                  stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Runs sieve-connect against PORT (the password through a pipe)."""
    r, w = os.pipe()
    os.write(w, password.encode() + b"\n")
    os.close(w)
    try:
        return subprocess.run(
            ["sieve-connect", "--server", "127.0.0.1", "--port", str(port), "--user", user,
             "--passwordfd", str(r), "--notlsverify", "--authmech", "PLAIN", *args],
            pass_fds=(r,), input=stdin, capture_output=True, timeout=30)
    finally:
        os.close(r)


def user_home(user: str) -> str:
    local, _, domain = user.partition("@")
    return os.path.join(LAB.store(LAB.home_island(user)), domain, local)


class FrontDoor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ix = start_own_isthmus()
        cls.addClassCleanup(cls.ix.stop)
        cls.port = cls.ix.port("managesieve")

    def raw(self) -> RawSieve:
        c = RawSieve(self.port)
        self.addCleanup(c.close)
        return c

    def test_greeting_capabilities_and_the_unauthenticated_state(self):
        c = self.raw()
        greeting = c.response()
        self.assertEqual(greeting[0], b'"IMPLEMENTATION" "Isthmus"')
        self.assertIn(b'"SASL" "PLAIN"', greeting)
        self.assertIn(b'"VERSION" "1.0"', greeting)
        self.assertTrue(any(line.startswith(b'"SIEVE" "fileinto ') for line in greeting))
        self.assertNotIn(b'"STARTTLS"', greeting)  # no certificate on this listener
        self.assertEqual(greeting[-1], b'OK "Isthmus ready."')
        self.assertEqual(c.command("CAPABILITY"), greeting)
        self.assertEqual(c.command('NOOP "t1"'), [b'OK (TAG "t1") "Done."'])
        self.assertEqual(c.command("NOOP"), [b'OK "Done."'])
        self.assertEqual(c.command('PUTSCRIPT "x" {5+}\r\nkeep;'), [b'NO "Log in first."'])
        self.assertEqual(c.command("LISTSCRIPTS"), [b'NO "Log in first."'])
        self.assertEqual(c.command("FROB"), [b'NO "Unknown command."'])
        self.assertEqual(c.command('AUTHENTICATE "DIGEST-MD5"'),
                         [b'NO "Unsupported authentication mechanism."'])
        self.assertEqual(c.command("LOGOUT"), [b'OK "Logout completed."'])
        self.assertTrue(c.closed())

    def test_sieve_connect_uploads_activates_and_reads_a_script_on_the_home_island(self):
        for user in ("alice@example.org", "bob@example.org"):
            name = f"rules-{user.partition('@')[0]}"
            path = os.path.join(LAB.root, f"{name}.sieve")
            with open(path, "wb") as f:
                f.write(SCRIPT)
            up = sieve_connect(self.port, user, PASSWORD, "--upload", "--localsieve", path,
                               "--remotesieve", name)
            self.assertEqual(up.returncode, 0, up.stderr)
            act = sieve_connect(self.port, user, PASSWORD, "--activate", "--remotesieve", name)
            self.assertEqual(act.returncode, 0, act.stderr)
            listed = sieve_connect(self.port, user, PASSWORD, "--list")
            self.assertEqual(listed.returncode, 0, listed.stderr)
            self.assertIn(f'"{name}" ACTIVE', listed.stdout.decode())
            down = sieve_connect(self.port, user, PASSWORD, "--download", "--remotesieve", name,
                                 "--localsieve", path + ".back")
            self.assertEqual(down.returncode, 0, down.stderr)
            with open(path + ".back", "rb") as f:
                self.assertEqual(f.read().replace(b"\r\n", b"\n"),
                                 SCRIPT.replace(b"\r\n", b"\n"))
            # The script is in the store of the user's own island, active.
            home = user_home(user)
            self.assertTrue(os.path.exists(os.path.join(home, "sieve", name + ".sieve")))
            self.assertEqual(os.path.basename(os.readlink(os.path.join(home, ".dovecot.sieve"))),
                             name + ".sieve")
        ends = [e for e in session_end_lines(self.ix.log_text()) if e.get("proto") == "managesieve"]
        self.assertTrue(any(e.get("user") == "bob@example.org" and e.get("island") == "b"
                            for e in ends), ends)

    def test_a_wrong_password_is_refused_after_the_same_delay_and_the_session_stays(self):
        c = self.raw()
        c.response()
        self.assertEqual(c.log_in("alice@example.org", "wrong"), [b'NO "Authentication failed."'])
        self.assertEqual(c.log_in("nobody@example.org", "wrong"), [b'NO "Authentication failed."'])
        self.assertEqual(c.log_in("alice@example.org")[-1], b'OK "Logged in."')
        bad = sieve_connect(self.port, "alice@example.org", "wrong", "--list")
        self.assertNotEqual(bad.returncode, 0)

    def test_authenticate_without_initial_response_a_literal_and_cancel(self):
        c = self.raw()
        c.response()
        c.send('AUTHENTICATE "PLAIN"\r\n')
        self.assertEqual(c.line(), b'""')
        c.send('"*"\r\n')
        self.assertEqual(c.response(), [b'NO "Authentication cancelled."'])
        c.send('AUTHENTICATE "PLAIN"\r\n')
        self.assertEqual(c.line(), b'""')
        blob = b64("\0alice@example.org\0" + PASSWORD).encode()
        c.send(b"{%d+}\r\n%s\r\n" % (len(blob), blob))
        self.assertEqual(c.response()[-1], b'OK "Logged in."')
        # Now relayed to the node: its own answers.
        self.assertEqual(c.command('PUTSCRIPT "lit" {7+}\r\nkeep;\r\n')[-1][:2], b"OK")
        listed = c.command("LISTSCRIPTS")
        self.assertIn(b'"lit"', b"\n".join(listed))
        self.assertEqual(listed[-1][:2], b"OK")
        caps = c.command("CAPABILITY")
        self.assertTrue(caps[0].startswith(b'"IMPLEMENTATION" "Dovecot'), caps)

    def test_the_node_sees_the_clients_port_and_isthmus_session_id(self):
        c = self.raw()
        c.response()
        self.assertEqual(c.log_in("carol@example.org")[-1], b'OK "Logged in."')
        local_port = c.sock.getsockname()[1]
        session = wait_for(lambda: session_of(self.ix.log_text(), local_port),
                           what="the login line")

        def find():
            for node in LAB.nodes.values():
                for login in node.logins():
                    if login.get("session") == session:
                        return dict(login, node=node.name)
            return None
        login = wait_for(find, what=f"the node's login line for session {session}")
        self.assertTrue(login["ok"], login)
        self.assertEqual(login["service"], "managesieve-login")
        self.assertIn(login["node"], ("a-left", "a-right"))
        self.assertEqual(login["user"], "carol@example.org")
        self.assertEqual(login["rport"], str(local_port))  # told by XCLIENT
        self.assertNotEqual(login["real_rport"], login["rport"])  # Isthmus' own port

    def test_hostile_lines_get_an_answer_not_a_node(self):
        c = self.raw()
        c.response()
        self.assertEqual(c.command(b'NOOP "a\x00b"')[0][:2], b"NO")
        self.assertEqual(c.command(b'NOOP  "two spaces"')[0][:2], b"NO")
        self.assertEqual(c.command(b'AUTHENTICATE "PLAIN" "%%%"'), [b'NO "Invalid base64 data."'])
        self.assertEqual(c.command('AUTHENTICATE "PLAIN" "' + b64("no-nuls") + '"'),
                         [b'NO "Invalid SASL PLAIN message."'])
        # A literal larger than any line is refused before its octets come.
        c.send('PUTSCRIPT "x" {999999999+}\r\n')
        self.assertEqual(c.response(), [b'BYE "Line too long."'])
        self.assertTrue(c.closed())
        d = self.raw()
        d.response()
        d.send(b"A" * 70000)
        self.assertEqual(d.response(), [b'BYE "Line too long."'])
        # None of it reached a node or counted against one.
        log = self.ix.log_text()
        self.assertNotRegex(log, r"marked down|node failure")


class StartTls(unittest.TestCase):
    """STARTTLS on a listener with a certificate, with sieve-connect (which
    takes it whenever offered) and by hand."""

    @classmethod
    def setUpClass(cls):
        cls.cert = CA.issue("isthmus", dns=["isthmus.lab.test"], ips=["127.0.0.1"])
        cls.port = procs.free_port()
        cls.ix = start_own_isthmus(
            tls={"certificate": cls.cert.cert_path, "key": cls.cert.key_path},
            listeners=[{"name": "sieve", "protocol": "managesieve", "address": "127.0.0.1",
                        "port": cls.port, "tls": "starttls"}],
            trusted_networks=[])
        cls.addClassCleanup(cls.ix.stop)

    def test_no_password_before_tls_and_capabilities_again_after(self):
        c = RawSieve(self.port)
        self.addCleanup(c.close)
        greeting = c.response()
        self.assertIn(b'"STARTTLS"', greeting)
        self.assertIn(b'"SASL" ""', greeting)  # nothing to authenticate with in clear
        self.assertEqual(c.log_in("alice@example.org")[0][:22], b"NO (ENCRYPT-NEEDED) \"P")
        self.assertEqual(c.command("STARTTLS"), [b'OK "Begin TLS negotiation now."'])
        ctx = ssl.create_default_context(cafile=CA.cert_path)
        c.sock = ctx.wrap_socket(c.sock, server_hostname="isthmus.lab.test")
        after = c.response()  # RFC 5804 section 2.2: the capabilities, unasked
        self.assertIn(b'"SASL" "PLAIN"', after)
        self.assertNotIn(b'"STARTTLS"', after)
        self.assertEqual(c.log_in("alice@example.org")[-1], b'OK "Logged in."')

    def test_sieve_connect_over_starttls(self):
        listed = sieve_connect(self.port, "carol@example.org", PASSWORD, "--list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        ends = [e for e in session_end_lines(self.ix.log_text()) if e.get("user") ==
                "carol@example.org"]
        self.assertTrue(ends and ends[-1]["tls"] != "-", ends)


class HealthChecks(unittest.TestCase):
    """Active checks read a ManageSieve greeting up to its OK: Dovecot's
    managesieved passes; an IMAP server on a node's managesieve port does
    not."""

    def test_managesieve_greetings_are_checked(self):
        a_left = LAB.node("a-left")
        wrong = {"name": "x-wrong", "host": a_left.host,
                 "ports": {"imap": a_left.ports["imap"], "pop3": a_left.ports["pop3"],
                           "lmtp": a_left.ports["lmtp"], "managesieve": a_left.ports["imap"]}}
        islands = LAB.config["islands"] + [{"name": "x", "policy": "balance", "nodes": [wrong]}]
        ix = start_own_isthmus(health={"active": True, "interval": "200ms", "timeout": "2s",
                                       "fall": 2, "rise": 1}, islands=islands)
        self.addCleanup(ix.stop)
        deadline = time.monotonic() + 10
        while "node x-wrong" not in ix.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # a few more rounds for the good nodes
        log = ix.log_text()
        self.assertRegex(log, r"node x-wrong.*(unexpected greeting|marked down)")
        for name in LAB.nodes:
            self.assertNotRegex(log, rf"node {name}\b.*(failed check|marked down)")


def imap_xoauth2(port: int, user: str, token: str, mechanism: str = "XOAUTH2"):
    """(typ, text) of an IMAP AUTHENTICATE with a bearer token, then SELECT."""
    m = imaplib.IMAP4("127.0.0.1", port, timeout=15)
    message = xoauth2(user, token) if mechanism == "XOAUTH2" else oauthbearer(user, token)
    try:
        typ, data = m.authenticate(mechanism, lambda _: message.encode())
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


def pop3_bearer(port: int, user: str, token: str, mechanism: str = "OAUTHBEARER") -> bytes:
    """The answer to POP3 AUTH with a bearer token (initial response)."""
    p = poplib.POP3("127.0.0.1", port, timeout=15)
    message = oauthbearer(user, token) if mechanism == "OAUTHBEARER" else xoauth2(user, token)
    try:
        p._putcmd(f"AUTH {mechanism} {b64(message)}")
        line, _ = p._getline()
        if line.startswith(b"+ "):  # the error challenge (RFC 7628 3.2.2)
            p._putcmd("AQ==")
            line, _ = p._getline()
        if line.startswith(b"+OK"):
            p.stat()
            p.quit()
        return line
    finally:
        p.close()


def sieve_bearer(port: int, user: str, token: str, mechanism: str = "OAUTHBEARER") -> list[bytes]:
    c = RawSieve(port)
    try:
        c.response()
        message = oauthbearer(user, token) if mechanism == "OAUTHBEARER" else xoauth2(user, token)
        c.send(f'AUTHENTICATE "{mechanism}" "{b64(message)}"\r\n')
        first = c.line()
        if first.startswith(b'"'):  # the error challenge
            c.send('"AQ=="\r\n')
            return [first] + c.response()
        return [first]
    finally:
        c.close()


class OAuthDirectoryMode(unittest.TestCase):
    """auth.mode "directory": Isthmus checks each token at the introspection
    endpoint (https, the lab CA), then logs in to the node as the master
    user; the node never sees the token."""

    @classmethod
    def setUpClass(cls):
        cls.ix = start_own_isthmus(auth={
            "mode": "directory", "master_user": "master", "master_password_file": MASTER_PW_FILE,
            "master_style": "sasl",
            "oauth2": {"introspection_url": IDP.https_url, "ca": CA.cert_path,
                       "cache_ttl": "30s"}})
        cls.addClassCleanup(cls.ix.stop)

    def test_a_valid_token_logs_in_over_imap_pop3_and_managesieve(self):
        token = IDP.issue("alice@example.org")
        self.assertEqual(imap_xoauth2(self.ix.port("imap"), "alice@example.org", token)[0], "OK")
        self.assertEqual(imap_xoauth2(self.ix.port("imap"), "alice@example.org", token,
                                      "OAUTHBEARER")[0], "OK")
        answer = pop3_bearer(self.ix.port("pop3"), "alice@example.org", token)
        self.assertTrue(answer.startswith(b"+OK"), answer)
        self.assertEqual(sieve_bearer(self.ix.port("managesieve"), "alice@example.org", token),
                         [b'OK "Logged in."'])
        # One introspection; the verdict is remembered (cache_ttl).
        self.assertEqual(IDP.asked(token), 1)
        log = self.ix.log_text()
        self.assertNotIn(token, log)
        for node in LAB.nodes.values():
            self.assertNotIn(token, node.log_text())

    def test_inactive_expired_and_foreign_tokens_are_refused_with_the_error_challenge(self):
        inactive = IDP.issue("alice@example.org", active=False)
        expired = IDP.issue("alice@example.org", expires_in=-60)
        foreign = IDP.issue("bob@example.org")
        for token in (inactive, expired, foreign):
            typ, text = imap_xoauth2(self.ix.port("imap"), "alice@example.org", token)
            self.assertEqual(typ, "NO", text)
            self.assertIn("AUTHENTICATIONFAILED", text)
            answer = sieve_bearer(self.ix.port("managesieve"), "alice@example.org", token)
            challenge = base64.b64decode(answer[0].strip(b'"'))
            self.assertEqual(json_status(challenge), "invalid_token")
            self.assertEqual(answer[-1], b'NO "Authentication failed."')
            self.assertEqual(pop3_bearer(self.ix.port("pop3"), "alice@example.org", token),
                             b"-ERR [AUTH] Authentication failed.")
        log = self.ix.log_text()
        self.assertRegex(log, r"token refused: the token is not active")
        self.assertRegex(log, r"token refused: the token has expired")
        for token in (inactive, expired, foreign):
            self.assertNotIn(token, log)

    def test_an_endpoint_that_does_not_answer_is_a_temporary_failure(self):
        token = IDP.issue("carol@example.org")
        IDP.status = 503
        try:
            typ, text = imap_xoauth2(self.ix.port("imap"), "carol@example.org", token)
            self.assertEqual(typ, "NO")
            self.assertIn("UNAVAILABLE", text)
            self.assertEqual(sieve_bearer(self.ix.port("managesieve"), "carol@example.org", token)
                             [-1][:12], b"NO (TRYLATER")
        finally:
            IDP.status = 200
        self.assertEqual(imap_xoauth2(self.ix.port("imap"), "carol@example.org", token)[0], "OK")

    def test_passwords_are_refused_where_only_tokens_are_taken(self):
        # A static directory holds no passwords: in directory mode a password
        # is a wrong one, answered without asking anyone (and throttled).
        c = RawSieve(self.ix.port("managesieve"))
        self.addCleanup(c.close)
        c.response()
        self.assertEqual(c.log_in("alice@example.org"), [b'NO "Authentication failed."'])
        self.assertRegex(self.ix.log_text(), r"only bearer tokens are taken")

    def test_malformed_and_oversized_tokens_never_reach_the_endpoint(self):
        before = IDP.asked()
        for token in ("has space", "x" * 9000, "tab\there"):
            typ, _ = imap_xoauth2(self.ix.port("imap"), "alice@example.org", token)
            self.assertEqual(typ, "NO")
        self.assertEqual(IDP.asked(), before)


def json_status(challenge: bytes) -> str:
    import json
    return json.loads(challenge).get("status", "")


class OAuthBackendMode(unittest.TestCase):
    """auth.mode "backend": the token goes to the node unchanged (Dovecot's
    oauth2 passdb asks the endpoint); Isthmus routes by the name in it."""

    @classmethod
    def setUpClass(cls):
        cls.ix = start_own_isthmus(auth={"oauth2": {}})
        cls.addClassCleanup(cls.ix.stop)

    def test_the_node_checks_the_token(self):
        token = IDP.issue("bob@example.org")
        before = IDP.asked(token)
        self.assertEqual(imap_xoauth2(self.ix.port("imap"), "bob@example.org", token)[0], "OK")
        self.assertEqual(sieve_bearer(self.ix.port("managesieve"), "bob@example.org", token,
                                      "XOAUTH2"), [b'OK "Logged in."'])
        self.assertGreaterEqual(IDP.asked(token) - before, 2)  # asked by the node each time
        # The end lines are written once the sessions close (after the
        # clients left: later than this under a sanitizer build).
        def ends():
            found = [e for e in session_end_lines(self.ix.log_text())
                     if e.get("user") == "bob@example.org"]
            return found if len(found) >= 2 else None
        found = wait_for(ends, timeout=10, what="both sessions' end lines")
        self.assertTrue(all(e["island"] == "b" for e in found), found)
        self.assertNotIn(token, self.ix.log_text())

    def test_a_refused_token_is_the_clients_failure_not_the_nodes(self):
        token = IDP.issue("alice@example.org", active=False)
        for _ in range(3):
            typ, text = imap_xoauth2(self.ix.port("imap"), "alice@example.org", token)
            self.assertEqual(typ, "NO")
            self.assertIn("AUTHENTICATIONFAILED", text)
            answer = sieve_bearer(self.ix.port("managesieve"), "alice@example.org", token)
            self.assertEqual(answer[-1], b'NO "Authentication failed."')
        self.assertNotRegex(self.ix.log_text(), r"marked down|node failure")
        # The island still serves passwords.
        c = RawSieve(self.ix.port("managesieve"))
        self.addCleanup(c.close)
        c.response()
        self.assertEqual(c.log_in("alice@example.org")[-1], b'OK "Logged in."')


if __name__ == "__main__":
    unittest.main(verbosity=2)
