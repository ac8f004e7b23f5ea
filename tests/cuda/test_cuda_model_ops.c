// The model's device ops (model/cuda/ops.h) against their CPU references on
// odd shapes, fixed seeds, both model families: embedding gather (bit-exact
// vs ep_mat_row_f32), RMSNorm and the per-head q/k norm (vs
// ep_model_rmsnorm), residual add and SiLU * up (vs ep_dense_swiglu), RoPE
// plain, Qwen3 YaRN and DeepSeek YaRN (vs ep_rope_table + ep_rope_rotate),
// the BF16 dense product on cuBLAS (vs ep_dense_mm over the same BF16
// matrix), the paged KV cache write and attention (GQA and the MLA latent
// shape; prefill, chunked prefill after cached tokens, decode of sequences
// of different lengths, block boundaries; vs a plain C attention over the
// host ep_kv's rows), MLA's absorbed q and unfolded output (strided batched
// cuBLAS vs plain loops) and absorbed decode (vs the expanded form), greedy
// argmax and top-k / top-p sampling (vs ep_sampler) and sampling from an
// explicit logits copy, and the host<->device copy counter (a device decode
// step moves only ids and positions). Budgets are stated at each check.
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
#include "cuda_test_util.h"
#include "experts/dense.h"
#include "model/cuda/ops.h"
#include "model/kv_cache.h"
#include "model/model_impl.h"
#include "model/sample.h"

#define CK(call) assert_int_equal((int)(call), (int)cudaSuccess)
#define OK(call) assert_int_equal((int)(call), (int)EP_OK)
#define NANFILL  0xff // fresh-device-memory poison: every output must be written

static void *dev_upload(const void *src, size_t bytes)
{
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 1));
    if (bytes) {
        if (src)
            CK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
        else
            CK(cudaMemset(d, NANFILL, bytes));
    }
    return d;
}

static void download(void *dst, const void *d, size_t bytes)
{
    CK(cudaDeviceSynchronize());
    if (bytes) CK(cudaMemcpy(dst, d, bytes, cudaMemcpyDeviceToHost));
}

static uint16_t *to_bf16(const float *x, size_t n)
{
    uint16_t *b = malloc(n * sizeof *b);
    for (size_t i = 0; i < n; i++)
        b[i] = ep_f32_to_bf16(x[i]);
    return b;
}

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

// ---- paged KV cache and attention ---------------------------------------------------------

enum { KV_LAYERS = 2, KV_BT = 5, KV_BLOCKS = 40, KV_SEQS = 6, KV_MAX_TOKENS = 40 };
enum { KV_MAX_BLOCKS = KV_MAX_TOKENS / KV_BT };

typedef struct {
    int cached, n; // tokens already in the cache, new tokens of the step
} seq_step;

// Plain C attention of one query q over the host rows 0..last of sequence
// seq, layer l (keys at s->koff, values at s->voff: the caller adds the kv
// head's offsets), in double; rows rounded to bf16 when `rounded`. *bound
// receives the BF16 budget against the fp32 rows. Rounding to bf16 (8
// significant bits) moves a value by at most 2^-8 of itself, so each score
// by at most d = 2^-8 * scale * max_j sum_i |q_i k_ji|; the softmax weights
// then change by a factor within e^{+-2d}, i.e. by at most (e^{2d} - 1) in
// sum, and each value by 2^-8 |v|: the output moves by at most
// ((e^{2d} - 1)(1 + 2^-8) + 2^-8) * max |v|.
static void ref_attention(ep_kv *kv, int seq, int l, int last, const ep_mops_attn_shape *s,
                          const float *q, bool rounded, double *out, double *bound)
{
    double *sc = malloc(sizeof(double) * (last + 1)), mx = -INFINITY, sum = 0, qk_max = 0;
    double vmax = 0;
    for (int j = 0; j <= last; j++) {
        const float *row = ep_kv_row(kv, seq, l, j);
        double dot = 0, mag = 0;
        for (int d = 0; d < s->dk; d++) {
            const double k = rounded ? ep_bf16_round(row[s->koff + d]) : row[s->koff + d];
            dot += (double)q[d] * k;
            mag += fabs((double)q[d] * k);
        }
        sc[j] = dot * s->scale;
        mx = fmax(mx, sc[j]);
        qk_max = fmax(qk_max, mag * s->scale);
        for (int d = 0; d < s->dv; d++)
            vmax = fmax(vmax, fabs(row[s->voff + d]));
    }
    for (int d = 0; d < s->dv; d++)
        out[d] = 0;
    for (int j = 0; j <= last; j++) {
        const double p = exp(sc[j] - mx);
        sum += p;
        const float *row = ep_kv_row(kv, seq, l, j);
        for (int d = 0; d < s->dv; d++)
            out[d] += p * (rounded ? ep_bf16_round(row[s->voff + d]) : row[s->voff + d]);
    }
    for (int d = 0; d < s->dv; d++)
        out[d] /= sum;
    const double d = ldexp(qk_max, -8), u = ldexp(1.0, -8);
    *bound = ((exp(2.0 * d) - 1.0) * (1.0 + u) + u) * vmax;
    free(sc);
}

// One step of n_seq sequences on a paged cache of `row`-float rows: earlier
// tokens written by one kv_write (as earlier steps would), the step's new
// tokens by another (layer 1; layer 0 gets other rows, so a wrong layer
// shows), the pool checked row by row against the host ep_kv's block ids,
// then attention of the new tokens against the two references.
static void check_attention(const ep_mops_attn_shape *s, int row, const seq_step *steps, int n_seq,
                            uint64_t seed)
{
    const ep_kv_opts ko = {.n_layers = KV_LAYERS,
                           .row_floats = row,
                           .block_tokens = KV_BT,
                           .n_blocks = KV_BLOCKS,
                           .max_seqs = KV_SEQS,
                           .max_seq_tokens = KV_MAX_TOKENS};
    ep_kv *kv;
    OK(ep_kv_init(&ko, &kv));
    // A sequence taken and given back in the middle: the others' block ids
    // are not 0, 1, 2, ... in order.
    int gap, seqs[KV_SEQS];
    OK(ep_kv_seq_new(kv, &gap));
    OK(ep_kv_reserve(kv, gap, 2 * KV_BT + 1));
    int total = 0, T = 0;
    for (int i = 0; i < n_seq; i++) {
        OK(ep_kv_seq_new(kv, &seqs[i]));
        if (i == 0) ep_kv_seq_free(kv, gap);
        OK(ep_kv_reserve(kv, seqs[i], steps[i].cached + steps[i].n));
        total += steps[i].cached + steps[i].n;
        T += steps[i].n;
    }
    // Every (seq, pos) row, fp32, for both layers; the step's tokens last.
    int *tseq = malloc(sizeof(int) * total), *tpos = malloc(sizeof(int) * total);
    float *rows = malloc(sizeof(float) * total * row), *rows0 = malloc(sizeof(float) * total * row);
    cuda_test_fill(rows, (size_t)total * row, seed, 1.0f);
    cuda_test_fill(rows0, (size_t)total * row, seed + 1, 1.0f);
    int n_old = 0, n_new = 0;
    for (int i = 0; i < n_seq; i++)
        n_old += steps[i].cached;
    {
        int o = 0, nw = n_old; // earlier tokens at [0, n_old), the step's after

        for (int i = 0; i < n_seq; i++)
            for (int p = 0; p < steps[i].cached + steps[i].n; p++) {
                const int k = p < steps[i].cached ? o++ : nw++;
                tseq[k] = seqs[i];
                tpos[k] = p;
                memcpy(ep_kv_row(kv, seqs[i], 1, p), rows + (size_t)k * row, sizeof(float) * row);
                memcpy(ep_kv_row(kv, seqs[i], 0, p), rows0 + (size_t)k * row, sizeof(float) * row);
            }
        n_new = nw - n_old;
    }
    assert_int_equal(n_new, T);
    ep_mops_kv dkv;
    OK(ep_mops_kv_init(&dkv, KV_LAYERS, row, KV_BT, KV_BLOCKS, KV_SEQS, KV_MAX_BLOCKS));
    int table[KV_SEQS * KV_MAX_BLOCKS];
    for (int i = 0; i < KV_SEQS * KV_MAX_BLOCKS; i++)
        table[i] = -1; // a read through an unset entry leaves the pool: a fault
    for (int i = 0; i < n_seq; i++)
        for (int b = 0; b < ep_kv_seq_blocks(kv, seqs[i]); b++)
            table[seqs[i] * KV_MAX_BLOCKS + b] = ep_kv_seq_block(kv, seqs[i], b);
    CK(cudaMemcpy(dkv.table, table, sizeof table, cudaMemcpyHostToDevice));
    float *drows = dev_upload(rows, sizeof(float) * total * row);
    float *drows0 = dev_upload(rows0, sizeof(float) * total * row);
    int *dseq = dev_upload(tseq, sizeof(int) * total),
        *dpos = dev_upload(tpos, sizeof(int) * total);
    OK(ep_mops_kv_write(&dkv, 0, drows0, row, row, 0, total, dseq, dpos, 0));
    OK(ep_mops_kv_write(&dkv, 1, drows, row, row, 0, n_old, dseq, dpos, 0));
    OK(ep_mops_kv_write(&dkv, 1, drows + (size_t)n_old * row, row, row, 0, T, dseq + n_old,
                        dpos + n_old, 0));
    // The pool, row by row, where the host's bookkeeping says each row is.
    const size_t pool_n = (size_t)KV_BLOCKS * KV_LAYERS * KV_BT * row;
    uint16_t *pool = malloc(sizeof(uint16_t) * pool_n);
    download(pool, dkv.pool, sizeof(uint16_t) * pool_n);
    for (int k = 0; k < total; k++)
        for (int l = 0; l < KV_LAYERS; l++) {
            const int b = table[tseq[k] * KV_MAX_BLOCKS + tpos[k] / KV_BT];
            const uint16_t *got =
                pool + (((size_t)b * KV_LAYERS + l) * KV_BT + tpos[k] % KV_BT) * row;
            const float *src = (l ? rows : rows0) + (size_t)k * row;
            for (int i = 0; i < row; i++)
                assert_int_equal(got[i], ep_f32_to_bf16(src[i]));
        }
    // Attention of the step's tokens.
    const int ldq = s->heads * s->dk + 2, ldo = s->heads * s->dv + 1;
    float *q = malloc(sizeof(float) * T * ldq), *out = malloc(sizeof(float) * T * ldo);
    cuda_test_fill(q, (size_t)T * ldq, seed + 2, 1.0f);
    float *dq = dev_upload(q, sizeof(float) * T * ldq),
          *dout = dev_upload(NULL, sizeof(float) * T * ldo);
    OK(ep_mops_attention(&dkv, 1, s, dq, ldq, T, dseq + n_old, dpos + n_old, dout, ldo, 0));
    download(out, dout, sizeof(float) * T * ldo);
    double *want = malloc(sizeof(double) * s->dv), *want32 = malloc(sizeof(double) * s->dv);
    double worst = 0, worst_budget = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < s->heads; h++) {
            const int kvh = h / s->group;
            ep_mops_attn_shape hs = *s;
            hs.koff += kvh * s->kstride;
            hs.voff += kvh * s->vstride;
            const int k = n_old + t;
            double bound, unused;
            const float *qh = q + (size_t)t * ldq + h * s->dk;
            ref_attention(kv, tseq[k], 1, tpos[k], &hs, qh, true, want, &unused);
            ref_attention(kv, tseq[k], 1, tpos[k], &hs, qh, false, want32, &bound);
            const float *o = out + (size_t)t * ldo + h * s->dv;
            double vmax = 0;
            for (int d = 0; d < s->dv; d++)
                vmax = fmax(vmax, fabs(want[d]));
            for (int d = 0; d < s->dv; d++) {
                // The same bf16 rows: fp32 sums and expf against double,
                // 1e-5 of the largest output (scores move by < 1e-6).
                assert_true(fabs(o[d] - want[d]) <= 1e-5 * fmax(vmax, 1e-3));
                // The fp32 cache the CPU forward keeps: the derived budget.
                assert_true(fabs(o[d] - want32[d]) <= bound);
                worst = fmax(worst, fabs(o[d] - want32[d]));
                worst_budget = fmax(worst_budget, bound);
            }
        }
    printf("# attention heads %d group %d dk %d dv %d, %d tokens: max err vs fp32 cache %.2e "
           "(budget up to %.2e)\n",
           s->heads, s->group, s->dk, s->dv, T, worst, worst_budget);
    ep_mops_kv_free(&dkv);
    ep_kv_free(kv);
    cudaFree(drows);
    cudaFree(drows0);
    cudaFree(dseq);
    cudaFree(dpos);
    cudaFree(dq);
    cudaFree(dout);
    free(tseq);
    free(tpos);
    free(rows);
    free(rows0);
    free(pool);
    free(q);
    free(out);
    free(want);
    free(want32);
}

// A prefill across block boundaries, a chunked prefill after cached tokens,
// a decode, a one-token prompt; then a decode step of four sequences of
// different lengths whose new positions sit at block edges; one token alone.
static const seq_step step_mixed[] = {{0, 7}, {9, 4}, {12, 1}, {0, 1}};
static const seq_step step_decode[] = {{4, 1}, {5, 1}, {10, 1}, {24, 1}};
static const seq_step step_one[] = {{0, 1}};

static void check_all_steps(const ep_mops_attn_shape *s, int row, uint64_t seed)
{
    check_attention(s, row, step_mixed, 4, seed);
    check_attention(s, row, step_decode, 4, seed + 10);
    check_attention(s, row, step_one, 1, seed + 20);
}

// Qwen3 GQA: cache row [k of kv heads | v of kv heads], head_dim each.
static void test_attention_gqa(void **state)
{
    const int nkv = 2, hd = 12;
    const ep_mops_attn_shape odd = {.heads = 6,
                                    .group = 3,
                                    .dk = hd,
                                    .dv = hd,
                                    .koff = 0,
                                    .kstride = hd,
                                    .voff = nkv * hd,
                                    .vstride = hd,
                                    .scale = 1.0f / sqrtf((float)hd)};
    check_all_steps(&odd, 2 * nkv * hd, 51);
    // Qwen3-30B-A3B's head_dim 128 (wider than the block: two dims a thread).
    const ep_mops_attn_shape real = {.heads = 4,
                                     .group = 4,
                                     .dk = 128,
                                     .dv = 128,
                                     .koff = 0,
                                     .kstride = 128,
                                     .voff = 128,
                                     .vstride = 128,
                                     .scale = 1.0f / sqrtf(128.0f)};
    check_attention(&real, 256, step_mixed, 4, 61);
}

// MLA in the absorbed form: every head attends with [W_UK^T q_nope | q_pe]
// over the cache row [latent | k_pe] and sums the latents (the values).
static void test_attention_mla(void **state)
{
    const int R = 16, rope = 6;
    const ep_mops_attn_shape odd = {
        .heads = 5, .group = 5, .dk = R + rope, .dv = R, .scale = 0.135234f};
    check_all_steps(&odd, R + rope, 71);
    // DeepSeek-V2's kv_lora 512 + rope 64.
    const ep_mops_attn_shape real = {
        .heads = 2, .group = 2, .dk = 576, .dv = 512, .scale = 0.135234f};
    check_attention(&real, 576, step_decode, 4, 81);
}

static void test_attention_errors(void **state)
{
    ep_mops_kv dkv;
    OK(ep_mops_kv_init(&dkv, 1, 8, 4, 2, 1, 1));
    ep_mops_attn_shape s = {.heads = 2,
                            .group = 1,
                            .dk = 4,
                            .dv = 4,
                            .koff = 0,
                            .kstride = 4,
                            .voff = 4,
                            .vstride = 4,
                            .scale = 1.0f};
    assert_int_equal(ep_mops_attention(&dkv, 0, &s, NULL, 8, 1, NULL, NULL, NULL, 8, 0),
                     EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "do not fit a 8-float cache row"));
    s.group = 2;
    s.dk = EP_MOPS_ATTN_MAX_DK + 1;
    assert_int_equal(ep_mops_attention(&dkv, 0, &s, NULL, 8, 1, NULL, NULL, NULL, 8, 0),
                     EP_ERR_ARG);
    assert_int_equal(ep_mops_attention(&dkv, 1, &s, NULL, 8, 1, NULL, NULL, NULL, 8, 0),
                     EP_ERR_ARG);
    assert_int_equal(ep_mops_kv_write(&dkv, 0, NULL, 8, 8, 1, 1, NULL, NULL, 0), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "ep_mops_kv_write"));
    ep_mops_kv_free(&dkv);
    ep_mops_kv_free(&dkv); // cleared: a second free is a no-op
}

// ---- MLA absorbed form --------------------------------------------------------------------

// Both products against plain loops in double: (a) on the same bf16-rounded
// inputs, 1e-5 of sum |a w| (fp32 sums in another order); (b) on the fp32
// q / latent and fp32 wkv_b the CPU forward keeps, 2^-8 of sum |a w| more
// (rounding both factors of a product to bf16 moves it by at most
// (1 + 2^-9)^2 - 1 < 2^-8 of its size). q_pe is copied exactly.
static void check_mla(cublasHandle_t blas, const ep_mops_mla *s, int T, uint64_t seed)
{
    const int R = s->kv_lora, nh = s->heads, qhd = s->nope + s->rope, qw = R + s->rope;
    const int kvb = s->nope + s->v, ldo = nh * s->v + 3;
    const size_t nq = (size_t)T * nh * qhd, nw = (size_t)nh * kvb * R, no = (size_t)T * nh * R;
    float *q = malloc(sizeof(float) * nq), *w = malloc(sizeof(float) * nw);
    float *ol = malloc(sizeof(float) * no), *qa = malloc(sizeof(float) * T * nh * qw);
    float *out = malloc(sizeof(float) * T * ldo), *out0 = malloc(sizeof(float) * T * ldo);
    cuda_test_fill(q, nq, seed, 1.0f);
    cuda_test_fill(w, nw, seed + 1, 0.2f);
    cuda_test_fill(ol, no, seed + 2, 1.0f);
    cuda_test_fill(out0, (size_t)T * ldo, seed + 3, 1.0f);
    uint16_t *wb = to_bf16(w, nw);
    float *dq = dev_upload(q, sizeof(float) * nq), *dol = dev_upload(ol, sizeof(float) * no);
    float *dqa = dev_upload(NULL, sizeof(float) * T * nh * qw);
    float *dout = dev_upload(out0, sizeof(float) * T * ldo);
    uint16_t *dw = dev_upload(wb, sizeof(uint16_t) * nw);
    uint16_t *dscr = dev_upload(NULL, sizeof(uint16_t) * (nq > no ? nq : no));
    OK(ep_mops_mla_absorb_q(blas, s, T, dq, dw, dqa, dscr, 0));
    download(qa, dqa, sizeof(float) * T * nh * qw);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            const float *qh = q + ((size_t)t * nh + h) * qhd;
            const float *got = qa + ((size_t)t * nh + h) * qw;
            for (int r = 0; r < R; r++) {
                double a = 0, b = 0, mag = 0;
                for (int i = 0; i < s->nope; i++) {
                    const size_t wi = ((size_t)h * kvb + i) * R + r;
                    a += (double)ep_bf16_round(qh[i]) * ep_bf16_to_f32(wb[wi]);
                    b += (double)qh[i] * w[wi];
                    mag += fabs((double)qh[i] * w[wi]);
                }
                assert_true(fabs(got[r] - a) <= 1e-5 * mag + 1e-30);
                assert_true(fabs(got[r] - b) <= (ldexp(1.0, -7) + 1e-5) * mag + 1e-30);
            }
            for (int i = 0; i < s->rope; i++)
                assert_true(got[R + i] == qh[s->nope + i]);
        }
    OK(ep_mops_mla_unabsorb(blas, s, T, dol, dw, dout, ldo, dscr, 0));
    download(out, dout, sizeof(float) * T * ldo);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < nh; h++) {
            const float *oh = ol + ((size_t)t * nh + h) * R;
            for (int j = 0; j < s->v; j++) {
                double a = 0, b = 0, mag = 0;
                for (int r = 0; r < R; r++) {
                    const size_t wi = ((size_t)h * kvb + s->nope + j) * R + r;
                    a += (double)ep_bf16_round(oh[r]) * ep_bf16_to_f32(wb[wi]);
                    b += (double)oh[r] * w[wi];
                    mag += fabs((double)oh[r] * w[wi]);
                }
                const float got = out[(size_t)t * ldo + h * s->v + j];
                assert_true(fabs(got - a) <= 1e-5 * mag + 1e-30);
                assert_true(fabs(got - b) <= (ldexp(1.0, -7) + 1e-5) * mag + 1e-30);
            }
        }
        for (int i = nh * s->v; i < ldo; i++) // the gap after each row is untouched
            assert_true(out[(size_t)t * ldo + i] == out0[(size_t)t * ldo + i]);
    }
    cudaFree(dq);
    cudaFree(dol);
    cudaFree(dqa);
    cudaFree(dout);
    cudaFree(dw);
    cudaFree(dscr);
    free(q);
    free(w);
    free(ol);
    free(qa);
    free(out);
    free(out0);
    free(wb);
}

static void test_mla_absorb(void **state)
{
    cublasHandle_t blas;
    assert_int_equal(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
    const ep_mops_mla odd = {.heads = 3, .nope = 5, .rope = 4, .v = 7, .kv_lora = 11};
    check_mla(blas, &odd, 1, 131);
    check_mla(blas, &odd, 6, 132);
    // DeepSeek-V2's head widths (128 nope, 64 rope, 128 v, kv_lora 512).
    const ep_mops_mla real = {.heads = 2, .nope = 128, .rope = 64, .v = 128, .kv_lora = 512};
    check_mla(blas, &real, 3, 133);
    assert_int_equal(ep_mops_mla_unabsorb(blas, &odd, 1, NULL, NULL, NULL, 3 * 7 - 1, NULL, 0),
                     EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "v_head_dim"));
    cublasDestroy(blas);
}

// MLA decode in the absorbed form on the device (latent rows into the
// cache, absorb, attention over [latent | k_pe], unfold) against the
// expanded form in double on fp32 data (model/reference.c's way: full keys
// [W_UK_h c_s | k_pe_s] and values W_UV_h c_s): the identity and the
// pieces' layouts together. Budget per output, from the BF16 roundings
// (unit roundoff u = 2^-8): the absorbed query moves by (2u + 1e-5) sum
// |q w|, the cached latent and k_pe by u of themselves, so each score by at
// most d = scale * (3u + 1e-5) * (sum_r (sum_i |q_i W_ir|) |c_r| + sum |q_pe
// k_pe|) (max over keys); the attended latent o_r by at most ((e^{2d} - 1)
// (1 + u) + u) * max_s |c_sr|; the unfold adds (2u + 1e-5) sum_r |W_jr o_r|.
static void test_mla_decode_vs_expanded(void **state)
{
    const ep_mops_mla m = {.heads = 3, .nope = 5, .rope = 4, .v = 7, .kv_lora = 11};
    const int R = m.kv_lora, nh = m.heads, qhd = m.nope + m.rope, kvb = m.nope + m.v;
    const int row = R + m.rope, qw = R + m.rope;
    const float scale = 1.0f / sqrtf((float)qhd);
    enum { T = 4, BT = 3, SEQS = 4, MAXB = 5, NB = SEQS * MAXB };
    const int seq[T] = {0, 1, 2, 3}, pos[T] = {0, 2, 7, 12}; // decode at block edges
    int total = 0, start[T];
    for (int t = 0; t < T; t++) {
        start[t] = total;
        total += pos[t] + 1;
    }
    // Each sequence's rows [c | k_pe] (already normed and roped: those ops
    // are tested above) for positions 0..pos[t].
    float *rows = malloc(sizeof(float) * total * row), q[T * 3 * 9], w[3 * 12 * 11];
    cuda_test_fill(rows, (size_t)total * row, 141, 1.0f);
    cuda_test_fill(q, sizeof q / sizeof *q, 142, 1.0f);
    cuda_test_fill(w, sizeof w / sizeof *w, 143, 0.3f);
    assert_int_equal((int)(sizeof q / sizeof *q), T * nh * qhd);
    assert_int_equal((int)(sizeof w / sizeof *w), nh * kvb * R);
    int *wseq = malloc(sizeof(int) * total), *wpos = malloc(sizeof(int) * total);
    for (int t = 0; t < T; t++)
        for (int p = 0; p <= pos[t]; p++) {
            wseq[start[t] + p] = seq[t];
            wpos[start[t] + p] = p;
        }
    int table[SEQS * MAXB];
    for (int i = 0; i < SEQS * MAXB; i++)
        table[i] = NB - 1 - i; // sequence t's block b is pool block NB - 1 - (t * MAXB + b)
    ep_mops_kv kv;
    OK(ep_mops_kv_init(&kv, 1, row, BT, NB, SEQS, MAXB));
    CK(cudaMemcpy(kv.table, table, sizeof table, cudaMemcpyHostToDevice));
    uint16_t *wb = to_bf16(w, sizeof w / sizeof *w);
    float *drows = dev_upload(rows, sizeof(float) * total * row), *dq = dev_upload(q, sizeof q);
    int *dwseq = dev_upload(wseq, sizeof(int) * total),
        *dwpos = dev_upload(wpos, sizeof(int) * total);
    int *dseq = dev_upload(seq, sizeof seq), *dpos = dev_upload(pos, sizeof pos);
    uint16_t *dw = dev_upload(wb, sizeof(uint16_t) * nh * kvb * R);
    float *dqa = dev_upload(NULL, sizeof(float) * T * nh * qw);
    float *dol = dev_upload(NULL, sizeof(float) * T * nh * R);
    float *dout = dev_upload(NULL, sizeof(float) * T * nh * m.v), out[T * 3 * 7];
    uint16_t *dscr = dev_upload(NULL, sizeof(uint16_t) * T * nh * qw);
    cublasHandle_t blas;
    assert_int_equal(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
    OK(ep_mops_kv_write(&kv, 0, drows, row, row, 0, total, dwseq, dwpos, 0));
    OK(ep_mops_mla_absorb_q(blas, &m, T, dq, dw, dqa, dscr, 0));
    const ep_mops_attn_shape as = {.heads = nh, .group = nh, .dk = qw, .dv = R, .scale = scale};
    OK(ep_mops_attention(&kv, 0, &as, dqa, nh * qw, T, dseq, dpos, dol, nh * R, 0));
    OK(ep_mops_mla_unabsorb(blas, &m, T, dol, dw, dout, nh * m.v, dscr, 0));
    download(out, dout, sizeof out);
    const double u = ldexp(1.0, -8);
    double worst = 0, worst_budget = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            const float *qh = q + ((size_t)t * nh + h) * qhd;
            const float *wuk = w + (size_t)h * kvb * R, *wuv = wuk + (size_t)m.nope * R;
            const int n = pos[t] + 1;
            double sc[16], mx = -INFINITY, sum = 0, dmax = 0, o[11] = {0}, cmax[11] = {0};
            double qw_abs[11]; // sum_i |q_i W_UK[i, r]|
            for (int r = 0; r < R; r++) {
                qw_abs[r] = 0;
                for (int i = 0; i < m.nope; i++)
                    qw_abs[r] += fabs((double)qh[i] * wuk[i * R + r]);
            }
            for (int s = 0; s < n; s++) {
                const float *c = rows + (size_t)(start[t] + s) * row, *kpe = c + R;
                double dot = 0, mag = 0;
                for (int i = 0; i < m.nope; i++) { // q_nope . (W_UK_h c), expanded
                    double k = 0;
                    for (int r = 0; r < R; r++)
                        k += (double)wuk[i * R + r] * c[r];
                    dot += qh[i] * k;
                }
                for (int r = 0; r < R; r++) {
                    mag += qw_abs[r] * fabs(c[r]);
                    cmax[r] = fmax(cmax[r], fabs(c[r]));
                }
                for (int i = 0; i < m.rope; i++) {
                    dot += (double)qh[m.nope + i] * kpe[i];
                    mag += fabs((double)qh[m.nope + i] * kpe[i]);
                }
                sc[s] = dot * scale;
                mx = fmax(mx, sc[s]);
                dmax = fmax(dmax, scale * (3 * u + 1e-5) * mag);
            }
            for (int s = 0; s < n; s++) {
                const double p = exp(sc[s] - mx);
                sum += p;
                for (int r = 0; r < R; r++)
                    o[r] += p * rows[(size_t)(start[t] + s) * row + r];
            }
            for (int j = 0; j < m.v; j++) {
                double want = 0, bound = 0;
                for (int r = 0; r < R; r++) {
                    const double orr = o[r] / sum, wj = fabs((double)wuv[j * R + r]);
                    want += (double)wuv[j * R + r] * orr; // W_UV (sum p c) = sum p (W_UV c)
                    bound += wj * (((exp(2 * dmax) - 1) * (1 + u) + u) * cmax[r]) +
                             (2 * u + 1e-5) * wj * fabs(orr);
                }
                const double err = fabs(out[((size_t)t * nh + h) * m.v + j] - want);
                assert_true(err <= bound);
                worst = fmax(worst, err);
                worst_budget = fmax(worst_budget, bound);
            }
        }
    printf("# MLA absorbed decode vs expanded: max err %.2e (budget up to %.2e)\n", worst,
           worst_budget);
    cublasDestroy(blas);
    ep_mops_kv_free(&kv);
    void *bufs[] = {drows, dq, dwseq, dwpos, dseq, dpos, dw, dqa, dol, dout, dscr};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        cudaFree(bufs[i]);
    free(rows);
    free(wseq);
    free(wpos);
    free(wb);
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

// Device sampling against ep_sampler on the same logits, row by row: the
// sampler's RNG (seed s) draws u = ep_rng_uniform of a stream seeded s,
// which the device row gets. Greedy, temperatures, top-k up to
// EP_MOPS_TOPK_MAX and above the vocabulary, top-p cuts, ties, NaN and -inf
// logits, a row of only -inf. The tokens must be identical (a different
// token needs u within an ulp of a cumulative boundary: not at these seeds).
static void check_sample_topk(int V, uint64_t seed)
{
    enum { ROWS = 60 };
    const float temps[] = {0.0f, 0.3f, 0.8f, 1.5f};
    const int topks[] = {1, 2, 7, 50, EP_MOPS_TOPK_MAX};
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
        if (r == ROWS - 1) p.temperature = 1.0f, p.top_k = 3;
        p.seed = seed * 1000 + (uint64_t)r;
        ep_sampler *sm;
        OK(ep_sampler_init(&p, V, &sm));
        want[r] = ep_sampler_sample(sm, l + (size_t)r * V);
        ep_sampler_free(sm);
        ep_rng rng;
        ep_rng_seed(&rng, p.seed);
        const bool greedy = p.temperature == 0.0f || p.top_k == 1;
        prm[r] = (ep_mops_sample_row){.temperature = p.temperature,
                                      .top_k = p.top_k,
                                      .top_p = p.top_p,
                                      .u = greedy ? 0.0 : ep_rng_uniform(&rng)};
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
// step's ids, sequences and positions in and the sampled ids out. The ops'
// results are checked by the tests above; this one checks what crosses PCIe.
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
    OK(ep_mops_kv_init(&kv, 1, ROW, 4, 8, 3, 3));
    const int table[9] = {0, 1, 2, 3, 4, 5, 6, 7, 6};
    CK(cudaMemcpy(kv.table, table, sizeof table, cudaMemcpyHostToDevice));
    CK(cudaMemset(kv.pool, 0, (size_t)8 * 4 * ROW * 2)); // earlier tokens' rows: zeros
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
        cmocka_unit_test(test_attention_gqa),
        cmocka_unit_test(test_attention_mla),
        cmocka_unit_test(test_attention_errors),
        cmocka_unit_test(test_mla_absorb),
        cmocka_unit_test(test_mla_decode_vs_expanded),
        cmocka_unit_test(test_argmax),
        cmocka_unit_test(test_sample_from_logits_copy),
        cmocka_unit_test(test_sample_topk),
        cmocka_unit_test(test_copy_stats),
        cmocka_unit_test(test_decode_step_traffic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
