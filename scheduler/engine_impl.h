// The serving engine's insides, shared by scheduler/engine.c (requests,
// planning, events, metrics on rank 0) and scheduler/engine_step.c (the step
// wire format and what every rank does with a plan). Not a public header.
#ifndef EP_ENGINE_IMPL_H
#define EP_ENGINE_IMPL_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "cluster/liveness.h"
#include "router/policy.h"
#include "scheduler/budget.h"
#include "scheduler/engine.h"
#include "scheduler/stop_text.h"

enum { EP_ENG_TAG_READY = 7101, EP_ENG_TAG_RESULT = 7102 };
enum { EP_ENG_DOMAIN_MAX = 64 }; // bytes of a pick domain name in a plan
// Counters per MoE layer in a step result (int64 each).
enum { EP_ENG_LAYER_WORDS = 12 };
enum { EP_ENG_PROF_WORDS = 9 };
// Words per sequence in a step result: slot, token, pairs, domain found.
enum { EP_ENG_ENTRY_WORDS = 4 };

typedef enum { RQ_FREE, RQ_WAITING, RQ_RUNNING, RQ_FREEING } rq_state;

// One request on rank 0. Its slot (index in ep_engine.rq) names its sequence
// in plans; the owner rank maps the slot to its KV sequence and sampler.
typedef struct {
    rq_state state;
    uint64_t id;
    int prev, next; // arrival-ordered list of live slots
    int *toks;      // [n_prompt + max_tokens] the prompt, then the generated tokens
    int n_prompt;
    int fed;             // tokens the owner's sequence holds (cached prefix + chunks + fed samples)
    int n_gen, last_tok; // known tokens: n_prompt + n_gen (the last one not yet fed)
    int fill_to;         // known tokens at admission: below it a chunk is a prefill
    uint64_t salt;       // what besides the tokens decides its KV rows (routing, domain)
    uint64_t *hash;      // [blocks of n_prompt + max_tokens] cached prefix of its admission
    int n_hit;           // cached KV blocks its admission mapped
    int64_t admit_no;    // admission order on its owner (the latest is preempted first)
    bool admitted;       // admitted once (its prompt counted in prompt_tokens)
    int max_tokens;
    bool ignore_eos, cancel;
    ep_sample_params sp;
    int routing;
    char domain[EP_ENG_DOMAIN_MAX]; // "" = the profile's own
    const char *auto_domain;        // detected Pick domain (ep_event.pick_domain), NULL none yet
    int owner;
    int64_t served;  // tick of arrival or of the last step it ran in (group order)
    ep_sched_seq ss; // mean K estimate
    ep_stop_text text;
    ep_event_fn fn;
    void *user;
    int step_n; // tokens it runs in the step in flight
} ep_eng_req;

struct ep_engine {
    const ep_model_cfg *cfg;
    ep_cluster *cl;
    const ep_tokenizer *tok;
    int eos[24], n_eos; // end-of-sequence ids: tok's, then opts.eos_ids (deduplicated)
    ep_engine_opts o;
    ep_model *m;
    int rank, world;
    int n_layers, n_experts, n_moe;
    int kv_block_tokens, kv_blocks; // per rank
    int cap_slots;                  // request slots (rank 0) = slot ids in plans
    ep_cluster_chan *chan;          // plans, "ready" and results (its own communicator)
    bool have_watch;                // this engine started the process's liveness watch

    char **routing_names;                   // [n_routings] as given
    ep_policy **pol;                        // [n_routings]
    char (*pol_domain0)[EP_ENG_DOMAIN_MAX]; // each profile's own active domain ("" none)

    // Every rank: its sequences by slot, and step scratch (sized once).
    int *slot_seq;             // [cap_slots] KV sequence, -1 none
    ep_sampler **slot_sampler; // [cap_slots]
    int32_t *plan;             // [plan_cap] words
    size_t plan_cap;
    int64_t *res; // [res_cap] this rank's step result
    size_t res_cap;
    int *b_seq, *b_n, *b_tok, *b_slot, *b_sample; // batch of this rank [max_seqs] / [cap tokens]
    ep_sampler **b_samplers;                      // [max_seqs] of the batch, NULL: no draw
    int *b_ids;                                   // [max_seqs] ids drawn
    ep_comm_stats *f_layer;                       // [n_layers]
    int64_t *f_seq_pairs;                         // [max_seqs]
    int64_t *f_expert_load;                       // [n_layers * n_experts]
    uint64_t *hash_buf;                           // [max_hit] a new sequence's cached prefix
    int max_hit;                                  // most KV blocks of one sequence
    // Automatic Pick domain (router/detect.h), each rank for the sequences
    // it owns: the prompt's routing histogram while its prefill runs, then
    // the domain its tokens route with (scheduler/engine_step.c).
    float **slot_hist;         // [cap_slots] [n_layers * n_experts], NULL when none
    int64_t *slot_hist_tokens; // [cap_slots] prompt tokens in slot_hist
    int *slot_domain;          // [cap_slots] -2: the step's own; -1: none found; >= 0 found
    int *b_dom;                // [max_seqs] Pick domain of each batch entry
    float **b_hist;            // [max_seqs] its histogram or NULL
    int *b_found;              // [max_seqs] domain found this step (-2: nothing new)

    // Rank 0: requests, planning, results.
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ep_eng_req *rq;           // [cap_slots]
    int head, tail;           // arrival list
    int n_waiting, n_running; // requests (running: has an owner sequence)
    uint64_t next_id;
    int64_t tick;
    ep_sched_budget budget;
    // Every rank's KV bookkeeping, mirrored exactly (model/kv_cache.h, no
    // rows): rank 0 applies each plan's frees, new sequences, reserves and
    // commits in the order the owner will, so its planning sees the owner's
    // free blocks and cached prefixes without asking.
    ep_kv **mirror;                // [world]
    int *mslot;                    // [cap_slots] the slot's sequence in its owner's mirror, -1 none
    int *pf_slot, *pf_owner, n_pf; // [cap_slots] frees of the next plan, in the mirror's order
    int *new_slot;                 // [cap_slots] sequences a plan creates, in order
    int64_t admit_no;
    int kv_watermark; // blocks a rank keeps free when it admits beside running sequences
    int *rk_free_blocks, *rk_nseqs, *rk_tokens; // [world]
    double *rk_slots;
    bool *rk_full;
    ep_sched_seq *q_seq; // [cap_slots] admission queue scratch
    int *q_slot;
    int64_t **rres;     // [world] receive buffers (rank 0)
    int32_t *ready_buf; // [world]
    // Cross-thread flags.
    atomic_int shutdown_req, drain, failed;
    atomic_int term;            // SIGTERM seen, not yet handled by the engine thread
    atomic_llong step_begin_us; // 0: no step in flight
    atomic_int step_phase;      // 0 idle, 1 waiting for ranks ready, 2 forward, 3 results
    atomic_llong step_no;
    bool step_ran;       // the last plan ran a forward (else it only freed)
    bool serving_closed; // submit refused (shutdown or failure)
    // Metrics (under mu).
    int64_t m_finished, m_aborted, m_failed, m_prompt, m_gen, m_steps;
    int64_t m_prefill, m_preempt, m_hit_tokens, m_query_tokens;
    int m_last_tokens;
    double m_last_slots;
    int m_last_routing; // the routing profile of the last planned step that ran
    // Re-placement (opts.rebalance_interval): steps run when the last one was
    // planned; rank 0's outcome of each (moved or not) and the last
    // predictions of max/mean rank load before and after.
    int64_t replace_at_step;
    int64_t m_replace_checks, m_replace_moves;
    double m_imb_before, m_imb_after;
    // Per routing profile: [n_routings * EP_ENG_PROF_WORDS] steps, tokens,
    // then the EP_ENG_LAYER_WORDS[0..7) summed over ranks and layers
    // (token layers, pairs, top-k_base pairs, dispatch, combine and their
    // top-k_base counterfactuals); m_prof_slots: predicted Σ K admitted.
    int64_t *m_prof;
    double *m_prof_slots;
    double *m_prof_us;         // [n_routings * 2] rank 0's forward time and its MoE layers' part
    double f_fwd_us, f_moe_us; // of the last step this rank ran
    int64_t *m_layer;          // [n_layers * EP_ENG_LAYER_WORDS] summed over ranks
    int64_t *m_layer_recv;     // [n_layers * world] pairs each rank computed
    int64_t *m_expert;         // [n_layers * n_experts]
    int64_t *m_auto;           // [m_auto_off[n_routings]] requests per (profile, domain + 1)
    int *m_auto_off;           // [n_routings + 1]
    // Test hook (EP_ENGINE_TEST_STALL=rank:step:seconds[:forward]): that rank
    // sleeps before it reports ready for that step (with ":forward", after,
    // so that the others wait inside the model's collectives), to exercise
    // the step deadline and the watchdog.
    int stall_rank;
    bool stall_in_forward;
    int64_t stall_step;
    double stall_s;
};

// ---- plan_codec.c: the step plan's wire format --------------------------------
// int32 words: a header (step, flags, routing, pick domain), then three
// sections in this order, each a count and its entries.
typedef enum { EP_ENG_PLAN_FREES, EP_ENG_PLAN_NEWS, EP_ENG_PLAN_RUNS } ep_eng_plan_section;
// Header words (4 + the domain's) and the words of an empty plan.
enum {
    EP_ENG_PLAN_HEAD_WORDS = 4 + EP_ENG_DOMAIN_MAX / 4,
    EP_ENG_PLAN_MIN_WORDS = EP_ENG_PLAN_HEAD_WORDS + 3
};
typedef struct {
    int64_t step;
    bool stop;    // the engine stops after this plan (it frees only)
    bool failed;  // it stops because a step failed
    bool replace; // every rank re-places the experts (ep_moe_replace) before this step's forward
    int routing;  // index of the step's routing profile
    char domain[EP_ENG_DOMAIN_MAX]; // the step's pick domain, "" = the profile's own
} ep_eng_plan_head;
// Words of the largest plan: `slots` request slots, `tokens` tokens over all
// ranks in one step, `hit_blocks` cached KV blocks mapped by its new sequences.
size_t ep_eng_plan_words(int slots, int64_t tokens, int64_t hit_blocks);

// Rank 0 writes a plan entry by entry, sections in order (a section left
// out is written empty); EP_ASSERT when it would outgrow cap.
typedef struct {
    int32_t *w;
    size_t n, cap;
    int section;     // the open section
    size_t count_at; // its count word
    int count;       // its entries so far
} ep_eng_plan_writer;
void ep_eng_plan_begin(ep_eng_plan_writer *p, int32_t *words, size_t cap,
                       const ep_eng_plan_head *h);
void ep_eng_plan_put_free(ep_eng_plan_writer *p, int slot, int owner);
// sampled: tokens the request sampled before (a preempted one: its new
// sampler skips their draws); hashes: [n_hit] chain hashes of the cached KV
// blocks its prefix maps.
void ep_eng_plan_put_new(ep_eng_plan_writer *p, int slot, int owner, const ep_sample_params *sp,
                         int sampled, int n_hit, const uint64_t *hashes);
// tokens: [n] (a prompt chunk, or the last sampled token).
void ep_eng_plan_put_run(ep_eng_plan_writer *p, int slot, int owner, int n, bool sample,
                         const int *tokens);
// Writes the remaining counts; returns the plan's words.
size_t ep_eng_plan_end(ep_eng_plan_writer *p);

// Every rank reads it back in the same order: the header, then per section
// its count and that many entries (EP_ASSERT on a plan that breaks the format:
// rank 0 made it with the same code).
typedef struct {
    const int32_t *w;
    size_t n, at;
    int section; // the open section
    int left;    // its entries not yet read
} ep_eng_plan_reader;
void ep_eng_plan_read(ep_eng_plan_reader *r, const int32_t *words, size_t n, ep_eng_plan_head *h);
// Entries of section sec (those of the sections before it read already).
int ep_eng_plan_count(ep_eng_plan_reader *r, ep_eng_plan_section sec);
void ep_eng_plan_get_free(ep_eng_plan_reader *r, int *slot, int *owner);
// hashes: [max_hit] receives the n_hit hashes (EP_ASSERT n_hit <= max_hit).
void ep_eng_plan_get_new(ep_eng_plan_reader *r, int *slot, int *owner, ep_sample_params *sp,
                         int *sampled, int *n_hit, uint64_t *hashes, int max_hit);
// *tokens points into the plan ([n] words).
void ep_eng_plan_get_run(ep_eng_plan_reader *r, int *slot, int *owner, int *n, bool *sample,
                         const int32_t **tokens);

// ---- engine_step.c ---------------------------------------------------------
// Words of the largest step result.
size_t ep_eng_result_words(const ep_engine *e);
// Non-root: waits (without spinning) for rank 0's next plan into e->plan.
ep_status ep_eng_recv_plan(ep_engine *e, size_t *words);
// Rank 0: sends e->plan[0..words).
ep_status ep_eng_send_plan(ep_engine *e, size_t words);
// Rank 0: words the error of a wait on e->chan that gave up (the channel's
// fail hook): the step, the ranks named and why.
ep_status ep_eng_wait_error(void *engine, const ep_cluster_watch_verdict *v);
// Every rank: applies the plan e->plan[0..words)'s frees and new sequences,
// runs this rank's part of the step and (non-root) sends its result to rank
// 0; rank 0 also collects every rank's result within the step deadline. *h:
// the plan's header (h->stop: the plan said stop). Returns only transport
// failures and timeouts (a rank's own failure travels in its result, [0]).
// On a timeout rank 0's message names the ranks that did not answer.
ep_status ep_eng_exec(ep_engine *e, size_t words, ep_eng_plan_head *h);

// ---- watchdog.c ------------------------------------------------------------
// Rank 0 for the length of ep_engine_run: the watchdog thread and, when
// SIGTERM is at its default, a handler that asks the liveness watch for a
// check. The watchdog fails every request and _exit(1)s when a step
// outlives its deadline + grace + 1 s (the engine thread is blocked where
// nothing polls), when a SIGTERM's check is not taken within 1.5 s, or when
// a shutdown waits on a stuck step.
typedef struct {
    pthread_t thread;
    bool have_thread;
    bool own_term;             // the SIGTERM handler is ours for the run
    struct sigaction old_term; // the one it replaced
} ep_eng_watchdog;
void ep_eng_watchdog_start(ep_engine *e, ep_eng_watchdog *wd);
void ep_eng_watchdog_stop(ep_engine *e, ep_eng_watchdog *wd);
// Rank 0, engine thread, after a SIGTERM: a rank silent for the watch's
// grace period makes it a failure (its message names the rank), else it is
// a shutdown.
void ep_eng_handle_term(ep_engine *e);

// ---- engine.c --------------------------------------------------------------
// Rank 0, under mu: every live request ends with EV_ERROR (a failed step, a
// terminated job) and the engine stops accepting requests.
void ep_eng_fail_all(ep_engine *e, ep_status err, const char *msg);

static inline int ep_eng_blocks(const ep_engine *e, int tokens)
{
    return (tokens + e->kv_block_tokens - 1) / e->kv_block_tokens;
}

// The prefix-cache salt of a routing profile and pick domain ("" = the
// profile's own): MoE routing decides the rows of every layer after the
// first MoE layer, so sequences of different profiles or domains never share.
static inline uint64_t ep_eng_salt(const ep_engine *e, int routing, const char *domain)
{
    return ep_kv_salt((uint64_t)routing + 1, domain[0] ? domain : e->pol_domain0[routing]);
}

#endif
