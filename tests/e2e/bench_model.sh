#!/usr/bin/env bash
# End to end: `epserve bench model` on both tiny presets at tiny shapes (one
# rank, and the Qwen3 preset on 2 ranks), then checks its JSON against
# itself and the model's dimensions: one row per (shape, policy), baseline
# first with K = k_base, Ban with fewer experts and no more bytes per token,
# pick (no domain profile) equal to baseline, bytes per step and FLOPs per
# step as the documented formulas give them from the row's own counts, limit
# and fractions as their definitions, per-rank tokens/s summing to the row's.
# The cpu backend's JSON says it counted no host<->device copies. No timing
# is asserted; only that times and fractions are positive.
set -euo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common=(--prefill 8 --decode 1,2 --steps 2 --context 5 --peak-size 256 --quiet)

"$bin" bench model --model tiny-qwen3-moe --routing baseline,ban,pick,banpick "${common[@]}" \
  --threads 2 --json "$tmp/q1.json" > "$tmp/q1.txt"
"$bin" bench model --model tiny-deepseek-v2 --routing ban "${common[@]}" \
  --json "$tmp/d1.json" > "$tmp/d1.txt"
mpirun -np 2 --oversubscribe "$bin" bench model --model tiny-qwen3-moe --routing ban,baseline \
  "${common[@]}" --threads 1 --json "$tmp/q2.json" > "$tmp/q2.txt"

# Usage errors name the option.
if "$bin" bench model --model tiny-qwen3-moe --dtype f16 2> "$tmp/err.txt"; then
  echo "FAIL: --dtype f16 accepted"; exit 1
fi
grep -q -- "--dtype" "$tmp/err.txt" || { echo "FAIL: --dtype error does not name it"; exit 1; }
if "$bin" bench model --model tiny-qwen3-moe --decode 0 2> "$tmp/err.txt"; then
  echo "FAIL: --decode 0 accepted"; exit 1
fi
grep -q -- "--decode" "$tmp/err.txt" || { echo "FAIL: --decode error does not name it"; exit 1; }

python3 - "$tmp" "$(dirname "$0")/lib" <<'PY'
import json, sys
tmp = sys.argv[1]
sys.path.insert(0, sys.argv[2])
from jcheck import check, close, finish

# (file, world, policies in row order, k_base, experts)
runs = [("q1", 1, ["baseline", "ban", "pick", "banpick"], 8, 64),
        ("d1", 1, ["baseline", "ban"], 6, 64),
        ("q2", 2, ["baseline", "ban"], 8, 64)]
for name, world, pols, k_base, n_exp in runs:
    d = json.load(open(f"{tmp}/{name}.json"))
    rows = d["rows"]
    table = [l for l in open(f"{tmp}/{name}.txt") if l.strip() and not l.startswith("#")]
    check(d["bench"] == "model" and "bench model" in d["command"], f"{name}: bench/command keys")
    check(d["world_size"] == world and d["k_base"] == k_base, f"{name}: world_size, k_base")
    check(d["read_gbs"] > 0 and d["bf16_gemm_peak_gflops"] > 0, f"{name}: bandwidth and peak > 0")
    # The cpu backend counts no host<->device copies and says so (the cuda
    # backend's fields: tests/cuda/bench_model_cuda.sh).
    check(d["backend"] == "cpu" and d["copies_counted"] is False and "copies_note" in d
          and "device" not in d and all("copy_bytes_per_step" not in r for r in rows),
          f"{name}: cpu backend without copy fields")
    shapes = [("prefill", 8), ("decode", 1), ("decode", 2)]
    check(len(rows) == len(shapes) * len(pols), f"{name}: {len(rows)} rows, expected "
          f"{len(shapes) * len(pols)}")
    check(len(table) == len(rows), f"{name}: {len(table)} table rows, {len(rows)} in the JSON")
    wb, par = d["weight_bytes"], d["params"]
    n_moe, ctx, warm, steps = d["n_moe_layers"], d["context"], d["warmup"], d["steps"]
    for i, r in enumerate(rows):
        mode, T = shapes[i // len(pols)]
        pol = pols[i % len(pols)]
        base = rows[i - i % len(pols)]
        tag = f"{name} {mode} {T} {pol}"
        check(r["mode"] == mode and r["tokens_per_step"] == T and r["policy"] == pol,
              f"{tag}: row order (found {r['mode']} {r['tokens_per_step']} {r['policy']})")
        seqs = 1 if mode == "prefill" else T
        check(r["sequences"] == seqs, f"{tag}: sequences")
        for k in ("tokens_per_s", "min_rank_tokens_per_s", "step_ms", "gflops", "frac_peak",
                  "frac_limit", "limit_tokens_per_s", "bytes_per_token", "read_gbs"):
            check(r[k] > 0, f"{tag}: {k} = {r[k]} > 0")
        rt = r["rank_tokens_per_s"]
        check(len(rt) == world and close(sum(rt), r["tokens_per_s"])
              and close(min(rt), r["min_rank_tokens_per_s"]), f"{tag}: per-rank tokens/s")
        n_steps = 1 if mode == "prefill" else steps
        check(r["timed_steps"] == n_steps and r["tokens_timed"] == n_steps * T * world,
              f"{tag}: timed steps and tokens")
        # Bytes: every rank's dense, the embedding rows, the distinct experts.
        dist = r["distinct_experts_per_layer"]
        check(0 < dist <= min(n_exp, r["avg_k"] * T * world) + 1e-9, f"{tag}: distinct {dist}")
        bps = world * wb["dense"] + T * world * wb["embed_row"] + dist * n_moe * wb["expert"]
        check(close(r["bytes_per_step"], bps), f"{tag}: bytes_per_step {r['bytes_per_step']} "
              f"!= {bps}")
        check(close(r["bytes_per_token"], r["bytes_per_step"] / (T * world)), f"{tag}: bytes/token")
        check(close(r["limit_tokens_per_s"], r["read_gbs"] * 1e9 / r["bytes_per_token"]),
              f"{tag}: limit")
        check(close(r["frac_limit"], r["tokens_per_s"] / r["limit_tokens_per_s"]), f"{tag}: xlimit")
        # prefill rows carry the peak measured beside their steps
        pk = r.get("peak_gflops", d["bf16_gemm_peak_gflops"])
        check((r["mode"] == "prefill") == ("peak_gflops" in r), f"{tag}: peak beside prefill rows only")
        check(close(r["frac_peak"], r["gflops"] / pk), f"{tag}: xpeak")
        # FLOPs: products of the parameters each token passes, lm_head per
        # sequence, attention per (query, key) pair over the causal context.
        if mode == "prefill":
            qk = T * (T + 1) / 2
        else:  # mean over the timed steps of one new token after len0 = ctx + warm + s
            qk = T * (ctx + warm + (steps - 1) / 2 + 1)
        pairs = r["avg_k"] * n_moe * T
        fl = world * (2 * (par["dense"] * T + par["expert"] * pairs + par["lm_head"] * seqs)
                      + par["attn_flops_per_pair"] * qk)
        check(close(r["flops_per_step"], fl, 1e-6), f"{tag}: flops_per_step "
              f"{r['flops_per_step']} != {fl}")
        check(close(r["speedup"], r["tokens_per_s"] / base["tokens_per_s"]), f"{tag}: speedup")
        check(close(r["x_bytes"], base["bytes_per_token"] / r["bytes_per_token"]), f"{tag}: xbytes")
        if pol == "baseline":
            check(abs(r["avg_k"] - k_base) < 1e-9, f"{tag}: baseline K {r['avg_k']} != {k_base}")
            if mode == "decode" and T == 1 and world == 1:
                check(abs(dist - k_base) < 1e-9, f"{tag}: one token touches k_base experts")
        if pol in ("ban", "banpick"):
            check(r["avg_k"] < k_base, f"{tag}: Ban K {r['avg_k']} < {k_base}")
            check(r["bytes_per_token"] <= base["bytes_per_token"] and r["x_bytes"] >= 1,
                  f"{tag}: Ban reads no more bytes per token than baseline")
        if pol == "pick":  # no domain profile: baseline's routes
            check(r["avg_k"] == base["avg_k"] and r["bytes_per_token"] == base["bytes_per_token"],
                  f"{tag}: pick without a profile routes as baseline")
    print(f"ok    {name}: {len(rows)} rows consistent")
finish()
PY
