// The limits the CPU benches compare against, measured in the same run:
// STREAM triad and read-only DRAM bandwidth, and the BF16 GEMM peak of
// ep_kern_bf16_nt on the thread pool. Shared by `bench kernels` and
// `bench model`; no MPI (under mpirun each rank measures its own).
#include "app/bench_limits.h"
#include "common/weights.h"
#include "experts/kernels.h"

#include <stdio.h>
#include <stdlib.h>

#define BW_FLOATS ((int64_t)32 << 20) // elements of each triad array (128 MiB of fp32)

struct ep_bench_bw {
    float *a, *b, *c; // [n] the triad's arrays, or NULL
    uint64_t *r;      // [n / 2] the read-only pass's array (as many bytes as one of a, b, c)
    int64_t n, chunk;
    uint64_t *partial; // [threads] read-only sums (kept so the reads are not dropped)
    int n_partial;
};

static void triad_task(void *ctx, int task, int thread)
{
    ep_bench_bw *t = ctx;
    int64_t lo = task * t->chunk, hi = EP_MIN(t->n, lo + t->chunk);
    for (int64_t i = lo; i < hi; i++)
        t->a[i] = t->b[i] + 3.0f * t->c[i];
}

// Integer sums: a float sum cannot be vectorised or reordered without
// -ffast-math and would measure the adder's latency, not the memory.
static void read_task(void *ctx, int task, int thread)
{
    ep_bench_bw *t = ctx;
    const int64_t words = t->n / 2, chunk = t->chunk / 2;
    int64_t lo = task * chunk, hi = EP_MIN(words, lo + chunk);
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = lo;
    for (; i + 4 <= hi; i += 4) {
        s0 += t->r[i];
        s1 += t->r[i + 1];
        s2 += t->r[i + 2];
        s3 += t->r[i + 3];
    }
    for (; i < hi; i++)
        s0 += t->r[i];
    t->partial[thread] += s0 + s1 + s2 + s3;
}

ep_bench_bw *ep_bench_bw_init(bool triad)
{
    ep_bench_bw *t = ep_xcalloc(1, sizeof *t);
    t->n = BW_FLOATS;
    t->chunk = (t->n + 255) / 256;
    t->r = ep_xmalloc((size_t)t->n / 2 * sizeof(uint64_t));
    for (int64_t i = 0; i < t->n / 2; i++)
        t->r[i] = (uint64_t)i * 0x9E3779B97F4A7C15ull;
    if (triad) {
        t->a = ep_xmalloc((size_t)t->n * sizeof(float));
        t->b = ep_xmalloc((size_t)t->n * sizeof(float));
        t->c = ep_xmalloc((size_t)t->n * sizeof(float));
        for (int64_t i = 0; i < t->n; i++) {
            t->a[i] = 0;
            t->b[i] = (float)(i & 1023);
            t->c[i] = 1.0f;
        }
    }
    return t;
}

void ep_bench_bw_once(ep_bench_bw *t, double *triad_gbs, double *read_gbs)
{
    const int tasks = (int)((t->n + t->chunk - 1) / t->chunk);
    // The pool may have been resized since the last pass (--threads).
    if (t->n_partial < ep_par_threads()) {
        free(t->partial);
        t->n_partial = ep_par_threads();
        t->partial = ep_xcalloc((size_t)t->n_partial, sizeof(uint64_t));
    }
    if (triad_gbs) *triad_gbs = 0;
    if (t->a) {
        double t0 = ep_now_us();
        ep_par_for(tasks, triad_task, t);
        double us = ep_now_us() - t0;
        if (triad_gbs) *triad_gbs = 3.0 * t->n * sizeof(float) / (us * 1e3);
    }
    double t1 = ep_now_us();
    ep_par_for(tasks, read_task, t);
    *read_gbs = (double)t->n * sizeof(float) / ((ep_now_us() - t1) * 1e3);
}

void ep_bench_bw_free(ep_bench_bw *t)
{
    if (!t) return;
    if (t->partial && t->partial[0] == 1) printf("#\n"); // keeps the sums observable
    free(t->r);
    free(t->a);
    free(t->b);
    free(t->c);
    free(t->partial);
    free(t);
}

// ---- BF16 GEMM peak ------------------------------------------------------------

typedef struct {
    int size;
    const uint16_t *a, *b; // [size, size] BF16
    float *c;              // [size, size]
} gemm_job;

// Rows of A per task: the experts' pass (EP_EXPERTS_CHUNK_ROWS). 2048 rows
// in one task measured the same within the noise; 64-128 rows 2x slower.
#define GEMM_ROWS 512

// One tile of C: GEMM_ROWS rows of A against EP_KERN_PANEL rows of B, B's
// blocks inner so consecutive tasks share their rows of A.
static void gemm_task(void *ctx, int task, int thread)
{
    const gemm_job *g = ctx;
    const int n_blocks = (g->size + EP_KERN_PANEL - 1) / EP_KERN_PANEL;
    const int m0 = task / n_blocks * GEMM_ROWS, n0 = task % n_blocks * EP_KERN_PANEL;
    const int mb = EP_MIN(GEMM_ROWS, g->size - m0), nb = EP_MIN(EP_KERN_PANEL, g->size - n0);
    ep_kern_bf16_nt(mb, nb, g->size, g->a + (size_t)m0 * g->size, g->size,
                    g->b + (size_t)n0 * g->size, g->size, g->c + (size_t)m0 * g->size + n0,
                    g->size);
}

double ep_bench_bf16_gemm_gflops(int size, int repeats)
{
    EP_ASSERT(size >= 1 && repeats >= 1);
    const size_t nn = (size_t)size * size;
    uint16_t *a = ep_xmalloc(nn * sizeof(uint16_t)), *b = ep_xmalloc(nn * sizeof(uint16_t));
    float *c = ep_xmalloc(nn * sizeof(float));
    // Values in [-1, 1) (BF16 of small fp32): no denormal or overflow slows a path.
    ep_rng rng;
    ep_rng_seed(&rng, 7);
    float row[256];
    for (size_t i = 0; i < nn; i += 256) {
        const int len = (int)EP_MIN((size_t)256, nn - i);
        for (int j = 0; j < len; j++)
            row[j] = (float)(2.0 * ep_rng_uniform(&rng) - 1.0);
        ep_kern_to_bf16(len, row, a + i);
        for (int j = 0; j < len; j++)
            row[j] = (float)(2.0 * ep_rng_uniform(&rng) - 1.0);
        ep_kern_to_bf16(len, row, b + i);
    }
    gemm_job g = {.size = size, .a = a, .b = b, .c = c};
    const int tasks =
        (size + GEMM_ROWS - 1) / GEMM_ROWS * ((size + EP_KERN_PANEL - 1) / EP_KERN_PANEL);
    double best_us = 0;
    for (int r = 0; r <= repeats; r++) { // r = 0 warms up (page faults, threads)
        double t0 = ep_now_us();
        ep_par_for(tasks, gemm_task, &g);
        double us = ep_now_us() - t0;
        if (r > 0 && (best_us == 0 || us < best_us)) best_us = us;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * size * size * (double)size / (best_us * 1e3);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double ep_bench_median(double *v, int n)
{
    EP_ASSERT(n >= 1);
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
