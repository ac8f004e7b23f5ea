#!/usr/bin/env bash
# Synthetic routing held to the Ban&Pick paper's average K (docs/synthetic.md
# §7). Three steps, each reproducible:
#
#   scripts/synthcal.sh calibrate [PRESET...]
#       `epserve calibrate` at the paper's settings (K_min 3; the profile's
#       lambda 0.7, beta 0.5) on the preset's width-reduced proxy
#       (configs/models/proxy/) for the four real presets, which cannot run
#       their full forward here; writes configs/routing/calibrated/
#       <preset>-calibrated.yaml (policy banpick). The tiny presets keep the
#       profiles shipped before (docs/routing.md, "Calibration"). Then, for
#       every preset, <preset>-ban-calibrated.yaml: the same ban block with
#       policy ban (the Ban row of simulate and the demo).
#   scripts/synthcal.sh search PRESET [LO HI]
#       bisects the model YAML's synth.concentration_median (LO..HI, default
#       0.05..1.2) until the Ban&Pick avg K of the calibrated profile is within
#       0.5 % of the goal: the paper's K, or 98 % of the ceiling (below) where
#       the ceiling is lower (flattening further only nears the ceiling while
#       erasing the peaked tokens). Works on a temporary copy; prints every step.
#   scripts/synthcal.sh check [PRESET...]
#       prints measured avg K (Ban and Ban&Pick, the calibrated profiles, every
#       MoE layer routed) against the paper's and the ceiling (K when every
#       token is flatter than r_min: the layer term alone); exits 1 when a
#       Ban&Pick K is outside +-5 % of the target.
#
# Presets default to all six. EP_BIN: the epserve binary (default
# build/epserve); EP_SYNTHCAL_MODELS: the folder of model YAMLs (default
# configs/models); EP_SYNTHCAL_TOKENS: tokens routed per check or search step
# (default 1024, through every MoE layer). The check of all six takes minutes
# (the full presets route at their real hidden size); the tiny ones seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=${EP_BIN:-$root/build/epserve}
all="tiny-qwen3-moe tiny-deepseek-v2 qwen3-30b-a3b qwen3-235b-a22b deepseek-v2-lite deepseek-v2.5"
tokens=${EP_SYNTHCAL_TOKENS:-1024}
cal=configs/routing/calibrated

# The paper's avg experts per token under Ban&Pick (K_min 3, lambda 0.7,
# beta 0.5, calibrated ranges); the tiny presets stand for their full
# siblings (tiny-qwen3-moe ~ Qwen3-30B-A3B, tiny-deepseek-v2 ~ DeepSeek-V2-Lite).
target() {
  case $1 in
    tiny-qwen3-moe | qwen3-30b-a3b) echo 4.83 ;;
    qwen3-235b-a22b) echo 4.79 ;;
    tiny-deepseek-v2 | deepseek-v2-lite) echo 4.03 ;;
    deepseek-v2.5) echo 3.99 ;;
    *) echo "synthcal: unknown preset '$1' (expected one of: $all)" >&2; return 2 ;;
  esac
}

# avg K of one routing spec on model YAML $1 (every MoE layer, $tokens tokens).
avg_k() {
  local json
  json=$(mktemp)
  "$bin" simulate --model "$1" --cluster 1x8-h100 --routing "$2" --layers 0 \
    --sample-tokens $((tokens / 8)) --quiet --json "$json" > /dev/null
  python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["results"][0]["avg_k"])' "$json"
  rm -f "$json"
}

# Ban's K when T'_i = 1 for every token (R at or below r_min), per layer
# floor(k_min + (k_base - k_min) lambda (beta L'_l + 1 - beta)), averaged over
# the MoE layers: what no score distribution can exceed with this profile.
ceiling() {
  python3 - "$1" "$2" <<'PY'
import math, re, sys
model, prof = open(sys.argv[1]).read(), open(sys.argv[2]).read()
kb = int(re.search(r"num_experts_per_tok:\s*(\d+)", model).group(1))
fk = re.search(r"first_k_dense_replace:\s*(\d+)", model)
fk = int(fk.group(1)) if fk else 0
get = lambda k: float(re.search(r"\b%s:\s*([-0-9.e]+)" % k, prof).group(1))
kmin, lam, beta = int(get("k_min")), get("lambda"), get("beta")
w = [float(x) for x in re.search(r"layer_sensitivity:\s*\[([^\]]*)\]", prof).group(1).split(",")][fk:]
lo, hi = min(w), max(w)
lp = [(x - lo) / (hi - lo) if hi > lo else 0.0 for x in w]
ks = [min(kb, math.floor(kmin + (kb - kmin) * lam * (beta * l + 1 - beta) + 1e-6)) for l in lp]
print("%.3f" % (sum(ks) / len(ks)))
PY
}

# EP_SYNTHCAL_MODELS: where the model YAMLs are (default configs/models).
model_yaml() {
  echo "${EP_SYNTHCAL_MODELS:-configs/models}/$1.yaml"
}

cmd_calibrate() {
  local dir data p src
  dir=$(mktemp -d)
  data=$dir/synthcal-calib.jsonl # the name the profiles' headers quote
  # 2 sequences per domain, 12-24 ids (tests/e2e/calibrate.sh's generator).
  bash tests/e2e/calibrate.sh --gen-data 1024 2 7 > "$data"
  for p in "$@"; do
    target "$p" > /dev/null
    case $p in
      tiny-*) ;;
      *)
        src=configs/models/proxy/$p-proxy.yaml
        echo "# calibrate $p on $src" >&2
        "$bin" calibrate --model "$src" --data "$data" --out "$cal/$p-calibrated.yaml" \
          --key-candidates 1
        chmod 644 "$cal/$p-calibrated.yaml"
        ;;
    esac
    # The Ban row: the calibrated ban block alone, policy ban.
    {
      echo "# Ban (policy ban) with the ban block of $p-calibrated.yaml, written by"
      echo "# scripts/synthcal.sh calibrate; see docs/synthetic.md §7."
      echo "policy: ban"
      sed -n '/^ban:/,/^[a-z]/p' "$cal/$p-calibrated.yaml" | sed '$d'
    } > "$cal/$p-ban-calibrated.yaml"
  done
  rm -rf "$dir"
}

cmd_search() {
  local p=$1 lo=${2:-0.05} hi=${3:-1.2} t c goal y mid k i
  t=$(target "$p")
  c=$(ceiling "$(model_yaml "$p")" "$cal/$p-calibrated.yaml")
  goal=$(python3 -c "print('%.4f' % min($t, 0.98 * $c))")
  echo "$p: target $t, ceiling $c, goal $goal"
  y=$(mktemp --suffix=.yaml)
  for i in $(seq 14); do
    mid=$(python3 -c "print('%.3g' % ((float('$lo') + float('$hi')) / 2))")
    # the YAML without its synth block, then the one being tried
    sed '/^synth:/,/^[a-z]/{/^synth:/d;/^  /d}' "$(model_yaml "$p")" > "$y"
    printf 'synth:\n  concentration_median: %s\n' "$mid" >> "$y"
    k=$(avg_k "$y" "calibrated/$p-calibrated")
    echo "$p concentration_median $mid: Ban&Pick avg K $k"
    if python3 -c "import sys; sys.exit(0 if abs($k / $goal - 1) < 0.005 else 1)"; then break; fi
    # flatter (smaller median) keeps more experts
    if python3 -c "import sys; sys.exit(0 if $k < $goal else 1)"; then hi=$mid; else lo=$mid; fi
  done
  rm -f "$y"
}

cmd_check() {
  local p t kb kbp c dev fail=0
  printf '%-18s %7s %7s %7s %8s %7s %s\n' preset target ban banpick dev ceiling verdict
  for p in "$@"; do
    t=$(target "$p")
    kb=$(avg_k "$(model_yaml "$p")" "calibrated/$p-ban-calibrated")
    kbp=$(avg_k "$(model_yaml "$p")" "calibrated/$p-calibrated")
    c=$(ceiling "$(model_yaml "$p")" "$cal/$p-calibrated.yaml")
    dev=$(python3 -c "print('%+.1f%%' % (100 * ($kbp / $t - 1)))")
    if python3 -c "import sys; sys.exit(0 if abs($kbp / $t - 1) <= 0.05 else 1)"; then
      v=ok
    else
      v=OUTSIDE
      fail=1
    fi
    printf '%-18s %7s %7s %7s %8s %7s %s\n' "$p" "$t" "$kb" "$kbp" "$dev" "$c" "$v"
  done
  return $fail
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  calibrate) cmd_calibrate ${@:-$all} ;;
  search)
    [ $# -ge 1 ] || { echo "usage: scripts/synthcal.sh search PRESET [LO HI]" >&2; exit 2; }
    cmd_search "$@"
    ;;
  check) cmd_check ${@:-$all} ;;
  *)
    echo "usage: scripts/synthcal.sh calibrate|search|check [PRESET...] (see the script's header)" >&2
    exit 2
    ;;
esac
