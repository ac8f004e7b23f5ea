// Element types of checkpoints and wire payloads, and conversions to and
// from fp32 (round-to-nearest-even). Computation in epserve is fp32 on the CPU.
#ifndef EP_DTYPE_H
#define EP_DTYPE_H

#include <string.h>

#include "common/dtype_hd.h"
#include "common/ep.h"

typedef enum {
    // Not a storage type: where an option takes a weight dtype, "the
    // checkpoint's own" (BF16 tensors stay BF16, everything else F32).
    EP_DTYPE_AUTO = -1,
    EP_DTYPE_F32,
    EP_DTYPE_F16,
    EP_DTYPE_BF16,
    EP_DTYPE_F8_E4M3,
    EP_DTYPE_F8_E5M2,
    EP_DTYPE_F64,
    EP_DTYPE_I64,
    EP_DTYPE_I32,
    EP_DTYPE_I16,
    EP_DTYPE_I8,
    EP_DTYPE_U8,
    EP_DTYPE_BOOL,
    EP_DTYPE_COUNT
} ep_dtype;

size_t ep_dtype_size(ep_dtype t);                  // bytes per element
const char *ep_dtype_name(ep_dtype t);             // safetensors spelling: "BF16", "F8_E4M3", ...
bool ep_dtype_parse(const char *s, ep_dtype *out); // false when unknown
bool ep_dtype_is_float(ep_dtype t);

float ep_bf16_to_f32(uint16_t h);
uint16_t ep_f32_to_bf16(float f); // round to nearest even; NaN stays NaN
float ep_f16_to_f32(uint16_t h);
uint16_t ep_f32_to_f16(float f);
float ep_fp8_e4m3_to_f32(uint8_t v);
uint8_t ep_f32_to_fp8_e4m3(float f); // saturates to +-448
float ep_fp8_e5m2_to_f32(uint8_t v);
// fp32 <-> its IEEE-754 bit pattern.
static inline uint32_t ep_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float ep_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline float ep_bf16_round(float f)
{
    return ep_bf16_to_f32(ep_f32_to_bf16(f));
}

// ---- fp8 rows (the fp8 dispatch wire, as DeepEP sends it) -----------------
// One row of `hidden` values is quantized in groups of EP_FP8_GROUP channels
// (the last group is shorter when hidden is not a multiple): each group has
// one fp32 scale = amax(|x| over the group) / 448, and each value is stored
// as e4m3(x / scale), so the group's largest value maps to e4m3's max.
// Decoding is code * scale in fp32. Layout of one row (4-byte aligned):
//   ceil(hidden / 128) x float32 scale, hidden x e4m3, zero padding to 4.
// Edge cases: an all-zero group has scale 0 and decodes to zeros; a group
// whose amax is below 448 * 2^-126 uses scale 2^-126 (1/scale stays finite);
// NaN and +-Inf are left out of amax and stored as e4m3 NaN (e4m3 has no
// Inf), so a non-finite input decodes as NaN and the rest of its group keeps
// full precision; values that land above 448 after scaling (fp32 rounding of
// the scale) saturate to 448. Error per finite element, s its group's scale
// (docs/wire-format.md): |decoded - x| <= (2^-4 + 2^-20) |x| + 2^-10 s,
// with 2^-10 s < 2^-18 amax; at most about amax / 16.
// EP_FP8_GROUP (128) and EP_FP8_E4M3_MAX (448) are common/dtype_hd.h's.
static inline int ep_fp8_row_groups(int hidden)
{
    return (hidden + EP_FP8_GROUP - 1) / EP_FP8_GROUP;
}
// Bytes of one encoded row: 4 ceil(hidden/128) + hidden rounded up to 4.
int64_t ep_fp8_row_bytes(int hidden);
// src [hidden] fp32 -> dst [ep_fp8_row_bytes(hidden)] bytes (any alignment).
void ep_fp8_row_encode(const float *src, int hidden, void *dst);
// src [ep_fp8_row_bytes(hidden)] bytes -> dst [hidden] fp32.
void ep_fp8_row_decode(const void *src, int hidden, float *dst);

// ---- fp8 block-scaled weights (FP8 checkpoints) ----------------------------
// How DeepSeek-V3 and Qwen3-*-FP8 store a Linear weight [rows, cols] (HF's
// [out, in]): e4m3 codes, and one fp32 scale per block of b_rows x b_cols
// values (the last block row / column shorter when rows / cols are not
// multiples), row-major [ceil(rows / b_rows), ceil(cols / b_cols)]: the
// checkpoint's `<name>_scale_inv`. The weight is code * scale ("inv" is
// historical: it multiplies). Blocks are 128 x 128 in the published
// checkpoints; any positive size works here.
static inline int64_t ep_fp8_blocks(int64_t n, int64_t block)
{
    return (n + block - 1) / block;
}
// codes [rows, cols] (any alignment) and scales [ceil(rows / b_rows),
// ceil(cols / b_cols)] -> dst [rows, cols] fp32, each value e4m3(code) * scale
// rounded once to fp32 (what DeepSeek's weight_dequant computes before its
// cast). NaN codes decode to NaN.
void ep_fp8_block_dequant(const uint8_t *codes, const float *scales, int64_t rows, int64_t cols,
                          int64_t b_rows, int64_t b_cols, float *dst);
// The inverse, as DeepSeek's block quantizer: per block scale = amax / 448
// (amax over its finite values) and code = e4m3(x / scale), so the block's
// largest value maps to e4m3's max. Edge cases as the fp8 rows above: an
// all-zero block has scale 0 (decodes to zeros), a tiny amax uses scale
// 2^-126, NaN and +-Inf are left out of amax and stored as NaN. Per element,
// s its block's scale: |decoded - x| <= (2^-4 + 2^-20) |x| + 2^-10 s.
void ep_fp8_block_quant(const float *src, int64_t rows, int64_t cols, int64_t b_rows,
                        int64_t b_cols, uint8_t *codes, float *scales);

// Converts n elements of a float dtype to fp32. EP_ERR_UNSUPPORTED for
// integer/bool types (message names the dtype).
ep_status ep_dtype_to_f32(ep_dtype t, const void *src, float *dst, size_t n);
// Converts n fp32 values to dtype t (F32, F16, BF16, F8_E4M3).
ep_status ep_dtype_from_f32(ep_dtype t, const float *src, void *dst, size_t n);

// A weight storage option (--dtype, --expert-dtype): "auto" (EP_DTYPE_AUTO),
// "f32" or "bf16"; EP_ERR_ARG names what was found.
ep_status ep_weight_dtype_parse(const char *s, ep_dtype *out);

#endif
