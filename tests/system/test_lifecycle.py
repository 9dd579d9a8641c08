"""The life of the process and of its sessions: config checking, SIGHUP
reload, graceful SIGTERM, the pre-auth and idle deadlines, and bad input
that must end in a protocol error, never in a crash or a hang."""
import imaplib
import json
import os
import random
import socket
import subprocess
import tempfile
import time
import unittest

from support import Lab, PASSWORD, RawImap, binary, make_message, session_end_lines, wait_for


class Lifecycle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lab = Lab()
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()

    def start(self, **overrides):
        ix = self.lab.start_isthmus(binary(), **overrides)
        self.addCleanup(ix.stop)
        return ix

    def login(self, ix, user="alice@example.org"):
        m = imaplib.IMAP4("127.0.0.1", ix.port("imap"), timeout=10)
        m.login(user, PASSWORD)
        return m

    # -- config checking

    def check_config(self, config: dict, users_map: str = "alice@example.org a\n"):
        d = tempfile.mkdtemp(prefix="isthmus-check-")
        with open(os.path.join(d, "users.map"), "w") as f:
            f.write(users_map)
        path = os.path.join(d, "isthmus.json")
        with open(path, "w") as f:
            json.dump(config, f)
        return subprocess.run([binary(), "--check-config", path], capture_output=True, text=True,
                              timeout=30), path

    def test_check_config_accepts_a_good_config(self):
        out, path = self.check_config(self.lab.config)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), f"{path}: ok (1 listeners, 2 islands)")

    def test_check_config_names_every_problem_and_its_place(self):
        config = json.loads(json.dumps(self.lab.config))
        config["listeners"][0]["port"] = 99999
        config["islands"][1]["nodes"][0]["prots"] = {}
        out, path = self.check_config(config)
        self.assertEqual(out.returncode, 1)
        self.assertIn(f"{path}: /listeners/0/port: must be an integer from 0 to 65535", out.stderr)
        self.assertIn(f"{path}: /islands/1/nodes/0/prots: unknown key", out.stderr)

    def test_check_config_checks_the_static_directory(self):
        out, path = self.check_config(self.lab.config, "alice@example.org a\nbob@example.org z\n")
        self.assertEqual(out.returncode, 1)
        self.assertIn("users.map:2: island \"z\" is not in the config", out.stderr)

    def test_a_bad_config_stops_startup_with_a_clear_message(self):
        d = tempfile.mkdtemp(prefix="isthmus-bad-")
        path = os.path.join(d, "isthmus.json")
        with open(path, "w") as f:
            f.write('{ "listeners": [ }')
        out = subprocess.run([binary(), "--config", path], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(out.returncode, 1)
        self.assertIn(f"{path}:1:", out.stderr)

    # -- reload

    def test_sighup_reloads_the_user_map_and_sessions_keep_going(self):
        ix = self.start()
        self.lab.put_message("carol@example.org", make_message("carol on b", "moved\n"),
                             island="b")
        before = self.login(ix, "carol@example.org")
        before.select("INBOX")
        ix.users_map_text = ix.users_map_text.replace("carol@example.org a", "carol@example.org b")
        ix.write_files()
        ix.reload()
        wait_for(lambda: "reload: config generation 2" in ix.log_text(), what="reload")
        after = self.login(ix, "carol@example.org")
        after.select("INBOX")
        typ, data = after.search(None, "SUBJECT", '"carol on b"')
        self.assertTrue(data[0], "a new login goes to island b")
        self.assertEqual(before.noop()[0], "OK")  # the old session is untouched
        typ, data = before.search(None, "SUBJECT", '"carol on b"')
        self.assertFalse(data[0], "the old session is still on island a")
        before.logout()
        after.logout()

    def test_a_broken_reload_keeps_the_running_config(self):
        ix = self.start()
        ix.users_map_text += "dave@example.org nowhere\n"
        ix.write_files()
        ix.reload()
        wait_for(lambda: "reload failed, keeping generation 1" in ix.log_text(), what="refusal")
        self.assertIn("island \"nowhere\" is not in the config", ix.log_text())
        self.login(ix).logout()

    # -- shutdown

    def test_sigterm_says_bye_before_login_and_lets_relayed_sessions_finish(self):
        ix = self.start(timeouts={"shutdown_grace": "3s"})
        relayed = self.login(ix)
        relayed.select("INBOX")
        waiting = RawImap(ix.port("imap"))
        self.addCleanup(waiting.close)
        waiting.greeting()
        started = time.monotonic()
        ix.proc.signal(15)
        self.assertEqual(waiting.line(), b"* BYE Server shutting down.")
        self.assertTrue(waiting.is_closed(timeout=5))
        # New connections are refused; the relayed session still works.
        wait_for(lambda: not _accepts(ix.port("imap")), what="listener closed")
        self.assertEqual(relayed.noop()[0], "OK")
        # At the end of the grace period it is closed and the process exits 0.
        self.assertEqual(ix.proc.wait(10), 0)
        self.assertGreater(time.monotonic() - started, 2.5)
        with self.assertRaises((imaplib.IMAP4.abort, OSError)):
            relayed.noop()
        relayed.shutdown()
        ends = session_end_lines(ix.log_text())
        self.assertIn("closed at shutdown", [e["ended"] for e in ends])
        self.assertIn("shutdown before login", [e["ended"] for e in ends])

    def test_sigterm_with_no_sessions_exits_at_once(self):
        ix = self.start()
        started = time.monotonic()
        ix.proc.signal(15)
        self.assertEqual(ix.proc.wait(10), 0)
        self.assertLess(time.monotonic() - started, 2)

    # -- deadlines

    def test_the_preauth_deadline(self):
        ix = self.start(timeouts={"preauth": "1s"})
        with RawImap(ix.port("imap")) as c:
            c.greeting()
            started = time.monotonic()
            self.assertEqual(c.line(), b"* BYE Disconnected for inactivity.")
            self.assertTrue(c.is_closed())
            self.assertLess(time.monotonic() - started, 3)

    def test_the_idle_deadline_after_login(self):
        ix = self.start(timeouts={"idle": "1s"})
        m = self.login(ix)
        m.select("INBOX")
        wait_for(lambda: any(e["ended"] == "idle timeout" for e in session_end_lines(ix.log_text())),
                 timeout=5, what="idle timeout")
        with self.assertRaises((imaplib.IMAP4.abort, OSError)):
            m.noop()
        m.shutdown()

    # -- bad input

    def test_a_line_too_long_ends_the_session_cleanly(self):
        ix = self.start(limits={"max_line": 1024})
        with RawImap(ix.port("imap")) as c:
            c.greeting()
            c.send(b"a LOGIN " + b"x" * 5000)
            self.assertEqual(c.line(), b"* BYE Line too long.")
            self.assertTrue(c.is_closed())
        self.login(ix).logout()

    def test_a_huge_literal_is_refused(self):
        ix = self.start()
        with RawImap(ix.port("imap")) as c:
            c.greeting()
            c.send("a LOGIN {999999999}\r\n")
            self.assertEqual(c.line(), b"a BAD Literal too large.")
            self.assertEqual(c.command("b", "NOOP")[-1], b"b OK NOOP completed.")
            c.send("c LOGIN {999999999+}\r\n")
            self.assertEqual(c.line(), b"* BYE Literal too large.")
            self.assertTrue(c.is_closed())

    def test_too_many_commands_before_login(self):
        ix = self.start(limits={"max_preauth_commands": 5})
        with RawImap(ix.port("imap")) as c:
            c.greeting()
            c.send("".join(f"t{i} NOOP\r\n" for i in range(10)))
            data = c.read_until_closed()
        self.assertEqual(data.count(b"OK NOOP completed."), 5)
        self.assertTrue(data.endswith(b"* BYE Too many commands before login.\r\n"), data)

    def test_garbage_gets_bad_and_the_process_survives(self):
        ix = self.start()
        with RawImap(ix.port("imap")) as c:
            c.greeting()
            for junk, answer in ((b"\x00\x01\x02\r\n", b"* BAD Invalid tag."),
                                 (b"a\r\n", b"a BAD Missing command."),
                                 (b"a SELECT INBOX\r\n", b"a BAD Log in first."),
                                 (b"a FROB\r\n", b"a BAD Unknown command."),
                                 (b"a LOGIN\r\n", b"a BAD Invalid arguments."),
                                 (b'a LOGIN "x\r\n', b"a BAD Invalid character in quoted string.")):
                c.send(junk)
                self.assertEqual(c.line(), answer, junk)
        rng = random.Random(7)
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=5) as s:
                s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
                s.shutdown(socket.SHUT_WR)
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass
        self.assertTrue(ix.running())
        self.login(ix).logout()

    def test_a_client_that_vanishes_during_login(self):
        ix = self.start()
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=5) as s:
                s.recv(1024)
                s.sendall(b"a LOGIN alice@example.org demo\r\n")
        wait_for(lambda: len([e for e in session_end_lines(ix.log_text())
                              if e.get("user") == "alice@example.org"]) >= 5, what="5 ends")
        self.assertTrue(ix.running())


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    unittest.main(verbosity=2)
