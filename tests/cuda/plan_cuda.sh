#!/usr/bin/env bash
# `epserve plan --backend cuda` against a measured run on the emulated
# device: for 1 and 2 ranks, plan on a cluster of that many GPUs with the
# sizes `generate` gives the model (context min(max_pos, 4096) = 4096, one
# sequence per rank with a whole context of KV blocks, the engine's 512
# tokens per step), then `generate --backend cuda --json`, whose
# device_bytes is what rank 0's device holds after the run
# (ep_model_dev_mem_get + ep_moe_device_bytes). Every part and the total
# must be equal, byte for byte.
#   plan_cuda.sh EPSERVE MPIEXEC PRESET
set -euo pipefail
bin=$1 mpiexec=$2 preset=$3
export EP_EMU_DEVICES=${EP_EMU_DEVICES:-4}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for np in 1 2; do
  cat > "$tmp/emu$np.yaml" << YAML
name: emu$np
gpu: emulated
nodes: 1
gpus_per_node: $np
mem_gb: 1
hbm_GBps: 1
bf16_tflops: 1
nvlink_GBps: 1
nvlink_latency_us: 1
inter_GBps: 1
inter_latency_us: 1
YAML
  "$bin" plan --model "$preset" --cluster "$tmp/emu$np.yaml" --backend cuda --context 4096 \
    --batch 1 --chunk 512 --json "$tmp/plan$np.json" > /dev/null
  "$mpiexec" -np "$np" --oversubscribe "$bin" generate --model "$preset" --tokens 3,1,4 \
    --max-tokens 3 --ignore-eos --backend cuda --json > "$tmp/gen$np.json"
  python3 - "$tmp/plan$np.json" "$tmp/gen$np.json" "$preset" "$np" << 'PY'
import json, sys
plan = json.load(open(sys.argv[1]))["clusters"][0]["cuda"]
run = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])["device_bytes"]
parts = ["weights_bf16", "weights_f32", "kv", "workspace", "experts", "expert_scratch",
         "router", "exchange", "transport", "total"]
bad = [f"{p}: plan {plan[p]}, run {run[p]}" for p in parts if plan[p] != run[p]]
print(f"{sys.argv[3]} np {sys.argv[4]}: plan total {plan['total']} bytes, run {run['total']}")
if bad:
    sys.exit("plan_cuda.sh: plan --backend cuda differs from what generate --backend cuda "
             "allocated; expected equal: " + "; ".join(bad))
PY
done
