#!/usr/bin/env bash
# End to end: sampling as OpenAI clients expect, through `epserve serve` on
# the tiny model at np 1 and np 2: a seeded request (temperature 1.2) gives
# the same text twice and the same text at np 1 and np 2; two unseeded ones
# differ; logit_bias +100 on one token makes every generated token that
# token; min_tokens holds back an EOS that logit_bias makes the argmax (3
# tokens then EOS: 4 completion tokens, finish "stop"; without min_tokens,
# 1); the penalties are accepted and change a greedy text; response_format
# json_object is refused naming the field. Bounded: < 60 s.
set -uo pipefail
bin=$1
tmp=$(mktemp -d)
server_pid=
stop_server() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2> /dev/null; then
    kill -TERM "$server_pid" 2> /dev/null
    for _ in $(seq 50); do kill -0 "$server_pid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2> /dev/null
  fi
  server_pid=
}
trap 'stop_server; rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1 EP_NUM_THREADS=1
failures=0
check() { # check <0|1> <message>
  if [[ $1 == 1 ]]; then echo "ok    $2"; else echo "FAIL  $2"; failures=$((failures + 1)); fi
}
py=python3
model=tiny-qwen3-moe
eos=$("$bin" tokenize --model $model --text '<|im_end|>' | tr -d '[] \n')

start_server() { # start_server <np>
  timeout 100 mpirun -np "$1" --oversubscribe "$bin" serve --model $model --port 0 \
    --max-model-len 512 --max-num-seqs 4 > "$tmp/serve$1.out" 2> "$tmp/serve$1.err" &
  server_pid=$!
  url=
  for _ in $(seq 300); do
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$tmp/serve$1.out" 2> /dev/null | head -1)
    [[ -n $url ]] && break
    kill -0 $server_pid 2> /dev/null || break
    sleep 0.1
  done
  [[ -n $url ]] || { echo "FAIL  server np $1 did not start"; cat "$tmp/serve$1.err"; exit 1; }
  for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$url/health") == 200 ]] && break
    sleep 0.1
  done
}
post() { # post <json> -> body on stdout
  curl -s -H 'Content-Type: application/json' -d "$1" "$url/v1/completions"
}
field() { # field <python expression over r> < body
  $py -c "import json,sys; r=json.load(sys.stdin); print($1)"
}
prompt='"prompt":[11,12,13,14,15]'

for np in 1 2; do
  start_server $np
  post "{$prompt,\"max_tokens\":12,\"temperature\":1.2,\"seed\":7}" | field 'r["choices"][0]["text"]' > "$tmp/seeded$np.a"
  post "{$prompt,\"max_tokens\":12,\"temperature\":1.2,\"seed\":7}" | field 'r["choices"][0]["text"]' > "$tmp/seeded$np.b"
  check "$(cmp -s "$tmp/seeded$np.a" "$tmp/seeded$np.b" && [[ -s $tmp/seeded$np.a ]] && echo 1 || echo 0)" \
    "np $np: seed 7 gives the same text twice"
  post "{$prompt,\"max_tokens\":12,\"temperature\":1.2}" | field 'r["choices"][0]["text"]' > "$tmp/u$np.a"
  post "{$prompt,\"max_tokens\":12,\"temperature\":1.2}" | field 'r["choices"][0]["text"]' > "$tmp/u$np.b"
  check "$(cmp -s "$tmp/u$np.a" "$tmp/u$np.b" && echo 0 || echo 1)" "np $np: two unseeded requests differ"
  # EOS (id $eos) made the argmax: min_tokens 3 holds it back for 3 tokens
  # (the owner rank samples: at np 2 it may be rank 1, which has no tokenizer).
  r0=$(post "{$prompt,\"max_tokens\":10,\"logit_bias\":{\"$eos\":100}}" | field 'r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]')
  r3=$(post "{$prompt,\"max_tokens\":10,\"min_tokens\":3,\"logit_bias\":{\"$eos\":100}}" | field 'r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]')
  check "$([[ $r0 == "1 stop" && $r3 == "4 stop" ]] && echo 1 || echo 0)" \
    "np $np: min_tokens 3 holds back EOS (without: '$r0', with: '$r3'; expected '1 stop', '4 stop')"
  if [[ $np == 1 ]]; then
    # logit_bias +100 on token 100: every token is 100 (the text is one piece repeated).
    post "{$prompt,\"max_tokens\":4,\"logit_bias\":{\"100\":100}}" > "$tmp/bias.json"
    same=$($py -c 'import json,sys; t=json.load(open(sys.argv[1]))["choices"][0]["text"]; print(int(len(t) > 0 and len(t) % 4 == 0 and t == t[:len(t)//4]*4))' "$tmp/bias.json")
    check "$same" "logit_bias +100 makes all 4 tokens the same"
    g0=$(post "{$prompt,\"max_tokens\":16,\"temperature\":0}" | field 'r["choices"][0]["text"]')
    g1=$(post "{$prompt,\"max_tokens\":16,\"temperature\":0,\"frequency_penalty\":2,\"repetition_penalty\":1.5}" | field 'r["choices"][0]["text"]')
    check "$([[ -n $g0 && $g0 != "$g1" ]] && echo 1 || echo 0)" "penalties change the greedy text"
    code=$(curl -s -o "$tmp/rf.json" -w '%{http_code}' -H 'Content-Type: application/json' \
      -d "{$prompt,\"response_format\":{\"type\":\"json_object\"}}" "$url/v1/completions")
    check "$([[ $code == 400 ]] && grep -q response_format "$tmp/rf.json" && echo 1 || echo 0)" \
      "response_format json_object: 400 naming the field ($code)"
  fi
  stop_server
done
check "$(cmp -s "$tmp/seeded1.a" "$tmp/seeded2.a" && echo 1 || echo 0)" \
  "seed 7: the same text at np 1 and np 2"
echo "serve_sampling: $failures failed"
[[ $failures == 0 ]]
