// Each experts kernel against its plain C counterpart on odd shapes with
// fixed seeds: gather + BF16 conversion and the conversions (bit-exact, both
// round to nearest even), fused SiLU * up (within 1 BF16 ulp: the device's
// exp differs in the last bits), the weighting + per-record reduction
// (1e-5 relative, fp32 sums in another order). Skips (77) without a device.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/weights.h"
#include "cuda_test_util.h"
#include "experts/cuda/kernels.h"

#define CK(call) assert_int_equal((int)(call), (int)cudaSuccess)

// src NULL: an output buffer, nothing to copy (cudaMemcpy refuses a NULL
// source with cudaErrorInvalidValue).
static void *dev_upload(const void *src, size_t bytes)
{
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 1));
    if (bytes && src) CK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
    return d;
}

static void download(void *dst, const void *d, size_t bytes)
{
    CK(cudaDeviceSynchronize());
    if (bytes) CK(cudaMemcpy(dst, d, bytes, cudaMemcpyDeviceToHost));
}

static void test_gather_bf16(void **state)
{
    enum { SRC = 11, H = 13, ROWS = 17 };
    float x[SRC * H];
    int row_rec[ROWS];
    cuda_test_fill(x, SRC * H, 1, 3.0f);
    ep_rng r;
    ep_rng_seed(&r, 2);
    for (int i = 0; i < ROWS; i++)
        row_rec[i] = (int)(ep_rng_next(&r) % SRC);
    float *dx = dev_upload(x, sizeof x);
    int *drr = dev_upload(row_rec, sizeof row_rec);
    uint16_t *dg = dev_upload(NULL, ROWS * H * 2);
    uint16_t got[ROWS * H];
    CK(ep_cuda_gather_bf16(dx, drr, ROWS, H, dg, 0));
    download(got, dg, sizeof got);
    for (int i = 0; i < ROWS; i++)
        for (int h = 0; h < H; h++)
            assert_int_equal(got[i * H + h], ep_f32_to_bf16(x[row_rec[i] * H + h]));
    CK(ep_cuda_gather_bf16(dx, NULL, SRC, H, dg, 0)); // identity gather
    download(got, dg, SRC * H * 2);
    for (int i = 0; i < SRC * H; i++)
        assert_int_equal(got[i], ep_f32_to_bf16(x[i]));
    cudaFree(dx);
    cudaFree(drr);
    cudaFree(dg);
}

static void test_conversions(void **state)
{
    enum { N = 1001 };
    float x[N], back[N];
    uint16_t b[N];
    cuda_test_fill(x, N, 3, 1e3f);
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 1e-40f; // subnormal
    x[3] = 3.0e38f;
    float *dx = dev_upload(x, sizeof x), *dback = dev_upload(NULL, sizeof back);
    uint16_t *db = dev_upload(NULL, sizeof b);
    CK(ep_cuda_f32_to_bf16(dx, N, db, 0));
    CK(ep_cuda_bf16_to_f32(db, N, dback, 0));
    download(b, db, sizeof b);
    download(back, dback, sizeof back);
    for (int i = 0; i < N; i++) {
        assert_int_equal(b[i], ep_f32_to_bf16(x[i]));
        assert_true(back[i] == ep_bf16_to_f32(b[i]));
    }
    float y[N], y0[N];
    cuda_test_fill(y, N, 4, 1.0f);
    memcpy(y0, y, sizeof y);
    float *dy = dev_upload(y, sizeof y);
    CK(ep_cuda_add_bf16(db, N, dy, 0));
    download(y, dy, sizeof y);
    for (int i = 0; i < N; i++)
        assert_true(y[i] == y0[i] + ep_bf16_to_f32(b[i]));
    cudaFree(dx);
    cudaFree(dback);
    cudaFree(db);
    cudaFree(dy);
}

static double silu_ref(double v)
{
    if (v >= 0) return v / (1.0 + exp(-v));
    double t = exp(v);
    return v * (t / (1.0 + t));
}

static void test_swiglu_bf16(void **state)
{
    enum { ROWS = 7, W = 13 };
    float g[ROWS * 2 * W];
    cuda_test_fill(g, ROWS * 2 * W, 5, 12.0f);
    g[0] = -200.0f; // exp underflow: the limit -0, not NaN
    g[1] = 90.0f;
    uint16_t gu[ROWS * 2 * W], act[ROWS * W];
    for (int i = 0; i < ROWS * 2 * W; i++)
        gu[i] = ep_f32_to_bf16(g[i]);
    uint16_t *dgu = dev_upload(gu, sizeof gu), *dact = dev_upload(NULL, sizeof act);
    CK(ep_cuda_swiglu_bf16(dgu, ROWS, W, dact, 0));
    download(act, dact, sizeof act);
    int exact = 0;
    for (int r = 0; r < ROWS; r++)
        for (int i = 0; i < W; i++) {
            double gv = ep_bf16_to_f32(gu[r * 2 * W + i]),
                   uv = ep_bf16_to_f32(gu[r * 2 * W + W + i]);
            double want = ep_bf16_round((float)(silu_ref(gv) * uv));
            double got = ep_bf16_to_f32(act[r * W + i]);
            assert_false(isnan(got));
            // One BF16 ulp of the result (2^-7 relative bounds it), plus subnormal slack.
            assert_true(fabs(got - want) <= fabs(want) * 0x1p-7 + 1e-30);
            exact += got == want;
        }
    printf("# swiglu: %d of %d values bit-exact with the C reference\n", exact, ROWS * W);
    cudaFree(dgu);
    cudaFree(dact);
}

static void test_combine_rows(void **state)
{
    enum { ROWS = 23, H = 11, N_REC = 9 };
    float ogf[ROWS * H], w[ROWS];
    uint16_t og[ROWS * H];
    cuda_test_fill(ogf, ROWS * H, 6, 2.0f);
    cuda_test_fill(w, ROWS, 7, 1.0f);
    for (int i = 0; i < ROWS * H; i++)
        og[i] = ep_f32_to_bf16(ogf[i]);
    // Records of 0..5 pairs (record 4 empty), pair_row a permutation of the rows.
    int rec_off[N_REC + 1] = {0, 3, 5, 10, 14, 14, 15, 19, 21, ROWS};
    int pair_row[ROWS];
    for (int j = 0; j < ROWS; j++)
        pair_row[j] = (j * 5 + 3) % ROWS;
    float y[N_REC * H];
    uint16_t *dog = dev_upload(og, sizeof og);
    int *doff = dev_upload(rec_off, sizeof rec_off), *dpr = dev_upload(pair_row, sizeof pair_row);
    float *dw = dev_upload(w, sizeof w), *dy = dev_upload(NULL, sizeof y);
    CK(cudaMemset(dy, 0xff, sizeof y)); // NaN: every element must be written
    CK(ep_cuda_combine_rows(dog, H, doff, dpr, dw, N_REC, dy, 0));
    download(y, dy, sizeof y);
    for (int i = 0; i < N_REC; i++)
        for (int h = 0; h < H; h++) {
            double want = 0, mag = 0;
            for (int j = rec_off[i]; j < rec_off[i + 1]; j++) {
                double t = (double)w[j] * ep_bf16_to_f32(og[pair_row[j] * H + h]);
                want += t;
                mag += fabs(t);
            }
            assert_true(fabs(y[i * H + h] - want) <= 1e-5 * mag + 1e-7);
        }
    for (int h = 0; h < H; h++)
        assert_true(y[4 * H + h] == 0.0f);
    cudaFree(dog);
    cudaFree(doff);
    cudaFree(dpr);
    cudaFree(dw);
    cudaFree(dy);
}

int main(void)
{
    if (cuda_test_devices("test_cuda_kernels") == 0) return CUDA_TEST_SKIP;
    if (cudaSetDevice(0) != cudaSuccess) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gather_bf16),
        cmocka_unit_test(test_conversions),
        cmocka_unit_test(test_swiglu_bf16),
        cmocka_unit_test(test_combine_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
