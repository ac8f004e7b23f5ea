// The simulator's cost model: alpha-beta time of one all-to-all phase per
// rank and link class, roofline times of the routed experts, of the
// replicated layer parts and of the lm-head; parameter, KV-cache and memory
// sizes (`epserve plan`). Pure arithmetic on the cluster preset and the model
// config; no routing and no dispatch planning here.
#include "sim/sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EP_SIM_BF16 2.0 // bytes per weight / activation / KV value

static double link_us(double lat_us, double bytes, double GBps, double eff)
{
    if (bytes <= 0) return 0.0;
    return lat_us + bytes / (GBps * eff * 1e3); // GB/s * 1e3 = bytes per us
}

double ep_sim_a2a_rank_us(const ep_sim_cluster *c, const ep_sim_traffic *t)
{
    double intra = EP_MAX(t->send_intra, t->recv_intra);
    double inter = EP_MAX(t->send_inter, t->recv_inter);
    double ti = link_us(c->nvlink_latency_us, intra, c->nvlink_GBps, c->nvlink_eff);
    double te = link_us(c->inter_latency_us, inter, c->inter_GBps, c->inter_eff);
    return EP_MAX(ti, te);
}

double ep_sim_hier_stage_us(const ep_sim_cluster *c, const ep_sim_traffic *t, ep_sim_stage stage)
{
    // Achieved rates: efficiency 1; 0 GBps falls back on the flat link's
    // achievable rate (GBps x efficiency).
    if (stage == EP_SIM_STAGE_RDMA) {
        double bw = c->hier_rdma_GBps > 0 ? c->hier_rdma_GBps : c->inter_GBps * c->inter_eff;
        return link_us(c->hier_rdma_latency_us, EP_MAX(t->send_inter, t->recv_inter), bw, 1.0);
    }
    double bw = c->hier_nvlink_GBps > 0 ? c->hier_nvlink_GBps : c->nvlink_GBps * c->nvlink_eff;
    return link_us(c->hier_nvlink_latency_us, EP_MAX(t->send_intra, t->recv_intra), bw, 1.0);
}

// max(compute, memory) in us.
static double roofline_us(const ep_sim_cluster *c, double flops, double bytes)
{
    double tc = flops / (c->bf16_tflops * c->gemm_eff * 1e6); // TFLOP/s * 1e6 = FLOP per us
    double tm = bytes / (c->hbm_GBps * c->hbm_eff * 1e3);
    return EP_MAX(tc, tm);
}

double ep_sim_experts_us(const ep_sim_cluster *c, int hidden, int moe_inter, double pairs,
                         int active_experts)
{
    if (pairs <= 0 || active_experts <= 0) return 0.0;
    const double HI = (double)hidden * (double)moe_inter;
    double flops = 6.0 * HI * pairs;
    // weights of each active expert once; per pair: x in, gate/up out, h in, y out
    double bytes = EP_SIM_BF16 *
                   (3.0 * HI * active_experts + pairs * (2.0 * hidden + 3.0 * (double)moe_inter));
    return roofline_us(c, flops, bytes);
}

// ---- parameters ------------------------------------------------------------------

typedef struct {
    ep_sim_params *p;
    int n_layers, first_moe;
} count_ctx;

static int count_tensor(void *user, const char *name, int ndim, const int64_t *shape)
{
    count_ctx *cc = user;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    ep_sim_params *p = cc->p;
    p->total += n;
    int layer = -1, off = 0;
    if (sscanf(name, "model.layers.%d.%n", &layer, &off) == 1 && off > 0 && layer >= 0 &&
        layer < cc->n_layers) {
        const char *rest = name + off;
        if (!strncmp(rest, "mlp.experts.", 12)) {
            int e = -1;
            // one expert's size: expert 0 of the first MoE layer
            if (sscanf(rest, "mlp.experts.%d.", &e) == 1 && e == 0 && layer == cc->first_moe)
                p->expert += n;
            return 0;
        }
        p->layer_dense[layer] += n;
        if (!strncmp(rest, "self_attn.", 10) || !strncmp(rest, "input_layernorm", 15))
            p->layer_attn[layer] += n;
        return 0;
    }
    if (!strcmp(name, "model.embed_tokens.weight"))
        p->embed += n;
    else
        p->head += n; // lm_head.weight, model.norm.weight
    return 0;
}

void ep_sim_params_count(const ep_model_cfg *cfg, ep_sim_params *p)
{
    memset(p, 0, sizeof *p);
    p->layer_dense = ep_xcalloc((size_t)cfg->n_layers, sizeof *p->layer_dense);
    p->layer_attn = ep_xcalloc((size_t)cfg->n_layers, sizeof *p->layer_attn);
    count_ctx cc = {p, cfg->n_layers, cfg->first_k_dense};
    ep_model_for_each_tensor(cfg, count_tensor, &cc);
}

void ep_sim_params_free(ep_sim_params *p)
{
    if (!p) return;
    free(p->layer_dense);
    free(p->layer_attn);
    memset(p, 0, sizeof *p);
}

int64_t ep_sim_kv_bytes_per_token_layer(const ep_model_cfg *cfg)
{
    if (cfg->arch == EP_ARCH_DEEPSEEK_V2 && cfg->kv_lora_rank > 0)
        return (int64_t)(cfg->kv_lora_rank + cfg->qk_rope_dim) * 2;
    return (int64_t)2 * cfg->n_kv_heads * cfg->head_dim * 2;
}

// FLOPs per (query, attended key) pair: QK^T and PV over all heads.
// MLA decode runs absorbed (scores against the 512+64 latent, values from the
// latent), prefill runs the expanded heads (DeepSeek's own split).
static double attn_flops_per_pair(const ep_model_cfg *cfg, bool decode)
{
    if (cfg->arch == EP_ARCH_DEEPSEEK_V2 && cfg->kv_lora_rank > 0) {
        if (decode) return 2.0 * cfg->n_heads * (2.0 * cfg->kv_lora_rank + cfg->qk_rope_dim);
        return 2.0 * cfg->n_heads * (cfg->qk_nope_dim + cfg->qk_rope_dim + cfg->v_head_dim);
    }
    return 4.0 * cfg->n_heads * cfg->head_dim;
}

double ep_sim_dense_us(const ep_sim_cluster *c, const ep_model_cfg *cfg, const ep_sim_params *p,
                       int layer, double tokens, double ctx, bool decode)
{
    if (tokens <= 0) return 0.0;
    EP_ASSERT(layer >= 0 && layer < cfg->n_layers);
    double w = (double)p->layer_dense[layer];
    // Weight GEMMs (projections, gate, shared experts / dense MLP): weights
    // read once per step, activations in and out of each of ~6 kernels.
    double t =
        roofline_us(c, 2.0 * tokens * w, EP_SIM_BF16 * (w + 6.0 * tokens * (double)cfg->hidden));
    // Attention over the context: decode reads each sequence's cache once.
    double attended = decode ? ctx : 0.5 * ctx;
    double kv = (double)ep_sim_kv_bytes_per_token_layer(cfg);
    double kv_bytes = decode ? tokens * ctx * kv : tokens * kv;
    t += roofline_us(c, tokens * attended * attn_flops_per_pair(cfg, decode), kv_bytes);
    return t;
}

double ep_sim_head_us(const ep_sim_cluster *c, const ep_model_cfg *cfg, double rows)
{
    if (rows <= 0) return 0.0;
    double w = (double)cfg->vocab * cfg->hidden;
    return roofline_us(c, 2.0 * rows * w, EP_SIM_BF16 * (w + rows * (double)cfg->vocab));
}

// ---- memory per GPU (`epserve plan`) ------------------------------------------

// CUDA context, cuBLAS workspace, NCCL channel buffers and allocator slack:
// a fixed reserve per GPU (vLLM-style deployments see 1.5-3 GiB of it).
#define EP_SIM_RUNTIME_RESERVE_BYTES (2.0 * 1024 * 1024 * 1024)

double ep_sim_tensor_bytes(const ep_model_cfg *cfg, const char *name, int ndim,
                           const int64_t *shape)
{
    double n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (double)shape[i];
    if (cfg->quant != EP_QUANT_FP8_BLOCK || !ep_model_tensor_is_fp8(name, ndim))
        return EP_SIM_BF16 * n;
    return n + 4.0 * (double)ep_fp8_blocks(shape[0], cfg->quant_block[0]) *
                   (double)ep_fp8_blocks(shape[1], cfg->quant_block[1]);
}

// Weight bytes by what holds them, classified as count_tensor does.
typedef struct {
    const ep_model_cfg *cfg;
    double attn, gate, other, embed_head, expert; // expert: one routed expert
} bytes_ctx;

static int count_bytes(void *user, const char *name, int ndim, const int64_t *shape)
{
    bytes_ctx *bc = user;
    const double b = ep_sim_tensor_bytes(bc->cfg, name, ndim, shape);
    int layer = -1, off = 0;
    if (sscanf(name, "model.layers.%d.%n", &layer, &off) != 1 || off <= 0) {
        bc->embed_head += b; // embed_tokens, lm_head, final norm
        return 0;
    }
    const char *rest = name + off;
    int e = -1;
    if (!strncmp(rest, "mlp.experts.", 12)) {
        if (sscanf(rest, "mlp.experts.%d.", &e) == 1 && e == 0 && layer == bc->cfg->first_k_dense)
            bc->expert += b;
    } else if (!strcmp(rest, "mlp.gate.weight")) {
        bc->gate += b;
    } else if (!strncmp(rest, "self_attn.", 10) || !strncmp(rest, "input_layernorm", 15)) {
        bc->attn += b;
    } else {
        bc->other += b; // shared experts, dense MLPs, post-attention norms
    }
    return 0;
}

void ep_sim_plan_memory(const ep_model_cfg *cfg, const ep_sim_cluster *c, int context, int batch,
                        int chunk, int n_redundant, ep_sim_mem *m)
{
    memset(m, 0, sizeof *m);
    const int W = ep_sim_cluster_gpus(c);
    const double B = EP_SIM_BF16; // activations, KV
    const int n_moe = ep_model_n_moe_layers(cfg);
    const int E = cfg->n_experts;

    bytes_ctx bc = {.cfg = cfg};
    ep_model_for_each_tensor(cfg, count_bytes, &bc);
    m->attn_bytes = bc.attn;
    m->gate_bytes = bc.gate;
    m->shared_bytes = bc.other;
    m->embed_head_bytes = bc.embed_head;
    m->replicated_bytes = m->attn_bytes + m->gate_bytes + m->shared_bytes + m->embed_head_bytes;

    // The fullest GPU: slots spread as evenly as placement can (ceil).
    m->experts_per_gpu = E > 0 ? (E + EP_MAX(n_redundant, 0) + W - 1) / W : 0;
    m->routed_bytes = (double)n_moe * m->experts_per_gpu * bc.expert;

    m->kv_bytes =
        (double)batch * context * cfg->n_layers * (double)ep_sim_kv_bytes_per_token_layer(cfg);

    // Workspace for a step of `chunk` tokens: ~6 live [T, H] bf16 activations,
    // fp32 gate logits, expert gate|up|h intermediates for T·k pairs, dispatch
    // and combine send + receive buffers (worst case one record per pair:
    // header + ids + weights + bf16 row), fp32 logits of the sampled rows.
    const double T = chunk, k = EP_MAX(cfg->k_base, 1);
    double act = 6.0 * T * cfg->hidden * B + T * E * 4.0;
    double inter = T * k * 3.0 * cfg->moe_inter * B;
    double rec = 8.0 + 8.0 + cfg->hidden * B;
    double a2a = 2.0 * T * k * rec + 2.0 * T * k * cfg->hidden * B;
    double head = (double)EP_MAX(batch, 1) * cfg->vocab * 4.0;
    m->workspace_bytes = act + inter + a2a + head + EP_SIM_RUNTIME_RESERVE_BYTES;

    m->total_bytes = m->replicated_bytes + m->routed_bytes + m->kv_bytes + m->workspace_bytes;
    m->usable_bytes = c->mem_gb * 1e9 * c->mem_usable;
    m->fits = m->total_bytes <= m->usable_bytes;
}
