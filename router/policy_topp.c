// The top-p dynamic routing baseline: keep the smallest prefix of the sorted
// scores whose share of the top-k_base mass reaches topp.threshold (at least
// one expert, at most k_base). It does not look past the model's own top-k_base.
#include "router/policy.h"

#include <string.h>

// "Reaches" tolerates float rounding of the running sum (docs/routing.md).
#define EP_TOPP_EPS 1e-6

static int topp_select(const ep_policy *p, const ep_policy_token *t, int *kept)
{
    int kb = EP_MIN(t->k_base, t->n_cand);
    double sum = 0.0;
    for (int j = 0; j < kb; j++)
        sum += t->cand_score[j];
    int m = kb;
    if (sum > 0.0) {
        double cum = 0.0, thr = p->cfg.topp.threshold;
        for (int j = 0; j < kb; j++) {
            cum += t->cand_score[j] / sum;
            if (cum >= thr - EP_TOPP_EPS) {
                m = j + 1;
                break;
            }
        }
    }
    memcpy(kept, t->cand, (size_t)m * sizeof(int));
    return m;
}

const ep_policy_vtable ep_policy_topp_vt = {
    .name = "topp",
    .select = topp_select,
};
