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
    o->max_tokens_per_step = o->model.moe.cap_tokens;
    o->slot_budget = 0;
    o->max_waiting = 256;
    o->step_timeout_s = 30.0;
    o->routings = baseline;
    o->n_routings = 1;
}

ep_model *ep_engine_model(ep_engine *e)
{
    return e->m;
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
    if (tok) e->n_eos = ep_tokenizer_eos_ids(tok, e->eos, (int)EP_ARRAY_LEN(e->eos));

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
    e->plan_cap = ep_eng_plan_words(e->cap_slots, (int64_t)e->world * e->o.max_tokens_per_step);
    e->plan = ep_xmalloc(e->plan_cap * sizeof(int32_t));
    e->res_cap = ep_eng_result_words(e);
    e->res = ep_xmalloc(e->res_cap * sizeof(int64_t));
    e->b_seq = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->b_n = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->b_slot = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->b_sample = ep_xmalloc((size_t)max_seqs * sizeof(int));
    e->b_tok = ep_xmalloc((size_t)cap * sizeof(int));
    e->logits = ep_xmalloc((size_t)max_seqs * cfg->vocab * sizeof(float));
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
        for (int r = 0; r < e->world; r++)
            e->rk_free_blocks[r] = e->kv_blocks;
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
        e->m_auto_off = ep_xcalloc((size_t)o->n_routings + 1, sizeof(int));
        for (int i = 0; i < o->n_routings; i++)
            e->m_auto_off[i + 1] = e->m_auto_off[i] + e->pol[i]->cfg.pick.n_domains + 1;
        e->m_auto = ep_xcalloc((size_t)e->m_auto_off[o->n_routings], sizeof(int64_t));
    }
    ep_sched_budget_default(&e->budget, cfg->k_base > 0 ? cfg->k_base : 1, e->n_moe,
                            e->o.max_tokens_per_step);
    if (o->slot_budget > 0) e->budget.slot_budget = o->slot_budget;
    e->budget.max_tokens = e->o.max_tokens_per_step;
    e->budget.kv_free = -1; // KV is reserved for a request's whole life at admission
    *out = e;
    return EP_OK;
}

static void req_release(ep_eng_req *r)
{
    free(r->prompt);
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
    free(e->logits);
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
        e->rk_free_blocks[r->owner] += r->commit_blocks;
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
        if (r->state == RQ_RUNNING)
            e->n_running--;
        else
            e->n_waiting--;
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
    r->prompt = ep_xmalloc((size_t)q->n_prompt * sizeof(int));
    memcpy(r->prompt, q->prompt, (size_t)q->n_prompt * sizeof(int));
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

// Whether a waiting request could get a rank now (KV room, sequence bounds).
static bool admissible(const ep_engine *e, const ep_eng_req *r)
{
    if (e->n_running >= e->o.max_num_seqs) return false;
    int need = ep_eng_blocks(e, r->n_prompt + r->max_tokens - 1);
    for (int k = 0; k < e->world; k++)
        if (e->rk_nseqs[k] < e->o.model.max_seqs && e->rk_free_blocks[k] >= need) return true;
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

// Writes the step's plan into e->plan; returns its words, 0 when there is
// nothing to run or free.
// stop: a stop plan (frees only). failed: tells the other ranks why.
static size_t build_plan(ep_engine *e, bool stop, bool failed)
{
    ep_eng_plan_head h = {
        .step = atomic_load(&e->step_no), .stop = stop, .failed = failed, .routing = 0};
    int g = stop ? -1 : pick_group(e);
    if (g >= 0) {
        h.routing = e->rq[g].routing;
        snprintf(h.domain, sizeof h.domain, "%s", e->rq[g].domain);
    }
    const int routing = h.routing;
    const char *domain = h.domain;
    ep_eng_plan_writer p;
    ep_eng_plan_begin(&p, e->plan, e->plan_cap, &h);

    // Frees: finished sequences whose owner still holds them.
    int n_free = 0;
    for (int s = 0; s < e->cap_slots; s++) {
        ep_eng_req *r = &e->rq[s];
        if (r->state != RQ_FREEING) continue;
        if (r->owner >= 0) {
            ep_eng_plan_put_free(&p, s, r->owner);
            n_free++;
            e->rk_nseqs[r->owner]--;
        }
        list_remove(e, s);
        req_release(r);
    }
    if (stop) return ep_eng_plan_end(&p);

    // Running sequences of the group, per rank, first come first served.
    for (int s = e->head; s >= 0; s = e->rq[s].next)
        e->rq[s].step_n = 0;
    for (int k = 0; k < e->world; k++) {
        int nq = 0;
        for (int s = e->head; s >= 0; s = e->rq[s].next) {
            ep_eng_req *r = &e->rq[s];
            if (r->state != RQ_RUNNING || r->owner != k || !same_group(r, routing, domain))
                continue;
            ep_sched_seq q = r->ss;
            q.want_tokens = r->fed < r->n_prompt ? r->n_prompt - r->fed : 1;
            q.kv_need = 0;
            e->q_seq[nq] = q;
            e->q_slot[nq++] = s;
        }
        ep_sched_step a = ep_sched_admit(&e->budget, e->q_seq, nq);
        for (int i = 0; i < a.n_seqs; i++) {
            int n = e->q_seq[i].want_tokens;
            if (i == a.n_seqs - 1 && a.last_partial_tokens > 0) n = a.last_partial_tokens;
            e->rq[e->q_slot[i]].step_n = n;
        }
        e->rk_tokens[k] = a.tokens;
        e->rk_slots[k] = a.slots;
        e->rk_full[k] = a.n_seqs < nq || a.last_partial_tokens > 0;
    }

    // New sequences of the group in arrival order: the rank with the most
    // free KV blocks (ties: fewest predicted slots this step, then the lower
    // rank) that still has step room; the first that finds none stops the rest.
    for (int s = e->head; s >= 0; s = e->rq[s].next) {
        ep_eng_req *r = &e->rq[s];
        if (r->state != RQ_WAITING || !same_group(r, routing, domain)) continue;
        if (e->n_running >= e->o.max_num_seqs) break;
        int need = ep_eng_blocks(e, r->n_prompt + r->max_tokens - 1);
        ep_sched_seq q = {.want_tokens = r->n_prompt};
        double per_tok = ep_sched_predict_slots(&e->budget, &q, 1);
        int best = -1, best_fit = 0;
        for (int k = 0; k < e->world; k++) {
            if (e->rk_full[k] || e->rk_nseqs[k] >= e->o.model.max_seqs ||
                e->rk_free_blocks[k] < need)
                continue;
            int fit = EP_MIN(r->n_prompt, e->o.max_tokens_per_step - e->rk_tokens[k]);
            if (per_tok > 0) {
                double left = (double)e->budget.slot_budget - e->rk_slots[k];
                int by = left > 0 ? (int)(left / per_tok + 1e-9) : 0;
                fit = EP_MIN(fit, by);
            }
            if (fit < 1 && e->rk_tokens[k] == 0) fit = 1; // a rank's first sequence always runs
            if (fit < 1) continue;
            if (best < 0 || e->rk_free_blocks[k] > e->rk_free_blocks[best] ||
                (e->rk_free_blocks[k] == e->rk_free_blocks[best] &&
                 e->rk_slots[k] < e->rk_slots[best])) {
                best = k;
                best_fit = fit;
            }
        }
        if (best < 0) break;
        r->state = RQ_RUNNING;
        r->owner = best;
        r->commit_blocks = need;
        r->step_n = best_fit;
        e->n_waiting--;
        e->n_running++;
        e->rk_free_blocks[best] -= need;
        e->rk_nseqs[best]++;
        e->rk_tokens[best] += best_fit;
        e->rk_slots[best] += per_tok * best_fit;
        if (best_fit < r->n_prompt) e->rk_full[best] = true;
        ep_eng_plan_put_new(&p, s, best, &r->sp);
    }

    // What every admitted sequence runs: a prompt chunk or its last token.
    int n_run = 0, tokens = 0;
    double slots = 0;
    for (int s = e->head; s >= 0; s = e->rq[s].next) {
        ep_eng_req *r = &e->rq[s];
        if (r->state != RQ_RUNNING || r->step_n <= 0) continue;
        int n = r->step_n;
        bool prompt = r->fed < r->n_prompt;
        EP_ASSERT(prompt || n == 1); // a generating sequence runs its last token
        // It samples after this step once its prompt is done.
        ep_eng_plan_put_run(&p, s, r->owner, n, r->fed + n >= r->n_prompt,
                            prompt ? r->prompt + r->fed : &r->last_tok);
        slots += ep_sched_predict_slots(&e->budget, &r->ss, n);
        r->served = e->tick;
        n_run++;
        tokens += n;
    }
    e->tick++;
    size_t words = ep_eng_plan_end(&p);
    if (n_run > 0) {
        e->m_last_tokens = tokens;
        e->m_last_slots = slots;
    }
    // A plan that only frees still goes out (no forward runs then): rank 0
    // has already released those slots and their KV in its mirror.
    return n_run > 0 || n_free > 0 ? words : 0;
}

// ---- results (rank 0, under mu) --------------------------------------------

static void on_token(ep_engine *e, int s, int token)
{
    ep_eng_req *r = &e->rq[s];
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
            e->m_layer_recv[(size_t)l * e->world + k] += res[w + 7];
        }
        for (size_t j = 0; j < (size_t)L * E; j++)
            e->m_expert[j] += res[w + j];
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
            if (r->fed < r->n_prompt) e->m_prompt += n;
            r->fed += n;
            ep_sched_observe(&e->budget, &r->ss, pairs, (int64_t)n * e->n_moe);
            if (token >= 0) on_token(e, s, token);
        }
    }
    e->m_steps++;
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
    for (int s = 0; s < e->cap_slots; s++)
        if (e->rq[s].owner >= 0 && (e->rq[s].state == RQ_RUNNING || e->rq[s].state == RQ_FREEING))
            m->kv_blocks_used += ep_eng_blocks(e, e->rq[s].fed);
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
    free(m->auto_routing);
    free(m->auto_domain);
    free(m->auto_requests);
    m->auto_routing = m->auto_domain = NULL;
    m->auto_requests = NULL;
    m->layer_avg_k = m->layer_load_imbalance = NULL;
    m->expert_load = NULL;
}
