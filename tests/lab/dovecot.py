"""A real Dovecot backend node on loopback, in its own directories.

``DovecotNode`` writes a standalone ``dovecot.conf`` and runs
``dovecot -F -c CONF`` (foreground: the PID we hold is the master, and its
children die with it; real-servers.md, "Dovecot"). Several nodes run side by
side because each has its own ``base_dir``, ``state_dir``, ``log_path`` and
``instance_name``.

Two nodes of one island share one *store* directory (like a DBMail pair
sharing one database): a message delivered through either node is visible
through both. The maildirs (and their ``dovecot-uidlist``, so UIDs agree) are
shared; the index files are shared too by default -- Dovecot locks them with
fcntl, which works across instances just as across processes of one
instance. ``separate_index=True`` gives a node its own INDEX directory
instead (the maildir stays shared).

``put_message()`` drops a message straight into a user's maildir, for tests
that need a message to exist in one island's store only.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import ssl
import time
from typing import Any, Mapping, Optional

from . import procs

DOVECOT = shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/dovecot"

PROTOCOLS = ("imap", "pop3", "lmtp", "sieve")  # "sieve": ManageSieve (Pigeonhole)
# Implicit-TLS listeners (need tls=...): port key -> the protocol it serves.
TLS_PORTS = {"imaps": "imap", "pop3s": "pop3"}
# The doveadm server (dsync's "tcp:host:port" destination) and its HTTP API,
# both behind DOVEADM_PASSWORD (the dsync mover, docs/move.md).
DOVEADM_PORTS = ("doveadm", "doveadm_http")
DOVEADM_PASSWORD = "doveadmpw"

MASTER_USER = "master"
MASTER_PASSWORD = "masterpw"
MASTER_SEPARATOR = "*"


# --------------------------------------------------------------------------
# Who owns the mail


def mail_owner() -> tuple[int, int, str]:
    """(uid, gid, user name) that mail files belong to.

    As root: the system user ``mail`` (uid 8 on Debian). Otherwise the
    current user -- a non-root Dovecot cannot switch users, so everything
    (login, internal and mail processes) runs as us."""
    if os.geteuid() == 0:
        pw = pwd.getpwnam("mail")
    else:
        pw = pwd.getpwuid(os.geteuid())
    return pw.pw_uid, pw.pw_gid, pw.pw_name


def _chown(path: str) -> None:
    """Give PATH to the mail owner (a no-op when not root: it is ours)."""
    uid, gid, _ = mail_owner()
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def make_mail_dir(path: str, mode: int = 0o700) -> None:
    """mkdir -p PATH, every directory created along the way owned by the
    mail owner (Dovecot, running as that uid, creates files inside)."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue  # a Dovecot process made it meanwhile
        _chown(d)


def check_traversable(path: str) -> None:
    """Raise if PATH or a parent is not traversable by other users.

    As root, Dovecot's unprivileged processes (dovenull, dovecot, mail) must
    be able to walk down to their sockets and to the store; ``mktemp -d``
    creates 0700 directories (real-servers.md, first_valid_uid), so whoever
    creates a temp dir chmods it 0755. We check rather than chmod parents we
    did not create (say /root)."""
    if os.geteuid() != 0:
        return  # everything runs as us
    p = os.path.abspath(path)
    while True:
        if os.stat(p).st_mode & 0o001 == 0:
            raise PermissionError(
                f"{p} is not traversable by other users (mode "
                f"{os.stat(p).st_mode & 0o777:o}); Dovecot's unprivileged "
                f"processes need o+x on every parent of {path}")
        if p == "/":
            return
        p = os.path.dirname(p)


# --------------------------------------------------------------------------
# Direct delivery into the store

_put_counter = 0


def user_maildir(store_dir: str, user: str) -> str:
    """The Maildir of USER (``local@domain``) in STORE_DIR: the same path as
    the nodes' ``mail_location`` (``STORE/%d/%n/Maildir``)."""
    local, _, domain = user.partition("@")
    return os.path.join(store_dir, domain, local, "Maildir")


def put_message(store_dir: str, user: str, raw: bytes,
                folder: str = "INBOX") -> str:
    """Write RAW (a complete RFC 5322 message) into USER's FOLDER in the
    store, as a new message; returns the file's path.

    Follows the maildir delivery protocol: write into ``tmp/`` under a unique
    name, then rename into ``new/``, so a Dovecot process scanning the
    folder never sees half a message. ``folder`` other than INBOX uses the
    Maildir++ layout Dovecot uses by default (``Maildir/.Name``, '.' as
    hierarchy separator)."""
    global _put_counter
    maildir = user_maildir(store_dir, user)
    if folder.upper() != "INBOX":
        if "/" in folder or folder.startswith("."):
            raise ValueError(f"bad folder name for Maildir++: {folder!r}")
        maildir = os.path.join(maildir, "." + folder)
    for sub in ("cur", "new", "tmp"):
        make_mail_dir(os.path.join(maildir, sub))
    if folder.upper() != "INBOX":
        marker = os.path.join(maildir, "maildirfolder")
        if not os.path.exists(marker):
            open(marker, "wb").close()
            _chown(marker)
    if b"\r\n" in raw:
        # Maildir files hold LF line endings; Dovecot adds the CRs.
        raw = raw.replace(b"\r\n", b"\n")

    _put_counter += 1
    now = time.time()
    # <secs>.M<usecs>P<pid>Q<counter>.<host>: the unique-name scheme of
    # the maildir spec; ",S=<size>" lets Dovecot skip a stat().
    name = (f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}"
            f"Q{_put_counter}.{socket.gethostname()},S={len(raw)}")
    tmp_path = os.path.join(maildir, "tmp", name)
    with open(tmp_path, "wb") as f:
        f.write(raw)
    os.chmod(tmp_path, 0o600)
    _chown(tmp_path)
    os.utime(tmp_path, (now, now))  # the message's INTERNALDATE
    new_path = os.path.join(maildir, "new", name)
    os.rename(tmp_path, new_path)
    return new_path


def make_message(subject: str, body: str, *, to: str = "",
                 sender: str = "lab@example.org") -> bytes:
    """A small well-formed message (CRLF line endings)."""
    from email.utils import formatdate, make_msgid
    lines = [
        f"From: {sender}",
        f"To: {to}" if to else "To: undisclosed-recipients:;",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=True)}",
        f"Message-ID: {make_msgid(domain='lab.example.org')}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        *body.splitlines(),
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


# --------------------------------------------------------------------------
# The node


class DovecotNode:
    """One Dovecot instance serving ``users`` from ``store_dir``.

    name       node name ("a-left"); also part of Dovecot's instance_name
    run_dir    private directory: config, passwd files, sockets, state, log
    store_dir  mail store; shared by the nodes of one island
    users      login (full address) -> password
    ports      protocol ("imap", "pop3", "lmtp", "sieve") -> TCP port on ``host``;
               with tls also "imaps" / "pop3s" (implicit TLS listeners);
               "doveadm" (the doveadm server, a dsync destination) and
               "doveadm_http" (the doveadm HTTP API), password DOVEADM_PASSWORD
    separate_index  keep this node's index files in run_dir/index instead of
               next to the shared maildir
    tls        None (default: ssl = no), or a tls.Leaf (anything with
               cert_path and key_path): ssl = yes, STARTTLS on imap, pop3 and
               lmtp, TLS 1.2+, and the imaps/pop3s listeners if in ``ports``
    require_tls  refuse plaintext authentication: imap advertises
               LOGINDISABLED and pop3/imap refuse USER/PASS/LOGIN/AUTHENTICATE
               until STARTTLS. Dovecot counts a connection as "secured" (and
               so allows plaintext) when it comes from login_trusted_networks
               *or when its remote IP equals its local IP* -- always the case
               for 127.0.0.1 -> 127.0.0.1. So a require_tls node listens on
               127.0.0.2 (clients connecting to it get source 127.0.0.1) and
               trusts no network (so no ID/XCLIENT forwarding on it).
               Needs tls.
    host       listen address (default 127.0.0.1; 127.0.0.2 with require_tls)
    trusted_networks  login_trusted_networks (default "127.0.0.0/8", "" with
               require_tls): who may pass the client's address with IMAP ID /
               POP3 XCLIENT (and is "secured")
    oauth2_url  an RFC 7662 introspection URL (http://): the node also takes
               OAUTHBEARER and XOAUTH2 and checks each token there (Dovecot's
               oauth2 passdb), as a node does when Isthmus passes tokens on
    """

    host = "127.0.0.1"
    kind = "dovecot"

    def __init__(self, name: str, run_dir: str, store_dir: str,
                 users: Mapping[str, str], ports: Mapping[str, int], *,
                 separate_index: bool = False, tls: Any = None,
                 require_tls: bool = False, host: Optional[str] = None,
                 trusted_networks: Optional[str] = None,
                 oauth2_url: Optional[str] = None):
        allowed = set(PROTOCOLS) | set(TLS_PORTS) | set(DOVEADM_PORTS)
        unknown = set(ports) - allowed
        if unknown or not ports:
            raise ValueError(f"ports must be a non-empty dict over {sorted(allowed)}: {ports!r}")
        if tls is None and (require_tls or set(ports) & set(TLS_PORTS)):
            raise ValueError("require_tls and imaps/pop3s ports need tls=<cert>")
        self.name = name
        self.run_dir = os.path.abspath(run_dir)
        self.store_dir = os.path.abspath(store_dir)
        self.users = dict(users)
        self.ports = dict(ports)
        self.separate_index = separate_index
        self.tls = tls
        self.require_tls = require_tls
        if host is not None:
            self.host = host
        elif require_tls:
            self.host = "127.0.0.2"
        if trusted_networks is None:
            trusted_networks = "" if require_tls else "127.0.0.0/8"
        self.trusted_networks = trusted_networks
        self.oauth2_url = oauth2_url
        self.conf_path = os.path.join(self.run_dir, "dovecot.conf")
        self.log_path = os.path.join(self.run_dir, "dovecot.log")
        self.proc: Optional[procs.Proc] = None

    def __repr__(self):
        return f"<DovecotNode {self.name} {self.ports}>"

    # -- files

    def prepare(self) -> None:
        """Create the directories and write dovecot.conf and the passwd
        files. Called by start(); safe to call again (rewrites the files, so
        a changed ``users`` dict takes effect at the next start)."""
        os.makedirs(self.run_dir, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        check_traversable(self.run_dir)
        for sub in ("base", "state"):
            os.makedirs(os.path.join(self.run_dir, sub), exist_ok=True)
        if not os.path.isdir(self.store_dir):
            make_mail_dir(self.store_dir, 0o755)
        _chown(self.store_dir)
        check_traversable(self.store_dir)
        if self.separate_index:
            make_mail_dir(os.path.join(self.run_dir, "index"), 0o755)

        # {PLAIN} passwords: test credentials only. The files must be
        # readable by the auth process, which runs as default_internal_user.
        self._write("users.passwd", "".join(
            f"{login}:{{PLAIN}}{pw}\n" for login, pw in self.users.items()))
        self._write("master.passwd", f"{MASTER_USER}:{{PLAIN}}{MASTER_PASSWORD}\n")
        if self.oauth2_url:
            self._write("oauth2.conf.ext", f"""\
introspection_mode = post
introspection_url = {self.oauth2_url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
""")
        self._write("dovecot.conf", self.config_text())

    def _write(self, name: str, text: str) -> None:
        path = os.path.join(self.run_dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)

    def config_text(self) -> str:
        """The complete dovecot.conf of this node."""
        run = self.run_dir
        uid, gid, user = mail_owner()
        root = os.geteuid() == 0
        # As root the usual split: dovenull for login processes, dovecot for
        # internal ones, mail for mail. Not root: everything runs as us.
        internal_user = "dovecot" if root else user
        internal_group = "dovecot" if root else grp.getgrgid(gid).gr_name
        login_user = "dovenull" if root else user
        # A non-root master cannot chroot(); the login and anvil services
        # chroot by default.
        no_chroot = "" if root else "  chroot =\n"

        location = f"maildir:{self.store_dir}/%d/%n/Maildir"
        if self.separate_index:
            location += f":INDEX={run}/index/%d/%n"

        protocols = [p for p in PROTOCOLS
                     if p in self.ports or any(k in self.ports for k, v in TLS_PORTS.items()
                                               if v == p)]
        listener_ssl = "\n    ssl = yes" if self.tls is not None else ""
        services = []
        if "imap" in protocols:
            services.append(f"""\
service imap-login {{
  inet_listener imap {{
    port = {self.ports.get('imap', 0)}
  }}
  inet_listener imaps {{
    port = {self.ports.get('imaps', 0)}{listener_ssl}
  }}
  # One long-lived login process serves every connection ("high-performance
  # mode"): fork is expensive on this VM (real-servers.md, "The machine").
  service_count = 0
  process_min_avail = 1
{no_chroot}}}
service imap {{
  # Reuse imap processes for many sessions and keep some forked in advance;
  # possible because all users share one mail uid.
  service_count = 1000
  process_min_avail = 2
}}
""")
        if "pop3" in protocols:
            services.append(f"""\
service pop3-login {{
  inet_listener pop3 {{
    port = {self.ports.get('pop3', 0)}
  }}
  inet_listener pop3s {{
    port = {self.ports.get('pop3s', 0)}{listener_ssl}
  }}
  service_count = 0
  process_min_avail = 1
{no_chroot}}}
service pop3 {{
  service_count = 1000
  process_min_avail = 1
}}
""")
        if "sieve" in self.ports:
            services.append(f"""\
service managesieve-login {{
  inet_listener sieve {{
    port = {self.ports['sieve']}
  }}
  service_count = 0
  process_min_avail = 1
{no_chroot}}}
service managesieve {{
  service_count = 1000
}}
# Scripts in the user's home (next to the maildir in the island's store,
# so both nodes of an island see them).
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
""")
        if "lmtp" in self.ports:
            services.append(f"""\
service lmtp {{
  inet_listener lmtp {{
    address = {self.host}
    port = {self.ports['lmtp']}
  }}
}}
""")
        if "doveadm" in self.ports or "doveadm_http" in self.ports:
            services.append(f"""\
doveadm_password = {DOVEADM_PASSWORD}
service doveadm {{
  inet_listener {{
    address = {self.host}
    port = {self.ports.get('doveadm', 0)}
  }}
  inet_listener http {{
    address = {self.host}
    port = {self.ports.get('doveadm_http', 0)}
  }}
}}
""")

        return f"""\
# Generated by tests/lab/dovecot.py for lab node {self.name}.
# Standalone on purpose (no !include): own base_dir, state_dir, log_path and
# instance_name are all it takes to run several instances side by side.

instance_name = isthmus-lab-{self.name}
base_dir = {run}/base
state_dir = {run}/state
log_path = {self.log_path}
log_timestamp = "%Y-%m-%d %H:%M:%S "

protocols = {' '.join(protocols)}
listen = {self.host}
{self._ssl_config()}auth_mechanisms = plain login{' oauthbearer xoauth2' if self.oauth2_url else ''}
auth_verbose = yes

# Every login (and failed login) is logged by the login process with the
# address Dovecot believes in: rip/rport are the client's (as passed by a
# trusted proxy with ID x-originating-ip / XCLIENT ADDR=), real_rip the
# address the TCP connection really came from. node.logins() parses them.
login_log_format_elements = "user=<%u> method=%m rip=%r rport=%{{rport}} lip=%l lport=%{{lport}} real_rip=%{{real_rip}} real_rport=%{{real_rport}} real_lip=%{{real_lip}} real_lport=%{{real_lport}} mpid=%e %c session=<%{{session}}>"

# Failed logins would take 2 s plus a growing anvil penalty per client IP,
# and every test client is 127.0.0.1 (real-servers.md): no delay, no penalty
# (see service anvil below). A failure still takes ~0.5 s.
auth_failure_delay = 0

# Every loopback client (and everything behind the proxy) shares one IP:
# the default of 10 sessions per user+IP is far too low.
mail_max_userip_connections = 10000

# Makes loopback "secured" and lets the proxy pass the client's IP with
# ID / XCLIENT. Changes the POP3 greeting to "+OK [XCLIENT] ...".
login_trusted_networks = {self.trusted_networks}

default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
default_process_limit = 1000
default_client_limit = 4000

# first_valid_uid defaults to 500, so mail uid 8 would be refused with
# "Mail access for users with UID 8 not permitted" (real-servers.md).
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}

mail_location = {location}

# Master user: log in as "user*master" with the master password. Listed
# first with result_success = continue, so the target user must also exist
# in the normal passdb.
auth_master_user_separator = {MASTER_SEPARATOR}
passdb {{
  driver = passwd-file
  master = yes
  args = {run}/master.passwd
  result_success = continue
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {run}/users.passwd
}}
{self._oauth2_passdb()}# Every user has the same uid/gid; home next to the maildir in the store.
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.store_dir}/%d/%n
}}

{''.join(services)}
service auth {{
  # Must cover the sum of the process limits of the services that talk to
  # auth, or doveconf warns at every start.
  client_limit = 10000
}}
service anvil {{
  # Disables the auth penalty (real-servers.md).
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
{no_chroot}}}
"""

    def _oauth2_passdb(self) -> str:
        if not self.oauth2_url:
            return ""
        return f"""passdb {{
  driver = oauth2
  mechanisms = oauthbearer xoauth2
  args = {self.run_dir}/oauth2.conf.ext
}}
"""

    def _ssl_config(self) -> str:
        if self.tls is None:
            return "ssl = no\ndisable_plaintext_auth = no\n"
        # ssl_cert/ssl_key "<path" are read by the config process (root).
        # ssl = required alone does NOT refuse plaintext on loopback: see
        # require_tls in the class docstring.
        return f"""\
ssl = {'required' if self.require_tls else 'yes'}
ssl_cert = <{os.path.abspath(self.tls.cert_path)}
ssl_key = <{os.path.abspath(self.tls.key_path)}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = {'yes' if self.require_tls else 'no'}
"""

    # -- lifecycle

    def start(self, timeout: float = 20.0) -> None:
        """Start Dovecot and wait until every configured port answers with
        its greeting (IMAP "* OK", POP3 "+OK", LMTP "220"). The master opens
        the listening sockets before the login processes are up, so a mere
        TCP connect would not prove the node can serve."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError(f"{self.name} is already running")
        self.prepare()
        # After a kill (ours or a SIGKILL on a slow stop) Dovecot leaves its
        # master.pid behind, and refuses to start while that PID is alive --
        # which, with PIDs wrapping fast, may be any process by now. Our
        # previous master is gone (checked above), so the file is stale.
        try:
            os.unlink(os.path.join(self.run_dir, "base", "master.pid"))
        except FileNotFoundError:
            pass
        self.proc = procs.Proc([DOVECOT, "-F", "-c", self.conf_path],
                               name=f"dovecot[{self.name}]",
                               log_path=os.path.join(self.run_dir, "stdout.log"),
                               cwd=self.run_dir)
        deadline = time.monotonic() + timeout
        try:
            for proto, port in self.ports.items():
                if proto in DOVEADM_PORTS:
                    continue  # no greeting; served by the master as soon as it listens
                self._wait_greeting(proto, port, deadline)
        except (TimeoutError, RuntimeError) as e:
            self.proc.kill()
            raise RuntimeError(
                f"dovecot node {self.name} did not start: {e}\n"
                f"--- {self.log_path} (tail)\n{procs.tail(self.log_path)}\n"
                f"--- stdout/stderr\n{procs.tail(os.path.join(self.run_dir, 'stdout.log'))}"
            ) from None

    _GREETING = {"imap": b"* OK", "pop3": b"+OK", "lmtp": b"220", "sieve": b'"IMPLEMENTATION"'}
    _QUIT = {"imap": b"a LOGOUT\r\n", "pop3": b"QUIT\r\n", "lmtp": b"QUIT\r\n",
             "sieve": b"LOGOUT\r\n"}

    def _wait_greeting(self, proto: str, port: int, deadline: float) -> None:
        """Connect until the greeting arrives, then say goodbye politely.

        One probe connection per port, ended with LOGOUT/QUIT: a bare TCP
        connect closed at once, followed by a second probe, made Dovecot
        2.3.19's lmtp process miss the shutdown often, so that stop() fell
        back to SIGKILL (see stop())."""
        while True:
            if self.proc.returncode() is not None:
                raise RuntimeError(f"dovecot exited with status {self.proc.returncode()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {proto} greeting on {self.host}:{port}")
            plain_proto = TLS_PORTS.get(proto, proto)
            try:
                with socket.create_connection((self.host, port), timeout=remaining) as raw:
                    raw.settimeout(remaining)
                    # imaps/pop3s: handshake first (any cert: this only
                    # checks that the node serves).
                    s = _unverified_tls().wrap_socket(raw) if proto in TLS_PORTS else raw
                    f = s.makefile("rb")
                    if f.readline().startswith(self._GREETING[plain_proto]):
                        s.sendall(self._QUIT[plain_proto])
                        f.read()  # until the server closes
                        return
            except OSError:
                pass
            time.sleep(0.01)

    def stop(self, timeout: float = 2.0) -> Optional[int]:
        """Stop: SIGTERM to the master (it stops its children), SIGKILL to
        whatever is left of the node after TIMEOUT. Returns the master's exit
        status (0, or -9 if it had to be killed).

        Why the short bound: a clean Dovecot shutdown takes ~1.1 s here (the
        master sleeps 1 s for its log process). But now and then a child
        forked just before the stop (a pre-forked imap process not yet
        serving anyone, or an lmtp process) misses the master's "I am dying"
        notice, and the master then waits its full MAX_DIE_WAIT_SECS (5 s)
        before it exits. Nothing is lost by killing the node at that point:
        the processes left are idle."""
        if self.proc is None:
            return None
        return self.proc.stop(timeout, group=False)

    def kill(self) -> Optional[int]:
        """Crash the node: SIGKILL every process of it at once."""
        if self.proc is None:
            return None
        return self.proc.kill()

    def pause(self) -> None:
        """Freeze every process of the node (SIGSTOP): connections are still
        accepted by the kernel but never answered."""
        if self.proc is not None:
            self.proc.pause()

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.resume()

    def restart(self, timeout: float = 20.0) -> None:
        """stop() then start(); the store (and so the mail) stays."""
        self.stop()
        self.start(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    # -- inspection

    def port(self, protocol: str) -> int:
        return self.ports[protocol]

    def logins(self) -> list[dict]:
        """Every login attempt the node's login processes logged, oldest
        first, as dicts of strings:

          event    "Login" for a success; otherwise the text Dovecot logs,
                   e.g. "Disconnected (auth failed, 1 attempts in 0 secs)"
          ok       True for a successful login
          service  "imap-login" / "pop3-login"
          user, method, rip, rport, lip, lport, real_rip, real_rport,
          real_lip, real_lport, mpid, session
          tls      True if the connection was TLS (STARTTLS or imaps/pop3s)
          secured  True if Dovecot counted it as secured (TLS, a trusted
                   network, or remote IP == local IP)
          flags    the bare words of the line ("secured", "TLS", ...)

        rip/rport are the client address Dovecot believes in (what a trusted
        proxy passed with ID x-originating-ip / XCLIENT ADDR=); real_rip is
        the peer of the TCP connection. Fields Dovecot left out are absent
        ("rip" is missing for a connection that never sent anything)."""
        out = []
        for line in self.log_text().splitlines():
            m = _LOGIN_LINE.search(line)
            if not m:
                continue
            entry: dict = {"service": m.group("service"), "event": m.group("event")}
            entry["ok"] = entry["event"] == "Login"
            rest = m.group("rest")
            # The session id may hold any character (a proxy's x-session-id)
            # and is always last: take it whole.
            sm = re.search(r",? session=<(.*)>$", rest)
            if sm:
                entry["session"] = sm.group(1)
                rest = rest[:sm.start()]
            for key, value in _LOGIN_FIELD.findall(rest):
                if value.startswith("<") and value.endswith(">"):
                    value = value[1:-1]
                entry[key] = value
            flags = [w for w in (part.strip() for part in _LOGIN_FIELD.sub("", rest).split(","))
                     if w]
            entry["flags"] = flags
            entry["tls"] = any(f == "TLS" or f.startswith("TLS") for f in flags)
            entry["secured"] = entry["tls"] or "secured" in flags
            out.append(entry)
        return out

    def log_text(self) -> str:
        """The node's Dovecot log (plus anything the master printed)."""
        text = ""
        for path in (self.log_path, os.path.join(self.run_dir, "stdout.log")):
            try:
                with open(path, "r", errors="replace") as f:
                    text += f.read()
            except FileNotFoundError:
                pass
        return text


# "2026-11-23 12:00:00 imap-login: Info: Login: user=<a@b>, method=PLAIN, rip=..."
# and "... pop3-login: Info: Disconnected (auth failed, 1 attempts in 0 secs): user=<>, ..."
_LOGIN_LINE = re.compile(
    r"\b(?P<service>[a-z0-9]+-login): Info: (?P<event>.+?): (?P<rest>user=<.*)$")
_LOGIN_FIELD = re.compile(r"\b(\w+)=(<[^>]*>|[^,\s]*)")


def _unverified_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


__all__ = ["DovecotNode", "put_message", "make_message", "user_maildir",
           "mail_owner", "make_mail_dir", "check_traversable",
           "MASTER_USER", "MASTER_PASSWORD", "MASTER_SEPARATOR", "PROTOCOLS", "TLS_PORTS"]
