"""A private Postfix on loopback that delivers the test domains over LMTP.

    pf = Postfix(run_dir, smtp_port, lmtp_target=("127.0.0.1", lmtp_port))
    pf.start()
    r = pf.send("sender@example.net", ["alice@example.org", "carol@example.org"], raw)
    pf.wait_deliveries(r.queue_id, 2)        # both recipients sent (or bounced)
    pf.deliveries(r.queue_id)                # per-recipient records from the maillog
    pf.stop()

The instance is entirely under RUN_DIR: its own config directory (main.cf
and master.cf written here; nothing in /etc/postfix is read), queue
directory and data directory, and its log in RUN_DIR/maillog. smtpd listens
on 127.0.0.1:SMTP_PORT only. Every recipient in ``domains`` is a
``virtual_mailbox_domains`` address and goes to ``virtual_transport =
lmtp:inet:HOST:PORT`` -- Isthmus' LMTP listener, or a Dovecot node's LMTP
port directly. There is no local delivery and no DNS; mail to any other
domain bounces at once (``default_transport = error``), so a bounce to an
outside sender cannot sit in the queue for days.

How it runs (shared/real-servers.md for the machine's quirks):

* No syslog here (/dev/log does not exist): ``maillog_file`` with the
  ``postlog`` (postlogd) service, Postfix >= 3.4. ``maillog_file_prefixes``
  must allow the path, or postlogd refuses it.
* ``postfix start-fg`` runs the master in the foreground but the master
  calls setsid() (only ``-i``, allowed for PID 1 alone, or ``-d`` keep it
  in its parent's group), so it and its children leave the process group a
  procs.Proc owns: a Proc cleanup would kill only the wrapper shell and
  leave Postfix running. We therefore do what start-fg does ourselves:
  prepare() makes the queue directories (what ``postfix check`` /
  post-install create-missing would) and validates the config with
  postconf, then the master runs with ``-d`` (no detach: no setsid,
  stdout/stderr kept) directly under procs.Proc. The master is the leader
  of the Proc's group, every Postfix process of the instance is in that
  group, and the usual cleanup (SIGTERM/SIGKILL to the group) stops them
  all (~0.4 s to start, ~30-100 ms to stop). check() runs the full
  ``postfix -c DIR check`` (~2-4 s: it walks every Postfix file).
* SIGTERM to the master is what ``postfix stop`` sends, without the
  script's 1 s polling sleep; the master passes it to its process group and
  exits.
* Postfix programs sleep (0.3 s steps, up to ~2 s) while main.cf is very
  young -- a guard against half-written files -- so the config files are
  written with an mtime 10 s in the past.
* Short retry times (``retry`` seconds, default 1): ``queue_run_delay``,
  ``minimal_backoff_time``, ``maximal_backoff_time`` and
  ``transport_retry_time``. Measured: a deferred message is retried about
  every second; once the LMTP server is back it is delivered 0.4-0.7 s
  later without help; ``flush()`` (``postqueue -f``) retries at once
  (~50-200 ms to status=sent).
* A Dovecot LMTP server prepends Return-Path and Received (and
  Delivered-To only when the transaction has a single recipient) and
  Postfix one Received; the rest of the stored message is what send() got
  (with LF line ends in the maildir).
* ``enable_long_queue_ids = yes``: short queue ids are derived from inode
  numbers and repeat over a run, long ones do not, so a test can pick its
  message's lines out of the maillog by queue id.
* One message to several recipients of one LMTP target is ONE LMTP
  transaction (``lmtp_destination_recipient_limit``, default 50 recipients
  per delivery request): MAIL FROM, RCPT TO per recipient, one DATA, one
  reply per recipient.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

from . import procs
from .dovecot import check_traversable

POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postqueue"
POSTCONF = shutil.which("postconf", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postconf"
POSTSUPER = shutil.which("postsuper", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postsuper"
SWAKS = shutil.which("swaks", path="/usr/bin:/usr/local/bin:/bin") or "/usr/bin/swaks"


# Queue subdirectories owned by mail_owner, mode 0700 (postfix-files).
_QUEUE_DIRS = ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold",
               "incoming", "private", "saved", "trace")


def daemon_directory() -> str:
    """Where Postfix's daemons (master, smtpd, lmtp ...) are installed."""
    try:
        out = subprocess.run([POSTCONF, "-dh", "daemon_directory"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "/usr/lib/postfix/sbin"


@dataclass
class SendResult:
    """What smtpd answered to send()."""
    queue_id: str                 # from "250 2.0.0 Ok: queued as QUEUEID"
    reply: str                    # the DATA reply text
    refused: dict = field(default_factory=dict)  # rcpt -> (code, text) refused at RCPT


class Postfix:
    """One private Postfix instance.

    run_dir       everything lives below it (config/, queue/, data/, maillog)
    smtp_port     smtpd on 127.0.0.1:SMTP_PORT
    lmtp_target   (host, port) every recipient of DOMAINS is delivered to
    domains       the virtual_mailbox_domains; any recipient there is
                  accepted by smtpd (the LMTP server decides)
    retry         seconds: queue_run_delay, minimal/maximal_backoff_time
                  (maximal = 2 * retry), transport_retry_time
    lmtp_timeout  seconds for every LMTP client timeout (connect, LHLO, MAIL,
                  RCPT, DATA, end of data, RSET, QUIT): a hung LMTP server
                  defers a delivery after this long instead of Postfix's
                  default 300-600 s
    main_cf       more main.cf settings (override ours); a value of None
                  removes one of ours
    hostname      myhostname (a FQDN: Postfix refuses a bare host name)
    """

    def __init__(self, run_dir: str, smtp_port: int, lmtp_target: tuple[str, int], *,
                 domains: Sequence[str] = ("example.org",), retry: int = 1,
                 lmtp_timeout: int = 30, main_cf: Optional[Mapping[str, Optional[str]]] = None,
                 hostname: str = "mx.lab.test"):
        self.run_dir = os.path.abspath(run_dir)
        self.smtp_host = "127.0.0.1"
        self.smtp_port = smtp_port
        self.lmtp_target = (lmtp_target[0], int(lmtp_target[1]))
        self.domains = tuple(domains)
        self.retry = int(retry)
        self.lmtp_timeout = int(lmtp_timeout)
        self.extra_main_cf = dict(main_cf or {})
        self.hostname = hostname
        self.config_dir = os.path.join(self.run_dir, "config")
        self.queue_dir = os.path.join(self.run_dir, "queue")
        self.data_dir = os.path.join(self.run_dir, "data")
        self.maillog_path = os.path.join(self.run_dir, "maillog")
        self.stdout_path = os.path.join(self.run_dir, "stdout.log")
        self.proc: Optional[procs.Proc] = None

    def __repr__(self):
        return (f"<Postfix smtp 127.0.0.1:{self.smtp_port} -> "
                f"lmtp {self.lmtp_target[0]}:{self.lmtp_target[1]}>")

    @property
    def port(self) -> int:
        return self.smtp_port

    # -- configuration

    def main_cf_settings(self) -> dict[str, str]:
        """main.cf as an ordered dict (our settings, then main_cf overrides)."""
        host, port = self.lmtp_target
        t = f"{self.lmtp_timeout}s"
        r = self.retry
        s: dict[str, str] = {
            "compatibility_level": "3.6",
            # A private instance: every directory ours. The daemon, command
            # and meta directories stay the package's.
            "config_directory": self.config_dir,
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            # No syslog on this machine: log to a file through postlogd
            # (the "postlog" service in master.cf). postlogd refuses paths
            # outside maillog_file_prefixes (default /var, /dev/stdout).
            "maillog_file": self.maillog_path,
            "maillog_file_prefixes": self.run_dir,
            "myhostname": self.hostname,
            "mydomain": self.hostname.partition(".")[2] or "lab.test",
            "myorigin": "$myhostname",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP lab Postfix",
            # Nothing is delivered here: no local domains, no aliases, no
            # DNS. The test domains go to the LMTP target; anything else
            # (e.g. a bounce to an outside sender) fails at once.
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 lab: no local delivery",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "virtual_mailbox_domains": ", ".join(self.domains),
            "virtual_mailbox_maps": "",
            "virtual_transport": f"lmtp:inet:{host}:{port}",
            "default_transport": "error:5.1.2 lab: no delivery outside the test domains",
            "relay_transport": "$default_transport",
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtputf8_enable": "no",
            "biff": "no",
            "append_dot_mydomain": "no",
            # Long queue ids never repeat (short ones derive from inode
            # numbers): tests select maillog lines by queue id.
            "enable_long_queue_ids": "yes",
            # Retry deferred mail quickly. qmgr scans the deferred queue
            # every queue_run_delay; a deferred message waits at least
            # minimal_backoff_time; a destination (or transport) that failed
            # is throttled for minimal_backoff_time (transport_retry_time).
            "queue_run_delay": f"{r}s",
            "minimal_backoff_time": f"{r}s",
            "maximal_backoff_time": f"{2 * r}s",
            "transport_retry_time": f"{r}s",
            # smtpd would slow down senders when the queue manager lags.
            "in_flow_delay": "0",
            # Big test messages are fine.
            "message_size_limit": str(64 * 1024 * 1024),
            "mailbox_size_limit": "0",
            "virtual_mailbox_limit": "0",
            # A hung LMTP server must not hold a delivery for 5-10 minutes.
            "lmtp_connect_timeout": t,
            "lmtp_lhlo_timeout": t,
            "lmtp_mail_timeout": t,
            "lmtp_rcpt_timeout": t,
            "lmtp_data_init_timeout": t,
            "lmtp_data_xfer_timeout": t,
            "lmtp_data_done_timeout": t,
            "lmtp_rset_timeout": t,
            "lmtp_quit_timeout": t,
        }
        for key, value in self.extra_main_cf.items():
            if value is None:
                s.pop(key, None)
            else:
                s[key] = str(value)
        return s

    def main_cf_text(self) -> str:
        lines = ["# Generated by tests/lab/postfix.py: a private, throw-away instance."]
        lines += [f"{k} = {v}" for k, v in self.main_cf_settings().items()]
        return "\n".join(lines) + "\n"

    def master_cf_text(self) -> str:
        """master.cf: the services a relay needs, none chrooted (column 5
        "n": the queue dir has no /etc, /lib ... copies for a chroot)."""
        return f"""\
# Generated by tests/lab/postfix.py.
# service type  private unpriv  chroot  wakeup  maxproc command + args
{self.smtp_host}:{self.smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def prepare(self) -> None:
        """Write the configuration, create the queue and data directories
        and validate main.cf/master.cf with postconf (warnings are errors).

        The directories are made here, with the owners and modes of the
        package's postfix-files, rather than by ``postfix check``: that
        also walks every Postfix file on the system and takes ~4 s on this
        VM (check() runs it)."""
        if os.geteuid() != 0:
            raise PermissionError("a Postfix master must run as root")
        os.makedirs(self.config_dir, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        # Postfix's daemons run as the postfix user and chdir to the queue.
        check_traversable(self.run_dir)
        self._write_config("main.cf", self.main_cf_text())
        self._write_config("master.cf", self.master_cf_text())
        owner = pwd.getpwnam("postfix").pw_uid
        postdrop = grp.getgrnam("postdrop").gr_gid
        for path, uid, gid, mode in (
                [(self.data_dir, owner, 0, 0o700), (self.queue_dir, 0, 0, 0o755),
                 (os.path.join(self.queue_dir, "pid"), 0, 0, 0o755),
                 (os.path.join(self.queue_dir, "maildrop"), owner, postdrop, 0o730),
                 (os.path.join(self.queue_dir, "public"), owner, postdrop, 0o710)]
                + [(os.path.join(self.queue_dir, d), owner, 0, 0o700) for d in _QUEUE_DIRS]):
            os.makedirs(path, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        for argv in ([POSTCONF, "-c", self.config_dir, "-n"],
                     [POSTCONF, "-c", self.config_dir, "-M"]):
            r = self._run(argv, check=False)
            if r.returncode != 0 or r.stderr.strip():
                raise RuntimeError(f"{' '.join(argv)}: status {r.returncode}\n{r.stderr}")

    def _write_config(self, name: str, text: str) -> None:
        """Write a config file dated 10 s in the past: Postfix programs
        sleep (in 0.3 s steps, up to ~2 s) while a table or config file is
        less than a second or so old -- their guard against reading a file
        an editor is still writing -- and every postconf, postfix or daemon
        start would pay that right after we wrote it."""
        path = os.path.join(self.config_dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        past = time.time() - 10
        os.utime(path, (past, past))

    def check(self) -> str:
        """``postfix -c DIR check``: Postfix's own integrity check of this
        instance (and of the installation); its output, empty when all is
        well. Raises if it fails. Slow: ~4 s."""
        r = self._run([POSTFIX, "-c", self.config_dir, "check"], check=False)
        if r.returncode != 0:
            raise RuntimeError(f"postfix -c {self.config_dir} check failed (status "
                               f"{r.returncode}):\n{r.stdout}{r.stderr}\n--- maillog (tail)\n"
                               f"{procs.tail(self.maillog_path, 10)}")
        return (r.stdout + r.stderr).strip()

    def postconf(self, name: str) -> str:
        """The value of main.cf parameter NAME as this instance sees it."""
        return self._run([POSTCONF, "-c", self.config_dir, "-h", name]).stdout.strip()

    def retarget(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Point virtual_transport at another LMTP server. A running
        instance reloads (SIGHUP to the master, as ``postfix reload``) and
        this waits until every process of the old generation has exited,
        so the next message is resolved with the new target. Mail already
        queued goes to the new target at its next attempt."""
        self.lmtp_target = (host, int(port))
        self._write_config("main.cf", self.main_cf_text())
        if not self.running():
            return
        old = set(self.proc.members()) - {self.proc.pid}
        reloads = self.log_text().count(_RELOAD)
        self.proc.signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            left = old & set(self.proc.members())
            if self.log_text().count(_RELOAD) > reloads and not left:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"postfix reload: processes of the old generation still "
                                   f"running after {timeout}s: {sorted(left)}")
            time.sleep(0.02)

    # -- lifecycle

    def start(self, timeout: float = 20.0) -> "Postfix":
        """Start the master in the foreground and wait until smtpd answers
        with its 220 greeting; returns self."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError("postfix is already running")
        if not procs.port_is_free(self.smtp_port, self.smtp_host, reuse_addr=True):
            raise RuntimeError(f"port {self.smtp_port} is taken: "
                               f"{procs.port_holder(self.smtp_port)}")
        self.prepare()
        self.proc = procs.Proc(
            [os.path.join(daemon_directory(), "master"), "-d", "-c", self.config_dir],
            name="postfix-master", log_path=self.stdout_path, cwd=self.run_dir)
        deadline = time.monotonic() + timeout
        try:
            self._wait_greeting(deadline)
        except (TimeoutError, RuntimeError) as e:
            self.proc.kill()
            raise RuntimeError(
                f"postfix did not start: {e}\n--- {self.maillog_path} (tail)\n"
                f"{procs.tail(self.maillog_path)}\n--- stdout/stderr\n"
                f"{procs.tail(self.stdout_path)}") from None
        return self

    def _wait_greeting(self, deadline: float) -> None:
        while True:
            if self.proc.returncode() is not None:
                raise RuntimeError(f"master exited with status {self.proc.returncode()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no SMTP greeting on {self.smtp_host}:{self.smtp_port}")
            try:
                s = smtplib.SMTP(timeout=max(remaining, 0.1))
                code, _ = s.connect(self.smtp_host, self.smtp_port)
                try:
                    s.quit()
                except smtplib.SMTPException:
                    pass
                if code == 220:
                    return
            except (OSError, smtplib.SMTPException):
                pass
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM to the master (as ``postfix stop`` does; the master
        passes it on to its process group), SIGKILL to whatever is left
        after TIMEOUT. Queued mail stays in the queue for the next start."""
        if self.proc is None:
            return None
        return self.proc.stop(timeout, group=False)

    def kill(self) -> Optional[int]:
        """SIGKILL every process of the instance at once."""
        if self.proc is None:
            return None
        return self.proc.kill()

    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def __enter__(self) -> "Postfix":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- sending and the queue

    def send(self, mail_from: str, rcpts: Iterable[str], raw: bytes, *,
             timeout: float = 30.0) -> SendResult:
        """Submit RAW over SMTP to our smtpd: MAIL FROM, RCPT TO each of
        RCPTS, DATA. Returns the queue id and any recipients refused at
        RCPT; raises smtplib.SMTPRecipientsRefused if all were refused and
        SMTPDataError if DATA was."""
        rcpts = list(rcpts)
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=timeout) as s:
            s.ehlo("client.lab.test")
            code, text = s.mail(mail_from)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, text, mail_from)
            refused = {}
            for rcpt in rcpts:
                code, text = s.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, text.decode(errors="replace"))
            if len(refused) == len(rcpts):
                s.rset()
                raise smtplib.SMTPRecipientsRefused(refused)
            code, text = s.data(raw)
            if code != 250:
                raise smtplib.SMTPDataError(code, text)
        reply = text.decode(errors="replace")
        m = re.search(r"queued as (\S+)", reply)
        if not m:
            raise RuntimeError(f"no queue id in the DATA reply: {reply!r}")
        return SendResult(m.group(1), reply, refused)

    def flush(self) -> None:
        """``postqueue -f``: retry every deferred message now (also forgets
        which destinations were found dead)."""
        self._run([POSTQUEUE, "-c", self.config_dir, "-f"])

    def queue(self) -> list[dict]:
        """``postqueue -j``: one dict per queued message, e.g.
        {"queue_name": "deferred", "queue_id": "...", "arrival_time": ...,
        "message_size": ..., "sender": "...", "recipients": [{"address":
        "...", "delay_reason": "..."}]} (delay_reason only once a delivery
        attempt failed)."""
        out = self._run([POSTQUEUE, "-c", self.config_dir, "-j"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        """Wait until no message is queued (delivered, bounced or
        expired). Raises TimeoutError with the queue's content."""
        deadline = time.monotonic() + timeout
        while True:
            q = self.queue()
            if not q:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"postfix queue not empty after {timeout}s: {q}")
            time.sleep(0.05)

    def purge(self) -> None:
        """Delete every queued message (``postsuper -d ALL``)."""
        self._run([POSTSUPER, "-c", self.config_dir, "-d", "ALL"])

    # -- the log

    def log_text(self) -> str:
        text = ""
        for path in (self.maillog_path, self.stdout_path):
            try:
                with open(path, "r", errors="replace") as f:
                    text += f.read()
            except FileNotFoundError:
                pass
        return text

    def deliveries(self, queue_id: Optional[str] = None) -> list[dict]:
        """Every delivery attempt in the maillog, oldest first, one dict per
        recipient and attempt:

          queue_id  the message's queue id
          service   e.g. "postfix/lmtp", "postfix/error", "postfix/bounce"
          pid       of the delivery agent
          to        recipient address
          orig_to   the original recipient, when rewritten (else absent)
          relay     "127.0.0.1[127.0.0.1]:PORT", or "none" when no
                    connection was made
          delay, delays, dsn   as logged ("2.0.0", "4.4.1" ...)
          conn_use  how many times the connection had been used, when > 1
          status    "sent", "deferred", "bounced" (or "expired")
          reply     the text in parentheses after the status: the remote
                    reply ("250 2.0.0 <alice@example.org> ... Saved") or
                    Postfix's own reason ("connect to ...: Connection refused")
          time      the log line's timestamp

        QUEUE_ID selects one message."""
        out = []
        for line in self.log_text().splitlines():
            m = _DELIVERY_LINE.search(line)
            if not m or (queue_id is not None and m.group("qid") != queue_id):
                continue
            entry = {"queue_id": m.group("qid"), "service": m.group("service"),
                     "pid": int(m.group("pid")), "time": m.group("time"),
                     "status": m.group("status"), "reply": m.group("reply")}
            for key, value in _DELIVERY_FIELD.findall(m.group("fields")):
                entry[key] = value[1:-1] if value.startswith("<") else value
            out.append(entry)
        return out

    def message_ids(self) -> dict[str, str]:
        """Queue id -> Message-ID, from cleanup's ``QID: message-id=<...>``
        lines (a message without the header has none)."""
        return {m.group(1): m.group(2)
                for m in _MESSAGE_ID_LINE.finditer(self.log_text())}

    def wait_deliveries(self, queue_id: str, count: int, *,
                        statuses: Iterable[str] = ("sent", "bounced"),
                        timeout: float = 30.0) -> list[dict]:
        """Wait until QUEUE_ID has COUNT delivery records with a status in
        STATUSES (default: final ones); returns all its records."""
        statuses = set(statuses)
        deadline = time.monotonic() + timeout
        while True:
            recs = self.deliveries(queue_id)
            if sum(1 for r in recs if r["status"] in statuses) >= count:
                return recs
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{queue_id}: {count} deliveries with status in {sorted(statuses)} "
                    f"not logged after {timeout}s; records: {recs}\n--- maillog (tail)\n"
                    f"{procs.tail(self.maillog_path)}")
            time.sleep(0.05)

    # -- helpers

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed (status {r.returncode}):\n"
                               f"{r.stdout}{r.stderr}")
        return r


# "Nov 23 12:00:00 mx postfix/lmtp[123]: 4XyZ...: to=<alice@example.org>,
#  relay=127.0.0.1[127.0.0.1]:20024, delay=0.1, delays=0.02/0/0.03/0.05,
#  dsn=2.0.0, status=sent (250 2.0.0 <alice@example.org> abc Saved)"
_DELIVERY_LINE = re.compile(
    r"^(?P<time>.+?) \S+ (?P<service>[\w.-]+/[\w.-]+)\[(?P<pid>\d+)\]: "
    r"(?P<qid>[0-9A-Za-z]+): (?P<fields>to=<.*?), status=(?P<status>\w+)"
    r"(?: \((?P<reply>.*)\))?$")
_RELOAD = "]: reload -- version "  # "postfix/master[PID]: reload -- version 3.7.11, ..."
_DELIVERY_FIELD = re.compile(r"\b(\w+)=(<[^>]*>|[^,\s]*)")
_MESSAGE_ID_LINE = re.compile(r"postfix/cleanup\[\d+\]: ([0-9A-Za-z]+): message-id=(<[^>\s]*>)", re.M)


def swaks_lmtp(host: str, port: int, to: str, *, mail_from: str = "swaks@lab.test",
               body: Optional[str] = None, header_subject: Optional[str] = None,
               timeout: float = 30.0) -> subprocess.CompletedProcess:
    """``swaks --protocol LMTP --server HOST:PORT --to TO`` (the command the
    demo documents); returns the finished process (stdout: the dialogue)."""
    argv = [SWAKS, "--protocol", "LMTP", "--server", f"{host}:{port}", "--to", to,
            "--from", mail_from, "--helo", "client.lab.test", "--timeout", str(int(timeout))]
    if header_subject is not None:
        argv += ["--header", f"Subject: {header_subject}"]
    if body is not None:
        argv += ["--body", body]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)


__all__ = ["Postfix", "SendResult", "swaks_lmtp", "POSTFIX", "SWAKS"]
