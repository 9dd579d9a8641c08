#!/usr/bin/env bash
# The whole Isthmus test suite, from a clean clone on Debian 12: installs what
# is missing (apt-get), builds, and runs every test with ctest. Exits non-zero
# on any failure.
#
# Two builds run the same suite:
#   build/ci     RelWithDebInfo, warnings are errors (also builds and tests
#                the Debian package, test "package.deb")
#   build/asan   Debug with AddressSanitizer + UndefinedBehaviorSanitizer
#                (skip with ISTHMUS_SANITIZERS=0 for a quicker local run)
# and, between them, the libFuzzer targets for a short while each (build/fuzz;
# skip with ISTHMUS_FUZZ=0). Each stage's duration is printed at the end.
# Extra arguments go to ctest, e.g. tests/run.sh -R system.imap
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
jobs=$(nproc)

# Each stage's duration, printed at the end (also when a stage fails).
stages=()
stage() {
  local name=$1; shift
  local t0=$(date +%s)
  local rc=0
  "$@" || rc=$?
  stages+=("$(printf '%-34s %5ss%s' "$name" $(( $(date +%s) - t0 )) \
              "$([ $rc -eq 0 ] || echo "  FAILED ($rc)")")")
  return $rc
}
print_stages() {
  echo "== stage durations" >&2
  local s
  for s in "${stages[@]}"; do echo "   $s" >&2; done
  echo "   total                              $(( $(date +%s) - started ))s" >&2
}
trap print_stages EXIT

stage "install-deps" deploy/install-deps.sh

build_suite() {
  local dir=$1; shift
  echo "== $dir: configure and build" >&2
  # (stage runs this in an || list, where set -e does not stop it: say so.)
  cmake -S . -B "$dir" -G Ninja -DISTHMUS_WERROR=ON "$@" >/dev/null || return
  cmake --build "$dir" -j "$jobs"
}
test_suite() {
  local dir=$1; shift
  echo "== $dir: test" >&2
  # System tests share loopback ports and real daemons: ctest runs them one
  # at a time (RESOURCE_LOCK); unit tests run alongside.
  local rc=0
  (cd "$dir" && ctest --output-on-failure --timeout 900 -j "$jobs" "$@") || rc=$?
  # Figures worth seeing in CI's log: the package test's (build/ci only:
  # build time, size, security score) and the two topologies' (CalMail's
  # delivery delays, the DBMail islands' failover: test_islands.py) and the
  # moves' (test_move.py: pre-copy and interruption, a 1 GB mailbox).
  local figures='^(package: |CALMAIL |ISLANDS |MOVE-BENCH )'
  if [ -f "$dir/Testing/Temporary/LastTest.log" ] &&
     grep -Eq "$figures" "$dir/Testing/Temporary/LastTest.log"; then
    grep -E "$figures" "$dir/Testing/Temporary/LastTest.log" >&2 || true
  fi
  return $rc
}

# The libFuzzer targets (tests/fuzz/), each for a short time on its corpus
# plus new inputs: clang, ASan+UBSan, only the libraries they need. A
# finding fails the run; its reproducer is in build/fuzz/ci-runs/findings/.
# Skipped with ISTHMUS_FUZZ=0, and by default when ctest arguments narrow
# the run (ISTHMUS_FUZZ=1 keeps it). Long campaigns: tests/fuzz.sh.
fuzz_stage() {
  echo "== build/fuzz: build the fuzz targets" >&2
  ISTHMUS_JOBS=$jobs tests/fuzz/build.sh || return
  echo "== build/fuzz: run each target for ${ISTHMUS_FUZZ_SECONDS:-15}s" >&2
  python3 tests/fuzz/run_fuzz.py --bin build/fuzz/bin --seconds "${ISTHMUS_FUZZ_SECONDS:-15}" \
    --jobs "$jobs" --out build/fuzz/ci-runs
}

stage "build/ci: build" build_suite build/ci -DCMAKE_BUILD_TYPE=RelWithDebInfo
stage "build/ci: test" test_suite build/ci "$@"
if [ "${ISTHMUS_FUZZ:-$([ $# -eq 0 ] && echo 1 || echo 0)}" != 0 ]; then
  stage "build/fuzz: libFuzzer targets" fuzz_stage
fi
if [ "${ISTHMUS_SANITIZERS:-1}" != 0 ]; then
  # abort_on_error: a sanitizer finding kills the process, which the system
  # tests notice (the harness also scans each isthmus log for reports).
  export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
  # The large move's figures come from build/ci; here (the mover is Python,
  # only isthmus runs sanitized) 200 MB of it are enough.
  export ISTHMUS_MOVE_BENCH_MB=${ISTHMUS_MOVE_BENCH_MB:-200}
  stage "build/asan: build" build_suite build/asan -DCMAKE_BUILD_TYPE=Debug \
    -DISTHMUS_SANITIZE=address,undefined
  # Includes fuzz.network, the network fuzzer against this build.
  stage "build/asan: test" test_suite build/asan "$@"
fi
echo "== all suites passed in $(( $(date +%s) - started ))s" >&2
