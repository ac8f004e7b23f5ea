// Regression tests for the crashes the libFuzzer targets (tests/fuzz/) found,
// one test per finding, each failing on the code before its fix. The crash
// inputs themselves also sit in tests/fuzz/corpus/ and are replayed by the
// fuzz build; these tests run in every build.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "router/policy.h"
#include "sim/trace.h"

static char dir[256];
static char paths[4][600];
static int n_paths;

static const char *write_file(const char *name, const void *data, size_t n)
{
    char *p = paths[n_paths++];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return p;
}

static int setup(void **state)
{
    snprintf(dir, sizeof dir, "/tmp/ep_test_fuzz_regress_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    for (int i = 0; i < n_paths; i++)
        unlink(paths[i]);
    n_paths = 0;
    return rmdir(dir);
}

static void load_tiny(ep_model_cfg *m)
{
    assert_int_equal(ep_model_cfg_load("tiny-qwen3-moe", m), EP_OK);
    assert_int_equal(m->n_experts, 64); // the overflow below is sized for E = 64
    assert_int_equal(m->first_k_dense, 0);
}

// route_file.c: T * E * 4 overflowed int64 for a huge --tokens (UBSan:
// signed overflow). With E = 64, T = 2^62 wrapped to 0 bytes, so an empty
// file passed the size check. Now: EP_ERR_ARG naming --tokens.
static void test_route_tokens_overflow(void **state)
{
    ep_model_cfg m;
    load_tiny(&m);
    ep_policy *p = NULL;
    assert_int_equal(ep_policy_create(&m, "baseline", &p), EP_OK);
    const char *in = write_file("empty.f32", "", 0);
    char out[600];
    snprintf(out, sizeof out, "%s/routes.jsonl", dir);
    assert_int_equal(ep_route_file(&m, p, 0, in, INT64_C(1) << 62, out), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "--tokens"));
    assert_non_null(strstr(ep_last_error(), "overflows"));
    assert_int_equal(access(out, F_OK), -1); // nothing written
    // The largest T that still fits is refused by the size check instead.
    assert_int_equal(ep_route_file(&m, p, 0, in, INT64_MAX / 256, out), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "bytes of float32"));
    ep_policy_free(p);
}

// sim/trace.c load_csv (then app/bench_trace.c): the message for a bad expert
// id quoted the field after the line buffer holding it was freed (ASan:
// heap-use-after-free).
static void test_trace_csv_bad_id_message(void **state)
{
    ep_model_cfg m;
    load_tiny(&m);
    const char csv[] = "layer,e0,e1,e2,e3,e4,e5,e6,e7\n"
                       "0,1,2,3,4,5,6,7,8\n"
                       "0,1,2,3,x7y,5,6,7,8\n";
    const char *path = write_file("trace.csv", csv, sizeof csv - 1);
    ep_trace *t = NULL;
    assert_int_equal(ep_trace_load(path, &m, 16, &t), EP_ERR_FORMAT);
    assert_null(t);
    assert_non_null(strstr(ep_last_error(), ":3: column 4: expected an expert id, found 'x7y'"));
}

// sim/trace.c cmp_layer (then app/bench_trace.c): layer ids were compared by
// subtraction, which overflows for ids far apart (UBSan) and sorted INT_MAX
// before INT_MIN.
static void test_trace_extreme_layer_ids(void **state)
{
    ep_model_cfg m;
    load_tiny(&m);
    const char jsonl[] = "{\"layer\": 2147483647, \"experts\": [17,18,19,20,21,22,23,24]}\n"
                         "{\"layer\": -2147483648, \"experts\": [1,2,3,4,5,6,7,8]}\n"
                         "{\"layer\": 0, \"experts\": [9,10,11,12,13,14,15,16]}\n";
    const char *path = write_file("trace.jsonl", jsonl, sizeof jsonl - 1);
    ep_trace *t = NULL;
    assert_int_equal(ep_trace_load(path, &m, 16, &t), EP_OK);
    assert_int_equal(ep_trace_layers(t), 3);
    ep_routes r;
    ep_routes_init(&r, 5, 16, m.k_base);
    const int first[3] = {1, 9, 17}; // MoE layer i replays the i-th smallest trace layer
    for (int l = 0; l < 3; l++) {
        ep_trace_fill(t, &m, l, 0, 5, &r);
        assert_int_equal(ep_routes_check(&r, m.n_experts), EP_OK);
        assert_int_equal(r.expert[0], first[l]);
        assert_int_equal(ep_routes_k(&r, 4), 8);
    }
    ep_routes_free(&r);
    ep_trace_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_route_tokens_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trace_csv_bad_id_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trace_extreme_layer_ids, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
