// RoPE / YaRN / MLA constants: the MLA softmax scales of DeepSeek-V2.5 and
// V2-Lite against FACTS.md (mscale^2 1.87385 -> 0.135234; 1.58963 ->
// 0.114721); the YaRN frequency table of tiny-deepseek-v2 against values
// worked out by hand (correction range [1, 5] over 8 frequencies), and
// Qwen3's YaRN (transformers' attention factor, truncate) likewise; plain
// RoPE of tiny-qwen3-moe; rotation keeps norms, makes q.k depend only on the
// position difference, and the interleaved layout equals the HF code's
// de-interleave + rotate-half up to that permutation.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/rope.h"

static void load(const char *name, ep_model_cfg *c)
{
    ep_status st = ep_model_cfg_load(name, c);
    if (st) fprintf(stderr, "%s: %s\n", name, ep_last_error());
    assert_int_equal(st, EP_OK);
}

static void test_mla_scale_facts(void **state)
{
    ep_model_cfg c;
    load("deepseek-v2.5", &c);
    double m = ep_yarn_mscale(c.yarn_factor, c.yarn_mscale_all_dim);
    assert_float_equal(m * m, 1.87385, 1e-5);
    assert_float_equal(ep_mla_softmax_scale(&c), 0.135234, 1e-6);
    load("deepseek-v2-lite", &c);
    m = ep_yarn_mscale(c.yarn_factor, c.yarn_mscale_all_dim);
    assert_float_equal(m * m, 1.58963, 1e-5);
    assert_float_equal(ep_mla_softmax_scale(&c), 0.114721, 1e-6);
    // no YaRN: plain 1/sqrt(nope + rope)
    c.has_yarn = false;
    assert_float_equal(ep_mla_softmax_scale(&c), 1.0 / sqrt(192.0), 1e-9);
    assert_float_equal(ep_yarn_mscale(1.0, 1.0), 1.0, 0.0);
    assert_float_equal(ep_yarn_mscale(0.5, 1.0), 1.0, 0.0);
}

static void test_yarn_table(void **state)
{
    ep_model_cfg c;
    load("tiny-deepseek-v2", &c);
    ep_rope r;
    assert_int_equal(ep_rope_init(&r, &c), EP_OK);
    assert_int_equal(r.dim, 16);
    assert_true(r.interleaved);
    // mscale 1 / mscale_all_dim 1: cos and sin unscaled
    assert_float_equal(r.cs_scale, 1.0, 1e-7);
    // theta 1e4, factor 4, original 1024: correction dims 1.414 -> 1 and
    // 4.424 -> 5; ramp (i - 1) / 4 blends extra_i and extra_i / 4
    const double ramp[8] = {0, 0, 0.25, 0.5, 0.75, 1, 1, 1};
    for (int i = 0; i < 8; i++) {
        double extra = pow(10000.0, -2.0 * i / 16);
        double want = extra * (1 - ramp[i]) + extra / 4 * ramp[i];
        assert_float_equal(r.inv_freq[i], want, 1e-6 * want);
    }
    assert_float_equal(r.inv_freq[3], 0.0197642, 1e-7);
    assert_float_equal(r.inv_freq[7], 7.90569e-5, 1e-9);
    // mscale_all_dim 0 (DeepSeek's default): cos/sin carry 0.1 ln 4 + 1
    c.yarn_mscale_all_dim = 0.0f;
    assert_int_equal(ep_rope_init(&r, &c), EP_OK);
    assert_float_equal(r.cs_scale, 1.1386294, 1e-6);
}

// Qwen3-30B-A3B with its README's YaRN (factor 4, original 32768, theta 1e6,
// head_dim 128), worked out by hand: correction dims 128 ln(32768 / (32 2 pi))
// / (2 ln 1e6) = 23.596 -> 23 and (beta_slow 1) 39.651 -> 40; inv_freq_i =
// theta^(-2i/128) (1 - 0.75 ramp_i), ramp_i = (i - 23) / 17 clamped to [0, 1];
// cos / sin times 0.1 ln 4 + 1 = 1.1386294. No softmax mscale for Qwen3.
static void test_qwen3_yarn_table(void **state)
{
    ep_model_cfg c;
    load("qwen3-30b-a3b", &c);
    c.has_yarn = true;
    c.yarn_factor = 4.0f;
    c.yarn_orig_max_pos = 32768;
    c.max_pos = 131072;
    assert_int_equal(ep_model_cfg_validate(&c), EP_OK);
    ep_rope r;
    assert_int_equal(ep_rope_init(&r, &c), EP_OK);
    assert_int_equal(r.dim, 128);
    assert_false(r.interleaved);
    assert_float_equal(r.cs_scale, 1.1386294, 1e-6);
    assert_float_equal(ep_rope_attention_factor(&c), 1.138629436, 1e-9);
    const struct {
        int i;
        double want;
    } inv[] = {{0, 1.0},
               {23, 0.006978305848598663},
               {30, 0.001064360981247002},
               {40, 4.445698525097307e-05},
               {63, 3.102344401879299e-07}};
    for (size_t k = 0; k < EP_ARRAY_LEN(inv); k++)
        assert_float_equal(r.inv_freq[inv[k].i], inv[k].want, 1e-6 * inv[k].want);
    // Past original_max_position_embeddings: position 100000, dim 30 turns
    // 106.436 rad: cos 1.0582256, sin -0.4202804 (times the factor).
    float cs[EP_ROPE_MAX_DIM];
    ep_rope_table(&r, 100000, cs);
    assert_float_equal(cs[30], 1.0582256, 1e-4);
    assert_float_equal(cs[64 + 30], -0.4202804, 1e-4);

    // attention_factor, when given, is the factor.
    c.yarn_attn_factor = 1.3f;
    assert_int_equal(ep_rope_init(&r, &c), EP_OK);
    assert_float_equal(r.cs_scale, 1.3, 1e-7);
    // mscale and mscale_all_dim both given: (0.09 ln 4 + 1) / (0.07 ln 4 + 1).
    c.yarn_attn_factor = 0.0f;
    c.yarn_mscale = 0.9f;
    c.yarn_mscale_all_dim = 0.7f;
    assert_int_equal(ep_rope_init(&r, &c), EP_OK);
    assert_float_equal(r.cs_scale, 1.0252733, 1e-6);
    // Only mscale_all_dim: transformers ignores it (0.1 ln 4 + 1), where
    // DeepSeek's code would divide by mscale(4, 0.7).
    c.yarn_mscale = 0.0f;
    assert_int_equal(ep_rope_init(&r, &c), EP_OK);
    assert_float_equal(r.cs_scale, 1.1386294, 1e-6);
    // truncate false: the ramp runs over [23.596, 39.651] unrounded; dim 30 is
    // 0.39888 of the way: theta^(-60/128) (1 - 0.75 * 0.39888).
    c.yarn_truncate = false;
    assert_int_equal(ep_rope_init(&r, &c), EP_OK);
    assert_float_equal(r.inv_freq[30], 0.001079237741676554, 1e-6 * 0.00107924);
    assert_float_equal(r.inv_freq[23], pow(1e6, -46.0 / 128), 1e-6 * 0.007);
}

static void test_plain_table(void **state)
{
    ep_model_cfg c;
    load("tiny-qwen3-moe", &c);
    ep_rope r;
    assert_int_equal(ep_rope_init(&r, &c), EP_OK);
    assert_int_equal(r.dim, 32);
    assert_false(r.interleaved);
    assert_float_equal(r.cs_scale, 1.0, 0.0);
    for (int i = 0; i < 16; i++) {
        double want = pow(1e6, -2.0 * i / 32);
        assert_float_equal(r.inv_freq[i], want, 1e-6 * want);
    }
    c.head_dim = 13;
    assert_int_equal(ep_rope_init(&r, &c), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "head_dim"));
}

static void fill(float *x, int n, unsigned seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        x[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
}

static double dotd(const float *a, const float *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static void rot(const ep_rope *r, int pos, float *x)
{
    float cs[EP_ROPE_MAX_DIM];
    ep_rope_table(r, pos, cs);
    ep_rope_rotate(r, cs, x);
}

static void test_rotation_properties(void **state)
{
    const char *names[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
    for (int n = 0; n < 2; n++) {
        ep_model_cfg c;
        load(names[n], &c);
        ep_rope r;
        assert_int_equal(ep_rope_init(&r, &c), EP_OK);
        int d = r.dim;
        float q[EP_ROPE_MAX_DIM], k[EP_ROPE_MAX_DIM], q0[EP_ROPE_MAX_DIM], k0[EP_ROPE_MAX_DIM];
        fill(q0, d, 5 + n);
        fill(k0, d, 11 + n);
        memcpy(q, q0, d * sizeof(float));
        rot(&r, 0, q); // position 0 is the identity
        for (int i = 0; i < d; i++)
            assert_float_equal(q[i], q0[i], 1e-7);
        rot(&r, 13, q);
        assert_float_equal(dotd(q, q, d), dotd(q0, q0, d), 1e-5);
        // q at 13, k at 7 vs q at 11, k at 5: same offset, same score
        memcpy(k, k0, d * sizeof(float));
        rot(&r, 7, k);
        double s1 = dotd(q, k, d);
        memcpy(q, q0, d * sizeof(float));
        memcpy(k, k0, d * sizeof(float));
        rot(&r, 11, q);
        rot(&r, 5, k);
        assert_float_equal(dotd(q, k, d), s1, 1e-5);
        // a different offset scores differently (the rotation does something)
        memcpy(q, q0, d * sizeof(float));
        memcpy(k, k0, d * sizeof(float));
        rot(&r, 11, q);
        rot(&r, 2, k);
        assert_true(fabs(dotd(q, k, d) - s1) > 1e-3);
    }
}

static void test_interleaved_is_hf_layout(void **state)
{
    ep_model_cfg c;
    load("tiny-deepseek-v2", &c);
    ep_rope inter;
    assert_int_equal(ep_rope_init(&inter, &c), EP_OK);
    ep_rope half = inter;
    half.interleaved = false;
    int d = inter.dim, h = d / 2;
    float x[EP_ROPE_MAX_DIM], px[EP_ROPE_MAX_DIM], a[EP_ROPE_MAX_DIM];
    fill(x, d, 99);
    for (int i = 0; i < h; i++) { // the HF view(d/2, 2).transpose: evens then odds
        px[i] = x[2 * i];
        px[h + i] = x[2 * i + 1];
    }
    rot(&inter, 37, x);
    rot(&half, 37, px);
    for (int i = 0; i < h; i++)
        a[i] = x[2 * i], a[h + i] = x[2 * i + 1];
    for (int i = 0; i < d; i++)
        assert_float_equal(a[i], px[i], 1e-6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mla_scale_facts),     cmocka_unit_test(test_yarn_table),
        cmocka_unit_test(test_qwen3_yarn_table),    cmocka_unit_test(test_plain_table),
        cmocka_unit_test(test_rotation_properties), cmocka_unit_test(test_interleaved_is_hf_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
