// The whole transformer of Qwen3-MoE and DeepSeek-V2 on this rank: embeddings,
// RMSNorm, attention (Qwen3 GQA with q/k norm; DeepSeek-V2 MLA with a latent
// KV cache), dense MLP or the EP MoE layer (model/moe.h), final norm, lm_head.
// Attention is data-parallel: each rank owns its sequences and their paged KV
// cache; MoE layers are expert-parallel and every rank joins every layer.
// Also the plain single-process reference forward. Sampling is model/sample.h.
#ifndef EP_MODEL_H
#define EP_MODEL_H

#include "model/kv_cache.h"
#include "model/moe.h"
#include "model/sample.h"

typedef struct {
    ep_moe_opts moe; // MoE layer options; moe.cap_tokens is also the most
                     // tokens one rank runs in one step (all sequences)
    // Storage of the replicated weights (embeddings, attention/MLA, dense
    // MLPs, shared experts, lm_head): EP_DTYPE_AUTO (default: each tensor in
    // the checkpoint's dtype when BF16, mapped from the file without a copy;
    // fp32 otherwise), EP_DTYPE_F32 or EP_DTYPE_BF16. BF16 products round
    // their activations to BF16 and accumulate in fp32. Norm weights, the
    // router gates and the KV cache stay fp32.
    ep_dtype dtype;
    int kv_block_tokens; // tokens per KV block
    int kv_blocks;       // blocks in this rank's pool
    int max_seqs;        // sequences this rank holds at once
    int max_ctx;         // longest sequence, <= cfg->max_pos
    bool prefix_caching; // cache full KV blocks by token prefix (model/kv_cache.h); default true
    bool progress;       // rank 0 prints a loading line on stderr (bytes, MB/s) while
                         // ep_model_init reads weights; default false (callers set
                         // it, e.g. when stderr is a terminal)
    // Backend cuda only (docs/cuda.md "CUDA Graph buckets"): 0 off (default);
    // 1 a decode step runs at its batch bucket (1, 2, 4, ... up to
    // moe.cap_tokens rows, padding on a scratch KV block), fixed device
    // buffers, no host sync inside a dense segment; 2 also captures each
    // dense segment per bucket as a CUDA Graph and replays it (real CUDA
    // only: refused on the emulated device).
    int cuda_graph;
} ep_model_opts;
// cap 256 tokens, blocks of 16 tokens, 64 sequences, context min(max_pos, 4096),
// enough blocks for every sequence at a quarter of the context, prefix caching on.
void ep_model_opts_default(ep_model_opts *o, const ep_model_cfg *cfg);

typedef struct ep_model ep_model;
// Reads the replicated weights (embeddings, norms, attention, dense MLPs,
// lm_head) in opts.dtype and builds the MoE layers (this rank's experts).
// opts.moe.backend also picks the model's backend (model/backend.h): cuda
// stores the matrices BF16 (whatever opts.dtype says), uploads them with
// the norms, keeps the KV cache and the activations on the device, and
// frees the host copies unless opts.moe.with_reference; it fails, on every
// rank, before anything is allocated on the device, when the device's free
// memory is below the whole footprint (ep_model_dev_check). cfg, cl and w
// are borrowed and must outlive the model.
ep_status ep_model_init(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                        const ep_model_opts *o, ep_model **out);
void ep_model_free(ep_model *m); // NULL ok
ep_moe *ep_model_moe(ep_model *m);
ep_kv *ep_model_kv(ep_model *m);
size_t ep_model_weight_bytes(const ep_model *m); // replicated + this rank's expert bytes
// The weights this rank holds, by how a step reads them (bytes as stored).
typedef struct {
    uint64_t embed;   // embedding table: a step reads its tokens' rows only
    uint64_t dense;   // read whole by every step that runs a token: norms,
                      // attention / MLA, dense MLPs, router gates, shared
                      // experts, final norm, lm_head (the embedding again when tied)
    uint64_t expert;  // one routed expert at one MoE layer (gate, up, down)
    uint64_t experts; // every routed expert held, over all MoE layers
} ep_model_bytes;
void ep_model_get_bytes(const ep_model *m, ep_model_bytes *out);

// Device memory of the cuda backend (model/forward_cuda.c) on this rank, by
// part, in bytes. The plan is computed from cfg and opts alone (pure C; a
// CPU-only build can call it); the measured counterpart counts every
// allocation the backend made. The cuda backend compares the plan's total
// with the device's free memory before it allocates anything and fails
// with both numbers, by part, when it does not fit.
typedef struct {
    uint64_t weights_bf16; // replicated matrices (embedding, lm_head, attention, dense MLPs)
    uint64_t weights_f32;  // norm vectors, the rotary table
    uint64_t kv;           // the paged KV pool (bf16) and the step's block table
    uint64_t workspace;    // activations, logits, step metadata, sampling rows
    uint64_t total;        // the four above
    // The MoE layers' experts (routed + shared) on the device, not in
    // total (they are the MoE part's: ep_moe_dev_mem); ep_model_dev_mem_plan
    // leaves it 0, ep_model_dev_footprint copies the MoE prediction's;
    // measured: ep_moe_expert_bytes.
    uint64_t experts;
} ep_model_dev_mem;
void ep_model_dev_mem_plan(const ep_model_cfg *cfg, const ep_model_opts *o, ep_model_dev_mem *out);
// Routed experts per MoE layer on the fullest rank of `world`: the slots
// (n_experts + redundant_experts) spread as evenly as placement can (ceil).
int ep_model_dev_n_local(const ep_model_cfg *cfg, const ep_moe_opts *o, int world);
// The whole device footprint of backend cuda on the fullest rank: the model
// backend's plan and the MoE part's prediction (ep_moe_dev_mem_predict with
// ep_model_dev_n_local experts). Pure C; `epserve plan --backend cuda`.
void ep_model_dev_footprint(const ep_model_cfg *cfg, const ep_model_opts *o, int world,
                            ep_model_dev_mem *model, ep_moe_dev_mem *moe);
// Backend cuda, collective: before ep_model_init allocates anything on the
// device, every rank compares ep_model_dev_footprint's total with its
// device's free memory; when one does not fit, every rank fails (that one
// with needed vs free by part and the options to lower, the others naming
// it). EP_OK without asking the device for other backends.
ep_status ep_model_dev_check(const ep_model_cfg *cfg, ep_cluster *cl, const ep_model_opts *o);
// What the model's backend allocated on the device; EP_ERR_UNSUPPORTED
// naming the backend when it keeps nothing there (cpu).
ep_status ep_model_dev_mem_get(const ep_model *m, ep_model_dev_mem *out);

// Sequences live in this rank's KV cache (ep_kv_seq_* on ep_model_kv() work too).
ep_status ep_model_seq_new(ep_model *m, int *seq);
void ep_model_seq_free(ep_model *m, int seq);
int ep_model_seq_len(const ep_model *m, int seq);

// One step of this rank: new tokens appended to some of its sequences, a
// prefill (many tokens) and decodes (one token) mixed freely.
typedef struct {
    int n_seqs;
    const int *seq;    // [n_seqs] distinct sequence ids
    const int *n_new;  // [n_seqs] tokens appended to each, >= 1
    const int *tokens; // [sum n_new] the new tokens, sequence after sequence
    bool all_logits;   // logits of every new token, else of each sequence's last
    // [n_seqs] Pick domain of each sequence's tokens (an index into the
    // policy's pick.domains, -1 none), or NULL: the policy's own for all.
    const int *pick_domain;
} ep_batch;

// Runs every layer (joining every MoE layer's collectives even when
// n_seqs == 0), writes the new tokens' KV rows and commits them.
// logits: [sum n_new, vocab] when all_logits, else [n_seqs, vocab].
// Bad batches (unknown sequence or token id, context or KV pool exceeded,
// more than cap_tokens) fail on every rank alike, before any layer runs, so
// no rank is left waiting in a collective. st (may be NULL) accumulates the
// MoE communication counters.
ep_status ep_model_forward(ep_model *m, const ep_policy *p, const ep_batch *b, float *logits,
                           ep_comm_stats *st);

// What one step's MoE layers did, in detail, for the scheduler and metrics.
// Every pointer may be NULL; the arrays are added to (not cleared), sized by
// the caller.
typedef struct {
    ep_comm_stats *layer; // [n_layers] counters of each layer (dense layers stay 0)
    int64_t *seq_pairs;   // [n_seqs of the batch] (token, expert) pairs of each
                          // sequence's new tokens over all MoE layers
    int64_t *expert_load; // [n_layers * n_experts] pairs this rank's tokens routed
                          // to each expert (logical ids)
    double moe_us;        // wall time in the MoE layers (routing through combine and
                          // the shared experts, waits for other ranks included)
    // [n_seqs of the batch]: per sequence NULL or a histogram [n_layers *
    // n_experts] += the model's own top-k_base of its new tokens (the routes'
    // static counterfactual, what a calibrated frequency counts), whatever
    // the policy kept: the input of router/detect.h.
    float *const *seq_hist;
} ep_forward_stats;
// ep_model_forward plus the detail above (fs may be NULL).
ep_status ep_model_forward_ex(ep_model *m, const ep_policy *p, const ep_batch *b, float *logits,
                              ep_comm_stats *st, ep_forward_stats *fs);

// ep_model_forward_ex, then the next token of every logits row (ep_batch's
// rows: one per sequence, or every new token with all_logits): ids[r] =
// ep_sampler_sample(samplers[r], row r), -1 where samplers[r] is NULL (the
// RNG of each sampler advances as that call's would). logits: NULL when the
// caller needs none on the host (the cuda backend then samples on the
// device when every row's sampler allows it: model/forward_cuda.c), else
// [rows, vocab] filled as ep_model_forward_ex fills it and sampled from.
ep_status ep_model_forward_sample(ep_model *m, const ep_policy *p, const ep_batch *b,
                                  ep_sampler *const *samplers, int *ids, float *logits,
                                  ep_comm_stats *st, ep_forward_stats *fs);

// The reference (needs opts.moe.with_reference): logits[n, vocab] of one
// sequence tokens[n] (positions 0..n-1) recomputed from scratch with plain
// loops (no BLAS, no KV cache; MLA with keys and values expanded from the
// latent) and ep_moe_reference. No communication. n <= moe.cap_tokens.
ep_status ep_model_reference(ep_model *m, const ep_policy *p, const int *tokens, int n,
                             float *logits);

#endif
