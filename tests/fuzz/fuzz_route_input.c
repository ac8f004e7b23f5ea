// libFuzzer target: the input of `epserve route` (raw little-endian float32
// gate logits, T rows x n_experts) together with the token count, layer,
// model and policy the command line would give. Byte 0 picks model, policy
// and whether T comes from the input (8 raw bytes, to reach the size
// arithmetic) or from the file size; byte 1 picks the layer. Accepted runs
// must write one JSON line per token. Does not parse the command line itself.
#include "fuzz_util.h"
#include "router/policy.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static ep_model_cfg g_models[2];
static ep_policy *g_pol[2][EP_POLICY_COUNT];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ep_fuzz_load_preset("tiny-qwen3-moe", &g_models[0]);
    ep_fuzz_load_preset("tiny-deepseek-v2", &g_models[1]);
    for (int m = 0; m < 2; m++)
        for (int k = 0; k < EP_POLICY_COUNT; k++)
            if (ep_policy_create(&g_models[m], ep_policy_kind_name((ep_policy_kind)k),
                                 &g_pol[m][k]) != EP_OK)
                ep_fuzz_fail(__FILE__, __LINE__, "policy preset");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    const int m = data[0] & 1, k = (data[0] >> 1) % EP_POLICY_COUNT;
    const bool raw_t = data[0] & 0x80;
    const ep_model_cfg *cfg = &g_models[m];
    const int layer = (int)(int8_t)data[1] % (cfg->n_layers + 2); // also out of range
    data += 2, size -= 2;
    int64_t T;
    if (raw_t) {
        if (size < 8) return 0;
        uint64_t u = 0;
        for (int i = 7; i >= 0; i--)
            u = u << 8 | data[i];
        memcpy(&T, &u, sizeof T);
        data += 8, size -= 8;
    } else {
        T = (int64_t)(size / ((size_t)cfg->n_experts * 4));
    }
    char in[1024], out[1024];
    snprintf(in, sizeof in, "%s", ep_fuzz_file("logits.f32", data, size));
    snprintf(out, sizeof out, "%s", ep_fuzz_path("routes.jsonl"));
    unlink(out);
    if (ep_route_file(cfg, g_pol[m][k], layer, in, T, out) != EP_OK) return 0;

    EP_FUZZ_CHECK(T >= 0 && (uint64_t)T * (uint64_t)cfg->n_experts * 4 == size);
    FILE *f = fopen(out, "r");
    EP_FUZZ_CHECK(f != NULL);
    int64_t lines = 0;
    for (int c; (c = fgetc(f)) != EOF;)
        lines += c == '\n';
    fclose(f);
    EP_FUZZ_CHECK(lines == T);
    ep_fuzz_accepted();
    return 0;
}
