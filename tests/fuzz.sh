#!/usr/bin/env bash
# Long fuzzing campaigns: builds the libFuzzer targets (build/fuzz, clang,
# ASan+UBSan), runs each for N minutes at the lowest CPU priority (nice 19:
# only idle CPU), merges inputs that add coverage back into
# tests/fuzz/corpus/, and writes a report (targets, CPU time, executions,
# coverage, findings) to build/fuzz/campaign-report.md.
#
#   tests/fuzz.sh [--minutes N | --cpu-minutes N] [--jobs J] [--procs P]
#                 [TARGET...]     (default: 60 minutes, 2 jobs, 1 proc, all)
#
# --minutes is wall time; --cpu-minutes runs each target until it has used N
# minutes of CPU, however long that takes at nice 19 on a busy machine (a
# campaign's "1 CPU-hour per target" is --cpu-minutes 60). --jobs is how many
# targets run at once, --procs how many fuzzer processes each target runs on
# its shared corpus (their CPU adds up): imap_session, one loopback exchange
# per input, keeps a process at about a third of a core, so give it 3.
#
# Findings: build/fuzz/campaign/findings/TARGET/ (replay one with
# build/fuzz/bin/fuzz_TARGET FILE). Fix it, then add the file to
# tests/fuzz/regressions/TARGET/ so every build replays it (ctest fuzz.replay.*).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=60
cpu_minutes=0
jobs=2
procs=1
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --cpu-minutes) cpu_minutes=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --procs) procs=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done

tests/fuzz/build.sh
python3 tests/fuzz/run_fuzz.py --bin build/fuzz/bin --seconds $((minutes * 60)) \
  --cpu-seconds $((cpu_minutes * 60)) --jobs "$jobs" --procs "$procs" \
  --nice 19 --merge --out build/fuzz/campaign --report build/fuzz/campaign-report.md \
  "${targets[@]}"
status=$?
echo "fuzz.sh: report in build/fuzz/campaign-report.md" >&2
exit $status
