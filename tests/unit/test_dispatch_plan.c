// ep_dispatch_plan against hand-computed groups and offsets, and on random
// routes (odd world sizes, replicas through pair_rank, empty rows of the
// counterfactual) against an independent per-pair recount written here:
// every pair in exactly one group, one group per (token, rank) in the order
// of the rank's first pair, records packed back to back per destination,
// bytes as the wire format's record sizes.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "comm/dispatch_plan.h"

// 8 experts contiguous on 4 ranks (rank r holds 2r, 2r + 1); nodes {0,1} {2,3}.
static const int two_nodes[4] = {0, 0, 1, 1};

static void fill_routes(ep_routes *r, int T, const int *k, const int *experts, const int *base,
                        int k_base)
{
    int nz = 0;
    r->n_tokens = T;
    for (int i = 0; i < T; i++) {
        r->offsets[i] = nz;
        for (int j = 0; j < k[i]; j++, nz++) {
            r->expert[nz] = experts[nz];
            r->weight[nz] = 1.0f / (float)k[i];
        }
        for (int j = 0; j < k_base; j++)
            r->base_expert[i * k_base + j] = base[i * k_base + j];
    }
    r->offsets[T] = nz;
}

static void test_hand_case(void **state)
{
    (void)state;
    ep_routes r;
    ep_routes_init(&r, 3, 4, 2);
    // t0 {0,1}: own rank 0. t1 {2,4,3}: rank 1 (pairs 2,4 -> idx 2,4), rank 2.
    // t2 {7,0,5}: rank 3, rank 0, rank 2.
    const int k[3] = {2, 3, 3}, ex[8] = {0, 1, 2, 4, 3, 7, 0, 5}, base[6] = {0, 1, 2, 3, 7, 6};
    fill_routes(&r, 3, k, ex, base, 2);
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 8, 4), EP_OK);
    ep_dispatch_plan pl;
    assert_int_equal(ep_dispatch_plan_init(&pl, 4, 0, two_nodes, 5, EP_DTYPE_F32), EP_OK);
    ep_dispatch_plan_build(&pl, &r, &p, NULL);

    assert_int_equal(pl.n_grp, 6);
    const int want_tok[6] = {0, 1, 1, 2, 2, 2}, want_dest[6] = {0, 1, 2, 3, 0, 2};
    const int want_off[7] = {0, 2, 4, 5, 6, 7, 8}, want_pair[8] = {0, 1, 2, 4, 3, 5, 6, 7};
    for (int g = 0; g < 6; g++) {
        assert_int_equal(pl.grp_tok[g], want_tok[g]);
        assert_int_equal(pl.grp_dest[g], want_dest[g]);
    }
    for (int g = 0; g < 7; g++)
        assert_int_equal(pl.grp_off[g], want_off[g]);
    for (int j = 0; j < 8; j++)
        assert_int_equal(pl.grp_pair[j], want_pair[j]);
    // Per destination: rank 0 {g0, g4} own; rank 1 {g1}; rank 2 {g2, g5}; rank 3 {g3}.
    const int want_doff[5] = {0, 2, 3, 5, 6}, want_dgrp[6] = {0, 4, 1, 2, 5, 3};
    for (int d = 0; d < 5; d++)
        assert_int_equal(pl.dest_off[d], want_doff[d]);
    for (int c = 0; c < 6; c++)
        assert_int_equal(pl.dest_grp[c], want_dgrp[c]);
    // f32, hidden 5: record(n) = 8 + 8n + 20.
    assert_int_equal(pl.send_bytes[0], 0);
    assert_int_equal(pl.send_bytes[1], 44);
    assert_int_equal(pl.send_bytes[2], 36 + 36);
    assert_int_equal(pl.send_bytes[3], 36);
    assert_int_equal(pl.send_off[1], 0);
    assert_int_equal(pl.send_off[2], 44);
    assert_int_equal(pl.send_off[3], 116);
    const int64_t want_rec[6] = {-1, 0, 44, 116, -1, 80};
    for (int g = 0; g < 6; g++)
        assert_int_equal(pl.rec_off[g], want_rec[g]);
    assert_int_equal(pl.own_pairs, 3);
    assert_int_equal(pl.stats.sends, 4);
    assert_int_equal(pl.stats.dispatch_bytes, 152);
    assert_int_equal(pl.stats.dispatch_bytes_inter, 108);
    assert_int_equal(pl.stats.combine_bytes, 80);
    assert_int_equal(pl.stats.base_sends, 2);
    assert_int_equal(pl.stats.measured_bytes, 0);

    // Rebuilt for the same routes from rank 2: its own groups carry no bytes.
    ep_dispatch_plan q;
    assert_int_equal(ep_dispatch_plan_init(&q, 4, 2, two_nodes, 5, EP_DTYPE_F32), EP_OK);
    ep_dispatch_plan_build(&q, &r, &p, NULL);
    assert_int_equal(q.send_bytes[2], 0);
    assert_int_equal(q.own_pairs, 2);
    assert_int_equal(q.rec_off[2], -1);
    ep_dispatch_plan_free(&q);
    ep_dispatch_plan_free(&q); // twice is a no-op

    ep_dispatch_plan_free(&pl);
    ep_placement_free(&p);
    ep_routes_free(&r);
}

static void test_bad_init(void **state)
{
    (void)state;
    ep_dispatch_plan pl;
    assert_int_equal(ep_dispatch_plan_init(&pl, 0, 0, NULL, 8, EP_DTYPE_F32), EP_ERR_ARG);
    assert_int_equal(ep_dispatch_plan_init(&pl, 2, 2, NULL, 8, EP_DTYPE_F32), EP_ERR_ARG);
    assert_int_equal(ep_dispatch_plan_init(&pl, 2, 0, NULL, 0, EP_DTYPE_F32), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "hidden 0"));
}

static unsigned rnd(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

// Random routes at odd sizes, with and without replicas (pair_rank), compared
// with a recount that looks at each (token, rank) pair independently.
static void test_random(void **state)
{
    (void)state;
    unsigned seed = 7;
    const int worlds[] = {1, 3, 5, 7}, hiddens[] = {5, 13};
    const ep_dtype wires[] = {EP_DTYPE_F32, EP_DTYPE_BF16, EP_DTYPE_F8_E4M3};
    for (size_t wi = 0; wi < 4; wi++)
        for (int round = 0; round < 12; round++) {
            const int W = worlds[wi], E = 11 + round, kb = 3, maxk = 6, T = round * 3;
            const int H = hiddens[round % 2];
            const ep_dtype wire = wires[round % 3];
            int node_of[8];
            for (int d = 0; d < W; d++)
                node_of[d] = d / 2;
            ep_placement p;
            assert_int_equal(
                ep_placement_init(&p, round % 2 ? EP_PLACE_ROUND_ROBIN : EP_PLACE_CONTIGUOUS, E, W),
                EP_OK);
            ep_routes r;
            ep_routes_init(&r, T > 0 ? T : 1, maxk, kb);
            r.n_tokens = T;
            int nz = 0;
            for (int i = 0; i < T; i++) {
                r.offsets[i] = nz;
                int k = 1 + (int)(rnd(&seed) % maxk), e0 = (int)(rnd(&seed) % E);
                for (int j = 0; j < k; j++)
                    r.expert[nz++] = (e0 + 2 * j) % E; // distinct: 2j < 11 <= E
                for (int j = 0; j < kb; j++)
                    r.base_expert[i * kb + j] = (e0 + j) % E;
            }
            r.offsets[T] = nz;
            int *prk = NULL;
            if (round % 3 == 2) {
                prk = malloc(sizeof(int) * (size_t)(nz > 0 ? nz : 1));
                for (int j = 0; j < nz; j++)
                    prk[j] = (int)(rnd(&seed) % W);
            }
            const int me = round % W;
            ep_dispatch_plan pl;
            assert_int_equal(ep_dispatch_plan_init(&pl, W, me, node_of, H, wire), EP_OK);
            ep_dispatch_plan_build(&pl, &r, &p, prk);

            // Every pair once, groups ordered, destinations distinct per token.
            int *seen = calloc((size_t)(nz > 0 ? nz : 1), sizeof(int));
            int64_t want_send[8] = {0}, sends = 0, inter = 0;
            assert_int_equal(pl.n_pairs, nz);
            for (int g = 0; g < pl.n_grp; g++) {
                const int i = pl.grp_tok[g], d = pl.grp_dest[g];
                assert_true(g == 0 || pl.grp_tok[g - 1] <= i);
                for (int h = g - 1; h >= 0 && pl.grp_tok[h] == i; h--)
                    assert_int_not_equal(pl.grp_dest[h], d);
                int n = pl.grp_off[g + 1] - pl.grp_off[g];
                assert_true(n >= 1);
                int first = pl.grp_pair[pl.grp_off[g]];
                for (int q = pl.grp_off[g]; q < pl.grp_off[g + 1]; q++) {
                    int j = pl.grp_pair[q];
                    assert_true(j >= r.offsets[i] && j < r.offsets[i + 1]);
                    assert_int_equal(prk ? prk[j] : p.rank_of[r.expert[j]], d);
                    seen[j]++;
                }
                // The group's first pair is the first pair of the row going to d.
                for (int j = r.offsets[i]; j < first; j++)
                    assert_int_not_equal(prk ? prk[j] : p.rank_of[r.expert[j]], d);
                if (d != me) {
                    int64_t b = ep_comm_dispatch_record_bytes(n, H, wire);
                    assert_int_equal(pl.rec_off[g], pl.send_off[d] + want_send[d]);
                    want_send[d] += b;
                    sends++;
                    if (node_of[d] != node_of[me]) inter += b;
                } else {
                    assert_int_equal(pl.rec_off[g], -1);
                }
            }
            for (int j = 0; j < nz; j++)
                assert_int_equal(seen[j], 1);
            int64_t off = 0;
            for (int d = 0; d < W; d++) {
                assert_int_equal(pl.send_bytes[d], want_send[d]);
                assert_int_equal(pl.send_off[d], off);
                off += pl.send_bytes[d];
                for (int c = pl.dest_off[d]; c < pl.dest_off[d + 1]; c++) {
                    assert_int_equal(pl.grp_dest[pl.dest_grp[c]], d);
                    assert_true(c == pl.dest_off[d] || pl.dest_grp[c - 1] < pl.dest_grp[c]);
                }
            }
            assert_int_equal(pl.stats.sends, sends);
            assert_int_equal(pl.stats.dispatch_bytes_inter, inter);
            assert_int_equal(pl.stats.combine_bytes, sends * ep_comm_combine_record_bytes(H, wire));
            // ep_comm_count is the same plan's stats.
            ep_comm_stats cs;
            ep_comm_count(&r, &p, prk, me, node_of, H, wire, &cs);
            assert_memory_equal(&cs, &pl.stats, sizeof cs);

            free(seen);
            free(prk);
            ep_dispatch_plan_free(&pl);
            ep_routes_free(&r);
            ep_placement_free(&p);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_case),
        cmocka_unit_test(test_bad_init),
        cmocka_unit_test(test_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
