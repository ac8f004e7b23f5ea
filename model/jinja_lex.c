// Jinja template text -> tokens (model/jinja_impl.h), with Jinja2's
// whitespace rules as transformers configures them: trim_blocks,
// lstrip_blocks, the `-`/`+` markers, one trailing newline dropped, \r\n and
// \r read as \n; Python's string escapes and number forms; tag ends only
// with every bracket closed. The parser is jinja_parse.c.
#include "model/jinja_impl.h"

#include "common/utf8.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- lexer ---------------------------------------------------------------------------

typedef struct {
    jj_ctx *c;
    const char *src;
    size_t n, pos;
    int line;
    jj_tok *v;
    size_t nt, cap;
} lexer;

static void emit(lexer *L, jj_tok t)
{
    if (L->nt == L->cap) {
        size_t cap = L->cap ? 2 * L->cap : 256;
        jj_tok *v = jj_alloc(L->c, cap * sizeof *v);
        if (L->nt) memcpy(v, L->v, L->nt * sizeof *v);
        L->v = v;
        L->cap = cap;
    }
    L->v[L->nt++] = t;
}

static int count_nl(const char *p, size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += p[i] == '\n';
    return k;
}

// Python's \s at p[0..n): the length of the whitespace character there, 0 if none.
static size_t space_len(const char *p, size_t n)
{
    if (!n) return 0;
    size_t l;
    uint32_t cp = jj_cp_at(p, n, &l);
    return jj_py_isspace(cp) ? l : 0;
}

static size_t skip_space(const char *p, size_t n, size_t i)
{
    size_t l;
    while (i < n && (l = space_len(p + i, n - i)))
        i += l;
    return i;
}

// Python's str.rstrip(): the length of s without its trailing whitespace.
static size_t rstrip_len(const char *p, size_t n)
{
    while (n > 0) {
        size_t st;
        uint32_t cp = ep_utf8_prev(p, n, &st);
        if (!jj_py_isspace(cp)) break;
        n = st;
    }
    return n;
}

static bool starts(const lexer *L, size_t i, const char *s)
{
    size_t k = strlen(s);
    return i + k <= L->n && !memcmp(L->src + i, s, k);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

// A string literal's value: Python's unicode-escape decoding of the text
// between the quotes after it was encoded with backslashreplace (Jinja2's
// lexer does exactly that), so "\n", "\x41", "\u00e9", octal, and an
// unknown escape kept as it is.
static jj_str decode_string(lexer *L, const char *p, size_t n, int line)
{
    jj_buf b = {0};
    jj_buf_add(L->c, &b, "", 0);
    for (size_t i = 0; i < n;) {
        if (p[i] != '\\') {
            size_t j = i;
            while (j < n && p[j] != '\\')
                j++;
            jj_buf_add(L->c, &b, p + i, j - i);
            i = j;
            continue;
        }
        if (i + 1 >= n) { // cannot happen: the lexer's string ends at an unescaped quote
            jj_buf_add(L->c, &b, "\\", 1);
            break;
        }
        char e = p[i + 1];
        char one = 0;
        i += 2;
        switch (e) {
        case '\n':
            continue; // line continuation
        case '\\':
            one = '\\';
            break;
        case '\'':
            one = '\'';
            break;
        case '"':
            one = '"';
            break;
        case 'a':
            one = 7;
            break;
        case 'b':
            one = 8;
            break;
        case 'f':
            one = 12;
            break;
        case 'n':
            one = '\n';
            break;
        case 'r':
            one = '\r';
            break;
        case 't':
            one = '\t';
            break;
        case 'v':
            one = 11;
            break;
        default:
            break;
        }
        if (one) {
            jj_buf_add(L->c, &b, &one, 1);
            continue;
        }
        uint32_t cp = 0;
        if (e >= '0' && e <= '7') {
            cp = (uint32_t)(e - '0');
            for (int k = 0; k < 2 && i < n && p[i] >= '0' && p[i] <= '7'; k++)
                cp = cp * 8 + (uint32_t)(p[i++] - '0');
        } else if (e == 'x' || e == 'u' || e == 'U') {
            int want = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            for (int k = 0; k < want; k++) {
                int h = i < n ? hexval(p[i]) : -1;
                if (h < 0)
                    jj_fail(L->c, EP_ERR_FORMAT, line,
                            "string literal: truncated \\%c escape (expected %d hex digits)", e,
                            want);
                cp = cp * 16 + (uint32_t)h;
                i++;
            }
            if (cp > 0x10FFFF)
                jj_fail(L->c, EP_ERR_FORMAT, line,
                        "string literal: \\U%08X is not a Unicode code point", cp);
        } else if (e == 'N') {
            jj_fail(L->c, EP_ERR_UNSUPPORTED, line,
                    "string literal: named escapes \\N{...} are not supported");
        } else if ((unsigned char)e >= 0x80) {
            // backslashreplace turned the character into \xNN / \uNNNN /
            // \UNNNNNNNN, whose backslash the preceding one then escaped.
            size_t l;
            uint32_t c2 = jj_cp_at(p + i - 1, n - (i - 1), &l);
            char tmp[16];
            int k = snprintf(tmp, sizeof tmp,
                             c2 < 0x100     ? "\\x%02x"
                             : c2 < 0x10000 ? "\\u%04x"
                                            : "\\U%08x",
                             c2);
            jj_buf_add(L->c, &b, tmp, (size_t)k);
            i += l - 1;
            continue;
        } else { // unknown escape: Python keeps both characters
            char two[2] = {'\\', e};
            jj_buf_add(L->c, &b, two, 2);
            continue;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF)
            jj_fail(L->c, EP_ERR_UNSUPPORTED, line,
                    "string literal: the surrogate \\u%04X is not a character", cp);
        char u[4];
        jj_buf_add(L->c, &b, u, ep_utf8_encode(cp, u));
    }
    return (jj_str){b.p, b.n};
}

static const char *const OPS2[] = {"//", "**", "==", "!=", ">=", "<="};
static const char OPS1[] = "+-/*%~[](){}><=.:|,;";

// The tokens inside a {{ }} or {% %} tag, up to and including its end.
static void lex_tag(lexer *L, bool block, bool *line_starting)
{
    char stack[EP_JINJA_MAX_DEPTH];
    int depth = 0;
    for (;;) {
        size_t i = L->pos;
        if (i >= L->n)
            jj_fail(L->c, EP_ERR_FORMAT, L->line,
                    "unexpected end of template: the %s is not closed",
                    block ? "{% tag" : "{{ expression");
        if (depth == 0) { // an end only counts with every bracket closed (Jinja2's rule)
            const char *end = block ? "%}" : "}}";
            size_t k = 0;
            bool strip = false;
            if (block && starts(L, i, "+%}")) {
                k = 3;
            } else if (starts(L, i, block ? "-%}" : "-}}")) {
                k = 3;
                strip = true;
            } else if (starts(L, i, end)) {
                k = 2;
            }
            if (k) {
                emit(L, (jj_tok){.t = block ? JT_BLOCK_END : JT_VAR_END, .line = L->line});
                size_t j = i + k;
                if (strip)
                    j = skip_space(L->src, L->n, j);
                else if (block && k == 2 && j < L->n && L->src[j] == '\n')
                    j++; // trim_blocks
                L->line += count_nl(L->src + i, j - i);
                *line_starting = L->src[j - 1] == '\n';
                L->pos = j;
                return;
            }
        }
        size_t w = skip_space(L->src, L->n, i);
        if (w > i) {
            L->line += count_nl(L->src + i, w - i);
            L->pos = w;
            continue;
        }
        const char *s = L->src;
        unsigned char ch = (unsigned char)s[i];
        jj_tok t = {.line = L->line};
        if (ch >= '0' && ch <= '9') {
            // Digits with `_` between them; a fraction and/or an exponent make a float
            // (not right after a '.', so that x.0.1 is two subscripts).
            char num[128];
            size_t k = 0, j = i;
            bool is_float = false;
            int base = 10;
            if (ch == '0' && j + 2 < L->n && strchr("xXoObB", s[j + 1]) && hexval(s[j + 2]) >= 0) {
                base = s[j + 1] == 'x' || s[j + 1] == 'X'   ? 16
                       : s[j + 1] == 'o' || s[j + 1] == 'O' ? 8
                                                            : 2;
                j += 2;
                while (j < L->n && (hexval(s[j]) >= 0 || s[j] == '_') && k < sizeof num - 1)
                    if (s[j++] != '_') num[k++] = s[j - 1];
            } else {
                while (j < L->n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_') &&
                       k < sizeof num - 1)
                    if (s[j++] != '_') num[k++] = s[j - 1];
                bool zeros = true; // Jinja2 reads 012 as 0 then 12: a syntax error
                for (size_t z = 0; z < k; z++)
                    zeros = zeros && num[z] == '0';
                if (k > 1 && num[0] == '0' && !zeros && (j >= L->n || s[j] != '.') &&
                    (j >= L->n || (s[j] != 'e' && s[j] != 'E')))
                    jj_fail(L->c, EP_ERR_FORMAT, L->line,
                            "integer literal with leading zeros ('%.*s')", (int)(j - i), s + i);
                bool after_dot = i > 0 && s[i - 1] == '.';
                if (!after_dot && j + 1 < L->n && s[j] == '.' && s[j + 1] >= '0' &&
                    s[j + 1] <= '9') {
                    is_float = true;
                    num[k++] = s[j++];
                    while (j < L->n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_') &&
                           k < sizeof num - 1)
                        if (s[j++] != '_') num[k++] = s[j - 1];
                }
                if (!after_dot && j < L->n && (s[j] == 'e' || s[j] == 'E')) {
                    size_t e = j + 1;
                    if (e < L->n && (s[e] == '+' || s[e] == '-')) e++;
                    if (e < L->n && s[e] >= '0' && s[e] <= '9') {
                        is_float = true;
                        while (j < e && k < sizeof num - 1)
                            num[k++] = s[j++];
                        while (j < L->n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '_') &&
                               k < sizeof num - 1)
                            if (s[j++] != '_') num[k++] = s[j - 1];
                    }
                }
            }
            if (k >= sizeof num - 1)
                jj_fail(L->c, EP_ERR_FORMAT, L->line, "number literal longer than %zu characters",
                        sizeof num - 2);
            num[k] = 0;
            errno = 0;
            char *endp;
            if (is_float) {
                t.t = JT_FLOAT;
                t.f = strtod(num, &endp);
            } else {
                t.t = JT_INT;
                unsigned long long u = strtoull(num, &endp, base);
                if (*endp) jj_fail(L->c, EP_ERR_FORMAT, L->line, "malformed number '%s'", num);
                if (*endp) jj_fail(L->c, EP_ERR_FORMAT, L->line, "malformed number '%s'", num);
                if (errno || u > INT64_MAX)
                    jj_fail(L->c, EP_ERR_UNSUPPORTED, L->line,
                            "integer literal %s does not fit 64 bits (epserve's integers are "
                            "64-bit)",
                            num);
                t.i = (int64_t)u;
            }
            L->pos = j;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_') {
            size_t j = i;
            while (j < L->n && ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
                                (s[j] >= '0' && s[j] <= '9') || s[j] == '_'))
                j++;
            t.t = JT_NAME;
            t.s = (jj_str){s + i, j - i};
            L->pos = j;
        } else if (ch == '\'' || ch == '"') {
            size_t j = i + 1;
            while (j < L->n && s[j] != (char)ch)
                j += s[j] == '\\' ? 2 : 1;
            if (j >= L->n) jj_fail(L->c, EP_ERR_FORMAT, L->line, "unterminated string literal");
            t.t = JT_STRING;
            t.s = decode_string(L, s + i + 1, j - i - 1, L->line);
            L->line += count_nl(s + i, j - i);
            L->pos = j + 1;
        } else {
            size_t k = 0;
            for (size_t o = 0; o < EP_ARRAY_LEN(OPS2); o++)
                if (starts(L, i, OPS2[o])) k = 2;
            if (!k && ch && strchr(OPS1, ch)) k = 1;
            if (!k) {
                size_t l;
                uint32_t cp = jj_cp_at(s + i, L->n - i, &l);
                jj_fail(L->c, EP_ERR_FORMAT, L->line,
                        "unexpected character '%.*s' (U+%04X) in a tag", (int)l, s + i, cp);
            }
            if (ch == '(' || ch == '[' || ch == '{') {
                if (depth == EP_JINJA_MAX_DEPTH)
                    jj_fail(L->c, EP_ERR_UNSUPPORTED, L->line, "brackets nested deeper than %d",
                            EP_JINJA_MAX_DEPTH);
                stack[depth++] = ch == '(' ? ')' : ch == '[' ? ']' : '}';
            } else if (k == 1 && (ch == ')' || ch == ']' || ch == '}')) {
                if (!depth) jj_fail(L->c, EP_ERR_FORMAT, L->line, "unexpected '%c'", ch);
                if (stack[--depth] != (char)ch)
                    jj_fail(L->c, EP_ERR_FORMAT, L->line, "unexpected '%c', expected '%c'", ch,
                            stack[depth]);
            }
            t.t = JT_OP;
            t.s = (jj_str){s + i, k};
            L->pos = i + k;
        }
        emit(L, t);
    }
}

static void lex(lexer *L)
{
    bool line_starting = true;
    for (;;) {
        // The next tag start: {{, {% or {#.
        size_t i = L->pos;
        while (i + 1 < L->n && !(L->src[i] == '{' && strchr("{%#", L->src[i + 1]) && L->src[i + 1]))
            i++;
        if (i + 1 >= L->n) { // the rest is text
            if (L->pos < L->n)
                emit(L, (jj_tok){
                            .t = JT_DATA, .line = L->line, .s = {L->src + L->pos, L->n - L->pos}});
            emit(L,
                 (jj_tok){.t = JT_EOF, .line = L->line + count_nl(L->src + L->pos, L->n - L->pos)});
            return;
        }
        char kind = L->src[i + 1];
        char sign =
            i + 2 < L->n && (L->src[i + 2] == '-' || L->src[i + 2] == '+') ? L->src[i + 2] : 0;
        const char *text = L->src + L->pos;
        size_t tn = i - L->pos;
        if (sign == '-') {
            tn = rstrip_len(text, tn);
        } else if (sign != '+' && kind != '{') { // lstrip_blocks: not for {{ }}
            size_t l = tn;
            while (l > 0 && text[l - 1] != '\n')
                l--;
            if ((l > 0 || line_starting) && l < tn && skip_space(text, tn, l) == tn) tn = l;
        }
        if (tn) emit(L, (jj_tok){.t = JT_DATA, .line = L->line, .s = {text, tn}});
        L->line += count_nl(L->src + L->pos, i - L->pos);
        L->pos = i + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            size_t j = L->pos, end = 0;
            for (; j + 1 < L->n; j++) {
                if (starts(L, j, "+#}")) {
                    end = j + 3;
                } else if (starts(L, j, "-#}")) {
                    end = skip_space(L->src, L->n, j + 3);
                } else if (starts(L, j, "#}")) {
                    end = j + 2;
                    if (end < L->n && L->src[end] == '\n') end++;
                }
                if (end) break;
            }
            if (!end) jj_fail(L->c, EP_ERR_FORMAT, L->line, "missing end of comment tag '#}'");
            L->line += count_nl(L->src + L->pos, end - L->pos);
            line_starting = L->src[end - 1] == '\n';
            L->pos = end;
            continue;
        }
        emit(L, (jj_tok){.t = kind == '%' ? JT_BLOCK_BEGIN : JT_VAR_BEGIN, .line = L->line});
        lex_tag(L, kind == '%', &line_starting);
    }
}

jj_tok *jj_lex(jj_ctx *c, const char *src, size_t len)
{
    // \r\n and \r are \n (Jinja2 splits lines on all three); one trailing newline goes.
    char *s = jj_alloc(c, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    lexer L = {.c = c, .src = s, .n = n, .line = 1};
    lex(&L);
    return L.v;
}
