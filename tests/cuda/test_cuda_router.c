// The router kernel on the device against the CPU router: baseline, Ban,
// Pick and Ban&Pick (every strategy) on the odd test models, a grouped
// (DeepSeek) variant and the two tiny presets. Logits are spread on a grid
// (neighbours at least 0.05 apart, Pick's key boosts half a step off it) so
// that the device's expf, which may differ from glibc's in the last bits,
// cannot reorder candidates: kept experts and the counterfactual must then
// be identical and weights within 1e-5 relative. A token's kept set may
// differ only where Ban's K_min + (k_base - K_min) * lambda * S lies within
// 1e-4 of an integer. Skips (77) without a device.
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

// One layer's routes of the CPU (a) and the device (b) from the same logits:
// the counterfactual identical, weights within 1e-5 relative, kept sets
// identical except where Ban's floor sits at an integer boundary (returns
// how many tokens were excused so).
static int same_routes(const ep_model_cfg *c, const ep_policy *p, int layer, const float *logits,
                       const ep_routes *a, const ep_routes *b)
{
    const int T = a->n_tokens, E = c->n_experts;
    const bool ban = p->cfg.policy == EP_POLICY_BAN || p->cfg.policy == EP_POLICY_BANPICK;
    float *score = malloc(sizeof(float) * E), *cand_score = malloc(sizeof(float) * E);
    int *cand = malloc(sizeof(int) * E), excused = 0;
    assert_int_equal(b->n_tokens, T);
    assert_memory_equal(a->base_expert, b->base_expert, sizeof(int) * T * c->k_base);
    for (int i = 0; i < T * c->k_base; i++)
        assert_true(fabsf(a->base_weight[i] - b->base_weight[i]) <=
                    1e-5f * fabsf(a->base_weight[i]));
    for (int t = 0; t < T; t++) {
        const int ka = ep_routes_k(a, t), kb = ep_routes_k(b, t);
        bool same = ka == kb;
        for (int j = 0; same && j < ka; j++)
            same = a->expert[a->offsets[t] + j] == b->expert[b->offsets[t] + j];
        if (!same) {
            // Only Ban's floor at an integer boundary may tip either way.
            memcpy(score, logits + (size_t)t * E, sizeof(float) * E);
            ep_router_softmax(score, E);
            int n = ep_router_topk(score, E, E, NULL, cand);
            for (int j = 0; j < n; j++)
                cand_score[j] = score[cand[j]];
            float S = 0;
            ep_ban_k(&p->cfg, p->params.ban_lterm[layer], cand_score, n, NULL, &S);
            double x =
                p->cfg.ban.k_min + (double)(c->k_base - p->cfg.ban.k_min) * p->cfg.ban.lambda * S;
            assert_true(ban && near_integer(x));
            excused++;
            continue;
        }
        for (int j = 0; j < ka; j++) {
            const float wa = a->weight[a->offsets[t] + j], wb = b->weight[b->offsets[t] + j];
            assert_true(fabsf(wa - wb) <= 1e-5f * fabsf(wa));
        }
    }
    free(score);
    free(cand_score);
    free(cand);
    return excused;
}

static void compare_p(const ep_model_cfg *c, const ep_policy *p, const char *label)
{
    const int T = 41, E = c->n_experts;
    ep_router *cpu;
    ep_router_cuda *dev;
    assert_int_equal(ep_router_init(c, T, &cpu), EP_OK);
    assert_int_equal(ep_router_cuda_init(c, T, gpu, &dev), EP_OK);
    ep_routes a, b;
    ep_routes_init(&a, T, ep_policy_max_k(p), c->k_base);
    ep_routes_init(&b, T, ep_policy_max_k(p), c->k_base);
    float *logits = malloc(sizeof(float) * T * E);
    int excused = 0;
    for (int layer = c->first_k_dense; layer < c->n_layers; layer++) {
        grid_logits(logits, T, E, 90 + layer);
        const int d = p->cfg.pick.domain;
        if (d >= 0) { // keys inside and outside the candidates, off the grid's ties
            const ep_pick_keys *k = &p->params.keys[d];
            for (int t = 0; t < T; t += 2)
                for (int i = k->off[layer]; i < k->off[layer + 1]; i++)
                    logits[(size_t)t * E + k->ids[i]] += (t % 4 == 0) ? 3.025f : 1.525f;
        }
        assert_int_equal(ep_router_route_logits(cpu, p, NULL, layer, logits, T, &a), EP_OK);
        assert_int_equal(ep_router_cuda_route_logits(dev, p, layer, logits, T, &b), EP_OK);
        assert_int_equal(b.n_tokens, T);
        excused += same_routes(c, p, layer, logits, &a, &b);
    }
    printf("# %s %s: device routes match the CPU router (%d tokens excused at a Ban boundary)\n",
           c->name, label, excused);
    free(logits);
    ep_routes_free(&a);
    ep_routes_free(&b);
    ep_router_cuda_free(dev);
    ep_router_free(cpu);
}

static void compare(const ep_model_cfg *c, const char *policy)
{
    ep_policy *p;
    assert_int_equal(ep_policy_create(c, policy, &p), EP_OK);
    compare_p(c, p, policy);
    ep_policy_free(p);
}

// Every Pick strategy, alone and after Ban, with random key experts.
static void compare_pick(const ep_model_cfg *c, uint64_t seed)
{
    const ep_policy_kind kinds[] = {EP_POLICY_PICK, EP_POLICY_BANPICK};
    char label[64];
    for (size_t k = 0; k < EP_ARRAY_LEN(kinds); k++)
        for (int s = EP_PICK_A; s <= EP_PICK_E; s++) {
            ep_policy *p =
                cuda_test_pick_policy(c, kinds[k], (ep_pick_strategy)s, 4, seed + 5 * k + s);
            snprintf(label, sizeof label, "%s %c", ep_policy_kind_name(kinds[k]), "ABCDE"[s]);
            compare_p(c, p, label);
            ep_policy_free(p);
        }
}

static void test_router_device(void **state)
{
    ep_model_cfg c;
    cuda_test_cfg_qwen(&c);
    compare(&c, "baseline");
    compare(&c, "ban");
    compare_pick(&c, 1);
    cuda_test_cfg_deepseek(&c);
    c.n_experts = 12; // grouped: 4 groups of 3, best 2
    c.n_group = 4;
    c.topk_group = 2;
    c.topk_method = EP_TOPK_GROUP_LIMITED;
    compare(&c, "baseline");
    compare(&c, "ban");
    compare_pick(&c, 2);
    const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++) {
        assert_int_equal(ep_model_cfg_load(presets[i], &c), EP_OK);
        compare(&c, "baseline");
        compare(&c, "ban");
        compare_pick(&c, 3 + i);
    }
}

// Routing from hidden states: the gate GEMM on the device. Hidden values and
// gate weights are multiples of 1/8 in [-3/8, 3/8], so every product and
// partial sum is exact in fp32 and cuBLAS's summation order gives the CPU
// gate's logits bit for bit; logits that differ do so by >= 1/64, beyond
// expf's last bits. (Random real-valued weights would make near-ties route
// differently: the order of the sum differs.)
static void compare_gate(const ep_model_cfg *c, const ep_policy *p, const char *label)
{
    const int T = 43, E = c->n_experts, H = c->hidden;
    ep_router *cpu;
    ep_router_cuda *dev;
    assert_int_equal(ep_router_init(c, T, &cpu), EP_OK);
    assert_int_equal(ep_router_cuda_init(c, T, gpu, &dev), EP_OK);
    ep_routes a, b;
    ep_routes_init(&a, T, ep_policy_max_k(p), c->k_base);
    ep_routes_init(&b, T, ep_policy_max_k(p), c->k_base);
    float *x = malloc(sizeof(float) * T * H), *logits = malloc(sizeof(float) * T * E);
    float *gate = malloc(sizeof(float) * (size_t)c->n_layers * E * H);
    ep_rng r;
    ep_rng_seed(&r, 4242);
    for (size_t i = 0; i < (size_t)c->n_layers * E * H; i++)
        gate[i] = (float)((int)(ep_rng_next(&r) % 7) - 3) / 8.0f;
    for (int layer = c->first_k_dense; layer < c->n_layers; layer++)
        assert_int_equal(ep_router_cuda_set_gate(dev, layer, gate + (size_t)layer * E * H), EP_OK);
    int excused = 0;
    for (int layer = c->first_k_dense; layer < c->n_layers; layer++) {
        for (int i = 0; i < T * H; i++)
            x[i] = (float)((int)(ep_rng_next(&r) % 7) - 3) / 8.0f;
        const float *g = gate + (size_t)layer * E * H;
        ep_router_gate_logits(x, T, H, g, E, logits);
        assert_int_equal(ep_router_route(cpu, p, NULL, layer, x, T, g, &a), EP_OK);
        assert_int_equal(ep_router_cuda_route(dev, p, layer, x, T, &b), EP_OK);
        excused += same_routes(c, p, layer, logits, &a, &b);
    }
    printf("# %s %s: device gate GEMM + routing match the CPU router (%d excused at a Ban "
           "boundary)\n",
           c->name, label, excused);
    free(x);
    free(logits);
    free(gate);
    ep_routes_free(&a);
    ep_routes_free(&b);
    ep_router_cuda_free(dev);
    ep_router_free(cpu);
}

static void test_router_device_gate(void **state)
{
    ep_model_cfg c;
    const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
    for (int m = -1; m < (int)EP_ARRAY_LEN(presets); m++) {
        if (m < 0)
            cuda_test_cfg_qwen(&c);
        else
            assert_int_equal(ep_model_cfg_load(presets[m], &c), EP_OK);
        const char *policies[] = {"baseline", "ban"};
        for (size_t i = 0; i < EP_ARRAY_LEN(policies); i++) {
            ep_policy *p;
            assert_int_equal(ep_policy_create(&c, policies[i], &p), EP_OK);
            compare_gate(&c, p, policies[i]);
            ep_policy_free(p);
        }
        ep_policy *p = cuda_test_pick_policy(&c, EP_POLICY_BANPICK, EP_PICK_C, 4, 9);
        compare_gate(&c, p, "banpick C");
        ep_policy_free(p);
    }
}

static void test_router_device_errors(void **state)
{
    ep_model_cfg c;
    cuda_test_cfg_qwen(&c);
    ep_router_cuda *dev;
    assert_int_equal(ep_router_cuda_init(&c, 5, gpu, &dev), EP_OK);
    ep_policy *pick; // top-p: not on the GPU
    assert_int_equal(ep_policy_create(&c, "topp", &pick), EP_OK);
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
    float x[2 * 13] = {0};
    assert_int_equal(ep_router_cuda_route(dev, base, 0, x, 2, &r), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "not uploaded"));
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
        cmocka_unit_test(test_router_device_gate),
        cmocka_unit_test(test_router_device_errors),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ep_gpu_free(gpu);
    return rc;
}
