// The router: gate logits, softmax scores, candidates (top range*k_base; for
// DeepSeek group_limited_greedy only from the allowed groups), a policy that
// keeps K_i of them (baseline keeps the model's own top-k_base), and the
// combine weights exactly as the model's own code computes them. Pure,
// deterministic C: no MPI, no CUDA; shared by the CPU path, the simulator and
// the tests. Every result of a token depends on that token's row only, never
// on the batch it came in (except under laser, which balances a call's tokens
// against each other: router/policy.h).
#ifndef EP_ROUTER_H
#define EP_ROUTER_H

#include "cluster/placement.h"
#include "common/model_cfg.h"
#include "common/routes.h"

// A routing policy instance (its vtable and parameters): see router/policy.h.
typedef struct ep_policy ep_policy;
// spec: a policy name ("baseline"; later "ban", "pick", ... with defaults)
// or a routing YAML file. Errors name the spec and what is wrong.
ep_status ep_policy_create(const ep_model_cfg *cfg, const char *spec, ep_policy **out);
void ep_policy_free(ep_policy *p); // NULL ok
const char *ep_policy_name(const ep_policy *p);
// Largest K the policy can keep for one token (sizes ep_routes rows).
int ep_policy_max_k(const ep_policy *p);

// Where one routing call's tokens are and where their experts live: the
// placement dispatch will use for this layer (EPLB gives each layer its own,
// with replicas), the node map and the rank whose tokens these are. Policies
// that look at placement (comm-aware Ban, laser) read it; the others ignore
// it. Passed per call, never stored in a policy: a policy is immutable.
// A NULL context (or place NULL) means no placement: comm-aware Ban is then
// plain Ban and laser its inner policy.
typedef struct {
    const ep_placement *place; // this layer's placement, or NULL
    const int *node_of;        // [place->world_size] node of each rank, or NULL (one node)
    int rank;                  // the routed tokens' rank, or -1 (none: no rank is free)
    bool home_only;            // every pair goes to its expert's home rank (replicas unused)
    // Pick domain of each routed token ([T] indices into the policy's
    // pick.domains, -1 none), or NULL: every token takes the policy's own.
    // A mixed batch routes each request with its own (automatic) domain.
    const int *token_domain;
} ep_route_ctx;

// What routes would send from rank `me`, per (token, layer) summed: the
// other ranks holding a token's experts (a flat dispatch's sends; of them
// `inter_ranks` on other nodes) and the other nodes (a node-level dispatch
// sends once per node). [0]: kept experts, [1]: the static top-k_base.
typedef struct {
    int64_t ranks[2], inter_ranks[2], nodes[2];
    int64_t token_layers; // (token, layer) pairs counted
} ep_route_sends;
// Adds one token's sends to s->...[i] for its experts ids[0..k): pair j goes
// to pair_rank[j], or with pair_rank NULL to rank_of[ids[j]] (home ranks).
// node_of NULL: one node. Does not touch token_layers.
void ep_route_sends_add(const int *ids, int k, const int *rank_of, const int *pair_rank, int me,
                        const int *node_of, ep_route_sends *s, int i);

// Per-call scratch, sized once for cap_tokens (laser's per-rank load grows
// to the largest world a context brings, once).
typedef struct ep_router ep_router;
ep_status ep_router_init(const ep_model_cfg *cfg, int cap_tokens, ep_router **out);
void ep_router_free(ep_router *r); // NULL ok

// x: [T, hidden] (this rank's tokens), gate_w: [n_experts, hidden] ->
// out (CSR routes and the static top-k_base counterfactual). T <= cap_tokens;
// T may be 0. out must have been sized with max_k >= ep_policy_max_k(p).
// ctx: where the tokens and experts are (NULL: no placement).
ep_status ep_router_route(ep_router *r, const ep_policy *p, const ep_route_ctx *ctx, int layer,
                          const float *x, int T, const float *gate_w, ep_routes *out);
// The same from gate logits [T, n_experts] (for `epserve route`).
ep_status ep_router_route_logits(ep_router *r, const ep_policy *p, const ep_route_ctx *ctx,
                                 int layer, const float *logits, int T, ep_routes *out);

// laser's running load per rank after the last call that kept one
// ([its context's world_size]), or NULL before any (for tests).
const int64_t *ep_router_rank_load(const ep_router *r);

// ---- building blocks (public for tests and the simulator) ----------------
// logits[t, e] = dot(x[t, :], gate_w[e, :]) in fp32, row-independent (a
// token's logits are bit-identical alone or in any batch): AVX-512 FMA chains
// in 4x4 register blocks where the CPU has AVX-512F, portable C otherwise.
void ep_router_gate_logits(const float *x, int T, int H, const float *gate_w, int E, float *logits);
// In-place numerically stable softmax over n values (fp32, as HF does).
void ep_router_softmax(float *row, int n);
// Indices of the k largest scores among those with allowed[e] != 0 (allowed
// NULL: all), sorted by score descending, ties -> lower expert id first.
// Returns the number written (< k only when fewer are allowed).
int ep_router_topk(const float *score, int n, int k, const uint8_t *allowed, int *idx);
// DeepSeek group_limited_greedy: group score = max score in each of n_group
// contiguous groups; allowed[e] = 1 for experts of the best topk_group groups
// (ties -> lower group id), 0 otherwise.
void ep_router_group_mask(const float *score, int n, int n_group, int topk_group, uint8_t *allowed);
// Combine weights for the kept experts idx[0..k): Qwen3 and DeepSeek with
// norm_topk_prob: score / sum(kept scores) (+1e-20 for DeepSeek, as its code);
// otherwise score * routed_scaling_factor.
void ep_router_weights(const ep_model_cfg *cfg, const float *score, const int *idx, int k,
                       float *w);

#endif
