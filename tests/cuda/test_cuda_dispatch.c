// The dispatch-layout kernels (comm/cuda/) on the device against their host
// routine, which test_cuda_plan compares with ep_dispatch_plan: every field
// equal (integers, so exactly), on 1..8 ranks, home ranks and replica
// choices, T up to several scan chunks. Skips (77) without a device.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/cuda/dispatch_cuda.h"
#include "common/weights.h" // ep_rng
#include "cuda_test_util.h"

static ep_gpu *gpu;

static void test_dispatch_device(void **state)
{
    enum { E = 13, H = 13, MAXK = 5, KB = 2, CAP = 1000 };
    const int sizes[] = {0, 1, 37, 255, 256, 257, CAP};
    int64_t records = 0;
    for (int W = 1; W <= 8; W++)
        for (int rep = 0; rep < 2; rep++) {
            const int rank = (W - 1 + 3 * rep) % W;
            ep_dispatch_shape s;
            assert_int_equal(
                ep_dispatch_shape_init(&s, W, rank, MAXK, H, rep ? EP_DTYPE_BF16 : EP_DTYPE_F32),
                EP_OK);
            ep_dispatch_cuda *dev;
            assert_int_equal(ep_dispatch_cuda_init(&s, CAP, E, gpu, &dev), EP_OK);
            ep_dispatch_layout a, b;
            ep_dispatch_layout_init(&a, CAP, &s);
            ep_dispatch_layout_init(&b, CAP, &s);
            ep_placement p;
            assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, E, W), EP_OK);
            ep_routes r;
            ep_routes_init(&r, CAP, MAXK, KB);
            int *prank = malloc(sizeof(int) * CAP * MAXK);
            for (size_t c = 0; c < EP_ARRAY_LEN(sizes); c++) {
                const int T = sizes[c];
                cuda_test_routes(&r, T, MAXK, E, 500 + 10 * W + c);
                ep_rng g;
                ep_rng_seed(&g, 77 + c);
                for (int j = 0; j < ep_routes_nnz(&r); j++) // some pairs on another rank
                    prank[j] = (p.rank_of[r.expert[j]] + (int)(ep_rng_next(&g) % 2)) % W;
                const int *pr = rep ? prank : NULL;
                assert_int_equal(ep_dispatch_layout_host(&s, &r, &p, pr, &a), EP_OK);
                assert_int_equal(ep_dispatch_cuda_layout(dev, &s, &r, &p, pr, &b), EP_OK);
                assert_int_equal(b.T, T);
                assert_memory_equal(a.n_dest, b.n_dest, sizeof(int) * T);
                assert_memory_equal(a.dest, b.dest, sizeof(int) * T * MAXK);
                assert_memory_equal(a.dest_pairs, b.dest_pairs, sizeof(int) * T * MAXK);
                assert_memory_equal(a.rec_idx, b.rec_idx, sizeof(int) * T * W);
                assert_memory_equal(a.rec_off, b.rec_off, sizeof(int64_t) * T * W);
                assert_memory_equal(a.send_rec, b.send_rec, sizeof(int) * W);
                assert_memory_equal(a.send_bytes, b.send_bytes, sizeof(int64_t) * W);
                assert_memory_equal(a.send_off, b.send_off, sizeof(int64_t) * W);
                for (int d = 0; d < W; d++)
                    records += b.send_rec[d];
            }
            free(prank);
            ep_routes_free(&r);
            ep_placement_free(&p);
            ep_dispatch_layout_free(&a);
            ep_dispatch_layout_free(&b);
            ep_dispatch_cuda_free(dev);
        }
    printf("# dispatch layout kernels: %lld records, identical to the host routine\n",
           (long long)records);
    assert_true(records > 0);
}

int main(void)
{
    if (cuda_test_devices("test_cuda_dispatch") == 0) return CUDA_TEST_SKIP;
    if (ep_gpu_open(0, &gpu) != EP_OK) {
        fprintf(stderr, "ep_gpu_open: %s\n", ep_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dispatch_device),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ep_gpu_free(gpu);
    return rc;
}
