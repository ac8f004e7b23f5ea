#!/usr/bin/env bash
# End to end: the automatic Pick domain (router/detect.h, docs/routing.md
# §4a) on tiny-qwen3-moe with its shipped calibrated profile (pick.domain
# auto, four domains). Three variants of it are written here:
#   auto  - the profile with 4 key experts per domain and layer (its 4 most
#           frequent), so that a detected domain visibly changes routing;
#   none  - the same with `domain: none` (Ban&Pick without a domain = Ban);
#   flat  - auto, but every domain has general's frequency: no domain can
#           win the margin, so every request must stay on plain Ban.
# Checks: a request with a detected domain routes differently from `none`
# (its decode steps add key experts: another mean K); a request with no
# domain detected gives exactly `none`'s tokens and mean K; `flat` never
# detects and equals `none`; profiles without auto report no domain; at two
# ranks the same holds; `serve` returns "epserve": {"pick_domain": ...} and
# counts it in /metrics. Bounded: < 90 s.
bin=$1
src=$2
source "$(dirname "$0")/lib/serve.sh"
check() { e2e_check "$@"; }

python3 - "$src/configs/routing/calibrated/tiny-qwen3-moe-calibrated.yaml" "$tmp" << 'PY'
import re, sys
text = open(sys.argv[1]).read().splitlines()
out = sys.argv[2]
# Per domain: its frequency rows (4 layers x 64) and the line of its key_experts.
doms, cur = {}, None
for i, line in enumerate(text):
    m = re.match(r"^    ([A-Za-z0-9_.+-]+):$", line)
    if m:
        cur = m.group(1); doms[cur] = {"key": None, "freq": []}
    elif cur and line.startswith("      key_experts:"):
        doms[cur]["key"] = i
    elif cur and line.startswith("        - ["):
        doms[cur]["freq"].append((i, [float(v) for v in line.strip()[3:-1].split(",")]))
assert list(doms) == ["general", "math", "code", "chat"], doms.keys()
def write(name, domain, flat):
    t = list(text)
    for d in doms.values():
        keys = {l: sorted(sorted(range(64), key=lambda e: (-row[e], e))[:4])
                for l, (_, row) in enumerate(d["freq"])}
        t[d["key"]] = "      key_experts: {%s}" % ", ".join(
            "%d: [%s]" % (l, ", ".join(map(str, k))) for l, k in keys.items())
        if flat:
            for (i, _), (j, _) in zip(d["freq"], doms["general"]["freq"]):
                t[i] = text[j]
    t = [("  domain: " + domain) if l == "  domain: auto" else l for l in t]
    open("%s/%s.yaml" % (out, name), "w").write("\n".join(t) + "\n")
write("auto", "auto", False)
write("none", "none", False)
write("flat", "auto", True)
PY
bash "$src/tests/e2e/calibrate.sh" --gen-data 1024 2 99 > "$tmp/prompts.jsonl"

gen() { # gen <np> <profile> <ids>: one JSON line
  timeout 60 mpirun -np "$1" --oversubscribe "$bin" generate --model tiny-qwen3-moe --tokens "$3" \
    --max-tokens 8 --routing "$2" --json 2> /dev/null < /dev/null | tail -1
}
field() { python3 -c "import json,sys; o=json.loads(sys.argv[1]); v=o.get('$2','absent'); print('null' if v is None else v)" "$1"; }
same() { python3 -c "import json,sys; a,b=(json.loads(x) for x in sys.argv[1:3]); print(int(a['ids']==b['ids'] and a['avg_k']==b['avg_k']))" "$1" "$2"; }

detected=0
undetected=0
n=0
while read -r line <&3; do
  ids=$(python3 -c "import json,sys; print(','.join(map(str, json.loads(sys.argv[1])['tokens'])))" "$line")
  a=$(gen 1 "$tmp/auto.yaml" "$ids")
  z=$(gen 1 "$tmp/none.yaml" "$ids")
  d=$(field "$a" pick_domain)
  n=$((n + 1))
  if [[ $d == null ]]; then
    undetected=$((undetected + 1))
    check "$(same "$a" "$z")" "prompt $n: no domain detected: tokens and mean K equal plain Ban's"
  else
    detected=$((detected + 1))
    check "$([[ $(field "$a" avg_k) != "$(field "$z" avg_k)" ]] && echo 1 || echo 0)" \
      "prompt $n: domain '$d' detected: mean K $(field "$a" avg_k) differs from plain Ban's $(field "$z" avg_k)"
  fi
  if [[ $n -le 3 ]]; then
    f=$(gen 1 "$tmp/flat.yaml" "$ids")
    check "$([[ $(field "$f" pick_domain) == null && $(same "$f" "$z") == 1 ]] && echo 1 || echo 0)" \
      "prompt $n: identical profiles: no domain, output equals plain Ban's"
    check "$([[ $(field "$z" pick_domain) == absent ]] && echo 1 || echo 0)" \
      "prompt $n: a profile without auto reports no pick_domain"
  fi
  if [[ $n -le 2 ]]; then
    a2=$(gen 2 "$tmp/auto.yaml" "$ids")
    check "$([[ $(field "$a2" pick_domain) == "$d" && $(same "$a2" "$a") == 1 ]] && echo 1 || echo 0)" \
      "prompt $n: 2 ranks detect '$d' too and generate the same"
  fi
done 3< "$tmp/prompts.jsonl"
check "$([[ $detected -ge 2 ]] && echo 1 || echo 0)" "$detected of $n prompts got a domain ($undetected none)"

# ---- serve: the response's extension field and /metrics ----
first=$(head -1 "$tmp/prompts.jsonl" | python3 -c "import json,sys; print(json.load(sys.stdin)['tokens'])")
want=$(field "$(gen 1 "$tmp/auto.yaml" "$(tr -d '[] ' <<< "$first")")" pick_domain)
E2E_SERVE_TIMEOUT=120 e2e_serve_start serve 2 --model tiny-qwen3-moe --routing "$tmp/auto.yaml"
curl -s -H 'Content-Type: application/json' \
  --data-binary "{\"prompt\": $first, \"max_tokens\": 4}" "$url/v1/completions" > "$tmp/resp.json"
got=$(python3 -c "import json,sys; e=json.load(open(sys.argv[1]))['epserve']; print('null' if e['pick_domain'] is None else e['pick_domain'])" "$tmp/resp.json" 2> /dev/null)
check "$([[ -n $got && $got == "$want" ]] && echo 1 || echo 0)" \
  "/v1/completions: \"epserve\": {\"pick_domain\": $got} (generate says $want)"
curl -s -N -H 'Content-Type: application/json' \
  --data-binary "{\"prompt\": $first, \"max_tokens\": 3, \"stream\": true}" "$url/v1/completions" > "$tmp/stream.txt"
check "$(grep -q '"epserve":{"pick_domain":' "$tmp/stream.txt" && echo 1 || echo 0)" \
  "the stream's final chunk carries the extension field"
curl -s "$url/metrics" > "$tmp/metrics"
label=$([[ $want == null ]] && echo none || echo "$want")
count=$(awk -v p="epserve:pick_domain_auto_total{" -v d="domain=\"$label\"" 'index($0, p) == 1 && index($0, d) { print $NF }' "$tmp/metrics")
check "$([[ $count == 2 ]] && echo 1 || echo 0)" "/metrics pick_domain_auto_total{domain=\"$label\"} = ${count:-absent} (2 requests)"
check "$(grep -c '^epserve:pick_domain_auto_total{' "$tmp/metrics" | grep -qx 5 && echo 1 || echo 0)" \
  "/metrics has a counter for each of the 4 domains and none"

echo "$failures failure(s)"
[[ $failures == 0 ]]
