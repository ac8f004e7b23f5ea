// Replica choice per (token, expert) pair on hand cases: single-slot experts
// go home, a replicated expert goes to a rank the token already visits (its
// own rank included), else to the least-loaded rank so far (ties: the first
// rank after the sender); every choice holds the expert; loads add up.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "cluster/placement.h"

// 4 ranks, 6 experts; expert 0 on ranks 1, 2, 3; expert 1 on ranks 0, 2.
static const int pe[9] = {1, 4, 0, 5, 0, 1, 2, 0, 3};
static const int pr[9] = {0, 0, 1, 1, 2, 2, 3, 3, 3};

static void make_routes(ep_routes *r, const int *ex, const int *k, int T)
{
    ep_routes_init(r, T, 4, 2);
    r->n_tokens = T;
    r->offsets[0] = 0;
    for (int i = 0; i < T; i++) {
        r->offsets[i + 1] = r->offsets[i] + k[i];
        for (int j = r->offsets[i]; j < r->offsets[i + 1]; j++)
            r->weight[j] = 1.0f / k[i];
    }
    memcpy(r->expert, ex, (size_t)r->offsets[T] * sizeof(int));
}

static void test_choice(void **state)
{
    ep_placement p;
    assert_int_equal(ep_placement_from_slots(&p, EP_PLACE_EPLB, 6, 4, 9, pe, pr), EP_OK);
    assert_int_equal(p.rank_of[0], 1);
    assert_int_equal(p.rank_of[1], 0);
    // Sender rank 0. Token 0: {5, 0}: 5 -> rank 1 (visited), so 0 -> rank 1.
    // Token 1: {2, 0}: 2 -> rank 3, so 0 -> rank 3.
    // Token 2: {0}: nothing visited but rank 0 (holds no 0): loads r1 2, r2 0,
    //   r3 2 -> rank 2.
    // Token 3: {1, 0}: 1 -> own rank 0; 0: loads r1 2, r2 1, r3 2 -> rank 2.
    // Token 4: {4, 0}: 4 -> rank 0; 0: loads r1 2, r2 2, r3 2 -> tie -> rank 1
    //   (first after sender 0).
    const int ex[] = {5, 0, 2, 0, 0, 1, 0, 4, 0};
    const int k[] = {2, 2, 1, 2, 2};
    ep_routes r;
    make_routes(&r, ex, k, 5);
    int64_t load[4] = {0};
    int visit[4], pair_rank[9];
    ep_placement_choose(&p, &r, 0, load, visit, pair_rank);
    const int want[9] = {1, 1, 3, 3, 2, 0, 2, 0, 1};
    for (int j = 0; j < 9; j++) {
        assert_int_equal(pair_rank[j], want[j]);
        assert_true(ep_placement_holds(&p, pair_rank[j], ex[j]));
    }
    assert_int_equal(load[0], 2);
    assert_int_equal(load[1], 3);
    assert_int_equal(load[2], 2);
    assert_int_equal(load[3], 2);
    int64_t again[4] = {0};
    ep_placement_rank_load(&p, &r, pair_rank, again);
    assert_memory_equal(load, again, sizeof load);

    // Sender rank 2 holds 0 and 1: both stay home (no bytes).
    memset(load, 0, sizeof load);
    const int ex2[] = {0, 1};
    const int k2[] = {2};
    ep_routes r2;
    make_routes(&r2, ex2, k2, 1);
    ep_placement_choose(&p, &r2, 2, load, visit, pair_rank);
    assert_int_equal(pair_rank[0], 2);
    assert_int_equal(pair_rank[1], 2);
    // Sender rank 3 with rank 3 loaded: the tie rule starts after the sender.
    int64_t l3[4] = {0, 5, 5, 0};
    const int ex3[] = {1};
    const int k3[] = {1};
    ep_routes r3;
    make_routes(&r3, ex3, k3, 1);
    ep_placement_choose(&p, &r3, 3, l3, visit, pair_rank);
    assert_int_equal(pair_rank[0], 0);
    ep_routes_free(&r);
    ep_routes_free(&r2);
    ep_routes_free(&r3);
    ep_placement_free(&p);
}

// Many senders spreading a hot replicated expert: the choice balances it.
static void test_balances_hot_expert(void **state)
{
    // Expert 0 (hot) on all 4 ranks; experts 1..4 one per rank.
    const int pe2[8] = {0, 1, 0, 2, 0, 3, 0, 4}, pr2[8] = {0, 0, 1, 1, 2, 2, 3, 3};
    ep_placement p;
    assert_int_equal(ep_placement_from_slots(&p, EP_PLACE_EPLB, 5, 4, 8, pe2, pr2), EP_OK);
    enum { T = 13 };
    int ex[T], k[T];
    for (int i = 0; i < T; i++) {
        ex[i] = 0;
        k[i] = 1;
    }
    ep_routes r;
    make_routes(&r, ex, k, T);
    int64_t total[4] = {0};
    int visit[4], pair_rank[T];
    for (int sender = 0; sender < 4; sender++) {
        int64_t load[4] = {0};
        ep_placement_choose(&p, &r, sender, load, visit, pair_rank);
        // The sender's own rank holds expert 0: every pair stays local.
        for (int j = 0; j < T; j++)
            assert_int_equal(pair_rank[j], sender);
        for (int w = 0; w < 4; w++)
            total[w] += load[w];
    }
    for (int w = 0; w < 4; w++)
        assert_int_equal(total[w], T);
    ep_routes_free(&r);
    ep_placement_free(&p);

    // Without a local copy the pairs spread evenly: expert 0 on ranks 1..3 only.
    const int pe3[4] = {0, 0, 0, 1}, pr3[4] = {1, 2, 3, 0};
    assert_int_equal(ep_placement_from_slots(&p, EP_PLACE_EPLB, 2, 4, 4, pe3, pr3), EP_OK);
    make_routes(&r, ex, k, T);
    int64_t load[4] = {0};
    ep_placement_choose(&p, &r, 0, load, visit, pair_rank);
    assert_int_equal(load[0], 0);
    assert_int_equal(load[1], 5); // 13 = 5 + 4 + 4, the extra to the first after the sender
    assert_int_equal(load[2], 4);
    assert_int_equal(load[3], 4);
    ep_routes_free(&r);
    ep_placement_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_choice),
        cmocka_unit_test(test_balances_hot_expert),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
