// Static expert placement: contiguous blocks or round-robin, for any number
// of experts and ranks (ranks beyond n_experts simply hold none). Replicas and
// load-driven re-placement (EPLB) are the scheduler's, not this file's.
#include "cluster/placement.h"

#include <stdlib.h>
#include <string.h>

ep_status ep_placement_init(ep_placement *p, ep_place_kind kind, int n_experts, int world_size)
{
    memset(p, 0, sizeof *p);
    if (n_experts < 1)
        return ep_errorf(EP_ERR_ARG, "placement: n_experts: expected >= 1, found %d", n_experts);
    if (world_size < 1)
        return ep_errorf(EP_ERR_ARG, "placement: world_size: expected >= 1, found %d", world_size);
    if (kind != EP_PLACE_CONTIGUOUS && kind != EP_PLACE_ROUND_ROBIN)
        return ep_errorf(
            EP_ERR_ARG, "placement: kind: expected contiguous or round_robin, found %d", (int)kind);

    p->n_experts = n_experts;
    p->world_size = world_size;
    p->kind = kind;
    p->rank_of = ep_xmalloc((size_t)n_experts * sizeof(int));
    p->local_slot = ep_xmalloc((size_t)n_experts * sizeof(int));
    p->local_off = ep_xcalloc((size_t)world_size + 1, sizeof(int));
    p->local_expert = ep_xmalloc((size_t)n_experts * sizeof(int));

    if (kind == EP_PLACE_CONTIGUOUS) {
        // Rank r holds [floor(r E / W), floor((r+1) E / W)): block sizes differ
        // by at most one and no divisibility is needed. int64 keeps r * E exact.
        for (int r = 0; r <= world_size; r++)
            p->local_off[r] = (int)((int64_t)r * n_experts / world_size);
        for (int r = 0; r < world_size; r++) {
            for (int e = p->local_off[r]; e < p->local_off[r + 1]; e++) {
                p->rank_of[e] = r;
                p->local_slot[e] = e - p->local_off[r];
                p->local_expert[e] = e;
            }
        }
    } else {
        // Expert e on rank e % W at slot e / W; rank r lists r, r + W, ...
        for (int r = 0; r < world_size; r++) {
            int n_r = r < n_experts ? (n_experts - r + world_size - 1) / world_size : 0;
            p->local_off[r + 1] = p->local_off[r] + n_r;
        }
        for (int e = 0; e < n_experts; e++) {
            int r = e % world_size, slot = e / world_size;
            p->rank_of[e] = r;
            p->local_slot[e] = slot;
            p->local_expert[p->local_off[r] + slot] = e;
        }
    }
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
    memset(p, 0, sizeof *p);
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
    return ep_errorf(EP_ERR_CONFIG, "placement: expected 'contiguous' or 'round_robin', found '%s'",
                     s ? s : "(null)");
}

const char *ep_place_kind_name(ep_place_kind k)
{
    switch (k) {
    case EP_PLACE_CONTIGUOUS:
        return "contiguous";
    case EP_PLACE_ROUND_ROBIN:
        return "round_robin";
    }
    return "unknown";
}
