// Ban, the Ban&Pick paper's dynamic pruning: per token and layer keep
// K = floor(K_min + (k_base - K_min) * lambda * S) of the top-k_base, where
// S mixes the layer's calibrated sensitivity and the token's score
// concentration. With ban.locality and a placement it is comm-aware: it
// prefers near-tie candidates on ranks/nodes the token already visits
// (locality rank) or on nodes only, choosing new nodes for the candidates
// they hold (locality node). It never adds experts beyond k_base (that is
// Pick), and locality never changes K.
#include "router/policy.h"

#include <math.h>
#include <string.h>

// floor() must not drop an exact integer that float arithmetic left a hair
// below it (e.g. 3 + 5 * 1.0 * 0.4): docs/routing.md states this epsilon.
#define EP_BAN_FLOOR_EPS 1e-6

int ep_ban_k(const ep_routing_cfg *rc, float lterm, const float *cand_score, int n_cand,
             float *r_out, float *s_out)
{
    int kb = EP_MIN(rc->k_base, n_cand);
    double top3 = 0.0, topk = 0.0;
    for (int j = 0; j < kb; j++) {
        topk += cand_score[j];
        if (j < 3) top3 += cand_score[j];
    }
    double R = topk > 0.0 ? top3 / topk : 1.0;
    double tterm = 0.0; // R_max == R_min: the token term is 0 (no division)
    if (rc->ban.r_max > rc->ban.r_min) {
        tterm = (rc->ban.r_max - R) / ((double)rc->ban.r_max - rc->ban.r_min);
        tterm = tterm < 0.0 ? 0.0 : tterm > 1.0 ? 1.0 : tterm;
    }
    double S = rc->ban.beta * (double)lterm + (1.0 - rc->ban.beta) * tterm;
    double x = rc->ban.k_min + (double)(rc->k_base - rc->ban.k_min) * rc->ban.lambda * S;
    int K = (int)floor(x + EP_BAN_FLOOR_EPS);
    K = EP_MAX(rc->ban.k_min, EP_MIN(rc->k_base, K));
    K = EP_MIN(K, n_cand);
    if (r_out) *r_out = (float)R;
    if (s_out) *s_out = (float)S;
    return K;
}

static bool in_list(const int *a, int n, int v)
{
    for (int i = 0; i < n; i++)
        if (a[i] == v) return true;
    return false;
}

// Does a token whose experts are kept[0..n) already send to a rank holding
// a copy of expert e? The ranks it visits are its own (free) and the home
// ranks of its kept experts; with replicas any copy of e on one of them
// counts, since replica choice sends a pair to a rank the token visits.
static bool near_rank(const ep_route_ctx *c, const int *kept, int n, int e)
{
    if (c->rank >= 0 && ep_route_on_rank(c, e, c->rank)) return true;
    for (int i = 0; i < n; i++)
        if (ep_route_on_rank(c, e, c->place->rank_of[kept[i]])) return true;
    return false;
}

// The same for nodes; never true without a node map.
static bool near_node(const ep_route_ctx *c, const int *kept, int n, int e)
{
    if (!c->node_of) return false;
    if (c->rank >= 0 && ep_route_on_node(c, e, ep_route_node(c, c->rank))) return true;
    for (int i = 0; i < n; i++)
        if (ep_route_on_node(c, e, ep_route_node(c, c->place->rank_of[kept[i]]))) return true;
    return false;
}

// Whether expert f has a copy on expert e's home node.
static bool same_node(const ep_route_ctx *c, int e, int f)
{
    return ep_route_on_node(c, f, ep_route_node(c, c->place->rank_of[e]));
}

// ban.locality: node (needs a node map). A hierarchical dispatch sends a
// token once per remote node, so only the node counts. Eligible: the
// candidates scoring >= rho x the weakest one plain Ban keeps (cand[K-1]),
// fixed for the token. Each slot after k_min takes the best eligible one on
// a node the token visits; when none is, it opens the node holding the most
// eligible ones (counted up to the slots left; ties: the better score) and
// takes that node's best, so the following slots land there instead of on
// further nodes.
static void fill_node(const ep_policy *p, const ep_policy_token *t, int K, int *kept)
{
    const ep_route_ctx *c = t->ctx;
    int n = EP_MIN(p->cfg.ban.k_min, K);
    memcpy(kept, t->cand, (size_t)n * sizeof(int));
    const float thr = p->cfg.ban.locality_ratio * t->cand_score[K - 1];
    int n_elig = K; // candidates are sorted: the eligible ones are a prefix
    while (n_elig < t->n_cand && t->cand_score[n_elig] >= thr)
        n_elig++;
    for (; n < K; n++) {
        int pick = -1;
        for (int j = 0; j < n_elig && pick < 0; j++)
            if (!in_list(kept, n, t->cand[j]) && near_node(c, kept, n, t->cand[j]))
                pick = t->cand[j];
        // None on a visited node: open one (the scan may stop at a full count).
        int best = pick >= 0 ? K - n : 0;
        for (int j = 0; j < n_elig && best < K - n; j++) {
            int e = t->cand[j];
            if (in_list(kept, n, e)) continue;
            int gain = 0;
            for (int i = 0; i < n_elig && gain < K - n; i++)
                if (!in_list(kept, n, t->cand[i]) && same_node(c, e, t->cand[i])) gain++;
            if (gain > best) best = gain, pick = e;
        }
        EP_ASSERT(pick >= 0);
        kept[n] = pick;
    }
}

void ep_ban_fill(const ep_policy *p, const ep_policy_token *t, int K, int *kept)
{
    const ep_route_ctx *c = t->ctx;
    if (!p->cfg.ban.locality || !ep_route_ctx_placed(c)) {
        memcpy(kept, t->cand, (size_t)K * sizeof(int));
        return;
    }
    if (p->cfg.ban.locality == EP_BAN_LOC_NODE) {
        // Without a node map there is one node and nothing to save.
        if (c->node_of)
            fill_node(p, t, K, kept);
        else
            memcpy(kept, t->cand, (size_t)K * sizeof(int));
        return;
    }
    // The top K_min are always kept; each later slot may go to a candidate
    // within ratio rho of the score it would replace when that candidate
    // lives on a rank (else a node) the token already visits.
    int n = EP_MIN(p->cfg.ban.k_min, K);
    memcpy(kept, t->cand, (size_t)n * sizeof(int));
    const float rho = p->cfg.ban.locality_ratio;
    for (; n < K; n++) {
        int def = -1;
        for (int j = 0; j < t->n_cand && def < 0; j++)
            if (!in_list(kept, n, t->cand[j])) def = t->cand[j];
        EP_ASSERT(def >= 0);
        float thr = rho * t->score[def];
        int by_rank = -1, by_node = -1;
        for (int j = 0; j < t->n_cand; j++) {
            int e = t->cand[j];
            if (t->cand_score[j] < thr) break; // candidates are sorted
            if (in_list(kept, n, e)) continue;
            if (near_rank(c, kept, n, e)) {
                by_rank = e;
                break;
            }
            if (by_node < 0 && near_node(c, kept, n, e)) by_node = e;
        }
        kept[n] = by_rank >= 0 ? by_rank : by_node >= 0 ? by_node : def;
    }
}

static int ban_select(const ep_policy *p, const ep_policy_token *t, int *kept)
{
    int K = ep_ban_k(&p->cfg, p->params.ban_lterm[t->layer], t->cand_score, t->n_cand, NULL, NULL);
    ep_ban_fill(p, t, K, kept);
    return K;
}

const ep_policy_vtable ep_policy_ban_vt = {
    .name = "ban",
    .select = ban_select,
};
