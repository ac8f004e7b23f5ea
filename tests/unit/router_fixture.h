// Fixtures the router and policy unit tests share: a hand-sized Qwen3-MoE
// config, and one token run through a policy the way the router does it
// (candidates = top range*k_base, no group mask, select, kept ids sorted by
// score with ties to the lower id), with an assertion on the kept list.
// Include after <cmocka.h>.
#ifndef EP_TEST_ROUTER_FIXTURE_H
#define EP_TEST_ROUTER_FIXTURE_H

#include <stdio.h>
#include <string.h>

#include "router/policy.h"
#include "router/router.h"

// L layers of E experts, top-k, norm_topk_prob, the given hidden size.
static inline void fixture_qwen_cfg(ep_model_cfg *m, int L, int E, int k, int hidden)
{
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "hand-qwen3");
    snprintf(m->source, sizeof m->source, "a unit test");
    m->arch = EP_ARCH_QWEN3_MOE;
    m->hidden = hidden;
    m->n_layers = L;
    m->n_experts = E;
    m->k_base = k;
    m->topk_method = EP_TOPK_GREEDY;
    m->n_group = m->topk_group = 1;
    m->norm_topk_prob = true;
    m->routed_scaling_factor = 1.0f;
}

enum { FIXTURE_MAX_E = 64 };
typedef struct {
    int cand[FIXTURE_MAX_E], scratch[FIXTURE_MAX_E], kept[FIXTURE_MAX_E];
    float cs[FIXTURE_MAX_E];
    ep_policy_token t;
} tok_buf;

// p's select on one token's scores[E] at `layer` with a routing context
// (NULL: no placement) and laser's running load (NULL: none); returns K,
// kept in b->kept.
static inline int fixture_select_ctx(const ep_policy *p, int layer, const float *score, int E,
                                     const ep_route_ctx *ctx, const int64_t *load, tok_buf *b)
{
    assert_true(E <= FIXTURE_MAX_E);
    int kb = p->cfg.k_base;
    int want = EP_MIN(E, ep_policy_range(p) * kb);
    b->t = (ep_policy_token){.layer = layer,
                             .n_experts = E,
                             .k_base = kb,
                             .cand = b->cand,
                             .cand_score = b->cs,
                             .score = score,
                             .scratch = b->scratch,
                             .ctx = ctx,
                             .rank_load = load};
    b->t.n_cand = ep_router_topk(score, E, want, NULL, b->cand);
    for (int j = 0; j < b->t.n_cand; j++)
        b->cs[j] = score[b->cand[j]];
    int K = p->vt->select(p, &b->t, b->kept);
    assert_true(K >= 1 && K <= ep_policy_max_k(p));
    for (int i = 1; i < K; i++) // the router's order: score descending, ties lower id
        for (int j = i; j > 0; j--) {
            int a = b->kept[j - 1], c = b->kept[j];
            if (score[c] > score[a] || (score[c] == score[a] && c < a)) {
                b->kept[j - 1] = c;
                b->kept[j] = a;
            }
        }
    return K;
}

static inline int fixture_select(const ep_policy *p, int layer, const float *score, int E,
                                 tok_buf *b)
{
    return fixture_select_ctx(p, layer, score, E, NULL, NULL, b);
}

// A placement of n_experts over world ranks from each expert's home rank.
static inline void fixture_place(ep_placement *pl, const int *rank_of, int n_experts, int world)
{
    int phy[FIXTURE_MAX_E];
    assert_true(n_experts <= FIXTURE_MAX_E);
    for (int e = 0; e < n_experts; e++)
        phy[e] = e;
    assert_int_equal(
        ep_placement_from_slots(pl, EP_PLACE_CONTIGUOUS, n_experts, world, n_experts, phy, rank_of),
        EP_OK);
}

static inline void fixture_expect_kept(const tok_buf *b, int K, int n, const int *want)
{
    assert_int_equal(K, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(b->kept[i], want[i]);
}
// EXPECT(&buf, K, ids...): K equals the number of ids and kept == ids in order.
#define EXPECT(b, K, ...)                                                                          \
    do {                                                                                           \
        const int w_[] = {__VA_ARGS__};                                                            \
        fixture_expect_kept((b), (K), (int)(sizeof w_ / sizeof w_[0]), w_);                        \
    } while (0)

#endif
