#!/usr/bin/env bash
# End to end: `epserve generate` under mpirun. Greedy ids for the same prompt
# are the same at 1 and 2 ranks (tiny Qwen3 by text, tiny DeepSeek-V2 by ids,
# with Ban); --json parses and its usage counts add up; a stop string ends
# with "stop" and its text is not printed; bad inputs (an unknown token id,
# a prompt + max tokens over the context, a bad temperature) exit 2 with a
# message that names them; a rank that stalls past --step-timeout makes the
# job exit 1 within a bound, rank 0 naming that rank (EP_ENGINE_TEST_STALL,
# a test hook of the engine).
set -euo pipefail
bin=$1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { mpirun --oversubscribe -np "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

ids_of() { python3 -c 'import json,sys; print(" ".join(map(str, json.load(open(sys.argv[1]))["ids"])))' "$1"; }

# Same greedy ids at 1 and 2 ranks.
for np in 1 2; do
  run $np "$bin" generate --model tiny-qwen3-moe --prompt "def add(a, b):" --max-tokens 10 \
    --json > "$tmp/q$np.json"
  run $np "$bin" generate --model tiny-deepseek-v2 --tokens 5,17,300,42,7 --max-tokens 10 \
    --routing ban --json > "$tmp/d$np.json"
done
for m in q d; do
  a=$(ids_of "$tmp/${m}1.json"); b=$(ids_of "$tmp/${m}2.json")
  [[ -n $a && $a == "$b" ]] || fail "$m: ids differ between 1 and 2 ranks: [$a] vs [$b]"
done
python3 - "$tmp/q2.json" "$tmp/d2.json" <<'PY'
import json, sys
q = json.load(open(sys.argv[1])); d = json.load(open(sys.argv[2]))
for o in (q, d):
    assert o["finish_reason"] in ("length", "stop"), o
    assert o["completion_tokens"] == len(o["ids"]) <= 10, o
    assert o["prompt_tokens"] >= 1 and o["tokens_per_s"] > 0, o
assert isinstance(q["text"], str) and q["world_size"] == 2
assert d["prompt_tokens"] == 5 and 1 <= d["avg_k"] < d["k_base"], d  # Ban keeps fewer experts
assert abs(q["avg_k"] - q["k_base"]) < 1e-9, q                      # baseline keeps k_base
PY

# A stop string: a word of the greedy text (the second); the text ends before it.
python3 - "$tmp/q1.json" > "$tmp/stop.txt" <<'PY'
import json, sys
import re
t = json.load(open(sys.argv[1]))["text"]
w = re.findall(r"[A-Za-z]{3,}", t)  # plain ASCII: the same bytes in the text and in argv
print(w[1][:3] if len(w) > 1 else "", end="")
PY
stop=$(cat "$tmp/stop.txt")
if [[ -n $stop ]]; then
  run 2 "$bin" generate --model tiny-qwen3-moe --prompt "def add(a, b):" --max-tokens 10 \
    --stop "$stop" --json > "$tmp/s.json"
  python3 - "$tmp/s.json" "$tmp/q1.json" "$stop" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); full = json.load(open(sys.argv[2]))["text"]; stop = sys.argv[3]
assert s["finish_reason"] == "stop", s
assert stop not in s["text"] and full.startswith(s["text"]), (s["text"], full, stop)
assert full[len(s["text"]):].startswith(stop), (s["text"], full, stop)
PY
fi

# Bad inputs: exit 2, one message naming the problem.
expect2() {
  local want=$1; shift
  set +e
  run 2 "$bin" generate "$@" > "$tmp/out" 2> "$tmp/err"
  local rc=$?
  set -e
  [[ $rc == 2 ]] || fail "generate $*: exit $rc, expected 2: $(cat "$tmp/err")"
  grep -q -- "$want" "$tmp/err" || fail "generate $*: message lacks '$want': $(cat "$tmp/err")"
  [[ $(grep -c "epserve generate:" "$tmp/err") == 1 ]] || fail "generate $*: not one message: $(cat "$tmp/err")"
}
expect2 "id 99999" --model tiny-qwen3-moe --tokens 1,2,99999
expect2 "longer than the context" --model tiny-qwen3-moe --tokens 1,2,3 --max-tokens 100000
expect2 "temperature" --model tiny-qwen3-moe --tokens 1,2,3 --temperature -1

# A rank that stalls: the job ends with status 1 well within the bound.
t0=$(date +%s)
set +e
EP_ENGINE_TEST_STALL=1:2:20 run 3 -x EP_ENGINE_TEST_STALL "$bin" generate --model tiny-qwen3-moe \
  --tokens 1,2,3 --max-tokens 8 --step-timeout 2 > "$tmp/out" 2> "$tmp/err"
rc=$?
set -e
t1=$(date +%s)
[[ $rc != 0 ]] || fail "stalled rank: exit 0"
grep -q "step 2 did not finish within 2 s on every rank (no answer from rank(s) 1" "$tmp/err" ||
  fail "stalled rank: message does not name rank 1: $(cat "$tmp/err")"
(( t1 - t0 < 15 )) || fail "stalled rank: took $((t1 - t0)) s"
echo "generate: ok"
