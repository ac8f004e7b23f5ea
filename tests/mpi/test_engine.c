// The serving engine at world sizes 1-4 (ctest), both tiny presets: eight
// requests of different prompt lengths and max_tokens (one prompt longer than
// max_tokens_per_step: chunked prefill; one seeded sampled request; half on
// the baseline profile, half on Ban, so steps alternate profiles) give the
// tokens of a one-sequence-at-a-time loop on the same model (reference
// computed on rank 0 before the engine runs, every rank joining the MoE
// layers); Ban keeps fewer pairs than the fixed-k counterfactual; a running
// request cancelled from another thread ends with "abort" and its KV blocks
// come back on its owner; EP_ERR_BUSY past max_waiting; EP_ERR_ARG for a
// prompt + max_tokens over max_model_len (with both numbers) and a bad id;
// serving mode (no exit_when_idle): idle frees, drain shutdown, event text
// = decoded ids; a small slot budget needs fewer steps under Ban.
#include "common/weights.h"
#include "mpi_check.h"
#include "scheduler/engine.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
static const char *const routings[] = {"baseline", "ban"};
enum { N_REQ = 8, MAX_GEN = 8, MAX_PROMPT = 24, CAP = 32, STEP_TOKENS = 16, MAX_LEN = 40 };
static const int prompt_len[N_REQ] = {3, 7, 21, 5, 11, 2, 9, 13};
static const int max_tok[N_REQ] = {6, 4, 5, 8, 3, 7, 5, 4};
enum { SAMPLED = 5 }; // the seeded sampled request

typedef struct {
    int tokens[64];
    int n;
    int finals; // final events seen (must be 1)
    char reason[16];
    int prompt_tokens, completion_tokens;
    atomic_int seen;
    char text[1024]; // released text of every event, concatenated
    size_t text_len;
    bool have_text;
} rec;

static void on_event(void *user, const ep_event *ev)
{
    rec *r = user;
    if (ev->text) {
        r->have_text = true;
        if (r->text_len + ev->text_len < sizeof r->text) {
            memcpy(r->text + r->text_len, ev->text, ev->text_len);
            r->text_len += ev->text_len;
        }
    }
    if (ev->kind == EP_EV_TOKEN) {
        if (r->n < 64) r->tokens[r->n] = ev->token;
        r->n++;
        atomic_fetch_add(&r->seen, 1);
        return;
    }
    __atomic_fetch_add(&r->finals, 1, __ATOMIC_SEQ_CST);
    snprintf(r->reason, sizeof r->reason, "%s",
             ev->kind == EP_EV_FINISH ? ev->finish_reason : "error");
    r->prompt_tokens = ev->prompt_tokens;
    r->completion_tokens = ev->completion_tokens;
}

static void prompt_of(int i, int vocab, int *tok)
{
    ep_rng g;
    ep_rng_seed(&g, 4242 + (uint64_t)i);
    for (int t = 0; t < MAX_PROMPT; t++)
        tok[t] = (int)(ep_rng_next(&g) % (uint64_t)vocab);
}

static void sample_params(int i, ep_sample_params *sp)
{
    ep_sample_params_default(sp);
    if (i == SAMPLED) {
        sp->temperature = 0.8f;
        sp->top_k = 20;
        sp->top_p = 0.9f;
        sp->seed = 1234;
    }
}

// One sequence at a time on rank 0 (other ranks run empty batches to join
// the MoE layers): prefill, then one token per step. gap[j]: top-1 minus
// top-2 logit of generated position j (a near tie may flip under a different
// batching's float order).
static void reference(ep_cluster *cl, const ep_model_cfg *cfg, ep_model *m, ep_policy *pol, int i,
                      int *out, double *gap)
{
    const int V = cfg->vocab;
    int tok[MAX_PROMPT + MAX_GEN];
    prompt_of(i, V, tok);
    float *logits = ep_xmalloc((size_t)CAP * V * sizeof(float));
    int seq = -1;
    bool mine = cl->rank == 0;
    if (mine) CHECK_OK(ep_model_seq_new(m, &seq));
    ep_sample_params sp;
    sample_params(i, &sp);
    ep_sampler *smp = NULL;
    CHECK_OK(ep_sampler_init(&sp, V, &smp));
    int pos = 0, n = prompt_len[i];
    for (int g = 0; g < max_tok[i]; g++) {
        int n_new = n - pos;
        ep_batch b = {.n_seqs = mine ? 1 : 0, .seq = &seq, .n_new = &n_new, .tokens = tok + pos};
        // ep_model_forward_ex's detail agrees with itself: the sequence's
        // pairs = the layers' pairs = the expert load; tokens x MoE layers.
        ep_comm_stats layer[64] = {0}, sum = {0};
        int64_t seq_pairs = 0,
                *load = ep_xcalloc((size_t)cfg->n_layers * cfg->n_experts, sizeof(int64_t));
        ep_forward_stats fs = {.layer = layer, .seq_pairs = &seq_pairs, .expert_load = load};
        EP_ASSERT(cfg->n_layers <= 64);
        ep_status st = ep_model_forward_ex(m, pol, &b, logits, &sum, &fs);
        CHECK(st == EP_OK, "%s reference req %d: %s", cfg->name, i, ep_last_error());
        int64_t lp = 0, lt = 0, el = 0;
        for (int l = 0; l < cfg->n_layers; l++)
            lp += layer[l].pairs, lt += layer[l].tokens;
        for (int j = 0; j < cfg->n_layers * cfg->n_experts; j++)
            el += load[j];
        int64_t want_t = mine ? (int64_t)n_new * ep_model_n_moe_layers(cfg) : 0;
        CHECK(lp == sum.pairs && el == lp && (!mine || seq_pairs == lp) && lt == want_t &&
                  (!mine || lp >= lt),
              "%s req %d forward_ex: seq pairs %lld, layer pairs %lld (st %lld), load %lld, "
              "token-layers %lld (want %lld)",
              cfg->name, i, (long long)seq_pairs, (long long)lp, (long long)sum.pairs,
              (long long)el, (long long)lt, (long long)want_t);
        free(load);
        if (mine) {
            int t = ep_sampler_sample(smp, logits);
            float a = -INFINITY, c = -INFINITY;
            for (int v = 0; v < V; v++) {
                if (logits[v] > a)
                    c = a, a = logits[v];
                else if (logits[v] > c)
                    c = logits[v];
            }
            gap[g] = (double)a - (double)c;
            out[g] = t;
            tok[n] = t;
        }
        pos = n;
        n++;
    }
    if (mine) ep_model_seq_free(m, seq);
    ep_sampler_free(smp);
    free(logits);
}

typedef struct {
    ep_engine *e;
    rec *r;
    uint64_t id;
} cancel_arg;

static void *cancel_thread(void *p)
{
    cancel_arg *a = p;
    double t0 = ep_now_us();
    while (atomic_load(&a->r->seen) < 2 && ep_now_us() - t0 < 20e6) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    ep_engine_cancel(a->e, a->id);
    return NULL;
}

// Serving mode (no exit_when_idle): a front-end thread submits, waits for
// the answers, sees the KV blocks come back while the loop idles, submits
// again, then shuts down with drain; submit afterwards is refused.
typedef struct {
    ep_engine *e;
    const ep_model_cfg *cfg;
    rec r[3];
    int64_t kv_used_idle;
    ep_status after;
} front_arg;

static bool wait_final(rec *r)
{
    double t0 = ep_now_us();
    while (!__atomic_load_n(&r->finals, __ATOMIC_SEQ_CST) && ep_now_us() - t0 < 30e6) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return __atomic_load_n(&r->finals, __ATOMIC_SEQ_CST) > 0;
}

static void *front_thread(void *p)
{
    front_arg *a = p;
    int tok[MAX_PROMPT];
    prompt_of(30, a->cfg->vocab, tok);
    ep_request q = {
        .prompt = tok, .n_prompt = 6, .max_tokens = 3, .routing = 0, .ignore_eos = true};
    ep_sample_params_default(&q.sample);
    for (int i = 0; i < 2; i++)
        CHECK_OK(ep_engine_submit(a->e, &q, on_event, &a->r[i], NULL));
    CHECK(wait_final(&a->r[0]) && wait_final(&a->r[1]), "serving: no answers within 30 s");
    // The loop frees the finished sequences with a plan that runs nothing.
    a->kv_used_idle = -1;
    for (int t = 0; t < 200 && a->kv_used_idle != 0; t++) {
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
        ep_engine_metrics mm;
        if (ep_engine_metrics_get(a->e, &mm) == EP_OK) a->kv_used_idle = mm.kv_blocks_used;
        ep_engine_metrics_free(&mm);
    }
    CHECK_OK(ep_engine_submit(a->e, &q, on_event, &a->r[2], NULL));
    ep_engine_shutdown(a->e, true); // drain: the third still finishes
    a->after = ep_engine_submit(a->e, &q, on_event, &a->r[2], NULL);
    return NULL;
}

static void serve_phase(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w)
{
    // With the model's tokenizer (rank 0's only: the others have none): the
    // events' text is the decoded ids.
    ep_tokenizer *tok = NULL;
    if (cl->rank == 0) CHECK_OK(ep_tokenizer_for_model(cfg, &tok));
    ep_engine_opts o;
    ep_engine_opts_default(&o, cfg, cl->world_size);
    o.model.moe.cap_tokens = CAP;
    o.model.kv_block_tokens = 4;
    o.model.kv_blocks = 16;
    o.model.max_seqs = 4;
    o.model.max_ctx = 48;
    o.max_model_len = MAX_LEN;
    ep_engine *e = NULL;
    CHECK_OK(ep_engine_create(cfg, cl, w, tok, &o, &e));
    if (!e) {
        ep_tokenizer_free(tok);
        return;
    }
    int kv0 = ep_kv_free_blocks(ep_model_kv(ep_engine_model(e)));
    front_arg a = {.e = e, .cfg = cfg};
    pthread_t th;
    bool have = cl->rank == 0 && pthread_create(&th, NULL, front_thread, &a) == 0;
    CHECK_OK(ep_engine_run(e));
    if (have) {
        pthread_join(th, NULL);
        for (int i = 0; i < 3; i++)
            CHECK(a.r[i].finals == 1 && !strcmp(a.r[i].reason, "length") && a.r[i].n == 3,
                  "%s serving request %d: %d finals, reason %s, %d tokens", cfg->name, i,
                  a.r[i].finals, a.r[i].reason, a.r[i].n);
        for (int i = 0; i < 3 && tok; i++) {
            char *want = NULL;
            size_t wl = 0;
            CHECK_OK(ep_tokenizer_decode(tok, a.r[i].tokens, a.r[i].n, true, &want, &wl));
            // An unfinished character at the end is released as U+FFFD.
            size_t k = 0;
            while (k < wl && k < 3 && ((unsigned char)want[wl - 1 - k] & 0xC0) == 0x80)
                k++;
            unsigned char lead = k < wl ? (unsigned char)want[wl - 1 - k] : 0;
            size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
            bool cut = need > 1 && k + 1 < need;
            size_t base = cut ? wl - k - 1 : wl;
            CHECK(a.r[i].have_text && a.r[i].text_len == base + (cut ? 3 : 0) &&
                      !memcmp(a.r[i].text, want, base) &&
                      (!cut || !memcmp(a.r[i].text + base, "\xEF\xBF\xBD", 3)),
                  "%s serving request %d: event text (%zu bytes) is not the decoded ids (%zu "
                  "bytes)",
                  cfg->name, i, a.r[i].text_len, wl);
            free(want);
        }
        CHECK(a.kv_used_idle == 0, "%s serving: %lld KV blocks used while idle", cfg->name,
              (long long)a.kv_used_idle);
        CHECK(a.after == EP_ERR_UNAVAILABLE,
              "%s: submit after shutdown: %d, expected "
              "EP_ERR_UNAVAILABLE",
              cfg->name, a.after);
        CHECK(!ep_engine_serving(e), "serving after shutdown");
    }
    CHECK(ep_kv_free_blocks(ep_model_kv(ep_engine_model(e))) == kv0,
          "%s serving rank %d: KV "
          "blocks not all back",
          cfg->name, cl->rank);
    ep_engine_free(e);
    ep_tokenizer_free(tok);
}

// Expert-slot admission: with a budget of two tokens at k_base per rank and
// step, the same requests need fewer steps under Ban (each sequence's
// observed mean K is below k_base, so more of them fit in the budget).
static int64_t steps_for(ep_cluster *cl, ep_engine *e, const ep_model_cfg *cfg, int routing)
{
    // Three sequences per rank: more decodes than two tokens' worth of slots.
    enum { MAX_B = 12 };
    rec r[MAX_B];
    memset(r, 0, sizeof r);
    int n = EP_MIN(3 * cl->world_size, MAX_B);
    int64_t s0 = 0;
    ep_engine_metrics mm;
    if (cl->rank == 0) {
        CHECK_OK(ep_engine_metrics_get(e, &mm));
        s0 = mm.steps;
        ep_engine_metrics_free(&mm);
        for (int i = 0; i < n; i++) {
            int tok[MAX_PROMPT];
            prompt_of(40 + i, cfg->vocab, tok);
            ep_request q = {.prompt = tok, .n_prompt = 2, .max_tokens = 8, .routing = routing};
            ep_sample_params_default(&q.sample);
            CHECK_OK(ep_engine_submit(e, &q, on_event, &r[i], NULL));
        }
    }
    CHECK_OK(ep_engine_run(e));
    if (cl->rank != 0) return 0;
    for (int i = 0; i < n; i++)
        CHECK(r[i].finals == 1 && r[i].n == 8, "%s budget request %d: %d tokens", cfg->name, i,
              r[i].n);
    CHECK_OK(ep_engine_metrics_get(e, &mm));
    int64_t steps = mm.steps - s0;
    ep_engine_metrics_free(&mm);
    return steps;
}

static void budget_phase(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w)
{
    ep_engine_opts o;
    ep_engine_opts_default(&o, cfg, cl->world_size);
    o.model.moe.cap_tokens = CAP;
    o.model.kv_block_tokens = 4;
    o.model.kv_blocks = 24;
    o.model.max_seqs = 6;
    o.model.max_ctx = 48;
    o.max_model_len = MAX_LEN;
    o.slot_budget = (int64_t)2 * cfg->k_base * ep_model_n_moe_layers(cfg);
    o.routings = routings;
    o.n_routings = 2;
    o.exit_when_idle = true;
    ep_engine *e = NULL;
    CHECK_OK(ep_engine_create(cfg, cl, w, NULL, &o, &e));
    if (!e) return;
    int64_t base = steps_for(cl, e, cfg, 0), ban = steps_for(cl, e, cfg, 1);
    if (cl->rank == 0) {
        CHECK(ban < base,
              "%s: slot budget of 2 tokens at k_base: %lld steps with Ban, %lld "
              "with baseline; expected fewer with Ban",
              cfg->name, (long long)ban, (long long)base);
    }
    ep_engine_free(e);
}

static void run_preset(ep_cluster *cl, const char *preset)
{
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_engine *e = NULL;
    CHECK_OK(ep_model_cfg_load(preset, &cfg));
    CHECK_OK(ep_weights_open(&cfg, &w));
    if (!w) return;
    ep_engine_opts o;
    ep_engine_opts_default(&o, &cfg, cl->world_size);
    o.model.moe.cap_tokens = CAP;
    o.model.kv_block_tokens = 4;
    o.model.kv_blocks = 80;
    o.model.max_seqs = 10;
    o.model.max_ctx = 48;
    o.max_model_len = MAX_LEN;
    o.max_num_seqs = o.model.max_seqs * cl->world_size;
    o.max_tokens_per_step = STEP_TOKENS;
    o.max_waiting = 10;
    o.step_timeout_s = 60;
    o.routings = routings;
    o.n_routings = 2;
    o.exit_when_idle = true;
    CHECK_OK(ep_engine_create(&cfg, cl, w, NULL, &o, &e));
    if (!e) {
        ep_weights_free(w);
        return;
    }
    CHECK(ep_engine_find_routing(e, "ban") == 1 && ep_engine_find_routing(e, "nope") == -1,
          "find_routing");
    ep_model *m = ep_engine_model(e);
    int kv_free0 = ep_kv_free_blocks(ep_model_kv(m));

    // References on the engine's own model, before it serves anything.
    ep_policy *pol[2] = {0};
    for (int k = 0; k < 2; k++)
        CHECK_OK(ep_policy_create(&cfg, routings[k], &pol[k]));
    int ref[N_REQ][MAX_GEN];
    double gap[N_REQ][MAX_GEN];
    for (int i = 0; i < N_REQ; i++)
        reference(cl, &cfg, m, pol[i % 2], i, ref[i], gap[i]);

    // Phase 1: the eight requests, all queued before the loop starts.
    rec *rs = ep_xcalloc(N_REQ, sizeof *rs);
    if (cl->rank == 0) {
        for (int i = 0; i < N_REQ; i++) {
            int tok[MAX_PROMPT];
            prompt_of(i, cfg.vocab, tok);
            ep_request q = {.prompt = tok,
                            .n_prompt = prompt_len[i],
                            .max_tokens = max_tok[i],
                            .routing = i % 2};
            sample_params(i, &q.sample);
            CHECK_OK(ep_engine_submit(e, &q, on_event, &rs[i], NULL));
        }
        ep_engine_metrics mm;
        CHECK_OK(ep_engine_metrics_get(e, &mm));
        CHECK(mm.waiting == N_REQ, "%lld waiting before the run, expected %d",
              (long long)mm.waiting, N_REQ);
        ep_engine_metrics_free(&mm);
    }
    CHECK_OK(ep_engine_run(e));
    if (cl->rank == 0) {
        int64_t gen = 0;
        for (int i = 0; i < N_REQ; i++) {
            rec *r = &rs[i];
            gen += max_tok[i];
            CHECK(r->finals == 1 && !strcmp(r->reason, "length"),
                  "%s req %d: %d final events, reason %s; expected one, length", preset, i,
                  r->finals, r->reason);
            CHECK(r->n == max_tok[i] && r->completion_tokens == max_tok[i] &&
                      r->prompt_tokens == prompt_len[i],
                  "%s req %d: %d tokens (usage %d + %d), expected %d (%d + %d)", preset, i, r->n,
                  r->prompt_tokens, r->completion_tokens, max_tok[i], prompt_len[i], max_tok[i]);
            for (int g = 0; g < max_tok[i] && g < r->n; g++) {
                if (r->tokens[g] == ref[i][g]) continue;
                // Only a near tie of the reference may differ; after it the
                // sequences diverge legitimately.
                CHECK(gap[i][g] < 1e-3,
                      "%s req %d (%s%s): token %d is %d, reference %d (top-2 "
                      "gap %.3g)",
                      preset, i, routings[i % 2], i == SAMPLED ? ", sampled" : "", g, r->tokens[g],
                      ref[i][g], gap[i][g]);
                break;
            }
        }
        ep_engine_metrics mm;
        CHECK_OK(ep_engine_metrics_get(e, &mm));
        int64_t ptok = 0, load = 0;
        for (int i = 0; i < N_REQ; i++)
            ptok += prompt_len[i];
        for (int j = 0; j < mm.n_layers * mm.n_experts; j++)
            load += mm.expert_load[j];
        CHECK(mm.finished == N_REQ && mm.running == 0 && mm.waiting == 0 &&
                  mm.generation_tokens == gen && mm.prompt_tokens == ptok,
              "%s metrics: finished %lld running %lld waiting %lld gen %lld prompt %lld; "
              "expected %d 0 0 %lld %lld",
              preset, (long long)mm.finished, (long long)mm.running, (long long)mm.waiting,
              (long long)mm.generation_tokens, (long long)mm.prompt_tokens, N_REQ, (long long)gen,
              (long long)ptok);
        CHECK(mm.moe_pairs > 0 && mm.moe_pairs < mm.moe_base_pairs && load == mm.moe_pairs,
              "%s: pairs %lld, base pairs %lld, expert load %lld: Ban must keep fewer pairs than "
              "fixed top-k, and the load must count every pair",
              preset, (long long)mm.moe_pairs, (long long)mm.moe_base_pairs, (long long)load);
        CHECK(mm.kv_blocks_used == 0 && mm.steps > 0,
              "%s: %lld KV blocks used after the run, "
              "%lld steps",
              preset, (long long)mm.kv_blocks_used, (long long)mm.steps);
        ep_engine_metrics_free(&mm);
    }

    // Phase 2: Ban only: the per-layer mean K the engine observed is below k_base.
    memset(rs, 0, N_REQ * sizeof *rs);
    ep_engine_metrics before = {0};
    if (cl->rank == 0) {
        CHECK_OK(ep_engine_metrics_get(e, &before));
        for (int i = 0; i < 3; i++) {
            int tok[MAX_PROMPT];
            prompt_of(i + 10, cfg.vocab, tok);
            ep_request q = {.prompt = tok, .n_prompt = 12, .max_tokens = 3, .routing = 1};
            ep_sample_params_default(&q.sample);
            CHECK_OK(ep_engine_submit(e, &q, on_event, &rs[i], NULL));
        }
    }
    CHECK_OK(ep_engine_run(e));
    if (cl->rank == 0) {
        ep_engine_metrics mm;
        CHECK_OK(ep_engine_metrics_get(e, &mm));
        int64_t dp = mm.moe_pairs - before.moe_pairs,
                dt = mm.moe_token_layers - before.moe_token_layers;
        double k = dt > 0 ? (double)dp / (double)dt : 0;
        CHECK(dt > 0 && k < cfg.k_base && k >= 1,
              "%s: Ban-only mean K %.3f over %lld token-layers, "
              "expected in [1, %d)",
              preset, k, (long long)dt, cfg.k_base);
        ep_engine_metrics_free(&mm);
        ep_engine_metrics_free(&before);
    }

    // Phase 3: cancel a running request from another thread; EP_ERR_BUSY.
    rec *r3 = ep_xcalloc(12, sizeof *r3);
    pthread_t th;
    cancel_arg ca = {e, &r3[0], 0};
    bool have_th = false;
    if (cl->rank == 0) {
        int tok[MAX_PROMPT];
        prompt_of(20, cfg.vocab, tok);
        ep_request q = {.prompt = tok, .n_prompt = 4, .max_tokens = MAX_LEN - 4, .routing = -1};
        ep_sample_params_default(&q.sample);
        CHECK_OK(ep_engine_submit(e, &q, on_event, &r3[0], &ca.id));
        // Fill the waiting queue: max_waiting 10, one waits already.
        q.max_tokens = 1;
        for (int i = 1; i < 10; i++)
            CHECK_OK(ep_engine_submit(e, &q, on_event, &r3[i], NULL));
        ep_status st = ep_engine_submit(e, &q, on_event, &r3[10], NULL);
        CHECK(st == EP_ERR_BUSY,
              "the 11th waiting request (max_waiting 10): %s, expected "
              "EP_ERR_BUSY",
              st ? ep_last_error() : "accepted");
        // Bad requests leave nothing queued.
        q.max_tokens = MAX_LEN - 3;
        st = ep_engine_submit(e, &q, on_event, &r3[11], NULL);
        CHECK(st == EP_ERR_ARG && strstr(ep_last_error(), " 4 ") &&
                  strstr(ep_last_error(), " 37 ") && strstr(ep_last_error(), " 40"),
              "prompt 4 + max_tokens 37 over max_model_len 40: %s", ep_last_error());
        q.max_tokens = 1;
        tok[2] = cfg.vocab;
        st = ep_engine_submit(e, &q, on_event, &r3[11], NULL);
        CHECK(st == EP_ERR_ARG && strstr(ep_last_error(), "vocab"), "token id %d: %s", cfg.vocab,
              ep_last_error());
        tok[2] = 0;
        q.routing = 5;
        st = ep_engine_submit(e, &q, on_event, &r3[11], NULL);
        CHECK(st == EP_ERR_ARG, "routing 5: %s", ep_last_error());
        have_th = pthread_create(&th, NULL, cancel_thread, &ca) == 0;
    }
    CHECK_OK(ep_engine_run(e));
    if (have_th) pthread_join(th, NULL);
    if (cl->rank == 0) {
        rec *r = &r3[0];
        CHECK(r->finals == 1 && !strcmp(r->reason, "abort") && r->completion_tokens >= 2 &&
                  r->completion_tokens < MAX_LEN - 4,
              "%s cancelled request: %d final events, reason %s after %d tokens", preset, r->finals,
              r->reason, r->completion_tokens);
        for (int i = 1; i < 12; i++)
            CHECK(i < 10 ? r3[i].finals == 1 && r3[i].n == 1 && !strcmp(r3[i].reason, "length")
                         : r3[i].finals == 0 && r3[i].n == 0,
                  "%s phase 3 request %d: %d final events, %d tokens", preset, i, r3[i].finals,
                  r3[i].n);
        ep_engine_metrics mm;
        CHECK_OK(ep_engine_metrics_get(e, &mm));
        CHECK(mm.aborted == 1 && mm.kv_blocks_used == 0, "%s: aborted %lld, KV blocks used %lld",
              preset, (long long)mm.aborted, (long long)mm.kv_blocks_used);
        ep_engine_metrics_free(&mm);
    }
    free(r3);
    CHECK(ep_kv_free_blocks(ep_model_kv(m)) == kv_free0,
          "%s rank %d: %d KV blocks free after "
          "the runs, %d before",
          preset, cl->rank, ep_kv_free_blocks(ep_model_kv(m)), kv_free0);

    for (int k = 0; k < 2; k++)
        ep_policy_free(pol[k]);
    free(rs);
    ep_engine_free(e);
    serve_phase(cl, &cfg, w);
    budget_phase(cl, &cfg, w);
    ep_weights_free(w);
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++)
        run_preset(cl, presets[i]);
    int rc = mpi_check_finish(cl, "engine");
    ep_cluster_free(cl);
    return rc;
}
