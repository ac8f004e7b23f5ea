// Struct bodies of ep_model shared by model/model.c (init, step driver),
// model/attn.c (attention on the KV cache) and model/reference.c. Not part of
// the public API.
#ifndef EP_MODEL_IMPL_H
#define EP_MODEL_IMPL_H

#include "experts/dense.h"
#include "model/model.h"
#include "model/rope.h"

typedef struct ep_attn ep_attn;                       // model/attn.c
typedef struct ep_model_backend_i ep_model_backend_i; // model/backend.h

// One layer's replicated weights, [out, in] as in HF; matrices in the
// storage opts.dtype gives (ep_mat: fp32 or BF16, maybe mapped from the
// checkpoint), vectors in fp32; NULL / empty when absent.
typedef struct {
    float *in_norm;   // [H] input_layernorm
    float *post_norm; // [H] post_attention_layernorm
    // Qwen3
    ep_mat wq;     // [nh * hd, H] (MLA without q LoRA: q_proj [nh * (nope + rope), H])
    ep_mat wk, wv; // [nkv * hd, H]
    float *q_norm; // [hd]
    float *k_norm; // [hd]
    ep_mat wo;     // [H, nh * hd] (MLA: [H, nh * v])
    // DeepSeek-V2 MLA
    ep_mat wq_a;      // [q_lora, H]
    float *q_a_norm;  // [q_lora]
    ep_mat wq_b;      // [nh * (nope + rope), q_lora]
    ep_mat wkv_a;     // [kv_lora + rope, H] (kv_a_proj_with_mqa)
    float *kv_a_norm; // [kv_lora]
    // [nh * (nope + v), kv_lora]; head h rows: [k_nope | v]. fp32 always: the
    // absorbed form reads it per head as W_UK and W_UV (model/attn.c).
    float *wkv_b;
    // dense MLP (layers < first_k_dense)
    ep_mat w_gate, w_up; // [inter, H]
    ep_mat w_down;       // [H, inter]
} ep_layer_w;

struct ep_model {
    const ep_model_cfg *cfg;
    ep_cluster *cl;
    ep_model_opts opts;
    ep_moe *moe;
    ep_kv *kv;
    ep_rope rope;
    float attn_scale;             // softmax scale of q.k
    int q_dim;                    // per-token q width: nh * hd (Qwen3), nh * (nope + rope) (MLA)
    int kv_row;                   // floats per cached (layer, token)
    int attn_out;                 // per-token attention output width before o_proj
    size_t weight_bytes;          // replicated weights held, as stored (the embedding included)
    size_t embed_bytes;           // the embedding's share of them (kept when the host copy goes)
    const ep_model_backend_i *be; // the step's ops (model/backend.h), from opts.moe.backend
    void *dev;                    // what be->open made (cuda: struct cuda_fwd), or NULL

    ep_mat embed;      // [V, H]
    float *final_norm; // [H]
    ep_mat lm_head;    // [V, H]; when tied, a view of embed (owns nothing)
    ep_layer_w *L;     // [n_layers]

    // Per-step scratch, sized for cap tokens once (cap = moe.cap_tokens).
    // ep_model_init makes xn, y (the MoE layers' host side) and the token
    // arrays; the cpu backend's open the others (NULL with backend cuda).
    float *x;        // [cap, H] residual stream
    float *xn;       // [cap, H] normed input of a sublayer
    float *y;        // [cap, H] sublayer output
    float *q;        // [cap, q_dim]
    float *k, *v;    // [cap, nkv * hd] (MLA: k is [cap, kv_lora + rope]; v unused)
    float *qa;       // [cap, q_lora] (MLA with q LoRA)
    float *att;      // [cap, attn_out]
    float *mg, *mu;  // [cap, inter] dense MLP gate / up
    int *tok_seq;    // [cap] sequence of each new token
    int *tok_domain; // [cap] Pick domain of each new token (ep_batch.pick_domain)
    int *tok_pos;    // [cap] its position in the sequence
    float *hlogits;  // [hlogits_rows, vocab] logits when the caller gave no buffer
    int hlogits_rows;
    // Attention's per-thread scratch and task list (model/attn.c), made on
    // first use and grown when the pool has more threads; NULL before.
    ep_attn *attn;
};

// Attention of every new token of the step (model/attn.c): reads m->xn,
// writes this layer's KV rows of the new tokens, then attends over each
// sequence's cache on the thread pool; output [T, H] into m->y (o_proj
// applied). The bits do not depend on the number of threads.
void ep_model_attention(ep_model *m, int layer, int T);

// Frees m->attn (the scratch of ep_model_attention); NULL ok.
void ep_model_attn_free(ep_model *m);

// RMSNorm of rows: out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w (fp32, as HF).
void ep_model_rmsnorm(const float *x, const float *w, int rows, int n, float eps, float *out);

#endif
