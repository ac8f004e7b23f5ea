// Jinja tokens -> AST (model/jinja_impl.h): a recursive-descent parser that
// follows Jinja2's grammar and operator precedence (the lexer is
// jinja_lex.c). Constructs outside the subset are refused here
// when they can be seen here (tags, filters, tests, *args); the evaluator
// refuses the rest. Nesting and expression depth are bounded.
#include "model/jinja_impl.h"

#include "common/utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- parser ---------------------------------------------------------------------------

typedef struct {
    jj_ctx *c;
    jj_tok *t;
    size_t i;
    int depth;
    int in_loop; // a break or continue needs one
    bool uses_varargs, uses_kwargs;
} parser;

static const jj_tok *cur(parser *p)
{
    return &p->t[p->i];
}
static const jj_tok *nxt(parser *p)
{
    return p->t[p->i].t == JT_EOF ? &p->t[p->i] : &p->t[p->i + 1];
}

static bool is_op(const jj_tok *t, const char *op)
{
    return t->t == JT_OP && t->s.n == strlen(op) && !memcmp(t->s.p, op, t->s.n);
}
static bool is_name(const jj_tok *t, const char *name)
{
    return t->t == JT_NAME && jj_str_eq(t->s, name);
}

static const char *describe(parser *p, const jj_tok *t)
{
    static const char *const names[] = {
        "end of template", "text",     "'{{'",       "'}}'",   "'{%'", "'%}'",
        "a name",          "a string", "an integer", "a float"};
    if (t->t == JT_OP || t->t == JT_NAME) {
        char *s = jj_alloc(p->c, t->s.n + 3);
        snprintf(s, t->s.n + 3, "'%.*s'", (int)t->s.n, t->s.p);
        return s;
    }
    return names[t->t];
}

static noreturn void unexpected(parser *p, const char *expected)
{
    jj_fail(p->c, EP_ERR_FORMAT, cur(p)->line, "expected %s, found %s", expected,
            describe(p, cur(p)));
}

static void expect_op(parser *p, const char *op)
{
    if (!is_op(cur(p), op)) {
        char want[16];
        snprintf(want, sizeof want, "'%s'", op);
        unexpected(p, want);
    }
    p->i++;
}

static void expect_block_end(parser *p)
{
    if (cur(p)->t != JT_BLOCK_END) unexpected(p, "'%}'");
    p->i++;
}

static jj_str expect_name(parser *p, const char *what)
{
    if (cur(p)->t != JT_NAME) unexpected(p, what);
    return p->t[p->i++].s;
}

static void enter(parser *p)
{
    if (++p->depth > EP_JINJA_MAX_DEPTH)
        jj_fail(p->c, EP_ERR_UNSUPPORTED, cur(p)->line, "nested deeper than %d levels",
                EP_JINJA_MAX_DEPTH);
}

static int expr_depth(const jj_expr *e);

static jj_expr *mk(parser *p, je_kind k, int line)
{
    jj_expr *e = jj_alloc(p->c, sizeof *e);
    e->k = k;
    e->line = line;
    e->depth = 1;
    return e;
}

// Depth of the tree, checked: left-leaning chains (a + b + c ..., a.b.c ...)
// are built by loops, not recursion, and the evaluator recurses into them.
static jj_expr *fin(parser *p, jj_expr *e)
{
    if (expr_depth(e) > 2 * EP_JINJA_MAX_DEPTH)
        jj_fail(p->c, EP_ERR_UNSUPPORTED, e->line, "expression nested deeper than %d levels",
                2 * EP_JINJA_MAX_DEPTH);
    return e;
}

static int expr_depth(const jj_expr *e)
{
    return e ? e->depth : 0;
}
static void set_depth(jj_expr *e)
{
    int d = EP_MAX(expr_depth(e->a), EP_MAX(expr_depth(e->b), expr_depth(e->c)));
    for (int i = 0; i < e->n_args; i++)
        d = EP_MAX(d, expr_depth(e->args[i]));
    for (int i = 0; i < e->n_kw; i++)
        d = EP_MAX(d, expr_depth(e->kwv[i]));
    e->depth = d + 1;
}

typedef struct {
    jj_expr **v;
    int n, cap;
} expr_vec;

static void vec_push(parser *p, expr_vec *v, jj_expr *e)
{
    if (v->n == v->cap) {
        int cap = v->cap ? 2 * v->cap : 4;
        jj_expr **nv = jj_alloc(p->c, (size_t)cap * sizeof *nv);
        if (v->n) memcpy(nv, v->v, (size_t)v->n * sizeof *nv);
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = e;
}

static jj_expr *done(parser *p, jj_expr *e)
{
    set_depth(e);
    return fin(p, e);
}

static jj_expr *parse_expression(parser *p, bool with_condexpr);
static jj_expr *parse_unary(parser *p, bool with_filter);
static jj_expr *parse_tuple(parser *p, bool with_condexpr, bool explicit_parens);
static jj_expr *parse_primary(parser *p);

// ( args, kw=value ) after the '(' was seen; refuses *args and **kwargs.
static void parse_call_args(parser *p, jj_expr *e)
{
    expect_op(p, "(");
    expr_vec pos = {0}, kwv = {0};
    jj_str kw[64];
    int n_kw = 0;
    while (!is_op(cur(p), ")")) {
        if (pos.n + n_kw) expect_op(p, ",");
        if (is_op(cur(p), ")")) break; // trailing comma
        if (is_op(cur(p), "*") || is_op(cur(p), "**"))
            jj_fail(p->c, EP_ERR_UNSUPPORTED, cur(p)->line,
                    "calls with *args or **kwargs are not supported");
        if (cur(p)->t == JT_NAME && is_op(nxt(p), "=")) {
            if (n_kw == (int)EP_ARRAY_LEN(kw))
                jj_fail(p->c, EP_ERR_UNSUPPORTED, cur(p)->line, "more than %d keyword arguments",
                        (int)EP_ARRAY_LEN(kw));
            kw[n_kw] = cur(p)->s;
            p->i += 2;
            vec_push(p, &kwv, parse_expression(p, true));
            n_kw++;
        } else {
            if (n_kw)
                jj_fail(p->c, EP_ERR_FORMAT, cur(p)->line,
                        "a positional argument follows a keyword argument");
            vec_push(p, &pos, parse_expression(p, true));
        }
    }
    p->i++;
    e->args = pos.v;
    e->n_args = pos.n;
    e->kwv = kwv.v;
    e->n_kw = n_kw;
    if (n_kw) {
        e->kw = jj_alloc(p->c, (size_t)n_kw * sizeof *e->kw);
        memcpy(e->kw, kw, (size_t)n_kw * sizeof *kw);
    }
}

static jj_expr *parse_subscript(parser *p, jj_expr *obj)
{
    int line = cur(p)->line;
    if (is_op(cur(p), ".")) {
        p->i++;
        if (cur(p)->t == JT_NAME) {
            jj_expr *e = mk(p, JE_ATTR, line);
            e->a = obj;
            e->name = p->t[p->i++].s;
            return done(p, e);
        }
        if (cur(p)->t == JT_INT) { // x.0 is x[0]
            jj_expr *e = mk(p, JE_ITEM, line);
            e->a = obj;
            e->b = mk(p, JE_LIT, line);
            e->b->lit = jv_int(p->t[p->i++].i);
            return done(p, e);
        }
        unexpected(p, "a name after '.'");
    }
    expect_op(p, "[");
    jj_expr *parts[3] = {NULL, NULL, NULL};
    bool slice = false;
    if (!is_op(cur(p), ":")) parts[0] = parse_expression(p, true);
    if (is_op(cur(p), ":")) {
        slice = true;
        p->i++;
        if (!is_op(cur(p), "]") && !is_op(cur(p), ",") && !is_op(cur(p), ":"))
            parts[1] = parse_expression(p, true);
        if (is_op(cur(p), ":")) {
            p->i++;
            if (!is_op(cur(p), "]") && !is_op(cur(p), ",")) parts[2] = parse_expression(p, true);
        }
    }
    if (is_op(cur(p), ","))
        jj_fail(p->c, EP_ERR_UNSUPPORTED, cur(p)->line,
                "subscripts with several items (x[a, b]) are not supported");
    expect_op(p, "]");
    jj_expr *e = mk(p, slice ? JE_SLICE : JE_ITEM, line);
    e->a = obj;
    if (slice) {
        e->args = jj_alloc(p->c, 3 * sizeof *e->args);
        memcpy(e->args, parts, sizeof parts);
        e->n_args = 3;
    } else {
        e->b = parts[0];
    }
    return done(p, e);
}

static jj_expr *parse_postfix(parser *p, jj_expr *e)
{
    for (;;) {
        if (is_op(cur(p), ".") || is_op(cur(p), "[")) {
            e = parse_subscript(p, e);
        } else if (is_op(cur(p), "(")) {
            jj_expr *call = mk(p, JE_CALL, cur(p)->line);
            call->a = e;
            parse_call_args(p, call);
            e = done(p, call);
        } else {
            return e;
        }
    }
}

static jj_expr *parse_filter_expr(parser *p, jj_expr *e)
{
    for (;;) {
        if (is_op(cur(p), "|")) {
            p->i++;
            int line = cur(p)->line;
            jj_str name = expect_name(p, "a filter name after '|'");
            if (is_op(cur(p), "."))
                jj_fail(p->c, EP_ERR_UNSUPPORTED, line, "dotted filter names are not supported");
            int id = jj_filter_id(name);
            if (id < 0)
                jj_fail(p->c, EP_ERR_UNSUPPORTED, line,
                        "filter '%.*s' is not supported (docs/model.md lists the filters)",
                        (int)name.n, name.p);
            jj_expr *f = mk(p, JE_FILTER, line);
            f->a = e;
            f->name = name;
            f->op = id;
            if (is_op(cur(p), "(")) parse_call_args(p, f);
            e = done(p, f);
        } else if (is_name(cur(p), "is")) {
            p->i++;
            int line = cur(p)->line;
            bool neg = false;
            if (is_name(cur(p), "not")) {
                neg = true;
                p->i++;
            }
            jj_str name = expect_name(p, "a test name after 'is'");
            int id = jj_test_id(name);
            if (id < 0)
                jj_fail(p->c, EP_ERR_UNSUPPORTED, line,
                        "test '%.*s' is not supported (docs/model.md lists the tests)", (int)name.n,
                        name.p);
            jj_expr *t = mk(p, JE_TEST, line);
            t->a = e;
            t->name = name;
            t->op = id;
            t->negate = neg;
            const jj_tok *c = cur(p);
            if (is_op(c, "(")) {
                parse_call_args(p, t);
            } else if ((c->t == JT_NAME || c->t == JT_STRING || c->t == JT_INT ||
                        c->t == JT_FLOAT || is_op(c, "[") || is_op(c, "{")) &&
                       !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
                if (is_name(c, "is"))
                    jj_fail(p->c, EP_ERR_FORMAT, c->line, "cannot chain tests with 'is'");
                jj_expr *arg = parse_postfix(p, parse_primary(p));
                t->args = jj_alloc(p->c, sizeof *t->args);
                t->args[0] = arg;
                t->n_args = 1;
            }
            e = done(p, t);
        } else if (is_op(cur(p), "(")) {
            jj_expr *call = mk(p, JE_CALL, cur(p)->line);
            call->a = e;
            parse_call_args(p, call);
            e = done(p, call);
        } else {
            return e;
        }
    }
}

static jj_expr *parse_primary(parser *p)
{
    const jj_tok *t = cur(p);
    int line = t->line;
    jj_expr *e;
    if (t->t == JT_NAME) {
        p->i++;
        e = mk(p, JE_LIT, line);
        if (jj_str_eq(t->s, "true") || jj_str_eq(t->s, "True")) {
            e->lit = jv_bool(true);
        } else if (jj_str_eq(t->s, "false") || jj_str_eq(t->s, "False")) {
            e->lit = jv_bool(false);
        } else if (jj_str_eq(t->s, "none") || jj_str_eq(t->s, "None")) {
            e->lit = jv_none();
        } else {
            e->k = JE_NAME;
            e->name = t->s;
            if (jj_str_eq(t->s, "varargs")) p->uses_varargs = true;
            if (jj_str_eq(t->s, "kwargs")) p->uses_kwargs = true;
        }
        return e;
    }
    if (t->t == JT_STRING) { // adjacent literals are one string
        jj_buf b = {0};
        jj_buf_add(p->c, &b, "", 0);
        while (cur(p)->t == JT_STRING) {
            jj_buf_add(p->c, &b, cur(p)->s.p, cur(p)->s.n);
            p->i++;
        }
        e = mk(p, JE_LIT, line);
        e->lit = jv_strn(b.p, b.n);
        return e;
    }
    if (t->t == JT_INT || t->t == JT_FLOAT) {
        p->i++;
        e = mk(p, JE_LIT, line);
        e->lit = t->t == JT_INT ? jv_int(t->i) : jv_float(t->f);
        return e;
    }
    if (is_op(t, "(")) {
        p->i++;
        e = parse_tuple(p, true, true);
        expect_op(p, ")");
        return e;
    }
    if (is_op(t, "[") || is_op(t, "{")) {
        bool dict = is_op(t, "{");
        const char *close = dict ? "}" : "]";
        p->i++;
        expr_vec items = {0};
        while (!is_op(cur(p), close)) {
            if (items.n) expect_op(p, ",");
            if (is_op(cur(p), close)) break;
            vec_push(p, &items, parse_expression(p, true));
            if (dict) {
                expect_op(p, ":");
                vec_push(p, &items, parse_expression(p, true));
            }
        }
        p->i++;
        e = mk(p, dict ? JE_DICT : JE_LIST, line);
        e->args = items.v;
        e->n_args = items.n;
        return done(p, e);
    }
    unexpected(p, "an expression");
}

static jj_expr *parse_unary(parser *p, bool with_filter)
{
    enter(p);
    int line = cur(p)->line;
    jj_expr *e;
    if (is_op(cur(p), "-") || is_op(cur(p), "+")) {
        bool neg = is_op(cur(p), "-");
        p->i++;
        e = mk(p, neg ? JE_NEG : JE_POS, line);
        e->a = parse_unary(p, false);
        e = done(p, e);
    } else {
        e = parse_primary(p);
    }
    e = parse_postfix(p, e);
    if (with_filter) e = parse_filter_expr(p, e);
    p->depth--;
    return e;
}

static jj_expr *binary(parser *p, je_kind k, int op, jj_expr *a, jj_expr *b, int line)
{
    jj_expr *e = mk(p, k, line);
    e->op = op;
    e->a = a;
    e->b = b;
    return done(p, e);
}

static jj_expr *parse_pow(parser *p)
{
    jj_expr *e = parse_unary(p, true);
    while (is_op(cur(p), "**")) {
        int line = cur(p)->line;
        p->i++;
        e = binary(p, JE_BIN, JO_POW, e, parse_unary(p, true), line);
    }
    return e;
}

static jj_expr *parse_math2(parser *p)
{
    jj_expr *e = parse_pow(p);
    for (;;) {
        int op = is_op(cur(p), "*")    ? JO_MUL
                 : is_op(cur(p), "/")  ? JO_DIV
                 : is_op(cur(p), "//") ? JO_FDIV
                 : is_op(cur(p), "%")  ? JO_MOD
                                       : -1;
        if (op < 0) return e;
        int line = cur(p)->line;
        p->i++;
        e = binary(p, JE_BIN, op, e, parse_pow(p), line);
    }
}

static jj_expr *parse_concat(parser *p)
{
    jj_expr *first = parse_math2(p);
    if (!is_op(cur(p), "~")) return first;
    jj_expr *e = mk(p, JE_CONCAT, cur(p)->line);
    expr_vec v = {0};
    vec_push(p, &v, first);
    while (is_op(cur(p), "~")) {
        p->i++;
        vec_push(p, &v, parse_math2(p));
    }
    e->args = v.v;
    e->n_args = v.n;
    return done(p, e);
}

static jj_expr *parse_math1(parser *p)
{
    jj_expr *e = parse_concat(p);
    while (is_op(cur(p), "+") || is_op(cur(p), "-")) {
        int op = is_op(cur(p), "+") ? JO_ADD : JO_SUB, line = cur(p)->line;
        p->i++;
        e = binary(p, JE_BIN, op, e, parse_concat(p), line);
    }
    return e;
}

static jj_expr *parse_compare(parser *p)
{
    int line = cur(p)->line;
    jj_expr *first = parse_math1(p);
    expr_vec v = {0};
    int ops[64], n = 0;
    for (;;) {
        const jj_tok *t = cur(p);
        int op = is_op(t, "==")   ? JC_EQ
                 : is_op(t, "!=") ? JC_NE
                 : is_op(t, "<")  ? JC_LT
                 : is_op(t, "<=") ? JC_LE
                 : is_op(t, ">")  ? JC_GT
                 : is_op(t, ">=") ? JC_GE
                                  : -1;
        if (op >= 0) {
            p->i++;
        } else if (is_name(t, "in")) {
            op = JC_IN;
            p->i++;
        } else if (is_name(t, "not") && is_name(nxt(p), "in")) {
            op = JC_NOTIN;
            p->i += 2;
        } else {
            break;
        }
        if (n == (int)EP_ARRAY_LEN(ops))
            jj_fail(p->c, EP_ERR_UNSUPPORTED, t->line, "more than %d chained comparisons",
                    (int)EP_ARRAY_LEN(ops));
        ops[n++] = op;
        vec_push(p, &v, parse_math1(p));
    }
    if (!n) return first;
    jj_expr *e = mk(p, JE_CMP, line);
    e->a = first;
    e->args = v.v;
    e->n_args = v.n;
    e->ops = jj_alloc(p->c, (size_t)n * sizeof *e->ops);
    memcpy(e->ops, ops, (size_t)n * sizeof *ops);
    return done(p, e);
}

static jj_expr *parse_not(parser *p)
{
    if (is_name(cur(p), "not")) {
        enter(p);
        jj_expr *e = mk(p, JE_NOT, cur(p)->line);
        p->i++;
        e->a = parse_not(p);
        p->depth--;
        return done(p, e);
    }
    return parse_compare(p);
}

static jj_expr *parse_and(parser *p)
{
    jj_expr *e = parse_not(p);
    while (is_name(cur(p), "and")) {
        int line = cur(p)->line;
        p->i++;
        e = binary(p, JE_AND, 0, e, parse_not(p), line);
    }
    return e;
}

static jj_expr *parse_or(parser *p)
{
    jj_expr *e = parse_and(p);
    while (is_name(cur(p), "or")) {
        int line = cur(p)->line;
        p->i++;
        e = binary(p, JE_OR, 0, e, parse_and(p), line);
    }
    return e;
}

static jj_expr *parse_condexpr(parser *p)
{
    jj_expr *e = parse_or(p);
    while (is_name(cur(p), "if")) {
        int line = cur(p)->line;
        p->i++;
        jj_expr *c = mk(p, JE_COND, line);
        c->a = e;
        c->b = parse_or(p);
        if (is_name(cur(p), "else")) {
            p->i++;
            enter(p);
            c->c = parse_condexpr(p);
            p->depth--;
        }
        e = done(p, c);
    }
    return e;
}

static jj_expr *parse_expression(parser *p, bool with_condexpr)
{
    enter(p);
    jj_expr *e = with_condexpr ? parse_condexpr(p) : parse_or(p);
    p->depth--;
    return e;
}

// An expression, or a tuple when commas follow ({{ a, b }}, for x in a, b).
static jj_expr *parse_tuple(parser *p, bool with_condexpr, bool explicit_parens)
{
    int line = cur(p)->line;
    expr_vec v = {0};
    bool comma = false;
    for (;;) {
        if (v.n) {
            if (!is_op(cur(p), ",")) break;
            p->i++;
            comma = true;
        }
        const jj_tok *t = cur(p);
        if (t->t == JT_VAR_END || t->t == JT_BLOCK_END || is_op(t, ")") ||
            (v.n && (is_name(t, "in") || is_name(t, "recursive"))))
            break;
        vec_push(p, &v, parse_expression(p, with_condexpr));
    }
    if (!comma && v.n == 1) return v.v[0];
    if (!v.n && !explicit_parens) unexpected(p, "an expression");
    jj_expr *e = mk(p, JE_TUPLE, line);
    e->args = v.v;
    e->n_args = v.n;
    return done(p, e);
}

// ---- statements ------------------------------------------------------------------------

typedef struct {
    jj_node **v;
    int n, cap;
} node_vec;

static void node_push(parser *p, node_vec *v, jj_node *n)
{
    if (v->n == v->cap) {
        int cap = v->cap ? 2 * v->cap : 8;
        jj_node **nv = jj_alloc(p->c, (size_t)cap * sizeof *nv);
        if (v->n) memcpy(nv, v->v, (size_t)v->n * sizeof *nv);
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = n;
}

static jj_node *mknode(parser *p, jn_kind k, int line)
{
    jj_node *n = jj_alloc(p->c, sizeof *n);
    n->k = k;
    n->line = line;
    return n;
}

// Names being assigned: `x`, `a, b`, `(a, b)`.
static void parse_targets(parser *p, jj_node *n, const char *what)
{
    bool paren = is_op(cur(p), "(");
    if (paren) p->i++;
    jj_str names[16];
    int k = 0;
    for (;;) {
        if (k == (int)EP_ARRAY_LEN(names))
            jj_fail(p->c, EP_ERR_UNSUPPORTED, cur(p)->line, "more than %d names in one %s",
                    (int)EP_ARRAY_LEN(names), what);
        names[k++] = expect_name(p, what);
        jj_str last = names[k - 1];
        if (jj_str_eq(last, "true") || jj_str_eq(last, "false") || jj_str_eq(last, "none") ||
            jj_str_eq(last, "True") || jj_str_eq(last, "False") || jj_str_eq(last, "None"))
            jj_fail(p->c, EP_ERR_FORMAT, cur(p)->line, "cannot assign to '%.*s'", (int)last.n,
                    last.p);
        if (!is_op(cur(p), ",")) break;
        p->i++;
        if (cur(p)->t != JT_NAME) break; // trailing comma
    }
    if (paren) expect_op(p, ")");
    n->names = jj_alloc(p->c, (size_t)k * sizeof *n->names);
    memcpy(n->names, names, (size_t)k * sizeof *names);
    n->n_names = k;
}

static jj_body parse_body(parser *p, const char *const *ends, int n_ends, jj_str *ended);

static jj_node *parse_for(parser *p, int line)
{
    jj_node *n = mknode(p, JN_FOR, line);
    parse_targets(p, n, "for loop target");
    if (!is_name(cur(p), "in")) unexpected(p, "'in'");
    p->i++;
    n->e = parse_tuple(p, false, false);
    if (is_name(cur(p), "if")) {
        p->i++;
        n->cond = parse_expression(p, true);
    }
    if (is_name(cur(p), "recursive"))
        jj_fail(p->c, EP_ERR_UNSUPPORTED, cur(p)->line, "recursive for loops are not supported");
    expect_block_end(p);
    static const char *const ends[] = {"endfor", "else"};
    jj_str ended;
    p->in_loop++;
    n->body = parse_body(p, ends, 2, &ended);
    p->in_loop--;
    expect_block_end(p);
    if (jj_str_eq(ended, "else")) {
        n->els = parse_body(p, ends, 1, &ended);
        expect_block_end(p);
    }
    return n;
}

static jj_node *parse_if(parser *p, int line)
{
    jj_node *n = mknode(p, JN_IF, line);
    n->e = parse_tuple(p, false, false);
    expect_block_end(p);
    static const char *const ends[] = {"endif", "elif", "else"};
    jj_str ended;
    n->body = parse_body(p, ends, 3, &ended);
    if (jj_str_eq(ended, "elif")) {
        jj_node *sub = parse_if(p, p->t[p->i - 1].line);
        n->els.v = jj_alloc(p->c, sizeof *n->els.v);
        n->els.v[0] = sub;
        n->els.n = 1;
        return n; // the elif consumed the shared endif
    }
    expect_block_end(p);
    if (jj_str_eq(ended, "else")) {
        n->els = parse_body(p, ends, 1, &ended);
        expect_block_end(p);
    }
    return n;
}

static jj_node *parse_set(parser *p, int line)
{
    jj_node *n = mknode(p, JN_SET, line);
    if (cur(p)->t == JT_NAME && is_op(nxt(p), ".")) { // set ns.attr = value
        n->names = jj_alloc(p->c, sizeof *n->names);
        n->names[0] = p->t[p->i].s;
        n->n_names = 1;
        p->i += 2;
        n->attr = expect_name(p, "an attribute name");
    } else {
        parse_targets(p, n, "set target");
    }
    if (is_op(cur(p), "=")) {
        p->i++;
        n->e = parse_tuple(p, true, false);
        expect_block_end(p);
        return n;
    }
    if (n->attr.p || n->n_names != 1)
        jj_fail(p->c, EP_ERR_FORMAT, line, "a block {%% set %%} assigns one plain name");
    if (is_op(cur(p), "|"))
        jj_fail(p->c, EP_ERR_UNSUPPORTED, line, "filters on a block {%% set %%} are not supported");
    expect_block_end(p);
    n->k = JN_SETBLOCK;
    static const char *const ends[] = {"endset"};
    jj_str ended;
    n->body = parse_body(p, ends, 1, &ended);
    expect_block_end(p);
    return n;
}

static jj_node *parse_macro(parser *p, int line)
{
    jj_node *n = mknode(p, JN_MACRO, line);
    n->names = jj_alloc(p->c, sizeof *n->names);
    n->names[0] = expect_name(p, "a macro name");
    n->n_names = 1;
    expect_op(p, "(");
    jj_str params[32];
    jj_expr *defs[32];
    int k = 0;
    while (!is_op(cur(p), ")")) {
        if (k) expect_op(p, ",");
        if (is_op(cur(p), ")")) break;
        if (k == (int)EP_ARRAY_LEN(params))
            jj_fail(p->c, EP_ERR_UNSUPPORTED, line, "a macro with more than %d parameters",
                    (int)EP_ARRAY_LEN(params));
        params[k] = expect_name(p, "a parameter name");
        defs[k] = NULL;
        if (is_op(cur(p), "=")) {
            p->i++;
            defs[k] = parse_expression(p, true);
        } else if (k && defs[k - 1]) {
            jj_fail(p->c, EP_ERR_FORMAT, line, "a parameter without a default follows one with");
        }
        k++;
    }
    p->i++;
    expect_block_end(p);
    n->params = jj_alloc(p->c, (size_t)(k ? k : 1) * sizeof *n->params);
    n->defaults = jj_alloc(p->c, (size_t)(k ? k : 1) * sizeof *n->defaults);
    memcpy(n->params, params, (size_t)k * sizeof *params);
    memcpy(n->defaults, defs, (size_t)k * sizeof *defs);
    n->n_params = k;
    bool va = p->uses_varargs, kwa = p->uses_kwargs;
    int loops = p->in_loop;
    p->uses_varargs = p->uses_kwargs = false;
    p->in_loop = 0; // a break in a macro body does not reach a loop around the macro
    static const char *const ends[] = {"endmacro"};
    jj_str ended;
    n->body = parse_body(p, ends, 1, &ended);
    p->in_loop = loops;
    n->varargs = p->uses_varargs;
    n->kwargs = p->uses_kwargs;
    p->uses_varargs = va;
    p->uses_kwargs = kwa;
    expect_block_end(p);
    return n;
}

static jj_node *parse_statement(parser *p)
{
    int line = cur(p)->line;
    jj_str tag = expect_name(p, "a tag name after '{%'");
    enter(p);
    jj_node *n = NULL;
    if (jj_str_eq(tag, "for")) {
        n = parse_for(p, line);
    } else if (jj_str_eq(tag, "if")) {
        n = parse_if(p, line);
    } else if (jj_str_eq(tag, "set")) {
        n = parse_set(p, line);
    } else if (jj_str_eq(tag, "macro")) {
        n = parse_macro(p, line);
    } else if (jj_str_eq(tag, "break") || jj_str_eq(tag, "continue")) {
        if (!p->in_loop)
            jj_fail(p->c, EP_ERR_FORMAT, line, "'%.*s' outside a for loop", (int)tag.n, tag.p);
        n = mknode(p, jj_str_eq(tag, "break") ? JN_BREAK : JN_CONTINUE, line);
        expect_block_end(p);
    } else if (jj_str_eq(tag, "generation")) {
        expect_block_end(p);
        n = mknode(p, JN_PASS, line);
        static const char *const ends[] = {"endgeneration"};
        jj_str ended;
        n->body = parse_body(p, ends, 1, &ended);
        expect_block_end(p);
    } else {
        static const char *const refused[] = {"block", "extends",    "include", "import", "from",
                                              "with",  "autoescape", "filter",  "call",   "raw",
                                              "do",    "print",      "trans"};
        for (size_t i = 0; i < EP_ARRAY_LEN(refused); i++)
            if (jj_str_eq(tag, refused[i]))
                jj_fail(p->c, EP_ERR_UNSUPPORTED, line,
                        "{%% %s %%} is not supported (docs/model.md lists the tags)", refused[i]);
        jj_fail(p->c, EP_ERR_FORMAT, line, "unknown or misplaced tag '%.*s'", (int)tag.n, tag.p);
    }
    p->depth--;
    return n;
}

// Nodes up to a {% tag %} named in ends (its name is consumed, *ended set,
// the rest of the tag is left to the caller), or the end of the template
// when ends is empty.
static jj_body parse_body(parser *p, const char *const *ends, int n_ends, jj_str *ended)
{
    node_vec v = {0};
    int open_line = p->i ? p->t[p->i - 1].line : 1;
    for (;;) {
        const jj_tok *t = cur(p);
        if (t->t == JT_EOF) {
            if (n_ends)
                jj_fail(p->c, EP_ERR_FORMAT, t->line,
                        "unexpected end of template: the block opened near line %d needs "
                        "{%% %s %%}",
                        open_line, ends[0]);
            break;
        }
        if (t->t == JT_DATA) {
            jj_node *n = mknode(p, JN_TEXT, t->line);
            n->text = t->s;
            node_push(p, &v, n);
            p->i++;
        } else if (t->t == JT_VAR_BEGIN) {
            p->i++;
            jj_node *n = mknode(p, JN_OUT, t->line);
            n->e = parse_tuple(p, true, false);
            if (cur(p)->t != JT_VAR_END) unexpected(p, "'}}'");
            p->i++;
            node_push(p, &v, n);
        } else if (t->t == JT_BLOCK_BEGIN) {
            const jj_tok *name = nxt(p);
            for (int i = 0; i < n_ends; i++)
                if (is_name(name, ends[i])) {
                    p->i += 2;
                    *ended = name->s;
                    jj_body b = {v.v, v.n};
                    return b;
                }
            p->i++;
            node_push(p, &v, parse_statement(p));
        } else {
            unexpected(p, "text, '{{' or '{%'");
        }
    }
    jj_body b = {v.v, v.n};
    return b;
}

// ---- entry points ---------------------------------------------------------------------

ep_status ep_jinja_parse(const char *src, size_t len, const char *name, ep_jinja **out)
{
    *out = NULL;
    if (len > EP_JINJA_MAX_SOURCE_BYTES)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: the template has %zu bytes, more than the %d allowed", name, len,
                         EP_JINJA_MAX_SOURCE_BYTES);
    size_t bad = ep_utf8_check(src, len);
    if (bad < len)
        return ep_errorf(EP_ERR_FORMAT, "%s: the template is not valid UTF-8 (byte %zu)", name,
                         bad);
    ep_jinja *t = ep_xcalloc(1, sizeof *t);
    t->name = ep_xstrdup(name);
    t->c.name = t->name;
    t->c.limit = EP_JINJA_MAX_ARENA_BYTES;
    jmp_buf jb;
    t->c.jb = &jb;
    if (setjmp(jb)) {
        ep_status st = ep_errorf(t->c.st, "%s", t->c.msg);
        ep_jinja_free(t);
        return st;
    }
    parser P = {.c = &t->c, .t = jj_lex(&t->c, src, len)};
    jj_str ended;
    t->root = parse_body(&P, NULL, 0, &ended);
    t->c.jb = NULL;
    *out = t;
    return EP_OK;
}

void ep_jinja_free(ep_jinja *t)
{
    if (!t) return;
    jj_arena_free(&t->c);
    free(t->name);
    free(t);
}
