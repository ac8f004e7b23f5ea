#!/usr/bin/python3
# Small templates, one Jinja construct or refusal each, with what the
# reference renderer (Jinja2 as transformers sets it up, reference.py) makes
# of them. Writes tests/data/chat_template/constructs.json, which
# tests/unit/test_jinja.c checks epserve against; chat_template_parity.sh
# reruns this and requires the committed file to be what Jinja2 gives today.
#   constructs.py > tests/data/chat_template/constructs.json
# Each entry: {"name", "template", "vars", then either "text" (Jinja2's
# output, which epserve must equal), or "error" (a piece of the message
# epserve must fail with) plus "jinja2": "error" where Jinja2 fails too, or
# "renders" where epserve refuses what Jinja2 renders (a construct outside
# the subset), or "unchecked" where running it in Jinja2 is not useful (the
# work and size limits).
import json
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import make_env  # noqa: E402

OK = []  # (name, template, vars)
ERR = []  # (name, template, vars, needle, jinja2)


def ok(name, tmpl, **vars):
    OK.append((name, tmpl, vars))


def err(name, tmpl, needle, jinja2="error", **vars):
    ERR.append((name, tmpl, vars, needle, jinja2))


# ---- whitespace: trim_blocks, lstrip_blocks, - and + markers, comments, newlines
ok("lstrip and trim", "a\n  {% if true %}\n  b\n  {% endif %}\nc\n")
ok("lstrip tabs", "x\n\t \t{% if true %}y{% endif %}\n\t{# c #}\nz")
ok("lstrip at start", "   {% if true %}x{% endif %}")
ok("no lstrip after text", "a  {% if true %}b{% endif %}")
ok("+ keeps lstrip off", "a\n  {%+ if true %}x{% endif %}")
ok("+ keeps trim off", "{% if true +%}\nx{% endif +%}\ny")
ok("minus strips", "a  \n {%- if true -%}  \n b \n {%- endif -%} \n c")
ok("variable minus", "a {{- ' b ' -}} c\n{{ 'd' }}\ne")
ok("variable not trimmed", "{{ 'a' }}\n{{ 'b' }}\n")
ok("comments", "a\n{# comment #}\nb\n  {#- c -#}  x\n{# multi\nline #}y")
ok("for with lines", "{% for i in [1, 2] %}\n  {{ i }}\n{% endfor %}\nend")
ok("crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc\r")
ok("one trailing newline dropped", "x\n\n")
ok("unicode whitespace before -", "a\u3000\u00a0{%- if true %}b{% endif %}")
ok("unicode whitespace after -", "{% if true -%}\u2003\u00a0b{% endif %}")
ok("lstrip with unicode space", "a\n\u2003{% if true %}b{% endif %}")
ok("indented blocks", "{% for m in ms %}\n    {% if m %}\n        <{{ m }}>\n    {% endif %}\n{% endfor %}",
   ms=["x", "", "y"])
ok("text between tags", "{% if true %} {% endif %}|{% if true %}\n\n{% endif %}|")

# ---- literals, printing, repr
ok("numbers", "{{ 1 }} {{ -5 }} {{ 1.0 }} {{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 0.0001 }} {{ 0.1 + 0.2 }} "
   "{{ 123456789.123 }} {{ -0.0 }} {{ 1.5e300 * 1e300 }} {{ 2.5e-308 }} {{ 1_000 }} {{ 0x1F }} {{ 0o17 }} {{ 0b101 }}")
ok("float repr", "{{ 3 / 2 }} {{ 4 / 2 }} {{ 1 / 3 }} {{ 2 ** -1 }} {{ 100.0 }} {{ 1234567890123456.0 }} "
   "{{ 12345678901234567.0 }} {{ 5e-324 }} {{ 1.7976931348623157e308 }}")
ok("string escapes", "{{ '\\x41\\u00e9\\U0001F600\\n\\t\\\\\\q\\101' }}|{{ \"it's\" }}|{{ 'a' \"b\" 'c' }}")
ok("containers", "{{ [1, 'a', none, true, 1.5] }} {{ {'a': 1, 'b': [2]} }} {{ ('x',) }} {{ (1, 2) }} "
   "{{ [] }} {{ {} }} {{ () }} {{ [[], {}] }}")
ok("repr quoting", "{{ ['it\\'s', 'a\"b', 'a\\'\"b', 'tab\\t', '\\r\\n', 'é', '\\x00', '\\x7f', "
   "'\\u200b', '\\u00a0', '\\\\', '日本', '😀'] }}")
ok("print none bool", "{{ none }} {{ true }} {{ false }} {{ None }} {{ True }}")
ok("undefined prints empty", "[{{ x }}][{{ x ~ 'a' }}][{{ x|length }}][{{ x is defined }}]")
ok("dict from vars", "{{ d }} {{ l }}", d={"b": 1, "a": [1.5, None, True, "x"]}, l=[{"k": "v"}])
ok("namespace prints", "{% set ns = namespace(a=1) %}{% set ns.b = 'x' %}{{ ns }}")

# ---- operators
ok("arithmetic", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7.5 // 2 }} "
   "{{ -7.5 // 2 }} {{ -7.5 % 2 }} {{ 2 ** 10 }} {{ 2 ** 3 ** 2 }} {{ 10 - 2 - 3 }} {{ 1 + 2 * 3 }} "
   "{{ (1 + 2) * 3 }} {{ true + 1 }} {{ 1.5 + 1 }} {{ 2 * 0.5 }}")
ok("sequences", "{{ 'ab' * 3 }} {{ 3 * 'ab' }} {{ [1] * 2 }} {{ 'a' * 0 }}|{{ 'a' * -1 }}| {{ 'a' + 'b' }} "
   "{{ [1] + [2] }} {{ (1,) + (2,) }}")
ok("unary and filters", "{{ -1|abs }} {{ -(2) }} {{ +3 }} {{ - -2 }} {{ -x.y }}", x={"y": 4})
ok("concat", "{{ 'x' ~ none ~ true ~ 1.0 ~ [1] ~ y ~ 2 }} {{ 2 * 3 ~ 4 }} {{ (1 + 1) ~ 1 }}")
ok("comparison", "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ (1, 2) == [1, 2] }} "
   "{{ [1, [2]] == [1, [2]] }} {{ {'a': 1, 'b': 2} == {'b': 2, 'a': 1} }} {{ 'a' < 'b' }} "
   "{{ 'B' < 'a' }} {{ 'é' > 'z' }} {{ [1, 2] < [1, 3] }} {{ none == none }} {{ x == y }} {{ 1 != 2 }} "
   "{{ 2 >= 2.0 }} {{ 0.5 <= 0 }}")
ok("in", "{{ 'a' in 'cat' }} {{ '' in 'x' }} {{ 1 in [1.0] }} {{ 'a' in {'a': 1} }} {{ 'x' not in ['x'] }} "
   "{{ 'x' in y }} {{ not 'q' in 'abc' }} {{ [1] in [[1], 2] }}")
ok("and or", "{{ none or 'x' }} {{ 0 and 1 }} {{ '' or [] }} {{ 1 and 'y' }} {{ x or 'u' }} "
   "{{ not 1 == 2 }} {{ not true and false }} {{ false or true and false }}")
ok("conditional", "[{{ 'a' if false }}]{{ 1 if true else 2 if false else 3 }}|{{ x if x is defined else 'no' }}"
   "|{{ 'y' if [] else 'n' }}")
ok("number literal after dot", "{{ l.0 }} {{ l.1.0 }}", l=[5, [6]])

# ---- access
ok("attribute and item", "{{ d.a }}|{{ d['a'] }}|{{ d.x }}|{{ d['x'] }}|{{ n.x }}|{{ l.0 }}|{{ l[-1] }}|"
   "{{ l[7] }}|{{ d.get('a') }}|{{ d.get('x', 3) }}|{{ d.get('x') }}|{{ 'abc'.x }}|{{ 1.x }}",
   d={"a": 1}, n=None, l=[5, 6])
ok("methods shadow keys", "{{ d.items is callable }} {{ d['items'] is callable }} {{ d.keys is callable }} "
   "{{ d['keys'] is callable }}", d={"items": 5})
ok("slices", "{{ 'abc'[::-1] }} {{ [1, 2, 3][1:] }} {{ 'héllo'[1] }} [{{ 'abc'[5] }}] {{ [1, 2, 3][-1] }} "
   "{{ [1, 2, 3, 4, 5][::2] }} {{ [1, 2, 3, 4, 5][-2:] }} {{ 'héllo'[1:3] }} {{ [1, 2, 3][5:] }} "
   "{{ [1, 2, 3][:-1] }} {{ 'abcdef'[4:1:-1] }} {{ 'abcdef'[-100:100] }} {{ (1, 2, 3)[::-2] }} "
   "{{ 'ab'[none:true] }}")
ok("message shapes", "{{ m.role }}:{{ m['content'] }}:{{ m.tool_calls[0].function.name }}:"
   "{{ m.tool_calls[0]['function']['arguments'] | tojson }}:{{ m.missing is defined }}",
   m={"role": "assistant", "content": "x",
      "tool_calls": [{"function": {"name": "f", "arguments": {"a": [1, "é"]}}}]})

# ---- statements and scopes
ok("loop variables", "{% for x in [1, 2, 3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
   "{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.depth }}|{% endfor %}")
ok("loop neighbours", "{% for x in [1, 2, 3] %}{{ loop.previtem }},{{ loop.nextitem }},"
   "{{ loop.cycle('a', 'b') }}|{% endfor %}")
ok("for else", "{% for x in [] %}a{% else %}b{% endfor %}{% for x in [1] %}c{% else %}d{% endfor %}"
   "{% for x in u %}e{% else %}f{% endfor %}")
ok("for filter", "{% for x in [3, 1, 2] if x > 1 %}{{ loop.index }}/{{ loop.length }}:{{ x }} {% endfor %}")
ok("break continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}"
   "{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}|{% for a in [1, 2] %}{% for b in [1, 2] %}"
   "{% if b == 2 %}{% break %}{% endif %}{{ a }}{{ b }}{% endfor %}{% endfor %}")
ok("dict loops", "{% for k in d %}{{ k }}{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}"
   "|{% for k, v in d|items %}{{ k }}{{ v }}{% endfor %}|{{ d.keys()|list }}{{ d.values()|list }}",
   d={"b": 1, "a": 2})
ok("string loops", "{% for a, b in ['ab', 'cd'] %}{{ a }}{{ b }}{% endfor %}|{% for c in 'hé😀' %}[{{ c }}]"
   "{% endfor %}|{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}")
ok("nested loops", "{% for row in [[1, 2], [3]] %}{% for x in row %}{{ loop.index }}{{ x }}{% endfor %}"
   "{{ loop.index }};{% endfor %}")
ok("scopes", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }}|{% endfor %}{{ x }}|"
   "{% for i in [1, 2] %}{% if i == 2 %}[{{ y }}]{% endif %}{% set y = i %}{% endfor %}|"
   "{% if true %}{% set z = 5 %}{% endif %}{{ z }}|{% for i in [1] %}{% for j in [3] %}{% set w = j %}"
   "{% endfor %}{{ w }}{% endfor %}")
ok("namespace", "{% set ns = namespace(a=1, b='x') %}{% for i in [1, 2] %}{% set ns.a = ns.a + i %}"
   "{% endfor %}{{ ns.a }}{{ ns.b }}{{ ns.c }}|{% set n2 = namespace({'k': 1}, j=2) %}{{ n2.k }}{{ n2.j }}")
ok("set forms", "{% set a, b = [1, 2] %}{{ a }}{{ b }}|{% set (c, d) = 'xy' %}{{ c }}{{ d }}|"
   "{% set t = 1, 2 %}{{ t }}|{% set blk %}  in {{ a }}\n{% endset %}[{{ blk }}]")
ok("if elif else", "{% for x in [1, 2, 3, 4] %}{% if x == 1 %}a{% elif x == 2 %}b{% elif x == 3 %}c"
   "{% else %}d{% endif %}{% endfor %}")
ok("macros", "{% macro m(a, b=2, c=x) %}[{{ a }}{{ b }}{{ c }}{{ g }}{{ t }}]{% endmacro %}{% set t = 5 %}"
   "{{ m(1) }}{% set t = 6 %}{{ m(1, b=3) }}{{ m(c=0, a=9) }}{{ m() }}", g=9, x="X")
ok("macro varargs kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k=4) }}")
ok("macro recursion", "{% macro f(n) %}{{ n }}{% if n > 0 %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}")
ok("macro scope", "{% set x = 1 %}{% macro m() %}{% set x = 2 %}{{ x }}{% endmacro %}{{ m() }}{{ x }}"
   "{{ m() ~ '!' }}{{ m is callable }}")
ok("macro defined later", "[{{ m is defined }}]{% macro m() %}x{% endmacro %}{{ m() }}")
ok("generation block", "a{% generation %}b{{ 1 }}{% endgeneration %}c")

# ---- filters
ok("tojson", "{{ {'a': 'é\\n\"\\\\/\\t\\x01\\x7f', 'b': [1, 2.5, none, true, {}], 'c': [], 'd': 1e16} | tojson }}")
ok("tojson options", "{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true) }}|"
   "{{ x | tojson(separators=(',', ':')) }}|{{ x | tojson(ensure_ascii=true) }}|{{ 'x' | tojson }}|"
   "{{ [[]] | tojson(indent=0) }}|{{ {} | tojson(indent=2) }}|{{ x | tojson(true, 1) }}",
   x={"z": [1, {"é": "😀\u007f"}], "a": None, "m": {"n": []}})
ok("tojson of vars", "{% for t in tools %}{{ t | tojson }}\n{% endfor %}",
   tools=[{"type": "function", "function": {"name": "f", "description": "d — \"q\"",
                                            "parameters": {"type": "object", "properties": {
                                                "x": {"type": "number", "default": 0.1}},
                                                "required": ["x"]}}}])
ok("trim", "[{{ '  x  '|trim }}][{{ '\u3000x\\n'|trim }}][{{ 'xxaxx'|trim('x') }}][{{ u|trim }}][{{ 5|trim }}]")
ok("length", "{{ 'héllo'|length }} {{ [1, 2]|length }} {{ {'a': 1}|length }} {{ u|length }} {{ 'x'|count }}")
ok("string", "{{ 1|string ~ none|string ~ [1, 'a']|string }} [{{ u|string }}]")
ok("case", "{{ 'aBc'|lower }} {{ 'aBc'|upper }} {{ 'hello WORLD'|capitalize }} "
   "{{ 'hello-world (foo) [bar]<baz> x'|title }} {{ '日本 ok'|upper }}")
ok("first last", "{{ [1, 2]|first }}{{ [1, 2]|last }}{{ 'abc'|first }}{{ 'abc'|last }}[{{ []|first }}]"
   "{{ {'k': 1, 'j': 2}|first }}{{ {'k': 1, 'j': 2}|last }}")
ok("join", "{{ [1, 2]|join }} {{ ['a', 'b']|join(', ') }} {{ users|join('/', attribute='name') }} "
   "{{ 'abc'|join('-') }}", users=[{"name": "x"}, {"name": "y"}])
ok("default", "{{ u|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} {{ none|d('n') }} "
   "{{ 0|default(5, boolean=true) }} {{ u|default }}|")
ok("int float", "{{ '3'|int }} {{ '3.7'|int }} {{ 'abc'|int(5) }} {{ '1_000'|int }} {{ '  42 '|int }} "
   "{{ 3.9|int }} {{ -3.9|int }} {{ true|int }} {{ none|int }} {{ '1e3'|float }} {{ 'x'|float }} "
   "{{ '1.5'|float }} {{ 2|float }} {{ ' -.5 '|float }} {{ 'inf'|float }}")
ok("list", "{{ 'ab'|list }} {{ {'a': 1}|list }} {{ (1, 2)|list }} {{ u|list }}")
ok("replace", "{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'ab'|replace('', '-') }} "
   "{{ 'aaa'.replace('a', 'bb', 1) }} {{ 'ab'.replace('', '-', 2) }}")
ok("reverse", "{{ 'abc'|reverse }} {{ [1, 2, 3]|reverse|list }} {% for x in [1, 2]|reverse %}{{ x }}{% endfor %}")
ok("escape safe abs", "{{ '<a href=\"x\">&\\'</a>'|e }} {{ '<b>'|escape }} {{ '<i>'|safe }} {{ -2.5|abs }}")
ok("map", "{{ users|map(attribute='name')|list }} {{ [1, 2]|map('string')|list }} {{ ['a']|map('upper')|join }} "
   "{{ users|map(attribute='age', default=0)|list }} {{ users|map(attribute='name.0')|list }}",
   users=[{"name": "xa", "age": 3}, {"name": "yb"}])
ok("select", "{{ [0, 1, 2, 3]|select|list }} {{ [0, 1, 2, 3]|reject|list }} {{ [1, 2, 3, 4]|select('odd')|list }} "
   "{{ [1, 2, 3, 4]|select('divisibleby', 2)|list }} {{ msgs|selectattr('role', 'equalto', 'user')|list|length }} "
   "{{ msgs|rejectattr('role', 'equalto', 'user')|map(attribute='content')|join }} "
   "{{ msgs|selectattr('content')|list|length }} {% if msgs|selectattr('role', 'eq', 'tool') %}gen-true{% endif %}",
   msgs=[{"role": "user", "content": "a"}, {"role": "assistant", "content": ""},
         {"role": "user", "content": "c"}])
ok("indent", "{{ 'a\\nb\\n\\nc'|indent }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent(1, blank=true) }}|"
   "{{ 'x\\ny'|indent('> ') }}")

# ---- tests
ok("tests", "{{ u is defined }}{{ u is undefined }}{{ none is none }}{{ 0 is none }}{{ true is boolean }}"
   "{{ 1 is boolean }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 0 is false }}{{ 1 is integer }}"
   "{{ true is integer }}{{ 1.0 is float }}{{ true is number }}{{ 'a' is string }}{{ {} is mapping }}"
   "{{ [] is mapping }}{{ 'a' is iterable }}{{ 1 is iterable }}{{ u is iterable }}{{ [] is sequence }}"
   "{{ {} is sequence }}{{ 1 is sequence }}{{ range is callable }}{{ 'a'.upper is callable }}{{ 1 is callable }}")
ok("tests with arguments", "{{ 4 is even }}{{ 3 is odd }}{{ 9 is divisibleby(3) }}{{ 9 is divisibleby 4 }}"
   "{{ 1 is eq 1 }}{{ 1 is ne(2) }}{{ 1 is lt 2 }}{{ 2 is gt 1 }}{{ 2 is le 2 }}{{ 2 is ge 3 }}"
   "{{ 'a' is in 'abc' }}{{ 3 is in [1, 2] }}{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ 'aB' is lower }}"
   "{{ none is sameas none }}{{ true is sameas 1 }}{{ 2 is equalto 2 }}{{ 3 is greaterthan 2 }}"
   "{{ 3 is lessthan 2 }}{{ 1 is not none }}{{ x is string and x|length > 0 }}", x="s")

# ---- methods
ok("str methods", "{{ 'hello'.startswith('he') }}{{ 'hello'.startswith(('x', 'h')) }}{{ 'hello'.endswith('lo') }}"
   "{{ 'hello'.endswith(('x',)) }}|{{ 'a,b,,c'.split(',') }}{{ 'a,b,c'.split(',', 1) }}{{ '  a b  c '.split() }}"
   "{{ ' a  b c '.split(none, 1) }}{{ 'a b'.split(maxsplit=0) }}{{ 'a,b,c'.rsplit(',', 1) }}"
   "{{ '  a b  c '.rsplit(none, 1) }}{{ ''.split() }}{{ ''.split(',') }}|[{{ '  x \\n'.strip() }}]"
   "[{{ 'xxhixx'.strip('x') }}][{{ '\\n\\nhi\\n'.lstrip('\\n') }}][{{ 'hi\\n\\n'.rstrip('\\n') }}]"
   "[{{ 'abcba'.strip('ab') }}]|{{ 'héllo'.find('l') }}{{ 'hello'.find('z') }}{{ 'héllo'.rfind('l') }}"
   "{{ 'aaa'.count('a') }}{{ 'aaa'.count('aa') }}{{ 'abc'.count('') }}|{{ '-'.join(['a', 'b']) }}"
   "{{ ''.join('xyz') }}|{{ 'a\\nb\\r\\nc\\rd'.splitlines() }}{{ 'a\\nb\\n'.splitlines(true) }}"
   "|{{ 'prefix-x'.removeprefix('prefix-') }}{{ 'x.py'.removesuffix('.py') }}{{ 'x'.removesuffix('y') }}"
   "|{{ 'hello world'.title() }}{{ 'a1b c'.title() }}{{ 'hELLO'.capitalize() }}{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}")
ok("think stripping", "{% set c = m.split('</think>')[-1].lstrip('\\n') %}"
   "{% set r = m.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}[{{ r }}][{{ c }}]",
   m="<think>\nreason\n</think>\n\nanswer")
ok("list and dict methods", "{{ [1, 2, 1].count(1) }}{{ ['a', 'b'].index('b') }}{{ d.keys()|list }}"
   "{{ d.values()|list }}{{ d.items()|list }}{{ d.items()|length }}", d={"x": 1, "y": [2]})

# ---- globals
ok("range", "{{ range(3)|list }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ range(0)|list }} "
   "{{ range(3)|length }} {% for i in range(2) %}{{ i }}{% endfor %} {{ range(4)[1] }} {{ range(3)[::-1]|list }}")
ok("dict", "{{ dict(a=1, b='x') }} {{ dict({'k': 1}, j=2) }} {{ dict() }}")

# ---- both refuse
err("undefined attribute", "{{ x.y }}", "'x' is undefined")
err("undefined item", "{{ x['y'] }}", "'x' is undefined")
err("attribute of missing key", "{{ d.a.b }}", "'dict object' has no attribute 'a'", d={})
err("none attribute chain", "{{ n.x.y }}", "has no attribute 'x'", n=None)
err("undefined in arithmetic", "{{ x + 1 }}", "'x' is undefined")
err("str plus int", "{{ 'a' + 1 }}", "can only concatenate str (not \"int\") to str")
err("str plus none", "{{ 'a' + n }}", "can only concatenate str (not \"NoneType\") to str", n=None)
err("~ binds tighter than +", "{{ 1 + 1 ~ 1 }}", "unsupported operand type(s) for +: 'int' and 'str'")
err("int plus str", "{{ 1 + 'a' }}", "unsupported operand type(s) for +: 'int' and 'str'")
err("list plus tuple", "{{ [1] + (2,) }}", "can only concatenate list (not \"tuple\") to list")
err("ordering", "{{ 1 < 'a' }}", "'<' not supported between instances of 'int' and 'str'")
err("division by zero", "{{ 5 / 0 }}", "division by zero")
err("modulo by zero", "{{ 5 % 0 }}", "modulo by zero")
err("raise_exception", "{{ raise_exception('boom: ' ~ 1) }}", "the template raised an error: boom: 1")
err("set attribute of non-namespace", "{% set x = 1 %}{% set x.a = 2 %}", "cannot assign attribute on non-namespace object")
err("iterate none", "{% for x in n %}{% endfor %}", "'NoneType' object is not iterable", n=None)
err("iterate int", "{% for x in 3 %}{% endfor %}", "'int' object is not iterable")
err("in int", "{{ 'a' in 1 }}", "argument of type 'int' is not iterable")
err("in str needs str", "{{ 1 in 'abc' }}", "'in <string>' requires string as left operand, not int")
err("in none", "{{ '</think>' in n }}", "argument of type 'NoneType' is not iterable", n=None)
err("unpack mismatch", "{% for a, b in [[1, 2, 3]] %}{% endfor %}", "cannot unpack")
err("call non-callable", "{{ x() }}", "'int' object is not callable", x=1)
err("call undefined", "{{ nope() }}", "'nope' is undefined")
err("len of int", "{{ 1|length }}", "object of type 'int' has no len()")
err("join non-str", "{{ ', '.join([1]) }}", "sequence item 0: expected str instance, int found")
err("split empty separator", "{{ 'a'.split('') }}", "empty separator")
err("int of undefined", "{{ u|int }}", "'u' is undefined")
err("float of undefined", "{{ u|float }}", "'u' is undefined")
err("slice with undefined index", "{{ 'ab'[x:] }}", "'x' is undefined")
err("slice with a str index", "{{ 'ab'[k:] }}", "slice indices must be integers or None", k="a")
err("slice of a dict", "{{ d[1:] }}", "'dict' object is not subscriptable", d={})
err("slice of none", "{{ n[1:] }}", "'NoneType' object is not subscriptable", n=None)
err("slice step zero", "{{ 'abc'[::0] }}", "slice step cannot be zero")
err("range too big", "{{ range(100001)|length }}", "Range too big")
err("tojson of undefined", "{{ x|tojson }}", "Object of type Undefined is not JSON serializable")
err("list index", "{{ [1].index(5) }}", "x not in list")
err("macro too many arguments", "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", "takes not more than 1 argument")
err("macro unknown keyword", "{% macro m(a) %}{% endmacro %}{{ m(b=1) }}", "takes no keyword argument 'b'")
err("unknown filter argument", "{{ 'x'|trim(foo=1) }}", "unexpected keyword argument 'foo'")
# syntax errors (refused at parse time by both)
err("missing endif", "{% if x %}a", "{% endif %}")
err("missing endfor", "{% for x in y %}{% if x %}{% endif %}", "{% endfor %}")
err("stray endfor", "{% endfor %}", "unknown or misplaced tag 'endfor'")
err("unclosed variable", "{{ x ", "the {{ expression is not closed")
err("unclosed block", "{% if x ", "the {% tag is not closed")
err("unclosed comment", "{# x", "missing end of comment tag")
err("unclosed string", "{{ 'abc }}", "unterminated string literal")
err("dangling operator", "{{ 1 + }}", "expected an expression, found '}}'")
err("empty for", "{% for %}{% endfor %}", "expected for loop target")
err("unbalanced", "{{ (1 }}", "expected ')'")
err("bad bracket", "{{ [1) }}", "unexpected ')', expected ']'")
err("unknown tag", "{% frobnicate %}", "unknown or misplaced tag 'frobnicate'")
err("bad character", "{{ 1 ! 2 }}", "unexpected character '!'")
err("break outside loop", "{% break %}", "'break' outside a for loop")
err("positional after keyword", "{{ f(a=1, 2) }}", "positional argument follows a keyword argument")
err("assign to literal", "{% set true = 1 %}", "cannot assign to 'true'")
err("leading zeros", "{{ 012 }}", "leading zeros")
err("binary digits", "{{ 0b12 }}", "malformed number")

# ---- refused by epserve where Jinja2 renders: outside the subset, never rendered some other way
err("unsupported filter", "{{ 'a b'|wordcount }}", "filter 'wordcount' is not supported", jinja2="renders")
err("unsupported test", "{{ 1 is escaped }}", "test 'escaped' is not supported", jinja2="renders")
err("unsupported method", "{{ 'a'.zfill(3) }}", "str.zfill() is not supported", jinja2="renders")
err("str.format", "{{ '{}'.format(1) }}", "str.format() is not supported", jinja2="renders")
err("printf formatting", "{{ 'a %s' % 'b' }}", "printf-style formatting", jinja2="renders")
err("non-ASCII case", "{{ 'straße'|upper }}", "non-ASCII letter 'ß' is not supported", jinja2="renders")
err("non-ASCII lower method", "{{ 'Ä'.lower() }}", "non-ASCII letter 'Ä'", jinja2="renders")
err("print a generator", "{{ [1]|map('string') }}", "printing a generator is not supported", jinja2="renders")
err("print a range", "{{ range(3) }}", "printing a range is not supported", jinja2="renders")
err("print a dict view", "{{ {'a': 1}.items() }}", "printing a dict_items is not supported", jinja2="renders")
err("print a method", "{{ 'a'.upper }}", "printing a builtin_function_or_method is not supported", jinja2="renders")
err("print a macro", "{% macro m() %}{% endmacro %}{{ m }}", "printing a Macro is not supported", jinja2="renders")
err("non-string dict key", "{{ {1: 'a'} }}", "dict keys other than strings are not supported", jinja2="renders")
err("64-bit literal", "{{ 10000000000000000000 }}", "does not fit 64 bits", jinja2="renders")
err("64-bit overflow", "{{ 2 ** 70 }}", "integer overflow", jinja2="renders")
err("startswith with start", "{{ 'abc'.startswith('b', 1) }}", "start and end arguments are not supported", jinja2="renders")
err("int base", "{{ 'ff'|int(0, 16) }}", "bases other than 10 are not supported", jinja2="renders")
err("sameas on ints", "{{ 1 is sameas 1 }}", "CPython object identity", jinja2="renders")
err("dunder attribute", "{{ ''.__class__ }}", "is not accessible", jinja2="renders")
err("recursive loop", "{% for x in [1] recursive %}{% endfor %}", "recursive for loops are not supported", jinja2="renders")
err("include", "{% include 'x' %}", "{% include %} is not supported")
err("raw", "{% raw %}{{ x }}{% endraw %}", "{% raw %} is not supported", jinja2="renders")
err("with", "{% with a = 1 %}{{ a }}{% endwith %}", "{% with %} is not supported", jinja2="renders")
err("filter block", "{% filter upper %}x{% endfilter %}", "{% filter %} is not supported", jinja2="renders")
err("call block", "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}x{% endcall %}",
    "{% call %} is not supported", jinja2="renders")
err("star args", "{{ range(*[3]) }}", "calls with *args or **kwargs are not supported", jinja2="renders")
err("tuple subscript", "{{ d[1, 2] }}", "subscripts with several items", jinja2="renders", d={})
err("dotted filter", "{{ 'a'|x.y }}", "dotted filter names are not supported")
err("named escape", "{{ '\\N{BULLET}' }}", "named escapes", jinja2="renders")

# ---- limits (not run through Jinja2: it would run for minutes or exhaust memory)
err("work limit", "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
    "steps of work", jinja2="unchecked")
err("memory limit", "{% for i in range(20) %}{% set x = 'x' * 60000000 %}{% endfor %}",
    "MiB of memory", jinja2="unchecked")
err("output limit", "{{ 'x' * 100000000 }}", "longer than 64 MiB", jinja2="unchecked")
err("doubling string", "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "longer than 64 MiB", jinja2="unchecked")
err("macro recursion depth", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "macro calls nested deeper than 128",
    jinja2="unchecked")
err("evaluation depth through macros", "{% macro f() %}{{ " + "[" * 50 + "f()" + "]" * 50 + " }}{% endmacro %}{{ f() }}",
    "evaluation nested deeper than 3000", jinja2="unchecked")
err("expression depth", "{{ " + "(" * 300 + "1" + ")" * 300 + " }}", "nested deeper than", jinja2="unchecked")
err("block depth", "{% if 1 %}" * 200 + "{% endif %}" * 200, "nested deeper than", jinja2="unchecked")
err("operator chain depth", "{{ " + " + ".join(["1"] * 1000) + " }}", "expression nested deeper than",
    jinja2="unchecked")
err("filter chain depth", "{{ 'x'" + "|trim" * 1000 + " }}", "expression nested deeper than", jinja2="unchecked")


def main():
    env = make_env()
    out = []
    for name, tmpl, vars in OK:
        try:
            text = env.from_string(tmpl).render(**vars)
        except Exception as e:
            sys.exit(f"constructs.py: '{name}' is meant to render, but Jinja2 raised {type(e).__name__}: {e}")
        out.append({"name": name, "template": tmpl, "vars": vars, "text": text})
    for name, tmpl, vars, needle, jinja2 in ERR:
        if jinja2 != "unchecked":
            try:
                env.from_string(tmpl).render(**vars)
                got = "renders"
            except Exception:
                got = "error"
            if got != jinja2:
                sys.exit(f"constructs.py: '{name}': expected Jinja2 to give '{jinja2}', it gives '{got}'")
        out.append({"name": name, "template": tmpl, "vars": vars, "error": needle, "jinja2": jinja2})
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


main()
