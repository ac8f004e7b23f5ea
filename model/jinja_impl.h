// Internals of the Jinja subset (model/jinja*.c): the arena every parse and
// render allocates from, errors, values (Python's None/bool/int/float/str/
// list/tuple/dict plus Jinja's undefined, namespace, loop and macro), the
// AST, and what the evaluator and the builtins share. Not a public header.
//
// Errors unwind with longjmp to the parse or render entry point. That is
// safe because every allocation made below that point lives in the arena,
// which the entry point frees in one go; nothing between holds a lock, a
// file or a malloc'ed block.
#ifndef EP_JINJA_IMPL_H
#define EP_JINJA_IMPL_H

#include "model/jinja.h"

#include <setjmp.h>
#include <stdnoreturn.h>

// ---- arena, errors -------------------------------------------------------------------

typedef struct jj_chunk jj_chunk;
typedef struct {
    jj_chunk *chunks;
    long long bytes, limit; // allocated so far, the most allowed
    jmp_buf *jb;            // where jj_fail jumps
    ep_status st;           // set by jj_fail
    char msg[768];          // set by jj_fail: "<name> line N: ..."
    const char *name;       // the template, for messages
} jj_ctx;

void *jj_alloc(jj_ctx *c, size_t n); // zeroed, max-aligned; fails past the limit
void jj_arena_free(jj_ctx *c);
noreturn void jj_fail(jj_ctx *c, ep_status st, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

// ---- values ---------------------------------------------------------------------------

typedef struct {
    const char *p; // UTF-8, not NUL-terminated; arena or AST memory
    size_t n;      // bytes
} jj_str;

typedef enum {
    JV_UNDEF, // Jinja's Undefined: prints as "", false, fails as an object
    JV_NONE,
    JV_BOOL,
    JV_INT,
    JV_FLOAT,
    JV_STR,
    JV_LIST, // list, tuple, and the lazy sequences (generator, dict view, range)
    JV_DICT,
    JV_NS,    // namespace(): a dict whose attributes `set` may assign
    JV_LOOP,  // the `loop` of a for
    JV_FUNC,  // a builtin function or a method bound to its object
    JV_MACRO, // a {% macro %} with the frame it was defined in
} jv_type;

// What a JV_LIST is in Python terms: printing, len(), truthiness and ==
// differ (a generator has no len and is always true; views and ranges print
// as something epserve does not reproduce, so printing them is refused).
typedef enum { JL_LIST, JL_TUPLE, JL_GEN, JL_VIEW, JL_RANGE } jl_kind;

typedef struct jv jv;
typedef struct {
    jv *v;
    size_t n;
    jl_kind kind;
    const char *what; // Python's type name: "list", "tuple", "generator", "dict_items", "range"
} jj_list;

typedef struct {
    jj_str *k; // string keys only (JSON objects, and literals checked by the evaluator)
    jv *v;
    size_t n, cap;
} jj_dict;

typedef struct jj_loop jj_loop;
typedef struct jj_func jj_func;
typedef struct jj_macro jj_macro;

struct jv {
    jv_type t;
    union {
        bool b;
        int64_t i;
        double f;
        jj_str s;
        jj_list *l;
        jj_dict *d; // DICT, NS
        jj_loop *loop;
        jj_func *fn;
        jj_macro *m;
        const char *undef; // UNDEF: why ("'x' is undefined"), for the error when it is used
    } u;
};

static inline jv jv_undef(const char *why)
{
    return (jv){.t = JV_UNDEF, .u.undef = why};
}
static inline jv jv_none(void)
{
    return (jv){.t = JV_NONE};
}
static inline jv jv_bool(bool b)
{
    return (jv){.t = JV_BOOL, .u.b = b};
}
static inline jv jv_int(int64_t i)
{
    return (jv){.t = JV_INT, .u.i = i};
}
static inline jv jv_float(double f)
{
    return (jv){.t = JV_FLOAT, .u.f = f};
}
static inline jv jv_strn(const char *p, size_t n)
{
    return (jv){.t = JV_STR, .u.s = {p, n}};
}

// ---- tokens (jinja_lex.c) -------------------------------------------------------------

typedef enum {
    JT_EOF,
    JT_DATA,        // text between tags, whitespace rules applied
    JT_VAR_BEGIN,   // {{
    JT_VAR_END,     // }}
    JT_BLOCK_BEGIN, // {%
    JT_BLOCK_END,   // %}
    JT_NAME,
    JT_STRING, // s: the decoded value
    JT_INT,
    JT_FLOAT,
    JT_OP, // s: the operator's text
} jj_tok_type;

typedef struct {
    jj_tok_type t;
    int line;
    jj_str s;
    int64_t i;
    double f;
} jj_tok;

// The tokens of a template, ending with JT_EOF; fails (jj_fail) on a lexical error.
jj_tok *jj_lex(jj_ctx *c, const char *src, size_t len);

// ---- the AST ---------------------------------------------------------------------------

typedef enum {
    JE_LIT,    // lit
    JE_NAME,   // name
    JE_LIST,   // args
    JE_TUPLE,  // args
    JE_DICT,   // args: key, value, key, value, ...
    JE_ATTR,   // a.name
    JE_ITEM,   // a[b]
    JE_SLICE,  // a[args[0]:args[1]:args[2]] (NULL: absent)
    JE_CALL,   // a(args, kw=kwv)
    JE_FILTER, // a | name(args, kw=kwv), op: the filter
    JE_TEST,   // a is [not] name(args), op: the test
    JE_NOT,    // not a
    JE_NEG,    // -a
    JE_POS,    // +a
    JE_BIN,    // a op b, op: jo_op
    JE_CMP,    // a ops[0] args[0] ops[1] args[1] ... (chained, as Python)
    JE_AND,    // a and b
    JE_OR,     // a or b
    JE_COND,   // a if b else c (c NULL: undefined)
    JE_CONCAT, // args[0] ~ args[1] ~ ...
} je_kind;

typedef enum { JO_ADD, JO_SUB, JO_MUL, JO_DIV, JO_FDIV, JO_MOD, JO_POW } jo_op;
typedef enum { JC_EQ, JC_NE, JC_LT, JC_LE, JC_GT, JC_GE, JC_IN, JC_NOTIN } jc_op;

typedef struct jj_expr jj_expr;
struct jj_expr {
    je_kind k;
    int line;
    int depth; // of the tree below, bounded by the parser
    int op;
    bool negate; // TEST: `is not`
    jj_str name;
    jv lit;
    jj_expr *a, *b, *c;
    jj_expr **args;
    int n_args;
    jj_str *kw; // keyword argument names [n_kw]
    jj_expr **kwv;
    int n_kw;
    int *ops; // CMP: [n_args]
};

typedef enum {
    JN_TEXT,     // text
    JN_OUT,      // {{ e }}
    JN_IF,       // if e: body else els (elif is an IF alone in els)
    JN_FOR,      // for names in e [if cond]: body else els
    JN_SET,      // set names = e, or set names[0].attr = e
    JN_SETBLOCK, // set names[0]: body endset
    JN_BREAK,
    JN_CONTINUE,
    JN_MACRO, // macro names[0](params = defaults): body
    JN_PASS,  // {% generation %} body: rendered as it is (transformers' AssistantTracker)
} jn_kind;

typedef struct jj_node jj_node;
typedef struct {
    jj_node **v;
    int n;
} jj_body;

struct jj_node {
    jn_kind k;
    int line;
    jj_str text;
    jj_expr *e, *cond;
    jj_body body, els;
    jj_str *names;
    int n_names;
    jj_str attr; // SET of a namespace attribute (attr.p != NULL)
    jj_str *params;
    jj_expr **defaults; // [n_params], NULL where none
    int n_params;
    bool varargs, kwargs; // MACRO: the body reads `varargs` / `kwargs`
};

struct ep_jinja {
    jj_ctx c; // the arena holding the AST and its strings
    jj_body root;
    char *name;
};

// ---- what the evaluator and the builtins share ----------------------------------------

typedef struct jj_frame jj_frame;
struct jj_frame {
    jj_frame *parent;
    jj_str *k;
    jv *v;
    int n, cap;
    bool captured; // a macro defined here keeps it: a loop must not reuse it
};

typedef struct {
    char *p;
    size_t n, cap;
} jj_buf;

typedef struct {
    jj_ctx *c;
    const ep_jinja *t;
    jj_buf *out; // where text goes now (a capture for set blocks and macros)
    long long steps;
    int depth;      // macro calls
    int eval_depth; // nested evaluations (C stack), all macros together
} jj_render;

struct jj_loop {
    const jv *items; // the iterated sequence (after the loop's `if` filter)
    size_t n, i;
};

struct jj_func {
    int id;  // a method or global id (jinja_lib.c)
    jv self; // the bound object (methods)
    const char *name;
};

struct jj_macro {
    const jj_node *def;
    jj_frame *env; // the frame it was defined in: its body sees that frame's names
};

// Strings and buffers.
jj_str jj_str_dup(jj_ctx *c, const char *p, size_t n);
jj_str jj_cstr(const char *s);
bool jj_str_eq(jj_str a, const char *s);
void jj_buf_add(jj_ctx *c, jj_buf *b, const char *p, size_t n);
void jj_buf_addc(jj_ctx *c, jj_buf *b, const char *s);
size_t jj_cp_count(jj_str s); // code points
// The first n[0..nn) in h[0..hn), NULL if none (memmem without _GNU_SOURCE).
const char *jj_memfind(const char *h, size_t hn, const char *n, size_t nn);
bool jj_py_isspace(uint32_t cp); // Python's str.isspace() for one code point
uint32_t jj_cp_at(const char *p, size_t n, size_t *len); // one code point of valid UTF-8

// Values.
const char *jv_type_name(const jv *v); // Python's: 'str', 'NoneType', 'dict', ...
bool jv_truthy(const jv *v);
bool jv_equal(const jv *a, const jv *b);
// Python's <, <=, ... as -1/0/1; fails (TypeError) for types Python cannot order.
int jv_compare(jj_ctx *c, int line, const jv *a, const jv *b, const char *op);
jj_str jv_to_str(jj_ctx *c, int line, const jv *v);  // str(v); undefined is ""
jj_str jv_to_repr(jj_ctx *c, int line, const jv *v); // repr(v)
void jv_repr_into(jj_ctx *c, int line, jj_buf *b, const jv *v);
jj_str jj_float_repr(jj_ctx *c, double f);
jv jv_from_json(jj_ctx *c, const json_t *j, int depth);
jj_list *jj_list_new(jj_ctx *c, size_t n, jl_kind kind);
jj_dict *jj_dict_new(jj_ctx *c, size_t cap);
jv *jj_dict_get(const jj_dict *d, jj_str k);
void jj_dict_set(jj_ctx *c, jj_dict *d, jj_str k, jv v);
// json.dumps(v, ensure_ascii=, indent=, separators=, sort_keys=) as Python writes it.
// indent < 0: None; item_sep/key_sep NULL: Python's defaults for that indent.
void jj_tojson(jj_ctx *c, int line, jj_buf *b, const jv *v, int indent, const jj_str *item_sep,
               const jj_str *key_sep, bool ensure_ascii, bool sort_keys, int depth);
noreturn void jj_undefined_fail(jj_ctx *c, int line, const jv *v);

// Builtins (jinja_lib.c). Ids are looked up at parse time (an unknown filter
// or test is refused there) and at render time (names and attributes).
int jj_filter_id(jj_str name); // -1: unknown
int jj_test_id(jj_str name);
int jj_global_id(jj_str name);
jv jj_call_filter(jj_render *r, int line, int id, jv val, const jv *args, int n_args,
                  const jj_str *kw, const jv *kwv, int n_kw);
bool jj_call_test(jj_render *r, int line, int id, jv val, const jv *args, int n_args);
jv jj_call_func(jj_render *r, int line, const jj_func *f, const jv *args, int n_args,
                const jj_str *kw, const jv *kwv, int n_kw);
// a.name (Jinja's getattr: Python attribute, i.e. a method, first, then the item).
jv jj_getattr(jj_render *r, int line, jv obj, jj_str name);
// a[key] (Jinja's getitem: the item first, then a method of that name).
jv jj_getitem(jj_render *r, int line, jv obj, jv key);
jv jj_slice(jj_render *r, int line, jv obj, const jv *start, const jv *stop, const jv *step);
// The items a for loop or a filter iterates: a list's, a dict's keys, a string's
// characters; undefined is empty; anything else fails naming `what`.
jj_list *jj_iterate(jj_render *r, int line, jv v, const char *what);
void jj_step(jj_render *r, int line, long long n); // counts work, fails past the limit
// Calls a macro (jinja_eval.c), for the builtins that call one back.
jv jj_call_macro(jj_render *r, int line, const jj_macro *m, const jv *args, int n_args,
                 const jj_str *kw, const jv *kwv, int n_kw);

// ---- shared by the builtins (jinja_lib.c, jinja_str.c) -----------------------------------

static inline jv jj_mklist(jj_list *l)
{
    return (jv){.t = JV_LIST, .u.l = l};
}
static inline jj_str jj_soft_str(jj_render *r, int line, const jv *v) // str(); undefined is ""
{
    return jv_to_str(r->c, line, v);
}
static inline bool jj_is_int(const jv *v) // int, or bool (Python's bool is an int)
{
    return v->t == JV_INT || v->t == JV_BOOL;
}
static inline int64_t jj_ival(const jv *v)
{
    return v->t == JV_BOOL ? v->u.b : v->u.i;
}

// Binds positional and keyword arguments to the parameters `names` (the first
// `req` required); given[i] says whether out[i] was passed. Python's TypeErrors
// for too many, unknown, repeated or missing arguments.
void jj_bind(jj_render *r, int line, const char *fname, const char *const *names, int n, int req,
             const jv *args, int n_args, const jj_str *kw, const jv *kwv, int n_kw, jv *out,
             bool *given);
jj_str jj_want_str(jj_render *r, int line, const char *what, const jv *v);
int64_t jj_want_int(jj_render *r, int line, const char *what, const jv *v);

// A growable list of values.
typedef struct {
    jv *v;
    size_t n, cap;
} jj_vec;

void jj_vec_push(jj_render *r, jj_vec *v, jv x);
jv jj_vec_list(jj_render *r, jj_vec *v, jl_kind kind);

// Python's str methods and the string work of the filters (jinja_str.c). By
// code point where Python counts code points.
// Methods: implemented ones, then the rest of Python's (refused when called).
typedef enum {
    JM_CAPITALIZE,
    JM_COUNT,
    JM_ENDSWITH,
    JM_FIND,
    JM_JOIN,
    JM_LOWER,
    JM_LSTRIP,
    JM_REMOVEPREFIX,
    JM_REMOVESUFFIX,
    JM_REPLACE,
    JM_RFIND,
    JM_RSPLIT,
    JM_RSTRIP,
    JM_SPLIT,
    JM_SPLITLINES,
    JM_STARTSWITH,
    JM_STRIP,
    JM_TITLE,
    JM_UPPER, // str
    JM_GET,
    JM_ITEMS,
    JM_KEYS,
    JM_VALUES, // dict
    JM_LCOUNT,
    JM_INDEX, // list
    JM_CYCLE, // loop
    JM_REFUSED,
} jj_method;
size_t *jj_cp_offsets(jj_render *r, jj_str s, size_t *count); // [count + 1] byte offsets
const char *jj_find_sub(jj_str s, size_t from, jj_str sub);   // first sub at or after `from`
jj_str jj_py_strip(jj_str s, const jj_str *chars, bool left, bool right); // chars NULL: whitespace
jv jj_py_replace(jj_render *r, int line, jj_str s, jj_str old, jj_str new_, int64_t count);
jv jj_py_splitlines(jj_render *r, jj_str s, bool keepends);
typedef enum {
    JJ_CASE_LOWER,
    JJ_CASE_UPPER,
    JJ_CASE_TITLE, // str.title()
    JJ_CASE_CAPITALIZE,
    JJ_CASE_JINJA_TITLE, // Jinja's title filter: words begin after - ( { [ < or a space
} jj_case;
// Refuses a non-ASCII character that has a case (see jinja_str.c).
void jj_check_caseless(jj_render *r, int line, const char *fname, jj_str s);
jv jj_map_case(jj_render *r, int line, const char *fname, jj_str s, jj_case op);
jv jj_str_method(jj_render *r, int line, jj_method id, const char *name, jj_str s, const jv *args,
                 int n_args, const jj_str *kw, const jv *kwv, int n_kw);
jv jj_html_escape(jj_render *r, jj_str s);
bool jj_parse_py_float(jj_str s, double *out); // Python's float(str); false where it raises
bool jj_parse_py_int(jj_str s, int64_t *out);  // Python's int(str); false where it raises

#endif
