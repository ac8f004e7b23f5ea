// Chat templates (model/chat.h): the built-in templates' exact text and how it
// encodes with the synthetic tokenizers; tokenizer_config.json loading (a
// string template, named templates choosing "default", AddedToken special
// tokens) and each of its errors naming file, key and line; which template a
// checkpoint directory gives (chat_template.jinja, tokenizer_config.json, the
// built-in fallback); the render variables (kwargs, reserved names).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/chat.h"
#include "model/tokenizer.h"

static json_t *J(const char *s)
{
    json_error_t je;
    json_t *j = json_loads(s, JSON_DECODE_ANY, &je);
    if (!j) fprintf(stderr, "bad test JSON: %s: %s\n", s, je.text);
    assert_non_null(j);
    return j;
}

// Renders and returns the text (caller frees), or NULL with the error printed.
static char *render(const ep_chat_template *t, const char *msgs, const char *tools, bool agp,
                    const char *kwargs)
{
    json_t *m = J(msgs), *tl = tools ? J(tools) : NULL, *kw = kwargs ? J(kwargs) : NULL;
    char *out = NULL;
    ep_status st = ep_chat_template_render(t, m, tl, agp, kw, &out);
    json_decref(m);
    json_decref(tl);
    json_decref(kw);
    return st ? NULL : out;
}

static const char *CONV = "[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                          "{\"role\":\"user\",\"content\":\"Hi!\"},"
                          "{\"role\":\"assistant\",\"content\":\"Hello.\"},"
                          "{\"role\":\"user\",\"content\":\"2+2?\"}]";

static void test_builtin(void **state)
{
    (void)state;
    ep_chat_template *q, *d;
    assert_int_equal(ep_chat_template_builtin(EP_ARCH_QWEN3_MOE, &q), EP_OK);
    assert_int_equal(ep_chat_template_builtin(EP_ARCH_DEEPSEEK_V2, &d), EP_OK);
    assert_true(ep_chat_template_is_builtin(q));
    assert_non_null(strstr(ep_chat_template_origin(d), "built-in DeepSeek-V2"));
    char *s = render(q, CONV, NULL, true, NULL);
    assert_string_equal(s, "<|im_start|>system\nBe brief.<|im_end|>\n"
                           "<|im_start|>user\nHi!<|im_end|>\n"
                           "<|im_start|>assistant\nHello.<|im_end|>\n"
                           "<|im_start|>user\n2+2?<|im_end|>\n"
                           "<|im_start|>assistant\n");
    free(s);
    s = render(q, CONV, NULL, false, NULL);
    assert_string_equal(s + strlen(s) - strlen("2+2?<|im_end|>\n"), "2+2?<|im_end|>\n");
    free(s);
    s = render(d, CONV, NULL, true, NULL);
    assert_string_equal(s, "<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hi!\n\n"
                           "Assistant: Hello.<｜end▁of▁sentence｜>User: 2+2?\n\nAssistant:");
    free(s);

    // The rendered chat encodes with the special tokens as single ids.
    ep_model_cfg cfg;
    assert_int_equal(ep_model_cfg_load("tiny-qwen3-moe", &cfg), EP_OK);
    ep_tokenizer *t;
    assert_int_equal(ep_tokenizer_for_model(&cfg, &t), EP_OK);
    s = render(q, "[{\"role\":\"user\",\"content\":\"Hi!\"}]", NULL, true, NULL);
    int *ids, n;
    assert_int_equal(ep_tokenizer_encode(t, s, strlen(s), true, &ids, &n), EP_OK);
    assert_int_equal(ids[0], 1022);
    int ends = 0;
    for (int i = 0; i < n; i++)
        ends += ids[i] == 1023;
    assert_int_equal(ends, 1);
    free(ids);
    free(s);
    ep_tokenizer_free(t);

    // Roles and tools the built-in templates have no format for are refused, named.
    const char *tool =
        "[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"tool\",\"content\":\"y\"}]";
    assert_null(render(q, tool, NULL, true, NULL));
    assert_non_null(strstr(ep_last_error(), "messages[1].role"));
    assert_non_null(strstr(ep_last_error(), "found tool"));
    assert_null(render(d, tool, NULL, true, NULL));
    assert_non_null(strstr(ep_last_error(), "built-in DeepSeek-V2 template"));
    assert_null(render(q, "[{\"role\":\"user\",\"content\":\"x\"}]", "[{\"type\":\"function\"}]",
                       true, NULL));
    assert_non_null(strstr(ep_last_error(), "tools need the model's own chat template"));
    // A null content is a TypeError of the template's `+`, with its line.
    assert_null(render(q, "[{\"role\":\"user\",\"content\":null}]", NULL, true, NULL));
    assert_non_null(strstr(ep_last_error(), "can only concatenate str (not \"NoneType\") to str"));
    assert_non_null(strstr(ep_last_error(), "line "));
    ep_chat_template_free(q);
    ep_chat_template_free(d);
}

static char tmpdir[64];

static char *write_file(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_config(void **state)
{
    (void)state;
    ep_chat_template *t;
    // A string template with AddedToken-shaped special tokens.
    char *p =
        write_file("tokenizer_config.json",
                   "{\"bos_token\":{\"__type\":\"AddedToken\",\"content\":\"<s>\"},"
                   "\"eos_token\":\"</s>\",\"pad_token\":null,"
                   "\"additional_special_tokens\":[\"<a>\",{\"content\":\"<b>\"}],"
                   "\"chat_template\":\"{{ bos_token }}{% for m in messages %}{{ m.role }}:"
                   "{{ m.content }}{{ eos_token }}{% endfor %}{{ pad_token is defined }}"
                   "{{ additional_special_tokens|join(',') }}{{ x|default('-') }}"
                   "{{ add_generation_prompt }}{{ tools is none }}{{ documents is none }}\"}");
    assert_int_equal(ep_chat_template_load(p, &t), EP_OK);
    assert_false(ep_chat_template_is_builtin(t));
    assert_non_null(strstr(ep_chat_template_origin(t), "tokenizer_config.json 'chat_template'"));
    char *s = render(t, "[{\"role\":\"user\",\"content\":\"hi\"}]", NULL, false, NULL);
    assert_string_equal(s, "<s>user:hi</s>False<a>,<b>-FalseTrueTrue");
    free(s);
    // Template arguments are variables; they may override a special token.
    s = render(t, "[]", "[]", true, "{\"x\": 1, \"eos_token\": \"E\"}");
    assert_string_equal(s, "<s>False<a>,<b>1TrueFalseTrue");
    free(s);
    static const char *const reserved[] = {"messages", "tools", "documents",
                                           "add_generation_prompt"};
    for (int i = 0; i < 4; i++) {
        char kw[64];
        snprintf(kw, sizeof kw, "{\"%s\": 1}", reserved[i]);
        assert_null(render(t, "[]", NULL, true, kw));
        assert_non_null(strstr(ep_last_error(), reserved[i]));
        assert_non_null(strstr(ep_last_error(), "set by the request"));
    }
    ep_chat_template_free(t);

    // Named templates: "default" is used.
    p = write_file("tokenizer_config.json",
                   "{\"chat_template\":[{\"name\":\"tool_use\",\"template\":\"T\"},"
                   "{\"name\":\"default\",\"template\":\"D{{ messages|length }}\"}]}");
    assert_int_equal(ep_chat_template_load(p, &t), EP_OK);
    assert_non_null(strstr(ep_chat_template_origin(t), "(\"default\")"));
    s = render(t, "[{}, {}]", NULL, true, NULL);
    assert_string_equal(s, "D2");
    free(s);
    ep_chat_template_free(t);

    // Errors name the file, the key and what was found.
    p = write_file("tokenizer_config.json",
                   "{\"chat_template\":[{\"name\":\"tool_use\",\"template\":\"T\"}]}");
    assert_int_equal(ep_chat_template_load(p, &t), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "tokenizer_config.json: key 'chat_template'"));
    assert_non_null(strstr(ep_last_error(), "\"default\""));
    p = write_file("tokenizer_config.json", "{\"eos_token\":\"x\"}");
    assert_int_equal(ep_chat_template_load(p, &t), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "expected a key 'chat_template', found none"));
    p = write_file("tokenizer_config.json", "{\"chat_template\":7}");
    assert_int_equal(ep_chat_template_load(p, &t), EP_ERR_CONFIG);
    p = write_file("tokenizer_config.json", "{\"chat_template\":\"x\",\"bos_token\":[1]}");
    assert_int_equal(ep_chat_template_load(p, &t), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "key 'bos_token'"));
    p = write_file("tokenizer_config.json", "{\"chat_template\":");
    assert_int_equal(ep_chat_template_load(p, &t), EP_ERR_FORMAT);
    // The template's own errors carry file, key and line.
    p = write_file("tokenizer_config.json",
                   "{\"chat_template\":\"a\\n{% for m in messages %}\\n{{ m|wordwrap }}\"}");
    assert_int_equal(ep_chat_template_load(p, &t), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "tokenizer_config.json 'chat_template' line 3"));
    assert_non_null(strstr(ep_last_error(), "filter 'wordwrap' is not supported"));
    snprintf(p, 256, "%s/nonexistent.json", tmpdir);
    assert_int_equal(ep_chat_template_load(p, &t), EP_ERR_IO);
    assert_non_null(strstr(ep_last_error(), "nonexistent.json"));
}

static void test_for_model(void **state)
{
    (void)state;
    ep_model_cfg cfg;
    assert_int_equal(ep_model_cfg_load("tiny-deepseek-v2", &cfg), EP_OK);
    ep_chat_template *t;
    // No checkpoint directory: the family's built-in template.
    assert_int_equal(ep_chat_template_for_model(&cfg, &t), EP_OK);
    assert_true(ep_chat_template_is_builtin(t));
    ep_chat_template_free(t);
    snprintf(cfg.checkpoint, sizeof cfg.checkpoint, "%s", tmpdir);
    // A tokenizer_config.json without chat_template: still the built-in one.
    write_file("tokenizer_config.json", "{\"eos_token\":\"x\"}");
    assert_int_equal(ep_chat_template_for_model(&cfg, &t), EP_OK);
    assert_true(ep_chat_template_is_builtin(t));
    ep_chat_template_free(t);
    // With one: the checkpoint's.
    write_file("tokenizer_config.json",
               "{\"eos_token\":\"E\",\"chat_template\":\"C{{ eos_token }}\"}");
    assert_int_equal(ep_chat_template_for_model(&cfg, &t), EP_OK);
    char *s = render(t, "[]", NULL, true, NULL);
    assert_string_equal(s, "CE");
    free(s);
    ep_chat_template_free(t);
    // chat_template.jinja wins, with the special tokens of tokenizer_config.json.
    char *j = write_file("chat_template.jinja", "J{{ eos_token }}\n");
    assert_int_equal(ep_chat_template_for_model(&cfg, &t), EP_OK);
    assert_non_null(strstr(ep_chat_template_origin(t), "chat_template.jinja"));
    s = render(t, "[]", NULL, true, NULL);
    assert_string_equal(s, "JE"); // one trailing newline dropped, as Jinja2 does
    free(s);
    ep_chat_template_free(t);
    unlink(j);
    // A broken template in the checkpoint is an error at load, not a fallback.
    write_file("tokenizer_config.json", "{\"chat_template\":\"{% if x %}\"}");
    assert_int_equal(ep_chat_template_for_model(&cfg, &t), EP_ERR_FORMAT);
    assert_non_null(strstr(ep_last_error(), "endif"));
    char path[256];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", tmpdir);
    unlink(path);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ep_chat_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return rmdir(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_for_model),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
