// The MoE layer's backend choice without a device: names and parsing, and
// that asking for backend cuda on a CPU-only build (EP_CUDA=OFF) or where no
// CUDA device is visible fails at ep_moe_init with EP_ERR_UNSUPPORTED and a
// message saying why (the build option, or the missing device) instead of
// aborting; backend cpu still initialises; a bad enum value is EP_ERR_ARG.
// Also the CPU backend's --expert-dtype names.
// Runs in both builds; one MPI process (ep_moe_init takes a cluster).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "common/weights.h"
#include "model/moe.h"
#ifdef EP_CUDA
#include "cluster/gpu.h"
#endif

static ep_cluster *g_cl;

static void test_parse(void **state)
{
    (void)state;
    ep_moe_backend b = EP_MOE_BACKEND_CUDA;
    assert_int_equal(ep_moe_backend_parse("cpu", &b), EP_OK);
    assert_int_equal(b, EP_MOE_BACKEND_CPU);
    assert_int_equal(ep_moe_backend_parse("cuda", &b), EP_OK);
    assert_int_equal(b, EP_MOE_BACKEND_CUDA);
    assert_string_equal(ep_moe_backend_name(EP_MOE_BACKEND_CPU), "cpu");
    assert_string_equal(ep_moe_backend_name(EP_MOE_BACKEND_CUDA), "cuda");
    const char *bad[] = {"gpu", "", "CUDA", "cuda "};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        b = EP_MOE_BACKEND_CPU;
        assert_int_equal(ep_moe_backend_parse(bad[i], &b), EP_ERR_ARG);
        assert_non_null(strstr(ep_last_error(), "expected cpu or cuda"));
        char quoted[32];
        snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
        assert_non_null(strstr(ep_last_error(), quoted));
        assert_int_equal(b, EP_MOE_BACKEND_CPU); // untouched on failure
    }
}

static void test_parse_expert_dtype(void **state)
{
    (void)state;
    ep_dtype d = EP_DTYPE_F16;
    assert_int_equal(ep_weight_dtype_parse("f32", &d), EP_OK);
    assert_int_equal(d, EP_DTYPE_F32);
    assert_int_equal(ep_weight_dtype_parse("bf16", &d), EP_OK);
    assert_int_equal(d, EP_DTYPE_BF16);
    assert_int_equal(ep_weight_dtype_parse("auto", &d), EP_OK);
    assert_int_equal(d, EP_DTYPE_AUTO);
    const char *bad[] = {"fp8", "", "BF16", "f16"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        d = EP_DTYPE_F32;
        assert_int_equal(ep_weight_dtype_parse(bad[i], &d), EP_ERR_ARG);
        assert_non_null(strstr(ep_last_error(), "expected auto, f32 or bf16"));
        char quoted[32];
        snprintf(quoted, sizeof quoted, "'%s'", bad[i]);
        assert_non_null(strstr(ep_last_error(), quoted));
        assert_int_equal(d, EP_DTYPE_F32); // untouched on failure
    }
}

static void test_built(void **state)
{
    (void)state;
    assert_true(ep_moe_backend_built(EP_MOE_BACKEND_CPU));
#ifdef EP_CUDA
    assert_true(ep_moe_backend_built(EP_MOE_BACKEND_CUDA));
#else
    assert_false(ep_moe_backend_built(EP_MOE_BACKEND_CUDA));
#endif
}

typedef struct {
    ep_model_cfg cfg;
    ep_weights *w;
} fixture;

static int setup(void **state)
{
    static fixture f;
    memset(&f, 0, sizeof f);
    if (ep_model_cfg_load("tiny-qwen3-moe", &f.cfg) || ep_weights_open(&f.cfg, &f.w)) {
        fprintf(stderr, "setup: %s\n", ep_last_error());
        return -1;
    }
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    ep_weights_free(f->w);
    return 0;
}

static void test_default_is_cpu(void **state)
{
    fixture *f = *state;
    ep_moe_opts o;
    ep_moe_opts_default(&o, &f->cfg);
    assert_int_equal(o.backend, EP_MOE_BACKEND_CPU);
    o.cap_tokens = 4;
    ep_moe *m = NULL;
    assert_int_equal(ep_moe_init(&f->cfg, g_cl, f->w, &o, &m), EP_OK);
    assert_non_null(m);
    assert_true(ep_moe_expert_bytes(m) > 0);
    ep_moe_free(m);
}

static void test_cuda_refused(void **state)
{
    fixture *f = *state;
#ifdef EP_CUDA
    char why[256] = "";
    if (ep_gpu_count(why, sizeof why) > 0) {
        print_message(
            "# SKIP test_cuda_refused: a CUDA device is visible (tests/cuda covers it)\n");
        skip();
    }
#endif
    ep_moe_opts o;
    ep_moe_opts_default(&o, &f->cfg);
    o.cap_tokens = 4;
    o.backend = EP_MOE_BACKEND_CUDA;
    ep_moe *m = (ep_moe *)&o; // must be reset to NULL
    assert_int_equal(ep_moe_init(&f->cfg, g_cl, f->w, &o, &m), EP_ERR_UNSUPPORTED);
    assert_null(m);
    const char *msg = ep_last_error();
    assert_non_null(strstr(msg, "backend cuda"));
#ifdef EP_CUDA
    // No device: the rank's reason, from the device choice.
    assert_non_null(strstr(msg, "no CUDA device visible"));
#else
    assert_non_null(strstr(msg, "EP_CUDA=OFF"));
    assert_non_null(strstr(msg, "-DEP_CUDA=ON"));
#endif
    // The failure left nothing behind: the CPU backend still comes up.
    o.backend = EP_MOE_BACKEND_CPU;
    assert_int_equal(ep_moe_init(&f->cfg, g_cl, f->w, &o, &m), EP_OK);
    ep_moe_free(m);
}

static void test_bad_enum(void **state)
{
    fixture *f = *state;
    ep_moe_opts o;
    ep_moe_opts_default(&o, &f->cfg);
    o.backend = (ep_moe_backend)7;
    ep_moe *m = NULL;
    assert_int_equal(ep_moe_init(&f->cfg, g_cl, f->w, &o, &m), EP_ERR_ARG);
    assert_null(m);
    assert_non_null(strstr(ep_last_error(), "backend 7"));
}

int main(int argc, char **argv)
{
    if (ep_cluster_init(&argc, &argv, 0, &g_cl) != EP_OK) {
        fprintf(stderr, "ep_cluster_init: %s\n", ep_last_error());
        return 1;
    }
    const struct CMUnitTest plain[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_parse_expert_dtype),
        cmocka_unit_test(test_built),
    };
    const struct CMUnitTest with_model[] = {
        cmocka_unit_test(test_default_is_cpu),
        cmocka_unit_test(test_cuda_refused),
        cmocka_unit_test(test_bad_enum),
    };
    int rc = cmocka_run_group_tests(plain, NULL, NULL);
    rc += cmocka_run_group_tests(with_model, setup, teardown);
    ep_cluster_free(g_cl);
    return rc;
}
