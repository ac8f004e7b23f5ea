// libFuzzer target: a Hugging Face config.json (Qwen3-MoE, DeepSeek-V2). What
// ep_model_cfg_from_hf_json accepts must validate, enumerate sane tensor
// shapes, and survive a round trip through ep_model_cfg_write_hf_json with
// the MoE fields unchanged. Does not read weights.
#include "fuzz_util.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

static int check_tensor(void *user, const char *name, int ndim, const int64_t *shape)
{
    EP_FUZZ_CHECK(name && name[0] && ndim >= 1 && ndim <= 8);
    int64_t elems = 1;
    for (int d = 0; d < ndim; d++) {
        EP_FUZZ_CHECK(shape[d] > 0 && elems <= INT64_MAX / shape[d]);
        elems *= shape[d];
    }
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ep_log_set_level(EP_LOG_ERROR);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = ep_fuzz_file("config.json", data, size);
    ep_model_cfg cfg;
    if (ep_model_cfg_from_hf_json(path, &cfg) != EP_OK) return 0;
    EP_FUZZ_CHECK(ep_model_cfg_validate(&cfg) == EP_OK);
    ep_model_for_each_tensor(&cfg, check_tensor, NULL);

    // Written back and read again, the architecture must be the same.
    char out[1024];
    snprintf(out, sizeof out, "%s", ep_fuzz_path("config.json"));
    EP_FUZZ_CHECK(ep_model_cfg_write_hf_json(&cfg, out) == EP_OK);
    ep_model_cfg back;
    EP_FUZZ_CHECK(ep_model_cfg_from_hf_json(out, &back) == EP_OK);
    EP_FUZZ_CHECK(back.arch == cfg.arch && back.hidden == cfg.hidden &&
                  back.n_layers == cfg.n_layers && back.n_experts == cfg.n_experts &&
                  back.k_base == cfg.k_base && back.moe_inter == cfg.moe_inter &&
                  back.n_shared == cfg.n_shared && back.first_k_dense == cfg.first_k_dense &&
                  back.topk_method == cfg.topk_method && back.n_group == cfg.n_group &&
                  back.topk_group == cfg.topk_group && back.norm_topk_prob == cfg.norm_topk_prob);
    ep_fuzz_accepted();
    return 0;
}
