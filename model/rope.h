// Rotary position embeddings for both families: the frequency table (plain
// RoPE, or YaRN-blended as DeepSeek-V2's DeepseekV2YarnRotaryEmbedding and
// transformers' Qwen3 YaRN do), the cos/sin scale YaRN applies, and the MLA
// softmax scale. Rotation comes in two layouts: NeoX rotate-half (Qwen3) and
// interleaved pairs (DeepSeek-V2).
// No attention here (model/attn.c), no allocation.
#ifndef EP_ROPE_H
#define EP_ROPE_H

#include "common/model_cfg.h"

#define EP_ROPE_MAX_DIM 512

typedef struct {
    int dim;          // rotated dims (Qwen3: head_dim; MLA: qk_rope_head_dim), even
    bool interleaved; // pairs (2i, 2i+1) (DeepSeek-V2) or halves (i, i + dim/2) (NeoX, Qwen3)
    float cs_scale;   // multiplies cos and sin: ep_rope_attention_factor (1 without YaRN)
    float inv_freq[EP_ROPE_MAX_DIM / 2]; // [dim / 2] radians per position
} ep_rope;

// yarn_get_mscale of DeepSeek's modeling code: 1 when factor <= 1, else
// 0.1 * mscale * ln(factor) + 1.
double ep_yarn_mscale(double factor, double mscale);
// MLA softmax scale: (qk_nope + qk_rope)^-0.5, times mscale^2 with
// mscale = ep_yarn_mscale(factor, mscale_all_dim) when YaRN is on and
// mscale_all_dim != 0 (DeepseekV2Attention.__init__). FACTS.md: V2.5 0.135234,
// Lite 0.114721.
double ep_mla_softmax_scale(const ep_model_cfg *c);

// What YaRN multiplies cos and sin by (1 without YaRN). DeepSeek-V2 (its
// modeling code): mscale(factor, mscale) / mscale(factor, mscale_all_dim).
// Qwen3 (transformers' _compute_yarn_parameters): rope_scaling.attention_factor
// when given, else that ratio when mscale and mscale_all_dim are both given
// and non-zero, else 0.1 ln(factor) + 1. Qwen3 has no softmax-scale mscale:
// its attention keeps head_dim^-0.5.
double ep_rope_attention_factor(const ep_model_cfg *c);

// The table of cfg's attention: Qwen3 rotates head_dim dims rotate-half;
// DeepSeek-V2 rotates qk_rope_dim dims in interleaved pairs. YaRN when
// cfg->has_yarn. EP_ERR_CONFIG when the dimension is odd or too large.
ep_status ep_rope_init(ep_rope *r, const ep_model_cfg *c);

// cs[0 .. dim/2) = cos, cs[dim/2 .. dim) = sin of position pos, both times
// cs_scale. Computed in fp32 as the HF code does (angle = pos * inv_freq).
void ep_rope_table(const ep_rope *r, int pos, float *cs);
// Rotates x[dim] in place with a table from ep_rope_table, in r's layout.
void ep_rope_rotate(const ep_rope *r, const float *cs, float *x);

#endif
