// Kernels for the emulation's own test (test_emu_runtime.c): one that
// writes past its buffer, one that reads through an index it was given
// (a wild one faults), one that needs its barrier and one that lacks it.
#include "cluster/cuda/launch.h"
#include "test_emu_kernels.h"

__global__ void emu_test_past_end_kernel(float *p, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) p[i] = 1.0f; // i == n is one past the end
}

__global__ void emu_test_gather_kernel(const float *x, const int *idx, float *y, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[idx[i]];
}

// Each thread reads its neighbour's slot after the barrier; threads from
// `quit` on return first, as a GPU's may (the rest still meet).
__global__ void emu_test_barrier_kernel(int *out, int quit)
{
    __shared__ int sh[64];
    const int t = threadIdx.x, n = blockDim.x;
    if (t >= quit) {
        out[blockIdx.x * n + t] = -1;
        return;
    }
    sh[t] = (int)blockIdx.x * 1000 + t;
    __syncthreads();
    out[blockIdx.x * n + t] = sh[(t + 1) % quit];
}

// The barrier kernel's exchange without a barrier, through global memory
// set to -1 first: a race on a GPU. Each thread writes its slot, then
// reads both neighbours' (-1: not written yet).
__global__ void emu_test_race_kernel(int *buf, int *out)
{
    const int t = threadIdx.x, n = blockDim.x;
    buf[t] = t;
    out[2 * t] = buf[(t + 1) % n];
    out[2 * t + 1] = buf[(t + n - 1) % n];
}

extern "C" cudaError_t emu_test_past_end(float *p, int n)
{
    EP_LAUNCH(emu_test_past_end_kernel, (n + 32) / 32, 32, 0, 0, p, n);
    return cudaGetLastError();
}

extern "C" cudaError_t emu_test_gather(const float *x, const int *idx, float *y, int n)
{
    EP_LAUNCH(emu_test_gather_kernel, (n + 31) / 32, 32, 0, 0, x, idx, y, n);
    return cudaGetLastError();
}

extern "C" cudaError_t emu_test_barrier(int *out, int blocks, int threads, int quit)
{
    EP_LAUNCH(emu_test_barrier_kernel, blocks, threads, 0, 0, out, quit);
    return cudaGetLastError();
}

extern "C" cudaError_t emu_test_race(int *buf, int *out, int threads)
{
    EP_LAUNCH(emu_test_race_kernel, 1, threads, 0, 0, buf, out);
    return cudaGetLastError();
}
