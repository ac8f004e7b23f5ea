// The MoE layer with activations on the device (ep_moe_forward_dev) on the
// emulated or a real device, against
//  - ep_moe_forward (backend cuda, host arrays, CPU router): the same bits
//    wherever it routes the same with the same weights, within 1e-5 (f32
//    wire) or one ulp (bf16, f16 wires) where only the weights' last bits
//    differ (the calls of each kind are printed);
//  - ep_moe_forward_routes with the same routes (backend cuda, host arrays):
//    the same bits for f32, bf16, f16 and fp8 wires (same records, same kernels, the
//    same per-token order of the combine), and the same stats (tokens, pairs,
//    sends, planned and measured bytes, records and pairs computed);
//  - ep_moe_reference_routes (CPU, fp32) within CUDA_TEST_BF16_TOL;
//  - Σ planned == Σ measured bytes over ranks;
//  - the copy counter over the call: no activation byte (EP_COPY_ACT) for the
//    device-routed policies, exactly the T x n_experts fp32 logits down for a
//    host-routed one, and META bytes within meta_bound() below.
// Both tiny presets, baseline, ban, banpick and topp (host-routed) with the
// f32 wire; baseline and topp with bf16 (f16 and EPLB with 3 replicas on
// tiny-qwen3-moe, fp8 on tiny-deepseek-v2), odd token counts and 0 tokens
// on rank 1. Also the refusals: the cpu backend, two micro-batches, tokens
// without device arrays. Run at 1 and 2 ranks; skips (77 on every rank)
// unless every rank has a device of its own.
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/gpu.h"
#include "common/weights.h"
#include "cuda_test_util.h"
#include "model/moe.h"
#include "mpi_check.h"
#include "router/policy.h"

static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
static const char *policies[] = {"baseline", "ban", "banpick", "topp"};
static const bool on_device[] = {true, true, true, false}; // ep_router_cuda_supports
enum { CAP = 23 };

// Odd and uneven across ranks; rank 1 routes none when there are several.
static int tokens_of(int rank, int world, int layer)
{
    if (world > 1 && rank == 1) return 0;
    return 5 + (rank * 7 + layer * 4) % 19;
}

// The META bytes one call may move (st: its stats; E experts, kb = k_base):
//   routes down   T * (4 + 8 * E + 8 * kb)   K, kept ids + weights (rows of
//                                            at most E), top-k_base ids + weights
//   indices up    4 * (sends + recv_tokens + (recv_tokens - own) + T + 1 + groups)
//                 rows packed, work rows, rows sent back, combine offsets and
//                 entries (groups = sends + own records <= sends + T)
//   experts up    4 * (recv_tokens + 1) + 12 * recv_pairs + 2 * 3 * 8 * E
//                 record offsets, pair rows / records / weights, GEMM pointers
static uint64_t meta_bound(const ep_comm_stats *st, int E, int kb)
{
    const uint64_t T = (uint64_t)st->tokens, s = (uint64_t)st->sends;
    const uint64_t rt = (uint64_t)st->recv_tokens, rp = (uint64_t)st->recv_pairs;
    return T * (4 + 8 * (uint64_t)E + 8 * (uint64_t)kb) + 4 * (s + 2 * rt + T + 1 + s + T) +
           4 * (rt + 1) + 12 * rp + 48 * (uint64_t)E;
}

static void check_stats(const char *what, const ep_comm_stats *a, const ep_comm_stats *b)
{
    const int64_t va[] = {a->tokens,        a->pairs,         a->sends,          a->dispatch_bytes,
                          a->combine_bytes, a->planned_bytes, a->measured_bytes, a->recv_pairs,
                          a->recv_tokens,   a->base_pairs,    a->base_sends,     a->dest_ranks};
    const int64_t vb[] = {b->tokens,        b->pairs,         b->sends,          b->dispatch_bytes,
                          b->combine_bytes, b->planned_bytes, b->measured_bytes, b->recv_pairs,
                          b->recv_tokens,   b->base_pairs,    b->base_sends,     b->dest_ranks};
    static const char *name[] = {"tokens",         "pairs",         "sends",
                                 "dispatch_bytes", "combine_bytes", "planned_bytes",
                                 "measured_bytes", "recv_pairs",    "recv_tokens",
                                 "base_pairs",     "base_sends",    "dest_ranks"};
    for (size_t i = 0; i < EP_ARRAY_LEN(va); i++)
        CHECK(va[i] == vb[i], "%s: stats %s: device path %lld, host path %lld", what, name[i],
              (long long)va[i], (long long)vb[i]);
}

static void run_preset(ep_cluster *cl, const char *preset, ep_dtype wire, int redundant, bool all,
                       double *worst, uint64_t *meta_max, int64_t *routed_apart,
                       int64_t *weights_apart)
{
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_policy *pol[EP_ARRAY_LEN(policies)] = {0};
    CHECK_OK(ep_model_cfg_load(preset, &cfg));
    CHECK_OK(ep_weights_open(&cfg, &w));
    if (!w) return;
    int max_k = cfg.k_base;
    for (size_t i = 0; i < EP_ARRAY_LEN(policies); i++) {
        ep_status s = ep_policy_create(&cfg, policies[i], &pol[i]);
        CHECK(s == EP_OK, "%s: policy %s: %s", cfg.name, policies[i], ep_last_error());
        if (s) goto out_pol;
        max_k = EP_MAX(max_k, ep_policy_max_k(pol[i]));
    }
    ep_moe_opts o;
    ep_moe_opts_default(&o, &cfg);
    o.backend = EP_MOE_BACKEND_CUDA;
    o.wire = wire;
    o.cap_tokens = CAP;
    o.max_k = max_k;
    o.with_reference = true;
    if (redundant > 0) { // EPLB with replicas: the replica choice's pair ranks
        o.placement = EP_PLACE_EPLB;
        o.redundant_experts = redundant;
    }
    ep_moe *m = NULL;
    ep_status s = ep_moe_init(&cfg, cl, w, &o, &m);
    CHECK(s == EP_OK, "%s: ep_moe_init with backend cuda: %s", cfg.name, ep_last_error());
    int64_t ready = m != NULL;
    CHECK_OK(ep_cluster_allreduce_i64(cl, &ready, 1, EP_REDUCE_MIN));
    if (!ready) goto out;

    const size_t n = (size_t)CAP * cfg.hidden;
    float *x = ep_xmalloc(n * sizeof(float)), *y = ep_xmalloc(n * sizeof(float));
    float *yh = ep_xmalloc(n * sizeof(float)), *yref = ep_xmalloc(n * sizeof(float));
    float *x_dev = NULL, *y_dev = NULL;
    CHECK(cudaMalloc((void **)&x_dev, n * sizeof(float)) == cudaSuccess, "cudaMalloc x");
    CHECK(cudaMalloc((void **)&y_dev, n * sizeof(float)) == cudaSuccess, "cudaMalloc y");
    for (size_t p = 0; p < EP_ARRAY_LEN(policies); p++)
        for (int l = 0; l < cfg.n_layers; l++) {
            // Not all: baseline and topp (device and host routing) only (time).
            if (!ep_model_layer_is_moe(&cfg, l) || (!all && p != 0 && p != 3)) continue;
            const int T = tokens_of(cl->rank, cl->world_size, l);
            for (int i = 0; i < T; i++)
                ep_synth_hidden(&cfg, 13, l, (cl->rank + i) % EP_SYNTH_N_DOMAINS,
                                100 * cl->rank + i + 7 * (int)p, x + (size_t)i * cfg.hidden);
            cudaMemcpy(x_dev, x, n * sizeof(float), cudaMemcpyHostToDevice); // not counted
            cudaMemset(y_dev, 0xff, n * sizeof(float));                      // NaN poison
            // A layer's gate goes up on its first call: LOAD, not counted below.
            ep_comm_stats st, sh;
            memset(&st, 0, sizeof st);
            memset(&sh, 0, sizeof sh);
            ep_gpu_copy_stats before, after, diff;
            ep_gpu_copy_stats_get(&before);
            s = ep_moe_forward_dev(m, pol[p], l, x_dev, T, y_dev, &st, NULL);
            ep_gpu_copy_stats_get(&after);
            ep_gpu_copy_stats_diff(&after, &before, &diff);
            const char *pn = ep_policy_name(pol[p]), *wn = ep_comm_wire_name(wire);
            CHECK(s == EP_OK, "%s %s wire %s layer %d rank %d: forward_dev: %s", cfg.name, pn, wn,
                  l, cl->rank, ep_last_error());
            if (s) continue;
            cudaMemcpy(y, y_dev, n * sizeof(float), cudaMemcpyDeviceToHost);

            // Copies: no activations for device-routed policies; the logits
            // (T x E fp32, down) for a host-routed one; META within the bound.
            const uint64_t act = diff.h2d[EP_COPY_ACT] + diff.d2h[EP_COPY_ACT];
            const uint64_t meta = diff.h2d[EP_COPY_META] + diff.d2h[EP_COPY_META];
            const uint64_t want_act =
                on_device[p] ? 0 : (uint64_t)T * (uint64_t)cfg.n_experts * sizeof(float);
            CHECK(act == want_act && diff.d2h[EP_COPY_ACT] == want_act,
                  "%s %s layer %d rank %d: %llu activation bytes crossed PCIe, expected %llu",
                  cfg.name, pn, l, cl->rank, (unsigned long long)act, (unsigned long long)want_act);
            const uint64_t bound = meta_bound(&st, cfg.n_experts, cfg.k_base);
            CHECK(meta <= bound && (T == 0 || meta > 0),
                  "%s %s layer %d rank %d: %llu META bytes, expected 1..%llu", cfg.name, pn, l,
                  cl->rank, (unsigned long long)meta, (unsigned long long)bound);
            *meta_max = EP_MAX(*meta_max, meta);

            // The host arrays path with the same routes: same bits, same stats.
            const ep_routes *r = ep_moe_last_routes(m);
            CHECK(r->n_tokens == T, "routes of %d tokens, expected %d", r->n_tokens, T);
            CHECK_OK(ep_moe_forward_routes(m, l, r, x, yh, &sh, NULL));
            int64_t diff_elems = 0;
            for (size_t i = 0; i < (size_t)T * cfg.hidden; i++)
                diff_elems += memcmp(&y[i], &yh[i], sizeof(float)) != 0;
            CHECK(diff_elems == 0,
                  "%s %s wire %s layer %d rank %d: %lld of %d x %d values differ from "
                  "ep_moe_forward_routes (expected the same bits)",
                  cfg.name, pn, wn, l, cl->rank, (long long)diff_elems, T, cfg.hidden);
            char what[160];
            snprintf(what, sizeof what, "%s %s wire %s layer %d rank %d", cfg.name, pn, wn, l,
                     cl->rank);
            check_stats(what, &st, &sh);
            CHECK(st.tokens == T && st.pairs == ep_routes_nnz(r), "%s: %lld tokens, %lld pairs",
                  what, (long long)st.tokens, (long long)st.pairs);

            CHECK_OK(ep_moe_reference_routes(m, l, r, x, yref));
            double err = T ? cuda_test_rel_err(y, yref, T, cfg.hidden) : 0;
            err = isnan(err) ? INFINITY : err;
            *worst = EP_MAX(*worst, err);
            // fp8 rows: the project's fp8 budget (tests/mpi/test_moe_invariant.c).
            const double rtol = wire == EP_DTYPE_F8_E4M3 ? 0.15 : CUDA_TEST_BF16_TOL;
            CHECK(err <= rtol, "%s: vs reference: rel err %.3e > %.2g", what, err, rtol);

            // ep_moe_forward itself (CPU gate and router): the device gate
            // sums in cuBLAS's order, so weights may differ in the last bits
            // and a near tie may route apart. Same experts and weights: the
            // same bits; same experts: close (below); else counted.
            const int nnz = ep_routes_nnz(r);
            int *ids = ep_xmalloc(((size_t)nnz + 1) * sizeof(int));
            float *wts = ep_xmalloc(((size_t)nnz + 1) * sizeof(float));
            int *offs = ep_xmalloc(((size_t)T + 1) * sizeof(int));
            memcpy(ids, r->expert, (size_t)nnz * sizeof(int));
            memcpy(wts, r->weight, (size_t)nnz * sizeof(float));
            memcpy(offs, r->offsets, ((size_t)T + 1) * sizeof(int));
            CHECK_OK(ep_moe_forward(m, pol[p], l, x, T, yh, NULL, NULL));
            const ep_routes *rf = ep_moe_last_routes(m);
            const bool same = ep_routes_nnz(rf) == nnz &&
                              !memcmp(rf->offsets, offs, ((size_t)T + 1) * sizeof(int)) &&
                              !memcmp(rf->expert, ids, (size_t)nnz * sizeof(int));
            const bool same_w = same && !memcmp(rf->weight, wts, (size_t)nnz * sizeof(float));
            *routed_apart += !same;
            *weights_apart += same && !same_w;
            // Weights apart by last bits move a partial sum by about 1e-7; on a
            // bf16 or f16 combine row that can cross a rounding boundary: one
            // ulp (2^-8, 2^-11). An fp8 wire combines in bf16 (its dispatch
            // rows are the same x's in both paths).
            const double tol = wire == EP_DTYPE_F32   ? 1e-5
                               : wire == EP_DTYPE_F16 ? 0x1p-11
                                                      : 0x1p-8;
            const double fe = T ? cuda_test_rel_err(y, yh, T, cfg.hidden) : 0;
            CHECK(!same ||
                      (same_w ? !memcmp(y, yh, (size_t)T * cfg.hidden * sizeof(float)) : fe <= tol),
                  "%s: same routes as ep_moe_forward (weights %s), rel err %.3e (tol %.1e)", what,
                  same_w ? "equal: expected the same bits" : "apart", fe, tol);
            free(ids);
            free(wts);
            free(offs);

            int64_t pm[4] = {st.planned_bytes, st.measured_bytes, st.pairs, st.recv_pairs};
            CHECK_OK(ep_cluster_allreduce_i64(cl, pm, 4, EP_REDUCE_SUM));
            CHECK(pm[0] == pm[1], "%s: Σ planned %lld != Σ measured %lld bytes", what,
                  (long long)pm[0], (long long)pm[1]);
            CHECK(pm[2] == pm[3], "%s: %lld pairs routed, %lld computed", what, (long long)pm[2],
                  (long long)pm[3]);
        }
    {
        ep_moe_dev_mem mem;
        CHECK_OK(ep_moe_device_bytes(m, &mem));
        CHECK(mem.experts == ep_moe_expert_bytes(m) && mem.router > 0 && mem.exchange > 0 &&
                  mem.total ==
                      mem.experts + mem.expert_scratch + mem.router + mem.exchange + mem.transport,
              "%s: device bytes: experts %llu (expected %zu), router %llu, exchange %llu, "
              "total %llu",
              cfg.name, (unsigned long long)mem.experts, ep_moe_expert_bytes(m),
              (unsigned long long)mem.router, (unsigned long long)mem.exchange,
              (unsigned long long)mem.total);
    }
    cudaFree(x_dev);
    cudaFree(y_dev);
    free(x);
    free(y);
    free(yh);
    free(yref);
out:
    ep_moe_free(m);
out_pol:
    for (size_t p = 0; p < EP_ARRAY_LEN(policies); p++)
        ep_policy_free(pol[p]);
    ep_weights_free(w);
}

// A fresh layer that ran only ep_moe_forward_dev over every MoE layer holds
// on the device exactly what ep_moe_dev_mem_predict says, term by term.
static void check_memory(ep_cluster *cl, const char *preset)
{
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_policy *pol = NULL;
    CHECK_OK(ep_model_cfg_load(preset, &cfg));
    CHECK_OK(ep_weights_open(&cfg, &w));
    CHECK_OK(ep_policy_create(&cfg, "ban", &pol));
    ep_moe_opts o;
    ep_moe_opts_default(&o, &cfg);
    o.backend = EP_MOE_BACKEND_CUDA;
    o.wire = EP_DTYPE_BF16;
    o.cap_tokens = CAP;
    o.max_k = EP_MAX(cfg.k_base, ep_policy_max_k(pol));
    ep_moe *m = NULL;
    CHECK_OK(ep_moe_init(&cfg, cl, w, &o, &m));
    const size_t n = (size_t)CAP * cfg.hidden;
    float *x = ep_xmalloc(n * sizeof(float)), *x_dev = NULL, *y_dev = NULL;
    cudaMalloc((void **)&x_dev, n * sizeof(float));
    cudaMalloc((void **)&y_dev, n * sizeof(float));
    for (int l = 0; m && l < cfg.n_layers; l++) {
        if (!ep_model_layer_is_moe(&cfg, l)) continue;
        const int T = tokens_of(cl->rank, cl->world_size, l);
        for (int i = 0; i < T; i++)
            ep_synth_hidden(&cfg, 5, l, i % EP_SYNTH_N_DOMAINS, i, x + (size_t)i * cfg.hidden);
        cudaMemcpy(x_dev, x, n * sizeof(float), cudaMemcpyHostToDevice);
        CHECK_OK(ep_moe_forward_dev(m, pol, l, x_dev, T, y_dev, NULL, NULL));
    }
    if (m) {
        ep_moe_dev_mem got, want;
        CHECK_OK(ep_moe_device_bytes(m, &got));
        ep_moe_dev_mem_predict(&cfg, &o, cl->world_size,
                               ep_placement_n_local(ep_moe_placement(m), cl->rank), &want);
        const uint64_t g[] = {got.experts,  got.expert_scratch, got.router,
                              got.exchange, got.transport,      got.total};
        const uint64_t p[] = {want.experts,  want.expert_scratch, want.router,
                              want.exchange, want.transport,      want.total};
        static const char *name[] = {"experts",  "expert_scratch", "router",
                                     "exchange", "transport",      "total"};
        for (size_t i = 0; i < EP_ARRAY_LEN(g); i++)
            CHECK(g[i] == p[i], "%s rank %d: device bytes %s: measured %llu, predicted %llu",
                  cfg.name, cl->rank, name[i], (unsigned long long)g[i], (unsigned long long)p[i]);
        if (cl->rank == 0)
            printf("# %s, %d GPUs: MoE device bytes on rank 0: %llu measured == predicted "
                   "(experts %llu, scratch %llu, router %llu, exchange %llu, transport %llu)\n",
                   cfg.name, cl->world_size, (unsigned long long)got.total,
                   (unsigned long long)got.experts, (unsigned long long)got.expert_scratch,
                   (unsigned long long)got.router, (unsigned long long)got.exchange,
                   (unsigned long long)got.transport);
    }
    cudaFree(x_dev);
    cudaFree(y_dev);
    free(x);
    ep_moe_free(m);
    ep_policy_free(pol);
    ep_weights_free(w);
}

// What the device path refuses, by name, before any collective.
static void check_refusals(ep_cluster *cl)
{
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_policy *pol = NULL;
    CHECK_OK(ep_model_cfg_load("tiny-qwen3-moe", &cfg));
    CHECK_OK(ep_weights_open(&cfg, &w));
    CHECK_OK(ep_policy_create(&cfg, "baseline", &pol));
    const int layer = cfg.first_k_dense;
    struct {
        ep_moe_backend backend;
        ep_dtype wire;
        int micro_batches, T;
        ep_status want;
        const char *names;
    } cases[] = {
        {EP_MOE_BACKEND_CPU, EP_DTYPE_F32, 1, 0, EP_ERR_UNSUPPORTED, "--backend cpu"},
        {EP_MOE_BACKEND_CUDA, EP_DTYPE_F32, 2, 0, EP_ERR_UNSUPPORTED, "--micro-batches 2"},
        {EP_MOE_BACKEND_CUDA, EP_DTYPE_F32, 1, 3, EP_ERR_ARG, "x NULL"},
    };
    for (size_t i = 0; i < EP_ARRAY_LEN(cases); i++) {
        ep_moe_opts o;
        ep_moe_opts_default(&o, &cfg);
        o.backend = cases[i].backend;
        o.wire = cases[i].wire;
        o.micro_batches = cases[i].micro_batches;
        o.cap_tokens = 4;
        ep_moe *m = NULL;
        CHECK_OK(ep_moe_init(&cfg, cl, w, &o, &m));
        if (!m) continue;
        ep_status s = ep_moe_forward_dev(m, pol, layer, NULL, cases[i].T, NULL, NULL, NULL);
        CHECK(s == cases[i].want && strstr(ep_last_error(), cases[i].names),
              "forward_dev with %s: expected status %d naming it, got %d: %s", cases[i].names,
              (int)cases[i].want, (int)s, ep_last_error());
        ep_moe_free(m);
    }
    ep_policy_free(pol);
    ep_weights_free(w);
}

int main(int argc, char **argv)
{
    ep_cluster *c = NULL;
    const int run = cuda_test_mpi_begin(&argc, &argv, "test_moe_dev", &c);
    if (run <= 0) return run < 0 ? 1 : CUDA_TEST_SKIP;
    // f16 shares bf16's code but its encoder, EPLB with replicas only the
    // replica choice: one preset each is enough; the policies differ only
    // in routing, which the f32 rounds cover (time).
    const struct {
        int preset;
        ep_dtype wire;
        int redundant;
        bool all; // every policy, or baseline and topp only
    } rounds[] = {
        {0, EP_DTYPE_F32, 0, true},      {0, EP_DTYPE_BF16, 0, false}, {0, EP_DTYPE_F16, 0, false},
        {0, EP_DTYPE_F32, 3, false},     {1, EP_DTYPE_F32, 0, true},   {1, EP_DTYPE_BF16, 0, false},
        {1, EP_DTYPE_F8_E4M3, 0, false},
    };
    for (size_t i = 0; i < EP_ARRAY_LEN(rounds); i++) {
        double worst = 0;
        uint64_t meta = 0;
        int64_t apart[2] = {0, 0};
        const char *preset = presets[rounds[i].preset];
        run_preset(c, preset, rounds[i].wire, rounds[i].redundant, rounds[i].all, &worst, &meta,
                   &apart[0], &apart[1]);
        ep_cluster_allreduce_f64(c, &worst, 1, EP_REDUCE_MAX);
        int64_t mm = (int64_t)meta;
        ep_cluster_allreduce_i64(c, &mm, 1, EP_REDUCE_MAX);
        ep_cluster_allreduce_i64(c, apart, 2, EP_REDUCE_SUM);
        if (c->rank == 0)
            printf("# %s wire %s%s, %d GPUs: forward_dev == forward_routes bit for bit; vs "
                   "ep_moe_forward: %lld calls routed apart, %lld with other weights (within "
                   "tol); vs reference max rel err %.2e (tol %.0e, fp8 0.15); most META "
                   "bytes in one call %lld\n",
                   preset, ep_comm_wire_name(rounds[i].wire),
                   rounds[i].redundant ? ", eplb + 3 replicas" : "", c->world_size,
                   (long long)apart[0], (long long)apart[1], worst, CUDA_TEST_BF16_TOL,
                   (long long)mm);
    }
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++)
        check_memory(c, presets[i]);
    check_refusals(c);
    int rc = mpi_check_finish(c, "test_moe_dev");
    ep_cluster_free(c);
    return rc;
}
