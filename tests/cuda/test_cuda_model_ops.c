// The model's device ops (model/cuda/ops.h) against their CPU references on
// odd shapes, fixed seeds, both model families: embedding gather (bit-exact
// vs ep_mat_row_f32), RMSNorm and the per-head q/k norm (vs
// ep_model_rmsnorm), residual add and SiLU * up (vs ep_dense_swiglu), RoPE
// plain, Qwen3 YaRN and DeepSeek YaRN (vs ep_rope_table + ep_rope_rotate),
// the BF16 dense product on cuBLAS (vs ep_dense_mm over the same BF16
// matrix), greedy argmax and top-k / top-p sampling (vs ep_sampler) and sampling from an
// explicit logits copy, and the host<->device copy counter (a device decode
// step moves only ids and positions). Budgets are stated at each check.
// The KV cache, attention and MLA ops are in test_cuda_model_attn.c.
// Skips (77) without a device.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/cuda_util.h"
#include "common/dtype.h"
#include "common/weights.h"
#include "cuda_test_dev.h"
#include "cuda_test_util.h"
#include "experts/dense.h"
#include "model/cuda/ops.h"
#include "model/model_impl.h"
#include "model/sample.h"

static double row_max(const float *x, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

// ---- embedding, norms, elementwise ------------------------------------------------------

// Exact: a bf16 value widens to fp32 without rounding, on both sides.
static void test_embed(void **state)
{
    enum { V = 37, H = 13, T = 11 };
    float tab[V * H];
    cuda_test_fill(tab, V * H, 11, 2.0f);
    uint16_t *tb = to_bf16(tab, V * H);
    const ep_mat m = {.dtype = EP_DTYPE_BF16, .rows = V, .cols = H, .data = tb};
    const int ids[T] = {0, 36, 5, 5, 17, 1, 36, 0, 29, 2, 8};
    uint16_t *dt = dev_upload(tb, sizeof(uint16_t) * V * H);
    int *di = dev_upload(ids, sizeof ids);
    float *dx = dev_upload(NULL, sizeof(float) * T * H), got[T * H], want[H];
    for (int n = 1; n <= T; n += T - 1) { // one token, then all
        OK(ep_mops_embed(dt, V, H, di, n, dx, 0));
        download(got, dx, sizeof(float) * n * H);
        for (int t = 0; t < n; t++) {
            ep_mat_row_f32(&m, ids[t], want);
            assert_memory_equal(got + t * H, want, sizeof want);
        }
    }
    const int bad = V; // out of range: a NaN row, never another token's
    CK(cudaMemcpy(di, &bad, sizeof bad, cudaMemcpyHostToDevice));
    OK(ep_mops_embed(dt, V, H, di, 1, dx, 0));
    download(got, dx, sizeof(float) * H);
    for (int h = 0; h < H; h++)
        assert_true(isnan(got[h]));
    assert_int_equal(ep_mops_embed(dt, 0, H, di, 1, dx, 0), EP_ERR_ARG);
    cudaFree(dt);
    cudaFree(di);
    cudaFree(dx);
    free(tb);
}

// fp32 throughout; only the order of the sum of squares differs (a tree
// over 128 threads against a sequential loop): relative error of the sum
// below n * 2^-24, half of it through the square root; 1e-5 of the row's
// largest output covers n up to ~100 with margin and any n the tests use.
static void check_rmsnorm(int rows, int n, int ldx, bool in_place, uint64_t seed)
{
    float *x = malloc(sizeof(float) * rows * ldx), w[512], *want = malloc(sizeof(float) * rows * n);
    float *got = malloc(sizeof(float) * rows * ldx), *xc = malloc(sizeof(float) * rows * n);
    cuda_test_fill(x, (size_t)rows * ldx, seed, 3.0f);
    cuda_test_fill(w, (size_t)n, seed + 1, 1.5f);
    for (int r = 0; r < rows; r++)
        memcpy(xc + r * n, x + r * ldx, sizeof(float) * n);
    ep_model_rmsnorm(xc, w, rows, n, 1e-6f, want);
    float *dx = dev_upload(x, sizeof(float) * rows * ldx), *dw = dev_upload(w, sizeof(float) * n);
    float *dout = in_place ? dx : dev_upload(NULL, sizeof(float) * rows * n);
    const int ldo = in_place ? ldx : n;
    OK(ep_mops_rmsnorm(dx, ldx, dw, rows, n, 1e-6f, dout, ldo, 0));
    download(got, dout, sizeof(float) * rows * ldo);
    for (int r = 0; r < rows; r++) {
        const double tol = 1e-5 * row_max(want + r * n, n);
        for (int i = 0; i < n; i++)
            assert_true(fabs(got[r * ldo + i] - want[r * n + i]) <= tol);
        if (in_place) // the gap after the row is not touched
            for (int i = n; i < ldx; i++)
                assert_true(got[r * ldo + i] == x[r * ldx + i]);
    }
    cudaFree(dx);
    cudaFree(dw);
    if (!in_place) cudaFree(dout);
    free(x);
    free(want);
    free(got);
    free(xc);
}

static void test_rmsnorm(void **state)
{
    check_rmsnorm(1, 13, 13, false, 1);   // one token, odd hidden
    check_rmsnorm(7, 13, 20, true, 2);    // strided, in place
    check_rmsnorm(3, 300, 300, false, 3); // wider than the block
    // Qwen3's per-head q/k norm: tokens x heads rows of head_dim, in place.
    check_rmsnorm(5 * 6, 12, 12, true, 4);
    check_rmsnorm(5 * 2, 128, 128, true, 5); // Qwen3's real head_dim
    assert_int_equal(ep_mops_rmsnorm(NULL, 3, NULL, 1, 4, 1e-6f, NULL, 4, 0), EP_ERR_ARG);
}

// add: exact (one fp32 add). SiLU * up: the same expression as
// ep_dense_swiglu; on a GPU __expf is a few ulp off expf, so 4e-6 relative
// (about 32 ulp); on the emulated device it is exact.
static void test_add_silu_mul(void **state)
{
    enum { N = 1001 };
    float g[N], u[N], want[N], got[N];
    cuda_test_fill(g, N, 21, 12.0f);
    cuda_test_fill(u, N, 22, 2.0f);
    g[0] = 0.0f;
    g[1] = -120.0f; // exp underflows: the limit -0
    g[2] = 95.0f;
    ep_dense_swiglu(N, g, u, want);
    float *dg = dev_upload(g, sizeof g), *du = dev_upload(u, sizeof u);
    float *dout = dev_upload(NULL, sizeof got);
    OK(ep_mops_silu_mul(dg, du, N, dout, 0));
    download(got, dout, sizeof got);
    for (int i = 0; i < N; i++)
        assert_true(fabs(got[i] - want[i]) <= 4e-6 * fabs(want[i]));
    OK(ep_mops_silu_mul(dg, du, N, dg, 0)); // out aliasing g
    download(got, dg, sizeof got);
    for (int i = 0; i < N; i++)
        assert_true(fabs(got[i] - want[i]) <= 4e-6 * fabs(want[i]));
    CK(cudaMemcpy(dg, g, sizeof g, cudaMemcpyHostToDevice));
    OK(ep_mops_add(dg, du, N, 0));
    download(got, dg, sizeof got);
    for (int i = 0; i < N; i++)
        assert_true(got[i] == g[i] + u[i]);
    cudaFree(dg);
    cudaFree(du);
    cudaFree(dout);
}

// ---- RoPE ------------------------------------------------------------------------------------

static void cfg_rope(ep_model_cfg *c, ep_arch arch, bool yarn)
{
    memset(c, 0, sizeof *c);
    snprintf(c->source, sizeof c->source, "test_cuda_model_ops");
    c->arch = arch;
    c->n_heads = 5;
    c->head_dim = 12;
    c->kv_lora_rank = 16;
    c->qk_nope_dim = 10;
    c->qk_rope_dim = 8;
    c->v_head_dim = 9;
    c->rope_theta = arch == EP_ARCH_DEEPSEEK_V2 ? 10000.0f : 1000000.0f;
    c->has_yarn = yarn;
    if (yarn) {
        c->yarn_factor = arch == EP_ARCH_DEEPSEEK_V2 ? 40.0f : 4.0f;
        c->yarn_beta_fast = 32.0f;
        c->yarn_beta_slow = 1.0f;
        c->yarn_mscale = arch == EP_ARCH_DEEPSEEK_V2 ? 0.707f : 0.0f;
        c->yarn_mscale_all_dim = arch == EP_ARCH_DEEPSEEK_V2 ? 0.707f : 0.0f;
        c->yarn_orig_max_pos = arch == EP_ARCH_DEEPSEEK_V2 ? 4096 : 64;
        c->yarn_truncate = true;
    }
}

// The same fp32 angle and the same double cos / sin rounded to fp32 on both
// sides; nvcc may contract a * co - b * si into an fma (a few ulp of the
// row's magnitude): 2e-6 of the row's largest value. Exact on the emulated
// device.
static void check_rope(ep_arch arch, bool yarn)
{
    ep_model_cfg c;
    cfg_rope(&c, arch, yarn);
    ep_rope r;
    OK(ep_rope_init(&r, &c));
    enum { T = 8 };
    const int pos[T] = {0, 1, 7, 63, 64, 4095, 32767, 163839};
    const bool mla = arch == EP_ARCH_DEEPSEEK_V2;
    const int nh = c.n_heads, hs = mla ? c.qk_nope_dim + c.qk_rope_dim : c.head_dim;
    const int off = mla ? c.qk_nope_dim : 0, ld = nh * hs + 3; // a gap after each row
    float *x = malloc(sizeof(float) * T * ld), *want = malloc(sizeof(float) * T * ld);
    float *got = malloc(sizeof(float) * T * ld), cs[EP_ROPE_MAX_DIM];
    cuda_test_fill(x, (size_t)T * ld, 31 + arch + yarn, 2.0f);
    memcpy(want, x, sizeof(float) * T * ld);
    for (int t = 0; t < T; t++) {
        ep_rope_table(&r, pos[t], cs);
        for (int h = 0; h < nh; h++)
            ep_rope_rotate(&r, cs, want + t * ld + off + h * hs);
    }
    ep_mops_rope dr;
    OK(ep_mops_rope_init(&dr, &r, 0));
    float *dx = dev_upload(x, sizeof(float) * T * ld);
    int *dp = dev_upload(pos, sizeof pos);
    OK(ep_mops_rope_apply(&dr, dx, T, ld, nh, off, hs, dp, 0));
    download(got, dx, sizeof(float) * T * ld);
    for (int t = 0; t < T; t++) {
        const double tol = 2e-6 * row_max(want + t * ld, ld);
        for (int i = 0; i < ld; i++)
            assert_true(fabs(got[t * ld + i] - want[t * ld + i]) <= tol);
    }
    if (mla) { // k_pe: one head at the end of the [latent | k_pe] cache row
        const int R = c.kv_lora_rank, w = R + c.qk_rope_dim;
        memcpy(want, x, sizeof(float) * T * w);
        for (int t = 0; t < T; t++) {
            ep_rope_table(&r, pos[t], cs);
            ep_rope_rotate(&r, cs, want + t * w + R);
        }
        CK(cudaMemcpy(dx, x, sizeof(float) * T * w, cudaMemcpyHostToDevice));
        OK(ep_mops_rope_apply(&dr, dx, T, w, 1, R, 0, dp, 0));
        download(got, dx, sizeof(float) * T * w);
        for (int i = 0; i < T * w; i++)
            assert_true(fabs(got[i] - want[i]) <= 2e-6 * row_max(want + i / w * w, w));
    }
    // A head that would leave the row is refused, naming the numbers.
    assert_int_equal(ep_mops_rope_apply(&dr, dx, T, ld, nh + 1, off, hs, dp, 0), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "do not fit a row"));
    ep_mops_rope_free(&dr);
    cudaFree(dx);
    cudaFree(dp);
    free(x);
    free(want);
    free(got);
}

static void test_rope(void **state)
{
    check_rope(EP_ARCH_QWEN3_MOE, false);
    check_rope(EP_ARCH_QWEN3_MOE, true);
    check_rope(EP_ARCH_DEEPSEEK_V2, false);
    check_rope(EP_ARCH_DEEPSEEK_V2, true);
}

// ---- dense products -----------------------------------------------------------------------

// Both sides round A to BF16 and multiply the same BF16 weights with fp32
// sums; only the order of the K products differs: |error| <= K * 2^-24 *
// sum_k |a_k w_k| in the worst case, so 1e-5 of that sum (K <= 64 here:
// 64 * 6e-8 = 3.8e-6) plus beta's one extra add.
static void check_linear(cublasHandle_t blas, int M, int N, int K, float beta, int ldc,
                         uint64_t seed)
{
    float *A = malloc(sizeof(float) * M * K), *w = malloc(sizeof(float) * N * K);
    float *C = malloc(sizeof(float) * M * ldc), *want = malloc(sizeof(float) * M * ldc);
    float *got = malloc(sizeof(float) * M * ldc);
    cuda_test_fill(A, (size_t)M * K, seed, 2.0f);
    cuda_test_fill(w, (size_t)N * K, seed + 1, 0.5f);
    cuda_test_fill(C, (size_t)M * ldc, seed + 2, 1.0f);
    uint16_t *wb = to_bf16(w, (size_t)N * K);
    const ep_mat W = {.dtype = EP_DTYPE_BF16, .rows = N, .cols = K, .data = wb};
    memcpy(want, C, sizeof(float) * M * ldc);
    ep_dense_mm(M, A, K, &W, beta, want, ldc);
    float *dA = dev_upload(A, sizeof(float) * M * K), *dC = dev_upload(C, sizeof(float) * M * ldc);
    uint16_t *dW = dev_upload(wb, sizeof(uint16_t) * N * K);
    uint16_t *dab = dev_upload(NULL, sizeof(uint16_t) * M * K);
    OK(ep_mops_linear(blas, M, N, K, dA, dW, beta, dC, ldc, dab, 0));
    download(got, dC, sizeof(float) * M * ldc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < ldc; j++) {
            if (j >= N) { // past N: untouched
                assert_true(got[i * ldc + j] == C[i * ldc + j]);
                continue;
            }
            double mag = fabs(beta * C[i * ldc + j]);
            for (int k = 0; k < K; k++)
                mag += fabs((double)ep_bf16_round(A[i * K + k]) * ep_bf16_to_f32(wb[j * K + k]));
            assert_true(fabs(got[i * ldc + j] - want[i * ldc + j]) <= 1e-5 * mag + 1e-30);
        }
    cudaFree(dA);
    cudaFree(dC);
    cudaFree(dW);
    cudaFree(dab);
    free(A);
    free(w);
    free(C);
    free(want);
    free(got);
    free(wb);
}

static void test_linear(void **state)
{
    cublasHandle_t blas;
    assert_int_equal(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
    check_linear(blas, 1, 19, 13, 0.0f, 19, 41); // one token (decode)
    check_linear(blas, 5, 19, 13, 0.0f, 19, 42);
    check_linear(blas, 7, 40, 64, 1.0f, 43, 43); // accumulate into a strided C
    check_linear(blas, 3, 1, 1, 0.0f, 1, 44);    // smallest
    assert_int_equal(ep_mops_linear(blas, 1, 4, 4, NULL, NULL, 0.0f, NULL, 3, NULL, 0), EP_ERR_ARG);
    cublasDestroy(blas);
}

// ---- sampling -------------------------------------------------------------------------------

// Exact: a comparison, with ep_sampler's rules (NaN is -inf, lowest id on
// ties, all -inf gives id 0).
static void test_argmax(void **state)
{
    enum { ROWS = 6, V = 1001, LD = 1003 };
    float *l = malloc(sizeof(float) * ROWS * LD);
    cuda_test_fill(l, (size_t)ROWS * LD, 91, 5.0f);
    l[0 * LD + 700] = l[0 * LD + 300] = 9.0f; // tie: 300
    l[1 * LD + 0] = NAN;                      // NaN never wins
    l[1 * LD + 1000] = 8.0f;                  // the last id
    for (int i = 0; i < V; i++)               // all -inf or NaN: 0
        l[2 * LD + i] = i % 2 ? NAN : -INFINITY;
    l[3 * LD + 5] = INFINITY;
    l[4 * LD + 999] = l[4 * LD + 998] = 6.0f; // tie at the end: 998
    float *dl = dev_upload(l, sizeof(float) * ROWS * LD);
    int *dids = dev_upload(NULL, sizeof(int) * ROWS), ids[ROWS];
    ep_sample_params p;
    ep_sample_params_default(&p);
    ep_sampler *sm;
    OK(ep_sampler_init(&p, V, &sm));
    OK(ep_mops_argmax(dl, ROWS, V, LD, dids, 0));
    download(ids, dids, sizeof ids);
    for (int r = 0; r < ROWS; r++)
        assert_int_equal(ids[r], ep_sampler_sample(sm, l + r * LD));
    assert_int_equal(ids[0], 300);
    assert_int_equal(ids[1], 1000);
    assert_int_equal(ids[2], 0);
    ep_sampler_free(sm);
    OK(ep_sampler_init(&p, 1, &sm)); // a vocabulary of one
    OK(ep_mops_argmax(dl, 1, 1, LD, dids, 0));
    download(ids, dids, sizeof(int));
    assert_int_equal(ids[0], ep_sampler_sample(sm, l));
    ep_sampler_free(sm);
    assert_int_equal(ep_mops_argmax(dl, 1, V, V - 1, dids, 0), EP_ERR_ARG);
    cudaFree(dl);
    cudaFree(dids);
    free(l);
}

// Device sampling against ep_sampler on the same logits, row by row: a
// second sampler of the same request hands its parameters and uniform
// draw to the device row (ep_sampler_device_draw). Greedy, temperatures, top-k up to
// EP_MOPS_TOPK_MAX and above the vocabulary, top-p cuts, ties, NaN and -inf
// logits, a row of only -inf. The tokens must be identical (a different
// token needs u within an ulp of a cumulative boundary: not at these seeds).
static void check_sample_topk(int V, uint64_t seed)
{
    // top_k costs k block-wide selections, each a few barriers: slow on the
    // emulated device, so the widest is in one row.
    enum { ROWS = 60 };
    const float temps[] = {0.0f, 0.3f, 0.8f, 1.5f};
    const int topks[] = {1, 2, 7, 33, 5};
    const float topps[] = {1.0f, 0.9f, 0.5f, 0.05f};
    float *l = malloc(sizeof(float) * ROWS * V);
    cuda_test_fill(l, (size_t)ROWS * V, seed, 3.0f);
    for (int r = 0; r < ROWS; r++) {
        float *row = l + (size_t)r * V;
        row[r % V] = row[(r * 7 + 3) % V]; // a tie
        if (V > 10) {
            row[5] = NAN;
            row[9] = -INFINITY;
        }
    }
    for (int i = 0; i < V; i++) // the last row: every logit -inf
        l[(size_t)(ROWS - 1) * V + i] = -INFINITY;
    ep_mops_sample_row prm[ROWS];
    int want[ROWS], got[ROWS];
    for (int r = 0; r < ROWS; r++) {
        ep_sample_params p;
        ep_sample_params_default(&p);
        p.temperature = temps[r % 4];
        p.top_k = topks[(r / 4) % 5];
        p.top_p = topps[(r / 20) % 4];
        if (r == 46) p.top_k = EP_MOPS_TOPK_MAX; // with top_p 0.5
        if (r == ROWS - 1) p.temperature = 1.0f, p.top_k = 3;
        p.seed = seed * 1000 + (uint64_t)r;
        ep_sampler *sm, *dev;
        OK(ep_sampler_init(&p, V, &sm));
        OK(ep_sampler_init(&p, V, &dev));
        want[r] = ep_sampler_sample(sm, l + (size_t)r * V);
        ep_sampler_free(sm);
        ep_sampler_draw d;
        assert_true(ep_sampler_device_draw(dev, EP_MOPS_TOPK_MAX, &d));
        ep_sampler_free(dev);
        prm[r] = (ep_mops_sample_row){
            .temperature = d.temperature, .top_k = d.top_k, .top_p = d.top_p, .u = d.u};
        OK(ep_mops_sample_row_check(&prm[r]));
    }
    float *dl = dev_upload(l, sizeof(float) * ROWS * V);
    ep_mops_sample_row *dp = dev_upload(prm, sizeof prm);
    int *dids = dev_upload(NULL, sizeof got);
    OK(ep_mops_sample_topk(dl, ROWS, V, V, dp, dids, 0));
    download(got, dids, sizeof got);
    for (int r = 0; r < ROWS; r++)
        if (got[r] != want[r])
            fail_msg("V %d row %d (temperature %g, top_k %d, top_p %g): device %d, host %d", V, r,
                     (double)prm[r].temperature, prm[r].top_k, (double)prm[r].top_p, got[r],
                     want[r]);
    cudaFree(dl);
    cudaFree(dp);
    cudaFree(dids);
    free(l);
}

static void test_sample_topk(void **state)
{
    check_sample_topk(1001, 151);
    check_sample_topk(5, 152); // top_k above the vocabulary
    // Rows the device does not serve: named, and -1 if uploaded anyway.
    ep_mops_sample_row bad = {.temperature = 0.7f, .top_k = 0, .top_p = 1.0f, .u = 0.5};
    assert_int_equal(ep_mops_sample_row_check(&bad), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "top_k 0"));
    float l[3] = {1, 2, 3};
    float *dl = dev_upload(l, sizeof l);
    ep_mops_sample_row *dp = dev_upload(&bad, sizeof bad);
    int *dids = dev_upload(NULL, sizeof(int)), id = 0;
    OK(ep_mops_sample_topk(dl, 1, 3, 3, dp, dids, 0));
    download(&id, dids, sizeof id);
    assert_int_equal(id, -1);
    bad.top_k = EP_MOPS_TOPK_MAX + 1;
    assert_int_equal(ep_mops_sample_row_check(&bad), EP_ERR_UNSUPPORTED);
    bad = (ep_mops_sample_row){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f}; // greedy: fine
    OK(ep_mops_sample_row_check(&bad));
    bad.top_p = 0.0f;
    assert_int_equal(ep_mops_sample_row_check(&bad), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "top_p"));
    cudaFree(dl);
    cudaFree(dp);
    cudaFree(dids);
}

// Temperature / top-k / top-p with a seed: the logits come to the host in
// one counted copy (rows * V * 4 bytes) and ep_sampler draws there, so the
// tokens are those of the CPU path for the same logits and seed.
static void test_sample_from_logits_copy(void **state)
{
    enum { ROWS = 5, V = 301 };
    float l[ROWS * V], back[ROWS * V];
    cuda_test_fill(l, ROWS * V, 101, 4.0f);
    float *dl = dev_upload(l, sizeof l);
    ep_sample_params p;
    ep_sample_params_default(&p);
    p.temperature = 0.8f;
    p.top_k = 20;
    p.top_p = 0.9f;
    p.seed = 7;
    ep_sampler *dev_side, *cpu_side;
    OK(ep_sampler_init(&p, V, &dev_side));
    OK(ep_sampler_init(&p, V, &cpu_side));
    ep_gpu_copy_stats a, b;
    ep_gpu_copy_stats_get(&a);
    OK(ep_cuda_copy(back, dl, sizeof back, cudaMemcpyDeviceToHost, 0, "logits"));
    CK(cudaStreamSynchronize(0));
    ep_gpu_copy_stats_get(&b);
    assert_true(b.d2h_bytes - a.d2h_bytes == sizeof back);
    for (int r = 0; r < ROWS; r++)
        assert_int_equal(ep_sampler_sample(dev_side, back + r * V),
                         ep_sampler_sample(cpu_side, l + r * V));
    ep_sampler_free(dev_side);
    ep_sampler_free(cpu_side);
    cudaFree(dl);
}

// ---- host <-> device traffic ----------------------------------------------------------------

static void test_copy_stats(void **state)
{
    enum { N = 77 };
    float h[N], h2[N];
    cuda_test_fill(h, N, 111, 1.0f);
    float *d = dev_upload(NULL, sizeof h), *d2 = dev_upload(NULL, sizeof h);
    ep_gpu_copy_stats_reset();
    ep_gpu_copy_stats st;
    OK(ep_cuda_copy(d, h, sizeof h, cudaMemcpyHostToDevice, 0, "x"));
    OK(ep_cuda_copy(d2, d, sizeof h, cudaMemcpyDeviceToDevice, 0, "x")); // not host traffic
    OK(ep_cuda_copy(h2, d2, 10 * sizeof(float), cudaMemcpyDeviceToHost, 0, "x"));
    OK(ep_cuda_copy(h2, d2, 0, cudaMemcpyDeviceToHost, 0, "x")); // nothing
    CK(cudaStreamSynchronize(0));
    assert_memory_equal(h2, h, 10 * sizeof(float));
    ep_gpu_copy_stats_get(&st);
    assert_true(st.h2d_bytes == sizeof h && st.h2d_copies == 1);
    assert_true(st.d2h_bytes == 10 * sizeof(float) && st.d2h_copies == 1);
    assert_true(st.h2d[EP_COPY_ACT] == sizeof h && st.d2h[EP_COPY_ACT] == 10 * sizeof(float));
    // By class: the totals are the sums; a diff of two gets is the traffic between them.
    ep_gpu_copy_stats before = st, diff;
    OK(ep_cuda_copy_cls(d, h, 12, cudaMemcpyHostToDevice, 0, EP_COPY_META, "ids"));
    OK(ep_cuda_copy_cls(h2, d, 8, cudaMemcpyDeviceToHost, 0, EP_COPY_LOAD, "table"));
    CK(cudaStreamSynchronize(0));
    ep_gpu_copy_stats_get(&st);
    ep_gpu_copy_stats_diff(&st, &before, &diff);
    assert_true(diff.h2d_bytes == 12 && diff.h2d[EP_COPY_META] == 12 && diff.h2d[EP_COPY_ACT] == 0);
    assert_true(diff.d2h_bytes == 8 && diff.d2h[EP_COPY_LOAD] == 8 && diff.d2h_copies == 1);
    assert_int_equal(ep_cuda_copy_cls(d, h, 4, cudaMemcpyHostToDevice, 0, EP_COPY_N_CLASSES, "x"),
                     EP_ERR_ARG);
    assert_string_equal(ep_copy_class_name(EP_COPY_META), "meta");
    ep_gpu_copy_stats_reset();
    OK(ep_cuda_copy(d, h, sizeof h, cudaMemcpyHostToDevice, 0, "x"));
    OK(ep_cuda_copy(h2, d2, 10 * sizeof(float), cudaMemcpyDeviceToHost, 0, "x"));
    CK(cudaStreamSynchronize(0));
    // A failed copy (a host pointer as the device side) counts nothing and
    // names the data.
    assert_int_not_equal(ep_cuda_copy(h2, h, sizeof h, cudaMemcpyHostToDevice, 0, "the ids"),
                         EP_OK);
    assert_non_null(strstr(ep_last_error(), "the ids"));
    assert_int_equal(ep_cuda_copy(d, h, 4, cudaMemcpyHostToHost, 0, "x"), EP_ERR_ARG);
    ep_gpu_copy_stats_get(&st);
    assert_true(st.h2d_copies == 1 && st.d2h_copies == 1);
    ep_gpu_copy_stats_reset();
    ep_gpu_copy_stats_get(&st);
    assert_true(st.h2d_bytes == 0 && st.d2h_bytes == 0 && st.h2d_copies == 0 && st.d2h_copies == 0);
    cudaFree(d);
    cudaFree(d2);
}

// One Qwen3-shaped decode layer of 3 sequences made of the device ops
// (embed, norm, q/k/v, per-head norm, RoPE, cache write, attention, o_proj,
// residual, SwiGLU MLP, lm-head, argmax): the only host traffic is the
// step's ids, sequences and positions in and the sampled ids out; and the
// logits are those of the same layer made of the CPU's routines.
static void test_decode_step_traffic(void **state)
{
    enum { T = 3, V = 50, H = 16, NH = 4, NKV = 2, HD = 8, I = 24, ROW = 2 * NKV * HD };
    const int ids[T] = {3, 49, 17}, seq[T] = {0, 1, 2}, pos[T] = {4, 0, 9};
    float w[V * H];
    cuda_test_fill(w, V * H, 121, 0.5f);
    uint16_t *wb = to_bf16(w, V * H);
    // Weights and scratch, uploaded before the step (not counted: plain cudaMemcpy).
    uint16_t *emb = dev_upload(wb, sizeof(uint16_t) * V * H), *wq = dev_upload(wb, 2 * NH * HD * H);
    uint16_t *wk = dev_upload(wb, 2 * NKV * HD * H), *wv = dev_upload(wb, 2 * NKV * HD * H);
    uint16_t *wo = dev_upload(wb, 2 * H * NH * HD), *wg = dev_upload(wb, 2 * I * H);
    uint16_t *wu = dev_upload(wb, 2 * I * H), *wd = dev_upload(wb, 2 * H * I);
    float ones[64];
    for (int i = 0; i < 64; i++)
        ones[i] = 1.0f;
    float *nw = dev_upload(ones, sizeof ones);
    float *x = dev_upload(NULL, 4 * T * H), *xn = dev_upload(NULL, 4 * T * H);
    float *y = dev_upload(NULL, 4 * T * H), *q = dev_upload(NULL, 4 * T * NH * HD);
    float *k = dev_upload(NULL, 4 * T * NKV * HD), *v = dev_upload(NULL, 4 * T * NKV * HD);
    float *att = dev_upload(NULL, 4 * T * NH * HD), *g = dev_upload(NULL, 4 * T * I);
    float *u = dev_upload(NULL, 4 * T * I), *logits = dev_upload(NULL, 4 * T * V);
    uint16_t *abf = dev_upload(NULL, 2 * T * 64);
    int *dids = dev_upload(NULL, sizeof ids), *dseq = dev_upload(NULL, sizeof seq);
    int *dpos = dev_upload(NULL, sizeof pos), *dout = dev_upload(NULL, sizeof ids);
    ep_mops_kv kv;
    OK(ep_mops_kv_init(&kv, 1, ROW, 4, 9, 3, 3));
    const int table[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    CK(cudaMemcpy(kv.table, table, sizeof table, cudaMemcpyHostToDevice));
    CK(cudaMemset(kv.pool, 0, (size_t)9 * 4 * ROW * 2)); // earlier tokens' rows: zeros
    ep_model_cfg c;
    cfg_rope(&c, EP_ARCH_QWEN3_MOE, false);
    c.head_dim = HD;
    ep_rope hr;
    OK(ep_rope_init(&hr, &c));
    ep_mops_rope rope;
    OK(ep_mops_rope_init(&rope, &hr, 0));
    cublasHandle_t blas;
    assert_int_equal(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
    const ep_mops_attn_shape as = {.heads = NH,
                                   .group = NH / NKV,
                                   .dk = HD,
                                   .dv = HD,
                                   .kstride = HD,
                                   .voff = NKV * HD,
                                   .vstride = HD,
                                   .scale = 1.0f / sqrtf((float)HD)};
    CK(cudaDeviceSynchronize());

    ep_gpu_copy_stats_reset();
    OK(ep_cuda_copy(dids, ids, sizeof ids, cudaMemcpyHostToDevice, 0, "ids"));
    OK(ep_cuda_copy(dseq, seq, sizeof seq, cudaMemcpyHostToDevice, 0, "seqs"));
    OK(ep_cuda_copy(dpos, pos, sizeof pos, cudaMemcpyHostToDevice, 0, "positions"));
    OK(ep_mops_embed(emb, V, H, dids, T, x, 0));
    OK(ep_mops_rmsnorm(x, H, nw, T, H, 1e-6f, xn, H, 0));
    OK(ep_mops_linear(blas, T, NH * HD, H, xn, wq, 0.0f, q, NH * HD, abf, 0));
    OK(ep_mops_linear(blas, T, NKV * HD, H, xn, wk, 0.0f, k, NKV * HD, abf, 0));
    OK(ep_mops_linear(blas, T, NKV * HD, H, xn, wv, 0.0f, v, NKV * HD, abf, 0));
    OK(ep_mops_rmsnorm(q, HD, nw, T * NH, HD, 1e-6f, q, HD, 0));
    OK(ep_mops_rmsnorm(k, HD, nw, T * NKV, HD, 1e-6f, k, HD, 0));
    OK(ep_mops_rope_apply(&rope, q, T, NH * HD, NH, 0, HD, dpos, 0));
    OK(ep_mops_rope_apply(&rope, k, T, NKV * HD, NKV, 0, HD, dpos, 0));
    OK(ep_mops_kv_write(&kv, 0, k, NKV * HD, NKV * HD, 0, T, dseq, dpos, 0));
    OK(ep_mops_kv_write(&kv, 0, v, NKV * HD, NKV * HD, NKV * HD, T, dseq, dpos, 0));
    OK(ep_mops_attention(&kv, 0, &as, q, NH * HD, T, dseq, dpos, att, NH * HD, 0));
    OK(ep_mops_linear(blas, T, H, NH * HD, att, wo, 0.0f, y, H, abf, 0));
    OK(ep_mops_add(x, y, T * H, 0));
    OK(ep_mops_rmsnorm(x, H, nw, T, H, 1e-6f, xn, H, 0));
    OK(ep_mops_linear(blas, T, I, H, xn, wg, 0.0f, g, I, abf, 0));
    OK(ep_mops_linear(blas, T, I, H, xn, wu, 0.0f, u, I, abf, 0));
    OK(ep_mops_silu_mul(g, u, T * I, g, 0));
    OK(ep_mops_linear(blas, T, H, I, g, wd, 1.0f, x, H, abf, 0)); // residual fused as beta 1
    OK(ep_mops_rmsnorm(x, H, nw, T, H, 1e-6f, xn, H, 0));
    OK(ep_mops_linear(blas, T, V, H, xn, emb, 0.0f, logits, V, abf, 0)); // tied lm-head
    OK(ep_mops_argmax(logits, T, V, V, dout, 0));
    int out[T];
    OK(ep_cuda_copy(out, dout, sizeof out, cudaMemcpyDeviceToHost, 0, "sampled ids"));
    CK(cudaStreamSynchronize(0));
    ep_gpu_copy_stats st;
    ep_gpu_copy_stats_get(&st);
    printf("# decode step of %d tokens: %llu bytes host->device in %llu copies, %llu bytes "
           "device->host in %llu\n",
           T, (unsigned long long)st.h2d_bytes, (unsigned long long)st.h2d_copies,
           (unsigned long long)st.d2h_bytes, (unsigned long long)st.d2h_copies);
    assert_true(st.h2d_bytes == 3 * T * sizeof(int) && st.h2d_copies == 3);
    assert_true(st.d2h_bytes == T * sizeof(int) && st.d2h_copies == 1);
    // The ids are those of the downloaded logits (no activation came back
    // in the step; this copy is after it).
    float hl[T * V];
    download(hl, logits, sizeof hl);
    for (int t = 0; t < T; t++) {
        assert_true(out[t] >= 0 && out[t] < V);
        for (int i = 0; i < V; i++)
            assert_true(!(hl[t * V + i] > hl[t * V + out[t]]));
    }
    // The same layer from the CPU's routines (ep_dense_mm over the same BF16
    // matrices, which rounds its inputs to BF16 as the device does,
    // ep_model_rmsnorm, ep_rope_*, ep_dense_swiglu, attention in double over
    // bf16-rounded k / v: the earlier positions' rows are zeros). Budget 2^-8
    // of the row's largest logit: both sides round the same values to BF16
    // before every product and the cache, and differ otherwise only in fp32
    // summation order (~1e-6 here), except where that difference tips a
    // value across a BF16 rounding boundary, which moves it by up to 2^-8 of
    // itself; 2^-8 of the row bounds one such flip's effect at these sizes.
    const ep_mat Memb = {.dtype = EP_DTYPE_BF16, .rows = V, .cols = H, .data = wb};
    const ep_mat Mq = {.dtype = EP_DTYPE_BF16, .rows = NH * HD, .cols = H, .data = wb};
    const ep_mat Mk = {.dtype = EP_DTYPE_BF16, .rows = NKV * HD, .cols = H, .data = wb};
    const ep_mat Mo = {.dtype = EP_DTYPE_BF16, .rows = H, .cols = NH * HD, .data = wb};
    const ep_mat Mg = {.dtype = EP_DTYPE_BF16, .rows = I, .cols = H, .data = wb};
    const ep_mat Md = {.dtype = EP_DTYPE_BF16, .rows = H, .cols = I, .data = wb};
    float hx[T * H], hxn[T * H], hy[T * H], hq[T * NH * HD], hk[T * NKV * HD], hv[T * NKV * HD];
    float hatt[T * NH * HD], hg[T * I], hu[T * I], hlog[T * V], cs[HD];
    for (int t = 0; t < T; t++)
        ep_mat_row_f32(&Memb, ids[t], hx + t * H);
    ep_model_rmsnorm(hx, ones, T, H, 1e-6f, hxn);
    ep_dense_mm(T, hxn, H, &Mq, 0.0f, hq, NH * HD);
    ep_dense_mm(T, hxn, H, &Mk, 0.0f, hk, NKV * HD);
    ep_dense_mm(T, hxn, H, &Mk, 0.0f, hv, NKV * HD); // wv holds the same values as wk
    ep_model_rmsnorm(hq, ones, T * NH, HD, 1e-6f, hq);
    ep_model_rmsnorm(hk, ones, T * NKV, HD, 1e-6f, hk);
    for (int t = 0; t < T; t++) {
        ep_rope_table(&hr, pos[t], cs);
        for (int h = 0; h < NH; h++)
            ep_rope_rotate(&hr, cs, hq + t * NH * HD + h * HD);
        for (int h = 0; h < NKV; h++)
            ep_rope_rotate(&hr, cs, hk + t * NKV * HD + h * HD);
        for (int h = 0; h < NH; h++) { // keys 0..pos-1 are zero: score 0, value 0
            const float *qh = hq + t * NH * HD + h * HD;
            const float *kh = hk + t * NKV * HD + (h / (NH / NKV)) * HD;
            const float *vh = hv + t * NKV * HD + (h / (NH / NKV)) * HD;
            double sc = 0;
            for (int d = 0; d < HD; d++)
                sc += (double)qh[d] * ep_bf16_round(kh[d]);
            sc *= as.scale;
            const double mx = fmax(sc, pos[t] > 0 ? 0.0 : sc);
            const double po = exp(sc - mx), sum = po + pos[t] * exp(0.0 - mx);
            for (int d = 0; d < HD; d++)
                hatt[t * NH * HD + h * HD + d] = (float)(po * ep_bf16_round(vh[d]) / sum);
        }
    }
    ep_dense_mm(T, hatt, NH * HD, &Mo, 0.0f, hy, H);
    for (int i = 0; i < T * H; i++)
        hx[i] += hy[i];
    ep_model_rmsnorm(hx, ones, T, H, 1e-6f, hxn);
    ep_dense_mm(T, hxn, H, &Mg, 0.0f, hg, I);
    ep_dense_mm(T, hxn, H, &Mg, 0.0f, hu, I); // wu holds the same values as wg
    ep_dense_swiglu(T * I, hg, hu, hg);
    ep_dense_mm(T, hg, I, &Md, 1.0f, hx, H);
    ep_model_rmsnorm(hx, ones, T, H, 1e-6f, hxn);
    ep_dense_mm(T, hxn, H, &Memb, 0.0f, hlog, V);
    double worst = 0;
    for (int t = 0; t < T; t++) {
        const double tol = ldexp(row_max(hlog + t * V, V), -8);
        int best = 0;
        for (int i = 0; i < V; i++) {
            const double e = fabs(hl[t * V + i] - hlog[t * V + i]);
            assert_true(e <= tol);
            worst = fmax(worst, e / row_max(hlog + t * V, V));
            if (hlog[t * V + i] > hlog[t * V + best]) best = i;
        }
        double second = -INFINITY; // the greedy id must agree unless a near-tie
        for (int i = 0; i < V; i++)
            if (i != best) second = fmax(second, hlog[t * V + i]);
        if (hlog[t * V + best] - second > 2 * tol) assert_int_equal(out[t], best);
    }
    printf("# decode layer vs the CPU routines: max logit error %.2e of the row's largest\n",
           worst);
    cublasDestroy(blas);
    ep_mops_rope_free(&rope);
    ep_mops_kv_free(&kv);
    void *bufs[] = {emb, wq, wk, wv,  wo, wg, wu,     wd,  nw,   x,    xn,   y,
                    q,   k,  v,  att, g,  u,  logits, abf, dids, dseq, dpos, dout};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        cudaFree(bufs[i]);
    free(wb);
}

int main(void)
{
    if (cuda_test_devices("test_cuda_model_ops") == 0) return CUDA_TEST_SKIP;
    if (cudaSetDevice(0) != cudaSuccess) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_add_silu_mul),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_argmax),
        cmocka_unit_test(test_sample_from_logits_copy),
        cmocka_unit_test(test_sample_topk),
        cmocka_unit_test(test_copy_stats),
        cmocka_unit_test(test_decode_step_traffic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
