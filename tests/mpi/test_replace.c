// Re-placement between steps: a contiguous tiny Qwen3 runs a window of
// steps, then ep_moe_replace re-places it by EPLB from the loads every rank
// observed (with 5 redundant experts). A huge min_gain keeps the placement;
// a negative one forces the move. After the move every rank holds the same
// placement, the predicted imbalance did not grow, pairs go to ranks that
// hold their expert, and the EP output still equals the reference.
#include "common/weights.h"
#include "model/moe.h"
#include "mpi_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { CAP = 13 };

static int tokens_of(int rank)
{
    return 5 + (rank * 4) % 9;
}

// One step over every MoE layer; checks against the reference when asked.
static void step(ep_cluster *cl, const ep_model_cfg *cfg, ep_moe *m, ep_policy *pol, int s,
                 float *x, float *y, float *yref, bool check)
{
    int T = tokens_of(cl->rank);
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!ep_model_layer_is_moe(cfg, l)) continue;
        for (int i = 0; i < T; i++) {
            int64_t g = ((int64_t)s * cl->world_size + cl->rank) * CAP + i;
            // Mostly the math domain: a skewed load for EPLB to fix.
            ep_synth_hidden(cfg, 11, l, i % 5 ? 1 : 0, g, x + (size_t)i * cfg->hidden);
        }
        CHECK_OK(ep_moe_forward(m, pol, l, x, T, y, NULL, NULL));
        if (!check) continue;
        const ep_placement *lp = ep_moe_layer_placement(m, l);
        const ep_routes *r = ep_moe_last_routes(m);
        const int *prk = ep_moe_last_pair_rank(m);
        int bad = 0;
        for (int j = 0; j < ep_routes_nnz(r); j++)
            bad += !ep_placement_holds(lp, prk[j], r->expert[j]);
        CHECK(bad == 0, "layer %d: %d pairs sent to ranks without their expert", l, bad);
        CHECK_OK(ep_moe_reference(m, pol, l, x, T, yref));
        double err = ep_moe_rel_err(y, yref, T, cfg->hidden, 1e-4, NULL);
        CHECK(err <= 1e-4, "step %d layer %d rank %d: rel err %.3e > 1e-4", s, l, cl->rank, err);
    }
}

// A hash of the placement arrays: its min and max over ranks must agree.
static void check_same_everywhere(ep_cluster *cl, const ep_placement *p, const char *what)
{
    uint64_t h = (uint64_t)p->n_phy; // unsigned: the hash may wrap
    for (int s = 0; s < p->n_phy; s++)
        h = h * 31 + (uint64_t)(p->phy_expert[s] * 7 + p->phy_rank[s]);
    int64_t v[2] = {(int64_t)(h >> 1), -(int64_t)(h >> 1)};
    CHECK_OK(ep_cluster_allreduce_i64(cl, v, 2, EP_REDUCE_MAX));
    CHECK(v[0] == -v[1], "%s: ranks hold different placements", what);
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 2, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_policy *pol = NULL;
    ep_moe *m = NULL;
    CHECK_OK(ep_model_cfg_load("tiny-qwen3-moe", &cfg));
    CHECK_OK(ep_weights_open(&cfg, &w));
    CHECK_OK(ep_policy_create(&cfg, "ban", &pol));
    ep_moe_opts o;
    ep_moe_opts_default(&o, &cfg);
    o.cap_tokens = CAP;
    o.with_reference = true;
    o.redundant_experts = 5;
    if (w && pol) CHECK_OK(ep_moe_init(&cfg, cl, w, &o, &m));
    if (!m) goto out;
    float *x = ep_xmalloc((size_t)CAP * cfg.hidden * sizeof(float));
    float *y = ep_xmalloc((size_t)CAP * cfg.hidden * sizeof(float));
    float *yref = ep_xmalloc((size_t)CAP * cfg.hidden * sizeof(float));

    for (int s = 0; s < 3; s++)
        step(cl, &cfg, m, pol, s, x, y, yref, false);
    CHECK(ep_moe_window_steps(m) == 3, "window counts %lld steps, ran 3",
          (long long)ep_moe_window_steps(m));
    double before = 0, after = 0;
    bool moved = true;
    CHECK_OK(ep_moe_replace(m, 10.0, &before, &after, &moved));
    CHECK(!moved, "min_gain 10 must keep the placement (before %.3f after %.3f)", before, after);
    CHECK(ep_moe_placement(m)->kind == EP_PLACE_CONTIGUOUS, "placement changed without a move");
    CHECK(ep_moe_window_steps(m) == 0, "the window restarts after ep_moe_replace");
    step(cl, &cfg, m, pol, 3, x, y, yref, true);

    for (int s = 4; s < 7; s++)
        step(cl, &cfg, m, pol, s, x, y, yref, false);
    CHECK_OK(ep_moe_replace(m, -1.0, &before, &after, &moved));
    CHECK(moved, "min_gain -1 must move");
    CHECK(after <= before + 1e-9, "EPLB predicted imbalance %.4f > before %.4f", after, before);
    if (cl->world_size > 1)
        CHECK(before > 1.0 && after < before, "skewed window: before %.4f, after %.4f", before,
              after);
    const ep_placement *p = ep_moe_placement(m);
    CHECK(p->kind == EP_PLACE_EPLB, "after the move the placement is EPLB");
    for (int l = 0; l < cfg.n_layers; l++)
        if (ep_model_layer_is_moe(&cfg, l)) {
            CHECK(ep_moe_layer_placement(m, l)->n_phy == cfg.n_experts + 5, "layer %d slots", l);
            check_same_everywhere(cl, ep_moe_layer_placement(m, l), "layer placement");
        }
    for (int s = 7; s < 9; s++)
        step(cl, &cfg, m, pol, s, x, y, yref, true);
    free(x);
    free(y);
    free(yref);
out:
    ep_moe_free(m);
    ep_policy_free(pol);
    ep_weights_free(w);
    int rc = mpi_check_finish(cl, "replace");
    ep_cluster_free(cl);
    return rc;
}
