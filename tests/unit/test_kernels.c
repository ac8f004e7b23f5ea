// The CPU expert kernels, every variant this CPU can run (portable C,
// AVX-512, AVX512-BF16): the fp32 panel packing (layout, round trip) and the
// fp32 product over it bit for bit against a plain fmaf chain on odd shapes
// with padded strides, the BF16 product against a double loop, SwiGLU
// including extremes, axpy and fp32 -> BF16 rounding bit for bit; attention's
// score product against a double loop, its nn product bit for bit against an
// fmaf chain and the online softmax tile against its definition; the thread
// pool; and the grouped forward (fp32, BF16 weights) against
// ep_experts_reference across thread counts and a step larger than one
// pass, with the bits of a step unchanged when it is run as two calls.
// Fixed seeds.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "experts/experts.h"
#include "experts/kernels.h"

static uint64_t rng_state;
static float frand(void) // uniform in [-1, 1), xorshift64*
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t v = rng_state * 0x2545F4914F6CDD1DULL;
    return (float)((double)(v >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

// The variants to run: every ISA up to the best this CPU has.
static int n_isas(void)
{
    return (int)ep_kern_isa_best() + 1;
}

static int teardown_isa(void **state)
{
    ep_kern_isa_cap(EP_KERN_ISA_AVX512_BF16);
    ep_par_set_threads(1);
    return 0;
}

// ---- products ----------------------------------------------------------------

static const int dims_m[] = {1, 2, 3, 4, 5, 7, 13};
static const int dims_n[] = {1, 3, 4, 5, 11};
static const int dims_k[] = {1, 5, 13, 16, 17, 31, 32, 33, 64, 100};
#define SENTINEL 12345.0f

// C = A . B^T in BF16 on padded strides, against the double product of the
// BF16 values: |C - ref| <= 1e-5 * Σ_k |a b| per element (fp32 accumulation
// error grows with the magnitudes summed), and the padding of C untouched.
static void check_product_bf16(int m, int n, int K, int pad)
{
    const int lda = K + 3 * pad, ldb = K + 5 * pad, ldc = n + 2 * pad;
    float *A = malloc(sizeof(float) * m * lda), *B = malloc(sizeof(float) * n * ldb);
    uint16_t *A16 = malloc(sizeof(uint16_t) * m * lda), *B16 = malloc(sizeof(uint16_t) * n * ldb);
    float *C = malloc(sizeof(float) * m * ldc);
    for (int i = 0; i < m * lda; i++) {
        A16[i] = ep_f32_to_bf16(frand());
        A[i] = ep_bf16_to_f32(A16[i]);
    }
    for (int i = 0; i < n * ldb; i++) {
        B16[i] = ep_f32_to_bf16(frand());
        B[i] = ep_bf16_to_f32(B16[i]);
    }
    for (int i = 0; i < m * ldc; i++)
        C[i] = SENTINEL;
    ep_kern_bf16_nt(m, n, K, A16, lda, B16, ldb, C, ldc);
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                ref += (double)A[i * lda + k] * B[j * ldb + k];
                mag += fabs((double)A[i * lda + k] * B[j * ldb + k]);
            }
            const double got = C[i * ldc + j];
            if (!(fabs(got - ref) <= 1e-5 * mag + 1e-30))
                fail_msg("bf16 isa %s m=%d n=%d K=%d C[%d,%d]: got %.9g expected %.9g",
                         ep_kern_isa_name(ep_kern_isa_get()), m, n, K, i, j, got, ref);
        }
        for (int j = n; j < ldc; j++)
            assert_true(C[i * ldc + j] == SENTINEL);
    }
    free(A);
    free(B);
    free(A16);
    free(B16);
    free(C);
}

static void test_products(void **state)
{
    for (int isa = 0; isa < n_isas(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        assert_int_equal(ep_kern_isa_get(), isa);
        rng_state = 0x9E3779B97F4A7C15ull + (uint64_t)isa;
        for (size_t a = 0; a < EP_ARRAY_LEN(dims_m); a++)
            for (size_t b = 0; b < EP_ARRAY_LEN(dims_n); b++)
                for (size_t c = 0; c < EP_ARRAY_LEN(dims_k); c++)
                    check_product_bf16(dims_m[a], dims_n[b], dims_k[c], 1);
        // Taller than one row block (64) with a ragged end.
        check_product_bf16(71, 9, 37, 1);
        // The experts' task shapes, unpadded as their weights are (up to
        // EP_KERN_PF_MAX_ROWS = 16 rows the tiles prefetch the next 4-row
        // block as one contiguous run): 64 weight rows of gate/up (K =
        // hidden) and of down (K = 1408 or 768, the intermediate sizes of
        // DeepSeek-V2-Lite and Qwen3-30B-A3B, and an odd one); decode m,
        // both sides of 16 rows, and n ragged so the last block is short.
        const int task_k[] = {2048, 1408, 768, 1411};
        const int task_mn[][2] = {{1, 64}, {2, 64}, {6, 61}, {9, 7}, {16, 64}, {17, 61}};
        for (size_t c = 0; c < EP_ARRAY_LEN(task_k); c++)
            for (size_t t = 0; t < EP_ARRAY_LEN(task_mn); t++)
                check_product_bf16(task_mn[t][0], task_mn[t][1], task_k[c], 0);
    }
}

// K = 0: every output is the empty sum, 0.
static void test_products_empty_k(void **state)
{
    for (int isa = 0; isa < n_isas(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        float C[6];
        uint16_t A16[1] = {0}, B16[1] = {0};
        for (int i = 0; i < 6; i++)
            C[i] = SENTINEL;
        ep_kern_bf16_nt(3, 2, 0, A16, 0, B16, 0, C, 2);
        for (int i = 0; i < 6; i++)
            assert_true(C[i] == 0.0f);
    }
}

// Packing W [n, K] (row stride ldw) into column panels: every element of P
// where the layout puts it, P[64 j K + k w_j + c] = W[64 j + c, k] with w_j =
// min(64, n - 64 j), bit for bit; all n K floats of P written; and unpacking
// gives W back bit for bit without touching the padding of its rows.
static void test_pack(void **state)
{
    static const int ns[] = {1, 5, 16, 63, 64, 65, 127, 128, 130, 200};
    static const int ks[] = {1, 3, 17, 64, 100};
    for (int isa = 0; isa < n_isas(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        rng_state = 0x5EEDull + (uint64_t)isa;
        for (size_t a = 0; a < EP_ARRAY_LEN(ns); a++)
            for (size_t b = 0; b < EP_ARRAY_LEN(ks); b++) {
                const int n = ns[a], K = ks[b], ldw = K + 3;
                float *W = malloc(sizeof(float) * n * ldw), *W2 = malloc(sizeof(float) * n * ldw);
                float *P = malloc(sizeof(float) * n * K);
                for (int i = 0; i < n * ldw; i++)
                    W[i] = i % ldw < K ? frand() : NAN; // padding: never read
                for (int i = 0; i < n * K; i++)
                    P[i] = SENTINEL;
                ep_kern_f32_pack(n, K, W, ldw, P);
                for (int j = 0; 64 * j < n; j++) {
                    const int wj = n - 64 * j < 64 ? n - 64 * j : 64;
                    for (int k = 0; k < K; k++)
                        for (int c = 0; c < wj; c++) {
                            const float *got = &P[(size_t)64 * j * K + (size_t)k * wj + c];
                            const float *want = &W[(size_t)(64 * j + c) * ldw + k];
                            if (memcmp(got, want, sizeof(float)))
                                fail_msg("pack isa %s n=%d K=%d panel %d k=%d c=%d: got %g, "
                                         "expected %g",
                                         ep_kern_isa_name(ep_kern_isa_get()), n, K, j, k, c, *got,
                                         *want);
                        }
                }
                for (int i = 0; i < n * ldw; i++)
                    W2[i] = SENTINEL;
                ep_kern_f32_unpack(n, K, P, W2, ldw);
                for (int r = 0; r < n; r++)
                    for (int k = 0; k < ldw; k++) {
                        const float want = k < K ? W[(size_t)r * ldw + k] : SENTINEL;
                        if (memcmp(&W2[(size_t)r * ldw + k], &want, sizeof want))
                            fail_msg("unpack isa %s n=%d K=%d W[%d,%d]: got %g, expected %g",
                                     ep_kern_isa_name(ep_kern_isa_get()), n, K, r, k,
                                     W2[(size_t)r * ldw + k], want);
                    }
                free(W);
                free(W2);
                free(P);
            }
    }
}

// C = A . W^T over packed W on padded strides, bit for bit the plain chain
// acc = fmaf(a[k], w[k], acc), k = 0..K-1, from 0 (whatever the ISA, m or
// tiling), with A's padding NaN (never read) and C's padding untouched. When
// n > 64, the panels from 64 on (P + 64 K, n - 64 rows) written at C + 64
// give the same columns and write nothing else: a task's run of panels.
static void check_panel(int m, int n, int K, int pad)
{
    const int lda = K + 3 * pad, ldw = K + 2 * pad, ldc = n + 5 * pad;
    const size_t nc = (size_t)m * ldc;
    float *A = malloc(sizeof(float) * m * lda), *W = malloc(sizeof(float) * n * ldw);
    float *P = malloc(sizeof(float) * n * K);
    float *C = malloc(sizeof(float) * nc), *C2 = malloc(sizeof(float) * nc);
    for (int i = 0; i < m * lda; i++)
        A[i] = i % lda < K ? frand() : NAN;
    for (int i = 0; i < n * ldw; i++)
        W[i] = frand();
    ep_kern_f32_pack(n, K, W, ldw, P);
    for (size_t i = 0; i < nc; i++)
        C[i] = C2[i] = SENTINEL;
    ep_kern_f32_panel(m, n, K, A, lda, P, C, ldc);
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            float ref = 0.0f;
            for (int k = 0; k < K; k++)
                ref = fmaf(A[(size_t)i * lda + k], W[(size_t)j * ldw + k], ref);
            const float got = C[(size_t)i * ldc + j];
            if (memcmp(&got, &ref, sizeof ref))
                fail_msg("f32 panel isa %s m=%d n=%d K=%d C[%d,%d]: got %.9g (%a), expected "
                         "%.9g (%a)",
                         ep_kern_isa_name(ep_kern_isa_get()), m, n, K, i, j, got, (double)got, ref,
                         (double)ref);
        }
        for (int j = n; j < ldc; j++)
            assert_true(C[(size_t)i * ldc + j] == SENTINEL);
    }
    if (n > EP_KERN_PANEL) {
        ep_kern_f32_panel(m, n - EP_KERN_PANEL, K, A, lda, P + (size_t)EP_KERN_PANEL * K,
                          C2 + EP_KERN_PANEL, ldc);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < ldc; j++) {
                const size_t at = (size_t)i * ldc + j;
                const float want = j >= EP_KERN_PANEL && j < n ? C[at] : SENTINEL;
                if (memcmp(&C2[at], &want, sizeof want))
                    fail_msg("f32 panel isa %s m=%d n=%d K=%d, panels from 64 on: C[%d,%d]: got "
                             "%.9g, expected %.9g",
                             ep_kern_isa_name(ep_kern_isa_get()), m, n, K, i, j, C2[at], want);
            }
    }
    free(A);
    free(W);
    free(P);
    free(C);
    free(C2);
}

static void test_products_panel(void **state)
{
    static const int ms[] = {1, 2, 3, 5, 6, 7, 11, 13, 64};
    static const int ns[] = {1, 3, 16, 17, 63, 64, 65, 130};
    static const int ks[] = {1, 5, 16, 17, 33, 100};
    for (int isa = 0; isa < n_isas(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        assert_int_equal(ep_kern_isa_get(), isa);
        rng_state = 0xC0FFEEull + (uint64_t)isa;
        for (size_t a = 0; a < EP_ARRAY_LEN(ms); a++)
            for (size_t b = 0; b < EP_ARRAY_LEN(ns); b++)
                for (size_t c = 0; c < EP_ARRAY_LEN(ks); c++)
                    check_panel(ms[a], ns[b], ks[c], 1);
        // The experts' task shapes, unpadded: a panel or two of gate|up (K =
        // hidden) and of down (K = an intermediate size: DeepSeek-V2-Lite,
        // Qwen3-30B-A3B, an odd one), decode and prefill heights.
        const int task_k[] = {2048, 1408, 768, 1411};
        const int task_mn[][2] = {{1, 64}, {2, 128}, {6, 61}, {7, 71}, {16, 64}, {70, 130}};
        for (size_t c = 0; c < EP_ARRAY_LEN(task_k); c++)
            for (size_t t = 0; t < EP_ARRAY_LEN(task_mn); t++)
                check_panel(task_mn[t][0], task_mn[t][1], task_k[c], 0);
        // K = 0: zeros in [m, n], the padding untouched; m = 0 or n = 0:
        // nothing written and P (NULL) not read.
        float C[3 * 4], dummy = 1.0f;
        for (int i = 0; i < 3 * 4; i++)
            C[i] = SENTINEL;
        ep_kern_f32_panel(3, 3, 0, &dummy, 1, &dummy, C, 4);
        for (int i = 0; i < 3 * 4; i++)
            assert_true(C[i] == (i % 4 < 3 ? 0.0f : SENTINEL));
        for (int i = 0; i < 3 * 4; i++)
            C[i] = SENTINEL;
        ep_kern_f32_panel(0, 3, 5, &dummy, 5, NULL, C, 4);
        ep_kern_f32_panel(3, 0, 5, &dummy, 5, NULL, C, 4);
        for (int i = 0; i < 3 * 4; i++)
            assert_true(C[i] == SENTINEL);
    }
}

// ---- SwiGLU and BF16 rounding -----------------------------------------------------

static double ref_silu(double v)
{
    if (v >= 0) return v / (1.0 + exp(-v));
    double t = exp(v);
    return v * (t / (1.0 + t));
}

// Relative 1e-6 (a few ulp: polynomial exp, one division), absolute 1e-30
// where the value underflows; -inf gives -0, +inf gives +inf, NaN stays NaN.
static void test_swiglu(void **state)
{
    enum { N = 1000 + 13 };
    float g[N], u[N], out[N];
    for (int isa = 0; isa < n_isas(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        rng_state = 42;
        for (int i = 0; i < N; i++) {
            g[i] = 12.0f * frand();
            u[i] = frand();
        }
        const float special[] = {0.0f,    -0.0f, 1e-30f, -1e-30f, 87.0f,    -87.0f, -99.0f, -101.0f,
                                 -104.0f, 1e30f, -1e30f, 0.6931f, -0.6931f, 20.0f,  -20.0f};
        for (size_t i = 0; i < EP_ARRAY_LEN(special); i++)
            g[i] = special[i];
        ep_kern_swiglu(N, g, u, out);
        for (int i = 0; i < N; i++) {
            const double ref = ref_silu(g[i]) * u[i];
            if (!(fabs(out[i] - ref) <= 1e-6 * fabs(ref) + 1e-30))
                fail_msg("isa %s swiglu g=%g u=%g: got %.9g expected %.9g",
                         ep_kern_isa_name(ep_kern_isa_get()), g[i], u[i], out[i], ref);
        }
        float ge[4] = {INFINITY, -INFINITY, NAN, 3.0f}, ue[4] = {2.0f, 2.0f, 1.0f, 1.0f}, oe[4];
        oe[3] = SENTINEL;
        ep_kern_swiglu(3, ge, ue, oe); // also: n = 3 must not write oe[3]
        assert_true(isinf(oe[0]) && oe[0] > 0);
        assert_true(oe[1] == 0.0f);
        assert_true(isnan(oe[2]));
        assert_true(oe[3] == SENTINEL);
    }
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// y += w x: bit for bit the plain C loop (a multiply, then an add) on every
// ISA, every length up to 70 (full vectors and every masked tail), and
// nothing written past n.
static void test_axpy(void **state)
{
    (void)state;
    enum { N = 70 };
    float x[N], y0[N + 1], y[N + 1];
    for (int isa = 0; isa < n_isas(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        rng_state = 7;
        for (int n = 0; n <= N; n++) {
            const float w = frand() * 3.0f - 1.5f;
            for (int i = 0; i < n; i++) {
                x[i] = frand() * 8.0f - 4.0f;
                y0[i] = y[i] = frand() * 2.0f - 1.0f;
            }
            y[n] = SENTINEL;
            ep_kern_axpy(n, w, x, y);
            for (int i = 0; i < n; i++) {
                volatile float prod = w * x[i]; // rounded on its own, as the kernel does
                const float ref = y0[i] + prod;
                if (memcmp(&ref, &y[i], sizeof ref))
                    fail_msg("isa %s axpy n=%d i=%d: got %.9g expected %.9g",
                             ep_kern_isa_name(ep_kern_isa_get()), n, i, y[i], ref);
            }
            assert_true(y[n] == SENTINEL);
        }
    }
}

// Bit for bit with ep_f32_to_bf16: random values, ties (both parities),
// carries into the exponent, subnormals, infinities and NaNs.
static void test_to_bf16(void **state)
{
    enum { N = 4096 + 7 };
    float src[N];
    uint16_t dst[N + 1];
    for (int isa = 0; isa < n_isas(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        rng_state = 7;
        for (int i = 0; i < N; i++) {
            rng_state ^= rng_state >> 12;
            rng_state ^= rng_state << 25;
            rng_state ^= rng_state >> 27;
            src[i] = bits_f32((uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32));
        }
        const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f7fffffu, 0x7f7fffffu,
                                    0x00000001u, 0x80008000u, 0x7f800000u, 0xff800000u,
                                    0x7f800001u, 0xffc00000u, 0x00000000u, 0x80000000u};
        for (size_t i = 0; i < EP_ARRAY_LEN(special); i++)
            src[i] = bits_f32(special[i]);
        dst[N] = 0xBEEF;
        ep_kern_to_bf16(N, src, dst);
        for (int i = 0; i < N; i++)
            if (dst[i] != ep_f32_to_bf16(src[i]))
                fail_msg("isa %s to_bf16(%a): got 0x%04x expected 0x%04x",
                         ep_kern_isa_name(ep_kern_isa_get()), (double)src[i], dst[i],
                         ep_f32_to_bf16(src[i]));
        assert_int_equal(dst[N], 0xBEEF);
    }
}

// ---- attention --------------------------------------------------------------------

// Scores C = A . B^T on padded strides (NaN padding of A and B never read),
// against the double product: |C - ref| <= 1e-5 * sum_k |a b|; C's padding
// untouched. Shapes: odd, the 4x4 tile's edges, head dims (32, 128) and the
// MLA widths (kv_lora + rope: 80, 576).
static void check_nt(int m, int n, int K, int pad)
{
    const int lda = K + 3 * pad, ldb = K + 2 * pad, ldc = n + 5 * pad;
    float *A = malloc(sizeof(float) * m * lda), *B = malloc(sizeof(float) * n * ldb);
    float *C = malloc(sizeof(float) * m * ldc);
    for (int i = 0; i < m * lda; i++)
        A[i] = i % lda < K ? frand() : NAN;
    for (int i = 0; i < n * ldb; i++)
        B[i] = i % ldb < K ? frand() : NAN;
    for (int i = 0; i < m * ldc; i++)
        C[i] = SENTINEL;
    ep_kern_f32_nt(m, n, K, A, lda, B, ldb, C, ldc);
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                const double p = (double)A[(size_t)i * lda + k] * B[(size_t)j * ldb + k];
                ref += p;
                mag += fabs(p);
            }
            const float got = C[(size_t)i * ldc + j];
            if (!(fabs(got - ref) <= 1e-5 * mag + 1e-30))
                fail_msg("f32 nt isa %s m=%d n=%d K=%d C[%d,%d]: got %.9g expected %.9g",
                         ep_kern_isa_name(ep_kern_isa_get()), m, n, K, i, j, got, ref);
        }
        for (int j = n; j < ldc; j++)
            assert_true(C[(size_t)i * ldc + j] == SENTINEL);
    }
    free(A);
    free(B);
    free(C);
}

// C = beta C + A . B, bit for bit the chain acc = beta * C (0 when beta is
// 0, and then C is not read: it starts NaN), acc = fmaf(a[k], B[k, j], acc);
// B's padding NaN, C's padding untouched.
static void check_nn(int m, int n, int K, int pad, float beta)
{
    const int lda = K + 3 * pad, ldb = n + 2 * pad, ldc = n + 5 * pad;
    float *A = malloc(sizeof(float) * m * lda + 1), *B = malloc(sizeof(float) * K * ldb + 1);
    float *C = malloc(sizeof(float) * m * ldc), *C0 = malloc(sizeof(float) * m * ldc);
    for (int i = 0; i < m * lda; i++)
        A[i] = i % lda < K ? frand() : NAN;
    for (int i = 0; i < K * ldb; i++)
        B[i] = i % ldb < n ? frand() : NAN;
    for (int i = 0; i < m * ldc; i++)
        C[i] = C0[i] = i % ldc >= n ? SENTINEL : beta == 0.0f ? NAN : frand();
    ep_kern_f32_nn(m, n, K, A, lda, B, ldb, beta, C, ldc);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < ldc; j++) {
            const size_t at = (size_t)i * ldc + j;
            float ref = SENTINEL;
            if (j < n) {
                ref = beta == 0.0f ? 0.0f : beta * C0[at];
                for (int k = 0; k < K; k++)
                    ref = fmaf(A[(size_t)i * lda + k], B[(size_t)k * ldb + j], ref);
            }
            if (memcmp(&C[at], &ref, sizeof ref))
                fail_msg("f32 nn isa %s m=%d n=%d K=%d beta=%g C[%d,%d]: got %.9g (%a), "
                         "expected %.9g (%a)",
                         ep_kern_isa_name(ep_kern_isa_get()), m, n, K, (double)beta, i, j, C[at],
                         (double)C[at], ref, (double)ref);
        }
    free(A);
    free(B);
    free(C);
    free(C0);
}

static void test_attn_products(void **state)
{
    static const int ms[] = {1, 2, 3, 4, 5, 6, 7, 13, 64};
    static const int nt_n[] = {1, 3, 4, 5, 16, 17};
    static const int nt_k[] = {1, 5, 16, 17, 32, 33, 80, 128, 576};
    static const int nn_n[] = {1, 15, 16, 17, 32, 64, 65, 130, 512};
    static const int nn_k[] = {0, 1, 5, 16, 17};
    static const float betas[] = {0.0f, 1.0f, 0.37f};
    for (int isa = 0; isa < n_isas(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        assert_int_equal(ep_kern_isa_get(), isa);
        rng_state = 0xA77Eull + (uint64_t)isa;
        for (size_t a = 0; a < EP_ARRAY_LEN(ms); a++) {
            for (size_t b = 0; b < EP_ARRAY_LEN(nt_n); b++)
                for (size_t c = 0; c < EP_ARRAY_LEN(nt_k); c++)
                    check_nt(ms[a], nt_n[b], nt_k[c], 1);
            for (size_t b = 0; b < EP_ARRAY_LEN(nn_n); b++)
                for (size_t c = 0; c < EP_ARRAY_LEN(nn_k); c++)
                    for (size_t d = 0; d < EP_ARRAY_LEN(betas); d++)
                        check_nn(ms[a], nn_n[b], nn_k[c], 1, betas[d]);
        }
        check_nt(3, 5, 0, 1); // K = 0: zeros
        // m = 0 or n = 0: nothing written, the operands (NULL) not read.
        float C[4] = {SENTINEL, SENTINEL, SENTINEL, SENTINEL}, one = 1.0f;
        ep_kern_f32_nt(0, 3, 5, NULL, 5, &one, 5, C, 4);
        ep_kern_f32_nt(3, 0, 5, &one, 5, NULL, 5, C, 4);
        ep_kern_f32_nn(0, 3, 5, NULL, 5, &one, 5, 1.0f, C, 4);
        ep_kern_f32_nn(3, 0, 5, &one, 5, NULL, 5, 1.0f, C, 4);
        for (int i = 0; i < 4; i++)
            assert_true(C[i] == SENTINEL);
    }
}

// One softmax tile against its definition in double, rows in every state:
// first tile (mx -inf), a running max above and below the tile's, visible
// counts <= 0, 1, partial, w and beyond w; widths with masked tails. Then
// whole rows of scores streamed through tiles of several widths give the
// softmax-weighted sum of value rows (O / sum) within 1e-6 relative.
static void test_softmax_tile(void **state)
{
    enum { ROWS = 9, LDS = 70, DV = 37, LDO = 40, N = 150 };
    static const int widths[] = {1, 5, 16, 17, 64};
    static const int valid_of[ROWS] = {-3, 0, 1, 4, 16, 17, 64, 65, 1000};
    float S[ROWS * LDS], S0[ROWS * LDS], O[ROWS * LDO], O0[ROWS * LDO];
    float mx[ROWS], sum[ROWS], mx0[ROWS], sum0[ROWS];
    const float scale = 0.125f;
    for (int isa = 0; isa < n_isas(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        rng_state = 0x50F7ull + (uint64_t)isa;
        for (size_t wi = 0; wi < EP_ARRAY_LEN(widths); wi++)
            for (int state_kind = 0; state_kind < 3; state_kind++) {
                const int w = widths[wi];
                for (int i = 0; i < ROWS * LDS; i++)
                    S[i] = S0[i] = frand() * 40.0f;
                for (int i = 0; i < ROWS * LDO; i++)
                    O[i] = O0[i] = frand();
                for (int i = 0; i < ROWS; i++) {
                    // state 0: a first tile; 1: a running max above any score
                    // of the tile (c < 1 only from the tile's side); 2: below.
                    mx[i] = mx0[i] = state_kind == 0 ? -INFINITY : state_kind == 1 ? 6.0f : -6.0f;
                    sum[i] = sum0[i] = state_kind == 0 ? 0.0f : 1.0f + (float)i;
                    if (state_kind == 0)
                        for (int d = 0; d < DV; d++)
                            O[i * LDO + d] = O0[i * LDO + d] = 0.0f;
                }
                ep_kern_softmax_tile(ROWS, w, S, LDS, valid_of, scale, mx, sum, O, LDO, DV);
                for (int i = 0; i < ROWS; i++) {
                    const int n = EP_MIN(valid_of[i], w);
                    double m1 = mx0[i], add = 0;
                    for (int j = 0; j < n; j++)
                        m1 = fmax(m1, (double)(S0[i * LDS + j] * scale));
                    const double c = n <= 0 ? 1.0 : mx0[i] == -INFINITY ? 0.0 : exp(mx0[i] - m1);
                    for (int j = 0; j < LDS; j++) {
                        double want = S0[i * LDS + j];
                        if (j < n)
                            add += want = exp((double)(S0[i * LDS + j] * scale) - m1);
                        else if (j < w)
                            want = 0.0;
                        const double got = S[i * LDS + j];
                        if (!(fabs(got - want) <= 1e-6 * fabs(want) + (j < w ? 1e-37 : 0.0)))
                            fail_msg("softmax isa %s w=%d state %d row %d (valid %d) S[%d]: got "
                                     "%.9g expected %.9g",
                                     ep_kern_isa_name(ep_kern_isa_get()), w, state_kind, i,
                                     valid_of[i], j, got, want);
                    }
                    const double want_mx = n <= 0 ? mx0[i] : m1;
                    const double want_sum = n <= 0 ? sum0[i] : sum0[i] * c + add;
                    assert_true(mx[i] == (float)want_mx || (isinf(mx[i]) && isinf(want_mx)));
                    if (!(fabs(sum[i] - want_sum) <= 1e-6 * want_sum))
                        fail_msg("softmax isa %s w=%d state %d row %d: sum %.9g expected %.9g",
                                 ep_kern_isa_name(ep_kern_isa_get()), w, state_kind, i, sum[i],
                                 want_sum);
                    for (int d = 0; d < LDO; d++) {
                        const double want = d < DV ? O0[i * LDO + d] * c : O0[i * LDO + d];
                        if (!(fabs(O[i * LDO + d] - want) <= 1e-6 * fabs(want)))
                            fail_msg("softmax isa %s w=%d state %d row %d: O[%d] %.9g expected "
                                     "%.9g",
                                     ep_kern_isa_name(ep_kern_isa_get()), w, state_kind, i, d,
                                     O[i * LDO + d], want);
                    }
                }
            }

        // Streaming: one row of N scores against N value rows of DV, in tiles
        // of w; O / sum is the softmax-weighted sum.
        static float sc[N], V[N * DV];
        for (int j = 0; j < N; j++)
            sc[j] = frand() * 60.0f;
        for (int j = 0; j < N * DV; j++)
            V[j] = frand();
        double p[N], ps = 0, pm = -INFINITY;
        for (int j = 0; j < N; j++)
            pm = fmax(pm, (double)(sc[j] * scale));
        for (int j = 0; j < N; j++)
            ps += p[j] = exp((double)(sc[j] * scale) - pm);
        for (size_t wi = 0; wi < EP_ARRAY_LEN(widths); wi++) {
            const int w = widths[wi];
            float m = -INFINITY, l = 0, o[DV] = {0}, tile[64];
            for (int s0 = 0; s0 < N; s0 += w) {
                const int tw = EP_MIN(w, N - s0), vis = N - s0;
                memcpy(tile, sc + s0, (size_t)tw * sizeof(float));
                ep_kern_softmax_tile(1, tw, tile, 64, &vis, scale, &m, &l, o, DV, DV);
                ep_kern_f32_nn(1, DV, tw, tile, 64, V + (size_t)s0 * DV, DV, 1.0f, o, DV);
            }
            for (int d = 0; d < DV; d++) {
                double want = 0;
                for (int j = 0; j < N; j++)
                    want += p[j] / ps * V[j * DV + d];
                if (!(fabs(o[d] / l - want) <= 1e-6 * (1.0 + fabs(want))))
                    fail_msg("softmax isa %s streamed in tiles of %d: out[%d] %.9g expected %.9g",
                             ep_kern_isa_name(ep_kern_isa_get()), w, d, o[d] / l, want);
            }
        }
    }
}

// ---- thread pool ---------------------------------------------------------------

typedef struct {
    atomic_int count[1000];
    atomic_int bad_thread;
    int threads;
} pool_ctx;

static void pool_task(void *ctx, int task, int thread)
{
    pool_ctx *p = ctx;
    atomic_fetch_add(&p->count[task], 1);
    if (thread < 0 || thread >= p->threads) atomic_fetch_add(&p->bad_thread, 1);
}

// Every task runs exactly once, thread ids stay in range, across thread
// counts that grow and shrink (workers are made on demand) and many rounds.
static void test_pool(void **state)
{
    static pool_ctx p;
    const int counts[] = {1, 3, 2, 4, 1, 3};
    for (size_t c = 0; c < EP_ARRAY_LEN(counts); c++) {
        ep_par_set_threads(counts[c]);
        assert_int_equal(ep_par_threads(), counts[c]);
        for (int round = 0; round < 50; round++) {
            const int n = round % 2 ? 1000 : 1 + round;
            for (int i = 0; i < 1000; i++)
                atomic_store(&p.count[i], 0);
            atomic_store(&p.bad_thread, 0);
            p.threads = counts[c];
            ep_par_for(n, pool_task, &p);
            for (int i = 0; i < 1000; i++)
                assert_int_equal(atomic_load(&p.count[i]), i < n ? 1 : 0);
            assert_int_equal(atomic_load(&p.bad_thread), 0);
        }
    }
    // Many tiny rounds: the caller usually runs every task before a worker
    // wakes, so workers keep arriving at rounds already closed (they must
    // sleep again, not run a stale round's tasks) or at the next one.
    ep_par_set_threads(4);
    p.threads = 4;
    atomic_store(&p.bad_thread, 0);
    for (int round = 0; round < 3000; round++) {
        const int n = 1 + round % 3;
        for (int i = 0; i < n; i++)
            atomic_store(&p.count[i], 0);
        ep_par_for(n, pool_task, &p);
        for (int i = 0; i < n; i++)
            assert_int_equal(atomic_load(&p.count[i]), 1);
    }
    assert_int_equal(atomic_load(&p.bad_thread), 0);
    ep_par_for(0, pool_task, &p); // no tasks: returns at once
}

// ---- grouped forward against the reference ---------------------------------------

// Odd sizes chosen to cross the kernels' edges: hidden 71 = 64 + 7 (two down
// tasks, 16-lane tails), moe_inter 77 = 64 + 13 (two gate|up tasks, a
// 32-lane BF16 tail).
static void cfg_odd(ep_model_cfg *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "test-kernels-odd");
    c->arch = EP_ARCH_QWEN3_MOE;
    c->hidden = 71;
    c->n_layers = 1;
    c->n_heads = 1;
    c->n_kv_heads = 1;
    c->head_dim = 71;
    c->vocab = 17;
    c->intermediate = 19;
    c->max_pos = 64;
    c->rms_eps = 1e-6f;
    c->rope_theta = 10000.0f;
    c->n_experts = 11;
    c->k_base = 3;
    c->moe_inter = 77;
    c->topk_method = EP_TOPK_GREEDY;
    c->n_group = 1;
    c->topk_group = 1;
    c->norm_topk_prob = true;
    c->routed_scaling_factor = 1.0f;
    c->seed = 1234567;
}

// T tokens with k distinct experts each; with `hot`, expert 5 is in every
// token, so its rows exceed one pass (512) when T does.
static void make_routes(int T, int E, int k, bool hot, ep_routes *r, float *x, int H)
{
    r->n_tokens = T;
    r->offsets = malloc(sizeof(int) * (T + 1));
    r->expert = malloc(sizeof(int) * T * k);
    r->weight = malloc(sizeof(float) * T * k);
    for (int t = 0; t < T; t++) {
        r->offsets[t] = t * k;
        int first = (int)((frand() + 1.0f) * 0.5f * E) % E;
        for (int j = 0; j < k; j++) {
            r->expert[t * k + j] = hot && j == 0 ? 5 : (first + 3 * j + (hot ? 1 : 0)) % E;
            r->weight[t * k + j] = 0.2f + 0.5f * (frand() + 1.0f);
        }
    }
    r->offsets[T] = T * k;
    for (int i = 0; i < T * H; i++)
        x[i] = 2.0f * frand();
}

// fp32: per row max|y - ref| <= 1e-5 * max|ref|, as test_experts. BF16:
// the reference uses the same BF16 weights, but the kernels also round x and
// the hidden activation to BF16 (relative 2^-9 each), so per row
// max|y - ref| <= 2e-2 * max|ref| and over the whole output NMSE <= 1e-4.
static void check_forward(ep_experts *ex, const ep_experts *ref_ex, const ep_routes *r,
                          const float *x, int H, double tol, double nmse_max, float *y_out)
{
    const int T = r->n_tokens;
    float *y = malloc(sizeof(float) * T * H), *ref = malloc(sizeof(float) * T * H);
    assert_int_equal(ep_experts_forward(ex, 0, T, r->offsets, r->expert, r->weight, x, y), EP_OK);
    ep_experts_reference(ref_ex, 0, r, x, ref);
    double num = 0, den = 0;
    for (int t = 0; t < T; t++) {
        double mag = 0, diff = 0;
        for (int h = 0; h < H; h++) {
            mag = fmax(mag, fabs(ref[t * H + h]));
            diff = fmax(diff, fabs(y[t * H + h] - ref[t * H + h]));
            num += (double)(y[t * H + h] - ref[t * H + h]) * (y[t * H + h] - ref[t * H + h]);
            den += (double)ref[t * H + h] * ref[t * H + h];
        }
        if (!(diff <= tol * mag + 1e-30))
            fail_msg("isa %s token %d of %d: max|y - ref| = %g, max|ref| = %g, tol %g",
                     ep_kern_isa_name(ep_kern_isa_get()), t, T, diff, mag, tol);
    }
    assert_true(den > 0);
    if (!(num / den <= nmse_max)) fail_msg("NMSE %g above %g", num / den, nmse_max);
    if (y_out) memcpy(y_out, y, sizeof(float) * T * H);
    free(y);
    free(ref);
}

// The forward of tokens [0, cut) and then [cut, T) as two calls (as two
// micro-batches run them) must give the bits of the whole step: every
// expert's kernel is the same for any number of rows.
static void check_split(ep_experts *ex, const char *what, const ep_routes *r, const float *x, int H,
                        int cut, const float *y_whole)
{
    const int T = r->n_tokens;
    float *y = malloc(sizeof(float) * T * H);
    int *off = malloc(sizeof(int) * (T + 1));
    for (int part = 0; part < 2; part++) {
        const int t0 = part ? cut : 0, t1 = part ? T : cut, base = r->offsets[t0];
        for (int t = t0; t <= t1; t++)
            off[t - t0] = r->offsets[t] - base;
        assert_int_equal(ep_experts_forward(ex, 0, t1 - t0, off, r->expert + base, r->weight + base,
                                            x + (size_t)t0 * H, y + (size_t)t0 * H),
                         EP_OK);
    }
    for (size_t i = 0; i < (size_t)T * H; i++)
        if (memcmp(&y[i], &y_whole[i], sizeof(float)))
            fail_msg("%s isa %s T=%d split at %d: token %zu [%zu]: %.9g, whole step %.9g", what,
                     ep_kern_isa_name(ep_kern_isa_get()), T, cut, i / H, i % H, y[i], y_whole[i]);
    free(y);
    free(off);
}

static void free_routes(ep_routes *r)
{
    free(r->offsets);
    free(r->expert);
    free(r->weight);
}

static void test_forward_variants(void **state)
{
    ep_model_cfg cfg;
    cfg_odd(&cfg);
    const int H = cfg.hidden, E = cfg.n_experts, k = cfg.k_base;
    ep_weights *w = NULL;
    assert_int_equal(ep_weights_open(&cfg, &w), EP_OK);
    ep_experts *f32k = NULL, *bf16 = NULL;
    ep_experts_opts o_bf16 = {.weight_dtype = EP_DTYPE_BF16};
    assert_int_equal(ep_experts_load_ex(&cfg, w, NULL, -1, NULL, &f32k), EP_OK);
    assert_int_equal(ep_experts_load_ex(&cfg, w, NULL, -1, &o_bf16, &bf16), EP_OK);
    // BF16 storage: half the bytes.
    assert_int_equal(ep_experts_bytes(bf16) * 2, ep_experts_bytes(f32k));

    const int Ts[] = {1, 5, 13, 600}; // decode sizes, and a step beyond one pass
    rng_state = 99;
    for (size_t ti = 0; ti < EP_ARRAY_LEN(Ts); ti++) {
        const int T = Ts[ti];
        const bool hot = T > 100;
        float *x = malloc(sizeof(float) * T * H);
        ep_routes r;
        make_routes(T, E, k, hot, &r, x, H);
        float *y1 = malloc(sizeof(float) * T * H), *y3 = malloc(sizeof(float) * T * H);
        float *yb = malloc(sizeof(float) * T * H);
        for (int isa = 0; isa < n_isas(); isa++) {
            ep_kern_isa_cap((ep_kern_isa)isa);
            ep_par_set_threads(1);
            check_forward(f32k, f32k, &r, x, H, 1e-5, 1e-10, y1);
            check_forward(bf16, bf16, &r, x, H, 2e-2, 1e-4, yb);
            // Two calls of about half the tokens each: the same bits.
            if (T > 1) {
                check_split(f32k, "f32", &r, x, H, T / 2 + 1, y1);
                check_split(bf16, "bf16", &r, x, H, T / 2 + 1, yb);
            }
            // Three threads: the same bits (sums are ordered by the inputs alone).
            ep_par_set_threads(3);
            check_forward(f32k, f32k, &r, x, H, 1e-5, 1e-10, y3);
            assert_memory_equal(y1, y3, sizeof(float) * T * H);
        }
        free(x);
        free(y1);
        free(y3);
        free(yb);
        free_routes(&r);
    }
    ep_experts_free(f32k);
    ep_experts_free(bf16);
    ep_weights_free(w);
}

// Storage other than F32 and BF16 is refused with a message naming it.
static void test_load_bad_dtype(void **state)
{
    ep_model_cfg cfg;
    cfg_odd(&cfg);
    ep_weights *w = NULL;
    assert_int_equal(ep_weights_open(&cfg, &w), EP_OK);
    ep_experts *e = (ep_experts *)&cfg; // must be reset to NULL
    ep_experts_opts o = {.weight_dtype = EP_DTYPE_F16};
    assert_int_equal(ep_experts_load_ex(&cfg, w, NULL, -1, &o, &e), EP_ERR_UNSUPPORTED);
    assert_null(e);
    assert_non_null(strstr(ep_last_error(), "F16"));
    ep_weights_free(w);
}

int main(void)
{
    printf("kernel variants on this CPU: up to %s\n", ep_kern_isa_name(ep_kern_isa_best()));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_products, teardown_isa),
        cmocka_unit_test_teardown(test_products_empty_k, teardown_isa),
        cmocka_unit_test_teardown(test_pack, teardown_isa),
        cmocka_unit_test_teardown(test_products_panel, teardown_isa),
        cmocka_unit_test_teardown(test_swiglu, teardown_isa),
        cmocka_unit_test_teardown(test_axpy, teardown_isa),
        cmocka_unit_test_teardown(test_to_bf16, teardown_isa),
        cmocka_unit_test_teardown(test_attn_products, teardown_isa),
        cmocka_unit_test_teardown(test_softmax_tile, teardown_isa),
        cmocka_unit_test_teardown(test_pool, teardown_isa),
        cmocka_unit_test_teardown(test_forward_variants, teardown_isa),
        cmocka_unit_test(test_load_bad_dtype),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
