// libFuzzer target: a chat template and its variables. The input is the
// template text, a NUL byte, then a JSON object of variables (when that part
// is missing or not an object, a fixed conversation with tools is used).
// ep_jinja_parse and ep_jinja_render must return a status (never crash, hang
// past the work limit or leak); a render that succeeds gives valid UTF-8 of
// the stated length, and the same text a second time.
#include "common/utf8.h"
#include "fuzz_util.h"
#include "model/jinja.h"

#include <stdlib.h>
#include <string.h>

static json_t *g_default;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ep_log_set_level(EP_LOG_ERROR);
    g_default = json_loads(
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
        "{\"role\": \"user\", \"content\": \"hi \\u4f60\\u597d\"},"
        "{\"role\": \"assistant\", \"content\": \"<think>\\nx\\n</think>\\n\\nok\","
        "\"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"f\","
        "\"arguments\": {\"a\": [1, 2.5, null, true]}}}]},"
        "{\"role\": \"tool\", \"content\": \"r\"}, {\"role\": \"assistant\", \"content\": null}],"
        "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": "
        "{}}}],"
        "\"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\","
        "\"enable_thinking\": false}",
        0, NULL);
    return g_default ? 0 : 1;
}

static bool contains(const char *s, size_t n, const char *word)
{
    size_t k = strlen(word);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(s + i, word, k)) return true;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = (const char *)data;
    const char *nul = memchr(src, 0, size);
    size_t tlen = nul ? (size_t)(nul - src) : size;
    ep_jinja *t = NULL;
    ep_status st = ep_jinja_parse(src, tlen, "fuzz", &t);
    if (st) {
        EP_FUZZ_CHECK(t == NULL && ep_last_error()[0]);
        EP_FUZZ_CHECK(st == EP_ERR_FORMAT || st == EP_ERR_UNSUPPORTED || st == EP_ERR_ARG);
        return 0;
    }
    json_t *vars = NULL;
    if (nul) vars = json_loadb(nul + 1, size - tlen - 1, 0, NULL);
    if (!json_is_object(vars)) {
        json_decref(vars);
        vars = json_incref(g_default);
    }
    char *out = NULL;
    size_t len = 0;
    st = ep_jinja_render(t, vars, &out, &len);
    if (st) {
        EP_FUZZ_CHECK(out == NULL && ep_last_error()[0]);
        EP_FUZZ_CHECK(st == EP_ERR_ARG || st == EP_ERR_UNSUPPORTED || st == EP_ERR_NOMEM);
    } else {
        ep_fuzz_accepted();
        EP_FUZZ_CHECK(out && out[len] == '\0');
        EP_FUZZ_CHECK(ep_utf8_check(out, len) == len);
        // Rendering is a function of the template and the variables (the
        // clock aside).
        if (!contains(src, tlen, "strftime")) {
            char *again = NULL;
            size_t len2 = 0;
            EP_FUZZ_CHECK(ep_jinja_render(t, vars, &again, &len2) == EP_OK);
            EP_FUZZ_CHECK(len2 == len && !memcmp(again, out, len));
            free(again);
        }
        free(out);
    }
    json_decref(vars);
    ep_jinja_free(t);
    return 0;
}
