// `epserve bench comm`: the transport alone, in the style of nccl-tests'
// alltoall_perf. Sizes are swept from -b to -e by factor -f (bytes sent to
// each peer); each size gets warm-up iterations, timed iterations and a
// correctness pass that counts #wrong words. The same buffers also go through
// the raw all-to-all of comm/ (ep_comm_raw_alltoallv, one plain MPI call), so
// the transport's overhead can be read off one row. p50 and min are the
// median and minimum over the timed iterations of the slowest rank's time: on
// a shared machine one descheduled iteration moves the mean, not these
// (docs/scale.md §6).
#include "app/commands.h"
#include "comm/comm.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t parse_size(const char *s, bool *ok)
{
    char *end = NULL;
    double v = strtod(s, &end);
    int64_t mul = 1;
    if (end && *end) {
        switch (*end) {
        case 'K':
        case 'k':
            mul = 1 << 10;
            break;
        case 'M':
        case 'm':
            mul = 1 << 20;
            break;
        case 'G':
        case 'g':
            mul = 1 << 30;
            break;
        default:
            *ok = false;
            return 0;
        }
        if (end[1]) {
            *ok = false;
            return 0;
        }
    }
    *ok = v >= 0 && end != s;
    return (int64_t)(v * (double)mul);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// The word rank `src` puts at index i of its block for rank `dst`.
static uint32_t pattern(int src, int dst, int64_t i, int iter)
{
    return (uint32_t)(src * 2654435761u) ^ (uint32_t)(dst * 40503u) ^ (uint32_t)i ^
           (uint32_t)(iter << 24);
}

int ep_cmd_bench_comm(int argc, char **argv)
{
    static const struct option opts[] = {{"minbytes", required_argument, 0, 'b'},
                                         {"maxbytes", required_argument, 0, 'e'},
                                         {"stepfactor", required_argument, 0, 'f'},
                                         {"warmup_iters", required_argument, 0, 'w'},
                                         {"iters", required_argument, 0, 'n'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int64_t minb = 1024, maxb = 1 << 22;
    int factor = 2, warm = 5, iters = 20, c;
    bool ok = true;
    optind = 1;
    while ((c = getopt_long(argc, argv, "b:e:f:w:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            minb = parse_size(optarg, &ok);
            break;
        case 'e':
            maxb = parse_size(optarg, &ok);
            break;
        case 'f':
            factor = atoi(optarg);
            break;
        case 'w':
            warm = atoi(optarg);
            break;
        case 'n':
            iters = atoi(optarg);
            break;
        case 'h':
            printf("usage: epserve bench comm [-b MINBYTES] [-e MAXBYTES] [-f FACTOR] [-w WARMUP] "
                   "[-n ITERS]\n  sizes are bytes sent to each peer (K, M, G suffixes)\n");
            return 0;
        default:
            return 2;
        }
        if (!ok) {
            fprintf(stderr,
                    "epserve bench comm: -%c: expected a size like 1024, 64K or 8M, found '%s'\n",
                    c, optarg);
            return 2;
        }
    }
    if (minb < 4 || maxb < minb || factor < 2 || warm < 0 || iters < 1) {
        fprintf(stderr, "epserve bench comm: expected 4 <= -b <= -e, -f >= 2, -w >= 0, -n >= 1\n");
        return 2;
    }

    ep_cluster *cl = NULL;
    ep_transport *tp = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) || ep_transport_mpi_init(cl, &tp)) {
        fprintf(stderr, "epserve bench comm: %s\n", ep_last_error());
        ep_cluster_free(cl);
        return 1;
    }
    int W = cl->world_size, rc = 0;
    int64_t max_words = maxb / 4;
    uint32_t *sbuf = ep_xmalloc((size_t)max_words * W * 4),
             *rbuf = ep_xmalloc((size_t)max_words * W * 4);
    int64_t *cnt = ep_xmalloc((size_t)W * 4 * sizeof(int64_t));
    int64_t *soff = cnt + W, *rcnt = cnt + 2 * W, *roff = cnt + 3 * W;
    int *icnt = ep_xmalloc((size_t)W * 2 * sizeof(int)), *ioff = icnt + W;
    double *it_us = ep_xmalloc((size_t)iters * sizeof(double)); // this rank, per timed iteration

    if (cl->rank == 0) {
        printf("# epserve bench comm: all-to-all, %d ranks, %d nodes, transport %s\n", W,
               cl->n_nodes, tp->vt->name);
        printf("# size = bytes to each peer; algbw = bytes sent per rank / time; busbw = "
               "algbw*(n-1)/n\n#\n");
        printf("# %12s %10s %10s %10s %10s %9s %9s %10s %9s %8s\n", "size", "time", "p50_time",
               "min_time", "raw_time", "algbw", "busbw", "raw_algbw", "overhead", "#wrong");
        printf("# %12s %10s %10s %10s %10s %9s %9s %10s %9s %8s\n", "(B)", "(us)", "(us)", "(us)",
               "(us)", "(GB/s)", "(GB/s)", "(GB/s)", "(%)", "");
    }
    for (int64_t size = minb; size <= maxb; size *= factor) {
        int64_t words = size / 4;
        for (int r = 0; r < W; r++) {
            cnt[r] = rcnt[r] = words * 4;
            soff[r] = roff[r] = (int64_t)r * words * 4;
            icnt[r] = (int)words;
            ioff[r] = (int)(r * words);
        }
        double t_ep = 0, t_raw = 0;
        int64_t wrong = 0;
        for (int it = 0; it < warm + iters; it++) {
            ep_cluster_barrier(cl);
            double t0 = ep_now_us();
            if (ep_transport_alltoallv(tp, sbuf, cnt, soff, rbuf, rcnt, roff)) {
                fprintf(stderr, "epserve bench comm: %s\n", ep_last_error());
                rc = 1;
                goto out;
            }
            double t1 = ep_now_us();
            ep_cluster_barrier(cl);
            double t2 = ep_now_us();
            if (ep_comm_raw_alltoallv(cl, sbuf, icnt, ioff, rbuf, icnt, ioff)) {
                fprintf(stderr, "epserve bench comm: %s\n", ep_last_error());
                rc = 1;
                goto out;
            }
            double t3 = ep_now_us();
            if (it >= warm) {
                it_us[it - warm] = t1 - t0;
                t_ep += (t1 - t0) * 1e-6;
                t_raw += (t3 - t2) * 1e-6;
            }
        }
        // Correctness pass through the transport, with a fresh pattern.
        for (int r = 0; r < W; r++)
            for (int64_t i = 0; i < words; i++)
                sbuf[(size_t)r * words + i] = pattern(cl->rank, r, i, 7);
        memset(rbuf, 0, (size_t)words * W * 4);
        if (ep_transport_alltoallv(tp, sbuf, cnt, soff, rbuf, rcnt, roff)) {
            fprintf(stderr, "epserve bench comm: %s\n", ep_last_error());
            rc = 1;
            goto out;
        }
        for (int r = 0; r < W; r++)
            for (int64_t i = 0; i < words; i++)
                wrong += rbuf[(size_t)r * words + i] != pattern(r, cl->rank, i, 7);
        double tv[2] = {t_ep / iters, t_raw / iters};
        if (ep_cluster_allreduce_f64(cl, tv, 2, EP_REDUCE_MAX) ||
            ep_cluster_allreduce_f64(cl, it_us, iters, EP_REDUCE_MAX) ||
            ep_cluster_allreduce_i64(cl, &wrong, 1, EP_REDUCE_SUM)) {
            fprintf(stderr, "epserve bench comm: %s\n", ep_last_error());
            rc = 1;
            goto out;
        }
        if (cl->rank == 0) {
            double sent = (double)words * 4 * (W - 1); // bytes each rank sends to others
            double alg = tv[0] > 0 ? sent / tv[0] / 1e9 : 0;
            double raw = tv[1] > 0 ? sent / tv[1] / 1e9 : 0;
            qsort(it_us, (size_t)iters, sizeof *it_us, cmp_double);
            double p50 =
                iters % 2 ? it_us[iters / 2] : 0.5 * (it_us[iters / 2 - 1] + it_us[iters / 2]);
            printf("  %12lld %10.2f %10.2f %10.2f %10.2f %9.3f %9.3f %10.3f %9.1f %8lld\n",
                   (long long)words * 4, tv[0] * 1e6, p50, it_us[0], tv[1] * 1e6, alg,
                   W > 1 ? alg * (W - 1) / W : 0, raw,
                   tv[1] > 0 ? 100.0 * (tv[0] - tv[1]) / tv[1] : 0, (long long)wrong);
        }
        if (wrong) rc = 1;
    }
    if (cl->rank == 0) fflush(stdout);
out:
    free(sbuf);
    free(rbuf);
    free(cnt);
    free(icnt);
    free(it_us);
    ep_transport_free(tp);
    ep_cluster_free(cl);
    return rc;
}
