#!/usr/bin/python3
"""Check the lab's Dovecot side for real, without isthmus.

    /usr/bin/python3 tests/lab/selfcheck.py [--stress N] [--separate-index]
                                            [--no-tls | --tls-only]
                                            [--no-postfix | --postfix-only]
                                            [--no-directory | --directory-only]

Starts a Lab, then, directly against the four nodes: IMAP LOGIN and
AUTHENTICATE PLAIN on each; a message put into store a is visible through
a-left and a-right and not through b-left; master-user login; POP3; LMTP
delivery to bob via b-left read back via b-right; a bad password is refused;
concurrent deliveries and flag changes through both nodes of island a (the
shared maildir and index) stay consistent.

Then a private Postfix (postfix_checks()) delivering over LMTP straight to
a-left: one message to alice and carol arrives in store a (one LMTP
transaction, the body intact, status=sent per recipient); with a-left
stopped it is deferred and retried every second, survives a kill -9 of
Postfix, and after a-left is back and flush() is delivered exactly once; an
unknown recipient bounces and the bounce to an outside sender does not stay
queued; retarget() to a-right; swaks --protocol LMTP against a-left.

Then the TLS / proxy part (tls_checks()): the test PKI (a good cert by name
and by IP, an expired one, one from another CA, one for the wrong name, each
against Python's verifier); a Lab(tls=True, require_tls=["b-right"]):
STARTTLS on imap/pop3/lmtp and imaps/pop3s, verified against lab.ca; the
client address passed by a "proxy" with IMAP ID / POP3 XCLIENT showing in
node.logins(); b-right advertising LOGINDISABLED and refusing plaintext
before STARTTLS; haproxy sending PROXY v1/v2 headers and relaying IMAP.

Then the directories (directory_checks()): a slapd (StartTLS + ldaps) and a
MariaDB seeded from directory_data: every user's island/state/node login as
the service DN and as the isthmus SQL user; anonymous LDAP search refused,
userPassword unreadable, every user binds with "demo", a user sees only
their own entry; every stored hash ($6$, $2b$, $2y$, $y$, {SCHEME}-prefixed)
verifies "demo" with crypt(3); the injection-like names find nothing; SQL
grants (SELECT, UPDATE on account, no DELETE); modify()/set_account() seen
live; pause (TCP accepted, no answer), kill -9 and restart keep the data;
the cn=config LDIF of the schema loads.

Prints timings. Exits non-zero on the first failure; leaves no dovecot,
postfix, haproxy, slapd or mariadbd process behind.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lab import procs, tls  # noqa: E402
    from lab.cluster import Lab, PASSWORD  # noqa: E402
    from lab.dovecot import make_message, user_maildir, MASTER_PASSWORD, MASTER_SEPARATOR, MASTER_USER
    from lab.haproxy import Haproxy, is_listening  # noqa: E402
    from lab.postfix import Postfix, swaks_lmtp  # noqa: E402
    from lab import directory_data as dd  # noqa: E402
    from lab import mariadb as mariadblib  # noqa: E402
    from lab.mariadb import MariaDB, SqlError  # noqa: E402
    from lab.slapd import LdapError, Slapd, check_olc_schema  # noqa: E402
else:
    from . import procs, tls
    from .cluster import Lab, PASSWORD
    from .dovecot import make_message, user_maildir, MASTER_PASSWORD, MASTER_SEPARATOR, MASTER_USER
    from .haproxy import Haproxy, is_listening
    from .postfix import Postfix, swaks_lmtp
    from . import directory_data as dd
    from . import mariadb as mariadblib
    from .mariadb import MariaDB, SqlError
    from .slapd import LdapError, Slapd, check_olc_schema

HOST = "127.0.0.1"


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)
    print(f"  ok  {what}")


def imap_login(port: int, user: str, password: str, *, plain: bool = False) -> imaplib.IMAP4:
    c = imaplib.IMAP4(HOST, port, timeout=10)
    if plain:
        c.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode())
    else:
        c.login(user, password)
    return c


def subjects(port: int, user: str, password: str = PASSWORD) -> list[str]:
    c = imap_login(port, user, password)
    try:
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK", data
        typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])") \
            if int(data[0]) else ("OK", [])
        return [part[1].decode().strip().removeprefix("Subject: ")
                for part in data if isinstance(part, tuple)]
    finally:
        c.logout()


def timed(fn, n: int) -> float:
    """Mean seconds per call of FN over N calls."""
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def stress_shared_store(lab: Lab, rounds: int) -> None:
    """Deliver through a-left and a-right at once while IMAP sessions on both
    nodes flag and expunge: the shared maildir + indexes must stay consistent."""
    user = "carol@example.org"
    left, right = lab.node("a-left"), lab.node("a-right")
    errors: list[BaseException] = []

    def deliver(node, tag):
        try:
            with smtplib.LMTP(HOST, node.port("lmtp"), timeout=10) as l:
                for i in range(rounds):
                    l.sendmail("lab@example.org", [user],
                               make_message(f"stress {tag} {i}", "x" * 200, to=user))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def churn(node):
        try:
            c = imap_login(node.port("imap"), user, PASSWORD)
            c.select("INBOX")
            for _ in range(rounds):
                c.noop()
                typ, data = c.search(None, "ALL")
                ids = data[0].split()
                if ids:
                    c.store(ids[0], "+FLAGS", "\\Seen")
                if len(ids) > 5:
                    c.store(ids[1], "+FLAGS", "\\Deleted")
                    c.expunge()
            c.logout()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=deliver, args=(left, "L")),
               threading.Thread(target=deliver, args=(right, "R")),
               threading.Thread(target=churn, args=(left,)),
               threading.Thread(target=churn, args=(right,))]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    check(not errors, f"stress: no client errors ({errors[:1]})")

    def view(node):
        c = imap_login(node.port("imap"), user, PASSWORD)
        c.select("INBOX", readonly=True)
        typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
        c.logout()
        return sorted(d.decode() for d in data if d)

    v_left, v_right = view(left), view(right)
    check(v_left == v_right and len(v_left) > 0,
          f"stress: both nodes see the same {len(v_left)} messages/UIDs/flags "
          f"after {2 * rounds} deliveries in {elapsed:.1f}s")
    for node in (left, right):
        bad = [line for line in node.log_text().splitlines()
               if any(w in line for w in ("Error", "Panic", "Fatal", "corrupt"))]
        check(not bad, f"stress: no errors in {node.name}'s log {bad[:3]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stress", type=int, default=100, metavar="N",
                    help="deliveries per node in the shared-store stress (0: skip)")
    ap.add_argument("--separate-index", action="store_true",
                    help="give each node its own index dir")
    ap.add_argument("--no-tls", action="store_true", help="skip the TLS / proxy checks")
    ap.add_argument("--tls-only", action="store_true", help="only the TLS / proxy checks")
    ap.add_argument("--no-postfix", action="store_true", help="skip the Postfix checks")
    ap.add_argument("--postfix-only", action="store_true",
                    help="only the Postfix checks (in a lab of their own)")
    ap.add_argument("--no-directory", action="store_true",
                    help="skip the slapd and MariaDB checks")
    ap.add_argument("--directory-only", action="store_true",
                    help="only the slapd and MariaDB checks")
    args = ap.parse_args()

    if args.directory_only:
        t0 = time.perf_counter()
        directory_checks()
        print(f"all checks passed in {time.perf_counter() - t0:.1f} s")
        return 0

    if args.postfix_only:
        t0 = time.perf_counter()
        with Lab() as lab:
            postfix_checks(lab)
        left = lab_leftovers(lab)
        check(not left, f"no lab dovecot or postfix process left {left[:3]}")
        print(f"all checks passed in {time.perf_counter() - t0:.1f} s")
        return 0

    if args.tls_only:
        t0 = time.perf_counter()
        tls_checks()
        print(f"all checks passed in {time.perf_counter() - t0:.1f} s")
        return 0

    t0 = time.perf_counter()
    with Lab(separate_index=args.separate_index) as lab:
        t_start = time.perf_counter() - t0
        print(f"lab in {lab.root}: 4 nodes started in {t_start * 1000:.0f} ms")
        for name, node in lab.nodes.items():
            print(f"  {name}: {node.ports}")

        # 1. Every node: LOGIN and AUTHENTICATE PLAIN, every user.
        for name, node in lab.nodes.items():
            for user in lab.users:
                imap_login(node.port("imap"), user, PASSWORD).logout()
                imap_login(node.port("imap"), user, PASSWORD, plain=True).logout()
            check(True, f"{name}: LOGIN and AUTHENTICATE PLAIN for all 4 users")

        # 2. The shared store: a message put into store a shows on both
        #    nodes of island a, not on island b.
        lab.put_message("alice@example.org", make_message("only in store a", "hello"))
        check(subjects(lab.node("a-left").port("imap"), "alice@example.org") == ["only in store a"],
              "store a message visible through a-left")
        check(subjects(lab.node("a-right").port("imap"), "alice@example.org") == ["only in store a"],
              "store a message visible through a-right")
        check(subjects(lab.node("b-left").port("imap"), "alice@example.org") == [],
              "store a message not visible through b-left")

        # 3. Master user.
        c = imap_login(lab.node("a-right").port("imap"),
                       f"alice@example.org{MASTER_SEPARATOR}{MASTER_USER}", MASTER_PASSWORD)
        typ, data = c.select("INBOX", readonly=True)
        c.logout()
        check(typ == "OK" and data == [b"1"], "master login alice@example.org*master sees her INBOX")

        # 4. POP3.
        p = poplib.POP3(HOST, lab.node("a-left").port("pop3"), timeout=10)
        p.user("alice@example.org")
        p.pass_(PASSWORD)
        count, _size = p.stat()
        msg = b"\n".join(p.retr(1)[1])
        p.quit()
        check(count == 1 and b"only in store a" in msg, "POP3 on a-left: STAT 1, RETR the message")

        # 5. LMTP into b-left, read back through b-right.
        with smtplib.LMTP(HOST, lab.node("b-left").port("lmtp"), timeout=10) as l:
            refused = l.sendmail("lab@example.org", ["bob@example.org"],
                                 make_message("via lmtp", "delivered by b-left",
                                              to="bob@example.org"))
        check(refused == {}, "LMTP delivery to bob@example.org through b-left")
        check(subjects(lab.node("b-right").port("imap"), "bob@example.org") == ["via lmtp"],
              "bob's LMTP message visible through b-right")
        check(subjects(lab.node("a-left").port("imap"), "bob@example.org") == [],
              "bob's LMTP message not visible on island a")
        with smtplib.LMTP(HOST, lab.node("b-left").port("lmtp"), timeout=10) as l:
            l.ehlo("lab")
            l.mail("lab@example.org")
            code, _ = l.rcpt("nobody@example.org")
        check(code >= 500, f"LMTP RCPT to an unknown user refused ({code})")

        # 6. Wrong password: refused, and fast (no auth delay or penalty).
        t = time.perf_counter()
        try:
            imap_login(lab.node("a-left").port("imap"), "alice@example.org", "wrong")
            check(False, "wrong password refused")
        except imaplib.IMAP4.error:
            pass
        t_fail = time.perf_counter() - t
        check(t_fail < 2.0, f"wrong password refused in {t_fail * 1000:.0f} ms")

        # 7. Timings of logins.
        port = lab.node("a-left").port("imap")
        t_login = timed(lambda: imap_login(port, "carol@example.org", PASSWORD).logout(), 50)
        t_plain = timed(lambda: imap_login(port, "carol@example.org", PASSWORD,
                                           plain=True).logout(), 50)
        t_sasl_ir = timed(lambda: _raw_sasl_ir(port, "carol@example.org", PASSWORD), 50)
        t_pop = timed(lambda: _pop_login(lab.node("a-left").port("pop3")), 50)
        print(f"  timing (mean of 50, connect to logout): IMAP LOGIN {t_login * 1000:.1f} ms; "
              f"AUTHENTICATE PLAIN via imaplib {t_plain * 1000:.1f} ms, "
              f"with SASL-IR on a raw socket {t_sasl_ir * 1000:.1f} ms; "
              f"POP3 USER/PASS {t_pop * 1000:.1f} ms")

        # 8. Node lifecycle: pause, resume, kill -9, start again, restart.
        node = lab.node("b-right")
        port = node.port("imap")
        node.pause()
        check(not _greets(port, timeout=0.5), "paused node accepts TCP but sends no greeting")
        node.resume()
        check(_greets(port, timeout=5), "resumed node greets again")
        node.kill()
        check(not procs.can_connect(HOST, port) and not node.proc.members(),
              "killed node: port closed, no process of it left")
        t = time.perf_counter()
        node.start()
        t_restart = time.perf_counter() - t
        check(subjects(port, "bob@example.org") == ["via lmtp"],
              f"node started again after kill -9 in {t_restart * 1000:.0f} ms, mail still there")
        t = time.perf_counter()
        node.restart()
        check(subjects(port, "bob@example.org") == ["via lmtp"],
              f"restart() in {(time.perf_counter() - t) * 1000:.0f} ms, mail still there")

        if args.stress:
            stress_shared_store(lab, args.stress)

        if not args.no_postfix:
            postfix_checks(lab)

        root = lab.root
        t_close = time.perf_counter()
    t_close = time.perf_counter() - t_close
    t_total = time.perf_counter() - t0
    print(f"lab closed in {t_close * 1000:.0f} ms")

    left = lab_leftovers(lab)
    check(not left, f"no lab dovecot process left {left[:3]}")
    check(not os.path.exists(root) or os.environ.get("ISTHMUS_KEEP_LAB") == "1",
          "temp dir removed")
    if not args.no_tls:
        tls_checks()
        t_total = time.perf_counter() - t0
    if not args.no_directory:
        directory_checks()
        t_total = time.perf_counter() - t0
    print(f"all checks passed in {t_total:.1f} s")
    return 0


def _greets(port: int, timeout: float) -> bool:
    """True if a connection to PORT gets an IMAP greeting within TIMEOUT."""
    import socket
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(timeout)
            ok = s.makefile("rb").readline().startswith(b"* OK")
            s.sendall(b"a LOGOUT\r\n")
            return ok
    except OSError:
        return False


def _raw_sasl_ir(port: int, user: str, password: str) -> None:
    """AUTHENTICATE PLAIN with the initial response on the command line
    (RFC 4959), over a plain socket. imaplib has no SASL-IR and sends the
    continuation and its CRLF in two writes, so Nagle + delayed ACK add
    ~40 ms to every imaplib AUTHENTICATE: that is the client, not Dovecot."""
    import base64
    import socket
    token = base64.b64encode(f"\0{user}\0{password}".encode())
    with socket.create_connection((HOST, port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a AUTHENTICATE PLAIN " + token + b"\r\n")
        line = f.readline()
        while not line.startswith(b"a "):
            line = f.readline()
        assert line.startswith(b"a OK"), line
        s.sendall(b"b LOGOUT\r\n")
        f.read()


def _pop_login(port: int) -> None:
    p = poplib.POP3(HOST, port, timeout=10)
    p.user("carol@example.org")
    p.pass_(PASSWORD)
    p.quit()


# --------------------------------------------------------------------------
# Postfix delivering over LMTP (straight to a Dovecot node here; to isthmus'
# LMTP listener in the system tests)


def _stored_copies(lab: Lab, user: str, msgid: str) -> list[bytes]:
    """The messages in USER's INBOX (new/ and cur/) in store a that carry
    Message-ID MSGID."""
    maildir = user_maildir(lab.store("a"), user)
    found = []
    for sub in ("new", "cur"):
        d = os.path.join(maildir, sub)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
            if f"Message-ID: {msgid}".encode() in data:
                found.append(data)
    return found


def _msgid(raw: bytes) -> str:
    for line in raw.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise ValueError("no Message-ID")


def postfix_checks(lab: Lab) -> None:
    print("Postfix checks (lmtp_target = a-left's LMTP port)")
    left, right = lab.node("a-left"), lab.node("a-right")
    users = ["alice@example.org", "carol@example.org"]
    sender = "sender@example.net"
    pf = Postfix(os.path.join(lab.root, "postfix"), procs.free_port(),
                 (left.host, left.port("lmtp")))
    t = time.perf_counter()
    pf.prepare()
    out = pf.check()
    check(out == "", f"postfix -c DIR check passes ({(time.perf_counter() - t) * 1000:.0f} ms)")
    t = time.perf_counter()
    pf.start()
    t_start = time.perf_counter() - t
    check(pf.running(), f"postfix started (master -d under procs.Proc) in "
          f"{t_start * 1000:.0f} ms; smtpd 127.0.0.1:{pf.smtp_port}")
    try:
        _postfix_delivery_checks(lab, pf, left, right, users, sender)
    finally:
        t = time.perf_counter()
        status = pf.stop()
        t_stop = time.perf_counter() - t
    check(not pf.proc.members() and not procs.can_connect(HOST, pf.smtp_port),
          f"postfix stopped in {t_stop * 1000:.0f} ms (status {status}), no process left")


def _postfix_delivery_checks(lab, pf, left, right, users, sender) -> None:
    # 1. One message, two recipients on island a: one LMTP transaction.
    raw = make_message("via postfix", "hello through Postfix\nsecond line\n", to=users[0])
    msgid = _msgid(raw)
    t = time.perf_counter()
    r = pf.send(sender, users, raw)
    recs = pf.wait_deliveries(r.queue_id, 2)
    t_deliver = time.perf_counter() - t
    sent = [x for x in recs if x["status"] == "sent"]
    check(sorted(x["to"] for x in sent) == users and len(recs) == 2,
          f"{r.queue_id}: status=sent once for each of {users} in {t_deliver * 1000:.0f} ms")
    check(all(x["relay"] == f"{left.host}[{left.host}]:{left.port('lmtp')}" and
              x["reply"].startswith("250 2.0.0 <") for x in sent),
          f"relay a-left, remote reply: {sent[0]['reply']}")
    # Dovecot names each recipient of a transaction <txid>, <txid>:R2, ...
    txids = {x["reply"].split()[3].split(":R")[0] for x in sent}
    pids = {x["pid"] for x in sent}
    saved = [line for line in left.log_text().splitlines()
             if f"msgid={msgid}: saved mail to INBOX" in line]
    check(len(txids) == 1 and len(pids) == 1 and len(saved) == 2
          and any(f"<{txids.copy().pop()}:R2>" in line for line in saved),
          f"one LMTP transaction for both recipients (Dovecot transaction {txids.pop()}, "
          f"second recipient :R2)")
    for user in users:
        copies = _stored_copies(lab, user, msgid)
        check(len(copies) == 1, f"{user}: exactly one copy in store a")
        stored = copies[0]
        head = stored[:len(stored) - len(raw.replace(b"\r\n", b"\n"))]
        check(stored.endswith(raw.replace(b"\r\n", b"\n"))
              and head.startswith(f"Return-Path: <{sender}>".encode())
              and b"with LMTP" in head and b"(Postfix) with ESMTP id " + r.queue_id.encode() in head,
              f"{user}: the sent message byte for byte after {len(head)} bytes of prepended "
              f"headers (Return-Path, Received by LMTP, Received by Postfix)")

    # 2. a-left down: deferred, retried every second, survives kill -9 of
    #    Postfix; a-left back + flush(): delivered exactly once.
    left.stop()
    raw = make_message("deferred then sent", "retry me\n", to=users[0])
    msgid = _msgid(raw)
    r = pf.send(sender, users, raw)
    recs = pf.wait_deliveries(r.queue_id, 2, statuses=("deferred",))
    check(all(x["status"] == "deferred" and x["dsn"] == "4.4.1" and x["relay"] == "none"
              and "Connection refused" in x["reply"] for x in recs),
          f"a-left stopped: status=deferred for both ({recs[0]['reply']})")
    q = pf.queue()
    check(len(q) == 1 and q[0]["queue_id"] == r.queue_id and q[0]["queue_name"] == "deferred"
          and sorted(x["address"] for x in q[0]["recipients"]) == users
          and all("Connection refused" in x.get("delay_reason", "") for x in q[0]["recipients"]),
          "postqueue -j: the message in the deferred queue, both recipients with their reason")
    time.sleep(3.2)
    attempts = len([x for x in pf.deliveries(r.queue_id) if x["status"] == "deferred"]) // 2
    check(attempts >= 3, f"retried without flush: {attempts} attempts in ~3 s (retry={pf.retry}s)")
    t = time.perf_counter()
    pf.kill()
    pf.start()
    check(pf.queue()[0]["queue_id"] == r.queue_id,
          f"postfix kill -9 + start ({(time.perf_counter() - t) * 1000:.0f} ms): "
          "the message is still queued")
    left.start()
    t = time.perf_counter()
    pf.flush()
    recs = pf.wait_deliveries(r.queue_id, 2)
    t_flush = time.perf_counter() - t
    pf.wait_queue_empty(10)
    sent = [x for x in recs if x["status"] == "sent"]
    check(sorted(x["to"] for x in sent) == users,
          f"a-left back, flush(): status=sent exactly once per recipient in "
          f"{t_flush * 1000:.0f} ms; queue empty")
    time.sleep(1.5)  # a duplicate would be a retry of a lost 250: > retry
    check(len([x for x in pf.deliveries(r.queue_id) if x["status"] == "sent"]) == 2
          and all(len(_stored_copies(lab, u, msgid)) == 1 for u in users),
          "no second delivery: one copy per user in store a")

    # 3. Without flush: how fast does the queue manager retry by itself?
    left.stop()
    raw = make_message("retried alone", "x\n", to=users[0])
    r = pf.send(sender, users[:1], raw)
    pf.wait_deliveries(r.queue_id, 1, statuses=("deferred",))
    left.start()
    t = time.perf_counter()
    pf.wait_deliveries(r.queue_id, 1)
    check(True, f"without flush, delivered {(time.perf_counter() - t) * 1000:.0f} ms after "
          "a-left was back")

    # 4. Unknown recipient: 550 from Dovecot, bounced; the bounce to the
    #    outside sender fails at once (default_transport = error).
    raw = make_message("one unknown", "x\n", to=users[0])
    r = pf.send(sender, ["nobody@example.org", users[0]], raw)
    recs = pf.wait_deliveries(r.queue_id, 2)
    by_to = {x["to"]: x for x in recs}
    check(by_to["nobody@example.org"]["status"] == "bounced"
          and "550 5.1.1" in by_to["nobody@example.org"]["reply"]
          and by_to[users[0]]["status"] == "sent",
          f"unknown recipient bounced ({by_to['nobody@example.org']['reply'][:70]}...), "
          "the other sent")
    pf.wait_queue_empty(10)
    check(True, "the bounce to the outside sender did not stay in the queue")

    # 5. retarget(): the same instance now delivers to a-right.
    t = time.perf_counter()
    pf.retarget(right.host, right.port("lmtp"))
    t_reload = time.perf_counter() - t
    raw = make_message("via a-right", "x\n", to=users[1])
    r = pf.send(sender, users[1:], raw)
    recs = pf.wait_deliveries(r.queue_id, 1)
    check(recs[-1]["relay"].endswith(f":{right.port('lmtp')}") and recs[-1]["status"] == "sent",
          f"retarget() to a-right (reload {t_reload * 1000:.0f} ms): relay={recs[-1]['relay']}")
    pf.retarget(left.host, left.port("lmtp"))

    # 6. swaks --protocol LMTP (the command the demo documents).
    t = time.perf_counter()
    p = swaks_lmtp(left.host, left.port("lmtp"), users[0], header_subject="via swaks")
    t_swaks = time.perf_counter() - t
    check(p.returncode == 0 and f"<-  250 2.0.0 <{users[0]}>" in p.stdout,
          f"swaks --protocol LMTP --server {left.host}:{left.port('lmtp')} --to {users[0]}: "
          f"250 Saved ({t_swaks * 1000:.0f} ms)")


# --------------------------------------------------------------------------
# TLS, client-address forwarding, required TLS, haproxy


class Conv:
    """A line-based conversation over a raw socket, upgradable to TLS."""

    def __init__(self, host: str, port: int, *, tls_ctx: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        if tls_ctx is not None:
            self.starttls(tls_ctx, server_hostname)

    def starttls(self, ctx: ssl.SSLContext, server_hostname: str | None) -> None:
        assert not self.buf, f"plaintext left over before TLS: {self.buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; unterminated: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def imap(self, tag: str, text: str) -> list[str]:
        """IMAP command; the lines up to the tagged one (last)."""
        self.send(f"{tag} {text}")
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(tag + " "):
                return lines

    def pop(self, text: str, multiline: bool = False) -> list[str]:
        self.send(text)
        lines = [self.line()]
        if multiline and lines[0].startswith("+OK"):
            while lines[-1] != ".":
                lines.append(self.line())
        return lines

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _probe_leaf(server_leaf, client_ctx: ssl.SSLContext, name: str) -> str:
    """Handshake with a Python TLS server presenting SERVER_LEAF; '' if the
    client accepted the certificate for NAME, else the verify error."""
    srv = socket.create_server((HOST, 0))
    port = srv.getsockname()[1]
    sctx = server_leaf.server_context()

    def serve():
        c, _ = srv.accept()
        try:
            with sctx.wrap_socket(c, server_side=True) as s:
                s.sendall(b"x")
        except (ssl.SSLError, OSError):
            c.close()

    th = threading.Thread(target=serve)
    th.start()
    try:
        with socket.create_connection((HOST, port), timeout=5) as c:
            with client_ctx.wrap_socket(c, server_hostname=name) as s:
                s.recv(1)
        return ""
    except ssl.SSLCertVerificationError as e:
        return e.verify_message
    finally:
        th.join()
        srv.close()


def pki_checks() -> None:
    d = tempfile.mkdtemp(prefix="isthmus-pki-")
    try:
        t = time.perf_counter()
        ca = tls.make_ca(d)
        good = ca.issue("good", dns=["good.lab.test"], ips=["127.0.0.1"])
        t_good = time.perf_counter() - t
        wrong_name = ca.issue("wrongname", dns=["other.lab.test"])
        t = time.perf_counter()
        expired = ca.issue("old", dns=["good.lab.test"], ips=["127.0.0.1"], expired=True)
        t_expired = time.perf_counter() - t
        stranger = tls.make_ca(d, "Other CA").issue("stranger", dns=["good.lab.test"],
                                                     ips=["127.0.0.1"])
        ctx = ca.context()
        check(_probe_leaf(good, ctx, "good.lab.test") == "" and
              _probe_leaf(good, ctx, "127.0.0.1") == "",
              f"pki: CA + leaf in {t_good * 1000:.0f} ms; leaf verifies by DNS name and by IP")
        err = _probe_leaf(expired, ctx, "good.lab.test")
        check("expired" in err, f"pki: expired leaf ({t_expired * 1000:.0f} ms) refused: {err}")
        err = _probe_leaf(stranger, ctx, "good.lab.test")
        check("issuer" in err, f"pki: leaf from another CA refused: {err}")
        err = _probe_leaf(wrong_name, ctx, "good.lab.test")
        check("mismatch" in err.lower(), f"pki: leaf for another name refused: {err}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


ID_FIELDS = ('("x-originating-ip" "10.1.2.3" "x-originating-port" "5555" '
             '"x-connected-ip" "10.0.0.1" "x-connected-port" "143" '
             '"x-session-id" "lab-sess-1" "x-proxy-ttl" "4")')


def last_login(node, **match) -> dict:
    """The newest successful login on NODE with every MATCH field equal."""
    for _ in range(50):  # the log line may lag the client's OK a little
        for e in reversed(node.logins()):
            if e["ok"] and all(e.get(k) == v for k, v in match.items()):
                return e
        time.sleep(0.02)
    raise AssertionError(f"no login matching {match} in {node.name}'s log: "
                         f"{node.logins()[-3:]}")


def tls_lab_checks(lab: Lab) -> None:
    ctx = lab.ca.context()
    user = "alice@example.org"
    a = lab.node("a-left")
    name = lab.tls_name("a-left")

    # IMAP STARTTLS, certificate checked by name, then ID + LOGIN.
    c = Conv(a.host, a.port("imap"))
    greeting = c.line()
    check("STARTTLS" in greeting and "LOGINDISABLED" not in greeting,
          "tls node a-left: greeting offers STARTTLS, no LOGINDISABLED")
    assert c.imap("s", "STARTTLS")[-1].startswith("s OK")
    c.starttls(ctx, name)
    caps = c.imap("c", "CAPABILITY")
    check("STARTTLS" not in caps[0] and c.sock.version() in ("TLSv1.2", "TLSv1.3"),
          f"a-left: STARTTLS, {c.sock.version()}, cert verified against lab.ca as {name}")
    assert c.imap("i", "ID " + ID_FIELDS)[-1].startswith("i OK")
    assert c.imap("l", f"LOGIN {user} {PASSWORD}")[-1].startswith("l OK")
    c.imap("o", "LOGOUT")
    c.close()
    e = last_login(a, session="lab-sess-1")
    check(e["rip"] == "10.1.2.3" and e["rport"] == "5555" and e["lip"] == "10.0.0.1"
          and e["lport"] == "143" and e["real_rip"] == "127.0.0.1" and e["tls"],
          f"a-left log: ID over STARTTLS -> rip={e['rip']} rport={e['rport']} "
          f"lip={e['lip']} lport={e['lport']} real_rip={e['real_rip']} TLS")

    # imaps
    c = Conv(a.host, a.port("imaps"), tls_ctx=ctx, server_hostname=name)
    c.line()
    assert c.imap("l", f"LOGIN {user} {PASSWORD}")[-1].startswith("l OK")
    c.imap("o", "LOGOUT")
    c.close()
    check(last_login(a, lport=str(a.port("imaps")))["tls"], "a-left: imaps login, logged as TLS")

    # POP3 STLS + XCLIENT
    c = Conv(a.host, a.port("pop3"))
    greeting = c.line()
    check("[XCLIENT]" in greeting, f"a-left pop3 greeting advertises XCLIENT: {greeting}")
    assert c.pop("STLS")[0].startswith("+OK")
    c.starttls(ctx, name)
    r = c.pop("XCLIENT ADDR=10.1.2.4 PORT=5556 SESSION=lab-pop-1 TTL=4")
    assert r[0].startswith("+OK"), r
    assert c.pop(f"USER {user}")[0].startswith("+OK")
    assert c.pop(f"PASS {PASSWORD}")[0].startswith("+OK")
    c.pop("QUIT")
    c.close()
    e = last_login(a, session="lab-pop-1")
    check(e["rip"] == "10.1.2.4" and e["rport"] == "5556" and e["tls"],
          f"a-left log: POP3 XCLIENT over STLS -> rip={e['rip']} rport={e['rport']} TLS")

    # pop3s
    c = Conv(a.host, a.port("pop3s"), tls_ctx=ctx, server_hostname=name)
    c.line()
    c.pop(f"USER {user}")
    assert c.pop(f"PASS {PASSWORD}")[0].startswith("+OK")
    c.pop("QUIT")
    c.close()
    check(last_login(a, lport=str(a.port("pop3s")))["tls"], "a-left: pop3s login, logged as TLS")

    # LMTP STARTTLS (smtplib checks the cert against 127.0.0.1: IP SAN)
    with smtplib.LMTP(a.host, a.port("lmtp"), timeout=10) as l:
        l.ehlo("lab")
        has = l.has_extn("starttls")
        l.starttls(context=ctx)
        refused = l.sendmail("lab@example.org", [user], make_message("over tls", "x", to=user))
    check(has and refused == {}, "a-left: LMTP STARTTLS (cert verified by IP) and delivery")

    # A client trusting another CA refuses the node.
    other = tls.make_ca(os.path.join(lab.root, "pki-other"), "Other CA")
    try:
        Conv(a.host, a.port("imaps"), tls_ctx=other.context(), server_hostname=name)
        check(False, "a client trusting another CA refuses a-left")
    except ssl.SSLCertVerificationError as e:
        check(True, f"a client trusting another CA refuses a-left: {e.verify_message}")

    # The node requiring TLS.
    b = lab.node("b-right")
    name = lab.tls_name("b-right")
    c = Conv(b.host, b.port("imap"))
    greeting = c.line()
    check("LOGINDISABLED" in greeting and "STARTTLS" in greeting,
          f"require_tls node b-right on {b.host}: greeting has STARTTLS LOGINDISABLED")
    r = c.imap("l", f"LOGIN {user} {PASSWORD}")
    check("[PRIVACYREQUIRED]" in r[-1], f"b-right: LOGIN before STARTTLS refused: {r[-1]}")
    # ID from an untrusted peer is accepted and ignored.
    assert c.imap("i", 'ID ("x-originating-ip" "10.9.9.9")')[-1].startswith("i OK")
    assert c.imap("s", "STARTTLS")[-1].startswith("s OK")
    c.starttls(ctx, name)
    caps = c.imap("c", "CAPABILITY")[0]
    assert "LOGINDISABLED" not in caps, caps
    assert c.imap("l", f"LOGIN {user} {PASSWORD}")[-1].startswith("l OK")
    c.imap("o", "LOGOUT")
    c.close()
    e = last_login(b)
    check(e["tls"] and e["rip"] == "127.0.0.1",
          "b-right: LOGIN after STARTTLS works; ID from the untrusted peer ignored "
          f"(rip={e['rip']})")
    c = Conv(b.host, b.port("pop3"))
    greeting = c.line()
    c.pop(f"USER {user}")
    r = c.pop(f"PASS {PASSWORD}")
    c.close()
    check("[XCLIENT]" not in greeting and r[0].startswith("-ERR"),
          f"b-right: POP3 USER/PASS before STLS refused: {r[0]}")
    for _ in range(50):  # the log line may lag the reply a little
        fails = [x for x in b.logins() if not x["ok"] and "Plaintext" in x["event"]]
        if len(fails) >= 2:
            break
        time.sleep(0.02)
    check(len(fails) >= 2, f"b-right log: {len(fails)} x '{fails[0]['event']}'")

    # Timings: plain LOGIN vs STARTTLS + LOGIN vs imaps + LOGIN (a-left).
    def plain_login():
        c = Conv(a.host, a.port("imap"))
        c.line()
        c.imap("l", f"LOGIN {user} {PASSWORD}")
        c.imap("o", "LOGOUT")
        c.close()

    def starttls_login():
        c = Conv(a.host, a.port("imap"))
        c.line()
        c.imap("s", "STARTTLS")
        c.starttls(ctx, lab.tls_name("a-left"))
        c.imap("l", f"LOGIN {user} {PASSWORD}")
        c.imap("o", "LOGOUT")
        c.close()

    def imaps_login():
        c = Conv(a.host, a.port("imaps"), tls_ctx=ctx, server_hostname=lab.tls_name("a-left"))
        c.line()
        c.imap("l", f"LOGIN {user} {PASSWORD}")
        c.imap("o", "LOGOUT")
        c.close()

    def handshake_only():
        with socket.create_connection((a.host, a.port("imaps")), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=lab.tls_name("a-left")):
                pass

    print(f"  timing (mean of 30, a-left): plain LOGIN {timed(plain_login, 30) * 1000:.1f} ms; "
          f"STARTTLS+LOGIN {timed(starttls_login, 30) * 1000:.1f} ms; "
          f"imaps+LOGIN {timed(imaps_login, 30) * 1000:.1f} ms; "
          f"imaps handshake alone {timed(handshake_only, 30) * 1000:.1f} ms")


def _first_bytes_via_haproxy(root: str, send_proxy) -> tuple[bytes, tuple, int]:
    """(bytes the backend got, client's (ip, port), haproxy's port)."""
    srv = socket.create_server((HOST, 0))
    got: list[bytes] = []

    def serve():
        conn, _ = srv.accept()
        conn.settimeout(5)
        data = b""
        while not data.endswith(b"HELLO\r\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        got.append(data)
        conn.close()

    th = threading.Thread(target=serve)
    th.start()
    port = procs.free_port()
    hp = Haproxy(os.path.join(root, f"haproxy-{send_proxy}"), port,
                 srv.getsockname()[1], send_proxy=send_proxy).start()
    try:
        with socket.create_connection((HOST, port), timeout=5) as c:
            me = c.getsockname()
            c.sendall(b"HELLO\r\n")
            th.join(5)
    finally:
        hp.stop()
        srv.close()
    check(not is_listening(HOST, port) and not hp.proc.members(),
          f"haproxy ({send_proxy}) stopped, nothing left")
    return got[0], me, port


def haproxy_checks(lab: Lab) -> None:
    t = time.perf_counter()
    data, me, port = _first_bytes_via_haproxy(lab.root, "v1")
    t_hp = time.perf_counter() - t
    want = f"PROXY TCP4 {me[0]} {HOST} {me[1]} {port}\r\n".encode()
    check(data == want + b"HELLO\r\n", f"haproxy send-proxy: {want!r} then the data "
          f"(start+connect+stop {t_hp * 1000:.0f} ms)")

    data, me, port = _first_bytes_via_haproxy(lab.root, "v2")
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    ver_cmd, fam, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    src, dst, sport, dport = struct.unpack("!4s4sHH", data[16:28])
    check(data.startswith(sig) and ver_cmd == 0x21 and fam == 0x11 and length == 12
          and socket.inet_ntoa(src) == me[0] and sport == me[1] and dport == port
          and data[16 + length:] == b"HELLO\r\n",
          f"haproxy send-proxy-v2: signature, PROXY, TCP4, {socket.inet_ntoa(src)}:{sport} -> "
          f"{socket.inet_ntoa(dst)}:{dport}, then the data")

    # Plain relay in front of a real node.
    node = lab.node("a-right")
    port = procs.free_port()
    with Haproxy(os.path.join(lab.root, "haproxy-imap"), port, node.port("imap"),
                 send_proxy=None):
        c = Conv(HOST, port)
        greeting = c.line()
        ok = c.imap("l", f"LOGIN carol@example.org {PASSWORD}")[-1]
        c.imap("o", "LOGOUT")
        c.close()
    check(greeting.startswith("* OK") and ok.startswith("l OK"),
          "haproxy (no PROXY header) relays an IMAP login to a-right")


def tls_checks() -> None:
    print("TLS / proxy checks")
    pki_checks()
    t0 = time.perf_counter()
    with Lab(tls=True, require_tls=["b-right"]) as lab:
        print(f"lab(tls=True) in {lab.root}: CA + 5 certs + 4 nodes in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms; ca {lab.ca_path}")
        for name, node in lab.nodes.items():
            print(f"  {name}: {node.host} {node.ports}")
        tls_lab_checks(lab)
        haproxy_checks(lab)
    left = lab_leftovers(lab)
    check(not left, f"no lab dovecot or haproxy process left {left[:3]}")


# --------------------------------------------------------------------------
# slapd and MariaDB (the LDAP and SQL directories)


def _timed_call(fn):
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def _times_out(fn, seconds: float) -> bool:
    """True if FN (a client command run with timeout=SECONDS) timed out."""
    try:
        fn(seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def _scheme_label(stored: str) -> str:
    """'{SHA512-CRYPT}$6$', '$2b$', '{SSHA}': the scheme part of a hash."""
    if stored.startswith("{") and "$" not in stored:
        return stored[:stored.index("}") + 1]
    bare = dd.strip_scheme(stored)
    return stored[:len(stored) - len(bare)] + "$" + bare.split("$")[1] + "$"


def crypt_scheme_checks() -> None:
    """Which crypt(3) schemes this libxcrypt makes and verifies."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt as pycrypt  # deprecated, gone in 3.13
        except ImportError:
            pycrypt = None
    supported = []
    for prefix in ("$6$", "$5$", "$2b$", "$2y$", "$2a$", "$y$", "$gy$", "$7$", "$1$"):
        try:
            h = dd.hash_password(dd.PASSWORD, prefix)
        except ValueError:
            continue
        if dd.verify(dd.PASSWORD, h) and not dd.verify("wrong", h):
            supported.append(prefix)
    check({"$6$", "$2b$", "$2y$", "$y$"} <= set(supported),
          f"libxcrypt makes and verifies {' '.join(supported)}")
    for name, stored in dd.HASHES.items():
        bare = dd.strip_scheme(stored)
        ok = dd.verify(dd.PASSWORD, stored) and not dd.verify("Demo", stored)
        if pycrypt is not None:
            ok = ok and pycrypt.crypt(dd.PASSWORD, bare) == bare
        check(ok, f"HASHES[{name!r}] verifies 'demo' (ctypes crypt(3)"
                  f"{' and Python crypt' if pycrypt else ''}), not 'Demo'")
    _, t6 = _timed_call(lambda: dd.verify(dd.PASSWORD, dd.SHA512_CRYPT))
    _, t2 = _timed_call(lambda: dd.verify(dd.PASSWORD, dd.BCRYPT_2Y))
    _, ty = _timed_call(lambda: dd.verify(dd.PASSWORD, dd.YESCRYPT))
    print(f"  timing: one verify of $6$ (5000 rounds) {t6 * 1000:.1f} ms, "
          f"$2y$05 {t2 * 1000:.1f} ms, $y$j9T {ty * 1000:.1f} ms")


def slapd_checks(root: str) -> None:
    ca = tls.make_ca(os.path.join(root, "pki"))
    leaf = ca.issue("ldap", dns=["ldap.lab.test"], ips=["127.0.0.1"])
    ldap = Slapd(os.path.join(root, "slapd"), procs.free_port(), tls=leaf,
                 ldaps_port=procs.free_port())
    _, t_start = _timed_call(ldap.start)
    print(f"  slapd {ldap.url} {ldap.ldaps_url}: slapadd {ldap.load_seconds * 1000:.0f} ms, "
          f"start {ldap.start_seconds * 1000:.0f} ms (total with config "
          f"{t_start * 1000:.0f} ms)")
    try:
        _slapd_live_checks(ldap, ca)
    finally:
        _, t_stop = _timed_call(ldap.stop)
    check(not ldap.proc.members() and not procs.can_connect(HOST, ldap.port),
          f"slapd stopped in {t_stop * 1000:.0f} ms, nothing left")
    schemas = check_olc_schema(os.path.join(root, "olc"))
    check("cn={3}isthmus.ldif" in schemas,
          "deploy/ldap/isthmus.ldif loads into a cn=config with slapadd -n0")


def _slapd_live_checks(ldap: Slapd, ca) -> None:
    def lookup(login: str, **kw):
        return ldap.search(f"(&(objectClass=mailIslandUser)(uid={dd.ldap_filter_escape(login)}))",
                           "uid", "mail", "mailIsland", "mailAccountState", "mailNodeLogin",
                           "userPassword", **kw)

    for u in dd.USERS:
        found = lookup(u.login)
        e = found[0] if len(found) == 1 else {}
        ok = (e.get("dn") == [u.dn] and e.get("mailIsland") == [u.island]
              and e.get("mailAccountState") == [u.state]
              and e.get("mailNodeLogin", [None]) == [u.node_login]
              and "userPassword" not in e)
        check(ok, f"ldap: service DN finds {u.login}: island {u.island}, {u.state}"
                  f"{', node login ' + u.node_login if u.node_login else ''}; "
                  f"userPassword not readable")
    found = [login for login in dd.ABSENT_LOOKUPS if "\x00" not in login and lookup(login)]
    check(not found, f"ldap: the {len(dd.ABSENT_LOOKUPS) - 1} injection-like names "
                     f"(RFC 4515-escaped) find nothing {found}")
    try:
        ldap.search("(uid=*)", "uid", who="anonymous")
        check(False, "ldap: anonymous search refused")
    except LdapError as e:
        check(e.code == 32, f"ldap: anonymous search refused: {e.output.strip()}")
    root_dse = ldap.search("(objectClass=*)", "supportedExtension", base="", scope="base",
                           who="anonymous")
    check("1.3.6.1.4.1.1466.20037" in root_dse[0].get("supportedExtension", []),
          "ldap: root DSE readable anonymously, advertises StartTLS")

    t_binds = {}
    for u in dd.USERS:
        who, t = _timed_call(lambda: ldap.whoami(u.login))
        t_binds[u.login] = t
        check(who == f"dn:{u.dn}", f"ldap: {u.login} binds with 'demo' "
                                   f"({_scheme_label(u.ldap_password)}, {t * 1000:.0f} ms incl. fork)")
    try:
        ldap.whoami((dd.BY_LOGIN["alice@example.org"].dn, "wrong"))
        check(False, "ldap: wrong password refused")
    except LdapError as e:
        check(e.code == 49, "ldap: wrong password refused: invalidCredentials (49)")
    own = ldap.search("(objectClass=*)", "mailIsland", base=dd.BY_LOGIN["carol@example.org"].dn,
                      scope="base", who="carol@example.org")
    check(own and own[0].get("mailIsland") == ["a"], "ldap: carol reads her own entry")
    try:
        other = lookup("alice@example.org", who="carol@example.org")
    except LdapError as e:
        other = [] if e.code == 32 else [e]
    check(other == [], "ldap: carol cannot read alice's entry")

    # TLS: StartTLS on the ldap port, implicit TLS on ldaps, a foreign CA refused.
    check(lookup("bob@example.org", starttls=True)[0]["mailIsland"] == ["b"],
          "ldap: StartTLS (-ZZ, CA verified) search")
    check(lookup("bob@example.org", url=ldap.ldaps_url)[0]["mailIsland"] == ["b"],
          "ldap: ldaps:// search (CA verified)")
    bad_conf = os.path.join(ldap.run_dir, "other-ca.conf")
    other_ca = tls.make_ca(os.path.join(ldap.run_dir, "other-ca"), "Other CA")
    with open(bad_conf, "w") as f:
        f.write(f"TLS_CACERT {other_ca.cert_path}\nTLS_REQCERT demand\n")
    env = dict(ldap.client_env(), LDAPCONF=bad_conf, LDAPRC=bad_conf)
    r = subprocess.run(["ldapwhoami", "-x", "-H", ldap.ldaps_url, "-o", "nettimeout=5"],
                       env=env, capture_output=True, text=True, timeout=10)
    check(r.returncode != 0, "ldap: ldaps with a certificate from an untrusted CA refused")
    log = ldap.log_text()
    check("tls_proto=TLS1.3" in log or "tls_proto=TLS1.2" in log,
          "ldap: slapd log shows TLS established (GnuTLS)")

    # Live changes.
    bob = dd.BY_LOGIN["bob@example.org"]
    ldap.modify(bob.dn, "mailIsland", "a")
    ldap.modify(bob.dn, "mailAccountState", "moving")
    e = lookup(bob.login)[0]
    check(e["mailIsland"] == ["a"] and e["mailAccountState"] == ["moving"],
          "ldap: modify() moves bob to island a, state moving, seen at once")

    # Faults: pause (TCP accepted, nothing answered), kill -9, start again.
    ldap.pause()
    check(procs.can_connect(HOST, ldap.port), "ldap: paused slapd accepts TCP")
    check(_times_out(lambda t: ldap.search("(uid=bob@example.org)", timeout=t), 1.0),
          "ldap: paused slapd never answers the bind (client timed out after 1 s)")
    ldap.resume()
    check(lookup(bob.login)[0]["mailIsland"] == ["a"], "ldap: resumed slapd answers")
    ldap.kill()
    check(not procs.can_connect(HOST, ldap.port) and not ldap.proc.members(),
          "ldap: killed slapd: port closed, no process left")
    _, t = _timed_call(ldap.start)
    check(lookup(bob.login)[0]["mailIsland"] == ["a"],
          f"ldap: started again after kill -9 in {t * 1000:.0f} ms, the change kept")
    ldap.modify(bob.dn, "mailIsland", "b")
    ldap.modify(bob.dn, "mailAccountState", "active")
    _, t = _timed_call(ldap.restart)
    check(lookup(bob.login)[0]["mailIsland"] == ["b"],
          f"ldap: restart() in {t * 1000:.0f} ms, data kept")
    slow = {k: v for k, v in t_binds.items() if v > 0.08}
    print(f"  timing: ldapwhoami as a user ~{min(t_binds.values()) * 1000:.0f} ms "
          f"(mostly fork/exec); slower binds (yescrypt j9T): "
          + ", ".join(f"{k.split('@')[0][:12]} {v * 1000:.0f} ms" for k, v in slow.items()))


def mariadb_checks(root: str) -> None:
    db = MariaDB(os.path.join(root, "mariadb"), procs.free_port())
    _, t_start = _timed_call(db.start)
    tm = db.timings
    print(f"  mariadb 127.0.0.1:{db.port}: install-db (template) {tm['install'] * 1000:.0f} ms, "
          f"server start {tm['server'] * 1000:.0f} ms, schema+seed+grants "
          f"{tm['seed'] * 1000:.0f} ms (total {t_start * 1000:.0f} ms)")
    try:
        _mariadb_live_checks(db, root)
    finally:
        _, t_stop = _timed_call(db.stop)
    check(not db.proc.members() and not procs.can_connect(HOST, db.port),
          f"mariadb stopped in {t_stop * 1000:.0f} ms, nothing left")


def _mariadb_live_checks(db: MariaDB, root: str) -> None:
    for u in dd.USERS:
        row = db.lookup(u.login, as_isthmus=True)
        check(row == (u.island, u.state, u.password_hash, u.effective_node_login)
              and dd.verify(dd.PASSWORD, row[2]) and not dd.verify("wrong", row[2]),
              f"sql: isthmus@127.0.0.1 looks up {u.login}: {u.island}, {u.state}, "
              f"{_scheme_label(row[2]) if row else None} verifies 'demo'")
    found = [login for login in dd.ABSENT_LOOKUPS if db.lookup(login)]
    check(not found, f"sql: the {len(dd.ABSENT_LOOKUPS)} injection-like / folded / padded "
                     f"names find nothing {found}")
    check(db.lookup("Alice@example.org") is None and db.lookup("alice@EXAMPLE.org") is not None,
          "sql: local parts compare exactly (utf8mb4_nopad_bin), domains case-insensitively")

    # The isthmus user over the unix socket too ('isthmus'@'localhost').
    r = subprocess.run(["mariadb", "--no-defaults", "-S", db.socket_path, "-u", dd.SQL_USER,
                        f"--password={dd.SQL_PASSWORD}", "--batch", "--skip-column-names",
                        dd.SQL_DATABASE, "-e", "SELECT CURRENT_USER()"],
                       capture_output=True, text=True, timeout=10)
    check(r.returncode == 0 and r.stdout.strip() == "isthmus@localhost",
          "sql: isthmus@localhost over the unix socket")
    try:
        db.execute("DELETE FROM account", as_isthmus=True)
        check(False, "sql: isthmus may not DELETE")
    except SqlError as e:
        check("denied" in e.output, "sql: isthmus may not DELETE (command denied)")
    db.execute("UPDATE account SET state = 'moving' WHERE localpart = 'bob'", as_isthmus=True)
    check(db.lookup("bob@example.org")[1] == "moving", "sql: isthmus may UPDATE account.state")
    db.set_account("bob@example.org", island="a", state="active")
    check(db.lookup("bob@example.org", as_isthmus=True)[:2] == ("a", "active"),
          "sql: set_account() moves bob to island a")

    db.pause()
    check(procs.can_connect(HOST, db.port), "sql: paused mariadbd accepts TCP")
    check(_times_out(lambda t: db.execute("SELECT 1", as_isthmus=True, timeout=t), 1.0),
          "sql: paused mariadbd never sends its greeting (client timed out after 1 s)")
    db.resume()
    check(db.query("SELECT 1", as_isthmus=True) == [("1",)], "sql: resumed mariadbd answers")
    db.kill()
    check(not procs.can_connect(HOST, db.port) and not db.proc.members(),
          "sql: killed mariadbd: port closed, no process left")
    _, t = _timed_call(db.start)
    check(db.lookup("bob@example.org")[0] == "a",
          f"sql: started again after kill -9 (InnoDB recovery) in {t * 1000:.0f} ms, data kept")
    db.set_account("bob@example.org", island="b")
    _, t = _timed_call(db.restart)
    check(db.lookup("bob@example.org")[0] == "b", f"sql: restart() in {t * 1000:.0f} ms")

    second = MariaDB(os.path.join(root, "mariadb-2"), procs.free_port())
    _, t = _timed_call(second.start)
    try:
        check(second.lookup("alice@example.org") is not None,
              f"sql: a second instance from the template in {t * 1000:.0f} ms "
              f"(copy {second.timings['install'] * 1000:.0f} ms)")
    finally:
        second.stop()
    t_lookup = timed(lambda: db.lookup("alice@example.org", as_isthmus=True), 10)
    print(f"  timing: one lookup through the mariadb client over TCP "
          f"{t_lookup * 1000:.1f} ms (mostly fork/exec)")


def directory_checks() -> None:
    print("directory checks (slapd, MariaDB)")
    crypt_scheme_checks()
    root = tempfile.mkdtemp(prefix="isthmus-dir-")
    os.chmod(root, 0o755)
    try:
        slapd_checks(root)
        mariadb_checks(root)
    finally:
        template = mariadblib.template_dir()
        mariadblib.remove_template()
        if os.environ.get("ISTHMUS_KEEP_LAB") == "1":
            print(f"directory checks: kept {root} (ISTHMUS_KEEP_LAB=1)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    out = subprocess.run(["pgrep", "-af", root], capture_output=True, text=True).stdout
    left = [line for line in out.splitlines() if int(line.split()[0]) != os.getpid()]
    check(not left, f"no slapd or mariadbd process left {left[:3]}")
    check((not os.path.exists(root) or os.environ.get("ISTHMUS_KEEP_LAB") == "1")
          and not (template and os.path.exists(template)),
          "temp dir and the MariaDB template removed")


def lab_leftovers(lab: Lab) -> list[str]:
    """Processes of LAB still alive: members of its nodes' process groups
    (Dovecot's children do not name the lab dir) and anything with the lab
    dir on its command line (haproxy). Precise on purpose: other labs may
    run on this machine at the same time."""
    pids = {pid for node in lab.nodes.values() if node.proc for pid in node.proc.members()}
    out = subprocess.run(["pgrep", "-af", lab.root], capture_output=True, text=True).stdout
    pids |= {int(line.split()[0]) for line in out.splitlines()
             if line.split() and int(line.split()[0]) != os.getpid()}
    return [f"{pid} {_cmdline(pid)}" for pid in sorted(pids)]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
