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
                             float *C, int ldc, uintptr_t pf);

// As in kern_avx512.c: the NR (<= 4) sums of one row of accumulators stored
// to C at once by a transposing tree (halves, then two rounds of pairwise
// adds), about half the instructions of four separate reductions.
EP_INLINE void store_row_sums(const int NR, __m512 acc[4], float *c)
{
    __m256 h[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const __m512 a = j < NR ? acc[j] : _mm512_setzero_ps();
        h[j] = _mm256_add_ps(_mm512_castps512_ps256(a),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    }
    const __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
    if (NR == 4)
        _mm_storeu_ps(c, s);
    else
        _mm_mask_storeu_ps(c, (__mmask8)((1u << NR) - 1), s);
}

// MR rows of A against NR rows of B, 32 BF16 of K per step; the K tail is
// loaded masked (zeros add nothing).
//
// pf: the address of the weights the driver reads after this tile, or 0 for
// none; each step prefetches (into L2) the next NR cache lines from there, as
// many as it consumes of B, so the next tile arrives as one sequential stream
// while this one computes (see the fp32 tiles in kern_avx512.c for why). An
// integer: it may run past the end of B, which a prefetch tolerates and
// pointer arithmetic does not.
EP_INLINE void dp_step(const int MR, const int NR, __m512 acc[4][4], const uint16_t *A, int lda,
                       const uint16_t *B, int ldb, int k)
{
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

EP_INLINE void dp_tile(const int MR, const int NR, int K, const uint16_t *A, int lda,
                       const uint16_t *B, int ldb, float *C, int ldc, uintptr_t pf)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            acc[i][j] = _mm512_setzero_ps();
    int k = 0;
    if (pf) {
        for (; k + 32 <= K; k += 32) {
#pragma GCC unroll 4
            for (int j = 0; j < NR; j++)
                _mm_prefetch((const char *)(pf + 64 * (uintptr_t)j), _MM_HINT_T1);
            pf += 64 * (uintptr_t)NR;
            dp_step(MR, NR, acc, A, lda, B, ldb, k);
        }
    } else {
        for (; k + 32 <= K; k += 32)
            dp_step(MR, NR, acc, A, lda, B, ldb, k);
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
        store_row_sums(NR, acc[i], C + (size_t)i * ldc);
}

#define EP_DP(mr, nr)                                                                              \
    static EP_TGT void dp_##mr##_##nr(int K, const uint16_t *A, int lda, const uint16_t *B,        \
                                      int ldb, float *C, int ldc, uintptr_t pf)                    \
    {                                                                                              \
        dp_tile(mr, nr, K, A, lda, B, ldb, C, ldc, pf);                                            \
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
// Prefetch of the next 4-row block as in kern_avx512.c: only with few rows.
EP_TGT void ep_kern_avx512bf16_bf16_nt(int m, int n, int K, const uint16_t *A, int lda,
                                       const uint16_t *B, int ldb, float *C, int ldc)
{
    const bool pf = m <= EP_KERN_PF_MAX_ROWS;
    for (int i0 = 0; i0 < m; i0 += EP_KERN_ROW_BLOCK) {
        const int i1 = EP_MIN(m, i0 + EP_KERN_ROW_BLOCK);
        for (int j = 0; j < n; j += 4) {
            const int nr = EP_MIN(4, n - j);
            const uint16_t *bj = B + (size_t)j * ldb;
            const uintptr_t next = pf && j + 4 < n ? (uintptr_t)(bj + (size_t)4 * ldb) : 0;
            for (int i = i0; i < i1; i += 4) {
                const int mr = EP_MIN(4, i1 - i);
                dp_tiles[mr - 1][nr - 1](K, A + (size_t)i * lda, lda, bj, ldb,
                                         C + (size_t)i * ldc + j, ldc, i == i0 ? next : 0);
            }
        }
    }
}

#endif
