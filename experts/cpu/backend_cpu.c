// The cpu table of the expert backend (experts/backend.h): the routed and
// shared experts of this rank's shard in host memory (ep_experts, fp32 or
// BF16 storage), every method the shard's own function. It can move its
// experts between ranks (re-placement).
#include "experts/backend.h"

static ep_status cpu_forward(void *ctx, int layer, int n_rec, const int *pair_off,
                             const int *pair_expert, const float *pair_weight, const float *x,
                             float *y)
{
    return ep_experts_forward(ctx, layer, n_rec, pair_off, pair_expert, pair_weight, x, y);
}

static ep_status cpu_shared(void *ctx, int layer, const float *x, int T, float *y)
{
    return ep_experts_shared_forward(ctx, layer, x, T, y);
}

static size_t cpu_bytes(const void *ctx)
{
    return ep_experts_bytes(ctx);
}

static ep_status cpu_reshard(const void *ctx, const ep_placement *p, int rank, void **out)
{
    ep_experts *e = NULL;
    ep_status st = ep_experts_reshard(ctx, p, rank, &e);
    *out = e;
    return st;
}

static size_t cpu_expert_bytes(const void *ctx)
{
    return ep_experts_expert_bytes(ctx);
}

static ep_status cpu_export(const void *ctx, int layer, int expert, void *buf)
{
    return ep_experts_export(ctx, layer, expert, buf);
}

static ep_status cpu_import(void *ctx, int layer, int expert, const void *buf)
{
    return ep_experts_import(ctx, layer, expert, buf);
}

static bool cpu_pending(const void *ctx, int layer, int expert)
{
    return ep_experts_pending(ctx, layer, expert);
}

static void cpu_free(void *ctx)
{
    ep_experts_free(ctx);
}

static const ep_expert_backend_i cpu_table = {
    .name = "cpu",
    .forward = cpu_forward,
    .shared = cpu_shared,
    .bytes = cpu_bytes,
    .reshard = cpu_reshard,
    .expert_bytes = cpu_expert_bytes,
    .export_expert = cpu_export,
    .import_expert = cpu_import,
    .pending = cpu_pending,
    .free = cpu_free,
};

ep_expert_backend *ep_expert_backend_cpu(ep_experts *e)
{
    return ep_expert_backend_new(&cpu_table, e);
}
