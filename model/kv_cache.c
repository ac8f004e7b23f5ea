// Paged KV cache: one pool of blocks [n_blocks][n_layers][block_tokens][row],
// a free stack of block ids, per-sequence block tables sized for the longest
// sequence at init, and for prefix caching a reference count per block, a
// hash table of cached full blocks (chained through the blocks) and an LRU
// list of the unreferenced ones. Reserve before a step, write rows, commit
// after. Every decision depends only on the calls made, never on addresses
// or time, so a rows-less mirror hands out the same ids.
#include "model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int ref;          // sequences that map it
    bool cached;      // in the hash table (a full block of known prefix)
    uint64_t hash;    // chain hash of the tokens up to its end (when cached)
    uint64_t parent;  // chain hash before it (its first block: the salt's root)
    int hnext;        // next block of the same bucket, -1 none
    int lprev, lnext; // LRU list of unreferenced cached blocks, -1 none
} kv_block;

typedef struct {
    bool used;
    int len;         // tokens committed
    int n_blocks;    // blocks held
    uint64_t parent; // chain hash of its full blocks so far (the root when none)
} kv_seq;

struct ep_kv {
    ep_kv_opts o;
    int max_blocks_per_seq;
    float *pool;   // [n_blocks * n_layers * block_tokens * row_floats], NULL with no_rows
    int *free_ids; // [n_blocks] stack of free (unreferenced, uncached) block ids
    int n_free;
    kv_seq *seqs;           // [max_seqs]
    int *table;             // [max_seqs * max_blocks_per_seq] block ids
    int *seq_tokens;        // [max_seqs * max_blocks_per_seq * block_tokens] tokens committed
    kv_block *blk;          // [n_blocks]
    int *bucket;            // [n_buckets] first block of each hash bucket, -1 none
    int n_buckets;          // power of two
    int lru_head, lru_tail; // unreferenced cached blocks, oldest first
    int n_lru;
    int *blk_tokens; // [n_blocks * block_tokens] tokens of each cached block
};

// ---- hashing ---------------------------------------------------------------

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t root_hash(uint64_t salt)
{
    return mix64(salt ^ 0x6b76636163686531ULL); // "kvcache1"
}

static uint64_t block_hash(uint64_t parent, const int *tok, int n)
{
    uint64_t h = mix64(parent);
    for (int i = 0; i < n; i++)
        h = mix64(h ^ (uint64_t)(uint32_t)tok[i] ^ ((uint64_t)(i + 1) << 32));
    return h;
}

uint64_t ep_kv_salt(uint64_t salt, const char *name)
{
    uint64_t h = salt ^ 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *)(name ? name : ""); *p; p++)
        h = (h ^ *p) * 0x100000001b3ULL;
    return (h ^ 0xff) * 0x100000001b3ULL; // the terminator: "a" + "b" differs from "ab" + ""
}

// ---- init / free -----------------------------------------------------------

ep_status ep_kv_init(const ep_kv_opts *o, ep_kv **out)
{
    *out = NULL;
    if (o->n_layers < 1 || o->row_floats < 1 || o->block_tokens < 1 || o->n_blocks < 1 ||
        o->max_seqs < 1 || o->max_seq_tokens < 1)
        return ep_errorf(EP_ERR_ARG,
                         "kv cache: n_layers %d, row_floats %d, block_tokens %d, n_blocks %d, "
                         "max_seqs %d, max_seq_tokens %d (expected all >= 1)",
                         o->n_layers, o->row_floats, o->block_tokens, o->n_blocks, o->max_seqs,
                         o->max_seq_tokens);
    size_t floats =
        o->no_rows ? 0 : (size_t)o->n_blocks * o->n_layers * o->block_tokens * o->row_floats;
    ep_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return ep_errorf(EP_ERR_NOMEM, "kv cache: cannot allocate its header");
    kv->o = *o;
    kv->max_blocks_per_seq = (o->max_seq_tokens + o->block_tokens - 1) / o->block_tokens;
    kv->n_buckets = 1;
    while (kv->n_buckets < 2 * o->n_blocks)
        kv->n_buckets *= 2;
    size_t seq_tok = (size_t)o->max_seqs * kv->max_blocks_per_seq * o->block_tokens;
    if (!o->no_rows) kv->pool = malloc(floats * sizeof(float));
    kv->free_ids = malloc((size_t)o->n_blocks * sizeof(int));
    kv->seqs = calloc((size_t)o->max_seqs, sizeof(kv_seq));
    kv->table = malloc((size_t)o->max_seqs * kv->max_blocks_per_seq * sizeof(int));
    kv->seq_tokens = malloc(seq_tok * sizeof(int));
    kv->blk = calloc((size_t)o->n_blocks, sizeof(kv_block));
    kv->bucket = malloc((size_t)kv->n_buckets * sizeof(int));
    kv->blk_tokens = malloc((size_t)o->n_blocks * o->block_tokens * sizeof(int));
    if ((!o->no_rows && !kv->pool) || !kv->free_ids || !kv->seqs || !kv->table || !kv->seq_tokens ||
        !kv->blk || !kv->bucket || !kv->blk_tokens) {
        ep_kv_free(kv);
        return ep_errorf(EP_ERR_NOMEM,
                         "kv cache: cannot allocate %zu MiB for %d blocks of %d tokens x %d "
                         "layers x %d floats",
                         floats * sizeof(float) >> 20, o->n_blocks, o->block_tokens, o->n_layers,
                         o->row_floats);
    }
    // Lowest ids on top of the stack, so a fresh cache hands out 0, 1, 2, ...
    for (int i = 0; i < o->n_blocks; i++) {
        kv->free_ids[i] = o->n_blocks - 1 - i;
        kv->blk[i] = (kv_block){.hnext = -1, .lprev = -1, .lnext = -1};
    }
    kv->n_free = o->n_blocks;
    for (int i = 0; i < kv->n_buckets; i++)
        kv->bucket[i] = -1;
    kv->lru_head = kv->lru_tail = -1;
    *out = kv;
    return EP_OK;
}

void ep_kv_free(ep_kv *kv)
{
    if (!kv) return;
    free(kv->pool);
    free(kv->free_ids);
    free(kv->seqs);
    free(kv->table);
    free(kv->seq_tokens);
    free(kv->blk);
    free(kv->bucket);
    free(kv->blk_tokens);
    free(kv);
}

const ep_kv_opts *ep_kv_options(const ep_kv *kv)
{
    return &kv->o;
}

// ---- the hash table and the LRU list ---------------------------------------

static int *bucket_of(ep_kv *kv, uint64_t h)
{
    return &kv->bucket[h & (uint64_t)(kv->n_buckets - 1)];
}

static void lru_push(ep_kv *kv, int b)
{
    kv_block *k = &kv->blk[b];
    k->lprev = kv->lru_tail;
    k->lnext = -1;
    if (kv->lru_tail >= 0)
        kv->blk[kv->lru_tail].lnext = b;
    else
        kv->lru_head = b;
    kv->lru_tail = b;
    kv->n_lru++;
}

static void lru_remove(ep_kv *kv, int b)
{
    kv_block *k = &kv->blk[b];
    if (k->lprev >= 0)
        kv->blk[k->lprev].lnext = k->lnext;
    else
        kv->lru_head = k->lnext;
    if (k->lnext >= 0)
        kv->blk[k->lnext].lprev = k->lprev;
    else
        kv->lru_tail = k->lprev;
    k->lprev = k->lnext = -1;
    kv->n_lru--;
}

static void uncache(ep_kv *kv, int b)
{
    kv_block *k = &kv->blk[b];
    int *p = bucket_of(kv, k->hash);
    while (*p != b) {
        EP_ASSERT(*p >= 0);
        p = &kv->blk[*p].hnext;
    }
    *p = k->hnext;
    k->hnext = -1;
    k->cached = false;
}

// The cached block of (parent, hash) whose tokens are tok (NULL: hash only).
static int lookup(const ep_kv *kv, uint64_t parent, uint64_t h, const int *tok)
{
    const int bt = kv->o.block_tokens;
    for (int b = kv->bucket[h & (uint64_t)(kv->n_buckets - 1)]; b >= 0; b = kv->blk[b].hnext) {
        const kv_block *k = &kv->blk[b];
        if (k->hash != h || k->parent != parent) continue;
        if (tok && memcmp(kv->blk_tokens + (size_t)b * bt, tok, (size_t)bt * sizeof(int))) continue;
        return b;
    }
    return -1;
}

// ---- sequences -------------------------------------------------------------

static ep_status seq_new(ep_kv *kv, uint64_t salt, int *seq)
{
    for (int s = 0; s < kv->o.max_seqs; s++) {
        if (kv->seqs[s].used) continue;
        kv->seqs[s] = (kv_seq){.used = true, .parent = root_hash(salt)};
        *seq = s;
        return EP_OK;
    }
    *seq = -1;
    return ep_errorf(EP_ERR_NOMEM, "kv cache: all %d sequence slots are in use (max_seqs)",
                     kv->o.max_seqs);
}

ep_status ep_kv_seq_new(ep_kv *kv, int *seq)
{
    return seq_new(kv, 0, seq);
}

bool ep_kv_seq_valid(const ep_kv *kv, int seq)
{
    return seq >= 0 && seq < kv->o.max_seqs && kv->seqs[seq].used;
}

void ep_kv_seq_free(ep_kv *kv, int seq)
{
    if (!kv || !ep_kv_seq_valid(kv, seq)) return;
    kv_seq *s = &kv->seqs[seq];
    const int *t = kv->table + (size_t)seq * kv->max_blocks_per_seq;
    // Last block first: a cached prefix is then evicted from its end, and
    // free blocks go back so that the next sequence reuses them in order.
    for (int i = s->n_blocks - 1; i >= 0; i--) {
        kv_block *k = &kv->blk[t[i]];
        EP_ASSERT(k->ref > 0);
        if (--k->ref > 0) continue;
        if (k->cached)
            lru_push(kv, t[i]);
        else
            kv->free_ids[kv->n_free++] = t[i];
    }
    *s = (kv_seq){0};
}

int ep_kv_seq_len(const ep_kv *kv, int seq)
{
    EP_ASSERT(ep_kv_seq_valid(kv, seq));
    return kv->seqs[seq].len;
}

int ep_kv_seq_blocks(const ep_kv *kv, int seq)
{
    EP_ASSERT(ep_kv_seq_valid(kv, seq));
    return kv->seqs[seq].n_blocks;
}

int ep_kv_seq_block(const ep_kv *kv, int seq, int i)
{
    EP_ASSERT(ep_kv_seq_valid(kv, seq) && i >= 0 && i < kv->seqs[seq].n_blocks);
    return kv->table[(size_t)seq * kv->max_blocks_per_seq + i];
}

int ep_kv_free_blocks(const ep_kv *kv)
{
    return kv->n_free + kv->n_lru;
}

int ep_kv_cached_blocks(const ep_kv *kv)
{
    return kv->n_lru;
}

// A block for a growing sequence: a free one, else the least recently freed
// cached one (forgotten by the cache).
static int take_block(ep_kv *kv)
{
    int b;
    if (kv->n_free > 0) {
        b = kv->free_ids[--kv->n_free];
    } else {
        b = kv->lru_head;
        EP_ASSERT(b >= 0);
        lru_remove(kv, b);
        uncache(kv, b);
    }
    kv->blk[b].ref = 1;
    return b;
}

ep_status ep_kv_reserve(ep_kv *kv, int seq, int n)
{
    EP_ASSERT(ep_kv_seq_valid(kv, seq) && n >= 0);
    kv_seq *s = &kv->seqs[seq];
    int64_t want = (int64_t)s->len + n;
    if (want > kv->o.max_seq_tokens)
        return ep_errorf(EP_ERR_ARG,
                         "kv cache: sequence %d would hold %lld tokens (%d cached + %d new), the "
                         "context is %d tokens",
                         seq, (long long)want, s->len, n, kv->o.max_seq_tokens);
    int need = (int)((want + kv->o.block_tokens - 1) / kv->o.block_tokens);
    if (need - s->n_blocks > ep_kv_free_blocks(kv))
        return ep_errorf(EP_ERR_NOMEM,
                         "kv cache: sequence %d needs %d more blocks of %d tokens, %d of %d are "
                         "free (n_blocks)",
                         seq, need - s->n_blocks, kv->o.block_tokens, ep_kv_free_blocks(kv),
                         kv->o.n_blocks);
    int *t = kv->table + (size_t)seq * kv->max_blocks_per_seq;
    while (s->n_blocks < need)
        t[s->n_blocks++] = take_block(kv);
    return EP_OK;
}

void ep_kv_commit(ep_kv *kv, int seq, int n, const int *tokens)
{
    EP_ASSERT(ep_kv_seq_valid(kv, seq) && n >= 0);
    kv_seq *s = &kv->seqs[seq];
    const int bt = kv->o.block_tokens;
    EP_ASSERT((int64_t)s->len + n <= (int64_t)s->n_blocks * bt);
    int *st = kv->seq_tokens + (size_t)seq * kv->max_blocks_per_seq * bt;
    memcpy(st + s->len, tokens, (size_t)n * sizeof(int));
    int first = s->len / bt;
    s->len += n;
    // Every block filled by these tokens extends the chain; with prefix
    // caching it is remembered unless an equal block is cached already (then
    // this one stays private and is freed with its sequence).
    for (int i = first; i < s->len / bt; i++) {
        const int *tok = st + (size_t)i * bt;
        uint64_t h = block_hash(s->parent, tok, bt);
        int b = kv->table[(size_t)seq * kv->max_blocks_per_seq + i];
        if (kv->o.prefix_caching && !kv->blk[b].cached && lookup(kv, s->parent, h, tok) < 0) {
            kv_block *k = &kv->blk[b];
            k->cached = true;
            k->hash = h;
            k->parent = s->parent;
            memcpy(kv->blk_tokens + (size_t)b * bt, tok, (size_t)bt * sizeof(int));
            int *p = bucket_of(kv, h);
            k->hnext = *p;
            *p = b;
        }
        s->parent = h;
    }
}

float *ep_kv_row(ep_kv *kv, int seq, int layer, int pos)
{
    EP_ASSERT(ep_kv_seq_valid(kv, seq) && layer >= 0 && layer < kv->o.n_layers && pos >= 0 &&
              kv->pool);
    int bi = pos / kv->o.block_tokens, slot = pos % kv->o.block_tokens;
    EP_ASSERT(bi < kv->seqs[seq].n_blocks);
    int b = kv->table[(size_t)seq * kv->max_blocks_per_seq + bi];
    size_t off = (((size_t)b * kv->o.n_layers + layer) * kv->o.block_tokens + slot) *
                 (size_t)kv->o.row_floats;
    return kv->pool + off;
}

// ---- prefix caching --------------------------------------------------------

int ep_kv_prefix_match(const ep_kv *kv, uint64_t salt, const int *tokens, int n, int max_blocks,
                       uint64_t *hashes, int *unreferenced)
{
    const int bt = kv->o.block_tokens;
    int hit = 0, unref = 0;
    uint64_t parent = root_hash(salt);
    while (kv->o.prefix_caching && hit < max_blocks && (hit + 1) * bt <= n) {
        const int *tok = tokens + (size_t)hit * bt;
        uint64_t h = block_hash(parent, tok, bt);
        int b = lookup(kv, parent, h, tok);
        if (b < 0) break;
        if (kv->blk[b].ref == 0) unref++;
        hashes[hit++] = h;
        parent = h;
    }
    if (unreferenced) *unreferenced = unref;
    return hit;
}

ep_status ep_kv_seq_new_prefix(ep_kv *kv, uint64_t salt, const uint64_t *hashes, int n_blocks,
                               int *seq)
{
    EP_ASSERT(n_blocks >= 0 && n_blocks <= kv->max_blocks_per_seq);
    uint64_t parent = root_hash(salt);
    for (int i = 0; i < n_blocks; i++) {
        if (lookup(kv, parent, hashes[i], NULL) < 0)
            return ep_errorf(EP_ERR_ARG,
                             "kv cache: block %d of a new sequence's prefix (hash %016llx) is "
                             "not cached here",
                             i, (unsigned long long)hashes[i]);
        parent = hashes[i];
    }
    ep_status st = seq_new(kv, salt, seq);
    if (st) return st;
    kv_seq *s = &kv->seqs[*seq];
    int *t = kv->table + (size_t)*seq * kv->max_blocks_per_seq;
    int *stok = kv->seq_tokens + (size_t)*seq * kv->max_blocks_per_seq * kv->o.block_tokens;
    const int bt = kv->o.block_tokens;
    for (int i = 0; i < n_blocks; i++) {
        int b = lookup(kv, s->parent, hashes[i], NULL);
        kv_block *k = &kv->blk[b];
        if (k->ref++ == 0) lru_remove(kv, b);
        t[s->n_blocks++] = b;
        memcpy(stok + (size_t)i * bt, kv->blk_tokens + (size_t)b * bt, (size_t)bt * sizeof(int));
        s->parent = hashes[i];
    }
    s->len = n_blocks * bt;
    return EP_OK;
}
