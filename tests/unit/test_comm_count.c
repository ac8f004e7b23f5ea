// Dispatch accounting against hand-computed cases: record sizes per wire
// dtype, a token whose experts are all local (0 bytes), two experts on one
// remote rank (one record), intra/inter-node split, replicas, the fixed-K
// counterfactual, empty batches and stats accumulation.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "comm/comm.h"

static void test_record_bytes(void **state)
{
    // f32: 8 header + 8 per pair + 4 * hidden.
    assert_int_equal(ep_comm_dispatch_record_bytes(1, 5, EP_DTYPE_F32), 8 + 8 + 20);
    assert_int_equal(ep_comm_dispatch_record_bytes(3, 13, EP_DTYPE_F32), 8 + 24 + 52);
    assert_int_equal(ep_comm_combine_record_bytes(13, EP_DTYPE_F32), 52);
    // bf16 rows round up to an even element count: 5 -> 6 elements = 12 bytes.
    assert_int_equal(ep_comm_dispatch_record_bytes(1, 5, EP_DTYPE_BF16), 8 + 8 + 12);
    assert_int_equal(ep_comm_dispatch_record_bytes(2, 5, EP_DTYPE_BF16), 8 + 16 + 12);
    assert_int_equal(ep_comm_combine_record_bytes(5, EP_DTYPE_BF16), 12);
    assert_int_equal(ep_comm_combine_record_bytes(13, EP_DTYPE_BF16), 28);
    assert_int_equal(ep_comm_combine_record_bytes(64, EP_DTYPE_BF16), 128);
    assert_int_equal(ep_comm_combine_record_bytes(7, EP_DTYPE_F16), 16);
    for (int h = 1; h < 40; h++) {
        assert_int_equal(ep_comm_combine_record_bytes(h, EP_DTYPE_BF16) % 4, 0);
        assert_int_equal(ep_comm_dispatch_record_bytes(3, h, EP_DTYPE_BF16) % 4, 0);
    }
}

// fp8: dispatch row = 4 * ceil(hidden / 128) scale bytes + hidden codes
// rounded up to 4; combine is the bf16 row. Hand-computed per hidden size.
static void test_record_bytes_fp8(void **state)
{
    (void)state;
    const struct {
        int hidden;
        int64_t row, combine;
    } want[] = {
        {13, 4 + 16, 28},          // one short group; 13 codes -> 16 bytes
        {128, 4 + 128, 256},       // exactly one group
        {129, 8 + 132, 260},       // a second group of 1 channel
        {2048, 64 + 2048, 4096},   // 16 groups
        {5120, 160 + 5120, 10240}, // 40 groups
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int H = want[i].hidden;
        assert_int_equal(ep_comm_dispatch_record_bytes(1, H, EP_DTYPE_F8_E4M3), 16 + want[i].row);
        assert_int_equal(ep_comm_dispatch_record_bytes(3, H, EP_DTYPE_F8_E4M3), 32 + want[i].row);
        assert_int_equal(ep_comm_combine_record_bytes(H, EP_DTYPE_F8_E4M3), want[i].combine);
        assert_int_equal(ep_fp8_row_bytes(H), want[i].row);
    }
    assert_int_equal(ep_comm_combine_wire(EP_DTYPE_F8_E4M3), EP_DTYPE_BF16);
    assert_int_equal(ep_comm_combine_wire(EP_DTYPE_F32), EP_DTYPE_F32);
    for (int h = 1; h < 300; h++)
        assert_int_equal(ep_comm_dispatch_record_bytes(2, h, EP_DTYPE_F8_E4M3) % 4, 0);
}

static void test_wire_parse(void **state)
{
    (void)state;
    const char *names[] = {"f32", "bf16", "f16", "fp8"};
    const ep_dtype want[] = {EP_DTYPE_F32, EP_DTYPE_BF16, EP_DTYPE_F16, EP_DTYPE_F8_E4M3};
    for (int i = 0; i < 4; i++) {
        ep_dtype t = EP_DTYPE_COUNT;
        assert_int_equal(ep_comm_wire_parse("--wire", names[i], &t), EP_OK);
        assert_int_equal(t, want[i]);
        assert_string_equal(ep_comm_wire_name(t), names[i]);
    }
    ep_dtype t = EP_DTYPE_COUNT;
    assert_int_equal(ep_comm_wire_parse("--wire", "e4m3", &t), EP_ERR_ARG);
    assert_int_equal(t, EP_DTYPE_COUNT);
    assert_non_null(strstr(ep_last_error(), "--wire"));
    assert_non_null(strstr(ep_last_error(), "'e4m3'"));
    assert_int_equal(ep_comm_wire_parse("--wire", NULL, &t), EP_ERR_ARG);
}

// 8 experts, contiguous on 4 ranks: rank r holds {2r, 2r + 1}; ranks {0, 1}
// on node 0 and {2, 3} on node 1. hidden 5, f32: record(n) = 28 + 8n, row 20.
typedef struct {
    ep_routes r;
    ep_placement p;
} fixture;

static const int tok_experts[3][3] = {{0, 1, -1}, {2, 3, 4}, {7, 0, 5}};
static const int tok_k[3] = {2, 3, 3};
static const int base_experts[3][2] = {{0, 1}, {2, 3}, {7, 6}};

static void make(fixture *f)
{
    ep_routes_init(&f->r, 3, 4, 2);
    f->r.n_tokens = 3;
    int nz = 0;
    for (int i = 0; i < 3; i++) {
        f->r.offsets[i] = nz;
        for (int j = 0; j < tok_k[i]; j++) {
            f->r.expert[nz] = tok_experts[i][j];
            f->r.weight[nz] = 0.25f * (float)(j + 1);
            nz++;
        }
        f->r.base_expert[2 * i] = base_experts[i][0];
        f->r.base_expert[2 * i + 1] = base_experts[i][1];
        f->r.base_weight[2 * i] = f->r.base_weight[2 * i + 1] = 0.5f;
    }
    f->r.offsets[3] = nz;
    assert_int_equal(ep_routes_check(&f->r, 8), EP_OK);
    assert_int_equal(ep_placement_init(&f->p, EP_PLACE_CONTIGUOUS, 8, 4), EP_OK);
}

static void destroy(fixture *f)
{
    ep_routes_free(&f->r);
    ep_placement_free(&f->p);
}

static const int two_nodes[4] = {0, 0, 1, 1};

static void test_from_rank0(void **state)
{
    fixture f;
    make(&f);
    ep_comm_stats st;
    memset(&st, 0x5a, sizeof st); // count must overwrite everything
    ep_comm_count(&f.r, &f.p, NULL, 0, two_nodes, 5, EP_DTYPE_F32, &st);
    // t0 {0,1}: all on rank 0, no bytes. t1 {2,3 | 4}: rank 1 once with 2
    // pairs (44, intra), rank 2 with 1 (36, inter). t2 {7 | 0 | 5}: rank 3 (36,
    // inter), own, rank 2 (36, inter).
    assert_int_equal(st.tokens, 3);
    assert_int_equal(st.pairs, 8);
    assert_int_equal(st.sends, 4);
    assert_int_equal(st.dest_ranks, 1 + 2 + 3);
    assert_int_equal(st.dispatch_bytes, 44 + 36 + 36 + 36);
    assert_int_equal(st.dispatch_bytes_inter, 36 + 36 + 36);
    assert_int_equal(st.combine_bytes, 4 * 20);
    assert_int_equal(st.combine_bytes_inter, 3 * 20);
    assert_int_equal(st.planned_bytes, 152 + 80);
    // Counterfactual top-2: t0 local; t1 {2,3} one record to rank 1 (44,
    // intra); t2 {7,6} one record to rank 3 (44, inter).
    assert_int_equal(st.base_pairs, 6);
    assert_int_equal(st.base_sends, 2);
    assert_int_equal(st.base_dest_ranks, 3);
    assert_int_equal(st.base_dispatch_bytes, 88);
    assert_int_equal(st.base_dispatch_bytes_inter, 44);
    assert_int_equal(st.base_combine_bytes, 40);
    assert_int_equal(st.base_combine_bytes_inter, 20);
    assert_int_equal(st.measured_bytes, 0);
    assert_int_equal(st.recv_pairs, 0);
    assert_int_equal(st.recv_tokens, 0);
    destroy(&f);
}

static void test_from_rank3_and_one_node(void **state)
{
    fixture f;
    make(&f);
    ep_comm_stats st;
    // Rank 3 (node 1): t0 -> rank 0 with 2 pairs (44, inter); t1 -> rank 1
    // (44, inter), rank 2 (36, intra); t2 -> own (7), rank 0 (36, inter),
    // rank 2 (36, intra).
    ep_comm_count(&f.r, &f.p, NULL, 3, two_nodes, 5, EP_DTYPE_F32, &st);
    assert_int_equal(st.sends, 5);
    assert_int_equal(st.dest_ranks, 6);
    assert_int_equal(st.dispatch_bytes, 44 + 44 + 36 + 36 + 36);
    assert_int_equal(st.dispatch_bytes_inter, 44 + 44 + 36);
    assert_int_equal(st.combine_bytes, 100);
    assert_int_equal(st.combine_bytes_inter, 60);
    // Base from rank 3: t0 {0,1} -> rank 0 (44 inter), t1 {2,3} -> rank 1 (44
    // inter), t2 {7,6} own.
    assert_int_equal(st.base_sends, 2);
    assert_int_equal(st.base_dispatch_bytes, 88);
    assert_int_equal(st.base_dispatch_bytes_inter, 88);

    // All four ranks on one node: the same bytes, none inter-node.
    const int one_node[4] = {0, 0, 0, 0};
    ep_comm_stats st1;
    ep_comm_count(&f.r, &f.p, NULL, 3, one_node, 5, EP_DTYPE_F32, &st1);
    assert_int_equal(st1.dispatch_bytes, st.dispatch_bytes);
    assert_int_equal(st1.dispatch_bytes_inter, 0);
    assert_int_equal(st1.combine_bytes_inter, 0);
    assert_int_equal(st1.base_dispatch_bytes_inter, 0);

    // bf16 wire, hidden 5: record(n) = 20 + 8n, row 12.
    ep_comm_count(&f.r, &f.p, NULL, 3, two_nodes, 5, EP_DTYPE_BF16, &st1);
    assert_int_equal(st1.dispatch_bytes, 36 + 36 + 28 + 28 + 28);
    assert_int_equal(st1.combine_bytes, 5 * 12);
    assert_int_equal(st1.planned_bytes, 156 + 60);
    destroy(&f);
}

static void test_replicas(void **state)
{
    fixture f;
    make(&f);
    // The scheduler sends all of t1's pairs to rank 2 (replicas of 2 and 3
    // there): one record of 3 pairs, 28 + 24 = 52 bytes, inter from rank 0.
    const int pair_rank[8] = {0, 0, 2, 2, 2, 3, 0, 2};
    ep_comm_stats st;
    ep_comm_count(&f.r, &f.p, pair_rank, 0, two_nodes, 5, EP_DTYPE_F32, &st);
    assert_int_equal(st.sends, 3);
    assert_int_equal(st.dest_ranks, 1 + 1 + 3);
    assert_int_equal(st.dispatch_bytes, 52 + 36 + 36);
    assert_int_equal(st.dispatch_bytes_inter, 52 + 36 + 36);
    assert_int_equal(st.combine_bytes, 60);
    // The counterfactual stays on home ranks.
    assert_int_equal(st.base_dispatch_bytes, 88);
    assert_int_equal(st.base_sends, 2);
    destroy(&f);
}

static void test_empty_and_add(void **state)
{
    fixture f;
    make(&f);
    ep_comm_stats a, b, acc;
    ep_comm_count(&f.r, &f.p, NULL, 0, two_nodes, 5, EP_DTYPE_F32, &a);
    ep_comm_count(&f.r, &f.p, NULL, 3, two_nodes, 5, EP_DTYPE_F32, &b);
    a.measured_bytes = 7;
    b.recv_pairs = 11;
    memset(&acc, 0, sizeof acc);
    ep_comm_stats_add(&acc, &a);
    ep_comm_stats_add(&acc, &b);
    assert_int_equal(acc.dispatch_bytes, 152 + 196);
    assert_int_equal(acc.sends, 9);
    assert_int_equal(acc.base_dispatch_bytes, 176);
    assert_int_equal(acc.planned_bytes, a.planned_bytes + b.planned_bytes);
    assert_int_equal(acc.measured_bytes, 7);
    assert_int_equal(acc.recv_pairs, 11);
    assert_int_equal(acc.tokens, 6);

    f.r.n_tokens = 0;
    ep_comm_count(&f.r, &f.p, NULL, 1, two_nodes, 5, EP_DTYPE_F32, &a);
    ep_comm_stats zero;
    memset(&zero, 0, sizeof zero);
    assert_memory_equal(&a, &zero, sizeof a);
    destroy(&f);
}

// The rank-0 case of test_from_rank0 on an fp8 wire, hidden 5: dispatch row
// 4 (one scale) + 8 (5 codes padded) = 12, record(n) = 20 + 8n; combine is
// the bf16 row, 12 bytes.
static void test_count_fp8(void **state)
{
    (void)state;
    fixture f;
    make(&f);
    ep_comm_stats st;
    ep_comm_count(&f.r, &f.p, NULL, 0, two_nodes, 5, EP_DTYPE_F8_E4M3, &st);
    assert_int_equal(st.sends, 4);
    assert_int_equal(st.dispatch_bytes, 36 + 28 + 28 + 28);
    assert_int_equal(st.dispatch_bytes_inter, 28 + 28 + 28);
    assert_int_equal(st.combine_bytes, 4 * 12);
    assert_int_equal(st.combine_bytes_inter, 3 * 12);
    assert_int_equal(st.planned_bytes, 120 + 48);
    assert_int_equal(st.base_dispatch_bytes, 36 + 36);
    assert_int_equal(st.base_dispatch_bytes_inter, 36);
    assert_int_equal(st.base_combine_bytes, 24);
    assert_int_equal(st.base_combine_bytes_inter, 12);
    destroy(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_bytes), cmocka_unit_test(test_record_bytes_fp8),
        cmocka_unit_test(test_wire_parse),   cmocka_unit_test(test_count_fp8),
        cmocka_unit_test(test_from_rank0),   cmocka_unit_test(test_from_rank3_and_one_node),
        cmocka_unit_test(test_replicas),     cmocka_unit_test(test_empty_and_add),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
