// The MoE layer's reference path: the same routing as the forward, then a
// plain loop over each token's kept experts on the host (every expert held,
// no placement, no communication, whatever the backend); and the per-row
// relative error that tests and `bench --check` compare the forward with.
#include "model/moe_impl.h"

#include <math.h>
#include <string.h>

ep_status ep_moe_reference_routes(ep_moe *m, int layer, const ep_routes *r, const float *x,
                                  float *y)
{
    ep_status s = ep_moe_check_layer(m, layer, r->n_tokens);
    if (s) return s;
    if (!m->all_experts)
        return ep_errorf(EP_ERR_ARG, "moe: the reference path needs opts.with_reference");
    ep_experts_reference(m->all_experts, layer, r, x, y);
    return EP_OK;
}

ep_status ep_moe_reference(ep_moe *m, const ep_policy *p, int layer, const float *x, int T,
                           float *y)
{
    ep_status s = ep_moe_check_call(m, p, layer, T);
    if (s) return s;
    if (!m->all_experts)
        return ep_errorf(EP_ERR_ARG, "moe: the reference path needs opts.with_reference");
    // The forward's routes, unless a caller chose another context.
    const ep_route_ctx ctx = m->ref_ctx.place ? m->ref_ctx : ep_moe_route_ctx(m, layer);
    if ((s = ep_router_route(m->router, p, &ctx, layer, x, T, m->gate_w[layer], &m->ref_routes)))
        return s;
    ep_experts_reference(m->all_experts, layer, &m->ref_routes, x, y);
    m->ref_pairs += m->ref_routes.offsets[T];
    m->ref_token_layers += T;
    const ep_routes *r = &m->ref_routes;
    if (m->ref_ctx.place && m->ref_ctx.rank >= 0) {
        m->ref_sends.token_layers += T;
        const ep_route_ctx *c = &m->ref_ctx;
        for (int t = 0; t < T; t++) {
            ep_route_sends_add(r->expert + r->offsets[t], ep_routes_k(r, t), c->place->rank_of,
                               NULL, c->rank, c->node_of, &m->ref_sends, 0);
            ep_route_sends_add(r->base_expert + (size_t)t * r->k_base, r->k_base, c->place->rank_of,
                               NULL, c->rank, c->node_of, &m->ref_sends, 1);
        }
    }
    return EP_OK;
}

void ep_moe_set_reference_ctx(ep_moe *m, const ep_route_ctx *ctx)
{
    memset(&m->ref_ctx, 0, sizeof m->ref_ctx);
    if (ctx) m->ref_ctx = *ctx;
}

void ep_moe_set_token_domain(ep_moe *m, const int *token_domain)
{
    m->token_domain = token_domain;
}

void ep_moe_reference_sends(const ep_moe *m, ep_route_sends *out)
{
    *out = m->ref_sends;
}

void ep_moe_reference_counts(const ep_moe *m, int64_t *pairs, int64_t *token_layers)
{
    *pairs = m->ref_pairs;
    *token_layers = m->ref_token_layers;
}

double ep_moe_rel_err(const float *a, const float *b, int rows, int cols, double tol,
                      int64_t *n_wrong)
{
    double worst = 0;
    int64_t wrong = 0;
    for (int i = 0; i < rows; i++) {
        double diff = 0, mag = 0;
        for (int j = 0; j < cols; j++) {
            double d = fabs((double)a[(size_t)i * cols + j] - b[(size_t)i * cols + j]);
            if (d > diff || isnan(d)) diff = isnan(d) ? INFINITY : d;
            double v = fabs((double)b[(size_t)i * cols + j]);
            if (v > mag) mag = v;
        }
        double rel = diff / (mag > 1e-6 ? mag : 1e-6);
        if (rel > tol) wrong++;
        if (rel > worst) worst = rel;
    }
    if (n_wrong) *n_wrong += wrong;
    return worst;
}
