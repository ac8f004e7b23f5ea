#!/usr/bin/env bash
# `bench model --backend cuda` (app/bench_model.c, app/bench_gpu.c) on tiny
# shapes: tiny-qwen3-moe on one rank and tiny-deepseek-v2 on two. Checks
# that its JSON and table carry the device report and that it is consistent
# with itself: the device named (and marked emulated on the emulated
# device, the table saying so), a positive bandwidth, per row floor_ms =
# bytes_per_step / bandwidth and x_floor = step_ms / floor_ms, the copy
# bytes per step by class (act, meta, load; h2d, d2h) non-negative with
# totals equal to the sum of the classes, no weight loading inside a timed
# step, and no activation byte either way in any step (the whole forward
# runs on the device and a step ends with the greedy ids drawn there; meta
# carries ids, positions, tables and the MoE layers' routes); and that
# --backend cpu says it counted no copies. Skips (77) when no device is
# visible.
#   bench_model_cuda.sh EPSERVE
set -euo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common=(--prefill 4 --decode 1,2 --steps 2 --context 3 --peak-size 64 --threads 1 --quiet)

if ! "$bin" bench model --model tiny-qwen3-moe --routing baseline,ban --backend cuda "${common[@]}" \
  --json "$tmp/q1.json" >"$tmp/q1.txt" 2>"$tmp/q1.err"; then
  if grep -q "no CUDA device visible" "$tmp/q1.err"; then
    echo "# SKIP bench_model_cuda: $(head -n 1 "$tmp/q1.err")"
    exit 77
  fi
  cat "$tmp/q1.err"
  exit 1
fi
mpirun -np 2 --oversubscribe "$bin" bench model --model tiny-deepseek-v2 --routing baseline \
  --backend cuda "${common[@]}" --json "$tmp/d2.json" >"$tmp/d2.txt"
"$bin" bench model --model tiny-qwen3-moe --routing baseline --backend cpu "${common[@]}" \
  --json "$tmp/c1.json" >"$tmp/c1.txt"
if "$bin" bench model --model tiny-qwen3-moe --backend tpu 2>"$tmp/err.txt"; then
  echo "FAIL: --backend tpu accepted"; exit 1
fi
grep -q -- "--backend" "$tmp/err.txt" || { echo "FAIL: the --backend error does not name it"; exit 1; }
cat "$tmp/q1.txt"

python3 - "$tmp" "$(dirname "$0")/../e2e/lib" <<'PY'
import json, sys
tmp = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import jcheck
from jcheck import check, close, finish

for name, world, n_rows in (("q1", 1, 6), ("d2", 2, 3)):
    before = jcheck.failures
    d = json.load(open(f"{tmp}/{name}.json"))
    table = open(f"{tmp}/{name}.txt").read().splitlines()
    rows = d["rows"]
    check(d["backend"] == "cuda" and d["copies_counted"] is True, f"{name}: backend, copies_counted")
    check(d["world_size"] == world and len(rows) == n_rows, f"{name}: world {d['world_size']}, "
          f"{len(rows)} rows")
    dev = d["device"]
    check(dev["bandwidth_gbs"] > 0 and dev["name"] and dev["probe_bytes"] > 0, f"{name}: device {dev}")
    emulated = dev["name"] == "epserve emulated device"
    check(dev["emulated"] == emulated, f"{name}: emulated {dev['emulated']} for '{dev['name']}'")
    check(("note" in dev) == emulated, f"{name}: a note exactly on the emulated device")
    emu_line = any("EMULATED" in l and "NOT GPU numbers" in l for l in table if l.startswith("#"))
    check(emu_line == emulated, f"{name}: the table says EMULATED exactly on the emulated device")
    head = [l for l in table if l.startswith("# mode ")]
    check(len(head) == 1 and all(k in head[0] for k in ("floor", "xfloor", "act_h2d", "act_d2h",
                                                        "meta_h2d", "meta_d2h")),
          f"{name}: the column heads name the device fields")
    body = [l for l in table if l.strip() and not l.startswith("#")]
    check(len(body) == len(rows), f"{name}: {len(body)} table rows, {len(rows)} in the JSON")
    for i, r in enumerate(rows):
        tag = f"{name} {r['mode']} {r['tokens_per_step']} {r['policy']}"
        fl = r["bytes_per_step"] / (dev["bandwidth_gbs"] * 1e9) * 1e3
        check(r["floor_ms"] > 0 and close(r["floor_ms"], fl), f"{tag}: floor_ms {r['floor_ms']} "
              f"!= {fl}")
        check(close(r["x_floor"], r["step_ms"] / r["floor_ms"]), f"{tag}: x_floor")
        cp = r["copy_bytes_per_step"]
        for k in ("act", "meta", "load"):
            check(cp[k]["h2d"] >= 0 and cp[k]["d2h"] >= 0, f"{tag}: {k} bytes >= 0")
        for dr in ("h2d", "d2h"):
            s = sum(cp[k][dr] for k in ("act", "meta", "load"))
            check(close(cp[dr], s) or cp[dr] == s == 0, f"{tag}: {dr} total {cp[dr]} != {s}")
        check(cp["load"]["h2d"] == 0, f"{tag}: a timed step loaded {cp['load']['h2d']} B of weights")
        check(cp["act"]["h2d"] == 0 and cp["act"]["d2h"] == 0,
              f"{tag}: {cp['act']['h2d']} B of activations up, {cp['act']['d2h']} down in a step")
        check(cp["meta"]["h2d"] > 0 and cp["meta"]["d2h"] > 0, f"{tag}: no meta bytes")
        check(cp["h2d_calls"] >= 0 and cp["d2h_calls"] >= 0, f"{tag}: calls")
        cols = body[i].split()
        act_h2d_kb = float(cols[-4])
        check(abs(act_h2d_kb - cp["act"]["h2d"] / 1e3) <= 0.051 + 1e-9,
              f"{tag}: table act_h2d {act_h2d_kb} KB, JSON {cp['act']['h2d']} B")
    if jcheck.failures == before:
        print(f"ok    {name}: {len(rows)} rows with the device report, device '{dev['name']}'"
              f"{' (emulated)' if emulated else ''}, {dev['bandwidth_gbs']:.1f} GB/s")

c = json.load(open(f"{tmp}/c1.json"))
check(c["backend"] == "cpu" and c["copies_counted"] is False and "device" not in c
      and "copies_note" in c, "cpu: says no copies were counted")
check(all(k not in r for r in c["rows"] for k in ("floor_ms", "x_floor", "copy_bytes_per_step")),
      "cpu: rows without device fields")
ctab = open(f"{tmp}/c1.txt").read()
check("backend cpu: no host<->device copies" in ctab and "act_h2d" not in ctab,
      "cpu: the table says so and has no copy columns")
if not jcheck.failures:
    print("ok    cpu: no copy fields, said so")
finish()
PY
