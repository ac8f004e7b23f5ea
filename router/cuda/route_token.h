// What the router kernel needs to route one token, as plain data (router/
// structs hold pointers and host-only tables), and the launchers. Shared by
// router_cuda.c and router_kernels.cu; private to ep_router_cuda.
#ifndef EP_ROUTE_TOKEN_H
#define EP_ROUTE_TOKEN_H

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Local arrays of the per-token routine are this large (candidates, kept
// experts, groups); ep_router_cuda_supports() refuses larger configurations.
#define EP_ROUTE_MAX_CAND   64
#define EP_ROUTE_MAX_GROUPS 64
// Key experts of one layer in the active Pick domain (held in the parameter
// block, which the kernel receives by value).
#define EP_ROUTE_MAX_KEYS 64

typedef struct {
    int n_experts, k_base;
    int want;    // candidates: min(n_experts, range * k_base), at least k_base
    int max_k;   // row stride of the kept arrays
    int grouped; // DeepSeek group_limited_greedy
    int n_group, topk_group;
    int renorm; // weights = score / Σ kept (+1e-20 for DeepSeek), else score * scale
    int deepseek;
    float scale; // routed_scaling_factor
    int ban;     // 0: baseline (keep top-k_base); 1: Ban's K
    int k_min;
    float lambda, beta, r_min, r_max, lterm; // Ban; lterm = L'_l of this layer
    // Pick (policy_pick.c's ep_pick_apply) after baseline's top-k_base or
    // Ban's K: strategy 0..4 = A..E; n_keys 0 (no domain, or none at this
    // layer) keeps the set. pick_max_k = ep_policy_max_k, the bound on
    // additions (max_k above is only the row stride).
    int pick, pick_strategy, pick_max_k;
    int n_keys;
    int keys[EP_ROUTE_MAX_KEYS]; // ascending expert ids
} ep_route_params;

// Routes token rows [0, T) of logits [T, n_experts] (overwritten with the
// softmax scores): k[t], kept[t * max_k ..] and weight[..] (score
// descending), base[t * k_base ..] and base_w[..]. Host version: the same
// code on the CPU.
cudaError_t ep_route_tokens_launch(const ep_route_params *p, float *logits, int T, int *k,
                                   int *kept, float *weight, int *base, float *base_w,
                                   cudaStream_t stream);
void ep_route_tokens_host(const ep_route_params *p, float *logits, int T, int *k, int *kept,
                          float *weight, int *base, float *base_w);

#ifdef __cplusplus
}
#endif

#endif
