#!/usr/bin/env python3
"""A stateful network fuzzer: whole sessions against a running Isthmus
(the ASan+UBSan build in CI) with real Dovecot nodes and scripted
misbehaving nodes behind it.

    net_fuzz.py [--seed S] [--sessions N] [--from-session K0] [--parallel P]
                [--batch B] [--only-session K] [--findings DIR]

Each session is generated from (seed, session number) alone, so a failing
one replays with --seed S --only-session K. It picks a protocol and a
listener (IMAP, POP3, LMTP; plain or behind the PROXY protocol), builds a
pre-login dialogue from the protocol's grammar (good and bad commands,
quoted strings, synchronising and non-synchronising literals, SASL PLAIN
with and without an initial response, STARTTLS/STLS at random points and
sometimes no handshake after it, PROXY headers good, mutated and
misplaced, LMTP transactions with dot-stuffing and bare CR/LF), mutates
some of its bytes, cuts the byte stream into random segments, and ends
with a close, a reset (RST), a half-close or by waiting for Isthmus to
close. The "fake" island has a node that answers with random protocol
fragments (garbage greetings, a bare "*", long lines, literals, hangs,
closes mid-line), a scripted one that closes during login (and an LMTP one
that closes at RCPT or after the first answer), and a scripted
well-behaved one; island "chaos" has only the random node.

Checks, after every batch of sessions:
  - Isthmus is alive and its log holds no sanitizer report and no
    exception that escaped a session;
  - no session waited past its deadline for Isthmus to answer or close;
  - good logins (IMAP, POP3, and an LMTP delivery) run between the garbage
    sessions always succeed;
  - once the batch is over, open descriptors (/proc/PID/fd) come back to
    the baseline and memory (VmRSS) stays within a bound of it.
A failure prints the seed and the session and writes a reproducer (JSON:
seed, session, what was sent) to --findings; the exit status is 1.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import select
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "system"))

from support import (FakeImapNode, FakeLmtpNode, FakePop3Node, Lab, binary,  # noqa: E402
                     procs)

# chaos@: island "chaos" (only the random node); fuzz@: island "fake" (the
# random node, then a scripted good one). Both weighted up: most garbage
# never gets as far as a node.
USERS = ["alice@example.org", "bob@example.org", "carol", "fuzz@example.org", "nobody@example.org",
         "ALICE@EXAMPLE.ORG", "x" * 300, "", "a\"b", "dave@example.org"] + [
    "chaos@example.org", "fuzz@example.org"] * 5
PASSWORDS = ["demo", "good", "bad", "", "p a\"s\\s {w}ord", "x" * 2000] + ["good"] * 4
PREAUTH = 3   # seconds: Isthmus' pre-login budget in this run
LOGIN = 4
IDLE = 4
SLACK = 6.0     # on top of a deadline before a session counts as hung


class Finding(Exception):
    pass


# -- a node that answers with random protocol fragments ---------------------

GREETINGS = {
    "imap": b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN] chaos ready",
    "pop3": b"+OK [XCLIENT] chaos ready.",
    "lmtp": b"220 chaos.node LMTP ready",
}
# Replies to a command; "{tag}" is the command's tag (IMAP).
REPLIES = {
    "imap": [b"*", b"* ", b"+", b"+ ", b"* BYE going away", b"* OK", b"* PREAUTH hi",
             b"* CAPABILITY", b"* CAPABILITY IMAP4rev1 AUTH=PLAIN", b"* OK [CAPABILITY",
             b"* 1 FETCH {5}", b"* ID NIL", b"{tag} OK [CAPABILITY IMAP4rev1 X] Logged in",
             b"{tag} OK", b"{tag} NO [UNAVAILABLE] later", b"{tag} NO [AUTHENTICATIONFAILED] no",
             b"{tag} NO [AUTHORIZATIONFAILED] no", b"{tag} BAD what", b"{tag} BYE", b"{tag}",
             b"{tag} OK [", b"{tag} PREAUTH", b"x OK wrong tag"],
    "pop3": [b"+OK", b"+", b"+ ", b"-ERR", b"-ERR [AUTH] no", b"-ERR [IN-USE] locked",
             b"-ERR [SYS/TEMP] later", b"-ERR [LOGIN-DELAY] 5", b"-ERR [IN-USE", b"-ERR ]x[",
             b"+OK\r\nCAPA\r\nSASL PLAIN\r\nSTLS\r\nUSER\r\n.", b"+OK\r\nSASL", b"+OK Logged in.",
             b"."],
    "lmtp": [b"250-chaos.node\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE",
             b"250-chaos\r\n251 mismatch", b"250-", b"2", b"250 2.1.0 ok", b"250 2.1.5 ok",
             b"250 2.00000000001.0 ok", b"550 5.1.1 no such user", b"452 4.2.2 full", b"354 go",
             b"421 4.3.2 bye", b"250 2.0.0 saved", b"215 Recipient OK", b"600 x", b"250-" * 300],
}
NOISE = [b"\x00\xff\xfe", b"HTTP/1.1 400 Bad Request", b"x" * 5000, b""]


class ChaosNode:
    """A node for PROTOCOL that greets (usually properly), then answers each
    command with a random reply of its protocol (right or wrong tag, broken
    codes, bare "*", multi-line replies that lie, literals, noise, random
    line endings), seeded per connection; it may hang past the login
    deadline, close mid-line or reset."""

    def __init__(self, seed: int, protocol: str):
        self.seed = seed
        self.protocol = protocol
        self.count = 0
        self.sent: list[dict] = []  # what each connection was sent (for reproducers)
        node = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                node.count += 1
                rng = random.Random(f"{node.seed}-chaos-{node.protocol}-{node.count}")
                record = {"connection": node.count, "sent": ""}
                node.sent = node.sent[-199:] + [record]
                try:
                    node._serve(self.request, rng, record)
                except OSError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, sock: socket.socket, rng: random.Random, record: dict):
        def send(data: bytes) -> None:
            record["sent"] += data.hex()
            sock.sendall(data)

        sock.settimeout(1.0)
        ending = lambda: rng.choice([b"\r\n"] * 6 + [b"\n", b"", b"\r"])  # noqa: E731
        greeting = GREETINGS[self.protocol] if rng.random() < 0.8 else rng.choice(
            REPLIES[self.protocol] + NOISE)
        send(greeting + b"\r\n")
        buf = b""
        for _ in range(rng.randint(1, 10)):
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                chunk = b"?"
            if not chunk:
                return
            buf += chunk
            line, _, buf = buf.partition(b"\n")
            tag = line.split(b" ", 1)[0] or b"a"
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                reply = rng.choice(REPLIES[self.protocol] + NOISE[:1])
                send(reply.replace(b"{tag}", tag) + ending())
            if rng.random() < 0.04:
                time.sleep(rng.uniform(0.5, LOGIN + 1))  # past the login deadline
            if rng.random() < 0.08:
                break
        if rng.random() < 0.3:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


# -- session generators ----------------------------------------------------

def imap_astring(rng: random.Random, value: str) -> bytes:
    raw = value.encode()
    kind = rng.choice(["atom", "quoted", "sync", "nonsync"])
    if kind == "atom" and raw and all(c > 0x20 and c not in b'(){%*"\\]' for c in raw):
        return raw
    if kind == "quoted" and b"\r" not in raw and b"\n" not in raw:
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if kind == "nonsync":
        return b"{%d+}\r\n" % len(raw) + raw
    return b"{%d}\r\n" % len(raw) + raw


def sasl(rng: random.Random, user: str, password: str) -> bytes:
    msg = f"{rng.choice(['', '', user])}\0{user}\0{password}".encode()
    text = base64.b64encode(msg)
    r = rng.random()
    if r < 0.1:
        return b"*"
    if r < 0.2:
        return text[:-1]
    if r < 0.25:
        return b"=" + text
    return text


def imap_commands(rng: random.Random) -> list:
    """A list of ("line", bytes) and ("starttls",) steps."""
    steps = []
    for i in range(rng.randint(1, 8)):
        tag = rng.choice([b"a%d" % i] * 8 + [b"*", b"+", b"x" * rng.randint(60, 70), b"\xc3\xa9", b""])
        c = rng.random()
        user, password = rng.choice(USERS), rng.choice(PASSWORDS)
        if c < 0.25:
            line = tag + b" LOGIN " + imap_astring(rng, user) + b" " + imap_astring(rng, password)
        elif c < 0.4:
            resp = sasl(rng, user, password)
            if rng.random() < 0.5:
                line = tag + b" AUTHENTICATE PLAIN " + resp
            else:
                line = tag + b" AUTHENTICATE PLAIN\r\n" + resp
        elif c < 0.5:
            steps.append(("starttls", tag + b" STARTTLS"))
            continue
        elif c < 0.6:
            line = tag + b" ID (" + b" ".join(imap_astring(rng, w) for w in
                                              rng.sample(["name", "x", "NIL", "v" * 40], 2)) + b")"
        elif c < 0.7:
            line = tag + rng.choice([b" CAPABILITY", b" NOOP", b" LOGOUT", b" SELECT INBOX"])
        elif c < 0.8:
            line = tag + b" LOGIN {%d}" % rng.choice([5, 99999, 4294967296, 10 ** 12])
        elif c < 0.9:
            line = b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2"  # a header where none may be
        else:
            line = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        steps.append(("line", line + rng.choice([b"\r\n", b"\r\n", b"\n"])))
    return steps


def pop3_commands(rng: random.Random) -> list:
    steps = []
    for _ in range(rng.randint(1, 8)):
        c = rng.random()
        user, password = rng.choice(USERS), rng.choice(PASSWORDS)
        if c < 0.3:
            line = b"USER " + user.encode() + b"\r\nPASS " + password.encode()
        elif c < 0.45:
            resp = sasl(rng, user, password)
            line = b"AUTH PLAIN " + resp if rng.random() < 0.5 else b"AUTH PLAIN\r\n" + resp
        elif c < 0.55:
            steps.append(("starttls", b"STLS"))
            continue
        elif c < 0.75:
            line = rng.choice([b"CAPA", b"NOOP", b"QUIT", b"APOP x y", b"STAT", b"XCLIENT ADDR=1.2.3.4",
                               b"AUTH", b"AUTH LOGIN", b"USER", b"PASS x"])
        else:
            line = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 600)))
        steps.append(("line", line + rng.choice([b"\r\n", b"\r\n", b"\n"])))
    return steps


def lmtp_commands(rng: random.Random) -> list:
    steps = [("line", rng.choice([b"LHLO mta.example.net\r\n", b"EHLO x\r\n", b"HELO x\r\n",
                                  b"LHLO\r\n"]))]
    for _ in range(rng.randint(1, 4)):
        steps.append(("line", b"MAIL FROM:<" + rng.choice([b"", b"s@example.net", b"@a:@b"]) + b">"
                      + rng.choice([b"", b" SIZE=100", b" BODY=8BITMIME", b" SIZE=99999999999"])
                      + b"\r\n"))
        for _ in range(rng.randint(0, 3)):
            to = rng.choice(["alice@example.org", "bob@example.org", "fuzz@example.org",
                             "nobody@example.org", "\"a b\"@example.org", "@r:carol@example.org",
                             "chaos@example.org", "chaos@example.org", "fuzz@example.org"])
            steps.append(("line", b"RCPT TO:<" + to.encode() + b">\r\n"))
        if rng.random() < 0.8:
            steps.append(("line", b"DATA\r\n"))
            body = b"Subject: fuzz\r\n\r\n"
            for _ in range(rng.randint(0, 6)):
                body += rng.choice([b".", b"..", b"x", b"\r", b"\n", b"\r\n", b".\n", b"\r\n.\n",
                                    b"\n.\r\n", b"y" * 200, b"\x00"])
            body += rng.choice([b"\r\n.\r\n", b"\r\n.\r\n", b"\n.\n", b""])
            steps.append(("line", body))
        if rng.random() < 0.3:
            steps.append(("line", rng.choice([b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n",
                                              b"BDAT 10 LAST\r\n", b"STARTTLS\r\n"])))
    steps.append(("line", b"QUIT\r\n"))
    return steps


def proxy_header(rng: random.Random) -> bytes:
    src = rng.choice(["192.0.2.%d" % rng.randint(1, 254), "127.0.0.9"])
    if rng.random() < 0.5:
        h = f"PROXY TCP4 {src} 127.0.0.1 {rng.randint(1, 65535)} 143\r\n".encode()
        if rng.random() < 0.1:
            h = b"PROXY UNKNOWN\r\n"
    else:
        body = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack(
            "!HH", rng.randint(1, 65535), 143)
        tlvs = b""
        for _ in range(rng.randint(0, 3)):
            value = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 20)))
            length = len(value) + rng.choice([0, 0, 0, 1, -1, 300])
            tlvs += bytes([rng.choice([0x01, 0x02, 0x04, 0x05, 0x20, 0xE0])]) + struct.pack(
                "!H", max(0, length) & 0xFFFF) + value
        h = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([rng.choice([0x21, 0x21, 0x20, 0x22]),
                                               rng.choice([0x11, 0x11, 0x21, 0x00, 0x12])])
             + struct.pack("!H", len(body) + len(tlvs)) + body + tlvs)
    return mutate(rng, h, 0.1)


def mutate(rng: random.Random, data: bytes, chance: float) -> bytes:
    if rng.random() >= chance or not data:
        return data
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        at = rng.randrange(len(b) + 1)
        if op < 0.4 and b:
            b[min(at, len(b) - 1)] = rng.getrandbits(8)
        elif op < 0.7:
            b[at:at] = rng.choice([b"\r\n", b"\n", b"\r", b"{", b"}", b'"', b"\x00", b" ", b"\xff"])
        elif b:
            del b[min(at, len(b) - 1):min(at, len(b) - 1) + rng.randint(1, 8)]
    return bytes(b)


def plan_session(seed: int, k: int, listeners: dict) -> dict:
    rng = random.Random(f"{seed}-session-{k}")
    proto = rng.choice(["imap", "imap", "pop3", "lmtp"])
    via_proxy = rng.random() < 0.3 and f"{proto}-pp" in listeners
    steps = {"imap": imap_commands, "pop3": pop3_commands, "lmtp": lmtp_commands}[proto](rng)
    steps = [(s[0], mutate(rng, s[1], 0.15)) for s in steps]
    header = proxy_header(rng) if via_proxy else b""
    if via_proxy and rng.random() < 0.05:
        header = b""  # required but missing
    if not via_proxy and rng.random() < 0.05:
        header = proxy_header(rng)  # from a source that may not send one
    return {"seed": seed, "session": k, "protocol": proto,
            "listener": f"{proto}-pp" if via_proxy else proto, "header": header.hex(),
            "steps": [(s[0], s[1].hex()) for s in steps],
            "max_segment": rng.choice([1, 3, 16, 200, 100000]),
            "ending": rng.choice(["close", "close", "rst", "half", "wait"]),
            "tls_after_starttls": rng.choice(["handshake", "handshake", "plain", "garbage"]),
            "rng": rng.random()}


# -- running a session ------------------------------------------------------

class Conn:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.tls = None
        self.received = b""
        self.closed = False

    def _io(self):
        return self.tls or self.sock

    def drain(self, wait: float = 0.0) -> None:
        """Reads what is there (waiting up to WAIT for the first bytes)."""
        end = time.monotonic() + wait
        while not self.closed:
            timeout = max(0.0, end - time.monotonic())
            if self.tls is not None and self.tls.pending():
                ready = True
            else:
                ready = bool(select.select([self.sock], [], [], timeout)[0])
            if not ready:
                return
            try:
                data = self._io().recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                continue
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
                self.closed = True
                return
            if not data:
                self.closed = True
                return
            self.received += data
            end = time.monotonic()  # more only if already there

    def send(self, data: bytes, max_segment: int, rng: random.Random) -> None:
        at = 0
        while at < len(data) and not self.closed:
            n = rng.randint(1, max_segment)
            chunk = data[at:at + n]
            try:
                self._send_all(chunk)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                self.closed = True
                return
            at += n
            if rng.random() < 0.1:
                time.sleep(rng.uniform(0, 0.02))
            self.drain()

    def _send_all(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 10
        while view:
            try:
                n = self._io().send(view)
                view = view[n:]
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                if time.monotonic() > deadline:
                    raise Finding("Isthmus stopped reading for 10 s")
                select.select([self.sock], [self.sock], [], 0.05)
                self.drain()

    def wait_for(self, marker: bytes, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while marker not in self.received and not self.closed and time.monotonic() < end:
            self.drain(0.05)
        return marker in self.received

    def start_tls(self) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock.settimeout(5)
        try:
            tls = ctx.wrap_socket(self.sock, server_hostname="isthmus.lab.test")
        except (ssl.SSLError, OSError):
            # wrap_socket took the socket over (and closed it on failure).
            self.closed = True
            return False
        tls.setblocking(False)
        self.tls = self.sock = tls
        return True

    def wait_closed(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            self.drain(0.1)
        return self.closed

    def close(self, how: str) -> None:
        try:
            if how == "rst":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


def run_session(plan: dict, ports: dict) -> None:
    rng = random.Random(plan["rng"])
    c = Conn(ports[plan["listener"]])
    try:
        header = bytes.fromhex(plan["header"])
        if header:
            c.send(header, plan["max_segment"], rng)
        for kind, hexdata in plan["steps"]:
            data = bytes.fromhex(hexdata)
            if c.closed:
                break
            if kind == "starttls":
                c.send(data + b"\r\n", plan["max_segment"], rng)
                ok = b" OK" if plan["protocol"] == "imap" else b"+OK"
                # Wait for the answer; only an OK to STARTTLS is followed by TLS.
                before = len(c.received)
                if not c.wait_for(b"\n", 0.5) or c.closed:
                    continue
                c.wait_for(ok, 1.0)
                if ok not in c.received[before:]:
                    continue
                mode = plan["tls_after_starttls"]
                if mode == "handshake":
                    c.start_tls()
                elif mode == "garbage":
                    c.send(b"\x16\x03\x01\x00\x05hello" + data, plan["max_segment"], rng)
                continue
            c.send(data, plan["max_segment"], rng)
        ending = plan["ending"]
        if ending == "half" and not c.closed:
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            ending = "wait"
        if ending == "wait" and not c.closed:
            limit = max(PREAUTH, LOGIN, IDLE) + SLACK
            if not c.wait_closed(limit):
                raise Finding(f"session still open {limit:.0f} s after its last byte "
                              f"(pre-login {PREAUTH} s, login and LMTP command {LOGIN} s, "
                              f"idle and LMTP idle/data {IDLE} s)")
    finally:
        c.close("rst" if plan["ending"] == "rst" else "close")


# -- good logins between the garbage ---------------------------------------

def good_imap(port: int) -> None:
    c = Conn(port)
    try:
        if not c.wait_for(b"\r\n", 10) or not c.received.startswith(b"* OK"):
            raise Finding(f"IMAP greeting: {c.received[:200]!r}")
        c.send(b"g1 LOGIN alice@example.org demo\r\n", 1000, random.Random(0))
        if not c.wait_for(b"g1 OK", 15):
            raise Finding(f"good IMAP login failed: {c.received[-300:]!r}")
        c.send(b"g2 SELECT INBOX\r\ng3 LOGOUT\r\n", 1000, random.Random(0))
        if not c.wait_for(b"g3 OK", 15):
            raise Finding(f"good IMAP session failed after login: {c.received[-300:]!r}")
    finally:
        c.close("close")


def good_pop3(port: int) -> None:
    c = Conn(port)
    try:
        if not c.wait_for(b"\r\n", 10) or not c.received.startswith(b"+OK"):
            raise Finding(f"POP3 greeting: {c.received[:200]!r}")
        c.send(b"USER bob@example.org\r\nPASS demo\r\n", 1000, random.Random(0))
        if not c.wait_for(b"Logged in", 15):
            raise Finding(f"good POP3 login failed: {c.received[-300:]!r}")
        c.send(b"STAT\r\nQUIT\r\n", 1000, random.Random(0))
        if not c.wait_for(b"Logging out", 15):
            raise Finding(f"good POP3 session failed after login: {c.received[-300:]!r}")
    finally:
        c.close("close")


def good_lmtp(port: int, token: str) -> None:
    c = Conn(port)
    try:
        if not c.wait_for(b"\r\n", 10) or not c.received.startswith(b"220"):
            raise Finding(f"LMTP greeting: {c.received[:200]!r}")
        msg = (f"Subject: good {token}\r\nMessage-ID: <{token}@fuzz>\r\n\r\nhello\r\n.\r\n").encode()
        c.send(b"LHLO mta\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\n"
               b"RCPT TO:<bob@example.org>\r\nDATA\r\n", 1000, random.Random(0))
        if not c.wait_for(b"354", 15):
            raise Finding(f"good LMTP transaction refused: {c.received[-300:]!r}")
        c.send(msg, 1000, random.Random(0))
        end = time.monotonic() + 20
        while c.received.count(b"\r\n250 2.0.0") + c.received.startswith(b"250 2.0.0") < 2:
            if c.closed or time.monotonic() > end:
                raise Finding(f"good LMTP delivery failed: {c.received[-400:]!r}")
            c.drain(0.1)
        c.send(b"QUIT\r\n", 1000, random.Random(0))
    finally:
        c.close("close")


# -- the process ------------------------------------------------------------

def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def settle(pid: int, baseline: int, timeout: float) -> int:
    """Waits for the descriptor count to come down to BASELINE; returns the last count."""
    end = time.monotonic() + timeout
    n = fd_count(pid)
    while n > baseline and time.monotonic() < end:
        time.sleep(0.2)
        n = fd_count(pid)
    return n


def log_problem(ix) -> str:
    report = ix.sanitizer_report()
    if report:
        return "sanitizer report:\n" + report
    text = ix.log_text()
    at = text.find("session ended by an unexpected error")
    if at >= 0:
        return "an exception escaped a session: " + text[at:at + 300]
    if not ix.running():
        return f"isthmus exited (status {ix.returncode()})"
    return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--only-session", type=int, default=None)
    p.add_argument("--from-session", type=int, default=0,
                   help="start at this session number (replaying a batch)")
    p.add_argument("--findings", default=os.path.join(os.getcwd(), "fuzz-net-findings"))
    p.add_argument("--rss-slack-mb", type=int, default=32,
                   help="how far VmRSS may stay above the baseline after a batch")
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 32)
    print(f"net_fuzz: seed {seed} (replay: --seed {seed}), {args.sessions} sessions, "
          f"{args.parallel} at a time", flush=True)

    # A small ASan quarantine, so that resident memory says something.
    os.environ["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                                  ":quarantine_size_mb=16").lstrip(":")
    lab = Lab(tls=True, isthmus_ports={"imap": 0, "imap-pp": 0, "pop3": 0, "pop3-pp": 0,
                                       "lmtp": 0})
    chaos = {proto: ChaosNode(seed, proto) for proto in ("imap", "pop3", "lmtp")}
    fakes = [FakeImapNode("dovecot_like"), FakePop3Node("dovecot_like"), FakeLmtpNode()]
    # Scripted failures of tests/system/support.py, each a node of island
    # "fake" beside the chaos node and the good scripted one.
    bad_fakes = [FakeImapNode("closes_after_login"), FakePop3Node("closes_after_login"),
                 FakeLmtpNode(end=1, close_at_rcpt={"fuzz@example.org"}, first_connections=3)]
    started = time.monotonic()
    try:
        lab.start()
        cert = lab.isthmus_cert
        listeners = []
        for name in ("imap", "imap-pp", "pop3", "pop3-pp", "lmtp"):
            proto = name.split("-")[0]
            entry = {"name": name, "protocol": proto, "address": "127.0.0.1",
                     "port": lab.isthmus_ports[name]}
            if proto != "lmtp":
                entry["tls"] = "starttls"
            if name.endswith("-pp"):
                entry["proxy_protocol"] = ["127.0.0.1"]
            listeners.append(entry)
        islands = lab.config["islands"] + [{
            "name": "fake", "policy": "balance", "nodes": [
                {"name": "chaos", "host": "127.0.0.1",
                 "ports": {p: chaos[p].port for p in chaos}},
                {"name": "scripted-bad", "host": "127.0.0.1",
                 "ports": {"imap": bad_fakes[0].port, "pop3": bad_fakes[1].port,
                           "lmtp": bad_fakes[2].port}},
                {"name": "scripted", "host": "127.0.0.1",
                 "ports": {"imap": fakes[0].port, "pop3": fakes[1].port, "lmtp": fakes[2].port}}]},
            {"name": "chaos", "policy": "balance", "nodes": [
                {"name": "chaos-only", "host": "127.0.0.1",
                 "ports": {p: chaos[p].port for p in chaos}}]}]
        ix = lab.start_isthmus(
            binary(), users_map=lab.users_map + "fuzz@example.org fake\nchaos@example.org chaos\n",
            listeners=listeners, islands=islands,
            tls={"certificate": cert.cert_path, "key": cert.key_path},
            timeouts={"preauth": f"{PREAUTH}s", "login": f"{LOGIN}s", "connect": "1s",
                      "idle": f"{IDLE}s", "shutdown_grace": "2s", "auth_failure_delay": "0s",
                      "lmtp_idle": f"{IDLE}s", "lmtp_command": f"{LOGIN}s",
                      "lmtp_data": f"{IDLE}s"},
            limits={"max_line": 1024, "max_literal": 1024, "max_preauth_commands": 12},
            lmtp={"hostname": "isthmus.lab.test", "memory_spool": 4096})
        pid = ix.proc.pid
        ports = {name: lab.isthmus_ports[name] for name in lab.isthmus_ports}

        def fail(what: str, plan: dict | None = None) -> int:
            os.makedirs(args.findings, exist_ok=True)
            path = os.path.join(args.findings, f"net-{seed}-{plan['session'] if plan else 'batch'}.json")
            if plan and "plans" in plan:  # a batch: the log does not say which session
                first = plan["plans"][0]["session"]
                replay = (f"--seed {seed} --from-session {first} "
                          f"--sessions {len(plan['plans'])}")
            elif plan:
                replay = f"--seed {seed} --only-session {plan['session']}"
            else:
                replay = f"--seed {seed}"
            with open(path, "w") as f:
                # The clients' bytes replay exactly from the seed; the chaos
                # nodes are seeded per connection in order of arrival, which
                # parallel sessions change: what they sent is recorded here.
                json.dump({"what": what, "seed": seed, "plan": plan,
                           "replay": "tests/fuzz/net_fuzz.py " + replay,
                           "chaos_nodes_sent": {p: c.sent for p, c in chaos.items()}},
                          f, indent=1)
            print(f"net_fuzz: FINDING (seed {seed}): {what}\n  reproducer: {path}\n"
                  f"  replay: ISTHMUS_BIN=... tests/fuzz/net_fuzz.py {replay}", flush=True)
            print(f"--- isthmus log (tail)\n{procs.tail(ix.log_path)}", flush=True)
            return 1

        # Warm up (first logins allocate pools, TLS contexts, node connections),
        # then take the baseline.
        good_imap(ports["imap"])
        good_pop3(ports["pop3"])
        good_lmtp(ports["lmtp"], f"warm-{seed}")
        fd_base = settle(pid, 0, 3.0)
        time.sleep(0.5)
        fd_base = fd_count(pid)
        rss_base = rss_kb(pid)
        # Under ASan resident memory grows with the quarantine and the stack
        # depot (every new allocation stack is stored for good), whatever the
        # program does: allow that much per session; LeakSanitizer at the
        # end (ix.stop) is the leak check there.
        with open(f"/proc/{pid}/maps") as f:
            asan = "libasan" in f.read()
        per_session_kb = 256 if asan else 0
        print(f"net_fuzz: baseline {fd_base} descriptors, {rss_base // 1024} MiB resident"
              f"{' (ASan build)' if asan else ''}", flush=True)
        done = 0

        sessions = ([args.only_session] if args.only_session is not None
                    else list(range(args.from_session, args.from_session + args.sessions)))
        for b0 in range(0, len(sessions), args.batch):
            batch = sessions[b0:b0 + args.batch]
            plans = [plan_session(seed, k, ports) for k in batch]
            errors: list[tuple[str, dict | None]] = []

            def one(plan):
                try:
                    run_session(plan, ports)
                except Finding as e:
                    errors.append((str(e), plan))
                except Exception:  # noqa: BLE001 - a harness bug is a finding too
                    errors.append(("harness error: " + traceback.format_exc(), plan))

            def good(kind):
                try:
                    if kind == "imap":
                        good_imap(ports["imap"])
                    elif kind == "pop3":
                        good_pop3(ports["pop3"])
                    else:
                        good_lmtp(ports["lmtp"], f"{seed}-{b0}-{time.monotonic_ns()}")
                except Finding as e:
                    errors.append((f"good {kind} login: {e}", None))
                except OSError as e:
                    errors.append((f"good {kind} login: {e}", None))

            # Good logins spread among the garbage (submitted in this order).
            jobs = [(one, plan) for plan in plans]
            for i, kind in enumerate(["imap", "pop3", "lmtp"] * 2):
                jobs.insert(len(jobs) * (i + 1) // 7 + i, (good, kind))
            with ThreadPoolExecutor(max_workers=args.parallel + 1) as pool:
                for f in [pool.submit(fn, arg) for fn, arg in jobs]:
                    f.result()
            problem = log_problem(ix)
            if problem:
                # Which session? The log says; the batch's plans are all saved.
                return fail(problem, {"session": f"batch{b0}", "plans": plans})
            if errors:
                what, plan = errors[0]
                return fail(what, plan)
            fds = settle(pid, fd_base, 15.0)
            rss = rss_kb(pid)
            print(f"net_fuzz: sessions {batch[0]}-{batch[-1]} done: {fds} descriptors "
                  f"(baseline {fd_base}), {rss // 1024} MiB resident (baseline "
                  f"{rss_base // 1024} MiB), {time.monotonic() - started:.0f} s", flush=True)
            if fds > fd_base:
                return fail(f"descriptors did not come back: {fds} open, baseline {fd_base}: "
                            f"{sorted(os.readlink(f'/proc/{pid}/fd/{n}') for n in os.listdir(f'/proc/{pid}/fd'))}")
            done += len(batch)
            if rss > rss_base + args.rss_slack_mb * 1024 + per_session_kb * done:
                return fail(f"resident memory grew from {rss_base // 1024} MiB to {rss // 1024} MiB")
        try:
            ix.stop()  # exits 0, no sanitizer report (LeakSanitizer runs at exit)
        except AssertionError as e:
            return fail(f"at shutdown: {e}")
        print(f"net_fuzz: {len(sessions)} sessions, seed {seed}: no findings "
              f"({time.monotonic() - started:.0f} s)", flush=True)
        return 0
    finally:
        for c in chaos.values():
            c.close()
        for f in fakes + bad_fakes:
            f.close()
        lab.close()


if __name__ == "__main__":
    sys.exit(main())
