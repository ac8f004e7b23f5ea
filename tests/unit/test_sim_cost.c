// The simulator's cost model on hand-computed cases: alpha-beta link time
// per class, the expert roofline, one layer of two ranks with known volumes
// (one node and two nodes, scaled), cluster YAML loading and its errors,
// parameter counts and the memory plan of a full-size preset.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/sim.h"

// Round numbers: NVLink 1 GB/s = 1000 B/us, latency 2 us; inter 0.5 GB/s =
// 500 B/us, latency 5 us; 1 TFLOP/s = 1e6 FLOP/us; HBM 1 GB/s = 1000 B/us.
static ep_sim_cluster hand_cluster(int nodes, int gpus_per_node)
{
    ep_sim_cluster c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "hand");
    c.n_nodes = nodes;
    c.gpus_per_node = gpus_per_node;
    c.mem_gb = 1;
    c.hbm_GBps = 1;
    c.bf16_tflops = 1;
    c.nvlink_GBps = 1;
    c.nvlink_latency_us = 2;
    c.inter_GBps = 0.5;
    c.inter_latency_us = 5;
    c.gemm_eff = c.hbm_eff = c.nvlink_eff = c.inter_eff = c.mem_usable = 1.0;
    return c;
}

static void test_a2a_rank(void **state)
{
    ep_sim_cluster c = hand_cluster(2, 2);
    ep_sim_traffic t = {0};
    assert_true(ep_sim_a2a_rank_us(&c, &t) == 0.0); // nothing to move costs nothing
    t.send_intra = 4000;
    t.recv_intra = 3000;
    // 2 + max(4000, 3000) / 1000
    assert_float_equal(ep_sim_a2a_rank_us(&c, &t), 6.0, 1e-9);
    t.send_inter = 1000;
    // inter: 5 + 1000 / 500 = 7 > 6; the classes run in parallel
    assert_float_equal(ep_sim_a2a_rank_us(&c, &t), 7.0, 1e-9);
    t.recv_inter = 250;
    assert_float_equal(ep_sim_a2a_rank_us(&c, &t), 7.0, 1e-9);
    c.inter_eff = 0.5; // half the line rate: 5 + 1000 / 250
    assert_float_equal(ep_sim_a2a_rank_us(&c, &t), 9.0, 1e-9);
}

static void test_hier_stage(void **state)
{
    ep_sim_cluster c = hand_cluster(2, 2);
    ep_sim_traffic t = {0};
    // nothing to move costs nothing, latency included
    assert_true(ep_sim_hier_stage_us(&c, &t, EP_SIM_STAGE_RDMA) == 0.0);
    assert_true(ep_sim_hier_stage_us(&c, &t, EP_SIM_STAGE_NVLINK) == 0.0);
    t.send_inter = 1000;
    t.recv_inter = 1500;
    t.send_intra = 3000;
    // 0 GBps: the flat links' achievable rates (500 and 1000 B/us), latencies as given
    c.hier_rdma_latency_us = 4;
    c.hier_nvlink_latency_us = 1;
    assert_float_equal(ep_sim_hier_stage_us(&c, &t, EP_SIM_STAGE_RDMA), 4 + 1500.0 / 500, 1e-9);
    assert_float_equal(ep_sim_hier_stage_us(&c, &t, EP_SIM_STAGE_NVLINK), 1 + 3000.0 / 1000, 1e-9);
    c.inter_eff = 0.5; // falls back on GBps x efficiency
    assert_float_equal(ep_sim_hier_stage_us(&c, &t, EP_SIM_STAGE_RDMA), 4 + 1500.0 / 250, 1e-9);
    // achieved rates: no efficiency applied on top
    c.hier_rdma_GBps = 3;
    c.hier_nvlink_GBps = 6;
    assert_float_equal(ep_sim_hier_stage_us(&c, &t, EP_SIM_STAGE_RDMA), 4 + 1500.0 / 3000, 1e-9);
    assert_float_equal(ep_sim_hier_stage_us(&c, &t, EP_SIM_STAGE_NVLINK), 1 + 3000.0 / 6000, 1e-9);
    // each stage reads only its own link class
    t.send_inter = t.recv_inter = 0;
    assert_true(ep_sim_hier_stage_us(&c, &t, EP_SIM_STAGE_RDMA) == 0.0);
}

static void test_experts_roofline(void **state)
{
    ep_sim_cluster c = hand_cluster(1, 2);
    // hidden 8, inter 4, 10 pairs, 2 experts: bytes = 2 * (3*32*2 + 10*(16+12)) = 944
    // -> 0.944 us; FLOPs = 6*32*10 = 1920 -> 0.00192 us: memory bound.
    assert_float_equal(ep_sim_experts_us(&c, 8, 4, 10, 2), 0.944, 1e-9);
    // compute bound: a slow core, 1e-6 TFLOP/s = 1 FLOP/us
    c.bf16_tflops = 1e-6;
    assert_float_equal(ep_sim_experts_us(&c, 8, 4, 10, 2), 1920.0, 1e-6);
    assert_true(ep_sim_experts_us(&c, 8, 4, 0, 2) == 0.0);
}

// Two ranks, four experts contiguous (rank 0: {0, 1}, rank 1: {2, 3}),
// hidden 8, f32 wire: row 32 bytes, record(n) = 8 + 8n + 32.
//   rank 0: t0 {0, 2}, t1 {2, 3}  -> to rank 1: 48 + 56 = 104, combine back 64
//   rank 1: u0 {0, 1}, u1 {3, 2}  -> to rank 0: 56 (u1 is local), back 32
// pairs computed: rank 0: 1 + 2 = 3, rank 1: 1 + 2 + 2 = 5.
static void set_row(ep_routes *r, int i, int a, int b)
{
    r->offsets[i] = 2 * i;
    r->expert[2 * i] = a;
    r->expert[2 * i + 1] = b;
    r->weight[2 * i] = 0.6f;
    r->weight[2 * i + 1] = 0.4f;
    r->base_expert[2 * i] = a;
    r->base_expert[2 * i + 1] = b;
    r->base_weight[2 * i] = 0.6f;
    r->base_weight[2 * i + 1] = 0.4f;
    r->offsets[i + 1] = 2 * i + 2;
    r->n_tokens = i + 1;
}

static void test_layer_two_ranks(void **state)
{
    ep_model_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.hidden = 8;
    cfg.moe_inter = 4;
    cfg.n_experts = 4;
    cfg.k_base = 2;
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 4, 2), EP_OK);
    ep_routes r[2];
    for (int i = 0; i < 2; i++)
        ep_routes_init(&r[i], 2, 2, 2);
    set_row(&r[0], 0, 0, 2);
    set_row(&r[0], 1, 2, 3);
    set_row(&r[1], 0, 0, 1);
    set_row(&r[1], 1, 3, 2);

    ep_sim_layer L;
    ep_sim_layer_init(&L, 2);
    ep_comm_stats sum;

    // One node: NVLink only.
    ep_sim_cluster c = hand_cluster(1, 2);
    const int one_node[2] = {0, 0};
    ep_sim_layer_price(&L, &c, &cfg, &p, one_node, r, NULL, EP_DTYPE_F32, 1.0, &sum);
    assert_int_equal(sum.dispatch_bytes, 104 + 56);
    assert_int_equal(sum.combine_bytes, 64 + 32);
    assert_int_equal(sum.dispatch_bytes_inter, 0);
    assert_float_equal(L.dispatch[0].send_intra, 104, 0);
    assert_float_equal(L.dispatch[0].recv_intra, 56, 0);
    assert_float_equal(L.dispatch[1].send_intra, 56, 0);
    assert_float_equal(L.combine[1].send_intra, 64, 0);
    assert_float_equal(L.combine[0].recv_intra, 64, 0);
    assert_int_equal(L.dispatch[0].peers_intra, 1);
    assert_int_equal(L.combine[1].peers_intra, 1);
    assert_int_equal(L.dispatch[0].peers_inter, 0);
    assert_float_equal(L.dispatch_us, 2.0 + 104.0 / 1000, 1e-9);
    assert_float_equal(L.combine_us, 2.0 + 64.0 / 1000, 1e-9);
    assert_int_equal(L.recv_pairs[0], 3);
    assert_int_equal(L.recv_pairs[1], 5);
    assert_int_equal(L.active_experts[0], 2);
    assert_int_equal(L.active_experts[1], 2);
    assert_float_equal(L.imbalance, 5.0 / 4.0, 1e-12);
    // busiest rank: 5 pairs, 2 experts: 2 * (3*32*2 + 5*28) = 664 bytes
    assert_float_equal(L.experts_us, 0.664, 1e-9);

    // Two nodes: the same volumes over the slower link.
    const int two_nodes[2] = {0, 1};
    ep_sim_layer_price(&L, &c, &cfg, &p, two_nodes, r, NULL, EP_DTYPE_F32, 1.0, &sum);
    assert_int_equal(sum.dispatch_bytes_inter, 104 + 56);
    assert_int_equal(sum.combine_bytes_inter, 96);
    assert_float_equal(L.dispatch[0].send_inter, 104, 0);
    assert_float_equal(L.dispatch[0].send_intra, 0, 0);
    assert_float_equal(L.dispatch_us, 5.0 + 104.0 / 500, 1e-9);
    assert_float_equal(L.combine_us, 5.0 + 64.0 / 500, 1e-9);

    // Scale 3: every volume and pair count x3, planner counters unscaled.
    ep_sim_layer_price(&L, &c, &cfg, &p, one_node, r, NULL, EP_DTYPE_F32, 3.0, &sum);
    assert_int_equal(sum.dispatch_bytes, 160);
    assert_float_equal(L.dispatch_us, 2.0 + 312.0 / 1000, 1e-9);
    assert_float_equal(L.experts_us, 2.0 * (3 * 32 * 2 + 15 * 28) / 1000.0, 1e-9);

    // A batch with no remote pairs costs no link time at all.
    r[0].n_tokens = 0;
    r[1].n_tokens = 1;
    r[1].offsets[1] = 2;
    r[1].expert[0] = 2;
    r[1].expert[1] = 3;
    r[1].base_expert[0] = 2;
    r[1].base_expert[1] = 3;
    ep_sim_layer_price(&L, &c, &cfg, &p, one_node, r, NULL, EP_DTYPE_F32, 1.0, &sum);
    assert_true(L.dispatch_us == 0.0 && L.combine_us == 0.0);
    assert_float_equal(L.imbalance, 2.0, 1e-12); // 2 pairs, all on rank 1

    ep_sim_layer_free(&L);
    ep_sim_layer_free(NULL);
    for (int i = 0; i < 2; i++)
        ep_routes_free(&r[i]);
    ep_placement_free(&p);
}

// Two nodes x two ranks, eight experts contiguous (rank r: {2r, 2r+1}),
// hidden 8, f32 wire: record(n) = 8 + 8n + 32, an RDMA (stage-1) record also
// carries n destination ranks: + 4n; combine row 32. Local index: ranks 0,
// 2 -> 0; ranks 1, 3 -> 1.
//   rank 0, t {2, 4, 6, 7}: NVLink 0 -> 1 record(1) = 48; RDMA 0 -> 2 (node 1's
//     rank with local index 0) record(3) + 12 = 76; 2 forwards NVLink 2 -> 3
//     record(2) = 56 (expert 4 stays on 2).
//   rank 3, t {0, 5}: NVLink 3 -> 2 record(1) = 48; RDMA 3 -> 1 record(1) + 4
//     = 52; 1 forwards 1 -> 0 record(1) = 48.
// Dispatch RDMA 76 + 52, NVLink 48 + 56 + 48 + 48; combine: one row per
// record, RDMA 2 x 32, NVLink 4 x 32. Flat sends 48 + 56 + 48 = 152 across nodes.
static void test_layer_hier(void **state)
{
    ep_model_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.hidden = 8;
    cfg.moe_inter = 4;
    cfg.n_experts = 8;
    cfg.k_base = 4;
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 8, 4), EP_OK);
    ep_routes r[4];
    for (int i = 0; i < 4; i++)
        ep_routes_init(&r[i], 1, 4, 4);
    const int e0[4] = {2, 4, 6, 7}, e3[4] = {0, 5, 1, 3};
    for (int j = 0; j < 4; j++) {
        r[0].expert[j] = r[0].base_expert[j] = e0[j];
        r[3].base_expert[j] = e3[j];
        r[0].weight[j] = r[0].base_weight[j] = r[3].base_weight[j] = 0.25f;
    }
    r[3].expert[0] = 0;
    r[3].expert[1] = 5;
    r[3].weight[0] = r[3].weight[1] = 0.5f;
    r[0].n_tokens = r[3].n_tokens = 1;
    r[0].offsets[1] = 4;
    r[3].offsets[1] = 2;
    for (int i = 0; i < 4; i++)
        assert_int_equal(ep_routes_check(&r[i], 8), EP_OK);

    ep_sim_cluster c = hand_cluster(2, 2);
    c.hier_rdma_latency_us = 4;
    c.hier_nvlink_latency_us = 1;
    const int node_of[4] = {0, 0, 1, 1};
    ep_sim_layer L;
    ep_sim_layer_init(&L, 4);
    ep_comm_stats sum;
    ep_sim_layer_price(&L, &c, &cfg, &p, node_of, r, NULL, EP_DTYPE_F32, 1.0, &sum);
    assert_int_equal(sum.dispatch_bytes_inter, 152);
    assert_int_equal(L.hier_bytes[0][EP_SIM_STAGE_RDMA], 128);
    assert_int_equal(L.hier_bytes[0][EP_SIM_STAGE_NVLINK], 200);
    assert_int_equal(L.hier_bytes[1][EP_SIM_STAGE_RDMA], 64);
    assert_int_equal(L.hier_bytes[1][EP_SIM_STAGE_NVLINK], 128);
    // the planner's hier counters say the same
    assert_int_equal(L.hier_sum.dispatch_bytes_inter, 128);
    assert_int_equal(L.hier_sum.dispatch_bytes_intra, 200);
    assert_int_equal(L.hier_sum.combine_bytes_inter, 64);
    assert_int_equal(L.hier_sum.combine_bytes_intra, 128);
    // per rank: stage 1 in the inter fields, stage 2 in the intra fields
    assert_float_equal(L.hdispatch[0].send_inter, 76, 0);
    assert_float_equal(L.hdispatch[0].send_intra, 48, 0);
    assert_float_equal(L.hdispatch[0].recv_intra, 48, 0);
    assert_float_equal(L.hdispatch[1].recv_inter, 52, 0);
    assert_float_equal(L.hdispatch[1].send_intra, 48, 0);
    assert_float_equal(L.hdispatch[2].recv_inter, 76, 0);
    assert_float_equal(L.hdispatch[2].send_intra, 56, 0);
    assert_float_equal(L.hdispatch[2].recv_intra, 48, 0);
    assert_float_equal(L.hdispatch[3].send_inter, 52, 0);
    assert_float_equal(L.hdispatch[3].recv_intra, 56, 0);
    assert_float_equal(L.hcombine[2].send_inter, 32, 0);
    assert_float_equal(L.hcombine[0].recv_inter, 32, 0);
    assert_float_equal(L.hcombine[3].send_intra, 32, 0);
    // stage times: the slowest rank of each stage
    assert_float_equal(L.hier_us[0][EP_SIM_STAGE_RDMA], 4 + 76.0 / 500, 1e-9);
    assert_float_equal(L.hier_us[0][EP_SIM_STAGE_NVLINK], 1 + 56.0 / 1000, 1e-9);
    assert_float_equal(L.hier_us[1][EP_SIM_STAGE_RDMA], 4 + 32.0 / 500, 1e-9);
    assert_float_equal(L.hier_us[1][EP_SIM_STAGE_NVLINK], 1 + 32.0 / 1000, 1e-9);

    // One node: no RDMA stage; NVLink carries what flat sends.
    const int one_node[4] = {0, 0, 0, 0};
    ep_sim_layer_price(&L, &c, &cfg, &p, one_node, r, NULL, EP_DTYPE_F32, 1.0, &sum);
    assert_int_equal(L.hier_bytes[0][EP_SIM_STAGE_RDMA], 0);
    assert_int_equal(L.hier_bytes[0][EP_SIM_STAGE_NVLINK], sum.dispatch_bytes);
    assert_int_equal(L.hier_bytes[1][EP_SIM_STAGE_NVLINK], sum.combine_bytes);
    assert_true(L.hier_us[0][EP_SIM_STAGE_RDMA] == 0.0);

    ep_sim_layer_free(&L);
    for (int i = 0; i < 4; i++)
        ep_routes_free(&r[i]);
    ep_placement_free(&p);
}

// ---- cluster YAML -----------------------------------------------------------------

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static const char *good_yaml =
    "name: t\ngpu: g\nnodes: 3\ngpus_per_node: 5\nmem_gb: 11\nhbm_GBps: 7\n"
    "bf16_tflops: 13\nnvlink_GBps: 5\nnvlink_latency_us: 1.5\ninter_GBps: 2.5\n"
    "inter_latency_us: 4\n";

static void test_cluster_yaml(void **state)
{
    char dir[] = "/tmp/ep_test_sim_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/c.yaml", dir);
    ep_sim_cluster c;

    write_file(path, good_yaml);
    assert_int_equal(ep_sim_cluster_load(path, &c), EP_OK);
    assert_int_equal(c.n_nodes, 3);
    assert_int_equal(ep_sim_cluster_gpus(&c), 15);
    assert_float_equal(c.inter_GBps, 2.5, 0);
    assert_float_equal(c.nvlink_latency_us, 1.5, 0);
    assert_true(c.gemm_eff > 0 && c.gemm_eff <= 1); // defaulted
    assert_true(c.mem_usable > 0 && c.mem_usable <= 1);
    assert_int_equal(c.redundant_experts, 0); // defaulted: no EPLB replicas
    // absent hier keys: the flat links' achievable rates and latencies
    assert_float_equal(c.hier_rdma_GBps, 2.5 * c.inter_eff, 1e-12);
    assert_float_equal(c.hier_nvlink_GBps, 5 * c.nvlink_eff, 1e-12);
    assert_float_equal(c.hier_rdma_latency_us, 4, 0);
    assert_float_equal(c.hier_nvlink_latency_us, 1.5, 0);

    char text[1024];
    snprintf(text, sizeof text,
             "%shier_rdma_GBps: 43\nhier_rdma_latency_us: 9\nhier_nvlink_GBps: 150\n"
             "hier_nvlink_latency_us: 0\n",
             good_yaml);
    write_file(path, text);
    assert_int_equal(ep_sim_cluster_load(path, &c), EP_OK);
    assert_float_equal(c.hier_rdma_GBps, 43, 0);
    assert_float_equal(c.hier_rdma_latency_us, 9, 0);
    assert_float_equal(c.hier_nvlink_GBps, 150, 0);
    assert_float_equal(c.hier_nvlink_latency_us, 0, 0);
    snprintf(text, sizeof text, "%shier_rdma_GBps: 0\n", good_yaml);
    write_file(path, text);
    assert_int_equal(ep_sim_cluster_load(path, &c), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "hier_rdma_GBps"));

    // An unknown key names the file and the key.
    snprintf(text, sizeof text, "%sbandwidth: 3\n", good_yaml);
    write_file(path, text);
    assert_int_equal(ep_sim_cluster_load(path, &c), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "bandwidth"));
    assert_non_null(strstr(ep_last_error(), path));

    // A missing key, a wrong type, an out-of-range efficiency.
    write_file(path, "name: t\ngpu: g\nnodes: 1\n");
    assert_int_equal(ep_sim_cluster_load(path, &c), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "gpus_per_node"));
    snprintf(text, sizeof text, "%s", good_yaml);
    char *n3 = strstr(text, "nodes: 3");
    memcpy(n3, "nodes: x", 8);
    write_file(path, text);
    assert_int_equal(ep_sim_cluster_load(path, &c), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "nodes"));
    snprintf(text, sizeof text, "%sgemm_efficiency: 1.5\n", good_yaml);
    write_file(path, text);
    assert_int_equal(ep_sim_cluster_load(path, &c), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "gemm_efficiency"));

    // redundant_experts: an integer >= 0; bad values name the key and what was found.
    snprintf(text, sizeof text, "%sredundant_experts: 16\n", good_yaml);
    write_file(path, text);
    assert_int_equal(ep_sim_cluster_load(path, &c), EP_OK);
    assert_int_equal(c.redundant_experts, 16);
    const char *bad_red[] = {"-1", "1.5", "many", "[2]"};
    for (size_t i = 0; i < EP_ARRAY_LEN(bad_red); i++) {
        snprintf(text, sizeof text, "%sredundant_experts: %s\n", good_yaml, bad_red[i]);
        write_file(path, text);
        assert_int_equal(ep_sim_cluster_load(path, &c), EP_ERR_CONFIG);
        assert_non_null(strstr(ep_last_error(), "redundant_experts"));
        assert_non_null(strstr(ep_last_error(), path));
    }
    snprintf(text, sizeof text, "%sredundant_experts: -1\n", good_yaml);
    write_file(path, text);
    assert_int_equal(ep_sim_cluster_load(path, &c), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "found -1"));

    assert_int_equal(ep_sim_cluster_load("no-such-cluster-preset", &c), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "no-such-cluster-preset"));
    unlink(path);
    rmdir(dir);
}

// Every shipped preset loads; names match files; the 4x8-h100 numbers.
static void test_cluster_presets(void **state)
{
    char **paths = NULL;
    int n = 0;
    assert_int_equal(ep_sim_cluster_presets(&paths, &n), EP_OK);
    assert_int_equal(n, 8);
    for (int i = 0; i < n; i++) {
        ep_sim_cluster c;
        assert_int_equal(ep_sim_cluster_load(paths[i], &c), EP_OK);
        char want[128];
        snprintf(want, sizeof want, "/%s.yaml", c.name);
        assert_non_null(strstr(paths[i], want));
        assert_int_equal(c.gpus_per_node, 8);
        assert_true(c.nvlink_GBps > c.inter_GBps); // NVLink beats the NIC per GPU
    }
    ep_sim_free_list(paths, n);
    ep_sim_cluster c;
    assert_int_equal(ep_sim_cluster_load("4x8-h100", &c), EP_OK);
    assert_int_equal(ep_sim_cluster_gpus(&c), 32);
    assert_float_equal(c.mem_gb, 80, 0);
    assert_float_equal(c.bf16_tflops, 989, 0);
    assert_float_equal(c.hier_rdma_GBps, 43, 0); // DeepEP's EP16 normal-kernel RDMA figure
    assert_float_equal(c.hier_nvlink_GBps, 344, 0);
    assert_int_equal(ep_sim_cluster_load("8x8-h200", &c), EP_OK);
    assert_int_equal(c.n_nodes, 8);
    assert_float_equal(c.mem_gb, 141, 0);
}

// Parameter counts against the architecture by hand, and the memory plan.
static void test_params_and_plan(void **state)
{
    ep_model_cfg cfg;
    assert_int_equal(ep_model_cfg_load("qwen3-235b-a22b", &cfg), EP_OK);
    ep_sim_params p;
    ep_sim_params_count(&cfg, &p);
    assert_int_equal(p.expert, (int64_t)3 * 4096 * 1536);
    // q 64*128, k/v 4*128 each, o; q_norm/k_norm 128 each; input_layernorm
    int64_t attn = (int64_t)4096 * 64 * 128 * 2 + (int64_t)4096 * 4 * 128 * 2 + 128 * 2 + 4096;
    assert_int_equal(p.layer_attn[5], attn);
    // + post_attention_layernorm + gate [128, 4096]
    assert_int_equal(p.layer_dense[5], attn + 4096 + (int64_t)128 * 4096);
    assert_int_equal(p.embed, (int64_t)151936 * 4096);
    // ~235 B parameters in total (the model's name)
    assert_true(p.total > 230e9 && p.total < 240e9);
    ep_sim_params_free(&p);

    ep_sim_cluster c;
    assert_int_equal(ep_sim_cluster_load("1x8-h100", &c), EP_OK);
    ep_sim_mem m;
    ep_sim_plan_memory(&cfg, &c, 4096, 16, 4096, 0, &m);
    assert_int_equal(m.experts_per_gpu, 16);
    assert_float_equal(m.routed_bytes, 2.0 * 94 * 16 * 3 * 4096 * 1536, 1);
    // GQA cache: 2 (k, v) * 4 heads * 128 * 2 bytes per token per layer
    assert_int_equal(ep_sim_kv_bytes_per_token_layer(&cfg), 2048);
    assert_float_equal(m.kv_bytes, 16.0 * 4096 * 94 * 2048, 1);
    assert_false(m.fits); // 470 GB of weights do not fit 8 x 80 GB
    ep_sim_plan_memory(&cfg, &c, 4096, 16, 4096, 8, &m);
    assert_int_equal(m.experts_per_gpu, 17); // (128 + 8) / 8
    assert_int_equal(ep_sim_cluster_load("4x8-h100", &c), EP_OK);
    ep_sim_plan_memory(&cfg, &c, 4096, 16, 4096, 0, &m);
    assert_int_equal(m.experts_per_gpu, 4);
    assert_true(m.fits);
    assert_float_equal(m.total_bytes,
                       m.replicated_bytes + m.routed_bytes + m.kv_bytes + m.workspace_bytes, 1);

    // MLA: the compressed cache (512 latent + 64 rope) * 2 bytes.
    assert_int_equal(ep_model_cfg_load("deepseek-v2.5", &cfg), EP_OK);
    assert_int_equal(ep_sim_kv_bytes_per_token_layer(&cfg), (512 + 64) * 2);
    ep_sim_plan_memory(&cfg, &c, 4096, 16, 4096, 0, &m);
    assert_int_equal(m.experts_per_gpu, 5);
    assert_true(m.shared_bytes > 0); // 2 shared experts + the dense layer 0
}

// FP8 block-quantized weights: the Linear weights of attention and experts
// at 1 byte a value + 4 per 128 x 128 block, gates, norms, embedding and
// lm_head at 2; partial blocks counted whole.
static void test_plan_fp8(void **state)
{
    (void)state;
    ep_model_cfg cfg;
    assert_int_equal(ep_model_cfg_load("qwen3-235b-a22b", &cfg), EP_OK);
    ep_sim_cluster c;
    assert_int_equal(ep_sim_cluster_load("1x8-h100", &c), EP_OK);
    ep_sim_mem bf, f8;
    ep_sim_plan_memory(&cfg, &c, 4096, 16, 4096, 0, &bf);
    cfg.quant = EP_QUANT_FP8_BLOCK;
    cfg.quant_block[0] = cfg.quant_block[1] = 128;
    ep_sim_plan_memory(&cfg, &c, 4096, 16, 4096, 0, &f8);
    // gate/up [1536, 4096] and down [4096, 1536]: 12 x 32 blocks each.
    const double expert = 3.0 * 4096 * 1536 + 4.0 * 3 * 12 * 32;
    assert_float_equal(f8.routed_bytes, 94.0 * 16 * expert, 1);
    // q [8192, 4096], k, v [512, 4096], o [4096, 8192]; q/k norms and
    // input_layernorm in BF16.
    const double attn = 2 * (8192.0 * 4096 + 4 * 64 * 32) + 2 * (512.0 * 4096 + 4 * 4 * 32) +
                        2.0 * (128 + 128 + 4096);
    assert_float_equal(f8.attn_bytes, 94 * attn, 1);
    assert_float_equal(f8.gate_bytes, bf.gate_bytes, 0);
    assert_float_equal(f8.embed_head_bytes, bf.embed_head_bytes, 0);
    assert_float_equal(f8.shared_bytes, bf.shared_bytes, 0); // post-attention norms only
    assert_float_equal(f8.kv_bytes, bf.kv_bytes, 0);
    assert_float_equal(f8.workspace_bytes, bf.workspace_bytes, 0);
    assert_false(bf.fits);
    assert_true(f8.fits); // 235 GB of FP8 weights fit 8 x 80 GB

    // Odd shapes: MLA's kv_a_proj_with_mqa [576, 5120] of DeepSeek-V2.5 is
    // 5 x 40 blocks (the last block row 64 high); lm_head stays BF16.
    assert_int_equal(ep_model_cfg_load("deepseek-v2.5", &cfg), EP_OK);
    cfg.quant = EP_QUANT_FP8_BLOCK;
    cfg.quant_block[0] = cfg.quant_block[1] = 128;
    const int64_t kva[2] = {576, 5120}, head[2] = {102400, 5120}, norm[1] = {5120};
    assert_float_equal(
        ep_sim_tensor_bytes(&cfg, "model.layers.3.self_attn.kv_a_proj_with_mqa.weight", 2, kva),
        576.0 * 5120 + 4.0 * 5 * 40, 0);
    assert_float_equal(ep_sim_tensor_bytes(&cfg, "lm_head.weight", 2, head), 2.0 * 102400 * 5120,
                       0);
    assert_float_equal(ep_sim_tensor_bytes(&cfg, "model.norm.weight", 1, norm), 2.0 * 5120, 0);
    const int64_t g[2] = {160, 5120};
    assert_float_equal(ep_sim_tensor_bytes(&cfg, "model.layers.3.mlp.gate.weight", 2, g),
                       2.0 * 160 * 5120, 0);
    cfg.quant = EP_QUANT_NONE;
    assert_float_equal(
        ep_sim_tensor_bytes(&cfg, "model.layers.3.self_attn.kv_a_proj_with_mqa.weight", 2, kva),
        2.0 * 576 * 5120, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a2a_rank),        cmocka_unit_test(test_experts_roofline),
        cmocka_unit_test(test_layer_two_ranks), cmocka_unit_test(test_cluster_yaml),
        cmocka_unit_test(test_cluster_presets), cmocka_unit_test(test_params_and_plan),
        cmocka_unit_test(test_plan_fp8),        cmocka_unit_test(test_hier_stage),
        cmocka_unit_test(test_layer_hier),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
