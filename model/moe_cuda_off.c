// The MoE layer's cuda backend in a CPU-only build (EP_CUDA=OFF): asking for
// it is EP_ERR_UNSUPPORTED naming the build option; nothing here touches
// CUDA. The real table is in moe_cuda.c.
#include "model/model.h"
#include "model/moe_backend.h"
#include "model/moe_impl.h"

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

ep_status ep_moe_forward_dev(ep_moe *m, const ep_policy *p, int layer, const float *x_dev, int T,
                             float *y_dev, ep_comm_stats *st, ep_moe_times *tm)
{
    return ep_errorf(EP_ERR_UNSUPPORTED,
                     "moe forward_dev: expected --backend cuda in a build with EP_CUDA=ON, found "
                     "--backend %s in a build without CUDA",
                     ep_moe_backend_name(m->opts.backend));
}

ep_status ep_moe_device_bytes(const ep_moe *m, ep_moe_dev_mem *out)
{
    memset(out, 0, sizeof *out);
    return ep_errorf(EP_ERR_UNSUPPORTED,
                     "moe device bytes: expected --backend cuda in a build with EP_CUDA=ON, found "
                     "--backend %s in a build without CUDA",
                     ep_moe_backend_name(m->opts.backend));
}

// Backend cuda cannot open here (cuda_off_open says why); nothing to check.
ep_status ep_model_dev_check(const ep_model_cfg *cfg, ep_cluster *cl, const ep_model_opts *o)
{
    return EP_OK;
}
