#!/usr/bin/env bash
# Configures and builds epserve into build/ (or $EP_BUILD_DIR). Extra
# arguments go to cmake's configure step, e.g. -DEP_SANITIZE=ON.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${EP_BUILD_DIR:-$root/build}
jobs=${EP_JOBS:-$(nproc)}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$build" -j "$jobs"
