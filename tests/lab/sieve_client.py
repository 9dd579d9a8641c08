"""A ManageSieve client (RFC 5804) for the tests: the nodes' master user
logs in on a user's behalf ("dovecot" or "sasl" style) to read and write
the user's Sieve scripts. The mover (isthmus-move) copies scripts with its
own C++ session (moves/sieve_session); this was its Python predecessor's
copy, kept as the tests' client and reference."""

from __future__ import annotations

import base64
import socket
import ssl
from typing import Optional

MAX_RESPONSE = 16 << 20  # a script (Pigeonhole's default limit is far below)


class SieveError(Exception):
    pass


def quoted(text: str) -> bytes:
    if any(c in text for c in "\r\n\0") or len(text) > 1024:
        data = text.encode()
        return b"{%d+}\r\n" % len(data) + data
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


class SieveClient:
    """One ManageSieve session: greeting, STARTTLS, AUTHENTICATE PLAIN,
    then LISTSCRIPTS / GETSCRIPT / PUTSCRIPT / SETACTIVE."""

    def __init__(self, host: str, port: int, *, tls: str = "none",
                 context: Optional[ssl.SSLContext] = None, tls_name: Optional[str] = None,
                 timeout: float = 30.0):
        self.where = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        try:
            if tls == "implicit":
                self.sock = (context or ssl.create_default_context()).wrap_socket(
                    self.sock, server_hostname=tls_name or host)
            self.capabilities = self._capabilities()
            if tls == "starttls":
                if "STARTTLS" not in self.capabilities:
                    raise SieveError(f"{self.where} does not offer STARTTLS")
                self._expect_ok(self.command(b"STARTTLS"), "STARTTLS")
                if self.buf:
                    raise SieveError(f"{self.where} sent bytes after its STARTTLS answer")
                self.sock = (context or ssl.create_default_context()).wrap_socket(
                    self.sock, server_hostname=tls_name or host)
                self.capabilities = self._capabilities()
        except BaseException:
            self.sock.close()
            raise

    # -- wire

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise SieveError(f"{self.where} closed the connection")
        self.buf += chunk
        if len(self.buf) > MAX_RESPONSE:
            raise SieveError(f"{self.where} sent a response over {MAX_RESPONSE} bytes")

    def _line(self) -> bytes:
        """One line, with any server literal {n} folded in as its bytes."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, _, self.buf = self.buf.partition(b"\r\n")
            if line.endswith(b"}") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1:-1].rstrip(b"+"))
                while len(self.buf) < size:
                    self._fill()
                out += line[:line.rindex(b"{")] + b"\0LIT" + self.buf[:size]
                self.buf = self.buf[size:]
                continue
            return out + line

    def response(self) -> tuple[list[bytes], bytes]:
        """(data lines, the OK/NO/BYE line)."""
        data = []
        while True:
            line = self._line()
            word = line.split(b" ", 1)[0].upper()
            if word in (b"OK", b"NO", b"BYE"):
                return data, line
            data.append(line)

    def command(self, line: bytes) -> tuple[list[bytes], bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.response()

    def _expect_ok(self, answer: tuple[list[bytes], bytes], what: str) -> list[bytes]:
        data, status = answer
        if not status.upper().startswith(b"OK"):
            raise SieveError(f"{self.where} refused {what}: "
                             f"{status.decode(errors='replace')[:200]}")
        return data

    def _capabilities(self) -> dict[str, str]:
        data, status = self.response()
        if not status.upper().startswith(b"OK"):
            raise SieveError(f"{self.where} greeted with {status.decode(errors='replace')[:100]}")
        caps = {}
        for line in data:
            parts = strings(line)
            if parts:
                caps[parts[0].upper()] = parts[1] if len(parts) > 1 else ""
        return caps

    # -- commands

    def log_in(self, user: str, master_user: str, master_password: str,
               style: str = "dovecot", separator: str = "*") -> None:
        if style == "dovecot":
            payload = f"\0{user}{separator}{master_user}\0{master_password}"
        else:
            payload = f"{user}\0{master_user}\0{master_password}"
        blob = base64.b64encode(payload.encode()).decode()
        self._expect_ok(self.command(b'AUTHENTICATE "PLAIN" ' + quoted(blob)),
                        f"the master login for {user}")

    def list_scripts(self) -> tuple[list[str], Optional[str]]:
        """(script names, the active one or None)."""
        names, active = [], None
        for line in self._expect_ok(self.command(b"LISTSCRIPTS"), "LISTSCRIPTS"):
            parts = strings(line)
            if not parts:
                continue
            names.append(parts[0])
            if line.rstrip().upper().endswith(b" ACTIVE"):
                active = parts[0]
        return names, active

    def get_script(self, name: str) -> bytes:
        data = self._expect_ok(self.command(b"GETSCRIPT " + quoted(name)), f"GETSCRIPT {name}")
        if len(data) != 1 or not data[0].startswith(b"\0LIT"):
            raise SieveError(f"{self.where}: GETSCRIPT {name}: not one literal")
        return data[0][len(b"\0LIT"):]

    def put_script(self, name: str, content: bytes) -> None:
        self._expect_ok(self.command(b"PUTSCRIPT " + quoted(name) + b" " + literal(content)),
                        f"PUTSCRIPT {name}")

    def set_active(self, name: Optional[str]) -> None:
        self._expect_ok(self.command(b"SETACTIVE " + quoted(name or "")), f"SETACTIVE {name}")

    def close(self) -> None:
        try:
            self.sock.sendall(b"LOGOUT\r\n")
        except OSError:
            pass
        self.sock.close()


def strings(line: bytes) -> list[str]:
    """The quoted strings and literals of a response line, in order."""
    out, i = [], 0
    while i < len(line):
        if line[i:i + 4] == b"\0LIT":
            out.append(line[i + 4:].decode(errors="replace"))
            break
        if line[i:i + 1] == b'"':
            j, text = i + 1, bytearray()
            while j < len(line) and line[j:j + 1] != b'"':
                if line[j:j + 1] == b"\\" and j + 1 < len(line):
                    j += 1
                text += line[j:j + 1]
                j += 1
            out.append(text.decode(errors="replace"))
            i = j + 1
        else:
            i += 1
    return out


def scripts_of(client: SieveClient) -> tuple[dict[str, bytes], Optional[str]]:
    names, active = client.list_scripts()
    return {name: client.get_script(name) for name in names}, active


def copy_scripts(src: SieveClient, dst: SieveClient) -> dict:
    """Makes DST hold SRC's scripts and active script. Returns what it did:
    copied (names written), unchanged, active, extra (only on DST)."""
    source, active = scripts_of(src)
    target, target_active = scripts_of(dst)
    copied, unchanged = [], []
    for name, content in source.items():
        if target.get(name) == content:
            unchanged.append(name)
            continue
        dst.put_script(name, content)
        copied.append(name)
    if active != target_active:
        dst.set_active(active)
    return {"copied": copied, "unchanged": unchanged, "active": active,
            "extra": sorted(set(target) - set(source))}


def same_scripts(src: SieveClient, dst: SieveClient) -> list[str]:
    """The differences between the two sides' scripts (empty: the same)."""
    source, active = scripts_of(src)
    target, target_active = scripts_of(dst)
    problems = []
    for name, content in source.items():
        if name not in target:
            problems.append(f"script {name} missing on the destination")
        elif target[name] != content:
            problems.append(f"script {name} differs on the destination")
    if active != target_active:
        problems.append(f"active script {active!r} on the source, {target_active!r} on the "
                        f"destination")
    return problems
