"""Shared helpers for the system tests: where the binary is, raw IMAP and
POP3 clients for the cases real clients will not produce, and scripted fake
IMAP and POP3 nodes for failures a real server will not produce.

Every test file is a plain unittest module run by ctest with /usr/bin/python3
and ISTHMUS_BIN pointing at the binary under test.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import socketserver
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from lab import procs  # noqa: E402
from lab.cluster import Lab, ODD_PASSWORD, ODD_USER, PASSWORD, deep_merge  # noqa: E402,F401
from lab.dovecot import make_message  # noqa: E402,F401
from lab.isthmus import Isthmus  # noqa: E402,F401


def binary() -> str:
    path = os.environ.get("ISTHMUS_BIN")
    if not path:
        for candidate in ("build/ci/bin/isthmus", "build/dev/bin/isthmus",
                          "build/release/bin/isthmus"):
            full = os.path.join(HERE, "..", "..", candidate)
            if os.path.exists(full):
                path = full
                break
    if not path or not os.path.exists(path):
        raise unittest.SkipTest("ISTHMUS_BIN is not set and no build was found")
    return os.path.abspath(path)


def plain(user: str, password: str, authzid: str = "") -> str:
    """A SASL PLAIN response, base64 (RFC 4616)."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def start_lab_and_mariadb(lab, add_cleanup, used: set | None = None):
    """Start LAB's Dovecot nodes and a MariaDB (on a free port, in
    LAB.root/mariadb) at the same time; returns the MariaDB, whose stop is
    registered with ADD_CLEANUP (unittest's addModuleCleanup,
    addClassCleanup or addCleanup). USED: ports to keep clear of; the
    MariaDB's port is added to it."""
    from lab.mariadb import MariaDB
    used = used if used is not None else set()
    used |= {p for node in lab.nodes.values() for p in node.ports.values()}
    used |= set(lab.isthmus_ports.values())
    db = MariaDB(os.path.join(lab.root, "mariadb"), procs.free_port(exclude=used))
    used.add(db.port)
    add_cleanup(db.stop)
    failed = []

    def start_db():
        try:
            db.start()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            failed.append(e)

    t = threading.Thread(target=start_db)
    t.start()
    lab.start()
    t.join()
    if failed:
        raise failed[0]
    return db


def curl(args: list[str], *, unix: str = "", token: str = "") -> tuple[int, str]:
    """(HTTP status, body) of one curl call (a real HTTP client for the
    admin API: on its unix socket with UNIX, over TCP with a bearer TOKEN)."""
    import subprocess
    argv = ["curl", "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"]
    if unix:
        argv += ["--unix-socket", unix]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(argv + args, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"curl {args}: {out.stderr}")
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RawImap:
    """A bare socket speaking IMAP by hand, for byte-exact cases."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self) -> bytes:
        """One line without CRLF; raises EOFError if the peer closed first."""
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed; unterminated: {self.buf!r}")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def greeting(self) -> bytes:
        return self.line()

    def until_tagged(self, tag: str) -> list[bytes]:
        """Lines up to and including the one tagged TAG."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    def command(self, tag: str, text: str) -> list[bytes]:
        self.send(f"{tag} {text}\r\n")
        return self.until_tagged(tag)

    def read_until_closed(self, timeout: float = 10.0) -> bytes:
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
        except ConnectionResetError:
            pass
        data, self.buf = self.buf, b""
        return data

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True if the peer closes within TIMEOUT (data before that is kept)."""
        self.sock.settimeout(timeout)
        try:
            while self._fill():
                pass
            return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def session_end_lines(log: str) -> list[dict]:
    """The fields of every `session=... end ...` log line."""
    out = []
    for line in log.splitlines():
        if " end client=" not in line:
            continue
        fields = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
        out.append({k: v.strip('"') for k, v in fields.items()})
    return out


# -- scripted fake IMAP nodes ------------------------------------------------

class FakeImapNode:
    """An IMAP node that follows a script, named after the failure it plays.

    Behaviours:
      dovecot_like        SASL-IR + AUTH=PLAIN; password "good" (or "we ird") logs in
      plain_old           no capabilities in the greeting, no AUTH=PLAIN, no
                          LITERAL+: only LOGIN with synchronising literals;
                          no CAPABILITY code in the OK either
      banner_hangs        accepts, never greets
      bye_greeting        greets with * BYE (overloaded)
      garbage_greeting    greets with something that is not IMAP
      closes_after_login  closes the connection when the credentials arrive
      says_no_with_detail refuses with internal details in the text
      says_unavailable    refuses with NO [UNAVAILABLE]
      sends_extra_after_ok  sends an untagged EXISTS right after its OK
      refuses_plaintext   advertises LOGINDISABLED
      not_imap            greets without IMAP4rev1/IMAP4rev2 in its capabilities
      answers_before_asked  sends a login answer with its greeting, unasked
      refers              refuses with NO [REFERRAL ...]
      not_authorized      refuses with NO [AUTHORIZATIONFAILED]
    After a login, any command TAG X gets "TAG OK fake X done".
    `received` keeps every byte each connection sent, for assertions.
    """

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.received: list[bytes] = []
        self.connections = 0
        node = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                node.connections += 1
                index = len(node.received)
                node.received.append(b"")
                try:
                    node._serve(self.request, index)
                except (OSError, EOFError):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # -- the script

    def _serve(self, sock: socket.socket, index: int):
        sock.settimeout(30)
        buf = b""

        def read_line() -> bytes:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError
                buf += chunk
                self.received[index] += chunk
            line, buf = buf.split(b"\r\n", 1)
            return line

        def read_exact(n: int) -> bytes:
            nonlocal buf
            while len(buf) < n:
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError
                buf += chunk
                self.received[index] += chunk
            data, buf = buf[:n], buf[n:]
            return data

        b = self.behaviour
        if b == "banner_hangs":
            time.sleep(30)
            return
        if b == "bye_greeting":
            sock.sendall(b"* BYE Too many connections, try later\r\n")
            return
        if b == "garbage_greeting":
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            return
        if b == "plain_old":
            sock.sendall(b"* OK fake ready\r\n")
        elif b == "not_imap":
            sock.sendall(b"* OK [CAPABILITY POP3ISH SASL-IR AUTH=PLAIN] not an IMAP server\r\n")
        elif b == "answers_before_asked":
            # The answer to a login nobody sent yet (tag X2: Isthmus' ID and
            # login tags are X1, X2).
            sock.sendall(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN ID] fake ready\r\n"
                         b"X2 OK [CAPABILITY IMAP4rev1 FORGED] Logged in\r\n")
        elif b == "refuses_plaintext":
            sock.sendall(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] fake ready\r\n")
        else:
            sock.sendall(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] fake ready\r\n")

        logged_in = False
        while True:
            line = read_line()
            tag, _, rest = line.partition(b" ")
            verb, _, args = rest.partition(b" ")
            verb = verb.upper()
            if verb == b"CAPABILITY":
                if logged_in:
                    caps = b"IMAP4rev1 FAKE-POSTLOGIN"
                elif b == "plain_old":
                    caps = b"IMAP4rev1"
                else:
                    caps = b"IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN"
                sock.sendall(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")
                continue
            if logged_in:
                sock.sendall(tag + b" OK fake " + verb + b" done\r\n")
                if verb == b"LOGOUT":
                    return
                continue
            password = None
            if verb == b"AUTHENTICATE":
                parts = args.split(b" ")
                if len(parts) == 2:
                    response = parts[1]
                else:
                    sock.sendall(b"+ \r\n")
                    response = read_line()
                fields = base64.b64decode(response).split(b"\0")
                password = fields[2] if len(fields) == 3 else b""
            elif verb == b"LOGIN":
                # LOGIN {n}\r\n user {m}\r\n pass (synchronising literals)
                m = re.match(rb"\{(\d+)(\+?)\}$", args)
                if not m:
                    sock.sendall(tag + b" BAD literals expected\r\n")
                    continue
                if not m.group(2):
                    sock.sendall(b"+ go on\r\n")
                user = read_exact(int(m.group(1)))
                rest_line = read_line()
                m2 = re.match(rb"^ \{(\d+)(\+?)\}$", rest_line)
                if not m2:
                    sock.sendall(tag + b" BAD second literal expected\r\n")
                    continue
                if not m2.group(2):
                    sock.sendall(b"+ go on\r\n")
                password = read_exact(int(m2.group(1)))
                read_line()
            else:
                sock.sendall(tag + b" BAD unexpected before login\r\n")
                continue
            if b == "closes_after_login":
                return
            if b == "says_no_with_detail":
                sock.sendall(tag + b" NO [AUTHENTICATIONFAILED] internal detail: ldap3 down\r\n")
                continue
            if b == "says_unavailable":
                sock.sendall(tag + b" NO [UNAVAILABLE] maintenance on this node\r\n")
                continue
            if b == "refers":
                sock.sendall(tag + b" NO [REFERRAL imap://user@other.example/] try there\r\n")
                continue
            if b == "not_authorized":
                sock.sendall(tag + b" NO [AUTHORIZATIONFAILED] not for this mailbox\r\n")
                continue
            if password not in (b"good", b"we ird"):
                sock.sendall(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
                continue
            logged_in = True
            if b == "plain_old":
                sock.sendall(tag + b" OK logged in\r\n")
            elif b == "sends_extra_after_ok":
                sock.sendall(tag + b" OK [CAPABILITY IMAP4rev1 FAKE] Logged in\r\n* 5 EXISTS\r\n")
            else:
                sock.sendall(tag + b" OK [CAPABILITY IMAP4rev1 FAKE-POSTLOGIN] Logged in\r\n")


def fake_config(islands: dict, listener_port: int = 0, **overrides) -> dict:
    """An isthmus config for fake nodes: islands = {name: [(node, port), ...]}."""
    config = {
        "instance": "fake",
        "workers": 1,
        "log": {"level": "info"},
        "listeners": [{"name": "imap", "protocol": "imap", "address": "127.0.0.1",
                       "port": listener_port or procs.free_port()}],
        "islands": [{"name": name, "policy": "balance",
                     "nodes": [{"name": n, "host": "127.0.0.1", "ports": {"imap": p}}
                               for n, p in nodes]}
                    for name, nodes in islands.items()],
        "directory": {"type": "static", "file": "users.map"},
        "login_names": {"lowercase": True, "default_domain": "example.org"},
        "trusted_networks": ["127.0.0.0/8"],
        "timeouts": {"preauth": "30s", "login": "10s", "connect": "1s", "idle": "30m",
                     "shutdown_grace": "2s", "auth_failure_delay": "0s"},
        # Checks would be connections the scripted nodes count (see cluster.py).
        "health": {"active": False},
    }
    return deep_merge(config, overrides)


def start_isthmus(config: dict, users_map: str, run_dir: str | None = None) -> Isthmus:
    """Isthmus from a config of our own; its run dir (made here unless
    given) goes when the test process exits, unless ISTHMUS_KEEP_LAB=1."""
    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="isthmus-test-")
        if os.environ.get("ISTHMUS_KEEP_LAB") != "1":
            procs.register_cleanup(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    ix = Isthmus(binary(), run_dir, config, users_map)
    ix.start()
    procs.register_cleanup(ix.stop)
    return ix


# -- POP3 --------------------------------------------------------------------

class RawPop3(RawImap):
    """A bare socket speaking POP3 by hand, for byte-exact cases. SOURCE
    binds the client end first (say "127.0.0.5": the node must see that
    address, not Isthmus' own)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 source: str | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def command(self, text: str | bytes) -> bytes:
        """Sends one command line, returns the one-line answer."""
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        """The lines of a multi-line answer after its status line, up to
        (not including) the terminating ".", exactly as sent (dot-stuffed)."""
        lines = []
        while True:
            line = self.line()
            if line == b".":
                return lines
            lines.append(line)

    def log_in(self, user: str, password: str) -> bytes:
        """USER then PASS; the answer to PASS (the one to USER must be +OK)."""
        answer = self.command(f"USER {user}")
        if answer != b"+OK":
            raise AssertionError(f"USER {user}: {answer!r}")
        return self.command(f"PASS {password}")


def session_of(log: str, client_port: int) -> str:
    """The session id of the login from local port CLIENT_PORT, from the
    `session=ID login ok ... client=IP:PORT` line ('' if none yet)."""
    m = re.search(rf"session=(\S+) login ok .* client=[0-9.]+:{client_port} ", log)
    return m.group(1) if m else ""


class FakePop3Node:
    """A POP3 node that follows a script, named after the failure it plays.

    Behaviours:
      dovecot_like        greets "+OK [XCLIENT] ..." (as Dovecot greets a
                          trusted proxy), accepts XCLIENT, CAPA has SASL PLAIN;
                          password "good" (or "we ird") logs in
      no_sasl             an old node: no XCLIENT, CAPA without SASL: only
                          USER/PASS
      no_capa             an older one: CAPA is an unknown command
      xclient_refused     offers XCLIENT, then refuses it (a proxy it does not
                          trust); the login itself works
      banner_hangs        accepts, never greets
      err_greeting        greets with -ERR [SYS/TEMP] (overloaded) and closes
      garbage_greeting    greets with something that is not POP3
      closes_after_login  closes the connection when the credentials arrive
      in_use              refuses the login with -ERR [IN-USE] and internal
                          details (a POP3 session elsewhere holds the lock)
      says_err_with_detail  refuses with -ERR [AUTH] and internal details
      says_sys_temp       refuses with -ERR [SYS/TEMP] (maintenance)
      answers_before_asked  sends "+OK Logged in." with its greeting, unasked
    After a login, any command X gets "+OK fake X done" (QUIT also closes).
    `received` keeps every byte each connection sent, for assertions.
    """

    SECRET = b"mx-int-7.internal pid 4242"  # internal details in refusals

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.received: list[bytes] = []
        self.connections = 0
        node = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                node.connections += 1
                index = len(node.received)
                node.received.append(b"")
                try:
                    node._serve(self.request, index)
                except (OSError, EOFError):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        # Polls for shutdown every 50 ms: close() is quick.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, sock: socket.socket, index: int):
        sock.settimeout(30)
        buf = b""

        def read_line() -> bytes:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise EOFError
                buf += chunk
                self.received[index] += chunk
            line, buf = buf.split(b"\r\n", 1)
            return line

        b = self.behaviour
        if b == "banner_hangs":
            time.sleep(30)
            return
        if b == "err_greeting":
            sock.sendall(b"-ERR [SYS/TEMP] Too many connections, try later\r\n")
            return
        if b == "garbage_greeting":
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            return
        offers_xclient = b in ("dovecot_like", "xclient_refused", "in_use",
                               "says_err_with_detail", "says_sys_temp", "closes_after_login")
        greeting = b"+OK [XCLIENT] fake ready.\r\n" if offers_xclient else b"+OK fake ready.\r\n"
        if b == "answers_before_asked":
            # The answer to a login not sent yet, in the greeting's segment
            # (as the IMAP fake does): Isthmus can only catch what arrived
            # before it spoke, and two writes may reach it apart.
            greeting += b"+OK Logged in.\r\n"
        sock.sendall(greeting)

        logged_in = False
        user = None
        while True:
            line = read_line()
            verb, _, args = line.partition(b" ")
            verb = verb.upper()
            if logged_in:
                sock.sendall(b"+OK fake " + verb + b" done\r\n")
                if verb == b"QUIT":
                    return
                continue
            if verb == b"CAPA":
                if b == "no_capa":
                    sock.sendall(b"-ERR Unknown command: CAPA\r\n")
                    continue
                caps = b"CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nUSER\r\n"
                if b != "no_sasl":
                    caps += b"SASL PLAIN LOGIN\r\n"
                sock.sendall(b"+OK\r\n" + caps + b".\r\n")
                continue
            if verb == b"XCLIENT":
                if b == "xclient_refused":
                    sock.sendall(b"-ERR You are not from trusted IP\r\n")
                else:
                    sock.sendall(b"+OK\r\n")
                continue
            if verb == b"USER":
                user = args
                sock.sendall(b"+OK\r\n")
                continue
            password = None
            if verb == b"PASS" and user is not None:
                password = args
            elif verb == b"AUTH" and b not in ("no_sasl", "no_capa"):
                parts = args.split(b" ")
                if len(parts) == 2:
                    response = parts[1]
                else:
                    sock.sendall(b"+ \r\n")
                    response = read_line()
                fields = base64.b64decode(response).split(b"\0")
                password = fields[2] if len(fields) == 3 else b""
            else:
                sock.sendall(b"-ERR unexpected before login\r\n")
                continue
            if b == "closes_after_login":
                return
            if b == "in_use":
                sock.sendall(b"-ERR [IN-USE] Mailbox locked by " + self.SECRET + b"\r\n")
                continue
            if b == "says_err_with_detail":
                sock.sendall(b"-ERR [AUTH] internal detail: ldap3 down on " + self.SECRET + b"\r\n")
                continue
            if b == "says_sys_temp":
                sock.sendall(b"-ERR [SYS/TEMP] maintenance on " + self.SECRET + b"\r\n")
                continue
            if password not in (b"good", b"we ird"):
                sock.sendall(b"-ERR [AUTH] Authentication failed.\r\n")
                continue
            logged_in = True
            sock.sendall(b"+OK Logged in.\r\n")


def fake_pop3_config(islands: dict, listener_port: int = 0, **overrides) -> dict:
    """fake_config() for POP3: one pop3 listener, nodes with a pop3 port."""
    config = fake_config(islands, listener_port)
    config["listeners"] = [{"name": "pop3", "protocol": "pop3", "address": "127.0.0.1",
                            "port": listener_port or procs.free_port()}]
    for island in config["islands"]:
        for node in island["nodes"]:
            node["ports"] = {"pop3": node["ports"]["imap"]}
    return deep_merge(config, overrides)


# -- LMTP --------------------------------------------------------------------

class RawLmtp(RawPop3):
    """A bare socket speaking LMTP by hand (SOURCE: bind the client end to
    that loopback address first, say "127.0.0.5", so the MTA's address
    differs from Isthmus' own)."""

    def reply(self) -> bytes:
        """One whole reply, multi-line ones joined with CRLF, without the
        final CRLF."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"\r\n".join(lines)

    def replies(self, n: int) -> list[bytes]:
        return [self.reply() for _ in range(n)]

    def command(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.reply()

    def lhlo(self, name: str = "mta.example.net") -> bytes:
        return self.command(f"LHLO {name}")


def lmtp_stuff(content: bytes) -> bytes:
    """CONTENT (CRLF line ends) dot-stuffed and terminated for DATA."""
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    lines = content[:-2].split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines) + b"\r\n.\r\n"


def lmtp_unstuff(wire: bytes) -> bytes:
    """The content of dot-stuffed DATA bytes WIRE (ending with CRLF.CRLF),
    as a strict RFC 5321 receiver sees it (CR LF line ends)."""
    if not wire.endswith(b"\r\n.\r\n") and wire != b".\r\n":
        raise ValueError(f"not terminated: ...{wire[-20:]!r}")
    body = b"" if wire == b".\r\n" else wire[:-3]
    lines = body[:-2].split(b"\r\n") if body else []
    return b"".join((l[1:] if l.startswith(b".") else l) + b"\r\n" for l in lines)


# Dovecot 2.3's LHLO answer (after its host name), as the lab's nodes send it
# to a peer in login_trusted_networks.
DOVECOT_LHLO = ("8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING",
                "XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT", "XRCPTFORWARD")


class FakeLmtpNode:
    """An LMTP node that follows a script, for what Dovecot will not do on
    demand. Keyword arguments (all optional):

      greeting     the first line (default "220 fake.node LMTP ready"); None:
                   accept and never greet. Any non-220 greeting is sent and
                   the connection closed.
      extensions   LHLO lines after the host name (default DOVECOT_LHLO)
      xclient      reply to XCLIENT (default "220 fake.node LMTP ready": a
                   new session, LHLO again, as Dovecot does)
      mail         reply to MAIL (default "250 2.1.0 OK")
      rcpt         {user: reply} for RCPT (default "250 2.1.5 OK")
      close_at_rcpt  users whose RCPT makes the node close the connection
                   without an answer, on its first FIRST_CONNECTIONS
                   connections (default: all)
      hang_at_rcpt users whose RCPT the node never answers (it holds the
                   connection), on its first FIRST_CONNECTIONS connections
      data         reply to DATA (default "354 OK")
      final        {user: reply} after the final dot (default
                   "250 2.0.0 <user> fake saved")
      end          after the final dot: "answer" (default); "hang" (never
                   answer, keep the connection); "close" (close without an
                   answer); an int k: answer the first k recipients, then
                   close
      final_delay  seconds to wait before the final answers
      in_data      "hang": stop reading (and answering) after the first
                   bytes of the message; "close": close then

    Record (for assertions): ``received`` (every byte of each connection,
    in order), ``transactions`` (one dict per DATA the node got: "lhlo"
    list of LHLO arguments, "xclient" the XCLIENT line or None, "mail" the
    MAIL line, "rcpts" the RCPT lines in order, "wire" the DATA bytes as
    sent (dot-stuffed, with the final dot), "content" unstuffed),
    ``connections``."""

    HOST = "fake.node"

    def __init__(self, **script):
        known = {"greeting", "extensions", "xclient", "mail", "rcpt", "close_at_rcpt",
                 "hang_at_rcpt", "first_connections", "data", "final", "end", "final_delay", "in_data"}
        unknown = set(script) - known
        if unknown:
            raise TypeError(f"unknown FakeLmtpNode arguments: {sorted(unknown)}")
        self.greeting = script.get("greeting", f"220 {self.HOST} LMTP ready")
        self.extensions = list(script.get("extensions", DOVECOT_LHLO))
        self.xclient = script.get("xclient", f"220 {self.HOST} LMTP ready")
        self.mail_reply = script.get("mail", "250 2.1.0 OK")
        self.rcpt = dict(script.get("rcpt", {}))
        self.close_at_rcpt = set(script.get("close_at_rcpt", ()))
        self.hang_at_rcpt = set(script.get("hang_at_rcpt", ()))
        self.first_connections = script.get("first_connections", 1 << 30)
        self.data_reply = script.get("data", "354 OK")
        self.final = dict(script.get("final", {}))
        self.end = script.get("end", "answer")
        self.final_delay = script.get("final_delay", 0)
        self.in_data = script.get("in_data")
        self.received: list[bytes] = []
        self.transactions: list[dict] = []
        self.connections = 0
        self._lock = threading.Lock()
        node = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                with node._lock:
                    node.connections += 1
                    index = len(node.received)
                    node.received.append(bytearray())
                try:
                    node._serve(self.request, index)
                except (OSError, EOFError):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        procs.register_cleanup(self.close)

    def close(self):
        procs.unregister_cleanup(self.close)
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, sock: socket.socket, index: int):
        sock.settimeout(30)
        buf = bytearray()

        def fill() -> None:
            chunk = sock.recv(262144)
            if not chunk:
                raise EOFError
            buf.extend(chunk)
            self.received[index].extend(chunk)

        def read_line() -> bytes:
            while b"\r\n" not in buf:
                fill()
            at = buf.index(b"\r\n")
            line = bytes(buf[:at])
            del buf[:at + 2]
            return line

        def send(line: str) -> None:
            sock.sendall(line.encode("utf-8", "surrogateescape") + b"\r\n")

        if self.greeting is None:
            time.sleep(30)
            return
        send(self.greeting)
        if not self.greeting.startswith("220"):
            return
        txn = {"lhlo": [], "xclient": None, "mail": None, "rcpts": []}
        users: list[str] = []
        while True:
            line = read_line()
            verb = line.split(b" ", 1)[0].upper()
            text = line.decode("utf-8", "surrogateescape")
            if verb == b"LHLO":
                txn["lhlo"].append(text[5:])
                words = [self.HOST] + self.extensions
                send("\r\n".join([f"250-{w}" for w in words[:-1]] + [f"250 {words[-1]}"]))
            elif verb == b"XCLIENT":
                txn["xclient"] = text
                send(self.xclient)
            elif verb == b"MAIL":
                txn["mail"] = text
                send(self.mail_reply)
            elif verb == b"RCPT":
                txn["rcpts"].append(text)
                m = re.match(r"RCPT TO:<([^>]*)>", text, re.I)
                user = m.group(1) if m else ""
                if user in self.close_at_rcpt and index < self.first_connections:
                    return
                if user in self.hang_at_rcpt and index < self.first_connections:
                    time.sleep(30)
                    return
                reply = self.rcpt.get(user, "250 2.1.5 OK")
                if reply.startswith("250"):
                    users.append(user)
                send(reply)
            elif verb == b"DATA":
                send(self.data_reply)
                if not self.data_reply.startswith("354"):
                    continue
                if self.in_data is not None:
                    while not buf:
                        fill()
                    if self.in_data == "hang":
                        time.sleep(30)
                    return
                # The end: ".\r\n" at the start, or "\r\n.\r\n"; searched
                # only in what is new (a long message arrives in many reads).
                searched = 0
                while True:
                    if buf[:3] == b".\r\n":
                        end = 3
                        break
                    at = buf.find(b"\r\n.\r\n", max(0, searched - 4))
                    if at >= 0:
                        end = at + 5
                        break
                    searched = len(buf)
                    fill()
                wire = bytes(buf[:end])
                del buf[:end]
                txn["wire"] = wire
                txn["content"] = lmtp_unstuff(wire)
                with self._lock:
                    self.transactions.append(txn)
                txn = {"lhlo": list(txn["lhlo"]), "xclient": txn["xclient"], "mail": None,
                       "rcpts": []}
                answering, users = users, []
                if self.final_delay:
                    time.sleep(self.final_delay)
                if self.end == "hang":
                    time.sleep(30)
                    return
                if self.end == "close":
                    return
                count = self.end if isinstance(self.end, int) else len(answering)
                for user in answering[:count]:
                    send(self.final.get(user, f"250 2.0.0 <{user}> fake saved"))
                if count < len(answering):
                    return
            elif verb == b"RSET":
                txn = {"lhlo": list(txn["lhlo"]), "xclient": txn["xclient"], "mail": None,
                       "rcpts": []}
                users = []
                send("250 2.0.0 OK")
            elif verb == b"QUIT":
                send("221 2.0.0 Bye")
                return
            elif verb == b"NOOP":
                send("250 2.0.0 OK")
            else:
                send("500 5.5.1 Unknown command")


def fake_lmtp_config(islands: dict, listener_port: int = 0, **overrides) -> dict:
    """fake_config() for LMTP: one lmtp listener, nodes with an lmtp port,
    lmtp.hostname "isthmus.test"."""
    config = fake_config(islands, listener_port)
    config["listeners"] = [{"name": "lmtp", "protocol": "lmtp", "address": "127.0.0.1",
                            "port": listener_port or procs.free_port()}]
    for island in config["islands"]:
        for node in island["nodes"]:
            node["ports"] = {"lmtp": node["ports"]["imap"]}
    config["lmtp"] = {"hostname": "isthmus.test"}
    return deep_merge(config, overrides)
