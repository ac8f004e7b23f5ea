// Paged KV cache: one pool of blocks [n_blocks][n_layers][block_tokens][row],
// a free stack of block ids, per-sequence block tables sized for the longest
// sequence at init. Reserve before a step, write rows, commit after.
#include "model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    bool used;
    int len;      // tokens committed
    int n_blocks; // blocks held
} kv_seq;

struct ep_kv {
    ep_kv_opts o;
    int max_blocks_per_seq;
    float *pool;   // [n_blocks * n_layers * block_tokens * row_floats]
    int *free_ids; // [n_blocks] stack of free block ids
    int n_free;
    kv_seq *seqs; // [max_seqs]
    int *table;   // [max_seqs * max_blocks_per_seq] block ids
};

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
    size_t floats = (size_t)o->n_blocks * o->n_layers * o->block_tokens * o->row_floats;
    ep_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return ep_errorf(EP_ERR_NOMEM, "kv cache: cannot allocate its header");
    kv->o = *o;
    kv->max_blocks_per_seq = (o->max_seq_tokens + o->block_tokens - 1) / o->block_tokens;
    kv->pool = malloc(floats * sizeof(float));
    kv->free_ids = malloc((size_t)o->n_blocks * sizeof(int));
    kv->seqs = calloc((size_t)o->max_seqs, sizeof(kv_seq));
    kv->table = malloc((size_t)o->max_seqs * kv->max_blocks_per_seq * sizeof(int));
    if (!kv->pool || !kv->free_ids || !kv->seqs || !kv->table) {
        ep_kv_free(kv);
        return ep_errorf(EP_ERR_NOMEM,
                         "kv cache: cannot allocate %zu MiB for %d blocks of %d tokens x %d "
                         "layers x %d floats",
                         floats * sizeof(float) >> 20, o->n_blocks, o->block_tokens, o->n_layers,
                         o->row_floats);
    }
    // Lowest ids on top of the stack, so a fresh cache hands out 0, 1, 2, ...
    for (int i = 0; i < o->n_blocks; i++)
        kv->free_ids[i] = o->n_blocks - 1 - i;
    kv->n_free = o->n_blocks;
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
    free(kv);
}

const ep_kv_opts *ep_kv_options(const ep_kv *kv)
{
    return &kv->o;
}

ep_status ep_kv_seq_new(ep_kv *kv, int *seq)
{
    for (int s = 0; s < kv->o.max_seqs; s++) {
        if (kv->seqs[s].used) continue;
        kv->seqs[s] = (kv_seq){.used = true};
        *seq = s;
        return EP_OK;
    }
    *seq = -1;
    return ep_errorf(EP_ERR_NOMEM, "kv cache: all %d sequence slots are in use (max_seqs)",
                     kv->o.max_seqs);
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
    // Back in reverse, so the next sequence reuses them in the same order.
    for (int i = s->n_blocks - 1; i >= 0; i--)
        kv->free_ids[kv->n_free++] = t[i];
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

int ep_kv_free_blocks(const ep_kv *kv)
{
    return kv->n_free;
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
    if (need - s->n_blocks > kv->n_free)
        return ep_errorf(EP_ERR_NOMEM,
                         "kv cache: sequence %d needs %d more blocks of %d tokens, %d of %d are "
                         "free (n_blocks)",
                         seq, need - s->n_blocks, kv->o.block_tokens, kv->n_free, kv->o.n_blocks);
    int *t = kv->table + (size_t)seq * kv->max_blocks_per_seq;
    while (s->n_blocks < need)
        t[s->n_blocks++] = kv->free_ids[--kv->n_free];
    return EP_OK;
}

void ep_kv_commit(ep_kv *kv, int seq, int n)
{
    EP_ASSERT(ep_kv_seq_valid(kv, seq) && n >= 0);
    kv_seq *s = &kv->seqs[seq];
    EP_ASSERT((int64_t)s->len + n <= (int64_t)s->n_blocks * kv->o.block_tokens);
    s->len += n;
}

float *ep_kv_row(ep_kv *kv, int seq, int layer, int pos)
{
    EP_ASSERT(ep_kv_seq_valid(kv, seq) && layer >= 0 && layer < kv->o.n_layers && pos >= 0);
    int bi = pos / kv->o.block_tokens, slot = pos % kv->o.block_tokens;
    EP_ASSERT(bi < kv->seqs[seq].n_blocks);
    int b = kv->table[(size_t)seq * kv->max_blocks_per_seq + bi];
    size_t off = (((size_t)b * kv->o.n_layers + layer) * kv->o.block_tokens + slot) *
                 (size_t)kv->o.row_floats;
    return kv->pool + off;
}
