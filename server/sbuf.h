// A growable byte buffer and the JSON string escaper the server writes its
// responses, SSE chunks and /metrics with. Text from the model is escaped
// byte-exactly when it is valid UTF-8; an invalid sequence (a stream cut in
// the middle of a character) becomes U+FFFD so the JSON stays valid.
#ifndef EP_SBUF_H
#define EP_SBUF_H

#include "common/ep.h"

typedef struct {
    char *p;    // [cap] bytes, NUL-terminated at len (NULL until the first append)
    size_t len; // bytes used, without the NUL
    size_t cap;
} ep_sbuf;

void ep_sbuf_free(ep_sbuf *b);                  // back to empty; NULL-safe fields
void ep_sbuf_reserve(ep_sbuf *b, size_t extra); // aborts on failure (sizes we bound first)
void ep_sbuf_add(ep_sbuf *b, const void *p, size_t n);
void ep_sbuf_adds(ep_sbuf *b, const char *s);
void ep_sbuf_addf(ep_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Appends `"..."`: s[n] as a JSON string (quotes included).
void ep_sbuf_add_json_str(ep_sbuf *b, const char *s, size_t n);
// Drops the first n bytes (what a reader consumed).
void ep_sbuf_consume(ep_sbuf *b, size_t n);

#endif
