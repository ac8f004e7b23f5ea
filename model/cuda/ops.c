// Host side of the model's device ops: argument checks that name what is
// wrong, the cuBLAS call of the dense products, the rotary table and KV pool
// allocations, and the kernel launches (ops_kernels.cu). Allocates only in
// the *_init functions; every op only enqueues on its stream.
#include "model/cuda/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/cuda_util.h"
#include "experts/cuda/kernels.h"
#include "model/cuda/ops_kernels.h"

#define LAUNCH_ST(call, what)                                                                      \
    do {                                                                                           \
        ep_status st_ = EP_CUDA_ST(call);                                                          \
        if (st_) return ep_error_prefix(st_, "%s", what);                                          \
    } while (0)

// ---- elementwise and norms ----------------------------------------------------------

ep_status ep_mops_embed(const uint16_t *embed, int V, int H, const int *ids, int T, float *x,
                        cudaStream_t stream)
{
    if (V < 1 || H < 1 || T < 0)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_embed: vocab %d, hidden %d, tokens %d, expected "
                         "vocab >= 1, hidden >= 1, tokens >= 0",
                         V, H, T);
    if (T == 0) return EP_OK;
    LAUNCH_ST(ep_mops_embed_launch(embed, V, H, ids, T, x, stream), "ep_mops_embed");
    return EP_OK;
}

ep_status ep_mops_rmsnorm(const float *x, int ldx, const float *w, int rows, int n, float eps,
                          float *out, int ldo, cudaStream_t stream)
{
    if (n < 1 || rows < 0 || ldx < n || ldo < n)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_rmsnorm: %d rows of %d (strides %d, %d), expected "
                         "rows >= 0, n >= 1 and strides >= n",
                         rows, n, ldx, ldo);
    if (rows == 0) return EP_OK;
    LAUNCH_ST(ep_mops_rmsnorm_launch(x, ldx, w, rows, n, eps, out, ldo, stream), "ep_mops_rmsnorm");
    return EP_OK;
}

ep_status ep_mops_add(float *x, const float *y, int64_t n, cudaStream_t stream)
{
    if (n < 0) return ep_errorf(EP_ERR_ARG, "ep_mops_add: %lld elements", (long long)n);
    if (n == 0) return EP_OK;
    LAUNCH_ST(ep_mops_add_launch(x, y, n, stream), "ep_mops_add");
    return EP_OK;
}

ep_status ep_mops_silu_mul(const float *g, const float *u, int64_t n, float *out,
                           cudaStream_t stream)
{
    if (n < 0) return ep_errorf(EP_ERR_ARG, "ep_mops_silu_mul: %lld elements", (long long)n);
    if (n == 0) return EP_OK;
    LAUNCH_ST(ep_mops_silu_mul_launch(g, u, n, out, stream), "ep_mops_silu_mul");
    return EP_OK;
}

// ---- RoPE -------------------------------------------------------------------------------

ep_status ep_mops_rope_init(ep_mops_rope *r, const ep_rope *host, cudaStream_t stream)
{
    memset(r, 0, sizeof *r);
    if (host->dim < 2 || host->dim % 2 || host->dim > EP_ROPE_MAX_DIM)
        return ep_errorf(EP_ERR_ARG, "ep_mops_rope_init: rotary dim %d, expected even, 2..%d",
                         host->dim, EP_ROPE_MAX_DIM);
    const size_t bytes = (size_t)(host->dim / 2) * sizeof(float);
    ep_status st = EP_CUDA_ST(cudaMalloc((void **)&r->inv_freq, bytes));
    if (st) return ep_error_prefix(st, "ep_mops_rope_init: %zu bytes", bytes);
    st = ep_cuda_copy_cls(r->inv_freq, host->inv_freq, bytes, cudaMemcpyHostToDevice, stream,
                          EP_COPY_LOAD, "rope inv_freq");
    if (st) {
        ep_mops_rope_free(r);
        return st;
    }
    r->dim = host->dim;
    r->interleaved = host->interleaved;
    r->cs_scale = host->cs_scale;
    return EP_OK;
}

void ep_mops_rope_free(ep_mops_rope *r)
{
    if (!r) return;
    if (r->inv_freq) cudaFree(r->inv_freq);
    memset(r, 0, sizeof *r);
}

ep_status ep_mops_rope_apply(const ep_mops_rope *r, float *x, int T, int ld, int heads, int off,
                             int head_stride, const int *pos, cudaStream_t stream)
{
    if (T < 0 || heads < 0 || off < 0 || head_stride < 0 ||
        (heads > 0 && off + (heads - 1) * head_stride + r->dim > ld))
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_rope_apply: %d heads of %d dims at offset %d, "
                         "stride %d, do not fit a row of %d floats",
                         heads, r->dim, off, head_stride, ld);
    if (T == 0 || heads == 0) return EP_OK;
    LAUNCH_ST(ep_mops_rope_launch(r->inv_freq, r->dim, r->interleaved, r->cs_scale, x, T, ld, heads,
                                  off, head_stride, pos, stream),
              "ep_mops_rope_apply");
    return EP_OK;
}

// ---- dense products ------------------------------------------------------------------------

// cublasSetStream only when the handle is on another stream: the call
// resets a workspace set with cublasSetWorkspace, which CUDA Graph capture
// needs (model/forward_cuda.c, cuda_graph 2). The emulated cuBLAS has no
// cublasGetStream and no capture.
static cublasStatus_t blas_stream(cublasHandle_t blas, cudaStream_t stream)
{
#if !defined(EP_CUDA_EMU)
    cudaStream_t cur = NULL;
    if (cublasGetStream(blas, &cur) == CUBLAS_STATUS_SUCCESS && cur == stream)
        return CUBLAS_STATUS_SUCCESS;
#endif
    return cublasSetStream(blas, stream);
}

ep_status ep_mops_linear(cublasHandle_t blas, int M, int N, int K, const float *A,
                         const uint16_t *W, float beta, float *C, int ldc, uint16_t *a_bf16,
                         cudaStream_t stream)
{
    if (M < 0 || N < 1 || K < 1 || ldc < N)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_linear: M %d, N %d, K %d, ldc %d, expected M >= 0, "
                         "N, K >= 1, ldc >= N",
                         M, N, K, ldc);
    if (M == 0) return EP_OK;
    // A rounded to BF16 as ep_dense_mm rounds it for a BF16 matrix.
    LAUNCH_ST(ep_cuda_f32_to_bf16(A, (int64_t)M * K, a_bf16, stream), "ep_mops_linear: A to bf16");
    EP_CUBLAS_CHECK(blas_stream(blas, stream));
    // Column-major: C^T [N, M] = W [N, K] (stored as W^T [K, N]) op T times
    // A^T [K, M]; so row t of C is A[t] . W^T.
    const float one = 1.0f;
    EP_CUBLAS_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, W, CUDA_R_16BF, K,
                                 a_bf16, CUDA_R_16BF, K, &beta, C, CUDA_R_32F, ldc,
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return EP_OK;
}

// ---- paged KV cache and attention ------------------------------------------------------

ep_status ep_mops_kv_init(ep_mops_kv *kv, int n_layers, int row, int block_tokens, int n_blocks,
                          int max_seqs, int max_blocks)
{
    memset(kv, 0, sizeof *kv);
    if (n_layers < 1 || row < 1 || block_tokens < 1 || n_blocks < 1 || max_seqs < 1 ||
        max_blocks < 1)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_kv_init: layers %d, row %d, block_tokens %d, "
                         "blocks %d, seqs %d, blocks per seq %d, expected all >= 1",
                         n_layers, row, block_tokens, n_blocks, max_seqs, max_blocks);
    const size_t pool = (size_t)n_blocks * n_layers * block_tokens * row * sizeof(uint16_t);
    const size_t table = (size_t)max_seqs * max_blocks * sizeof(int);
    ep_status st = EP_CUDA_ST(cudaMalloc((void **)&kv->pool, pool));
    if (!st) st = EP_CUDA_ST(cudaMalloc((void **)&kv->table, table));
    if (st) {
        ep_mops_kv_free(kv);
        return ep_error_prefix(st, "ep_mops_kv_init: pool of %zu bytes, table of %zu", pool, table);
    }
    kv->n_layers = n_layers;
    kv->row = row;
    kv->block_tokens = block_tokens;
    kv->n_blocks = n_blocks;
    kv->max_seqs = max_seqs;
    kv->max_blocks = max_blocks;
    return EP_OK;
}

void ep_mops_kv_free(ep_mops_kv *kv)
{
    if (!kv) return;
    if (kv->pool) cudaFree(kv->pool);
    if (kv->table) cudaFree(kv->table);
    memset(kv, 0, sizeof *kv);
}

static ep_mops_kv_geom geom(const ep_mops_kv *kv)
{
    return (ep_mops_kv_geom){.n_layers = kv->n_layers,
                             .row = kv->row,
                             .block_tokens = kv->block_tokens,
                             .max_blocks = kv->max_blocks,
                             .pool = kv->pool,
                             .table = kv->table};
}

ep_status ep_mops_kv_write(ep_mops_kv *kv, int layer, const float *src, int lds, int n, int off,
                           int T, const int *seq, const int *pos, cudaStream_t stream)
{
    if (layer < 0 || layer >= kv->n_layers || n < 0 || off < 0 || off + n > kv->row || lds < n ||
        T < 0)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_kv_write: layer %d of %d, %d floats at offset %d of "
                         "a %d-float row (source stride %d), %d tokens",
                         layer, kv->n_layers, n, off, kv->row, lds, T);
    if (T == 0 || n == 0) return EP_OK;
    LAUNCH_ST(ep_mops_kv_write_launch(geom(kv), layer, src, lds, n, off, T, seq, pos, stream),
              "ep_mops_kv_write");
    return EP_OK;
}

ep_status ep_mops_attention(const ep_mops_kv *kv, int layer, const ep_mops_attn_shape *s,
                            const float *q, int ldq, int T, const int *seq, const int *pos,
                            float *out, int ldo, cudaStream_t stream)
{
    if (layer < 0 || layer >= kv->n_layers || T < 0)
        return ep_errorf(EP_ERR_ARG, "ep_mops_attention: layer %d of %d, %d tokens", layer,
                         kv->n_layers, T);
    if (s->heads < 1 || s->group < 1 || s->heads % s->group || s->dk < 1 || s->dv < 1 ||
        s->dk > EP_MOPS_ATTN_MAX_DK || s->dv > EP_MOPS_ATTN_MAX_DK)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_attention: %d heads in groups of %d, dk %d, dv %d, "
                         "expected groups dividing heads and dk, dv in 1..%d",
                         s->heads, s->group, s->dk, s->dv, EP_MOPS_ATTN_MAX_DK);
    const int kv_heads = s->heads / s->group;
    if (s->koff < 0 || s->voff < 0 || s->kstride < 0 || s->vstride < 0 ||
        s->koff + (kv_heads - 1) * s->kstride + s->dk > kv->row ||
        s->voff + (kv_heads - 1) * s->vstride + s->dv > kv->row)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_attention: %d kv heads (keys %d floats at %d + h * "
                         "%d, values %d at %d + h * %d) do not fit a %d-float cache row",
                         kv_heads, s->dk, s->koff, s->kstride, s->dv, s->voff, s->vstride, kv->row);
    if (ldq < s->heads * s->dk || ldo < s->heads * s->dv)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_attention: row strides q %d, out %d, expected >= "
                         "%d and >= %d",
                         ldq, ldo, s->heads * s->dk, s->heads * s->dv);
    if (T == 0) return EP_OK;
    LAUNCH_ST(ep_mops_attention_launch(geom(kv), layer, s->heads, s->group, s->dk, s->dv, s->koff,
                                       s->kstride, s->voff, s->vstride, s->scale, q, ldq, T, seq,
                                       pos, out, ldo, stream),
              "ep_mops_attention");
    return EP_OK;
}

// ---- MLA absorbed form ---------------------------------------------------------------------

static ep_status mla_check(const char *fn, const ep_mops_mla *s, int T)
{
    if (s->heads < 1 || s->nope < 1 || s->rope < 0 || s->v < 1 || s->kv_lora < 1 || T < 0)
        return ep_errorf(EP_ERR_ARG,
                         "%s: heads %d, nope %d, rope %d, v %d, kv_lora %d, tokens "
                         "%d, expected rope, tokens >= 0 and the others >= 1",
                         fn, s->heads, s->nope, s->rope, s->v, s->kv_lora, T);
    return EP_OK;
}

ep_status ep_mops_mla_absorb_q(cublasHandle_t blas, const ep_mops_mla *s, int T, const float *q,
                               const uint16_t *wkv_b, float *qa, uint16_t *q_bf16,
                               cudaStream_t stream)
{
    ep_status st = mla_check("ep_mops_mla_absorb_q", s, T);
    if (st || T == 0) return st;
    const int R = s->kv_lora, qhd = s->nope + s->rope, qw = R + s->rope, kvb = s->nope + s->v;
    LAUNCH_ST(ep_cuda_f32_to_bf16(q, (int64_t)T * s->heads * qhd, q_bf16, stream),
              "ep_mops_mla_absorb_q: q to bf16");
    EP_CUBLAS_CHECK(blas_stream(blas, stream));
    // Column-major, head h: qa_h^T [R, T] (ld heads * qw) = W_UK_h^T [R,
    // nope] (W_UK_h row-major [nope, R] read as column-major, ld R) times
    // q_nope_h^T [nope, T] (ld heads * qhd).
    const float one = 1.0f, zero = 0.0f;
    EP_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        blas, CUBLAS_OP_N, CUBLAS_OP_N, R, T, s->nope, &one, wkv_b, CUDA_R_16BF, R,
        (long long)kvb * R, q_bf16, CUDA_R_16BF, s->heads * qhd, qhd, &zero, qa, CUDA_R_32F,
        s->heads * qw, qw, s->heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (s->rope > 0)
        LAUNCH_ST(ep_mops_copy_heads_launch(q + s->nope, s->heads * qhd, qhd, qa + R, s->heads * qw,
                                            qw, T, s->heads, s->rope, stream),
                  "ep_mops_mla_absorb_q: q_pe");
    return EP_OK;
}

ep_status ep_mops_mla_unabsorb(cublasHandle_t blas, const ep_mops_mla *s, int T, const float *o_lat,
                               const uint16_t *wkv_b, float *out, int ldo, uint16_t *o_bf16,
                               cudaStream_t stream)
{
    ep_status st = mla_check("ep_mops_mla_unabsorb", s, T);
    if (st) return st;
    if (ldo < s->heads * s->v)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_mla_unabsorb: output row stride %d, expected >= "
                         "heads * v_head_dim = %d",
                         ldo, s->heads * s->v);
    if (T == 0) return EP_OK;
    const int R = s->kv_lora, kvb = s->nope + s->v;
    LAUNCH_ST(ep_cuda_f32_to_bf16(o_lat, (int64_t)T * s->heads * R, o_bf16, stream),
              "ep_mops_mla_unabsorb: latent to bf16");
    EP_CUBLAS_CHECK(blas_stream(blas, stream));
    // Column-major, head h: out_h^T [v, T] (ld ldo) = W_UV_h [v, R] (row-major
    // [v, R] is column-major [R, v], ld R, taken transposed) times o_h^T [R,
    // T] (ld heads * R).
    const float one = 1.0f, zero = 0.0f;
    EP_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        blas, CUBLAS_OP_T, CUBLAS_OP_N, s->v, T, R, &one, wkv_b + (size_t)s->nope * R, CUDA_R_16BF,
        R, (long long)kvb * R, o_bf16, CUDA_R_16BF, s->heads * R, R, &zero, out, CUDA_R_32F, ldo,
        s->v, s->heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return EP_OK;
}

// ---- sampling ------------------------------------------------------------------------------

ep_status ep_mops_argmax(const float *logits, int rows, int V, int ld, int *ids,
                         cudaStream_t stream)
{
    if (rows < 0 || V < 1 || ld < V)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_argmax: %d rows of %d logits (stride %d), expected "
                         "rows >= 0, vocab >= 1, stride >= vocab",
                         rows, V, ld);
    if (rows == 0) return EP_OK;
    LAUNCH_ST(ep_mops_argmax_launch(logits, rows, V, ld, ids, stream), "ep_mops_argmax");
    return EP_OK;
}

ep_status ep_mops_sample_row_check(const ep_mops_sample_row *r)
{
    if (!(r->temperature >= 0.0f) || !isfinite(r->temperature))
        return ep_errorf(EP_ERR_ARG,
                         "device sampling: temperature %g, expected a finite value "
                         ">= 0",
                         (double)r->temperature);
    if (!(r->top_p > 0.0f && r->top_p <= 1.0f))
        return ep_errorf(EP_ERR_ARG, "device sampling: top_p %g, expected a value in (0, 1]",
                         (double)r->top_p);
    if (!(r->u >= 0.0 && r->u < 1.0))
        return ep_errorf(EP_ERR_ARG, "device sampling: uniform draw %g, expected [0, 1)", r->u);
    if (r->top_k < 0)
        return ep_errorf(EP_ERR_ARG, "device sampling: top_k %d, expected >= 0", r->top_k);
    const bool greedy = r->temperature == 0.0f || r->top_k == 1;
    if (!greedy && (r->top_k == 0 || r->top_k > EP_MOPS_TOPK_MAX))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "device sampling: top_k %d, the device keeps 1..%d "
                         "tokens (sample from a logits copy on the host instead)",
                         r->top_k, EP_MOPS_TOPK_MAX);
    return EP_OK;
}

ep_status ep_mops_sample_topk(const float *logits, int rows, int V, int ld,
                              const ep_mops_sample_row *prm, int *ids, cudaStream_t stream)
{
    if (rows < 0 || V < 1 || ld < V)
        return ep_errorf(EP_ERR_ARG,
                         "ep_mops_sample_topk: %d rows of %d logits (stride %d), "
                         "expected rows >= 0, vocab >= 1, stride >= vocab",
                         rows, V, ld);
    if (rows == 0) return EP_OK;
    LAUNCH_ST(ep_mops_sample_topk_launch(logits, rows, V, ld, prm, ids, stream),
              "ep_mops_sample_topk");
    return EP_OK;
}
