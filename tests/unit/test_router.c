// Router building blocks against hand-computed values (softmax, top-k ties,
// group mask with ties, Qwen3 and DeepSeek weights), and whole routes from
// logits against an independent brute-force router. Fixed seeds, odd shapes.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "router_fixture.h"

#include "router/policy.h"

static uint64_t rng_state;
static float frand(void) // uniform in [-1, 1), fixed LCG
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng_state >> 40) * (1.0 / (1ULL << 24))) * 2.0f - 1.0f;
}

static void qwen_cfg(ep_model_cfg *m, int L, int E, int k)
{
    fixture_qwen_cfg(m, L, E, k, 37);
}

static void deepseek_cfg(ep_model_cfg *m, int L, int E, int k, int ng, int tg)
{
    qwen_cfg(m, L, E, k);
    snprintf(m->name, sizeof m->name, "hand-deepseek");
    m->arch = EP_ARCH_DEEPSEEK_V2;
    m->first_k_dense = 1;
    m->topk_method = EP_TOPK_GROUP_LIMITED;
    m->n_group = ng;
    m->topk_group = tg;
    m->norm_topk_prob = false;
    m->routed_scaling_factor = 16.0f;
}

// ---- building blocks -------------------------------------------------------

static void test_softmax(void **state)
{
    float r[3] = {1.0f, 2.0f, 3.0f};
    ep_router_softmax(r, 3);
    // e^i / (e + e^2 + e^3)
    assert_float_equal(r[0], 0.09003057f, 1e-7);
    assert_float_equal(r[1], 0.24472847f, 1e-7);
    assert_float_equal(r[2], 0.66524096f, 1e-7);
    float big[2] = {1000.0f, 1000.0f}; // overflows without the max shift
    ep_router_softmax(big, 2);
    assert_float_equal(big[0], 0.5f, 1e-7);
    assert_float_equal(big[1], 0.5f, 1e-7);
}

static void test_topk_ties(void **state)
{
    const float s[5] = {0.1f, 0.3f, 0.3f, 0.2f, 0.3f};
    int idx[5];
    assert_int_equal(ep_router_topk(s, 5, 3, NULL, idx), 3);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 2);
    assert_int_equal(idx[2], 4);
    assert_int_equal(ep_router_topk(s, 5, 4, NULL, idx), 4);
    assert_int_equal(idx[3], 3);
    const uint8_t allowed[5] = {1, 1, 0, 1, 1};
    assert_int_equal(ep_router_topk(s, 5, 3, allowed, idx), 3);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 4);
    assert_int_equal(idx[2], 3);
    const uint8_t two[5] = {0, 0, 1, 1, 0};
    assert_int_equal(ep_router_topk(s, 5, 3, two, idx), 2); // fewer allowed than k
    assert_int_equal(idx[0], 2);
    assert_int_equal(idx[1], 3);
    // all equal: ids ascending
    const float eq[7] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    assert_int_equal(ep_router_topk(eq, 7, 3, NULL, idx), 3);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 1);
    assert_int_equal(idx[2], 2);
}

static void test_group_mask(void **state)
{
    // 4 groups of 3. Group score is the max, not the sum: g1 has the larger
    // sum (0.6) but g0 the larger max (0.25).
    const float s[12] = {0.25f, 0.0f, 0.0f, 0.2f, 0.2f, 0.2f, 0.05f, 0.01f, 0.0f, 0.1f, 0.0f, 0.0f};
    uint8_t a[12];
    ep_router_group_mask(s, 12, 4, 1, a);
    for (int e = 0; e < 12; e++)
        assert_int_equal(a[e], e < 3);
    ep_router_group_mask(s, 12, 4, 2, a);
    for (int e = 0; e < 12; e++)
        assert_int_equal(a[e], e < 6);
    // ties between groups: lower group id first (g1, g2, g3 all max 0.3)
    const float t[12] = {0.1f, 0.0f, 0.0f, 0.3f, 0.0f, 0.0f, 0.0f, 0.3f, 0.0f, 0.0f, 0.0f, 0.3f};
    ep_router_group_mask(t, 12, 4, 2, a);
    for (int e = 0; e < 12; e++)
        assert_int_equal(a[e], e >= 3 && e < 9);
}

static void test_weights_qwen3(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 2, 5, 3);
    const float s[5] = {0.1f, 0.4f, 0.2f, 0.2f, 0.1f};
    const int idx[3] = {1, 2, 3};
    float w[3];
    ep_router_weights(&m, s, idx, 3, w);
    assert_float_equal(w[0], 0.5f, 1e-7);
    assert_float_equal(w[1], 0.25f, 1e-7);
    assert_float_equal(w[2], 0.25f, 1e-7);
    // after Ban keeps 2 the weights renormalise over the kept set
    ep_router_weights(&m, s, idx, 2, w);
    assert_float_equal(w[0], 0.4f / 0.6f, 1e-7);
    assert_float_equal(w[1], 0.2f / 0.6f, 1e-7);
    m.norm_topk_prob = false; // raw softmax probabilities
    ep_router_weights(&m, s, idx, 3, w);
    assert_float_equal(w[0], 0.4f, 1e-7);
    assert_float_equal(w[2], 0.2f, 1e-7);
}

static void test_weights_deepseek(void **state)
{
    ep_model_cfg m;
    deepseek_cfg(&m, 3, 12, 6, 4, 2);
    const float s[4] = {0.3f, 0.05f, 4e-21f, 1e-21f};
    const int idx[2] = {0, 1};
    float w[2];
    ep_router_weights(&m, s, idx, 2, w); // V2.5: prob x 16, no renormalisation
    assert_float_equal(w[0], 4.8f, 1e-6);
    assert_float_equal(w[1], 0.8f, 1e-6);
    m.norm_topk_prob = true; // w = s / (sum + 1e-20): visible with tiny scores
    const int tiny[2] = {2, 3};
    ep_router_weights(&m, s, tiny, 2, w);
    assert_float_equal(w[0], 4e-21f / 1.5e-20f, 1e-5);
    assert_float_equal(w[1], 1e-21f / 1.5e-20f, 1e-5);
    m.k_base = 1; // `top_k > 1 and norm_topk_prob` is false: scaling applies
    ep_router_weights(&m, s, idx, 1, w);
    assert_float_equal(w[0], 4.8f, 1e-6);
}

static void test_gate_logits(void **state)
{
    const float x[6] = {1, 2, 3, -1, 0, 2};    // 2 tokens, H 3
    const float g[6] = {0.5f, -1, 2, 1, 1, 1}; // 2 experts
    float lg[4];
    ep_router_gate_logits(x, 2, 3, g, 2, lg);
    assert_float_equal(lg[0], 4.5f, 1e-6);
    assert_float_equal(lg[1], 6.0f, 1e-6);
    assert_float_equal(lg[2], 3.5f, 1e-6);
    assert_float_equal(lg[3], 1.0f, 1e-6);
    // Row independence: a token's logits are bit-identical alone or in a batch.
    enum { T = 13, H = 37, E = 11 };
    float *xb = malloc(sizeof(float) * T * H), *gw = malloc(sizeof(float) * E * H);
    float batch[T * E], one[E];
    rng_state = 7;
    for (int i = 0; i < T * H; i++)
        xb[i] = frand();
    for (int i = 0; i < E * H; i++)
        gw[i] = frand();
    ep_router_gate_logits(xb, T, H, gw, E, batch);
    for (int t = 0; t < T; t++) {
        ep_router_gate_logits(xb + t * H, 1, H, gw, E, one);
        assert_memory_equal(one, batch + t * E, sizeof one);
        double ref = 0.0;
        for (int h = 0; h < H; h++)
            ref += (double)xb[t * H + h] * gw[3 * H + h];
        assert_float_equal(batch[t * E + 3], ref, 1e-5);
    }
    free(xb);
    free(gw);
}

// ---- whole routes against a brute-force router ----------------------------

static const double *bf_score;
static int bf_cmp(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    if (bf_score[x] != bf_score[y]) return bf_score[x] > bf_score[y] ? -1 : 1;
    return x - y;
}

// Static top-k as the model code does it, in double, sorting everything.
static int brute_route(const ep_model_cfg *m, const float *logit, int *ids, double *w)
{
    int E = m->n_experts;
    double sc[256], mx = logit[0], sum = 0.0;
    int order[256];
    for (int e = 1; e < E; e++)
        mx = fmax(mx, logit[e]);
    for (int e = 0; e < E; e++)
        sum += (sc[e] = exp((double)logit[e] - mx));
    for (int e = 0; e < E; e++)
        sc[e] /= sum;
    double masked[256];
    memcpy(masked, sc, sizeof(double) * E);
    if (m->topk_method == EP_TOPK_GROUP_LIMITED) {
        int gs = E / m->n_group, gord[64];
        double gmax[64];
        for (int g = 0; g < m->n_group; g++) {
            gmax[g] = 0.0;
            for (int i = 0; i < gs; i++)
                gmax[g] = fmax(gmax[g], sc[g * gs + i]);
            gord[g] = g;
        }
        bf_score = gmax;
        qsort(gord, m->n_group, sizeof(int), bf_cmp);
        for (int g = m->topk_group; g < m->n_group; g++)
            for (int i = 0; i < gs; i++)
                masked[gord[g] * gs + i] = -1.0; // excluded
    }
    for (int e = 0; e < E; e++)
        order[e] = e;
    bf_score = masked;
    qsort(order, E, sizeof(int), bf_cmp);
    double ksum = 0.0;
    for (int j = 0; j < m->k_base; j++)
        ksum += sc[order[j]];
    for (int j = 0; j < m->k_base; j++) {
        ids[j] = order[j];
        w[j] = m->norm_topk_prob ? sc[order[j]] / ksum : sc[order[j]] * m->routed_scaling_factor;
    }
    return m->k_base;
}

static void check_against_brute(const ep_model_cfg *m, int layer, int T)
{
    int E = m->n_experts;
    float *lg = malloc(sizeof(float) * T * E);
    for (int i = 0; i < T * E; i++)
        lg[i] = 3.0f * frand();
    ep_router *r;
    ep_policy *p;
    ep_routes routes;
    assert_int_equal(ep_router_init(m, T, &r), EP_OK);
    assert_int_equal(ep_policy_create(m, "baseline", &p), EP_OK);
    ep_routes_init(&routes, T, ep_policy_max_k(p), m->k_base);
    assert_int_equal(ep_router_route_logits(r, p, NULL, layer, lg, T, &routes), EP_OK);
    assert_int_equal(ep_routes_check(&routes, E), EP_OK);
    assert_int_equal(routes.n_tokens, T);
    for (int t = 0; t < T; t++) {
        int ids[64];
        double w[64];
        int k = brute_route(m, lg + t * E, ids, w);
        assert_int_equal(ep_routes_k(&routes, t), k);
        for (int j = 0; j < k; j++) {
            int o = routes.offsets[t] + j;
            assert_int_equal(routes.expert[o], ids[j]);
            // fp32 router vs fp64 reference: relative 1e-5
            assert_float_equal(routes.weight[o], w[j], 1e-5 * fmax(1.0, fabs(w[j])));
            // baseline keeps the counterfactual exactly
            assert_int_equal(routes.base_expert[t * m->k_base + j], routes.expert[o]);
            assert_true(routes.base_weight[t * m->k_base + j] == routes.weight[o]);
        }
    }
    ep_routes_free(&routes);
    ep_policy_free(p);
    ep_router_free(r);
    free(lg);
}

static void test_route_brute_qwen3(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 3, 13, 5);
    rng_state = 11;
    check_against_brute(&m, 2, 11);
}

static void test_route_brute_deepseek(void **state)
{
    ep_model_cfg m;
    deepseek_cfg(&m, 3, 20, 3, 5, 2); // groups of 4, best 2 of 5, x16
    rng_state = 13;
    check_against_brute(&m, 1, 7);
    m.norm_topk_prob = true;
    check_against_brute(&m, 2, 5);
}

static void test_route_from_x(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 2, 11, 3);
    enum { T = 7, H = 37, E = 11 };
    float x[T * H], gw[E * H], lg[T * E];
    rng_state = 5;
    for (int i = 0; i < T * H; i++)
        x[i] = frand();
    for (int i = 0; i < E * H; i++)
        gw[i] = frand();
    ep_router_gate_logits(x, T, H, gw, E, lg);
    ep_router *r;
    ep_policy *p;
    ep_routes a, b;
    assert_int_equal(ep_router_init(&m, T, &r), EP_OK);
    assert_int_equal(ep_policy_create(&m, "baseline", &p), EP_OK);
    ep_routes_init(&a, T, 3, 3);
    ep_routes_init(&b, T, 3, 3);
    assert_int_equal(ep_router_route(r, p, NULL, 1, x, T, gw, &a), EP_OK);
    assert_int_equal(ep_router_route_logits(r, p, NULL, 1, lg, T, &b), EP_OK);
    assert_memory_equal(a.offsets, b.offsets, sizeof(int) * (T + 1));
    assert_memory_equal(a.expert, b.expert, sizeof(int) * ep_routes_nnz(&a));
    assert_memory_equal(a.weight, b.weight, sizeof(float) * ep_routes_nnz(&a));
    // a token routes the same alone as in the batch
    assert_int_equal(ep_router_route(r, p, NULL, 1, x + 4 * H, 1, gw, &a), EP_OK);
    assert_memory_equal(a.expert, b.expert + b.offsets[4], sizeof(int) * 3);
    assert_memory_equal(a.weight, b.weight + b.offsets[4], sizeof(float) * 3);
    ep_routes_free(&a);
    ep_routes_free(&b);
    ep_policy_free(p);
    ep_router_free(r);
}

static void test_route_zero_tokens_and_errors(void **state)
{
    ep_model_cfg m;
    deepseek_cfg(&m, 3, 12, 3, 4, 2);
    ep_router *r;
    ep_policy *p;
    ep_routes routes;
    assert_int_equal(ep_router_init(&m, 5, &r), EP_OK);
    assert_int_equal(ep_policy_create(&m, "baseline", &p), EP_OK);
    ep_routes_init(&routes, 5, 3, 3);
    routes.offsets[0] = 42;
    assert_int_equal(ep_router_route_logits(r, p, NULL, 1, NULL, 0, &routes), EP_OK);
    assert_int_equal(routes.n_tokens, 0);
    assert_int_equal(routes.offsets[0], 0);
    assert_int_equal(ep_routes_nnz(&routes), 0);
    float lg[6 * 12] = {0};
    assert_int_equal(ep_router_route_logits(r, p, NULL, 0, lg, 1, &routes),
                     EP_ERR_ARG); // dense layer
    assert_non_null(strstr(ep_last_error(), "layer 0 is not a MoE layer"));
    assert_int_equal(ep_router_route_logits(r, p, NULL, 3, lg, 1, &routes), EP_ERR_ARG);
    assert_int_equal(ep_router_route_logits(r, p, NULL, 1, lg, 6, &routes), EP_ERR_ARG); // > cap
    assert_non_null(strstr(ep_last_error(), "6 tokens"));
    ep_routes small;
    ep_routes_init(&small, 5, 2, 3);
    assert_int_equal(ep_router_route_logits(r, p, NULL, 1, lg, 1, &small),
                     EP_ERR_ARG); // max_k 2 < 3
    assert_non_null(strstr(ep_last_error(), "max_k"));
    ep_routes_free(&small);
    // all-equal logits: ties resolve to the lowest ids of the first groups
    assert_int_equal(ep_router_route_logits(r, p, NULL, 1, lg, 1, &routes), EP_OK);
    assert_int_equal(routes.expert[0], 0);
    assert_int_equal(routes.expert[1], 1);
    assert_int_equal(routes.expert[2], 2);
    assert_float_equal(routes.weight[0], 16.0f / 12.0f, 1e-6);
    // a policy made for another model is refused
    ep_model_cfg other;
    qwen_cfg(&other, 3, 16, 3);
    ep_policy *q;
    assert_int_equal(ep_policy_create(&other, "baseline", &q), EP_OK);
    assert_int_equal(ep_router_route_logits(r, q, NULL, 1, lg, 1, &routes), EP_ERR_ARG);
    ep_policy_free(q);
    ep_routes_free(&routes);
    ep_policy_free(p);
    ep_router_free(r);
    ep_router_free(NULL);
    ep_policy_free(NULL);
}

static void test_router_init_errors(void **state)
{
    ep_model_cfg m;
    deepseek_cfg(&m, 3, 12, 7, 4, 2); // 2 groups of 3 hold 6 < 7
    ep_router *r = (ep_router *)&m;
    assert_int_equal(ep_router_init(&m, 4, &r), EP_ERR_CONFIG);
    assert_null(r);
    assert_non_null(strstr(ep_last_error(), "fewer than k_base 7"));
    deepseek_cfg(&m, 3, 12, 3, 5, 2); // 12 % 5 != 0
    assert_int_equal(ep_router_init(&m, 4, &r), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "divisible"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_topk_ties),
        cmocka_unit_test(test_group_mask),
        cmocka_unit_test(test_weights_qwen3),
        cmocka_unit_test(test_weights_deepseek),
        cmocka_unit_test(test_gate_logits),
        cmocka_unit_test(test_route_brute_qwen3),
        cmocka_unit_test(test_route_brute_deepseek),
        cmocka_unit_test(test_route_from_x),
        cmocka_unit_test(test_route_zero_tokens_and_errors),
        cmocka_unit_test(test_router_init_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
