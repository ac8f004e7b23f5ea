// The serving engine: continuous batching of requests over all ranks.
//
// Rank 0 holds the request queue and plans every step: which sequences run,
// which rank owns each (data-parallel attention: a new request goes to the
// rank with the most free KV blocks, ties to the fewest predicted expert
// slots), how many tokens each runs (ep_sched_admit per rank: expert-slot
// budget, max tokens, KV room; chunked prefill), and which routing profile
// the step uses. It broadcasts the plan; every rank runs ep_model_forward on
// its own sequences (joining every MoE layer even with none), samples the
// next token of each of its sequences whose prompt is done (the request's own
// seeded sampler lives on the owning rank), and sends the tokens and its MoE
// counters back to rank 0. Rank 0 applies the stop rules (EOS, max tokens,
// stop strings on the detokenised text), emits events, and plans the next
// step. Only the thread that calls ep_engine_run makes MPI calls; the
// submit / cancel / metrics / shutdown calls are for any thread of rank 0
// (the HTTP front end's).
//
// One step runs one routing profile on every rank (the MoE layers route all
// of a step's tokens with one policy): with requests asking for different
// profiles, steps take the groups in turn, oldest waiting group first.
#ifndef EP_ENGINE_H
#define EP_ENGINE_H

#include "model/model.h"
#include "model/sample.h"
#include "model/tokenizer.h"

typedef struct {
    ep_model_opts model;     // per rank (cap_tokens, KV blocks, max_seqs, max_ctx)
    int max_num_seqs;        // running sequences over all ranks (default world * model.max_seqs)
    int max_model_len;       // prompt + generated tokens (default model.max_ctx)
    int max_tokens_per_step; // per rank (default model.moe.cap_tokens, which the default
                             // sets to twice the model's: 512)
    // Per rank, predicted Σ K of a step over MoE layers (0: max_tokens_per_step
    // tokens at k_base). Default: 256 tokens at k_base, half the token cap,
    // so the budget binds at baseline and Ban's smaller K admits more tokens.
    int64_t slot_budget;
    int max_waiting; // requests waiting before submit says EP_ERR_BUSY (default 256)
    // Every rebalance_interval steps that ran (0: never, the default), every
    // rank calls ep_moe_replace between two steps: EPLB from the per-layer
    // loads observed since the last one (model.moe.redundant_experts extra
    // slots), weights moved between ranks only when the predicted max/mean
    // rank load improves by rebalance_min_gain (relative; default 0.05).
    int rebalance_interval;
    double rebalance_min_gain;
    double
        step_timeout_s; // a step not finished on every rank within this is a failure (default 30)
    // Routing profiles, created on every rank at ep_engine_create: policy
    // names (baseline, ban, ...) or routing YAML files / presets (what
    // ep_policy_create accepts). [0] is the default. No file is ever opened
    // because of a request: requests name one of these.
    const char *const *routings;
    int n_routings;      // >= 1
    bool exit_when_idle; // ep_engine_run returns once nothing runs or waits (generate, tests)
    // End-of-sequence ids besides the tokenizer's (generation_config.json's
    // eos_token_id), copied; each in [0, vocab). NULL / 0: none.
    const int *eos_ids;
    int n_eos_ids; // <= 16
} ep_engine_opts;
// Defaults from the model (ep_model_opts_default), routings {"baseline"}.
void ep_engine_opts_default(ep_engine_opts *o, const ep_model_cfg *cfg, int world_size);

typedef struct ep_engine ep_engine;
// Collective: every rank calls it with the same cfg and opts. tok is borrowed
// (NULL: no text in events, stop strings refused); only rank 0 uses it.
// cfg, cl, w, tok must outlive the engine.
ep_status ep_engine_create(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                           const ep_tokenizer *tok, const ep_engine_opts *o, ep_engine **out);
void ep_engine_free(ep_engine *e); // NULL ok; after ep_engine_run returned
ep_model *ep_engine_model(ep_engine *e);

int ep_engine_find_routing(const ep_engine *e, const char *name); // index, -1 when not loaded
// Every id that ends a request (the tokenizer's EOS ids, then opts.eos_ids
// not among them) into ids[max]; returns how many.
int ep_engine_eos_ids(const ep_engine *e, int *ids, int max);
const char *ep_engine_routing_name(const ep_engine *e, int i);
int ep_engine_n_routings(const ep_engine *e);

// ---- requests (rank 0) -----------------------------------------------------
typedef struct {
    const int *prompt; // [n_prompt] token ids, copied
    int n_prompt;      // >= 1
    ep_sample_params sample;
    int max_tokens;          // generated tokens, >= 1
    const char *const *stop; // [n_stop] stop strings, copied (need a tokenizer)
    int n_stop;
    bool ignore_eos;
    int routing;             // index of opts.routings, -1: the default [0]
    const char *pick_domain; // NULL or "": the profile's own; else a domain of the profile
} ep_request;

typedef enum { EP_EV_TOKEN, EP_EV_FINISH, EP_EV_ERROR } ep_event_kind;
typedef struct {
    ep_event_kind kind;
    uint64_t id;
    int token; // EV_TOKEN: the generated id
    // EV_TOKEN and EV_FINISH: UTF-8 text released since the previous event
    // (possibly empty: bytes of an unfinished character or of a possible stop
    // string are held back until they resolve; a matched stop string and all
    // after it are never released). NULL when the engine has no tokenizer.
    const char *text;
    size_t text_len;
    const char *finish_reason; // EV_FINISH: "stop" (EOS or stop string), "length", "abort"
    int prompt_tokens, completion_tokens;
    ep_status error; // EV_ERROR: what failed; message names it
    const char *message;
    // Automatic Pick domain (a profile with `pick.domain: auto` and no
    // pick_domain in the request; router/detect.h): the domain detected from
    // the prompt's routing, "" when none was clear, NULL when nothing was
    // detected (another profile, or the request ended before its prefill).
    // Set on the events after the prompt's last chunk ran.
    const char *pick_domain;
} ep_event;
// Called on the engine thread of rank 0. Must return quickly and must not
// call ep_engine_* functions. Every accepted request gets exactly one final
// event (EV_FINISH or EV_ERROR), after which `user` is never used again.
typedef void (*ep_event_fn)(void *user, const ep_event *ev);

// Queues a request; validates before accepting (nothing queued on error):
// EP_ERR_ARG names the field (empty prompt, a token id out of the vocab,
// max_tokens < 1, prompt + max_tokens over max_model_len with both numbers,
// bad sampling parameters, an unknown routing index or pick domain, stop
// strings without a tokenizer); EP_ERR_BUSY when max_waiting requests wait;
// EP_ERR_UNAVAILABLE when shutting down or failed.
ep_status ep_engine_submit(ep_engine *e, const ep_request *r, ep_event_fn fn, void *user,
                           uint64_t *id);
// The request ends soon with EV_FINISH "abort" (its sequence and KV blocks
// freed at the next step), unless it already ended. Unknown ids are ignored.
void ep_engine_cancel(ep_engine *e, uint64_t id);

// ---- the loop (every rank) -------------------------------------------------
// Runs steps until ep_engine_shutdown (or idle, with exit_when_idle). Idle
// ranks wait without spinning a core. A failure of a step (a rank that dies
// or does not finish the step within step_timeout_s, a transport error)
// answers every running and waiting request with EV_ERROR, makes the engine
// not serving, and returns EP_ERR_COMM / EP_ERR_UNAVAILABLE with a message
// naming the rank(s). Never hangs past the timeout on rank 0.
ep_status ep_engine_run(ep_engine *e);
// Rank 0, any thread, also from a signal handler (sets a flag): stop
// accepting; drain: finish running and waiting requests first, else abort
// them (EV_FINISH "abort"). ep_engine_run then returns EP_OK on every rank.
void ep_engine_shutdown(ep_engine *e, bool drain);
bool ep_engine_serving(const ep_engine *e); // accepting requests and no failure

// ---- metrics (rank 0, any thread, a consistent snapshot) -------------------
typedef struct {
    int64_t steps, tokens, token_layers, pairs, base_pairs;
    int64_t dispatch_bytes, combine_bytes, base_dispatch_bytes, base_combine_bytes;
    double slots;
    // Rank 0's forward time of those steps and the part in MoE layers (its
    // waits for the other ranks included): the MoE share of a serving step.
    double forward_s, moe_s;
} ep_engine_profile_metrics;
typedef struct {
    int64_t running, waiting;                 // requests now
    int64_t finished, aborted, failed;        // requests ended, since start
    int64_t prompt_tokens, generation_tokens; // since start
    int64_t steps;
    int last_step_tokens;                    // over all ranks
    double last_step_slots;                  // predicted Σ K the planner admitted
    int64_t kv_blocks_used, kv_blocks_total; // over all ranks (used: held by sequences)
    int64_t kv_blocks_cached; // unreferenced cached prefix blocks (free for reuse), all ranks
    int64_t prefill_tokens;   // prompt tokens computed (recomputes included, cache hits not)
    int64_t preemptions;      // running requests preempted (freed, to be recomputed)
    int64_t prefix_hit_tokens, prefix_query_tokens; // tokens found cached / looked up at admission
    // MoE, over all ranks and MoE layers since start (ep_comm_stats summed)
    int64_t moe_pairs, moe_base_pairs, moe_token_layers;
    int64_t dispatch_bytes, combine_bytes, base_dispatch_bytes, base_combine_bytes;
    // The same bytes (dispatch + combine) across and within nodes, actual
    // and top-k_base (comm/comm.h: hier's stage 1 is inter, stage 2 intra).
    int64_t inter_bytes, intra_bytes, base_inter_bytes, base_intra_bytes;
    int n_layers, n_experts, world_size;
    double *layer_avg_k;          // [n_layers] pairs / tokens of each layer (0 for dense layers)
    double *layer_load_imbalance; // [n_layers] max/mean over ranks of pairs received
    int64_t *expert_load;         // [n_layers * n_experts] pairs routed to each expert
    // Per routing profile (opts.routings order; each step runs one), since
    // start, over all ranks: steps, tokens, predicted Σ K the planner
    // admitted (slots, over MoE layers), and the MoE counters as above.
    // Re-placements (opts.rebalance_interval): checks run, those that moved
    // weights, and the last check's predicted max/mean rank load before and
    // after (mean over MoE layers).
    int64_t replace_checks, replace_moves;
    double replace_imbalance_before, replace_imbalance_after;
    int n_routings;
    const char *const *routing_names;   // [n_routings] the engine's, valid while it lives
    ep_engine_profile_metrics *profile; // [n_routings]
    // Requests whose automatic Pick domain was detected, per (profile,
    // domain or none): n_auto entries, names borrowed from the engine.
    int n_auto;
    const char **auto_routing, **auto_domain; // [n_auto]; auto_domain "" = none
    int64_t *auto_requests;                   // [n_auto]
} ep_engine_metrics;
ep_status ep_engine_metrics_get(ep_engine *e, ep_engine_metrics *m); // arrays malloc'ed
void ep_engine_metrics_free(ep_engine_metrics *m);

#endif
