// The dense host ops (experts/dense.h) against plain loops: gemm_nt for odd
// shapes (5, 7, 11, 13, and the empty and single-row cases) with beta 0 and
// 1; ep_dense_mm over fp32 and BF16 matrices with row strides, shapes around
// its 64-row tasks, every ISA and 1 or 3
// threads; and swiglu values including large |x|, infinities and NaN. Fixed
// seeds; tolerances stated.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "experts/dense.h"
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

static void fill(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        a[i] = frand();
}

// C = A . B^T + beta * C0 with A [M, K], B [N, K], checked element by element:
// |C - ref| <= 1e-5 * Σ_k |A_mk B_nk| + 1e-6 * |beta C0| (fp32 accumulation
// error grows with the magnitudes summed, not with the result).
static void check_gemm(int M, int N, int K, float beta, bool nan_c)
{
    float *A = malloc(sizeof(float) * (M * K + 1)), *B = malloc(sizeof(float) * (N * K + 1));
    float *C = malloc(sizeof(float) * (M * N + 1)), *C0 = malloc(sizeof(float) * (M * N + 1));
    fill(A, (size_t)M * K);
    fill(B, (size_t)N * K);
    fill(C0, (size_t)M * N);
    if (nan_c)
        for (int i = 0; i < M * N; i++)
            C0[i] = NAN;
    memcpy(C, C0, sizeof(float) * M * N);
    C[M * N] = 12345.0f; // guard past the end
    ep_dense_gemm_nt(M, N, K, A, B, beta, C);
    assert_true(C[M * N] == 12345.0f);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                ref += (double)A[m * K + k] * B[n * K + k];
                mag += fabs((double)A[m * K + k] * B[n * K + k]);
            }
            if (beta != 0.0f) {
                ref += (double)beta * C0[m * N + n];
                mag += fabs((double)beta * C0[m * N + n]) * 0.1;
            }
            double got = C[m * N + n];
            if (!(fabs(got - ref) <= 1e-5 * mag + 1e-30))
                fail_msg("gemm_nt M=%d N=%d K=%d beta=%g at (%d, %d): got %.9g, expected %.9g", M,
                         N, K, beta, m, n, got, ref);
        }
    free(A);
    free(B);
    free(C);
    free(C0);
}

static void test_gemm_odd_shapes(void **state)
{
    rng_state = 0x9E3779B97F4A7C15ULL;
    const int dims[] = {1, 5, 7, 11, 13};
    const int ms[] = {0, 1, 5, 7, 11, 13};
    for (size_t a = 0; a < EP_ARRAY_LEN(ms); a++)
        for (size_t b = 0; b < EP_ARRAY_LEN(dims); b++)
            for (size_t c = 0; c < EP_ARRAY_LEN(dims); c++) {
                check_gemm(ms[a], dims[b], dims[c], 0.0f, false);
                check_gemm(ms[a], dims[b], dims[c], 1.0f, false);
            }
}

// A taller case so that BLAS takes its blocked path, not a small-matrix one.
static void test_gemm_blocked(void **state)
{
    rng_state = 7;
    check_gemm(133, 257, 131, 0.0f, false);
    check_gemm(133, 257, 131, 1.0f, false);
}

// beta 0 must overwrite C without reading it: stale NaN must not leak.
static void test_gemm_beta0_ignores_c(void **state)
{
    rng_state = 11;
    check_gemm(5, 7, 13, 0.0f, true);
    check_gemm(13, 11, 5, 0.0f, true);
}

static void test_gemm_empty_k(void **state)
{
    float C[6] = {1, -2, 3, NAN, 5, 6};
    ep_dense_gemm_nt(2, 3, 0, NULL, NULL, 0.0f, C);
    for (int i = 0; i < 6; i++)
        assert_true(C[i] == 0.0f);
    float D[6] = {1, -2, 3, 4, 5, 6};
    ep_dense_gemm_nt(2, 3, 0, NULL, NULL, 1.0f, D);
    for (int i = 0; i < 6; i++)
        assert_true(D[i] == (float)(i == 1 ? -2 : i + 1));
}

// ep_dense_mm: C[M, N] (row stride ldc = N + 3) = A[M, K] (lda = K + 2) . W^T
// + beta * C0, W [N, K] in dtype. Checked against double sums of A and W's
// stored values: fp32 |err| <= 1e-5 * Σ|a w|; BF16 rounds each a to BF16
// (relative error <= 2^-8), so |err| <= (2^-8 + 1e-5) * Σ|a w|; plus 1e-6 *
// |beta C0| either way. Past-the-row padding must stay untouched. Returns C
// (the caller frees) so runs can be compared bit for bit.
static float *check_mm(int M, int N, int K, ep_dtype dt, float beta)
{
    const int lda = K + 2, ldc = N + 3;
    float *A = malloc(sizeof(float) * ((size_t)M * lda + 1));
    float *Wf = malloc(sizeof(float) * ((size_t)N * K + 1));
    uint16_t *Wb = malloc(sizeof(uint16_t) * ((size_t)N * K + 1));
    float *C = malloc(sizeof(float) * ((size_t)M * ldc + 1));
    float *C0 = malloc(sizeof(float) * ((size_t)M * ldc + 1));
    fill(A, (size_t)M * lda);
    fill(Wf, (size_t)N * K);
    for (size_t i = 0; i < (size_t)N * K; i++) {
        Wb[i] = ep_f32_to_bf16(Wf[i]);
        if (dt == EP_DTYPE_BF16) Wf[i] = ep_bf16_to_f32(Wb[i]); // the values stored
    }
    fill(C0, (size_t)M * ldc);
    if (beta == 0.0f)
        for (size_t i = 0; i < (size_t)M * ldc; i++)
            C0[i] = (i % (size_t)ldc) < (size_t)N ? NAN : C0[i]; // must not be read
    memcpy(C, C0, sizeof(float) * (size_t)M * ldc);
    const ep_mat W = {.dtype = dt,
                      .rows = N,
                      .cols = K,
                      .data = dt == EP_DTYPE_BF16 ? (const void *)Wb : (const void *)Wf};
    ep_dense_mm(M, A, lda, &W, beta, C, ldc);
    const double rel = dt == EP_DTYPE_BF16 ? 1.0 / 256 + 1e-5 : 1e-5;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < ldc; n++) {
            double got = C[(size_t)m * ldc + n];
            if (n >= N) { // padding between rows
                if (memcmp(&C[(size_t)m * ldc + n], &C0[(size_t)m * ldc + n], sizeof(float)))
                    fail_msg("mm wrote padding at (%d, %d)", m, n);
                continue;
            }
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                double p = (double)A[(size_t)m * lda + k] * Wf[(size_t)n * K + k];
                ref += p;
                mag += fabs(p);
            }
            double c0 = beta != 0.0f ? (double)beta * C0[(size_t)m * ldc + n] : 0.0;
            ref += c0;
            if (!(fabs(got - ref) <= rel * mag + 1e-6 * fabs(c0) + 1e-30))
                fail_msg("mm %s M=%d N=%d K=%d beta=%g at (%d, %d): got %.9g, expected %.9g",
                         ep_dtype_name(dt), M, N, K, beta, m, n, got, ref);
        }
    free(A);
    free(Wf);
    free(Wb);
    free(C0);
    return C;
}

static void test_mm_shapes(void **state)
{
    (void)state;
    const int ms[] = {0, 1, 2, 3, 9, 70};
    const int ns[] = {1, 63, 64, 65, 130};
    const int ks[] = {0, 1, 31, 32, 33, 100};
    const float betas[] = {0.0f, 1.0f, 0.5f};
    const ep_dtype dts[] = {EP_DTYPE_F32, EP_DTYPE_BF16};
    const ep_kern_isa best = ep_kern_isa_best();
    for (int isa = EP_KERN_ISA_C; isa <= (int)best; isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        for (size_t d = 0; d < EP_ARRAY_LEN(dts); d++)
            for (size_t a = 0; a < EP_ARRAY_LEN(ms); a++)
                for (size_t b = 0; b < EP_ARRAY_LEN(ns); b++)
                    for (size_t c = 0; c < EP_ARRAY_LEN(ks); c++)
                        for (size_t e = 0; e < EP_ARRAY_LEN(betas); e++) {
                            // The same inputs on 1 and 3 threads: each output
                            // is one task's sum, so the bits must agree.
                            const uint64_t seed = 0x1234567ULL + a * 131 + b * 17 + c * 7 + e;
                            rng_state = seed;
                            ep_par_set_threads(1);
                            float *c1 = check_mm(ms[a], ns[b], ks[c], dts[d], betas[e]);
                            rng_state = seed;
                            ep_par_set_threads(3);
                            float *c3 = check_mm(ms[a], ns[b], ks[c], dts[d], betas[e]);
                            const size_t n = (size_t)ms[a] * (ns[b] + 3);
                            if (n && memcmp(c1, c3, n * sizeof(float)))
                                fail_msg("mm %s M=%d N=%d K=%d: 1 and 3 threads differ",
                                         ep_dtype_name(dts[d]), ms[a], ns[b], ks[c]);
                            free(c1);
                            free(c3);
                        }
    }
    ep_kern_isa_cap(best);
}

static double silu_ref(double x)
{
    return x / (1.0 + exp(-x));
}

static void test_swiglu_values(void **state)
{
    enum { N = 13 };
    const float g[N] = {0.0f,  1.0f,   -1.0f,  0.5f,    -3.25f,  20.0f,   -20.0f,
                        88.0f, -88.0f, 100.0f, -100.0f, 1000.0f, -1000.0f};
    float u[N], out[N];
    for (int i = 0; i < N; i++)
        u[i] = 0.75f - 0.125f * i;
    ep_dense_swiglu(N, g, u, out);
    for (int i = 0; i < N; i++) {
        double ref = silu_ref(g[i]) * u[i];
        assert_true(isfinite(out[i]));
        // 2 ulp-ish relative, or absolute 1e-30 where the value underflows.
        if (!(fabs(out[i] - ref) <= 2e-7 * fabs(ref) + 1e-30))
            fail_msg("swiglu g=%g u=%g: got %.9g expected %.9g", g[i], u[i], out[i], ref);
    }
    // Known values: silu(1) = 1/(1+e^-1), silu(large) = x, silu(-large) = -0.
    assert_float_equal(out[1], 0.7310585786 * u[1], 1e-6);
    assert_float_equal(out[11], 1000.0f * u[11], 1e-3);
    assert_true(out[12] == 0.0f);
}

static void test_swiglu_extremes(void **state)
{
    const float g[4] = {INFINITY, -INFINITY, NAN, -1e30f};
    const float u[4] = {2.0f, 2.0f, 2.0f, 2.0f};
    float out[4];
    ep_dense_swiglu(4, g, u, out);
    assert_true(isinf(out[0]) && out[0] > 0);
    assert_true(out[1] == 0.0f); // the limit, not NaN
    assert_true(isnan(out[2]));  // NaN propagates
    assert_true(out[3] == 0.0f);
    ep_dense_swiglu(0, g, u, out); // n = 0 touches nothing
}

// A random sweep against the double reference (catches a swapped g/u).
static void test_swiglu_random(void **state)
{
    rng_state = 12345;
    enum { N = 1001 };
    float g[N], u[N], out[N];
    for (int i = 0; i < N; i++) {
        g[i] = 30.0f * frand();
        u[i] = 4.0f * frand();
    }
    ep_dense_swiglu(N, g, u, out);
    for (int i = 0; i < N; i++) {
        double ref = silu_ref(g[i]) * u[i];
        if (!(fabs(out[i] - ref) <= 3e-7 * fabs(ref) + 1e-30))
            fail_msg("swiglu[%d] g=%g u=%g: got %.9g expected %.9g", i, g[i], u[i], out[i], ref);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_odd_shapes),      cmocka_unit_test(test_gemm_blocked),
        cmocka_unit_test(test_gemm_beta0_ignores_c), cmocka_unit_test(test_gemm_empty_k),
        cmocka_unit_test(test_swiglu_values),        cmocka_unit_test(test_swiglu_extremes),
        cmocka_unit_test(test_swiglu_random),        cmocka_unit_test(test_mm_shapes),
    };
    return cmocka_run_group_tests_name("dense", tests, NULL, NULL);
}
