// The simulator's driver: generates each GPU's batch with the synthetic
// generator, routes it with the real router and policies, prices every
// layer with the real planner (ep_dispatch_plan) and the cost model. It runs in
// one process and moves no data; links and kernels are sim/cost.c's models.
#include "common/weights.h"
#include "router/policy.h"
#include "router/router.h"
#include "sim/sim.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- one layer ------------------------------------------------------------------

void ep_sim_layer_init(ep_sim_layer *L, int world)
{
    memset(L, 0, sizeof *L);
    EP_ASSERT(world >= 1);
    L->world = world;
    L->dispatch = ep_xcalloc((size_t)world, sizeof *L->dispatch);
    L->combine = ep_xcalloc((size_t)world, sizeof *L->combine);
    L->recv_pairs = ep_xcalloc((size_t)world, sizeof *L->recv_pairs);
    L->active_experts = ep_xcalloc((size_t)world, sizeof *L->active_experts);
    L->pair_dest_bytes = ep_xcalloc((size_t)world * world, sizeof *L->pair_dest_bytes);
    L->pair_comb_bytes = ep_xcalloc((size_t)world * world, sizeof *L->pair_comb_bytes);
    L->hdispatch = ep_xcalloc((size_t)world, sizeof *L->hdispatch);
    L->hcombine = ep_xcalloc((size_t)world, sizeof *L->hcombine);
    L->fwd_n = ep_xcalloc((size_t)world, sizeof *L->fwd_n);
}

void ep_sim_layer_free(ep_sim_layer *L)
{
    if (!L) return;
    free(L->dispatch);
    free(L->combine);
    free(L->recv_pairs);
    free(L->active_experts);
    free(L->pair_dest_bytes);
    free(L->pair_comb_bytes);
    free(L->seen);
    free(L->hdispatch);
    free(L->hcombine);
    free(L->fwd_n);
    for (int r = 0; L->plans && r < L->world; r++)
        ep_dispatch_plan_free(&L->plans[r]);
    for (int r = 0; L->hplans && r < L->world; r++)
        ep_dispatch_plan_free(&L->hplans[r]);
    free(L->plans);
    free(L->hplans);
    memset(L, 0, sizeof *L);
}

// Rank r's plan of a mode, (re)made when the row size or node map it prices
// with changed.
static ep_dispatch_plan *layer_plan(ep_sim_layer *L, ep_dispatch_mode mode, int r,
                                    const int *node_of, int hidden, ep_dtype wire)
{
    ep_dispatch_plan **set = mode == EP_DISPATCH_HIER ? &L->hplans : &L->plans;
    if (!*set) *set = ep_xcalloc((size_t)L->world, sizeof **set);
    ep_dispatch_plan *pl = &(*set)[r];
    bool fresh = pl->node_of && pl->hidden == hidden && pl->wire == wire;
    for (int d = 0; fresh && d < L->world; d++)
        fresh = pl->node_of[d] == node_of[d];
    if (!fresh) {
        ep_dispatch_plan_free(pl);
        ep_status st = ep_dispatch_plan_init(pl, L->world, r, node_of, hidden, wire);
        if (!st) st = ep_dispatch_plan_set_mode(pl, mode);
        EP_ASSERT(st == EP_OK);
    }
    return pl;
}

static void add_traffic(ep_sim_traffic *t, bool send, bool intra, double bytes)
{
    if (bytes <= 0) return;
    if (send)
        *(intra ? &t->send_intra : &t->send_inter) += bytes;
    else
        *(intra ? &t->recv_intra : &t->recv_inter) += bytes;
}

// One record of `bytes` from s to d (and `cbytes` back in the combine) in
// stage `stage` of the two-stage model.
static void hier_add(ep_sim_layer *L, ep_sim_stage stage, int s, int d, int64_t bytes,
                     int64_t cbytes, double scale)
{
    const bool intra = stage == EP_SIM_STAGE_NVLINK;
    add_traffic(&L->hdispatch[s], true, intra, scale * (double)bytes);
    add_traffic(&L->hdispatch[d], false, intra, scale * (double)bytes);
    add_traffic(&L->hcombine[d], true, intra, scale * (double)cbytes);
    add_traffic(&L->hcombine[s], false, intra, scale * (double)cbytes);
    L->hier_bytes[0][stage] += bytes;
    L->hier_bytes[1][stage] += cbytes;
}

// Who sends what in rank r's hier plan: each group to another rank is a
// record from r (RDMA to another node's forwarder, NVLink on r's own node);
// a group to a forwarder is then split by the rank computing each pair
// (grp_prank) into NVLink records from the forwarder. One combine row back
// per record. The sums equal the plan's *_inter / *_intra counters.
static void hier_rank(ep_sim_layer *L, const ep_dispatch_plan *pl, const int *node_of, int r,
                      double scale)
{
    const int64_t crow = ep_comm_combine_record_bytes(pl->hidden, pl->wire);
    for (int g = 0; g < pl->n_grp; g++) {
        const int d = pl->grp_dest[g], o = pl->grp_off[g], e = pl->grp_off[g + 1];
        if (d == r) continue;
        const bool remote = node_of[d] != node_of[r];
        hier_add(L, remote ? EP_SIM_STAGE_RDMA : EP_SIM_STAGE_NVLINK, r, d,
                 ep_dispatch_plan_rec_bytes(pl, d, e - o), crow, scale);
        if (!remote) continue;
        for (int q = o; q < e; q++)
            L->fwd_n[pl->grp_prank[q]]++;
        for (int q = o; q < e; q++) {
            const int ra = pl->grp_prank[q];
            if (ra != d && L->fwd_n[ra] > 0)
                hier_add(L, EP_SIM_STAGE_NVLINK, d, ra,
                         ep_comm_dispatch_record_bytes(L->fwd_n[ra], pl->hidden, pl->wire), crow,
                         scale);
            L->fwd_n[ra] = 0;
        }
    }
}

void ep_sim_layer_price(ep_sim_layer *L, const ep_sim_cluster *c, const ep_model_cfg *cfg,
                        const ep_placement *p, const int *node_of, const ep_routes *routes,
                        const int *const *pair_rank, ep_dtype wire, double scale,
                        ep_comm_stats *sum)
{
    const int W = L->world, E = p->n_experts;
    EP_ASSERT(p->world_size == W && scale > 0);
    memset(L->dispatch, 0, sizeof *L->dispatch * (size_t)W);
    memset(L->combine, 0, sizeof *L->combine * (size_t)W);
    memset(L->recv_pairs, 0, sizeof *L->recv_pairs * (size_t)W);
    memset(L->active_experts, 0, sizeof *L->active_experts * (size_t)W);
    memset(L->hdispatch, 0, sizeof *L->hdispatch * (size_t)W);
    memset(L->hcombine, 0, sizeof *L->hcombine * (size_t)W);
    memset(L->hier_bytes, 0, sizeof L->hier_bytes);
    memset(&L->hier_sum, 0, sizeof L->hier_sum);
    if (E > L->n_experts) {
        L->n_experts = E;
        L->seen = ep_xrealloc(L->seen, (size_t)W * E);
    }
    memset(L->seen, 0, (size_t)W * E);
    memset(sum, 0, sizeof *sum);

    int64_t *bytes = L->pair_dest_bytes; // [src * W + dst] dispatch; combine mirrors it
    int64_t *cbytes = L->pair_comb_bytes;
    memset(bytes, 0, sizeof *bytes * (size_t)W * W);
    memset(cbytes, 0, sizeof *cbytes * (size_t)W * W);
    const int64_t crow = ep_comm_combine_record_bytes(cfg->hidden, wire);
    for (int r = 0; r < W; r++) {
        const ep_routes *R = &routes[r];
        const int *pr = pair_rank ? pair_rank[r] : NULL;
        ep_dispatch_plan *pl = layer_plan(L, EP_DISPATCH_FLAT, r, node_of, cfg->hidden, wire);
        ep_dispatch_plan_build(pl, R, p, pr);
        ep_comm_stats_add(sum, &pl->stats);
        ep_placement_rank_load(p, R, pr, L->recv_pairs);
        for (int g = 0; g < pl->n_grp; g++) {
            const int d = pl->grp_dest[g];
            for (int q = pl->grp_off[g]; q < pl->grp_off[g + 1]; q++)
                L->seen[(size_t)d * E + R->expert[pl->grp_pair[q]]] = 1;
        }
        // Per destination, straight from the plan: its records' bytes and
        // one combine row back for each.
        for (int d = 0; d < W; d++) {
            if (d == r) continue;
            bytes[(size_t)r * W + d] = pl->send_bytes[d];
            cbytes[(size_t)r * W + d] = (int64_t)ep_dispatch_plan_n_rec(pl, d) * crow;
        }
        // The same routes under the planner's hier mode.
        ep_dispatch_plan *hp = layer_plan(L, EP_DISPATCH_HIER, r, node_of, cfg->hidden, wire);
        ep_dispatch_plan_build(hp, R, p, pr);
        ep_comm_stats_add(&L->hier_sum, &hp->stats);
        hier_rank(L, hp, node_of, r, scale);
    }

    for (int r = 0; r < W; r++)
        for (int d = 0; d < W; d++) {
            int64_t b = bytes[(size_t)r * W + d], cb = cbytes[(size_t)r * W + d];
            if (b == 0) continue;
            bool intra = node_of[r] == node_of[d];
            add_traffic(&L->dispatch[r], true, intra, scale * (double)b);
            add_traffic(&L->dispatch[d], false, intra, scale * (double)b);
            add_traffic(&L->combine[d], true, intra, scale * (double)cb);
            add_traffic(&L->combine[r], false, intra, scale * (double)cb);
            // the sender of each phase talks to one more peer
            (*(intra ? &L->dispatch[r].peers_intra : &L->dispatch[r].peers_inter))++;
            (*(intra ? &L->combine[d].peers_intra : &L->combine[d].peers_inter))++;
        }

    L->dispatch_us = L->combine_us = L->experts_us = 0;
    memset(L->hier_us, 0, sizeof L->hier_us);
    int64_t max_pairs = 0, tot_pairs = 0;
    for (int r = 0; r < W; r++) {
        for (int s = 0; s < 2; s++) {
            L->hier_us[0][s] =
                EP_MAX(L->hier_us[0][s], ep_sim_hier_stage_us(c, &L->hdispatch[r], s));
            L->hier_us[1][s] =
                EP_MAX(L->hier_us[1][s], ep_sim_hier_stage_us(c, &L->hcombine[r], s));
        }
        for (int e = 0; e < E; e++)
            L->active_experts[r] += L->seen[(size_t)r * E + e];
        L->dispatch_us = EP_MAX(L->dispatch_us, ep_sim_a2a_rank_us(c, &L->dispatch[r]));
        L->combine_us = EP_MAX(L->combine_us, ep_sim_a2a_rank_us(c, &L->combine[r]));
        double te = ep_sim_experts_us(c, cfg->hidden, cfg->moe_inter,
                                      scale * (double)L->recv_pairs[r], L->active_experts[r]);
        L->experts_us = EP_MAX(L->experts_us, te);
        max_pairs = EP_MAX(max_pairs, L->recv_pairs[r]);
        tot_pairs += L->recv_pairs[r];
    }
    L->imbalance = tot_pairs > 0 ? (double)max_pairs * W / (double)tot_pairs : 1.0;
}

// ---- the run ----------------------------------------------------------------------

int ep_sim_sample_tokens(const ep_sim_opts *o, int world)
{
    if (o->sample_tokens == 0) return o->tokens;
    if (o->sample_tokens > 0) return EP_MIN(o->sample_tokens, o->tokens);
    // The whole cluster routes ~8192 tokens per layer: expert loads (and so
    // the imbalance) are estimated from ~65k pairs whatever the GPU count.
    return EP_MIN(o->tokens, EP_MAX(32, 8192 / EP_MAX(world, 1)));
}

void ep_sim_opts_default(ep_sim_opts *o)
{
    memset(o, 0, sizeof *o);
    o->tokens = 4096;
    o->sample_tokens = -1;
    o->sample_layers = 6;
    o->decode = false;
    o->context = 4096;
    o->wire = EP_DTYPE_BF16;
    o->placement = EP_PLACE_CONTIGUOUS;
    o->seed = 1;
}

void ep_sim_report_free(ep_sim_report *r)
{
    if (!r) return;
    for (int i = 0; i < r->n_pol && r->res; i++)
        free(r->res[i].layer_step_us);
    free(r->res);
    free(r->layers);
    memset(r, 0, sizeof *r);
}

// One policy's state across the run (routes of every rank).
typedef struct {
    ep_policy *pol;
    ep_routes *routes; // [W]
    int **pair_rank;   // [W] (replicas only)
    ep_placement eplb; // this layer's EPLB placement (replicas only)
    bool has_eplb;
} sim_pol;

static void free_pols(sim_pol *sp, int n, int W)
{
    for (int i = 0; sp && i < n; i++) {
        ep_policy_free(sp[i].pol);
        for (int r = 0; sp[i].routes && r < W; r++)
            ep_routes_free(&sp[i].routes[r]);
        free(sp[i].routes);
        for (int r = 0; sp[i].pair_rank && r < W; r++)
            free(sp[i].pair_rank[r]);
        free(sp[i].pair_rank);
        if (sp[i].has_eplb) ep_placement_free(&sp[i].eplb);
    }
    free(sp);
}

// Accumulates one priced layer into a result.
// hier: the phases are the two-stage model's (each its stages in sequence).
static void acc_layer(ep_sim_result *res, const ep_sim_layer *L, const ep_comm_stats *sum, int li,
                      bool hier)
{
    ep_comm_stats_add(&res->total, sum);
    ep_comm_stats_add(&res->hier_total, &L->hier_sum);
    double td = hier ? L->hier_us[0][0] + L->hier_us[0][1] : L->dispatch_us;
    double tc = hier ? L->hier_us[1][0] + L->hier_us[1][1] : L->combine_us;
    res->layer_step_us[li] = td + L->experts_us + tc;
    res->dispatch_us += td;
    res->experts_us += L->experts_us;
    res->combine_us += tc;
    res->load_imbalance += L->imbalance;
    for (int p = 0; p < 2; p++)
        for (int s = 0; s < 2; s++) {
            res->stage_us[p][s] += L->hier_us[p][s];
            res->hier_bytes[p][s] += L->hier_bytes[p][s];
        }
}

// EPLB for one layer from this policy's own loads (pairs per expert over
// every rank), then each rank chooses replicas for its pairs.
static ep_status place_replicas(sim_pol *sp, const ep_model_cfg *cfg, const ep_sim_cluster *c,
                                int n_redundant, int W, double *load, int64_t *rank_load,
                                int *visit)
{
    const int E = cfg->n_experts;
    for (int e = 0; e < E; e++)
        load[e] = 0;
    for (int r = 0; r < W; r++) {
        const ep_routes *R = &sp->routes[r];
        for (int j = 0; j < ep_routes_nnz(R); j++)
            load[R->expert[j]] += 1.0;
    }
    if (sp->has_eplb) ep_placement_free(&sp->eplb);
    sp->has_eplb = false;
    int groups = cfg->n_group > 1 ? cfg->n_group : 1;
    ep_status st = ep_placement_init_eplb(&sp->eplb, load, E, n_redundant, groups, c->n_nodes, W);
    if (st) return st;
    sp->has_eplb = true;
    for (int r = 0; r < W; r++) {
        memset(rank_load, 0, sizeof *rank_load * (size_t)W);
        ep_placement_choose(&sp->eplb, &sp->routes[r], r, rank_load, visit, sp->pair_rank[r]);
    }
    return EP_OK;
}

ep_status ep_sim_run(const ep_model_cfg *cfg, const ep_sim_cluster *c, const char *const *policies,
                     int n_pol, const ep_sim_opts *o, ep_sim_report *out)
{
    memset(out, 0, sizeof *out);
    const bool replay = o->replay != NULL;
    if (replay) n_pol = 1;
    if (replay && o->replay_max_k < 1)
        return ep_errorf(EP_ERR_ARG, "simulate: replay needs replay_max_k >= 1, found %d",
                         o->replay_max_k);
    if (n_pol < 1) return ep_errorf(EP_ERR_ARG, "simulate: expected at least one policy, found 0");
    if (cfg->n_experts <= 0 || ep_model_n_moe_layers(cfg) == 0)
        return ep_errorf(EP_ERR_ARG, "simulate: model %s has no MoE layers", cfg->name);
    if (o->tokens < 1 || o->context < 1 || o->sample_layers < 0 || o->n_redundant < 0)
        return ep_errorf(EP_ERR_ARG,
                         "simulate: expected tokens >= 1, context >= 1, layers >= 0 "
                         "and redundant >= 0, found %d, %d, %d, %d",
                         o->tokens, o->context, o->sample_layers, o->n_redundant);
    const int W = ep_sim_cluster_gpus(c), E = cfg->n_experts, H = cfg->hidden;
    const int S = ep_sim_sample_tokens(o, W);
    const double scale = (double)o->tokens / S;
    const int n_moe = ep_model_n_moe_layers(cfg);
    const int n_lay = o->sample_layers > 0 ? EP_MIN(o->sample_layers, n_moe) : n_moe;
    const int per_pol = o->n_redundant > 0 ? 2 : 1;
    const double t0 = ep_now_us();

    int *node_of = ep_xmalloc(sizeof(int) * (size_t)W);
    for (int r = 0; r < W; r++)
        node_of[r] = r / c->gpus_per_node;
    out->n_sampled = n_lay;
    out->layers = ep_xmalloc(sizeof(int) * (size_t)n_lay);
    {
        int *moe = ep_xmalloc(sizeof(int) * (size_t)n_moe), m = 0;
        for (int l = 0; l < cfg->n_layers; l++)
            if (ep_model_layer_is_moe(cfg, l)) moe[m++] = l;
        for (int i = 0; i < n_lay; i++)
            out->layers[i] = moe[(int)(((double)i + 0.5) * n_moe / n_lay)];
        free(moe);
    }
    out->n_pol = n_pol * per_pol;
    out->res = ep_xcalloc((size_t)out->n_pol, sizeof *out->res);

    ep_placement place = {0};
    ep_weights *wts = NULL;
    ep_router *router = NULL;
    sim_pol *sp = ep_xcalloc((size_t)n_pol, sizeof *sp);
    float *gate = ep_xmalloc(sizeof(float) * (size_t)E * H);
    float *x = ep_xmalloc(sizeof(float) * (size_t)S * H);
    float *logits = ep_xmalloc(sizeof(float) * (size_t)S * E);
    double *load = ep_xmalloc(sizeof(double) * (size_t)E);
    int64_t *rank_load = ep_xmalloc(sizeof(int64_t) * (size_t)W);
    int *visit = ep_xmalloc(sizeof(int) * (size_t)W);
    ep_sim_layer L;
    ep_sim_layer_init(&L, W);
    ep_sim_params params;
    ep_sim_params_count(cfg, &params);
    ep_status st;

    if ((st = ep_placement_init(&place, o->placement, E, W))) goto done;
    const bool synth = !replay && !o->logits_fn; // synthetic inputs through the gate
    if (synth && (st = ep_weights_open(cfg, &wts))) goto done;
    if (!replay && (st = ep_router_init(cfg, S, &router))) goto done;
    for (int i = 0; i < n_pol; i++) {
        const char *spec = replay ? "replay" : policies[i];
        if (!replay && (st = ep_policy_create(cfg, spec, &sp[i].pol))) {
            st = ep_error_prefix(st, "--routing %s", spec);
            goto done;
        }
        int mk = replay ? o->replay_max_k : ep_policy_max_k(sp[i].pol);
        sp[i].routes = ep_xcalloc((size_t)W, sizeof *sp[i].routes);
        for (int r = 0; r < W; r++)
            ep_routes_init(&sp[i].routes[r], S, mk, cfg->k_base);
        if (o->n_redundant > 0) {
            sp[i].pair_rank = ep_xcalloc((size_t)W, sizeof *sp[i].pair_rank);
            for (int r = 0; r < W; r++)
                sp[i].pair_rank[r] = ep_xmalloc(sizeof(int) * (size_t)S * mk);
        }
        for (int v = 0; v < per_pol; v++) {
            ep_sim_result *res = &out->res[i * per_pol + v];
            // a routing file's row is its base name without .yaml (as bench)
            const char *base = strrchr(spec, '/');
            base = base ? base + 1 : spec;
            int len = (int)strlen(base);
            const char *dot = strrchr(base, '.');
            if (dot && (!strcmp(dot, ".yaml") || !strcmp(dot, ".yml"))) len = (int)(dot - base);
            snprintf(res->label, sizeof res->label, "%.*s%s", EP_MIN(len, 48), base,
                     v ? "+eplb" : "");
            res->layer_step_us = ep_xcalloc((size_t)n_lay, sizeof(double));
        }
    }

    for (int li = 0; li < n_lay; li++) {
        const int l = out->layers[li];
        if (replay)
            for (int r = 0; r < W; r++)
                o->replay(o->replay_user, l, (int64_t)r * S, S, &sp[0].routes[r]);
        char name[128];
        ep_name_gate(name, sizeof name, l);
        int64_t gshape[2] = {E, H};
        if (synth && (st = ep_weights_read_f32(wts, name, 2, gshape, gate))) goto done;
        for (int r = 0; r < W && !replay; r++) {
            if (synth) {
                for (int i = 0; i < S; i++) {
                    int64_t g = (int64_t)r * S + i;
                    // prefill: a domain per 64-token prompt; decode: per sequence
                    int dom = (int)((o->decode ? g : g / 64) % EP_SYNTH_N_DOMAINS);
                    ep_synth_hidden(cfg, o->seed, l, dom, g, x + (size_t)i * H);
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, E, H, 1.0f, x, H, gate, H,
                            0.0f, logits, E);
            } else {
                o->logits_fn(o->logits_user, l, r, S, logits);
            }
            // Routed on the placement they are priced on first (the +eplb
            // row prices the same routes on its EPLB placement).
            const ep_route_ctx ctx = {.place = &place, .node_of = node_of, .rank = r};
            for (int i = 0; i < n_pol; i++)
                if ((st = ep_router_route_logits(router, sp[i].pol, &ctx, l, logits, S,
                                                 &sp[i].routes[r])))
                    goto done;
        }
        for (int i = 0; i < n_pol; i++) {
            ep_comm_stats sum;
            ep_sim_layer_price(&L, c, cfg, &place, node_of, sp[i].routes, NULL, o->wire, scale,
                               &sum);
            acc_layer(&out->res[i * per_pol], &L, &sum, li, o->hier);
            if (per_pol == 2) {
                if ((st =
                         place_replicas(&sp[i], cfg, c, o->n_redundant, W, load, rank_load, visit)))
                    goto done;
                ep_sim_layer_price(&L, c, cfg, &sp[i].eplb, node_of, sp[i].routes,
                                   (const int *const *)sp[i].pair_rank, o->wire, scale, &sum);
                acc_layer(&out->res[i * per_pol + 1], &L, &sum, li, o->hier);
            }
        }
        if (!o->quiet)
            fprintf(stderr, "\rsimulate: layer %d (%d/%d) routed, %.1f s", l, li + 1, n_lay,
                    (ep_now_us() - t0) * 1e-6);
    }
    if (!o->quiet) fprintf(stderr, "\n");

    // Per step: the replicated part of every layer, the MoE part of every MoE
    // layer (the mean of the sampled ones), the lm-head.
    double dense_us = 0;
    for (int l = 0; l < cfg->n_layers; l++)
        dense_us += ep_sim_dense_us(c, cfg, &params, l, o->tokens, o->context, o->decode);
    double head_rows = o->decode ? o->tokens : EP_MAX(1.0, (double)o->tokens / o->context);
    double head_us = ep_sim_head_us(c, cfg, head_rows);
    for (int i = 0; i < out->n_pol; i++) {
        ep_sim_result *res = &out->res[i];
        const double f = (double)n_moe / n_lay;
        res->dispatch_us *= f;
        res->experts_us *= f;
        res->combine_us *= f;
        for (int p = 0; p < 2; p++)
            for (int s = 0; s < 2; s++)
                res->stage_us[p][s] *= f;
        res->load_imbalance /= n_lay;
        res->dense_us = dense_us;
        res->head_us = head_us;
        res->step_us = dense_us + head_us + res->dispatch_us + res->experts_us + res->combine_us;
        res->tokens_per_s_gpu = res->step_us > 0 ? o->tokens * 1e6 / res->step_us : 0;
        const ep_comm_stats *t = &res->total;
        double tok = (double)EP_MAX(t->tokens, 1);
        double act = (double)(t->dispatch_bytes + t->combine_bytes);
        double inter = (double)(t->dispatch_bytes_inter + t->combine_bytes_inter);
        double base = (double)(t->base_dispatch_bytes + t->base_combine_bytes);
        double base_inter = (double)(t->base_dispatch_bytes_inter + t->base_combine_bytes_inter);
        res->avg_k = (double)t->pairs / tok;
        res->hier_rdma_bytes_per_token_layer = (double)(res->hier_bytes[0][EP_SIM_STAGE_RDMA] +
                                                        res->hier_bytes[1][EP_SIM_STAGE_RDMA]) /
                                               tok;
        res->hier_nvlink_bytes_per_token_layer = (double)(res->hier_bytes[0][EP_SIM_STAGE_NVLINK] +
                                                          res->hier_bytes[1][EP_SIM_STAGE_NVLINK]) /
                                                 tok;
        const ep_comm_stats *h = &res->hier_total;
        double h_inter = (double)(h->dispatch_bytes_inter + h->combine_bytes_inter);
        double h_base = (double)(h->base_dispatch_bytes_inter + h->base_combine_bytes_inter);
        res->hier_base_rdma_bytes_per_token_layer = h_base / tok;
        res->hier_saved_rdma_pct = h_base > 0 ? 100.0 * (1.0 - h_inter / h_base) : 0.0;
        res->bytes_per_token_layer = act / tok;
        res->inter_bytes_per_token_layer = inter / tok;
        res->base_bytes_per_token_layer = base / tok;
        res->saved_pct = base > 0 ? 100.0 * (1.0 - act / base) : 0.0;
        res->saved_inter_pct = base_inter > 0 ? 100.0 * (1.0 - inter / base_inter) : 0.0;
    }
    for (int i = 0; i < out->n_pol; i++)
        out->res[i].speedup =
            out->res[i].step_us > 0 ? out->res[0].step_us / out->res[i].step_us : 0.0;
    out->route_s = (ep_now_us() - t0) * 1e-6;
    st = EP_OK;

done:
    if (st) ep_sim_report_free(out);
    free_pols(sp, n_pol, W);
    ep_router_free(router);
    ep_weights_free(wts);
    ep_placement_free(&place);
    ep_sim_layer_free(&L);
    ep_sim_params_free(&params);
    free(gate);
    free(x);
    free(logits);
    free(load);
    free(rank_load);
    free(visit);
    free(node_of);
    return st;
}
