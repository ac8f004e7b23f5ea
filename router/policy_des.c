// DES, dynamic expert skipping as the Ban&Pick paper reproduced it: keep
// between des.k_lo and des.k_hi experts; stop at the first j >= k_lo whose
// ratio r_(j)/r_(j+1) exceeds the layer's calibrated median. It does not
// calibrate the medians (epserve calibrate does); without them each is 1.0.
#include "router/policy.h"

#include <math.h>
#include <string.h>

static int des_select(const ep_policy *p, const ep_policy_token *t, int *kept)
{
    const ep_routing_cfg *c = &p->cfg;
    const float *med =
        c->des.median_ratio ? c->des.median_ratio + (size_t)t->layer * (c->k_base - 1) : NULL;
    int K = c->des.k_hi;
    // r_(j) is cand_score[j - 1] (1-based ranks as in the paper).
    for (int j = c->des.k_lo; j < c->des.k_hi; j++) {
        float a = t->cand_score[j - 1], b = t->cand_score[j];
        double ratio = b > 0.0f ? (double)a / b : INFINITY;
        double m = med ? med[j - 1] : 1.0;
        if (ratio > m) {
            K = j;
            break;
        }
    }
    memcpy(kept, t->cand, (size_t)K * sizeof(int));
    return K;
}

const ep_policy_vtable ep_policy_des_vt = {
    .name = "des",
    .select = des_select,
};
