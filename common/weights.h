// Where weights come from: a safetensors checkpoint directory, or synthetic
// weights generated deterministically from (seed, tensor name), the same
// values `epserve make-model` writes (BF16-rounded). Each caller reads only
// the tensors it needs (a rank: its experts and the replicated parts).
#ifndef EP_WEIGHTS_H
#define EP_WEIGHTS_H

#include "common/dtype.h"
#include "common/mat.h"
#include "common/model_cfg.h"

typedef struct ep_weights ep_weights;
// cfg->checkpoint non-empty: opens that directory; else synthetic from cfg->seed.
// cfg must outlive the ep_weights.
ep_status ep_weights_open(const ep_model_cfg *cfg, ep_weights **out);
void ep_weights_free(ep_weights *w);
// Reads one tensor as fp32 into dst (prod(shape) floats), checking its shape.
// An F8_E4M3 tensor X of an FP8 checkpoint (cfg->quant EP_QUANT_FP8_BLOCK)
// is dequantized with X_scale_inv (dtype.h, ep_fp8_block_dequant); an FP8
// tensor without that config, or without its scales, is refused by name.
ep_status ep_weights_read_f32(ep_weights *w, const char *name, int ndim, const int64_t *shape,
                              float *dst);
// A 2-D tensor [rows, cols] as a matrix stored in `want` (EP_DTYPE_F32,
// EP_DTYPE_BF16, or EP_DTYPE_AUTO: BF16 when the checkpoint stores it in
// BF16 or FP8 -- dequantized in fp32, then rounded once to BF16 -- else F32).
// A checkpoint tensor already in that dtype (and aligned for it) is not
// copied: out->data points into the mapping, valid while w lives. Anything
// else is an owned copy (BF16: rounded to nearest even, exact for BF16
// values). Free with ep_mat_free.
ep_status ep_weights_read_mat(ep_weights *w, const char *name, int64_t rows, int64_t cols,
                              ep_dtype want, ep_mat *out);
// The dtype the source stores `name` in (synthetic weights: F32).
ep_status ep_weights_stored_dtype(ep_weights *w, const char *name, ep_dtype *out);
// What EP_DTYPE_AUTO (*dt; any other value is left alone) stands for in this
// source: BF16 when the checkpoint stores the first MoE layer's first routed
// expert (expert) in BF16 or FP8, or the embedding (dense) in BF16 or is an
// FP8 checkpoint, else F32. For callers that need the storage before the
// model is built (tolerances, reports).
ep_status ep_weights_expert_dtype(ep_weights *w, ep_dtype *dt);
ep_status ep_weights_dense_dtype(ep_weights *w, ep_dtype *dt);

// Read accounting: the successful ep_weights_read_f32 calls so far, in the
// source's bytes (a checkpoint: the tensor as stored, e.g. 2 bytes a value
// for BF16, 1 for FP8 plus its block scales; synthetic: the fp32 values
// generated). A tensor read twice (the reference's copy of every expert, a
// re-placement) counts twice.
typedef struct {
    int64_t tensors;
    uint64_t bytes;
} ep_weights_stats;
void ep_weights_get_stats(const ep_weights *w, ep_weights_stats *out);
// Called after every successful read with the tensor's name and the totals
// including it (loading progress, tests that check what a rank reads). One
// hook per ep_weights: setting one returns the previous (old_fn, old_user may
// be NULL), which a temporary hook should call too and restore when done.
typedef void (*ep_weights_read_fn)(void *user, const char *name, const ep_weights_stats *total);
void ep_weights_set_read_hook(ep_weights *w, ep_weights_read_fn fn, void *user,
                              ep_weights_read_fn *old_fn, void **old_user);

// ---- synthetic weights and inputs ----------------------------------------
// The generator behind synthetic checkpoints. Values are a pure function of
// (cfg->seed, name, shape) and BF16-rounded, so generating in memory and
// reading a make-model checkpoint give identical floats. (Gates also read
// cfg's k_base and topk_method / n_group, which place the hot experts.)
//
// Gates are structured so routing looks like real models' (see
// docs/synthetic.md): per MoE layer a few globally hot experts, a hot set per
// input domain, and per-token score concentration that varies from peaked to
// flat. ep_synth_hidden() draws inputs that exercise that structure.
#define EP_SYNTH_N_DOMAINS 4 // 0 general, 1 math, 2 code, 3 chat
void ep_synth_tensor(const ep_model_cfg *cfg, const char *name, int ndim, const int64_t *shape,
                     float *dst);
// The MoE-layer input (post-attention-norm hidden state) of token `token` (a
// global index) at `layer` for `domain`, stream `seed`: hidden floats.
void ep_synth_hidden(const ep_model_cfg *cfg, uint64_t seed, int layer, int domain, int64_t token,
                     float *x);

// Small deterministic RNG (splitmix64 seeding + xoshiro256**), for all
// generated data in epserve so that runs are reproducible across ranks.
typedef struct {
    uint64_t s[4];
} ep_rng;
void ep_rng_seed(ep_rng *r, uint64_t seed);
uint64_t ep_rng_next(ep_rng *r);
double ep_rng_uniform(ep_rng *r);                              // [0, 1)
double ep_rng_normal(ep_rng *r);                               // N(0, 1)
uint64_t ep_hash64(const void *data, size_t n, uint64_t seed); // FNV-1a then splitmix finalizer

// ---- synthetic checkpoints (common/synth_ckpt.c) ---------------------------
// Ids of the synthetic tokenizer's special tokens, which it puts at the top
// of the vocabulary (model/tokenizer_synth.c, docs/tokenizer.md). Qwen3:
// <|endoftext|> vocab-3 (bos and pad, as Qwen3's configs), <|im_start|>
// vocab-2, <|im_end|> vocab-1 (eos); DeepSeek-V2: <｜begin▁of▁sentence｜>
// vocab-2 (bos), <｜end▁of▁sentence｜> vocab-1 (eos, and pad as its
// tokenizer_config has it). im_start -1 for DeepSeek-V2.
typedef struct {
    int bos, eos, pad, im_start;
} ep_synth_special_ids;
void ep_synth_special_ids_of(const ep_model_cfg *cfg, ep_synth_special_ids *ids);

// What a synthetic checkpoint holds (or would hold) for cfg in dtype.
typedef struct {
    int64_t n_tensors;    // of the model's layout
    int64_t n_scales;     // FP8 block-scale tensors besides them (F8_E4M3 only)
    uint64_t total_bytes; // tensor data, as the index's metadata.total_size
    int n_shards;         // model-0000S-of-0000N.safetensors files written
} ep_synth_ckpt_info;
// Sizes the checkpoint without generating anything (dtype BF16, F32 or F8_E4M3).
void ep_synth_checkpoint_size(const ep_model_cfg *cfg, ep_dtype dtype, ep_synth_ckpt_info *info);
// Writes every tensor of ep_model_for_each_tensor with its synthetic values
// into dir in the HF layout: n_shards (>= 1) safetensors files
// model-0000S-of-0000N.safetensors balanced by bytes, model.safetensors.index.json
// and config.json (with "epserve_seed", torch_dtype naming dtype, and the
// synthetic tokenizer's bos / eos ids). dtype: EP_DTYPE_BF16 (the values are
// BF16-exact), EP_DTYPE_F32, or EP_DTYPE_F8_E4M3: an FP8 checkpoint as the
// published ones, for a cfg with quant EP_QUANT_FP8_BLOCK (and only then):
// each ep_model_tensor_is_fp8 weight in e4m3 codes (ep_fp8_block_quant of
// its BF16 values) followed by "<name>_scale_inv" (F32, in the same shard),
// everything else BF16, config.json with its quantization_config.
// Atomic: everything goes to "<dir>.tmp.<pid>",
// renamed to dir at the end and removed on failure. Refuses a dir that exists
// and is not empty. Memory: one shard's tensors at a time.
ep_status ep_synth_write_checkpoint(const ep_model_cfg *cfg, const char *dir, int n_shards,
                                    ep_dtype dtype);
// The same, refusing checkpoints above max_bytes (0: no limit); info (may be
// NULL) receives what was written.
ep_status ep_synth_write_checkpoint_ex(const ep_model_cfg *cfg, const char *dir, int n_shards,
                                       ep_dtype dtype, uint64_t max_bytes,
                                       ep_synth_ckpt_info *info);

#endif
