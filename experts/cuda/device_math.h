// Device helpers shared by the .cu files of the experts and of the model's
// device ops (model/cuda/): BF16 loads and stores as uint16_t bit patterns
// and SiLU, written once so both compute the same bits. Include only from
// .cu files, after <cuda_bf16.h>.
#ifndef EP_EXPERTS_CUDA_DEVICE_MATH_H
#define EP_EXPERTS_CUDA_DEVICE_MATH_H

#include <stdint.h>

static __device__ __forceinline__ float ep_ld_bf16(const uint16_t *p, int64_t i)
{
    return __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(p)[i]);
}

static __device__ __forceinline__ void ep_st_bf16(uint16_t *p, int64_t i, float v)
{
    reinterpret_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v);
}

// silu(x) = x * sigmoid(x), with exp only of -|x| (no overflow to inf), as
// the CPU backend does.
static __device__ __forceinline__ float ep_silu(float x)
{
    if (x >= 0.0f) return x / (1.0f + __expf(-x));
    float t = __expf(x);
    if (t == 0.0f) return -0.0f; // x below about -88 or -inf: the limit, not -inf * 0 = NaN
    return x * (t / (1.0f + t));
}

#endif
