// The laser policy (router/policy_laser.c) on hand-computed cases: a peaked
// token keeps the inner choice whatever the load; a flat one keeps its top
// keep_top and fills the rest from the widened pool, least-loaded home rank
// first, ties by score; widen_ratio 1 and peak_ratio 1 change nothing; laser
// after Ban keeps Ban's K; where load ties, the inner choice wins (a Pick
// key expert stays); without a placement laser is its inner policy;
// with replicas an expert's load is its least-loaded slot's;
// through the router the load runs over the tokens of one call and restarts
// with the next.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "router/policy.h"
#include "router_fixture.h"

enum { E = 16, KB = 4, W = 4 };

// 2 layers x 16 experts, top-4; 4 ranks, expert e on rank e / 4.
static void hand_cfg(ep_model_cfg *m)
{
    fixture_qwen_cfg(m, 2, E, KB, 8);
}

static const int rank_of[E] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};

// The routing context every select here gets (home placement above, no own
// rank) and laser's running load; set_load fills it.
static ep_placement g_place;
static ep_route_ctx g_ctx;
static int64_t g_load[W];

static int setup(void **state)
{
    (void)state;
    fixture_place(&g_place, rank_of, E, W);
    g_ctx = (ep_route_ctx){.place = &g_place, .node_of = NULL, .rank = -1};
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ep_placement_free(&g_place);
    return 0;
}

// Flat: the top 4 all on rank 0 (top-1 / 4th = 0.12 / 0.09 = 1.33), then
// 4 (.085, r1), 8 (.08, r2), 12 (.07, r3), 5 (.05, r1); the other 8 experts
// share the rest (0.036875 each, below 0.5 x 0.09). Sums to 1.
static void flat_scores(float *s)
{
    for (int e = 0; e < E; e++)
        s[e] = 0.295f / 8;
    s[0] = 0.12f, s[1] = 0.11f, s[2] = 0.10f, s[3] = 0.09f;
    s[4] = 0.085f, s[8] = 0.08f, s[12] = 0.07f, s[5] = 0.05f;
}

// The router's steps for one token at layer 1 (router_fixture.h), with the
// placement and load above.
static int run_select(const ep_policy *p, const float *score, tok_buf *b)
{
    return fixture_select_ctx(p, 1, score, E, &g_ctx, g_load, b);
}

static ep_policy *make(const ep_routing_cfg *rc)
{
    ep_policy *p = NULL;
    if (ep_policy_create_cfg(rc, &p)) fail_msg("%s", ep_last_error());
    memset(g_load, 0, sizeof g_load); // a fresh routing call's load
    return p;
}

static void set_load(const ep_policy *p, int64_t r0, int64_t r1, int64_t r2, int64_t r3)
{
    (void)p;
    g_load[0] = r0, g_load[1] = r1, g_load[2] = r2, g_load[3] = r3;
}

static void test_defaults_and_names(void **state)
{
    ep_model_cfg m;
    hand_cfg(&m);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_LASER);
    assert_int_equal(rc.laser.after, EP_POLICY_BASELINE);
    assert_float_equal(rc.laser.peak_ratio, 2.0f, 0);
    assert_float_equal(rc.laser.widen_ratio, 0.5f, 0);
    assert_int_equal(rc.laser.keep_top, 1);
    ep_policy *p = NULL;
    assert_int_equal(ep_policy_create(&m, "laser", &p), EP_OK);
    assert_string_equal(ep_policy_name(p), "laser");
    assert_int_equal(ep_policy_max_k(p), KB);
    assert_true(ep_policy_uses_load(p)); // the router keeps a load for it
    ep_policy_free(p);
    // max K follows the inner policy: Pick A may add key experts
    rc.laser.after = EP_POLICY_PICK;
    rc.pick.strategy = EP_PICK_A;
    int d = ep_routing_cfg_add_domain(&rc, "math");
    rc.pick.domains[d].key[1 * E + 9] = 1;
    rc.pick.domain = d;
    p = make(&rc);
    assert_int_equal(ep_policy_max_k(p), KB + 1);
    ep_policy_free(p);
    // laser after laser is refused
    rc.laser.after = EP_POLICY_LASER;
    assert_int_equal(ep_routing_cfg_validate(&rc), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "laser.after"));
    ep_routing_cfg_free(&rc);
}

static void test_peaked_keeps_inner(void **state)
{
    ep_model_cfg m;
    hand_cfg(&m);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_LASER);
    ep_policy *p = make(&rc);
    // 0.5 / 0.1 = 5 >= 2: peaked; rank 0 busy changes nothing
    float s[E];
    for (int e = 0; e < E; e++)
        s[e] = 0.01f;
    s[0] = 0.5f, s[1] = 0.2f, s[2] = 0.1f, s[3] = 0.1f;
    set_load(p, 100, 0, 0, 0);
    tok_buf b;
    EXPECT(&b, run_select(p, s, &b), 0, 1, 2, 3);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

static void test_flat_widens_to_least_loaded(void **state)
{
    ep_model_cfg m;
    hand_cfg(&m);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_LASER);
    float s[E];
    flat_scores(s);
    tok_buf b;
    ep_policy *p = make(&rc);
    // no load yet: all ranks tie at 0, the score order gives the inner choice
    EXPECT(&b, run_select(p, s, &b), 0, 1, 2, 3);
    // rank 0 busy: keep 0 (keep_top 1), then load 0 first by score: 4 (r1),
    // 12 (r3), 5 (r1); rank 2 (load 3) loses to them
    set_load(p, 10, 0, 3, 0);
    EXPECT(&b, run_select(p, s, &b), 0, 4, 12, 5);
    // ranks 1 and 3 busier than 2: 8 (r2, load 1), then rank 0's 1 and 2 (load 2)
    set_load(p, 2, 5, 1, 5);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 2, 8);
    ep_policy_free(p);

    // keep_top 0: even the top-1 may move; r2 (load 3) fills the 4th slot
    rc.laser.keep_top = 0;
    p = make(&rc);
    set_load(p, 10, 0, 3, 0);
    EXPECT(&b, run_select(p, s, &b), 4, 8, 12, 5);
    ep_policy_free(p);

    // keep_top 4 = K: nothing may move
    rc.laser.keep_top = 4;
    p = make(&rc);
    set_load(p, 10, 0, 3, 0);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 2, 3);
    ep_policy_free(p);

    // widen_ratio 1: the pool is only experts scoring >= the 4th: no change
    rc.laser.keep_top = 1;
    rc.laser.widen_ratio = 1.0f;
    p = make(&rc);
    set_load(p, 10, 0, 3, 0);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 2, 3);
    ep_policy_free(p);

    // widen_ratio 0.8: threshold 0.072 takes 4 and 8 but not 12 (.07) or 5
    rc.laser.widen_ratio = 0.8f;
    p = make(&rc);
    set_load(p, 10, 0, 3, 0);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 4, 8);
    ep_policy_free(p);

    // peak ratio 1.3 <= 1.33: the token counts as peaked
    rc.laser.widen_ratio = 0.5f;
    rc.laser.peak_ratio = 1.3f;
    p = make(&rc);
    set_load(p, 10, 0, 3, 0);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 2, 3);
    ep_policy_free(p);
    // ... and 1.4 > 1.33: flat again
    rc.laser.peak_ratio = 1.4f;
    p = make(&rc);
    set_load(p, 10, 0, 3, 0);
    EXPECT(&b, run_select(p, s, &b), 0, 4, 12, 5);
    ep_policy_free(p);

    // without a placement laser is its inner policy
    ep_policy *q = NULL;
    assert_int_equal(ep_policy_create_cfg(&rc, &q), EP_OK);
    EXPECT(&b, fixture_select(q, 1, s, E, &b), 0, 1, 2, 3);
    ep_policy_free(q);
    ep_routing_cfg_free(&rc);
}

static void test_inner_choice_wins_ties(void **state)
{
    ep_model_cfg m;
    hand_cfg(&m);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_LASER);
    rc.laser.after = EP_POLICY_PICK; // strategy D: key 5 replaces the weakest kept (3)
    rc.laser.peak_ratio = 3.0f;      // 0.12 / 0.05 = 2.4: flat
    int d = ep_routing_cfg_add_domain(&rc, "math");
    rc.pick.domains[d].key[1 * E + 5] = 1;
    rc.pick.domain = d;
    ep_policy *p = make(&rc);
    float s[E];
    flat_scores(s);
    tok_buf b;
    // equal load: Pick's weaker key expert 5 stays, although 3 (.09) and 4
    // (.085) in the pool score higher
    EXPECT(&b, run_select(p, s, &b), 0, 1, 2, 5);
    // rank 1 busy, rank 0 idle: the load decides; 5 (r1) goes, 3 (r0) comes
    set_load(p, 0, 10, 3, 3);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 2, 3);
    // rank 0 busier than 2 and 3: 8 and 12 first, then the inner 1 beats 3
    set_load(p, 5, 10, 3, 3);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 8, 12);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

static void test_after_ban_keeps_k(void **state)
{
    ep_model_cfg m;
    hand_cfg(&m);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_LASER);
    rc.laser.after = EP_POLICY_BAN;
    float s[E];
    flat_scores(s);
    // Ban alone: R = 0.33 / 0.42 = 0.786, T' = (0.92 - 0.786) / 0.57 = 0.236,
    // S = 0.118, K = floor(3 + 1 * 0.7 * 0.118) = 3 -> {0, 1, 2}
    ep_routing_cfg ban;
    ep_routing_cfg_default(&ban, &m, EP_POLICY_BAN);
    ep_policy *pb = NULL;
    assert_int_equal(ep_policy_create_cfg(&ban, &pb), EP_OK);
    tok_buf b;
    EXPECT(&b, run_select(pb, s, &b), 0, 1, 2);
    ep_policy_free(pb);
    ep_routing_cfg_free(&ban);
    // laser after Ban: 0.12 / 0.10 = 1.2 flat; threshold 0.05; K stays 3:
    // keep 0, then 4 (r1) and 12 (r3) at load 0
    ep_policy *p = make(&rc);
    set_load(p, 10, 0, 3, 0);
    EXPECT(&b, run_select(p, s, &b), 0, 4, 12);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

static void test_replicas(void **state)
{
    ep_model_cfg m;
    hand_cfg(&m);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_LASER);
    ep_policy *p = make(&rc);
    float s[E];
    flat_scores(s);
    tok_buf b;
    // home ranks only: r1 busiest (4, 5 on it), r3 free -> 12, then r2's 8, then r0's 1
    set_load(p, 10, 11, 3, 0);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 8, 12);
    // expert 4 also has a slot on rank 3: its load is min(11, 0) = 0, and it
    // outranks 12 there by score
    int phy_e[E + 1], phy_r[E + 1], n = 0;
    for (int e = 0; e < E; e++) {
        phy_e[n] = e, phy_r[n++] = rank_of[e];
        if (e == 4) phy_e[n] = 4, phy_r[n++] = 3;
    }
    ep_placement rp;
    assert_int_equal(ep_placement_from_slots(&rp, EP_PLACE_EPLB, E, W, n, phy_e, phy_r), EP_OK);
    const ep_route_ctx home = g_ctx;
    g_ctx.place = &rp;
    set_load(p, 10, 11, 3, 0);
    assert_int_equal(ep_route_load_rank(&g_ctx, g_load, 4), 3);
    assert_int_equal(ep_route_load_rank(&g_ctx, g_load, 5), 1);
    EXPECT(&b, run_select(p, s, &b), 0, 4, 8, 12);
    // a kept pair of a replicated expert counts on its least-loaded slot (r3)
    const int kept[2] = {4, 0};
    ep_route_load_add(&g_ctx, g_load, kept, 2);
    assert_int_equal(g_load[0], 11);
    assert_int_equal(g_load[1], 11);
    assert_int_equal(g_load[3], 1);
    // the same placement with pairs sent home only: replicas unused
    g_ctx.home_only = true;
    set_load(p, 10, 11, 3, 0);
    assert_int_equal(ep_route_load_rank(&g_ctx, g_load, 4), 1);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 8, 12);
    // the home placement again: home ranks
    g_ctx = home;
    set_load(p, 10, 11, 3, 0);
    assert_int_equal(ep_route_load_rank(&g_ctx, g_load, 4), 1);
    EXPECT(&b, run_select(p, s, &b), 0, 1, 8, 12);
    ep_placement_free(&rp);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

static void test_router_running_load(void **state)
{
    ep_model_cfg m;
    hand_cfg(&m);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_LASER);
    ep_policy *p = make(&rc);
    enum { T = 3 };
    float s[E], logits[T * E];
    flat_scores(s);
    for (int t = 0; t < T; t++)
        for (int e = 0; e < E; e++)
            logits[t * E + e] = logf(s[e]); // softmax gives s back
    ep_router *r = NULL;
    assert_int_equal(ep_router_init(&m, T, &r), EP_OK);
    ep_routes out;
    ep_routes_init(&out, T, ep_policy_max_k(p), KB);
    for (int call = 0; call < 2; call++) { // the second call must start from zero again
        assert_int_equal(ep_router_route_logits(r, p, &g_ctx, 1, logits, T, &out), EP_OK);
        // token 0 sees no load: the baseline {0,1,2,3}, rank 0 now 4;
        // token 1: keep 0, then ranks 1-3 (load 0): 4, 8, 12 -> r0 5, others 1;
        // token 2: keep 0, load 1 on r1-r3 beats r0's 5: 4, 8, 12 again
        const int want[T][KB] = {{0, 1, 2, 3}, {0, 4, 8, 12}, {0, 4, 8, 12}};
        for (int t = 0; t < T; t++) {
            assert_int_equal(out.offsets[t + 1] - out.offsets[t], KB);
            for (int j = 0; j < KB; j++)
                assert_int_equal(out.expert[out.offsets[t] + j], want[t][j]);
            for (int j = 0; j < KB; j++)
                assert_int_equal(out.base_expert[t * KB + j], j);
        }
        const int64_t *load = ep_router_rank_load(r);
        assert_int_equal(load[0], 6);
        assert_int_equal(load[1], 2);
        assert_int_equal(load[2], 2);
        assert_int_equal(load[3], 2);
    }
    ep_routes_free(&out);
    ep_router_free(r);
    ep_policy_free(p);
    ep_routing_cfg_free(&rc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_names),
        cmocka_unit_test(test_peaked_keeps_inner),
        cmocka_unit_test(test_flat_widens_to_least_loaded),
        cmocka_unit_test(test_inner_choice_wins_ties),
        cmocka_unit_test(test_after_ban_keeps_k),
        cmocka_unit_test(test_replicas),
        cmocka_unit_test(test_router_running_load),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
