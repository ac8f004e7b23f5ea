// The MoE layer's cuda backend (EP_CUDA=ON builds only): this rank's GPU,
// the NCCL communicator and transport, and the BF16 experts on the device
// behind the expert backend's cuda table, wired as tests/cuda/test_mpi_nccl
// does by hand. Routing, dispatch packing and the reference stay on the
// host (model/moe.c); see docs/cuda.md. moe_cuda_off.c stands in for it in
// CPU-only builds.
#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/cuda_util.h"
#include "comm/nccl/transport_nccl.h"
#include "model/model.h"
#include "model/moe_cuda_impl.h"

typedef ep_moe_cuda_dev cuda_dev;

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

static void cuda_close(ep_moe_parts *parts)
{
    cuda_dev *d = parts->dev;
    ep_expert_backend_free(parts->experts);
    ep_transport_free(parts->tp);
    if (d) {
        ep_moe_dev_free(d->dev);
        ep_transport_free(d->hdr);
        ep_nccl_free(d->nccl);
        ep_gpu_free(d->gpu);
        free(d);
    }
    memset(parts, 0, sizeof *parts);
}

// Device scratch for a balanced step (cap_tokens tokens' records arrive per
// rank on average); a skewed step grows it once.
static ep_status cuda_open(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                           const ep_placement *p, const ep_moe_opts *o, int cap_tokens,
                           ep_moe_parts *out)
{
    memset(out, 0, sizeof *out);
    cuda_dev *d = ep_xcalloc(1, sizeof *d);
    out->dev = d;
    ep_status st;
    // Device choice, the transport and the expert upload are local (a rank
    // may lack a device or memory); ep_nccl_init is collective and returns
    // on every rank, so agreeing after it too costs one allreduce.
    if ((st = agree(cl, ep_gpu_init(cl, &d->gpu), "opening this rank's GPU"))) goto err;
    if ((st = agree(cl, ep_nccl_init(cl, d->gpu, &d->nccl), "the NCCL bootstrap"))) goto err;
    if ((st = agree(cl, ep_transport_nccl_init(cl, d->nccl, &out->tp), "the NCCL transport")))
        goto err;
    // ep_moe_forward_dev sends its per-record headers over MPI (control data).
    if ((st = agree(cl, ep_transport_mpi_init(cl, &d->hdr), "the MPI header transport"))) goto err;
    ep_experts_cuda *x = NULL;
    st = ep_experts_cuda_load(cfg, w, p, cl->rank, d->gpu, &x);
    if (x) out->experts = ep_expert_backend_cuda(x);
    d->experts = x;
    if (!st) st = ep_experts_cuda_reserve(x, cap_tokens, cap_tokens * o->max_k);
    if ((st = agree(cl, st, "loading the experts onto the GPU"))) goto err;
    return EP_OK;
err:
    cuda_close(out);
    return st;
}

const ep_moe_backend_i ep_moe_backend_cuda_table = {
    .name = "cuda",
    .built = true,
    .open = cuda_open,
    .close = cuda_close,
};

ep_status ep_moe_device_bytes(const ep_moe *m, ep_moe_dev_mem *out)
{
    memset(out, 0, sizeof *out);
    if (m->opts.backend != EP_MOE_BACKEND_CUDA)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "moe device bytes: expected --backend cuda, found "
                         "--backend %s",
                         ep_moe_backend_name(m->opts.backend));
    const cuda_dev *d = m->be.dev;
    out->experts = ep_experts_cuda_bytes(d->experts);
    out->expert_scratch = ep_experts_cuda_scratch_bytes(d->experts);
    ep_moe_dev_bytes(d->dev, &out->router, &out->exchange);
    out->transport = ep_transport_nccl_staging_bytes(m->be.tp);
    out->total = out->experts + out->expert_scratch + out->router + out->exchange + out->transport;
    return EP_OK;
}

static double mib(uint64_t b)
{
    return (double)b / (1024.0 * 1024.0);
}

// This rank's part of ep_model_dev_check: opens the device only to ask its
// free memory (nothing is allocated), closes it again.
static ep_status fits_here(const ep_model_cfg *cfg, ep_cluster *cl, const ep_model_opts *o)
{
    ep_model_dev_mem a;
    ep_moe_dev_mem b;
    ep_model_dev_footprint(cfg, o, cl->world_size, &a, &b);
    ep_gpu *gpu = NULL;
    ep_status st = ep_gpu_init(cl, &gpu);
    if (st) return st;
    size_t free_b = 0, total_b = 0;
    st = EP_CUDA_ST(cudaMemGetInfo(&free_b, &total_b));
    ep_gpu_free(gpu);
    if (st) return st;
    const uint64_t need = a.total + b.total;
    if (need <= free_b) return EP_OK;
    return ep_errorf(
        EP_ERR_NOMEM,
        "rank %d: the GPU is too small for %s: needs %.1f MiB (weights bf16 %.1f, fp32 %.1f, KV "
        "cache "
        "%.1f, workspace %.1f, experts %.1f (%d per MoE layer), expert scratch %.1f, router "
        "%.1f, exchange %.1f, NCCL %.1f), %.1f MiB free of %.1f before anything is allocated; "
        "expected a larger device, more ranks (fewer experts each), or a smaller KV pool or "
        "step (serve: --max-model-len, --max-num-batched-tokens; `epserve plan --backend "
        "cuda` prices it)",
        cl->rank, cfg->name, mib(need), mib(a.weights_bf16), mib(a.weights_f32), mib(a.kv),
        mib(a.workspace), mib(b.experts), ep_model_dev_n_local(cfg, &o->moe, cl->world_size),
        mib(b.expert_scratch), mib(b.router), mib(b.exchange), mib(b.transport), mib(free_b),
        mib(total_b));
}

ep_status ep_model_dev_check(const ep_model_cfg *cfg, ep_cluster *cl, const ep_model_opts *o)
{
    if (o->moe.backend != EP_MOE_BACKEND_CUDA) return EP_OK;
    return agree(cl, fits_here(cfg, cl, o), "checking device memory at start-up");
}
