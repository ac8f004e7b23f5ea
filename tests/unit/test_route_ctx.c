// The routing context: comm-aware Ban under EPLB with replicas, routed with
// the layer's own placement (what dispatch uses), saves at least as many
// bytes (dispatch + combine against the static top-k_base counterfactual,
// what every run reports) as under contiguous placement on the same tokens;
// it moves fewer bytes than plain Ban on that placement, and fewer than when
// it routes against the contiguous placement while the pairs travel on the
// EPLB one (what callers did before the context existed). One process plays
// every rank; bytes come from ep_dispatch_plan after replica choice, as in
// the MoE layer.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/dispatch_plan.h"
#include "router/policy.h"
#include "router_fixture.h"

enum { NE = 64, KB = 8, W = 4, T = 192, H = 64, R = 16 };

static const int node_of[W] = {0, 0, 1, 1};

static unsigned rnd(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

// Gate logits with hot experts: a fixed per-expert bias plus noise, per rank.
static void make_logits(float *lg, unsigned seed)
{
    unsigned s = seed;
    float bias[NE];
    for (int e = 0; e < NE; e++)
        bias[e] = e % 9 == 0 ? 2.0f : e % 5 == 0 ? 1.0f : 0.0f;
    for (int i = 0; i < W * T * NE; i++)
        lg[i] = bias[i % NE] + 2.0f * ((float)(rnd(&s) & 0xffff) / 65536.0f);
}

// Dispatch + combine bytes of every rank's tokens: routed with `route_on`,
// sent on `send_on` (replica choice when it has replicas). *saved: the
// top-k_base counterfactual's bytes minus those.
static int64_t bytes_of(ep_router *rt, const ep_policy *p, const float *lg,
                        const ep_placement *route_on, const ep_placement *send_on, int64_t *saved)
{
    ep_routes r;
    ep_routes_init(&r, T, ep_policy_max_k(p), KB);
    int64_t load[W] = {0}, total = 0, base = 0;
    int visit[W], *prk = malloc(sizeof(int) * T * ep_policy_max_k(p));
    for (int rank = 0; rank < W; rank++) {
        const ep_route_ctx ctx = {.place = route_on, .node_of = node_of, .rank = rank};
        assert_int_equal(ep_router_route_logits(rt, p, &ctx, 1, lg + (size_t)rank * T * NE, T, &r),
                         EP_OK);
        memset(load, 0, sizeof load);
        ep_placement_choose(send_on, &r, rank, load, visit, prk);
        ep_dispatch_plan pl;
        assert_int_equal(ep_dispatch_plan_init(&pl, W, rank, node_of, H, EP_DTYPE_BF16), EP_OK);
        ep_dispatch_plan_build(&pl, &r, send_on, prk);
        total += pl.stats.planned_bytes;
        base += pl.stats.base_dispatch_bytes + pl.stats.base_combine_bytes;
        ep_dispatch_plan_free(&pl);
    }
    free(prk);
    ep_routes_free(&r);
    *saved = base - total;
    return total;
}

static void test_locality_under_eplb(void **state)
{
    (void)state;
    ep_model_cfg m;
    fixture_qwen_cfg(&m, 2, NE, KB, H);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BAN);
    ep_policy *ban = NULL, *local = NULL;
    assert_int_equal(ep_policy_create_cfg(&rc, &ban), EP_OK);
    rc.ban.locality = EP_BAN_LOC_RANK;
    assert_int_equal(ep_policy_create_cfg(&rc, &local), EP_OK);
    ep_router *rt = NULL;
    assert_int_equal(ep_router_init(&m, T, &rt), EP_OK);

    float *lg = malloc(sizeof(float) * W * T * NE);
    make_logits(lg, 11);
    // EPLB from the baseline's load on these tokens, with R replicas.
    ep_policy *base = NULL;
    assert_int_equal(ep_policy_create(&m, "baseline", &base), EP_OK);
    ep_routes r;
    ep_routes_init(&r, T, KB, KB);
    double load[NE] = {0};
    for (int rank = 0; rank < W; rank++) {
        assert_int_equal(
            ep_router_route_logits(rt, base, NULL, 1, lg + (size_t)rank * T * NE, T, &r), EP_OK);
        for (int j = 0; j < ep_routes_nnz(&r); j++)
            load[r.expert[j]] += 1;
    }
    ep_placement contig, eplb;
    assert_int_equal(ep_placement_init(&contig, EP_PLACE_CONTIGUOUS, NE, W), EP_OK);
    assert_int_equal(ep_placement_init_eplb(&eplb, load, NE, R, 1, 2, W), EP_OK);
    assert_true(eplb.n_phy == NE + R);

    int64_t sv[5];
    const int64_t c_ban = bytes_of(rt, ban, lg, &contig, &contig, &sv[0]);
    const int64_t c_loc = bytes_of(rt, local, lg, &contig, &contig, &sv[1]);
    const int64_t e_ban = bytes_of(rt, ban, lg, &eplb, &eplb, &sv[2]);
    const int64_t e_loc = bytes_of(rt, local, lg, &eplb, &eplb, &sv[3]);
    const int64_t e_old = bytes_of(rt, local, lg, &contig, &eplb, &sv[4]); // blind to EPLB
    print_message("bytes moved (saved vs top-k_base): contiguous: ban %lld (%lld), comm-aware "
                  "%lld (%lld); eplb+%d: ban %lld (%lld), comm-aware %lld (%lld), comm-aware "
                  "routed on contiguous %lld (%lld)\n",
                  (long long)c_ban, (long long)sv[0], (long long)c_loc, (long long)sv[1], R,
                  (long long)e_ban, (long long)sv[2], (long long)e_loc, (long long)sv[3],
                  (long long)e_old, (long long)sv[4]);
    assert_true(c_loc < c_ban && e_loc < e_ban); // comm-aware Ban moves less on either
    assert_true(sv[3] >= sv[1]);                 // EPLB + replicas saves at least as much
    assert_true(e_loc < e_old);                  // seeing the real placement is what saves
    ep_placement_free(&contig);
    ep_placement_free(&eplb);
    ep_routes_free(&r);
    free(lg);
    ep_router_free(rt);
    ep_policy_free(base);
    ep_policy_free(ban);
    ep_policy_free(local);
    ep_routing_cfg_free(&rc);
}

// A context that does not fit the model is refused with what was expected.
static void test_bad_ctx(void **state)
{
    (void)state;
    ep_model_cfg m;
    fixture_qwen_cfg(&m, 2, NE, KB, H);
    ep_policy *p = NULL;
    assert_int_equal(ep_policy_create(&m, "ban", &p), EP_OK);
    ep_router *rt = NULL;
    assert_int_equal(ep_router_init(&m, 1, &rt), EP_OK);
    ep_routes r;
    ep_routes_init(&r, 1, KB, KB);
    float lg[NE] = {0};
    ep_placement small;
    assert_int_equal(ep_placement_init(&small, EP_PLACE_CONTIGUOUS, NE / 2, W), EP_OK);
    ep_route_ctx ctx = {.place = &small, .rank = 0};
    assert_int_equal(ep_router_route_logits(rt, p, &ctx, 1, lg, 1, &r), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "placement of 32 experts"));
    ep_placement_free(&small);
    ep_placement full;
    assert_int_equal(ep_placement_init(&full, EP_PLACE_CONTIGUOUS, NE, W), EP_OK);
    ctx = (ep_route_ctx){.place = &full, .rank = W};
    assert_int_equal(ep_router_route_logits(rt, p, &ctx, 1, lg, 1, &r), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "rank 4"));
    ep_placement_free(&full);
    ep_routes_free(&r);
    ep_router_free(rt);
    ep_policy_free(p);
}

// ep_route_sends_add by hand: 4 ranks, nodes {0, 0, 1, 1}.
static void test_route_sends(void **state)
{
    int rank_of[9] = {0};
    rank_of[5] = 0, rank_of[6] = 1, rank_of[7] = 1, rank_of[8] = 3;
    const int ids[4] = {5, 6, 7, 8};
    ep_route_sends s = {0};
    // from rank 0: ranks 1 and 3 (3 on the other node), one other node
    ep_route_sends_add(ids, 4, rank_of, NULL, 0, node_of, &s, 0);
    assert_true(s.ranks[0] == 2 && s.inter_ranks[0] == 1 && s.nodes[0] == 1);
    // from rank 3: ranks 0 and 1, both on node 0
    ep_route_sends_add(ids, 4, rank_of, NULL, 3, node_of, &s, 1);
    assert_true(s.ranks[1] == 2 && s.inter_ranks[1] == 2 && s.nodes[1] == 1);
    // chosen pair ranks replace the home ranks: 2, 1, 0, 3 from rank 0
    memset(&s, 0, sizeof s);
    const int pr[4] = {2, 1, 0, 3};
    ep_route_sends_add(ids, 4, rank_of, pr, 0, node_of, &s, 0);
    assert_true(s.ranks[0] == 3 && s.inter_ranks[0] == 2 && s.nodes[0] == 1);
    // no node map: one node, nothing crosses
    ep_route_sends_add(ids, 4, rank_of, NULL, 0, NULL, &s, 1);
    assert_true(s.ranks[1] == 2 && s.inter_ranks[1] == 0 && s.nodes[1] == 0);
    assert_int_equal(s.token_layers, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_locality_under_eplb),
        cmocka_unit_test(test_bad_ctx),
        cmocka_unit_test(test_route_sends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
