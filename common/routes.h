// ep_routes: the routing of one batch at one layer, variable K in CSR form.
// Token i's kept experts are expert[offsets[i] .. offsets[i+1]) with the
// weights used in the combine. No -1 padding exists anywhere. The fixed-K
// counterfactual (what static top-k_base would have picked) rides along so
// that comm/ can count the bytes Ban saved without extra communication.
// Written by router/, read by comm/ and experts/ (hence in common/).
#ifndef EP_ROUTES_H
#define EP_ROUTES_H

#include "common/ep.h"

typedef struct {
    int n_tokens;       // T
    int cap_tokens;     // allocated token capacity
    int max_k;          // allocated experts per token (capacity of a row)
    int k_base;         // the model's fixed top-k
    int *offsets;       // [T + 1], offsets[0] = 0, non-decreasing
    int *expert;        // [cap_tokens * max_k] (nnz used), global expert ids
    float *weight;      // [cap_tokens * max_k] (nnz used), combine weights
    int *base_expert;   // [cap_tokens * k_base], row i = static top-k_base of token i
    float *base_weight; // [cap_tokens * k_base]
} ep_routes;

// Allocates for up to cap_tokens tokens of at most max_k experts each.
void ep_routes_init(ep_routes *r, int cap_tokens, int max_k, int k_base);
void ep_routes_free(ep_routes *r); // zeroes; NULL-safe on fields
static inline int ep_routes_nnz(const ep_routes *r)
{
    return r->offsets[r->n_tokens];
}
static inline int ep_routes_k(const ep_routes *r, int i)
{
    return r->offsets[i + 1] - r->offsets[i];
}
// Checks the invariants (offsets monotone, ids in [0, n_experts), no
// duplicate expert in a row, K >= 1). Returns EP_ERR_ARG with the token.
ep_status ep_routes_check(const ep_routes *r, int n_experts);

#endif
