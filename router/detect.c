// The automatic Pick domain's classifier (router/detect.h): three scores of
// a prompt's routing histogram against each domain's calibrated frequency
// and the confidence rule on top. Plain loops in double: it runs once per
// request, on at most n_layers x n_experts x n_domains values.
#include "router/detect.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const method_names[EP_DETECT_COUNT] = {
    [EP_DETECT_COSINE] = "cosine",
    [EP_DETECT_CENTERED] = "centered",
    [EP_DETECT_LOGLIK] = "loglik",
    [EP_DETECT_MIXTURE] = "mixture",
};

const char *ep_detect_method_name(ep_detect_method m)
{
    EP_ASSERT(m >= 0 && m < EP_DETECT_COUNT);
    return method_names[m];
}

ep_status ep_detect_method_parse(const char *s, ep_detect_method *out)
{
    for (int m = 0; m < EP_DETECT_COUNT; m++)
        if (!strcmp(s, method_names[m])) {
            *out = (ep_detect_method)m;
            return EP_OK;
        }
    return ep_errorf(EP_ERR_ARG,
                     "expected a detection method (cosine, centered, loglik, mixture), found '%s'",
                     s);
}

void ep_detect_opts_default(ep_detect_opts *o)
{
    // Measured with `epserve detect-eval` (docs/routing.md §4a). Requests
    // whose tokens all carry their domain are told apart by every method;
    // once most tokens route like any domain (--signal 0.3), the centered
    // cosine is the most accurate (Qwen3-30B-A3B, 64 tokens: 0.98 in one
    // language, 0.73 across; loglik 0.37 / 0.41, mixture 0.98 / 0.46), and
    // a margin of 0.05 keeps every clean request while leaving a third of
    // the diluted ones on plain Ban. The gap rule (loglik only) is off: a
    // fixed gap that sends unprofiled tasks to none (0.5 with English
    // profiles) also drops most in-domain requests with Hebrew profiles.
    o->method = EP_DETECT_CENTERED;
    o->min_margin = 0.05;
    o->min_tokens = 4;
    o->smooth = 0.05;
    o->max_gap = 0.0;
}

static double cosine(const float *a, const double *a_off, const float *b, const double *b_off,
                     double a_scale, size_t lo, size_t hi)
{
    double ab = 0.0, aa = 0.0, bb = 0.0;
    for (size_t i = lo; i < hi; i++) {
        double x = a[i] * a_scale - (a_off ? a_off[i] : 0.0);
        double y = b[i] - (b_off ? b_off[i] : 0.0);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    return aa > 0.0 && bb > 0.0 ? ab / (sqrt(aa) * sqrt(bb)) : 0.0;
}

// Mean over hist's pairs of log p_d(e | l), p_d(. | l) = (1 - smooth) x
// frequency / its layer sum + smooth / E (uniform when the layer's
// frequency is all zero).
static double loglik(const ep_routing_cfg *rc, const float *hist, const float *f, double smooth)
{
    const int E = rc->n_experts;
    double ll = 0.0, pairs = 0.0;
    for (int l = rc->first_k_dense; l < rc->n_layers; l++) {
        const float *h = hist + (size_t)l * E, *fl = f + (size_t)l * E;
        double fs = 0.0, hs = 0.0;
        for (int e = 0; e < E; e++) {
            fs += fl[e];
            hs += h[e];
        }
        if (hs <= 0.0) continue;
        for (int e = 0; e < E; e++) {
            if (h[e] <= 0.0f) continue;
            double p = fs > 0.0 ? (1.0 - smooth) * fl[e] / fs + smooth / E : 1.0 / E;
            ll += h[e] * log(p);
        }
        pairs += hs;
    }
    return pairs > 0.0 ? ll / pairs : 0.0;
}

// loglik's smoothed distribution at one layer: p[e] for frequency fl.
static void layer_dist(const float *fl, int E, double smooth, double *p)
{
    double fs = 0.0;
    for (int e = 0; e < E; e++)
        fs += fl[e];
    for (int e = 0; e < E; e++)
        p[e] = fs > 0.0 ? (1.0 - smooth) * fl[e] / fs + smooth / E : 1.0 / E;
}

// mixture: mean over hist's pairs of log(pi p_d(e|l) + (1 - pi) b(e|l)),
// b the mean of the domains' p (those with a frequency), pi in [0, 1] where
// the log-likelihood (concave in pi) is largest.
static double mixture(const ep_routing_cfg *rc, const float *hist, int d, double smooth, double *pd,
                      double *pb, double *tmp)
{
    const int E = rc->n_experts;
    const size_t lo = (size_t)rc->first_k_dense * E, hi = (size_t)rc->n_layers * E;
    int n_freq = 0;
    for (int l = rc->first_k_dense; l < rc->n_layers; l++)
        layer_dist(rc->pick.domains[d].frequency + (size_t)l * E, E, smooth, pd + (size_t)l * E);
    memset(pb, 0, hi * sizeof(double));
    for (int q = 0; q < rc->pick.n_domains; q++) {
        const float *f = rc->pick.domains[q].frequency;
        if (!f) continue;
        n_freq++;
        for (int l = rc->first_k_dense; l < rc->n_layers; l++) {
            layer_dist(f + (size_t)l * E, E, smooth, tmp);
            for (int e = 0; e < E; e++)
                pb[(size_t)l * E + e] += tmp[e];
        }
    }
    double pairs = 0.0;
    for (size_t i = lo; i < hi; i++) {
        pb[i] /= n_freq;
        pairs += hist[i];
    }
    // The derivative of the log-likelihood in pi falls monotonically:
    // bisection on its sign finds the maximum on [0, 1] to double precision.
    double a = 0.0, b = 1.0;
    for (int it = 0; it < 60; it++) {
        double pi = 0.5 * (a + b), g = 0.0;
        for (size_t i = lo; i < hi; i++)
            if (hist[i] > 0.0f) g += hist[i] * (pd[i] - pb[i]) / (pi * pd[i] + (1.0 - pi) * pb[i]);
        if (g > 0.0)
            a = pi;
        else
            b = pi;
    }
    const double pi = 0.5 * (a + b);
    double ll = 0.0;
    for (size_t i = lo; i < hi; i++)
        if (hist[i] > 0.0f) ll += hist[i] * log(pi * pd[i] + (1.0 - pi) * pb[i]);
    return ll / pairs;
}

// What loglik gives on average to a token of domain f itself: sum over the
// MoE layers of f(e) / (layer sum) x log p(e), averaged over layers with
// any frequency (the expectation of loglik's per-pair mean).
static double loglik_self(const ep_routing_cfg *rc, const float *f, double smooth)
{
    const int E = rc->n_experts;
    double s = 0.0;
    int n = 0;
    for (int l = rc->first_k_dense; l < rc->n_layers; l++) {
        const float *fl = f + (size_t)l * E;
        double fs = 0.0, acc = 0.0;
        for (int e = 0; e < E; e++)
            fs += fl[e];
        if (fs <= 0.0) continue;
        for (int e = 0; e < E; e++)
            if (fl[e] > 0.0f) acc += fl[e] / fs * log((1.0 - smooth) * fl[e] / fs + smooth / E);
        s += acc;
        n++;
    }
    return n ? s / n : 0.0;
}

int ep_domain_detect(const ep_routing_cfg *rc, const float *hist, int64_t n_tokens,
                     const ep_detect_opts *o, ep_detect_result *out)
{
    ep_detect_result r = {
        .domain = -1, .best = -1, .second = -1, .score_second = -INFINITY, .margin = 0.0};
    const size_t E = (size_t)rc->n_experts;
    const size_t lo = (size_t)rc->first_k_dense * E, hi = (size_t)rc->n_layers * E;
    double hsum = 0.0;
    for (size_t i = lo; i < hi; i++)
        hsum += hist[i];
    int n_freq = 0;
    for (int d = 0; d < rc->pick.n_domains; d++)
        n_freq += rc->pick.domains[d].frequency != NULL;
    if (hsum <= 0.0 || n_freq == 0 || n_tokens <= 0) goto done;

    // centered: the domains' mean frequency, and the histogram as a
    // frequency (pairs per token) so that both sides are on one scale.
    double *mean = NULL, *pd = NULL, *pb = NULL, *tmp = NULL;
    if (o->method == EP_DETECT_MIXTURE) {
        pd = ep_xmalloc(hi * sizeof(double));
        pb = ep_xmalloc(hi * sizeof(double));
        tmp = ep_xmalloc(E * sizeof(double));
    }
    if (o->method == EP_DETECT_CENTERED) {
        mean = ep_xcalloc(hi, sizeof(double));
        for (int d = 0; d < rc->pick.n_domains; d++) {
            const float *f = rc->pick.domains[d].frequency;
            if (!f) continue;
            for (size_t i = lo; i < hi; i++)
                mean[i] += (double)f[i] / n_freq;
        }
    }
    for (int d = 0; d < rc->pick.n_domains; d++) {
        const float *f = rc->pick.domains[d].frequency;
        if (!f) continue;
        double s;
        switch (o->method) {
        case EP_DETECT_COSINE:
            s = cosine(hist, NULL, f, NULL, 1.0, lo, hi);
            break;
        case EP_DETECT_CENTERED:
            s = cosine(hist, mean, f, mean, 1.0 / n_tokens, lo, hi);
            break;
        case EP_DETECT_MIXTURE:
            s = mixture(rc, hist, d, o->smooth, pd, pb, tmp);
            break;
        default:
            s = loglik(rc, hist, f, o->smooth);
            break;
        }
        if (r.best < 0 || s > r.score_best) {
            r.second = r.best;
            r.score_second = r.score_best;
            r.best = d;
            r.score_best = s;
        } else if (r.second < 0 || s > r.score_second) {
            r.second = d;
            r.score_second = s;
        }
    }
    free(mean);
    free(pd);
    free(pb);
    free(tmp);
    r.margin = r.second >= 0 ? r.score_best - r.score_second : INFINITY;
    if (o->method == EP_DETECT_LOGLIK)
        r.gap = loglik_self(rc, rc->pick.domains[r.best].frequency, o->smooth) - r.score_best;
    bool unlike = o->method == EP_DETECT_LOGLIK && o->max_gap > 0.0 && r.gap > o->max_gap;
    if (n_tokens >= o->min_tokens && r.margin >= o->min_margin && !unlike) r.domain = r.best;
done:
    if (out) *out = r;
    return r.domain;
}
