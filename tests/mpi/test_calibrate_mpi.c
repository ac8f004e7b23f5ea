// ep_calibrate at world sizes 1-4 on both tiny presets with generated data
// (2 domains, 5 sequences of odd lengths): the profile is the same on every
// rank, a second run writes a byte-identical file (Qwen3), it round-trips through the
// routing loader, layer_sensitivity has one entry per layer (DeepSeek's dense
// layer 0 is 0, MoE layers > 0) and one MoE layer's W_l equals the mean top-N
// KL recomputed with the single-process reference forward (2 % relative),
// r_min < r_max, frequencies sum to k_base per layer, each key is the most
// frequent expert of its layer (one candidate per layer here); DES's medians
// equal (1e-4 relative) the medians of the same tokens routed by the
// single-process reference forward on one rank; Ban with the calibrated
// profile keeps more experts per token than uncalibrated Ban on tiny Qwen3
// (synthetic MoE inputs, as `epserve bench` routes them).
#include "common/weights.h"
#include "model/calibrate.h"
#include "mpi_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
enum { N_SEQ = 5 };
static const int seq_len[N_SEQ] = {5, 7, 11, 3, 9};
static const double tol_w = 2e-2; // EP vs reference logits differ ~1e-6 relative

// Sequence i: domain i % 2 ("math" / "code"), ids from ep_rng seeded 7700 + i,
// 3 of 4 in the domain's quarter of the vocabulary.
static void write_data(const char *path, int vocab)
{
    FILE *f = fopen(path, "w");
    EP_ASSERT(f);
    for (int i = 0; i < N_SEQ; i++) {
        ep_rng r;
        ep_rng_seed(&r, 7700 + (uint64_t)i);
        fprintf(f, "{\"domain\": \"%s\", \"tokens\": [", i % 2 ? "code" : "math");
        int q = vocab / 4, d = 1 + i % 2;
        for (int t = 0; t < seq_len[i]; t++) {
            uint64_t a = ep_rng_next(&r), b = ep_rng_next(&r);
            int id = a % 4 ? d * q + (int)(b % (uint64_t)q) : (int)(b % (uint64_t)vocab);
            fprintf(f, "%s%d", t ? ", " : "", id);
        }
        fprintf(f, "]}\n");
    }
    fclose(f);
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = ep_xmalloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    b[*n] = 0;
    fclose(f);
    return b;
}

// Mean top-N KL of layer l at K_min over this data, recomputed with the
// reference forward (each rank its sequences i % world == rank, then summed).
static double reference_w(ep_cluster *cl, const ep_model_cfg *cfg, ep_model *m,
                          const ep_calib_data *d, int layer, int k_min, int top_n)
{
    ep_calib_policy base, cut;
    ep_calib_policy_init(&base, cfg);
    ep_calib_policy_init(&cut, cfg);
    ep_calib_policy_set(&cut, layer, k_min, -1);
    const int V = cfg->vocab;
    float *lp = ep_xmalloc((size_t)d->max_len * V * sizeof(float));
    float *lq = ep_xmalloc((size_t)d->max_len * V * sizeof(float));
    int *idx = ep_xmalloc((size_t)V * sizeof(int));
    double sum[2] = {0.0, 0.0}; // KL, positions
    for (int i = cl->rank; i < d->n_seqs; i += cl->world_size) {
        int n = d->off[i + 1] - d->off[i];
        CHECK_OK(ep_model_reference(m, &base.base, d->tokens + d->off[i], n, lp));
        CHECK_OK(ep_model_reference(m, &cut.base, d->tokens + d->off[i], n, lq));
        for (int t = 0; t < n; t++)
            sum[0] += ep_calib_kl_topn(lp + (size_t)t * V, lq + (size_t)t * V, V, top_n, idx);
        sum[1] += n;
    }
    CHECK_OK(ep_cluster_allreduce_f64(cl, sum, 2, EP_REDUCE_SUM));
    free(lp);
    free(lq);
    free(idx);
    ep_calib_policy_free(&base);
    ep_calib_policy_free(&cut);
    return sum[0] / sum[1];
}

// DES's medians recomputed on this rank alone: every sequence through the
// reference forward with the recording baseline policy, no sums over ranks.
static void reference_medians(const ep_model_cfg *cfg, ep_model *m, const ep_calib_data *d,
                              float *med)
{
    ep_calib_policy base;
    ep_calib_policy_init(&base, cfg);
    ep_calib_record rec;
    ep_calib_record_init(&rec, cfg->n_layers, cfg->n_experts, cfg->k_base, d->n_domains);
    base.rec = &rec;
    float *logits = ep_xmalloc((size_t)d->max_len * cfg->vocab * sizeof(float));
    for (int i = 0; i < d->n_seqs; i++) {
        rec.domain = d->domain[i];
        CHECK_OK(ep_model_reference(m, &base.base, d->tokens + d->off[i], d->off[i + 1] - d->off[i],
                                    logits));
    }
    CHECK_OK(ep_calib_des_medians(&rec, NULL, NULL, med));
    free(logits);
    ep_calib_record_free(&rec);
    ep_calib_policy_free(&base);
}

// Average K of policy p over 64 synthetic MoE inputs per layer, 4 domains
// (what `epserve bench` routes), on this rank alone.
static double avg_k(const ep_model_cfg *cfg, ep_weights *w, const ep_policy *p)
{
    enum { T = 64 };
    const int H = cfg->hidden, E = cfg->n_experts;
    float *x = ep_xmalloc((size_t)T * H * sizeof(float));
    float *gate = ep_xmalloc((size_t)E * H * sizeof(float));
    ep_router *r = NULL;
    ep_routes rt;
    ep_routes_init(&rt, T, ep_policy_max_k(p), cfg->k_base);
    CHECK_OK(ep_router_init(cfg, T, &r));
    double kept = 0.0, n = 0.0;
    for (int l = cfg->first_k_dense; l < cfg->n_layers && r; l++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", l);
        int64_t shape[2] = {E, H};
        CHECK_OK(ep_weights_read_f32(w, name, 2, shape, gate));
        for (int t = 0; t < T; t++)
            ep_synth_hidden(cfg, 99, l, t % 4, t, x + (size_t)t * H);
        CHECK_OK(ep_router_route(r, p, NULL, l, x, T, gate, &rt));
        kept += ep_routes_nnz(&rt);
        n += T;
    }
    ep_router_free(r);
    ep_routes_free(&rt);
    free(x);
    free(gate);
    return kept / n;
}

static void check_profile(ep_cluster *cl, const ep_model_cfg *cfg, ep_model *m,
                          const ep_calib_data *d, const ep_routing_cfg *rc,
                          const ep_calib_summary *sum)
{
    const int L = cfg->n_layers, E = cfg->n_experts;
    CHECK(rc->policy == EP_POLICY_BANPICK, "%s: policy %d", cfg->name, rc->policy);
    CHECK(rc->ban.layer_sensitivity != NULL, "%s: layer_sensitivity", cfg->name);
    if (!rc->ban.layer_sensitivity) return;
    for (int l = 0; l < L; l++) {
        float W = rc->ban.layer_sensitivity[l];
        if (l < cfg->first_k_dense)
            CHECK(W == 0.0f, "%s: dense layer %d W %g != 0", cfg->name, l, W);
        else
            CHECK(W > 0.0f && isfinite(W), "%s: MoE layer %d W %g, expected > 0", cfg->name, l, W);
    }
    CHECK(rc->ban.r_min < rc->ban.r_max && rc->ban.r_min > 0.0f && rc->ban.r_max <= 1.0f,
          "%s: r_min %g r_max %g", cfg->name, rc->ban.r_min, rc->ban.r_max);
    CHECK(sum->top_tokens == 1000 && sum->n_tokens == d->off[d->n_seqs], "%s: top %d, tokens %lld",
          cfg->name, sum->top_tokens, (long long)sum->n_tokens);
    CHECK(rc->pick.n_domains == 2 && rc->pick.domain_auto, "%s: %d domains, auto %d", cfg->name,
          rc->pick.n_domains, rc->pick.domain_auto);
    for (int di = 0; di < rc->pick.n_domains; di++) {
        const ep_pick_domain *pd = &rc->pick.domains[di];
        int n_keys = 0;
        for (int l = cfg->first_k_dense; l < L; l++) {
            const float *f = pd->frequency + (size_t)l * E;
            double s = 0.0;
            float top1 = 0.0f;
            for (int e = 0; e < E; e++) {
                s += f[e];
                top1 = fmaxf(top1, f[e]);
            }
            CHECK(fabs(s - cfg->k_base) < 1e-4, "%s %s layer %d: frequencies sum %g, expected %d",
                  cfg->name, pd->name, l, s, cfg->k_base);
            for (int e = 0; e < E; e++) {
                if (!pd->key[(size_t)l * E + e]) continue;
                n_keys++;
                CHECK(f[e] == top1 && f[e] > 0.0f,
                      "%s %s: key L%dE%d has frequency %g, not the most frequent %g", cfg->name,
                      pd->name, l, e, f[e], top1);
            }
        }
        CHECK(n_keys >= 1 && n_keys <= sum->top_keys, "%s %s: %d keys, expected 1..%d", cfg->name,
              pd->name, n_keys, sum->top_keys);
    }
    // DES's medians against the same tokens through the reference, on one rank.
    const int w = cfg->k_base - 1;
    CHECK(rc->des.median_ratio != NULL, "%s: no des.median_ratio", cfg->name);
    if (rc->des.median_ratio) {
        float *ref_med = ep_xmalloc((size_t)L * w * sizeof(float));
        reference_medians(cfg, m, d, ref_med);
        for (int i = 0; i < L * w; i++) {
            float got = rc->des.median_ratio[i], want = ref_med[i];
            if (i / w < cfg->first_k_dense)
                CHECK(got == 1.0f, "%s: dense layer %d median %g, expected 1", cfg->name, i / w,
                      got);
            else
                CHECK(got >= 1.0f && fabsf(got - want) <= 1e-4f * want,
                      "%s: des.median_ratio[%d][%d] %.9g, reference %.9g", cfg->name, i / w, i % w,
                      got, want);
        }
        free(ref_med);
    }
    // One MoE layer's W_l against the reference forward.
    int l = cfg->first_k_dense;
    double ref = reference_w(cl, cfg, m, d, l, sum->k_min, sum->top_tokens);
    CHECK(fabs(ref - sum->w[l]) <= tol_w * ref, "%s: W_%d %.6g, reference %.6g (tol %.0e rel)",
          cfg->name, l, sum->w[l], ref, tol_w);
}

static void check_round_trip(ep_cluster *cl, const ep_model_cfg *cfg, const ep_routing_cfg *rc,
                             const char *path)
{
    ep_routing_cfg back;
    ep_status st = ep_routing_cfg_load(path, cfg, &back);
    CHECK(st == EP_OK, "%s: load %s: %s", cfg->name, path, ep_last_error());
    if (st) return;
    const size_t L = (size_t)cfg->n_layers, LE = L * cfg->n_experts;
    CHECK(!memcmp(back.ban.layer_sensitivity, rc->ban.layer_sensitivity, L * sizeof(float)) &&
              back.ban.r_min == rc->ban.r_min && back.ban.r_max == rc->ban.r_max &&
              back.ban.k_min == rc->ban.k_min && back.policy == rc->policy,
          "%s: ban section differs after the round trip", cfg->name);
    CHECK(back.des.median_ratio && rc->des.median_ratio &&
              !memcmp(back.des.median_ratio, rc->des.median_ratio,
                      L * (cfg->k_base - 1) * sizeof(float)),
          "%s: des.median_ratio differs after the round trip", cfg->name);
    bool same = back.pick.n_domains == rc->pick.n_domains && back.pick.domain_auto;
    for (int di = 0; same && di < rc->pick.n_domains; di++) {
        const ep_pick_domain *a = &back.pick.domains[di], *b = &rc->pick.domains[di];
        same = !strcmp(a->name, b->name) && !memcmp(a->key, b->key, LE) &&
               !memcmp(a->frequency + (size_t)cfg->first_k_dense * cfg->n_experts,
                       b->frequency + (size_t)cfg->first_k_dense * cfg->n_experts,
                       (LE - (size_t)cfg->first_k_dense * cfg->n_experts) * sizeof(float));
    }
    CHECK(same, "%s: pick domains differ after the round trip", cfg->name);
    ep_routing_cfg_free(&back);
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    char dir[128];
    snprintf(dir, sizeof dir, "/tmp/ep_test_calib_%ld", (long)getpid());
    EP_ASSERT(mkdir(dir, 0700) == 0);
    for (size_t pi = 0; pi < EP_ARRAY_LEN(presets); pi++) {
        ep_model_cfg cfg;
        ep_weights *w = NULL;
        CHECK_OK(ep_model_cfg_load(presets[pi], &cfg));
        CHECK_OK(ep_weights_open(&cfg, &w));
        if (!w) continue;
        char data_path[256], out[2][256];
        snprintf(data_path, sizeof data_path, "%s/calib.jsonl", dir);
        write_data(data_path, cfg.vocab);
        ep_calib_data d;
        CHECK_OK(ep_calib_data_load(data_path, cfg.vocab, NULL, &d));
        ep_calib_opts co;
        ep_calib_opts_default(&co);
        co.key_candidates = 1; // keeps the test short; the CLI test runs the default 2
        // One model (with the reference) serves every run and the reference check.
        ep_model_opts mo;
        ep_calib_model_opts(&cfg, &d, &mo);
        mo.moe.with_reference = true;
        ep_model *m = NULL;
        CHECK_OK(ep_model_init(&cfg, cl, w, &mo, &m));
        if (!m) continue;
        ep_routing_cfg rc[2];
        ep_calib_summary sum[2];
        // The second run (byte identity) on the first preset only: time.
        int n_runs = pi == 0 ? 2 : 1;
        for (int run = 0; run < n_runs; run++) {
            CHECK_OK(ep_calibrate(&cfg, cl, m, &d, &co, &rc[run], &sum[run]));
            snprintf(out[run], sizeof out[run], "%s/%s-%d.yaml", dir, cfg.name, run);
            CHECK_OK(ep_calib_write(&rc[run], &cfg, "# test profile\n", out[run]));
        }
        size_t n0 = 0, n1 = 0;
        char *b0 = slurp(out[0], &n0), *b1 = n_runs > 1 ? slurp(out[1], &n1) : NULL;
        if (n_runs > 1)
            CHECK(b0 && b1 && n0 == n1 && !memcmp(b0, b1, n0),
                  "%s: two runs differ (%zu vs %zu bytes)", cfg.name, n0, n1);
        // Every rank derived the same profile.
        int64_t h[2];
        h[0] = h[1] = b0 ? (int64_t)ep_hash64(b0, n0, 1) : 0;
        CHECK_OK(ep_cluster_allreduce_i64(cl, &h[0], 1, EP_REDUCE_MIN));
        CHECK_OK(ep_cluster_allreduce_i64(cl, &h[1], 1, EP_REDUCE_MAX));
        CHECK(h[0] == h[1], "%s: ranks wrote different profiles", cfg.name);
        check_round_trip(cl, &cfg, &rc[0], out[0]);
        check_profile(cl, &cfg, m, &d, &rc[0], &sum[0]);

        // Ban, uncalibrated vs calibrated.
        ep_routing_cfg ban;
        ep_routing_cfg_copy(&ban, &rc[0]);
        ban.policy = EP_POLICY_BAN;
        ep_policy *p_def = NULL, *p_cal = NULL;
        CHECK_OK(ep_policy_create(&cfg, "ban", &p_def));
        CHECK_OK(ep_policy_create_cfg(&ban, &p_cal));
        if (p_def && p_cal) {
            double k_def = avg_k(&cfg, w, p_def), k_cal = avg_k(&cfg, w, p_cal);
            if (cl->rank == 0)
                printf("%s: ban avg K %.3f uncalibrated, %.3f calibrated (r %.4f..%.4f)\n",
                       cfg.name, k_def, k_cal, rc[0].ban.r_min, rc[0].ban.r_max);
            if (cfg.arch == EP_ARCH_QWEN3_MOE)
                CHECK(k_cal > k_def, "%s: calibrated ban avg K %.3f <= uncalibrated %.3f", cfg.name,
                      k_cal, k_def);
        }
        ep_policy_free(p_def);
        ep_policy_free(p_cal);
        ep_routing_cfg_free(&ban);
        free(b0);
        free(b1);
        for (int run = 0; run < n_runs; run++) {
            remove(out[run]);
            ep_routing_cfg_free(&rc[run]);
            ep_calib_summary_free(&sum[run]);
        }
        remove(data_path);
        ep_calib_data_free(&d);
        ep_model_free(m);
        ep_weights_free(w);
    }
    rmdir(dir);
    int code = mpi_check_finish(cl, "test_calibrate_mpi");
    ep_cluster_free(cl);
    return code;
}
