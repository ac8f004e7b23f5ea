// EPLB placement: balanced packing on hand cases (even and uneven packs),
// replication by load / count, the hierarchical path on the example of
// DeepSeek's EPLB README (12 experts, 4 groups, 2 nodes, 8 ranks, 16 slots;
// its published phy2log, reproduced by our own code), the global fallback,
// and the placement built from the slots (phy <-> log, per-rank lists).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/placement.h"

static void test_packing_even(void **state)
{
    // 6 items into 3 packs of 2: 9 -> p0, 8 -> p1, 7 -> p2, 3 -> p2 (7), 2 -> p1 (8), 1 -> p0.
    const double w[6] = {1, 9, 3, 8, 2, 7};
    int pack[6], rip[6];
    ep_eplb_balanced_packing(w, 6, 3, pack, rip);
    const int want_pack[6] = {0, 0, 2, 1, 1, 2}, want_rip[6] = {1, 0, 1, 0, 1, 0};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(pack[i], want_pack[i]);
        assert_int_equal(rip[i], want_rip[i]);
    }
}

static void test_packing_uneven(void **state)
{
    // 7 items into 3 packs: capacities 3, 2, 2. Loads 10 10 10 1 1 1 1:
    // the three 10s spread, then the 1s fill the lightest packs with room.
    const double w[7] = {1, 10, 1, 10, 1, 10, 1};
    int pack[7], rip[7], n[3] = {0};
    double sum[3] = {0};
    ep_eplb_balanced_packing(w, 7, 3, pack, rip);
    for (int i = 0; i < 7; i++) {
        n[pack[i]]++;
        sum[pack[i]] += w[i];
    }
    assert_int_equal(n[0], 3);
    assert_int_equal(n[1], 2);
    assert_int_equal(n[2], 2);
    assert_true(sum[0] == 12 && sum[1] == 11 && sum[2] == 11);
    // One item per pack keeps the order.
    ep_eplb_balanced_packing(w, 3, 3, pack, rip);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pack[i], i);
}

// The example in DeepSeek's EPLB README.
static const double readme_w[2][12] = {{90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86},
                                       {20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27}};
static const int readme_phy2log[2][16] = {{5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1},
                                          {7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1}};

static void test_readme_example(void **state)
{
    for (int l = 0; l < 2; l++) {
        int pe[16], pr[16], cnt[12], rep[16];
        assert_int_equal(ep_eplb_rebalance(readme_w[l], 12, 4, 4, 2, 8, pe, pr, cnt, rep), EP_OK);
        for (int s = 0; s < 16; s++) {
            assert_int_equal(pe[s], readme_phy2log[l][s]);
            assert_int_equal(pr[s], s / 2); // 2 slots per rank, ranks in slot order
        }
        // Replica counts and indices agree with phy -> log.
        int seen[12] = {0};
        for (int s = 0; s < 16; s++) {
            assert_true(rep[s] < cnt[pe[s]]);
            seen[pe[s]]++;
        }
        for (int e = 0; e < 12; e++)
            assert_int_equal(seen[e], cnt[e]);
        // Hierarchical: every replica stays on the node of its group (4 ranks per node).
        for (int s = 0; s < 16; s++)
            for (int t = 0; t < 16; t++)
                if (pe[s] / 3 == pe[t] / 3) assert_int_equal(pr[s] / 4, pr[t] / 4);
    }
}

static void test_replication_global(void **state)
{
    // 5 experts, 3 redundant, 4 ranks, no groups: the hot expert 2 (load 40)
    // gets replicas until 40/c falls below the next, then expert 0 (load 12).
    // Greedy: 40/1 > 12 -> 2; 40/2 = 20 > 12 -> 2; 40/3 = 13.3 > 12 -> 2: count 4.
    const double w[5] = {12, 5, 40, 8, 3};
    int pe[8], pr[8], cnt[5], rep[8];
    assert_int_equal(ep_eplb_rebalance(w, 5, 3, 1, 1, 4, pe, pr, cnt, rep), EP_OK);
    const int want_cnt[5] = {1, 1, 4, 1, 1};
    for (int e = 0; e < 5; e++)
        assert_int_equal(cnt[e], want_cnt[e]);
    // Slots of load/count 12, 10, 10, 10, 10, 8, 5, 3 into 4 ranks of 2:
    // 12 -> r0, 10 -> r1, r2, r3, 10 -> r1 (20, full), 8 -> r2 (18),
    // 5 -> r3 (15), 3 -> r0 (15). Max 20 (one 10 per rank would give 22).
    double rl[4] = {0};
    int n_on[4] = {0};
    for (int s = 0; s < 8; s++) {
        rl[pr[s]] += w[pe[s]] / cnt[pe[s]];
        n_on[pr[s]]++;
    }
    double mx = 0;
    for (int r = 0; r < 4; r++) {
        assert_int_equal(n_on[r], 2);
        if (rl[r] > mx) mx = rl[r];
    }
    assert_true(mx == 20.0);
    // The placement predicts the same: max 20 over mean 68 / 4 = 17.
    ep_placement p;
    assert_int_equal(ep_placement_from_slots(&p, EP_PLACE_EPLB, 5, 4, 8, pe, pr), EP_OK);
    assert_true(fabs(ep_placement_predict_imbalance(&p, w) - 20.0 / 17.0) < 1e-12);
    ep_placement_free(&p);
    // Contiguous, 5 experts on 4 ranks: {0}, {1}, {2}, {3, 4}; expert 2's
    // load of 40 sits on one rank: 40 / 17.
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 5, 4), EP_OK);
    assert_true(fabs(ep_placement_predict_imbalance(&p, w) - 40.0 / 17.0) < 1e-12);
    ep_placement_free(&p);
    // Groups that do not divide the nodes fall back to the global result.
    int pe2[8], pr2[8];
    assert_int_equal(ep_eplb_rebalance(w, 5, 3, 5, 2, 4, pe2, pr2, NULL, NULL), EP_OK);
    assert_memory_equal(pe, pe2, sizeof pe);
    assert_memory_equal(pr, pr2, sizeof pr);
}

static void test_placement_from_eplb(void **state)
{
    ep_placement p;
    assert_int_equal(ep_placement_init_eplb(&p, readme_w[0], 12, 4, 4, 2, 8), EP_OK);
    assert_int_equal(p.n_phy, 16);
    assert_int_equal(p.kind, EP_PLACE_EPLB);
    // log -> phy is the inverse of phy -> log.
    for (int e = 0; e < 12; e++) {
        assert_true(ep_placement_n_replicas(&p, e) >= 1);
        for (int q = p.replica_off[e]; q < p.replica_off[e + 1]; q++)
            assert_int_equal(p.phy_expert[p.replica_phy[q]], e);
        assert_true(ep_placement_holds(&p, p.rank_of[e], e));
        assert_int_equal(p.local_expert[p.local_off[p.rank_of[e]] + p.local_slot[e]], e);
    }
    assert_int_equal(ep_placement_n_replicas(&p, 5), 2);  // 165 is hot
    assert_int_equal(ep_placement_n_replicas(&p, 10), 2); // 183 is the hottest
    // Per-rank lists are distinct experts and match the slots.
    for (int r = 0; r < 8; r++)
        for (int a = p.local_off[r]; a < p.local_off[r + 1]; a++) {
            assert_true(ep_placement_holds(&p, r, p.local_expert[a]));
            for (int b = p.local_off[r]; b < a; b++)
                assert_int_not_equal(p.local_expert[a], p.local_expert[b]);
        }
    ep_placement q;
    ep_placement_copy(&q, &p);
    ep_placement_free(&p);
    assert_int_equal(q.phy_expert[0], 5);
    ep_placement_free(&q);
    ep_placement_free(NULL);
}

static void test_two_slots_one_rank(void **state)
{
    // Expert 0 twice on rank 1: one local copy, two slots.
    const int pe[4] = {1, 0, 0, 2}, pr[4] = {0, 1, 1, 0};
    ep_placement p;
    assert_int_equal(ep_placement_from_slots(&p, EP_PLACE_EPLB, 3, 2, 4, pe, pr), EP_OK);
    assert_int_equal(ep_placement_n_local(&p, 0), 2);
    assert_int_equal(ep_placement_n_local(&p, 1), 1);
    assert_int_equal(ep_placement_n_replicas(&p, 0), 2);
    assert_int_equal(p.rank_of[0], 1);
    assert_int_equal(p.rank_of[2], 0);
    assert_int_equal(p.local_slot[2], 1);
    ep_placement_free(&p);
}

static void test_errors(void **state)
{
    ep_placement p;
    const int pe[3] = {0, 0, 2}, pr[3] = {0, 1, 0};
    assert_int_equal(ep_placement_from_slots(&p, EP_PLACE_EPLB, 3, 2, 3, pe, pr), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "expert 1 has no slot"));
    const int bad_r[3] = {0, 2, 0}, pe2[3] = {0, 1, 2};
    assert_int_equal(ep_placement_from_slots(&p, EP_PLACE_EPLB, 3, 2, 3, pe2, bad_r), EP_ERR_ARG);
    const double neg[2] = {1, -1};
    assert_int_equal(ep_placement_init_eplb(&p, neg, 2, 0, 1, 1, 2), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "expert 1"));
    ep_place_kind k;
    assert_int_equal(ep_place_kind_parse("eplb", &k), EP_OK);
    assert_int_equal(k, EP_PLACE_EPLB);
    assert_string_equal(ep_place_kind_name(k), "eplb");
}

// The expert-load file: what is written reads back; every malformed file
// is refused naming the file and what is wrong, and nothing is returned.
static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void load_fails(const char *path, const char *text, const bool *is_moe, ep_status want,
                       const char *needle)
{
    put(path, text);
    double *out = (double *)1;
    assert_int_equal(ep_expert_load_read(path, 3, 2, is_moe, &out), want);
    assert_null(out);
    assert_non_null(strstr(ep_last_error(), path));
    if (!strstr(ep_last_error(), needle)) fail_msg("'%s' lacks '%s'", ep_last_error(), needle);
}

static void test_expert_load_file(void **state)
{
    char path[] = "/tmp/ep_test_loadXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    const int64_t load[6] = {0, 0, 7, 1, 123456789012LL, 3};
    assert_int_equal(ep_expert_load_write(path, 3, 2, load), EP_OK);
    const bool is_moe[3] = {false, true, true};
    double *got = NULL;
    assert_int_equal(ep_expert_load_read(path, 3, 2, is_moe, &got), EP_OK);
    for (int i = 0; i < 6; i++)
        assert_true(got[i] == (double)load[i]);
    free(got);
    // SGLang's dumps hold counts as numbers of either kind.
    put(path, "{\"logical_count\": [[0, 0], [1.5, 2], [3, 4.0]]}");
    assert_int_equal(ep_expert_load_read(path, 3, 2, is_moe, &got), EP_OK);
    assert_true(got[2] == 1.5 && got[5] == 4.0);
    free(got);
    load_fails(path, "{\"logical_count\": [[0, 0], [1, 2]]}", NULL, EP_ERR_CONFIG, "3 rows");
    load_fails(path, "{\"logical_count\": [[0, 0], [1, 2], [3]]}", NULL, EP_ERR_CONFIG, "row 2");
    load_fails(path, "{\"logical_count\": [[0, 0], [1, -2], [3, 4]]}", NULL, EP_ERR_CONFIG,
               "[1][1]");
    load_fails(path, "{\"logical_count\": [[0, 0], [1, \"2\"], [3, 4]]}", NULL, EP_ERR_CONFIG,
               "[1][1]");
    load_fails(path, "{\"logical_count\": [[5, 0], [1, 2], [3, 4]]}", is_moe, EP_ERR_CONFIG,
               "dense");
    load_fails(path, "{\"logical_count\": [[0, 0], [1, 2], [3, 4]], \"physical_count\": 1}", NULL,
               EP_ERR_CONFIG, "physical_count");
    load_fails(path, "[[0, 0], [1, 2], [3, 4]]", NULL, EP_ERR_CONFIG, "logical_count");
    load_fails(path, "{\"logical_count\": [[0, 0]", NULL, EP_ERR_FORMAT, "line");
    unlink(path);
    double *out = (double *)1;
    assert_int_equal(ep_expert_load_read(path, 3, 2, NULL, &out), EP_ERR_IO);
    assert_null(out);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packing_even),
        cmocka_unit_test(test_packing_uneven),
        cmocka_unit_test(test_readme_example),
        cmocka_unit_test(test_replication_global),
        cmocka_unit_test(test_placement_from_eplb),
        cmocka_unit_test(test_two_slots_one_rank),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_expert_load_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
