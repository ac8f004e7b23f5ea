// The CUDA experts against the CPU: ep_experts_cuda_forward vs
// ep_experts_forward (CPU backend) on the same records, for every expert and
// for each shard of a 3-rank round-robin placement, with records of 0 to 4
// pairs and pair_off not starting at 0; grouped and per-expert GEMMs; the
// shared experts; a whole layer (routes -> experts + shared) vs
// ep_experts_reference; determinism; scratch reuse; caller errors; the
// shards of an FP8 block-quantized checkpoint (dequantized at load).
// Tolerance CUDA_TEST_BF16_TOL per row (BF16 storage, see cuda_test_util.h).
// Skips (77) without a device.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_test_util.h"
#include "experts/cuda/experts_cuda.h"

static ep_gpu *gpu;

typedef struct {
    ep_model_cfg cfg;
    ep_weights *w;
} fixture;

static int setup_with(void **state, void (*make)(ep_model_cfg *))
{
    fixture *f = calloc(1, sizeof *f);
    make(&f->cfg);
    if (ep_weights_open(&f->cfg, &f->w)) {
        fprintf(stderr, "setup: %s\n", ep_last_error());
        return -1;
    }
    *state = f;
    return 0;
}
static int setup_qwen(void **state)
{
    return setup_with(state, cuda_test_cfg_qwen);
}
static int setup_deepseek(void **state)
{
    return setup_with(state, cuda_test_cfg_deepseek);
}
static int teardown(void **state)
{
    fixture *f = *state;
    ep_weights_free(f->w);
    free(f);
    return 0;
}

// The deepseek fixture written as an FP8 block-quantized checkpoint with
// small blocks (4 x 8: partial blocks everywhere on hidden 13) and read
// back: the CUDA backend uploads the dequantized values in BF16, the CPU
// experts keep them in fp32 (docs/cuda.md).
static char fp8_dir[512];
static int setup_deepseek_fp8(void **state)
{
    ep_model_cfg c;
    cuda_test_cfg_deepseek(&c);
    c.quant = EP_QUANT_FP8_BLOCK;
    c.quant_block[0] = 4;
    c.quant_block[1] = 8;
    const char *tmp = getenv("TMPDIR");
    snprintf(fp8_dir, sizeof fp8_dir, "%s/ep_cuda_fp8_%ld", tmp && tmp[0] ? tmp : "/tmp",
             (long)getpid());
    fixture *f = calloc(1, sizeof *f);
    char name[256];
    ep_name_expert(name, sizeof name, c.first_k_dense, 0, "down_proj");
    ep_dtype stored = EP_DTYPE_F32;
    if (ep_synth_write_checkpoint(&c, fp8_dir, 1, EP_DTYPE_F8_E4M3) ||
        ep_model_cfg_load(fp8_dir, &f->cfg) || ep_weights_open(&f->cfg, &f->w) ||
        ep_weights_stored_dtype(f->w, name, &stored)) {
        fprintf(stderr, "setup: %s\n", ep_last_error());
        return -1;
    }
    if (stored != EP_DTYPE_F8_E4M3) {
        fprintf(stderr, "setup: %s is %s, expected F8_E4M3\n", name, ep_dtype_name(stored));
        return -1;
    }
    *state = f;
    return 0;
}
static int teardown_fp8(void **state)
{
    teardown(state);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fp8_dir);
    return system(cmd) == 0 ? 0 : -1;
}

// One step of n_rec records on one shard, GPU vs CPU. Returns the error.
static double compare_step(const fixture *f, ep_experts *cpu, ep_experts_cuda *gpu_e,
                           const int *allowed, int n_allowed, int layer, int n_rec, uint64_t seed)
{
    const int H = f->cfg.hidden, maxk = 4, base = 3;
    int *off = malloc(sizeof(int) * (n_rec + 1));
    int *ex = malloc(sizeof(int) * (n_rec * maxk + base));
    float *pw = malloc(sizeof(float) * (n_rec * maxk + base));
    float *x = malloc(sizeof(float) * (n_rec * H + 1));
    float *y = malloc(sizeof(float) * (n_rec * H + 1));
    float *ref = malloc(sizeof(float) * (n_rec * H + 1));
    cuda_test_records(n_rec, maxk, allowed, n_allowed, base, seed, off, ex, pw);
    cuda_test_fill(x, (size_t)n_rec * H, seed + 1, 1.0f);
    for (int i = 0; i < n_rec * H; i++)
        y[i] = NAN; // every element must be written
    assert_int_equal(ep_experts_cuda_forward(gpu_e, layer, n_rec, off, ex, pw, x, y), EP_OK);
    assert_int_equal(ep_experts_forward(cpu, layer, n_rec, off, ex, pw, x, ref), EP_OK);
    double err = n_rec ? cuda_test_rel_err(y, ref, n_rec, H) : 0;
    assert_false(isnan(err));
    assert_true(err <= CUDA_TEST_BF16_TOL);
    free(off);
    free(ex);
    free(pw);
    free(x);
    free(y);
    free(ref);
    return err;
}

static void test_shards_vs_cpu(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    const int W = 3;
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, c->n_experts, W), EP_OK);
    const ep_cuda_gemm_mode modes[] = {EP_CUDA_GEMM_AUTO, EP_CUDA_GEMM_LOOP};
    double worst = 0;
    for (int rank = -1; rank < W; rank++) {
        ep_experts *cpu;
        ep_experts_cuda *g;
        assert_int_equal(ep_experts_load(c, f->w, rank < 0 ? NULL : &p, rank, &cpu), EP_OK);
        assert_int_equal(ep_experts_cuda_load(c, f->w, rank < 0 ? NULL : &p, rank, gpu, &g), EP_OK);
        int all[64], n_allowed = 0;
        for (int e = 0; e < c->n_experts; e++)
            if (ep_experts_has(cpu, e)) all[n_allowed++] = e;
        for (int e = 0; e < c->n_experts; e++)
            assert_int_equal(ep_experts_cuda_has(g, e), ep_experts_has(cpu, e));
        for (size_t m = 0; m < EP_ARRAY_LEN(modes); m++) {
            ep_experts_cuda_set_gemm(g, modes[m]);
            for (int layer = c->first_k_dense; layer < c->n_layers; layer++) {
                const int sizes[] = {1, 5, 37, 0, 13};
                for (size_t k = 0; k < EP_ARRAY_LEN(sizes); k++)
                    worst = EP_MAX(worst, compare_step(f, cpu, g, all, n_allowed, layer, sizes[k],
                                                       1000 * (rank + 2) + 10 * layer + k));
            }
            ep_cuda_gemm_mode used = ep_experts_cuda_gemm_used(g);
            if (modes[m] == EP_CUDA_GEMM_LOOP)
                assert_int_equal(used, EP_CUDA_GEMM_LOOP);
            else
                assert_true(used == EP_CUDA_GEMM_GROUPED || used == EP_CUDA_GEMM_LOOP);
#ifdef EP_CUDA_EMU
            // The emulated cuBLAS takes the grouped call unless told to
            // refuse it (EP_EMU_CUBLAS_GROUPED=0, the .no_grouped run): then
            // AUTO must have fallen back to the per-expert GEMMs.
            if (modes[m] == EP_CUDA_GEMM_AUTO) {
                const char *g = getenv("EP_EMU_CUBLAS_GROUPED");
                assert_int_equal(used,
                                 g && !strcmp(g, "0") ? EP_CUDA_GEMM_LOOP : EP_CUDA_GEMM_GROUPED);
            }
#endif
            printf("# %s rank %d, mode %s: %s GEMMs\n", c->name, rank,
                   modes[m] == EP_CUDA_GEMM_AUTO ? "auto" : "loop",
                   used == EP_CUDA_GEMM_GROUPED ? "grouped" : "per-expert");
        }
        ep_experts_cuda_free(g);
        ep_experts_free(cpu);
    }
    printf("# %s: CUDA vs CPU experts, max rel err %.2e (tol %.0e)\n", c->name, worst,
           CUDA_TEST_BF16_TOL);
    assert_true(worst > 0); // BF16 differs from fp32 somewhere: the comparison is real
    ep_placement_free(&p);
}

// A layer as the model computes it: routes -> (records = tokens) experts +
// shared experts, against ep_experts_reference (plain C loops).
static void test_layer_vs_reference(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    const int H = c->hidden, T = 29, maxk = 5;
    ep_experts *all;
    ep_experts_cuda *g;
    assert_int_equal(ep_experts_load(c, f->w, NULL, -1, &all), EP_OK);
    assert_int_equal(ep_experts_cuda_load(c, f->w, NULL, -1, gpu, &g), EP_OK);
    assert_true(ep_experts_cuda_bytes(g) * 2 == ep_experts_bytes(all)); // BF16 vs fp32
    ep_routes r;
    ep_routes_init(&r, T, maxk, c->k_base);
    float *x = malloc(sizeof(float) * T * H), *y = malloc(sizeof(float) * T * H);
    float *y2 = malloc(sizeof(float) * T * H), *ref = malloc(sizeof(float) * T * H);
    for (int layer = c->first_k_dense; layer < c->n_layers; layer++) {
        cuda_test_routes(&r, T, maxk, c->n_experts, 77 + layer);
        cuda_test_fill(x, (size_t)T * H, 88 + layer, 1.0f);
        assert_int_equal(ep_experts_cuda_forward(g, layer, T, r.offsets, r.expert, r.weight, x, y),
                         EP_OK);
        assert_int_equal(ep_experts_cuda_shared_forward(g, layer, x, T, y), EP_OK);
        ep_experts_reference(all, layer, &r, x, ref);
        double err = cuda_test_rel_err(y, ref, T, H);
        printf("# %s layer %d: CUDA layer vs reference, rel err %.2e\n", c->name, layer, err);
        assert_true(err <= CUDA_TEST_BF16_TOL);
        // Same inputs, same bits: no atomics, a fixed summation order.
        assert_int_equal(ep_experts_cuda_forward(g, layer, T, r.offsets, r.expert, r.weight, x, y2),
                         EP_OK);
        assert_int_equal(ep_experts_cuda_shared_forward(g, layer, x, T, y2), EP_OK);
        assert_memory_equal(y, y2, sizeof(float) * T * H);
    }
    ep_routes_free(&r);
    free(x);
    free(y);
    free(y2);
    free(ref);
    ep_experts_cuda_free(g);
    ep_experts_free(all);
}

static void test_shared_vs_cpu(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    const int H = c->hidden, T = 19;
    ep_experts *cpu;
    ep_experts_cuda *g;
    assert_int_equal(ep_experts_load(c, f->w, NULL, -1, &cpu), EP_OK);
    assert_int_equal(ep_experts_cuda_load(c, f->w, NULL, -1, gpu, &g), EP_OK);
    float *x = malloc(sizeof(float) * T * H), *y = malloc(sizeof(float) * T * H);
    float *ref = malloc(sizeof(float) * T * H);
    for (int layer = c->first_k_dense; layer < c->n_layers; layer++) {
        cuda_test_fill(x, (size_t)T * H, 5 + layer, 1.0f);
        cuda_test_fill(y, (size_t)T * H, 6 + layer, 0.5f); // added to, not overwritten
        memcpy(ref, y, sizeof(float) * T * H);
        assert_int_equal(ep_experts_cuda_shared_forward(g, layer, x, T, y), EP_OK);
        assert_int_equal(ep_experts_shared_forward(cpu, layer, x, T, ref), EP_OK);
        assert_true(cuda_test_rel_err(y, ref, T, H) <= CUDA_TEST_BF16_TOL);
    }
    free(x);
    free(y);
    free(ref);
    ep_experts_cuda_free(g);
    ep_experts_free(cpu);
}

static void test_scratch_and_errors(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, c->n_experts, 2), EP_OK);
    ep_experts_cuda *g;
    assert_int_equal(ep_experts_cuda_load(c, f->w, &p, 1, gpu, &g), EP_OK);
    ep_experts *cpu;
    assert_int_equal(ep_experts_load(c, f->w, &p, 1, &cpu), EP_OK);
    assert_int_equal(ep_experts_cuda_reserve(g, 64, 256), EP_OK);
    const size_t held = ep_experts_cuda_scratch_bytes(g);
    assert_true(held > 0);
    const int *mine = p.local_expert + p.local_off[1];
    const int n_mine = ep_placement_n_local(&p, 1);
    for (int k = 0; k < 4; k++) // steps within the reservation allocate nothing
        compare_step(f, cpu, g, mine, n_mine, c->n_layers - 1, 7 + 11 * k, 500 + k);
    assert_int_equal(ep_experts_cuda_scratch_bytes(g), held);

    int off[] = {0, 1};
    int foreign[] = {p.local_expert[0]}; // rank 0's expert
    float wt[] = {1.0f}, x[64] = {0}, y[64];
    assert_int_equal(ep_experts_cuda_forward(g, c->n_layers - 1, 1, off, foreign, wt, x, y),
                     EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "not held"));
    if (c->first_k_dense > 0) {
        assert_int_equal(ep_experts_cuda_forward(g, 0, 1, off, mine, wt, x, y), EP_ERR_ARG);
        assert_non_null(strstr(ep_last_error(), "not a MoE layer"));
    }
    assert_int_equal(ep_experts_cuda_shared_forward(g, c->n_layers - 1, x, -1, y), EP_ERR_ARG);
    ep_experts_free(cpu);
    ep_experts_cuda_free(g);
    ep_experts_cuda_free(NULL);
    ep_placement_free(&p);
}

int main(void)
{
    if (cuda_test_devices("test_cuda_experts") == 0) return CUDA_TEST_SKIP;
    if (ep_gpu_open(0, &gpu) != EP_OK) {
        fprintf(stderr, "ep_gpu_open: %s\n", ep_last_error());
        return 1;
    }
    printf("# device 0: %s, sm_%d\n", ep_gpu_name(gpu), ep_gpu_compute_capability(gpu));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_shards_vs_cpu, setup_qwen, teardown),
        cmocka_unit_test_setup_teardown(test_shards_vs_cpu, setup_deepseek, teardown),
        cmocka_unit_test_setup_teardown(test_shards_vs_cpu, setup_deepseek_fp8, teardown_fp8),
        cmocka_unit_test_setup_teardown(test_layer_vs_reference, setup_qwen, teardown),
        cmocka_unit_test_setup_teardown(test_layer_vs_reference, setup_deepseek, teardown),
        cmocka_unit_test_setup_teardown(test_shared_vs_cpu, setup_deepseek, teardown),
        cmocka_unit_test_setup_teardown(test_scratch_and_errors, setup_qwen, teardown),
        cmocka_unit_test_setup_teardown(test_scratch_and_errors, setup_deepseek, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ep_gpu_free(gpu);
    return rc;
}
