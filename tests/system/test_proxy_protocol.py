"""Isthmus behind a load balancer (a real haproxy sending the PROXY
protocol), the client's identity forwarded to real Dovecot nodes (IMAP ID,
POP3 XCLIENT), what is believed from whom, and the proxy TTL that stops a
routing loop."""
import imaplib
import os
import time
import re
import poplib
import socket
import ssl
import struct
import unittest

from support import Lab, PASSWORD, RawImap, binary, procs, session_end_lines, wait_for
from lab.haproxy import Haproxy  # after support, which puts tests/ on the path


def connect_from(source_ip: str, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:PORT from another loopback address."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((source_ip, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_line(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def v2_header(src: str, sport: int, dst: str, dport: int, tlvs: bytes = b"") -> bytes:
    body = (socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport) +
            tlvs)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) +
            body)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def with_crc(header: bytes) -> bytes:
    """HEADER, whose last TLV is a zeroed CRC32C, with the checksum filled in."""
    return header[:-4] + struct.pack("!I", crc32c(header))


class ProxyProtocol(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lab = Lab(tls=True, isthmus_ports={"imap": 0, "pop3": 0})
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()

    def start(self, **overrides):
        ix = self.lab.start_isthmus(binary(), **overrides)
        self.addCleanup(ix.stop)
        return ix

    def haproxy(self, backend_port: int, send_proxy="v2", **kw) -> Haproxy:
        port = procs.free_port()
        hp = Haproxy(os.path.join(self.lab.root, f"haproxy-{port}"), port, backend_port,
                     send_proxy=send_proxy, **kw)
        hp.start()
        self.addCleanup(hp.stop)
        return hp

    def last_login(self, ix, user: str) -> dict:
        """What the node logged for USER's latest login through IX, found by
        Isthmus' session id, which the node receives with the identity."""
        sessions = re.findall(rf"session=(\w+) login ok user={re.escape(user)} ", ix.log_text())
        self.assertTrue(sessions, f"{user} did not log in through isthmus")
        def node_logins():
            return [l for n in self.lab.nodes.values() for l in n.logins()
                    if l.get("ok") and l.get("session") == sessions[-1]]

        # Dovecot's log process writes a moment after the login answer.
        deadline = time.monotonic() + 5
        logins = node_logins()
        while not logins and time.monotonic() < deadline:
            time.sleep(0.05)
            logins = node_logins()
        self.assertEqual(len(logins), 1, f"no node logged session {sessions[-1]}")
        return logins[0]

    def listeners(self, proxy_from, tls_port=None):
        ls = [{"name": "imap", "protocol": "imap", "address": "127.0.0.1",
               "port": self.lab.isthmus_ports["imap"], "proxy_protocol": proxy_from},
              {"name": "pop3", "protocol": "pop3", "address": "127.0.0.1",
               "port": self.lab.isthmus_ports["pop3"], "proxy_protocol": proxy_from}]
        if tls_port:
            ls.append({"name": "imaps", "protocol": "imap", "address": "127.0.0.1",
                       "port": tls_port, "tls": "implicit", "proxy_protocol": proxy_from})
        return ls

    # -- through haproxy

    def test_the_node_sees_the_real_client_behind_haproxy(self):
        ix = self.start(listeners=self.listeners(["127.0.0.1"]))
        for version in ("v2", "v1"):
            with self.subTest(version=version):
                hp = self.haproxy(ix.port("imap"), send_proxy=version)
                s = connect_from("127.0.0.7", hp.listen_port)
                sport = s.getsockname()[1]
                self.assertTrue(read_line(s).startswith(b"* OK"))
                s.sendall(b"a LOGIN alice@example.org demo\r\n")
                self.assertTrue(read_line(s).startswith(b"a OK"))
                s.sendall(b"b LOGOUT\r\n")
                s.close()
                login = self.last_login(ix, "alice@example.org")
                self.assertEqual(login["rip"], "127.0.0.7")  # the client, not haproxy
                self.assertEqual(login["rport"], str(sport))
                self.assertEqual(login["real_rip"], "127.0.0.1")
        ends = session_end_lines(ix.log_text())
        self.assertTrue(any(e["client"].startswith("127.0.0.7:") for e in ends))

    def test_pop3_behind_haproxy_forwards_the_client_with_xclient(self):
        ix = self.start(listeners=self.listeners(["127.0.0.1"]))
        hp = self.haproxy(ix.port("pop3"))
        s = connect_from("127.0.0.8", hp.listen_port)
        self.assertTrue(read_line(s).startswith(b"+OK"))
        s.sendall(b"USER bob@example.org\r\nPASS demo\r\n")
        self.assertEqual(read_line(s), b"+OK\r\n")
        self.assertEqual(read_line(s), b"+OK Logged in.\r\n")
        s.sendall(b"QUIT\r\n")
        s.close()
        login = self.last_login(ix, "bob@example.org")
        self.assertEqual(login["rip"], "127.0.0.8")
        self.assertEqual(login["real_rip"], "127.0.0.1")

    def test_implicit_tls_behind_haproxy(self):
        tls_port = procs.free_port()
        cert = self.lab.isthmus_cert
        ix = self.start(listeners=self.listeners(["127.0.0.1"], tls_port),
                        tls={"certificate": cert.cert_path, "key": cert.key_path})
        hp = self.haproxy(tls_port)
        ctx = ssl.create_default_context(cafile=self.lab.ca_path)
        m = imaplib.IMAP4_SSL("127.0.0.1", hp.listen_port, ssl_context=ctx, timeout=10)
        self.assertEqual(m.login("carol@example.org", PASSWORD)[0], "OK")
        m.logout()
        wait_for(lambda: any(e.get("user") == "carol@example.org" and e["tls"] != "-"
                             for e in session_end_lines(ix.log_text())), what="a TLS session")

    # -- by hand: the edge cases

    def test_header_and_first_command_in_one_segment(self):
        # Trust follows the address in the header: 192.0.2.45 is trusted
        # (may log in without TLS), 192.0.2.44 is not.
        ix = self.start(listeners=self.listeners(["127.0.0.1"]),
                        trusted_networks=["192.0.2.45"])
        with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=10) as s:
            s.sendall(b"PROXY TCP4 192.0.2.44 127.0.0.1 40000 143\r\na CAPABILITY\r\n")
            self.assertIn(b" LOGINDISABLED", read_line(s))
            self.assertTrue(read_line(s).startswith(b"* CAPABILITY"))
            self.assertEqual(read_line(s), b"a OK Pre-login capabilities listed, post-login "
                                           b"capabilities have more.\r\n")
        with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=10) as s:
            s.sendall(v2_header("192.0.2.45", 40001, "127.0.0.1", 143) +
                      b"a LOGIN alice@example.org demo\r\n")
            read_line(s)
            self.assertTrue(read_line(s).startswith(b"a OK"))
        self.assertEqual(self.last_login(ix, "alice@example.org")["rip"], "192.0.2.45")

    def test_v2_tlvs_are_validated_and_kept_with_the_session(self):
        ix = self.start(listeners=self.listeners(["127.0.0.1"]), trusted_networks=["192.0.2.0/24"])
        ssl_tlv = tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") +
                      tlv(0x23, b"TLS_AES_128_GCM_SHA256"))
        good = with_crc(v2_header("192.0.2.60", 40060, "127.0.0.1", 143,
                                  tlv(0x01, b"imap") + tlv(0x02, b"mail.example.org") + ssl_tlv +
                                  tlv(0x03, b"\0\0\0\0")))
        with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=10) as s:
            s.sendall(good + b"a LOGIN alice@example.org demo\r\n")
            read_line(s)
            self.assertTrue(read_line(s).startswith(b"a OK"))
            s.sendall(b"b LOGOUT\r\n")
        wait_for(lambda: any(e.get("via") == "alpn=imap authority=mail.example.org ssl=TLSv1.3 "
                                             "cipher=TLS_AES_128_GCM_SHA256"
                             for e in session_end_lines(ix.log_text())),
                 what="the session end line with the balancer's TLVs")
        bad_headers = {
            "stray bytes after the last TLV": v2_header("192.0.2.61", 1, "127.0.0.1", 2,
                                                        tlv(0x01, b"imap") + b"\x00\x01"),
            "a TLV longer than the header": v2_header("192.0.2.61", 1, "127.0.0.1", 2,
                                                      b"\x02\x00\x40abc"),
            "the CRC32C TLV does not match the header": v2_header(
                "192.0.2.61", 1, "127.0.0.1", 2, tlv(0x03, b"\x12\x34\x56\x78")),
            "a short SSL TLV": v2_header("192.0.2.61", 1, "127.0.0.1", 2, tlv(0x20, b"\x01")),
        }
        for why, header in bad_headers.items():
            with self.subTest(why=why):
                with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=10) as s:
                    s.sendall(header + b"a LOGIN alice@example.org demo\r\n")
                    self.assertEqual(s.recv(4096), b"")  # closed, no greeting
                self.assertIn(f"v2 header: {why}; closing", ix.log_text())
        # A corrupted bit anywhere under a good CRC is caught.
        flipped = bytearray(good)
        flipped[18] ^= 0x01  # the source address
        with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=10) as s:
            s.sendall(bytes(flipped))
            self.assertEqual(s.recv(4096), b"")

    def test_the_proxy_header_has_a_short_deadline_of_its_own(self):
        ix = self.start(listeners=self.listeners(["127.0.0.1"]), timeouts={"proxy_header": "1s"})
        with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=10) as s:
            t0 = time.monotonic()
            s.sendall(b"PROXY TCP4 192.0.2.1 ")  # and nothing more
            self.assertEqual(s.recv(4096), b"")
            took = time.monotonic() - t0
        self.assertGreaterEqual(took, 0.9)
        self.assertLess(took, 5.0)  # not the 60 s pre-auth deadline
        wait_for(lambda: 'ended="no PROXY protocol header in time"' in ix.log_text(),
                 what="the session end line")

    def test_a_trusted_source_without_a_header_is_closed(self):
        ix = self.start(listeners=self.listeners(["127.0.0.1"]))
        with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=10) as s:
            s.sendall(b"a LOGIN alice@example.org demo\r\n")
            self.assertEqual(s.recv(4096), b"")  # no greeting, closed
        with socket.create_connection(("127.0.0.1", ix.port("imap")), timeout=10) as s:
            s.sendall(b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n")
            self.assertEqual(s.recv(4096), b"")
        log = ix.log_text()
        self.assertIn("a PROXY protocol source): no PROXY protocol header; closing", log)
        self.assertIn("v1 header: bad address; closing", log)

    def test_a_header_from_an_untrusted_source_is_refused(self):
        ix = self.start(listeners=self.listeners(["127.0.0.9"]))
        for header in (b"PROXY TCP4 10.9.9.9 127.0.0.1 1 2\r\n",
                       v2_header("10.9.9.9", 1, "127.0.0.1", 2)):
            s = connect_from("127.0.0.1", ix.port("imap"))
            self.assertTrue(read_line(s).startswith(b"* OK"))
            s.sendall(header + b"a LOGIN alice@example.org demo\r\n")
            self.assertEqual(s.recv(4096), b"")
            s.close()
        wait_for(lambda: ix.log_text().count("is not a configured PROXY source") == 2,
                 what="two refusals")
        # The same source without a header is served normally.
        with RawImap(ix.port("imap")) as c:
            c.greeting()
            self.assertTrue(c.command("a", "LOGIN alice@example.org demo")[-1].startswith(b"a OK"))

    # -- who is believed

    def test_an_untrusted_clients_own_id_claims_are_not_forwarded(self):
        ix = self.start(trusted_networks=["127.0.0.1/32"])
        s = connect_from("127.0.0.6", ix.port("imap"))
        read_line(s)
        s.sendall(b'a ID ("x-originating-ip" "203.0.113.9" "x-proxy-ttl" "1")\r\n')
        read_line(s)
        read_line(s)
        # Not trusted: plaintext login refused, so use STARTTLS-free LOGIN on a
        # listener that allows it is not available; AUTHENTICATE is refused too.
        s.sendall(b"b LOGIN alice@example.org demo\r\n")
        self.assertTrue(read_line(s).startswith(b"b NO [PRIVACYREQUIRED]"))
        s.close()
        ix.stop()
        ix = self.start(trusted_networks=["127.0.0.1/32"],
                        listeners=[{"name": "imap", "protocol": "imap", "address": "127.0.0.1",
                                    "port": self.lab.isthmus_ports["imap"],
                                    "allow_plaintext_auth": True}])
        s = connect_from("127.0.0.6", ix.port("imap"))
        read_line(s)
        s.sendall(b'a ID ("x-originating-ip" "203.0.113.9" "x-proxy-ttl" "1")\r\n')
        read_line(s)
        read_line(s)
        s.sendall(b"b LOGIN alice@example.org demo\r\n")
        self.assertTrue(read_line(s).startswith(b"b OK"), "the TTL claim was not believed")
        s.close()
        self.assertEqual(self.last_login(ix, "alice@example.org")["rip"], "127.0.0.6")

    def test_a_trusted_proxys_id_is_believed(self):
        ix = self.start()  # the lab trusts 127.0.0.0/8
        with RawImap(ix.port("imap")) as c:
            c.greeting()
            c.command("a", 'ID ("x-originating-ip" "198.51.100.23" "x-originating-port" "4242")')
            self.assertTrue(c.command("b", "LOGIN dave@example.org demo")[-1].startswith(b"b OK"))
        login = self.last_login(ix, "dave@example.org")
        self.assertEqual(login["rip"], "198.51.100.23")
        self.assertEqual(login["rport"], "4242")

    def test_the_proxy_ttl_stops_a_routing_loop(self):
        # Island a's only node is Isthmus itself: every login would come back.
        port = self.lab.isthmus_ports["imap"]
        islands = [dict(i, nodes=[{"name": "loop", "host": "127.0.0.1",
                                    "ports": {"imap": port, "pop3": 1, "lmtp": 1}}])
                   if i["name"] == "a" else i for i in self.lab.config["islands"]]
        ix = self.start(islands=islands, proxy_ttl=3, timeouts={"login": "10s"})
        with RawImap(port) as c:
            c.greeting()
            self.assertEqual(c.command("a", "LOGIN alice@example.org demo")[-1],
                             b"a NO [UNAVAILABLE] Service temporarily unavailable, please try "
                             b"again later.")
        self.assertIn("the login passed through too many proxies", ix.log_text())


if __name__ == "__main__":
    unittest.main(verbosity=2)
