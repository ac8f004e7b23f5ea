// The model backend cpu (model/backend.h): the host forward, fp32
// activations in the model's scratch, replicated weights as opts.dtype
// stores them, KV rows in the host pool (ep_kv), attention in model/attn.c,
// sampling with ep_sampler.
#include "model/backend.h"

#include <stdlib.h>
#include <string.h>

// The host scratch of a step besides xn and y (ep_model_init's), for cap
// tokens.
static ep_status cpu_open(ep_model *m)
{
    const ep_model_cfg *c = m->cfg;
    const size_t cap = (size_t)m->opts.moe.cap_tokens, F = sizeof(float);
    const bool mla = c->arch == EP_ARCH_DEEPSEEK_V2;
    m->x = ep_xmalloc(cap * c->hidden * F);
    m->q = ep_xmalloc(cap * m->q_dim * F);
    const int kw = mla ? m->kv_row : c->n_kv_heads * c->head_dim;
    m->k = ep_xmalloc(cap * kw * F);
    if (!mla) m->v = ep_xmalloc(cap * kw * F);
    if (mla && c->q_lora_rank > 0) m->qa = ep_xmalloc(cap * c->q_lora_rank * F);
    m->att = ep_xmalloc(cap * m->attn_out * F);
    if (c->first_k_dense > 0 || c->n_experts == 0) {
        m->mg = ep_xmalloc(cap * c->intermediate * F);
        m->mu = ep_xmalloc(cap * c->intermediate * F);
    }
    return EP_OK;
}

static void cpu_close(ep_model *m)
{
    float **bufs[] = {&m->x, &m->q, &m->k, &m->v, &m->qa, &m->att, &m->mg, &m->mu};
    for (size_t i = 0; i < EP_ARRAY_LEN(bufs); i++) {
        free(*bufs[i]);
        *bufs[i] = NULL;
    }
}

static void add_rows(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

static ep_status cpu_begin(ep_model *m, const ep_batch *b, int T)
{
    const int H = m->cfg->hidden;
    for (int t = 0; t < T; t++)
        ep_mat_row_f32(&m->embed, b->tokens[t], m->x + (size_t)t * H);
    return EP_OK;
}

static ep_status cpu_attention(ep_model *m, int l, int T)
{
    const ep_model_cfg *c = m->cfg;
    ep_model_rmsnorm(m->x, m->L[l].in_norm, T, c->hidden, c->rms_eps, m->xn);
    ep_model_attention(m, l, T);
    add_rows(m->x, m->y, (size_t)T * c->hidden);
    return EP_OK;
}

static void dense_mlp(ep_model *m, int l, int T)
{
    const ep_model_cfg *c = m->cfg;
    const ep_layer_w *L = &m->L[l];
    ep_dense_mm(T, m->xn, c->hidden, &L->w_gate, 0.0f, m->mg, c->intermediate);
    ep_dense_mm(T, m->xn, c->hidden, &L->w_up, 0.0f, m->mu, c->intermediate);
    ep_dense_swiglu((int64_t)T * c->intermediate, m->mg, m->mu, m->mg);
    ep_dense_mm(T, m->mg, c->intermediate, &L->w_down, 0.0f, m->y, c->hidden);
}

static ep_status cpu_ffn(ep_model *m, const ep_policy *p, int l, int T, ep_comm_stats *ls)
{
    const ep_model_cfg *c = m->cfg;
    ep_model_rmsnorm(m->x, m->L[l].post_norm, T, c->hidden, c->rms_eps, m->xn);
    if (ep_model_layer_is_moe(c, l)) {
        ep_status s = ep_moe_forward(m->moe, p, l, m->xn, T, m->y, ls, NULL);
        if (s) return s;
    } else {
        dense_mlp(m, l, T);
    }
    add_rows(m->x, m->y, (size_t)T * c->hidden);
    return EP_OK;
}

// The logits buffer of `rows` rows: the caller's, or the model's own.
float *ep_model_host_logits(ep_model *m, float *logits, int rows)
{
    if (logits) return logits;
    if (m->hlogits_rows < rows) {
        free(m->hlogits);
        m->hlogits = ep_xmalloc((size_t)rows * m->cfg->vocab * sizeof(float));
        m->hlogits_rows = rows;
    }
    return m->hlogits;
}

static ep_status cpu_final(ep_model *m, const ep_batch *b, int T, float *logits, int *rows_out)
{
    const ep_model_cfg *c = m->cfg;
    const int H = c->hidden;
    int rows = 0;
    if (b->all_logits) {
        rows = T;
        ep_model_rmsnorm(m->x, m->final_norm, T, H, c->rms_eps, m->xn);
    } else {
        int end = 0;
        for (int i = 0; i < b->n_seqs; i++, rows++) {
            end += b->n_new[i];
            ep_model_rmsnorm(m->x + (size_t)(end - 1) * H, m->final_norm, 1, H, c->rms_eps,
                             m->xn + (size_t)rows * H);
        }
    }
    ep_dense_mm(rows, m->xn, H, &m->lm_head, 0.0f, ep_model_host_logits(m, logits, rows), c->vocab);
    *rows_out = rows;
    return EP_OK;
}

void ep_model_sample_host(int rows, int vocab, ep_sampler *const *samplers, const float *logits,
                          int *ids)
{
    for (int r = 0; r < rows; r++)
        ids[r] = samplers[r] ? ep_sampler_sample(samplers[r], logits + (size_t)r * vocab) : -1;
}

static ep_status cpu_sample(ep_model *m, int rows, ep_sampler *const *samplers,
                            const float *host_logits, int *ids)
{
    ep_model_sample_host(rows, m->cfg->vocab, samplers, host_logits ? host_logits : m->hlogits,
                         ids);
    return EP_OK;
}

static ep_status cpu_dev_mem(const ep_model *m, ep_model_dev_mem *out)
{
    (void)m;
    memset(out, 0, sizeof *out);
    return ep_errorf(EP_ERR_UNSUPPORTED, "model: backend cpu keeps nothing on a device; expected "
                                         "backend cuda");
}

const ep_model_backend_i ep_model_backend_cpu = {
    .name = "cpu",
    .built = true,
    .dtype = EP_DTYPE_AUTO,
    .host_kv_rows = true,
    .open = cpu_open,
    .close = cpu_close,
    .begin = cpu_begin,
    .attention = cpu_attention,
    .ffn = cpu_ffn,
    .final = cpu_final,
    .sample = cpu_sample,
    .dev_mem = cpu_dev_mem,
};
