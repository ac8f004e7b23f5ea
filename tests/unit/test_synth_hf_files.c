// The files make-model writes beside the weights, for both tiny presets:
// tokenizer_config.json (its special tokens at the ids the synthetic
// tokenizer gives them, bos / eos / pad naming tokens that exist, a chat
// template, add_bos_token false, model_max_length) and generation_config.json
// (the family's published keys and values, its ids naming the right tokens,
// read back by ep_gen_config_read); ep_synth_special_ids_of agrees with the
// tokenizer (ep_tokenizer_find) at the presets' vocabulary and at a larger one.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/weights.h"
#include "model/gen_config.h"
#include "model/tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ep_test_synth_hf_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static ep_model_cfg load(const char *preset)
{
    ep_model_cfg c;
    if (ep_model_cfg_load(preset, &c)) fail_msg("%s: %s", preset, ep_last_error());
    return c;
}

static ep_tokenizer *synth_tokenizer(const ep_model_cfg *c)
{
    char *j;
    size_t n;
    assert_int_equal(ep_tokenizer_synth_json(c, &j, &n), EP_OK);
    ep_tokenizer *t = NULL;
    assert_int_equal(ep_tokenizer_load_json(j, n, "synthetic", &t), EP_OK);
    free(j);
    return t;
}

static const char *QWEN_EOT = "<|endoftext|>", *QWEN_START = "<|im_start|>",
                  *QWEN_END = "<|im_end|>";
static const char *DS_BOS = "<\xef\xbd\x9c"
                            "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
static const char *DS_EOS = "<\xef\xbd\x9c"
                            "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";

static void check_ids(const ep_model_cfg *c)
{
    ep_tokenizer *t = synth_tokenizer(c);
    ep_synth_special_ids ids;
    ep_synth_special_ids_of(c, &ids);
    if (c->arch == EP_ARCH_QWEN3_MOE) {
        assert_int_equal(ids.bos, ep_tokenizer_find(t, QWEN_EOT));
        assert_int_equal(ids.pad, ep_tokenizer_find(t, QWEN_EOT));
        assert_int_equal(ids.im_start, ep_tokenizer_find(t, QWEN_START));
        assert_int_equal(ids.eos, ep_tokenizer_find(t, QWEN_END));
    } else {
        assert_int_equal(ids.bos, ep_tokenizer_find(t, DS_BOS));
        assert_int_equal(ids.eos, ep_tokenizer_find(t, DS_EOS));
        assert_int_equal(ids.pad, ep_tokenizer_find(t, DS_EOS));
        assert_int_equal(ids.im_start, -1);
    }
    assert_true(ep_tokenizer_is_special(t, ids.bos) && ep_tokenizer_is_special(t, ids.eos));
    ep_tokenizer_free(t);
}

static void test_special_ids(void **state)
{
    (void)state;
    ep_model_cfg q = load("tiny-qwen3-moe"), d = load("tiny-deepseek-v2");
    check_ids(&q);
    check_ids(&d);
    q.vocab = d.vocab = 1500; // another vocabulary: the ids move with it
    check_ids(&q);
    check_ids(&d);
}

static json_t *tokenizer_config(const ep_model_cfg *c)
{
    char *j;
    size_t n;
    assert_int_equal(ep_tokenizer_synth_config_json(c, &j, &n), EP_OK);
    assert_int_equal(strlen(j), n);
    json_t *o = json_loadb(j, n, 0, NULL);
    free(j);
    assert_non_null(o);
    return o;
}

static const char *str(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v)) fail_msg("tokenizer_config.json: '%s' is not a string", k);
    return json_string_value(v);
}

static void check_tokenizer_config(const ep_model_cfg *c)
{
    json_t *o = tokenizer_config(c);
    ep_tokenizer *t = synth_tokenizer(c);
    bool q = c->arch == EP_ARCH_QWEN3_MOE;
    // added_tokens_decoder: every special token at the id the tokenizer gives it.
    json_t *dec = json_object_get(o, "added_tokens_decoder");
    assert_int_equal(json_object_size(dec), q ? 3 : 2);
    const char *id;
    json_t *v;
    json_object_foreach(dec, id, v)
    {
        const char *content = str(v, "content");
        assert_int_equal(atoi(id), ep_tokenizer_find(t, content));
        assert_true(json_is_true(json_object_get(v, "special")));
    }
    assert_string_equal(str(o, "eos_token"), q ? QWEN_END : DS_EOS);
    assert_string_equal(str(o, "pad_token"), q ? QWEN_EOT : DS_EOS);
    if (q)
        assert_true(json_is_null(json_object_get(o, "bos_token")));
    else
        assert_string_equal(str(o, "bos_token"), DS_BOS);
    assert_true(json_is_false(json_object_get(o, "add_bos_token")));
    assert_int_equal(json_integer_value(json_object_get(o, "model_max_length")), c->max_pos);
    const char *tmpl = str(o, "chat_template");
    assert_non_null(strstr(tmpl, "add_generation_prompt"));
    assert_non_null(strstr(tmpl, q ? "<|im_start|>" : "bos_token"));
    ep_tokenizer_free(t);
    json_decref(o);
}

static void test_tokenizer_config(void **state)
{
    (void)state;
    ep_model_cfg q = load("tiny-qwen3-moe"), d = load("tiny-deepseek-v2");
    check_tokenizer_config(&q);
    check_tokenizer_config(&d);
    q.vocab = 200;
    assert_int_equal(ep_tokenizer_synth_config_json(&q, &(char *){NULL}, &(size_t){0}), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "vocab_size"));
}

static void check_generation_config(const ep_model_cfg *c)
{
    ep_gen_config g;
    ep_gen_config_synth(c, &g);
    char path[512];
    snprintf(path, sizeof path, "%s/generation_config.json", tmpdir);
    assert_int_equal(ep_gen_config_write(&g, path), EP_OK);
    // The published keys, no more (Qwen3-30B-A3B's; DeepSeek-V2-Lite-Chat's).
    json_t *o = json_load_file(path, 0, NULL);
    assert_non_null(o);
    bool q = c->arch == EP_ARCH_QWEN3_MOE;
    static const char *qk[] = {"bos_token_id", "do_sample", "eos_token_id", "pad_token_id",
                               "temperature",  "top_k",     "top_p"};
    static const char *dk[] = {"bos_token_id", "do_sample", "eos_token_id", "temperature", "top_p"};
    const char **keys = q ? qk : dk;
    size_t nk = q ? EP_ARRAY_LEN(qk) : EP_ARRAY_LEN(dk);
    assert_int_equal(json_object_size(o), nk);
    for (size_t i = 0; i < nk; i++)
        assert_non_null(json_object_get(o, keys[i]));
    assert_true(json_is_true(json_object_get(o, "do_sample")));
    assert_true(json_is_array(json_object_get(o, "eos_token_id")) == q); // DeepSeek: one id
    json_decref(o);

    ep_gen_config r;
    if (ep_gen_config_read(path, c->vocab, &r)) fail_msg("%s", ep_last_error());
    assert_int_equal(r.n_ignored, 0);
    assert_true(r.temperature == (q ? 0.6f : 0.3f) && r.top_p == 0.95f);
    assert_true(r.has_top_k == q && (!q || r.top_k == 20));
    ep_tokenizer *t = synth_tokenizer(c);
    if (q) {
        assert_int_equal(r.n_eos, 2);
        assert_int_equal(r.eos[0], ep_tokenizer_find(t, QWEN_END));
        assert_int_equal(r.eos[1], ep_tokenizer_find(t, QWEN_EOT));
        assert_int_equal(r.bos, ep_tokenizer_find(t, QWEN_EOT));
        assert_int_equal(r.pad, ep_tokenizer_find(t, QWEN_EOT));
    } else {
        assert_int_equal(r.n_eos, 1);
        assert_int_equal(r.eos[0], ep_tokenizer_find(t, DS_EOS));
        assert_int_equal(r.bos, ep_tokenizer_find(t, DS_BOS));
        assert_int_equal(r.pad, -1);
    }
    ep_tokenizer_free(t);
}

static void test_generation_config(void **state)
{
    (void)state;
    ep_model_cfg q = load("tiny-qwen3-moe"), d = load("tiny-deepseek-v2");
    check_generation_config(&q);
    check_generation_config(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_special_ids),
        cmocka_unit_test(test_tokenizer_config),
        cmocka_unit_test(test_generation_config),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
