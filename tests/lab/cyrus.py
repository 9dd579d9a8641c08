"""A real Cyrus IMAP 3.6 node on loopback, in its own directories.

``CyrusNode`` has the interface of ``DovecotNode`` (start, stop, kill,
pause, resume, restart, ports, host, tls, log_text) so the lab can run
either kind (``Lab(kind="cyrus")`` or ISTHMUS_NODE_KIND=cyrus). What we
learned running it here (shared/real-servers.md, "Cyrus IMAP 3.6"):

* ``cyrus-imapd`` and ``cyrus-pop3d`` conflict with Dovecot's imapd and
  pop3d, so their ``imapd`` and ``pop3d`` come unpacked from the packages
  into ``build/node-bin`` (deploy/install-deps.sh; ISTHMUS_NODE_BIN
  overrides); ``master``, ``lmtpd`` and the tools come from cyrus-common.
* A private ``master -C imapd.conf -M cyrus.conf -p PIDFILE`` per node,
  in the foreground. The master's ``-C`` is not passed on: every service
  command in cyrus.conf carries its own ``-C``, or it reads /etc/imapd.conf.
  Services run as the ``cyrus`` user, so everything they touch is theirs.
* The two nodes of an island share one store, as a left/right pair sharing
  a disk would: ``configdirectory`` (mailboxes.db, the duplicate-delivery
  db, seen state) and the partition are shared, locked by Cyrus with fcntl
  across both masters; each node has its own proc dir, sockets and pidfile.
* Users live in a sasldb (``saslpasswd2 -f``). ``virtdomains: userid``
  and no ``defaultdomain``: ``alice@example.org`` authenticates as alice
  in the SASL realm ``example.org``. The master (proxy) user and the LMTP
  user are in the realm equal to ``servername``.
* Master-user logins are SASL PLAIN with authzid = the user by a user in
  ``proxyservers`` (Isthmus ``auth.master_style: "sasl"``); Dovecot's
  ``user*master`` is refused.
* ``popminpoll: 0`` (Debian's 1 allows one POP3 login per user a minute).
* LMTP: ``lmtpd -a`` (trusted: no AUTH) by default; with ``lmtp_auth=True``
  the lmtp port runs ``lmtpd`` without ``-a``: it offers STARTTLS (with
  tls) and AUTH and answers MAIL with ``430 Authentication required`` until
  ``AUTH PLAIN`` by LMTP_USER. That user must be in ``admins`` as well as
  ``lmtp_admins``: with lmtp_admins alone Cyrus 3.6 answers AUTH with
  ``501 5.5.4 undefined error!``.
* A user's INBOX exists only once created: the admin creates them all at
  the first start over one connection (see _create_mailboxes: Cyrus 3.6
  gave two mailboxes made by processes forked the same second one unique
  id), so an unknown user is ``550 5.1.1`` at RCPT as on Dovecot.
* Cyrus logs only to syslog and there is no /dev/log here: ``logins()``
  raises unittest.SkipTest (tests that read the node's login log are
  Dovecot-only); ``log_text()`` is what the master printed.
"""

from __future__ import annotations

import base64
import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
import unittest
from typing import Any, Mapping, Optional

from . import procs

MASTER_USER = "master"
# The Cyrus admin (in admins): creates the users' mailboxes.
ADMIN_USER = "cyrusadmin"
ADMIN_PASSWORD = "adminpw"
MASTER_PASSWORD = "masterpw"
# The user Isthmus authenticates as to an lmtpd without -a.
LMTP_USER = "lmtp"
LMTP_PASSWORD = "lmtppw"
PROTOCOLS = ("imap", "pop3", "lmtp")
TLS_PORTS = {"imaps": "imap", "pop3s": "pop3"}

CYRUS_LIBEXEC = "/usr/lib/cyrus/bin"  # cyrus-common: master, lmtpd, ctl_cyrusdb
SASLPASSWD = shutil.which("saslpasswd2", path="/usr/sbin:/usr/bin") or "/usr/sbin/saslpasswd2"
_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def node_bin_dir() -> str:
    """Where deploy/install-deps.sh unpacked the packages that cannot be
    installed beside Dovecot and Postfix (cyrus-imapd, cyrus-pop3d,
    exim4-daemon-light)."""
    return os.environ.get("ISTHMUS_NODE_BIN") or os.path.join(_REPO, "build", "node-bin")


def cyrus_binary(name: str) -> str:
    """imapd/pop3d from the unpacked packages; anything else (master,
    lmtpd, ctl_cyrusdb) from cyrus-common."""
    if name in ("imapd", "pop3d"):
        path = os.path.join(node_bin_dir(), "usr/lib/cyrus/bin", name)
    else:
        path = os.path.join(CYRUS_LIBEXEC, name)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is missing: run deploy/install-deps.sh (it installs "
                           f"cyrus-common and unpacks cyrus-imapd/cyrus-pop3d into "
                           f"{node_bin_dir()})")
    return path


def available() -> bool:
    try:
        for name in ("master", "lmtpd", "imapd", "pop3d"):
            cyrus_binary(name)
    except RuntimeError:
        return False
    return os.access(SASLPASSWD, os.X_OK)


def _cyrus_ids() -> tuple[int, int]:
    pw = pwd.getpwnam("cyrus")
    return pw.pw_uid, pw.pw_gid


def _chown_tree(path: str) -> None:
    if os.geteuid() != 0:
        return
    uid, gid = _cyrus_ids()
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


class CyrusNode:
    """One Cyrus master serving ``users`` from the island's ``store_dir``.

    The arguments are DovecotNode's (name, run_dir, store_dir, users, ports,
    tls, require_tls, host) plus ``lmtp_auth`` (see the module docstring)
    and ``altnamespace`` (False: Cyrus' layout before 3.0, altnamespace and
    unixhierarchysep off, a user's folders under ``INBOX.``).
    ``require_tls`` sets ``allowplaintext: no`` (LOGINDISABLED until
    STARTTLS) and listens on 127.0.0.2 like a DovecotNode that requires TLS.
    """

    host = "127.0.0.1"
    kind = "cyrus"

    def __init__(self, name: str, run_dir: str, store_dir: str,
                 users: Mapping[str, str], ports: Mapping[str, int], *,
                 separate_index: bool = False, tls: Any = None,
                 require_tls: bool = False, host: Optional[str] = None,
                 trusted_networks: Optional[str] = None, lmtp_auth: bool = False,
                 altnamespace: bool = True):
        allowed = set(PROTOCOLS) | set(TLS_PORTS)
        unknown = set(ports) - allowed
        if unknown or not ports:
            raise ValueError(f"ports must be a non-empty dict over {sorted(allowed)}: {ports!r}")
        if tls is None and (require_tls or set(ports) & set(TLS_PORTS)):
            raise ValueError("require_tls and imaps/pop3s ports need tls=<cert>")
        del separate_index, trusted_networks  # Dovecot notions: the store is shared whole
        self.name = name
        self.run_dir = os.path.abspath(run_dir)
        self.store_dir = os.path.abspath(store_dir)
        self.users = dict(users)
        self.ports = dict(ports)
        self.tls = tls
        self.require_tls = require_tls
        self.lmtp_auth = lmtp_auth
        # False: Cyrus' layout before 3.0 (and of many stores upgraded since):
        # altnamespace and unixhierarchysep off, so a user's folders are
        # INBOX.Sent, ... (NAMESPACE (("INBOX." ".")) ...).
        self.altnamespace = altnamespace
        self.separator = "/" if altnamespace else "."
        if host is not None:
            self.host = host
        elif require_tls:
            self.host = "127.0.0.2"
        self.servername = f"{name}.lab.test"
        self.conf_path = os.path.join(self.run_dir, "imapd.conf")
        self.cyrus_conf_path = os.path.join(self.run_dir, "cyrus.conf")
        self.sasldb = os.path.join(self.run_dir, "sasldb2")
        self.log_path = os.path.join(self.run_dir, "master.log")
        self.proc: Optional[procs.Proc] = None

    def __repr__(self):
        return f"<CyrusNode {self.name} {self.ports}>"

    # -- files

    def prepare(self) -> None:
        """Directories, imapd.conf, cyrus.conf and the sasldb."""
        for d in (self.run_dir, os.path.join(self.run_dir, "proc"),
                  os.path.join(self.run_dir, "socket"), os.path.join(self.run_dir, "tmp"),
                  os.path.join(self.store_dir, "conf"), os.path.join(self.store_dir, "spool"),
                  os.path.join(self.store_dir, "lock")):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        for sub in ("db", "log", "sieve", "user", "quota", "socket"):
            os.makedirs(os.path.join(self.store_dir, "conf", sub), exist_ok=True)
        self._write(self.conf_path, self.imapd_conf())
        self._write(self.cyrus_conf_path, self.cyrus_conf())
        if os.path.exists(self.sasldb):
            os.unlink(self.sasldb)
        for user, password in self.users.items():
            local, _, domain = user.partition("@")
            self._saslpasswd(local, domain or self.servername, password)
        self._saslpasswd(MASTER_USER, self.servername, MASTER_PASSWORD)
        self._saslpasswd(LMTP_USER, self.servername, LMTP_PASSWORD)
        self._saslpasswd(ADMIN_USER, self.servername, ADMIN_PASSWORD)
        os.chmod(self.sasldb, 0o640)
        if self.tls is not None:
            # The key must be readable by the cyrus user.
            for src, dst in ((self.tls.cert_path, "cert.pem"), (self.tls.key_path, "key.pem")):
                shutil.copyfile(src, os.path.join(self.run_dir, dst))
        _chown_tree(self.run_dir)
        _chown_tree(self.store_dir)

    def _saslpasswd(self, user: str, realm: str, password: str) -> None:
        subprocess.run([SASLPASSWD, "-f", self.sasldb, "-u", realm, "-c", "-p", user],
                       input=password.encode(), check=True, capture_output=True, timeout=20)

    @staticmethod
    def _write(path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)

    def imapd_conf(self) -> str:
        run, store = self.run_dir, self.store_dir
        tls = ""
        if self.tls is not None:
            tls = (f"tls_server_cert: {run}/cert.pem\n"
                   f"tls_server_key: {run}/key.pem\n"
                   "tls_versions: tls1_2 tls1_3\n")
        return f"""\
# Generated by tests/lab/cyrus.py for lab node {self.name}.
configdirectory: {store}/conf
partition-default: {store}/spool
mboxname_lockpath: {store}/lock
proc_path: {run}/proc
temp_path: {run}/tmp
lmtpsocket: {run}/socket/lmtp
idlesocket: {run}/socket/idle
notifysocket: {run}/socket/notify
servername: {self.servername}
virtdomains: userid
unixhierarchysep: {'yes' if self.altnamespace else 'no'}
altnamespace: {'yes' if self.altnamespace else 'no'}
admins: {ADMIN_USER} {LMTP_USER}
lmtp_admins: {LMTP_USER}
proxyservers: {MASTER_USER}
allowplaintext: {'no' if self.require_tls else 'yes'}
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {self.sasldb}
sasl_mech_list: PLAIN LOGIN
popminpoll: 0
lmtp_downcase_rcpt: yes
{tls}"""

    def cyrus_conf(self) -> str:
        conf = f"-C {self.conf_path}"
        imapd, pop3d = cyrus_binary("imapd"), cyrus_binary("pop3d")
        lmtpd = cyrus_binary("lmtpd")
        services = []
        h = self.host
        # Service names carry the node's name: preforked services serialise
        # their accept() on configdirectory/socket/SERVICE-N.lock, and the
        # configdirectory is the island's, shared by both nodes -- with one
        # name the other node's idle imapd would hold that lock for ever.
        tag = "".join(c for c in self.name if c.isalnum())
        if "imap" in self.ports:
            services.append(f'imap{tag} cmd="{imapd} {conf}" listen="{h}:{self.ports["imap"]}" '
                            f'prefork=2')
        if "imaps" in self.ports:
            services.append(f'imaps{tag} cmd="{imapd} -s {conf}" listen="{h}:{self.ports["imaps"]}" '
                            f'prefork=1')
        if "pop3" in self.ports:
            services.append(f'pop3{tag} cmd="{pop3d} {conf}" listen="{h}:{self.ports["pop3"]}" '
                            f'prefork=1')
        if "pop3s" in self.ports:
            services.append(f'pop3s{tag} cmd="{pop3d} -s {conf}" listen="{h}:{self.ports["pop3s"]}" '
                            f'prefork=1')
        if "lmtp" in self.ports:
            trusted = "" if self.lmtp_auth else " -a"
            services.append(f'lmtp{tag} cmd="{lmtpd} {conf}{trusted}" '
                            f'listen="{h}:{self.ports["lmtp"]}" prefork=1')
        body = "\n  ".join(services)
        return f"""\
# Generated by tests/lab/cyrus.py for lab node {self.name}.
START {{
  recover cmd="{cyrus_binary('ctl_cyrusdb')} {conf} -r"
}}
SERVICES {{
  {body}
}}
EVENTS {{
}}
DAEMON {{
}}
"""

    # -- lifecycle

    def start(self, timeout: float = 20.0) -> None:
        """Start the master and wait for every port's greeting; at the first
        start, log every user in once so their INBOX exists."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError(f"{self.name} is already running")
        self.prepare()
        pidfile = os.path.join(self.run_dir, "master.pid")
        self.proc = procs.Proc([cyrus_binary("master"), "-C", self.conf_path,
                                "-M", self.cyrus_conf_path, "-p", pidfile],
                               name=f"cyrus[{self.name}]", log_path=self.log_path,
                               cwd=self.run_dir)
        deadline = time.monotonic() + timeout
        try:
            for proto, port in self.ports.items():
                self._wait_greeting(proto, port, deadline)
            self._create_mailboxes()
        except (TimeoutError, RuntimeError, OSError, imaplib.IMAP4.error) as e:
            self.proc.kill()
            raise RuntimeError(f"cyrus node {self.name} did not start: {e}\n"
                               f"--- {self.log_path} (tail)\n{procs.tail(self.log_path)}"
                               ) from None

    def _create_mailboxes(self) -> None:
        """Every user's INBOX, once per island store, by the admin over ONE
        IMAP connection. Not by each user's first login: Cyrus 3.6 makes a
        mailbox's unique id from a generator that processes forked the same
        second share, and two INBOXes with one id are one mailbox to it
        (alice saw bob's mail). One process creating them all gives
        distinct ids."""
        if "imap" not in self.ports or self.require_tls:
            return
        import fcntl
        with open(os.path.join(self.store_dir, ".mailboxes.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the island's other node may be at it
            marker = os.path.join(self.store_dir, ".mailboxes")
            if os.path.exists(marker):
                return
            m = imaplib.IMAP4(self.host, self.ports["imap"], timeout=10)
            try:
                m.login(ADMIN_USER, ADMIN_PASSWORD)
                for user in self.users:
                    local, at, domain = user.partition("@")
                    if self.separator == ".":  # a dot in a name is "^" with netnews separators
                        local = local.replace(".", "^")
                    box = f"user{self.separator}{local}{at}{domain}"
                    typ, data = m.create(box)
                    if typ != "OK" and b"exists" not in data[0]:
                        raise RuntimeError(f"CREATE {box}: {data!r}")
            finally:
                try:
                    m.logout()
                except (OSError, imaplib.IMAP4.error):
                    pass
            open(marker, "w").close()

    _GREETING = {"imap": b"* OK", "pop3": b"+OK", "lmtp": b"220"}
    _QUIT = {"imap": b"a LOGOUT\r\n", "pop3": b"QUIT\r\n", "lmtp": b"QUIT\r\n"}

    def _wait_greeting(self, proto: str, port: int, deadline: float) -> None:
        while True:
            if self.proc.returncode() is not None:
                raise RuntimeError(f"cyrus master exited with status {self.proc.returncode()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {proto} greeting on {self.host}:{port}")
            plain_proto = TLS_PORTS.get(proto, proto)
            try:
                with socket.create_connection((self.host, port), timeout=remaining) as raw:
                    raw.settimeout(remaining)
                    s = _unverified_tls().wrap_socket(raw) if proto in TLS_PORTS else raw
                    f = s.makefile("rb")
                    line = f.readline()
                    if line.startswith(self._GREETING[plain_proto]):
                        s.sendall(self._QUIT[plain_proto])
                        f.read()
                        return
                    if line.startswith(b"* BYE"):
                        raise RuntimeError(f"{proto} greeting: {line!r}")
            except OSError:
                pass
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """SIGTERM to the master (it stops its services), SIGKILL to what is
        left after TIMEOUT."""
        if self.proc is None:
            return None
        return self.proc.stop(timeout, group=True)

    def kill(self) -> Optional[int]:
        if self.proc is None:
            return None
        return self.proc.kill()

    def pause(self) -> None:
        if self.proc is not None:
            self.proc.pause()

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.resume()

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def service_pids(self, service: str) -> list[int]:
        """PIDs of this node's processes running SERVICE's binary ("imapd",
        "pop3d", "lmtpd"): to kill one protocol's daemons only."""
        if self.proc is None:
            return []
        out = []
        for pid in self.proc.members():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0].decode()
            except OSError:
                continue
            if os.path.basename(argv0) == service:
                out.append(pid)
        return out

    # -- inspection

    def port(self, protocol: str) -> int:
        return self.ports[protocol]

    def logins(self) -> list[dict]:
        raise unittest.SkipTest("reads the node's login log: Cyrus logs only to syslog, and "
                                "this VM has no /dev/log (a Dovecot-only check)")

    def log_text(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def append_message(node, user: str, password: str, raw: bytes, folder: str = "INBOX") -> str:
    """Store RAW in USER's FOLDER through NODE's IMAP (APPEND, after CREATE
    when the folder is new): Cyrus' store cannot be written behind its
    back the way a maildir can. Logs in as the master user on the user's
    behalf, so it works whatever the user's password is."""
    m = imaplib.IMAP4(node.host, node.ports["imap"], timeout=10)
    try:
        authz = user
        m.authenticate("PLAIN", lambda _: f"{authz}\0{MASTER_USER}\0{MASTER_PASSWORD}".encode())
        if folder.upper() != "INBOX":
            m.create(folder)  # NO when it exists: fine
        typ, data = m.append(folder, None, None, raw)
        if typ != "OK":
            raise RuntimeError(f"APPEND to {user}/{folder} on {node.name}: {data!r}")
        return f"imap:{node.name}/{user}/{folder}"
    finally:
        try:
            m.logout()
        except (OSError, imaplib.IMAP4.error):
            pass


def lmtp_auth_plain() -> str:
    """The AUTH PLAIN initial response of LMTP_USER."""
    return base64.b64encode(f"\0{LMTP_USER}\0{LMTP_PASSWORD}".encode()).decode()


def _unverified_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


__all__ = ["CyrusNode", "append_message", "available", "cyrus_binary", "node_bin_dir",
           "lmtp_auth_plain", "MASTER_USER", "MASTER_PASSWORD", "LMTP_USER", "LMTP_PASSWORD"]
