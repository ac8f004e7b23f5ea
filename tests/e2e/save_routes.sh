#!/usr/bin/env bash
# `epserve bench --save-routes FILE` writes the routes of its first timed
# step; replayed by `bench --routes-from FILE` on as many ranks and priced by
# `simulate --routes-from FILE --sample-tokens 0` on a cluster of as many
# GPUs, they give the same K, dispatch, combine and counterfactual bytes as
# the routed run (tiny Qwen3 with Ban on 2 ranks, tiny DeepSeek with Ban on
# 3 ranks and an odd token count; flat dispatch throughout: with one rank per
# node hier's stage-1 records would also carry each pair's rank). An
# unwritable path is an error naming the option.
set -euo pipefail
bin=$1
root=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

one() { # NAME MODEL NP TOKENS
  local name=$1 model=$2 np=$3 t=$4
  mpirun -np "$np" --oversubscribe "$bin" bench --model "$model" --routing ban --tokens "$t" \
    --steps 1 --warmup 1 --ranks-per-node 1 --dispatch flat --save-routes "$tmp/$name.jsonl" --quiet \
    --json "$tmp/$name-routed.json" > /dev/null
  mpirun -np "$np" --oversubscribe "$bin" bench --model "$model" --routes-from "$tmp/$name.jsonl" \
    --tokens "$t" --steps 1 --warmup 0 --ranks-per-node 1 --dispatch flat --quiet \
    --json "$tmp/$name-replay.json" > /dev/null
  sed -e 's/^nodes: .*/nodes: '"$np"'/' -e 's/^gpus_per_node: .*/gpus_per_node: 1/' \
    "$root/configs/clusters/2x8-h100.yaml" > "$tmp/$name.yaml"
  "$bin" simulate --model "$model" --cluster "$tmp/$name.yaml" --routes-from "$tmp/$name.jsonl" \
    --tokens "$t" --sample-tokens 0 --layers 0 --wire f32 --dispatch flat --quiet --json "$tmp/$name-sim.json" \
    > /dev/null
}
one qwen tiny-qwen3-moe 2 16
one ds tiny-deepseek-v2 3 7

if mpirun -np 2 --oversubscribe "$bin" bench --model tiny-qwen3-moe --tokens 4 --steps 1 \
  --save-routes "$tmp/no/such/dir/r.jsonl" --quiet > "$tmp/err.txt" 2>&1; then
  echo "FAIL: an unwritable --save-routes path was accepted"; exit 1
fi
grep -q -- "--save-routes" "$tmp/err.txt" || { cat "$tmp/err.txt"; echo "FAIL: the error does not name --save-routes"; exit 1; }
echo "ok    an unwritable --save-routes path is an error naming the option"

python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
failures = 0
def check(ok, msg):
    global failures
    print(("ok    " if ok else "FAIL  ") + msg)
    failures += not ok
for name, np_, t in (("qwen", 2, 16), ("ds", 3, 7)):
    rows = sum(1 for _ in open(f"{tmp}/{name}.jsonl"))
    a = json.load(open(f"{tmp}/{name}-routed.json"))
    moe = len(a["policies"][0]["per_layer"]["layer"])
    check(rows == np_ * t * moe, f"{name}: {rows} rows saved ({np_} ranks x {t} tokens x {moe} MoE layers)")
    a = a["policies"][0]
    b = json.load(open(f"{tmp}/{name}-replay.json"))["policies"][0]
    s = json.load(open(f"{tmp}/{name}-sim.json"))["results"][0]
    check(a["avg_k"] == b["avg_k"] and abs(a["avg_k"] - s["avg_k"]) < 1e-4,
          f'{name}: avg_k routed {a["avg_k"]:.5f}, replayed {b["avg_k"]:.5f}, simulated {s["avg_k"]:.5f}')
    for k, ks in (("dispatch_bytes", "dispatch_bytes"), ("combine_bytes", "combine_bytes"),
                  ("baseline_dispatch_bytes", "base_dispatch_bytes")):
        check(a[k] == b[k] == s[ks] > 0, f'{name}: {k} routed {a[k]}, replayed {b[k]}, simulated {s[ks]}')
sys.exit(1 if failures else 0)
PY
