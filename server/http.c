// The HTTP front end (see server.h): routes, the API key check, body limits,
// and the bridge from engine events to HTTP responses. One thread per
// connection (libmicrohttpd): a non-streamed completion blocks its handler
// until the final event; a streamed one is a content reader that waits for
// SSE bytes. Both poll the client's socket while they wait, so a client that
// goes away cancels its request (the engine frees the sequence next step).
#include "server/server.h"
#include "server/metrics.h"
#include "server/openai.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct ep_server {
    struct MHD_Daemon *d;
    ep_engine *e;
    const ep_model_cfg *cfg;
    const ep_tokenizer *tok;
    const ep_chat_template *chat;
    ep_server_opts o;
    char *host, *api_key, *model_name;
    ep_oai_limits lim;
    ep_sample_params sample_defaults; // lim.sample_defaults points here
    char *gen_json;                   // /v1/models' "generation_config" object
    const char **routing_names;       // [n] borrowed from the engine
    int port;
    unsigned nonce; // request ids differ between runs
    atomic_ullong next_id;
    pthread_mutex_t mu; // guards stats
    ep_srv_stats stats;
};

void ep_server_opts_default(ep_server_opts *o)
{
    *o = (ep_server_opts){.host = "127.0.0.1",
                          .port = 8000,
                          .model_name = "model",
                          .max_body_bytes = (size_t)1 << 20,
                          .max_connections = 512,
                          .max_model_len = 4096};
}

// ---- one request's bridge between the engine thread and the HTTP thread ----

typedef struct {
    ep_server *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;    // the HTTP side and, once submitted, the engine side
    uint64_t id; // the engine's id
    int fd;      // client socket, polled for a hang-up while waiting
    char idstr[48];
    ep_oai_resp_hdr h;
    bool stream, include_usage;
    ep_sbuf out;       // stream: SSE bytes not yet sent; else the generated text
    bool done, failed; // the final event arrived; it was EV_ERROR
    bool cancelled;
    ep_oai_error err;
    char finish[16];
    int prompt_tokens, completion_tokens;
    double t0_us, last_us; // arrival, last token
    int n_tok;
    int routing; // the engine's profile index (the routing label of its latencies)
} srv_req;

static void req_release(srv_req *q)
{
    pthread_mutex_lock(&q->mu);
    int left = --q->refs;
    pthread_mutex_unlock(&q->mu);
    if (left) return;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    ep_sbuf_free(&q->out);
    free(q);
}

static int status_of(ep_status st)
{
    return st == EP_ERR_BUSY                               ? 429
           : st == EP_ERR_UNAVAILABLE || st == EP_ERR_COMM ? 503
           : st == EP_ERR_ARG                              ? 400
                                                           : 500;
}

static void engine_error(ep_oai_error *err, ep_status st, const char *msg)
{
    int status = status_of(st);
    ep_oai_errorf(err, status,
                  status == 429   ? "rate_limit_error"
                  : status == 503 ? "service_unavailable"
                  : status == 400 ? "invalid_request_error"
                                  : "server_error",
                  NULL, status == 429 ? "rate_limit_exceeded" : NULL, "%s",
                  msg && *msg ? msg : ep_status_str(st));
    // The engine names the field at the start of its argument errors.
    static const char *const fields[] = {"pick_domain", "routing", "stop",  "max_tokens",
                                         "temperature", "top_p",   "top_k", "prompt"};
    if (status == 400)
        for (size_t i = 0; i < EP_ARRAY_LEN(fields); i++)
            if (strstr(err->message, fields[i])) {
                snprintf(err->param, sizeof err->param, "%s", fields[i]);
                break;
            }
}

// Engine thread: append, signal, return. Never calls the engine.
static void on_event(void *user, const ep_event *ev)
{
    srv_req *q = user;
    ep_server *s = q->s;
    double now = ep_now_us();
    pthread_mutex_lock(&s->mu);
    if (ev->kind == EP_EV_TOKEN) {
        const bool first = q->n_tok == 0;
        const double v = (now - (first ? q->t0_us : q->last_us)) * 1e-6;
        ep_hist_observe(first ? &s->stats.ttft : &s->stats.itl, v);
        if (q->routing >= 0 && q->routing < EP_SRV_MAX_ROUTINGS)
            ep_hist_observe(first ? &s->stats.ttft_r[q->routing] : &s->stats.itl_r[q->routing], v);
    } else if (ev->kind == EP_EV_FINISH) {
        ep_hist_observe(&s->stats.e2e, (now - q->t0_us) * 1e-6);
        const char *r = ev->finish_reason ? ev->finish_reason : "stop";
        s->stats.success[!strcmp(r, "length") ? 1 : !strcmp(r, "abort") ? 2 : 0]++;
    } else {
        s->stats.errors++;
    }
    pthread_mutex_unlock(&s->mu);

    pthread_mutex_lock(&q->mu);
    const char *text = ev->text ? ev->text : "";
    size_t len = ev->text ? ev->text_len : 0;
    if (ev->kind == EP_EV_TOKEN) {
        q->n_tok++;
        q->last_us = now;
        if (q->stream)
            ep_oai_chunk(&q->out, &q->h, false, text, len, NULL);
        else
            ep_sbuf_add(&q->out, text, len);
    } else if (ev->kind == EP_EV_FINISH) {
        snprintf(q->finish, sizeof q->finish, "%s", ev->finish_reason ? ev->finish_reason : "stop");
        q->prompt_tokens = ev->prompt_tokens;
        q->completion_tokens = ev->completion_tokens;
        q->h.has_pick_domain = ev->pick_domain != NULL;
        if (ev->pick_domain)
            snprintf(q->h.pick_domain, sizeof q->h.pick_domain, "%s", ev->pick_domain);
        if (q->stream) {
            ep_oai_chunk(&q->out, &q->h, false, text, len, q->finish);
            if (q->include_usage)
                ep_oai_usage_chunk(&q->out, &q->h, q->prompt_tokens, q->completion_tokens);
            ep_oai_done(&q->out);
        } else {
            ep_sbuf_add(&q->out, text, len);
        }
    } else {
        q->failed = true;
        engine_error(&q->err, ev->error ? ev->error : EP_ERR_UNAVAILABLE, ev->message);
        if (q->err.status == 400) q->err.status = 500; // accepted requests fail on our side
        if (q->stream) {
            ep_oai_error_chunk(&q->out, &q->err);
            ep_oai_done(&q->out);
        }
    }
    bool final = ev->kind != EP_EV_TOKEN;
    if (final) q->done = true;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    if (final) req_release(q);
}

// True when the client closed its end (or the socket failed).
static bool client_gone(int fd)
{
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) return true;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

// Waits (q->mu held) until there is output or the request ended; cancels it
// when the client went away. Returns false when the client is gone.
static bool wait_output(srv_req *q, bool need_done)
{
    while (!q->done && (need_done || q->out.len == 0)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&q->cv, &q->mu, &ts);
        if (!q->done && !q->cancelled && client_gone(q->fd)) {
            q->cancelled = true;
            pthread_mutex_unlock(&q->mu);
            ep_engine_cancel(q->s->e, q->id);
            pthread_mutex_lock(&q->mu);
            return false;
        }
    }
    return true;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    srv_req *q = cls;
    pthread_mutex_lock(&q->mu);
    if (!wait_output(q, false)) {
        pthread_mutex_unlock(&q->mu);
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    ssize_t n = MHD_CONTENT_READER_END_OF_STREAM;
    if (q->out.len) {
        size_t k = EP_MIN(max, q->out.len);
        memcpy(buf, q->out.p, k);
        ep_sbuf_consume(&q->out, k);
        n = (ssize_t)k;
    }
    pthread_mutex_unlock(&q->mu);
    return n;
}

// The response is gone (sent, or the connection closed): a request that has
// not ended is cancelled.
static void stream_free(void *cls)
{
    srv_req *q = cls;
    pthread_mutex_lock(&q->mu);
    bool cancel = !q->done && !q->cancelled;
    q->cancelled = true;
    pthread_mutex_unlock(&q->mu);
    if (cancel) ep_engine_cancel(q->s->e, q->id);
    req_release(q);
}

// ---- plain responses -------------------------------------------------------

static enum MHD_Result send_buf(struct MHD_Connection *c, int status, const char *type,
                                const char *p, size_t n)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)p, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, int status, ep_sbuf *b)
{
    enum MHD_Result r = send_buf(c, status, "application/json", b->p ? b->p : "", b->len);
    ep_sbuf_free(b);
    return r;
}

static enum MHD_Result send_error(ep_server *s, struct MHD_Connection *c, const ep_oai_error *err)
{
    pthread_mutex_lock(&s->mu);
    s->stats.rejected++;
    pthread_mutex_unlock(&s->mu);
    ep_sbuf b = {0};
    ep_oai_error_json(&b, err);
    return send_json(c, err->status, &b);
}

static enum MHD_Result send_errorf(ep_server *s, struct MHD_Connection *c, int status,
                                   const char *type, const char *code, const char *msg)
{
    ep_oai_error err;
    ep_oai_errorf(&err, status, type, NULL, code, "%s", msg);
    return send_error(s, c, &err);
}

// ---- endpoints ---------------------------------------------------------------

static enum MHD_Result do_models(ep_server *s, struct MHD_Connection *c)
{
    ep_sbuf b = {0};
    ep_sbuf_adds(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
    ep_sbuf_add_json_str(&b, s->model_name, strlen(s->model_name));
    ep_sbuf_addf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"epserve\",\"root\":",
                 (long long)time(NULL));
    ep_sbuf_add_json_str(&b, s->cfg->name, strlen(s->cfg->name));
    ep_sbuf_addf(&b, ",\"max_model_len\":%d,\"vocab_size\":%d,\"routings\":[", s->lim.max_model_len,
                 s->lim.vocab);
    for (int i = 0; i < s->lim.n_routings; i++) {
        if (i) ep_sbuf_adds(&b, ",");
        ep_sbuf_add_json_str(&b, s->lim.routings[i], strlen(s->lim.routings[i]));
    }
    // Extension: the defaults a request gets and the ids that end it.
    ep_sbuf_adds(&b, "],\"generation_config\":");
    ep_sbuf_adds(&b, s->gen_json);
    ep_sbuf_adds(&b, "}]}");
    return send_json(c, 200, &b);
}

static enum MHD_Result do_metrics(ep_server *s, struct MHD_Connection *c)
{
    ep_engine_metrics em;
    bool have = ep_engine_metrics_get(s->e, &em) == EP_OK;
    ep_srv_stats snap;
    pthread_mutex_lock(&s->mu);
    snap = s->stats;
    pthread_mutex_unlock(&s->mu);
    ep_sbuf b = {0};
    ep_metrics_format(&b, s->model_name, &snap, have ? &em : NULL);
    if (have) ep_engine_metrics_free(&em);
    enum MHD_Result r = send_buf(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len);
    ep_sbuf_free(&b);
    return r;
}

static enum MHD_Result do_completion(ep_server *s, struct MHD_Connection *c, ep_oai_kind kind,
                                     const char *body, size_t len)
{
    double t0 = ep_now_us();
    ep_oai_request r;
    ep_oai_error err;
    int status = ep_oai_parse(kind, body, len, &s->lim, &r, &err);
    int *ids = NULL, n = 0;
    if (!status) status = ep_oai_prompt(&r, s->tok, s->chat, &s->lim, &ids, &n, &err);
    if (status) {
        ep_oai_request_free(&r);
        return send_error(s, c, &err);
    }

    srv_req *q = ep_xcalloc(1, sizeof *q);
    q->s = s;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->refs = 1;
    q->t0_us = t0;
    q->stream = r.stream;
    q->include_usage = r.include_usage;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    q->fd = ci ? ci->connect_fd : -1;
    snprintf(q->idstr, sizeof q->idstr, "%s-%08x%016llx", kind == EP_OAI_CHAT ? "chatcmpl" : "cmpl",
             s->nonce, (unsigned long long)atomic_fetch_add(&s->next_id, 1));
    q->h = (ep_oai_resp_hdr){
        .kind = kind, .id = q->idstr, .created = (long long)time(NULL), .model = s->model_name};
    // Chat streams open with the role, before any token (as OpenAI's do).
    if (q->stream && kind == EP_OAI_CHAT) ep_oai_chunk(&q->out, &q->h, true, "", 0, NULL);

    ep_request er = {.prompt = ids,
                     .n_prompt = n,
                     .sample = r.sample,
                     .max_tokens = r.max_tokens,
                     .stop = (const char *const *)r.stop,
                     .n_stop = r.n_stop,
                     .ignore_eos = r.ignore_eos,
                     .routing = r.routing,
                     .pick_domain = r.pick_domain};
    q->routing = r.routing < 0 ? 0 : r.routing;
    q->refs = 2; // the engine's reference, dropped at the final event
    ep_status st = ep_engine_submit(s->e, &er, on_event, q, &q->id);
    free(ids);
    ep_oai_request_free(&r);
    if (st) {
        q->refs = 1;
        engine_error(&err, st, ep_last_error());
        req_release(q);
        return send_error(s, c, &err);
    }

    if (q->stream) {
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, q, stream_free);
        if (!resp) {
            stream_free(q);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }

    pthread_mutex_lock(&q->mu);
    bool here = wait_output(q, true);
    ep_sbuf b = {0};
    int code = 200;
    if (here && !q->failed) {
        ep_oai_response(&b, &q->h, q->out.p, q->out.len, q->finish, q->prompt_tokens,
                        q->completion_tokens);
    } else if (here) {
        code = q->err.status;
        ep_oai_error_json(&b, &q->err);
    }
    pthread_mutex_unlock(&q->mu);
    req_release(q);
    if (!here) return MHD_NO; // the client is gone: close
    if (code != 200) {
        pthread_mutex_lock(&s->mu);
        s->stats.rejected++;
        pthread_mutex_unlock(&s->mu);
    }
    return send_json(c, code, &b);
}

// ---- the access handler --------------------------------------------------------

typedef struct {
    ep_sbuf body;
    bool too_big;
} conn_state;

static bool authorized(ep_server *s, struct MHD_Connection *c)
{
    if (!s->api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7))
        return false; // the scheme is case-insensitive (RFC 7235)
    h += 7;
    return ep_oai_key_equal(h, strlen(h), s->api_key, strlen(s->api_key));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    ep_server *s = cls;
    conn_state *cs = *con_cls;
    if (!cs) {
        cs = ep_xcalloc(1, sizeof *cs);
        *con_cls = cs;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->o.max_body_bytes) {
            // Refused before reading it; libmicrohttpd closes the connection after.
            char msg[160];
            snprintf(msg, sizeof msg, "the request body is larger than the limit of %zu bytes",
                     s->o.max_body_bytes);
            cs->too_big = true;
            return send_errorf(s, c, 413, "invalid_request_error", "request_too_large", msg);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cs->too_big && cs->body.len + *upload_size <= s->o.max_body_bytes)
            ep_sbuf_add(&cs->body, upload, *upload_size);
        else
            cs->too_big = true;
        *upload_size = 0;
        return MHD_YES;
    }
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    bool v1 = !strncmp(url, "/v1/", 4);
    if (v1 && !authorized(s, c)) {
        ep_oai_error err;
        ep_oai_errorf(
            &err, 401, "invalid_request_error", NULL, "invalid_api_key",
            "Incorrect or missing API key: send the header 'Authorization: Bearer <key>'.");
        return send_error(s, c, &err);
    }
    if (cs->too_big) {
        char msg[160];
        snprintf(msg, sizeof msg, "the request body is larger than the limit of %zu bytes",
                 s->o.max_body_bytes);
        return send_errorf(s, c, 413, "invalid_request_error", "request_too_large", msg);
    }
    struct {
        const char *url;
        bool post;
    } const routes[] = {{"/health", false},
                        {"/metrics", false},
                        {"/v1/models", false},
                        {"/v1/completions", true},
                        {"/v1/chat/completions", true}};
    int route = -1;
    for (int i = 0; i < (int)EP_ARRAY_LEN(routes); i++)
        if (!strcmp(url, routes[i].url)) route = i;
    if (route < 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "no such endpoint: %s %.100s", method, url);
        return send_errorf(s, c, 404, "invalid_request_error", "not_found", msg);
    }
    if (routes[route].post ? !post : !get) {
        char msg[200];
        snprintf(msg, sizeof msg, "%s does not take %s (use %s)", url, method,
                 routes[route].post ? "POST" : "GET");
        return send_errorf(s, c, 405, "invalid_request_error", "method_not_allowed", msg);
    }
    switch (route) {
    case 0:
        return ep_engine_serving(s->e) ? send_buf(c, 200, "text/plain", "", 0)
                                       : send_buf(c, 503, "text/plain", "not serving\n", 12);
    case 1:
        return do_metrics(s, c);
    case 2:
        return do_models(s, c);
    default:
        return do_completion(s, c, route == 3 ? EP_OAI_COMPLETIONS : EP_OAI_CHAT,
                             cs->body.p ? cs->body.p : "", cs->body.len);
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    conn_state *cs = *con_cls;
    if (!cs) return;
    ep_sbuf_free(&cs->body);
    free(cs);
    *con_cls = NULL;
}

// ---- lifetime --------------------------------------------------------------------

ep_status ep_server_start(const ep_server_opts *o, ep_engine *e, const ep_model_cfg *cfg,
                          const ep_tokenizer *tok, const ep_chat_template *chat, ep_server **out)
{
    *out = NULL;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", o->port);
    int gai = getaddrinfo(o->host, port_s, &hints, &ai);
    if (gai)
        return ep_errorf(EP_ERR_ARG, "serve: --host '%s': not an address of this machine (%s)",
                         o->host, gai_strerror(gai));
    struct sockaddr_storage addr;
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    bool v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);

    ep_server *s = ep_xcalloc(1, sizeof *s);
    s->e = e;
    s->cfg = cfg;
    s->tok = tok;
    s->chat = chat;
    s->o = *o;
    s->o.gen = NULL; // borrowed for this call only
    s->host = ep_xstrdup(o->host);
    s->api_key = o->api_key && *o->api_key ? ep_xstrdup(o->api_key) : NULL;
    s->model_name = ep_xstrdup(o->model_name);
    s->o.host = s->host;
    s->o.api_key = s->api_key;
    s->o.model_name = s->model_name;
    int nr = ep_engine_n_routings(e);
    s->routing_names = ep_xcalloc((size_t)(nr > 0 ? nr : 1), sizeof *s->routing_names);
    for (int i = 0; i < nr; i++)
        s->routing_names[i] = ep_engine_routing_name(e, i);
    s->lim = (ep_oai_limits){.model_name = s->model_name,
                             .max_model_len = o->max_model_len,
                             .vocab = cfg->vocab,
                             .routings = s->routing_names,
                             .n_routings = nr};
    // Sampling defaults: OpenAI's (temperature 1, top_p 1, no top-k), then
    // generation_config.json's; a request's own fields win over both.
    ep_gen_config none;
    memset(&none, 0, sizeof none);
    none.bos = none.pad = -1;
    const ep_gen_config *gen = o->gen ? o->gen : &none;
    s->sample_defaults = (ep_sample_params){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f};
    ep_gen_config_sample_defaults(gen, &s->sample_defaults);
    s->lim.sample_defaults = &s->sample_defaults;
    s->lim.default_max_tokens = gen->has_max_new_tokens ? gen->max_new_tokens : 0;
    int eos[32];
    int n_eos = ep_engine_eos_ids(e, eos, (int)EP_ARRAY_LEN(eos));
    s->gen_json = ep_gen_config_json(gen, &s->sample_defaults, eos, n_eos);
    s->nonce = (unsigned)time(NULL) ^ ((unsigned)getpid() << 16);
    pthread_mutex_init(&s->mu, NULL);
    ep_srv_stats_init(&s->stats);

    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (v6) flags |= MHD_USE_IPv6;
    s->d =
        MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
                         (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)o->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    if (!s->d) {
        ep_status st = ep_errorf(EP_ERR_IO,
                                 "serve: cannot listen on %s port %d (is the port in use? "
                                 "try another --port)",
                                 o->host, o->port);
        ep_server_stop(s);
        return st;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    *out = s;
    return EP_OK;
}

int ep_server_port(const ep_server *s)
{
    return s->port;
}

void ep_server_stop(ep_server *s)
{
    if (!s) return;
    if (s->d) MHD_stop_daemon(s->d);
    pthread_mutex_destroy(&s->mu);
    free(s->routing_names);
    free(s->host);
    free(s->api_key);
    free(s->model_name);
    free(s->gen_json);
    free(s);
}
