#!/usr/bin/python3
"""Isthmus against haproxy, side by side, in one run on this machine.

    /usr/bin/python3 bench/imap_bench.py [--isthmus build/ci/bin/isthmus] [--json out.json]

Starts one real Dovecot node (lab node a-left, tests/lab) and, in front of
it, isthmus (one worker) and haproxy (plain TCP, one thread). Both relay to
that same node. Then, for each proxy, with the same client:

  CPU per IMAP login        N sequential connect + greeting + LOGIN + LOGOUT
  memory per idle session   RSS after 2K logged-in idle sessions minus RSS
                            after K, divided by K
  CPU per 100 MB relayed    one session fetching a large message again and again
  added NOOP latency        NOOP round trips through the proxy minus the same
                            straight to Dovecot, p50 and p99

Absolute numbers from a shared 2-core VM mean little; the ratio
isthmus/haproxy, measured in the same run with the proxies interleaved, is
the figure to watch. haproxy does not speak IMAP: its "login" is two TCP
connections relayed, so it is the floor, not a peer doing the same work.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

from lab import procs  # noqa: E402
from lab.cluster import PASSWORD, Lab  # noqa: E402

USER = "alice@example.org"  # island a; the only island the bench uses
NODE = "a-left"


# --------------------------------------------------------------------------
# What a process costs, from /proc


class ProcessMeter:
    """CPU time and resident memory of one process (all its threads).

    CPU comes from two sources. /proc/PID/stat utime+stime is the classic
    figure but counts in clock ticks (10 ms here): a proxy spending 0.1 ms
    per login over 400 logins moves it by 4 ticks, a 25 % quantisation
    error. The kernel derives utime+stime from the scheduler's
    sum_exec_runtime, which /proc/PID/task/*/schedstat shows in
    nanoseconds; summed over the threads it is the same quantity, finely
    grained. We use schedstat and keep the stat figure as a cross-check
    (it also covers threads that have exited, which schedstat would miss;
    neither proxy starts threads at run time)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.ticks_per_s = os.sysconf("SC_CLK_TCK")
        self.has_schedstat = os.path.exists(f"/proc/{pid}/schedstat")

    def stat_cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15; after the comm field's ')'
        # the list starts at field 3.
        return (int(fields[11]) + int(fields[12])) / self.ticks_per_s

    def sched_cpu_s(self) -> float:
        total = 0
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that just exited
        return total / 1e9

    def cpu(self) -> tuple[float, float]:
        """(precise seconds, tick-based seconds) of CPU used so far."""
        ticks = self.stat_cpu_s()
        return (self.sched_cpu_s() if self.has_schedstat else ticks), ticks

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")


class CpuTally:
    """CPU each proxy spends during its own turns, summed over the turns.

    A turn's window closes a moment after the client's last byte, so that
    what the proxy does after it (closing the session, writing its log
    line) counts too. The window does not span the other targets' turns:
    an idle haproxy still uses ~0.5 ms/s with a few sessions open (its
    timers), which is no cost of the work being measured."""

    SETTLE = 0.03  # s; enough for a close and a log line, short enough to add no idle time

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.tick_seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def turn(self, t: "Target"):
        if t.meter is None:  # Dovecot itself: nothing to meter
            yield
            return
        before = t.meter.cpu()
        yield
        time.sleep(self.SETTLE)
        after = t.meter.cpu()
        self.seconds[t.name] = self.seconds.get(t.name, 0.0) + after[0] - before[0]
        self.tick_seconds[t.name] = self.tick_seconds.get(t.name, 0.0) + after[1] - before[1]


# --------------------------------------------------------------------------
# A minimal IMAP client: just enough, and cheap, so the client's own cost
# stays small and identical for every target.


class Imap:
    def __init__(self, port: int, timeout: float = 30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self._scratch = bytearray(1 << 20)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; pending: {bytes(self.buf[:200])!r}")
        self.buf += chunk

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            self._fill()

    def skip(self, n: int) -> None:
        """Read and drop exactly N bytes (a literal), never more: what
        follows the literal stays readable."""
        take = min(n, len(self.buf))
        del self.buf[:take]
        n -= take
        view = memoryview(self._scratch)
        while n:
            got = self.sock.recv_into(view, min(n, len(view)))
            if not got:
                raise EOFError("connection closed inside a literal")
            n -= got

    _LITERAL = re.compile(rb"\{(\d+)\}$")

    def response(self, tag: bytes) -> tuple[bytes, int]:
        """Read up to the line tagged TAG; returns it and the number of
        literal bytes skipped on the way (the size of a FETCHed body)."""
        literal = 0
        while True:
            line = self.line()
            while True:
                m = self._LITERAL.search(line)
                if not m:
                    break
                n = int(m.group(1))
                self.skip(n)
                literal += n
                line = self.line()  # the rest of the same response
            if line.startswith(tag + b" "):
                return line, literal

    def command(self, tag: str, text: str, expect_ok: bool = True) -> tuple[bytes, int]:
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        line, literal = self.response(tag.encode())
        if expect_ok and not line.startswith(tag.encode() + b" OK"):
            raise RuntimeError(f"{text.split()[0]} failed: {line!r}")
        return line, literal

    def login(self) -> None:
        greeting = self.line()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"bad greeting: {greeting!r}")
        self.command("a", f"LOGIN {USER} {PASSWORD}")

    def logout(self) -> None:
        self.command("z", "LOGOUT")
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# The targets: two proxies and the node itself


class Target:
    """Something the client connects to: a proxy (with a process to meter)
    or Dovecot itself (the baseline, no meter)."""

    def __init__(self, name: str, port: int, pid: Optional[int]):
        self.name = name
        self.port = port
        self.meter = ProcessMeter(pid) if pid else None

    def connect(self) -> Imap:
        return Imap(self.port)


def write_haproxy_config(path: str, port: int, node_port: int, log: bool) -> None:
    # One thread, like isthmus' one worker: both proxies get one core's
    # worth of process to spend. Timeouts long enough that idle sessions
    # survive the memory test. No splicing (haproxy's default): isthmus
    # does not splice yet either.
    logging = ("    log stdout format raw local0 info\n" if log else "")
    text = f"""\
# Written by bench/imap_bench.py.
global
    nbthread 1
    maxconn 4000
{logging}
defaults
    mode tcp
    {"log global" if log else "no log"}
    {"option tcplog" if log else ""}
    maxconn 4000
    timeout connect 5s
    timeout client 30m
    timeout server 30m

frontend imap
    bind 127.0.0.1:{port}
    default_backend node

backend node
    server {NODE} 127.0.0.1:{node_port}
"""
    with open(path, "w") as f:
        f.write(text)


class Proxies:
    """Starts (and restarts) the two proxies in front of the node.

    Both are restarted for every repetition: the memory figure needs a
    fresh process (a heap that has already held 2K sessions would serve
    the next 2K from memory it kept, and the increment would read zero),
    and fresh processes make the repetitions independent samples."""

    def __init__(self, lab: Lab, args: argparse.Namespace):
        self.lab = lab
        self.args = args
        self.node_port = lab.node(NODE).port("imap")
        self.haproxy: Optional[procs.Proc] = None
        self.isthmus = None
        self.generation = 0

    def start(self) -> tuple[Target, Target]:
        self.generation += 1
        # New ports each time: no waiting for the old listener's port.
        ix_port = procs.free_port()
        ha_port = procs.free_port()

        # Island a reduced to the one node haproxy relays to: both proxies
        # then hit the same Dovecot process tree, so its speed cannot favour
        # either (balancing over a-left/a-right would give isthmus two
        # nodes' worth of backend to hide latency in).
        islands = [dict(island) for island in self.lab.config["islands"]]
        for island in islands:
            if island["name"] == "a":
                island["nodes"] = [n for n in island["nodes"] if n["name"] == NODE]
        self.isthmus = self.lab.start_isthmus(
            self.args.isthmus,
            workers=1,
            islands=islands,
            listeners=[{"name": "imap", "protocol": "imap", "address": "127.0.0.1",
                        "port": ix_port}],
            log={"level": "warn" if self.args.quiet_logs else "info"},
        )

        run_dir = os.path.join(self.lab.root, f"haproxy-{self.generation}")
        os.makedirs(run_dir, exist_ok=True)
        cfg = os.path.join(run_dir, "haproxy.cfg")
        write_haproxy_config(cfg, ha_port, self.node_port, log=not self.args.quiet_logs)
        log_path = os.path.join(run_dir, "haproxy.log")
        # procs.Proc registers the process for cleanup at exit, even if we
        # crash before stop().
        self.haproxy = procs.Proc([self.args.haproxy, "-db", "-f", cfg], name="haproxy",
                                  log_path=log_path, cwd=run_dir)
        try:
            procs.wait_port("127.0.0.1", ha_port, 10, proc=self.haproxy)
        except (TimeoutError, RuntimeError) as e:
            raise RuntimeError(f"haproxy did not start: {e}\n{procs.tail(log_path)}") from None

        return (Target("isthmus", ix_port, self.isthmus.proc.pid),
                Target("haproxy", ha_port, self.haproxy.pid))

    def stop(self) -> None:
        if self.isthmus is not None:
            self.isthmus.stop()  # raises if it crashed or did not exit 0
            self.isthmus = None
        if self.haproxy is not None:
            self.haproxy.stop(5.0)
            self.haproxy = None


# --------------------------------------------------------------------------
# Waiting for quiet


def _open_tcp_ports(ports: set[int]) -> int:
    """Sockets on loopback whose local port is one of PORTS and that are
    ESTABLISHED or CLOSE_WAIT (a peer closed, the owner has not yet)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for row in f:
                    cols = row.split()
                    local_port = int(cols[1].rsplit(":", 1)[1], 16)
                    if local_port in ports and cols[3] in ("01", "08"):
                        count += 1
        except FileNotFoundError:
            pass
    return count


def wait_quiet(ports: set[int], timeout: float = 20.0) -> None:
    """Wait until the servers on PORTS have dealt with every closed session,
    so one measurement's tail does not land in the next one's window."""
    deadline = time.monotonic() + timeout
    while _open_tcp_ports(ports):
        if time.monotonic() > deadline:
            print(f"  warning: {_open_tcp_ports(ports)} sessions still open after {timeout}s",
                  file=sys.stderr)
            return
        time.sleep(0.05)


# --------------------------------------------------------------------------
# The measurements. Those that compare CPU or latency run every target in
# short alternating turns (round r starts with target r mod n), so a burst
# of noise from the rest of the machine -- a compile, another test run --
# hits all of them rather than whichever happened to run at that moment.
# Each returns {target name: {figure: value}}.


def turns(targets: list[Target], rounds: int):
    """(round, target) pairs: ROUNDS rounds, each target once per round,
    the starting target rotating."""
    for r in range(rounds):
        for i in range(len(targets)):
            yield r, targets[(r + i) % len(targets)]


def measure_logins(targets: list[Target], n: int, chunk: int = 25) -> dict:
    """N sequential sessions per target (connect, greeting, LOGIN, LOGOUT),
    in turns of CHUNK sessions."""
    walls = {t.name: [] for t in targets}
    rounds = max(1, n // chunk)
    cpu = CpuTally()
    for _, t in turns(targets, rounds):
        with cpu.turn(t):
            for _ in range(chunk):
                start = time.perf_counter()
                c = t.connect()
                c.login()
                c.logout()
                walls[t.name].append(time.perf_counter() - start)
    out = {}
    for t in targets:
        done = len(walls[t.name])
        out[t.name] = {"login_wall_ms": statistics.median(walls[t.name]) * 1e3}
        if t.meter:
            out[t.name]["login_cpu_ms"] = cpu.seconds[t.name] / done * 1e3
            out[t.name]["login_cpu_ms_ticks"] = cpu.tick_seconds[t.name] / done * 1e3
    return out


def measure_memory(t: Target, k: int) -> dict:
    """RSS growth per idle relayed session, from the second batch of K.
    (Not interleaved: it reads one process' state, not a rate.)"""
    sessions: list[Imap] = []
    try:
        def open_batch() -> int:
            for _ in range(k):
                c = t.connect()
                c.login()
                sessions.append(c)
            time.sleep(0.3)  # nothing is in flight; let the proxy settle
            return t.meter.rss_kib()

        rss0 = t.meter.rss_kib()
        rss_k = open_batch()
        rss_2k = open_batch()
    finally:
        for c in sessions:
            c.close()
    return {"rss_start_kib": rss0, "rss_k_kib": rss_k, "rss_2k_kib": rss_2k,
            "mem_per_session_kib": (rss_2k - rss_k) / k,
            "mem_first_batch_kib": (rss_k - rss0) / k}


def measure_relay(targets: list[Target], relay_bytes: int) -> dict:
    """One logged-in session per target; FETCH the big message, one fetch
    per turn, until RELAY_BYTES have come through each."""
    sessions = {}
    try:
        for t in targets:
            c = sessions[t.name] = t.connect()
            c.login()
            c.command("s", "SELECT INBOX")
            _, size = c.command("w", "FETCH 1 BODY.PEEK[]")  # warm: first-use allocations
            if size == 0:
                raise RuntimeError(f"FETCH through {t.name} returned no body")
        rounds = -(-relay_bytes // size)
        got = {t.name: 0 for t in targets}
        wall = {t.name: 0.0 for t in targets}
        cpu = CpuTally()
        for r, t in turns(targets, rounds):
            with cpu.turn(t):
                start = time.perf_counter()
                _, n = sessions[t.name].command(f"f{r}", "FETCH 1 BODY.PEEK[]")
                wall[t.name] += time.perf_counter() - start
            got[t.name] += n
        for c in sessions.values():
            c.logout()
    finally:
        for c in sessions.values():
            c.close()
    out = {}
    for t in targets:
        out[t.name] = {"relay_bytes": got[t.name], "relay_mb_s": got[t.name] / wall[t.name] / 1e6}
        if t.meter:
            out[t.name]["relay_cpu_s_per_100mb"] = cpu.seconds[t.name] / got[t.name] * 100e6
            out[t.name]["relay_cpu_s_per_100mb_ticks"] = (cpu.tick_seconds[t.name]
                                                          / got[t.name] * 100e6)
    return out


def measure_noop(targets: list[Target], n: int, chunk: int = 100) -> dict:
    """N NOOP round trips per target on one logged-in session each, in turns
    of CHUNK; p50 and p99 in µs."""
    sessions = {}
    rtts = {t.name: [] for t in targets}
    try:
        for t in targets:
            c = sessions[t.name] = t.connect()
            c.login()
            for _ in range(50):  # warm caches and the path
                c.command("n", "NOOP")
        for _, t in turns(targets, max(1, n // chunk)):
            c = sessions[t.name]
            for _ in range(chunk):
                start = time.perf_counter_ns()
                c.command("n", "NOOP")
                rtts[t.name].append(time.perf_counter_ns() - start)
        for c in sessions.values():
            c.logout()
    finally:
        for c in sessions.values():
            c.close()
    out = {}
    for name, values in rtts.items():
        values.sort()
        out[name] = {"noop_p50_us": values[len(values) // 2] / 1e3,
                     "noop_p99_us": values[min(len(values) - 1, int(len(values) * 0.99))] / 1e3}
    return out


# --------------------------------------------------------------------------
# Setting up


def big_message(size: int) -> bytes:
    """A message of about SIZE bytes: base64 lines of random bytes, so no
    layer along the way can compress or shortcut it."""
    body = base64.encodebytes(random.randbytes(size * 3 // 4))
    head = (b"From: bench@example.org\nTo: alice@example.org\n"
            b"Subject: relay benchmark\nMIME-Version: 1.0\n"
            b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n")
    return head + body


def build_type(binary: str) -> str:
    """CMAKE_BUILD_TYPE of the build dir the binary came from (BUILD/bin/
    isthmus), "sanitizers:..." for a sanitizer build, '' if unknown."""
    cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(binary))),
                         "CMakeCache.txt")
    values = {}
    try:
        with open(cache) as f:
            for line in f:
                name, sep, value = line.partition("=")
                if sep and ":" in name:
                    values[name.split(":", 1)[0]] = value.strip()
    except OSError:
        return ""
    if values.get("ISTHMUS_SANITIZE"):
        return "sanitizers:" + values["ISTHMUS_SANITIZE"]
    return values.get("CMAKE_BUILD_TYPE", "")


def git_state() -> str:
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def version_of(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


# --------------------------------------------------------------------------
# Report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread_pct(values: list[float]) -> float:
    """Half the min..max range, in % of the median: how much to trust the
    median's last digits."""
    m = median(values)
    if len(values) < 2 or not m:
        return 0.0
    return (max(values) - min(values)) / 2 / abs(m) * 100


# (key, label, unit, format, the direct-to-Dovecot figure shown beside it)
ROWS = [
    ("login_cpu_ms", "CPU per IMAP login", "ms", "{:.3f}", None),
    ("mem_per_session_kib", "memory per idle relayed session", "KiB", "{:.2f}", None),
    ("relay_cpu_s_per_100mb", "CPU per 100 MB relayed", "s", "{:.3f}", None),
    # Proxy minus direct; beside it, the direct round trip itself.
    ("noop_added_p50_us", "added NOOP latency p50", "µs", "{:.1f}", "noop_p50_us"),
    ("noop_added_p99_us", "added NOOP latency p99", "µs", "{:.1f}", "noop_p99_us"),
    # Client-observed, for context (wall clock, so noisier).
    ("login_wall_ms", "login session wall time p50", "ms", "{:.2f}", "login_wall_ms"),
    ("relay_mb_s", "relay throughput (client)", "MB/s", "{:.0f}", "relay_mb_s"),
]


def summarise(reps: list[dict]) -> dict:
    """Median over repetitions per metric and target, and the median of the
    per-repetition isthmus/haproxy ratios (each pair measured seconds apart,
    so the ratio cancels much of the machine's drift)."""
    summary = {}
    for key, _, _, _, direct_key in ROWS:
        row = {}
        for target, k in (("isthmus", key), ("haproxy", key), ("direct", direct_key)):
            vals = [r[target][k] for r in reps if k and k in r[target]]
            if vals:
                row[target] = {"median": median(vals), "spread_pct": spread_pct(vals),
                               "values": vals}
        ratios = [r["isthmus"][key] / r["haproxy"][key] for r in reps
                  if key in r["isthmus"] and key in r["haproxy"] and r["haproxy"][key] > 0]
        if ratios:
            row["ratio"] = median(ratios)
        summary[key] = row
    return summary


def print_table(summary: dict, rate_reps: int, memory_reps: int) -> None:
    print(f"\nmedians of {rate_reps} repetitions ({memory_reps} for memory); "
          f"±: half the min..max range, in % of the median")
    header = f"{'metric':<37} {'isthmus':>15} {'haproxy':>15} {'ratio':>6} {'direct':>15}"
    print(header)
    print("-" * len(header))
    for key, label, unit, fmt, _ in ROWS:
        row = summary.get(key, {})

        def cell(target: str) -> str:
            if target not in row:
                return "-"
            v = row[target]
            # Past 100 % the figure is noise around zero; the digits say nothing.
            spread = f"{v['spread_pct']:.0f}%" if v["spread_pct"] <= 100 else ">100%"
            return f"{fmt.format(v['median'])} ±{spread}"

        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
        print(f"{label + ' (' + unit + ')':<37} {cell('isthmus'):>15} {cell('haproxy'):>15} "
              f"{ratio:>6} {cell('direct'):>15}")
    print("""
ratio = isthmus / haproxy (median of per-repetition ratios): below 1 isthmus is cheaper
(for throughput, above 1 isthmus is faster).
CPU is the proxy process' own (all threads, user + system).
haproxy does not parse IMAP: its login cost is relaying two TCP connections, the
floor for any proxy, not a peer doing isthmus' work (greeting, parsing, routing,
its own login to the node). 'direct' is Dovecot without a proxy: for the NOOP rows
its own round trip, which the added figures are measured against.""")


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isthmus", default=os.environ.get("ISTHMUS_BIN",
                                                        os.path.join(REPO, "build/ci/bin/isthmus")),
                    help="isthmus binary (an optimised build; default build/ci/bin/isthmus)")
    ap.add_argument("--haproxy", default=shutil.which("haproxy", path="/usr/sbin:/usr/bin") or "haproxy")
    ap.add_argument("--reps", type=int, default=7,
                    help="repetitions of the CPU and latency measurements; medians are reported")
    ap.add_argument("--memory-reps", type=int, default=3,
                    help="repetitions of the memory measurement (slow, and steady to the byte)")
    ap.add_argument("--logins", type=int, default=400, help="N: sequential logins per measurement")
    ap.add_argument("--sessions", type=int, default=250,
                    help="K: idle sessions per batch (2K are held at once)")
    ap.add_argument("--message-mb", type=float, default=16, help="size of the fetched message")
    ap.add_argument("--relay-mb", type=float, default=128,
                    help="bytes to fetch per relay measurement (whole fetches)")
    ap.add_argument("--noops", type=int, default=2000, help="NOOP round trips per measurement")
    ap.add_argument("--quiet-logs", action="store_true",
                    help="no per-session log lines from either proxy (default: both log one "
                         "line or two per session to a file, as in production)")
    ap.add_argument("--allow-unoptimised", action="store_true",
                    help="run even if the isthmus binary is a Debug or sanitizer build")
    ap.add_argument("--json", metavar="FILE", help="also write all figures as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="print where the time goes")
    args = ap.parse_args()

    if not 1 <= args.memory_reps <= args.reps:
        ap.error("--memory-reps: between 1 and --reps")
    if 2 * args.sessions + 10 > 900:
        ap.error("--sessions: Dovecot's lab config allows ~1000 processes; keep 2K under ~900")
    if not os.access(args.isthmus, os.X_OK):
        ap.error(f"no isthmus binary at {args.isthmus} (build it, or pass --isthmus)")
    if not shutil.which(args.haproxy):
        ap.error(f"haproxy not found ({args.haproxy}); deploy/install-deps.sh installs it")
    build = build_type(args.isthmus)
    if build not in ("Release", "RelWithDebInfo", "MinSizeRel") and not args.allow_unoptimised:
        ap.error(f"{args.isthmus} is a {build or 'unknown'} build; benchmarks need an "
                 f"optimised one (or --allow-unoptimised)")

    # Client sockets, and (inherited) the proxies' own descriptors.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    began = time.monotonic()
    env = {
        "isthmus": os.path.abspath(args.isthmus), "build_type": build, "git": git_state(),
        "haproxy": version_of([args.haproxy, "-v"]), "dovecot": version_of(["dovecot", "--version"]),
        "cpus": os.cpu_count(), "kernel": platform.release(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "logs": not args.quiet_logs,
    }
    print(f"isthmus {env['isthmus']} ({build}, git {env['git']})\n{env['haproxy']}\n"
          f"dovecot {env['dovecot']}; {env['cpus']} CPUs; kernel {env['kernel']}")
    print(f"N={args.logins} logins, K={args.sessions} sessions, {args.message_mb:g} MB message, "
          f"{args.relay_mb:g} MB per relay run, {args.noops} NOOPs, {args.reps} repetitions "
          f"({args.memory_reps} for memory), "
          f"per-session logs {'off' if args.quiet_logs else 'on'}")

    lab = Lab()
    proxies = None
    try:
        node = lab.node(NODE)
        node.start()  # only the node both proxies use: the others would be noise
        lab.put_message(USER, big_message(int(args.message_mb * 1e6)))
        direct = Target("direct", node.port("imap"), None)

        # Dovecot builds its index and the message lands in the page cache
        # on the first fetch; neither should count against the first proxy.
        measure_relay([direct], 1)

        proxies = Proxies(lab, args)
        reps: list[dict] = [{"isthmus": {}, "haproxy": {}, "direct": {}, "phase_s": {}}
                            for _ in range(args.reps)]

        def run(r: dict, phase: str, quiet: set[int], fn: Callable[[], dict]) -> None:
            """Run one measurement, file its figures under their target and
            note its wall time (to see where a run's time goes)."""
            start = time.monotonic()
            for name, figures in fn().items():
                r[name].update(figures)
            wait_quiet(quiet)
            r["phase_s"][phase] = round(time.monotonic() - start, 2)

        # Part 1: the rates (CPU, latency), targets interleaved in short turns.
        # Before part 2 on purpose: once 2K sessions have been held, Dovecot
        # keeps 2K idle imap processes, and all of them wake for every new
        # connection (a thundering herd: a direct login takes 5 ms instead of
        # 1.2 ms here), which would drown the proxies' own costs in noise.
        for i, r in enumerate(reps):
            t0 = time.monotonic()
            isthmus, haproxy = proxies.start()
            trio = [direct, isthmus, haproxy]
            quiet = {isthmus.port, haproxy.port, direct.port}
            run(r, "logins", quiet, lambda: measure_logins(trio, args.logins))
            run(r, "relay", quiet, lambda: measure_relay(trio, int(args.relay_mb * 1e6)))
            run(r, "noop", quiet, lambda: measure_noop(trio, args.noops))
            for name in ("isthmus", "haproxy"):
                for q in ("p50", "p99"):
                    r[name][f"noop_added_{q}_us"] = (r[name][f"noop_{q}_us"]
                                                     - r["direct"][f"noop_{q}_us"])
            proxies.stop()
            print(f"rates  {i + 1}/{args.reps} ({time.monotonic() - t0:.0f}s): "
                  f"login CPU {r['isthmus']['login_cpu_ms']:.3f} / "
                  f"{r['haproxy']['login_cpu_ms']:.3f} ms, "
                  f"relay {r['isthmus']['relay_cpu_s_per_100mb']:.3f} / "
                  f"{r['haproxy']['relay_cpu_s_per_100mb']:.3f} s, "
                  f"NOOP +{r['isthmus']['noop_added_p50_us']:.0f} / "
                  f"+{r['haproxy']['noop_added_p50_us']:.0f} µs  (isthmus / haproxy)",
                  flush=True)

        # Part 2: memory, on freshly started proxies each time (a heap that
        # once held 2K sessions would serve the next 2K from memory it kept).
        # One proxy after the other; which goes first alternates, since the
        # first one of the whole run pays for Dovecot forking its processes
        # (wall time only).
        for i, r in enumerate(reps[:args.memory_reps]):
            t0 = time.monotonic()
            isthmus, haproxy = proxies.start()
            quiet = {isthmus.port, haproxy.port, direct.port}
            for t in ([isthmus, haproxy] if i % 2 == 0 else [haproxy, isthmus]):
                run(r, f"memory:{t.name}", quiet,
                    lambda t=t: {t.name: measure_memory(t, args.sessions)})
            proxies.stop()
            print(f"memory {i + 1}/{args.memory_reps} ({time.monotonic() - t0:.0f}s): "
                  f"{r['isthmus']['mem_per_session_kib']:.2f} / "
                  f"{r['haproxy']['mem_per_session_kib']:.2f} KiB per session "
                  f"(isthmus / haproxy)", flush=True)
        if args.verbose:
            for i, r in enumerate(reps):
                print(f"  rep {i + 1} phase wall times (s): "
                      + ", ".join(f"{k} {v}" for k, v in r["phase_s"].items()))
    finally:
        if proxies is not None:
            proxies.stop()
        lab.close()

    summary = summarise(reps)
    print_table(summary, args.reps, args.memory_reps)
    elapsed = time.monotonic() - began
    print(f"\ntook {elapsed:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "options": vars(args), "elapsed_s": elapsed,
                       "summary": summary, "repetitions": reps}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
