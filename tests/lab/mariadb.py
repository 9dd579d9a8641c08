"""A throw-away MariaDB server on loopback with the CalMail-style schema.

    db = MariaDB(run_dir, port).start()
    db.query("SELECT island FROM account WHERE localpart = 'alice'")  -> [("a",)]
    db.execute("UPDATE account SET state = 'moving' WHERE localpart = 'bob'")
    db.set_account("bob@example.org", island="a", state="active")
    db.pause() / resume() / kill() / restart() / stop()

What it does (real-servers.md, "MariaDB"):
  * ``mariadb-install-db --no-defaults`` (no /etc/mysql/my.cnf merged in)
    with ``--auth-root-authentication-method=normal``: root@localhost with
    no password, reachable through the unix socket only. install-db costs
    ~4.5 s here, so its result is made once per Python process in a
    template directory and copied for every instance (~0.1 s); the template
    is removed at exit. ``MariaDB(..., template=False)`` runs it each time.
  * ``mariadbd --no-defaults --user=root`` (refuses to run as root without
    it) on 127.0.0.1:PORT, ``--skip-name-resolve``, socket, pid file and
    error log in RUN. The TCP port opens only once the server is ready.
  * database ``mail`` from deploy/sql/calmail-schema.sql, seeded from
    directory_data (domains and accounts), and the user
    ``isthmus``@'127.0.0.1' and @'localhost' (with --skip-name-resolve,
    'localhost' matches only socket connections) with SELECT on mail.* and
    UPDATE on mail.account, password directory_data.SQL_PASSWORD (also in
    RUN/isthmus.pw, no trailing newline).
  * utf8mb4 as the server character set; the tables declare their own.

The data survives stop()/restart(); a new MariaDB on a run_dir that already
has data re-uses it (no re-seed). execute()/query() use the ``mariadb``
client as root over the socket; ``as_isthmus=True`` goes over TCP as the
isthmus user instead (what Isthmus will do).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any, Iterable, Optional

from . import directory_data as dd
from . import procs

MARIADBD = shutil.which("mariadbd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db", path="/usr/bin:/usr/sbin:/bin") \
    or "/usr/bin/mariadb-install-db"
CLIENT = shutil.which("mariadb", path="/usr/bin:/bin") or "/usr/bin/mariadb"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA_SQL = os.path.join(REPO, "deploy", "sql", "calmail-schema.sql")
ROLE_STORE_SQL = os.path.join(REPO, "deploy", "sql", "role-store.sql")

# The lookup Isthmus runs by default (see the schema file), with the named
# placeholders; query_for() fills them in for the mariadb client.
DEFAULT_QUERY = (
    "SELECT a.island, a.state, a.password, "
    "COALESCE(a.node_login, CONCAT(a.localpart, '@', d.name)) AS node_login "
    "FROM account a JOIN domain d ON d.id = a.domain_id "
    "WHERE a.localpart = %{localpart} AND d.name = %{domain}")

# Small InnoDB files: a 96 MiB redo log per throw-away instance is waste.
# install-db passes these on to its bootstrap server; the same values at run
# time keep InnoDB from resizing the log.
_INNODB = ["--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M"]

_template_lock = threading.Lock()
_template_dir: Optional[str] = None


def _install_db(datadir: str, log_path: str) -> None:
    argv = [INSTALL_DB, "--no-defaults", f"--datadir={datadir}", "--user=root",
            "--auth-root-authentication-method=normal", "--skip-test-db",
            "--skip-name-resolve"] + _INNODB
    with open(log_path, "ab") as log:
        r = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed ({r.returncode}):\n{procs.tail(log_path)}")


def _template() -> str:
    """The data dir made by one install-db run, shared (copied) by every
    instance of this process; removed at exit."""
    global _template_dir
    with _template_lock:
        if _template_dir is None:
            root = tempfile.mkdtemp(prefix="isthmus-mariadb-template-")
            try:
                _install_db(os.path.join(root, "data"), os.path.join(root, "install.log"))
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            _template_dir = root
            procs.register_cleanup(remove_template)
        return os.path.join(_template_dir, "data")


def remove_template() -> None:
    """Remove this process' install-db template now (also done at exit)."""
    global _template_dir
    with _template_lock:
        if _template_dir is not None:
            shutil.rmtree(_template_dir, ignore_errors=True)
            _template_dir = None
    procs.unregister_cleanup(remove_template)


class SqlError(RuntimeError):
    def __init__(self, sql: str, code: int, output: str):
        super().__init__(f"mariadb failed ({code}): {output.strip()}\n  in: {sql[:300]}")
        self.code = code
        self.output = output


class MariaDB:
    """One mariadbd on 127.0.0.1:PORT with database ``mail``.

    run_dir   private directory: data/, mysqld.sock, error.log, isthmus.pw
    port      TCP port on 127.0.0.1
    users     directory_data.User rows to seed (default: all of USERS)
    template  copy a per-process install-db template (default) instead of
              running install-db for this instance
    """

    host = "127.0.0.1"
    database = dd.SQL_DATABASE
    user = dd.SQL_USER
    password = dd.SQL_PASSWORD

    def __init__(self, run_dir: str, port: int, *, users: Iterable[dd.User] = dd.USERS,
                 template: bool = True):
        self.run_dir = os.path.abspath(run_dir)
        self.port = port
        self.users = tuple(users)
        self.template = template
        self.data_dir = os.path.join(self.run_dir, "data")
        self.socket_path = os.path.join(self.run_dir, "mysqld.sock")
        self.pid_path = os.path.join(self.run_dir, "mysqld.pid")
        self.log_path = os.path.join(self.run_dir, "error.log")
        self.password_path = os.path.join(self.run_dir, "isthmus.pw")
        if len(self.socket_path.encode()) >= 108:
            raise ValueError(f"socket path too long for sun_path: {self.socket_path}")
        self.proc: Optional[procs.Proc] = None
        # Timings of the last start (seconds): install (install-db or the
        # template copy; None if the data existed), server (exec to port
        # open), seed (schema + data + grants; None if not seeded).
        self.timings: dict[str, Optional[float]] = {}

    def __repr__(self):
        return f"<MariaDB 127.0.0.1:{self.port}>"

    # -- lifecycle

    def start(self, timeout: float = 30.0) -> "MariaDB":
        """Create the data dir if needed, start mariadbd, wait for the TCP
        port, seed on the first start. Returns self."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError("mariadbd is already running")
        os.makedirs(self.run_dir, exist_ok=True)
        self.timings = {"install": None, "server": None, "seed": None}
        fresh = not os.path.isdir(os.path.join(self.data_dir, "mysql"))
        if fresh:
            t = time.perf_counter()
            shutil.rmtree(self.data_dir, ignore_errors=True)
            if self.template:
                shutil.copytree(_template(), self.data_dir, symlinks=True)
            else:
                _install_db(self.data_dir, os.path.join(self.run_dir, "install.log"))
            self.timings["install"] = time.perf_counter() - t
        for stale in (self.socket_path, self.pid_path, self.socket_path + ".lock"):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass

        t = time.perf_counter()
        self.proc = procs.Proc(self.server_argv(), name="mariadbd",
                               log_path=os.path.join(self.run_dir, "stdout.log"),
                               cwd=self.run_dir)
        try:
            procs.wait_port(self.host, self.port, timeout, proc=self.proc)
        except (TimeoutError, RuntimeError) as e:
            self.proc.kill()
            raise RuntimeError(f"mariadbd did not start: {e}\n--- {self.log_path} (tail)\n"
                               f"{procs.tail(self.log_path)}") from None
        self.timings["server"] = time.perf_counter() - t
        if fresh:
            t = time.perf_counter()
            self.seed()
            self.timings["seed"] = time.perf_counter() - t
        return self

    def server_argv(self) -> list[str]:
        return [MARIADBD, "--no-defaults", "--user=root",
                f"--datadir={self.data_dir}", f"--socket={self.socket_path}",
                f"--pid-file={self.pid_path}", f"--log-error={self.log_path}",
                f"--port={self.port}", f"--bind-address={self.host}",
                "--skip-name-resolve", "--skip-log-bin",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                "--max-connections=500"] + _INNODB

    def seed(self) -> None:
        """Schema, data and the isthmus user (first start only)."""
        with open(SCHEMA_SQL, encoding="utf-8") as f:
            schema = f.read()
        pw = dd.sql_quote(self.password)
        grants = "".join(
            f"CREATE USER IF NOT EXISTS '{self.user}'@'{host}' IDENTIFIED BY {pw};\n"
            f"GRANT SELECT ON `{self.database}`.* TO '{self.user}'@'{host}';\n"
            f"GRANT UPDATE ON `{self.database}`.account TO '{self.user}'@'{host}';\n"
            for host in ("127.0.0.1", "localhost"))
        self.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}` "
                     "CHARACTER SET utf8mb4;", database=None)
        # Table privileges need the table: grants last.
        self.execute(schema + "\n" + dd.sql_seed(self.users) + grants)
        with open(self.password_path, "w") as f:
            f.write(self.password)  # no trailing newline: the file is the password
        os.chmod(self.password_path, 0o600)

    def install_role_store(self) -> None:
        """The role store's tables (deploy/sql/role-store.sql) and the grants
        it documents, for the isthmus user."""
        with open(ROLE_STORE_SQL, encoding="utf-8") as f:
            schema = f.read()
        grants = "".join(
            f"GRANT SELECT, INSERT, UPDATE ON `{self.database}`.{table} "
            f"TO '{self.user}'@'{host}';\n"
            for host in ("127.0.0.1", "localhost")
            for table in ("isthmus_roles", "isthmus_instances", "isthmus_node_views"))
        grants += "".join(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{self.database}`.isthmus_moves "
            f"TO '{self.user}'@'{host}';\n" for host in ("127.0.0.1", "localhost"))
        self.execute(schema + "\n" + grants)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM (a clean InnoDB shutdown, ~0.2 s), SIGKILL after TIMEOUT."""
        if self.proc is None:
            return None
        return self.proc.stop(timeout)

    def kill(self) -> Optional[int]:
        """Crash it (SIGKILL); InnoDB recovers at the next start()."""
        if self.proc is None:
            return None
        return self.proc.kill()

    def pause(self) -> None:
        """SIGSTOP: TCP connections are accepted by the kernel, but the
        server greeting never comes."""
        if self.proc is not None:
            self.proc.pause()

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.resume()

    def restart(self, timeout: float = 30.0) -> None:
        """stop() then start(); the data stays."""
        self.stop()
        self.start(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def __enter__(self) -> "MariaDB":
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients

    def client_argv(self, *, as_isthmus: bool = False,
                    database: Optional[str] = dd.SQL_DATABASE) -> list[str]:
        """The mariadb client: root over the unix socket, or (AS_ISTHMUS)
        the isthmus user over TCP to 127.0.0.1:PORT."""
        argv = [CLIENT, "--no-defaults", "--default-character-set=utf8mb4",
                "--batch", "--skip-column-names", "--connect-timeout=5"]
        if as_isthmus:
            argv += ["--protocol=TCP", "-h", self.host, "-P", str(self.port),
                     "-u", self.user, f"--password={self.password}"]
        else:
            argv += ["--protocol=SOCKET", "-S", self.socket_path, "-u", "root"]
        if database:
            argv.append(database)
        return argv

    def execute(self, sql: str, *, as_isthmus: bool = False,
                database: Optional[str] = dd.SQL_DATABASE, timeout: float = 30.0) -> str:
        """Run SQL (one or more statements) with the mariadb client; its
        --batch output. Raises SqlError (code 1 for an SQL error)."""
        r = subprocess.run(self.client_argv(as_isthmus=as_isthmus, database=database),
                           input=sql, capture_output=True, text=True, encoding="utf-8",
                           timeout=timeout)
        if r.returncode != 0:
            raise SqlError(sql, r.returncode, r.stderr + r.stdout)
        return r.stdout

    def query(self, sql: str, **kw: Any) -> list[tuple[Optional[str], ...]]:
        """Rows of a SELECT as tuples of strings (None for NULL)."""
        return [tuple(_unescape(v) for v in line.split("\t"))
                for line in self.execute(sql, **kw).split("\n") if line != ""]

    def lookup(self, login: str, **kw: Any) -> Optional[tuple[Optional[str], ...]]:
        """DEFAULT_QUERY for LOGIN (local@domain): (island, state, password,
        node_login), or None. The values are quoted here only because the
        client has no parameters; Isthmus binds them."""
        local, _, domain = login.rpartition("@")
        sql = (DEFAULT_QUERY.replace("%{localpart}", dd.sql_quote(local))
               .replace("%{domain}", dd.sql_quote(domain)))
        rows = self.query(sql, **kw)
        if len(rows) > 1:
            raise AssertionError(f"{login}: {len(rows)} rows")
        return rows[0] if rows else None

    def set_account(self, login: str, **columns: Optional[str]) -> None:
        """UPDATE the account of LOGIN: ``set_account("bob@example.org",
        island="a", state="moving")``; None sets NULL."""
        if not columns:
            return
        local, _, domain = login.rpartition("@")
        sets = ", ".join(f"a.`{k}` = {dd.sql_quote(v)}" for k, v in columns.items())
        self.execute(f"UPDATE account a JOIN domain d ON d.id = a.domain_id SET {sets} "
                     f"WHERE a.localpart = {dd.sql_quote(local)} "
                     f"AND d.name = {dd.sql_quote(domain)}")

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "0": "\x00"}


def _unescape(value: str) -> Optional[str]:
    """A --batch field: NULL -> None; \\n, \\t, \\\\, \\0 decoded."""
    if value == "NULL":
        return None
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            out.append(_ESCAPES.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def template_dir() -> Optional[str]:
    """The current template root (None if none was made)."""
    return _template_dir


__all__ = ["MariaDB", "SqlError", "DEFAULT_QUERY", "SCHEMA_SQL", "ROLE_STORE_SQL", "remove_template",
           "template_dir"]
