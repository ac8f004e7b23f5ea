// The host half of the CUDA grouped SwiGLU: validation, the stable counting
// sort of pairs by local expert, the reduction map and the cuBLAS problem
// list. Nothing here touches the device (the tests run it on the CPU).
#include "experts/cuda/plan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// Grows an int array to hold n (contents not kept: every build rewrites them).
static void ep_plan_grow_ints(int **p, int *cap, int n)
{
    if (n <= *cap) return;
    int c = EP_MAX(n, *cap + *cap / 2);
    free(*p);
    *p = ep_xmalloc((size_t)(c > 0 ? c : 1) * sizeof(int));
    *cap = c;
}

ep_status ep_cuda_plan_build(ep_cuda_plan *pl, int layer, int n_experts, int n_local,
                             const int *local_of, int n_rec, const int *pair_off,
                             const int *pair_expert)
{
    if (n_rec < 0)
        return ep_errorf(EP_ERR_ARG, "cuda experts forward: n_rec = %d, expected >= 0", n_rec);
    if (n_rec > 0 && pair_off[0] < 0)
        return ep_errorf(EP_ERR_ARG, "cuda experts forward: pair_off[0] = %d, expected >= 0",
                         pair_off[0]);
    // The three arrays sized by local experts share one capacity.
    if (n_local + 1 > pl->local_cap) {
        int c = EP_MAX(n_local + 1, pl->local_cap + pl->local_cap / 2);
        free(pl->start);
        free(pl->fill);
        free(pl->grp_local);
        pl->start = ep_xmalloc((size_t)c * sizeof(int));
        pl->fill = ep_xmalloc((size_t)c * sizeof(int));
        pl->grp_local = ep_xmalloc((size_t)c * sizeof(int));
        pl->local_cap = c;
    }
    int rec_cap = pl->rec_cap;
    ep_plan_grow_ints(&pl->rec_off, &rec_cap, n_rec + 1);
    pl->rec_cap = rec_cap;
    pl->n_local = n_local;
    pl->n_rec = n_rec;
    pl->n_rows = 0;
    pl->n_groups = 0;
    memset(pl->start, 0, (size_t)(n_local + 1) * sizeof(int));
    pl->rec_off[0] = 0;
    if (n_rec == 0) return EP_OK;

    // Pass 1: validate and count rows per local expert.
    const int base = pair_off[0];
    for (int i = 0; i < n_rec; i++) {
        if (pair_off[i + 1] < pair_off[i])
            return ep_errorf(EP_ERR_ARG,
                             "cuda experts forward: layer %d record %d: pair_off decreases "
                             "(%d -> %d)",
                             layer, i, pair_off[i], pair_off[i + 1]);
        for (int j = pair_off[i]; j < pair_off[i + 1]; j++) {
            int g = pair_expert[j];
            if (g < 0 || g >= n_experts)
                return ep_errorf(EP_ERR_ARG,
                                 "cuda experts forward: layer %d record %d: expert %d outside "
                                 "[0, %d)",
                                 layer, i, g, n_experts);
            int s = local_of[g];
            if (s < 0)
                return ep_errorf(EP_ERR_ARG,
                                 "cuda experts forward: layer %d record %d: expert %d is not "
                                 "held here (%d of %d experts are)",
                                 layer, i, g, n_local, n_experts);
            pl->start[s + 1]++;
        }
        pl->rec_off[i + 1] = pair_off[i + 1] - base;
    }
    const int64_t rows = (int64_t)pair_off[n_rec] - base;
    EP_ASSERT(rows <= INT32_MAX); // offsets are int, so their difference fits
    pl->n_rows = (int)rows;
    for (int s = 0; s < n_local; s++) {
        if (pl->start[s + 1] > 0) pl->grp_local[pl->n_groups++] = s;
        pl->start[s + 1] += pl->start[s];
        pl->fill[s] = pl->start[s];
    }

    // Pass 2: the stable sort; each pair learns its row, each row its record.
    int row_cap = pl->row_cap;
    ep_plan_grow_ints(&pl->row_rec, &row_cap, pl->n_rows);
    row_cap = pl->row_cap;
    ep_plan_grow_ints(&pl->pair_row, &row_cap, pl->n_rows);
    pl->row_cap = row_cap;
    for (int i = 0; i < n_rec; i++)
        for (int j = pair_off[i]; j < pair_off[i + 1]; j++) {
            int r = pl->fill[local_of[pair_expert[j]]]++;
            pl->row_rec[r] = i;
            pl->pair_row[j - base] = r;
        }
    return EP_OK;
}

void ep_cuda_plan_free(ep_cuda_plan *pl)
{
    if (!pl) return;
    free(pl->start);
    free(pl->fill);
    free(pl->row_rec);
    free(pl->pair_row);
    free(pl->rec_off);
    free(pl->grp_local);
    memset(pl, 0, sizeof *pl);
}

void ep_cuda_gemm_list_fill(ep_cuda_gemm_list *g, const ep_cuda_plan *pl, int N, int K, size_t elem,
                            const void *w, const void *in, void *out)
{
    const int n = pl->n_groups;
    if (n > g->cap) {
        int c = EP_MAX(n, g->cap + g->cap / 2);
        g->m = ep_xrealloc(g->m, (size_t)c * sizeof(int));
        g->nn = ep_xrealloc(g->nn, (size_t)c * sizeof(int));
        g->k = ep_xrealloc(g->k, (size_t)c * sizeof(int));
        g->lda = ep_xrealloc(g->lda, (size_t)c * sizeof(int));
        g->ldb = ep_xrealloc(g->ldb, (size_t)c * sizeof(int));
        g->ldc = ep_xrealloc(g->ldc, (size_t)c * sizeof(int));
        g->ptr = ep_xrealloc(g->ptr, 3 * (size_t)c * sizeof(void *));
        g->cap = c;
    }
    g->n = n;
    const size_t w_bytes = (size_t)N * K * elem;
    for (int q = 0; q < n; q++) {
        const int s = pl->grp_local[q];
        const int r0 = pl->start[s];
        g->m[q] = N;
        g->nn[q] = pl->start[s + 1] - r0;
        g->k[q] = K;
        g->lda[q] = K;
        g->ldb[q] = K;
        g->ldc[q] = N;
        g->ptr[q] = (char *)w + (size_t)s * w_bytes;
        g->ptr[n + q] = (char *)in + (size_t)r0 * K * elem;
        g->ptr[2 * n + q] = (char *)out + (size_t)r0 * N * elem;
    }
}

void ep_cuda_gemm_list_free(ep_cuda_gemm_list *g)
{
    if (!g) return;
    free(g->m);
    free(g->nn);
    free(g->k);
    free(g->lda);
    free(g->ldb);
    free(g->ldc);
    free(g->ptr);
    memset(g, 0, sizeof *g);
}
