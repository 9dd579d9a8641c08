"""isthmusctl against two running instances that share a real MariaDB role
store, with real Dovecot nodes: `where`, `kick`, `drain`/`undrain`,
`promote`, `islands` and `reload` change what the instances do, checked
from the outside (which node logins land on, whether sessions live)."""
import imaplib
import json
import os
import re
import subprocess
import unittest

from support import Lab, PASSWORD, binary, procs, start_lab_and_mariadb, wait_for
from lab.isthmusctl import isthmusctl_path  # support puts tests/ on sys.path


ISTHMUSCTL = isthmusctl_path()  # $ISTHMUSCTL_BIN, else build/ci/bin/isthmusctl
ALICE = "alice@example.org"  # island a (active-passive here)
BOB = "bob@example.org"      # island b (balance)
TOKEN = "a-long-enough-admin-token-0123"


class Isthmusctl(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if ISTHMUSCTL is None:
            raise unittest.SkipTest("isthmusctl is not built (target isthmusctl; or set "
                                    "ISTHMUSCTL_BIN)")
        cls.lab = lab = Lab()
        cls.addClassCleanup(lab.close)
        used = set()
        cls.db = start_lab_and_mariadb(lab, cls.addClassCleanup, used)
        cls.db.install_role_store()
        token_file = os.path.join(lab.root, "admin.token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        islands = [dict(island, policy="active-passive", active="a-left")
                   if island["name"] == "a" else island for island in lab.config["islands"]]
        roles = {"store": "sql", "poll_interval": "200ms", "instance_timeout": "2s",
                 "close_spread": "200ms",
                 "sql": {"servers": [f"127.0.0.1:{cls.db.port}"], "database": cls.db.database,
                         "user": cls.db.user, "password_file": cls.db.password_path}}
        cls.instances = []
        ctl_instances = []
        for i in (1, 2):
            imap_port = procs.free_port(exclude=used)
            admin_port = procs.free_port(exclude=used | {imap_port})
            used |= {imap_port, admin_port}
            admin = {"socket": os.path.join(lab.root, f"admin-{i}.sock")}
            if i == 2:
                admin = {"listen": f"127.0.0.1:{admin_port}", "token_file": token_file}
            ix = lab.start_isthmus(
                binary(), instance=f"i{i}", islands=islands, roles=roles, admin=admin,
                listeners=[{"name": "imap", "protocol": "imap", "address": "127.0.0.1",
                            "port": imap_port}])
            cls.instances.append(ix)
            ctl_instances.append({"name": f"i{i}", "socket": admin["socket"]} if i == 1 else
                                 {"name": f"i{i}", "url": f"http://127.0.0.1:{admin_port}",
                                  "token_file": token_file})
        cls.config = os.path.join(lab.root, "isthmusctl.json")
        with open(cls.config, "w") as f:
            json.dump({"instances": ctl_instances, "timeout": "10s"}, f)
        wait_for(lambda: os.path.exists(ctl_instances[0]["socket"]), timeout=10,
                 what="the admin socket")
        wait_for(lambda: cls.db.query("SELECT node FROM isthmus_roles WHERE island = 'a'"),
                 timeout=10, what="the role row")

    def ctl(self, *args: str, expect: int = 0) -> str:
        out = subprocess.run([ISTHMUSCTL, "--config", self.config, *args], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(out.returncode, expect,
                         f"isthmusctl {' '.join(args)}: {out.returncode}\n{out.stdout}{out.stderr}")
        self.assertNotIn(TOKEN, out.stdout + out.stderr)
        return out.stdout

    def ctl_json(self, *args: str, expect: int = 0):
        return json.loads(self.ctl("--json", *args, expect=expect))

    def login(self, ix, user=ALICE, keep=False):
        m = imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=15)
        m.login(user, PASSWORD)
        if keep:
            self.addCleanup(m.shutdown)
            return m
        m.logout()
        return None

    def nodes_of_logins(self, user: str, island: str, per_instance: int = 2) -> set[str]:
        used = set()
        for ix in self.instances:
            mark = len(ix.log_text())
            for _ in range(per_instance):
                self.login(ix, user)
            used |= set(re.findall(rf"login ok user=\S+ island={island} node=(\S+)",
                                   ix.log_text()[mark:]))
        return used

    def test_1_where_and_kick_reach_every_instance(self):
        held = [self.login(ix, keep=True) for ix in self.instances]
        text = self.ctl("where", ALICE)
        self.assertIn("island", text.lower())
        self.assertRegex(text, r"\ba\b")
        for name in ("i1", "i2"):
            self.assertIn(name, text)
        data = self.ctl_json("where", ALICE)
        self.assertIn("a", json.dumps(data))
        self.ctl("where", "nobody@nowhere.invalid", expect=4)
        text = self.ctl("kick", ALICE)
        self.assertRegex(text, r"\b2\b")  # the total
        for m in held:
            with self.assertRaises((OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error)):
                m.noop()
        for ix in self.instances:
            wait_for(lambda ix=ix: 'ended="closed: kicked by an operator"' in ix.log_text(),
                     timeout=10, what="the kick in the session-end line")

    def test_2_drain_and_undrain_steer_new_logins(self):
        self.assertEqual(self.nodes_of_logins(BOB, "b"), {"b-left", "b-right"})
        self.ctl("drain", "b-left")
        nodes = self.ctl_json("nodes")
        self.assertIn("b-left", json.dumps(nodes))
        self.assertEqual(self.nodes_of_logins(BOB, "b", 3), {"b-right"})
        self.ctl("undrain", "b-left")
        self.assertEqual(self.nodes_of_logins(BOB, "b", 3), {"b-left", "b-right"})

    def test_3_promote_moves_every_instance_and_islands_agree(self):
        self.assertEqual(self.nodes_of_logins(ALICE, "a"), {"a-left"})
        self.ctl("islands")
        text = self.ctl("promote", "a", "a-right")
        self.assertIn("a-right", text)
        for ix in self.instances:
            wait_for(lambda ix=ix: "the active role moves from a-left to a-right" in
                     ix.log_text(), timeout=10, what=f"{ix} to follow the promote")
        self.assertEqual(self.nodes_of_logins(ALICE, "a"), {"a-right"})
        islands = self.ctl("islands")
        self.assertIn("a-right", islands)
        self.ctl("promote", "a", "b-left", expect=4)  # not a node of island a
        self.assertEqual(self.db.query("SELECT node, epoch FROM isthmus_roles "
                                       "WHERE island = 'a'"), [("a-right", "2")])

    def test_4_reload_every_instance(self):
        def live(ix):
            return len(re.findall(r"reload: config generation \d+ from \S+ is live",
                                  ix.log_text()))
        before = [live(ix) for ix in self.instances]
        self.ctl("reload")
        for ix, n in zip(self.instances, before):
            self.assertEqual(live(ix), n + 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
