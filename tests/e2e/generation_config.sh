#!/usr/bin/env bash
# End to end: a checkpoint's generation_config.json gives `generate` and
# `serve` their defaults, deterministically checked on a make-model tiny
# Qwen3 at 2 ranks against greedy (G) and seeded sampled (S) ids:
#   no file: generate is greedy (its built-in); a file with temperature 1 and
#   no top_k samples (== S, same seed); top_k 1 makes it greedy again (== G);
#   --top-k 0 on the command line wins (== S); do_sample false is greedy;
#   eos_token_id (an int, or a list) ends generation at the first such id
#   with finish_reason "stop"; max_new_tokens is the default length;
#   a bad value (temperature -1, an id outside the vocabulary) exits non-zero
#   naming the file and key; a key epserve does not apply is warned about.
#   serve: a request with no sampling fields gets the file's defaults (greedy
#   through top_k 1, max_new_tokens, eos) and equals generate; a request's
#   own max_tokens wins; /v1/models reports the generation_config.
set -uo pipefail
bin=$1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2> /dev/null; then
    kill -TERM "$server_pid" 2> /dev/null
    for _ in $(seq 50); do kill -0 "$server_pid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2> /dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
check() { # check <0|1> <message>
  if [[ $1 == 1 ]]; then echo "ok    $2"; else echo "FAIL  $2"; failures=$((failures + 1)); fi
}
field() { # field <json file> <python expression on o>
  python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

ck="$tmp/qwen"
"$bin" make-model --preset tiny-qwen3-moe --dtype f32 --out "$ck" > /dev/null || exit 1
rm -f "$ck/generation_config.json" # each case below writes its own
T=3,17,256,511,1000,42,7
gen() { # gen <out json> [options]: 12 tokens of prompt T at 2 ranks
  local out=$1
  shift
  timeout 120 mpirun --oversubscribe -np 2 "$bin" generate --model "$ck" --tokens $T \
    --max-tokens 12 --json "$@" > "$out" 2> "$out.err"
}
ids() { field "$1" '" ".join(map(str, o["ids"]))'; }
gc() { printf '%s\n' "$1" > "$ck/generation_config.json"; }

gen "$tmp/G.json" --temperature 0 --ignore-eos
gen "$tmp/S.json" --temperature 1 --seed 5 --ignore-eos
G=$(ids "$tmp/G.json")
S=$(ids "$tmp/S.json")
check "$([[ $(wc -w <<< "$G") == 12 && $(wc -w <<< "$S") == 12 && $G != "$S" ]] && echo 1 || echo 0)" \
  "greedy G [$G] and sampled S (seed 5) [$S] differ"

gen "$tmp/a.json" --seed 5 --ignore-eos
check "$([[ $(ids "$tmp/a.json") == "$G" && $(field "$tmp/a.json" 'o["generation_config"]') == None ]] && echo 1 || echo 0)" \
  "no generation_config.json: generate's built-in default is greedy"

gc '{"do_sample": true, "temperature": 1.0, "transformers_version": "4.51.0"}'
gen "$tmp/b.json" --seed 5 --ignore-eos
check "$([[ $(ids "$tmp/b.json") == "$S" && $(field "$tmp/b.json" 'o["sampling"]["temperature"]') == 1.0 ]] && echo 1 || echo 0)" \
  "file temperature 1: generate samples by default (== S)"

gc '{"do_sample": true, "temperature": 1.0, "top_k": 1}'
gen "$tmp/c.json" --seed 5 --ignore-eos
check "$([[ $(ids "$tmp/c.json") == "$G" && $(field "$tmp/c.json" 'o["sampling"]["top_k"]') == 1 ]] && echo 1 || echo 0)" \
  "file top_k 1: sampling at temperature 1 is greedy (== G)"
gen "$tmp/d.json" --seed 5 --ignore-eos --top-k 0
check "$([[ $(ids "$tmp/d.json") == "$S" ]] && echo 1 || echo 0)" \
  "--top-k 0 on the command line wins over the file's top_k 1 (== S)"

gc '{"do_sample": false, "temperature": 1.0}'
gen "$tmp/e.json" --seed 5 --ignore-eos
check "$([[ $(ids "$tmp/e.json") == "$G" ]] && echo 1 || echo 0)" \
  "file do_sample false: greedy whatever its temperature (== G)"

# The first id of G not seen before, from the third on, as the file's EOS.
read -r k X < <(python3 -c '
import sys
g = sys.argv[1].split()
for i in range(2, len(g)):
    if g[i] not in g[:i]:
        print(i, g[i]); break' "$G")
gc "{\"eos_token_id\": $X, \"top_k\": 1, \"temperature\": 1.0}"
gen "$tmp/f.json" --seed 5
want=$(cut -d' ' -f1-$((k + 1)) <<< "$G")
check "$([[ $(ids "$tmp/f.json") == "$want" && $(field "$tmp/f.json" 'o["finish_reason"]') == stop ]] && echo 1 || echo 0)" \
  "file eos_token_id $X: generation stops after $((k + 1)) tokens, finish_reason stop"
gc "{\"eos_token_id\": [1, $X], \"top_k\": 1, \"temperature\": 1.0}"
gen "$tmp/g.json" --seed 5 --ignore-eos
check "$([[ $(ids "$tmp/g.json") == "$G" ]] && echo 1 || echo 0)" \
  "eos_token_id as a list; --ignore-eos still generates all 12"

gc '{"max_new_tokens": 5, "do_sample": false}'
timeout 120 mpirun --oversubscribe -np 2 "$bin" generate --model "$ck" --tokens $T --json \
  --ignore-eos > "$tmp/h.json" 2> /dev/null
check "$([[ $(ids "$tmp/h.json") == "$(cut -d' ' -f1-5 <<< "$G")" ]] && echo 1 || echo 0)" \
  "file max_new_tokens 5: the default length without --max-tokens"

gc '{"temperature": -1}'
gen "$tmp/i.json" && rc=0 || rc=$?
check "$([[ $rc != 0 ]] && grep -q "generation_config.json: key 'temperature': expected a number >= 0, found an integer -1" "$tmp/i.json.err" && echo 1 || echo 0)" \
  "temperature -1 refused naming file and key ($(head -n 1 "$tmp/i.json.err"))"
gc '{"eos_token_id": [7, 5000]}'
gen "$tmp/j.json" && rc=0 || rc=$?
check "$([[ $rc != 0 ]] && grep -q "key 'eos_token_id\[1\]': expected a token id in \[0, 1024)" "$tmp/j.json.err" && echo 1 || echo 0)" \
  "an eos id outside the vocabulary refused naming it ($(head -n 1 "$tmp/j.json.err"))"
gc '{"repetition_penalty": 1.3, "top_k": 1, "temperature": 1.0}'
gen "$tmp/k.json" --seed 5 --ignore-eos
check "$([[ -n $(ids "$tmp/k.json") && $(ids "$tmp/k.json") != "$G" ]] && ! grep -q "repetition_penalty" "$tmp/k.json.err" && echo 1 || echo 0)" \
  "repetition_penalty 1.3 is applied without a warning: greedy ids differ from plain greedy"

# ---- serve ----
gc "{\"do_sample\": true, \"temperature\": 1.0, \"top_k\": 1, \"max_new_tokens\": 6, \"eos_token_id\": [$X]}"
timeout 120 mpirun --oversubscribe -np 2 "$bin" serve --model "$ck" --port 0 \
  > "$tmp/serve.out" 2> "$tmp/serve.err" &
server_pid=$!
url=
for _ in $(seq 300); do
  url=$(grep -o 'http://127.0.0.1:[0-9]*' "$tmp/serve.out" 2> /dev/null | head -1)
  [[ -n $url ]] && break
  kill -0 $server_pid 2> /dev/null || break
  sleep 0.1
done
if [[ -z $url ]]; then
  echo "FAIL  server did not start"
  cat "$tmp/serve.err"
  exit 1
fi
post() { # post <body> <out>
  curl -s -o "$2" -H 'Content-Type: application/json' --data-binary "$1" "$url/v1/completions"
}
prompt="[${T}]"
post "{\"prompt\": $prompt, \"ignore_eos\": true}" "$tmp/s1.json"
gen "$tmp/g6.json" --temperature 0 --ignore-eos --max-tokens 6
check "$([[ $(field "$tmp/s1.json" 'o["choices"][0]["text"]') == "$(field "$tmp/g6.json" 'o["text"]')" && $(field "$tmp/s1.json" 'o["usage"]["completion_tokens"]') == 6 ]] && echo 1 || echo 0)" \
  "serve, no sampling fields: the file's top_k 1 (greedy) and max_new_tokens 6 (== generate greedy)"
post "{\"prompt\": $prompt}" "$tmp/s2.json"
check "$([[ $(field "$tmp/s2.json" 'o["choices"][0]["finish_reason"]') == stop && $(field "$tmp/s2.json" 'o["usage"]["completion_tokens"]') == $((k + 1)) ]] && echo 1 || echo 0)" \
  "serve: the file's eos_token_id $X ends the request after $((k + 1)) tokens ($(head -c 160 "$tmp/s2.json"))"
post "{\"prompt\": $prompt, \"max_tokens\": 3, \"ignore_eos\": true}" "$tmp/s3.json"
check "$([[ $(field "$tmp/s3.json" 'o["usage"]["completion_tokens"]') == 3 ]] && echo 1 || echo 0)" \
  "serve: the request's max_tokens 3 wins over max_new_tokens 6"
curl -s -o "$tmp/models.json" "$url/v1/models"
check "$(python3 - "$tmp/models.json" "$X" << 'PY'
import json, sys
g = json.load(open(sys.argv[1]))["data"][0]["generation_config"]
x = int(sys.argv[2])
ok = (g["file"].endswith("/generation_config.json") and g["temperature"] == 1.0
      and g["top_k"] == 1 and g["top_p"] == 1.0 and g["max_tokens"] == 6
      and x in g["eos_token_id"] and 1023 in g["eos_token_id"] and g["ignored"] == [])
print(1 if ok else 0)
PY
)" "/v1/models reports the generation_config ($(head -c 300 "$tmp/models.json"))"

kill -TERM "$server_pid" 2> /dev/null
wait "$server_pid" 2> /dev/null
server_pid=
echo "$failures failed"
[[ $failures == 0 ]]
