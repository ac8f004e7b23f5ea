// Attention of one step on the paged KV cache, CPU: projections through
// ep_dense_mm; the norms, RoPE and cache writes of the new tokens, then
// scores, softmax and weighted sums through the attention kernels
// (experts/kernels.h: AVX-512 or portable C), each threaded on the one pool
// (ep_par_for): over blocks of tokens, then over (kv head or head group,
// block of the step's tokens) with the softmax online over tiles of keys.
// Qwen3 GQA with per-head q/k RMSNorm before NeoX RoPE; DeepSeek-V2 MLA on
// the latent cache with the absorbed form (q_nope folded into W_UK, the
// output latent unfolded with W_UV), so full keys and values are never
// materialised. The reference that expands them instead is
// model/reference.c.
#include "model/model_impl.h"

#include "experts/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// Query tokens per task: with GQA's group of heads (8 for Qwen3-30B-A3B)
// 128 query rows share every key and value row the task reads.
#define EP_ATTN_TOKENS 16
// Keys per tile of the online softmax: the tile's scores stay in L1/L2
// between the scores product, the softmax and the weighted sum.
#define EP_ATTN_KEYS 64
// MLA heads per task: every head reads the same latent rows, so a task takes
// a few; few enough that a decode step of one sequence is still several
// tasks (DeepSeek-V2-Lite: 16 heads, 4 tasks).
#define EP_ATTN_MLA_HEADS 4

// One pool thread's scratch, sized for the largest task (rows query rows).
typedef struct {
    float *q;        // [rows, qw] the task's query rows (MLA: W_UK^T q_nope | q_pe)
    float *o;        // [rows, dv] outputs, unnormalised until the last tile
    float *s;        // [rows, EP_ATTN_KEYS] one key tile's scores, then probabilities
    float *mx, *sum; // [rows] running max and sum of the online softmax
    int *valid;      // [rows] keys of the tile each row sees (causal)
    float *cs;       // [rope dim] cos | sin of one position
} attn_ws;

// Tokens [t0, t0 + n) of the step; cost ~ query rows x keys, for the order.
typedef struct {
    int t0, n;
    int64_t cost;
} attn_chunk;

struct ep_attn {
    attn_ws *ws; // [n_ws], one per pool thread, grown on the calling thread
    int n_ws;
    int rows, qw, dv;  // per-thread sizes
    attn_chunk *chunk; // [cap] this step's, costliest first
    int layer, T;      // the step being run: layer, new tokens
    int groups;        // tasks per chunk: kv heads (GQA) or head groups (MLA)
};

static void ws_free(attn_ws *w)
{
    free(w->q);
    free(w->o);
    free(w->s);
    free(w->mx);
    free(w->sum);
    free(w->valid);
    free(w->cs);
}

void ep_model_attn_free(ep_model *m)
{
    ep_attn *a = m->attn;
    if (!a) return;
    for (int i = 0; i < a->n_ws; i++)
        ws_free(&a->ws[i]);
    free(a->ws);
    free(a->chunk);
    free(a);
    m->attn = NULL;
}

// The attention state of layer l's step of T tokens, with scratch for every
// thread the pool may use now (ep_par_set_threads may have raised it since
// the last step). On the calling thread, before ep_par_for; allocates only
// when the pool grew.
static ep_attn *attn_begin(ep_model *m, int l, int T)
{
    const ep_model_cfg *c = m->cfg;
    ep_attn *a = m->attn;
    if (!a) {
        a = m->attn = ep_xcalloc(1, sizeof *a);
        if (c->arch == EP_ARCH_DEEPSEEK_V2) {
            a->rows = EP_ATTN_TOKENS * EP_MIN(EP_ATTN_MLA_HEADS, c->n_heads);
            a->qw = c->kv_lora_rank + c->qk_rope_dim;
            a->dv = c->kv_lora_rank;
        } else {
            a->rows = EP_ATTN_TOKENS * (c->n_heads / c->n_kv_heads);
            a->qw = a->dv = c->head_dim;
        }
        a->chunk = ep_xmalloc((size_t)m->opts.moe.cap_tokens * sizeof *a->chunk);
    }
    const int threads = ep_par_threads();
    if (a->n_ws < threads) {
        a->ws = ep_xrealloc(a->ws, (size_t)threads * sizeof *a->ws);
        const size_t r = (size_t)a->rows;
        for (int i = a->n_ws; i < threads; i++) {
            attn_ws *w = &a->ws[i];
            w->q = ep_xmalloc(r * a->qw * sizeof(float));
            w->o = ep_xmalloc(r * a->dv * sizeof(float));
            w->s = ep_xmalloc(r * EP_ATTN_KEYS * sizeof(float));
            w->mx = ep_xmalloc(r * sizeof(float));
            w->sum = ep_xmalloc(r * sizeof(float));
            w->valid = ep_xmalloc(r * sizeof(int));
            w->cs = ep_xmalloc((size_t)m->rope.dim * sizeof(float));
        }
        a->n_ws = threads;
    }
    a->layer = l;
    a->T = T;
    return a;
}

static int chunk_cmp(const void *x, const void *y)
{
    const attn_chunk *a = x, *b = y;
    if (a->cost != b->cost) return a->cost > b->cost ? -1 : 1;
    return a->t0 - b->t0;
}

// The step's tokens in chunks of at most EP_ATTN_TOKENS consecutive ones.
// GQA chunks stay within a sequence (nothing to share across); MLA chunks
// do not, so that W_UK and W_UV are read once for up to EP_ATTN_TOKENS
// tokens even in a decode step of one token per sequence. Sorted costliest
// first: the pool hands tasks out in order, and a long task left for last
// would keep one thread busy while the others wait. Each output belongs to
// one (chunk, head) task whatever the order or the thread that runs it.
static int make_chunks(ep_model *m, ep_attn *a, bool across_seqs)
{
    const int T = a->T;
    int n = 0;
    for (int t = 0; t < T; n++) {
        int end = EP_MIN(T, t + EP_ATTN_TOKENS);
        if (!across_seqs)
            for (int e = t + 1; e < end; e++)
                if (m->tok_seq[e] != m->tok_seq[t]) end = e;
        attn_chunk *ch = &a->chunk[n];
        *ch = (attn_chunk){.t0 = t, .n = end - t};
        for (; t < end; t++)
            ch->cost += m->tok_pos[t] + 1;
    }
    qsort(a->chunk, (size_t)n, sizeof *a->chunk, chunk_cmp);
    return n;
}

// Causal attention of rows [r0, r0 + n g) of a task: n tokens of sequence
// seq at positions pos0.., g rows each (token-major), queries in ws->q
// (width dk of a->qw), against the cache rows 0..pos0 + n - 1 of layer l:
// keys at koff (dk floats), values at voff (a->dv floats) of each row.
// Leaves the normalised outputs in ws->o. Keys in tiles of EP_ATTN_KEYS,
// each tile split into runs of cache rows that are contiguous (one block).
static void attend(ep_model *m, attn_ws *ws, int l, int seq, int pos0, int n, int g, int r0, int dk,
                   int koff, int voff)
{
    const ep_attn *a = m->attn;
    const int rows = n * g, last = pos0 + n - 1, dv = a->dv, ldr = m->kv_row;
    const int bt = ep_kv_options(m->kv)->block_tokens;
    const float *q = ws->q + (size_t)r0 * a->qw;
    float *o = ws->o + (size_t)r0 * dv, *mx = ws->mx + r0, *sum = ws->sum + r0;
    int *valid = ws->valid + r0;
    for (int r = 0; r < rows; r++) {
        mx[r] = -INFINITY;
        sum[r] = 0.0f;
    }
    memset(o, 0, (size_t)rows * dv * sizeof(float));
    for (int s0 = 0; s0 <= last; s0 += EP_ATTN_KEYS) {
        const int w = EP_MIN(EP_ATTN_KEYS, last + 1 - s0);
        // Tokens before s0 see none of this tile: start at the first that does.
        const int ra = EP_MAX(0, s0 - pos0) * g, m_rows = rows - ra;
        float *sc = ws->s + (size_t)(r0 + ra) * EP_ATTN_KEYS;
        for (int r = ra; r < rows; r++)
            valid[r] = pos0 + r / g + 1 - s0;
        for (int s = s0, len; s < s0 + w; s += len) {
            len = EP_MIN(s0 + w - s, bt - s % bt);
            const float *kr = ep_kv_row(m->kv, seq, l, s);
            ep_kern_f32_nt(m_rows, len, dk, q + (size_t)ra * a->qw, a->qw, kr + koff, ldr,
                           sc + (s - s0), EP_ATTN_KEYS);
        }
        ep_kern_softmax_tile(m_rows, w, sc, EP_ATTN_KEYS, valid + ra, m->attn_scale, mx + ra,
                             sum + ra, o + (size_t)ra * dv, dv, dv);
        for (int s = s0, len; s < s0 + w; s += len) {
            len = EP_MIN(s0 + w - s, bt - s % bt);
            const float *vr = ep_kv_row(m->kv, seq, l, s) + voff;
            ep_kern_f32_nn(m_rows, dv, len, sc + (s - s0), EP_ATTN_KEYS, vr, ldr, 1.0f,
                           o + (size_t)ra * dv, dv);
        }
    }
    for (int r = 0; r < rows; r++) {
        const float inv = 1.0f / sum[r];
        float *orow = o + (size_t)r * dv;
        for (int d = 0; d < dv; d++)
            orow[d] *= inv;
    }
}

// Runs fn over every (chunk, group) task of the step (after attn_begin).
static void attn_run(ep_model *m, bool across_seqs, int groups, ep_par_fn fn)
{
    ep_attn *a = m->attn;
    a->groups = groups;
    ep_par_for(make_chunks(m, a, across_seqs) * groups, fn, m);
}

// Tasks of the norm / RoPE / cache-write pass: EP_ATTN_TOKENS tokens each.
static int token_tasks(const ep_attn *a)
{
    return (a->T + EP_ATTN_TOKENS - 1) / EP_ATTN_TOKENS;
}

// ---- Qwen3 GQA -----------------------------------------------------------------
// Cache row: [k of kv heads 0..nkv) | v of kv heads 0..nkv)], head_dim each.

// Kv head kh of one chunk (one sequence's tokens): the group's query heads of
// every token are the rows, so each k and v row read serves all of them.
static void gqa_task(void *ctx, int task, int thread)
{
    ep_model *m = ctx;
    const ep_model_cfg *c = m->cfg;
    const ep_attn *a = m->attn;
    const attn_chunk *ch = &a->chunk[task / a->groups];
    const int kh = task % a->groups, nh = c->n_heads, hd = c->head_dim;
    const int kvw = c->n_kv_heads * hd, group = nh / c->n_kv_heads;
    const size_t gw = (size_t)group * hd; // one token's rows of the group
    attn_ws *ws = &a->ws[thread];
    for (int i = 0; i < ch->n; i++)
        memcpy(ws->q + i * gw, m->q + (size_t)(ch->t0 + i) * nh * hd + kh * gw, gw * sizeof(float));
    attend(m, ws, a->layer, m->tok_seq[ch->t0], m->tok_pos[ch->t0], ch->n, group, 0, hd, kh * hd,
           kvw + kh * hd);
    for (int i = 0; i < ch->n; i++)
        memcpy(m->att + (size_t)(ch->t0 + i) * m->attn_out + kh * gw, ws->o + i * gw,
               gw * sizeof(float));
}

// Per-head q/k RMSNorm and RoPE of tokens [EP_ATTN_TOKENS task, +
// EP_ATTN_TOKENS), k and v into their cache rows; token by token as one loop
// over the step would (cos | sin in the thread's scratch).
static void qwen3_rope_task(void *ctx, int task, int thread)
{
    ep_model *m = ctx;
    const ep_model_cfg *c = m->cfg;
    const ep_attn *a = m->attn;
    const ep_layer_w *L = &m->L[a->layer];
    const int nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim, kvw = nkv * hd;
    float *cs = a->ws[thread].cs;
    for (int t = task * EP_ATTN_TOKENS; t < EP_MIN(a->T, (task + 1) * EP_ATTN_TOKENS); t++) {
        float *q = m->q + (size_t)t * nh * hd, *k = m->k + (size_t)t * kvw;
        if (L->q_norm) {
            ep_model_rmsnorm(q, L->q_norm, nh, hd, c->rms_eps, q);
            ep_model_rmsnorm(k, L->k_norm, nkv, hd, c->rms_eps, k);
        }
        ep_rope_table(&m->rope, m->tok_pos[t], cs);
        for (int h = 0; h < nh; h++)
            ep_rope_rotate(&m->rope, cs, q + (size_t)h * hd);
        for (int h = 0; h < nkv; h++)
            ep_rope_rotate(&m->rope, cs, k + (size_t)h * hd);
        float *row = ep_kv_row(m->kv, m->tok_seq[t], a->layer, m->tok_pos[t]);
        memcpy(row, k, (size_t)kvw * sizeof(float));
        memcpy(row + kvw, m->v + (size_t)t * kvw, (size_t)kvw * sizeof(float));
    }
}

static void qwen3_attention(ep_model *m, int l, int T)
{
    const ep_model_cfg *c = m->cfg;
    const ep_layer_w *L = &m->L[l];
    const int H = c->hidden, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    const int kvw = nkv * hd;
    ep_dense_mm(T, m->xn, H, &L->wq, 0.0f, m->q, nh * hd);
    ep_dense_mm(T, m->xn, H, &L->wk, 0.0f, m->k, kvw);
    ep_dense_mm(T, m->xn, H, &L->wv, 0.0f, m->v, kvw);

    // Norm + RoPE of the new tokens; their k and v go to the cache first, so
    // a token of a prefill chunk sees the chunk's earlier tokens.
    ep_par_for(token_tasks(attn_begin(m, l, T)), qwen3_rope_task, m);
    attn_run(m, false, nkv, gqa_task);
    ep_dense_mm(T, m->att, nh * hd, &L->wo, 0.0f, m->y, H);
}

// ---- DeepSeek-V2 MLA -------------------------------------------------------------
// Cache row: [kv_a_layernorm(latent) (kv_lora) | roped k_pe (rope)]: the
// compressed form, (kv_lora + rope) floats per token instead of
// nh * (nope + rope + v).

// Heads [h0, h0 + hg) of one chunk (its tokens may belong to several
// sequences): rows (token, head), token-major. W_UK and W_UV of each head
// are read once for the chunk's tokens.
static void mla_task(void *ctx, int task, int thread)
{
    ep_model *m = ctx;
    const ep_model_cfg *c = m->cfg;
    const ep_attn *a = m->attn;
    const ep_layer_w *L = &m->L[a->layer];
    const attn_chunk *ch = &a->chunk[task / a->groups];
    const int R = c->kv_lora_rank, nope = c->qk_nope_dim, rope = c->qk_rope_dim;
    const int vd = c->v_head_dim, qhd = nope + rope, kvb = nope + vd, qw = a->qw;
    const int h0 = (task % a->groups) * EP_ATTN_MLA_HEADS;
    const int hg = EP_MIN(EP_ATTN_MLA_HEADS, c->n_heads - h0), t0 = ch->t0, n = ch->n;
    attn_ws *ws = &a->ws[thread];
    // q_nope . (W_UK latent) = (W_UK^T q_nope) . latent: row [W_UK^T q_nope |
    // q_pe] against cache row [latent | k_pe], one product of R + rope.
    for (int j = 0; j < hg; j++) {
        const float *wuk = L->wkv_b + (size_t)(h0 + j) * kvb * R; // [nope, R]
        const float *qh = m->q + (size_t)t0 * m->q_dim + (size_t)(h0 + j) * qhd;
        ep_kern_f32_nn(n, R, nope, qh, m->q_dim, wuk, R, 0.0f, ws->q + (size_t)j * qw, hg * qw);
        for (int i = 0; i < n; i++)
            memcpy(ws->q + (size_t)(i * hg + j) * qw + R, qh + (size_t)i * m->q_dim + nope,
                   (size_t)rope * sizeof(float));
    }
    for (int t = t0, e; t < t0 + n; t = e) {
        for (e = t + 1; e < t0 + n && m->tok_seq[e] == m->tok_seq[t];)
            e++;
        attend(m, ws, a->layer, m->tok_seq[t], m->tok_pos[t], e - t, hg, (t - t0) * hg, qw, 0, 0);
    }
    // sum_s p_s (W_UV latent_s) = W_UV (sum_s p_s latent_s)
    for (int j = 0; j < hg; j++) {
        const float *wuv = L->wkv_b + (size_t)(h0 + j) * kvb * R + (size_t)nope * R; // [vd, R]
        ep_kern_f32_nt(n, vd, R, ws->o + (size_t)j * R, hg * R, wuv, R,
                       m->att + (size_t)t0 * m->attn_out + (size_t)(h0 + j) * vd, m->attn_out);
    }
}

// kv_a_layernorm of the latent and RoPE of k_pe into the cache rows of tokens
// [EP_ATTN_TOKENS task, + EP_ATTN_TOKENS), RoPE of their q_pe; token by token
// as one loop over the step would.
static void mla_rope_task(void *ctx, int task, int thread)
{
    ep_model *m = ctx;
    const ep_model_cfg *c = m->cfg;
    const ep_attn *a = m->attn;
    const ep_layer_w *L = &m->L[a->layer];
    const int R = c->kv_lora_rank, nope = c->qk_nope_dim, rope = c->qk_rope_dim;
    const int qhd = nope + rope, row_w = R + rope;
    float *cs = a->ws[thread].cs;
    for (int t = task * EP_ATTN_TOKENS; t < EP_MIN(a->T, (task + 1) * EP_ATTN_TOKENS); t++) {
        const float *ckv = m->k + (size_t)t * row_w;
        float *row = ep_kv_row(m->kv, m->tok_seq[t], a->layer, m->tok_pos[t]);
        ep_model_rmsnorm(ckv, L->kv_a_norm, 1, R, c->rms_eps, row);
        memcpy(row + R, ckv + R, (size_t)rope * sizeof(float));
        ep_rope_table(&m->rope, m->tok_pos[t], cs);
        ep_rope_rotate(&m->rope, cs, row + R);
        float *q = m->q + (size_t)t * m->q_dim;
        for (int h = 0; h < c->n_heads; h++)
            ep_rope_rotate(&m->rope, cs, q + (size_t)h * qhd + nope);
    }
}

static void mla_attention(ep_model *m, int l, int T)
{
    const ep_model_cfg *c = m->cfg;
    const ep_layer_w *L = &m->L[l];
    const int H = c->hidden, nh = c->n_heads, vd = c->v_head_dim;
    const int row_w = c->kv_lora_rank + c->qk_rope_dim;

    if (c->q_lora_rank > 0) {
        ep_dense_mm(T, m->xn, H, &L->wq_a, 0.0f, m->qa, c->q_lora_rank);
        ep_model_rmsnorm(m->qa, L->q_a_norm, T, c->q_lora_rank, c->rms_eps, m->qa);
        ep_dense_mm(T, m->qa, c->q_lora_rank, &L->wq_b, 0.0f, m->q, m->q_dim);
    } else {
        ep_dense_mm(T, m->xn, H, &L->wq, 0.0f, m->q, m->q_dim);
    }
    ep_dense_mm(T, m->xn, H, &L->wkv_a, 0.0f, m->k, row_w);

    // The new tokens' cache rows first, as for Qwen3.
    ep_par_for(token_tasks(attn_begin(m, l, T)), mla_rope_task, m);
    attn_run(m, true, (nh + EP_ATTN_MLA_HEADS - 1) / EP_ATTN_MLA_HEADS, mla_task);
    ep_dense_mm(T, m->att, nh * vd, &L->wo, 0.0f, m->y, H);
}

void ep_model_attention(ep_model *m, int layer, int T)
{
    if (T == 0) return;
    if (m->cfg->arch == EP_ARCH_DEEPSEEK_V2)
        mla_attention(m, layer, T);
    else
        qwen3_attention(m, layer, T);
}
