// The model on this rank: replicated weights read once in fp32, scratch sized
// once for cap tokens, and the step driver (embed -> per layer: norm,
// attention on the paged KV cache, residual, norm, dense MLP or EP MoE,
// residual -> final norm -> lm_head). Attention kernels are in model/attn.c,
// the reference forward in model/reference.c.
#include "model/backend.h"

#include "cluster/liveness.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void ep_model_opts_default(ep_model_opts *o, const ep_model_cfg *cfg)
{
    memset(o, 0, sizeof *o);
    ep_moe_opts_default(&o->moe, cfg);
    o->dtype = EP_DTYPE_AUTO;
    o->kv_block_tokens = 16;
    o->max_seqs = 64;
    o->max_ctx = cfg->max_pos < 4096 ? cfg->max_pos : 4096;
    int per_seq = (o->max_ctx / 4 + o->kv_block_tokens - 1) / o->kv_block_tokens;
    o->kv_blocks = o->max_seqs * (per_seq > 0 ? per_seq : 1);
    o->prefix_caching = true;
}

void ep_model_rmsnorm(const float *x, const float *w, int rows, int n, float eps, float *out)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *o = out + (size_t)r * n;
        float ss = 0.0f;
        for (int i = 0; i < n; i++)
            ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)n + eps);
        for (int i = 0; i < n; i++)
            o[i] = xr[i] * inv * w[i];
    }
}

// ---- weights ------------------------------------------------------------------

// Reads one tensor (d1 < 0: 1-D) into a new fp32 buffer; name is printf-style.
static ep_status read_w(ep_model *m, ep_weights *w, float **dst, int64_t d0, int64_t d1,
                        const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static ep_status read_w(ep_model *m, ep_weights *w, float **dst, int64_t d0, int64_t d1,
                        const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int64_t shape[2] = {d0, d1};
    size_t n = (size_t)d0 * (size_t)(d1 < 0 ? 1 : d1);
    *dst = malloc(n * sizeof(float));
    if (!*dst)
        return ep_errorf(EP_ERR_NOMEM, "model: cannot allocate %zu bytes for tensor %s",
                         n * sizeof(float), name);
    m->weight_bytes += n * sizeof(float);
    return ep_weights_read_f32(w, name, d1 < 0 ? 1 : 2, shape, *dst);
}

// Reads one matrix [d0, d1] in the storage m->opts.dtype asks for (mapped
// from the checkpoint when it is stored so); name is printf-style.
static ep_status read_m(ep_model *m, ep_weights *w, ep_mat *dst, int64_t d0, int64_t d1,
                        const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static ep_status read_m(ep_model *m, ep_weights *w, ep_mat *dst, int64_t d0, int64_t d1,
                        const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    ep_status s = ep_weights_read_mat(w, name, d0, d1, m->opts.dtype, dst);
    if (!s) m->weight_bytes += ep_mat_bytes(dst);
    return s;
}

static ep_status read_layer(ep_model *m, ep_weights *w, int l)
{
    const ep_model_cfg *c = m->cfg;
    ep_layer_w *L = &m->L[l];
    int64_t H = c->hidden, nh = c->n_heads;
    ep_status s;
    const char *pre = "model.layers";
    if ((s = read_w(m, w, &L->in_norm, H, -1, "%s.%d.input_layernorm.weight", pre, l)) ||
        (s = read_w(m, w, &L->post_norm, H, -1, "%s.%d.post_attention_layernorm.weight", pre, l)))
        return s;
    if (c->arch == EP_ARCH_QWEN3_MOE) {
        int64_t q = nh * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
        if ((s = read_m(m, w, &L->wq, q, H, "%s.%d.self_attn.q_proj.weight", pre, l)) ||
            (s = read_m(m, w, &L->wk, kv, H, "%s.%d.self_attn.k_proj.weight", pre, l)) ||
            (s = read_m(m, w, &L->wv, kv, H, "%s.%d.self_attn.v_proj.weight", pre, l)) ||
            (s = read_m(m, w, &L->wo, H, q, "%s.%d.self_attn.o_proj.weight", pre, l)))
            return s;
        if (c->qk_norm && ((s = read_w(m, w, &L->q_norm, c->head_dim, -1,
                                       "%s.%d.self_attn.q_norm.weight", pre, l)) ||
                           (s = read_w(m, w, &L->k_norm, c->head_dim, -1,
                                       "%s.%d.self_attn.k_norm.weight", pre, l))))
            return s;
    } else {
        int64_t qk = nh * (c->qk_nope_dim + c->qk_rope_dim);
        if (c->q_lora_rank == 0) {
            if ((s = read_m(m, w, &L->wq, qk, H, "%s.%d.self_attn.q_proj.weight", pre, l)))
                return s;
        } else if ((s = read_m(m, w, &L->wq_a, c->q_lora_rank, H, "%s.%d.self_attn.q_a_proj.weight",
                               pre, l)) ||
                   (s = read_w(m, w, &L->q_a_norm, c->q_lora_rank, -1,
                               "%s.%d.self_attn.q_a_layernorm.weight", pre, l)) ||
                   (s = read_m(m, w, &L->wq_b, qk, c->q_lora_rank,
                               "%s.%d.self_attn.q_b_proj.weight", pre, l))) {
            return s;
        }
        if ((s = read_m(m, w, &L->wkv_a, c->kv_lora_rank + c->qk_rope_dim, H,
                        "%s.%d.self_attn.kv_a_proj_with_mqa.weight", pre, l)) ||
            (s = read_w(m, w, &L->kv_a_norm, c->kv_lora_rank, -1,
                        "%s.%d.self_attn.kv_a_layernorm.weight", pre, l)) ||
            (s = read_w(m, w, &L->wkv_b, nh * (c->qk_nope_dim + c->v_head_dim), c->kv_lora_rank,
                        "%s.%d.self_attn.kv_b_proj.weight", pre, l)) ||
            (s = read_m(m, w, &L->wo, H, nh * c->v_head_dim, "%s.%d.self_attn.o_proj.weight", pre,
                        l)))
            return s;
    }
    if (!ep_model_layer_is_moe(c, l) &&
        ((s = read_m(m, w, &L->w_gate, c->intermediate, H, "%s.%d.mlp.gate_proj.weight", pre, l)) ||
         (s = read_m(m, w, &L->w_up, c->intermediate, H, "%s.%d.mlp.up_proj.weight", pre, l)) ||
         (s = read_m(m, w, &L->w_down, H, c->intermediate, "%s.%d.mlp.down_proj.weight", pre, l))))
        return s;
    return EP_OK;
}

// ---- loading progress (opts.progress, rank 0) ---------------------------------

// A line on stderr while weights are read: bytes, tensors, MB/s. Rewritten in
// place on a terminal (at most every 0.2 s), else one line every 5 s; a last
// line when done. Chained to the ep_weights' previous read hook.
typedef struct {
    double t0_us, last_us;
    bool tty, printed;
    ep_weights_read_fn prev;
    void *prev_user;
    ep_weights_stats base; // reads before this load began
} load_progress;

static void progress_print(const load_progress *lp, const ep_weights_stats *tot, bool done)
{
    double s = (ep_now_us() - lp->t0_us) * 1e-6;
    double mb = (double)(tot->bytes - lp->base.bytes) / 1e6;
    fprintf(stderr, "%sloading weights: %.1f MB, %lld tensors, %.1f s, %.1f MB/s%s",
            lp->tty ? "\r" : "", mb, (long long)(tot->tensors - lp->base.tensors), s,
            s > 0 ? mb / s : 0.0, done || !lp->tty ? "\n" : "");
    fflush(stderr);
}

static void progress_hook(void *user, const char *name, const ep_weights_stats *tot)
{
    load_progress *lp = user;
    if (lp->prev) lp->prev(lp->prev_user, name, tot);
    double now = ep_now_us();
    if (now - lp->last_us < (lp->tty ? 2e5 : 5e6)) return;
    lp->last_us = now;
    lp->printed = true;
    progress_print(lp, tot, false);
}

static void free_layer(ep_layer_w *L)
{
    float *vec[] = {L->in_norm,  L->post_norm, L->q_norm, L->k_norm,
                    L->q_a_norm, L->kv_a_norm, L->wkv_b};
    for (size_t i = 0; i < EP_ARRAY_LEN(vec); i++)
        free(vec[i]);
    ep_mat *mat[] = {&L->wq,   &L->wk,    &L->wv,     &L->wo,   &L->wq_a,
                     &L->wq_b, &L->wkv_a, &L->w_gate, &L->w_up, &L->w_down};
    for (size_t i = 0; i < EP_ARRAY_LEN(mat); i++)
        ep_mat_free(mat[i]);
}

// ---- init / free -------------------------------------------------------------

static ep_status check_opts(const ep_model_cfg *c, const ep_model_opts *o)
{
    if (o->max_ctx < 1 || o->max_ctx > c->max_pos)
        return ep_errorf(EP_ERR_ARG,
                         "model %s: max_ctx %d, expected 1..%d (max_position_embeddings)", c->name,
                         o->max_ctx, c->max_pos);
    if (o->cuda_graph < 0 || o->cuda_graph > 2)
        return ep_errorf(EP_ERR_ARG,
                         "model %s: cuda_graph %d, expected 0 (off), 1 (buckets) or 2 "
                         "(buckets + capture)",
                         c->name, o->cuda_graph);
    if (o->cuda_graph > 0 && o->moe.backend != EP_MOE_BACKEND_CUDA)
        return ep_errorf(EP_ERR_ARG, "model %s: cuda_graph %d needs backend cuda, found %s",
                         c->name, o->cuda_graph, ep_moe_backend_name(o->moe.backend));
    if (o->moe.cap_tokens < 1)
        return ep_errorf(EP_ERR_ARG, "model %s: moe.cap_tokens %d, expected >= 1", c->name,
                         o->moe.cap_tokens);
    if (c->arch == EP_ARCH_QWEN3_MOE &&
        (c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads || c->head_dim < 1))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: num_attention_heads %d must be a multiple of num_key_value_heads %d "
                         "(head_dim %d)",
                         c->source, c->n_heads, c->n_kv_heads, c->head_dim);
    if (c->arch == EP_ARCH_DEEPSEEK_V2 &&
        (c->kv_lora_rank < 1 || c->qk_nope_dim < 1 || c->qk_rope_dim < 1 || c->v_head_dim < 1))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: MLA needs kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim and "
                         "v_head_dim >= 1, found %d, %d, %d, %d",
                         c->source, c->kv_lora_rank, c->qk_nope_dim, c->qk_rope_dim, c->v_head_dim);
    return EP_OK;
}

ep_status ep_model_init(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                        const ep_model_opts *o, ep_model **out)
{
    *out = NULL;
    ep_status s = check_opts(cfg, o);
    if (s) return s;
    ep_model *m = ep_xcalloc(1, sizeof *m);
    m->cfg = cfg;
    m->cl = cl;
    m->opts = *o;
    m->be = o->moe.backend == EP_MOE_BACKEND_CUDA ? &ep_model_backend_cuda_table
                                                  : &ep_model_backend_cpu;
    // The cuda table holds the replicated matrices in BF16 whatever
    // opts.dtype says; the host reads them so, once.
    if (m->be->dtype != EP_DTYPE_AUTO) m->opts.dtype = m->be->dtype;
    const int H = cfg->hidden, nh = cfg->n_heads, cap = o->moe.cap_tokens;
    bool mla = cfg->arch == EP_ARCH_DEEPSEEK_V2;
    load_progress lp = {.t0_us = ep_now_us(), .tty = isatty(STDERR_FILENO) == 1};
    lp.last_us = lp.t0_us;
    bool progress = o->progress && cl->rank == 0;
    if (progress) {
        ep_weights_get_stats(w, &lp.base);
        ep_weights_set_read_hook(w, progress_hook, &lp, &lp.prev, &lp.prev_user);
    }

    // Backend cuda: the whole device footprint against each rank's free
    // memory before the MoE part uploads its experts (every rank alike).
    if ((s = ep_model_dev_check(cfg, cl, o))) goto err;
    if ((s = ep_rope_init(&m->rope, cfg))) goto err;
    if (mla) {
        m->q_dim = nh * (cfg->qk_nope_dim + cfg->qk_rope_dim);
        m->kv_row = cfg->kv_lora_rank + cfg->qk_rope_dim;
        m->attn_out = nh * cfg->v_head_dim;
        m->attn_scale = (float)ep_mla_softmax_scale(cfg);
    } else {
        m->q_dim = nh * cfg->head_dim;
        m->kv_row = 2 * cfg->n_kv_heads * cfg->head_dim;
        m->attn_out = nh * cfg->head_dim;
        m->attn_scale = (float)(1.0 / sqrt((double)cfg->head_dim));
    }

    if ((s = read_m(m, w, &m->embed, cfg->vocab, H, "model.embed_tokens.weight")) ||
        (s = read_w(m, w, &m->final_norm, H, -1, "model.norm.weight")))
        goto err;
    m->embed_bytes = ep_mat_bytes(&m->embed);
    if (cfg->tie_embeddings) {
        m->lm_head = m->embed;
        m->lm_head.owned = NULL;
    } else if ((s = read_m(m, w, &m->lm_head, cfg->vocab, H, "lm_head.weight"))) {
        goto err;
    }
    m->L = ep_xcalloc((size_t)cfg->n_layers, sizeof *m->L);
    for (int l = 0; l < cfg->n_layers; l++)
        if ((s = read_layer(m, w, l))) goto err;

    s = ep_moe_init(cfg, cl, w, &o->moe, &m->moe);
    if (progress) {
        ep_weights_stats tot;
        ep_weights_get_stats(w, &tot);
        ep_weights_set_read_hook(w, lp.prev, lp.prev_user, NULL, NULL);
        progress = false;
        if (!s)
            progress_print(&lp, &tot, true);
        else if (lp.printed && lp.tty)
            fputc('\n', stderr);
    }
    if (s) goto err;
    ep_kv_opts ko = {.n_layers = cfg->n_layers,
                     .row_floats = m->kv_row,
                     .block_tokens = o->kv_block_tokens,
                     .n_blocks = o->kv_blocks,
                     .max_seqs = o->max_seqs,
                     .max_seq_tokens = o->max_ctx,
                     .prefix_caching = o->prefix_caching,
                     // cuda: the rows live in the device pool only
                     .no_rows = !m->be->host_kv_rows};
    if ((s = ep_kv_init(&ko, &m->kv))) goto err;

    size_t capz = (size_t)cap;
    m->xn = ep_xmalloc(capz * H * sizeof(float));
    m->y = ep_xmalloc(capz * H * sizeof(float));
    m->tok_seq = ep_xmalloc(capz * sizeof(int));
    m->tok_domain = ep_xmalloc(capz * sizeof(int));
    m->tok_pos = ep_xmalloc(capz * sizeof(int));
    if ((s = m->be->open(m))) goto err;
    *out = m;
    return EP_OK;
err:
    if (progress) {
        ep_weights_set_read_hook(w, lp.prev, lp.prev_user, NULL, NULL);
        if (lp.printed && lp.tty) fputc('\n', stderr);
    }
    ep_model_free(m);
    return s;
}

void ep_model_free(ep_model *m)
{
    if (!m) return;
    if (m->be) m->be->close(m);
    if (m->L)
        for (int l = 0; l < m->cfg->n_layers; l++)
            free_layer(&m->L[l]);
    free(m->L);
    ep_mat_free(&m->lm_head);
    ep_mat_free(&m->embed);
    free(m->final_norm);
    ep_kv_free(m->kv);
    ep_moe_free(m->moe);
    ep_model_attn_free(m);
    free(m->xn);
    free(m->y);
    free(m->tok_seq);
    free(m->tok_domain);
    free(m->tok_pos);
    free(m->hlogits);
    free(m);
}

ep_moe *ep_model_moe(ep_model *m)
{
    return m->moe;
}

ep_kv *ep_model_kv(ep_model *m)
{
    return m->kv;
}

size_t ep_model_weight_bytes(const ep_model *m)
{
    return m->weight_bytes + ep_moe_expert_bytes(m->moe);
}

ep_status ep_model_dev_mem_get(const ep_model *m, ep_model_dev_mem *out)
{
    ep_status s = m->be->dev_mem(m, out);
    if (!s) out->experts = ep_moe_expert_bytes(m->moe);
    return s;
}

ep_status ep_model_seq_new(ep_model *m, int *seq)
{
    return ep_kv_seq_new(m->kv, seq);
}

void ep_model_seq_free(ep_model *m, int seq)
{
    ep_kv_seq_free(m->kv, seq);
}

int ep_model_seq_len(const ep_model *m, int seq)
{
    return ep_kv_seq_len(m->kv, seq);
}

// ---- one step ----------------------------------------------------------------

// Checks the batch and reserves KV blocks; *T receives the token count.
static ep_status check_batch(ep_model *m, const ep_batch *b, int *T)
{
    const ep_model_cfg *c = m->cfg;
    *T = 0;
    if (b->n_seqs < 0 || (b->n_seqs > 0 && (!b->seq || !b->n_new || !b->tokens)))
        return ep_errorf(EP_ERR_ARG, "model: batch of %d sequences with missing arrays", b->n_seqs);
    int64_t total = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        int s = b->seq[i];
        if (!ep_kv_seq_valid(m->kv, s))
            return ep_errorf(EP_ERR_ARG,
                             "model: batch entry %d names sequence %d, which does "
                             "not exist on this rank",
                             i, s);
        for (int j = 0; j < i; j++)
            if (b->seq[j] == s)
                return ep_errorf(EP_ERR_ARG,
                                 "model: sequence %d appears twice in one batch "
                                 "(entries %d and %d)",
                                 s, j, i);
        if (b->n_new[i] < 1)
            return ep_errorf(EP_ERR_ARG, "model: sequence %d: %d new tokens, expected >= 1", s,
                             b->n_new[i]);
        total += b->n_new[i];
    }
    if (total > m->opts.moe.cap_tokens)
        return ep_errorf(EP_ERR_ARG,
                         "model: %lld tokens in one step, capacity is %d "
                         "(moe.cap_tokens)",
                         (long long)total, m->opts.moe.cap_tokens);
    for (int64_t t = 0; t < total; t++)
        if (b->tokens[t] < 0 || b->tokens[t] >= c->vocab)
            return ep_errorf(EP_ERR_ARG,
                             "model: token %lld of the batch is id %d, expected "
                             "0..%d (vocab_size of %s)",
                             (long long)t, b->tokens[t], c->vocab - 1, c->name);
    for (int i = 0; i < b->n_seqs; i++) {
        ep_status s = ep_kv_reserve(m->kv, b->seq[i], b->n_new[i]);
        if (s) return s;
    }
    *T = (int)total;
    return EP_OK;
}

ep_status ep_model_forward(ep_model *m, const ep_policy *p, const ep_batch *b, float *logits,
                           ep_comm_stats *st)
{
    return ep_model_forward_ex(m, p, b, logits, st, NULL);
}

// Adds one MoE layer's routes to the per-sequence pairs and the expert load.
// Token t of the step belongs to the batch entry whose n_new range holds it.
static void add_route_stats(const ep_model *m, const ep_batch *b, int layer, ep_forward_stats *fs)
{
    const ep_routes *r = ep_moe_last_routes(m->moe);
    if (!r) return;
    if (fs->seq_pairs) {
        int t = 0;
        for (int i = 0; i < b->n_seqs; i++) {
            int end = t + b->n_new[i];
            fs->seq_pairs[i] += r->offsets[end] - r->offsets[t];
            t = end;
        }
    }
    if (fs->seq_hist) {
        const int kb = m->cfg->k_base, E = m->cfg->n_experts;
        int t = 0;
        for (int i = 0; i < b->n_seqs; i++) {
            float *h = fs->seq_hist[i];
            int end = t + b->n_new[i];
            for (int j = t * kb; h && j < end * kb; j++)
                h[(size_t)layer * E + r->base_expert[j]] += 1.0f;
            t = end;
        }
    }
    if (fs->expert_load) {
        int64_t *row = fs->expert_load + (size_t)layer * m->cfg->n_experts;
        for (int j = 0; j < ep_routes_nnz(r); j++)
            row[r->expert[j]]++;
    }
}

// Every layer of one step through the backend's table, the KV rows of the
// new tokens written and committed; *T receives the token count.
static ep_status forward_layers(ep_model *m, const ep_policy *p, const ep_batch *b,
                                ep_comm_stats *st, ep_forward_stats *fs, int *T_out)
{
    const ep_model_cfg *c = m->cfg;
    int T = 0;
    ep_status s = check_batch(m, b, &T);
    // Every rank learns whether any rank rejected its batch, so all return
    // together instead of some waiting in the first MoE layer's all-to-all.
    int64_t bad = s != EP_OK;
    // Polled while serving (cluster/liveness.h): a rank that stops here is named.
    ep_status cs = ep_cluster_watch_allreduce_i64(m->cl, &bad, 1, EP_REDUCE_MAX);
    if (s) return s;
    if (cs) return cs;
    if (bad)
        return ep_errorf(EP_ERR_ARG, "model: another rank rejected its batch; this step was "
                                     "skipped on every rank");

    int t = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        int len0 = ep_kv_seq_len(m->kv, b->seq[i]);
        for (int j = 0; j < b->n_new[i]; j++, t++) {
            m->tok_seq[t] = b->seq[i];
            m->tok_domain[t] = b->pick_domain ? b->pick_domain[i] : -1;
            m->tok_pos[t] = len0 + j;
        }
    }
    if ((s = m->be->begin(m, b, T))) return ep_error_prefix(s, "model: backend %s", m->be->name);
    ep_moe_set_token_domain(m->moe, b->pick_domain ? m->tok_domain : NULL);
    int l = 0;
    for (; l < c->n_layers; l++) {
        if ((s = m->be->attention(m, l, T))) break;
        const bool moe = ep_model_layer_is_moe(c, l);
        ep_comm_stats ls = {0};
        const double t0 = fs && moe ? ep_now_us() : 0;
        if ((s = m->be->ffn(m, p, l, T, &ls))) break;
        if (!moe) continue;
        if (fs) fs->moe_us += ep_now_us() - t0;
        if (st) ep_comm_stats_add(st, &ls);
        if (fs) {
            if (fs->layer) ep_comm_stats_add(&fs->layer[l], &ls);
            add_route_stats(m, b, l, fs);
        }
    }
    ep_moe_set_token_domain(m->moe, NULL);
    if (s) return ep_error_prefix(s, "model layer %d", l);
    for (int i = 0, t0 = 0; i < b->n_seqs; t0 += b->n_new[i], i++)
        ep_kv_commit(m->kv, b->seq[i], b->n_new[i], b->tokens + t0);
    *T_out = T;
    return EP_OK;
}

ep_status ep_model_forward_ex(ep_model *m, const ep_policy *p, const ep_batch *b, float *logits,
                              ep_comm_stats *st, ep_forward_stats *fs)
{
    int T = 0, rows = 0;
    ep_status s = forward_layers(m, p, b, st, fs, &T);
    if (s) return s;
    // Final norm and lm_head on the rows asked for only.
    return m->be->final(m, b, T, logits, &rows);
}

ep_status ep_model_forward_sample(ep_model *m, const ep_policy *p, const ep_batch *b,
                                  ep_sampler *const *samplers, int *ids, float *logits,
                                  ep_comm_stats *st, ep_forward_stats *fs)
{
    int T = 0, rows = 0;
    ep_status s = forward_layers(m, p, b, st, fs, &T);
    if (!s) s = m->be->final(m, b, T, logits, &rows);
    if (!s) s = m->be->sample(m, rows, samplers, logits, ids);
    return s;
}

void ep_model_get_bytes(const ep_model *m, ep_model_bytes *out)
{
    ep_moe_bytes mb;
    ep_moe_get_bytes(m->moe, &mb);
    out->embed = m->embed_bytes;
    // weight_bytes holds the embedding once; lm_head adds it again when tied.
    out->dense = m->weight_bytes - out->embed + (m->cfg->tie_embeddings ? out->embed : 0) +
                 mb.shared + mb.gates;
    out->expert = mb.expert;
    out->experts = ep_moe_expert_bytes(m->moe) - mb.shared;
}
