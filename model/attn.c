// Attention of one step on the paged KV cache, CPU (projections through
// ep_dense_mm, the rest plain C): Qwen3 GQA with per-head q/k RMSNorm
// before NeoX RoPE; DeepSeek-V2 MLA on the latent cache with the absorbed
// form (q_nope folded into W_UK, the output latent unfolded with W_UV), so
// full keys and values are never materialised. The reference that expands
// them instead is model/reference.c.
#include "model/model_impl.h"

#include <math.h>
#include <string.h>

static float dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

// In-place softmax of sc[0..n); returns nothing, sums in fp32 like HF's
// softmax(dtype=float32).
static void softmax(float *sc, int n)
{
    float mx = sc[0];
    for (int i = 1; i < n; i++)
        mx = sc[i] > mx ? sc[i] : mx;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        sc[i] = expf(sc[i] - mx);
        sum += sc[i];
    }
    float inv = 1.0f / sum;
    for (int i = 0; i < n; i++)
        sc[i] *= inv;
}

// ---- Qwen3 GQA -----------------------------------------------------------------
// Cache row: [k of kv heads 0..nkv) | v of kv heads 0..nkv)], head_dim each.

static void qwen3_attention(ep_model *m, int l, int T)
{
    const ep_model_cfg *c = m->cfg;
    const ep_layer_w *L = &m->L[l];
    const int H = c->hidden, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    const int kvw = nkv * hd, group = nh / nkv;
    ep_dense_mm(T, m->xn, H, &L->wq, 0.0f, m->q, nh * hd);
    ep_dense_mm(T, m->xn, H, &L->wk, 0.0f, m->k, kvw);
    ep_dense_mm(T, m->xn, H, &L->wv, 0.0f, m->v, kvw);

    // Norm + RoPE of the new tokens; their k and v go to the cache first, so
    // a token of a prefill chunk sees the chunk's earlier tokens.
    for (int t = 0; t < T; t++) {
        float *q = m->q + (size_t)t * nh * hd, *k = m->k + (size_t)t * kvw;
        if (L->q_norm) {
            ep_model_rmsnorm(q, L->q_norm, nh, hd, c->rms_eps, q);
            ep_model_rmsnorm(k, L->k_norm, nkv, hd, c->rms_eps, k);
        }
        ep_rope_table(&m->rope, m->tok_pos[t], m->cs);
        for (int h = 0; h < nh; h++)
            ep_rope_rotate(&m->rope, m->cs, q + (size_t)h * hd);
        for (int h = 0; h < nkv; h++)
            ep_rope_rotate(&m->rope, m->cs, k + (size_t)h * hd);
        float *row = ep_kv_row(m->kv, m->tok_seq[t], l, m->tok_pos[t]);
        memcpy(row, k, (size_t)kvw * sizeof(float));
        memcpy(row + kvw, m->v + (size_t)t * kvw, (size_t)kvw * sizeof(float));
    }

    for (int t = 0; t < T; t++) {
        int seq = m->tok_seq[t], n = m->tok_pos[t] + 1;
        for (int h = 0; h < nh; h++) {
            const float *q = m->q + (size_t)t * nh * hd + (size_t)h * hd;
            int kh = h / group;
            for (int s = 0; s < n; s++)
                m->scores[s] = dot(q, ep_kv_row(m->kv, seq, l, s) + kh * hd, hd) * m->attn_scale;
            softmax(m->scores, n);
            float *o = m->att + (size_t)t * m->attn_out + (size_t)h * hd;
            memset(o, 0, (size_t)hd * sizeof(float));
            for (int s = 0; s < n; s++) {
                const float *v = ep_kv_row(m->kv, seq, l, s) + kvw + kh * hd;
                float p = m->scores[s];
                for (int i = 0; i < hd; i++)
                    o[i] += p * v[i];
            }
        }
    }
    ep_dense_mm(T, m->att, nh * hd, &L->wo, 0.0f, m->y, H);
}

// ---- DeepSeek-V2 MLA -------------------------------------------------------------
// Cache row: [kv_a_layernorm(latent) (kv_lora) | roped k_pe (rope)]: the
// compressed form, (kv_lora + rope) floats per token instead of
// nh * (nope + rope + v).

static void mla_attention(ep_model *m, int l, int T)
{
    const ep_model_cfg *c = m->cfg;
    const ep_layer_w *L = &m->L[l];
    const int H = c->hidden, nh = c->n_heads, R = c->kv_lora_rank;
    const int nope = c->qk_nope_dim, rope = c->qk_rope_dim, vd = c->v_head_dim;
    const int qhd = nope + rope, kvb = nope + vd, row_w = R + rope;

    if (c->q_lora_rank > 0) {
        ep_dense_mm(T, m->xn, H, &L->wq_a, 0.0f, m->qa, c->q_lora_rank);
        ep_model_rmsnorm(m->qa, L->q_a_norm, T, c->q_lora_rank, c->rms_eps, m->qa);
        ep_dense_mm(T, m->qa, c->q_lora_rank, &L->wq_b, 0.0f, m->q, m->q_dim);
    } else {
        ep_dense_mm(T, m->xn, H, &L->wq, 0.0f, m->q, m->q_dim);
    }
    ep_dense_mm(T, m->xn, H, &L->wkv_a, 0.0f, m->k, row_w);

    for (int t = 0; t < T; t++) {
        const float *ckv = m->k + (size_t)t * row_w;
        float *row = ep_kv_row(m->kv, m->tok_seq[t], l, m->tok_pos[t]);
        ep_model_rmsnorm(ckv, L->kv_a_norm, 1, R, c->rms_eps, row);
        memcpy(row + R, ckv + R, (size_t)rope * sizeof(float));
        ep_rope_table(&m->rope, m->tok_pos[t], m->cs);
        ep_rope_rotate(&m->rope, m->cs, row + R);
        float *q = m->q + (size_t)t * m->q_dim;
        for (int h = 0; h < nh; h++)
            ep_rope_rotate(&m->rope, m->cs, q + (size_t)h * qhd + nope);
    }

    float *qlat = m->lat, *olat = m->lat + R;
    for (int t = 0; t < T; t++) {
        int seq = m->tok_seq[t], n = m->tok_pos[t] + 1;
        for (int h = 0; h < nh; h++) {
            const float *q = m->q + (size_t)t * m->q_dim + (size_t)h * qhd;
            const float *wuk = L->wkv_b + (size_t)h * kvb * R; // [nope, R]
            const float *wuv = wuk + (size_t)nope * R;         // [vd, R]
            // q_nope . (W_UK latent) = (W_UK^T q_nope) . latent
            memset(qlat, 0, (size_t)R * sizeof(float));
            for (int d = 0; d < nope; d++) {
                float qd = q[d];
                const float *w = wuk + (size_t)d * R;
                for (int r = 0; r < R; r++)
                    qlat[r] += qd * w[r];
            }
            for (int s = 0; s < n; s++) {
                const float *row = ep_kv_row(m->kv, seq, l, s);
                m->scores[s] = (dot(qlat, row, R) + dot(q + nope, row + R, rope)) * m->attn_scale;
            }
            softmax(m->scores, n);
            memset(olat, 0, (size_t)R * sizeof(float));
            for (int s = 0; s < n; s++) {
                const float *row = ep_kv_row(m->kv, seq, l, s);
                float p = m->scores[s];
                for (int r = 0; r < R; r++)
                    olat[r] += p * row[r];
            }
            // sum_s p_s (W_UV latent_s) = W_UV (sum_s p_s latent_s)
            float *o = m->att + (size_t)t * m->attn_out + (size_t)h * vd;
            for (int j = 0; j < vd; j++)
                o[j] = dot(wuv + (size_t)j * R, olat, R);
        }
    }
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
