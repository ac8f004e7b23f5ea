// A Jinja2 subset for chat templates: the lexer, parser and evaluator that
// render a checkpoint's `chat_template` as transformers does (Jinja2's
// ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the
// loopcontrols extension, transformers' `tojson`, `raise_exception` and
// `strftime_now`). docs/model.md lists the subset. What it does not support is
// refused with an error naming the construct and its line, at parse time when
// it can be seen there, else when the template runs into it: never rendered
// some other way. Templates come from checkpoint files, so both parse and
// render are bounded (nesting, work, memory, output).
#ifndef EP_JINJA_H
#define EP_JINJA_H

#include "common/ep.h"

#include <jansson.h>

typedef struct ep_jinja ep_jinja; // a parsed template: immutable, shareable across threads

// Limits; exceeding one is an error naming it.
enum {
    EP_JINJA_MAX_SOURCE_BYTES = 1 << 20, // template text
    EP_JINJA_MAX_DEPTH = 128,            // nesting of blocks and expressions; macro calls
    EP_JINJA_MAX_OUTPUT_BYTES = 64 << 20,
};
#define EP_JINJA_MAX_STEPS       10000000LL // expression evaluations + loop iterations per render
#define EP_JINJA_MAX_ARENA_BYTES (512LL << 20)

// Parses src[0..len) (UTF-8). `name` stands for the template in every
// message ("tokenizer_config.json 'chat_template'"). Errors: EP_ERR_FORMAT
// for a syntax error, EP_ERR_UNSUPPORTED for a construct outside the subset
// (an unknown filter or test, {% include %}, ...); both name the line.
ep_status ep_jinja_parse(const char *src, size_t len, const char *name, ep_jinja **out);
void ep_jinja_free(ep_jinja *t); // NULL ok

// Renders with the variables of `vars` (a JSON object; null, booleans,
// integers, reals, strings, arrays and objects become Python's None, bool,
// int, float, str, list and dict). The globals range, namespace, dict,
// raise_exception and strftime_now exist unless vars shadows them.
// *out is malloc'ed and NUL-terminated (*len without the NUL; len may be
// NULL). Errors (EP_ERR_ARG) name the template, the line and what failed:
// raise_exception's message, a TypeError-like mismatch ("can only
// concatenate str (not \"none\") to str"), an undefined value used as an
// object, a limit.
ep_status ep_jinja_render(const ep_jinja *t, const json_t *vars, char **out, size_t *len);

#endif
