// laser: LASER-style load-aware routing after any other policy. The LASER
// paper publishes no exact rule; this one is ours (docs/routing.md "laser").
// The inner policy (laser.after) chooses K experts. A peaked token (top-1 /
// lowest kept score >= peak_ratio) keeps that choice. A flat one keeps its
// keep_top strongest experts and fills the other K - keep_top slots from the
// widened pool (its kept experts and every candidate scoring >= widen_ratio x
// its lowest kept score), least-loaded home rank first, ties to the experts
// the inner policy kept, then higher score, then lower id. "Load" is the
// running count of pairs this routing call has already kept per home rank
// (ep_policy_token.rank_load), before this token; with replicas in the
// call's placement an expert's least-loaded slot counts.
// Without a placement in the routing context laser is its inner policy.
#include "router/policy.h"

#include <string.h>

// Higher score first, ties lower id (the router's order).
static bool before(const float *score, int a, int b)
{
    return score[a] > score[b] || (score[a] == score[b] && a < b);
}

static bool in_list(const int *a, int n, int v)
{
    for (int i = 0; i < n; i++)
        if (a[i] == v) return true;
    return false;
}

static int laser_select(const ep_policy *p, const ep_policy_token *t, int *kept)
{
    int K = p->params.inner->select(p, t, kept);
    if (!ep_route_ctx_placed(t->ctx) || !t->rank_load || K < 1) return K;

    // Strongest first, so kept[0] is the top-1 and kept[K-1] the lowest kept.
    for (int i = 1; i < K; i++)
        for (int j = i; j > 0 && before(t->score, kept[j], kept[j - 1]); j--) {
            int v = kept[j];
            kept[j] = kept[j - 1];
            kept[j - 1] = v;
        }
    const double top = t->score[kept[0]], low = t->score[kept[K - 1]];
    if (!(low > 0.0) || top >= (double)p->cfg.laser.peak_ratio * low) return K; // peaked

    const int fixed = EP_MIN(p->cfg.laser.keep_top, K);
    // The pool in scratch: the movable kept experts, then the widened
    // candidates (sorted by score, so the scan stops at the first below).
    int *pool = t->scratch, n = 0;
    for (int i = fixed; i < K; i++)
        pool[n++] = kept[i];
    const double thr = (double)p->cfg.laser.widen_ratio * low;
    for (int j = 0; j < t->n_cand && (double)t->cand_score[j] >= thr; j++)
        if (!in_list(kept, K, t->cand[j])) pool[n++] = t->cand[j];

    // K - fixed picks, each the pool's best by (rank load, chosen by the
    // inner policy, score, id): where load does not decide, the inner
    // choice stands, even when it kept a weaker expert on purpose (Pick's
    // key experts, comm-aware Ban).
    const int64_t *load = t->rank_load;
    for (int s = fixed; s < K; s++) {
        int best = s - fixed;
        for (int i = best + 1; i < n; i++) {
            int64_t la = load[ep_route_load_rank(t->ctx, load, pool[i])];
            int64_t lb = load[ep_route_load_rank(t->ctx, load, pool[best])];
            bool ia = in_list(kept + fixed, K - fixed, pool[i]);
            bool ib = in_list(kept + fixed, K - fixed, pool[best]);
            if (la < lb ||
                (la == lb && (ia > ib || (ia == ib && before(t->score, pool[i], pool[best])))))
                best = i;
        }
        int v = pool[best];
        pool[best] = pool[s - fixed];
        pool[s - fixed] = v;
    }
    // kept[fixed..K) told the inner choice apart above: overwrite it last.
    memcpy(kept + fixed, pool, (size_t)(K - fixed) * sizeof(int));
    return K;
}

const ep_policy_vtable ep_policy_laser_vt = {
    .name = "laser",
    .select = laser_select,
};
