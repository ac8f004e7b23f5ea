// Expert placement: contiguous blocks or round-robin for any number of
// experts and ranks (ranks beyond n_experts simply hold none), placements
// built from physical slots (replicas), and the per-pair replica choice.
// The EPLB packing itself is in eplb.c; observed loads come from the caller.
#include "cluster/placement.h"

#include <stdlib.h>
#include <string.h>

static ep_status check_dims(int n_experts, int world_size)
{
    if (n_experts < 1)
        return ep_errorf(EP_ERR_ARG, "placement: n_experts: expected >= 1, found %d", n_experts);
    if (world_size < 1)
        return ep_errorf(EP_ERR_ARG, "placement: world_size: expected >= 1, found %d", world_size);
    return EP_OK;
}

ep_status ep_placement_from_slots(ep_placement *p, ep_place_kind kind, int n_experts,
                                  int world_size, int n_phy, const int *phy_expert,
                                  const int *phy_rank)
{
    memset(p, 0, sizeof *p);
    ep_status st = check_dims(n_experts, world_size);
    if (st) return st;
    if (n_phy < n_experts)
        return ep_errorf(EP_ERR_ARG, "placement: %d physical slots for %d experts (expected >= %d)",
                         n_phy, n_experts, n_experts);
    int *cnt = ep_xcalloc((size_t)n_experts, sizeof(int));
    for (int s = 0; s < n_phy; s++) {
        if (phy_expert[s] < 0 || phy_expert[s] >= n_experts || phy_rank[s] < 0 ||
            phy_rank[s] >= world_size) {
            free(cnt);
            return ep_errorf(EP_ERR_ARG,
                             "placement: slot %d holds expert %d on rank %d (expected an expert in "
                             "[0, %d) on a rank in [0, %d))",
                             s, phy_expert[s], phy_rank[s], n_experts, world_size);
        }
        cnt[phy_expert[s]]++;
    }
    for (int e = 0; e < n_experts; e++)
        if (cnt[e] == 0) {
            free(cnt);
            return ep_errorf(EP_ERR_ARG, "placement: expert %d has no slot on any rank", e);
        }

    p->n_experts = n_experts;
    p->world_size = world_size;
    p->kind = kind;
    p->n_phy = n_phy;
    p->rank_of = ep_xmalloc((size_t)n_experts * sizeof(int));
    p->local_slot = ep_xmalloc((size_t)n_experts * sizeof(int));
    p->local_off = ep_xcalloc((size_t)world_size + 1, sizeof(int));
    p->local_expert = ep_xmalloc((size_t)n_phy * sizeof(int));
    p->phy_expert = ep_xmalloc((size_t)n_phy * sizeof(int));
    p->phy_rank = ep_xmalloc((size_t)n_phy * sizeof(int));
    p->replica_off = ep_xcalloc((size_t)n_experts + 1, sizeof(int));
    p->replica_phy = ep_xmalloc((size_t)n_phy * sizeof(int));

    // Slots ordered by rank (stable: the caller's order inside a rank stays).
    int *roff = ep_xcalloc((size_t)world_size + 1, sizeof(int));
    for (int s = 0; s < n_phy; s++)
        roff[phy_rank[s] + 1]++;
    for (int r = 0; r < world_size; r++)
        roff[r + 1] += roff[r];
    for (int s = 0; s < n_phy; s++) {
        int at = roff[phy_rank[s]]++;
        p->phy_expert[at] = phy_expert[s];
        p->phy_rank[at] = phy_rank[s];
    }
    free(roff);

    // log -> phy in slot order; the first slot of an expert is its home.
    for (int e = 0; e < n_experts; e++)
        p->replica_off[e + 1] = p->replica_off[e] + cnt[e];
    memset(cnt, 0, (size_t)n_experts * sizeof(int));
    for (int s = 0; s < n_phy; s++) {
        int e = p->phy_expert[s];
        p->replica_phy[p->replica_off[e] + cnt[e]++] = s;
    }
    for (int e = 0; e < n_experts; e++)
        p->rank_of[e] = p->phy_rank[p->replica_phy[p->replica_off[e]]];

    // Per-rank distinct experts: two slots of one expert on a rank are one copy.
    int *seen = cnt; // reused: last rank that listed expert e, + 1
    memset(seen, 0, (size_t)n_experts * sizeof(int));
    int n = 0;
    for (int r = 0, s = 0; r < world_size; r++) {
        p->local_off[r] = n;
        for (; s < n_phy && p->phy_rank[s] == r; s++) {
            int e = p->phy_expert[s];
            if (seen[e] == r + 1) continue;
            seen[e] = r + 1;
            if (p->rank_of[e] == r) p->local_slot[e] = n - p->local_off[r];
            p->local_expert[n++] = e;
        }
    }
    p->local_off[world_size] = n;
    free(cnt);
    return EP_OK;
}

ep_status ep_placement_init(ep_placement *p, ep_place_kind kind, int n_experts, int world_size)
{
    memset(p, 0, sizeof *p);
    ep_status st = check_dims(n_experts, world_size);
    if (st) return st;
    if (kind == EP_PLACE_EPLB) {
        double *uniform = ep_xmalloc((size_t)n_experts * sizeof(double));
        for (int e = 0; e < n_experts; e++)
            uniform[e] = 1.0;
        st = ep_placement_init_eplb(p, uniform, n_experts, 0, 1, 1, world_size);
        free(uniform);
        return st;
    }
    if (kind != EP_PLACE_CONTIGUOUS && kind != EP_PLACE_ROUND_ROBIN)
        return ep_errorf(EP_ERR_ARG,
                         "placement: kind: expected contiguous, round_robin or eplb, found %d",
                         (int)kind);

    int *pe = ep_xmalloc((size_t)n_experts * sizeof(int));
    int *pr = ep_xmalloc((size_t)n_experts * sizeof(int));
    if (kind == EP_PLACE_CONTIGUOUS) {
        // Rank r holds [floor(r E / W), floor((r+1) E / W)): block sizes differ
        // by at most one and no divisibility is needed. int64 keeps r * E exact.
        for (int r = 0; r < world_size; r++) {
            int lo = (int)((int64_t)r * n_experts / world_size);
            int hi = (int)((int64_t)(r + 1) * n_experts / world_size);
            for (int e = lo; e < hi; e++) {
                pe[e] = e;
                pr[e] = r;
            }
        }
    } else {
        // Expert e on rank e % W at slot e / W; rank r lists r, r + W, ...
        int s = 0;
        for (int r = 0; r < world_size; r++)
            for (int e = r; e < n_experts; e += world_size) {
                pe[s] = e;
                pr[s++] = r;
            }
    }
    st = ep_placement_from_slots(p, kind, n_experts, world_size, n_experts, pe, pr);
    free(pe);
    free(pr);
    if (st) return st;
    EP_ASSERT(p->local_off[world_size] == n_experts);
    return EP_OK;
}

void ep_placement_free(ep_placement *p)
{
    if (!p) return;
    free(p->rank_of);
    free(p->local_slot);
    free(p->local_off);
    free(p->local_expert);
    free(p->phy_expert);
    free(p->phy_rank);
    free(p->replica_off);
    free(p->replica_phy);
    memset(p, 0, sizeof *p);
}

static int *dup_ints(const int *a, size_t n)
{
    int *b = ep_xmalloc((n ? n : 1) * sizeof(int));
    memcpy(b, a, n * sizeof(int));
    return b;
}

void ep_placement_copy(ep_placement *dst, const ep_placement *src)
{
    *dst = *src;
    size_t E = (size_t)src->n_experts, W = (size_t)src->world_size, P = (size_t)src->n_phy;
    dst->rank_of = dup_ints(src->rank_of, E);
    dst->local_slot = dup_ints(src->local_slot, E);
    dst->local_off = dup_ints(src->local_off, W + 1);
    dst->local_expert = dup_ints(src->local_expert, (size_t)src->local_off[W]);
    dst->phy_expert = dup_ints(src->phy_expert, P);
    dst->phy_rank = dup_ints(src->phy_rank, P);
    dst->replica_off = dup_ints(src->replica_off, E + 1);
    dst->replica_phy = dup_ints(src->replica_phy, P);
}

bool ep_placement_holds(const ep_placement *p, int rank, int e)
{
    for (int q = p->replica_off[e]; q < p->replica_off[e + 1]; q++)
        if (p->phy_rank[p->replica_phy[q]] == rank) return true;
    return false;
}

ep_status ep_place_kind_parse(const char *s, ep_place_kind *out)
{
    if (s && !strcmp(s, "contiguous")) {
        *out = EP_PLACE_CONTIGUOUS;
        return EP_OK;
    }
    if (s && (!strcmp(s, "round_robin") || !strcmp(s, "round-robin"))) {
        *out = EP_PLACE_ROUND_ROBIN;
        return EP_OK;
    }
    if (s && !strcmp(s, "eplb")) {
        *out = EP_PLACE_EPLB;
        return EP_OK;
    }
    return ep_errorf(EP_ERR_CONFIG,
                     "placement: expected 'contiguous', 'round_robin' or 'eplb', found '%s'",
                     s ? s : "(null)");
}

const char *ep_place_kind_name(ep_place_kind k)
{
    switch (k) {
    case EP_PLACE_CONTIGUOUS:
        return "contiguous";
    case EP_PLACE_ROUND_ROBIN:
        return "round_robin";
    case EP_PLACE_EPLB:
        return "eplb";
    }
    return "unknown";
}

// ---- replica choice ----------------------------------------------------------

void ep_placement_choose(const ep_placement *p, const ep_routes *r, int my_rank, int64_t *rank_load,
                         int *visit, int *pair_rank)
{
    const int W = p->world_size;
    for (int w = 0; w < W; w++)
        visit[w] = -1;
    for (int i = 0; i < r->n_tokens; i++) {
        visit[my_rank] = i; // the own rank costs no bytes
        // Experts with one slot first: they fix the ranks the token visits anyway.
        for (int j = r->offsets[i]; j < r->offsets[i + 1]; j++) {
            int e = r->expert[j];
            if (ep_placement_n_replicas(p, e) != 1) continue;
            int d = p->rank_of[e];
            pair_rank[j] = d;
            visit[d] = i;
            rank_load[d]++;
        }
        for (int j = r->offsets[i]; j < r->offsets[i + 1]; j++) {
            int e = r->expert[j];
            if (ep_placement_n_replicas(p, e) == 1) continue;
            int best = -1, best_dist = 0;
            bool best_visited = false;
            for (int q = p->replica_off[e]; q < p->replica_off[e + 1]; q++) {
                int d = p->phy_rank[p->replica_phy[q]];
                bool v = visit[d] == i;
                int dist = (d - my_rank + W) % W;
                bool better;
                if (best < 0)
                    better = true;
                else if (v != best_visited)
                    better = v;
                else if (rank_load[d] != rank_load[best])
                    better = rank_load[d] < rank_load[best];
                else
                    better = dist < best_dist;
                if (better) {
                    best = d;
                    best_dist = dist;
                    best_visited = v;
                }
            }
            pair_rank[j] = best;
            visit[best] = i;
            rank_load[best]++;
        }
    }
}

void ep_placement_rank_load(const ep_placement *p, const ep_routes *r, const int *pair_rank,
                            int64_t *load)
{
    int nnz = ep_routes_nnz(r);
    for (int j = 0; j < nnz; j++)
        load[pair_rank ? pair_rank[j] : p->rank_of[r->expert[j]]]++;
}
