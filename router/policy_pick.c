// Pick, the Ban&Pick paper's key-expert reinforcement: the active domain's
// key experts of a layer are added to, or swapped into, the kept set by one
// of five strategies (A forced addition, B forced replacement, C range-based
// addition, D range-based replacement, E score bias). A layer without key
// experts (or no active domain) keeps the set it was given. Choosing the
// domain is the caller's: per token (ep_route_ctx.token_domain, from
// router/detect.h per request) or the policy's own (ep_policy_set_domain).
#include "router/policy.h"

#include <string.h>

static inline bool ranks_before(float sa, int a, float sb, int b)
{
    return sa > sb || (sa == sb && a < b);
}

static bool in_list(const int *a, int n, int v)
{
    for (int i = 0; i < n; i++)
        if (a[i] == v) return true;
    return false;
}

int ep_pick_n_keys(const ep_policy *p, int layer)
{
    int d = p->cfg.pick.domain;
    if (d < 0) return 0;
    const ep_pick_keys *k = &p->params.keys[d];
    return k->off[layer + 1] - k->off[layer];
}

// Index in kept[0..K) of the weakest expert that is not a key expert, or -1.
static int weakest_non_key(const float *score, const int *kept, int K, const int *keys, int nk)
{
    int w = -1;
    for (int i = 0; i < K; i++) {
        if (in_list(keys, nk, kept[i])) continue;
        if (w < 0 || ranks_before(score[kept[w]], kept[w], score[kept[i]], kept[i])) w = i;
    }
    return w;
}

// Strategy E: every key expert the model could select (allowed) competes
// with the kept set with its score raised by 20 % of the kept set's mean
// score; the best K by raised score stay. The raise only steers selection:
// combine weights come from the true scores.
static int pick_bias(const ep_policy_token *t, const int *keys, int nk, int *kept, int K)
{
    double mean = 0.0;
    for (int i = 0; i < K; i++)
        mean += t->score[kept[i]];
    float bias = (float)(0.2 * mean / K);
    int *pool = t->scratch, n = 0;
    for (int i = 0; i < K; i++)
        pool[n++] = kept[i];
    for (int i = 0; i < nk; i++)
        if (!in_list(kept, K, keys[i]) && (!t->allowed || t->allowed[keys[i]])) pool[n++] = keys[i];
    for (int j = 0; j < K; j++) {
        int b = j;
        for (int i = j + 1; i < n; i++) {
            float si = t->score[pool[i]] + (in_list(keys, nk, pool[i]) ? bias : 0.0f);
            float sb = t->score[pool[b]] + (in_list(keys, nk, pool[b]) ? bias : 0.0f);
            if (ranks_before(si, pool[i], sb, pool[b])) b = i;
        }
        int tmp = pool[j];
        pool[j] = pool[b];
        pool[b] = tmp;
    }
    memcpy(kept, pool, (size_t)K * sizeof(int));
    return K;
}

int ep_pick_apply(const ep_policy *p, const ep_policy_token *t, ep_pick_strategy s, int *kept,
                  int K)
{
    int d = ep_pick_domain_of(p, t);
    EP_ASSERT(d >= -1 && d < p->cfg.pick.n_domains);
    if (d < 0) return K;
    const ep_pick_keys *pk = &p->params.keys[d];
    const int *keys = pk->ids + pk->off[t->layer];
    int nk = pk->off[t->layer + 1] - pk->off[t->layer];
    if (nk == 0) return K;
    if (s == EP_PICK_E) return pick_bias(t, keys, nk, kept, K);

    // Strongest key expert first, so that when slots run out the best wins.
    int *ord = t->scratch;
    for (int i = 0; i < nk; i++) {
        int v = keys[i], j = i;
        while (j > 0 && ranks_before(t->score[v], v, t->score[ord[j - 1]], ord[j - 1])) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = v;
    }
    const bool in_range_only = s == EP_PICK_C || s == EP_PICK_D;
    const bool add = s == EP_PICK_A || s == EP_PICK_C;
    for (int i = 0; i < nk; i++) {
        int key = ord[i];
        if (in_list(kept, K, key)) continue; // already kept: nothing changes
        if (in_range_only && !in_list(t->cand, t->n_cand, key)) continue;
        if (add) {
            if (K < p->params.max_k) kept[K++] = key;
        } else {
            int w = weakest_non_key(t->score, kept, K, keys, nk);
            if (w >= 0) kept[w] = key;
        }
    }
    return K;
}

static int pick_select(const ep_policy *p, const ep_policy_token *t, int *kept)
{
    memcpy(kept, t->cand, (size_t)t->k_base * sizeof(int));
    return ep_pick_apply(p, t, p->cfg.pick.strategy, kept, t->k_base);
}

const ep_policy_vtable ep_policy_pick_vt = {
    .name = "pick",
    .select = pick_select,
};
