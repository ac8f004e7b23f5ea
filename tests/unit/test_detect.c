// The automatic Pick domain's classifier (router/detect.h) against a plain
// reference written here: scores of the three methods, the choice on
// histograms drawn from known profiles, and every way it falls back to no
// domain (ambiguous, too short, unlike every profile, nothing to compare);
// and the router's per-token Pick domain that applies the choice.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/weights.h"
#include "router/detect.h"

#include "router_fixture.h"

enum { L = 3, E = 16, K = 2, D = 3 }; // layer 0 dense; 3 domains

// Domain d's frequency at MoE layer l: two hot experts of its own (0.7 and
// 0.5 of tokens), a common hot one (0.4) and the rest spread evenly, so a
// layer sums to K. Layer 0 (dense) holds noise the classifier must ignore.
static void make_profiles(ep_model_cfg *m, ep_routing_cfg *rc)
{
    fixture_qwen_cfg(m, L, E, K, 16);
    m->first_k_dense = 1;
    ep_routing_cfg_default(rc, m, EP_POLICY_BANPICK);
    static const char *const names[D] = {"general", "math", "code"};
    for (int d = 0; d < D; d++) {
        int di = ep_routing_cfg_add_domain(rc, names[d]);
        float *f = rc->pick.domains[di].frequency = calloc((size_t)L * E, sizeof(float));
        for (int e = 0; e < E; e++)
            f[e] = (float)((e * 7 + d) % 5); // dense layer: ignored
        for (int l = 1; l < L; l++) {
            float *fl = f + (size_t)l * E;
            int a = (3 * d + l) % E, b = (3 * d + l + 1) % E, c = 15;
            for (int e = 0; e < E; e++)
                fl[e] = (float)((K - 1.6) / (E - 3));
            fl[a] = 0.7f, fl[b] = 0.5f, fl[c] = 0.4f;
        }
    }
    rc->pick.domain_auto = true;
}

// A request of n tokens of profile f: each token's top-K at each MoE layer
// by systematic sampling (inclusion probability exactly f).
static void sample_hist(ep_rng *rng, const float *f, int n, float *hist)
{
    memset(hist, 0, (size_t)L * E * sizeof(float));
    for (int l = 1; l < L; l++)
        for (int t = 0; t < n; t++) {
            double u = ep_rng_uniform(rng), c = 0.0;
            int next = 0;
            for (int e = 0; e < E && next < K; e++) {
                c += f[(size_t)l * E + e];
                while (next < K && c > u + next) {
                    hist[(size_t)l * E + e] += 1.0f;
                    next++;
                }
            }
        }
}

// ---- the reference -----------------------------------------------------------

static double ref_cosine(const float *h, const float *f)
{
    double hf = 0, hh = 0, ff = 0;
    for (int i = E; i < L * E; i++)
        hf += (double)h[i] * f[i], hh += (double)h[i] * h[i], ff += (double)f[i] * f[i];
    return hf / sqrt(hh * ff);
}

static double ref_loglik(const float *h, const float *f, double smooth)
{
    double ll = 0, n = 0;
    for (int l = 1; l < L; l++) {
        double fs = 0;
        for (int e = 0; e < E; e++)
            fs += f[l * E + e];
        for (int e = 0; e < E; e++) {
            double p = (1 - smooth) * f[l * E + e] / fs + smooth / E;
            ll += h[l * E + e] * log(p);
            n += h[l * E + e];
        }
    }
    return ll / n;
}

// mixture: the best pi on a grid of 10^4 steps of log(pi p_d + (1 - pi) b),
// b the mean of the domains' smoothed distributions.
static double ref_mixture(const ep_routing_cfg *rc, const float *h, int d, double smooth)
{
    static double pd[L * E], pb[L * E];
    for (int l = 1; l < L; l++)
        for (int q = -1; q < D; q++) {
            const float *f = rc->pick.domains[q < 0 ? d : q].frequency + l * E;
            double fs = 0;
            for (int e = 0; e < E; e++)
                fs += f[e];
            for (int e = 0; e < E; e++) {
                double p = (1 - smooth) * f[e] / fs + smooth / E;
                if (q < 0)
                    pd[l * E + e] = p, pb[l * E + e] = 0;
                else
                    pb[l * E + e] += p / D;
            }
        }
    double best = -INFINITY;
    for (int s = 0; s <= 10000; s++) {
        double pi = s / 10000.0, ll = 0, n = 0;
        for (int i = E; i < L * E; i++)
            if (h[i] > 0) ll += h[i] * log(pi * pd[i] + (1 - pi) * pb[i]), n += h[i];
        if (ll / n > best) best = ll / n;
    }
    return best;
}

static void test_scores_match_reference(void **state)
{
    ep_model_cfg m;
    ep_routing_cfg rc;
    make_profiles(&m, &rc);
    ep_rng rng;
    ep_rng_seed(&rng, 11);
    float hist[L * E];
    ep_detect_opts o;
    ep_detect_opts_default(&o);
    for (int d = 0; d < D; d++) {
        sample_hist(&rng, rc.pick.domains[d].frequency, 13, hist);
        for (int meth = 0; meth < EP_DETECT_COUNT; meth++) {
            o.method = (ep_detect_method)meth;
            ep_detect_result r;
            ep_domain_detect(&rc, hist, 13, &o, &r);
            assert_int_equal(r.best, d);
            double want[D], mean[L * E] = {0};
            for (int q = 0; q < D; q++)
                for (int i = 0; i < L * E; i++)
                    mean[i] += rc.pick.domains[q].frequency[i] / D;
            for (int q = 0; q < D; q++) {
                const float *f = rc.pick.domains[q].frequency;
                if (meth == EP_DETECT_COSINE) want[q] = ref_cosine(hist, f);
                if (meth == EP_DETECT_LOGLIK) want[q] = ref_loglik(hist, f, o.smooth);
                if (meth == EP_DETECT_MIXTURE) want[q] = ref_mixture(&rc, hist, q, o.smooth);
                if (meth == EP_DETECT_CENTERED) {
                    double hf = 0, hh = 0, ff = 0;
                    for (int i = E; i < L * E; i++) {
                        double x = hist[i] / 13.0 - mean[i], y = f[i] - mean[i];
                        hf += x * y, hh += x * x, ff += y * y;
                    }
                    want[q] = hf / sqrt(hh * ff);
                }
            }
            // Bisection against a grid of 10^-4: both within 1e-6 of the optimum.
            const double tol = meth == EP_DETECT_MIXTURE ? 1e-6 : 1e-9;
            assert_float_equal(r.score_best, want[d], tol);
            assert_float_equal(r.margin, r.score_best - r.score_second, 1e-12);
            assert_true(r.second >= 0 && r.second != d);
            assert_float_equal(r.score_second, want[r.second], tol);
        }
    }
    ep_routing_cfg_free(&rc);
}

// 100 sampled requests of 8 tokens per domain: every method names the right
// domain for all of them (the profiles differ in 2 of 16 experts per layer).
static void test_sampled_requests(void **state)
{
    ep_model_cfg m;
    ep_routing_cfg rc;
    make_profiles(&m, &rc);
    ep_rng rng;
    ep_rng_seed(&rng, 5);
    float hist[L * E];
    for (int meth = 0; meth < EP_DETECT_COUNT; meth++) {
        ep_detect_opts o;
        ep_detect_opts_default(&o);
        o.method = (ep_detect_method)meth;
        o.min_margin = 0.01;
        for (int d = 0; d < D; d++)
            for (int q = 0; q < 100; q++) {
                sample_hist(&rng, rc.pick.domains[d].frequency, 8, hist);
                assert_int_equal(ep_domain_detect(&rc, hist, 8, &o, NULL), d);
            }
    }
    ep_routing_cfg_free(&rc);
}

static void test_fallbacks(void **state)
{
    ep_model_cfg m;
    ep_routing_cfg rc;
    make_profiles(&m, &rc);
    ep_detect_opts o;
    ep_detect_opts_default(&o);
    o.max_gap = 0.5;
    ep_detect_result r;
    float hist[L * E];
    const float *f0 = rc.pick.domains[0].frequency, *f1 = rc.pick.domains[1].frequency;

    // The expected histogram of 32 math tokens: math, clearly.
    for (int i = 0; i < L * E; i++)
        hist[i] = 32.0f * f1[i];
    assert_int_equal(ep_domain_detect(&rc, hist, 32, &o, &r), 1);
    assert_true(r.margin > o.min_margin && r.gap < o.max_gap);
    // Too short a prompt: the same histogram, fewer tokens than min_tokens.
    assert_int_equal(ep_domain_detect(&rc, hist, o.min_tokens - 1, &o, &r), -1);
    assert_int_equal(r.best, 1); // the scores are still reported

    // Half general, half math: the two tie within the margin -> none.
    for (int i = 0; i < L * E; i++)
        hist[i] = 16.0f * f0[i] + 16.0f * f1[i];
    assert_int_equal(ep_domain_detect(&rc, hist, 32, &o, &r), -1);
    assert_true(r.best == 0 || r.best == 1);
    assert_true(r.margin < o.min_margin);
    // Exact ties of the cosine go to the lower index; margin 0 still chooses.
    o.method = EP_DETECT_COSINE;
    o.min_margin = 0.0;
    assert_int_equal(ep_domain_detect(&rc, hist, 32, &o, &r), 0);
    ep_detect_opts_default(&o);
    o.max_gap = 0.5;

    // Unlike every profile: experts none of them favours (9..13 at both
    // layers). loglik's gap says none; without the gap rule the best wins.
    o.method = EP_DETECT_LOGLIK;
    memset(hist, 0, sizeof hist);
    for (int l = 1; l < L; l++)
        for (int e = 9; e < 14; e++)
            hist[l * E + e] = 8.0f;
    assert_int_equal(ep_domain_detect(&rc, hist, 20, &o, &r), -1);
    assert_true(r.gap > o.max_gap);
    ep_detect_opts_default(&o); // the default: no gap rule, the best wins
    o.method = EP_DETECT_LOGLIK;
    assert_true(ep_domain_detect(&rc, hist, 20, &o, &r) >= 0);
    ep_detect_opts_default(&o);

    // Routes only at the dense layer (or none): nothing to compare.
    memset(hist, 0, sizeof hist);
    hist[3] = 5.0f;
    assert_int_equal(ep_domain_detect(&rc, hist, 5, &o, &r), -1);
    assert_int_equal(r.best, -1);
    // No domain with a frequency: none.
    for (int i = 0; i < L * E; i++)
        hist[i] = 32.0f * f1[i];
    for (int d = 0; d < D; d++) {
        free(rc.pick.domains[d].frequency);
        rc.pick.domains[d].frequency = NULL;
    }
    assert_int_equal(ep_domain_detect(&rc, hist, 32, &o, &r), -1);
    ep_routing_cfg_free(&rc);
}

// One profile: no runner-up, the margin is infinite; the gap rule still holds.
static void test_single_domain(void **state)
{
    ep_model_cfg m;
    ep_routing_cfg rc;
    make_profiles(&m, &rc);
    free(rc.pick.domains[1].frequency);
    free(rc.pick.domains[2].frequency);
    rc.pick.domains[1].frequency = rc.pick.domains[2].frequency = NULL;
    float hist[L * E];
    for (int i = 0; i < L * E; i++)
        hist[i] = 10.0f * rc.pick.domains[0].frequency[i];
    ep_detect_opts o;
    ep_detect_opts_default(&o);
    ep_detect_result r;
    assert_int_equal(ep_domain_detect(&rc, hist, 10, &o, &r), 0);
    assert_int_equal(r.second, -1);
    assert_true(isinf(r.margin));
    ep_routing_cfg_free(&rc);
}

// ---- the per-token domain of a routing call -----------------------------------

// Routing a batch with ep_route_ctx.token_domain gives every token exactly
// what the policy gives it with that domain set (ep_policy_set_domain) or
// none, and the domains make a difference on these logits.
static void test_token_domain(void **state)
{
    enum { T = 9, EX = 16, KB = 4 };
    ep_model_cfg m;
    fixture_qwen_cfg(&m, 3, EX, KB, 16);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BANPICK);
    int dm = ep_routing_cfg_add_domain(&rc, "math"), dc = ep_routing_cfg_add_domain(&rc, "code");
    for (int e = 4; e < 8; e++)
        rc.pick.domains[dm].key[1 * EX + e] = 1;
    for (int e = 8; e < 12; e++)
        rc.pick.domains[dc].key[1 * EX + e] = 1;
    rc.pick.domain = -1;
    ep_policy *p, *q;
    assert_int_equal(ep_policy_create_cfg(&rc, &p), EP_OK);
    assert_int_equal(ep_policy_create_cfg(&rc, &q), EP_OK);
    const int mk = ep_policy_max_k(p);
    float lg[T * EX];
    ep_rng rng;
    ep_rng_seed(&rng, 3);
    for (int i = 0; i < T * EX; i++)
        lg[i] = (float)ep_rng_normal(&rng);
    const int dom[T] = {dm, dc, -1, dm, dc, -1, dm, dc, -1};
    ep_router *r;
    assert_int_equal(ep_router_init(&m, T, &r), EP_OK);
    ep_routes got, want[3];
    ep_routes_init(&got, T, mk, KB);
    const char *names[3] = {"", "math", "code"}; // domain -1, dm, dc
    for (int d = 0; d < 3; d++) {
        ep_routes_init(&want[d], T, mk, KB);
        assert_int_equal(ep_policy_set_domain(q, names[d]), EP_OK);
        assert_int_equal(ep_router_route_logits(r, q, NULL, 1, lg, T, &want[d]), EP_OK);
    }
    ep_route_ctx ctx = {.rank = -1, .token_domain = dom};
    assert_int_equal(ep_router_route_logits(r, p, &ctx, 1, lg, T, &got), EP_OK);
    int differ = 0;
    for (int t = 0; t < T; t++) {
        const ep_routes *w = &want[dom[t] + 1];
        int n = got.offsets[t + 1] - got.offsets[t];
        assert_int_equal(n, w->offsets[t + 1] - w->offsets[t]);
        assert_memory_equal(got.expert + got.offsets[t], w->expert + w->offsets[t],
                            n * sizeof(int));
        assert_memory_equal(got.weight + got.offsets[t], w->weight + w->offsets[t],
                            n * sizeof(float));
        const ep_routes *none = &want[0];
        differ +=
            n != none->offsets[t + 1] - none->offsets[t] ||
            memcmp(got.expert + got.offsets[t], none->expert + none->offsets[t], n * sizeof(int));
    }
    assert_true(differ >= 2);
    assert_int_equal(p->cfg.pick.domain, -1); // the policy itself is untouched
    const int bad[T] = {0, 1, 2, 0, 0, 0, 0, 0, 0};
    ctx.token_domain = bad;
    assert_int_equal(ep_router_route_logits(r, p, &ctx, 1, lg, T, &got), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "Pick domain 2"));
    for (int d = 0; d < 3; d++)
        ep_routes_free(&want[d]);
    ep_routes_free(&got);
    ep_router_free(r);
    ep_policy_free(p);
    ep_policy_free(q);
    ep_routing_cfg_free(&rc);
}

static void test_method_names(void **state)
{
    ep_detect_method mth;
    for (int k = 0; k < EP_DETECT_COUNT; k++) {
        assert_int_equal(ep_detect_method_parse(ep_detect_method_name(k), &mth), EP_OK);
        assert_int_equal(mth, k);
    }
    assert_int_equal(ep_detect_method_parse("kl", &mth), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "loglik"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scores_match_reference),
        cmocka_unit_test(test_sampled_requests),
        cmocka_unit_test(test_fallbacks),
        cmocka_unit_test(test_single_domain),
        cmocka_unit_test(test_token_domain),
        cmocka_unit_test(test_method_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
