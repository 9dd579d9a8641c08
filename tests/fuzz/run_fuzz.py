#!/usr/bin/env python3
"""Runs the libFuzzer targets of a fuzz build (tests/fuzz/, ISTHMUS_FUZZ=ON).

    run_fuzz.py --bin build/fuzz/bin --seconds 15 [--jobs 2] [--procs 1]
                [--merge] [--report FILE] [TARGET...]

Each target runs for SECONDS of wall time (or, with --cpu-seconds, until it
has used that much CPU however long it takes at a low priority) on a scratch copy of its checked-in
corpus (tests/fuzz/corpus/NAME) plus the reproducers of fixed findings
(tests/fuzz/regressions/NAME), so it starts from what is known and tries new
inputs from there. --jobs runs that many targets at once; --procs runs that
many fuzzer processes per target on one shared work corpus (libFuzzer reloads
it, so they pick up each other's finds; their CPU adds up to the target's):
for a target that waits on loopback I/O and so uses a fraction of a core.
A crash, a failed invariant, a sanitizer report, a leak,
a timeout or running out of memory is a finding: the input is saved under
OUT/findings/NAME/ (replay it with `build/fuzz/bin/fuzz_NAME FILE`) and the
run exits 1. With --merge, new inputs that add coverage are merged back into
the checked-in corpus (long campaigns, tests/fuzz.sh). Prints one line per
target and writes a Markdown report (targets, CPU time, executions,
coverage, findings).
"""
import argparse
import concurrent.futures
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Per-target input size bounds: the parsers' own line limits make longer
# inputs pointless, and some checks cost size^2 (byte-by-byte replays).
MAX_LEN = {"imap_command": 2048, "config": 8192, "static_directory": 4096,
           "admin_request": 8192}


def targets_from_cmake() -> list[str]:
    text = open(os.path.join(HERE, "targets.cmake")).read()
    body = text[text.index("set(ISTHMUS_FUZZ_TARGETS") + len("set(ISTHMUS_FUZZ_TARGETS"):]
    return body[:body.index(")")].split()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (its own, not its children's)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_for_cpu(cmd: list[str], args, env: dict, logs: list) -> tuple[float, int]:
    """Runs one fuzzer process per log until together they have used
    args.cpu_seconds of CPU (however long that takes on a loaded machine at
    nice 19), then interrupts them (SIGINT: libFuzzer prints its final stats
    and exits with its interrupted code, 72). Returns the CPU used and the
    first failing exit code (0 when all were interrupted)."""
    cmd = [c for c in cmd if not c.startswith("-max_total_time=")]
    procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                              preexec_fn=(lambda: os.nice(args.nice)) if args.nice else None)
             for log in logs]
    used = [0.0] * len(procs)
    while all(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
            try:
                used[i] = process_cpu(p.pid)
            except (OSError, IndexError, ValueError):
                pass
        if sum(used) >= args.cpu_seconds:
            break
        time.sleep(1.0)
    # Done, or one process stopped (a finding): interrupt the others.
    stopped = set()
    for i, p in enumerate(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            stopped.add(i)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    # 72 from a process we interrupted is expected; anything else (the
    # process that stopped by itself) is a finding.
    codes = [p.returncode for i, p in enumerate(procs)
             if p.returncode != 0 and not (i in stopped and p.returncode == 72)]
    return sum(used), codes[0] if codes else 0


def run_target(name: str, args) -> dict:
    binary = os.path.join(args.bin, f"fuzz_{name}")
    out = os.path.join(args.out, name)
    work = os.path.join(out, "corpus")
    findings = os.path.join(args.out, "findings", name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.makedirs(findings, exist_ok=True)
    seeds = [d for d in (os.path.join(HERE, "corpus", name), os.path.join(HERE, "regressions", name))
             if os.path.isdir(d)]
    cmd = [binary, f"-max_total_time={args.seconds}", f"-max_len={MAX_LEN.get(name, 4096)}",
           "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1",
           f"-artifact_prefix={findings}/", work, *seeds]
    env = dict(os.environ, ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:allocator_may_return_null=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    log_paths = [os.path.join(out, "fuzz.log" if i == 0 else f"fuzz-{i}.log")
                 for i in range(max(1, args.procs))]
    before = set(os.listdir(findings))
    started = time.monotonic()
    cpu = 0.0
    if args.cpu_seconds:
        logs = [open(path, "w") for path in log_paths]
        try:
            cpu, rc = run_for_cpu(cmd, args, env, logs)
        finally:
            for log in logs:
                log.close()
        proc = subprocess.CompletedProcess(cmd, rc)
    else:
        # /usr/bin/time for each child's own CPU time (targets run in parallel).
        def timed(path):
            with open(path, "w") as log:
                return subprocess.run(["/usr/bin/time", "-f", "cpu %U %S",
                                       *(["nice", "-n", str(args.nice)] if args.nice else []), *cmd],
                                      stdout=log, stderr=subprocess.STDOUT, env=env)
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(log_paths)) as pool:
            runs = list(pool.map(timed, log_paths))
        proc = next((r for r in runs if r.returncode != 0), runs[0])
    wall = time.monotonic() - started
    texts = [open(path, errors="replace").read() for path in log_paths]
    execs = 0
    cov = ft = corpus = 0
    for text in texts:
        m = re.findall(r"^cpu ([\d.]+) ([\d.]+)$", text, re.M)
        if m and not args.cpu_seconds:
            cpu += float(m[-1][0]) + float(m[-1][1])
        e = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
        execs += int(e[-1]) if e else 0
        c = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", text)
        if c:  # processes share the corpus: the best one's figures, not a sum
            cov, ft, corpus = max((cov, ft, corpus), tuple(int(x) for x in c[-1]))
    new = sorted(set(os.listdir(findings)) - before)
    result = {"name": name, "rc": proc.returncode, "wall": wall, "cpu": cpu, "execs": execs,
              "cov": cov, "ft": ft, "corpus": corpus, "findings": new, "log": log_paths[0]}
    if proc.returncode != 0 and not new:
        result["findings"] = [f"(exit {proc.returncode}, see {' '.join(log_paths)})"]
    if args.merge and seeds and os.path.isdir(os.path.join(HERE, "corpus", name)):
        target_dir = os.path.join(HERE, "corpus", name)
        n0 = len(os.listdir(target_dir))
        subprocess.run([binary, "-merge=1", f"-max_len={MAX_LEN.get(name, 4096)}", target_dir, work],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        result["merged"] = len(os.listdir(target_dir)) - n0
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--cpu-seconds", type=int, default=0,
                   help="run each target until it used this much CPU (wall time unbounded)")
    p.add_argument("--jobs", type=int, default=1, help="targets run at once")
    p.add_argument("--procs", type=int, default=1, help="fuzzer processes per target")
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--merge", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--report", default=None)
    p.add_argument("targets", nargs="*")
    args = p.parse_args()
    args.out = os.path.abspath(args.out or os.path.join(args.bin, "..", "fuzz-runs"))
    names = args.targets or targets_from_cmake()
    unknown = [n for n in names if n not in targets_from_cmake()]
    if unknown:
        print(f"run_fuzz: no such target: {' '.join(unknown)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for r in pool.map(lambda n: run_target(n, args), names):
            results.append(r)
            status = "FINDING " + ", ".join(r["findings"]) if r["findings"] else "ok"
            print(f"fuzz {r['name']:<17} {r['wall']:6.0f}s wall {r['cpu']:7.0f}s cpu "
                  f"{r['execs']:>10} execs  cov {r['cov']:>5}  ft {r['ft']:>6}  "
                  f"corpus {r['corpus']:>5}  {status}", flush=True)
    total_cpu = sum(r["cpu"] for r in results)
    lines = ["| target | wall (s) | CPU (s) | executions | exec/s | coverage (edges) | features "
             "| corpus | merged | findings |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        rate = r["execs"] / r["wall"] if r["wall"] else 0
        lines.append(f"| {r['name']} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['execs']} | {rate:.0f} "
                     f"| {r['cov']} | {r['ft']} | {r['corpus']} | {r.get('merged', '-')} "
                     f"| {', '.join(r['findings']) or 'none'} |")
    lines.append(f"| **total** | {time.monotonic() - started:.0f} | {total_cpu:.0f} "
                 f"| {sum(r['execs'] for r in results)} | | | | | | "
                 f"{sum(len(r['findings']) for r in results)} |")
    report = "\n".join(lines) + "\n"
    if args.report:
        with open(args.report, "w") as f:
            f.write(report)
    bad = [r for r in results if r["findings"]]
    if bad:
        print(f"run_fuzz: {len(bad)} target(s) with findings; reproducers in {args.out}/findings/",
              file=sys.stderr)
        for r in bad:
            print(f"--- {r['name']} ({r['log']}, tail)", file=sys.stderr)
            print("".join(open(r["log"], errors="replace").readlines()[-40:]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
