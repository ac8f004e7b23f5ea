// The one rule that groups a token's (token, expert) pairs by destination
// rank: one group per distinct rank, in the order of the rank's first pair in
// the row, each with its pairs in row order. Host and device share it (a
// __host__ __device__ inline under nvcc, plain C elsewhere): comm/
// dispatch_plan.c builds every plan with it and the CUDA layout kernel
// (comm/cuda/) runs the same code per token. Integer work only, no headers
// with host-only types.
#ifndef EP_DISPATCH_GROUP_H
#define EP_DISPATCH_GROUP_H

#ifndef __cplusplus
#include <stdbool.h>
#endif

#ifdef __CUDACC__
#define EP_DG_HD __host__ __device__
#else
#define EP_DG_HD
#endif

// Rank that computes pair j: the scheduler's choice when it chose one
// (pair_rank, replicas), else the home rank of the pair's expert.
static EP_DG_HD inline int ep_dispatch_pair_dest(const int *expert, const int *pair_rank,
                                                 const int *rank_of, int j)
{
    return pair_rank ? pair_rank[j] : rank_of[expert[j]];
}

// Groups the pairs [o, e) of one token. For group g (0 <= g < returned
// count): grp_dest[g] its rank, grp_n[g] its pairs; grp_pair (NULL: not
// wanted) receives the pair indices group after group (e - o entries).
// grp_dest and grp_n need room for e - o entries. O(K^2) in the row's K,
// which is small (k_base plus Pick's additions), and no scratch is needed.
static EP_DG_HD inline int ep_dispatch_group_row(const int *expert, const int *pair_rank,
                                                 const int *rank_of, int o, int e, int *grp_dest,
                                                 int *grp_n, int *grp_pair)
{
    int g = 0, np = 0;
    for (int j = o; j < e; j++) {
        const int d = ep_dispatch_pair_dest(expert, pair_rank, rank_of, j);
        bool first = true;
        for (int q = o; q < j && first; q++)
            first = ep_dispatch_pair_dest(expert, pair_rank, rank_of, q) != d;
        if (!first) continue; // this rank's group was made at its first pair
        int n = 0;
        for (int q = j; q < e; q++) {
            if (ep_dispatch_pair_dest(expert, pair_rank, rank_of, q) != d) continue;
            if (grp_pair) grp_pair[np] = q;
            np++;
            n++;
        }
        grp_dest[g] = d;
        grp_n[g] = n;
        g++;
    }
    return g;
}

#endif
