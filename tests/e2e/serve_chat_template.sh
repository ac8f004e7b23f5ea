#!/usr/bin/env bash
# End to end: a checkpoint's own chat template in `epserve serve` and
# `epserve generate --chat`. The tiny Qwen3 checkpoint (make-model) gets the
# real Qwen3 tokenizer_config.json (tests/data/chat_template/). The server
# must say it uses that template, and for each request the prompt it counts
# (usage.prompt_tokens) must be the token count of what `epserve
# chat-template --model` renders for the same messages, tools and template
# arguments: enable_thinking false (the empty think block, which the built-in
# template never writes), <think> stripped from history, tools and a tool
# call with its response, add_generation_prompt false; with python3-jinja2
# installed, also that of Jinja2's rendering. Template errors are
# 400s naming the file and line; a reserved template argument is refused.
# generate --chat counts the same prompt. Bounded: < 60 s; needs python3.
bin=$1
src=$2
source "$(dirname "$0")/lib/serve.sh"
check() { e2e_check "$@"; }

ck=$tmp/ckpt
"$bin" make-model --preset tiny-qwen3-moe --out "$ck" > /dev/null || { echo "FAIL  make-model"; exit 1; }
cp "$src/tests/data/chat_template/qwen3.tokenizer_config.json" "$ck/tokenizer_config.json"

# count <model> <request.json>: tokens of the prompt `epserve chat-template`
# renders for the request's messages, tools, chat_template_kwargs and
# add_generation_prompt (the CLI path, independent of the server's).
count() {
  python3 - "$2" "$tmp" << 'PY'
import json, sys
r = json.load(open(sys.argv[1], encoding="utf-8"))
d = sys.argv[2]
json.dump(r["messages"], open(d + "/c_messages.json", "w"), ensure_ascii=False)
json.dump(r.get("tools", []), open(d + "/c_tools.json", "w"), ensure_ascii=False)
json.dump(r.get("chat_template_kwargs", {}), open(d + "/c_kwargs.json", "w"))
open(d + "/c_flags", "w").write("" if r.get("add_generation_prompt", True) else "--no-generation-prompt")
PY
  local tools=()
  python3 -c 'import json,sys; sys.exit(0 if "tools" in json.load(open(sys.argv[1])) else 1)' "$2" &&
    tools=(--tools "$tmp/c_tools.json")
  # shellcheck disable=SC2046
  "$bin" chat-template --model "$1" --messages "$tmp/c_messages.json" "${tools[@]}" \
    --kwargs "$(cat "$tmp/c_kwargs.json")" $(cat "$tmp/c_flags") > "$tmp/c_text" 2> "$tmp/c_err" || { echo refused; return; }
  python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1], encoding="utf-8").read()))' "$tmp/c_text" > "$tmp/c_line"
  "$bin" tokenize --model "$1" --lines "$tmp/c_line" | python3 -c 'import json,sys; print(len(json.loads(sys.stdin.read())))'
}

# count_ref <request.json>: the same with python3-jinja2 rendering the
# template (tests/e2e/chat_template/reference.py), "" without jinja2.
count_ref() {
  /usr/bin/python3 -c 'import jinja2' 2> /dev/null || return 0
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1], encoding="utf-8"))
c = {"messages": r["messages"], "add_generation_prompt": r.get("add_generation_prompt", True),
     "kwargs": r.get("chat_template_kwargs", {})}
if "tools" in r: c["tools"] = r["tools"]
print(json.dumps(c, ensure_ascii=False))' "$1" > "$tmp/ref_case.jsonl"
  /usr/bin/python3 "$src/tests/e2e/chat_template/reference.py" "$ck/tokenizer_config.json" "$tmp/ref_case.jsonl" |
    python3 -c 'import json,sys; print(json.dumps(json.loads(sys.stdin.read())["text"]))' > "$tmp/ref_line"
  "$bin" tokenize --model "$ck" --lines "$tmp/ref_line" | python3 -c 'import json,sys; print(len(json.loads(sys.stdin.read())))'
}

# ---- generate --chat on the checkpoint --------------------------------------
cat > "$tmp/hi.json" << 'EOF'
{"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"enable_thinking": false}}
EOF
timeout 60 mpirun -np 1 "$bin" generate --model "$ck" --chat hi \
  --chat-template-kwargs '{"enable_thinking": false}' --max-tokens 1 --json > "$tmp/gen.json" 2> "$tmp/gen.err"
got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["prompt_tokens"])' "$tmp/gen.json" 2> /dev/null)
want=$(count "$ck" "$tmp/hi.json")
builtin=$(count tiny-qwen3-moe "$tmp/hi.json")
check "$([[ -n $got && $got == "$want" && $want != "$builtin" ]] && echo 1 || echo 0)" \
  "generate --chat renders the checkpoint's template: $got prompt tokens (chat-template: $want; the built-in template: $builtin)"

# ---- the server ---------------------------------------------------------------
E2E_SERVE_TIMEOUT=120 e2e_serve_start serve 1 --model "$ck" --max-model-len 2048
check "$(grep -qF "chat template: $ck/tokenizer_config.json 'chat_template'" "$tmp/serve.out" && echo 1 || echo 0)" \
  "the server says it uses $ck/tokenizer_config.json's chat_template"

post() { # post <request.json>: prints the status, body in $tmp/body
  curl -s -o "$tmp/body" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary @"$1" "$url/v1/chat/completions"
}
served() { # served <name> <request.json>: the prompt tokens the server counted = the CLI's = Jinja2's
  local status got want ref builtin
  status=$(post "$2")
  got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["usage"]["prompt_tokens"])' "$tmp/body" 2> /dev/null)
  want=$(count "$ck" "$2")
  ref=$(count_ref "$2")
  builtin=$(count tiny-qwen3-moe "$2")
  check "$([[ $status == 200 && $got == "$want" && (-z $ref || $ref == "$want") ]] && echo 1 || echo 0)" \
    "$1: status $status, $got prompt tokens (chat-template: $want, python3-jinja2: ${ref:-not installed}; the built-in template: $builtin)"
  last_want=$want last_builtin=$builtin
}

python3 - "$tmp" << 'PY'
import json, sys
d = sys.argv[1]
conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3*7?"},
        {"role": "assistant", "content": "<think>\n3 times 7.\n</think>\n\n21"},
        {"role": "user", "content": "And 4*7? 你好 👋"}]
weather = {"type": "function", "function": {"name": "get_weather", "description": "Weather — °C",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}}
tool_turns = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": "",
               "tool_calls": [{"id": "c1", "type": "function",
                               "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
              {"role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "c1"}]
reqs = {
    "think_off": {"messages": conv, "chat_template_kwargs": {"enable_thinking": False}},
    "think_on": {"messages": conv},
    "tools": {"messages": tool_turns, "tools": [weather], "tool_choice": "auto"},
    "no_gen_prompt": {"messages": conv, "add_generation_prompt": False},
    "content_null": {"messages": [tool_turns[0], dict(tool_turns[1], content=None), tool_turns[2]],
                     "tools": [weather]},
    "reserved": {"messages": conv, "chat_template_kwargs": {"messages": []}},
}
for name, r in reqs.items():
    r.update({"max_tokens": 1, "temperature": 0})
    json.dump(r, open(f"{d}/{name}.json", "w"), ensure_ascii=False)
PY
served "enable_thinking false" "$tmp/think_off.json"
check "$([[ $last_builtin != "$last_want" ]] && echo 1 || echo 0)" \
  "the checkpoint's template is not the built-in one here ($last_want vs $last_builtin tokens)"
served "enable_thinking absent" "$tmp/think_on.json"
served "tools, a tool call and its response" "$tmp/tools.json"
served "add_generation_prompt false" "$tmp/no_gen_prompt.json"

# Errors of the template are 400s with its file and line; reserved arguments are refused.
status=$(post "$tmp/content_null.json")
check "$([[ $status == 400 ]] && python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["error"]
sys.exit(0 if "tokenizer_config.json '"'"'chat_template'"'"' line" in e["message"] and "not iterable" in e["message"] and e["param"] == "messages" else 1)' "$tmp/body" && echo 1 || echo 0)" \
  "content null with tool calls: 400 from the template, naming its line ($(head -c 160 "$tmp/body"))"
status=$(post "$tmp/reserved.json")
check "$([[ $status == 400 ]] && grep -q "set by the request" "$tmp/body" && echo 1 || echo 0)" \
  "chat_template_kwargs 'messages': 400 ($status)"
check "$([[ $(curl -s -o /dev/null -w '%{http_code}' "$url/health") == 200 ]] && echo 1 || echo 0)" \
  "/health 200 after the refusals"

kill -TERM $server_pid 2> /dev/null
wait $server_pid 2> /dev/null
server_pid=
if [[ $failures != 0 ]]; then
  echo "--- server stderr"; tail -20 "$tmp/serve.err"
  exit 1
fi
echo "all chat template serve checks passed"
