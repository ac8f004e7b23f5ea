// The router's per-token steps on a CUDA device: softmax (fp32, as HF),
// DeepSeek's group mask, the top range*k_base candidates (ties to the lower
// id), Ban's K, the kept set and the model's combine weights, written as the
// same CSR ep_routes the CPU router writes (and the top-k_base
// counterfactual). For the policies whose choice is a function of the sorted
// candidates alone: baseline and Ban (not comm-aware Ban, not Pick, top-p or
// DES, which stay on the CPU router). No CUDA types; EP_CUDA=ON builds only.
#ifndef EP_ROUTER_CUDA_H
#define EP_ROUTER_CUDA_H

#include "cluster/gpu.h"
#include "router/router.h"

// Whether p can route on the GPU (false: use ep_router_route_logits).
bool ep_router_cuda_supports(const ep_policy *p);

typedef struct ep_router_cuda ep_router_cuda;
// Device buffers for cap_tokens tokens, sized once. g is borrowed.
ep_status ep_router_cuda_init(const ep_model_cfg *cfg, int cap_tokens, ep_gpu *g,
                              ep_router_cuda **out);
void ep_router_cuda_free(ep_router_cuda *r); // NULL ok

// As ep_router_route_logits, with the per-token work on the device: logits
// [T, n_experts] host fp32 -> out (host). EP_ERR_UNSUPPORTED names the
// policy when ep_router_cuda_supports(p) is false.
ep_status ep_router_cuda_route_logits(ep_router_cuda *r, const ep_policy *p, int layer,
                                      const float *logits, int T, ep_routes *out);

// The very routine the kernel runs, executed on the host for T tokens (the
// tests compare it with the CPU router where no device exists).
ep_status ep_router_cuda_route_logits_host(const ep_model_cfg *cfg, const ep_policy *p, int layer,
                                           const float *logits, int T, ep_routes *out);

#endif
