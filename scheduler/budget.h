// Expert-slot budget admission: a step is filled by predicted Σ K (tokens x
// experts per token x MoE layers), not by a token count, so that when Ban
// lowers K the same budget admits more tokens. Pure bookkeeping: no MPI, no
// model; the caller owns the sequences and runs the step it admitted.
#ifndef EP_SCHED_BUDGET_H
#define EP_SCHED_BUDGET_H

#include "common/ep.h"

typedef struct {
    int64_t slot_budget; // most predicted (token, expert) pairs per step, all MoE layers
    int max_tokens;      // most tokens per step (0: no limit)
    int64_t kv_free;     // KV-cache token slots free for this step (< 0: no limit)
    int k_base;          // the model's top-k: the prediction for a new sequence
    int n_moe_layers;    // MoE layers a token passes through
    double k_alpha;      // weight of a new observation in a sequence's mean K (0, 1]
} ep_sched_budget;
// Defaults: no token or KV limit, k_alpha 0.25; slot_budget = max_tokens_hint
// tokens at k_base (what a token-count scheduler would admit).
void ep_sched_budget_default(ep_sched_budget *b, int k_base, int n_moe_layers, int max_tokens_hint);

// One running or waiting sequence, as the scheduler sees it.
typedef struct {
    int want_tokens; // tokens it would run this step (prefill: the rest of the prompt; decode: 1)
    int kv_need;     // KV slots those tokens need
    double mean_k;   // recent mean experts per token per MoE layer; 0 = none seen (new)
    double prior_k;  // the prediction before its first observation: the mean K its routing
                     // profile has shown so far (0 = none yet: k_base)
} ep_sched_seq;

// What one admission decided.
typedef struct {
    int n_seqs;              // sequences admitted (a prefix of the queue, see below)
    int tokens;              // tokens in the step
    double slots;            // predicted Σ K of the step (a mean K makes it fractional)
    int last_partial_tokens; // > 0: the last admitted sequence runs only this many tokens
} ep_sched_step;

// Predicted pairs of n tokens of s: n * K̂ * n_moe_layers, K̂ = mean_k, else
// prior_k, else k_base.
double ep_sched_predict_slots(const ep_sched_budget *b, const ep_sched_seq *s, int n);

// Admits sequences in queue order (first come, first served: a sequence that
// does not fit stops the step, so a long prompt is never starved by short
// ones behind it) until the slot budget, max_tokens or kv_free is reached.
// A prefill that does not fit whole runs the largest chunk that does (chunked
// prefill). The first sequence always gets at least one token, so a budget
// smaller than one token still makes progress. Returns the decision.
ep_sched_step ep_sched_admit(const ep_sched_budget *b, const ep_sched_seq *q, int n);

// Folds one step's observation into s->mean_k: pairs over token_layers
// (tokens x MoE layers) of that sequence; exponential mean with k_alpha, the
// first observation taken as is.
void ep_sched_observe(const ep_sched_budget *b, ep_sched_seq *s, int64_t pairs,
                      int64_t token_layers);

#endif
