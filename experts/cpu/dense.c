// The dense fp32 operations of experts/dense.h: gemm through OpenBLAS
// (cblas_sgemm, row-major, the weight operand transposed since weights are
// [out, in]) and SwiGLU in plain C. No state; threading is OpenBLAS's own.
#include "experts/dense.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

// BLAS rejects lda = 0, so the empty-K case (C = beta * C) is done here;
// beta == 0 must not read C, which sgemm guarantees and so do we.
void ep_dense_gemm_nt(int M, int N, int K, const float *A, const float *B, float beta, float *C)
{
    EP_ASSERT(M >= 0 && N >= 0 && K >= 0);
    if (M == 0 || N == 0) return;
    if (K == 0) {
        size_t n = (size_t)M * N;
        if (beta == 0.0f) {
            memset(C, 0, n * sizeof *C);
        } else if (beta != 1.0f) {
            for (size_t i = 0; i < n; i++)
                C[i] *= beta;
        }
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, beta, C, N);
}

// silu(x) = x * sigmoid(x). Written so exp() only sees -|x|: exp(|x|) would
// overflow to inf for large |x|, and -inf / inf or -inf * 0 give NaN where
// the limit is 0. NaN inputs stay NaN.
static inline float dense_silu(float x)
{
    if (x >= 0.0f) return x / (1.0f + expf(-x));
    float t = expf(x);
    if (t == 0.0f) return -0.0f; // x below about -103 (or -inf): x * sigmoid(x) rounds to -0
    return x * (t / (1.0f + t));
}

void ep_dense_swiglu(int64_t n, const float *g, const float *u, float *out)
{
    EP_ASSERT(n >= 0);
    for (int64_t i = 0; i < n; i++)
        out[i] = dense_silu(g[i]) * u[i];
}
