"""The Grafana dashboard (deploy/grafana/isthmus.json) and the alert rules
(deploy/prometheus/alerts.yml) name only metrics, and labels, that the
daemon exports: the real binary is started (with a caching SQL directory, so
that the directory cache families are there too) and its GET /metrics is
the reference. A renamed metric or label fails this test. promtool checks
the rules and runs their unit tests (tests/package/alerts_test.yml).

Environment: ISTHMUS_BIN.
"""
import http.client
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

REPO = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "isthmus.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "tests" / "package" / "alerts_test.yml"
# Added by Prometheus to every scraped series, or by PromQL itself.
SCRAPE_LABELS = {"instance", "job", "__name__"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def scrape():
    """{family: set of label names} from a running isthmus."""
    work = tempfile.mkdtemp(prefix="isthmus-test-")
    try:
        with open(os.path.join(work, "sql.pw"), "w") as f:
            f.write("x\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        config = {
            "instance": "metrics-test",
            "listeners": [{"name": "imap", "protocol": "imap", "address": "127.0.0.1", "port": 0}],
            "islands": [{"name": "a", "policy": "active-passive", "nodes": [
                {"name": "a-left", "host": "127.0.0.1", "ports": {"imap": closed_port}},
                {"name": "a-right", "host": "127.0.0.1", "ports": {"imap": closed_port}}]}],
            "directory": {"type": "sql", "optional": True, "sql": {
                "servers": [f"127.0.0.1:{closed_port}"], "database": "mail", "user": "isthmus",
                "password_file": "sql.pw"}},
            "admin": {"socket": os.path.join(work, "admin.sock")},
        }
        with open(os.path.join(work, "isthmus.json"), "w") as f:
            json.dump(config, f)
        log = open(os.path.join(work, "isthmus.log"), "w")
        proc = subprocess.Popen([os.environ["ISTHMUS_BIN"], "--config",
                                 os.path.join(work, "isthmus.json")], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    conn = UnixHTTP(os.path.join(work, "admin.sock"))
                    conn.request("GET", "/metrics")
                    response = conn.getresponse()
                    text = response.read().decode()
                    if response.status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("no /metrics from isthmus:\n" +
                                         open(os.path.join(work, "isthmus.log")).read())
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
            log.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    families = {}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        families[name] = set()
        if kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                families[name + suffix] = set()
    for name, labels in re.findall(r"^([a-zA-Z_:][\w:]*)\{([^}]*)\}", text, re.M):
        families.setdefault(name, set()).update(re.findall(r"(\w+)=\"", labels))
    return families


def expressions():
    """(where, PromQL) of every panel target, variable and alert."""
    found = []
    dashboard = json.loads(DASHBOARD.read_text())

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"panel {panel['title']!r}", target["expr"]))
            walk(panel.get("panels", []))
    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            found.append((f"variable {variable['name']}", query["query"]))
    text = ALERTS.read_text()
    for name, expr in re.findall(r"- alert: (\S+)\n\s+expr: (\|\n(?:\s{10,}.*\n)+|.*)", text):
        found.append((f"alert {name}", expr.lstrip("|")))
    return found


def used_labels(expr):
    """Label names in selectors and in by()/without() clauses."""
    labels = set()
    for selector in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {w.strip() for w in clause.split(",") if w.strip()}
    for call in re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr):
        labels.add(call)
    return labels


class DashboardMetrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.families = scrape()

    def test_the_daemon_exports_what_the_dashboard_and_alerts_ask_for(self):
        exprs = expressions()
        self.assertGreater(len(exprs), 20)
        used = set()
        for where, expr in exprs:
            names = set(re.findall(r"\b(isthmus_[a-z0-9_]+)\b", expr))
            self.assertTrue(names, f"{where}: no isthmus metric in {expr!r}")
            for name in names:
                used.add(name)
                self.assertIn(name, self.families, f"{where}: {name} is not exported")
            allowed = SCRAPE_LABELS | {"le"}
            for name in names:
                allowed |= self.families[name]
            for label in used_labels(expr) - PROMQL_WORDS:
                self.assertIn(label, allowed, f"{where}: label {label!r} is not on {sorted(names)}")
        # The other way round: every family the daemon exports has a panel.
        base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
        for family in self.families:
            if not family.endswith(("_bucket", "_sum", "_count")):
                self.assertIn(family, base, f"{family} is exported but on no panel")

    def test_promtool_checks_and_tests_the_rules(self):
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool missing (package prometheus, deploy/install-deps.sh)")
        check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                               text=True, timeout=60)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        test = subprocess.run([promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True,
                              text=True, timeout=60, cwd=ALERT_TESTS.parent)
        self.assertEqual(test.returncode, 0, test.stdout + test.stderr)
        print(check.stdout.strip(), test.stdout.strip(), sep="\n")


if __name__ == "__main__":
    unittest.main()
