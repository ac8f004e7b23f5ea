// What `bench model --backend cuda` reports of the device path
// (app/bench_gpu.c, cluster/gpu.h): the device bandwidth probe (a positive
// number on whatever device runs it, its argument errors named, an
// emulated build saying so), the copy accounting a row sums (ep_cuda_copy_cls
// copies by class and direction land in the right fields; device-to-device
// copies do not) and its JSON, and the floor formula. Skips (77) without a
// device. No speed is asserted: on the emulated device the numbers are the
// host's.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "app/bench_gpu.h"
#include "cluster/cuda/cuda_util.h"
#include "cuda_test_dev.h"
#include "cuda_test_util.h"

static void test_bandwidth_probe(void **state)
{
    ep_gpu *g = NULL;
    OK(ep_gpu_open(0, &g));
    double gbps = -1;
    OK(ep_gpu_measure_bandwidth(g, (size_t)1 << 20, 3, &gbps));
    assert_true(gbps > 0 && isfinite(gbps));
    printf("# device 0 (%s%s): %.1f GB/s over 1 MiB copies\n", ep_gpu_name(g),
           ep_gpu_emulated() ? ", emulated: not a GPU number" : "", gbps);
#ifdef EP_CUDA_EMU
    assert_true(ep_gpu_emulated());
    assert_string_equal(ep_gpu_name(g), "epserve emulated device");
#else
    assert_false(ep_gpu_emulated());
#endif
    // Bad arguments are refused by name, before any allocation.
    gbps = -1;
    assert_int_equal(ep_gpu_measure_bandwidth(g, 0, 3, &gbps), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "bytes 0"));
    assert_true(gbps == 0);
    assert_int_equal(ep_gpu_measure_bandwidth(g, 4096, 0, &gbps), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "reps 0"));
    // Device-to-device copies are not host traffic: the probe moves none.
    ep_gpu_copy_stats before, after, sum = {0};
    ep_bench_copies_now(&before);
    OK(ep_gpu_measure_bandwidth(g, 4096, 2, &gbps));
    ep_bench_copies_now(&after);
    ep_bench_copies_add(&sum, &before, &after);
    assert_true(sum.h2d_bytes == 0 && sum.d2h_bytes == 0 && sum.h2d_copies == 0);
    ep_gpu_free(g);
}

static ep_cluster *cl; // one rank (MPI starts once per process)

// ep_bench_device_probe opens the rank's device through the cluster.
static void test_device_probe(void **state)
{
    ep_bench_device d;
    OK(ep_bench_device_probe(cl, 2, &d));
    assert_true(d.gbps > 0);
    assert_true(d.name[0] != '\0');
    assert_int_equal(d.emulated, ep_gpu_emulated());
    assert_true(d.probe_bytes == (d.emulated ? EP_GPU_BW_BYTES_EMU : EP_GPU_BW_BYTES));
}

static double jnum(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    if (b) v = json_object_get(v, b);
    assert_non_null(v);
    return json_number_value(v);
}

// Copies made through ep_cuda_copy_cls between two reads land in their class
// and direction; a row's sum over 4 steps gives per-step figures in JSON.
static void test_copy_accounting(void **state)
{
    enum { A = 4000, M = 60, D = 12 };
    static float host[A];
    void *dev = dev_upload(NULL, A * sizeof(float));
    ep_gpu_copy_stats sum = {0};
    for (int step = 0; step < 4; step++) {
        ep_gpu_copy_stats b, a;
        ep_bench_copies_now(&b);
        OK(ep_cuda_copy_cls(dev, host, A, cudaMemcpyHostToDevice, NULL, EP_COPY_ACT, "act in"));
        OK(ep_cuda_copy_cls(host, dev, 2 * A, cudaMemcpyDeviceToHost, NULL, EP_COPY_ACT,
                            "act out"));
        OK(ep_cuda_copy_cls(dev, host, M, cudaMemcpyHostToDevice, NULL, EP_COPY_META, "ids in"));
        OK(ep_cuda_copy_cls(host, dev, D, cudaMemcpyDeviceToHost, NULL, EP_COPY_META, "ids out"));
        OK(ep_cuda_copy_cls((char *)dev + A, dev, A, cudaMemcpyDeviceToDevice, NULL, EP_COPY_ACT,
                            "d2d"));
        CK(cudaDeviceSynchronize());
        ep_bench_copies_now(&a);
        ep_bench_copies_add(&sum, &b, &a);
    }
    assert_true(sum.h2d[EP_COPY_ACT] == 4 * A && sum.d2h[EP_COPY_ACT] == 8 * A);
    assert_true(sum.h2d[EP_COPY_META] == 4 * M && sum.d2h[EP_COPY_META] == 4 * D);
    assert_true(sum.h2d[EP_COPY_LOAD] == 0 && sum.d2h[EP_COPY_LOAD] == 0);
    assert_true(sum.h2d_bytes == 4 * (A + M) && sum.d2h_bytes == 4 * (2 * A + D));
    assert_true(sum.h2d_copies == 8 && sum.d2h_copies == 8);

    // One rank: the sum over ranks is the rank's own, totals rebuilt.
    ep_gpu_copy_stats red = sum;
    red.h2d_bytes = red.d2h_bytes = 0;
    OK(ep_bench_copies_allreduce(cl, &red));
    assert_memory_equal(&red, &sum, sizeof sum);

    json_t *j = ep_bench_copy_json(&sum, 4);
    assert_true(jnum(j, "act", "h2d") == A && jnum(j, "act", "d2h") == 2 * A);
    assert_true(jnum(j, "meta", "h2d") == M && jnum(j, "meta", "d2h") == D);
    assert_true(jnum(j, "load", "h2d") == 0 && jnum(j, "load", "d2h") == 0);
    assert_true(jnum(j, "h2d", NULL) == A + M && jnum(j, "d2h", NULL) == 2 * A + D);
    assert_true(jnum(j, "h2d_calls", NULL) == 2 && jnum(j, "d2h_calls", NULL) == 2);
    assert_int_equal(json_object_size(j), EP_COPY_N_CLASSES + 4);
    json_decref(j);
    j = ep_bench_copy_json(&sum, 0); // no step: zeros, not a division by 0
    assert_true(jnum(j, "act", "h2d") == 0 && jnum(j, "h2d_calls", NULL) == 0);
    json_decref(j);
    CK(cudaFree(dev));
}

static void test_floor(void **state)
{
    // 3.35e9 bytes at 3350 GB/s: 1 ms; a 2.5 ms step is 2.5 floors.
    assert_true(fabs(ep_bench_floor_ms(3.35e9, 3350) - 1.0) < 1e-12);
    assert_true(fabs(ep_bench_x_floor(2.5, ep_bench_floor_ms(3.35e9, 3350)) - 2.5) < 1e-12);
    assert_true(fabs(ep_bench_floor_ms(8e6, 2) - 4.0) < 1e-12); // 8 MB at 2 GB/s: 4 ms
    // No bandwidth or no bytes: no floor, and no multiple of it.
    assert_true(ep_bench_floor_ms(1e6, 0) == 0 && ep_bench_floor_ms(0, 100) == 0);
    assert_true(ep_bench_floor_ms(1e6, -1) == 0);
    assert_true(ep_bench_x_floor(3, 0) == 0);
}

int main(int argc, char **argv)
{
    if (cuda_test_devices("test_cuda_bench") == 0) return CUDA_TEST_SKIP;
    if (cudaSetDevice(0) != cudaSuccess) return 1;
    if (ep_cluster_init(&argc, &argv, 0, &cl)) {
        fprintf(stderr, "test_cuda_bench: %s\n", ep_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_floor),
        cmocka_unit_test(test_bandwidth_probe),
        cmocka_unit_test(test_device_probe),
        cmocka_unit_test(test_copy_accounting),
    };
    const int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ep_cluster_free(cl);
    return rc;
}
