#!/usr/bin/env bash
# End to end: `epserve bench serve` against `epserve serve` at np 2, and EPLB
# from a load file. An `epserve bench --json` run gives the MoE-layer
# speedups; bench serve runs the same prompt-heavy workload with baseline
# routing, then Ban&Pick with --compare (that baseline run) and --moe-bench:
# every request answered; avg K 8 at baseline, below it under Ban&Pick;
# fewer predicted slots per token under Ban&Pick; the comparison's numbers
# equal their formulas over the two JSON files (served speedup, tokens per
# step ratio, Amdahl 1/((1-f)+f/s)); a --compare of another workload and a
# --moe-bench without the routing's row are usage errors naming them.
# Then the server stops and --save-expert-load leaves the loads it served
# (SGLang's {"logical_count": [L][E]}), a second server starts with
# --placement eplb --expert-load from that file and 2 redundant experts, and
# answers a greedy request exactly as the first (fp32 experts: the forward
# is bitwise invariant under placement); --expert-load without eplb and a
# malformed file are refused naming the option and the file. Bounded: < 90 s.
bin=$1
source "$(dirname "$0")/lib/serve.sh"
py=python3
model=tiny-qwen3-moe
check=e2e_check

mpirun -np 2 --oversubscribe "$bin" bench --model $model --routing baseline,banpick --tokens 64 \
  --steps 3 --quiet --json "$tmp/bench.json" > /dev/null 2> "$tmp/bench.err"
$check "$([[ -s $tmp/bench.json ]] && echo 1 || echo 0)" "bench --json at np 2"

e2e_serve_start a 2 --model $model --routing baseline,banpick --max-model-len 512 \
  --save-expert-load "$tmp/load.json"
work=(--num-prompts 8 --max-concurrency 8 --request-rate inf --input-len 200 --output-len 4 --seed 3)
"$bin" bench serve --url "$url" --routing baseline "${work[@]}" --json "$tmp/base.json" > /dev/null 2>&1
"$bin" bench serve --url "$url" --routing banpick "${work[@]}" --json "$tmp/bp.json" \
  --compare "$tmp/base.json" --moe-bench "$tmp/bench.json" > "$tmp/bp.out" 2>&1
verdict=$($py - "$tmp/base.json" "$tmp/bp.json" "$tmp/bench.json" << 'PY'
import json, sys
b, p, m = (json.load(open(f)) for f in sys.argv[1:4])
s = next(r["speedup"] for r in m["policies"] if r["name"] == "banpick")
f = b["moe_share"]
close = lambda x, y: abs(x - y) <= 1e-6 * max(1.0, abs(y))
out = []
out.append(("every request answered", b["completed"] == 8 and p["completed"] == 8 and b["failed"] + p["failed"] == 0))
out.append(("avg K 8 at baseline, %.3f under banpick" % p["avg_k"], close(b["avg_k"], 8.0) and p["avg_k"] < 7.5))
out.append(("predicted slots per token %.2f < baseline's %.2f" % (p["slots_per_step"] / p["tokens_per_step"], b["slots_per_step"] / b["tokens_per_step"]),
            p["slots_per_step"] / p["tokens_per_step"] < b["slots_per_step"] / b["tokens_per_step"]))
out.append(("served speedup %.3f = output tok/s ratio" % p["served_speedup"], close(p["served_speedup"], p["output_throughput"] / b["output_throughput"])))
out.append(("tokens per step ratio %.3f (%.1f vs %.1f)" % (p["tokens_per_step_ratio"], p["tokens_per_step"], b["tokens_per_step"]),
            close(p["tokens_per_step_ratio"], p["tokens_per_step"] / b["tokens_per_step"])))
amd = 1 / ((1 - f) + f / s)
out.append(("Amdahl %.3f from f %.3f and s %.3f" % (p["amdahl_speedup"], f, s),
            close(p["baseline_moe_share"], f) and close(p["moe_layer_speedup"], s) and close(p["amdahl_speedup"], amd)
            and close(p["served_over_amdahl"], p["served_speedup"] / amd)))
for msg, ok in out:
    print(1 if ok else 0, msg)
PY
)
while read -r ok msg; do $check "$ok" "bench serve: $msg"; done <<< "$verdict"
$check "$(grep -q 'Amdahl 1/((1-f)+f/s):' "$tmp/bp.out" && echo 1 || echo 0)" "the comparison is printed"
"$bin" bench serve --url "$url" --routing banpick --num-prompts 8 --input-len 100 --output-len 4 \
  --compare "$tmp/base.json" > /dev/null 2> "$tmp/cmp.err"
rc=$?
$check "$([[ $rc == 2 ]] && grep -q "'input_len' is 200" "$tmp/cmp.err" && echo 1 || echo 0)" \
  "--compare of another workload: exit $rc, $(head -c 160 "$tmp/cmp.err")"
"$bin" bench serve --url "$url" --routing baseline "${work[@]}" --compare "$tmp/base.json" \
  --moe-bench "$tmp/base.json" > /dev/null 2> "$tmp/mb.err"
rc=$?
$check "$([[ $rc == 2 ]] && grep -q "policies" "$tmp/mb.err" && echo 1 || echo 0)" \
  "--moe-bench without a 'policies' row: exit $rc"
req='{"prompt":[5,17,29,41,53,65,77],"max_tokens":8,"temperature":0,"ignore_eos":true}'
curl -s -H 'Content-Type: application/json' -d "$req" "$url/v1/completions" \
  | $py -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])' > "$tmp/a.txt"
e2e_serve_stop_clean "$server_pid" 60 # the loads are written at a normal stop
rows=$($py -c 'import json,sys; c=json.load(open(sys.argv[1]))["logical_count"]; print(len(c), len(c[0]), sum(map(sum, c)))' "$tmp/load.json" 2> /dev/null)
read -r nl ne total <<< "$rows"
$check "$([[ $nl == 4 && $ne == 64 && ${total:-0} -gt 0 ]] && echo 1 || echo 0)" \
  "--save-expert-load: ${nl:-?} layers x ${ne:-?} experts, $total pairs"

e2e_serve_start b 2 --model $model --max-model-len 512 --placement eplb --expert-load "$tmp/load.json" \
  --redundant-experts 2 --rebalance-interval 0
curl -s -H 'Content-Type: application/json' -d "$req" "$url/v1/completions" \
  | $py -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])' > "$tmp/b.txt"
$check "$(cmp -s "$tmp/a.txt" "$tmp/b.txt" && [[ -s $tmp/a.txt ]] && echo 1 || echo 0)" \
  "EPLB from the file answers as the contiguous server"
e2e_serve_stop "$server_pid"

"$bin" serve --model $model --port 0 --expert-load "$tmp/load.json" > /dev/null 2> "$tmp/noeplb.err"
rc=$?
$check "$([[ $rc == 2 ]] && grep -q -- '--placement eplb' "$tmp/noeplb.err" && echo 1 || echo 0)" \
  "--expert-load without eplb: exit $rc"
echo '{"logical_count": [[1, 2]]}' > "$tmp/bad.json"
timeout 60 "$bin" serve --model $model --port 0 --placement eplb --expert-load "$tmp/bad.json" \
  > /dev/null 2> "$tmp/bad.err"
rc=$?
$check "$([[ $rc != 0 ]] && grep -q "bad.json: 'logical_count': expected an array of 4 rows" "$tmp/bad.err" && echo 1 || echo 0)" \
  "a malformed load file: exit $rc, $(head -c 200 "$tmp/bad.err")"
echo "bench_serve: $failures failed"
[[ $failures == 0 ]]
