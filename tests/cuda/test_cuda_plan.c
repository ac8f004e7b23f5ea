// The host half of the GPU path, run on the CPU (no device needed): the
// grouped-GEMM layout of ep_cuda_plan (sort by expert, reduction map,
// validation), the cuBLAS problem list driven through an emulation of
// column-major cublasGemmEx and compared with the CPU experts (fp32, and the
// BF16 error budget), the router kernel's per-token routine run on the host
// against the CPU router (bit-identical routes), the dispatch layout's host
// routine (the kernels' code run on the host) against ep_dispatch_plan on
// random routes, device choice by local rank, and the NCCL version rules.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/gpu.h"
#include "cuda_test_util.h"
#include "experts/cuda/plan.h"
#include "common/dtype.h"
#include "experts/experts.h"
#include "common/weights.h"
#include "comm/comm.h"
#include "comm/cuda/dispatch_cuda.h"
#include "comm/dispatch_plan.h"
#include "router/cuda/router_cuda.h"
#include "router/policy.h"

// Emulated pipeline (fp32, double dots) vs the CPU experts (fp32 sgemm).
#define TOL 1e-5

// ---- layout -----------------------------------------------------------------------

static void check_layout(const ep_cuda_plan *pl, int n_rec, const int *pair_off,
                         const int *pair_expert, const int *local_of, int n_local)
{
    const int base = pair_off[0], rows = pair_off[n_rec] - base;
    assert_int_equal(pl->n_rows, rows);
    assert_int_equal(pl->start[0], 0);
    assert_int_equal(pl->start[n_local], rows);
    int groups = 0;
    for (int s = 0; s < n_local; s++) {
        assert_true(pl->start[s] <= pl->start[s + 1]);
        if (pl->start[s + 1] > pl->start[s]) {
            assert_true(groups < pl->n_groups);
            assert_int_equal(pl->grp_local[groups], s);
            groups++;
        }
    }
    assert_int_equal(groups, pl->n_groups);
    char *seen = calloc((size_t)rows + 1, 1);
    for (int i = 0; i < n_rec; i++) {
        assert_int_equal(pl->rec_off[i], pair_off[i] - base);
        for (int j = pair_off[i]; j < pair_off[i + 1]; j++) {
            int r = pl->pair_row[j - base], s = local_of[pair_expert[j]];
            assert_true(r >= pl->start[s] && r < pl->start[s + 1]); // in its expert's block
            assert_int_equal(pl->row_rec[r], i);                    // gathers its record
            assert_false(seen[r]);                                  // a permutation
            seen[r] = 1;
        }
    }
    assert_int_equal(pl->rec_off[n_rec], rows);
    // Stable: records ascend within each expert's block.
    for (int s = 0; s < n_local; s++)
        for (int r = pl->start[s] + 1; r < pl->start[s + 1]; r++)
            assert_true(pl->row_rec[r - 1] < pl->row_rec[r]);
    free(seen);
}

static void test_plan_layout(void **state)
{
    enum { E = 11, MAXK = 5, BASE = 3 };
    int allowed[E], local_of[E];
    for (int e = 0; e < E; e++) {
        allowed[e] = e;
        local_of[e] = (e * 7) % E; // a permutation: local order differs from global
    }
    ep_cuda_plan pl;
    memset(&pl, 0, sizeof pl);
    // Growing and shrinking steps through one plan: capacities are reused.
    const int sizes[] = {5, 13, 1, 29, 7, 0};
    for (size_t c = 0; c < EP_ARRAY_LEN(sizes); c++) {
        int n_rec = sizes[c];
        int *off = malloc(sizeof(int) * (n_rec + 1));
        int *ex = malloc(sizeof(int) * (n_rec * MAXK + BASE));
        float *w = malloc(sizeof(float) * (n_rec * MAXK + BASE));
        cuda_test_records(n_rec, MAXK, allowed, E, BASE, 100 + c, off, ex, w);
        assert_int_equal(ep_cuda_plan_build(&pl, 0, E, E, local_of, n_rec, off, ex), EP_OK);
        if (n_rec > 0)
            check_layout(&pl, n_rec, off, ex, local_of, E);
        else
            assert_int_equal(pl.n_rows, 0);
        free(off);
        free(ex);
        free(w);
    }
    ep_cuda_plan_free(&pl);
    ep_cuda_plan_free(&pl); // twice: zeroed, so a no-op
}

static void test_plan_errors(void **state)
{
    int local_of[7] = {0, -1, 1, 2, -1, 3, 4};
    ep_cuda_plan pl;
    memset(&pl, 0, sizeof pl);
    int off_dec[] = {0, 2, 1};
    int ex[] = {0, 2, 3};
    assert_int_equal(ep_cuda_plan_build(&pl, 4, 7, 5, local_of, 2, off_dec, ex), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "record 1"));
    assert_non_null(strstr(ep_last_error(), "layer 4"));
    int off[] = {0, 1, 3};
    int ex_range[] = {0, 2, 7};
    assert_int_equal(ep_cuda_plan_build(&pl, 0, 7, 5, local_of, 2, off, ex_range), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "expert 7 outside [0, 7)"));
    int ex_held[] = {0, 2, 4};
    assert_int_equal(ep_cuda_plan_build(&pl, 0, 7, 5, local_of, 2, off, ex_held), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "expert 4 is not held"));
    assert_int_equal(ep_cuda_plan_build(&pl, 0, 7, 5, local_of, -1, off, ex), EP_ERR_ARG);
    int ok[] = {0, 2, 3};
    assert_int_equal(ep_cuda_plan_build(&pl, 0, 7, 5, local_of, 2, off, ok), EP_OK);
    assert_int_equal(pl.n_groups, 3);
    ep_cuda_plan_free(&pl);
}

// ---- the problem list through emulated cuBLAS ------------------------------------------

static float silu(float v)
{
    return (float)(v / (1.0 + exp(-(double)v)));
}

static void round_bf16(float *v, size_t n, bool on)
{
    for (size_t i = 0; on && i < n; i++)
        v[i] = ep_bf16_round(v[i]);
}

// The GPU step of experts/cuda/experts_cuda.c with every device call replaced
// by its C equivalent. bf16 false: fp32 throughout, so only the layout is
// tested; true: rounded to BF16 where the GPU stores BF16 (gathered rows,
// gate|up, activations, expert outputs), which measures the error budget.
static void emulate_step(const ep_cuda_plan *pl, int H, int I, const float *gate_up,
                         const float *down, const float *pair_weight, const float *x, float *y,
                         bool bf16)
{
    const int rows = pl->n_rows;
    float *xg = malloc(sizeof(float) * ((size_t)rows * H + 1));
    float *gu = malloc(sizeof(float) * ((size_t)rows * 2 * I + 1));
    float *act = malloc(sizeof(float) * ((size_t)rows * I + 1));
    float *og = malloc(sizeof(float) * ((size_t)rows * H + 1));
    for (int r = 0; r < rows; r++)
        memcpy(xg + (size_t)r * H, x + (size_t)pl->row_rec[r] * H, sizeof(float) * H);
    round_bf16(xg, (size_t)rows * H, bf16);
    ep_cuda_gemm_list g;
    memset(&g, 0, sizeof g);
    ep_cuda_gemm_list_fill(&g, pl, 2 * I, H, sizeof(float), gate_up, xg, gu);
    assert_int_equal(g.n, pl->n_groups);
    for (int q = 0; q < g.n; q++)
        cuda_test_gemm_tn(g.m[q], g.nn[q], g.k[q], g.ptr[q], g.lda[q], g.ptr[g.n + q], g.ldb[q],
                          g.ptr[2 * g.n + q], g.ldc[q]);
    round_bf16(gu, (size_t)rows * 2 * I, bf16);
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < I; i++)
            act[(size_t)r * I + i] =
                silu(gu[(size_t)r * 2 * I + i]) * gu[(size_t)r * 2 * I + I + i];
    round_bf16(act, (size_t)rows * I, bf16);
    ep_cuda_gemm_list_fill(&g, pl, H, I, sizeof(float), down, act, og);
    for (int q = 0; q < g.n; q++)
        cuda_test_gemm_tn(g.m[q], g.nn[q], g.k[q], g.ptr[q], g.lda[q], g.ptr[g.n + q], g.ldb[q],
                          g.ptr[2 * g.n + q], g.ldc[q]);
    round_bf16(og, (size_t)rows * H, bf16);
    for (int i = 0; i < pl->n_rec; i++)
        for (int h = 0; h < H; h++) {
            double acc = 0;
            for (int j = pl->rec_off[i]; j < pl->rec_off[i + 1]; j++)
                acc += (double)pair_weight[j] * og[(size_t)pl->pair_row[j] * H + h];
            y[(size_t)i * H + h] = (float)acc;
        }
    ep_cuda_gemm_list_free(&g);
    free(xg);
    free(gu);
    free(act);
    free(og);
}

// Reads rank `rank`'s experts of `layer` in the device layout: gate_up
// [n_local, 2I, H] (gate rows then up rows), down [n_local, H, I].
static void read_shard(ep_weights *w, const ep_model_cfg *c, const ep_placement *p, int rank,
                       int layer, float *gate_up, float *down, int *local_of)
{
    const int I = c->moe_inter, H = c->hidden;
    const int64_t gu_shape[2] = {I, H}, d_shape[2] = {H, I};
    char name[256];
    for (int e = 0; e < c->n_experts; e++)
        local_of[e] = -1;
    for (int s = 0; s < ep_placement_n_local(p, rank); s++) {
        int g = p->local_expert[p->local_off[rank] + s];
        local_of[g] = s;
        ep_name_expert(name, sizeof name, layer, g, "gate_proj");
        assert_int_equal(ep_weights_read_f32(w, name, 2, gu_shape, gate_up + (size_t)s * 2 * I * H),
                         EP_OK);
        ep_name_expert(name, sizeof name, layer, g, "up_proj");
        assert_int_equal(ep_weights_read_f32(w, name, 2, gu_shape,
                                             gate_up + (size_t)s * 2 * I * H + (size_t)I * H),
                         EP_OK);
        ep_name_expert(name, sizeof name, layer, g, "down_proj");
        assert_int_equal(ep_weights_read_f32(w, name, 2, d_shape, down + (size_t)s * H * I), EP_OK);
    }
}

static void problem_list_vs_cpu(bool bf16, double tol)
{
    ep_model_cfg c;
    cuda_test_cfg_qwen(&c);
    const int E = c.n_experts, H = c.hidden, I = c.moe_inter, W = 3;
    ep_weights *w;
    assert_int_equal(ep_weights_open(&c, &w), EP_OK);
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, E, W), EP_OK);
    float *gate_up = malloc(sizeof(float) * E * 2 * I * H);
    float *down = malloc(sizeof(float) * E * H * I);
    int local_of[64];
    ep_cuda_plan pl;
    memset(&pl, 0, sizeof pl);
    double worst = 0;
    for (int rank = 0; rank < W; rank++) {
        ep_experts *cpu;
        assert_int_equal(ep_experts_load(&c, w, &p, rank, &cpu), EP_OK);
        const int n_local = ep_placement_n_local(&p, rank);
        for (int layer = 0; layer < c.n_layers; layer++) {
            read_shard(w, &c, &p, rank, layer, gate_up, down, local_of);
            const int n_rec = 13 + 4 * rank, maxk = 3, base = 2;
            int *off = malloc(sizeof(int) * (n_rec + 1));
            int *ex = malloc(sizeof(int) * (n_rec * maxk + base));
            float *pw = malloc(sizeof(float) * (n_rec * maxk + base));
            float *x = malloc(sizeof(float) * n_rec * H);
            float *y = malloc(sizeof(float) * n_rec * H);
            float *ref = malloc(sizeof(float) * n_rec * H);
            cuda_test_records(n_rec, maxk, p.local_expert + p.local_off[rank], n_local, base,
                              7 * rank + layer, off, ex, pw);
            cuda_test_fill(x, (size_t)n_rec * H, 31 + rank, 1.0f);
            assert_int_equal(ep_cuda_plan_build(&pl, layer, E, n_local, local_of, n_rec, off, ex),
                             EP_OK);
            emulate_step(&pl, H, I, gate_up, down, pw + base, x, y, bf16);
            assert_int_equal(ep_experts_forward(cpu, layer, n_rec, off, ex, pw, x, ref), EP_OK);
            double err = cuda_test_rel_err(y, ref, n_rec, H);
            worst = EP_MAX(worst, err);
            assert_true(err <= tol);
            free(off);
            free(ex);
            free(pw);
            free(x);
            free(y);
            free(ref);
        }
        ep_experts_free(cpu);
    }
    printf("# emulated grouped layout (%s) vs CPU experts: max rel err %.2e (tol %.0e)\n",
           bf16 ? "BF16 storage" : "fp32", worst, tol);
    assert_true(worst > 0); // the comparison saw real, differing numbers
    ep_cuda_plan_free(&pl);
    free(gate_up);
    free(down);
    ep_placement_free(&p);
    ep_weights_free(w);
}

static void test_problem_list_matches_cpu(void **state)
{
    problem_list_vs_cpu(false, TOL);
}

// The tolerance the GPU tests use for BF16 storage, checked here where it can
// run: the rounding the device does, without the device.
static void test_bf16_error_budget(void **state)
{
    problem_list_vs_cpu(true, CUDA_TEST_BF16_TOL);
}

// ---- the router kernel's routine, run on the host --------------------------------------------

// Grouped (DeepSeek-like) routing on odd sizes: 12 experts in 4 groups, best 2.
static void cfg_grouped(ep_model_cfg *c)
{
    cuda_test_cfg_deepseek(c);
    snprintf(c->name, sizeof c->name, "cuda-test-grouped-odd");
    c->n_experts = 12;
    c->n_group = 4;
    c->topk_group = 2;
    c->topk_method = EP_TOPK_GROUP_LIMITED;
}

// Routes every MoE layer of c with p on both routers and compares them bit
// for bit. boost: the active Pick domain's key experts get their logits
// raised on every other token, so that keys land inside and outside the
// candidates (strategies C and D act only inside). Returns the tokens whose
// kept set holds an expert outside their top-k_base (Pick's doing).
static int router_host_vs_cpu_p(const ep_model_cfg *c, const ep_policy *p, const char *label,
                                bool ties, bool boost)
{
    const int T = 37, E = c->n_experts;
    ep_router *cpu;
    assert_int_equal(ep_router_init(c, T, &cpu), EP_OK);
    ep_routes a, b;
    ep_routes_init(&a, T, ep_policy_max_k(p), c->k_base);
    ep_routes_init(&b, T, ep_policy_max_k(p), c->k_base);
    float *logits = malloc(sizeof(float) * T * E);
    int64_t nnz = 0, k_min = 1 << 30, k_max = 0;
    int widened = 0;
    for (int layer = c->first_k_dense; layer < c->n_layers; layer++) {
        cuda_test_fill(logits, (size_t)T * E, 60 + layer, 4.0f);
        // Quantized logits make exact ties, so the lower-id rule is exercised.
        for (int i = 0; ties && i < T * E; i++)
            logits[i] = roundf(logits[i] * 2.0f) / 2.0f;
        const int d = p->cfg.pick.domain;
        if (boost && d >= 0) {
            const ep_pick_keys *k = &p->params.keys[d];
            for (int t = 0; t < T; t += 2)
                for (int i = k->off[layer]; i < k->off[layer + 1]; i++)
                    logits[(size_t)t * E + k->ids[i]] += (t % 4 == 0) ? 3.0f : 1.5f;
        }
        assert_int_equal(ep_router_route_logits(cpu, p, NULL, layer, logits, T, &a), EP_OK);
        assert_int_equal(ep_router_cuda_route_logits_host(c, p, layer, logits, T, &b), EP_OK);
        assert_int_equal(b.n_tokens, T);
        assert_memory_equal(a.offsets, b.offsets, sizeof(int) * (T + 1));
        assert_memory_equal(a.expert, b.expert, sizeof(int) * ep_routes_nnz(&a));
        assert_memory_equal(a.weight, b.weight, sizeof(float) * ep_routes_nnz(&a));
        assert_memory_equal(a.base_expert, b.base_expert, sizeof(int) * T * c->k_base);
        assert_memory_equal(a.base_weight, b.base_weight, sizeof(float) * T * c->k_base);
        nnz += ep_routes_nnz(&a);
        for (int t = 0; t < T; t++) {
            k_min = EP_MIN(k_min, ep_routes_k(&a, t));
            k_max = EP_MAX(k_max, ep_routes_k(&a, t));
            bool wide = false;
            for (int j = a.offsets[t]; j < a.offsets[t + 1]; j++) {
                bool in_base = false;
                for (int q = 0; q < c->k_base; q++)
                    in_base |= a.base_expert[(size_t)t * c->k_base + q] == a.expert[j];
                wide |= !in_base;
            }
            widened += wide;
        }
    }
    printf("# %s %s%s: %lld pairs, K in [%lld, %lld], %d tokens beyond top-k_base, "
           "identical to the CPU router\n",
           c->name, label, ties ? " (ties)" : "", (long long)nnz, (long long)k_min,
           (long long)k_max, widened);
    free(logits);
    ep_routes_free(&a);
    ep_routes_free(&b);
    ep_router_free(cpu);
    return widened;
}

static void router_host_vs_cpu(const ep_model_cfg *c, const char *policy, bool ties)
{
    ep_policy *p;
    assert_int_equal(ep_policy_create(c, policy, &p), EP_OK);
    router_host_vs_cpu_p(c, p, policy, ties, false);
    ep_policy_free(p);
}

// Pick alone and Ban&Pick, every strategy, on the odd models (grouped
// included, so E's group-mask test runs) and both presets, with and without
// ties; then the shipped Qwen3-30B-A3B presets with each of their domains.
static void test_router_host_pick(void **state)
{
    void (*cfgs[])(ep_model_cfg *) = {cuda_test_cfg_qwen, cuda_test_cfg_deepseek, cfg_grouped};
    const ep_policy_kind kinds[] = {EP_POLICY_PICK, EP_POLICY_BANPICK};
    const char *sname = "ABCDE";
    char label[64];
    for (size_t i = 0; i < EP_ARRAY_LEN(cfgs) + 2; i++) {
        ep_model_cfg c;
        if (i < EP_ARRAY_LEN(cfgs))
            cfgs[i](&c);
        else
            assert_int_equal(
                ep_model_cfg_load(i == EP_ARRAY_LEN(cfgs) ? "tiny-qwen3-moe" : "tiny-deepseek-v2",
                                  &c),
                EP_OK);
        for (size_t k = 0; k < EP_ARRAY_LEN(kinds); k++)
            for (int s = EP_PICK_A; s <= EP_PICK_E; s++) {
                ep_policy *p =
                    cuda_test_pick_policy(&c, kinds[k], (ep_pick_strategy)s, 4, 17 * i + s);
                assert_true(ep_router_cuda_supports(p));
                snprintf(label, sizeof label, "%s %c", ep_policy_kind_name(kinds[k]), sname[s]);
                int widened = 0;
                for (int ties = 0; ties < 2; ties++)
                    widened += router_host_vs_cpu_p(&c, p, label, ties, true);
                assert_true(widened > 0); // Pick did act
                // No active domain: Pick keeps the set it was given.
                assert_int_equal(ep_policy_set_domain(p, ""), EP_OK);
                assert_int_equal(router_host_vs_cpu_p(&c, p, label, false, true), 0);
                ep_policy_free(p);
            }
    }
    const char *presets[] = {"qwen3-30b-a3b-pick", "qwen3-30b-a3b-banpick"};
    const char *domains[] = {"math", "code", "general"};
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++) {
        ep_model_cfg full;
        assert_int_equal(ep_model_cfg_load("qwen3-30b-a3b", &full), EP_OK);
        ep_policy *p;
        assert_int_equal(ep_policy_create(&full, presets[i], &p), EP_OK);
        assert_true(ep_router_cuda_supports(p));
        int widened = 0;
        for (size_t d = 0; d < EP_ARRAY_LEN(domains); d++) {
            assert_int_equal(ep_policy_set_domain(p, domains[d]), EP_OK);
            widened += router_host_vs_cpu_p(&full, p, presets[i], false, true);
        }
        assert_true(widened > 0);
        ep_policy_free(p);
    }
}

static void test_router_host(void **state)
{
    void (*cfgs[])(ep_model_cfg *) = {cuda_test_cfg_qwen, cuda_test_cfg_deepseek, cfg_grouped};
    const char *policies[] = {"baseline", "ban"};
    for (size_t i = 0; i < EP_ARRAY_LEN(cfgs); i++)
        for (size_t j = 0; j < EP_ARRAY_LEN(policies); j++)
            for (int ties = 0; ties < 2; ties++) {
                ep_model_cfg c;
                cfgs[i](&c);
                router_host_vs_cpu(&c, policies[j], ties);
            }
    // The presets: 64 experts, top-8 (Qwen3) and grouped top-6 (DeepSeek).
    const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++) {
        ep_model_cfg c;
        assert_int_equal(ep_model_cfg_load(presets[i], &c), EP_OK);
        router_host_vs_cpu(&c, "baseline", false);
        router_host_vs_cpu(&c, "ban", false);
    }
}

static void test_router_supports(void **state)
{
    ep_model_cfg c;
    cuda_test_cfg_qwen(&c);
    const char *yes[] = {"baseline", "ban", "pick", "banpick"}, *no[] = {"topp", "des", "laser"};
    for (size_t i = 0; i < EP_ARRAY_LEN(yes); i++) {
        ep_policy *p;
        assert_int_equal(ep_policy_create(&c, yes[i], &p), EP_OK);
        assert_true(ep_router_cuda_supports(p));
        ep_policy_free(p);
    }
    ep_routes r;
    ep_routes_init(&r, 4, c.n_experts, c.k_base);
    float logits[4 * 11] = {0};
    for (size_t i = 0; i < EP_ARRAY_LEN(no); i++) {
        ep_policy *p;
        assert_int_equal(ep_policy_create(&c, no[i], &p), EP_OK);
        assert_false(ep_router_cuda_supports(p));
        assert_int_equal(ep_router_cuda_route_logits_host(&c, p, 0, logits, 4, &r),
                         EP_ERR_UNSUPPORTED);
        assert_non_null(strstr(ep_last_error(), no[i]));
        ep_policy_free(p);
    }
    ep_routes_free(&r);
}

// ---- dispatch counts and layout: the kernels' routine on the host vs comm ------------------

// E experts round-robin on W ranks, every third one also on the next rank
// (a replica), so that the scheduler's pair_rank differs from rank_of.
static void replica_placement(ep_placement *p, int E, int W)
{
    int *phy_e = malloc(sizeof(int) * 2 * E), *phy_r = malloc(sizeof(int) * 2 * E), n = 0;
    for (int e = 0; e < E; e++) {
        phy_e[n] = e;
        phy_r[n++] = e % W;
    }
    for (int e = 0; e < E && W > 1; e += 3) {
        phy_e[n] = e;
        phy_r[n++] = (e + 1) % W;
    }
    assert_int_equal(ep_placement_from_slots(p, EP_PLACE_ROUND_ROBIN, E, W, n, phy_e, phy_r),
                     EP_OK);
    free(phy_e);
    free(phy_r);
}

// The layout against ep_dispatch_plan_build for the same routes (the plan
// is the one grouping of pairs by destination): per token its groups in
// order with their pair counts; per destination the records, bytes and
// start; each record's index among its destination's records (the plan's
// dest_grp order) and its offset == the plan's rec_off (-1 for own-rank
// groups and where a token has no group). Then the totals against
// ep_comm_count.
static void check_dispatch(const ep_dispatch_shape *s, const ep_routes *r, const ep_placement *p,
                           const int *prank, const int *node_of, int hidden, ep_dtype wire,
                           const ep_dispatch_layout *l)
{
    const int W = s->world, T = r->n_tokens, mk = s->max_k;
    ep_dispatch_plan pl;
    assert_int_equal(ep_dispatch_plan_init(&pl, W, s->rank, node_of, hidden, wire), EP_OK);
    ep_dispatch_plan_build(&pl, r, p, prank);
    assert_int_equal(l->T, T);
    assert_int_equal(pl.n_tokens, T);
    int *seen = calloc((size_t)W, sizeof(int)); // records of each destination so far
    int *mark = calloc((size_t)W, sizeof(int)); // 1 + token of a destination's last group
    int q = 0;                                  // plan group
    for (int t = 0; t < T; t++) {
        int g = 0;
        for (; q < pl.n_grp && pl.grp_tok[q] == t; q++, g++) {
            const int d = pl.grp_dest[q];
            const size_t i = (size_t)t * W + d;
            assert_true(g < l->n_dest[t]);
            assert_int_equal(l->dest[(size_t)t * mk + g], d);
            assert_int_equal(l->dest_pairs[(size_t)t * mk + g], pl.grp_off[q + 1] - pl.grp_off[q]);
            assert_int_equal(pl.dest_grp[pl.dest_off[d] + seen[d]], q);
            assert_int_equal(l->rec_idx[i], seen[d]);
            assert_int_equal(l->rec_off[i], pl.rec_off[q]);
            seen[d]++;
            mark[d] = t + 1;
        }
        assert_int_equal(l->n_dest[t], g);
        for (; g < mk; g++) {
            assert_int_equal(l->dest[(size_t)t * mk + g], -1);
            assert_int_equal(l->dest_pairs[(size_t)t * mk + g], 0);
        }
        for (int d = 0; d < W; d++)
            if (mark[d] != t + 1) {
                assert_int_equal(l->rec_idx[(size_t)t * W + d], -1);
                assert_int_equal(l->rec_off[(size_t)t * W + d], -1);
            }
    }
    assert_int_equal(q, pl.n_grp);
    int64_t sends = 0, total = 0, inter = 0, dest_ranks = 0;
    for (int d = 0; d < W; d++) {
        assert_int_equal(l->send_rec[d], ep_dispatch_plan_n_rec(&pl, d));
        assert_int_equal(l->send_rec[d], seen[d]);
        assert_int_equal(l->send_bytes[d], pl.send_bytes[d]);
        assert_int_equal(l->send_off[d], pl.send_off[d]);
        sends += d != s->rank ? l->send_rec[d] : 0;
        total += l->send_bytes[d];
        inter += node_of[d] != node_of[s->rank] ? l->send_bytes[d] : 0;
        dest_ranks += l->send_rec[d];
    }
    ep_comm_stats st;
    ep_comm_count(r, p, prank, s->rank, node_of, hidden, wire, &st);
    assert_int_equal(sends, st.sends);
    assert_int_equal(total, st.dispatch_bytes);
    assert_int_equal(inter, st.dispatch_bytes_inter);
    assert_int_equal(sends * ep_comm_combine_record_bytes(hidden, wire), st.combine_bytes);
    assert_int_equal(dest_ranks, st.dest_ranks);
    free(seen);
    free(mark);
    ep_dispatch_plan_free(&pl);
}

static void test_dispatch_layout_host(void **state)
{
    enum { E = 13, H = 13, MAXK = 5, KB = 2 };
    const int sizes[] = {0, 1, 7, 37, 301};
    const ep_dtype wires[] = {EP_DTYPE_F32, EP_DTYPE_BF16, EP_DTYPE_F8_E4M3};
    int node_of[8], cases = 0, to_replica = 0;
    int64_t records = 0, payload = 0;
    for (int d = 0; d < 8; d++)
        node_of[d] = d / 2; // two ranks per node
    for (int W = 1; W <= 8; W++)
        for (int rep = 0; rep < 2; rep++)
            for (size_t c = 0; c < EP_ARRAY_LEN(sizes); c++) {
                const int T = sizes[c], rank = (int)(c * 3 + rep) % W;
                const ep_dtype wire = wires[(c + W) % EP_ARRAY_LEN(wires)];
                ep_routes r;
                ep_routes_init(&r, T > 0 ? T : 1, MAXK, KB);
                cuda_test_routes(&r, T, MAXK, E, 1000 + 10 * W + c);
                ep_placement p;
                int *prank = NULL;
                if (rep) {
                    replica_placement(&p, E, W);
                    prank = malloc(sizeof(int) * ((size_t)T * MAXK + 1));
                    int64_t load[8] = {0};
                    int visit[8];
                    ep_placement_choose(&p, &r, rank, load, visit, prank);
                    for (int j = 0; j < ep_routes_nnz(&r); j++)
                        to_replica += prank[j] != p.rank_of[r.expert[j]];
                } else {
                    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, E, W), EP_OK);
                }
                ep_dispatch_shape s;
                assert_int_equal(ep_dispatch_shape_init(&s, W, rank, MAXK, H, wire), EP_OK);
                ep_dispatch_layout l;
                ep_dispatch_layout_init(&l, T, &s);
                assert_int_equal(ep_dispatch_layout_host(&s, &r, &p, prank, &l), EP_OK);
                check_dispatch(&s, &r, &p, prank, node_of, H, wire, &l);
                for (int d = 0; d < W; d++) {
                    records += l.send_rec[d];
                    payload += l.send_bytes[d];
                }
                cases++;
                ep_dispatch_layout_free(&l);
                ep_dispatch_layout_free(&l); // zeroed: a no-op
                free(prank);
                ep_placement_free(&p);
                ep_routes_free(&r);
            }
    printf("# dispatch layout (host routine): %d cases, %lld records, %lld payload bytes, %d pairs "
           "on a replica, equal to ep_dispatch_plan and ep_comm_count\n",
           cases, (long long)records, (long long)payload, to_replica);
    assert_true(payload > 0 && to_replica > 0);
}

static void test_dispatch_layout_errors(void **state)
{
    ep_dispatch_shape s;
    assert_int_equal(ep_dispatch_shape_init(&s, 3, 3, 4, 13, EP_DTYPE_F32), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "rank 3"));
    assert_int_equal(ep_dispatch_shape_init(&s, 3, 1, 2, 13, EP_DTYPE_BF16), EP_OK);
    assert_int_equal(s.fixed_bytes, ep_comm_dispatch_record_bytes(0, 13, EP_DTYPE_BF16));
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, 5, 3), EP_OK);
    ep_routes r;
    ep_routes_init(&r, 4, 3, 1);
    r.n_tokens = 2;
    int off[] = {0, 2, 5}, ex[] = {0, 1, 2, 3, 4};
    memcpy(r.offsets, off, sizeof off);
    memcpy(r.expert, ex, sizeof ex);
    ep_dispatch_layout l;
    ep_dispatch_layout_init(&l, 4, &s);
    assert_int_equal(ep_dispatch_layout_host(&s, &r, &p, NULL, &l), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "token 1 has 3 pairs"));
    r.offsets[2] = 4;
    r.expert[3] = 5;
    assert_int_equal(ep_dispatch_layout_host(&s, &r, &p, NULL, &l), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "expert 5 outside [0, 5)"));
    r.expert[3] = 3;
    int prank[] = {0, 1, 2, 3};
    assert_int_equal(ep_dispatch_layout_host(&s, &r, &p, prank, &l), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "pair_rank 3 outside [0, 3)"));
    prank[3] = 0;
    assert_int_equal(ep_dispatch_layout_host(&s, &r, &p, prank, &l), EP_OK);
    r.n_tokens = 5;
    assert_int_equal(ep_dispatch_layout_host(&s, &r, &p, prank, &l), EP_ERR_ARG);
    ep_dispatch_layout_free(&l);
    ep_routes_free(&r);
    ep_placement_free(&p);
}

// The gate GEMM's cuBLAS problem through the column-major emulation against
// the CPU gate (ep_router_gate_logits): equal up to summation order (fp32
// FMA chains there, double sums here). Odd, non-square shapes, so a
// transposed or mis-strided operand cannot pass.
static void test_gate_gemm_layout(void **state)
{
    const int shapes[][3] = {{1, 13, 11}, {37, 13, 11}, {5, 64, 64}, {29, 33, 12}, {3, 7, 160}};
    double worst = 0;
    for (size_t i = 0; i < EP_ARRAY_LEN(shapes); i++) {
        const int T = shapes[i][0], H = shapes[i][1], E = shapes[i][2];
        float *x = malloc(sizeof(float) * T * H), *gate = malloc(sizeof(float) * E * H);
        float *got = malloc(sizeof(float) * T * E), *ref = malloc(sizeof(float) * T * E);
        cuda_test_fill(x, (size_t)T * H, 300 + i, 1.0f);
        cuda_test_fill(gate, (size_t)E * H, 400 + i, 0.5f);
        const ep_router_gate_gemm g = ep_router_cuda_gate_gemm(T, H, E);
        assert_int_equal(g.m, E);
        assert_int_equal(g.n, T);
        assert_int_equal(g.k, H);
        cuda_test_gemm_tn(g.m, g.n, g.k, gate, g.lda, x, g.ldb, got, g.ldc);
        ep_router_gate_logits(x, T, H, gate, E, ref);
        const double err = cuda_test_rel_err(got, ref, T, E);
        worst = EP_MAX(worst, err);
        assert_true(err <= 1e-5);
        free(x);
        free(gate);
        free(got);
        free(ref);
    }
    printf("# gate GEMM problem (emulated) vs CPU gate: max rel err %.2e (tol 1e-05)\n", worst);
}

// ---- device choice and NCCL versions --------------------------------------------------------

static void test_gpu_choose(void **state)
{
    int dev = -1;
    for (int lr = 0; lr < 4; lr++) { // one visible device: every rank takes it
        assert_int_equal(ep_gpu_choose(lr, 4, 1, &dev), EP_OK);
        assert_int_equal(dev, 0);
    }
    for (int lr = 0; lr < 8; lr++) {
        assert_int_equal(ep_gpu_choose(lr, 8, 8, &dev), EP_OK);
        assert_int_equal(dev, lr);
    }
    assert_int_equal(ep_gpu_choose(3, 4, 2, &dev), EP_ERR_CONFIG);
    assert_non_null(strstr(ep_last_error(), "local rank 3 of 4"));
    assert_int_equal(ep_gpu_choose(0, 1, 0, &dev), EP_ERR_UNSUPPORTED);
}

static void test_nccl_versions(void **state)
{
    char s[32];
    ep_nccl_version_str(22809, s, sizeof s);
    assert_string_equal(s, "2.28.9");
    ep_nccl_version_str(2804, s, sizeof s); // the pre-2.9 encoding
    assert_string_equal(s, "2.8.4");
    assert_int_equal(ep_nccl_version_check(22809, 22809), EP_OK);
    assert_int_equal(ep_nccl_version_check(22809, 21903), EP_OK);
    assert_int_equal(ep_nccl_version_check(21903, 22809), EP_OK);
    assert_int_equal(ep_nccl_version_check(22809, 21203), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "2.12.3"));
    assert_int_equal(ep_nccl_version_check(22809, 2804), EP_ERR_UNSUPPORTED);
    assert_int_equal(ep_nccl_version_check(22809, 30001), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "3.0.1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_layout),
        cmocka_unit_test(test_plan_errors),
        cmocka_unit_test(test_problem_list_matches_cpu),
        cmocka_unit_test(test_bf16_error_budget),
        cmocka_unit_test(test_router_host),
        cmocka_unit_test(test_router_host_pick),
        cmocka_unit_test(test_router_supports),
        cmocka_unit_test(test_dispatch_layout_host),
        cmocka_unit_test(test_dispatch_layout_errors),
        cmocka_unit_test(test_gate_gemm_layout),
        cmocka_unit_test(test_gpu_choose),
        cmocka_unit_test(test_nccl_versions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
