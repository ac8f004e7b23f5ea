// Encoding and decoding with a loaded tokenizer: added tokens, NFC, the Split
// regexes, then BPE by merge rank over the bytes of each piece, in HF
// `tokenizers`' order (docs/tokenizer.md). Loading is tokenizer.c's.
#include "model/tokenizer_impl.h"
#include "common/utf8.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

// Rust's char::is_whitespace (Unicode White_Space), what HF strips for
// lstrip/rstrip.
static bool is_white(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == ' ' || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static bool is_word_char(uint32_t c)
{
    if (c == '_') return true;
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

// ---- encoding ----------------------------------------------------------------

// Scratch of one encode call: output ids and the BPE work arrays, grown as
// needed and reused across pre-tokens.
typedef struct {
    int *ids;
    size_t n, cap;
    struct bpe_sym {
        int id, prev, next;
    } * sym;
    struct bpe_merge {
        int rank, left, right, a, b, id;
    } * heap;
    size_t sym_cap, heap_cap, heap_n;
    char *key; // byte-level key for ignore_merges
    size_t key_cap;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
} enc_ctx;

static void emit(enc_ctx *c, int id)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->ids = ep_xrealloc(c->ids, c->cap * sizeof *c->ids);
    }
    c->ids[c->n++] = id;
}

static bool merge_less(const struct bpe_merge *x, const struct bpe_merge *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static void heap_push(enc_ctx *c, const ep_tokenizer *t, int left, int right)
{
    const tk_pair *p = ep_tk_pair_get(t, c->sym[left].id, c->sym[right].id);
    if (!p) return;
    if (c->heap_n == c->heap_cap) {
        c->heap_cap = c->heap_cap ? 2 * c->heap_cap : 64;
        c->heap = ep_xrealloc(c->heap, c->heap_cap * sizeof *c->heap);
    }
    struct bpe_merge m = {p->rank, left, right, c->sym[left].id, c->sym[right].id, p->id};
    size_t i = c->heap_n++;
    while (i > 0 && merge_less(&m, &c->heap[(i - 1) / 2])) {
        c->heap[i] = c->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    c->heap[i] = m;
}

static struct bpe_merge heap_pop(enc_ctx *c)
{
    struct bpe_merge top = c->heap[0], last = c->heap[--c->heap_n];
    size_t i = 0, n = c->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, s = i;
        if (l >= n) break;
        s = l;
        if (l + 1 < n && merge_less(&c->heap[l + 1], &c->heap[l])) s = l + 1;
        if (!merge_less(&c->heap[s], &last)) break;
        c->heap[i] = c->heap[s];
        i = s;
    }
    if (n) c->heap[i] = last;
    return top;
}

// One pre-token: start from its bytes, apply merges lowest rank first (leftmost
// among equal ranks), as HF's Word::merge_all.
static ep_status bpe(const ep_tokenizer *t, enc_ctx *c, const unsigned char *s, size_t n,
                     size_t base)
{
    if (t->ignore_merges) {
        if (n * 2 > c->key_cap) {
            c->key_cap = 2 * n * 2;
            c->key = ep_xrealloc(c->key, c->key_cap);
        }
        size_t kl = ep_tk_byte_key(s, n, c->key);
        int id = ep_tk_vocab_id(t, c->key, kl);
        if (id >= 0) {
            emit(c, id);
            return EP_OK;
        }
    }
    if (n > c->sym_cap) {
        c->sym_cap = EP_MAX(2 * c->sym_cap, n);
        c->sym = ep_xrealloc(c->sym, c->sym_cap * sizeof *c->sym);
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int id = t->byte_id[s[i]];
        if (id < 0) {
            if (t->unk_id < 0)
                return ep_errorf(EP_ERR_ARG,
                                 "%s: byte 0x%02x at offset %zu has no token in model.vocab "
                                 "and there is no unk_token",
                                 t->name, s[i], base + i);
            id = t->unk_id;
        }
        c->sym[m] = (struct bpe_sym){id, (int)m - 1, (int)m + 1};
        m++;
    }
    c->sym[m - 1].next = -1;
    c->heap_n = 0;
    for (size_t i = 0; i + 1 < m; i++)
        heap_push(c, t, (int)i, (int)i + 1);
    while (c->heap_n) {
        struct bpe_merge x = heap_pop(c);
        struct bpe_sym *L = &c->sym[x.left], *R = &c->sym[x.right];
        // stale: one side merged since (dead symbols have id -1)
        if (L->id != x.a || R->id != x.b || L->next != x.right) continue;
        L->id = x.id;
        L->next = R->next;
        R->id = -1;
        if (R->next >= 0) c->sym[R->next].prev = x.left;
        if (L->prev >= 0) heap_push(c, t, L->prev, x.left);
        if (L->next >= 0) heap_push(c, t, x.left, L->next);
    }
    for (int i = 0; i >= 0; i = c->sym[i].next)
        emit(c, c->sym[i].id);
    return EP_OK;
}

// Splits s[0..n) with regex `level` (Isolated: matches and the gaps between
// them are pieces), each piece by the next regex, and BPEs the last pieces.
static ep_status pretok(const ep_tokenizer *t, enc_ctx *c, int level, const char *s, size_t n,
                        size_t base)
{
    if (n == 0) return EP_OK;
    if (level == t->n_splits) return bpe(t, c, (const unsigned char *)s, n, base);
    size_t pos = 0, at = 0;
    ep_status st;
    while (at < n) {
        int rc =
            pcre2_match(t->splits[level], (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, c->md, c->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return ep_errorf(EP_ERR_ARG, "%s: pre-tokenizer regex %d failed at byte %zu: %s",
                             t->name, level, base + at, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) { // an empty match splits nothing: step over one character
            uint32_t cp;
            size_t l = ep_utf8_next((const unsigned char *)s + me, n - me, &cp);
            at = me + (l ? l : 1);
            continue;
        }
        if (ms > pos && (st = pretok(t, c, level + 1, s + pos, ms - pos, base + pos))) return st;
        if ((st = pretok(t, c, level + 1, s + ms, me - ms, base + ms))) return st;
        pos = at = me;
    }
    return pretok(t, c, level + 1, s + pos, n - pos, base + pos);
}

// After added tokens: normalise (NFC) then pre-tokenize. Normalised added
// tokens (normalized: true) are looked for in the normalised text.
static ep_status encode_plain(const ep_tokenizer *t, enc_ctx *c, const char *s, size_t n,
                              bool allow_special, int pass, size_t base);

// The longest added token starting at s[i] that the pass may use.
static int match_added(const ep_tokenizer *t, const char *s, size_t n, size_t i, bool allow_special,
                       int pass, size_t *end)
{
    int node = t->root_child[(unsigned char)s[i]], best = -1;
    size_t j = i + 1;
    while (node) {
        int ai = t->nodes[node].added;
        if (ai >= 0) {
            const struct tk_added *a = &t->added[ai];
            if ((allow_special || !a->special) && a->normalized == (pass == 1)) {
                best = ai;
                *end = j;
            }
        }
        if (j >= n) break;
        int ch = t->nodes[node].child;
        while (ch && t->nodes[ch].byte != (unsigned char)s[j])
            ch = t->nodes[ch].sibling;
        node = ch;
        j++;
    }
    return best;
}

// pass 0: raw text, added tokens with normalized false; pass 1: normalised
// text, the others. Text between tokens goes on to the next stage.
static ep_status encode_added(const ep_tokenizer *t, enc_ctx *c, const char *s, size_t n,
                              bool allow_special, int pass, size_t base)
{
    size_t seg = 0; // start of the text not yet encoded
    ep_status st;
    for (size_t i = 0; i < n; i++) {
        if (!t->root_child[(unsigned char)s[i]]) continue;
        size_t end = i;
        int ai = match_added(t, s, n, i, allow_special, pass, &end);
        if (ai < 0) continue;
        const struct tk_added *a = &t->added[ai];
        size_t ms = i, me = end, st0;
        uint32_t cp = 0;
        if (a->single_word) {
            bool before = ms > seg && is_word_char(ep_utf8_prev(s, ms, &st0));
            bool after = me < n && ep_utf8_next((const unsigned char *)s + me, n - me, &cp) &&
                         is_word_char(cp);
            if (before || after) continue;
        }
        if (a->lstrip)
            while (ms > seg && is_white(ep_utf8_prev(s, ms, &st0)))
                ms = st0;
        if (a->rstrip) {
            size_t l;
            while (me < n && (l = ep_utf8_next((const unsigned char *)s + me, n - me, &cp)) &&
                   is_white(cp))
                me += l;
        }
        if (ms > seg &&
            (st = encode_plain(t, c, s + seg, ms - seg, allow_special, pass, base + seg)))
            return st;
        emit(c, a->id);
        seg = me;
        i = me - 1;
    }
    return encode_plain(t, c, s + seg, n - seg, allow_special, pass, base + seg);
}

static ep_status encode_plain(const ep_tokenizer *t, enc_ctx *c, const char *s, size_t n,
                              bool allow_special, int pass, size_t base)
{
    if (n == 0) return EP_OK;
    if (pass == 1) return pretok(t, c, 0, s, n, base);
    if (!t->nfc) return encode_added(t, c, s, n, allow_special, 1, base);
    utf8proc_uint8_t *norm = NULL;
    utf8proc_ssize_t nl = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &norm,
                                       UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (nl < 0)
        return ep_errorf(EP_ERR_ARG, "%s: NFC normalisation of the text at byte %zu failed: %s",
                         t->name, base, utf8proc_errmsg(nl));
    // Offsets in messages refer to the original text; after NFC they are
    // approximate (the segment's start).
    ep_status st = encode_added(t, c, (const char *)norm, (size_t)nl, allow_special, 1, base);
    free(norm);
    return st;
}

ep_status ep_tokenizer_encode(const ep_tokenizer *t, const char *text, size_t len,
                              bool allow_special, int **ids, int *n)
{
    *ids = NULL;
    *n = 0;
    size_t bad = ep_utf8_check(text, len);
    if (bad < len)
        return ep_errorf(EP_ERR_ARG,
                         "%s: text: expected UTF-8, found an invalid byte 0x%02x at offset %zu",
                         t->name, (unsigned char)text[bad], bad);
    if (len > (size_t)INT_MAX / 2)
        return ep_errorf(EP_ERR_ARG, "%s: text: expected at most %d bytes, found %zu", t->name,
                         INT_MAX / 2, len);
    enc_ctx c = {0};
    ep_status st = EP_OK;
    if (t->n_splits) {
        c.md = pcre2_match_data_create(4, NULL);
        c.mctx = pcre2_match_context_create(NULL);
        c.jit = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
        if (!c.md || !c.mctx || !c.jit) {
            st = ep_errorf(EP_ERR_NOMEM, "%s: cannot allocate the regex match state", t->name);
            goto out;
        }
        pcre2_jit_stack_assign(c.mctx, NULL, c.jit);
    }
    st = encode_added(t, &c, text, len, allow_special, 0, 0);
out:
    free(c.sym);
    free(c.heap);
    free(c.key);
    pcre2_match_data_free(c.md);
    pcre2_match_context_free(c.mctx);
    pcre2_jit_stack_free(c.jit);
    if (st) {
        free(c.ids);
        return st;
    }
    *ids = c.ids ? c.ids : ep_xmalloc(sizeof(int));
    *n = (int)c.n;
    return EP_OK;
}

// ---- decoding ----------------------------------------------------------------

ep_status ep_tokenizer_decode(const ep_tokenizer *t, const int *ids, int n, bool skip_special,
                              char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_ids || !(t->flags[ids[i]] & TK_PRESENT))
            return ep_errorf(EP_ERR_ARG, "%s: ids[%d]: expected a token id in [0, %d), found %d%s",
                             t->name, i, t->n_ids, ids[i],
                             ids[i] >= 0 && ids[i] < t->n_ids ? " (an id with no token)" : "");
        if (skip_special && (t->flags[ids[i]] & TK_SPECIAL)) continue;
        total += t->piece_len[ids[i]];
    }
    char *out = ep_xmalloc(total + 1);
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        if (skip_special && (t->flags[ids[i]] & TK_SPECIAL)) continue;
        memcpy(out + k, t->pool + t->piece_off[ids[i]], t->piece_len[ids[i]]);
        k += t->piece_len[ids[i]];
    }
    out[k] = '\0';
    *text = out;
    *len = k;
    return EP_OK;
}
