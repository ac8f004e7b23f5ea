// AVX-512 (f/bw/vl + FMA) bodies of the CPU kernels: the fp32 product over
// panel-packed weights, the widened-BF16 "nt" product in register tiles,
// SwiGLU with a vectorised exp, fp32 -> BF16 rounding, and attention's
// products and online softmax. Only kern_dispatch.c calls them, after
// checking the CPU; nothing here is compiled with -mavx512 globally.
#include "experts/cpu/kern_impl.h"
#include "experts/kernels.h"

#if EP_KERN_X86
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define EP_TGT    __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define EP_INLINE static inline __attribute__((always_inline)) EP_TGT

// ---- BF16 products (widened to fp32) -------------------------------------------
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

EP_TILE_FNS(bf16wt, bf16w_tile, uint16_t)
static const bf16_tile_fn bf16w_tiles[4][4] = EP_TILE_TABLE(bf16wt);

// Weight rows outer, activation rows inner: a 4-row block of B stays in L1
// while every row block of A passes over it. With few rows (decode), where
// the weights' bandwidth is the limit, the first tile of a 4-row block
// prefetches the next block (rows j + 4 on, contiguous when ldb == K as for
// the experts' weights); with more (EP_KERN_PF_MAX_ROWS), the tiles are
// compute-bound and the prefetch instructions only cost issue slots.
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

// ---- fp32 products over panel-packed weights ---------------------------------
// Register tile: MR (<= 6) activation rows x NV (<= 4) vectors of 16 weight
// columns of one panel, 24 accumulators at most. Per k: NV vector loads of
// the panel (one K-major row of it, contiguous: the panel is one sequential
// stream of K x 256 bytes) and MR scalar broadcasts of A, then MR x NV fused
// multiply-adds; nothing to reduce horizontally. The last vector's lanes are
// masked by ml (a narrow last panel), so neither the panel's end nor C's
// padding is touched. The whole K in one sweep: a K block would only cut the
// sequential stream into 64 KiB pieces 512 KiB apart (K = 2048, one thread,
// weights in DRAM: 112 GFLOP/s unblocked against 101 at 256-k blocks,
// docs/benchmarks.md). The panel (512 KiB at K = 2048) stays in L2 while the
// activation rows pass over it 6 at a time.
// The same tile is the "nn" product of attention (ep_kern_f32_nn): there
// the "panel" is 64 columns of a row-major B, rows ldp apart, and the
// accumulators may start from beta C.

typedef void (*f32_panel_tile_fn)(int K, const float *A, int lda, const float *P, int ldp, float *C,
                                  int ldc, __mmask16 ml, float beta);

EP_INLINE void f32_panel_tile(const int MR, const int NV, int K, const float *A, int lda,
                              const float *P, int ldp, float *C, int ldc, __mmask16 ml, float beta)
{
    __m512 acc[6][4];
    if (beta == 0.0f) {
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                acc[r][v] = _mm512_setzero_ps();
    } else {
        const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) {
                const float *c = C + (size_t)r * ldc + 16 * v;
                acc[r][v] = _mm512_mul_ps(vb, v == NV - 1 ? _mm512_maskz_loadu_ps(ml, c)
                                                          : _mm512_loadu_ps(c));
            }
    }
    for (int k = 0; k < K; k++) {
        const float *p = P + (size_t)k * ldp;
        __m512 wv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            wv[v] =
                v == NV - 1 ? _mm512_maskz_loadu_ps(ml, p + 16 * v) : _mm512_loadu_ps(p + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            const __m512 a = _mm512_set1_ps(A[(size_t)r * lda + k]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                acc[r][v] = _mm512_fmadd_ps(a, wv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            float *c = C + (size_t)r * ldc + 16 * v;
            if (v == NV - 1)
                _mm512_mask_storeu_ps(c, ml, acc[r][v]);
            else
                _mm512_storeu_ps(c, acc[r][v]);
        }
}

#define EP_PANEL_FN(mr, nv)                                                                        \
    static EP_TGT void f32p_##mr##_##nv(int K, const float *A, int lda, const float *P, int ldp,   \
                                        float *C, int ldc, __mmask16 ml, float beta)               \
    {                                                                                              \
        f32_panel_tile(mr, nv, K, A, lda, P, ldp, C, ldc, ml, beta);                               \
    }
#define EP_PANEL_FNS(mr) EP_PANEL_FN(mr, 1) EP_PANEL_FN(mr, 2) EP_PANEL_FN(mr, 3) EP_PANEL_FN(mr, 4)
EP_PANEL_FNS(1)
EP_PANEL_FNS(2)
EP_PANEL_FNS(3)
EP_PANEL_FNS(4)
EP_PANEL_FNS(5)
EP_PANEL_FNS(6)
#define EP_PANEL_ROW(mr)                                                                           \
    {                                                                                              \
        f32p_##mr##_1, f32p_##mr##_2, f32p_##mr##_3, f32p_##mr##_4                                 \
    }
static const f32_panel_tile_fn f32_panel_tiles[6][4] = {EP_PANEL_ROW(1), EP_PANEL_ROW(2),
                                                        EP_PANEL_ROW(3), EP_PANEL_ROW(4),
                                                        EP_PANEL_ROW(5), EP_PANEL_ROW(6)};

// Panels outer, activation rows inner: each panel is read from memory once
// (decode: one sequential stream per panel, which the hardware prefetcher
// follows; measured at the triad's bandwidth without software prefetch) and
// from L2 by the later row groups.
EP_TGT void ep_kern_avx512_f32_panel(int m, int n, int K, const float *A, int lda, const float *P,
                                     float *C, int ldc)
{
    for (int j0 = 0; j0 < n; j0 += EP_KERN_PANEL) {
        const int w = EP_MIN(EP_KERN_PANEL, n - j0), nv = (w + 15) / 16;
        const int last = w - 16 * (nv - 1); // 1..16 lanes of the last vector
        const __mmask16 ml = (__mmask16)((1u << last) - 1);
        const float *pj = P + (size_t)j0 * K;
        for (int i = 0; i < m; i += 6)
            f32_panel_tiles[EP_MIN(6, m - i) - 1][nv - 1](K, A + (size_t)i * lda, lda, pj, w,
                                                          C + (size_t)i * ldc + j0, ldc, ml, 0.0f);
    }
}

// C = beta C + A B: 64 columns of B outer (K x 64 floats, which stay in L1
// for the short K of attention), rows of A inner.
EP_TGT void ep_kern_avx512_f32_nn(int m, int n, int K, const float *A, int lda, const float *B,
                                  int ldb, float beta, float *C, int ldc)
{
    for (int j0 = 0; j0 < n; j0 += 64) {
        const int w = EP_MIN(64, n - j0), nv = (w + 15) / 16;
        const __mmask16 ml = (__mmask16)((1u << (w - 16 * (nv - 1))) - 1);
        for (int i = 0; i < m; i += 6)
            f32_panel_tiles[EP_MIN(6, m - i) - 1][nv - 1](K, A + (size_t)i * lda, lda, B + j0, ldb,
                                                          C + (size_t)i * ldc + j0, ldc, ml, beta);
    }
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

// ---- attention ----------------------------------------------------------------

// The lanes below r of a 16-lane vector (all of them from r = 16 on).
EP_INLINE __mmask16 lanes_below(int r)
{
    return r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (r > 0 ? r : 0)) - 1);
}

// Scores: MR query rows x NR key rows, 16 lanes of K per step as in the BF16
// tiles (the key rows are read once per tile, straight from the cache),
// reduced by the same transposing tree. pf is unused (the macro's shape).
EP_INLINE void f32nt_tile(const int MR, const int NR, int K, const float *A, int lda,
                          const float *B, int ldb, float *C, int ldc, uintptr_t pf)
{
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        const __mmask16 mk = lanes_below(K - k);
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

typedef void (*f32_nt_tile_fn)(int K, const float *A, int lda, const float *B, int ldb, float *C,
                               int ldc, uintptr_t pf);
EP_TILE_FNS(f32nt, f32nt_tile, float)
static const f32_nt_tile_fn f32nt_tiles[4][4] = EP_TILE_TABLE(f32nt);

// Query rows outer, key rows inner: a run of key rows (a KV block, 16 rows of
// at most a few KiB each) stays in L1 while the 4-row query tiles pass.
EP_TGT void ep_kern_avx512_f32_nt(int m, int n, int K, const float *A, int lda, const float *B,
                                  int ldb, float *C, int ldc)
{
    for (int i = 0; i < m; i += 4) {
        const int mr = EP_MIN(4, m - i);
        for (int j = 0; j < n; j += 4)
            f32nt_tiles[mr - 1][EP_MIN(4, n - j) - 1](K, A + (size_t)i * lda, lda,
                                                      B + (size_t)j * ldb, ldb,
                                                      C + (size_t)i * ldc + j, ldc, 0);
    }
}

// Two passes over a row (it is in L1): scale and max, then exp and sum. The
// exponents are clamped at -104, below which e^x is 0 in fp32 anyway (the
// polynomial needs a bounded argument); masked-off lanes are stored as 0.
EP_TGT void ep_kern_avx512_softmax_tile(int rows, int w, float *S, int lds, const int *valid,
                                        float scale, float *mx, float *sum, float *O, int ldo,
                                        int dv)
{
    const __m512 vs = _mm512_set1_ps(scale), lo = _mm512_set1_ps(-104.0f);
    for (int i = 0; i < rows; i++) {
        float *s = S + (size_t)i * lds;
        const int n = EP_MIN(valid[i], w);
        if (n <= 0) {
            for (int j = 0; j < w; j += 16)
                _mm512_mask_storeu_ps(s + j, lanes_below(w - j), _mm512_setzero_ps());
            continue;
        }
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < n; j += 16) {
            const __mmask16 k = lanes_below(n - j);
            const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + j), vs);
            _mm512_mask_storeu_ps(s + j, k, x);
            vmax = _mm512_mask_max_ps(vmax, k, vmax, x);
        }
        const float m0 = mx[i], rmax = _mm512_reduce_max_ps(vmax), m1 = rmax > m0 ? rmax : m0;
        const __m512 vm = _mm512_set1_ps(m1);
        __m512 acc = _mm512_setzero_ps();
        for (int j = 0; j < w; j += 16) {
            const __mmask16 k = lanes_below(n - j);
            const __m512 x = _mm512_maskz_loadu_ps(k, s + j);
            const __m512 e =
                _mm512_maskz_mov_ps(k, exp_nonpos(_mm512_max_ps(_mm512_sub_ps(x, vm), lo)));
            _mm512_mask_storeu_ps(s + j, lanes_below(w - j), e);
            acc = _mm512_add_ps(acc, e);
        }
        const float c = m0 == -INFINITY ? 0.0f : expf(m0 - m1);
        sum[i] = sum[i] * c + _mm512_reduce_add_ps(acc);
        mx[i] = m1;
        if (c != 1.0f) {
            const __m512 vc = _mm512_set1_ps(c);
            float *o = O + (size_t)i * ldo;
            for (int d = 0; d < dv; d += 16) {
                const __mmask16 k = lanes_below(dv - d);
                _mm512_mask_storeu_ps(o + d, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, o + d), vc));
            }
        }
    }
}

#endif
