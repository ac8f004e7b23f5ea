// The builtins of the Jinja subset: filters and tests (Jinja2 3.1's, with
// transformers' tojson), the globals transformers gives a chat template
// (range, namespace, dict, raise_exception, strftime_now), method lookup
// (Python's str methods are in jinja_str.c), attribute and item access,
// slicing and iteration. Python methods epserve does not implement are
// refused by name when called.
#include "model/jinja_impl.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---- tables ---------------------------------------------------------------------------

enum {
    F_ABS,
    F_CAPITALIZE,
    F_COUNT,
    F_D,
    F_DEFAULT,
    F_E,
    F_ESCAPE,
    F_FIRST,
    F_FLOAT,
    F_INDENT,
    F_INT,
    F_ITEMS,
    F_JOIN,
    F_LAST,
    F_LENGTH,
    F_LIST,
    F_LOWER,
    F_MAP,
    F_REJECT,
    F_REJECTATTR,
    F_REPLACE,
    F_REVERSE,
    F_SAFE,
    F_SELECT,
    F_SELECTATTR,
    F_STRING,
    F_TITLE,
    F_TOJSON,
    F_TRIM,
    F_UPPER,
    F_N
};
static const char *const FILTERS[F_N] = {
    "abs",        "capitalize", "count",  "d",          "default", "e",       "escape", "first",
    "float",      "indent",     "int",    "items",      "join",    "last",    "length", "list",
    "lower",      "map",        "reject", "rejectattr", "replace", "reverse", "safe",   "select",
    "selectattr", "string",     "title",  "tojson",     "trim",    "upper"};

enum {
    T_BOOLEAN,
    T_CALLABLE,
    T_DEFINED,
    T_DIVISIBLEBY,
    T_EQ,
    T_EQUALTO,
    T_EVEN,
    T_FALSE,
    T_FLOAT,
    T_GE,
    T_GREATERTHAN,
    T_GT,
    T_IN,
    T_INTEGER,
    T_ITERABLE,
    T_LE,
    T_LESSTHAN,
    T_LOWER,
    T_LT,
    T_MAPPING,
    T_NE,
    T_NONE,
    T_NUMBER,
    T_ODD,
    T_SAMEAS,
    T_SEQUENCE,
    T_STRING,
    T_TRUE,
    T_UNDEFINED,
    T_UPPER,
    T_N
};
static const char *const TESTS[T_N] = {
    "boolean", "callable", "defined",  "divisibleby", "eq",          "equalto",
    "even",    "false",    "float",    "ge",          "greaterthan", "gt",
    "in",      "integer",  "iterable", "le",          "lessthan",    "lower",
    "lt",      "mapping",  "ne",       "none",        "number",      "odd",
    "sameas",  "sequence", "string",   "true",        "undefined",   "upper"};

enum { G_RANGE, G_NAMESPACE, G_DICT, G_RAISE, G_STRFTIME, G_N };
static const char *const GLOBALS[G_N] = {"range", "namespace", "dict", "raise_exception",
                                         "strftime_now"};

typedef struct {
    jv_type owner;
    const char *name;
    jj_method id;
} method;

static const method METHODS[] = {
    {JV_STR, "capitalize", JM_CAPITALIZE},
    {JV_STR, "count", JM_COUNT},
    {JV_STR, "endswith", JM_ENDSWITH},
    {JV_STR, "find", JM_FIND},
    {JV_STR, "join", JM_JOIN},
    {JV_STR, "lower", JM_LOWER},
    {JV_STR, "lstrip", JM_LSTRIP},
    {JV_STR, "removeprefix", JM_REMOVEPREFIX},
    {JV_STR, "removesuffix", JM_REMOVESUFFIX},
    {JV_STR, "replace", JM_REPLACE},
    {JV_STR, "rfind", JM_RFIND},
    {JV_STR, "rsplit", JM_RSPLIT},
    {JV_STR, "rstrip", JM_RSTRIP},
    {JV_STR, "split", JM_SPLIT},
    {JV_STR, "splitlines", JM_SPLITLINES},
    {JV_STR, "startswith", JM_STARTSWITH},
    {JV_STR, "strip", JM_STRIP},
    {JV_STR, "title", JM_TITLE},
    {JV_STR, "upper", JM_UPPER},
    {JV_DICT, "get", JM_GET},
    {JV_DICT, "items", JM_ITEMS},
    {JV_DICT, "keys", JM_KEYS},
    {JV_DICT, "values", JM_VALUES},
    {JV_LIST, "count", JM_LCOUNT},
    {JV_LIST, "index", JM_INDEX},
    {JV_LOOP, "cycle", JM_CYCLE},
    {JV_LOOP, "changed", JM_REFUSED},
    {JV_STR, "casefold", JM_REFUSED},
    {JV_STR, "center", JM_REFUSED},
    {JV_STR, "encode", JM_REFUSED},
    {JV_STR, "expandtabs", JM_REFUSED},
    {JV_STR, "format", JM_REFUSED},
    {JV_STR, "format_map", JM_REFUSED},
    {JV_STR, "index", JM_REFUSED},
    {JV_STR, "isalnum", JM_REFUSED},
    {JV_STR, "isalpha", JM_REFUSED},
    {JV_STR, "isascii", JM_REFUSED},
    {JV_STR, "isdecimal", JM_REFUSED},
    {JV_STR, "isdigit", JM_REFUSED},
    {JV_STR, "isidentifier", JM_REFUSED},
    {JV_STR, "islower", JM_REFUSED},
    {JV_STR, "isnumeric", JM_REFUSED},
    {JV_STR, "isprintable", JM_REFUSED},
    {JV_STR, "isspace", JM_REFUSED},
    {JV_STR, "istitle", JM_REFUSED},
    {JV_STR, "isupper", JM_REFUSED},
    {JV_STR, "ljust", JM_REFUSED},
    {JV_STR, "maketrans", JM_REFUSED},
    {JV_STR, "partition", JM_REFUSED},
    {JV_STR, "rindex", JM_REFUSED},
    {JV_STR, "rjust", JM_REFUSED},
    {JV_STR, "rpartition", JM_REFUSED},
    {JV_STR, "swapcase", JM_REFUSED},
    {JV_STR, "translate", JM_REFUSED},
    {JV_STR, "zfill", JM_REFUSED},
    {JV_DICT, "clear", JM_REFUSED},
    {JV_DICT, "copy", JM_REFUSED},
    {JV_DICT, "fromkeys", JM_REFUSED},
    {JV_DICT, "pop", JM_REFUSED},
    {JV_DICT, "popitem", JM_REFUSED},
    {JV_DICT, "setdefault", JM_REFUSED},
    {JV_DICT, "update", JM_REFUSED},
    {JV_LIST, "append", JM_REFUSED},
    {JV_LIST, "clear", JM_REFUSED},
    {JV_LIST, "copy", JM_REFUSED},
    {JV_LIST, "extend", JM_REFUSED},
    {JV_LIST, "insert", JM_REFUSED},
    {JV_LIST, "pop", JM_REFUSED},
    {JV_LIST, "remove", JM_REFUSED},
    {JV_LIST, "reverse", JM_REFUSED},
    {JV_LIST, "sort", JM_REFUSED},
};
enum { METHOD_BASE = 100 }; // jj_func ids: globals below, METHODS[id - METHOD_BASE] above

static int find_name(const char *const *names, int n, jj_str s)
{
    for (int i = 0; i < n; i++)
        if (jj_str_eq(s, names[i])) return i;
    return -1;
}

int jj_filter_id(jj_str name)
{
    return find_name(FILTERS, F_N, name);
}
int jj_test_id(jj_str name)
{
    return find_name(TESTS, T_N, name);
}
int jj_global_id(jj_str name)
{
    return find_name(GLOBALS, G_N, name);
}

// ---- helpers --------------------------------------------------------------------------

#define FAIL(...)   jj_fail(r->c, EP_ERR_ARG, line, __VA_ARGS__)
#define REFUSE(...) jj_fail(r->c, EP_ERR_UNSUPPORTED, line, __VA_ARGS__)

jj_str jj_want_str(jj_render *r, int line, const char *what, const jv *v)
{
    if (v->t == JV_UNDEF) jj_undefined_fail(r->c, line, v);
    if (v->t != JV_STR) FAIL("%s: expected a str, found %s", what, jv_type_name(v));
    return v->u.s;
}

int64_t jj_want_int(jj_render *r, int line, const char *what, const jv *v)
{
    if (v->t == JV_UNDEF) jj_undefined_fail(r->c, line, v);
    if (!jj_is_int(v)) FAIL("%s: expected an int, found %s", what, jv_type_name(v));
    return jj_ival(v);
}

// Binds positional and keyword arguments to the parameters `names` (the first
// `req` required). given[i] says whether out[i] was passed.
void jj_bind(jj_render *r, int line, const char *fname, const char *const *names, int n, int req,
             const jv *args, int n_args, const jj_str *kw, const jv *kwv, int n_kw, jv *out,
             bool *given)
{
    if (n_args > n)
        FAIL("%s() takes at most %d argument%s (%d given)", fname, n, n == 1 ? "" : "s", n_args);
    for (int i = 0; i < n; i++)
        given[i] = false;
    for (int i = 0; i < n_args; i++) {
        out[i] = args[i];
        given[i] = true;
    }
    for (int k = 0; k < n_kw; k++) {
        int i = find_name(names, n, kw[k]);
        if (i < 0)
            FAIL("%s() got an unexpected keyword argument '%.*s'", fname, (int)kw[k].n, kw[k].p);
        if (given[i]) FAIL("%s() got multiple values for argument '%s'", fname, names[i]);
        out[i] = kwv[k];
        given[i] = true;
    }
    for (int i = 0; i < req; i++)
        if (!given[i]) FAIL("%s() missing required argument '%s'", fname, names[i]);
}

// ---- attribute and item access --------------------------------------------------------

static jv bound(jj_render *r, int idx, jv self)
{
    jj_func *f = jj_alloc(r->c, sizeof *f);
    f->id = METHOD_BASE + idx;
    f->self = self;
    f->name = METHODS[idx].name;
    return (jv){.t = JV_FUNC, .u.fn = f};
}

static int method_of(jv_type owner, jj_str name)
{
    for (size_t i = 0; i < EP_ARRAY_LEN(METHODS); i++)
        if (METHODS[i].owner == owner && jj_str_eq(name, METHODS[i].name)) return (int)i;
    return -1;
}

static const char *hint(jj_render *r, const jv *obj, jj_str name)
{
    size_t n = name.n + 64;
    char *s = jj_alloc(r->c, n);
    snprintf(s, n, "'%s object' has no attribute '%.*s'", jv_type_name(obj), (int)name.n, name.p);
    return s;
}

static jv loop_attr(jj_render *r, int line, jv obj, jj_str name)
{
    const jj_loop *l = obj.u.loop;
    int64_t i = (int64_t)l->i, n = (int64_t)l->n;
    if (jj_str_eq(name, "index0")) return jv_int(i);
    if (jj_str_eq(name, "index")) return jv_int(i + 1);
    if (jj_str_eq(name, "revindex0")) return jv_int(n - i - 1);
    if (jj_str_eq(name, "revindex")) return jv_int(n - i);
    if (jj_str_eq(name, "first")) return jv_bool(i == 0);
    if (jj_str_eq(name, "last")) return jv_bool(i == n - 1);
    if (jj_str_eq(name, "length")) return jv_int(n);
    if (jj_str_eq(name, "depth")) return jv_int(1);
    if (jj_str_eq(name, "depth0")) return jv_int(0);
    if (jj_str_eq(name, "previtem"))
        return i > 0 ? l->items[i - 1] : jv_undef("there is no previous item");
    if (jj_str_eq(name, "nextitem"))
        return i + 1 < n ? l->items[i + 1] : jv_undef("there is no next item");
    int m = method_of(JV_LOOP, name);
    if (m >= 0) return bound(r, m, obj);
    (void)line;
    return jv_undef(hint(r, &obj, name));
}

jv jj_getattr(jj_render *r, int line, jv obj, jj_str name)
{
    if (obj.t == JV_UNDEF) jj_undefined_fail(r->c, line, &obj);
    if (name.n >= 2 && name.p[0] == '_' && name.p[1] == '_')
        REFUSE("attribute '%.*s' is not accessible (the sandbox blocks it)", (int)name.n, name.p);
    switch (obj.t) {
    case JV_LOOP:
        return loop_attr(r, line, obj, name);
    case JV_NS: {
        jv *v = jj_dict_get(obj.u.d, name);
        return v ? *v : jv_undef(hint(r, &obj, name));
    }
    case JV_DICT: {
        int m = method_of(JV_DICT, name); // Python attributes come first (Jinja's getattr)
        if (m >= 0) return bound(r, m, obj);
        jv *v = jj_dict_get(obj.u.d, name);
        return v ? *v : jv_undef(hint(r, &obj, name));
    }
    case JV_STR:
    case JV_LIST: {
        int m = method_of(
            obj.t == JV_LIST && (obj.u.l->kind == JL_LIST || obj.u.l->kind == JL_TUPLE) ? JV_LIST
            : obj.t == JV_STR                                                           ? JV_STR
                                                                                        : JV_UNDEF,
            name);
        if (m >= 0) return bound(r, m, obj);
        return jv_undef(hint(r, &obj, name));
    }
    default:
        return jv_undef(hint(r, &obj, name));
    }
}

jv jj_getitem(jj_render *r, int line, jv obj, jv key)
{
    if (obj.t == JV_UNDEF) jj_undefined_fail(r->c, line, &obj);
    if (obj.t == JV_DICT && key.t == JV_STR) {
        jv *v = jj_dict_get(obj.u.d, key.u.s);
        if (v) return *v;
        return jj_getattr(r, line, obj, key.u.s);
    }
    if ((obj.t == JV_LIST && obj.u.l->kind != JL_GEN && obj.u.l->kind != JL_VIEW) ||
        obj.t == JV_STR) {
        if (jj_is_int(&key)) {
            int64_t i = jj_ival(&key);
            if (obj.t == JV_LIST) {
                int64_t n = (int64_t)obj.u.l->n;
                if (i < 0) i += n;
                if (i < 0 || i >= n) return jv_undef("list index out of range");
                return obj.u.l->v[i];
            }
            size_t n;
            size_t *o = jj_cp_offsets(r, obj.u.s, &n);
            if (i < 0) i += (int64_t)n;
            if (i < 0 || i >= (int64_t)n) return jv_undef("string index out of range");
            return jv_strn(obj.u.s.p + o[i], o[i + 1] - o[i]);
        }
    }
    if (key.t == JV_STR) return jj_getattr(r, line, obj, key.u.s);
    return jv_undef("the item does not exist");
}

// Python's PySlice_AdjustIndices; returns the item count.
static size_t slice_indices(int64_t len, const jv *startv, const jv *stopv, int64_t step,
                            int64_t *start, int64_t *stop)
{
    bool neg = step < 0;
    if (startv->t == JV_NONE) {
        *start = neg ? len - 1 : 0;
    } else {
        *start = jj_ival(startv);
        if (*start < 0) {
            *start += len;
            if (*start < 0) *start = neg ? -1 : 0;
        } else if (*start >= len) {
            *start = neg ? len - 1 : len;
        }
    }
    if (stopv->t == JV_NONE) {
        *stop = neg ? -1 : len;
    } else {
        *stop = jj_ival(stopv);
        if (*stop < 0) {
            *stop += len;
            if (*stop < 0) *stop = neg ? -1 : 0;
        } else if (*stop >= len) {
            *stop = neg ? len - 1 : len;
        }
    }
    if (neg) return *stop < *start ? (size_t)((*start - *stop - 1) / -step + 1) : 0;
    return *start < *stop ? (size_t)((*stop - *start - 1) / step + 1) : 0;
}

jv jj_slice(jj_render *r, int line, jv obj, const jv *start, const jv *stop, const jv *step)
{
    if (obj.t == JV_UNDEF) jj_undefined_fail(r->c, line, &obj);
    // A slice is Python's own subscript (Jinja2 does not route it through
    // getitem), so bad indices and unsliceable objects are errors.
    const jv *b[3] = {start, stop, step};
    for (int i = 0; i < 3; i++) {
        if (b[i]->t == JV_UNDEF) jj_undefined_fail(r->c, line, b[i]);
        if (b[i]->t != JV_NONE && !jj_is_int(b[i]))
            FAIL("slice indices must be integers or None, found %s", jv_type_name(b[i]));
    }
    int64_t st = step->t == JV_NONE ? 1 : jj_ival(step);
    if (st == 0) FAIL("slice step cannot be zero");
    if (obj.t == JV_STR) {
        size_t n;
        size_t *o = jj_cp_offsets(r, obj.u.s, &n);
        int64_t s0, s1;
        size_t k = slice_indices((int64_t)n, start, stop, st, &s0, &s1);
        jj_buf out = {0};
        jj_buf_add(r->c, &out, "", 0);
        for (size_t i = 0; i < k; i++) {
            int64_t at = s0 + (int64_t)i * st;
            jj_buf_add(r->c, &out, obj.u.s.p + o[at], o[at + 1] - o[at]);
        }
        jj_step(r, line, (long long)out.n / 64);
        return jv_strn(out.p, out.n);
    }
    if (obj.t == JV_LIST && obj.u.l->kind != JL_GEN && obj.u.l->kind != JL_VIEW) {
        int64_t s0, s1;
        size_t k = slice_indices((int64_t)obj.u.l->n, start, stop, st, &s0, &s1);
        jj_list *l = jj_list_new(r->c, k, obj.u.l->kind);
        for (size_t i = 0; i < k; i++)
            l->v[i] = obj.u.l->v[s0 + (int64_t)i * st];
        jj_step(r, line, (long long)k);
        return jj_mklist(l);
    }
    FAIL("'%s' object is not subscriptable", jv_type_name(&obj));
}

jj_list *jj_iterate(jj_render *r, int line, jv v, const char *what)
{
    switch (v.t) {
    case JV_UNDEF:
        return jj_list_new(r->c, 0, JL_LIST);
    case JV_LIST:
        return v.u.l;
    case JV_DICT: {
        jj_list *l = jj_list_new(r->c, v.u.d->n, JL_LIST);
        for (size_t i = 0; i < v.u.d->n; i++)
            l->v[i] = jv_strn(v.u.d->k[i].p, v.u.d->k[i].n);
        return l;
    }
    case JV_STR: {
        size_t n;
        size_t *o = jj_cp_offsets(r, v.u.s, &n);
        jj_list *l = jj_list_new(r->c, n, JL_LIST);
        for (size_t i = 0; i < n; i++)
            l->v[i] = jv_strn(v.u.s.p + o[i], o[i + 1] - o[i]);
        return l;
    }
    default:
        FAIL("%s: '%s' object is not iterable", what, jv_type_name(&v));
    }
}

// ---- tests ----------------------------------------------------------------------------

static bool str_case_test(jj_render *r, int line, const jv *v, bool upper)
{
    jj_str s = jj_soft_str(r, line, v);
    jj_check_caseless(r, line, upper ? "isupper()" : "islower()", s);
    bool cased = false;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        if (upper ? islower(ch) : isupper(ch)) return false;
        if (isalpha(ch)) cased = true;
    }
    return cased;
}

bool jj_call_test(jj_render *r, int line, int id, jv v, const jv *args, int n_args)
{
    static const int arity[T_N] = {
        [T_DIVISIBLEBY] = 1, [T_EQ] = 1, [T_EQUALTO] = 1, [T_GE] = 1,
        [T_GREATERTHAN] = 1, [T_GT] = 1, [T_IN] = 1,      [T_LE] = 1,
        [T_LESSTHAN] = 1,    [T_LT] = 1, [T_NE] = 1,      [T_SAMEAS] = 1};
    if (n_args != arity[id])
        FAIL("test '%s' takes %d argument%s, found %d", TESTS[id], arity[id],
             arity[id] == 1 ? "" : "s", n_args);
    const jv *a = args;
    switch (id) {
    case T_BOOLEAN:
        return v.t == JV_BOOL;
    case T_CALLABLE:
        return v.t == JV_FUNC || v.t == JV_MACRO;
    case T_DEFINED:
        return v.t != JV_UNDEF;
    case T_UNDEFINED:
        return v.t == JV_UNDEF;
    case T_NONE:
        return v.t == JV_NONE;
    case T_TRUE:
        return v.t == JV_BOOL && v.u.b;
    case T_FALSE:
        return v.t == JV_BOOL && !v.u.b;
    case T_INTEGER:
        return v.t == JV_INT;
    case T_FLOAT:
        return v.t == JV_FLOAT;
    case T_NUMBER:
        return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL;
    case T_STRING:
        return v.t == JV_STR;
    case T_MAPPING:
        return v.t == JV_DICT;
    case T_ITERABLE:
        return v.t == JV_UNDEF || v.t == JV_STR || v.t == JV_LIST || v.t == JV_DICT;
    case T_SEQUENCE:
        return v.t == JV_UNDEF || v.t == JV_STR || v.t == JV_DICT ||
               (v.t == JV_LIST && v.u.l->kind != JL_GEN && v.u.l->kind != JL_VIEW);
    case T_LOWER:
        return str_case_test(r, line, &v, false);
    case T_UPPER:
        return str_case_test(r, line, &v, true);
    case T_EVEN:
    case T_ODD:
    case T_DIVISIBLEBY: {
        jv d = id == T_DIVISIBLEBY ? *a : jv_int(2);
        if (v.t == JV_UNDEF) jj_undefined_fail(r->c, line, &v);
        if (!(jj_is_int(&v) || v.t == JV_FLOAT) || !(jj_is_int(&d) || d.t == JV_FLOAT))
            FAIL("unsupported operand type(s) for %%: '%s' and '%s'", jv_type_name(&v),
                 jv_type_name(&d));
        double x = v.t == JV_FLOAT ? v.u.f : (double)jj_ival(&v);
        double y = d.t == JV_FLOAT ? d.u.f : (double)jj_ival(&d);
        if (y == 0) FAIL("%s by zero", "modulo");
        bool zero;
        if (jj_is_int(&v) && jj_is_int(&d)) {
            int64_t q = jj_ival(&d);
            zero = q == -1 || jj_ival(&v) % q == 0;
        } else {
            double m = fmod(x, y);
            zero = m == 0;
        }
        return id == T_ODD ? !zero : zero;
    }
    case T_EQ:
    case T_EQUALTO:
        return jv_equal(&v, a);
    case T_NE:
        return !jv_equal(&v, a);
    case T_LT:
    case T_LESSTHAN:
    case T_LE:
    case T_GT:
    case T_GREATERTHAN:
    case T_GE: {
        const char *op = id == T_LT || id == T_LESSTHAN ? "<"
                         : id == T_LE                   ? "<="
                         : id == T_GE                   ? ">="
                                                        : ">";
        int c = jv_compare(r->c, line, &v, a, op);
        if (c == 2) return false;
        return op[0] == '<' ? (op[1] ? c <= 0 : c < 0) : (op[1] ? c >= 0 : c > 0);
    }
    case T_IN: {
        jv lst = *a;
        if (lst.t == JV_STR) {
            if (v.t != JV_STR)
                FAIL("'in <string>' requires string as left operand, not %s", jv_type_name(&v));
            return !v.u.s.n || jj_memfind(lst.u.s.p, lst.u.s.n, v.u.s.p, v.u.s.n);
        }
        if (lst.t == JV_DICT) return v.t == JV_STR && jj_dict_get(lst.u.d, v.u.s);
        jj_list *l = jj_iterate(r, line, lst, "'in' test");
        for (size_t i = 0; i < l->n; i++)
            if (jv_equal(&v, &l->v[i])) return true;
        return false;
    }
    case T_SAMEAS:
        if (v.t == JV_NONE || v.t == JV_BOOL || a->t == JV_NONE || a->t == JV_BOOL)
            return v.t == a->t && (v.t == JV_NONE || v.u.b == a->u.b);
        if ((v.t == JV_LIST || v.t == JV_DICT || v.t == JV_NS) && v.t == a->t)
            return v.u.l == a->u.l;
        REFUSE("'sameas' on %s is CPython object identity; not supported", jv_type_name(&v));
    }
    return false;
}

// ---- filters --------------------------------------------------------------------------

// Jinja's make_attrgetter: "a.b.0" looked up part by part with getitem.
static jv attr_path(jj_render *r, int line, jv item, jj_str path)
{
    size_t i = 0;
    while (i <= path.n) {
        size_t j = i;
        while (j < path.n && path.p[j] != '.')
            j++;
        jj_str part = {path.p + i, j - i};
        bool digits = part.n > 0;
        for (size_t k = 0; k < part.n; k++)
            digits = digits && isdigit((unsigned char)part.p[k]);
        jv key = jv_strn(part.p, part.n);
        if (digits) {
            int64_t n;
            if (jj_parse_py_int(part, &n)) key = jv_int(n);
        }
        item = jj_getitem(r, line, item, key);
        i = j + 1;
        if (j >= path.n) break;
    }
    return item;
}

static jv filter_length(jj_render *r, int line, jv v)
{
    switch (v.t) {
    case JV_UNDEF:
        return jv_int(0);
    case JV_STR:
        return jv_int((int64_t)jj_cp_count(v.u.s));
    case JV_DICT:
        return jv_int((int64_t)v.u.d->n);
    case JV_LIST:
        if (v.u.l->kind != JL_GEN) return jv_int((int64_t)v.u.l->n);
        break;
    default:
        break;
    }
    FAIL("object of type '%s' has no len()", jv_type_name(&v));
}

// select/reject/selectattr/rejectattr and map: what each item gives.
static bool select_one(jj_render *r, int line, jv item, const jv *args, int n_args)
{
    if (!n_args) return jv_truthy(&item);
    jj_str name = jj_want_str(r, line, "the test name", &args[0]);
    int tid = jj_test_id(name);
    if (tid < 0) REFUSE("test '%.*s' is not supported", (int)name.n, name.p);
    return jj_call_test(r, line, tid, item, args + 1, n_args - 1);
}

jv jj_call_filter(jj_render *r, int line, int id, jv v, const jv *args, int n_args,
                  const jj_str *kw, const jv *kwv, int n_kw)
{
    jv a[4];
    bool g[4];
    const char *fname = FILTERS[id];
    jj_step(r, line, 1);
    switch (id) {
    case F_ABS:
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        if (v.t == JV_FLOAT) return jv_float(fabs(v.u.f));
        if (jj_is_int(&v)) {
            if (jj_ival(&v) == INT64_MIN)
                REFUSE("integer overflow (Python's integers are unbounded; epserve's are 64-bit)");
            return jv_int(jj_ival(&v) < 0 ? -jj_ival(&v) : jj_ival(&v));
        }
        if (v.t == JV_UNDEF) jj_undefined_fail(r->c, line, &v);
        FAIL("bad operand type for abs(): '%s'", jv_type_name(&v));
    case F_CAPITALIZE:
    case F_LOWER:
    case F_UPPER:
    case F_TITLE:
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        return jj_map_case(r, line, fname, jj_soft_str(r, line, &v),
                           id == F_LOWER   ? JJ_CASE_LOWER
                           : id == F_UPPER ? JJ_CASE_UPPER
                           : id == F_TITLE ? JJ_CASE_JINJA_TITLE
                                           : JJ_CASE_CAPITALIZE);
    case F_COUNT:
    case F_LENGTH:
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        return filter_length(r, line, v);
    case F_D:
    case F_DEFAULT: {
        static const char *const p[] = {"default_value", "boolean"};
        jj_bind(r, line, fname, p, 2, 0, args, n_args, kw, kwv, n_kw, a, g);
        if (v.t == JV_UNDEF || (g[1] && jv_truthy(&a[1]) && !jv_truthy(&v)))
            return g[0] ? a[0] : jv_strn("", 0);
        return v;
    }
    case F_E:
    case F_ESCAPE:
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        return jj_html_escape(r, jj_soft_str(r, line, &v));
    case F_FIRST:
    case F_LAST: {
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        if (id == F_LAST && v.t == JV_LIST && v.u.l->kind == JL_GEN)
            FAIL("'generator' object is not reversible");
        jj_list *l = jj_iterate(r, line, v, fname);
        if (!l->n)
            return jv_undef(id == F_FIRST ? "No first item, sequence was empty."
                                          : "No last item, sequence was empty.");
        return l->v[id == F_FIRST ? 0 : l->n - 1];
    }
    case F_FLOAT: {
        static const char *const p[] = {"default"};
        jj_bind(r, line, fname, p, 1, 0, args, n_args, kw, kwv, n_kw, a, g);
        jv def = g[0] ? a[0] : jv_float(0.0);
        if (v.t == JV_UNDEF) jj_undefined_fail(r->c, line, &v); // Undefined.__float__ fails
        if (v.t == JV_FLOAT) return v;
        if (jj_is_int(&v)) return jv_float((double)jj_ival(&v));
        double d;
        if (v.t == JV_STR && jj_parse_py_float(v.u.s, &d)) return jv_float(d);
        return def;
    }
    case F_INT: {
        static const char *const p[] = {"default", "base"};
        jj_bind(r, line, fname, p, 2, 0, args, n_args, kw, kwv, n_kw, a, g);
        jv def = g[0] ? a[0] : jv_int(0);
        if (g[1] && !(jj_is_int(&a[1]) && jj_ival(&a[1]) == 10))
            REFUSE("int(): bases other than 10 are not supported");
        if (v.t == JV_UNDEF) jj_undefined_fail(r->c, line, &v); // Undefined.__int__ fails
        if (jj_is_int(&v)) return jv_int(jj_ival(&v));
        if (v.t == JV_FLOAT) {
            if (!isfinite(v.u.f)) return def;
            if (fabs(v.u.f) >= 9.2e18)
                REFUSE("integer overflow (Python's integers are unbounded; epserve's are "
                       "64-bit)");
            return jv_int((int64_t)v.u.f);
        }
        if (v.t == JV_STR) {
            int64_t n;
            double d;
            if (jj_parse_py_int(v.u.s, &n)) return jv_int(n);
            if (jj_parse_py_float(v.u.s, &d) && isfinite(d)) {
                if (fabs(d) >= 9.2e18)
                    REFUSE("integer overflow (Python's integers are unbounded; epserve's are "
                           "64-bit)");
                return jv_int((int64_t)d);
            }
        }
        return def;
    }
    case F_ITEMS: {
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        if (v.t == JV_UNDEF) return jj_mklist(jj_list_new(r->c, 0, JL_GEN));
        if (v.t != JV_DICT) FAIL("Can only get item pairs from a mapping.");
        jj_list *l = jj_list_new(r->c, v.u.d->n, JL_GEN);
        for (size_t i = 0; i < v.u.d->n; i++) {
            jj_list *pair = jj_list_new(r->c, 2, JL_TUPLE);
            pair->v[0] = jv_strn(v.u.d->k[i].p, v.u.d->k[i].n);
            pair->v[1] = v.u.d->v[i];
            l->v[i] = jj_mklist(pair);
        }
        return jj_mklist(l);
    }
    case F_JOIN: {
        static const char *const p[] = {"d", "attribute"};
        jj_bind(r, line, fname, p, 2, 0, args, n_args, kw, kwv, n_kw, a, g);
        jj_str sep = g[0] ? jj_soft_str(r, line, &a[0]) : (jj_str){"", 0};
        jj_list *l = jj_iterate(r, line, v, "join");
        jj_buf b = {0};
        jj_buf_add(r->c, &b, "", 0);
        for (size_t i = 0; i < l->n; i++) {
            jv item = l->v[i];
            if (g[1] && a[1].t != JV_NONE)
                item = attr_path(r, line, item, jj_want_str(r, line, "join attribute", &a[1]));
            jj_str s = jj_soft_str(r, line, &item);
            if (i) jj_buf_add(r->c, &b, sep.p, sep.n);
            jj_buf_add(r->c, &b, s.p, s.n);
        }
        jj_step(r, line, (long long)l->n + (long long)b.n / 64);
        return jv_strn(b.p, b.n);
    }
    case F_LIST: {
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        jj_list *l = jj_iterate(r, line, v, "list");
        jj_list *o = jj_list_new(r->c, l->n, JL_LIST);
        if (l->n) memcpy(o->v, l->v, l->n * sizeof *o->v);
        return jj_mklist(o);
    }
    case F_MAP: {
        jj_list *l = jj_iterate(r, line, v, "map");
        jj_list *o = jj_list_new(r->c, l->n, JL_GEN);
        if (!n_args) { // map(attribute='x', default=...)
            static const char *const p[] = {"attribute", "default"};
            jj_bind(r, line, fname, p, 2, 0, args, n_args, kw, kwv, n_kw, a, g);
            if (!g[0]) FAIL("map: give a filter name or attribute=");
            jj_str path = jj_want_str(r, line, "map attribute", &a[0]);
            for (size_t i = 0; i < l->n; i++) {
                o->v[i] = attr_path(r, line, l->v[i], path);
                if (o->v[i].t == JV_UNDEF && g[1]) o->v[i] = a[1];
            }
        } else {
            jj_str name = jj_want_str(r, line, "the filter name", &args[0]);
            int fid = jj_filter_id(name);
            if (fid < 0) REFUSE("filter '%.*s' is not supported", (int)name.n, name.p);
            for (size_t i = 0; i < l->n; i++)
                o->v[i] =
                    jj_call_filter(r, line, fid, l->v[i], args + 1, n_args - 1, kw, kwv, n_kw);
        }
        jj_step(r, line, (long long)l->n);
        return jj_mklist(o);
    }
    case F_SELECT:
    case F_REJECT:
    case F_SELECTATTR:
    case F_REJECTATTR: {
        if (n_kw) REFUSE("%s: keyword arguments are not supported", fname);
        bool attr = id == F_SELECTATTR || id == F_REJECTATTR;
        bool want = id == F_SELECT || id == F_SELECTATTR;
        if (attr && !n_args) FAIL("%s() missing required argument 'attr'", fname);
        jj_list *l = jj_iterate(r, line, v, fname);
        jj_vec out = {0};
        jj_str path = attr ? jj_want_str(r, line, "the attribute", &args[0]) : (jj_str){0};
        for (size_t i = 0; i < l->n; i++) {
            jv item = attr ? attr_path(r, line, l->v[i], path) : l->v[i];
            if (select_one(r, line, item, args + attr, n_args - attr) == want)
                jj_vec_push(r, &out, l->v[i]);
        }
        jj_step(r, line, (long long)l->n);
        return jj_vec_list(r, &out, JL_GEN);
    }
    case F_REPLACE: {
        static const char *const p[] = {"old", "new", "count"};
        jj_bind(r, line, fname, p, 3, 2, args, n_args, kw, kwv, n_kw, a, g);
        int64_t count = g[2] && a[2].t != JV_NONE ? jj_want_int(r, line, fname, &a[2]) : -1;
        return jj_py_replace(r, line, jj_soft_str(r, line, &v), jj_soft_str(r, line, &a[0]),
                             jj_soft_str(r, line, &a[1]), count);
    }
    case F_REVERSE: {
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        if (v.t == JV_STR) {
            jv step = jv_int(-1), none = jv_none();
            return jj_slice(r, line, v, &none, &none, &step);
        }
        jj_list *l = jj_iterate(r, line, v, "reverse");
        jj_list *o = jj_list_new(r->c, l->n, JL_GEN);
        for (size_t i = 0; i < l->n; i++)
            o->v[i] = l->v[l->n - 1 - i];
        return jj_mklist(o);
    }
    case F_SAFE:
    case F_STRING: {
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        jj_str s = jj_soft_str(r, line, &v);
        return jv_strn(s.p, s.n);
    }
    case F_TRIM: {
        static const char *const p[] = {"chars"};
        jj_bind(r, line, fname, p, 1, 0, args, n_args, kw, kwv, n_kw, a, g);
        jj_str chars;
        bool has = g[0] && a[0].t != JV_NONE;
        if (has) chars = jj_want_str(r, line, "trim", &a[0]);
        jj_str o = jj_py_strip(jj_soft_str(r, line, &v), has ? &chars : NULL, true, true);
        return jv_strn(o.p, o.n);
    }
    case F_INDENT: {
        static const char *const p[] = {"width", "first", "blank"};
        jj_bind(r, line, fname, p, 3, 0, args, n_args, kw, kwv, n_kw, a, g);
        jj_str ind;
        if (g[0] && a[0].t == JV_STR) {
            ind = a[0].u.s;
        } else {
            int64_t w = g[0] ? jj_want_int(r, line, "indent width", &a[0]) : 4;
            if (w < 0) w = 0;
            if (w > 4096) REFUSE("indent width %lld is over 4096", (long long)w);
            char *sp = jj_alloc(r->c, (size_t)w + 1);
            memset(sp, ' ', (size_t)w);
            ind = (jj_str){sp, (size_t)w};
        }
        bool first = g[1] && jv_truthy(&a[1]), blank = g[2] && jv_truthy(&a[2]);
        jj_str s0 = jj_soft_str(r, line, &v);
        jj_buf t = {0};
        jj_buf_add(r->c, &t, s0.p, s0.n);
        jj_buf_add(r->c, &t, "\n", 1); // Jinja appends it so that splitlines sees the last line
        jv lines = jj_py_splitlines(r, (jj_str){t.p, t.n}, false);
        jj_list *ls = lines.u.l;
        jj_buf b = {0};
        jj_buf_add(r->c, &b, "", 0);
        if (first) jj_buf_add(r->c, &b, ind.p, ind.n);
        for (size_t i = 0; i < ls->n; i++) {
            jj_str ln = ls->v[i].u.s;
            if (i) {
                jj_buf_add(r->c, &b, "\n", 1);
                if (blank || ln.n) jj_buf_add(r->c, &b, ind.p, ind.n);
            }
            jj_buf_add(r->c, &b, ln.p, ln.n);
        }
        return jv_strn(b.p, b.n);
    }
    case F_TOJSON: {
        static const char *const p[] = {"ensure_ascii", "indent", "separators", "sort_keys"};
        jj_bind(r, line, fname, p, 4, 0, args, n_args, kw, kwv, n_kw, a, g);
        bool ascii = g[0] && jv_truthy(&a[0]);
        int indent = -1;
        if (g[1] && a[1].t != JV_NONE) {
            if (!jj_is_int(&a[1]))
                REFUSE("tojson: indent must be an integer or none (found %s)", jv_type_name(&a[1]));
            int64_t w = jj_ival(&a[1]);
            indent = w < 0 ? 0 : w > 64 ? -2 : (int)w;
            if (indent == -2) REFUSE("tojson: indent %lld is over 64", (long long)w);
        }
        jj_str seps[2];
        bool has_seps = g[2] && a[2].t != JV_NONE;
        if (has_seps) {
            if (a[2].t != JV_LIST || a[2].u.l->kind == JL_GEN || a[2].u.l->n != 2 ||
                a[2].u.l->v[0].t != JV_STR || a[2].u.l->v[1].t != JV_STR)
                FAIL("tojson: separators must be a pair of strings");
            seps[0] = a[2].u.l->v[0].u.s;
            seps[1] = a[2].u.l->v[1].u.s;
        }
        jj_buf b = {0};
        jj_buf_add(r->c, &b, "", 0);
        jj_tojson(r->c, line, &b, &v, indent, has_seps ? &seps[0] : NULL,
                  has_seps ? &seps[1] : NULL, ascii, g[3] && jv_truthy(&a[3]), 0);
        jj_step(r, line, (long long)b.n / 64);
        return jv_strn(b.p, b.n);
    }
    }
    EP_ASSERT(!"unknown filter id");
    return jv_none();
}

// ---- functions and methods ------------------------------------------------------------

static jj_dict *dict_from_args(jj_render *r, int line, const char *fname, const jv *args,
                               int n_args, const jj_str *kw, const jv *kwv, int n_kw)
{
    if (n_args > 1) FAIL("%s expected at most 1 argument, got %d", fname, n_args);
    jj_dict *d = jj_dict_new(r->c, (size_t)n_kw + 4);
    if (n_args == 1) {
        const jv *src = &args[0];
        if (src->t == JV_DICT || src->t == JV_NS) {
            for (size_t i = 0; i < src->u.d->n; i++)
                jj_dict_set(r->c, d, src->u.d->k[i], src->u.d->v[i]);
        } else if (src->t == JV_LIST && src->u.l->kind != JL_GEN) {
            for (size_t i = 0; i < src->u.l->n; i++) {
                const jv *pair = &src->u.l->v[i];
                if (pair->t != JV_LIST || pair->u.l->n != 2 || pair->u.l->v[0].t != JV_STR)
                    FAIL("%s: item %zu is not a (str, value) pair", fname, i);
                jj_dict_set(r->c, d, pair->u.l->v[0].u.s, pair->u.l->v[1]);
            }
        } else {
            FAIL("%s: expected a dict or a list of pairs, found %s", fname, jv_type_name(src));
        }
    }
    for (int i = 0; i < n_kw; i++)
        jj_dict_set(r->c, d, kw[i], kwv[i]);
    return d;
}

static jv call_global(jj_render *r, int line, int id, const jv *args, int n_args, const jj_str *kw,
                      const jv *kwv, int n_kw)
{
    jv a[3];
    bool g[3];
    switch (id) {
    case G_RANGE: {
        if (n_kw) FAIL("range() takes no keyword arguments");
        if (n_args < 1 || n_args > 3) FAIL("range expected 1 to 3 arguments, got %d", n_args);
        int64_t v[3];
        for (int i = 0; i < n_args; i++)
            v[i] = jj_want_int(r, line, "range()", &args[i]);
        int64_t start = n_args == 1 ? 0 : v[0], stop = n_args == 1 ? v[0] : v[1];
        int64_t step = n_args == 3 ? v[2] : 1;
        if (!step) FAIL("range() arg 3 must not be zero");
        // len(range(start, stop, step)) without overflow.
        __int128 span = step > 0 ? (__int128)stop - start : (__int128)start - stop;
        __int128 astep = step > 0 ? step : -(__int128)step;
        __int128 n = span > 0 ? (span - 1) / astep + 1 : 0;
        if (n > 100000) // Jinja2's sandbox: MAX_RANGE
            FAIL("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        jj_list *l = jj_list_new(r->c, (size_t)n, JL_RANGE);
        for (size_t i = 0; i < (size_t)n; i++)
            l->v[i] = jv_int(start + (int64_t)i * step);
        jj_step(r, line, (long long)n);
        return jj_mklist(l);
    }
    case G_NAMESPACE:
    case G_DICT: {
        jj_dict *d = dict_from_args(r, line, GLOBALS[id], args, n_args, kw, kwv, n_kw);
        return (jv){.t = id == G_NAMESPACE ? JV_NS : JV_DICT, .u.d = d};
    }
    case G_RAISE: {
        static const char *const p[] = {"message"};
        jj_bind(r, line, "raise_exception", p, 1, 1, args, n_args, kw, kwv, n_kw, a, g);
        jj_str m = jj_soft_str(r, line, &a[0]);
        FAIL("the template raised an error: %.*s", (int)EP_MIN(m.n, 400), m.p);
    }
    case G_STRFTIME: {
        static const char *const p[] = {"format"};
        jj_bind(r, line, "strftime_now", p, 1, 1, args, n_args, kw, kwv, n_kw, a, g);
        jj_str fmt = jj_want_str(r, line, "strftime_now()", &a[0]);
        if (fmt.n > 256 || memchr(fmt.p, 0, fmt.n)) FAIL("strftime_now(): format too long");
        char f[260], out[1024];
        memcpy(f, fmt.p, fmt.n);
        f[fmt.n] = 0;
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = fmt.n ? strftime(out, sizeof out, f, &tm) : 0;
        if (fmt.n && !n) FAIL("strftime_now(): the result is empty or longer than 1 KiB");
        return jv_strn(jj_str_dup(r->c, out, n).p, n);
    }
    }
    EP_ASSERT(!"unknown global id");
    return jv_none();
}

jv jj_call_func(jj_render *r, int line, const jj_func *f, const jv *args, int n_args,
                const jj_str *kw, const jv *kwv, int n_kw)
{
    if (f->id < METHOD_BASE) return call_global(r, line, f->id, args, n_args, kw, kwv, n_kw);
    const method *m = &METHODS[f->id - METHOD_BASE];
    jv self = f->self;
    jv a[3];
    bool g[3];
    char fname[48];
    snprintf(fname, sizeof fname, "%s.%s", jv_type_name(&self), m->name);
    if (m->id == JM_REFUSED) REFUSE("%s() is not supported", fname);
    jj_step(r, line, 1);
    switch (self.t) {
    case JV_STR:
        return jj_str_method(r, line, m->id, m->name, self.u.s, args, n_args, kw, kwv, n_kw);
    case JV_DICT:
        if (m->id == JM_GET) {
            static const char *const p[] = {"key", "default"};
            jj_bind(r, line, fname, p, 2, 1, args, n_args, kw, kwv, n_kw, a, g);
            jv *v = a[0].t == JV_STR ? jj_dict_get(self.u.d, a[0].u.s) : NULL;
            return v ? *v : g[1] ? a[1] : jv_none();
        } else {
            jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
            jj_list *l = jj_list_new(r->c, self.u.d->n, JL_VIEW);
            l->what = m->id == JM_ITEMS  ? "dict_items"
                      : m->id == JM_KEYS ? "dict_keys"
                                         : "dict_values";
            for (size_t i = 0; i < self.u.d->n; i++) {
                jv k = jv_strn(self.u.d->k[i].p, self.u.d->k[i].n);
                if (m->id == JM_ITEMS) {
                    jj_list *pair = jj_list_new(r->c, 2, JL_TUPLE);
                    pair->v[0] = k;
                    pair->v[1] = self.u.d->v[i];
                    l->v[i] = jj_mklist(pair);
                } else {
                    l->v[i] = m->id == JM_KEYS ? k : self.u.d->v[i];
                }
            }
            return jj_mklist(l);
        }
    case JV_LIST: {
        static const char *const p[] = {"value"};
        jj_bind(r, line, fname, p, 1, 1, args, n_args, kw, kwv, n_kw, a, g);
        int64_t k = 0;
        for (size_t i = 0; i < self.u.l->n; i++)
            if (jv_equal(&self.u.l->v[i], &a[0])) {
                if (m->id == JM_INDEX) return jv_int((int64_t)i);
                k++;
            }
        if (m->id == JM_INDEX) FAIL("%s(x): x not in %s", fname, self.u.l->what);
        return jv_int(k);
    }
    case JV_LOOP: {
        if (n_kw) FAIL("loop.cycle() takes no keyword arguments");
        if (!n_args) FAIL("no items for cycling given");
        return args[self.u.loop->i % (size_t)n_args];
    }
    default:
        break;
    }
    REFUSE("%s() is not supported", fname);
}
