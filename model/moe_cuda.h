// The CUDA side of the MoE layer, private to model/: this rank's GPU, the
// NCCL communicator and transport, and the BF16 experts on the device. Two
// definitions: moe_cuda.c (EP_CUDA=ON, links ep_experts_cuda, ep_comm_cuda) and
// moe_cuda_off.c (CPU-only builds: init says how to get the backend). No
// CUDA or NCCL types here, so moe.c compiles the same in both builds.
#ifndef EP_MOE_CUDA_H
#define EP_MOE_CUDA_H

#include "comm/comm.h"
#include "common/weights.h"

typedef struct ep_moe_cuda ep_moe_cuda;

bool ep_moe_cuda_built(void);

// Collective: every rank opens its device (by local rank), joins the NCCL
// communicator, makes the NCCL transport and uploads the experts p gives it
// plus the shared experts. Each step that can fail on some ranks only is
// agreed on before the next collective one, so a rank without a device
// fails every rank (EP_ERR_UNSUPPORTED; that rank's message says why)
// instead of leaving them waiting. Device scratch is reserved for a step of
// cap_rec records and cap_pairs pairs (larger steps grow it).
ep_status ep_moe_cuda_init(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                           const ep_placement *p, int cap_rec, int cap_pairs, ep_moe_cuda **out);
void ep_moe_cuda_free(ep_moe_cuda *c); // NULL ok
// The NCCL transport, owned by c (valid until ep_moe_cuda_free).
ep_transport *ep_moe_cuda_transport(ep_moe_cuda *c);
size_t ep_moe_cuda_bytes(const ep_moe_cuda *c); // routed + shared expert bytes on the device

// ep_experts_forward over the records dispatch delivered (w->x in, w->y out).
ep_status ep_moe_cuda_experts(ep_moe_cuda *c, int layer, const ep_comm_work *w);
// y[T, H] += shared experts(x[T, H]).
ep_status ep_moe_cuda_shared(ep_moe_cuda *c, int layer, const float *x, int T, float *y);

#endif
