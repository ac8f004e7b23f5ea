// EPLB placement of one layer from observed expert loads: balanced packing of
// expert groups onto nodes, replication of the heaviest experts (by load per
// replica) inside each node, packing of the replicas onto the node's ranks.
// Follows the algorithm of DeepSeek's open EPLB (our code, not theirs); no
// MPI here: every rank computes the same placement from the same loads.
#include "cluster/placement.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    double w;
    int i;
} item;

// Descending by load; equal loads keep the lower index first (deterministic).
static int cmp_item(const void *a, const void *b)
{
    const item *x = a, *y = b;
    if (x->w != y->w) return x->w > y->w ? -1 : 1;
    return x->i - y->i;
}

void ep_eplb_balanced_packing(const double *w, int n, int m, int *pack_of, int *rank_in_pack)
{
    EP_ASSERT(n >= 0 && m >= 1);
    if (n == m) {
        // One item per pack: nothing to balance, keep the order (as EPLB does).
        for (int i = 0; i < n; i++) {
            pack_of[i] = i;
            rank_in_pack[i] = 0;
        }
        return;
    }
    item *it = ep_xmalloc((size_t)(n ? n : 1) * sizeof *it);
    for (int i = 0; i < n; i++)
        it[i] = (item){w[i], i};
    qsort(it, (size_t)n, sizeof *it, cmp_item);
    double *pw = ep_xcalloc((size_t)m, sizeof(double));
    int *pn = ep_xcalloc((size_t)m, sizeof(int));
    for (int k = 0; k < n; k++) {
        int best = -1;
        for (int q = 0; q < m; q++) {
            int cap = n / m + (q < n % m);
            if (pn[q] >= cap) continue;
            if (best < 0 || pw[q] < pw[best]) best = q;
        }
        EP_ASSERT(best >= 0);
        pack_of[it[k].i] = best;
        rank_in_pack[it[k].i] = pn[best]++;
        pw[best] += it[k].w;
    }
    free(pw);
    free(pn);
    free(it);
}

// First item of pack q when n items go into m packs (capacities as above).
static int pack_start(int n, int m, int q)
{
    return q * (n / m) + (q < n % m ? q : n % m);
}

// Gives n_slots >= n slots to n experts of loads w: one each, then one more
// at a time to the expert with the largest w / count (ties: lower index).
// slot_of [n_slots] expert of each slot, replica [n_slots] its replica index.
static void replicate(const double *w, int n, int n_slots, int *slot_of, int *replica, int *cnt)
{
    for (int e = 0; e < n; e++) {
        slot_of[e] = e;
        replica[e] = 0;
        cnt[e] = 1;
    }
    for (int s = n; s < n_slots; s++) {
        int best = 0;
        for (int e = 1; e < n; e++)
            if (w[e] / cnt[e] > w[best] / cnt[best]) best = e;
        slot_of[s] = best;
        replica[s] = cnt[best]++;
    }
}

ep_status ep_eplb_rebalance(const double *load, int n_experts, int n_redundant, int n_groups,
                            int n_nodes, int world_size, int *phy_expert, int *phy_rank,
                            int *logcnt, int *phy_replica)
{
    const int E = n_experts, W = world_size;
    if (E < 1 || W < 1 || n_redundant < 0)
        return ep_errorf(EP_ERR_ARG,
                         "eplb: expected n_experts >= 1, world_size >= 1, redundant_experts >= 0; "
                         "found %d, %d, %d",
                         E, W, n_redundant);
    for (int e = 0; e < E; e++)
        if (!(load[e] >= 0))
            return ep_errorf(EP_ERR_ARG, "eplb: load of expert %d is %g (expected >= 0)", e,
                             load[e]);
    const int P = E + n_redundant;
    int G = n_groups, N = n_nodes;
    // Hierarchical only when everything divides; otherwise one group, one node.
    if (G < 1 || N < 1 || E % G || G % N || W % N || P % N) G = N = 1;
    const int gsize = E / G, gpn = G / N, epn = E / N, ppn = P / N, rpn = W / N;

    int *mlog2log = ep_xmalloc((size_t)E * sizeof(int));
    {
        double *gw = ep_xcalloc((size_t)G, sizeof(double));
        for (int e = 0; e < E; e++)
            gw[e / gsize] += load[e];
        int *gpack = ep_xmalloc((size_t)G * sizeof(int)),
            *grank = ep_xmalloc((size_t)G * sizeof(int));
        ep_eplb_balanced_packing(gw, G, N, gpack, grank);
        // Node-major order: node n's experts are mlog [n * epn, (n + 1) * epn).
        for (int e = 0; e < E; e++) {
            int g = e / gsize;
            mlog2log[(gpack[g] * gpn + grank[g]) * gsize + e % gsize] = e;
        }
        free(gw);
        free(gpack);
        free(grank);
    }

    double *w = ep_xmalloc((size_t)epn * sizeof(double));
    double *pw = ep_xmalloc((size_t)ppn * sizeof(double));
    int *slot_of = ep_xmalloc((size_t)ppn * sizeof(int)),
        *rep = ep_xmalloc((size_t)ppn * sizeof(int));
    int *cnt = ep_xmalloc((size_t)epn * sizeof(int));
    int *pack = ep_xmalloc((size_t)ppn * sizeof(int)), *rip = ep_xmalloc((size_t)ppn * sizeof(int));
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < epn; i++)
            w[i] = load[mlog2log[n * epn + i]];
        replicate(w, epn, ppn, slot_of, rep, cnt);
        for (int s = 0; s < ppn; s++)
            pw[s] = w[slot_of[s]] / cnt[slot_of[s]];
        ep_eplb_balanced_packing(pw, ppn, rpn, pack, rip);
        for (int s = 0; s < ppn; s++) {
            int at = n * ppn + pack_start(ppn, rpn, pack[s]) + rip[s];
            int e = mlog2log[n * epn + slot_of[s]];
            if (phy_expert) phy_expert[at] = e;
            if (phy_rank) phy_rank[at] = n * rpn + pack[s];
            if (phy_replica) phy_replica[at] = rep[s];
        }
        if (logcnt)
            for (int i = 0; i < epn; i++)
                logcnt[mlog2log[n * epn + i]] = cnt[i];
    }
    free(w);
    free(pw);
    free(slot_of);
    free(rep);
    free(cnt);
    free(pack);
    free(rip);
    free(mlog2log);
    return EP_OK;
}

ep_status ep_placement_init_eplb(ep_placement *p, const double *load, int n_experts,
                                 int n_redundant, int n_groups, int n_nodes, int world_size)
{
    memset(p, 0, sizeof *p);
    if (n_experts < 1 || n_redundant < 0)
        return ep_errorf(EP_ERR_ARG,
                         "eplb: n_experts %d, redundant_experts %d (expected >= 1, >= 0)",
                         n_experts, n_redundant);
    int P = n_experts + n_redundant;
    int *pe = ep_xmalloc((size_t)P * sizeof(int)), *pr = ep_xmalloc((size_t)P * sizeof(int));
    ep_status st = ep_eplb_rebalance(load, n_experts, n_redundant, n_groups, n_nodes, world_size,
                                     pe, pr, NULL, NULL);
    if (!st) st = ep_placement_from_slots(p, EP_PLACE_EPLB, n_experts, world_size, P, pe, pr);
    free(pe);
    free(pr);
    return st;
}

double ep_placement_predict_imbalance(const ep_placement *p, const double *load)
{
    double *rl = ep_xcalloc((size_t)p->world_size, sizeof(double));
    double sum = 0, mx = 0;
    for (int s = 0; s < p->n_phy; s++) {
        int e = p->phy_expert[s];
        rl[p->phy_rank[s]] += load[e] / ep_placement_n_replicas(p, e);
    }
    for (int r = 0; r < p->world_size; r++) {
        sum += rl[r];
        if (rl[r] > mx) mx = rl[r];
    }
    free(rl);
    return sum > 0 ? mx * p->world_size / sum : 1.0;
}
