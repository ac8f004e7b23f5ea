// The physical limits the CPU benches (`bench kernels`, `bench model`)
// measure in the same run as what they time, so a row is compared with the
// machine of its own moment: DRAM bandwidth (a STREAM triad and a read-only
// pass, the access pattern of weight streaming) and the BF16 GEMM peak of
// the experts' own kernel on the thread pool. One rank; no MPI here.
#ifndef EP_BENCH_LIMITS_H
#define EP_BENCH_LIMITS_H

#include "common/ep.h"

// Buffers of the bandwidth passes: a 128 MiB read-only array, and with
// `triad` the STREAM triad's three 128 MiB arrays too (far beyond any cache).
typedef struct ep_bench_bw ep_bench_bw;
ep_bench_bw *ep_bench_bw_init(bool triad);
void ep_bench_bw_free(ep_bench_bw *b); // NULL ok
// One pass of each, GB/s (1e9 B/s). triad_gbs may be NULL, and is set to 0
// when the buffers were made without the triad. Triad bytes are counted as
// STREAM does (3 arrays, no write-allocate); the read-only pass sums the
// array as integers on every pool thread (ep_par_for).
void ep_bench_bw_once(ep_bench_bw *b, double *triad_gbs, double *read_gbs);

// GFLOP/s (2 m n k / time, best of `repeats` after one untimed call) of C =
// A . B^T in BF16 with fp32 accumulation, m = n = k = `size`, through
// ep_kern_bf16_nt on the pool (ep_par_for) in tiles of EP_KERN_PANEL weight
// rows (rows of B) by 512 rows of A: the tiles of the BF16 experts' prefill
// passes, on a shape with no gather, SiLU or weighting.
double ep_bench_bf16_gemm_gflops(int size, int repeats);

// Median of v[n] (n >= 1); sorts v.
double ep_bench_median(double *v, int n);

#endif
