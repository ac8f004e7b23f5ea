// Run-time choice of the CPU expert kernels (portable C, AVX-512,
// AVX512-BF16 by __builtin_cpu_supports) and the portable C versions, which
// are also the fallback on CPUs without AVX-512. The AVX-512 bodies live in
// kern_avx512.c and kern_avx512bf16.c, compiled with per-function targets.
#include "experts/kernels.h"
#include "common/dtype.h"
#include "experts/dense.h"

#include <math.h>
#include <stdatomic.h>

#include "experts/cpu/kern_impl.h"

// ---- ISA -----------------------------------------------------------------

static atomic_int ep_kern_cap = EP_KERN_ISA_AVX512_BF16;

ep_kern_isa ep_kern_isa_best(void)
{
#if EP_KERN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
        if (__builtin_cpu_supports("avx512bf16")) return EP_KERN_ISA_AVX512_BF16;
        return EP_KERN_ISA_AVX512;
    }
#endif
    return EP_KERN_ISA_C;
}

ep_kern_isa ep_kern_isa_get(void)
{
    static atomic_int best = -1;
    int b = atomic_load(&best);
    if (b < 0) {
        b = (int)ep_kern_isa_best();
        atomic_store(&best, b);
    }
    const int cap = atomic_load(&ep_kern_cap);
    return (ep_kern_isa)(b < cap ? b : cap);
}

void ep_kern_isa_cap(ep_kern_isa isa)
{
    atomic_store(&ep_kern_cap, (int)isa);
}

const char *ep_kern_isa_name(ep_kern_isa isa)
{
    switch (isa) {
    case EP_KERN_ISA_C:
        return "c";
    case EP_KERN_ISA_AVX512:
        return "avx512";
    case EP_KERN_ISA_AVX512_BF16:
        return "avx512bf16";
    }
    return "?";
}

// ---- portable C ------------------------------------------------------------

// One fused multiply-add chain per C element, k in order: the AVX-512 path
// gives the same bits. Panel by panel, as the packing lays the weights out.
static void c_f32_panel(int m, int n, int K, const float *A, int lda, const float *P, float *C,
                        int ldc)
{
    for (int j0 = 0; j0 < n; j0 += EP_KERN_PANEL) {
        const int w = EP_MIN(EP_KERN_PANEL, n - j0);
        const float *pj = P + (size_t)j0 * K;
        for (int i = 0; i < m; i++) {
            const float *a = A + (size_t)i * lda;
            for (int c = 0; c < w; c++) {
                float s = 0.0f;
                for (int k = 0; k < K; k++)
                    s = fmaf(a[k], pj[(size_t)k * w + c], s);
                C[(size_t)i * ldc + j0 + c] = s;
            }
        }
    }
}

static void c_bf16_nt(int m, int n, int K, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                      float *C, int ldc)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            const uint16_t *a = A + (size_t)i * lda, *b = B + (size_t)j * ldb;
            float s0 = 0, s1 = 0;
            int k = 0;
            for (; k + 2 <= K; k += 2) {
                s0 += ep_bf16_to_f32(a[k]) * ep_bf16_to_f32(b[k]);
                s1 += ep_bf16_to_f32(a[k + 1]) * ep_bf16_to_f32(b[k + 1]);
            }
            for (; k < K; k++)
                s0 += ep_bf16_to_f32(a[k]) * ep_bf16_to_f32(b[k]);
            C[(size_t)i * ldc + j] = s0 + s1;
        }
}

static void c_to_bf16(int64_t n, const float *src, uint16_t *dst)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = ep_f32_to_bf16(src[i]);
}

// ---- entry points ------------------------------------------------------------

// 16 k at a time: the 16 lines of the panel being written and the 64 row
// pieces being read stay in L1.
void ep_kern_f32_pack(int n, int K, const float *W, int ldw, float *P)
{
    EP_ASSERT(n >= 0 && K >= 0);
    for (int j0 = 0; j0 < n; j0 += EP_KERN_PANEL) {
        const int w = EP_MIN(EP_KERN_PANEL, n - j0);
        float *pj = P + (size_t)j0 * K;
        for (int k0 = 0; k0 < K; k0 += 16)
            for (int c = 0; c < w; c++) {
                const float *row = W + (size_t)(j0 + c) * ldw;
                for (int k = k0; k < EP_MIN(K, k0 + 16); k++)
                    pj[(size_t)k * w + c] = row[k];
            }
    }
}

void ep_kern_f32_unpack(int n, int K, const float *P, float *W, int ldw)
{
    EP_ASSERT(n >= 0 && K >= 0);
    for (int j0 = 0; j0 < n; j0 += EP_KERN_PANEL) {
        const int w = EP_MIN(EP_KERN_PANEL, n - j0);
        const float *pj = P + (size_t)j0 * K;
        for (int k0 = 0; k0 < K; k0 += 16)
            for (int c = 0; c < w; c++) {
                float *row = W + (size_t)(j0 + c) * ldw;
                for (int k = k0; k < EP_MIN(K, k0 + 16); k++)
                    row[k] = pj[(size_t)k * w + c];
            }
    }
}

void ep_kern_f32_panel(int m, int n, int K, const float *A, int lda, const float *P, float *C,
                       int ldc)
{
    EP_ASSERT(m >= 0 && n >= 0 && K >= 0);
    if (m == 0 || n == 0) return; // nothing to write: A and P need not be readable
#if EP_KERN_X86
    if (ep_kern_isa_get() >= EP_KERN_ISA_AVX512) {
        ep_kern_avx512_f32_panel(m, n, K, A, lda, P, C, ldc);
        return;
    }
#endif
    c_f32_panel(m, n, K, A, lda, P, C, ldc);
}

void ep_kern_bf16_nt(int m, int n, int K, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                     float *C, int ldc)
{
    EP_ASSERT(m >= 0 && n >= 0 && K >= 0);
#if EP_KERN_X86
    const ep_kern_isa isa = ep_kern_isa_get();
    if (isa == EP_KERN_ISA_AVX512_BF16) {
        ep_kern_avx512bf16_bf16_nt(m, n, K, A, lda, B, ldb, C, ldc);
        return;
    }
    if (isa == EP_KERN_ISA_AVX512) {
        ep_kern_avx512_bf16_nt(m, n, K, A, lda, B, ldb, C, ldc);
        return;
    }
#endif
    c_bf16_nt(m, n, K, A, lda, B, ldb, C, ldc);
}

static void c_axpy(int n, float w, const float *x, float *y)
{
    for (int i = 0; i < n; i++)
        y[i] += w * x[i];
}

void ep_kern_axpy(int n, float w, const float *x, float *y)
{
    EP_ASSERT(n >= 0);
#if EP_KERN_X86
    if (ep_kern_isa_get() >= EP_KERN_ISA_AVX512) {
        ep_kern_avx512_axpy(n, w, x, y);
        return;
    }
#endif
    c_axpy(n, w, x, y);
}

void ep_kern_swiglu(int64_t n, const float *g, const float *u, float *out)
{
    EP_ASSERT(n >= 0);
#if EP_KERN_X86
    if (ep_kern_isa_get() >= EP_KERN_ISA_AVX512) {
        ep_kern_avx512_swiglu(n, g, u, out);
        return;
    }
#endif
    ep_dense_swiglu(n, g, u, out); // the portable path is the dense one
}

void ep_kern_to_bf16(int64_t n, const float *src, uint16_t *dst)
{
    EP_ASSERT(n >= 0);
#if EP_KERN_X86
    if (ep_kern_isa_get() >= EP_KERN_ISA_AVX512) {
        ep_kern_avx512_to_bf16(n, src, dst);
        return;
    }
#endif
    c_to_bf16(n, src, dst);
}

// ---- attention ----------------------------------------------------------------

static void c_f32_nt(int m, int n, int K, const float *A, int lda, const float *B, int ldb,
                     float *C, int ldc)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            const float *a = A + (size_t)i * lda, *b = B + (size_t)j * ldb;
            float s = 0.0f;
            for (int k = 0; k < K; k++)
                s += a[k] * b[k];
            C[(size_t)i * ldc + j] = s;
        }
}

// Row by row, k outer: each element is still its own k-ordered fmaf chain
// (the AVX-512 bits), and B is read along its rows.
static void c_f32_nn(int m, int n, int K, const float *A, int lda, const float *B, int ldb,
                     float beta, float *C, int ldc)
{
    for (int i = 0; i < m; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < n; j++)
            c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        for (int k = 0; k < K; k++) {
            const float a = A[(size_t)i * lda + k], *b = B + (size_t)k * ldb;
            for (int j = 0; j < n; j++)
                c[j] = fmaf(a, b[j], c[j]);
        }
    }
}

static void c_softmax_tile(int rows, int w, float *S, int lds, const int *valid, float scale,
                           float *mx, float *sum, float *O, int ldo, int dv)
{
    for (int i = 0; i < rows; i++) {
        float *s = S + (size_t)i * lds;
        const int n = EP_MIN(valid[i], w);
        for (int j = EP_MAX(n, 0); j < w; j++)
            s[j] = 0.0f;
        if (n <= 0) continue;
        float m1 = mx[i];
        for (int j = 0; j < n; j++) {
            s[j] *= scale;
            m1 = s[j] > m1 ? s[j] : m1;
        }
        float add = 0.0f;
        for (int j = 0; j < n; j++) {
            s[j] = expf(s[j] - m1);
            add += s[j];
        }
        const float c = mx[i] == -INFINITY ? 0.0f : expf(mx[i] - m1);
        sum[i] = sum[i] * c + add;
        mx[i] = m1;
        if (c != 1.0f) {
            float *o = O + (size_t)i * ldo;
            for (int d = 0; d < dv; d++)
                o[d] *= c;
        }
    }
}

void ep_kern_f32_nt(int m, int n, int K, const float *A, int lda, const float *B, int ldb, float *C,
                    int ldc)
{
    EP_ASSERT(m >= 0 && n >= 0 && K >= 0);
    if (m == 0 || n == 0) return;
#if EP_KERN_X86
    if (ep_kern_isa_get() >= EP_KERN_ISA_AVX512) {
        ep_kern_avx512_f32_nt(m, n, K, A, lda, B, ldb, C, ldc);
        return;
    }
#endif
    c_f32_nt(m, n, K, A, lda, B, ldb, C, ldc);
}

void ep_kern_f32_nn(int m, int n, int K, const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc)
{
    EP_ASSERT(m >= 0 && n >= 0 && K >= 0);
    if (m == 0 || n == 0) return;
#if EP_KERN_X86
    if (ep_kern_isa_get() >= EP_KERN_ISA_AVX512) {
        ep_kern_avx512_f32_nn(m, n, K, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
    c_f32_nn(m, n, K, A, lda, B, ldb, beta, C, ldc);
}

void ep_kern_softmax_tile(int rows, int w, float *S, int lds, const int *valid, float scale,
                          float *mx, float *sum, float *O, int ldo, int dv)
{
    EP_ASSERT(rows >= 0 && w >= 0 && dv >= 0);
#if EP_KERN_X86
    if (ep_kern_isa_get() >= EP_KERN_ISA_AVX512) {
        ep_kern_avx512_softmax_tile(rows, w, S, lds, valid, scale, mx, sum, O, ldo, dv);
        return;
    }
#endif
    c_softmax_tile(rows, w, S, lds, valid, scale, mx, sum, O, ldo, dv);
}
