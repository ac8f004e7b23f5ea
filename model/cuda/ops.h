// The model's device ops (issue 20, first layer): what the forward needs
// besides the experts, on device memory, BF16 storage and fp32 accumulation,
// each the device form of a CPU routine it is tested against
// (tests/cuda/test_cuda_model_ops.c). model/forward_cuda.c (the model
// backend cuda, model/backend.h) drives them (docs/cuda.md, "The device
// forward"). Every op only enqueues on `stream`; pointers are device
// pointers unless said otherwise. Needs nothing of ep_model (the link goes
// one way: ep_model -> ep_model_cuda).
#ifndef EP_MODEL_CUDA_OPS_H
#define EP_MODEL_CUDA_OPS_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/ep.h"
#include "model/cuda/ops_kernels.h"
#include "model/rope.h"

// ---- elementwise and norms ----------------------------------------------------

// x[t, :] = embed[ids[t], :] widened to fp32 (exact), t < T. embed: [V, H]
// bf16; ids: [T] on the device, checked by the host before upload (an id
// outside [0, V) gives a row of NaN, which any comparison catches).
ep_status ep_mops_embed(const uint16_t *embed, int V, int H, const int *ids, int T, float *x,
                        cudaStream_t stream);

// RMSNorm of rows (ep_model_rmsnorm): out[r] = x[r] / sqrt(mean(x[r]^2) +
// eps) * w, fp32. Row r of x starts at x + r * ldx, of out at out + r * ldo
// (out may be x). Qwen3's per-head q/k norm: rows = tokens * heads, n =
// head_dim, ld = head_dim.
ep_status ep_mops_rmsnorm(const float *x, int ldx, const float *w, int rows, int n, float eps,
                          float *out, int ldo, cudaStream_t stream);

// x[i] += y[i], i < n (the residual adds).
ep_status ep_mops_add(float *x, const float *y, int64_t n, cudaStream_t stream);

// out[i] = silu(g[i]) * u[i], i < n (ep_dense_swiglu; out may alias g or u).
ep_status ep_mops_silu_mul(const float *g, const float *u, int64_t n, float *out,
                           cudaStream_t stream);

// ---- RoPE -----------------------------------------------------------------------

// A model's rotary table on the device: ep_rope's inv_freq uploaded once.
typedef struct {
    int dim;
    bool interleaved;
    float cs_scale;
    float *inv_freq; // [dim / 2] on the device
} ep_mops_rope;

ep_status ep_mops_rope_init(ep_mops_rope *r, const ep_rope *host, cudaStream_t stream);
void ep_mops_rope_free(ep_mops_rope *r); // NULL ok

// Rotates, for t < T and h < heads, the dim floats at x + t * ld + off + h *
// head_stride by position pos[t] ([T] on the device), as ep_rope_table +
// ep_rope_rotate do (cos and sin of the fp32 angle in double, times
// cs_scale). Qwen3: off 0, head_stride head_dim; MLA q_pe: off nope,
// head_stride nope + rope; MLA k_pe: heads 1, off kv_lora.
ep_status ep_mops_rope_apply(const ep_mops_rope *r, float *x, int T, int ld, int heads, int off,
                             int head_stride, const int *pos, cudaStream_t stream);

// ---- dense products ----------------------------------------------------------------

// C[M, N] = A[M, K] . W^T + beta * C with W [N, K] bf16 (HF's [out, in]),
// A fp32 ([M, K] contiguous, as every product of the forward reads it)
// rounded to bf16 first into a_bf16 ([M, K] scratch), as the CPU's
// ep_dense_mm does for a BF16 matrix; cublasGemmEx with fp32 compute and an
// fp32 C of row stride ldc (floats). beta == 0 never reads C. M == 0: nothing.
ep_status ep_mops_linear(cublasHandle_t blas, int M, int N, int K, const float *A,
                         const uint16_t *W, float beta, float *C, int ldc, uint16_t *a_bf16,
                         cudaStream_t stream);

// ---- paged KV cache and attention -------------------------------------------------

// The device pool of a paged KV cache in the host ep_kv's layout
// ([n_blocks][n_layers][block_tokens][row] bf16, block ids from the host's
// bookkeeping), and the block tables of the sequences a step touches.
typedef struct {
    int n_layers, row, block_tokens, n_blocks;
    int max_blocks; // per sequence: the row length of table
    uint16_t *pool; // [n_blocks * n_layers * block_tokens * row] bf16
    int *table;     // [max_seqs, max_blocks] block ids, uploaded by the caller
    int max_seqs;
} ep_mops_kv;

// Allocates pool and table (pool poisoned as fresh device memory is).
ep_status ep_mops_kv_init(ep_mops_kv *kv, int n_layers, int row, int block_tokens, int n_blocks,
                          int max_seqs, int max_blocks);
void ep_mops_kv_free(ep_mops_kv *kv); // NULL ok

// cache row (seq[t], layer, pos[t])[off + i] = bf16(src[t * lds + i]) for i
// < n, t < T (seq, pos: [T] on the device). The blocks must be in the table.
ep_status ep_mops_kv_write(ep_mops_kv *kv, int layer, const float *src, int lds, int n, int off,
                           int T, const int *seq, const int *pos, cudaStream_t stream);

// The shape of one attention call: query head h reads kv head h / group;
// its key is dk floats at cache row + koff + kvh * kstride, its value dv
// floats at row + voff + kvh * vstride. Qwen3 GQA: group nh / nkv, dk = dv
// = head_dim, koff 0, voff nkv * hd, kstride = vstride = hd. MLA absorbed:
// group nh, koff = voff = 0, dk kv_lora + rope, dv kv_lora.
typedef struct {
    int heads, group, dk, dv, koff, kstride, voff, vstride;
    float scale; // multiplies q.k before the softmax
} ep_mops_attn_shape;

// Causal attention of T new tokens over the cache: token t (sequence
// seq[t], position pos[t], whose rows 0..pos[t] are in the cache, its own
// included) attends to positions 0..pos[t]. Query of (t, head h) at q + t *
// ldq + h * dk; its output at out + t * ldo + h * dv. dk, dv at most
// EP_MOPS_ATTN_MAX_DK (1024). Prefill (causal), chunked prefill after cached
// tokens and decode of several sequences of different lengths are all this
// one call. fp32 online softmax, bf16 cache.
ep_status ep_mops_attention(const ep_mops_kv *kv, int layer, const ep_mops_attn_shape *s,
                            const float *q, int ldq, int T, const int *seq, const int *pos,
                            float *out, int ldo, cudaStream_t stream);

// ---- MLA absorbed form (DeepSeek-V2) ------------------------------------------------

// One MLA layer's widths.
typedef struct {
    int heads, nope, rope, v, kv_lora;
} ep_mops_mla;

// The attention's queries in the absorbed form (model/attn.c's mla_task):
// qa[t, h] = [W_UK_h^T q_nope[t, h] | q_pe[t, h]], kv_lora + rope floats,
// row t at qa + t * heads * (kv_lora + rope). q: [T, heads * (nope + rope)]
// fp32, q_pe already roped; wkv_b: [heads * (nope + v), kv_lora] bf16, head
// h's rows W_UK_h [nope, kv_lora] then W_UV_h [v, kv_lora]. q is rounded to
// bf16 into q_bf16 ([T, heads * (nope + rope)] scratch); one strided
// batched GEMM over the heads (fp32 compute and output), one copy of q_pe.
ep_status ep_mops_mla_absorb_q(cublasHandle_t blas, const ep_mops_mla *s, int T, const float *q,
                               const uint16_t *wkv_b, float *qa, uint16_t *q_bf16,
                               cudaStream_t stream);

// The output unfolded: out[t, h * v ..] = W_UV_h o_lat[t, h] for o_lat [T,
// heads * kv_lora] fp32 (ep_mops_attention with dv = kv_lora), out row
// stride ldo >= heads * v. o_lat is rounded to bf16 into o_bf16 ([T, heads
// * kv_lora] scratch); one strided batched GEMM over the heads.
ep_status ep_mops_mla_unabsorb(cublasHandle_t blas, const ep_mops_mla *s, int T, const float *o_lat,
                               const uint16_t *wkv_b, float *out, int ldo, uint16_t *o_bf16,
                               cudaStream_t stream);

// ---- sampling ------------------------------------------------------------------------

// ids[r] = argmax of logits[r, :V] (row stride ld), NaN counting as -inf,
// the lowest id on ties: ep_sampler's greedy choice, r < rows.
ep_status ep_mops_argmax(const float *logits, int rows, int V, int ld, int *ids,
                         cudaStream_t stream);

// Greedy, temperature, top-k and top-p on the device with ep_sampler's
// rules and arithmetic (kept set in the sampler's order, probabilities in
// double, the first token whose cumulative probability exceeds the row's
// u): ids[r] is what ep_sampler_sample gives for row r's logits when its
// RNG draws prm[r].u, for samplers without logits processors and with
// top_k <= EP_MOPS_TOPK_MAX (a wider or unlimited top_k, or a processor:
// copy the logits and sample on the host). prm: [rows] on the device,
// checked by ep_mops_sample_row_check before the upload (a bad row gets id
// -1). Equal to the host's token except where u falls within the last bits
// of a cumulative boundary (the device's exp may differ from libm's by an
// ulp).
ep_status ep_mops_sample_topk(const float *logits, int rows, int V, int ld,
                              const ep_mops_sample_row *prm, int *ids, cudaStream_t stream);
// EP_ERR_ARG naming the parameter and its value when temperature, top_p or
// u is out of range; EP_ERR_UNSUPPORTED when top_k is 0 or above
// EP_MOPS_TOPK_MAX for a non-greedy row (the logits-copy path serves it).
ep_status ep_mops_sample_row_check(const ep_mops_sample_row *r);

#endif
