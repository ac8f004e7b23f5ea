// The MoE layer's CUDA side (EP_CUDA=ON builds only): this rank's GPU, the
// NCCL communicator and transport, and the BF16 experts on the device,
// wired as tests/cuda/test_mpi_nccl does by hand. Routing, dispatch packing
// and the reference stay on the host (model/moe.c); see docs/cuda.md.
#include "model/moe_cuda.h"

#include <stdlib.h>

#include "cluster/gpu.h"
#include "comm/nccl/transport_nccl.h"
#include "experts/cuda/experts_cuda.h"

struct ep_moe_cuda {
    ep_gpu *gpu;
    ep_nccl *nccl;            // communicator over the cluster's ranks (borrows gpu)
    ep_transport *tp;         // NCCL transport (borrows nccl)
    ep_experts_cuda *experts; // this rank's shard + shared experts, BF16 on gpu
};

bool ep_moe_cuda_built(void)
{
    return true;
}

// Every rank learns whether every rank got through a step that can fail on
// some ranks only; a rank that did not keeps its own message, the others get
// one naming the first rank that failed. Collective.
static ep_status agree(ep_cluster *cl, ep_status mine, const char *step)
{
    int64_t v = mine != EP_OK ? cl->rank : cl->world_size; // first failing rank, or W
    ep_status st = ep_cluster_allreduce_i64(cl, &v, 1, EP_REDUCE_MIN);
    if (st != EP_OK) return ep_error_prefix(st, "moe: backend cuda: agreeing on %s", step);
    if (mine != EP_OK) return ep_error_prefix(mine, "moe: backend cuda: %s", step);
    if (v < cl->world_size)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "moe: backend cuda: %s failed on rank %lld (see its message); expected "
                         "every rank to have a usable CUDA device",
                         step, (long long)v);
    return EP_OK;
}

ep_status ep_moe_cuda_init(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                           const ep_placement *p, int cap_rec, int cap_pairs, ep_moe_cuda **out)
{
    *out = NULL;
    ep_moe_cuda *c = ep_xcalloc(1, sizeof *c);
    ep_status st;
    // Device choice, the transport and the expert upload are local (a rank
    // may lack a device or memory); ep_nccl_init is collective and returns
    // on every rank, so agreeing after it too costs one allreduce.
    if ((st = agree(cl, ep_gpu_init(cl, &c->gpu), "opening this rank's GPU"))) goto err;
    if ((st = agree(cl, ep_nccl_init(cl, c->gpu, &c->nccl), "the NCCL bootstrap"))) goto err;
    if ((st = agree(cl, ep_transport_nccl_init(cl, c->nccl, &c->tp), "the NCCL transport")))
        goto err;
    st = ep_experts_cuda_load(cfg, w, p, cl->rank, c->gpu, &c->experts);
    if (!st) st = ep_experts_cuda_reserve(c->experts, cap_rec, cap_pairs);
    if ((st = agree(cl, st, "loading the experts onto the GPU"))) goto err;
    *out = c;
    return EP_OK;
err:
    ep_moe_cuda_free(c);
    return st;
}

void ep_moe_cuda_free(ep_moe_cuda *c)
{
    if (!c) return;
    ep_experts_cuda_free(c->experts);
    ep_transport_free(c->tp);
    ep_nccl_free(c->nccl);
    ep_gpu_free(c->gpu);
    free(c);
}

ep_transport *ep_moe_cuda_transport(ep_moe_cuda *c)
{
    return c->tp;
}

size_t ep_moe_cuda_bytes(const ep_moe_cuda *c)
{
    return ep_experts_cuda_bytes(c->experts);
}

ep_status ep_moe_cuda_experts(ep_moe_cuda *c, int layer, const ep_comm_work *w)
{
    return ep_experts_cuda_forward(c->experts, layer, w->n_rec, w->pair_off, w->pair_expert,
                                   w->pair_weight, w->x, w->y);
}

ep_status ep_moe_cuda_shared(ep_moe_cuda *c, int layer, const float *x, int T, float *y)
{
    return ep_experts_cuda_shared_forward(c->experts, layer, x, T, y);
}
