// Routing policies behind one vtable (baseline, ban, pick, banpick, topp, des,
// laser; one file and one `static const` table each), the parsed routing YAML
// (ep_routing_cfg: loader, validator, atomic writer) and the pure helpers the
// policies share (Ban's K, Pick's strategies, automatic Pick domain). No MPI,
// no CUDA: the router calls a policy once per token with that token's scores.
#ifndef EP_POLICY_H
#define EP_POLICY_H

#include "common/json_util.h" // ep_file_atomic_open/commit, used by the writers here
#include "router/router.h"

#include <stdio.h>

// ---- routing config (configs/routing/*.yaml, docs/routing.md) -------------

typedef enum {
    EP_POLICY_BASELINE,
    EP_POLICY_BAN,
    EP_POLICY_PICK,
    EP_POLICY_BANPICK,
    EP_POLICY_TOPP,
    EP_POLICY_DES,
    EP_POLICY_LASER, // load-aware widening after another policy (laser.after)
    EP_POLICY_COUNT
} ep_policy_kind;

typedef enum { EP_PICK_A, EP_PICK_B, EP_PICK_C, EP_PICK_D, EP_PICK_E } ep_pick_strategy;

// ban.locality (docs/routing.md "comm-aware Ban"): off (plain Ban), rank
// (`true` in older YAMLs: visited ranks, then nodes, per slot) or node (the
// node is what counts; a new node is chosen for the most candidates it holds).
typedef enum { EP_BAN_LOC_OFF, EP_BAN_LOC_RANK, EP_BAN_LOC_NODE } ep_ban_locality;

// One calibrated domain profile (math, code, general, ...).
typedef struct {
    char name[64];
    uint8_t *key;     // [n_layers * n_experts] 1 = key expert of that layer
    float *frequency; // [n_layers * n_experts] expert activation frequency, or NULL
} ep_pick_domain;

typedef struct {
    ep_policy_kind policy;
    struct {
        int k_min;                // K_min, 1 <= k_min <= k_base
        float lambda, beta;       // lambda in (0, 1], beta in [0, 1]
        float r_min, r_max;       // R_i normalisation, 0 <= r_min <= r_max <= 1
        float *layer_sensitivity; // [n_layers] W_l, or NULL (then L'_l = 0)
        ep_ban_locality locality; // comm-aware Ban (needs a placement in the routing context)
        float locality_ratio;     // rho in (0, 1]
    } ban;
    struct {
        ep_pick_strategy strategy; // default D for pick, C for banpick
        int range;                 // candidates = top range*k_base (every policy)
        bool domain_auto;          // `domain: auto`
        int domain;                // active domain index, -1 none
        int n_domains;
        ep_pick_domain *domains; // [n_domains]
    } pick;
    struct {
        float threshold; // (0, 1]
    } topp;
    struct {
        int k_lo, k_hi;      // 1 <= k_lo <= k_hi <= k_base
        float *median_ratio; // [n_layers * (k_base - 1)]: entry j-1 = median of
                             // r_(j)/r_(j+1), j = 1..k_base-1; or NULL (all 1.0)
    } des;
    // LASER-style load-aware routing (our rule, docs/routing.md "laser"):
    // runs `after` (any kind but laser itself), then, for a flat token
    // (top-1 / lowest kept score < peak_ratio), re-chooses the kept experts
    // beyond the first keep_top among those scoring >= widen_ratio x the
    // lowest kept score, least-loaded home rank first (ties: the inner
    // choice, then score). K is unchanged.
    struct {
        ep_policy_kind after; // the inner policy (default baseline)
        float peak_ratio;     // >= 1
        float widen_ratio;    // (0, 1]
        int keep_top;         // [0, k_base]: the strongest kept experts never moved
    } laser;
    // Model dimensions the arrays above are sized for.
    int n_layers, n_experts, k_base, first_k_dense;
    char source[1024]; // file it was read from ("" for defaults), for messages
} ep_routing_cfg;

const char *ep_policy_kind_name(ep_policy_kind k);
ep_status ep_policy_kind_parse(const char *s, ep_policy_kind *out); // EP_ERR_ARG when unknown

// Defaults of docs/routing.md for model m and policy kind.
void ep_routing_cfg_default(ep_routing_cfg *rc, const ep_model_cfg *m, ep_policy_kind kind);
// Parses and validates a routing YAML against model m. On error rc is left
// empty (freed) and the message names the file, the key (with line), what was
// expected and what was found. Unknown keys are errors.
ep_status ep_routing_cfg_load(const char *path, const ep_model_cfg *m, ep_routing_cfg *rc);
ep_status ep_routing_cfg_validate(const ep_routing_cfg *rc);
// Writes rc as routing YAML that ep_routing_cfg_load reads back to an equal
// config. Atomic: a temporary file in the same directory, then rename.
ep_status ep_routing_cfg_write(const ep_routing_cfg *rc, const ep_model_cfg *m, const char *path);
void ep_routing_cfg_copy(ep_routing_cfg *dst, const ep_routing_cfg *src); // deep copy
void ep_routing_cfg_free(ep_routing_cfg *rc); // NULL ok; leaves rc zeroed
// Adds an empty domain profile (no key experts, no frequency); returns its index.
int ep_routing_cfg_add_domain(ep_routing_cfg *rc, const char *name);
int ep_routing_cfg_find_domain(const ep_routing_cfg *rc, const char *name); // -1 if none

// Automatic Pick domain: the domain whose frequency vector (all MoE layers
// concatenated) has the largest cosine with hist [n_layers * n_experts] (a
// request's routing histogram). Domains without frequency are skipped; ties
// go to the lower index. Returns -1 when no domain has frequencies or hist is
// all zero. Optionally reports the winning cosine.
int ep_pick_domain_auto(const ep_routing_cfg *rc, const float *hist, float *cos_out);
// hist_layer [n_experts] += 1 for every (token, kept expert) of r.
void ep_routes_histogram_add(const ep_routes *r, int n_experts, float *hist_layer);

// ---- the policy interface --------------------------------------------------

// What a policy sees of one token at one MoE layer.
typedef struct {
    int layer;
    int n_experts, k_base;
    int n_cand;              // min(range*k_base, allowed experts)
    const int *cand;         // [n_cand] candidate ids, score descending, ties lower id first
    const float *cand_score; // [n_cand] their softmax scores
    const float *score;      // [n_experts] softmax scores of all experts (fp32)
    const uint8_t *allowed;  // [n_experts] group-limited mask, NULL when all are allowed
    int *scratch;            // [n_experts] free for the policy during select
    // Where the token and the experts are (router.h): NULL when the call
    // has no placement.
    const ep_route_ctx *ctx;
    // laser's running load: rank_load[r] = (token, expert) pairs this
    // routing call has already kept on rank r (ep_route_load_rank), before
    // this token. [world_size]; NULL unless the policy is laser and the call
    // has a placement. The router zeroes it per call and adds each token's
    // pairs after its select, so later tokens see earlier ones.
    const int64_t *rank_load;
    // This token's Pick domain (ep_route_ctx.token_domain), or NULL: the
    // policy's own (pick.domain). Read by Pick through ep_pick_domain_of.
    const int *domain;
} ep_policy_token;

typedef struct {
    const char *name;
    // Writes the kept expert ids to kept[0..K) and returns K, 1 <= K <=
    // ep_policy_max_k(p); no duplicates. The router sorts them by score and
    // computes the combine weights.
    int (*select)(const ep_policy *p, const ep_policy_token *t, int *kept);
} ep_policy_vtable;

// Per-domain key experts as CSR (derived once from ep_pick_domain.key).
typedef struct {
    int *off; // [n_layers + 1]
    int *ids; // [off[n_layers]] ascending per layer
} ep_pick_keys;

// Derived once at creation; read-only after.
typedef struct {
    float *ban_lterm;   // [n_layers] L'_l in [0, 1]; 0 for dense layers
    ep_pick_keys *keys; // [n_domains]
    int max_k;
    const ep_policy_vtable *inner; // laser: the inner policy's table
} ep_policy_params;

struct ep_policy {
    const ep_policy_vtable *vt;
    ep_routing_cfg cfg; // owned deep copy
    ep_policy_params params;
};

// Creates a policy from an in-memory config (deep-copied, validated).
ep_status ep_policy_create_cfg(const ep_routing_cfg *rc, ep_policy **out);
// The active Pick domain (name from the config, or "" for none). A policy
// with `domain: auto` starts with none (Pick then keeps the baseline) until
// the caller sets the domain that ep_pick_domain_auto chose for a request.
ep_status ep_policy_set_domain(ep_policy *p, const char *name);
int ep_policy_range(const ep_policy *p);
// Whether the router keeps a running per-rank load for p (laser).
bool ep_policy_uses_load(const ep_policy *p);

// ---- placement seen from a routing call (router/route_ctx.c) ---------------
// Whether the call has a placement (ctx and ctx->place set).
static inline bool ep_route_ctx_placed(const ep_route_ctx *c)
{
    return c && c->place;
}
// The rank load counts expert e's pair on: its home rank, or with replicas
// its least-loaded slot's rank under load [world] (ties: the first slot).
// Needs a placement.
int ep_route_load_rank(const ep_route_ctx *c, const int64_t *load, int e);
// load [world] += the pairs of kept[0..K), each on ep_route_load_rank.
void ep_route_load_add(const ep_route_ctx *c, int64_t *load, const int *kept, int K);
// Whether some copy of expert e lives on rank r.
bool ep_route_on_rank(const ep_route_ctx *c, int e, int r);
// Whether some copy of expert e lives on node `node` (node_of NULL: one node).
bool ep_route_on_node(const ep_route_ctx *c, int e, int node);
static inline int ep_route_node(const ep_route_ctx *c, int r)
{
    return c->node_of ? c->node_of[r] : 0;
}

// ---- shared policy steps (tested directly) --------------------------------

// Ban's K for one token: floor(K_min + (k_base - K_min) * lambda * S), clamped
// to [K_min, k_base] and to n_cand. Reports R_i and S when non-NULL.
int ep_ban_k(const ep_routing_cfg *rc, float lterm, const float *cand_score, int n_cand,
             float *r_out, float *s_out);
// Keeps K of the candidates, comm-aware when p has locality and t a placement.
void ep_ban_fill(const ep_policy *p, const ep_policy_token *t, int K, int *kept);
// Applies Pick strategy s for domain keys to kept[0..K) (at most max_k
// entries are written); returns the new K.
int ep_pick_apply(const ep_policy *p, const ep_policy_token *t, ep_pick_strategy s, int *kept,
                  int K);
// The number of keys of the active domain at layer l (0 without a domain).
int ep_pick_n_keys(const ep_policy *p, int layer);
// The Pick domain token t routes with: its own, else the policy's (-1 none).
static inline int ep_pick_domain_of(const ep_policy *p, const ep_policy_token *t)
{
    return t->domain ? *t->domain : p->cfg.pick.domain;
}

extern const ep_policy_vtable ep_policy_baseline_vt, ep_policy_ban_vt, ep_policy_pick_vt,
    ep_policy_banpick_vt, ep_policy_topp_vt, ep_policy_des_vt, ep_policy_laser_vt;

// ---- `epserve route` ------------------------------------------------------

// Routes raw little-endian float32 gate logits (T rows x n_experts) of MoE
// layer `layer` from `input` with policy p and writes one JSON object per
// token to out_path (atomically): {"token":i,"k":K,"experts":[..],"weights":[..]}.
// The file size must equal T * n_experts * 4.
ep_status ep_route_file(const ep_model_cfg *m, const ep_policy *p, int layer, const char *input,
                        int64_t T, const char *out_path);

#endif
