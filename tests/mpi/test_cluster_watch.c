// The serving liveness watch (cluster/liveness.h) at world sizes 1-4: with it
// on, the MPI transport's polled exchanges deliver the same counts and bytes as
// the blocking ones (every rank knows what each peer sends from a formula);
// rank 0 names the one rank that sleeps without polling and nobody while
// every rank polls; a check request is taken once; stop leaves no heartbeat
// unmatched, so a second start/stop cycle works. The dead-rank behaviour of
// the whole server is tests/e2e/serve_dead_rank.sh.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/liveness.h"
#include "comm/comm.h"
#include "mpi_check.h"

// Bytes rank r sends to rank d (a multiple of the transport's 4-byte word).
static int64_t pair_bytes(int r, int d)
{
    return 4 * ((r + 2 * d) % 5 + 1);
}
static unsigned char pair_byte(int r, int d, int64_t k)
{
    return (unsigned char)(r * 16 + d * 3 + k);
}

static void exchange(ep_transport *t, const char *mode)
{
    const int W = t->world_size, me = t->rank;
    int64_t cs[8], cr[8];
    for (int d = 0; d < W; d++)
        cs[d] = 1000 * me + d;
    CHECK_OK(t->vt->exchange_counts(t, cs, cr));
    for (int s = 0; s < W; s++)
        CHECK(cr[s] == 1000 * s + me, "%s: count from rank %d: %lld, expected %d", mode, s,
              (long long)cr[s], 1000 * s + me);

    int64_t sb[8], so[8], rb[8], ro[8], ns = 0, nr = 0;
    for (int d = 0; d < W; d++) {
        sb[d] = pair_bytes(me, d);
        rb[d] = pair_bytes(d, me);
        so[d] = ns;
        ro[d] = nr;
        ns += sb[d];
        nr += rb[d];
    }
    unsigned char *sbuf = ep_xmalloc((size_t)ns), *rbuf = ep_xcalloc((size_t)nr, 1);
    for (int d = 0; d < W; d++)
        for (int64_t k = 0; k < sb[d]; k++)
            sbuf[so[d] + k] = pair_byte(me, d, k);
    CHECK_OK(ep_transport_alltoallv(t, sbuf, sb, so, rbuf, rb, ro));
    int wrong = 0;
    for (int s = 0; s < W; s++)
        for (int64_t k = 0; k < rb[s]; k++)
            wrong += rbuf[ro[s] + k] != pair_byte(s, me, k);
    CHECK(wrong == 0, "%s: %d wrong bytes received", mode, wrong);
    free(sbuf);
    free(rbuf);
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

// Every rank but `sleeper` (none: -1) polls for `s` seconds; the sleeper
// sleeps without polling; rank 0 listens for the grace period and returns
// what it named.
static int listen_round(ep_cluster *cl, int sleeper, double s, char *names, size_t cap,
                        bool *behind)
{
    CHECK_OK(ep_cluster_barrier(cl));
    int n = 0;
    names[0] = 0;
    *behind = false;
    if (cl->rank == 0) {
        sleep_s(0.1);
        n = ep_cluster_watch_silent(0.5, names, cap, behind);
        sleep_s(s - 0.6 > 0 ? s - 0.6 : 0);
    } else if (cl->rank == sleeper) {
        sleep_s(s);
    } else {
        double end = ep_now_us() + s * 1e6;
        while (ep_now_us() < end) {
            ep_cluster_watch_poll();
            sleep_s(0.001);
        }
    }
    CHECK_OK(ep_cluster_barrier(cl));
    return n;
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    const int W = cl->world_size;
    ep_transport *t = NULL;
    CHECK_OK(ep_transport_mpi_init(cl, &t));
    if (!t || W > 8) {
        int rc = mpi_check_finish(cl, "test_cluster_watch");
        ep_cluster_free(cl);
        return rc;
    }

    exchange(t, "blocking");
    CHECK(!ep_cluster_watch_on(), "the watch is off before start");
    for (int cycle = 0; cycle < 2; cycle++) {
        CHECK_OK(ep_cluster_watch_start(cl));
        CHECK(ep_cluster_watch_on(), "the watch is on after start");
        CHECK(ep_cluster_watch_start(cl) == EP_ERR_ARG, "a second start is refused");
        exchange(t, "polled");
        exchange(t, "polled again");

        ep_cluster_watch_check();
        CHECK(ep_cluster_watch_take_check(), "a check request is taken");
        CHECK(!ep_cluster_watch_take_check(), "a check request is taken once");

        char names[128];
        bool behind;
        int n = listen_round(cl, -1, 1.0, names, sizeof names, &behind);
        if (cl->rank == 0)
            CHECK(n == 0, "cycle %d: every rank polls, yet rank 0 names '%s'", cycle, names);
        if (W >= 2) {
            int sleeper = W - 1;
            n = listen_round(cl, sleeper, 1.2, names, sizeof names, &behind);
            char want[16];
            snprintf(want, sizeof want, "%d", sleeper);
            if (cl->rank == 0)
                CHECK(n == 1 && !behind && !strcmp(names, want),
                      "cycle %d: rank %d sleeps: rank 0 names %d rank(s) '%s'%s, expected '%s'",
                      cycle, sleeper, n, names, behind ? " (behind)" : "", want);
        }
        ep_cluster_watch_stop();
        CHECK(!ep_cluster_watch_on(), "the watch is off after stop");
        exchange(t, "blocking after stop");
    }
    ep_transport_free(t);
    int rc = mpi_check_finish(cl, "test_cluster_watch");
    ep_cluster_free(cl);
    return rc;
}
