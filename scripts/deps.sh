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
  libpcre2-dev libutf8proc-dev # tokenizer: pre-tokenizer regex, NFC
  libmicrohttpd-dev            # `serve`: the HTTP front end
  libcurl4-openssl-dev         # `bench serve`: the HTTP client
  python3-numpy                # tests/numpy: the independent forward reference
  python3-jinja2               # tests/e2e/chat_template_parity.sh: the reference chat template renderer
  gnuplot-nox
  python3
  clang libclang-rt-dev llvm # scripts/fuzz.sh: libFuzzer, sanitizer runtimes, llvm-symbolizer
  clang-format               # scripts/format.sh --check (CI): the tree matches .clang-format
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js + npm run the parity and client tests (tokenizer vs the official
# Qwen3 tokenizer, the `openai` client against `serve`); a node that is
# already installed (from any source, with its npm) is kept.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi

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
