// The router kernel on the device against the CPU router: baseline and Ban
// on the odd test models, a grouped (DeepSeek) variant and the two tiny
// presets. Logits are spread on a grid (neighbours at least 0.05 apart) so
// that the device's expf, which may differ from glibc's in the last bits,
// cannot reorder candidates: kept experts and the counterfactual must then
// be identical and weights within 1e-5 relative. K may differ only where
// Ban's K_min + (k_base - K_min) * lambda * S lies within 1e-4 of an integer.
// Skips (77) without a device.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/weights.h"
#include "cuda_test_util.h"
#include "router/cuda/router_cuda.h"
#include "router/policy.h"

static ep_gpu *gpu;

// Row t: a random permutation of a grid 0.05 apart, scaled around 0.
static void grid_logits(float *x, int T, int E, uint64_t seed)
{
    ep_rng r;
    ep_rng_seed(&r, seed);
    for (int t = 0; t < T; t++) {
        float *row = x + (size_t)t * E;
        for (int e = 0; e < E; e++)
            row[e] = 0.05f * (float)(e - E / 2);
        for (int e = E - 1; e > 0; e--) {
            int j = (int)(ep_rng_next(&r) % (uint64_t)(e + 1));
            float v = row[e];
            row[e] = row[j];
            row[j] = v;
        }
    }
}

static bool near_integer(double x)
{
    return fabs(x - floor(x + 0.5)) <= 1e-4;
}

static void compare(const ep_model_cfg *c, const char *policy)
{
    const int T = 41, E = c->n_experts;
    ep_policy *p;
    assert_int_equal(ep_policy_create(c, policy, &p), EP_OK);
    ep_router *cpu;
    ep_router_cuda *dev;
    assert_int_equal(ep_router_init(c, T, &cpu), EP_OK);
    assert_int_equal(ep_router_cuda_init(c, T, gpu, &dev), EP_OK);
    ep_routes a, b;
    ep_routes_init(&a, T, ep_policy_max_k(p), c->k_base);
    ep_routes_init(&b, T, ep_policy_max_k(p), c->k_base);
    float *logits = malloc(sizeof(float) * T * E), *score = malloc(sizeof(float) * E);
    int *cand = malloc(sizeof(int) * E);
    float *cand_score = malloc(sizeof(float) * E);
    int excused = 0;
    for (int layer = c->first_k_dense; layer < c->n_layers; layer++) {
        grid_logits(logits, T, E, 90 + layer);
        assert_int_equal(ep_router_route_logits(cpu, p, layer, logits, T, &a), EP_OK);
        assert_int_equal(ep_router_cuda_route_logits(dev, p, layer, logits, T, &b), EP_OK);
        assert_int_equal(b.n_tokens, T);
        assert_memory_equal(a.base_expert, b.base_expert, sizeof(int) * T * c->k_base);
        for (int i = 0; i < T * c->k_base; i++)
            assert_true(fabsf(a.base_weight[i] - b.base_weight[i]) <=
                        1e-5f * fabsf(a.base_weight[i]));
        for (int t = 0; t < T; t++) {
            const int ka = ep_routes_k(&a, t), kb = ep_routes_k(&b, t);
            if (ka != kb) {
                // Only Ban's floor at an integer boundary may tip either way.
                memcpy(score, logits + (size_t)t * E, sizeof(float) * E);
                ep_router_softmax(score, E);
                int n = ep_router_topk(score, E, E, NULL, cand);
                for (int j = 0; j < n; j++)
                    cand_score[j] = score[cand[j]];
                float S = 0;
                ep_ban_k(&p->cfg, p->params.ban_lterm[layer], cand_score, n, NULL, &S);
                double x = p->cfg.ban.k_min +
                           (double)(c->k_base - p->cfg.ban.k_min) * p->cfg.ban.lambda * S;
                assert_true(p->cfg.policy == EP_POLICY_BAN && near_integer(x));
                excused++;
                continue;
            }
            for (int j = 0; j < ka; j++) {
                assert_int_equal(a.expert[a.offsets[t] + j], b.expert[b.offsets[t] + j]);
                const float wa = a.weight[a.offsets[t] + j], wb = b.weight[b.offsets[t] + j];
                assert_true(fabsf(wa - wb) <= 1e-5f * fabsf(wa));
            }
        }
    }
    printf("# %s %s: device routes match the CPU router (%d tokens excused at a Ban boundary)\n",
           c->name, policy, excused);
    free(logits);
    free(score);
    free(cand);
    free(cand_score);
    ep_routes_free(&a);
    ep_routes_free(&b);
    ep_router_cuda_free(dev);
    ep_router_free(cpu);
    ep_policy_free(p);
}

static void test_router_device(void **state)
{
    ep_model_cfg c;
    cuda_test_cfg_qwen(&c);
    compare(&c, "baseline");
    compare(&c, "ban");
    cuda_test_cfg_deepseek(&c);
    c.n_experts = 12; // grouped: 4 groups of 3, best 2
    c.n_group = 4;
    c.topk_group = 2;
    c.topk_method = EP_TOPK_GROUP_LIMITED;
    compare(&c, "baseline");
    compare(&c, "ban");
    const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++) {
        assert_int_equal(ep_model_cfg_load(presets[i], &c), EP_OK);
        compare(&c, "baseline");
        compare(&c, "ban");
    }
}

static void test_router_device_errors(void **state)
{
    ep_model_cfg c;
    cuda_test_cfg_qwen(&c);
    ep_router_cuda *dev;
    assert_int_equal(ep_router_cuda_init(&c, 5, gpu, &dev), EP_OK);
    ep_policy *pick;
    assert_int_equal(ep_policy_create(&c, "pick", &pick), EP_OK);
    ep_routes r;
    ep_routes_init(&r, 8, ep_policy_max_k(pick), c.k_base);
    float logits[8 * 11] = {0};
    assert_int_equal(ep_router_cuda_route_logits(dev, pick, 0, logits, 2, &r), EP_ERR_UNSUPPORTED);
    ep_policy *base;
    assert_int_equal(ep_policy_create(&c, "baseline", &base), EP_OK);
    assert_int_equal(ep_router_cuda_route_logits(dev, base, 0, logits, 8, &r), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "capacity is 5"));
    assert_int_equal(ep_router_cuda_route_logits(dev, base, 0, logits, 0, &r), EP_OK);
    assert_int_equal(r.n_tokens, 0);
    ep_routes_free(&r);
    ep_policy_free(pick);
    ep_policy_free(base);
    ep_router_cuda_free(dev);
    ep_router_cuda_free(NULL);
}

int main(void)
{
    if (cuda_test_devices("test_cuda_router") == 0) return CUDA_TEST_SKIP;
    if (ep_gpu_open(0, &gpu) != EP_OK) {
        fprintf(stderr, "ep_gpu_open: %s\n", ep_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router_device),
        cmocka_unit_test(test_router_device_errors),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ep_gpu_free(gpu);
    return rc;
}
