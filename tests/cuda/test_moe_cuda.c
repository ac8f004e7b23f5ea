// The MoE layer with backend CUDA (model/moe.c through the cuda tables of
// model/moe_cuda.c and experts/cuda/backend_cuda.c: NCCL transport, BF16
// experts on the device) against ep_moe_reference (CPU,
// fp32), for both tiny presets, baseline and Ban, contiguous and
// round-robin placements, odd token counts and 0 tokens on rank 1: per row
// within CUDA_TEST_BF16_TOL of the reference, Σ planned bytes == Σ measured,
// the same routes as the reference, work conserved over ranks. Also the
// expert bytes are this rank's shard only, and re-placement is refused with
// EP_ERR_UNSUPPORTED. Run at 1 and 2 ranks; skips (77 on every rank) unless
// every rank has a device of its own, as test_mpi_nccl.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/weights.h"
#include "cuda_test_util.h"
#include "model/moe.h"
#include "mpi_check.h"
#include "router/policy.h"

static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
static const char *policies[] = {"baseline", "ban"};
enum { CAP = 23 };

// Odd and uneven across ranks; rank 1 routes none when there are several.
static int tokens_of(int rank, int world, int layer)
{
    if (world > 1 && rank == 1) return 0;
    return 5 + (rank * 7 + layer * 4) % 19;
}

static void run_preset(ep_cluster *cl, const char *preset, ep_place_kind kind, double *worst)
{
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_policy *pol[EP_ARRAY_LEN(policies)] = {0};
    CHECK_OK(ep_model_cfg_load(preset, &cfg));
    CHECK_OK(ep_weights_open(&cfg, &w));
    if (!w) return;
    int max_k = cfg.k_base, n_pol = 0;
    for (size_t i = 0; i < EP_ARRAY_LEN(policies); i++) {
        ep_status s = ep_policy_create(&cfg, policies[i], &pol[n_pol]);
        CHECK(s == EP_OK, "%s: policy %s: %s", cfg.name, policies[i], ep_last_error());
        if (s) continue;
        max_k = EP_MAX(max_k, ep_policy_max_k(pol[n_pol]));
        n_pol++;
    }
    ep_moe_opts o;
    ep_moe_opts_default(&o, &cfg);
    o.backend = EP_MOE_BACKEND_CUDA;
    o.placement = kind;
    o.cap_tokens = CAP;
    o.max_k = max_k;
    o.with_reference = true;
    ep_moe *m = NULL;
    ep_status s = ep_moe_init(&cfg, cl, w, &o, &m);
    CHECK(s == EP_OK, "%s %s: ep_moe_init with backend cuda: %s", cfg.name,
          ep_place_kind_name(kind), ep_last_error());
    // Collective from here on: go on only where every rank has its layer.
    int64_t ready = m != NULL;
    CHECK_OK(ep_cluster_allreduce_i64(cl, &ready, 1, EP_REDUCE_MIN));
    if (!ready) goto out;

    // This rank's shard only: at most its share of the routed experts plus
    // the shared ones, in BF16 (2 bytes per weight).
    {
        const ep_placement *pl = ep_moe_placement(m);
        int64_t per_expert = 3LL * cfg.hidden * cfg.moe_inter * 2;
        int64_t want = 0;
        for (int l = 0; l < cfg.n_layers; l++)
            if (ep_model_layer_is_moe(&cfg, l))
                want += per_expert * (ep_placement_n_local(pl, cl->rank) + cfg.n_shared);
        CHECK((int64_t)ep_moe_expert_bytes(m) == want,
              "%s: rank %d holds %zu expert bytes on the device, expected %lld (BF16 shard)",
              cfg.name, cl->rank, ep_moe_expert_bytes(m), (long long)want);
    }

    float *x = ep_xmalloc((size_t)CAP * cfg.hidden * sizeof(float));
    float *y = ep_xmalloc((size_t)CAP * cfg.hidden * sizeof(float));
    float *yref = ep_xmalloc((size_t)CAP * cfg.hidden * sizeof(float));
    for (int p = 0; p < n_pol; p++)
        for (int l = 0; l < cfg.n_layers; l++) {
            if (!ep_model_layer_is_moe(&cfg, l)) continue;
            const int T = tokens_of(cl->rank, cl->world_size, l);
            for (int i = 0; i < T; i++)
                ep_synth_hidden(&cfg, 11, l, (cl->rank + i) % EP_SYNTH_N_DOMAINS,
                                100 * cl->rank + i, x + (size_t)i * cfg.hidden);
            for (size_t i = 0; i < (size_t)CAP * cfg.hidden; i++)
                y[i] = NAN;
            ep_comm_stats st;
            memset(&st, 0, sizeof st);
            s = ep_moe_forward(m, pol[p], l, x, T, y, &st, NULL);
            CHECK(s == EP_OK, "%s %s layer %d rank %d: %s", cfg.name, ep_policy_name(pol[p]), l,
                  cl->rank, ep_last_error());
            if (s) continue;
            // The reference routes the same inputs the same way (the router is on the host).
            int64_t nnz = ep_routes_nnz(ep_moe_last_routes(m));
            int64_t pairs0 = 0, pairs1 = 0, tl = 0;
            ep_moe_reference_counts(m, &pairs0, &tl);
            CHECK_OK(ep_moe_reference(m, pol[p], l, x, T, yref));
            ep_moe_reference_counts(m, &pairs1, &tl);
            CHECK(pairs1 - pairs0 == nnz,
                  "%s layer %d: the layer kept %lld pairs, the reference %lld", cfg.name, l,
                  (long long)nnz, (long long)(pairs1 - pairs0));
            double err = T ? cuda_test_rel_err(y, yref, T, cfg.hidden) : 0;
            err = isnan(err) ? INFINITY : err;
            *worst = EP_MAX(*worst, err);
            CHECK(err <= CUDA_TEST_BF16_TOL,
                  "%s %s %s layer %d rank %d (%d tokens): backend cuda vs reference: rel err "
                  "%.3e > %.0e",
                  cfg.name, ep_policy_name(pol[p]), ep_place_kind_name(kind), l, cl->rank, T, err,
                  CUDA_TEST_BF16_TOL);
            int64_t pm[2] = {st.planned_bytes, st.measured_bytes};
            CHECK_OK(ep_cluster_allreduce_i64(cl, pm, 2, EP_REDUCE_SUM));
            CHECK(pm[0] == pm[1],
                  "%s layer %d: Σ planned %lld != Σ measured %lld bytes (NCCL transport)", cfg.name,
                  l, (long long)pm[0], (long long)pm[1]);
            CHECK(st.tokens == T && st.pairs == nnz,
                  "stats: %lld tokens, %lld pairs; routed %d, %lld", (long long)st.tokens,
                  (long long)st.pairs, T, (long long)nnz);
            int64_t v[2] = {st.pairs, st.recv_pairs};
            CHECK_OK(ep_cluster_allreduce_i64(cl, v, 2, EP_REDUCE_SUM));
            CHECK(v[0] == v[1], "layer %d: %lld pairs routed, %lld computed", l, (long long)v[0],
                  (long long)v[1]);
        }
    free(x);
    free(y);
    free(yref);

    // Re-placement would move device experts: refused on every rank, layer intact.
    {
        bool moved = true;
        s = ep_moe_replace(m, 0.0, NULL, NULL, &moved);
        CHECK(s == EP_ERR_UNSUPPORTED && strstr(ep_last_error(), "backend cuda") && !moved,
              "ep_moe_replace with backend cuda: expected EP_ERR_UNSUPPORTED, got %d: %s", (int)s,
              ep_last_error());
    }
out:
    ep_moe_free(m);
    for (int p = 0; p < n_pol; p++)
        ep_policy_free(pol[p]);
    ep_weights_free(w);
}

int main(int argc, char **argv)
{
    ep_cluster *c = NULL;
    const int run = cuda_test_mpi_begin(&argc, &argv, "test_moe_cuda", &c);
    if (run <= 0) return run < 0 ? 1 : CUDA_TEST_SKIP;

    const ep_place_kind kinds[] = {EP_PLACE_CONTIGUOUS, EP_PLACE_ROUND_ROBIN};
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++) {
        double worst = 0;
        for (size_t k = 0; k < EP_ARRAY_LEN(kinds); k++)
            run_preset(c, presets[i], kinds[k], &worst);
        ep_cluster_allreduce_f64(c, &worst, 1, EP_REDUCE_MAX);
        if (c->rank == 0)
            printf("# %s, %d GPUs: MoE layer backend cuda vs reference, max rel err %.2e "
                   "(tol %.0e)\n",
                   presets[i], c->world_size, worst, CUDA_TEST_BF16_TOL);
    }
    int rc = mpi_check_finish(c, "test_moe_cuda");
    ep_cluster_free(c);
    return rc;
}
