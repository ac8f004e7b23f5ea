// Stop strings and held-back text of one request (scheduler/stop_text.h).
// The search only looks at the bytes that a new piece can complete a match
// with (the last max_stop - 1 old bytes plus the new ones), so a long
// generation costs O(new bytes x stop strings x longest stop) per token.
#include "scheduler/stop_text.h"

#include <stdlib.h>
#include <string.h>

ep_status ep_stop_text_init(ep_stop_text *s, const char *const *stop, int n_stop)
{
    memset(s, 0, sizeof *s);
    for (int i = 0; i < n_stop; i++)
        if (!stop[i] || !stop[i][0])
            return ep_errorf(EP_ERR_ARG,
                             "stop: stop string %d is empty, expected at least one "
                             "byte",
                             i);
    if (n_stop > 0) {
        s->stop = ep_xcalloc((size_t)n_stop, sizeof *s->stop);
        s->stop_len = ep_xcalloc((size_t)n_stop, sizeof *s->stop_len);
    }
    s->n_stop = n_stop;
    for (int i = 0; i < n_stop; i++) {
        s->stop[i] = ep_xstrdup(stop[i]);
        s->stop_len[i] = strlen(stop[i]);
        if (s->stop_len[i] > s->max_stop) s->max_stop = s->stop_len[i];
    }
    return EP_OK;
}

void ep_stop_text_free(ep_stop_text *s)
{
    if (!s) return;
    for (int i = 0; i < s->n_stop; i++)
        free(s->stop[i]);
    free(s->stop);
    free(s->stop_len);
    free(s->buf);
    memset(s, 0, sizeof *s);
}

size_t ep_utf8_incomplete_tail(const char *buf, size_t len)
{
    // Walk back over at most 3 continuation bytes to the lead byte.
    size_t k = 0;
    while (k < len && k < 3 && ((unsigned char)buf[len - 1 - k] & 0xC0) == 0x80)
        k++;
    if (k == len) return 0; // only continuation bytes: invalid, released as is
    unsigned char lead = (unsigned char)buf[len - 1 - k];
    size_t need = lead >= 0xF0 && lead <= 0xF4  ? 4
                  : lead >= 0xE0 && lead < 0xF0 ? 3
                  : lead >= 0xC2 && lead < 0xE0 ? 2
                                                : 1;
    if (need == 1) return 0; // ASCII or an invalid lead: complete
    return k + 1 < need ? k + 1 : 0;
}

static void append(ep_stop_text *s, const char *b, size_t n)
{
    if (s->len + n + 4 > s->cap) {
        size_t c = s->cap ? s->cap : 64;
        while (c < s->len + n + 4)
            c *= 2;
        s->buf = ep_xrealloc(s->buf, c);
        s->cap = c;
    }
    if (n) memcpy(s->buf + s->len, b, n);
    s->len += n;
}

// Whether buf[q..len) is a proper prefix of some stop string (a match may
// still begin at q once more bytes come).
static bool could_start(const ep_stop_text *s, size_t q)
{
    size_t n = s->len - q;
    for (int i = 0; i < s->n_stop; i++)
        if (n < s->stop_len[i] && !memcmp(s->buf + q, s->stop[i], n)) return true;
    return false;
}

bool ep_stop_text_add(ep_stop_text *s, const char *bytes, size_t n, const char **out,
                      size_t *out_len)
{
    *out = s->buf ? s->buf + s->released : "";
    *out_len = 0;
    if (s->stopped) return false;
    size_t old = s->len;
    append(s, bytes, n);
    *out = s->buf + s->released;

    // The earliest match that ends in the new bytes.
    size_t from = s->max_stop > 0 && old + 1 > s->max_stop ? old + 1 - s->max_stop : 0;
    if (from < s->released) from = s->released;
    for (size_t q = from; q < s->len; q++)
        for (int i = 0; i < s->n_stop; i++)
            if (q + s->stop_len[i] <= s->len && !memcmp(s->buf + q, s->stop[i], s->stop_len[i])) {
                *out_len = q - s->released;
                s->released = q;
                s->stopped = true;
                return true;
            }

    // Hold back from the first position that could still start a stop string.
    size_t hold = s->len;
    size_t q0 = s->max_stop > 0 && s->len + 1 > s->max_stop ? s->len + 1 - s->max_stop : 0;
    if (q0 < s->released) q0 = s->released;
    for (size_t q = q0; q < s->len; q++)
        if (could_start(s, q)) {
            hold = q;
            break;
        }
    // And never split a character.
    size_t end = hold - ep_utf8_incomplete_tail(s->buf, hold);
    if (end < s->released) end = s->released;
    *out_len = end - s->released;
    s->released = end;
    return false;
}

void ep_stop_text_flush(ep_stop_text *s, const char **out, size_t *out_len)
{
    *out = s->buf ? s->buf + s->released : "";
    *out_len = 0;
    if (s->stopped) return;
    s->stopped = true;
    append(s, NULL, 0); // buf exists, room for the replacement character
    *out = s->buf + s->released;
    size_t t = ep_utf8_incomplete_tail(s->buf, s->len);
    if (t) {
        s->len -= t;
        memcpy(s->buf + s->len, "\xEF\xBF\xBD", 3);
        s->len += 3;
    }
    *out_len = s->len - s->released;
    s->released = s->len;
}
