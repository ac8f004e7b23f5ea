#!/usr/bin/env bash
# End to end: `mpirun -np 2 epserve serve` on the tiny model, driven by the
# official `openai` npm package (tests/e2e/serve/openai_client.mjs:
# completion, chat, streamed chat with usage), /metrics moving, every bad
# request of issue #7 with its status and an OpenAI error object (the server
# keeps serving), a streamed client that disconnects frees its sequence,
# greedy text through the server equals `epserve generate`, and a burst of 40
# concurrent requests above capacity: each gets 200, 429 or 503, none is
# dropped, the server stays healthy. Bounded: < 90 s. Without node/npm or the
# npm registry, every other check runs and the test exits 77 (skipped).
bin=$1
src=$2
source "$(dirname "$0")/lib/serve.sh"
skipped=
check() { e2e_check "$@"; }
key=sekrit-$$
model=tiny-qwen3-moe

# Port 0: the server takes a free port and prints it.
E2E_SERVE_TIMEOUT=120 e2e_serve_start serve 2 --model $model --api-key "$key" \
  --max-model-len 2048 --max-num-seqs 8 --max-waiting 4 --routing baseline,banpick
check "$([[ $(curl -s -o /dev/null -w '%{http_code}' "$url/health") == 200 ]] && echo 1 || echo 0)" \
  "/health 200 at $url"

metric() { # metric <name-with-labels-prefix>: the value, 0 if absent
  curl -s "$url/metrics" | awk -v p="epserve:$1" '!f && index($0, p) == 1 { print $NF; f = 1 } END { if (!f) print 0 }'
}
gen_before=$(metric generation_tokens_total)

# ---- the official client ----
# Without node/npm or the npm registry the other checks still run; the test
# then ends as skipped (77), not passed.
npm_dir="$tmp/npm"
mkdir -p "$npm_dir"
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  echo "skip  the openai npm client: node/npm not installed (scripts/deps.sh installs them)"
  skipped="the openai npm client (node/npm not installed)"
elif (cd "$npm_dir" && timeout 60 npm install --no-audit --no-fund --silent openai@4 > "$tmp/npm.log" 2>&1); then
  cp "$src/tests/e2e/serve/openai_client.mjs" "$npm_dir/"
  if timeout 60 node "$npm_dir/openai_client.mjs" "$url" "$key" "$model" > "$tmp/node.log" 2>&1; then
    check 1 "openai npm client: completion, chat, streamed chat, errors ($(grep -c '^ok' "$tmp/node.log") checks)"
  else
    check 0 "openai npm client"; cat "$tmp/node.log"
  fi
elif grep -qiE 'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|network' "$tmp/npm.log"; then
  echo "skip  the openai npm client: the npm registry is unreachable:"; tail -3 "$tmp/npm.log"
  skipped="the openai npm client (npm registry unreachable)"
else
  check 0 "npm install openai"; tail -5 "$tmp/npm.log"
fi
if [[ -n $skipped ]]; then # the metric checks below need tokens served: one request by curl
  curl -s -o /dev/null -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    --data-binary '{"prompt": "Hello", "max_tokens": 4}' "$url/v1/completions"
fi
gen_after=$(metric generation_tokens_total)
check "$([[ $gen_after -gt $gen_before ]] && echo 1 || echo 0)" \
  "/metrics generation_tokens_total grew ($gen_before -> $gen_after)"
curl -s "$url/metrics" > "$tmp/metrics"
check "$(grep -q '^epserve:time_to_first_token_seconds_count' "$tmp/metrics" && echo 1 || echo 0)" \
  "/metrics has the TTFT histogram"
check "$(grep -q '^epserve:moe_avg_k{model_name="tiny-qwen3-moe",layer="1"}' "$tmp/metrics" && echo 1 || echo 0)" \
  "/metrics has moe_avg_k per layer"
queries=$(metric prefix_cache_queries_total)
check "$([[ $queries -gt 0 ]] && grep -q '^epserve:num_preemptions_total' "$tmp/metrics" && grep -q '^epserve:prefix_cache_hit_rate' "$tmp/metrics" && echo 1 || echo 0)" \
  "/metrics counts prefix-cache queries ($queries tokens) and has preemptions and the hit rate"

# ---- bad requests: status + error object, then still serving ----
post() { # post <path> <body> [auth header]: prints the status, body in $tmp/body
  local auth=${3-"Authorization: Bearer $key"}
  curl -s -o "$tmp/body" -w '%{http_code}' -H "$auth" -H 'Content-Type: application/json' \
    --data-binary "$2" "$url$1"
}
is_error() { # the body is {"error": {"message": str, "type": str, "param", "code"}} naming $1 in message or param
  python3 - "$tmp/body" "$1" << 'PY'
import json, sys
e = json.load(open(sys.argv[1]))["error"]
assert isinstance(e["message"], str) and isinstance(e["type"], str) and "param" in e and "code" in e
assert sys.argv[2] in e["message"] or sys.argv[2] == (e["param"] or ""), e
PY
}
bad() { # bad <status> <needle> <path> <body> [auth]
  local got
  got=$(post "$3" "$4" "${5-Authorization: Bearer $key}")
  check "$([[ $got == "$1" ]] && is_error "$2" && echo 1 || echo 0)" "$3 $(head -c 60 <<< "$4") -> $1 ($(head -c 120 "$tmp/body"))"
}
long=$(python3 -c 'print(",".join(["7"] * 2100))')
bad 400 "malformed JSON" /v1/completions '{"prompt": "hi", '
bad 400 max_tokens /v1/completions '{"prompt": "hi", "max_tokens": "ten"}'
bad 400 messages /v1/chat/completions '{"messages": "hi"}'
bad 404 model /v1/completions '{"model": "gpt-4", "prompt": "hi"}'
bad 400 max_tokens /v1/completions '{"prompt": "hi", "max_tokens": 100000}'
bad 400 prompt /v1/completions "{\"prompt\": [$long], \"max_tokens\": 4}"
bad 400 max_tokens /v1/completions '{"prompt": [1, 2, 3], "max_tokens": 2046}'
bad 400 n /v1/completions '{"prompt": "hi", "n": 2}'
bad 400 routing /v1/completions '{"prompt": "hi", "routing": "configs/routing/ban-local.yaml"}'
bad 400 pick_domain /v1/completions '{"prompt": "hi", "pick_domain": "nope"}'
bad 401 "API key" /v1/completions '{"prompt": "hi"}' "X-Nothing: 1"
bad 401 "API key" /v1/completions '{"prompt": "hi"}' "Authorization: Bearer wrong"
python3 -c 'print("{\"prompt\": \"" + "a" * 1100000 + "\"}")' > "$tmp/big.json"
bad 413 "larger than the limit" /v1/completions "@$tmp/big.json"
bad 404 endpoint /v1/embeddings '{}'
got=$(curl -s -o "$tmp/body" -w '%{http_code}' -H "Authorization: Bearer $key" "$url/v1/completions")
check "$([[ $got == 405 ]] && echo 1 || echo 0)" "GET /v1/completions -> 405"
got=$(post /v1/completions '{"prompt": [5, 6], "max_tokens": 3, "ignore_eos": true, "routing": "banpick"}')
check "$([[ $got == 200 ]] && python3 -c "import json,sys; u=json.load(open('$tmp/body'))['usage']; sys.exit(u['completion_tokens'] != 3)" && echo 1 || echo 0)" \
  "still serving after the bad requests (routing banpick, 3 tokens)"
check "$([[ $(curl -s -o /dev/null -w '%{http_code}' "$url/health") == 200 ]] && echo 1 || echo 0)" "/health still 200"
# A stop string ends the text before it (finish_reason stop, the string never sent).
got=$(post /v1/completions '{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "ignore_eos": true, "stop": ["e", "a"]}')
check "$([[ $got == 200 ]] && python3 -c "
import json, sys
c = json.load(open('$tmp/body'))['choices'][0]
sys.exit(not (c['finish_reason'] == 'stop' and 'e' not in c['text'] and 'a' not in c['text']))" && echo 1 || echo 0)" \
  "stop strings: finish_reason stop, text cut before them ($(head -c 200 "$tmp/body"))"

# ---- a streamed client that goes away frees its sequence ----
abort_before=$(metric 'request_success_total{model_name="tiny-qwen3-moe",finished_reason="abort"}')
curl -s -N --max-time 1.5 -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  --data-binary '{"prompt": [1, 2], "max_tokens": 2000, "ignore_eos": true, "stream": true}' \
  "$url/v1/completions" > "$tmp/cut.sse"
cut_rc=$?
running=x
for _ in $(seq 50); do
  running=$(metric num_requests_running)
  [[ $running == 0 ]] && break
  sleep 0.2
done
abort_after=$(metric 'request_success_total{model_name="tiny-qwen3-moe",finished_reason="abort"}')
check "$([[ $cut_rc == 28 && $(grep -c '^data: ' "$tmp/cut.sse") -ge 1 ]] && echo 1 || echo 0)" \
  "the streaming client got chunks, then cut the connection (curl rc $cut_rc)"
check "$([[ $running == 0 && $abort_after -gt $abort_before ]] && echo 1 || echo 0)" \
  "disconnect cancelled the request: running back to 0, aborted $abort_before -> $abort_after"

# ---- greedy through the server == epserve generate (text and usage) ----
same() { # same <server body file> <generate json file> <text path: text|chat>
  python3 - "$1" "$2" "$3" << 'PY'
import json, sys
s, g = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
c = s["choices"][0]
text = c["text"] if sys.argv[3] == "text" else c["message"]["content"]
ok = (text == g["text"] and s["usage"]["prompt_tokens"] == g["prompt_tokens"]
      and s["usage"]["completion_tokens"] == g["completion_tokens"] and c["finish_reason"] == g["finish_reason"])
if not ok: print("server:", repr(text), s["usage"], "generate:", repr(g["text"]), g["prompt_tokens"], g["completion_tokens"])
sys.exit(0 if ok else 1)
PY
}
post /v1/completions '{"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "ignore_eos": true}' > /dev/null
cp "$tmp/body" "$tmp/served.json"
timeout 60 mpirun -np 2 --oversubscribe "$bin" generate --model $model --prompt "Once upon a time" \
  --max-tokens 12 --ignore-eos --json > "$tmp/gen.json" 2> "$tmp/gen.err"
check "$(same "$tmp/served.json" "$tmp/gen.json" text && echo 1 || echo 0)" \
  "greedy completion through the server equals epserve generate (text, usage, finish_reason)"
post /v1/chat/completions '{"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 10, "temperature": 0, "ignore_eos": true, "routing": "banpick"}' > /dev/null
cp "$tmp/body" "$tmp/served_chat.json"
timeout 60 mpirun -np 2 --oversubscribe "$bin" generate --model $model --chat "Tell me a story" \
  --max-tokens 10 --ignore-eos --routing banpick --json > "$tmp/gen_chat.json" 2> "$tmp/gen.err"
check "$(same "$tmp/served_chat.json" "$tmp/gen_chat.json" chat && echo 1 || echo 0)" \
  "greedy chat (routing banpick) through the server equals epserve generate --chat"

# ---- burst above capacity: 8 running + 4 waiting, 40 sent at once ----
for i in $(seq 40); do
  curl -s -o "$tmp/burst.$i" -w '%{http_code}\n' --max-time 60 -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    --data-binary "{\"prompt\": [$i, 3, 4], \"max_tokens\": 16, \"ignore_eos\": true}" \
    "$url/v1/completions" > "$tmp/code.$i" &
done
wait_start=$SECONDS
while [[ $(jobs -r | wc -l) -gt 1 && $((SECONDS - wait_start)) -lt 60 ]]; do sleep 0.2; done
ok=0; refused=0; other=0
for i in $(seq 40); do
  case $(cat "$tmp/code.$i" 2> /dev/null) in
    200) ok=$((ok + 1)) ;;
    429 | 503) if python3 -c "import json; json.load(open('$tmp/burst.$i'))['error']['message']" 2> /dev/null; then
        refused=$((refused + 1)); else other=$((other + 1)); fi ;;
    *) other=$((other + 1)) ;;
  esac
done
check "$([[ $other == 0 && $((ok + refused)) == 40 && $ok -ge 1 ]] && echo 1 || echo 0)" \
  "burst of 40: $ok answered 200, $refused refused 429/503 with an error object, $other dropped or other"
check "$([[ $(curl -s -o /dev/null -w '%{http_code}' "$url/health") == 200 ]] && echo 1 || echo 0)" \
  "/health 200 after the burst"

# ---- clean stop: SIGTERM to rank 0 stops every rank, exit 0 ----
# (SIGTERM to mpirun itself makes Open MPI abort the job with its own status.)
e2e_serve_stop_clean "$server_pid" 10
check "$([[ $stop_rc == 0 ]] && echo 1 || echo 0)" "SIGTERM to rank 0 stops every rank (exit $stop_rc)"
server_pid=
if [[ $failures != 0 ]]; then
  echo "--- server stderr"; tail -20 "$tmp/serve.err"
  exit 1
fi
if [[ -n $skipped ]]; then
  echo "SKIP: every check that ran passed, but not $skipped"
  exit 77
fi
echo "all serve checks passed"
