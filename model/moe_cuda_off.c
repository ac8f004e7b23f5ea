// The MoE layer's CUDA side in a CPU-only build (EP_CUDA=OFF): asking for
// the CUDA backend is EP_ERR_UNSUPPORTED naming the build option; nothing
// here touches CUDA. The real definitions are in moe_cuda.c.
#include "model/moe_cuda.h"

bool ep_moe_cuda_built(void)
{
    return false;
}

ep_status ep_moe_cuda_init(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                           const ep_placement *p, int cap_rec, int cap_pairs, ep_moe_cuda **out)
{
    *out = NULL;
    return ep_errorf(EP_ERR_UNSUPPORTED,
                     "moe: backend cuda: this epserve was built without the CUDA backend "
                     "(EP_CUDA=OFF); expected a build configured with -DEP_CUDA=ON (nvcc, "
                     "cuBLAS and NCCL found), or use backend cpu");
}

// Unreachable: no ep_moe_cuda exists in this build.
void ep_moe_cuda_free(ep_moe_cuda *c)
{
    EP_ASSERT(c == NULL);
}

ep_transport *ep_moe_cuda_transport(ep_moe_cuda *c)
{
    EP_ASSERT(!"no CUDA backend in this build");
    return NULL;
}

size_t ep_moe_cuda_bytes(const ep_moe_cuda *c)
{
    EP_ASSERT(!"no CUDA backend in this build");
    return 0;
}

ep_status ep_moe_cuda_experts(ep_moe_cuda *c, int layer, const ep_comm_work *w)
{
    EP_ASSERT(!"no CUDA backend in this build");
    return EP_ERR_UNSUPPORTED;
}

ep_status ep_moe_cuda_shared(ep_moe_cuda *c, int layer, const float *x, int T, float *y)
{
    EP_ASSERT(!"no CUDA backend in this build");
    return EP_ERR_UNSUPPORTED;
}
