// AVX512-BF16 body of the BF16 "nt" product: vdpbf16ps multiplies 32 BF16
// pairs per instruction into 16 fp32 sums (twice the fp32 FMA work per
// instruction, half the bytes per weight). Only kern_dispatch.c calls it,
// after checking the CPU; no conversion of the weights happens here.
#include "experts/cpu/kern_impl.h"

#if EP_KERN_X86
#include <immintrin.h>

#define EP_TGT    __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))
#define EP_INLINE static inline __attribute__((always_inline)) EP_TGT

typedef void (*bf16_tile_fn)(int K, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                             float *C, int ldc);

// MR rows of A against NR rows of B, 32 BF16 of K per step; the K tail is
// loaded masked (zeros add nothing).
EP_INLINE void dp_tile(const int MR, const int NR, int K, const uint16_t *A, int lda,
                       const uint16_t *B, int ldb, float *C, int ldc)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            acc[i][j] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512i b[4];
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            b[j] = _mm512_loadu_si512((const void *)(B + (size_t)j * ldb + k));
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            const __m512i a = _mm512_loadu_si512((const void *)(A + (size_t)i * lda + k));
#pragma GCC unroll 4
            for (int j = 0; j < NR; j++)
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)a, (__m512bh)b[j]);
        }
    }
    if (k < K) {
        const __mmask32 mk = (__mmask32)((1ull << (K - k)) - 1);
        __m512i b[4];
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            b[j] = _mm512_maskz_loadu_epi16(mk, B + (size_t)j * ldb + k);
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            const __m512i a = _mm512_maskz_loadu_epi16(mk, A + (size_t)i * lda + k);
#pragma GCC unroll 4
            for (int j = 0; j < NR; j++)
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)a, (__m512bh)b[j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            C[(size_t)i * ldc + j] = _mm512_reduce_add_ps(acc[i][j]);
}

#define EP_DP(mr, nr)                                                                              \
    static EP_TGT void dp_##mr##_##nr(int K, const uint16_t *A, int lda, const uint16_t *B,        \
                                      int ldb, float *C, int ldc)                                  \
    {                                                                                              \
        dp_tile(mr, nr, K, A, lda, B, ldb, C, ldc);                                                \
    }
// clang-format off
EP_DP(1, 1) EP_DP(1, 2) EP_DP(1, 3) EP_DP(1, 4)
EP_DP(2, 1) EP_DP(2, 2) EP_DP(2, 3) EP_DP(2, 4)
EP_DP(3, 1) EP_DP(3, 2) EP_DP(3, 3) EP_DP(3, 4)
EP_DP(4, 1) EP_DP(4, 2) EP_DP(4, 3) EP_DP(4, 4)
// clang-format on

        static const bf16_tile_fn dp_tiles[4][4] = {
            {dp_1_1, dp_1_2, dp_1_3, dp_1_4},
            {dp_2_1, dp_2_2, dp_2_3, dp_2_4},
            {dp_3_1, dp_3_2, dp_3_3, dp_3_4},
            {dp_4_1, dp_4_2, dp_4_3, dp_4_4},
};

// Weight rows outer, activation rows inner: the 4 weight rows of a tile stay
// in L1 while the (already BF16) activation rows pass over them from L2.
EP_TGT void ep_kern_avx512bf16_bf16_nt(int m, int n, int K, const uint16_t *A, int lda,
                                       const uint16_t *B, int ldb, float *C, int ldc)
{
    for (int i0 = 0; i0 < m; i0 += EP_KERN_ROW_BLOCK) {
        const int i1 = EP_MIN(m, i0 + EP_KERN_ROW_BLOCK);
        for (int j = 0; j < n; j += 4) {
            const int nr = EP_MIN(4, n - j);
            for (int i = i0; i < i1; i += 4) {
                const int mr = EP_MIN(4, i1 - i);
                dp_tiles[mr - 1][nr - 1](K, A + (size_t)i * lda, lda, B + (size_t)j * ldb, ldb,
                                         C + (size_t)i * ldc + j, ldc);
            }
        }
    }
}

#endif
