#!/usr/bin/python3
"""Isthmus against Dovecot's own LMTP proxy, side by side, in one run.

    /usr/bin/python3 bench/lmtp_bench.py [--isthmus build/ci/bin/isthmus] [--json out.json]

Real Dovecot nodes (the lab's a-left and b-left) and, in front of them:

  isthmus         one worker, island a = a-left, island b = b-left
  dovecot-proxy   Dovecot 2.3 with `lmtp_proxy = yes` and a passwd-file
                  passdb answering `proxy=y host=127.0.0.1 port=<node>` for
                  every recipient (the Dovecot director's way of routing)

The same client (smtplib.LMTP, one connection, transaction after
transaction) sends, to each proxy in turn:

  1 rcpt      a 2 KiB message to one recipient
  10 rcpts    a 2 KiB message to ten recipients, five on each island
  1 MiB       a 1 MiB message to one recipient

and records messages per second and the proxy's CPU per message: Isthmus'
process; for Dovecot, every process of its instance (master, lmtp, auth,
config, log, anvil) including children that exited (the master's cutime).
The nodes' own CPU is the same for both and not counted. Target (issue 13):
Isthmus at most half of Dovecot's LMTP proxy CPU per message.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)

from imap_bench import ProcessMeter, build_type  # noqa: E402
from lab import procs  # noqa: E402
from lab.cluster import Lab  # noqa: E402
from lab.dovecot import DOVECOT, mail_owner  # noqa: E402

SENDER = "bench@example.net"
# Ten recipients, five per island, added to every node's users.
RECIPIENTS = {f"u{i:02d}@example.org": ("a" if i < 5 else "b") for i in range(10)}
NODE_OF = {"a": "a-left", "b": "b-left"}


class GroupMeter:
    """CPU of a process and everything it started (its process group):
    live processes' utime+stime plus the leader's cutime+cstime (children
    that exited), in seconds."""

    def __init__(self, leader: int):
        self.leader = leader
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu(self) -> float:
        # Live threads from schedstat (nanoseconds, like ProcessMeter);
        # children that exited from the leader's cutime+cstime (ticks).
        total = 0.0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After ')': state(3) ppid(4) pgrp(5) ... utime(14) stime(15) cutime(16) cstime(17)
            if int(fields[2]) != self.leader:
                continue
            try:
                for tid in os.listdir(f"/proc/{name}/task"):
                    with open(f"/proc/{name}/task/{tid}/schedstat") as f:
                        total += int(f.read().split()[0]) / 1e9
            except OSError:
                continue
            if int(name) == self.leader:
                total += (int(fields[13]) + int(fields[14])) / self.tick
        return total


def dovecot_proxy_config(run: str, port: int, lab: Lab) -> str:
    uid, gid, user = mail_owner()
    root = os.geteuid() == 0
    internal_user = "dovecot" if root else user
    import grp
    internal_group = "dovecot" if root else grp.getgrgid(gid).gr_name
    lines = []
    for login, island in RECIPIENTS.items():
        node = lab.node(NODE_OF[island])
        lines.append(f"{login}:::::::proxy=y host={node.host} port={node.port('lmtp')} "
                     f"nopassword=y")
    with open(os.path.join(run, "proxy.passwd"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return f"""\
instance_name = isthmus-bench-lmtp-proxy
base_dir = {run}/base
state_dir = {run}/state
log_path = {run}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
lmtp_proxy = yes
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {"dovenull" if root else user}
first_valid_uid = {uid}
last_valid_uid = {uid}
passdb {{
  driver = passwd-file
  args = username_format=%u {run}/proxy.passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  # Processes reused for many connections, as the nodes' (fork is dear here).
  service_count = 0
  process_min_avail = 1
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def start_dovecot_proxy(lab: Lab) -> tuple[procs.Proc, int]:
    run = os.path.join(lab.root, "dovecot-lmtp-proxy")
    os.makedirs(os.path.join(run, "base"), exist_ok=True)
    os.makedirs(os.path.join(run, "state"), exist_ok=True)
    os.chmod(run, 0o755)
    port = procs.free_port()
    conf = os.path.join(run, "dovecot.conf")
    with open(conf, "w") as f:
        f.write(dovecot_proxy_config(run, port, lab))
    proc = procs.Proc([DOVECOT, "-F", "-c", conf], name="dovecot-proxy",
                      log_path=os.path.join(run, "stdout.log"), cwd=run)
    procs.wait_port("127.0.0.1", port, 20, proc=proc)
    return proc, port


def message(size: int, n: int) -> bytes:
    head = (f"From: {SENDER}\r\nTo: undisclosed-recipients:;\r\nSubject: bench {n}\r\n"
            f"Message-ID: <bench-{n}-{time.monotonic_ns()}@bench>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def run_case(port: int, recipients: list[str], size: int, count: int) -> float:
    """Seconds for COUNT transactions on one connection."""
    s = smtplib.LMTP("127.0.0.1", port, timeout=120)
    s.ehlo("bench.example.net")
    started = time.monotonic()
    for n in range(count):
        # By hand: smtplib's sendmail() reads one reply after the dot, LMTP
        # sends one per recipient (RFC 2033 section 4.2).
        code, text = s.mail(SENDER)
        if code != 250:
            raise RuntimeError(f"MAIL: {code} {text!r}")
        for r in recipients:
            code, text = s.rcpt(r)
            if code != 250:
                raise RuntimeError(f"RCPT {r}: {code} {text!r}")
        code, text = s.docmd("DATA")
        if code != 354:
            raise RuntimeError(f"DATA: {code} {text!r}")
        body = message(size, n).replace(b"\r\n.", b"\r\n..")
        s.send(body + b".\r\n")
        for r in recipients:
            code, text = s.getreply()
            if code != 250:
                raise RuntimeError(f"after DATA for {r}: {code} {text!r}")
    took = time.monotonic() - started
    s.quit()
    return took


CASES = {
    "1 rcpt": (["u00@example.org"], 2048),
    "10 rcpts": (list(RECIPIENTS), 2048),
    "1 MiB": (["u00@example.org"], 1 << 20),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--isthmus", default=os.environ.get("ISTHMUS_BIN",
                                                        os.path.join(REPO, "build/ci/bin/isthmus")))
    ap.add_argument("--reps", type=int, default=5, help="rounds; medians reported")
    ap.add_argument("--messages", type=int, default=100, help="small messages per round and case")
    ap.add_argument("--big-messages", type=int, default=10, help="1 MiB messages per round")
    ap.add_argument("--only", choices=list(CASES), help="run this case only")
    ap.add_argument("--allow-unoptimised", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    build = build_type(args.isthmus)
    if build not in ("Release", "RelWithDebInfo", "MinSizeRel") and not args.allow_unoptimised:
        ap.error(f"{args.isthmus} is a {build or 'unknown'} build; benchmarks need an optimised one")

    lab = Lab()
    try:
        for node in lab.nodes.values():
            node.users.update({login: "bench" for login in RECIPIENTS})
        lab.start()
        islands = [dict(i, nodes=[n for n in i["nodes"] if n["name"] == NODE_OF[i["name"]]])
                   for i in lab.config["islands"]]
        users_map = "".join(f"{login} {island}\n" for login, island in RECIPIENTS.items())
        ix_port = procs.free_port()
        ix = lab.start_isthmus(
            args.isthmus, workers=1, islands=islands, users_map=users_map,
            listeners=[{"name": "lmtp", "protocol": "lmtp", "address": "127.0.0.1",
                        "port": ix_port}],
            lmtp={"hostname": "isthmus.bench", "spool_dir": lab.root},
            log={"level": "warn"})
        proxy, dv_port = start_dovecot_proxy(lab)
        targets = {"isthmus": (ix_port, ProcessMeter(ix.proc.pid)),
                   "dovecot-proxy": (dv_port, GroupMeter(proxy.pid))}
        # Warm up both (connections, processes, caches).
        for port, _ in targets.values():
            run_case(port, list(RECIPIENTS), 2048, 5)
        results: dict = {case: {t: {"rate": [], "cpu_ms": []} for t in targets} for case in CASES}
        for rep in range(args.reps):
            for case, (rcpts, size) in CASES.items():
                if args.only and case != args.only:
                    continue
                count = args.big_messages if size > 100000 else args.messages
                order = list(targets.items())
                if rep % 2:
                    order.reverse()  # interleaved: neither always goes first
                for name, (port, meter) in order:
                    before = meter.cpu()
                    took = run_case(port, rcpts, size, count)
                    time.sleep(0.05)
                    cpu = (meter.cpu()[0] if isinstance(meter, ProcessMeter) else meter.cpu())
                    cpu_before = before[0] if isinstance(meter, ProcessMeter) else before
                    results[case][name]["rate"].append(count / took)
                    results[case][name]["cpu_ms"].append((cpu - cpu_before) * 1000 / count)
            print(f"round {rep + 1} done", flush=True)
        ix.stop()
        proxy.stop(10)
    finally:
        lab.close()

    print(f"\n{'case':10} {'target':14} {'msgs/s':>8} {'CPU ms/msg':>11}")
    summary = {}
    for case in CASES:
        if args.only and case != args.only:
            continue
        summary[case] = {}
        for name in results[case]:
            rate = statistics.median(results[case][name]["rate"])
            cpu = statistics.median(results[case][name]["cpu_ms"])
            summary[case][name] = {"msgs_per_s": rate, "cpu_ms_per_msg": cpu}
            print(f"{case:10} {name:14} {rate:8.1f} {cpu:11.3f}")
        ratio = (summary[case]["isthmus"]["cpu_ms_per_msg"] /
                 max(summary[case]["dovecot-proxy"]["cpu_ms_per_msg"], 1e-9))
        summary[case]["cpu_ratio"] = ratio
        print(f"{case:10} {'ratio':14} {'':>8} {ratio:11.2f}  (isthmus / dovecot-proxy; "
              f"target <= 0.50)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "summary": summary, "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
