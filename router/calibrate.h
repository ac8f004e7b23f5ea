// The pure parts of `epserve calibrate` (docs/routing.md, "Calibration"):
// the calibration data file (JSON lines of token ids), the restricted top-N
// KL divergence of next-token distributions, the calibration policy (baseline
// everywhere except one layer forced to K_min or one expert dropped, and a
// recorder of R_i, kept-set frequencies and DES's score ratios), DES's
// medians, the key-expert choice and the profile assembly. No model, no MPI:
// model/calibrate.c runs the forwards and sums over ranks.
#ifndef EP_CALIBRATE_H
#define EP_CALIBRATE_H

#include "router/policy.h"

// ---- calibration data --------------------------------------------------

// One sequence per line: {"tokens": [ids...], "domain": "math"} ("domain"
// optional). Blank lines are skipped; any other key is an error.
typedef struct {
    int n_seqs;
    int *off;          // [n_seqs + 1] token offsets of each sequence
    int *tokens;       // [off[n_seqs]] token ids, all in [0, vocab)
    int *domain;       // [n_seqs] index into names
    int n_domains;     // in order of first appearance
    char (*names)[64]; // [n_domains] domain names
    int max_len;       // longest sequence
} ep_calib_data;

// Reads path; lines without "domain" get default_domain ("general" when
// NULL). Errors name the file, the line, what was expected and what was
// found (a token id outside [0, vocab), an empty "tokens", a bad name).
ep_status ep_calib_data_load(const char *path, int vocab, const char *default_domain,
                             ep_calib_data *d);
void ep_calib_data_free(ep_calib_data *d); // NULL ok; leaves d zeroed

// ---- restricted KL (the Ban&Pick paper's Appendix B) ----------------------

// The n = min(n, V) tokens of largest logit, largest first (ties: lower id).
// Returns n.
int ep_calib_top_tokens(const float *logits, int V, int n, int *idx);
// KL(P || Q) where P = softmax of p_sel[0..n) (the original's logits of its
// top-n tokens) and Q = softmax of q_logits[idx[j]], j < n (the other
// distribution restricted to the same tokens): both renormalised over the
// n tokens, natural log, double accumulation. Identical inputs give 0.
double ep_calib_kl_sel(const float *p_sel, const float *q_logits, const int *idx, int n);
// The same from two full logit rows [V]; idx is scratch [V].
double ep_calib_kl_topn(const float *p_logits, const float *q_logits, int V, int top_n, int *idx);

// ---- the calibration policy -----------------------------------------------

// What the recording run accumulates on this rank (count, tokens, r_min and
// r_max are reduced by the caller; the ratios stay per rank, and
// ep_calib_des_medians reads them on every rank).
typedef struct {
    int n_layers, n_experts, k_base, n_domains;
    int domain;          // domain of the tokens routed now (set before each forward)
    double r_min, r_max; // R_i over recorded tokens and MoE layers (+inf / -inf: none)
    int64_t *count;      // [n_domains * n_layers * n_experts] tokens whose kept set holds e
    int64_t *tokens;     // [n_domains * n_layers] tokens routed at each layer
    // DES's ratios r_(j)/r_(j+1), j = 1..k_base-1, of the candidates' scores
    // (fp32; a zero r_(j+1) gives +inf, as DES counts it), every domain.
    float **ratio;      // [n_layers][n_ratio[l] * (k_base - 1)] (NULL until a token comes)
    int64_t *n_ratio;   // [n_layers] tokens whose ratios are held
    int64_t *cap_ratio; // [n_layers] room, in tokens
} ep_calib_record;
void ep_calib_record_init(ep_calib_record *r, int n_layers, int n_experts, int k_base,
                          int n_domains);
void ep_calib_record_free(ep_calib_record *r); // NULL ok

// Baseline (the model's own top-k_base) at every layer except `layer`: there
// the top `k` are kept, then `drop` (if >= 0) is removed from the kept set
// (a token left with none keeps its best other candidate). The router
// renormalises over the kept set as the model does. With rec set, every
// routed token's R_i (as Ban computes it) and kept set are recorded.
// `base` must stay the first member: the router sees &base.
typedef struct {
    ep_policy base;
    int layer;            // the modified MoE layer, -1 none
    int k;                // experts kept at `layer` (k_base: unchanged)
    int drop;             // expert removed at `layer`, -1 none
    ep_calib_record *rec; // borrowed, or NULL
} ep_calib_policy;
void ep_calib_policy_init(ep_calib_policy *cp, const ep_model_cfg *m);
void ep_calib_policy_free(ep_calib_policy *cp); // NULL ok; never pass &base to ep_policy_free
void ep_calib_policy_set(ep_calib_policy *cp, int layer, int k, int drop);

// ---- DES medians ------------------------------------------------------------

// Sums v[0..n) over all ranks in place (an allreduce). Every rank calls it
// the same number of times with the same n.
typedef ep_status (*ep_calib_sum_fn)(void *ctx, int64_t *v, int n);

// DES's des.median_ratio (docs/routing.md, "des"): for every layer l and
// j = 1..k_base-1, median[l * (k_base - 1) + j - 1] = the median of
// r_(j)/r_(j+1) over the tokens recorded at l on all ranks: the middle value,
// or the mean of the two middle ones for an even count; an infinite median is
// written as FLT_MAX (the largest finite value the profile can hold); a layer
// with no token (a dense one) gets 1.0, DES's default. Exact, and the same
// however the tokens were spread over ranks: each median is found by
// bisection on the bit patterns of non-negative floats (monotone), 31 steps of
// one sum of counts. sum NULL: one process. k_base must be >= 2.
ep_status ep_calib_des_medians(const ep_calib_record *rec, ep_calib_sum_fn sum, void *ctx,
                               float *median);

// ---- key experts ----------------------------------------------------------

// The m most frequent experts of one layer (count [n_experts], count
// descending, ties lower id), only those with count > 0. Returns how many.
int ep_calib_frequent(const int64_t *count, int n_experts, int m, int *out);

typedef struct {
    int layer, expert;
    double kl; // mean top-N KL of dropping this expert alone at this layer
} ep_calib_key_cand;
// Sorts cands by KL descending (ties: lower layer, then lower expert) and
// keeps, in that order, the first top_n whose KL is > 0, at most one per
// layer. Moves them to the front of cands and returns how many.
int ep_calib_choose_keys(ep_calib_key_cand *cands, int n, int top_n);

// ---- the profile ----------------------------------------------------------

// Everything calibration measured, reduced over ranks.
typedef struct {
    int k_min;
    const double *w; // [n_layers] W_l (dense layers 0)
    double r_min, r_max;
    const ep_calib_record *rec;           // frequencies (count / tokens per domain and layer)
    const float *des_median;              // [n_layers * (k_base - 1)] or NULL (top-1 models)
    const ep_calib_key_cand *const *keys; // [n_domains] chosen keys of each domain
    const int *n_keys;                    // [n_domains]
    const char (*names)[64];              // [n_domains]
    const char *active;                   // active Pick domain; NULL: the only one, or auto
    bool auto_domain;                     // with active NULL: auto even for one domain
} ep_calib_result;
// A validated banpick routing config from res (rc owned by the caller).
ep_status ep_calib_build_cfg(const ep_model_cfg *m, const ep_calib_result *res, ep_routing_cfg *rc);
// Writes rc as routing YAML (ep_routing_cfg_write) preceded by header (lines
// already starting with "# "), atomically.
ep_status ep_calib_write(const ep_routing_cfg *rc, const ep_model_cfg *m, const char *header,
                         const char *path);

#endif
