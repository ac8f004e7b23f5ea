// AVX-512 (f/bw/vl + FMA) bodies of the CPU expert kernels: fp32 and
// widened-BF16 "nt" products in register tiles, the fp32 outer-product
// product and its 16 x 16 transposes, SwiGLU with a vectorised exp, fp32 ->
// BF16 rounding. Only kern_dispatch.c calls them, after checking the
// CPU; nothing here is compiled with -mavx512 globally.
#include "experts/cpu/kern_impl.h"

#if EP_KERN_X86
#include <immintrin.h>
#include <string.h>

#define EP_TGT    __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define EP_INLINE static inline __attribute__((always_inline)) EP_TGT

// ---- products --------------------------------------------------------------
// Dot-product tiles: MR rows of A against NR rows of B, 16 fp32 lanes of K per
// step into MR*NR accumulators, reduced at the end. The weight rows (B) are
// streamed once per tile; for decode (MR = 1 or 2) this is a bandwidth loop
// with four weight streams in flight.
//
// pf: the address of the weights the driver reads after this tile, or 0 for
// none; each step prefetches (into L2) as many bytes from there as it
// consumes of B, so the next tile arrives as one sequential stream while this
// one computes (the NR short interleaved row streams of a tile are followed
// poorly by the hardware prefetcher: docs/benchmarks.md, "CPU expert
// kernels"). An integer: it may run past the end of B, which a prefetch
// tolerates and pointer arithmetic does not.

typedef void (*f32_tile_fn)(int K, const float *A, int lda, const float *B, int ldb, float *C,
                            int ldc, uintptr_t pf);
typedef void (*bf16_tile_fn)(int K, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                             float *C, int ldc, uintptr_t pf);

// The NR (<= 4) sums of one row of accumulators stored to C at once: a
// transposing tree (halves, then two rounds of pairwise adds) does the four
// horizontal sums in about half the instructions of four separate
// reductions, which shows when K is short (K = 768: +5 %, in cache).
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

// One step of 16 k: NR weight vectors, then each A row against them.
EP_INLINE void f32_step(const int MR, const int NR, __m512 acc[4][4], const float *A, int lda,
                        const float *B, int ldb, int k)
{
    __m512 b[4];
#pragma GCC unroll 4
    for (int j = 0; j < NR; j++)
        b[j] = _mm512_loadu_ps(B + (size_t)j * ldb + k);
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        const __m512 a = _mm512_loadu_ps(A + (size_t)i * lda + k);
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
}

EP_INLINE void f32_tile(const int MR, const int NR, int K, const float *A, int lda, const float *B,
                        int ldb, float *C, int ldc, uintptr_t pf)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            acc[i][j] = _mm512_setzero_ps();
    int k = 0;
    if (pf) {
        for (; k + 16 <= K; k += 16) {
#pragma GCC unroll 4
            for (int j = 0; j < NR; j++) // 64 bytes of each row per step
                _mm_prefetch((const char *)(pf + 64 * (uintptr_t)j), _MM_HINT_T1);
            pf += 64 * (uintptr_t)NR;
            f32_step(MR, NR, acc, A, lda, B, ldb, k);
        }
    } else {
        for (; k + 16 <= K; k += 16)
            f32_step(MR, NR, acc, A, lda, B, ldb, k);
    }
    if (k < K) {
        const __mmask16 mk = (__mmask16)((1u << (K - k)) - 1);
        __m512 b[4];
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            b[j] = _mm512_maskz_loadu_ps(mk, B + (size_t)j * ldb + k);
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            const __m512 a = _mm512_maskz_loadu_ps(mk, A + (size_t)i * lda + k);
#pragma GCC unroll 4
            for (int j = 0; j < NR; j++)
                acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
        store_row_sums(NR, acc[i], C + (size_t)i * ldc);
}

// 16 BF16 values widened to fp32: BF16 is the top half of an fp32.
EP_INLINE __m512 bf16x16_load(const uint16_t *p)
{
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

EP_INLINE __m512 bf16x16_maskz_load(__mmask16 mk, const uint16_t *p)
{
    const __m256i h = _mm256_maskz_loadu_epi16(mk, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

EP_INLINE void bf16w_step(const int MR, const int NR, __m512 acc[4][4], const uint16_t *A, int lda,
                          const uint16_t *B, int ldb, int k)
{
    __m512 b[4];
#pragma GCC unroll 4
    for (int j = 0; j < NR; j++)
        b[j] = bf16x16_load(B + (size_t)j * ldb + k);
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        const __m512 a = bf16x16_load(A + (size_t)i * lda + k);
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
}

EP_INLINE void bf16w_tile(const int MR, const int NR, int K, const uint16_t *A, int lda,
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
        for (; k + 16 <= K; k += 16) {
#pragma GCC unroll 4
            for (int j = 0; j < NR; j++) // 32 bytes of each row per step: each line twice
                _mm_prefetch((const char *)(pf + 32 * (uintptr_t)j), _MM_HINT_T1);
            pf += 32 * (uintptr_t)NR;
            bf16w_step(MR, NR, acc, A, lda, B, ldb, k);
        }
    } else {
        for (; k + 16 <= K; k += 16)
            bf16w_step(MR, NR, acc, A, lda, B, ldb, k);
    }
    if (k < K) {
        const __mmask16 mk = (__mmask16)((1u << (K - k)) - 1);
        __m512 b[4];
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            b[j] = bf16x16_maskz_load(mk, B + (size_t)j * ldb + k);
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            const __m512 a = bf16x16_maskz_load(mk, A + (size_t)i * lda + k);
#pragma GCC unroll 4
            for (int j = 0; j < NR; j++)
                acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
        store_row_sums(NR, acc[i], C + (size_t)i * ldc);
}

// One function per (MR, NR): constant trip counts keep the accumulators in
// registers.
#define EP_TILE_FNS(name, body, T)                                                                 \
    static EP_TGT void name##_1_1(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(1, 1, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_1_2(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(1, 2, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_1_3(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(1, 3, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_1_4(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(1, 4, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_2_1(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(2, 1, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_2_2(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(2, 2, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_2_3(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(2, 3, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_2_4(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(2, 4, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_3_1(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(3, 1, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_3_2(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(3, 2, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_3_3(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(3, 3, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_3_4(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(3, 4, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_4_1(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(4, 1, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_4_2(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(4, 2, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_4_3(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(4, 3, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }                                                                                              \
    static EP_TGT void name##_4_4(int K, const T *A, int lda, const T *B, int ldb, float *C,       \
                                  int ldc, uintptr_t pf)                                           \
    {                                                                                              \
        body(4, 4, K, A, lda, B, ldb, C, ldc, pf);                                                 \
    }

#define EP_TILE_TABLE(name)                                                                        \
    {                                                                                              \
        {name##_1_1, name##_1_2, name##_1_3, name##_1_4},                                          \
            {name##_2_1, name##_2_2, name##_2_3, name##_2_4},                                      \
            {name##_3_1, name##_3_2, name##_3_3, name##_3_4},                                      \
            {name##_4_1, name##_4_2, name##_4_3, name##_4_4},                                      \
    }

EP_TILE_FNS(f32t, f32_tile, float)
EP_TILE_FNS(bf16wt, bf16w_tile, uint16_t)
static const f32_tile_fn f32_tiles[4][4] = EP_TILE_TABLE(f32t);
static const bf16_tile_fn bf16w_tiles[4][4] = EP_TILE_TABLE(bf16wt);

// Columns (weight rows) outer, rows inner: a 4-row block of B stays in L1
// while every row block of A passes over it. With few rows (decode), where
// the weights' bandwidth is the limit, the first tile of a 4-row block
// prefetches the next block (rows j + 4 on, contiguous when ldb == K as for
// the experts' weights); with more (EP_KERN_PF_MAX_ROWS), the tiles are
// compute-bound and the prefetch instructions only cost issue slots.
EP_TGT void ep_kern_avx512_f32_nt(int m, int n, int K, const float *A, int lda, const float *B,
                                  int ldb, float *C, int ldc)
{
    const bool pf = m <= EP_KERN_PF_MAX_ROWS;
    for (int i0 = 0; i0 < m; i0 += EP_KERN_ROW_BLOCK) {
        const int i1 = EP_MIN(m, i0 + EP_KERN_ROW_BLOCK);
        for (int j = 0; j < n; j += 4) {
            const int nr = EP_MIN(4, n - j);
            const float *bj = B + (size_t)j * ldb;
            const uintptr_t next = pf && j + 4 < n ? (uintptr_t)(bj + (size_t)4 * ldb) : 0;
            for (int i = i0; i < i1; i += 4) {
                const int mr = EP_MIN(4, i1 - i);
                f32_tiles[mr - 1][nr - 1](K, A + (size_t)i * lda, lda, bj, ldb,
                                          C + (size_t)i * ldc + j, ldc, i == i0 ? next : 0);
            }
        }
    }
}

EP_TGT void ep_kern_avx512_bf16_nt(int m, int n, int K, const uint16_t *A, int lda,
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
                bf16w_tiles[mr - 1][nr - 1](K, A + (size_t)i * lda, lda, bj, ldb,
                                            C + (size_t)i * ldc + j, ldc, i == i0 ? next : 0);
            }
        }
    }
}

// ---- outer-product products (C = W . X, X K-major) --------------------------
// Register tile: NW (<= 6) weight rows x MV (<= 4) vectors of 16 tokens, 24
// accumulators at most. Per k: MV vector loads of X (one row of the K-major
// activations, contiguous) and NW scalar broadcasts of W (one element of each
// row-major weight row), then NW x MV fused multiply-adds; nothing to reduce
// horizontally at the end. The last vector's lanes are masked by ml (m not a
// multiple of 16), so X's and C's padding is neither read nor written.
// first: start from zero, else go on from C (the previous K block's sums).
// pf: the next weight block's first row at this K block, or 0: every 16 k
// the tile prefetches a line of each of its 6 rows, so the block arrives
// while this one computes (a K block of a row is 16 lines, too short a
// stream for the hardware prefetcher to pick up; +1-3 % with the weights in
// DRAM, one thread, docs/benchmarks.md). Only the first token group of a
// block passes pf; the others find the weights in L1.
// An integer, as in the nt tiles: it may point past the end of W.

typedef void (*f32_nn_tile_fn)(int K, const float *W, int ldw, const float *X, int ldx, float *C,
                               int ldc, __mmask16 ml, bool first, uintptr_t pf);

EP_INLINE void f32_nn_tile(const int NW, const int MV, int K, const float *W, int ldw,
                           const float *X, int ldx, float *C, int ldc, __mmask16 ml, bool first,
                           uintptr_t pf)
{
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < NW; r++)
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++) {
            const float *c = C + (size_t)r * ldc + 16 * v;
            if (first)
                acc[r][v] = _mm512_setzero_ps();
            else
                acc[r][v] = v == MV - 1 ? _mm512_maskz_loadu_ps(ml, c) : _mm512_loadu_ps(c);
        }
    for (int k = 0; k < K; k++) {
        if (pf && (k & 15) == 0)
#pragma GCC unroll 6
            for (int r = 0; r < 6; r++)
                _mm_prefetch((const char *)(pf + ((uintptr_t)r * ldw + k) * sizeof(float)),
                             _MM_HINT_T0);
        const float *x = X + (size_t)k * ldx;
        __m512 xv[4];
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++)
            xv[v] =
                v == MV - 1 ? _mm512_maskz_loadu_ps(ml, x + 16 * v) : _mm512_loadu_ps(x + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < NW; r++) {
            const __m512 b = _mm512_set1_ps(W[(size_t)r * ldw + k]);
#pragma GCC unroll 4
            for (int v = 0; v < MV; v++)
                acc[r][v] = _mm512_fmadd_ps(b, xv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < NW; r++)
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++) {
            float *c = C + (size_t)r * ldc + 16 * v;
            if (v == MV - 1)
                _mm512_mask_storeu_ps(c, ml, acc[r][v]);
            else
                _mm512_storeu_ps(c, acc[r][v]);
        }
}

#define EP_NN_FN(nw, mv)                                                                           \
    static EP_TGT void f32nn_##nw##_##mv(int K, const float *W, int ldw, const float *X, int ldx,  \
                                         float *C, int ldc, __mmask16 ml, bool first,              \
                                         uintptr_t pf)                                             \
    {                                                                                              \
        f32_nn_tile(nw, mv, K, W, ldw, X, ldx, C, ldc, ml, first, pf);                             \
    }
#define EP_NN_FNS(nw) EP_NN_FN(nw, 1) EP_NN_FN(nw, 2) EP_NN_FN(nw, 3) EP_NN_FN(nw, 4)
EP_NN_FNS(1)
EP_NN_FNS(2)
EP_NN_FNS(3)
EP_NN_FNS(4)
EP_NN_FNS(5)
EP_NN_FNS(6)
#define EP_NN_ROW(nw)                                                                              \
    {                                                                                              \
        f32nn_##nw##_1, f32nn_##nw##_2, f32nn_##nw##_3, f32nn_##nw##_4                             \
    }
static const f32_nn_tile_fn f32_nn_tiles[6][4] = {EP_NN_ROW(1), EP_NN_ROW(2), EP_NN_ROW(3),
                                                  EP_NN_ROW(4), EP_NN_ROW(5), EP_NN_ROW(6)};

// K blocks outermost (a block of X, EP_KERN_NN_KBLOCK rows of it, stays in
// L2; 256, 512, 1024 and unblocked measured within the noise of a shared
// machine, docs/benchmarks.md), then 6-row weight blocks (their K block, 6 KiB, stays in L1 while
// every 64-token group of the block meets it), then the token groups.
EP_TGT void ep_kern_avx512_f32_nn(int n, int m, int K, const float *W, int ldw, const float *X,
                                  int ldx, float *C, int ldc)
{
    if (m == 0 || n == 0) return;
    if (K == 0) {
        for (int j = 0; j < n; j++)
            memset(C + (size_t)j * ldc, 0, (size_t)m * sizeof(float));
        return;
    }
    for (int k0 = 0; k0 < K; k0 += EP_KERN_NN_KBLOCK) {
        const int kb = EP_MIN(EP_KERN_NN_KBLOCK, K - k0);
        for (int j = 0, nw; j < n; j += nw) {
            // The last 7-11 rows as two tiles of 3-6 (5 + 5, not 6 + 4): a
            // tile of 1-2 weight rows does 4-8 FMAs per 5-6 loads.
            const int left = n - j;
            nw = left <= 6 ? left : left < 12 ? (left + 1) / 2 : 6;
            for (int i = 0; i < m; i += 64) {
                const int cols = EP_MIN(64, m - i), mv = (cols + 15) / 16;
                const int last = cols - 16 * (mv - 1); // 1..16 lanes of the last vector
                const __mmask16 ml = (__mmask16)((1u << last) - 1);
                const uintptr_t pf =
                    i == 0 && j + nw < n ? (uintptr_t)(W + (size_t)(j + nw) * ldw + k0) : 0;
                f32_nn_tiles[nw - 1][mv - 1](kb, W + (size_t)j * ldw + k0, ldw,
                                             X + (size_t)k0 * ldx + i, ldx, C + (size_t)j * ldc + i,
                                             ldc, ml, k0 == 0, pf);
            }
        }
    }
}

// 16 x 16 block in registers: pairs of rows interleaved (32-bit, then 64-bit
// unpacks) give 4 x 4 transposed blocks within each 128-bit lane; two rounds
// of lane shuffles put the four lanes of each output row together. Rows past
// `rows` read as zero, and only `rows` lanes of each output row are stored.
EP_INLINE void transpose16(int rows, int cols, const float *const *src, int j0, float *dst, int ldd)
{
    const __mmask16 mc = (__mmask16)((1u << cols) - 1), mr = (__mmask16)((1u << rows) - 1);
    __m512 r[16], t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(mc, src[i] + j0) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++) {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) { // rows 4q..4q+3: u[4q + c] holds column 4l + c in lane l
        const __m512d a = _mm512_castps_pd(t[4 * q]), b = _mm512_castps_pd(t[4 * q + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * q + 2]), d = _mm512_castps_pd(t[4 * q + 3]);
        r[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
        const __m512 w0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
        const __m512 v1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        const __m512 w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        const __m512 out[4] = {
            _mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0x88),
            _mm512_shuffle_f32x4(v0, v1, 0xDD), _mm512_shuffle_f32x4(w0, w1, 0xDD)};
#pragma GCC unroll 4
        for (int l = 0; l < 4; l++) {
            const int j = 4 * l + c;
            if (j < cols) _mm512_mask_storeu_ps(dst + (size_t)j * ldd, mr, out[l]);
        }
    }
}

EP_TGT void ep_kern_avx512_transpose(int rows, int cols, const float *const *src, float *dst,
                                     int ldd)
{
    for (int i0 = 0; i0 < rows; i0 += 16)
        for (int j0 = 0; j0 < cols; j0 += 16)
            transpose16(EP_MIN(16, rows - i0), EP_MIN(16, cols - j0), src + i0, j0,
                        dst + (size_t)j0 * ldd + i0, ldd);
}

// ---- SwiGLU ------------------------------------------------------------------

// e^r for r <= 0: r = n ln2 + f with |f| <= ln2/2 (ln2 split in two so that
// n ln2 is exact), e^f by its Taylor series to degree 7 (relative error below
// 1e-8 on that interval), times 2^n by vscalefps (which also handles the
// results that fall into or below the subnormal range).
EP_INLINE __m512 exp_nonpos(__m512 r)
{
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(r, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), r);
    f = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), f);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// silu(x) = x / (1 + e^-x) for x >= 0 and x e^x / (1 + e^x) below, so exp
// only sees -|x|. Below -100 the result is -0 (|x e^x| < 4e-42: the plain C
// version gives a subnormal or -0 there); NaN stays NaN, +inf gives +inf.
EP_INLINE __m512 silu16(__m512 x)
{
    const __m512 negabs = _mm512_castsi512_ps(
        _mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u)));
    // max() returns its second operand for NaN, so NaN x becomes -100 here;
    // the final multiply by x still makes the result NaN.
    const __m512 t = exp_nonpos(_mm512_max_ps(negabs, _mm512_set1_ps(-100.0f)));
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 den = _mm512_add_ps(one, t);
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 num = _mm512_mask_blend_ps(neg, one, t); // sigmoid(x) = num / den
    __m512 s = _mm512_mul_ps(x, _mm512_div_ps(num, den));
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-100.0f), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(tiny, s, _mm512_set1_ps(-0.0f));
}

// y += w * x, 16 lanes at a time and a masked tail; _mm512_mul_ps then
// _mm512_add_ps round twice, as the C loop does.
EP_TGT void ep_kern_avx512_axpy(int n, float w, const float *x, float *y)
{
    const __m512 wv = _mm512_set1_ps(w);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i),
                                              _mm512_mul_ps(wv, _mm512_loadu_ps(x + i))));
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, k,
                              _mm512_add_ps(_mm512_maskz_loadu_ps(k, y + i),
                                            _mm512_mul_ps(wv, _mm512_maskz_loadu_ps(k, x + i))));
    }
}

EP_TGT void ep_kern_avx512_swiglu(int64_t n, const float *g, const float *u, float *out)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i,
                         _mm512_mul_ps(silu16(_mm512_loadu_ps(g + i)), _mm512_loadu_ps(u + i)));
    if (i < n) {
        const __mmask16 mk = (__mmask16)((1u << (n - i)) - 1);
        const __m512 s = silu16(_mm512_maskz_loadu_ps(mk, g + i));
        _mm512_mask_storeu_ps(out + i, mk, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mk, u + i)));
    }
}

// ---- fp32 -> BF16 --------------------------------------------------------------

// Bit-exact with ep_f32_to_bf16: add 0x7fff plus the lowest kept bit (round
// to nearest, ties to even), NaN forced quiet so it cannot round to Inf.
EP_INLINE __m256i to_bf16x16(__m512 v)
{
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}

EP_TGT void ep_kern_avx512_to_bf16(int64_t n, const float *src, uint16_t *dst)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), to_bf16x16(_mm512_loadu_ps(src + i)));
    if (i < n) {
        const __mmask16 mk = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(dst + i, mk, to_bf16x16(_mm512_maskz_loadu_ps(mk, src + i)));
    }
}

#endif
