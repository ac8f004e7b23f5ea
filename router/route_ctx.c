// The placement as a routing call sees it (ep_route_ctx, router.h): which
// ranks and nodes hold a copy of an expert, and the rank a pair's load is
// counted on. Read by comm-aware Ban and laser; nothing here is stored
// between calls.
#include "router/policy.h"

#include <string.h>

static inline int slot_rank(const ep_placement *p, int q)
{
    return p->phy_rank[p->replica_phy[q]];
}

int ep_route_load_rank(const ep_route_ctx *c, const int64_t *load, int e)
{
    const ep_placement *p = c->place;
    EP_ASSERT(p && e >= 0 && e < p->n_experts);
    if (!load || c->home_only || p->replica_off[e + 1] - p->replica_off[e] == 1)
        return p->rank_of[e];
    int best = slot_rank(p, p->replica_off[e]);
    for (int q = p->replica_off[e] + 1; q < p->replica_off[e + 1]; q++)
        if (load[slot_rank(p, q)] < load[best]) best = slot_rank(p, q);
    return best;
}

void ep_route_load_add(const ep_route_ctx *c, int64_t *load, const int *kept, int K)
{
    for (int j = 0; j < K; j++)
        load[ep_route_load_rank(c, load, kept[j])]++;
}

bool ep_route_on_rank(const ep_route_ctx *c, int e, int r)
{
    const ep_placement *p = c->place;
    if (c->home_only) return p->rank_of[e] == r;
    for (int q = p->replica_off[e]; q < p->replica_off[e + 1]; q++)
        if (slot_rank(p, q) == r) return true;
    return false;
}

bool ep_route_on_node(const ep_route_ctx *c, int e, int node)
{
    const ep_placement *p = c->place;
    if (c->home_only) return ep_route_node(c, p->rank_of[e]) == node;
    for (int q = p->replica_off[e]; q < p->replica_off[e + 1]; q++)
        if (ep_route_node(c, slot_rank(p, q)) == node) return true;
    return false;
}

void ep_route_sends_add(const int *ids, int k, const int *rank_of, const int *pair_rank, int me,
                        const int *node_of, ep_route_sends *s, int i)
{
#define RANK_(j) (pair_rank ? pair_rank[j] : rank_of[ids[j]])
#define NODE_(r) (node_of ? node_of[r] : 0)
    const int my_node = NODE_(me);
    for (int a = 0; a < k; a++) {
        int r = RANK_(a), nd = NODE_(r);
        bool new_r = r != me, new_n = nd != my_node;
        for (int b = 0; b < a && (new_r || new_n); b++) { // K is small: no scratch
            new_r = new_r && RANK_(b) != r;
            new_n = new_n && NODE_(RANK_(b)) != nd;
        }
        s->ranks[i] += new_r;
        s->inter_ranks[i] += new_r && nd != my_node;
        s->nodes[i] += new_n;
    }
#undef RANK_
#undef NODE_
}
