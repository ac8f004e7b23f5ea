// Hugging Face config.json for Qwen3-MoE and DeepSeek-V2: the reader (only
// the keys epserve needs; unknown keys ignored, unsupported features refused)
// and the writer used by make-model. Validation is model_cfg.c's.
#include "common/json_util.h"
#include "common/model_cfg_impl.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ---- Hugging Face config.json ------------------------------------------------

// "an integer (5)", "a string (\"abc\")", ... for "found" in messages.
static const char *json_describe(const json_t *v, char *buf, size_t n)
{
    if (!v) {
        snprintf(buf, n, "nothing");
        return buf;
    }
    if (json_is_null(v)) {
        snprintf(buf, n, "null");
        return buf;
    }
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    size_t len = text ? strlen(text) : 0;
    snprintf(buf, n, "%s %.*s%s", ep_json_type_name(v), (int)(len > 48 ? 48 : len),
             text ? text : "", len > 48 ? "..." : "");
    free(text);
    return buf;
}

// Looks up key; absent or null is an error only when required. `key` may be
// a dotted path for messages ("rope_scaling.factor"): the lookup in `root`
// uses its last component (no HF config key contains a dot).
static ep_status js_get(const char *path, json_t *root, const char *key, const char *expect,
                        bool required, json_t **out)
{
    const char *dot = strrchr(key, '.');
    json_t *v = json_object_get(root, dot ? dot + 1 : key);
    *out = v && !json_is_null(v) ? v : NULL;
    if (!*out && required)
        return ep_errorf(EP_ERR_CONFIG, "%s: key '%s': expected %s, found %s", path, key, expect,
                         v ? "null" : "no such key");
    return EP_OK;
}

static ep_status js_int(const char *path, json_t *root, const char *key, bool required, int *out)
{
    json_t *v;
    char found[128];
    ep_status st = js_get(path, root, key, "an integer", required, &v);
    if (st != EP_OK || !v) return st;
    if (!json_is_integer(v) || json_integer_value(v) < INT_MIN || json_integer_value(v) > INT_MAX)
        return ep_errorf(EP_ERR_CONFIG, "%s: key '%s': expected an integer, found %s", path, key,
                         json_describe(v, found, sizeof found));
    *out = (int)json_integer_value(v);
    return EP_OK;
}

static ep_status js_float(const char *path, json_t *root, const char *key, bool required,
                          float *out)
{
    json_t *v;
    char found[128];
    ep_status st = js_get(path, root, key, "a number", required, &v);
    if (st != EP_OK || !v) return st;
    if (!json_is_number(v))
        return ep_errorf(EP_ERR_CONFIG, "%s: key '%s': expected a number, found %s", path, key,
                         json_describe(v, found, sizeof found));
    *out = (float)json_number_value(v);
    return EP_OK;
}

// "epserve_synth" (written by make-model for a config with a `synth:` block):
// the routing inputs' concentration, all three keys, numbers.
static ep_status hf_synth(const char *path, json_t *r, ep_model_cfg *c)
{
    json_t *sy = json_object_get(r, "epserve_synth");
    if (!sy || json_is_null(sy)) return EP_OK;
    char found[128];
    if (!json_is_object(sy))
        return ep_errorf(EP_ERR_CONFIG, "%s: key 'epserve_synth': expected an object, found %s",
                         path, json_describe(sy, found, sizeof found));
    static const char *const keys[] = {"concentration_median", "concentration_sigma_token",
                                       "concentration_sigma_layer"};
    double *dst[] = {&c->synth_conc_median, &c->synth_conc_sigma_token, &c->synth_conc_sigma_layer};
    const char *k;
    json_t *v;
    json_object_foreach(sy, k, v)
    {
        size_t i = 0;
        while (i < EP_ARRAY_LEN(keys) && strcmp(k, keys[i]))
            i++;
        if (i == EP_ARRAY_LEN(keys))
            return ep_errorf(EP_ERR_CONFIG,
                             "%s: key 'epserve_synth.%s': unknown (expected %s, %s, %s)", path, k,
                             keys[0], keys[1], keys[2]);
    }
    for (size_t i = 0; i < EP_ARRAY_LEN(keys); i++) {
        v = json_object_get(sy, keys[i]);
        if (!v || !json_is_number(v))
            return ep_errorf(EP_ERR_CONFIG,
                             "%s: key 'epserve_synth.%s': expected a number, found %s", path,
                             keys[i], v ? json_describe(v, found, sizeof found) : "nothing");
        *dst[i] = json_number_value(v);
    }
    c->synth_conc_set = true;
    return EP_OK;
}

static ep_status js_bool(const char *path, json_t *root, const char *key, bool required, bool *out)
{
    json_t *v;
    char found[128];
    ep_status st = js_get(path, root, key, "a boolean", required, &v);
    if (st != EP_OK || !v) return st;
    if (!json_is_boolean(v))
        return ep_errorf(EP_ERR_CONFIG, "%s: key '%s': expected a boolean, found %s", path, key,
                         json_describe(v, found, sizeof found));
    *out = json_is_true(v);
    return EP_OK;
}

// Keys that must hold one specific value when present (features epserve
// does not implement must not be silently ignored).
static ep_status js_expect_str(const char *path, json_t *root, const char *key, const char *want,
                               const char *why)
{
    json_t *v = json_object_get(root, key);
    char found[128];
    if (!v || json_is_null(v)) return EP_OK;
    if (!json_is_string(v) || strcmp(json_string_value(v), want) != 0)
        return ep_errorf(EP_ERR_UNSUPPORTED, "%s: key '%s': expected \"%s\" (%s), found %s", path,
                         key, want, why, json_describe(v, found, sizeof found));
    return EP_OK;
}

static ep_status hf_common(const char *path, json_t *r, ep_model_cfg *c)
{
    ep_status st;
    if ((st = js_int(path, r, "hidden_size", true, &c->hidden)) ||
        (st = js_int(path, r, "num_hidden_layers", true, &c->n_layers)) ||
        (st = js_int(path, r, "num_attention_heads", true, &c->n_heads)) ||
        (st = js_int(path, r, "intermediate_size", true, &c->intermediate)) ||
        (st = js_int(path, r, "vocab_size", true, &c->vocab)) ||
        (st = js_int(path, r, "max_position_embeddings", true, &c->max_pos)) ||
        (st = js_float(path, r, "rms_norm_eps", true, &c->rms_eps)) ||
        (st = js_float(path, r, "rope_theta", true, &c->rope_theta)) ||
        (st = js_bool(path, r, "tie_word_embeddings", false, &c->tie_embeddings)) ||
        (st = js_int(path, r, "num_experts_per_tok", true, &c->k_base)) ||
        (st = js_int(path, r, "moe_intermediate_size", true, &c->moe_inter)) ||
        (st = js_bool(path, r, "norm_topk_prob", true, &c->norm_topk_prob)) ||
        (st = js_expect_str(path, r, "hidden_act", "silu", "experts are SwiGLU")) ||
        (st = hf_synth(path, r, c)))
        return st;
    json_t *seed = json_object_get(r, "epserve_seed");
    if (!seed || json_is_null(seed)) return EP_OK;
    if (json_is_integer(seed) && json_integer_value(seed) >= 0) {
        c->seed = (uint64_t)json_integer_value(seed);
        return EP_OK;
    }
    // Seeds above 2^63 - 1 are written as decimal strings (jansson integers are signed).
    if (json_is_string(seed)) {
        const char *s = json_string_value(seed);
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (s[0] >= '0' && s[0] <= '9' && *end == '\0' && errno == 0) {
            c->seed = v;
            return EP_OK;
        }
    }
    char found[128];
    return ep_errorf(EP_ERR_CONFIG,
                     "%s: key 'epserve_seed': expected a non-negative integer, found %s", path,
                     json_describe(seed, found, sizeof found));
}

static ep_status hf_yarn(const char *path, json_t *rs, ep_model_cfg *c);

static ep_status hf_qwen3(const char *path, json_t *r, ep_model_cfg *c)
{
    ep_status st;
    char found[128];
    c->arch = EP_ARCH_QWEN3_MOE;
    ep_model_cfg_qwen3_yarn_defaults(c);
    if ((st = js_int(path, r, "num_key_value_heads", true, &c->n_kv_heads)) ||
        (st = js_int(path, r, "head_dim", true, &c->head_dim)) ||
        (st = js_int(path, r, "num_experts", true, &c->n_experts)))
        return st;
    // FACTS: every layer is MoE for the served configs (decoder_sparse_step 1, mlp_only_layers []).
    json_t *v = json_object_get(r, "decoder_sparse_step");
    if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'decoder_sparse_step': epserve supports only all-MoE Qwen3 "
                         "layers: expected 1, found %s",
                         path, json_describe(v, found, sizeof found));
    v = json_object_get(r, "mlp_only_layers");
    if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'mlp_only_layers': epserve supports only all-MoE Qwen3 layers: "
                         "expected [], found %s",
                         path, json_describe(v, found, sizeof found));
    v = json_object_get(r, "rope_scaling");
    if (v && !json_is_null(v) && (st = hf_yarn(path, v, c))) return st;
    v = json_object_get(r, "use_sliding_window");
    if (json_is_true(v))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'use_sliding_window': sliding-window attention is not "
                         "implemented: expected false, found true",
                         path);
    c->qk_norm = true;
    c->n_shared = 0;
    c->first_k_dense = 0;
    c->topk_method = EP_TOPK_GREEDY;
    c->n_group = c->topk_group = 1;
    c->routed_scaling_factor = 1.0f;
    return EP_OK;
}

// ---- rope_scaling -------------------------------------------------------------

// The keys each family's YaRN reads. DeepSeek-V2: its modeling code's
// DeepseekV2YarnRotaryEmbedding; Qwen3: transformers' _compute_yarn_parameters
// and its validator's required and optional keys (partial_rotary_factor and
// rope_theta are checked, not used: they must agree with the rest).
static const char *const YARN_KEYS_DS[] = {
    "type",      "rope_type", "factor", "original_max_position_embeddings",
    "beta_fast", "beta_slow", "mscale", "mscale_all_dim"};
static const char *const YARN_KEYS_QWEN3[] = {"type",
                                              "rope_type",
                                              "factor",
                                              "original_max_position_embeddings",
                                              "beta_fast",
                                              "beta_slow",
                                              "mscale",
                                              "mscale_all_dim",
                                              "attention_factor",
                                              "truncate",
                                              "partial_rotary_factor",
                                              "rope_theta"};

// rope_scaling of config.json: only YaRN, only the keys the family's reference
// reads (anything else is refused by name rather than ignored).
static ep_status hf_yarn(const char *path, json_t *rs, ep_model_cfg *c)
{
    char found[128];
    bool q = c->arch == EP_ARCH_QWEN3_MOE;
    const char *fam = q ? "qwen3_moe" : "deepseek_v2";
    if (!json_is_object(rs))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'rope_scaling': expected null or an object, found %s", path,
                         json_describe(rs, found, sizeof found));
    // "rope_type" is the newer transformers spelling of "type".
    json_t *t = json_object_get(rs, "rope_type"), *t_old = json_object_get(rs, "type");
    const char *tkey = t ? "rope_scaling.rope_type" : "rope_scaling.type";
    if (!t) t = t_old;
    if (!json_is_string(t) || strcmp(json_string_value(t), "yarn") != 0)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key '%s': expected \"yarn\" (the only rope scaling epserve "
                         "implements), found %s",
                         path, tkey, json_describe(t, found, sizeof found));
    if (t_old && t != t_old && !json_equal(t, t_old))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'rope_scaling.type': expected the same as rope_type (\"yarn\"), "
                         "found %s",
                         path, json_describe(t_old, found, sizeof found));
    const char *const *keys = q ? YARN_KEYS_QWEN3 : YARN_KEYS_DS;
    size_t n_keys = q ? EP_ARRAY_LEN(YARN_KEYS_QWEN3) : EP_ARRAY_LEN(YARN_KEYS_DS);
    const char *k;
    json_t *v;
    json_object_foreach(rs, k, v)
    {
        size_t i = 0;
        while (i < n_keys && strcmp(keys[i], k))
            i++;
        if (i < n_keys) continue;
        char list[512];
        size_t o = 0;
        for (i = 0; i < n_keys && o < sizeof list; i++)
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", keys[i]);
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'rope_scaling.%s': not a YaRN parameter epserve reads for %s "
                         "(expected one of: %s)",
                         path, k, fam, list);
    }
    c->has_yarn = true;
    ep_status st;
    if ((st = js_float(path, rs, "rope_scaling.factor", true, &c->yarn_factor)) ||
        (st = js_int(path, rs, "rope_scaling.original_max_position_embeddings", true,
                     &c->yarn_orig_max_pos)) ||
        (st = js_float(path, rs, "rope_scaling.beta_fast", false, &c->yarn_beta_fast)) ||
        (st = js_float(path, rs, "rope_scaling.beta_slow", false, &c->yarn_beta_slow)) ||
        (st = js_float(path, rs, "rope_scaling.mscale", false, &c->yarn_mscale)) ||
        (st = js_float(path, rs, "rope_scaling.mscale_all_dim", false, &c->yarn_mscale_all_dim)))
        return st;
    if (!q) return EP_OK;
    if ((st = js_float(path, rs, "rope_scaling.attention_factor", false, &c->yarn_attn_factor)) ||
        (st = js_bool(path, rs, "rope_scaling.truncate", false, &c->yarn_truncate)))
        return st;
    // transformers reads beta_fast / beta_slow with `or`: 0 stands for the default.
    if (c->yarn_beta_fast == 0.0f) c->yarn_beta_fast = 32.0f;
    if (c->yarn_beta_slow == 0.0f) c->yarn_beta_slow = 1.0f;
    float prf = 1.0f, theta = c->rope_theta;
    if ((st = js_float(path, rs, "rope_scaling.partial_rotary_factor", false, &prf)) ||
        (st = js_float(path, rs, "rope_scaling.rope_theta", false, &theta)))
        return st;
    if (prf != 1.0f)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'rope_scaling.partial_rotary_factor': Qwen3 rotates all of "
                         "head_dim: expected 1, found %g",
                         path, (double)prf);
    if (theta != c->rope_theta)
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'rope_scaling.rope_theta': expected the top-level rope_theta "
                         "(%g), found %g",
                         path, (double)c->rope_theta, (double)theta);
    return EP_OK;
}

static ep_status hf_deepseek(const char *path, json_t *r, ep_model_cfg *c)
{
    ep_status st;
    char found[128];
    c->arch = EP_ARCH_DEEPSEEK_V2;
    c->n_kv_heads = c->n_heads; // MLA: HF's num_key_value_heads is not used by the attention
    c->qk_norm = false;
    if ((st = js_int(path, r, "n_routed_experts", true, &c->n_experts)) ||
        (st = js_int(path, r, "n_shared_experts", true, &c->n_shared)) ||
        (st = js_int(path, r, "first_k_dense_replace", true, &c->first_k_dense)) ||
        (st = js_int(path, r, "n_group", false, &c->n_group)) ||
        (st = js_int(path, r, "topk_group", false, &c->topk_group)) ||
        (st = js_float(path, r, "routed_scaling_factor", false, &c->routed_scaling_factor)) ||
        (st = js_int(path, r, "kv_lora_rank", true, &c->kv_lora_rank)) ||
        (st = js_int(path, r, "qk_nope_head_dim", true, &c->qk_nope_dim)) ||
        (st = js_int(path, r, "qk_rope_head_dim", true, &c->qk_rope_dim)) ||
        (st = js_int(path, r, "v_head_dim", true, &c->v_head_dim)) ||
        (st = js_expect_str(path, r, "scoring_func", "softmax", "DeepSeek-V2 gates use softmax")))
        return st;
    // q_lora_rank must be present; null means no q LoRA (V2-Lite).
    if (!json_object_get(r, "q_lora_rank"))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'q_lora_rank': expected an integer or null, found no such key",
                         path);
    if ((st = js_int(path, r, "q_lora_rank", false, &c->q_lora_rank))) return st;

    json_t *tm;
    if ((st = js_get(path, r, "topk_method", "a string", true, &tm))) return st;
    const char *m = json_is_string(tm) ? json_string_value(tm) : "";
    // Some DeepSeek copies spell greedy as "gready" (FACTS.md).
    if (!strcmp(m, "greedy") || !strcmp(m, "gready"))
        c->topk_method = EP_TOPK_GREEDY;
    else if (!strcmp(m, "group_limited_greedy"))
        c->topk_method = EP_TOPK_GROUP_LIMITED;
    else
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'topk_method': expected \"greedy\" or \"group_limited_greedy\", "
                         "found %s",
                         path, json_describe(tm, found, sizeof found));

    json_t *v = json_object_get(r, "moe_layer_freq");
    if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'moe_layer_freq': epserve supports MoE in every layer after "
                         "first_k_dense_replace: expected 1, found %s",
                         path, json_describe(v, found, sizeof found));
    v = json_object_get(r, "rope_scaling");
    if (v && !json_is_null(v) && (st = hf_yarn(path, v, c))) return st;
    return EP_OK;
}

// quantization_config (FACTS.md: Qwen3-*-FP8 and DeepSeek-V3 write
// {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
// "weight_block_size": [128, 128]}). Only that scheme loads; every other
// value of those keys is refused by name, never read as something else.
// fmt and activation_scheme may be absent (HF's FP8 config knows only e4m3
// and defaults to dynamic); weight_block_size may not: without it an "fp8"
// checkpoint is per-tensor FP8 (weight_scale, input_scale), which epserve
// does not read. modules_to_not_convert is not needed: each tensor's dtype
// says whether it is FP8, and the loader checks that every FP8 tensor has
// its scales.
static ep_status hf_quant(const char *path, json_t *r, ep_model_cfg *c)
{
    char found[128];
    json_t *q = json_object_get(r, "quantization_config");
    if (!q || json_is_null(q)) return EP_OK;
    if (!json_is_object(q))
        return ep_errorf(EP_ERR_CONFIG,
                         "%s: key 'quantization_config': expected null or an object, found %s",
                         path, json_describe(q, found, sizeof found));
    json_t *m = json_object_get(q, "quant_method");
    if (!json_is_string(m) || strcmp(json_string_value(m), "fp8") != 0)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'quantization_config.quant_method': expected \"fp8\" "
                         "(block-quantized FP8, the only quantization epserve loads), found %s",
                         path, json_describe(m, found, sizeof found));
    json_t *f = json_object_get(q, "fmt");
    if (f && !json_is_null(f) && !(json_is_string(f) && !strcmp(json_string_value(f), "e4m3")))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'quantization_config.fmt': expected \"e4m3\" (F8_E4M3 "
                         "weights), found %s",
                         path, json_describe(f, found, sizeof found));
    json_t *a = json_object_get(q, "activation_scheme");
    if (a && !json_is_null(a) && !(json_is_string(a) && !strcmp(json_string_value(a), "dynamic")))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'quantization_config.activation_scheme': expected \"dynamic\" "
                         "(epserve dequantizes the weights at load and never reads input "
                         "scales), found %s",
                         path, json_describe(a, found, sizeof found));
    json_t *b = json_object_get(q, "weight_block_size");
    bool ok = json_is_array(b) && json_array_size(b) == 2;
    for (size_t i = 0; ok && i < 2; i++) {
        json_t *v = json_array_get(b, i);
        ok = json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) <= INT_MAX;
        if (ok) c->quant_block[i] = (int)json_integer_value(v);
    }
    if (!ok)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "%s: key 'quantization_config.weight_block_size': expected [rows, cols] "
                         "of two positive integers (block-scaled FP8; per-tensor FP8 is not "
                         "supported), found %s",
                         path, b ? json_describe(b, found, sizeof found) : "no such key");
    c->quant = EP_QUANT_FP8_BLOCK;
    return EP_OK;
}

ep_status ep_model_cfg_from_hf_json(const char *path, ep_model_cfg *cfg)
{
    ep_model_cfg c;
    ep_model_cfg_defaults(&c);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    json_error_t jerr;
    json_t *r = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!r)
        return ep_errorf(EP_ERR_FORMAT, "%s: not valid JSON (line %d, column %d): %s", path,
                         jerr.line, jerr.column, jerr.text);
    ep_status st;
    char found[128];
    json_t *mt = json_object_get(r, "model_type");
    if (!json_is_object(r)) {
        st = ep_errorf(EP_ERR_CONFIG, "%s: expected a JSON object, found %s", path,
                       ep_json_type_name(r));
    } else if (!json_is_string(mt)) {
        st = ep_errorf(EP_ERR_CONFIG,
                       "%s: key 'model_type': expected \"qwen3_moe\" or \"deepseek_v2\", found %s",
                       path, mt ? json_describe(mt, found, sizeof found) : "no such key");
    } else if (!strcmp(json_string_value(mt), "qwen3_moe")) {
        if (!(st = hf_common(path, r, &c))) st = hf_qwen3(path, r, &c);
    } else if (!strcmp(json_string_value(mt), "deepseek_v2")) {
        if (!(st = hf_common(path, r, &c))) st = hf_deepseek(path, r, &c);
    } else {
        st = ep_errorf(EP_ERR_UNSUPPORTED,
                       "%s: key 'model_type': expected \"qwen3_moe\" or \"deepseek_v2\", found "
                       "\"%s\"",
                       path, json_string_value(mt));
    }
    if (st == EP_OK) st = hf_quant(path, r, &c);
    json_decref(r);
    if (st != EP_OK) return st;

    char dir[1024];
    ep_path_dir(path, dir, sizeof dir);
    if (strlen(dir) >= sizeof c.checkpoint || strlen(path) >= sizeof c.source)
        return ep_errorf(EP_ERR_ARG, "%s: path longer than %zu characters", path,
                         sizeof c.checkpoint - 1);
    ep_copy_str(c.checkpoint, sizeof c.checkpoint, dir);
    ep_copy_str(c.source, sizeof c.source, path);
    // The model's name is its directory's name, as HF hub repos are named.
    char abs[PATH_MAX];
    const char *base = dir;
    if (realpath(dir, abs)) base = abs;
    const char *slash = strrchr(base, '/');
    // A longer directory name is cut: the name is a label, the path is in checkpoint.
    snprintf(c.name, sizeof c.name, "%.*s", (int)sizeof c.name - 1,
             slash && slash[1] ? slash + 1 : base);
    if ((st = ep_model_cfg_validate(&c)) != EP_OK) return st;
    *cfg = c;
    return EP_OK;
}

static json_t *jfloat(float f)
{
    return json_real(ep_json_float(f));
}

static int list_unconverted(void *user, const char *name, int ndim, const int64_t *shape)
{
    (void)shape;
    size_t n = strlen(name);
    if (ndim == 2 && !ep_model_tensor_is_fp8(name, ndim) && n > 7 &&
        !strcmp(name + n - 7, ".weight"))
        json_array_append_new(user, json_stringn(name, n - 7));
    return 0;
}

// quantization_config as the published FP8 checkpoints write it, plus
// modules_to_not_convert: the modules whose 2-D weight stays BF16.
static void hf_write_quant(const ep_model_cfg *c, json_t *r)
{
    if (c->quant != EP_QUANT_FP8_BLOCK) return;
    json_t *q = json_object();
    json_object_set_new(q, "quant_method", json_string("fp8"));
    json_object_set_new(q, "fmt", json_string("e4m3"));
    json_object_set_new(q, "activation_scheme", json_string("dynamic"));
    json_object_set_new(q, "weight_block_size",
                        json_pack("[ii]", c->quant_block[0], c->quant_block[1]));
    json_t *keep = json_array();
    ep_model_for_each_tensor(c, list_unconverted, keep);
    json_object_set_new(q, "modules_to_not_convert", keep);
    json_object_set_new(r, "quantization_config", q);
}

// rope_scaling as each family's published configs spell it: DeepSeek-V2
// every key under "type"; Qwen3's README the three under "rope_type", plus
// whatever differs from transformers' defaults.
static json_t *hf_rope_scaling(const ep_model_cfg *c)
{
    if (!c->has_yarn) return json_null();
    json_t *y = json_object();
    if (c->arch == EP_ARCH_DEEPSEEK_V2) {
        json_object_set_new(y, "type", json_string("yarn"));
        json_object_set_new(y, "factor", jfloat(c->yarn_factor));
        json_object_set_new(y, "original_max_position_embeddings",
                            json_integer(c->yarn_orig_max_pos));
        json_object_set_new(y, "beta_fast", jfloat(c->yarn_beta_fast));
        json_object_set_new(y, "beta_slow", jfloat(c->yarn_beta_slow));
        json_object_set_new(y, "mscale", jfloat(c->yarn_mscale));
        json_object_set_new(y, "mscale_all_dim", jfloat(c->yarn_mscale_all_dim));
        return y;
    }
    json_object_set_new(y, "rope_type", json_string("yarn"));
    json_object_set_new(y, "factor", jfloat(c->yarn_factor));
    json_object_set_new(y, "original_max_position_embeddings", json_integer(c->yarn_orig_max_pos));
    if (c->yarn_beta_fast != 32.0f) json_object_set_new(y, "beta_fast", jfloat(c->yarn_beta_fast));
    if (c->yarn_beta_slow != 1.0f) json_object_set_new(y, "beta_slow", jfloat(c->yarn_beta_slow));
    if (c->yarn_mscale != 0.0f) json_object_set_new(y, "mscale", jfloat(c->yarn_mscale));
    if (c->yarn_mscale_all_dim != 0.0f)
        json_object_set_new(y, "mscale_all_dim", jfloat(c->yarn_mscale_all_dim));
    if (c->yarn_attn_factor != 0.0f)
        json_object_set_new(y, "attention_factor", jfloat(c->yarn_attn_factor));
    if (!c->yarn_truncate) json_object_set_new(y, "truncate", json_false());
    return y;
}

ep_status ep_model_cfg_write_hf_json(const ep_model_cfg *c, const char *path)
{
    const ep_hf_json_extra x = {.torch_dtype = "bfloat16", .bos_token_id = -1, .eos_token_id = -1};
    return ep_model_cfg_write_hf_json_ex(c, &x, path);
}

ep_status ep_model_cfg_write_hf_json_ex(const ep_model_cfg *c, const ep_hf_json_extra *x,
                                        const char *path)
{
    ep_status st = ep_model_cfg_validate(c);
    if (st != EP_OK) return st;
    bool q = c->arch == EP_ARCH_QWEN3_MOE;
    json_t *r = json_object();
    json_object_set_new(r, "architectures",
                        json_pack("[s]", q ? "Qwen3MoeForCausalLM" : "DeepseekV2ForCausalLM"));
    json_object_set_new(r, "model_type", json_string(q ? "qwen3_moe" : "deepseek_v2"));
    json_object_set_new(r, "torch_dtype", json_string(x->torch_dtype));
    json_object_set_new(r, "hidden_size", json_integer(c->hidden));
    json_object_set_new(r, "intermediate_size", json_integer(c->intermediate));
    json_object_set_new(r, "moe_intermediate_size", json_integer(c->moe_inter));
    json_object_set_new(r, "num_hidden_layers", json_integer(c->n_layers));
    json_object_set_new(r, "num_attention_heads", json_integer(c->n_heads));
    json_object_set_new(r, "num_key_value_heads", json_integer(c->n_kv_heads));
    if (q) {
        json_object_set_new(r, "head_dim", json_integer(c->head_dim));
        json_object_set_new(r, "num_experts", json_integer(c->n_experts));
        json_object_set_new(r, "num_experts_per_tok", json_integer(c->k_base));
        json_object_set_new(r, "norm_topk_prob", json_boolean(c->norm_topk_prob));
        json_object_set_new(r, "decoder_sparse_step", json_integer(1));
        json_object_set_new(r, "mlp_only_layers", json_array());
        json_object_set_new(r, "output_router_logits", json_false());
        json_object_set_new(r, "router_aux_loss_coef", json_real(0.001));
        json_object_set_new(r, "use_sliding_window", json_false());
        json_object_set_new(r, "sliding_window", json_null());
        json_object_set_new(r, "max_window_layers", json_integer(c->n_layers));
    } else {
        json_object_set_new(r, "n_routed_experts", json_integer(c->n_experts));
        json_object_set_new(r, "n_shared_experts", json_integer(c->n_shared));
        json_object_set_new(r, "num_experts_per_tok", json_integer(c->k_base));
        json_object_set_new(r, "first_k_dense_replace", json_integer(c->first_k_dense));
        json_object_set_new(r, "moe_layer_freq", json_integer(1));
        json_object_set_new(
            r, "topk_method",
            json_string(c->topk_method == EP_TOPK_GREEDY ? "greedy" : "group_limited_greedy"));
        json_object_set_new(r, "n_group", json_integer(c->n_group));
        json_object_set_new(r, "topk_group", json_integer(c->topk_group));
        json_object_set_new(r, "norm_topk_prob", json_boolean(c->norm_topk_prob));
        json_object_set_new(r, "routed_scaling_factor", jfloat(c->routed_scaling_factor));
        json_object_set_new(r, "scoring_func", json_string("softmax"));
        json_object_set_new(r, "aux_loss_alpha", json_real(0.001));
        json_object_set_new(r, "seq_aux", json_true());
        json_object_set_new(r, "q_lora_rank",
                            c->q_lora_rank ? json_integer(c->q_lora_rank) : json_null());
        json_object_set_new(r, "kv_lora_rank", json_integer(c->kv_lora_rank));
        json_object_set_new(r, "qk_nope_head_dim", json_integer(c->qk_nope_dim));
        json_object_set_new(r, "qk_rope_head_dim", json_integer(c->qk_rope_dim));
        json_object_set_new(r, "v_head_dim", json_integer(c->v_head_dim));
    }
    json_object_set_new(r, "rope_scaling", hf_rope_scaling(c));
    json_object_set_new(r, "max_position_embeddings", json_integer(c->max_pos));
    json_object_set_new(r, "vocab_size", json_integer(c->vocab));
    json_object_set_new(r, "rms_norm_eps", jfloat(c->rms_eps));
    json_object_set_new(r, "rope_theta", jfloat(c->rope_theta));
    json_object_set_new(r, "tie_word_embeddings", json_boolean(c->tie_embeddings));
    json_object_set_new(r, "hidden_act", json_string("silu"));
    json_object_set_new(r, "attention_bias", json_false());
    json_object_set_new(r, "attention_dropout", json_real(0.0));
    json_object_set_new(r, "initializer_range", json_real(0.02));
    json_object_set_new(r, "use_cache", json_true());
    if (x->bos_token_id >= 0) json_object_set_new(r, "bos_token_id", json_integer(x->bos_token_id));
    if (x->eos_token_id >= 0) json_object_set_new(r, "eos_token_id", json_integer(x->eos_token_id));
    if (c->seed <= (uint64_t)INT64_MAX) {
        json_object_set_new(r, "epserve_seed", json_integer((json_int_t)c->seed));
    } else {
        char s[32];
        snprintf(s, sizeof s, "%llu", (unsigned long long)c->seed);
        json_object_set_new(r, "epserve_seed", json_string(s));
    }
    if (c->synth_conc_set) {
        // The routing inputs' concentration travels with the seed, so that
        // ep_synth_hidden on the checkpoint's config routes as the preset's.
        json_t *sy = json_object();
        json_object_set_new(sy, "concentration_median", json_real(c->synth_conc_median));
        json_object_set_new(sy, "concentration_sigma_token", json_real(c->synth_conc_sigma_token));
        json_object_set_new(sy, "concentration_sigma_layer", json_real(c->synth_conc_sigma_layer));
        json_object_set_new(r, "epserve_synth", sy);
    }
    hf_write_quant(c, r);
    st = ep_json_write_atomic(path, r, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(r);
    return st;
}
