// The model architecture (ep_model_cfg), filled from an epserve YAML preset
// (configs/models/*.yaml) or from a Hugging Face config.json, validated in one
// place. Immutable once loaded. Knows tensor names of the HF layout too
// (model_cfg_names.c).
#ifndef EP_MODEL_CFG_H
#define EP_MODEL_CFG_H

#include "common/ep.h"

// The synthetic routing inputs' concentration when a config does not set it
// (docs/synthetic.md §3; ep_model_cfg.synth_conc_*).
#define EP_SYNTH_CONC_MEDIAN      1.2
#define EP_SYNTH_CONC_SIGMA_TOKEN 0.6
#define EP_SYNTH_CONC_SIGMA_LAYER 0.45

typedef enum { EP_ARCH_QWEN3_MOE, EP_ARCH_DEEPSEEK_V2 } ep_arch;
typedef enum { EP_TOPK_GREEDY, EP_TOPK_GROUP_LIMITED } ep_topk_method;
// How the checkpoint's weights are quantized (config.json quantization_config).
typedef enum {
    EP_QUANT_NONE,      // every tensor a float dtype, read as stored
    EP_QUANT_FP8_BLOCK, // quant_method "fp8", fmt e4m3, dynamic activations, block scales
} ep_quant;

typedef struct {
    char name[64];    // "qwen3-235b-a22b", "tiny-qwen3-moe", ...
    ep_arch arch;     // YAML `family: qwen3_moe | deepseek_v2`
    int hidden;       // hidden_size
    int n_layers;     // num_hidden_layers
    int n_heads;      // num_attention_heads
    int n_kv_heads;   // num_key_value_heads (Qwen3); = n_heads for MLA
    int head_dim;     // Qwen3 head_dim; unused for MLA
    int vocab;        // vocab_size
    int intermediate; // dense MLP width (intermediate_size), layers < first_k_dense
    int max_pos;      // max_position_embeddings
    float rms_eps;    // rms_norm_eps
    float rope_theta;
    bool qk_norm; // Qwen3 q_norm/k_norm
    bool tie_embeddings;

    // MoE
    int n_experts;     // routed experts (num_experts / n_routed_experts)
    int k_base;        // num_experts_per_tok
    int moe_inter;     // moe_intermediate_size
    int n_shared;      // shared experts (DeepSeek n_shared_experts; 0 for Qwen3)
    int first_k_dense; // layers [0, first_k_dense) are dense (first_k_dense_replace)
    ep_topk_method topk_method;
    int n_group, topk_group; // group_limited_greedy; n_group 1 otherwise
    bool norm_topk_prob;
    float routed_scaling_factor; // applied when !norm_topk_prob (DeepSeek); 1.0 for Qwen3

    // DeepSeek-V2 MLA (0 when not MLA)
    int q_lora_rank; // 0: q_proj (Lite); >0: q_a_proj/q_a_layernorm/q_b_proj
    int kv_lora_rank, qk_nope_dim, qk_rope_dim, v_head_dim;
    // YaRN rope scaling (has_yarn false: plain RoPE). DeepSeek-V2 reads it as
    // its own modeling code does (mscale default 1), Qwen3 as transformers'
    // _compute_yarn_parameters does (mscale / mscale_all_dim 0 = not given,
    // attention_factor, truncate); see model/rope.c.
    bool has_yarn;
    float yarn_factor, yarn_beta_fast, yarn_beta_slow, yarn_mscale, yarn_mscale_all_dim;
    int yarn_orig_max_pos;
    float yarn_attn_factor; // rope_scaling.attention_factor (Qwen3), 0: not given
    bool yarn_truncate;     // rope_scaling.truncate (Qwen3, default true): floor/ceil the ramp ends

    // Weight quantization. EP_QUANT_FP8_BLOCK: each F8_E4M3 tensor X comes
    // with X_scale_inv [ceil(out / quant_block[0]), ceil(in / quant_block[1])]
    // and is dequantized at load (common/weights.c); which tensors are FP8 is
    // each tensor's own dtype. make-model quantizes ep_model_tensor_is_fp8's.
    ep_quant quant;
    int quant_block[2]; // weight_block_size [out, in]; 0 when quant is NONE

    // Where the weights come from: a checkpoint directory (safetensors,
    // HF layout), or "" for synthetic weights generated from `seed`.
    char checkpoint[1024];
    uint64_t seed;
    // Synthetic routing inputs (ep_synth_hidden, docs/synthetic.md §3): the
    // concentration G of a token at a layer is log-normal,
    // log G = log(median) + sigma_token·N_token + sigma_layer·N_(token,layer).
    // synth_conc_set false: the generator's built-in 1.2 / 0.6 / 0.45 (YAML
    // `synth:` absent), so configs that do not set it route as before.
    bool synth_conc_set;
    double synth_conc_median, synth_conc_sigma_token, synth_conc_sigma_layer;
    char source[1024]; // the file this config was read from (for messages)
} ep_model_cfg;

// Loads `spec`: a YAML file, a checkpoint directory holding config.json, or
// a preset name looked up as configs/models/<spec>.yaml (in $EP_CONFIG_DIR,
// ./configs/models, then the source tree). Validates. Errors name the file
// and key, what was expected and what was found.
ep_status ep_model_cfg_load(const char *spec, ep_model_cfg *cfg);
ep_status ep_model_cfg_from_yaml(const char *path, ep_model_cfg *cfg);
// config.json of a HF checkpoint (Qwen3MoeForCausalLM / DeepseekV2ForCausalLM).
// Unknown keys are ignored (real configs carry many); missing or mistyped
// keys that epserve needs are errors. Sets cfg->checkpoint to the directory.
ep_status ep_model_cfg_from_hf_json(const char *path, ep_model_cfg *cfg);
ep_status ep_model_cfg_validate(const ep_model_cfg *cfg);
// Writes config.json in the HF layout of cfg's family (for make-model):
// torch_dtype "bfloat16", no token ids.
ep_status ep_model_cfg_write_hf_json(const ep_model_cfg *cfg, const char *path);
// What config.json says beside the architecture, as the published configs
// have it: the dtype of the weights written and the special token ids.
typedef struct {
    const char *torch_dtype;        // "bfloat16", "float32", ...
    int bos_token_id, eos_token_id; // -1: not written
} ep_hf_json_extra;
ep_status ep_model_cfg_write_hf_json_ex(const ep_model_cfg *cfg, const ep_hf_json_extra *x,
                                        const char *path);

static inline bool ep_model_layer_is_moe(const ep_model_cfg *c, int layer)
{
    return layer >= c->first_k_dense && c->n_experts > 0;
}
int ep_model_n_moe_layers(const ep_model_cfg *c);

// Every tensor of the HF layout for cfg, in a stable order. The callback
// returns non-zero to stop. Shapes are [out, in] for linear weights.
typedef int (*ep_tensor_fn)(void *user, const char *name, int ndim, const int64_t *shape);
void ep_model_for_each_tensor(const ep_model_cfg *cfg, ep_tensor_fn fn, void *user);

// Tensor name helpers (HF naming). `proj` is "gate_proj", "up_proj" or "down_proj".
void ep_name_gate(char *buf, size_t n, int layer); // model.layers.L.mlp.gate.weight
void ep_name_expert(char *buf, size_t n, int layer, int e, const char *proj);
void ep_name_shared(char *buf, size_t n, int layer, const char *proj); // DeepSeek shared_experts
// Whether a tensor of the layout is a quantized Linear weight in the
// published FP8 checkpoints (Qwen3-*-FP8, DeepSeek-V3): the 2-D weights of
// attention, dense MLPs and experts (shared included); not the embedding,
// the norms, the router gates (mlp.gate) or lm_head (FACTS.md).
bool ep_model_tensor_is_fp8(const char *name, int ndim);

#endif
