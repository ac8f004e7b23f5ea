#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang (ASan + UBSan) into
# build-fuzz/ and runs each for a fixed time. Inputs it finds are kept in
# build-fuzz/corpus/<target>/ (the seeds in tests/fuzz/corpus/ are only read);
# a crash leaves build-fuzz/artifacts/<target>-crash-* and fails the script.
#   scripts/fuzz.sh [--seconds N] [--jobs J] [TARGET...]   (N defaults to 60)
# TARGET is a short name (safetensors, st_index, model_yaml, hf_config, routing_yaml,
# route_input, trace, http_request, tokenizer, jinja); none given: all of them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${EP_FUZZ_BUILD_DIR:-$root/build-fuzz}
seconds=60
jobs=${EP_JOBS:-$(nproc)}
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: --seconds expects a whole number, found '$seconds'" >&2; exit 2 ;; esac

# Every target has its seeds and every seed folder its target: a renamed
# target would otherwise drop out of "all of them" without a word.
all=()
for src in "$root"/tests/fuzz/fuzz_*.c; do
  t=$(basename "$src" .c); t=${t#fuzz_}
  [ "$t" = util ] && continue
  if [ ! -d "$root/tests/fuzz/corpus/$t" ]; then
    echo "fuzz.sh: tests/fuzz/fuzz_$t.c has no seed folder tests/fuzz/corpus/$t/" >&2
    exit 2
  fi
done
for d in "$root"/tests/fuzz/corpus/*/; do
  t=$(basename "$d")
  if [ ! -f "$root/tests/fuzz/fuzz_$t.c" ]; then
    echo "fuzz.sh: tests/fuzz/corpus/$t/ has no target tests/fuzz/fuzz_$t.c" >&2
    exit 2
  fi
  all+=("$t")
done
if [ ${#targets[@]} -eq 0 ]; then targets=("${all[@]}"); fi

"$root/scripts/deps.sh"
CC=${EP_FUZZ_CC:-clang} cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DEP_FUZZ=ON -DEP_CUDA=OFF >/dev/null
cmake --build "$build" -j "$jobs" --target fuzz

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$build/artifacts"
# The targets' temporary files: a crash skips their own cleanup, this does not.
tmp=$(mktemp -d /dev/shm/epfuzz-run.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export EP_FUZZ_TMP=$tmp
failed=()
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  seeds="$root/tests/fuzz/corpus/$t"
  if [ ! -x "$bin" ] || [ ! -d "$seeds" ]; then
    echo "fuzz.sh: no target '$t' (expected $bin and $seeds)" >&2
    exit 2
  fi
  mkdir -p "$build/corpus/$t"
  echo "# fuzz_$t: ${seconds}s"
  # -timeout: one input taking longer is a finding (a parser must not hang);
  # -max_len: the route_input seeds are a few hundred floats. stdin is
  # /dev/null: a routing YAML may name any file, /dev/stdin included.
  if ! "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
       -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
       "$build/corpus/$t" "$seeds" </dev/null >"$build/artifacts/$t.log" 2>&1; then
    grep -E -A 12 'ERROR|runtime error|contract broken' "$build/artifacts/$t.log" | head -n 40 || true
    grep -E 'Test unit written' "$build/artifacts/$t.log" || true
    failed+=("$t")
  else
    grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$build/artifacts/$t.log" | tail -n 2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in $build/artifacts/; reproduce with" \
       "$build/tests/fuzz/fuzz_<target> <input>)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s) ran ${seconds}s each, no crash"
