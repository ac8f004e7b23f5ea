// The reference invariant (DESIGN.md §4): for every world size (ctest runs
// this at 1-4 ranks), both tiny presets, both placements, ranks_per_node 1
// and 2 and every routing policy, the EP MoE output equals the
// single-process reference within 1e-4 relative, planned bytes equal the
// bytes the transport moved, and ranks with zero tokens still take part.
#include "common/weights.h"
#include "model/moe.h"
#include "mpi_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
static const char *policies[] = {"baseline", "ban", "pick", "banpick", "topp", "des"};
enum { CAP = 23 };

// Tokens this rank routes: uneven across ranks, 0 on rank 1 when there are several.
static int tokens_of(int rank, int world)
{
    if (world > 1 && rank == 1) return 0;
    return 5 + (rank * 7) % 19;
}

static void run_config(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w, ep_place_kind kind)
{
    ep_policy *pol[EP_ARRAY_LEN(policies)] = {0};
    int n_pol = 0, max_k = cfg->k_base;
    for (size_t i = 0; i < EP_ARRAY_LEN(policies); i++) {
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
    ep_moe *m = NULL;
    CHECK_OK(ep_moe_init(cfg, cl, w, &o, &m));
    if (!m) goto out;

    int T = tokens_of(cl->rank, cl->world_size);
    float *x = ep_xmalloc((size_t)CAP * cfg->hidden * sizeof(float));
    float *y = ep_xmalloc((size_t)CAP * cfg->hidden * sizeof(float));
    float *yref = ep_xmalloc((size_t)CAP * cfg->hidden * sizeof(float));
    int64_t base_offset = 0;
    for (int r = 0; r < cl->rank; r++) base_offset += tokens_of(r, cl->world_size);

    for (int rpn = 1; rpn <= 2; rpn++) {
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
        run_config(cl, &cfg, w, EP_PLACE_CONTIGUOUS);
        run_config(cl, &cfg, w, EP_PLACE_ROUND_ROBIN);
        ep_weights_free(w);
    }
    int rc = mpi_check_finish(cl, "moe_invariant");
    ep_cluster_free(cl);
    return rc;
}
