"""A throw-away OpenLDAP slapd on loopback, seeded with the lab's users.

    ldap = Slapd(run_dir, port, tls=leaf, ldaps_port=p2).start()
    ldap.url, ldap.ldaps_url          ldap://127.0.0.1:PORT/, ldaps://...
    ldap.search("(mail=alice@example.org)", "mailIsland")   as the service DN
    ldap.modify(user.dn, "mailIsland", "b")                  as the rootdn
    ldap.pause() / resume() / kill() / restart() / stop()

Layout (real-servers.md, "slapd"): an old-style ``slapd.conf`` (no
cn=config), back_mdb under RUN/data, the suffix ``dc=example,dc=org``, loaded
offline with ``slapadd`` from directory_data.ldif() before the first start;
``slapd -d 0`` keeps it in the foreground (any -d value prevents forking)
under procs.Proc. The data survives stop()/restart(); a new Slapd on the
same run_dir re-uses it (no second slapadd).

Schema: core, cosine, inetorgperson (Debian's /etc/ldap/schema) and the
project's deploy/ldap/isthmus.schema (mailIsland, mailAccountState,
mailNodeLogin; auxiliary class mailIslandUser).

Access control (what Isthmus will meet in production):
  * userPassword: only ``auth`` (bind) for anyone; nobody reads it.
  * the service DN (directory_data.SERVICE_DN, password in
    RUN/service.pw without a trailing newline) reads everything else;
  * a user reads their own entry after binding as themselves;
  * anonymous and other users get nothing: an anonymous search below the
    suffix answers "No such object (32)".
  * the root DSE ("") stays readable (supportedExtension etc.).
The rootdn (directory_data.ADMIN_DN) bypasses ACLs; tests use it through
modify()/ldapmodify() to change a user's island or state live.

TLS (``tls=`` a tls.Leaf): StartTLS on the ldap:// port, and implicit TLS on
``ldaps_port`` if given. Debian's slapd uses GnuTLS. Clients started through
this class (ldapsearch, ldapmodify) read RUN/ldap.conf only (LDAPCONF and
LDAPRC point there), which trusts the leaf's CA with TLS_REQCERT demand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any, Iterable, Optional, Sequence

from . import directory_data as dd
from . import procs

SLAPD = shutil.which("slapd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/slapadd"
SLAPTEST = shutil.which("slaptest", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/slaptest"
MODULE_PATH = "/usr/lib/ldap"
SYSTEM_SCHEMA_DIR = "/etc/ldap/schema"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ISTHMUS_SCHEMA = os.path.join(REPO, "deploy", "ldap", "isthmus.schema")

# The attributes Isthmus reads (the service DN may read them; so may others
# under the same ACL, but these are the contract).
ATTRS = ("uid", "mail", "mailIsland", "mailAccountState", "mailNodeLogin")


class LdapError(RuntimeError):
    """An LDAP client command failed; ``code`` is its exit status, which
    ldapsearch/ldapmodify set to the LDAP result code (32 noSuchObject, 49
    invalidCredentials, 50 insufficientAccessRights, -1/255 can't contact)."""

    def __init__(self, argv: Sequence[str], code: int, output: str):
        super().__init__(f"{' '.join(argv[:1])} failed ({code}): {output.strip()}")
        self.code = code
        self.output = output


class Slapd:
    """One slapd serving dc=example,dc=org on 127.0.0.1:PORT.

    run_dir     private directory: slapd.conf, data/, password files, log
    port        ldap:// port (StartTLS too when tls is given)
    tls         None, or a tls.Leaf (cert_path, key_path, ca_cert_path)
    ldaps_port  an ldaps:// (implicit TLS) listener too; needs tls
    users       directory_data.User entries to load (default: all of USERS)
    log_level   slapd's -d debug level (default "stats": lines per
                connection and operation -- bind DN, filter, result -- in
                RUN/slapd.log; "0" for none). There is no syslog here
                (real-servers.md), so the loglevel directive would log
                nowhere: -d sends to stderr, and any -d keeps slapd in the
                foreground.
    host        listen address (default 127.0.0.1)
    """

    def __init__(self, run_dir: str, port: int, *, tls: Any = None,
                 ldaps_port: Optional[int] = None,
                 users: Iterable[dd.User] = dd.USERS,
                 log_level: str = "stats", host: str = "127.0.0.1"):
        if ldaps_port and tls is None:
            raise ValueError("ldaps_port needs tls=<leaf>")
        self.run_dir = os.path.abspath(run_dir)
        self.port = port
        self.ldaps_port = ldaps_port
        self.tls = tls
        self.users = tuple(users)
        self.log_level = log_level
        self.host = host
        self.conf_path = os.path.join(self.run_dir, "slapd.conf")
        self.data_dir = os.path.join(self.run_dir, "data")
        self.log_path = os.path.join(self.run_dir, "slapd.log")
        self.ldif_path = os.path.join(self.run_dir, "data.ldif")
        self.service_pw_path = os.path.join(self.run_dir, "service.pw")
        self.admin_pw_path = os.path.join(self.run_dir, "admin.pw")
        self.client_conf_path = os.path.join(self.run_dir, "ldap.conf")
        self.proc: Optional[procs.Proc] = None
        self.load_seconds: Optional[float] = None   # slapadd, first start only
        self.start_seconds: Optional[float] = None  # exec to port open, last start

    def __repr__(self):
        return f"<Slapd {self.url}>"

    # -- addresses and credentials

    @property
    def url(self) -> str:
        return f"ldap://{self.host}:{self.port}/"

    @property
    def ldaps_url(self) -> Optional[str]:
        return f"ldaps://{self.host}:{self.ldaps_port}/" if self.ldaps_port else None

    suffix = dd.SUFFIX
    people_dn = dd.PEOPLE_DN
    service_dn = dd.SERVICE_DN
    service_password = dd.SERVICE_PASSWORD
    admin_dn = dd.ADMIN_DN

    @property
    def ca_path(self) -> Optional[str]:
        return getattr(self.tls, "ca_cert_path", None) if self.tls else None

    # -- files

    def config_text(self) -> str:
        schemas = [os.path.join(SYSTEM_SCHEMA_DIR, f"{name}.schema")
                   for name in ("core", "cosine", "inetorgperson")] + [ISTHMUS_SCHEMA]
        tls = ""
        if self.tls is not None:
            tls = f"""
TLSCertificateFile {os.path.abspath(self.tls.cert_path)}
TLSCertificateKeyFile {os.path.abspath(self.tls.key_path)}
{f'TLSCACertificateFile {os.path.abspath(self.ca_path)}' if self.ca_path else ''}
TLSProtocolMin 3.3
TLSVerifyClient never
"""
        return f"""\
# slapd.conf written by tests/lab/slapd.py
{chr(10).join(f'include {s}' for s in schemas)}

pidfile {self.run_dir}/slapd.pid
argsfile {self.run_dir}/slapd.args
modulepath {MODULE_PATH}
moduleload back_mdb
{tls}
# No anonymous reads of the tree; the root DSE stays public.
access to dn.base=""
    by * read

# Passwords are for binding only: nobody (not even the service) reads them.
access to attrs=userPassword
    by anonymous auth
    by * none

access to dn.subtree="{dd.SUFFIX}"
    by dn.exact="{dd.SERVICE_DN}" read
    by self read
    by * none

database mdb
maxsize 67108864
suffix "{dd.SUFFIX}"
rootdn "{dd.ADMIN_DN}"
rootpw {dd.ssha(dd.ADMIN_PASSWORD, b"rootsalt")}
directory {self.data_dir}
index objectClass eq
index uid,mail eq
index mailIsland,mailAccountState eq
"""

    def prepare(self) -> None:
        """Write slapd.conf, the password files and the client config;
        slapadd the data if the database is still empty. Called by start()."""
        os.makedirs(self.run_dir, exist_ok=True)
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self._write(self.conf_path, self.config_text())
        # ldapsearch -y / Isthmus' bind_password_file: the whole file is the
        # password, so no trailing newline.
        self._write(self.service_pw_path, dd.SERVICE_PASSWORD, 0o600)
        self._write(self.admin_pw_path, dd.ADMIN_PASSWORD, 0o600)
        client = ["# ldap.conf for the lab's ldap* clients (tests/lab/slapd.py)",
                  f"URI {self.url}", f"BASE {dd.SUFFIX}"]
        if self.ca_path:
            client += [f"TLS_CACERT {os.path.abspath(self.ca_path)}", "TLS_REQCERT demand"]
        self._write(self.client_conf_path, "\n".join(client) + "\n")
        if not os.path.exists(os.path.join(self.data_dir, "data.mdb")):
            self._write(self.ldif_path, dd.ldif(self.users))
            self._run_checked([SLAPTEST, "-u", "-f", self.conf_path], "slaptest")
            t = time.perf_counter()
            self._run_checked([SLAPADD, "-f", self.conf_path, "-l", self.ldif_path],
                              "slapadd")
            self.load_seconds = time.perf_counter() - t

    @staticmethod
    def _write(path: str, text: str, mode: int = 0o644) -> None:
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    @staticmethod
    def _run_checked(argv: list[str], what: str) -> None:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{what} failed ({r.returncode}):\n{r.stderr}{r.stdout}")

    # -- lifecycle

    def start(self, timeout: float = 15.0) -> "Slapd":
        """Start slapd and wait until every listener accepts connections
        (slapd opens them only once the database is open). Returns self."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError("slapd is already running")
        self.prepare()
        urls = [self.url] + ([self.ldaps_url] if self.ldaps_port else [])
        t = time.perf_counter()
        self.proc = procs.Proc(
            [SLAPD, "-d", self.log_level, "-f", self.conf_path, "-h", " ".join(urls)],
            name="slapd", log_path=self.log_path, cwd=self.run_dir)
        try:
            for port in [self.port] + ([self.ldaps_port] if self.ldaps_port else []):
                procs.wait_port(self.host, port, timeout, proc=self.proc)
        except (TimeoutError, RuntimeError) as e:
            self.proc.kill()
            raise RuntimeError(f"slapd did not start: {e}\n--- {self.log_path} (tail)\n"
                               f"{procs.tail(self.log_path)}") from None
        self.start_seconds = time.perf_counter() - t
        return self

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """SIGTERM (slapd closes the database cleanly), SIGKILL after
        TIMEOUT. Returns the exit status."""
        if self.proc is None:
            return None
        return self.proc.stop(timeout)

    def kill(self) -> Optional[int]:
        """Crash it (SIGKILL). mdb survives that; restart() works."""
        if self.proc is None:
            return None
        return self.proc.kill()

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel (listen backlog)
        but nothing is ever answered -- not even a bind."""
        if self.proc is not None:
            self.proc.pause()

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.resume()

    def restart(self, timeout: float = 15.0) -> None:
        """stop() then start(); the data (and any modify()) stays."""
        self.stop()
        self.start(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def __enter__(self) -> "Slapd":
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients

    def client_env(self) -> dict:
        """Environment for ldap* tools: our ldap.conf only (not
        /etc/ldap/ldap.conf, not ~/.ldaprc)."""
        env = dict(os.environ)
        env["LDAPCONF"] = self.client_conf_path
        env["LDAPRC"] = self.client_conf_path
        return env

    def _client(self, argv: list[str], *, input: Optional[str] = None,
                timeout: float = 10.0, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, input=input, capture_output=True, text=True,
                           env=self.client_env(), timeout=timeout)
        if check and r.returncode != 0:
            raise LdapError(argv, r.returncode, r.stderr + r.stdout)
        return r

    def bind_args(self, who: str = "service", *, url: Optional[str] = None,
                  starttls: bool = False) -> list[str]:
        """-H/-x/-D/-w options: WHO = "service", "admin", "anonymous", a
        login from directory_data (binds as that user's DN with "demo"), or
        a (dn, password) tuple."""
        args = ["-H", url or self.url, "-x", "-o", "nettimeout=5"]
        if starttls:
            args.append("-ZZ")
        if who == "anonymous":
            return args
        if who == "service":
            return args + ["-D", dd.SERVICE_DN, "-y", self.service_pw_path]
        if who == "admin":
            return args + ["-D", dd.ADMIN_DN, "-y", self.admin_pw_path]
        if isinstance(who, tuple):
            dn, pw = who
            return args + ["-D", dn, "-w", pw]
        return args + ["-D", dd.BY_LOGIN[who].dn, "-w", dd.PASSWORD]

    def search(self, filt: str = "(objectClass=*)", *attrs: str,
               base: Optional[str] = None, scope: str = "sub", who: Any = "service",
               url: Optional[str] = None, starttls: bool = False,
               timeout: float = 10.0) -> list[dict[str, list[str]]]:
        """ldapsearch; the entries found, each {attr: [values]} plus "dn".
        Raises LdapError on a non-zero result (e.g. code 32 for an
        anonymous search, 49 for a bad bind)."""
        argv = (["ldapsearch", "-LLL"] + self.bind_args(who, url=url, starttls=starttls)
                + ["-b", dd.SUFFIX if base is None else base, "-s", scope, filt] + list(attrs))
        return parse_ldif(self._client(argv, timeout=timeout).stdout)

    def whoami(self, who: Any, *, url: Optional[str] = None, starttls: bool = False) -> str:
        """ldapwhoami as WHO: "dn:..." on success; raises LdapError."""
        argv = ["ldapwhoami"] + self.bind_args(who, url=url, starttls=starttls)
        return self._client(argv).stdout.strip()

    def ldapmodify(self, ldif_text: str, *, who: Any = "admin") -> None:
        """Apply an LDIF change record (changetype: add/modify/delete...)."""
        self._client(["ldapmodify"] + self.bind_args(who), input=ldif_text)

    def modify(self, dn: str, attr: str, value: Optional[str]) -> None:
        """Replace ATTR of DN with VALUE (None deletes the attribute), as
        the rootdn, on the live server. E.g.
        ``modify(dd.BY_LOGIN["bob@example.org"].dn, "mailIsland", "a")``."""
        lines = [dd.ldif_line("dn", dn), "changetype: modify"]
        if value is None:
            lines += [f"delete: {attr}"]
        else:
            lines += [f"replace: {attr}", dd.ldif_line(attr, value)]
        self.ldapmodify("\n".join(lines + ["-", ""]))

    def add_user(self, user: dd.User) -> None:
        """Add a directory_data.User entry on the live server."""
        self.ldapmodify(dd.user_entry(user).replace(
            "\n", "\nchangetype: add\n", 1))

    def delete(self, dn: str) -> None:
        self._client(["ldapdelete"] + self.bind_args("admin") + [dn])

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


ISTHMUS_SCHEMA_LDIF = os.path.join(REPO, "deploy", "ldap", "isthmus.ldif")


def check_olc_schema(work_dir: str) -> list[str]:
    """Load deploy/ldap/isthmus.ldif (the cn=config variant of the schema)
    into a fresh offline cn=config in WORK_DIR with ``slapadd -n0``, after
    Debian's core/cosine/inetorgperson LDIFs. Returns the schema entries
    slapd wrote (``cn={3}isthmus.ldif`` among them); raises on an error."""
    conf_dir = os.path.join(work_dir, "slapd.d")
    os.makedirs(conf_dir, exist_ok=True)
    parts = ["dn: cn=config\nobjectClass: olcGlobal\ncn: config\n",
             "dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n"]
    for path in [os.path.join(SYSTEM_SCHEMA_DIR, f"{n}.ldif")
                 for n in ("core", "cosine", "inetorgperson")] + [ISTHMUS_SCHEMA_LDIF]:
        with open(path) as f:
            parts.append("".join(line for line in f if not line.startswith("#")).strip() + "\n")
    ldif_path = os.path.join(work_dir, "config.ldif")
    with open(ldif_path, "w") as f:
        f.write("\n".join(parts))
    r = subprocess.run([SLAPADD, "-n0", "-F", conf_dir, "-l", ldif_path],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"slapadd -n0 of {ISTHMUS_SCHEMA_LDIF} failed:\n{r.stderr}{r.stdout}")
    return sorted(os.listdir(os.path.join(conf_dir, "cn=config", "cn=schema")))


def parse_ldif(text: str) -> list[dict[str, list[str]]]:
    """Entries of ldapsearch -LLL output: {"dn": [dn], attr: [values...]};
    base64 (``attr::``) values decoded, folded lines joined."""
    import base64
    entries: list[dict[str, list[str]]] = []
    for block in text.strip().split("\n\n"):
        if not block.strip():
            continue
        lines: list[str] = []
        for raw in block.split("\n"):
            if raw.startswith(" ") and lines:
                lines[-1] += raw[1:]
            elif raw and not raw.startswith("#"):
                lines.append(raw)
        entry: dict[str, list[str]] = {}
        for line in lines:
            attr, _, rest = line.partition(":")
            if rest.startswith(":"):
                value = base64.b64decode(rest[1:].strip()).decode("utf-8", "replace")
            else:
                value = rest[1:] if rest.startswith(" ") else rest
            entry.setdefault(attr, []).append(value)
        entries.append(entry)
    return entries


__all__ = ["Slapd", "LdapError", "parse_ldif", "check_olc_schema", "ATTRS",
           "ISTHMUS_SCHEMA", "ISTHMUS_SCHEMA_LDIF"]
