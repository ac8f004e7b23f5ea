// The paged KV cache of one rank: a pool of fixed-size blocks shared by all
// of this rank's sequences, each sequence a table of block ids, so sequences
// of very different lengths share memory without fragmentation. A block holds
// block_tokens rows of every layer; what a row is belongs to the caller
// (Qwen3: k then v of every kv head; MLA: the normalised latent then the
// roped key). No attention here; nothing is allocated after init.
#ifndef EP_KV_CACHE_H
#define EP_KV_CACHE_H

#include "common/ep.h"

typedef struct {
    int n_layers;
    int row_floats;     // floats per (layer, token)
    int block_tokens;   // tokens per block (>= 1)
    int n_blocks;       // blocks in the pool
    int max_seqs;       // sequence slots
    int max_seq_tokens; // longest sequence; sizes each block table
} ep_kv_opts;

typedef struct ep_kv ep_kv;
ep_status ep_kv_init(const ep_kv_opts *o, ep_kv **out); // EP_ERR_ARG / EP_ERR_NOMEM
void ep_kv_free(ep_kv *kv);                             // NULL ok
const ep_kv_opts *ep_kv_options(const ep_kv *kv);

// A new empty sequence; EP_ERR_NOMEM naming max_seqs when every slot is taken.
ep_status ep_kv_seq_new(ep_kv *kv, int *seq);
// Gives the sequence's blocks back to the pool. Unknown ids are ignored.
void ep_kv_seq_free(ep_kv *kv, int seq);
bool ep_kv_seq_valid(const ep_kv *kv, int seq);
int ep_kv_seq_len(const ep_kv *kv, int seq); // tokens committed
int ep_kv_seq_blocks(const ep_kv *kv, int seq);
int ep_kv_free_blocks(const ep_kv *kv);

// Makes room for len + n tokens (takes blocks from the pool). EP_ERR_ARG when
// that exceeds max_seq_tokens, EP_ERR_NOMEM when the pool runs out (blocks
// already held stay held). Either message names the sequence and the numbers.
ep_status ep_kv_reserve(ep_kv *kv, int seq, int n);
// len += n after the rows of those tokens were written (n within the reserve).
void ep_kv_commit(ep_kv *kv, int seq, int n);
// The row of (layer, pos): row_floats floats. pos must be within the reserve.
float *ep_kv_row(ep_kv *kv, int seq, int layer, int pos);

#endif
