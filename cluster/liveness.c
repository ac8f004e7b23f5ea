// Liveness of the ranks (cluster/liveness.h): the watch's heartbeats on a
// private communicator, the one watched wait (polls a caller's test, sends
// or reads heartbeats, gives up on rank 0 at the deadline naming the
// silent ranks), the watched allreduce, and the private channels the engine
// talks over. Which exchange or step is waited for is the callers' business.
#include "cluster/liveness.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/mpi_util.h"

enum { WATCH_TAG = 7201, WATCH_HB_US = 100000 };
#define WATCH_BYE INT64_MIN // a rank's last message: it stops the watch

static struct {
    bool on;
    MPI_Comm comm; // private duplicate of the cluster's
    int rank, world;
    int64_t entered; // MoE exchanges this rank entered while watched
    // Non-zero ranks: the heartbeat in flight (its payload: entered).
    MPI_Request hb_rq;
    int64_t hb_buf;
    double hb_sent_us;
    // Rank 0: when each rank was last heard from, and its count then.
    double *seen_us;
    int64_t *seen_entered;
    double deadline_us;
    bool gave_up;
    atomic_int check; // lock-free: set from a signal handler, read by rank 0's watchdog
} g_w = {.hb_rq = MPI_REQUEST_NULL};

// ---- the watch ---------------------------------------------------------------

bool ep_cluster_watch_on(void)
{
    return g_w.on;
}

ep_status ep_cluster_watch_start(ep_cluster *c)
{
    if (g_w.on) return ep_errorf(EP_ERR_ARG, "cluster watch: already started (one per process)");
    MPI_Comm dup;
    int rc = MPI_Comm_dup(ep_cluster_comm(c), &dup);
    if (rc != MPI_SUCCESS) return ep_mpi_error(rc, "MPI_Comm_dup (watch)", __FILE__, __LINE__);
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    g_w.comm = dup;
    g_w.rank = c->rank;
    g_w.world = c->world_size;
    g_w.entered = 0;
    g_w.hb_rq = MPI_REQUEST_NULL;
    g_w.hb_sent_us = 0;
    g_w.deadline_us = 0;
    atomic_store(&g_w.check, 0);
    g_w.seen_us = ep_xcalloc((size_t)c->world_size, sizeof(double));
    g_w.seen_entered = ep_xcalloc((size_t)c->world_size, sizeof(int64_t));
    double now = ep_now_us();
    for (int r = 0; r < c->world_size; r++)
        g_w.seen_us[r] = now;
    g_w.on = true;
    return EP_OK;
}

// Rank 0: reads the heartbeats that have arrived (at most max); returns how
// many byes. *n_read: messages read.
static int watch_drain_n(int max, int *n_read)
{
    int byes = 0, i = 0;
    for (; i < max; i++) {
        int flag = 0;
        MPI_Status stt;
        if (MPI_Iprobe(MPI_ANY_SOURCE, WATCH_TAG, g_w.comm, &flag, &stt) != MPI_SUCCESS || !flag)
            break;
        int64_t v = 0;
        if (MPI_Recv(&v, 1, MPI_INT64_T, stt.MPI_SOURCE, WATCH_TAG, g_w.comm, MPI_STATUS_IGNORE) !=
            MPI_SUCCESS)
            break;
        int r = stt.MPI_SOURCE;
        if (r <= 0 || r >= g_w.world) continue;
        if (v == WATCH_BYE) {
            byes++;
            continue;
        }
        g_w.seen_us[r] = ep_now_us();
        g_w.seen_entered[r] = v;
    }
    if (n_read) *n_read = i;
    return byes;
}

// Bounded per call: a wait loop comes back soon enough.
static int watch_drain(void)
{
    return watch_drain_n(4 * g_w.world + 16, NULL);
}

void ep_cluster_watch_poll(void)
{
    if (!g_w.on) return;
    if (g_w.rank == 0) {
        watch_drain();
        return;
    }
    double now = ep_now_us();
    if (now - g_w.hb_sent_us < WATCH_HB_US) return;
    if (g_w.hb_rq != MPI_REQUEST_NULL) {
        int done = 0;
        if (MPI_Test(&g_w.hb_rq, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || !done) return;
    }
    g_w.hb_buf = g_w.entered;
    if (MPI_Isend(&g_w.hb_buf, 1, MPI_INT64_T, 0, WATCH_TAG, g_w.comm, &g_w.hb_rq) != MPI_SUCCESS)
        g_w.hb_rq = MPI_REQUEST_NULL;
    g_w.hb_sent_us = now;
}

void ep_cluster_watch_stop(void)
{
    if (!g_w.on) return;
    if (g_w.rank == 0) {
        // Every other rank's heartbeats precede its bye (same source, tag and
        // communicator keep their order): after the byes nothing is pending.
        int byes = 0;
        double until = ep_now_us() + 2e6;
        while (byes < g_w.world - 1 && ep_now_us() < until) {
            byes += watch_drain();
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    } else {
        int64_t bye = WATCH_BYE;
        MPI_Send(&bye, 1, MPI_INT64_T, 0, WATCH_TAG, g_w.comm);
        if (g_w.hb_rq != MPI_REQUEST_NULL) MPI_Wait(&g_w.hb_rq, MPI_STATUS_IGNORE);
    }
    MPI_Comm_free(&g_w.comm);
    free(g_w.seen_us);
    free(g_w.seen_entered);
    g_w.seen_us = NULL;
    g_w.seen_entered = NULL;
    g_w.on = false;
}

void ep_cluster_watch_set_deadline(double deadline_us)
{
    g_w.deadline_us = deadline_us;
    g_w.gave_up = false;
}

bool ep_cluster_watch_gave_up(void)
{
    return g_w.gave_up;
}

void ep_cluster_watch_check(void)
{
    atomic_store(&g_w.check, 1);
}

bool ep_cluster_watch_take_check(void)
{
    return atomic_exchange(&g_w.check, 0) != 0;
}

bool ep_cluster_watch_check_pending(void)
{
    return atomic_load(&g_w.check) != 0;
}

void ep_cluster_watch_enter(void)
{
    if (g_w.on) g_w.entered++;
}

// Sleeps *us microseconds, then doubles *us up to max_us.
static void backoff(int *us, int max_us)
{
    struct timespec ts = {0, (long)*us * 1000L};
    nanosleep(&ts, NULL);
    if (*us < max_us) *us = EP_MIN(*us * 2, max_us);
}

int ep_cluster_watch_silent(double grace_s, char *names, size_t cap, bool *behind)
{
    *behind = false;
    names[0] = 0;
    if (!g_w.on || g_w.rank != 0) return 0;
    // A heartbeat counts when rank 0 reads it: read what has queued up first,
    // so that only heartbeats sent during the grace period count.
    int got;
    do
        watch_drain_n(1024, &got);
    while (got == 1024);
    double from = ep_now_us();
    int us = 50;
    while (ep_now_us() - from < grace_s * 1e6) {
        watch_drain();
        backoff(&us, 1600); // 50 us doubling to 1.6 ms
    }
    watch_drain();
    size_t k = 0;
    int n = 0;
    for (int pass = 0; pass < 2 && n == 0; pass++)
        for (int r = 1; r < g_w.world && k + 16 < cap; r++) {
            bool bad = pass == 0 ? g_w.seen_us[r] < from : g_w.seen_entered[r] < g_w.entered;
            if (!bad) continue;
            k += (size_t)snprintf(names + k, cap - k, "%s%d", n ? ", " : "", r);
            n++;
            *behind = pass == 1;
        }
    return n;
}

// ---- the watched wait ------------------------------------------------------------

// The error of a wait that names no wording of its own (the MoE exchanges').
static ep_status default_fail(const ep_cluster_watch_verdict *v)
{
    char why[96];
    if (v->n == 0)
        snprintf(why, sizeof why, "every rank sent heartbeats");
    else if (v->behind)
        snprintf(why, sizeof why, "they entered fewer MoE exchanges");
    else if (v->missing)
        snprintf(why, sizeof why, "their part is missing");
    else
        snprintf(why, sizeof why, "no heartbeat for %g s", EP_CLUSTER_WATCH_GRACE_S);
    return ep_errorf(EP_ERR_COMM,
                     "no answer from rank(s) %s (%s while rank 0 waited in MoE exchange %lld, %s; "
                     "gave up %s)",
                     v->n ? v->names : "unknown", why, (long long)v->entered, v->call,
                     v->late ? "at the step deadline" : "on a SIGTERM: mpirun ends the job");
}

ep_status ep_cluster_watch_wait(const ep_cluster_wait *w)
{
    // Exchanges spin a little first (their answer is usually microseconds
    // away); idle waits sleep at once, up to 2 ms (the tests run 4 ranks on
    // 2 cores).
    const int spins = w->idle ? 0 : 64, max_us = w->idle ? 2000 : 1024;
    int us = w->idle ? 5 : 2;
    for (int i = 0;; i++) {
        bool done = false;
        ep_status st = w->test(w->arg, &done);
        if (st != EP_OK) return st;
        if (done) return EP_OK;
        if (g_w.on) {
            ep_cluster_watch_poll();
            if (g_w.rank == 0) {
                bool late = g_w.deadline_us > 0 && ep_now_us() > g_w.deadline_us;
                bool check = !late && ep_cluster_watch_take_check();
                if (late || check) {
                    ep_cluster_watch_verdict v = {
                        .call = w->call, .late = late, .entered = g_w.entered};
                    if (late && w->missing) {
                        v.missing = true;
                        v.n = w->missing(w->arg, v.names, sizeof v.names);
                    } else {
                        v.n = ep_cluster_watch_silent(EP_CLUSTER_WATCH_GRACE_S, v.names,
                                                      sizeof v.names, &v.behind);
                    }
                    // A SIGTERM check gives up only on a silent rank: a rank
                    // behind in the count may just be computing (a user's
                    // stop). What was awaited stays pending: the job ends.
                    if (late || (v.n > 0 && !v.behind)) {
                        g_w.gave_up = true;
                        return w->fail ? w->fail(w->fail_arg, &v) : default_fail(&v);
                    }
                    // A check that found every rank alive (a plain SIGTERM): wait on.
                }
            }
        }
        if (i >= spins) backoff(&us, max_us);
    }
}

typedef struct {
    MPI_Request *rq;
    const char *call; // what the request is, for an error
} watch_mpi_req;

static ep_status watch_test_mpi(void *arg, bool *done)
{
    const watch_mpi_req *w = arg;
    int flag = 0, rc = MPI_Test(w->rq, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return ep_mpi_error(rc, w->call, __FILE__, __LINE__);
    *done = flag != 0;
    return EP_OK;
}

ep_status ep_cluster_watch_wait_mpi(MPI_Request *rq, const char *call)
{
    if (!g_w.on) {
        int rc = MPI_Wait(rq, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return ep_mpi_error(rc, call, __FILE__, __LINE__);
        return EP_OK;
    }
    watch_mpi_req r = {rq, call};
    ep_cluster_wait w = {.test = watch_test_mpi, .arg = &r, .call = call};
    return ep_cluster_watch_wait(&w);
}

// ---- watched collectives ------------------------------------------------------------

ep_status ep_cluster_watch_allreduce_i64(ep_cluster *c, int64_t *v, int n, ep_reduce_op op)
{
    if (!g_w.on) return ep_cluster_allreduce_i64(c, v, n, op);
    if (n < 0) return ep_errorf(EP_ERR_ARG, "watch allreduce_i64: count %d, expected >= 0", n);
    ep_cluster_watch_enter();
    MPI_Request rq;
    EP_MPI_CHECK(
        MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, ep_mpi_op(op), ep_cluster_comm(c), &rq));
    return ep_cluster_watch_wait_mpi(&rq, "MPI_Iallreduce (agreement)");
}

struct ep_cluster_chan {
    MPI_Comm comm; // duplicate of the cluster's, MPI_ERRORS_RETURN
    int rank, world;
    MPI_Request *rq; // [world] posted receives by source, MPI_REQUEST_NULL none
    ep_cluster_watch_fail_fn fail;
    void *fail_arg;
    char call[96]; // the wait in progress, for its error
};

ep_status ep_cluster_chan_init(ep_cluster *c, ep_cluster_watch_fail_fn fail, void *fail_arg,
                               ep_cluster_chan **out)
{
    *out = NULL;
    MPI_Comm dup;
    int rc = MPI_Comm_dup(ep_cluster_comm(c), &dup);
    if (rc != MPI_SUCCESS) return ep_mpi_error(rc, "MPI_Comm_dup (channel)", __FILE__, __LINE__);
    rc = MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS) {
        MPI_Comm_free(&dup);
        return ep_mpi_error(rc, "MPI_Comm_set_errhandler (channel)", __FILE__, __LINE__);
    }
    ep_cluster_chan *ch = ep_xcalloc(1, sizeof *ch);
    ch->comm = dup;
    ch->rank = c->rank;
    ch->world = c->world_size;
    ch->rq = ep_xmalloc((size_t)c->world_size * sizeof *ch->rq);
    for (int r = 0; r < c->world_size; r++)
        ch->rq[r] = MPI_REQUEST_NULL;
    ch->fail = fail;
    ch->fail_arg = fail_arg;
    *out = ch;
    return EP_OK;
}

void ep_cluster_chan_free(ep_cluster_chan *ch)
{
    if (!ch) return;
    // Receives still posted only after a wait gave up (the job is ending):
    // the communicator goes once they complete, as MPI_Comm_free allows.
    MPI_Comm_free(&ch->comm);
    free(ch->rq);
    free(ch);
}

// Bytes as an MPI count, or why not.
static ep_status chan_count(const ep_cluster_chan *ch, size_t bytes, int peer, int *out)
{
    if (bytes > INT_MAX)
        return ep_errorf(EP_ERR_ARG, "cluster channel: %s: %zu bytes, expected at most %d",
                         ch->call, bytes, INT_MAX);
    if (peer < 0 || peer >= ch->world)
        return ep_errorf(EP_ERR_ARG, "cluster channel: %s: rank %d outside [0, %d)", ch->call, peer,
                         ch->world);
    *out = (int)bytes;
    return EP_OK;
}

static ep_status chan_wait(ep_cluster_chan *ch, ep_status (*test)(void *, bool *),
                           int (*missing)(void *, char *, size_t), void *arg)
{
    ep_cluster_wait w = {.test = test,
                         .missing = missing,
                         .arg = arg,
                         .call = ch->call,
                         .idle = true,
                         .fail = ch->fail,
                         .fail_arg = ch->fail_arg};
    return ep_cluster_watch_wait(&w);
}

ep_status ep_cluster_chan_bcast(ep_cluster_chan *ch, void *buf, size_t bytes, int root,
                                const char *what)
{
    snprintf(ch->call, sizeof ch->call, "MPI_Ibcast (%s)", what);
    int n;
    ep_status st = chan_count(ch, bytes, root, &n);
    if (st != EP_OK) return st;
    MPI_Request rq;
    int rc = MPI_Ibcast(buf, n, MPI_BYTE, root, ch->comm, &rq);
    if (rc != MPI_SUCCESS) return ep_mpi_error(rc, ch->call, __FILE__, __LINE__);
    watch_mpi_req r = {&rq, ch->call};
    return chan_wait(ch, watch_test_mpi, NULL, &r);
}

ep_status ep_cluster_chan_send(ep_cluster_chan *ch, int dst, int tag, const void *buf, size_t bytes,
                               const char *what)
{
    snprintf(ch->call, sizeof ch->call, "MPI_Send (%s)", what);
    int n;
    ep_status st = chan_count(ch, bytes, dst, &n);
    if (st != EP_OK) return st;
    int rc = MPI_Send(buf, n, MPI_BYTE, dst, tag, ch->comm);
    if (rc != MPI_SUCCESS) return ep_mpi_error(rc, ch->call, __FILE__, __LINE__);
    return EP_OK;
}

ep_status ep_cluster_chan_post_recv(ep_cluster_chan *ch, int src, int tag, void *buf, size_t cap,
                                    const char *what)
{
    snprintf(ch->call, sizeof ch->call, "MPI_Irecv (%s)", what);
    int n;
    ep_status st = chan_count(ch, cap, src, &n);
    if (st != EP_OK) return st;
    if (ch->rq[src] != MPI_REQUEST_NULL)
        return ep_errorf(EP_ERR_ARG,
                         "cluster channel: %s: a receive from rank %d is posted already, expected "
                         "one per source until ep_cluster_chan_wait_recvs",
                         ch->call, src);
    int rc = MPI_Irecv(buf, n, MPI_BYTE, src, tag, ch->comm, &ch->rq[src]);
    if (rc != MPI_SUCCESS) return ep_mpi_error(rc, ch->call, __FILE__, __LINE__);
    return EP_OK;
}

static ep_status chan_test_recvs(void *arg, bool *done)
{
    ep_cluster_chan *ch = arg;
    int all = 0, rc = MPI_Testall(ch->world, ch->rq, &all, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
        char call[128];
        snprintf(call, sizeof call, "MPI_Testall (%s)", ch->call);
        return ep_mpi_error(rc, call, __FILE__, __LINE__);
    }
    *done = all != 0;
    return EP_OK;
}

// The sources whose receive has not completed (MPI_Testall left every
// request as it was, since not all had completed).
static int chan_missing(void *arg, char *names, size_t cap)
{
    ep_cluster_chan *ch = arg;
    size_t k = 0;
    int n = 0;
    names[0] = 0;
    for (int r = 0; r < ch->world && k + 16 < cap; r++) {
        if (ch->rq[r] == MPI_REQUEST_NULL) continue;
        int done = 0;
        MPI_Request_get_status(ch->rq[r], &done, MPI_STATUS_IGNORE);
        if (done) continue;
        k += (size_t)snprintf(names + k, cap - k, "%s%d", n ? ", " : "", r);
        n++;
    }
    return n;
}

ep_status ep_cluster_chan_wait_recvs(ep_cluster_chan *ch, const char *what)
{
    snprintf(ch->call, sizeof ch->call, "%s", what);
    return chan_wait(ch, chan_test_recvs, chan_missing, ch);
}
