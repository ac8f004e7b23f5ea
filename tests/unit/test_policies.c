// Every policy and Pick strategy against hand-computed cases: Ban's K (ties,
// K_min = k_base, R_max = R_min, W_max = W_min, dense layers ignored, floor),
// Pick A-E (key already kept, key outside the range, range ties, several
// keys), Ban&Pick, top-p, DES, comm-aware Ban (rank and node modes), group-limited candidates, the
// automatic Pick domain, and policy max K.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "router/policy.h"

#include "router_fixture.h"

static void qwen_cfg(ep_model_cfg *m, int L, int E, int k)
{
    fixture_qwen_cfg(m, L, E, k, 16);
}

static ep_policy *make(const ep_routing_cfg *rc)
{
    ep_policy *p = NULL;
    ep_status st = ep_policy_create_cfg(rc, &p);
    if (st) fail_msg("%s", ep_last_error());
    return p;
}

// ---- Ban -------------------------------------------------------------------

// 16 experts, top-8. Scores of the top 8: 0.30 0.20 0.10 x4 0.05 0.05.
static const float peaked_mid[16] = {0.30f, 0.20f, 0.10f, 0.10f, 0.10f, 0.10f, 0.05f, 0.05f,
                                     0,     0,     0,     0,     0,     0,     0,     0};
// Flat: eight at 0.1, the rest 0.025 each. R = 0.3 / 0.8 = 0.375.
static const float flat[16] = {0.1f,   0.1f,   0.1f,   0.1f,   0.1f,   0.1f,   0.1f,   0.1f,
                               0.025f, 0.025f, 0.025f, 0.025f, 0.025f, 0.025f, 0.025f, 0.025f};

static void test_ban_k(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 4, 16, 8);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BAN);
    float R, S, cs[8];
    for (int j = 0; j < 8; j++)
        cs[j] = peaked_mid[j];
    // R = 0.6, T' = (0.92 - 0.6) / 0.57 = 0.5614, S = 0.5 * T' = 0.2807,
    // K = floor(3 + 5 * 0.7 * 0.2807) = floor(3.98) = 3
    assert_int_equal(ep_ban_k(&rc, 0.0f, cs, 8, &R, &S), 3);
    assert_float_equal(R, 0.6f, 1e-6);
    assert_float_equal(S, 0.5f * 0.32f / 0.57f, 1e-6);
    rc.ban.beta = 0.0f; // S = T' = 0.5614 -> floor(3 + 1.965) = 4
    assert_int_equal(ep_ban_k(&rc, 0.0f, cs, 8, NULL, NULL), 4);
    for (int j = 0; j < 8; j++)
        cs[j] = flat[j];
    rc.ban.beta = 0.5f; // R 0.375: T' = 0.9561, S = 0.4781 -> floor(4.67) = 4
    assert_int_equal(ep_ban_k(&rc, 0.0f, cs, 8, &R, &S), 4);
    assert_float_equal(R, 0.375f, 1e-6);
    // the same token in the most sensitive layer: S = 0.5 + 0.4781 -> 6
    assert_int_equal(ep_ban_k(&rc, 1.0f, cs, 8, NULL, &S), 6);
    assert_float_equal(S, 0.5f + 0.5f * 0.545f / 0.57f, 1e-6);
    // R below r_min clamps T' to 1: beta 0, r_min 0.5 -> floor(3 + 3.5) = 6
    rc.ban.beta = 0.0f;
    rc.ban.r_min = 0.5f;
    assert_int_equal(ep_ban_k(&rc, 0.0f, cs, 8, NULL, NULL), 6);
    // lambda 1: floor(3 + 5) = 8 = k_base
    rc.ban.lambda = 1.0f;
    assert_int_equal(ep_ban_k(&rc, 0.0f, cs, 8, NULL, NULL), 8);
    // peaked token: R above r_max clamps T' to 0 -> K_min
    const float one[8] = {0.9f, 0.02f, 0.02f, 0.02f, 0.01f, 0.01f, 0.01f, 0.01f};
    assert_int_equal(ep_ban_k(&rc, 0.0f, one, 8, &R, NULL), 3);
    assert_true(R > 0.92f);
    // R_max == R_min: the token term is 0, never a division by zero
    rc.ban.r_min = rc.ban.r_max = 0.6f;
    assert_int_equal(ep_ban_k(&rc, 0.0f, cs, 8, NULL, &S), 3);
    assert_float_equal(S, 0.0f, 0.0);
    // K_min = k_base: always k_base
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BAN);
    rc.ban.k_min = 8;
    assert_int_equal(ep_ban_k(&rc, 0.0f, one, 8, NULL, NULL), 8);
    assert_int_equal(ep_ban_k(&rc, 1.0f, cs, 8, NULL, NULL), 8);
    // K never exceeds the candidates there are
    assert_int_equal(ep_ban_k(&rc, 1.0f, cs, 5, NULL, NULL), 5);
    // floor() of a value a hair below an integer: beta 1, lambda 1 and L' the
    // float just below 0.4 give 3 + 5 * 0.39999998 = 4.9999999 -> 5
    rc.ban.k_min = 3;
    rc.ban.beta = 1.0f;
    rc.ban.lambda = 1.0f;
    assert_int_equal(ep_ban_k(&rc, nextafterf(0.4f, 0.0f), cs, 8, NULL, NULL), 5);
    assert_int_equal(ep_ban_k(&rc, 0.39f, cs, 8, NULL, NULL), 4);
    ep_routing_cfg_free(&rc);
}

static void test_ban_layer_term(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 4, 16, 8);
    m.first_k_dense = 1;
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BAN);
    rc.ban.layer_sensitivity = malloc(4 * sizeof(float));
    // dense layer 0's 100 is ignored: W_min 0.1, W_max 0.3 over layers 1-3
    const float W[4] = {100.0f, 0.1f, 0.3f, 0.2f};
    memcpy(rc.ban.layer_sensitivity, W, sizeof W);
    ep_policy *p = make(&rc);
    assert_float_equal(p->params.ban_lterm[0], 0.0f, 0.0);
    assert_float_equal(p->params.ban_lterm[1], 0.0f, 1e-6);
    assert_float_equal(p->params.ban_lterm[2], 1.0f, 1e-6);
    assert_float_equal(p->params.ban_lterm[3], 0.5f, 1e-6);
    // the flat token: layer 1 -> 4 (as with no sensitivity), layer 2 -> 6,
    // layer 3: S = 0.25 + 0.4781 = 0.7281 -> floor(3 + 2.548) = 5
    tok_buf b;
    EXPECT(&b, fixture_select(p, 1, flat, 16, &b), 0, 1, 2, 3);
    EXPECT(&b, fixture_select(p, 2, flat, 16, &b), 0, 1, 2, 3, 4, 5);
    EXPECT(&b, fixture_select(p, 3, flat, 16, &b), 0, 1, 2, 3, 4);
    ep_policy_free(p);
    // W_max == W_min over the MoE layers: L' = 0 everywhere
    const float Weq[4] = {5.0f, 0.2f, 0.2f, 0.2f};
    memcpy(rc.ban.layer_sensitivity, Weq, sizeof Weq);
    p = make(&rc);
    for (int l = 0; l < 4; l++)
        assert_float_equal(p->params.ban_lterm[l], 0.0f, 0.0);
    ep_policy_free(p);
    // floor() of an exact integer: beta 1, lambda 1, L' = 0.4 -> 3 + 5 * 0.4 = 5
    const float W4[4] = {0.0f, 0.0f, 0.4f, 1.0f};
    memcpy(rc.ban.layer_sensitivity, W4, sizeof W4);
    rc.ban.beta = 1.0f;
    rc.ban.lambda = 1.0f;
    p = make(&rc);
    assert_int_equal(fixture_select(p, 2, flat, 16, &b), 5);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

static void test_ban_ties(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 2, 16, 8);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BAN);
    ep_policy *p = make(&rc);
    // experts 3, 9, 12 tie at the top; the flat token shape keeps 4: lower ids win
    float s[16];
    for (int e = 0; e < 16; e++)
        s[e] = 0.025f;
    const int top[8] = {12, 9, 3, 14, 1, 7, 5, 10};
    for (int j = 0; j < 8; j++)
        s[top[j]] = 0.1f;
    tok_buf b;
    EXPECT(&b, fixture_select(p, 1, s, 16, &b), 1, 3, 5, 7);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

// ---- Pick ------------------------------------------------------------------

// 16 experts, top-4, range 2 (candidates = top 8 = experts 0..7).
static const float pk[16] = {0.20f, 0.15f, 0.12f, 0.10f, 0.09f,  0.08f,  0.07f,  0.06f,
                             0.05f, 0.04f, 0.02f, 0.01f, 0.005f, 0.003f, 0.001f, 0.001f};

static ep_policy *pick_policy(ep_policy_kind kind, ep_pick_strategy s, int layer, const int *keys,
                              int nk)
{
    ep_model_cfg m;
    qwen_cfg(&m, 3, 16, 4);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, kind);
    rc.pick.strategy = s;
    int d = ep_routing_cfg_add_domain(&rc, "math");
    for (int i = 0; i < nk; i++)
        rc.pick.domains[d].key[layer * 16 + keys[i]] = 1;
    rc.pick.domain = d;
    ep_policy *p = make(&rc);
    ep_routing_cfg_free(&rc);
    return p;
}

static void test_pick_strategies(void **state)
{
    tok_buf b;
    ep_policy *p;
#define CASE(S, KEYS, ...)                                                                         \
    do {                                                                                           \
        const int k_[] = KEYS;                                                                     \
        p = pick_policy(EP_POLICY_PICK, S, 1, k_, (int)(sizeof k_ / sizeof k_[0]));                \
        EXPECT(&b, fixture_select(p, 1, pk, 16, &b), __VA_ARGS__);                                 \
        ep_policy_free(p);                                                                         \
    } while (0)
#define L(...) {__VA_ARGS__}
    // A forced addition: also from outside the range; a kept key changes nothing
    CASE(EP_PICK_A, L(12), 0, 1, 2, 3, 12);
    CASE(EP_PICK_A, L(1), 0, 1, 2, 3);
    // B forced replacement of the weakest kept expert (3)
    CASE(EP_PICK_B, L(12), 0, 1, 2, 12);
    CASE(EP_PICK_B, L(2), 0, 1, 2, 3);
    // C range-based addition: 6 is a candidate, 12 is not
    CASE(EP_PICK_C, L(6), 0, 1, 2, 3, 6);
    CASE(EP_PICK_C, L(12), 0, 1, 2, 3);
    CASE(EP_PICK_C, L(0), 0, 1, 2, 3);
    // D range-based replacement
    CASE(EP_PICK_D, L(6), 0, 1, 2, 6);
    CASE(EP_PICK_D, L(12), 0, 1, 2, 3);
    CASE(EP_PICK_D, L(3), 0, 1, 2, 3);
    // two keys: 5 (stronger) replaces 3, then 6 replaces 2 (5 is a key, never replaced)
    CASE(EP_PICK_D, L(5, 6), 0, 1, 5, 6);
    CASE(EP_PICK_C, L(5, 6, 12), 0, 1, 2, 3, 5, 6);
    // E: bias = 0.2 * mean(0.20, 0.15, 0.12, 0.10) = 0.0285; 4: 0.1185 > 0.10
    // replaces 3; 6: 0.0985 < 0.10 changes nothing
    CASE(EP_PICK_E, L(4), 0, 1, 2, 4);
    CASE(EP_PICK_E, L(6), 0, 1, 2, 3);
    CASE(EP_PICK_E, L(1), 0, 1, 2, 3);
    // keys of another layer do nothing here (the layer has none: baseline)
    const int k9[] = {9};
    p = pick_policy(EP_POLICY_PICK, EP_PICK_A, 2, k9, 1);
    EXPECT(&b, fixture_select(p, 1, pk, 16, &b), 0, 1, 2, 3);
    EXPECT(&b, fixture_select(p, 2, pk, 16, &b), 0, 1, 2, 3, 9);
    ep_policy_free(p);
#undef CASE
}

static void test_pick_range_ties_and_bias_tie(void **state)
{
    tok_buf b;
    // experts 7 and 9 tie at the range boundary (8th candidate): 7 is in, 9 is out
    float s[16];
    memcpy(s, pk, sizeof s);
    s[9] = s[7];
    const int k7[] = {7}, k9[] = {9};
    ep_policy *p = pick_policy(EP_POLICY_PICK, EP_PICK_C, 1, k7, 1);
    EXPECT(&b, fixture_select(p, 1, s, 16, &b), 0, 1, 2, 3, 7);
    ep_policy_free(p);
    p = pick_policy(EP_POLICY_PICK, EP_PICK_C, 1, k9, 1);
    EXPECT(&b, fixture_select(p, 1, s, 16, &b), 0, 1, 2, 3);
    ep_policy_free(p);
    // E with an exact tie after the bias: mean kept score 0.25 -> bias 0.05;
    // a key at 0.05 + 0.05 = 0.10 ties the weakest kept (0.10): lower id wins
    const float t[16] = {0.4f, 0.3f, 0.2f, 0.10f, 0.05f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const int k4[] = {4}, k3[] = {3};
    p = pick_policy(EP_POLICY_PICK, EP_PICK_E, 1, k4, 1);
    EXPECT(&b, fixture_select(p, 1, t, 16, &b), 0, 1, 2, 3); // key 4 > 3: 3 stays
    ep_policy_free(p);
    const float u[16] = {0.4f, 0.3f, 0.2f, 0.05f, 0.10f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    p = pick_policy(EP_POLICY_PICK, EP_PICK_E, 1, k3, 1);
    EXPECT(&b, fixture_select(p, 1, u, 16, &b), 0, 1, 2, 3); // key 3 < 4: 3 replaces 4
    ep_policy_free(p);
}

static void test_pick_defaults_and_max_k(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 3, 16, 4);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_PICK);
    assert_int_equal(rc.pick.strategy, EP_PICK_D);
    assert_int_equal(rc.pick.range, 2);
    // no domain configured: pick behaves as baseline
    ep_policy *p = make(&rc);
    tok_buf b;
    EXPECT(&b, fixture_select(p, 1, pk, 16, &b), 0, 1, 2, 3);
    assert_int_equal(ep_policy_max_k(p), 4);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BANPICK);
    assert_int_equal(rc.pick.strategy, EP_PICK_C);
    rc.policy = EP_POLICY_PICK; // pick with strategy C from here on
    // A/C add: max_k = k_base + most keys in any layer of any domain
    int d = ep_routing_cfg_add_domain(&rc, "math");
    rc.pick.domains[d].key[1 * 16 + 5] = 1;
    rc.pick.domains[d].key[1 * 16 + 6] = 1;
    int d2 = ep_routing_cfg_add_domain(&rc, "code");
    for (int e = 10; e < 13; e++)
        rc.pick.domains[d2].key[2 * 16 + e] = 1;
    rc.pick.domain = d;
    p = make(&rc);
    assert_int_equal(ep_policy_max_k(p), 7);
    ep_policy_free(p);
    rc.pick.strategy = EP_PICK_D; // replacement never grows K
    p = make(&rc);
    assert_int_equal(ep_policy_max_k(p), 4);
    // switching domains
    assert_int_equal(ep_policy_set_domain(p, "code"), EP_OK);
    EXPECT(&b, fixture_select(p, 2, pk, 16, &b), 0, 1, 2, 3); // 10-12 outside the range
    assert_int_equal(ep_policy_set_domain(p, "math"), EP_OK);
    EXPECT(&b, fixture_select(p, 1, pk, 16, &b), 0, 1, 5, 6);
    assert_int_equal(ep_policy_set_domain(p, "poetry"), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "'poetry'"));
    assert_int_equal(ep_policy_set_domain(p, ""), EP_OK); // none
    EXPECT(&b, fixture_select(p, 1, pk, 16, &b), 0, 1, 2, 3);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

static void test_banpick(void **state)
{
    tok_buf b;
    // top-4, K_min 3; the pk token: R = 0.47 / 0.57 = 0.8246, T' = 0.1667,
    // S = 0.0833 -> floor(3 + 1 * 0.7 * 0.0833) = 3: Ban keeps 0, 1, 2
    const int k3[] = {3}, k6[] = {6}, k12[] = {12};
    ep_policy *p = pick_policy(EP_POLICY_BANPICK, EP_PICK_C, 1, k3, 1);
    EXPECT(&b, fixture_select(p, 0, pk, 16, &b), 0, 1, 2);    // layer 0 has no keys
    EXPECT(&b, fixture_select(p, 1, pk, 16, &b), 0, 1, 2, 3); // C brings the banned key back
    ep_policy_free(p);
    p = pick_policy(EP_POLICY_BANPICK, EP_PICK_C, 1, k6, 1);
    EXPECT(&b, fixture_select(p, 1, pk, 16, &b), 0, 1, 2, 6);
    ep_policy_free(p);
    p = pick_policy(EP_POLICY_BANPICK, EP_PICK_C, 1, k12, 1);
    EXPECT(&b, fixture_select(p, 1, pk, 16, &b), 0, 1, 2);
    ep_policy_free(p);
    p = pick_policy(EP_POLICY_BANPICK, EP_PICK_D, 1, k6, 1); // explicit D after Ban
    EXPECT(&b, fixture_select(p, 1, pk, 16, &b), 0, 1, 6);
    ep_policy_free(p);
}

// ---- top-p and DES ---------------------------------------------------------

static void test_topp(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 2, 16, 4);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_TOPP);
    assert_float_equal(rc.topp.threshold, 0.8f, 0.0);
    // top-4 = 0.2 0.15 0.1 0.05 (sum 0.5) -> shares 0.4 0.3 0.2 0.1; the rest
    // of the mass (0.5 over 12 experts) does not count
    float s[16];
    for (int e = 0; e < 16; e++)
        s[e] = 0.5f / 12.0f * 0.9f;
    s[5] = 0.2f;
    s[2] = 0.15f;
    s[9] = 0.1f;
    s[0] = 0.05f;
    tok_buf b;
    struct {
        float thr;
        int k;
    } cases[] = {{0.8f, 3}, {0.7f, 2}, {0.71f, 3}, {1.0f, 4}, {0.4f, 1}, {0.1f, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rc.topp.threshold = cases[i].thr;
        ep_policy *p = make(&rc);
        int K = fixture_select(p, 1, s, 16, &b);
        assert_int_equal(K, cases[i].k);
        const int order[4] = {5, 2, 9, 0};
        for (int j = 0; j < K; j++)
            assert_int_equal(b.kept[j], order[j]);
        ep_policy_free(p);
    }
    ep_routing_cfg_free(&rc);
}

static void test_des(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 3, 16, 8);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_DES);
    assert_int_equal(rc.des.k_lo, 4);
    assert_int_equal(rc.des.k_hi, 6);
    // r_(1..8) = .3 .2 .15 .1 .08 .07 .05 .05: r4/r5 = 1.25, r5/r6 = 1.1429
    const float s[16] = {0.3f, 0.2f, 0.15f, 0.1f, 0.08f, 0.07f, 0.05f, 0.05f};
    tok_buf b;
    ep_policy *p = make(&rc); // no medians: each 1.0 -> 1.25 > 1 keeps k_lo
    EXPECT(&b, fixture_select(p, 1, s, 16, &b), 0, 1, 2, 3);
    ep_policy_free(p);
    rc.des.median_ratio = malloc(3 * 7 * sizeof(float));
    for (int i = 0; i < 21; i++)
        rc.des.median_ratio[i] = 1.0f;
    float *m1 = rc.des.median_ratio + 1 * 7; // layer 1, entry j-1
    struct {
        float m4, m5;
        int k;
    } cases[] = {{1.3f, 1.2f, 6}, {1.2f, 1.2f, 4}, {1.3f, 1.1f, 5}, {1.26f, 1.0f, 5}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        m1[3] = cases[i].m4;
        m1[4] = cases[i].m5;
        p = make(&rc);
        assert_int_equal(fixture_select(p, 1, s, 16, &b), cases[i].k);
        assert_int_equal(fixture_select(p, 2, s, 16, &b), 4); // layer 2 keeps medians 1.0
        ep_policy_free(p);
    }
    free(rc.des.median_ratio);
    rc.des.median_ratio = NULL;
    // r4 == r5: the ratio 1.0 does not exceed the median 1.0 -> next ratio
    const float tie[16] = {0.3f, 0.2f, 0.15f, 0.1f, 0.1f, 0.07f, 0.05f, 0.03f};
    p = make(&rc);
    EXPECT(&b, fixture_select(p, 1, tie, 16, &b), 0, 1, 2, 3, 4);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

// ---- comm-aware Ban -------------------------------------------------------

static void test_ban_locality(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 2, 16, 8);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BAN);
    rc.ban.locality = EP_BAN_LOC_RANK;
    ep_policy *p = make(&rc);
    int rank_of[16], node_of[4] = {0, 0, 1, 1};
    for (int e = 0; e < 16; e++)
        rank_of[e] = e / 4; // 4 ranks, 2 nodes
    // candidates: 0 (.20 r0), 1 (.17 r0), 2 (.16 r0), 8 (.15 r2), 4 (.13 r1), 3 (.125 r0)
    float s[16] = {0};
    s[0] = 0.20f, s[1] = 0.17f, s[2] = 0.16f, s[8] = 0.15f, s[4] = 0.13f, s[3] = 0.125f;
    s[12] = 0.01f, s[13] = 0.01f;
    ep_placement pl;
    fixture_place(&pl, rank_of, 16, 4);
    ep_route_ctx ctx = {.place = &pl, .node_of = node_of, .rank = -1};
    tok_buf b;
    fixture_select(p, 1, s, 16, &b); // sets up b.t
    int kept[16];
    ep_ban_fill(p, &b.t, 4, kept); // no placement: plain Ban
    assert_int_equal(kept[3], 8);
    b.t.ctx = &ctx;
    ep_ban_fill(p, &b.t, 4, kept); // within 0.8 * 0.15 = 0.12: 3 is on rank 0 already visited
    assert_int_equal(kept[0], 0);
    assert_int_equal(kept[1], 1);
    assert_int_equal(kept[2], 2);
    assert_int_equal(kept[3], 3);
    ep_ban_fill(p, &b.t, 5, kept); // next slot: default 8; 4 (r1, node 0) is preferred
    assert_int_equal(kept[4], 4);
    s[3] = 0.11f; // now below the ratio: the node match (4) wins
    fixture_select(p, 1, s, 16, &b);
    b.t.ctx = &ctx;
    ep_ban_fill(p, &b.t, 4, kept);
    assert_int_equal(kept[3], 4);
    ctx.node_of = NULL; // ranks only: nothing near -> default
    ep_ban_fill(p, &b.t, 4, kept);
    assert_int_equal(kept[3], 8);
    ctx.rank = 2; // the token's own rank holds 8
    ep_ban_fill(p, &b.t, 4, kept);
    assert_int_equal(kept[3], 8);
    ctx.rank = 1; // own rank holds 4
    ep_ban_fill(p, &b.t, 4, kept);
    assert_int_equal(kept[3], 4);
    // A replica of 5 on rank 3, the token's own: with replicas 5 is near and
    // beats 8 (within the ratio); its home stays rank 1 (slots go by rank).
    s[5] = 0.13f;
    fixture_select(p, 1, s, 16, &b);
    int phy_e[17], phy_r[17], n = 0;
    for (int e = 0; e < 16; e++) {
        phy_e[n] = e, phy_r[n++] = rank_of[e];
        if (e == 5) phy_e[n] = 5, phy_r[n++] = 3;
    }
    ep_placement rp;
    assert_int_equal(ep_placement_from_slots(&rp, EP_PLACE_EPLB, 16, 4, n, phy_e, phy_r), EP_OK);
    ep_route_ctx rctx = {.place = &rp, .node_of = NULL, .rank = 3};
    b.t.ctx = &rctx;
    ep_ban_fill(p, &b.t, 4, kept);
    assert_int_equal(kept[3], 5);
    assert_int_equal(rp.rank_of[5], 1);
    rctx.home_only = true; // pairs go home: 5 goes to rank 1, nothing near
    ep_ban_fill(p, &b.t, 4, kept);
    assert_int_equal(kept[3], 8);
    ep_placement_free(&rp);
    // the top K_min are always kept, whatever the placement
    rc.ban.k_min = 4;
    ep_policy *q = make(&rc);
    ctx.node_of = node_of;
    ctx.rank = 1;
    b.t.ctx = &ctx;
    ep_ban_fill(q, &b.t, 4, kept);
    assert_int_equal(kept[3], 8);
    ep_placement_free(&pl);
    ep_policy_free(q);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

// ban.locality: node. 16 experts on 8 ranks (2 each), 4 nodes (2 ranks
// each): expert e on rank e / 2, node e / 4. k_min 3, rho 0.8.
static void test_ban_locality_node(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 2, 16, 8);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BAN);
    rc.ban.locality = EP_BAN_LOC_NODE;
    ep_policy *p = make(&rc);
    rc.ban.locality = EP_BAN_LOC_RANK;
    ep_policy *pr = make(&rc);
    int rank_of[16], node_of[8];
    for (int e = 0; e < 16; e++)
        rank_of[e] = e / 2;
    for (int r = 0; r < 8; r++)
        node_of[r] = r / 2;
    ep_placement pl;
    fixture_place(&pl, rank_of, 16, 8);
    ep_route_ctx ctx = {.place = &pl, .node_of = node_of, .rank = 0};
    // top 3 on node 0; then 8 (.12, node 2), 12, 13, 14 (node 3), 3 (node 0, .05)
    float s[16] = {0};
    s[0] = 0.20f, s[1] = 0.18f, s[2] = 0.16f, s[8] = 0.12f, s[12] = 0.115f, s[13] = 0.11f;
    s[14] = 0.10f, s[3] = 0.05f;
    tok_buf b;
    fixture_select(p, 1, s, 16, &b);
    b.t.ctx = &ctx;
    int kept[16];
    // K 5: nothing eligible (>= 0.8 x 0.115) is on node 0. Plain Ban and
    // rank mode open nodes 2 and 3; node mode opens node 3, which holds
    // three eligible ones, and fills both slots there.
    ep_ban_fill(pr, &b.t, 5, kept);
    assert_int_equal(kept[3], 8);
    assert_int_equal(kept[4], 12);
    ep_ban_fill(p, &b.t, 5, kept);
    assert_int_equal(kept[0], 0);
    assert_int_equal(kept[1], 1);
    assert_int_equal(kept[2], 2);
    assert_int_equal(kept[3], 12);
    assert_int_equal(kept[4], 13);
    // K 4: one slot left, so every node counts 1 and the best score wins
    ep_ban_fill(p, &b.t, 4, kept);
    assert_int_equal(kept[3], 8);
    // A visited node beats better scores: 6 (node 1) with the token on
    // rank 2 (node 1), when eligible (>= 0.092 at K 5) ...
    s[6] = 0.093f;
    fixture_select(p, 1, s, 16, &b);
    b.t.ctx = &ctx;
    ctx.rank = 2;
    ep_ban_fill(p, &b.t, 5, kept);
    assert_int_equal(kept[3], 6);
    assert_int_equal(kept[4], 8); // one slot left: every node counts 1, best score
    // ... but not below the ratio of the weakest one plain Ban keeps
    s[6] = 0.091f;
    fixture_select(p, 1, s, 16, &b);
    b.t.ctx = &ctx;
    ep_ban_fill(p, &b.t, 5, kept);
    assert_int_equal(kept[3], 12);
    assert_int_equal(kept[4], 13);
    // On a visited node the score decides, not the rank: the token on rank
    // 6 (node 3), 13 moved below 14; rank mode takes 13 for its rank.
    s[13] = 0.10f, s[14] = 0.11f;
    fixture_select(p, 1, s, 16, &b);
    b.t.ctx = &ctx;
    ctx.rank = 6;
    ep_ban_fill(p, &b.t, 5, kept); // node 3 is the token's: 12, then 14 (better than 13)
    assert_int_equal(kept[3], 12);
    assert_int_equal(kept[4], 14);
    ep_ban_fill(pr, &b.t, 5, kept); // rank mode: 12 (rank 6), then 13 (rank 6) over 14
    assert_int_equal(kept[3], 12);
    assert_int_equal(kept[4], 13);
    // without a node map there is one node: plain Ban's choice
    ctx.node_of = NULL;
    ep_ban_fill(p, &b.t, 5, kept);
    assert_int_equal(kept[3], 8);
    assert_int_equal(kept[4], 12);
    ep_placement_free(&pl);
    ep_policy_free(pr);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

// Locality only chooses which experts fill the slots: K is plain Ban's for
// every token, the top k_min are kept and no expert twice.
static void test_ban_locality_same_k(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 2, 16, 8);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BAN);
    ep_policy *pol[3];
    for (int i = 0; i < 3; i++) {
        rc.ban.locality = (ep_ban_locality)i;
        rc.ban.locality_ratio = 0.5f;
        pol[i] = make(&rc);
    }
    int rank_of[16], node_of[8];
    for (int e = 0; e < 16; e++)
        rank_of[e] = (e * 5) % 8; // scattered
    for (int r = 0; r < 8; r++)
        node_of[r] = r / 2;
    ep_placement pl;
    fixture_place(&pl, rank_of, 16, 8);
    uint64_t x = 7;
    int n_moved = 0;
    for (int it = 0; it < 300; it++) {
        float s[16], sum = 0.0f;
        for (int e = 0; e < 16; e++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            s[e] = expf((float)((x >> 40) * (1.0 / (1ULL << 24))) * 3.0f);
            sum += s[e];
        }
        for (int e = 0; e < 16; e++)
            s[e] /= sum;
        ep_route_ctx ctx = {.place = &pl, .node_of = node_of, .rank = it % 8};
        tok_buf b0, b;
        int K0 = fixture_select_ctx(pol[0], 1, s, 16, &ctx, NULL, &b0);
        for (int i = 1; i < 3; i++) {
            int K = fixture_select_ctx(pol[i], 1, s, 16, &ctx, NULL, &b);
            assert_int_equal(K, K0);
            for (int j = 0; j < rc.ban.k_min; j++)
                assert_int_equal(b.kept[j], b0.cand[j]);
            for (int j = 0; j < K; j++)
                for (int k = 0; k < j; k++)
                    assert_int_not_equal(b.kept[j], b.kept[k]);
            n_moved += memcmp(b.kept, b0.kept, (size_t)K * sizeof(int)) != 0;
        }
    }
    assert_true(n_moved > 0); // the placement did change some choices
    ep_placement_free(&pl);
    for (int i = 0; i < 3; i++)
        ep_policy_free(pol[i]);
    ep_routing_cfg_free(&rc);
}

// ---- through the router: group-limited candidates --------------------------

static void test_group_limited_candidates(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 3, 16, 4);
    m.arch = EP_ARCH_DEEPSEEK_V2;
    m.topk_method = EP_TOPK_GROUP_LIMITED;
    m.n_group = 4;
    m.topk_group = 2;
    m.norm_topk_prob = false;
    m.routed_scaling_factor = 16.0f;
    // Groups of 4. Group maxes: g0 0.20, g1 0.05, g2 0.18, g3 0.15 -> g0, g2.
    // Expert 13 (g3, 0.14) would be the 4th best overall but is not allowed.
    float s[16] = {0.20f, 0.10f, 0.02f, 0.01f, 0.05f, 0.01f, 0.01f, 0.01f,
                   0.18f, 0.03f, 0.02f, 0.01f, 0.15f, 0.14f, 0.03f, 0.03f};
    float sum = 0, lg[16];
    for (int e = 0; e < 16; e++)
        sum += s[e];
    for (int e = 0; e < 16; e++)
        lg[e] = logf(s[e] / sum);
    ep_router *r;
    ep_routes out;
    assert_int_equal(ep_router_init(&m, 1, &r), EP_OK);
    ep_routes_init(&out, 1, 8, 4);
    // the baseline of this token: allowed = g0 + g2, top-4 = 0 (.20), 8 (.18), 1 (.10), 9 (.03)
    ep_policy *base;
    assert_int_equal(ep_policy_create(&m, "baseline", &base), EP_OK);
    assert_int_equal(ep_router_route_logits(r, base, NULL, 1, lg, 1, &out), EP_OK);
    const int bwant[4] = {0, 8, 1, 9};
    for (int j = 0; j < 4; j++) {
        assert_int_equal(out.expert[j], bwant[j]);
        assert_float_equal(out.weight[j], s[bwant[j]] / sum * 16.0f, 1e-5);
        assert_int_equal(out.base_expert[j], bwant[j]);
    }
    ep_policy_free(base);
    const int k13[] = {13}, k9[] = {9};
    const int kept4[4] = {0, 8, 1, 9}, kept5[5] = {0, 8, 13, 1, 9};
    struct {
        ep_pick_strategy st;
        const int *key;
        int K;
        const int *want;
    } cases[] = {
        {EP_PICK_C, k13, 4, kept4}, // 13 is not a candidate (its group is masked)
        {EP_PICK_D, k13, 4, kept4}, {EP_PICK_E, k13, 4, kept4}, // the model could never select it
        {EP_PICK_C, k9, 4, kept4},                              // 9 is already kept
        {EP_PICK_A, k13, 5, kept5}, // forced: added with its true softmax score
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ep_policy *p = pick_policy(EP_POLICY_PICK, cases[i].st, 1, cases[i].key, 1);
        assert_int_equal(ep_router_route_logits(r, p, NULL, 1, lg, 1, &out), EP_OK);
        assert_int_equal(ep_routes_k(&out, 0), cases[i].K);
        for (int j = 0; j < cases[i].K; j++) {
            assert_int_equal(out.expert[j], cases[i].want[j]);
            // DeepSeek V2.5 rule after any policy: x16, no renormalisation
            assert_float_equal(out.weight[j], s[out.expert[j]] / sum * 16.0f, 1e-5);
        }
        assert_int_equal(ep_routes_check(&out, 16), EP_OK);
        ep_policy_free(p);
    }
    ep_routes_free(&out);
    ep_router_free(r);
}

static void test_ban_through_router_weights(void **state)
{
    // Qwen3 renormalises over the kept set; DeepSeek x16 does not, so Ban
    // lowers its total routed weight.
    ep_model_cfg m;
    qwen_cfg(&m, 2, 16, 8);
    float lg[16];
    for (int e = 0; e < 16; e++)
        lg[e] = logf(flat[e]);
    ep_router *r;
    ep_policy *p;
    ep_routes out;
    assert_int_equal(ep_router_init(&m, 1, &r), EP_OK);
    assert_int_equal(ep_policy_create(&m, "ban", &p), EP_OK);
    ep_routes_init(&out, 1, 8, 8);
    assert_int_equal(ep_router_route_logits(r, p, NULL, 1, lg, 1, &out), EP_OK);
    assert_int_equal(ep_routes_k(&out, 0), 4);
    for (int j = 0; j < 4; j++)
        assert_float_equal(out.weight[j], 0.25f, 1e-6);
    for (int j = 0; j < 8; j++)
        assert_float_equal(out.base_weight[j], 0.125f, 1e-6);
    ep_policy_free(p);
    ep_router_free(r);
    m.arch = EP_ARCH_DEEPSEEK_V2;
    m.norm_topk_prob = false;
    m.routed_scaling_factor = 16.0f;
    assert_int_equal(ep_router_init(&m, 1, &r), EP_OK);
    assert_int_equal(ep_policy_create(&m, "ban", &p), EP_OK);
    assert_int_equal(ep_router_route_logits(r, p, NULL, 1, lg, 1, &out), EP_OK);
    assert_int_equal(ep_routes_k(&out, 0), 4);
    float total = 0, base_total = 0;
    for (int j = 0; j < 4; j++)
        total += out.weight[j];
    for (int j = 0; j < 8; j++)
        base_total += out.base_weight[j];
    assert_float_equal(total, 16.0f * 0.4f, 1e-5);
    assert_float_equal(base_total, 16.0f * 0.8f, 1e-5);
    ep_policy_free(p);
    ep_router_free(r);
    ep_routes_free(&out);
}

// ---- automatic Pick domain --------------------------------------------------

static void test_domain_auto(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 2, 4, 2);
    m.first_k_dense = 1;
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_PICK);
    int dm = ep_routing_cfg_add_domain(&rc, "math");
    int dn = ep_routing_cfg_add_domain(&rc, "nofreq");
    int dc = ep_routing_cfg_add_domain(&rc, "code");
    (void)dn;
    rc.pick.domains[dm].frequency = calloc(8, sizeof(float));
    rc.pick.domains[dc].frequency = calloc(8, sizeof(float));
    rc.pick.domains[dm].frequency[4] = 1.0f; // layer 1: expert 0
    rc.pick.domains[dc].frequency[5] = 1.0f; // layer 1: expert 1
    rc.pick.domains[dc].frequency[1] = 9.0f; // dense layer 0: ignored
    float hist[8] = {0, 50, 0, 0, 3, 1, 0, 0}, cosv;
    assert_int_equal(ep_pick_domain_auto(&rc, hist, &cosv), dm);
    assert_float_equal(cosv, 3.0f / sqrtf(10.0f), 1e-6);
    float h2[8] = {0, 0, 0, 0, 1, 3, 0, 0};
    assert_int_equal(ep_pick_domain_auto(&rc, h2, NULL), dc);
    float tie[8] = {0, 0, 0, 0, 2, 2, 0, 0}; // equal cosines: lower index
    assert_int_equal(ep_pick_domain_auto(&rc, tie, NULL), dm);
    float zero[8] = {0, 7, 0, 0, 0, 0, 0, 0}; // only dense counts: no decision
    assert_int_equal(ep_pick_domain_auto(&rc, zero, &cosv), -1);
    // a histogram from routes
    ep_routes r;
    ep_routes_init(&r, 2, 2, 2);
    r.n_tokens = 2;
    r.offsets[0] = 0, r.offsets[1] = 2, r.offsets[2] = 3;
    r.expert[0] = 1, r.expert[1] = 3, r.expert[2] = 1;
    float hl[4] = {0};
    ep_routes_histogram_add(&r, 4, hl);
    assert_float_equal(hl[1], 2.0f, 0.0);
    assert_float_equal(hl[3], 1.0f, 0.0);
    assert_float_equal(hl[0], 0.0f, 0.0);
    ep_routes_free(&r);
    // domain auto validation: needs at least one domain with frequency
    rc.pick.domain_auto = true;
    assert_int_equal(ep_routing_cfg_validate(&rc), EP_OK);
    ep_policy *p = make(&rc);
    assert_int_equal(p->cfg.pick.domain, -1); // starts with none
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
    ep_routing_cfg_default(&rc, &m, EP_POLICY_PICK);
    rc.pick.domain_auto = true;
    assert_int_equal(ep_routing_cfg_validate(&rc), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "pick.domain"));
    ep_routing_cfg_free(&rc);
}

static void test_policy_names(void **state)
{
    ep_model_cfg m;
    qwen_cfg(&m, 2, 16, 8);
    const char *names[] = {"baseline", "ban", "pick", "banpick", "topp", "des", "laser"};
    for (size_t i = 0; i < EP_ARRAY_LEN(names); i++) {
        ep_policy *p;
        assert_int_equal(ep_policy_create(&m, names[i], &p), EP_OK);
        assert_string_equal(ep_policy_name(p), names[i]);
        assert_int_equal(ep_policy_max_k(p), 8);
        ep_policy_free(p);
    }
    ep_policy *p = (ep_policy *)&m;
    assert_int_equal(ep_policy_create(&m, "bann", &p), EP_ERR_ARG);
    assert_null(p);
    assert_non_null(strstr(ep_last_error(), "routing 'bann'"));
    assert_non_null(strstr(ep_last_error(), "policy name"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ban_k),
        cmocka_unit_test(test_ban_layer_term),
        cmocka_unit_test(test_ban_ties),
        cmocka_unit_test(test_pick_strategies),
        cmocka_unit_test(test_pick_range_ties_and_bias_tie),
        cmocka_unit_test(test_pick_defaults_and_max_k),
        cmocka_unit_test(test_banpick),
        cmocka_unit_test(test_topp),
        cmocka_unit_test(test_des),
        cmocka_unit_test(test_ban_locality),
        cmocka_unit_test(test_ban_locality_node),
        cmocka_unit_test(test_ban_locality_same_k),
        cmocka_unit_test(test_group_limited_candidates),
        cmocka_unit_test(test_ban_through_router_weights),
        cmocka_unit_test(test_domain_auto),
        cmocka_unit_test(test_policy_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
