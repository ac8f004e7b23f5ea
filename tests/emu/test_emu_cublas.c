// The emulated cuBLAS (tests/emu/cublas.c) against a naive triple loop:
// every op N/T pair, odd m, n, k, leading dimensions above the rows (the
// padding must stay untouched), alpha/beta, beta == 0 not reading C, the
// grouped and the strided batched calls against one cublasGemmEx per problem, BF16 conversions
// bit-exact with CUDA's round to nearest even, each rejected argument with
// its status and message, each unreadable operand as a fault naming the
// call and argument, and EP_EMU_CUBLAS_GROUPED=0.
//
// Standalone for now: this file carries its own emu.h (a table of "device"
// allocations it makes itself, and an emu_fault that jumps back into the
// test), so it links only cublas.c. Once the emulated runtime exists it
// should allocate with cudaMalloc and drop the local emu.h instead.
// setenv; the project build defines these for every file.
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

#include "emu.h"

// ---- test-local emu.h ----------------------------------------------------------------------

enum { MAX_ALLOCS = 256 };
static struct {
    char *p;
    size_t n;
} allocs[MAX_ALLOCS];
static char last_warn[512], last_fault[512];
static int n_warn;
static jmp_buf fault_jmp;
static bool fault_armed;

bool emu_is_device(const void *p, size_t bytes)
{
    const char *c = p;
    for (int i = 0; i < MAX_ALLOCS; i++) {
        if (!allocs[i].p || c < allocs[i].p || c > allocs[i].p + allocs[i].n) continue;
        if ((size_t)(c - allocs[i].p) <= allocs[i].n - bytes && bytes <= allocs[i].n) return true;
    }
    return false;
}

bool emu_is_pinned(const void *p)
{
    (void)p;
    return false;
}

void emu_warn(const char *lib, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_warn, sizeof last_warn, fmt, ap);
    va_end(ap);
    n_warn++;
    fprintf(stderr, "cuda-emu: %s: %s\n", lib, last_warn);
}

void emu_fault(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_fault, sizeof last_fault, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cuda-emu: FAULT: %s\n", last_fault);
    if (fault_armed) {
        fault_armed = false;
        longjmp(fault_jmp, 1);
    }
    abort();
}

// Device memory of the test: poisoned with 0xff bytes (NaN as fp32 and as
// BF16), so an output that is read before it is written shows.
static void *dev_alloc(size_t n)
{
    for (int i = 0; i < MAX_ALLOCS; i++) {
        if (allocs[i].p) continue;
        allocs[i].p = malloc(n ? n : 1);
        assert_non_null(allocs[i].p);
        memset(allocs[i].p, 0xff, n);
        allocs[i].n = n;
        return allocs[i].p;
    }
    fail_msg("test device allocation table full (%d)", MAX_ALLOCS);
    return NULL;
}

static void dev_free(void *p)
{
    for (int i = 0; i < MAX_ALLOCS; i++) {
        if (allocs[i].p != p) continue;
        free(p);
        allocs[i].p = NULL;
        allocs[i].n = 0;
        return;
    }
}

// Runs stmt, which must fault with a message holding both substrings.
#define EXPECT_FAULT(stmt, s1, s2)                                                                 \
    do {                                                                                           \
        last_fault[0] = 0;                                                                         \
        fault_armed = true;                                                                        \
        if (setjmp(fault_jmp) == 0) {                                                              \
            (void)(stmt);                                                                          \
            fault_armed = false;                                                                   \
            fail_msg("expected a fault from %s", #stmt);                                           \
        }                                                                                          \
        if (!strstr(last_fault, s1) || !strstr(last_fault, s2))                                    \
            fail_msg("fault \"%s\" lacks \"%s\" or \"%s\"", last_fault, s1, s2);                   \
    } while (0)

// Runs stmt, which must return status `want` with a warning holding `s`.
#define EXPECT_REJECT(stmt, want, s)                                                               \
    do {                                                                                           \
        last_warn[0] = 0;                                                                          \
        assert_int_equal((stmt), (want));                                                          \
        if (!strstr(last_warn, s)) fail_msg("warning \"%s\" lacks \"%s\"", last_warn, s);          \
    } while (0)

// ---- references ---------------------------------------------------------------------------

static uint32_t rng = 12345;
static uint32_t next_u32(void)
{
    rng = rng * 1664525u + 1013904223u;
    return rng;
}

static float next_f(void) // in [-1, 1)
{
    return (float)((next_u32() >> 8) / 8388608.0 - 1.0);
}

static float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float ref_bf16_to_f32(uint16_t h)
{
    return f32_of((uint32_t)h << 16);
}

// Round to the nearer of the two BF16 neighbours (truncation and the next
// one up in magnitude), ties to the even one, measured in double; NaN is
// 0x7fff as in CUDA. Written unlike cublas.c's, on purpose.
static uint16_t ref_f32_to_bf16(float f)
{
    if (isnan(f)) return 0x7fff;
    const uint16_t lo = (uint16_t)(bits_of(f) >> 16);
    if ((lo & 0x7fff) == 0x7f80) return lo; // +-Inf
    const uint16_t hi = (uint16_t)(lo + 1);
    const double dl = fabs((double)f - (double)ref_bf16_to_f32(lo));
    double dh;
    if ((hi & 0x7fff) == 0x7f80) // rounding up overflows: the next step would be 2^128
        dh = fabs(fabs((double)f) - ldexp(1.0, 128));
    else
        dh = fabs((double)f - (double)ref_bf16_to_f32(hi));
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1) ? hi : lo;
}

typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc;
} shape;

static size_t extent(int rows, int cols, int ld)
{
    return rows && cols ? (size_t)(cols - 1) * (size_t)ld + (size_t)rows : 0;
}
static size_t a_elems(const shape *s)
{
    return s->ta == CUBLAS_OP_N ? extent(s->m, s->k, s->lda) : extent(s->k, s->m, s->lda);
}
static size_t b_elems(const shape *s)
{
    return s->tb == CUBLAS_OP_N ? extent(s->k, s->n, s->ldb) : extent(s->n, s->k, s->ldb);
}
static size_t c_elems(const shape *s)
{
    return extent(s->m, s->n, s->ldc);
}

static float op_at(const float *X, cublasOperation_t t, int r, int c, int ld)
{
    return t == CUBLAS_OP_N ? X[r + (size_t)c * ld] : X[c + (size_t)r * ld];
}

// The same sum in the same order as the emulation (fp32, k ascending), so a
// BF16 result must match bit for bit; also the exact sum in double.
static void ref_gemm(const shape *s, float alpha, const float *A, const float *B, float beta,
                     const float *C, float *out32, double *out64)
{
    for (int j = 0; j < s->n; j++) {
        for (int i = 0; i < s->m; i++) {
            float acc = 0.0f;
            double acc64 = 0.0;
            for (int l = 0; l < s->k; l++) {
                const float a = op_at(A, s->ta, i, l, s->lda), b = op_at(B, s->tb, l, j, s->ldb);
                const float prod = a * b;
                acc += prod;
                acc64 += (double)a * b;
            }
            const size_t ic = (size_t)i + (size_t)j * s->ldc;
            float v = alpha * acc;
            if (beta != 0.0f) {
                const float old = beta * C[ic];
                v += old;
            }
            out32[ic] = v;
            out64[ic] = alpha * acc64 + (beta != 0.0f ? (double)beta * C[ic] : 0.0);
        }
    }
}

static bool in_matrix(size_t idx, int rows, int ld)
{
    return (int)(idx % (size_t)ld) < rows;
}

static const shape shapes[] = {
    {CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, 0, 0, 0},  {CUBLAS_OP_N, CUBLAS_OP_N, 5, 7, 11, 0, 0, 0},
    {CUBLAS_OP_N, CUBLAS_OP_N, 13, 3, 2, 0, 0, 0}, {CUBLAS_OP_N, CUBLAS_OP_N, 4, 9, 1, 0, 0, 0},
    {CUBLAS_OP_N, CUBLAS_OP_N, 7, 5, 13, 0, 0, 0},
};

// Every shape under every op pair, leading dimensions tight and padded by 3.
static int all_shapes(shape *out)
{
    int n = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int pad = 0; pad <= 3; pad += 3) {
                    shape s = shapes[i];
                    s.ta = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
                    s.tb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
                    s.lda = (s.ta == CUBLAS_OP_N ? s.m : s.k) + pad;
                    s.ldb = (s.tb == CUBLAS_OP_N ? s.k : s.n) + pad;
                    s.ldc = s.m + pad;
                    out[n++] = s;
                }
    return n;
}

// ---- tests --------------------------------------------------------------------------------

static void test_sgemm(void **state)
{
    (void)state;
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasSetStream(h, NULL), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), CUBLAS_STATUS_SUCCESS);
    shape ss[64];
    const int ns = all_shapes(ss);
    for (int t = 0; t < ns; t++) {
        const shape *s = &ss[t];
        const size_t na = a_elems(s), nb = b_elems(s), nc = c_elems(s);
        float *A = dev_alloc(na * 4), *B = dev_alloc(nb * 4), *C = dev_alloc(nc * 4);
        float *C0 = malloc(nc * 4), *r32 = malloc(nc * 4);
        double *r64 = malloc(nc * 8);
        for (size_t i = 0; i < na; i++)
            A[i] = next_f();
        for (size_t i = 0; i < nb; i++)
            B[i] = next_f();
        for (size_t i = 0; i < nc; i++)
            C[i] = C0[i] = next_f();
        const float alpha = 1.5f, beta = -0.5f;
        ref_gemm(s, alpha, A, B, beta, C0, r32, r64);
        assert_int_equal(cublasSgemm(h, s->ta, s->tb, s->m, s->n, s->k, &alpha, A, s->lda, B,
                                     s->ldb, &beta, C, s->ldc),
                         CUBLAS_STATUS_SUCCESS);
        for (size_t i = 0; i < nc; i++) {
            if (!in_matrix(i, s->m, s->ldc)) {
                assert_memory_equal(&C[i], &C0[i], 4); // padding rows untouched
                continue;
            }
            if (fabs(C[i] - r64[i]) > 1e-5 * (s->k + 1))
                fail_msg("sgemm %s%s m=%d n=%d k=%d ld pad %d: C[%zu] = %g, expected %g",
                         s->ta ? "T" : "N", s->tb ? "T" : "N", s->m, s->n, s->k, s->ldc - s->m, i,
                         C[i], r64[i]);
            assert_int_equal(bits_of(C[i]), bits_of(r32[i]));
        }
        dev_free(A);
        dev_free(B);
        dev_free(C);
        free(C0);
        free(r32);
        free(r64);
    }
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

// BF16 A, B; C BF16 or FP32: bit-exact with the same-order fp32 sum.
static void test_gemmex_bf16(void **state)
{
    (void)state;
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    shape ss[64];
    const int ns = all_shapes(ss);
    for (int c32 = 0; c32 < 2; c32++) {
        for (int t = 0; t < ns; t++) {
            const shape *s = &ss[t];
            const size_t na = a_elems(s), nb = b_elems(s), nc = c_elems(s);
            uint16_t *A = dev_alloc(na * 2), *B = dev_alloc(nb * 2);
            void *C = dev_alloc(nc * (c32 ? 4 : 2));
            float *Af = malloc(na * 4), *Bf = malloc(nb * 4), *Cf = malloc(nc * 4);
            float *r32 = malloc(nc * 4);
            double *r64 = malloc(nc * 8);
            for (size_t i = 0; i < na; i++)
                Af[i] = ref_bf16_to_f32(A[i] = ref_f32_to_bf16(next_f()));
            for (size_t i = 0; i < nb; i++)
                Bf[i] = ref_bf16_to_f32(B[i] = ref_f32_to_bf16(next_f()));
            for (size_t i = 0; i < nc; i++) {
                const uint16_t v = ref_f32_to_bf16(next_f());
                Cf[i] = ref_bf16_to_f32(v);
                if (c32)
                    ((float *)C)[i] = Cf[i];
                else
                    ((uint16_t *)C)[i] = v;
            }
            const float alpha = 0.75f, beta = 2.0f;
            ref_gemm(s, alpha, Af, Bf, beta, Cf, r32, r64);
            assert_int_equal(cublasGemmEx(h, s->ta, s->tb, s->m, s->n, s->k, &alpha, A, CUDA_R_16BF,
                                          s->lda, B, CUDA_R_16BF, s->ldb, &beta, C,
                                          c32 ? CUDA_R_32F : CUDA_R_16BF, s->ldc,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                             CUBLAS_STATUS_SUCCESS);
            for (size_t i = 0; i < nc; i++) {
                const float got = c32 ? ((float *)C)[i] : ref_bf16_to_f32(((uint16_t *)C)[i]);
                if (!in_matrix(i, s->m, s->ldc)) {
                    assert_int_equal(bits_of(got), bits_of(Cf[i]));
                    continue;
                }
                const float want = c32 ? r32[i] : ref_bf16_to_f32(ref_f32_to_bf16(r32[i]));
                if (bits_of(got) != bits_of(want))
                    fail_msg("gemmex bf16->%s %s%s m=%d n=%d k=%d: C[%zu] = %a, expected %a",
                             c32 ? "f32" : "bf16", s->ta ? "T" : "N", s->tb ? "T" : "N", s->m, s->n,
                             s->k, i, got, want);
                assert_true(fabs(got - r64[i]) <= 1e-2 * (fabs(r64[i]) + 1));
            }
            dev_free(A);
            dev_free(B);
            dev_free(C);
            free(Af);
            free(Bf);
            free(Cf);
            free(r32);
            free(r64);
        }
    }
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

// beta == 0: C (NaN-poisoned) is not read; alpha == 0 or k == 0: A, B are
// not read; m == 0 or n == 0: nothing is touched, not even the pointers.
static void test_beta_zero_and_quick_returns(void **state)
{
    (void)state;
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const int m = 3, n = 2, k = 4;
    float *A = dev_alloc(m * k * 4), *B = dev_alloc(k * n * 4), *C = dev_alloc(m * n * 4);
    for (int i = 0; i < m * k; i++)
        A[i] = 1.0f;
    for (int i = 0; i < k * n; i++)
        B[i] = 2.0f;
    // C is 0xff bytes: NaN.
    const float one = 1.0f, zero = 0.0f, two = 2.0f;
    assert_int_equal(
        cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, A, m, B, k, &zero, C, m),
        CUBLAS_STATUS_SUCCESS);
    for (int i = 0; i < m * n; i++)
        assert_true(C[i] == 8.0f);
    // BF16 C poisoned with NaN, beta 0.
    uint16_t *Cb = dev_alloc(m * n * 2), *Ab = dev_alloc(m * k * 2), *Bb = dev_alloc(k * n * 2);
    for (int i = 0; i < m * k; i++)
        Ab[i] = 0x3f80; // 1.0
    for (int i = 0; i < k * n; i++)
        Bb[i] = 0x4000; // 2.0
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, Ab, CUDA_R_16BF, m,
                                  Bb, CUDA_R_16BF, k, &zero, Cb, CUDA_R_16BF, m, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    for (int i = 0; i < m * n; i++)
        assert_int_equal(Cb[i], 0x4100); // 8.0
    // alpha 0: NaN in A is not read; C = beta * C.
    for (int i = 0; i < m * k; i++)
        A[i] = NAN;
    assert_int_equal(
        cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &zero, A, m, B, k, &two, C, m),
        CUBLAS_STATUS_SUCCESS);
    for (int i = 0; i < m * n; i++)
        assert_true(C[i] == 16.0f);
    // k 0: C = beta * C, A and B may be NULL.
    assert_int_equal(
        cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, 0, &one, NULL, m, NULL, 1, &two, C, m),
        CUBLAS_STATUS_SUCCESS);
    for (int i = 0; i < m * n; i++)
        assert_true(C[i] == 32.0f);
    // m 0, n 0: nothing touched, NULL fine.
    assert_int_equal(
        cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 0, n, k, &one, NULL, 1, NULL, k, &zero, NULL, 1),
        CUBLAS_STATUS_SUCCESS);
    assert_int_equal(
        cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, 0, k, &one, NULL, m, NULL, k, &zero, NULL, m),
        CUBLAS_STATUS_SUCCESS);
    dev_free(A);
    dev_free(B);
    dev_free(C);
    dev_free(Ab);
    dev_free(Bb);
    dev_free(Cb);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

// BF16 -> FP32 for all 65536 patterns; FP32 -> BF16 against the double
// reference for hand-picked edges (ties, overflow, subnormals, NaN) and
// random patterns; exhaustive products a * (1 + 2^-7) rounded to BF16.
static void test_bf16_bit_exact(void **state)
{
    (void)state;
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const int N = 65536;
    uint16_t *A = dev_alloc((size_t)N * 2), *one_b = dev_alloc(2), *Cb = dev_alloc((size_t)N * 2);
    float *C = dev_alloc((size_t)N * 4);
    for (int i = 0; i < N; i++)
        A[i] = (uint16_t)i;
    *one_b = 0x3f80;
    const float one = 1.0f, zero = 0.0f;
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, N, 1, 1, &one, A, CUDA_R_16BF, N,
                                  one_b, CUDA_R_16BF, 1, &zero, C, CUDA_R_32F, N,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    for (int i = 0; i < N; i++) {
        if (isnan(ref_bf16_to_f32((uint16_t)i)))
            assert_true(isnan(C[i]));
        else if (bits_of(C[i]) != bits_of(0.0f + ref_bf16_to_f32((uint16_t)i))) // -0 sums to +0
            fail_msg("bf16 0x%04x -> f32 0x%08x, expected 0x%08x", i, bits_of(C[i]),
                     (uint32_t)i << 16);
    }

    // x -> BF16 through alpha: C = bf16(alpha * (1 * 1)).
    static const uint32_t edges[] = {
        0x00000000, 0x80000000, 0x3f800000, 0x3f808000, /* tie, even below */
        0x3f818000,                                     /* tie, odd below: up */
        0x3f808001, 0x3f807fff, 0x7f7fffff,             /* rounds to Inf */
        0x7f7f7fff, 0xff7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, /* sNaN */
        0xffc12345, 0x00000001, 0x00008000, 0x00018000, 0x0000ffff, 0x80008001,
        0x007fffff, 0x00800000, 0x4049fdb0, 0xc2f6e979};
    const int n_edges = (int)(sizeof edges / sizeof edges[0]);
    for (int t = 0; t < n_edges + 200000; t++) {
        const uint32_t u = t < n_edges ? edges[t] : next_u32();
        const float x = f32_of(u);
        if (x == 0.0f) continue; // alpha == 0 skips the product: covered below
        assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &x, one_b, CUDA_R_16BF,
                                      1, one_b, CUDA_R_16BF, 1, &zero, Cb, CUDA_R_16BF, 1,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         CUBLAS_STATUS_SUCCESS);
        if (Cb[0] != ref_f32_to_bf16(x))
            fail_msg("f32 0x%08x -> bf16 0x%04x, expected 0x%04x", u, Cb[0], ref_f32_to_bf16(x));
    }
    assert_int_equal(ref_f32_to_bf16(f32_of(0x3f808000)), 0x3f80);
    assert_int_equal(ref_f32_to_bf16(f32_of(0x3f818000)), 0x3f82);
    assert_int_equal(ref_f32_to_bf16(f32_of(0x7f7fffff)), 0x7f80);
    assert_int_equal(ref_f32_to_bf16(f32_of(0x7f800001)), 0x7fff);

    // Every BF16 times 1 + 2^-7: products with up to 16 significant bits.
    *one_b = 0x3f81;
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, N, 1, 1, &one, A, CUDA_R_16BF, N,
                                  one_b, CUDA_R_16BF, 1, &zero, Cb, CUDA_R_16BF, N,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    const float b = ref_bf16_to_f32(0x3f81);
    for (int i = 0; i < N; i++) {
        const float acc = 0.0f + ref_bf16_to_f32((uint16_t)i) * b; // -0 sums to +0, as there
        const uint16_t want = ref_f32_to_bf16(acc);
        if (Cb[i] != want)
            fail_msg("bf16 0x%04x * (1 + 2^-7) -> 0x%04x, expected 0x%04x", i, Cb[i], want);
    }
    dev_free(A);
    dev_free(one_b);
    dev_free(Cb);
    dev_free(C);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

// One grouped problem set, BF16 or FP32 throughout: groups {2, 0, 1, 3}
// problems of different shapes, ops, ld and scalars; checked against one
// cublasGemmEx per problem on copies of the same inputs.
static void grouped_case(cudaDataType t)
{
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    enum { G = 4, P = 6 };
    const int size[G] = {2, 0, 1, 3};
    const shape gs[G] = {{CUBLAS_OP_T, CUBLAS_OP_N, 5, 3, 7, 7, 7, 5},
                         {CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, 2, 2, 2},
                         {CUBLAS_OP_N, CUBLAS_OP_T, 4, 6, 3, 6, 8, 9},
                         {CUBLAS_OP_T, CUBLAS_OP_T, 1, 9, 11, 13, 9, 2}};
    cublasOperation_t ta[G], tb[G];
    int m[G], n[G], k[G], lda[G], ldb[G], ldc[G];
    const float alpha[G] = {1.0f, 3.0f, -2.0f, 0.5f}, beta[G] = {0.0f, 1.0f, 1.0f, -1.0f};
    for (int g = 0; g < G; g++) {
        ta[g] = gs[g].ta, tb[g] = gs[g].tb, m[g] = gs[g].m, n[g] = gs[g].n, k[g] = gs[g].k;
        lda[g] = gs[g].lda, ldb[g] = gs[g].ldb, ldc[g] = gs[g].ldc;
    }
    const size_t esz = t == CUDA_R_32F ? 4 : 2;
    void **ptrs = dev_alloc(3 * P * sizeof(void *)); // A | B | C pointer arrays, device
    void *want_c[P];
    size_t c_bytes[P];
    int group_of[P];
    int q = 0;
    for (int g = 0; g < G; g++) {
        for (int s = 0; s < size[g]; s++, q++) {
            const size_t na = a_elems(&gs[g]), nb = b_elems(&gs[g]), nc = c_elems(&gs[g]);
            void *A = dev_alloc(na * esz), *B = dev_alloc(nb * esz), *C = dev_alloc(nc * esz);
            void *C2 = dev_alloc(nc * esz);
            for (size_t i = 0; i < na; i++) {
                if (esz == 4)
                    ((float *)A)[i] = next_f();
                else
                    ((uint16_t *)A)[i] = ref_f32_to_bf16(next_f());
            }
            for (size_t i = 0; i < nb; i++) {
                if (esz == 4)
                    ((float *)B)[i] = next_f();
                else
                    ((uint16_t *)B)[i] = ref_f32_to_bf16(next_f());
            }
            for (size_t i = 0; i < nc; i++) {
                if (esz == 4)
                    ((float *)C)[i] = next_f();
                else
                    ((uint16_t *)C)[i] = ref_f32_to_bf16(next_f());
            }
            if (beta[g] == 0.0f) memset(C, 0xff, nc * esz); // NaN must not leak through
            memcpy(C2, C, nc * esz);
            assert_int_equal(cublasGemmEx(h, ta[g], tb[g], m[g], n[g], k[g], &alpha[g], A, t,
                                          lda[g], B, t, ldb[g], &beta[g], C2, t, ldc[g],
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                             CUBLAS_STATUS_SUCCESS);
            ptrs[q] = A;
            ptrs[P + q] = B;
            ptrs[2 * P + q] = C;
            want_c[q] = C2;
            group_of[q] = g;
            c_bytes[q] = nc * esz;
        }
    }
    assert_int_equal(q, P);
    assert_int_equal(cublasGemmGroupedBatchedEx(
                         h, ta, tb, m, n, k, alpha, (const void *const *)ptrs, t, lda,
                         (const void *const *)(ptrs + P), t, ldb, beta,
                         (void *const *)(ptrs + 2 * P), t, ldc, G, size, CUBLAS_COMPUTE_32F),
                     CUBLAS_STATUS_SUCCESS);
    for (q = 0; q < P; q++) {
        if (memcmp(ptrs[2 * P + q], want_c[q], c_bytes[q]) != 0)
            fail_msg("grouped %s problem %d differs from its cublasGemmEx",
                     t == CUDA_R_32F ? "f32" : "bf16", q);
        // Finite inputs: a NaN in C is the poison of a beta == 0 C leaking.
        const shape *s = &gs[group_of[q]];
        for (size_t i = 0; i < c_bytes[q] / esz; i++) {
            const void *c = ptrs[2 * P + q];
            const float v =
                esz == 4 ? ((const float *)c)[i] : ref_bf16_to_f32(((const uint16_t *)c)[i]);
            if (in_matrix(i, s->m, s->ldc)) assert_false(isnan(v));
        }
    }
    for (q = 0; q < P; q++) {
        dev_free(ptrs[q]);
        dev_free(ptrs[P + q]);
        dev_free(ptrs[2 * P + q]);
        dev_free(want_c[q]);
    }
    dev_free(ptrs);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

static void test_grouped(void **state)
{
    (void)state;
    grouped_case(CUDA_R_16BF);
    grouped_case(CUDA_R_32F);
}

// EP_EMU_CUBLAS_GROUPED=0: NOT_SUPPORTED and C untouched; any other value
// or none: the call runs.
static void test_grouped_not_supported(void **state)
{
    (void)state;
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    uint16_t *A = dev_alloc(2), *C = dev_alloc(2);
    *A = 0x4000; // 2.0
    *C = 0x1234;
    void **ptrs = dev_alloc(3 * sizeof(void *));
    ptrs[0] = A, ptrs[1] = A, ptrs[2] = C;
    const cublasOperation_t op = CUBLAS_OP_N;
    const int one_i = 1;
    const float one = 1.0f, zero = 0.0f;
#define GROUPED_1x1()                                                                              \
    cublasGemmGroupedBatchedEx(                                                                    \
        h, &op, &op, &one_i, &one_i, &one_i, &one, (const void *const *)ptrs, CUDA_R_16BF, &one_i, \
        (const void *const *)(ptrs + 1), CUDA_R_16BF, &one_i, &zero, (void *const *)(ptrs + 2),    \
        CUDA_R_16BF, &one_i, 1, &one_i, CUBLAS_COMPUTE_32F)
    setenv("EP_EMU_CUBLAS_GROUPED", "0", 1);
    EXPECT_REJECT(GROUPED_1x1(), CUBLAS_STATUS_NOT_SUPPORTED, "EP_EMU_CUBLAS_GROUPED=0");
    assert_int_equal(*C, 0x1234);
    setenv("EP_EMU_CUBLAS_GROUPED", "1", 1);
    assert_int_equal(GROUPED_1x1(), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(*C, 0x4080); // 4.0
    *C = 0x1234;
    unsetenv("EP_EMU_CUBLAS_GROUPED");
    assert_int_equal(GROUPED_1x1(), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(*C, 0x4080);
#undef GROUPED_1x1
    dev_free(A);
    dev_free(C);
    dev_free(ptrs);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

// Arguments cuBLAS rejects: status, a message naming the argument, and C
// untouched.
static void test_rejections(void **state)
{
    (void)state;
    const float one = 1.0f, zero = 0.0f;
    const int m = 5, n = 3, k = 4;
    float *A = dev_alloc(64 * 4), *B = dev_alloc(64 * 4), *C = dev_alloc(64 * 4);
    memset(C, 0, 64 * 4);

    EXPECT_REJECT(cublasCreate(NULL), CUBLAS_STATUS_INVALID_VALUE, "handle is NULL");
    EXPECT_REJECT(cublasDestroy(NULL), CUBLAS_STATUS_NOT_INITIALIZED, "handle is NULL");
    EXPECT_REJECT(cublasSetStream(NULL, NULL), CUBLAS_STATUS_NOT_INITIALIZED, "cublasSetStream");
    EXPECT_REJECT(cublasSetMathMode(NULL, CUBLAS_DEFAULT_MATH), CUBLAS_STATUS_NOT_INITIALIZED,
                  "cublasSetMathMode");
    EXPECT_REJECT(
        cublasSgemm(NULL, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, A, m, B, k, &zero, C, m),
        CUBLAS_STATUS_NOT_INITIALIZED, "cublasSgemm: handle is NULL");
    EXPECT_REJECT(cublasGemmEx(NULL, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, A, CUDA_R_32F, m, B,
                               CUDA_R_32F, k, &zero, C, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT),
                  CUBLAS_STATUS_NOT_INITIALIZED, "cublasGemmEx: handle is NULL");
    EXPECT_REJECT(cublasGemmGroupedBatchedEx(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                             CUDA_R_16BF, NULL, NULL, CUDA_R_16BF, NULL, NULL, NULL,
                                             CUDA_R_16BF, NULL, 1, NULL, CUBLAS_COMPUTE_32F),
                  CUBLAS_STATUS_NOT_INITIALIZED, "cublasGemmGroupedBatchedEx: handle is NULL");

    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    EXPECT_REJECT(cublasSetMathMode(h, (cublasMath_t)7), CUBLAS_STATUS_INVALID_VALUE, "mode = 7");
    assert_int_equal(cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH |
                                              CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasGetStatusString(CUBLAS_STATUS_INVALID_VALUE)[0] != 0, 1);

    // Sgemm: each bad argument, op N and op T.
    const cublasOperation_t N = CUBLAS_OP_N, T = CUBLAS_OP_T;
    EXPECT_REJECT(cublasSgemm(h, (cublasOperation_t)5, N, m, n, k, &one, A, m, B, k, &zero, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "transa = 5");
    EXPECT_REJECT(cublasSgemm(h, N, (cublasOperation_t)3, m, n, k, &one, A, m, B, k, &zero, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "transb = 3");
    EXPECT_REJECT(cublasSgemm(h, N, N, -1, n, k, &one, A, 1, B, k, &zero, C, 1),
                  CUBLAS_STATUS_INVALID_VALUE, "found -1, 3, 4");
    EXPECT_REJECT(cublasSgemm(h, N, N, m, -2, k, &one, A, m, B, k, &zero, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "found 5, -2, 4");
    EXPECT_REJECT(cublasSgemm(h, N, N, m, n, -3, &one, A, m, B, 1, &zero, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "found 5, 3, -3");
    EXPECT_REJECT(cublasSgemm(h, N, N, m, n, k, &one, A, m - 1, B, k, &zero, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "lda = 4, expected >= max(1, m) = 5");
    EXPECT_REJECT(cublasSgemm(h, T, N, m, n, k, &one, A, k - 1, B, k, &zero, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "lda = 3, expected >= max(1, k) = 4");
    EXPECT_REJECT(cublasSgemm(h, N, N, m, n, k, &one, A, m, B, k - 1, &zero, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "ldb = 3, expected >= max(1, k) = 4");
    EXPECT_REJECT(cublasSgemm(h, N, T, m, n, k, &one, A, m, B, n - 1, &zero, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "ldb = 2, expected >= max(1, n) = 3");
    EXPECT_REJECT(cublasSgemm(h, N, N, m, n, k, &one, A, m, B, k, &zero, C, m - 1),
                  CUBLAS_STATUS_INVALID_VALUE, "ldc = 4, expected >= max(1, m) = 5");
    EXPECT_REJECT(cublasSgemm(h, N, N, 0, n, k, &one, A, 0, B, k, &zero, C, 1),
                  CUBLAS_STATUS_INVALID_VALUE, "lda = 0, expected >= max(1, m) = 1");
    EXPECT_REJECT(cublasSgemm(h, N, N, m, n, k, NULL, A, m, B, k, &zero, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "alpha is NULL");
    EXPECT_REJECT(cublasSgemm(h, N, N, m, n, k, &one, A, m, B, k, NULL, C, m),
                  CUBLAS_STATUS_INVALID_VALUE, "beta is NULL");
    EXPECT_REJECT(cublasSgemm(h, N, N, m, n, k, &one, A, m, B, k, &one, NULL, m),
                  CUBLAS_STATUS_INVALID_VALUE, "C is NULL, but beta = 1 scales it");

    // GemmEx: the same checks, and types / compute types not emulated.
    EXPECT_REJECT(cublasGemmEx(h, T, N, m, n, k, &one, A, CUDA_R_16BF, k - 1, B, CUDA_R_16BF, k,
                               &zero, C, CUDA_R_16BF, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  CUBLAS_STATUS_INVALID_VALUE, "cublasGemmEx: lda = 3");
    EXPECT_REJECT(cublasGemmEx(h, N, N, m, n, k, &one, A, CUDA_R_16BF, m, B, CUDA_R_32F, k, &zero,
                               C, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  CUBLAS_STATUS_NOT_SUPPORTED, "CUDA_R_16BF, CUDA_R_32F, CUDA_R_32F");
    EXPECT_REJECT(cublasGemmEx(h, N, N, m, n, k, &one, A, CUDA_R_32F, m, B, CUDA_R_32F, k, &zero, C,
                               CUDA_R_16BF, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  CUBLAS_STATUS_NOT_SUPPORTED, "not emulated");
    EXPECT_REJECT(cublasGemmEx(h, N, N, m, n, k, &one, A, CUDA_R_16F, m, B, CUDA_R_16F, k, &zero, C,
                               CUDA_R_16F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  CUBLAS_STATUS_NOT_SUPPORTED, "CUDA_R_16F");
    EXPECT_REJECT(cublasGemmEx(h, N, N, m, n, k, &one, A, CUDA_R_32F, m, B, CUDA_R_32F, k, &zero, C,
                               CUDA_R_32F, m, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT),
                  CUBLAS_STATUS_NOT_SUPPORTED, "computeType 77");

    // Grouped: group_count, group_size, a bad ld in group 1, NULL arrays.
    void **ptrs = dev_alloc(3 * 2 * sizeof(void *));
    ptrs[0] = ptrs[1] = A, ptrs[2] = ptrs[3] = B, ptrs[4] = ptrs[5] = C;
    cublasOperation_t ta[2] = {N, T}, tb[2] = {N, N};
    int gm[2] = {m, m}, gn[2] = {n, n}, gk[2] = {k, k}, lda[2] = {m, k - 1}, ldb[2] = {k, k},
        ldc[2] = {m, m}, gsz[2] = {1, 1};
    const float al[2] = {1, 1}, be[2] = {0, 0};
#define GROUPED(count)                                                                             \
    cublasGemmGroupedBatchedEx(h, ta, tb, gm, gn, gk, al, (const void *const *)ptrs, CUDA_R_32F,   \
                               lda, (const void *const *)(ptrs + 2), CUDA_R_32F, ldb, be,          \
                               (void *const *)(ptrs + 4), CUDA_R_32F, ldc, (count), gsz,           \
                               CUBLAS_COMPUTE_32F)
    EXPECT_REJECT(GROUPED(2), CUBLAS_STATUS_INVALID_VALUE, "(group 1): lda = 3");
    EXPECT_REJECT(GROUPED(-1), CUBLAS_STATUS_INVALID_VALUE, "group_count = -1");
    lda[1] = k;
    gsz[1] = -4;
    EXPECT_REJECT(GROUPED(2), CUBLAS_STATUS_INVALID_VALUE, "(group 1): group_size = -4");
    gsz[1] = 1;
    gk[0] = -1;
    EXPECT_REJECT(GROUPED(2), CUBLAS_STATUS_INVALID_VALUE, "(group 0): expected m, n, k >= 0");
    gk[0] = k;
    EXPECT_REJECT(cublasGemmGroupedBatchedEx(h, ta, tb, gm, gn, gk, al, (const void *const *)ptrs,
                                             CUDA_R_16BF, lda, (const void *const *)(ptrs + 2),
                                             CUDA_R_16BF, ldb, be, (void *const *)(ptrs + 4),
                                             CUDA_R_32F, ldc, 2, gsz, CUBLAS_COMPUTE_32F),
                  CUBLAS_STATUS_NOT_SUPPORTED, "CUDA_R_16BF, CUDA_R_16BF, CUDA_R_32F");
    EXPECT_REJECT(cublasGemmGroupedBatchedEx(h, ta, tb, gm, gn, NULL, al, (const void *const *)ptrs,
                                             CUDA_R_32F, lda, (const void *const *)(ptrs + 2),
                                             CUDA_R_32F, ldb, be, (void *const *)(ptrs + 4),
                                             CUDA_R_32F, ldc, 2, gsz, CUBLAS_COMPUTE_32F),
                  CUBLAS_STATUS_INVALID_VALUE, "host array");
    assert_int_equal(GROUPED(0), CUBLAS_STATUS_SUCCESS);
    for (int i = 0; i < 64; i++)
        assert_true(C[i] == 0.0f); // nothing above ran
    assert_int_equal(GROUPED(2), CUBLAS_STATUS_SUCCESS);
#undef GROUPED
    dev_free(ptrs);
    dev_free(A);
    dev_free(B);
    dev_free(C);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

// Operands the device could not read: a fault naming the call and argument.
// cublasGemmStridedBatchedEx: every problem of the batch bit for bit what
// cublasGemmEx gives for it alone (BF16 in, fp32 out, A transposed, strides
// with gaps between the problems that must stay untouched); batchCount 0
// touches nothing, a negative one is refused, and a stride 2 elements too
// long (the extent of the 4th problem then leaves A by 2) faults before
// anything runs, naming that problem.
static void test_strided_batched(void **state)
{
    (void)state;
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    enum { M = 7, N = 3, K = 5, BATCH = 4, LDA = K + 1, LDB = K + 2, LDC = M + 1 };
    const long long sa = (long long)LDA * M + 3, sb = (long long)LDB * N + 1, sc = LDC * N + 2;
    const size_t na = (size_t)sa * BATCH, nb = (size_t)sb * BATCH, nc = (size_t)sc * BATCH;
    uint16_t *A = dev_alloc(na * 2), *B = dev_alloc(nb * 2);
    float *C = dev_alloc(nc * 4), *C1 = dev_alloc(nc * 4);
    for (size_t i = 0; i < na; i++)
        A[i] = ref_f32_to_bf16(next_f());
    for (size_t i = 0; i < nb; i++)
        B[i] = ref_f32_to_bf16(next_f());
    for (size_t i = 0; i < nc; i++)
        C[i] = C1[i] = next_f();
    const float alpha = 1.5f, beta = 0.5f;
    for (int b = 0; b < BATCH; b++)
        assert_int_equal(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, A + b * sa,
                                      CUDA_R_16BF, LDA, B + b * sb, CUDA_R_16BF, LDB, &beta,
                                      C1 + b * sc, CUDA_R_32F, LDC, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT),
                         CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, A,
                                                CUDA_R_16BF, LDA, sa, B, CUDA_R_16BF, LDB, sb,
                                                &beta, C, CUDA_R_32F, LDC, sc, BATCH,
                                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    assert_memory_equal(C, C1, nc * 4); // gaps included
    assert_int_equal(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, A,
                                                CUDA_R_16BF, LDA, sa, B, CUDA_R_16BF, LDB, sb,
                                                &beta, C, CUDA_R_32F, LDC, sc, 0,
                                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    assert_memory_equal(C, C1, nc * 4);
    EXPECT_REJECT(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, A,
                                             CUDA_R_16BF, LDA, sa, B, CUDA_R_16BF, LDB, sb, &beta,
                                             C, CUDA_R_32F, LDC, sc, -1, CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT),
                  CUBLAS_STATUS_INVALID_VALUE, "batchCount = -1");
    EXPECT_FAULT(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, A,
                                            CUDA_R_16BF, LDA, sa + 2, B, CUDA_R_16BF, LDB, sb,
                                            &beta, C, CUDA_R_32F, LDC, sc, BATCH,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmStridedBatchedEx (batch 3): A = ", "smaller");
    assert_memory_equal(C, C1, nc * 4); // the faulting call wrote nothing
    dev_free(A);
    dev_free(B);
    dev_free(C);
    dev_free(C1);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

static void test_faults(void **state)
{
    (void)state;
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    const float one = 1.0f, zero = 0.0f;
    const cublasOperation_t N = CUBLAS_OP_N, T = CUBLAS_OP_T;
    const int m = 5, n = 3, k = 4;
    float *A = dev_alloc(m * k * 4), *B = dev_alloc(k * n * 4), *C = dev_alloc(m * n * 4);
    float *host = malloc(64 * 4);
    memset(host, 0, 64 * 4);
    // Sanity: the tight call runs.
    assert_int_equal(cublasSgemm(h, N, N, m, n, k, &one, A, m, B, k, &zero, C, m),
                     CUBLAS_STATUS_SUCCESS);
    EXPECT_FAULT(cublasSgemm(h, N, N, m, n, k, &one, host, m, B, k, &zero, C, m),
                 "cublasSgemm: A = ", "not device memory");
    EXPECT_FAULT(cublasSgemm(h, N, N, m, n, k, &one, A, m, host, k, &zero, C, m),
                 "cublasSgemm: B = ", "not device memory");
    EXPECT_FAULT(cublasSgemm(h, N, N, m, n, k, &one, A, m, B, k, &zero, NULL, m),
                 "cublasSgemm: C = ", "NULL");
    // A wrong (too large) ld: the extent outgrows the buffer.
    EXPECT_FAULT(cublasSgemm(h, N, N, m, n, k, &one, A, m + 1, B, k, &zero, C, m),
                 "cublasSgemm: A = ", "smaller");
    EXPECT_FAULT(cublasSgemm(h, N, N, m, n, k, &one, A, m, B, k, &zero, C, m + 1),
                 "C = ", "5 x 3 CUDA_R_32F at ld 6 spans 68 bytes");
    // op T reads A as k x m: lda = k fits, but m x k at T with lda m + 2 does not.
    EXPECT_FAULT(cublasSgemm(h, T, N, m, n, k, &one, A, k + 2, B, k, &zero, C, m),
                 "A = ", "4 x 5 CUDA_R_32F at ld 6");
    // An offset pointer: in bounds at the start, past the end by one element.
    EXPECT_FAULT(cublasSgemm(h, N, N, m, n, k, &one, A + 1, m, B, k, &zero, C, m),
                 "A = ", "smaller");
    // BF16 operands: the extent is in 2-byte elements, so a buffer sized for
    // BF16 passes and one element too few does not.
    uint16_t *Ab = dev_alloc(m * k * 2 - 2), *Bb = dev_alloc(k * n * 2), *Cb = dev_alloc(m * n * 2);
    EXPECT_FAULT(cublasGemmEx(h, N, N, m, n, k, &one, Ab, CUDA_R_16BF, m, Bb, CUDA_R_16BF, k, &zero,
                              Cb, CUDA_R_16BF, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx: A = ", "spans 40 bytes");
    // Scalars in device memory while the pointer mode is host.
    float *d_one = dev_alloc(4);
    *d_one = 1.0f;
    EXPECT_FAULT(cublasSgemm(h, N, N, m, n, k, d_one, A, m, B, k, &zero, C, m), "alpha",
                 "pointer mode is host");

    // Grouped: pointer arrays in host memory, and one problem's B too small.
    void *hptrs[3] = {A, B, C};
    const int mi = m, ni = n, ki = k, ldai = m, ldbi = k, ldci = m, one_i = 1;
    EXPECT_FAULT(cublasGemmGroupedBatchedEx(
                     h, &N, &N, &mi, &ni, &ki, &one, (const void *const *)hptrs, CUDA_R_32F, &ldai,
                     (const void *const *)(hptrs + 1), CUDA_R_32F, &ldbi, &zero,
                     (void *const *)(hptrs + 2), CUDA_R_32F, &ldci, 1, &one_i, CUBLAS_COMPUTE_32F),
                 "cublasGemmGroupedBatchedEx: Aarray", "not inside one device allocation");
    void **ptrs = dev_alloc(6 * sizeof(void *));
    float *Bsmall = dev_alloc((k * n - 1) * 4);
    ptrs[0] = A, ptrs[1] = A, ptrs[2] = B, ptrs[3] = Bsmall, ptrs[4] = C, ptrs[5] = C;
    const int two = 2;
    EXPECT_FAULT(cublasGemmGroupedBatchedEx(
                     h, &N, &N, &mi, &ni, &ki, &one, (const void *const *)ptrs, CUDA_R_32F, &ldai,
                     (const void *const *)(ptrs + 2), CUDA_R_32F, &ldbi, &zero,
                     (void *const *)(ptrs + 4), CUDA_R_32F, &ldci, 1, &two, CUBLAS_COMPUTE_32F),
                 "cublasGemmGroupedBatchedEx (group 0, problem 1): B = ", "smaller");
    free(host);
    dev_free(A);
    dev_free(B);
    dev_free(C);
    dev_free(Ab);
    dev_free(Bb);
    dev_free(Cb);
    dev_free(d_one);
    dev_free(ptrs);
    dev_free(Bsmall);
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sgemm),
        cmocka_unit_test(test_gemmex_bf16),
        cmocka_unit_test(test_beta_zero_and_quick_returns),
        cmocka_unit_test(test_bf16_bit_exact),
        cmocka_unit_test(test_grouped),
        cmocka_unit_test(test_strided_batched),
        cmocka_unit_test(test_grouped_not_supported),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
