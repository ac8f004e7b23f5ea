// Expert placement: which rank holds each routed expert and at which local
// slot. Works for any n_experts and world size (no divisibility needed):
// contiguous gives rank r the experts [floor(r*E/W), floor((r+1)*E/W)),
// round-robin gives expert e to rank e % W, EPLB (cluster/eplb.c) packs
// experts by load and may give hot experts replicas on several ranks.
#ifndef EP_PLACEMENT_H
#define EP_PLACEMENT_H

#include "common/ep.h"
#include "common/routes.h"

typedef enum { EP_PLACE_CONTIGUOUS, EP_PLACE_ROUND_ROBIN, EP_PLACE_EPLB } ep_place_kind;

// Logical experts are the model's experts; physical slots are the copies
// ranks hold (n_phy = n_experts + redundant). Without replicas n_phy ==
// n_experts and every expert has one slot on its home rank.
typedef struct {
    int n_experts, world_size;
    ep_place_kind kind;
    int *rank_of;      // [n_experts] home rank of expert e (the rank of its first slot)
    int *local_slot;   // [n_experts] index of e among its home rank's experts
    int *local_off;    // [world_size + 1] CSR into local_expert
    int *local_expert; // [local_off[W]] distinct experts of rank r: local_expert[local_off[r] ..
                       // local_off[r+1])
    int n_phy;         // physical slots (>= n_experts)
    int *phy_expert;   // [n_phy] logical expert of each slot (phy -> log), slots ordered by rank
    int *phy_rank;     // [n_phy] rank holding each slot
    int *replica_off;  // [n_experts + 1] CSR: slots of expert e are replica_phy[replica_off[e] ..
                       // replica_off[e+1])
    int *replica_phy;  // [n_phy] (log -> phy)
} ep_placement;

// Contiguous or round-robin; EPLB here means EPLB on uniform load without
// redundant experts (ep_placement_init_eplb takes loads).
ep_status ep_placement_init(ep_placement *p, ep_place_kind kind, int n_experts, int world_size);
void ep_placement_free(ep_placement *p);
ep_status ep_place_kind_parse(const char *s,
                              ep_place_kind *out); // "contiguous" | "round_robin" | "eplb"
const char *ep_place_kind_name(ep_place_kind k);
// Builds a placement from physical slots: slot s holds expert phy_expert[s]
// on rank phy_rank[s]. Every expert needs at least one slot; several slots of
// one expert on one rank count as one local expert (one copy of the weights)
// but stay separate slots. kind is recorded as given.
ep_status ep_placement_from_slots(ep_placement *p, ep_place_kind kind, int n_experts,
                                  int world_size, int n_phy, const int *phy_expert,
                                  const int *phy_rank);
// Deep copy (dst is overwritten; free it first if it held one).
void ep_placement_copy(ep_placement *dst, const ep_placement *src);
static inline int ep_placement_n_replicas(const ep_placement *p, int e)
{
    return p->replica_off[e + 1] - p->replica_off[e];
}
// True when some rank holds expert e (any slot).
bool ep_placement_holds(const ep_placement *p, int rank, int e);

// ---- EPLB (cluster/eplb.c; DeepSeek's open algorithm, our code) -----------
// One layer: load [n_experts] (tokens or pairs per expert, >= 0). Makes
// n_experts + n_redundant slots. Hierarchical when n_groups divides the
// experts, n_nodes divides n_groups, the ranks and the slots: pack expert
// groups onto nodes (balanced packing), replicate inside each node the expert
// with the largest load / replica count until the node's slots are used, pack
// the replicas onto the node's ranks by load / count. Otherwise the same with
// one group and one node. Balanced packing: items by load descending, each into
// the lightest pack that still has room; when items do not divide evenly,
// pack capacities differ by at most one (the first packs take the extra).
// Outputs (each may be NULL): phy_expert/phy_rank [n_phy], replica count
// logcnt [n_experts], replica index of each slot phy_replica [n_phy].
ep_status ep_eplb_rebalance(const double *load, int n_experts, int n_redundant, int n_groups,
                            int n_nodes, int world_size, int *phy_expert, int *phy_rank,
                            int *logcnt, int *phy_replica);
// ep_eplb_rebalance then ep_placement_from_slots (kind EP_PLACE_EPLB).
ep_status ep_placement_init_eplb(ep_placement *p, const double *load, int n_experts,
                                 int n_redundant, int n_groups, int n_nodes, int world_size);
// Predicted max/mean rank load of one layer if every expert's load
// [n_experts] splits evenly over its slots (what replica choice aims at).
double ep_placement_predict_imbalance(const ep_placement *p, const double *load);
// The balanced packing step alone (exposed for tests): n items into m packs;
// pack_of [n], rank_in_pack [n] (order of arrival in its pack).
void ep_eplb_balanced_packing(const double *w, int n, int m, int *pack_of, int *rank_in_pack);

// ---- replica choice per (token, expert) pair --------------------------------
// For the tokens of r routed on my_rank: experts with one slot go to their
// rank; for a replicated expert take a rank the token already visits (its own
// rank counts: no bytes), else the rank with the least pairs so far in this
// call (rank_load [W], in/out, caller zeroes it per step; ties: the first
// rank after my_rank, so ranks do not all pick the same one). pair_rank [nnz]
// receives the choice; visit [W] is scratch. Allocates nothing.
void ep_placement_choose(const ep_placement *p, const ep_routes *r, int my_rank, int64_t *rank_load,
                         int *visit, int *pair_rank);
// Pairs received per rank: load [W] += pairs of r going to each rank
// (pair_rank NULL: home ranks).
void ep_placement_rank_load(const ep_placement *p, const ep_routes *r, const int *pair_rank,
                            int64_t *load);

// ---- expert loads in a file -----------------------------------------------
// The format of SGLang's expert-distribution dumps (its EPLB input):
// {"logical_count": [[...n_experts numbers...] x n_layers]}, tokens routed
// to each expert of each layer, every layer of the model a row. is_moe
// [n_layers] (NULL: every layer) marks the MoE layers: a dense layer's row
// must be all zeros, since nothing could use it. Other keys are refused.
// *out: [n_layers * n_experts] (the caller frees it). Errors: EP_ERR_IO (the
// file), EP_ERR_FORMAT (JSON syntax), EP_ERR_CONFIG (a key, row or value:
// named, with what was expected and found).
ep_status ep_expert_load_read(const char *path, int n_layers, int n_experts, const bool *is_moe,
                              double **out);
// Writes load [n_layers * n_experts] in that format, atomically.
ep_status ep_expert_load_write(const char *path, int n_layers, int n_experts, const int64_t *load);

static inline int ep_placement_n_local(const ep_placement *p, int rank)
{
    return p->local_off[rank + 1] - p->local_off[rank];
}

#endif
