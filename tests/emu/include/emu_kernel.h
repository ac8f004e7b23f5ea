// Emulated CUDA device (EP_CUDA_EMU=ON, tests only): the CUDA built-ins the
// project's kernels use, for .cu files compiled as C++ by the host compiler.
// The build force-includes this header (-include) into every .cu file.
//
// How a launch runs (tests/emu/runtime.c): the grid's blocks one after
// another, on the launching host thread; within a block, each CUDA thread
// is a fiber with its own stack, and they take turns from one
// __syncthreads to the next (ascending and descending thread order in
// turn), so __syncthreads is a real barrier and shared memory is really
// shared. As only one block runs at a time (and launches are serialized),
// __shared__ is plain `static` storage: one instance, reused by each block
// in turn, not zeroed between blocks (on a GPU it is uninitialised too).
//
// Not emulated: warps (no lock-step, no warp intrinsics), atomics, memory
// ordering beyond the barrier, and __expf's reduced precision (it is expf
// here, the GPU's is a few ulp off).
#ifndef EP_EMU_KERNEL_H
#define EP_EMU_KERNEL_H

#ifndef __cplusplus
#error "emu_kernel.h is for .cu files compiled as C++ (EP_CUDA_EMU)"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <tuple>
#include <utility>

#include "cuda_runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__      static

#define threadIdx emu_thread_idx
#define blockIdx  emu_block_idx
#define blockDim  emu_block_dim
#define gridDim   emu_grid_dim

static inline void __syncthreads(void)
{
    emu_syncthreads();
}

// Fast-math intrinsics: the exact functions (the GPU's are approximations).
// Macros, as glibc's math.h declares functions of these names itself.
#define __expf(x) expf(x)
#define __logf(x) logf(x)
static inline float __fdividef(float a, float b)
{
    return a / b;
}

// EP_LAUNCH's emulated form: the arguments are converted to the kernel's
// parameter types once, as a launch does; every thread calls the kernel
// with its own copy of them.
template <typename... P> struct emu_kernel_call {
    void (*kernel)(P...);
    std::tuple<P...> args;
    static void run(void *ctx)
    {
        emu_kernel_call *c = static_cast<emu_kernel_call *>(ctx);
        std::tuple<P...> mine = c->args;
        std::apply(c->kernel, mine);
    }
};

template <typename... P, typename... A>
static inline void emu_launch(const char *name, void (*kernel)(P...), dim3 grid, dim3 block,
                              size_t smem, cudaStream_t stream, A &&...args)
{
    emu_kernel_call<P...> c{kernel, std::tuple<P...>(std::forward<A>(args)...)};
    emu_launch_grid(name, grid, block, smem, stream, &emu_kernel_call<P...>::run, &c);
}

#endif
