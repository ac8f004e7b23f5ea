// The MoE layer's backends, private to model/: for each ep_moe_backend one
// static const table that opens on this rank what the layer runs on (its
// experts behind the expert-backend table, experts/backend.h, and the
// transport dispatch and combine use) and closes it again. model/moe.c
// calls only through it. cpu (moe_backend.c): ep_experts over the MPI
// transport; cuda: moe_cuda.c (GPU, NCCL transport, BF16 experts on the
// device) or, in a build without CUDA, moe_cuda_off.c, which refuses by name.
#ifndef EP_MOE_BACKEND_H
#define EP_MOE_BACKEND_H

#include "experts/backend.h"
#include "model/moe.h"

// What a backend opened for one ep_moe on this rank (all owned by it).
typedef struct {
    ep_expert_backend *experts; // this rank's routed + shared experts
    ep_transport *tp;           // what dispatch and combine move bytes over
    void *dev;                  // what both borrow (cuda: the GPU and NCCL), or NULL
} ep_moe_parts;

typedef struct {
    const char *name; // ep_moe_backend_name's answer
    bool built;       // in this build (a device may still be needed at run time)
    // Collective. Opens what placement p gives this rank, scratch sized for
    // cap_tokens tokens of o->max_k pairs. On failure *out holds nothing and
    // the message names the backend and the step that failed.
    ep_status (*open)(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w, const ep_placement *p,
                      const ep_moe_opts *o, int cap_tokens, ep_moe_parts *out);
    void (*close)(ep_moe_parts *parts); // frees and zeroes them; zeroed parts ok
} ep_moe_backend_i;

// The table of b; EP_ERR_ARG naming the value when b is not an ep_moe_backend.
ep_status ep_moe_backend_table(ep_moe_backend b, const ep_moe_backend_i **out);

extern const ep_moe_backend_i ep_moe_backend_cuda_table; // moe_cuda.c or moe_cuda_off.c

#endif
