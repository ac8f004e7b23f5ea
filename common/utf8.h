// UTF-8 as RFC 3629 defines it: decoding one character, finding the first
// invalid byte, stepping back one character, encoding a code point. Strict:
// no overlongs, no surrogates, nothing above U+10FFFF. No normalisation or
// character classes (the tokenizer gets those from utf8proc).
#ifndef EP_UTF8_H
#define EP_UTF8_H

#include <stddef.h>
#include <stdint.h>

// Length (1-4) of the valid character at s[0..n), 0 when the bytes there do
// not start one (a stray continuation byte, an overlong, a surrogate, a code
// point above U+10FFFF, a character cut off by n). *cp receives the code
// point and is left alone when 0 is returned.
size_t ep_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);

// Offset of the first byte of s[0..n) that does not start a valid character
// (see ep_utf8_next), n when all of it is valid.
size_t ep_utf8_check(const char *s, size_t n);

// The character that ends at s[end) (end > 0): its first byte goes to *start,
// the code point is returned. When the bytes before end are not one valid
// character, the last byte alone counts as one and U+FFFD is returned, so a
// caller walking backwards always moves.
uint32_t ep_utf8_prev(const char *s, size_t end, size_t *start);

// Writes the encoding of cp to out (room for 4 bytes) and returns its length,
// 0 (nothing written) for a surrogate or a code point above U+10FFFF.
size_t ep_utf8_encode(uint32_t cp, char *out);

#endif
