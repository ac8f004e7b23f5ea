// ep_dispatch_plan: groups a layer's pairs by destination rank (the rule of
// comm/dispatch_group.h), lays out the packed send buffer and counts the
// bytes, actual and counterfactual. Packing, moving and unpacking are
// comm.c's; this file never communicates.
#include "comm/dispatch_plan.h"

#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"
#include "comm/dispatch_group.h"

ep_status ep_dispatch_plan_init(ep_dispatch_plan *pl, int world, int rank, const int *node_of,
                                int hidden, ep_dtype wire)
{
    memset(pl, 0, sizeof *pl);
    if (world < 1 || rank < 0 || rank >= world || hidden < 1 || !ep_dtype_is_float(wire))
        return ep_errorf(EP_ERR_ARG,
                         "dispatch plan: world %d, rank %d, hidden %d, wire %s: expected world "
                         ">= 1, 0 <= rank < world, hidden >= 1 and a float wire dtype",
                         world, rank, hidden, ep_dtype_name(wire));
    pl->world = world;
    pl->rank = rank;
    pl->hidden = hidden;
    pl->wire = wire;
    const size_t W = (size_t)world;
    pl->node_of = ep_xcalloc(W, sizeof(int));
    if (node_of) memcpy(pl->node_of, node_of, W * sizeof(int));
    pl->dest_off = ep_xcalloc(W + 1, sizeof(int));
    pl->send_bytes = ep_xcalloc(W, sizeof(int64_t));
    pl->send_off = ep_xcalloc(W, sizeof(int64_t));
    pl->grp_off = ep_xcalloc(1, sizeof(int));
    return EP_OK;
}

void ep_dispatch_plan_free(ep_dispatch_plan *pl)
{
    free(pl->node_of);
    free(pl->grp_tok);
    free(pl->grp_dest);
    free(pl->grp_off);
    free(pl->grp_pair);
    free(pl->dest_off);
    free(pl->dest_grp);
    free(pl->send_bytes);
    free(pl->send_off);
    free(pl->rec_off);
    free(pl->row_dest);
    free(pl->row_n);
    memset(pl, 0, sizeof *pl);
}

void ep_dispatch_plan_reserve(ep_dispatch_plan *pl, size_t n_pairs)
{
    // A token has at most as many groups as pairs. Growth by half again, so a
    // slowly growing step reallocates O(log) times and a steady one never.
    if (n_pairs > pl->grp_cap) {
        size_t n = EP_MAX(n_pairs, pl->grp_cap + pl->grp_cap / 2);
        pl->grp_tok = ep_xrealloc(pl->grp_tok, n * sizeof(int));
        pl->grp_dest = ep_xrealloc(pl->grp_dest, n * sizeof(int));
        pl->grp_off = ep_xrealloc(pl->grp_off, (n + 1) * sizeof(int));
        pl->dest_grp = ep_xrealloc(pl->dest_grp, n * sizeof(int));
        pl->rec_off = ep_xrealloc(pl->rec_off, n * sizeof(int64_t));
        pl->grp_cap = n;
    }
    if (n_pairs > pl->pair_cap) {
        size_t n = EP_MAX(n_pairs, pl->pair_cap + pl->pair_cap / 2);
        pl->grp_pair = ep_xrealloc(pl->grp_pair, n * sizeof(int));
        pl->pair_cap = n;
    }
}

static void reserve_row(ep_dispatch_plan *pl, int k)
{
    if (k <= pl->row_cap) return;
    pl->row_dest = ep_xrealloc(pl->row_dest, (size_t)k * sizeof(int));
    pl->row_n = ep_xrealloc(pl->row_n, (size_t)k * sizeof(int));
    pl->row_cap = k;
}

// Bytes of one row's groups: each group on another rank is one dispatch
// record out and one combine row back; on another node, inter-node bytes.
typedef struct {
    int64_t sends, dest_ranks, dispatch, combine, dispatch_inter, combine_inter;
} row_cost;

static void cost_groups(const ep_dispatch_plan *pl, const int *dest, const int *n, int g,
                        int64_t crow_bytes, row_cost *acc)
{
    acc->dest_ranks += g;
    for (int k = 0; k < g; k++) {
        const int d = dest[k];
        if (d == pl->rank) continue; // computed where it lives: no bytes
        const int64_t db = ep_comm_dispatch_record_bytes(n[k], pl->hidden, pl->wire);
        acc->sends++;
        acc->dispatch += db;
        acc->combine += crow_bytes;
        if (pl->node_of[d] != pl->node_of[pl->rank]) {
            acc->dispatch_inter += db;
            acc->combine_inter += crow_bytes;
        }
    }
}

static void check_dests(const ep_dispatch_plan *pl, const int *dest, int g)
{
    for (int k = 0; k < g; k++)
        EP_ASSERT(dest[k] >= 0 && dest[k] < pl->world);
}

void ep_dispatch_plan_build(ep_dispatch_plan *pl, const ep_routes *r, const ep_placement *p,
                            const int *pair_rank)
{
    EP_ASSERT(r && p && p->world_size == pl->world && r->n_tokens >= 0);
    const int T = r->n_tokens, W = pl->world;
    const int nnz = T > 0 ? r->offsets[T] - r->offsets[0] : 0;
    ep_dispatch_plan_reserve(pl, (size_t)nnz);
    reserve_row(pl, EP_MAX(r->k_base, 1));
    const int64_t crow_bytes = ep_comm_combine_record_bytes(pl->hidden, pl->wire);

    // Groups of the actual routes, written in place: after q groups and np
    // pairs the row's at most K groups fit, since q <= np.
    row_cost act = {0}, base = {0};
    int q = 0, np = 0;
    pl->own_pairs = 0;
    memset(pl->dest_off, 0, ((size_t)W + 1) * sizeof(int));
    for (int i = 0; i < T; i++) {
        const int o = r->offsets[i], e = r->offsets[i + 1];
        EP_ASSERT(o <= e);
        for (int j = o; j < e; j++)
            EP_ASSERT(r->expert[j] >= 0 && r->expert[j] < p->n_experts);
        int *gd = pl->grp_dest + q, *gn = pl->grp_off + q; // counts for now
        const int g = ep_dispatch_group_row(r->expert, pair_rank, p->rank_of, o, e, gd, gn,
                                            pl->grp_pair + np);
        check_dests(pl, gd, g);
        cost_groups(pl, gd, gn, g, crow_bytes, &act);
        for (int k = 0; k < g; k++) {
            const int n = gn[k];
            pl->grp_tok[q + k] = i;
            gn[k] = np; // the count becomes the group's offset
            np += n;
            pl->dest_off[gd[k] + 1]++;
            if (gd[k] == pl->rank) pl->own_pairs += n;
        }
        q += g;

        // Counterfactual: static top-k_base, each expert at its home rank (a
        // replica choice follows the actual routes, not this one).
        const int *be = r->base_expert + (size_t)i * r->k_base;
        for (int j = 0; j < r->k_base; j++)
            EP_ASSERT(be[j] >= 0 && be[j] < p->n_experts);
        const int gb = ep_dispatch_group_row(be, NULL, p->rank_of, 0, r->k_base, pl->row_dest,
                                             pl->row_n, NULL);
        check_dests(pl, pl->row_dest, gb);
        cost_groups(pl, pl->row_dest, pl->row_n, gb, crow_bytes, &base);
    }
    pl->grp_off[q] = np;
    pl->n_grp = q;
    pl->n_tokens = T;
    pl->n_pairs = np;
    EP_ASSERT(np == nnz);

    // Per destination: groups in token order, record offsets and sizes.
    for (int d = 0; d < W; d++)
        pl->dest_off[d + 1] += pl->dest_off[d];
    memset(pl->send_bytes, 0, (size_t)W * sizeof(int64_t));
    for (int g = 0; g < q; g++) {
        const int d = pl->grp_dest[g];
        const int k = pl->dest_off[d] + (int)pl->send_bytes[d]; // send_bytes counts groups here
        pl->dest_grp[k] = g;
        pl->send_bytes[d]++;
    }
    int64_t off = 0;
    for (int d = 0; d < W; d++) {
        pl->send_off[d] = off;
        int64_t b = 0;
        for (int k = pl->dest_off[d]; k < pl->dest_off[d + 1]; k++) {
            const int g = pl->dest_grp[k];
            if (d == pl->rank) {
                pl->rec_off[g] = -1;
                continue;
            }
            pl->rec_off[g] = off + b;
            b += ep_comm_dispatch_record_bytes(pl->grp_off[g + 1] - pl->grp_off[g], pl->hidden,
                                               pl->wire);
        }
        pl->send_bytes[d] = b;
        off += b;
    }

    ep_comm_stats *st = &pl->stats;
    memset(st, 0, sizeof *st);
    st->tokens = T;
    st->pairs = nnz;
    st->sends = act.sends;
    st->dest_ranks = act.dest_ranks;
    st->dispatch_bytes = act.dispatch;
    st->combine_bytes = act.combine;
    st->dispatch_bytes_inter = act.dispatch_inter;
    st->combine_bytes_inter = act.combine_inter;
    st->base_pairs = (int64_t)T * r->k_base;
    st->base_sends = base.sends;
    st->base_dest_ranks = base.dest_ranks;
    st->base_dispatch_bytes = base.dispatch;
    st->base_combine_bytes = base.combine;
    st->base_dispatch_bytes_inter = base.dispatch_inter;
    st->base_combine_bytes_inter = base.combine_inter;
    st->planned_bytes = act.dispatch + act.combine;
}
