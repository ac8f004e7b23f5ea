// The kernels of test_emu_kernels.cu, launched from C.
#ifndef EP_TEST_EMU_KERNELS_H
#define EP_TEST_EMU_KERNELS_H

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

// Writes 1.0f to p[0..n] inclusive: one element past a buffer of n.
cudaError_t emu_test_past_end(float *p, int n);
// y[i] = x[idx[i]] for i < n (idx and the buffers on the device).
cudaError_t emu_test_gather(const float *x, const int *idx, float *y, int n);
// out[b * threads + t] = (neighbour's id) for t < quit, else -1; threads <= 64.
cudaError_t emu_test_barrier(int *out, int blocks, int threads, int quit);
// buf[t] = t, then out[2t], out[2t + 1] = buf[t + 1], buf[t - 1] (mod
// threads), with no barrier between: one block of `threads`.
cudaError_t emu_test_race(int *buf, int *out, int threads);

#ifdef __cplusplus
}
#endif

#endif
