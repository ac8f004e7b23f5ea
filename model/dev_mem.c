// What the cuda model backend (model/forward_cuda.c) allocates on the
// device, computed from the configuration and options alone: pure C, no
// CUDA, so a CPU-only build (epserve plan) can call it. forward_cuda.c
// counts what it really allocates, part by part, and the tests check the
// two agree (tests/cuda/test_cuda_forward.c); keep both in step.
#include "model/model.h"

#include "model/rope.h"

#include <string.h>

// The shapes every part is sized from (as ep_model_init derives them).
typedef struct {
    int64_t H, V, nh, q_dim, kvw, attn_out, inter, q_lora, R, rope, nope, vd, hd, nkv;
    bool mla, dense;
} shapes;

static void get_shapes(const ep_model_cfg *c, shapes *s)
{
    memset(s, 0, sizeof *s);
    s->H = c->hidden;
    s->V = c->vocab;
    s->nh = c->n_heads;
    s->mla = c->arch == EP_ARCH_DEEPSEEK_V2;
    s->inter = c->intermediate;
    s->dense = c->first_k_dense > 0 || c->n_experts == 0;
    if (s->mla) {
        s->nope = c->qk_nope_dim;
        s->rope = c->qk_rope_dim;
        s->vd = c->v_head_dim;
        s->R = c->kv_lora_rank;
        s->q_lora = c->q_lora_rank;
        s->q_dim = s->nh * (s->nope + s->rope);
        s->kvw = s->R + s->rope; // the latent row: wkv_a's output and the cache row
        s->attn_out = s->nh * s->vd;
    } else {
        s->hd = c->head_dim;
        s->nkv = c->n_kv_heads;
        s->q_dim = s->nh * s->hd;
        s->kvw = s->nkv * s->hd;
        s->attn_out = s->nh * s->hd;
    }
}

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

void ep_model_dev_mem_plan(const ep_model_cfg *c, const ep_model_opts *o, ep_model_dev_mem *out)
{
    memset(out, 0, sizeof *out);
    shapes s;
    get_shapes(c, &s);
    const int64_t H = s.H, cap = o->moe.cap_tokens;
    // BF16 matrices: the embedding, lm_head unless tied, per layer the
    // attention (Qwen3 q/k/v/o; MLA q or q_a/q_b, kv_a, kv_b, o) and the
    // dense MLP of the dense layers.
    int64_t bf = s.V * H * (c->tie_embeddings ? 1 : 2);
    // fp32 vectors: the final norm, per layer the two norms (and q/k norm,
    // q_a / kv_a norm), the rotary table.
    int64_t f32 = H;
    for (int l = 0; l < c->n_layers; l++) {
        f32 += 2 * H;
        if (s.mla) {
            bf += s.q_lora > 0 ? s.q_lora * H + s.q_dim * s.q_lora : s.q_dim * H;
            bf += s.kvw * H + s.nh * (s.nope + s.vd) * s.R + H * s.attn_out;
            f32 += s.R + (s.q_lora > 0 ? s.q_lora : 0);
        } else {
            bf += s.q_dim * H + 2 * s.kvw * H + H * s.attn_out;
            if (c->qk_norm) f32 += 2 * s.hd;
        }
        if (!ep_model_layer_is_moe(c, l)) bf += 3 * s.inter * H;
    }
    ep_rope r;
    if (ep_rope_init(&r, c) == EP_OK) f32 += r.dim / 2;
    out->weights_bf16 = (uint64_t)bf * 2;
    out->weights_f32 = (uint64_t)f32 * 4;

    // KV: the pool in bf16 ([blocks][layers][block_tokens][row]) and the
    // step's block table ([max_seqs][blocks per sequence] ints).
    const int64_t row = s.mla ? s.kvw : 2 * s.kvw;
    const int64_t per_seq = (o->max_ctx + o->kv_block_tokens - 1) / o->kv_block_tokens;
    // With cuda_graph one more block and table row: the padding rows' scratch sequence.
    const int64_t extra = o->cuda_graph > 0;
    out->kv = (uint64_t)(o->kv_blocks + extra) * c->n_layers * o->kv_block_tokens * row * 2 +
              (uint64_t)(o->max_seqs + extra) * per_seq * 4;

    // Workspace, all for cap tokens: fp32 x, xn, y, q, k (+ v for GQA), the
    // attention output, MLA's q_a, absorbed q and output latent, the dense
    // MLP's gate and up, the logits; the BF16 copy of a product's input (the
    // widest K any product or MLA batched GEMM reads); ids, positions and
    // sequence slots in, sampled ids and sampling rows (24 bytes) out.
    int64_t ws = 3 * H + s.q_dim + s.kvw + s.attn_out + s.V;
    int64_t kmax = max64(max64(H, s.attn_out), s.q_dim);
    if (s.mla) {
        ws += s.nh * (s.R + s.rope) + s.nh * s.R + s.q_lora;
        kmax = max64(max64(kmax, s.nh * s.R), s.q_lora);
    } else {
        ws += s.kvw;
    }
    if (s.dense) {
        ws += 2 * s.inter;
        kmax = max64(kmax, s.inter);
    }
    out->workspace = (uint64_t)(cap * ws * 4 + cap * kmax * 2 + cap * 4 * 4 + cap * 24);
    // cuda_graph 2: cuBLAS's workspace for capture (forward_cuda.c's EP_CUDA_GRAPH_BLAS_WS).
    if (o->cuda_graph == 2) out->workspace += (uint64_t)32 << 20;
    out->total = out->weights_bf16 + out->weights_f32 + out->kv + out->workspace;
}

int ep_model_dev_n_local(const ep_model_cfg *cfg, const ep_moe_opts *o, int world)
{
    const int E = cfg->n_experts, W = world > 0 ? world : 1;
    return E > 0 ? (E + EP_MAX(o->redundant_experts, 0) + W - 1) / W : 0;
}

void ep_model_dev_footprint(const ep_model_cfg *cfg, const ep_model_opts *o, int world,
                            ep_model_dev_mem *model, ep_moe_dev_mem *moe)
{
    ep_model_dev_mem_plan(cfg, o, model);
    ep_moe_dev_mem_predict(cfg, &o->moe, world, ep_model_dev_n_local(cfg, &o->moe, world), moe);
    // The MoE part's experts are in moe->total; the model's experts field
    // restates them for the reader (not in model->total).
    model->experts = moe->experts;
}
