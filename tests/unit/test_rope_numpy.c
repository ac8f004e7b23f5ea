// epserve's rotary tables against an independent computation: for several
// config.json files (Qwen3-30B-A3B with the README's YaRN to 131072 tokens,
// Qwen3 YaRN with every optional key, plain Qwen3, DeepSeek-V2-Lite's YaRN,
// with and without mscale_all_dim), tests/numpy/rope_ref.py computes
// inv_freq, the attention factor and cos / sin in float64 from transformers'
// and DeepSeek's formulas; epserve loads the same file (ep_model_cfg_load),
// builds ep_rope and its tables at positions up to and past
// original_max_position_embeddings. Tolerances are fp32's: inv_freq and the
// factor to 1e-6 relative; cos / sin to the error of the fp32 angle
// (pos * |inv_freq - ref| + |angle| 2^-23) + 1e-6. The comparison can fail:
// plain RoPE against the YaRN reference does. Exit 77 (skip) without a
// /usr/bin/python3 (or python3) that has numpy.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "model/rope.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];
static const char *python;

static const char *POSITIONS = "0,1,2,17,1000,4095,4096,32767,32768,40000,100000,131071,163839";

// Qwen3-30B-A3B's config.json with rope_scaling and max_position_embeddings
// substituted (%s, %d).
static const char *QWEN_FMT =
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\",\n"
    " \"hidden_size\": 2048, \"num_hidden_layers\": 48, \"num_attention_heads\": 32,\n"
    " \"num_key_value_heads\": 4, \"head_dim\": 128, \"intermediate_size\": 6144,\n"
    " \"moe_intermediate_size\": 768, \"num_experts\": 128, \"num_experts_per_tok\": 8,\n"
    " \"norm_topk_prob\": true, \"decoder_sparse_step\": 1, \"mlp_only_layers\": [],\n"
    " \"max_position_embeddings\": %d, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0,\n"
    " \"rope_scaling\": %s, \"hidden_act\": \"silu\", \"tie_word_embeddings\": false,\n"
    " \"vocab_size\": 151936}\n";

// DeepSeek-V2-Lite's config.json with rope_scaling substituted.
static const char *DS_FMT =
    "{\"architectures\": [\"DeepseekV2ForCausalLM\"], \"model_type\": \"deepseek_v2\",\n"
    " \"hidden_size\": 2048, \"num_hidden_layers\": 27, \"num_attention_heads\": 16,\n"
    " \"num_key_value_heads\": 16, \"intermediate_size\": 10944, \"moe_intermediate_size\": 1408,\n"
    " \"n_routed_experts\": 64, \"n_shared_experts\": 2, \"num_experts_per_tok\": 6,\n"
    " \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"n_group\": 1, \"topk_group\": 1,\n"
    " \"topk_method\": \"greedy\", \"norm_topk_prob\": false, \"routed_scaling_factor\": 1.0,\n"
    " \"scoring_func\": \"softmax\", \"q_lora_rank\": null, \"kv_lora_rank\": 512,\n"
    " \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64, \"v_head_dim\": 128,\n"
    " \"max_position_embeddings\": 163840, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000,\n"
    " \"rope_scaling\": %s, \"hidden_act\": \"silu\", \"tie_word_embeddings\": false,\n"
    " \"vocab_size\": 102400}\n";

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ep_test_rope_numpy_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

// Writes tmpdir/<sub>/config.json; returns the directory (static buffer).
static const char *write_config(const char *sub, const char *text)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, sub);
    mkdir(dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return dir;
}

// The reference of dir/config.json at POSITIONS (parsed rope_ref.py output).
static json_t *reference(const char *dir)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "'%s' '%s/tests/numpy/rope_ref.py' --config '%s/config.json' "
             "--positions %s",
             python, EP_SOURCE_DIR, dir, POSITIONS);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    json_error_t je;
    json_t *j = json_loadf(p, 0, &je);
    int rc = pclose(p);
    if (!j || rc != 0) fail_msg("%s: exit %d, %s", cmd, rc, j ? "" : je.text);
    return j;
}

static double num(json_t *a, size_t i)
{
    return json_number_value(json_array_get(a, i));
}

// Largest error of r's tables over the reference, in units of the tolerance
// (<= 1 passes); also checks the scalars.
static double compare(const ep_rope *r, json_t *ref, const char *what)
{
    const int half = r->dim / 2;
    assert_int_equal(r->dim, json_integer_value(json_object_get(ref, "dim")));
    assert_int_equal(r->interleaved, json_is_true(json_object_get(ref, "interleaved")));
    double att = json_number_value(json_object_get(ref, "attention_factor"));
    json_t *inv = json_object_get(ref, "inv_freq"), *pos = json_object_get(ref, "positions");
    json_t *cos_r = json_object_get(ref, "cos"), *sin_r = json_object_get(ref, "sin");
    double worst = 0;
    int shown = 0; // the first few mismatches are printed
    double e = fabs(r->cs_scale - att) / (1e-6 * att);
    if (e > 1 && shown++ < 3)
        fprintf(stderr, "%s: attention factor %.9g, reference %.9g\n", what, r->cs_scale, att);
    worst = fmax(worst, e);
    for (int i = 0; i < half; i++) {
        double want = num(inv, (size_t)i);
        e = fabs(r->inv_freq[i] - want) / (1e-6 * want);
        if (e > 1 && shown++ < 3)
            fprintf(stderr, "%s: inv_freq[%d] %.9g, reference %.9g\n", what, i, r->inv_freq[i],
                    want);
        worst = fmax(worst, e);
    }
    float cs[EP_ROPE_MAX_DIM];
    for (size_t k = 0; k < json_array_size(pos); k++) {
        int p = (int)json_integer_value(json_array_get(pos, k));
        ep_rope_table(r, p, cs);
        json_t *cr = json_array_get(cos_r, k), *sr = json_array_get(sin_r, k);
        for (int i = 0; i < half; i++) {
            double want_inv = num(inv, (size_t)i);
            double tol = att * ((double)p * fabs(r->inv_freq[i] - want_inv) +
                                (double)p * want_inv * 0x1p-23 + 1e-6);
            double ec = fabs(cs[i] - num(cr, (size_t)i)) / tol;
            double es = fabs(cs[half + i] - num(sr, (size_t)i)) / tol;
            worst = fmax(worst, fmax(ec, es));
        }
    }
    return worst;
}

static ep_rope rope_of(const char *dir)
{
    ep_model_cfg c;
    ep_status st = ep_model_cfg_load(dir, &c);
    if (st) fail_msg("%s: %s", dir, ep_last_error());
    ep_rope r;
    assert_int_equal(ep_rope_init(&r, &c), EP_OK);
    return r;
}

static void check(const char *sub, const char *text)
{
    const char *dir = write_config(sub, text);
    ep_rope r = rope_of(dir);
    json_t *ref = reference(dir);
    double worst = compare(&r, ref, sub);
    printf("%-28s dim %3d  attention factor %.6f  worst error / tolerance %.3g\n", sub, r.dim,
           r.cs_scale, worst);
    json_decref(ref);
    assert_true(worst <= 1.0);
}

static void test_qwen3(void **state)
{
    (void)state;
    char buf[4096];
    // Qwen3's README: YaRN to 131072 tokens.
    snprintf(buf, sizeof buf, QWEN_FMT, 131072,
             "{\"rope_type\": \"yarn\", \"factor\": 4.0, "
             "\"original_max_position_embeddings\": 32768}");
    check("qwen3-readme-yarn", buf);
    // Every optional key: beta_fast / beta_slow moved, the ramp not truncated,
    // the attention factor from mscale / mscale_all_dim.
    snprintf(buf, sizeof buf, QWEN_FMT, 65536,
             "{\"type\": \"yarn\", \"factor\": 2.5, \"original_max_position_embeddings\": 8192, "
             "\"beta_fast\": 16, \"beta_slow\": 2, \"truncate\": false, \"mscale\": 0.9, "
             "\"mscale_all_dim\": 0.7}");
    check("qwen3-yarn-all-keys", buf);
    // attention_factor given; beta_fast 0 reads as 32 (transformers' `or`).
    snprintf(buf, sizeof buf, QWEN_FMT, 32768,
             "{\"rope_type\": \"yarn\", \"factor\": 8, \"original_max_position_embeddings\": 4096, "
             "\"attention_factor\": 1.3, \"beta_fast\": 0, \"mscale\": 1.0}");
    check("qwen3-yarn-attention-factor", buf);
    snprintf(buf, sizeof buf, QWEN_FMT, 40960, "null");
    check("qwen3-plain", buf);
}

static void test_deepseek(void **state)
{
    (void)state;
    char buf[4096];
    snprintf(buf, sizeof buf, DS_FMT,
             "{\"type\": \"yarn\", \"factor\": 40, \"original_max_position_embeddings\": 4096, "
             "\"beta_fast\": 32, \"beta_slow\": 1, \"mscale\": 0.707, \"mscale_all_dim\": 0.707}");
    check("deepseek-v2-lite", buf);
    snprintf(buf, sizeof buf, DS_FMT,
             "{\"type\": \"yarn\", \"factor\": 40, \"original_max_position_embeddings\": 4096, "
             "\"mscale\": 0.707}");
    check("deepseek-no-mscale-all-dim", buf);
}

// The comparison is not vacuous: plain RoPE is far from the YaRN reference,
// and so is YaRN with DeepSeek's attention factor rule in place of Qwen3's.
static void test_can_fail(void **state)
{
    (void)state;
    char buf[4096];
    snprintf(buf, sizeof buf, QWEN_FMT, 131072,
             "{\"rope_type\": \"yarn\", \"factor\": 4.0, "
             "\"original_max_position_embeddings\": 32768, \"mscale_all_dim\": 0.5}");
    const char *dir = write_config("qwen3-neg", buf);
    json_t *ref = reference(dir);
    ep_rope r = rope_of(dir);
    assert_true(compare(&r, ref, "qwen3-neg (expected)") <= 1.0);
    // DeepSeek's rule would read mscale as 1 when absent: ratio != 0.1 ln 4 + 1.
    ep_rope wrong = r;
    wrong.cs_scale = (float)(ep_yarn_mscale(4.0, 1.0) / ep_yarn_mscale(4.0, 0.5));
    double e1 = compare(&wrong, ref, "qwen3-neg with DeepSeek's factor (must fail)");
    snprintf(buf, sizeof buf, QWEN_FMT, 131072, "null");
    ep_rope plain = rope_of(write_config("qwen3-neg-plain", buf));
    double e2 = compare(&plain, ref, "plain RoPE against YaRN (must fail)");
    printf("must fail: DeepSeek's factor %.3g, plain RoPE %.3g (errors / tolerance)\n", e1, e2);
    assert_true(e1 > 10.0);
    assert_true(e2 > 10.0);
    json_decref(ref);
}

int main(void)
{
    static const char *candidates[] = {"/usr/bin/python3", "python3"};
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates && !python; i++) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "%s -c 'import numpy' > /dev/null 2>&1", candidates[i]);
        if (system(cmd) == 0) python = candidates[i];
    }
    if (!python) {
        printf("SKIP: no python3 with numpy (Debian: apt-get install python3-numpy)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_deepseek),
        cmocka_unit_test(test_can_fail),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
