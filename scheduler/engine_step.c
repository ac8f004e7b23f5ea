// One engine step on every rank: the plan's broadcast (its words are
// scheduler/plan_codec.c's), what each rank does with it (free and create
// its sequences, run ep_model_forward_ex on its own, sample them), and the
// result each rank sends back (int64 words). Rank 0's planning and the
// request bookkeeping are in scheduler/engine.c; see docs/engine.md.
//
// Result words: [0] status, [1] entries, entries x {slot, token (-1: none
// sampled), pairs, Pick domain found (-2: nothing new, -1: none clear)}, then per layer
// EP_ENG_LAYER_WORDS counters, then the expert load [n_layers * n_experts], then
// the rank's free KV blocks after the step (rank 0 checks them against its mirror).
#include "router/detect.h"
#include "scheduler/engine_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

size_t ep_eng_result_words(const ep_engine *e)
{
    return 2 + EP_ENG_ENTRY_WORDS * (size_t)e->o.model.max_seqs +
           (size_t)EP_ENG_LAYER_WORDS * e->n_layers + (size_t)e->n_layers * e->n_experts + 1;
}

ep_status ep_eng_wait_error(void *engine, const ep_cluster_watch_verdict *v)
{
    ep_engine *e = engine;
    long long step = (long long)atomic_load(&e->step_no);
    // At the deadline, waiting for "ready" or results: whose message is missing.
    if (v->missing)
        return ep_errorf(EP_ERR_COMM,
                         "step %lld did not finish within %g s on every rank (no "
                         "answer from rank(s) %s: %s)",
                         step, e->o.step_timeout_s, v->names, v->call);
    // Else the ranks that sent no heartbeat during the grace period.
    return ep_errorf(EP_ERR_COMM, "step %lld: no answer from rank(s) %s (%s; %s)", step,
                     v->n ? v->names : "unknown", v->call,
                     v->n == 0   ? "every rank sent heartbeats"
                     : v->behind ? "they are behind in the step's MoE exchanges"
                                 : "no heartbeat from them within the grace period");
}

// The plan goes out as its size, then its words, each a watched broadcast
// on the engine's channel: rank 0 gives up at the step deadline (none for
// the stop plan after a failed step), the others wait without a core.
ep_status ep_eng_send_plan(ep_engine *e, size_t words)
{
    int32_t n = (int32_t)words;
    ep_status st = ep_cluster_chan_bcast(e->chan, &n, sizeof n, 0, "plan size");
    if (st) return st;
    return ep_cluster_chan_bcast(e->chan, e->plan, (size_t)n * sizeof(int32_t), 0, "plan");
}

ep_status ep_eng_recv_plan(ep_engine *e, size_t *words)
{
    int32_t n = 0;
    ep_status st = ep_cluster_chan_bcast(e->chan, &n, sizeof n, 0, "plan size");
    if (st) return st;
    if (n < EP_ENG_PLAN_MIN_WORDS || (size_t)n > e->plan_cap)
        return ep_errorf(EP_ERR_COMM,
                         "engine: rank 0 announced a plan of %d words, expected "
                         "%d..%zu",
                         n, (int)EP_ENG_PLAN_MIN_WORDS, e->plan_cap);
    if ((st = ep_cluster_chan_bcast(e->chan, e->plan, (size_t)n * sizeof(int32_t), 0, "plan")))
        return st;
    *words = (size_t)n;
    return EP_OK;
}

static void stall_hook(const ep_engine *e, int64_t step, bool in_forward)
{
    if (e->stall_rank != e->rank || e->stall_step != step || e->stall_in_forward != in_forward)
        return;
    fprintf(stderr, "epserve: test hook: rank %d sleeps %g s %s step %lld\n", e->rank, e->stall_s,
            in_forward ? "inside" : "before", (long long)step);
    struct timespec ts = {(time_t)e->stall_s,
                          (long)((e->stall_s - (double)(time_t)e->stall_s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

// ---- automatic Pick domain (router/detect.h) ---------------------------------

static void auto_domain_reset(ep_engine *e, int slot)
{
    free(e->slot_hist[slot]);
    e->slot_hist[slot] = NULL;
    e->slot_hist_tokens[slot] = 0;
    e->slot_domain[slot] = -2;
}

// After the step: a sequence whose prompt just finished (it samples now)
// gets its domain from its prompt's routing; the histogram goes, the
// domain stays for its decode steps and is reported in the result.
static void auto_domain_detect(ep_engine *e, const ep_policy *pol, int nb)
{
    ep_detect_opts o;
    ep_detect_opts_default(&o);
    for (int i = 0; i < nb; i++) {
        int slot = e->b_slot[i];
        if (!e->b_hist[i] || !e->b_sample[i]) continue;
        int d =
            ep_domain_detect(&pol->cfg, e->slot_hist[slot], e->slot_hist_tokens[slot], &o, NULL);
        free(e->slot_hist[slot]);
        e->slot_hist[slot] = NULL;
        e->b_hist[i] = NULL;
        e->slot_domain[slot] = d;
        e->b_found[i] = d;
    }
}

ep_status ep_eng_exec(ep_engine *e, size_t words, ep_eng_plan_head *h)
{
    ep_eng_plan_reader rd;
    ep_eng_plan_read(&rd, e->plan, words, h);
    int64_t step = h->step;
    int routing = h->routing;
    const char *domain = h->domain;

    int n_free = ep_eng_plan_count(&rd, EP_ENG_PLAN_FREES);
    for (int i = 0; i < n_free; i++) {
        int slot, owner;
        ep_eng_plan_get_free(&rd, &slot, &owner);
        if (owner != e->rank) continue;
        EP_ASSERT(slot >= 0 && slot < e->cap_slots && e->slot_seq[slot] >= 0);
        ep_model_seq_free(e->m, e->slot_seq[slot]);
        ep_sampler_free(e->slot_sampler[slot]);
        e->slot_seq[slot] = -1;
        e->slot_sampler[slot] = NULL;
        auto_domain_reset(e, slot);
    }
    if (h->stop) return EP_OK;

    ep_status st = EP_OK;
    // New sequences map the cached prefix blocks rank 0 found in its mirror
    // of this rank's cache (the same blocks: the mirror is exact).
    uint64_t salt = routing >= 0 && routing < e->o.n_routings ? ep_eng_salt(e, routing, domain) : 0;
    // Re-placement, collective over every rank (model/moe.h), before the
    // step's sequences are set up: experts move between ranks, requests stay.
    if (h->replace) {
        double before = 0, after = 0;
        bool moved = false;
        if ((st = ep_moe_replace(ep_model_moe(e->m), e->o.rebalance_min_gain, &before, &after,
                                 &moved)))
            return ep_error_prefix(st, "engine: re-placement before step %lld", (long long)step);
        if (e->rank == 0) {
            pthread_mutex_lock(&e->mu);
            e->m_replace_checks++;
            e->m_replace_moves += moved;
            e->m_imb_before = before;
            e->m_imb_after = after;
            pthread_mutex_unlock(&e->mu);
            fprintf(stderr,
                    "epserve: re-placement before step %lld: predicted load_imbalance %.3f -> "
                    "%.3f, %s\n",
                    (long long)step, before, after,
                    moved ? "experts moved" : "kept (gain below --rebalance-min-gain)");
        }
    }
    int n_new = ep_eng_plan_count(&rd, EP_ENG_PLAN_NEWS);
    for (int i = 0; i < n_new; i++) {
        int slot, owner, sampled, n_hit;
        ep_sample_params sp;
        ep_eng_plan_get_new(&rd, &slot, &owner, &sp, &sampled, &n_hit, e->hash_buf, e->max_hit);
        if (owner != e->rank || st) continue;
        EP_ASSERT(slot >= 0 && slot < e->cap_slots && e->slot_seq[slot] < 0);
        if (!(st = ep_kv_seq_new_prefix(ep_model_kv(e->m), salt, e->hash_buf, n_hit,
                                        &e->slot_seq[slot])) &&
            !(st = ep_sampler_init(&sp, e->cfg->vocab, &e->slot_sampler[slot]))) {
            ep_sampler_set_stop_ids(e->slot_sampler[slot], e->eos, e->n_eos); // min_tokens
            ep_sampler_skip(e->slot_sampler[slot], sampled);
        }
        // A request of an auto profile that names no domain: its prompt's
        // routing picks one (the plan's domain is "" for it).
        auto_domain_reset(e, slot);
        if (!st && !domain[0] && routing >= 0 && routing < e->o.n_routings &&
            e->pol[routing]->cfg.pick.domain_auto) {
            e->slot_hist[slot] = ep_xcalloc((size_t)e->n_layers * e->n_experts, sizeof(float));
            e->slot_domain[slot] = -1;
        }
    }

    // This rank's sequences of the step.
    int n_run = ep_eng_plan_count(&rd, EP_ENG_PLAN_RUNS), nb = 0, T = 0;
    for (int i = 0; i < n_run; i++) {
        int slot, owner, n;
        bool sample;
        const int32_t *tok;
        ep_eng_plan_get_run(&rd, &slot, &owner, &n, &sample, &tok);
        if (owner == e->rank && e->slot_seq[slot] >= 0) {
            e->b_slot[nb] = slot;
            e->b_seq[nb] = e->slot_seq[slot];
            e->b_n[nb] = n;
            e->b_sample[nb] = sample;
            e->b_dom[nb] = e->slot_domain[slot];
            e->b_hist[nb] = e->slot_hist[slot];
            e->b_found[nb] = -2;
            if (e->slot_hist[slot]) e->slot_hist_tokens[slot] += n;
            memcpy(e->b_tok + T, tok, (size_t)n * sizeof(int));
            // The context the repetition penalty sees: prompt chunks and the
            // sampled tokens fed back.
            if (e->slot_sampler[slot]) ep_sampler_observe(e->slot_sampler[slot], e->b_tok + T, n);
            T += n;
            nb++;
        }
    }
    // A plan that only frees: no forward, nothing to report.
    e->step_ran = n_run > 0;
    if (n_run == 0) return st ? ep_error_prefix(st, "engine: step %lld", (long long)step) : EP_OK;
    if (routing < 0 || routing >= e->o.n_routings)
        return ep_errorf(EP_ERR_COMM, "engine: plan of step %lld names routing %d, %d loaded",
                         (long long)step, routing, e->o.n_routings);
    ep_policy *pol = e->pol[routing];
    if (!st) st = ep_policy_set_domain(pol, domain[0] ? domain : e->pol_domain0[routing]);
    // Sequences with a domain of their own route with it, the rest with the
    // step's; no array at all when none has one (the common case).
    bool own_domain = false;
    for (int i = 0; i < nb; i++) {
        if (e->b_dom[i] == -2)
            e->b_dom[i] = pol->cfg.pick.domain;
        else
            own_domain = true;
    }

    stall_hook(e, step, false);
    // Ready: rank 0 learns that every rank holds the plan before it enters
    // the first collective of the model, so a rank that is gone or stuck is
    // named here instead of leaving rank 0 inside an all-to-all.
    // Both are waits on the engine's channel, named by the ranks missing at
    // the step deadline; the results' receives are posted before the forward.
    ep_status ws;
    if (e->rank == 0) {
        atomic_store(&e->step_phase, 1);
        for (int r = 1; r < e->world; r++)
            if ((ws = ep_cluster_chan_post_recv(e->chan, r, EP_ENG_TAG_READY, &e->ready_buf[r],
                                                sizeof *e->ready_buf, "ready")))
                return ws;
        if ((ws = ep_cluster_chan_wait_recvs(e->chan, "not ready for the step"))) return ws;
        for (int r = 1; r < e->world; r++)
            if ((ws = ep_cluster_chan_post_recv(e->chan, r, EP_ENG_TAG_RESULT, e->rres[r],
                                                e->res_cap * sizeof(int64_t), "result")))
                return ws;
        atomic_store(&e->step_phase, 2);
    } else {
        int32_t s32 = (int32_t)step;
        if ((ws = ep_cluster_chan_send(e->chan, 0, EP_ENG_TAG_READY, &s32, sizeof s32, "ready")))
            return ws;
    }

    stall_hook(e, step, true);
    // The forward fails on every rank alike (it agrees before any layer), so
    // a local failure above is still joined: an empty batch keeps the
    // collectives matched, and the status travels in the result.
    memset(e->f_layer, 0, (size_t)e->n_layers * sizeof *e->f_layer);
    memset(e->f_seq_pairs, 0, (size_t)e->o.model.max_seqs * sizeof *e->f_seq_pairs);
    memset(e->f_expert_load, 0, (size_t)e->n_layers * e->n_experts * sizeof(int64_t));
    ep_forward_stats fs = {.layer = e->f_layer,
                           .seq_pairs = e->f_seq_pairs,
                           .expert_load = e->f_expert_load,
                           .seq_hist = e->b_hist};
    ep_batch b = {.n_seqs = st ? 0 : nb,
                  .seq = e->b_seq,
                  .n_new = e->b_n,
                  .tokens = e->b_tok,
                  .pick_domain = own_domain ? e->b_dom : NULL};
    for (int i = 0; i < b.n_seqs; i++)
        e->b_samplers[i] = e->b_sample[i] ? e->slot_sampler[e->b_slot[i]] : NULL;
    const double f0 = ep_now_us();
    // The next tokens without the logits on the host: the cuda backend draws
    // them on the device when every sampler allows it (a feature that needs
    // the logits here, e.g. logprobs, would pass a buffer and sample from it).
    ep_status fst =
        ep_model_forward_sample(e->m, pol, &b, e->b_samplers, e->b_ids, NULL, NULL, &fs);
    e->f_fwd_us = ep_now_us() - f0; // this rank's forward, and its MoE layers' part
    e->f_moe_us = fs.moe_us;
    if (!fst && !st) auto_domain_detect(e, pol, nb);
    // Rank 0 gave up inside a MoE exchange (cluster/liveness.h): the others are
    // still in it and send no result; the message names the silent ranks.
    if (fst && e->rank == 0 && ep_cluster_watch_gave_up())
        return ep_error_prefix(fst, "step %lld", (long long)step);
    if (!st) st = fst;

    int64_t *r = e->res;
    size_t k = 2;
    r[0] = st;
    r[1] = st ? 0 : nb;
    for (int i = 0; i < (st ? 0 : nb); i++) {
        int slot = e->b_slot[i];
        r[k++] = slot;
        r[k++] = e->b_ids[i]; // -1 where nothing was drawn
        r[k++] = e->f_seq_pairs[i];
        r[k++] = e->b_found[i];
    }
    for (int l = 0; l < e->n_layers; l++) {
        const ep_comm_stats *c = &e->f_layer[l];
        int64_t v[EP_ENG_LAYER_WORDS] = {c->tokens,
                                         c->pairs,
                                         c->base_pairs,
                                         c->dispatch_bytes,
                                         c->combine_bytes,
                                         c->base_dispatch_bytes,
                                         c->base_combine_bytes,
                                         c->recv_pairs,
                                         c->dispatch_bytes_inter + c->combine_bytes_inter,
                                         c->dispatch_bytes_intra + c->combine_bytes_intra,
                                         c->base_dispatch_bytes_inter + c->base_combine_bytes_inter,
                                         c->base_dispatch_bytes_intra +
                                             c->base_combine_bytes_intra};
        memcpy(r + k, v, sizeof v);
        k += EP_ENG_LAYER_WORDS;
    }
    memcpy(r + k, e->f_expert_load, (size_t)e->n_layers * e->n_experts * sizeof(int64_t));
    k += (size_t)e->n_layers * e->n_experts;
    r[k++] = ep_kv_free_blocks(ep_model_kv(e->m));

    if (e->rank != 0) {
        if ((ws = ep_cluster_chan_send(e->chan, 0, EP_ENG_TAG_RESULT, r, k * sizeof *r, "result")))
            return ws;
        return EP_OK; // a local failure travels in the result: rank 0 decides for all
    }
    atomic_store(&e->step_phase, 3);
    memcpy(e->rres[0], r, k * sizeof *r);
    if ((ws = ep_cluster_chan_wait_recvs(e->chan, "no step result"))) return ws;
    return EP_OK; // rank 0 reads every result's own status in engine.c
}
