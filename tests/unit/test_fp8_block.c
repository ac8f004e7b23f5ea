// FP8 block-scaled weights (dtype.h, ep_fp8_block_*): the dequantizer
// against a plain per-element reference (ep_fp8_e4m3_to_f32 times the scale
// found by r / b_rows, c / b_cols) with a distinct scale per block, on odd
// shapes whose last block row and column are partial; the quantizer's scales
// against amax / 448 recomputed here, its per-element error bound, the block
// maximum mapping to 448, exact round trips of representable values; zero,
// non-finite and tiny blocks.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/dtype.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_sym(uint64_t *s) // uniform in (-1, 1)
{
    return (float)((double)(rng_next(s) >> 11) * 0x1p-53 * 2.0 - 1.0);
}

// Shapes [rows, cols] and blocks [b_rows, b_cols]: the published 128 x 128 on
// shapes that are and are not multiples, one block smaller than the matrix
// and non-square blocks.
static const struct {
    int64_t rows, cols, br, bc;
} shapes[] = {
    {1, 1, 128, 128},     {5, 7, 128, 128},     {130, 257, 128, 128},
    {256, 128, 128, 128}, {129, 300, 128, 128}, {300, 129, 128, 128},
    {13, 11, 3, 5},       {97, 200, 64, 32},    {128, 384, 128, 128},
};

static void test_dequant_vs_reference(void **state)
{
    (void)state;
    uint64_t s = 11;
    for (size_t k = 0; k < EP_ARRAY_LEN(shapes); k++) {
        const int64_t R = shapes[k].rows, C = shapes[k].cols, br = shapes[k].br, bc = shapes[k].bc;
        const int64_t nbr = ep_fp8_blocks(R, br), nbc = ep_fp8_blocks(C, bc);
        uint8_t *codes = malloc((size_t)(R * C));
        float *sc = malloc((size_t)(nbr * nbc) * sizeof(float));
        float *got = malloc((size_t)(R * C) * sizeof(float));
        for (int64_t i = 0; i < R * C; i++) {
            uint8_t c;
            do
                c = (uint8_t)rng_next(&s);
            while ((c & 0x7f) == 0x7f); // no NaN codes here (edges below)
            codes[i] = c;
        }
        // A distinct power of two per block (exact products), so a block
        // read with a neighbour's scale is off by at least a factor 2.
        for (int64_t b = 0; b < nbr * nbc; b++)
            sc[b] = ldexpf(1.0f, (int)(b % 40) - 20);
        ep_fp8_block_dequant(codes, sc, R, C, br, bc, got);
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) {
                float want = ep_fp8_e4m3_to_f32(codes[r * C + c]) * sc[(r / br) * nbc + c / bc];
                if (memcmp(&want, &got[r * C + c], 4)) {
                    fprintf(stderr,
                            "[%lld x %lld] blocks %lld x %lld: (%lld, %lld) = %a, want %a\n",
                            (long long)R, (long long)C, (long long)br, (long long)bc, (long long)r,
                            (long long)c, (double)got[r * C + c], (double)want);
                    fail();
                }
            }
        // A scale that is not a power of two: one fp32 rounding of the product.
        for (int64_t b = 0; b < nbr * nbc; b++)
            sc[b] = 0.00123f * (float)(b + 1);
        ep_fp8_block_dequant(codes, sc, R, C, br, bc, got);
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) {
                float want = ep_fp8_e4m3_to_f32(codes[r * C + c]) * sc[(r / br) * nbc + c / bc];
                assert_true(want == got[r * C + c]);
            }
        free(codes);
        free(sc);
        free(got);
    }
}

// Quantize, dequantize: scales equal amax / 448 of each block (recomputed
// here by membership r / b, c / b), every element within the documented
// bound, each block's largest value coded 448 and nearly exact.
static void test_quant_round_trip(void **state)
{
    (void)state;
    uint64_t s = 5;
    double worst = 0;
    for (size_t k = 0; k < EP_ARRAY_LEN(shapes); k++) {
        const int64_t R = shapes[k].rows, C = shapes[k].cols, br = shapes[k].br, bc = shapes[k].bc;
        const int64_t nbr = ep_fp8_blocks(R, br), nbc = ep_fp8_blocks(C, bc);
        float *x = malloc((size_t)(R * C) * sizeof(float));
        float *d = malloc((size_t)(R * C) * sizeof(float));
        uint8_t *codes = malloc((size_t)(R * C));
        float *sc = malloc((size_t)(nbr * nbc) * sizeof(float));
        double *amax = calloc((size_t)(nbr * nbc), sizeof(double));
        int64_t *at = calloc((size_t)(nbr * nbc), sizeof(int64_t));
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) {
                // Heavy-tailed values, and a magnitude that differs per block
                // (the partial last blocks get the smallest), so that a
                // neighbour's scale would show in the error.
                float u = rng_sym(&s);
                int64_t b = (r / br) * nbc + c / bc;
                float v = u * u * u * ldexpf(1.0f, (int)(b % 17) - 8);
                if (r / br == nbr - 1 || c / bc == nbc - 1) v *= 0x1p-12f;
                x[r * C + c] = v;
                if (fabs(v) > amax[b]) {
                    amax[b] = fabs(v);
                    at[b] = r * C + c;
                }
            }
        ep_fp8_block_quant(x, R, C, br, bc, codes, sc);
        ep_fp8_block_dequant(codes, sc, R, C, br, bc, d);
        for (int64_t b = 0; b < nbr * nbc; b++) {
            float want = (float)amax[b] / 448.0f;
            if (want < FLT_MIN) want = FLT_MIN;
            assert_true(sc[b] == want);
            assert_int_equal(codes[at[b]] & 0x7f, 0x7e);
            assert_true(fabs((double)d[at[b]] - x[at[b]]) <= 0x1p-21 * fabs(x[at[b]]));
        }
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) {
                const int64_t i = r * C + c;
                const double sb = sc[(r / br) * nbc + c / bc];
                double err = fabs((double)d[i] - x[i]);
                double bound = (0x1p-4 + 0x1p-20) * fabs(x[i]) + 0x1p-10 * sb * (1 + 0x1p-20);
                if (err > bound)
                    fprintf(stderr, "(%lld, %lld): x %a decoded %a, scale %a: %g > %g\n",
                            (long long)r, (long long)c, (double)x[i], (double)d[i], sb, err, bound);
                assert_true(err <= bound);
                if (fabs(x[i]) >= 64 * sb && err / fabs(x[i]) > worst) worst = err / fabs(x[i]);
            }
        free(x);
        free(d);
        free(codes);
        free(sc);
        free(amax);
        free(at);
    }
    // The relative bound is reached (3 mantissa bits: half an ulp is 2^-4).
    assert_true(worst > 0.9 * 0x1p-4 && worst <= 0x1p-4 + 0x1p-20);
}

// Values e4m3(code) * 2^k with every block's maximum 448 * 2^k: the scale is
// 2^k exactly and the round trip is exact, codes included.
static void test_exact_round_trip(void **state)
{
    (void)state;
    enum { R = 200, C = 130 };
    const int64_t br = 128, bc = 128, nbc = 2;
    static uint8_t want[R * C], codes[R * C];
    static float x[R * C], d[R * C], sc[4];
    uint64_t s = 3;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            uint8_t v;
            do
                v = (uint8_t)rng_next(&s);
            while ((v & 0x7f) >= 0x7e || v == 0x80); // no NaN, 448 placed below, no -0
            want[r * C + c] = v;
        }
    for (int b = 0; b < 4; b++) // one 448 per block, at its first element
        want[(b / nbc) * br * C + (b % nbc) * bc] = 0x7e;
    for (int i = 0; i < R * C; i++) {
        int b = (int)((i / C) / br * nbc + (i % C) / bc);
        x[i] = ep_fp8_e4m3_to_f32(want[i]) * ldexpf(1.0f, 3 * b - 5);
    }
    ep_fp8_block_quant(x, R, C, br, bc, codes, sc);
    for (int b = 0; b < 4; b++)
        assert_true(sc[b] == ldexpf(1.0f, 3 * b - 5));
    assert_memory_equal(codes, want, sizeof want);
    ep_fp8_block_dequant(codes, sc, R, C, br, bc, d);
    assert_memory_equal(d, x, sizeof x);
}

static void test_edges(void **state)
{
    (void)state;
    // Blocks of 2 x 2 on a [3, 4] matrix: (0,0) zero, (0,1) NaN + Inf + 1,
    // (1,0) tiny, (1,1) ordinary (partial: one row).
    float x[12] = {0,      0,       NAN,      1.0f,     //
                   0,      0,       INFINITY, -0.5f,    //
                   1e-40f, -2e-40f, 3.0f,     -448.0f}; //
    uint8_t codes[12];
    float sc[4], d[12];
    ep_fp8_block_quant(x, 3, 4, 2, 2, codes, sc);
    assert_true(sc[0] == 0.0f);
    assert_true(sc[1] == 1.0f / 448.0f);
    assert_true(sc[2] == FLT_MIN); // amax 2e-40 / 448 is below FLT_MIN
    assert_true(sc[3] == 1.0f);
    ep_fp8_block_dequant(codes, sc, 3, 4, 2, 2, d);
    assert_true(d[0] == 0 && d[1] == 0 && d[4] == 0 && d[5] == 0);
    assert_true(isnan(d[2]) && isnan(d[6])); // e4m3 has no Inf
    assert_true(fabsf(d[3] - 1.0f) <= 0x1p-21f && fabsf(d[7] + 0.5f) <= 0x1p-4f * 0.5f);
    // 1e-40 / FLT_MIN = 0.0085 rounds to e4m3's subnormal 4 * 2^-9 = 0.0078.
    assert_true(fabsf(d[8] - 1e-40f) <= 0x1p-10f * FLT_MIN);
    assert_true(d[10] == 3.0f && d[11] == -448.0f);
    // An empty matrix touches nothing.
    ep_fp8_block_quant(x, 0, 4, 128, 128, codes, sc);
    ep_fp8_block_dequant(codes, sc, 0, 4, 128, 128, d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant_vs_reference),
        cmocka_unit_test(test_quant_round_trip),
        cmocka_unit_test(test_exact_round_trip),
        cmocka_unit_test(test_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
