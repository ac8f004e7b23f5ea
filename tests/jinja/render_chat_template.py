#!/usr/bin/env python3
"""Renders a tokenizer_config.json's chat_template with jinja2, the way
transformers' apply_chat_template does (a sandboxed environment, the
special tokens as variables, add_generation_prompt), independently of
epserve.

Reads one JSON object on stdin:
    {"tokenizer_config": {...}, "messages": [{"role", "content"}, ...],
     "add_generation_prompt": true, "trim_blocks": true}
and prints the rendered text (no trailing newline added). trim_blocks also
sets lstrip_blocks, as transformers does; false renders with jinja2's
defaults, which a template free of whitespace between tags must not notice.
Exit 77 when jinja2 is missing.
"""

import json
import sys

try:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    print("render_chat_template: jinja2 is not installed", file=sys.stderr)
    sys.exit(77)


def token_text(t):
    """A special token as tokenizer_config.json gives it: a string, an
    AddedToken object ({"content": ...}) or null."""
    if isinstance(t, dict):
        return t.get("content")
    return t


def main():
    req = json.load(sys.stdin)
    tc = req["tokenizer_config"]
    trim = req.get("trim_blocks", True)
    env = ImmutableSandboxedEnvironment(trim_blocks=trim, lstrip_blocks=trim)
    tmpl = env.from_string(tc["chat_template"])
    out = tmpl.render(messages=req["messages"],
                      add_generation_prompt=req.get("add_generation_prompt", True),
                      bos_token=token_text(tc.get("bos_token")) or "",
                      eos_token=token_text(tc.get("eos_token")) or "",
                      pad_token=token_text(tc.get("pad_token")) or "")
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
