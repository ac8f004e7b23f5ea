// The static router: gate logits, softmax, top-k with the lower-id tie rule,
// DeepSeek's group mask, the models' own combine weights, and the per-token
// loop that asks a policy which candidates to keep and writes CSR routes.
// It does not decide K itself (router/policy_*.c do) and never allocates per call.
#include "router/policy.h"

#include <math.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

struct ep_router {
    ep_model_cfg cfg; // copy: the router outlives nothing it borrows
    int cap_tokens;
    float *logits;      // [cap_tokens, n_experts] gate logits of ep_router_route
    float *score;       // [n_experts] softmax scores of the current token
    uint8_t *allowed;   // [n_experts] group mask of the current token
    int *cand;          // [n_experts] candidates, score descending
    float *cand_score;  // [n_experts]
    int *kept;          // [n_experts] the policy's choice
    int *scratch;       // [n_experts] lent to the policy
    int64_t *rank_load; // [load_cap] laser's running load per rank (router.h)
    int load_cap;
};

// ---- building blocks -------------------------------------------------------

// One dot product, always computed the same way (8 partial sums, fixed
// reduction order), so a row's logits never depend on the batch around it.
// The portable path, for CPUs without AVX-512.
static float dot_f32(const float *a, const float *b, int n)
{
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            s[j] += a[i + j] * b[i + j];
    for (; i < n; i++)
        s[i & 7] += a[i] * b[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static void gate_c(const float *x, int T, int H, const float *gate_w, int E, float *logits)
{
    // Blocks of 4 tokens share each gate row while it is in cache; every
    // (t, e) is still the same dot_f32 call, so blocking changes no bit.
    enum { TB = 4 };
    for (int t0 = 0; t0 < T; t0 += TB) {
        int t1 = EP_MIN(T, t0 + TB);
        for (int e = 0; e < E; e++) {
            const float *w = gate_w + (size_t)e * H;
            for (int t = t0; t < t1; t++)
                logits[(size_t)t * E + e] = dot_f32(x + (size_t)t * H, w, H);
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EP_GATE_AVX512 1

// The AVX-512 gate: every (t, e) is one 16-lane FMA chain over h in steps of
// 16 (the tail through a masked load, zeros beyond H), then the same
// horizontal sum. The 4x4 register block below runs exactly that chain for
// each of its 16 (t, e), so a token's logits are bit-identical alone or in
// any batch, as with the portable path (on one CPU kind: the two paths round
// differently, and a process uses one).
__attribute__((target("avx512f"))) static inline __m512 chunk(const float *p, int h, int H)
{
    if (h + 16 <= H) return _mm512_loadu_ps(p + h);
    return _mm512_maskz_loadu_ps((__mmask16)((1u << (H - h)) - 1u), p + h);
}

__attribute__((target("avx512f"))) static float dot_avx512(const float *a, const float *b, int H)
{
    __m512 acc = _mm512_setzero_ps();
    for (int h = 0; h < H; h += 16)
        acc = _mm512_fmadd_ps(chunk(a, h, H), chunk(b, h, H), acc);
    return _mm512_reduce_add_ps(acc);
}

// One 16-wide step of the 4x4 block: EB gate chunks, then each token's
// chunk against them. Fully unrolled (always_inline + unroll pragmas) so the
// 16 accumulators live in registers; a loop the compiler keeps rolled holds
// them on the stack and runs the gate at a quarter of the speed.
#define EP_GATE_INLINE static inline __attribute__((always_inline, target("avx512f")))
EP_GATE_INLINE void gate_block_step(__m512 acc[4][4], const float *x0, const float *w0, int H,
                                    int h, bool tail)
{
    const __mmask16 k = tail ? (__mmask16)((1u << (H - h)) - 1u) : (__mmask16)0xffff;
    __m512 wv[4];
#pragma GCC unroll 4
    for (int e = 0; e < 4; e++)
        wv[e] = _mm512_maskz_loadu_ps(k, w0 + (size_t)e * H + h);
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) {
        const __m512 xv = _mm512_maskz_loadu_ps(k, x0 + (size_t)t * H + h);
#pragma GCC unroll 4
        for (int e = 0; e < 4; e++)
            acc[t][e] = _mm512_fmadd_ps(xv, wv[e], acc[t][e]);
    }
}

__attribute__((target("avx512f"))) static void
gate_avx512(const float *x, int T, int H, const float *gate_w, int E, float *logits)
{
    enum { TB = 4, EB = 4 };
    const int H16 = H & ~15;
    int t0 = 0;
    for (; t0 + TB <= T; t0 += TB) {
        const float *x0 = x + (size_t)t0 * H;
        int e0 = 0;
        for (; e0 + EB <= E; e0 += EB) {
            const float *w0 = gate_w + (size_t)e0 * H;
            __m512 acc[TB][EB];
#pragma GCC unroll 4
            for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                for (int e = 0; e < EB; e++)
                    acc[t][e] = _mm512_setzero_ps();
            int h = 0;
            for (; h < H16; h += 16)
                gate_block_step(acc, x0, w0, H, h, false);
            if (h < H) gate_block_step(acc, x0, w0, H, h, true);
#pragma GCC unroll 4
            for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
                for (int e = 0; e < EB; e++)
                    logits[(size_t)(t0 + t) * E + e0 + e] = _mm512_reduce_add_ps(acc[t][e]);
        }
        for (; e0 < E; e0++)
            for (int t = 0; t < TB; t++)
                logits[(size_t)(t0 + t) * E + e0] =
                    dot_avx512(x0 + (size_t)t * H, gate_w + (size_t)e0 * H, H);
    }
    for (; t0 < T; t0++)
        for (int e = 0; e < E; e++)
            logits[(size_t)t0 * E + e] = dot_avx512(x + (size_t)t0 * H, gate_w + (size_t)e * H, H);
}
#endif

void ep_router_gate_logits(const float *x, int T, int H, const float *gate_w, int E, float *logits)
{
#ifdef EP_GATE_AVX512
    static atomic_int avx512 = -1; // decided once per process, so every call rounds alike
    int have = atomic_load(&avx512);
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512f") ? 1 : 0;
        atomic_store(&avx512, have);
    }
    if (have) {
        gate_avx512(x, T, H, gate_w, E, logits);
        return;
    }
#endif
    gate_c(x, T, H, gate_w, E, logits);
}

void ep_router_softmax(float *row, int n)
{
    if (n <= 0) return;
    float mx = row[0];
    for (int i = 1; i < n; i++)
        if (row[i] > mx) mx = row[i];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        row[i] = expf(row[i] - mx);
        sum += row[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        row[i] *= inv;
}

// a ranks before b: higher score, or equal score and lower id.
static inline bool ranks_before(float sa, int a, float sb, int b)
{
    return sa > sb || (sa == sb && a < b);
}

int ep_router_topk(const float *score, int n, int k, const uint8_t *allowed, int *idx)
{
    int m = 0;
    if (k <= 0) return 0;
    // Ascending ids and a strict comparison keep the lower id ahead on ties.
    for (int e = 0; e < n; e++) {
        if (allowed && !allowed[e]) continue;
        float s = score[e];
        if (m == k && !ranks_before(s, e, score[idx[k - 1]], idx[k - 1])) continue;
        int j = m < k ? m++ : k - 1;
        while (j > 0 && ranks_before(s, e, score[idx[j - 1]], idx[j - 1])) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = e;
    }
    return m;
}

void ep_router_group_mask(const float *score, int n, int n_group, int topk_group, uint8_t *allowed)
{
    EP_ASSERT(n_group >= 1 && n % n_group == 0 && topk_group >= 1 && topk_group <= n_group);
    int gsize = n / n_group;
    // Group scores live in a small stack array: n_group is a model constant
    // (8 for V2.5) and the mask is rebuilt per token.
    float gscore[256];
    int gidx[256];
    EP_ASSERT(n_group <= 256);
    for (int g = 0; g < n_group; g++) {
        float mx = score[g * gsize];
        for (int i = 1; i < gsize; i++)
            if (score[g * gsize + i] > mx) mx = score[g * gsize + i];
        gscore[g] = mx;
    }
    int kept = ep_router_topk(gscore, n_group, topk_group, NULL, gidx);
    memset(allowed, 0, (size_t)n);
    for (int j = 0; j < kept; j++)
        memset(allowed + gidx[j] * gsize, 1, (size_t)gsize);
}

void ep_router_weights(const ep_model_cfg *cfg, const float *score, const int *idx, int k, float *w)
{
    if (cfg->norm_topk_prob && (cfg->arch == EP_ARCH_QWEN3_MOE || cfg->k_base > 1)) {
        // qwen3_moe: weights /= sum; modeling_deepseek.py: `top_k > 1 and
        // norm_topk_prob` -> weights / (sum + 1e-20) (FACTS.md).
        float sum = 0.0f;
        for (int j = 0; j < k; j++)
            sum += score[idx[j]];
        if (cfg->arch == EP_ARCH_DEEPSEEK_V2) sum += 1e-20f;
        for (int j = 0; j < k; j++)
            w[j] = score[idx[j]] / sum;
    } else {
        for (int j = 0; j < k; j++)
            w[j] = score[idx[j]] * cfg->routed_scaling_factor;
    }
}

// ---- the router ------------------------------------------------------------

ep_status ep_router_init(const ep_model_cfg *cfg, int cap_tokens, ep_router **out)
{
    *out = NULL;
    if (cap_tokens < 0)
        return ep_errorf(EP_ERR_ARG, "ep_router_init: cap_tokens %d, expected >= 0", cap_tokens);
    if (cfg->n_experts < 1 || cfg->k_base < 1 || cfg->k_base > cfg->n_experts)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: n_experts %d, k_base %d: expected 1 <= k_base <= n_experts",
                         cfg->source, cfg->n_experts, cfg->k_base);
    if (cfg->topk_method == EP_TOPK_GROUP_LIMITED) {
        if (cfg->n_group < 1 || cfg->n_group > 256 || cfg->n_experts % cfg->n_group != 0 ||
            cfg->topk_group < 1 || cfg->topk_group > cfg->n_group)
            return ep_errorf(EP_ERR_CONFIG,
                             "%s: n_group %d, topk_group %d: expected n_experts (%d) divisible by "
                             "n_group <= 256 and 1 <= topk_group <= n_group",
                             cfg->source, cfg->n_group, cfg->topk_group, cfg->n_experts);
        if (cfg->topk_group * (cfg->n_experts / cfg->n_group) < cfg->k_base)
            return ep_errorf(
                EP_ERR_CONFIG, "%s: topk_group %d groups of %d experts hold fewer than k_base %d",
                cfg->source, cfg->topk_group, cfg->n_experts / cfg->n_group, cfg->k_base);
    }
    ep_router *r = ep_xcalloc(1, sizeof *r);
    size_t E = (size_t)cfg->n_experts;
    r->cfg = *cfg;
    r->cap_tokens = cap_tokens;
    r->logits = ep_xmalloc((size_t)(cap_tokens > 0 ? cap_tokens : 1) * E * sizeof(float));
    r->score = ep_xmalloc(E * sizeof(float));
    r->allowed = ep_xmalloc(E);
    r->cand = ep_xmalloc(E * sizeof(int));
    r->cand_score = ep_xmalloc(E * sizeof(float));
    r->kept = ep_xmalloc(E * sizeof(int));
    r->scratch = ep_xmalloc(E * sizeof(int));
    *out = r;
    return EP_OK;
}

void ep_router_free(ep_router *r)
{
    if (!r) return;
    free(r->logits);
    free(r->score);
    free(r->allowed);
    free(r->cand);
    free(r->cand_score);
    free(r->kept);
    free(r->scratch);
    free(r->rank_load);
    free(r);
}

static ep_status check_call(const ep_router *r, const ep_policy *p, int layer, int T,
                            const ep_routes *out)
{
    const ep_model_cfg *c = &r->cfg;
    if (layer < 0 || layer >= c->n_layers || !ep_model_layer_is_moe(c, layer))
        return ep_errorf(EP_ERR_ARG, "router: layer %d is not a MoE layer of %s (layers %d..%d)",
                         layer, c->name, c->first_k_dense, c->n_layers - 1);
    if (T < 0 || T > r->cap_tokens || T > out->cap_tokens)
        return ep_errorf(EP_ERR_ARG,
                         "router: %d tokens, expected 0..%d (router) and <= %d (routes)", T,
                         r->cap_tokens, out->cap_tokens);
    if (p->cfg.n_experts != c->n_experts || p->cfg.k_base != c->k_base ||
        p->cfg.n_layers != c->n_layers)
        return ep_errorf(EP_ERR_ARG,
                         "router: policy '%s' was made for %d layers x %d experts, top-%d; "
                         "model %s has %d x %d, top-%d",
                         ep_policy_name(p), p->cfg.n_layers, p->cfg.n_experts, p->cfg.k_base,
                         c->name, c->n_layers, c->n_experts, c->k_base);
    if (out->max_k < ep_policy_max_k(p) || out->k_base != c->k_base)
        return ep_errorf(EP_ERR_ARG,
                         "router: routes hold max_k %d, k_base %d; policy '%s' needs max_k %d, "
                         "model k_base %d",
                         out->max_k, out->k_base, ep_policy_name(p), ep_policy_max_k(p), c->k_base);
    return EP_OK;
}

// Insertion sort of the kept ids by score descending (K is small).
static void sort_by_score(const float *score, int *ids, int k)
{
    for (int i = 1; i < k; i++) {
        int v = ids[i], j = i;
        while (j > 0 && ranks_before(score[v], v, score[ids[j - 1]], ids[j - 1])) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = v;
    }
}

// laser's running load for a call with placement ctx: zeroed, grown once
// to the largest world; NULL when p keeps no load or ctx has no placement.
static int64_t *call_load(ep_router *r, const ep_policy *p, const ep_route_ctx *ctx)
{
    if (!ep_policy_uses_load(p) || !ep_route_ctx_placed(ctx)) return NULL;
    const int W = ctx->place->world_size;
    if (W > r->load_cap) {
        r->rank_load = ep_xrealloc(r->rank_load, (size_t)W * sizeof(int64_t));
        r->load_cap = W;
    }
    memset(r->rank_load, 0, (size_t)W * sizeof(int64_t));
    return r->rank_load;
}

const int64_t *ep_router_rank_load(const ep_router *r)
{
    return r->rank_load;
}

static ep_status check_ctx(const ep_router *r, const ep_route_ctx *ctx)
{
    if (!ep_route_ctx_placed(ctx)) return EP_OK;
    const ep_placement *pl = ctx->place;
    if (pl->n_experts != r->cfg.n_experts || ctx->rank < -1 || ctx->rank >= pl->world_size)
        return ep_errorf(EP_ERR_ARG,
                         "router: routing context: placement of %d experts over %d ranks, rank "
                         "%d; expected %d experts and -1 <= rank < %d",
                         pl->n_experts, pl->world_size, ctx->rank, r->cfg.n_experts,
                         pl->world_size);
    return EP_OK;
}

ep_status ep_router_route_logits(ep_router *r, const ep_policy *p, const ep_route_ctx *ctx,
                                 int layer, const float *logits, int T, ep_routes *out)
{
    ep_status st = check_call(r, p, layer, T, out);
    if (!st) st = check_ctx(r, ctx);
    for (int t = 0; !st && ctx && ctx->token_domain && t < T; t++)
        if (ctx->token_domain[t] < -1 || ctx->token_domain[t] >= p->cfg.pick.n_domains)
            st = ep_errorf(EP_ERR_ARG,
                           "router: routing context: token %d has Pick domain %d, expected -1..%d "
                           "(policy '%s')",
                           t, ctx->token_domain[t], p->cfg.pick.n_domains - 1, ep_policy_name(p));
    if (st) return st;
    const ep_model_cfg *c = &r->cfg;
    const int E = c->n_experts, kb = c->k_base;
    const bool grouped = c->topk_method == EP_TOPK_GROUP_LIMITED;
    const int max_k = ep_policy_max_k(p);
    int want = EP_MIN(E, ep_policy_range(p) * kb);
    if (want < kb) want = kb;

    ep_policy_token tok = {
        .layer = layer,
        .n_experts = E,
        .k_base = kb,
        .cand = r->cand,
        .cand_score = r->cand_score,
        .score = r->score,
        .allowed = grouped ? r->allowed : NULL,
        .scratch = r->scratch,
        .ctx = ep_route_ctx_placed(ctx) ? ctx : NULL,
    };
    int64_t *load = call_load(r, p, ctx); // laser's load counts this call's pairs only
    tok.rank_load = load;
    out->n_tokens = T;
    out->offsets[0] = 0;
    for (int t = 0; t < T; t++) {
        memcpy(r->score, logits + (size_t)t * E, (size_t)E * sizeof(float));
        ep_router_softmax(r->score, E);
        if (grouped) ep_router_group_mask(r->score, E, c->n_group, c->topk_group, r->allowed);
        tok.n_cand = ep_router_topk(r->score, E, want, tok.allowed, r->cand);
        EP_ASSERT(tok.n_cand >= kb);
        for (int j = 0; j < tok.n_cand; j++)
            r->cand_score[j] = r->score[r->cand[j]];

        // The counterfactual: the model's own static top-k_base.
        memcpy(out->base_expert + (size_t)t * kb, r->cand, (size_t)kb * sizeof(int));
        ep_router_weights(c, r->score, r->cand, kb, out->base_weight + (size_t)t * kb);

        tok.domain = ctx && ctx->token_domain ? &ctx->token_domain[t] : NULL;
        int K = p->vt->select(p, &tok, r->kept);
        EP_ASSERT(K >= 1 && K <= max_k);
        if (load) ep_route_load_add(ctx, load, r->kept, K);
        sort_by_score(r->score, r->kept, K);
        int off = out->offsets[t];
        memcpy(out->expert + off, r->kept, (size_t)K * sizeof(int));
        ep_router_weights(c, r->score, r->kept, K, out->weight + off);
        out->offsets[t + 1] = off + K;
    }
    return EP_OK;
}

ep_status ep_router_route(ep_router *r, const ep_policy *p, const ep_route_ctx *ctx, int layer,
                          const float *x, int T, const float *gate_w, ep_routes *out)
{
    ep_status st = check_call(r, p, layer, T, out);
    if (st) return st;
    ep_router_gate_logits(x, T, r->cfg.hidden, gate_w, r->cfg.n_experts, r->logits);
    return ep_router_route_logits(r, p, ctx, layer, r->logits, T, out);
}
