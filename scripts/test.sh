#!/usr/bin/env bash
# The test command: installs dependencies, builds, runs every test (unit,
# MPI at 1-4 ranks, end-to-end) with ctest. Exit status is ctest's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/deps.sh"
"$root/scripts/build.sh"
build=${EP_BUILD_DIR:-$root/build}
cd "$build"
ctest --output-on-failure -j "$(nproc)" "$@"
