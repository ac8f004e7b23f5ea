// The paged KV cache of one rank: a pool of fixed-size blocks shared by all
// of this rank's sequences, each sequence a table of block ids, so sequences
// of very different lengths share memory without fragmentation. A block holds
// block_tokens rows of every layer; what a row is belongs to the caller
// (Qwen3: k then v of every kv head; MLA: the normalised latent then the
// roped key). Blocks are taken as sequences grow (ep_kv_reserve) and, with
// prefix caching, every full block is remembered under a chain hash of the
// tokens up to its end (vLLM's automatic prefix caching): a new sequence
// whose tokens start with cached full blocks maps them (reference counted,
// never written again) instead of recomputing them; an unreferenced cached
// block stays in the pool until a reservation needs it (least recently freed
// first). No attention here; nothing is allocated after init. The
// bookkeeping is deterministic: the same calls give the same block ids, so
// a rows-less copy (no_rows) mirrors a rank's cache exactly (the engine's
// planner keeps one per rank).
#ifndef EP_KV_CACHE_H
#define EP_KV_CACHE_H

#include "common/ep.h"

typedef struct {
    int n_layers;
    int row_floats;      // floats per (layer, token)
    int block_tokens;    // tokens per block (>= 1)
    int n_blocks;        // blocks in the pool
    int max_seqs;        // sequence slots
    int max_seq_tokens;  // longest sequence; sizes each block table
    bool prefix_caching; // remember full blocks by their token prefix
    bool no_rows;        // bookkeeping only (no pool; ep_kv_row is not allowed)
} ep_kv_opts;

typedef struct ep_kv ep_kv;
ep_status ep_kv_init(const ep_kv_opts *o, ep_kv **out); // EP_ERR_ARG / EP_ERR_NOMEM
void ep_kv_free(ep_kv *kv);                             // NULL ok
const ep_kv_opts *ep_kv_options(const ep_kv *kv);

// A new empty sequence; EP_ERR_NOMEM naming max_seqs when every slot is taken.
ep_status ep_kv_seq_new(ep_kv *kv, int *seq);
// Gives the sequence's blocks back: a block nobody else maps is free again,
// or, when it is a cached full block, evictable (least recently freed first;
// a sequence's last block before its first, as vLLM). Unknown ids are ignored.
void ep_kv_seq_free(ep_kv *kv, int seq);
bool ep_kv_seq_valid(const ep_kv *kv, int seq);
int ep_kv_seq_len(const ep_kv *kv, int seq); // tokens committed
int ep_kv_seq_blocks(const ep_kv *kv, int seq);
// Blocks a reservation can take: free ones plus unreferenced cached ones.
int ep_kv_free_blocks(const ep_kv *kv);
// Of those, the unreferenced cached blocks (evicted when the free ones run out).
int ep_kv_cached_blocks(const ep_kv *kv);
// Block id of the sequence's i-th block (tests, the engine's checks).
int ep_kv_seq_block(const ep_kv *kv, int seq, int i);

// Makes room for len + n tokens (takes blocks from the pool, evicting
// unreferenced cached blocks when no free one is left). EP_ERR_ARG when that
// exceeds max_seq_tokens, EP_ERR_NOMEM when the pool runs out (blocks already
// held stay held). Either message names the sequence and the numbers.
ep_status ep_kv_reserve(ep_kv *kv, int seq, int n);
// len += n after the rows of those tokens were written (n within the reserve).
// tokens: [n] the tokens committed; a block they fill is cached under its
// prefix hash (when prefix caching is on and no equal block is cached yet).
void ep_kv_commit(ep_kv *kv, int seq, int n, const int *tokens);
// The row of (layer, pos): row_floats floats. pos must be within the reserve.
float *ep_kv_row(ep_kv *kv, int seq, int layer, int pos);

// ---- prefix caching --------------------------------------------------------
// salt: what besides the tokens decides the rows (the routing profile and
// domain of the MoE layers); sequences of different salts share nothing.
// How many leading full blocks of tokens[0..n) are cached (tokens compared,
// not only hashes), at most max_blocks; hashes[max_blocks] receives their
// chain hashes, *unreferenced (may be NULL) how many of them no sequence
// maps now (mapping them takes them out of ep_kv_free_blocks). 0 when prefix
// caching is off. Changes nothing.
int ep_kv_prefix_match(const ep_kv *kv, uint64_t salt, const int *tokens, int n, int max_blocks,
                       uint64_t *hashes, int *unreferenced);
// A new sequence of salt that maps the cached blocks of hashes[n_blocks]
// (from ep_kv_prefix_match on this cache or an exact mirror of it) as its
// first n_blocks * block_tokens tokens. EP_ERR_NOMEM as ep_kv_seq_new;
// EP_ERR_ARG naming the block when one is not cached (the mirror diverged).
ep_status ep_kv_seq_new_prefix(ep_kv *kv, uint64_t salt, const uint64_t *hashes, int n_blocks,
                               int *seq);
// A salt from a name (routing profile, domain): FNV-1a of the bytes.
uint64_t ep_kv_salt(uint64_t salt, const char *name);

#endif
