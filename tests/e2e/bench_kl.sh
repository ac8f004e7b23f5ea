#!/usr/bin/env bash
# `epserve bench kl`: baseline against itself is exactly 0, Ban keeps fewer
# experts and diverges (KL > 0), laser keeps K; a bad policy name is a usage
# error naming it.
set -euo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" bench kl --model tiny-qwen3-moe --routing baseline,ban,laser,ban-node --seqs 2 --len 16 \
  --json "$tmp/kl.json" > "$tmp/out.txt"
cat "$tmp/out.txt"
python3 - "$tmp/kl.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = {r["policy"]: r for r in d["policies"]}
fails = 0
def check(ok, what):
    global fails
    print(("ok    " if ok else "FAIL  ") + what)
    fails += not ok
check(d["baseline_avg_k"] == 8.0, f'baseline avg K {d["baseline_avg_k"]} == 8')
check(p["baseline"]["kl_mean"] == 0.0 and p["baseline"]["kl_max"] == 0.0, "baseline vs itself: KL 0")
check(p["ban"]["avg_k"] < 8.0, f'ban avg K {p["ban"]["avg_k"]:.3f} < 8')
check(p["ban"]["kl_mean"] > 0.0, f'ban KL {p["ban"]["kl_mean"]:.4g} > 0')
check(p["laser"]["avg_k"] == 8.0, f'laser keeps K: {p["laser"]["avg_k"]}')
check(p["laser"]["kl_mean"] < p["ban"]["kl_mean"], "laser after baseline diverges less than ban")
# sends from rank 0 (4 ranks, 2 per node): baseline's are its own top-k_base;
# Ban keeps a subset of the top-k_base, so it never sends more
b = p["baseline"]
check(b["token_layers"] == 2 * 16 * 4 and b["node_sends"] == b["base_node_sends"] > 0
      and b["rank_sends"] == b["base_rank_sends"], "baseline sends == its top-k_base sends")
check(p["ban"]["node_sends"] <= p["ban"]["base_node_sends"]
      and p["ban"]["inter_rank_sends"] < p["ban"]["base_inter_rank_sends"],
      "ban sends no more than the top-k_base")
check(p["ban-node"]["avg_k"] > 0 and p["ban-node"]["node_sends"] <= p["ban-node"]["base_node_sends"],
      "ban-node (locality: node) runs")
print(f"bench_kl: {9 - fails} passed, {fails} failed")
sys.exit(1 if fails else 0)
PY
set +e
"$bin" bench kl --model tiny-qwen3-moe --routing nosuchpolicy --seqs 1 --len 4 2> "$tmp/err.txt"
rc=$?
set -e
grep -q "nosuchpolicy" "$tmp/err.txt" && [ $rc -eq 2 ] || { echo "FAIL bad policy: rc $rc"; cat "$tmp/err.txt"; exit 1; }
echo "ok    bad policy name: exit 2, named"
