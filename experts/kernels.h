// CPU expert kernels below the backend vtable: a small thread pool shared by
// the kernels (not by OpenBLAS, which keeps its own threads), fp32 and BF16
// "nt" products for the decode and prefill shapes of routed experts, an fp32
// outer-product ("nn") product for tall segments, and a vectorised SwiGLU.
// Each kernel has a portable C path and, where the CPU has them, AVX-512 /
// AVX512-BF16 paths chosen at run time. No MPI here.
#ifndef EP_KERNELS_H
#define EP_KERNELS_H

#include "common/ep.h"

// ---- thread pool (experts/cpu/threads.c) ---------------------------------
// One process-wide pool. Threads per rank: EP_NUM_THREADS, else
// OPENBLAS_NUM_THREADS, else the online CPUs; with several ranks on a node
// set it to cores / ranks (mpirun -x EP_NUM_THREADS=...). Not re-entrant: a
// task must not call ep_par_for.
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

// ---- products --------------------------------------------------------------
// C[m, n] = A[m, K] . B[n, K]^T (C row stride ldc; A row stride lda, B row
// stride ldb, in elements). Sized for a tile of work a task owns: m small
// (decode: tokens of one expert) or a block of a larger gemm.
void ep_kern_f32_nt(int m, int n, int K, const float *A, int lda, const float *B, int ldb, float *C,
                    int ldc);
// C[n, m] = W[n, K] . X[K, m] (W row stride ldw, X row stride ldx, C row
// stride ldc): the outer-product ("nn") form for tall fp32 segments, whose
// activations are stored K-major (X = A^T), so that each weight element is
// broadcast against 16 tokens at a time instead of meeting one token in a dot
// product. Each C element is one k-ordered sum (fused multiply-adds on
// AVX-512), whatever the blocking. Columns [m, ldx) of X are never read.
void ep_kern_f32_nn(int n, int m, int K, const float *W, int ldw, const float *X, int ldx, float *C,
                    int ldc);
// The same with A and B in BF16 (uint16_t bit patterns), fp32 accumulation
// (vdpbf16ps where the CPU has it, else both widened to fp32).
void ep_kern_bf16_nt(int m, int n, int K, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                     float *C, int ldc);

// dst[j * ldd + i] = src[i][j] for i < rows, j < cols: the rows are given by
// pointers (gathered activation rows are not evenly spaced). Moves tokens
// into and out of the K-major panels of the outer-product path.
void ep_kern_transpose(int rows, int cols, const float *const *src, float *dst, int ldd);
// Process-wide choice of the fp32 grouped forward (experts/experts.c): fp32
// segments (one expert's rows in a pass) of at least this many rows take the
// outer-product path (ep_kern_f32_nn on K-major activations), smaller ones
// the "nt" kernels tuned for decode. INT32_MAX keeps every segment on the nt
// kernels (bench kernels' `f32nt`); n <= 0 restores the default.
void ep_kern_set_nn_min_rows(int n);
int ep_kern_nn_min_rows(void);

// y[i] += w * x[i] for i < n: the weighting of one expert output row into
// its record's sum. A multiply then an add (not fused), so every path gives
// the bits of the plain C loop.
void ep_kern_axpy(int n, float w, const float *x, float *y);
// out[i] = silu(g[i]) * u[i], i < n (vectorised exp; matches the plain C
// silu within 2e-7 relative, inf/NaN as the C one).
void ep_kern_swiglu(int64_t n, const float *g, const float *u, float *out);
// dst[i] = bf16(src[i]), round to nearest even, i < n.
void ep_kern_to_bf16(int64_t n, const float *src, uint16_t *dst);

#endif
