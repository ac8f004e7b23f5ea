// libFuzzer target: OpenAI request bodies of /v1/completions and
// /v1/chat/completions (the first byte picks the endpoint). What
// ep_oai_parse accepts must respect the limits it was given; a refusal must
// carry a 4xx status and a message; the prompt step (tiny Qwen3's synthetic
// tokenizer and built-in chat template) must keep prompt + max_tokens within
// max_model_len; every response shape written from the accepted strings, and
// the JSON escaping of the raw input bytes, must be valid JSON.
#include "fuzz_util.h"
#include "server/openai.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static ep_model_cfg cfg;
static ep_tokenizer *tok;
static ep_chat_template *chat;
static const char *const routings[] = {"baseline", "banpick"};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ep_fuzz_load_preset("tiny-qwen3-moe", &cfg);
    if (ep_tokenizer_for_model(&cfg, &tok)) tok = NULL; // id prompts only then
    if (ep_chat_template_for_model(&cfg, &chat)) chat = NULL;
    return 0;
}

static void check_json(const ep_sbuf *b)
{
    json_error_t je;
    json_t *j = json_loadb(b->p, b->len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
    EP_FUZZ_CHECK(j != NULL);
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    ep_oai_kind kind = data[0] & 1 ? EP_OAI_CHAT : EP_OAI_COMPLETIONS;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    ep_oai_limits lim = {.model_name = "tiny",
                         .max_model_len = 128,
                         .vocab = cfg.vocab,
                         .routings = routings,
                         .n_routings = 2};

    // Any bytes escape to a valid JSON string.
    ep_sbuf b = {0};
    ep_sbuf_add_json_str(&b, body, len);
    check_json(&b);
    ep_sbuf_free(&b);

    ep_oai_request r;
    ep_oai_error err;
    int st = ep_oai_parse(kind, body, len, &lim, &r, &err);
    if (st) {
        EP_FUZZ_CHECK(st == err.status && ((st >= 400 && st < 500) || st == 500) && err.message[0]);
        ep_oai_error_json(&b, &err);
        check_json(&b);
        ep_sbuf_free(&b);
        return 0;
    }
    EP_FUZZ_CHECK(r.max_tokens >= 0 && r.max_tokens <= lim.max_model_len);
    EP_FUZZ_CHECK(r.routing >= -1 && r.routing < lim.n_routings);
    EP_FUZZ_CHECK(r.n_stop >= 0 && r.n_stop <= EP_OAI_MAX_STOP);
    EP_FUZZ_CHECK(r.sample.top_p > 0 && r.sample.top_p <= 1 && r.sample.temperature >= 0 &&
                  r.sample.top_k >= 0);
    if (kind == EP_OAI_CHAT) {
        EP_FUZZ_CHECK(json_array_size(r.messages) >= 1);
        for (size_t i = 0; i < json_array_size(r.messages); i++) {
            json_t *m = json_array_get(r.messages, i), *c = json_object_get(m, "content");
            EP_FUZZ_CHECK(json_is_string(json_object_get(m, "role")));
            EP_FUZZ_CHECK(json_is_string(c) || json_is_null(c));
        }
        EP_FUZZ_CHECK(!r.tools || json_is_array(r.tools));
        EP_FUZZ_CHECK(!r.chat_kwargs || json_is_object(r.chat_kwargs));
    } else {
        EP_FUZZ_CHECK((r.prompt_text != NULL) != (r.prompt_ids != NULL));
        for (int i = 0; i < r.n_prompt_ids; i++)
            EP_FUZZ_CHECK(r.prompt_ids[i] >= 0 && r.prompt_ids[i] < lim.vocab);
    }
    int *ids = NULL, n = 0;
    st = ep_oai_prompt(&r, tok, chat, &lim, &ids, &n, &err);
    if (!st) {
        EP_FUZZ_CHECK(n >= 1 && r.max_tokens >= 1 && n + r.max_tokens <= lim.max_model_len);
        for (int i = 0; i < n; i++)
            EP_FUZZ_CHECK(ids[i] >= 0 && ids[i] < lim.vocab);
        free(ids);
        ep_fuzz_accepted();
    } else {
        EP_FUZZ_CHECK(st == 400 && !ids);
    }
    // The responses written with the request's strings as text.
    ep_oai_resp_hdr h = {.kind = kind, .id = "cmpl-x", .created = 1, .model = "tiny"};
    json_t *last = kind == EP_OAI_CHAT
                       ? json_object_get(
                             json_array_get(r.messages, json_array_size(r.messages) - 1), "content")
                       : NULL;
    const char *text = json_is_string(last) ? json_string_value(last)
                       : r.prompt_text      ? r.prompt_text
                                            : "";
    ep_oai_response(&b, &h, text, strlen(text), "stop", n, r.max_tokens);
    check_json(&b);
    ep_sbuf_free(&b);
    ep_oai_chunk(&b, &h, kind == EP_OAI_CHAT, text, strlen(text), r.n_stop ? "stop" : NULL);
    EP_FUZZ_CHECK(b.len > 8 && !strncmp(b.p, "data: ", 6) && !strcmp(b.p + b.len - 2, "\n\n"));
    b.p[b.len - 2] = 0;
    json_t *j = json_loads(b.p + 6, 0, NULL);
    EP_FUZZ_CHECK(j != NULL);
    json_decref(j);
    ep_sbuf_free(&b);
    ep_oai_request_free(&r);
    return 0;
}
