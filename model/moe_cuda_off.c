// The MoE layer's cuda backend in a CPU-only build (EP_CUDA=OFF): asking for
// it is EP_ERR_UNSUPPORTED naming the build option; nothing here touches
// CUDA. The real table is in moe_cuda.c.
#include "model/moe_backend.h"

#include <string.h>

static ep_status cuda_off_open(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                               const ep_placement *p, const ep_moe_opts *o, int cap_tokens,
                               ep_moe_parts *out)
{
    memset(out, 0, sizeof *out);
    return ep_errorf(EP_ERR_UNSUPPORTED,
                     "moe: backend cuda: this epserve was built without the CUDA backend "
                     "(EP_CUDA=OFF); expected a build configured with -DEP_CUDA=ON (nvcc, "
                     "cuBLAS and NCCL found), or use backend cpu");
}

// Nothing was opened (open never succeeds here).
static void cuda_off_close(ep_moe_parts *parts)
{
    EP_ASSERT(!parts->experts && !parts->tp && !parts->dev);
}

const ep_moe_backend_i ep_moe_backend_cuda_table = {
    .name = "cuda",
    .built = false,
    .open = cuda_off_open,
    .close = cuda_off_close,
};
