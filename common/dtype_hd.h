// The codecs the host and the device must share bit for bit, written once:
// fp16 <-> fp32 as integer arithmetic (round to nearest even, NaN kept
// quiet, overflow to Inf, subnormals exact; common/dtype.c's ep_f32_to_f16
// and ep_f16_to_f32) and the e4m3 code and value of the fp8 row codec
// (ep_fp8_row_encode / decode), used by the wire rows of
// comm/cuda/wire_kernels.cu. Plain C; under nvcc the functions are
// __host__ __device__.
#ifndef EP_DTYPE_HD_H
#define EP_DTYPE_HD_H

#include <stdint.h>
#include <string.h>

// The fp8 row's group of channels per scale, and e4m3's largest value
// (common/dtype.h describes the row).
#define EP_FP8_GROUP    128
#define EP_FP8_E4M3_MAX 448.0f

#ifdef __CUDACC__
#define EP_HD_FN __host__ __device__
#else
#define EP_HD_FN
#endif

static inline EP_HD_FN uint32_t ep_hd_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline EP_HD_FN float ep_hd_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline EP_HD_FN float ep_f16_decode(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return ep_hd_bits_f32(sign | 0x7f800000u | (mant << 13)); // Inf / NaN
    if (exp != 0) return ep_hd_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
    // Subnormal: mant * 2^-24, exact in fp32.
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
}

static inline EP_HD_FN uint16_t ep_f16_encode(float f)
{
    uint32_t u = ep_hd_f32_bits(f);
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

// e4m3 code of q: round to nearest even; |q| >= 448 saturates to 448 (0x7e),
// NaN and +-Inf become NaN (0x7f with q's sign). Normal range (|q| >= 2^-6):
// adding 0x7ffff plus the lowest kept bit to the fp32 bits rounds the 23-bit
// mantissa to 3 bits, a carry bumping the exponent; rebiasing 127 -> 7 is a
// subtraction of 120 << 3. Subnormal range: adding 2^14, whose ulp is e4m3's
// subnormal step 2^-9, lets the FPU round (default round-to-nearest-even)
// and leaves the code (0..8, 8 being 2^-6) in the low mantissa bits.
static inline EP_HD_FN uint8_t ep_e4m3_code(float q)
{
    // Both roundings are computed and one selected with masks, no branches,
    // so the loop over a group vectorizes (each is garbage outside its range).
    uint32_t u = ep_hd_f32_bits(q), a = u & 0x7fffffffu;
    uint32_t normal = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - (120u << 3);
    uint32_t sub = ep_hd_f32_bits(ep_hd_bits_f32(a) + 0x1p14f) - 0x46800000u; // bits of 2^14
    uint32_t is_sub = 0u - (uint32_t)(a < 0x3c800000u);                       // below 2^-6
    uint32_t c = (sub & is_sub) | (normal & ~is_sub);
    uint32_t sat = 0u - (uint32_t)(a >= 0x43e00000u); // 448 and above
    c = (c & ~sat) | (0x7eu & sat);
    c |= 0x7fu & (0u - (uint32_t)(a >= 0x7f800000u)); // Inf, NaN: 0x7e | 0x7f
    return (uint8_t)(((u >> 24) & 0x80u) | c);
}

// Value of an e4m3 code: the exponent and mantissa fields moved into fp32
// position and rebiased. A subnormal (exponent field 0), m * 2^-9, is read
// with exponent field 1 as 2^-6 + m * 2^-9 and 2^-6 subtracted (exact), so
// every code takes the same branch-free path.
static inline EP_HD_FN float ep_e4m3_value(uint8_t c)
{
    uint32_t m = c & 0x7fu, is_sub = 0u - (uint32_t)(m < 8);
    float v = ep_hd_bits_f32((m << 20) + (120u << 23) + (is_sub & (1u << 23))) -
              ep_hd_bits_f32(is_sub & 0x3c800000u); // 2^-6 or 0
    uint32_t nan = 0u - (uint32_t)(m == 0x7fu);
    uint32_t b = (ep_hd_f32_bits(v) & ~nan) | (0x7fc00000u & nan);
    return ep_hd_bits_f32(b | ((uint32_t)(c & 0x80u) << 24));
}

#endif
