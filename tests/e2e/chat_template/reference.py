#!/usr/bin/python3
# The reference renderer of the chat template parity test: Jinja2 set up as
# transformers' apply_chat_template sets it up (ImmutableSandboxedEnvironment
# with trim_blocks and lstrip_blocks, the loopcontrols extension, its tojson,
# raise_exception and strftime_now; the variables are the tokenizer's special
# tokens map, the template arguments, then messages, tools, documents=None
# and add_generation_prompt). Needs Debian's python3-jinja2 only.
#   reference.py tokenizer_config.json cases.jsonl > out.jsonl
# Each case line: {"messages", "tools"?, "add_generation_prompt"?, "kwargs"?};
# each output line: {"text": ...} or {"error": ...}.
import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


class Generation(jinja2.ext.Extension):
    """transformers' AssistantTracker without the tracking: {% generation %} renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def template_of(config):
    t = config["chat_template"]
    if isinstance(t, list):
        t = {e["name"]: e["template"] for e in t}["default"]
    return t


def special_tokens(config):
    m = {}
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                "mask_token"):
        v = config.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if v:
            m[key] = v
    extra = [v.get("content") if isinstance(v, dict) else v
             for v in config.get("additional_special_tokens") or []]
    if extra:
        m["additional_special_tokens"] = extra
    return m


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    config = json.load(open(sys.argv[1], encoding="utf-8"))
    template = make_env().from_string(template_of(config))
    tokens = special_tokens(config)
    for line in open(sys.argv[2], encoding="utf-8"):
        if not line.strip():
            continue
        case = json.loads(line)
        try:
            text = template.render(messages=case["messages"], tools=case.get("tools"),
                                   documents=None,
                                   add_generation_prompt=case.get("add_generation_prompt", True),
                                   **{**tokens, **case.get("kwargs", {})})
            out = {"text": text}
        except Exception as e:  # the parity test only needs to know that both refuse
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
