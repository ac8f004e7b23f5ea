// Where each MoE layer's experts are placed across ranks: the EPLB
// placements (at init, and from the load window between steps), and
// re-placement with its weight migration, every moved expert sent over the
// transport by a rank that holds it, through the expert backend's reshard /
// export / import. Nothing here runs a forward.
#include "model/moe_impl.h"

#include <stdlib.h>
#include <string.h>

ep_status ep_moe_place_eplb(const ep_model_cfg *cfg, const ep_cluster *cl, const ep_moe_opts *o,
                            const double *load, ep_placement **layer_place, ep_placement *all)
{
    const int E = cfg->n_experts, L = cfg->n_layers, R = o->redundant_experts;
    *layer_place = NULL;
    memset(all, 0, sizeof *all);
    if (R < 0) return ep_errorf(EP_ERR_ARG, "moe: redundant_experts: expected >= 0, found %d", R);
    int groups = o->eplb_groups > 0 ? o->eplb_groups : (cfg->n_group > 0 ? cfg->n_group : 1);
    ep_placement *lps = ep_xcalloc((size_t)L, sizeof(ep_placement));
    double *uniform = ep_xmalloc((size_t)E * sizeof(double));
    for (int e = 0; e < E; e++)
        uniform[e] = 1.0;
    int n_all = 0, *all_e = NULL, *all_r = NULL;
    ep_status st = EP_OK;
    for (int l = 0; l < L && !st; l++) {
        if (!ep_model_layer_is_moe(cfg, l)) continue;
        const double *ll = load ? load + (size_t)l * E : uniform;
        if ((st = ep_placement_init_eplb(&lps[l], ll, E, R, groups, cl->n_nodes, cl->world_size)))
            break;
        const ep_placement *lp = &lps[l];
        all_e = ep_xrealloc(all_e, (size_t)(n_all + lp->n_phy) * sizeof(int));
        all_r = ep_xrealloc(all_r, (size_t)(n_all + lp->n_phy) * sizeof(int));
        memcpy(all_e + n_all, lp->phy_expert, (size_t)lp->n_phy * sizeof(int));
        memcpy(all_r + n_all, lp->phy_rank, (size_t)lp->n_phy * sizeof(int));
        n_all += lp->n_phy;
    }
    if (!st && n_all == 0)
        st = ep_placement_init_eplb(all, uniform, E, R, groups, 1, cl->world_size);
    else if (!st)
        st = ep_placement_from_slots(all, EP_PLACE_EPLB, E, cl->world_size, n_all, all_e, all_r);
    free(uniform);
    free(all_e);
    free(all_r);
    if (st) {
        ep_moe_place_free(cfg, lps, all);
        return st;
    }
    *layer_place = lps;
    return EP_OK;
}

void ep_moe_place_free(const ep_model_cfg *cfg, ep_placement *layer_place, ep_placement *all)
{
    if (layer_place) {
        for (int l = 0; l < cfg->n_layers; l++)
            ep_placement_free(&layer_place[l]);
        free(layer_place);
    }
    ep_placement_free(all);
}

int64_t ep_moe_window_steps(const ep_moe *m)
{
    return m->window_steps;
}

// The rank that sends expert g to rank dst on a move from placement op:
// one of g's holders under op, spread by (dst + g) so that several ranks
// needing g, or one rank needing several experts, draw on different holders.
// Every rank computes the same answer from the same placements.
static int move_source(const ep_placement *op, int g, int dst)
{
    int n = 0;
    for (int r = 0; r < op->world_size; r++)
        n += ep_placement_holds(op, r, g);
    EP_ASSERT(n > 0); // every placement holds every expert somewhere
    int k = (dst + g) % n;
    for (int r = 0; r < op->world_size; r++)
        if (ep_placement_holds(op, r, g) && k-- == 0) return r;
    return -1;
}

// This rank's shard for placement np, its weights moved over the transport
// from ranks that hold them under the current placement: experts it kept
// are copied locally, each expert it newly needs arrives from one holder
// (move_source), one alltoallv of the exported bytes (the backend's
// storage: fp32 or BF16 on the CPU) per MoE layer. Nothing is read from the
// ep_weights. Collective.
static ep_status move_experts(ep_moe *m, const ep_placement *np, ep_expert_backend **out)
{
    const ep_model_cfg *cfg = m->cfg;
    const ep_placement *op = &m->place;
    const int W = m->cl->world_size, me = m->cl->rank, E = cfg->n_experts;
    ep_expert_backend *nx = NULL;
    ep_status st = ep_expert_backend_reshard(m->be.experts, np, me, &nx);
    if (st) return st;
    const int64_t eb = (int64_t)ep_expert_backend_expert_bytes(nx);
    // src[dst * E + g]: who sends g to dst, -1 when dst needs nothing new.
    int *src = ep_xmalloc((size_t)W * E * sizeof(int));
    int64_t *v = ep_xcalloc((size_t)4 * W, sizeof(int64_t));
    int64_t *send_b = v, *send_off = v + W, *recv_b = v + 2 * W, *recv_off = v + 3 * W;
    int64_t n_recv = 0;
    for (int d = 0; d < W; d++)
        for (int g = 0; g < E; g++) {
            bool need = ep_placement_holds(np, d, g) && !ep_placement_holds(op, d, g);
            int s = need ? move_source(op, g, d) : -1;
            src[(size_t)d * E + g] = s;
            if (s == me) send_b[d] += eb;
            if (need && d == me) {
                recv_b[s] += eb;
                n_recv++;
            }
        }
    int64_t sent = 0, got = 0;
    for (int d = 0; d < W; d++) {
        send_off[d] = sent;
        recv_off[d] = got;
        sent += send_b[d];
        got += recv_b[d];
    }
    char *sbuf = ep_xmalloc((size_t)(sent > 0 ? sent : 1));
    char *rbuf = ep_xmalloc((size_t)(got > 0 ? got : 1));
    const int64_t moved0 = m->be.tp->bytes_moved;
    for (int l = 0; l < cfg->n_layers && !st; l++) {
        if (!ep_model_layer_is_moe(cfg, l)) continue;
        // Sender and receiver walk the same (rank, expert) order.
        char *at = sbuf;
        for (int d = 0; d < W && !st; d++)
            for (int g = 0; g < E && !st; g++)
                if (src[(size_t)d * E + g] == me) {
                    st = ep_expert_backend_export(m->be.experts, l, g, at);
                    at += eb;
                }
        if (st) break;
        st = ep_transport_alltoallv(m->be.tp, sbuf, send_b, send_off, rbuf, recv_b, recv_off);
        if (st) break;
        for (int s = 0; s < W && !st; s++) {
            const char *from = rbuf + recv_off[s];
            for (int g = 0; g < E && !st; g++)
                if (src[(size_t)me * E + g] == s) {
                    st = ep_expert_backend_import(nx, l, g, from);
                    from += eb;
                }
        }
    }
    if (!st) {
        for (int l = 0; l < cfg->n_layers; l++)
            if (ep_model_layer_is_moe(cfg, l))
                for (int g = 0; g < E; g++)
                    EP_ASSERT(!ep_expert_backend_pending(nx, l, g)); // every new expert arrived
        int n_moe = 0;
        for (int l = 0; l < cfg->n_layers; l++)
            n_moe += ep_model_layer_is_moe(cfg, l);
        m->last_move.experts_recv = n_recv * n_moe;
        m->last_move.bytes_recv = got * n_moe;
        m->last_move.bytes_sent = sent * n_moe;
        m->last_move.bytes_moved = m->be.tp->bytes_moved - moved0;
    }
    free(sbuf);
    free(rbuf);
    free(src);
    free(v);
    if (st) {
        ep_expert_backend_free(nx);
        return st;
    }
    *out = nx;
    return EP_OK;
}

const ep_moe_move_stats *ep_moe_last_move(const ep_moe *m)
{
    return &m->last_move;
}

ep_status ep_moe_replace(ep_moe *m, double min_gain, double *before, double *after, bool *moved)
{
    const ep_model_cfg *cfg = m->cfg;
    const int E = cfg->n_experts, L = cfg->n_layers;
    if (moved) *moved = false;
    // Every rank runs the same backend, so every rank refuses alike, before
    // any collective and with the window kept.
    ep_status st = ep_expert_backend_can_move(m->be.experts);
    if (st) return ep_error_prefix(st, "moe: re-placement");
    if ((st = ep_cluster_allreduce_f64(m->cl, m->window_load, L * E, EP_REDUCE_SUM))) return st;
    // The candidate: EPLB placements per layer from the window.
    ep_placement *cand_layers = NULL, cand;
    if ((st = ep_moe_place_eplb(cfg, m->cl, &m->opts, m->window_load, &cand_layers, &cand)))
        goto out;

    double b = 0, a = 0;
    int n = 0;
    for (int l = 0; l < L; l++) {
        if (!ep_model_layer_is_moe(cfg, l)) continue;
        const double *load = m->window_load + (size_t)l * E;
        b += ep_placement_predict_imbalance(ep_moe_layer_placement(m, l), load);
        a += ep_placement_predict_imbalance(&cand_layers[l], load);
        n++;
    }
    b = n ? b / n : 1;
    a = n ? a / n : 1;
    if (before) *before = b;
    if (after) *after = a;
    if (!(b > 0) || (b - a) / b < min_gain) goto out;

    // Every rank took the same decision from the same sums: move the weights.
    ep_expert_backend *nx = NULL;
    if ((st = move_experts(m, &cand, &nx))) goto out;
    ep_expert_backend_free(m->be.experts);
    m->be.experts = nx;
    ep_placement tmp = m->place;
    m->place = cand;
    cand = tmp;
    ep_placement *tl = m->layer_place;
    m->layer_place = cand_layers;
    cand_layers = tl;
    m->opts.placement = EP_PLACE_EPLB;
    if (moved) *moved = true;
out:
    ep_moe_place_free(cfg, cand_layers, &cand); // the old ones after a move
    memset(m->window_load, 0, (size_t)L * E * sizeof(double));
    m->window_steps = 0;
    return st;
}
