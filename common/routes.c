// ep_routes allocation and invariant checks.
#include "common/routes.h"

#include <stdlib.h>
#include <string.h>

void ep_routes_init(ep_routes *r, int cap_tokens, int max_k, int k_base)
{
    EP_ASSERT(cap_tokens >= 0 && max_k >= 1 && k_base >= 1);
    memset(r, 0, sizeof *r);
    r->cap_tokens = cap_tokens;
    r->max_k = max_k;
    r->k_base = k_base;
    r->offsets = ep_xcalloc((size_t)cap_tokens + 1, sizeof(int));
    r->expert = ep_xmalloc((size_t)cap_tokens * max_k * sizeof(int));
    r->weight = ep_xmalloc((size_t)cap_tokens * max_k * sizeof(float));
    r->base_expert = ep_xmalloc((size_t)cap_tokens * k_base * sizeof(int));
    r->base_weight = ep_xmalloc((size_t)cap_tokens * k_base * sizeof(float));
}

void ep_routes_free(ep_routes *r)
{
    if (!r) return;
    free(r->offsets);
    free(r->expert);
    free(r->weight);
    free(r->base_expert);
    free(r->base_weight);
    memset(r, 0, sizeof *r);
}

ep_status ep_routes_check(const ep_routes *r, int n_experts)
{
    if (r->n_tokens < 0 || r->n_tokens > r->cap_tokens)
        return ep_errorf(EP_ERR_ARG, "routes: n_tokens %d outside [0, %d]", r->n_tokens,
                         r->cap_tokens);
    if (r->offsets[0] != 0)
        return ep_errorf(EP_ERR_ARG, "routes: offsets[0] = %d, expected 0", r->offsets[0]);
    for (int i = 0; i < r->n_tokens; i++) {
        int b = r->offsets[i], e = r->offsets[i + 1];
        if (e - b < 1 || e - b > r->max_k)
            return ep_errorf(EP_ERR_ARG, "routes: token %d has K = %d, expected 1..%d", i, e - b,
                             r->max_k);
        for (int j = b; j < e; j++) {
            if (r->expert[j] < 0 || r->expert[j] >= n_experts)
                return ep_errorf(EP_ERR_ARG, "routes: token %d expert %d outside [0, %d)", i,
                                 r->expert[j], n_experts);
            for (int q = b; q < j; q++)
                if (r->expert[q] == r->expert[j])
                    return ep_errorf(EP_ERR_ARG, "routes: token %d lists expert %d twice", i,
                                     r->expert[j]);
        }
    }
    return EP_OK;
}
