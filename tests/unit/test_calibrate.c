// The pure parts of `epserve calibrate`: the restricted top-N KL on hand-made
// distributions (restriction, renormalisation, identical -> 0, shift
// invariance, ties), the calibration policy through the real router (K_min at
// one layer only, one expert dropped and the weights renormalised, the
// recorder's R and counts), the frequent-expert and key-expert rules, the
// JSON-lines reader and its errors, and the profile: built from hand-made
// measurements, written with its header and read back by the routing loader
// to an equal config; DES's medians of routed tokens against medians computed
// here from the same scores (odd and even counts, infinite ratios, layers
// without tokens, tokens split over two threads standing for two ranks); the
// shipped calibrated profiles load for their presets.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "router/calibrate.h"

#include <float.h>
#include <pthread.h>

static const double tol = 1e-12;

// 5 layers (layer 0 dense) x 16 experts, top-8, renormalised (as Qwen3).
static void model(ep_model_cfg *m)
{
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "hand-model");
    m->arch = EP_ARCH_QWEN3_MOE;
    m->hidden = 16;
    m->n_layers = 5;
    m->n_experts = 16;
    m->k_base = 8;
    m->first_k_dense = 1;
    m->vocab = 32;
    m->topk_method = EP_TOPK_GREEDY;
    m->n_group = m->topk_group = 1;
    m->norm_topk_prob = true;
    m->routed_scaling_factor = 1.0f;
}

static void logs_of(const double *p, int n, float *out)
{
    for (int i = 0; i < n; i++)
        out[i] = (float)log(p[i]);
}

// ---- KL -----------------------------------------------------------------------

static void test_kl_hand(void **state)
{
    int idx[8];
    float p[4], q[4];
    // Whole vocabulary (top_n >= V): KL(P||Q) = sum p ln(p/q).
    const double P3[3] = {0.5, 0.3, 0.2}, Q3[3] = {0.2, 0.3, 0.5};
    logs_of(P3, 3, p);
    logs_of(Q3, 3, q);
    double want = 0.5 * log(0.5 / 0.2) + 0.2 * log(0.2 / 0.5);
    assert_true(fabs(ep_calib_kl_topn(p, q, 3, 1000, idx) - want) < 1e-6);
    // Identical distributions: exactly 0, restricted or not.
    assert_true(ep_calib_kl_topn(p, p, 3, 1000, idx) == 0.0);
    assert_true(ep_calib_kl_topn(p, p, 3, 2, idx) == 0.0);

    // Top-2 restriction of P = [.4 .3 .2 .1] keeps tokens {0, 1}; both are
    // renormalised over them: P' = [4/7 3/7], Q' = [1/3 2/3] from Q = [.1 .2 .3 .4].
    const double P4[4] = {0.4, 0.3, 0.2, 0.1}, Q4[4] = {0.1, 0.2, 0.3, 0.4};
    logs_of(P4, 4, p);
    logs_of(Q4, 4, q);
    want = 4.0 / 7 * log((4.0 / 7) / (1.0 / 3)) + 3.0 / 7 * log((3.0 / 7) / (2.0 / 3));
    double got = ep_calib_kl_topn(p, q, 4, 2, idx);
    assert_true(fabs(got - want) < 1e-6);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 1);
    // Mass outside the top-2 of P does not count: move Q's tail around.
    q[3] = (float)log(0.9);
    q[2] = (float)log(1e-6);
    assert_true(fabs(ep_calib_kl_topn(p, q, 4, 2, idx) - want) < 1e-6);
    // Logits, not probabilities: a constant shift of either side changes nothing.
    for (int i = 0; i < 4; i++)
        q[i] += 7.5f;
    for (int i = 0; i < 4; i++)
        p[i] -= 3.0f;
    assert_true(fabs(ep_calib_kl_topn(p, q, 4, 2, idx) - want) < 1e-6);
    // The full 4-token KL differs from the restricted one (the restriction matters).
    logs_of(P4, 4, p);
    logs_of(Q4, 4, q);
    double full = 0.0;
    for (int i = 0; i < 4; i++)
        full += P4[i] * log(P4[i] / Q4[i]);
    assert_true(fabs(ep_calib_kl_topn(p, q, 4, 4, idx) - full) < 1e-6);
    assert_true(fabs(full - want) > 1e-2);
    // Huge logits stay finite (log-sum-exp with the max taken out).
    float big_p[3] = {1000.0f, 999.0f, 990.0f}, big_q[3] = {990.0f, 999.0f, 1000.0f};
    double b = ep_calib_kl_topn(big_p, big_q, 3, 3, idx);
    assert_true(isfinite(b) && b > 1.0);
}

static void test_top_tokens(void **state)
{
    float l[7] = {0.5f, 2.0f, 2.0f, -1.0f, 3.0f, 2.0f, 0.5f};
    int idx[7];
    // Ties: the lower id first.
    assert_int_equal(ep_calib_top_tokens(l, 7, 5, idx), 5);
    const int want[5] = {4, 1, 2, 5, 0};
    for (int j = 0; j < 5; j++)
        assert_int_equal(idx[j], want[j]);
    assert_int_equal(ep_calib_top_tokens(l, 7, 1000, idx), 7);
    assert_int_equal(idx[6], 3);
    // kl_sel on the stored selection equals kl_topn.
    float q[7] = {1.0f, 0.0f, 2.5f, 0.0f, 1.5f, -2.0f, 0.25f};
    int n = ep_calib_top_tokens(l, 7, 5, idx);
    float sel[5];
    for (int j = 0; j < n; j++)
        sel[j] = l[idx[j]];
    int scratch[7];
    assert_true(fabs(ep_calib_kl_sel(sel, q, idx, n) - ep_calib_kl_topn(l, q, 7, 5, scratch)) <
                tol);
}

// ---- the calibration policy through the router ---------------------------------

// Logits of token t: expert e gets a distinct value, order depends on t.
static void hand_logits(int T, int E, float *lg)
{
    for (int t = 0; t < T; t++)
        for (int e = 0; e < E; e++)
            lg[t * E + e] = (float)(((e * 7 + t * 3) % E) * (0.1 + 0.05 * t));
}

static void test_policy(void **state)
{
    ep_model_cfg m;
    model(&m);
    enum { T = 5, E = 16 };
    float lg[T * E];
    hand_logits(T, E, lg);
    ep_router *r;
    assert_int_equal(ep_router_init(&m, T, &r), EP_OK);
    ep_routes base, got;
    ep_routes_init(&base, T, 8, 8);
    ep_routes_init(&got, T, 8, 8);
    ep_calib_policy cp;
    ep_calib_policy_init(&cp, &m);
    assert_int_equal(ep_policy_max_k(&cp.base), 8);
    ep_policy *bl;
    assert_int_equal(ep_policy_create(&m, "baseline", &bl), EP_OK);

    // Unmodified: the baseline at every MoE layer.
    for (int l = 1; l < 5; l++) {
        assert_int_equal(ep_router_route_logits(r, bl, NULL, l, lg, T, &base), EP_OK);
        assert_int_equal(ep_router_route_logits(r, &cp.base, NULL, l, lg, T, &got), EP_OK);
        assert_memory_equal(base.expert, got.expert, sizeof(int) * T * 8);
        assert_memory_equal(base.weight, got.weight, sizeof(float) * T * 8);
    }
    // Layer 3 at K_min 3: the top 3 of the baseline, renormalised; layer 2 untouched.
    ep_calib_policy_set(&cp, 3, 3, -1);
    assert_int_equal(ep_router_route_logits(r, bl, NULL, 3, lg, T, &base), EP_OK);
    assert_int_equal(ep_router_route_logits(r, &cp.base, NULL, 3, lg, T, &got), EP_OK);
    for (int t = 0; t < T; t++) {
        assert_int_equal(ep_routes_k(&got, t), 3);
        double s = 0.0, bs = 0.0;
        for (int j = 0; j < 3; j++) {
            assert_int_equal(got.expert[got.offsets[t] + j], base.expert[base.offsets[t] + j]);
            s += got.weight[got.offsets[t] + j];
            bs += base.weight[base.offsets[t] + j];
        }
        assert_true(fabs(s - 1.0) < 1e-6);
        // Same ratios as the baseline's top 3.
        assert_true(fabs(got.weight[got.offsets[t]] - base.weight[base.offsets[t]] / bs) < 1e-6);
    }
    assert_int_equal(ep_router_route_logits(r, &cp.base, NULL, 2, lg, T, &got), EP_OK);
    for (int t = 0; t < T; t++)
        assert_int_equal(ep_routes_k(&got, t), 8);

    // Drop one expert at layer 4: gone where it was kept (K 7, weights
    // renormalised), K 8 where it was not.
    assert_int_equal(ep_router_route_logits(r, bl, NULL, 4, lg, T, &base), EP_OK);
    int victim = base.expert[base.offsets[0] + 2];
    ep_calib_policy_set(&cp, 4, 8, victim);
    assert_int_equal(ep_router_route_logits(r, &cp.base, NULL, 4, lg, T, &got), EP_OK);
    int n_dropped = 0;
    for (int t = 0; t < T; t++) {
        bool had = false;
        for (int j = base.offsets[t]; j < base.offsets[t + 1]; j++)
            had |= base.expert[j] == victim;
        assert_int_equal(ep_routes_k(&got, t), had ? 7 : 8);
        n_dropped += had;
        double s = 0.0;
        for (int j = got.offsets[t]; j < got.offsets[t + 1]; j++) {
            assert_int_not_equal(got.expert[j], victim);
            s += got.weight[j];
        }
        assert_true(fabs(s - 1.0) < 1e-6);
    }
    assert_true(n_dropped >= 1 && n_dropped < T); // the hand logits exercise both cases

    // The recorder: R_i as Ban computes it, min/max, and kept-set counts.
    ep_calib_record rec;
    ep_calib_record_init(&rec, 5, E, 8, 2);
    cp.rec = &rec;
    rec.domain = 1;
    ep_calib_policy_set(&cp, -1, 8, -1);
    assert_int_equal(ep_router_route_logits(r, &cp.base, NULL, 2, lg, T, &got), EP_OK);
    double rmin = INFINITY, rmax = -INFINITY;
    int64_t cnt[E] = {0};
    for (int t = 0; t < T; t++) {
        float sc[E];
        memcpy(sc, lg + t * E, sizeof sc);
        ep_router_softmax(sc, E);
        int top[8];
        ep_router_topk(sc, E, 8, NULL, top);
        double t3 = 0.0, t8 = 0.0;
        for (int j = 0; j < 8; j++) {
            t8 += sc[top[j]];
            if (j < 3) t3 += sc[top[j]];
            cnt[top[j]]++;
        }
        rmin = fmin(rmin, t3 / t8);
        rmax = fmax(rmax, t3 / t8);
    }
    assert_true(fabs(rec.r_min - rmin) < 1e-6 && fabs(rec.r_max - rmax) < 1e-6);
    assert_true(rec.r_min < rec.r_max);
    assert_int_equal(rec.tokens[1 * 5 + 2], T);
    assert_int_equal(rec.tokens[0 * 5 + 2], 0);
    assert_memory_equal(rec.count + (1 * 5 + 2) * E, cnt, sizeof cnt);
    ep_calib_record_free(&rec);
    ep_calib_record_free(NULL);

    ep_policy_free(bl);
    ep_calib_policy_free(&cp);
    ep_calib_policy_free(NULL);
    ep_routes_free(&base);
    ep_routes_free(&got);
    ep_router_free(r);
}

// ---- key experts --------------------------------------------------------------

static void test_frequent(void **state)
{
    const int64_t c[7] = {3, 9, 0, 9, 1, 4, 0};
    int out[7];
    assert_int_equal(ep_calib_frequent(c, 7, 3, out), 3);
    assert_int_equal(out[0], 1); // 9 (lower id of the tie)
    assert_int_equal(out[1], 3); // 9
    assert_int_equal(out[2], 5); // 4
    // Never an expert no token used.
    assert_int_equal(ep_calib_frequent(c, 7, 7, out), 5);
    assert_int_equal(out[4], 4);
    const int64_t z[3] = {0, 0, 0};
    assert_int_equal(ep_calib_frequent(z, 3, 2, out), 0);
}

static void test_choose_keys(void **state)
{
    ep_calib_key_cand c[7] = {
        {1, 4, 0.02}, {2, 9, 0.05}, {1, 3, 0.07},  {3, 1, 0.0},
        {4, 6, 0.05}, {2, 2, 0.01}, {3, 5, 0.004},
    };
    // Order by KL: (1,3) .07, then the tie (2,9)/(4,6) .05 -> lower layer
    // first; (1,4) is skipped (layer 1 taken); KL 0 never counts.
    int n = ep_calib_choose_keys(c, 7, 3);
    assert_int_equal(n, 3);
    assert_int_equal(c[0].layer, 1);
    assert_int_equal(c[0].expert, 3);
    assert_int_equal(c[1].layer, 2);
    assert_int_equal(c[1].expert, 9);
    assert_int_equal(c[2].layer, 4);
    // Asking for more: one per layer, KL > 0 only -> layers 1, 2, 4, 3 (0.004).
    ep_calib_key_cand d[7] = {
        {1, 4, 0.02}, {2, 9, 0.05}, {1, 3, 0.07},  {3, 1, 0.0},
        {4, 6, 0.05}, {2, 2, 0.01}, {3, 5, 0.004},
    };
    n = ep_calib_choose_keys(d, 7, 10);
    assert_int_equal(n, 4);
    assert_int_equal(d[3].layer, 3);
    assert_int_equal(d[3].expert, 5);
    assert_int_equal(ep_calib_choose_keys(d, 0, 3), 0);
}

// ---- the data file --------------------------------------------------------------

static char tmpdir[256];

static const char *write_tmp(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_data(void **state)
{
    ep_calib_data d;
    const char *p =
        write_tmp("good.jsonl", "{\"tokens\": [1, 2, 3], \"domain\": \"math\"}\n"
                                "\n"
                                "{\"tokens\": [31]}\n"
                                "{\"domain\": \"math\", \"tokens\": [0, 5, 7, 11, 13]}\n"
                                "{\"tokens\": [4, 4], \"domain\": \"code\"}\n");
    assert_int_equal(ep_calib_data_load(p, 32, "chat", &d), EP_OK);
    assert_int_equal(d.n_seqs, 4);
    assert_int_equal(d.n_domains, 3); // first appearance: math, chat, code
    assert_string_equal(d.names[0], "math");
    assert_string_equal(d.names[1], "chat");
    assert_string_equal(d.names[2], "code");
    const int dom[4] = {0, 1, 0, 2}, off[5] = {0, 3, 4, 9, 11};
    assert_memory_equal(d.domain, dom, sizeof dom);
    assert_memory_equal(d.off, off, sizeof off);
    assert_int_equal(d.tokens[4], 0);
    assert_int_equal(d.tokens[8], 13);
    assert_int_equal(d.max_len, 5);
    ep_calib_data_free(&d);
    ep_calib_data_free(NULL);
    assert_int_equal(ep_calib_data_load(p, 32, NULL, &d), EP_OK);
    assert_string_equal(d.names[1], "general");
    ep_calib_data_free(&d);

    static const struct {
        const char *text, *want1, *want2;
    } bad[] = {
        {"{\"tokens\": [1, 32]}\n", "bad.jsonl:1: tokens[1]", "[0, 32), found 32"},
        {"{\"tokens\": [1]}\n{\"tokens\": [-4]}\n", "bad.jsonl:2:", "found -4"},
        {"{\"tokens\": [1, \"a\"]}\n", "tokens[1]", "found a string"},
        {"{\"tokens\": []}\n", "bad.jsonl:1: key 'tokens'", "non-empty array"},
        {"{\"domain\": \"math\"}\n", "key 'tokens'", "found no such key"},
        {"{\"tokens\": [1], \"lang\": \"en\"}\n", "unknown key 'lang'", "\"tokens\""},
        {"{\"tokens\": [1], \"domain\": \"auto\"}\n", "key 'domain'", "found 'auto'"},
        {"{\"tokens\": [1], \"domain\": 3}\n", "key 'domain'", "found an integer"},
        {"[1, 2]\n", "bad.jsonl:1: expected a JSON object", "found an array"},
        {"{\"tokens\": [1\n", "bad.jsonl:1:", "invalid JSON"},
        {"\n\n", "bad.jsonl", "at least one sequence"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = write_tmp("bad.jsonl", bad[i].text);
        assert_int_not_equal(ep_calib_data_load(p, 32, NULL, &d), EP_OK);
        const char *msg = ep_last_error();
        if (!strstr(msg, bad[i].want1) || !strstr(msg, bad[i].want2))
            fail_msg("case %zu: message '%s' lacks '%s' / '%s'", i, msg, bad[i].want1,
                     bad[i].want2);
        assert_null(d.tokens);
    }
    char missing[600];
    snprintf(missing, sizeof missing, "%s/none.jsonl", tmpdir);
    assert_int_equal(ep_calib_data_load(missing, 32, NULL, &d), EP_ERR_IO);
    assert_non_null(strstr(ep_last_error(), "none.jsonl"));
}

// ---- the profile ----------------------------------------------------------------

static void test_profile(void **state)
{
    ep_model_cfg m;
    model(&m);
    const int L = 5, E = 16;
    ep_calib_record rec;
    ep_calib_record_init(&rec, L, E, 8, 2);
    for (int d = 0; d < 2; d++)
        for (int l = 1; l < L; l++) {
            rec.tokens[d * L + l] = 13;
            for (int e = 0; e < E; e++)
                rec.count[((size_t)d * L + l) * E + e] = (e * (d + 2) + l) % 14;
        }
    const double w[5] = {0.0, 0.011, 0.3, 0.0025, 0.07};
    ep_calib_key_cand k0[2] = {{2, 5, 0.1}, {4, 1, 0.05}}, k1[1] = {{3, 15, 0.2}};
    const ep_calib_key_cand *keys[2] = {k0, k1};
    const int n_keys[2] = {2, 1};
    const char names[2][64] = {"math", "code"};
    ep_calib_result res = {.k_min = 2,
                           .w = w,
                           .r_min = 0.41,
                           .r_max = 0.97,
                           .rec = &rec,
                           .keys = keys,
                           .n_keys = n_keys,
                           .names = names,
                           .active = NULL};
    ep_routing_cfg rc;
    assert_int_equal(ep_calib_build_cfg(&m, &res, &rc), EP_OK);
    assert_int_equal(rc.policy, EP_POLICY_BANPICK);
    assert_int_equal(rc.pick.strategy, EP_PICK_C);
    assert_int_equal(rc.ban.k_min, 2);
    assert_true(rc.ban.r_min == 0.41f && rc.ban.r_max == 0.97f);
    for (int l = 0; l < L; l++)
        assert_true(rc.ban.layer_sensitivity[l] == (float)w[l]);
    assert_true(rc.pick.domain_auto); // two domains, no --domain
    assert_int_equal(rc.pick.n_domains, 2);
    assert_int_equal(rc.pick.domains[0].key[2 * E + 5], 1);
    assert_int_equal(rc.pick.domains[0].key[4 * E + 1], 1);
    assert_int_equal(rc.pick.domains[0].key[3 * E + 15], 0);
    assert_int_equal(rc.pick.domains[1].key[3 * E + 15], 1);
    float f = rc.pick.domains[1].frequency[3 * E + 6];
    assert_true(f == (float)(7.0 / 13.0)); // count (6 * 3 + 3) % 14 = 7 of 13 tokens
    assert_true(rc.pick.domains[0].frequency[0 * E + 3] == 0.0f); // dense layer

    // Written with a header and read back equal.
    char path[600];
    snprintf(path, sizeof path, "%s/profile.yaml", tmpdir);
    assert_int_equal(ep_calib_write(&rc, &m, "# line one\n# line two\n", path), EP_OK);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char line[256];
    assert_non_null(fgets(line, sizeof line, fp));
    assert_string_equal(line, "# line one\n");
    fclose(fp);
    ep_routing_cfg back;
    assert_int_equal(ep_routing_cfg_load(path, &m, &back), EP_OK);
    assert_int_equal(back.policy, EP_POLICY_BANPICK);
    assert_memory_equal(back.ban.layer_sensitivity, rc.ban.layer_sensitivity, L * sizeof(float));
    assert_true(back.ban.r_min == rc.ban.r_min && back.ban.r_max == rc.ban.r_max);
    assert_true(back.pick.domain_auto);
    for (int d = 0; d < 2; d++) {
        assert_string_equal(back.pick.domains[d].name, rc.pick.domains[d].name);
        assert_memory_equal(back.pick.domains[d].key, rc.pick.domains[d].key, (size_t)L * E);
        for (int l = 1; l < L; l++)
            assert_memory_equal(back.pick.domains[d].frequency + l * E,
                                rc.pick.domains[d].frequency + l * E, E * sizeof(float));
    }
    ep_policy *pol;
    assert_int_equal(ep_policy_create(&m, path, &pol), EP_OK);
    assert_string_equal(ep_policy_name(pol), "banpick");
    ep_policy_free(pol);
    ep_routing_cfg_free(&back);
    ep_routing_cfg_free(&rc);
    // No temporary file is left beside the profile.
    assert_int_equal(access(path, R_OK), 0);

    // An explicit active domain; an unknown one is an error naming it; bad k_min.
    res.active = "code";
    assert_int_equal(ep_calib_build_cfg(&m, &res, &rc), EP_OK);
    assert_false(rc.pick.domain_auto);
    assert_int_equal(rc.pick.domain, 1);
    ep_routing_cfg_free(&rc);
    res.active = "chat";
    assert_int_equal(ep_calib_build_cfg(&m, &res, &rc), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "'chat'"));
    res.active = NULL;
    res.k_min = 9;
    assert_int_equal(ep_calib_build_cfg(&m, &res, &rc), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "found 9"));
    ep_calib_record_free(&rec);
}

// ---- DES medians ----------------------------------------------------------------

enum { DM_L = 5, DM_E = 16, DM_KB = 8, DM_W = DM_KB - 1 };
// Tokens routed per layer: none at dense layer 0 and MoE layer 4, an odd and
// an even count, and at layer 3 four of six tokens with only five experts
// above zero (their later ratios are infinite, so medians there are too).
static const int dm_tokens[DM_L] = {0, 7, 10, 6, 0};

static void dm_logits(int l, int t, float *lg)
{
    uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)(l * 64 + t + 1);
    for (int e = 0; e < DM_E; e++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        lg[e] = (float)((x >> 40) % 1000) / (150.0f + 40.0f * (float)l);
        if (l == 3 && t < 4 && e >= 5) lg[e] = -1e4f; // exp underflows: score exactly 0
    }
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

// The medians from the scores, as docs/routing.md defines them: sort each
// (layer, j) column, take the middle (or the mean of the two middles).
static void dm_reference(float *med)
{
    for (int l = 0; l < DM_L; l++)
        for (int j = 1; j <= DM_W; j++) {
            int n = dm_tokens[l];
            float v[16];
            for (int t = 0; t < n; t++) {
                float sc[DM_E];
                int top[DM_KB];
                dm_logits(l, t, sc);
                ep_router_softmax(sc, DM_E);
                ep_router_topk(sc, DM_E, DM_KB, NULL, top);
                float a = sc[top[j - 1]], b = sc[top[j]];
                v[t] = b > 0.0f ? (float)((double)a / b) : INFINITY;
            }
            qsort(v, (size_t)n, sizeof *v, cmp_float);
            double m = n ? 0.5 * ((double)v[(n - 1) / 2] + (double)v[n / 2]) : 1.0;
            med[l * DM_W + j - 1] = isinf(m) ? FLT_MAX : (float)m;
        }
}

// Routes every token of dm_tokens through the calibration policy; token t of
// layer l goes to recs[t % n_recs].
static void dm_route(ep_calib_record *recs, int n_recs)
{
    ep_model_cfg m;
    model(&m);
    ep_router *r;
    assert_int_equal(ep_router_init(&m, 1, &r), EP_OK);
    ep_routes rt;
    ep_routes_init(&rt, 1, DM_KB, DM_KB);
    ep_calib_policy cp;
    ep_calib_policy_init(&cp, &m);
    for (int i = 0; i < n_recs; i++)
        ep_calib_record_init(&recs[i], DM_L, DM_E, DM_KB, 1);
    float lg[DM_E];
    for (int l = 1; l < DM_L; l++)
        for (int t = 0; t < dm_tokens[l]; t++) {
            dm_logits(l, t, lg);
            cp.rec = &recs[t % n_recs];
            assert_int_equal(ep_router_route_logits(r, &cp.base, NULL, l, lg, 1, &rt), EP_OK);
        }
    ep_calib_policy_free(&cp);
    ep_routes_free(&rt);
    ep_router_free(r);
}

// Two threads standing for two ranks: each sum adds both threads' counts.
typedef struct {
    pthread_barrier_t bar;
    int64_t part[2][2 * DM_L * DM_W];
} dm_world;

typedef struct {
    dm_world *w;
    int me;
    const ep_calib_record *rec;
    float med[DM_L * DM_W];
    ep_status st;
} dm_rank;

static ep_status dm_sum(void *ctx, int64_t *v, int n)
{
    dm_rank *r = ctx;
    memcpy(r->w->part[r->me], v, (size_t)n * sizeof *v);
    pthread_barrier_wait(&r->w->bar);
    for (int i = 0; i < n; i++)
        v[i] = r->w->part[0][i] + r->w->part[1][i];
    pthread_barrier_wait(&r->w->bar); // nobody overwrites part before both have read it
    return EP_OK;
}

static void *dm_rank_main(void *arg)
{
    dm_rank *r = arg;
    r->st = ep_calib_des_medians(r->rec, dm_sum, r, r->med);
    return NULL;
}

static void test_des_medians(void **state)
{
    float want[DM_L * DM_W], got[DM_L * DM_W];
    dm_reference(want);
    // The reference exercises what it should: an infinite median at layer 3,
    // finite ones elsewhere, all >= 1 (sorted scores), defaults without tokens.
    assert_true(want[3 * DM_W + DM_W - 1] == FLT_MAX);
    assert_true(want[1 * DM_W] >= 1.0f && want[1 * DM_W] < FLT_MAX);
    assert_true(want[0] == 1.0f && want[4 * DM_W] == 1.0f);

    ep_calib_record one;
    dm_route(&one, 1);
    assert_int_equal(one.n_ratio[2], 10);
    assert_int_equal(ep_calib_des_medians(&one, NULL, NULL, got), EP_OK);
    for (int i = 0; i < DM_L * DM_W; i++)
        if (got[i] != want[i])
            fail_msg("median [%d][%d]: %.9g, computed here %.9g", i / DM_W, i % DM_W, got[i],
                     want[i]);

    // Split over two "ranks": the same medians, bit for bit.
    ep_calib_record two[2];
    dm_route(two, 2);
    assert_int_equal(two[0].n_ratio[1], 4);
    assert_int_equal(two[1].n_ratio[1], 3);
    dm_world w;
    pthread_barrier_init(&w.bar, NULL, 2);
    dm_rank ranks[2] = {{.w = &w, .me = 0, .rec = &two[0]}, {.w = &w, .me = 1, .rec = &two[1]}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, dm_rank_main, &ranks[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&w.bar);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ranks[i].st, EP_OK);
        assert_memory_equal(ranks[i].med, want, sizeof want);
    }

    // Into the profile: des.median_ratio as computed, and back from the file.
    ep_model_cfg m;
    model(&m);
    const double w_l[DM_L] = {0.0, 0.1, 0.2, 0.3, 0.4};
    const char names[1][64] = {"general"};
    const ep_calib_key_cand *keys[1] = {NULL};
    const int n_keys[1] = {0};
    ep_calib_result res = {.k_min = 3,
                           .w = w_l,
                           .r_min = 0.5,
                           .r_max = 0.9,
                           .rec = &one,
                           .des_median = got,
                           .keys = keys,
                           .n_keys = n_keys,
                           .names = names};
    ep_routing_cfg rc, back;
    assert_int_equal(ep_calib_build_cfg(&m, &res, &rc), EP_OK);
    assert_non_null(rc.des.median_ratio);
    assert_memory_equal(rc.des.median_ratio, want, sizeof want);
    char path[600];
    snprintf(path, sizeof path, "%s/des.yaml", tmpdir);
    assert_int_equal(ep_calib_write(&rc, &m, "# des medians\n", path), EP_OK);
    assert_int_equal(ep_routing_cfg_load(path, &m, &back), EP_OK);
    assert_non_null(back.des.median_ratio);
    assert_memory_equal(back.des.median_ratio, want, sizeof want);
    ep_routing_cfg_free(&back);
    ep_routing_cfg_free(&rc);
    ep_calib_record_free(&one);
    ep_calib_record_free(&two[0]);
    ep_calib_record_free(&two[1]);
}

// The profiles shipped in configs/routing load for their presets, with one
// sensitivity per layer, a zero for DeepSeek's dense layer 0, r_min < r_max.
static void test_shipped(void **state)
{
    static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
    for (int i = 0; i < 2; i++) {
        ep_model_cfg m;
        assert_int_equal(ep_model_cfg_load(presets[i], &m), EP_OK);
        char path[1200];
        snprintf(path, sizeof path, "%s/configs/routing/calibrated/%s-calibrated.yaml",
                 EP_SOURCE_DIR, presets[i]);
        ep_routing_cfg rc;
        ep_status st = ep_routing_cfg_load(path, &m, &rc);
        if (st) fail_msg("%s", ep_last_error());
        assert_int_equal(rc.policy, EP_POLICY_BANPICK);
        assert_non_null(rc.ban.layer_sensitivity);
        assert_true(rc.ban.r_min < rc.ban.r_max);
        for (int l = 0; l < m.n_layers; l++) {
            if (l < m.first_k_dense)
                assert_true(rc.ban.layer_sensitivity[l] == 0.0f);
            else
                assert_true(rc.ban.layer_sensitivity[l] > 0.0f);
        }
        assert_true(rc.pick.n_domains >= 2);
        ep_routing_cfg_free(&rc);
    }
}

static int setup(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ep_test_calib_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    const char *names[] = {"good.jsonl", "bad.jsonl", "profile.yaml", "des.yaml"};
    char p[600];
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    return rmdir(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kl_hand),     cmocka_unit_test(test_top_tokens),
        cmocka_unit_test(test_policy),      cmocka_unit_test(test_frequent),
        cmocka_unit_test(test_choose_keys), cmocka_unit_test(test_data),
        cmocka_unit_test(test_profile),     cmocka_unit_test(test_des_medians),
        cmocka_unit_test(test_shipped),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
