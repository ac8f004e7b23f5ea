// UTF-8 decoding, validation, backward stepping and encoding (common/utf8.h).
// One definition of "valid" for the whole engine, so the tokenizer refusing
// a prompt and the `tokenize` command escaping its bytes agree on every byte.
#include "common/utf8.h"

size_t ep_utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    // The lead byte gives the length and the payload bits; `min` is the
    // smallest code point that needs this length (below it: an overlong).
    size_t len;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0)
        len = 2, v = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
        len = 3, v = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
        len = 4, v = c & 0x07, min = 0x10000;
    else
        return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

size_t ep_utf8_check(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    uint32_t cp;
    while (i < n) {
        if (u[i] < 0x80) { // the common case, without the call
            i++;
            continue;
        }
        size_t l = ep_utf8_next(u + i, n - i, &cp);
        if (!l) return i;
        i += l;
    }
    return n;
}

uint32_t ep_utf8_prev(const char *s, size_t end, size_t *start)
{
    const unsigned char *u = (const unsigned char *)s;
    // A character has at most 3 continuation bytes: looking further back
    // could only find a lead byte whose character does not end at `end`.
    size_t i = end - 1;
    while (i > 0 && end - i < 4 && (u[i] & 0xC0) == 0x80)
        i--;
    uint32_t cp = 0xFFFD; // set by ep_utf8_next whenever it consumes a byte
    if (ep_utf8_next(u + i, end - i, &cp) == end - i) {
        *start = i;
        return cp;
    }
    *start = end - 1;
    return 0xFFFD;
}

size_t ep_utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp > 0x10FFFF) return 0;
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}
