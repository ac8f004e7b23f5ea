// The routed experts of this rank's shard and the shared experts on a CUDA
// device: BF16 weights uploaded once, the grouped SwiGLU over the records a
// rank received as two grouped GEMMs (cuBLAS), a fused SiLU * up kernel and
// the weighting + per-record reduction kernel. Same contract and results
// (within BF16 rounding) as ep_experts_forward / ep_experts_shared_forward;
// no CUDA types here. Built into ep_experts_cuda only when EP_CUDA=ON.
#ifndef EP_EXPERTS_CUDA_H
#define EP_EXPERTS_CUDA_H

#include "cluster/gpu.h"
#include "experts/backend.h"
#include "experts/experts.h"

typedef struct ep_experts_cuda ep_experts_cuda;

// rank >= 0: the experts placement p gives that rank; rank < 0: every
// expert (p may be NULL). Weights go to g's device as BF16 (checkpoints hold
// BF16, so nothing is lost). g is borrowed and must outlive the experts.
// EP_ERR_NOMEM names the bytes needed and free when the device is too small.
ep_status ep_experts_cuda_load(const ep_model_cfg *cfg, ep_weights *w, const ep_placement *p,
                               int rank, ep_gpu *g, ep_experts_cuda **out);
void ep_experts_cuda_free(ep_experts_cuda *e);          // NULL ok
size_t ep_experts_cuda_bytes(const ep_experts_cuda *e); // device bytes of weights held
bool ep_experts_cuda_has(const ep_experts_cuda *e, int expert);

// Sizes the per-step device buffers for n_rec records of n_pairs pairs (and
// n_rec tokens of shared experts) now, so that steps up to that size never
// allocate. Larger steps still grow them.
ep_status ep_experts_cuda_reserve(ep_experts_cuda *e, int n_rec, int n_pairs);
size_t ep_experts_cuda_scratch_bytes(const ep_experts_cuda *e); // device scratch held now

// How the per-expert GEMMs are issued. AUTO: one cublasGemmGroupedBatchedEx
// per projection when the toolkit has it (cuBLAS >= 12.5), falling back to
// LOOP for good if the library answers NOT_SUPPORTED; LOOP: one cublasGemmEx
// per expert on the experts' stream.
typedef enum { EP_CUDA_GEMM_AUTO, EP_CUDA_GEMM_GROUPED, EP_CUDA_GEMM_LOOP } ep_cuda_gemm_mode;
void ep_experts_cuda_set_gemm(ep_experts_cuda *e, ep_cuda_gemm_mode mode);
// GROUPED or LOOP: what the last forward used (AUTO before any).
ep_cuda_gemm_mode ep_experts_cuda_gemm_used(const ep_experts_cuda *e);

// As ep_experts_forward, with host arrays in and out: x [n_rec, H] fp32 and
// y [n_rec, H] fp32 (written whole). Returns when y is filled.
ep_status ep_experts_cuda_forward(ep_experts_cuda *e, int layer, int n_rec, const int *pair_off,
                                  const int *pair_expert, const float *pair_weight, const float *x,
                                  float *y);
// As ep_experts_shared_forward: y[T, H] += shared experts(x[T, H]), host arrays.
ep_status ep_experts_cuda_shared_forward(ep_experts_cuda *e, int layer, const float *x, int T,
                                         float *y);

// The same on device arrays of this expert set's device (the MoE layer with
// activations on the device, ep_moe_forward_dev): x_dev and y_dev are device
// memory; only the pair metadata (host arrays) goes up, counted as META.
ep_status ep_experts_cuda_forward_dev(ep_experts_cuda *e, int layer, int n_rec, const int *pair_off,
                                      const int *pair_expert, const float *pair_weight,
                                      const float *x_dev, float *y_dev);
ep_status ep_experts_cuda_shared_forward_dev(ep_experts_cuda *e, int layer, const float *x_dev,
                                             int T, float *y_dev);

// The cuda table of the expert backend over e (taken over: freed with the
// backend). Its experts cannot move between ranks yet (experts/backend.h
// refuses re-placement naming it). Defined in backend_cuda.c.
ep_expert_backend *ep_expert_backend_cuda(ep_experts_cuda *e);

#endif
