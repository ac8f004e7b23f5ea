// ep_dispatch_plan against hand-computed groups and offsets, and on random
// routes (odd world sizes, replicas through pair_rank, empty rows of the
// counterfactual) against an independent per-pair recount written here:
// every pair in exactly one group, one group per (token, rank) in the order
// of the rank's first pair, records packed back to back per destination,
// bytes as the wire format's record sizes. The hier mode against a
// brute-force count per (token, node) on uneven and interleaved node maps.
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

// Brute-force price of one row under hier, from rank me: per other node one
// stage-1 record (all the row's pairs on that node) to the forwarding rank,
// then one plain record per other rank of those pairs; own node direct.
typedef struct {
    int64_t sends, fwd, disp, comb, disp_inter, comb_inter, dest_ranks;
} bf_cost;

static void bf_row(const int *prank, int k, int me, const int *node_of, int W, int H, ep_dtype wire,
                   bf_cost *c)
{
    const int64_t crow = ep_comm_combine_record_bytes(H, wire);
    int li = 0;
    for (int d = 0; d < me; d++)
        li += node_of[d] == node_of[me];
    for (int d = 0; d < W; d++) { // ranks: count the pairs each computes
        int n = 0;
        for (int j = 0; j < k; j++)
            n += prank[j] == d;
        if (!n) continue;
        c->dest_ranks++;
        if (d == me) continue;
        if (node_of[d] == node_of[me]) {
            c->sends++;
            c->disp += ep_comm_dispatch_record_bytes(n, H, wire);
            c->comb += crow;
        }
    }
    for (int nd = 0; nd < W; nd++) { // other nodes (ids < W here)
        if (nd == node_of[me]) continue;
        int n = 0;
        for (int j = 0; j < k; j++)
            n += node_of[prank[j]] == nd;
        if (!n) continue;
        int size = 0, f = -1;
        for (int d = 0; d < W; d++)
            size += node_of[d] == nd;
        for (int d = 0, x = 0; d < W; d++)
            if (node_of[d] == nd && x++ == li % size) f = d;
        const int64_t b = ep_comm_hier_record_bytes(n, H, wire);
        c->sends++;
        c->disp += b;
        c->comb += crow;
        c->disp_inter += b;
        c->comb_inter += crow;
        for (int d = 0; d < W; d++) {
            int m = 0;
            for (int j = 0; j < k; j++)
                m += prank[j] == d;
            if (!m || d == f || node_of[d] != nd) continue;
            c->fwd++;
            c->disp += ep_comm_dispatch_record_bytes(m, H, wire);
            c->comb += crow;
        }
    }
}

static void test_hier_random(void **state)
{
    (void)state;
    unsigned seed = 11;
    const ep_dtype wires[] = {EP_DTYPE_F32, EP_DTYPE_BF16, EP_DTYPE_F16, EP_DTYPE_F8_E4M3};
    for (int round = 0; round < 64; round++) {
        const int W = 1 + round % 8, E = 9 + round % 13, kb = 3, maxk = 6, T = 1 + round % 9;
        const int H = round % 2 ? 13 : 200;
        const ep_dtype wire = wires[round % 4];
        // Node maps: uneven blocks (3 + 2 + ...), or interleaved as host
        // names may give (rank -> random node), node ids < W.
        int node_of[8], n_nodes = 1 + (int)(rnd(&seed) % (unsigned)W);
        for (int d = 0; d < W; d++)
            node_of[d] = round % 2 ? (int)(rnd(&seed) % (unsigned)n_nodes) : d / 3;
        ep_placement p;
        assert_int_equal(
            ep_placement_init(&p, round % 3 ? EP_PLACE_ROUND_ROBIN : EP_PLACE_CONTIGUOUS, E, W),
            EP_OK);
        ep_routes r;
        ep_routes_init(&r, T, maxk, kb);
        r.n_tokens = T;
        int nz = 0;
        for (int i = 0; i < T; i++) {
            r.offsets[i] = nz;
            int k = 1 + (int)(rnd(&seed) % maxk), e0 = (int)(rnd(&seed) % E);
            for (int j = 0; j < k; j++) {
                r.expert[nz] = (e0 + 2 * j) % E; // distinct: 2j < 9 <= E
                r.weight[nz++] = 0.5f;
            }
            for (int j = 0; j < kb; j++)
                r.base_expert[i * kb + j] = (e0 + j) % E;
        }
        r.offsets[T] = nz;
        int *prk = NULL;
        if (round % 4 == 1) { // replicas: the scheduler's rank per pair
            prk = malloc(sizeof(int) * (size_t)nz);
            for (int j = 0; j < nz; j++)
                prk[j] = (int)(rnd(&seed) % (unsigned)W);
        }
        for (int me = 0; me < W; me++) {
            ep_dispatch_plan pl;
            assert_int_equal(ep_dispatch_plan_init(&pl, W, me, node_of, H, wire), EP_OK);
            assert_int_equal(ep_dispatch_plan_set_mode(&pl, EP_DISPATCH_HIER), EP_OK);
            ep_dispatch_plan_build(&pl, &r, &p, prk);

            bf_cost act = {0}, base = {0};
            int pr[8], bpr[3];
            for (int i = 0; i < T; i++) {
                const int o = r.offsets[i], k = r.offsets[i + 1] - o;
                for (int j = 0; j < k; j++)
                    pr[j] = prk ? prk[o + j] : p.rank_of[r.expert[o + j]];
                bf_row(pr, k, me, node_of, W, H, wire, &act);
                for (int j = 0; j < kb; j++)
                    bpr[j] = p.rank_of[r.base_expert[i * kb + j]];
                bf_row(bpr, kb, me, node_of, W, H, wire, &base);
            }
            const ep_comm_stats *st = &pl.stats;
            assert_int_equal(st->sends, act.sends);
            assert_int_equal(st->fwd_sends, act.fwd);
            assert_int_equal(st->dest_ranks, act.dest_ranks);
            assert_int_equal(st->dispatch_bytes, act.disp);
            assert_int_equal(st->combine_bytes, act.comb);
            assert_int_equal(st->dispatch_bytes_inter, act.disp_inter);
            assert_int_equal(st->combine_bytes_inter, act.comb_inter);
            assert_int_equal(st->dispatch_bytes_intra, act.disp - act.disp_inter);
            assert_int_equal(st->combine_bytes_intra, act.comb - act.comb_inter);
            assert_int_equal(st->base_sends, base.sends);
            assert_int_equal(st->base_fwd_sends, base.fwd);
            assert_int_equal(st->base_dest_ranks, base.dest_ranks);
            assert_int_equal(st->base_dispatch_bytes, base.disp);
            assert_int_equal(st->base_combine_bytes, base.comb);
            assert_int_equal(st->base_dispatch_bytes_inter, base.disp_inter);
            assert_int_equal(st->base_combine_bytes_inter, base.comb_inter);
            assert_int_equal(st->base_dispatch_bytes_intra, base.disp - base.disp_inter);
            assert_int_equal(st->planned_bytes, act.disp + act.comb);

            // Groups: every pair once, with its rank; a group to another
            // node holds exactly the row's pairs on that node; send sizes
            // are the records' (hier records to other nodes).
            int64_t want_send[8] = {0};
            int seen[64] = {0};
            for (int g = 0; g < pl.n_grp; g++) {
                const int i = pl.grp_tok[g], d = pl.grp_dest[g];
                const int n = pl.grp_off[g + 1] - pl.grp_off[g];
                for (int x = pl.grp_off[g]; x < pl.grp_off[g + 1]; x++) {
                    const int j = pl.grp_pair[x], rk = prk ? prk[j] : p.rank_of[r.expert[j]];
                    assert_int_equal(pl.grp_prank[x], rk);
                    assert_int_equal(node_of[rk], node_of[d]);
                    if (node_of[d] == node_of[me]) assert_int_equal(rk, d);
                    seen[j]++;
                }
                if (node_of[d] != node_of[me]) {
                    int m = 0;
                    for (int j = r.offsets[i]; j < r.offsets[i + 1]; j++)
                        m += node_of[prk ? prk[j] : p.rank_of[r.expert[j]]] == node_of[d];
                    assert_int_equal(n, m);
                    assert_int_equal(d, pl.fwd_of[d]);
                }
                if (d != me) {
                    assert_int_equal(pl.rec_off[g], pl.send_off[d] + want_send[d]);
                    want_send[d] += ep_dispatch_plan_rec_bytes(&pl, d, n);
                }
            }
            for (int j = 0; j < nz; j++)
                assert_int_equal(seen[j], 1);
            for (int d = 0; d < W; d++)
                assert_int_equal(pl.send_bytes[d], want_send[d]);

            // ep_comm_count_mode is the same plan's stats; flat is ep_comm_count.
            ep_comm_stats cs, cf, cf2;
            ep_comm_count_mode(&r, &p, prk, me, node_of, H, wire, EP_DISPATCH_HIER, &cs);
            assert_memory_equal(&cs, st, sizeof cs);
            ep_comm_count_mode(&r, &p, prk, me, node_of, H, wire, EP_DISPATCH_FLAT, &cf);
            ep_comm_count(&r, &p, prk, me, node_of, H, wire, &cf2);
            assert_memory_equal(&cf, &cf2, sizeof cf);
            // Hier never sends more records across nodes than flat does.
            assert_true(cs.dispatch_bytes_inter <= cf.dispatch_bytes_inter + 4 * (int64_t)nz);
            assert_true(cs.combine_bytes_inter <= cf.combine_bytes_inter);
            assert_int_equal(cf.fwd_sends, 0);
            ep_dispatch_plan_free(&pl);
        }
        free(prk);
        ep_routes_free(&r);
        ep_placement_free(&p);
    }
}

// One node: hier is flat. A bad mode is refused by name.
static void test_hier_one_node(void **state)
{
    (void)state;
    ep_routes r;
    ep_routes_init(&r, 3, 4, 2);
    const int k[3] = {2, 3, 3}, ex[8] = {0, 1, 2, 4, 3, 7, 0, 5}, base[6] = {0, 1, 2, 3, 7, 6};
    fill_routes(&r, 3, k, ex, base, 2);
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 8, 4), EP_OK);
    const int one[4] = {0, 0, 0, 0};
    ep_comm_stats a, b;
    ep_comm_count_mode(&r, &p, NULL, 1, one, 5, EP_DTYPE_BF16, EP_DISPATCH_HIER, &a);
    ep_comm_count(&r, &p, NULL, 1, one, 5, EP_DTYPE_BF16, &b);
    assert_memory_equal(&a, &b, sizeof a);
    ep_dispatch_plan pl;
    assert_int_equal(ep_dispatch_plan_init(&pl, 4, 0, one, 5, EP_DTYPE_F32), EP_OK);
    assert_int_equal(ep_dispatch_plan_set_mode(&pl, (ep_dispatch_mode)7), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "mode"));
    ep_dispatch_mode m;
    assert_int_equal(ep_dispatch_mode_parse("--dispatch", "tree", &m), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "--dispatch"));
    assert_int_equal(ep_dispatch_mode_parse("--dispatch", "hier", &m), EP_OK);
    assert_int_equal(m, EP_DISPATCH_HIER);
    ep_dispatch_plan_free(&pl);
    ep_routes_free(&r);
    ep_placement_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_case),     cmocka_unit_test(test_bad_init),
        cmocka_unit_test(test_random),        cmocka_unit_test(test_hier_random),
        cmocka_unit_test(test_hier_one_node),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
