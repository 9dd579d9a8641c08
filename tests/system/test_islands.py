"""The DBMail islands topology end to end (issue 16): two islands, a and b,
each a left/right pair of nodes run active-passive, the users' island in a
real slapd (`mailIsland`), two Isthmus instances (the seed's proxy is an HA
pair) agreeing on each island's holder through the `sql` role store in a
real MariaDB, a real Postfix delivering by LMTP to Isthmus, and the role
hook deploy/hooks/move-service-address moving the island's service address
to the new holder's side.

The nodes are real Dovecot nodes standing in for DBMail: DBMail is not
packaged for Debian 12 and cannot be built on these machines (no network
to fetch it; docs/nodes-dbmail.md). What the topology needs from them is
what DBMail's left/right nodes give: both nodes of an island serve one
shared mail store (DBMail's share one MySQL; the lab's Dovecot nodes share
one maildir per island), so a message delivered through either node is
seen through both, and a left node can die while its right node serves.

The sides: each node's "host" is a network namespace this test creates
(isthmus-islands-<pid>-left and -right: a-left and b-left on the left
side, a-right and b-right on the right); the service address of an island
(10.231.1.1/32 for a, 10.231.2.1/32 for b) lives on `lo` of its holder's
side, placed at start by running the hook by hand, moved by Isthmus
running it on a move. (The Dovecot nodes themselves listen on 127.0.0.1:
the namespaces stand for the hosts whose address moves, not for the
network path of the mail.)

The failure: a-left is killed (SIGKILL of all its processes) while IMAP
(login, SELECT, FETCH), POP3 (login, STAT, RETR) and SMTP-to-Postfix
traffic run for users of both islands. Measured and printed (the
`ISLANDS figures` line): the detection time -- from the kill to the moment
both instances route island a to a-right (their log lines' timestamps) --,
the logins tried and failed before and after the detection window, the
messages sent, deferred by Postfix and delivered. Asserted:

- the detection window is the detection time plus the health checks'
  fall x interval (2 x 500 ms): no attempt (login and the commands after
  it) that *started* after the kill plus that window failed;
- nothing failed before the kill, and island b's users never failed;
- every message is in its recipient's maildir in its island's store
  exactly once, none in the other island's store, and IMAP through Isthmus
  (on a-right) finds each of island a's messages once; the one exception
  is SMTP's own (RFC 1047): a message Postfix had deferred with `451 4.4.2
  ... lost during delivery` (a-left killed after it stored the message and
  before it answered; Isthmus cannot know) may be there twice;
- Postfix's queue empties after a flush: every deferral was retried;
- the role moved once (epoch 2), the hook ran once (exited 0), island a's
  address is on the right side only and can be bound there, island b's
  stayed on the left side.

If `ip netns` cannot be used (no iproute2, no permission) the test FAILS
with a message saying so: CI runs as root on such machines, and a skipped
islands test would hide a missing piece.
"""
import imaplib
import os
import poplib
import re
import shutil
import subprocess
import threading
import time
import unittest
from datetime import datetime

from support import Lab, PASSWORD, binary, make_message, procs, start_lab_and_mariadb, wait_for

from lab import directory_data as dd  # noqa: E402
from lab.dovecot import user_maildir  # noqa: E402
from lab.postfix import Postfix  # noqa: E402
from lab.slapd import Slapd  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOK = os.path.join(REPO, "deploy", "hooks", "move-service-address")
EXAMPLE_CONF = os.path.join(REPO, "deploy", "examples", "move-service-address.conf")
PYTHON = "/usr/bin/python3"

USERS = {"a": ("alice@example.org", "carol@example.org"),
         "b": ("bob@example.org", "dave@example.org")}
ISLAND_OF = {user: island for island, users in USERS.items() for user in users}
SERVICE_ADDRESS = {"a": "10.231.1.1/32", "b": "10.231.2.1/32"}
SIDE_OF = {"a-left": "left", "b-left": "left", "a-right": "right", "b-right": "right"}
SENDER = "sender@example.net"

FALL, INTERVAL = 2, 0.5  # health: fall x interval is the grace after detection
HEALTH = {"active": True, "interval": f"{int(INTERVAL * 1000)}ms", "down_interval": "300ms",
          "timeout": "300ms", "rise": 2, "fall": FALL}
POLL = "300ms"           # roles.poll_interval
PAUSE = 0.1              # s between two sessions of one client
BURST = 8                # messages to island a sent as a-left is killed
BEFORE_KILL = 3.0        # s of traffic before the kill (at least)
AFTER_KILL = 10.0        # s of traffic after it
DETECTION_BOUND = 6.0    # s: fall x interval + timeout + 2 polls, with room for a loaded machine
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:?\d\d) ")


def log_time(line: str) -> float:
    """The wall-clock time (time.time()) of an Isthmus log line."""
    return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def run(argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


class Sides:
    """The two "hosts" of the islands, as network namespaces of this test:
    isthmus-islands-<pid>-left and -right, each with `lo` up. Removed by
    close() (registered as a cleanup by the test, and with procs for
    SIGTERM); namespaces of earlier runs whose process is gone are removed
    when a new one starts (a run killed with SIGKILL cannot clean up)."""

    PREFIX = "isthmus-islands-"

    def __init__(self):
        self.names = {side: f"{self.PREFIX}{os.getpid()}-{side}" for side in ("left", "right")}
        self.made: list[str] = []

    def create(self) -> None:
        if shutil.which("ip") is None:
            raise AssertionError("the islands test needs `ip` (package iproute2, "
                                 "deploy/install-deps.sh) to make network namespaces")
        self.remove_stale()
        procs.register_cleanup(self.close)
        for name in self.names.values():
            for argv in (["ip", "netns", "add", name],
                         ["ip", "-n", name, "link", "set", "lo", "up"]):
                r = run(argv)
                if r.returncode != 0:
                    raise AssertionError(
                        f"the islands test needs network namespaces (as root, iproute2): "
                        f"`{' '.join(argv)}` failed with status {r.returncode}: "
                        f"{(r.stderr or r.stdout).strip()}")
                if argv[1] == "netns":
                    self.made.append(name)

    def remove_stale(self) -> None:
        listed = run(["ip", "netns", "list"]).stdout
        for m in re.finditer(rf"^({re.escape(self.PREFIX)}(\d+)-(?:left|right))\b", listed, re.M):
            if not os.path.exists(f"/proc/{m.group(2)}"):
                run(["ip", "netns", "del", m.group(1)])

    def close(self) -> None:
        procs.unregister_cleanup(self.close)
        for name in self.made:
            run(["ip", "netns", "del", name])
        self.made = []

    def addresses(self, side: str) -> list[str]:
        """The addresses on `lo` of SIDE other than 127.0.0.1/8."""
        out = run(["ip", "-n", self.names[side], "-o", "-4", "addr", "show", "dev", "lo"]).stdout
        return [a for a in re.findall(r"\binet (\S+)", out) if a != "127.0.0.1/8"]

    def bindable(self, side: str, address: str) -> bool:
        ip = address.split("/")[0]
        r = run(["ip", "netns", "exec", self.names[side], PYTHON, "-c",
                 f"import socket; s = socket.socket(); s.bind(({ip!r}, 0)); s.listen(1)"])
        return r.returncode == 0


class Load:
    """IMAP, POP3 and SMTP clients in threads until stop(); every attempt
    recorded as a dict: proto, user (for SMTP the recipient), start, end
    (time.time()), ok, error, and for SMTP the Message-ID."""

    def __init__(self, instances, postfix: Postfix, run_tag: str):
        self.instances = instances
        self.postfix = postfix
        self.run_tag = run_tag
        self.attempts: list[dict] = []
        self.sent: dict[str, str] = {}  # Message-ID -> recipient
        self.submitted = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        users = [u for island in USERS.values() for u in island]
        for i, user in enumerate(users):
            self.threads.append(threading.Thread(target=self.loop, args=(self.imap, user, i)))
            self.threads.append(threading.Thread(target=self.loop, args=(self.pop3, user, i + 1)))
        self.threads.append(threading.Thread(target=self.loop, args=(self.smtp, None, 0)))
        for t in self.threads:
            t.daemon = True
            t.start()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)

    def loop(self, attempt, user, n) -> None:
        while not self.stopping.is_set():
            n += 1
            record = {"user": user, "start": time.time()}
            try:
                attempt(user, self.instances[n % len(self.instances)], record)
                record["ok"] = True
            except Exception as e:  # noqa: BLE001 - every failure is a figure
                record["ok"] = False
                record["error"] = f"{type(e).__name__}: {e}"[:200]
            record["end"] = time.time()
            with self.lock:
                self.attempts.append(record)
            self.stopping.wait(PAUSE)

    @staticmethod
    def imap(user, ix, record) -> None:
        record["proto"] = "imap"
        m = imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=10)
        try:
            m.login(user, PASSWORD)
            typ, data = m.select("INBOX", readonly=True)
            if typ != "OK":
                raise imaplib.IMAP4.error(f"SELECT: {data}")
            typ, data = m.fetch(data[0].decode(), "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            if typ != "OK":
                raise imaplib.IMAP4.error(f"FETCH: {data}")
            m.logout()
        except BaseException:
            try:
                m.shutdown()
            except OSError:
                pass
            raise

    @staticmethod
    def pop3(user, ix, record) -> None:
        record["proto"] = "pop3"
        p = poplib.POP3("127.0.0.1", ix.port("pop3"), timeout=10)
        try:
            p.user(user)
            p.pass_(PASSWORD)
            count, _ = p.stat()
            p.retr(count)  # the newest; there is always the seeded one
            p.quit()
        except BaseException:
            p.close()
            raise

    def smtp(self, _user, _ix, record, users=tuple(ISLAND_OF)) -> None:
        with self.lock:
            n = self.submitted
            self.submitted += 1
        rcpt = users[n % len(users)]
        msgid = f"<islands-{self.run_tag}-{n}@lab.test>"
        raw = (f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: islands {n}\r\n"
               f"Message-ID: {msgid}\r\n\r\nmessage {n} to {rcpt}\r\n").encode()
        record.update(proto="smtp", user=rcpt, msgid=msgid)
        self.postfix.send(SENDER, [rcpt], raw, timeout=10)
        with self.lock:
            self.sent[msgid] = rcpt

    def burst(self, users, count: int) -> None:
        """COUNT messages to USERS, one after the other, recorded as SMTP
        attempts."""
        for _ in range(count):
            record = {"start": time.time()}
            try:
                self.smtp(None, None, record, users=tuple(users))
                record["ok"] = True
            except Exception as e:  # noqa: BLE001 - every failure is a figure
                record["ok"] = False
                record["error"] = f"{type(e).__name__}: {e}"[:200]
            record["end"] = time.time()
            with self.lock:
                self.attempts.append(record)

    def logins(self, proto: str) -> list[dict]:
        with self.lock:
            return [a for a in self.attempts if a["proto"] == proto]


class Islands(unittest.TestCase):

    def setUp(self):
        self.binary = binary()
        self.sides = Sides()
        self.addCleanup(self.sides.close)
        self.sides.create()

        self.lab = Lab()
        self.addCleanup(self.lab.close)
        used = {p for node in self.lab.nodes.values() for p in node.ports.values()}
        slapd = Slapd(os.path.join(self.lab.root, "slapd"), procs.free_port(exclude=used))
        used.add(slapd.port)
        self.addCleanup(slapd.stop)
        failed: list = []

        def start_slapd():
            try:
                slapd.start()
            except BaseException as e:  # noqa: BLE001 - re-raised below
                failed.append(e)

        t = threading.Thread(target=start_slapd)
        t.start()
        try:
            self.db = start_lab_and_mariadb(self.lab, self.addCleanup, used)
        finally:
            t.join()
        if failed:
            raise failed[0]
        self.slapd = slapd
        self.db.install_role_store()
        for user in ISLAND_OF:
            self.lab.put_message(user, make_message(f"seed for {user}", "seed\n"))

        # The hook's config: the islands' addresses, the nodes' sides.
        self.hook_conf = os.path.join(self.lab.root, "move-service-address.conf")
        with open(self.hook_conf, "w") as f:
            f.write("# written by tests/system/test_islands.py\n")
            for island, address in SERVICE_ADDRESS.items():
                f.write(f"address {island} {address} lo\n")
            for node, side in SIDE_OF.items():
                f.write(f"node {node} {node[0]} netns:{self.sides.names[side]}\n")
        for island in USERS:  # the initial holders get the addresses
            r = run([HOOK, "-c", self.hook_conf, island, f"{island}-left"])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(f"added on {island}-left", r.stdout)

        self.instances = [self.start_instance(i, used) for i in (1, 2)]
        self.postfix = Postfix(os.path.join(self.lab.root, "postfix"),
                               procs.free_port(exclude=used),
                               lmtp_target=("127.0.0.1", self.instances[0].port("lmtp")),
                               lmtp_timeout=10)
        self.addCleanup(self.postfix.stop)
        self.postfix.start()
        wait_for(lambda: len(self.db.query("SELECT island FROM isthmus_roles")) == 2,
                 timeout=10, what="both islands' role rows")

    def start_instance(self, n: int, used: set):
        listeners = []
        for proto in ("imap", "pop3", "lmtp"):
            port = procs.free_port(exclude=used)
            used.add(port)
            listeners.append({"name": proto, "protocol": proto, "address": "127.0.0.1",
                              "port": port})
        islands = [dict(island, policy="active-passive", active=f"{island['name']}-left")
                   for island in self.lab.config["islands"]]
        directory = {
            "type": "ldap", "file": None,
            "ldap": {"uris": [self.slapd.url], "bind_dn": dd.SERVICE_DN,
                     "bind_password_file": self.slapd.service_pw_path, "base": dd.PEOPLE_DN,
                     "scope": "sub", "filter": "(&(objectClass=mailIslandUser)(uid=%{user}))",
                     "pool": 2, "timeout": "1s", "connect_timeout": "700ms",
                     "max_backoff": "1s"},
            "cache": {"positive_ttl": "30s", "negative_ttl": "1s", "stale_if_error": "1h"}}
        roles = {"store": "sql", "poll_interval": POLL, "instance_timeout": "3s",
                 "hook": [HOOK, "-c", self.hook_conf], "hook_timeout": "10s",
                 "close_spread": "1s",
                 "sql": {"servers": [f"127.0.0.1:{self.db.port}"], "database": self.db.database,
                         "user": self.db.user, "password_file": self.db.password_path,
                         "timeout": "1s", "connect_timeout": "500ms", "max_backoff": "1s"}}
        return self.lab.start_isthmus(self.binary, instance=f"i{n}", listeners=listeners,
                                      islands=islands, directory=directory, roles=roles,
                                      health=HEALTH, lmtp={"hostname": "isthmus.lab.test"},
                                      timeouts={"connect": "1s"})

    # -- what the stores hold

    def stored_ids(self) -> dict[tuple[str, str, str], int]:
        """(island store, user, Message-ID) -> copies, for this run's messages."""
        found: dict = {}
        for island in USERS:
            for user in ISLAND_OF:
                maildir = user_maildir(self.lab.store(island), user)
                for sub in ("new", "cur"):
                    d = os.path.join(maildir, sub)
                    for name in os.listdir(d) if os.path.isdir(d) else ():
                        with open(os.path.join(d, name), "rb") as f:
                            head = f.read(4096).decode(errors="replace")
                        m = re.search(r"^Message-ID: (<islands-[^>]*>)", head, re.M | re.I)
                        if m:
                            key = (island, user, m.group(1))
                            found[key] = found.get(key, 0) + 1
        return found

    def imap_ids(self, ix, user: str) -> list[str]:
        # 60 s: the survivor's first SELECT after the failover may rebuild
        # the index the killed node left (once over 15 s on a loaded CI host).
        m = imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=60)
        try:
            m.login(user, PASSWORD)
            typ, data = m.select("INBOX", readonly=True)
            typ, data = m.fetch(f"1:{data[0].decode()}",
                                "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            ids = []
            for part in data:
                if isinstance(part, tuple):
                    ids += re.findall(r"<islands-[^>]*>", part[1].decode())
            m.logout()
            return ids
        except BaseException:
            m.shutdown()
            raise

    # -- the test

    def test_a_left_node_killed_under_imap_pop3_and_lmtp_load(self):
        # The example config parses (its ssh sides are never contacted: the
        # node named is not in it).
        r = run([HOOK, "-c", EXAMPLE_CONF, "a", "no-such-node"])
        self.assertEqual((r.returncode, r.stdout.strip()),
                         (2, f"move-service-address: node no-such-node of island a has no node "
                             f"line in {EXAMPLE_CONF}"))
        self.assertEqual(self.sides.addresses("left"), [SERVICE_ADDRESS["a"], SERVICE_ADDRESS["b"]])
        self.assertEqual(self.sides.addresses("right"), [])

        load = Load(self.instances, self.postfix, f"{os.getpid()}-{time.monotonic_ns()}")
        load.start()
        try:
            def warmed_up():
                done = [a for a in load.attempts if a["ok"]]
                return all(sum(1 for a in done if a["proto"] == p and a["user"] == u) >= 2
                           for p in ("imap", "pop3") for u in ISLAND_OF)
            started = time.monotonic()
            try:
                wait_for(warmed_up, timeout=30, interval=0.1, what="two good IMAP and POP3 "
                         "sessions per user before the kill")
            except AssertionError as e:
                bad = [a for a in load.attempts if not a["ok"]]
                raise AssertionError(f"{e}; {len(load.attempts)} attempts, {len(bad)} failed: "
                                     f"{bad[:6]}") from None
            remaining = BEFORE_KILL - (time.monotonic() - started)
            if remaining > 0:
                load.stopping.wait(remaining)  # traffic before the kill, by design
            # A burst of mail to island a as it dies: some of it meets
            # Isthmus' LMTP while a-left is down and the role not yet moved
            # (how much depends on the timing; the figures say).
            burst = threading.Thread(target=load.burst, args=(USERS["a"], BURST))
            burst.start()
            killed_at = time.time()
            self.lab.node("a-left").kill()
            burst.join(30)

            def followed():
                times = []
                for ix in self.instances:
                    m = re.search(r"^.*the active role moves from a-left to a-right, epoch 2.*$",
                                  ix.log_text(), re.M)
                    if not m:
                        return None
                    times.append(log_time(m.group(0)))
                return max(times)
            detected_at = wait_for(followed, timeout=20, interval=0.05,
                                   what="both instances to route island a to a-right")
            rest = killed_at + AFTER_KILL - time.time()
            if rest > 0:
                load.stopping.wait(rest)  # traffic after the kill, by design
        finally:
            load.stop()
        detection = detected_at - killed_at
        window = detection + FALL * INTERVAL

        # Postfix: retry the deferred at once, then the queue must empty.
        flushed = time.monotonic()
        self.postfix.flush()
        self.postfix.wait_queue_empty(timeout=30)
        emptied = time.monotonic() - flushed
        sent = dict(load.sent)
        records = [r for r in self.postfix.deliveries() if r["to"] in ISLAND_OF]
        deferred = {r["queue_id"] for r in records if r["status"] == "deferred"}
        deferred_b = [r for r in records if r["status"] == "deferred" and ISLAND_OF[r["to"]] == "b"]
        reasons = sorted({(r.get("dsn", "?"), re.sub(r"\d+\.\d+\.\d+\.\d+\[[^]]*\]:\d+", "ISTHMUS",
                                                    r["reply"] or "")[:120])
                          for r in records if r["status"] == "deferred"})
        delivered = [r for r in records if r["status"] == "sent"]

        # The sessions (login and the commands after it), split by when
        # they started: before the kill, in the window, after it.
        def failed(attempts):
            return [a for a in attempts if not a["ok"]]
        text = []
        problems = []
        for proto in ("imap", "pop3"):
            tried = load.logins(proto)
            before = [a for a in tried if a["start"] < killed_at]
            during = [a for a in tried if killed_at <= a["start"] < killed_at + window]
            after = [a for a in tried if a["start"] >= killed_at + window]
            late = [a for a in failed(during) if a["start"] >= detected_at]
            text.append(f"{proto} {len(before)} tried/{len(failed(before))} failed before the "
                        f"kill, {len(during)}/{len(failed(during))} in the window ({len(late)} "
                        f"of those failures started after detection), "
                        f"{len(after)}/{len(failed(after))} after")
            if failed(after):
                problems.append(f"{proto} failures after the window: {failed(after)[:5]}")
            early = [a for a in failed(tried) if a["end"] < killed_at]
            if early:
                problems.append(f"{proto} failures that ended before the kill: {early[:5]}")
            b_failed = [a for a in failed(tried) if ISLAND_OF[a["user"]] == "b"]
            if b_failed:
                problems.append(f"{proto} failures of island b: {b_failed[:5]}")
            if len(after) < 8:
                problems.append(f"{proto}: only {len(after)} attempts after the window")
        if deferred_b:
            problems.append(f"mail to island b deferred: {deferred_b[:5]}")
        smtp_failed = [a for a in load.logins("smtp") if not a["ok"]]
        if smtp_failed:
            problems.append(f"Postfix refused submissions: {smtp_failed[:5]}")

        # The one duplicate SMTP allows (RFC 1047): a node killed after it
        # stored a message and before it answered. Isthmus saw the
        # connection lost after the final dot and said 451 4.4.2 (it
        # cannot know); Postfix sent the message again. Such a message may
        # be there twice, no other.
        queued_as = self.postfix.message_ids()
        self.assertLessEqual(set(sent), set(queued_as.values()), "cleanup's message-id lines")
        ambiguous = {queued_as.get(r["queue_id"]) for r in records
                     if r["status"] == "deferred" and r.get("dsn") == "4.4.2"
                     and "lost during delivery" in (r["reply"] or "")}
        stored = self.stored_ids()
        lost, duplicated, misplaced, twice = [], [], [], []
        for msgid, rcpt in sent.items():
            home = ISLAND_OF[rcpt]
            copies = stored.get((home, rcpt, msgid), 0)
            if copies == 0:
                lost.append(msgid)
            elif copies == 2 and msgid in ambiguous:
                twice.append(msgid)
            elif copies > 1:
                duplicated.append(msgid)
        for (island, user, msgid), copies in stored.items():
            if sent.get(msgid) != user or ISLAND_OF[user] != island:
                misplaced.append((island, user, msgid, copies))

        print(f"\nISLANDS figures: detection {detection:.2f}s (a-left killed -> both instances "
              f"route island a to a-right); window {window:.2f}s (detection + fall {FALL} x "
              f"interval {INTERVAL}s); logins: {'; '.join(text)}; island b failed "
              f"{sum(1 for a in load.attempts if not a['ok'] and ISLAND_OF[a['user']] == 'b')}; "
              f"messages: {len(sent)} sent, {len(deferred)} deferred by Postfix, "
              f"{len(delivered)} delivered, {len(lost)} lost, {len(duplicated)} duplicated "
              f"(and {len(twice)} twice after a node killed between storing and answering), "
              f"{len(misplaced)} on a wrong island; queue empty {emptied:.2f}s after the flush",
              flush=True)
        if reasons:
            print(f"ISLANDS deferrals: {reasons}", flush=True)
        self.assertEqual(problems, [])
        self.assertLess(detection, DETECTION_BOUND)
        self.assertGreater(len(sent), 20)
        self.assertEqual((lost, duplicated, misplaced), ([], [], []))
        self.assertEqual(len(delivered), len(sent))

        # Through Isthmus, on the surviving node: each of island a's
        # messages once.
        survivor = self.instances[1]
        for user in USERS["a"]:
            mark = len(survivor.log_text())
            ids = self.imap_ids(survivor, user)
            self.assertIn(f"login ok user={user} island=a node=a-right",
                          survivor.log_text()[mark:])
            want = sorted(m for m, r in sent.items() if r == user
                          for _ in range(2 if m in twice else 1))
            self.assertEqual(sorted(ids), want)

        # The role moved once; the hook ran once, on the instance that
        # moved it, and moved the address.
        self.assertEqual(self.db.query("SELECT island, node, epoch FROM isthmus_roles "
                                       "ORDER BY island"),
                         [("a", "a-right", "2"), ("b", "b-left", "1")])
        hook_line = re.compile(r"role hook: island a epoch 2 \(a-left -> a-right\): \S+ exited 0")
        wait_for(lambda: any(hook_line.search(ix.log_text()) for ix in self.instances),
                 timeout=10, what="the hook's outcome in a log")
        logs = [ix.log_text() for ix in self.instances]
        self.assertEqual(sum(len(hook_line.findall(text)) for text in logs), 1, logs)
        # "running" and "exited": two lines, one run.
        self.assertEqual(sum(text.count("role hook: island") for text in logs), 2)
        self.assertNotIn("role hook: island b", "".join(logs))
        self.assertEqual(self.sides.addresses("left"), [SERVICE_ADDRESS["b"]])
        self.assertEqual(self.sides.addresses("right"), [SERVICE_ADDRESS["a"]])
        self.assertTrue(self.sides.bindable("right", SERVICE_ADDRESS["a"]))
        self.assertFalse(self.sides.bindable("left", SERVICE_ADDRESS["a"]))
        self.assertTrue(self.sides.bindable("left", SERVICE_ADDRESS["b"]))
        said = next(re.search(hook_line.pattern + ".*", t).group(0)
                    for t in logs if hook_line.search(t))
        print(f"ISLANDS hook: {said}", flush=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
