// The HTTP front end against a fake engine (this file defines the ep_engine_*
// calls server/http.c makes, so the real engine is not linked): routes and
// methods, the API key, the body limit, non-streamed and streamed answers in
// the OpenAI shapes, a client that goes away mid-stream cancels its request,
// engine refusals map to 429/503/400 with error objects, an engine failure
// mid-stream ends the stream with an error chunk and [DONE], /health follows
// ep_engine_serving, /metrics counts what was served, generation_config.json
// fills the sampling fields a request leaves out and /v1/models reports it.
// libcurl is the client.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/server.h"

// ---- the fake engine: one token every 2 ms per request, text "t<i> " --------
enum { MAXR = 64 };
struct ep_engine {
    pthread_mutex_t mu;
    pthread_t th;
    bool stop, serving, fail_next; // fail_next: the next token event becomes EV_ERROR
    ep_status refuse;              // submit returns this when set
    struct {
        bool live, cancel;
        uint64_t id;
        int n, max, n_prompt;
        ep_event_fn fn;
        void *user;
    } r[MAXR];
    uint64_t next_id;
    int cancels, submitted, last_routing, last_max_tokens, last_n_prompt, last_n_stop;
    ep_sample_params last_sample;
};

static void *fake_loop(void *arg)
{
    ep_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        if (e->stop) {
            pthread_mutex_unlock(&e->mu);
            return NULL;
        }
        for (int i = 0; i < MAXR; i++) {
            if (!e->r[i].live) continue;
            ep_event ev = {.id = e->r[i].id, .prompt_tokens = e->r[i].n_prompt};
            char text[16];
            if (e->fail_next) {
                e->fail_next = false;
                ev.kind = EP_EV_ERROR;
                ev.error = EP_ERR_COMM;
                ev.message = "engine: rank 1 did not finish step 7 within 30 s";
            } else if (e->r[i].cancel || e->r[i].n == e->r[i].max) {
                ev.kind = EP_EV_FINISH;
                ev.finish_reason = e->r[i].cancel ? "abort" : "length";
                ev.text = "";
                ev.completion_tokens = e->r[i].n;
            } else {
                ev.kind = EP_EV_TOKEN;
                ev.token = 100 + e->r[i].n;
                ev.text_len = (size_t)snprintf(text, sizeof text, "t%d ", e->r[i].n);
                ev.text = text;
                e->r[i].n++;
            }
            if (ev.kind != EP_EV_TOKEN) e->r[i].live = false;
            e->r[i].fn(e->r[i].user, &ev);
        }
        pthread_mutex_unlock(&e->mu);
        usleep(2000);
    }
}

ep_status ep_engine_submit(ep_engine *e, const ep_request *r, ep_event_fn fn, void *user,
                           uint64_t *id)
{
    pthread_mutex_lock(&e->mu);
    ep_status st = e->refuse;
    if (!st && r->pick_domain && !strcmp(r->pick_domain, "nope"))
        st = ep_errorf(EP_ERR_ARG, "engine: pick_domain 'nope' is not a domain of the profile");
    else if (st)
        ep_errorf(st, st == EP_ERR_BUSY ? "engine: 4 requests are waiting (--max-waiting 4)"
                                        : "engine: shutting down");
    int slot = -1;
    for (int i = 0; i < MAXR && !st && slot < 0; i++)
        if (!e->r[i].live) slot = i;
    if (!st) {
        e->r[slot].live = true;
        e->r[slot].cancel = false;
        e->r[slot].id = *id = ++e->next_id;
        e->r[slot].n = 0;
        e->r[slot].max = r->max_tokens;
        e->r[slot].n_prompt = r->n_prompt;
        e->r[slot].fn = fn;
        e->r[slot].user = user;
        e->submitted++;
        e->last_routing = r->routing;
        e->last_max_tokens = r->max_tokens;
        e->last_n_prompt = r->n_prompt;
        e->last_n_stop = r->n_stop;
        e->last_sample = r->sample;
    }
    pthread_mutex_unlock(&e->mu);
    return st;
}

void ep_engine_cancel(ep_engine *e, uint64_t id)
{
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < MAXR; i++)
        if (e->r[i].live && e->r[i].id == id && !e->r[i].cancel) {
            e->r[i].cancel = true;
            e->cancels++;
        }
    pthread_mutex_unlock(&e->mu);
}

int ep_engine_eos_ids(const ep_engine *e, int *ids, int max)
{
    (void)e;
    static const int eos[] = {1023, 7};
    int n = max < 2 ? max : 2;
    memcpy(ids, eos, (size_t)n * sizeof *ids);
    return n;
}

bool ep_engine_serving(const ep_engine *e)
{
    return e->serving;
}
int ep_engine_n_routings(const ep_engine *e)
{
    return 2;
}
const char *ep_engine_routing_name(const ep_engine *e, int i)
{
    return i ? "banpick" : "baseline";
}

ep_status ep_engine_metrics_get(ep_engine *e, ep_engine_metrics *m)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < MAXR; i++)
        m->running += e->r[i].live;
    pthread_mutex_unlock(&e->mu);
    m->generation_tokens = 42;
    m->n_layers = 2;
    m->n_experts = 2;
    m->layer_avg_k = calloc(2, sizeof(double));
    m->layer_load_imbalance = calloc(2, sizeof(double));
    m->expert_load = calloc(4, sizeof(int64_t));
    return EP_OK;
}

void ep_engine_metrics_free(ep_engine_metrics *m)
{
    free(m->layer_avg_k);
    free(m->layer_load_imbalance);
    free(m->expert_load);
}

// ---- the fixture -------------------------------------------------------------
static ep_engine E;
static ep_server *S;
static char base[64];
static ep_model_cfg cfg;

static int setup(void **state)
{
    pthread_mutex_init(&E.mu, NULL);
    E.serving = true;
    pthread_create(&E.th, NULL, fake_loop, &E);
    snprintf(cfg.name, sizeof cfg.name, "tiny");
    cfg.vocab = 1024;
    ep_server_opts o;
    ep_server_opts_default(&o);
    o.port = 0;
    o.api_key = "k3y";
    o.model_name = "tiny";
    o.max_body_bytes = 4096;
    o.max_model_len = 64;
    if (ep_server_start(&o, &E, &cfg, NULL, NULL, &S)) return -1;
    snprintf(base, sizeof base, "http://127.0.0.1:%d", ep_server_port(S));
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return 0;
}

static int teardown(void **state)
{
    ep_server_stop(S);
    pthread_mutex_lock(&E.mu);
    E.stop = true;
    pthread_mutex_unlock(&E.mu);
    pthread_join(E.th, NULL);
    curl_global_cleanup();
    return 0;
}

typedef struct {
    char buf[65536];
    size_t len;
    size_t abort_after; // stop reading once this many bytes arrived (0: never)
} sink;

static size_t on_body(char *p, size_t size, size_t n, void *user)
{
    sink *s = user;
    size_t k = size * n;
    if (s->len + k >= sizeof s->buf) return 0;
    memcpy(s->buf + s->len, p, k);
    s->len += k;
    s->buf[s->len] = 0;
    if (s->abort_after && s->len >= s->abort_after) return 0; // the client goes away
    return k;
}

// Sends a request; returns the HTTP status (0 when the transfer was cut).
static long http(const char *method, const char *path, const char *body, const char *key, sink *out)
{
    CURL *h = curl_easy_init();
    char url[256], auth[128];
    snprintf(url, sizeof url, "%s%s", base, path);
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    if (key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        hd = curl_slist_append(hd, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (body) curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
    out->len = 0;
    out->buf[0] = 0;
    long code = 0;
    if (curl_easy_perform(h) == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    return code;
}

// The body is an OpenAI error object whose message contains needle.
static void assert_error(const sink *s, const char *needle)
{
    json_t *j = json_loads(s->buf, 0, NULL);
    json_t *e = json_object_get(j, "error");
    if (!json_is_string(json_object_get(e, "message")) ||
        !json_is_string(json_object_get(e, "type")) || !json_object_get(e, "param") ||
        !json_object_get(e, "code") ||
        !strstr(json_string_value(json_object_get(e, "message")), needle))
        fail_msg("not an error object naming '%s': %s", needle, s->buf);
    json_decref(j);
}

static sink out;

static void test_routes(void **state)
{
    assert_int_equal(http("GET", "/health", NULL, NULL, &out), 200);
    E.serving = false;
    assert_int_equal(http("GET", "/health", NULL, NULL, &out), 503);
    E.serving = true;
    assert_int_equal(http("GET", "/v1/models", NULL, NULL, &out), 401);
    assert_error(&out, "API key");
    assert_int_equal(http("GET", "/v1/models", NULL, "k3Y", &out), 401);
    assert_int_equal(http("GET", "/v1/models", NULL, "k3y", &out), 200);
    // The scheme is case-insensitive; the key is not.
    CURL *h = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "%s/v1/models", base);
    struct curl_slist *hd = curl_slist_append(NULL, "Authorization: bearer k3y");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
    long code = 0;
    out.len = 0;
    assert_int_equal(curl_easy_perform(h), CURLE_OK);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    assert_int_equal(code, 200);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    json_t *j = json_loads(out.buf, 0, NULL);
    json_t *m0 = json_array_get(json_object_get(j, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(m0, "id")), "tiny");
    // No generation_config.json: OpenAI's defaults, the engine's stop ids.
    json_t *gc = json_object_get(m0, "generation_config");
    assert_true(json_is_null(json_object_get(gc, "file")));
    assert_true(json_number_value(json_object_get(gc, "temperature")) == 1.0);
    assert_true(json_number_value(json_object_get(gc, "top_p")) == 1.0);
    assert_int_equal(json_integer_value(json_object_get(gc, "top_k")), 0);
    assert_true(json_is_null(json_object_get(gc, "max_tokens")));
    assert_int_equal(json_array_size(json_object_get(gc, "eos_token_id")), 2);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(gc, "eos_token_id"), 0)),
                     1023);
    json_decref(j);
    assert_int_equal(http("GET", "/v1/nothing", NULL, "k3y", &out), 404);
    assert_error(&out, "no such endpoint");
    assert_int_equal(http("GET", "/v1/completions", NULL, "k3y", &out), 405);
    assert_int_equal(http("POST", "/health", "{}", NULL, &out), 405);
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(http("POST", "/v1/completions", big, "k3y", &out), 413);
    assert_error(&out, "larger than the limit of 4096 bytes");
    assert_int_equal(
        http("POST", "/v1/completions", "{\"prompt\":[1],\"max_tokens\":65}", "k3y", &out), 400);
    assert_error(&out, "max_tokens");
    assert_int_equal(http("POST", "/v1/completions", "{\"prompt\":\"text\"}", "k3y", &out), 400);
    assert_error(&out, "no tokenizer");
}

static void test_completion(void **state)
{
    int before = E.submitted;
    assert_int_equal(
        http("POST", "/v1/completions",
             "{\"prompt\":[1,2,3],\"max_tokens\":3,\"routing\":\"banpick\",\"stop\":\"x\"}", "k3y",
             &out),
        200);
    assert_int_equal(E.submitted, before + 1);
    assert_int_equal(E.last_routing, 1);
    assert_int_equal(E.last_n_prompt, 3);
    assert_int_equal(E.last_n_stop, 1);
    json_t *j = json_loads(out.buf, 0, NULL);
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c0, "text")), "t0 t1 t2 ");
    assert_string_equal(json_string_value(json_object_get(c0, "finish_reason")), "length");
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 3);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 3);
    json_decref(j);
}

static void test_stream(void **state)
{
    assert_int_equal(
        http("POST", "/v1/chat/completions",
             "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":0}", "k3y",
             &out),
        400); // max_tokens 0 is refused before any tokenizer
    // Chat needs a tokenizer; the stream shapes are the same on completions.
    assert_int_equal(http("POST", "/v1/completions",
                          "{\"prompt\":[5],\"max_tokens\":4,\"stream\":true,"
                          "\"stream_options\":{\"include_usage\":true}}",
                          "k3y", &out),
                     200);
    // 4 token chunks, the final chunk, the usage chunk, [DONE].
    int events = 0;
    char *p = out.buf;
    for (char *e; (e = strstr(p, "\n\n")); p = e + 2, events++)
        assert_memory_equal(p, "data: ", 6);
    assert_int_equal(events, 7);
    assert_non_null(strstr(out.buf, "\"text\":\"t3 \""));
    assert_non_null(strstr(out.buf, "\"finish_reason\":\"length\""));
    assert_non_null(strstr(out.buf, "\"completion_tokens\":4"));
    assert_string_equal(out.buf + out.len - 14, "data: [DONE]\n\n");
}

static void test_disconnect_cancels(void **state)
{
    int before = E.cancels;
    sink s = {.abort_after = 1};
    http("POST", "/v1/completions", "{\"prompt\":[5],\"max_tokens\":60,\"stream\":true}", "k3y",
         &s);
    // Within a second the request is cancelled and ends (the fake frees it).
    int live = 1;
    for (int t = 0; t < 100 && (E.cancels == before || live); t++) {
        usleep(10000);
        pthread_mutex_lock(&E.mu);
        live = 0;
        for (int i = 0; i < MAXR; i++)
            live += E.r[i].live;
        pthread_mutex_unlock(&E.mu);
    }
    assert_int_equal(E.cancels, before + 1);
    assert_int_equal(live, 0);
    // The same for a non-streamed request whose client times out.
    before = E.cancels;
    CURL *h = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "%s/v1/completions", base);
    struct curl_slist *hd = curl_slist_append(NULL, "Authorization: Bearer k3y");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "{\"prompt\":[5],\"max_tokens\":60}");
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30L);
    sink s2 = {0};
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s2);
    assert_int_equal(curl_easy_perform(h), CURLE_OPERATION_TIMEDOUT);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    for (int t = 0; t < 100 && E.cancels == before; t++)
        usleep(10000);
    assert_int_equal(E.cancels, before + 1);
}

static void test_refusals(void **state)
{
    E.refuse = EP_ERR_BUSY;
    assert_int_equal(http("POST", "/v1/completions", "{\"prompt\":[5]}", "k3y", &out), 429);
    assert_error(&out, "waiting");
    E.refuse = EP_ERR_UNAVAILABLE;
    assert_int_equal(
        http("POST", "/v1/completions", "{\"prompt\":[5],\"stream\":true}", "k3y", &out), 503);
    assert_error(&out, "shutting down");
    E.refuse = EP_OK;
    assert_int_equal(
        http("POST", "/v1/completions", "{\"prompt\":[5],\"pick_domain\":\"nope\"}", "k3y", &out),
        400);
    assert_error(&out, "pick_domain");
    // A failure after the stream started: error chunk, then [DONE].
    pthread_mutex_lock(&E.mu);
    E.fail_next = true;
    pthread_mutex_unlock(&E.mu);
    assert_int_equal(http("POST", "/v1/completions",
                          "{\"prompt\":[5],\"max_tokens\":9,\"stream\":true}", "k3y", &out),
                     200);
    assert_non_null(
        strstr(out.buf, "data: {\"error\":{\"message\":\"engine: rank 1 did not finish"));
    assert_string_equal(out.buf + out.len - 14, "data: [DONE]\n\n");
    // ... and for a non-streamed one, 503 with the message.
    pthread_mutex_lock(&E.mu);
    E.fail_next = true;
    pthread_mutex_unlock(&E.mu);
    assert_int_equal(
        http("POST", "/v1/completions", "{\"prompt\":[5],\"max_tokens\":9}", "k3y", &out), 503);
    assert_error(&out, "rank 1");
}

static void test_metrics(void **state)
{
    assert_int_equal(http("GET", "/metrics", NULL, NULL, &out), 200);
    assert_non_null(strstr(out.buf, "epserve:generation_tokens_total{model_name=\"tiny\"} 42\n"));
    // Every request that produced a token so far is in the TTFT histogram.
    const char *c =
        strstr(out.buf, "epserve:time_to_first_token_seconds_count{model_name=\"tiny\"} ");
    assert_non_null(c);
    assert_true(
        atoi(c + strlen("epserve:time_to_first_token_seconds_count{model_name=\"tiny\"} ")) >= 4);
    assert_non_null(
        strstr(out.buf,
               "epserve:request_success_total{model_name=\"tiny\",finished_reason=\"abort\"} 2\n"));
    assert_non_null(strstr(out.buf, "epserve:request_errors_total{model_name=\"tiny\"} 2\n"));
}

// A second server whose model has a generation_config.json: a request that
// leaves a sampling field out gets the file's value, one that sets it keeps
// its own; max_new_tokens is the default max_tokens; /v1/models reports it.
static void test_generation_config(void **state)
{
    char dir[] = "/tmp/ep_test_server_gen_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"do_sample\": true, \"temperature\": 0.6, \"top_k\": 20, \"top_p\": 0.95,\n"
          " \"max_new_tokens\": 5, \"eos_token_id\": [3, 1023], \"bos_token_id\": 1,\n"
          " \"repetition_penalty\": 1.1, \"transformers_version\": \"4.51.0\"}\n",
          f);
    fclose(f);
    ep_gen_config g;
    assert_int_equal(ep_gen_config_read(path, cfg.vocab, &g), EP_OK);
    ep_server_opts o;
    ep_server_opts_default(&o);
    o.port = 0;
    o.model_name = "tiny-gen";
    o.max_model_len = 64;
    o.gen = &g;
    ep_server *s2 = NULL;
    assert_int_equal(ep_server_start(&o, &E, &cfg, NULL, NULL, &s2), EP_OK);
    char saved[64];
    snprintf(saved, sizeof saved, "%s", base);
    snprintf(base, sizeof base, "http://127.0.0.1:%d", ep_server_port(s2));

    assert_int_equal(http("POST", "/v1/completions", "{\"prompt\":[1,2]}", NULL, &out), 200);
    assert_true(E.last_sample.temperature == 0.6f);
    assert_int_equal(E.last_sample.top_k, 20);
    assert_true(E.last_sample.top_p == 0.95f);
    assert_true(E.last_sample.repetition_penalty == 1.1f);
    assert_int_equal(E.last_max_tokens, 5);
    assert_int_equal(http("POST", "/v1/completions",
                          "{\"prompt\":[1,2],\"temperature\":0,\"top_k\":-1,\"max_tokens\":3}",
                          NULL, &out),
                     200);
    assert_true(E.last_sample.temperature == 0.0f);
    assert_int_equal(E.last_sample.top_k, 0);
    assert_true(E.last_sample.top_p == 0.95f); // not in the request: the file's
    assert_int_equal(E.last_max_tokens, 3);

    assert_int_equal(http("GET", "/v1/models", NULL, NULL, &out), 200);
    json_t *j = json_loads(out.buf, 0, NULL);
    json_t *gc =
        json_object_get(json_array_get(json_object_get(j, "data"), 0), "generation_config");
    assert_string_equal(json_string_value(json_object_get(gc, "file")), path);
    assert_true(json_number_value(json_object_get(gc, "temperature")) == 0.6);
    assert_true(json_number_value(json_object_get(gc, "top_p")) == 0.95);
    assert_int_equal(json_integer_value(json_object_get(gc, "top_k")), 20);
    assert_int_equal(json_integer_value(json_object_get(gc, "max_tokens")), 5);
    assert_int_equal(json_integer_value(json_object_get(gc, "bos_token_id")), 1);
    assert_true(json_is_null(json_object_get(gc, "pad_token_id")));
    // repetition_penalty is applied (the sampler has it): a default, not ignored.
    assert_true(json_number_value(json_object_get(gc, "repetition_penalty")) == 1.1);
    assert_int_equal(json_array_size(json_object_get(gc, "ignored")), 0);
    json_decref(j);

    snprintf(base, sizeof base, "%s", saved);
    ep_server_stop(s2);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_completion),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_disconnect_cancels),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_generation_config),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
