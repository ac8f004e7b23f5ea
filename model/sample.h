// Choosing the next token from logits: first the logits processors of the
// request (min_tokens masks the stop ids, logit_bias, repetition penalty,
// presence and frequency penalties, in vLLM's order and semantics), then
// greedy, or temperature then top-k then top-p (the order of Hugging Face's
// and vLLM's samplers) with a seeded RNG, one sampler per request; and the
// stop rule (EOS ids, max tokens). Stop strings need the tokenizer and are
// not here.
#ifndef EP_SAMPLE_H
#define EP_SAMPLE_H

#include "common/ep.h"

// Most logit_bias entries of one request.
#define EP_SAMPLE_MAX_BIAS 300

typedef struct {
    float temperature; // 0: greedy (argmax, lowest id on ties)
    int top_k;         // 0: no limit
    float top_p;   // 1: no limit; keeps the smallest set of most likely tokens with mass >= top_p
    uint64_t seed; // the request's RNG stream
    // Logits processors (all off by default), applied before the above:
    // repetition_penalty (vLLM / HF CTRL): a token already in the prompt or
    // the output has its logit divided by it when positive, multiplied when
    // not (1 or 0: off, so a zeroed struct has no processor). presence_penalty / frequency_penalty
    // (OpenAI): minus presence * [count > 0] + frequency * count over the output tokens
    // ([-2, 2]). min_tokens: the stop ids (ep_sampler_set_stop_ids) cannot
    // be drawn before that many tokens were sampled. logit_bias: bias_val[i]
    // added to token bias_tok[i]'s logit.
    float repetition_penalty;
    float presence_penalty, frequency_penalty;
    int min_tokens;
    int n_bias;
    int32_t bias_tok[EP_SAMPLE_MAX_BIAS];
    float bias_val[EP_SAMPLE_MAX_BIAS];
} ep_sample_params;
// greedy, top_k 0, top_p 1, seed 0, repetition 1, no penalty, bias or min_tokens
void ep_sample_params_default(ep_sample_params *p);

typedef struct ep_sampler ep_sampler;
// EP_ERR_ARG naming the parameter when temperature < 0 or not finite,
// top_k < 0, top_p outside (0, 1], repetition_penalty < 0 or not finite,
// a penalty outside [-2, 2], min_tokens < 0, n_bias outside [0, 300], a bias
// token outside the vocabulary or a bias not finite, or vocab < 1.
ep_status ep_sampler_init(const ep_sample_params *p, int vocab, ep_sampler **out);
void ep_sampler_free(ep_sampler *s); // NULL ok
// The ids min_tokens keeps out (the model's EOS ids; copied). Default none.
void ep_sampler_set_stop_ids(ep_sampler *s, const int *ids, int n);
// Tokens of the sequence's context as they are fed to the model (prompt
// chunks, and the sampled tokens fed back): the repetition penalty's
// "already seen" set. Ids outside the vocabulary are ignored.
void ep_sampler_observe(ep_sampler *s, const int *tokens, int n);
// The next token from logits[vocab] (not modified). NaN logits count as
// -inf. The token drawn counts as output (penalties, min_tokens).
int ep_sampler_sample(ep_sampler *s, const float *logits);
// Advances the RNG past the draws of n samples (greedy draws none), so that a
// sampler made again for a request that already sampled n tokens (a preempted
// request recomputed elsewhere) continues the same stream.
void ep_sampler_skip(ep_sampler *s, int64_t n);
// The distribution ep_sampler_sample draws from: prob[vocab] (zeros outside
// the kept set; greedy puts 1 on the argmax), after the processors. Draws
// nothing.
void ep_sampler_probs(ep_sampler *s, const float *logits, float *prob);

// Drawing on the device (model/cuda/ops.h, ep_mops_sample_topk): true when
// this sampler's next token can be drawn there, i.e. no logits processor
// is configured and it is greedy or keeps 1..max_top_k tokens; then *d
// holds its temperature, top_k and top_p and the uniform draw
// ep_sampler_sample would use (the RNG advances past it as that call's
// would; greedy draws none: u = 0). False changes nothing: sample on the
// host. The token drawn elsewhere is then given to ep_sampler_accept.
typedef struct {
    float temperature;
    int top_k;
    float top_p;
    double u;
} ep_sampler_draw;
bool ep_sampler_device_draw(ep_sampler *s, int max_top_k, ep_sampler_draw *d);
// Records a token drawn elsewhere as this sampler's output, as
// ep_sampler_sample records its own (min_tokens, penalty counts).
void ep_sampler_accept(ep_sampler *s, int token);

typedef enum { EP_STOP_NONE, EP_STOP_EOS, EP_STOP_LENGTH } ep_stop_reason;
typedef struct {
    const int *eos; // [n_eos] token ids that end the request
    int n_eos;
    int max_tokens; // most generated tokens (>= 1)
} ep_stop_params;
// After generating `token` as the n_generated-th token (1-based): EOS wins
// over length when both hold.
ep_stop_reason ep_stop_check(const ep_stop_params *p, int token, int n_generated);
// OpenAI finish_reason: "stop" (EOS), "length", or NULL for EP_STOP_NONE.
const char *ep_stop_reason_str(ep_stop_reason r);

#endif
