// CPU expert kernels below the backend vtable: the process's thread pool
// (every CPU product of a step runs on it), the fp32
// product over weights packed in column panels and the BF16 "nt" product,
// for the decode and prefill shapes of routed experts alike, a vectorised
// SwiGLU, and the products and online softmax of CPU attention.
// Each kernel has a portable C path and, where the CPU has them, AVX-512 /
// AVX512-BF16 paths chosen at run time. No MPI here.
#ifndef EP_KERNELS_H
#define EP_KERNELS_H

#include "common/ep.h"

// ---- thread pool (experts/cpu/threads.c) ---------------------------------
// One process-wide pool, the only threads a step computes on: OpenBLAS is
// set to one thread (called inside tasks) when the pool starts. Threads per
// rank: EP_NUM_THREADS, else OPENBLAS_NUM_THREADS, else the online CPUs; with
// several ranks on a node set it to cores / ranks (mpirun -x
// EP_NUM_THREADS=...). Not re-entrant: a task must not call ep_par_for.
typedef void (*ep_par_fn)(void *ctx, int task, int thread);
int ep_par_threads(void);
void ep_par_set_threads(int n); // n >= 1; takes effect at the next ep_par_for
// Runs fn(ctx, t, thread) for every t in [0, n_tasks), tasks handed out in
// order to whichever thread is free; returns when all are done. thread is in
// [0, ep_par_threads()), so tasks can index per-thread scratch.
void ep_par_for(int n_tasks, ep_par_fn fn, void *ctx);

// ---- which instruction set runs (experts/cpu/kern_dispatch.c) -----------
typedef enum {
    EP_KERN_ISA_C,          // portable C
    EP_KERN_ISA_AVX512,     // avx512f/bw/vl (fp32 kernels, bf16 by widening)
    EP_KERN_ISA_AVX512_BF16 // + avx512_bf16 (vdpbf16ps)
} ep_kern_isa;
ep_kern_isa ep_kern_isa_best(void);    // what this CPU supports
ep_kern_isa ep_kern_isa_get(void);     // what the kernels use now (the best, unless capped)
void ep_kern_isa_cap(ep_kern_isa isa); // use at most isa (tests run every variant)
const char *ep_kern_isa_name(ep_kern_isa isa);

// ---- products ----------------------------------------------------------------
// fp32 expert weights are stored in column panels. W [n, K] (row-major, HF's
// [out, in]) becomes ceil(n / EP_KERN_PANEL) panels; panel j holds rows
// [64 j, 64 j + w_j), w_j = min(64, n - 64 j), K-major:
//     P[64 j K + k w_j + c] = W[64 j + c, k]
// The same number of floats as W. The rows from a multiple of 64 on are
// themselves a packed matrix at P + 64 j K, so a task can take any run of
// whole panels (the last one of the matrix may be narrow).
#define EP_KERN_PANEL 64
void ep_kern_f32_pack(int n, int K, const float *W, int ldw, float *P);
void ep_kern_f32_unpack(int n, int K, const float *P, float *W, int ldw);
// C[m, n] = A[m, K] . W^T, W packed as above (P; n its rows, K its columns;
// A row stride lda, C row stride ldc, in elements). Each weight vector of a
// panel is loaded once per k and multiplied by broadcast activations of up
// to 6 rows, so the weights stream contiguously (decode) and the register
// tile is full whatever m is (prefill). Each C element is one k-ordered sum
// of fused multiply-adds (fmaf in the portable C path): the bits do not
// depend on m, the tiling or the ISA.
void ep_kern_f32_panel(int m, int n, int K, const float *A, int lda, const float *P, float *C,
                       int ldc);
// C[m, n] = A[m, K] . B[n, K]^T with A and B in BF16 (uint16_t bit
// patterns), fp32 accumulation (vdpbf16ps where the CPU has it, else both
// widened to fp32); B row-major, as BF16 expert weights are stored. Row
// strides lda, ldb, ldc in elements. Sized for a tile of work a task owns:
// m small (decode: tokens of one expert) or a block of a larger product.
void ep_kern_bf16_nt(int m, int n, int K, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                     float *C, int ldc);

// y[i] += w * x[i] for i < n: the weighting of one expert output row into
// its record's sum. A multiply then an add (not fused), so every path gives
// the bits of the plain C loop.
void ep_kern_axpy(int n, float w, const float *x, float *y);
// out[i] = silu(g[i]) * u[i], i < n (vectorised exp; matches the plain C
// silu within 2e-7 relative, inf/NaN as the C one).
void ep_kern_swiglu(int64_t n, const float *g, const float *u, float *out);
// dst[i] = bf16(src[i]), round to nearest even, i < n.
void ep_kern_to_bf16(int64_t n, const float *src, uint16_t *dst);

// ---- attention (model/attn.c) ----------------------------------------------
// A block of query rows against a run of cache rows (rows of one paged KV
// block, any row stride): scores, one key tile of the online softmax, and
// probabilities times values. Each output of a call is computed by that call
// alone, in an order fixed by its arguments, so a caller that splits work
// into fixed tasks gets the same bits from any number of threads.
//
// C[m, n] = A[m, K] . B[n, K]^T in fp32, both row-major (query rows against
// key rows). Row strides lda, ldb, ldc in elements.
void ep_kern_f32_nt(int m, int n, int K, const float *A, int lda, const float *B, int ldb, float *C,
                    int ldc);
// C[m, n] = beta C + A[m, K] . B[K, n] in fp32, B row-major (probabilities
// times value rows; q_nope times W_UK). Each C element is beta * C (beta 0:
// C is not read) then one k-ordered chain of fused multiply-adds (fmaf in the
// portable C path): the bits depend neither on m nor on the ISA.
void ep_kern_f32_nn(int m, int n, int K, const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc);
// One key tile of the online softmax (max-subtracted, fp32). Row i of S
// (stride lds) holds w scores of which the first n_i = min(valid[i], w) are
// visible (causal mask). For a row with n_i >= 1: the visible scores are
// multiplied by scale, mx[i] becomes max(mx[i], their max) = mx', S[i, j]
// becomes exp(scale S[i, j] - mx') for j < n_i and 0 for n_i <= j < w,
// sum[i] = sum[i] c + the row's sum and O[i, 0:dv) *= c (stride ldo), with
// c = exp(old mx[i] - mx') (0 while mx[i] is -inf). A row with n_i <= 0
// only has S[i, 0:w) zeroed. Start each row at mx -inf, sum 0, O 0; the
// output is O[i] / sum[i] after the last tile. Columns >= w are not touched.
void ep_kern_softmax_tile(int rows, int w, float *S, int lds, const int *valid, float scale,
                          float *mx, float *sum, float *O, int ldo, int dv);

#endif
