// Values of the Jinja subset and the memory they live in: the arena, text
// buffers, Python's truthiness, ==, ordering, str() and repr() (floats as
// Python's shortest round-trip repr), json.dumps as transformers' `tojson`
// calls it, and the conversion of the JSON render variables. Behaviour
// follows CPython 3 where a template can observe it; what would differ is
// refused, not approximated.
#include "model/jinja_impl.h"

#include "common/utf8.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

// ---- arena ----------------------------------------------------------------------------

struct jj_chunk {
    jj_chunk *next;
    size_t cap, used;
    _Alignas(16) unsigned char mem[];
};

enum { CHUNK_BYTES = 64 << 10 };

void *jj_alloc(jj_ctx *c, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!n) n = 16;
    jj_chunk *h = c->chunks;
    if (!h || h->cap - h->used < n) {
        size_t cap = n > CHUNK_BYTES / 4 ? n : CHUNK_BYTES;
        if (c->bytes + (long long)cap > c->limit)
            jj_fail(c, EP_ERR_ARG, 0, "needs more than %lld MiB of memory (the limit)",
                    c->limit >> 20);
        jj_chunk *k = malloc(sizeof *k + cap);
        if (!k) jj_fail(c, EP_ERR_NOMEM, 0, "out of memory (%zu bytes)", cap);
        k->cap = cap;
        k->used = 0;
        c->bytes += (long long)cap;
        if (h && cap > CHUNK_BYTES) { // a big block goes behind the current chunk
            k->next = h->next;
            h->next = k;
        } else {
            k->next = h;
            c->chunks = k;
        }
        h = k;
    }
    void *p = h->mem + h->used;
    h->used += n;
    memset(p, 0, n);
    return p;
}

void jj_arena_free(jj_ctx *c)
{
    for (jj_chunk *k = c->chunks, *next; k; k = next) {
        next = k->next;
        free(k);
    }
    c->chunks = NULL;
    c->bytes = 0;
}

void jj_fail(jj_ctx *c, ep_status st, int line, const char *fmt, ...)
{
    int k = line > 0 ? snprintf(c->msg, sizeof c->msg, "%s line %d: ", c->name, line)
                     : snprintf(c->msg, sizeof c->msg, "%s: ", c->name);
    if (k < 0 || k >= (int)sizeof c->msg) k = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg + k, sizeof c->msg - (size_t)k, fmt, ap);
    va_end(ap);
    c->st = st;
    EP_ASSERT(c->jb);
    longjmp(*c->jb, 1);
}

// ---- strings and buffers --------------------------------------------------------------

jj_str jj_str_dup(jj_ctx *c, const char *p, size_t n)
{
    char *d = jj_alloc(c, n + 1);
    if (n) memcpy(d, p, n);
    return (jj_str){d, n};
}

jj_str jj_cstr(const char *s)
{
    return (jj_str){s, strlen(s)};
}

bool jj_str_eq(jj_str a, const char *s)
{
    size_t n = strlen(s);
    return a.n == n && !memcmp(a.p, s, n);
}

void jj_buf_add(jj_ctx *c, jj_buf *b, const char *p, size_t n)
{
    if (b->n + n > EP_JINJA_MAX_OUTPUT_BYTES)
        jj_fail(c, EP_ERR_ARG, 0, "makes a text longer than %d MiB (the limit)",
                EP_JINJA_MAX_OUTPUT_BYTES >> 20);
    if (!b->p || b->n + n + 1 > b->cap) {
        size_t cap = EP_MAX(EP_MAX(2 * b->cap, b->n + n + 1), (size_t)64);
        char *np = jj_alloc(c, cap);
        if (b->n) memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
}

void jj_buf_addc(jj_ctx *c, jj_buf *b, const char *s)
{
    jj_buf_add(c, b, s, strlen(s));
}

const char *jj_memfind(const char *h, size_t hn, const char *n, size_t nn)
{
    if (!nn) return h;
    while (hn >= nn) {
        const char *c = memchr(h, n[0], hn - nn + 1);
        if (!c) return NULL;
        if (!memcmp(c, n, nn)) return c;
        hn -= (size_t)(c - h) + 1;
        h = c + 1;
    }
    return NULL;
}

uint32_t jj_cp_at(const char *p, size_t n, size_t *len)
{
    uint32_t cp;
    size_t l = ep_utf8_next((const unsigned char *)p, n, &cp);
    if (!l) { // text here is checked UTF-8; a stray byte reads as itself
        *len = 1;
        return (unsigned char)p[0];
    }
    *len = l;
    return cp;
}

size_t jj_cp_count(jj_str s)
{
    size_t k = 0;
    for (size_t i = 0; i < s.n; i++)
        k += ((unsigned char)s.p[i] & 0xC0) != 0x80;
    return k;
}

bool jj_py_isspace(uint32_t cp)
{
    // CPython's Py_UNICODE_ISSPACE: bidirectional type WS, B or S, or category Zs.
    switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x1F:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
        return true;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

// ---- lists and dicts ------------------------------------------------------------------

static const char *const LIST_WHAT[] = {"list", "tuple", "generator", "dict_items", "range"};

jj_list *jj_list_new(jj_ctx *c, size_t n, jl_kind kind)
{
    if (n > (size_t)(c->limit / (long long)sizeof(jv)))
        jj_fail(c, EP_ERR_ARG, 0, "a sequence of %zu items is over the memory limit", n);
    jj_list *l = jj_alloc(c, sizeof *l);
    l->v = jj_alloc(c, (n ? n : 1) * sizeof *l->v);
    l->n = n;
    l->kind = kind;
    l->what = LIST_WHAT[kind];
    return l;
}

jj_dict *jj_dict_new(jj_ctx *c, size_t cap)
{
    jj_dict *d = jj_alloc(c, sizeof *d);
    d->cap = cap ? cap : 4;
    d->k = jj_alloc(c, d->cap * sizeof *d->k);
    d->v = jj_alloc(c, d->cap * sizeof *d->v);
    return d;
}

jv *jj_dict_get(const jj_dict *d, jj_str k)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].n == k.n && !memcmp(d->k[i].p, k.p, k.n)) return &d->v[i];
    return NULL;
}

void jj_dict_set(jj_ctx *c, jj_dict *d, jj_str k, jv v)
{
    jv *old = jj_dict_get(d, k);
    if (old) {
        *old = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = 2 * d->cap;
        jj_str *nk = jj_alloc(c, cap * sizeof *nk);
        jv *nv = jj_alloc(c, cap * sizeof *nv);
        memcpy(nk, d->k, d->n * sizeof *nk);
        memcpy(nv, d->v, d->n * sizeof *nv);
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

// ---- Python semantics -----------------------------------------------------------------

const char *jv_type_name(const jv *v)
{
    switch (v->t) {
    case JV_UNDEF:
        return "Undefined";
    case JV_NONE:
        return "NoneType";
    case JV_BOOL:
        return "bool";
    case JV_INT:
        return "int";
    case JV_FLOAT:
        return "float";
    case JV_STR:
        return "str";
    case JV_LIST:
        return v->u.l->what;
    case JV_DICT:
        return "dict";
    case JV_NS:
        return "Namespace";
    case JV_LOOP:
        return "LoopContext";
    case JV_FUNC:
        return "builtin_function_or_method";
    case JV_MACRO:
        return "Macro";
    }
    return "?";
}

noreturn void jj_undefined_fail(jj_ctx *c, int line, const jv *v)
{
    jj_fail(c, EP_ERR_ARG, line, "%s", v->u.undef ? v->u.undef : "an undefined value was used");
}

bool jv_truthy(const jv *v)
{
    switch (v->t) {
    case JV_UNDEF:
    case JV_NONE:
        return false;
    case JV_BOOL:
        return v->u.b;
    case JV_INT:
        return v->u.i != 0;
    case JV_FLOAT:
        return v->u.f != 0;
    case JV_STR:
        return v->u.s.n > 0;
    case JV_LIST:
        return v->u.l->kind == JL_GEN || v->u.l->n > 0;
    case JV_DICT:
        return v->u.d->n > 0;
    default:
        return true;
    }
}

static bool is_num(const jv *v)
{
    return v->t == JV_BOOL || v->t == JV_INT || v->t == JV_FLOAT;
}

static int64_t as_int(const jv *v)
{
    return v->t == JV_BOOL ? v->u.b : v->u.i;
}

// Exact comparison of numbers (an int64 and a double compare as Python's int and float do).
static int num_cmp(const jv *a, const jv *b)
{
    if (a->t != JV_FLOAT && b->t != JV_FLOAT) {
        int64_t x = as_int(a), y = as_int(b);
        return x < y ? -1 : x > y;
    }
    if (a->t == JV_FLOAT && b->t == JV_FLOAT) {
        double x = a->u.f, y = b->u.f;
        return x < y ? -1 : x > y ? 1 : x == y ? 0 : 2; // 2: unordered (nan)
    }
    bool flip = a->t != JV_FLOAT;
    double f = flip ? b->u.f : a->u.f;
    int64_t i = flip ? as_int(a) : as_int(b);
    int r;
    if (isnan(f)) return 2;
    if (f >= 9223372036854775808.0)
        r = 1;
    else if (f < -9223372036854775808.0)
        r = -1;
    else {
        double t = trunc(f);
        int64_t ti = (int64_t)t;
        r = ti < i ? -1 : ti > i ? 1 : (f > t ? 1 : f < t ? -1 : 0);
    }
    return flip ? -r : r;
}

bool jv_equal(const jv *a, const jv *b)
{
    if (is_num(a) && is_num(b)) return num_cmp(a, b) == 0;
    if (a->t != b->t) return false;
    switch (a->t) {
    case JV_UNDEF:
    case JV_NONE:
        return true;
    case JV_STR:
        return a->u.s.n == b->u.s.n && !memcmp(a->u.s.p, b->u.s.p, a->u.s.n);
    case JV_LIST: {
        const jj_list *x = a->u.l, *y = b->u.l;
        if (x == y) return true;
        if (x->kind != y->kind || x->kind == JL_GEN || x->n != y->n) return false;
        for (size_t i = 0; i < x->n; i++)
            if (!jv_equal(&x->v[i], &y->v[i])) return false;
        return true;
    }
    case JV_DICT: {
        const jj_dict *x = a->u.d, *y = b->u.d;
        if (x->n != y->n) return false;
        for (size_t i = 0; i < x->n; i++) {
            const jv *o = jj_dict_get(y, x->k[i]);
            if (!o || !jv_equal(&x->v[i], o)) return false;
        }
        return true;
    }
    case JV_NS:
        return a->u.d == b->u.d;
    case JV_LOOP:
        return a->u.loop == b->u.loop;
    case JV_MACRO:
        return a->u.m == b->u.m;
    default:
        return false;
    }
}

int jv_compare(jj_ctx *c, int line, const jv *a, const jv *b, const char *op)
{
    if (a->t == JV_UNDEF) jj_undefined_fail(c, line, a);
    if (b->t == JV_UNDEF) jj_undefined_fail(c, line, b);
    if (is_num(a) && is_num(b)) return num_cmp(a, b);
    if (a->t == JV_STR && b->t == JV_STR) { // UTF-8 byte order is code point order
        size_t n = EP_MIN(a->u.s.n, b->u.s.n);
        int r = memcmp(a->u.s.p, b->u.s.p, n);
        if (r) return r < 0 ? -1 : 1;
        return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
    }
    if (a->t == JV_LIST && b->t == JV_LIST && a->u.l->kind == b->u.l->kind &&
        (a->u.l->kind == JL_LIST || a->u.l->kind == JL_TUPLE)) {
        const jj_list *x = a->u.l, *y = b->u.l;
        for (size_t i = 0; i < x->n && i < y->n; i++)
            if (!jv_equal(&x->v[i], &y->v[i])) return jv_compare(c, line, &x->v[i], &y->v[i], op);
        return x->n < y->n ? -1 : x->n > y->n;
    }
    jj_fail(c, EP_ERR_ARG, line, "'%s' not supported between instances of '%s' and '%s'", op,
            jv_type_name(a), jv_type_name(b));
}

// ---- str() and repr() -----------------------------------------------------------------

jj_str jj_float_repr(jj_ctx *c, double f)
{
    char out[64];
    if (isnan(f)) return jj_cstr("nan");
    if (isinf(f)) return jj_cstr(f < 0 ? "-inf" : "inf");
    if (f == 0) return jj_cstr(signbit(f) ? "-0.0" : "0.0");
    // The shortest digit string that reads back as f (Python's repr).
    char e[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, f);
        if (strtod(e, NULL) == f) break;
    }
    char digits[24];
    int nd = 0;
    const char *q = e;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    int decpt = atoi(q + 1) + 1; // value = 0.DIGITS * 10^decpt
    int k = 0;
    if (neg) out[k++] = '-';
    if (decpt <= -4 || decpt > 16) {
        out[k++] = digits[0];
        if (nd > 1) {
            out[k++] = '.';
            memcpy(out + k, digits + 1, (size_t)nd - 1);
            k += nd - 1;
        }
        k += snprintf(out + k, sizeof out - (size_t)k, "e%c%02d", decpt - 1 < 0 ? '-' : '+',
                      abs(decpt - 1));
    } else if (decpt <= 0) {
        out[k++] = '0';
        out[k++] = '.';
        for (int i = 0; i < -decpt; i++)
            out[k++] = '0';
        memcpy(out + k, digits, (size_t)nd);
        k += nd;
    } else if (decpt >= nd) {
        memcpy(out + k, digits, (size_t)nd);
        k += nd;
        for (int i = nd; i < decpt; i++)
            out[k++] = '0';
        out[k++] = '.';
        out[k++] = '0';
    } else {
        memcpy(out + k, digits, (size_t)decpt);
        k += decpt;
        out[k++] = '.';
        memcpy(out + k, digits + decpt, (size_t)(nd - decpt));
        k += nd - decpt;
    }
    return jj_str_dup(c, out, (size_t)k);
}

// str.isprintable() for one code point (CPython: not in Cc, Cf, Cs, Co, Cn, Zl,
// Zp, Zs, except the space). utf8proc's Unicode version may be newer than
// Python's for characters assigned since.
static bool py_isprintable(uint32_t cp)
{
    if (cp == ' ') return true;
    if (cp < 0x80) return cp > 0x20 && cp < 0x7f;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
        return false;
    default:
        return true;
    }
}

static void repr_str(jj_ctx *c, jj_buf *b, jj_str s)
{
    bool sq = memchr(s.p, '\'', s.n) != NULL, dq = memchr(s.p, '"', s.n) != NULL;
    char quote = sq && !dq ? '"' : '\'';
    jj_buf_add(c, b, &quote, 1);
    for (size_t i = 0; i < s.n;) {
        size_t l;
        uint32_t cp = jj_cp_at(s.p + i, s.n - i, &l);
        char tmp[16];
        if (cp == (uint32_t)quote || cp == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)cp;
            jj_buf_add(c, b, tmp, 2);
        } else if (cp == '\t' || cp == '\n' || cp == '\r') {
            jj_buf_addc(c, b, cp == '\t' ? "\\t" : cp == '\n' ? "\\n" : "\\r");
        } else if (py_isprintable(cp)) {
            jj_buf_add(c, b, s.p + i, l);
        } else {
            int k = snprintf(tmp, sizeof tmp,
                             cp < 0x100     ? "\\x%02x"
                             : cp < 0x10000 ? "\\u%04x"
                                            : "\\U%08x",
                             cp);
            jj_buf_add(c, b, tmp, (size_t)k);
        }
        i += l;
    }
    jj_buf_add(c, b, &quote, 1);
}

static void str_into(jj_ctx *c, int line, jj_buf *b, const jv *v, bool repr, int depth);

static void dict_items_into(jj_ctx *c, int line, jj_buf *b, const jj_dict *d, int depth)
{
    jj_buf_addc(c, b, "{");
    for (size_t i = 0; i < d->n; i++) {
        if (i) jj_buf_addc(c, b, ", ");
        repr_str(c, b, d->k[i]);
        jj_buf_addc(c, b, ": ");
        str_into(c, line, b, &d->v[i], true, depth + 1);
    }
    jj_buf_addc(c, b, "}");
}

static void str_into(jj_ctx *c, int line, jj_buf *b, const jv *v, bool repr, int depth)
{
    if (depth > 256)
        jj_fail(c, EP_ERR_ARG, line, "a value nested deeper than 256 levels cannot be printed");
    char tmp[32];
    switch (v->t) {
    case JV_UNDEF:
        if (repr) jj_buf_addc(c, b, "Undefined");
        return;
    case JV_NONE:
        jj_buf_addc(c, b, "None");
        return;
    case JV_BOOL:
        jj_buf_addc(c, b, v->u.b ? "True" : "False");
        return;
    case JV_INT:
        snprintf(tmp, sizeof tmp, "%lld", (long long)v->u.i);
        jj_buf_addc(c, b, tmp);
        return;
    case JV_FLOAT: {
        jj_str s = jj_float_repr(c, v->u.f);
        jj_buf_add(c, b, s.p, s.n);
        return;
    }
    case JV_STR:
        if (repr)
            repr_str(c, b, v->u.s);
        else
            jj_buf_add(c, b, v->u.s.p, v->u.s.n);
        return;
    case JV_LIST: {
        const jj_list *l = v->u.l;
        if (l->kind != JL_LIST && l->kind != JL_TUPLE)
            jj_fail(c, EP_ERR_UNSUPPORTED, line,
                    "printing a %s is not supported (Python prints its object, not its items; "
                    "pipe it through |list)",
                    l->what);
        jj_buf_addc(c, b, l->kind == JL_LIST ? "[" : "(");
        for (size_t i = 0; i < l->n; i++) {
            if (i) jj_buf_addc(c, b, ", ");
            str_into(c, line, b, &l->v[i], true, depth + 1);
        }
        if (l->kind == JL_TUPLE && l->n == 1) jj_buf_addc(c, b, ",");
        jj_buf_addc(c, b, l->kind == JL_LIST ? "]" : ")");
        return;
    }
    case JV_DICT:
        dict_items_into(c, line, b, v->u.d, depth);
        return;
    case JV_NS:
        jj_buf_addc(c, b, "<Namespace ");
        dict_items_into(c, line, b, v->u.d, depth);
        jj_buf_addc(c, b, ">");
        return;
    default:
        jj_fail(c, EP_ERR_UNSUPPORTED, line,
                "printing a %s is not supported (Python prints its address)", jv_type_name(v));
    }
}

jj_str jv_to_str(jj_ctx *c, int line, const jv *v)
{
    if (v->t == JV_STR) return v->u.s;
    if (v->t == JV_UNDEF) return (jj_str){"", 0};
    jj_buf b = {0};
    jj_buf_add(c, &b, "", 0);
    str_into(c, line, &b, v, false, 0);
    return (jj_str){b.p, b.n};
}

void jv_repr_into(jj_ctx *c, int line, jj_buf *b, const jv *v)
{
    str_into(c, line, b, v, true, 0);
}

jj_str jv_to_repr(jj_ctx *c, int line, const jv *v)
{
    jj_buf b = {0};
    jj_buf_add(c, &b, "", 0);
    str_into(c, line, &b, v, true, 0);
    return (jj_str){b.p, b.n};
}

// ---- JSON -----------------------------------------------------------------------------

jv jv_from_json(jj_ctx *c, const json_t *j, int depth)
{
    if (depth > 256) jj_fail(c, EP_ERR_ARG, 0, "a variable is nested deeper than 256 levels");
    switch (json_typeof(j)) {
    case JSON_NULL:
        return jv_none();
    case JSON_TRUE:
        return jv_bool(true);
    case JSON_FALSE:
        return jv_bool(false);
    case JSON_INTEGER:
        return jv_int(json_integer_value(j));
    case JSON_REAL:
        return jv_float(json_real_value(j));
    case JSON_STRING:
        return jv_strn(json_string_value(j), json_string_length(j));
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        jj_list *l = jj_list_new(c, n, JL_LIST);
        for (size_t i = 0; i < n; i++)
            l->v[i] = jv_from_json(c, json_array_get(j, i), depth + 1);
        return (jv){.t = JV_LIST, .u.l = l};
    }
    case JSON_OBJECT: {
        jj_dict *d = jj_dict_new(c, json_object_size(j));
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v)
        {
            // Keys of a parsed object are unique: no lookup needed.
            d->k[d->n] = jj_cstr(k);
            d->v[d->n++] = jv_from_json(c, v, depth + 1);
        }
        return (jv){.t = JV_DICT, .u.d = d};
    }
    }
    return jv_none();
}

static void json_str(jj_ctx *c, jj_buf *b, jj_str s, bool ensure_ascii)
{
    jj_buf_addc(c, b, "\"");
    size_t run = 0; // bytes copied as they are, flushed in one add
    for (size_t i = 0; i < s.n;) {
        unsigned char ch = (unsigned char)s.p[i];
        size_t l = 1;
        uint32_t cp = ch;
        if (ch >= 0x80) cp = jj_cp_at(s.p + i, s.n - i, &l);
        const char *esc = NULL;
        char tmp[16];
        if (ch == '"')
            esc = "\\\"";
        else if (ch == '\\')
            esc = "\\\\";
        else if (ch == '\n')
            esc = "\\n";
        else if (ch == '\r')
            esc = "\\r";
        else if (ch == '\t')
            esc = "\\t";
        else if (ch == '\b')
            esc = "\\b";
        else if (ch == '\f')
            esc = "\\f";
        else if (ch < 0x20 || (ensure_ascii && ch == 0x7f)) {
            snprintf(tmp, sizeof tmp, "\\u%04x", ch);
            esc = tmp;
        } else if (ensure_ascii && cp >= 0x80) {
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (v >> 10),
                         0xDC00 + (v & 0x3FF));
            } else {
                snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            }
            esc = tmp;
        }
        if (esc) {
            jj_buf_add(c, b, s.p + i - run, run);
            run = 0;
            jj_buf_addc(c, b, esc);
        } else {
            run += l;
        }
        i += l;
    }
    jj_buf_add(c, b, s.p + s.n - run, run);
    jj_buf_addc(c, b, "\"");
}

static int cmp_keys(const void *a, const void *b)
{
    const jj_str *x = *(const jj_str *const *)a, *y = *(const jj_str *const *)b;
    int r = memcmp(x->p, y->p, EP_MIN(x->n, y->n));
    return r ? r : (x->n > y->n) - (x->n < y->n);
}

void jj_tojson(jj_ctx *c, int line, jj_buf *b, const jv *v, int indent, const jj_str *item_sep,
               const jj_str *key_sep, bool ensure_ascii, bool sort_keys, int depth)
{
    if (depth > 256) jj_fail(c, EP_ERR_ARG, line, "tojson: a value nested deeper than 256 levels");
    // Python's defaults: (', ', ': ') without indent, (',', ': ') with one.
    jj_str isep = item_sep ? *item_sep : jj_cstr(indent >= 0 ? "," : ", ");
    jj_str ksep = key_sep ? *key_sep : jj_cstr(": ");
    switch (v->t) {
    case JV_NONE:
        jj_buf_addc(c, b, "null");
        return;
    case JV_BOOL:
        jj_buf_addc(c, b, v->u.b ? "true" : "false");
        return;
    case JV_INT:
    case JV_STR:
        if (v->t == JV_STR)
            json_str(c, b, v->u.s, ensure_ascii);
        else
            str_into(c, line, b, v, false, 0);
        return;
    case JV_FLOAT:
        if (isnan(v->u.f))
            jj_buf_addc(c, b, "NaN");
        else if (isinf(v->u.f))
            jj_buf_addc(c, b, v->u.f < 0 ? "-Infinity" : "Infinity");
        else
            str_into(c, line, b, v, false, 0);
        return;
    case JV_LIST:
    case JV_DICT: {
        bool list = v->t == JV_LIST;
        if (list && v->u.l->kind != JL_LIST && v->u.l->kind != JL_TUPLE) break;
        size_t n = list ? v->u.l->n : v->u.d->n;
        if (!n) {
            jj_buf_addc(c, b, list ? "[]" : "{}");
            return;
        }
        jj_buf_addc(c, b, list ? "[" : "{");
        const jj_str **keys = NULL;
        size_t *order = NULL;
        if (!list) {
            keys = jj_alloc(c, n * sizeof *keys);
            for (size_t i = 0; i < n; i++)
                keys[i] = &v->u.d->k[i];
            if (sort_keys) qsort(keys, n, sizeof *keys, cmp_keys);
            order = jj_alloc(c, n * sizeof *order);
            for (size_t i = 0; i < n; i++)
                order[i] = (size_t)(keys[i] - v->u.d->k);
        }
        for (size_t i = 0; i < n; i++) {
            if (i) jj_buf_add(c, b, isep.p, isep.n);
            if (indent >= 0) {
                jj_buf_addc(c, b, "\n");
                for (int s = 0; s < indent * (depth + 1); s++)
                    jj_buf_addc(c, b, " ");
            }
            const jv *item = list ? &v->u.l->v[i] : &v->u.d->v[order[i]];
            if (!list) {
                json_str(c, b, v->u.d->k[order[i]], ensure_ascii);
                jj_buf_add(c, b, ksep.p, ksep.n);
            }
            jj_tojson(c, line, b, item, indent, item_sep, key_sep, ensure_ascii, sort_keys,
                      depth + 1);
        }
        if (indent >= 0) {
            jj_buf_addc(c, b, "\n");
            for (int s = 0; s < indent * depth; s++)
                jj_buf_addc(c, b, " ");
        }
        jj_buf_addc(c, b, list ? "]" : "}");
        return;
    }
    default:
        break;
    }
    jj_fail(c, EP_ERR_ARG, line, "tojson: Object of type %s is not JSON serializable",
            jv_type_name(v));
}
