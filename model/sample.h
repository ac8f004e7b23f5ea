// Choosing the next token from logits: greedy, or temperature then top-k then
// top-p (the order of Hugging Face's and vLLM's samplers) with a seeded RNG,
// one sampler per request; and the stop rule (EOS ids, max tokens). Stop
// strings need the tokenizer and are not here.
#ifndef EP_SAMPLE_H
#define EP_SAMPLE_H

#include "common/ep.h"

typedef struct {
    float temperature; // 0: greedy (argmax, lowest id on ties)
    int top_k;         // 0: no limit
    float top_p;   // 1: no limit; keeps the smallest set of most likely tokens with mass >= top_p
    uint64_t seed; // the request's RNG stream
} ep_sample_params;
void ep_sample_params_default(ep_sample_params *p); // greedy, top_k 0, top_p 1, seed 0

typedef struct ep_sampler ep_sampler;
// EP_ERR_ARG naming the parameter when temperature < 0 or not finite,
// top_k < 0, top_p outside (0, 1], or vocab < 1.
ep_status ep_sampler_init(const ep_sample_params *p, int vocab, ep_sampler **out);
void ep_sampler_free(ep_sampler *s); // NULL ok
// The next token from logits[vocab]. NaN logits count as -inf.
int ep_sampler_sample(ep_sampler *s, const float *logits);
// Advances the RNG past the draws of n samples (greedy draws none), so that a
// sampler made again for a request that already sampled n tokens (a preempted
// request recomputed elsewhere) continues the same stream.
void ep_sampler_skip(ep_sampler *s, int64_t n);
// The distribution ep_sampler_sample draws from: prob[vocab] (zeros outside
// the kept set; greedy puts 1 on the argmax). Draws nothing.
void ep_sampler_probs(ep_sampler *s, const float *logits, float *prob);

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
