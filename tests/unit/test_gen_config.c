// generation_config.json: the published Qwen3 and DeepSeek-V2-Lite-Chat
// files read with their values, the defaults they give (do_sample rules),
// every bad value refused naming file and key, keys that would change the
// output and are not applied reported (and neutral values not), absent files
// are no error, and the /v1/models JSON.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "model/gen_config.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ep_test_gen_config_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *write_file(const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/generation_config.json", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static ep_gen_config read_ok(const char *text)
{
    ep_gen_config g;
    ep_status st = ep_gen_config_read(write_file(text), 151936, &g);
    if (st) fail_msg("%s", ep_last_error());
    assert_true(g.present);
    return g;
}

// Refused with st, the message naming the file and every needle.
static void read_bad(const char *text, int vocab, ep_status want, const char *n1, const char *n2)
{
    ep_gen_config g;
    const char *path = write_file(text);
    ep_status st = ep_gen_config_read(path, vocab, &g);
    const char *msg = ep_last_error();
    if (st != want || !strstr(msg, path) || !strstr(msg, n1) || (n2 && !strstr(msg, n2)))
        fail_msg("status %d (want %d): %s (want '%s', '%s')", st, want, msg, n1, n2 ? n2 : "");
}

// Qwen/Qwen3-30B-A3B's generation_config.json.
static const char *QWEN3 = "{\n"
                           "  \"bos_token_id\": 151643,\n"
                           "  \"do_sample\": true,\n"
                           "  \"eos_token_id\": [151645, 151643],\n"
                           "  \"pad_token_id\": 151643,\n"
                           "  \"temperature\": 0.6,\n"
                           "  \"top_k\": 20,\n"
                           "  \"top_p\": 0.95,\n"
                           "  \"transformers_version\": \"4.51.0\"\n"
                           "}\n";

static void test_published(void **state)
{
    (void)state;
    ep_gen_config g = read_ok(QWEN3);
    assert_true(g.has_temperature && g.temperature == 0.6f);
    assert_true(g.has_top_k && g.top_k == 20);
    assert_true(g.has_top_p && g.top_p == 0.95f);
    assert_true(g.has_do_sample && g.do_sample);
    assert_false(g.has_max_new_tokens);
    assert_int_equal(g.n_eos, 2);
    assert_int_equal(g.eos[0], 151645);
    assert_int_equal(g.eos[1], 151643);
    assert_int_equal(g.bos, 151643);
    assert_int_equal(g.pad, 151643);
    assert_int_equal(g.n_ignored, 0);
    // Over generate's built-in greedy and over OpenAI's defaults alike.
    ep_sample_params p;
    ep_sample_params_default(&p);
    p.seed = 77;
    ep_gen_config_sample_defaults(&g, &p);
    assert_true(p.temperature == 0.6f && p.top_k == 20 && p.top_p == 0.95f && p.seed == 77);

    // deepseek-ai/DeepSeek-V2-Lite-Chat's: eos as one integer, no top_k.
    g = read_ok("{\"_from_model_config\": true, \"bos_token_id\": 100000, \"eos_token_id\": "
                "100001, \"do_sample\": true, \"temperature\": 0.3, \"top_p\": 0.95, "
                "\"transformers_version\": \"4.39.3\"}");
    assert_int_equal(g.n_eos, 1);
    assert_int_equal(g.eos[0], 100001);
    assert_int_equal(g.pad, -1);
    p = (ep_sample_params){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
    ep_gen_config_sample_defaults(&g, &p);
    assert_true(p.temperature == 0.3f && p.top_k == 0 && p.top_p == 0.95f);
}

static void test_do_sample(void **state)
{
    (void)state;
    ep_sample_params p = {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
    // do_sample false: greedy, whatever temperature says (transformers ignores it then).
    ep_gen_config g = read_ok("{\"do_sample\": false, \"temperature\": 0.7, \"top_k\": 5}");
    ep_gen_config_sample_defaults(&g, &p);
    assert_true(p.temperature == 0.0f);
    assert_int_equal(p.top_k, 5);
    // do_sample true without a temperature: transformers' 1.0, even over greedy.
    g = read_ok("{\"do_sample\": true}");
    ep_sample_params_default(&p);
    ep_gen_config_sample_defaults(&g, &p);
    assert_true(p.temperature == 1.0f);
    // No do_sample: the temperature given; nulls are "not set".
    g = read_ok("{\"temperature\": 0.2, \"top_k\": null, \"top_p\": null, \"max_new_tokens\": 9}");
    ep_sample_params_default(&p);
    p.top_k = 3;
    ep_gen_config_sample_defaults(&g, &p);
    assert_true(p.temperature == 0.2f && p.top_k == 3 && p.top_p == 1.0f);
    assert_true(g.has_max_new_tokens && g.max_new_tokens == 9);
    // Empty: nothing changes.
    g = read_ok("{}");
    ep_sample_params q = p;
    ep_gen_config_sample_defaults(&g, &q);
    assert_memory_equal(&p, &q, sizeof p);
}

static void test_bad_values(void **state)
{
    (void)state;
    read_bad("{\"temperature\": -1}", 100, EP_ERR_CONFIG, "key 'temperature'",
             "found an integer -1");
    read_bad("{\"temperature\": \"hot\"}", 100, EP_ERR_CONFIG, "key 'temperature'",
             "a string \"hot\"");
    read_bad("{\"top_p\": 0}", 100, EP_ERR_CONFIG, "key 'top_p'", "(0, 1]");
    read_bad("{\"top_p\": 1.5}", 100, EP_ERR_CONFIG, "key 'top_p'", "1.5");
    read_bad("{\"top_k\": -1}", 100, EP_ERR_CONFIG, "key 'top_k'", "found an integer -1");
    read_bad("{\"top_k\": 2.5}", 100, EP_ERR_CONFIG, "key 'top_k'", "2.5");
    read_bad("{\"do_sample\": \"yes\"}", 100, EP_ERR_CONFIG, "key 'do_sample'", "a boolean");
    read_bad("{\"max_new_tokens\": 0}", 100, EP_ERR_CONFIG, "key 'max_new_tokens'", ">= 1");
    read_bad("{\"eos_token_id\": 100}", 100, EP_ERR_CONFIG, "key 'eos_token_id'",
             "a token id in [0, 100), found an integer 100");
    read_bad("{\"eos_token_id\": [5, -2]}", 100, EP_ERR_CONFIG, "key 'eos_token_id[1]'", "-2");
    read_bad("{\"eos_token_id\": \"</s>\"}", 100, EP_ERR_CONFIG, "key 'eos_token_id'",
             "a token id or a list");
    read_bad("{\"eos_token_id\": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}", 100, EP_ERR_CONFIG,
             "key 'eos_token_id'", "at most 16");
    read_bad("{\"bos_token_id\": 4000}", 100, EP_ERR_CONFIG, "key 'bos_token_id'", "4000");
    read_bad("{\"pad_token_id\": true}", 100, EP_ERR_CONFIG, "key 'pad_token_id'", "true");
    read_bad("{\"temperature\": 0.6,", 100, EP_ERR_FORMAT, "not valid JSON", NULL);
    read_bad("[1, 2]", 100, EP_ERR_CONFIG, "expected a JSON object", "an array");
    read_bad("{\"top_k\": 1, \"top_k\": 2}", 100, EP_ERR_FORMAT, "duplicate", NULL);
}

static void test_ignored(void **state)
{
    (void)state;
    // Neutral values of keys epserve does not implement: accepted silently.
    ep_gen_config g = read_ok("{\"repetition_penalty\": 1.0, \"num_beams\": 1, \"min_p\": null,"
                              " \"typical_p\": 1.0, \"bad_words_ids\": [], \"use_cache\": true,"
                              " \"output_scores\": false, \"length_penalty\": 2.0}");
    assert_int_equal(g.n_ignored, 0);
    // Values that would change transformers' output, and an unknown key;
    // repetition_penalty is honoured (the sampler has it), not ignored.
    g = read_ok("{\"repetition_penalty\": 1.1, \"num_beams\": 4, \"max_length\": 2048,"
                " \"suppress_tokens\": [5], \"chat_format\": \"chatml\", \"temperature\": 0.5}");
    assert_int_equal(g.n_ignored, 4);
    assert_true(g.has_repetition_penalty && g.repetition_penalty == 1.1f);
    assert_string_equal(g.ignored[0].key, "num_beams");
    assert_non_null(strstr(g.ignored[0].why, "4"));
    assert_string_equal(g.ignored[1].key, "max_length");
    assert_string_equal(g.ignored[2].key, "suppress_tokens");
    assert_string_equal(g.ignored[3].key, "chat_format");
    assert_non_null(strstr(g.ignored[3].why, "not a generation_config key"));
    assert_true(g.temperature == 0.5f); // the rest is still read
    ep_sample_params p;
    ep_sample_params_default(&p);
    ep_gen_config_sample_defaults(&g, &p);
    assert_true(p.repetition_penalty == 1.1f);
}

static void test_load(void **state)
{
    (void)state;
    ep_model_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.vocab = 151936;
    ep_gen_config g;
    // No checkpoint directory (synthetic weights): nothing to read.
    assert_int_equal(ep_gen_config_load(&cfg, &g), EP_OK);
    assert_false(g.present);
    assert_int_equal(g.bos, -1);
    // A checkpoint directory without the file: none either.
    char sub[600];
    snprintf(sub, sizeof sub, "%s/ckpt", tmpdir);
    mkdir(sub, 0755);
    snprintf(cfg.checkpoint, sizeof cfg.checkpoint, "%s", sub);
    assert_int_equal(ep_gen_config_load(&cfg, &g), EP_OK);
    assert_false(g.present);
    // With it: read, the vocabulary checked.
    snprintf(cfg.checkpoint, sizeof cfg.checkpoint, "%s", tmpdir);
    write_file(QWEN3);
    assert_int_equal(ep_gen_config_load(&cfg, &g), EP_OK);
    assert_true(g.present);
    assert_non_null(strstr(g.path, "/generation_config.json"));
    cfg.vocab = 1000;
    assert_int_equal(ep_gen_config_load(&cfg, &g), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "key 'bos_token_id'"));
}

static void test_json(void **state)
{
    (void)state;
    ep_gen_config g = read_ok("{\"temperature\": 0.6, \"top_k\": 20, \"top_p\": 0.95,"
                              " \"max_new_tokens\": 32, \"eos_token_id\": 7, \"pad_token_id\": 0,"
                              " \"num_beams\": 2}");
    ep_sample_params d = {.temperature = 1.0f, .top_p = 1.0f};
    ep_gen_config_sample_defaults(&g, &d);
    const int eos[] = {1023, 7};
    char *s = ep_gen_config_json(&g, &d, eos, 2);
    json_t *j = json_loads(s, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "file")), g.path);
    assert_true(json_number_value(json_object_get(j, "temperature")) == 0.6);
    assert_true(json_number_value(json_object_get(j, "top_p")) == 0.95);
    assert_int_equal(json_integer_value(json_object_get(j, "top_k")), 20);
    assert_int_equal(json_integer_value(json_object_get(j, "max_tokens")), 32);
    assert_int_equal(json_array_size(json_object_get(j, "eos_token_id")), 2);
    assert_true(json_is_null(json_object_get(j, "bos_token_id")));
    assert_int_equal(json_integer_value(json_object_get(j, "pad_token_id")), 0);
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "ignored"), 0)),
                        "num_beams");
    json_decref(j);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_published),  cmocka_unit_test(test_do_sample),
        cmocka_unit_test(test_bad_values), cmocka_unit_test(test_ignored),
        cmocka_unit_test(test_load),       cmocka_unit_test(test_json),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
