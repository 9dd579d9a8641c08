#!/usr/bin/env bash
# Configures and builds the libFuzzer targets in build/fuzz (clang 14 from
# Debian, ASan+UBSan, coverage only; just the libraries the targets need).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f build/fuzz/build.ninja ]; then
  cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 -DISTHMUS_FUZZ=ON \
    -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g" >/dev/null
fi
nice -n 10 cmake --build build/fuzz -j "${ISTHMUS_JOBS:-2}" --target fuzz_targets
