// Growable buffer and JSON string escaping (see sbuf.h). No parsing here.
#include "server/sbuf.h"

#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

void ep_sbuf_free(ep_sbuf *b)
{
    free(b->p);
    *b = (ep_sbuf){0};
}

void ep_sbuf_reserve(ep_sbuf *b, size_t extra)
{
    EP_ASSERT(extra < ((size_t)1 << 40) && b->len < ((size_t)1 << 40));
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->p = ep_xrealloc(b->p, cap);
    b->cap = cap;
}

void ep_sbuf_add(ep_sbuf *b, const void *p, size_t n)
{
    ep_sbuf_reserve(b, n);
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}

void ep_sbuf_adds(ep_sbuf *b, const char *s)
{
    ep_sbuf_add(b, s, strlen(s));
}

void ep_sbuf_addf(ep_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    EP_ASSERT(n >= 0);
    if ((size_t)n < sizeof small) {
        ep_sbuf_add(b, small, (size_t)n);
        return;
    }
    ep_sbuf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

// Length of the valid UTF-8 sequence starting at s (n bytes left), 0 if invalid
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned cp, min;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0)
        len = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        len = 3, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

void ep_sbuf_add_json_str(ep_sbuf *b, const char *s, size_t n)
{
    ep_sbuf_reserve(b, n + 2);
    ep_sbuf_add(b, "\"", 1);
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            ep_sbuf_add(b, e, 2);
            i++;
        } else if (c < 0x20) {
            const char *e = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
            if (e)
                ep_sbuf_add(b, e, 2);
            else
                ep_sbuf_addf(b, "\\u%04x", c);
            i++;
        } else {
            size_t len = utf8_len(u + i, n - i);
            if (len) {
                ep_sbuf_add(b, u + i, len);
                i += len;
            } else {
                ep_sbuf_add(b, "\xEF\xBF\xBD", 3); // U+FFFD for one bad byte
                i++;
            }
        }
    }
    ep_sbuf_add(b, "\"", 1);
}

void ep_sbuf_consume(ep_sbuf *b, size_t n)
{
    EP_ASSERT(n <= b->len);
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    if (b->p) b->p[b->len] = 0;
}
