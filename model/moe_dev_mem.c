// What the MoE part of backend cuda allocates on a rank's device, as pure
// arithmetic (no CUDA; built in every build so `epserve plan` can price a
// GPU it does not have): ep_moe_dev_mem_predict, and the reservation of the
// device path's exchange buffers that model/moe_dev.c makes from it. Each
// term mirrors one allocation; cuda.test_moe_dev checks the sum equals what
// ep_moe_device_bytes measures after every MoE layer ran once.
#include <string.h>

#include "comm/comm_impl.h"
#include "model/moe_impl.h"

// Routing rows of the device router: min(n_experts, EP_ROUTE_MAX_CAND)
// (router/cuda/route_token.h, checked against it in moe_dev.c).
#define EP_MOE_DEV_ROUTE_ROWS 64

void ep_moe_dev_reserve(const ep_model_cfg *cfg, const ep_moe_opts *o, int world,
                        size_t need[EP_MOE_DEV_N_BUFS])
{
    const size_t cap = (size_t)(o->cap_tokens > 0 ? o->cap_tokens : 1), H = (size_t)cfg->hidden;
    // A balanced step, as ep_comm_init sizes its buffers: cap tokens each
    // reaching at most min(max_k, world) ranks, about as many records in.
    const size_t recs = cap * (size_t)EP_MIN(o->max_k, world);
    const size_t row = (size_t)ep_comm_row_bytes(cfg->hidden, o->wire);
    const size_t crow = (size_t)ep_comm_combine_record_bytes(cfg->hidden, o->wire);
    const size_t n[EP_MOE_DEV_N_BUFS] = {
        recs * row,               // rows out
        recs * row,               // rows in
        recs * crow,              // combine rows out
        recs * crow,              // combine rows in
        recs * H * sizeof(float), // work rows
        recs * H * sizeof(float), // partial sums
        (recs + 1) * sizeof(int), // row indices (one list at a time)
        (cap + 2) * sizeof(int),  // combine offsets per token
        (recs + 1) * sizeof(int), // combine entries
    };
    memcpy(need, n, sizeof n);
}

void ep_moe_dev_mem_predict(const ep_model_cfg *cfg, const ep_moe_opts *o, int world, int n_local,
                            ep_moe_dev_mem *out)
{
    memset(out, 0, sizeof *out);
    const uint64_t H = (uint64_t)cfg->hidden, I = (uint64_t)cfg->moe_inter;
    const uint64_t S = I * (uint64_t)cfg->n_shared, E = (uint64_t)cfg->n_experts;
    const uint64_t n_moe = (uint64_t)ep_model_n_moe_layers(cfg);
    const uint64_t cap = (uint64_t)(o->cap_tokens > 0 ? o->cap_tokens : 1);
    // experts/cuda: BF16 gate|up and down per held expert, the shared MLP.
    out->experts = n_moe * ((uint64_t)n_local * 3 * I * H + 3 * S * H) * 2;
    // Its step scratch, reserved for cap records of cap * max_k pairs
    // (experts_cuda.c grow_scratch's terms): x, y fp32; gathered rows,
    // gate|up, activations, outputs bf16 (W = max(I, S)); row records, pair
    // rows, pair weights; record offsets; 6 pointer arrays per group.
    const uint64_t rows = EP_MAX(cap * (uint64_t)o->max_k, cap), W = EP_MAX(I, S);
    out->expert_scratch = 2 * cap * H * 4 + rows * (H + 2 * W + W + H) * 2 + rows * 12 +
                          (cap + 1) * 4 + 6 * (uint64_t)n_local * sizeof(void *);
    // router/cuda: logits, K, kept rows and weights, top-k_base, the input
    // rows, and every MoE layer's fp32 gate.
    const uint64_t rk = EP_MIN(E, (uint64_t)EP_MOE_DEV_ROUTE_ROWS), kb = (uint64_t)cfg->k_base;
    out->router = cap * (E * 4 + 4 + rk * 8 + kb * 8) + cap * H * 4 + n_moe * E * H * 4;
    size_t need[EP_MOE_DEV_N_BUFS];
    ep_moe_dev_reserve(cfg, o, world, need);
    for (int i = 0; i < EP_MOE_DEV_N_BUFS; i++)
        out->exchange += need[i];
    // The NCCL transport: its counts only (the device path never stages).
    out->transport = 2 * (uint64_t)world * sizeof(int64_t);
    out->total = out->experts + out->expert_scratch + out->router + out->exchange + out->transport;
}
