// The experts' elementwise CUDA kernels: gather + BF16 conversion, fused
// SiLU * up, and the weighting + per-record reduction. GEMMs are cuBLAS's
// (experts_cuda.c). Each has a plain C counterpart in experts.c/plan.c.
#include <cuda_bf16.h>

#include "cluster/cuda/launch.h"
#include "experts/cuda/device_math.h"
#include "experts/cuda/kernels.h"

#define EP_THREADS 256

// Grid-stride loops over int64 indices: any size fits one launch of a
// bounded grid, and element counts above 2^31 stay correct.
static unsigned ep_blocks(int64_t n)
{
    int64_t b = (n + EP_THREADS - 1) / EP_THREADS;
    if (b < 1) b = 1;
    return (unsigned)(b > 65535 * 8 ? 65535 * 8 : b);
}

__global__ void ep_gather_bf16_kernel(const float *x, const int *row_rec, int n_rows, int H,
                                      uint16_t *xg)
{
    const int64_t n = (int64_t)n_rows * H;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / H, h = i % H;
        const int64_t src = row_rec ? row_rec[r] : r;
        ep_st_bf16(xg, i, x[src * H + h]);
    }
}

__global__ void ep_swiglu_bf16_kernel(const uint16_t *gu, int rows, int W, uint16_t *act)
{
    const int64_t n = (int64_t)rows * W;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / W, c = i % W;
        const float g = ep_ld_bf16(gu, r * 2 * W + c);
        const float u = ep_ld_bf16(gu, r * 2 * W + W + c);
        ep_st_bf16(act, i, ep_silu(g) * u);
    }
}

__global__ void ep_combine_rows_kernel(const uint16_t *og, int H, const int *rec_off,
                                       const int *pair_row, const float *w, int n_rec, float *y)
{
    const int64_t n = (int64_t)n_rec * H;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t rec = i / H, h = i % H;
        float acc = 0.0f;
        for (int j = rec_off[rec]; j < rec_off[rec + 1]; j++)
            acc += w[j] * ep_ld_bf16(og, (int64_t)pair_row[j] * H + h);
        y[i] = acc;
    }
}

__global__ void ep_add_bf16_kernel(const uint16_t *src, int64_t n, float *y)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] += ep_ld_bf16(src, i);
}

__global__ void ep_f32_to_bf16_kernel(const float *src, int64_t n, uint16_t *dst)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        ep_st_bf16(dst, i, src[i]);
}

__global__ void ep_bf16_to_f32_kernel(const uint16_t *src, int64_t n, float *dst)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = ep_ld_bf16(src, i);
}

extern "C" cudaError_t ep_cuda_gather_bf16(const float *x, const int *row_rec, int n_rows, int H,
                                           uint16_t *xg, cudaStream_t stream)
{
    const int64_t n = (int64_t)n_rows * H;
    if (n <= 0) return cudaSuccess;
    EP_LAUNCH(ep_gather_bf16_kernel, ep_blocks(n), EP_THREADS, 0, stream, x, row_rec, n_rows, H,
              xg);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_cuda_swiglu_bf16(const uint16_t *gu, int rows, int W, uint16_t *act,
                                           cudaStream_t stream)
{
    const int64_t n = (int64_t)rows * W;
    if (n <= 0) return cudaSuccess;
    EP_LAUNCH(ep_swiglu_bf16_kernel, ep_blocks(n), EP_THREADS, 0, stream, gu, rows, W, act);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_cuda_combine_rows(const uint16_t *og, int H, const int *rec_off,
                                            const int *pair_row, const float *w, int n_rec,
                                            float *y, cudaStream_t stream)
{
    const int64_t n = (int64_t)n_rec * H;
    if (n <= 0) return cudaSuccess;
    EP_LAUNCH(ep_combine_rows_kernel, ep_blocks(n), EP_THREADS, 0, stream, og, H, rec_off, pair_row,
              w, n_rec, y);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_cuda_add_bf16(const uint16_t *src, int64_t n, float *y,
                                        cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    EP_LAUNCH(ep_add_bf16_kernel, ep_blocks(n), EP_THREADS, 0, stream, src, n, y);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_cuda_f32_to_bf16(const float *src, int64_t n, uint16_t *dst,
                                           cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    EP_LAUNCH(ep_f32_to_bf16_kernel, ep_blocks(n), EP_THREADS, 0, stream, src, n, dst);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_cuda_bf16_to_f32(const uint16_t *src, int64_t n, float *dst,
                                           cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    EP_LAUNCH(ep_bf16_to_f32_kernel, ep_blocks(n), EP_THREADS, 0, stream, src, n, dst);
    return cudaGetLastError();
}
