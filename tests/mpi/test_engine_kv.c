// KV memory like vLLM's, at world sizes 1-4 (ctest), both tiny presets.
// Preemption: the same requests (greedy, every fourth seeded sampled) on a pool too small for all
// of them at once finish with exactly the tokens of a roomy run, with preemptions > 0 and every
// block back afterwards (with and without prefix caching). Every step of every run also checks (in
// the engine) that each rank's free KV blocks equal rank 0's mirror of them, so the plans are
// deterministic. Prefix caching: requests sharing a long system prompt, after one warm-up request
// per rank, skip the shared blocks (prefill tokens computed drop by exactly the shared part, hit
// rate = shared / prompt) and give the tokens of a run with caching off; eviction under pressure: a
// pool that cannot keep the prefix evicts it and still serves. Model level: the logits of a prompt
// whose prefix maps cached blocks equal those of the same chunks computed without the cache
// (bitwise), and those of one whole prefill within 1e-5.
#include "common/weights.h"
#include "mpi_check.h"
#include "scheduler/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
enum { BT = 4, CAP = 64, MAX_LEN = 48, MAX_GEN = 12, N_REQ = 8, SYS = 24, SUF = 5 };

typedef struct {
    int tokens[64];
    int n;
    int finals;
    char reason[16];
} rec;

static void on_event(void *user, const ep_event *ev)
{
    rec *r = user;
    if (ev->kind == EP_EV_TOKEN) {
        if (r->n < 64) r->tokens[r->n] = ev->token;
        r->n++;
        return;
    }
    r->finals++;
    snprintf(r->reason, sizeof r->reason, "%s",
             ev->kind == EP_EV_FINISH ? ev->finish_reason : "error");
}

static void random_tokens(uint64_t seed, int vocab, int *tok, int n)
{
    ep_rng g;
    ep_rng_seed(&g, seed);
    for (int t = 0; t < n; t++)
        tok[t] = (int)(ep_rng_next(&g) % (uint64_t)vocab);
}

static void base_opts(const ep_model_cfg *cfg, int world, int kv_blocks, bool prefix,
                      ep_engine_opts *o)
{
    ep_engine_opts_default(o, cfg, world);
    o->model.moe.cap_tokens = CAP;
    o->model.kv_block_tokens = BT;
    o->model.kv_blocks = kv_blocks;
    o->model.max_seqs = N_REQ;
    o->model.max_ctx = MAX_LEN;
    o->model.prefix_caching = prefix;
    o->max_model_len = MAX_LEN;
    o->max_num_seqs = N_REQ * world;
    o->max_tokens_per_step = 32;
    o->max_waiting = 64;
    o->step_timeout_s = 60;
    o->exit_when_idle = true;
}

typedef struct {
    int64_t preempt, prefill, hit, query, gen, used, cached;
} counters;

static counters counters_of(ep_cluster *cl, ep_engine *e)
{
    counters c = {0};
    if (cl->rank != 0) return c;
    ep_engine_metrics m;
    CHECK_OK(ep_engine_metrics_get(e, &m));
    c = (counters){m.preemptions,         m.prefill_tokens,    m.prefix_hit_tokens,
                   m.prefix_query_tokens, m.generation_tokens, m.kv_blocks_used,
                   m.kv_blocks_cached};
    ep_engine_metrics_free(&m);
    return c;
}

// Submits n requests (rank 0) of prompts[i][0..len[i]) and runs the engine
// until idle on every rank.
static void run_batch(ep_cluster *cl, ep_engine *e, int n, int (*prompts)[MAX_LEN], const int *len,
                      int max_tokens, rec *out)
{
    memset(out, 0, (size_t)n * sizeof *out);
    if (cl->rank == 0)
        for (int i = 0; i < n; i++) {
            ep_request q = {.prompt = prompts[i],
                            .n_prompt = len[i],
                            .max_tokens = max_tokens,
                            .ignore_eos = true};
            ep_sample_params_default(&q.sample);
            if (i % 4 == 3) { // seeded sampling: a preempted one continues its RNG stream
                q.sample.temperature = 0.8f;
                q.sample.top_k = 20;
                q.sample.seed = 99 + (uint64_t)i;
            }
            CHECK_OK(ep_engine_submit(e, &q, on_event, &out[i], NULL));
        }
    CHECK_OK(ep_engine_run(e));
}

static void check_same(ep_cluster *cl, const char *what, const char *name, const rec *got,
                       const rec *want, int n, int max_tokens)
{
    if (cl->rank != 0) return;
    for (int i = 0; i < n; i++) {
        CHECK(got[i].finals == 1 && !strcmp(got[i].reason, "length") && got[i].n == max_tokens,
              "%s %s req %d: %d finals, %s, %d tokens (want %d)", name, what, i, got[i].finals,
              got[i].reason, got[i].n, max_tokens);
        int diff = -1;
        for (int t = 0; t < max_tokens && t < got[i].n && diff < 0; t++)
            if (got[i].tokens[t] != want[i].tokens[t]) diff = t;
        CHECK(diff < 0, "%s %s req %d: token %d is %d, the roomy run gave %d", name, what, i, diff,
              diff >= 0 ? got[i].tokens[diff] : 0, diff >= 0 ? want[i].tokens[diff] : 0);
    }
}

static void check_all_back(ep_cluster *cl, ep_engine *e, const char *name, const char *what,
                           int kv_blocks)
{
    int free_b = ep_kv_free_blocks(ep_model_kv(ep_engine_model(e)));
    CHECK(free_b == kv_blocks, "%s %s rank %d: %d of %d KV blocks free after the run", name, what,
          cl->rank, free_b, kv_blocks);
    counters c = counters_of(cl, e);
    if (cl->rank == 0)
        CHECK(c.used == 0, "%s %s: %lld KV blocks used after the run", name, what,
              (long long)c.used);
}

// ---- preemption ------------------------------------------------------------

static void preemption_phase(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w)
{
    const int W = cl->world_size;
    // Requests of 9..23 prompt tokens + 12 generated: up to 9 blocks each
    // for their whole life. The tight pool holds 10 blocks per rank: any one
    // request fits, not all of a rank's at once.
    const int n = N_REQ * W > 16 ? 16 : N_REQ * W;
    int(*prompts)[MAX_LEN] = ep_xcalloc((size_t)n, sizeof *prompts);
    int len[16];
    for (int i = 0; i < n; i++) {
        len[i] = 9 + (i * 5) % 15;
        random_tokens(777 + (uint64_t)i, cfg->vocab, prompts[i], len[i]);
    }
    rec roomy[16], tight[16];
    enum { ROOMY = 200, TIGHT = 10 };
    ep_engine_opts o;
    ep_engine *e = NULL;
    base_opts(cfg, W, ROOMY, false, &o);
    CHECK_OK(ep_engine_create(cfg, cl, w, NULL, &o, &e));
    if (!e) goto out;
    run_batch(cl, e, n, prompts, len, MAX_GEN, roomy);
    counters c0 = counters_of(cl, e);
    if (cl->rank == 0)
        CHECK(c0.preempt == 0, "%s roomy run: %lld preemptions", cfg->name, (long long)c0.preempt);
    check_all_back(cl, e, cfg->name, "roomy", ROOMY);
    ep_engine_free(e);

    base_opts(cfg, W, TIGHT, false, &o);
    CHECK_OK(ep_engine_create(cfg, cl, w, NULL, &o, &e));
    if (!e) goto out;
    run_batch(cl, e, n, prompts, len, MAX_GEN, tight);
    check_same(cl, "tight pool", cfg->name, tight, roomy, n, MAX_GEN);
    counters c1 = counters_of(cl, e);
    if (cl->rank == 0) {
        int64_t prompt = 0;
        for (int i = 0; i < n; i++)
            prompt += len[i];
        CHECK(c1.preempt > 0 && c1.gen == (int64_t)n * MAX_GEN && c1.prefill > prompt,
              "%s tight pool: %lld preemptions, %lld generated, %lld prefill tokens computed "
              "(prompts %lld); expected > 0, %d, more than the prompts",
              cfg->name, (long long)c1.preempt, (long long)c1.gen, (long long)c1.prefill,
              (long long)prompt, n * MAX_GEN);
        printf("# %s np%d preemption: %d requests, pool %d blocks of %d per rank: %lld "
               "preemptions, prefill computed %lld (prompts %lld)\n",
               cfg->name, W, n, TIGHT, BT, (long long)c1.preempt, (long long)c1.prefill,
               (long long)prompt);
    }
    check_all_back(cl, e, cfg->name, "tight", TIGHT);
    ep_engine_free(e);

    // The same with prefix caching: a preempted request's own blocks stay
    // cached when nobody needs them, so its recompute may skip them.
    base_opts(cfg, W, TIGHT, true, &o);
    CHECK_OK(ep_engine_create(cfg, cl, w, NULL, &o, &e));
    if (!e) goto out;
    run_batch(cl, e, n, prompts, len, MAX_GEN, tight);
    check_same(cl, "tight pool, prefix caching", cfg->name, tight, roomy, n, MAX_GEN);
    counters c2 = counters_of(cl, e);
    if (cl->rank == 0) {
        CHECK(c2.preempt > 0, "%s tight pool, prefix caching: no preemption", cfg->name);
        printf("# %s np%d preemption with prefix caching: %lld preemptions, prefill computed "
               "%lld, hit %lld of %lld tokens\n",
               cfg->name, W, (long long)c2.preempt, (long long)c2.prefill, (long long)c2.hit,
               (long long)c2.query);
    }
    check_all_back(cl, e, cfg->name, "tight, prefix caching", TIGHT);
    ep_engine_free(e);
out:
    free(prompts);
}

// ---- prefix caching --------------------------------------------------------

// One warm-up request per rank (all in one step: one lands on each rank),
// with filler one long unrelated request per rank (they need the blocks the
// warm-up left cached: the cache evicts them), then N_REQ requests with the
// same system prompt and other suffixes.
static void prefix_run(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w, int kv_blocks,
                       bool prefix, bool filler, rec *out, counters *warm, counters *after)
{
    const int W = cl->world_size;
    int(*prompts)[MAX_LEN] = ep_xcalloc((size_t)(N_REQ + W), sizeof *prompts);
    int len[N_REQ + 4];
    for (int i = 0; i < N_REQ + W; i++) {
        random_tokens(31337, cfg->vocab, prompts[i], SYS);
        random_tokens(500 + (uint64_t)i, cfg->vocab, prompts[i] + SYS, SUF);
        len[i] = SYS + SUF;
    }
    ep_engine_opts o;
    ep_engine *e = NULL;
    base_opts(cfg, W, kv_blocks, prefix, &o);
    CHECK_OK(ep_engine_create(cfg, cl, w, NULL, &o, &e));
    if (e) {
        rec wr[4];
        run_batch(cl, e, W, prompts + N_REQ, len, 4, wr);
        if (filler) {
            int(*fill)[MAX_LEN] = ep_xcalloc(4, sizeof *fill);
            int flen[4];
            for (int i = 0; i < W; i++) {
                flen[i] = 40;
                random_tokens(900 + (uint64_t)i, cfg->vocab, fill[i], flen[i]);
            }
            run_batch(cl, e, W, fill, flen, 4, wr);
            free(fill);
        }
        *warm = counters_of(cl, e);
        run_batch(cl, e, N_REQ, prompts, len, 4, out);
        *after = counters_of(cl, e);
        check_all_back(cl, e, cfg->name, prefix ? "prefix" : "no prefix", kv_blocks);
    }
    ep_engine_free(e);
    free(prompts);
}

static void prefix_phase(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w)
{
    rec on[N_REQ], off[N_REQ], tight[N_REQ];
    counters w_on, a_on, w_off, a_off, w_t, a_t;
    enum { ROOMY = 120 };
    prefix_run(cl, cfg, w, ROOMY, true, false, on, &w_on, &a_on);
    prefix_run(cl, cfg, w, ROOMY, false, false, off, &w_off, &a_off);
    check_same(cl, "prefix caching", cfg->name, on, off, N_REQ, 4);
    if (cl->rank == 0) {
        int64_t p_on = a_on.prefill - w_on.prefill, p_off = a_off.prefill - w_off.prefill;
        int64_t hit = a_on.hit - w_on.hit, query = a_on.query - w_on.query;
        CHECK(p_off == (int64_t)N_REQ * (SYS + SUF) && p_on == (int64_t)N_REQ * SUF &&
                  hit == (int64_t)N_REQ * SYS && query == (int64_t)N_REQ * (SYS + SUF) &&
                  a_off.hit == 0,
              "%s prefix caching: prefill computed %lld with, %lld without (want %d, %d); hit "
              "%lld of %lld tokens (want %d of %d)",
              cfg->name, (long long)p_on, (long long)p_off, N_REQ * SUF, N_REQ * (SYS + SUF),
              (long long)hit, (long long)query, N_REQ * SYS, N_REQ * (SYS + SUF));
        CHECK(w_on.hit == 0 && a_on.cached > 0,
              "%s warm-up hit %lld tokens, %lld blocks cached after", cfg->name,
              (long long)w_on.hit, (long long)a_on.cached);
        printf("# %s np%d prefix caching: %d requests of %d shared + %d own tokens: prefill "
               "computed %lld (off: %lld), hit rate %.3f\n",
               cfg->name, cl->world_size, N_REQ, SYS, SUF, (long long)p_on, (long long)p_off,
               query ? (double)hit / (double)query : 0);
    }
    // Eviction: with 12 blocks per rank the filler (11 blocks) evicts most
    // of the warm-up's cached prefix: the first requests miss part of it,
    // later ones hit what earlier ones cached again; every request still
    // gets the tokens of the roomy run with caching off, all blocks come back.
    prefix_run(cl, cfg, w, 12, true, true, tight, &w_t, &a_t);
    check_same(cl, "prefix caching, small pool", cfg->name, tight, off, N_REQ, 4);
    if (cl->rank == 0) {
        int64_t hit = a_t.hit - w_t.hit;
        CHECK(hit > 0 && hit < (int64_t)N_REQ * SYS,
              "%s small pool: hit %lld tokens, expected some but fewer than %d (evicted)",
              cfg->name, (long long)hit, N_REQ * SYS);
    }
    if (cl->rank == 0)
        printf("# %s np%d small pool: hit %lld of %lld tokens, %lld preemptions\n", cfg->name,
               cl->world_size, (long long)(a_t.hit - w_t.hit), (long long)(a_t.query - w_t.query),
               (long long)a_t.preempt);
}

// ---- logits with a cache hit -----------------------------------------------

// On every rank's own model: sequence A computes prefix P (SYS tokens, one
// chunk) then its own tail and is freed (P's blocks stay cached); B maps
// P's cached blocks and computes only its suffix; C computes P then the
// suffix without the cache (the same chunks as A and B); D the whole prompt
// in one chunk. B's logits equal C's bitwise and D's within 1e-5.
static void logits_phase(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w)
{
    const int V = cfg->vocab;
    ep_engine_opts eo;
    base_opts(cfg, cl->world_size, 64, true, &eo);
    ep_model *m = NULL;
    ep_policy *pol = NULL;
    CHECK_OK(ep_policy_create(cfg, "baseline", &pol));
    CHECK_OK(ep_model_init(cfg, cl, w, &eo.model, &m));
    if (!m || !pol) {
        ep_model_free(m);
        ep_policy_free(pol);
        return;
    }
    ep_kv *kv = ep_model_kv(m);
    int tok[SYS + SUF], other[SUF];
    random_tokens(4711, V, tok, SYS + SUF);
    random_tokens(4712, V, other, SUF);
    float *lb = ep_xmalloc((size_t)V * sizeof(float)), *lc = ep_xmalloc((size_t)V * sizeof(float)),
          *ld = ep_xmalloc((size_t)V * sizeof(float));
    int n;
    ep_batch b = {.n_seqs = 1, .n_new = &n};
    int a, sb, sc, sd;
    // A
    CHECK_OK(ep_model_seq_new(m, &a));
    b.seq = &a, n = SYS, b.tokens = tok;
    CHECK_OK(ep_model_forward(m, pol, &b, lb, NULL));
    b.tokens = other, n = SUF;
    CHECK_OK(ep_model_forward(m, pol, &b, lb, NULL));
    ep_model_seq_free(m, a);
    // B
    uint64_t hash[SYS / BT + 1];
    int unref = -1;
    int hit = ep_kv_prefix_match(kv, 0, tok, SYS + SUF, (SYS + SUF - 1) / BT, hash, &unref);
    CHECK(hit == SYS / BT && unref == SYS / BT,
          "%s: %d cached blocks (%d unreferenced) of the "
          "prefix, expected %d",
          cfg->name, hit, unref, SYS / BT);
    int free0 = ep_kv_free_blocks(kv);
    CHECK_OK(ep_kv_seq_new_prefix(kv, 0, hash, hit, &sb));
    CHECK(ep_kv_seq_len(kv, sb) == hit * BT && ep_kv_free_blocks(kv) == free0 - hit,
          "%s: the mapped prefix holds %d tokens, %d blocks free (want %d, %d)", cfg->name,
          ep_kv_seq_len(kv, sb), ep_kv_free_blocks(kv), hit * BT, free0 - hit);
    b.seq = &sb, n = SYS + SUF - hit * BT, b.tokens = tok + hit * BT;
    CHECK_OK(ep_model_forward(m, pol, &b, lb, NULL));
    // C: no cache (a fresh sequence computes everything), same chunks
    CHECK_OK(ep_model_seq_new(m, &sc));
    b.seq = &sc, n = SYS, b.tokens = tok;
    CHECK_OK(ep_model_forward(m, pol, &b, lc, NULL));
    n = SUF, b.tokens = tok + SYS;
    CHECK_OK(ep_model_forward(m, pol, &b, lc, NULL));
    // D: one chunk
    CHECK_OK(ep_model_seq_new(m, &sd));
    b.seq = &sd, n = SYS + SUF, b.tokens = tok;
    CHECK_OK(ep_model_forward(m, pol, &b, ld, NULL));
    double dc = 0, dd = 0, mx = 0;
    for (int v = 0; v < V; v++) {
        dc = fmax(dc, fabs((double)lb[v] - lc[v]));
        dd = fmax(dd, fabs((double)lb[v] - ld[v]));
        mx = fmax(mx, fabs((double)ld[v]));
    }
    CHECK(dc == 0 && dd <= 1e-5 * fmax(1, mx),
          "%s rank %d: logits with a cache hit differ by %.3g from the same chunks without, "
          "%.3g from one chunk (max |logit| %.3g)",
          cfg->name, cl->rank, dc, dd, mx);
    if (cl->rank == 0)
        printf("# %s logits with a hit of %d tokens: max diff %.3g vs same chunks, %.3g vs one "
               "chunk\n",
               cfg->name, hit * BT, dc, dd);
    ep_model_seq_free(m, sb);
    ep_model_seq_free(m, sc);
    ep_model_seq_free(m, sd);
    free(lb);
    free(lc);
    free(ld);
    ep_policy_free(pol);
    ep_model_free(m);
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++) {
        ep_model_cfg cfg;
        ep_weights *w = NULL;
        CHECK_OK(ep_model_cfg_load(presets[i], &cfg));
        CHECK_OK(ep_weights_open(&cfg, &w));
        if (!w) continue;
        logits_phase(cl, &cfg, w);
        preemption_phase(cl, &cfg, w);
        prefix_phase(cl, &cfg, w);
        ep_weights_free(w);
    }
    int rc = mpi_check_finish(cl, "engine_kv");
    ep_cluster_free(cl);
    return rc;
}
