"""The IMAP front door end to end: real nodes (Dovecot, or Cyrus with
ISTHMUS_NODE_KIND=cyrus: ctest system.imap_cyrus) in two islands, the
real isthmus binary, and clients we did not write (imaplib, curl), plus a
raw socket for byte-exact cases."""
import imaplib
import subprocess
import unittest

from support import (Lab, ODD_PASSWORD, ODD_USER, PASSWORD, RawImap, binary, make_message,
                     plain, session_end_lines, wait_for)


class ImapFrontDoor(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lab = Lab()
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()
        # A message that exists only on each user's home island, and a decoy
        # for alice on the *other* island: routing is proven by which one
        # she sees.
        for user in ("alice@example.org", "bob@example.org", ODD_USER):
            island = cls.lab.home_island(user)
            cls.lab.put_message(user, make_message(f"home of {user} is {island}", "hello\n"))
        cls.lab.put_message("alice@example.org", make_message("decoy on b", "x\n"), island="b")
        cls.ix = cls.lab.start_isthmus(binary())
        cls.port = cls.ix.port("imap")

    def imap(self) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        self.addCleanup(self._logout, m)
        return m

    @staticmethod
    def _logout(m):
        try:
            m.logout()
        except Exception:
            pass

    def subjects(self, m) -> list[str]:
        typ, _ = m.select("INBOX")
        self.assertEqual(typ, "OK")
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        self.assertEqual(typ, "OK")
        return [part[1].decode().strip() for part in data if isinstance(part, tuple)]

    # -- routing

    def test_each_user_reaches_the_store_of_their_island(self):
        for user, island, other in (("alice@example.org", "a", "b"),
                                    ("bob@example.org", "b", "a")):
            with self.subTest(user=user):
                m = self.imap()
                m.login(user, PASSWORD)
                subjects = self.subjects(m)
                self.assertIn(f"Subject: home of {user} is {island}", subjects)
                self.assertNotIn("Subject: decoy on b", subjects)

    def test_the_greeting_and_capabilities_before_login(self):
        m = self.imap()
        self.assertTrue(m.welcome.startswith(b"* OK [CAPABILITY IMAP4rev1"))
        typ, data = m.capability()
        self.assertEqual(typ, "OK")
        caps = data[0].split()
        for cap in (b"IMAP4rev1", b"SASL-IR", b"LITERAL+", b"AUTH=PLAIN", b"ID"):
            self.assertIn(cap, caps)
        self.assertEqual(m.noop()[0], "OK")

    def test_after_login_the_client_sees_the_nodes_capabilities(self):
        with RawImap(self.port) as c:
            c.greeting()
            lines = c.command("a", "LOGIN alice@example.org demo")
            self.assertTrue(lines[-1].startswith(b"a OK [CAPABILITY IMAP4rev1"), lines)
            # Dovecot's post-login list has IDLE; Isthmus' pre-login one has not.
            self.assertIn(b" IDLE", lines[-1])
            self.assertIn(b"Logged in", lines[-1])

    def test_bare_login_names_get_the_default_domain_and_case_is_ignored(self):
        m = self.imap()
        m.login("Alice", PASSWORD)
        self.assertIn("Subject: home of alice@example.org is a", self.subjects(m))

    # -- credentials

    def test_wrong_then_right_password_on_one_connection(self):
        m = self.imap()
        with self.assertRaises(imaplib.IMAP4.error) as failed:
            m.login("alice@example.org", "Wr0ng-passw0rd")
        self.assertIn("AUTHENTICATIONFAILED", str(failed.exception))
        typ, _ = m.login("alice@example.org", PASSWORD)
        self.assertEqual(typ, "OK")
        self.assertEqual(m.select("INBOX")[0], "OK")

    def test_an_unknown_user_gets_the_same_answer_as_a_wrong_password(self):
        answers = []
        for user, password in (("alice@example.org", "nope"), ("nobody@example.org", PASSWORD)):
            with RawImap(self.port) as c:
                c.greeting()
                answers.append(c.command("t", f"LOGIN {user} {password}")[-1])
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(answers[0], b"t NO [AUTHENTICATIONFAILED] Authentication failed.")

    def test_authenticate_plain_without_initial_response(self):
        m = self.imap()
        typ, _ = m.authenticate("PLAIN", lambda _: f"\0alice@example.org\0{PASSWORD}".encode())
        self.assertEqual(typ, "OK")
        self.assertEqual(m.select("INBOX")[0], "OK")

    def test_authenticate_plain_with_initial_response(self):
        with RawImap(self.port) as c:
            c.greeting()
            lines = c.command("a", "AUTHENTICATE PLAIN " + plain("bob@example.org", PASSWORD))
            self.assertTrue(lines[-1].startswith(b"a OK "), lines)
            lines = c.command("b", "SELECT INBOX")
            self.assertTrue(lines[-1].startswith(b"b OK [READ-WRITE]"), lines)

    def test_curl_with_sasl_ir(self):
        out = subprocess.run(
            ["curl", "-sS", "-v", "--max-time", "20", "--sasl-ir", "--login-options", "AUTH=PLAIN",
             "-u", f"bob@example.org:{PASSWORD}",
             f"imap://127.0.0.1:{self.port}/INBOX;UID=1"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("AUTHENTICATE PLAIN ", out.stderr)  # the initial response rode along
        self.assertIn("home of bob@example.org is b", out.stdout)

    def test_authenticate_cancelled_with_a_star(self):
        with RawImap(self.port) as c:
            c.greeting()
            c.send("a AUTHENTICATE PLAIN\r\n")
            self.assertEqual(c.line(), b"+ ")
            c.send("*\r\n")
            self.assertEqual(c.line(), b"a BAD Authentication cancelled.")
            self.assertEqual(c.command("b", "NOOP")[-1], b"b OK NOOP completed.")

    def test_authenticate_with_bad_data(self):
        with RawImap(self.port) as c:
            c.greeting()
            self.assertEqual(c.command("a", "AUTHENTICATE PLAIN !!!!")[-1],
                             b"a BAD Invalid base64 data.")
            self.assertEqual(c.command("b", "AUTHENTICATE PLAIN =")[-1],
                             b"b BAD Invalid SASL PLAIN message.")
            self.assertEqual(c.command("c", "AUTHENTICATE CRAM-MD5")[-1],
                             b"c NO Unsupported authentication mechanism.")
            lines = c.command("d", "AUTHENTICATE PLAIN " + plain("alice@example.org", PASSWORD))
            self.assertTrue(lines[-1].startswith(b"d OK "), lines)

    def test_passwords_with_spaces_quotes_and_backslashes(self):
        # imaplib sends a quoted string with escapes.
        m = self.imap()
        self.assertEqual(m.login(ODD_USER, ODD_PASSWORD)[0], "OK")
        self.assertIn(f"Subject: home of {ODD_USER} is a", self.subjects(m))
        pw = ODD_PASSWORD.encode()
        # Synchronising literals: the client waits for "+" before each.
        with RawImap(self.port) as c:
            c.greeting()
            c.send(f"a LOGIN {{{len(ODD_USER)}}}\r\n")
            self.assertTrue(c.line().startswith(b"+ "))
            c.send(ODD_USER.encode() + b" {%d}\r\n" % len(pw))
            self.assertTrue(c.line().startswith(b"+ "))
            c.send(pw + b"\r\n")
            self.assertTrue(c.until_tagged("a")[-1].startswith(b"a OK "))
        # Non-synchronising literals (LITERAL+), all in one write.
        with RawImap(self.port) as c:
            c.greeting()
            c.send(b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(ODD_USER), ODD_USER.encode(),
                                                             len(pw), pw))
            self.assertTrue(c.until_tagged("a")[-1].startswith(b"a OK "))

    # -- pipelining and relay

    def test_pipelined_login_select_logout(self):
        with RawImap(self.port) as c:
            c.greeting()
            c.send("a LOGIN alice@example.org demo\r\nb SELECT INBOX\r\nc LOGOUT\r\n")
            data = c.read_until_closed()
        lines = data.split(b"\r\n")
        tagged = [l.split(b" ")[0] + b" " + l.split(b" ")[1] for l in lines
                  if l[:2] in (b"a ", b"b ", b"c ")]
        self.assertEqual(tagged, [b"a OK", b"b OK", b"c OK"], data)
        self.assertIn(b"* BYE", data)

    def test_a_large_message_is_relayed_intact(self):
        body = ("0123456789abcdef" * 64 + "\r\n") * 3000  # ~3 MB
        m = self.imap()
        m.login("bob@example.org", PASSWORD)
        msg = make_message("big one", body.replace("\r\n", "\n"))
        self.assertEqual(m.append("INBOX", None, None, msg)[0], "OK")
        m.select("INBOX")
        typ, data = m.search(None, "SUBJECT", '"big one"')
        num = data[0].split()[-1]
        typ, data = m.fetch(num, "(BODY.PEEK[])")
        self.assertEqual(typ, "OK")
        self.assertEqual(data[0][1].replace(b"\r\n", b"\n"), msg.replace(b"\r\n", b"\n"))

    def test_id_is_answered_and_not_forwarded(self):
        with RawImap(self.port) as c:
            c.greeting()
            lines = c.command("a", 'ID ("name" "test" "x-originating-ip" "10.9.9.9")')
            self.assertEqual(lines, [b'* ID ("name" "Isthmus")', b"a OK ID completed."])
            self.assertEqual(c.command("b", "ID NIL")[-1], b"b OK ID completed.")
            self.assertEqual(c.command("c", "ID (\"only-key\")")[-1], b"c BAD Invalid ID arguments.")

    # -- the log

    def test_one_log_line_per_session_end_and_never_a_password(self):
        with RawImap(self.port) as c:
            c.greeting()
            self.assertTrue(c.command("a", f"LOGIN bob@example.org {PASSWORD}")[-1].startswith(b"a OK"))
            self.assertTrue(c.command("b", "SELECT INBOX")[-1].startswith(b"b OK"))
            c.command("c", "LOGOUT")
            if self.lab.kind == "dovecot":
                # Dovecot closes after LOGOUT; hang up only once it has (an
                # imaplib logout closes as soon as it has the OK, which may
                # beat the node's close: the race CI once lost under ASan).
                c.read_until_closed()
        with RawImap(self.port) as c:
            c.greeting()
            c.command("a", f"LOGIN alice@example.org Secret-{ODD_PASSWORD}")
            c.command("b", "AUTHENTICATE PLAIN " + plain("alice@example.org", "AlsoSecret99"))
        # After LOGOUT Dovecot closes first; Cyrus may leave it to the client.
        closed = ("node closed",) if self.lab.kind == "dovecot" else ("node closed", "client closed")

        def bob_ended():
            return [e for e in session_end_lines(self.lab.isthmus.log_text())
                    if e.get("user") == "bob@example.org" and e.get("ended") in closed]
        ends = wait_for(bob_ended, what="bob's session-end line")
        log = self.lab.isthmus.log_text()
        self.assertNotIn(ODD_PASSWORD, log)
        self.assertNotIn("AlsoSecret99", log)
        end = ends[-1]
        self.assertEqual(end["island"], "b")
        self.assertIn(end["node"], ("b-left", "b-right"))
        self.assertTrue(end["client"].startswith("127.0.0.1:"))
        self.assertGreater(int(end["in"]), 0)
        self.assertGreater(int(end["out"]), 0)
        self.assertRegex(end["duration"], r"^\d+\.\d{3}s$")


if __name__ == "__main__":
    unittest.main(verbosity=2)
