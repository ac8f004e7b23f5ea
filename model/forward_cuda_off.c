// The model backend cuda in a CPU-only build (EP_CUDA=OFF): asking for it
// is EP_ERR_UNSUPPORTED naming the build option; nothing here touches CUDA.
// The real table is in forward_cuda.c. (ep_model_init opens the MoE layers
// first, whose own stand-in, moe_cuda_off.c, refuses before this is reached.)
#include "model/backend.h"

#include <string.h>

static ep_status off_refuse(const char *what)
{
    return ep_errorf(EP_ERR_UNSUPPORTED,
                     "model: backend cuda (%s): this epserve was built without the CUDA backend "
                     "(EP_CUDA=OFF); expected a build configured with -DEP_CUDA=ON (nvcc, cuBLAS "
                     "and NCCL found), or use backend cpu",
                     what);
}

static ep_status off_open(ep_model *m)
{
    (void)m;
    return off_refuse("open");
}

static void off_close(ep_model *m)
{
    EP_ASSERT(!m->dev);
}

static ep_status off_begin(ep_model *m, const ep_batch *b, int T)
{
    return off_refuse("begin");
}

static ep_status off_attention(ep_model *m, int layer, int T)
{
    return off_refuse("attention");
}

static ep_status off_ffn(ep_model *m, const ep_policy *p, int layer, int T, ep_comm_stats *ls)
{
    return off_refuse("ffn");
}

static ep_status off_final(ep_model *m, const ep_batch *b, int T, float *logits, int *rows)
{
    *rows = 0;
    return off_refuse("final");
}

static ep_status off_sample(ep_model *m, int rows, ep_sampler *const *samplers,
                            const float *host_logits, int *ids)
{
    return off_refuse("sample");
}

static ep_status off_dev_mem(const ep_model *m, ep_model_dev_mem *out)
{
    memset(out, 0, sizeof *out);
    return off_refuse("device memory");
}

const ep_model_backend_i ep_model_backend_cuda_table = {
    .name = "cuda",
    .built = false,
    .dtype = EP_DTYPE_BF16,
    .host_kv_rows = false,
    .open = off_open,
    .close = off_close,
    .begin = off_begin,
    .attention = off_attention,
    .ffn = off_ffn,
    .final = off_final,
    .sample = off_sample,
    .dev_mem = off_dev_mem,
};
