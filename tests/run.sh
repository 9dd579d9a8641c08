#!/usr/bin/env bash
# The whole Isthmus test suite, from a clean clone on Debian 12: installs what
# is missing (apt-get), builds, and runs every test with ctest. Exits non-zero
# on any failure.
#
# Two builds run the same suite:
#   build/ci     RelWithDebInfo, warnings are errors
#   build/asan   Debug with AddressSanitizer + UndefinedBehaviorSanitizer
#                (skip with ISTHMUS_SANITIZERS=0 for a quicker local run)
# Extra arguments go to ctest, e.g. tests/run.sh -R system.imap
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
# Each stage's duration, printed as it ends and summed up at the end.
stage_started=$started
durations=()
stage_done() {
  local now; now=$(date +%s)
  durations+=("$1: $(( now - stage_started ))s")
  echo "== $1 took $(( now - stage_started ))s" >&2
  stage_started=$now
}

deploy/install-deps.sh
stage_done "install-deps"

jobs=$(nproc)

run_suite() {
  local dir=$1; shift
  local cmake_args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do cmake_args+=("$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  echo "== $dir: configure and build" >&2
  cmake -S . -B "$dir" -G Ninja -DISTHMUS_WERROR=ON "${cmake_args[@]}" >/dev/null
  cmake --build "$dir" -j "$jobs"
  stage_done "$dir: configure and build"
  echo "== $dir: test" >&2
  # System tests share loopback ports and real daemons: ctest runs them one
  # at a time (RESOURCE_LOCK); unit tests run alongside.
  # The package test (build/ci only) builds and installs the .deb: its
  # output (build time, size, security score) is worth seeing in CI's log.
  (cd "$dir" && ctest --output-on-failure --timeout 900 -j "$jobs" "$@")
  stage_done "$dir: test"
  if [ -f "$dir/Testing/Temporary/LastTest.log" ] && grep -q '^package: ' "$dir/Testing/Temporary/LastTest.log"; then
    grep '^package: ' "$dir/Testing/Temporary/LastTest.log" >&2 || true
  fi
}

run_suite build/ci -DCMAKE_BUILD_TYPE=RelWithDebInfo -- "$@"
if [ "${ISTHMUS_SANITIZERS:-1}" != 0 ]; then
  # abort_on_error: a sanitizer finding kills the process, which the system
  # tests notice (the harness also scans each isthmus log for reports).
  ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    run_suite build/asan -DCMAKE_BUILD_TYPE=Debug -DISTHMUS_SANITIZE=address,undefined -- "$@"
fi
printf '== %s\n' "${durations[@]}" >&2
echo "== all suites passed in $(( $(date +%s) - started ))s" >&2
