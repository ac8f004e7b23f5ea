// The Hugging Face tensor layout of a model config: every tensor's name and
// shape in a stable order, and the names of the MoE tensors that loaders look
// up one by one. Names only: reading the tensors is weights.c's.
#include "common/model_cfg.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void ep_name_gate(char *buf, size_t n, int layer)
{
    snprintf(buf, n, "model.layers.%d.mlp.gate.weight", layer);
}

void ep_name_expert(char *buf, size_t n, int layer, int e, const char *proj)
{
    snprintf(buf, n, "model.layers.%d.mlp.experts.%d.%s.weight", layer, e, proj);
}

void ep_name_shared(char *buf, size_t n, int layer, const char *proj)
{
    snprintf(buf, n, "model.layers.%d.mlp.shared_experts.%s.weight", layer, proj);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

bool ep_model_tensor_is_fp8(const char *name, int ndim)
{
    return ndim == 2 && ends_with(name, ".weight") && strcmp(name, "model.embed_tokens.weight") &&
           strcmp(name, "lm_head.weight") && !ends_with(name, ".mlp.gate.weight");
}

typedef struct {
    ep_tensor_fn fn;
    void *user;
    bool stop;
    char name[256];
} tensor_walk;

// Emits one tensor; `name` is already in w->name. Dims end at a negative value.
static void emit(tensor_walk *w, int64_t d0, int64_t d1)
{
    if (w->stop) return;
    int64_t shape[2] = {d0, d1};
    w->stop = w->fn(w->user, w->name, d1 < 0 ? 1 : 2, shape) != 0;
}

#define EMIT1(w, d0, ...) (snprintf((w)->name, sizeof(w)->name, __VA_ARGS__), emit((w), (d0), -1))
#define EMIT2(w, d0, d1, ...)                                                                      \
    (snprintf((w)->name, sizeof(w)->name, __VA_ARGS__), emit((w), (d0), (d1)))

static void walk_attention(tensor_walk *w, const ep_model_cfg *c, int l)
{
    int64_t H = c->hidden;
    if (c->arch == EP_ARCH_QWEN3_MOE) {
        int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
        EMIT2(w, q, H, "model.layers.%d.self_attn.q_proj.weight", l);
        EMIT2(w, kv, H, "model.layers.%d.self_attn.k_proj.weight", l);
        EMIT2(w, kv, H, "model.layers.%d.self_attn.v_proj.weight", l);
        EMIT2(w, H, q, "model.layers.%d.self_attn.o_proj.weight", l);
        if (c->qk_norm) {
            EMIT1(w, c->head_dim, "model.layers.%d.self_attn.q_norm.weight", l);
            EMIT1(w, c->head_dim, "model.layers.%d.self_attn.k_norm.weight", l);
        }
        return;
    }
    int64_t qk = (int64_t)c->n_heads * (c->qk_nope_dim + c->qk_rope_dim);
    if (c->q_lora_rank == 0) {
        EMIT2(w, qk, H, "model.layers.%d.self_attn.q_proj.weight", l);
    } else {
        EMIT2(w, c->q_lora_rank, H, "model.layers.%d.self_attn.q_a_proj.weight", l);
        EMIT1(w, c->q_lora_rank, "model.layers.%d.self_attn.q_a_layernorm.weight", l);
        EMIT2(w, qk, c->q_lora_rank, "model.layers.%d.self_attn.q_b_proj.weight", l);
    }
    EMIT2(w, c->kv_lora_rank + c->qk_rope_dim, H,
          "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l);
    EMIT1(w, c->kv_lora_rank, "model.layers.%d.self_attn.kv_a_layernorm.weight", l);
    EMIT2(w, (int64_t)c->n_heads * (c->qk_nope_dim + c->v_head_dim), c->kv_lora_rank,
          "model.layers.%d.self_attn.kv_b_proj.weight", l);
    EMIT2(w, H, (int64_t)c->n_heads * c->v_head_dim, "model.layers.%d.self_attn.o_proj.weight", l);
}

static void walk_mlp(tensor_walk *w, const ep_model_cfg *c, int l)
{
    int64_t H = c->hidden;
    if (!ep_model_layer_is_moe(c, l)) {
        EMIT2(w, c->intermediate, H, "model.layers.%d.mlp.gate_proj.weight", l);
        EMIT2(w, c->intermediate, H, "model.layers.%d.mlp.up_proj.weight", l);
        EMIT2(w, H, c->intermediate, "model.layers.%d.mlp.down_proj.weight", l);
        return;
    }
    if (!w->stop) {
        ep_name_gate(w->name, sizeof w->name, l);
        emit(w, c->n_experts, H);
    }
    for (int e = 0; e < c->n_experts && !w->stop; e++) {
        ep_name_expert(w->name, sizeof w->name, l, e, "gate_proj");
        emit(w, c->moe_inter, H);
        ep_name_expert(w->name, sizeof w->name, l, e, "up_proj");
        emit(w, c->moe_inter, H);
        ep_name_expert(w->name, sizeof w->name, l, e, "down_proj");
        emit(w, H, c->moe_inter);
    }
    if (c->n_shared > 0 && !w->stop) {
        int64_t si = (int64_t)c->moe_inter * c->n_shared;
        ep_name_shared(w->name, sizeof w->name, l, "gate_proj");
        emit(w, si, H);
        ep_name_shared(w->name, sizeof w->name, l, "up_proj");
        emit(w, si, H);
        ep_name_shared(w->name, sizeof w->name, l, "down_proj");
        emit(w, H, si);
    }
}

void ep_model_for_each_tensor(const ep_model_cfg *c, ep_tensor_fn fn, void *user)
{
    tensor_walk w = {.fn = fn, .user = user};
    EMIT2(&w, c->vocab, c->hidden, "model.embed_tokens.weight");
    for (int l = 0; l < c->n_layers && !w.stop; l++) {
        EMIT1(&w, c->hidden, "model.layers.%d.input_layernorm.weight", l);
        EMIT1(&w, c->hidden, "model.layers.%d.post_attention_layernorm.weight", l);
        walk_attention(&w, c, l);
        walk_mlp(&w, c, l);
    }
    EMIT1(&w, c->hidden, "model.norm.weight");
    if (!c->tie_embeddings) EMIT2(&w, c->vocab, c->hidden, "lm_head.weight");
}
