#!/usr/bin/env bash
# End to end: sampling as OpenAI clients expect, through `epserve serve` on
# the tiny model at np 1 and np 2: a seeded request (temperature 1.2) gives
# the same text twice and the same text at np 1 and np 2; two unseeded ones
# differ; logit_bias +100 on one token makes every generated token that
# token; min_tokens holds back an EOS that logit_bias makes the argmax (3
# tokens then EOS: 4 completion tokens, finish "stop"; without min_tokens,
# 1); the penalties are accepted and change a greedy text; response_format
# json_object is refused naming the field. Bounded: < 60 s.
bin=$1
source "$(dirname "$0")/lib/serve.sh"
py=python3
model=tiny-qwen3-moe
eos=$("$bin" tokenize --model $model --text '<|im_end|>' | tr -d '[] \n')

start_server() { # start_server <np>
  E2E_SERVE_TIMEOUT=100 e2e_serve_start "serve$1" "$1" --model $model --max-model-len 512 --max-num-seqs 4
}
stop_server() { e2e_serve_stop "$server_pid"; }
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
  e2e_check "$(cmp -s "$tmp/seeded$np.a" "$tmp/seeded$np.b" && [[ -s $tmp/seeded$np.a ]] && echo 1 || echo 0)" \
    "np $np: seed 7 gives the same text twice"
  post "{$prompt,\"max_tokens\":12,\"temperature\":1.2}" | field 'r["choices"][0]["text"]' > "$tmp/u$np.a"
  post "{$prompt,\"max_tokens\":12,\"temperature\":1.2}" | field 'r["choices"][0]["text"]' > "$tmp/u$np.b"
  e2e_check "$(cmp -s "$tmp/u$np.a" "$tmp/u$np.b" && echo 0 || echo 1)" "np $np: two unseeded requests differ"
  # EOS (id $eos) made the argmax: min_tokens 3 holds it back for 3 tokens
  # (the owner rank samples: at np 2 it may be rank 1, which has no tokenizer).
  r0=$(post "{$prompt,\"max_tokens\":10,\"logit_bias\":{\"$eos\":100}}" | field 'r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]')
  r3=$(post "{$prompt,\"max_tokens\":10,\"min_tokens\":3,\"logit_bias\":{\"$eos\":100}}" | field 'r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]')
  e2e_check "$([[ $r0 == "1 stop" && $r3 == "4 stop" ]] && echo 1 || echo 0)" \
    "np $np: min_tokens 3 holds back EOS (without: '$r0', with: '$r3'; expected '1 stop', '4 stop')"
  if [[ $np == 1 ]]; then
    # logit_bias +100 on token 100: every token is 100 (the text is one piece repeated).
    post "{$prompt,\"max_tokens\":4,\"logit_bias\":{\"100\":100}}" > "$tmp/bias.json"
    same=$($py -c 'import json,sys; t=json.load(open(sys.argv[1]))["choices"][0]["text"]; print(int(len(t) > 0 and len(t) % 4 == 0 and t == t[:len(t)//4]*4))' "$tmp/bias.json")
    e2e_check "$same" "logit_bias +100 makes all 4 tokens the same"
    g0=$(post "{$prompt,\"max_tokens\":16,\"temperature\":0}" | field 'r["choices"][0]["text"]')
    g1=$(post "{$prompt,\"max_tokens\":16,\"temperature\":0,\"frequency_penalty\":2,\"repetition_penalty\":1.5}" | field 'r["choices"][0]["text"]')
    e2e_check "$([[ -n $g0 && $g0 != "$g1" ]] && echo 1 || echo 0)" "penalties change the greedy text"
    code=$(curl -s -o "$tmp/rf.json" -w '%{http_code}' -H 'Content-Type: application/json' \
      -d "{$prompt,\"response_format\":{\"type\":\"json_object\"}}" "$url/v1/completions")
    e2e_check "$([[ $code == 400 ]] && grep -q response_format "$tmp/rf.json" && echo 1 || echo 0)" \
      "response_format json_object: 400 naming the field ($code)"
  fi
  stop_server
done
e2e_check "$(cmp -s "$tmp/seeded1.a" "$tmp/seeded2.a" && echo 1 || echo 0)" \
  "seed 7: the same text at np 1 and np 2"
echo "serve_sampling: $failures failed"
[[ $failures == 0 ]]
