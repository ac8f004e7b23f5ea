// fp16 <-> fp32 as integer arithmetic (round to nearest even, NaN kept
// quiet, overflow to Inf, subnormals exact), written once for the host
// (common/dtype.c's ep_f32_to_f16 / ep_f16_to_f32) and the device (the f16
// wire rows of comm/cuda/wire_kernels.cu), so both write the same bits.
// Plain C; under nvcc the functions are __host__ __device__.
#ifndef EP_DTYPE_F16_H
#define EP_DTYPE_F16_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define EP_F16_HD __host__ __device__
#else
#define EP_F16_HD
#endif

static inline EP_F16_HD uint32_t ep_f16_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline EP_F16_HD float ep_f16_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline EP_F16_HD float ep_f16_decode(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return ep_f16_bits_f32(sign | 0x7f800000u | (mant << 13)); // Inf / NaN
    if (exp != 0) return ep_f16_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
    // Subnormal: mant * 2^-24, exact in fp32.
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
}

static inline EP_F16_HD uint16_t ep_f16_encode(float f)
{
    uint32_t u = ep_f16_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); // NaN, quiet
    if (a == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    // 65520 = halfway between 65504 (max) and 65536; the tie goes to the even
    // neighbour, which is the overflow, so everything >= 65520 becomes Inf.
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    int e = (int)(a >> 23) - 127;
    uint32_t m = (a & 0x7fffffu) | 0x800000u; // 24-bit significand
    if (a < 0x00800000u) return sign;         // fp32 subnormals are far below fp16's range
    int shift;
    uint32_t base;
    if (e >= -14) { // normal in fp16
        shift = 13;
        base = (uint32_t)(e + 15) << 10;
        m &= 0x7fffffu;
    } else {            // subnormal in fp16: units of 2^-24
        shift = -e - 1; // 14 .. 24 for e in [-15, -25]
        if (shift > 24) return sign;
        base = 0;
    }
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    uint32_t h = base + q;
    if (rem > half || (rem == half && (h & 1u))) h++; // carry may promote to the next exponent
    return (uint16_t)(sign | h);
}

#endif
