// libFuzzer target: an epserve model YAML (configs/models/*.yaml). What
// ep_model_cfg_from_yaml accepts must pass validation and must enumerate its
// tensors with non-negative shapes whose element counts do not overflow (the
// first 200000 of them).
// Does not open checkpoints (the YAML only names one).
#include "fuzz_util.h"

#include <stdlib.h>

static int count_tensor(void *user, const char *name, int ndim, const int64_t *shape)
{
    EP_FUZZ_CHECK(name && name[0] && ndim >= 1 && ndim <= 8);
    int64_t elems = 1;
    for (int d = 0; d < ndim; d++) {
        EP_FUZZ_CHECK(shape[d] > 0 && elems <= INT64_MAX / shape[d]);
        elems *= shape[d];
    }
    // A valid config can name hundreds of millions of tensors (a YAML
    // reached 422048 layers x 64 experts and took libFuzzer's 10 s per
    // input); the first 200000 check the same code, then the walk stops,
    // which also exercises stopping it.
    return ++*(long *)user >= 200000;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ep_log_set_level(EP_LOG_ERROR);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = ep_fuzz_file("model.yaml", data, size);
    ep_model_cfg cfg;
    if (ep_model_cfg_from_yaml(path, &cfg) != EP_OK) return 0;
    EP_FUZZ_CHECK(ep_model_cfg_validate(&cfg) == EP_OK);
    int moe = ep_model_n_moe_layers(&cfg);
    EP_FUZZ_CHECK(moe >= 0 && moe <= cfg.n_layers);
    long n = 0;
    ep_model_for_each_tensor(&cfg, count_tensor, &n);
    EP_FUZZ_CHECK(n > 0);
    ep_fuzz_accepted();
    return 0;
}
