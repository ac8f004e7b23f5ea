// The NCCL transport: counts and payloads as one group of per-peer
// ncclSend/ncclRecv (ncclGroupStart .. ncclGroupEnd) on a communication
// stream, host buffers staged through device buffers (per in-flight
// exchange), the self part copied locally. A payload exchange is posted by
// start and finished by wait (its event, then the async error). It moves
// opaque bytes; what they mean is comm.c's.
#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/nccl_util.h"
#include "cluster/liveness.h"
#include "comm/comm_impl.h"
#include "comm/nccl/transport_nccl.h"

// One payload exchange in flight, with staging of its own (the other
// exchange may still be on the stream when this one grows its buffers).
// Host payloads go through pinned host buffers: a copy from or to pageable
// memory would synchronise with the stream, that is wait for the other
// exchange, and nothing would overlap.
struct ep_transport_req {
    bool busy;
    cudaEvent_t done;      // recorded after the exchange's last operation on the stream
    void *d_send, *d_recv; // device staging for host payloads
    size_t send_cap, recv_cap;
    void *h_send, *h_recv; // pinned host staging
    size_t h_send_cap, h_recv_cap;
    // Where the staged receive goes at the wait (recv_host: recvbuf is host memory).
    bool recv_host;
    char *recvbuf;
    int64_t *recv_bytes, *recv_off; // [world] copies of the caller's
    int64_t remote;                 // bytes it sends to other ranks
};

typedef struct {
    ncclComm_t comm; // borrowed from the ep_nccl
    int device;
    cudaStream_t stream; // communication stream, owned
    int64_t *d_counts;   // [2 * world] device: send counts, then received counts
    int64_t *h_counts;   // [2 * world] pinned host staging of the same
    cudaEvent_t counts_done;
    // A wait gave up (the liveness watch) with work still on the stream:
    // free must not synchronise with it.
    bool stuck;
    ep_transport_req slot[EP_TRANSPORT_MAX_INFLIGHT];
} ep_nccl_ctx;

// ---- helpers ----------------------------------------------------------------------------

// Whether p is memory NCCL can send from / receive into directly (device or
// managed). Plain and pinned host memory is staged.
static ep_status ep_nccl_on_device(const void *p, bool *dev)
{
    *dev = false;
    if (!p) return EP_OK;
    struct cudaPointerAttributes a;
    EP_CUDA_CHECK(cudaPointerGetAttributes(&a, p));
    *dev = a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
    return EP_OK;
}

static ep_status ep_nccl_check_sizes(const ep_transport *t, const int64_t *send_bytes,
                                     const int64_t *send_off, const int64_t *recv_bytes,
                                     const int64_t *recv_off)
{
    for (int d = 0; d < t->world_size; d++) {
        if (send_bytes[d] < 0 || send_off[d] < 0 || recv_bytes[d] < 0 || recv_off[d] < 0)
            return ep_errorf(EP_ERR_COMM,
                             "NCCL transport: peer %d: expected non-negative sizes and offsets, "
                             "found send %lld at %lld, receive %lld at %lld",
                             d, (long long)send_bytes[d], (long long)send_off[d],
                             (long long)recv_bytes[d], (long long)recv_off[d]);
    }
    const int me = t->rank;
    if (send_bytes[me] != recv_bytes[me])
        return ep_errorf(EP_ERR_COMM,
                         "NCCL transport: self part: sending %lld bytes to itself but expecting "
                         "%lld",
                         (long long)send_bytes[me], (long long)recv_bytes[me]);
    return EP_OK;
}

// End of the furthest remote part: the staging a host buffer needs.
static size_t ep_nccl_extent(const ep_transport *t, const int64_t *bytes, const int64_t *off)
{
    size_t ext = 0;
    for (int d = 0; d < t->world_size; d++)
        if (d != t->rank && bytes[d] > 0) ext = EP_MAX(ext, (size_t)(off[d] + bytes[d]));
    return ext;
}

// Pinned host memory that grows (contents not kept), as ep_cuda_grow.
static ep_status ep_nccl_grow_pinned(void **p, size_t *cap, size_t need, const char *what)
{
    if (need <= *cap) return EP_OK;
    size_t n = EP_MAX(need, *cap + *cap / 2);
    if (*p) {
        cudaError_t rc = cudaFreeHost(*p);
        *p = NULL;
        *cap = 0;
        if (rc != cudaSuccess) return EP_CUDA_ST(rc);
    }
    cudaError_t rc = cudaMallocHost(p, n);
    if (rc != cudaSuccess) {
        *p = NULL;
        ep_status st = EP_CUDA_ST(rc);
        return ep_error_prefix(st, "%s: %zu bytes of pinned host memory", what, n);
    }
    *cap = n;
    return EP_OK;
}

typedef struct {
    ep_nccl_ctx *m;
    cudaEvent_t ev;
} ep_nccl_poll_arg;

// One poll of the liveness watch's wait: the event, and meanwhile whether
// NCCL saw the communicator fail (a peer that died never sets the event).
static ep_status ep_nccl_poll(void *arg, bool *done)
{
    const ep_nccl_poll_arg *p = arg;
    cudaError_t rc = cudaEventQuery(p->ev);
    *done = rc == cudaSuccess;
    if (rc != cudaSuccess && rc != cudaErrorNotReady) return EP_CUDA_ST(rc);
    // "Not ready" is no error: keep it from a later cudaGetLastError check.
    if (rc == cudaErrorNotReady && cudaPeekAtLastError() == cudaErrorNotReady)
        (void)cudaGetLastError();
    if (!*done) {
        ncclResult_t async = ncclSuccess;
        EP_NCCL_CHECK(ncclCommGetAsyncError(p->m->comm, &async));
        EP_NCCL_CHECK(async);
    }
    return EP_OK;
}

// Waits for ev (blocking; with the liveness watch on, polled, with its
// heartbeats and step deadline, as the MPI transport's waits), then asks
// NCCL whether the communicator failed asynchronously (a peer died, a
// network error) while the group ran.
static ep_status ep_nccl_wait_event(ep_nccl_ctx *m, cudaEvent_t ev, const char *call)
{
    ep_status st;
    if (!ep_cluster_watch_on()) {
        st = EP_CUDA_ST(cudaEventSynchronize(ev));
    } else {
        ep_nccl_poll_arg p = {m, ev};
        ep_cluster_wait w = {.test = ep_nccl_poll, .arg = &p, .call = call};
        st = ep_cluster_watch_wait(&w);
    }
    ncclResult_t async = ncclSuccess;
    if (st == EP_OK) st = EP_NCCL_ST(ncclCommGetAsyncError(m->comm, &async));
    if (st == EP_OK) st = EP_NCCL_ST(async);
    if (st != EP_OK) m->stuck = true;
    return st;
}

// ---- the vtable ---------------------------------------------------------------------------

static ep_status ep_nccl_exchange_counts(ep_transport *t, const int64_t *send, int64_t *recv)
{
    ep_nccl_ctx *m = t->ctx;
    const int W = t->world_size, me = t->rank;
    EP_CUDA_CHECK(cudaSetDevice(m->device));
    // Through pinned memory: a pageable copy would synchronise with the
    // stream and so wait for payloads still in flight there.
    memcpy(m->h_counts, send, (size_t)W * sizeof(int64_t));
    ep_status st =
        ep_cuda_copy_cls(m->d_counts, m->h_counts, (size_t)W * sizeof(int64_t),
                         cudaMemcpyHostToDevice, m->stream, EP_COPY_META, "NCCL transport counts");
    if (st != EP_OK) return st;
    EP_NCCL_CHECK(ncclGroupStart());
    for (int d = 0; d < W; d++) {
        if (d == me) continue;
        st = EP_NCCL_ST(ncclSend(m->d_counts + d, 1, ncclInt64, d, m->comm, m->stream));
        if (st == EP_OK)
            st = EP_NCCL_ST(ncclRecv(m->d_counts + W + d, 1, ncclInt64, d, m->comm, m->stream));
        if (st != EP_OK) {
            (void)ncclGroupEnd();
            return ep_error_prefix(st, "NCCL transport: counts with rank %d", d);
        }
    }
    EP_NCCL_CHECK(ncclGroupEnd());
    if ((st = ep_cuda_copy_cls(m->h_counts + W, m->d_counts + W, (size_t)W * sizeof(int64_t),
                               cudaMemcpyDeviceToHost, m->stream, EP_COPY_META,
                               "NCCL transport counts")))
        return st;
    EP_CUDA_CHECK(cudaEventRecord(m->counts_done, m->stream));
    ep_cluster_watch_enter();
    st = ep_nccl_wait_event(m, m->counts_done, "NCCL group (counts)");
    if (st != EP_OK) return ep_error_prefix(st, "NCCL transport: exchanging counts");
    memcpy(recv, m->h_counts + W, (size_t)W * sizeof(int64_t));
    recv[me] = send[me];
    return EP_OK;
}

// Posts the group on the stream: host send parts are staged to the device
// first (the copy from pageable memory returns once the data is taken), the
// self part is copied, and nothing waits. The device-to-host copies of a
// staged receive are queued by the wait, since one into pageable memory
// would block the host until the group is done.
static ep_status ep_nccl_alltoallv_start(ep_transport *t, const void *sendbuf,
                                         const int64_t *send_bytes, const int64_t *send_off,
                                         void *recvbuf, const int64_t *recv_bytes,
                                         const int64_t *recv_off, ep_transport_req **req)
{
    ep_nccl_ctx *m = t->ctx;
    const int W = t->world_size, me = t->rank;
    *req = NULL;
    ep_transport_req *q = NULL;
    for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT && !q; i++)
        if (!m->slot[i].busy) q = &m->slot[i];
    if (!q)
        return ep_errorf(EP_ERR_ARG,
                         "NCCL transport: alltoallv_start: expected at most %d exchanges in "
                         "flight, found %d already (a wait is missing)",
                         EP_TRANSPORT_MAX_INFLIGHT, EP_TRANSPORT_MAX_INFLIGHT);
    ep_status st = ep_nccl_check_sizes(t, send_bytes, send_off, recv_bytes, recv_off);
    if (st != EP_OK) return st;
    EP_CUDA_CHECK(cudaSetDevice(m->device));

    int64_t remote = 0;
    for (int d = 0; d < W; d++)
        if (d != me) remote += send_bytes[d];
    const size_t send_ext = ep_nccl_extent(t, send_bytes, send_off);
    const size_t recv_ext = ep_nccl_extent(t, recv_bytes, recv_off);

    bool send_dev = false, recv_dev = false;
    if ((st = ep_nccl_on_device(sendbuf, &send_dev)) != EP_OK) return st;
    if ((st = ep_nccl_on_device(recvbuf, &recv_dev)) != EP_OK) return st;

    // Staged buffers keep the caller's offsets, so one set of offsets serves both.
    const char *sbase = sendbuf;
    char *rbase = recvbuf;
    if (!send_dev && send_ext > 0) {
        if ((st = ep_cuda_grow(&q->d_send, &q->send_cap, send_ext, "NCCL transport send staging")))
            return st;
        if ((st = ep_nccl_grow_pinned(&q->h_send, &q->h_send_cap, send_ext,
                                      "NCCL transport send staging")))
            return st;
        for (int d = 0; d < W; d++)
            if (d != me && send_bytes[d] > 0)
                memcpy((char *)q->h_send + send_off[d], (const char *)sendbuf + send_off[d],
                       (size_t)send_bytes[d]);
        // Host payloads are activations (rows): counted as ACT.
        if ((st = ep_cuda_copy_cls(q->d_send, q->h_send, send_ext, cudaMemcpyHostToDevice,
                                   m->stream, EP_COPY_ACT, "NCCL transport send staging")))
            return st;
        sbase = q->d_send;
    }
    q->recv_host = !recv_dev && recv_ext > 0;
    if (q->recv_host) {
        if ((st = ep_cuda_grow(&q->d_recv, &q->recv_cap, recv_ext,
                               "NCCL transport receive staging")))
            return st;
        if ((st = ep_nccl_grow_pinned(&q->h_recv, &q->h_recv_cap, recv_ext,
                                      "NCCL transport receive staging")))
            return st;
        rbase = q->d_recv;
    }

    // Zero-byte parts are skipped on both sides: the sizes come from the
    // counts exchange, so a sender and its receiver agree on which exist.
    EP_NCCL_CHECK(ncclGroupStart());
    for (int d = 0; d < W; d++) {
        if (d == me) continue;
        st = EP_OK;
        if (send_bytes[d] > 0)
            st = EP_NCCL_ST(ncclSend(sbase + send_off[d], (size_t)send_bytes[d], ncclUint8, d,
                                     m->comm, m->stream));
        if (st == EP_OK && recv_bytes[d] > 0)
            st = EP_NCCL_ST(ncclRecv(rbase + recv_off[d], (size_t)recv_bytes[d], ncclUint8, d,
                                     m->comm, m->stream));
        if (st != EP_OK) {
            (void)ncclGroupEnd();
            return ep_error_prefix(st, "NCCL transport: payload with rank %d", d);
        }
    }
    EP_NCCL_CHECK(ncclGroupEnd());
    if (q->recv_host &&
        (st = ep_cuda_copy_cls(q->h_recv, q->d_recv, recv_ext, cudaMemcpyDeviceToHost, m->stream,
                               EP_COPY_ACT, "NCCL transport receive staging")))
        return st;
    // The self part never touches NCCL (and is not counted as moved).
    if (send_bytes[me] > 0) {
        if (!send_dev && !recv_dev)
            memcpy((char *)recvbuf + recv_off[me], (const char *)sendbuf + send_off[me],
                   (size_t)send_bytes[me]);
        else if ((st =
                      ep_cuda_copy_cls((char *)recvbuf + recv_off[me],
                                       (const char *)sendbuf + send_off[me], (size_t)send_bytes[me],
                                       !send_dev  ? cudaMemcpyHostToDevice
                                       : recv_dev ? cudaMemcpyDeviceToDevice
                                                  : cudaMemcpyDeviceToHost,
                                       m->stream, EP_COPY_ACT, "NCCL transport self part")))
            return st;
    }
    EP_CUDA_CHECK(cudaEventRecord(q->done, m->stream));
    ep_cluster_watch_enter();
    q->recvbuf = recvbuf;
    memcpy(q->recv_bytes, recv_bytes, (size_t)W * sizeof(int64_t));
    memcpy(q->recv_off, recv_off, (size_t)W * sizeof(int64_t));
    q->remote = remote;
    q->busy = true;
    *req = q;
    return EP_OK;
}

// Waits for this exchange's event only (the other one may still run), asks
// NCCL whether the communicator failed meanwhile, then copies a staged
// receive out of pinned memory into the caller's buffer.
static ep_status ep_nccl_alltoallv_wait(ep_transport *t, ep_transport_req *q, int64_t *moved)
{
    ep_nccl_ctx *m = t->ctx;
    const int W = t->world_size, me = t->rank;
    bool ours = false;
    for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT; i++)
        ours |= q == &m->slot[i];
    if (!ours || !q->busy)
        return ep_errorf(EP_ERR_ARG,
                         "NCCL transport: alltoallv_wait: expected a request in flight from "
                         "alltoallv_start, found %s",
                         !q     ? "NULL"
                         : ours ? "one waited for already"
                                : "another transport's");
    EP_CUDA_CHECK(cudaSetDevice(m->device));
    ep_status st = ep_nccl_wait_event(m, q->done, "NCCL group (payload)");
    if (st != EP_OK) return ep_error_prefix(st, "NCCL transport: payload");
    if (q->recv_host)
        for (int d = 0; d < W; d++)
            if (d != me && q->recv_bytes[d] > 0)
                memcpy(q->recvbuf + q->recv_off[d], (char *)q->h_recv + q->recv_off[d],
                       (size_t)q->recv_bytes[d]);
    q->busy = false;
    t->bytes_moved += q->remote;
    if (moved) *moved += q->remote;
    return EP_OK;
}

static void ep_nccl_tp_free(ep_transport *t)
{
    ep_nccl_ctx *m = t->ctx;
    if (m && m->stuck) {
        // A wait gave up with a group on the stream that may never end:
        // cudaFree and friends would synchronise with it and hang. The job
        // is ending; the device memory goes with the process.
        for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT; i++) {
            free(m->slot[i].recv_bytes);
            free(m->slot[i].recv_off);
        }
        free(m);
    } else if (m) {
        // Best effort: a failing device at shutdown leaves nothing to recover.
        (void)cudaSetDevice(m->device);
        if (m->stream) (void)cudaStreamSynchronize(m->stream);
        (void)cudaFree(m->d_counts);
        (void)cudaFreeHost(m->h_counts);
        if (m->counts_done) (void)cudaEventDestroy(m->counts_done);
        for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT; i++) {
            (void)cudaFree(m->slot[i].d_send);
            (void)cudaFree(m->slot[i].d_recv);
            (void)cudaFreeHost(m->slot[i].h_send);
            (void)cudaFreeHost(m->slot[i].h_recv);
            if (m->slot[i].done) (void)cudaEventDestroy(m->slot[i].done);
            free(m->slot[i].recv_bytes);
            free(m->slot[i].recv_off);
        }
        if (m->stream) (void)cudaStreamDestroy(m->stream);
        free(m);
    }
    free(t);
}

static const ep_transport_vt ep_transport_nccl_vt = {
    .name = "nccl",
    .exchange_counts = ep_nccl_exchange_counts,
    .alltoallv_start = ep_nccl_alltoallv_start,
    .alltoallv_wait = ep_nccl_alltoallv_wait,
    .free = ep_nccl_tp_free,
};

ep_status ep_transport_nccl_init(ep_cluster *c, ep_nccl *n, ep_transport **out)
{
    *out = NULL;
    ep_transport *t = ep_xcalloc(1, sizeof *t);
    ep_nccl_ctx *m = ep_xcalloc(1, sizeof *m);
    t->vt = &ep_transport_nccl_vt;
    t->ctx = m;
    t->rank = c->rank;
    t->world_size = c->world_size;
    m->comm = ep_nccl_comm(n);
    m->device = ep_nccl_device(n);
    for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT; i++) {
        m->slot[i].recv_bytes = ep_xcalloc((size_t)c->world_size, sizeof(int64_t));
        m->slot[i].recv_off = ep_xcalloc((size_t)c->world_size, sizeof(int64_t));
    }
    ep_status st = EP_CUDA_ST(cudaSetDevice(m->device));
    if (st == EP_OK) st = EP_CUDA_ST(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
    if (st == EP_OK)
        st = EP_CUDA_ST(
            cudaMalloc((void **)&m->d_counts, 2 * (size_t)c->world_size * sizeof(int64_t)));
    if (st == EP_OK)
        st = EP_CUDA_ST(
            cudaMallocHost((void **)&m->h_counts, 2 * (size_t)c->world_size * sizeof(int64_t)));
    if (st == EP_OK)
        st = EP_CUDA_ST(cudaEventCreateWithFlags(&m->counts_done, cudaEventDisableTiming));
    for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT && st == EP_OK; i++)
        st = EP_CUDA_ST(cudaEventCreateWithFlags(&m->slot[i].done, cudaEventDisableTiming));
    if (st != EP_OK) {
        ep_nccl_tp_free(t);
        return ep_error_prefix(st, "NCCL transport init");
    }
    *out = t;
    return EP_OK;
}

size_t ep_transport_nccl_staging_bytes(const ep_transport *t)
{
    EP_ASSERT(t->vt == &ep_transport_nccl_vt);
    const ep_nccl_ctx *m = t->ctx;
    size_t n = 2 * (size_t)t->world_size * sizeof(int64_t);
    for (int i = 0; i < EP_TRANSPORT_MAX_INFLIGHT; i++)
        n += m->slot[i].send_cap + m->slot[i].recv_cap;
    return n;
}
