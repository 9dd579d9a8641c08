#!/usr/bin/env python3
"""Runs the libFuzzer targets of a fuzz build (tests/fuzz/, ISTHMUS_FUZZ=ON).

    run_fuzz.py --bin build/fuzz/bin --seconds 15 [--jobs 2] [--merge]
                [--report FILE] [TARGET...]

Each target runs for SECONDS of wall time (or, with --cpu-seconds, until it
has used that much CPU however long it takes at a low priority) on a scratch copy of its checked-in
corpus (tests/fuzz/corpus/NAME) plus the reproducers of fixed findings
(tests/fuzz/regressions/NAME), so it starts from what is known and tries new
inputs from there. A crash, a failed invariant, a sanitizer report, a leak,
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


def run_for_cpu(cmd: list[str], args, env: dict, log) -> tuple[float, int]:
    """Runs the fuzzer until it has used args.cpu_seconds of CPU (however long
    that takes on a loaded machine at nice 19), then interrupts it (SIGINT:
    libFuzzer prints its final stats and exits with its interrupted code, 72)."""
    cmd = [c for c in cmd if not c.startswith("-max_total_time=")]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=(lambda: os.nice(args.nice)) if args.nice else None)
    cpu = 0.0
    interrupted = False
    while proc.poll() is None:
        try:
            cpu = process_cpu(proc.pid)
        except (OSError, IndexError, ValueError):
            pass
        if cpu >= args.cpu_seconds:
            interrupted = True
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            break
        time.sleep(1.0)
    return cpu, 0 if interrupted and proc.returncode == 72 else proc.returncode


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
    log_path = os.path.join(out, "fuzz.log")
    before = set(os.listdir(findings))
    started = time.monotonic()
    cpu = 0.0
    with open(log_path, "w") as log:
        if args.cpu_seconds:
            cpu, rc = run_for_cpu(cmd, args, env, log)
            proc = subprocess.CompletedProcess(cmd, rc)
        else:
            # /usr/bin/time for this child's own CPU time (targets run in parallel).
            proc = subprocess.run(["/usr/bin/time", "-f", "cpu %U %S",
                                   *(["nice", "-n", str(args.nice)] if args.nice else []), *cmd],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.monotonic() - started
    text = open(log_path, errors="replace").read()
    m = re.findall(r"^cpu ([\d.]+) ([\d.]+)$", text, re.M)
    if m:
        cpu = float(m[-1][0]) + float(m[-1][1])
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", text)
    new = sorted(set(os.listdir(findings)) - before)
    result = {"name": name, "rc": proc.returncode, "wall": wall, "cpu": cpu,
              "execs": int(execs[-1]) if execs else 0,
              "cov": int(cov[-1][0]) if cov else 0, "ft": int(cov[-1][1]) if cov else 0,
              "corpus": int(cov[-1][2]) if cov else 0, "findings": new, "log": log_path}
    if proc.returncode != 0 and not new:
        result["findings"] = [f"(exit {proc.returncode}, see {log_path})"]
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
    p.add_argument("--jobs", type=int, default=1)
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
