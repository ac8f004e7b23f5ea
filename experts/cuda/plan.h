// Host-side layout of one grouped SwiGLU step on the GPU: which rows each
// local expert's GEMMs cover, which record each row gathers, where each pair's
// output row lands for the reduction, and the cuBLAS problem list. Pure C,
// no device: the CUDA experts upload it, the tests check it on the CPU.
#ifndef EP_EXPERTS_CUDA_PLAN_H
#define EP_EXPERTS_CUDA_PLAN_H

#include <stddef.h>

#include "common/ep.h"

// Rows are the (record, expert) pairs sorted by local expert, records in
// order within an expert (a stable counting sort), so expert s owns rows
// [start[s], start[s+1]) and its GEMMs read and write one contiguous block.
typedef struct {
    int n_local;    // local experts of the layer
    int n_rec;      // records of the step
    int n_rows;     // pairs = rows of the grouped GEMMs
    int *start;     // [n_local + 1] first row of each local expert
    int *fill;      // [n_local] scratch of the sort
    int *row_rec;   // [n_rows] record whose input row row r gathers
    int *pair_row;  // [n_rows] row of pair j (pairs numbered from pair_off[0], record order)
    int *rec_off;   // [n_rec + 1] pair_off rebased to 0: record i sums pairs [rec_off[i],
                    // rec_off[i+1])
    int n_groups;   // local experts with at least one row
    int *grp_local; // [n_local] those experts, ascending
    int local_cap, rec_cap, row_cap; // allocated sizes, grown only when a step needs more
} ep_cuda_plan;

// Validates the step like ep_experts_forward (offsets non-decreasing, expert
// ids in [0, n_experts), each held: local_of[e] >= 0) and fills the plan.
// Errors (EP_ERR_ARG) name the layer, the record and the expert.
ep_status ep_cuda_plan_build(ep_cuda_plan *pl, int layer, int n_experts, int n_local,
                             const int *local_of, int n_rec, const int *pair_off,
                             const int *pair_expert);
void ep_cuda_plan_free(ep_cuda_plan *pl); // zeroes; NULL-safe fields

// One projection of every non-empty group as cuBLAS column-major problems.
// Row-major out[rows, N] = in[rows, K] . W_s[N, K]^T is, column-major,
// out^T[N, rows] = op(W_s) . in^T with op = transpose, so per problem:
// m = N, n = rows of expert s, k = K, lda = ldb = K, ldc = N, A = W_s,
// B = in + start[s] * K, C = out + start[s] * N (elements of elem bytes).
typedef struct {
    int n;                // problems (the plan's n_groups)
    int *m, *nn, *k;      // [cap] cuBLAS m, n, k
    int *lda, *ldb, *ldc; // [cap]
    void **ptr;           // [3 * cap]: A of the n problems, then their B, then their C
    int cap;
} ep_cuda_gemm_list;

void ep_cuda_gemm_list_fill(ep_cuda_gemm_list *g, const ep_cuda_plan *pl, int N, int K, size_t elem,
                            const void *w, const void *in, void *out);
void ep_cuda_gemm_list_free(ep_cuda_gemm_list *g); // zeroes

#endif
