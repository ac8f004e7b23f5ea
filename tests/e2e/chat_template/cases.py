#!/usr/bin/python3
# The conversations of the chat template parity test, deterministic: each base
# conversation below with add_generation_prompt true and false, and with
# enable_thinking absent, true and false (Qwen3's template argument; others
# ignore it). Prints one case a line: {"messages", "tools"?,
# "add_generation_prompt", "kwargs"?, "name"}.
#   cases.py > cases.jsonl
import json

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city — °C, \"quoted\", back\\slash",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "城市 / city"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {"name": "search", "description": "",
                 "parameters": {"type": "object", "properties": {}, "nullable": None,
                                "strict": True}},
}


def call(name, args, cid="call_1"):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


U = lambda c: {"role": "user", "content": c}
A = lambda c: {"role": "assistant", "content": c}
S = lambda c: {"role": "system", "content": c}
T = lambda c, cid="call_1": {"role": "tool", "content": c, "tool_call_id": cid}

UNICODE = "你好，世界！ Привет 👋🏽 مرحبا e\u0301 \u00a0nbsp\u3000 tab\there \"q\" 'a' \\n"
BASES = [
    ("one user", [U("Hello!")], None),
    ("system + user", [S("You are a helpful assistant."), U("Hi")], None),
    ("multi-turn", [S("Be brief."), U("Hi!"), A("Hello."), U("2+2?")], None),
    ("multi-turn no system", [U("a"), A("b"), U("c"), A("d"), U("e")], None),
    ("think in history",
     [U("What is 3*7?"), A("<think>\n3 times 7 is 21.\n</think>\n\n21"), U("And 4*7?")], None),
    ("think after last user",
     [U("Plan?"), A("<think>\nstep one\n</think>\n\nFirst step done.")], None),
    ("think without open tag", [U("x"), A("reasoning only\n</think>\n\nanswer"), U("y")], None),
    ("reasoning_content",
     [U("q1"), {"role": "assistant", "content": "a1", "reasoning_content": "because"}, U("q2"),
      {"role": "assistant", "content": "a2", "reasoning_content": "  trimmed\n"}], None),
    ("empty contents", [S(""), U(""), A(""), U("")], None),
    ("unicode", [S(UNICODE), U(UNICODE), A(UNICODE), U("日本語のテキスト 🚀")], None),
    ("template syntax in content",
     [U("{{ messages }} {% if x %}{# c #}"), A("{%- raw -%} }} %}"), U("<|im_start|>x<|im_end|>")],
     None),
    ("system not first", [U("a"), S("late system"), U("b")], None),
    ("two systems", [S("first"), S("second"), U("go")], None),
    ("tools defined", [S("Use tools."), U("Weather in Paris?")], [WEATHER, SEARCH]),
    ("tools, no system", [U("Weather in 東京?")], [WEATHER]),
    ("tool call and response",
     [U("Weather in Paris?"),
      {"role": "assistant", "content": "",
       "tool_calls": [call("get_weather", "{\"city\": \"Paris\"}")]},
      T("{\"temp\": 21}"), A("It is 21 °C."), U("Thanks")], [WEATHER]),
    ("tool call with text and two calls",
     [U("Compare Paris and Oslo"),
      {"role": "assistant", "content": "Let me check both.",
       "tool_calls": [call("get_weather", "{\"city\": \"Paris\"}", "c1"),
                      call("get_weather", "{\"city\": \"Oslo\"}", "c2")]},
      T("sunny", "c1"), T("snow ❄", "c2")], [WEATHER]),
    ("tool call arguments as an object",
     [U("Weather?"),
      {"role": "assistant", "content": "",
       "tool_calls": [call("get_weather", {"city": "Zürich", "days": 3, "ratio": 0.5,
                                           "ok": True, "none": None,
                                           "nested": {"a": [1, 2.25, "x"]}})]},
      T("cloudy")], [WEATHER]),
    ("tool call content null",
     [U("Weather?"),
      {"role": "assistant", "content": None,
       "tool_calls": [call("get_weather", "{\"city\": \"Paris\"}")]},
      T("rain"), A("Take an umbrella.")], [WEATHER]),
    ("tool response as user text",
     [U("q"), A("calling"), U("<tool_response>\nresult\n</tool_response>")], None),
    ("tool result last", [U("q"),
                          {"role": "assistant", "content": "",
                           "tool_calls": [call("search", "{}")]},
                          T("found")], [SEARCH]),
    ("long", [S("sys")] + [m for i in range(10) for m in (U(f"question {i}"), A(f"answer {i}"))]
     + [U("last")], None),
    ("assistant last", [U("Write a haiku"), A("Autumn moonlight—")], None),
]


def main():
    n = 0
    for name, msgs, tools in BASES:
        for agp in (True, False):
            for think in (None, True, False):
                case = {"name": f"{name} / agp={agp} / enable_thinking={think}",
                        "messages": msgs, "add_generation_prompt": agp}
                if tools is not None:
                    case["tools"] = tools
                if think is not None:
                    case["kwargs"] = {"enable_thinking": think}
                print(json.dumps(case, ensure_ascii=False))
                n += 1


main()
