// Launchers of the experts' CUDA kernels (experts/cuda/kernels.cu), callable
// from C. BF16 values travel as uint16_t (the bit pattern of __nv_bfloat16).
// Every launcher only enqueues on `stream` and returns the launch status.
// Private to ep_experts_cuda: public headers never include this.
#ifndef EP_EXPERTS_CUDA_KERNELS_H
#define EP_EXPERTS_CUDA_KERNELS_H

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// xg[r, :] = bf16(x[row_rec[r], :]) for r < n_rows (row_rec NULL: row r).
// x: [*, H] fp32, xg: [n_rows, H] bf16.
cudaError_t ep_cuda_gather_bf16(const float *x, const int *row_rec, int n_rows, int H, uint16_t *xg,
                                cudaStream_t stream);

// act[r, i] = bf16(silu(gu[r, i]) * gu[r, W + i]) for r < rows, i < W.
// gu: [rows, 2W] bf16 (gate | up), act: [rows, W] bf16. SiLU in fp32.
cudaError_t ep_cuda_swiglu_bf16(const uint16_t *gu, int rows, int W, uint16_t *act,
                                cudaStream_t stream);

// y[i, h] = Σ_{j in [rec_off[i], rec_off[i+1])} w[j] * og[pair_row[j], h]
// for i < n_rec: the weighting and per-record reduction, in pair order, fp32
// accumulation, without atomics (one thread per output element).
// og: [rows, H] bf16, y: [n_rec, H] fp32.
cudaError_t ep_cuda_combine_rows(const uint16_t *og, int H, const int *rec_off, const int *pair_row,
                                 const float *w, int n_rec, float *y, cudaStream_t stream);

// y[i] += src[i] for i < n (shared experts added to the routed sum).
cudaError_t ep_cuda_add_bf16(const uint16_t *src, int64_t n, float *y, cudaStream_t stream);

// Conversions, n elements.
cudaError_t ep_cuda_f32_to_bf16(const float *src, int64_t n, uint16_t *dst, cudaStream_t stream);
cudaError_t ep_cuda_bf16_to_f32(const uint16_t *src, int64_t n, float *dst, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
