// The serving liveness watch (cluster/liveness.h) at world sizes 1-4: with it
// on, the MPI transport's polled exchanges deliver the same counts and bytes as
// the blocking ones (every rank knows what each peer sends from a formula);
// rank 0 names the one rank that sleeps without polling and nobody while
// every rank polls; a check request is taken once; stop leaves no heartbeat
// unmatched, so a second start/stop cycle works. The one watched wait gives
// up at rank 0's deadline (default message, gave_up until the next
// deadline) and without the watch only polls. A channel's broadcast and
// answers arrive; at the deadline rank 0 names the one rank whose answer is
// missing, through the channel's fail hook, and the answer still arrives
// after. The dead-rank behaviour of the whole server is
// tests/e2e/serve_dead_rank.sh.
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

// Counts polls; done after *(int *)arg polls (never when it is < 0).
typedef struct {
    int polls, done_after;
} poll_count;

static ep_status count_polls(void *arg, bool *done)
{
    poll_count *p = arg;
    p->polls++;
    *done = p->done_after >= 0 && p->polls >= p->done_after;
    return EP_OK;
}

// Every rank but 0 polls for s seconds; rank 0 waits for what never comes,
// with its deadline 0.2 s ahead: it gives up with the default message.
static void deadline_round(ep_cluster *cl, double s)
{
    CHECK_OK(ep_cluster_barrier(cl));
    if (cl->rank == 0) {
        poll_count pc = {0, -1};
        ep_cluster_wait w = {.test = count_polls, .arg = &pc, .call = "test wait"};
        ep_cluster_watch_set_deadline(ep_now_us() + 0.2e6);
        ep_status st = ep_cluster_watch_wait(&w);
        const char *msg = ep_last_error();
        CHECK(st == EP_ERR_COMM && strstr(msg, "rank(s) unknown (every rank sent heartbeats") &&
                  strstr(msg, "test wait; gave up at the step deadline"),
              "a wait past its deadline: status %d (%s)", st, msg);
        CHECK(pc.polls > 1 && ep_cluster_watch_gave_up(), "gave up after %d polls", pc.polls);
        ep_cluster_watch_set_deadline(0);
        CHECK(!ep_cluster_watch_gave_up(), "a new deadline clears gave_up");
    } else {
        double end = ep_now_us() + s * 1e6;
        while (ep_now_us() < end) {
            ep_cluster_watch_poll();
            sleep_s(0.001);
        }
    }
    CHECK_OK(ep_cluster_barrier(cl));
}

static ep_cluster_watch_verdict g_verdict;
static int g_fails;

static ep_status keep_verdict(void *arg, const ep_cluster_watch_verdict *v)
{
    (void)arg;
    g_verdict = *v;
    g_fails++;
    return ep_errorf(EP_ERR_COMM, "test channel: rank(s) %s", v->names);
}

// The channel: a broadcast from rank 0, one answer from every other rank,
// then a round where the last rank answers 0.8 s late while rank 0's
// deadline is 0.3 s ahead.
static void channel(ep_cluster *cl)
{
    const int W = cl->world_size, me = cl->rank;
    ep_cluster_chan *ch = NULL;
    CHECK_OK(ep_cluster_chan_init(cl, keep_verdict, NULL, &ch));
    if (!ch) return;
    int32_t plan[5] = {0};
    for (int i = 0; i < 5 && me == 0; i++)
        plan[i] = 100 + i;
    CHECK_OK(ep_cluster_chan_bcast(ch, plan, sizeof plan, 0, "test plan"));
    CHECK(plan[0] == 100 && plan[4] == 104, "broadcast: %d .. %d, expected 100 .. 104", plan[0],
          plan[4]);

    int64_t got[8] = {0};
    for (int round = 0; round < 2; round++) {
        int late = round == 1 ? W - 1 : -1;
        if (round == 1 && W < 2) break;
        CHECK_OK(ep_cluster_barrier(cl));
        if (me == 0) {
            for (int r = 1; r < W; r++)
                CHECK_OK(ep_cluster_chan_post_recv(ch, r, 5, &got[r], sizeof got[r], "answer"));
            if (W >= 2)
                CHECK(ep_cluster_chan_post_recv(ch, 1, 5, &got[1], sizeof got[1], "answer") ==
                          EP_ERR_ARG,
                      "a second receive from one rank is refused");
            if (late > 0) {
                g_fails = 0;
                ep_cluster_watch_set_deadline(ep_now_us() + 0.3e6);
                ep_status st = ep_cluster_chan_wait_recvs(ch, "late answers");
                char want[16];
                snprintf(want, sizeof want, "%d", late);
                CHECK(st == EP_ERR_COMM && g_fails == 1 && g_verdict.late && g_verdict.missing &&
                          !strcmp(g_verdict.names, want) && !strcmp(g_verdict.call, "late answers"),
                      "rank %d answers late: status %d, fail hook %d time(s), names '%s' (%s)",
                      late, st, g_fails, g_verdict.names, g_verdict.call);
                ep_cluster_watch_set_deadline(0);
            }
            CHECK_OK(ep_cluster_chan_wait_recvs(ch, "answers"));
            for (int r = 1; r < W; r++)
                CHECK(got[r] == 1000 * round + r, "answer of rank %d: %lld, expected %d", r,
                      (long long)got[r], 1000 * round + r);
        } else {
            if (me == late) sleep_s(0.8);
            int64_t v = 1000 * round + me;
            CHECK_OK(ep_cluster_chan_send(ch, 0, 5, &v, sizeof v, "answer"));
        }
    }
    CHECK_OK(ep_cluster_barrier(cl));
    ep_cluster_chan_free(ch);
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
    // Without the watch a wait only polls: no deadline (one long past is
    // set), no heartbeats.
    ep_cluster_watch_set_deadline(1);
    poll_count pc = {0, 5};
    ep_cluster_wait w = {.test = count_polls, .arg = &pc, .call = "unwatched"};
    CHECK(ep_cluster_watch_wait(&w) == EP_OK && pc.polls == 5,
          "without the watch a wait polls until done: %d polls, expected 5", pc.polls);
    ep_cluster_watch_set_deadline(0);
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
        if (cycle == 0) {
            deadline_round(cl, 1.2);
            channel(cl);
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
