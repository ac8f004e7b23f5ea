// The MPI transport (CPU backend): counts with MPI_Alltoall, payloads with
// MPI_Ialltoallv over 4-byte words (posted, then waited for; the blocking
// exchange is ep_transport_alltoallv, the two back to back), the self part
// by memcpy. It moves opaque bytes; what the records mean is comm.c's. NCCL
// lives in its own file. With the liveness watch on (cluster/liveness.h)
// the exchanges are nonblocking and waited in the watch's polled wait. Also
// ep_comm_raw_alltoallv, the plain MPI_Alltoallv `bench comm` compares with.
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/liveness.h"
#include "cluster/mpi_util.h"
#include "comm/comm_impl.h"

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
    MPI_Comm comm;     // borrowed from the cluster, or own (a node's ranks)
    bool own_comm;     // comm is ours to free (ep_transport_mpi_init_node)
    MPI_Datatype word; // 4 contiguous bytes, no conversion
    ep_transport_req slot[EP_TRANSPORT_MAX_INFLIGHT];
    // Node transport: the interface stays indexed by world rank; sub_of[d]
    // is d's rank in comm, -1 for ranks of other nodes (which must have 0
    // bytes). NULL: comm is the cluster's, ranks are the same.
    int *sub_of;      // [world]
    int n;            // ranks in comm
    int64_t *cs, *cr; // [n] counts in comm order (exchange_counts)
} ep_mpi_ctx;

// d's rank in the transport's communicator, or -1.
static int ep_mpi_sub(const ep_mpi_ctx *m, int d)
{
    return m->sub_of ? m->sub_of[d] : d;
}

static ep_status ep_mpi_exchange_counts_comm(ep_transport *t, const int64_t *send, int64_t *recv);

static ep_status ep_mpi_exchange_counts(ep_transport *t, const int64_t *send, int64_t *recv)
{
    ep_mpi_ctx *m = t->ctx;
    if (!m->sub_of) return ep_mpi_exchange_counts_comm(t, send, recv);
    for (int d = 0; d < t->world_size; d++) {
        const int s = m->sub_of[d];
        if (s >= 0) {
            m->cs[s] = send[d];
        } else if (send[d] != 0) {
            return ep_errorf(
                EP_ERR_COMM,
                "MPI node transport: %lld bytes for rank %d, expected 0 (another node)",
                (long long)send[d], d);
        }
    }
    ep_status st = ep_mpi_exchange_counts_comm(t, m->cs, m->cr);
    if (st != EP_OK) return st;
    for (int d = 0; d < t->world_size; d++)
        recv[d] = m->sub_of[d] >= 0 ? m->cr[m->sub_of[d]] : 0;
    return EP_OK;
}

// One int64 to and from every rank of the communicator.
static ep_status ep_mpi_exchange_counts_comm(ep_transport *t, const int64_t *send, int64_t *recv)
{
    ep_mpi_ctx *m = t->ctx;
    if (!ep_cluster_watch_on()) {
        EP_MPI_CHECK(MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, m->comm));
        return EP_OK;
    }
    ep_cluster_watch_enter();
    MPI_Request rq;
    EP_MPI_CHECK(MPI_Ialltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, m->comm, &rq));
    return ep_cluster_watch_wait_mpi(&rq, "MPI_Ialltoall (counts)");
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
        const int s = ep_mpi_sub(m, d);
        if (s < 0) { // another node: nothing to or from it on this communicator
            if (send_bytes[d] || recv_bytes[d])
                return ep_errorf(EP_ERR_COMM,
                                 "MPI node transport: %lld bytes to and %lld from rank %d, "
                                 "expected 0 (another node)",
                                 (long long)send_bytes[d], (long long)recv_bytes[d], d);
            continue;
        }
        if ((st = ep_mpi_words(send_bytes[d], "send size", d, &q->scount[s])) != EP_OK) return st;
        if ((st = ep_mpi_words(send_off[d], "send offset", d, &q->sdispl[s])) != EP_OK) return st;
        if ((st = ep_mpi_words(recv_bytes[d], "receive size", d, &q->rcount[s])) != EP_OK)
            return st;
        if ((st = ep_mpi_words(recv_off[d], "receive offset", d, &q->rdispl[s])) != EP_OK)
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
    q->scount[ep_mpi_sub(m, me)] = q->rcount[ep_mpi_sub(m, me)] = 0;
    ep_cluster_watch_enter();
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
    ep_status st = ep_cluster_watch_wait_mpi(&q->rq, "MPI_Ialltoallv (payload)");
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
        if (m->own_comm && m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
        free(m->sub_of);
        free(m->cs);
        free(m->cr);
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

// A transport over comm (n ranks; sub_of as in ep_mpi_ctx, taken over).
static ep_status ep_mpi_open(ep_cluster *c, MPI_Comm comm, bool own, int *sub_of, int n,
                             ep_transport **out)
{
    *out = NULL;
    ep_transport *t = ep_xcalloc(1, sizeof *t);
    ep_mpi_ctx *m = ep_xcalloc(1, sizeof *m);
    t->vt = &ep_transport_mpi_vt;
    t->ctx = m;
    t->rank = c->rank;
    t->world_size = c->world_size;
    m->comm = comm;
    m->own_comm = own;
    m->sub_of = sub_of;
    m->n = n;
    m->word = MPI_DATATYPE_NULL;
    m->cs = ep_xcalloc((size_t)n, sizeof(int64_t));
    m->cr = ep_xcalloc((size_t)n, sizeof(int64_t));
    for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT; i++) {
        ep_transport_req *q = &m->slot[i];
        q->rq = MPI_REQUEST_NULL;
        q->scount = ep_xcalloc((size_t)n, sizeof(int));
        q->sdispl = ep_xcalloc((size_t)n, sizeof(int));
        q->rcount = ep_xcalloc((size_t)n, sizeof(int));
        q->rdispl = ep_xcalloc((size_t)n, sizeof(int));
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

ep_status ep_transport_mpi_init(ep_cluster *c, ep_transport **out)
{
    return ep_mpi_open(c, ep_cluster_comm(c), false, NULL, c->world_size, out);
}

ep_status ep_transport_mpi_init_node(ep_cluster *c, ep_transport **out)
{
    *out = NULL;
    // Ranks of this (logical) node, in world order: MPI_Comm_split's key.
    MPI_Comm comm = MPI_COMM_NULL;
    int rc = MPI_Comm_split(ep_cluster_comm(c), c->node, c->rank, &comm);
    if (rc != MPI_SUCCESS) return ep_mpi_error(rc, "MPI_Comm_split(node)", __FILE__, __LINE__);
    int *sub_of = ep_xmalloc((size_t)c->world_size * sizeof(int));
    int n = 0;
    for (int d = 0; d < c->world_size; d++)
        sub_of[d] = c->node_of[d] == c->node ? n++ : -1;
    int size = 0;
    MPI_Comm_size(comm, &size);
    EP_ASSERT(size == n); // node_of is the same on every rank
    return ep_mpi_open(c, comm, true, sub_of, n, out);
}

ep_status ep_comm_raw_alltoallv(ep_cluster *c, const void *sendbuf, const int *send_words,
                                const int *send_off_words, void *recvbuf, const int *recv_words,
                                const int *recv_off_words)
{
    EP_MPI_CHECK(MPI_Alltoallv(sendbuf, send_words, send_off_words, MPI_UINT32_T, recvbuf,
                               recv_words, recv_off_words, MPI_UINT32_T, ep_cluster_comm(c)));
    return EP_OK;
}
