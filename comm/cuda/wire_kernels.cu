// The row kernels of wire_cuda.h: grid-stride loops over (row, channel), one
// element per thread, no atomics, so results do not depend on the launch.
#include <cuda_bf16.h>

#include "cluster/cuda/launch.h"
#include "comm/cuda/wire_cuda.h"
#include "common/dtype_f16.h"

#define EP_WIRE_THREADS 256

static unsigned ep_wire_blocks(int64_t n)
{
    int64_t b = (n + EP_WIRE_THREADS - 1) / EP_WIRE_THREADS;
    if (b < 1) b = 1;
    return (unsigned)(b > 65535 * 8 ? 65535 * 8 : b);
}

static __device__ __forceinline__ float ep_wire_ld(const uint8_t *row, int64_t h, ep_wire_row w)
{
    if (w == EP_WIRE_ROW_F32) return reinterpret_cast<const float *>(row)[h];
    if (w == EP_WIRE_ROW_F16) return ep_f16_decode(reinterpret_cast<const uint16_t *>(row)[h]);
    return __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(row)[h]);
}

// Element (i, h) of the packed rows; h == H is the 16-bit pad of an odd row.
__global__ void ep_wire_pack_kernel(const float *src, const int *idx, int n, int H, ep_wire_row w,
                                    int64_t row_bytes, uint8_t *dst)
{
    const int Hp = w == EP_WIRE_ROW_F32 ? H : H + (H & 1);
    const int64_t total = (int64_t)n * Hp;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / Hp, h = i % Hp;
        uint8_t *row = dst + r * row_bytes;
        if (w == EP_WIRE_ROW_F32) {
            reinterpret_cast<float *>(row)[h] = src[(int64_t)idx[r] * H + h];
        } else if (w == EP_WIRE_ROW_F16) { // f16(+0.0f) is zero bits too
            reinterpret_cast<uint16_t *>(row)[h] =
                ep_f16_encode(h < H ? src[(int64_t)idx[r] * H + h] : 0.0f);
        } else {
            // bf16(+0.0f) is all zero bits: the pad of an odd row.
            reinterpret_cast<__nv_bfloat16 *>(row)[h] =
                __float2bfloat16_rn(h < H ? src[(int64_t)idx[r] * H + h] : 0.0f);
        }
    }
}

__global__ void ep_wire_gather_kernel(const uint8_t *rows, const float *own, const int *idx, int n,
                                      int H, ep_wire_row w, int64_t row_bytes, float *out)
{
    const int64_t total = (int64_t)n * H;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t k = i / H, h = i % H;
        const int s = idx[k];
        out[i] = s >= 0 ? ep_wire_ld(rows + (int64_t)s * row_bytes, h, w)
                        : own[(int64_t)(-s - 1) * H + h];
    }
}

__global__ void ep_wire_sum_kernel(const uint8_t *rows, const float *own, const int *off,
                                   const int *ent, int T, int H, ep_wire_row w, int64_t row_bytes,
                                   float *out)
{
    const int64_t total = (int64_t)T * H;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / H, h = i % H;
        float acc = 0.0f;
        for (int e = off[t]; e < off[t + 1]; e++) {
            const int s = ent[e];
            acc += s >= 0 ? ep_wire_ld(rows + (int64_t)s * row_bytes, h, w)
                          : own[(int64_t)(-s - 1) * H + h];
        }
        out[i] = acc;
    }
}

extern "C" cudaError_t ep_cuda_wire_pack(const float *src, const int *idx, int n, int H,
                                         ep_wire_row wire, int64_t row_bytes, uint8_t *dst,
                                         cudaStream_t stream)
{
    const int64_t total = (int64_t)n * (H + 1);
    if (n <= 0 || H <= 0) return cudaSuccess;
    EP_LAUNCH(ep_wire_pack_kernel, ep_wire_blocks(total), EP_WIRE_THREADS, 0, stream, src, idx, n,
              H, wire, row_bytes, dst);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_cuda_wire_gather(const uint8_t *rows, const float *own, const int *idx,
                                           int n, int H, ep_wire_row wire, int64_t row_bytes,
                                           float *out, cudaStream_t stream)
{
    const int64_t total = (int64_t)n * H;
    if (total <= 0) return cudaSuccess;
    EP_LAUNCH(ep_wire_gather_kernel, ep_wire_blocks(total), EP_WIRE_THREADS, 0, stream, rows, own,
              idx, n, H, wire, row_bytes, out);
    return cudaGetLastError();
}

extern "C" cudaError_t ep_cuda_wire_sum(const uint8_t *rows, const float *own, const int *off,
                                        const int *ent, int T, int H, ep_wire_row wire,
                                        int64_t row_bytes, float *out, cudaStream_t stream)
{
    const int64_t total = (int64_t)T * H;
    if (total <= 0) return cudaSuccess;
    EP_LAUNCH(ep_wire_sum_kernel, ep_wire_blocks(total), EP_WIRE_THREADS, 0, stream, rows, own, off,
              ent, T, H, wire, row_bytes, out);
    return cudaGetLastError();
}
