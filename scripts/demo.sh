#!/usr/bin/env bash
# The main job on one machine: installs dependencies, builds, writes the tiny
# synthetic Qwen3-MoE checkpoint (HF layout), then runs `epserve bench` on 4
# ranks (2 "nodes" of 2) with every routing policy side by side (defaults,
# comm-aware Ban, and Ban&Pick with the profile `epserve calibrate` made for
# this model) and prints the table. JSON lands in out/bench.json. Takes a few minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/deps.sh
scripts/build.sh
bin=${EP_BUILD_DIR:-$root/build}/epserve

model=models/tiny-qwen3-moe
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
  --routing "${EP_DEMO_ROUTING:-baseline,ban,pick,banpick,topp,des,configs/routing/ban-local.yaml,calibrated/tiny-qwen3-moe-calibrated}" \
  --tokens 128 --steps 5 --warmup 1 --ranks-per-node 2 --check --json out/bench.json
echo "# results: out/bench.json"
