"""Active roles agreed between Isthmus instances through a shared role store
(roles.store "sql") in a real MariaDB, with real Dovecot nodes:

- two and three instances agree on island a's holder;
- one instance that alone cannot reach the holder (a fault-injecting TCP
  gate between it and a-left) does not move the role;
- a real outage (a-left stopped) moves it exactly once (one epoch), the
  hook runs once, every instance routes to the new holder, and the old
  holder coming back does not get it back;
- a move made in the store by hand is followed by every instance, whose
  sessions on the old holder are closed, spread out;
- an instance that cannot reach the store keeps the role it knew.
"""
import imaplib
import os
import re
import stat
import time
import unittest

from support import Lab, PASSWORD, binary, procs, start_lab_and_mariadb, wait_for

from lab.gate import Gate  # noqa: E402

USER = "alice@example.org"  # island a
HEALTH = {"active": True, "interval": "500ms", "down_interval": "300ms", "timeout": "300ms",
          "rise": 2, "fall": 2}
POLL = 0.3  # s, roles.poll_interval
HOOK = """#!/bin/sh
echo "$INSTANCE $ISLAND $OLD_NODE $NEW_NODE $EPOCH $ISTHMUS_EVENT" >> "{log}"
echo "moved $ISLAND to $NEW_NODE"
"""


class RoleStore(unittest.TestCase):

    def setUp(self):
        self.lab = Lab()
        self.addCleanup(self.lab.close)
        self.used = set()
        self.db = start_lab_and_mariadb(self.lab, self.addCleanup, self.used)
        self.db.install_role_store()
        self.hook_log = os.path.join(self.lab.root, "hook.log")
        self.hook = os.path.join(self.lab.root, "hook.sh")
        with open(self.hook, "w") as f:
            f.write(HOOK.format(log=self.hook_log))
        os.chmod(self.hook, stat.S_IRWXU)

    # -- helpers

    def start_instances(self, count: int, gate_for: int = -1, *, lmtp: bool = False,
                        **roles_overrides) -> tuple[list, Gate]:
        """COUNT instances sharing the store; instance GATE_FOR reaches a-left
        through a gate. Island a is active-passive (a-left holds the role);
        its nodes are configured with IMAP only (LMTP too with LMTP), so
        every check is one connection."""
        gate = Gate(0, self.lab.node("a-left").ports["imap"])
        self.addCleanup(gate.close)
        instances = []
        for i in range(count):
            islands = []
            for island in self.lab.config["islands"]:
                if island["name"] != "a":
                    islands.append(island)
                    continue
                nodes = []
                for node in island["nodes"]:
                    port = node["ports"]["imap"]
                    if node["name"] == "a-left" and i == gate_for:
                        port = gate.port
                    ports = {"imap": port}
                    if lmtp:
                        ports["lmtp"] = node["ports"]["lmtp"]
                    nodes.append(dict(node, ports=ports))
                islands.append(dict(island, policy="active-passive", active="a-left",
                                    nodes=nodes))
            roles = {"store": "sql", "poll_interval": f"{int(POLL * 1000)}ms",
                     "instance_timeout": "3s", "hook": [self.hook], "hook_timeout": "5s",
                     "close_spread": "2s",
                     "sql": {"servers": [f"127.0.0.1:{self.db.port}"],
                             "database": self.db.database, "user": self.db.user,
                             "password_file": self.db.password_path, "timeout": "1s",
                             "connect_timeout": "500ms", "max_backoff": "1s"}}
            roles.update(roles_overrides)
            listeners = [{"name": "imap", "protocol": "imap", "address": "127.0.0.1",
                          "port": procs.free_port(exclude=self.used)}]
            if lmtp:
                listeners.append({"name": "lmtp", "protocol": "lmtp", "address": "127.0.0.1",
                                  "port": procs.free_port(exclude=self.used)})
            self.used |= {l["port"] for l in listeners}
            ix = self.lab.start_isthmus(binary(), instance=f"i{i + 1}", islands=islands,
                                        roles=roles, health=HEALTH, listeners=listeners,
                                        timeouts={"connect": "1s"})
            instances.append(ix)
        wait_for(lambda: self.role_row() is not None, timeout=10, what="the role row")
        return instances, gate

    def role_row(self):
        rows = self.db.query("SELECT node, epoch, changed_by FROM isthmus_roles "
                             "WHERE island = 'a'")
        return rows[0] if rows else None

    def hook_lines(self) -> list[str]:
        try:
            with open(self.hook_log) as f:
                return [line.split() for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def node_of_login(self, ix) -> str:
        mark = len(ix.log_text())
        m = imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=15)
        m.login(USER, PASSWORD)
        m.logout()
        found = re.findall(r"login ok user=\S+ island=a node=(\S+)", ix.log_text()[mark:])
        self.assertEqual(len(found), 1, ix.log_text()[mark:])
        return found[0]

    # -- tests

    def outage_moves_the_role_once(self, count: int):
        instances, gate = self.start_instances(count, gate_for=count - 1)
        self.assertEqual(self.role_row()[:2], ("a-left", "1"))
        for ix in instances:
            self.assertEqual(self.node_of_login(ix), "a-left")

        # One instance alone loses a-left: it sees it down, the others do
        # not, and the role stays.
        lonely = instances[-1]
        mark = len(lonely.log_text())
        gate.black_hole()
        wait_for(lambda: re.search(r"a-left looks down from here, but only 1 of the %d "
                                   r"instances the store knows see it down" % count,
                                   lonely.log_text()[mark:]),
                 timeout=15, what="the lonely instance to ask for a majority")
        time.sleep(5 * POLL)
        self.assertEqual(self.role_row()[:2], ("a-left", "1"))
        for ix in instances[:-1]:
            self.assertEqual(self.node_of_login(ix), "a-left")
        gate.pass_through()
        wait_for(lambda: "node a-left up again" in lonely.log_text()[mark:], timeout=15,
                 what="a-left up again behind the gate")

        # A real outage: every instance sees it; the role moves once.
        marks = [len(ix.log_text()) for ix in instances]
        started = time.monotonic()
        self.lab.node("a-left").stop()
        try:
            wait_for(lambda: self.role_row()[0] == "a-right", timeout=20,
                     what="the role to move to a-right")
            moved_after = time.monotonic() - started
            for ix, mark in zip(instances, marks):
                wait_for(lambda ix=ix, mark=mark: "the active role moves from a-left to a-right, "
                         "epoch 2" in ix.log_text()[mark:], timeout=10,
                         what=f"{ix} to follow the move")
            for ix in instances:
                self.assertEqual(self.node_of_login(ix), "a-right")
            print(f"\n  {count} instances: role moved {moved_after:.2f}s after a-left stopped",
                  flush=True)
        finally:
            self.lab.node("a-left").start()
        node, epoch, by = self.role_row()
        self.assertEqual((node, epoch), ("a-right", "2"))
        wait_for(lambda: len(self.hook_lines()) >= 1, timeout=10, what="the hook")
        for ix in instances:
            wait_for(lambda ix=ix: "node a-left up again" in ix.log_text(), timeout=15,
                     what="a-left up again")
        time.sleep(5 * POLL)
        # No failback, one move, one hook run (by the instance that moved it).
        self.assertEqual(self.role_row()[:2], ("a-right", "2"))
        lines = self.hook_lines()
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0], [by, "a", "a-left", "a-right", "2", "role-change"])
        movers = [ix for ix in instances if "role hook: island a epoch 2" in ix.log_text()]
        self.assertEqual(len(movers), 1)
        self.assertIn("exited 0", movers[0].log_text())
        self.assertIn("it said: moved a to a-right", movers[0].log_text())
        for ix in instances:
            self.assertEqual(self.node_of_login(ix), "a-right")
            self.assertEqual(ix.log_text().count("the active role moves"), 1)

    def test_two_instances_agree_and_move_the_role_once(self):
        self.outage_moves_the_role_once(2)

    def test_three_instances_agree_and_move_the_role_once(self):
        self.outage_moves_the_role_once(3)

    def test_a_move_in_the_store_is_followed_and_old_sessions_close_spread_out(self):
        instances, _ = self.start_instances(2)
        sessions = []
        for _ in range(4):
            m = imaplib.IMAP4("127.0.0.1", instances[0].port("imap"), timeout=15)
            m.login(USER, PASSWORD)
            sessions.append(m)
            self.addCleanup(m.shutdown)
        self.assertIn("node=a-left", instances[0].log_text())
        self.db.execute("UPDATE isthmus_roles SET node = 'a-right', epoch = epoch + 1, "
                        "changed_by = 'dba', changed_at = NOW(6) WHERE island = 'a'")
        for ix in instances:
            wait_for(lambda ix=ix: "the active role moves from a-left to a-right, epoch 2 (the "
                     "role store says so, moved by instance dba)" in ix.log_text(), timeout=10,
                     what="the instances to follow the store")
        closed_at = {}

        def all_closed():
            for i, m in enumerate(sessions):
                if i in closed_at:
                    continue
                try:
                    m.noop()
                except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error):
                    closed_at[i] = time.monotonic()
            return len(closed_at) == len(sessions)

        wait_for(all_closed, timeout=10, interval=0.05, what="the old holder's sessions to close")
        spread = max(closed_at.values()) - min(closed_at.values())
        self.assertGreater(spread, 0.5, "the sessions were closed all at once")
        ended = re.findall(r'ended="closed: a-left lost island a\'s active role"',
                           instances[0].log_text())
        self.assertEqual(len(ended), 4)
        for ix in instances:
            self.assertEqual(self.node_of_login(ix), "a-right")
        self.assertEqual(self.hook_lines(), [])  # nobody here moved it

    def test_a_stale_row_never_sends_an_instance_back_to_an_old_epoch(self):
        instances, _ = self.start_instances(2)
        self.db.execute("UPDATE isthmus_roles SET node = 'a-right', epoch = 2, "
                        "changed_by = 'dba', changed_at = NOW(6) WHERE island = 'a'")
        for ix in instances:
            wait_for(lambda ix=ix: "moves from a-left to a-right, epoch 2" in ix.log_text(),
                     timeout=10, what="the instances to follow the store")
        # A stale row (a restored backup, a lagging replica, a hand edit
        # that forgot the epoch): epoch 1 again, and then a same-epoch edit.
        for node, epoch in (("a-left", 1), ("a-left", 2)):
            self.db.execute(f"UPDATE isthmus_roles SET node = '{node}', epoch = {epoch}, "
                            "changed_by = 'backup' WHERE island = 'a'")
            for ix in instances:
                wait_for(lambda ix=ix: f"the store says a-left holds the role at epoch {epoch}, "
                         "but this instance has seen epoch 2 (a-right); keeping epoch 2"
                         in ix.log_text(), timeout=10, what="the stale row to be refused")
                self.assertEqual(self.node_of_login(ix), "a-right")
        for ix in instances:
            self.assertEqual(ix.log_text().count("the active role moves"), 1)

    def test_a_majority_of_the_instances_the_store_knows_not_of_those_heard_lately(self):
        # Three instances register; two die (as after a store outage, their
        # heartbeats go stale). The survivor sees a-left down: 1 of the 3 it
        # knows is no majority, however long the others have been quiet --
        # until they expire (roles.instance_expiry), when 1 of 1 is.
        instances, _ = self.start_instances(3, instance_expiry="8s")
        survivor = instances[0]
        for ix in instances[1:]:
            ix.kill()
            ix.stop(check=False)  # killed on purpose: no crash to report
        time.sleep(3.5)  # past instance_timeout: the dead are no longer "live"
        mark = len(survivor.log_text())
        self.lab.node("a-left").stop()
        try:
            wait_for(lambda: "a-left looks down from here, but only 1 of the 3 instances the "
                     "store knows see it down now" in survivor.log_text()[mark:], timeout=10,
                     what="the survivor to refuse to decide alone")
            time.sleep(1.0)
            self.assertEqual(self.role_row()[:2], ("a-left", "1"))
            # The dead instances expire: now the survivor is the majority.
            wait_for(lambda: self.role_row()[0] == "a-right", timeout=15,
                     what="the role to move once the dead instances expired")
            self.assertIn("1 of the 1 instances the store knows see a-left down",
                          survivor.log_text()[mark:])
        finally:
            self.lab.node("a-left").start()

    def test_lmtp_on_a_fenced_node_is_deferred_never_delivered(self):
        import smtplib
        instances, _ = self.start_instances(1, lmtp=True)
        ix = instances[0]
        token = f"fence-{time.monotonic_ns()}"
        body = (f"From: s@example.net\r\nTo: {USER}\r\nMessage-ID: <{token}@lab>\r\n"
                f"Subject: {token}\r\n\r\nfenced\r\n").encode()
        s = smtplib.LMTP("127.0.0.1", ix.port("lmtp"), timeout=20)
        s.ehlo("mta.example.net")
        self.assertEqual(s.mail("s@example.net")[0], 250)
        self.assertEqual(s.rcpt(USER)[0], 250)  # the transaction opens on a-left, epoch 1
        # The role moves (an operator in the store) before DATA.
        self.db.execute("UPDATE isthmus_roles SET node = 'a-right', epoch = epoch + 1, "
                        "changed_by = 'dba', changed_at = NOW(6) WHERE island = 'a'")
        wait_for(lambda: "moves from a-left to a-right, epoch 2" in ix.log_text(), timeout=10,
                 what="the instance to follow the store")
        code, text = s.docmd("DATA")
        self.assertEqual(code, 354)
        s.send(body + b".\r\n")
        code, text = s.getreply()
        self.assertEqual(code, 451, text)
        self.assertIn(b"4.4.0", text)
        s.quit()
        self.assertIn("fenced before DATA", ix.log_text())
        self.assertEqual(self.copies(token), 0)
        # The MTA retries: it reaches the new holder, exactly one copy.
        with smtplib.LMTP("127.0.0.1", ix.port("lmtp"), timeout=20) as s2:
            s2.ehlo("mta.example.net")
            self.assertEqual(s2.sendmail("s@example.net", [USER], body), {})
        self.assertEqual(self.copies(token), 1)

    def copies(self, token: str) -> int:
        from lab.dovecot import user_maildir
        found = 0
        maildir = user_maildir(self.lab.store("a"), USER)
        for sub in ("new", "cur"):
            d = os.path.join(maildir, sub)
            for name in os.listdir(d) if os.path.isdir(d) else ():
                with open(os.path.join(d, name), "rb") as f:
                    found += token.encode() in f.read()
        return found

    def test_an_instance_that_cannot_reach_the_store_keeps_the_role_it_knew(self):
        instances, _ = self.start_instances(1)
        ix = instances[0]
        mark = len(ix.log_text())
        self.db.pause()
        try:
            wait_for(lambda: "role store: unreachable" in ix.log_text()[mark:], timeout=10,
                     what="the instance to notice")
            self.assertIn("keeping the roles last known (a: a-left epoch 1", ix.log_text()[mark:])
            self.assertEqual(self.node_of_login(ix), "a-left")
        finally:
            self.db.resume()
        wait_for(lambda: "role store: reachable again" in ix.log_text()[mark:], timeout=10,
                 what="the store back")
        self.assertEqual(ix.log_text()[mark:].count("role store: unreachable"), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
