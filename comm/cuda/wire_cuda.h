// Rows of the MoE all-to-all packed, unpacked and summed on the device (the
// MoE layer with activations on the device, model/moe_dev.c): hidden rows in
// the wire dtype of comm/comm.h (fp32, or bf16 / f16 rounded to nearest even
// and padded to 4 bytes with zeros, the bits ep_dtype_from_f32 writes: f16
// through common/dtype_hd.h, the host's own routine; or the fp8 row of
// common/dtype.h, one fp32 scale per 128 channels then the e4m3 codes, as
// ep_fp8_row_encode writes it, with dtype_hd.h's code and value), so a
// device payload is byte for byte the row part of the host's records.
// Launchers only enqueue on `stream` and return the launch status. Private
// to GPU code (CUDA types); EP_CUDA=ON builds only.
#ifndef EP_COMM_WIRE_CUDA_H
#define EP_COMM_WIRE_CUDA_H

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The row dtypes the kernels encode (what comm.h's F32, BF16, F16 and
// F8_E4M3 wires send; an F8_E4M3 wire's combine rows are BF16).
typedef enum { EP_WIRE_ROW_F32, EP_WIRE_ROW_BF16, EP_WIRE_ROW_F16, EP_WIRE_ROW_FP8 } ep_wire_row;

// dst + i * row_bytes = encode(src[idx[i], :]) for i < n; src [*, H] fp32.
cudaError_t ep_cuda_wire_pack(const float *src, const int *idx, int n, int H, ep_wire_row wire,
                              int64_t row_bytes, uint8_t *dst, cudaStream_t stream);

// out[k, :] = idx[k] >= 0 ? decode(rows + idx[k] * row_bytes) : own[-idx[k] - 1, :]
// for k < n: the work records of a dispatch, received rows or own tokens.
cudaError_t ep_cuda_wire_gather(const uint8_t *rows, const float *own, const int *idx, int n, int H,
                                ep_wire_row wire, int64_t row_bytes, float *out,
                                cudaStream_t stream);

// out[t, :] = Σ_{e in [off[t], off[t+1])} (ent[e] >= 0 ? decode(rows + ent[e] *
// row_bytes) : own[-ent[e] - 1, :]) for t < T, summed from 0.0f in entry
// order (fp32, one thread per element: the host combine's order and bits).
cudaError_t ep_cuda_wire_sum(const uint8_t *rows, const float *own, const int *off, const int *ent,
                             int T, int H, ep_wire_row wire, int64_t row_bytes, float *out,
                             cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
