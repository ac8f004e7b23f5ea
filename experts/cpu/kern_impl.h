// Internal to experts/cpu: the per-ISA kernel bodies that kern_dispatch.c
// picks from. Callers outside experts/cpu use experts/kernels.h only.
#ifndef EP_KERN_IMPL_H
#define EP_KERN_IMPL_H

#include "common/ep.h"

// The AVX-512 files compile only where GCC-style target attributes and x86
// intrinsics exist; elsewhere the portable C kernels are all there is.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EP_KERN_X86 1
#else
#define EP_KERN_X86 0
#endif

// Activation rows per block in the BF16 product drivers: 64 rows of K = 2048 are
// 256 KiB in BF16 (512 KiB fp32), so a block and the weight rows of a task
// stay in L2 while the tiles sweep them.
#define EP_KERN_ROW_BLOCK 64

// Up to this many activation rows the BF16 product drivers prefetch the next
// block of weight rows (decode: the weights' bandwidth is the limit); above
// it the tiles are compute-bound and the prefetches cost up to 3 % of the
// time (m = 64, in cache, on the reference machine: docs/benchmarks.md).
#define EP_KERN_PF_MAX_ROWS 16

#if EP_KERN_X86
// kern_avx512.c (avx512f/bw/vl + fma)
void ep_kern_avx512_f32_panel(int m, int n, int K, const float *A, int lda, const float *P,
                              float *C, int ldc);
void ep_kern_avx512_bf16_nt(int m, int n, int K, const uint16_t *A, int lda, const uint16_t *B,
                            int ldb, float *C, int ldc);
void ep_kern_avx512_swiglu(int64_t n, const float *g, const float *u, float *out);
void ep_kern_avx512_axpy(int n, float w, const float *x, float *y);
void ep_kern_avx512_to_bf16(int64_t n, const float *src, uint16_t *dst);
void ep_kern_avx512_f32_nt(int m, int n, int K, const float *A, int lda, const float *B, int ldb,
                           float *C, int ldc);
void ep_kern_avx512_f32_nn(int m, int n, int K, const float *A, int lda, const float *B, int ldb,
                           float beta, float *C, int ldc);
void ep_kern_avx512_softmax_tile(int rows, int w, float *S, int lds, const int *valid, float scale,
                                 float *mx, float *sum, float *O, int ldo, int dv);
// kern_avx512bf16.c (+ avx512bf16)
void ep_kern_avx512bf16_bf16_nt(int m, int n, int K, const uint16_t *A, int lda, const uint16_t *B,
                                int ldb, float *C, int ldc);
#endif

#endif
