#!/usr/bin/env bash
# Build an optimised isthmus and run the IMAP benchmark against haproxy.
#
#   bench/run.sh                      # defaults: ~2 minutes
#   bench/run.sh --reps 9 --json out.json
#
# Installs what is missing first (deploy/install-deps.sh: Dovecot, haproxy,
# the build tools). Builds in build/ci (RelWithDebInfo, the CI build: -O2,
# like a distribution package); BENCH_BUILD_DIR and BENCH_BUILD_TYPE change
# that (e.g. BENCH_BUILD_DIR=build/release BENCH_BUILD_TYPE=Release for -O3).
# Arguments go to bench/imap_bench.py (see --help there).
set -euo pipefail
cd "$(dirname "$0")/.."

deploy/install-deps.sh

build_dir=${BENCH_BUILD_DIR:-build/ci}
build_type=${BENCH_BUILD_TYPE:-RelWithDebInfo}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DISTHMUS_WERROR=ON >/dev/null
cmake --build "$build_dir" --target isthmus

# Each relayed session holds two descriptors in the proxy, and the client
# holds its own; the hard limit here is 20000 (docs: real-servers.md).
ulimit -n "$(ulimit -Hn)"

# /usr/bin/python3, not a pyenv shim: stdlib only, and no 0.3 s per start.
exec /usr/bin/python3 bench/imap_bench.py --isthmus "$build_dir/bin/isthmus" "$@"
