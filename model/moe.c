// The EP MoE layer: router -> comm dispatch -> experts -> comm combine ->
// shared experts, with the routes, buffers and weights of every MoE layer
// held for the life of the ep_moe. Buffers are sized once from cap_tokens.
// The experts and the transport come from the backend's table
// (moe_backend.h); placements and re-placement are in replace.c, the
// reference path in moe_reference.c.
#include "model/moe_impl.h"

#include <stdlib.h>
#include <string.h>

void ep_moe_opts_default(ep_moe_opts *o, const ep_model_cfg *cfg)
{
    memset(o, 0, sizeof *o);
    o->backend = EP_MOE_BACKEND_CPU;
    o->placement = EP_PLACE_CONTIGUOUS;
    o->wire = EP_DTYPE_F32;
    o->expert_dtype = EP_DTYPE_AUTO;
    o->cap_tokens = 256;
    o->max_k = cfg->k_base;
    o->micro_batches = 1;
    o->dispatch = EP_MOE_DISPATCH_AUTO;
}

ep_status ep_moe_dispatch_mode(const ep_moe_opts *o, const ep_cluster *cl, ep_dispatch_mode *out)
{
    if (o->dispatch == EP_MOE_DISPATCH_AUTO) {
        *out = cl->n_nodes > 1 && o->backend == EP_MOE_BACKEND_CPU ? EP_DISPATCH_HIER
                                                                   : EP_DISPATCH_FLAT;
        return EP_OK;
    }
    if (o->dispatch != EP_DISPATCH_FLAT && o->dispatch != EP_DISPATCH_HIER)
        return ep_errorf(EP_ERR_ARG, "--dispatch: expected flat or hier, found mode %d",
                         o->dispatch);
    if (o->dispatch == EP_DISPATCH_HIER && o->backend == EP_MOE_BACKEND_CUDA)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "--dispatch hier: expected --backend cpu (the two-stage dispatch runs "
                         "on the MPI transport; the cuda backend's NCCL path is flat only), "
                         "found --backend cuda");
    *out = (ep_dispatch_mode)o->dispatch;
    return EP_OK;
}

ep_status ep_moe_init(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w, const ep_moe_opts *o,
                      ep_moe **out)
{
    *out = NULL;
    if (o->cap_tokens < 0 || o->max_k < cfg->k_base)
        return ep_errorf(EP_ERR_ARG,
                         "ep_moe_init: cap_tokens %d, max_k %d (expected >= 0 and >= k_base %d)",
                         o->cap_tokens, o->max_k, cfg->k_base);
    const ep_moe_backend_i *backend;
    ep_status st = ep_moe_backend_table(o->backend, &backend);
    if (st) return ep_error_prefix(st, "ep_moe_init");
    // 0 is taken as 1, for options zeroed rather than defaulted.
    if (o->micro_batches < 0 || o->micro_batches > 2)
        return ep_errorf(EP_ERR_ARG, "ep_moe_init: micro_batches: expected 1 or 2, found %d",
                         o->micro_batches);
    if (o->phase_barrier && o->micro_batches == 2)
        return ep_errorf(EP_ERR_ARG, "ep_moe_init: phase_barrier: needs micro_batches 1 (two "
                                     "micro-batches overlap the phases), found 2");
    ep_moe *m = ep_xcalloc(1, sizeof *m);
    m->cfg = cfg;
    m->cl = cl;
    m->opts = *o;
    if (m->opts.micro_batches < 1) m->opts.micro_batches = 1;
    m->backend = backend;
    int cap = o->cap_tokens > 0 ? o->cap_tokens : 1;

    if (o->placement == EP_PLACE_EPLB) {
        if ((st = ep_moe_place_eplb(cfg, cl, o, o->expert_load, &m->layer_place, &m->place)))
            goto err;
    } else if ((st = ep_placement_init(&m->place, o->placement, cfg->n_experts, cl->world_size))) {
        goto err;
    }
    m->w = w;
    m->window_load = ep_xcalloc((size_t)cfg->n_layers * cfg->n_experts, sizeof(double));
    m->pair_cap = cap * o->max_k;
    m->pair_rank = ep_xmalloc((size_t)m->pair_cap * sizeof(int));
    m->rank_load = ep_xcalloc((size_t)cl->world_size, sizeof(int64_t));
    m->visit = ep_xcalloc((size_t)cl->world_size, sizeof(int));
    // This rank's experts (what m->place gives it) and the transport.
    if ((st = backend->open(cfg, cl, w, &m->place, o, cap, &m->be))) goto err;
    // Two micro-batches: each ep_comm sized for half the tokens (a skewed
    // step grows them), so the buffers total what one would hold.
    const int n_mb = m->opts.micro_batches, mb_cap = (cap + n_mb - 1) / n_mb;
    ep_dispatch_mode mode;
    if ((st = ep_moe_dispatch_mode(o, cl, &mode))) goto err;
    for (int b = 0; b < n_mb; b++) {
        if ((st = ep_comm_init(cl, m->be.tp, cfg->hidden, o->wire, mb_cap, o->max_k, &m->comm[b])))
            goto err;
        if ((st = ep_comm_set_mode(m->comm[b], mode))) goto err;
        if (n_mb > 1) m->mb_off[b] = ep_xmalloc((size_t)(cap + 1) * sizeof(int));
    }
    if ((st = ep_router_init(cfg, cap, &m->router))) goto err;
    if (o->with_reference && (st = ep_experts_load(cfg, w, NULL, -1, &m->all_experts))) goto err;

    m->gate_w = ep_xcalloc((size_t)cfg->n_layers, sizeof(float *));
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!ep_model_layer_is_moe(cfg, l)) continue;
        char name[256];
        ep_name_gate(name, sizeof name, l);
        int64_t shape[2] = {cfg->n_experts, cfg->hidden};
        m->gate_w[l] = ep_xmalloc((size_t)cfg->n_experts * cfg->hidden * sizeof(float));
        if ((st = ep_weights_read_f32(w, name, 2, shape, m->gate_w[l]))) goto err;
    }
    ep_routes_init(&m->routes, cap, o->max_k, cfg->k_base);
    ep_routes_init(&m->ref_routes, cap, o->max_k, cfg->k_base);
    *out = m;
    return EP_OK;
err:
    ep_moe_free(m);
    return st;
}

void ep_moe_free(ep_moe *m)
{
    if (!m) return;
    if (m->gate_w) {
        for (int l = 0; l < m->cfg->n_layers; l++)
            free(m->gate_w[l]);
        free(m->gate_w);
    }
    ep_routes_free(&m->routes);
    ep_routes_free(&m->ref_routes);
    ep_experts_free(m->all_experts);
    ep_router_free(m->router);
    for (int b = 0; b < 2; b++) { // before the transport they send over
        ep_comm_free(m->comm[b]);
        free(m->mb_off[b]);
    }
    if (m->backend) m->backend->close(&m->be);
    ep_moe_place_free(m->cfg, m->layer_place, &m->place);
    free(m->pair_rank);
    free(m->window_load);
    free(m->rank_load);
    free(m->visit);
    free(m);
}

ep_status ep_moe_set_dispatch(ep_moe *m, int dispatch)
{
    ep_moe_opts o = m->opts;
    o.dispatch = dispatch;
    ep_dispatch_mode mode;
    ep_status st = ep_moe_dispatch_mode(&o, m->cl, &mode);
    if (st) return st;
    for (int b = 0; b < m->opts.micro_batches; b++)
        if ((st = ep_comm_set_mode(m->comm[b], mode))) return st;
    m->opts.dispatch = dispatch;
    return EP_OK;
}

const ep_placement *ep_moe_placement(const ep_moe *m)
{
    return &m->place;
}

size_t ep_moe_expert_bytes(const ep_moe *m)
{
    return ep_expert_backend_bytes(m->be.experts);
}

void ep_moe_get_bytes(const ep_moe *m, ep_moe_bytes *out)
{
    const ep_model_cfg *c = m->cfg;
    const uint64_t ih = (uint64_t)c->moe_inter * c->hidden, n_moe = ep_model_n_moe_layers(c);
    // A backend that cannot move experts does not say their size: BF16 (cuda).
    uint64_t e = ep_expert_backend_expert_bytes(m->be.experts);
    out->expert = e ? e : 3 * ih * sizeof(uint16_t);
    out->shared = n_moe * (uint64_t)c->n_shared * out->expert;
    out->gates = n_moe * (uint64_t)c->n_experts * c->hidden * sizeof(float);
}

const ep_placement *ep_moe_layer_placement(const ep_moe *m, int layer)
{
    EP_ASSERT(layer >= 0 && layer < m->cfg->n_layers);
    return m->layer_place && m->layer_place[layer].rank_of ? &m->layer_place[layer] : &m->place;
}

const int *ep_moe_last_pair_rank(const ep_moe *m)
{
    return m->pair_rank;
}

const ep_routes *ep_moe_last_routes(const ep_moe *m)
{
    return &m->routes;
}

ep_status ep_moe_check_layer(const ep_moe *m, int layer, int T)
{
    if (layer < 0 || layer >= m->cfg->n_layers || !ep_model_layer_is_moe(m->cfg, layer))
        return ep_errorf(EP_ERR_ARG, "moe: layer %d is not a MoE layer of %s (MoE layers %d..%d)",
                         layer, m->cfg->name, m->cfg->first_k_dense, m->cfg->n_layers - 1);
    if (T < 0 || T > m->opts.cap_tokens)
        return ep_errorf(EP_ERR_ARG, "moe: %d tokens in one call, capacity is %d (cap_tokens)", T,
                         m->opts.cap_tokens);
    return EP_OK;
}

ep_status ep_moe_check_call(const ep_moe *m, const ep_policy *p, int layer, int T)
{
    ep_status s = ep_moe_check_layer(m, layer, T);
    if (s) return s;
    if (ep_policy_max_k(p) > m->opts.max_k)
        return ep_errorf(EP_ERR_ARG,
                         "moe: policy '%s' keeps up to %d experts, buffers hold %d (max_k)",
                         ep_policy_name(p), ep_policy_max_k(p), m->opts.max_k);
    return EP_OK;
}

static ep_status run_experts(ep_moe *m, int layer, const ep_comm_work *w)
{
    return ep_expert_backend_forward(m->be.experts, layer, w->n_rec, w->pair_off, w->pair_expert,
                                     w->pair_weight, w->x, w->y);
}

// Tokens [t0, t1) of r as routes of their own: the expert, weight and
// base rows are views into r, only the offsets are copied (rebased to 0)
// into off[t1 - t0 + 1]. Nothing of r is copied but that.
static void routes_slice(const ep_routes *r, int t0, int t1, int *off, ep_routes *out)
{
    const int base = r->offsets[t0];
    for (int i = t0; i <= t1; i++)
        off[i - t0] = r->offsets[i] - base;
    *out = *r;
    out->n_tokens = t1 - t0;
    out->cap_tokens = t1 - t0;
    out->offsets = off;
    out->expert = r->expert + base;
    out->weight = r->weight + base;
    out->base_expert = r->base_expert + (size_t)t0 * r->k_base;
    out->base_weight = r->base_weight + (size_t)t0 * r->k_base;
}

// Two micro-batches A (the first ceil(T/2) tokens) and B (the rest) in the
// order that keeps one all-to-all in flight while the other batch computes:
//   dispatch_start A, dispatch_start B, dispatch_finish A, experts A,
//   combine_start A, dispatch_finish B, experts B, combine_start B,
//   combine_finish A, combine_finish B.
// An empty micro-batch (T = 0 or 1) still joins every collective. Each
// token's partial sums are made from the same records, summed in the same
// rank order as with one batch, so y has the same bits, unless halving
// moved an expert to another fp32 kernel (docs/architecture.md). Stats and times
// are summed over both; times are those of the calls, so with overlap the
// communication a call did not wait for is not counted.
// t: when the layer's dispatch began (the replica choice counts to it).
static ep_status run_overlap(ep_moe *m, const ep_routes *r, int layer, const ep_placement *pl,
                             const int *pair_rank, const float *x, float *y, ep_comm_stats *st,
                             ep_moe_times *tm, double t)
{
    const size_t H = (size_t)m->cfg->hidden;
    const int T = r->n_tokens, split[3] = {0, (T + 1) / 2, T};
    ep_routes sub[2];
    const int *prk[2] = {NULL, NULL};
    const float *xs[2];
    float *ys[2];
    ep_comm_stats ls[2];
    ep_comm_work wk[2];
    memset(ls, 0, sizeof ls);
    for (int b = 0; b < 2; b++) {
        routes_slice(r, split[b], split[b + 1], m->mb_off[b], &sub[b]);
        if (pair_rank) prk[b] = pair_rank + r->offsets[split[b]];
        bool any = split[b + 1] > split[b];
        xs[b] = any ? x + (size_t)split[b] * H : NULL;
        ys[b] = any ? y + (size_t)split[b] * H : NULL;
    }
    double d_us = 0, e_us = 0, c_us = 0, t2;
    ep_status s;
#define EP_LAP(acc) (t2 = ep_now_us(), acc += t2 - t, t = t2)
    for (int b = 0; b < 2; b++)
        if ((s = ep_comm_dispatch_start(m->comm[b], &sub[b], pl, prk[b], xs[b], &ls[b]))) return s;
    for (int b = 0; b < 2; b++) {
        if ((s = ep_comm_dispatch_finish(m->comm[b], &wk[b], &ls[b]))) return s;
        EP_LAP(d_us);
        if ((s = run_experts(m, layer, &wk[b]))) return s;
        EP_LAP(e_us);
        if ((s = ep_comm_combine_start(m->comm[b], &wk[b]))) return s;
        EP_LAP(c_us);
    }
    for (int b = 0; b < 2; b++)
        if ((s = ep_comm_combine_finish(m->comm[b], ys[b], &ls[b]))) return s;
    EP_LAP(c_us);
#undef EP_LAP
    if (st) {
        ep_comm_stats_add(st, &ls[0]);
        ep_comm_stats_add(st, &ls[1]);
    }
    if (tm) {
        tm->dispatch_us += d_us;
        tm->experts_us += e_us;
        tm->combine_us += c_us;
    }
    return EP_OK;
}

// The replica choice and the window see the whole batch, also with two
// micro-batches (a policy's or the balancer's view is the batch's).
const int *ep_moe_choose_ranks(ep_moe *m, int layer, const ep_routes *r)
{
    const ep_placement *pl = ep_moe_layer_placement(m, layer);
    int nnz = ep_routes_nnz(r);
    if (nnz > m->pair_cap) { // a replayed trace may bring more pairs than cap * max_k
        m->pair_cap = nnz;
        m->pair_rank = ep_xrealloc(m->pair_rank, (size_t)nnz * sizeof(int));
    }
    const int *pair_rank = NULL;
    if (pl->n_phy > pl->n_experts && !m->opts.home_only) {
        memset(m->rank_load, 0, (size_t)pl->world_size * sizeof(int64_t));
        ep_placement_choose(pl, r, m->cl->rank, m->rank_load, m->visit, m->pair_rank);
        pair_rank = m->pair_rank;
    } else {
        for (int j = 0; j < nnz; j++)
            m->pair_rank[j] = pl->rank_of[r->expert[j]];
    }
    double *wl = m->window_load + (size_t)layer * m->cfg->n_experts;
    for (int j = 0; j < nnz; j++)
        wl[r->expert[j]] += 1;
    if (layer == m->cfg->first_k_dense) m->window_steps++;
    return pair_rank;
}

// Dispatch -> experts -> combine -> shared experts, for routes already made.
static ep_status run_routed(ep_moe *m, int layer, const ep_routes *r, const float *x, float *y,
                            ep_comm_stats *st, ep_moe_times *tm)
{
    ep_status s;
    double t1 = ep_now_us();
    const ep_placement *pl = ep_moe_layer_placement(m, layer);
    const int *pair_rank = ep_moe_choose_ranks(m, layer, r);
    ep_moe_times mt = {0};
    if (m->opts.micro_batches == 2) {
        if ((s = run_overlap(m, r, layer, pl, pair_rank, x, y, st, &mt, t1))) return s;
    } else {
        ep_comm_stats local;
        memset(&local, 0, sizeof local);
        ep_comm_work work;
        if (m->opts.phase_barrier) {
            if ((s = ep_cluster_barrier(m->cl))) return s;
            t1 = ep_now_us();
        }
        if ((s = ep_comm_dispatch(m->comm[0], r, pl, pair_rank, x, &work, &local))) return s;
        double t2 = ep_now_us();
        if ((s = run_experts(m, layer, &work))) return s;
        double t3 = ep_now_us();
        if (m->opts.phase_barrier) {
            if ((s = ep_cluster_barrier(m->cl))) return s;
            t3 = ep_now_us();
        }
        if ((s = ep_comm_combine(m->comm[0], &work, y, &local))) return s;
        mt.dispatch_us = t2 - t1;
        mt.experts_us = t3 - t2;
        mt.combine_us = ep_now_us() - t3;
        if (st) ep_comm_stats_add(st, &local);
    }
    double t4 = ep_now_us();
    if ((s = ep_expert_backend_shared(m->be.experts, layer, x, r->n_tokens, y))) return s;
    if (tm) {
        tm->dispatch_us += mt.dispatch_us;
        tm->experts_us += mt.experts_us;
        tm->combine_us += mt.combine_us;
        tm->shared_us += ep_now_us() - t4;
    }
    return EP_OK;
}

ep_route_ctx ep_moe_route_ctx(const ep_moe *m, int layer)
{
    ep_route_ctx c = {
        .place = ep_moe_layer_placement(m, layer),
        .node_of = m->cl->node_of,
        .rank = m->cl->rank,
        .home_only = m->opts.home_only,
        .token_domain = m->token_domain,
    };
    return c;
}

ep_status ep_moe_forward(ep_moe *m, const ep_policy *p, int layer, const float *x, int T, float *y,
                         ep_comm_stats *st, ep_moe_times *tm)
{
    ep_status s = ep_moe_check_call(m, p, layer, T);
    if (s) return s;
    double t0 = ep_now_us();
    const ep_route_ctx ctx = ep_moe_route_ctx(m, layer);
    if ((s = ep_router_route(m->router, p, &ctx, layer, x, T, m->gate_w[layer], &m->routes)))
        return s;
    if (tm) tm->route_us += ep_now_us() - t0;
    return run_routed(m, layer, &m->routes, x, y, st, tm);
}

ep_status ep_moe_forward_routes(ep_moe *m, int layer, const ep_routes *r, const float *x, float *y,
                                ep_comm_stats *st, ep_moe_times *tm)
{
    ep_status s = ep_moe_check_layer(m, layer, r->n_tokens);
    if (s) return s;
    if ((s = ep_routes_check(r, m->cfg->n_experts))) return s;
    return run_routed(m, layer, r, x, y, st, tm);
}
