// The serving engine (scheduler/engine.h): requests, step planning, events
// and metrics on rank 0; the loop every rank runs. The plan's words are
// scheduler/plan_codec.c's, per-rank execution scheduler/engine_step.c's,
// the watchdog and SIGTERM scheduler/watchdog.c's. One mutex
// guards rank 0's request state; it is never held across a collective, and
// event callbacks run under it (they must return quickly). See docs/engine.md.
#include "scheduler/engine_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/liveness.h"

void ep_engine_opts_default(ep_engine_opts *o, const ep_model_cfg *cfg, int world_size)
{
    static const char *const baseline[] = {"baseline"};
    memset(o, 0, sizeof *o);
    ep_model_opts_default(&o->model, cfg);
    o->max_num_seqs = world_size * o->model.max_seqs;
    o->max_model_len = o->model.max_ctx;
    // The slot budget binds, not the token cap: a step admits the model's
    // default cap of tokens at k_base (256), and up to twice that when a
    // policy such as Ban halves K, so the slots Ban frees become tokens.
    const int base = o->model.moe.cap_tokens;
    o->model.moe.cap_tokens = 2 * base;
    o->max_tokens_per_step = o->model.moe.cap_tokens;
    o->slot_budget =
        (int64_t)base * (cfg->k_base > 0 ? cfg->k_base : 1) * ep_model_n_moe_layers(cfg);
    o->max_waiting = 256;
    o->rebalance_min_gain = 0.05;
    o->step_timeout_s = 30.0;
    o->routings = baseline;
    o->n_routings = 1;
}

ep_model *ep_engine_model(ep_engine *e)
{
    return e->m;
}
int ep_engine_eos_ids(const ep_engine *e, int *ids, int max)
{
    int n = EP_MIN(e->n_eos, max);
    memcpy(ids, e->eos, (size_t)n * sizeof *ids);
    return n;
}

int ep_engine_n_routings(const ep_engine *e)
{
    return e->o.n_routings;
}

const char *ep_engine_routing_name(const ep_engine *e, int i)
{
    return i >= 0 && i < e->o.n_routings ? e->routing_names[i] : NULL;
}

int ep_engine_find_routing(const ep_engine *e, const char *name)
{
    if (!name) return -1;
    for (int i = 0; i < e->o.n_routings; i++)
        if (!strcmp(e->routing_names[i], name)) return i;
    for (int i = 0; i < e->o.n_routings; i++)
        if (!strcmp(ep_policy_name(e->pol[i]), name)) return i;
    return -1;
}

// ---- create / free ---------------------------------------------------------

static ep_status check_opts(const ep_engine_opts *o)
{
    if (o->n_routings < 1 || !o->routings)
        return ep_errorf(EP_ERR_ARG, "engine: %d routing profiles, expected >= 1", o->n_routings);
    if (o->max_num_seqs < 1 || o->max_model_len < 2 || o->max_waiting < 0)
        return ep_errorf(EP_ERR_ARG,
                         "engine: max_num_seqs %d, max_model_len %d, max_waiting %d; "
                         "expected >= 1, >= 2, >= 0",
                         o->max_num_seqs, o->max_model_len, o->max_waiting);
    if (o->max_model_len > o->model.max_ctx)
        return ep_errorf(EP_ERR_ARG,
                         "engine: max_model_len %d exceeds the model context %d "
                         "(max_ctx)",
                         o->max_model_len, o->model.max_ctx);
    if (o->max_tokens_per_step < 1)
        return ep_errorf(EP_ERR_ARG, "engine: max_tokens_per_step %d, expected >= 1",
                         o->max_tokens_per_step);
    if (!(o->step_timeout_s > 0))
        return ep_errorf(EP_ERR_ARG, "engine: step_timeout_s %g, expected > 0", o->step_timeout_s);
    if (o->n_eos_ids < 0 || o->n_eos_ids > 16 || (o->n_eos_ids && !o->eos_ids))
        return ep_errorf(EP_ERR_ARG, "engine: %d extra end-of-sequence ids, expected 0..16",
                         o->n_eos_ids);
    return EP_OK;
}

static void read_stall_hook(ep_engine *e)
{
    e->stall_rank = -1;
    const char *s = getenv("EP_ENGINE_TEST_STALL");
    int r;
    long long step;
    double sec;
    if (s && sscanf(s, "%d:%lld:%lf", &r, &step, &sec) == 3 && sec > 0) {
        e->stall_in_forward = strstr(s, ":forward") != NULL;
        e->stall_rank = r;
        e->stall_step = step;
        e->stall_s = sec;
    }
}

ep_status ep_engine_create(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                           const ep_tokenizer *tok, const ep_engine_opts *o, ep_engine **out)
{
    *out = NULL;
    ep_status st = check_opts(o);
    if (st) return st; // the same options on every rank: every rank returns here alike
    ep_engine *e = ep_xcalloc(1, sizeof *e);
    e->cfg = cfg;
    e->cl = cl;
    e->tok = tok;
    e->o = *o;
    // A rank never runs more than the model's capacity in a step (the default
    // was taken from the model options before the caller may have lowered it).
    e->o.max_tokens_per_step = EP_MIN(o->max_tokens_per_step, o->model.moe.cap_tokens);
    e->rank = cl->rank;
    e->world = cl->world_size;
    e->n_layers = cfg->n_layers;
    e->n_experts = cfg->n_experts > 0 ? cfg->n_experts : 1;
    e->n_moe = ep_model_n_moe_layers(cfg);
    e->kv_block_tokens = o->model.kv_block_tokens;
    e->kv_blocks = o->model.kv_blocks;
    // Finished sequences hold their slot until the next plan frees them: twice
    // the running bound covers that, plus the waiting queue.
    e->cap_slots = 2 * o->max_num_seqs + o->max_waiting + 1;
    e->o.routings = NULL;
    e->routing_names = ep_xcalloc((size_t)o->n_routings, sizeof *e->routing_names);
    e->pol = ep_xcalloc((size_t)o->n_routings, sizeof *e->pol);
    e->pol_domain0 = ep_xcalloc((size_t)o->n_routings, sizeof *e->pol_domain0);
    for (int i = 0; i < o->n_routings; i++)
        e->routing_names[i] = ep_xstrdup(o->routings[i] ? o->routings[i] : "");
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    read_stall_hook(e);
    if (tok) e->n_eos = ep_tokenizer_eos_ids(tok, e->eos, 8);
    for (int i = 0; i < o->n_eos_ids && !st; i++) {
        int id = o->eos_ids[i], j = 0;
        if (id < 0 || id >= cfg->vocab)
            st = ep_errorf(EP_ERR_ARG, "engine: end-of-sequence id %d, expected 0..%d", id,
                           cfg->vocab - 1);
        while (j < e->n_eos && e->eos[j] != id)
            j++;
        if (!st && j == e->n_eos) e->eos[e->n_eos++] = id;
    }
    e->o.eos_ids = NULL; // copied

    for (int i = 0; !st && i < o->n_routings; i++) {
        if ((st = ep_policy_create(cfg, e->routing_names[i], &e->pol[i]))) break;
        // The MoE layers hold room for the widest policy's K.
        e->o.model.moe.max_k = EP_MAX(e->o.model.moe.max_k, ep_policy_max_k(e->pol[i]));
    }
    if (!st) st = ep_model_init(cfg, cl, w, &e->o.model, &e->m);
    for (int i = 0; !st && i < o->n_routings; i++) {
        const ep_routing_cfg *rc = &e->pol[i]->cfg;
        if (rc->pick.domain >= 0 && rc->pick.domain < rc->pick.n_domains)
            snprintf(e->pol_domain0[i], EP_ENG_DOMAIN_MAX, "%s",
                     rc->pick.domains[rc->pick.domain].name);
    }
    // Set-up can fail on some ranks only: agree before the first collective.
    int64_t bad = st != EP_OK;
    ep_status as = ep_cluster_allreduce_i64(cl, &bad, 1, EP_REDUCE_MAX);
    if (!st && as) st = as;
    if (!st && bad) st = ep_errorf(EP_ERR_COMM, "engine: another rank failed to set up the engine");
    // Only rank 0 holds the tokenizer; every owner rank's samplers need its
    // EOS ids (min_tokens keeps them out).
    if (!st) {
        int32_t ids[1 + EP_ARRAY_LEN(e->eos)] = {e->n_eos};
        for (int i = 0; i < e->n_eos; i++)
            ids[1 + i] = e->eos[i];
        if (!(st = ep_cluster_bcast(cl, ids, sizeof ids, 0))) {
            e->n_eos = (int)EP_MIN((int32_t)EP_ARRAY_LEN(e->eos), EP_MAX(ids[0], 0));
            for (int i = 0; i < e->n_eos; i++)
                e->eos[i] = ids[1 + i];
        }
    }
    // The engine's messages travel apart from the model's collectives; its
    // waits give up at the step deadline with the engine's wording.
    if (!st) st = ep_cluster_chan_init(cl, ep_eng_wait_error, e, &e->chan);
    // Heartbeats and polled MoE exchanges, so that a dead or stuck rank is
    // named (one watch per process: a second engine runs without).
    if (!st && !ep_cluster_watch_on()) {
        if (!(st = ep_cluster_watch_start(cl))) e->have_watch = true;
    }
    if (st) {
        ep_engine_free(e);
        return st;
    }

    int max_seqs = o->model.max_seqs, cap = o->model.moe.cap_tokens;
    e->slot_seq = ep_xmalloc((size_t)e->cap_slots * sizeof(int));
    for (int i = 0; i < e->cap_slots; i++)
        e->slot_seq[i] = -1;
    e->slot_sampler = ep_xcalloc((size_t)e->cap_slots, sizeof *e->slot_sampler);
    // A new sequence maps at most the blocks of max_model_len - 1 tokens.
    e->max_hit = ep_eng_blocks(e, o->model.max_ctx);
    int64_t hits =
        (int64_t)EP_MIN(e->cap_slots, o->max_num_seqs) * ep_eng_blocks(e, e->o.max_model_len - 1);
    e->plan_cap =
        ep_eng_plan_words(e->cap_slots, (int64_t)e->world * e->o.max_tokens_per_step, hits);
    e->hash_buf = ep_xmalloc((size_t)e->max_hit * sizeof(uint64_t));
    e->plan = ep_xmalloc(e->plan_cap * sizeof(int32_t));
    e->res_cap = ep_eng_result_words(e);
    e->res = ep_xmalloc(e->res_cap * sizeof(int64_t));
    e->b_seq = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->b_n = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->b_slot = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->b_sample = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->b_tok = ep_xmalloc((size_t)cap * sizeof(int));
    e->b_samplers = ep_xmalloc((size_t)max_seqs * sizeof *e->b_samplers);
    e->b_ids = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->f_layer = ep_xcalloc((size_t)e->n_layers, sizeof *e->f_layer);
    e->f_seq_pairs = ep_xcalloc((size_t)max_seqs, sizeof(int64_t));
    e->f_expert_load = ep_xcalloc((size_t)e->n_layers * e->n_experts, sizeof(int64_t));
    e->slot_hist = ep_xcalloc((size_t)e->cap_slots, sizeof *e->slot_hist);
    e->slot_hist_tokens = ep_xcalloc((size_t)e->cap_slots, sizeof(int64_t));
    e->slot_domain = ep_xmalloc((size_t)e->cap_slots * sizeof(int));
    for (int i = 0; i < e->cap_slots; i++)
        e->slot_domain[i] = -2;
    e->b_dom = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->b_hist = ep_xcalloc((size_t)max_seqs, sizeof *e->b_hist);
    e->b_found = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->ready_buf = ep_xcalloc((size_t)e->world, sizeof *e->ready_buf);
    if (e->rank == 0) {
        e->rq = ep_xcalloc((size_t)e->cap_slots, sizeof *e->rq);
        e->head = e->tail = -1;
        e->next_id = 1;
        e->rk_free_blocks = ep_xmalloc((size_t)e->world * sizeof(int));
        ep_kv_opts ko = *ep_kv_options(ep_model_kv(e->m));
        ko.no_rows = true;
        e->mirror = ep_xcalloc((size_t)e->world, sizeof *e->mirror);
        for (int r = 0; r < e->world; r++) {
            ep_status ks = ep_kv_init(&ko, &e->mirror[r]); // the model's own options, no pool
            EP_ASSERT(ks == EP_OK);
        }
        e->mslot = ep_xmalloc((size_t)e->cap_slots * sizeof(int));
        for (int i = 0; i < e->cap_slots; i++)
            e->mslot[i] = -1;
        e->pf_slot = ep_xmalloc((size_t)e->cap_slots * sizeof(int));
        e->pf_owner = ep_xmalloc((size_t)e->cap_slots * sizeof(int));
        e->new_slot = ep_xmalloc((size_t)e->cap_slots * sizeof(int));
        // vLLM's watermark: 1% of the pool, so that admitting a prompt does
        // not leave the running sequences without room for their next token.
        e->kv_watermark = (e->kv_blocks + 99) / 100;
        e->rk_nseqs = ep_xcalloc((size_t)e->world, sizeof(int));
        e->rk_tokens = ep_xcalloc((size_t)e->world, sizeof(int));
        e->rk_slots = ep_xcalloc((size_t)e->world, sizeof(double));
        e->rk_full = ep_xcalloc((size_t)e->world, sizeof(bool));
        e->q_seq = ep_xcalloc((size_t)e->cap_slots, sizeof *e->q_seq);
        e->q_slot = ep_xcalloc((size_t)e->cap_slots, sizeof(int));
        e->rres = ep_xcalloc((size_t)e->world, sizeof *e->rres);
        for (int r = 0; r < e->world; r++)
            e->rres[r] = ep_xmalloc(e->res_cap * sizeof(int64_t));
        e->m_layer = ep_xcalloc((size_t)e->n_layers * EP_ENG_LAYER_WORDS, sizeof(int64_t));
        e->m_layer_recv = ep_xcalloc((size_t)e->n_layers * e->world, sizeof(int64_t));
        e->m_expert = ep_xcalloc((size_t)e->n_layers * e->n_experts, sizeof(int64_t));
        e->m_prof = ep_xcalloc((size_t)o->n_routings * EP_ENG_PROF_WORDS, sizeof(int64_t));
        e->m_prof_slots = ep_xcalloc((size_t)o->n_routings, sizeof(double));
        e->m_prof_us = ep_xcalloc((size_t)o->n_routings * 2, sizeof(double));
        e->m_auto_off = ep_xcalloc((size_t)o->n_routings + 1, sizeof(int));
        for (int i = 0; i < o->n_routings; i++)
            e->m_auto_off[i + 1] = e->m_auto_off[i] + e->pol[i]->cfg.pick.n_domains + 1;
        e->m_auto = ep_xcalloc((size_t)e->m_auto_off[o->n_routings], sizeof(int64_t));
    }
    ep_sched_budget_default(&e->budget, cfg->k_base > 0 ? cfg->k_base : 1, e->n_moe,
                            e->o.max_tokens_per_step);
    if (o->slot_budget > 0) e->budget.slot_budget = o->slot_budget;
    e->budget.max_tokens = e->o.max_tokens_per_step;
    // KV is planned in blocks by build_plan (a step's tokens against the
    // owner's free blocks), not by the token budget.
    e->budget.kv_free = -1;
    *out = e;
    return EP_OK;
}

static void req_release(ep_eng_req *r)
{
    free(r->toks);
    free(r->hash);
    ep_stop_text_free(&r->text);
    memset(r, 0, sizeof *r);
    r->state = RQ_FREE;
}

void ep_engine_free(ep_engine *e)
{
    if (!e) return;
    if (e->slot_seq && e->m)
        for (int i = 0; i < e->cap_slots; i++)
            if (e->slot_seq[i] >= 0) ep_model_seq_free(e->m, e->slot_seq[i]);
    if (e->slot_sampler)
        for (int i = 0; i < e->cap_slots; i++)
            ep_sampler_free(e->slot_sampler[i]);
    if (e->rq)
        for (int i = 0; i < e->cap_slots; i++)
            req_release(&e->rq[i]);
    for (int i = 0; i < e->o.n_routings; i++) {
        if (e->pol) ep_policy_free(e->pol[i]);
        if (e->routing_names) free(e->routing_names[i]);
    }
    if (e->rres)
        for (int r = 0; r < e->world; r++)
            free(e->rres[r]);
    if (e->mirror)
        for (int r = 0; r < e->world; r++)
            ep_kv_free(e->mirror[r]);
    free(e->mirror);
    free(e->mslot);
    free(e->pf_slot);
    free(e->pf_owner);
    free(e->new_slot);
    free(e->hash_buf);
    if (e->have_watch) ep_cluster_watch_stop();
    ep_cluster_chan_free(e->chan);
    ep_model_free(e->m);
    free(e->routing_names);
    free(e->pol);
    free(e->pol_domain0);
    free(e->slot_seq);
    free(e->slot_sampler);
    free(e->plan);
    free(e->res);
    free(e->b_seq);
    free(e->b_n);
    free(e->b_slot);
    free(e->b_sample);
    free(e->b_tok);
    free(e->b_samplers);
    free(e->b_ids);
    free(e->f_layer);
    free(e->f_seq_pairs);
    free(e->f_expert_load);
    for (int i = 0; e->slot_hist && i < e->cap_slots; i++)
        free(e->slot_hist[i]);
    free(e->slot_hist);
    free(e->slot_hist_tokens);
    free(e->slot_domain);
    free(e->b_dom);
    free(e->b_hist);
    free(e->b_found);
    free(e->m_auto);
    free(e->m_auto_off);
    free(e->ready_buf);
    free(e->rq);
    free(e->rk_free_blocks);
    free(e->rk_nseqs);
    free(e->rk_tokens);
    free(e->rk_slots);
    free(e->rk_full);
    free(e->q_seq);
    free(e->q_slot);
    free(e->rres);
    free(e->m_layer);
    free(e->m_layer_recv);
    free(e->m_expert);
    free(e->m_prof);
    free(e->m_prof_slots);
    free(e->m_prof_us);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

// ---- requests (rank 0, under mu) -------------------------------------------

static void list_remove(ep_engine *e, int s)
{
    ep_eng_req *r = &e->rq[s];
    if (r->prev >= 0)
        e->rq[r->prev].next = r->next;
    else
        e->head = r->next;
    if (r->next >= 0)
        e->rq[r->next].prev = r->prev;
    else
        e->tail = r->prev;
    r->prev = r->next = -1;
}

static void emit(ep_eng_req *r, ep_event_kind kind, int token, const char *text, size_t text_len,
                 const char *reason, ep_status err, const char *msg)
{
    ep_event ev = {.kind = kind,
                   .id = r->id,
                   .token = token,
                   .text = text,
                   .text_len = text_len,
                   .finish_reason = reason,
                   .prompt_tokens = r->n_prompt,
                   .completion_tokens = r->n_gen,
                   .error = err,
                   .message = msg,
                   .pick_domain = r->auto_domain};
    r->fn(r->user, &ev);
}

// The sequence of running request s is freed in its owner's mirror now and
// on the owner by the next plan, in the same order.
static void release_kv(ep_engine *e, int s)
{
    ep_eng_req *r = &e->rq[s];
    ep_kv_seq_free(e->mirror[r->owner], e->mslot[s]);
    e->mslot[s] = -1;
    e->pf_slot[e->n_pf] = s;
    e->pf_owner[e->n_pf++] = r->owner;
    e->rk_nseqs[r->owner]--;
}

// The request's final event; its sequence (if any) is freed by the next plan.
static void finish(ep_engine *e, int s, const char *reason)
{
    ep_eng_req *r = &e->rq[s];
    const char *txt = NULL;
    size_t tl = 0;
    if (e->tok) ep_stop_text_flush(&r->text, &txt, &tl);
    if (!strcmp(reason, "abort"))
        e->m_aborted++;
    else
        e->m_finished++;
    emit(r, EP_EV_FINISH, -1, txt, tl, reason, EP_OK, NULL);
    if (r->state == RQ_RUNNING) {
        e->n_running--;
        release_kv(e, s);
        r->state = RQ_FREEING; // the plan that frees it releases the slot
    } else {
        e->n_waiting--;
        list_remove(e, s);
        req_release(r);
    }
}

// Every live request ends with EV_ERROR (a failed step, a terminated job).
void ep_eng_fail_all(ep_engine *e, ep_status err, const char *msg)
{
    for (int s = 0; s < e->cap_slots; s++) {
        ep_eng_req *r = &e->rq[s];
        if (r->state != RQ_WAITING && r->state != RQ_RUNNING) continue;
        emit(r, EP_EV_ERROR, -1, NULL, 0, NULL, err, msg);
        e->m_failed++;
        if (r->state == RQ_RUNNING) {
            e->n_running--;
            release_kv(e, s);
        } else {
            e->n_waiting--;
        }
        r->state = RQ_FREEING;
    }
    e->serving_closed = true;
}

ep_status ep_engine_submit(ep_engine *e, const ep_request *q, ep_event_fn fn, void *user,
                           uint64_t *id)
{
    if (e->rank != 0)
        return ep_errorf(EP_ERR_ARG, "engine: requests are submitted on rank 0, not rank %d",
                         e->rank);
    const ep_model_cfg *c = e->cfg;
    if (!fn) return ep_errorf(EP_ERR_ARG, "request: no event callback");
    if (q->n_prompt < 1 || !q->prompt)
        return ep_errorf(EP_ERR_ARG, "request: prompt: empty, expected at least one token");
    for (int i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] < 0 || q->prompt[i] >= c->vocab)
            return ep_errorf(EP_ERR_ARG,
                             "request: prompt: token %d is id %d, expected 0..%d "
                             "(vocab of %s)",
                             i, q->prompt[i], c->vocab - 1, c->name);
    if (q->max_tokens < 1)
        return ep_errorf(EP_ERR_ARG, "request: max_tokens %d, expected >= 1", q->max_tokens);
    if ((int64_t)q->n_prompt + q->max_tokens > e->o.max_model_len)
        return ep_errorf(EP_ERR_ARG,
                         "request: prompt of %d tokens + max_tokens %d = %lld tokens, "
                         "more than max_model_len %d",
                         q->n_prompt, q->max_tokens, (long long)q->n_prompt + q->max_tokens,
                         e->o.max_model_len);
    int need = ep_eng_blocks(e, q->n_prompt + q->max_tokens - 1);
    if (need > e->kv_blocks)
        return ep_errorf(EP_ERR_ARG,
                         "request: prompt of %d tokens + max_tokens %d needs %d KV "
                         "blocks of %d tokens, a rank holds %d (kv_blocks)",
                         q->n_prompt, q->max_tokens, need, e->kv_block_tokens, e->kv_blocks);
    ep_sampler *probe = NULL;
    ep_status st = ep_sampler_init(&q->sample, c->vocab, &probe);
    ep_sampler_free(probe);
    if (st) return ep_error_prefix(st, "request");
    int routing = q->routing < 0 ? 0 : q->routing;
    if (routing >= e->o.n_routings)
        return ep_errorf(EP_ERR_ARG, "request: routing %d, expected -1..%d (profiles loaded)",
                         q->routing, e->o.n_routings - 1);
    const char *dom = q->pick_domain ? q->pick_domain : "";
    if (dom[0]) {
        if (strlen(dom) >= EP_ENG_DOMAIN_MAX ||
            ep_routing_cfg_find_domain(&e->pol[routing]->cfg, dom) < 0)
            return ep_errorf(EP_ERR_ARG,
                             "request: pick_domain '%s' is not a domain of routing "
                             "profile '%s' (%d domains)",
                             dom, e->routing_names[routing], e->pol[routing]->cfg.pick.n_domains);
    }
    if (q->n_stop > 0 && !e->tok)
        return ep_errorf(EP_ERR_ARG, "request: stop strings need a tokenizer, the engine has "
                                     "none");
    if (q->n_stop < 0 || (q->n_stop > 0 && !q->stop))
        return ep_errorf(EP_ERR_ARG, "request: stop: %d strings", q->n_stop);
    ep_stop_text text;
    if ((st = ep_stop_text_init(&text, q->stop, q->n_stop))) return ep_error_prefix(st, "request");

    pthread_mutex_lock(&e->mu);
    int slot = -1;
    if (e->serving_closed || atomic_load(&e->shutdown_req) || atomic_load(&e->failed)) {
        st = ep_errorf(EP_ERR_UNAVAILABLE, "engine: not serving (%s)",
                       atomic_load(&e->failed) ? "a step failed" : "shutting down");
    } else if (e->n_waiting >= e->o.max_waiting) {
        st = ep_errorf(EP_ERR_BUSY, "engine: %d requests wait already (max_waiting %d)",
                       e->n_waiting, e->o.max_waiting);
    } else {
        for (int s = 0; s < e->cap_slots && slot < 0; s++)
            if (e->rq[s].state == RQ_FREE) slot = s;
        if (slot < 0)
            st = ep_errorf(EP_ERR_BUSY, "engine: all %d request slots are in use", e->cap_slots);
    }
    if (st) {
        pthread_mutex_unlock(&e->mu);
        ep_stop_text_free(&text);
        return st;
    }
    ep_eng_req *r = &e->rq[slot];
    memset(r, 0, sizeof *r);
    r->state = RQ_WAITING;
    r->id = e->next_id++;
    r->toks = ep_xmalloc(((size_t)q->n_prompt + q->max_tokens) * sizeof(int));
    memcpy(r->toks, q->prompt, (size_t)q->n_prompt * sizeof(int));
    r->hash = ep_xmalloc((size_t)ep_eng_blocks(e, q->n_prompt + q->max_tokens) * sizeof(uint64_t));
    r->salt = ep_eng_salt(e, routing, dom);
    r->n_prompt = q->n_prompt;
    r->max_tokens = q->max_tokens;
    r->ignore_eos = q->ignore_eos;
    r->sp = q->sample;
    r->routing = routing;
    snprintf(r->domain, sizeof r->domain, "%s", dom);
    r->owner = -1;
    r->served = e->tick++;
    r->text = text;
    r->fn = fn;
    r->user = user;
    r->prev = e->tail;
    r->next = -1;
    if (e->tail >= 0)
        e->rq[e->tail].next = slot;
    else
        e->head = slot;
    e->tail = slot;
    e->n_waiting++;
    if (id) *id = r->id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return EP_OK;
}

void ep_engine_cancel(ep_engine *e, uint64_t id)
{
    if (e->rank != 0) return;
    pthread_mutex_lock(&e->mu);
    for (int s = 0; s < e->cap_slots; s++)
        if ((e->rq[s].state == RQ_WAITING || e->rq[s].state == RQ_RUNNING) && e->rq[s].id == id)
            e->rq[s].cancel = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void ep_engine_shutdown(ep_engine *e, bool drain)
{
    // Only atomics: this runs in signal handlers too. The engine thread
    // notices within its idle wait (100 ms) or at the end of the step.
    atomic_store(&e->drain, drain ? 1 : 0);
    atomic_store(&e->shutdown_req, 1);
}

bool ep_engine_serving(const ep_engine *e)
{
    return !atomic_load(&((ep_engine *)e)->shutdown_req) && !atomic_load(&((ep_engine *)e)->failed);
}

// ---- planning (rank 0, under mu) -------------------------------------------

static bool same_group(const ep_eng_req *a, int routing, const char *domain)
{
    return a->routing == routing && !strcmp(a->domain, domain);
}

// Whether a waiting request could get a rank now (sequence bounds, a free
// KV block beyond the watermark, or a rank with nothing running).
static bool admissible(const ep_engine *e, const ep_eng_req *r)
{
    (void)r;
    if (e->n_running >= e->o.max_num_seqs) return false;
    for (int k = 0; k < e->world; k++)
        if (e->rk_nseqs[k] < e->o.model.max_seqs &&
            (e->rk_nseqs[k] == 0 || ep_kv_free_blocks(e->mirror[k]) > e->kv_watermark))
            return true;
    return false;
}

// Picks the routing group of the step: the one whose oldest runnable
// request (by arrival, or by the last step it ran in) is oldest. Returns the
// slot that represents it, -1 when nothing can run.
static int pick_group(const ep_engine *e)
{
    int best = -1;
    for (int s = e->head; s >= 0; s = e->rq[s].next) {
        const ep_eng_req *r = &e->rq[s];
        bool runnable = r->state == RQ_RUNNING || (r->state == RQ_WAITING && admissible(e, r));
        if (runnable && (best < 0 || r->served < e->rq[best].served)) best = s;
    }
    return best;
}

// Tokens request r knows: its prompt and what it generated (the last one
// not yet fed while it decodes).
static int known_tokens(const ep_eng_req *r)
{
    return r->n_prompt + r->n_gen;
}

// Preemption by recompute (vLLM's default): the running request s loses its
// sequence (freed by the next plan, its blocks in the mirror now) and waits
// again, in its place of arrival, to prefill its prompt and the tokens it
// generated so far; its events continue where they stopped.
static void preempt(ep_engine *e, int s)
{
    ep_eng_req *r = &e->rq[s];
    EP_ASSERT(r->state == RQ_RUNNING);
    release_kv(e, s);
    r->state = RQ_WAITING;
    r->owner = -1;
    r->fed = 0;
    r->step_n = 0;
    e->n_running--;
    e->n_waiting++;
    e->m_preempt++;
}

// Mean experts per token per MoE layer that steps of routing profile
// `routing` have shown so far (pairs over token layers, every rank): the
// prediction for a new sequence of that profile, so that a policy that
// lowers K admits more prompt tokens from its first step. 0 before any.
static double profile_k(const ep_engine *e, int routing)
{
    const int64_t *p = e->m_prof + (size_t)routing * EP_ENG_PROF_WORDS;
    return p[2] > 0 ? (double)p[3] / (double)p[2] : 0.0;
}

// The running request of rank k admitted last, -1 none.
static int latest_running(const ep_engine *e, int k)
{
    int best = -1;
    for (int s = e->head; s >= 0; s = e->rq[s].next) {
        const ep_eng_req *r = &e->rq[s];
        if (r->state == RQ_RUNNING && r->owner == k &&
            (best < 0 || r->admit_no > e->rq[best].admit_no))
            best = s;
    }
    return best;
}

// The running sequences of the group on rank k: what each runs this step
// (step_n), first come first served under the token and slot budgets, then
// against the rank's free KV blocks: a prefill chunk shrinks to the blocks
// left; a sequence that cannot get one token preempts the rank's latest
// admitted request (possibly itself) and the rank is planned again.
// Leaves rk_tokens, rk_slots, rk_full and rk_free_blocks (blocks left for
// new sequences) of rank k.
static void plan_running(ep_engine *e, int k, int routing, const char *domain)
{
    const int bt = e->kv_block_tokens;
    for (;;) {
        int nq = 0;
        for (int s = e->head; s >= 0; s = e->rq[s].next) {
            ep_eng_req *r = &e->rq[s];
            r->step_n = r->state == RQ_RUNNING && r->owner == k ? 0 : r->step_n;
            if (r->state != RQ_RUNNING || r->owner != k || !same_group(r, routing, domain))
                continue;
            ep_sched_seq q = r->ss;
            q.want_tokens = known_tokens(r) - r->fed;
            q.kv_need = 0;
            e->q_seq[nq] = q;
            e->q_slot[nq++] = s;
        }
        ep_sched_step a = ep_sched_admit(&e->budget, e->q_seq, nq);
        int left = ep_kv_free_blocks(e->mirror[k]), victim = -1;
        int tokens = 0, n_ok = 0;
        double slots = 0;
        bool cut = a.n_seqs < nq || a.last_partial_tokens > 0;
        for (int i = 0; i < a.n_seqs; i++) {
            ep_eng_req *r = &e->rq[e->q_slot[i]];
            int n = e->q_seq[i].want_tokens;
            if (i == a.n_seqs - 1 && a.last_partial_tokens > 0) n = a.last_partial_tokens;
            int held = ep_kv_seq_blocks(e->mirror[k], e->mslot[e->q_slot[i]]);
            int need = ep_eng_blocks(e, r->fed + n) - held;
            if (need > left) {
                n = (held + left) * bt - r->fed; // the tokens the free blocks hold
                if (n < 1) {
                    victim = latest_running(e, k);
                    break;
                }
                need = left;
                cut = true;
            }
            left -= need;
            r->step_n = n;
            tokens += n;
            slots += ep_sched_predict_slots(&e->budget, &e->q_seq[i], n);
            n_ok++;
            if (n < e->q_seq[i].want_tokens) break; // nothing jumps a partly run sequence
        }
        if (victim >= 0) {
            preempt(e, victim);
            continue;
        }
        e->rk_tokens[k] = tokens;
        e->rk_slots[k] = slots;
        e->rk_full[k] = cut || n_ok < nq;
        e->rk_free_blocks[k] = left;
        return;
    }
}

// Writes the step's plan into e->plan; returns its words, 0 when there is
// nothing to run or free. Every KV decision is applied to the owner's mirror
// in the order the owner applies the plan: frees, new sequences (mapping
// their cached prefix), then each run's reserve and commit.
// stop: a stop plan (frees only). failed: tells the other ranks why.
static size_t build_plan(ep_engine *e, bool stop, bool failed)
{
    const int bt = e->kv_block_tokens;
    ep_eng_plan_head h = {
        .step = atomic_load(&e->step_no), .stop = stop, .failed = failed, .routing = 0};
    // Every rebalance_interval steps that ran, the experts are re-placed from
    // the loads the ranks observed since the last time (between two steps:
    // nothing in flight is touched).
    if (!stop && e->o.rebalance_interval > 0 &&
        e->m_steps - e->replace_at_step >= e->o.rebalance_interval) {
        h.replace = true;
        e->replace_at_step = e->m_steps;
    }
    int g = stop ? -1 : pick_group(e);
    if (g >= 0) {
        h.routing = e->rq[g].routing;
        snprintf(h.domain, sizeof h.domain, "%s", e->rq[g].domain);
    }
    const int routing = h.routing;
    const char *domain = h.domain;

    int n_new = 0;
    if (!stop) {
        // Running sequences of the group, per rank (this may preempt).
        for (int s = e->head; s >= 0; s = e->rq[s].next)
            e->rq[s].step_n = 0;
        for (int k = 0; k < e->world; k++)
            plan_running(e, k, routing, domain);

        // New sequences of the group in arrival order (preempted ones keep
        // their place): each rank's cached prefix of the request is looked
        // up; the rank with the most free KV blocks after this sequence's
        // first chunk (ties: the longer cached prefix, then the fewest
        // predicted slots this step, then the lower rank) that still has
        // step room takes it; the first request that finds none stops the rest.
        for (int s = e->head; s >= 0; s = e->rq[s].next) {
            ep_eng_req *r = &e->rq[s];
            if (r->state != RQ_WAITING || !same_group(r, routing, domain)) continue;
            if (e->n_running >= e->o.max_num_seqs) break;
            int known = known_tokens(r);
            ep_sched_seq q = {.want_tokens = known, .prior_k = profile_k(e, routing)};
            double per_tok = ep_sched_predict_slots(&e->budget, &q, 1);
            int best = -1, best_fit = 0, best_left = 0, best_hit = 0;
            for (int k = 0; k < e->world; k++) {
                if (e->rk_full[k] || e->rk_nseqs[k] >= e->o.model.max_seqs) continue;
                // At least the last known token is computed (its logits).
                int unref = 0;
                int hit = ep_kv_prefix_match(e->mirror[k], r->salt, r->toks, known,
                                             (known - 1) / bt, e->hash_buf, &unref);
                int avail = e->rk_free_blocks[k] - unref;
                int want = known - hit * bt;
                int fit = EP_MIN(want, e->o.max_tokens_per_step - e->rk_tokens[k]);
                if (per_tok > 0) {
                    double sl = (double)e->budget.slot_budget - e->rk_slots[k];
                    int by = sl > 0 ? (int)(sl / per_tok + 1e-9) : 0;
                    fit = EP_MIN(fit, by);
                }
                if (fit < 1 && e->rk_tokens[k] == 0) fit = 1; // a rank's first sequence runs
                // Its chunk starts block-aligned: avail blocks hold avail * bt tokens.
                fit = EP_MIN(fit, avail * bt);
                if (fit < 1) continue;
                int blocks_left = avail - ep_eng_blocks(e, fit);
                if (e->rk_nseqs[k] > 0 && blocks_left < e->kv_watermark) continue;
                if (best < 0 || blocks_left > best_left ||
                    (blocks_left == best_left &&
                     (hit > best_hit || (hit == best_hit && e->rk_slots[k] < e->rk_slots[best])))) {
                    best = k;
                    best_fit = fit;
                    best_left = blocks_left;
                    best_hit = hit;
                }
            }
            if (best < 0) break;
            // The owner's mirror maps the same blocks the owner will.
            r->n_hit = ep_kv_prefix_match(e->mirror[best], r->salt, r->toks, known,
                                          (known - 1) / bt, r->hash, NULL);
            EP_ASSERT(r->n_hit == best_hit);
            ep_status ks =
                ep_kv_seq_new_prefix(e->mirror[best], r->salt, r->hash, r->n_hit, &e->mslot[s]);
            EP_ASSERT(ks == EP_OK); // max_seqs per rank is checked above
            r->state = RQ_RUNNING;
            r->owner = best;
            r->fed = r->n_hit * bt;
            r->fill_to = known;
            r->admit_no = e->admit_no++;
            r->step_n = best_fit;
            r->ss.prior_k = q.prior_k;
            if (!r->admitted) e->m_prompt += r->n_prompt;
            r->admitted = true;
            e->m_hit_tokens += (int64_t)r->n_hit * bt;
            e->m_query_tokens += known;
            e->n_waiting--;
            e->n_running++;
            e->rk_free_blocks[best] = best_left;
            e->rk_nseqs[best]++;
            e->rk_tokens[best] += best_fit;
            e->rk_slots[best] += per_tok * best_fit;
            if (best_fit < known - r->fed) e->rk_full[best] = true;
            e->new_slot[n_new++] = s;
        }
    }

    ep_eng_plan_writer p;
    ep_eng_plan_begin(&p, e->plan, e->plan_cap, &h);
    // Frees: finished and preempted sequences, in the order the mirror freed them.
    int n_free = e->n_pf;
    for (int i = 0; i < e->n_pf; i++) {
        int s = e->pf_slot[i];
        ep_eng_plan_put_free(&p, s, e->pf_owner[i]);
        if (e->rq[s].state == RQ_FREEING) {
            list_remove(e, s);
            req_release(&e->rq[s]);
        }
    }
    e->n_pf = 0;
    // Finished requests that never had a sequence (failed while waiting).
    for (int s = 0; s < e->cap_slots; s++) {
        ep_eng_req *r = &e->rq[s];
        if (r->state != RQ_FREEING) continue;
        list_remove(e, s);
        req_release(r);
    }
    if (stop) return ep_eng_plan_end(&p);
    for (int i = 0; i < n_new; i++) {
        const ep_eng_req *r = &e->rq[e->new_slot[i]];
        ep_eng_plan_put_new(&p, e->new_slot[i], r->owner, &r->sp, r->n_gen, r->n_hit, r->hash);
    }

    // What every admitted sequence runs: a prompt chunk (a recompute: its
    // prompt and generated tokens) or its last token; the mirror reserves
    // every run's blocks, then commits their tokens, as the forward does.
    int n_run = 0, tokens = 0;
    double slots = 0;
    for (int s = e->head; s >= 0; s = e->rq[s].next) {
        ep_eng_req *r = &e->rq[s];
        if (r->state != RQ_RUNNING || r->step_n <= 0) continue;
        int n = r->step_n;
        EP_ASSERT(r->fed + n <= known_tokens(r));
        // It samples after this step once every known token is fed.
        ep_eng_plan_put_run(&p, s, r->owner, n, r->fed + n == known_tokens(r), r->toks + r->fed);
        ep_status ks = ep_kv_reserve(e->mirror[r->owner], e->mslot[s], n);
        EP_ASSERT(ks == EP_OK); // planned against the mirror's free blocks
        slots += ep_sched_predict_slots(&e->budget, &r->ss, n);
        r->served = e->tick;
        n_run++;
        tokens += n;
    }
    for (int s = e->head; s >= 0; s = e->rq[s].next) {
        ep_eng_req *r = &e->rq[s];
        if (r->state == RQ_RUNNING && r->step_n > 0)
            ep_kv_commit(e->mirror[r->owner], e->mslot[s], r->step_n, r->toks + r->fed);
    }
    e->tick++;
    size_t words = ep_eng_plan_end(&p);
    if (n_run > 0) {
        e->m_last_tokens = tokens;
        e->m_last_slots = slots;
        e->m_last_routing = routing;
    }
    // A plan that only frees still goes out (no forward runs then): rank 0
    // has already released those slots and their KV in its mirror.
    return n_run > 0 || n_free > 0 || h.replace ? words : 0;
}

// ---- results (rank 0, under mu) --------------------------------------------

static void on_token(ep_engine *e, int s, int token)
{
    ep_eng_req *r = &e->rq[s];
    r->toks[r->n_prompt + r->n_gen] = token;
    r->n_gen++;
    r->last_tok = token;
    e->m_gen++;
    const char *txt = NULL;
    size_t tl = 0;
    bool stop_str = false;
    if (e->tok) {
        size_t pl = 0;
        const char *piece = ep_tokenizer_piece(e->tok, token, &pl);
        // Special tokens (EOS, chat markers) are not part of the text, as
        // OpenAI-compatible servers print it (skip_special_tokens).
        if (!piece || ep_tokenizer_is_special(e->tok, token)) pl = 0;
        stop_str = ep_stop_text_add(&r->text, piece ? piece : "", pl, &txt, &tl);
    }
    emit(r, EP_EV_TOKEN, token, txt, tl, NULL, EP_OK, NULL);
    if (stop_str) {
        finish(e, s, "stop");
        return;
    }
    ep_stop_params sp = {
        .eos = e->eos, .n_eos = r->ignore_eos ? 0 : e->n_eos, .max_tokens = r->max_tokens};
    ep_stop_reason why = ep_stop_check(&sp, token, r->n_gen);
    if (why != EP_STOP_NONE) finish(e, s, ep_stop_reason_str(why));
}

// Folds every rank's result of the step in; EP_ERR_COMM when one failed.
static ep_status apply_results(ep_engine *e)
{
    const int L = e->n_layers, E = e->n_experts;
    int64_t *prof = e->m_prof + (size_t)e->m_last_routing * EP_ENG_PROF_WORDS;
    for (int k = 0; k < e->world; k++) {
        const int64_t *res = e->rres[k];
        if (res[0] != EP_OK)
            return k == 0 ? ep_error_prefix((ep_status)res[0], "step %lld on rank 0",
                                            (long long)atomic_load(&e->step_no))
                          : ep_errorf(EP_ERR_COMM, "step %lld failed on rank %d (%s)",
                                      (long long)atomic_load(&e->step_no), k,
                                      ep_status_str((ep_status)res[0]));
    }
    for (int k = 0; k < e->world; k++) {
        const int64_t *res = e->rres[k];
        size_t w = 2 + EP_ENG_ENTRY_WORDS * (size_t)res[1];
        for (int l = 0; l < L; l++, w += EP_ENG_LAYER_WORDS) {
            for (int j = 0; j < EP_ENG_LAYER_WORDS; j++)
                e->m_layer[(size_t)l * EP_ENG_LAYER_WORDS + j] += res[w + j];
            for (int j = 0; j < 7; j++)
                prof[2 + j] += res[w + j];
            e->m_layer_recv[(size_t)l * e->world + k] += res[w + 7];
        }
        for (size_t j = 0; j < (size_t)L * E; j++)
            e->m_expert[j] += res[w + j];
        // The mirror planned this rank's blocks: it must agree with the rank.
        int64_t kv_free = res[w + (size_t)L * E], mine = ep_kv_free_blocks(e->mirror[k]);
        if (kv_free != mine)
            return ep_errorf(EP_ERR_COMM,
                             "step %lld: rank %d has %lld free KV blocks, rank 0's mirror of "
                             "its cache %lld (the plans were applied differently)",
                             (long long)atomic_load(&e->step_no), k, (long long)kv_free,
                             (long long)mine);
    }
    for (int k = 0; k < e->world; k++) {
        const int64_t *res = e->rres[k];
        for (int64_t i = 0; i < res[1]; i++) {
            const int64_t *en = res + 2 + EP_ENG_ENTRY_WORDS * i;
            int s = (int)en[0];
            int token = (int)en[1];
            int64_t pairs = en[2];
            ep_eng_req *r = &e->rq[s];
            if (r->state != RQ_RUNNING) continue; // ended meanwhile (cancel)
            if (en[3] >= -1) { // its owner detected its Pick domain (engine_step.c)
                const ep_routing_cfg *rc = &e->pol[r->routing]->cfg;
                EP_ASSERT(en[3] < rc->pick.n_domains);
                r->auto_domain = en[3] >= 0 ? rc->pick.domains[en[3]].name : "";
                e->m_auto[e->m_auto_off[r->routing] + en[3] + 1]++;
            }
            int n = r->step_n;
            if (r->fed < r->fill_to) e->m_prefill += n;
            r->fed += n;
            ep_sched_observe(&e->budget, &r->ss, pairs, (int64_t)n * e->n_moe);
            if (token >= 0) on_token(e, s, token);
        }
    }
    e->m_steps++;
    prof[0]++;
    prof[1] += e->m_last_tokens;
    e->m_prof_slots[e->m_last_routing] += e->m_last_slots;
    e->m_prof_us[2 * e->m_last_routing] += e->f_fwd_us;
    e->m_prof_us[2 * e->m_last_routing + 1] += e->f_moe_us;
    return EP_OK;
}

// ---- the loop --------------------------------------------------------------

static ep_status run_rank0(ep_engine *e)
{
    ep_status st = EP_OK;
    for (;;) {
        ep_cluster_watch_poll();
        ep_eng_handle_term(e);
        pthread_mutex_lock(&e->mu);
        if (atomic_load(&e->failed)) {
            pthread_mutex_unlock(&e->mu);
            return EP_ERR_COMM; // handle_term's message
        }
        bool shut = atomic_load(&e->shutdown_req);
        if (shut) e->serving_closed = true;
        for (int s = e->head; s >= 0;) {
            int next = e->rq[s].next;
            ep_eng_req *r = &e->rq[s];
            if ((r->state == RQ_WAITING || r->state == RQ_RUNNING) &&
                (r->cancel || (shut && !atomic_load(&e->drain))))
                finish(e, s, "abort");
            s = next;
        }
        bool idle = e->n_running == 0 && e->n_waiting == 0;
        bool stop = idle && (shut || e->o.exit_when_idle);
        size_t words = build_plan(e, stop, false);
        if (!stop && words == 0) {
            // Nothing can run: wait for a request, a cancel or a shutdown.
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            pthread_mutex_unlock(&e->mu);
            continue;
        }
        pthread_mutex_unlock(&e->mu);

        double begin = ep_now_us();
        atomic_store(&e->step_begin_us, (long long)begin);
        ep_cluster_watch_set_deadline(begin + e->o.step_timeout_s * 1e6);
        ep_eng_plan_head h = {0};
        if (!(st = ep_eng_send_plan(e, words))) st = ep_eng_exec(e, words, &h);
        if (h.stop && !st) {
            atomic_store(&e->step_begin_us, 0);
            ep_cluster_watch_set_deadline(0);
            return EP_OK;
        }
        bool answered = st == EP_OK; // every rank finished the step and listens again
        pthread_mutex_lock(&e->mu);
        if (!st && !atomic_load(&e->failed) && e->step_ran) st = apply_results(e);
        atomic_store(&e->step_begin_us, 0);
        ep_cluster_watch_set_deadline(0);
        atomic_store(&e->step_phase, 0);
        atomic_fetch_add(&e->step_no, 1);
        if (st) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", ep_last_error());
            atomic_store(&e->failed, 1);
            ep_eng_fail_all(e, st, msg);
            // A rank's own failure: the others wait for a plan; tell them to
            // stop. After a timeout some rank is lost: the caller ends the job.
            size_t w = answered ? build_plan(e, true, true) : 0;
            pthread_mutex_unlock(&e->mu);
            if (w && !ep_eng_send_plan(e, w)) ep_eng_exec(e, w, &h);
            ep_errorf(st, "%s", msg);
            return st;
        }
        pthread_mutex_unlock(&e->mu);
    }
}

static ep_status run_other(ep_engine *e)
{
    for (;;) {
        size_t words = 0;
        ep_eng_plan_head h = {0};
        ep_status st = ep_eng_recv_plan(e, &words);
        if (!st) st = ep_eng_exec(e, words, &h);
        if (st) return st;
        if (h.stop)
            return h.failed ? ep_errorf(EP_ERR_UNAVAILABLE, "engine: rank 0 stopped the "
                                                            "engine after a failed step")
                            : EP_OK;
    }
}

ep_status ep_engine_run(ep_engine *e)
{
    if (e->rank != 0) return run_other(e);
    ep_eng_watchdog wd;
    ep_eng_watchdog_start(e, &wd);
    ep_status st = run_rank0(e);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ep_last_error());
    ep_eng_watchdog_stop(e, &wd);
    if (st) ep_errorf(st, "%s", msg);
    return st;
}

// ---- metrics ---------------------------------------------------------------

ep_status ep_engine_metrics_get(ep_engine *e, ep_engine_metrics *m)
{
    memset(m, 0, sizeof *m);
    if (e->rank != 0)
        return ep_errorf(EP_ERR_ARG, "engine: metrics live on rank 0, not rank %d", e->rank);
    const int L = e->n_layers, E = e->n_experts, W = e->world;
    m->layer_avg_k = ep_xcalloc((size_t)L, sizeof(double));
    m->layer_load_imbalance = ep_xcalloc((size_t)L, sizeof(double));
    m->expert_load = ep_xcalloc((size_t)L * E, sizeof(int64_t));
    pthread_mutex_lock(&e->mu);
    m->running = e->n_running;
    m->waiting = e->n_waiting;
    m->finished = e->m_finished;
    m->aborted = e->m_aborted;
    m->failed = e->m_failed;
    m->prompt_tokens = e->m_prompt;
    m->generation_tokens = e->m_gen;
    m->steps = e->m_steps;
    m->last_step_tokens = e->m_last_tokens;
    m->last_step_slots = e->m_last_slots;
    m->kv_blocks_total = (int64_t)W * e->kv_blocks;
    for (int k = 0; k < W; k++) {
        m->kv_blocks_used += e->kv_blocks - ep_kv_free_blocks(e->mirror[k]);
        m->kv_blocks_cached += ep_kv_cached_blocks(e->mirror[k]);
    }
    m->prefill_tokens = e->m_prefill;
    m->preemptions = e->m_preempt;
    m->prefix_hit_tokens = e->m_hit_tokens;
    m->prefix_query_tokens = e->m_query_tokens;
    m->n_layers = L;
    m->n_experts = E;
    m->world_size = W;
    for (int l = 0; l < L; l++) {
        const int64_t *c = e->m_layer + (size_t)l * EP_ENG_LAYER_WORDS;
        m->moe_token_layers += c[0];
        m->moe_pairs += c[1];
        m->moe_base_pairs += c[2];
        m->dispatch_bytes += c[3];
        m->combine_bytes += c[4];
        m->base_dispatch_bytes += c[5];
        m->base_combine_bytes += c[6];
        m->inter_bytes += c[8];
        m->intra_bytes += c[9];
        m->base_inter_bytes += c[10];
        m->base_intra_bytes += c[11];
        m->layer_avg_k[l] = c[0] > 0 ? (double)c[1] / (double)c[0] : 0;
        int64_t mx = 0, sum = 0;
        for (int k = 0; k < W; k++) {
            int64_t v = e->m_layer_recv[(size_t)l * W + k];
            mx = EP_MAX(mx, v);
            sum += v;
        }
        m->layer_load_imbalance[l] = sum > 0 ? (double)mx * W / (double)sum : 0;
    }
    memcpy(m->expert_load, e->m_expert, (size_t)L * E * sizeof(int64_t));
    m->replace_checks = e->m_replace_checks;
    m->replace_moves = e->m_replace_moves;
    m->replace_imbalance_before = e->m_imb_before;
    m->replace_imbalance_after = e->m_imb_after;
    m->n_routings = e->o.n_routings;
    m->routing_names = (const char *const *)e->routing_names;
    m->profile = ep_xcalloc((size_t)m->n_routings, sizeof *m->profile);
    for (int i = 0; i < m->n_routings; i++) {
        const int64_t *p = e->m_prof + (size_t)i * EP_ENG_PROF_WORDS;
        ep_engine_profile_metrics *q = &m->profile[i];
        *q = (ep_engine_profile_metrics){.steps = p[0],
                                         .tokens = p[1],
                                         .token_layers = p[2],
                                         .pairs = p[3],
                                         .base_pairs = p[4],
                                         .dispatch_bytes = p[5],
                                         .combine_bytes = p[6],
                                         .base_dispatch_bytes = p[7],
                                         .base_combine_bytes = p[8],
                                         .slots = e->m_prof_slots[i],
                                         .forward_s = e->m_prof_us[2 * i] * 1e-6,
                                         .moe_s = e->m_prof_us[2 * i + 1] * 1e-6};
    }
    int n = e->m_auto_off[e->o.n_routings];
    m->auto_routing = ep_xcalloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    m->auto_domain = ep_xcalloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    m->auto_requests = ep_xcalloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
    for (int i = 0; i < e->o.n_routings; i++) {
        const ep_routing_cfg *rc = &e->pol[i]->cfg;
        if (!rc->pick.domain_auto) continue;
        for (int d = -1; d < rc->pick.n_domains; d++) {
            m->auto_routing[m->n_auto] = e->routing_names[i];
            m->auto_domain[m->n_auto] = d >= 0 ? rc->pick.domains[d].name : "";
            m->auto_requests[m->n_auto++] = e->m_auto[e->m_auto_off[i] + d + 1];
        }
    }
    pthread_mutex_unlock(&e->mu);
    return EP_OK;
}

void ep_engine_metrics_free(ep_engine_metrics *m)
{
    if (!m) return;
    free(m->layer_avg_k);
    free(m->layer_load_imbalance);
    free(m->expert_load);
    free(m->profile);
    m->profile = NULL;
    free(m->auto_routing);
    free(m->auto_domain);
    free(m->auto_requests);
    m->auto_routing = m->auto_domain = NULL;
    m->auto_requests = NULL;
    m->layer_avg_k = m->layer_load_imbalance = NULL;
    m->expert_load = NULL;
}
