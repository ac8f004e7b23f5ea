// The baseline policy: the model's own static top-k_base, exactly what its
// Hugging Face code selects. It reads no config; every other policy is
// measured against it.
#include "router/policy.h"

#include <string.h>

static int baseline_select(const ep_policy *p, const ep_policy_token *t, int *kept)
{
    memcpy(kept, t->cand, (size_t)t->k_base * sizeof(int));
    return t->k_base;
}

const ep_policy_vtable ep_policy_baseline_vt = {
    .name = "baseline",
    .select = baseline_select,
};
