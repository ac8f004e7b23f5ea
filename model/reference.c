// The reference forward of one sequence: plain C loops with double
// accumulation, no BLAS, no KV cache, every position recomputed; MLA keys and
// values expanded from the latent per head and RoPE'd the way the HF code
// writes it (de-interleave, then rotate-half); MoE layers by
// ep_moe_reference. Shares only the weights and the RoPE frequency table with
// the fast path (model/model.c, model/attn.c).
#include "model/model_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// out[r, o] = sum_i x[r, i] * w[o, i], w's values as stored (BF16 widened
// exactly) against fp32 x: the reference does not round activations.
static void ref_linear(const float *x, const ep_mat *w, int rows, int n_out, int n_in, float *out)
{
    EP_ASSERT(w->rows == n_out && w->cols == n_in);
    float *wr = ep_xmalloc((size_t)n_in * sizeof(float));
    for (int o = 0; o < n_out; o++) {
        ep_mat_row_f32(w, o, wr);
        for (int r = 0; r < rows; r++) {
            double s = 0;
            for (int i = 0; i < n_in; i++)
                s += (double)x[(size_t)r * n_in + i] * wr[i];
            out[(size_t)r * n_out + o] = (float)s;
        }
    }
    free(wr);
}

static void ref_rmsnorm(const float *x, const float *w, int n, float eps, float *out)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    double inv = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        out[i] = (float)(x[i] * inv * w[i]);
}

// rotate_half RoPE (NeoX): the pairs are (i, i + dim/2).
static void ref_rope_half(const ep_rope *r, int pos, float *x)
{
    int half = r->dim / 2;
    float tmp[EP_ROPE_MAX_DIM];
    for (int i = 0; i < r->dim; i++) {
        int fi = i % half;
        float ang = (float)pos * r->inv_freq[fi];
        double co = cos((double)ang) * r->cs_scale, si = sin((double)ang) * r->cs_scale;
        double rot = i < half ? -x[i + half] : x[i - half]; // rotate_half(x)[i]
        tmp[i] = (float)(x[i] * co + rot * si);
    }
    memcpy(x, tmp, (size_t)r->dim * sizeof(float));
}

// DeepSeek-V2 apply_rotary_pos_emb: view(d/2, 2).transpose -> [evens | odds],
// then rotate_half. The result stays in that permuted order (q and k alike).
static void ref_rope_deepseek(const ep_rope *r, int pos, float *x)
{
    int half = r->dim / 2;
    float perm[EP_ROPE_MAX_DIM];
    for (int i = 0; i < half; i++) {
        perm[i] = x[2 * i];
        perm[half + i] = x[2 * i + 1];
    }
    memcpy(x, perm, (size_t)r->dim * sizeof(float));
    ref_rope_half(r, pos, x);
}

// Causal softmax attention of one head: out[t] = sum_{s<=t} p_ts v[s].
static void ref_head(const float *q, int q_stride, const float *k, int k_stride, const float *v,
                     int v_stride, int n, int dk, int dv, double scale, float *out, int o_stride)
{
    double *p = ep_xmalloc((size_t)n * sizeof(double));
    for (int t = 0; t < n; t++) {
        double mx = -INFINITY, sum = 0;
        for (int s = 0; s <= t; s++) {
            double d = 0;
            for (int i = 0; i < dk; i++)
                d += (double)q[(size_t)t * q_stride + i] * k[(size_t)s * k_stride + i];
            p[s] = d * scale;
            if (p[s] > mx) mx = p[s];
        }
        for (int s = 0; s <= t; s++)
            sum += (p[s] = exp(p[s] - mx));
        for (int j = 0; j < dv; j++) {
            double o = 0;
            for (int s = 0; s <= t; s++)
                o += p[s] * v[(size_t)s * v_stride + j];
            out[(size_t)t * o_stride + j] = (float)(o / sum);
        }
    }
    free(p);
}

static void ref_qwen3(ep_model *m, int l, const float *xn, int n, float *att)
{
    const ep_model_cfg *c = m->cfg;
    const ep_layer_w *L = &m->L[l];
    const int H = c->hidden, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    float *q = ep_xmalloc((size_t)n * nh * hd * sizeof(float));
    float *k = ep_xmalloc((size_t)n * nkv * hd * sizeof(float));
    float *v = ep_xmalloc((size_t)n * nkv * hd * sizeof(float));
    ref_linear(xn, &L->wq, n, nh * hd, H, q);
    ref_linear(xn, &L->wk, n, nkv * hd, H, k);
    ref_linear(xn, &L->wv, n, nkv * hd, H, v);
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < nh; h++) {
            float *qh = q + ((size_t)t * nh + h) * hd;
            if (L->q_norm) ref_rmsnorm(qh, L->q_norm, hd, c->rms_eps, qh);
            ref_rope_half(&m->rope, t, qh);
        }
        for (int h = 0; h < nkv; h++) {
            float *kh = k + ((size_t)t * nkv + h) * hd;
            if (L->k_norm) ref_rmsnorm(kh, L->k_norm, hd, c->rms_eps, kh);
            ref_rope_half(&m->rope, t, kh);
        }
    }
    for (int h = 0; h < nh; h++) {
        int kh = h / (nh / nkv);
        ref_head(q + (size_t)h * hd, nh * hd, k + (size_t)kh * hd, nkv * hd, v + (size_t)kh * hd,
                 nkv * hd, n, hd, hd, 1.0 / sqrt((double)hd), att + (size_t)h * hd, nh * hd);
    }
    free(q);
    free(k);
    free(v);
}

static void ref_mla(ep_model *m, int l, const float *xn, int n, float *att)
{
    const ep_model_cfg *c = m->cfg;
    const ep_layer_w *L = &m->L[l];
    const int H = c->hidden, nh = c->n_heads, R = c->kv_lora_rank;
    const int nope = c->qk_nope_dim, rope = c->qk_rope_dim, vd = c->v_head_dim;
    const int qhd = nope + rope, kvb = nope + vd;
    float *q = ep_xmalloc((size_t)n * nh * qhd * sizeof(float));
    if (c->q_lora_rank > 0) {
        float *qa = ep_xmalloc((size_t)n * c->q_lora_rank * sizeof(float));
        ref_linear(xn, &L->wq_a, n, c->q_lora_rank, H, qa);
        for (int t = 0; t < n; t++)
            ref_rmsnorm(qa + (size_t)t * c->q_lora_rank, L->q_a_norm, c->q_lora_rank, c->rms_eps,
                        qa + (size_t)t * c->q_lora_rank);
        ref_linear(qa, &L->wq_b, n, nh * qhd, c->q_lora_rank, q);
        free(qa);
    } else {
        ref_linear(xn, &L->wq, n, nh * qhd, H, q);
    }
    float *ckv = ep_xmalloc((size_t)n * (R + rope) * sizeof(float));
    float *lat = ep_xmalloc((size_t)n * R * sizeof(float));
    float *kv = ep_xmalloc((size_t)n * nh * kvb * sizeof(float));
    ref_linear(xn, &L->wkv_a, n, R + rope, H, ckv);
    for (int t = 0; t < n; t++)
        ref_rmsnorm(ckv + (size_t)t * (R + rope), L->kv_a_norm, R, c->rms_eps, lat + (size_t)t * R);
    const ep_mat wkv_b = {.dtype = EP_DTYPE_F32, .rows = nh * kvb, .cols = R, .data = L->wkv_b};
    ref_linear(lat, &wkv_b, n, nh * kvb, R, kv);
    // Full keys [n, nh, nope + rope] (k_pe shared by every head) and values.
    float *key = ep_xmalloc((size_t)n * nh * qhd * sizeof(float));
    for (int t = 0; t < n; t++) {
        float kpe[EP_ROPE_MAX_DIM];
        memcpy(kpe, ckv + (size_t)t * (R + rope) + R, (size_t)rope * sizeof(float));
        ref_rope_deepseek(&m->rope, t, kpe);
        for (int h = 0; h < nh; h++) {
            float *kh = key + ((size_t)t * nh + h) * qhd;
            memcpy(kh, kv + ((size_t)t * nh + h) * kvb, (size_t)nope * sizeof(float));
            memcpy(kh + nope, kpe, (size_t)rope * sizeof(float));
            ref_rope_deepseek(&m->rope, t, q + ((size_t)t * nh + h) * qhd + nope);
        }
    }
    double scale = ep_mla_softmax_scale(c);
    for (int h = 0; h < nh; h++)
        ref_head(q + (size_t)h * qhd, nh * qhd, key + (size_t)h * qhd, nh * qhd,
                 kv + (size_t)h * kvb + nope, nh * kvb, n, qhd, vd, scale, att + (size_t)h * vd,
                 nh * vd);
    free(q);
    free(ckv);
    free(lat);
    free(kv);
    free(key);
}

ep_status ep_model_reference(ep_model *m, const ep_policy *p, const int *tokens, int n,
                             float *logits)
{
    const ep_model_cfg *c = m->cfg;
    const int H = c->hidden;
    if (n < 1 || n > m->opts.moe.cap_tokens || n > m->opts.max_ctx)
        return ep_errorf(EP_ERR_ARG,
                         "model reference: %d tokens, expected 1..%d (cap_tokens, "
                         "max_ctx)",
                         n, EP_MIN(m->opts.moe.cap_tokens, m->opts.max_ctx));
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab)
            return ep_errorf(EP_ERR_ARG,
                             "model reference: token %d is id %d, expected 0..%d "
                             "(vocab_size of %s)",
                             t, tokens[t], c->vocab - 1, c->name);
    size_t nh_ = (size_t)n * H;
    float *x = ep_xmalloc(nh_ * sizeof(float)), *xn = ep_xmalloc(nh_ * sizeof(float));
    float *y = ep_xmalloc(nh_ * sizeof(float));
    float *att = ep_xmalloc((size_t)n * m->attn_out * sizeof(float));
    ep_status s = EP_OK;
    for (int t = 0; t < n; t++)
        ep_mat_row_f32(&m->embed, tokens[t], x + (size_t)t * H);
    for (int l = 0; l < c->n_layers && !s; l++) {
        const ep_layer_w *L = &m->L[l];
        for (int t = 0; t < n; t++)
            ref_rmsnorm(x + (size_t)t * H, L->in_norm, H, c->rms_eps, xn + (size_t)t * H);
        if (c->arch == EP_ARCH_DEEPSEEK_V2)
            ref_mla(m, l, xn, n, att);
        else
            ref_qwen3(m, l, xn, n, att);
        ref_linear(att, &L->wo, n, H, m->attn_out, y);
        for (size_t i = 0; i < nh_; i++)
            x[i] += y[i];
        for (int t = 0; t < n; t++)
            ref_rmsnorm(x + (size_t)t * H, L->post_norm, H, c->rms_eps, xn + (size_t)t * H);
        if (ep_model_layer_is_moe(c, l)) {
            if ((s = ep_moe_reference(m->moe, p, l, xn, n, y)))
                s = ep_error_prefix(s, "model reference layer %d", l);
        } else {
            const int I = c->intermediate;
            float *g = ep_xmalloc((size_t)n * I * sizeof(float));
            float *u = ep_xmalloc((size_t)n * I * sizeof(float));
            ref_linear(xn, &L->w_gate, n, I, H, g);
            ref_linear(xn, &L->w_up, n, I, H, u);
            for (size_t i = 0; i < (size_t)n * I; i++)
                g[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
            ref_linear(g, &L->w_down, n, H, I, y);
            free(g);
            free(u);
        }
        if (!s)
            for (size_t i = 0; i < nh_; i++)
                x[i] += y[i];
    }
    if (!s) {
        for (int t = 0; t < n; t++)
            ref_rmsnorm(x + (size_t)t * H, m->final_norm, H, c->rms_eps, xn + (size_t)t * H);
        ref_linear(xn, &m->lm_head, n, c->vocab, H, logits);
    }
    free(x);
    free(xn);
    free(y);
    free(att);
    return s;
}
