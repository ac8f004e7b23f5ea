// The reference invariant (DESIGN.md §4): for every world size (ctest runs
// this at 1-4 ranks), both tiny presets, contiguous, round-robin and EPLB
// placements (EPLB for the DeepSeek preset: hierarchical, skewed per-layer
// loads, 7 redundant experts, replica choice; model init dominates the run
// time, so the Qwen3 EPLB path is left to test_replace and bench_check),
// ranks_per_node 1 and 2 and every routing policy (laser after Ban with the
// placement set, so its load-aware choice is live), the EP MoE output equals
// the single-process reference within 1e-4 relative, planned bytes equal the
// bytes the transport moved, and ranks with zero tokens still take part.
// With an fp8 wire (e4m3 dispatch, bf16 combine; both presets, contiguous,
// a fixed and a variable-K policy) the output stays within FP8_TOL and
// FP8_RMS_TOL of the fp32 reference, and the dispatch bytes are the bf16
// bytes less exactly the row bytes fp8 saves per record. Flat and hier
// dispatch (comm/comm.h) at 1, 2 and 4 ranks per node, inter-node bytes
// planned == measured; `--subset` (np 5-8) runs the contiguous f32 cases.
#include "common/weights.h"
#include "model/moe.h"
#include "router/policy.h"
#include "mpi_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
static const char *policies[] = {"baseline", "ban", "pick", "banpick", "topp", "des", "laser-ban"};
enum { CAP = 23 };
// Error budgets of the fp8 wire, measured. Each dispatched input is off by
// at most 2^-4 of itself (docs/wire-format.md), about 2.5% RMS for Gaussian
// rows. A GEMM sums independent errors as it sums the values, so the RMS
// relative error of the output stays near the input's instead of averaging
// away. FP8_RMS_TOL bounds sqrt(Σ (y - yref)^2 / Σ yref^2) over a case
// (measured <= 3.2e-2 at 1-4 ranks, both presets); FP8_TOL bounds
// ep_moe_rel_err, the worst |y - yref| of a row over its largest |yref|
// (measured <= 6.4e-2 here, 9.1e-2 over the 5120 rows of the bench run in
// docs/wire-format.md, which uses this budget for --check too).
#define FP8_TOL     0.15
#define FP8_RMS_TOL 0.045

// Tokens this rank routes: uneven across ranks, 0 on rank 1 when there are several.
static int tokens_of(int rank, int world)
{
    if (world > 1 && rank == 1) return 0;
    return 5 + (rank * 7) % 19;
}

// A skewed, layer-dependent load for EPLB: a few hot experts per layer.
static double *skewed_load(const ep_model_cfg *cfg)
{
    double *load = ep_xmalloc((size_t)cfg->n_layers * cfg->n_experts * sizeof(double));
    for (int l = 0; l < cfg->n_layers; l++)
        for (int e = 0; e < cfg->n_experts; e++)
            load[(size_t)l * cfg->n_experts + e] =
                1 + ((e * 7 + l * 3) % 11 == 0 ? 50 : 0) + (e * 13 + l) % 5;
    return load;
}

typedef struct {
    ep_place_kind kind;
    int redundant; // EPLB only
    bool home_only;
    ep_dtype wire; // F32 (0) unless set
} place_case;

static void run_config(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w, place_case pc)
{
    ep_place_kind kind = pc.kind;
    ep_policy *pol[EP_ARRAY_LEN(policies)] = {0};
    int n_pol = 0, max_k = cfg->k_base;
    // EPLB changes where pairs go, not what is routed: two policies (fixed
    // and variable K) keep this test quick.
    size_t n_try = kind == EP_PLACE_EPLB || pc.wire != EP_DTYPE_F32 ? 2 : EP_ARRAY_LEN(policies);
    double tol = pc.wire == EP_DTYPE_F8_E4M3 ? FP8_TOL : 1e-4;
    for (size_t i = 0; i < n_try; i++) {
        ep_status st = ep_policy_create(cfg, policies[i], &pol[n_pol]);
        CHECK(st == EP_OK, "%s: policy %s: %s", cfg->name, policies[i], ep_last_error());
        if (st != EP_OK) continue;
        if (ep_policy_max_k(pol[n_pol]) > max_k) max_k = ep_policy_max_k(pol[n_pol]);
        n_pol++;
    }

    ep_moe_opts o;
    ep_moe_opts_default(&o, cfg);
    o.placement = kind;
    o.cap_tokens = CAP;
    o.max_k = max_k;
    o.with_reference = true;
    o.wire = pc.wire;
    double *load = NULL;
    // The wire's rounding does not depend on the node split: one (2 per node) keeps fp8 quick.
    int rpn_lo = pc.wire != EP_DTYPE_F32 ? 2 : 1;
    if (kind == EP_PLACE_EPLB) {
        // EPLB reads the nodes at init (hierarchical for DeepSeek's 4 groups on 2 nodes).
        load = skewed_load(cfg);
        o.expert_load = load;
        o.redundant_experts = pc.redundant;
        o.home_only = pc.home_only;
        rpn_lo = 2;
        ep_cluster_set_ranks_per_node(cl, 2);
    }
    ep_moe *m = NULL;
    CHECK_OK(ep_moe_init(cfg, cl, w, &o, &m));
    free(load);
    if (!m) goto out;
    // laser and comm-aware Ban see each layer's placement through the
    // routing context ep_moe_forward and ep_moe_reference both build.
    int64_t off_home = 0;                  // pairs sent to a replica that is not the expert's home
    int64_t fp8_sends = 0;                 // records that crossed ranks in fp8
    double worst_err = 0, rms[2] = {0, 0}; // Σ (y - yref)^2, Σ yref^2 (fp8 wire)

    int T = tokens_of(cl->rank, cl->world_size);
    float *x = ep_xmalloc((size_t)CAP * cfg->hidden * sizeof(float));
    float *y = ep_xmalloc((size_t)CAP * cfg->hidden * sizeof(float));
    float *yref = ep_xmalloc((size_t)CAP * cfg->hidden * sizeof(float));
    int64_t base_offset = 0;
    for (int r = 0; r < cl->rank; r++)
        base_offset += tokens_of(r, cl->world_size);

    for (int rpn = rpn_lo; rpn <= 4; rpn += rpn == 1 ? 1 : 2) {
        for (int mode = 0; mode < 2; mode++) {
            ep_cluster_set_ranks_per_node(cl, rpn);
            CHECK_OK(ep_moe_set_dispatch(m, mode ? EP_DISPATCH_HIER : EP_DISPATCH_FLAT));
            for (int p = 0; p < n_pol; p++) {
                for (int l = 0; l < cfg->n_layers; l++) {
                    if (!ep_model_layer_is_moe(cfg, l)) continue;
                    for (int i = 0; i < T; i++)
                        ep_synth_hidden(cfg, 7, l, (int)((base_offset + i) % EP_SYNTH_N_DOMAINS),
                                        base_offset + i, x + (size_t)i * cfg->hidden);
                    ep_comm_stats st;
                    memset(&st, 0, sizeof st);
                    ep_status s = ep_moe_forward(m, pol[p], l, x, T, y, &st, NULL);
                    CHECK(s == EP_OK, "%s %s layer %d: %s", cfg->name, ep_policy_name(pol[p]), l,
                          ep_last_error());
                    if (s) continue;
                    CHECK_OK(ep_moe_reference(m, pol[p], l, x, T, yref));
                    int64_t wrong = 0;
                    double err = ep_moe_rel_err(y, yref, T, cfg->hidden, tol, &wrong);
                    CHECK(err <= tol,
                          "%s %s %s %s wire %s rpn %d layer %d rank %d: max rel err %.3e > %g",
                          cfg->name, ep_policy_name(pol[p]), ep_place_kind_name(kind),
                          ep_dtype_name(pc.wire), mode ? "hier" : "flat", rpn, l, cl->rank, err,
                          tol);
                    if (err > worst_err) worst_err = err;
                    if (pc.wire == EP_DTYPE_F8_E4M3) {
                        double d2 = 0, r2 = 0;
                        for (size_t q = 0; q < (size_t)T * cfg->hidden; q++) {
                            d2 += ((double)y[q] - yref[q]) * ((double)y[q] - yref[q]);
                            r2 += (double)yref[q] * yref[q];
                        }
                        rms[0] += d2;
                        rms[1] += r2;
                    }
                    const ep_placement *lp = ep_moe_layer_placement(m, l);
                    const ep_routes *rr = ep_moe_last_routes(m);
                    const int *prk = ep_moe_last_pair_rank(m);
                    int bad = 0;
                    for (int j = 0; j < ep_routes_nnz(rr); j++) {
                        bad += !ep_placement_holds(lp, prk[j], rr->expert[j]);
                        off_home += prk[j] != lp->rank_of[rr->expert[j]];
                    }
                    CHECK(bad == 0, "layer %d: %d pairs sent to a rank holding no replica", l, bad);
                    CHECK(st.tokens == T, "stats count %lld tokens, routed %d",
                          (long long)st.tokens, T);
                    // Work conservation: the pairs routed anywhere are the pairs
                    // computed somewhere, and the bytes planned at the senders are
                    // the bytes decoded where they arrived.
                    int64_t v[6] = {st.pairs,
                                    st.recv_pairs,
                                    st.planned_bytes,
                                    st.measured_bytes,
                                    st.dispatch_bytes_inter + st.combine_bytes_inter,
                                    st.measured_bytes_inter};
                    CHECK_OK(ep_cluster_allreduce_i64(cl, v, 6, EP_REDUCE_SUM));
                    CHECK(v[4] == v[5],
                          "%s %s layer %d: Σ planned inter-node %lld != Σ measured %lld", cfg->name,
                          ep_policy_name(pol[p]), l, (long long)v[4], (long long)v[5]);
                    CHECK(v[0] == v[1], "layer %d: %lld pairs routed, %lld computed", l,
                          (long long)v[0], (long long)v[1]);
                    CHECK(v[2] == v[3], "%s %s layer %d: Σ planned %lld != Σ measured %lld bytes",
                          cfg->name, ep_policy_name(pol[p]), l, (long long)v[2], (long long)v[3]);
                    if (cl->world_size == 1)
                        CHECK(st.planned_bytes == 0, "one rank moves no bytes, planned %lld",
                              (long long)st.planned_bytes);
                    if (pc.wire == EP_DTYPE_F8_E4M3) {
                        // The same routes priced with a bf16 wire: fp8 saves
                        // round4(2H) - (4 ceil(H/128) + round4(H)) per dispatch
                        // record and nothing on combine (bf16 rows both ways).
                        ep_comm_stats b;
                        ep_comm_count_mode(rr, lp, prk, cl->rank, cl->node_of, cfg->hidden,
                                           EP_DTYPE_BF16,
                                           mode ? EP_DISPATCH_HIER : EP_DISPATCH_FLAT, &b);
                        int64_t H = cfg->hidden;
                        int64_t saved =
                            ((2 * H + 3) & ~3) - (4 * ((H + 127) / 128) + ((H + 3) & ~3));
                        CHECK(st.sends == b.sends && st.fwd_sends == b.fwd_sends &&
                                  st.dispatch_bytes ==
                                      b.dispatch_bytes - (st.sends + st.fwd_sends) * saved &&
                                  st.combine_bytes == b.combine_bytes,
                              "%s layer %d: fp8 dispatch %lld bytes, bf16 %lld, %lld records "
                              "saving %lld each; combine %lld vs %lld",
                              cfg->name, l, (long long)st.dispatch_bytes,
                              (long long)b.dispatch_bytes, (long long)st.sends, (long long)saved,
                              (long long)st.combine_bytes, (long long)b.combine_bytes);
                        fp8_sends += st.sends;
                    }
                }
            }
        }
    }
    if (pc.wire == EP_DTYPE_F8_E4M3) {
        // Report the measured worst error (rank 0 prints the max over ranks)
        // and make sure fp8 rows crossed ranks (else the case proves nothing).
        CHECK_OK(ep_cluster_allreduce_f64(cl, rms, 2, EP_REDUCE_SUM));
        double e[1] = {worst_err};
        int64_t v[1] = {fp8_sends};
        CHECK_OK(ep_cluster_allreduce_f64(cl, e, 1, EP_REDUCE_MAX));
        CHECK_OK(ep_cluster_allreduce_i64(cl, v, 1, EP_REDUCE_SUM));
        if (cl->rank == 0)
            printf("moe_invariant: %s fp8 wire on %d ranks: worst rel err %.3e (tol %g), rms rel "
                   "err %.3e, %lld fp8 records\n",
                   cfg->name, cl->world_size, e[0], tol, sqrt(rms[0] / (rms[1] > 0 ? rms[1] : 1)),
                   (long long)v[0]);
        double rms_rel = rms[1] > 0 ? sqrt(rms[0] / rms[1]) : 0.0;
        CHECK(rms_rel <= FP8_RMS_TOL, "%s fp8 wire: rms rel err %.3e > %g", cfg->name, rms_rel,
              FP8_RMS_TOL);
        if (cl->world_size > 1) CHECK(v[0] > 0, "%s: no fp8 record crossed ranks", cfg->name);
    }
    // Replica choice must actually use replicas (else this case tests nothing new).
    CHECK_OK(ep_cluster_allreduce_i64(cl, &off_home, 1, EP_REDUCE_SUM));
    if (kind == EP_PLACE_EPLB && pc.redundant > 0 && cl->world_size > 1)
        CHECK((off_home > 0) == !pc.home_only, "%s eplb+%d%s: %lld pairs went to non-home replicas",
              cfg->name, pc.redundant, pc.home_only ? " home-only" : "", (long long)off_home);
    free(x);
    free(y);
    free(yref);
    ep_moe_free(m);
out:
    for (int p = 0; p < n_pol; p++)
        ep_policy_free(pol[p]);
}

// --dispatch resolution (no communication): auto is hier with several
// nodes on the CPU backend, flat on one node or with cuda; hier with cuda
// and unknown values are refused naming --dispatch.
static void test_dispatch_mode(const ep_model_cfg *cfg)
{
    ep_cluster fake = {.rank = 0, .world_size = 4, .n_nodes = 2};
    ep_moe_opts o;
    ep_moe_opts_default(&o, cfg);
    ep_dispatch_mode dm = EP_DISPATCH_FLAT;
    CHECK(ep_moe_dispatch_mode(&o, &fake, &dm) == EP_OK && dm == EP_DISPATCH_HIER,
          "auto on 2 nodes: expected hier");
    fake.n_nodes = 1;
    CHECK(ep_moe_dispatch_mode(&o, &fake, &dm) == EP_OK && dm == EP_DISPATCH_FLAT,
          "auto on 1 node: expected flat");
    fake.n_nodes = 2;
    o.backend = EP_MOE_BACKEND_CUDA;
    CHECK(ep_moe_dispatch_mode(&o, &fake, &dm) == EP_OK && dm == EP_DISPATCH_FLAT,
          "auto with cuda: expected flat");
    o.dispatch = EP_DISPATCH_HIER;
    CHECK(ep_moe_dispatch_mode(&o, &fake, &dm) == EP_ERR_UNSUPPORTED &&
              strstr(ep_last_error(), "--dispatch hier") && strstr(ep_last_error(), "cuda"),
          "hier with cuda accepted: %s", ep_last_error());
    o.backend = EP_MOE_BACKEND_CPU;
    o.dispatch = 5;
    CHECK(ep_moe_dispatch_mode(&o, &fake, &dm) == EP_ERR_ARG &&
              strstr(ep_last_error(), "--dispatch"),
          "dispatch 5 accepted");
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    const bool subset = argc > 1 && !strcmp(argv[1], "--subset");
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++) {
        ep_model_cfg cfg;
        ep_status st = ep_model_cfg_load(presets[i], &cfg);
        CHECK(st == EP_OK, "load %s: %s", presets[i], ep_last_error());
        if (st) continue;
        if (i == 0) test_dispatch_mode(&cfg);
        ep_weights *w = NULL;
        CHECK_OK(ep_weights_open(&cfg, &w));
        if (!w) continue;
        run_config(cl, &cfg, w, (place_case){EP_PLACE_CONTIGUOUS, 0, false, EP_DTYPE_F32});
        if (subset) { // np 5-8: the uneven node maps, one placement
            ep_weights_free(w);
            continue;
        }
        run_config(cl, &cfg, w, (place_case){EP_PLACE_ROUND_ROBIN, 0, false, EP_DTYPE_F32});
        run_config(cl, &cfg, w, (place_case){EP_PLACE_CONTIGUOUS, 0, false, EP_DTYPE_F8_E4M3});
        if (cfg.n_group > 1)
            run_config(cl, &cfg, w, (place_case){EP_PLACE_EPLB, 7, false, EP_DTYPE_F32});
        ep_weights_free(w);
    }
    int rc = mpi_check_finish(cl, "moe_invariant");
    ep_cluster_free(cl);
    return rc;
}
