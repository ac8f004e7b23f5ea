// Sampling: the kept set is sorted by logit (ties to the lower id, so the
// result never depends on qsort's order), temperature-scaled softmax in
// double over top-k, then the top-p prefix, then one uniform draw. Buffers
// are sized for the vocabulary once, at init.
#include "model/sample.h"

#include "common/weights.h"

#include <math.h>
#include <stdlib.h>

struct ep_sampler {
    ep_sample_params p;
    int vocab;
    ep_rng rng;
    int *idx;     // [vocab] token ids, sorted by logit
    double *prob; // [vocab] probabilities of idx[0..n)
};

void ep_sample_params_default(ep_sample_params *p)
{
    *p = (ep_sample_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 0};
}

ep_status ep_sampler_init(const ep_sample_params *p, int vocab, ep_sampler **out)
{
    *out = NULL;
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return ep_errorf(EP_ERR_ARG, "sampling: temperature %g, expected a finite value >= 0",
                         (double)p->temperature);
    if (p->top_k < 0)
        return ep_errorf(EP_ERR_ARG, "sampling: top_k %d, expected >= 0 (0: no limit)", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return ep_errorf(EP_ERR_ARG, "sampling: top_p %g, expected a value in (0, 1]",
                         (double)p->top_p);
    if (vocab < 1) return ep_errorf(EP_ERR_ARG, "sampling: vocabulary of %d tokens", vocab);
    ep_sampler *s = ep_xcalloc(1, sizeof *s);
    s->p = *p;
    s->vocab = vocab;
    ep_rng_seed(&s->rng, p->seed);
    s->idx = ep_xmalloc((size_t)vocab * sizeof(int));
    s->prob = ep_xmalloc((size_t)vocab * sizeof(double));
    *out = s;
    return EP_OK;
}

void ep_sampler_free(ep_sampler *s)
{
    if (!s) return;
    free(s->idx);
    free(s->prob);
    free(s);
}

static float logit_at(const float *l, int i)
{
    return isnan(l[i]) ? -INFINITY : l[i];
}

static int argmax(const float *l, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logit_at(l, i) > logit_at(l, best)) best = i;
    return best;
}

// qsort has no user pointer; samplers are per request and a request is
// sampled by one thread, so the logits ride in a thread-local.
static _Thread_local const float *sort_logits;

static int by_logit_desc(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    float x = logit_at(sort_logits, i), y = logit_at(sort_logits, j);
    if (x != y) return x > y ? -1 : 1;
    return (i > j) - (i < j);
}

// Fills s->idx / s->prob with the kept set; returns its size.
static int kept_set(ep_sampler *s, const float *logits)
{
    int V = s->vocab;
    for (int i = 0; i < V; i++)
        s->idx[i] = i;
    sort_logits = logits;
    qsort(s->idx, (size_t)V, sizeof(int), by_logit_desc);
    int n = s->p.top_k > 0 && s->p.top_k < V ? s->p.top_k : V;
    double top = logit_at(logits, s->idx[0]), sum = 0;
    if (isinf(top) && top < 0) { // every logit -inf (or NaN): uniform over the kept set
        for (int i = 0; i < n; i++)
            s->prob[i] = 1.0 / n;
        sum = 1.0;
    } else {
        for (int i = 0; i < n; i++) {
            s->prob[i] = exp(((double)logit_at(logits, s->idx[i]) - top) / s->p.temperature);
            sum += s->prob[i];
        }
    }
    double cum = 0;
    int keep = n;
    for (int i = 0; i < n; i++) {
        s->prob[i] /= sum;
        cum += s->prob[i];
        if (keep == n && cum >= s->p.top_p) keep = i + 1;
    }
    if (keep < n) {
        double mass = 0;
        for (int i = 0; i < keep; i++)
            mass += s->prob[i];
        for (int i = 0; i < keep; i++)
            s->prob[i] /= mass;
    }
    return keep;
}

int ep_sampler_sample(ep_sampler *s, const float *logits)
{
    if (s->p.temperature == 0.0f || s->p.top_k == 1) return argmax(logits, s->vocab);
    int n = kept_set(s, logits);
    double u = ep_rng_uniform(&s->rng), cum = 0;
    for (int i = 0; i < n; i++) {
        cum += s->prob[i];
        if (u < cum) return s->idx[i];
    }
    return s->idx[n - 1]; // u within rounding of 1
}

void ep_sampler_skip(ep_sampler *s, int64_t n)
{
    if (s->p.temperature == 0.0f || s->p.top_k == 1) return; // as ep_sampler_sample
    for (int64_t i = 0; i < n; i++)
        (void)ep_rng_uniform(&s->rng);
}

void ep_sampler_probs(ep_sampler *s, const float *logits, float *prob)
{
    for (int i = 0; i < s->vocab; i++)
        prob[i] = 0.0f;
    if (s->p.temperature == 0.0f || s->p.top_k == 1) {
        prob[argmax(logits, s->vocab)] = 1.0f;
        return;
    }
    int n = kept_set(s, logits);
    for (int i = 0; i < n; i++)
        prob[s->idx[i]] = (float)s->prob[i];
}

ep_stop_reason ep_stop_check(const ep_stop_params *p, int token, int n_generated)
{
    for (int i = 0; i < p->n_eos; i++)
        if (p->eos[i] == token) return EP_STOP_EOS;
    if (n_generated >= p->max_tokens) return EP_STOP_LENGTH;
    return EP_STOP_NONE;
}

const char *ep_stop_reason_str(ep_stop_reason r)
{
    switch (r) {
    case EP_STOP_EOS:
        return "stop";
    case EP_STOP_LENGTH:
        return "length";
    default:
        return NULL;
    }
}
