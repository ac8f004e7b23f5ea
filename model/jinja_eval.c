// Renders a parsed Jinja template (model/jinja_impl.h): statements, the
// scopes Jinja2 gives them (a for loop's body starts a fresh scope each
// iteration, `set` there does not leak out, `if` opens none, a macro sees
// the scope it was defined in), and expressions with Python's operator
// semantics. Filters, tests and methods are in jinja_lib.c. Every
// evaluation and iteration is counted against EP_JINJA_MAX_STEPS.
#include "model/jinja_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { FLOW_NEXT, FLOW_BREAK, FLOW_CONTINUE } flow;

void jj_step(jj_render *r, int line, long long n)
{
    r->steps += n;
    if (r->steps > EP_JINJA_MAX_STEPS)
        jj_fail(r->c, EP_ERR_ARG, line, "the template did more than %lld steps of work (the limit)",
                EP_JINJA_MAX_STEPS);
}

// ---- scopes ---------------------------------------------------------------------------

static jj_frame *frame_new(jj_render *r, jj_frame *parent)
{
    jj_frame *f = jj_alloc(r->c, sizeof *f);
    f->parent = parent;
    return f;
}

// The frame of the next loop iteration: f emptied for reuse (an iteration's
// names do not outlive it), unless a macro defined in it holds on to it.
static jj_frame *frame_next(jj_render *r, jj_frame *f, jj_frame *parent)
{
    if (!f || f->captured) return frame_new(r, parent);
    f->n = 0;
    return f;
}

static jv *frame_find(jj_frame *f, jj_str k)
{
    for (; f; f = f->parent)
        for (int i = f->n - 1; i >= 0; i--)
            if (f->k[i].n == k.n && !memcmp(f->k[i].p, k.p, k.n)) return &f->v[i];
    return NULL;
}

static void frame_set(jj_render *r, jj_frame *f, jj_str k, jv v)
{
    for (int i = 0; i < f->n; i++)
        if (f->k[i].n == k.n && !memcmp(f->k[i].p, k.p, k.n)) {
            f->v[i] = v;
            return;
        }
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 4;
        jj_str *nk = jj_alloc(r->c, (size_t)cap * sizeof *nk);
        jv *nv = jj_alloc(r->c, (size_t)cap * sizeof *nv);
        if (f->n) {
            memcpy(nk, f->k, (size_t)f->n * sizeof *nk);
            memcpy(nv, f->v, (size_t)f->n * sizeof *nv);
        }
        f->k = nk;
        f->v = nv;
        f->cap = cap;
    }
    f->k[f->n] = k;
    f->v[f->n++] = v;
}

static char *fmt_hint(jj_render *r, const char *fmt, jj_str a, const char *b)
{
    size_t n = strlen(fmt) + a.n + (b ? strlen(b) : 0) + 1;
    char *s = jj_alloc(r->c, n);
    snprintf(s, n, fmt, (int)a.n, a.p, b);
    return s;
}

static jv lookup(jj_render *r, jj_frame *f, jj_str name)
{
    jv *v = frame_find(f, name);
    if (v) return *v;
    int g = jj_global_id(name);
    if (g >= 0) {
        jj_func *fn = jj_alloc(r->c, sizeof *fn);
        fn->id = g;
        fn->self = jv_undef(NULL);
        fn->name = jj_str_dup(r->c, name.p, name.n).p;
        return (jv){.t = JV_FUNC, .u.fn = fn};
    }
    return jv_undef(fmt_hint(r, "'%.*s' is undefined%s", name, ""));
}

// ---- expressions ----------------------------------------------------------------------

static jv eval(jj_render *r, jj_frame *f, const jj_expr *e);
static flow exec_body(jj_render *r, jj_frame *f, const jj_body *b);

static noreturn void type_fail(jj_render *r, int line, const char *op, const jv *a, const jv *b)
{
    jj_fail(r->c, EP_ERR_ARG, line, "unsupported operand type(s) for %s: '%s' and '%s'", op,
            jv_type_name(a), jv_type_name(b));
}

static bool is_num(const jv *v)
{
    return v->t == JV_BOOL || v->t == JV_INT || v->t == JV_FLOAT;
}
static int64_t ival(const jv *v)
{
    return v->t == JV_BOOL ? v->u.b : v->u.i;
}
static double fval(const jv *v)
{
    return v->t == JV_FLOAT ? v->u.f : (double)ival(v);
}

static noreturn void overflow(jj_render *r, int line)
{
    jj_fail(r->c, EP_ERR_UNSUPPORTED, line,
            "integer overflow (Python's integers are unbounded; epserve's are 64-bit)");
}

static jv repeat(jj_render *r, int line, const jv *seq, int64_t times)
{
    if (times < 0) times = 0;
    if (seq->t == JV_STR) {
        if (seq->u.s.n && (uint64_t)times > EP_JINJA_MAX_OUTPUT_BYTES / seq->u.s.n)
            jj_fail(r->c, EP_ERR_ARG, line, "str * %lld is longer than %d MiB (the limit)",
                    (long long)times, EP_JINJA_MAX_OUTPUT_BYTES >> 20);
        jj_buf b = {0};
        jj_buf_add(r->c, &b, "", 0);
        for (int64_t i = 0; i < times; i++)
            jj_buf_add(r->c, &b, seq->u.s.p, seq->u.s.n);
        jj_step(r, line, (long long)b.n / 64);
        return jv_strn(b.p, b.n);
    }
    const jj_list *l = seq->u.l;
    if (l->n && (uint64_t)times > (uint64_t)(EP_JINJA_MAX_ARENA_BYTES / 16) / l->n)
        jj_fail(r->c, EP_ERR_ARG, line, "%s * %lld is over the memory limit", l->what,
                (long long)times);
    jj_list *o = jj_list_new(r->c, l->n * (size_t)times, l->kind);
    for (int64_t i = 0; i < times; i++)
        memcpy(o->v + (size_t)i * l->n, l->v, l->n * sizeof *l->v);
    jj_step(r, line, (long long)o->n);
    return (jv){.t = JV_LIST, .u.l = o};
}

// CPython's float_divmod.
static void py_fdivmod(double vx, double wx, double *floordiv, double *mod)
{
    double m = fmod(vx, wx), div = (vx - m) / wx;
    if (m) {
        if ((wx < 0) != (m < 0)) {
            m += wx;
            div -= 1.0;
        }
    } else {
        m = copysign(0.0, wx);
    }
    double fd;
    if (div) {
        fd = floor(div);
        if (div - fd > 0.5) fd += 1.0;
    } else {
        fd = copysign(0.0, vx / wx);
    }
    *floordiv = fd;
    *mod = m;
}

static jv arith(jj_render *r, int line, int op, jv a, jv b)
{
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (a.t == JV_UNDEF) jj_undefined_fail(r->c, line, &a);
    if (b.t == JV_UNDEF) jj_undefined_fail(r->c, line, &b);
    if (is_num(&a) && is_num(&b)) {
        bool ints = a.t != JV_FLOAT && b.t != JV_FLOAT;
        if ((op == JO_DIV || op == JO_FDIV || op == JO_MOD) && fval(&b) == 0)
            jj_fail(r->c, EP_ERR_ARG, line, "%s by zero",
                    op == JO_MOD ? "modulo"
                    : ints       ? "division"
                                 : "float division");
        if (ints) {
            int64_t x = ival(&a), y = ival(&b), z;
            switch (op) {
            case JO_ADD:
                if (__builtin_add_overflow(x, y, &z)) overflow(r, line);
                return jv_int(z);
            case JO_SUB:
                if (__builtin_sub_overflow(x, y, &z)) overflow(r, line);
                return jv_int(z);
            case JO_MUL:
                if (__builtin_mul_overflow(x, y, &z)) overflow(r, line);
                return jv_int(z);
            case JO_DIV:
                return jv_float((double)x / (double)y);
            case JO_FDIV:
            case JO_MOD: {
                if (x == INT64_MIN && y == -1) overflow(r, line);
                int64_t q = x / y, m = x % y;
                if (m && ((m < 0) != (y < 0))) {
                    m += y;
                    q -= 1;
                }
                return jv_int(op == JO_FDIV ? q : m);
            }
            case JO_POW: {
                if (y < 0) {
                    if (x == 0)
                        jj_fail(r->c, EP_ERR_ARG, line, "0.0 cannot be raised to a negative power");
                    return jv_float(pow((double)x, (double)y));
                }
                int64_t acc = 1, base = x;
                while (y) {
                    if (y & 1 && __builtin_mul_overflow(acc, base, &acc)) overflow(r, line);
                    y >>= 1;
                    if (y && __builtin_mul_overflow(base, base, &base)) overflow(r, line);
                }
                return jv_int(acc);
            }
            }
        }
        double x = fval(&a), y = fval(&b), q, m;
        switch (op) {
        case JO_ADD:
            return jv_float(x + y);
        case JO_SUB:
            return jv_float(x - y);
        case JO_MUL:
            return jv_float(x * y);
        case JO_DIV:
            return jv_float(x / y);
        case JO_FDIV:
            py_fdivmod(x, y, &q, &m);
            return jv_float(q);
        case JO_MOD:
            py_fdivmod(x, y, &q, &m);
            return jv_float(m);
        case JO_POW: {
            if (x == 0 && y < 0)
                jj_fail(r->c, EP_ERR_ARG, line, "0.0 cannot be raised to a negative power");
            if (x < 0 && y != floor(y))
                jj_fail(r->c, EP_ERR_UNSUPPORTED, line,
                        "a negative number to a fractional power is complex in Python; not "
                        "supported");
            double z = pow(x, y);
            if (isinf(z) && isfinite(x) && isfinite(y))
                jj_fail(r->c, EP_ERR_ARG, line, "float ** overflow: numerical result out of range");
            return jv_float(z);
        }
        }
    }
    if (op == JO_ADD) {
        if (a.t == JV_STR && b.t == JV_STR) {
            jj_buf s = {0};
            jj_buf_add(r->c, &s, a.u.s.p, a.u.s.n);
            jj_buf_add(r->c, &s, b.u.s.p, b.u.s.n);
            jj_step(r, line, (long long)s.n / 64);
            return jv_strn(s.p, s.n);
        }
        if (a.t == JV_STR)
            jj_fail(r->c, EP_ERR_ARG, line, "can only concatenate str (not \"%s\") to str",
                    jv_type_name(&b));
        if (a.t == JV_LIST && b.t == JV_LIST && a.u.l->kind == b.u.l->kind &&
            (a.u.l->kind == JL_LIST || a.u.l->kind == JL_TUPLE)) {
            jj_list *o = jj_list_new(r->c, a.u.l->n + b.u.l->n, a.u.l->kind);
            memcpy(o->v, a.u.l->v, a.u.l->n * sizeof *o->v);
            memcpy(o->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof *o->v);
            jj_step(r, line, (long long)o->n);
            return (jv){.t = JV_LIST, .u.l = o};
        }
        if (a.t == JV_LIST && (a.u.l->kind == JL_LIST || a.u.l->kind == JL_TUPLE))
            jj_fail(r->c, EP_ERR_ARG, line, "can only concatenate %s (not \"%s\") to %s",
                    a.u.l->what, jv_type_name(&b), a.u.l->what);
    }
    if (op == JO_MUL) {
        const jv *seq = a.t == JV_STR || a.t == JV_LIST ? &a : &b;
        const jv *n = seq == &a ? &b : &a;
        if ((seq->t == JV_STR ||
             (seq->t == JV_LIST && (seq->u.l->kind == JL_LIST || seq->u.l->kind == JL_TUPLE))) &&
            (n->t == JV_INT || n->t == JV_BOOL))
            return repeat(r, line, seq, ival(n));
    }
    if (op == JO_MOD && a.t == JV_STR)
        jj_fail(r->c, EP_ERR_UNSUPPORTED, line,
                "printf-style formatting (str %% value) is not supported");
    type_fail(r, line, names[op], &a, &b);
}

static bool contains(jj_render *r, int line, const jv *item, const jv *in)
{
    switch (in->t) {
    case JV_UNDEF:
        return false;
    case JV_STR:
        if (item->t != JV_STR)
            jj_fail(r->c, EP_ERR_ARG, line, "'in <string>' requires string as left operand, not %s",
                    jv_type_name(item));
        if (!item->u.s.n) return true;
        jj_step(r, line, (long long)in->u.s.n / 64);
        return jj_memfind(in->u.s.p, in->u.s.n, item->u.s.p, item->u.s.n) != NULL;
    case JV_LIST:
        if (in->u.l->kind == JL_GEN)
            jj_fail(r->c, EP_ERR_UNSUPPORTED, line,
                    "'in' on a generator is not supported (pipe it through |list)");
        jj_step(r, line, (long long)in->u.l->n);
        for (size_t i = 0; i < in->u.l->n; i++)
            if (jv_equal(item, &in->u.l->v[i])) return true;
        return false;
    case JV_DICT:
        return item->t == JV_STR && jj_dict_get(in->u.d, item->u.s) != NULL;
    default:
        jj_fail(r->c, EP_ERR_ARG, line, "argument of type '%s' is not iterable", jv_type_name(in));
    }
}

static bool compare(jj_render *r, int line, int op, const jv *a, const jv *b)
{
    static const char *const names[] = {"==", "!=", "<", "<=", ">", ">="};
    switch (op) {
    case JC_EQ:
        return jv_equal(a, b);
    case JC_NE:
        return !jv_equal(a, b);
    case JC_IN:
        return contains(r, line, a, b);
    case JC_NOTIN:
        return !contains(r, line, a, b);
    default:
        break;
    }
    int c = jv_compare(r->c, line, a, b, names[op]);
    if (c == 2) return false; // nan
    switch (op) {
    case JC_LT:
        return c < 0;
    case JC_LE:
        return c <= 0;
    case JC_GT:
        return c > 0;
    default:
        return c >= 0;
    }
}

typedef struct {
    jv *pos;
    int n_pos;
    jv *kwv;
} call_args;

static call_args eval_args(jj_render *r, jj_frame *f, const jj_expr *e)
{
    call_args a = {0};
    a.pos = jj_alloc(r->c, (size_t)(e->n_args + 1) * sizeof *a.pos);
    for (int i = 0; i < e->n_args; i++)
        a.pos[i] = eval(r, f, e->args[i]);
    a.n_pos = e->n_args;
    a.kwv = jj_alloc(r->c, (size_t)(e->n_kw + 1) * sizeof *a.kwv);
    for (int i = 0; i < e->n_kw; i++)
        a.kwv[i] = eval(r, f, e->kwv[i]);
    return a;
}

static jv call_value(jj_render *r, int line, jv callee, const call_args *a, const jj_expr *e)
{
    if (callee.t == JV_FUNC)
        return jj_call_func(r, line, callee.u.fn, a->pos, a->n_pos, e->kw, a->kwv, e->n_kw);
    if (callee.t == JV_MACRO)
        return jj_call_macro(r, line, callee.u.m, a->pos, a->n_pos, e->kw, a->kwv, e->n_kw);
    if (callee.t == JV_UNDEF) jj_undefined_fail(r->c, line, &callee);
    jj_fail(r->c, EP_ERR_ARG, line, "'%s' object is not callable", jv_type_name(&callee));
}

static jv eval_node(jj_render *r, jj_frame *f, const jj_expr *e);

// Each nesting level is bounded by the parser, but macros stack them: the
// C stack is bounded here, for all of them together.
enum { MAX_EVAL_DEPTH = 3000 };

static jv eval(jj_render *r, jj_frame *f, const jj_expr *e)
{
    if (++r->eval_depth > MAX_EVAL_DEPTH)
        jj_fail(r->c, EP_ERR_ARG, e->line, "evaluation nested deeper than %d levels (the limit)",
                MAX_EVAL_DEPTH);
    jv v = eval_node(r, f, e);
    r->eval_depth--;
    return v;
}

static jv eval_node(jj_render *r, jj_frame *f, const jj_expr *e)
{
    jj_step(r, e->line, 1);
    switch (e->k) {
    case JE_LIT:
        return e->lit;
    case JE_NAME:
        return lookup(r, f, e->name);
    case JE_LIST:
    case JE_TUPLE: {
        jj_list *l = jj_list_new(r->c, (size_t)e->n_args, e->k == JE_LIST ? JL_LIST : JL_TUPLE);
        for (int i = 0; i < e->n_args; i++)
            l->v[i] = eval(r, f, e->args[i]);
        return (jv){.t = JV_LIST, .u.l = l};
    }
    case JE_DICT: {
        jj_dict *d = jj_dict_new(r->c, (size_t)e->n_args / 2);
        for (int i = 0; i + 1 < e->n_args; i += 2) {
            jv k = eval(r, f, e->args[i]);
            if (k.t != JV_STR)
                jj_fail(r->c, EP_ERR_UNSUPPORTED, e->args[i]->line,
                        "dict keys other than strings are not supported (found %s)",
                        jv_type_name(&k));
            jj_dict_set(r->c, d, k.u.s, eval(r, f, e->args[i + 1]));
        }
        return (jv){.t = JV_DICT, .u.d = d};
    }
    case JE_ATTR:
        return jj_getattr(r, e->line, eval(r, f, e->a), e->name);
    case JE_ITEM: {
        jv obj = eval(r, f, e->a);
        return jj_getitem(r, e->line, obj, eval(r, f, e->b));
    }
    case JE_SLICE: {
        jv obj = eval(r, f, e->a), parts[3];
        for (int i = 0; i < 3; i++)
            parts[i] = e->args[i] ? eval(r, f, e->args[i]) : jv_none();
        return jj_slice(r, e->line, obj, &parts[0], &parts[1], &parts[2]);
    }
    case JE_CALL: {
        jv callee = eval(r, f, e->a);
        call_args a = eval_args(r, f, e);
        return call_value(r, e->line, callee, &a, e);
    }
    case JE_FILTER: {
        jv v = eval(r, f, e->a);
        call_args a = eval_args(r, f, e);
        return jj_call_filter(r, e->line, e->op, v, a.pos, a.n_pos, e->kw, a.kwv, e->n_kw);
    }
    case JE_TEST: {
        jv v = eval(r, f, e->a);
        call_args a = eval_args(r, f, e);
        if (e->n_kw)
            jj_fail(r->c, EP_ERR_UNSUPPORTED, e->line,
                    "keyword arguments to a test are not supported");
        bool t = jj_call_test(r, e->line, e->op, v, a.pos, a.n_pos);
        return jv_bool(e->negate ? !t : t);
    }
    case JE_NOT: {
        jv v = eval(r, f, e->a);
        return jv_bool(!jv_truthy(&v));
    }
    case JE_NEG:
    case JE_POS: {
        jv v = eval(r, f, e->a);
        if (v.t == JV_UNDEF) jj_undefined_fail(r->c, e->line, &v);
        if (!is_num(&v))
            jj_fail(r->c, EP_ERR_ARG, e->line, "bad operand type for unary %c: '%s'",
                    e->k == JE_NEG ? '-' : '+', jv_type_name(&v));
        if (v.t == JV_FLOAT) return jv_float(e->k == JE_NEG ? -v.u.f : v.u.f);
        if (e->k == JE_POS) return jv_int(ival(&v));
        if (ival(&v) == INT64_MIN) overflow(r, e->line);
        return jv_int(-ival(&v));
    }
    case JE_BIN: {
        jv a = eval(r, f, e->a);
        return arith(r, e->line, e->op, a, eval(r, f, e->b));
    }
    case JE_CMP: {
        jv left = eval(r, f, e->a);
        for (int i = 0; i < e->n_args; i++) {
            jv right = eval(r, f, e->args[i]);
            if (!compare(r, e->line, e->ops[i], &left, &right)) return jv_bool(false);
            left = right;
        }
        return jv_bool(true);
    }
    case JE_AND: {
        jv a = eval(r, f, e->a);
        return jv_truthy(&a) ? eval(r, f, e->b) : a;
    }
    case JE_OR: {
        jv a = eval(r, f, e->a);
        return jv_truthy(&a) ? a : eval(r, f, e->b);
    }
    case JE_COND: {
        jv c = eval(r, f, e->b);
        if (jv_truthy(&c)) return eval(r, f, e->a);
        if (e->c) return eval(r, f, e->c);
        return jv_undef("the conditional expression had no else branch and its test was false");
    }
    case JE_CONCAT: {
        jj_buf b = {0};
        jj_buf_add(r->c, &b, "", 0);
        for (int i = 0; i < e->n_args; i++) {
            jv v = eval(r, f, e->args[i]);
            jj_str s = jv_to_str(r->c, e->line, &v);
            jj_buf_add(r->c, &b, s.p, s.n);
        }
        jj_step(r, e->line, (long long)b.n / 64);
        return jv_strn(b.p, b.n);
    }
    }
    EP_ASSERT(!"unknown expression kind");
    return jv_none();
}

// ---- statements -----------------------------------------------------------------------

static void assign(jj_render *r, jj_frame *f, const jj_node *n, jv v, int line)
{
    if (n->n_names == 1) {
        frame_set(r, f, n->names[0], v);
        return;
    }
    const jv *items;
    size_t k;
    jv *chars = NULL;
    if (v.t == JV_LIST && v.u.l->kind != JL_GEN) {
        items = v.u.l->v;
        k = v.u.l->n;
    } else if (v.t == JV_STR) {
        jj_list *l = jj_iterate(r, line, v, "unpacking");
        chars = l->v;
        items = chars;
        k = l->n;
    } else {
        jj_fail(r->c, EP_ERR_ARG, line, "cannot unpack non-iterable %s object", jv_type_name(&v));
    }
    if (k != (size_t)n->n_names)
        jj_fail(r->c, EP_ERR_ARG, line, "cannot unpack %zu values into %d names", k, n->n_names);
    for (int i = 0; i < n->n_names; i++)
        frame_set(r, f, n->names[i], items[i]);
}

static void out_value(jj_render *r, int line, jv v)
{
    if (v.t == JV_UNDEF) return;
    jj_str s = jv_to_str(r->c, line, &v);
    jj_buf_add(r->c, r->out, s.p, s.n);
}

static flow exec_for(jj_render *r, jj_frame *f, const jj_node *n)
{
    jv it = eval(r, f, n->e);
    jj_list *all = jj_iterate(r, n->line, it, "for loop");
    const jv *items = all->v;
    size_t count = all->n;
    if (n->cond) { // `for x in xs if cond`: loop.length counts what passes
        jv *kept = jj_alloc(r->c, (count ? count : 1) * sizeof *kept);
        size_t k = 0;
        jj_frame *tf = NULL;
        for (size_t i = 0; i < count; i++) {
            jj_step(r, n->line, 1);
            tf = frame_next(r, tf, f);
            assign(r, tf, n, items[i], n->line);
            jv c = eval(r, tf, n->cond);
            if (jv_truthy(&c)) kept[k++] = items[i];
        }
        items = kept;
        count = k;
    }
    if (!count) return exec_body(r, f, &n->els);
    jj_loop *loop = jj_alloc(r->c, sizeof *loop);
    loop->items = items;
    loop->n = count;
    jj_frame *it_f = NULL;
    for (size_t i = 0; i < count; i++) {
        jj_step(r, n->line, 1);
        loop->i = i;
        it_f = frame_next(r, it_f, f);
        assign(r, it_f, n, items[i], n->line);
        frame_set(r, it_f, jj_cstr("loop"), (jv){.t = JV_LOOP, .u.loop = loop});
        flow fl = exec_body(r, it_f, &n->body);
        if (fl == FLOW_BREAK) break;
    }
    return FLOW_NEXT;
}

static jj_str capture(jj_render *r, jj_frame *f, const jj_body *b)
{
    jj_buf buf = {0}, *saved = r->out;
    jj_buf_add(r->c, &buf, "", 0);
    r->out = &buf;
    exec_body(r, f, b);
    r->out = saved;
    return (jj_str){buf.p, buf.n};
}

static flow exec_node(jj_render *r, jj_frame *f, const jj_node *n)
{
    switch (n->k) {
    case JN_TEXT:
        jj_buf_add(r->c, r->out, n->text.p, n->text.n);
        return FLOW_NEXT;
    case JN_OUT:
        out_value(r, n->line, eval(r, f, n->e));
        return FLOW_NEXT;
    case JN_IF: {
        jv c = eval(r, f, n->e);
        return exec_body(r, f, jv_truthy(&c) ? &n->body : &n->els);
    }
    case JN_FOR:
        return exec_for(r, f, n);
    case JN_SET: {
        jv v = eval(r, f, n->e);
        if (n->attr.p) {
            jv ns = lookup(r, f, n->names[0]);
            if (ns.t != JV_NS)
                jj_fail(r->c, EP_ERR_ARG, n->line,
                        "cannot assign attribute on non-namespace object ('%.*s' is %s)",
                        (int)n->names[0].n, n->names[0].p, jv_type_name(&ns));
            jj_dict_set(r->c, ns.u.d, n->attr, v);
        } else {
            assign(r, f, n, v, n->line);
        }
        return FLOW_NEXT;
    }
    case JN_SETBLOCK: {
        jj_str s = capture(r, f, &n->body);
        frame_set(r, f, n->names[0], jv_strn(s.p, s.n));
        return FLOW_NEXT;
    }
    case JN_BREAK:
        return FLOW_BREAK;
    case JN_CONTINUE:
        return FLOW_CONTINUE;
    case JN_MACRO: {
        jj_macro *m = jj_alloc(r->c, sizeof *m);
        m->def = n;
        m->env = f;
        f->captured = true;
        frame_set(r, f, n->names[0], (jv){.t = JV_MACRO, .u.m = m});
        return FLOW_NEXT;
    }
    case JN_PASS:
        return exec_body(r, f, &n->body);
    }
    return FLOW_NEXT;
}

static flow exec_body(jj_render *r, jj_frame *f, const jj_body *b)
{
    for (int i = 0; i < b->n; i++) {
        flow fl = exec_node(r, f, b->v[i]);
        if (fl != FLOW_NEXT) return fl;
    }
    return FLOW_NEXT;
}

jv jj_call_macro(jj_render *r, int line, const jj_macro *m, const jv *args, int n_args,
                 const jj_str *kw, const jv *kwv, int n_kw)
{
    const jj_node *d = m->def;
    if (r->depth >= EP_JINJA_MAX_DEPTH)
        jj_fail(r->c, EP_ERR_ARG, line, "macro calls nested deeper than %d", EP_JINJA_MAX_DEPTH);
    int np = d->n_params;
    if (n_args > np && !d->varargs)
        jj_fail(r->c, EP_ERR_ARG, line, "macro '%.*s' takes not more than %d argument(s)",
                (int)d->names[0].n, d->names[0].p, np);
    jj_frame *f = frame_new(r, m->env);
    bool *given = jj_alloc(r->c, (size_t)(np + 1) * sizeof *given);
    for (int i = 0; i < n_args && i < np; i++) {
        frame_set(r, f, d->params[i], args[i]);
        given[i] = true;
    }
    jj_dict *extra_kw = jj_dict_new(r->c, 4);
    for (int k = 0; k < n_kw; k++) {
        int i = 0;
        while (i < np && !(d->params[i].n == kw[k].n && !memcmp(d->params[i].p, kw[k].p, kw[k].n)))
            i++;
        if (i < np) {
            if (given[i])
                jj_fail(r->c, EP_ERR_ARG, line,
                        "macro '%.*s' got multiple values for argument '%.*s'", (int)d->names[0].n,
                        d->names[0].p, (int)kw[k].n, kw[k].p);
            frame_set(r, f, d->params[i], kwv[k]);
            given[i] = true;
        } else if (d->kwargs) {
            jj_dict_set(r->c, extra_kw, kw[k], kwv[k]);
        } else {
            jj_fail(r->c, EP_ERR_ARG, line, "macro '%.*s' takes no keyword argument '%.*s'",
                    (int)d->names[0].n, d->names[0].p, (int)kw[k].n, kw[k].p);
        }
    }
    r->depth++;
    for (int i = 0; i < np; i++)
        if (!given[i])
            frame_set(r, f, d->params[i],
                      d->defaults[i]
                          ? eval(r, f, d->defaults[i])
                          : jv_undef(fmt_hint(r, "'%.*s' is undefined%s", d->params[i],
                                              " (a macro argument that was not given)")));
    if (d->varargs) {
        int extra = n_args > np ? n_args - np : 0;
        jj_list *l = jj_list_new(r->c, (size_t)extra, JL_TUPLE);
        for (int i = 0; i < extra; i++)
            l->v[i] = args[np + i];
        frame_set(r, f, jj_cstr("varargs"), (jv){.t = JV_LIST, .u.l = l});
    }
    if (d->kwargs) frame_set(r, f, jj_cstr("kwargs"), (jv){.t = JV_DICT, .u.d = extra_kw});
    jj_str s = capture(r, f, &d->body);
    r->depth--;
    return jv_strn(s.p, s.n);
}

// ---- entry point ----------------------------------------------------------------------

ep_status ep_jinja_render(const ep_jinja *t, const json_t *vars, char **out, size_t *len)
{
    *out = NULL;
    if (len) *len = 0;
    if (!json_is_object(vars))
        return ep_errorf(EP_ERR_ARG, "%s: the render variables must be a JSON object", t->name);
    // Heap, not a local: the arena's fields change between setjmp and longjmp.
    jj_ctx *c = ep_xcalloc(1, sizeof *c);
    c->name = t->name;
    c->limit = EP_JINJA_MAX_ARENA_BYTES;
    jmp_buf jb;
    c->jb = &jb;
    if (setjmp(jb)) {
        ep_status st = ep_errorf(c->st, "%s", c->msg);
        jj_arena_free(c);
        free(c);
        return st;
    }
    jj_render r = {.c = c, .t = t};
    jj_frame *globals = frame_new(&r, NULL);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)vars, k, v)
        frame_set(&r, globals, jj_cstr(k), jv_from_json(c, v, 0));
    jj_frame *top = frame_new(&r, globals);
    jj_buf buf = {0};
    jj_buf_add(c, &buf, "", 0);
    r.out = &buf;
    exec_body(&r, top, &t->root);
    char *s = malloc(buf.n + 1);
    if (!s) {
        jj_arena_free(c);
        free(c);
        return ep_errorf(EP_ERR_NOMEM, "%s: out of memory for the %zu-byte result", t->name, buf.n);
    }
    memcpy(s, buf.p, buf.n + 1);
    if (len) *len = buf.n;
    *out = s;
    jj_arena_free(c);
    free(c);
    return EP_OK;
}
