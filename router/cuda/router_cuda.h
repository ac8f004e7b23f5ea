// The router's per-token steps on a CUDA device: softmax (fp32, as HF),
// DeepSeek's group mask, the top range*k_base candidates (ties to the lower
// id), Ban's K, Pick's additions or swaps (strategies A-E, the active
// domain's key experts), the kept set and the model's combine weights,
// written as the same CSR ep_routes the CPU router writes (and the top-k_base
// counterfactual). Policies: baseline, Ban, Pick and Ban&Pick (not
// comm-aware Ban, top-p, DES or laser, which stay on the CPU router). No CUDA types;
// EP_CUDA=ON builds only.
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

// The gate GEMM on the device: MoE layer `layer`'s gate [n_experts, hidden]
// fp32 is uploaded once (set_gate; a second call replaces it), then route
// computes logits = x . gate^T with cuBLAS sgemm (fp32, no TF32) on the
// router's stream and routes them as route_logits does: x [T, hidden] host
// fp32 -> out (host). The sum runs in cuBLAS's order, not the CPU gate's
// (ep_router_gate_logits), so logits differ in the last bits and a token
// whose candidates are near a tie may route differently from the CPU router.
ep_status ep_router_cuda_set_gate(ep_router_cuda *r, int layer, const float *gate_w);
ep_status ep_router_cuda_route(ep_router_cuda *r, const ep_policy *p, int layer, const float *x,
                               int T, ep_routes *out);

// The same from x_dev [T, hidden] fp32 in device memory (nothing of it crosses
// to the host; the routes come down as META).
ep_status ep_router_cuda_route_dev(ep_router_cuda *r, const ep_policy *p, int layer,
                                   const float *x_dev, int T, ep_routes *out);
// Only the gate GEMM from x_dev, its logits [T, n_experts] copied to the
// host (ACT: a policy the device cannot run routes them there).
ep_status ep_router_cuda_logits_dev(ep_router_cuda *r, int layer, const float *x_dev, int T,
                                    float *logits);
// Device bytes the router holds now (scratch, uploaded gates, input rows).
size_t ep_router_cuda_device_bytes(const ep_router_cuda *r);

// That GEMM as one column-major cuBLAS call, op(A) = T, op(B) = N:
// C (m = n_experts x n = T, ldc = n_experts) is row-major logits [T, E];
// A (k = hidden x m, lda = hidden) is the row-major gate [E, H]; B (k x n,
// ldb = hidden) is row-major x [T, H]. Pure arithmetic, tested on the host.
typedef struct {
    int m, n, k, lda, ldb, ldc;
} ep_router_gate_gemm;
ep_router_gate_gemm ep_router_cuda_gate_gemm(int T, int hidden, int n_experts);

// The very routine the kernel runs, executed on the host for T tokens (the
// tests compare it with the CPU router where no device exists).
ep_status ep_router_cuda_route_logits_host(const ep_model_cfg *cfg, const ep_policy *p, int layer,
                                           const float *logits, int T, ep_routes *out);

#endif
