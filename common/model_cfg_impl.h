// Internals shared by model_cfg.c (YAML, validation) and model_cfg_hf.c
// (config.json). Not for use outside common/.
#ifndef EP_MODEL_CFG_IMPL_H
#define EP_MODEL_CFG_IMPL_H

#include "common/model_cfg.h"

#include <string.h>

// Zeroes cfg and sets the defaults of optional keys (HF's defaults: n_group
// and topk_group 1, greedy, routed_scaling_factor 1, YaRN beta_fast 32,
// beta_slow 1, mscale 1, mscale_all_dim 0, truncate true).
void ep_model_cfg_defaults(ep_model_cfg *c);
// Qwen3's YaRN defaults (transformers' _compute_yarn_parameters): mscale and
// mscale_all_dim not given (0), attention_factor not given (0), truncate true.
void ep_model_cfg_qwen3_yarn_defaults(ep_model_cfg *c);
// The directory part of path ("." when none, "/" for a root file), into buf.
void ep_path_dir(const char *path, char *buf, size_t n);

// Copies src into dst[n], cutting it to n - 1 characters (callers that must
// not cut check the length first). memcpy, so no format-truncation warnings.
static inline void ep_copy_str(char *dst, size_t n, const char *src)
{
    size_t len = strlen(src);
    if (len >= n) len = n - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

#endif
