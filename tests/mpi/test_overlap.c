// Two-micro-batch overlap (ep_moe_opts.micro_batches = 2) against the plain
// path. For both tiny presets, contiguous and round-robin placement,
// baseline and Ban routing, and token counts that are odd, 0 and 1 on some
// ranks (and on one rank, layer by layer): the stats (pairs, sends,
// records, bytes planned and measured) are the one-batch run's, the output
// equals ep_moe_reference within 1e-4, and it has the same bits as with one
// micro-batch: each token's partial sums come from the same records, summed
// in the same rank order, and an expert's kernel (fp32: the panel product;
// BF16: the nt product) gives the same bits whatever rows it has in a pass.
// Big steps (tens of rows per expert) as well, and BF16 experts on one
// preset (within 3e-2 of the fp32 reference, as test_replace).
// The phase barrier (ep_moe_opts.phase_barrier, one micro-batch) changes
// only the timing: same bits and stats as without, ranks with 0 tokens
// included; with two micro-batches it is refused.
// Contiguous fp32 steps again with hier dispatch at 2 ranks per node (its
// stage 2 runs inside dispatch_finish and combine_finish of each half).
// Also the transport's async exchange with two in flight, waited for in
// reverse order (with and without the liveness watch), and the order
// checks of the split dispatch/combine.
#include "cluster/liveness.h"
#include "comm/comm.h"
#include "common/weights.h"
#include "model/moe.h"
#include "router/policy.h"
#include "mpi_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
static const char *policies[] = {"baseline", "ban"};
enum { CAP = 96 };

// Tokens rank `rank` routes at MoE layer l: odd, 0 and 1 among them, and
// changing with the layer so that every rank sees each case. `big`: enough
// that experts get tens of rows (prefill-like segments, several passes of the
// register tile).
static int tokens_of(int rank, int world, int l, bool big)
{
    static const int many[2][4] = {{7, 0, 1, 13}, {91, 0, 1, 57}};
    static const int one[2][4] = {{9, 1, 0, 11}, {95, 1, 0, 77}};
    return world > 1 ? many[big][(rank + l) % 4] : one[big][l % 4];
}

// ---- the transport's async exchange --------------------------------------------------

// Bytes rank s sends rank d in exchange `ex` (a multiple of 4, zero included).
static int64_t part_bytes(int s, int d, int ex)
{
    return 4 * (int64_t)((s * 7 + d * 3 + ex * 5) % 6);
}
static uint8_t payload(int s, int d, int ex, int64_t i)
{
    return (uint8_t)(s * 31 + d * 17 + ex * 101 + i * 7);
}

typedef struct {
    int64_t *sb, *so, *rb, *ro; // [world]
    uint8_t *send, *recv;
    int64_t remote; // bytes this rank sends to others
} xchg;

static void xchg_make(xchg *x, int me, int W, int ex)
{
    x->sb = calloc(4 * (size_t)W, sizeof(int64_t));
    x->so = x->sb + W;
    x->rb = x->sb + 2 * W;
    x->ro = x->sb + 3 * W;
    int64_t so = 0, ro = 0;
    x->remote = 0;
    for (int d = 0; d < W; d++) {
        x->sb[d] = part_bytes(me, d, ex);
        x->rb[d] = part_bytes(d, me, ex);
        x->so[d] = so;
        x->ro[d] = ro;
        so += x->sb[d] + 4; // a gap between parts, which must stay untouched
        ro += x->rb[d] + 4;
        if (d != me) x->remote += x->sb[d];
    }
    x->send = malloc((size_t)so + 1);
    x->recv = malloc((size_t)ro + 1);
    memset(x->recv, 0xAB, (size_t)ro + 1);
    for (int d = 0; d < W; d++)
        for (int64_t i = 0; i < x->sb[d]; i++)
            x->send[x->so[d] + i] = payload(me, d, ex, i);
}

// Wrong bytes in what arrived (gaps included).
static int xchg_wrong(const xchg *x, int me, int W, int ex)
{
    int bad = 0;
    for (int s = 0; s < W; s++) {
        for (int64_t i = 0; i < x->rb[s]; i++)
            bad += x->recv[x->ro[s] + i] != payload(s, me, ex, i);
        for (int64_t i = 0; i < 4; i++)
            bad += x->recv[x->ro[s] + x->rb[s] + i] != 0xAB;
    }
    return bad;
}

static void xchg_free(xchg *x)
{
    free(x->sb);
    free(x->send);
    free(x->recv);
}

static void test_async(ep_cluster *cl)
{
    const int W = cl->world_size, me = cl->rank;
    ep_transport *t = NULL;
    CHECK_OK(ep_transport_mpi_init(cl, &t));
    if (!t) return;
    // Round 1 under the liveness watch: the waits poll (ep_cluster_watch_wait).
    for (int round = 0; round < 2; round++) {
        if (round == 1) CHECK_OK(ep_cluster_watch_start(cl));
        xchg a, b, c;
        xchg_make(&a, me, W, 3 * round);
        xchg_make(&b, me, W, 3 * round + 1);
        xchg_make(&c, me, W, 3 * round + 2);
        const int64_t moved0 = t->bytes_moved;
        ep_transport_req *qa = NULL, *qb = NULL, *qc = NULL;
        CHECK_OK(t->vt->alltoallv_start(t, a.send, a.sb, a.so, a.recv, a.rb, a.ro, &qa));
        CHECK_OK(t->vt->alltoallv_start(t, b.send, b.sb, b.so, b.recv, b.rb, b.ro, &qb));
        // A third in flight is refused locally, before anything is posted.
        ep_status st = t->vt->alltoallv_start(t, c.send, c.sb, c.so, c.recv, c.rb, c.ro, &qc);
        CHECK(st == EP_ERR_ARG && !qc && strstr(ep_last_error(), "in flight"),
              "third exchange in flight: status %d (%s)", st, ep_last_error());
        // Counts may run while payloads are in flight (every rank in one order).
        int64_t *cs = malloc((size_t)W * sizeof(int64_t)),
                *cr = malloc((size_t)W * sizeof(int64_t));
        for (int d = 0; d < W; d++)
            cs[d] = 1000 * me + d;
        CHECK_OK(t->vt->exchange_counts(t, cs, cr));
        int cbad = 0;
        for (int s = 0; s < W; s++)
            cbad += cr[s] != 1000 * s + me;
        CHECK(cbad == 0, "counts between start and wait: %d wrong", cbad);
        free(cs);
        free(cr);
        // Reverse order in round 0, forward in round 1.
        int64_t ma = 0, mb = 0;
        if (round == 0) {
            CHECK_OK(t->vt->alltoallv_wait(t, qb, &mb));
            CHECK_OK(t->vt->alltoallv_wait(t, qa, &ma));
        } else {
            CHECK_OK(t->vt->alltoallv_wait(t, qa, &ma));
            CHECK_OK(t->vt->alltoallv_wait(t, qb, &mb));
        }
        st = t->vt->alltoallv_wait(t, qa, NULL);
        CHECK(st == EP_ERR_ARG, "waiting twice for one exchange: status %d", st);
        CHECK(xchg_wrong(&a, me, W, 3 * round) == 0, "round %d: exchange A: %d wrong bytes", round,
              xchg_wrong(&a, me, W, 3 * round));
        CHECK(xchg_wrong(&b, me, W, 3 * round + 1) == 0, "round %d: exchange B: %d wrong bytes",
              round, xchg_wrong(&b, me, W, 3 * round + 1));
        CHECK(ma == a.remote && mb == b.remote,
              "moved per exchange: %lld and %lld, expected %lld and %lld", (long long)ma,
              (long long)mb, (long long)a.remote, (long long)b.remote);
        CHECK(t->bytes_moved - moved0 == a.remote + b.remote,
              "bytes_moved grew by %lld, expected %lld", (long long)(t->bytes_moved - moved0),
              (long long)(a.remote + b.remote));
        // The blocking call is start + wait on the same slots: still works after.
        CHECK_OK(ep_transport_alltoallv(t, c.send, c.sb, c.so, c.recv, c.rb, c.ro));
        CHECK(xchg_wrong(&c, me, W, 3 * round + 2) == 0, "blocking exchange after async: wrong");
        xchg_free(&a);
        xchg_free(&b);
        xchg_free(&c);
    }
    if (ep_cluster_watch_on()) ep_cluster_watch_stop();
    // The split dispatch/combine refuses calls out of order (local checks).
    ep_comm *m = NULL;
    CHECK_OK(ep_comm_init(cl, t, 13, EP_DTYPE_F32, 4, 2, &m));
    if (m) {
        ep_comm_work w;
        memset(&w, 0, sizeof w);
        ep_comm_stats st;
        memset(&st, 0, sizeof st);
        CHECK(ep_comm_dispatch_finish(m, &w, &st) == EP_ERR_ARG &&
                  strstr(ep_last_error(), "dispatch_start"),
              "dispatch_finish before dispatch_start: %s", ep_last_error());
        CHECK(ep_comm_combine_start(m, &w) == EP_ERR_ARG, "combine_start before a dispatch");
        CHECK(ep_comm_combine_finish(m, NULL, &st) == EP_ERR_ARG,
              "combine_finish before a dispatch");
    }
    ep_comm_free(m);
    ep_transport_free(t);
}

// ---- the MoE layer -----------------------------------------------------------------------

static bool stats_equal(const ep_comm_stats *a, const ep_comm_stats *b)
{
    return a->tokens == b->tokens && a->pairs == b->pairs && a->sends == b->sends &&
           a->dest_ranks == b->dest_ranks && a->dispatch_bytes == b->dispatch_bytes &&
           a->combine_bytes == b->combine_bytes &&
           a->dispatch_bytes_inter == b->dispatch_bytes_inter &&
           a->combine_bytes_inter == b->combine_bytes_inter && a->base_pairs == b->base_pairs &&
           a->base_sends == b->base_sends && a->base_dispatch_bytes == b->base_dispatch_bytes &&
           a->planned_bytes == b->planned_bytes && a->measured_bytes == b->measured_bytes &&
           a->recv_pairs == b->recv_pairs && a->recv_tokens == b->recv_tokens;
}

static void run_config(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w, ep_place_kind kind,
                       bool big, ep_dtype expert_dtype)
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
    o.expert_dtype = expert_dtype;
    ep_moe *m1 = NULL, *m2 = NULL, *m3 = NULL;
    CHECK_OK(ep_moe_init(cfg, cl, w, &o, &m1));
    o.with_reference = false;
    o.phase_barrier = true;
    CHECK_OK(ep_moe_init(cfg, cl, w, &o, &m3));
    o.micro_batches = 2;
    ep_moe *bad = NULL;
    CHECK(ep_moe_init(cfg, cl, w, &o, &bad) == EP_ERR_ARG && !bad &&
              strstr(ep_last_error(), "phase_barrier"),
          "phase_barrier with 2 micro-batches accepted");
    o.phase_barrier = false;
    CHECK_OK(ep_moe_init(cfg, cl, w, &o, &m2));
    o.micro_batches = 3;
    CHECK(ep_moe_init(cfg, cl, w, &o, &bad) == EP_ERR_ARG && !bad &&
              strstr(ep_last_error(), "micro_batches"),
          "micro_batches 3 accepted");
    if (!m1 || !m2 || !m3) goto out;

    const size_t H = (size_t)cfg->hidden;
    float *x = ep_xmalloc((size_t)CAP * H * sizeof(float));
    float *y1 = ep_xmalloc((size_t)CAP * H * sizeof(float));
    float *y2 = ep_xmalloc((size_t)CAP * H * sizeof(float));
    float *y3 = ep_xmalloc((size_t)CAP * H * sizeof(float));
    float *yref = ep_xmalloc((size_t)CAP * H * sizeof(float));
    int64_t crossed = 0;
    const char *dn = ep_dtype_name(expert_dtype);
    // The reference keeps fp32 experts: BF16 ones are within its budget.
    const double ref_tol = expert_dtype == EP_DTYPE_BF16 ? 3e-2 : 1e-4;
    // Big steps: baseline only (Ban's fewer pairs add nothing there).
    const bool hier_too = kind == EP_PLACE_CONTIGUOUS && !big && expert_dtype == EP_DTYPE_F32;
    for (int pass = 0; pass < (hier_too ? 2 : 1); pass++) {
        if (pass) {
            ep_cluster_set_ranks_per_node(cl, 2);
            CHECK_OK(ep_moe_set_dispatch(m1, EP_DISPATCH_HIER));
            CHECK_OK(ep_moe_set_dispatch(m2, EP_DISPATCH_HIER));
            CHECK_OK(ep_moe_set_dispatch(m3, EP_DISPATCH_HIER));
        }
        for (int p = 0; p < (big ? 1 : n_pol); p++) {
            for (int l = 0; l < cfg->n_layers; l++) {
                if (!ep_model_layer_is_moe(cfg, l)) continue;
                const int T = tokens_of(cl->rank, cl->world_size, l, big);
                int64_t base = 1000 * (int64_t)cl->rank + 37 * l;
                for (int i = 0; i < T; i++)
                    ep_synth_hidden(cfg, 11, l, (int)((base + i) % EP_SYNTH_N_DOMAINS), base + i,
                                    x + (size_t)i * H);
                ep_comm_stats s1, s2, s3;
                memset(&s1, 0, sizeof s1);
                memset(&s2, 0, sizeof s2);
                memset(&s3, 0, sizeof s3);
                const char *pn = ep_policy_name(pol[p]), *kn = ep_place_kind_name(kind);
                ep_status r1 = ep_moe_forward(m1, pol[p], l, x, T, y1, &s1, NULL);
                ep_status r2 = ep_moe_forward(m2, pol[p], l, x, T, y2, &s2, NULL);
                ep_moe_times tm3 = {0};
                ep_status r3 = ep_moe_forward(m3, pol[p], l, x, T, y3, &s3, &tm3);
                CHECK(r1 == EP_OK && r2 == EP_OK && r3 == EP_OK, "%s %s %s %s layer %d: %s",
                      cfg->name, dn, pn, kn, l, ep_last_error());
                if (r1 || r2 || r3) continue;
                CHECK(memcmp(y1, y3, (size_t)T * H * sizeof(float)) == 0 && stats_equal(&s1, &s3) &&
                          tm3.dispatch_us >= 0 && tm3.combine_us >= 0,
                      "%s %s %s %s layer %d rank %d T %d: the phase barrier changed the output or "
                      "the stats",
                      cfg->name, dn, pn, kn, l, cl->rank, T);
                CHECK_OK(ep_moe_reference(m1, pol[p], l, x, T, yref));
                int diff = 0;
                size_t first = 0;
                for (size_t i = 0; i < (size_t)T * H; i++)
                    if (memcmp(&y1[i], &y2[i], sizeof(float)) != 0 && diff++ == 0) first = i;
                CHECK(diff == 0,
                      "%s %s %s %s layer %d rank %d T %d: %d of %zu values differ between 1 and 2 "
                      "micro-batches, first token %zu [%zu]: %.9g vs %.9g",
                      cfg->name, dn, pn, kn, l, cl->rank, T, diff, (size_t)T * H, first / H,
                      first % H, diff ? y1[first] : 0.0f, diff ? y2[first] : 0.0f);
                double err = ep_moe_rel_err(y2, yref, T, (int)H, ref_tol, NULL);
                CHECK(err <= ref_tol,
                      "%s %s %s %s layer %d rank %d: 2 micro-batches vs reference: %.3e", cfg->name,
                      dn, pn, kn, l, cl->rank, err);
                CHECK(stats_equal(&s1, &s2),
                      "%s %s %s %s layer %d rank %d: stats differ: pairs %lld/%lld, planned "
                      "%lld/%lld, measured %lld/%lld, records in %lld/%lld",
                      cfg->name, dn, pn, kn, l, cl->rank, (long long)s1.pairs, (long long)s2.pairs,
                      (long long)s1.planned_bytes, (long long)s2.planned_bytes,
                      (long long)s1.measured_bytes, (long long)s2.measured_bytes,
                      (long long)s1.recv_tokens, (long long)s2.recv_tokens);
                int64_t v[2] = {s2.planned_bytes, s2.measured_bytes};
                CHECK_OK(ep_cluster_allreduce_i64(cl, v, 2, EP_REDUCE_SUM));
                CHECK(
                    v[0] == v[1] && s2.tokens == T,
                    "layer %d: 2 micro-batches: Σ planned %lld, Σ measured %lld, tokens %lld of %d",
                    l, (long long)v[0], (long long)v[1], (long long)s2.tokens, T);
                crossed += s2.measured_bytes;
            }
        }
    }
    if (hier_too) ep_cluster_set_ranks_per_node(cl, 0);
    // Bytes must cross ranks, else the overlap path moved nothing worth checking.
    CHECK_OK(ep_cluster_allreduce_i64(cl, &crossed, 1, EP_REDUCE_SUM));
    if (cl->world_size > 1)
        CHECK(crossed > 0, "%s %s: no bytes crossed ranks", cfg->name, ep_place_kind_name(kind));
    free(x);
    free(y1);
    free(y2);
    free(y3);
    free(yref);
out:
    ep_moe_free(m1);
    ep_moe_free(m2);
    ep_moe_free(m3);
    for (int p = 0; p < n_pol; p++)
        ep_policy_free(pol[p]);
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    test_async(cl);
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++) {
        ep_model_cfg cfg;
        ep_status st = ep_model_cfg_load(presets[i], &cfg);
        CHECK(st == EP_OK, "load %s: %s", presets[i], ep_last_error());
        if (st) continue;
        ep_weights *w = NULL;
        CHECK_OK(ep_weights_open(&cfg, &w));
        if (!w) continue;
        run_config(cl, &cfg, w, EP_PLACE_CONTIGUOUS, false, EP_DTYPE_F32);
        run_config(cl, &cfg, w, EP_PLACE_ROUND_ROBIN, false, EP_DTYPE_F32);
        // Big steps and BF16 experts on one preset: model init dominates
        // the run time.
        if (i == 0) {
            run_config(cl, &cfg, w, EP_PLACE_CONTIGUOUS, true, EP_DTYPE_F32);
            run_config(cl, &cfg, w, EP_PLACE_ROUND_ROBIN, false, EP_DTYPE_BF16);
            run_config(cl, &cfg, w, EP_PLACE_CONTIGUOUS, true, EP_DTYPE_BF16);
        }
        ep_weights_free(w);
    }
    int rc = mpi_check_finish(cl, "overlap");
    ep_cluster_free(cl);
    return rc;
}
