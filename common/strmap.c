// The string -> int hash map of common/strmap.h. Keys are copied into one
// growing buffer and slots refer to them by offset, so a slot is 16 bytes and
// growing the map moves no key bytes. Lookups are what the tokenizer's
// encoder does per pre-token, hence no per-call allocation.
#include "common/strmap.h"
#include "common/ep.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    size_t off;   // key bytes at keys + off
    uint32_t len; // key length
    int used;     // 0: empty
    int val;
} sm_slot;

struct ep_strmap {
    sm_slot *s; // [cap]
    size_t cap, count;
    char *keys; // every key, back to back
    size_t keys_len, keys_cap;
};

uint64_t ep_strmap_hash(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ull; // FNV-1a 64-bit offset basis and prime
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static size_t cap_for(size_t n)
{
    size_t c = 16;
    while (c < 2 * n)
        c <<= 1;
    return c;
}

ep_strmap *ep_strmap_init(size_t n_hint)
{
    ep_strmap *m = ep_xcalloc(1, sizeof *m);
    m->cap = cap_for(n_hint);
    m->s = ep_xcalloc(m->cap, sizeof *m->s);
    m->keys_cap = 4096; // never NULL, so keys + off is always defined
    m->keys = ep_xmalloc(m->keys_cap);
    return m;
}

void ep_strmap_free(ep_strmap *m)
{
    if (!m) return;
    free(m->s);
    free(m->keys);
    free(m);
}

// The slot holding key, or the empty slot where it would go.
static sm_slot *find(const ep_strmap *m, const char *key, size_t len)
{
    size_t mask = m->cap - 1;
    for (size_t i = ep_strmap_hash(key, len) & mask;; i = (i + 1) & mask) {
        sm_slot *s = &m->s[i];
        if (!s->used) return s;
        if (s->len == len && (!len || !memcmp(m->keys + s->off, key, len))) return s;
    }
}

static void grow(ep_strmap *m)
{
    sm_slot *old = m->s;
    size_t old_cap = m->cap;
    m->cap *= 2;
    m->s = ep_xcalloc(m->cap, sizeof *m->s);
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].used) *find(m, m->keys + old[i].off, old[i].len) = old[i];
    free(old);
}

bool ep_strmap_put(ep_strmap *m, const char *key, size_t len, int val)
{
    EP_ASSERT(len < UINT32_MAX);
    sm_slot *s = find(m, key, len);
    if (s->used) return false;
    if (2 * (m->count + 1) > m->cap) {
        grow(m);
        s = find(m, key, len);
    }
    if (m->keys_len + len > m->keys_cap) {
        m->keys_cap = EP_MAX(2 * m->keys_cap, m->keys_len + len);
        m->keys = ep_xrealloc(m->keys, m->keys_cap);
    }
    if (len) memcpy(m->keys + m->keys_len, key, len);
    *s = (sm_slot){.off = m->keys_len, .len = (uint32_t)len, .used = 1, .val = val};
    m->keys_len += len;
    m->count++;
    return true;
}

bool ep_strmap_get(const ep_strmap *m, const char *key, size_t len, int *val)
{
    const sm_slot *s = find(m, key, len);
    if (!s->used) return false;
    *val = s->val;
    return true;
}

size_t ep_strmap_count(const ep_strmap *m)
{
    return m->count;
}

size_t ep_strmap_cap(const ep_strmap *m)
{
    return m->cap;
}
