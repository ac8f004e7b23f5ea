// The dense operations of experts/dense.h: ep_dense_mm split over the pool
// by blocks of weight rows (BF16 through the experts' BF16 kernel, fp32
// through OpenBLAS on one thread per task) and SwiGLU in plain C.
#include "experts/dense.h"

#include "experts/kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// Weight rows per task: 64 rows of a 2048-wide BF16 matrix are 256 KiB,
// which stay in L2 while the activation rows pass over them.
#define DENSE_TASK_ROWS 64

// Scratch of the calling thread, grown only when a call needs more: A in
// BF16, and per pool thread a [M, DENSE_TASK_ROWS] block for beta != 0.
static struct {
    uint16_t *a16;
    size_t a16_cap; // bytes
    float *acc;
    size_t acc_cap; // bytes, all threads
} dense_ws;

static void *grow(void *p, size_t *cap, size_t need)
{
    if (need <= *cap) return p;
    free(p);
    *cap = need + need / 2;
    return ep_xmalloc(*cap);
}

typedef struct {
    int M, lda, ldc;
    const float *A;
    const ep_mat *W;
    float beta;
    float *C;
    size_t acc_stride; // floats of dense_ws.acc per thread
} dense_call;

static void bf16_task(void *ctx, int task, int thread)
{
    const dense_call *d = ctx;
    const int K = (int)d->W->cols, n0 = task * DENSE_TASK_ROWS;
    const int nb = (int)EP_MIN((int64_t)DENSE_TASK_ROWS, d->W->rows - n0);
    const uint16_t *B = (const uint16_t *)d->W->data + (size_t)n0 * K;
    if (d->beta == 0.0f) {
        ep_kern_bf16_nt(d->M, nb, K, dense_ws.a16, K, B, K, d->C + n0, d->ldc);
        return;
    }
    float *acc = dense_ws.acc + d->acc_stride * (size_t)thread;
    ep_kern_bf16_nt(d->M, nb, K, dense_ws.a16, K, B, K, acc, nb);
    for (int i = 0; i < d->M; i++) {
        float *c = d->C + (size_t)i * d->ldc + n0;
        const float *a = acc + (size_t)i * nb;
        for (int j = 0; j < nb; j++)
            c[j] = d->beta * c[j] + a[j];
    }
}

static void f32_task(void *ctx, int task, int thread)
{
    (void)thread;
    const dense_call *d = ctx;
    const int K = (int)d->W->cols, n0 = task * DENSE_TASK_ROWS;
    const int nb = (int)EP_MIN((int64_t)DENSE_TASK_ROWS, d->W->rows - n0);
    const float *B = (const float *)d->W->data + (size_t)n0 * K;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d->M, nb, K, 1.0f, d->A, d->lda, B, K,
                d->beta, d->C + n0, d->ldc);
}

void ep_dense_mm(int M, const float *A, int lda, const ep_mat *W, float beta, float *C, int ldc)
{
    EP_ASSERT(M >= 0 && W->rows >= 0 && W->cols >= 0 && W->rows <= INT32_MAX);
    EP_ASSERT(W->dtype == EP_DTYPE_F32 || W->dtype == EP_DTYPE_BF16);
    const int N = (int)W->rows, K = (int)W->cols;
    if (M == 0 || N == 0) return;
    if (K == 0) { // C = beta * C; beta == 0 must not read C
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            for (int j = 0; j < N; j++)
                c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        }
        return;
    }
    dense_call d = {.M = M, .lda = lda, .ldc = ldc, .A = A, .W = W, .beta = beta, .C = C};
    const int n_tasks = (N + DENSE_TASK_ROWS - 1) / DENSE_TASK_ROWS;
    if (W->dtype == EP_DTYPE_F32) {
        ep_par_for(n_tasks, f32_task, &d);
        return;
    }
    dense_ws.a16 = grow(dense_ws.a16, &dense_ws.a16_cap, (size_t)M * K * sizeof(uint16_t));
    for (int i = 0; i < M; i++)
        ep_kern_to_bf16(K, A + (size_t)i * lda, dense_ws.a16 + (size_t)i * K);
    if (beta != 0.0f) {
        d.acc_stride = (size_t)M * DENSE_TASK_ROWS;
        dense_ws.acc = grow(dense_ws.acc, &dense_ws.acc_cap,
                            d.acc_stride * (size_t)ep_par_threads() * sizeof(float));
    }
    ep_par_for(n_tasks, bf16_task, &d);
}

void ep_dense_gemm_nt(int M, int N, int K, const float *A, const float *B, float beta, float *C)
{
    const ep_mat W = {.dtype = EP_DTYPE_F32, .rows = N, .cols = K, .data = B};
    ep_dense_mm(M, A, K, &W, beta, C, N);
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
