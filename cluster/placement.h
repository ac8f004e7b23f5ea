// Expert placement: which rank holds each routed expert and at which local
// slot. Works for any n_experts and world size (no divisibility needed):
// contiguous gives rank r the experts [floor(r*E/W), floor((r+1)*E/W)),
// round-robin gives expert e to rank e % W. Replicas (EPLB) come with the
// scheduler; until then every expert has exactly one home.
#ifndef EP_PLACEMENT_H
#define EP_PLACEMENT_H

#include "common/ep.h"

typedef enum { EP_PLACE_CONTIGUOUS, EP_PLACE_ROUND_ROBIN } ep_place_kind;

typedef struct {
    int n_experts, world_size;
    ep_place_kind kind;
    int *rank_of;      // [n_experts] home rank of expert e
    int *local_slot;   // [n_experts] index of e among its rank's experts
    int *local_off;    // [world_size + 1] CSR into local_expert
    int *local_expert; // [n_experts] experts of rank r: local_expert[local_off[r] .. local_off[r+1])
} ep_placement;

ep_status ep_placement_init(ep_placement *p, ep_place_kind kind, int n_experts, int world_size);
void ep_placement_free(ep_placement *p);
ep_status ep_place_kind_parse(const char *s, ep_place_kind *out); // "contiguous" | "round_robin"
const char *ep_place_kind_name(ep_place_kind k);
static inline int ep_placement_n_local(const ep_placement *p, int rank)
{
    return p->local_off[rank + 1] - p->local_off[rank];
}

#endif
