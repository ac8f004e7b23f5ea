// The cuda table of the expert backend (experts/backend.h): this rank's
// shard and the shared experts in BF16 on its GPU (ep_experts_cuda), with
// host arrays in and out as the cpu table. It cannot move its experts
// between ranks yet (no device export or import): those methods are NULL,
// so re-placement is refused naming the backend. EP_CUDA=ON builds only.
#include "experts/cuda/experts_cuda.h"

static ep_status cuda_forward(void *ctx, int layer, int n_rec, const int *pair_off,
                              const int *pair_expert, const float *pair_weight, const float *x,
                              float *y)
{
    return ep_experts_cuda_forward(ctx, layer, n_rec, pair_off, pair_expert, pair_weight, x, y);
}

static ep_status cuda_shared(void *ctx, int layer, const float *x, int T, float *y)
{
    return ep_experts_cuda_shared_forward(ctx, layer, x, T, y);
}

static size_t cuda_bytes(const void *ctx)
{
    return ep_experts_cuda_bytes(ctx);
}

static void cuda_free(void *ctx)
{
    ep_experts_cuda_free(ctx);
}

static const ep_expert_backend_i cuda_table = {
    .name = "cuda",
    .forward = cuda_forward,
    .shared = cuda_shared,
    .bytes = cuda_bytes,
    .free = cuda_free,
};

ep_expert_backend *ep_expert_backend_cuda(ep_experts_cuda *e)
{
    return ep_expert_backend_new(&cuda_table, e);
}
