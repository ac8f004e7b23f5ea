// Launchers of the model's device-op kernels (model/cuda/ops_kernels.cu),
// callable from C; model/cuda/ops.c checks the arguments and turns the
// launch status into an ep_status. BF16 values travel as uint16_t. Private
// to ep_model_cuda.
#ifndef EP_MODEL_CUDA_OPS_KERNELS_H
#define EP_MODEL_CUDA_OPS_KERNELS_H

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Threads of the attention kernel's block and keys of one of its tiles.
#define EP_MOPS_ATTN_THREADS 64
// Widest query / value row of an attention call (kv_lora 512 + rope 64 fits).
#define EP_MOPS_ATTN_MAX_DK 1024

cudaError_t ep_mops_embed_launch(const uint16_t *embed, int V, int H, const int *ids, int T,
                                 float *x, cudaStream_t stream);
cudaError_t ep_mops_rmsnorm_launch(const float *x, int ldx, const float *w, int rows, int n,
                                   float eps, float *out, int ldo, cudaStream_t stream);
cudaError_t ep_mops_add_launch(float *x, const float *y, int64_t n, cudaStream_t stream);
cudaError_t ep_mops_silu_mul_launch(const float *g, const float *u, int64_t n, float *out,
                                    cudaStream_t stream);
cudaError_t ep_mops_rope_launch(const float *inv_freq, int dim, int interleaved, float cs_scale,
                                float *x, int T, int ld, int heads, int off, int head_stride,
                                const int *pos, cudaStream_t stream);

// Geometry of the paged pool, as ep_mops_kv holds it.
typedef struct {
    int n_layers, row, block_tokens, max_blocks;
    uint16_t *pool;
    const int *table;
} ep_mops_kv_geom;

cudaError_t ep_mops_kv_write_launch(ep_mops_kv_geom g, int layer, const float *src, int lds, int n,
                                    int off, int T, const int *seq, const int *pos,
                                    cudaStream_t stream);
cudaError_t ep_mops_attention_launch(ep_mops_kv_geom g, int layer, int heads, int group, int dk,
                                     int dv, int koff, int kstride, int voff, int vstride,
                                     float scale, const float *q, int ldq, int T, const int *seq,
                                     const int *pos, float *out, int ldo, cudaStream_t stream);
// dst[t * ldd + h * dsh + i] = src[t * lds + h * ssh + i], i < n, h < heads,
// t < T: a block of columns of every head (MLA's q_pe into the absorbed q).
cudaError_t ep_mops_copy_heads_launch(const float *src, int lds, int ssh, float *dst, int ldd,
                                      int dsh, int T, int heads, int n, cudaStream_t stream);
// Most tokens device sampling keeps (top_k); a larger or unlimited top_k
// samples on the host from a logits copy.
#define EP_MOPS_TOPK_MAX 256

// One row's sampling parameters on the device (ep_sample_params' subset
// without logits processors) and the uniform draw in [0, 1) the host's RNG
// gave for it (ep_rng_uniform of the request's stream; none for greedy).
typedef struct {
    float temperature; // 0: greedy
    int top_k;         // 1..EP_MOPS_TOPK_MAX (1: greedy); 0 only when greedy
    float top_p;       // (0, 1]
    int pad_;          // keeps u 8-byte aligned, the same layout in C and C++
    double u;
} ep_mops_sample_row;

cudaError_t ep_mops_sample_topk_launch(const float *logits, int rows, int V, int ld,
                                       const ep_mops_sample_row *prm, int *ids,
                                       cudaStream_t stream);
cudaError_t ep_mops_argmax_launch(const float *logits, int rows, int V, int ld, int *ids,
                                  cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
