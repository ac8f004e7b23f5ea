// Automatic Pick domain of a request (beyond the Ban&Pick paper, which leaves
// it as future work): compares the routing histogram of a request's prompt
// with each calibrated domain's frequency profile and names the domain that
// clearly wins, or none. Pure C, no MPI: the engine feeds it the histogram
// of a prefill, `epserve detect-eval` measures it (docs/routing.md §4a).
#ifndef EP_DETECT_H
#define EP_DETECT_H

#include "router/policy.h"

typedef enum {
    EP_DETECT_COSINE,   // cosine of hist and frequency, all MoE layers concatenated
    EP_DETECT_CENTERED, // the same after subtracting the domains' mean frequency
    EP_DETECT_LOGLIK,   // mean log-likelihood per (token, layer, expert) pair
    // loglik of a two-part model per pair: the domain with weight pi, the
    // domains' mean with 1 - pi, pi fitted to the request: generic
    // tokens (templates, punctuation) that route like every domain's mean
    // then cost no domain anything.
    EP_DETECT_MIXTURE,
    EP_DETECT_COUNT
} ep_detect_method;

const char *ep_detect_method_name(ep_detect_method m);
ep_status ep_detect_method_parse(const char *s, ep_detect_method *out); // EP_ERR_ARG if unknown

typedef struct {
    ep_detect_method method;
    // Confidence rule: a domain is chosen only when the prompt has at least
    // min_tokens tokens and its score beats the runner-up's by min_margin
    // (loglik, mixture: nats per pair; cosines: cosine units). Otherwise
    // none (-1). With a single domain there is no runner-up: the margin is
    // infinite (and the centered cosine, with nothing to center against,
    // always names it).
    double min_margin;
    int64_t min_tokens;
    // loglik only, a request unlike every profile: none also when the best
    // domain's mean log-likelihood per pair falls more than max_gap nats
    // below what that domain's own tokens score on average (its expected
    // log-likelihood under itself). <= 0: no such rule.
    double max_gap;
    // loglik: each domain's per-layer expert distribution is mixed with
    // this share of the uniform one, so an expert never seen in
    // calibration costs a finite log(smooth / n_experts).
    double smooth;
} ep_detect_opts;
// The defaults chosen by measurement (docs/routing.md §4a).
void ep_detect_opts_default(ep_detect_opts *o);

typedef struct {
    int domain;          // the chosen domain, -1 none
    int best, second;    // best and runner-up by score (-1 when absent)
    double score_best;   // the method's score of best (and second)
    double score_second; // -inf when there is no runner-up
    double margin;       // score_best - score_second (+inf with one domain)
    double gap;          // loglik: best's expected score minus score_best (else 0)
} ep_detect_result;

// hist [n_layers * n_experts]: the request's (token, expert) pairs per MoE
// layer (the model's own top-k_base of each prompt token: what the profile's
// frequency counts); n_tokens: the prompt tokens it holds. Domains without
// frequency are skipped. Ties go to the lower domain index. Returns
// out->domain (out may be NULL).
int ep_domain_detect(const ep_routing_cfg *rc, const float *hist, int64_t n_tokens,
                     const ep_detect_opts *o, ep_detect_result *out);

#endif
