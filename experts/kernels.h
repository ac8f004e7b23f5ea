// CPU expert kernels below the backend vtable: a small thread pool shared by
// the kernels (not by OpenBLAS, which keeps its own threads), fp32 and BF16
// "nt" products for the decode and prefill shapes of routed experts, and a
// vectorised SwiGLU. Each kernel has a portable C path and, where the CPU
// has them, AVX-512 / AVX512-BF16 paths chosen at run time. No MPI here.
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
// The same with A and B in BF16 (uint16_t bit patterns), fp32 accumulation
// (vdpbf16ps where the CPU has it, else both widened to fp32).
void ep_kern_bf16_nt(int m, int n, int K, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                     float *C, int ldc);

// out[i] = silu(g[i]) * u[i], i < n (vectorised exp; matches the plain C
// silu within 2e-7 relative, inf/NaN as the C one).
void ep_kern_swiglu(int64_t n, const float *g, const float *u, float *out);
// dst[i] = bf16(src[i]), round to nearest even, i < n.
void ep_kern_to_bf16(int64_t n, const float *src, uint16_t *dst);

#endif
