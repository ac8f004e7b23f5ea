// The OpenAI layer of `epserve serve`: every refusal of the request parser
// with its status, param and message; the fields of a good request; prompt
// length checks against max-model-len; response and SSE chunk shapes (each
// parsed back as JSON); JSON escaping of model text; the constant-time key
// comparison.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "server/openai.h"

static const char *const ROUTINGS[] = {"baseline", "banpick"};
static const ep_oai_limits LIM = {.model_name = "tiny",
                                  .max_model_len = 64,
                                  .vocab = 1024,
                                  .routings = ROUTINGS,
                                  .n_routings = 2};

// Parses body, expects a refusal with status, param ("" for null) and a
// message containing `needle`.
static void refuse(ep_oai_kind kind, const char *body, int status, const char *param,
                   const char *needle)
{
    ep_oai_request r;
    ep_oai_error err;
    int st = ep_oai_parse(kind, body, strlen(body), &LIM, &r, &err);
    if (st != status || strcmp(err.param, param) || !strstr(err.message, needle))
        fail_msg("body %s: got status %d param '%s' message '%s'; want %d '%s' containing '%s'",
                 body, st, err.param, err.message, status, param, needle);
    assert_int_equal(err.status, status);
}

static void test_refusals(void **state)
{
    const ep_oai_kind C = EP_OAI_COMPLETIONS, H = EP_OAI_CHAT;
    refuse(C, "{\"prompt\": \"hi\",", 400, "", "malformed JSON");
    refuse(C, "", 400, "", "malformed JSON");
    refuse(C, "[1,2]", 400, "", "must be a JSON object, found an array");
    refuse(C, "{\"prompt\":\"a\",\"prompt\":\"b\"}", 400, "", "malformed JSON");
    refuse(C, "{\"model\":\"gpt-4\",\"prompt\":\"hi\"}", 404, "model", "`gpt-4` does not exist");
    refuse(C, "{\"model\":7,\"prompt\":\"hi\"}", 400, "model",
           "expected a string, found an integer");
    refuse(C, "{\"prompt\":\"hi\",\"max_tokens\":\"ten\"}", 400, "max_tokens",
           "'max_tokens': expected an integer, found a string");
    refuse(C, "{\"prompt\":\"hi\",\"max_tokens\":0}", 400, "max_tokens",
           "expected an integer in [1,");
    refuse(C, "{\"prompt\":\"hi\",\"max_tokens\":65}", 400, "max_tokens",
           "maximum context length is 64");
    refuse(H,
           "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_completion_tokens\":1000}",
           400, "max_completion_tokens", "too large: 1000");
    refuse(C, "{\"prompt\":\"hi\",\"temperature\":\"hot\"}", 400, "temperature",
           "expected a number");
    refuse(C, "{\"prompt\":\"hi\",\"temperature\":-1}", 400, "temperature", "[0, 100]");
    refuse(C, "{\"prompt\":\"hi\",\"top_p\":0}", 400, "top_p", "(0, 1]");
    refuse(C, "{\"prompt\":\"hi\",\"top_k\":-2}", 400, "top_k", "[-1,");
    refuse(C, "{\"prompt\":\"hi\",\"seed\":1.5}", 400, "seed", "expected an integer, found a real");
    refuse(C, "{\"prompt\":\"hi\",\"n\":2}", 400, "n", "only 1 choice");
    refuse(C, "{\"prompt\":\"hi\",\"stream\":\"yes\"}", 400, "stream", "expected a boolean");
    refuse(C, "{\"prompt\":\"hi\",\"stream_options\":{\"include_usage\":true}}", 400,
           "stream_options", "only allowed with 'stream': true");
    refuse(C, "{\"prompt\":\"hi\",\"stop\":[\"a\",3]}", 400, "stop",
           "'stop'[1]: expected a string");
    refuse(C, "{\"prompt\":\"hi\",\"stop\":\"\"}", 400, "stop", "expected 1 to 256 bytes");
    refuse(C, "{\"prompt\":\"hi\",\"routing\":\"/etc/passwd\"}", 400, "routing",
           "loaded: baseline, banpick");
    refuse(C, "{\"prompt\":\"hi\",\"routing\":1}", 400, "routing", "expected a string");
    refuse(C, "{\"prompt\":\"hi\",\"pick_domain\":[]}", 400, "pick_domain", "expected a string");
    refuse(C, "{\"prompt\":\"hi\",\"echo\":true}", 400, "echo", "not supported");
    refuse(C, "{\"prompt\":\"hi\",\"logprobs\":2}", 400, "logprobs", "not supported");
    refuse(C, "{\"prompt\":\"hi\",\"presence_penalty\":2.5}", 400, "presence_penalty", "[-2, 2]");
    refuse(C, "{\"prompt\":\"hi\",\"frequency_penalty\":\"x\"}", 400, "frequency_penalty",
           "expected a number");
    refuse(C, "{\"prompt\":\"hi\",\"repetition_penalty\":0}", 400, "repetition_penalty",
           "(0, 100]");
    refuse(C, "{\"prompt\":\"hi\",\"min_tokens\":-1}", 400, "min_tokens", "[0,");
    refuse(C, "{\"prompt\":\"hi\",\"max_tokens\":4,\"min_tokens\":5}", 400, "min_tokens",
           "must not exceed max_tokens (4)");
    refuse(C, "{\"prompt\":\"hi\",\"min_tokens\":2,\"stop\":\"x\"}", 400, "min_tokens",
           "not supported");
    refuse(C, "{\"prompt\":\"hi\",\"logit_bias\":[1]}", 400, "logit_bias", "an object");
    refuse(C, "{\"prompt\":\"hi\",\"logit_bias\":{\"1024\":1}}", 400, "logit_bias",
           "not a token id in [0, 1024)");
    refuse(C, "{\"prompt\":\"hi\",\"logit_bias\":{\"x\":1}}", 400, "logit_bias", "not a token id");
    refuse(C, "{\"prompt\":\"hi\",\"logit_bias\":{\"5\":101}}", 400, "logit_bias", "[-100, 100]");
    refuse(C, "{\"prompt\":\"hi\",\"response_format\":{\"type\":\"json_object\"}}", 400,
           "response_format", "only {\"type\": \"text\"}");
    refuse(C, "{}", 400, "prompt", "'prompt' is required");
    refuse(C, "{\"prompt\":{}}", 400, "prompt", "a string or an array of token ids");
    refuse(C, "{\"prompt\":[]}", 400, "prompt", "empty");
    refuse(C, "{\"prompt\":[1,\"a\"]}", 400, "prompt", "'prompt'[1]: expected a token id");
    refuse(C, "{\"prompt\":[1,1024]}", 400, "prompt",
           "token id 1024 is outside the vocabulary [0, 1024)");
    refuse(C, "{\"prompt\":[-1]}", 400, "prompt", "token id -1");
    refuse(C, "{\"prompt\":[\"a\",\"b\"]}", 400, "prompt", "a batch of 2");
    char big[1024];
    size_t k = (size_t)snprintf(big, sizeof big, "{\"prompt\":[");
    for (int i = 0; i < 65; i++)
        k += (size_t)snprintf(big + k, sizeof big - k, "%s5", i ? "," : "");
    snprintf(big + k, sizeof big - k, "]}");
    refuse(C, big, 400, "prompt", "your prompt has 65 tokens");
    refuse(H, "{}", 400, "messages", "'messages' is required");
    refuse(H, "{\"messages\":\"hi\"}", 400, "messages",
           "expected an array of messages, found a string");
    refuse(H, "{\"messages\":[]}", 400, "messages", "empty");
    refuse(H, "{\"messages\":[3]}", 400, "messages", "'messages'[0]: expected an object");
    refuse(H, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages", "'messages'[0].role");
    refuse(H, "{\"messages\":[{\"role\":\"function\",\"content\":\"x\"}]}", 400, "messages",
           "found 'function'");
    refuse(H, "{\"messages\":[{\"role\":\"tool\",\"content\":null}]}", 400, "messages",
           "'messages'[0].content: expected a string");
    refuse(H, "{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":{}}]}", 400,
           "messages", "'messages'[0].tool_calls: expected an array, found an object");
    refuse(H, "{\"messages\":[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[1]}]}", 400,
           "messages", "'messages'[0].tool_calls[0]: expected an object");
    refuse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"name\":3}]}", 400, "messages",
           "'messages'[0].name: expected a string");
    refuse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":{}}", 400, "tools",
           "expected an array of tools");
    refuse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[\"f\"]}", 400,
           "tools", "'tools'[0]: expected an object");
    refuse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"required\"}",
           400, "tool_choice", "only \"auto\" and \"none\"");
    refuse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":1}",
           400, "chat_template_kwargs", "expected an object, found an integer");
    refuse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"add_generation_prompt\":1}",
           400, "add_generation_prompt", "expected a boolean");
    refuse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template\":\"{{x}}\"}",
           400, "chat_template", "the model's own template");
    refuse(H,
           "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"continue_final_message\":true}",
           400, "continue_final_message", "not supported");
    refuse(C, "{\"prompt\":\"hi\",\"tools\":[{}]}", 400, "tools", "not supported on completions");
    refuse(H, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages", ".content");
    refuse(H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", 400,
           "messages", "content[0]: expected a text part");
}

static void test_good_request(void **state)
{
    const char *body =
        "{\"model\":\"tiny\",\"prompt\":[1,2,3],\"max_tokens\":7,\"temperature\":0.5,"
        "\"top_p\":0.9,\"top_k\":-1,\"seed\":42,\"stop\":[\"\\n\",\"END\"],"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
        "\"ignore_eos\":true,\"routing\":\"banpick\",\"pick_domain\":\"math\","
        "\"user\":\"u\",\"logprobs\":null,\"frequency_penalty\":0.25,\"presence_penalty\":-1,"
        "\"repetition_penalty\":1.2,\"logit_bias\":{\"7\":-100,\"1023\":2.5},"
        "\"response_format\":{\"type\":\"text\"}}";
    ep_oai_request r;
    ep_oai_error err;
    assert_int_equal(ep_oai_parse(EP_OAI_COMPLETIONS, body, strlen(body), &LIM, &r, &err), 0);
    assert_null(r.prompt_text);
    assert_int_equal(r.n_prompt_ids, 3);
    assert_int_equal(r.prompt_ids[2], 3);
    assert_int_equal(r.max_tokens, 7);
    assert_true(r.sample.temperature == 0.5f);
    assert_true(r.sample.top_p == 0.9f);
    assert_int_equal(r.sample.top_k, 0);
    assert_int_equal(r.sample.seed, 42);
    assert_true(r.sample.frequency_penalty == 0.25f && r.sample.presence_penalty == -1.0f);
    assert_true(r.sample.repetition_penalty == 1.2f);
    assert_int_equal(r.sample.n_bias, 2);
    // jansson keeps insertion order
    assert_true(r.sample.bias_tok[0] == 7 && r.sample.bias_val[0] == -100.0f);
    assert_true(r.sample.bias_tok[1] == 1023 && r.sample.bias_val[1] == 2.5f);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[1], "END");
    assert_true(r.stream && r.include_usage && r.ignore_eos);
    assert_int_equal(r.routing, 1);
    assert_string_equal(r.pick_domain, "math");
    // Ids as given; the default fills nothing here (max_tokens was set).
    int *ids, n;
    assert_int_equal(ep_oai_prompt(&r, NULL, NULL, &LIM, &ids, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 1);
    free(ids);
    ep_oai_request_free(&r);

    // Chat: defaults (OpenAI temperature 1), developer -> system, text parts joined,
    // max_completion_tokens over max_tokens, model absent means the served one.
    const char *chat = "{\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                       "{\"type\":\"text\",\"text\":\"b\"}]}],\"max_tokens\":3,"
                       "\"max_completion_tokens\":5}";
    assert_int_equal(ep_oai_parse(EP_OAI_CHAT, chat, strlen(chat), &LIM, &r, &err), 0);
    assert_int_equal(json_array_size(r.messages), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(r.messages, 0), "role")),
                        "system");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(r.messages, 1), "content")), "ab");
    assert_true(r.add_generation_prompt);
    assert_null(r.tools);
    assert_null(r.chat_kwargs);
    assert_int_equal(r.max_tokens, 5);
    assert_true(r.sample.temperature == 1.0f);
    assert_int_equal(r.routing, -1);
    assert_null(r.pick_domain);
    assert_true(r.sample.repetition_penalty == 1.0f && r.sample.n_bias == 0);
    ep_oai_request_free(&r);
    // No seed: a fresh stream per request (two requests, two seeds).
    ep_oai_request r2;
    assert_int_equal(ep_oai_parse(EP_OAI_CHAT, chat, strlen(chat), &LIM, &r, &err), 0);
    assert_int_equal(ep_oai_parse(EP_OAI_CHAT, chat, strlen(chat), &LIM, &r2, &err), 0);
    assert_true(r.sample.seed != r2.sample.seed);
    ep_oai_request_free(&r);
    ep_oai_request_free(&r2);

    // Chat with tools: the tool turns and template arguments reach the template as
    // sent (content null kept for a tool-call turn; unknown message keys dropped).
    const char *tools =
        "{\"messages\":[{\"role\":\"user\",\"content\":\"w?\",\"x-extra\":1},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
        "{\"role\":\"tool\",\"content\":\"sunny\",\"tool_call_id\":\"c1\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
        "\"tool_choice\":\"auto\",\"chat_template_kwargs\":{\"enable_thinking\":false},"
        "\"add_generation_prompt\":false}";
    assert_int_equal(ep_oai_parse(EP_OAI_CHAT, tools, strlen(tools), &LIM, &r, &err), 0);
    json_t *m0 = json_array_get(r.messages, 0), *m1 = json_array_get(r.messages, 1);
    assert_null(json_object_get(m0, "x-extra"));
    assert_true(json_is_null(json_object_get(m1, "content")));
    assert_int_equal(json_array_size(json_object_get(m1, "tool_calls")), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(r.messages, 2), "tool_call_id")), "c1");
    assert_int_equal(json_array_size(r.tools), 1);
    assert_true(json_is_false(json_object_get(r.chat_kwargs, "enable_thinking")));
    assert_false(r.add_generation_prompt);
    // Without a template the chat is refused; the built-in one refuses tools.
    assert_int_equal(ep_oai_prompt(&r, NULL, NULL, &LIM, &ids, &n, &err), 400);
    ep_chat_template *ct;
    assert_int_equal(ep_chat_template_builtin(EP_ARCH_QWEN3_MOE, &ct), EP_OK);
    ep_model_cfg cfg;
    assert_int_equal(ep_model_cfg_load("tiny-qwen3-moe", &cfg), EP_OK);
    ep_tokenizer *tok;
    assert_int_equal(ep_tokenizer_for_model(&cfg, &tok), EP_OK);
    assert_int_equal(ep_oai_prompt(&r, tok, ct, &LIM, &ids, &n, &err), 400);
    assert_string_equal(err.param, "messages");
    assert_non_null(strstr(err.message, "tools need the model's own chat template"));
    ep_oai_request_free(&r);
    // A plain chat renders and encodes: <|im_start|> first.
    const char *plain = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    assert_int_equal(ep_oai_parse(EP_OAI_CHAT, plain, strlen(plain), &LIM, &r, &err), 0);
    assert_int_equal(ep_oai_prompt(&r, tok, ct, &LIM, &ids, &n, &err), 0);
    assert_int_equal(ids[0], ep_tokenizer_find(tok, "<|im_start|>"));
    free(ids);
    ep_oai_request_free(&r);
    ep_tokenizer_free(tok);
    ep_chat_template_free(ct);

    // A one-element batch of one id array is that prompt.
    const char *one = "{\"prompt\":[[9,8]]}";
    assert_int_equal(ep_oai_parse(EP_OAI_COMPLETIONS, one, strlen(one), &LIM, &r, &err), 0);
    assert_int_equal(r.n_prompt_ids, 2);
    assert_int_equal(r.prompt_ids[0], 9);
    ep_oai_request_free(&r);
}

static void test_prompt_lengths(void **state)
{
    ep_oai_request r;
    ep_oai_error err;
    int *ids, n;
    char body[1024];
    // 60 ids + 5 tokens > 64: refused with both numbers.
    size_t k = (size_t)snprintf(body, sizeof body, "{\"max_tokens\":5,\"prompt\":[");
    for (int i = 0; i < 60; i++)
        k += (size_t)snprintf(body + k, sizeof body - k, "%s1", i ? "," : "");
    snprintf(body + k, sizeof body - k, "]}");
    assert_int_equal(ep_oai_parse(EP_OAI_COMPLETIONS, body, strlen(body), &LIM, &r, &err), 0);
    assert_int_equal(ep_oai_prompt(&r, NULL, NULL, &LIM, &ids, &n, &err), 400);
    assert_string_equal(err.param, "max_tokens");
    assert_non_null(
        strstr(err.message, "requested 65 tokens (60 in the prompt, 5 for the completion)"));
    assert_null(ids);
    ep_oai_request_free(&r);
    // No max_tokens: completions default 16, capped by the room left (64 - 60).
    k = (size_t)snprintf(body, sizeof body, "{\"max_tokens\":null,\"prompt\":[");
    for (int i = 0; i < 60; i++)
        k += (size_t)snprintf(body + k, sizeof body - k, "%s1", i ? "," : "");
    snprintf(body + k, sizeof body - k, "]}");
    assert_int_equal(ep_oai_parse(EP_OAI_COMPLETIONS, body, strlen(body), &LIM, &r, &err), 0);
    assert_int_equal(ep_oai_prompt(&r, NULL, NULL, &LIM, &ids, &n, &err), 0);
    assert_int_equal(n, 60);
    assert_int_equal(r.max_tokens, 4);
    free(ids);
    ep_oai_request_free(&r);
    // A 64-token prompt leaves no room at all.
    k = (size_t)snprintf(body, sizeof body, "{\"prompt\":[");
    for (int i = 0; i < 64; i++)
        k += (size_t)snprintf(body + k, sizeof body - k, "%s1", i ? "," : "");
    snprintf(body + k, sizeof body - k, "]}");
    assert_int_equal(ep_oai_parse(EP_OAI_COMPLETIONS, body, strlen(body), &LIM, &r, &err), 0);
    assert_int_equal(ep_oai_prompt(&r, NULL, NULL, &LIM, &ids, &n, &err), 400);
    assert_string_equal(err.param, "prompt");
    assert_non_null(strstr(err.message, "has 64 tokens"));
    ep_oai_request_free(&r);
    // A text prompt without a tokenizer is refused (not crashed on).
    const char *t = "{\"prompt\":\"hello\"}";
    assert_int_equal(ep_oai_parse(EP_OAI_COMPLETIONS, t, strlen(t), &LIM, &r, &err), 0);
    assert_string_equal(r.prompt_text, "hello");
    assert_int_equal(ep_oai_prompt(&r, NULL, NULL, &LIM, &ids, &n, &err), 400);
    assert_non_null(strstr(err.message, "no tokenizer"));
    ep_oai_request_free(&r);
}

// The server's defaults (generation_config.json over OpenAI's): a field left
// out takes them, a field given wins; max_new_tokens is the default
// max_tokens, capped by the room the context leaves.
static void test_sample_defaults(void **state)
{
    const ep_sample_params d = {.temperature = 0.6f, .top_k = 20, .top_p = 0.95f};
    ep_oai_limits lim = LIM;
    lim.sample_defaults = &d;
    lim.default_max_tokens = 10;
    ep_oai_request r;
    ep_oai_error err;
    int *ids, n;
    const char *b = "{\"prompt\":[1,2,3]}";
    assert_int_equal(ep_oai_parse(EP_OAI_COMPLETIONS, b, strlen(b), &lim, &r, &err), 0);
    assert_true(r.sample.temperature == 0.6f && r.sample.top_k == 20 && r.sample.top_p == 0.95f);
    assert_int_equal(ep_oai_prompt(&r, NULL, EP_ARCH_QWEN3_MOE, &lim, &ids, &n, &err), 0);
    assert_int_equal(r.max_tokens, 10);
    free(ids);
    ep_oai_request_free(&r);
    b = "{\"prompt\":[1,2,3],\"temperature\":0,\"top_p\":0.5,\"top_k\":-1,\"max_tokens\":2}";
    assert_int_equal(ep_oai_parse(EP_OAI_COMPLETIONS, b, strlen(b), &lim, &r, &err), 0);
    assert_true(r.sample.temperature == 0.0f && r.sample.top_k == 0 && r.sample.top_p == 0.5f);
    assert_int_equal(ep_oai_prompt(&r, NULL, EP_ARCH_QWEN3_MOE, &lim, &ids, &n, &err), 0);
    assert_int_equal(r.max_tokens, 2);
    free(ids);
    ep_oai_request_free(&r);
    // 60 of 64 tokens taken: the default of 10 becomes the 4 left.
    char body[512];
    size_t k = (size_t)snprintf(body, sizeof body, "{\"prompt\":[");
    for (int i = 0; i < 60; i++)
        k += (size_t)snprintf(body + k, sizeof body - k, "%s1", i ? "," : "");
    snprintf(body + k, sizeof body - k, "]}");
    assert_int_equal(ep_oai_parse(EP_OAI_COMPLETIONS, body, strlen(body), &lim, &r, &err), 0);
    assert_int_equal(ep_oai_prompt(&r, NULL, EP_ARCH_QWEN3_MOE, &lim, &ids, &n, &err), 0);
    assert_int_equal(r.max_tokens, 4);
    free(ids);
    ep_oai_request_free(&r);
}

// Splits "data: X\n\n" events; returns the JSON of event i (a parsed object) or NULL.
static json_t *event(const char *sse, int i, const char **raw)
{
    const char *p = sse;
    for (int k = 0; k <= i; k++) {
        if (strncmp(p, "data: ", 6)) return NULL;
        const char *end = strstr(p, "\n\n");
        if (!end) return NULL;
        if (k == i) {
            if (raw) *raw = p + 6;
            return json_loadb(p + 6, (size_t)(end - p - 6), 0, NULL);
        }
        p = end + 2;
    }
    return NULL;
}

static void test_chunks(void **state)
{
    ep_oai_resp_hdr h = {
        .kind = EP_OAI_CHAT, .id = "chatcmpl-1", .created = 1700000000, .model = "tiny"};
    ep_sbuf b = {0};
    ep_oai_chunk(&b, &h, true, "", 0, NULL);
    const char tricky[] = "a\"b\\c\nd\x01\xc3\xa9\xff";
    ep_oai_chunk(&b, &h, false, tricky, sizeof tricky - 1, NULL);
    ep_oai_chunk(&b, &h, false, "", 0, "length");
    ep_oai_usage_chunk(&b, &h, 4, 3);
    ep_oai_done(&b);
    json_t *j = event(b.p, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion.chunk");
    assert_string_equal(json_string_value(json_object_get(j, "id")), "chatcmpl-1");
    assert_int_equal(json_integer_value(json_object_get(j, "created")), 1700000000);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(c0, "delta"), "role")),
                        "assistant");
    assert_true(json_is_null(json_object_get(c0, "finish_reason")));
    json_decref(j);
    j = event(b.p, 1, NULL);
    assert_non_null(j);
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    json_t *d = json_object_get(c0, "delta");
    assert_null(json_object_get(d, "role"));
    // Escaped exactly; the invalid byte 0xff became U+FFFD.
    assert_string_equal(json_string_value(json_object_get(d, "content")),
                        "a\"b\\c\nd\x01\xc3\xa9\xef\xbf\xbd");
    json_decref(j);
    j = event(b.p, 2, NULL);
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")), "length");
    assert_int_equal(json_object_size(json_object_get(c0, "delta")), 0);
    json_decref(j);
    j = event(b.p, 3, NULL);
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 0);
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 4);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 3);
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 7);
    json_decref(j);
    const char *raw;
    assert_null(event(b.p, 4, &raw)); // [DONE] is not JSON
    assert_string_equal(raw, "[DONE]\n\n");
    ep_sbuf_free(&b);

    // Completions chunk and whole responses.
    h.kind = EP_OAI_COMPLETIONS;
    ep_oai_chunk(&b, &h, false, "xy", 2, "stop");
    j = event(b.p, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "text")), "xy");
    assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")), "stop");
    json_decref(j);
    ep_sbuf_free(&b);
    for (int kind = 0; kind < 2; kind++) {
        h.kind = (ep_oai_kind)kind;
        ep_oai_response(&b, &h, "hello", 5, "stop", 10, 2);
        j = json_loads(b.p, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "object")),
                            kind ? "chat.completion" : "text_completion");
        c0 = json_array_get(json_object_get(j, "choices"), 0);
        json_t *text = kind ? json_object_get(json_object_get(c0, "message"), "content")
                            : json_object_get(c0, "text");
        assert_string_equal(json_string_value(text), "hello");
        if (kind)
            assert_string_equal(
                json_string_value(json_object_get(json_object_get(c0, "message"), "role")),
                "assistant");
        assert_int_equal(
            json_integer_value(json_object_get(json_object_get(j, "usage"), "total_tokens")), 12);
        json_decref(j);
        ep_sbuf_free(&b);
    }
    // Error objects: param null when empty, code set.
    ep_oai_error err;
    ep_oai_errorf(&err, 429, "rate_limit_error", NULL, "rate_limit_exceeded", "queue \"full\"");
    ep_oai_error_chunk(&b, &err);
    j = event(b.p, 0, NULL);
    json_t *e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "message")), "queue \"full\"");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "rate_limit_error");
    assert_true(json_is_null(json_object_get(e, "param")));
    assert_string_equal(json_string_value(json_object_get(e, "code")), "rate_limit_exceeded");
    json_decref(j);
    ep_sbuf_free(&b);
}

static void test_key_equal(void **state)
{
    assert_true(ep_oai_key_equal("secret", 6, "secret", 6));
    assert_false(ep_oai_key_equal("secreT", 6, "secret", 6));
    assert_false(ep_oai_key_equal("secre", 5, "secret", 6));
    assert_false(ep_oai_key_equal("secrets", 7, "secret", 6));
    assert_false(ep_oai_key_equal("", 0, "secret", 6));
    // A given key that matches the expected one followed by a NUL is still wrong.
    assert_false(ep_oai_key_equal("secret\0", 7, "secret", 6));
    assert_true(ep_oai_key_equal("", 0, "", 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),       cmocka_unit_test(test_good_request),
        cmocka_unit_test(test_prompt_lengths), cmocka_unit_test(test_chunks),
        cmocka_unit_test(test_key_equal),      cmocka_unit_test(test_sample_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
