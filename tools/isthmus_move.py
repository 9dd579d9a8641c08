#!/usr/bin/env python3
"""isthmus_move: move a user's mailbox from one island to another.

    isthmus_move.py --config /etc/isthmus/isthmusctl.json move alice@example.org --to b
    isthmus_move.py --config ... move alice@example.org --resume
    isthmus_move.py --config ... move alice@example.org --abort
    isthmus_move.py --config ... status alice@example.org

A move is a journaled sequence of steps (docs/move.md):

  0 preflight  the directory's answer, the nodes, master logins, an empty destination
  1 precopy    while the user keeps working and mail keeps arriving: every folder,
               subscription, message, flag and INTERNALDATE copied over IMAP as the
               master user, then incremental passes (new messages, flag changes,
               expunges) until one finds at most precopy_threshold changes (at most
               precopy_passes passes)
  2 moving     the account's state to "moving" in the directory; every instance's
               cached entry dropped: logins get NO [UNAVAILABLE], LMTP 451 4.2.1
  3 kick       the user's sessions closed on every instance, until none is left
  4 copy       the last incremental pass(es): what changed since the pre-copy (or,
               with precopy_passes 0, everything; or an external copier command)
  5 verify     per folder: the same messages (size + Message-ID or body SHA-256,
               flags, INTERNALDATE) on both sides; if not, back to "active" on the
               source island and exit 7
  6 switch     the island to the destination and the state to "active"
  7 report     durations (the pre-copy, and the interruption: from "moving" to
               "active" on the destination), folders, messages, bytes

With the dsync mover (--mover dsync, or move.mover; Dovecot to Dovecot), the
pre-copy and the copy are one-way `doveadm sync -1` runs that the source
node's doveadm HTTP API makes to the destination node's doveadm server: UIDs, UIDVALIDITY,
flags and modseqs are kept, so clients do not download the mailbox again; the
verification then also compares UIDVALIDITY and UIDs.

The user is interrupted only from step 2 to step 6. The journal (one JSON file
per user in move.journal_dir) is rewritten atomically after every step; a
second run (or --resume) continues with the first step that did not finish (a
resumed run that continues at copy, verify or switch first sets the state to
"moving" again and kicks the user's sessions; a pre-copy is simply run again).
Every step can be run again safely: a copy pass pairs the source's and the
destination's messages by key (size + Message-ID, or size + body SHA-256),
counted as multisets, so a message already copied is never copied twice.
With CONDSTORE, a pass skips a folder the source has not changed since its
last pass in the same run (same UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, EXISTS);
the verification always lists every folder.

Python 3.11 standard library only, plus the ``mariadb`` client for an SQL
directory and ``ldapsearch``/``ldapmodify`` for an LDAP one. Also a module:
``main(argv) -> int`` is what ``isthmusctl move --local`` calls.

Exit codes: 0 done (or nothing to do), 1 usage or config, 2 an instance could
not be reached, 3 a step failed (the journal says which; resume with --resume;
--abort only before the switch has started), 7 verification failed (the user
is active on the source island again).
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import datetime
import errno
import fcntl
import hashlib
import http.client
import imaplib
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse

VERSION = "0.1.0"

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_UNREACHABLE = 2
EXIT_STEP = 3
EXIT_VERIFY = 7

DEFAULT_CONFIG = "/etc/isthmus/isthmusctl.json"
DEFAULT_JOURNAL_DIR = "/var/lib/isthmus/moves"

MOVERS = ("imap", "dsync")

STEPS = ("preflight", "precopy", "moving", "kick", "copy", "verify", "switch", "report")
STEP_NUMBER = {name: i for i, name in enumerate(STEPS)}
LAST_STEP = len(STEPS) - 1
# The steps during which the user is locked out (state "moving").
INTERRUPTION_STEPS = ("moving", "kick", "copy", "verify", "switch")

# Test hooks (docs/move.md, "Testing"): never set them in production.
ENV_COPY_DELAY = "ISTHMUS_MOVE_TEST_COPY_DELAY"            # seconds slept after each message
ENV_PAUSE_BEFORE_VERIFY = "ISTHMUS_MOVE_TEST_PAUSE_BEFORE_VERIFY"  # a path: wait for it
# A path P: after the first pre-copy pass, wait for P.pass1; before step moving,
# wait for P.moving (each announced by writing P.TAG.waiting).
ENV_PAUSE_AT = "ISTHMUS_MOVE_TEST_PAUSE_AT"


def test_pause(tag: str) -> None:
    """The test hook ENV_PAUSE_AT: write PATH.TAG.waiting, then wait (at most
    two minutes) until PATH.TAG exists."""
    base = os.environ.get(ENV_PAUSE_AT)
    if not base:
        return
    gate = f"{base}.{tag}"
    with open(gate + ".waiting", "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)



def run_with_secret_file(argv_for, secret: str, suffix: str, stdin: str | None,
                         timeout: float, what: str,
                         env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a directory's command-line client with SECRET in a private temp
    file (never on the command line: other users see argv); ARGV_FOR(path)
    gives the command. The file is removed whatever happens. A client that
    does not finish within TIMEOUT is a StepFailed naming WHAT."""
    fd, path = tempfile.mkstemp(prefix="isthmus-move-", suffix=suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secret)
        argv = argv_for(path)
        try:
            return subprocess.run(argv, input=stdin.encode("utf-8") if stdin else None,
                                  capture_output=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{what}: no answer within {show_seconds(timeout)}") from None
    finally:
        os.unlink(path)

class MoveError(Exception):
    code = EXIT_STEP


class UsageError(MoveError):
    code = EXIT_USAGE


class Unreachable(MoveError):
    code = EXIT_UNREACHABLE


class StepFailed(MoveError):
    code = EXIT_STEP


class VerifyFailed(MoveError):
    code = EXIT_VERIFY

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------- small helpers

def parse_duration(value, what: str) -> float:
    """'5s', '250ms', '2m', '1h' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise UsageError(f"{what}: expected a duration like \"5s\", got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
        if not m:
            raise UsageError(f"{what}: expected a duration like \"5s\" or \"250ms\", got {value!r}")
        seconds = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    else:
        raise UsageError(f"{what}: expected a duration like \"5s\", got {value!r}")
    if seconds < 0:
        raise UsageError(f"{what}: must not be negative")
    return seconds


def show_seconds(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def show_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def clean(text) -> str:
    """TEXT with control characters escaped (names come from a network)."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(text))


def read_secret(path: str, what: str) -> str:
    """The first line of PATH (a trailing newline is not part of it)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    line = text.split("\n", 1)[0].rstrip("\r")
    if not line:
        raise UsageError(f"{what}: {path} is empty")
    return line


def write_atomic(path: str, data: bytes, mode: int = 0o600, like: str | None = None) -> None:
    """Write DATA to PATH: a temp file in the same folder, fsync, rename,
    fsync of the folder. LIKE: copy that file's mode and owner."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if like is not None and os.path.exists(like):
            st = os.stat(like)
            os.chmod(tmp, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def split_address(text: str, what: str, default_port: int | None = None) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)|([^:\[\]]+)", text or "")
    if not m:
        raise UsageError(f"{what}: expected HOST:PORT, got {text!r}")
    if m.group(1):
        return m.group(1), int(m.group(2))
    if m.group(3):
        return m.group(3), int(m.group(4))
    if default_port is None:
        raise UsageError(f"{what}: expected HOST:PORT, got {text!r}")
    return m.group(5), default_port


def check_keys(obj, known: set, where: str) -> None:
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: expected a JSON object")
    unknown = sorted(set(obj) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(sorted(known))})")


def want_str(obj: dict, key: str, where: str, default=None, required=False):
    value = obj.get(key, default)
    if value is None:
        if required:
            raise UsageError(f"{where}: \"{key}\" is required")
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where}: \"{key}\" must be a non-empty string")
    return value


# ---------------------------------------------------------------- config

class Instance:
    """One Isthmus instance's admin API (a unix socket, or HTTP + token)."""

    def __init__(self, name: str, socket_path=None, url=None, token=None, timeout=5.0):
        self.name = name
        self.socket_path = socket_path
        self.url = url
        self.token = token
        self.timeout = timeout
        if url is not None:
            u = urllib.parse.urlsplit(url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise UsageError(f"instance {name}: url must be http://HOST:PORT, got {url!r}")
            self.scheme = u.scheme
            self.host = u.hostname
            self.port = u.port or (443 if u.scheme == "https" else 80)
            self.prefix = u.path.rstrip("/")

    @property
    def address(self) -> str:
        return self.socket_path or self.url

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        """(HTTP status, JSON object). Raises Unreachable for network trouble
        and for a wrong token (401)."""
        headers = {"Accept": "application/json", "User-Agent": f"isthmus-move/{VERSION}",
                   "Connection": "close"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method == "POST":
            headers["Content-Length"] = "0"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.socket_path is not None:
            conn = _UnixHTTPConnection(self.socket_path, self.timeout)
            target = path
        elif self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=ssl.create_default_context())
            target = self.prefix + path
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            target = self.prefix + path
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"instance {self.name} ({self.address}): {_transport_error(e)}") \
                from None
        finally:
            conn.close()
        try:
            parsed = json.loads(raw.decode("utf-8", errors="replace")) if raw.strip() else {}
        except json.JSONDecodeError:
            parsed = {"error": " ".join(raw.decode("utf-8", "replace").split())[:200]}
        if not isinstance(parsed, dict):
            parsed = {"error": "the answer is not a JSON object"}
        if status == 401:
            raise Unreachable(f"instance {self.name} ({self.address}): authentication failed: "
                              f"{parsed.get('error', 'HTTP 401')} (check its token_file)")
        return status, parsed


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _transport_error(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "no answer in time"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (is isthmus running?)"
    if isinstance(e, FileNotFoundError):
        return "no such socket (is isthmus running, with its admin API on this socket?)"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, http.client.RemoteDisconnected):
        return "closed the connection without answering"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return f"{type(e).__name__}: {e}"


class Endpoint:
    """A node's IMAP address for the copy."""

    def __init__(self, name: str, spec, where: str):
        self.name = name
        if isinstance(spec, str):
            spec = {"address": spec}
        check_keys(spec, {"address", "tls", "ca", "verify", "tls_name", "managesieve",
                          "managesieve_tls", "doveadm", "doveadm_http"}, where)
        self.host, self.port = split_address(want_str(spec, "address", where, required=True),
                                             f"{where}: address")
        # The node's ManageSieve port, for the user's Sieve scripts (optional).
        sieve = want_str(spec, "managesieve", where)
        self.sieve = split_address(sieve, f"{where}: managesieve") if sieve else None
        # The dsync mover (Dovecot nodes): the node's doveadm server (where a
        # source node's dsync writes, "tcp:HOST:PORT") and its doveadm HTTP
        # API (http:// or https:// URL, or HOST:PORT for http).
        doveadm = want_str(spec, "doveadm", where)
        self.doveadm = split_address(doveadm, f"{where}: doveadm") if doveadm else None
        self.doveadm_http = None
        api = want_str(spec, "doveadm_http", where)
        if api:
            if "://" not in api:
                api = "http://" + api
            url = urllib.parse.urlsplit(api)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise UsageError(f"{where}: doveadm_http must be http://HOST:PORT or "
                                 f"https://HOST:PORT")
            try:
                port = url.port or (443 if url.scheme == "https" else 80)
            except ValueError:
                raise UsageError(f"{where}: doveadm_http: bad port") from None
            self.doveadm_http = (url.scheme, url.hostname, port)
        self.sieve_tls = spec.get("managesieve_tls", "none")
        if self.sieve_tls not in ("none", "starttls", "implicit"):
            raise UsageError(f"{where}: managesieve_tls must be none, starttls or implicit")
        self.tls = spec.get("tls", "none")
        if self.tls not in ("none", "starttls", "implicit"):
            raise UsageError(f"{where}: tls must be none, starttls or implicit")
        self.ca = want_str(spec, "ca", where)
        self.verify = spec.get("verify", True)
        if not isinstance(self.verify, bool):
            raise UsageError(f"{where}: verify must be true or false")
        self.tls_name = want_str(spec, "tls_name", where) or self.host

    def __str__(self):
        return f"{self.name} ({self.host}:{self.port})"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class Config:
    TOP_KEYS = {"instances", "timeout", "move"}
    INSTANCE_KEYS = {"name", "socket", "url", "token_file", "timeout"}
    MOVE_KEYS = {"journal_dir", "directory", "login", "source_login", "nodes", "copier",
                 "copier_timeout", "kick_timeout", "settle", "imap_timeout", "confirm_timeout",
                 "copy_passes", "batch_bytes", "batch_messages", "precopy_passes",
                 "precopy_threshold", "mover", "dsync", "copy_engine", "copy_program",
                 "program"}
    DSYNC_KEYS = {"password_file", "api_key_file", "timeout", "copy_timeout"}
    LOGIN_KEYS = {"master_user", "master_password_file", "master_style", "separator"}

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise UsageError(f"config file {path} does not exist (see docs/move.md)") from None
        except OSError as e:
            raise UsageError(f"cannot read config file {path}: {e.strerror or e}") from None
        try:
            conf = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} "
                             f"column {e.colno}") from None
        check_keys(conf, self.TOP_KEYS, path)
        self.base_dir = os.path.dirname(os.path.abspath(path))
        timeout = parse_duration(conf.get("timeout", "5s"), f"{path}: timeout")

        self.instances: list[Instance] = []
        raw = conf.get("instances")
        if not isinstance(raw, list) or not raw:
            raise UsageError(f"{path}: \"instances\" must be a non-empty list")
        names = set()
        for i, item in enumerate(raw, 1):
            where = f"{path}: instance {i}"
            check_keys(item, self.INSTANCE_KEYS, where)
            name = want_str(item, "name", where, required=True)
            if name in names:
                raise UsageError(f"{where}: the name {name!r} is used twice")
            names.add(name)
            sock, url = want_str(item, "socket", where), want_str(item, "url", where)
            if (sock is None) == (url is None):
                raise UsageError(f"{where}: give exactly one of \"socket\" and \"url\"")
            token = None
            token_file = want_str(item, "token_file", where)
            if token_file is not None:
                token = read_secret(self.resolve(token_file), f"{where}: token_file")
            inst_timeout = (parse_duration(item["timeout"], f"{where}: timeout")
                            if "timeout" in item else timeout)
            self.instances.append(Instance(name, socket_path=sock, url=url, token=token,
                                           timeout=inst_timeout))

        move = conf.get("move")
        if move is None:
            raise UsageError(f"{path}: no \"move\" section (see docs/move.md)")
        where = f"{path}: move"
        check_keys(move, self.MOVE_KEYS, where)
        self.journal_dir = self.resolve(want_str(move, "journal_dir", where,
                                                 default=DEFAULT_JOURNAL_DIR))
        self.kick_timeout = parse_duration(move.get("kick_timeout", "30s"), f"{where}: kick_timeout")
        self.settle = parse_duration(move.get("settle", "2s"), f"{where}: settle")
        self.imap_timeout = parse_duration(move.get("imap_timeout", "120s"), f"{where}: imap_timeout")
        self.confirm_timeout = parse_duration(move.get("confirm_timeout", "10s"),
                                              f"{where}: confirm_timeout")
        self.copy_passes = move.get("copy_passes", 3)
        if not isinstance(self.copy_passes, int) or isinstance(self.copy_passes, bool) \
                or not 1 <= self.copy_passes <= 20:
            raise UsageError(f"{where}: copy_passes must be an integer from 1 to 20")
        # Pre-copy passes while the user is active (0: none, the whole copy
        # happens while the user is locked out), stopping after a pass that
        # found at most precopy_threshold changes (messages copied, flags
        # changed, messages expunged).
        self.precopy_passes = move.get("precopy_passes", 5)
        if not isinstance(self.precopy_passes, int) or isinstance(self.precopy_passes, bool) \
                or not 0 <= self.precopy_passes <= 20:
            raise UsageError(f"{where}: precopy_passes must be an integer from 0 to 20")
        self.precopy_threshold = move.get("precopy_threshold", 50)
        if not isinstance(self.precopy_threshold, int) \
                or isinstance(self.precopy_threshold, bool) or self.precopy_threshold < 0:
            raise UsageError(f"{where}: precopy_threshold must be a non-negative integer")
        self.batch_bytes = move.get("batch_bytes", 16 * 1024 * 1024)
        if not isinstance(self.batch_bytes, int) or self.batch_bytes < 1024:
            raise UsageError(f"{where}: batch_bytes must be an integer of at least 1024")
        self.batch_messages = move.get("batch_messages", 500)
        if not isinstance(self.batch_messages, int) or not 1 <= self.batch_messages <= 100000:
            raise UsageError(f"{where}: batch_messages must be an integer from 1 to 100000")

        login = move.get("login", move.get("source_login"))
        if login is None:
            raise UsageError(f"{where}: \"login\" (the nodes' master user) is required")
        lwhere = f"{where}: login"
        check_keys(login, self.LOGIN_KEYS, lwhere)
        self.master_user = want_str(login, "master_user", lwhere, required=True)
        self.master_password = read_secret(
            self.resolve(want_str(login, "master_password_file", lwhere, required=True)),
            f"{lwhere}: master_password_file")
        self.master_style = login.get("master_style", "dovecot")
        if self.master_style not in ("dovecot", "sasl"):
            raise UsageError(f"{lwhere}: master_style must be \"dovecot\" or \"sasl\"")
        self.separator = want_str(login, "separator", lwhere, default="*")

        nodes = move.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            raise UsageError(f"{where}: \"nodes\" must map node names to their IMAP "
                             f"address, e.g. {{\"a-left\": \"10.0.1.11:143\"}}")
        self.nodes = {name: Endpoint(name, spec, f"{where}: nodes: {name}")
                      for name, spec in nodes.items()}

        # The mover: "imap" (any node; IMAP as the master user, new UIDs) or
        # "dsync" (Dovecot to Dovecot: the source node's doveadm HTTP API runs
        # a one-way `doveadm sync` to the destination node; UIDs and UIDVALIDITY kept).
        self.mover = move.get("mover", "imap")
        if self.mover not in MOVERS:
            raise UsageError(f"{where}: mover must be \"imap\" or \"dsync\"")
        dsync = move.get("dsync", {})
        dwhere = f"{where}: dsync"
        if not isinstance(dsync, dict):
            raise UsageError(f"{dwhere}: expected a JSON object")
        check_keys(dsync, self.DSYNC_KEYS, dwhere)
        password_file = want_str(dsync, "password_file", dwhere)
        api_key_file = want_str(dsync, "api_key_file", dwhere)
        if password_file and api_key_file:
            raise UsageError(f"{dwhere}: give password_file (doveadm_password) or api_key_file "
                             f"(doveadm_api_key), not both")
        self.doveadm_auth = None
        if password_file:
            secret = read_secret(self.resolve(password_file), f"{dwhere}: password_file")
            self.doveadm_auth = "Basic " + base64.b64encode(
                b"doveadm:" + secret.encode()).decode()
        elif api_key_file:
            secret = read_secret(self.resolve(api_key_file), f"{dwhere}: api_key_file")
            self.doveadm_auth = "X-Dovecot-API " + base64.b64encode(secret.encode()).decode()
        # One dsync pass while the user works (the bulk copy may take hours),
        # and one while the user is locked out (what changed since: short;
        # a hung one must not keep the user locked out for hours).
        self.dsync_timeout = parse_duration(dsync.get("timeout", "6h"), f"{dwhere}: timeout")
        self.dsync_copy_timeout = parse_duration(dsync.get("copy_timeout", "10m"),
                                                 f"{dwhere}: copy_timeout")

        # The IMAP mover's copy passes: this program's own IMAP code
        # ("python"), or the daemon's C++ copy engine ("isthmus-copy", the
        # program beside this file unless copy_program names it).
        # Default: the engine when the program is there (the package
        # installs it beside this file), else this program's own code.
        program = want_str(move, "copy_program", where)
        self.copy_program = self.resolve(program) if program else os.path.join(
            os.path.dirname(os.path.abspath(sys.argv[0] or __file__)), "isthmus-copy")
        found = os.access(self.copy_program, os.X_OK)
        self.copy_engine = move.get("copy_engine", "isthmus-copy" if found else "python")
        if self.copy_engine not in ("python", "isthmus-copy"):
            raise UsageError(f"{where}: copy_engine must be \"python\" or \"isthmus-copy\"")
        if self.copy_engine == "isthmus-copy" and not found:
            raise UsageError(f"{where}: copy_engine is \"isthmus-copy\" but {self.copy_program} "
                             f"is not there (or not executable); set copy_program")
        self.path_for_engine = os.path.abspath(path)

        copier = move.get("copier")
        if copier is not None and (not isinstance(copier, list) or not copier
                                   or not all(isinstance(a, str) for a in copier)):
            raise UsageError(f"{where}: copier must be a list of strings (a command and its "
                             f"arguments)")
        self.copier = copier
        # A hung copier must not keep the user locked out for ever.
        self.copier_timeout = parse_duration(move.get("copier_timeout", "6h"),
                                             f"{where}: copier_timeout")

        directory = move.get("directory")
        if directory is None:
            raise UsageError(f"{where}: \"directory\" is required")
        if not isinstance(directory, dict):
            raise UsageError(f"{where}: directory: expected a JSON object")
        kind = directory.get("type")
        dwhere = f"{where}: directory"
        if kind == "static":
            self.directory = StaticDirectory(directory, dwhere, self)
        elif kind == "isthmus":
            self.directory = InstanceDirectory(directory, dwhere, self)
        elif kind == "sql":
            self.directory = SqlDirectory(directory, dwhere, self)
        elif kind == "ldap":
            self.directory = LdapDirectory(directory, dwhere, self)
        else:
            raise UsageError(f"{dwhere}: type must be \"isthmus\", \"static\", \"sql\" or "
                             f"\"ldap\"")

    def resolve(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)


# ---------------------------------------------------------------- directories

def split_user(user: str) -> tuple[str, str]:
    local, at, domain = user.rpartition("@")
    return (local, domain) if at else (user, "")


PLACEHOLDER = re.compile(r"%\{([a-z_]+)\}")


class SqlDirectory:
    """UPDATEs through the ``mariadb`` client. Every placeholder becomes a
    quoted string literal (backslash and quote escaped, with the session's
    sql_mode forced to interpret backslashes as escapes)."""

    kind = "sql"
    KEYS = {"type", "server", "socket", "database", "user", "password_file", "set_state",
            "set_island", "client", "timeout", "tls"}
    DEFAULT_SET_STATE = ("UPDATE account a JOIN domain d ON d.id = a.domain_id "
                         "SET a.state = %{value} "
                         "WHERE a.localpart = %{localpart} AND d.name = %{domain}")
    DEFAULT_SET_ISLAND = ("UPDATE account a JOIN domain d ON d.id = a.domain_id "
                          "SET a.island = %{value} "
                          "WHERE a.localpart = %{localpart} AND d.name = %{domain}")
    FIELDS = {"value", "user", "localpart", "domain"}

    def __init__(self, conf: dict, where: str, config: Config):
        check_keys(conf, self.KEYS, where)
        self.where = where
        self.server = want_str(conf, "server", where)
        self.socket = want_str(conf, "socket", where)
        if (self.server is None) == (self.socket is None):
            raise UsageError(f"{where}: give exactly one of \"server\" (HOST:PORT) and \"socket\"")
        if self.server is not None:
            self.host, self.port = split_address(self.server, f"{where}: server", 3306)
        self.database = want_str(conf, "database", where, required=True)
        self.user = want_str(conf, "user", where, required=True)
        pw_file = want_str(conf, "password_file", where)
        self.password = (read_secret(config.resolve(pw_file), f"{where}: password_file")
                         if pw_file else None)
        self.set_state_sql = want_str(conf, "set_state", where, default=self.DEFAULT_SET_STATE)
        self.set_island_sql = want_str(conf, "set_island", where, default=self.DEFAULT_SET_ISLAND)
        for key, text in (("set_state", self.set_state_sql), ("set_island", self.set_island_sql)):
            fields = set(PLACEHOLDER.findall(text))
            if fields - self.FIELDS:
                raise UsageError(f"{where}: {key}: unknown placeholder "
                                 f"{', '.join('%{' + f + '}' for f in sorted(fields - self.FIELDS))}"
                                 f" (known: %{{value}}, %{{user}}, %{{localpart}}, %{{domain}})")
            if "value" not in fields:
                raise UsageError(f"{where}: {key}: the statement must use %{{value}}")
            if not fields & {"user", "localpart", "domain"}:
                raise UsageError(f"{where}: {key}: the statement must select the user with "
                                 f"%{{user}} or %{{localpart}}/%{{domain}}")
        client = conf.get("client", "mariadb")
        self.client = shutil.which(client) or client
        self.timeout = parse_duration(conf.get("timeout", "30s"), f"{where}: timeout")
        self.tls = conf.get("tls", False)
        if not isinstance(self.tls, bool):
            raise UsageError(f"{where}: tls must be true or false")

    def describe(self) -> str:
        return f"sql directory ({self.server or self.socket}, database {self.database})"

    @staticmethod
    def literal(value: str) -> str:
        if "\x00" in value:
            raise StepFailed("a value with a NUL byte cannot go to the SQL directory")
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def render(self, template: str, user: str, value: str) -> str:
        local, domain = split_user(user)
        values = {"value": value, "user": user, "localpart": local, "domain": domain}
        return PLACEHOLDER.sub(lambda m: self.literal(values[m.group(1)]), template)

    def run(self, statements: list[str]) -> str:
        """Run STATEMENTS in one client session; their output (tab separated)."""
        if not os.path.exists(self.client):
            raise StepFailed(f"the SQL client {self.client} is not installed (apt-get install "
                             f"mariadb-client)")

        def opt(value: str) -> str:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = ["[client]", f"user={opt(self.user)}"]
        if self.password is not None:
            lines.append(f"password={opt(self.password)}")
        if self.socket is not None:
            lines.append(f"socket={opt(self.socket)}")
        else:
            lines += [f"host={opt(self.host)}", f"port={self.port}", "protocol=TCP"]
        if self.tls:
            lines.append("ssl")
        def argv(defaults: str) -> list[str]:
            return [self.client, f"--defaults-file={defaults}", "--batch", "--skip-column-names",
                    "--default-character-set=utf8mb4",
                    f"--connect-timeout={max(1, int(self.timeout))}", self.database]
        script = ("SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, "
                  "'NO_BACKSLASH_ESCAPES', '');\n"
                  + "".join(s.rstrip().rstrip(";") + ";\n" for s in statements))
        r = run_with_secret_file(argv, "\n".join(lines) + "\n", ".cnf", script, self.timeout,
                                 "the SQL directory")
        if r.returncode != 0:
            raise StepFailed(f"the SQL directory refused: "
                             f"{r.stderr.decode('utf-8', 'replace').strip() or r.returncode}")
        return r.stdout.decode("utf-8", "replace")

    def preflight(self, user: str) -> str:
        self.run(["SELECT 1"])
        return "the SQL directory answers"

    def set_state(self, user: str, state: str, island: str, journal: dict) -> str:
        out = self.run([self.render(self.set_state_sql, user, state), "SELECT ROW_COUNT()"])
        return f"state {state} ({_rows(out)})"

    def switch(self, user: str, island: str, journal: dict) -> str:
        out = self.run(["START TRANSACTION",
                        self.render(self.set_island_sql, user, island), "SELECT ROW_COUNT()",
                        self.render(self.set_state_sql, user, "active"), "SELECT ROW_COUNT()",
                        "COMMIT"])
        return f"island {island} and state active in one transaction ({_rows(out)})"

    def after_change(self, mover: "Mover") -> str:
        return mover.invalidate_everywhere()


class InstanceDirectory:
    """Writes through an instance's admin API (POST /v1/users/NAME/account):
    the daemon's own LDAP or SQL client and credentials (its
    directory.ldap.writes / directory.sql.writes) change the user's state and
    island and read them back; no command-line tools, no passwords here."""

    kind = "isthmus"
    KEYS = {"type", "instance"}

    def __init__(self, conf: dict, where: str, config: Config):
        check_keys(conf, self.KEYS, where)
        name = want_str(conf, "instance", where)
        names = [i.name for i in config.instances]
        if name is not None and name not in names:
            raise UsageError(f"{where}: instance {name!r} is not in \"instances\" "
                             f"({', '.join(names)})")
        found = next(i for i in config.instances if name in (None, i.name))
        # A write does up to three directory round trips on the instance
        # (look up, write, read back; twice for the switch): more time than
        # a read.
        self.instance = Instance(found.name, socket_path=found.socket_path, url=found.url,
                                 token=found.token, timeout=max(found.timeout, 30.0))

    def describe(self) -> str:
        return f"the directory of instance {self.instance.name}, written through its admin API"

    def _write(self, user: str, body: dict) -> str:
        path = "/v1/users/" + urllib.parse.quote(user, safe="@") + "/account"
        status, answer = self.instance.request("POST", path, body)
        if status != 200:
            raise StepFailed(f"instance {self.instance.name} did not write {json.dumps(body)} "
                             f"for {user} (HTTP {status}): {clean(answer.get('error', ''))}")
        return clean(answer.get("written", ""))

    def preflight(self, user: str) -> str:
        # Nothing is written here (a "no-op" write of what a cache says
        # could undo a change made in the directory meanwhile): the first
        # write, state moving, is where a missing right shows, and the user
        # then stays active where they are.
        status, body = self.instance.request("GET", "/v1/status")
        if status != 200:
            raise StepFailed(f"instance {self.instance.name}: GET /v1/status answered HTTP "
                             f"{status}")
        if not body.get("directory_writes"):
            raise StepFailed(f"instance {self.instance.name} does not write its "
                             f"{body.get('directory', '?')} directory (configure "
                             f"directory.sql.writes or directory.ldap.writes there, or use "
                             f"another directory type here)")
        return f"instance {self.instance.name} writes its {body.get('directory')} directory"

    def set_state(self, user: str, state: str, island: str, journal: dict) -> str:
        return f"state {state} ({self._write(user, {'state': state})})"

    def switch(self, user: str, island: str, journal: dict) -> str:
        return (f"island {island} and state active "
                f"({self._write(user, {'island': island, 'state': 'active'})})")

    def after_change(self, mover: "Mover") -> str:
        return mover.invalidate_everywhere()


def _rows(output: str) -> str:
    counts = [int(x) for x in output.split() if x.lstrip("-").isdigit()]
    changed = sum(c for c in counts if c > 0)
    return f"{plural(changed, 'row')} changed"


class StaticDirectory:
    """The users.map file (docs/configuration.md): the user's line is
    rewritten (``LOGIN ISLAND [state=moving] [node_login=...]``), every other
    line kept, then every instance reloads."""

    kind = "static"
    KEYS = {"type", "file", "files", "lowercase", "default_domain"}

    def __init__(self, conf: dict, where: str, config: Config):
        check_keys(conf, self.KEYS, where)
        files = conf.get("files", conf.get("file"))
        if isinstance(files, str):
            files = [files]
        if not isinstance(files, list) or not files or not all(isinstance(f, str) and f
                                                               for f in files):
            raise UsageError(f"{where}: \"file\" (the users.map path) is required")
        self.files = [config.resolve(f) for f in files]
        self.lowercase = conf.get("lowercase", True)
        self.default_domain = want_str(conf, "default_domain", where)

    def describe(self) -> str:
        return f"static directory ({', '.join(self.files)})"

    def key_of(self, key: str) -> str:
        if self.lowercase:
            key = key.translate({c: c + 32 for c in range(65, 91)})
        if "@" not in key and self.default_domain:
            key += "@" + (self.default_domain.lower() if self.lowercase else self.default_domain)
        return key

    def _find(self, lines: list[str], user: str):
        for i, line in enumerate(lines):
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            fields = body.split()
            if fields[0] in ("*",) or fields[0].startswith("*@"):
                continue
            if self.key_of(fields[0]) == user:
                return i
        return None

    def _read(self, path: str) -> list[str]:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().splitlines()
        except OSError as e:
            raise StepFailed(f"cannot read {path}: {e.strerror or e}") from None

    def preflight(self, user: str) -> str:
        for path in self.files:
            self._read(path)
            if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
                raise StepFailed(f"cannot write in the folder of {path} (the map is replaced "
                                 f"by a rename)")
        return "the user map is writable"

    def _rewrite(self, user: str, island: str, state: str, journal: dict) -> list[tuple]:
        """Set USER's line in every file; returns [(path, old text)] for undo."""
        saved = journal.setdefault("static_original_lines", {})
        undo = []
        for path in self.files:
            lines = self._read(path)
            with open(path, "rb") as f:
                old = f.read()
            i = self._find(lines, user)
            if path not in saved:
                saved[path] = lines[i] if i is not None else None
            if i is None:
                key, attrs, comment = user, [], ""
            else:
                body, hash_, comment = lines[i].partition("#")
                comment = ("  #" + comment) if hash_ else ""
                fields = body.split()
                key = fields[0]
                attrs = [f for f in fields[2:] if not f.startswith("state=")]
            if state != "active":
                attrs.append(f"state={state}")
            new_line = " ".join([key, island] + attrs) + comment
            original = saved.get(path)
            if state == "active" and original is None and i is not None \
                    and island == journal.get("from"):
                # A rollback: the user had no line of their own.
                del lines[i]
            elif i is None:
                lines.append(new_line)
            else:
                lines[i] = new_line
            write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"), like=path)
            undo.append((path, old))
        return undo

    def set_state(self, user: str, state: str, island: str, journal: dict) -> str:
        self._pending_undo = self._rewrite(user, island, state, journal)
        return f"{user} {island} state={state} in {', '.join(self.files)}"

    def switch(self, user: str, island: str, journal: dict) -> str:
        self._pending_undo = self._rewrite(user, island, "active", journal)
        return f"{user} {island} in {', '.join(self.files)}"

    def after_change(self, mover: "Mover") -> str:
        try:
            generations = mover.reload_everywhere()
        except StepFailed:
            # An instance refused the new map: put the old one back.
            for path, old in getattr(self, "_pending_undo", []):
                write_atomic(path, old, like=path)
            try:
                mover.reload_everywhere()
            except MoveError:
                pass
            raise
        return (f"reloaded on {plural(len(generations), 'instance')}; "
                + mover.invalidate_everywhere())


class LdapDirectory:
    """ldapsearch (the user's DN) and ldapmodify (replace the island and
    state attributes) as a service account allowed to write them."""

    kind = "ldap"
    KEYS = {"type", "uri", "bind_dn", "bind_password_file", "base", "scope", "filter",
            "attributes", "starttls", "ca", "timeout"}

    def __init__(self, conf: dict, where: str, config: Config):
        check_keys(conf, self.KEYS, where)
        self.uri = want_str(conf, "uri", where, required=True)
        self.bind_dn = want_str(conf, "bind_dn", where, required=True)
        self.password = read_secret(config.resolve(
            want_str(conf, "bind_password_file", where, required=True)),
            f"{where}: bind_password_file")
        self.base = want_str(conf, "base", where, required=True)
        self.scope = conf.get("scope", "sub")
        if self.scope not in ("base", "one", "sub"):
            raise UsageError(f"{where}: scope must be base, one or sub")
        self.filter = want_str(conf, "filter", where,
                               default="(&(objectClass=mailIslandUser)(uid=%{user}))")
        attrs = conf.get("attributes", {})
        check_keys(attrs, {"island", "state"}, f"{where}: attributes")
        self.island_attr = attrs.get("island", "mailIsland")
        self.state_attr = attrs.get("state", "mailAccountState")
        self.starttls = conf.get("starttls", False)
        self.ca = config.resolve(conf["ca"]) if conf.get("ca") else None
        self.timeout = parse_duration(conf.get("timeout", "30s"), f"{where}: timeout")
        for tool in ("ldapsearch", "ldapmodify"):
            if shutil.which(tool) is None:
                raise UsageError(f"{where}: {tool} is not installed (apt-get install ldap-utils)")

    def describe(self) -> str:
        return f"ldap directory ({self.uri})"

    @staticmethod
    def escape(value: str) -> str:
        return "".join(f"\\{ord(ch):02x}" if ch in "*()\\\x00" else ch for ch in value)

    def _run(self, tool: str, args: list[str], stdin: str | None = None) -> str:
        env = dict(os.environ)
        if self.ca:
            env["LDAPTLS_CACERT"] = self.ca
        def argv(password_file: str) -> list[str]:
            return ([tool, "-x", "-H", self.uri, "-D", self.bind_dn, "-y", password_file,
                     "-o", f"nettimeout={max(1, int(self.timeout))}"]
                    + (["-ZZ"] if self.starttls else []) + args)
        # -y takes the whole file as the password: no newline.
        r = run_with_secret_file(argv, self.password, ".pw", stdin, self.timeout, tool,
                                 env=env)
        if r.returncode != 0:
            raise StepFailed(f"{tool} failed ({r.returncode}): "
                             f"{r.stderr.decode('utf-8', 'replace').strip()}")
        return r.stdout.decode("utf-8", "replace")

    def dn_of(self, user: str) -> str:
        local, domain = split_user(user)
        values = {"user": user, "localpart": local, "domain": domain}
        filt = PLACEHOLDER.sub(lambda m: self.escape(values.get(m.group(1), "")), self.filter)
        out = self._run("ldapsearch", ["-LLL", "-b", self.base, "-s", self.scope, filt, "1.1"])
        out = re.sub(r"\n ", "", out)
        dns = []
        for line in out.splitlines():
            if line.startswith("dn:: "):
                dns.append(base64.b64decode(line[5:]).decode("utf-8"))
            elif line.startswith("dn: "):
                dns.append(line[4:])
        if len(dns) != 1:
            raise StepFailed(f"the LDAP search for {user} found {len(dns)} entries (want one)")
        return dns[0]

    def _modify(self, dn: str, changes: list[tuple[str, str]]) -> None:
        lines = ["dn:: " + base64.b64encode(dn.encode()).decode(), "changetype: modify"]
        for attr, value in changes:
            lines += [f"replace: {attr}", f"{attr}:: " + base64.b64encode(value.encode()).decode(),
                      "-"]
        self._run("ldapmodify", [], "\n".join(lines) + "\n")

    def preflight(self, user: str) -> str:
        return f"LDAP entry {self.dn_of(user)}"

    def set_state(self, user: str, state: str, island: str, journal: dict) -> str:
        dn = self.dn_of(user)
        self._modify(dn, [(self.state_attr, state)])
        return f"{self.state_attr}: {state} on {dn}"

    def switch(self, user: str, island: str, journal: dict) -> str:
        dn = self.dn_of(user)
        self._modify(dn, [(self.island_attr, island), (self.state_attr, "active")])
        return f"{self.island_attr}: {island}, {self.state_attr}: active on {dn} (one modify)"

    def after_change(self, mover: "Mover") -> str:
        return mover.invalidate_everywhere()


# ---------------------------------------------------------------- IMAP

class Lit(bytes):
    """A literal in a parsed IMAP response."""


_LITERAL_MARK = re.compile(rb"\{(\d+)\+?\}\s*$")
_SECTION_ATOMS = {b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"}
_DATE = re.compile(r" ?[0-9]{1,2}-[A-Za-z]{3}-[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}\Z")


def valid_flag(flag: str) -> bool:
    """An RFC 3501 flag: atom or "\\" atom; ATOM-CHAR is a 7-bit printable
    character other than ( ) { % * " \\ ] and space."""
    body = flag[1:] if flag.startswith("\\") else flag
    return bool(body) and all(0x21 <= ord(c) <= 0x7E and c not in '(){%*"\\]' for c in body)


def imap_responses(data) -> list[list]:
    """imaplib's untagged DATA regrouped into responses: each a list of text
    pieces and Lit()s. imaplib gives one (text, literal) tuple per literal,
    then the rest of the line as bytes."""
    out, cur = [], []
    for item in data or []:
        if item is None:
            continue
        if isinstance(item, tuple):
            cur.append(item[0])
            cur.append(Lit(item[1]))
        else:
            cur.append(item)
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def imap_parse(parts: list) -> list:
    """One response's pieces -> nested lists of bytes (atoms, strings,
    literals) and None (NIL)."""
    stack: list[list] = [[]]
    for k, part in enumerate(parts):
        if isinstance(part, Lit):
            stack[-1].append(bytes(part))
            continue
        text = bytes(part)
        if k + 1 < len(parts) and isinstance(parts[k + 1], Lit):
            m = _LITERAL_MARK.search(text)
            if m:
                text = text[:m.start()]
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c in b" \t\r\n":
                i += 1
            elif c == 0x28:  # (
                stack.append([])
                i += 1
            elif c == 0x29:  # )
                if len(stack) > 1:
                    done = stack.pop()
                    stack[-1].append(done)
                i += 1
            elif c == 0x22:  # "
                j, buf = i + 1, bytearray()
                while j < n and text[j] != 0x22:
                    if text[j] == 0x5C and j + 1 < n:
                        j += 1
                    buf.append(text[j])
                    j += 1
                stack[-1].append(bytes(buf))
                i = j + 1
            else:
                # "[" opens a section only right after BODY, BODY.PEEK or
                # BINARY[.PEEK|.SIZE] (BODY[HEADER.FIELDS (MESSAGE-ID)]):
                # elsewhere (a keyword such as foo[bar) it is an atom char.
                j, depth = i, 0
                while j < n:
                    ch = text[j]
                    if depth == 0 and ch == 0x5B and text[i:j].upper() in _SECTION_ATOMS:
                        depth = 1
                    elif depth > 0 and ch == 0x5B:
                        depth += 1
                    elif depth > 0 and ch == 0x5D:
                        depth -= 1
                    elif depth <= 0 and ch in b" ()":
                        break
                    j += 1
                atom = text[i:j]
                stack[-1].append(None if atom.upper() == b"NIL" else atom)
                i = j
    while len(stack) > 1:
        done = stack.pop()
        stack[-1].append(done)
    return stack[0]


def imap_quote(name: str) -> str:
    """NAME as an IMAP quoted string. A name holding CR, LF or NUL cannot be
    quoted (and is refused, naming it, rather than sent as a broken or
    injected command)."""
    if any(c in name for c in "\r\n\0"):
        raise ImapError(f"folder {name!r} holds a CR, LF or NUL character: it cannot be "
                        f"named in an IMAP command safely; rename it on the source and "
                        f"run again")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: list[int]) -> str:
    """[1,2,3,5] -> '1:3,5'."""
    out, start, prev = [], None, None
    for u in sorted(uids):
        if start is None:
            start = prev = u
        elif u == prev + 1:
            prev = u
        else:
            out.append(f"{start}:{prev}" if prev != start else str(start))
            start = prev = u
    if start is not None:
        out.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(out)


def internaldate_epoch(text: str) -> int | None:
    try:
        return int(datetime.datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp())
    except ValueError:
        return None


def message_id_of(header: bytes | None) -> str | None:
    if not header:
        return None
    text = re.sub(r"\r?\n[ \t]+", " ", header.decode("latin-1"))
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "message-id":
            value = value.strip()
            return value or None
    return None


class Msg:
    __slots__ = ("uid", "size", "msgid", "flags", "date", "sha")

    def __init__(self, uid, size, msgid, flags, date):
        self.uid, self.size, self.msgid, self.flags, self.date = uid, size, msgid, flags, date
        self.sha = None

    @property
    def key(self) -> str:
        """What identifies the message across servers."""
        if self.msgid is not None:
            return f"{self.size} id {self.msgid}"
        return f"{self.size} sha256 {self.sha}"

    @property
    def flag_text(self) -> str:
        return " ".join(self.flags)


class ImapError(StepFailed):
    pass


class ListingChanged(ImapError):
    """A folder listing that does not add up (messages arrived or were
    expunged while it was read): read it again."""


# ---------------------------------------------------------------- dsync

# doveadm/dsync exit codes (sysexits): 2 = the mailbox changed during the sync
# (run it again); the others are failures, named for the operator.
DSYNC_CHANGED = 2
# A pre-copy pass this short, with no change during it, ends the pre-copy.
DSYNC_QUICK = 1.0
DSYNC_CODES = {64: "usage (EX_USAGE)", 65: "data error (EX_DATAERR)",
               66: "cannot open input (EX_NOINPUT)", 67: "no such user on the node (EX_NOUSER)",
               68: "unknown host (EX_NOHOST)", 69: "service unavailable (EX_UNAVAILABLE)",
               70: "internal error (EX_SOFTWARE)", 73: "cannot create (EX_CANTCREAT)",
               75: "temporary failure, e.g. a lock (EX_TEMPFAIL)",
               77: "permission denied (EX_NOPERM)", 78: "configuration error (EX_CONFIG)"}


class Doveadm:
    """The doveadm HTTP API of one Dovecot node: the dsync mover asks the
    source node to run a one-way `doveadm sync` to the destination node's doveadm
    server (docs/move.md, "The dsync mover")."""

    MAX_ANSWER = 1 << 20   # a node's answer; more is not an answer of doveadm

    def __init__(self, endpoint: Endpoint, config: Config):
        if endpoint.doveadm_http is None:
            raise UsageError(f"node {endpoint.name} has no doveadm_http address in move.nodes "
                             f"(the dsync mover runs dsync on a source node through it)")
        if config.doveadm_auth is None:
            raise UsageError("move.dsync: password_file (doveadm_password) or api_key_file "
                             "(doveadm_api_key) is required by the dsync mover")
        self.endpoint = endpoint
        self.auth = config.doveadm_auth
        self.scheme, self.host, self.port = endpoint.doveadm_http

    def __str__(self):
        return f"{self.endpoint.name} ({self.scheme}://{self.host}:{self.port})"

    def _request(self, method: str, body, timeout: float):
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.endpoint.ssl_context())
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": self.auth, "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, "/doveadm/v1", body=payload, headers=headers)
            r = conn.getresponse()
            raw = r.read(self.MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as e:
            raise StepFailed(f"doveadm HTTP API of {self}: {_transport_error(e)}") from None
        finally:
            conn.close()
        if r.status in (401, 403):
            raise StepFailed(f"doveadm HTTP API of {self} refused the credentials (HTTP "
                             f"{r.status}): check move.dsync and the node's doveadm_password "
                             f"/ doveadm_api_key")
        if len(raw) > self.MAX_ANSWER:
            raise StepFailed(f"doveadm HTTP API of {self}: an answer over "
                             f"{show_bytes(self.MAX_ANSWER)}")
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if r.status != 200 or answer is None:
            raise StepFailed(f"doveadm HTTP API of {self}: HTTP {r.status}: "
                             f"{clean(raw[:200].decode('utf-8', 'replace'))}")
        return answer

    def commands(self, timeout: float) -> set[str]:
        answer = self._request("GET", None, timeout)
        if not isinstance(answer, list):
            raise StepFailed(f"doveadm HTTP API of {self}: the command list is not a list")
        return {c.get("command") for c in answer if isinstance(c, dict)}

    def run(self, command: str, parameters: dict, timeout: float) -> int:
        """Runs one command; its exit code (0, or what the node's doveadm
        reported). Anything else than an answer to it is a StepFailed."""
        tag = f"isthmus-move-{os.getpid()}"
        answer = self._request("POST", [[command, parameters, tag]], timeout)
        try:
            (kind, result, got_tag), = answer
        except (TypeError, ValueError):
            raise StepFailed(f"doveadm HTTP API of {self}: unexpected answer to {command}: "
                             f"{clean(json.dumps(answer)[:200])}") from None
        if got_tag != tag:
            raise StepFailed(f"doveadm HTTP API of {self}: an answer to another request")
        if kind == "doveadmResponse":
            return 0
        if kind == "error" and isinstance(result, dict):
            code = result.get("exitCode")
            if isinstance(code, int) and not isinstance(code, bool) and code > 0:
                return code
            raise StepFailed(f"doveadm on {self.endpoint.name}: {command} failed: "
                             f"{clean(json.dumps(result)[:200])}")
        raise StepFailed(f"doveadm HTTP API of {self}: unexpected answer to {command}: "
                         f"{clean(json.dumps(answer)[:200])}")


def dsync_destination(endpoint: Endpoint) -> str:
    host, port = endpoint.doveadm
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


class Imap:
    """One master-user session on one node (imaplib underneath)."""

    # What the node offers (set by _open, after the login).
    multiappend = uidplus = condstore = False
    last_signature = None

    def __init__(self, endpoint: Endpoint, config: Config, node_login: str):
        self.endpoint = endpoint
        self.m = None
        try:
            self._open(endpoint, config, node_login)
        except ImapError:
            self.close()
            raise
        except (OSError, UnicodeError, imaplib.IMAP4.error, ssl.SSLError) as e:
            # socket.timeout is an OSError: a hung node is tried like a down one.
            self.close()
            raise ImapError(f"node {endpoint}: {type(e).__name__}: {_text(e)}") from None

    def _open(self, endpoint: Endpoint, config: Config, node_login: str) -> None:
        try:
            if endpoint.tls == "implicit":
                m = imaplib.IMAP4_SSL(endpoint.host, endpoint.port,
                                      ssl_context=endpoint.ssl_context(),
                                      timeout=config.imap_timeout)
            else:
                m = imaplib.IMAP4(endpoint.host, endpoint.port, timeout=config.imap_timeout)
                self.m = m
                if endpoint.tls == "starttls":
                    m.starttls(endpoint.ssl_context())
        except (OSError, UnicodeError, imaplib.IMAP4.error) as e:
            raise ImapError(f"cannot connect to node {endpoint}: {_text(e)}") from None
        self.m = m
        if config.master_style == "dovecot":
            payload = (b"\0" + (node_login + config.separator + config.master_user).encode()
                       + b"\0" + config.master_password.encode())
        else:
            payload = (node_login.encode() + b"\0" + config.master_user.encode() + b"\0"
                       + config.master_password.encode())
        try:
            typ, data = m.authenticate("PLAIN", lambda _: payload)
        except imaplib.IMAP4.error as e:
            raise ImapError(f"node {endpoint} refused the master login for {node_login} "
                            f"({config.master_style} style): {_text(e)}") from None
        if typ != "OK":
            raise ImapError(f"node {endpoint} refused the master login for {node_login}: "
                            f"{_text(data)}")
        self.delimiter = None
        self.personal_prefix = ""
        self.other_prefixes: list[str] = []
        self._namespaces()
        try:
            typ, caps = m.capability()
        except imaplib.IMAP4.error as e:
            raise ImapError(f"node {endpoint}: CAPABILITY: {_text(e)}") from None
        words = b" ".join(c for c in caps or [] if isinstance(c, bytes)).upper().split() \
            if typ == "OK" else []
        # RFC 3502: many messages in one APPEND, saved in one transaction
        # (Dovecot then syncs once per batch, not once per message).
        self.multiappend = b"MULTIAPPEND" in words
        # RFC 4315: UID EXPUNGE removes only the given messages (a plain
        # EXPUNGE would also remove the copies of messages that carry
        # \Deleted on the source).
        self.uidplus = b"UIDPLUS" in words
        # RFC 7162: with CONDSTORE enabled, SELECT and EXAMINE answer the
        # folder's HIGHESTMODSEQ, which changes with every new message,
        # flag change and expunge: a folder whose UIDVALIDITY, UIDNEXT,
        # HIGHESTMODSEQ and EXISTS are those of its last pass has not
        # changed since (Mover.copy_pass skips it).
        self.condstore = False
        self.last_signature = None
        if b"CONDSTORE" in words:
            try:
                typ, _ = m._simple_command("ENABLE", "CONDSTORE")
                self.condstore = typ == "OK"
            except imaplib.IMAP4.error:
                pass

    def close(self) -> None:
        if self.m is None:
            return
        try:
            self.m.logout()
        except Exception:  # noqa: BLE001 - best effort
            try:
                self.m.shutdown()
            except Exception:  # noqa: BLE001
                pass

    def _check(self, what: str, typ, data):
        if typ != "OK":
            raise ImapError(f"node {self.endpoint}: {what}: {typ} {_text(data)}")
        return data

    def call(self, what: str, fn, *args):
        try:
            typ, data = fn(*args)
        except (imaplib.IMAP4.error, OSError, UnicodeError) as e:
            raise ImapError(f"node {self.endpoint}: {what}: {_text(e)}") from None
        return self._check(what, typ, data)

    def _namespaces(self) -> None:
        # Without the namespaces, other users' and shared folders would be
        # taken for the user's own: no guessing, the node is not used.
        try:
            typ, data = self.m.namespace()
        except imaplib.IMAP4.error as e:
            raise ImapError(f"node {self.endpoint}: NAMESPACE failed: {_text(e)}") from None
        if typ != "OK" or not data or data[0] is None:
            raise ImapError(f"node {self.endpoint}: NAMESPACE failed: {typ} {_text(data)}")
        parsed = imap_parse(imap_responses(data)[0])
        if len(parsed) < 3:
            raise ImapError(f"node {self.endpoint}: NAMESPACE answer not understood: "
                            f"{_text(data)}")
        groups = parsed[:3] if len(parsed) >= 3 else []
        for index, group in enumerate(groups):
            if not isinstance(group, list):
                continue
            for ns in group:
                if isinstance(ns, list) and ns and isinstance(ns[0], bytes):
                    prefix = ns[0].decode("utf-8", "replace")
                    if index == 0:
                        self.personal_prefix = prefix
                        if len(ns) > 1 and isinstance(ns[1], bytes):
                            self.delimiter = ns[1].decode()
                    elif prefix:
                        self.other_prefixes.append(prefix)

    def _listing(self, command: str) -> list[tuple[str, str | None, list[str]]]:
        fn = self.m.list if command == "LIST" else self.m.lsub
        data = self.call(command, fn, '""', '"*"')
        out = []
        for resp in imap_responses(data):
            parsed = imap_parse(resp)
            if len(parsed) < 3:
                continue
            flags = [f.decode("utf-8", "replace") for f in parsed[0]] \
                if isinstance(parsed[0], list) else []
            delim = parsed[1].decode() if isinstance(parsed[1], bytes) else None
            name = parsed[2].decode("utf-8", "replace") if isinstance(parsed[2], bytes) else ""
            if self.delimiter is None and delim:
                self.delimiter = delim
            if any(name.startswith(p) for p in self.other_prefixes):
                continue
            out.append((name, delim, flags))
        return out

    def folders(self) -> list[tuple[str, list[str]]]:
        return [(name, flags) for name, _, flags in self._listing("LIST")]

    def subscriptions(self) -> list[str]:
        return [name for name, _, _ in self._listing("LSUB")]

    def examine(self, name: str) -> int:
        data = self.call(f"EXAMINE {name}", self.m.select, imap_quote(name), True)
        try:
            return int(data[-1])
        except (TypeError, ValueError, IndexError):
            raise ImapError(f"node {self.endpoint}: EXAMINE {name}: no readable message count "
                            f"(EXISTS) in the answer: {_text(data)}") from None

    def uidvalidity(self) -> int | None:
        """The UIDVALIDITY of the folder just EXAMINEd or SELECTed."""
        try:
            return int(self.m.untagged_responses["UIDVALIDITY"][-1])
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def select(self, name: str) -> int:
        """SELECT NAME read-write (to change flags or expunge); its EXISTS."""
        data = self.call(f"SELECT {name}", self.m.select, imap_quote(name), False)
        try:
            return int(data[-1])
        except (TypeError, ValueError, IndexError):
            raise ImapError(f"node {self.endpoint}: SELECT {name}: no readable message count "
                            f"(EXISTS) in the answer: {_text(data)}") from None

    def listing(self, name: str, write: bool = False, attempts: int = 5,
                cache: dict | None = None) -> list[Msg]:
        """Every message of folder NAME (EXAMINEd, or SELECTed when WRITE),
        listed again when the folder changed while it was read (the user
        is active during the pre-copy). CACHE: see messages()."""
        for attempt in range(1, attempts + 1):
            exists = self.select(name) if write else self.examine(name)
            self.last_signature = self.signature(exists)
            try:
                return self.messages(name, exists, cache)
            except ListingChanged:
                if attempt == attempts:
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    def signature(self, exists: int) -> tuple | None:
        """(UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, EXISTS) of the folder just
        selected, or None without CONDSTORE (or a NOMODSEQ folder)."""
        if not self.condstore:
            return None
        codes = self.m.untagged_responses
        try:
            return tuple(int(codes[k][-1]) for k in ("UIDVALIDITY", "UIDNEXT",
                                                      "HIGHESTMODSEQ")) + (exists,)
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def changed_since(self, name: str, signature: tuple | None) -> bool:
        """Whether folder NAME (EXAMINEd now) may have changed since
        SIGNATURE was taken; True whenever that cannot be told."""
        if signature is None or not self.condstore:
            return True
        return self.signature(self.examine(name)) != signature

    def messages(self, name: str, exists: int, cache: dict | None = None,
                 all_flags: bool = False) -> list[Msg]:
        """Every message of the folder NAME just EXAMINEd or SELECTed, in UID
        order. CACHE (a dict the caller keeps for the run): with CONDSTORE,
        a folder this node listed before, with the same UIDVALIDITY, is
        listed incrementally: its UIDs (UID SEARCH), the flags of the
        messages changed since that listing's HIGHESTMODSEQ (CHANGEDSINCE,
        RFC 7162) and the new messages only; sizes, Message-IDs and dates
        do not change under a UID. So a pass over a large folder that
        changed a little costs its UID list, not every message's header.
        ALL_FLAGS (the verification): every message's flags are read anew
        (UID FETCH 1:* (UID FLAGS), no headers), not only the changed ones'."""
        signature = self.signature(exists) if cache is not None else None
        key = (str(self.endpoint), name)
        prev = cache.get(key) if cache is not None else None
        # A HIGHESTMODSEQ lower than the last listing's (an index rebuilt
        # under the same UIDVALIDITY) makes CHANGEDSINCE blind: list in full.
        if (prev is not None and signature is not None and prev["validity"] == signature[0]
                and signature[2] >= prev["modseq"]):
            msgs = self._messages_since(name, exists, prev, all_flags)
        else:
            msgs = self._messages_all(name, exists, "1:*")
        if cache is not None:
            if signature is not None:
                cache[key] = {"validity": signature[0], "modseq": signature[2],
                              "msgs": {m.uid: m for m in msgs}}
            else:
                cache.pop(key, None)
        return msgs

    def _messages_since(self, name: str, exists: int, prev: dict,
                        all_flags: bool = False) -> list[Msg]:
        if exists == 0:
            return []
        data = self.call(f"UID SEARCH in {name}", self.m.uid, "SEARCH", "ALL")
        try:
            uids = sorted({int(u) for line in data if line for u in line.split()})
        except (TypeError, ValueError):
            raise ImapError(f"node {self.endpoint}: UID SEARCH in {name}: an unreadable answer: "
                            f"{_text(data)}") from None
        known = prev["msgs"]
        if all_flags:
            data = self.call(f"FETCH FLAGS in {name}", self.m.uid, "FETCH", "1:*", "(UID FLAGS)")
        else:
            data = self.call(f"FETCH CHANGEDSINCE in {name}", self.m.uid, "FETCH", "1:*",
                             "(UID FLAGS)", f"(CHANGEDSINCE {prev['modseq']})")
        flags_now = {}
        for resp in imap_responses(data):
            items = _fetch_items(resp)
            if "UID" not in items or "FLAGS" not in items:
                continue   # unsolicited: another session's change, seen by the next listing
            try:
                flags_now[int(items["UID"])] = sorted(
                    f.decode("utf-8", "replace") for f in items["FLAGS"] or []
                    if f.lower() != b"\\recent")
            except (TypeError, ValueError):
                raise ImapError(f"node {self.endpoint}: FETCH in {name}: an unreadable UID: "
                                f"{_text(resp)}") from None
        new = [u for u in uids if u not in known]
        fresh = {m.uid: m for m in self._messages_all(name, len(new), uid_set(new))} \
            if new else {}
        out = []
        for uid in uids:
            m = fresh.get(uid)
            if m is None:
                old = known.get(uid)
                if old is None:
                    raise ListingChanged(f"node {self.endpoint}: {name}: message UID {uid} "
                                         f"went away while it was listed")
                m = old
                if uid in flags_now and flags_now[uid] != old.flags:
                    m = Msg(old.uid, old.size, old.msgid, flags_now[uid], old.date)
                    m.sha = old.sha
            out.append(m)
        exists = self.exists_now(exists)
        if len(out) != exists:
            raise ListingChanged(f"node {self.endpoint}: {name}: {len(out)} UIDs, but the "
                                 f"folder holds {exists} (EXISTS): the listing is incomplete")
        return out

    def exists_now(self, exists: int) -> int:
        """The selected folder's message count now: the last EXISTS the
        server sent (one during a FETCH updates it), else EXISTS."""
        counts = (self.m.untagged_responses.get("EXISTS") or [None])
        try:
            return int(counts[-1])
        except (TypeError, ValueError):
            return exists

    def _messages_all(self, name: str, exists: int, uids: str) -> list[Msg]:
        """The messages UIDS ("1:*": all of them; then there must be
        EXISTS of them)."""
        if exists == 0:
            return []
        data = self.call(f"FETCH in {name}", self.m.uid, "FETCH", uids,
                         "(UID RFC822.SIZE FLAGS INTERNALDATE "
                         "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        out = {}
        for resp in imap_responses(data):
            items = _fetch_items(resp)
            if not {"RFC822.SIZE", "INTERNALDATE"} & set(items) \
                    and not any(k.startswith("BODY[") for k in items):
                # An unsolicited FETCH (FLAGS, UID, MODSEQ): another session
                # changed flags (the user, during the pre-copy). The count
                # check below still sees a listing that lacks a message.
                continue
            try:
                uid, size = int(items["UID"]), int(items["RFC822.SIZE"])
            except (KeyError, TypeError, ValueError):
                raise ImapError(f"node {self.endpoint}: FETCH in {name}: a response without a "
                                f"readable UID and RFC822.SIZE: {_text(resp)}") from None
            header = next((v for k, v in items.items() if k.startswith("BODY[HEADER")), None)
            flags = sorted(f.decode("utf-8", "replace") for f in items.get("FLAGS") or []
                           if f.lower() != b"\\recent")
            date = items.get("INTERNALDATE")
            out[uid] = Msg(uid, size, message_id_of(header), flags,
                           date.decode("latin-1") if isinstance(date, bytes) else None)
        if uids != "1:*":
            if len(out) != exists:
                raise ListingChanged(f"node {self.endpoint}: FETCH in {name}: {len(out)} of "
                                     f"{exists} new messages read: some went away meanwhile")
            return [out[u] for u in sorted(out)]
        exists = self.exists_now(exists)
        if len(out) != exists:
            raise ListingChanged(f"node {self.endpoint}: FETCH in {name}: {len(out)} messages "
                                 f"read, but the folder holds {exists} (EXISTS): the listing "
                                 f"is incomplete")
        return [out[u] for u in sorted(out)]

    def bodies(self, name: str, uids: list[int], tolerant: bool = False) -> dict[int, bytes]:
        """The bodies of UIDS in the selected folder NAME. TOLERANT: a message
        expunged meanwhile (the user is active during the pre-copy) is left
        out of the answer instead of failing the step."""
        data = self.call(f"FETCH bodies in {name}", self.m.uid, "FETCH", uid_set(uids),
                         "(UID BODY.PEEK[])")
        out = {}
        for resp in imap_responses(data):
            items = _fetch_items(resp)
            if "UID" in items and isinstance(items.get("BODY[]"), bytes):
                out[int(items["UID"])] = items["BODY[]"]
        missing = set(uids) - set(out)
        if missing and not tolerant:
            raise ImapError(f"node {self.endpoint}: {name}: no body for UIDs "
                            f"{uid_set(sorted(missing))} (expunged meanwhile?)")
        return out

    @staticmethod
    def _append_args(msg: Msg) -> list[str]:
        """The flags and date of MSG for APPEND, checked: they come from the
        network and go into a command line."""
        bad = [f for f in msg.flags if not valid_flag(f)]
        if bad:
            raise ImapError(f"message UID {msg.uid} has flags that are not valid IMAP flags "
                            f"({', '.join(repr(f) for f in bad)}): it cannot be copied with "
                            f"them; remove them on the source and run again")
        args = []
        if msg.flags:
            args.append("(" + " ".join(msg.flags) + ")")
        if msg.date:
            if not _DATE.match(msg.date):
                raise ImapError(f"message UID {msg.uid} has an INTERNALDATE that is not "
                                f"understood: {msg.date!r}")
            args.append('"' + msg.date + '"')
        return args

    def append(self, name: str, items: list[tuple[Msg, bytes]], delay: float = 0.0) -> None:
        """APPEND every (message, body) of ITEMS to folder NAME, each body
        exactly as fetched (imaplib.append would rewrite bare CRs and LFs),
        with its flags and INTERNALDATE. With MULTIAPPEND, one command and
        one transaction for all of them: all are saved, or none."""
        if not items:
            return
        if not self.multiappend or len(items) == 1:
            for msg, body in items:
                self.m.literal = body
                self.call(f"APPEND to {name}", self.m._simple_command, "APPEND",
                          imap_quote(name), *self._append_args(msg))
                if delay:
                    time.sleep(delay)
            return
        feeder = _MultiAppend(items, self._append_args, delay)
        # imaplib calls a bound method given as the literal once per
        # continuation request and sends what it returns, then CRLF.
        self.m.literal = feeder.next_literal
        self.call(f"APPEND (MULTIAPPEND of {len(items)}) to {name}", self.m._simple_command,
                  "APPEND", imap_quote(name), *self._append_args(items[0][0]),
                  "{%d}" % len(items[0][1]))

    def store_flags(self, name: str, uids: list[int], flags: list[str]) -> None:
        """Set the flags of UIDS in the selected folder NAME to FLAGS
        (checked: they come from the network and go into a command line)."""
        bad = [f for f in flags if not valid_flag(f)]
        if bad:
            raise ImapError(f"{name}: flags that are not valid IMAP flags "
                            f"({', '.join(repr(f) for f in bad)}): they cannot be copied; "
                            f"remove them on the source and run again")
        self.call(f"STORE FLAGS in {name}", self.m.uid, "STORE", uid_set(uids), "FLAGS.SILENT",
                  "(" + " ".join(flags) + ")")

    def expunge(self, name: str, uids: list[int]) -> None:
        """Remove UIDS, and only them, from the selected folder NAME."""
        if not self.uidplus:
            raise ImapError(f"node {self.endpoint} does not offer UIDPLUS (RFC 4315): messages "
                            f"expunged on the source cannot be removed from {name} without "
                            f"touching others marked \\Deleted")
        uids_text = uid_set(uids)
        self.call(f"STORE \\Deleted in {name}", self.m.uid, "STORE", uids_text, "+FLAGS.SILENT",
                  "(\\Deleted)")
        self.call(f"UID EXPUNGE in {name}", self.m.uid, "EXPUNGE", uids_text)

    def create(self, name: str) -> None:
        self.call(f"CREATE {name}", self.m.create, imap_quote(name))

    def subscribe(self, name: str) -> None:
        self.call(f"SUBSCRIBE {name}", self.m.subscribe, imap_quote(name))

    def unsubscribe(self, name: str) -> None:
        self.call(f"UNSUBSCRIBE {name}", self.m.unsubscribe, imap_quote(name))

    def delete(self, name: str) -> None:
        self.call(f"DELETE {name}", self.m.delete, imap_quote(name))


class _MultiAppend:
    """The literals of one MULTIAPPEND: each continuation gets a message
    followed by the next message's flags, date and literal size."""

    def __init__(self, items, args_of, delay: float):
        self.items = items
        self.args_of = args_of
        self.delay = delay
        self.k = 0

    def next_literal(self, _continuation) -> bytes:
        if self.delay and self.k:
            time.sleep(self.delay)
        msg, body = self.items[self.k]
        self.k += 1
        if self.k >= len(self.items):
            return body
        nxt_msg, nxt_body = self.items[self.k]
        head = " ".join(self.args_of(nxt_msg) + ["{%d}" % len(nxt_body)])
        return body + b" " + head.encode("ascii")


def _fetch_items(resp: list) -> dict:
    parsed = imap_parse(resp)
    items = {}
    lst = next((p for p in parsed if isinstance(p, list)), None)
    if lst is None:
        return items
    for k in range(0, len(lst) - 1, 2):
        key = lst[k]
        if isinstance(key, bytes):
            items[key.decode("utf-8", "replace").upper()] = lst[k + 1]
    return items


def _text(value) -> str:
    if isinstance(value, BaseException):
        value = value.args[0] if value.args else str(value)
    if isinstance(value, list):
        value = b" ".join(v if isinstance(v, bytes) else str(v).encode() for v in value
                          if v is not None)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return clean(value)[:300]


# ---------------------------------------------------------------- the copy

def map_name(name: str, src_delim: str | None, dst_delim: str | None) -> str:
    if not src_delim or not dst_delim or src_delim == dst_delim:
        return name
    parts = name.split(src_delim)
    if any(dst_delim in p for p in parts):
        raise StepFailed(f"folder {name!r} cannot be named on the destination (its name holds "
                         f"the destination's hierarchy separator {dst_delim!r})")
    return dst_delim.join(parts)


def selectable(flags: list[str]) -> bool:
    lowered = {f.lower() for f in flags}
    return not lowered & {"\\noselect", "\\nonexistent"}


def fill_hashes(imap: Imap, folder: str, msgs: list[Msg],
                batch_bytes: int = 16 * 1024 * 1024, batch_messages: int = 50,
                tolerant: bool = False) -> list[Msg]:
    """SHA-256 of the body for messages without a Message-ID, fetched in
    batches of at most BATCH_BYTES (by RFC822.SIZE; one bigger message goes
    alone) and BATCH_MESSAGES. TOLERANT: a message expunged meanwhile is
    dropped. Returns MSGS without the dropped ones."""
    gone = set()
    todo = [m for m in msgs if m.msgid is None and m.sha is None]
    i = 0
    while i < len(todo):
        chunk, size = [], 0
        while i < len(todo) and (not chunk or (size + todo[i].size <= batch_bytes
                                               and len(chunk) < batch_messages)):
            chunk.append(todo[i])
            size += todo[i].size
            i += 1
        bodies = imap.bodies(folder, [m.uid for m in chunk], tolerant)
        for m in chunk:
            if m.uid in bodies:
                m.sha = hashlib.sha256(bodies[m.uid]).hexdigest()
            else:
                gone.add(m.uid)
    return [m for m in msgs if m.uid not in gone] if gone else msgs


class FolderPlan:
    """What one pass does to one folder: the source's and the destination's
    messages paired by key (size + Message-ID, or size + body SHA-256), as
    multisets and in UID order, so that a message that is in a folder twice
    is copied twice and a message copied earlier is never copied again.

      todo      source messages without a partner: to copy
      restore   (flags, destination UIDs): partners whose flags differ on the
                destination, grouped by the source's flags
      extra     destination messages without a partner: expunged on the
                source since they were copied (or there before the move)
      already   how many were paired
    """

    def __init__(self, src_msgs: list[Msg], dst_msgs: list[Msg]):
        waiting: dict[str, collections.deque] = {}
        for m in dst_msgs:
            waiting.setdefault(m.key, collections.deque()).append(m)
        self.todo: list[Msg] = []
        groups: dict[tuple, list[int]] = {}
        self.already = 0
        for m in src_msgs:
            partners = waiting.get(m.key)
            if not partners:
                self.todo.append(m)
                continue
            d = partners.popleft()
            self.already += 1
            if d.flags != m.flags:
                groups.setdefault(tuple(m.flags), []).append(d.uid)
        self.restore = [(list(flags), uids) for flags, uids in groups.items()]
        self.extra = sorted((m for q in waiting.values() for m in q), key=lambda m: m.uid)

    @property
    def flag_changes(self) -> int:
        return sum(len(uids) for _, uids in self.restore)


def fingerprint(msgs: list[Msg]) -> collections.Counter:
    return collections.Counter((m.key, m.flag_text, internaldate_epoch(m.date or "") or 0)
                               for m in msgs)


# ---------------------------------------------------------------- machine-readable events

# `move --events`: one JSON object per line on stdout instead of the text, for
# the daemon's move job (which runs `move USER --to ISLAND --events
# --journal-file PATH`, or `--resume` after a take-over). Each line is UTF-8,
# shorter than EVENT_LINE_MAX bytes and flushed. "event" is one of:
#   started   user, from ("" if none), to, mover, resume (and abort: true)
#   step      number, name (STEPS), status started|done|failed, text (the
#             line text mode prints: "[1/7] precopy: ..."), seconds
#   say       text: every other line text mode prints; "stream": "stderr"
#             for the lines text mode writes to stderr (also written there)
#   progress  step, pass, folders_done, folders, messages, bytes (copied so
#             far in this pass), bytes_total (what the folders listed so far
#             in this pass have to copy); at most two a second, and one at
#             the end of each pass (dsync: one at the start and end, zeros)
#   journal   data: the journal as just saved (see encode_event for a big one)
#   finished  exit (the exit code), text (what the run came to),
#             interruption_seconds (null until the switch): always the last
# With --events-ack (what the daemon passes), after each journal event the
# mover waits for one line on its standard input: the daemon writes it once
# the journal is in the move store, so that whoever takes the move over
# never resumes from a journal older than what this run has done. No line
# within ACK_TIMEOUT, or end of input: the step fails (exit 3).
EVENT_LINE_MAX = 64 * 1024
EVENT_TEXT_MAX = 8 * 1024  # characters of one "text"
# Journal keys left out of a journal event, in this order, while the line is
# too long: progress detail and reports, never what a resume needs.
EVENT_JOURNAL_SHEDDABLE = (("copy", "folders"), ("verify_report",), ("history",))
PROGRESS_INTERVAL = 0.5  # seconds between progress events of a pass
ACK_TIMEOUT = 600.0  # seconds a journal event waits for the daemon's "stored"


def bounded_text(text) -> str:
    text = str(text)
    return text if len(text) <= EVENT_TEXT_MAX else text[:EVENT_TEXT_MAX - 3] + "..."


def encode_event(event: dict) -> bytes:
    """EVENT as one line (with its newline), shorter than EVENT_LINE_MAX:
    texts cut to EVENT_TEXT_MAX characters; a journal too big loses the keys
    of EVENT_JOURNAL_SHEDDABLE (named in "shed"), or else its data (null,
    "too_large": its size)."""
    event = dict(event)
    if "text" in event and event["text"] is not None:
        event["text"] = bounded_text(event["text"])

    def line(obj) -> bytes:
        return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
            "utf-8", errors="replace")

    out = line(event)
    if len(out) < EVENT_LINE_MAX or event.get("event") != "journal":
        return out if len(out) < EVENT_LINE_MAX else line(
            {"event": event.get("event"), "too_large": len(out)})
    data = json.loads(json.dumps(event.get("data")))  # a copy to shed from
    shed = []
    for path in EVENT_JOURNAL_SHEDDABLE:
        holder = data
        for key in path[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and path[-1] in holder:
            del holder[path[-1]]
            shed.append(".".join(path))
            out = line(dict(event, data=data, shed=shed))
            if len(out) < EVENT_LINE_MAX:
                return out
    return line({"event": "journal", "data": None, "too_large": len(line(event))})


class Events:
    """Writes the events of one run to OUT (a binary stream)."""

    def __init__(self, out, ack_in=None):
        import threading
        self.out = out
        # --events-ack: the file descriptor with one line per journal event,
        # read unbuffered (select must see what is not read yet).
        self.ack_fd = ack_in.fileno() if ack_in is not None else None
        self._ack_buffer = b""
        # Saves may come from the copy's worker threads: one journal event
        # and its answer at a time.
        self._journal_lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self.finished = False

    def emit(self, event: dict) -> None:
        line = encode_event(event)
        with self._emit_lock:
            self.out.write(line)
            self.out.flush()

    def journal_saved(self, data: dict) -> None:
        """The journal event; with --events-ack, waits until the daemon
        says it has stored it."""
        with self._journal_lock:
            self.emit({"event": "journal", "data": data})
            if self.ack_fd is not None:
                self._wait_for_ack()

    def _wait_for_ack(self) -> None:
        import select
        deadline = time.monotonic() + ACK_TIMEOUT
        why = ""
        while b"\n" not in self._ack_buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                why = "no answer in " + show_seconds(ACK_TIMEOUT)
                break
            ready, _, _ = select.select([self.ack_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.ack_fd, 4096)
            if not chunk:
                why = "its input ended"
                break
            self._ack_buffer += chunk
        line, _, self._ack_buffer = self._ack_buffer.partition(b"\n")
        if why or not line.startswith(b"stored"):
            raise StepFailed("the daemon did not confirm that it stored the journal "
                             f"({why or 'it answered something else'}); stopping here so that "
                             "a take-over resumes from where this run is")

    def finish(self, code: int, text: str, interruption) -> None:
        if self.finished:
            return
        self.finished = True
        self.emit({"event": "finished", "exit": code, "text": text,
                   "interruption_seconds": interruption})


# ---------------------------------------------------------------- the journal

class Journal:
    """The journal of USER's move: DIRECTORY/USER.json (locked through
    USER.lock next to it), or the file PATH (and PATH.lock) when given
    (--journal-file: the daemon keeps one per move job)."""

    def __init__(self, directory: str, user: str, path: str | None = None):
        if path is not None:
            self.directory = os.path.dirname(os.path.abspath(path))
            self.path = path
            self.lock_path = path + ".lock"
        else:
            self.directory = directory
            safe = urllib.parse.quote(user, safe="@.-_+")
            self.path = os.path.join(directory, safe + ".json")
            self.lock_path = os.path.join(directory, safe + ".lock")
        self.data: dict | None = None
        self._lock_fd = None
        self.on_save = None  # called with the data after each save (--events)

    def open(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the journal folder {self.directory}: "
                             f"{e.strerror or e}") from None
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StepFailed(f"another move of this user is running (it holds "
                                 f"{self.lock_path})") from None
            raise
        self._lock_fd = fd
        self.data = self.load()

    def load(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"the journal {self.path} cannot be read ({e}); move it away to "
                             f"start over") from None

    def save(self) -> None:
        self.data["updated"] = now_iso()
        write_atomic(self.path, (json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")
                     .encode("utf-8"))
        if self.on_save is not None:
            self.on_save(self.data)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


# ---------------------------------------------------------------- the move

class Mover:
    def __init__(self, config: Config, out=sys.stdout, err=sys.stderr,
                 events: Events | None = None):
        self.config = config
        self.out = out
        self.err = err
        self.events = events
        # The line finished.text carries (--events): what the run came to.
        self.summary: str | None = None
        self._last_progress_event = 0.0
        self.journal: Journal | None = None
        self.user = None
        self._last_progress_save = 0.0
        self._t0: dict[str, float] = {}
        # Source folders as of their last pass in this run, by name: their
        # signature (Imap.signature) then. Not journaled: a resumed run
        # lists every folder again.
        self._synced: dict[str, tuple] = {}
        # Folders found the same on both sides before the switch (precheck).
        self._checked: dict[str, dict] = {}
        self._precheck_seconds = 0.0
        # Folder listings of this run, per (node, folder): later passes and
        # the verification list incrementally (Imap.messages). Not journaled.
        self._listed: dict[tuple, dict] = {}

    # -- output

    def say(self, text: str = "") -> None:
        if self.events is not None:
            self.events.emit({"event": "say", "text": text})
        else:
            print(text, file=self.out, flush=True)

    def complain(self, text: str) -> None:
        """TEXT (lines starting "isthmus-move: ") on stderr; with --events
        each line a say event instead ("stream": "stderr": the daemon reads
        stderr too, and would show it twice), the first one the summary."""
        if self.events is not None:
            for line in text.split("\n"):
                self.events.emit({"event": "say", "text": line, "stream": "stderr"})
        else:
            print(text, file=self.err, flush=True)
        self.summary = text.split("\n")[0].removeprefix("isthmus-move: ")

    def event(self, event: dict) -> None:
        if self.events is not None:
            self.events.emit(event)

    def announce(self, resume: bool, **extra) -> None:
        """The started event of this run (--events)."""
        data = self.journal.data
        self.event(dict({"event": "started", "user": self.user, "from": data.get("from") or "",
                         "to": data.get("to"), "mover": data.get("mover", "imap"),
                         "resume": resume}, **extra))

    def progress(self, pass_no: int, folders_done: int, folders: int, messages: int,
                 size: int, size_total: int, last: bool = False) -> None:
        """A progress event of a copy pass (--events): at most one per
        PROGRESS_INTERVAL, and the LAST one of the pass always."""
        if self.events is None:
            return
        now = time.monotonic()
        if not last and now - self._last_progress_event < PROGRESS_INTERVAL:
            return
        self._last_progress_event = now
        self.events.emit({"event": "progress",
                          "step": self.journal.data.get("current_step"), "pass": pass_no,
                          "folders_done": folders_done, "folders": folders,
                          "messages": messages, "bytes": size, "bytes_total": size_total})

    # -- instances

    def ask_all(self, method: str, path: str, body=None) -> dict[str, tuple[int, dict]]:
        """The same request to every instance, in parallel. Raises
        Unreachable naming every instance that could not be reached."""
        instances = self.config.instances
        results, problems = {}, []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(instances))) as pool:
            futures = {pool.submit(i.request, method, path, body): i for i in instances}
            for future in concurrent.futures.as_completed(futures):
                inst = futures[future]
                try:
                    results[inst.name] = future.result()
                except Unreachable as e:
                    problems.append(str(e))
        if problems:
            raise Unreachable("; ".join(sorted(problems)))
        return {i.name: results[i.name] for i in instances}

    def ask_first(self, method: str, path: str) -> tuple[int, dict]:
        problems = []
        for inst in self.config.instances:
            try:
                return inst.request(method, path)
            except Unreachable as e:
                problems.append(str(e))
        raise Unreachable("no instance answers: " + "; ".join(problems))

    def invalidate_everywhere(self) -> str:
        replies = self.ask_all("POST", "/v1/cache/invalidate", {"user": self.user})
        bad = [f"{name}: HTTP {status} {body.get('error', '')}"
               for name, (status, body) in replies.items() if status not in (200, 409)]
        if bad:
            raise StepFailed("cache invalidation refused: " + "; ".join(bad))
        cached = sum(1 for status, _ in replies.values() if status == 200)
        return (f"cache entry dropped on {plural(cached, 'instance')}" if cached
                else "no instance caches the directory")

    def reload_everywhere(self) -> dict[str, int]:
        replies = self.ask_all("POST", "/v1/reload")
        bad = [f"{name}: {body.get('error', f'HTTP {status}')}"
               for name, (status, body) in replies.items() if status != 200]
        if bad:
            raise StepFailed("reload refused (the old map stays): " + "; ".join(bad))
        return {name: body.get("config_generation") for name, (_, body) in replies.items()}

    def user_everywhere(self) -> dict[str, dict]:
        replies = self.ask_all("GET", "/v1/users/" + urllib.parse.quote(self.user, safe=""))
        return {name: (body if status == 200 else {"error": body.get("error", f"HTTP {status}"),
                                                   "status": status})
                for name, (status, body) in replies.items()}

    def confirm(self, island: str, state: str) -> str:
        """Wait until every instance answers ISLAND/STATE for the user,
        dropping cached entries again meanwhile (a lookup that was under
        way during the change may have cached the old answer)."""
        deadline = time.monotonic() + self.config.confirm_timeout
        while True:
            answers = self.user_everywhere()
            wrong = {name: a for name, a in answers.items()
                     if a.get("island") != island or a.get("state") != state}
            if not wrong:
                return f"every instance answers island {island}, state {state}"
            if time.monotonic() >= deadline:
                detail = "; ".join(
                    f"{name}: " + (f"island {a.get('island')}, state {a.get('state')}"
                                   if "error" not in a else f"{a['error']}")
                    for name, a in wrong.items())
                raise StepFailed(f"instances do not answer island {island}, state {state} "
                                 f"after {show_seconds(self.config.confirm_timeout)}: {detail}")
            time.sleep(0.2)
            self.invalidate_everywhere()

    # -- nodes

    def candidates(self, island: str) -> list[Endpoint]:
        """The island's nodes that are up, holder / active first."""
        _, islands = self.ask_first("GET", "/v1/islands")
        _, nodes = self.ask_first("GET", "/v1/nodes")
        info = next((i for i in islands.get("islands", []) if i.get("name") == island), None)
        if info is None:
            raise UsageError(f"island {island!r} is not in the instances' config (islands: "
                             f"{', '.join(i.get('name', '?') for i in islands.get('islands', []))})")
        holder = info.get("holder")
        order = []
        for n in nodes.get("nodes", []):
            if n.get("island") != island or n.get("state") == "down":
                continue
            rank = (0 if n.get("name") == holder or n.get("role") == "active" else 1,
                    1 if n.get("draining") else 0,
                    0 if n.get("state") == "up" else 1)
            order.append((rank, n["name"]))
        order.sort()
        names = [name for _, name in order]
        endpoints = [self.config.nodes[n] for n in names if n in self.config.nodes]
        if not endpoints:
            missing = [n for n in names if n not in self.config.nodes]
            if missing:
                raise UsageError(f"no IMAP address for {', '.join(missing)} in move.nodes")
            raise StepFailed(f"island {island} has no node up")
        return endpoints

    def sieve_connect(self, island: str, node_login: str):
        """A ManageSieve session on the island's first node that has a
        managesieve address in move.nodes, as the master user; None when
        no node of the island has one (scripts are then not moved)."""
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import sieve_copy  # noqa: E402 (next to this file)
        problems = []
        endpoints = [e for e in self.candidates(island) if e.sieve]
        if not endpoints:
            return None
        c = self.config
        for e in endpoints:
            try:
                client = sieve_copy.SieveClient(
                    e.sieve[0], e.sieve[1], tls=e.sieve_tls, context=e.ssl_context(),
                    tls_name=e.tls_name, timeout=self.config.imap_timeout)
            except (OSError, sieve_copy.SieveError) as err:
                problems.append(f"{e.name} ManageSieve: {err}")
                continue
            try:
                client.log_in(node_login, c.master_user, c.master_password,
                              "dovecot" if c.master_style == "dovecot" else "sasl",
                              c.separator)
                return client
            except (OSError, sieve_copy.SieveError) as err:
                client.close()
                problems.append(f"{e.name} ManageSieve: {err}")
        raise StepFailed(f"no node of island {island} could be used for the Sieve scripts: "
                         + "; ".join(problems))

    def sieve_pair(self):
        """(source, destination) ManageSieve sessions, or None when either
        island has no managesieve address in move.nodes."""
        data = self.journal.data
        src = self.sieve_connect(data["from"], data["node_login"])
        if src is None:
            return None
        try:
            dst = self.sieve_connect(data["to"], data["node_login"])
        except BaseException:
            src.close()
            raise
        if dst is None:
            src.close()
            return None
        return src, dst

    def connect(self, island: str, node_login: str) -> Imap:
        problems = []
        for endpoint in self.candidates(island):
            try:
                return Imap(endpoint, self.config, node_login)
            except ImapError as e:
                problems.append(str(e))
        raise StepFailed(f"no node of island {island} could be used: " + "; ".join(problems))

    # -- journal helpers

    def step_start(self, name: str) -> dict:
        steps = self.journal.data["steps"]
        step = steps.setdefault(name, {"status": "pending"})
        step["status"] = "running"
        step["started"] = now_iso()
        step["attempts"] = step.get("attempts", 0) + 1
        step.pop("error", None)
        step.pop("ended", None)
        self._t0[name] = time.monotonic()
        self.journal.data["current_step"] = name
        self.journal.save()
        self.event({"event": "step", "number": STEP_NUMBER[name], "name": name,
                    "status": "started", "text": f"[{STEP_NUMBER[name]}/{LAST_STEP}] {name}",
                    "seconds": 0.0})
        return step

    def step_end(self, name: str, detail: str, extra: dict | None = None) -> None:
        step = self.journal.data["steps"][name]
        step["status"] = "done"
        step["ended"] = now_iso()
        step["seconds"] = round(time.monotonic() - self._t0.pop(name), 3)
        step["detail"] = detail
        if extra:
            step.update(extra)
        self.journal.save()
        n = STEP_NUMBER[name]
        text = f"[{n}/{LAST_STEP}] {name}: {detail} ({show_seconds(step['seconds'])})"
        if self.events is not None:
            self.events.emit({"event": "step", "number": n, "name": name, "status": "done",
                              "text": text, "seconds": step["seconds"]})
        else:
            self.say(text)

    def step_fail(self, name: str, error: str) -> None:
        step = self.journal.data["steps"].get(name, {})
        step["status"] = "failed"
        step["ended"] = now_iso()
        if name in self._t0:
            step["seconds"] = round(time.monotonic() - self._t0.pop(name), 3)
        step["error"] = error
        self.journal.save()
        self.event({"event": "step", "number": STEP_NUMBER[name], "name": name,
                    "status": "failed",
                    "text": f"[{STEP_NUMBER[name]}/{LAST_STEP}] {name}: FAILED: {error}",
                    "seconds": step.get("seconds", 0.0)})

    # -- entry points

    def lookup(self, raw_user: str) -> dict:
        status, body = self.ask_first("GET", "/v1/users/" + urllib.parse.quote(raw_user, safe=""))
        if status == 404:
            raise StepFailed(f"the directory does not know {clean(raw_user)}")
        if status != 200:
            raise StepFailed(f"cannot look {clean(raw_user)} up: "
                             f"{body.get('error', f'HTTP {status}')}")
        return body

    def status(self, raw_user: str) -> int:
        try:
            user = self.lookup(raw_user)["user"]
        except MoveError:
            user = raw_user
        journal = Journal(self.config.journal_dir, user)
        data = journal.load()
        if data is None:
            self.say(f"no move of {clean(user)} is journaled in {self.config.journal_dir}")
            return EXIT_OK
        self.say(f"move of {clean(user)}: {data.get('from')} -> {data.get('to')}, "
                 f"{data.get('status')}, {data.get('mover', 'imap')} mover "
                 f"(journal {journal.path})")
        for name in STEPS:
            step = data["steps"].get(name)
            if not step:
                continue
            self.say(f"  {STEP_NUMBER[name]} {name:<9} {step.get('status'):<8} "
                     f"{show_seconds(step['seconds']) if 'seconds' in step else '':>7}  "
                     f"{step.get('error') or step.get('detail') or ''}")
        return EXIT_OK

    def move(self, raw_user: str, to: str | None, resume: bool, abort: bool, force: bool,
             mover: str | None = None, journal_file: str | None = None) -> int:
        entry = self.lookup(raw_user)
        self.user = entry["user"]
        self.journal = Journal(self.config.journal_dir, self.user, journal_file)
        if self.events is not None:
            self.journal.on_save = self.events.journal_saved
        self.journal.open()
        data = self.journal.data
        if journal_file is not None and data is not None and data.get("user") != self.user:
            self.journal.close()
            raise UsageError(f"the journal {journal_file} is of a move of "
                             f"{clean(data.get('user'))}, not of {self.user}")
        try:
            return self._move(entry, to, resume, abort, force, mover)
        finally:
            self.close_engine()
            self.journal.close()

    @property
    def kind(self) -> str:
        """This move's mover: "imap" or "dsync" (journaled at its start)."""
        return self.journal.data.get("mover", "imap")

    def _move(self, entry: dict, to, resume: bool, abort: bool, force: bool,
              mover: str | None = None) -> int:
        data = self.journal.data
        user = self.user
        if data is not None and data.get("status") in ("running", "rolling-back", "aborting"):
            if mover is not None and mover != data.get("mover", "imap"):
                raise UsageError(f"the unfinished move of {user} runs with the "
                                 f"{data.get('mover', 'imap')} mover (journal "
                                 f"{self.journal.path}): resume it without --mover")
            if to is not None and to != data["to"]:
                raise UsageError(f"a move of {user} to island {data['to']} is unfinished "
                                 f"(journal {self.journal.path}): "
                                 + ("finish its abort with --abort first"
                                    if data["status"] == "aborting" else
                                    "resume it with --resume" + (", or --abort it first"
                                                                 if self.abortable() else "")))
            if data["status"] == "aborting":
                if resume:
                    raise UsageError(f"the move of {user} is being aborted (an earlier --abort "
                                     f"did not finish): it cannot be resumed; finish the abort "
                                     f"with --abort, then start a new move with --to "
                                     f"{data['to']} (journal {self.journal.path})")
                self.announce(resume, abort=True)
                self.say(f"finishing the abort of the move of {user} "
                         f"(journal {self.journal.path})")
                return self.abort()
            if abort:
                self.announce(False, abort=True)
                return self.abort()
            if data["status"] == "rolling-back":
                self.announce(True)
                self.say(f"finishing the rollback of the move of {user} "
                         f"(journal {self.journal.path})")
                return self.rollback(data.get("rollback_reason", "an earlier run"))
            first = next(s for s in STEPS if data["steps"].get(s, {}).get("status") != "done")
            self.announce(True)
            self.say(f"resuming the move of {user} from island {data['from']} to {data['to']} at "
                     f"step {first} (journal {self.journal.path})")
            data["runs"] = data.get("runs", 1) + 1
            data["pid"] = os.getpid()
            # The user may have been set active meanwhile (by hand, or by a
            # stale cache): the state is "moving" again, confirmed, and the
            # sessions kicked before copying, verifying or switching. A
            # pre-copy (the user active) is simply run again.
            reassert = first in ("kick", "copy", "verify", "switch")
            return self.run_steps(first, reassert=reassert)
        if abort:
            raise UsageError(f"no unfinished move of {user} to abort"
                             + (f" (the last one is {data['status']})" if data else ""))
        if data is not None and data.get("status") == "done" and (to is None or to == data["to"]):
            if entry.get("island") == data["to"] and entry.get("state") == "active":
                self.summary = (f"{user} was moved to island {data['to']} already (finished "
                                f"{data.get('finished', '?')}): nothing to do")
                self.say(self.summary)
                return EXIT_OK
        if resume:
            if data is None:
                raise UsageError(f"no move of {user} to resume (no journal in "
                                 f"{self.config.journal_dir})")
            raise UsageError(f"the last move of {user} is {data.get('status')}, not unfinished: "
                             f"start a new one with --to ISLAND")
        if to is None:
            raise UsageError("say where to: --to ISLAND")
        if entry.get("island") == to and entry.get("state") == "active":
            self.summary = f"{user} is on island {to} already: nothing to do"
            self.say(self.summary)
            return EXIT_OK
        history = []
        if data is not None:
            history = data.pop("history", [])
            history.append({k: data.get(k) for k in ("from", "to", "status", "created",
                                                     "finished", "error", "mover")})
        mover = mover or self.config.mover
        if mover == "dsync" and self.config.copier:
            raise UsageError("the dsync mover and move.copier exclude each other")
        self.journal.data = {
            "version": 1, "user": user, "from": entry.get("island"), "to": to, "mover": mover,
            "node_login": entry.get("node_login") or user,
            "directory": self.config.directory.kind, "status": "running",
            "created": now_iso(), "pid": os.getpid(), "runs": 1, "force": force,
            "steps": {}, "copy": {"messages": 0, "bytes": 0, "folders": {}},
            "history": history,
        }
        self.announce(False)
        engine = f"copy engine {self.config.copy_engine}, " if mover == "imap" else ""
        self.say(f"moving {user} from island {entry.get('island')} to {to} with the {mover} "
                 f"mover ({engine}{self.config.directory.describe()}, "
                 f"{plural(len(self.config.instances), 'instance')})")
        return self.run_steps("preflight")

    def run_steps(self, first: str, reassert: bool = False) -> int:
        data = self.journal.data
        for name in STEPS[STEP_NUMBER[first]:]:
            try:
                if reassert:
                    # Before step_start: a failure here has not started the
                    # step (a switch not started can still be aborted).
                    reassert = False
                    self.reassert_moving()
                step = self.step_start(name)
                getattr(self, "step_" + name)(step)
            except VerifyFailed as e:
                self.step_fail(name, str(e))
                data["verify_report"] = e.report
                if self.events is None:  # else the failed step event carries it
                    self.say(f"[{STEP_NUMBER[name]}/{LAST_STEP}] {name}: FAILED: {e}")
                return self.rollback(str(e))
            except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - journaled, reported
                if isinstance(e, KeyboardInterrupt):
                    error, code = "interrupted", EXIT_STEP
                elif isinstance(e, MoveError):
                    error, code = str(e), e.code
                else:
                    error, code = f"unexpected {type(e).__name__}: {e}", EXIT_STEP
                self.fail_run(name, error)
                return code
        return EXIT_OK

    def abortable(self) -> bool:
        """Whether --abort may put the user back: only before the switch has
        started (a switch attempt may have routed the user to the
        destination already; aborting then would strand mail there)."""
        return "switch" not in self.journal.data["steps"]

    def fail_run(self, name: str, error: str) -> None:
        """Journal step NAME failed with ERROR and tell the operator where the
        user is and what to run: the one message for every failure."""
        data = self.journal.data
        try:
            self.step_fail(name, error)
        except Exception as e:  # noqa: BLE001 - the message matters more
            error += f" (and the journal could not be written: {e})"
        if name == "preflight":
            try:
                data["status"] = "refused"
                data["error"] = error
                self.journal.save()
            except Exception:  # noqa: BLE001
                pass
            self.complain(f"isthmus-move: preflight failed, nothing was changed: {error}")
            return
        user, source, dest = self.user, data["from"], data["to"]
        if not self.abortable():
            where = (f"the directory may already route {user} to island {dest}: run "
                     f"--resume to finish (it cannot be aborted any more)")
        elif name == "precopy":
            where = (f"{user} is still active on island {source} (the pre-copy does not "
                     f"interrupt them): fix the cause and run again with --resume (the "
                     f"pre-copy starts over, without copying anything twice), or --abort to "
                     f"give the move up")
        elif name == "moving":
            where = (f"{user} may be in state moving on island {source} (logins refused, mail "
                     f"queued): fix the cause and run again with --resume, or --abort to put "
                     f"the user back (active on island {source})")
        else:
            where = (f"{user} stays in state moving on island {source} (logins refused, mail "
                     f"queued): fix the cause and run again with --resume, or --abort to put "
                     f"the user back (active on island {source})")
        self.complain(f"isthmus-move: step {name} failed: {error}\n"
                      f"isthmus-move: {where}; journal {self.journal.path}")

    def reassert_moving(self) -> None:
        """On a resumed run: state moving on the source confirmed by every
        instance, and the user's sessions kicked, again."""
        data = self.journal.data
        directory = self.config.directory
        what = directory.set_state(self.user, "moving", data["from"], data)
        self.journal.save()
        directory.after_change(self)
        self.confirm(data["from"], "moving")
        kicked = self.kick_sessions()
        self.say(f"      resumed: {what}; {plural(kicked, 'session')} closed; none left on any "
                 f"instance")

    # -- the steps

    def step_preflight(self, step: dict) -> None:
        data = self.journal.data
        user, source, dest = self.user, data["from"], data["to"]
        self.invalidate_everywhere()
        answers = self.user_everywhere()
        for name, a in answers.items():
            if "error" in a:
                raise StepFailed(f"instance {name} cannot look {user} up: {a['error']}")
            if a.get("island") != source:
                raise StepFailed(f"the instances disagree on {user}'s island: {name} says "
                                 f"{a.get('island')}, another {source}")
        state = next(iter(answers.values())).get("state")
        if state == "disabled":
            raise StepFailed(f"{user} is disabled: a disabled account is not moved (the move "
                             f"would end with it active)")
        if state == "moving" and not data.get("force"):
            raise StepFailed(f"{user} is in state moving already, but no unfinished move is "
                             f"journaled here: another move (by hand, or from another journal "
                             f"folder) may be running. If not, run again with --force")
        if source == dest:
            raise StepFailed(f"{user} is on island {dest} already")
        src_nodes = self.candidates(source)
        dst_nodes = self.candidates(dest)
        directory = self.config.directory.preflight(user)
        src = self.connect(source, data["node_login"])
        try:
            dst = self.connect(dest, data["node_login"])
        except BaseException:
            src.close()
            raise
        try:
            counts = 0
            for name, flags in dst.folders():
                if selectable(flags):
                    counts += dst.examine(name)
            total = 0
            for name, flags in src.folders():
                if selectable(flags):
                    total += src.examine(name)
        finally:
            src.close()
            dst.close()
        earlier = any(h.get("to") == dest for h in data.get("history", []))
        if counts and not earlier and not data.get("force"):
            raise StepFailed(f"the destination mailbox of {user} on island {dest} holds "
                             f"{plural(counts, 'message')} already (a leftover of an earlier "
                             f"move?): remove them, or run again with --force to merge (the "
                             f"verification will then fail on messages not on the source)")
        if self.kind == "dsync":
            step["dsync"] = self.dsync_preflight(counts)
        # Messages on the destination that are not on the source are removed
        # by the copy passes (they were expunged on the source after being
        # copied), unless the destination held mail of its own before the
        # move (a --force merge: they are kept, and the verification fails).
        data["expunge_on_destination"] = not (counts and not earlier)
        step["source_nodes"] = [e.name for e in src_nodes]
        step["destination_nodes"] = [e.name for e in dst_nodes]
        self.step_end("preflight",
                      f"{user} is {state} on island {source}; source {src_nodes[0]}, destination "
                      f"{dst_nodes[0]}; {plural(total, 'message')} to move; destination holds "
                      f"{plural(counts, 'message')}; {directory}"
                      + (f"; {step['dsync']}" if "dsync" in step else ""),
                      {"source_messages": total, "destination_messages": counts})

    def step_moving(self, step: dict) -> None:
        data = self.journal.data
        # The interruption starts here (kept by a resumed run).
        data.setdefault("moving_at", time.time())
        directory = self.config.directory
        what = directory.set_state(self.user, "moving", data["from"], data)
        self.journal.save()
        after = directory.after_change(self)
        confirmed = self.confirm(data["from"], "moving")
        self.step_end("moving", f"{what}; {after}; {confirmed}")

    def step_kick(self, step: dict) -> None:
        kicked = self.kick_sessions()
        if self.config.settle:
            # Deliveries whose RCPT was accepted before the state changed end now.
            time.sleep(self.config.settle)
        self.step_end("kick", f"{plural(kicked, 'session')} closed; none left on any instance"
                      f" (then {show_seconds(self.config.settle)} for deliveries under way)",
                      {"kicked": kicked})

    def kick_sessions(self) -> int:
        """Kick the user's sessions on every instance until none is left."""
        deadline = time.monotonic() + self.config.kick_timeout
        kicked = 0
        last_kick = 0.0
        path = "/v1/sessions?" + urllib.parse.urlencode({"user": self.user},
                                                        quote_via=urllib.parse.quote)
        while True:
            if time.monotonic() - last_kick >= 2.0:
                replies = self.ask_all("POST", "/v1/kick", {"user": self.user})
                for name, (status, body) in replies.items():
                    if status != 200:
                        raise StepFailed(f"instance {name} refused the kick: "
                                         f"{body.get('error', f'HTTP {status}')}")
                    kicked += int(body.get("kicked", 0))
                last_kick = time.monotonic()
            left = {}
            for name, (status, body) in self.ask_all("GET", path).items():
                if status != 200:
                    raise StepFailed(f"instance {name} cannot list sessions: "
                                     f"{body.get('error', f'HTTP {status}')}")
                sessions = [s for s in body.get("sessions", []) if s.get("protocol") != "lmtp"]
                if sessions:
                    left[name] = len(sessions)
            if not left:
                break
            if time.monotonic() >= deadline:
                raise StepFailed(f"sessions of {self.user} still open after "
                                 f"{show_seconds(self.config.kick_timeout)}: "
                                 + ", ".join(f"{n} on {name}" for name, n in left.items()))
            time.sleep(0.2)
        return kicked

    @staticmethod
    def new_totals() -> dict:
        return {"messages": 0, "bytes": 0, "flags": 0, "expunged": 0, "vanished": 0,
                "kept_extra": 0, "already": 0, "folders": 0, "created": 0, "subscribed": 0}

    @staticmethod
    def changes(totals: dict) -> int:
        """What a pass found to do: messages copied, flags set, messages
        expunged, folders deleted."""
        return (totals["messages"] + totals["flags"] + totals["expunged"]
                + totals.get("deleted_folders", 0))

    @staticmethod
    def describe_pass(t: dict) -> str:
        text = (f"{plural(t.get('messages', 0), 'message')} ({show_bytes(t.get('bytes', 0))}) "
                f"copied, {plural(t.get('flags', 0), 'flag change')}, "
                f"{plural(t.get('expunged', 0), 'expunge')}")
        if t.get("unchanged"):
            text += f", {plural(t['unchanged'], 'folder')} unchanged (CONDSTORE)"
        if t.get("deleted_folders"):
            text += f", {plural(t['deleted_folders'], 'folder')} deleted"
        if t.get("vanished"):
            text += f", {t['vanished']} expunged on the source while being copied"
        if t.get("kept_extra"):
            text += (f", {t['kept_extra']} messages on the destination that are not on the "
                     f"source kept (a --force merge)")
        return text

    def open_pair(self) -> tuple[Imap, Imap]:
        data = self.journal.data
        src = self.connect(data["from"], data["node_login"])
        try:
            dst = self.connect(data["to"], data["node_login"])
        except BaseException:
            src.close()
            raise
        return src, dst

    def step_precopy(self, step: dict) -> None:
        """Copy while the user keeps working: a full pass, then incremental
        passes until one finds at most precopy_threshold changes. Nothing of
        the user's is touched: the step can simply be run again."""
        if self.kind == "dsync":
            return self.dsync_precopy(step)
        if self.config.copier:
            self.step_end("precopy", "none: the external copier runs in step copy, while the "
                          "user is locked out", {"passes": []})
            return
        if self.config.precopy_passes == 0:
            self.step_end("precopy", "none (precopy_passes is 0): the whole copy runs in step "
                          "copy, while the user is locked out", {"passes": []})
            return
        src, dst = self.open_pair()
        passes = []
        step["passes"] = passes
        try:
            for n in range(1, self.config.precopy_passes + 1):
                t0 = time.monotonic()
                totals = self.new_totals()
                self.copy_pass(src, dst, totals, n, tolerant=True)
                totals["seconds"] = round(time.monotonic() - t0, 3)
                passes.append(totals)
                self.journal.save()
                self.say(f"      pre-copy pass {n}: {self.describe_pass(totals)} "
                         f"({show_seconds(totals['seconds'])})")
                if n == 1:
                    test_pause("pass1")
                if self.changes(totals) <= self.config.precopy_threshold:
                    break
        finally:
            src.close()
            dst.close()
        copy_seconds = round(sum(p["seconds"] for p in passes), 3)
        first = passes[0]
        later = {k: sum(p[k] for p in passes[1:]) for k in ("messages", "bytes", "flags",
                                                              "expunged")}
        checked = self.try_precheck()
        test_pause("moving")
        self.step_end("precopy",
                      f"{plural(len(passes), 'pass', 'passes')} while the user stayed active: "
                      f"{plural(first['folders'], 'folder')}, "
                      f"{plural(first['messages'], 'message')} ({show_bytes(first['bytes'])}) "
                      f"copied, {first['already']} already on the destination; then "
                      f"{plural(later['messages'], 'message')}, "
                      f"{plural(later['flags'], 'flag change')}, "
                      f"{plural(later['expunged'], 'expunge')}; "
                      f"{show_seconds(copy_seconds)} copying; {checked}",
                      {"copy_seconds": copy_seconds,
                       "messages": sum(p["messages"] for p in passes),
                       "bytes": sum(p["bytes"] for p in passes),
                       "precheck_seconds": self._precheck_seconds})

    def step_copy(self, step: dict) -> None:
        """The last passes, while the user is locked out: what changed since
        the pre-copy (new messages, flag changes, expunges), or everything
        when there was no pre-copy."""
        if self.kind == "dsync":
            return self.dsync_copy(step)
        if self.config.copier:
            return self.copy_with_command(step)
        src, dst = self.open_pair()
        t0 = time.monotonic()
        totals = self.new_totals()
        try:
            # Passes until one finds nothing to do: a delivery that was under
            # way when the state changed is caught by the next pass. Anything
            # later still fails the verification (it stays on the source).
            for n in range(1, self.config.copy_passes + 1):
                before = self.changes(totals)
                self.copy_pass(src, dst, totals, n, tolerant=False)
                totals["passes"] = n
                if self.changes(totals) == before:
                    break
        finally:
            src.close()
            dst.close()
        seconds = time.monotonic() - t0
        rate = totals["bytes"] / seconds / 1e6 if seconds > 0 else 0.0
        step["throughput_mb_s"] = round(rate, 2)
        sieve = self.copy_sieve()
        self.step_end("copy",
                      f"{plural(totals['folders'], 'folder')}: {self.describe_pass(totals)}, "
                      f"{totals['already']} already on the destination; "
                      f"{totals['created']} folders created, {totals['subscribed']} subscriptions "
                      f"added; {sieve['text']}", {"copied": totals, "sieve": sieve})

    def copy_sieve(self) -> dict:
        """The user's Sieve scripts and the active one, source to
        destination over ManageSieve (the user is locked out: they do not
        change meanwhile)."""
        import sieve_copy  # noqa: E402 (sys.path set by sieve_connect)
        pair = self.sieve_pair()
        if pair is None:
            return {"copied": None, "text": "Sieve scripts not moved (no managesieve address "
                                            "in move.nodes)"}
        src, dst = pair
        try:
            done = sieve_copy.copy_scripts(src, dst)
        except (OSError, sieve_copy.SieveError) as e:
            raise StepFailed(f"copying the Sieve scripts: {e}") from None
        finally:
            src.close()
            dst.close()
        text = (f"Sieve: {plural(len(done['copied']) + len(done['unchanged']), 'script')} "
                f"({len(done['copied'])} written), active: {done['active'] or 'none'}")
        if done["extra"]:
            text += f", left alone on the destination: {', '.join(done['extra'])}"
        return dict(done, text=text)

    def copy_pass(self, src: Imap, dst: Imap, totals: dict, pass_no: int,
                  tolerant: bool = False) -> None:
        """One pass over every folder: folders and subscriptions added,
        messages missing on the destination copied, flags that differ set
        to the source's, messages no longer on the source expunged from
        the destination (unless the destination held other mail before the
        move: journal "expunge_on_destination"). TOLERANT (the pre-copy,
        the user active): messages expunged while being read are skipped."""
        if self.config.copy_engine == "isthmus-copy":
            return self.copy_pass_engine(src, dst, totals, pass_no, tolerant)
        data = self.journal.data
        progress = data["copy"]
        expunge_allowed = data.get("expunge_on_destination", False)
        delay = float(os.environ.get(ENV_COPY_DELAY, "0") or 0)
        src_folders = src.folders()
        dst_names = {name for name, _ in dst.folders()}
        sd, dd_ = src.delimiter, dst.delimiter
        folders = [(name, flags) for name, flags in src_folders if selectable(flags)]
        totals["folders"] = len(folders)
        created = data.setdefault("created_folders", [])
        added_subs = data.setdefault("added_subscriptions", [])
        if expunge_allowed:
            # Folders and subscriptions this move added that the user removed
            # (or renamed) on the source since go too, children first (never
            # one the destination had or made itself). Out of any folder
            # first: CLOSE would expunge, a selected folder may not be
            # deletable.
            wanted = {map_name(name, sd, dd_) for name, _ in src_folders}
            gone = sorted((n for n in dst_names if n not in wanted and n in created),
                          key=lambda n: (-n.count(dd_ or "/"), n))
            if gone:
                dst.examine("INBOX")
            for name in gone:
                dst.delete(name)
                dst_names.discard(name)
                created.remove(name)
                totals["deleted_folders"] = totals.get("deleted_folders", 0) + 1
            wanted_subs = {map_name(name, sd, dd_) for name in src.subscriptions()}
            for name in sorted(set(dst.subscriptions()) - wanted_subs):
                if name not in added_subs:
                    continue
                dst.unsubscribe(name)
                added_subs.remove(name)
                totals["unsubscribed"] = totals.get("unsubscribed", 0) + 1
        for name, _ in folders:
            target = map_name(name, sd, dd_)
            if target not in dst_names and target.upper() != "INBOX":
                dst.create(target)
                dst_names.add(target)
                created.append(target)
                totals["created"] += 1
        dst_subs = set(dst.subscriptions())
        for name in src.subscriptions():
            target = map_name(name, sd, dd_)
            if target not in dst_subs:
                dst.subscribe(target)
                if target not in added_subs:
                    added_subs.append(target)
                totals["subscribed"] += 1
        # Progress events (--events): what this pass copied, and what the
        # folders listed so far have to copy (bytes_total grows as folders
        # are listed: each is listed just before it is copied).
        pass_messages = pass_bytes = pass_total = 0
        for done, (name, _) in enumerate(folders):
            self.progress(pass_no, done, len(folders), pass_messages, pass_bytes, pass_total)
            target = map_name(name, sd, dd_)
            if not src.changed_since(name, self._synced.get(name)):
                totals["unchanged"] = totals.get("unchanged", 0) + 1
                continue
            self._synced.pop(name, None)
            src_msgs = src.listing(name, cache=self._listed)
            signature = src.last_signature
            dst_msgs = dst.listing(target, write=True, cache=self._listed)
            src_msgs = fill_hashes(src, name, src_msgs, self.config.batch_bytes,
                                   tolerant=tolerant)
            dst_msgs = fill_hashes(dst, target, dst_msgs, self.config.batch_bytes)
            plan = FolderPlan(src_msgs, dst_msgs)
            if pass_no == 1:
                totals["already"] += plan.already
            for flags, uids in plan.restore:
                dst.store_flags(target, uids, flags)
            totals["flags"] += plan.flag_changes
            if plan.extra and expunge_allowed:
                dst.expunge(target, [m.uid for m in plan.extra])
                totals["expunged"] += len(plan.extra)
            elif plan.extra:
                totals["kept_extra"] += len(plan.extra)
            todo = plan.todo
            pass_total += sum(m.size or 0 for m in todo)
            folder_progress = progress["folders"].setdefault(name, {"copied": 0, "bytes": 0})
            folder_progress["source"] = len(src_msgs)
            i = 0
            while i < len(todo):
                batch, size = [], 0
                while i < len(todo) and (not batch or (
                        size + todo[i].size <= self.config.batch_bytes
                        and len(batch) < self.config.batch_messages)):
                    batch.append(todo[i])
                    size += todo[i].size
                    i += 1
                bodies = src.bodies(name, [m.uid for m in batch], tolerant)
                items = [(m, bodies[m.uid]) for m in batch if m.uid in bodies]
                totals["vanished"] += len(batch) - len(items)
                dst.append(target, items, delay)
                got = sum(len(body) for _, body in items)
                totals["messages"] += len(items)
                totals["bytes"] += got
                progress["messages"] += len(items)
                progress["bytes"] += got
                folder_progress["copied"] += len(items)
                folder_progress["bytes"] += got
                pass_messages += len(items)
                pass_bytes += got
                self.save_progress(name)
                self.progress(pass_no, done, len(folders), pass_messages, pass_bytes, pass_total)
            self.save_progress(name, force=True)
            if signature is not None:
                # The destination now holds what the source held when it was
                # listed; the verification checks it all the same.
                self._synced[name] = signature
        self.progress(pass_no, len(folders), len(folders), pass_messages, pass_bytes, pass_total,
                      last=True)

    def close_engine(self) -> None:
        engine = getattr(self, "_engine", None)
        self._engine = None
        if engine is None:
            return
        try:
            engine.stdin.close()
            engine.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            engine.kill()
            engine.wait()

    def engine_for(self, src: Imap, dst: Imap):
        """The copy engine's process for this pair of nodes (one per mover
        run: its passes share what they learnt, so the passes after the
        first read what changed, not the whole mailbox)."""
        data = self.journal.data
        key = (src.endpoint.name, dst.endpoint.name, data["node_login"])
        engine = getattr(self, "_engine", None)
        if engine is not None and self._engine_key == key and engine.poll() is None:
            return engine
        self.close_engine()
        argv = [self.config.copy_program, "--config", self.config.path_for_engine,
                "--user", data["node_login"], "--from", src.endpoint.name,
                "--to", dst.endpoint.name, "--serve", "--parent-pid", str(os.getpid()),
                "--timeout", str(self.config.imap_timeout)]
        try:
            self._engine = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=tempfile.TemporaryFile())
        except OSError as e:
            raise StepFailed(f"the copy engine {argv[0]} cannot be run: {e.strerror or e}") \
                from None
        self._engine_key = key
        self._engine_pending = b""
        return self._engine

    def _engine_lines(self, engine, silence: float):
        """The engine's output lines as they come (read from its pipe with
        os.read: a buffered reader would hide lines from select), None
        once it said nothing for SILENCE seconds, and the end at its end."""
        fd = engine.stdout.fileno()
        pending = getattr(self, "_engine_pending", b"")
        try:
            while True:
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    self._engine_pending = pending
                    yield line
                if len(pending) > 16 * 1024 * 1024:
                    return   # no line ends: treated as the engine's end
                ready, _, _ = select.select([fd], [], [], silence)
                if not ready:
                    yield None
                    return
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                pending += chunk
        finally:
            self._engine_pending = pending

    def copy_pass_engine(self, src: Imap, dst: Imap, totals: dict, pass_no: int,
                         tolerant: bool) -> None:
        """copy_pass by the daemon's C++ copy engine (move.copy_engine
        "isthmus-copy"): the program runs the pass between the nodes SRC and
        DST were opened on, with its own sessions, and says what it did
        (JSON lines). What the passes added (folders, subscriptions) stays
        in the journal."""
        data = self.journal.data
        progress = data["copy"]
        engine = self.engine_for(src, dst)
        command = {"tolerant": tolerant,
                   "expunge": bool(data.get("expunge_on_destination", False)),
                   "created_folders": data.setdefault("created_folders", []),
                   "added_subscriptions": data.setdefault("added_subscriptions", [])}
        result, last_bytes, last_messages = None, 0, 0
        # The engine says something after every batch and folder; silence
        # for this long means a node that trickles or hangs: the pass is
        # stopped (the user may be locked out meanwhile).
        silence = 2 * self.config.imap_timeout + 30
        hung = False
        try:
            engine.stdin.write((json.dumps(command) + "\n").encode())
            engine.stdin.flush()
            for raw in self._engine_lines(engine, silence):
                if raw is None:
                    hung = True
                    engine.kill()
                    break
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                kind = event.get("event")
                if kind == "state":
                    # Recorded at once: a pass that dies later must not
                    # forget a folder it made.
                    for key in ("created_folders", "added_subscriptions"):
                        if isinstance(event.get(key), list):
                            data[key] = [n for n in event[key] if isinstance(n, str)]
                    self.journal.save()
                elif kind == "progress":
                    number = {k: event.get(k) if isinstance(event.get(k), int) else 0
                              for k in ("folders_done", "folders", "messages", "bytes",
                                        "bytes_total")}
                    progress["messages"] += number["messages"] - last_messages
                    progress["bytes"] += number["bytes"] - last_bytes
                    last_messages, last_bytes = number["messages"], number["bytes"]
                    self.save_progress(progress.get("folder") or "")
                    self.progress(pass_no, number["folders_done"], number["folders"],
                                  number["messages"], number["bytes"], number["bytes_total"])
                elif kind in ("totals", "error"):
                    result = event
                    break
        except OSError:
            pass
        if result is not None:
            for key in ("created_folders", "added_subscriptions"):
                if isinstance(result.get(key), list):
                    data[key] = [n for n in result[key] if isinstance(n, str)]
        self.save_progress(progress.get("folder") or "", force=True)
        if result is None or result.get("event") != "totals":
            if result is None:
                code = engine.wait()
                engine.stderr.seek(0)
                said = clean(engine.stderr.read().decode("utf-8", "replace").strip())[:500]
                self._engine = None
                text = said or f"it ended with status {code}"
                if hung:
                    text = (f"no word from it for {show_seconds(silence)} (a node that stopped "
                            f"answering, or answers too slowly): stopped")
            else:
                text = clean(str(result.get("text") or "no reason given"))
            raise ImapError(f"the copy engine: {text}")
        totals["engine"] = "isthmus-copy"
        for key, value in result.items():
            if key == "event" or not isinstance(value, int) or isinstance(value, bool):
                continue
            if key == "already" and pass_no != 1:
                continue   # as copy_pass counts it: the first pass's pairs
            if key == "folders":
                totals["folders"] = value
            else:
                totals[key] = totals.get(key, 0) + value
        self.progress(pass_no, totals.get("folders", 0), totals.get("folders", 0),
                      result.get("messages", 0), result.get("bytes", 0), result.get("bytes", 0),
                      last=True)

    # -- the dsync mover

    def dsync_pair(self) -> tuple[Doveadm, Endpoint]:
        """The source node whose doveadm runs dsync (the first node of the
        source island that is up and has doveadm_http: they share the
        store) and the destination node it writes to (the first node of the
        destination island that has a doveadm address)."""
        data = self.journal.data
        src = next((e for e in self.candidates(data["from"]) if e.doveadm_http), None)
        if src is None:
            raise StepFailed(f"no node of island {data['from']} that is up has a doveadm_http "
                             f"address in move.nodes (the dsync mover needs one)")
        dst = next((e for e in self.candidates(data["to"]) if e.doveadm), None)
        if dst is None:
            raise StepFailed(f"no node of island {data['to']} that is up has a doveadm address "
                             f"in move.nodes (the dsync mover needs one)")
        return Doveadm(src, self.config), dst

    def dsync_preflight(self, counts: int) -> str:
        if counts:
            # Checked: a one-way dsync into a mailbox with messages of its
            # own (or copied by the IMAP mover, or left by an earlier move
            # and since changed on the source) keeps them and gives the
            # source's messages new UIDs. (A resumed move does not come
            # back here.)
            raise StepFailed(f"the destination mailbox holds {plural(counts, 'message')}: the "
                             f"dsync mover keeps UIDs only into an empty mailbox; empty it (a "
                             f"leftover of an earlier move?), or merge with --mover imap "
                             f"--force")
        api, dst = self.dsync_pair()
        if "sync" not in api.commands(self.config.imap_timeout):
            raise StepFailed(f"the doveadm HTTP API of {api} offers no sync command")
        return f"dsync: doveadm sync -1 run by {api} to {dst.name} ({dsync_destination(dst)})"

    def dsync_pass(self, api: Doveadm, dst: Endpoint, timeout: float | None = None,
                   pass_no: int = 1, full: bool = False) -> tuple[int, float]:
        """One one-way `doveadm sync -1` of the user, source node to
        destination node (`backup` cannot replace the INBOX the destination
        creates at the first login: "INBOX can't be deleted"): (DSYNC_CHANGED
        if the mailbox changed meanwhile else 0, seconds)."""
        t0 = time.monotonic()
        timeout = timeout or self.config.dsync_timeout
        self.progress(pass_no, 0, 0, 0, 0, 0, last=True)
        try:
            parameters = {"user": self.journal.data["node_login"], "onewaySync": True,
                          "destination": [dsync_destination(dst)]}
            if full:
                parameters["fullSync"] = True   # -f: compare everything, not the logs
            code = api.run("sync", parameters, timeout)
        except StepFailed as e:
            if "no answer in time" in str(e):
                raise StepFailed(f"{e} after {show_seconds(timeout)}: the dsync may still be "
                                 f"running on {api.endpoint.name} (see its log) before this "
                                 f"step is resumed") from None
            raise
        seconds = round(time.monotonic() - t0, 3)
        if code not in (0, DSYNC_CHANGED):
            raise StepFailed(f"doveadm sync on {api.endpoint.name} to {dst.name} exited "
                             f"{code}: {DSYNC_CODES.get(code, 'see the node log')}")
        self.progress(pass_no, 0, 0, 0, 0, 0, last=True)  # dsync tells no more
        return code, seconds

    def dsync_precopy(self, step: dict) -> None:
        """Passes while the user keeps working, until one finds the mailbox
        unchanged during it and takes at most DSYNC_QUICK seconds (dsync
        says little more about what it copied), at most precopy_passes."""
        if self.config.precopy_passes == 0:
            self.step_end("precopy", "none (precopy_passes is 0): the whole dsync runs in step "
                          "copy, while the user is locked out", {"passes": [], "copy_seconds": 0})
            return
        api, dst = self.dsync_pair()
        passes = []
        step["passes"] = passes
        for n in range(1, self.config.precopy_passes + 1):
            code, seconds = self.dsync_pass(api, dst, pass_no=n)
            passes.append({"seconds": seconds, "changed": code == DSYNC_CHANGED})
            self.journal.save()
            self.say(f"      pre-copy pass {n}: doveadm sync -1 {api.endpoint.name} -> {dst.name} "
                     f"in {show_seconds(seconds)}"
                     + (" (the mailbox changed meanwhile)" if code == DSYNC_CHANGED else ""))
            if n == 1:
                test_pause("pass1")
            if code == 0 and seconds <= DSYNC_QUICK:
                break
        copy_seconds = round(sum(p["seconds"] for p in passes), 3)
        checked = self.try_precheck()
        test_pause("moving")
        self.step_end("precopy",
                      f"{plural(len(passes), 'dsync pass', 'dsync passes')} while the user stayed "
                      f"active ({api.endpoint.name} -> {dst.name}): "
                      + ", ".join(show_seconds(p["seconds"]) for p in passes) + f"; {checked}",
                      {"copy_seconds": copy_seconds, "precheck_seconds": self._precheck_seconds})

    def dsync_copy(self, step: dict) -> None:
        """The last passes, the user locked out: until one finds the mailbox
        unchanged during it (a delivery under way when the state changed),
        at most copy_passes; then the Sieve scripts (as with IMAP)."""
        api, dst = self.dsync_pair()
        t0 = time.monotonic()
        for n in range(1, self.config.copy_passes + 1):
            code, _ = self.dsync_pass(api, dst, self.config.dsync_copy_timeout, pass_no=n)
            if code == 0:
                break
        else:
            raise StepFailed(f"the mailbox still changed during each of {n} dsync passes while "
                             f"the user was locked out")
        seconds = round(time.monotonic() - t0, 3)
        sieve = self.copy_sieve()
        self.step_end("copy", f"{plural(n, 'dsync pass', 'dsync passes')} "
                      f"({api.endpoint.name} -> {dst.name}) in {show_seconds(seconds)}; "
                      f"{sieve['text']}",
                      {"copied": {"mover": "dsync", "passes": n, "seconds": seconds},
                       "sieve": sieve})

    def save_progress(self, folder: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_progress_save >= 0.5:
            self.journal.data["copy"]["folder"] = folder
            self.journal.save()
            self._last_progress_save = now

    def copy_with_command(self, step: dict) -> None:
        data = self.journal.data
        src = self.candidates(data["from"])[0]
        dst = self.candidates(data["to"])[0]
        values = {"user": self.user, "node_login": data["node_login"],
                  "from_island": data["from"], "to_island": data["to"],
                  "from_node": src.name, "to_node": dst.name,
                  "from_host": src.host, "to_host": dst.host,
                  "from_port": str(src.port), "to_port": str(dst.port),
                  "from_address": f"{src.host}:{src.port}", "to_address": f"{dst.host}:{dst.port}"}
        argv = [PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), a)
                for a in self.config.copier]
        env = dict(os.environ, ISTHMUS_MOVE_USER=self.user, USER=self.user,
                   **{k.upper(): v for k, v in values.items() if k != "user"})
        self.say(f"      copier: {' '.join(argv)}")
        try:
            r = subprocess.run(argv, env=env, timeout=self.config.copier_timeout,
                               stdout=self.err, stderr=self.err)
        except FileNotFoundError:
            raise StepFailed(f"the copier {argv[0]} does not exist") from None
        except subprocess.TimeoutExpired:
            raise StepFailed(f"the copier did not finish within "
                             f"{show_seconds(self.config.copier_timeout)}") from None
        if r.returncode != 0:
            raise StepFailed(f"the copier exited with status {r.returncode}")
        self.step_end("copy", f"the copier {os.path.basename(argv[0])} finished "
                      f"({src.name} -> {dst.name})", {"copier": argv})

    def compare_folder(self, src: Imap, dst: Imap, name: str, target: str):
        """Lists folder NAME on the source and TARGET on the destination and
        compares them: (problems, report entry, the source's bytes, the
        (source, destination) signatures taken before the listings)."""
        problems = []
        a_exists = src.examine(name)
        a_validity = src.uidvalidity()
        a_signature = src.signature(a_exists)
        a = src.messages(name, a_exists, self._listed, all_flags=True)
        b_exists = dst.examine(target)
        b_validity = dst.uidvalidity()
        b_signature = dst.signature(b_exists)
        b = dst.messages(target, b_exists, self._listed, all_flags=True)
        if self.kind == "dsync":
            # dsync keeps UIDs: a client's cache stays valid.
            if a_validity != b_validity:
                problems.append(f"folder {name}: UIDVALIDITY {a_validity} on the "
                                f"source, {b_validity} on the destination")
            elif [m.uid for m in a] != [m.uid for m in b]:
                problems.append(f"folder {name}: the UIDs differ between the source "
                                f"and the destination")
        fill_hashes(src, name, a, self.config.batch_bytes)
        fill_hashes(dst, target, b, self.config.batch_bytes)
        fa, fb = fingerprint(a), fingerprint(b)
        missing = fa - fb
        extra = fb - fa
        entry = {"source": len(a), "destination": len(b), "missing": sum(missing.values()),
                 "extra": sum(extra.values())}
        if missing or extra:
            example = next(iter(missing or extra))
            problems.append(
                f"folder {name}: {len(a)} on the source, {len(b)} on the destination, "
                f"{sum(missing.values())} missing or different there, "
                f"{sum(extra.values())} extra (e.g. size+id {example[0]!r}, flags "
                f"{example[1]!r})")
        return problems, entry, sum(m.size for m in a), (a_signature, b_signature)

    def precheck(self) -> str:
        """Before the switch, the user still active: compares every folder
        as the verification does and remembers, for each folder found the
        same, both sides' CONDSTORE signatures. The verification (the user
        locked out) then lists again only the folders whose signature
        changed on either side since, so the interruption does not grow
        with the mailbox. Needs CONDSTORE on both sides; a folder the user
        changed while it was compared is simply not remembered. Not
        journaled: a resumed run verifies every folder."""
        self._checked = {}
        self._precheck_seconds = 0.0
        src, dst = self.open_pair()
        t0 = time.monotonic()
        try:
            if not (src.condstore and dst.condstore):
                return "no check before the switch (a node without CONDSTORE)"
            sd, dd_ = src.delimiter, dst.delimiter
            dst_folders = {name for name, flags in dst.folders() if selectable(flags)}
            total = 0
            for name, flags in src.folders():
                if not selectable(flags):
                    continue
                total += 1
                target = map_name(name, sd, dd_)
                if target not in dst_folders:
                    continue
                try:
                    found, entry, nbytes, signatures = self.compare_folder(src, dst, name,
                                                                           target)
                except ListingChanged:
                    continue   # the user changed it meanwhile: verified in full later
                if not found and None not in signatures:
                    self._checked[name] = {"signatures": signatures, "entry": entry,
                                           "bytes": nbytes,
                                           "nodes": (str(src.endpoint), str(dst.endpoint))}
        finally:
            src.close()
            dst.close()
        seconds = time.monotonic() - t0
        self._precheck_seconds = round(seconds, 3)
        return (f"checked before the switch: {len(self._checked)} of {plural(total, 'folder')} "
                f"the same on both sides ({show_seconds(seconds)})")

    def try_precheck(self) -> str:
        """precheck(), whose failure only means a full verification later."""
        try:
            return self.precheck()
        except (ImapError, StepFailed) as e:
            self._checked = {}
            return f"no check before the switch ({e}): every folder is verified"

    def step_verify(self, step: dict) -> None:
        pause = os.environ.get(ENV_PAUSE_BEFORE_VERIFY)
        if pause:
            with open(pause + ".waiting", "w") as f:
                f.write(str(os.getpid()))
            deadline = time.monotonic() + 120
            while not os.path.exists(pause) and time.monotonic() < deadline:
                time.sleep(0.05)
        data = self.journal.data
        src = self.connect(data["from"], data["node_login"])
        try:
            dst = self.connect(data["to"], data["node_login"])
        except BaseException:
            src.close()
            raise
        problems, report = [], {"folders": {}}
        messages = size = skipped = 0
        try:
            sd, dd_ = src.delimiter, dst.delimiter
            dst_folders = {name for name, flags in dst.folders() if selectable(flags)}
            for name, flags in src.folders():
                if not selectable(flags):
                    continue
                target = map_name(name, sd, dd_)
                if target not in dst_folders:
                    problems.append(f"folder {name}: missing on the destination")
                    report["folders"][name] = {"missing_folder": True}
                    continue
                known = self._checked.get(name)
                if known is not None and known["nodes"] == (str(src.endpoint),
                                                            str(dst.endpoint)):
                    # Found the same on both sides before the switch, and
                    # neither side changed since (CONDSTORE signatures).
                    now = (src.signature(src.examine(name)),
                           dst.signature(dst.examine(target)))
                    if None not in now and now == known["signatures"]:
                        report["folders"][name] = dict(known["entry"], unchanged=True)
                        messages += known["entry"]["source"]
                        size += known["bytes"]
                        skipped += 1
                        continue
                found, entry, nbytes, _ = self.compare_folder(src, dst, name, target)
                problems += found
                report["folders"][name] = entry
                messages += entry["source"]
                size += nbytes
            missing_subs = ({map_name(n, sd, dd_) for n in src.subscriptions()}
                            - set(dst.subscriptions()))
            if missing_subs:
                problems.append(f"subscriptions missing on the destination: "
                                f"{', '.join(sorted(missing_subs))}")
        finally:
            src.close()
            dst.close()
        pair = self.sieve_pair()
        if pair is not None:
            import sieve_copy  # noqa: E402
            try:
                problems += sieve_copy.same_scripts(*pair)
                report["sieve"] = "compared"
            except (OSError, sieve_copy.SieveError) as e:
                problems.append(f"comparing the Sieve scripts: {e}")
            finally:
                pair[0].close()
                pair[1].close()
        if problems and self.kind == "dsync" and not getattr(self, "_full_sync_done", False):
            # An incremental dsync can miss a change made just before the
            # kick (seen with flags): one full one-way sync, then verify again.
            self._full_sync_done = True
            self.say(f"      verify: {plural(len(problems), 'difference')} after the dsync "
                     f"passes ({problems[0]}); one full dsync (-f), then verify again")
            api, dst_endpoint = self.dsync_pair()
            self.dsync_pass(api, dst_endpoint, self.config.dsync_copy_timeout, full=True)
            self._checked = {}
            return self.step_verify(step)
        if problems:
            raise VerifyFailed("verification failed: " + "; ".join(problems), report)
        self.step_end("verify", f"{plural(len(report['folders']), 'folder')}, "
                      f"{plural(messages, 'message')} ({show_bytes(size)}) the same on both "
                      f"islands, subscriptions included"
                      + (", UIDVALIDITY and UIDs too" if self.kind == "dsync" else "")
                      + (f" ({skipped} unchanged since the check before the switch, on both "
                         f"sides)" if skipped else ""),
                      {"messages": messages, "bytes": size, "folders": len(report["folders"]),
                       "unchanged": skipped})

    def step_switch(self, step: dict) -> None:
        data = self.journal.data
        directory = self.config.directory
        what = directory.switch(self.user, data["to"], data)
        self.journal.save()
        after = directory.after_change(self)
        confirmed = self.confirm(data["to"], "active")
        data["active_at"] = time.time()
        if "moving_at" in data:
            data["interruption_seconds"] = round(data["active_at"] - data["moving_at"], 3)
        self.step_end("switch", f"{what}; {after}; {confirmed}")

    def step_report(self, step: dict) -> None:
        data = self.journal.data
        steps = data["steps"]
        copied = steps.get("copy", {}).get("copied", {})
        data["status"] = "done"
        data["finished"] = now_iso()
        data.pop("current_step", None)
        self.step_end("report", f"{self.user} is on island {data['to']}")
        self.say("")
        self.summary = f"moved {self.user} from island {data['from']} to {data['to']}"
        self.say(self.summary)
        total = 0.0
        for name in STEPS:
            s = steps.get(name, {})
            seconds = s.get("seconds", 0) or 0
            total += seconds
            self.say(f"  {STEP_NUMBER[name]} {name:<9} {show_seconds(seconds):>8}"
                     + (f"  ({s.get('attempts')} runs)" if s.get("attempts", 1) > 1 else ""))
        self.say(f"    total     {show_seconds(total):>8}")
        verify = steps.get("verify", {})
        self.say(f"  folders {verify.get('folders', '?')}, messages {verify.get('messages', '?')} "
                 f"({show_bytes(verify.get('bytes', 0))})")
        precopy = steps.get("precopy", {})
        passes = precopy.get("passes") or []
        if self.kind == "dsync":
            self.say(f"  pre-copy, the user active: {show_seconds(precopy.get('copy_seconds'))} "
                     f"in {plural(len(passes), 'dsync pass', 'dsync passes')} ("
                     + "; ".join(show_seconds(p["seconds"]) for p in passes) + ")")
        elif passes:
            self.say(f"  pre-copy, the user active: {show_seconds(precopy.get('copy_seconds'))} "
                     f"in {plural(len(passes), 'pass', 'passes')} ("
                     + "; ".join(f"{self.describe_pass(p)} in {show_seconds(p['seconds'])}"
                                 for p in passes) + ")")
        else:
            self.say("  pre-copy: none")
        interruption = data.get("interruption_seconds")
        parts = ", ".join(f"{name} {show_seconds(steps.get(name, {}).get('seconds'))}"
                          for name in INTERRUPTION_STEPS)
        if self.kind == "dsync":
            last = (f"{plural(copied.get('passes', 0), 'dsync pass', 'dsync passes')} in "
                    f"{show_seconds(copied.get('seconds'))}; UIDs and UIDVALIDITY kept")
        else:
            last = self.describe_pass(copied) if copied else "by the external copier"
        self.say(f"  interruption (state moving until active on island {data['to']}): "
                 f"{show_seconds(interruption)} ({parts}); the last copy: {last}")
        self.say(f"  the mailbox on island {data['from']} is left in place (delete it once you "
                 f"are satisfied)")

    # -- going back

    def rollback(self, reason: str) -> int:
        data = self.journal.data
        try:
            data["status"] = "rolling-back"
            data["rollback_reason"] = reason
            if "moving_at" in data:
                data["interruption_seconds"] = round(time.time() - data["moving_at"], 3)
            self.journal.save()
            directory = self.config.directory
            what = directory.set_state(self.user, "active", data["from"], data)
            self.journal.save()
            after = directory.after_change(self)
            confirmed = self.confirm(data["from"], "active")
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - reported, resumable
            problem = str(e) if isinstance(e, MoveError) else (
                "interrupted" if isinstance(e, KeyboardInterrupt)
                else f"unexpected {type(e).__name__}: {e}")
            self.complain(f"isthmus-move: {reason}\nisthmus-move: the rollback failed too: "
                          f"{problem}\n"
                          f"isthmus-move: {self.user} may still be in state moving on island "
                          f"{data['from']} (logins refused, mail queued); run again with "
                          f"--resume (or --abort) to finish the rollback; journal "
                          f"{self.journal.path}")
            return e.code if isinstance(e, Unreachable) else EXIT_STEP
        data["status"] = "failed"
        data["error"] = reason
        data["finished"] = now_iso()
        self.journal.save()
        self.say(f"rolled back: {what}; {after}; {confirmed}")
        self.complain(f"isthmus-move: {reason}\nisthmus-move: nothing was switched: {self.user} "
                      f"is active on island {data['from']} again; the partial copy on island "
                      f"{data['to']} is left there; journal {self.journal.path}")
        return EXIT_VERIFY

    def abort(self) -> int:
        data = self.journal.data
        if not self.abortable():
            switch = data["steps"]["switch"]
            raise StepFailed(f"the switch of the move of {self.user} has started (status "
                             f"{switch.get('status')}, {plural(switch.get('attempts', 1), 'attempt')})"
                             f": the directory may already route {self.user} to island "
                             f"{data['to']}, so the move cannot be aborted; run --resume to "
                             f"finish it (then move the user back with --to {data['from']} if "
                             f"need be)")
        try:
            # Journaled first: a failed abort is finished by the next run,
            # never taken for a move to resume.
            data["status"] = "aborting"
            data.pop("current_step", None)
            self.journal.save()
            directory = self.config.directory
            what = directory.set_state(self.user, "active", data["from"], data)
            self.journal.save()
            after = directory.after_change(self)
            confirmed = self.confirm(data["from"], "active")
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - reported, re-runnable
            problem = str(e) if isinstance(e, MoveError) else (
                "interrupted" if isinstance(e, KeyboardInterrupt)
                else f"unexpected {type(e).__name__}: {e}")
            self.complain(f"isthmus-move: the abort of the move of {self.user} failed: "
                          f"{problem}\n"
                          f"isthmus-move: {self.user} may still be in state moving on island "
                          f"{data['from']} (logins refused, mail queued); run --abort again to "
                          f"finish the abort; journal {self.journal.path}")
            return e.code if isinstance(e, MoveError) else EXIT_STEP
        data["status"] = "aborted"
        data["finished"] = now_iso()
        self.journal.save()
        self.summary = f"aborted the move of {self.user}: {what}; {after}; {confirmed}"
        self.say(self.summary)
        return EXIT_OK


# ---------------------------------------------------------------- command line

EPILOG = """\
exit codes:
  0  done, or nothing to do (already moved)
  1  usage or config error
  2  an instance could not be reached (nothing more was done; run the same
     command again, or --resume, once it is back)
  3  a step failed (or the run was interrupted): the message says where the user
     is and what to run: --resume continues; --abort goes back, but only before
     the switch has started; a failed preflight changed nothing
  7  verification failed: the user is active on the source island again

config: the isthmusctl config file with a "move" section (docs/move.md).

examples:
  isthmusctl move --local alice@example.org --to b
  isthmusctl move --local alice@example.org --resume   # after a failure or Ctrl-C
  isthmusctl move --local alice@example.org --abort    # back to active on the source
                                                       # (only before the switch started)
  isthmusctl move-status alice@example.org"""


def build_parser(prog: str = "isthmus_move.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Move a user's mailbox to another island, journaled and resumable.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE",
                   help=f"the config file (default $ISTHMUSCTL_CONFIG, else {DEFAULT_CONFIG})")
    p.add_argument("--version", action="version", version=f"isthmus_move {VERSION}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    m = sub.add_parser("move", help="move USER to --to ISLAND (or --resume, --abort)",
                       description="Move USER to ISLAND: pre-copy while the user keeps "
                                   "working, then state moving, kick, a last copy of what "
                                   "changed, verify, switch (the user is locked out from "
                                   "moving to switch only). Run it again (or with --resume) "
                                   "after a failure to continue where it stopped.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("user", metavar="USER")
    m.add_argument("--to", metavar="ISLAND", help="the destination island")
    m.add_argument("--resume", action="store_true", help="continue the unfinished move")
    m.add_argument("--abort", action="store_true",
                   help="give up an unfinished move before its switch has started: the user is set active "
                        "on the source island again")
    m.add_argument("--mover", choices=MOVERS,
                   help="how the mail is copied: imap (any node, new UIDs; the default unless "
                        "move.mover says otherwise) or dsync (Dovecot nodes: doveadm sync -1 "
                        "through the source node's doveadm HTTP API; UIDs kept)")
    m.add_argument("--force", action="store_true",
                   help="start even if the user is in state moving already or the "
                        "destination mailbox is not empty")
    m.add_argument("--events", action="store_true",
                   help="write one JSON object per line (events) instead of the text, for "
                        "the daemon's move job")
    m.add_argument("--events-ack", action="store_true",
                   help="with --events: after each journal event wait for a line "
                        "\"stored\" on standard input (the daemon's move job)")
    m.add_argument("--journal-file", metavar="PATH",
                   help="the journal file of this move (default: move.journal_dir/USER.json)")
    m.add_argument("--config", metavar="FILE", dest="sub_config", help=argparse.SUPPRESS)
    s = sub.add_parser("status", aliases=["move-status"], prog=f"{prog} move-status",
                       help="show the journal of USER's move")
    s.add_argument("user", metavar="USER")
    s.add_argument("--config", metavar="FILE", dest="sub_config", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None, prog: str = "isthmus_move.py") -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_OK if e.code in (0, None) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    path = (getattr(args, "sub_config", None) or args.config
            or os.environ.get("ISTHMUSCTL_CONFIG") or DEFAULT_CONFIG)
    events = (Events(sys.stdout.buffer,
                     sys.stdin.buffer if getattr(args, "events_ack", False) else None)
              if getattr(args, "events", False) else None)
    mover = None

    def finish(code: int, problem: str | None = None) -> int:
        """Says PROBLEM on stderr (and as a say event); with --events the
        finished event last."""
        if problem is not None:
            print(f"isthmus-move: {problem}", file=sys.stderr, flush=True)
            if events is not None:
                events.emit({"event": "say", "text": f"isthmus-move: {problem}",
                             "stream": "stderr"})
        if events is not None:
            journal = mover.journal.data if mover is not None and mover.journal else None
            interruption = (journal or {}).get("interruption_seconds")
            text = problem or (mover.summary if mover is not None else None)
            if text is None:
                text = "done" if code == EXIT_OK else f"exit {code}"
            events.finish(code, text, interruption)
        return code

    try:
        config = Config(path)
        mover = Mover(config, events=events)
        if args.command in ("status", "move-status"):
            return mover.status(args.user)
        if args.resume and args.abort:
            raise UsageError("--resume and --abort exclude each other")
        return finish(mover.move(args.user, args.to, args.resume, args.abort, args.force,
                                 args.mover, args.journal_file))
    except MoveError as e:
        return finish(e.code, str(e))
    except KeyboardInterrupt:
        return finish(EXIT_STEP, f"interrupted; `{prog} move-status USER` shows where the move "
                                 f"stands")
    except Exception as e:  # noqa: BLE001 - a message, not a traceback
        return finish(EXIT_STEP, f"unexpected {type(e).__name__}: {e}; `{prog} move-status "
                                 f"USER` shows where the move stands")


if __name__ == "__main__":
    sys.exit(main())
