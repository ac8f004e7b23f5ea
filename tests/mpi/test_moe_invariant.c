// The reference invariant (DESIGN.md §4): for every world size (ctest runs
// this at 1-4 ranks), both tiny presets, contiguous, round-robin and EPLB
// placements (EPLB for the DeepSeek preset: hierarchical, skewed per-layer
// loads, 7 redundant experts, replica choice; model init dominates the run
// time, so the Qwen3 EPLB path is left to test_replace and bench_check),
// ranks_per_node 1 and 2 and every routing policy (laser after Ban with the
// placement set, so its load-aware choice is live), the EP MoE output equals
// the single-process reference within 1e-4 relative, planned bytes equal the
// bytes the transport moved, and ranks with zero tokens still take part.
#include "common/weights.h"
#include "model/moe.h"
#include "router/policy.h"
#include "mpi_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
static const char *policies[] = {"baseline", "ban", "pick", "banpick", "topp", "des", "laser-ban"};
enum { CAP = 23 };

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
} place_case;

static void run_config(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w, place_case pc)
{
    ep_place_kind kind = pc.kind;
    ep_policy *pol[EP_ARRAY_LEN(policies)] = {0};
    int n_pol = 0, max_k = cfg->k_base;
    // EPLB changes where pairs go, not what is routed: two policies (fixed
    // and variable K) keep this test quick.
    size_t n_try = kind == EP_PLACE_EPLB ? 2 : EP_ARRAY_LEN(policies);
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
    double *load = NULL;
    int rpn_lo = 1;
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
    // laser balances by home rank (and comm-aware Ban looks at it): give every
    // policy the placement, as bench does; the others ignore it.
    for (int p = 0; p < n_pol; p++)
        ep_policy_set_placement(pol[p], ep_moe_placement(m)->rank_of, cl->node_of, cl->world_size,
                                cl->rank);
    int64_t off_home = 0; // pairs sent to a replica that is not the expert's home

    int T = tokens_of(cl->rank, cl->world_size);
    float *x = ep_xmalloc((size_t)CAP * cfg->hidden * sizeof(float));
    float *y = ep_xmalloc((size_t)CAP * cfg->hidden * sizeof(float));
    float *yref = ep_xmalloc((size_t)CAP * cfg->hidden * sizeof(float));
    int64_t base_offset = 0;
    for (int r = 0; r < cl->rank; r++) base_offset += tokens_of(r, cl->world_size);

    for (int rpn = rpn_lo; rpn <= 2; rpn++) {
        ep_cluster_set_ranks_per_node(cl, rpn);
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
                double err = ep_moe_rel_err(y, yref, T, cfg->hidden, 1e-4, &wrong);
                CHECK(err <= 1e-4, "%s %s %s rpn %d layer %d rank %d: max rel err %.3e > 1e-4",
                      cfg->name, ep_policy_name(pol[p]), ep_place_kind_name(kind), rpn, l,
                      cl->rank, err);
                const ep_placement *lp = ep_moe_layer_placement(m, l);
                const ep_routes *rr = ep_moe_last_routes(m);
                const int *prk = ep_moe_last_pair_rank(m);
                int bad = 0;
                for (int j = 0; j < ep_routes_nnz(rr); j++) {
                    bad += !ep_placement_holds(lp, prk[j], rr->expert[j]);
                    off_home += prk[j] != lp->rank_of[rr->expert[j]];
                }
                CHECK(bad == 0, "layer %d: %d pairs sent to a rank holding no replica", l, bad);
                CHECK(st.planned_bytes == st.measured_bytes,
                      "%s %s layer %d: planned %lld != measured %lld bytes", cfg->name,
                      ep_policy_name(pol[p]), l, (long long)st.planned_bytes,
                      (long long)st.measured_bytes);
                CHECK(st.tokens == T, "stats count %lld tokens, routed %d", (long long)st.tokens, T);
                // Work conservation: the pairs routed anywhere are the pairs computed somewhere.
                int64_t v[2] = {st.pairs, st.recv_pairs};
                CHECK_OK(ep_cluster_allreduce_i64(cl, v, 2, EP_REDUCE_SUM));
                CHECK(v[0] == v[1], "layer %d: %lld pairs routed, %lld computed", l,
                      (long long)v[0], (long long)v[1]);
                if (cl->world_size == 1)
                    CHECK(st.planned_bytes == 0, "one rank moves no bytes, planned %lld",
                          (long long)st.planned_bytes);
            }
        }
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
    for (int p = 0; p < n_pol; p++) ep_policy_free(pol[p]);
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++) {
        ep_model_cfg cfg;
        ep_status st = ep_model_cfg_load(presets[i], &cfg);
        CHECK(st == EP_OK, "load %s: %s", presets[i], ep_last_error());
        if (st) continue;
        ep_weights *w = NULL;
        CHECK_OK(ep_weights_open(&cfg, &w));
        if (!w) continue;
        run_config(cl, &cfg, w, (place_case){EP_PLACE_CONTIGUOUS, 0, false});
        run_config(cl, &cfg, w, (place_case){EP_PLACE_ROUND_ROBIN, 0, false});
        if (cfg.n_group > 1) run_config(cl, &cfg, w, (place_case){EP_PLACE_EPLB, 7, false});
        ep_weights_free(w);
    }
    int rc = mpi_check_finish(cl, "moe_invariant");
    ep_cluster_free(cl);
    return rc;
}
