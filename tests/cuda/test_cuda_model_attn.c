// The model's device attention ops (model/cuda/ops.h) against CPU
// references with fixed seeds and odd shapes, both model families: the
// paged KV cache write (every row's bits where the host ep_kv's
// bookkeeping puts it) and attention over the paged cache (Qwen3 GQA and
// MLA's latent shape; prefill across block boundaries, chunked prefill
// after cached tokens, a decode step of sequences of different lengths at
// block edges, one token; vs a plain C attention in double over the host
// ep_kv's rows, both on the same bf16 rows and on the fp32 rows the CPU
// cache holds), MLA's absorbed q and unfolded output (strided batched
// cuBLAS vs plain loops) and the absorbed decode put together (vs the
// expanded form). BF16 budgets are derived at each check. The other ops
// are in test_cuda_model_ops.c. Skips (77) without a device.
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
#include "cuda_test_dev.h"
#include "cuda_test_util.h"
#include "model/cuda/ops.h"
#include "model/kv_cache.h"

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

int main(void)
{
    if (cuda_test_devices("test_cuda_model_attn") == 0) return CUDA_TEST_SKIP;
    if (cudaSetDevice(0) != cudaSuccess) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_gqa),          cmocka_unit_test(test_attention_mla),
        cmocka_unit_test(test_attention_errors),       cmocka_unit_test(test_mla_absorb),
        cmocka_unit_test(test_mla_decode_vs_expanded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
