"""Process helpers for the lab: start daemons, signal them safely, clean up.

Every daemon runs in its own session and process group (``setsid``), so one
signal reaches the daemon *and* the children it forked (Dovecot's login, imap,
auth... processes), and a Ctrl-C in the terminal does not hit the daemons
behind our back: we decide when they stop.

PIDs wrap quickly on these machines (real-servers.md, "PIDs wrap quickly"), so
a ``Proc`` remembers the start time of its process (field 22 of
``/proc/PID/stat``) and signals a PID only while that start time still
matches. A stale ``Proc`` can therefore never kill an unrelated process.

Everything started here is registered for cleanup: at interpreter exit
(``atexit``) and when the interpreter gets SIGTERM or SIGHUP (turned into
``SystemExit`` so ``finally`` blocks and ``atexit`` run). SIGINT already
raises ``KeyboardInterrupt``, which unwinds the same way. Tests thus leave no
process behind even when they fail.
"""

from __future__ import annotations

import atexit
import os
import random
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Iterable, Optional, Sequence

# --------------------------------------------------------------------------
# /proc helpers


def _read_stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat (1-based field N is at index N-1), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may contain spaces and ')'; the
    # fields after it start after the *last* ')'.
    close = data.rfind(")")
    head = data[:close].split(" (", 1)
    return [head[0], head[1] if len(head) > 1 else ""] + data[close + 2:].split()


def proc_start_time(pid: int) -> Optional[int]:
    """Start time of PID in clock ticks since boot (stat field 22), or None."""
    fields = _read_stat(pid)
    return int(fields[21]) if fields else None


def _proc_state(pid: int) -> Optional[str]:
    fields = _read_stat(pid)
    return fields[2] if fields else None


def group_members(pgid: int, not_before: int) -> list[int]:
    """Live (non-zombie) PIDs in process group PGID started at or after
    NOT_BEFORE (clock ticks). The start-time bound keeps a recycled group id
    from matching processes that are not ours."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _read_stat(int(entry))
        if (fields and int(fields[4]) == pgid and fields[2] != "Z"
                and int(fields[21]) >= not_before):
            found.append(int(entry))
    return found


# --------------------------------------------------------------------------
# Cleanup registry

_cleanups: list[Callable[[], None]] = []
_cleanup_lock = threading.Lock()
_handlers_installed = False


def register_cleanup(fn: Callable[[], None]) -> None:
    """Run FN at interpreter exit (last registered runs first)."""
    with _cleanup_lock:
        _cleanups.append(fn)
    _install_exit_hooks()


def unregister_cleanup(fn: Callable[[], None]) -> None:
    with _cleanup_lock:
        try:
            _cleanups.remove(fn)
        except ValueError:
            pass


def run_cleanups() -> None:
    """Run (and forget) every registered cleanup, newest first. A failing
    cleanup does not stop the others."""
    while True:
        with _cleanup_lock:
            if not _cleanups:
                return
            fn = _cleanups.pop()
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - keep cleaning up
            print(f"lab cleanup: {fn!r} failed: {e!r}", flush=True)


def _exit_on_signal(signum, _frame):
    # Raising here unwinds the main thread: finally blocks, context managers
    # and atexit (run_cleanups) all run. 128+N is the shell's convention.
    raise SystemExit(128 + signum)


def _install_exit_hooks() -> None:
    """Hook atexit once, and SIGTERM/SIGHUP if nobody else handles them.
    (SIGINT's default handler raises KeyboardInterrupt, which already unwinds
    to atexit.) Signal handlers can only be set from the main thread."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(run_cleanups)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _exit_on_signal)


# --------------------------------------------------------------------------
# Proc


class Proc:
    """One daemon started in its own session/process group.

    ``argv`` is run with stdout and stderr appended to ``log_path`` (or
    discarded). The process is registered for cleanup at exit.
    """

    def __init__(self, argv: Sequence[str], *, name: Optional[str] = None,
                 log_path: Optional[str] = None, cwd: Optional[str] = None,
                 env: Optional[dict] = None):
        self.argv = list(argv)
        self.name = name or os.path.basename(self.argv[0])
        self.log_path = log_path
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self._popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                start_new_session=True)  # setsid(): own session and group
        finally:
            if log_path:
                log.close()
        self.pid = self._popen.pid
        # The child cannot be reaped (and its PID reused) before we poll it,
        # so this read is about our process.
        self.start_time = proc_start_time(self.pid) or 0
        self.pgid = self.pid  # setsid() made it the group leader
        register_cleanup(self._cleanup)

    def __repr__(self):
        return f"<Proc {self.name} pid={self.pid}>"

    # -- state

    def returncode(self) -> Optional[int]:
        """Exit status once exited (negative = killed by that signal)."""
        return self._popen.poll()

    def is_ours(self) -> bool:
        """True while PID still names the process we started (maybe a
        zombie not yet reaped)."""
        if self._popen.returncode is not None:
            return False
        return proc_start_time(self.pid) == self.start_time

    def alive(self) -> bool:
        """Running or stopped (SIGSTOP), not exited and not a zombie."""
        if self.returncode() is not None:
            return False
        return self.is_ours() and _proc_state(self.pid) != "Z"

    def members(self) -> list[int]:
        """PIDs of our process group still alive (the daemon's children
        included, even after the leader died)."""
        return group_members(self.pgid, self.start_time)

    # -- signals

    def signal(self, sig: int) -> bool:
        """Send SIG to the main process only. False if it is gone."""
        if not self.is_ours():
            return False
        try:
            os.kill(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def signal_group(self, sig: int) -> bool:
        """Send SIG to every process of the group. While the leader is ours
        (alive or an unreaped zombie) the group id cannot have been recycled,
        so killpg() is safe and atomic; after that, members are looked up
        one by one with their start times checked."""
        if self.is_ours():
            try:
                os.killpg(self.pgid, sig)
                return True
            except ProcessLookupError:
                return False
        sent = False
        for pid in self.members():
            try:
                os.kill(pid, sig)
                sent = True
            except ProcessLookupError:
                pass
        return sent

    def wait(self, timeout: float) -> Optional[int]:
        """Wait up to TIMEOUT seconds for the main process to exit; its exit
        status, or None if it is still running."""
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_group_gone(self, timeout: float) -> bool:
        """Wait until no process of the group is left."""
        deadline = time.monotonic() + timeout
        while True:
            self.returncode()  # reap the leader if it exited
            if not self.members():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # -- lifecycle

    def stop(self, timeout: float = 10.0, *, group: bool = True) -> Optional[int]:
        """SIGTERM (to the whole group, or only the main process), wait up to
        TIMEOUT for an exit, then SIGKILL the group. Resumes a paused process
        first so it can act on SIGTERM. Returns the main process' exit status
        (negative: the signal that killed it)."""
        if self.alive():
            self.signal_group(signal.SIGCONT)
            if group:
                self.signal_group(signal.SIGTERM)
            else:
                self.signal(signal.SIGTERM)
            self.wait(timeout)
        self.kill()  # no-op for anything already gone; catches stragglers
        return self.returncode()

    def kill(self, timeout: float = 5.0) -> Optional[int]:
        """SIGKILL the whole group (a crash, as far as peers can tell) and
        wait until it is gone. Returns the main process' exit status."""
        self.signal_group(signal.SIGKILL)
        self.wait(timeout)
        if not self.wait_group_gone(timeout):
            # Members that escaped the first killpg (forked meanwhile).
            self.signal_group(signal.SIGKILL)
            self.wait_group_gone(timeout)
        if self.returncode() is not None and not self.members():
            unregister_cleanup(self._cleanup)  # nothing left to clean up
        return self.returncode()

    def pause(self) -> None:
        """SIGSTOP the whole group: the daemon hangs but keeps its sockets
        (connections are accepted by the kernel and never answered)."""
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the whole group."""
        self.signal_group(signal.SIGCONT)

    def _cleanup(self) -> None:
        self.stop(timeout=5.0)


# --------------------------------------------------------------------------
# Ports

PORT_RANGE = (20000, 32000)  # below the ephemeral range 32768-60999
_handed_out: set[int] = set()


def port_is_free(port: int, host: str = "127.0.0.1", *, reuse_addr: bool = False) -> bool:
    """True if we can bind HOST:PORT right now.

    Without REUSE_ADDR (the default) a port that still has connections in
    TIME_WAIT counts as taken: strict, so free_port() hands out ports any
    server can bind. With REUSE_ADDR=True only a socket bound to the port (a
    listener) makes it taken -- what a server that sets SO_REUSEADDR, as
    Dovecot does, will see; right for fixed ports reused run after run."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse_addr:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1", exclude: Iterable[int] = ()) -> int:
    """A TCP port in 20000-32000 that is bindable on HOST now and was not
    handed out before by this process. Ports below 32768 because the
    ephemeral range (32768-60999) can be taken by any outgoing connection at
    any moment (real-servers.md, "Ports")."""
    skip = set(exclude) | _handed_out
    for _ in range(2000):
        port = random.randint(*PORT_RANGE)
        if port not in skip and port_is_free(port, host):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE} on {host}")


def port_holder(port: int) -> str:
    """Best-effort description of who listens on PORT (from `ss`), or ''."""
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return " ".join(out.split())


def can_connect(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 10.0, *,
              proc: Optional[Proc] = None) -> None:
    """Wait until HOST:PORT accepts a TCP connection. Raises TimeoutError
    after TIMEOUT seconds, or RuntimeError at once if PROC (the daemon that
    should open the port) exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if can_connect(host, port, timeout=0.5):
            return
        if proc is not None and proc.returncode() is not None:
            raise RuntimeError(
                f"{proc.name} exited with status {proc.returncode()} before "
                f"{host}:{port} accepted connections")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} not accepting after {timeout}s")
        time.sleep(0.01)


def tail(path: str, lines: int = 30) -> str:
    """Last LINES lines of a text file ('' if missing): for error messages."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


__all__ = [
    "Proc", "register_cleanup", "unregister_cleanup", "run_cleanups",
    "free_port", "port_is_free", "port_holder", "can_connect", "wait_port",
    "proc_start_time", "group_members", "tail", "PORT_RANGE",
]
