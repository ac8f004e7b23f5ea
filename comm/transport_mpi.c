// The MPI transport (CPU backend): counts with MPI_Alltoall, payloads with
// MPI_Ialltoallv over 4-byte words (posted, then waited for; the blocking
// exchange is ep_transport_alltoallv, the two back to back), the self part
// by memcpy. It moves opaque bytes; what the records mean is comm.c's. NCCL
// lives in its own file.
// Also the serving liveness watch (comm/watch.h): with it on, the exchanges
// are nonblocking and polled, and rank 0 gives up at the step deadline
// naming the ranks that stopped sending heartbeats.
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/mpi_util.h"
#include "comm/comm_impl.h"
#include "comm/watch.h"

// Every record of the wire format is a multiple of 4 bytes, so payloads move
// as 4-byte words: counts stay in int range up to 8 GiB per peer, and every
// rank uses the same datatype whatever it sends (MPI needs matching type
// signatures, so the unit cannot be chosen per rank from local sizes).
#define EP_MPI_WORD 4

// One payload exchange in flight: MPI reads the count and displacement
// arrays until the request completes, so each in-flight exchange has its own.
struct ep_transport_req {
    bool busy;
    MPI_Request rq;
    int *scount, *sdispl, *rcount, *rdispl; // [world] in words
    int64_t remote;                         // bytes it sends to other ranks
};

typedef struct {
    MPI_Comm comm;     // borrowed from the cluster
    MPI_Datatype word; // 4 contiguous bytes, no conversion
    ep_transport_req slot[EP_TRANSPORT_MAX_INFLIGHT];
} ep_mpi_ctx;

// ---- liveness watch (comm/watch.h) ------------------------------------------

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

bool ep_comm_watch_on(void)
{
    return g_w.on;
}

ep_status ep_comm_watch_start(ep_cluster *c)
{
    if (g_w.on) return ep_errorf(EP_ERR_ARG, "comm watch: already started (one per process)");
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

void ep_comm_watch_poll(void)
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

void ep_comm_watch_stop(void)
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

void ep_comm_watch_set_deadline(double deadline_us)
{
    g_w.deadline_us = deadline_us;
    g_w.gave_up = false;
}

bool ep_comm_watch_gave_up(void)
{
    return g_w.gave_up;
}

void ep_comm_watch_check(void)
{
    atomic_store(&g_w.check, 1);
}

bool ep_comm_watch_take_check(void)
{
    return atomic_exchange(&g_w.check, 0) != 0;
}

bool ep_comm_watch_check_pending(void)
{
    return atomic_load(&g_w.check) != 0;
}

static void watch_sleep(int *us)
{
    struct timespec ts = {0, (long)*us * 1000L};
    nanosleep(&ts, NULL);
    if (*us < 1000) *us *= 2;
}

int ep_comm_watch_silent(double grace_s, char *names, size_t cap, bool *behind)
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
        watch_sleep(&us);
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

void ep_comm_watch_enter(void)
{
    if (g_w.on) g_w.entered++;
}

ep_status ep_comm_watch_wait(ep_status (*test)(void *arg, bool *done), void *arg, const char *call)
{
    EP_ASSERT(g_w.on);
    ep_status st;
    int us = 2, spins = 0;
    for (;;) {
        bool done = false;
        if ((st = test(arg, &done)) != EP_OK) return st;
        if (done) return EP_OK;
        ep_comm_watch_poll();
        if (g_w.rank == 0) {
            bool late = g_w.deadline_us > 0 && ep_now_us() > g_w.deadline_us;
            bool check = !late && ep_comm_watch_take_check();
            if (late || check) {
                char names[256];
                bool behind;
                int n = ep_comm_watch_silent(EP_COMM_WATCH_GRACE_S, names, sizeof names, &behind);
                // The request stays pending: after this the job ends.
                char why[96];
                if (n == 0)
                    snprintf(why, sizeof why, "every rank sent heartbeats");
                else if (behind)
                    snprintf(why, sizeof why, "they entered fewer MoE exchanges");
                else
                    snprintf(why, sizeof why, "no heartbeat for %g s", EP_COMM_WATCH_GRACE_S);
                // A SIGTERM check gives up only on a silent rank: a rank
                // behind in the count may just be computing (a user's stop).
                if (late || (n > 0 && !behind)) {
                    g_w.gave_up = true;
                    return ep_errorf(EP_ERR_COMM,
                                     "no answer from rank(s) %s (%s while rank 0 waited in MoE "
                                     "exchange %lld, %s; gave up %s)",
                                     n ? names : "unknown", why, (long long)g_w.entered, call,
                                     late ? "at the step deadline"
                                          : "on a SIGTERM: mpirun ends the job");
                }
                // A check that found every rank alive (a plain SIGTERM): wait on.
            }
        }
        if (++spins > 64) watch_sleep(&us);
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

// Waits for rq: blocking without the watch; with it, polled, sending or
// reading heartbeats, and on rank 0 giving up at the deadline (or when a
// check finds a silent rank) with a message naming the ranks.
static ep_status watch_wait(MPI_Request *rq, const char *call)
{
    if (!g_w.on) {
        int rc = MPI_Wait(rq, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return ep_mpi_error(rc, call, __FILE__, __LINE__);
        return EP_OK;
    }
    watch_mpi_req w = {rq, call};
    return ep_comm_watch_wait(watch_test_mpi, &w, call);
}

ep_status ep_comm_watch_allreduce_i64(ep_cluster *c, int64_t *v, int n, ep_reduce_op op)
{
    if (!g_w.on) return ep_cluster_allreduce_i64(c, v, n, op);
    if (n < 0) return ep_errorf(EP_ERR_ARG, "watch allreduce_i64: count %d, expected >= 0", n);
    ep_comm_watch_enter();
    MPI_Request rq;
    EP_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, ep_mpi_op(op),
                                ep_cluster_comm(c), &rq));
    return watch_wait(&rq, "MPI_Iallreduce (agreement)");
}

static ep_status ep_mpi_exchange_counts(ep_transport *t, const int64_t *send, int64_t *recv)
{
    ep_mpi_ctx *m = t->ctx;
    if (!g_w.on) {
        EP_MPI_CHECK(MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, m->comm));
        return EP_OK;
    }
    ep_comm_watch_enter();
    MPI_Request rq;
    EP_MPI_CHECK(MPI_Ialltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, m->comm, &rq));
    return watch_wait(&rq, "MPI_Ialltoall (counts)");
}

// Converts a byte count or offset for peer d to words, or says why it cannot.
static ep_status ep_mpi_words(int64_t bytes, const char *what, int peer, int *out)
{
    if (bytes < 0 || bytes % EP_MPI_WORD)
        return ep_errorf(EP_ERR_COMM,
                         "MPI transport: %s for rank %d: expected a non-negative multiple of %d "
                         "bytes, found %lld",
                         what, peer, EP_MPI_WORD, (long long)bytes);
    if (bytes / EP_MPI_WORD > INT_MAX)
        return ep_errorf(EP_ERR_COMM,
                         "MPI transport: %s for rank %d: %lld bytes exceed what one MPI_Alltoallv "
                         "can address (%lld bytes)",
                         what, peer, (long long)bytes, (long long)INT_MAX * EP_MPI_WORD);
    *out = (int)(bytes / EP_MPI_WORD);
    return EP_OK;
}

// Posts the exchange (MPI_Ialltoallv on a slot of its own: the counts and
// displacements must live until it completes). With the watch on, each
// posted exchange counts as entered, so the counts of every rank stay
// comparable whatever overlaps what.
static ep_status ep_mpi_alltoallv_start(ep_transport *t, const void *sendbuf,
                                        const int64_t *send_bytes, const int64_t *send_off,
                                        void *recvbuf, const int64_t *recv_bytes,
                                        const int64_t *recv_off, ep_transport_req **req)
{
    ep_mpi_ctx *m = t->ctx;
    const int me = t->rank;
    *req = NULL;
    ep_transport_req *q = NULL;
    for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT && !q; i++)
        if (!m->slot[i].busy) q = &m->slot[i];
    if (!q)
        return ep_errorf(EP_ERR_ARG,
                         "MPI transport: alltoallv_start: expected at most %d exchanges in "
                         "flight, found %d already (a wait is missing)",
                         EP_TRANSPORT_MAX_INFLIGHT, EP_TRANSPORT_MAX_INFLIGHT);
    int64_t remote = 0;
    ep_status st;
    for (int d = 0; d < t->world_size; d++) {
        if ((st = ep_mpi_words(send_bytes[d], "send size", d, &q->scount[d])) != EP_OK) return st;
        if ((st = ep_mpi_words(send_off[d], "send offset", d, &q->sdispl[d])) != EP_OK) return st;
        if ((st = ep_mpi_words(recv_bytes[d], "receive size", d, &q->rcount[d])) != EP_OK)
            return st;
        if ((st = ep_mpi_words(recv_off[d], "receive offset", d, &q->rdispl[d])) != EP_OK)
            return st;
        if (d != me) remote += send_bytes[d];
    }
    if (send_bytes[me] != recv_bytes[me])
        return ep_errorf(
            EP_ERR_COMM,
            "MPI transport: self part: sending %lld bytes to itself but expecting %lld",
            (long long)send_bytes[me], (long long)recv_bytes[me]);
    // The self part never touches MPI (and is not counted as moved).
    if (send_bytes[me] > 0)
        memcpy((char *)recvbuf + recv_off[me], (const char *)sendbuf + send_off[me],
               (size_t)send_bytes[me]);
    q->scount[me] = q->rcount[me] = 0;
    ep_comm_watch_enter();
    EP_MPI_CHECK(MPI_Ialltoallv(sendbuf, q->scount, q->sdispl, m->word, recvbuf, q->rcount,
                                q->rdispl, m->word, m->comm, &q->rq));
    q->remote = remote;
    q->busy = true;
    *req = q;
    return EP_OK;
}

static ep_status ep_mpi_alltoallv_wait(ep_transport *t, ep_transport_req *q, int64_t *moved)
{
    ep_mpi_ctx *m = t->ctx;
    bool ours = false;
    for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT; i++)
        ours |= q == &m->slot[i];
    if (!ours || !q->busy)
        return ep_errorf(EP_ERR_ARG,
                         "MPI transport: alltoallv_wait: expected a request in flight from "
                         "alltoallv_start, found %s",
                         !q     ? "NULL"
                         : ours ? "one waited for already"
                                : "another transport's");
    // Blocking without the watch; with it, polled (heartbeats, deadline).
    // A wait that gives up leaves the slot busy: the job ends after it.
    ep_status st = watch_wait(&q->rq, "MPI_Ialltoallv (payload)");
    if (st != EP_OK) return st;
    q->busy = false;
    t->bytes_moved += q->remote;
    if (moved) *moved += q->remote;
    return EP_OK;
}

static void ep_mpi_free(ep_transport *t)
{
    ep_mpi_ctx *m = t->ctx;
    if (m) {
        if (m->word != MPI_DATATYPE_NULL) MPI_Type_free(&m->word);
        for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT; i++) {
            ep_transport_req *q = &m->slot[i];
            // Pending only after a wait gave up (the job is ending): do not
            // free what MPI may still write through.
            if (q->busy) continue;
            free(q->scount);
            free(q->sdispl);
            free(q->rcount);
            free(q->rdispl);
        }
        free(m);
    }
    free(t);
}

static const ep_transport_vt ep_transport_mpi_vt = {
    .name = "mpi",
    .exchange_counts = ep_mpi_exchange_counts,
    .alltoallv_start = ep_mpi_alltoallv_start,
    .alltoallv_wait = ep_mpi_alltoallv_wait,
    .free = ep_mpi_free,
};

ep_status ep_transport_mpi_init(ep_cluster *c, ep_transport **out)
{
    *out = NULL;
    ep_transport *t = ep_xcalloc(1, sizeof *t);
    ep_mpi_ctx *m = ep_xcalloc(1, sizeof *m);
    t->vt = &ep_transport_mpi_vt;
    t->ctx = m;
    t->rank = c->rank;
    t->world_size = c->world_size;
    m->comm = ep_cluster_comm(c);
    m->word = MPI_DATATYPE_NULL;
    size_t w = (size_t)c->world_size;
    for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT; i++) {
        ep_transport_req *q = &m->slot[i];
        q->rq = MPI_REQUEST_NULL;
        q->scount = ep_xcalloc(w, sizeof(int));
        q->sdispl = ep_xcalloc(w, sizeof(int));
        q->rcount = ep_xcalloc(w, sizeof(int));
        q->rdispl = ep_xcalloc(w, sizeof(int));
    }
    int rc = MPI_Type_contiguous(EP_MPI_WORD, MPI_BYTE, &m->word);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&m->word);
    if (rc != MPI_SUCCESS) {
        ep_status st =
            ep_mpi_error(rc, "MPI_Type_contiguous/MPI_Type_commit(word)", __FILE__, __LINE__);
        ep_mpi_free(t);
        return st;
    }
    *out = t;
    return EP_OK;
}
