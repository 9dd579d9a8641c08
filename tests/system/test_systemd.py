"""What systemd sees of the real binary: the sd_notify datagrams (READY=1
only once the listeners are bound and the directory answers, RELOADING=1 and
READY=1 around reloads, STOPPING=1), on a NOTIFY_SOCKET of our own, as
Type=notify would give it. The journal sink itself is tested in
tests/unit/systemd_test.cpp."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from support import binary, procs


class Notify:
    """A NOTIFY_SOCKET like systemd's: a bound datagram socket."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.path = path

    def next(self, timeout=10.0):
        """The next datagram as a dict, or None after TIMEOUT seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def close(self):
        self.sock.close()


class SystemdNotify(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="isthmus-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.notify = Notify(os.path.join(self.dir, "notify"))
        self.addCleanup(self.notify.close)

    def config(self, directory=None, port=None):
        with open(os.path.join(self.dir, "users.map"), "w") as f:
            f.write("alice@example.org a\n")
        self.port = port or procs.free_port()
        config = {
            "instance": "notify-test",
            "listeners": [{"name": "imap", "protocol": "imap", "address": "127.0.0.1",
                           "port": self.port}],
            "islands": [{"name": "a", "nodes": [{"name": "a-left", "host": "127.0.0.1",
                                                  "ports": {"imap": 1}}]}],
            "health": {"active": False},
            "directory": directory or {"type": "static", "file": "users.map"},
            "admin": {"socket": os.path.join(self.dir, "admin.sock")},
        }
        path = os.path.join(self.dir, "isthmus.json")
        with open(path, "w") as f:
            json.dump(config, f)
        return path

    def start(self, config_path):
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        log = open(os.path.join(self.dir, "isthmus.log"), "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen([binary(), "--config", config_path], env=env,
                                stdout=log, stderr=subprocess.STDOUT)

        def stop():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.addCleanup(stop)
        return proc

    def log(self):
        with open(os.path.join(self.dir, "isthmus.log")) as f:
            return f.read()

    def connectable(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            return True
        except OSError:
            return False

    def test_ready_reload_stop(self):
        path = self.config()
        proc = self.start(path)
        ready = self.notify.next()
        self.assertIsNotNone(ready, self.log())
        self.assertEqual(ready.get("READY"), "1", ready)
        self.assertEqual(ready.get("MAINPID"), str(proc.pid))
        self.assertIn("serving", ready.get("STATUS", ""))
        # Ready means ready: the listener and the admin socket are there.
        self.assertTrue(self.connectable())
        self.assertTrue(os.path.exists(os.path.join(self.dir, "admin.sock")))

        proc.send_signal(signal.SIGHUP)
        reloading = self.notify.next()
        self.assertEqual(reloading.get("RELOADING"), "1", reloading)
        self.assertGreater(int(reloading["MONOTONIC_USEC"]), 0)
        done = self.notify.next()
        self.assertEqual(done.get("READY"), "1", done)
        self.assertIn("generation 2 is live", done.get("STATUS", ""))

        # A broken config: the reload fails, the old generation stays, and
        # systemd still hears READY=1 (the service is up), with why.
        with open(path, "w") as f:
            f.write("{ not json")
        proc.send_signal(signal.SIGHUP)
        self.assertEqual(self.notify.next().get("RELOADING"), "1")
        failed = self.notify.next()
        self.assertEqual(failed.get("READY"), "1")
        self.assertIn("reload failed, generation 2 still live", failed.get("STATUS", ""))

        proc.send_signal(signal.SIGTERM)
        stopping = self.notify.next()
        self.assertEqual(stopping.get("STOPPING"), "1", stopping)
        self.assertEqual(proc.wait(timeout=15), 0)

    def test_waits_for_an_sql_directory_then_ready(self):
        db_port = procs.free_port()
        directory = {"type": "sql", "sql": {
            "servers": [f"127.0.0.1:{db_port}"], "database": "mail", "user": "isthmus",
            "password_file": os.path.join(self.dir, "sql.pw"), "timeout": "1s",
            "connect_timeout": "500ms", "max_backoff": "1s"}}
        from lab.mariadb import MariaDB
        db = MariaDB(os.path.join(self.dir, "mariadb"), db_port)
        self.addCleanup(db.stop)
        with open(directory["sql"]["password_file"], "w") as f:
            f.write(db.password + "\n")
        proc = self.start(self.config(directory))
        # Listening, but not ready: the directory does not answer.
        first = self.notify.next()
        self.assertIsNotNone(first, self.log())
        self.assertNotIn("READY", first)
        self.assertIn("waiting for the sql directory", first.get("STATUS", ""))
        # A reload meanwhile must not announce a readiness there is not.
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            message = self.notify.next(timeout=max(0.1, deadline - time.monotonic()))
            if message:
                self.assertNotIn("READY", message, self.log())
                self.assertNotIn("RELOADING", message, self.log())
        self.assertTrue(self.connectable())
        db.start()
        while True:
            message = self.notify.next(timeout=30)
            self.assertIsNotNone(message, "no READY=1 after the directory came up:\n" + self.log())
            if "READY" in message:
                break
        self.assertIn("the sql directory answers: ready", self.log())
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=15), 0)

    def test_optional_directory_does_not_delay_ready(self):
        directory = {"type": "sql", "optional": True, "sql": {
            "servers": [f"127.0.0.1:{procs.free_port()}"], "database": "mail",
            "user": "isthmus", "password_file": os.path.join(self.dir, "sql.pw")}}
        with open(directory["sql"]["password_file"], "w") as f:
            f.write("x\n")
        proc = self.start(self.config(directory))
        ready = self.notify.next()
        self.assertIsNotNone(ready, self.log())
        self.assertEqual(ready.get("READY"), "1", ready)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=15), 0)


if __name__ == "__main__":
    unittest.main()
