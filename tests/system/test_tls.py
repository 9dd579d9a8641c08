"""TLS on both sides, against real Dovecot nodes with certificates from a
test CA: implicit TLS and STARTTLS/STLS towards clients (imaplib, poplib,
openssl s_client, curl), STARTTLS and implicit TLS towards nodes with
certificate checks, the plaintext-login policy, and the injection cases."""
import imaplib
import poplib
import socket
import ssl
import subprocess
import tempfile
import threading
import unittest

from support import Lab, PASSWORD, RawImap, binary, procs, session_end_lines, wait_for
from lab.tls import make_ca  # after support, which puts tests/ on the path


def tls_listeners(ports):
    return [
        {"name": "imap", "protocol": "imap", "address": "127.0.0.1", "port": ports["imap"],
         "tls": "starttls"},
        {"name": "imaps", "protocol": "imap", "address": "127.0.0.1", "port": ports["imaps"],
         "tls": "implicit"},
        {"name": "pop3", "protocol": "pop3", "address": "127.0.0.1", "port": ports["pop3"],
         "tls": "starttls"},
        {"name": "pop3s", "protocol": "pop3", "address": "127.0.0.1", "port": ports["pop3s"],
         "tls": "implicit"},
    ]


class Tls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lab = Lab(tls=True)
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()
        cls.ports = {k: procs.free_port() for k in ("imap", "imaps", "pop3", "pop3s")}
        # Island a over STARTTLS, island b over implicit TLS (imaps/pop3s).
        islands = []
        for island in cls.lab.config["islands"]:
            nodes = []
            for n in island["nodes"]:
                node = cls.lab.node(n["name"])
                entry = dict(n, tls_name=Lab.tls_name(n["name"]))
                if island["name"] == "a":
                    entry["tls"] = "starttls"
                else:
                    entry["tls"] = "implicit"
                    entry["ports"] = {"imap": node.port("imaps"), "pop3": node.port("pop3s")}
                nodes.append(entry)
            islands.append(dict(island, nodes=nodes))
        cls.islands = islands
        cls.client_ctx = ssl.create_default_context(cafile=cls.lab.ca_path)

    def start(self, trusted=("127.0.0.0/8",), **overrides):
        cert = self.lab.isthmus_cert
        config = dict(
            listeners=tls_listeners(self.ports),
            islands=self.islands,
            tls={"certificate": cert.cert_path, "key": cert.key_path},
            node_tls={"ca": self.lab.ca_path},
            trusted_networks=list(trusted),
        )
        config.update(overrides)
        ix = self.lab.start_isthmus(binary(), **config)
        self.addCleanup(ix.stop)
        return ix

    # -- towards clients

    def test_implicit_tls_imap_and_pop3(self):
        ix = self.start()
        m = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=self.client_ctx,
                              timeout=10)
        self.assertEqual(m.login("alice@example.org", PASSWORD)[0], "OK")
        self.assertEqual(m.select("INBOX")[0], "OK")
        m.logout()
        p = poplib.POP3_SSL("127.0.0.1", self.ports["pop3s"], context=self.client_ctx, timeout=10)
        p.user("bob@example.org")
        self.assertTrue(p.pass_(PASSWORD).startswith(b"+OK"))
        p.quit()
        ends = wait_for(lambda: [e for e in session_end_lines(ix.log_text())
                                 if e.get("user") in ("alice@example.org", "bob@example.org")
                                 and e["tls"] != "-"], what="TLS session ends")
        self.assertTrue(all(e["tls"].startswith("TLSv1.") for e in ends))

    def test_alpn_must_name_the_listeners_protocol(self):
        # ALPACA (cross-protocol attacks): a browser offers http/1.1 (and
        # h2) only; such a handshake fails with no_application_protocol
        # (RFC 7301), on implicit TLS and after STARTTLS alike. A client
        # that offers the protocol, or no ALPN at all, is served.
        ix = self.start()

        def handshake(port: int, alpn, starttls: bool = False):
            ctx = ssl.create_default_context(cafile=self.lab.ca_path)
            if alpn is not None:
                ctx.set_alpn_protocols(alpn)
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                if starttls:
                    raw.recv(4096)
                    raw.sendall(b"s STARTTLS\r\n")
                    raw.recv(4096)
                tls = ctx.wrap_socket(raw, server_hostname="isthmus.lab.test")
                chosen = tls.selected_alpn_protocol()
                tls.close()
                return chosen
            finally:
                raw.close()

        for starttls, port in ((False, self.ports["imaps"]), (True, self.ports["imap"])):
            with self.subTest(starttls=starttls):
                self.assertEqual(handshake(port, ["imap"], starttls), "imap")
                self.assertEqual(handshake(port, ["http/1.1", "imap"], starttls), "imap")
                self.assertIsNone(handshake(port, None, starttls))
                for foreign in (["http/1.1"], ["h2", "http/1.1"], ["pop3"]):
                    with self.assertRaisesRegex(ssl.SSLError, "no application protocol"):
                        handshake(port, foreign, starttls)
        self.assertEqual(handshake(self.ports["pop3s"], ["pop3"]), "pop3")
        with self.assertRaisesRegex(ssl.SSLError, "no application protocol"):
            handshake(self.ports["pop3s"], ["imap"])
        self.assertIn("TLS handshake failed", ix.log_text())

    def test_starttls_and_stls(self):
        self.start()
        m = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=10)
        self.assertIn("STARTTLS", m.capabilities)
        m.starttls(ssl_context=self.client_ctx)
        self.assertEqual(m.login("carol@example.org", PASSWORD)[0], "OK")
        m.logout()
        p = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=10)
        self.assertIn("STLS", p.capa())
        p.stls(context=self.client_ctx)
        self.assertNotIn("STLS", p.capa())  # recomputed after TLS
        p.user("dave@example.org")
        self.assertTrue(p.pass_(PASSWORD).startswith(b"+OK"))
        p.quit()

    def test_openssl_s_client_and_curl(self):
        self.start()
        for proto, port, command, expect in (
                ("imap", self.ports["imap"], b"a LOGIN alice@example.org demo\r\nb LOGOUT\r\n",
                 b"a OK [CAPABILITY"),
                ("pop3", self.ports["pop3"], b"USER bob@example.org\r\nPASS demo\r\nQUIT\r\n",
                 b"+OK Logged in.")):
            out = subprocess.run(
                ["openssl", "s_client", "-quiet", "-starttls", proto, "-CAfile", self.lab.ca_path,
                 "-verify_return_error", "-connect", f"127.0.0.1:{port}"],
                input=command, capture_output=True, timeout=30)
            self.assertIn(expect, out.stdout, (proto, out.stdout, out.stderr))
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", self.lab.ca_path,
             "-u", f"alice@example.org:{PASSWORD}",
             f"imaps://127.0.0.1:{self.ports['imaps']}/INBOX"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", self.lab.ca_path, "--ssl-reqd",
             "-u", f"bob@example.org:{PASSWORD}", f"pop3://127.0.0.1:{self.ports['pop3']}/"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)

    def test_plaintext_login_is_refused_before_tls_unless_trusted(self):
        self.start(trusted=())
        with RawImap(self.ports["imap"]) as c:
            greeting = c.greeting()
            self.assertIn(b"STARTTLS", greeting)
            self.assertIn(b"LOGINDISABLED", greeting)
            self.assertNotIn(b"AUTH=PLAIN", greeting)
            self.assertEqual(
                c.command("a", "LOGIN alice@example.org demo")[-1],
                b"a NO [PRIVACYREQUIRED] Plaintext authentication is disallowed on non-secure "
                b"connections; use STARTTLS.")
            self.assertTrue(c.command("b", "AUTHENTICATE PLAIN AGEAYg==")[-1].startswith(
                b"b NO [PRIVACYREQUIRED]"))
        m = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=10)
        m.starttls(ssl_context=self.client_ctx)
        caps = m.capability()[1][0].split()
        self.assertIn(b"AUTH=PLAIN", caps)
        self.assertNotIn(b"LOGINDISABLED", caps)
        self.assertNotIn(b"STARTTLS", caps)
        self.assertEqual(m.login("alice@example.org", PASSWORD)[0], "OK")
        m.logout()
        p = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=10)
        caps = p.capa()
        self.assertNotIn("USER", caps)
        self.assertNotIn("SASL", caps)
        with self.assertRaises(poplib.error_proto) as refused:
            p.user("bob@example.org")
        self.assertIn(b"[AUTH] Plaintext authentication is disallowed", refused.exception.args[0])
        p.stls(context=self.client_ctx)
        self.assertIn("USER", p.capa())
        p.user("bob@example.org")
        self.assertTrue(p.pass_(PASSWORD).startswith(b"+OK"))
        p.quit()

    def test_commands_sent_with_starttls_are_not_run_after_the_handshake(self):
        self.start(trusted=())
        sock = socket.create_connection(("127.0.0.1", self.ports["imap"]), timeout=10)
        sock.recv(4096)
        # Both in one write: "b" must be dropped, never executed under TLS.
        sock.sendall(b"a STARTTLS\r\nb LOGIN alice@example.org demo\r\n")
        answer = b""
        while b"\r\n" not in answer:
            answer += sock.recv(1)  # byte by byte: leave the TLS bytes in the socket
        self.assertEqual(answer, b"a OK Begin TLS negotiation now.\r\n")
        tls = self.client_ctx.wrap_socket(sock, server_hostname="isthmus.lab.test")
        tls.sendall(b"c NOOP\r\n")
        self.assertEqual(tls.recv(4096), b"c OK NOOP completed.\r\n")  # no answer for "b"
        tls.close()
        sock = socket.create_connection(("127.0.0.1", self.ports["pop3"]), timeout=10)
        sock.recv(4096)
        sock.sendall(b"STLS\r\nUSER bob@example.org\r\nPASS demo\r\n")
        answer = b""
        while b"\r\n" not in answer:
            answer += sock.recv(1)
        self.assertEqual(answer, b"+OK Begin TLS negotiation now.\r\n")
        tls = self.client_ctx.wrap_socket(sock, server_hostname="isthmus.lab.test")
        tls.sendall(b"PASS demo\r\n")  # USER before TLS must be forgotten too
        self.assertEqual(tls.recv(4096), b"-ERR No user name given; USER first.\r\n")
        tls.close()

    def test_tls_handshake_garbage_is_a_clean_close(self):
        ix = self.start()
        for port in (self.ports["imaps"], self.ports["pop3s"]):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"a LOGIN alice demo\r\n")
                self.assertEqual(s.recv(4096)[:1] in (b"", b"\x15"), True)
        wait_for(lambda: "TLS handshake failed" in ix.log_text(), what="the log line")
        self.assertTrue(ix.running())

    def test_sighup_reloads_the_certificate(self):
        ix = self.start()

        def serial():
            with socket.create_connection(("127.0.0.1", self.ports["imaps"]), timeout=10) as s:
                with self.client_ctx.wrap_socket(s, server_hostname="isthmus.lab.test") as t:
                    return t.getpeercert()["serialNumber"]

        before = serial()
        renewed = self.lab.ca.issue("isthmus-renewed", dns=["isthmus.lab.test"],
                                    ips=["127.0.0.1"])
        ix.config["tls"] = {"certificate": renewed.cert_path, "key": renewed.key_path}
        ix.write_files()
        ix.reload()
        wait_for(lambda: "reload: config generation 2" in ix.log_text(), what="the reload")
        self.assertNotEqual(serial(), before)
        # A broken key on the next reload is refused; the renewed one stays.
        ix.config["tls"] = {"certificate": renewed.cert_path, "key": self.lab.ca.key_path}
        ix.write_files()
        ix.reload()
        wait_for(lambda: "reload failed, keeping generation 2" in ix.log_text(), what="refusal")
        self.assertIn("/tls/key: cannot load", ix.log_text())
        self.assertEqual(serial(), serial())

    # -- towards nodes

    def test_nodes_are_reached_over_tls_and_verified(self):
        ix = self.start()
        m = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=self.client_ctx,
                              timeout=10)
        m.login("alice@example.org", PASSWORD)  # island a: STARTTLS to the node
        m.logout()
        m = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=self.client_ctx,
                              timeout=10)
        m.login("bob@example.org", PASSWORD)  # island b: implicit TLS to the node
        m.logout()
        def by_user():
            logins = [l for name in ("a-left", "a-right", "b-left", "b-right")
                      for l in self.lab.node(name).logins() if l.get("ok")]
            found = {l["user"]: l for l in logins}
            # Dovecot's log process writes a moment after the login answer.
            return found if {"alice@example.org", "bob@example.org"} <= found.keys() else None
        by_user = wait_for(by_user, what="both logins in the nodes' logs")
        self.assertTrue(by_user["alice@example.org"]["tls"], by_user["alice@example.org"])
        self.assertTrue(by_user["bob@example.org"]["tls"], by_user["bob@example.org"])

    def test_a_node_takes_imap_over_starttls_and_lmtp_in_clear(self):
        # "tls" per protocol (issue 16): IMAP to the node over STARTTLS, LMTP
        # in clear on a private network. Gates in front of both ports show
        # what went over the wire.
        from lab.gate import Gate
        from support import RawLmtp, lmtp_stuff, make_message
        left = self.lab.node("a-left")
        gates = {p: Gate(0, left.port(p), name=f"a-left-{p}") for p in ("imap", "lmtp")}
        for gate in gates.values():
            self.addCleanup(gate.close)
        a_left = dict(next(n for i in self.lab.config["islands"] if i["name"] == "a"
                           for n in i["nodes"] if n["name"] == "a-left"),
                      tls={"imap": "starttls", "lmtp": "none"},
                      tls_name=Lab.tls_name("a-left"),
                      ports={p: gate.port for p, gate in gates.items()})
        islands = [dict(i, nodes=[a_left]) if i["name"] == "a" else i
                   for i in self.lab.config["islands"]]
        lmtp_port = procs.free_port()
        listeners = [l for l in tls_listeners(self.ports) if l["name"] == "imaps"]
        listeners.append({"name": "lmtp", "protocol": "lmtp", "address": "127.0.0.1",
                          "port": lmtp_port})
        self.start(listeners=listeners, islands=islands)
        m = imaplib.IMAP4_SSL("127.0.0.1", self.ports["imaps"], ssl_context=self.client_ctx,
                              timeout=10)
        m.login("alice@example.org", PASSWORD)
        m.logout()
        c = RawLmtp(lmtp_port)
        self.addCleanup(c.close)
        c.greeting()
        self.assertEqual(c.lhlo()[:3], b"250")
        self.assertEqual(c.command("MAIL FROM:<s@example.net>")[:3], b"250")
        self.assertEqual(c.command("RCPT TO:<alice@example.org>")[:3], b"250")
        self.assertEqual(c.command("DATA")[:3], b"354")
        c.send(lmtp_stuff(make_message("per-protocol tls", "x\n")))
        self.assertEqual(c.reply()[:3], b"250")
        imap_up = b"".join(bytes(conn.up_data) for conn in gates["imap"].connections)
        lmtp_up = b"".join(bytes(conn.up_data) for conn in gates["lmtp"].connections)
        self.assertIn(b" STARTTLS\r\n", imap_up)
        self.assertNotIn(b"AUTHENTICATE", imap_up)  # the credentials went inside TLS
        self.assertNotIn(b"LOGIN", imap_up)
        self.assertNotIn(b"STARTTLS", lmtp_up)
        self.assertIn(b"RCPT TO:<alice@example.org>", lmtp_up)  # in clear, as configured

    def test_a_node_with_the_wrong_name_or_ca_is_refused(self):
        islands = [dict(i, nodes=[dict(n, tls_name="wrong.lab.test") for n in i["nodes"]])
                   if i["name"] == "a" else i for i in self.islands]
        ix = self.start(islands=islands)
        with RawImap(self.ports["imap"]) as c:
            c.greeting()
            self.assertEqual(c.command("a", "LOGIN alice@example.org demo")[-1],
                             b"a NO [UNAVAILABLE] Service temporarily unavailable, please try "
                             b"again later.")
        # The log names the check that failed, not only "verify failed".
        self.assertIn("TLS handshake with the node failed: certificate verify failed: hostname "
                      "mismatch", ix.log_text())
        ix.stop()
        # A CA the nodes' certificates do not chain to.
        stranger = make_ca(tempfile.mkdtemp(prefix="isthmus-test-"), "Stranger CA")
        ix = self.start(node_tls={"ca": stranger.cert_path})
        with RawImap(self.ports["imap"]) as c:
            c.greeting()
            self.assertTrue(c.command("a", "LOGIN bob@example.org demo")[-1].startswith(
                b"a NO [UNAVAILABLE]"))
        self.assertIn("TLS handshake with the node failed: certificate verify failed: unable to "
                      "get local issuer certificate", ix.log_text())
        ix.stop()
        # An expired certificate (a scripted implicit-TLS node presents it).
        expired = self.lab.ca.issue("expired-node", dns=["expired.lab.test"], ips=["127.0.0.1"],
                                    expired=True)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(expired.cert_path, expired.key_path)
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)

        def serve():
            for _ in range(4):
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as t:
                        t.sendall(b"* OK [CAPABILITY IMAP4rev1] expired\r\n")
                except (OSError, ssl.SSLError):
                    pass

        threading.Thread(target=serve, daemon=True).start()
        islands = [dict(i, nodes=[dict(i["nodes"][0], host="127.0.0.1", tls="implicit",
                                       tls_name="expired.lab.test",
                                       ports={"imap": listener.getsockname()[1],
                                              "pop3": listener.getsockname()[1]})])
                   if i["name"] == "a" else i for i in self.islands]
        ix = self.start(islands=islands)
        with RawImap(self.ports["imap"]) as c:
            c.greeting()
            self.assertTrue(c.command("a", "LOGIN alice@example.org demo")[-1].startswith(
                b"a NO [UNAVAILABLE]"))
        self.assertIn("TLS handshake with the node failed: certificate verify failed: "
                      "certificate has expired", ix.log_text())

    def test_credentials_never_go_in_clear_to_a_node_that_requires_tls(self):
        lab = Lab(require_tls=("a-left", "a-right"), tls=True)
        self.addCleanup(lab.close)
        lab.start()
        # Isthmus wrongly configured to reach island a in plaintext: the
        # nodes say LOGINDISABLED and Isthmus refuses to send the password.
        ix = lab.start_isthmus(binary())
        with RawImap(ix.port("imap")) as c:
            c.greeting()
            self.assertTrue(c.command("a", "LOGIN alice@example.org demo")[-1].startswith(
                b"a NO [UNAVAILABLE]"))
        self.assertIn("LOGINDISABLED", ix.log_text())
        for name in ("a-left", "a-right"):
            self.assertFalse([l for l in lab.node(name).logins() if l.get("user")],
                             f"{name} saw a login attempt")

    # -- the copy engine of moves (isthmus-copy), towards TLS nodes

    def test_copy_engine_over_starttls_and_implicit_tls(self):
        """isthmus-copy copies alice's mailbox from a-left over STARTTLS to
        b-left over implicit TLS, both certificates checked against the
        lab's CA; with another CA it refuses the node, copies nothing and
        names the certificate check. On Cyrus nodes too (system.tls_cyrus:
        the master user as SASL authorization, Cyrus' own IMAP)."""
        import json
        import os
        from lab.dovecot import MASTER_PASSWORD, MASTER_SEPARATOR, MASTER_USER
        user = "alice@example.org"
        sasl = self.lab.master_style == "sasl"
        src_node, dst_node = self.lab.node("a-left"), self.lab.node("b-left")

        def master(node, port, implicit):
            if implicit:
                m = imaplib.IMAP4_SSL(node.host, port, ssl_context=self.client_ctx, timeout=10)
            else:
                m = imaplib.IMAP4(node.host, port, timeout=10)
                m.starttls(ssl.create_default_context(cafile=self.lab.ca_path))
            payload = (f"{user}\0{MASTER_USER}\0{MASTER_PASSWORD}" if sasl else
                       f"\0{user}{MASTER_SEPARATOR}{MASTER_USER}\0{MASTER_PASSWORD}").encode()
            m.authenticate("PLAIN", lambda _: payload)
            return m

        src = master(src_node, src_node.port("imap"), False)
        self.addCleanup(src.logout)
        src.create("TLS-Copy")
        for i in range(5):
            body = (f"From: a@b\r\nSubject: tls {i}\r\nMessage-ID: <tls-{i}@lab.test>\r\n\r\n"
                    f"over TLS {i}\r\n" + "x" * (i * 20_000)).encode()
            self.assertEqual(src.append("TLS-Copy", "(\\Seen $Tls)" if i % 2 else None,
                                        None, body)[0], "OK")

        def listing(m):
            typ, data = m.select("TLS-Copy", readonly=True)
            self.assertEqual(typ, "OK")
            typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[])")
            out = []
            for item in data:
                if isinstance(item, tuple):
                    flags = sorted(f for f in item[0].decode().split("FLAGS (")[1].split(")")[0]
                                   .split() if f != "\\Recent")
                    out.append((item[1], tuple(flags)))
            return sorted(out)

        secret = os.path.join(self.lab.root, "copy-master.pw")
        with open(secret, "w") as f:
            f.write(MASTER_PASSWORD + "\n")

        def config(ca):
            path = os.path.join(self.lab.root, f"copy-{os.path.basename(ca)}.json")
            with open(path, "w") as f:
                json.dump({"move": {
                    "login": {"master_user": MASTER_USER, "master_password_file": secret,
                              "separator": MASTER_SEPARATOR,
                              "master_style": self.lab.master_style},
                    "nodes": {
                        "a-left": {"address": f"{src_node.host}:{src_node.port('imap')}",
                                   "tls": "starttls", "ca": ca,
                                   "tls_name": Lab.tls_name("a-left")},
                        "b-left": {"address": f"{dst_node.host}:{dst_node.port('imaps')}",
                                   "tls": "implicit", "ca": ca,
                                   "tls_name": Lab.tls_name("b-left")}}}}, f)
            return path

        engine = os.path.join(os.path.dirname(binary()), "isthmus-copy")
        argv = [engine, "--user", user, "--from", "a-left", "--to", "b-left"]
        other_ca = make_ca(os.path.join(self.lab.root, "other-ca"), "Another CA")
        r = subprocess.run(argv + ["--config", config(other_ca.cert_path)], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("certificate verify failed", r.stdout)
        dst = master(dst_node, dst_node.port("imaps"), True)
        self.addCleanup(dst.logout)
        self.assertNotIn(b"TLS-Copy", b" ".join(x for x in dst.list()[1] if x))

        r = subprocess.run(argv + ["--config", config(self.lab.ca_path)], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        totals = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(totals["event"], "totals", r.stdout)
        self.assertGreaterEqual(totals["messages"], 5)
        self.assertEqual(listing(dst), listing(src))
        # A second pass finds nothing to do.
        r = subprocess.run(argv + ["--config", config(self.lab.ca_path)], capture_output=True,
                           text=True, timeout=60)
        again = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((again["event"], again["messages"], again["flags"]), ("totals", 0, 0),
                         r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
