// The ep_moe struct body, shared by model/moe.c (set-up and forward),
// model/replace.c (EPLB placements, re-placement and weight migration) and
// model/moe_reference.c (the reference path). Not part of the public API.
#ifndef EP_MOE_IMPL_H
#define EP_MOE_IMPL_H

#include "model/moe.h"
#include "model/moe_backend.h"

struct ep_moe {
    const ep_model_cfg *cfg;
    ep_cluster *cl;
    ep_moe_opts opts;
    ep_placement place;        // union over layers: what this rank loads
    ep_placement *layer_place; // [n_layers] per-layer EPLB placements, or NULL (all use place)
    int *pair_rank;            // [cap_tokens * max_k] replica choice of the last forward
    int pair_cap;
    int64_t *rank_load;          // [world_size] pairs sent per rank in this call
    int *visit;                  // [world_size] scratch of ep_placement_choose
    ep_weights *w;               // borrowed: read at init only (re-placement moves weights)
    double *window_load;         // [n_layers * n_experts] this rank's pairs since the window began
    int64_t window_steps;        // forwards of the first MoE layer since the window began
    ep_moe_move_stats last_move; // what the last ep_moe_replace that moved sent and received
    const ep_moe_backend_i *backend; // opts.backend's table
    ep_moe_parts be;                 // its experts (this rank's shard + shared) and transport
    // One ep_comm per micro-batch (an ep_comm holds the buffers of one
    // exchange in flight); comm[1] only with opts.micro_batches == 2.
    ep_comm *comm[2];
    int *mb_off[2]; // [cap_tokens + 1] rebased offsets of each micro-batch's routes
    ep_router *router;
    ep_experts *all_experts; // every expert on the host (reference), or NULL
    float **gate_w;          // [n_layers] -> [n_experts, hidden] for MoE layers, NULL otherwise
    ep_routes routes;
    ep_routes ref_routes;
    int64_t ref_pairs, ref_token_layers; // kept pairs / tokens routed by ep_moe_reference
    ep_route_ctx ref_ctx; // the reference's routing context when a caller set one (place != NULL)
    ep_route_sends ref_sends; // counted while ref_ctx has a placement and a rank
    const int
        *token_domain; // borrowed [T] Pick domain per token (ep_moe_set_token_domain), or NULL
};

// EP_ERR_ARG unless layer is a MoE layer and 0 <= T <= cap_tokens.
ep_status ep_moe_check_layer(const ep_moe *m, int layer, int T);
// ep_moe_check_layer, and p keeps no more than max_k experts.
ep_status ep_moe_check_call(const ep_moe *m, const ep_policy *p, int layer, int T);

// Where each pair of r goes at MoE layer `layer` (the replica choice into
// m->pair_rank when the layer's placement has replicas and home_only is off:
// returned; otherwise NULL, every pair to its home rank, m->pair_rank still
// filled), and r's pairs added to the re-placement window. Every forward
// calls it once per layer before dispatch.
const int *ep_moe_choose_ranks(ep_moe *m, int layer, const ep_routes *r);

// The device path's exchange buffers (model/moe_dev.c) for a balanced step of
// cap_tokens tokens: need[i] bytes of each (model/moe_dev_mem.c, pure C).
#define EP_MOE_DEV_N_BUFS 9
void ep_moe_dev_reserve(const ep_model_cfg *cfg, const ep_moe_opts *o, int world,
                        size_t need[EP_MOE_DEV_N_BUFS]);

// One EPLB placement per MoE layer of cfg from load ([n_layers * n_experts],
// NULL: uniform), with o's redundant_experts and eplb_groups over cl's nodes
// and ranks, into *layer_place ([n_layers], dense layers zeroed), and their
// union (every slot of every layer) into *all: the placement whose experts
// this rank loads. On failure nothing is left allocated. (replace.c)
ep_status ep_moe_place_eplb(const ep_model_cfg *cfg, const ep_cluster *cl, const ep_moe_opts *o,
                            const double *load, ep_placement **layer_place, ep_placement *all);
// Frees what ep_moe_place_eplb made (layer_place NULL ok).
void ep_moe_place_free(const ep_model_cfg *cfg, ep_placement *layer_place, ep_placement *all);

#endif
