// Python's str semantics for the Jinja subset (model/jinja_impl.h): the str
// methods a template may call (split, strip, replace, startswith, ...), the
// string work of the filters (case mapping, escaping, int()/float()
// parsing), by code point where Python counts code points. Case mapping is
// exact for ASCII and refused for other letters that have a case, rather
// than approximated.
#include "model/jinja_impl.h"

#include "common/utf8.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <utf8proc.h>

#define FAIL(...)   jj_fail(r->c, EP_ERR_ARG, line, __VA_ARGS__)
#define REFUSE(...) jj_fail(r->c, EP_ERR_UNSUPPORTED, line, __VA_ARGS__)

// ---- code points ----------------------------------------------------------------------

// Byte offsets of each code point of s, plus s.n at the end: [count + 1].
size_t *jj_cp_offsets(jj_render *r, jj_str s, size_t *count)
{
    size_t n = jj_cp_count(s), k = 0;
    size_t *o = jj_alloc(r->c, (n + 1) * sizeof *o);
    for (size_t i = 0; i < s.n; i++)
        if (((unsigned char)s.p[i] & 0xC0) != 0x80) o[k++] = i;
    o[n] = s.n;
    *count = n;
    return o;
}

const char *jj_find_sub(jj_str s, size_t from, jj_str sub)
{
    if (sub.n > s.n - from) return NULL;
    return jj_memfind(s.p + from, s.n - from, sub.p, sub.n);
}

// ---- case mapping ---------------------------------------------------------------------

// ASCII case mapping; a non-ASCII character that has a case (or a case
// mapping) is refused, since Python's full Unicode mapping (ß -> SS, ...)
// is not reproduced. Characters without case pass through.
void jj_check_caseless(jj_render *r, int line, const char *fname, jj_str s)
{
    for (size_t i = 0; i < s.n;) {
        size_t l;
        uint32_t cp = jj_cp_at(s.p + i, s.n - i, &l);
        if (cp >= 0x80) {
            utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
            if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
                cat == UTF8PROC_CATEGORY_LT ||
                utf8proc_toupper((utf8proc_int32_t)cp) != (utf8proc_int32_t)cp ||
                utf8proc_tolower((utf8proc_int32_t)cp) != (utf8proc_int32_t)cp)
                REFUSE("%s of the non-ASCII letter '%.*s' is not supported (only ASCII case "
                       "mapping is)",
                       fname, (int)l, s.p + i);
        }
        i += l;
    }
}

jv jj_map_case(jj_render *r, int line, const char *fname, jj_str s, jj_case op)
{
    jj_check_caseless(r, line, fname, s);
    char *d = jj_alloc(r->c, s.n + 1);
    bool prev_cased = false, word_start = true;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        bool alpha = ch < 0x80 && isalpha(ch);
        switch (op) {
        case JJ_CASE_LOWER:
            ch = (unsigned char)tolower(ch);
            break;
        case JJ_CASE_UPPER:
            ch = (unsigned char)toupper(ch);
            break;
        case JJ_CASE_CAPITALIZE:
            ch = (unsigned char)(i == 0 ? toupper(ch) : tolower(ch));
            break;
        case JJ_CASE_TITLE: // str.title(): a letter after a letter is lower, else upper
            if (alpha) ch = (unsigned char)(prev_cased ? tolower(ch) : toupper(ch));
            prev_cased = alpha;
            break;
        case JJ_CASE_JINJA_TITLE: { // Jinja's title filter: words begin after -, (, {, [, < or
                                    // space
            size_t l;
            uint32_t cp = jj_cp_at(s.p + i, s.n - i, &l);
            bool sep =
                cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || jj_py_isspace(cp);
            if (sep) {
                word_start = true;
            } else {
                ch = (unsigned char)(word_start ? toupper(ch) : tolower(ch));
                // only the first byte of a word's first character counts as its start
                if (((unsigned char)s.p[i] & 0xC0) != 0x80) word_start = false;
            }
            break;
        }
        }
        d[i] = (char)(ch < 0x80 ? ch : (unsigned char)s.p[i]);
    }
    return jv_strn(d, s.n);
}

// ---- str methods ----------------------------------------------------------------------

// Python's str.strip family; chars NULL: whitespace.
jj_str jj_py_strip(jj_str s, const jj_str *chars, bool left, bool right)
{
    size_t b = 0, e = s.n;
    if (left)
        while (b < e) {
            size_t l;
            uint32_t cp = jj_cp_at(s.p + b, e - b, &l);
            bool hit = false;
            if (chars) {
                for (size_t k = 0; k < chars->n && !hit;) {
                    size_t cl;
                    hit = jj_cp_at(chars->p + k, chars->n - k, &cl) == cp;
                    k += cl;
                }
            } else {
                hit = jj_py_isspace(cp);
            }
            if (!hit) break;
            b += l;
        }
    if (right)
        while (e > b) {
            size_t st;
            uint32_t cp = ep_utf8_prev(s.p, e, &st);
            bool hit = false;
            if (chars) {
                for (size_t k = 0; k < chars->n && !hit;) {
                    size_t cl;
                    hit = jj_cp_at(chars->p + k, chars->n - k, &cl) == cp;
                    k += cl;
                }
            } else {
                hit = jj_py_isspace(cp);
            }
            if (!hit) break;
            e = st;
        }
    return (jj_str){s.p + b, e - b};
}

void jj_vec_push(jj_render *r, jj_vec *v, jv x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 8;
        jv *nv = jj_alloc(r->c, cap * sizeof *nv);
        if (v->n) memcpy(nv, v->v, v->n * sizeof *nv);
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

jv jj_vec_list(jj_render *r, jj_vec *v, jl_kind kind)
{
    jj_list *l = jj_list_new(r->c, v->n, kind);
    if (v->n) memcpy(l->v, v->v, v->n * sizeof *l->v);
    return jj_mklist(l);
}

static size_t ws_len_at(jj_str s, size_t i)
{
    size_t l;
    uint32_t cp = jj_cp_at(s.p + i, s.n - i, &l);
    return jj_py_isspace(cp) ? l : 0;
}

static jv py_split(jj_render *r, int line, jj_str s, const jv *sepv, int64_t maxsplit)
{
    jj_vec out = {0};
    jj_step(r, line, (long long)s.n / 64);
    if (sepv->t == JV_NONE || sepv->t == JV_UNDEF) { // runs of whitespace
        size_t i = 0, l;
        while (i < s.n) {
            while (i < s.n && (l = ws_len_at(s, i)))
                i += l;
            if (i >= s.n) break;
            if (maxsplit >= 0 && (int64_t)out.n == maxsplit) {
                jj_vec_push(r, &out, jv_strn(s.p + i, s.n - i));
                break;
            }
            size_t j = i;
            while (j < s.n && !ws_len_at(s, j))
                j += 1;
            jj_vec_push(r, &out, jv_strn(s.p + i, j - i));
            i = j;
        }
        return jj_vec_list(r, &out, JL_LIST);
    }
    jj_str sep = jj_want_str(r, line, "split() separator", sepv);
    if (!sep.n) FAIL("split(): empty separator");
    size_t i = 0;
    const char *hit;
    while ((maxsplit < 0 || (int64_t)out.n < maxsplit) && (hit = jj_find_sub(s, i, sep))) {
        jj_vec_push(r, &out, jv_strn(s.p + i, (size_t)(hit - s.p) - i));
        i = (size_t)(hit - s.p) + sep.n;
    }
    jj_vec_push(r, &out, jv_strn(s.p + i, s.n - i));
    return jj_vec_list(r, &out, JL_LIST);
}

static jv py_rsplit(jj_render *r, int line, jj_str s, const jv *sepv, int64_t maxsplit)
{
    jj_vec out = {0};
    jj_step(r, line, (long long)s.n / 64);
    if (sepv->t == JV_NONE || sepv->t == JV_UNDEF) {
        size_t e = s.n;
        while (e > 0) {
            size_t st;
            while (e > 0 && jj_py_isspace(ep_utf8_prev(s.p, e, &st)))
                e = st;
            if (!e) break;
            if (maxsplit >= 0 && (int64_t)out.n == maxsplit) {
                jj_vec_push(r, &out, jv_strn(s.p, e));
                break;
            }
            size_t b = e;
            while (b > 0 && !jj_py_isspace(ep_utf8_prev(s.p, b, &st)))
                b = st;
            jj_vec_push(r, &out, jv_strn(s.p + b, e - b));
            e = b;
        }
    } else {
        jj_str sep = jj_want_str(r, line, "rsplit() separator", sepv);
        if (!sep.n) FAIL("rsplit(): empty separator");
        size_t e = s.n;
        while (maxsplit < 0 || (int64_t)out.n < maxsplit) {
            const char *hit = NULL;
            for (size_t i = e >= sep.n ? e - sep.n + 1 : 0; i-- > 0;)
                if (!memcmp(s.p + i, sep.p, sep.n)) {
                    hit = s.p + i;
                    break;
                }
            if (!hit) break;
            size_t h = (size_t)(hit - s.p);
            jj_vec_push(r, &out, jv_strn(s.p + h + sep.n, e - h - sep.n));
            e = h;
        }
        jj_vec_push(r, &out, jv_strn(s.p, e));
    }
    for (size_t i = 0; i < out.n / 2; i++) { // collected back to front
        jv t = out.v[i];
        out.v[i] = out.v[out.n - 1 - i];
        out.v[out.n - 1 - i] = t;
    }
    return jj_vec_list(r, &out, JL_LIST);
}

jv jj_py_replace(jj_render *r, int line, jj_str s, jj_str old, jj_str new_, int64_t count)
{
    jj_buf b = {0};
    jj_buf_add(r->c, &b, "", 0);
    jj_step(r, line, (long long)s.n / 64);
    if (!old.n) { // Python inserts `new` before every character and at the end
        size_t i = 0;
        int64_t done = 0;
        while (count < 0 || done < count) {
            jj_buf_add(r->c, &b, new_.p, new_.n);
            done++;
            if (i >= s.n) {
                i = s.n + 1;
                break;
            }
            size_t l;
            jj_cp_at(s.p + i, s.n - i, &l);
            jj_buf_add(r->c, &b, s.p + i, l);
            i += l;
        }
        if (i <= s.n) jj_buf_add(r->c, &b, s.p + i, s.n - i);
        return jv_strn(b.p, b.n);
    }
    size_t i = 0;
    const char *hit;
    int64_t done = 0;
    while ((count < 0 || done < count) && (hit = jj_find_sub(s, i, old))) {
        jj_buf_add(r->c, &b, s.p + i, (size_t)(hit - s.p) - i);
        jj_buf_add(r->c, &b, new_.p, new_.n);
        i = (size_t)(hit - s.p) + old.n;
        done++;
    }
    jj_buf_add(r->c, &b, s.p + i, s.n - i);
    return jv_strn(b.p, b.n);
}

// Python's str.splitlines line boundaries.
static size_t line_break_len(jj_str s, size_t i)
{
    size_t l;
    uint32_t cp = jj_cp_at(s.p + i, s.n - i, &l);
    if (cp == '\r' && i + 1 < s.n && s.p[i + 1] == '\n') return 2;
    if (cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C || cp == 0x1D ||
        cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029)
        return l;
    return 0;
}

jv jj_py_splitlines(jj_render *r, jj_str s, bool keepends)
{
    jj_vec out = {0};
    size_t i = 0, start = 0;
    while (i < s.n) {
        size_t bl = line_break_len(s, i);
        if (bl) {
            jj_vec_push(r, &out, jv_strn(s.p + start, (keepends ? i + bl : i) - start));
            i += bl;
            start = i;
        } else {
            size_t l;
            jj_cp_at(s.p + i, s.n - i, &l);
            i += l;
        }
    }
    if (start < s.n) jj_vec_push(r, &out, jv_strn(s.p + start, s.n - start));
    return jj_vec_list(r, &out, JL_LIST);
}

static bool affix_match(jj_render *r, int line, const char *fname, jj_str s, const jv *arg,
                        bool end)
{
    if (arg->t == JV_LIST && arg->u.l->kind == JL_TUPLE) {
        for (size_t i = 0; i < arg->u.l->n; i++)
            if (affix_match(r, line, fname, s, &arg->u.l->v[i], end)) return true;
        return false;
    }
    if (arg->t != JV_STR)
        FAIL("%s first arg must be str or a tuple of str, not %s", fname, jv_type_name(arg));
    jj_str a = arg->u.s;
    if (a.n > s.n) return false;
    return !memcmp(end ? s.p + s.n - a.n : s.p, a.p, a.n);
}

static jv py_join(jj_render *r, int line, jj_str sep, const jv *iterable)
{
    jj_list *items = jj_iterate(r, line, *iterable, "str.join()");
    jj_buf b = {0};
    jj_buf_add(r->c, &b, "", 0);
    for (size_t i = 0; i < items->n; i++) {
        if (items->v[i].t != JV_STR)
            FAIL("sequence item %zu: expected str instance, %s found", i,
                 jv_type_name(&items->v[i]));
        if (i) jj_buf_add(r->c, &b, sep.p, sep.n);
        jj_buf_add(r->c, &b, items->v[i].u.s.p, items->v[i].u.s.n);
    }
    jj_step(r, line, (long long)b.n / 64 + (long long)items->n);
    return jv_strn(b.p, b.n);
}

jv jj_str_method(jj_render *r, int line, jj_method id, const char *name, jj_str s, const jv *args,
                 int n_args, const jj_str *kw, const jv *kwv, int n_kw)
{
    jv a[3];
    bool g[3];
    char fname[32];
    snprintf(fname, sizeof fname, "str.%s", name);
    switch (id) {
    case JM_CAPITALIZE:
    case JM_LOWER:
    case JM_UPPER:
    case JM_TITLE:
        jj_bind(r, line, fname, NULL, 0, 0, args, n_args, kw, kwv, n_kw, a, g);
        return jj_map_case(r, line, fname, s,
                           id == JM_LOWER   ? JJ_CASE_LOWER
                           : id == JM_UPPER ? JJ_CASE_UPPER
                           : id == JM_TITLE ? JJ_CASE_TITLE
                                            : JJ_CASE_CAPITALIZE);
    case JM_STRIP:
    case JM_LSTRIP:
    case JM_RSTRIP: {
        static const char *const p[] = {"chars"};
        jj_bind(r, line, fname, p, 1, 0, args, n_args, kw, kwv, n_kw, a, g);
        jj_str chars;
        bool has = g[0] && a[0].t != JV_NONE;
        if (has) chars = jj_want_str(r, line, fname, &a[0]);
        jj_str o = jj_py_strip(s, has ? &chars : NULL, id != JM_RSTRIP, id != JM_LSTRIP);
        return jv_strn(o.p, o.n);
    }
    case JM_SPLIT:
    case JM_RSPLIT: {
        static const char *const p[] = {"sep", "maxsplit"};
        jj_bind(r, line, fname, p, 2, 0, args, n_args, kw, kwv, n_kw, a, g);
        jv sep = g[0] ? a[0] : jv_none();
        int64_t max = g[1] ? jj_want_int(r, line, fname, &a[1]) : -1;
        return id == JM_SPLIT ? py_split(r, line, s, &sep, max) : py_rsplit(r, line, s, &sep, max);
    }
    case JM_SPLITLINES: {
        static const char *const p[] = {"keepends"};
        jj_bind(r, line, fname, p, 1, 0, args, n_args, kw, kwv, n_kw, a, g);
        return jj_py_splitlines(r, s, g[0] && jv_truthy(&a[0]));
    }
    case JM_REPLACE: {
        static const char *const p[] = {"old", "new", "count"};
        jj_bind(r, line, fname, p, 3, 2, args, n_args, kw, kwv, n_kw, a, g);
        return jj_py_replace(r, line, s, jj_want_str(r, line, fname, &a[0]),
                             jj_want_str(r, line, fname, &a[1]),
                             g[2] ? jj_want_int(r, line, fname, &a[2]) : -1);
    }
    case JM_STARTSWITH:
    case JM_ENDSWITH: {
        static const char *const p[] = {"prefix"};
        if (n_args > 1 || n_kw) REFUSE("%s(): start and end arguments are not supported", fname);
        jj_bind(r, line, fname, p, 1, 1, args, n_args, kw, kwv, n_kw, a, g);
        return jv_bool(affix_match(r, line, fname, s, &a[0], id == JM_ENDSWITH));
    }
    case JM_FIND:
    case JM_RFIND:
    case JM_COUNT: {
        static const char *const p[] = {"sub"};
        if (n_args > 1 || n_kw) REFUSE("%s(): start and end arguments are not supported", fname);
        jj_bind(r, line, fname, p, 1, 1, args, n_args, kw, kwv, n_kw, a, g);
        jj_str sub = jj_want_str(r, line, fname, &a[0]);
        jj_step(r, line, (long long)s.n / 64);
        if (id == JM_COUNT) {
            if (!sub.n) return jv_int((int64_t)jj_cp_count(s) + 1);
            int64_t k = 0;
            size_t i = 0;
            const char *hit;
            while ((hit = jj_find_sub(s, i, sub))) {
                k++;
                i = (size_t)(hit - s.p) + sub.n;
            }
            return jv_int(k);
        }
        const char *hit = NULL;
        if (id == JM_FIND) {
            hit = jj_find_sub(s, 0, sub);
        } else {
            for (size_t i = s.n >= sub.n ? s.n - sub.n + 1 : 0; i-- > 0;)
                if (!memcmp(s.p + i, sub.p, sub.n)) {
                    hit = s.p + i;
                    break;
                }
        }
        if (!hit) return jv_int(-1);
        return jv_int((int64_t)jj_cp_count((jj_str){s.p, (size_t)(hit - s.p)}));
    }
    case JM_JOIN: {
        static const char *const p[] = {"iterable"};
        jj_bind(r, line, fname, p, 1, 1, args, n_args, kw, kwv, n_kw, a, g);
        return py_join(r, line, s, &a[0]);
    }
    case JM_REMOVEPREFIX:
    case JM_REMOVESUFFIX: {
        static const char *const p[] = {"affix"};
        jj_bind(r, line, fname, p, 1, 1, args, n_args, kw, kwv, n_kw, a, g);
        jj_str x = jj_want_str(r, line, fname, &a[0]);
        if (x.n <= s.n && !memcmp(id == JM_REMOVESUFFIX ? s.p + s.n - x.n : s.p, x.p, x.n))
            return id == JM_REMOVESUFFIX ? jv_strn(s.p, s.n - x.n) : jv_strn(s.p + x.n, s.n - x.n);
        return jv_strn(s.p, s.n);
    }
    default:
        break;
    }
    REFUSE("%s() is not supported", fname);
}

jv jj_html_escape(jj_render *r, jj_str s)
{
    jj_buf b = {0};
    jj_buf_add(r->c, &b, "", 0);
    for (size_t i = 0; i < s.n; i++) {
        const char *e = NULL;
        switch (s.p[i]) {
        case '&':
            e = "&amp;";
            break;
        case '<':
            e = "&lt;";
            break;
        case '>':
            e = "&gt;";
            break;
        case '"':
            e = "&#34;";
            break;
        case '\'':
            e = "&#39;";
            break;
        default:
            break;
        }
        if (e)
            jj_buf_addc(r->c, &b, e);
        else
            jj_buf_add(r->c, &b, s.p + i, 1);
    }
    return jv_strn(b.p, b.n);
}

// Python's float(str): optional whitespace, sign, digits with one point and
// an exponent, or inf/infinity/nan. Returns false when Python would raise.
bool jj_parse_py_float(jj_str s, double *out)
{
    jj_str t = jj_py_strip(s, NULL, true, true);
    char buf[128];
    size_t k = 0;
    for (size_t i = 0; i < t.n; i++) {
        char ch = t.p[i];
        if (ch == '_') {
            bool ok = i > 0 && i + 1 < t.n && isdigit((unsigned char)t.p[i - 1]) &&
                      isdigit((unsigned char)t.p[i + 1]);
            if (!ok) return false;
            continue;
        }
        if (k >= sizeof buf - 1) return false;
        buf[k++] = ch;
    }
    buf[k] = 0;
    const char *p = buf;
    if (*p == '+' || *p == '-') p++;
    if (!strcasecmp(p, "inf") || !strcasecmp(p, "infinity") || !strcasecmp(p, "nan")) {
        *out = strtod(buf, NULL);
        return true;
    }
    bool digits = false;
    const char *q = p;
    while (isdigit((unsigned char)*q))
        q++, digits = true;
    if (*q == '.') {
        q++;
        while (isdigit((unsigned char)*q))
            q++, digits = true;
    }
    if (!digits) return false;
    if (*q == 'e' || *q == 'E') {
        q++;
        if (*q == '+' || *q == '-') q++;
        if (!isdigit((unsigned char)*q)) return false;
        while (isdigit((unsigned char)*q))
            q++;
    }
    if (*q) return false;
    *out = strtod(buf, NULL);
    return true;
}

// Python's int(str, 10): whitespace, sign, digits with single underscores between.
bool jj_parse_py_int(jj_str s, int64_t *out)
{
    jj_str t = jj_py_strip(s, NULL, true, true);
    size_t i = 0;
    bool neg = false;
    if (i < t.n && (t.p[i] == '+' || t.p[i] == '-')) neg = t.p[i++] == '-';
    if (i >= t.n) return false;
    uint64_t v = 0;
    bool prev_digit = false;
    for (; i < t.n; i++) {
        char ch = t.p[i];
        if (ch == '_' && prev_digit && i + 1 < t.n && isdigit((unsigned char)t.p[i + 1])) {
            prev_digit = false;
            continue;
        }
        if (!isdigit((unsigned char)ch)) return false;
        if (v > (UINT64_MAX - 9) / 10) return false;
        v = v * 10 + (uint64_t)(ch - '0');
        prev_digit = true;
    }
    if (v > (uint64_t)INT64_MAX + neg) return false;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}
