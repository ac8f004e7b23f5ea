// Expert placement: every expert exactly once, slots consistent with the
// per-rank lists, balanced blocks, for shapes that do not divide (64 on 3,
// 7 on 4) and more ranks than experts (2 on 4), both kinds; parse and errors.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "cluster/placement.h"

static const int shapes[][2] = {{64, 3}, {7, 4}, {2, 4}, {1, 1}, {13, 5}, {5, 11}, {16, 4}};

static void check_invariants(const ep_placement *p, int E, int W, ep_place_kind kind)
{
    assert_int_equal(p->n_experts, E);
    assert_int_equal(p->world_size, W);
    assert_int_equal(p->kind, kind);
    assert_int_equal(p->local_off[0], 0);
    assert_int_equal(p->local_off[W], E);
    int seen[64] = {0};
    int min_n = E, max_n = 0;
    for (int r = 0; r < W; r++) {
        int n = ep_placement_n_local(p, r);
        assert_true(n >= 0);
        min_n = n < min_n ? n : min_n;
        max_n = n > max_n ? n : max_n;
        for (int s = 0; s < n; s++) {
            int e = p->local_expert[p->local_off[r] + s];
            assert_true(e >= 0 && e < E);
            seen[e]++;
            assert_int_equal(p->rank_of[e], r);
            assert_int_equal(p->local_slot[e], s);
            // Local lists are ascending: the order experts/ loads them in.
            if (s > 0) assert_true(p->local_expert[p->local_off[r] + s - 1] < e);
        }
    }
    for (int e = 0; e < E; e++)
        assert_int_equal(seen[e], 1);
    assert_true(max_n - min_n <= 1);
    if (kind == EP_PLACE_CONTIGUOUS) {
        for (int e = 1; e < E; e++) {
            assert_true(p->rank_of[e] >= p->rank_of[e - 1]);
            if (p->rank_of[e] == p->rank_of[e - 1])
                assert_int_equal(p->local_slot[e], p->local_slot[e - 1] + 1);
        }
    } else {
        for (int e = 0; e < E; e++) {
            assert_int_equal(p->rank_of[e], e % W);
            assert_int_equal(p->local_slot[e], e / W);
        }
    }
}

static void test_invariants(void **state)
{
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        for (int k = 0; k < 2; k++) {
            ep_place_kind kind = k ? EP_PLACE_ROUND_ROBIN : EP_PLACE_CONTIGUOUS;
            ep_placement p;
            assert_int_equal(ep_placement_init(&p, kind, shapes[i][0], shapes[i][1]), EP_OK);
            check_invariants(&p, shapes[i][0], shapes[i][1], kind);
            ep_placement_free(&p);
            assert_null(p.rank_of);
        }
    }
}

// Hand-computed blocks: floor(r * E / W).
static void test_contiguous_blocks(void **state)
{
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 7, 4), EP_OK);
    const int off74[] = {0, 1, 3, 5, 7};
    for (int r = 0; r <= 4; r++)
        assert_int_equal(p.local_off[r], off74[r]);
    const int rank74[] = {0, 1, 1, 2, 2, 3, 3};
    for (int e = 0; e < 7; e++)
        assert_int_equal(p.rank_of[e], rank74[e]);
    ep_placement_free(&p);

    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 64, 3), EP_OK);
    assert_int_equal(ep_placement_n_local(&p, 0), 21);
    assert_int_equal(ep_placement_n_local(&p, 1), 21);
    assert_int_equal(ep_placement_n_local(&p, 2), 22);
    assert_int_equal(p.rank_of[20], 0);
    assert_int_equal(p.rank_of[21], 1);
    assert_int_equal(p.rank_of[42], 2);
    assert_int_equal(p.local_slot[63], 21);
    ep_placement_free(&p);

    // More ranks than experts: ranks 0 and 2 hold none.
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 2, 4), EP_OK);
    assert_int_equal(ep_placement_n_local(&p, 0), 0);
    assert_int_equal(ep_placement_n_local(&p, 1), 1);
    assert_int_equal(ep_placement_n_local(&p, 2), 0);
    assert_int_equal(ep_placement_n_local(&p, 3), 1);
    assert_int_equal(p.rank_of[0], 1);
    assert_int_equal(p.rank_of[1], 3);
    ep_placement_free(&p);
}

static void test_round_robin(void **state)
{
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, 7, 4), EP_OK);
    const int n74[] = {2, 2, 2, 1};
    for (int r = 0; r < 4; r++)
        assert_int_equal(ep_placement_n_local(&p, r), n74[r]);
    assert_int_equal(p.local_expert[p.local_off[1] + 1], 5);
    assert_int_equal(p.local_expert[p.local_off[3]], 3);
    ep_placement_free(&p);

    assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, 2, 4), EP_OK);
    const int n24[] = {1, 1, 0, 0};
    for (int r = 0; r < 4; r++)
        assert_int_equal(ep_placement_n_local(&p, r), n24[r]);
    ep_placement_free(&p);
}

static void test_errors_and_names(void **state)
{
    ep_placement p;
    ep_clear_error();
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 0, 4), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "n_experts"));
    assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, 8, 0), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "world_size"));
    assert_int_equal(ep_placement_init(&p, (ep_place_kind)7, 8, 2), EP_ERR_ARG);
    ep_placement_free(&p); // zeroed by the failed init: a no-op
    ep_placement_free(NULL);

    ep_place_kind k = EP_PLACE_ROUND_ROBIN;
    assert_int_equal(ep_place_kind_parse("contiguous", &k), EP_OK);
    assert_int_equal(k, EP_PLACE_CONTIGUOUS);
    assert_int_equal(ep_place_kind_parse("round_robin", &k), EP_OK);
    assert_int_equal(k, EP_PLACE_ROUND_ROBIN);
    assert_int_not_equal(ep_place_kind_parse("striped", &k), EP_OK);
    assert_non_null(strstr(ep_last_error(), "striped"));
    assert_string_equal(ep_place_kind_name(EP_PLACE_CONTIGUOUS), "contiguous");
    assert_string_equal(ep_place_kind_name(EP_PLACE_ROUND_ROBIN), "round_robin");
    assert_int_equal(ep_place_kind_parse(ep_place_kind_name(EP_PLACE_ROUND_ROBIN), &k), EP_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invariants),
        cmocka_unit_test(test_contiguous_blocks),
        cmocka_unit_test(test_round_robin),
        cmocka_unit_test(test_errors_and_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
