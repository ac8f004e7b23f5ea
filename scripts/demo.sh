#!/usr/bin/env bash
# The main job on one machine: installs dependencies, builds, writes the tiny
# synthetic Qwen3-MoE checkpoint (HF layout), then runs `epserve bench` on 4
# ranks (2 "nodes" of 2) with every routing policy side by side (Ban and
# Ban&Pick with the profile `epserve calibrate` made for this model, which keep
# about the paper's avg K on its synthetic routing, docs/synthetic.md §7; the
# other policies, comm-aware Ban and uncalibrated Ban last with their
# defaults) and prints the table. JSON lands in out/bench.json. Takes a few minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/deps.sh
scripts/build.sh
bin=${EP_BUILD_DIR:-$root/build}/epserve

model=models/tiny-qwen3-moe
# A checkpoint made before the preset set its routing concentration
# (config.json without "epserve_synth", docs/synthetic.md §7) routes its
# synthetic inputs otherwise: make it again.
if [ -f "$model/config.json" ] && ! grep -q '"epserve_synth"' "$model/config.json"; then
  rm -rf "$model"
fi
if [ ! -f "$model/config.json" ]; then
  "$bin" make-model --preset tiny-qwen3-moe --out "$model"
fi
mkdir -p out

# Open MPI refuses to run as root unless told; more ranks than cores needs
# --oversubscribe; one BLAS thread per rank.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OPENBLAS_NUM_THREADS=1
mpirun -np 4 --oversubscribe "$bin" bench --model "$model" \
  --routing "${EP_DEMO_ROUTING:-baseline,calibrated/tiny-qwen3-moe-ban-calibrated,pick,calibrated/tiny-qwen3-moe-calibrated,topp,des,configs/routing/ban-local.yaml,ban,banpick}" \
  --tokens 128 --steps 5 --warmup 1 --ranks-per-node 2 --check --json out/bench.json
echo "# results: out/bench.json"

# ---- serving: `epserve serve` on 4 ranks, `epserve bench serve` against it with
# the baseline routing and with Ban&Pick (a request names its profile), both
# printed. The server is stopped on every exit path.
# A checkpoint written before make-model wrote tokenizer.json has none: serve
# the preset then (the same synthetic weights, generated in memory).
serve_model=$model
[ -f "$model/tokenizer.json" ] || serve_model=tiny-qwen3-moe
serve_log=out/serve.log
mpirun -np 4 --oversubscribe --mca odls_base_sigkill_timeout 3 "$bin" serve --model "$serve_model" --port 0 \
  --routing baseline,banpick,calibrated/tiny-qwen3-moe-calibrated --ranks-per-node 2 > "$serve_log" 2>&1 &
serve_pid=$!
trap 'kill -TERM $serve_pid 2>/dev/null; sleep 2; kill -KILL $serve_pid 2>/dev/null || true' EXIT
url=
for _ in $(seq 1200); do
  url=$(grep -o 'http://127.0.0.1:[0-9]*' "$serve_log" | head -1 || true)
  [ -n "$url" ] && break
  kill -0 $serve_pid 2>/dev/null || break
  sleep 0.1
done
[ -n "$url" ] || { echo "epserve serve did not start:"; cat "$serve_log"; exit 1; }
for _ in $(seq 100); do curl -sf "$url/health" > /dev/null && break; sleep 0.2; done
# A few requests first so that neither measured run pays the first steps' warm-up.
"$bin" bench serve --url "$url" --num-prompts 4 --input-len 16 --output-len 4 > /dev/null
# Prompts of 256 tokens: 4 per rank fill more than one step's slot budget at
# baseline, so Ban&Pick's smaller K shows as more tokens per step. Each
# Ban&Pick run (the policy's defaults, then the profile calibrated to the
# paper's avg K) compares itself with the baseline run and with Amdahl's law
# (the MoE-layer speedup of the `bench` run above, the MoE share of a
# baseline serving step).
serve_work=(--num-prompts "${EP_DEMO_PROMPTS:-32}" --request-rate inf --max-concurrency 16
  --input-len 256 --output-len 32 --seed 1)
"$bin" bench serve --url "$url" --routing baseline "${serve_work[@]}" --json out/bench_serve_baseline.json
for r in banpick calibrated/tiny-qwen3-moe-calibrated; do
  "$bin" bench serve --url "$url" --routing $r "${serve_work[@]}" --json "out/bench_serve_${r##*/}.json" \
    --compare out/bench_serve_baseline.json --moe-bench out/bench.json
done
kill -TERM $serve_pid
wait $serve_pid || true
trap - EXIT
echo "# serving results: out/bench_serve_baseline.json, out/bench_serve_banpick.json, out/bench_serve_tiny-qwen3-moe-calibrated.json"
