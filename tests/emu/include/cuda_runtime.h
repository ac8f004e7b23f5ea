// Emulated CUDA device (EP_CUDA_EMU=ON, tests only): the CUDA runtime API
// subset epserve calls, with CUDA's signatures, implemented on the host by
// tests/emu/runtime.c. Device memory is host memory with guard zones;
// streams and events are synchronous. The device count and memory come from
// EP_EMU_DEVICES (default 1) and EP_EMU_MEM_GB (default 80).
#ifndef EP_EMU_CUDA_RUNTIME_H
#define EP_EMU_CUDA_RUNTIME_H

#include <stddef.h>

#include "driver_types.h"
#include "library_types.h"

#ifdef __cplusplus
extern "C" {
#endif

// vector_types.h: uint3 holds threadIdx / blockIdx, dim3 a launch shape
// (unset dimensions are 1).
typedef struct uint3 {
    unsigned int x, y, z;
} uint3;

typedef struct dim3 {
    unsigned int x, y, z;
#ifdef __cplusplus
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz)
    {
    }
#endif
} dim3;

// The fields epserve reads, with CUDA's names (the real struct has more).
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int major, minor;
    int multiProcessorCount;
};

struct cudaPointerAttributes {
    enum cudaMemoryType type;
    int device;
    void *devicePointer;
    void *hostPointer;
    long reserved[8];
};

// ---- errors -----------------------------------------------------------------
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorName(cudaError_t error);
const char *cudaGetErrorString(cudaError_t error);

// ---- devices ----------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaMemGetInfo(size_t *free, size_t *total);

// ---- memory -----------------------------------------------------------------
cudaError_t cudaMalloc(void **devPtr, size_t size);
cudaError_t cudaFree(void *devPtr);
cudaError_t cudaMallocHost(void **ptr, size_t size);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemset(void *devPtr, int value, size_t count);
cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attributes, const void *ptr);

// ---- streams and events (synchronous) ---------------------------------------
cudaError_t cudaStreamCreate(cudaStream_t *pStream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
// Host time between the two records (the emulated work runs inside the calls).
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

// ---- kernel launches (EP_LAUNCH, cluster/cuda/launch.h) ---------------------
// Runs grid x block threads of `run(ctx)`: blocks one after another, each
// block's threads as fibers taking turns between barriers, on the calling
// thread; checks every guard zone afterwards and
// faults naming `kernel`. A bad configuration or stream sets the last error
// (cudaGetLastError) and runs nothing, as a real launch does.
void emu_launch_grid(const char *kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                     void (*run)(void *ctx), void *ctx);
// The built-ins of the running emulated thread (thread-local).
// (blockDim and gridDim are dim3 in CUDA; plain uint3 here, as __thread
// wants a type without constructors.)
extern __thread uint3 emu_thread_idx, emu_block_idx, emu_block_dim, emu_grid_dim;
// __syncthreads: waits until every thread of the block that has not
// returned yet reaches it.
void emu_syncthreads(void);

#ifdef __cplusplus
}
#endif

#endif
