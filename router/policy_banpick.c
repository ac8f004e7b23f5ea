// Ban&Pick, the paper's combination: Ban sets K and keeps the strongest
// candidates, then Pick (strategy C by default: add a key expert when it is
// among the candidates) restores the layer's key experts that Ban dropped or
// the model never chose. Both steps live in policy_ban.c / policy_pick.c.
#include "router/policy.h"

static int banpick_select(const ep_policy *p, const ep_policy_token *t, int *kept)
{
    int K = ep_ban_k(&p->cfg, p->params.ban_lterm[t->layer], t->cand_score, t->n_cand, NULL, NULL);
    ep_ban_fill(p, t, K, kept);
    return ep_pick_apply(p, t, p->cfg.pick.strategy, kept, K);
}

const ep_policy_vtable ep_policy_banpick_vt = {
    .name = "banpick",
    .select = banpick_select,
};
