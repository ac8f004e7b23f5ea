#!/usr/bin/env bash
# `epserve bench --phase-barrier` (a barrier before dispatch and before
# combine, so the phase times are transfer time; docs/scale.md §6): the
# results still equal the single-process reference, the JSON says the
# barrier was on and has the per-step medians and minima; with two micro-batches the
# option is refused with an error naming it. `bench comm` prints its p50
# and min columns and counts no wrong word.
set -euo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mpirun -np 2 --oversubscribe "$bin" bench --model tiny-qwen3-moe --routing baseline,ban \
  --tokens 16 --steps 3 --warmup 0 --ranks-per-node 1 --phase-barrier --check --quiet \
  --json "$tmp/b.json" > "$tmp/b.txt"
grep -q "phase barrier" "$tmp/b.txt" || { echo "FAIL: the table header does not say phase barrier"; exit 1; }
if mpirun -np 2 --oversubscribe "$bin" bench --model tiny-qwen3-moe --phase-barrier \
  --micro-batches 2 --quiet > "$tmp/mb.txt" 2>&1; then
  echo "FAIL: --phase-barrier --micro-batches 2 accepted"; exit 1
fi
grep -q -- "--phase-barrier" "$tmp/mb.txt" || { cat "$tmp/mb.txt"; echo "FAIL: the error does not name --phase-barrier"; exit 1; }
echo "ok    --phase-barrier with --micro-batches 2 refused, naming the option"
mpirun -np 2 --oversubscribe "$bin" bench comm -b 1K -e 4K -w 1 -n 3 > "$tmp/comm.txt"
python3 - "$tmp/b.json" "$tmp/comm.txt" <<'PY'
import json, sys
failures = 0
def check(ok, msg):
    global failures
    print(("ok    " if ok else "FAIL  ") + msg)
    failures += not ok
d = json.load(open(sys.argv[1]))
check(d["phase_barrier"] is True, "JSON phase_barrier is true")
for p in d["policies"]:
    check(p["wrong"] == 0 and p["max_rel_err"] <= 1e-4,
          f'{p["name"]}: #wrong {p["wrong"]}, max_rel_err {p["max_rel_err"]:.2e} <= 1e-4 with barriers')
    pm, mn = p["phase_ms_p50"], p["phase_ms_min"]
    check(all(pm[k] >= mn[k] > 0 for k in ("dispatch", "combine")),
          f'{p["name"]}: phase_ms_p50 dispatch {pm["dispatch"]:.3f} ms, combine {pm["combine"]:.3f} ms'
          f' >= phase_ms_min {mn["dispatch"]:.3f}, {mn["combine"]:.3f} > 0')
hdr = [l for l in open(sys.argv[2])
       if l.startswith("#") and "size" in l and "p50_time" in l and "min_time" in l]
rows = [l.split() for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")]
check(len(hdr) == 1 and len(rows) == 3, f"bench comm: p50_time column, {len(rows)} sizes (3)")
check(all(r[-1] == "0" and float(r[2]) >= float(r[3]) > 0 for r in rows),
      "bench comm: p50 >= min > 0, #wrong 0")
sys.exit(1 if failures else 0)
PY
