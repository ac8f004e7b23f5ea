// NCCL helpers private to the NCCL code (the bootstrap in cluster/cuda/,
// ep_cluster_cuda, and the transport in comm/nccl/, ep_comm_cuda):
// EP_NCCL_CHECK, which quotes the failing call, and access to the
// communicator. Public headers never include this.
#ifndef EP_NCCL_UTIL_H
#define EP_NCCL_UTIL_H

#include <nccl.h>

#include "cluster/cuda/cuda_util.h"

// EP_OK on success; otherwise sets "<call> failed at <file>:<line>: <NCCL
// error string> (<NCCL's last error>)" and returns EP_ERR_COMM.
ep_status ep_nccl_status(ncclResult_t rc, const char *call, const char *file, int line);
#define EP_NCCL_ST(call) ep_nccl_status((call), #call, __FILE__, __LINE__)
#define EP_NCCL_CHECK(call)                                                                        \
    do {                                                                                           \
        ep_status ep_nccl_st_ = EP_NCCL_ST(call);                                                  \
        if (ep_nccl_st_ != EP_OK) return ep_nccl_st_;                                              \
    } while (0)

ncclComm_t ep_nccl_comm(const ep_nccl *n);
int ep_nccl_device(const ep_nccl *n); // the CUDA device the communicator was created on

#endif
