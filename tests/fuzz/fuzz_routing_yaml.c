// libFuzzer target: a routing YAML (configs/routing/*.yaml), checked against
// both tiny presets. What ep_routing_cfg_load accepts must validate, build a
// policy, and read back equal after ep_routing_cfg_write. Does not route
// tokens (fuzz_route_input.c does).
#include "fuzz_util.h"
#include "router/policy.h"

#include <stdio.h>
#include <string.h>

static ep_model_cfg g_models[2];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ep_fuzz_load_preset("tiny-qwen3-moe", &g_models[0]);
    ep_fuzz_load_preset("tiny-deepseek-v2", &g_models[1]);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = ep_fuzz_file("routing.yaml", data, size);
    char path[1024], out[1024];
    snprintf(path, sizeof path, "%s", in);
    snprintf(out, sizeof out, "%s", ep_fuzz_path("routing-out.yaml"));
    for (int m = 0; m < 2; m++) {
        ep_routing_cfg rc;
        memset(&rc, 0x5a, sizeof rc); // the loader must not rely on a zeroed struct
        if (ep_routing_cfg_load(path, &g_models[m], &rc) != EP_OK) continue;
        EP_FUZZ_CHECK(ep_routing_cfg_validate(&rc) == EP_OK);
        ep_policy *p = NULL;
        if (ep_policy_create_cfg(&rc, &p) == EP_OK) {
            EP_FUZZ_CHECK(ep_policy_max_k(p) >= 1);
            ep_policy_free(p);
        }
        EP_FUZZ_CHECK(ep_routing_cfg_write(&rc, &g_models[m], out) == EP_OK);
        ep_routing_cfg back;
        EP_FUZZ_CHECK(ep_routing_cfg_load(out, &g_models[m], &back) == EP_OK);
        EP_FUZZ_CHECK(back.policy == rc.policy);
        ep_routing_cfg_free(&back);
        ep_routing_cfg_free(&rc);
        ep_fuzz_accepted();
    }
    return 0;
}
