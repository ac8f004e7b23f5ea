// What the MoE layer's cuda backend opened on this rank (model/moe_cuda.c)
// and the state of the device-activation layer built on it
// (model/moe_dev.c, ep_moe_forward_dev). Private to those two files;
// EP_CUDA=ON builds only.
#ifndef EP_MOE_CUDA_IMPL_H
#define EP_MOE_CUDA_IMPL_H

#include "cluster/gpu.h"
#include "experts/cuda/experts_cuda.h"
#include "model/moe_impl.h"

typedef struct ep_moe_dev ep_moe_dev; // moe_dev.c

// ep_moe_parts.dev of the cuda backend: what the transport and the experts borrow.
typedef struct {
    ep_gpu *gpu;
    ep_nccl *nccl;            // communicator over the cluster's ranks (borrows gpu)
    ep_experts_cuda *experts; // the expert backend's (borrowed from ep_moe_parts.experts)
    ep_transport *hdr;        // MPI transport: the per-record headers of the device path
    ep_moe_dev *dev;          // made by the first ep_moe_forward_dev, or NULL
} ep_moe_cuda_dev;

void ep_moe_dev_free(ep_moe_dev *d); // NULL ok
// Device bytes the device path's own buffers hold now (router, exchange, work rows).
void ep_moe_dev_bytes(const ep_moe_dev *d, uint64_t *router, uint64_t *exchange);

#endif
