// Emulated CUDA device (EP_CUDA_EMU=ON, tests only): the FP8 storage types
// and fp32 -> fp8 conversion of cuda_fp8.h, bit-exact with CUDA's
// __nv_cvt_float_to_fp8: round to nearest, ties to even; magnitudes at or
// below half the smallest subnormal become +-0; past the largest finite
// value plus half an ulp, __NV_SATFINITE gives +-max (e4m3 448, e5m2 57344)
// and __NV_NOSAT e4m3 NaN (0x7F) or e5m2 Inf (0x7C); NaN becomes 0x7F (e4m3)
// or 0x7E | the input's top two mantissa bits (e5m2); the sign bit is kept
// in every case. No kernel of the project uses FP8 today (the fp8 wire is
// packed on the host, common/dtype.h); this is here for the first one that
// does. fp8 -> fp32 is exact (emu_fp8_to_float, behind the C++ operators).
#ifndef EP_EMU_CUDA_FP8_H
#define EP_EMU_CUDA_FP8_H

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef unsigned char __nv_fp8_storage_t;
typedef enum { __NV_NOSAT, __NV_SATFINITE } __nv_saturation_t;
typedef enum { __NV_E4M3, __NV_E5M2 } __nv_fp8_interpretation_t;

static inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t sat,
                                                       __nv_fp8_interpretation_t kind)
{
    const int e4 = kind == __NV_E4M3;
    const int mbits = e4 ? 3 : 2, bias = e4 ? 7 : 15, emin = 1 - bias;
    const double maxv = e4 ? 448.0 : 57344.0;
    const unsigned char maxcode = e4 ? 0x7E : 0x7B;
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const unsigned char sign = (unsigned char)((u >> 24) & 0x80u);
    if (isnan(x)) return (unsigned char)(sign | (e4 ? 0x7F : 0x7E | ((u >> 21) & 3u)));
    const double a = fabs((double)x);
    const double quantum_min = ldexp(1.0, emin - mbits); // the smallest subnormal
    if (a <= quantum_min / 2) return sign;
    // Past max + half an ulp of the top binade (exactly there rounds to even:
    // down to max for e4m3, whose max mantissa is even; up for e5m2's odd one).
    const double half_ulp = ldexp(1.0, (e4 ? 8 : 15) - mbits - 1);
    if (a > maxv + half_ulp || (!e4 && a == maxv + half_ulp))
        return (unsigned char)(sign | (sat == __NV_SATFINITE ? maxcode : e4 ? 0x7F : 0x7C));
    int e;
    frexp(a, &e); // a = m * 2^e, m in [0.5, 1): the binade's exponent is e - 1
    const int ex = e - 1 < emin ? emin : e - 1;
    const double quantum = ldexp(1.0, ex - mbits);
    double q = floor(a / quantum); // a / quantum is exact (a power of two apart)
    const double rest = a / quantum - q;
    if (rest > 0.5 || (rest == 0.5 && fmod(q, 2.0) != 0.0)) q += 1.0;
    // q in [0, 2^(mbits+1)]; 2^(mbits+1) carries into the next binade.
    int code_exp = e - 1 < emin ? 0 : ex + bias;
    unsigned m = (unsigned)q;
    if (code_exp == 0) { // subnormal: q < 2^mbits, or exactly 2^mbits = the smallest normal
        if (m >> mbits) code_exp = 1, m -= 1u << mbits;
    } else {
        if (m >> (mbits + 1)) code_exp++, m >>= 1;
        m -= 1u << mbits;
    }
    return (unsigned char)(sign | (code_exp << mbits) | m);
}

// Exact fp8 -> fp32 (NaN stays NaN with its sign; e5m2 Inf stays Inf).
static inline float emu_fp8_to_float(__nv_fp8_storage_t v, __nv_fp8_interpretation_t kind)
{
    const int e4 = kind == __NV_E4M3;
    const int mbits = e4 ? 3 : 2, bias = e4 ? 7 : 15;
    const unsigned ex = (v & 0x7Fu) >> mbits, m = v & ((1u << mbits) - 1u);
    const float s = (v & 0x80u) ? -1.0f : 1.0f;
    if (e4 && ex == 15 && m == 7) return s * NAN;
    if (!e4 && ex == 31) return m ? s * NAN : s * INFINITY;
    if (ex == 0) return s * ldexpf((float)m, 1 - bias - mbits);
    return s * ldexpf((float)(m | (1u << mbits)), (int)ex - bias - mbits);
}

#ifdef __cplusplus
struct __nv_fp8_e4m3 {
    __nv_fp8_storage_t __x;
    __nv_fp8_e4m3() = default;
    explicit __nv_fp8_e4m3(float f) : __x(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3)) {}
    explicit operator float() const
    {
        return emu_fp8_to_float(__x, __NV_E4M3);
    }
};
struct __nv_fp8_e5m2 {
    __nv_fp8_storage_t __x;
    __nv_fp8_e5m2() = default;
    explicit __nv_fp8_e5m2(float f) : __x(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E5M2)) {}
    explicit operator float() const
    {
        return emu_fp8_to_float(__x, __NV_E5M2);
    }
};
#endif

#endif
