"""The LMTP relay end to end (issue 4): real Dovecot nodes in two islands
(the lab; with ISTHMUS_NODE_KIND=cyrus real Cyrus nodes, where only
AnyNodeKind runs: ctest system.lmtp_cyrus), the real isthmus binary, a real Postfix delivering through it,
smtplib and raw sockets for the dialogue, a fault-injecting TCP gate
(tests/lab/gate.py) in front of nodes, and scripted fake LMTP nodes for what
Dovecot will not do on demand.

The rule under test above all: Isthmus says 250 for a recipient only after
that recipient's node said 250 for the message; everything else is 4xx, or
5xx only when the user does not exist. And no mail is lost or doubled."""
import os
import re
import smtplib
import socket
import threading
import time
import unittest
import imaplib
import uuid

from support import (FakeLmtpNode, Lab, RawLmtp, binary, deep_merge, fake_lmtp_config,
                     lmtp_stuff, make_message, procs, session_end_lines, start_isthmus,
                     wait_for)
from lab.dovecot import user_maildir  # noqa: E402  (support puts tests/ on the path)
from lab.gate import Gate  # noqa: E402
from lab.cluster import PASSWORD, node_kind  # noqa: E402
from lab.postfix import Postfix  # noqa: E402

HOSTNAME = "isthmus.lab.test"
SENDER = "sender@example.net"
MAX_SIZE = 8_000_000
GREETING = f"220 {HOSTNAME} LMTP Isthmus ready".encode()
LHLO_ANSWER = (f"250-{HOSTNAME}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"
               f"250-8BITMIME\r\n250 SIZE {MAX_SIZE}").encode()
SENDER_OK = b"250 2.1.0 Sender OK"
RCPT_OK = b"250 2.1.5 OK"  # Dovecot's answer to RCPT, passed through
GO_AHEAD = b"354 Start mail input; end with <CRLF>.<CRLF>"
LOST = b"451 4.4.2 <%s> Connection to the mailbox node lost during delivery, try again later"
UNREACHABLE = b"451 4.4.1 <%s> No node of island %s is reachable, try again later"

LAB = None
BASIC = None  # the shared isthmus: nodes direct, large messages spooled early
SPOOL_DIR = None


def setUpModule():
    global LAB, BASIC, SPOOL_DIR
    LAB = Lab(isthmus_ports={"lmtp": 0})
    unittest.addModuleCleanup(LAB.close)
    LAB.start()
    SPOOL_DIR = os.path.join(LAB.root, "spool")
    os.makedirs(SPOOL_DIR)
    BASIC = LAB.start_isthmus(binary(), lmtp={"hostname": HOSTNAME, "memory_spool": 65536,
                                              "spool_dir": SPOOL_DIR},
                              limits={"max_message_size": MAX_SIZE})


# -- helpers ------------------------------------------------------------------

def token() -> str:
    return "t" + uuid.uuid4().hex[:16]


def message(tok: str, body: str = "hello\n", to: str = "") -> bytes:
    return make_message(f"lmtp {tok}", body, to=to, sender=SENDER)


def lf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


def copies(island: str, user: str, tok: str) -> list[bytes]:
    """USER's messages in ISLAND's store (new/ and cur/) that contain TOK."""
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


def prepended(stored: bytes, sent: bytes) -> tuple[list[str], bytes]:
    """(names of the header fields in front of SENT in STORED, those bytes);
    raises if STORED does not end with SENT (LF line ends, as in maildir)."""
    sent = lf(sent)
    if not stored.endswith(sent):
        raise AssertionError(f"the stored message does not end with the sent one:\n"
                             f"stored: {stored[:600]!r}...\nsent: {sent[:300]!r}...")
    head = stored[:len(stored) - len(sent)]
    return re.findall(rb"^([A-Za-z-]+):", head, re.M), head


def session_of(ix, client_port: int) -> str:
    m = re.search(rf"session=(\S+) proto=lmtp end client=[0-9.]+:{client_port} ",
                  ix.log_text())
    return m.group(1) if m else ""


def saved_lines(node_name: str, msgid: str, expect: int = 0) -> list[str]:
    """Dovecot's "saved mail to INBOX" log lines of node NODE_NAME for MSGID.
    Dovecot's log process may write a line a moment after the LMTP reply:
    with EXPECT, wait (up to 5 s) until that many lines are there."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in LAB.node(node_name).log_text().splitlines()
                 if f"msgid={msgid}: saved mail to INBOX" in line]
        if len(lines) >= expect or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def msgid_of(raw: bytes) -> str:
    m = re.search(rb"^Message-ID: (\S+)", raw, re.M | re.I)
    return m.group(1).decode()


def own_isthmus(**overrides):
    """An isthmus of its own (fresh lmtp port, counters and node state)."""
    listeners = [{"name": "lmtp", "protocol": "lmtp", "address": "127.0.0.1",
                  "port": overrides.pop("port", None) or procs.free_port()}]
    listeners[0].update(overrides.pop("listener", {}))
    config = deep_merge({"lmtp": {"hostname": HOSTNAME},
                         "limits": {"max_message_size": MAX_SIZE}}, overrides)
    return LAB.start_isthmus(binary(), listeners=listeners, **config)


def spool_fds(pid: int) -> list[str]:
    """Where the open files of PID under SPOOL_DIR point."""
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith(SPOOL_DIR + "/"):
            out.append(target)
    return out


def dovecot_variant(cls):
    """Classes that read Dovecot's maildir, its log or its exact replies, and
    those with scripted fake nodes (run once): skipped when the lab runs
    another kind of node (ISTHMUS_NODE_KIND=cyrus, ctest system.lmtp_cyrus),
    where AnyNodeKind runs."""
    return unittest.skipUnless(node_kind() == "dovecot",
                               "Dovecot variant only (maildir, node log, exact replies, fakes)")(cls)


def inbox_subjects(node_name: str, user: str) -> list[str]:
    """The Subject lines in USER's INBOX, read straight from node NODE_NAME
    over IMAP (any node kind)."""
    return inbox_subjects_in(LAB, node_name, user)


def inbox_subjects_in(lab, node_name: str, user: str) -> list[str]:
    node = lab.node(node_name)
    m = imaplib.IMAP4(node.host, node.port("imap"), timeout=10)
    try:
        m.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
        typ, _ = m.select("INBOX", readonly=True)
        if typ != "OK":
            raise AssertionError(f"SELECT INBOX of {user} on {node_name}: {typ}")
        typ, found = m.search(None, "ALL")
        if typ != "OK" or not found[0]:
            return []
        typ, data = m.fetch(b",".join(found[0].split()), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [part[1].decode().strip() for part in data or [] if isinstance(part, tuple)]
    finally:
        try:
            m.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


class LmtpCase(unittest.TestCase):
    ix = None

    def raw(self, ix=None, source=None, greet=True) -> RawLmtp:
        c = RawLmtp((ix or self.ix).port("lmtp"), source=source)
        self.addCleanup(c.close)
        if greet:
            # The instance's token follows: an Isthmus reaching itself sees so.
            self.assertRegex(c.greeting(), re.escape(GREETING) + rb" \(isthmus-[a-z2-7]{24}\)$")
        return c

    def begin(self, c: RawLmtp, rcpts, mail=f"MAIL FROM:<{SENDER}>"):
        """LHLO, MAIL, one RCPT per recipient (each must be accepted), DATA."""
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        self.assertEqual(c.command(mail), SENDER_OK)
        for r in rcpts:
            self.assertEqual(c.command(f"RCPT TO:<{r}>"), RCPT_OK, r)
        self.assertEqual(c.command("DATA"), GO_AHEAD)

    def assert_saved(self, replies, users, *, same_txn=True):
        """Each reply is Dovecot's 250 for its user, in order; all with the
        same transaction id (Isthmus' session id, passed with XCLIENT), the
        n-th recipient of one node numbered :Rn. Returns the id."""
        self.assertEqual(len(replies), len(users), replies)
        ids = []
        for reply, user in zip(replies, users):
            m = re.fullmatch(rb"250 2\.0\.0 <%s> (\S+) Saved" % re.escape(user.encode()), reply)
            self.assertIsNotNone(m, (reply, user))
            ids.append(m.group(1).decode().split(":R")[0])
        if same_txn:
            self.assertEqual(len(set(ids)), 1, ids)
        return ids[0]


# -- the dialogue, against real Dovecot nodes -----------------------------------

@dovecot_variant
class Dialogue(LmtpCase):
    @classmethod
    def setUpClass(cls):
        cls.ix = BASIC

    def test_greeting_and_lhlo_exactly(self):
        c = self.raw()
        self.assertEqual(c.command("LHLO"), b"501 5.5.4 LHLO needs a host name")
        self.assertEqual(c.lhlo("mta.example.net"), LHLO_ANSWER)
        self.assertNotIn(b"CHUNKING", LHLO_ANSWER)
        # smtplib sees the same extensions.
        with smtplib.LMTP("127.0.0.1", self.ix.port("lmtp"), timeout=10) as l:
            code, _ = l.ehlo("mta.example.net")  # LMTP's ehlo_msg is "lhlo"
            self.assertEqual(code, 250)
            self.assertEqual(l.esmtp_features, {"pipelining": "", "enhancedstatuscodes": "",
                                                "8bitmime": "", "size": str(MAX_SIZE)})

    def test_smtplib_one_message_to_both_islands(self):
        tok = token()
        raw = message(tok, "to alice, bob and carol\n")
        with smtplib.LMTP("127.0.0.1", self.ix.port("lmtp"), timeout=20) as l:
            l.ehlo("mta.example.net")
            port = l.sock.getsockname()[1]
            self.assertEqual(l.mail(SENDER), (250, b"2.1.0 Sender OK"))
            for user in ("alice@example.org", "bob@example.org", "Carol"):
                self.assertEqual(l.rcpt(user), (250, b"2.1.5 OK"), user)
            # smtplib reads one reply to DATA; LMTP sends one per recipient.
            replies = [l.data(raw)] + [l.getreply() for _ in range(2)]
            l.quit()
        replies = [b"%d %s" % (code, text) for code, text in replies]
        sid = self.assert_saved(replies, ["alice@example.org", "bob@example.org",
                                          "carol@example.org"])
        # Dovecot numbers the second recipient of its transaction (carol on
        # a, after alice): one transaction per island.
        self.assertTrue(replies[2].endswith(b":R2 Saved"), replies[2])
        self.assertFalse(replies[1].endswith(b":R2 Saved"), replies[1])
        # The transaction id is Isthmus' session id (XCLIENT SESSION=).
        self.assertEqual(sid, wait_for(lambda: session_of(self.ix, port), what="the end line"))
        # Each recipient's copy in its own island's store only, byte for byte.
        for user, home, other, names in (
                ("alice@example.org", "a", "b", [b"Return-Path", b"Received", b"Received"]),
                ("carol@example.org", "a", "b", [b"Return-Path", b"Received", b"Received"]),
                ("bob@example.org", "b", "a",
                 [b"Return-Path", b"Delivered-To", b"Received", b"Received"])):
            stored = copies(home, user, tok)
            self.assertEqual(len(stored), 1, user)
            self.assertEqual(copies(other, user, tok), [], user)
            # Dovecot's lines, then Isthmus' own Received: (the hop count).
            names_found, head = prepended(stored[0], raw)
            self.assertEqual(names_found, names, user)
            self.assertRegex(head, rb"\nReceived: from \S+ \(127\.0\.0\.1\)\r?\n\tby isthmus\.lab\.test "
                                   rb"\(Isthmus\) with LMTP id [a-z2-7]{12};")

    def test_pipelined_transaction_in_one_write(self):
        tok = token()
        raw = message(tok)
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        c.send(f"MAIL FROM:<{SENDER}> BODY=8BITMIME\r\nRCPT TO:<alice@example.org>\r\n"
               "RCPT TO:<nobody@example.org>\r\nRCPT TO:<dave>\r\nDATA\r\n")
        self.assertEqual(c.replies(5), [SENDER_OK, RCPT_OK,
                                        b"550 5.1.1 <nobody@example.org> User unknown",
                                        RCPT_OK, GO_AHEAD])
        c.send(lmtp_stuff(raw))
        # Both islands' nodes were given the same id (XCLIENT SESSION=).
        self.assert_saved(c.replies(2), ["alice@example.org", "dave@example.org"])
        # A second transaction and QUIT, all in one write too.
        tok2 = token()
        c.send("RSET\r\nMAIL FROM:<>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n")
        self.assertEqual(c.replies(4), [b"250 2.0.0 OK", SENDER_OK, RCPT_OK, GO_AHEAD])
        c.send(lmtp_stuff(message(tok2)) + b"QUIT\r\n")
        self.assert_saved(c.replies(1), ["carol@example.org"])
        self.assertEqual(c.reply(), f"221 2.0.0 {HOSTNAME} closing connection".encode())
        self.assertTrue(c.is_closed())
        self.assertEqual(len(copies("a", "alice@example.org", tok)), 1)
        self.assertEqual(len(copies("b", "dave@example.org", tok)), 1)
        self.assertEqual(len(copies("a", "carol@example.org", tok2)), 1)
        self.assertIn(b"Return-Path: <>", copies("a", "carol@example.org", tok2)[0])

    def test_dot_stuffing_and_the_final_dot_split_across_segments(self):
        tok = token()
        content = (f"Subject: dots {tok}\r\n\r\n.\r\n..\r\n.leading dot\r\n. \r\n"
                   "mid.dle\r\n.\r\nlast\r\n").encode()
        wire = lmtp_stuff(content)
        self.assertIn(b"\r\n..\r\n...\r\n..leading dot\r\n.. \r\n", wire)
        c = self.raw()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.begin(c, ["bob@example.org"])
        body, end = wire[:-5], wire[-5:]  # end: CR LF . CR LF
        for i in range(len(body)):  # one byte per segment
            c.send(body[i:i + 1])
            time.sleep(0.002)
        for byte in end[:-1]:
            c.send(bytes([byte]))
            time.sleep(0.05)
        # "CR LF . CR" is not the end yet: no answer.
        c.sock.settimeout(0.3)
        with self.assertRaises(socket.timeout):
            c.reply()
        c.sock.settimeout(10)
        c.send(end[-1:])
        self.assert_saved([c.reply()], ["bob@example.org"])
        stored = copies("b", "bob@example.org", tok)
        self.assertEqual(len(stored), 1)
        self.assertEqual(prepended(stored[0], content)[0],
                         [b"Return-Path", b"Delivered-To", b"Received", b"Received"])

    def test_a_bare_lf_never_ends_the_message(self):
        tok = token()
        c = self.raw()
        self.begin(c, ["alice@example.org"])
        c.send(f"Subject: bare {tok}\r\n\r\nline one\n.\nstill content\n.\r\nmore\r\n".encode())
        # Neither LF . LF nor LF . CR LF ended it: no answer yet.
        c.sock.settimeout(0.5)
        with self.assertRaises(socket.timeout):
            c.reply()
        c.sock.settimeout(10)
        c.send(b".\r\n")
        self.assert_saved([c.reply()], ["alice@example.org"])
        stored = copies("a", "alice@example.org", tok)
        self.assertEqual(len(stored), 1)
        # Delivered with CR LF line ends (maildir keeps LF): the dots are
        # content lines, not stuffing and not an end.
        expected = f"Subject: bare {tok}\r\n\r\nline one\r\n.\r\nstill content\r\n.\r\nmore\r\n"
        self.assertEqual(prepended(stored[0], expected.encode())[0],
                         [b"Return-Path", b"Delivered-To", b"Received", b"Received"])

    def test_eight_bit_content_byte_exact(self):
        tok = token()
        octets = bytes(b for b in range(1, 256) if b not in (10, 13))
        content = (f"Subject: 8bit {tok}\r\nContent-Type: application/octet-stream\r\n\r\n"
                   .encode() + octets + b"\r\n" + octets[::-1] + b"\r\n\xc3\xa9t\xc3\xa9\r\n")
        c = self.raw()
        self.begin(c, ["alice@example.org", "bob@example.org"],
                   mail=f"MAIL FROM:<{SENDER}> BODY=8BITMIME SIZE={len(content)}")
        c.send(lmtp_stuff(content))
        self.assert_saved(c.replies(2), ["alice@example.org", "bob@example.org"])
        for island, user in (("a", "alice@example.org"), ("b", "bob@example.org")):
            stored = copies(island, user, tok)
            self.assertEqual(len(stored), 1, user)
            prepended(stored[0], content)

    def test_a_large_message_is_spooled_to_an_unlinked_file_and_delivered_intact(self):
        tok = token()
        line = bytes(range(0x80, 0x100)) + b" 8-bit and ascii 0123456789\r\n"
        body = b"".join((b"." if i % 7 == 0 else b"") + b"%07d " % i + line
                        for i in range(20000))  # ~3.2 MB, dot-stuffed lines
        content = f"Subject: big {tok}\r\n\r\n".encode() + body
        wire = lmtp_stuff(content)
        c = self.raw()
        self.begin(c, ["alice@example.org", "bob@example.org"])
        half = len(wire) // 2
        c.send(wire[:half])
        # Past memory_spool (64 KiB) the message is in a file in spool_dir
        # that has no name (O_TMPFILE: "/dir/#inode (deleted)" in /proc).
        fds = wait_for(lambda: spool_fds(self.ix.proc.pid), timeout=10,
                       what="a spool file open in spool_dir")
        self.assertEqual(len(fds), 1, fds)
        self.assertTrue(fds[0].endswith(" (deleted)"), fds)
        self.assertEqual(os.listdir(SPOOL_DIR), [])  # nothing with a name
        c.send(wire[half:])
        c.sock.settimeout(60)
        self.assert_saved(c.replies(2), ["alice@example.org", "bob@example.org"])
        for island, user in (("a", "alice@example.org"), ("b", "bob@example.org")):
            stored = copies(island, user, tok)
            self.assertEqual(len(stored), 1, user)
            prepended(stored[0], content)
        # The spool file is gone with the transaction.
        wait_for(lambda: not spool_fds(self.ix.proc.pid), what="the spool file closed")
        self.assertEqual(os.listdir(SPOOL_DIR), [])

    def test_a_small_message_stays_in_memory(self):
        tok = token()
        c = self.raw()
        self.begin(c, ["alice@example.org"])
        c.send(lmtp_stuff(message(tok, "x" * 1000 + "\n"))[:-5])
        time.sleep(0.2)
        self.assertEqual(spool_fds(self.ix.proc.pid), [])
        c.send(b"\r\n.\r\n")
        self.assert_saved([c.reply()], ["alice@example.org"])

    def test_rset_noop_vrfy_quit(self):
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RSET"), b"250 2.0.0 OK")
        self.assertEqual(c.command("RCPT TO:<bob@example.org>"), b"503 5.5.1 MAIL first")
        self.assertEqual(c.command("DATA"), b"503 5.5.1 MAIL first")
        self.assertEqual(c.command("NOOP"), b"250 2.0.0 OK")
        self.assertEqual(c.command("noop"), b"250 2.0.0 OK")
        self.assertEqual(c.command("VRFY alice@example.org"),
                         b"252 2.5.0 Cannot VRFY; send the message and see")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)  # not nested
        self.assertEqual(c.command("QUIT"), f"221 2.0.0 {HOSTNAME} closing connection".encode())
        self.assertTrue(c.is_closed())

    def test_helo_ehlo_bdat_and_others_refused(self):
        c = self.raw()
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), b"503 5.5.1 LHLO first")
        for verb in ("HELO", "EHLO", "ehlo"):
            self.assertEqual(c.command(f"{verb} mta.example.net"),
                             b"500 5.5.1 This is LMTP: use LHLO (RFC 2033)", verb)
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        for command in ("BDAT 10 LAST", "STARTTLS", "AUTH PLAIN", "ETRN example.org"):
            self.assertEqual(c.command(command), b"502 5.5.1 Command not implemented", command)
        self.assertEqual(c.command("XCLIENT ADDR=192.0.2.1"), b"500 5.5.2 Command unrecognized")
        self.assertEqual(c.command("FROBNICATE"), b"500 5.5.2 Command unrecognized")
        self.assertEqual(c.command("123"), b"500 5.5.2 Syntax error, command unrecognized")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)  # still usable

    def test_commands_out_of_order_and_bad_arguments(self):
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), b"503 5.5.1 MAIL first")
        self.assertEqual(c.command("DATA"), b"503 5.5.1 MAIL first")
        self.assertEqual(c.command("MAIL FROM:alice@example.org"),
                         b"501 5.5.4 Syntax: the address must be in angle brackets")
        self.assertEqual(c.command("MAIL TO:<a@b>"), b"501 5.5.4 Syntax: expected FROM:<address>")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}> FOO=1"),
                         b"555 5.5.4 Unsupported parameter FOO")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}> BODY=BINARYMIME"),
                         b"501 5.5.4 BODY must be 7BIT or 8BITMIME")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}> SIZE=12x"),
                         b"501 5.5.4 Bad SIZE parameter")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), b"503 5.5.1 Nested MAIL command")
        self.assertEqual(c.command("DATA"), b"503 5.5.1 No valid recipients")
        self.assertEqual(c.command("RCPT TO:<nobody@example.org>"),
                         b"550 5.1.1 <nobody@example.org> User unknown")
        self.assertEqual(c.command("DATA"), b"503 5.5.1 No valid recipients")
        self.assertEqual(c.command("RCPT TO:<>"), b"501 5.5.4 Empty recipient")
        self.assertEqual(c.command("RCPT TO:alice"),
                         b"501 5.5.4 Syntax: the address must be in angle brackets")
        self.assertEqual(c.command("RCPT TO:<alice@example.org> NOTIFY=NEVER"),
                         b"555 5.5.4 RCPT parameters are not supported here")
        self.assertEqual(c.command("RCPT TO:<a b@example.org>"),
                         b"550 5.1.3 <a b@example.org> Bad recipient address syntax")
        self.assertEqual(c.command("RCPT TO:<@relay.example:Alice@Example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        tok = token()
        c.send(lmtp_stuff(message(tok)))
        self.assert_saved([c.reply()], ["alice@example.org"])
        self.assertEqual(len(copies("a", "alice@example.org", tok)), 1)

    def test_the_node_sees_the_mtas_address_and_isthmus_session(self):
        tok = token()
        raw = message(tok)
        c = self.raw(source="127.0.0.5")
        self.begin(c, ["bob@example.org"])
        c.send(lmtp_stuff(raw))
        sid = self.assert_saved([c.reply()], ["bob@example.org"])
        self.assertEqual(c.command("QUIT")[:3], b"221")
        self.assertEqual(sid, wait_for(lambda: session_of(self.ix, c.local_port),
                                       what="the end line"))
        names, head = prepended(copies("b", "bob@example.org", tok)[0], raw)
        received = head.split(b"\nReceived: ", 1)[1]
        self.assertTrue(received.endswith(b"\n"))
        # Dovecot's Received: the MTA's address, not Isthmus' 127.0.0.1.
        self.assertRegex(received, rb"^from \S+ \(\[127\.0\.0\.5\]\)\n\tby ")
        self.assertIn(b"\n\tid %s\n" % sid.encode(), received)

    def test_an_mta_lost_in_data_delivers_nothing(self):
        tok = token()
        c = self.raw()
        self.begin(c, ["alice@example.org", "bob@example.org"])
        c.send(lmtp_stuff(message(tok, "half a message\n" * 100))[:1000])
        port = c.local_port
        c.close()
        wait_for(lambda: session_of(self.ix, port), what="the end line")
        self.assertRegex(self.ix.log_text(),
                         rf"proto=lmtp end client=127\.0\.0\.1:{port} .*ended=\"client lost in "
                         rf"DATA\"")
        time.sleep(0.3)
        self.assertEqual(copies("a", "alice@example.org", tok), [])
        self.assertEqual(copies("b", "bob@example.org", tok), [])


# -- limits, timeouts, shutdown, who may connect ---------------------------------

@dovecot_variant
class Limits(LmtpCase):
    @classmethod
    def setUpClass(cls):
        cls.ix = own_isthmus(limits={"max_message_size": 2048, "max_recipients": 2})
        cls.addClassCleanup(cls.ix.stop)

    def test_size_is_advertised_and_enforced_at_mail_and_after_the_dot(self):
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER.replace(b"SIZE %d" % MAX_SIZE, b"SIZE 2048"))
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}> SIZE=2049"),
                         b"552 5.3.4 Message size exceeds the limit of 2048 bytes")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}> SIZE=2048"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RCPT TO:<bob@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RCPT TO:<carol@example.org>"),
                         b"452 4.5.3 Too many recipients")
        self.assertEqual(c.command("DATA"), GO_AHEAD)

        def content(tok, size):
            head = f"Subject: size {tok}\r\n\r\n".encode()
            # Dot lines count once decoded: the stuffing is not content.
            filler = b".dot\r\n" * 50
            pad = size - len(head) - len(filler) - 2
            return head + filler + b"x" * pad + b"\r\n"

        tok1, tok2 = token(), token()
        too_big = content(tok1, 2049)
        self.assertEqual(len(too_big), 2049)
        c.send(lmtp_stuff(too_big))
        self.assertEqual(c.replies(2), [b"552 5.3.4 Message too big"] * 2)
        # The transaction is over; the connection goes on. Exactly the limit
        # (with 50 stuffed dots: 2098 bytes on the wire) is fine.
        exact = content(tok2, 2048)
        self.assertEqual(len(exact), 2048)
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), b"503 5.5.1 MAIL first")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(exact))
        self.assert_saved([c.reply()], ["alice@example.org"])
        time.sleep(0.2)
        self.assertEqual(copies("a", "alice@example.org", tok1), [])
        self.assertEqual(copies("b", "bob@example.org", tok1), [])
        stored = copies("a", "alice@example.org", tok2)
        self.assertEqual(len(stored), 1)
        prepended(stored[0], exact)


@dovecot_variant
class Timeouts(LmtpCase):
    def own(self, **overrides):
        ix = own_isthmus(**overrides)
        self.addCleanup(ix.stop)
        self.ix = ix
        return ix

    def test_an_idle_mta_is_told_and_closed(self):
        self.own(timeouts={"lmtp_idle": "1s"})
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        started = time.monotonic()
        self.assertEqual(c.reply(), b"421 4.4.2 Idle too long, closing connection")
        self.assertTrue(c.is_closed())
        self.assertTrue(0.9 < time.monotonic() - started < 3, time.monotonic() - started)

    def test_an_mta_stalled_in_data_is_closed_and_nothing_delivered(self):
        ix = self.own(timeouts={"lmtp_data": "1s"})
        tok = token()
        c = self.raw()
        self.begin(c, ["alice@example.org"])
        c.send(lmtp_stuff(message(tok))[:-5])
        started = time.monotonic()
        self.assertTrue(c.is_closed(timeout=5))
        self.assertEqual(c.read_until_closed(), b"")
        self.assertTrue(0.9 < time.monotonic() - started < 3)
        wait_for(lambda: 'ended="timed out in DATA"' in ix.log_text(), what="the end line")
        self.assertEqual(copies("a", "alice@example.org", tok), [])

    def test_shutdown_says_421_between_commands(self):
        ix = self.own()
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        stopper = threading.Thread(target=ix.stop)
        stopper.start()
        self.assertEqual(c.reply(), b"421 4.3.2 Service shutting down")
        self.assertTrue(c.is_closed())
        stopper.join()
        self.assertEqual(ix.returncode(), 0)


@dovecot_variant
class SpoolFailure(LmtpCase):
    def test_a_spool_that_cannot_be_written_defers_every_recipient(self):
        spool = os.path.join(LAB.root, "spool-gone")
        os.makedirs(spool)
        self.ix = own_isthmus(lmtp={"hostname": HOSTNAME, "memory_spool": 1024,
                                    "spool_dir": spool})
        self.addCleanup(self.ix.stop)
        os.rmdir(spool)  # after the start: the first large message finds out
        tok = token()
        c = self.raw()
        self.begin(c, ["alice@example.org", "bob@example.org"])
        c.send(lmtp_stuff(message(tok, "x" * 2000 + "\n")))
        self.assertEqual(c.replies(2), [b"451 4.3.0 Local error in processing, try again later"]
                         * 2)
        # A message that fits in memory still goes through.
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(message(tok + "small")))
        self.assert_saved([c.reply()], ["alice@example.org"])
        time.sleep(0.2)
        self.assertEqual(len(copies("a", "alice@example.org", tok)), 1)  # the small one
        self.assertEqual(copies("b", "bob@example.org", tok), [])
        self.assertIn("cannot create a spool file in " + spool, self.ix.log_text())


@dovecot_variant
class Access(LmtpCase):
    def test_a_client_outside_trusted_networks_is_refused(self):
        self.ix = own_isthmus(trusted_networks=["192.0.2.0/24"])
        self.addCleanup(self.ix.stop)
        c = self.raw(greet=False)
        self.assertEqual(c.read_until_closed(), b"554 5.7.1 Access denied\r\n")
        wait_for(lambda: "is not allowed to deliver; refused" in self.ix.log_text(),
                 what="the warning")

    def test_the_listeners_allow_list_replaces_trusted_networks(self):
        self.ix = own_isthmus(listener={"allow": ["127.0.0.5/32"]})
        self.addCleanup(self.ix.stop)
        # 127.0.0.1 is in trusted_networks, but not in the listener's list.
        c = self.raw(greet=False)
        self.assertEqual(c.read_until_closed(), b"554 5.7.1 Access denied\r\n")
        tok = token()
        c = self.raw(source="127.0.0.5")
        self.begin(c, ["carol@example.org"])
        c.send(lmtp_stuff(message(tok)))
        self.assert_saved([c.reply()], ["carol@example.org"])


# -- a real Postfix delivering through Isthmus -------------------------------------

@dovecot_variant
class PostfixThroughIsthmus(LmtpCase):
    """One Postfix (its LMTP client bound to 127.0.0.3, so the MTA's
    address is not Isthmus' own) delivering to the shared isthmus."""

    @classmethod
    def setUpClass(cls):
        cls.ix = BASIC
        cls.pf = Postfix(os.path.join(LAB.root, "postfix"), procs.free_port(),
                         ("127.0.0.1", BASIC.port("lmtp")), lmtp_timeout=10,
                         main_cf={"lmtp_bind_address": "127.0.0.3"})
        cls.pf.start()
        cls.addClassCleanup(cls.pf.stop)
        cls.users = ["alice@example.org", "bob@example.org", "carol@example.org"]
        cls.tok = token()
        cls.raw_message = message(cls.tok, "through Postfix and Isthmus\n.\n..\nend\n",
                                  to="alice@example.org")
        cls.sent = cls.pf.send(SENDER, cls.users, cls.raw_message)
        cls.records = cls.pf.wait_deliveries(cls.sent.queue_id, 3)

    def test_postfix_logs_exactly_one_status_sent_per_recipient(self):
        recs = self.records
        self.assertEqual(sorted(r["to"] for r in recs), self.users, recs)
        for r in recs:
            self.assertEqual(r["status"], "sent", r)
            self.assertEqual(r["dsn"], "2.0.0", r)
            self.assertEqual(r["relay"], f"127.0.0.1[127.0.0.1]:{self.ix.port('lmtp')}", r)
            self.assertRegex(r["reply"], rf"^250 2\.0\.0 <{re.escape(r['to'])}> \S+ Saved$")
        # One LMTP transaction: one delivery agent, one Isthmus session.
        self.assertEqual(len({r["pid"] for r in recs}), 1)
        self.assertEqual(len({r["reply"].split()[3].split(":R")[0] for r in recs}), 1)
        time.sleep(0.5)
        self.assertEqual(len(self.pf.deliveries(self.sent.queue_id)), 3)
        self.assertEqual(self.pf.queue(), [])

    def test_each_copy_is_in_its_own_islands_store_only_byte_exact(self):
        for user, home, other in (("alice@example.org", "a", "b"),
                                  ("carol@example.org", "a", "b"),
                                  ("bob@example.org", "b", "a")):
            stored = copies(home, user, self.tok)
            self.assertEqual(len(stored), 1, user)
            self.assertEqual(copies(other, user, self.tok), [], user)
            names, head = prepended(stored[0], self.raw_message)
            # Dovecot's Return-Path/Delivered-To/Received, then Isthmus' and
            # Postfix's Received; Delivered-To only where the node's
            # transaction had one recipient (bob alone on b).
            expected = [b"Return-Path", b"Received", b"Received", b"Received"]
            if home == "b":
                expected.insert(1, b"Delivered-To")
            self.assertEqual(names, expected, user)
            self.assertIn(b"(Postfix) with ESMTP id %s" % self.sent.queue_id.encode(), head)
            self.assertTrue(head.startswith(f"Return-Path: <{SENDER}>\n".encode()), head)

    def test_the_nodes_received_header_names_the_mta(self):
        stored = copies("a", "alice@example.org", self.tok)[0]
        _, head = prepended(stored, self.raw_message)
        dovecot_received = head.split(b"\nReceived: ", 1)[1].split(b"\nReceived: ", 1)[0]
        # The MTA's address (XCLIENT ADDR=) ...
        self.assertIn(b"([127.0.0.3])", dovecot_received)
        # ... and the MTA's LHLO name (Postfix's myhostname), not Isthmus'.
        self.assertNotIn(HOSTNAME.encode(), dovecot_received)
        self.assertTrue(dovecot_received.startswith(b"from mx.lab.test ([127.0.0.3])\n"),
                        dovecot_received)

    def test_an_unknown_recipient_bounces_and_the_others_are_delivered(self):
        tok = token()
        sent = self.pf.send(SENDER, ["nobody@example.org", "dave@example.org"], message(tok))
        recs = {r["to"]: r for r in self.pf.wait_deliveries(sent.queue_id, 2)}
        self.assertEqual(set(recs), {"nobody@example.org", "dave@example.org"})
        self.assertEqual(recs["nobody@example.org"]["status"], "bounced")
        self.assertEqual(recs["nobody@example.org"]["dsn"], "5.1.1")
        self.assertIn("said: 550 5.1.1 <nobody@example.org> User unknown (in reply to RCPT TO",
                      recs["nobody@example.org"]["reply"])
        self.assertEqual(recs["dave@example.org"]["status"], "sent")
        self.assertEqual(len(copies("b", "dave@example.org", tok)), 1)
        self.pf.wait_queue_empty(10)  # the bounce to the outside sender fails at once


# -- nodes that fail: stopped, black-holed, lost between RCPTs or during DATA --------

@dovecot_variant
class NodeFaults(LmtpCase):
    """Gates in front of every node's LMTP port (passing through unless a
    test says otherwise); a fresh isthmus per test (node state such as
    "suspect" must not leak), always on the same port so that one Postfix
    serves every test."""

    @classmethod
    def setUpClass(cls):
        cls.gates = {name: Gate(0, node.port("lmtp"), name=f"gate-{name}")
                     for name, node in LAB.nodes.items()}
        for g in cls.gates.values():
            cls.addClassCleanup(g.close)
        cls.lmtp_port = procs.free_port()
        cls.pf = Postfix(os.path.join(LAB.root, "postfix-faults"), procs.free_port(),
                         ("127.0.0.1", cls.lmtp_port), lmtp_timeout=10)
        cls.pf.start()
        cls.addClassCleanup(cls.pf.stop)

    def setUp(self):
        for g in self.gates.values():
            g.pass_through()
        self.marks = {name: len(g.connections) for name, g in self.gates.items()}

    def start(self, gated=(), **timeouts):
        """An isthmus whose nodes in GATED are reached through their gates."""
        islands = []
        for island in LAB.config["islands"]:
            nodes = []
            for node in island["nodes"]:
                node = deep_merge(node, {})
                if node["name"] in gated:
                    node["ports"]["lmtp"] = self.gates[node["name"]].port
                nodes.append(node)
            islands.append(dict(island, nodes=nodes))
        t = {"connect": "1s", "lmtp_command": "3s", "lmtp_data": "10s"}
        t.update(timeouts)
        self.ix = own_isthmus(port=self.lmtp_port, islands=islands, timeouts=t)
        self.addCleanup(self.ix.stop)
        return self.ix

    def new_connections(self, name):
        return self.gates[name].connections[self.marks[name]:]

    def test_a_stopped_node_is_skipped(self):
        self.start()
        left = LAB.node("a-left")
        left.stop()
        self.addCleanup(left.start)
        for _ in range(2):
            tok = token()
            raw = message(tok)
            c = self.raw()
            self.begin(c, ["alice@example.org", "carol@example.org"])
            c.send(lmtp_stuff(raw))
            self.assert_saved(c.replies(2), ["alice@example.org", "carol@example.org"])
            self.assertEqual(len(saved_lines("a-right", msgid_of(raw), expect=2)), 2)
            self.assertEqual(len(copies("a", "alice@example.org", tok)), 1)
        self.assertRegex(self.ix.log_text(),
                         r"lmtp island=a node=a-left: the node refused the connection .*trying "
                         r"the next node")

    def test_a_black_holed_node_is_skipped_after_the_connect_timeout(self):
        self.start(gated=("a-left",))
        self.gates["a-left"].black_hole()
        times = []
        for _ in range(2):
            tok = token()
            raw = message(tok)
            c = self.raw()
            self.assertEqual(c.lhlo(), LHLO_ANSWER)
            self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
            started = time.monotonic()
            self.assertEqual(c.command("RCPT TO:<alice@example.org>"), RCPT_OK)
            times.append(time.monotonic() - started)
            self.assertEqual(c.command("RCPT TO:<carol@example.org>"), RCPT_OK)
            self.assertEqual(c.command("DATA"), GO_AHEAD)
            c.send(lmtp_stuff(raw))
            self.assert_saved(c.replies(2), ["alice@example.org", "carol@example.org"])
            self.assertEqual(len(saved_lines("a-right", msgid_of(raw), expect=2)), 2)
        # The first transaction tried a-left first (a fresh router starts
        # there) and waited timeouts.connect for a greeting; a-left was
        # then suspect and tried last: the second went straight to a-right.
        self.assertEqual(len(self.new_connections("a-left")), 1)
        self.assertTrue(0.9 < times[0] < 2.5, times)
        self.assertLess(times[1], 0.9, times)
        self.assertRegex(self.ix.log_text(), r"lmtp island=a node=a-left: the node did not answer "
                                             r"in time .*trying the next node")

    def test_a_node_lost_between_rcpts_hands_the_transaction_to_the_other(self):
        self.start(gated=("a-left", "a-right"))
        tok = token()
        raw = message(tok)
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), RCPT_OK)
        first = [n for n in ("a-left", "a-right") if self.gates[n].open_connections()]
        self.assertEqual(len(first), 1, first)
        lost = first[0]
        other = "a-right" if lost == "a-left" else "a-left"
        self.assertEqual(self.gates[lost].cut_all(), 1)
        self.assertEqual(c.command("RCPT TO:<carol@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(raw))
        sid = self.assert_saved(c.replies(2), ["alice@example.org", "carol@example.org"])
        # The other node was asked for both recipients, in order, once.
        (conn,) = self.new_connections(other)
        rcpts = re.findall(rb"RCPT TO:<[^>]*>", bytes(conn.up_data))
        self.assertEqual(rcpts, [b"RCPT TO:<alice@example.org>", b"RCPT TO:<carol@example.org>"])
        self.assertEqual(len(saved_lines(other, msgid_of(raw), expect=2)), 2)
        self.assertEqual(saved_lines(lost, msgid_of(raw)), [])
        self.assertEqual(len(copies("a", "alice@example.org", tok)), 1)
        self.assertEqual(len(copies("a", "carol@example.org", tok)), 1)
        self.assertRegex(self.ix.log_text(),
                         rf"session={sid} lmtp island=a node={lost}: lost at RCPT")

    def test_a_node_lost_after_the_last_rcpt_is_replaced_before_data(self):
        # The node's connection dies while the MTA is still sending the
        # message (say the node's own idle timeout, on a slow upload): no
        # byte of the message has reached it, so the island's other node
        # can take the transaction, as between RCPTs.
        self.start(gated=("a-left", "a-right"))
        tok = token()
        raw = message(tok)
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RCPT TO:<carol@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        (lost,) = [n for n in ("a-left", "a-right") if self.gates[n].open_connections()]
        other = "a-right" if lost == "a-left" else "a-left"
        self.assertEqual(self.gates[lost].cut_all(), 1)
        c.send(lmtp_stuff(raw))
        self.assert_saved(c.replies(2), ["alice@example.org", "carol@example.org"])
        self.assertEqual(len(saved_lines(other, msgid_of(raw), expect=2)), 2)
        self.assertEqual(len(copies("a", "alice@example.org", tok)), 1)

    def test_a_node_restarted_between_rcpts_hands_the_transaction_to_the_other(self):
        # A Dovecot that stops says "421 4.3.2 <host> Shutting down" to its
        # LMTP clients and closes: the node is gone, like a lost one. A 421
        # must not reach the MTA as a recipient's answer (to an SMTP client
        # 421 means "this server is closing the connection").
        self.start()
        tok = token()
        raw = message(tok)
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), RCPT_OK)
        # A fresh router starts with the island's first node.
        wait_for(lambda: self.has_lmtp_client("a-left"), timeout=5,
                 what="Isthmus' connection to a-left")
        left = LAB.node("a-left")
        left.stop()
        self.addCleanup(left.start)
        self.assertEqual(c.command("RCPT TO:<carol@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(raw))
        self.assert_saved(c.replies(2), ["alice@example.org", "carol@example.org"])
        self.assertEqual(len(saved_lines("a-right", msgid_of(raw), expect=2)), 2)
        self.assertEqual(len(copies("a", "carol@example.org", tok)), 1)

    @staticmethod
    def has_lmtp_client(node_name):
        """True if node NODE_NAME has an LMTP client connected right now
        (the last lmtp Connect/Disconnect line of its log is a Connect)."""
        lines = [l for l in LAB.node(node_name).log_text().splitlines()
                 if re.search(r"lmtp\(\d+\): Info: (Connect|Disconnect)", l)]
        return bool(lines) and "Info: Connect from" in lines[-1]

    def test_an_island_without_a_reachable_node_defers_its_recipients_only(self):
        self.start(gated=("b-left", "b-right"))
        for name in ("b-left", "b-right"):
            self.gates[name].refuse()
        tok = token()
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<bob@example.org>"), UNREACHABLE % (b"bob@example.org", b"b"))
        self.assertEqual(c.command("RCPT TO:<alice@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RCPT TO:<dave@example.org>"), UNREACHABLE % (b"dave@example.org", b"b"))
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(message(tok)))
        self.assert_saved(c.replies(1), ["alice@example.org"])
        self.assertEqual(c.command("NOOP"), b"250 2.0.0 OK")  # exactly one reply was due
        self.assertEqual(copies("b", "bob@example.org", tok), [])

    def arm_cut(self, island="b", after=2000):
        for name in LAB.islands[island]:
            self.gates[name].cut_after(after, after=b"DATA\r\n")

    def test_a_node_lost_during_data_defers_its_recipients_only(self):
        self.start(gated=("b-left", "b-right"))
        self.arm_cut()
        tok = token()
        raw = message(tok, "a long message\n" * 10000)  # 150 KB: the cut is mid-message
        c = self.raw()
        self.begin(c, ["alice@example.org", "bob@example.org", "carol@example.org",
                       "dave@example.org"])
        c.send(lmtp_stuff(raw))
        replies = c.replies(4)
        self.assertEqual(replies[1], LOST % b"bob@example.org")
        self.assertEqual(replies[3], LOST % b"dave@example.org")
        self.assert_saved([replies[0], replies[2]], ["alice@example.org", "carol@example.org"])
        self.assertEqual(c.command("NOOP"), b"250 2.0.0 OK")
        # One connection to island b, cut mid-message; no silent reconnect.
        conns = self.new_connections("b-left") + self.new_connections("b-right")
        self.assertEqual(len(conns), 1, conns)
        self.assertTrue(conns[0].cut)
        sent = bytes(conns[0].up_data).split(b"DATA\r\n", 1)[1]
        ours, _, rest = sent.partition(b"\r\n\t")  # Isthmus' Received: comes first
        self.assertTrue(ours.startswith(b"Received: from "), sent[:100])
        rest = rest.split(b"\r\n", 2)[2]  # the rest of its three lines
        self.assertEqual(rest, lmtp_stuff(raw)[:len(rest)])
        self.assertGreater(len(rest), 1500)
        time.sleep(0.3)
        self.assertEqual(copies("b", "bob@example.org", tok), [])
        self.assertEqual(copies("b", "dave@example.org", tok), [])
        self.assertEqual(len(copies("a", "alice@example.org", tok)), 1)
        self.assertRegex(self.ix.log_text(), r"lmtp island=b node=b-\w+: failed during DATA: .*; "
                                             r"2 recipients deferred")

    def test_a_node_stalled_during_data_defers_its_recipients_only(self):
        self.start(gated=("b-left", "b-right"), lmtp_final="1s")
        for name in LAB.islands["b"]:
            self.gates[name].stall_after(2000, after=b"DATA\r\n")
            self.addCleanup(self.gates[name].cut_all)
        tok = token()
        raw = message(tok, "a long message\n" * 20000)  # 300 KB
        c = self.raw()
        self.begin(c, ["bob@example.org", "alice@example.org"])
        started = time.monotonic()
        c.send(lmtp_stuff(raw))
        replies = c.replies(2)
        elapsed = time.monotonic() - started
        self.assertEqual(replies[0], LOST % b"bob@example.org")
        self.assert_saved(replies[1:], ["alice@example.org"])
        self.assertTrue(0.9 < elapsed < 4, elapsed)  # timeouts.lmtp_final
        conns = self.new_connections("b-left") + self.new_connections("b-right")
        self.assertEqual(len(conns), 1, conns)
        self.assertTrue(conns[0].stalled)
        self.assertEqual(copies("b", "bob@example.org", tok), [])
        self.assertEqual(len(copies("a", "alice@example.org", tok)), 1)

    def test_postfix_retries_a_recipient_lost_during_data_and_it_arrives_once(self):
        self.start(gated=("b-left", "b-right"))
        self.arm_cut()
        tok = token()
        raw = message(tok, "a long message\n" * 10000)
        sent = self.pf.send(SENDER, ["alice@example.org", "bob@example.org"], raw)
        recs = self.pf.wait_deliveries(sent.queue_id, 2, statuses=("sent", "deferred"))
        by_to = {r["to"]: r for r in recs}
        self.assertEqual(by_to["alice@example.org"]["status"], "sent", recs)
        self.assertEqual(by_to["bob@example.org"]["status"], "deferred", recs)
        self.assertEqual(by_to["bob@example.org"]["dsn"], "4.4.2", recs)
        self.assertIn("said: " + (LOST % b"bob@example.org").decode(),
                      by_to["bob@example.org"]["reply"])
        self.assertEqual(copies("b", "bob@example.org", tok), [])
        for name in LAB.islands["b"]:
            self.gates[name].pass_through()
        self.pf.flush()
        self.pf.wait_deliveries(sent.queue_id, 2, statuses=("sent",))
        self.pf.wait_queue_empty(10)
        time.sleep(1.5)  # longer than Postfix's retry: a duplicate would show
        recs = self.pf.deliveries(sent.queue_id)
        self.assertEqual(sorted(r["to"] for r in recs if r["status"] == "sent"),
                         ["alice@example.org", "bob@example.org"], recs)
        self.assertNotIn("alice@example.org",
                         [r["to"] for r in recs if r["status"] != "sent"])
        self.assertEqual(len(copies("b", "bob@example.org", tok)), 1)
        self.assertEqual(len(copies("a", "alice@example.org", tok)), 1)
        self.assertEqual(copies("a", "bob@example.org", tok), [])


# -- scripted fake nodes --------------------------------------------------------------

FAKE_USERS = "u1@example.org a\nu2@example.org a\nu3@example.org a\nv1@example.org b\n"


class AnyNodeKind(LmtpCase):
    """Delivery through Isthmus to whichever kind of node the lab runs
    (Dovecot, or Cyrus with ISTHMUS_NODE_KIND=cyrus): each copy lands in its
    recipient's island only, the replies come one per accepted recipient in
    RCPT order, and a user the directory knows but the node does not gets
    the node's 550 5.1.1 with every line it wrote (Cyrus' is three lines,
    the enhanced code on the last only)."""

    ix = None

    @classmethod
    def setUpClass(cls):
        # ghost is in the directory (island a), but has no mailbox.
        cls.ix = LAB.start_isthmus(
            binary(), users_map=LAB.users_map + "ghost@example.org a\n",
            listeners=[{"name": "lmtp", "protocol": "lmtp", "address": "127.0.0.1",
                        "port": procs.free_port()}],
            lmtp={"hostname": HOSTNAME}, limits={"max_message_size": MAX_SIZE})
        cls.addClassCleanup(cls.ix.stop)

    def test_one_message_to_both_islands_and_an_unknown_user(self):
        tok = token()
        raw = message(tok, "to both islands\n", to="alice@example.org, bob@example.org")
        c = self.raw()
        self.assertEqual(c.lhlo(), LHLO_ANSWER)
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        for rcpt in ("alice@example.org", "bob@example.org"):
            self.assertTrue(c.command(f"RCPT TO:<{rcpt}>").startswith(b"250 2.1.5 "), rcpt)
        unknown = c.command("RCPT TO:<ghost@example.org>").split(b"\r\n")
        # Every line the node wrote, each with the code and the enhanced
        # code it carried (RFC 2034: on every line), not 5.0.0.
        for line in unknown[:-1]:
            self.assertRegex(line, rb"^550-5\.1\.1 \S", unknown)
        self.assertRegex(unknown[-1], rb"^550 5\.1\.1 \S", unknown)
        if LAB.kind == "cyrus":
            self.assertEqual(unknown[-1], b"550 5.1.1 User unknown")
            self.assertRegex(unknown[0], rb"^550-5\.1\.1 Mailbox unknown\.")
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(raw))
        replies = c.replies(2)
        for reply in replies:
            self.assertRegex(reply, rb"^250 2\.\d+\.\d+ ", replies)
        self.assertEqual(c.command("QUIT")[:3], b"221")
        subject = f"Subject: lmtp {tok}"
        for user, home, other in (("alice@example.org", "a", "b"), ("bob@example.org", "b", "a")):
            with self.subTest(user=user):
                # A node of the home island has it once; the other island
                # never saw it.
                self.assertEqual(inbox_subjects(f"{home}-left", user).count(subject), 1)
                self.assertEqual(inbox_subjects(f"{other}-left", user).count(subject), 0)


@unittest.skipUnless(node_kind() == "cyrus", "Cyrus variant only (lmtpd without -a)")
class CyrusLmtpAuth(unittest.TestCase):
    """Cyrus' lmtpd without -a wants its client to authenticate: MAIL gets
    430 until AUTH by a user in lmtp_admins. Isthmus authenticates with
    lmtp.node_user (AUTH PLAIN after LHLO); without it, or refused, the
    recipients are deferred, never lost."""

    @classmethod
    def setUpClass(cls):
        from lab.cyrus import LMTP_PASSWORD, LMTP_USER
        cls.user = LMTP_USER
        cls.lab = Lab(kind="cyrus", isthmus_ports={"lmtp": 0}, node_options={"lmtp_auth": True})
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()
        cls.good = os.path.join(cls.lab.root, "lmtp.pw")
        cls.bad = os.path.join(cls.lab.root, "wrong.pw")
        for path, password in ((cls.good, LMTP_PASSWORD), (cls.bad, "not-" + LMTP_PASSWORD)):
            with open(path, "w") as f:
                f.write(password + "\n")
            os.chmod(path, 0o600)

    def deliver(self, ix, user: str) -> tuple[bytes, str]:
        """One message to USER through IX: (the reply to RCPT, or to the
        final dot when RCPT was accepted; the subject line)."""
        tok = token()
        c = RawLmtp(ix.port("lmtp"))
        self.addCleanup(c.close)
        c.greeting()
        self.assertEqual(c.lhlo()[:3], b"250")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        answer = c.command(f"RCPT TO:<{user}>")
        if answer.startswith(b"250"):
            self.assertEqual(c.command("DATA"), GO_AHEAD)
            c.send(lmtp_stuff(message(tok, to=user)))
            answer = c.reply()
        return answer, f"Subject: lmtp {tok}"

    def start(self, **lmtp):
        # A listener of its own: two instances on one port would share it.
        listeners = [{"name": "lmtp", "protocol": "lmtp", "address": "127.0.0.1",
                      "port": procs.free_port()}]
        ix = self.lab.start_isthmus(binary(), lmtp=dict(lmtp, hostname=HOSTNAME),
                                    listeners=listeners, timeouts={"connect": "1s"})
        self.addCleanup(ix.stop)
        return ix

    def test_with_the_lmtp_admin_the_message_is_delivered(self):
        ix = self.start(node_user=self.user, node_password_file=self.good)
        answer, subject = self.deliver(ix, "alice@example.org")
        self.assertRegex(answer, rb"^250 2\.", answer)
        self.assertEqual(inbox_subjects_in(self.lab, "a-left", "alice@example.org").count(subject),
                         1)
        self.assertNotIn("AUTH PLAIN", ix.log_text())  # the credentials are never logged

    def test_without_auth_or_refused_the_recipient_is_deferred(self):
        for lmtp, why in (({}, "430"),
                          ({"node_user": self.user, "node_password_file": self.bad},
                           f"refused AUTH as {self.user}")):
            with self.subTest(why=why):
                ix = self.start(**lmtp)
                answer, _ = self.deliver(ix, "bob@example.org")
                self.assertRegex(answer, rb"^4\d\d 4\.", answer)
                wait_for(lambda: why in ix.log_text(), what=why)


@dovecot_variant
class Loops(unittest.TestCase):
    """An island whose node is Isthmus itself, two instances pointing at
    each other, and a message that has looped through MTAs: refused at
    once, no storm of connections, 554 5.4.6 for a looped message."""

    def lmtp_sessions(self, ix, mark: int = 0) -> int:
        return len([e for e in session_end_lines(ix.log_text()[mark:])
                    if e.get("proto") == "lmtp"])

    def test_a_node_that_is_this_instance_is_refused_at_once(self):
        port = procs.free_port()
        islands = [dict(i, nodes=[dict(n, host="127.0.0.1", ports={"lmtp": port})
                                  for n in i["nodes"]]) for i in LAB.config["islands"]]
        ix = own_isthmus(port=port, islands=islands)
        self.addCleanup(ix.stop)
        time.sleep(0.2)
        mark = len(ix.log_text())  # after the start-up probe's session
        with smtplib.LMTP("127.0.0.1", port, timeout=20) as s:
            s.ehlo("mta.example.net")
            s.mail(SENDER)
            t0 = time.monotonic()
            code, text = s.rcpt("alice@example.org")
            took = time.monotonic() - t0
        self.assertEqual(code, 451, text)
        self.assertLess(took, 2.0)
        log = ix.log_text()
        self.assertIn("its address points back at this Isthmus", log)
        # One RCPT: the MTA's session, and one per node of the island that
        # Isthmus opened to itself (refused at its greeting) -- no more.
        time.sleep(0.5)
        self.assertLessEqual(self.lmtp_sessions(ix, mark), 3, log)

    def test_two_instances_in_a_circle_make_no_storm(self):
        port_a, port_b = procs.free_port(), procs.free_port()
        def circle(target):
            return [dict(i, nodes=[dict(i["nodes"][0], host="127.0.0.1", ports={"lmtp": target})])
                    for i in LAB.config["islands"]]
        limits = {"max_node_connections": 4, "hostname": HOSTNAME}
        a = own_isthmus(port=port_a, islands=circle(port_b), lmtp=limits,
                        timeouts={"lmtp_command": "5s"})
        self.addCleanup(a.stop)
        b = own_isthmus(port=port_b, islands=circle(port_a), lmtp=limits,
                        timeouts={"lmtp_command": "5s"})
        self.addCleanup(b.stop)
        with smtplib.LMTP("127.0.0.1", port_a, timeout=60) as s:
            s.ehlo("mta.example.net")
            s.mail(SENDER)
            code, text = s.rcpt("alice@example.org")
        self.assertEqual(code, 451, text)
        time.sleep(1.0)
        sessions = self.lmtp_sessions(a) + self.lmtp_sessions(b)
        print(f"\nLMTP circle of two instances: {sessions} sessions in all for one RCPT",
              flush=True)
        self.assertLessEqual(sessions, 12)
        self.assertIn("lmtp.max_node_connections", a.log_text() + b.log_text())

    def test_a_message_past_the_hop_limit_is_refused_everywhere(self):
        ix = own_isthmus(lmtp={"max_hops": 10, "hostname": HOSTNAME})
        self.addCleanup(ix.stop)
        tok = token()
        looped = "".join(f"Received: from hop{i}.example by hop{i + 1}.example; "
                         f"Thu, 3 Dec 2026 10:00:{i:02d} +0000\r\n" for i in range(10))
        raw = looped.encode() + message(tok).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        with smtplib.LMTP("127.0.0.1", ix.port("lmtp"), timeout=20) as s:
            s.ehlo("mta.example.net")
            s.mail(SENDER)
            s.rcpt("alice@example.org")
            s.rcpt("bob@example.org")
            code, _ = s.docmd("DATA")
            self.assertEqual(code, 354)
            s.send(lmtp_stuff(raw))
            replies = [s.getreply() for _ in range(2)]
        self.assertEqual([r[0] for r in replies], [554, 554])
        self.assertTrue(all(r[1].startswith(b"5.4.6") for r in replies), replies)
        self.assertEqual(copies("a", "alice@example.org", tok), [])
        self.assertEqual(copies("b", "bob@example.org", tok), [])
        self.assertIn("a routing loop; refused", ix.log_text())


@dovecot_variant
class FakeNodes(unittest.TestCase):
    def setup(self, a, b=(), **overrides):
        """Fake nodes A (list) as island a, B as island b; isthmus in front.
        Returns the isthmus."""
        islands = {"a": [(f"a{i}", n.port) for i, n in enumerate(a)]}
        if b:
            islands["b"] = [(f"b{i}", n.port) for i, n in enumerate(b)]
        for n in list(a) + list(b):
            self.addCleanup(n.close)
        t = {"connect": "1s", "lmtp_command": "1s", "lmtp_data": "2s"}
        t.update(overrides.pop("timeouts", {}))
        config = fake_lmtp_config(islands, timeouts=t, **overrides)
        users = "".join(line + "\n" for line in FAKE_USERS.splitlines()
                        if line.split()[1] in islands)
        self.ix = start_isthmus(config, users)
        self.addCleanup(self.ix.stop)
        return self.ix

    def client(self, source=None) -> RawLmtp:
        c = RawLmtp(self.ix.port("lmtp"), source=source)
        self.addCleanup(c.close)
        self.assertRegex(c.greeting(), rb"^220 isthmus.test LMTP Isthmus ready \(isthmus-")
        self.assertEqual(c.lhlo()[:3], b"250")
        return c

    def transaction(self, rcpts, content=b"Subject: fake\r\n\r\nhello\r\n", mail=None,
                    rcpt_replies=None):
        """MAIL, RCPTs (their replies must be RCPT_REPLIES, default all
        accepted), DATA, the message; the replies after the dot."""
        c = self.client()
        self.assertEqual(c.command(mail or f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        got = [c.command(f"RCPT TO:<{r}>") for r in rcpts]
        self.assertEqual(got, rcpt_replies or [RCPT_OK] * len(rcpts))
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(content))
        accepted = sum(1 for r in got if r.startswith(b"250"))
        return c.replies(accepted)

    def test_replies_go_out_as_soon_as_their_prefix_is_known(self):
        # Island a answers at once, island b after 3 s. RFC 2033's order
        # holds, but a recipient on the fast island is not held for the
        # slow one: every second held is a second in which an MTA that gives
        # up would send an already delivered message again.
        self.setup([FakeLmtpNode()], [FakeLmtpNode(final_delay=3)])
        c = self.client()
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        for r in ("u1@example.org", "v1@example.org", "u2@example.org"):
            self.assertEqual(c.command(f"RCPT TO:<{r}>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        sent = time.monotonic()
        c.send(lmtp_stuff(b"Subject: x\r\n\r\nx\r\n"))
        first = c.reply()
        first_at = time.monotonic() - sent
        rest = c.replies(2)
        rest_at = time.monotonic() - sent
        self.assertEqual(first, b"250 2.0.0 <u1@example.org> fake saved")
        self.assertEqual(rest, [b"250 2.0.0 <v1@example.org> fake saved",
                                b"250 2.0.0 <u2@example.org> fake saved"])
        print(f"\nLMTP early replies: first after {first_at:.2f}s, the rest after {rest_at:.2f}s",
              flush=True)
        self.assertLess(first_at, 1.5)
        self.assertGreater(rest_at, 2.5)

    def test_a_permanent_refusal_of_the_transaction_is_the_recipients_answer(self):
        # 552 5.3.4 to MAIL ... SIZE=: the message can never fit. Not a node
        # fault, not a 451 that makes the MTA retry for days.
        refusing = FakeLmtpNode(mail="552 5.3.4 Message size exceeds fixed maximum message size")
        self.setup([refusing, FakeLmtpNode(mail="552 5.3.4 Too big here too")])
        c = self.client()
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}> SIZE=900000"), SENDER_OK)
        answer = c.command("RCPT TO:<u1@example.org>")
        self.assertTrue(answer.startswith(b"552 5.3.4"), answer)
        self.assertNotIn("No node", self.ix.log_text())

    def test_a_message_over_the_nodes_size_is_refused_for_its_recipients_only(self):
        small = FakeLmtpNode(extensions=["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME",
                                         "SIZE 1000"])
        self.setup([small], [FakeLmtpNode()])
        content = b"Subject: big\r\n\r\n" + b"y" * 3000 + b"\r\n"
        replies = self.transaction(["u1@example.org", "v1@example.org", "u2@example.org"], content)
        self.assertTrue(replies[0].startswith(b"552 5.3.4 <u1@example.org> Message too big"),
                        replies)
        self.assertEqual(replies[1], b"250 2.0.0 <v1@example.org> fake saved")
        self.assertTrue(replies[2].startswith(b"552 5.3.4 <u2@example.org>"), replies)
        self.assertEqual(small.transactions, [])  # the node never got DATA

    def test_a_multi_line_reply_keeps_every_line_and_the_code_it_carries(self):
        # Cyrus puts the enhanced code on the last line only.
        node = FakeLmtpNode(final={"u1@example.org": "550-Mailbox does not exist\r\n"
                                                     "550 5.1.1 <u1@example.org> User unknown"})
        self.setup([node])
        c = self.client()
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<u1@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RCPT TO:<u2@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(b"Subject: x\r\n\r\nx\r\n"))
        self.assertEqual(c.line(), b"550-5.1.1 Mailbox does not exist")
        self.assertEqual(c.line(), b"550 5.1.1 <u1@example.org> User unknown")
        self.assertEqual(c.reply(), b"250 2.0.0 <u2@example.org> fake saved")

    def test_dbmails_215_after_the_dot_is_a_delivery_passed_on(self):
        # DBMail's lmtpd answers the final dot with "215 Recipient <...> OK"
        # (its enhanced code 2.1.5 printed as the reply code) while it
        # advertises ENHANCEDSTATUSCODES: a 2xx is a delivery, and the MTA
        # gets what the node said; a 4xx beside it is still a deferral.
        node = FakeLmtpNode(final={"u1@example.org": "215 Recipient <u1@example.org> OK",
                                   "u2@example.org": "452 4.2.2 Mailbox full"})
        self.setup([node])
        replies = self.transaction(["u1@example.org", "u2@example.org"])
        self.assertEqual(replies, [b"215 2.0.0 Recipient <u1@example.org> OK",
                                   b"452 4.2.2 Mailbox full"])
        wait_for(lambda: "delivered=1 deferred=1" in self.ix.log_text(), what="the message line")

    def test_connections_to_one_node_are_bounded(self):
        node = FakeLmtpNode(hang_at_rcpt=["u1@example.org"])
        self.setup([node], lmtp={"max_node_connections": 2},
                   timeouts={"lmtp_command": "3s"})
        clients = []
        for _ in range(2):  # two transactions hold the node's two connections
            c = self.client()
            self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
            c.send("RCPT TO:<u1@example.org>\r\n")
            clients.append(c)
        wait_for(lambda: node.connections >= 2, what="two connections to the node")
        third = self.client()
        self.assertEqual(third.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(third.command("RCPT TO:<u2@example.org>"),
                         b"451 4.4.5 <u2@example.org> The nodes of island a are busy, try again later")
        self.assertEqual(node.connections, 2)

    def test_one_node_connection_serves_the_mtas_next_messages(self):
        node = FakeLmtpNode()
        self.setup([node])
        c = self.client()
        for i in range(3):
            self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
            self.assertEqual(c.command(f"RCPT TO:<u{i % 2 + 1}@example.org>"), RCPT_OK)
            self.assertEqual(c.command("DATA"), GO_AHEAD)
            c.send(lmtp_stuff(b"Subject: again\r\n\r\nx\r\n"))
            self.assertTrue(c.reply().startswith(b"250 "))
        # An aborted transaction: the node gets RSET before the next MAIL.
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<u1@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RSET"), b"250 2.0.0 OK")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<u2@example.org>"), RCPT_OK)
        self.assertEqual(node.connections, 1)
        self.assertEqual(len(node.transactions), 3)
        self.assertEqual(node.received[0].count(b"XCLIENT"), 1)  # one session set up
        self.assertIn(b"RCPT TO:<u1@example.org>\r\nRSET\r\nMAIL FROM", node.received[0])

    def test_per_recipient_answers_pass_through_in_rcpt_order(self):
        a = FakeLmtpNode(final={"u1@example.org": "452 4.2.2 <u1@example.org> Mailbox is full"})
        b = FakeLmtpNode()
        self.setup([a], [b])
        replies = self.transaction(["u1@example.org", "v1@example.org", "u2@example.org"])
        self.assertEqual(replies, [b"452 4.2.2 <u1@example.org> Mailbox is full",
                                   b"250 2.0.0 <v1@example.org> fake saved",
                                   b"250 2.0.0 <u2@example.org> fake saved"])
        # One connection and one transaction per island.
        self.assertEqual((a.connections, b.connections), (1, 1))
        self.assertEqual(a.transactions[0]["rcpts"], ["RCPT TO:<u1@example.org>",
                                                      "RCPT TO:<u2@example.org>"])
        self.assertEqual(b.transactions[0]["rcpts"], ["RCPT TO:<v1@example.org>"])

    def test_the_nodes_rcpt_answer_is_passed_back_sanitised(self):
        a = FakeLmtpNode(rcpt={"u1@example.org": "452 4.2.2 Over quota \x01 \xe9t\xe9",
                               "u2@example.org": "550 5.1.1 <u2@example.org> No such user here"})
        self.setup([a])
        replies = self.transaction(
            ["u1@example.org", "u2@example.org", "u3@example.org"],
            rcpt_replies=[b"452 4.2.2 Over quota \\x01 \\xc3\\xa9t\\xc3\\xa9",
                          b"550 5.1.1 <u2@example.org> No such user here", RCPT_OK])
        self.assertEqual(replies, [b"250 2.0.0 <u3@example.org> fake saved"])
        # Only the accepted recipient was in the node's transaction.
        self.assertEqual(a.transactions[0]["rcpts"],
                         ["RCPT TO:<u1@example.org>", "RCPT TO:<u2@example.org>",
                          "RCPT TO:<u3@example.org>"])

    def test_250_at_rcpt_and_451_after_data(self):
        a = FakeLmtpNode(final={"u1@example.org": "451 4.3.0 <u1@example.org> Temporary "
                                                  "internal error"})
        self.setup([a])
        self.assertEqual(self.transaction(["u1@example.org", "u2@example.org"]),
                         [b"451 4.3.0 <u1@example.org> Temporary internal error",
                          b"250 2.0.0 <u2@example.org> fake saved"])

    def test_a_node_that_never_answers_the_final_dot(self):
        a = FakeLmtpNode(end="hang")
        b = FakeLmtpNode()
        self.setup([a], [b], timeouts={"lmtp_final": "1500ms"})
        started = time.monotonic()
        replies = self.transaction(["u1@example.org", "v1@example.org", "u2@example.org"])
        elapsed = time.monotonic() - started
        self.assertEqual(replies, [LOST % b"u1@example.org",
                                   b"250 2.0.0 <v1@example.org> fake saved",
                                   LOST % b"u2@example.org"])
        self.assertTrue(1.4 < elapsed < 3, elapsed)
        self.assertEqual(len(a.transactions), 1)  # it had the whole message
        self.assertEqual(a.connections, 1)  # and was not asked again

    def test_a_node_that_answers_some_recipients_then_dies(self):
        a = FakeLmtpNode(end=1)
        self.setup([a, FakeLmtpNode()])
        self.assertEqual(self.transaction(["u1@example.org", "u2@example.org", "u3@example.org"]),
                         [b"250 2.0.0 <u1@example.org> fake saved",
                          LOST % b"u2@example.org", LOST % b"u3@example.org"])

    def test_a_node_that_dies_in_the_middle_of_the_message(self):
        self.setup([FakeLmtpNode(in_data="close")], [FakeLmtpNode()])
        content = b"Subject: x\r\n\r\n" + b"y" * 500000 + b"\r\n"
        self.assertEqual(self.transaction(["u1@example.org", "v1@example.org"], content),
                         [LOST % b"u1@example.org", b"250 2.0.0 <v1@example.org> fake saved"])

    def test_a_node_that_stops_reading_the_message(self):
        # 12 MB: more than the socket buffers hold, so Isthmus' write blocks
        # (timeouts.lmtp_final bounds it; it also bounds the other node's
        # reading it, hence not shorter).
        self.setup([FakeLmtpNode(in_data="hang")], [FakeLmtpNode()],
                   timeouts={"lmtp_final": "3s"})
        content = b"Subject: x\r\n\r\n" + (b"z" * 998 + b"\r\n") * 12000
        c = self.client()
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<u1@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RCPT TO:<v1@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(content))
        started = time.monotonic()  # Isthmus has the message: the nodes get it now
        self.assertEqual(c.replies(2), [LOST % b"u1@example.org",
                                        b"250 2.0.0 <v1@example.org> fake saved"])
        self.assertTrue(2 < time.monotonic() - started < 6, time.monotonic() - started)
        self.assertRegex(self.ix.log_text(), r"node=a0: failed during DATA: while sending the "
                                             r"message: .*; 1 recipients deferred")

    def test_a_node_that_does_not_answer_rcpt_in_time_is_replaced(self):
        slow = FakeLmtpNode(hang_at_rcpt={"u2@example.org"})
        other = FakeLmtpNode()
        self.setup([slow, other], timeouts={"lmtp_command": "1s"})
        c = self.client()
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<u1@example.org>"), RCPT_OK)
        started = time.monotonic()
        self.assertEqual(c.command("RCPT TO:<u2@example.org>"), RCPT_OK)
        self.assertTrue(0.9 < time.monotonic() - started < 2.5)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(b"Subject: x\r\n\r\nx\r\n"))
        self.assertEqual(c.replies(2), [b"250 2.0.0 <u1@example.org> fake saved",
                                        b"250 2.0.0 <u2@example.org> fake saved"])
        self.assertEqual(slow.transactions, [])
        self.assertEqual(other.transactions[0]["rcpts"],
                         ["RCPT TO:<u1@example.org>", "RCPT TO:<u2@example.org>"])

    def test_a_node_that_refuses_data(self):
        self.setup([FakeLmtpNode(data="451 4.3.2 Not now")])
        self.assertEqual(self.transaction(["u1@example.org", "u2@example.org"]),
                         [b"451 4.3.2 Not now"] * 2)

    def test_islands_get_the_message_in_parallel(self):
        a = FakeLmtpNode(final_delay=1.0)
        b = FakeLmtpNode(final_delay=1.0)
        self.setup([a], [b])
        started = time.monotonic()
        self.assertEqual(self.transaction(["u1@example.org", "v1@example.org"]),
                         [b"250 2.0.0 <u1@example.org> fake saved",
                          b"250 2.0.0 <v1@example.org> fake saved"])
        self.assertLess(time.monotonic() - started, 1.9)  # one after the other: >= 2

    def test_a_node_greeting_421_is_skipped(self):
        bad = FakeLmtpNode(greeting="421 4.3.2 fake.node too busy")
        good = FakeLmtpNode()
        self.setup([bad, good])
        self.assertEqual(self.transaction(["u1@example.org"]),
                         [b"250 2.0.0 <u1@example.org> fake saved"])
        self.assertEqual(bad.connections, 1)  # a fresh router tries the first node first
        self.assertEqual(len(good.transactions), 1)
        self.assertRegex(self.ix.log_text(), r"node=a0: the node answered with a temporary "
                                             r"failure \(greeting: 421 4\.3\.2 fake\.node too busy\)")

    def test_no_node_of_the_island_reachable(self):
        nodes = [FakeLmtpNode(greeting="421 4.3.2 busy"), FakeLmtpNode(mail="451 4.3.0 not now")]
        self.setup(nodes, [FakeLmtpNode()])
        c = self.client()
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<u1@example.org>"), UNREACHABLE % (b"u1@example.org", b"a"))
        # The island is given up for this transaction: not tried again.
        self.assertEqual(c.command("RCPT TO:<u2@example.org>"), UNREACHABLE % (b"u2@example.org", b"a"))
        self.assertEqual([n.connections for n in nodes], [1, 1])
        self.assertEqual(c.command("RCPT TO:<v1@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(b"Subject: x\r\n\r\nx\r\n"))
        self.assertEqual(c.reply(), b"250 2.0.0 <v1@example.org> fake saved")

    def test_a_node_that_says_421_at_rcpt_is_replaced(self):
        going = FakeLmtpNode(rcpt={"u2@example.org": "421 4.3.2 fake.node Shutting down"})
        other = FakeLmtpNode()
        self.setup([going, other])
        c = self.client()
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<u1@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RCPT TO:<u2@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(b"Subject: x\r\n\r\nx\r\n"))
        self.assertEqual(c.replies(2), [b"250 2.0.0 <u1@example.org> fake saved",
                                        b"250 2.0.0 <u2@example.org> fake saved"])
        self.assertEqual(going.transactions, [])
        self.assertEqual(other.transactions[0]["rcpts"],
                         ["RCPT TO:<u1@example.org>", "RCPT TO:<u2@example.org>"])

    def test_a_node_lost_between_rcpts(self):
        first = FakeLmtpNode(close_at_rcpt={"u2@example.org"})
        second = FakeLmtpNode(rcpt={"u3@example.org": "550 5.1.1 <u3@example.org> gone here"})
        self.setup([first, second])
        c = self.client()
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}>"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<u1@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RCPT TO:<u3@example.org>"), RCPT_OK)
        self.assertEqual(c.command("RCPT TO:<u2@example.org>"), RCPT_OK)  # first node lost here
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(b"Subject: x\r\n\r\nx\r\n"))
        # u3 was accepted by the lost node, refused by its replacement: that
        # refusal is its final answer, in its place.
        self.assertEqual(c.replies(3), [b"250 2.0.0 <u1@example.org> fake saved",
                                        b"550 5.1.1 <u3@example.org> gone here",
                                        b"250 2.0.0 <u2@example.org> fake saved"])
        self.assertEqual(first.transactions, [])
        (txn,) = second.transactions
        self.assertEqual(txn["rcpts"], ["RCPT TO:<u1@example.org>", "RCPT TO:<u3@example.org>",
                                        "RCPT TO:<u2@example.org>"])

    def test_what_the_node_receives_without_xclient(self):
        plain_node = FakeLmtpNode(extensions=["PIPELINING", "ENHANCEDSTATUSCODES", "SIZE 100000"])
        self.setup([plain_node])
        content = (b"Subject: stuffing\r\n\r\n.\r\n..two\r\n.x\r\nbare\nlf\n.\nend\r\n"
                   b"lone\rcr\r\n")
        c = self.client(source="127.0.0.5")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}> SIZE=77 BODY=7BIT"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<U1>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        wire = lmtp_stuff(content)
        self.assertIn(b"\r\n..\r\n...two\r\n..x\r\nbare\nlf\n.\nend\r\n", wire)
        c.send(wire)
        self.assertEqual(c.reply(), b"250 2.0.0 <u1@example.org> fake saved")
        # The whole conversation, byte for byte: no XCLIENT (not offered),
        # SIZE passed on (offered), the user normalised, Isthmus' Received:
        # first, the data dot-stuffed again with every bare LF and bare CR a
        # CR LF (so "LF . LF" became a line with one dot).
        expected_content = (b"Subject: stuffing\r\n\r\n.\r\n..two\r\n.x\r\nbare\r\nlf\r\n.\r\n"
                            b"end\r\nlone\r\ncr\r\n")
        head, received, data = re.match(
            rb"(.*?DATA\r\n)(Received: from mta\.example\.net \(127\.0\.0\.5\)\r\n\tby isthmus\.test "
            rb"\(Isthmus\) with LMTP id [a-z2-7]{12};\r\n\t[^\r]+\r\n)(.*)", plain_node.received[0],
            re.S).groups()
        self.assertEqual(head, b"LHLO isthmus.test\r\nMAIL FROM:<sender@example.net> SIZE=77\r\n"
                               b"RCPT TO:<u1@example.org>\r\nDATA\r\n")
        self.assertEqual(data, lmtp_stuff(expected_content))

    def test_eight_bit_content_needs_a_node_that_takes_it(self):
        # RFC 6152: 8-bit content must not reach a node that did not say
        # 8BITMIME, declared (BODY=8BITMIME) or found in the message.
        seven_bit = FakeLmtpNode(extensions=["PIPELINING", "ENHANCEDSTATUSCODES"])
        eight_bit = FakeLmtpNode()  # Dovecot's extensions, 8BITMIME included
        self.setup([seven_bit], [eight_bit])
        for body, content in (("BODY=8BITMIME", b"Subject: x\r\n\r\nplain\r\n"),
                              ("", "Subject: x\r\n\r\nJ\u00fcrgen\r\n".encode())):
            with self.subTest(body=body):
                replies = self.transaction(["u1@example.org", "v1@example.org"], content,
                                           mail=f"MAIL FROM:<{SENDER}> {body}".rstrip())
                self.assertEqual(replies, [b"554 5.6.3 <u1@example.org> 8-bit message, and the "
                                           b"mailbox node takes 7-bit only",
                                           b"250 2.0.0 <v1@example.org> fake saved"])
        self.assertFalse(any(b"DATA" in r for r in seven_bit.received))

    def test_xclient_carries_the_mtas_address_helo_and_session(self):
        node = FakeLmtpNode()  # Dovecot's extensions, XCLIENT included
        self.setup([node])
        c = self.client(source="127.0.0.5")
        self.assertEqual(c.command(f"MAIL FROM:<{SENDER}> BODY=8BITMIME"), SENDER_OK)
        self.assertEqual(c.command("RCPT TO:<u1@example.org>"), RCPT_OK)
        self.assertEqual(c.command("DATA"), GO_AHEAD)
        c.send(lmtp_stuff(b"Subject: x\r\n\r\nx\r\n"))
        self.assertEqual(c.reply(), b"250 2.0.0 <u1@example.org> fake saved")
        self.assertEqual(c.command("QUIT")[:3], b"221")
        sid = wait_for(lambda: session_of(self.ix, c.local_port), what="the end line")
        (txn,) = node.transactions
        m = re.fullmatch(r"XCLIENT ADDR=127\.0\.0\.5 PORT=(\d+) HELO=mta\.example\.net "
                         r"SESSION=(\S+) TTL=4", txn["xclient"])  # proxy_ttl 5, minus this hop
        self.assertIsNotNone(m, txn["xclient"])
        self.assertEqual((int(m.group(1)), m.group(2)), (c.local_port, sid))
        self.assertEqual(len(txn["lhlo"]), 2)  # again after XCLIENT's new greeting
        self.assertEqual(txn["lhlo"][0], "isthmus.test")
        self.assertEqual(txn["mail"], f"MAIL FROM:<{SENDER}> BODY=8BITMIME")
        self.assertTrue(node.received[0].startswith(
            b"LHLO isthmus.test\r\n" + txn["xclient"].encode() + b"\r\nLHLO "))


if __name__ == "__main__":
    unittest.main(verbosity=2)
