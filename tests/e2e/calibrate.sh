#!/usr/bin/env bash
# End to end: `epserve calibrate` on generated calibration data. Two runs at 2
# ranks write byte-identical profiles; 1 rank (DeepSeek) works too; the profile loads in
# `epserve route`; Ban with the calibrated profile keeps more experts per
# token than uncalibrated Ban in `epserve bench` (tiny Qwen3), and DES with the
# calibrated medians more than DES without (which keeps k_lo); DeepSeek's dense
# layer 0 gets sensitivity 0 and DES medians 1.0; bad input exits 1 or 2 with a
# message that names it.
#
# Also the calibration data generator (docs/routing.md, "Calibration"):
#   bash tests/e2e/calibrate.sh --gen-data VOCAB N SEED > calib.jsonl
# writes N sequences per domain (general, math, code, chat) of 12-24 token ids
# from a 64-bit LCG seeded by (SEED, domain, sequence): 3 of 4 ids from the
# domain's quarter of the vocabulary, the rest from anywhere.
set -euo pipefail

gen_data() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
vocab, n, seed = (int(a) for a in sys.argv[1:4])
M = (1 << 64) - 1
for d, name in enumerate(["general", "math", "code", "chat"]):
    for i in range(n):
        s = [(seed * 1000003 + d * 7919 + i * 104729 + 1) & M]
        def nxt():
            s[0] = (s[0] * 6364136223846793005 + 1442695040888963407) & M
            return s[0] >> 33
        length = 12 + nxt() % 13
        q = vocab // 4
        toks = [d * q + nxt() % q if nxt() % 4 else nxt() % vocab for _ in range(length)]
        print('{"tokens": [%s], "domain": "%s"}' % (", ".join(map(str, toks)), name))
PY
}

if [[ ${1:-} == --gen-data ]]; then
  gen_data "$2" "$3" "$4"
  exit 0
fi

bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
passes=0
check() { # check <0|1> <message>
  if [[ $1 == 1 ]]; then echo "ok    $2"; passes=$((passes + 1)); else echo "FAIL  $2"; failures=$((failures + 1)); fi
}

gen_data 1024 2 7 > "$tmp/calib.jsonl"
mpirun -np 2 --oversubscribe "$bin" calibrate --model tiny-qwen3-moe --data "$tmp/calib.jsonl" \
  --out "$tmp/q1.yaml" 2> "$tmp/q1.log"
mpirun -np 2 --oversubscribe "$bin" calibrate --model tiny-qwen3-moe --data "$tmp/calib.jsonl" \
  --out "$tmp/q2.yaml" --quiet 2> "$tmp/q2.log"
check "$(cmp -s "$tmp/q1.yaml" "$tmp/q2.yaml" && echo 1 || echo 0)" "two runs at 2 ranks are byte-identical"
check "$(grep -q 'sweep 2/' "$tmp/q1.log" && echo 1 || echo 0)" "progress lines on stderr"
check "$([[ ! -s $tmp/q2.log ]] && echo 1 || echo 0)" "--quiet prints nothing"

# The profile loads through the routing loader of another command.
python3 -c "import struct,sys; sys.stdout.buffer.write(struct.pack('<192f', *[((i*37)%64)/9.0 for i in range(192)]))" > "$tmp/logits.f32"
"$bin" route --model tiny-qwen3-moe --routing "$tmp/q1.yaml" --layer 2 --input "$tmp/logits.f32" \
  --tokens 3 --out "$tmp/routes.jsonl" --domain math
check "$([[ $(wc -l < "$tmp/routes.jsonl") == 3 ]] && echo 1 || echo 0)" "epserve route loads the profile"
(cd "$tmp" && "$bin" route --model tiny-deepseek-v2 --routing calibrated/tiny-deepseek-v2-calibrated \
  --layer 1 --input logits.f32 --tokens 3 --out shipped.jsonl)
check "$([[ $(wc -l < "$tmp/shipped.jsonl") == 3 ]] && echo 1 || echo 0)" "the shipped profile resolves as a preset name"

# Ban and DES: calibrated profile vs defaults, same bench inputs.
sed 's/^policy: banpick/policy: ban/' "$tmp/q1.yaml" > "$tmp/calban.yaml"
sed 's/^policy: banpick/policy: des/' "$tmp/q1.yaml" > "$tmp/caldes.yaml"
"$bin" bench --model tiny-qwen3-moe --routing ban,"$tmp/calban.yaml",des,"$tmp/caldes.yaml" \
  --tokens 48 --steps 1 --warmup 0 --quiet --json "$tmp/bench.json" > "$tmp/bench.txt"

# DeepSeek: dense layer 0, one rank without mpirun.
"$bin" calibrate --model tiny-deepseek-v2 --data "$tmp/calib.jsonl" --out "$tmp/ds.yaml" \
  --domain math --quiet --key-candidates 1
check "$(grep -q '^policy: banpick' "$tmp/ds.yaml" && echo 1 || echo 0)" "1 rank writes a banpick profile"

python3 - "$tmp/bench.json" "$tmp/q1.yaml" "$tmp/ds.yaml" > "$tmp/py.log" <<'PY' && pyrc=0 || pyrc=$?
import json, re, sys
d = json.load(open(sys.argv[1]))
k = {p["name"]: p["avg_k"] for p in d["policies"]}
print("avg_k", k["ban"], k["calban"], k["des"], k["caldes"])
print("CHECK", int(k["calban"] > k["ban"]), f'calibrated ban avg K {k["calban"]:.3f} > default {k["ban"]:.3f}')
# Without medians DES keeps k_lo = 4 (every ratio of sorted scores is >= 1.0);
# the calibrated medians let about half the tokens go past it, up to k_hi = 6.
print("CHECK", int(k["des"] == 4.0 and 4.0 < k["caldes"] <= 6.0),
      f'calibrated des avg K {k["caldes"]:.3f} in (4, 6], default {k["des"]:.3f} == 4')
for path, dense, kb in ((sys.argv[2], 0, 8), (sys.argv[3], 1, 6)):
    text = open(path).read()
    body = text[text.index("\ndes:\n"):]
    rows = re.findall(r"^    - \[([^\]]*)\]", body[:body.index("\nlaser:")], re.M)
    med = [[float(x) for x in r.split(",")] for r in rows]
    print("CHECK", int(len(med) == 4 and all(len(r) == kb - 1 for r in med)),
          f"{path}: des.median_ratio has 4 rows of k_base - 1 = {kb - 1}")
    print("CHECK", int(all(x == 1.0 for r in med[:dense] for x in r) and
                       all(1.0 <= x < 3e38 for r in med[dense:] for x in r)),
          f"{path}: DES medians 1.0 on dense layers, finite and >= 1 on MoE layers: {med[dense]}")
    w = [float(x) for x in re.search(r"^  layer_sensitivity: \[([^\]]*)\]", text, re.M).group(1).split(",")]
    rmin = float(re.search(r"^  r_min: (\S+)", text, re.M).group(1))
    rmax = float(re.search(r"^  r_max: (\S+)", text, re.M).group(1))
    print("CHECK", int(len(w) == 4), f"{path}: 4 sensitivities")
    print("CHECK", int(all(x == 0 for x in w[:dense]) and all(x > 0 for x in w[dense:])),
          f"{path}: dense layers 0, MoE layers > 0: {w}")
    print("CHECK", int(0 < rmin < rmax <= 1), f"{path}: 0 < r_min {rmin} < r_max {rmax} <= 1")
ds = open(sys.argv[3]).read()
print("CHECK", int("  domain: math" in ds), "--domain math is the active Pick domain")
PY
cat "$tmp/py.log"
check "$([[ $pyrc == 0 ]] && echo 1 || echo 0)" "profile checks ran (python exit $pyrc)"
while read -r tag ok msg; do
  [[ $tag == CHECK ]] && check "$ok" "$msg"
done < "$tmp/py.log"

# Bad input: usage errors exit 2, bad data exits 1 naming file and line.
set +e
"$bin" calibrate --model tiny-qwen3-moe --out "$tmp/x.yaml" 2> "$tmp/e1.log"; rc1=$?
"$bin" calibrate --model tiny-qwen3-moe --data "$tmp/calib.jsonl" --out "$tmp/x.yaml" --k-min 9 2> "$tmp/e2.log"; rc2=$?
printf '{"tokens": [1, 2]}\n{"tokens": [5, 4096]}\n' > "$tmp/bad.jsonl"
"$bin" calibrate --model tiny-qwen3-moe --data "$tmp/bad.jsonl" --out "$tmp/x.yaml" 2> "$tmp/e3.log"; rc3=$?
set -e
check "$([[ $rc1 == 2 ]] && grep -q 'required' "$tmp/e1.log" && echo 1 || echo 0)" "missing --data: exit 2 ($rc1)"
check "$([[ $rc2 == 2 ]] && grep -q 'k-min' "$tmp/e2.log" && echo 1 || echo 0)" "--k-min 9 > k_base: exit 2 ($rc2)"
check "$([[ $rc3 == 1 ]] && grep -q 'bad.jsonl:2: tokens\[1\]' "$tmp/e3.log" && echo 1 || echo 0)" "bad token id: exit 1 naming line 2 ($rc3)"
check "$([[ ! -e $tmp/x.yaml ]] && echo 1 || echo 0)" "no profile written on error"

echo "calibrate: $passes passed, $failures failed"
[[ $failures == 0 ]]
