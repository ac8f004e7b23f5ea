// The row kernels of wire_cuda.h: grid-stride loops over (row, channel), one
// element per thread, no atomics, so results do not depend on the launch.
#include <cuda_bf16.h>

#include "cluster/cuda/launch.h"
#include "comm/cuda/wire_cuda.h"
#include "common/dtype_hd.h"

#define EP_WIRE_THREADS 256

static unsigned ep_wire_blocks(int64_t n)
{
    int64_t b = (n + EP_WIRE_THREADS - 1) / EP_WIRE_THREADS;
    if (b < 1) b = 1;
    return (unsigned)(b > 65535 * 8 ? 65535 * 8 : b);
}

// Channel h of a row; G: the fp8 row's scale groups (its codes follow them).
static __device__ __forceinline__ float ep_wire_ld(const uint8_t *row, int64_t h, ep_wire_row w,
                                                   int G)
{
    if (w == EP_WIRE_ROW_F32) return reinterpret_cast<const float *>(row)[h];
    if (w == EP_WIRE_ROW_FP8)
        return ep_e4m3_value(row[4 * (int64_t)G + h]) *
               reinterpret_cast<const float *>(row)[h / EP_FP8_GROUP];
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

// One (row, group) of fp8 rows per thread, as ep_fp8_row_encode: the amax
// of the group's finite values, scale = amax / 448 (at least FLT_MIN), the
// codes of x / scale (times 1 / scale, as the host); the last group also
// zeroes the row's padding.
__global__ void ep_wire_pack_fp8_kernel(const float *src, const int *idx, int n, int H,
                                        int64_t row_bytes, uint8_t *dst)
{
    const int G = (H + EP_FP8_GROUP - 1) / EP_FP8_GROUP;
    const int64_t total = (int64_t)n * G;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / G;
        const int g = (int)(i % G), b = g * EP_FP8_GROUP;
        const int e = b + EP_FP8_GROUP < H ? b + EP_FP8_GROUP : H;
        const float *x = src + (int64_t)idx[r] * H;
        uint8_t *row = dst + r * row_bytes, *codes = row + 4 * (int64_t)G;
        uint32_t amax_bits = 0;
        for (int h = b; h < e; h++) {
            uint32_t a = ep_hd_f32_bits(x[h]) & 0x7fffffffu;
            a = a < 0x7f800000u ? a : 0;
            amax_bits = a > amax_bits ? a : amax_bits;
        }
        const float amax = ep_hd_bits_f32(amax_bits);
        float scale = 0, inv = 0;
        if (amax > 0) {
            scale = amax / EP_FP8_E4M3_MAX;
            if (scale < 0x1p-126f) scale = 0x1p-126f; // FLT_MIN
            inv = 1.0f / scale;
        }
        reinterpret_cast<float *>(row)[g] = scale;
        for (int h = b; h < e; h++)
            codes[h] = ep_e4m3_code(x[h] * inv);
        if (g == G - 1)
            for (int h = H; h & 3; h++)
                codes[h] = 0;
    }
}

__global__ void ep_wire_gather_kernel(const uint8_t *rows, const float *own, const int *idx, int n,
                                      int H, ep_wire_row w, int64_t row_bytes, float *out)
{
    const int64_t total = (int64_t)n * H;
    const int G = (H + EP_FP8_GROUP - 1) / EP_FP8_GROUP;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t k = i / H, h = i % H;
        const int s = idx[k];
        out[i] = s >= 0 ? ep_wire_ld(rows + (int64_t)s * row_bytes, h, w, G)
                        : own[(int64_t)(-s - 1) * H + h];
    }
}

__global__ void ep_wire_sum_kernel(const uint8_t *rows, const float *own, const int *off,
                                   const int *ent, int T, int H, ep_wire_row w, int64_t row_bytes,
                                   float *out)
{
    const int64_t total = (int64_t)T * H;
    const int G = (H + EP_FP8_GROUP - 1) / EP_FP8_GROUP;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / H, h = i % H;
        float acc = 0.0f;
        for (int e = off[t]; e < off[t + 1]; e++) {
            const int s = ent[e];
            acc += s >= 0 ? ep_wire_ld(rows + (int64_t)s * row_bytes, h, w, G)
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
    if (wire == EP_WIRE_ROW_FP8) {
        const int64_t groups = (int64_t)n * ((H + EP_FP8_GROUP - 1) / EP_FP8_GROUP);
        EP_LAUNCH(ep_wire_pack_fp8_kernel, ep_wire_blocks(groups), EP_WIRE_THREADS, 0, stream, src,
                  idx, n, H, row_bytes, dst);
        return cudaGetLastError();
    }
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
