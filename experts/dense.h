// Dense operations on the host for the replicated parts of the model
// (attention projections, the dense MLP, lm_head) and the shared experts:
// C = A . W^T over a weight matrix in fp32 or BF16 (common/mat.h) on the
// process's one thread pool, and SwiGLU in plain C (the same bits on every
// CPU). The routed experts run on their own kernels (experts/kernels.h).
#ifndef EP_DENSE_H
#define EP_DENSE_H

#include "common/ep.h"
#include "common/mat.h"

// C[M, W.rows] = A[M, W.cols] . W^T + beta * C (A row stride lda, C row
// stride ldc, in floats). Split over the thread pool by blocks of W's rows,
// each read once per call whatever M, so a decode step streams every weight
// once:
//   BF16: A rounded to BF16, ep_kern_bf16_nt (vdpbf16ps where the CPU has it),
//         fp32 sums; one kernel for every M.
//   F32:  OpenBLAS sgemm on one thread per task, on the task's 64 rows of W
//         (measured faster than sgemv per row of A at every M from 1 to 7:
//         1.07 against 1.22 ms at M = 1 over W [4096, 2048] on one core, so
//         no separate matrix-vector path; docs/benchmarks.md).
// beta == 0 never reads C (it may hold NaN from an earlier step). Not
// re-entrant (it runs ep_par_for); A and C must not overlap.
void ep_dense_mm(int M, const float *A, int lda, const ep_mat *W, float beta, float *C, int ldc);

// C[M, N] = A[M, K] . B[N, K]^T + beta * C on fp32 arrays (a view of B as an
// F32 ep_mat, then ep_dense_mm).
void ep_dense_gemm_nt(int M, int N, int K, const float *A, const float *B, float beta, float *C);
// out[i] = silu(g[i]) * u[i], i < n (out may alias g or u).
void ep_dense_swiglu(int64_t n, const float *g, const float *u, float *out);

#endif
