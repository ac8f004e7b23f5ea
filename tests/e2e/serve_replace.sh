#!/usr/bin/env bash
# End to end: expert re-placement while requests stream. `epserve serve` on
# 3 ranks with --placement eplb --redundant-experts 3 --rebalance-interval 4
# --rebalance-min-gain -1 (every check moves weights) answers 200 concurrent
# greedy requests; a 1-rank server without re-placement answers the same
# requests; the checker compares every response: none lost (200 answers,
# each 200 OK), none different (fp32 experts: the forward is bitwise
# invariant under placement, docs/architecture.md, so a difference is a bug,
# not a near-tie), at least 3 re-placements that moved weights (/metrics),
# and the log shows the predicted load_imbalance before and after each.
bin=$1
source "$(dirname "$0")/lib/serve.sh"
model=tiny-qwen3-moe

start() { # start <name> <np> <args...>: the URL in $tmp/<name>.url
  local name=$1 np=$2
  shift 2
  e2e_serve_start "$name" "$np" --model $model --max-model-len 256 --max-num-seqs 48 \
    --max-waiting 256 "$@"
}
start ref 1
start eplb 3 --placement eplb --redundant-experts 3 --rebalance-interval 4 --rebalance-min-gain -1

# 200 requests of distinct token-id prompts, 32 at a time; answers as
# {index: [status, text]} in JSON.
cat > "$tmp/client.py" << 'PY'
import json, sys, threading, urllib.request, urllib.error
url, out = sys.argv[1], sys.argv[2]
res, lock = {}, threading.Lock()
def one(i):
    prompt = [(i * 37 + j * 11) % 1000 + 1 for j in range(8 + i % 24)]
    body = json.dumps({"prompt": prompt, "max_tokens": 12, "temperature": 0,
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=240) as r:
            v = [r.status, json.load(r)["choices"][0]["text"]]
    except urllib.error.HTTPError as e:
        v = [e.code, ""]
    except Exception as e:
        v = [0, repr(e)]
    with lock:
        res[i] = v
def worker(k):
    for i in range(k, 200, 32):
        one(i)
ts = [threading.Thread(target=worker, args=(k,)) for k in range(32)]
[t.start() for t in ts]
[t.join() for t in ts]
json.dump(res, open(out, "w"))
PY
python3 "$tmp/client.py" "$(cat "$tmp/eplb.url")" "$tmp/eplb.json" &
c1=$!
python3 "$tmp/client.py" "$(cat "$tmp/ref.url")" "$tmp/ref.json"
wait $c1
summary=$(python3 - "$tmp/ref.json" "$tmp/eplb.json" << 'PY'
import json, sys
ref, got = (json.load(open(p)) for p in sys.argv[1:3])
ok = sum(1 for i in range(200) if got.get(str(i), [0])[0] == 200)
refok = sum(1 for i in range(200) if ref.get(str(i), [0])[0] == 200)
diff = [i for i in range(200) if got.get(str(i), [0, None])[1] != ref.get(str(i), [0, ""])[1]]
print(ok, refok, len(diff), diff[:5])
PY
)
read -r ok refok ndiff rest <<< "$summary"
e2e_check "$([[ $ok == 200 && $refok == 200 ]] && echo 1 || echo 0)" \
  "200 answers with 200 OK from each server (re-placing: $ok, reference: $refok)"
e2e_check "$([[ $ndiff == 0 ]] && echo 1 || echo 0)" \
  "every greedy response equals the 1-rank server's ($ndiff differ: $rest)"
moves=$(curl -s "$(cat "$tmp/eplb.url")/metrics" | awk '/^epserve:moe_replacements_total/ { print $NF }')
e2e_check "$([[ ${moves:-0} -ge 3 ]] && echo 1 || echo 0)" "at least 3 re-placements moved weights ($moves)"
logged=$(grep -c 're-placement before step .*load_imbalance .* -> .*experts moved' "$tmp/eplb.err")
e2e_check "$([[ $logged -ge 3 ]] && echo 1 || echo 0)" "the log shows load_imbalance before -> after ($logged lines)"
grep -m 3 're-placement' "$tmp/eplb.err" | sed 's/^/      /'
echo "serve_replace: $failures failed"
[[ $failures == 0 ]]
