// The dispatch plan of one MoE layer on one rank: a pure function of that
// layer's routes, its placement with the rank chosen for each pair, this
// rank, the node map and the wire dtype. It holds the groups (one per
// (token, destination rank), each token sent once per rank however many of
// its experts live there; under EP_DISPATCH_HIER one per (token, node) for
// the other nodes, to the forwarding rank), the per-destination records, byte offsets and
// sizes of the packed send buffer, and the bytes split intra / inter node,
// actual and for the static top-k_base counterfactual. comm.c packs from it,
// the simulator and the trace-driven scheduler check price with it, the CUDA
// layout (comm/cuda/) must equal it. No communication, no allocation once
// grown to the largest step.
#ifndef EP_DISPATCH_PLAN_H
#define EP_DISPATCH_PLAN_H

#include "comm/comm.h"

typedef struct {
    // What it plans for (set by init).
    int world, rank, hidden;
    ep_dtype wire;
    int *node_of;          // [world] node of each rank (owned copy)
    ep_dispatch_mode mode; // FLAT unless set (ep_dispatch_plan_set_mode)
    // Stage-1 destination of a pair computed on rank d: d itself under flat
    // or when d is on this node; under hier the forwarding rank of d's node
    // for this rank (local index li of this rank: that node's rank number
    // li mod its size, ranks numbered ascending within a node).
    int *fwd_of; // [world]

    // The last build.
    int n_tokens, n_pairs;
    // Groups, tokens ascending, ranks in the order of their first pair in the row.
    int n_grp;
    int *grp_tok;   // [n_grp] token (index on this rank)
    int *grp_dest;  // [n_grp] stage-1 destination rank (this rank's own groups
                    // included): under hier a forwarding rank for another node
    int *grp_off;   // [n_grp + 1] into grp_pair
    int *grp_pair;  // [n_pairs] pair index into the routes, grouped
    int *grp_prank; // [n_pairs] the rank computing each grouped pair (== its
                    // group's rank except in hier groups to another node)
    // Per destination rank.
    int *dest_off;       // [world + 1] CSR into dest_grp: rank d's groups
    int *dest_grp;       // [n_grp] group ids by destination, token order within one
    int64_t *send_bytes; // [world] dispatch payload to each rank (0 for this rank)
    int64_t *send_off;   // [world] exclusive prefix of send_bytes (packed send buffer)
    int64_t *rec_off;    // [n_grp] byte offset of the group's record in the send
                         // buffer; -1 for this rank's own groups (never sent)
    int own_pairs;       // pairs of the groups that stay on this rank
    // Accounting of the build: every field of ep_comm_stats but those the
    // exchange fills (measured_bytes, recv_pairs, recv_tokens), which stay 0.
    ep_comm_stats stats;

    // Capacity (grown by build, never shrunk).
    size_t grp_cap, pair_cap;
    int row_cap;                         // room of the row scratch
    int *row_dest, *row_n;               // [row_cap] one row's groups (counterfactual)
    int *row_key, *row_pair, *row_prank; // [row_cap] one row's keys, pairs, ranks
    int *row_tmp;                        // [row_cap] pair ranks before grouping
} ep_dispatch_plan;

// node_of [world] is copied; NULL: every rank on one node. Errors
// (EP_ERR_ARG) name what is out of range.
ep_status ep_dispatch_plan_init(ep_dispatch_plan *pl, int world, int rank, const int *node_of,
                                int hidden, ep_dtype wire);
void ep_dispatch_plan_free(ep_dispatch_plan *pl); // zeroes; twice is a no-op
// Chooses flat (the default after init) or hier for the next builds; fills
// fwd_of. EP_ERR_ARG for a mode that is neither.
ep_status ep_dispatch_plan_set_mode(ep_dispatch_plan *pl, ep_dispatch_mode mode);
// Bytes of the stage-1 record of a group of n pairs to rank d (hier to
// another node: ep_comm_hier_record_bytes; else the plain record).
int64_t ep_dispatch_plan_rec_bytes(const ep_dispatch_plan *pl, int d, int n);
// Room for n_pairs pairs without growing during a build.
void ep_dispatch_plan_reserve(ep_dispatch_plan *pl, size_t n_pairs);

// Plans r's tokens: pair j goes to pair_rank[j] (replica choice; [nnz]) or,
// with pair_rank NULL, to p->rank_of of its expert (under hier through
// fwd_of of that rank). The counterfactual
// (r->base_expert rows) always goes to home ranks. p must be over pl->world
// ranks; experts and ranks out of range are broken invariants (EP_ASSERT):
// ep_routes_check and ep_placement_choose guarantee them.
void ep_dispatch_plan_build(ep_dispatch_plan *pl, const ep_routes *r, const ep_placement *p,
                            const int *pair_rank);

// Records of rank d in the last build (own groups for d == rank).
static inline int ep_dispatch_plan_n_rec(const ep_dispatch_plan *pl, int d)
{
    return pl->dest_off[d + 1] - pl->dest_off[d];
}

#endif
