// libFuzzer target: routing traces for `epserve bench --routes-from` (JSON
// lines or CSV), loaded against both tiny presets. Accepted traces are
// replayed into ep_routes for every MoE layer and must satisfy the routes
// invariants. Does not run the bench itself.
#include "fuzz_util.h"
#include "sim/trace.h"

#include <stdio.h>
#include <string.h>

#define FUZZ_T 13 // tokens replayed per layer: more than a short trace has rows

static ep_model_cfg g_models[2];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ep_fuzz_load_preset("tiny-qwen3-moe", &g_models[0]);
    ep_fuzz_load_preset("tiny-deepseek-v2", &g_models[1]);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[1024];
    snprintf(path, sizeof path, "%s", ep_fuzz_file("trace.jsonl", data, size));
    for (int m = 0; m < 2; m++) {
        const ep_model_cfg *cfg = &g_models[m];
        const int max_k = 2 * cfg->k_base;
        ep_trace *t = NULL;
        if (ep_trace_load(path, cfg, max_k, &t) != EP_OK) {
            EP_FUZZ_CHECK(t == NULL);
            continue;
        }
        EP_FUZZ_CHECK(ep_trace_rows(t) > 0 && ep_trace_layers(t) > 0);
        ep_routes r;
        ep_routes_init(&r, FUZZ_T, max_k, cfg->k_base);
        for (int l = cfg->first_k_dense; l < cfg->n_layers; l++) {
            ep_trace_fill(t, cfg, l, 3 * l, FUZZ_T, &r);
            for (int i = 0; i < r.n_tokens; i++) {
                EP_FUZZ_CHECK(ep_routes_k(&r, i) >= 1 && ep_routes_k(&r, i) <= max_k);
                for (int j = r.offsets[i]; j < r.offsets[i + 1]; j++)
                    EP_FUZZ_CHECK(r.expert[j] >= 0 && r.expert[j] < cfg->n_experts);
            }
        }
        ep_routes_free(&r);
        ep_trace_free(t);
        ep_fuzz_accepted();
    }
    return 0;
}
