// The simulator against the real planner and router: its per-rank traffic
// matrix adds up, rank by rank, to ep_comm_count's bytes for the same routes
// (home placement and EPLB replicas, odd sizes, fixed seeds), and a whole
// ep_sim_run of a tiny preset is consistent (baseline K, Ban saves bytes,
// speedup reference, determinism).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/weights.h"
#include "sim/freq.h"
#include "sim/sim.h"

// Random routes for W ranks: T_r tokens of K in [1, kmax] distinct experts.
static void random_routes(ep_routes *r, int W, int E, int kmax, int k_base, uint64_t seed)
{
    ep_rng g;
    ep_rng_seed(&g, seed);
    for (int w = 0; w < W; w++) {
        int T = 3 + (int)(ep_rng_next(&g) % 11); // 3..13 tokens, one rank may get odd sizes
        ep_routes_init(&r[w], T, kmax, k_base);
        r[w].n_tokens = T;
        int nz = 0;
        for (int i = 0; i < T; i++) {
            r[w].offsets[i] = nz;
            int K = 1 + (int)(ep_rng_next(&g) % (uint64_t)kmax);
            int kept[16], n = 0;
            while (n < K) {
                int e = (int)(ep_rng_next(&g) % (uint64_t)E), dup = 0;
                for (int q = 0; q < n; q++)
                    dup |= kept[q] == e;
                if (!dup) kept[n++] = e;
            }
            for (int j = 0; j < K; j++) {
                r[w].expert[nz] = kept[j];
                r[w].weight[nz++] = 1.0f / K;
            }
            for (int j = 0; j < k_base; j++) {
                r[w].base_expert[i * k_base + j] = (j < K) ? kept[j] : (kept[0] + j) % E;
                r[w].base_weight[i * k_base + j] = 0.1f;
            }
            // the counterfactual needs distinct experts too
            for (int j = K; j < k_base; j++)
                for (int q = 0; q < j; q++)
                    if (r[w].base_expert[i * k_base + q] == r[w].base_expert[i * k_base + j]) {
                        r[w].base_expert[i * k_base + j] =
                            (r[w].base_expert[i * k_base + j] + 1) % E;
                        q = -1;
                    }
        }
        r[w].offsets[T] = nz;
        assert_int_equal(ep_routes_check(&r[w], E), EP_OK);
    }
}

static ep_sim_cluster cluster(int nodes, int gpn)
{
    ep_sim_cluster c;
    memset(&c, 0, sizeof c);
    c.n_nodes = nodes;
    c.gpus_per_node = gpn;
    c.mem_gb = c.hbm_GBps = c.bf16_tflops = 1;
    c.nvlink_GBps = 2;
    c.inter_GBps = 1;
    c.nvlink_latency_us = 1;
    c.inter_latency_us = 3;
    c.gemm_eff = c.hbm_eff = c.nvlink_eff = c.inter_eff = c.mem_usable = 1;
    return c;
}

// For each rank: bytes it sends == ep_comm_count's dispatch bytes (intra and
// inter), bytes it receives in the combine == its combine bytes; totals
// over ranks match; pair loads match ep_placement_rank_load.
static void check_against_planner(const ep_placement *p, const int *node_of, ep_routes *r, int W,
                                  const int *const *pr, int hidden, ep_dtype wire)
{
    ep_model_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.hidden = hidden;
    cfg.moe_inter = 5;
    cfg.n_experts = p->n_experts;
    ep_sim_cluster c = cluster(node_of[W - 1] + 1, 1);
    ep_sim_layer L;
    ep_sim_layer_init(&L, W);
    ep_comm_stats sum;
    ep_sim_layer_price(&L, &c, &cfg, p, node_of, r, pr, wire, 1.0, &sum);

    ep_comm_stats tot = {0};
    double recv_d = 0, send_d = 0, recv_c = 0, send_c = 0;
    int64_t load[16] = {0};
    for (int w = 0; w < W; w++) {
        ep_comm_stats st;
        ep_comm_count(&r[w], p, pr ? pr[w] : NULL, w, node_of, hidden, wire, &st);
        ep_comm_stats_add(&tot, &st);
        ep_placement_rank_load(p, &r[w], pr ? pr[w] : NULL, load);
        const ep_sim_traffic *d = &L.dispatch[w], *cb = &L.combine[w];
        assert_float_equal(d->send_intra + d->send_inter, (double)st.dispatch_bytes, 0);
        assert_float_equal(d->send_inter, (double)st.dispatch_bytes_inter, 0);
        assert_float_equal(cb->recv_intra + cb->recv_inter, (double)st.combine_bytes, 0);
        assert_float_equal(cb->recv_inter, (double)st.combine_bytes_inter, 0);
        send_d += d->send_intra + d->send_inter;
        recv_d += d->recv_intra + d->recv_inter;
        send_c += cb->send_intra + cb->send_inter;
        recv_c += cb->recv_intra + cb->recv_inter;
    }
    assert_int_equal(sum.dispatch_bytes, tot.dispatch_bytes);
    assert_int_equal(sum.combine_bytes, tot.combine_bytes);
    assert_int_equal(sum.base_dispatch_bytes, tot.base_dispatch_bytes);
    assert_int_equal(sum.pairs, tot.pairs);
    assert_float_equal(send_d, recv_d, 0);
    assert_float_equal(send_c, recv_c, 0);
    assert_true(tot.dispatch_bytes > 0); // the case exercises remote traffic
    for (int w = 0; w < W; w++)
        assert_int_equal(L.recv_pairs[w], load[w]);
    ep_sim_layer_free(&L);
}

static void test_bytes_equal_planner(void **state)
{
    const int E = 13, W = 5;
    const int node_of[5] = {0, 0, 0, 1, 1}; // uneven nodes: 3 + 2 ranks
    for (int kind = 0; kind < 2; kind++) {
        ep_placement p;
        assert_int_equal(
            ep_placement_init(&p, kind ? EP_PLACE_ROUND_ROBIN : EP_PLACE_CONTIGUOUS, E, W), EP_OK);
        for (int wire = 0; wire < 2; wire++) {
            ep_routes r[5];
            random_routes(r, W, E, 7, 5, 11 + 7 * kind + wire);
            check_against_planner(&p, node_of, r, W, NULL, 7, wire ? EP_DTYPE_BF16 : EP_DTYPE_F32);
            for (int w = 0; w < W; w++)
                ep_routes_free(&r[w]);
        }
        ep_placement_free(&p);
    }
}

// EPLB replicas: pairs go to the rank ep_placement_choose picked.
static void test_bytes_equal_planner_replicas(void **state)
{
    const int E = 11, W = 4, R = 5;
    const int node_of[4] = {0, 0, 1, 1};
    double load[11];
    for (int e = 0; e < E; e++)
        load[e] = 1.0 + (e % 3 == 0 ? 9.0 : 0.0) + e * 0.1; // a few hot experts
    ep_placement p;
    assert_int_equal(ep_placement_init_eplb(&p, load, E, R, 1, 2, W), EP_OK);
    ep_routes r[4];
    random_routes(r, W, E, 6, 4, 2024);
    int *pr[4];
    int64_t rank_load[4];
    int visit[4];
    for (int w = 0; w < W; w++) {
        pr[w] = malloc(sizeof(int) * (size_t)ep_routes_nnz(&r[w]));
        memset(rank_load, 0, sizeof rank_load);
        ep_placement_choose(&p, &r[w], w, rank_load, visit, pr[w]);
    }
    check_against_planner(&p, node_of, r, W, (const int *const *)pr, 13, EP_DTYPE_BF16);
    for (int w = 0; w < W; w++) {
        free(pr[w]);
        ep_routes_free(&r[w]);
    }
    ep_placement_free(&p);
}

// The two-stage model from scratch (not from the plan): per token, the pairs
// on each destination rank; to its own node's ranks a record over NVLink;
// to a remote node one RDMA record with all that node's pairs (and their
// destination ranks: ep_comm_hier_record_bytes) to the rank with the
// sender's local index (modulo the node's size), which forwards a record to
// each other rank of the node holding pairs. One combine row back per
// record. Checks every rank's stage traffic, the stage totals, and that they
// equal the planner's hier counters (ep_comm_count_mode) rank by rank summed.
static void check_hier(const ep_placement *p, const int *node_of, ep_routes *r, int W,
                       const int *const *pr, int hidden, ep_dtype wire)
{
    ep_model_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.hidden = hidden;
    cfg.moe_inter = 5;
    cfg.n_experts = p->n_experts;
    ep_sim_cluster c = cluster(2, 1);
    ep_sim_layer L;
    ep_sim_layer_init(&L, W);
    ep_comm_stats sum;
    ep_sim_layer_price(&L, &c, &cfg, p, node_of, r, pr, wire, 1.0, &sum);

    enum { MW = 8 };
    assert_true(W <= MW);
    double d_send[MW][2] = {{0}}, d_recv[MW][2] = {{0}}, c_send[MW][2] = {{0}},
           c_recv[MW][2] = {{0}};
    int64_t tot[2][2] = {{0}};
    const int64_t crow = ep_comm_combine_record_bytes(hidden, wire);
    for (int w = 0; w < W; w++) {
        int local = 0, size[MW] = {0};
        for (int q = 0; q < W; q++) {
            local += q < w && node_of[q] == node_of[w];
            size[node_of[q]]++;
        }
        for (int i = 0; i < r[w].n_tokens; i++) {
            int on_rank[MW] = {0}, on_node[MW] = {0};
            for (int j = r[w].offsets[i]; j < r[w].offsets[i + 1]; j++) {
                int d = pr ? pr[w][j] : p->rank_of[r[w].expert[j]];
                on_rank[d]++;
                if (node_of[d] != node_of[w]) on_node[node_of[d]]++;
            }
            for (int n = 0; n < W; n++) {
                if (!on_node[n]) continue;
                int f = -1; // the local-th rank of node n (mod its size)
                for (int q = 0, k = 0; q < W && f < 0; q++)
                    if (node_of[q] == n && k++ == local % size[n]) f = q;
                int64_t b = ep_comm_hier_record_bytes(on_node[n], hidden, wire);
                d_send[w][0] += (double)b;
                d_recv[f][0] += (double)b;
                c_send[f][0] += (double)crow;
                c_recv[w][0] += (double)crow;
                tot[0][0] += b;
                tot[1][0] += crow;
            }
            for (int d = 0; d < W; d++) {
                if (!on_rank[d]) continue;
                int from = w;
                if (node_of[d] != node_of[w])
                    for (int q = 0, k = 0; q < W; q++)
                        if (node_of[q] == node_of[d] && k++ == local % size[node_of[d]]) {
                            from = q;
                            break;
                        }
                if (from == d) continue;
                int64_t b = ep_comm_dispatch_record_bytes(on_rank[d], hidden, wire);
                d_send[from][1] += (double)b;
                d_recv[d][1] += (double)b;
                c_send[d][1] += (double)crow;
                c_recv[from][1] += (double)crow;
                tot[0][1] += b;
                tot[1][1] += crow;
            }
        }
    }
    for (int w = 0; w < W; w++) {
        assert_float_equal(L.hdispatch[w].send_inter, d_send[w][0], 0);
        assert_float_equal(L.hdispatch[w].recv_inter, d_recv[w][0], 0);
        assert_float_equal(L.hdispatch[w].send_intra, d_send[w][1], 0);
        assert_float_equal(L.hdispatch[w].recv_intra, d_recv[w][1], 0);
        assert_float_equal(L.hcombine[w].send_inter, c_send[w][0], 0);
        assert_float_equal(L.hcombine[w].recv_inter, c_recv[w][0], 0);
        assert_float_equal(L.hcombine[w].send_intra, c_send[w][1], 0);
        assert_float_equal(L.hcombine[w].recv_intra, c_recv[w][1], 0);
    }
    for (int ph = 0; ph < 2; ph++)
        for (int st = 0; st < 2; st++)
            assert_int_equal(L.hier_bytes[ph][st], tot[ph][st]);
    assert_true(tot[0][0] > 0 && tot[0][1] > 0); // both stages exercised
    ep_comm_stats plan = {0};
    for (int w = 0; w < W; w++) {
        ep_comm_stats st;
        ep_comm_count_mode(&r[w], p, pr ? pr[w] : NULL, w, node_of, hidden, wire, EP_DISPATCH_HIER,
                           &st);
        ep_comm_stats_add(&plan, &st);
    }
    assert_int_equal(plan.dispatch_bytes_inter, tot[0][0]);
    assert_int_equal(plan.dispatch_bytes_intra, tot[0][1]);
    assert_int_equal(plan.combine_bytes_inter, tot[1][0]);
    assert_int_equal(plan.combine_bytes_intra, tot[1][1]);
    assert_int_equal(L.hier_sum.dispatch_bytes, plan.dispatch_bytes);
    assert_int_equal(L.hier_sum.base_dispatch_bytes_inter, plan.base_dispatch_bytes_inter);
    // One combine row per (token, node) never exceeds flat's one per rank.
    // (Dispatch can: a stage-1 record carries 4 bytes of destination rank per
    // pair, more than flat for a token reaching one rank of a node when rows
    // are as short as here.)
    assert_true(tot[1][0] <= sum.combine_bytes_inter);
    ep_sim_layer_free(&L);
}

static void test_hier_bytes(void **state)
{
    const int E = 17;
    // uneven nodes, interleaved nodes, three nodes of 2-3 ranks
    const int maps[3][8] = {{0, 0, 0, 1, 1}, {0, 1, 0, 1, 1, 0}, {0, 0, 1, 1, 1, 2, 2, 2}};
    const int worlds[3] = {5, 6, 8};
    for (int m = 0; m < 3; m++) {
        const int W = worlds[m];
        for (int kind = 0; kind < 2; kind++) {
            ep_placement p;
            assert_int_equal(
                ep_placement_init(&p, kind ? EP_PLACE_ROUND_ROBIN : EP_PLACE_CONTIGUOUS, E, W),
                EP_OK);
            ep_routes r[8];
            random_routes(r, W, E, 9, 6, 101 + 13 * m + kind);
            check_hier(&p, maps[m], r, W, NULL, 7, kind ? EP_DTYPE_BF16 : EP_DTYPE_F32);
            for (int w = 0; w < W; w++)
                ep_routes_free(&r[w]);
            ep_placement_free(&p);
        }
    }
    // EPLB replicas: the rank each pair was given decides its node.
    const int node_of[4] = {0, 0, 1, 1};
    double load[11];
    for (int e = 0; e < 11; e++)
        load[e] = 1.0 + (e % 3 == 0 ? 9.0 : 0.0) + e * 0.1;
    ep_placement p;
    assert_int_equal(ep_placement_init_eplb(&p, load, 11, 5, 1, 2, 4), EP_OK);
    ep_routes r[4];
    random_routes(r, 4, 11, 6, 4, 77);
    int *pr[4];
    int64_t rank_load[4];
    int visit[4];
    for (int w = 0; w < 4; w++) {
        pr[w] = malloc(sizeof(int) * (size_t)ep_routes_nnz(&r[w]));
        memset(rank_load, 0, sizeof rank_load);
        ep_placement_choose(&p, &r[w], w, rank_load, visit, pr[w]);
    }
    check_hier(&p, node_of, r, 4, (const int *const *)pr, 13, EP_DTYPE_BF16);
    for (int w = 0; w < 4; w++) {
        free(pr[w]);
        ep_routes_free(&r[w]);
    }
    ep_placement_free(&p);
}

// Frequency routing: the layer stretch, the CSV reader and its errors, and a
// run whose logits come from a callback instead of the synthetic gate.
typedef struct {
    const double *f;
    int E, n_rows, n_moe;
} freq_user;

static void freq_cb(void *user, int layer, int rank, int T, float *logits)
{
    const freq_user *u = user;
    uint64_t rng = 99 + (uint64_t)layer * 16 + (uint64_t)rank;
    ep_freq_logits(u->f + (size_t)ep_freq_row(layer, u->n_moe, u->n_rows) * u->E, u->E, T, 1.0,
                   &rng, logits);
}

static void test_freq(void **state)
{
    // 48 file layers over 94: layer m takes row round(m * 47 / 93)
    assert_int_equal(ep_freq_row(0, 94, 48), 0);
    assert_int_equal(ep_freq_row(93, 94, 48), 47);
    assert_int_equal(ep_freq_row(46, 94, 48), 23); // 23.25
    assert_int_equal(ep_freq_row(47, 94, 48), 24); // 23.75
    assert_int_equal(ep_freq_row(5, 48, 48), 5);   // same depth: identity
    assert_int_equal(ep_freq_row(3, 1, 48), 0);

    char path[] = "/tmp/ep_test_freq_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("Layer,Language,Expert_0,Expert_1,Expert_2,Expert_3\n"
          "0,English,0.1,0.1,1.7,0.1\n0,Hebrew,1,1,0,0\n1,English,0.1,0.1,1.7,0.1\n",
          f);
    fclose(f);
    double *fq = NULL;
    int n = 0;
    assert_int_equal(ep_freq_load(path, "English", 4, &fq, &n), EP_OK);
    assert_int_equal(n, 2);
    assert_float_equal(fq[2], 1.7, 0);
    assert_float_equal(fq[4 + 3], 0.1, 0);
    assert_int_equal(ep_freq_load(path, "French", 4, &fq, &n), EP_ERR_FORMAT);
    assert_non_null(strstr(ep_last_error(), "French"));
    assert_int_equal(ep_freq_load(path, "English", 5, &fq, &n), EP_ERR_FORMAT);
    assert_non_null(strstr(ep_last_error(), "expected 5 expert columns"));
    unlink(path);

    ep_model_cfg cfg;
    assert_int_equal(ep_model_cfg_load("tiny-qwen3-moe", &cfg), EP_OK);
    const int E = cfg.n_experts;
    double *big = calloc((size_t)2 * E, sizeof(double));
    for (int e = 0; e < 2 * E; e++)
        big[e] = e % E == 5 ? 0.9 : 0.05;
    freq_user u = {big, E, 2, ep_model_n_moe_layers(&cfg)};
    ep_sim_cluster c = cluster(2, 2);
    ep_sim_opts o;
    ep_sim_opts_default(&o);
    o.tokens = 64;
    o.sample_tokens = 0;
    o.sample_layers = 2;
    o.quiet = true;
    o.logits_fn = freq_cb;
    o.logits_user = &u;
    const char *pols[] = {"baseline"};
    ep_sim_report rep;
    assert_int_equal(ep_sim_run(&cfg, &c, pols, 1, &o, &rep), EP_OK);
    assert_float_equal(rep.res[0].avg_k, cfg.k_base, 0);
    assert_true(rep.res[0].hier_rdma_bytes_per_token_layer > 0);
    ep_sim_report_free(&rep);
    free(big);
    free(fq);
}

// A whole run of tiny-qwen3-moe on 2 nodes x 2 GPUs.
static void test_run_tiny(void **state)
{
    ep_model_cfg cfg;
    assert_int_equal(ep_model_cfg_load("tiny-qwen3-moe", &cfg), EP_OK);
    ep_sim_cluster c = cluster(2, 2);
    snprintf(c.name, sizeof c.name, "2x2-test");
    ep_sim_opts o;
    ep_sim_opts_default(&o);
    o.tokens = 77;
    o.sample_tokens = 0; // route all of them
    o.sample_layers = 3;
    o.context = 13;
    o.quiet = true;
    const char *pols[] = {"baseline", "ban"};
    ep_sim_report rep, rep2;
    assert_int_equal(ep_sim_run(&cfg, &c, pols, 2, &o, &rep), EP_OK);
    assert_int_equal(rep.n_pol, 2);
    assert_int_equal(rep.n_sampled, 3);
    const ep_sim_result *b = &rep.res[0], *n = &rep.res[1];
    assert_int_equal(b->total.tokens, (int64_t)4 * 77 * 3);
    assert_float_equal(b->avg_k, cfg.k_base, 0);
    assert_float_equal(b->saved_pct, 0, 1e-12); // baseline is its own counterfactual
    assert_float_equal(b->speedup, 1.0, 1e-12);
    assert_true(n->avg_k < cfg.k_base && n->avg_k >= 3.0);
    assert_true(n->bytes_per_token_layer < b->bytes_per_token_layer);
    assert_true(n->saved_pct > 0 && n->saved_pct < 100);
    assert_float_equal(n->base_bytes_per_token_layer, b->base_bytes_per_token_layer, 1e-9);
    assert_true(n->experts_us < b->experts_us);
    assert_true(n->speedup > 1.0);
    assert_true(b->load_imbalance >= 1.0);
    assert_float_equal(b->step_us,
                       b->dense_us + b->head_us + b->dispatch_us + b->experts_us + b->combine_us,
                       1e-6);
    assert_float_equal(b->tokens_per_s_gpu, 77 * 1e6 / b->step_us, 1e-6);

    // Deterministic; the EPLB rows appear with --replicas and balance better.
    o.n_redundant = 4;
    assert_int_equal(ep_sim_run(&cfg, &c, pols, 2, &o, &rep2), EP_OK);
    assert_int_equal(rep2.n_pol, 4);
    assert_string_equal(rep2.res[1].label, "baseline+eplb");
    assert_float_equal(rep2.res[0].step_us, b->step_us, 0);
    assert_int_equal(rep2.res[2].total.dispatch_bytes, n->total.dispatch_bytes);
    assert_true(rep2.res[1].load_imbalance <= b->load_imbalance);
    ep_sim_report_free(&rep2);

    // The two-stage model: the same routes and bytes, the phases are its
    // stages in sequence, fewer bytes cross nodes (dedup per node).
    o.n_redundant = 0;
    o.hier = true;
    assert_int_equal(ep_sim_run(&cfg, &c, pols, 2, &o, &rep2), EP_OK);
    for (int i = 0; i < 2; i++) {
        const ep_sim_result *h = &rep2.res[i], *f = &rep.res[i];
        assert_int_equal(h->total.dispatch_bytes, f->total.dispatch_bytes);
        assert_float_equal(h->hier_rdma_bytes_per_token_layer, f->hier_rdma_bytes_per_token_layer,
                           0);
        assert_float_equal(h->dispatch_us, h->stage_us[0][0] + h->stage_us[0][1], 1e-6);
        assert_float_equal(h->combine_us, h->stage_us[1][0] + h->stage_us[1][1], 1e-6);
        assert_float_equal(h->experts_us, f->experts_us, 0);
        assert_true(h->hier_rdma_bytes_per_token_layer > 0);
        assert_true(h->hier_rdma_bytes_per_token_layer < f->inter_bytes_per_token_layer);
        assert_float_equal(h->hier_rdma_bytes_per_token_layer,
                           (double)(h->hier_bytes[0][0] + h->hier_bytes[1][0]) / h->total.tokens,
                           1e-9);
    }
    ep_sim_report_free(&rep2);
    o.hier = false;

    // Errors name what is wrong.
    const char *bad[] = {"no-such-policy"};
    assert_int_not_equal(ep_sim_run(&cfg, &c, bad, 1, &o, &rep2), EP_OK);
    assert_non_null(strstr(ep_last_error(), "no-such-policy"));
    ep_sim_report_free(&rep);
    ep_sim_report_free(NULL);
}

// Replay: the routes come from a callback; the run's bytes must equal the
// planner's for exactly those routes at the layers it sampled.
static void fill_fixed(void *user, int layer, int64_t first, int T, ep_routes *r)
{
    const int E = *(const int *)user;
    r->n_tokens = T;
    int nz = 0;
    for (int i = 0; i < T; i++) {
        int64_t g = first + i;
        int a = (int)((g * 7 + layer) % E), b = (int)((g * 3 + 1) % E);
        if (b == a) b = (a + 1) % E;
        int K = (g % 3 == 0) ? 1 : 2; // variable K: every third token keeps one expert
        r->offsets[i] = nz;
        r->expert[nz] = a;
        r->weight[nz++] = 1.0f / K;
        if (K == 2) {
            r->expert[nz] = b;
            r->weight[nz++] = 0.5f;
        }
        for (int j = 0; j < r->k_base; j++)
            r->base_expert[i * r->k_base + j] = (a + j) % E;
    }
    r->offsets[T] = nz;
}

static void test_replay(void **state)
{
    ep_model_cfg cfg;
    assert_int_equal(ep_model_cfg_load("tiny-qwen3-moe", &cfg), EP_OK);
    int E = cfg.n_experts;
    ep_sim_cluster c = cluster(1, 3);
    ep_sim_opts o;
    ep_sim_opts_default(&o);
    o.tokens = 11;
    o.sample_tokens = 0;
    o.sample_layers = 2;
    o.quiet = true;
    o.replay = fill_fixed;
    o.replay_user = &E;
    o.replay_max_k = 2;
    o.wire = EP_DTYPE_F32;
    ep_sim_report rep;
    assert_int_equal(ep_sim_run(&cfg, &c, NULL, 0, &o, &rep), EP_OK);
    assert_int_equal(rep.n_pol, 1);
    assert_string_equal(rep.res[0].label, "replay");

    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, E, 3), EP_OK);
    const int node_of[3] = {0, 0, 0};
    ep_routes r;
    ep_routes_init(&r, 11, 2, cfg.k_base);
    int64_t disp = 0, comb = 0, pairs = 0;
    for (int li = 0; li < rep.n_sampled; li++)
        for (int w = 0; w < 3; w++) {
            fill_fixed(&E, rep.layers[li], (int64_t)w * 11, 11, &r);
            ep_comm_stats st;
            ep_comm_count(&r, &p, NULL, w, node_of, cfg.hidden, EP_DTYPE_F32, &st);
            disp += st.dispatch_bytes;
            comb += st.combine_bytes;
            pairs += st.pairs;
        }
    assert_true(disp > 0);
    assert_int_equal(rep.res[0].total.dispatch_bytes, disp);
    assert_int_equal(rep.res[0].total.combine_bytes, comb);
    assert_int_equal(rep.res[0].total.pairs, pairs);
    assert_float_equal(rep.res[0].avg_k, (double)pairs / (2 * 3 * 11), 1e-12);
    ep_routes_free(&r);
    ep_placement_free(&p);
    ep_sim_report_free(&rep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_equal_planner),
        cmocka_unit_test(test_bytes_equal_planner_replicas),
        cmocka_unit_test(test_hier_bytes),
        cmocka_unit_test(test_freq),
        cmocka_unit_test(test_run_tiny),
        cmocka_unit_test(test_replay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
