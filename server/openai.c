// OpenAI request parsing and response formatting (see openai.h). Parsing is
// strict about what it understands (types, ranges, n == 1) and names the
// field in every refusal; fields that do not change the result (user,
// zero penalties, logprobs null/false) are accepted and ignored, fields that
// would change it and are not implemented (echo, logprobs, best_of > 1,
// suffix, tools on completions, a forced tool_choice) are refused rather
// than silently dropped.
#include "server/openai.h"
#include "common/json_util.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static const char *IRE = "invalid_request_error";

int ep_oai_errorf(ep_oai_error *err, int status, const char *type, const char *param,
                  const char *code, const char *fmt, ...)
{
    err->status = status;
    snprintf(err->type, sizeof err->type, "%s", type ? type : IRE);
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    snprintf(err->code, sizeof err->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return status;
}

void ep_oai_error_json(ep_sbuf *b, const ep_oai_error *err)
{
    ep_sbuf_adds(b, "{\"error\":{\"message\":");
    ep_sbuf_add_json_str(b, err->message, strlen(err->message));
    ep_sbuf_adds(b, ",\"type\":");
    ep_sbuf_add_json_str(b, err->type, strlen(err->type));
    ep_sbuf_adds(b, ",\"param\":");
    if (err->param[0])
        ep_sbuf_add_json_str(b, err->param, strlen(err->param));
    else
        ep_sbuf_adds(b, "null");
    ep_sbuf_adds(b, ",\"code\":");
    if (err->code[0])
        ep_sbuf_add_json_str(b, err->code, strlen(err->code));
    else
        ep_sbuf_adds(b, "null");
    ep_sbuf_adds(b, "}}");
}

void ep_oai_request_free(ep_oai_request *r)
{
    if (!r) return;
    free(r->prompt_text);
    free(r->prompt_ids);
    json_decref(r->messages);
    json_decref(r->tools);
    json_decref(r->chat_kwargs);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->pick_domain);
    *r = (ep_oai_request){0};
}

static char *dup_checked(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

static int nomem(ep_oai_error *err)
{
    return ep_oai_errorf(err, 500, "server_error", NULL, NULL, "out of memory parsing the request");
}

static int type_err(ep_oai_error *err, const char *field, const char *want, const json_t *v)
{
    return ep_oai_errorf(err, 400, IRE, field, NULL, "'%s': expected %s, found %s", field, want,
                         ep_json_type_name(v));
}

// Integer field in [lo, hi]; absent or null leaves *out. Returns 0 or 400.
static int get_int(json_t *o, const char *field, long long lo, long long hi, long long *out,
                   bool *present, ep_oai_error *err)
{
    json_t *v = json_object_get(o, field);
    if (present) *present = false;
    if (!v || json_is_null(v)) return 0;
    if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v) &&
        fabs(json_real_value(v)) < 9e15) {
        // 16.0 from clients that only have doubles
        *out = (long long)json_real_value(v);
    } else if (!json_is_integer(v)) {
        return type_err(err, field, "an integer", v);
    } else {
        *out = json_integer_value(v);
    }
    if (*out < lo || *out > hi)
        return ep_oai_errorf(err, 400, IRE, field, NULL,
                             "'%s': expected an integer in [%lld, %lld], found %lld", field, lo, hi,
                             *out);
    if (present) *present = true;
    return 0;
}

static int get_num(json_t *o, const char *field, double *out, ep_oai_error *err)
{
    json_t *v = json_object_get(o, field);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return type_err(err, field, "a number", v);
    *out = json_number_value(v);
    return 0;
}

static int get_bool(json_t *o, const char *field, bool *out, ep_oai_error *err)
{
    json_t *v = json_object_get(o, field);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return type_err(err, field, "a boolean", v);
    *out = json_is_true(v);
    return 0;
}

// One token-id array as a prompt.
static int parse_ids(json_t *a, const ep_oai_limits *lim, ep_oai_request *r, ep_oai_error *err)
{
    size_t n = json_array_size(a);
    if (n == 0)
        return ep_oai_errorf(err, 400, IRE, "prompt", NULL, "'prompt': the token array is empty");
    if (n > (size_t)lim->max_model_len)
        return ep_oai_errorf(err, 400, IRE, "prompt", NULL,
                             "This model's maximum context length is %d tokens. However, your "
                             "prompt has %zu tokens. Please reduce the length of the prompt.",
                             lim->max_model_len, n);
    r->prompt_ids = malloc(n * sizeof *r->prompt_ids);
    if (!r->prompt_ids) return nomem(err);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v))
            return ep_oai_errorf(err, 400, IRE, "prompt", NULL,
                                 "'prompt'[%zu]: expected a token id (integer), found %s", i,
                                 ep_json_type_name(v));
        json_int_t id = json_integer_value(v);
        if (id < 0 || id >= lim->vocab)
            return ep_oai_errorf(err, 400, IRE, "prompt", NULL,
                                 "'prompt'[%zu]: token id %lld is outside the vocabulary [0, %d)",
                                 i, (long long)id, lim->vocab);
        r->prompt_ids[i] = (int)id;
    }
    r->n_prompt_ids = (int)n;
    return 0;
}

static int parse_prompt(json_t *o, const ep_oai_limits *lim, ep_oai_request *r, ep_oai_error *err)
{
    json_t *p = json_object_get(o, "prompt");
    if (!p || json_is_null(p))
        return ep_oai_errorf(err, 400, IRE, "prompt", NULL, "'prompt' is required");
    if (json_is_string(p)) {
        r->prompt_text = dup_checked(json_string_value(p), json_string_length(p));
        return r->prompt_text ? 0 : nomem(err);
    }
    if (!json_is_array(p)) return type_err(err, "prompt", "a string or an array of token ids", p);
    json_t *first = json_array_get(p, 0);
    if (first && (json_is_string(first) || json_is_array(first))) {
        // A batch of prompts: only a batch of one (the result would need n choices).
        if (json_array_size(p) != 1)
            return ep_oai_errorf(err, 400, IRE, "prompt", NULL,
                                 "'prompt': expected one prompt, found a batch of %zu "
                                 "(send one request per prompt)",
                                 json_array_size(p));
        if (json_is_string(first)) {
            r->prompt_text = dup_checked(json_string_value(first), json_string_length(first));
            return r->prompt_text ? 0 : nomem(err);
        }
        return parse_ids(first, lim, r, err);
    }
    return parse_ids(p, lim, r, err);
}

// One message as the template sees it: role, content (a string, text parts
// joined, or null for an assistant turn), and the keys templates use
// for tools and reasoning, passed as they are.
static int parse_message(json_t *msg, size_t i, json_t **out, ep_oai_error *err)
{
    *out = NULL;
    if (!json_is_object(msg))
        return ep_oai_errorf(err, 400, IRE, "messages", NULL,
                             "'messages'[%zu]: expected an object, found %s", i,
                             ep_json_type_name(msg));
    json_t *role = json_object_get(msg, "role");
    if (!json_is_string(role))
        return ep_oai_errorf(err, 400, IRE, "messages", NULL,
                             "'messages'[%zu].role: expected a string, found %s", i,
                             ep_json_type_name(role));
    const char *rs = json_string_value(role);
    // "developer" is the newer name OpenAI gives the system role.
    if (!strcmp(rs, "developer")) rs = "system";
    if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant") && strcmp(rs, "tool"))
        return ep_oai_errorf(err, 400, IRE, "messages", NULL,
                             "'messages'[%zu].role: expected system, user, assistant or tool, "
                             "found '%.64s'",
                             i, json_string_value(role));
    json_t *c = json_object_get(msg, "content");
    json_t *content;
    if (json_is_string(c)) {
        content = json_incref(c);
    } else if (json_is_array(c)) {
        // Content parts: only text parts, joined.
        ep_sbuf text = {0};
        ep_sbuf_add(&text, "", 0);
        for (size_t k = 0; k < json_array_size(c); k++) {
            json_t *part = json_array_get(c, k);
            json_t *t = json_object_get(part, "type");
            json_t *tx = json_object_get(part, "text");
            if (!json_is_string(t) || strcmp(json_string_value(t), "text") || !json_is_string(tx)) {
                ep_sbuf_free(&text);
                return ep_oai_errorf(err, 400, IRE, "messages", NULL,
                                     "'messages'[%zu].content[%zu]: expected a text part "
                                     "{\"type\": \"text\", \"text\": ...}",
                                     i, k);
            }
            ep_sbuf_add(&text, json_string_value(tx), json_string_length(tx));
        }
        content = json_stringn_nocheck(text.p, text.len);
        ep_sbuf_free(&text);
    } else if ((!c || json_is_null(c)) && !strcmp(rs, "assistant")) {
        content = json_null(); // a turn of tool calls; the template decides what that means
    } else {
        return ep_oai_errorf(err, 400, IRE, "messages", NULL,
                             "'messages'[%zu].content: expected a string or an array of text "
                             "parts, found %s",
                             i, ep_json_type_name(c));
    }
    json_t *m = json_object();
    json_object_set_new(m, "role", json_string(rs));
    json_object_set_new(m, "content", content);
    static const struct {
        const char *key;
        json_type type;
    } keep[] = {{"name", JSON_STRING},
                {"tool_call_id", JSON_STRING},
                {"reasoning_content", JSON_STRING},
                {"tool_calls", JSON_ARRAY}};
    for (size_t k = 0; k < EP_ARRAY_LEN(keep); k++) {
        json_t *v = json_object_get(msg, keep[k].key);
        if (!v || json_is_null(v)) continue;
        if (json_typeof(v) != keep[k].type) {
            json_decref(m);
            return ep_oai_errorf(err, 400, IRE, "messages", NULL,
                                 "'messages'[%zu].%s: expected %s, found %s", i, keep[k].key,
                                 keep[k].type == JSON_STRING ? "a string" : "an array",
                                 ep_json_type_name(v));
        }
        if (keep[k].type == JSON_ARRAY)
            for (size_t j = 0; j < json_array_size(v); j++)
                if (!json_is_object(json_array_get(v, j))) {
                    json_decref(m);
                    return ep_oai_errorf(err, 400, IRE, "messages", NULL,
                                         "'messages'[%zu].%s[%zu]: expected an object, found %s", i,
                                         keep[k].key, j, ep_json_type_name(json_array_get(v, j)));
                }
        json_object_set(m, keep[k].key, v);
    }
    *out = m;
    return 0;
}

static int parse_messages(json_t *o, ep_oai_request *r, ep_oai_error *err)
{
    json_t *m = json_object_get(o, "messages");
    if (!m || json_is_null(m))
        return ep_oai_errorf(err, 400, IRE, "messages", NULL, "'messages' is required");
    if (!json_is_array(m)) return type_err(err, "messages", "an array of messages", m);
    size_t n = json_array_size(m);
    if (n == 0) return ep_oai_errorf(err, 400, IRE, "messages", NULL, "'messages' is empty");
    if (n > EP_OAI_MAX_MESSAGES)
        return ep_oai_errorf(err, 400, IRE, "messages", NULL,
                             "'messages': at most %d messages, found %zu", EP_OAI_MAX_MESSAGES, n);
    r->messages = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *msg;
        int st = parse_message(json_array_get(m, i), i, &msg, err);
        if (st) return st;
        json_array_append_new(r->messages, msg);
    }

    // What the template gets besides the messages.
    json_t *tools = json_object_get(o, "tools");
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools)) return type_err(err, "tools", "an array of tools", tools);
        for (size_t i = 0; i < json_array_size(tools); i++)
            if (!json_is_object(json_array_get(tools, i)))
                return ep_oai_errorf(err, 400, IRE, "tools", NULL,
                                     "'tools'[%zu]: expected an object, found %s", i,
                                     ep_json_type_name(json_array_get(tools, i)));
        r->tools = json_incref(tools);
    }
    json_t *tc = json_object_get(o, "tool_choice");
    if (tc && !json_is_null(tc) &&
        !(json_is_string(tc) &&
          (!strcmp(json_string_value(tc), "auto") || !strcmp(json_string_value(tc), "none"))))
        return ep_oai_errorf(err, 400, IRE, "tool_choice", NULL,
                             "'tool_choice': only \"auto\" and \"none\" are supported (the "
                             "server does not force a tool call)");
    json_t *kw = json_object_get(o, "chat_template_kwargs");
    if (kw && !json_is_null(kw)) {
        if (!json_is_object(kw)) return type_err(err, "chat_template_kwargs", "an object", kw);
        r->chat_kwargs = json_incref(kw);
    }
    r->add_generation_prompt = true;
    int st = get_bool(o, "add_generation_prompt", &r->add_generation_prompt, err);
    if (st) return st;
    json_t *v;
    if ((v = json_object_get(o, "continue_final_message")) && json_is_true(v))
        return ep_oai_errorf(err, 400, IRE, "continue_final_message", NULL,
                             "'continue_final_message': true is not supported");
    if ((v = json_object_get(o, "chat_template")) && !json_is_null(v))
        return ep_oai_errorf(err, 400, IRE, "chat_template", NULL,
                             "'chat_template' is not supported: the server renders the model's "
                             "own template");
    if ((v = json_object_get(o, "documents")) && !json_is_null(v))
        return ep_oai_errorf(err, 400, IRE, "documents", NULL, "'documents' is not supported");
    return 0;
}

static int parse_stop(json_t *o, ep_oai_request *r, ep_oai_error *err)
{
    json_t *s = json_object_get(o, "stop");
    if (!s || json_is_null(s)) return 0;
    json_t *one[1] = {s};
    size_t n = json_is_array(s) ? json_array_size(s) : 1;
    if (!json_is_array(s) && !json_is_string(s))
        return type_err(err, "stop", "a string or an array of strings", s);
    if (n > EP_OAI_MAX_STOP)
        return ep_oai_errorf(err, 400, IRE, "stop", NULL, "'stop': at most %d strings, found %zu",
                             EP_OAI_MAX_STOP, n);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_is_array(s) ? json_array_get(s, i) : one[0];
        if (!json_is_string(v))
            return ep_oai_errorf(err, 400, IRE, "stop", NULL,
                                 "'stop'[%zu]: expected a string, found %s", i,
                                 ep_json_type_name(v));
        size_t len = json_string_length(v);
        if (len == 0 || len > EP_OAI_MAX_STOP_LEN)
            return ep_oai_errorf(err, 400, IRE, "stop", NULL,
                                 "'stop'[%zu]: expected 1 to %d bytes, found %zu", i,
                                 EP_OAI_MAX_STOP_LEN, len);
        r->stop[i] = dup_checked(json_string_value(v), len);
        if (!r->stop[i]) return nomem(err);
        r->n_stop = (int)i + 1;
    }
    return 0;
}

// Fields we do not implement: refused when they would change the result.
static int parse_unsupported(json_t *o, ep_oai_kind kind, ep_oai_error *err)
{
    json_t *v;
    if ((v = json_object_get(o, "echo")) && json_is_true(v))
        return ep_oai_errorf(err, 400, IRE, "echo", NULL, "'echo': true is not supported");
    if ((v = json_object_get(o, "logprobs")) && !json_is_null(v) && !json_is_false(v))
        return ep_oai_errorf(err, 400, IRE, "logprobs", NULL, "'logprobs' is not supported");
    if ((v = json_object_get(o, "suffix")) && !json_is_null(v))
        return ep_oai_errorf(err, 400, IRE, "suffix", NULL, "'suffix' is not supported");
    if ((v = json_object_get(o, "best_of")) && !json_is_null(v) &&
        !(json_is_integer(v) && json_integer_value(v) == 1))
        return ep_oai_errorf(err, 400, IRE, "best_of", NULL, "'best_of': only 1 is supported");
    if (kind == EP_OAI_COMPLETIONS && (v = json_object_get(o, "tools")) && !json_is_null(v) &&
        json_array_size(v) > 0)
        return ep_oai_errorf(err, 400, IRE, "tools", NULL,
                             "'tools' is not supported on completions (chat renders them with "
                             "the model's template)");
    if ((v = json_object_get(o, "response_format")) && !json_is_null(v)) {
        json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!json_is_string(t) || strcmp(json_string_value(t), "text"))
            return ep_oai_errorf(err, 400, IRE, "response_format", NULL,
                                 "'response_format': only {\"type\": \"text\"} is supported "
                                 "(no JSON mode or schema-guided decoding)");
    }
    return 0;
}

// The logits processors of the request (model/sample.h): OpenAI's
// presence_penalty, frequency_penalty and logit_bias ({"token id": bias in
// [-100, 100]}), and vLLM's repetition_penalty and min_tokens.
static int parse_processors(json_t *o, const ep_oai_limits *lim, ep_oai_request *r,
                            ep_oai_error *err)
{
    ep_sample_params *sp = &r->sample;
    static const char *const pen[] = {"presence_penalty", "frequency_penalty"};
    float *dst[] = {&sp->presence_penalty, &sp->frequency_penalty};
    int st;
    for (int i = 0; i < 2; i++) {
        double v = 0;
        if ((st = get_num(o, pen[i], &v, err))) return st;
        if (!(v >= -2 && v <= 2))
            return ep_oai_errorf(err, 400, IRE, pen[i], NULL,
                                 "'%s': expected a number in [-2, 2], found %g", pen[i], v);
        *dst[i] = (float)v;
    }
    // Request > generation_config.json (lim->sample_defaults) > off.
    double rp = lim->sample_defaults && lim->sample_defaults->repetition_penalty > 0
                    ? lim->sample_defaults->repetition_penalty
                    : 1;
    if ((st = get_num(o, "repetition_penalty", &rp, err))) return st;
    if (!(rp > 0 && rp <= 100))
        return ep_oai_errorf(err, 400, IRE, "repetition_penalty", NULL,
                             "'repetition_penalty': expected a number in (0, 100], found %g", rp);
    sp->repetition_penalty = (float)rp;
    long long mt = 0;
    if ((st = get_int(o, "min_tokens", 0, INT32_MAX, &mt, NULL, err))) return st;
    if (r->max_tokens > 0 && mt > r->max_tokens)
        return ep_oai_errorf(err, 400, IRE, "min_tokens", NULL,
                             "'min_tokens' (%lld) must not exceed max_tokens (%d)", mt,
                             r->max_tokens);
    if (mt > 0 && r->n_stop > 0)
        return ep_oai_errorf(err, 400, IRE, "min_tokens", NULL,
                             "'min_tokens' together with 'stop' strings is not supported "
                             "(min_tokens holds back EOS only)");
    sp->min_tokens = (int)mt;
    json_t *lb = json_object_get(o, "logit_bias");
    if (!lb || json_is_null(lb)) return 0;
    if (!json_is_object(lb)) return type_err(err, "logit_bias", "an object", lb);
    if (json_object_size(lb) > EP_SAMPLE_MAX_BIAS)
        return ep_oai_errorf(err, 400, IRE, "logit_bias", NULL,
                             "'logit_bias': at most %d entries, found %zu", EP_SAMPLE_MAX_BIAS,
                             json_object_size(lb));
    const char *key;
    json_t *val;
    json_object_foreach(lb, key, val)
    {
        char *end = NULL;
        long id = strtol(key, &end, 10);
        if (!*key || *end || id < 0 || id >= lim->vocab)
            return ep_oai_errorf(err, 400, IRE, "logit_bias", NULL,
                                 "'logit_bias': key '%.40s' is not a token id in [0, %d)", key,
                                 lim->vocab);
        if (!json_is_number(val) || !(json_number_value(val) >= -100) ||
            !(json_number_value(val) <= 100))
            return ep_oai_errorf(err, 400, IRE, "logit_bias", NULL,
                                 "'logit_bias': the bias of token %ld must be a number in "
                                 "[-100, 100]",
                                 id);
        sp->bias_tok[sp->n_bias] = (int32_t)id;
        sp->bias_val[sp->n_bias++] = (float)json_number_value(val);
    }
    return 0;
}

// 64 bits from the kernel's random source: an unseeded request's stream.
static uint64_t fresh_seed(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = (uint64_t)ep_now_us() ^ (uint64_t)&v;
    return v;
}

static int parse_obj(ep_oai_kind kind, json_t *o, const ep_oai_limits *lim, ep_oai_request *r,
                     ep_oai_error *err)
{
    int st;
    json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model) && !json_is_string(model))
        return type_err(err, "model", "a string", model);
    // A missing model means the only one served (vLLM does the same).
    if (json_is_string(model) && strcmp(json_string_value(model), lim->model_name))
        return ep_oai_errorf(err, 404, IRE, "model", "model_not_found",
                             "The model `%.200s` does not exist (this server serves `%s`).",
                             json_string_value(model), lim->model_name);
    if ((st = parse_unsupported(o, kind, err))) return st;
    long long n = 1;
    json_t *nv = json_object_get(o, "n");
    if (nv && !json_is_null(nv) && !json_is_integer(nv))
        return type_err(err, "n", "an integer", nv);
    if (nv && json_is_integer(nv)) n = json_integer_value(nv);
    if (n != 1)
        return ep_oai_errorf(err, 400, IRE, "n", NULL,
                             "'n': only 1 choice per request is supported, found %lld", n);

    if ((st = kind == EP_OAI_CHAT ? parse_messages(o, r, err) : parse_prompt(o, lim, r, err)))
        return st;

    long long mt = 0;
    bool has = false;
    const char *mt_field = "max_tokens";
    if (kind == EP_OAI_CHAT && json_object_get(o, "max_completion_tokens") &&
        !json_is_null(json_object_get(o, "max_completion_tokens")))
        mt_field = "max_completion_tokens";
    if ((st = get_int(o, mt_field, 1, INT32_MAX, &mt, &has, err))) return st;
    if (has && mt > lim->max_model_len)
        return ep_oai_errorf(err, 400, IRE, mt_field, NULL,
                             "'%s' is too large: %lld; this model's maximum context length is %d "
                             "tokens (prompt and generated)",
                             mt_field, mt, lim->max_model_len);
    r->max_tokens = (int)mt;

    // Request > generation_config.json (lim->sample_defaults) > OpenAI's defaults.
    ep_sample_params_default(&r->sample);
    double temp = 1.0, top_p = 1.0;
    long long top_k = 0, seed = 0;
    if (lim->sample_defaults) {
        temp = lim->sample_defaults->temperature;
        top_p = lim->sample_defaults->top_p;
        top_k = lim->sample_defaults->top_k;
    }
    if ((st = get_num(o, "temperature", &temp, err))) return st;
    if (!isfinite(temp) || temp < 0 || temp > 100)
        return ep_oai_errorf(err, 400, IRE, "temperature", NULL,
                             "'temperature': expected a number in [0, 100], found %g", temp);
    if ((st = get_num(o, "top_p", &top_p, err))) return st;
    if (!(top_p > 0 && top_p <= 1))
        return ep_oai_errorf(err, 400, IRE, "top_p", NULL,
                             "'top_p': expected a number in (0, 1], found %g", top_p);
    bool has_seed = false;
    if ((st = get_int(o, "top_k", -1, INT32_MAX, &top_k, NULL, err))) return st;
    if ((st = get_int(o, "seed", INT64_MIN, INT64_MAX, &seed, &has_seed, err))) return st;
    r->sample.temperature = (float)temp;
    r->sample.top_p = (float)top_p;
    r->sample.top_k = top_k < 0 ? 0 : (int)top_k; // vLLM's -1: no limit
    // No seed: fresh randomness per request (OpenAI's and vLLM's behaviour);
    // a seed makes the stream reproducible across runs and rank counts.
    r->sample.seed = has_seed ? (uint64_t)seed : fresh_seed();

    if ((st = parse_stop(o, r, err))) return st;
    if ((st = parse_processors(o, lim, r, err))) return st;
    if ((st = get_bool(o, "stream", &r->stream, err))) return st;
    if ((st = get_bool(o, "ignore_eos", &r->ignore_eos, err))) return st;
    json_t *so = json_object_get(o, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) return type_err(err, "stream_options", "an object", so);
        if (!r->stream)
            return ep_oai_errorf(err, 400, IRE, "stream_options", NULL,
                                 "'stream_options' is only allowed with 'stream': true");
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu))
            return type_err(err, "stream_options.include_usage", "a boolean", iu);
        r->include_usage = json_is_true(iu);
    }

    r->routing = -1;
    json_t *rt = json_object_get(o, "routing");
    if (rt && !json_is_null(rt)) {
        if (!json_is_string(rt)) return type_err(err, "routing", "a string", rt);
        for (int i = 0; i < lim->n_routings; i++)
            if (!strcmp(lim->routings[i], json_string_value(rt))) r->routing = i;
        if (r->routing < 0) {
            char names[256] = "";
            size_t k = 0;
            for (int i = 0; i < lim->n_routings && k < sizeof names; i++)
                k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", i ? ", " : "",
                                      lim->routings[i]);
            return ep_oai_errorf(err, 400, IRE, "routing", NULL,
                                 "'routing': '%.100s' is not a profile this server loaded "
                                 "(loaded: %s; start the server with --routing to add one)",
                                 json_string_value(rt), names);
        }
    }
    json_t *pd = json_object_get(o, "pick_domain");
    if (pd && !json_is_null(pd)) {
        if (!json_is_string(pd)) return type_err(err, "pick_domain", "a string", pd);
        if (json_string_length(pd) == 0 || json_string_length(pd) > 64)
            return ep_oai_errorf(err, 400, IRE, "pick_domain", NULL,
                                 "'pick_domain': expected 1 to 64 bytes, found %zu",
                                 json_string_length(pd));
        r->pick_domain = dup_checked(json_string_value(pd), json_string_length(pd));
        if (!r->pick_domain) return nomem(err);
    }
    return 0;
}

int ep_oai_parse(ep_oai_kind kind, const char *body, size_t len, const ep_oai_limits *lim,
                 ep_oai_request *r, ep_oai_error *err)
{
    *r = (ep_oai_request){.kind = kind, .routing = -1};
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!o)
        return ep_oai_errorf(err, 400, IRE, NULL, "invalid_json",
                             "malformed JSON in the request body at line %d, column %d: %s",
                             je.line, je.column, je.text);
    int st;
    if (!json_is_object(o))
        st =
            ep_oai_errorf(err, 400, IRE, NULL, NULL,
                          "the request body must be a JSON object, found %s", ep_json_type_name(o));
    else
        st = parse_obj(kind, o, lim, r, err);
    json_decref(o);
    if (st) ep_oai_request_free(r);
    return st;
}

int ep_oai_prompt(ep_oai_request *r, const ep_tokenizer *tok, const ep_chat_template *chat,
                  const ep_oai_limits *lim, int **ids, int *n, ep_oai_error *err)
{
    *ids = NULL;
    *n = 0;
    const char *field = r->kind == EP_OAI_CHAT ? "messages" : "prompt";
    if (r->prompt_ids) {
        *ids = ep_xmalloc((size_t)r->n_prompt_ids * sizeof **ids);
        memcpy(*ids, r->prompt_ids, (size_t)r->n_prompt_ids * sizeof **ids);
        *n = r->n_prompt_ids;
    } else {
        if (!tok)
            return ep_oai_errorf(err, 400, IRE, field, NULL,
                                 "this server has no tokenizer: send the prompt as token ids");
        char *rendered = NULL;
        const char *text = r->prompt_text;
        if (r->kind == EP_OAI_CHAT) {
            if (!chat)
                return ep_oai_errorf(err, 400, IRE, field, NULL,
                                     "this server has no chat template: use /v1/completions");
            if (ep_chat_template_render(chat, r->messages, r->tools, r->add_generation_prompt,
                                        r->chat_kwargs, &rendered))
                return ep_oai_errorf(err, 400, IRE, field, NULL, "%s", ep_last_error());
            text = rendered;
        }
        ep_status st = ep_tokenizer_encode(tok, text, strlen(text), true, ids, n);
        free(rendered);
        if (st) return ep_oai_errorf(err, 400, IRE, field, NULL, "%s", ep_last_error());
    }
    int status = 0;
    if (*n < 1)
        status =
            ep_oai_errorf(err, 400, IRE, field, NULL, "the %s is empty: it has no tokens", field);
    else if (*n >= lim->max_model_len)
        status = ep_oai_errorf(err, 400, IRE, field, NULL,
                               "This model's maximum context length is %d tokens. However, your "
                               "%s has %d tokens, which leaves no room to generate. Please reduce "
                               "the length of the %s.",
                               lim->max_model_len, field, *n, field);
    else if (r->max_tokens == 0 && lim->default_max_tokens > 0)
        r->max_tokens = EP_MIN(lim->default_max_tokens, lim->max_model_len - *n);
    else if (r->max_tokens == 0)
        r->max_tokens =
            r->kind == EP_OAI_CHAT ? lim->max_model_len - *n : EP_MIN(16, lim->max_model_len - *n);
    else if ((int64_t)*n + r->max_tokens > lim->max_model_len)
        status =
            ep_oai_errorf(err, 400, IRE, "max_tokens", NULL,
                          "This model's maximum context length is %d tokens. However, you "
                          "requested %d tokens (%d in the %s, %d for the completion). Please "
                          "reduce the length of the %s or the completion.",
                          lim->max_model_len, *n + r->max_tokens, *n, field, r->max_tokens, field);
    if (status) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return status;
}

// ---- responses ---------------------------------------------------------------

static void hdr(ep_sbuf *b, const ep_oai_resp_hdr *h, bool chunk)
{
    ep_sbuf_adds(b, "{\"id\":");
    ep_sbuf_add_json_str(b, h->id, strlen(h->id));
    ep_sbuf_addf(b, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                 h->kind == EP_OAI_COMPLETIONS ? "text_completion"
                 : chunk                       ? "chat.completion.chunk"
                                               : "chat.completion",
                 h->created);
    ep_sbuf_add_json_str(b, h->model, strlen(h->model));
}

static void finish(ep_sbuf *b, const char *reason)
{
    ep_sbuf_adds(b, ",\"logprobs\":null,\"finish_reason\":");
    if (reason)
        ep_sbuf_add_json_str(b, reason, strlen(reason));
    else
        ep_sbuf_adds(b, "null");
    ep_sbuf_adds(b, "}]");
}

// epserve's own fields, after OpenAI's (clients ignore unknown keys).
static void extension(ep_sbuf *b, const ep_oai_resp_hdr *h)
{
    if (!h->has_pick_domain) return;
    ep_sbuf_adds(b, ",\"epserve\":{\"pick_domain\":");
    if (h->pick_domain[0])
        ep_sbuf_add_json_str(b, h->pick_domain, strlen(h->pick_domain));
    else
        ep_sbuf_adds(b, "null");
    ep_sbuf_adds(b, "}");
}

static void usage(ep_sbuf *b, int prompt_tokens, int completion_tokens)
{
    ep_sbuf_addf(b,
                 ",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}",
                 prompt_tokens, completion_tokens, prompt_tokens + completion_tokens);
}

void ep_oai_response(ep_sbuf *b, const ep_oai_resp_hdr *h, const char *text, size_t len,
                     const char *finish_reason, int prompt_tokens, int completion_tokens)
{
    hdr(b, h, false);
    ep_sbuf_adds(b, ",\"choices\":[{\"index\":0,");
    if (h->kind == EP_OAI_COMPLETIONS) {
        ep_sbuf_adds(b, "\"text\":");
        ep_sbuf_add_json_str(b, text ? text : "", text ? len : 0);
    } else {
        ep_sbuf_adds(b, "\"message\":{\"role\":\"assistant\",\"content\":");
        ep_sbuf_add_json_str(b, text ? text : "", text ? len : 0);
        ep_sbuf_adds(b, "}");
    }
    finish(b, finish_reason);
    usage(b, prompt_tokens, completion_tokens);
    extension(b, h);
    ep_sbuf_adds(b, "}");
}

void ep_oai_chunk(ep_sbuf *b, const ep_oai_resp_hdr *h, bool role, const char *text, size_t len,
                  const char *finish_reason)
{
    ep_sbuf_adds(b, "data: ");
    hdr(b, h, true);
    ep_sbuf_adds(b, ",\"choices\":[{\"index\":0,");
    if (h->kind == EP_OAI_COMPLETIONS) {
        ep_sbuf_adds(b, "\"text\":");
        ep_sbuf_add_json_str(b, text ? text : "", text ? len : 0);
    } else {
        ep_sbuf_adds(b, "\"delta\":{");
        if (role) ep_sbuf_adds(b, "\"role\":\"assistant\"");
        // The final chunk of a chat stream carries an empty delta unless text is left.
        if (!finish_reason || (text && len)) {
            ep_sbuf_adds(b, role ? ",\"content\":" : "\"content\":");
            ep_sbuf_add_json_str(b, text ? text : "", text ? len : 0);
        }
        ep_sbuf_adds(b, "}");
    }
    finish(b, finish_reason);
    if (finish_reason) extension(b, h);
    ep_sbuf_adds(b, "}\n\n");
}

void ep_oai_usage_chunk(ep_sbuf *b, const ep_oai_resp_hdr *h, int prompt_tokens,
                        int completion_tokens)
{
    ep_sbuf_adds(b, "data: ");
    hdr(b, h, true);
    ep_sbuf_adds(b, ",\"choices\":[]");
    usage(b, prompt_tokens, completion_tokens);
    ep_sbuf_adds(b, "}\n\n");
}

void ep_oai_error_chunk(ep_sbuf *b, const ep_oai_error *err)
{
    ep_sbuf_adds(b, "data: ");
    ep_oai_error_json(b, err);
    ep_sbuf_adds(b, "\n\n");
}

void ep_oai_done(ep_sbuf *b)
{
    ep_sbuf_adds(b, "data: [DONE]\n\n");
}

bool ep_oai_key_equal(const char *given, size_t given_len, const char *expected,
                      size_t expected_len)
{
    // Every byte of the expected key is compared (against a byte of the given
    // key, or 0 past its end); the length difference joins the result last.
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < expected_len; i++) {
        unsigned char g = i < given_len ? (unsigned char)given[i] : 0;
        diff |= g ^ (unsigned char)expected[i];
    }
    return (diff | (given_len != expected_len)) == 0;
}
