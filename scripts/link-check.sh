#!/usr/bin/env bash
# The link model against a real link (docs/scale.md §6): two hosts of one
# rank each (scripts/netns-hosts.sh, TCP over veth), per round:
#   1. `bench comm` -b 4K -e 1M; alpha (us) and beta (GB/s) fitted by least
#      squares to the p50 and to the min per-iteration time, sizes 4K..512K;
#   2. `bench --phase-barrier` replaying a real trace (DeepSeek-V2-Lite
#      Puffin routes, layers 1-3, cut to ranks x tokens rows per layer, so
#      every step replays the same routes) on tiny-deepseek-v2, f32 wire;
#   3. the same with --tokens 0 (the collectives without payload);
#   4. `simulate --routes-from` on the same trace with a 2-node x 1-GPU
#      cluster YAML holding the fitted link (inter_latency_us = alpha,
#      inter_GBps = beta, efficiency 1; the hier_rdma_* keys too, where the
#      preset has them: one rank per host makes hier and flat one exchange);
# and prints, per round and statistic, predicted vs measured dispatch and
# combine per step, and the simulated vs measured bytes (must be equal).
#
#   scripts/link-check.sh [--rounds N] [--tokens T] [--steps S] [--out DIR]
#
# Exits 77 when namespaces cannot be made or the trace (../shared) is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${EP_BUILD_DIR:-$root/build}/epserve
rounds=3
tokens=256
steps=40
out=
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "link-check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $rounds$tokens$steps in *[!0-9]*|'') echo "link-check.sh: --rounds, --tokens, --steps: expected integers" >&2; exit 2 ;; esac
[ -x "$bin" ] || { echo "link-check.sh: no $bin (scripts/build.sh first)" >&2; exit 2; }
src=$root/../shared/data/routing/deepseek-v2-lite-chat/puffin_prefill_top6_100prompts.csv
[ -r "$src" ] || { echo "link-check.sh: SKIP: no trace $src (../shared routing data)" >&2; exit 77; }
if [ -z "$out" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"

# 2 ranks x tokens rows of each of layers 1-3: step s, rank r replays rows
# (s*2 + r)*tokens.. mod 2*tokens, i.e. the same routes every step, the ones
# simulate prices (rank r: rows r*tokens..).
rows=$((2 * tokens))
trace=$out/trace.csv
awk -F, -v R="$rows" 'NR == 1 { print; next } $2 >= 1 && $2 <= 3 && c[$2] < R { c[$2]++; print }' \
  "$src" > "$trace"

hosts=("$root/scripts/netns-hosts.sh" --hosts 2 --slots 1 -- -x EP_NUM_THREADS=1)
run_bench() { # NAME TOKENS
  local rc=0
  "${hosts[@]}" "$bin" bench --model tiny-deepseek-v2 --routes-from "$trace" --tokens "$2" \
    --steps "$steps" --warmup 3 --phase-barrier --quiet --json "$out/$1.json" \
    > "$out/$1.log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || { cat "$out/$1.log" >&2; exit "$rc"; }
}
for ((r = 1; r <= rounds; r++)); do
  uptime > "$out/load$r.txt"
  rc=0
  "${hosts[@]}" "$bin" bench comm -b 4K -e 1M -w 10 -n 60 > "$out/comm$r.txt" 2> "$out/comm$r.log" || rc=$?
  [ "$rc" = 0 ] || { cat "$out/comm$r.log" >&2; exit "$rc"; }
  run_bench "bench$r" "$tokens"
  run_bench "empty$r" 0
  uptime >> "$out/load$r.txt"
done

python3 - "$out" "$rounds" "$bin" "$trace" "$tokens" "$root/configs/clusters/2x8-h100.yaml" <<'PY'
import json, re, subprocess, sys
out, rounds, binary, trace, tokens, preset = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
base = open(preset).read()
def fit(x, y):  # least squares y = a + b x
    n, sx, sy = len(x), sum(x), sum(y)
    sxx, sxy = sum(v * v for v in x), sum(u * v for u, v in zip(x, y))
    b = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return (sy - b * sx) / n, b
print("# link check: 2 hosts x 1 rank over veth TCP; per step = 3 MoE layers; err = (sim - meas) / meas")
print(f"# {'round':>5} {'stat':>4} {'alpha':>7} {'beta':>7} {'sim_disp':>9} {'meas_disp':>9} {'err':>6} "
      f"{'sim_comb':>9} {'meas_comb':>9} {'err':>6} {'empty_disp':>10} {'bytes':>5}  load")
print(f"# {'':>5} {'':>4} {'(us)':>7} {'(GB/s)':>7} {'(ms)':>9} {'(ms)':>9} {'(%)':>6} "
      f"{'(ms)':>9} {'(ms)':>9} {'(%)':>6} {'(ms)':>10} {'':>5}")
for r in range(1, rounds + 1):
    rows = [l.split() for l in open(f"{out}/comm{r}.txt") if l.strip() and not l.startswith("#")]
    b = json.load(open(f"{out}/bench{r}.json"))
    e = json.load(open(f"{out}/empty{r}.json"))
    p, pe = b["policies"][0], e["policies"][0]
    load = open(f"{out}/load{r}.txt").read().split("load average:")[1].split(",")[0].strip()
    for col, stat in ((2, "p50"), (3, "min")):
        pts = [(float(w[0]), float(w[col])) for w in rows if 4096 <= float(w[0]) <= 524288]
        a, s = fit([u for u, _ in pts], [v for _, v in pts])
        a, gbps = max(a, 0.0), 1e-3 / s  # s: us per byte
        y = base
        for key, val in (("name", f"netns-2x1-{stat}-r{r}"), ("nodes", 2), ("gpus_per_node", 1),
                         ("inter_GBps", f"{gbps:.4f}"), ("inter_latency_us", f"{a:.2f}"),
                         ("inter_efficiency", 1), ("hier_rdma_GBps", f"{gbps:.4f}"),
                         ("hier_rdma_latency_us", f"{a:.2f}")):
            y = re.sub(rf"^{key}: .*$", f"{key}: {val}", y, flags=re.M)
        yp = f"{out}/cluster-{stat}-r{r}.yaml"
        open(yp, "w").write(y)
        sj = f"{out}/sim-{stat}-r{r}.json"
        subprocess.run([binary, "simulate", "--model", "tiny-deepseek-v2", "--cluster", yp,
                        "--routes-from", trace, "--tokens", tokens, "--sample-tokens", "0",
                        "--layers", "0", "--wire", "f32", "--quiet", "--json", sj],
                       check=True, stdout=subprocess.DEVNULL)
        sim = json.load(open(sj))["results"][0]
        m = p["phase_ms_" + stat]
        same = (sim["dispatch_bytes"] * b["steps"] == p["dispatch_bytes"] and
                sim["combine_bytes"] * b["steps"] == p["combine_bytes"])
        print(f"  {r:>5} {stat:>4} {a:7.1f} {gbps:7.3f} {sim['dispatch_ms']:9.3f} {m['dispatch']:9.3f} "
              f"{100 * (sim['dispatch_ms'] - m['dispatch']) / m['dispatch']:6.0f} "
              f"{sim['combine_ms']:9.3f} {m['combine']:9.3f} "
              f"{100 * (sim['combine_ms'] - m['combine']) / m['combine']:6.0f} "
              f"{pe['phase_ms_' + stat]['dispatch']:10.3f} {'equal' if same else 'DIFF':>5}  {load}")
PY
