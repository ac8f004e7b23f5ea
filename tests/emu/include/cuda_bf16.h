// Emulated CUDA device (EP_CUDA_EMU=ON, tests only): __nv_bfloat16 and the
// conversions the project's kernels use, bit-exact with CUDA's: fp32 ->
// bf16 rounds to nearest, ties to even (cvt.rn.bf16.f32); every NaN becomes
// the canonical 0x7fff, sign and payload dropped, as cuda_bf16.hpp and the
// device instruction do. bf16 -> fp32 is exact (the bits shifted up).
#ifndef EP_EMU_CUDA_BF16_H
#define EP_EMU_CUDA_BF16_H

#include <stdint.h>
#include <string.h>

typedef struct __nv_bfloat16 {
    unsigned short x;
} __nv_bfloat16;

static inline unsigned short emu_f32_to_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    const uint32_t rem = u << 16, hi = u >> 16;
    // Above half, or exactly half with an odd kept bit: round up (a carry
    // into the exponent is right, up to inf).
    return (unsigned short)(rem > 0x80000000u || (rem == 0x80000000u && (hi & 1u)) ? hi + 1 : hi);
}

static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    __nv_bfloat16 r;
    r.x = emu_f32_to_bf16_bits(f);
    return r;
}

static inline __nv_bfloat16 __float2bfloat16(float f)
{
    return __float2bfloat16_rn(f);
}

static inline float __bfloat162float(__nv_bfloat16 h)
{
    const uint32_t u = (uint32_t)h.x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#endif
