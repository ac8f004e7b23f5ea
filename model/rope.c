// RoPE and YaRN tables (DeepSeek-V2 modeling_deepseek.py:
// DeepseekV2YarnRotaryEmbedding, yarn_find_correction_range,
// yarn_linear_ramp_mask, yarn_get_mscale; Qwen3: transformers'
// modeling_rope_utils._compute_yarn_parameters, the same frequency blend
// with its own attention factor and `truncate`) and the two rotation layouts.
// The tables are computed once per model; rotation allocates nothing.
#include "model/rope.h"

#include <math.h>
#include <string.h>

double ep_yarn_mscale(double factor, double mscale)
{
    if (factor <= 1.0) return 1.0;
    return 0.1 * mscale * log(factor) + 1.0;
}

double ep_mla_softmax_scale(const ep_model_cfg *c)
{
    double s = 1.0 / sqrt((double)(c->qk_nope_dim + c->qk_rope_dim));
    if (c->has_yarn && c->yarn_mscale_all_dim != 0.0f) {
        double m = ep_yarn_mscale(c->yarn_factor, c->yarn_mscale_all_dim);
        s *= m * m;
    }
    return s;
}

// Dimension index whose wavelength makes num_rot turns over max_pos positions.
static double correction_dim(double num_rot, int dim, double base, int max_pos)
{
    return (dim * log(max_pos / (num_rot * 2.0 * M_PI))) / (2.0 * log(base));
}

double ep_rope_attention_factor(const ep_model_cfg *c)
{
    if (!c->has_yarn) return 1.0;
    double f = c->yarn_factor;
    // DeepseekV2YarnRotaryEmbedding: _mscale = mscale(f, mscale) / mscale(f, mscale_all_dim).
    if (c->arch == EP_ARCH_DEEPSEEK_V2)
        return ep_yarn_mscale(f, c->yarn_mscale) / ep_yarn_mscale(f, c->yarn_mscale_all_dim);
    // transformers' _compute_yarn_parameters: attention_factor when given;
    // else the same ratio when both mscale and mscale_all_dim are (non-zero);
    // else get_mscale(factor) = 0.1 ln(factor) + 1.
    if (c->yarn_attn_factor > 0.0f) return c->yarn_attn_factor;
    if (c->yarn_mscale != 0.0f && c->yarn_mscale_all_dim != 0.0f)
        return ep_yarn_mscale(f, c->yarn_mscale) / ep_yarn_mscale(f, c->yarn_mscale_all_dim);
    return ep_yarn_mscale(f, 1.0);
}

ep_status ep_rope_init(ep_rope *r, const ep_model_cfg *c)
{
    memset(r, 0, sizeof *r);
    bool mla = c->arch == EP_ARCH_DEEPSEEK_V2;
    r->dim = mla ? c->qk_rope_dim : c->head_dim;
    r->interleaved = mla;
    r->cs_scale = 1.0f;
    if (r->dim <= 0 || r->dim % 2 || r->dim > EP_ROPE_MAX_DIM)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: rotary dimension (%s) must be even and in 2..%d, found %d", c->source,
                         mla ? "qk_rope_head_dim" : "head_dim", EP_ROPE_MAX_DIM, r->dim);
    if (!(c->rope_theta > 1.0f))
        return ep_errorf(EP_ERR_CONFIG, "%s: rope_theta must be > 1, found %g", c->source,
                         (double)c->rope_theta);
    int half = r->dim / 2;
    // The HF code computes base ** (arange(0, dim, 2) / dim) in fp32.
    float extra[EP_ROPE_MAX_DIM / 2];
    for (int i = 0; i < half; i++)
        extra[i] = (float)(1.0 / pow((double)c->rope_theta, (double)(2 * i) / r->dim));
    if (!c->has_yarn) {
        memcpy(r->inv_freq, extra, (size_t)half * sizeof(float));
        return EP_OK;
    }
    // YaRN: high-frequency dims keep their frequency (extrapolate), low ones
    // are divided by factor (interpolate), a linear ramp in between. The ramp
    // ends are whole dims (floor / ceil) unless Qwen3's truncate is false;
    // DeepSeek's code always truncates.
    double f = c->yarn_factor;
    double low = correction_dim(c->yarn_beta_fast, r->dim, c->rope_theta, c->yarn_orig_max_pos);
    double high = correction_dim(c->yarn_beta_slow, r->dim, c->rope_theta, c->yarn_orig_max_pos);
    if (mla || c->yarn_truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0) low = 0;
    if (high > r->dim - 1) high = r->dim - 1;
    if (low == high) high += 0.001; // the HF code's guard against a zero-width ramp
    float lo = (float)low, span = (float)(high - low);
    for (int i = 0; i < half; i++) {
        float ramp = ((float)i - lo) / span;
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float keep = 1.0f - ramp; // inv_freq_mask / inv_freq_extrapolation_factor
        float inter = (float)(1.0 / (f * pow((double)c->rope_theta, (double)(2 * i) / r->dim)));
        r->inv_freq[i] = inter * (1.0f - keep) + extra[i] * keep;
    }
    r->cs_scale = (float)ep_rope_attention_factor(c);
    return EP_OK;
}

void ep_rope_table(const ep_rope *r, int pos, float *cs)
{
    int half = r->dim / 2;
    for (int i = 0; i < half; i++) {
        float ang = (float)pos * r->inv_freq[i];
        cs[i] = (float)cos((double)ang) * r->cs_scale;
        cs[half + i] = (float)sin((double)ang) * r->cs_scale;
    }
}

void ep_rope_rotate(const ep_rope *r, const float *cs, float *x)
{
    int half = r->dim / 2;
    const float *co = cs, *si = cs + half;
    if (r->interleaved) {
        // Equal, as far as any q.k is concerned, to the HF code's
        // de-interleave followed by rotate-half (it permutes q and k alike).
        for (int i = 0; i < half; i++) {
            float a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = a * co[i] - b * si[i];
            x[2 * i + 1] = b * co[i] + a * si[i];
        }
    } else {
        for (int i = 0; i < half; i++) {
            float a = x[i], b = x[i + half];
            x[i] = a * co[i] - b * si[i];
            x[i + half] = b * co[i] + a * si[i];
        }
    }
}
