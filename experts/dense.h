// Dense fp32 operations on the host for the replicated parts of the model
// (attention projections, the dense MLP, lm_head) and the shared experts:
// C = A . B^T through OpenBLAS and SwiGLU in plain C (the same bits on every
// CPU). The routed experts run on their own kernels (experts/kernels.h).
#ifndef EP_DENSE_H
#define EP_DENSE_H

#include "common/ep.h"

// C[M, N] = A[M, K] . B[N, K]^T + beta * C   (B a weight in [out, in] layout).
// beta == 0 never reads C (it may hold NaN from an earlier step).
void ep_dense_gemm_nt(int M, int N, int K, const float *A, const float *B, float beta, float *C);
// out[i] = silu(g[i]) * u[i], i < n (out may alias g or u).
void ep_dense_swiglu(int64_t n, const float *g, const float *u, float *out);

#endif
