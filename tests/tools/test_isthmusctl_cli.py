"""isthmusctl against a fake admin API: argument handling, tables,
--json, exit codes.

Two fake Isthmus instances serve canned JSON: i1 on a unix socket (no
token), i2 on 127.0.0.1 over TCP (bearer token required). They record every
request, so the tests check what was sent where as well as what was
printed. Nothing else is needed: stdlib only, no isthmus binary; the
isthmusctl program is found as tests/lab/isthmusctl.py says
($ISTHMUSCTL_BIN, else build/ci/bin/isthmusctl).

usage: python3 -u tests/tools/test_isthmusctl_cli.py [-v]
"""
import concurrent.futures
import copy
import fcntl
import http.server
import json
import os
import pathlib
import pty
import re
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from lab.isthmusctl import isthmusctl_path  # noqa: E402

TOOL = isthmusctl_path()
TOKEN = "s3cret-token-7f1d"
WRONG_TOKEN = "wrong-token-0000"
USER = "alice@example.org"

# ---------------------------------------------------------------- canned answers

STATUS = {"instance": "i1", "version": "0.1.0", "config_generation": 3,
          "config_file": "/etc/isthmus/isthmus.json", "uptime_seconds": 3725.5,
          "sessions": {"imap": 4, "pop3": 0, "lmtp": 1}}

NODES = {"nodes": [
    {"name": "a-left", "island": "a", "host": "10.0.0.1", "state": "up", "draining": False,
     "drain_config": False, "sessions": 3, "role": "active"},
    {"name": "a-right", "island": "a", "host": "10.0.0.2", "state": "up", "draining": False,
     "drain_config": False, "sessions": 0, "role": "standby"},
    {"name": "b-left", "island": "b", "host": "10.0.0.3", "state": "degraded",
     "protocols": {"imap": "down", "pop3": "up", "lmtp": "down"}, "draining": False,
     "drain_config": False, "sessions": 1, "role": None},
    {"name": "b-right", "island": "b", "host": "10.0.0.4", "state": "down", "draining": True,
     "drain_config": True, "sessions": 0, "role": None},
]}

ISLANDS = {"islands": [
    {"name": "a", "policy": "active-passive", "holder": "a-left", "epoch": 2,
     "nodes": ["a-left", "a-right"], "sessions": 3},
    {"name": "b", "policy": "balance", "holder": None, "epoch": None,
     "nodes": ["b-left", "b-right"], "sessions": 1},
]}


def session(sid, node, client, seconds):
    return {"id": sid, "protocol": "imap", "client": client, "user": USER, "island": "a",
            "node": node, "phase": "relay", "since": "2026-11-23T17:01:02Z", "seconds": seconds}


USER_FOUND = {"user": USER, "found": True, "island": "a", "state": "active", "node_login": "alice",
              "sessions": []}


def routes_for(name: str, sessions: list) -> dict:
    """(method, path) -> (status, JSON object or text) for one instance."""
    status = dict(STATUS, instance=name)
    q_user = "/v1/sessions?user=alice%40example.org"
    nodes = copy.deepcopy(NODES)
    if name == "i2":
        nodes["nodes"][0]["sessions"] = 1
    return {
        ("GET", "/v1/status"): (200, status),
        ("GET", "/v1/nodes"): (200, nodes),
        ("GET", "/v1/islands"): (200, copy.deepcopy(ISLANDS)),
        ("GET", "/v1/users/alice%40example.org"): (200, dict(USER_FOUND)),
        ("GET", q_user): (200, {"sessions": sessions}),
        ("GET", "/v1/sessions"): (200, {"sessions": sessions}),
        ("GET", "/v1/sessions?node=a-left"): (200, {"sessions": sessions}),
        ("POST", "/v1/kick"): (200, {"kicked": len(sessions)}),
        ("POST", "/v1/nodes/a-left/drain"): (200, {"node": "a-left", "draining": True}),
        ("POST", "/v1/nodes/a-left/undrain"): (200, {"node": "a-left", "draining": False}),
        ("POST", "/v1/nodes/b-right/undrain"): (200, {"node": "b-right", "draining": True}),
        ("POST", "/v1/islands/a/promote"): (200, {"island": "a", "node": "a-right", "epoch": 3}),
        ("POST", "/v1/reload"): (200, {"config_generation": 4}),
        ("POST", "/v1/cache/invalidate"): (200, {"invalidated": True}),
        ("GET", "/metrics"): (200, f'# TYPE isthmus_sessions gauge\n'
                                   f'isthmus_sessions{{instance="{name}",protocol="imap"}} 4\n'),
    }


MOVE_ID = "20261203T225500Z-3f2a9c"


def job(state="running", step="precopy", number=1, history=(), **extra):
    """A move job as GET /v1/moves/ID answers it."""
    out = {"id": MOVE_ID, "user": USER, "from": "a", "to": "b", "mover": "imap",
           "state": state, "step": step, "step_number": number, "steps": 7,
           "owner": "isthmus-1", "epoch": 1, "created": "2026-12-03T22:55:00Z",
           "updated": "2026-12-03T22:55:04Z", "finished": None,
           "progress": {"pass": 1, "folders_done": 2, "folders": 5, "messages": 120,
                        "bytes": 250000, "bytes_total": 1000000, "rate": 50000,
                        "eta_seconds": 15},
           "exit_code": None, "result": "", "interruption_seconds": None,
           "history": [{"at": f"2026-12-03T22:55:0{i}Z", "text": text}
                       for i, text in enumerate(history)]}
    out.update(extra)
    return out


def answers(*replies):
    """A route answering REPLIES in turn, then the last one again."""
    left = list(replies)

    def route():
        return left.pop(0) if len(left) > 1 else left[0]
    return route


# ---------------------------------------------------------------- the fake admin API

class FakeAdmin:
    """One fake instance: canned routes, a record of requests, an optional token."""

    def __init__(self, name: str, token: str | None):
        self.name = name
        self.token = token
        self.lock = threading.Lock()
        self.routes = {}
        self.requests = []
        self.server = None

    def reset(self, routes: dict):
        with self.lock:
            self.routes = routes
            self.requests = []

    def seen(self) -> list:
        """[(method, path, body)] received so far."""
        with self.lock:
            return [(r["method"], r["path"], r["body"]) for r in self.requests]

    def handler(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def address_string(self):  # a unix socket peer has no address
                return fake.name

            def serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                auth = self.headers.get("Authorization")
                with fake.lock:
                    fake.requests.append({"method": self.command, "path": self.path, "body": body,
                                          "auth": auth,
                                          "content_type": self.headers.get("Content-Type")})
                    route = fake.routes.get((self.command, self.path))
                    if route is None and self.path.startswith("/v1/sessions?"):
                        route = (200, {"sessions": []})  # a filter nobody matches
                    if callable(route):  # a scripted sequence (answers())
                        route = route()
                if fake.token is not None and auth != f"Bearer {fake.token}":
                    status, payload = 401, {"error": "missing or wrong bearer token"}
                elif route is None:
                    status, payload = 404, {"error": f"no such thing: {self.path}"}
                else:
                    status, payload = route
                if isinstance(payload, str):
                    data, ctype = payload.encode(), "text/plain; version=0.0.4"
                else:
                    data, ctype = json.dumps(payload).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            do_GET = serve
            do_POST = serve

        return Handler

    def start(self, server):
        self.server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


# ---------------------------------------------------------------- the tests

class IsthmusctlCli(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if TOOL is None:
            raise RuntimeError("isthmusctl is not built (target isthmusctl; or set ISTHMUSCTL_BIN)")
        cls.dir = tempfile.mkdtemp(prefix="isthmusctl-test-")
        cls.sock_path = os.path.join(cls.dir, "admin.sock")
        cls.i1 = FakeAdmin("i1", token=None)
        cls.i1.start(UnixHTTPServer(cls.sock_path, cls.i1.handler()))
        cls.i2 = FakeAdmin("i2", token=TOKEN)
        cls.i2.start(http.server.ThreadingHTTPServer(("127.0.0.1", 0), cls.i2.handler()))
        cls.i2_url = f"http://127.0.0.1:{cls.i2.server.server_address[1]}"

        # A port where nothing listens: bound, never listening -> connection refused.
        cls.dead_sock = socket.socket()
        cls.dead_sock.bind(("127.0.0.1", 0))
        cls.dead_url = f"http://127.0.0.1:{cls.dead_sock.getsockname()[1]}"
        # A port that accepts (backlog) but never answers -> timeout.
        cls.mute_sock = socket.socket()
        cls.mute_sock.bind(("127.0.0.1", 0))
        cls.mute_sock.listen(8)
        cls.mute_url = f"http://127.0.0.1:{cls.mute_sock.getsockname()[1]}"

        cls.token_file = cls.write("admin.token", TOKEN + "\n")
        cls.wrong_token_file = cls.write("wrong.token", WRONG_TOKEN + "\n")
        i1 = {"name": "i1", "socket": cls.sock_path}
        i2 = {"name": "i2", "url": cls.i2_url, "token_file": cls.token_file}
        dead = {"name": "dead", "url": cls.dead_url, "token_file": cls.token_file}
        cls.config = cls.write_config("isthmusctl.json", [i1, i2])
        cls.config_dead_second = cls.write_config("dead2.json", [i1, dead])
        cls.config_dead_first = cls.write_config("dead1.json", [dead, i1])
        cls.config_bad_token = cls.write_config(
            "badtoken.json", [i1, dict(i2, token_file=cls.wrong_token_file)])

    @classmethod
    def tearDownClass(cls):
        cls.i1.stop()
        cls.i2.stop()
        cls.dead_sock.close()
        cls.mute_sock.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def write(cls, name, text):
        path = os.path.join(cls.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    @classmethod
    def write_config(cls, name, instances, timeout="2s"):
        return cls.write(name, json.dumps({"instances": instances, "timeout": timeout}))

    def setUp(self):
        self.i1.reset(routes_for("i1", [session("k3x7q2aa9mbe", "a-left", "192.0.2.7:51234", 61.2),
                                        session("k3x7q2aa9mbf", "a-left", "192.0.2.8:40000", 5.0)]))
        self.i2.reset(routes_for("i2", [session("p9d2m1zz0abc", "a-left", "198.51.100.3:2222",
                                                3700.0)]))

    # -- helpers

    def ctl(self, *args, config=None, expect=None):
        """Run isthmusctl; returns (exit code, stdout, stderr)."""
        env = {k: v for k, v in os.environ.items() if k != "ISTHMUSCTL_CONFIG"}
        cmd = [TOOL]
        if config is not False:
            cmd += ["--config", config or self.config]
        proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30, env=env)
        if expect is not None:
            self.assertEqual(proc.returncode, expect,
                             f"isthmusctl {' '.join(args)}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
        for out in (proc.stdout, proc.stderr):
            self.assertNotIn(TOKEN, out)
            self.assertNotIn(WRONG_TOKEN, out)
        return proc.returncode, proc.stdout, proc.stderr

    def ctl_many(self, runs):
        """Several independent ctl() calls at once (kwargs dicts); results in order."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(self.ctl, *r.pop("args"), **r) for r in runs]
            return [f.result() for f in futures]

    def ctl_json(self, *args, config=None, expect=0):
        rc, out, err = self.ctl("--json", *args, config=config, expect=expect)
        data = json.loads(out)
        self.assertEqual(data["exit_code"], rc)
        return data, err

    def assertAligned(self, text, header_first):
        """The table starting at the line beginning with HEADER_FIRST is
        aligned: the positions blank on every one of its lines separate
        exactly as many columns as the header has names (names are
        separated by two spaces or more)."""
        lines = text.splitlines()
        start = next(i for i, l in enumerate(lines) if l.startswith(header_first))
        block = []
        for line in lines[start:]:
            if not line.strip():
                break
            block.append(line)
        self.assertGreater(len(block), 1, text)
        width = max(map(len, block))
        blank = [all(i >= len(l) or l[i] == " " for l in block) for i in range(width)]
        columns, run = 1, 0
        for i in range(width):
            if blank[i]:
                run += 1
            else:
                columns += run >= 2 and i > run
                run = 0
        names = len(re.split(r"  +", block[0].strip()))
        self.assertEqual(columns, names, f"table not aligned:\n" + "\n".join(block))

    # -- argument handling

    def test_help_everywhere(self):
        commands = ("where", "kick", "nodes", "islands", "drain", "undrain", "promote", "reload",
                    "status", "metrics", "move", "sessions", "cache-invalidate", "moves",
                    "move-abort", "move-resume")
        results = self.ctl_many([{"args": ("--help",), "config": False, "expect": 0}] +
                                [{"args": (cmd, "--help"), "config": False, "expect": 0}
                                 for cmd in commands])
        self.assertIn("exit codes:", results[0][1])
        for cmd, (rc, out, _) in zip(commands, results[1:]):
            with self.subTest(cmd=cmd):
                self.assertIn(f"usage: isthmusctl {cmd}", out)
                self.assertIn("examples:", out)
                self.assertIn("exit codes:", out)
        self.assertEqual(self.i1.seen() + self.i2.seen(), [])

    def test_usage_errors_exit_1_and_send_nothing(self):
        missing = os.path.join(self.dir, "missing.json")
        cases = [
            ((), None, "required: COMMAND"),
            (("frobnicate",), None, "invalid choice"),
            (("kick",), None, "exactly one of"),
            (("kick", USER, "--node", "a-left"), None, "exactly one of"),
            (("promote", "a"), None, "required"),
            (("nodes", "--timeout", "soon"), None, "duration"),
            (("nodes",), missing, "does not exist"),
            (("nodes",), self.write("broken.json", '{"instances": [}'), "not valid JSON"),
            (("nodes",), self.write("typo.json", json.dumps(
                {"instances": [{"name": "x", "socket": "/s", "tokenfile": "/t"}]})), "tokenfile"),
            (("nodes",), self.write("both.json", json.dumps(
                {"instances": [{"name": "x", "socket": "/s", "url": "http://h:1"}]})), "exactly one"),
            (("--instance", "nosuch", "nodes"), None, "not an instance of the config"),
            (("--instance", "ftp://h:1", "nodes"), None, "only http"),
        ]
        results = self.ctl_many([{"args": args, "config": config, "expect": 1}
                                 for args, config, _ in cases])
        for (args, _, message), (rc, out, err) in zip(cases, results):
            with self.subTest(args=args):
                self.assertIn(message, err)
                self.assertEqual(out, "")
        self.assertEqual(self.i1.seen() + self.i2.seen(), [])

    def test_unreadable_token_file_is_a_config_error(self):
        config = self.write_config("notoken.json", [
            {"name": "i2", "url": self.i2_url, "token_file": os.path.join(self.dir, "nope")}])
        rc, out, err = self.ctl("status", config=config, expect=1)
        self.assertIn("cannot read token_file", err)
        self.assertEqual(self.i2.seen(), [])

    def test_global_options_after_the_command(self):
        data, _ = self.ctl_json("status")  # --json before the command
        rc, out, _ = self.ctl("status", "--json", "--instance", "i2", expect=0)
        data = json.loads(out)
        self.assertEqual([i["instance"] for i in data["instances"]], ["i2"])
        self.assertEqual(self.i1.seen(), [("GET", "/v1/status", None)])  # only the first run

    # -- status

    def test_status(self):
        rc, out, err = self.ctl("status", expect=0)
        self.assertEqual(err, "")
        self.assertIn("INSTANCE", out)
        lines = out.splitlines()
        self.assertEqual(len(lines), 3, out)
        self.assertTrue(lines[1].startswith("i1 "))
        self.assertTrue(lines[2].startswith("i2 "))
        self.assertIn("1h02m", out)  # uptime 3725.5 s
        self.assertIn("/etc/isthmus/isthmus.json", out)
        self.assertAligned(out, "INSTANCE")
        # The token goes to TCP only, and as a bearer token.
        self.assertEqual([r["auth"] for r in self.i1.requests], [None])
        self.assertEqual([r["auth"] for r in self.i2.requests], [f"Bearer {TOKEN}"])

    # -- where

    def test_where_found(self):
        rc, out, err = self.ctl("where", USER, expect=0)
        self.assertEqual(err, "")
        self.assertIn("active-passive: holder a-left, epoch 2", out)
        self.assertRegex(out, r"state\s+active")
        self.assertRegex(out, r"node login\s+alice")
        self.assertIn("a-left (up, active)", out)
        self.assertIn("a-right (up, standby)", out)
        self.assertIn("3 live sessions:", out)
        table = out[out.index("INSTANCE"):]
        self.assertEqual(len(table.splitlines()), 4, out)
        self.assertRegex(table, r"\ni1 +k3x7q2aa9mbe +imap +192\.0\.2\.7:51234 +a +a-left +relay")
        self.assertRegex(table, r"\ni2 +p9d2m1zz0abc ")
        self.assertIn("1h01m", table)  # 3700 s
        self.assertAligned(out, "INSTANCE")
        # The directory is asked once (first instance), sessions everywhere.
        self.assertEqual(self.i1.seen(), [("GET", "/v1/users/alice%40example.org", None),
                                          ("GET", "/v1/islands", None),
                                          ("GET", "/v1/nodes", None),
                                          ("GET", "/v1/sessions?user=alice%40example.org", None)])
        self.assertEqual(self.i2.seen(), [("GET", "/v1/sessions?user=alice%40example.org", None)])

    def test_where_unknown_user_exits_4_and_encodes_the_name(self):
        user = "no body/x@example.org"
        rc, out, err = self.ctl("where", user, expect=4)
        self.assertIn("not known to the directory", err)
        self.assertIn("not known to the directory", out)
        self.assertIn("no live sessions", out)
        self.assertEqual(self.i1.seen()[0], ("GET", "/v1/users/no%20body%2Fx%40example.org", None))
        self.assertEqual(self.i2.seen(), [("GET", "/v1/sessions?user=no%20body%2Fx%40example.org",
                                           None)])

    def test_where_json(self):
        data, err = self.ctl_json("where", USER)
        self.assertTrue(data["found"])
        self.assertEqual(data["directory"]["island"], "a")
        self.assertEqual(data["island"]["holder"], "a-left")
        self.assertEqual(sorted((s["instance"], s["id"]) for s in data["sessions"]),
                         [("i1", "k3x7q2aa9mbe"), ("i1", "k3x7q2aa9mbf"), ("i2", "p9d2m1zz0abc")])
        self.assertEqual(data["errors"], [])

    def test_where_directory_unavailable_on_first_asks_the_next(self):
        self.i1.routes[("GET", "/v1/users/alice%40example.org")] = (
            503, {"error": "directory unavailable: ldap timed out"})
        rc, out, err = self.ctl("where", USER, expect=0)
        self.assertIn("i1", err)
        self.assertIn("directory unavailable: ldap timed out", err)
        self.assertRegex(out, r"asked\s+i2")
        self.assertIn("3 live sessions:", out)  # i1 still lists its sessions

    # -- kick

    def test_kick_user(self):
        rc, out, err = self.ctl("kick", USER, expect=0)
        self.assertEqual(err, "")
        self.assertRegex(out, r"i1 +2")
        self.assertRegex(out, r"i2 +1")
        self.assertIn(f"{USER}: 3 sessions closed", out)
        for fake in (self.i1, self.i2):
            self.assertEqual(fake.seen(), [("POST", "/v1/kick", {"user": USER})])
            self.assertEqual(fake.requests[0]["content_type"], "application/json")

    def test_kick_node_json(self):
        data, _ = self.ctl_json("kick", "--node", "a-left")
        self.assertEqual(data["total"], 3)
        self.assertEqual(data["target"], {"node": "a-left"})
        self.assertEqual([i["response"]["kicked"] for i in data["instances"]], [2, 1])
        self.assertEqual(self.i2.seen(), [("POST", "/v1/kick", {"node": "a-left"})])

    def test_kick_island(self):
        self.ctl("kick", "--island", "b", expect=0)
        self.assertEqual(self.i1.seen(), [("POST", "/v1/kick", {"island": "b"})])

    # -- nodes

    def test_nodes(self):
        rc, out, err = self.ctl("nodes", expect=0)
        self.assertEqual(err, "")
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NODE", "ISLAND", "INSTANCE", "STATE", "DRAINING",
                                            "SESSIONS", "ROLE"])
        self.assertEqual(len(lines), 1 + 8)
        self.assertAligned(out, "NODE")
        # Grouped by node, one row per instance.
        self.assertEqual([l.split()[:3] for l in lines[1:3]], [["a-left", "a", "i1"],
                                                               ["a-left", "a", "i2"]])
        self.assertRegex(lines[1], r"up +no +3 +active$")
        self.assertRegex(lines[2], r"up +no +1 +active$")
        self.assertRegex(out, r"b-right +b +i1 +down +yes \(config\) +0 +-")
        # Down for some protocols only (its imapd and lmtpd died): which.
        self.assertRegex(out, r"b-left +b +i1 +degraded \(imap, lmtp down\) +no +1 +-")

    def test_nodes_unreachable_instance_gives_partial_output_and_exit_2(self):
        rc, out, err = self.ctl("nodes", config=self.config_dead_second, expect=2)
        self.assertIn("a-left", out)
        self.assertIn("i1", out)
        self.assertIn(f"isthmusctl: dead ({self.dead_url}): connection refused", err)

    def test_nodes_server_error_exit_2(self):
        self.i2.routes[("GET", "/v1/nodes")] = (500, {"error": "internal error"})
        rc, out, err = self.ctl("nodes", expect=2)
        self.assertIn(f"isthmusctl: i2 ({self.i2_url}): server error (HTTP 500): internal error", err)
        self.assertRegex(out, r"a-left +a +i1")

    def test_nodes_json(self):
        data, _ = self.ctl_json("nodes", "--instance", "i1")
        self.assertEqual(len(data["instances"]), 1)
        self.assertEqual(data["instances"][0]["response"], NODES)

    # -- islands

    def test_islands_agree(self):
        rc, out, err = self.ctl("islands", expect=0)
        self.assertEqual(err, "")
        self.assertAligned(out, "ISLAND")
        self.assertRegex(out, r"a +i1 +active-passive +a-left +2 +a-left,a-right +3")
        self.assertRegex(out, r"b +i2 +balance +- +- +b-left,b-right +1")

    def test_islands_disagree_exit_5(self):
        islands = copy.deepcopy(ISLANDS)
        islands["islands"][0].update(holder="a-right", epoch=3)
        self.i2.routes[("GET", "/v1/islands")] = (200, islands)
        rc, out, err = self.ctl("islands", expect=5)
        self.assertIn("instances disagree on island a", err)
        self.assertIn("i1 says holder a-left epoch 2", err)
        self.assertIn("i2 says holder a-right epoch 3", err)
        self.assertNotIn("island b", err)
        self.assertRegex(out, r"a +i2 +active-passive +a-right +3")
        data, _ = self.ctl_json("islands", expect=5)
        self.assertEqual([d["island"] for d in data["disagreements"]], ["a"])

    def test_islands_missing_on_one_instance_exit_5(self):
        islands = copy.deepcopy(ISLANDS)
        del islands["islands"][1]
        self.i2.routes[("GET", "/v1/islands")] = (200, islands)
        rc, out, err = self.ctl("islands", expect=5)
        self.assertIn("island b: configured on i1 but not on i2", err)

    # -- drain / undrain

    def test_drain_and_undrain(self):
        rc, out, err = self.ctl("drain", "a-left", expect=0)
        self.assertRegex(out, r"i1 +a-left +yes")
        self.assertRegex(out, r"i2 +a-left +yes")
        self.assertIn("a-left gets no new sessions on 2 of 2 instances", out)
        rc, out, err = self.ctl("undrain", "a-left", expect=0)
        self.assertRegex(out, r"i2 +a-left +no")
        for fake in (self.i1, self.i2):
            self.assertEqual(fake.seen(), [("POST", "/v1/nodes/a-left/drain", None),
                                           ("POST", "/v1/nodes/a-left/undrain", None)])

    def test_undrain_of_a_config_drained_node_says_so(self):
        rc, out, err = self.ctl("undrain", "b-right", expect=0)
        self.assertIn("still draining on i1, i2", out)

    def test_drain_unknown_node_exit_4(self):
        rc, out, err = self.ctl("drain", "a-lfet", expect=4)
        self.assertIn("not found: no such thing: /v1/nodes/a-lfet/drain", err)

    # -- promote

    def test_promote(self):
        rc, out, err = self.ctl("promote", "a", "a-right", expect=0)
        self.assertIn("a-right holds the role now, epoch 3 (through i1)", out)
        self.assertEqual(self.i1.seen(), [("POST", "/v1/islands/a/promote", {"node": "a-right"})])
        self.assertEqual(self.i2.seen(), [])

    def test_promote_refused_exit_3(self):
        self.i1.routes[("POST", "/v1/islands/a/promote")] = (
            409, {"error": "a-right is down: promote refused"})
        rc, out, err = self.ctl("promote", "a", "a-right", expect=3)
        self.assertIn("refused (HTTP 409): a-right is down: promote refused", err)
        self.assertEqual(out, "")
        self.assertEqual(self.i2.seen(), [])  # a refusal is an answer: not asked elsewhere

    def test_promote_goes_to_the_first_instance_that_answers(self):
        rc, out, err = self.ctl("promote", "a", "a-right", config=self.config_dead_first, expect=0)
        self.assertIn("connection refused", err)
        self.assertIn("epoch 3", out)
        self.assertEqual(len(self.i1.seen()), 1)

    # -- reload

    def test_reload(self):
        rc, out, err = self.ctl("reload", expect=0)
        self.assertRegex(out, r"i1 +4\ni2 +4")

    def test_reload_invalid_config_exit_3(self):
        self.i1.routes[("POST", "/v1/reload")] = (
            400, {"error": "islands.a.nodes: unknown node a-lft\nlisten[0]: bad port 99999"})
        rc, out, err = self.ctl("reload", expect=3)
        self.assertIn("i1", err)
        self.assertIn("old one stays", err)
        self.assertIn("    islands.a.nodes: unknown node a-lft\n", err)
        self.assertIn("    listen[0]: bad port 99999\n", err)
        self.assertRegex(out, r"i2 +4")
        self.assertIn("reloaded on 1 of 2 instances", out)

    # -- errors

    def test_bad_token_exit_6(self):
        rc, out, err = self.ctl("status", config=self.config_bad_token, expect=6)
        self.assertIn("authentication failed", err)
        self.assertIn(self.wrong_token_file, err)
        self.assertRegex(out, r"\ni1 ")  # i1 still answered
        self.assertEqual(self.i2.requests[0]["auth"], f"Bearer {WRONG_TOKEN}")

    def test_url_on_the_command_line(self):
        rc, out, err = self.ctl("--instance", self.i2_url, "status", config=False, expect=6)
        self.assertIn("no token was sent", err)
        rc, out, err = self.ctl("--instance", self.i2_url, "--token-file", self.token_file,
                                "status", config=False, expect=0)
        self.assertIn(self.i2_url, out)
        # A configured URL keeps the config's name and token.
        rc, out, err = self.ctl("--instance", self.i2_url, "status", expect=0)
        self.assertTrue(out.splitlines()[1].startswith("i2 "))

    def test_socket_on_the_command_line(self):
        rc, out, err = self.ctl("--instance", self.sock_path, "status", config=False, expect=0)
        self.assertIn(self.sock_path, out)
        gone = os.path.join(self.dir, "gone.sock")
        rc, out, err = self.ctl("--instance", gone, "status", config=False, expect=2)
        self.assertIn(f"isthmusctl: {gone}: no such socket", err)

    def test_timeout_exit_2(self):
        started = time.monotonic()
        rc, out, err = self.ctl("--instance", self.mute_url, "--token-file", self.token_file,
                                "--timeout", "300ms", "status", config=False, expect=2)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("no answer within 300ms", err)

    def test_auth_failure_wins_over_unreachable(self):
        config = self.write_config("mixed.json", [
            {"name": "dead", "url": self.dead_url},
            {"name": "i2", "url": self.i2_url, "token_file": self.wrong_token_file}])
        data, err = self.ctl_json("nodes", config=config, expect=6)
        self.assertEqual(sorted(e["exit_code"] for e in data["errors"]), [2, 6])

    # -- the rest

    def test_move_local_goes_to_the_move_tool_which_needs_its_config_section(self):
        # isthmus-move does the move (tests/system/test_move.py);
        # without a "move" section it refuses before asking any instance.
        rc, out, err = self.ctl("move", "--local", USER, "--to", "b", expect=1)
        self.assertIn("move", err)
        self.assertEqual(self.i1.seen() + self.i2.seen(), [])
        rc, out, err = self.ctl("move", "--local", "--help", expect=0)
        self.assertIn("--resume", out)
        rc, out, err = self.ctl("move", USER, "--resume", expect=1)  # a local mover's option
        self.assertIn("move --local", err)
        self.assertIn("move-resume ID", err)
        rc, out, err = self.ctl("move", USER, expect=1)
        self.assertIn("--to ISLAND", err)
        rc, out, err = self.ctl("move", "--follow", MOVE_ID, USER, expect=1)
        self.assertEqual(self.i1.seen() + self.i2.seen(), [])

    # -- move jobs of the daemon

    def test_move_starts_a_job_and_follows_it_to_the_end(self):
        self.i1.routes[("POST", "/v1/moves")] = (202, job(history=["created"]))
        self.i1.routes[("GET", f"/v1/moves/{MOVE_ID}")] = answers(
            (200, job(history=["created", "[0/7] preflight: ok"])),
            (200, job(state="done", step="report", number=7, result="moved alice to b",
                      history=["created", "[0/7] preflight: ok", "evil \x1b[2J", "done"],
                      finished="2026-12-03T22:56:00Z")))
        started = time.monotonic()
        rc, out, err = self.ctl("move", USER, "--to", "b", expect=0)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(out.splitlines(), [
            f"move {MOVE_ID} started on i1",
            "2026-12-03T22:55:00Z  created",
            "2026-12-03T22:55:01Z  [0/7] preflight: ok",
            "2026-12-03T22:55:02Z  evil \\x1b[2J",
            "2026-12-03T22:55:03Z  done",
            f"move {MOVE_ID} done: moved alice to b"])
        self.assertNotIn("\r", out)  # not a terminal: no progress line
        self.assertEqual(self.i1.seen(), [("POST", "/v1/moves", {"user": USER, "to": "b"}),
                                          ("GET", f"/v1/moves/{MOVE_ID}", None),
                                          ("GET", f"/v1/moves/{MOVE_ID}", None)])

    def test_move_verify_failed_exit_7_json_and_mover(self):
        self.i1.routes[("POST", "/v1/moves")] = (202, job())
        final = job(state="verify_failed", step="verify", number=5, result="rolled back",
                    exit_code=7, finished="2026-12-03T22:56:00Z")
        self.i1.routes[("GET", f"/v1/moves/{MOVE_ID}")] = (200, final)
        rc, out, err = self.ctl("--json", "move", USER, "--to", "b", "--mover", "dsync",
                                expect=7)
        self.assertEqual(json.loads(out), final)
        self.assertEqual(self.i1.seen()[0],
                         ("POST", "/v1/moves", {"user": USER, "to": "b", "mover": "dsync"}))
        self.ctl("move", USER, "--to", "b", "--mover", "rsync", expect=1)

    def test_move_detach_and_failed_or_aborted_exit_3(self):
        self.i1.routes[("POST", "/v1/moves")] = (202, job())
        rc, out, err = self.ctl("move", USER, "--to", "b", "--detach", expect=0)
        self.assertIn(f"move {MOVE_ID} started on i1", out)
        self.assertIn(f"isthmusctl move --follow {MOVE_ID}", out)
        self.assertEqual([r[0] for r in self.i1.seen()], ["POST"])
        for state in ("failed", "aborted"):
            self.i1.routes[("GET", f"/v1/moves/{MOVE_ID}")] = (200, job(state=state,
                                                                         result="step failed"))
            rc, out, err = self.ctl("move", "--follow", MOVE_ID, expect=3)
            self.assertIn(f"move {MOVE_ID} {state}: step failed", out)

    def test_follow_goes_to_another_instance_and_sees_a_take_over(self):
        self.i1.routes[("GET", f"/v1/moves/{MOVE_ID}")] = answers(
            (200, job(history=["created"])), (500, "gone"))
        self.i2.routes[("GET", f"/v1/moves/{MOVE_ID}")] = (200, job(
            state="done", owner="isthmus-2", epoch=2, result="moved",
            history=["created", "taken over by isthmus-2"]))
        rc, out, err = self.ctl("move", "--follow", MOVE_ID, expect=0)
        self.assertEqual(out.splitlines(), ["2026-12-03T22:55:00Z  created",
                                            "2026-12-03T22:55:01Z  taken over by isthmus-2",
                                            f"move {MOVE_ID} done: moved"])
        self.assertIn("taken over by isthmus-2 (epoch 2)", err)
        self.assertIn("through i2", err)

    def test_follow_ctrl_c_detaches_and_never_aborts(self):
        self.i1.routes[("GET", f"/v1/moves/{MOVE_ID}")] = (200, job(history=["created"]))
        env = {k: v for k, v in os.environ.items() if k != "ISTHMUSCTL_CONFIG"}
        proc = subprocess.Popen([TOOL, "--config", self.config, "move", "--follow", MOVE_ID],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.assertIn("created", proc.stdout.readline())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 130, err)
        self.assertIn(f"re-attach: isthmusctl move --follow {MOVE_ID}", err)
        self.assertTrue(all(method == "GET" for method, _, _ in self.i1.seen()))

    def test_follow_on_a_terminal_draws_one_progress_line(self):
        self.i1.routes[("GET", f"/v1/moves/{MOVE_ID}")] = answers(
            (200, job(history=["created"])),
            (200, job(state="done", result="moved", history=["created", "done"])))
        primary, secondary = pty.openpty()
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {k: v for k, v in os.environ.items() if k != "ISTHMUSCTL_CONFIG"}
        proc = subprocess.Popen([TOOL, "--config", self.config, "move", "--follow", MOVE_ID],
                                stdout=secondary, stderr=subprocess.DEVNULL, env=env)
        os.close(secondary)
        out = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the program has closed the terminal
                break
            if not chunk:
                break
            out += chunk
        os.close(primary)
        self.assertEqual(proc.wait(timeout=10), 0)
        text = out.decode()
        self.assertIn("\r\x1b[K[1/7] precopy [#####---------------] 25% 250.0 kB/1.0 MB "
                      "pass 1 2/5 folders 50.0 kB/s ETA 15s", text)
        self.assertTrue(text.endswith("\r\x1b[K2026-12-03T22:55:01Z  done\r\n"
                                      f"move {MOVE_ID} done: moved\r\n"), text)

    def test_move_refusals(self):
        self.i1.routes[("POST", "/v1/moves")] = (
            409, {"error": "alice@example.org has a move running", "id": MOVE_ID})
        rc, out, err = self.ctl("move", USER, "--to", "b", expect=3)
        self.assertIn("has a move running", err)
        self.assertIn(f"isthmusctl move --follow {MOVE_ID}", err)
        self.i1.routes[("POST", "/v1/moves")] = (503, {"error": "moves are not configured"})
        rc, out, err = self.ctl("move", USER, "--to", "b", expect=1)
        self.assertIn("moves are not configured", err)
        self.assertIn('configure "moves"', err)
        self.assertIn("isthmusctl move --local", err)
        self.assertEqual(self.i2.seen(), [])  # a 503 with the daemon's error is an answer
        rc, out, err = self.ctl("move", "--follow", "nope", expect=4)

    def test_moves_table_and_json(self):
        listing = [{k: v for k, v in job().items() if k != "history"},
                   dict(job(state="done", step="report", number=7), id="20261202T100000Z-aaaaaa",
                        progress=None, user="evil\x1bname")]
        self.i1.routes[("GET", "/v1/moves")] = (200, {"moves": listing})
        rc, out, err = self.ctl("moves", expect=0)
        self.assertAligned(out, "ID ")
        self.assertRegex(out, rf"{MOVE_ID} +{re.escape(USER)} +a +b +imap +running +precopy "
                              rf"+25% +isthmus-1 +2026-12-03T22:55:04Z")
        self.assertRegex(out, r"evil\\x1bname .* done +report +- ")
        data = json.loads(self.ctl("--json", "moves", expect=0)[1])
        self.assertEqual(data["moves"], listing)
        self.i1.routes[("GET", "/v1/moves")] = (200, {"moves": []})
        self.assertEqual(self.ctl("moves", expect=0)[1], "no moves\n")

    def test_move_abort_and_resume(self):
        path = f"/v1/moves/{MOVE_ID}"
        self.i1.routes[("POST", path + "/abort")] = (202, job(state="aborting"))
        rc, out, err = self.ctl("move-abort", MOVE_ID, expect=0)
        self.assertIn("abort asked", out)
        self.assertIn("state aborting", out)
        self.i1.routes[("POST", path + "/resume")] = (
            409, {"error": "the move has finished"})
        rc, out, err = self.ctl("move-resume", MOVE_ID, expect=3)
        self.assertIn("the move has finished", err)
        self.ctl("move-abort", "other", expect=4)
        self.ctl("move-abort", expect=1)

    def test_metrics(self):
        rc, out, err = self.ctl("metrics", expect=0)
        self.assertIn('isthmus_sessions{instance="i1",protocol="imap"} 4', out)
        rc, out, err = self.ctl("metrics", "--instance", "i2", expect=0)
        self.assertIn('instance="i2"', out)
        self.assertEqual(self.i1.seen(), [("GET", "/metrics", None)])

    def test_sessions_and_cache_invalidate(self):
        rc, out, err = self.ctl("sessions", "--node", "a-left", expect=0)
        self.assertIn("3 live sessions", out)
        self.assertIn("USER", out)
        self.ctl("cache-invalidate", USER, expect=0)
        self.ctl("cache-invalidate", expect=0)
        self.assertEqual(self.i2.seen(), [("GET", "/v1/sessions?node=a-left", None),
                                          ("POST", "/v1/cache/invalidate", {"user": USER}),
                                          ("POST", "/v1/cache/invalidate", {})])

    def test_json_everywhere_parses(self):
        commands = (("status",), ("nodes",), ("islands",), ("where", USER), ("kick", USER),
                    ("drain", "a-left"), ("undrain", "a-left"), ("promote", "a", "a-right"),
                    ("reload",), ("metrics",), ("sessions",), ("cache-invalidate",))
        results = self.ctl_many([{"args": ("--json",) + args, "expect": 0} for args in commands])
        for args, (rc, out, err) in zip(commands, results):
            with self.subTest(args=args):
                data = json.loads(out)
                self.assertEqual(data["command"], args[0])
                self.assertEqual(data["exit_code"], 0)
                self.assertEqual(data["errors"], [])

    def test_control_characters_from_the_server_are_escaped(self):
        nodes = copy.deepcopy(NODES)
        nodes["nodes"][0]["name"] = "evil\x1b[31mnode"
        self.i1.routes[("GET", "/v1/nodes")] = (200, nodes)
        rc, out, err = self.ctl("nodes", "--instance", "i1", expect=0)
        self.assertNotIn("\x1b", out)
        self.assertIn("evil\\x1b[31mnode", out)


    # -- untrusted answers: never a crash or a hang

    def test_garbage_huge_and_slow_answers_fail_cleanly(self):
        """An instance that is no admin API: each answer is an error of its
        own (exit 2), in time, and the other instance still answers."""
        request_end = b"\r\n\r\n"
        body_nested = b"[" * 100000 + b"]" * 100000

        def huge(c):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
            for _ in range(1600):
                c.sendall(b"x" * 65536)

        def trickle(c):
            c.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100):
                c.sendall(b"X-Slow: yes\r\n")
                time.sleep(0.1)

        behaviours = {
            "garbage": (lambda c: c.sendall(b"\x00\x01garbage\xff\r\n\r\n"),
                        "did not answer HTTP"),
            "silent close": (lambda c: None, "closed the connection without answering"),
            "huge": (huge, "answered with more than 32 MiB"),
            "nested": (lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                           % len(body_nested) + body_nested),
                       "not JSON"),
            "slow": (trickle, "no answer within 1.0s"),
        }
        for name, (behaviour, message) in behaviours.items():
            with self.subTest(name):
                server = socket.socket()
                server.bind(("127.0.0.1", 0))
                server.listen(4)

                def serve(server=server, behaviour=behaviour):
                    conn, _ = server.accept()
                    with conn:
                        data = b""
                        while request_end not in data:
                            chunk = conn.recv(4096)
                            if not chunk:
                                return
                            data += chunk
                        try:
                            behaviour(conn)
                        except OSError:
                            pass

                thread = threading.Thread(target=serve, daemon=True)
                thread.start()
                url = f"http://127.0.0.1:{server.getsockname()[1]}"
                config = self.write_config("garbage.json", [
                    {"name": "bad", "url": url}, {"name": "i1", "socket": self.sock_path}],
                    timeout="1s")
                started = time.monotonic()
                rc, out, err = self.ctl("nodes", config=config, expect=2)
                self.assertLess(time.monotonic() - started, 5)
                self.assertIn(f"isthmusctl: bad ({url}): ", err)
                self.assertIn(message, err)
                self.assertRegex(out, r"a-left +a +i1")
                server.close()
                thread.join(timeout=15)


if __name__ == "__main__":
    unittest.main()
