// Element types: sizes, safetensors spellings, and exact conversions between
// fp32 and bf16 / fp16 / fp8 (e4m3, e5m2), rounding to nearest even.
// Integer and bool tensors are only described here, never converted.
#include "common/dtype.h"
#include "common/dtype_hd.h"

#include <float.h>
#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
    bool is_float;
} ep_dtype_info[EP_DTYPE_COUNT] = {
    [EP_DTYPE_F32] = {"F32", 4, true},         [EP_DTYPE_F16] = {"F16", 2, true},
    [EP_DTYPE_BF16] = {"BF16", 2, true},       [EP_DTYPE_F8_E4M3] = {"F8_E4M3", 1, true},
    [EP_DTYPE_F8_E5M2] = {"F8_E5M2", 1, true}, [EP_DTYPE_F64] = {"F64", 8, true},
    [EP_DTYPE_I64] = {"I64", 8, false},        [EP_DTYPE_I32] = {"I32", 4, false},
    [EP_DTYPE_I16] = {"I16", 2, false},        [EP_DTYPE_I8] = {"I8", 1, false},
    [EP_DTYPE_U8] = {"U8", 1, false},          [EP_DTYPE_BOOL] = {"BOOL", 1, false},
};

size_t ep_dtype_size(ep_dtype t)
{
    EP_ASSERT((unsigned)t < EP_DTYPE_COUNT);
    return ep_dtype_info[t].size;
}

const char *ep_dtype_name(ep_dtype t)
{
    if ((unsigned)t >= EP_DTYPE_COUNT) return "?";
    return ep_dtype_info[t].name;
}

bool ep_dtype_parse(const char *s, ep_dtype *out)
{
    if (!s) return false;
    for (int i = 0; i < EP_DTYPE_COUNT; i++) {
        if (strcmp(s, ep_dtype_info[i].name) == 0) {
            *out = (ep_dtype)i;
            return true;
        }
    }
    return false;
}

bool ep_dtype_is_float(ep_dtype t)
{
    return (unsigned)t < EP_DTYPE_COUNT && ep_dtype_info[t].is_float;
}

// ---- bf16 ------------------------------------------------------------------

float ep_bf16_to_f32(uint16_t h)
{
    return ep_bits_f32((uint32_t)h << 16);
}

uint16_t ep_f32_to_bf16(float f)
{
    uint32_t u = ep_f32_bits(f);
    // A NaN whose payload sits only in the low 16 bits would truncate to Inf:
    // force the quiet bit so it stays NaN.
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even;
    // a carry out of the mantissa correctly bumps the exponent (up to Inf).
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// ---- fp16 ------------------------------------------------------------------

float ep_f16_to_f32(uint16_t h)
{
    return ep_f16_decode(h);
}

uint16_t ep_f32_to_f16(float f)
{
    return ep_f16_encode(f);
}

// ---- fp8 -------------------------------------------------------------------
// e4m3 (OCP "FN" variant): bias 7, no Inf, S.1111.111 is NaN, max 448.
// e5m2: bias 15, IEEE-like (Inf and NaN), i.e. the top byte of an fp16.

float ep_fp8_e4m3_to_f32(uint8_t v)
{
    bool neg = v & 0x80u;
    uint32_t exp = (v >> 3) & 0xfu;
    uint32_t mant = v & 0x7u;
    float r;
    if (exp == 0xf && mant == 0x7) return ep_bits_f32((neg ? 0x80000000u : 0) | 0x7fc00000u);
    if (exp == 0)
        r = (float)mant * 0x1p-9f;
    else
        r = ep_bits_f32(((exp + 120u) << 23) | (mant << 20));
    return neg ? -r : r;
}

// Round to nearest integer, ties to even, without depending on the FP
// environment's rounding mode. x is non-negative and small.
static float round_even(float x)
{
    float r = floorf(x);
    float d = x - r;
    if (d > 0.5f || (d == 0.5f && fmodf(r, 2.0f) != 0.0f)) r += 1.0f;
    return r;
}

uint8_t ep_f32_to_fp8_e4m3(float f)
{
    uint32_t u = ep_f32_bits(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    if (isnan(f)) return 0x7f;
    float a = fabsf(f);
    // Saturating (as the fp8 training/serving kernels do): Inf and anything
    // at or past 448 become +-448, never NaN.
    if (a >= 448.0f) return (uint8_t)(sign | 0x7eu);
    if (a < 0x1p-6f) { // subnormal range: units of 2^-9; q == 8 encodes 2^-6 exactly
        uint32_t q = (uint32_t)round_even(a * 512.0f);
        return (uint8_t)(sign | q);
    }
    int e = (int)((u >> 23) & 0xffu) - 127; // -6 .. 8
    float scaled = ldexpf(a, 3 - e);        // [8, 16)
    uint32_t q = (uint32_t)round_even(scaled);
    if (q == 16) {
        q = 8;
        e++;
    }
    uint32_t bits = ((uint32_t)(e + 7) << 3) | (q - 8);
    if (bits > 0x7eu) bits = 0x7eu; // cannot happen below 448, kept for safety of the encoding
    return (uint8_t)(sign | bits);
}

float ep_fp8_e5m2_to_f32(uint8_t v)
{
    return ep_f16_to_f32((uint16_t)((uint16_t)v << 8));
}

// ---- fp8 rows ----------------------------------------------------------------
// The row codec runs once per dispatched (token, rank) record, so it is
// written for speed: integer rounding on the fp32 bits instead of
// ep_f32_to_fp8_e4m3's floorf/ldexpf, no per-element calls through pointers.
// tests/unit/test_dtype.c checks it bit for bit against that plain reference.

// GCC's -O2 vectorizes only loops whose vector code needs no scalar
// epilogue or alias check ("very cheap" cost model); these loops need both
// and run 3-4x faster vectorized, so they get the dynamic cost model (-O3's).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("vect-cost-model=dynamic")
#endif

int64_t ep_fp8_row_bytes(int hidden)
{
    EP_ASSERT(hidden >= 0);
    return 4 * (int64_t)ep_fp8_row_groups(hidden) + (((int64_t)hidden + 3) & ~(int64_t)3);
}

void ep_fp8_row_encode(const float *src, int hidden, void *dst)
{
    EP_ASSERT(hidden >= 0);
    const int G = ep_fp8_row_groups(hidden);
    uint8_t *scales = dst, *codes = scales + 4 * (size_t)G;
    for (int g = 0; g < G; g++) {
        const int b = g * EP_FP8_GROUP, e = EP_MIN(b + EP_FP8_GROUP, hidden);
        // amax over the finite values: for non-negative floats the order of
        // the bit patterns is the order of the values, and Inf/NaN (>= the
        // bits of Inf) are dropped.
        int32_t amax_bits = 0; // signed: SSE2 has a signed 32-bit compare only
        for (int h = b; h < e; h++) {
            int32_t a = (int32_t)(ep_f32_bits(src[h]) & 0x7fffffffu);
            a = a < 0x7f800000 ? a : 0;
            amax_bits = a > amax_bits ? a : amax_bits;
        }
        const float amax = ep_bits_f32((uint32_t)amax_bits);
        float scale = 0, inv = 0; // all zero: scale 0, and x * 0 keeps NaN a NaN
        if (amax > 0) {
            scale = amax / EP_FP8_E4M3_MAX;
            if (scale < FLT_MIN) scale = FLT_MIN; // keeps 1 / scale finite
            inv = 1.0f / scale;
        }
        memcpy(scales + 4 * (size_t)g, &scale, 4);
        for (int h = b; h < e; h++)
            codes[h] = ep_e4m3_code(src[h] * inv);
    }
    for (int h = hidden; h & 3; h++)
        codes[h] = 0; // padding, zero so payloads are reproducible
}

void ep_fp8_row_decode(const void *src, int hidden, float *dst)
{
    EP_ASSERT(hidden >= 0);
    const int G = ep_fp8_row_groups(hidden);
    const uint8_t *scales = src, *codes = scales + 4 * (size_t)G;
    for (int g = 0; g < G; g++) {
        const int b = g * EP_FP8_GROUP, e = EP_MIN(b + EP_FP8_GROUP, hidden);
        float scale;
        memcpy(&scale, scales + 4 * (size_t)g, 4);
        for (int h = b; h < e; h++)
            dst[h] = ep_e4m3_value(codes[h]) * scale;
    }
}

// ---- fp8 block-scaled weights -------------------------------------------------

// The block's scale from its amax over finite values, as the row codec's.
static inline float block_scale(float amax)
{
    if (!(amax > 0)) return 0;
    float scale = amax / EP_FP8_E4M3_MAX;
    return scale < FLT_MIN ? FLT_MIN : scale;
}

void ep_fp8_block_quant(const float *src, int64_t rows, int64_t cols, int64_t b_rows,
                        int64_t b_cols, uint8_t *codes, float *scales)
{
    EP_ASSERT(rows >= 0 && cols >= 0 && b_rows > 0 && b_cols > 0);
    const int64_t nbc = ep_fp8_blocks(cols, b_cols);
    for (int64_t r0 = 0; r0 < rows; r0 += b_rows) {
        const int64_t r1 = EP_MIN(r0 + b_rows, rows);
        float *srow = scales + (r0 / b_rows) * nbc;
        // amax of each block of this block row, bit patterns as in the row
        // codec (non-negative floats order as their bits; Inf / NaN dropped).
        for (int64_t bc = 0; bc < nbc; bc++) {
            const int64_t c0 = bc * b_cols, c1 = EP_MIN(c0 + b_cols, cols);
            int32_t amax_bits = 0;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++) {
                    int32_t a = (int32_t)(ep_f32_bits(src[r * cols + c]) & 0x7fffffffu);
                    a = a < 0x7f800000 ? a : 0;
                    amax_bits = a > amax_bits ? a : amax_bits;
                }
            srow[bc] = block_scale(ep_bits_f32((uint32_t)amax_bits));
        }
        for (int64_t r = r0; r < r1; r++)
            for (int64_t bc = 0; bc < nbc; bc++) {
                const int64_t c0 = bc * b_cols, c1 = EP_MIN(c0 + b_cols, cols);
                const float scale = srow[bc];
                // x / scale as DeepSeek's quantizer; a zero block: x * 0 keeps
                // NaN a NaN and everything else 0.
                for (int64_t c = c0; c < c1; c++) {
                    const float x = src[r * cols + c];
                    codes[r * cols + c] = ep_e4m3_code(scale > 0 ? x / scale : x * 0.0f);
                }
            }
    }
}

void ep_fp8_block_dequant(const uint8_t *codes, const float *scales, int64_t rows, int64_t cols,
                          int64_t b_rows, int64_t b_cols, float *dst)
{
    EP_ASSERT(rows >= 0 && cols >= 0 && b_rows > 0 && b_cols > 0);
    const int64_t nbc = ep_fp8_blocks(cols, b_cols);
    for (int64_t r = 0; r < rows; r++) {
        const float *srow = scales + (r / b_rows) * nbc;
        const uint8_t *cr = codes + r * cols;
        float *dr = dst + r * cols;
        for (int64_t bc = 0; bc < nbc; bc++) {
            const int64_t c0 = bc * b_cols, c1 = EP_MIN(c0 + b_cols, cols);
            const float scale = srow[bc];
            for (int64_t c = c0; c < c1; c++)
                dr[c] = ep_e4m3_value(cr[c]) * scale;
        }
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// ---- bulk conversion ---------------------------------------------------------
// Sources may be unaligned (safetensors offsets are arbitrary): read with memcpy.

ep_status ep_dtype_to_f32(ep_dtype t, const void *src, float *dst, size_t n)
{
    const unsigned char *p = src;
    switch (t) {
    case EP_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return EP_OK;
    case EP_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return EP_OK;
    case EP_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = ep_bf16_to_f32(h);
        }
        return EP_OK;
    case EP_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = ep_f16_to_f32(h);
        }
        return EP_OK;
    case EP_DTYPE_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            dst[i] = ep_fp8_e4m3_to_f32(p[i]);
        return EP_OK;
    case EP_DTYPE_F8_E5M2:
        for (size_t i = 0; i < n; i++)
            dst[i] = ep_fp8_e5m2_to_f32(p[i]);
        return EP_OK;
    default:
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "cannot convert dtype %s to F32: expected a float dtype "
                         "(F32, F64, F16, BF16, F8_E4M3, F8_E5M2)",
                         ep_dtype_name(t));
    }
}

ep_status ep_dtype_from_f32(ep_dtype t, const float *src, void *dst, size_t n)
{
    unsigned char *p = dst;
    switch (t) {
    case EP_DTYPE_F32:
        memcpy(dst, src, n * 4);
        return EP_OK;
    case EP_DTYPE_F64:
        for (size_t i = 0; i < n; i++) {
            double d = src[i];
            memcpy(p + 8 * i, &d, 8);
        }
        return EP_OK;
    case EP_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = ep_f32_to_bf16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        return EP_OK;
    case EP_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = ep_f32_to_f16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        return EP_OK;
    case EP_DTYPE_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            p[i] = ep_f32_to_fp8_e4m3(src[i]);
        return EP_OK;
    default:
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "cannot convert F32 to dtype %s: expected one of F32, F64, F16, "
                         "BF16, F8_E4M3",
                         ep_dtype_name(t));
    }
}

ep_status ep_weight_dtype_parse(const char *s, ep_dtype *out)
{
    if (!strcmp(s, "auto"))
        *out = EP_DTYPE_AUTO;
    else if (!strcmp(s, "f32"))
        *out = EP_DTYPE_F32;
    else if (!strcmp(s, "bf16"))
        *out = EP_DTYPE_BF16;
    else
        return ep_errorf(EP_ERR_ARG, "weight dtype: expected auto, f32 or bf16, found '%s'", s);
    return EP_OK;
}
