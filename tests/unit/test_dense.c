// The dense host ops (experts/dense.h) against plain loops: gemm_nt for odd
// shapes (5, 7, 11, 13, and the empty and single-row cases) with beta 0 and
// 1, and swiglu values including large |x|, infinities and NaN. Fixed seeds; tolerances stated.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "experts/dense.h"

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
        cmocka_unit_test(test_swiglu_random),
    };
    return cmocka_run_group_tests_name("dense", tests, NULL, NULL);
}
