"""The lab: two islands of two Dovecot nodes each, and isthmus in front.

    island a: a-left + a-right, sharing store "a"
    island b: b-left + b-right, sharing store "b"

Users alice and carol live on island a, bob and dave on island b (all
@example.org, password "demo"). Every user exists on *all four* nodes, so a
test proves routing by *which store* a message is in, not by which node
happens to know the user.

Use it as a context manager::

    with Lab() as lab:
        ix = lab.start_isthmus("build/release/isthmus/isthmus")
        imaplib.IMAP4("127.0.0.1", ix.port("imap"))

or from unittest::

    @classmethod
    def setUpClass(cls):
        cls.lab = Lab()
        cls.addClassCleanup(cls.lab.close)
        cls.lab.start()

TLS: ``Lab(tls=True)`` makes a test CA in ROOT/pki (``lab.ca``, a tls.Ca;
``lab.ca_path``, its certificate), a certificate per node (SAN DNS
``<node>.lab.test`` and the node's IP) and one for isthmus
(``lab.isthmus_cert``: SAN DNS ``isthmus.lab.test``, IP 127.0.0.1). The nodes
then offer STARTTLS on imap, pop3 and lmtp and implicit TLS on extra "imaps"
and "pop3s" ports (``node.ports``). ``require_tls=["b-right"]`` makes those
nodes refuse plaintext logins before STARTTLS (LOGINDISABLED); such a node
listens on 127.0.0.2 and trusts nobody to pass a client address (see
DovecotNode). The isthmus config is not changed: tests add its TLS keys.

Processes and the temp dir are cleaned up on close(), at interpreter exit
and on SIGTERM/SIGINT. ISTHMUS_KEEP_LAB=1 keeps the temp dir (logs,
configs, stores) for a post-mortem; the processes are stopped regardless.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import threading
from typing import Any, Iterable, Mapping, Optional

from . import cyrus as cyruslib, procs, tls as tlslib
from .cyrus import CyrusNode
from .dovecot import PROTOCOLS, DovecotNode, put_message
from .isthmus import Isthmus

# The kinds of node the lab runs; ISTHMUS_NODE_KIND picks the default, so
# one test file runs against either (tests/CMakeLists.txt registers the
# Cyrus variants).
NODE_KINDS = {"dovecot": DovecotNode, "cyrus": CyrusNode}


def node_kind() -> str:
    """The kind of node the lab starts by default: ISTHMUS_NODE_KIND
    ("dovecot" when unset)."""
    kind = os.environ.get("ISTHMUS_NODE_KIND", "dovecot") or "dovecot"
    if kind not in NODE_KINDS:
        raise ValueError(f"ISTHMUS_NODE_KIND={kind!r}: one of {sorted(NODE_KINDS)}")
    return kind

ISLANDS = {"a": ("a-left", "a-right"), "b": ("b-left", "b-right")}
HOME_ISLAND = {
    "alice@example.org": "a",
    "carol@example.org": "a",
    "bob@example.org": "b",
    "dave@example.org": "b",
}
PASSWORD = "demo"
USERS = {login: PASSWORD for login in HOME_ISLAND}
# A test user whose password needs quoting or literals in IMAP: spaces, a
# double quote, a backslash and braces (not in the demo).
ODD_USER = "erin@example.org"
ODD_PASSWORD = 'p a"s\\s {w}ord'
TEST_HOME_ISLAND = dict(HOME_ISLAND, **{ODD_USER: "a"})
TEST_USERS = dict(USERS, **{ODD_USER: ODD_PASSWORD})

# The demo's fixed ports (deploy/demo.sh): imap x1143, pop3 x1110, lmtp x1024,
# ManageSieve x4190.
DEMO_NODE_PORTS = {
    name: {"imap": base + 1143, "pop3": base + 1110, "lmtp": base + 1024, "sieve": base + 4190}
    for name, base in (("a-left", 20000), ("a-right", 21000),
                       ("b-left", 22000), ("b-right", 23000))
}
DEMO_ISTHMUS_PORTS = {"imap": 1143}


def deep_merge(base: dict, overrides: Mapping[str, Any]) -> dict:
    """A copy of BASE with OVERRIDES applied: dicts merge key by key, any
    other value (lists included) replaces; a value of None deletes the key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _run_parallel(calls: list) -> None:
    """Run CALLS in threads, wait for all; re-raise the first exception."""
    errors: list[BaseException] = []

    def run(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class Lab:
    """Four Dovecot nodes in two islands, in one temp dir.

    node_ports      node name -> {protocol: port}; nodes or protocols left
                    out get free ports (20000-32000)
    isthmus_ports   protocol -> port for isthmus' listeners; default one IMAP
                    listener on a free port. A value of 0 picks a free port.
    root            directory to use instead of a new temp dir (kept)
    separate_index  give each node its own index dir (maildirs stay shared)
    tls             make a CA and certificates; nodes offer STARTTLS and
                    imaps/pop3s (ports "imaps"/"pop3s" may be in node_ports)
    require_tls     names of nodes that refuse plaintext auth without TLS
                    (needs tls=True)
    sieve           the nodes also serve ManageSieve (node port "sieve",
                    "managesieve" in isthmus' node entries)
    oauth2_url      the nodes also take bearer tokens, checked at this
                    introspection URL (DovecotNode oauth2_url)
    kind            "dovecot" or "cyrus" (default: ISTHMUS_NODE_KIND, else
                    dovecot); lab.kind says which. Cyrus nodes:
                    tests/lab/cyrus.py
    node_options    more keyword arguments for every node (e.g. Cyrus'
                    lmtp_auth=True)
    """

    def __init__(self, node_ports: Optional[Mapping[str, Mapping[str, int]]] = None, *,
                 isthmus_ports: Optional[Mapping[str, int]] = None,
                 root: Optional[str] = None, separate_index: bool = False,
                 tls: bool = False, require_tls: Iterable[str] = (), sieve: bool = False,
                 oauth2_url: Optional[str] = None, kind: Optional[str] = None,
                 node_options: Optional[Mapping[str, Any]] = None, doveadm: bool = False):
        node_ports = node_ports or {}
        self.kind = kind or node_kind()
        if self.kind not in NODE_KINDS:
            raise ValueError(f"kind must be one of {sorted(NODE_KINDS)}: {self.kind!r}")
        node_class = NODE_KINDS[self.kind]
        options = dict(node_options or {})
        if (sieve or oauth2_url or doveadm) and self.kind != "dovecot":
            raise ValueError("sieve, oauth2_url and doveadm: Dovecot nodes only (Pigeonhole, "
                             "oauth2 passdb, dsync)")
        if oauth2_url:
            options["oauth2_url"] = oauth2_url
        require_tls = set(require_tls)
        if require_tls and not tls:
            raise ValueError("require_tls needs tls=True")
        if require_tls - {n for names in ISLANDS.values() for n in names}:
            raise ValueError(f"require_tls: unknown nodes {sorted(require_tls)}")
        if root is None:
            # Short path under /tmp: Dovecot's unix sockets live below it
            # (sun_path is 108 bytes).
            self.root = tempfile.mkdtemp(prefix="isthmus-lab-")
            self._own_root = True
        else:
            self.root = os.path.abspath(root)
            os.makedirs(self.root, exist_ok=True)
            self._own_root = False
        # mkdtemp makes it 0700; Dovecot's unprivileged processes must be
        # able to traverse it (real-servers.md).
        os.chmod(self.root, 0o755)
        self.closed = False
        procs.register_cleanup(self.close)

        used = {p for ports in node_ports.values() for p in ports.values()}
        used |= set((isthmus_ports or {}).values())

        def pick(port: Optional[int]) -> int:
            if port:
                return port
            port = procs.free_port(exclude=used)
            used.add(port)
            return port

        self.tls = tls
        self.ca: Optional[tlslib.Ca] = None
        self.ca_path: Optional[str] = None
        self.isthmus_cert: Optional[tlslib.Leaf] = None
        if tls:
            self.ca = tlslib.make_ca(os.path.join(self.root, "pki"))
            self.ca_path = self.ca.cert_path
            self.isthmus_cert = self.ca.issue(
                "isthmus", dns=["isthmus.lab.test"], ips=["127.0.0.1"])

        self.nodes: dict[str, Any] = {}
        for island, names in ISLANDS.items():
            for name in names:
                wanted = node_ports.get(name, {})
                protos = (("imap", "pop3", "lmtp") + (("imaps", "pop3s") if tls else ())
                          + (("sieve",) if sieve else ())
                          + (("doveadm", "doveadm_http") if doveadm else ()))
                ports = {proto: pick(wanted.get(proto)) for proto in protos}
                cert = None
                if tls:
                    host = "127.0.0.2" if name in require_tls else DovecotNode.host
                    cert = self.ca.issue(name, dns=[f"{name}.lab.test"],
                                         ips=sorted({"127.0.0.1", host}))
                self.nodes[name] = node_class(
                    name, os.path.join(self.root, "nodes", name), self.store(island),
                    TEST_USERS, ports, separate_index=separate_index,
                    tls=cert, require_tls=name in require_tls, **options)

        self.isthmus_ports = {proto: pick(port) for proto, port in
                              (isthmus_ports or {"imap": 0}).items()}
        self.config: dict = self._base_config()
        self.users_map: str = self._users_map()
        self.isthmus: Optional[Isthmus] = None  # the latest one started
        self._isthmi: list[Isthmus] = []

    # -- layout

    @property
    def islands(self) -> dict[str, tuple[str, ...]]:
        return dict(ISLANDS)

    @property
    def users(self) -> dict[str, str]:
        """login -> password."""
        return dict(USERS)

    def node(self, name: str):
        return self.nodes[name]

    def island_nodes(self, island: str) -> list:
        return [self.nodes[n] for n in ISLANDS[island]]

    def store(self, island: str) -> str:
        """The store (maildir root) shared by the nodes of ISLAND."""
        if island not in ISLANDS:
            raise KeyError(island)
        return os.path.join(self.root, "stores", island)

    def node_cert(self, name: str) -> Optional[tlslib.Leaf]:
        """The certificate node NAME presents (None without tls)."""
        return self.nodes[name].tls

    @staticmethod
    def tls_name(node_name: str) -> str:
        """The DNS name in node NODE_NAME's certificate."""
        return f"{node_name}.lab.test"

    def home_island(self, user: str) -> str:
        return TEST_HOME_ISLAND[user]

    def put_message(self, user: str, raw: bytes, *, island: Optional[str] = None,
                    folder: str = "INBOX") -> str:
        """RAW into USER's FOLDER in ISLAND's store (default: the user's
        home). Dovecot: written into the maildir (put_message()); Cyrus:
        APPENDed through a running node of the island (its store cannot be
        written behind its back)."""
        island = island or TEST_HOME_ISLAND[user]
        if self.kind == "cyrus":
            node = next((n for n in self.island_nodes(island) if n.running()), None)
            if node is None:
                raise RuntimeError(f"put_message: no node of island {island} is running")
            return cyruslib.append_message(node, user, TEST_USERS.get(user, ""), raw, folder)
        return put_message(self.store(island), user, raw, folder)

    @property
    def master_style(self) -> str:
        """The auth.master_style these nodes take: Dovecot's "user*master"
        or SASL PLAIN with an authzid (Cyrus' proxyservers; Dovecot takes
        that too)."""
        return "sasl" if self.kind == "cyrus" else "dovecot"

    def skip_unless_dovecot(self, why: str) -> None:
        """Skip the calling test on other node kinds, saying why."""
        if self.kind != "dovecot":
            import unittest
            raise unittest.SkipTest(f"Dovecot-only: {why}")

    # -- config

    def _base_config(self) -> dict:
        def node_entry(node) -> dict:
            # Only the protocols: imaps/pop3s ports are in node.ports.
            ports = {("managesieve" if p == "sieve" else p): port
                     for p, port in node.ports.items() if p in PROTOCOLS}
            return {"name": node.name, "host": node.host, "ports": ports}

        return {
            "instance": "lab",
            "workers": 2,
            "log": {"level": "info"},
            "listeners": [
                {"name": proto, "protocol": proto, "address": "127.0.0.1", "port": port}
                for proto, port in self.isthmus_ports.items()
            ],
            "islands": [
                {"name": island, "policy": "balance",
                 "nodes": [node_entry(self.nodes[n]) for n in names]}
                for island, names in ISLANDS.items()
            ],
            "directory": {"type": "static", "file": "users.map"},
            "login_names": {"lowercase": True, "default_domain": "example.org"},
            # The test clients are all on loopback: trusted, so they may log in
            # without TLS (tests of the TLS policy override this).
            "trusted_networks": ["127.0.0.0/8"],
            "timeouts": {"preauth": "60s", "login": "30s", "connect": "3s", "idle": "30m",
                         "shutdown_grace": "10s", "auth_failure_delay": "0s"},
            "limits": {"max_line": 8192, "max_literal": 8192, "max_preauth_commands": 30},
            # No active health checks by default: their connections would show
            # up in the nodes' logs (node.logins() sees "Disconnected (no auth
            # attempts)") and in the fake nodes' counts. test_health.py turns
            # them on (health={"active": True, ...}).
            "health": {"active": False},
        }

    @staticmethod
    def _users_map() -> str:
        lines = ["# users.map written by tests/lab/cluster.py",
                 "# <login-name> <island>; '*@domain island' for a domain; '* island' default"]
        lines += [f"{login} {island}" for login, island in TEST_HOME_ISLAND.items()]
        return "\n".join(lines) + "\n"

    # -- lifecycle

    def start(self, timeout: float = 20.0) -> "Lab":
        """Start the four nodes, all at once (returns self)."""
        _run_parallel([lambda n=node: n.start(timeout) for node in self.nodes.values()])
        return self

    def start_isthmus(self, binary: str, *, users_map: Optional[str] = None,
                      timeout: float = 15.0, **overrides: Any) -> Isthmus:
        """Start isthmus with lab.config, changed by OVERRIDES (merged with
        deep_merge: ``timeouts={"idle": "5s"}`` changes one timeout), and
        lab.users_map or USERS_MAP. Each call gets its own run dir
        (ROOT/isthmus, ROOT/isthmus-2, ...)."""
        config = deep_merge(self.config, overrides)
        n = len(self._isthmi) + 1
        run_dir = os.path.join(self.root, "isthmus" if n == 1 else f"isthmus-{n}")
        ix = Isthmus(binary, run_dir, config,
                     self.users_map if users_map is None else users_map)
        self._isthmi.append(ix)
        self.isthmus = ix
        ix.start(timeout)
        return ix

    def close(self) -> None:
        """Stop everything this lab started; remove the temp dir unless
        ISTHMUS_KEEP_LAB=1 (or the root was given by the caller)."""
        if self.closed:
            return
        self.closed = True
        procs.unregister_cleanup(self.close)
        problems = []
        for ix in self._isthmi:
            try:
                ix.stop()
            except AssertionError as e:  # crashed, hung or sanitizer report
                problems.append(e)
        # In parallel: a Dovecot master takes ~1.1 s to shut down.
        _run_parallel([node.stop for node in self.nodes.values()])
        if os.environ.get("ISTHMUS_KEEP_LAB") == "1":
            print(f"lab: kept {self.root} (ISTHMUS_KEEP_LAB=1)", flush=True)
        elif self._own_root and not problems:
            shutil.rmtree(self.root, ignore_errors=True)
        if problems:
            print(f"lab: kept {self.root} for a post-mortem", flush=True)
            raise problems[0]

    def __enter__(self) -> "Lab":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Lab", "NODE_KINDS", "node_kind", "ISLANDS", "HOME_ISLAND", "USERS", "PASSWORD", "ODD_USER", "ODD_PASSWORD", "DEMO_NODE_PORTS",
           "DEMO_ISTHMUS_PORTS", "deep_merge"]
