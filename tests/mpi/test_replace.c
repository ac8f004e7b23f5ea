// Re-placement between steps: a contiguous tiny Qwen3 runs a window of
// steps, then ep_moe_replace re-places it by EPLB from the loads every rank
// observed (with 5 redundant experts). A huge min_gain keeps the placement;
// a negative one forces the move. After the move every rank holds the same
// placement, the predicted imbalance did not grow, pairs go to ranks that
// hold their expert, and the EP output still equals the reference. The
// move reads nothing from the ep_weights (its read counter stands still):
// every newly held expert arrives over MPI, and the counted bytes match the
// experts each rank newly holds and what the others sent.
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
static void step_tol(ep_cluster *cl, const ep_model_cfg *cfg, ep_moe *m, ep_policy *pol, int s,
                     float *x, float *y, float *yref, bool check, double tol)
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
        double err = ep_moe_rel_err(y, yref, T, cfg->hidden, tol, NULL);
        CHECK(err <= tol, "step %d layer %d rank %d: rel err %.3e > %g", s, l, cl->rank, err, tol);
    }
}

static void step(ep_cluster *cl, const ep_model_cfg *cfg, ep_moe *m, ep_policy *pol, int s,
                 float *x, float *y, float *yref, bool check)
{
    step_tol(cl, cfg, m, pol, s, x, y, yref, check, 1e-4);
}

// The MoE layer with BF16 experts (ep_moe_opts.expert_dtype): half the
// routed bytes of fp32, the output within the BF16 budget (3e-2, as bench
// --check) of the fp32 reference, and a forced re-placement moves BF16
// bytes (3 I H x 2 per expert) and keeps that accuracy.
static void check_bf16_layer(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w, ep_policy *pol,
                             size_t f32_bytes, float *x, float *y, float *yref)
{
    ep_moe_opts o;
    ep_moe_opts_default(&o, cfg);
    o.cap_tokens = CAP;
    o.with_reference = true;
    o.redundant_experts = 5;
    o.expert_dtype = EP_DTYPE_BF16;
    ep_moe *m = NULL;
    CHECK_OK(ep_moe_init(cfg, cl, w, &o, &m));
    if (!m) return;
    CHECK(ep_moe_expert_bytes(m) * 2 == f32_bytes, "rank %d: BF16 experts hold %zu bytes, fp32 %zu",
          cl->rank, ep_moe_expert_bytes(m), f32_bytes);
    for (int s = 0; s < 3; s++)
        step_tol(cl, cfg, m, pol, s, x, y, yref, true, 3e-2);
    bool moved = false;
    CHECK_OK(ep_moe_replace(m, -1.0, NULL, NULL, &moved));
    CHECK(moved, "BF16: min_gain -1 must move");
    const ep_moe_move_stats *mv = ep_moe_last_move(m);
    const int64_t eb = (int64_t)3 * cfg->moe_inter * cfg->hidden * 2;
    CHECK(mv->bytes_recv == mv->experts_recv * eb, "BF16: rank %d: %lld bytes for %lld experts",
          cl->rank, (long long)mv->bytes_recv, (long long)mv->experts_recv);
    for (int s = 3; s < 5; s++)
        step_tol(cl, cfg, m, pol, s, x, y, yref, true, 3e-2);
    ep_moe_free(m);
}

// BF16 storage moves byte for byte (the MoE layer keeps fp32, so this runs
// the experts/ calls directly, on rank 0): a contiguous BF16 shard resharded
// to round-robin, the experts it lacked imported from a full BF16 load,
// computes bit for bit what a BF16 shard loaded for round-robin computes;
// before the imports it refuses to run.
static void check_bf16_reshard(const ep_model_cfg *cfg, ep_weights *w)
{
    const int E = cfg->n_experts, H = cfg->hidden, W = 2;
    ep_placement pa, pb;
    memset(&pa, 0, sizeof pa);
    memset(&pb, 0, sizeof pb);
    ep_experts *ea = NULL, *all = NULL, *eb = NULL, *nx = NULL;
    ep_experts_opts o = {.weight_dtype = EP_DTYPE_BF16};
    CHECK_OK(ep_placement_init(&pa, EP_PLACE_CONTIGUOUS, E, W));
    CHECK_OK(ep_placement_init(&pb, EP_PLACE_ROUND_ROBIN, E, W));
    CHECK_OK(ep_experts_load_ex(cfg, w, &pa, 0, &o, &ea));
    CHECK_OK(ep_experts_load_ex(cfg, w, NULL, -1, &o, &all));
    CHECK_OK(ep_experts_load_ex(cfg, w, &pb, 0, &o, &eb));
    if (ea && all && eb) CHECK_OK(ep_experts_reshard(ea, &pb, 0, &nx));
    if (!nx) goto out;
    CHECK(ep_experts_expert_bytes(nx) == (size_t)3 * cfg->moe_inter * H * 2,
          "BF16 expert bytes %zu", ep_experts_expert_bytes(nx));
    const int l = cfg->first_k_dense;
    int held[64], n = 0, pending = 0;
    for (int g = 0; g < E && n < 64; g++)
        if (ep_placement_holds(&pb, 0, g)) {
            held[n++] = g;
            pending += ep_experts_pending(nx, l, g);
            CHECK(ep_experts_pending(nx, l, g) == !ep_placement_holds(&pa, 0, g),
                  "expert %d: pending %d, held before %d", g, ep_experts_pending(nx, l, g),
                  ep_placement_holds(&pa, 0, g));
        }
    CHECK(pending > 0, "contiguous -> round-robin left nothing to import");
    // One record per held expert: pairs (g, 1.0).
    int *off = ep_xmalloc((size_t)(n + 1) * sizeof(int));
    float *pw = ep_xmalloc((size_t)n * sizeof(float));
    float *x = ep_xmalloc((size_t)n * H * sizeof(float));
    float *y1 = ep_xcalloc((size_t)n * H, sizeof(float)),
          *y2 = ep_xcalloc((size_t)n * H, sizeof(float));
    for (int i = 0; i <= n; i++)
        off[i] = i;
    for (int i = 0; i < n; i++) {
        pw[i] = 1.0f;
        ep_synth_hidden(cfg, 5, l, 0, i, x + (size_t)i * H);
    }
    CHECK(ep_experts_forward(nx, l, n, off, held, pw, x, y1) == EP_ERR_ARG,
          "a shard with pending experts must refuse to run");
    ep_clear_error();
    void *buf = ep_xmalloc(ep_experts_expert_bytes(nx));
    for (int ll = 0; ll < cfg->n_layers; ll++)
        for (int g = 0; g < E && ep_model_layer_is_moe(cfg, ll); g++)
            if (ep_experts_pending(nx, ll, g)) {
                CHECK_OK(ep_experts_export(all, ll, g, buf));
                CHECK_OK(ep_experts_import(nx, ll, g, buf));
            }
    free(buf);
    CHECK_OK(ep_experts_forward(nx, l, n, off, held, pw, x, y1));
    CHECK_OK(ep_experts_forward(eb, l, n, off, held, pw, x, y2));
    CHECK(!memcmp(y1, y2, (size_t)n * H * sizeof(float)),
          "resharded BF16 experts differ from BF16 experts loaded for the placement");
    free(off);
    free(pw);
    free(x);
    free(y1);
    free(y2);
out:
    ep_experts_free(nx);
    ep_experts_free(eb);
    ep_experts_free(all);
    ep_experts_free(ea);
    ep_placement_free(&pa);
    ep_placement_free(&pb);
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
    check_bf16_layer(cl, &cfg, w, pol, ep_moe_expert_bytes(m), x, y, yref);

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
    // What this rank holds before the move, to count what it must receive.
    bool *held = ep_xcalloc((size_t)cfg.n_experts, sizeof(bool));
    for (int e = 0; e < cfg.n_experts; e++)
        held[e] = ep_placement_holds(ep_moe_placement(m), cl->rank, e);
    ep_weights_stats ws0, ws1;
    ep_weights_get_stats(w, &ws0);
    CHECK_OK(ep_moe_replace(m, -1.0, &before, &after, &moved));
    ep_weights_get_stats(w, &ws1);
    CHECK(moved, "min_gain -1 must move");
    CHECK(ws1.tensors == ws0.tensors && ws1.bytes == ws0.bytes,
          "rank %d: re-placement read %lld tensors (%llu bytes) from the weights; expected none",
          cl->rank, (long long)(ws1.tensors - ws0.tensors),
          (unsigned long long)(ws1.bytes - ws0.bytes));
    int n_new = 0, n_moe = 0;
    for (int e = 0; e < cfg.n_experts; e++)
        n_new += !held[e] && ep_placement_holds(ep_moe_placement(m), cl->rank, e);
    for (int l = 0; l < cfg.n_layers; l++)
        n_moe += ep_model_layer_is_moe(&cfg, l);
    free(held);
    const ep_moe_move_stats *mv = ep_moe_last_move(m);
    // fp32 storage: gate, up [I, H] and down [H, I] per expert and layer
    const int64_t eb = (int64_t)3 * cfg.moe_inter * cfg.hidden * (int64_t)sizeof(float);
    CHECK(mv->experts_recv == (int64_t)n_new * n_moe,
          "rank %d received %lld expert weights, newly holds %d experts x %d layers", cl->rank,
          (long long)mv->experts_recv, n_new, n_moe);
    CHECK(mv->bytes_recv == mv->experts_recv * eb, "rank %d: %lld bytes for %lld experts", cl->rank,
          (long long)mv->bytes_recv, (long long)mv->experts_recv);
    CHECK(mv->bytes_moved == mv->bytes_sent, "rank %d: transport moved %lld, sent %lld", cl->rank,
          (long long)mv->bytes_moved, (long long)mv->bytes_sent);
    int64_t tot[3] = {mv->bytes_sent, mv->bytes_recv, mv->experts_recv};
    CHECK_OK(ep_cluster_allreduce_i64(cl, tot, 3, EP_REDUCE_SUM));
    CHECK(tot[0] == tot[1], "%lld bytes sent in all, %lld received", (long long)tot[0],
          (long long)tot[1]);
    if (cl->world_size > 1)
        CHECK(tot[2] > 0, "a move from contiguous to EPLB+5 sent no weights over MPI");
    if (cl->rank == 0)
        printf("# replace: %lld expert weights (%lld bytes) moved over MPI\n", (long long)tot[2],
               (long long)tot[1]);
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
    if (cl->rank == 0) check_bf16_reshard(&cfg, w);
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
