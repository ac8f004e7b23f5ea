// The dispatch-layout object: the shape from comm's wire rule, host layouts,
// validation of routes and ranks (the kernels trust their input), device
// buffers sized once, and one upload / four launches / one download per
// call. The per-token and scan routines are in dispatch_kernels.cu.
#include "comm/cuda/dispatch_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/cuda_util.h"
#include "comm/comm.h"
#include "comm/cuda/dispatch_layout.h"

ep_status ep_dispatch_shape_init(ep_dispatch_shape *s, int world, int rank, int max_k, int hidden,
                                 ep_dtype wire)
{
    memset(s, 0, sizeof *s);
    if (world < 1 || rank < 0 || rank >= world || max_k < 1 || hidden < 0 ||
        !ep_dtype_is_float(wire))
        return ep_errorf(EP_ERR_ARG,
                         "dispatch layout: world %d, rank %d, max_k %d, hidden %d, wire %s: "
                         "expected world >= 1, 0 <= rank < world, max_k >= 1, hidden >= 0 and a "
                         "float wire dtype",
                         world, rank, max_k, hidden, ep_dtype_name(wire));
    s->world = world;
    s->rank = rank;
    s->max_k = max_k;
    s->fixed_bytes = ep_comm_dispatch_record_bytes(0, hidden, wire);
    s->pair_bytes = ep_comm_dispatch_record_bytes(1, hidden, wire) - s->fixed_bytes;
    return EP_OK;
}

void ep_dispatch_layout_init(ep_dispatch_layout *l, int cap_tokens, const ep_dispatch_shape *s)
{
    EP_ASSERT(cap_tokens >= 0 && s->world >= 1 && s->max_k >= 1);
    memset(l, 0, sizeof *l);
    const size_t cap = (size_t)(cap_tokens > 0 ? cap_tokens : 1), W = (size_t)s->world;
    l->cap_tokens = cap_tokens;
    l->max_k = s->max_k;
    l->world = s->world;
    l->n_dest = ep_xmalloc(cap * sizeof(int));
    l->dest = ep_xmalloc(cap * (size_t)s->max_k * sizeof(int));
    l->dest_pairs = ep_xmalloc(cap * (size_t)s->max_k * sizeof(int));
    l->rec_idx = ep_xmalloc(cap * W * sizeof(int));
    l->rec_off = ep_xmalloc(cap * W * sizeof(int64_t));
    l->send_rec = ep_xmalloc(W * sizeof(int));
    l->send_bytes = ep_xmalloc(W * sizeof(int64_t));
    l->send_off = ep_xmalloc(W * sizeof(int64_t));
}

void ep_dispatch_layout_free(ep_dispatch_layout *l)
{
    free(l->n_dest);
    free(l->dest);
    free(l->dest_pairs);
    free(l->rec_idx);
    free(l->rec_off);
    free(l->send_rec);
    free(l->send_bytes);
    free(l->send_off);
    memset(l, 0, sizeof *l);
}

static ep_dl_params dl_params(const ep_dispatch_shape *s)
{
    ep_dl_params p = {s->world, s->rank, s->max_k, s->fixed_bytes, s->pair_bytes};
    return p;
}

// Everything the kernels take on trust: sizes, each token's K, each pair's
// expert and destination.
static ep_status check_call(const ep_dispatch_shape *s, const ep_routes *r, const ep_placement *p,
                            const int *pair_rank, const ep_dispatch_layout *out)
{
    const int T = r->n_tokens;
    if (out->world != s->world || out->max_k != s->max_k || T < 0 || T > out->cap_tokens)
        return ep_errorf(EP_ERR_ARG,
                         "dispatch layout: %d tokens into a layout for %d tokens, world %d, max_k "
                         "%d; expected at most its capacity and world %d, max_k %d",
                         T, out->cap_tokens, out->world, out->max_k, s->world, s->max_k);
    if (p->world_size != s->world)
        return ep_errorf(EP_ERR_ARG, "dispatch layout: placement over %d ranks, expected %d",
                         p->world_size, s->world);
    for (int t = 0; t < T; t++) {
        const int o = r->offsets[t], k = r->offsets[t + 1] - o;
        if (k < 0 || k > s->max_k || o < 0)
            return ep_errorf(EP_ERR_ARG,
                             "dispatch layout: token %d has %d pairs (offset %d), expected 0..%d",
                             t, k, o, s->max_k);
        for (int j = o; j < o + k; j++) {
            const int e = r->expert[j];
            if (e < 0 || e >= p->n_experts)
                return ep_errorf(EP_ERR_ARG,
                                 "dispatch layout: token %d pair %d: expert %d outside [0, %d)", t,
                                 j, e, p->n_experts);
            const int d = pair_rank ? pair_rank[j] : p->rank_of[e];
            if (d < 0 || d >= s->world)
                return ep_errorf(EP_ERR_ARG,
                                 "dispatch layout: token %d pair %d (expert %d): %s %d outside "
                                 "[0, %d)",
                                 t, j, e, pair_rank ? "pair_rank" : "home rank", d, s->world);
        }
    }
    return EP_OK;
}

ep_status ep_dispatch_layout_host(const ep_dispatch_shape *s, const ep_routes *r,
                                  const ep_placement *p, const int *pair_rank,
                                  ep_dispatch_layout *out)
{
    ep_status st = check_call(s, r, p, pair_rank, out);
    if (st != EP_OK) return st;
    const ep_dl_params dp = dl_params(s);
    const ep_dl_bufs b = {
        .offsets = r->offsets,
        .expert = r->expert,
        .pair_rank = pair_rank,
        .rank_of = p->rank_of,
        .n_dest = out->n_dest,
        .dest = out->dest,
        .dest_pairs = out->dest_pairs,
        .rec_idx = out->rec_idx,
        .rec_off = out->rec_off,
        .send_rec = out->send_rec,
        .send_bytes = out->send_bytes,
        .send_off = out->send_off,
    };
    out->T = r->n_tokens;
    ep_dispatch_layout_run_host(&dp, &b, r->n_tokens);
    return EP_OK;
}

// ---- device ------------------------------------------------------------------------------

struct ep_dispatch_cuda {
    ep_dispatch_shape shape;
    int cap_tokens, n_experts, device;
    cudaStream_t stream;
    ep_dl_bufs b;                        // device arrays; the inputs below, by their const views
    int *d_offsets, *d_expert, *d_prank; // [cap + 1], [cap * max_k], [cap * max_k]
    int *d_rank_of;                      // [n_experts]
};

ep_status ep_dispatch_cuda_init(const ep_dispatch_shape *s, int cap_tokens, int n_experts,
                                ep_gpu *g, ep_dispatch_cuda **out)
{
    *out = NULL;
    if (cap_tokens < 0 || n_experts < 1 || s->world < 1 || s->max_k < 1)
        return ep_errorf(EP_ERR_ARG,
                         "cuda dispatch layout: cap_tokens %d, n_experts %d, world %d, max_k %d: "
                         "expected cap_tokens >= 0 and the others >= 1",
                         cap_tokens, n_experts, s->world, s->max_k);
    ep_status st = ep_gpu_make_current(g);
    if (st != EP_OK) return st;
    ep_dispatch_cuda *d = ep_xcalloc(1, sizeof *d);
    d->shape = *s;
    d->cap_tokens = cap_tokens;
    d->n_experts = n_experts;
    d->device = ep_gpu_device(g);
    const size_t cap = (size_t)(cap_tokens > 0 ? cap_tokens : 1), W = (size_t)s->world;
    const size_t pairs = cap * (size_t)s->max_k;
    ep_dl_bufs *b = &d->b;
    if ((st = EP_CUDA_ST(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking)))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&d->d_offsets, (cap + 1) * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&d->d_expert, pairs * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&d->d_prank, pairs * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&d->d_rank_of, (size_t)n_experts * sizeof(int)))))
        goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&b->n_dest, cap * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&b->dest, pairs * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&b->dest_pairs, pairs * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&b->rec_idx, cap * W * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&b->rec_off, cap * W * sizeof(int64_t))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&b->send_rec, W * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&b->send_bytes, W * sizeof(int64_t))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&b->send_off, W * sizeof(int64_t))))) goto err;
    b->offsets = d->d_offsets;
    b->expert = d->d_expert;
    b->rank_of = d->d_rank_of;
    *out = d;
    return EP_OK;
err:
    ep_dispatch_cuda_free(d);
    return ep_error_prefix(st, "cuda dispatch layout init (%d tokens, world %d)", cap_tokens,
                           s->world);
}

void ep_dispatch_cuda_free(ep_dispatch_cuda *d)
{
    if (!d) return;
    (void)cudaSetDevice(d->device);
    if (d->stream) (void)cudaStreamSynchronize(d->stream);
    (void)cudaFree(d->d_offsets);
    (void)cudaFree(d->d_expert);
    (void)cudaFree(d->d_prank);
    (void)cudaFree(d->d_rank_of);
    (void)cudaFree(d->b.n_dest);
    (void)cudaFree(d->b.dest);
    (void)cudaFree(d->b.dest_pairs);
    (void)cudaFree(d->b.rec_idx);
    (void)cudaFree(d->b.rec_off);
    (void)cudaFree(d->b.send_rec);
    (void)cudaFree(d->b.send_bytes);
    (void)cudaFree(d->b.send_off);
    if (d->stream) (void)cudaStreamDestroy(d->stream);
    free(d);
}

ep_status ep_dispatch_cuda_layout(ep_dispatch_cuda *d, const ep_dispatch_shape *s,
                                  const ep_routes *r, const ep_placement *p, const int *pair_rank,
                                  ep_dispatch_layout *out)
{
    const ep_dispatch_shape *m = &d->shape;
    if (s->world != m->world || s->rank != m->rank || s->max_k != m->max_k ||
        s->fixed_bytes != m->fixed_bytes || s->pair_bytes != m->pair_bytes ||
        p->n_experts != d->n_experts)
        return ep_errorf(EP_ERR_ARG,
                         "cuda dispatch layout: called with world %d, rank %d, max_k %d, record "
                         "bytes %lld + %lld per pair and %d experts; made for world %d, rank %d, "
                         "max_k %d, %lld + %lld and %d experts",
                         s->world, s->rank, s->max_k, (long long)s->fixed_bytes,
                         (long long)s->pair_bytes, p->n_experts, m->world, m->rank, m->max_k,
                         (long long)m->fixed_bytes, (long long)m->pair_bytes, d->n_experts);
    ep_status st = check_call(s, r, p, pair_rank, out);
    if (st != EP_OK) return st;
    const int T = r->n_tokens;
    if (T > d->cap_tokens)
        return ep_errorf(EP_ERR_ARG, "cuda dispatch layout: %d tokens, capacity is %d", T,
                         d->cap_tokens);
    // The kernels index pairs by their CSR position, as the host arrays do.
    const size_t nnz = T > 0 ? (size_t)r->offsets[T] : 0, W = (size_t)s->world;
    if (nnz > (size_t)d->cap_tokens * s->max_k)
        return ep_errorf(EP_ERR_ARG,
                         "cuda dispatch layout: routes end at pair %zu, capacity is %d x %d", nnz,
                         d->cap_tokens, s->max_k);
    const ep_dl_params dp = dl_params(s);
    ep_dl_bufs b = d->b;
    b.pair_rank = pair_rank ? d->d_prank : NULL;
    cudaStream_t q = d->stream;
    EP_CUDA_CHECK(cudaSetDevice(d->device));
    // Routes up and the layout down are control data (META).
    const enum cudaMemcpyKind h2d = cudaMemcpyHostToDevice, d2h = cudaMemcpyDeviceToHost;
    const ep_copy_class meta = EP_COPY_META;
    if ((st = ep_cuda_copy_cls(d->d_offsets, r->offsets, ((size_t)T + 1) * sizeof(int), h2d, q,
                               meta, "dispatch layout: route offsets")))
        return st;
    if (nnz > 0 && (st = ep_cuda_copy_cls(d->d_expert, r->expert, nnz * sizeof(int), h2d, q, meta,
                                          "dispatch layout: experts")))
        return st;
    if (nnz > 0 && pair_rank &&
        (st = ep_cuda_copy_cls(d->d_prank, pair_rank, nnz * sizeof(int), h2d, q, meta,
                               "dispatch layout: pair ranks")))
        return st;
    if ((st = ep_cuda_copy_cls(d->d_rank_of, p->rank_of, (size_t)d->n_experts * sizeof(int), h2d, q,
                               meta, "dispatch layout: placement")))
        return st;
    EP_CUDA_CHECK(ep_dispatch_layout_launch(&dp, &b, T, q));
    const size_t rows = (size_t)T * s->max_k, cells = (size_t)T * W;
    struct {
        void *dst;
        const void *src;
        size_t bytes;
    } down[] = {
        {out->n_dest, b.n_dest, (size_t)T * sizeof(int)},
        {out->dest, b.dest, rows * sizeof(int)},
        {out->dest_pairs, b.dest_pairs, rows * sizeof(int)},
        {out->rec_idx, b.rec_idx, cells * sizeof(int)},
        {out->rec_off, b.rec_off, cells * sizeof(int64_t)},
        {out->send_rec, b.send_rec, W * sizeof(int)},
        {out->send_bytes, b.send_bytes, W * sizeof(int64_t)},
        {out->send_off, b.send_off, W * sizeof(int64_t)},
    };
    for (size_t i = 0; i < EP_ARRAY_LEN(down); i++)
        if ((st = ep_cuda_copy_cls(down[i].dst, down[i].src, down[i].bytes, d2h, q, meta,
                                   "dispatch layout")))
            return st;
    EP_CUDA_CHECK(cudaStreamSynchronize(q));
    out->T = T;
    return EP_OK;
}
