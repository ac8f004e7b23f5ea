// Sampling: the kept set is sorted by logit (ties to the lower id, so the
// result never depends on qsort's order), temperature-scaled softmax in
// double over top-k, then the top-p prefix, then one uniform draw. Buffers
// are sized for the vocabulary once, at init.
#include "model/sample.h"

#include "common/weights.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct ep_sampler {
    ep_sample_params p;
    int vocab;
    ep_rng rng;
    int *idx;     // [vocab] token ids, sorted by logit
    double *prob; // [vocab] probabilities of idx[0..n)
    // Processors, allocated only when the request uses them.
    float *work;        // [vocab] the processed logits
    uint8_t *seen;      // [vocab] 1 = in the context or the output (repetition)
    int32_t *out_count; // [vocab] times sampled (presence / frequency)
    int n_out;          // tokens sampled so far (min_tokens)
    int *stop_ids;      // min_tokens' masked ids
    int n_stop;
};

void ep_sample_params_default(ep_sample_params *p)
{
    memset(p, 0, sizeof *p);
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

// Whether any processor can change a logit (else sampling reads the logits as given).
static bool repeats(const ep_sample_params *p)
{
    return p->repetition_penalty != 1.0f && p->repetition_penalty != 0.0f;
}

static bool processes(const ep_sample_params *p)
{
    return repeats(p) || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f ||
           p->min_tokens > 0 || p->n_bias > 0;
}

static ep_status check_processors(const ep_sample_params *p, int vocab)
{
    if (!(p->repetition_penalty >= 0.0f) || !isfinite(p->repetition_penalty))
        return ep_errorf(EP_ERR_ARG,
                         "sampling: repetition_penalty %g, expected a finite value > 0 (0: off)",
                         (double)p->repetition_penalty);
    const float pen[2] = {p->presence_penalty, p->frequency_penalty};
    static const char *const pname[2] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++)
        if (!(pen[i] >= -2.0f && pen[i] <= 2.0f))
            return ep_errorf(EP_ERR_ARG, "sampling: %s %g, expected a value in [-2, 2]", pname[i],
                             (double)pen[i]);
    if (p->min_tokens < 0)
        return ep_errorf(EP_ERR_ARG, "sampling: min_tokens %d, expected >= 0", p->min_tokens);
    if (p->n_bias < 0 || p->n_bias > EP_SAMPLE_MAX_BIAS)
        return ep_errorf(EP_ERR_ARG, "sampling: %d logit_bias entries, expected 0..%d", p->n_bias,
                         EP_SAMPLE_MAX_BIAS);
    for (int i = 0; i < p->n_bias; i++) {
        if (p->bias_tok[i] < 0 || p->bias_tok[i] >= vocab)
            return ep_errorf(EP_ERR_ARG, "sampling: logit_bias token %d, expected 0..%d",
                             (int)p->bias_tok[i], vocab - 1);
        if (!isfinite(p->bias_val[i]))
            return ep_errorf(EP_ERR_ARG, "sampling: logit_bias of token %d is not finite",
                             (int)p->bias_tok[i]);
    }
    return EP_OK;
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
    ep_status st = check_processors(p, vocab);
    if (st) return st;
    ep_sampler *s = ep_xcalloc(1, sizeof *s);
    s->p = *p;
    s->vocab = vocab;
    ep_rng_seed(&s->rng, p->seed);
    s->idx = ep_xmalloc((size_t)vocab * sizeof(int));
    s->prob = ep_xmalloc((size_t)vocab * sizeof(double));
    if (processes(p)) s->work = ep_xmalloc((size_t)vocab * sizeof(float));
    if (repeats(p)) s->seen = ep_xcalloc((size_t)vocab, 1);
    if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f)
        s->out_count = ep_xcalloc((size_t)vocab, sizeof(int32_t));
    *out = s;
    return EP_OK;
}

void ep_sampler_free(ep_sampler *s)
{
    if (!s) return;
    free(s->idx);
    free(s->prob);
    free(s->work);
    free(s->seen);
    free(s->out_count);
    free(s->stop_ids);
    free(s);
}

void ep_sampler_set_stop_ids(ep_sampler *s, const int *ids, int n)
{
    free(s->stop_ids);
    s->stop_ids = n > 0 ? ep_xmalloc((size_t)n * sizeof(int)) : NULL;
    if (n > 0) memcpy(s->stop_ids, ids, (size_t)n * sizeof(int));
    s->n_stop = n > 0 ? n : 0;
}

void ep_sampler_observe(ep_sampler *s, const int *tokens, int n)
{
    if (!s->seen) return;
    for (int i = 0; i < n; i++)
        if (tokens[i] >= 0 && tokens[i] < s->vocab) s->seen[tokens[i]] = 1;
}

// The processed logits in s->work (vLLM's order: min_tokens, logit_bias,
// then the penalties), or logits itself when nothing applies.
static const float *process(ep_sampler *s, const float *logits)
{
    if (!s->work) return logits;
    const ep_sample_params *p = &s->p;
    float *w = s->work;
    memcpy(w, logits, (size_t)s->vocab * sizeof(float));
    if (s->n_out < p->min_tokens)
        for (int i = 0; i < s->n_stop; i++)
            if (s->stop_ids[i] >= 0 && s->stop_ids[i] < s->vocab) w[s->stop_ids[i]] = -INFINITY;
    for (int i = 0; i < p->n_bias; i++)
        w[p->bias_tok[i]] += p->bias_val[i];
    if (s->seen) {
        const float r = p->repetition_penalty;
        for (int i = 0; i < s->vocab; i++)
            if (s->seen[i]) w[i] = w[i] > 0.0f ? w[i] / r : w[i] * r;
    }
    if (s->out_count)
        for (int i = 0; i < s->vocab; i++)
            if (s->out_count[i] > 0)
                w[i] -= p->presence_penalty + p->frequency_penalty * (float)s->out_count[i];
    return w;
}

// Records a sampled token as output.
static int took(ep_sampler *s, int token)
{
    s->n_out++;
    if (s->seen) s->seen[token] = 1;
    if (s->out_count) s->out_count[token]++;
    return token;
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
    logits = process(s, logits);
    if (s->p.temperature == 0.0f || s->p.top_k == 1) return took(s, argmax(logits, s->vocab));
    int n = kept_set(s, logits);
    double u = ep_rng_uniform(&s->rng), cum = 0;
    for (int i = 0; i < n; i++) {
        cum += s->prob[i];
        if (u < cum) return took(s, s->idx[i]);
    }
    return took(s, s->idx[n - 1]); // u within rounding of 1
}

void ep_sampler_skip(ep_sampler *s, int64_t n)
{
    // min_tokens counts them; which tokens they were is not known here, so
    // presence / frequency penalties restart their counts (docs/serving.md).
    s->n_out += (int)EP_MIN(n, (int64_t)INT32_MAX);
    if (s->p.temperature == 0.0f || s->p.top_k == 1) return; // as ep_sampler_sample
    for (int64_t i = 0; i < n; i++)
        (void)ep_rng_uniform(&s->rng);
}

void ep_sampler_probs(ep_sampler *s, const float *logits, float *prob)
{
    logits = process(s, logits);
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

bool ep_sampler_device_draw(ep_sampler *s, int max_top_k, ep_sampler_draw *d)
{
    const bool greedy = s->p.temperature == 0.0f || s->p.top_k == 1;
    if (s->work || (!greedy && (s->p.top_k < 1 || s->p.top_k > max_top_k))) return false;
    *d = (ep_sampler_draw){.temperature = s->p.temperature,
                           .top_k = greedy ? 1 : s->p.top_k,
                           .top_p = s->p.top_p,
                           .u = greedy ? 0.0 : ep_rng_uniform(&s->rng)};
    return true;
}

void ep_sampler_accept(ep_sampler *s, int token)
{
    EP_ASSERT(token >= 0 && token < s->vocab); // a device's -1 is the caller's error to report
    (void)took(s, token);
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
