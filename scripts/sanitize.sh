#!/usr/bin/env bash
# The sanitizer job: builds epserve and its tests with -DEP_SANITIZE=ON
# (ASan + UBSan) into build-asan/ and runs the unit and MPI tests with every
# UBSan finding fatal and LeakSanitizer on (settings and Open MPI's leak
# suppressions: scripts/sanitize_env.sh).
#   scripts/sanitize.sh [extra ctest arguments, e.g. -R unit.test_safetensors]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${EP_ASAN_BUILD_DIR:-$root/build-asan}
jobs=${EP_JOBS:-$(nproc)}

"$root/scripts/deps.sh"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEP_SANITIZE=ON -DEP_CUDA=OFF \
  >/dev/null
cmake --build "$build" -j "$jobs"

. "$root/scripts/sanitize_env.sh"
ep_sanitize_env "$build"
cd "$build"
ctest --output-on-failure -j "$jobs" -R '^(unit|mpi)\.' "$@"
