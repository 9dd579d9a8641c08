"""The admin API and /metrics of a running instance, driven with curl (a
client we did not write) over its unix socket and its TCP address, against
real Dovecot nodes: reading state, kicking a user's sessions, draining a
node, promoting an island's node, reloading, invalidating the cache; the
token guarding TCP; the metrics parsed by prometheus_client's parser."""
import imaplib
import json
import os
import re
import unittest

from support import Lab, PASSWORD, binary, curl, wait_for

USER = "alice@example.org"  # island a
TOKEN = "s3cret-token-for-the-admin-api"


class AdminApi(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.lab = Lab()
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()
        token_file = os.path.join(cls.lab.root, "admin.token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(token_file, 0o600)
        cls.socket = os.path.join(cls.lab.root, "admin.sock")
        from lab import procs
        cls.admin_port = procs.free_port()
        islands = [dict(island, policy="active-passive", active="a-left")
                   if island["name"] == "a" else island for island in cls.lab.config["islands"]]
        cls.ix = cls.lab.start_isthmus(
            binary(), islands=islands,
            admin={"socket": cls.socket, "listen": f"127.0.0.1:{cls.admin_port}",
                   "token_file": token_file},
            roles={"close_spread": "200ms"})
        wait_for(lambda: os.path.exists(cls.socket), timeout=10, what="the admin socket")

    def api(self, method: str, path: str, body=None, *, tcp: bool = False, token: str = TOKEN):
        args = ["-X", method]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        if tcp:
            status, text = curl(args + [f"http://127.0.0.1:{self.admin_port}{path}"], token=token)
        else:
            status, text = curl(args + [f"http://isthmus{path}"], unix=self.socket)
        return status, (json.loads(text) if text.strip().startswith("{") else text)

    def login(self) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.ix.port("imap"), timeout=15)
        m.login(USER, PASSWORD)
        self.addCleanup(m.shutdown)
        return m

    def node_of_next_login(self) -> str:
        mark = len(self.ix.log_text())
        m = imaplib.IMAP4("127.0.0.1", self.ix.port("imap"), timeout=15)
        m.login(USER, PASSWORD)
        m.logout()
        return re.findall(r"login ok user=\S+ island=a node=(\S+)", self.ix.log_text()[mark:])[0]

    def test_tcp_needs_the_token_and_the_socket_does_not(self):
        status, body = self.api("GET", "/v1/status", tcp=True, token="")
        self.assertEqual(status, 401)
        self.assertIn("bearer token", body["error"])
        status, _ = self.api("GET", "/v1/status", tcp=True, token="x" * len(TOKEN))
        self.assertEqual(status, 401)
        self.assertIn("missing or wrong bearer token", self.ix.log_text())
        status, body = self.api("GET", "/v1/status", tcp=True)
        self.assertEqual(status, 200)
        self.assertEqual(body["instance"], "lab")
        status, body = self.api("GET", "/v1/status")
        self.assertEqual(status, 200)
        self.assertGreaterEqual(body["config_generation"], 1)  # the reload test may run first

    def test_state_reads(self):
        status, body = self.api("GET", "/v1/nodes")
        self.assertEqual(status, 200)
        nodes = {n["name"]: n for n in body["nodes"]}
        self.assertEqual(set(nodes), {"a-left", "a-right", "b-left", "b-right"})
        self.assertEqual(nodes["a-left"]["role"], "active")
        self.assertEqual(nodes["a-right"]["role"], "standby")
        self.assertIsNone(nodes["b-left"]["role"])
        status, body = self.api("GET", "/v1/islands")
        islands = {i["name"]: i for i in body["islands"]}
        self.assertEqual(islands["b"]["policy"], "balance")
        self.assertEqual(islands["a"]["policy"], "active-passive")
        status, body = self.api("GET", "/v1/users/ALICE%40example.org")
        self.assertEqual(status, 200)
        self.assertEqual((body["user"], body["island"], body["state"]), (USER, "a", "active"))
        status, body = self.api("GET", "/v1/users/nobody%40nowhere.invalid")
        self.assertEqual(status, 404)
        status, body = self.api("GET", "/v1/nothing")
        self.assertEqual(status, 404)
        status, body = self.api("POST", "/v1/kick", "not json")
        self.assertEqual(status, 400)

    def test_sessions_of_a_user_and_a_kick(self):
        first, second = self.login(), self.login()
        status, body = self.api("GET", "/v1/sessions?user=" + USER)
        self.assertEqual(status, 200)
        mine = [s for s in body["sessions"] if s["user"] == USER]
        self.assertEqual(len(mine), 2)
        for s in mine:
            self.assertEqual((s["protocol"], s["island"], s["phase"]), ("imap", "a", "relay"))
            self.assertIn(f"session={s['id']} login ok", self.ix.log_text())
        status, body = self.api("POST", "/v1/kick", {"user": USER})
        self.assertEqual((status, body), (200, {"kicked": 2}))
        for m in (first, second):
            with self.assertRaises((OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error)):
                m.noop()
        wait_for(lambda: self.ix.log_text().count('ended="closed: kicked by an operator"') >= 2,
                 timeout=10, what="two session-end lines")
        status, body = self.api("GET", "/v1/sessions?user=" + USER)
        self.assertEqual([s for s in body["sessions"] if s["user"] == USER], [])

    def test_drain_and_promote_change_where_logins_go(self):
        self.assertEqual(self.node_of_next_login(), "a-left")
        held = self.login()  # on a-left; promote closes it (close_spread 200ms)
        status, body = self.api("POST", "/v1/islands/a/promote", {"node": "a-right"}, tcp=True)
        self.assertEqual(status, 200, body)
        self.assertEqual((body["node"], body["epoch"]), ("a-right", 2))
        self.assertEqual(self.node_of_next_login(), "a-right")
        wait_for(lambda: "closed: a-left lost island a's active role" in self.ix.log_text(),
                 timeout=10, what="the old holder's session closed")
        with self.assertRaises((OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error)):
            held.noop()
        status, body = self.api("POST", "/v1/islands/a/promote", {"node": "b-left"})
        self.assertEqual(status, 404)
        self.assertIn("not a node of island", body["error"])
        status, body = self.api("POST", "/v1/islands/b/promote", {"node": "b-left"})
        self.assertEqual(status, 409)
        # Drain b-left: island b's logins all go to b-right; undrain.
        bob = "bob@example.org"
        status, body = self.api("POST", "/v1/nodes/b-left/drain")
        self.assertEqual((status, body), (200, {"node": "b-left", "draining": True}))
        mark = len(self.ix.log_text())
        for _ in range(4):
            m = imaplib.IMAP4("127.0.0.1", self.ix.port("imap"), timeout=15)
            m.login(bob, PASSWORD)
            m.logout()
        used = re.findall(r"login ok user=\S+ island=b node=(\S+)", self.ix.log_text()[mark:])
        self.assertEqual(used, ["b-right"] * 4)
        status, body = self.api("POST", "/v1/nodes/b-left/undrain")
        self.assertEqual(body["draining"], False)
        status, body = self.api("POST", "/v1/islands/a/promote", {"node": "a-left"})
        self.assertEqual((status, body["epoch"]), (200, 3))

    def test_reload_and_cache(self):
        status, before = self.api("GET", "/v1/status")
        status, body = self.api("POST", "/v1/reload")
        self.assertEqual(status, 200)
        self.assertEqual(body["config_generation"], before["config_generation"] + 1)
        status, body = self.api("POST", "/v1/cache/invalidate", {"user": USER})
        self.assertEqual(status, 409)  # the static directory has no cache

    def test_account_writes_are_checked_before_the_directory_is_asked(self):
        path = f"/v1/users/{USER}/account"
        for body, status, error in (
                ({"state": "moving"}, 409, "the static directory takes no writes"),
                ({"island": "zz"}, 400, 'no island "zz"'),
                ({"state": "gone"}, 400, "must be active, disabled or moving"),
                ({}, 400, "say what to write"),
                ({"colour": "blue"}, 400, 'unknown key "colour"'),
                ({"island": 7}, 400, '"island" must be a string')):
            got, answer = self.api("POST", path, body)
            self.assertEqual((got, error in answer.get("error", "")), (status, True),
                             (body, answer))
        got, answer = self.api("POST", "/v1/users/nobody@example.org/account",
                               {"state": "active"})
        self.assertEqual((got, "does not know" in answer["error"]), (404, True), answer)
        status, body = self.api("GET", f"/v1/users/{USER}")
        self.assertEqual((body["island"], body["state"]), ("a", "active"))
        status, body = self.api("GET", "/v1/status")
        self.assertIs(body["directory_writes"], False)

    def test_metrics_parse_and_count(self):
        from prometheus_client.parser import text_string_to_metric_families
        self.node_of_next_login()
        status, text = curl([f"http://127.0.0.1:{self.admin_port}/metrics"], token=TOKEN)
        self.assertEqual(status, 200)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name in ("isthmus_sessions_active", "isthmus_sessions", "isthmus_logins",
                     "isthmus_login_duration_seconds", "isthmus_node_up", "isthmus_node_sessions",
                     "isthmus_node_active_role", "isthmus_island_role_epoch",
                     "isthmus_lmtp_recipients", "isthmus_relayed_bytes", "isthmus_build_info"):
            self.assertIn(name, families)
        ok = [s.value for s in families["isthmus_logins"].samples
              if s.labels.get("result") == "ok" and s.labels.get("protocol") == "imap"]
        self.assertGreaterEqual(ok[0], 1)
        count = [s.value for s in families["isthmus_login_duration_seconds"].samples
                 if s.name.endswith("_count") and s.labels["protocol"] == "imap"][0]
        self.assertGreaterEqual(count, ok[0])
        up = {(s.labels["node"], s.labels["protocol"]): s.value
              for s in families["isthmus_node_up"].samples}
        for protocol in ("imap", "pop3", "lmtp"):
            self.assertEqual(up[("a-left", protocol)], 1)
        self.assertNotIn("alice", text)  # no per-user labels


if __name__ == "__main__":
    unittest.main(verbosity=2)
