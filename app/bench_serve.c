// `epserve bench serve`: load test of an OpenAI-compatible server, reported
// as `vllm bench serve` does. Requests arrive as a Poisson process of the
// given rate (or all at once), at most --max-concurrency in flight (one
// worker thread per slot, each with its own libcurl easy handle); each is a
// streamed /v1/completions of --input-len random token ids with ignore_eos
// and max_tokens --output-len, timed per SSE chunk for TTFT and ITL.
#include "app/args.h"
#include "app/commands.h"
#include "common/json_util.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void bench_serve_usage(FILE *f)
{
    fprintf(f,
            "usage: epserve bench serve --url U [options]\n"
            "  --url U               server base URL, e.g. http://127.0.0.1:8000\n"
            "  --num-prompts N       requests to send (default 100)\n"
            "  --request-rate R|inf  Poisson arrivals per second (default inf: all at once)\n"
            "  --max-concurrency C   requests in flight at most (default: num-prompts)\n"
            "  --input-len I         prompt tokens, random ids (default 128)\n"
            "  --output-len O        generated tokens (ignore_eos; default 64)\n"
            "  --routing R           routing profile name sent with each request\n"
            "  --model NAME          model id (default: the first of /v1/models)\n"
            "  --seed S              prompts and arrivals (default 0)\n"
            "  --api-key K           Bearer key (or env EPSERVE_API_KEY)\n"
            "  --json F              write the results as JSON (atomic)\n"
            "  --compare F           the --json of a baseline run of the same workload: prints\n"
            "                        the served speedup and tokens per step against it\n"
            "  --moe-bench F         with --compare: an `epserve bench --json` file whose first\n"
            "                        row is the baseline and which has a row named as --routing;\n"
            "                        prints Amdahl's prediction from its MoE-layer speedup\n");
}

// What --compare and --moe-bench read, checked before any request is sent.
typedef struct {
    bool on, amdahl;
    double out_tp, moe_share, tok_step; // the baseline run's
    double layer_speedup;               // the policy's row of `bench`, over its first row
    char layer_base[64];                // that first row's name
} serve_cmp;

static double cmp_num(json_t *o, const char *path, const char *key, bool *bad)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v) || !(json_number_value(v) >= 0)) {
        fprintf(stderr, "epserve bench serve: %s: expected a number >= 0 at key '%s', found %s\n",
                path, key, v ? "another value" : "none");
        *bad = true;
        return 0;
    }
    return json_number_value(v);
}

// Reads the baseline run (same prompts, lengths and concurrency, else the
// ratio means nothing) and, with bench_path, the MoE-layer speedup of the
// row named `routing`. false after an error naming the file and key.
static bool load_compare(const char *path, const char *bench_path, const char *routing, long num,
                         long conc, long in_len, long out_len, serve_cmp *c)
{
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o) {
        fprintf(stderr, "epserve bench serve: --compare %s: %s (line %d)\n", path, je.text,
                je.line);
        return false;
    }
    bool bad = false;
    const struct {
        const char *key;
        long want;
    } same[] = {{"num_prompts", num},
                {"max_concurrency", conc},
                {"input_len", in_len},
                {"output_len", out_len}};
    for (size_t i = 0; i < sizeof same / sizeof same[0] && !bad; i++) {
        double v = cmp_num(o, path, same[i].key, &bad);
        if (!bad && v != (double)same[i].want) {
            fprintf(stderr,
                    "epserve bench serve: --compare %s: '%s' is %.0f, this run's is %ld (compare "
                    "runs of the same workload)\n",
                    path, same[i].key, v, same[i].want);
            bad = true;
        }
    }
    if (!bad) c->out_tp = cmp_num(o, path, "output_throughput", &bad);
    if (!bad) c->moe_share = cmp_num(o, path, "moe_share", &bad);
    if (!bad) c->tok_step = cmp_num(o, path, "tokens_per_step", &bad);
    json_decref(o);
    if (bad) return false;
    c->on = true;
    if (!bench_path) return true;
    if (!routing) {
        fprintf(stderr, "epserve bench serve: --moe-bench needs --routing (the row to read)\n");
        return false;
    }
    o = json_load_file(bench_path, 0, &je);
    if (!o) {
        fprintf(stderr, "epserve bench serve: --moe-bench %s: %s (line %d)\n", bench_path, je.text,
                je.line);
        return false;
    }
    json_t *rows = json_object_get(o, "policies");
    size_t n = json_is_array(rows) ? json_array_size(rows) : 0;
    // bench names a row after a routing file's base name (ep_arg_policy_label):
    // `calibrated/x` is served as that, benched as `x`.
    char label[256];
    ep_arg_policy_label(routing, label, sizeof label);
    json_t *row = NULL;
    for (size_t i = 0; i < n && !row; i++) {
        const char *name = json_string_value(json_object_get(json_array_get(rows, i), "name"));
        if (name && (!strcmp(name, routing) || !strcmp(name, label))) row = json_array_get(rows, i);
    }
    if (!row) {
        fprintf(stderr,
                "epserve bench serve: --moe-bench %s: expected an array 'policies' with a row "
                "named '%s' or '%s', found %zu rows without it\n",
                bench_path, routing, label, n);
        json_decref(o);
        return false;
    }
    const char *b0 = json_string_value(json_object_get(json_array_get(rows, 0), "name"));
    snprintf(c->layer_base, sizeof c->layer_base, "%s", b0 ? b0 : "?");
    c->layer_speedup = cmp_num(row, bench_path, "speedup", &bad);
    json_decref(o);
    if (bad) return false;
    if (!(c->layer_speedup > 0)) {
        fprintf(stderr, "epserve bench serve: --moe-bench %s: row '%s' has speedup 0\n", bench_path,
                routing);
        return false;
    }
    c->amdahl = true;
    return true;
}

typedef struct {
    bool ok;
    char error[256];
    int prompt_tokens, output_tokens;
    double ttft_s, e2e_s;
    double *itl_s; // [n_itl]
    int n_itl, cap_itl;
} req_result;

typedef struct {
    // shared, read-only while running
    const char *url, *model, *routing, *api_key;
    int num_prompts, input_len, output_len, vocab;
    uint64_t seed;
    double *arrival_s; // [num_prompts] offsets from the start
    double t0;
    // shared, under mu
    pthread_mutex_t mu;
    int next;
    req_result *res;
} bench_ctx;

// One streamed response being read.
typedef struct {
    char *buf;
    size_t len, cap;
    double t_send, t_last;
    int n_chunks;
    bool done;
    req_result *r;
} stream_state;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

// splitmix64: prompts and arrivals from --seed alone.
static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void on_event(stream_state *s, const char *data, size_t n)
{
    req_result *r = s->r;
    if (n == 6 && !memcmp(data, "[DONE]", 6)) {
        s->done = true;
        return;
    }
    json_error_t je;
    json_t *j = json_loadb(data, n, JSON_ALLOW_NUL, &je); // model text may hold U+0000
    if (!j) {
        snprintf(r->error, sizeof r->error, "unparsable SSE data (%s, at byte %d of %zu): %.*s",
                 je.text, je.position, n, (int)(n < 120 ? n : 120), data);
        return;
    }
    json_t *err = json_object_get(j, "error");
    if (err) {
        snprintf(r->error, sizeof r->error, "server error in stream: %s",
                 json_string_value(json_object_get(err, "message")) ?: "?");
    }
    json_t *usage = json_object_get(j, "usage");
    if (json_is_object(usage)) {
        r->prompt_tokens = (int)json_integer_value(json_object_get(usage, "prompt_tokens"));
        r->output_tokens = (int)json_integer_value(json_object_get(usage, "completion_tokens"));
    }
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    // A chunk without a finish reason carries one token (the server sends one per token).
    if (c0 && json_is_null(json_object_get(c0, "finish_reason"))) {
        double t = now_s();
        if (s->n_chunks == 0) {
            r->ttft_s = t - s->t_send;
        } else {
            if (r->n_itl == r->cap_itl) {
                r->cap_itl = r->cap_itl ? 2 * r->cap_itl : 64;
                r->itl_s = ep_xrealloc(r->itl_s, (size_t)r->cap_itl * sizeof *r->itl_s);
            }
            r->itl_s[r->n_itl++] = t - s->t_last;
        }
        s->t_last = t;
        s->n_chunks++;
    }
    json_decref(j);
}

static size_t on_data(char *p, size_t size, size_t nmemb, void *user)
{
    stream_state *s = user;
    size_t n = size * nmemb;
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->buf = ep_xrealloc(s->buf, s->cap);
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = 0;
    if (!s->r) return n; // a plain body (GET /v1/models): kept whole
    // Complete events end in a blank line.
    char *start = s->buf, *end;
    while ((end = strstr(start, "\n\n"))) {
        if (!strncmp(start, "data: ", 6)) on_event(s, start + 6, (size_t)(end - start - 6));
        start = end + 2;
    }
    size_t used = (size_t)(start - s->buf);
    memmove(s->buf, start, s->len - used + 1);
    s->len -= used;
    return n;
}

static void run_one(bench_ctx *c, CURL *h, int i, req_result *r)
{
    uint64_t rng = c->seed * 0x100000001B3ull + (uint64_t)i + 1;
    char *body = ep_xmalloc((size_t)c->input_len * 12 + 512);
    size_t k = (size_t)sprintf(body, "{\"model\":\"%s\",\"prompt\":[", c->model);
    for (int t = 0; t < c->input_len; t++)
        k += (size_t)sprintf(body + k, "%s%d", t ? "," : "", (int)(mix(&rng) % (uint64_t)c->vocab));
    k +=
        (size_t)sprintf(body + k,
                        "],\"max_tokens\":%d,\"ignore_eos\":true,\"temperature\":0,\"stream\":true,"
                        "\"stream_options\":{\"include_usage\":true}",
                        c->output_len);
    if (c->routing) k += (size_t)sprintf(body + k, ",\"routing\":\"%s\"", c->routing);
    sprintf(body + k, "}");

    char url[1024];
    snprintf(url, sizeof url, "%s/v1/completions", c->url);
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    char auth[512];
    if (c->api_key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->api_key);
        hd = curl_slist_append(hd, auth);
    }
    stream_state s = {.r = r};
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 600L);
    s.t_send = now_s();
    CURLcode cc = curl_easy_perform(h);
    r->e2e_s = now_s() - s.t_send;
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    if (cc != CURLE_OK) {
        snprintf(r->error, sizeof r->error, "%s", curl_easy_strerror(cc));
    } else if (code != 200) {
        // The body is the OpenAI error object.
        json_t *j = s.buf ? json_loads(s.buf, 0, NULL) : NULL;
        const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        snprintf(r->error, sizeof r->error, "HTTP %ld: %s", code, m ? m : "(no error object)");
        json_decref(j);
    } else if (!r->error[0] && !s.done) {
        snprintf(r->error, sizeof r->error, "the stream ended without data: [DONE]");
    }
    if (!r->output_tokens) r->output_tokens = s.n_chunks;
    if (!r->prompt_tokens) r->prompt_tokens = c->input_len;
    r->ok = !r->error[0];
    free(s.buf);
    free(body);
    curl_slist_free_all(hd);
}

static void *worker(void *arg)
{
    bench_ctx *c = arg;
    CURL *h = curl_easy_init();
    for (;;) {
        pthread_mutex_lock(&c->mu);
        int i = c->next < c->num_prompts ? c->next++ : -1;
        pthread_mutex_unlock(&c->mu);
        if (i < 0) break;
        double wait = c->t0 + c->arrival_s[i] - now_s();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - floor(wait)) * 1e9)};
            nanosleep(&ts, NULL);
        }
        if (h)
            run_one(c, h, i, &c->res[i]);
        else
            snprintf(c->res[i].error, sizeof c->res[i].error, "curl_easy_init failed");
    }
    curl_easy_cleanup(h);
    return NULL;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// Percentile with linear interpolation (numpy's default), of sorted v[n].
static double pct(const double *v, int n, double p)
{
    if (n == 0) return 0;
    double pos = p / 100 * (n - 1);
    int lo = (int)floor(pos);
    int hi = lo + 1 < n ? lo + 1 : lo;
    return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

typedef struct {
    double mean, median, p99;
} stat3;

static stat3 stats_ms(double *v, int n)
{
    stat3 s = {0};
    if (!n) return s;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += v[i];
    s.mean = sum / n * 1e3;
    s.median = pct(v, n, 50) * 1e3;
    s.p99 = pct(v, n, 99) * 1e3;
    return s;
}

// GET /v1/models: the first model's id and the vocabulary size (epserve's extension).
static bool get_model(const char *url, const char *api_key, char *model, size_t n, int *vocab,
                      char *err, size_t errn)
{
    CURL *h = curl_easy_init();
    if (!h) return snprintf(err, errn, "curl_easy_init failed"), false;
    char u[1024];
    snprintf(u, sizeof u, "%s/v1/models", url);
    stream_state s = {0};
    struct curl_slist *hd = NULL;
    char auth[512];
    if (api_key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", api_key);
        hd = curl_slist_append(hd, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, u);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode cc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    bool ok = false;
    json_t *j = cc == CURLE_OK && s.buf ? json_loads(s.buf, 0, NULL) : NULL;
    json_t *m0 = json_array_get(json_object_get(j, "data"), 0);
    if (cc != CURLE_OK) {
        snprintf(err, errn, "GET %.400s: %s", u, curl_easy_strerror(cc));
    } else if (code != 200 || !json_is_string(json_object_get(m0, "id"))) {
        snprintf(err, errn, "GET %.400s: HTTP %ld, expected a model list", u, code);
    } else {
        if (!model[0]) snprintf(model, n, "%s", json_string_value(json_object_get(m0, "id")));
        json_t *v = json_object_get(m0, "vocab_size");
        if (json_is_integer(v) && json_integer_value(v) > 0) *vocab = (int)json_integer_value(v);
        ok = true;
    }
    json_decref(j);
    free(s.buf);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    return ok;
}

// The counters of an epserve server's /metrics: v[0..3) the MoE bytes
// (dispatch, combine, saved against top-k_base), v[3..7) the routing
// profile's steps, tokens, admitted slots (per MoE layer) and pairs /
// token-layers... of `routing` (NULL: summed over every profile); false when
// the server exposes none.
enum {
    BS_M_DISPATCH,
    BS_M_COMBINE,
    BS_M_SAVED,
    BS_M_STEPS,
    BS_M_TOKENS,
    BS_M_SLOTS,
    BS_M_PAIRS,
    BS_M_TOKEN_LAYERS,
    BS_M_FORWARD_S,
    BS_M_MOE_S,
    // Server-wide (every profile): bytes across / within nodes, actual and top-k_base.
    BS_M_INTER,
    BS_M_INTRA,
    BS_M_BASE_INTER,
    BS_M_BASE_INTRA,
    BS_M_N
};
static bool get_moe_bytes(const char *url, const char *routing, double v[BS_M_N])
{
    CURL *h = curl_easy_init();
    if (!h) return false;
    char u[1024];
    snprintf(u, sizeof u, "%s/metrics", url);
    stream_state s = {0};
    curl_easy_setopt(h, CURLOPT_URL, u);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    long code = 0;
    bool ok = curl_easy_perform(h) == CURLE_OK &&
              curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK && code == 200 &&
              s.buf;
    static const char *const names[BS_M_N] = {"epserve:moe_dispatch_bytes_total{",
                                              "epserve:moe_combine_bytes_total{",
                                              "epserve:moe_bytes_saved_total{",
                                              "epserve:routing_steps_total{",
                                              "epserve:routing_tokens_total{",
                                              "epserve:routing_slots_total{",
                                              "epserve:routing_pairs_total{",
                                              "epserve:routing_token_layers_total{",
                                              "epserve:routing_forward_seconds_total{",
                                              "epserve:routing_moe_seconds_total{",
                                              "epserve:moe_inter_node_bytes_total{",
                                              "epserve:moe_intra_node_bytes_total{",
                                              "epserve:moe_baseline_inter_node_bytes_total{",
                                              "epserve:moe_baseline_intra_node_bytes_total{"};
    char want[160] = "";
    if (routing) snprintf(want, sizeof want, "routing=\"%s\"}", routing);
    int found = 0;
    for (int i = 0; i < BS_M_N; i++)
        v[i] = 0;
    for (const char *l = ok ? s.buf : ""; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "") {
        for (int i = 0; i < BS_M_N; i++)
            if (!strncmp(l, names[i], strlen(names[i]))) {
                const char *sp = strchr(l, '}');
                sp = sp ? strchr(sp, ' ') : NULL;
                if (!sp) continue;
                // The profile's line (a routing series), or every profile's.
                if (i >= BS_M_STEPS && i <= BS_M_MOE_S && routing) {
                    const char *end = strchr(l, '}');
                    const size_t wl = strlen(want);
                    if ((size_t)(end + 1 - l) < wl || strncmp(end + 1 - wl, want, wl)) continue;
                }
                v[i] += strtod(sp + 1, NULL);
                found |= 1 << i;
            }
    }
    free(s.buf);
    curl_easy_cleanup(h);
    return (found & 7) == 7;
}

int ep_cmd_bench_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},
        {"num-prompts", required_argument, 0, 'n'},
        {"request-rate", required_argument, 0, 'r'},
        {"max-concurrency", required_argument, 0, 'c'},
        {"input-len", required_argument, 0, 'i'},
        {"output-len", required_argument, 0, 'o'},
        {"routing", required_argument, 0, 'R'},
        {"model", required_argument, 0, 'm'},
        {"seed", required_argument, 0, 's'},
        {"api-key", required_argument, 0, 'k'},
        {"json", required_argument, 0, 'j'},
        {"compare", required_argument, 0, 'C'},
        {"moe-bench", required_argument, 0, 'B'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *url = NULL, *routing = NULL, *json_path = NULL, *cmp_path = NULL, *moe_bench = NULL,
               *api_key = getenv("EPSERVE_API_KEY");
    char model[256] = "";
    long num = 100, conc = 0, in_len = 128, out_len = 64, seed = 0;
    double rate = INFINITY;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        long *dst = NULL, lo = 1, hi = 1 << 24;
        const char *name = NULL;
        switch (c) {
        case 'u':
            url = optarg;
            break;
        case 'R':
            routing = optarg;
            break;
        case 'm':
            snprintf(model, sizeof model, "%s", optarg);
            break;
        case 'k':
            api_key = optarg;
            break;
        case 'j':
            json_path = optarg;
            break;
        case 'C':
            cmp_path = optarg;
            break;
        case 'B':
            moe_bench = optarg;
            break;
        case 'n':
            dst = &num, name = "--num-prompts";
            break;
        case 'c':
            dst = &conc, name = "--max-concurrency", hi = 4096;
            break;
        case 'i':
            dst = &in_len, name = "--input-len";
            break;
        case 'o':
            dst = &out_len, name = "--output-len";
            break;
        case 's':
            dst = &seed, name = "--seed", lo = 0, hi = 1L << 62;
            break;
        case 'r':
            if (!strcmp(optarg, "inf")) {
                rate = INFINITY;
            } else {
                char *end;
                rate = strtod(optarg, &end);
                if (*end || !(rate > 0) || !isfinite(rate)) {
                    fprintf(stderr,
                            "epserve bench serve: --request-rate: expected a rate > 0 or "
                            "'inf', found '%s'\n",
                            optarg);
                    return 2;
                }
            }
            break;
        case 'h':
            bench_serve_usage(stdout);
            return 0;
        default:
            bench_serve_usage(stderr);
            return 2;
        }
        if (dst) {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (!*optarg || *end || errno || v < lo || v > hi) {
                fprintf(stderr,
                        "epserve bench serve: %s: expected an integer in [%ld, %ld], found '%s'\n",
                        name, lo, hi, optarg);
                return 2;
            }
            *dst = v;
        }
    }
    if (optind < argc || !url) {
        fprintf(stderr,
                optind < argc ? "epserve bench serve: unexpected argument '%s'\n"
                              : "epserve bench serve: --url is required%s\n",
                optind < argc ? argv[optind] : "");
        bench_serve_usage(stderr);
        return 2;
    }
    if (strchr(model, '"') || (routing && strchr(routing, '"'))) {
        fprintf(stderr, "epserve bench serve: --model and --routing may not contain '\"'\n");
        return 2;
    }
    if (!conc || conc > num) conc = num;
    serve_cmp cmp = {0};
    if (moe_bench && !cmp_path) {
        fprintf(stderr, "epserve bench serve: --moe-bench needs --compare (the baseline run)\n");
        return 2;
    }
    if (cmp_path && !load_compare(cmp_path, moe_bench, routing, num, conc, in_len, out_len, &cmp))
        return 2;
    char base[1024];
    snprintf(base, sizeof base, "%s", url);
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        base[--bl] = 0;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    char err[512];
    int vocab = 1000;
    if (!get_model(base, api_key, model, sizeof model, &vocab, err, sizeof err)) {
        fprintf(stderr, "epserve bench serve: %s\n", err);
        curl_global_cleanup();
        return 1;
    }

    bench_ctx ctx = {.url = base,
                     .model = model,
                     .routing = routing,
                     .api_key = api_key,
                     .num_prompts = (int)num,
                     .input_len = (int)in_len,
                     .output_len = (int)out_len,
                     .vocab = vocab,
                     .seed = (uint64_t)seed};
    ctx.arrival_s = ep_xcalloc((size_t)num, sizeof *ctx.arrival_s);
    ctx.res = ep_xcalloc((size_t)num, sizeof *ctx.res);
    uint64_t rng = (uint64_t)seed ^ 0xA5A5A5A5ull;
    double t = 0;
    for (long i = 0; i < num; i++) {
        if (isfinite(rate) && i > 0) {
            double u = ((double)(mix(&rng) >> 11) + 0.5) / 9007199254740992.0; // (0, 1)
            t += -log(u) / rate;
        }
        ctx.arrival_s[i] = t;
    }
    pthread_mutex_init(&ctx.mu, NULL);
    char rate_s[32] = "inf";
    if (isfinite(rate)) snprintf(rate_s, sizeof rate_s, "%g/s (Poisson)", rate);
    fprintf(stderr,
            "bench serve: %ld requests to %s (model %s%s%s), rate %s, concurrency %ld, input %ld, "
            "output %ld\n",
            num, base, model, routing ? ", routing " : "", routing ? routing : "", rate_s, conc,
            in_len, out_len);
    double moe0[BS_M_N] = {0}, moe1[BS_M_N] = {0};
    bool have_moe = get_moe_bytes(base, routing, moe0);
    pthread_t *th = ep_xcalloc((size_t)conc, sizeof *th);
    ctx.t0 = now_s();
    int started = 0;
    for (long i = 0; i < conc; i++)
        started += pthread_create(&th[i], NULL, worker, &ctx) == 0;
    for (long i = 0; i < conc; i++)
        if (th[i]) pthread_join(th[i], NULL);
    double duration = now_s() - ctx.t0;
    have_moe = have_moe && get_moe_bytes(base, routing, moe1);
    // The server's counters over the run (exact when nothing else used the server).
    double moe_bytes = moe1[0] + moe1[1] - moe0[0] - moe0[1], moe_saved = moe1[2] - moe0[2];
    double d[BS_M_N];
    for (int i = 0; i < BS_M_N; i++)
        d[i] = moe1[i] - moe0[i];
    // Per step of the run's profile: tokens and admitted slots (per MoE
    // layer), and the mean K its tokens kept.
    const bool have_steps = have_moe && d[BS_M_STEPS] > 0;
    const double tok_step = have_steps ? d[BS_M_TOKENS] / d[BS_M_STEPS] : 0;
    const double slot_step = have_steps ? d[BS_M_SLOTS] / d[BS_M_STEPS] : 0;
    const double run_k = d[BS_M_TOKEN_LAYERS] > 0 ? d[BS_M_PAIRS] / d[BS_M_TOKEN_LAYERS] : 0;
    // The MoE layers' share of rank 0's forward time: the f of Amdahl's law
    // for a policy that speeds up the MoE layers only.
    const double moe_share = d[BS_M_FORWARD_S] > 0 ? d[BS_M_MOE_S] / d[BS_M_FORWARD_S] : 0;
    if (!started) {
        fprintf(stderr, "epserve bench serve: could not start worker threads\n");
        return 1;
    }

    int ok = 0, failed = 0, n_itl = 0;
    long long in_tok = 0, out_tok = 0;
    for (long i = 0; i < num; i++) {
        req_result *r = &ctx.res[i];
        if (r->ok)
            ok++, in_tok += r->prompt_tokens, out_tok += r->output_tokens, n_itl += r->n_itl;
        else
            failed++;
    }
    double *ttft = ep_xcalloc((size_t)ok + 1, sizeof *ttft),
           *tpot = ep_xcalloc((size_t)ok + 1, sizeof *tpot);
    double *e2e = ep_xcalloc((size_t)ok + 1, sizeof *e2e),
           *itl = ep_xcalloc((size_t)n_itl + 1, sizeof *itl);
    int k = 0, kt = 0, ki = 0;
    const char *first_err = NULL;
    for (long i = 0; i < num; i++) {
        req_result *r = &ctx.res[i];
        if (!r->ok) {
            if (!first_err) first_err = r->error;
            continue;
        }
        ttft[k] = r->ttft_s;
        e2e[k++] = r->e2e_s;
        if (r->output_tokens > 1) tpot[kt++] = (r->e2e_s - r->ttft_s) / (r->output_tokens - 1);
        for (int q = 0; q < r->n_itl; q++)
            itl[ki++] = r->itl_s[q];
    }
    stat3 s_ttft = stats_ms(ttft, k), s_tpot = stats_ms(tpot, kt), s_itl = stats_ms(itl, ki),
          s_e2e = stats_ms(e2e, k);
    double req_tp = ok / duration, out_tp = (double)out_tok / duration,
           tot_tp = (double)(in_tok + out_tok) / duration;

    printf("============ Serving Benchmark Result ============\n");
    printf("%-40s %s\n", "Routing:", routing ? routing : "(server default)");
    printf("%-40s %d\n", "Successful requests:", ok);
    printf("%-40s %d\n", "Failed requests:", failed);
    printf("%-40s %ld\n", "Maximum request concurrency:", conc);
    printf("%-40s %.2f\n", "Benchmark duration (s):", duration);
    printf("%-40s %lld\n", "Total input tokens:", in_tok);
    printf("%-40s %lld\n", "Total generated tokens:", out_tok);
    printf("%-40s %.2f\n", "Request throughput (req/s):", req_tp);
    printf("%-40s %.2f\n", "Output token throughput (tok/s):", out_tp);
    printf("%-40s %.2f\n", "Total token throughput (tok/s):", tot_tp);
    static const char *const titles[4] = {"Time to First Token",
                                          "Time per Output Token (excl. 1st token)",
                                          "Inter-token Latency", "End-to-end Latency"};
    static const char *const abbr[4] = {"TTFT", "TPOT", "ITL", "E2EL"};
    stat3 all[4] = {s_ttft, s_tpot, s_itl, s_e2e};
    for (int q = 0; q < 4; q++) {
        int pad = 50 - (int)strlen(titles[q]);
        printf("%.*s%s%.*s\n", pad / 2, "--------------------------", titles[q], pad - pad / 2,
               "--------------------------");
        char l[64];
        snprintf(l, sizeof l, "Mean %s (ms):", abbr[q]);
        printf("%-40s %.2f\n", l, all[q].mean);
        snprintf(l, sizeof l, "Median %s (ms):", abbr[q]);
        printf("%-40s %.2f\n", l, all[q].median);
        snprintf(l, sizeof l, "P99 %s (ms):", abbr[q]);
        printf("%-40s %.2f\n", l, all[q].p99);
    }
    if (have_moe) {
        printf("%.*s%s%.*s\n", 11, "--------------------------", "MoE all-to-all (server /metrics)",
               7, "--------------------------");
        printf("%-40s %.3f\n", "Dispatch + combine (MB):", moe_bytes / 1e6);
        printf("%-40s %.3f\n", "Saved vs top-k_base (MB):", moe_saved / 1e6);
        printf("%-40s %.1f\n", "Saved vs top-k_base (%):",
               moe_bytes + moe_saved > 0 ? 100 * moe_saved / (moe_bytes + moe_saved) : 0);
        // Server-wide (all profiles), across / within nodes.
        printf("%-40s %.3f\n", "Inter-node (MB, all profiles):", d[BS_M_INTER] / 1e6);
        printf("%-40s %.3f\n", "Intra-node (MB, all profiles):", d[BS_M_INTRA] / 1e6);
        printf("%-40s %.3f\n", "Inter-node top-k_base (MB, all):", d[BS_M_BASE_INTER] / 1e6);
        printf("%-40s %.3f\n", "Intra-node top-k_base (MB, all):", d[BS_M_BASE_INTRA] / 1e6);
        if (have_steps) {
            printf("%-40s %.1f\n", "Tokens per step:", tok_step);
            printf("%-40s %.1f\n", "Slots per step (per MoE layer):", slot_step);
            printf("%-40s %.3f\n", "Avg K (experts per token):", run_k);
            printf("%-40s %.3f\n", "MoE share of forward time (rank 0):", moe_share);
        }
    }
    // Against the baseline run: the served speedup, and what Amdahl's law
    // predicts from the baseline's MoE share f and the MoE-layer speedup s
    // `bench` measured: 1 / ((1 - f) + f / s).
    const double served = cmp.on && cmp.out_tp > 0 ? out_tp / cmp.out_tp : 0;
    const double amdahl =
        cmp.amdahl ? 1.0 / ((1 - cmp.moe_share) + cmp.moe_share / cmp.layer_speedup) : 0;
    const double tok_ratio = cmp.on && cmp.tok_step > 0 ? tok_step / cmp.tok_step : 0;
    if (cmp.on) {
        printf("%.*s%s%.*s\n", 14, "--------------------------", "Against the baseline run", 12,
               "--------------------------");
        printf("%-40s %.3f\n", "Served speedup (output tok/s):", served);
        printf("%-40s %.3f\n", "Tokens per step / baseline's:", tok_ratio);
        if (cmp.amdahl) {
            printf("%-40s %.3f\n", "MoE share of a baseline step (f):", cmp.moe_share);
            char l[128];
            snprintf(l, sizeof l, "MoE-layer speedup vs %.64s (s, bench):", cmp.layer_base);
            printf("%-40s %.3f\n", l, cmp.layer_speedup);
            printf("%-40s %.3f\n", "Amdahl 1/((1-f)+f/s):", amdahl);
            printf("%-40s %.3f\n", "Served / Amdahl:", served / amdahl);
        }
    }
    printf("==================================================\n");
    if (first_err) printf("first failure: %s\n", first_err);
    fflush(stdout);

    int code = 0;
    if (json_path) {
        json_t *o = json_object();
        json_object_set_new(o, "url", json_string(base));
        json_object_set_new(o, "model", json_string(model));
        json_object_set_new(o, "routing", routing ? json_string(routing) : json_null());
        json_object_set_new(o, "num_prompts", json_integer(num));
        json_object_set_new(o, "request_rate",
                            isfinite(rate) ? json_real(rate) : json_string("inf"));
        json_object_set_new(o, "max_concurrency", json_integer(conc));
        json_object_set_new(o, "input_len", json_integer(in_len));
        json_object_set_new(o, "output_len", json_integer(out_len));
        json_object_set_new(o, "completed", json_integer(ok));
        json_object_set_new(o, "failed", json_integer(failed));
        json_object_set_new(o, "duration", json_real(duration));
        json_object_set_new(o, "total_input_tokens", json_integer(in_tok));
        json_object_set_new(o, "total_output_tokens", json_integer(out_tok));
        json_object_set_new(o, "request_throughput", json_real(req_tp));
        json_object_set_new(o, "output_throughput", json_real(out_tp));
        json_object_set_new(o, "total_token_throughput", json_real(tot_tp));
        for (int q = 0; q < 4; q++) {
            char key[64];
            const char *lower[4] = {"ttft", "tpot", "itl", "e2el"};
            snprintf(key, sizeof key, "mean_%s_ms", lower[q]);
            json_object_set_new(o, key, json_real(all[q].mean));
            snprintf(key, sizeof key, "median_%s_ms", lower[q]);
            json_object_set_new(o, key, json_real(all[q].median));
            snprintf(key, sizeof key, "p99_%s_ms", lower[q]);
            json_object_set_new(o, key, json_real(all[q].p99));
        }
        if (have_moe) {
            json_object_set_new(o, "moe_alltoall_bytes", json_real(moe_bytes));
            json_object_set_new(o, "moe_bytes_saved", json_real(moe_saved));
            json_object_set_new(o, "moe_inter_node_bytes", json_real(d[BS_M_INTER]));
            json_object_set_new(o, "moe_intra_node_bytes", json_real(d[BS_M_INTRA]));
            json_object_set_new(o, "moe_baseline_inter_node_bytes", json_real(d[BS_M_BASE_INTER]));
            json_object_set_new(o, "moe_baseline_intra_node_bytes", json_real(d[BS_M_BASE_INTRA]));
            if (have_steps) {
                json_object_set_new(o, "engine_steps", json_real(d[BS_M_STEPS]));
                json_object_set_new(o, "tokens_per_step", json_real(tok_step));
                json_object_set_new(o, "slots_per_step", json_real(slot_step));
                json_object_set_new(o, "avg_k", json_real(run_k));
                json_object_set_new(o, "moe_share", json_real(moe_share));
            }
        }
        if (cmp.on) {
            json_object_set_new(o, "served_speedup", json_real(served));
            json_object_set_new(o, "tokens_per_step_ratio", json_real(tok_ratio));
        }
        if (cmp.amdahl) {
            json_object_set_new(o, "baseline_moe_share", json_real(cmp.moe_share));
            json_object_set_new(o, "moe_layer_speedup", json_real(cmp.layer_speedup));
            json_object_set_new(o, "amdahl_speedup", json_real(amdahl));
            json_object_set_new(o, "served_over_amdahl", json_real(served / amdahl));
        }
        if (first_err) json_object_set_new(o, "first_error", json_string(first_err));
        if (ep_json_write_atomic(json_path, o, JSON_INDENT(2) | JSON_REAL_PRECISION(9))) {
            fprintf(stderr, "epserve bench serve: %s\n", ep_last_error());
            code = 1;
        }
        json_decref(o);
    }
    for (long i = 0; i < num; i++)
        free(ctx.res[i].itl_s);
    free(ttft);
    free(tpot);
    free(e2e);
    free(itl);
    free(th);
    free(ctx.res);
    free(ctx.arrival_s);
    pthread_mutex_destroy(&ctx.mu);
    curl_global_cleanup();
    // Failed requests are reported, not an error of the command: a load test
    // above capacity expects some 429s. The exit code says whether any succeeded.
    return code ? code : ok > 0 ? 0 : 1;
}
