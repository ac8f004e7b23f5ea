// Element types of checkpoints and wire payloads, and conversions to and
// from fp32 (round-to-nearest-even). Computation in epserve is fp32 on the CPU.
#ifndef EP_DTYPE_H
#define EP_DTYPE_H

#include "common/ep.h"

typedef enum {
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

size_t ep_dtype_size(ep_dtype t);          // bytes per element
const char *ep_dtype_name(ep_dtype t);     // safetensors spelling: "BF16", "F8_E4M3", ...
bool ep_dtype_parse(const char *s, ep_dtype *out); // false when unknown
bool ep_dtype_is_float(ep_dtype t);

float ep_bf16_to_f32(uint16_t h);
uint16_t ep_f32_to_bf16(float f);          // round to nearest even; NaN stays NaN
float ep_f16_to_f32(uint16_t h);
uint16_t ep_f32_to_f16(float f);
float ep_fp8_e4m3_to_f32(uint8_t v);
uint8_t ep_f32_to_fp8_e4m3(float f);       // saturates to +-448
float ep_fp8_e5m2_to_f32(uint8_t v);
static inline float ep_bf16_round(float f) { return ep_bf16_to_f32(ep_f32_to_bf16(f)); }

// Converts n elements of a float dtype to fp32. EP_ERR_UNSUPPORTED for
// integer/bool types (message names the dtype).
ep_status ep_dtype_to_f32(ep_dtype t, const void *src, float *dst, size_t n);
// Converts n fp32 values to dtype t (F32, F16, BF16, F8_E4M3).
ep_status ep_dtype_from_f32(ep_dtype t, const float *src, void *dst, size_t n);

#endif
