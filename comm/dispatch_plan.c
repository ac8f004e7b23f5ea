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
    pl->fwd_of = ep_xcalloc(W, sizeof(int));
    pl->mode = EP_DISPATCH_FLAT;
    for (int d = 0; d < world; d++)
        pl->fwd_of[d] = d;
    pl->dest_off = ep_xcalloc(W + 1, sizeof(int));
    pl->send_bytes = ep_xcalloc(W, sizeof(int64_t));
    pl->send_off = ep_xcalloc(W, sizeof(int64_t));
    pl->grp_off = ep_xcalloc(1, sizeof(int));
    return EP_OK;
}

void ep_dispatch_plan_free(ep_dispatch_plan *pl)
{
    free(pl->node_of);
    free(pl->fwd_of);
    free(pl->grp_prank);
    free(pl->row_key);
    free(pl->row_pair);
    free(pl->row_prank);
    free(pl->row_tmp);
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

ep_status ep_dispatch_plan_set_mode(ep_dispatch_plan *pl, ep_dispatch_mode mode)
{
    if (mode != EP_DISPATCH_FLAT && mode != EP_DISPATCH_HIER)
        return ep_errorf(EP_ERR_ARG,
                         "dispatch plan: mode: expected flat (%d) or hier (%d), found %d",
                         EP_DISPATCH_FLAT, EP_DISPATCH_HIER, (int)mode);
    pl->mode = mode;
    const int W = pl->world, me = pl->rank, my_node = pl->node_of[me];
    int li = 0; // this rank's local index: ranks of its node below it
    for (int d = 0; d < me; d++)
        li += pl->node_of[d] == my_node;
    for (int d = 0; d < W; d++) {
        const int nd = pl->node_of[d];
        pl->fwd_of[d] = d;
        if (mode == EP_DISPATCH_FLAT || nd == my_node) continue;
        // As DeepEP pairs RDMA peers: the same local index on the other
        // node; a smaller node wraps (li mod its size), so every rank has a
        // peer there and a node's forwarding load stays spread.
        int size = 0;
        for (int q = 0; q < W; q++)
            size += pl->node_of[q] == nd;
        for (int q = 0, k = 0; q < W; q++) {
            if (pl->node_of[q] != nd) continue;
            if (k++ == li % size) {
                pl->fwd_of[d] = q;
                break;
            }
        }
    }
    return EP_OK;
}

int64_t ep_dispatch_plan_rec_bytes(const ep_dispatch_plan *pl, int d, int n)
{
    if (pl->mode == EP_DISPATCH_HIER && pl->node_of[d] != pl->node_of[pl->rank])
        return ep_comm_hier_record_bytes(n, pl->hidden, pl->wire);
    return ep_comm_dispatch_record_bytes(n, pl->hidden, pl->wire);
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
        pl->grp_prank = ep_xrealloc(pl->grp_prank, n * sizeof(int));
        pl->pair_cap = n;
    }
}

static void reserve_row(ep_dispatch_plan *pl, int k)
{
    if (k <= pl->row_cap) return;
    pl->row_dest = ep_xrealloc(pl->row_dest, (size_t)k * sizeof(int));
    pl->row_n = ep_xrealloc(pl->row_n, (size_t)k * sizeof(int));
    pl->row_key = ep_xrealloc(pl->row_key, (size_t)k * sizeof(int));
    pl->row_pair = ep_xrealloc(pl->row_pair, (size_t)k * sizeof(int));
    pl->row_prank = ep_xrealloc(pl->row_prank, (size_t)k * sizeof(int));
    pl->row_tmp = ep_xrealloc(pl->row_tmp, (size_t)k * sizeof(int));
    pl->row_cap = k;
}

// Bytes of one row's groups: each group on another rank is one dispatch
// record out and one combine row back; on another node, inter-node bytes.
// A hier group to another node is also forwarded: one plain record per
// other rank of its pairs there and one combine row from it, intra-node.
typedef struct {
    int64_t sends, fwd_sends, dest_ranks, dispatch, combine, dispatch_inter, combine_inter;
} row_cost;

static void cost_groups(const ep_dispatch_plan *pl, const int *dest, const int *n, int g,
                        const int *prank, int64_t crow_bytes, row_cost *acc)
{
    for (int k = 0, o = 0; k < g; o += n[k], k++) {
        const int d = dest[k];
        if (d == pl->rank) { // computed where it lives: no bytes
            acc->dest_ranks++;
            continue;
        }
        const int64_t db = ep_dispatch_plan_rec_bytes(pl, d, n[k]);
        acc->sends++;
        acc->dispatch += db;
        acc->combine += crow_bytes;
        if (pl->node_of[d] == pl->node_of[pl->rank]) {
            acc->dest_ranks++;
            continue;
        }
        acc->dispatch_inter += db;
        acc->combine_inter += crow_bytes;
        // Stage 2 (hier): the group's pairs by the rank computing them, each
        // rank once; pairs of the forwarder itself stay there.
        for (int a = o; a < o + n[k]; a++) {
            const int ra = prank[a];
            bool first = true;
            for (int b = o; b < a && first; b++)
                first = prank[b] != ra;
            if (!first) continue;
            acc->dest_ranks++;
            if (ra == d) continue;
            int na = 0;
            for (int b = a; b < o + n[k]; b++)
                na += prank[b] == ra;
            acc->fwd_sends++;
            acc->dispatch += ep_comm_dispatch_record_bytes(na, pl->hidden, pl->wire);
            acc->combine += crow_bytes;
        }
    }
}

static void check_dests(const ep_dispatch_plan *pl, const int *dest, int g)
{
    for (int k = 0; k < g; k++)
        EP_ASSERT(dest[k] >= 0 && dest[k] < pl->world);
}

// Groups the pairs [o, e) of one row by stage-1 destination (the rank
// computing each pair, through fwd_of under hier): ep_dispatch_group_row's
// rule on the keys. gpair receives pair indices (absolute), gprank their
// ranks, group after group.
static int group_row(ep_dispatch_plan *pl, const int *expert, const int *pair_rank,
                     const int *rank_of, int o, int e, int *gd, int *gn, int *gpair, int *gprank)
{
    const int n = e - o;
    if (pl->mode == EP_DISPATCH_FLAT) {
        const int g = ep_dispatch_group_row(expert, pair_rank, rank_of, o, e, gd, gn, gpair);
        for (int q = 0; q < n; q++)
            gprank[q] = ep_dispatch_pair_dest(expert, pair_rank, rank_of, gpair[q]);
        return g;
    }
    for (int j = o; j < e; j++) {
        const int d = ep_dispatch_pair_dest(expert, pair_rank, rank_of, j);
        EP_ASSERT(d >= 0 && d < pl->world);
        pl->row_key[j - o] = pl->fwd_of[d];
        pl->row_tmp[j - o] = d;
    }
    // The keys stand in for the pair ranks of the rule (pair j -> key[j]).
    const int g = ep_dispatch_group_row(pl->row_key, pl->row_key, NULL, 0, n, gd, gn, gpair);
    for (int q = 0; q < n; q++) {
        gprank[q] = pl->row_tmp[gpair[q]];
        gpair[q] += o;
    }
    return g;
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
        reserve_row(pl, e - o);
        int *gd = pl->grp_dest + q, *gn = pl->grp_off + q; // counts for now
        const int g = group_row(pl, r->expert, pair_rank, p->rank_of, o, e, gd, gn,
                                pl->grp_pair + np, pl->grp_prank + np);
        check_dests(pl, gd, g);
        check_dests(pl, pl->grp_prank + np, e - o);
        cost_groups(pl, gd, gn, g, pl->grp_prank + np, crow_bytes, &act);
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
        const int gb = group_row(pl, be, NULL, p->rank_of, 0, r->k_base, pl->row_dest, pl->row_n,
                                 pl->row_pair, pl->row_prank);
        check_dests(pl, pl->row_dest, gb);
        cost_groups(pl, pl->row_dest, pl->row_n, gb, pl->row_prank, crow_bytes, &base);
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
            b += ep_dispatch_plan_rec_bytes(pl, d, pl->grp_off[g + 1] - pl->grp_off[g]);
        }
        pl->send_bytes[d] = b;
        off += b;
    }

    ep_comm_stats *st = &pl->stats;
    memset(st, 0, sizeof *st);
    st->tokens = T;
    st->pairs = nnz;
    st->sends = act.sends;
    st->fwd_sends = act.fwd_sends;
    st->base_fwd_sends = base.fwd_sends;
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
    st->dispatch_bytes_intra = act.dispatch - act.dispatch_inter;
    st->combine_bytes_intra = act.combine - act.combine_inter;
    st->base_dispatch_bytes_intra = base.dispatch - base.dispatch_inter;
    st->base_combine_bytes_intra = base.combine - base.combine_inter;
    st->planned_bytes = act.dispatch + act.combine;
}
