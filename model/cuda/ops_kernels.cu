// The model's device-op kernels: embedding gather, RMSNorm, residual add,
// SiLU * up, RoPE, the paged KV cache write, attention over the paged cache
// and the greedy argmax. Dense products are cuBLAS's (ops.c). Each has its
// CPU counterpart named in model/cuda/ops.h; no atomics, no warp
// intrinsics (block reductions through shared memory and __syncthreads),
// so the emulated device runs them as they are.
#include <cuda_bf16.h>
#include <math.h>

#include "cluster/cuda/launch.h"
#include "experts/cuda/device_math.h"
#include "model/cuda/ops_kernels.h"

#define EP_THREADS      256
#define EP_NORM_THREADS 128

// Grid-stride loops over int64 indices, as the experts' kernels bound them.
static unsigned ep_blocks(int64_t n)
{
    int64_t b = (n + EP_THREADS - 1) / EP_THREADS;
    if (b < 1) b = 1;
    return (unsigned)(b > 65535 * 8 ? 65535 * 8 : b);
}

#define EP_GRID_STRIDE(i, n)                                                                       \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

// ---- elementwise and norms ---------------------------------------------------------

__global__ void ep_mops_embed_kernel(const uint16_t *embed, int V, int H, const int *ids, int T,
                                     float *x)
{
    EP_GRID_STRIDE(i, (int64_t)T * H)
    {
        const int id = ids[i / H];
        x[i] = id >= 0 && id < V ? ep_ld_bf16(embed, (int64_t)id * H + i % H) : NAN;
    }
}

// Sums v over the block's threads (blockDim.x a power of two <= 1024) in
// red[]; every thread gets the total. Ends with a barrier, so red may be
// reused at once.
static __device__ float ep_block_sum(float v, float *red)
{
    const unsigned t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
        if (t < s) red[t] += red[t + s];
        __syncthreads();
    }
    const float r = red[0];
    __syncthreads();
    return r;
}

// One block per row. Each thread reads its own elements before the
// reduction's barriers and writes the same ones after, so out may be x.
__global__ void ep_mops_rmsnorm_kernel(const float *x, int ldx, const float *w, int n, float eps,
                                       float *out, int ldo)
{
    __shared__ float red[EP_NORM_THREADS];
    const float *xr = x + (int64_t)blockIdx.x * ldx;
    float *o = out + (int64_t)blockIdx.x * ldo;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = ep_block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        o[i] = xr[i] * inv * w[i];
}

__global__ void ep_mops_add_kernel(float *x, const float *y, int64_t n)
{
    EP_GRID_STRIDE(i, n) x[i] += y[i];
}

__global__ void ep_mops_silu_mul_kernel(const float *g, const float *u, int64_t n, float *out)
{
    EP_GRID_STRIDE(i, n) out[i] = ep_silu(g[i]) * u[i];
}

// One thread per (token, head, pair). cos and sin of the fp32 angle in
// double, rounded to fp32 and scaled, as ep_rope_table does; the rotation
// as ep_rope_rotate (pairs (2i, 2i+1) or halves (i, i + dim/2)).
__global__ void ep_mops_rope_kernel(const float *inv_freq, int dim, int interleaved, float cs_scale,
                                    float *x, int T, int ld, int heads, int off, int head_stride,
                                    const int *pos)
{
    const int half = dim / 2;
    EP_GRID_STRIDE(j, (int64_t)T * heads * half)
    {
        const int i = (int)(j % half);
        const int64_t th = j / half, t = th / heads, h = th % heads;
        const float ang = (float)pos[t] * inv_freq[i];
        const float co = (float)cos((double)ang) * cs_scale;
        const float si = (float)sin((double)ang) * cs_scale;
        float *xh = x + t * ld + off + h * head_stride;
        const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        const float a = xh[ia], b = xh[ib];
        xh[ia] = a * co - b * si;
        xh[ib] = b * co + a * si;
    }
}

// ---- paged KV cache -------------------------------------------------------------------

// The cache row of (seq, layer, pos), as ep_kv_row finds it.
static __device__ __forceinline__ int64_t ep_kv_row_at(const ep_mops_kv_geom &g, int seq, int layer,
                                                       int pos)
{
    const int b = g.table[(int64_t)seq * g.max_blocks + pos / g.block_tokens];
    return (((int64_t)b * g.n_layers + layer) * g.block_tokens + pos % g.block_tokens) * g.row;
}

__global__ void ep_mops_kv_write_kernel(ep_mops_kv_geom g, int layer, const float *src, int lds,
                                        int n, int off, int T, const int *seq, const int *pos)
{
    EP_GRID_STRIDE(j, (int64_t)T * n)
    {
        const int64_t t = j / n, i = j % n;
        ep_st_bf16(g.pool, ep_kv_row_at(g, seq[t], layer, pos[t]) + off + i, src[t * lds + i]);
    }
}

// One block per (token, query head); keys in tiles of blockDim.x, one key's
// score per thread, then an online softmax over the tiles (running max and
// sum, as the CPU's ep_kern_softmax_tile) and each thread accumulating its
// value dims d = threadIdx.x + k * blockDim.x in registers. fp32 throughout,
// bf16 cache rows widened on load.
#define EP_ATTN_ACC (EP_MOPS_ATTN_MAX_DK / EP_MOPS_ATTN_THREADS)
__global__ void ep_mops_attention_kernel(ep_mops_kv_geom g, int layer, int heads, int group, int dk,
                                         int dv, int koff, int kstride, int voff, int vstride,
                                         float scale, const float *q, int ldq, const int *seq,
                                         const int *pos, float *out, int ldo)
{
    __shared__ float qs[EP_MOPS_ATTN_MAX_DK];
    __shared__ float p[EP_MOPS_ATTN_THREADS];
    __shared__ float red[EP_MOPS_ATTN_THREADS];
    const int t = blockIdx.x / heads, h = blockIdx.x % heads, kvh = h / group;
    const int tid = threadIdx.x, nt = blockDim.x, sq = seq[t], last = pos[t];
    const float *qh = q + (int64_t)t * ldq + (int64_t)h * dk;
    for (int d = tid; d < dk; d += nt)
        qs[d] = qh[d];
    float acc[EP_ATTN_ACC];
    for (int k = 0; k < EP_ATTN_ACC; k++)
        acc[k] = 0.0f;
    float mx = -INFINITY, sum = 0.0f;
    __syncthreads();
    for (int s0 = 0; s0 <= last; s0 += nt) {
        const int s = s0 + tid, w = last + 1 - s0 < nt ? last + 1 - s0 : nt;
        float sc = -INFINITY;
        if (s <= last) {
            const uint16_t *kr = g.pool + ep_kv_row_at(g, sq, layer, s) + koff + kvh * kstride;
            float dot = 0.0f;
            for (int d = 0; d < dk; d++)
                dot += qs[d] * ep_ld_bf16(kr, d);
            sc = dot * scale;
        }
        // The tile's max through red[] (a max-reduction, as ep_block_sum).
        red[tid] = sc;
        __syncthreads();
        for (int st = nt / 2; st > 0; st /= 2) {
            if (tid < st) red[tid] = fmaxf(red[tid], red[tid + st]);
            __syncthreads();
        }
        const float m1 = fmaxf(mx, red[0]);
        __syncthreads();
        const float e = s <= last ? expf(sc - m1) : 0.0f;
        p[tid] = e;
        const float c = mx == -INFINITY ? 0.0f : expf(mx - m1);
        sum = sum * c + ep_block_sum(e, red); // its barriers publish p[] too
        mx = m1;
        for (int k = 0, d = tid; d < dv; k++, d += nt) {
            float a = acc[k] * c;
            for (int j = 0; j < w; j++) {
                const uint16_t *vr =
                    g.pool + ep_kv_row_at(g, sq, layer, s0 + j) + voff + kvh * vstride;
                a += p[j] * ep_ld_bf16(vr, d);
            }
            acc[k] = a;
        }
        __syncthreads(); // p[] is rewritten by the next tile
    }
    float *o = out + (int64_t)t * ldo + (int64_t)h * dv;
    const float inv = 1.0f / sum;
    for (int k = 0, d = tid; d < dv; k++, d += nt)
        o[d] = acc[k] * inv;
}

__global__ void ep_mops_copy_heads_kernel(const float *src, int lds, int ssh, float *dst, int ldd,
                                          int dsh, int T, int heads, int n)
{
    EP_GRID_STRIDE(j, (int64_t)T * heads * n)
    {
        const int64_t i = j % n, th = j / n, t = th / heads, h = th % heads;
        dst[t * ldd + h * dsh + i] = src[t * lds + h * ssh + i];
    }
}

// ---- sampling -----------------------------------------------------------------------------

// Whether (v, i) beats (bv, bi): larger value, then lower id; NaN is -inf.
static __device__ __forceinline__ bool ep_better(float v, int i, float bv, int bi)
{
    return v > bv || (v == bv && i < bi);
}

// Whether (v, i) comes after (pv, pi) in the sampler's order (logit
// descending, then id ascending).
static __device__ __forceinline__ bool ep_after(float v, int i, float pv, int pi)
{
    return v < pv || (v == pv && i > pi);
}

// The best (value, id) of row l (V logits) that comes after (pv, pi), over
// the whole block: rv / ri are blockDim.x entries of shared scratch, and
// after the last barrier every thread reads the answer in rv[0] / ri[0]
// (id V: nothing after (pv, pi)). Every thread of the block must call it.
static __device__ void ep_block_best_after(const float *l, int V, float pv, int pi, float *rv,
                                           int *ri)
{
    const int tid = threadIdx.x;
    float bv = -INFINITY;
    int bi = V; // beaten by any id; stays only for threads without elements
    for (int i = tid; i < V; i += blockDim.x) {
        const float v = isnan(l[i]) ? -INFINITY : l[i];
        if (ep_after(v, i, pv, pi) && ep_better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
    rv[tid] = bv;
    ri[tid] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s /= 2) {
        if (tid < s && ep_better(rv[tid + s], ri[tid + s], rv[tid], ri[tid])) {
            rv[tid] = rv[tid + s];
            ri[tid] = ri[tid + s];
        }
        __syncthreads();
    }
}

#define EP_ARGMAX_THREADS 256
__global__ void ep_mops_argmax_kernel(const float *logits, int V, int ld, int *ids)
{
    __shared__ float rv[EP_ARGMAX_THREADS];
    __shared__ int ri[EP_ARGMAX_THREADS];
    // (+inf, -1) comes before every element, +inf logits included.
    ep_block_best_after(logits + (int64_t)blockIdx.x * ld, V, INFINITY, -1, rv, ri);
    // All -inf or NaN: id 0 wins its ties, as ep_sampler's argmax picks 0.
    if (threadIdx.x == 0) ids[blockIdx.x] = ri[0];
}

// Threads of a sampling block: k selections cost k rounds of barriers, and
// a row is one block; 64 keeps the rounds short (on the emulated device
// each barrier is a real one over that many threads).
#define EP_SAMPLE_THREADS 64

// One block per row: the top k (value, id) pairs in the sampler's order by
// k block-wide selections (the j-th is the best element after the (j-1)-th,
// so nothing is marked or sorted), then thread 0 replays ep_sampler's
// kept_set and draw in double on those k: exp((l - top) / temperature),
// normalised, cut at the first cumulative mass >= top_p, renormalised, the
// first token whose cumulative probability exceeds u. A row with bad
// parameters (the host checks them, ep_mops_sample_row_check) gets id -1.
__global__ void ep_mops_sample_topk_kernel(const float *logits, int V, int ld,
                                           const ep_mops_sample_row *prm, int *ids)
{
    __shared__ float tv[EP_MOPS_TOPK_MAX];
    __shared__ int ti[EP_MOPS_TOPK_MAX];
    __shared__ double pr[EP_MOPS_TOPK_MAX];
    __shared__ float rv[EP_SAMPLE_THREADS];
    __shared__ int ri[EP_SAMPLE_THREADS];
    const float *l = logits + (int64_t)blockIdx.x * ld;
    const ep_mops_sample_row p = prm[blockIdx.x];
    const int tid = threadIdx.x;
    const bool greedy = p.temperature == 0.0f || p.top_k == 1;
    if (p.top_k < 0 || p.top_k > EP_MOPS_TOPK_MAX || (!greedy && p.top_k == 0) ||
        !(p.temperature >= 0.0f) || !(p.top_p > 0.0f && p.top_p <= 1.0f)) {
        if (tid == 0) ids[blockIdx.x] = -1;
        return; // the whole block returns: no barrier is left waiting
    }
    const int k = greedy ? 1 : (p.top_k < V ? p.top_k : V);
    float pv = INFINITY;
    int pi = -1; // before every element
    for (int j = 0; j < k; j++) {
        ep_block_best_after(l, V, pv, pi, rv, ri);
        pv = rv[0];
        pi = ri[0];
        if (tid == 0) {
            tv[j] = pv;
            ti[j] = pi;
        }
        __syncthreads(); // rv / ri are reused by the next selection
    }
    if (tid != 0) return;
    if (greedy) {
        ids[blockIdx.x] = ti[0];
        return;
    }
    const double top = tv[0];
    double sum = 0.0;
    if (isinf(top) && top < 0) { // every logit -inf (or NaN): uniform over the k
        for (int i = 0; i < k; i++)
            pr[i] = 1.0 / k;
        sum = 1.0;
    } else {
        for (int i = 0; i < k; i++) {
            pr[i] = exp(((double)tv[i] - top) / p.temperature);
            sum += pr[i];
        }
    }
    double cum = 0.0;
    int keep = k;
    for (int i = 0; i < k; i++) {
        pr[i] /= sum;
        cum += pr[i];
        if (keep == k && cum >= p.top_p) keep = i + 1;
    }
    if (keep < k) {
        double mass = 0.0;
        for (int i = 0; i < keep; i++)
            mass += pr[i];
        for (int i = 0; i < keep; i++)
            pr[i] /= mass;
    }
    cum = 0.0;
    int id = ti[keep - 1]; // u within rounding of 1
    for (int i = 0; i < keep; i++) {
        cum += pr[i];
        if (p.u < cum) {
            id = ti[i];
            break;
        }
    }
    ids[blockIdx.x] = id;
}

// ---- launchers ----------------------------------------------------------------------------

extern "C" cudaError_t ep_mops_embed_launch(const uint16_t *embed, int V, int H, const int *ids,
                                            int T, float *x, cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_embed_kernel, ep_blocks((int64_t)T * H), EP_THREADS, 0, stream, embed, V, H,
              ids, T, x);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_mops_rmsnorm_launch(const float *x, int ldx, const float *w, int rows,
                                              int n, float eps, float *out, int ldo,
                                              cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_rmsnorm_kernel, (unsigned)rows, EP_NORM_THREADS, 0, stream, x, ldx, w, n, eps,
              out, ldo);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_mops_add_launch(float *x, const float *y, int64_t n, cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_add_kernel, ep_blocks(n), EP_THREADS, 0, stream, x, y, n);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_mops_silu_mul_launch(const float *g, const float *u, int64_t n,
                                               float *out, cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_silu_mul_kernel, ep_blocks(n), EP_THREADS, 0, stream, g, u, n, out);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_mops_rope_launch(const float *inv_freq, int dim, int interleaved,
                                           float cs_scale, float *x, int T, int ld, int heads,
                                           int off, int head_stride, const int *pos,
                                           cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_rope_kernel, ep_blocks((int64_t)T * heads * (dim / 2)), EP_THREADS, 0, stream,
              inv_freq, dim, interleaved, cs_scale, x, T, ld, heads, off, head_stride, pos);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_mops_kv_write_launch(ep_mops_kv_geom g, int layer, const float *src,
                                               int lds, int n, int off, int T, const int *seq,
                                               const int *pos, cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_kv_write_kernel, ep_blocks((int64_t)T * n), EP_THREADS, 0, stream, g, layer,
              src, lds, n, off, T, seq, pos);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_mops_attention_launch(ep_mops_kv_geom g, int layer, int heads, int group,
                                                int dk, int dv, int koff, int kstride, int voff,
                                                int vstride, float scale, const float *q, int ldq,
                                                int T, const int *seq, const int *pos, float *out,
                                                int ldo, cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_attention_kernel, (unsigned)T * heads, EP_MOPS_ATTN_THREADS, 0, stream, g,
              layer, heads, group, dk, dv, koff, kstride, voff, vstride, scale, q, ldq, seq, pos,
              out, ldo);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_mops_copy_heads_launch(const float *src, int lds, int ssh, float *dst,
                                                 int ldd, int dsh, int T, int heads, int n,
                                                 cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_copy_heads_kernel, ep_blocks((int64_t)T * heads * n), EP_THREADS, 0, stream,
              src, lds, ssh, dst, ldd, dsh, T, heads, n);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_mops_sample_topk_launch(const float *logits, int rows, int V, int ld,
                                                  const ep_mops_sample_row *prm, int *ids,
                                                  cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_sample_topk_kernel, (unsigned)rows, EP_SAMPLE_THREADS, 0, stream, logits, V,
              ld, prm, ids);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_mops_argmax_launch(const float *logits, int rows, int V, int ld, int *ids,
                                             cudaStream_t stream)
{
    EP_LAUNCH(ep_mops_argmax_kernel, (unsigned)rows, EP_ARGMAX_THREADS, 0, stream, logits, V, ld,
              ids);
    return cudaGetLastError();
}
