#!/usr/bin/env bash
# The emulated-device job (docs/cuda.md): the whole --backend cuda path on
# the emulated CUDA device (tests/emu), no GPU needed.
#   1. build-emu/ (-DEP_CUDA=ON -DEP_CUDA_EMU=ON): every cuda.* test, none
#      may skip;
#   2. `bench --backend cuda --check` at np 2 on both tiny presets: 0 wrong
#      rows, planned == measured bytes;
#   3. `logits` and `generate --backend cuda` against the CPU path: logits
#      within EP_EMU_LOGIT_TOL (row-wise max|a-b| / max|b|) of the CPU with
#      BF16 experts and the same argmax at every position
#      (scripts/logits_cmp.py); every token greedy generation picks is,
#      under the CPU BF16 model's logits for the same prefix, within that
#      tolerance of the best (BF16 may break a near-tie the other way);
#   4. scripts/gpu-check.sh --emulated --only forward,floor: the script a
#      GPU machine runs first, its whole-forward checks and floor table, so
#      that it is known to work before it meets a GPU;
#   5. `serve --backend cuda` at np 2: the official openai npm client
#      (completion, chat, streaming, a 404) and `bench serve` answered;
#   6. build-emu-asan/ (the same with ASan + UBSan + LSan): every cuda.* test
#      again.
#   scripts/emu.sh [--no-asan]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${EP_JOBS:-$(nproc)}
asan=1
case "${1:-}" in
  --no-asan) asan=0 ;;
  "") ;;
  *) echo "emu.sh: unknown option '$1' (expected --no-asan or nothing)" >&2; exit 2 ;;
esac
py=/usr/bin/python3
tol=${EP_EMU_LOGIT_TOL:-0.05}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export EP_EMU_DEVICES=4 # one emulated GPU per rank

"$root/scripts/deps.sh"

# Runs the cuda.* tests of build $1; fails when one fails or skips (on the
# emulated device every one of them must run).
# cuda_tests BUILD [ctest arguments]: every cuda.* test of BUILD.
cuda_tests() {
  local b="$1"
  shift
  local log="$b/emu-ctest.log"
  (cd "$b" && ctest --output-on-failure -j "$jobs" -R '^cuda\.' "$@") | tee "$log"
  if grep -q 'Skipped' "$log"; then
    echo "emu.sh: a cuda test skipped on the emulated device (see $log)" >&2
    return 1
  fi
}

# Configures build $1 (extra cmake arguments after it) and builds only what
# this job runs: the cuda.* tests' binaries and epserve.
emu_build() {
  local b="$1"
  shift
  cmake -S "$root" -B "$b" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEP_CUDA=ON -DEP_CUDA_EMU=ON "$@" \
    >/dev/null
  local targets
  targets=$(cmake --build "$b" --target help | grep -oE '\btest_(cuda|emu|moe_cuda|moe_dev|mpi_nccl)[a-z_]*' |
    sort -u)
  # shellcheck disable=SC2086 # one target per word
  cmake --build "$b" -j "$jobs" --target epserve $targets
}

build="$root/build-emu"
emu_build "$build"
cuda_tests "$build"

bin="$build/epserve"
out="$build/emu-check"
rm -rf "$out" && mkdir -p "$out"
run2() { mpirun -np 2 --oversubscribe "$bin" "$@"; }

echo "# bench --backend cuda --check, np 2"
for m in tiny-qwen3-moe tiny-deepseek-v2; do
  run2 bench --model "$m" --backend cuda --routing baseline,ban,banpick --tokens 48 --steps 2 \
    --warmup 1 --check --quiet --json "$out/bench_$m.json"
  "$py" - "$out/bench_$m.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bad = []
for p in d["policies"]:
    if p["wrong"] != 0 or p["checked_tokens"] == 0:
        bad.append(f'{p["name"]}: {p["wrong"]} wrong of {p["checked_tokens"]} checked')
    if p["planned_bytes"] != p["measured_bytes"]:
        bad.append(f'{p["name"]}: planned {p["planned_bytes"]} != measured {p["measured_bytes"]}')
print(f'{d["model"]}: ' + ("; ".join(bad) if bad else
      f'{len(d["policies"])} policies, 0 wrong rows, planned == measured'))
sys.exit(1 if bad else 0)
PY
done

echo "# logits and generate --backend cuda vs the CPU path, np 2"
prompt=1,2,3,4,5,6,7
for m in tiny-qwen3-moe tiny-deepseek-v2; do
  run2 logits --model "$m" --tokens "$prompt" --backend cuda --out "$out/logits_${m}_cuda.bin"
  run2 logits --model "$m" --tokens "$prompt" --expert-dtype bf16 --out "$out/logits_${m}_bf16.bin"
  run2 generate --model "$m" --tokens "$prompt" --max-tokens 8 --ignore-eos --backend cuda --json \
    >"$out/generate_${m}_cuda.json"
  ids=$("$py" -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["ids"])))' \
    "$out/generate_${m}_cuda.json")
  # The CPU model's logits for every prefix of prompt + generated ids, with BF16
  # weights and experts as the device keeps them (fp32 would move a DeepSeek
  # near-tie: gap 0.147 on tiny-deepseek-v2, 0 with BF16).
  run2 logits --model "$m" --tokens "$prompt,$ids" --dtype bf16 --expert-dtype bf16 \
    --out "$out/logits_${m}_teacher.bin"
  # scripts/logits_cmp.py: argmax equal at every position, relative error in budget.
  "$py" "$root/scripts/logits_cmp.py" "$out/logits_${m}_cuda.bin" "$out/logits_${m}_bf16.bin" \
    "$(echo "$prompt" | tr ',' '\n' | grep -c .)" "$tol" "$m: logits cuda vs cpu-bf16"
  "$py" - "$root/scripts" "$m" "$tol" "$prompt" "$ids" "$out" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from logits_cmp import rows
m, tol, prompt, ids, out = sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
P, G = len(prompt.split(",")), [int(t) for t in ids.split(",")]
teach = rows(f"{out}/logits_{m}_teacher.bin", P + len(G))
worst = 0.0
for i, t in enumerate(G):  # row P-1+i predicts generated token i
    r = teach[P - 1 + i]
    worst = max(worst, (max(r) - r[t]) / max(abs(y) for y in r))
ok = worst <= tol
print(f"{m}: generated {len(G)} tokens, worst gap to the CPU's best {worst:.4f} "
      f"(tolerance {tol}) {'ok' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
done

echo "# scripts/gpu-check.sh --emulated --only forward,floor: the GPU machine's check, here first"
if ! "$root/scripts/gpu-check.sh" --emulated --build "$build" --only forward,floor \
  --out "$out/gpu-check" >"$out/gpu-check.out" 2>&1; then
  tail -n 40 "$out/gpu-check.out" >&2
  echo "emu.sh: scripts/gpu-check.sh --emulated failed (all of it: $out/gpu-check.out)" >&2
  exit 1
fi
grep -vE '^(# written|#$)' "$out/gpu-check/summary.txt"

echo "# serve --backend cuda, np 2: the official openai client, then bench serve"
# tests/e2e/lib/serve.sh: the server under mpirun, its URL, stopped on exit.
source "$root/tests/e2e/lib/serve.sh"
set -e
key=emu-$$
e2e_serve_start cuda 2 --model tiny-qwen3-moe --backend cuda --routing baseline,banpick \
  --api-key "$key" --max-model-len 512
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "emu.sh: node/npm missing (scripts/deps.sh installs them)" >&2
  exit 1
fi
mkdir -p "$tmp/npm"
if (cd "$tmp/npm" && timeout 60 npm install --no-audit --no-fund --silent openai@4 >"$tmp/npm.log" 2>&1); then
  cp "$root/tests/e2e/serve/openai_client.mjs" "$tmp/npm/"
  node "$tmp/npm/openai_client.mjs" "$url" "$key" tiny-qwen3-moe
elif grep -qiE 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|network' "$tmp/npm.log"; then
  echo "emu.sh: the npm registry is unreachable: the openai client part is left out"
else
  cat "$tmp/npm.log" >&2
  exit 1
fi
EPSERVE_API_KEY=$key "$bin" bench serve --url "$url" --routing banpick --num-prompts 8 \
  --max-concurrency 4 --input-len 48 --output-len 8 --json "$out/bench_serve.json" >/dev/null
if ! "$py" - "$out/bench_serve.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ok = d["completed"] == 8 and d["failed"] == 0 and 0 < d["avg_k"] < 8
print(f'bench serve --backend cuda: {d["completed"]} of 8 answered, avg K {d["avg_k"]:.3f} '
      f'{"ok" if ok else "FAIL"}' + ("" if ok else f' (first error: {d.get("first_error")})'))
sys.exit(0 if ok else 1)
PY
then
  echo "emu.sh: bench serve failed; the server's stderr ends:" >&2
  tail -n 30 "$tmp/cuda.err" >&2
  exit 1
fi
e2e_serve_stop "$server_pid"

if [ "$asan" = 1 ]; then
  echo "# the cuda tests under ASan + UBSan + LSan"
  abuild="$root/build-emu-asan"
  emu_build "$abuild" -DEP_SANITIZE=ON
  . "$root/scripts/sanitize_env.sh"
  ep_sanitize_env "$abuild"
  cuda_tests "$abuild"
fi
echo "emu.sh: the cuda backend ran on the emulated device: tests, bench --check, logits, generate,"
echo "        scripts/gpu-check.sh (forward, floor), serve"
