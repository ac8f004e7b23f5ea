// Device-memory helpers of the cmocka GPU tests that check model ops
// (test_cuda_model_*): upload, poisoned outputs, download, BF16 copies.
// Include after <cmocka.h> and <cuda_runtime.h>.
#ifndef EP_CUDA_TEST_DEV_H
#define EP_CUDA_TEST_DEV_H

#include <stdint.h>
#include <stdlib.h>

#include "common/dtype.h"

#define CK(call) assert_int_equal((int)(call), (int)cudaSuccess)
#define OK(call) assert_int_equal((int)(call), (int)EP_OK)
#define NANFILL  0xff // fresh-device-memory poison: every output must be written

// A device copy of src (bytes), or with src NULL a buffer of NANFILL bytes.
static inline void *dev_upload(const void *src, size_t bytes)
{
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 1));
    if (bytes) {
        if (src)
            CK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
        else
            CK(cudaMemset(d, NANFILL, bytes));
    }
    return d;
}

// Waits for the device, then copies bytes of d to dst.
static inline void download(void *dst, const void *d, size_t bytes)
{
    CK(cudaDeviceSynchronize());
    if (bytes) CK(cudaMemcpy(dst, d, bytes, cudaMemcpyDeviceToHost));
}

// n BF16 values of x (malloc'ed; the caller frees).
static inline uint16_t *to_bf16(const float *x, size_t n)
{
    uint16_t *b = malloc(n * sizeof *b);
    for (size_t i = 0; i < n; i++)
        b[i] = ep_f32_to_bf16(x[i]);
    return b;
}

#endif
