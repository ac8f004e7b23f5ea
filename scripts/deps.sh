#!/usr/bin/env bash
# Installs the Debian packages epserve builds and tests with. Idempotent:
# packages already present are not fetched again, and apt is only updated
# when something is missing.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  openmpi-bin libopenmpi-dev
  libyaml-dev libjansson-dev
  libopenblas-dev
  libcmocka-dev
  gnuplot-nox
  python3
  clang libclang-rt-dev llvm # scripts/fuzz.sh: libFuzzer, sanitizer runtimes, llvm-symbolizer
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#pkgs[@]} packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
