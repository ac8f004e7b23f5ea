// CUDA helpers private to epserve's GPU code (each module's cuda/ library,
// all of which link ep_cluster_cuda): the EP_CUDA_CHECK / EP_CUBLAS_CHECK
// macros that quote the failing call, file, line and error string, and the
// gpu struct. Only files built with EP_CUDA include this; public headers
// never do.
#ifndef EP_CUDA_UTIL_H
#define EP_CUDA_UTIL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "cluster/gpu.h"

struct ep_gpu {
    int device;       // CUDA ordinal among the visible devices
    int cc;           // compute capability, major * 10 + minor
    size_t mem_bytes; // total global memory
    char name[256];   // cudaDeviceProp.name
};

// EP_OK on success; otherwise sets "<call> failed at <file>:<line>: <error
// name>: <error string>" as the last error and returns the matching status
// (EP_ERR_NOMEM for allocations, EP_ERR_UNSUPPORTED for a missing device,
// driver or kernel image, EP_ERR_IO for any other device failure).
ep_status ep_cuda_status(cudaError_t rc, const char *call, const char *file, int line);
ep_status ep_cublas_status(cublasStatus_t rc, const char *call, const char *file, int line);

// Evaluate to an ep_status (for `if ((st = EP_CUDA_ST(...))) goto err;`).
#define EP_CUDA_ST(call)   ep_cuda_status((call), #call, __FILE__, __LINE__)
#define EP_CUBLAS_ST(call) ep_cublas_status((call), #call, __FILE__, __LINE__)

// Return the failure from the enclosing function.
#define EP_CUDA_CHECK(call)                                                                        \
    do {                                                                                           \
        ep_status ep_cuda_st_ = EP_CUDA_ST(call);                                                  \
        if (ep_cuda_st_ != EP_OK) return ep_cuda_st_;                                              \
    } while (0)
#define EP_CUBLAS_CHECK(call)                                                                      \
    do {                                                                                           \
        ep_status ep_cublas_st_ = EP_CUBLAS_ST(call);                                              \
        if (ep_cublas_st_ != EP_OK) return ep_cublas_st_;                                          \
    } while (0)

// Device memory that grows: *p holds *cap bytes; grows to at least `need`
// (by half again at least, contents not kept). No-op when it is big enough.
ep_status ep_cuda_grow(void **p, size_t *cap, size_t need, const char *what);

// cudaMemcpyAsync of `bytes` from src to dst on `stream`, counted in the
// process's copy statistics (ep_gpu_copy_stats) by direction and class:
// the one way GPU code moves data between host and device. kind must be
// cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost or cudaMemcpyDeviceToDevice
// (the last not counted); `what` names the data in an error. 0 bytes: no-op.
// ep_cuda_copy counts as EP_COPY_ACT.
ep_status ep_cuda_copy_cls(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                           cudaStream_t stream, ep_copy_class cls, const char *what);
ep_status ep_cuda_copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                       cudaStream_t stream, const char *what);

#endif
