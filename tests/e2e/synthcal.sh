#!/usr/bin/env bash
# The tiny presets' synthetic routing keeps the Ban&Pick paper's avg K with
# their shipped calibrated profiles, within +-5 % (scripts/synthcal.sh check,
# docs/synthetic.md §7): tiny-qwen3-moe ~ Qwen3-30B-A3B's 4.83,
# tiny-deepseek-v2 ~ DeepSeek-V2-Lite's 4.03. And the check can fail: the same
# presets without their `synth:` block (the generator's built-in
# concentration) are outside. Also: `epserve simulate` without --routing prints
# the calibrated Ban and Ban&Pick rows for a model that ships profiles, and
# baseline, ban, banpick for one that does not.
set -euo pipefail
bin=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export EP_BIN=$bin
cd "$src"

bash scripts/synthcal.sh check tiny-qwen3-moe tiny-deepseek-v2 | tee "$tmp/ok.txt"
[ "$(grep -c ' ok$' "$tmp/ok.txt")" = 2 ] || { echo "FAIL: expected 2 presets ok"; exit 1; }

for p in tiny-qwen3-moe tiny-deepseek-v2; do
  sed '/^synth:/,/^[a-z]/{/^synth:/d;/^  /d}' configs/models/$p.yaml > "$tmp/$p.yaml"
  ! grep -q "^  concentration_" "$tmp/$p.yaml" || { echo "FAIL: synth block left in $tmp/$p.yaml"; exit 1; }
done
rc=0
EP_SYNTHCAL_MODELS=$tmp bash scripts/synthcal.sh check tiny-qwen3-moe tiny-deepseek-v2 \
  | tee "$tmp/bad.txt" || rc=$?
[ $rc = 1 ] || { echo "FAIL: built-in concentration: expected exit 1, found $rc"; exit 1; }
[ "$(grep -c ' OUTSIDE$' "$tmp/bad.txt")" = 2 ] || { echo "FAIL: expected 2 presets OUTSIDE"; exit 1; }
"$bin" simulate --model tiny-qwen3-moe --cluster 1x8-h100 --layers 1 --sample-tokens 64 --quiet \
  | awk '/^  /{print $1}' > "$tmp/rows.txt"
printf 'baseline\ntiny-qwen3-moe-ban-calibrated\ntiny-qwen3-moe-calibrated\n' | cmp - "$tmp/rows.txt" \
  || { echo "FAIL: simulate's default rows with profiles:"; cat "$tmp/rows.txt"; exit 1; }
sed 's/^name: .*/name: no-profile-model/' configs/models/tiny-qwen3-moe.yaml > "$tmp/np.yaml"
"$bin" simulate --model "$tmp/np.yaml" --cluster 1x8-h100 --layers 1 --sample-tokens 64 --quiet \
  | awk '/^  /{print $1}' > "$tmp/rows.txt"
printf 'baseline\nban\nbanpick\n' | cmp - "$tmp/rows.txt" \
  || { echo "FAIL: simulate's default rows without profiles:"; cat "$tmp/rows.txt"; exit 1; }
echo "ok: shipped tiny presets within +-5 % of the paper's avg K; built-in concentration outside; simulate's default rows"
