"""The CalMail topology end to end (issue 16, section 3): a real Exim
delivering by LMTP to Isthmus, real Cyrus 3.6 mail stores on two islands,
the accounts in the CalMail schema in a real MariaDB (the SQL directory,
with its `state` values), Isthmus logging users in to Cyrus as the master
user (proxyservers), and IMAP and POP3 clients through Isthmus.

Exim's queue keeps what Isthmus deferred -- an island whose nodes are down,
a user being moved -- and the message arrives once when the cause is gone.
The figures (seconds from the fix to the delivery) are printed."""
import imaplib
import os
import poplib
import time
import unittest

from support import Lab, PASSWORD, binary, make_message, procs, start_lab_and_mariadb, wait_for

from lab import directory_data as dd  # noqa: E402
from lab.cyrus import MASTER_PASSWORD, MASTER_USER  # noqa: E402
from lab.exim import Exim  # noqa: E402

SENDER = "sender@example.net"
LAB = None
DB = None
EXIM = None
IX = None


def setUpModule():
    global LAB, DB, EXIM, IX
    LAB = Lab(kind="cyrus", isthmus_ports={"imap": 0, "pop3": 0, "lmtp": 0})
    unittest.addModuleCleanup(LAB.close)
    DB = start_lab_and_mariadb(LAB, unittest.addModuleCleanup)
    master_pw = os.path.join(LAB.root, "master.pw")
    with open(master_pw, "w") as f:
        f.write(MASTER_PASSWORD + "\n")
    os.chmod(master_pw, 0o600)
    directory = {
        "type": "sql", "file": None,
        "sql": {"servers": [f"127.0.0.1:{DB.port}"], "database": dd.SQL_DATABASE,
                "user": dd.SQL_USER, "password_file": DB.password_path, "pool": 2,
                "timeout": "2s", "connect_timeout": "1s", "max_backoff": "1s"},
        # Short: a state changed in the database is seen within a second.
        "cache": {"positive_ttl": "500ms", "negative_ttl": "500ms"}}
    IX = LAB.start_isthmus(
        binary(), directory=directory,
        auth={"mode": "directory", "master_user": MASTER_USER,
              "master_password_file": master_pw, "master_style": "sasl"},
        lmtp={"hostname": "isthmus.lab.test"}, timeouts={"connect": "1s"})
    EXIM = Exim(os.path.join(LAB.root, "exim"), procs.free_port(),
                lmtp_target=("127.0.0.1", IX.port("lmtp")))
    unittest.addModuleCleanup(EXIM.stop)
    EXIM.start()


def send(recipients: list[str], tag: str) -> tuple[str, str]:
    """A message to RECIPIENTS through Exim: (its subject, its queue id)."""
    subject = f"calmail {tag} {time.monotonic_ns()}"
    raw = make_message(subject, f"{tag}\n", to=", ".join(recipients), sender=SENDER)
    refused = EXIM.send(SENDER, recipients, raw)
    if refused:
        raise AssertionError(f"Exim refused {refused}")
    msgid = next(line.split(b":", 1)[1].strip().decode() for line in raw.split(b"\r\n")
                 if line.lower().startswith(b"message-id:"))
    queue_id = wait_for(lambda: EXIM.queue_id_of(msgid), what="Exim's <= line")
    return f"Subject: {subject}", queue_id


def imap_subjects(user: str) -> list[str]:
    m = imaplib.IMAP4("127.0.0.1", IX.port("imap"), timeout=15)
    try:
        m.login(user, PASSWORD)
        m.select("INBOX", readonly=True)
        typ, found = m.search(None, "ALL")
        if not found[0]:
            return []
        typ, data = m.fetch(b",".join(found[0].split()), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [part[1].decode().strip() for part in data if isinstance(part, tuple)]
    finally:
        m.logout()


def pop3_subjects(user: str) -> list[str]:
    p = poplib.POP3("127.0.0.1", IX.port("pop3"), timeout=15)
    try:
        p.user(user)
        p.pass_(PASSWORD)
        out = []
        for n in range(1, p.stat()[0] + 1):
            _, lines, _ = p.top(n, 0)
            out += [line.decode() for line in lines if line.lower().startswith(b"subject:")]
        return out
    finally:
        p.quit()


class CalMail(unittest.TestCase):
    def delivered(self, queue_id: str, user: str, timeout: float = 20) -> float:
        """Waits for Exim's delivery line of USER; when it came (monotonic)."""
        wait_for(lambda: EXIM.delivered(queue_id, user), timeout=timeout, interval=0.05,
                 what=f"Exim's delivery of {queue_id} to {user}")
        return time.monotonic()

    def test_one_message_to_two_islands_is_read_through_isthmus_over_imap_and_pop3(self):
        subject, queue_id = send(["alice@example.org", "bob@example.org"], "both")
        for user in ("alice@example.org", "bob@example.org"):
            self.delivered(queue_id, user)
        self.assertEqual(imap_subjects("alice@example.org").count(subject), 1)
        self.assertEqual(pop3_subjects("bob@example.org").count(subject), 1)
        # Isthmus said 250 for each only after its Cyrus node did.
        lines = EXIM.lines_of(queue_id)
        self.assertTrue(any("Completed" in line for line in lines), lines)

    def test_an_island_down_is_deferred_and_arrives_once_when_it_is_back(self):
        nodes = [LAB.node(n) for n in ("a-left", "a-right")]
        for node in nodes:
            node.stop()
        try:
            subject, queue_id = send(["alice@example.org", "bob@example.org"], "island-down")
            self.delivered(queue_id, "bob@example.org")  # island b is up
            wait_for(lambda: EXIM.deferred(queue_id, "alice@example.org"), timeout=20,
                     what="alice deferred")
            line = EXIM.deferred(queue_id, "alice@example.org")[0]
            self.assertIn("451 4.4.1", line)  # no node of island a reachable
            self.assertEqual(EXIM.queue_count(), 1)
        finally:
            for node in nodes:
                node.start()
        back = time.monotonic()
        at = self.delivered(queue_id, "alice@example.org", timeout=30)
        print(f"\nCALMAIL island back: Exim's queued message delivered {at - back:.2f}s after "
              f"its Cyrus nodes were up", flush=True)
        self.assertEqual(imap_subjects("alice@example.org").count(subject), 1)
        self.assertEqual(len(EXIM.delivered(queue_id, "bob@example.org")), 1)
        wait_for(lambda: EXIM.queue_count() == 0, what="Exim's queue to empty")

    def test_a_user_being_moved_is_deferred_until_the_move_ends(self):
        DB.execute("UPDATE account SET state = 'moving' WHERE localpart = 'carol'")
        try:
            time.sleep(0.6)  # past the cache's TTL
            subject, queue_id = send(["carol@example.org"], "moving")
            wait_for(lambda: EXIM.deferred(queue_id, "carol@example.org"), timeout=20,
                     what="carol deferred")
            self.assertIn("451 4.2.1", EXIM.deferred(queue_id, "carol@example.org")[0])
            time.sleep(1.5)  # Exim retries every second: still deferred
            self.assertFalse(EXIM.delivered(queue_id, "carol@example.org"))
        finally:
            DB.execute("UPDATE account SET state = 'active' WHERE localpart = 'carol'")
        done = time.monotonic()
        at = self.delivered(queue_id, "carol@example.org")
        print(f"\nCALMAIL move done: delivered {at - done:.2f}s after the state went back "
              f"to active", flush=True)
        self.assertEqual(imap_subjects("carol@example.org").count(subject), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
