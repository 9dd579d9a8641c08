#!/usr/bin/env bash
# The Isthmus demo: four real Dovecot (or, with --nodes cyrus, Cyrus) nodes in
# two islands on loopback, and isthmus in front on 127.0.0.1:1143. Ctrl-C stops
# everything.
#
# usage: deploy/demo.sh [--no-build] [--binary PATH] [demo.py options...]
#   --no-build      do not run cmake; use an existing binary
#   --binary PATH   the isthmus binary to run (default: build/release/bin/isthmus)
#   ISTHMUS_BIN=PATH  same as --no-build --binary PATH
# Other options go to tests/lab/demo.py (--no-isthmus, --keep, --port N,
#   --directory static|ldap|sql, --auth backend|directory, --nodes dovecot|cyrus).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
binary="${ISTHMUS_BIN:-}"
[ -n "$binary" ] && build=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --binary) binary="${2:?--binary needs a path}"; shift ;;
    --binary=*) binary="${1#*=}" ;;
    --no-isthmus) build=0; args+=("$1") ;;
    -h|--help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done

deploy/install-deps.sh

if [ "$build" = 1 ]; then
  cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build build/release --target isthmus isthmusctl
fi

if [ -z "$binary" ]; then
  binary=build/release/bin/isthmus
fi

# Debian's python3, not a pyenv shim (docs: shared/real-servers.md).
exec /usr/bin/python3 tests/lab/demo.py --binary "$binary" "${args[@]}"
