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
