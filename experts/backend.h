// The compute backend (vtable): the few dense ops experts need. CPU
// (OpenBLAS, fp32) implements it in experts/cpu/; CUDA (cuBLAS) will
// implement the same table. Optional ops are NULL and checked by callers.
#ifndef EP_BACKEND_H
#define EP_BACKEND_H

#include "common/ep.h"

typedef struct ep_backend ep_backend;
typedef struct {
    const char *name;
    // C[M, N] = A[M, K] . B[N, K]^T + beta * C   (B a weight in [out, in] layout)
    void (*gemm_nt)(ep_backend *b, int M, int N, int K, const float *A, const float *B,
                    float beta, float *C);
    // out[i] = silu(g[i]) * u[i], i < n
    void (*swiglu)(ep_backend *b, int64_t n, const float *g, const float *u, float *out);
    void (*free)(ep_backend *b);
} ep_backend_vt;
struct ep_backend {
    const ep_backend_vt *vt;
    void *ctx;
};

ep_status ep_backend_cpu_init(ep_backend **out);
void ep_backend_free(ep_backend *b); // NULL ok

#endif
