// Model configs: the six presets load with the published numbers, bad YAML
// and bad config.json are rejected with messages naming file, key and the
// value found, config.json round-trips, and the HF tensor layout is right
// (names, shapes, and total parameter counts of the real models).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/model_cfg.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// ---- helpers -----------------------------------------------------------------

static char tmpdir[256];

static int setup_tmp(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ep_test_model_cfg_XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    return 0;
}

static int teardown_tmp(void **state)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

// Writes text to tmpdir/name; returns the path (static buffer per call slot).
static const char *write_tmp(const char *name, const char *text)
{
    static char paths[8][1024];
    static int slot;
    char *p = paths[slot++ % 8];
    snprintf(p, sizeof paths[0], "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

// Returns a malloc'd copy of base with the first occurrence of `from` replaced by `to`.
static char *subst(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);
    assert_non_null(at);
    size_t n = strlen(base) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(at - base), base, to, at + strlen(from));
    return out;
}

// Asserts that the last error message contains every NULL-terminated needle.
static void expect_msg(const char *first, ...)
{
    const char *msg = ep_last_error();
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *)) {
        if (!strstr(msg, s)) {
            fprintf(stderr, "message: %s\nmissing: %s\n", msg, s);
            fail();
        }
    }
    va_end(ap);
}

static const char *QWEN_YAML = "name: t-qwen\n"
                               "family: qwen3_moe\n"
                               "hidden_size: 64\n"
                               "num_hidden_layers: 3\n"
                               "num_attention_heads: 4\n"
                               "num_key_value_heads: 2\n"
                               "head_dim: 16\n"
                               "intermediate_size: 96\n"
                               "max_position_embeddings: 512\n"
                               "vocab_size: 101\n"
                               "rms_norm_eps: 1e-6\n"
                               "rope_theta: 1000000\n"
                               "qk_norm: true\n"
                               "tie_word_embeddings: false\n"
                               "seed: 7\n"
                               "moe:\n"
                               "  num_experts: 12\n"
                               "  num_experts_per_tok: 4\n"
                               "  moe_intermediate_size: 32\n"
                               "  norm_topk_prob: true\n";

static const char *DS_YAML = "family: deepseek_v2\n"
                             "hidden_size: 64\n"
                             "num_hidden_layers: 3\n"
                             "num_attention_heads: 4\n"
                             "num_key_value_heads: 4\n"
                             "intermediate_size: 96\n"
                             "max_position_embeddings: 512\n"
                             "vocab_size: 101\n"
                             "rms_norm_eps: 1e-6\n"
                             "rope_theta: 10000\n"
                             "qk_norm: false\n"
                             "tie_word_embeddings: true\n"
                             "checkpoint: ckpt/here\n"
                             "moe:\n"
                             "  num_experts: 15\n"
                             "  num_experts_per_tok: 4\n"
                             "  moe_intermediate_size: 32\n"
                             "  num_shared_experts: 1\n"
                             "  first_k_dense_replace: 1\n"
                             "  topk_method: group_limited_greedy\n"
                             "  n_group: 5\n"
                             "  topk_group: 2\n"
                             "  norm_topk_prob: false\n"
                             "  routed_scaling_factor: 2.5\n"
                             "mla:\n"
                             "  q_lora_rank: 0\n"
                             "  kv_lora_rank: 16\n"
                             "  qk_nope_head_dim: 8\n"
                             "  qk_rope_head_dim: 4\n"
                             "  v_head_dim: 8\n";

// ---- presets -----------------------------------------------------------------

static void check_common(const ep_model_cfg *c, const char *name, ep_arch arch, int hidden,
                         int layers, int heads, int kv, int inter, int max_pos, int vocab)
{
    assert_string_equal(c->name, name);
    assert_int_equal(c->arch, arch);
    assert_int_equal(c->hidden, hidden);
    assert_int_equal(c->n_layers, layers);
    assert_int_equal(c->n_heads, heads);
    assert_int_equal(c->n_kv_heads, kv);
    assert_int_equal(c->intermediate, inter);
    assert_int_equal(c->max_pos, max_pos);
    assert_int_equal(c->vocab, vocab);
    assert_true(c->rms_eps == 1e-6f);
    assert_false(c->tie_embeddings);
}

static void check_moe(const ep_model_cfg *c, int E, int k, int mi, int shared, int dense,
                      ep_topk_method m, int ng, int tg, bool norm, float scale)
{
    assert_int_equal(c->n_experts, E);
    assert_int_equal(c->k_base, k);
    assert_int_equal(c->moe_inter, mi);
    assert_int_equal(c->n_shared, shared);
    assert_int_equal(c->first_k_dense, dense);
    assert_int_equal(c->topk_method, m);
    assert_int_equal(c->n_group, ng);
    assert_int_equal(c->topk_group, tg);
    assert_int_equal(c->norm_topk_prob, norm);
    assert_true(c->routed_scaling_factor == scale);
}

static void check_mla(const ep_model_cfg *c, int ql, int kvl, int nope, int rope, int v)
{
    assert_int_equal(c->q_lora_rank, ql);
    assert_int_equal(c->kv_lora_rank, kvl);
    assert_int_equal(c->qk_nope_dim, nope);
    assert_int_equal(c->qk_rope_dim, rope);
    assert_int_equal(c->v_head_dim, v);
}

static void check_yarn(const ep_model_cfg *c, float factor, int orig, float ms, float msa)
{
    assert_true(c->has_yarn);
    assert_true(c->yarn_factor == factor);
    assert_int_equal(c->yarn_orig_max_pos, orig);
    assert_true(c->yarn_beta_fast == 32.0f);
    assert_true(c->yarn_beta_slow == 1.0f);
    assert_true(c->yarn_mscale == ms);
    assert_true(c->yarn_mscale_all_dim == msa);
}

static ep_model_cfg load_ok(const char *spec)
{
    ep_model_cfg c;
    ep_status st = ep_model_cfg_load(spec, &c);
    if (st != EP_OK) fprintf(stderr, "%s: %s\n", spec, ep_last_error());
    assert_int_equal(st, EP_OK);
    return c;
}

static void test_preset_qwen3_235b(void **state)
{
    ep_model_cfg c = load_ok("qwen3-235b-a22b");
    check_common(&c, "qwen3-235b-a22b", EP_ARCH_QWEN3_MOE, 4096, 94, 64, 4, 12288, 40960, 151936);
    assert_int_equal(c.head_dim, 128);
    assert_true(c.rope_theta == 1e6f);
    assert_true(c.qk_norm);
    assert_false(c.has_yarn);
    assert_int_equal(c.seed, 0);
    check_moe(&c, 128, 8, 1536, 0, 0, EP_TOPK_GREEDY, 1, 1, true, 1.0f);
    check_mla(&c, 0, 0, 0, 0, 0);
    assert_int_equal(ep_model_n_moe_layers(&c), 94);
}

static void test_preset_qwen3_30b(void **state)
{
    ep_model_cfg c = load_ok("qwen3-30b-a3b");
    check_common(&c, "qwen3-30b-a3b", EP_ARCH_QWEN3_MOE, 2048, 48, 32, 4, 6144, 40960, 151936);
    assert_int_equal(c.head_dim, 128);
    assert_true(c.rope_theta == 1e6f);
    assert_true(c.qk_norm);
    assert_false(c.has_yarn);
    check_moe(&c, 128, 8, 768, 0, 0, EP_TOPK_GREEDY, 1, 1, true, 1.0f);
    assert_int_equal(ep_model_n_moe_layers(&c), 48);
}

static void test_preset_deepseek_v25(void **state)
{
    ep_model_cfg c = load_ok("deepseek-v2.5");
    check_common(&c, "deepseek-v2.5", EP_ARCH_DEEPSEEK_V2, 5120, 60, 128, 128, 12288, 163840,
                 102400);
    assert_true(c.rope_theta == 10000.0f);
    assert_false(c.qk_norm);
    check_moe(&c, 160, 6, 1536, 2, 1, EP_TOPK_GROUP_LIMITED, 8, 3, false, 16.0f);
    check_mla(&c, 1536, 512, 128, 64, 128);
    check_yarn(&c, 40.0f, 4096, 1.0f, 1.0f);
    assert_int_equal(ep_model_n_moe_layers(&c), 59);
}

static void test_preset_deepseek_lite(void **state)
{
    ep_model_cfg c = load_ok("deepseek-v2-lite");
    check_common(&c, "deepseek-v2-lite", EP_ARCH_DEEPSEEK_V2, 2048, 27, 16, 16, 10944, 163840,
                 102400);
    assert_true(c.rope_theta == 10000.0f);
    check_moe(&c, 64, 6, 1408, 2, 1, EP_TOPK_GREEDY, 1, 1, false, 1.0f);
    check_mla(&c, 0, 512, 128, 64, 128);
    check_yarn(&c, 40.0f, 4096, 0.707f, 0.707f);
    assert_int_equal(ep_model_n_moe_layers(&c), 26);
}

static void test_preset_tiny(void **state)
{
    ep_model_cfg c = load_ok("tiny-qwen3-moe");
    check_common(&c, "tiny-qwen3-moe", EP_ARCH_QWEN3_MOE, 256, 4, 8, 2, 512, 4096, 1024);
    assert_int_equal(c.head_dim, 32);
    assert_true(c.rope_theta == 1e6f);
    assert_true(c.qk_norm);
    assert_int_equal(c.seed, 1234);
    assert_string_equal(c.checkpoint, ""); // synthetic weights
    check_moe(&c, 64, 8, 128, 0, 0, EP_TOPK_GREEDY, 1, 1, true, 1.0f);

    ep_model_cfg d = load_ok("tiny-deepseek-v2");
    check_common(&d, "tiny-deepseek-v2", EP_ARCH_DEEPSEEK_V2, 256, 4, 8, 8, 512, 4096, 1024);
    assert_int_equal(d.seed, 4321);
    assert_false(d.qk_norm);
    check_moe(&d, 64, 6, 128, 2, 1, EP_TOPK_GROUP_LIMITED, 4, 2, false, 16.0f);
    check_mla(&d, 64, 64, 32, 16, 32);
    check_yarn(&d, 4.0f, 1024, 1.0f, 1.0f);
    assert_int_equal(ep_model_n_moe_layers(&d), 3);
}

static void test_preset_lookup(void **state)
{
    ep_model_cfg c;
    // A preset path given as a file works too, and EP_CONFIG_DIR comes first.
    c = load_ok(EP_SOURCE_DIR "/configs/models/tiny-qwen3-moe.yaml");
    assert_string_equal(c.name, "tiny-qwen3-moe");
    char *y = subst(QWEN_YAML, "name: t-qwen\n", "name: tiny-qwen3-moe\n");
    write_tmp("tiny-qwen3-moe.yaml", y);
    free(y);
    setenv("EP_CONFIG_DIR", tmpdir, 1);
    c = load_ok("tiny-qwen3-moe");
    assert_int_equal(c.hidden, 64); // the override, not the shipped preset (256)
    unsetenv("EP_CONFIG_DIR");
    c = load_ok("tiny-qwen3-moe");
    assert_int_equal(c.hidden, 256);

    assert_int_equal(ep_model_cfg_load("no-such-model", &c), EP_ERR_ARG);
    expect_msg("no-such-model", "configs/models/no-such-model.yaml", "tiny-deepseek-v2", NULL);
    assert_int_equal(ep_model_cfg_load("/nonexistent/dir/x", &c), EP_ERR_IO);
    expect_msg("/nonexistent/dir/x", NULL);
}

// ---- good YAML ---------------------------------------------------------------

static void test_yaml_good(void **state)
{
    ep_model_cfg c;
    const char *p = write_tmp("q.yaml", QWEN_YAML);
    assert_int_equal(ep_model_cfg_from_yaml(p, &c), EP_OK);
    assert_string_equal(c.name, "t-qwen");
    assert_string_equal(c.source, p);
    assert_int_equal(c.vocab, 101);
    assert_int_equal(c.seed, 7);
    // Optional MoE keys take the HF defaults.
    check_moe(&c, 12, 4, 32, 0, 0, EP_TOPK_GREEDY, 1, 1, true, 1.0f);

    p = write_tmp("ds-small.yaml", DS_YAML);
    assert_int_equal(ep_model_cfg_from_yaml(p, &c), EP_OK);
    assert_string_equal(c.name, "ds-small"); // no name key: the file's stem
    check_moe(&c, 15, 4, 32, 1, 1, EP_TOPK_GROUP_LIMITED, 5, 2, false, 2.5f);
    check_mla(&c, 0, 16, 8, 4, 8);
    assert_false(c.has_yarn);
    assert_true(c.tie_embeddings);
    char want[512];
    snprintf(want, sizeof want, "%s/ckpt/here", tmpdir); // relative to the YAML's directory
    assert_string_equal(c.checkpoint, want);

    char *y = subst(QWEN_YAML, "seed: 7", "seed: 18446744073709551615");
    p = write_tmp("q2.yaml", y);
    free(y);
    assert_int_equal(ep_model_cfg_from_yaml(p, &c), EP_OK);
    assert_true(c.seed == UINT64_MAX);
}

// ---- bad YAML ----------------------------------------------------------------

// Writes base with one substitution, expects status st and every needle
// (the file path is always checked).
static void yaml_bad(const char *base, const char *from, const char *to, ep_status st,
                     const char *n1, const char *n2)
{
    char *y = subst(base, from, to);
    const char *p = write_tmp("bad.yaml", y);
    free(y);
    ep_model_cfg c;
    ep_status got = ep_model_cfg_from_yaml(p, &c);
    if (got != st) fprintf(stderr, "status %d, message: %s\n", got, ep_last_error());
    assert_int_equal(got, st);
    expect_msg(p, n1, n2, NULL);
}

static void test_yaml_unknown_missing(void **state)
{
    yaml_bad(QWEN_YAML, "  num_experts: 12", "  num_expert: 12", EP_ERR_CONFIG,
             "unknown key 'moe.num_expert'", "num_experts_per_tok");
    yaml_bad(QWEN_YAML, "vocab_size: 101\n", "vocab: 101\n", EP_ERR_CONFIG, "unknown key 'vocab'",
             ":10:");
    yaml_bad(QWEN_YAML, "hidden_size: 64\n", "", EP_ERR_CONFIG,
             "missing required key 'hidden_size'", NULL);
    yaml_bad(QWEN_YAML, "  norm_topk_prob: true\n", "", EP_ERR_CONFIG,
             "missing required key 'moe.norm_topk_prob'", NULL);
    yaml_bad(QWEN_YAML, "family: qwen3_moe\n", "", EP_ERR_CONFIG, "missing required key 'family'",
             NULL);
    yaml_bad(DS_YAML, "mla:\n", "mla_x:\n", EP_ERR_CONFIG, "unknown key 'mla_x'", NULL);
    yaml_bad(DS_YAML, "hidden_size: 64\n", "hidden_size: 64\nhead_dim: 16\n", EP_ERR_CONFIG,
             "'head_dim' applies only to family qwen3_moe", NULL);
    yaml_bad(QWEN_YAML, "hidden_size: 64\n", "hidden_size: 64\nhidden_size: 65\n", EP_ERR_CONFIG,
             "'hidden_size' given twice", "line 3");
    yaml_bad(QWEN_YAML, "family: qwen3_moe", "family: llama", EP_ERR_CONFIG, "'family'", "'llama'");
    // mla is required for deepseek_v2
    char *noml = subst(DS_YAML,
                       "mla:\n  q_lora_rank: 0\n  kv_lora_rank: 16\n  qk_nope_head_dim: 8\n"
                       "  qk_rope_head_dim: 4\n  v_head_dim: 8\n",
                       "");
    yaml_bad(noml, "family", "family", EP_ERR_CONFIG, "missing required key 'mla'", NULL);
    free(noml);
}

static void test_yaml_wrong_types(void **state)
{
    yaml_bad(QWEN_YAML, "hidden_size: 64", "hidden_size: abc", EP_ERR_CONFIG,
             "key 'hidden_size': expected an integer", "found 'abc'");
    yaml_bad(QWEN_YAML, "hidden_size: 64", "hidden_size: 64.5", EP_ERR_CONFIG,
             "expected an integer", "found '64.5'");
    yaml_bad(QWEN_YAML, "hidden_size: 64", "hidden_size: [64, 65]", EP_ERR_CONFIG,
             "key 'hidden_size'", "found a sequence");
    yaml_bad(QWEN_YAML, "hidden_size: 64", "hidden_size: \"64\"", EP_ERR_CONFIG,
             "key 'hidden_size'", "quoted string '64'");
    yaml_bad(QWEN_YAML, "  num_experts_per_tok: 4", "  num_experts_per_tok: four", EP_ERR_CONFIG,
             "key 'moe.num_experts_per_tok'", "found 'four'");
    yaml_bad(QWEN_YAML, "qk_norm: true", "qk_norm: 3", EP_ERR_CONFIG, "key 'qk_norm'", "found '3'");
    yaml_bad(QWEN_YAML, "rms_norm_eps: 1e-6", "rms_norm_eps: tiny", EP_ERR_CONFIG,
             "key 'rms_norm_eps'", "found 'tiny'");
    yaml_bad(QWEN_YAML, "rms_norm_eps: 1e-6", "rms_norm_eps: .nan", EP_ERR_CONFIG,
             "key 'rms_norm_eps'", "found '.nan'");
    yaml_bad(QWEN_YAML, "seed: 7", "seed: -7", EP_ERR_CONFIG, "key 'seed'", "found '-7'");
    yaml_bad(QWEN_YAML, "hidden_size: 64", "hidden_size: 99999999999", EP_ERR_CONFIG,
             "key 'hidden_size'", "99999999999");
    yaml_bad(QWEN_YAML, "moe:\n", "moe: 5\nx_moe:\n", EP_ERR_CONFIG, "key 'moe'", "found '5'");
    yaml_bad(DS_YAML, "topk_method: group_limited_greedy", "topk_method: best", EP_ERR_CONFIG,
             "key 'moe.topk_method'", "found 'best'");
    yaml_bad(QWEN_YAML, "hidden_size: 64", "hidden_size:", EP_ERR_CONFIG, "key 'hidden_size'",
             "found null");
}

static void test_yaml_inconsistent(void **state)
{
    yaml_bad(QWEN_YAML, "  num_experts_per_tok: 4", "  num_experts_per_tok: 13", EP_ERR_CONFIG,
             "moe.num_experts_per_tok", "found 13");
    yaml_bad(DS_YAML, "  n_group: 5", "  n_group: 4", EP_ERR_CONFIG, "moe.n_group", "found 4");
    yaml_bad(DS_YAML, "  topk_group: 2", "  topk_group: 6", EP_ERR_CONFIG, "moe.topk_group",
             "found 6");
    // 2 groups of 3 experts reach only 6 < k = 7
    char *y = subst(DS_YAML, "  num_experts_per_tok: 4", "  num_experts_per_tok: 7");
    yaml_bad(y, "  topk_group: 2", "  topk_group: 2", EP_ERR_CONFIG, "moe.num_experts_per_tok",
             "found 7");
    free(y);
    yaml_bad(DS_YAML, "  n_group: 5\n  topk_group: 2", "  n_group: 1\n  topk_group: 1",
             EP_ERR_CONFIG, "moe.n_group", "found 1");
    yaml_bad(QWEN_YAML, "num_key_value_heads: 2", "num_key_value_heads: 3", EP_ERR_CONFIG,
             "num_key_value_heads", "found 3");
    yaml_bad(DS_YAML, "  first_k_dense_replace: 1", "  first_k_dense_replace: 3", EP_ERR_CONFIG,
             "moe.first_k_dense_replace", "found 3");
    yaml_bad(DS_YAML, "  routed_scaling_factor: 2.5", "  routed_scaling_factor: -1", EP_ERR_CONFIG,
             "moe.routed_scaling_factor", "found -1");
    yaml_bad(QWEN_YAML, "vocab_size: 101", "vocab_size: 0", EP_ERR_CONFIG, "vocab_size", "found 0");
    yaml_bad(DS_YAML, "qk_norm: false", "qk_norm: true", EP_ERR_CONFIG, "qk_norm", "found true");
    yaml_bad(DS_YAML, "num_key_value_heads: 4", "num_key_value_heads: 2", EP_ERR_CONFIG,
             "num_key_value_heads", "found 2");
    yaml_bad(QWEN_YAML, "  norm_topk_prob: true\n",
             "  norm_topk_prob: true\n  num_shared_experts: 1\n", EP_ERR_CONFIG,
             "moe.num_shared_experts", "found 1");
    yaml_bad(DS_YAML, "  qk_rope_head_dim: 4", "  qk_rope_head_dim: 5", EP_ERR_CONFIG,
             "mla.qk_rope_head_dim", "found 5");
    yaml_bad(DS_YAML, "  v_head_dim: 8\n",
             "  v_head_dim: 8\nrope_scaling:\n  type: linear\n  factor: 2\n"
             "  original_max_position_embeddings: 64\n",
             EP_ERR_CONFIG, "rope_scaling.type", "found 'linear'");
    yaml_bad(DS_YAML, "  v_head_dim: 8\n",
             "  v_head_dim: 8\nrope_scaling:\n  type: yarn\n  factor: 0.5\n"
             "  original_max_position_embeddings: 64\n",
             EP_ERR_CONFIG, "rope_scaling.factor", "found 0.5");
}

static void test_yaml_files(void **state)
{
    ep_model_cfg c;
    const char *p = write_tmp("syntax.yaml", "family: qwen3_moe\nmoe: [1, 2\nhidden_size: 5\n");
    assert_int_equal(ep_model_cfg_from_yaml(p, &c), EP_ERR_FORMAT);
    expect_msg(p, "YAML syntax error", NULL);

    p = write_tmp("tabs.yaml", "family: qwen3_moe\n  hidden_size: 5\n bad: : :\n");
    assert_int_equal(ep_model_cfg_from_yaml(p, &c), EP_ERR_FORMAT);
    expect_msg(p, "YAML syntax error", ":2:", NULL);

    p = write_tmp("empty.yaml", "");
    assert_int_equal(ep_model_cfg_from_yaml(p, &c), EP_ERR_CONFIG);
    expect_msg(p, "empty", NULL);

    p = write_tmp("list.yaml", "- 1\n- 2\n");
    assert_int_equal(ep_model_cfg_from_yaml(p, &c), EP_ERR_CONFIG);
    expect_msg(p, "expected a mapping", "a sequence", NULL);

    p = write_tmp("two.yaml", "family: qwen3_moe\n---\nfamily: deepseek_v2\n");
    assert_int_equal(ep_model_cfg_from_yaml(p, &c), EP_ERR_FORMAT);
    expect_msg(p, "second", NULL);

    char missing[512];
    snprintf(missing, sizeof missing, "%s/does-not-exist.yaml", tmpdir);
    assert_int_equal(ep_model_cfg_from_yaml(missing, &c), EP_ERR_IO);
    expect_msg(missing, "No such file", NULL);
    assert_int_equal(ep_model_cfg_load(missing, &c), EP_ERR_IO);
    expect_msg(missing, NULL);
}

// ---- config.json ---------------------------------------------------------------

static const char *QWEN_JSON = "{\n"
                               "  \"architectures\": [\"Qwen3MoeForCausalLM\"],\n"
                               "  \"attention_bias\": false,\n"
                               "  \"attention_dropout\": 0.0,\n"
                               "  \"bos_token_id\": 151643,\n"
                               "  \"decoder_sparse_step\": 1,\n"
                               "  \"eos_token_id\": 151645,\n"
                               "  \"head_dim\": 128,\n"
                               "  \"hidden_act\": \"silu\",\n"
                               "  \"hidden_size\": 2048,\n"
                               "  \"initializer_range\": 0.02,\n"
                               "  \"intermediate_size\": 6144,\n"
                               "  \"max_position_embeddings\": 40960,\n"
                               "  \"max_window_layers\": 48,\n"
                               "  \"mlp_only_layers\": [],\n"
                               "  \"model_type\": \"qwen3_moe\",\n"
                               "  \"moe_intermediate_size\": 768,\n"
                               "  \"norm_topk_prob\": true,\n"
                               "  \"num_attention_heads\": 32,\n"
                               "  \"num_experts\": 128,\n"
                               "  \"num_experts_per_tok\": 8,\n"
                               "  \"num_hidden_layers\": 48,\n"
                               "  \"num_key_value_heads\": 4,\n"
                               "  \"output_router_logits\": false,\n"
                               "  \"rms_norm_eps\": 1e-06,\n"
                               "  \"rope_scaling\": null,\n"
                               "  \"rope_theta\": 1000000.0,\n"
                               "  \"router_aux_loss_coef\": 0.001,\n"
                               "  \"sliding_window\": null,\n"
                               "  \"tie_word_embeddings\": false,\n"
                               "  \"torch_dtype\": \"bfloat16\",\n"
                               "  \"transformers_version\": \"4.51.0\",\n"
                               "  \"use_cache\": true,\n"
                               "  \"use_sliding_window\": false,\n"
                               "  \"vocab_size\": 151936\n"
                               "}\n";

static const char *DS_JSON =
    "{\n"
    "  \"architectures\": [\"DeepseekV2ForCausalLM\"],\n"
    "  \"auto_map\": {\"AutoConfig\": \"configuration_deepseek.DeepseekV2Config\"},\n"
    "  \"aux_loss_alpha\": 0.001,\n"
    "  \"bos_token_id\": 100000,\n"
    "  \"first_k_dense_replace\": 1,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 2048,\n"
    "  \"intermediate_size\": 10944,\n"
    "  \"kv_lora_rank\": 512,\n"
    "  \"max_position_embeddings\": 163840,\n"
    "  \"model_type\": \"deepseek_v2\",\n"
    "  \"moe_intermediate_size\": 1408,\n"
    "  \"moe_layer_freq\": 1,\n"
    "  \"n_group\": 1,\n"
    "  \"n_routed_experts\": 64,\n"
    "  \"n_shared_experts\": 2,\n"
    "  \"norm_topk_prob\": false,\n"
    "  \"num_attention_heads\": 16,\n"
    "  \"num_experts_per_tok\": 6,\n"
    "  \"num_hidden_layers\": 27,\n"
    "  \"num_key_value_heads\": 16,\n"
    "  \"pretraining_tp\": 1,\n"
    "  \"q_lora_rank\": null,\n"
    "  \"qk_nope_head_dim\": 128,\n"
    "  \"qk_rope_head_dim\": 64,\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40,\n"
    "    \"mscale\": 0.707, \"mscale_all_dim\": 0.707,\n"
    "    \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"},\n"
    "  \"rope_theta\": 10000,\n"
    "  \"routed_scaling_factor\": 1.0,\n"
    "  \"scoring_func\": \"softmax\",\n"
    "  \"seq_aux\": true,\n"
    "  \"tie_word_embeddings\": false,\n"
    "  \"topk_group\": 1,\n"
    "  \"topk_method\": \"gready\",\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"use_cache\": true,\n"
    "  \"v_head_dim\": 128,\n"
    "  \"vocab_size\": 102400\n"
    "}\n";

// Writes a config.json into tmpdir/<sub>/ and returns that directory.
static const char *write_ckpt_json(const char *sub, const char *json)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, sub);
    mkdir(dir, 0755);
    char name[300];
    snprintf(name, sizeof name, "%s/config.json", sub);
    write_tmp(name, json);
    return dir;
}

static void test_hf_json_good(void **state)
{
    const char *dir = write_ckpt_json("Qwen3-30B-A3B", QWEN_JSON);
    ep_model_cfg c = load_ok(dir);
    ep_model_cfg p = load_ok("qwen3-30b-a3b");
    assert_string_equal(c.name, "Qwen3-30B-A3B");
    assert_string_equal(c.checkpoint, dir);
    check_common(&c, "Qwen3-30B-A3B", EP_ARCH_QWEN3_MOE, 2048, 48, 32, 4, 6144, 40960, 151936);
    assert_int_equal(c.head_dim, p.head_dim);
    assert_true(c.rope_theta == p.rope_theta);
    assert_true(c.qk_norm);
    check_moe(&c, 128, 8, 768, 0, 0, EP_TOPK_GREEDY, 1, 1, true, 1.0f);
    assert_int_equal(c.seed, 0);

    dir = write_ckpt_json("DeepSeek-V2-Lite", DS_JSON);
    c = load_ok(dir);
    check_common(&c, "DeepSeek-V2-Lite", EP_ARCH_DEEPSEEK_V2, 2048, 27, 16, 16, 10944, 163840,
                 102400);
    assert_false(c.qk_norm);
    check_moe(&c, 64, 6, 1408, 2, 1, EP_TOPK_GREEDY, 1, 1, false, 1.0f);
    check_mla(&c, 0, 512, 128, 64, 128);
    check_yarn(&c, 40.0f, 4096, 0.707f, 0.707f);

    char *j = subst(DS_JSON, "\"vocab_size\"", "\"epserve_seed\": 99, \"vocab_size\"");
    char path[512];
    snprintf(path, sizeof path, "%s/seeded.json", tmpdir);
    write_tmp("seeded.json", j);
    free(j);
    c = load_ok(path); // a .json file given directly
    assert_int_equal(c.seed, 99);
}

static void json_bad(const char *base, const char *from, const char *to, ep_status st,
                     const char *n1, const char *n2)
{
    char *j = subst(base, from, to);
    const char *dir = write_ckpt_json("bad", j);
    free(j);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    ep_model_cfg c;
    ep_status got = ep_model_cfg_load(dir, &c);
    if (got != st) fprintf(stderr, "status %d, message: %s\n", got, ep_last_error());
    assert_int_equal(got, st);
    expect_msg(path, n1, n2, NULL);
}

static void test_hf_json_bad(void **state)
{
    json_bad(QWEN_JSON, "  \"hidden_size\": 2048,\n", "", EP_ERR_CONFIG, "'hidden_size'",
             "no such key");
    json_bad(QWEN_JSON, "\"hidden_size\": 2048", "\"hidden_size\": \"2048\"", EP_ERR_CONFIG,
             "'hidden_size'", "a string \"2048\"");
    json_bad(QWEN_JSON, "\"num_experts\": 128", "\"num_experts\": 128.5", EP_ERR_CONFIG,
             "'num_experts'", "128.5");
    json_bad(QWEN_JSON, "\"norm_topk_prob\": true", "\"norm_topk_prob\": 1", EP_ERR_CONFIG,
             "'norm_topk_prob'", "an integer 1");
    json_bad(QWEN_JSON, "\"qwen3_moe\"", "\"llama\"", EP_ERR_UNSUPPORTED, "'model_type'",
             "\"llama\"");
    json_bad(QWEN_JSON, "\"decoder_sparse_step\": 1", "\"decoder_sparse_step\": 2",
             EP_ERR_UNSUPPORTED, "all-MoE", "decoder_sparse_step");
    json_bad(QWEN_JSON, "\"mlp_only_layers\": []", "\"mlp_only_layers\": [0, 5]",
             EP_ERR_UNSUPPORTED, "all-MoE", "mlp_only_layers");
    json_bad(QWEN_JSON, "\"num_experts_per_tok\": 8", "\"num_experts_per_tok\": 200", EP_ERR_CONFIG,
             "'num_experts_per_tok'", "found 200");
    json_bad(QWEN_JSON, "{\n", "{\n  \"x\": ,\n", EP_ERR_FORMAT, "not valid JSON", "line 2");
    json_bad(QWEN_JSON, "{\n", "{\n  \"hidden_size\": 1,\n", EP_ERR_FORMAT, "duplicate", NULL);
    json_bad(DS_JSON, "  \"kv_lora_rank\": 512,\n", "", EP_ERR_CONFIG, "'kv_lora_rank'", NULL);
    json_bad(DS_JSON, "\"gready\"", "\"topk\"", EP_ERR_CONFIG, "'topk_method'", "\"topk\"");
    json_bad(DS_JSON, "\"type\": \"yarn\"", "\"type\": \"dynamic\"", EP_ERR_UNSUPPORTED,
             "rope_scaling", "dynamic");
    json_bad(DS_JSON, "\"moe_layer_freq\": 1", "\"moe_layer_freq\": 2", EP_ERR_UNSUPPORTED,
             "'moe_layer_freq'", "2");
    json_bad(DS_JSON, "  \"q_lora_rank\": null,\n", "", EP_ERR_CONFIG, "'q_lora_rank'", NULL);
    json_bad(DS_JSON, "\"n_group\": 1", "\"n_group\": 5", EP_ERR_CONFIG, "'n_group'", "found 5");
    json_bad(DS_JSON, "\"factor\": 40,", "", EP_ERR_CONFIG, "'rope_scaling.factor'", "no such key");
    json_bad(DS_JSON, "\"factor\": 40,", "\"factor\": \"40\",", EP_ERR_CONFIG,
             "'rope_scaling.factor'", "a string \"40\"");
    json_bad(DS_JSON, "\"vocab_size\"", "\"epserve_seed\": -3, \"vocab_size\"", EP_ERR_CONFIG,
             "'epserve_seed'", "-3");
    json_bad(DS_JSON, "\"scoring_func\": \"softmax\"", "\"scoring_func\": \"sigmoid\"",
             EP_ERR_UNSUPPORTED, "'scoring_func'", "sigmoid");
    json_bad(QWEN_JSON, "\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"yarn\"}",
             EP_ERR_CONFIG, "'rope_scaling.factor'", "no such key");

    ep_model_cfg c;
    char empty[512];
    snprintf(empty, sizeof empty, "%s/empty-dir", tmpdir);
    mkdir(empty, 0755);
    assert_int_equal(ep_model_cfg_load(empty, &c), EP_ERR_IO);
    expect_msg(empty, "config.json", NULL);
}

// Qwen3's README: YaRN to 131072 tokens is this rope_scaling in config.json.
static const char *QWEN_YARN = "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0, "
                               "\"original_max_position_embeddings\": 32768}";

static char *qwen_yarn_json(const char *rope_scaling)
{
    char *a = subst(QWEN_JSON, "\"rope_scaling\": null", rope_scaling);
    char *b = subst(a, "\"max_position_embeddings\": 40960", "\"max_position_embeddings\": 131072");
    free(a);
    return b;
}

static ep_model_cfg load_json_text(const char *sub, const char *json)
{
    const char *dir = write_ckpt_json(sub, json);
    return load_ok(dir);
}

static void test_hf_json_qwen3_yarn(void **state)
{
    char *j = qwen_yarn_json(QWEN_YARN);
    ep_model_cfg c = load_json_text("qwen3-yarn", j);
    free(j);
    assert_true(c.has_yarn);
    assert_true(c.yarn_factor == 4.0f);
    assert_int_equal(c.yarn_orig_max_pos, 32768);
    assert_int_equal(c.max_pos, 131072); // beyond the original: what YaRN is for
    assert_true(c.yarn_beta_fast == 32.0f && c.yarn_beta_slow == 1.0f);
    assert_true(c.yarn_mscale == 0.0f && c.yarn_mscale_all_dim == 0.0f); // not given
    assert_true(c.yarn_attn_factor == 0.0f);
    assert_true(c.yarn_truncate);

    // The old spelling "type"; every optional key transformers reads for it;
    // beta_fast 0 and null mean the default (transformers' `or 32`).
    j = qwen_yarn_json(
        "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2, "
        "\"original_max_position_embeddings\": 4096, \"beta_fast\": 0, \"beta_slow\": 2.5, "
        "\"mscale\": 0.707, \"mscale_all_dim\": 0.5, \"attention_factor\": 1.25, "
        "\"truncate\": false, \"partial_rotary_factor\": 1.0, \"rope_theta\": 1000000.0}");
    c = load_json_text("qwen3-yarn2", j);
    free(j);
    assert_true(c.yarn_factor == 2.0f);
    assert_int_equal(c.yarn_orig_max_pos, 4096);
    assert_true(c.yarn_beta_fast == 32.0f && c.yarn_beta_slow == 2.5f);
    assert_true(c.yarn_mscale == 0.707f && c.yarn_mscale_all_dim == 0.5f);
    assert_true(c.yarn_attn_factor == 1.25f);
    assert_false(c.yarn_truncate);
    j = qwen_yarn_json("\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4, "
                       "\"original_max_position_embeddings\": 32768, \"beta_fast\": null}");
    c = load_json_text("qwen3-yarn3", j);
    free(j);
    assert_true(c.yarn_beta_fast == 32.0f);

    // YAML presets take the same keys (attention_factor and truncate: Qwen3 only).
    char y[2048];
    snprintf(y, sizeof y, "%s%s", QWEN_YAML,
             "rope_scaling:\n  type: yarn\n  factor: 4\n  original_max_position_embeddings: 128\n"
             "  attention_factor: 1.5\n  truncate: false\n");
    const char *p = write_tmp("qy.yaml", y);
    c = load_ok(p);
    assert_true(c.has_yarn && c.yarn_factor == 4.0f && c.yarn_orig_max_pos == 128);
    assert_true(c.yarn_attn_factor == 1.5f && !c.yarn_truncate && c.yarn_mscale == 0.0f);
    yaml_bad(DS_YAML, "  v_head_dim: 8\n",
             "  v_head_dim: 8\nrope_scaling:\n  type: yarn\n  factor: 2\n"
             "  original_max_position_embeddings: 64\n  attention_factor: 1.1\n",
             EP_ERR_CONFIG, "'rope_scaling.attention_factor' applies only to family qwen3_moe",
             NULL);
}

static void test_hf_json_qwen3_yarn_bad(void **state)
{
    char *base = qwen_yarn_json(QWEN_YARN);
    json_bad(base, "\"yarn\"", "\"dynamic\"", EP_ERR_UNSUPPORTED, "'rope_scaling.rope_type'",
             "\"dynamic\"");
    json_bad(base, "\"yarn\"", "\"linear\"", EP_ERR_UNSUPPORTED, "expected \"yarn\"", "linear");
    json_bad(base, "\"factor\": 4.0", "\"factor\": 4.0, \"low_freq_factor\": 1", EP_ERR_UNSUPPORTED,
             "'rope_scaling.low_freq_factor'", "attention_factor");
    // Another rope type is named as such, before its keys are.
    json_bad(base, "\"yarn\", \"factor\": 4.0",
             "\"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1, \"high_freq_factor\": 4",
             EP_ERR_UNSUPPORTED, "'rope_scaling.rope_type'", "\"llama3\"");
    json_bad(base, "\"factor\": 4.0, ", "", EP_ERR_CONFIG, "'rope_scaling.factor'", "no such key");
    json_bad(base, "\"factor\": 4.0", "\"factor\": 0.5", EP_ERR_CONFIG, "'rope_scaling.factor'",
             "found 0.5");
    json_bad(base, ", \"original_max_position_embeddings\": 32768", "", EP_ERR_CONFIG,
             "'rope_scaling.original_max_position_embeddings'", "no such key");
    json_bad(base, "\"factor\": 4.0", "\"factor\": 4.0, \"attention_factor\": -1", EP_ERR_CONFIG,
             "'rope_scaling.attention_factor'", "found -1");
    json_bad(base, "\"factor\": 4.0", "\"factor\": 4.0, \"truncate\": \"no\"", EP_ERR_CONFIG,
             "'rope_scaling.truncate'", "a string \"no\"");
    json_bad(base, "\"factor\": 4.0", "\"factor\": 4.0, \"partial_rotary_factor\": 0.5",
             EP_ERR_UNSUPPORTED, "'rope_scaling.partial_rotary_factor'", "found 0.5");
    json_bad(base, "\"factor\": 4.0", "\"factor\": 4.0, \"rope_theta\": 10000", EP_ERR_CONFIG,
             "'rope_scaling.rope_theta'", "found 10000");
    json_bad(base, "\"factor\": 4.0", "\"factor\": 4.0, \"type\": \"linear\"", EP_ERR_CONFIG,
             "'rope_scaling.type'", "\"linear\"");
    json_bad(base, "\"factor\": 4.0", "\"factor\": 4.0, \"beta_slow\": 40", EP_ERR_CONFIG,
             "'rope_scaling.beta_fast'", "found 32 and 40");
    json_bad(base, "\"rope_scaling\": {", "\"rope_scaling\": 5, \"x\": {", EP_ERR_CONFIG,
             "'rope_scaling'", "expected null or an object, found an integer 5");
    free(base);
    // DeepSeek's YaRN is its modeling code's: no attention_factor, no truncate.
    json_bad(DS_JSON, "\"factor\": 40,", "\"factor\": 40, \"attention_factor\": 1.1,",
             EP_ERR_UNSUPPORTED, "'rope_scaling.attention_factor'", "deepseek_v2");
    json_bad(DS_JSON, "\"factor\": 40,", "\"factor\": 40, \"truncate\": false,", EP_ERR_UNSUPPORTED,
             "'rope_scaling.truncate'", "deepseek_v2");
}

static void compare_cfg(const ep_model_cfg *a, const ep_model_cfg *b)
{
#define SAME(f) assert_true(a->f == b->f)
    SAME(arch);
    SAME(hidden);
    SAME(n_layers);
    SAME(n_heads);
    SAME(n_kv_heads);
    SAME(head_dim);
    SAME(vocab);
    SAME(intermediate);
    SAME(max_pos);
    SAME(rms_eps);
    SAME(rope_theta);
    SAME(qk_norm);
    SAME(tie_embeddings);
    SAME(n_experts);
    SAME(k_base);
    SAME(moe_inter);
    SAME(n_shared);
    SAME(first_k_dense);
    SAME(topk_method);
    SAME(n_group);
    SAME(topk_group);
    SAME(norm_topk_prob);
    SAME(routed_scaling_factor);
    SAME(q_lora_rank);
    SAME(kv_lora_rank);
    SAME(qk_nope_dim);
    SAME(qk_rope_dim);
    SAME(v_head_dim);
    SAME(has_yarn);
    SAME(yarn_factor);
    SAME(yarn_beta_fast);
    SAME(yarn_beta_slow);
    SAME(yarn_mscale);
    SAME(yarn_mscale_all_dim);
    SAME(yarn_orig_max_pos);
    SAME(yarn_attn_factor);
    SAME(yarn_truncate);
    SAME(seed);
    SAME(synth_conc_set);
    SAME(synth_conc_median);
    SAME(synth_conc_sigma_token);
    SAME(synth_conc_sigma_layer);
#undef SAME
}

static void test_hf_json_round_trip(void **state)
{
    const char *presets[] = {"qwen3-235b-a22b",  "qwen3-30b-a3b",  "deepseek-v2.5",
                             "deepseek-v2-lite", "tiny-qwen3-moe", "tiny-deepseek-v2"};
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        ep_model_cfg a = load_ok(presets[i]), b;
        a.seed = 0x9e3779b97f4a7c15ull + i; // above INT64_MAX: exercises the string form
        if (i % 2) a.seed = 12345 + i;
        char dir[512], path[600];
        snprintf(dir, sizeof dir, "%s/rt-%s", tmpdir, presets[i]);
        mkdir(dir, 0755);
        snprintf(path, sizeof path, "%s/config.json", dir);
        assert_int_equal(ep_model_cfg_write_hf_json(&a, path), EP_OK);
        assert_int_equal(ep_model_cfg_from_hf_json(path, &b), EP_OK);
        compare_cfg(&a, &b);
        assert_string_equal(b.checkpoint, dir);
        if (a.arch == EP_ARCH_QWEN3_MOE) { // the same with Qwen3's YaRN, defaults or not
            a.has_yarn = true;
            a.yarn_factor = 4.0f;
            a.yarn_orig_max_pos = 1024;
            a.yarn_attn_factor = i % 2 ? 0.0f : 1.125f;
            a.yarn_truncate = i % 2;
            a.yarn_beta_slow = i % 2 ? 1.0f : 2.0f;
            assert_int_equal(ep_model_cfg_write_hf_json(&a, path), EP_OK);
            assert_int_equal(ep_model_cfg_from_hf_json(path, &b), EP_OK);
            compare_cfg(&a, &b);
        }
        char tmpname[700];
        snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", path, (long)getpid());
        assert_int_equal(access(tmpname, F_OK), -1); // temp file renamed away
    }
    // Written floats are short decimals, as HF configs have them.
    ep_model_cfg a = load_ok("deepseek-v2-lite");
    char path[512];
    snprintf(path, sizeof path, "%s/lite.json", tmpdir);
    assert_int_equal(ep_model_cfg_write_hf_json(&a, path), EP_OK);
    FILE *f = fopen(path, "r");
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    assert_true(strstr(buf, "\"rms_norm_eps\": 1e-06") || strstr(buf, "\"rms_norm_eps\": 1e-6"));
    assert_non_null(strstr(buf, "\"mscale\": 0.707"));
    assert_non_null(strstr(buf, "\"q_lora_rank\": null"));
    assert_non_null(strstr(buf, "\"torch_dtype\": \"bfloat16\""));
    assert_non_null(strstr(buf, "\"DeepseekV2ForCausalLM\""));
}

// The synthetic routing inputs' concentration (YAML `synth:`, config.json
// "epserve_synth"): absent = the built-in values, any key sets the block,
// out-of-range or unknown keys are errors naming the key.
static void test_synth_concentration(void **state)
{
    (void)state;
    ep_model_cfg c = load_ok("qwen3-235b-a22b");
    assert_false(c.synth_conc_set);
    c = load_ok("tiny-qwen3-moe");
    assert_true(c.synth_conc_set);
    assert_true(c.synth_conc_median > 0 && c.synth_conc_median < EP_SYNTH_CONC_MEDIAN);
    assert_true(c.synth_conc_sigma_token == EP_SYNTH_CONC_SIGMA_TOKEN);

    char *y = subst(QWEN_YAML, "moe:", "synth:\n  concentration_sigma_layer: 0.25\nmoe:");
    const char *p = write_tmp("synth.yaml", y);
    free(y);
    c = load_ok(p);
    assert_true(c.synth_conc_set);
    assert_true(c.synth_conc_median == EP_SYNTH_CONC_MEDIAN);
    assert_true(c.synth_conc_sigma_token == EP_SYNTH_CONC_SIGMA_TOKEN);
    assert_true(c.synth_conc_sigma_layer == 0.25);

    yaml_bad(QWEN_YAML, "moe:", "synth:\n  concentration_median: 0\nmoe:", EP_ERR_CONFIG,
             "synth.concentration_median", "expected a number in (0, 100], found 0");
    yaml_bad(QWEN_YAML, "moe:", "synth:\n  concentration_sigma_token: -1\nmoe:", EP_ERR_CONFIG,
             "synth.concentration_sigma_token", "expected a number in [0, 3], found -1");
    yaml_bad(QWEN_YAML, "moe:", "synth:\n  concentration_sigma_layer: x\nmoe:", EP_ERR_CONFIG,
             "synth.concentration_sigma_layer", "expected a finite number");
    yaml_bad(QWEN_YAML, "moe:", "synth:\n  median: 1\nmoe:", EP_ERR_CONFIG,
             "unknown key 'synth.median'", "concentration_median");

    json_bad(DS_JSON, "\"vocab_size\"", "\"epserve_synth\": 3, \"vocab_size\"", EP_ERR_CONFIG,
             "'epserve_synth'", "expected an object");
    json_bad(DS_JSON, "\"vocab_size\"",
             "\"epserve_synth\": {\"concentration_median\": 0.5}, \"vocab_size\"", EP_ERR_CONFIG,
             "epserve_synth.concentration_sigma_token", "expected a number, found nothing");
    json_bad(DS_JSON, "\"vocab_size\"", "\"epserve_synth\": {\"median\": 0.5}, \"vocab_size\"",
             EP_ERR_CONFIG, "epserve_synth.median", "unknown");
    json_bad(DS_JSON, "\"vocab_size\"",
             "\"epserve_synth\": {\"concentration_median\": 0.5, \"concentration_sigma_token\": 9, "
             "\"concentration_sigma_layer\": 0.4}, \"vocab_size\"",
             EP_ERR_CONFIG, "epserve_synth.concentration_sigma_token", "in [0, 3], found 9");
}

// ---- tensor layout -----------------------------------------------------------------

typedef struct {
    int count;
    double params;
    const char *want; // a name to look for
    int64_t want_shape[2];
    int want_ndim;
    bool found;
    int stop_after; // stop the walk after this many tensors (0: never)
} walk_state;

static int walk_cb(void *user, const char *name, int ndim, const int64_t *shape)
{
    walk_state *w = user;
    w->count++;
    double p = 1;
    for (int i = 0; i < ndim; i++)
        p *= (double)shape[i];
    w->params += p;
    if (w->want && !strcmp(name, w->want)) {
        assert_false(w->found); // names are unique
        w->found = true;
        assert_int_equal(ndim, w->want_ndim);
        for (int i = 0; i < ndim; i++)
            assert_int_equal(shape[i], w->want_shape[i]);
    }
    return w->stop_after && w->count >= w->stop_after;
}

static void expect_tensor(const ep_model_cfg *c, const char *name, int ndim, int64_t d0, int64_t d1)
{
    walk_state w = {.want = name, .want_shape = {d0, d1}, .want_ndim = ndim};
    ep_model_for_each_tensor(c, walk_cb, &w);
    if (!w.found) fprintf(stderr, "tensor %s not listed\n", name);
    assert_true(w.found);
}

static void expect_absent(const ep_model_cfg *c, const char *name)
{
    walk_state w = {.want = name};
    ep_model_for_each_tensor(c, walk_cb, &w);
    assert_false(w.found);
}

static void test_tensors_tiny(void **state)
{
    ep_model_cfg q = load_ok("tiny-qwen3-moe");
    expect_tensor(&q, "model.embed_tokens.weight", 2, 1024, 256);
    expect_tensor(&q, "model.layers.0.input_layernorm.weight", 1, 256, 0);
    expect_tensor(&q, "model.layers.2.self_attn.q_proj.weight", 2, 256, 256);
    expect_tensor(&q, "model.layers.2.self_attn.k_proj.weight", 2, 64, 256);
    expect_tensor(&q, "model.layers.2.self_attn.o_proj.weight", 2, 256, 256);
    expect_tensor(&q, "model.layers.3.self_attn.k_norm.weight", 1, 32, 0);
    expect_tensor(&q, "model.layers.0.mlp.gate.weight", 2, 64, 256);
    expect_tensor(&q, "model.layers.3.mlp.experts.63.down_proj.weight", 2, 256, 128);
    expect_tensor(&q, "model.layers.1.mlp.experts.7.up_proj.weight", 2, 128, 256);
    expect_tensor(&q, "model.norm.weight", 1, 256, 0);
    expect_tensor(&q, "lm_head.weight", 2, 1024, 256);
    expect_absent(&q, "model.layers.0.mlp.gate_proj.weight");
    expect_absent(&q, "model.layers.4.input_layernorm.weight");
    walk_state w = {0};
    ep_model_for_each_tensor(&q, walk_cb, &w);
    // per layer: 2 norms + q,k,v,o + q/k norm + gate + 3 per expert
    assert_int_equal(w.count, 1 + 4 * (2 + 4 + 2 + 1 + 3 * 64) + 2);
    walk_state s = {.stop_after = 5};
    ep_model_for_each_tensor(&q, walk_cb, &s);
    assert_int_equal(s.count, 5);

    ep_model_cfg d = load_ok("tiny-deepseek-v2");
    expect_tensor(&d, "model.layers.0.mlp.gate_proj.weight", 2, 512, 256);
    expect_tensor(&d, "model.layers.0.mlp.down_proj.weight", 2, 256, 512);
    expect_absent(&d, "model.layers.0.mlp.gate.weight");
    expect_tensor(&d, "model.layers.1.self_attn.q_a_proj.weight", 2, 64, 256);
    expect_tensor(&d, "model.layers.1.self_attn.q_a_layernorm.weight", 1, 64, 0);
    expect_tensor(&d, "model.layers.1.self_attn.q_b_proj.weight", 2, 8 * 48, 64);
    expect_tensor(&d, "model.layers.1.self_attn.kv_a_proj_with_mqa.weight", 2, 80, 256);
    expect_tensor(&d, "model.layers.1.self_attn.kv_a_layernorm.weight", 1, 64, 0);
    expect_tensor(&d, "model.layers.1.self_attn.kv_b_proj.weight", 2, 8 * 64, 64);
    expect_tensor(&d, "model.layers.1.self_attn.o_proj.weight", 2, 256, 8 * 32);
    expect_tensor(&d, "model.layers.3.mlp.shared_experts.gate_proj.weight", 2, 256, 256);
    expect_tensor(&d, "model.layers.3.mlp.shared_experts.down_proj.weight", 2, 256, 256);
    expect_tensor(&d, "model.layers.2.mlp.gate.weight", 2, 64, 256);
    expect_absent(&d, "model.layers.1.self_attn.q_proj.weight");
    expect_absent(&d, "model.layers.1.self_attn.q_norm.weight");

    char buf[128];
    ep_name_gate(buf, sizeof buf, 11);
    assert_string_equal(buf, "model.layers.11.mlp.gate.weight");
    ep_name_expert(buf, sizeof buf, 5, 13, "down_proj");
    assert_string_equal(buf, "model.layers.5.mlp.experts.13.down_proj.weight");
    ep_name_shared(buf, sizeof buf, 7, "up_proj");
    assert_string_equal(buf, "model.layers.7.mlp.shared_experts.up_proj.weight");
}

// Total parameters against the published model sizes: catches any wrong
// dimension in a preset or a shape in the layout. Published: Qwen3-235B-A22B
// 235B, Qwen3-30B-A3B 30.5B, DeepSeek-V2.5 236B, DeepSeek-V2-Lite 15.7B.
static void test_tensors_param_counts(void **state)
{
    const struct {
        const char *preset;
        double billions;
    } want[] = {{"qwen3-235b-a22b", 235.0},
                {"qwen3-30b-a3b", 30.5},
                {"deepseek-v2.5", 236.0},
                {"deepseek-v2-lite", 15.7}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        ep_model_cfg c = load_ok(want[i].preset);
        walk_state w = {0};
        ep_model_for_each_tensor(&c, walk_cb, &w);
        double got = w.params / 1e9;
        if (fabs(got - want[i].billions) > 0.01 * want[i].billions)
            fprintf(stderr, "%s: %.3fB parameters, expected %.1fB\n", want[i].preset, got,
                    want[i].billions);
        assert_true(fabs(got - want[i].billions) <= 0.01 * want[i].billions);
    }
    ep_model_cfg lite = load_ok("deepseek-v2-lite");
    expect_tensor(&lite, "model.layers.5.self_attn.q_proj.weight", 2, 16 * 192, 2048);
    expect_absent(&lite, "model.layers.5.self_attn.q_a_proj.weight");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preset_qwen3_235b),
        cmocka_unit_test(test_preset_qwen3_30b),
        cmocka_unit_test(test_preset_deepseek_v25),
        cmocka_unit_test(test_preset_deepseek_lite),
        cmocka_unit_test(test_preset_tiny),
        cmocka_unit_test(test_preset_lookup),
        cmocka_unit_test(test_yaml_good),
        cmocka_unit_test(test_yaml_unknown_missing),
        cmocka_unit_test(test_yaml_wrong_types),
        cmocka_unit_test(test_yaml_inconsistent),
        cmocka_unit_test(test_yaml_files),
        cmocka_unit_test(test_hf_json_good),
        cmocka_unit_test(test_hf_json_bad),
        cmocka_unit_test(test_hf_json_round_trip),
        cmocka_unit_test(test_synth_concentration),
        cmocka_unit_test(test_hf_json_qwen3_yarn),
        cmocka_unit_test(test_hf_json_qwen3_yarn_bad),
        cmocka_unit_test(test_tensors_tiny),
        cmocka_unit_test(test_tensors_param_counts),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
