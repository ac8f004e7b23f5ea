// The NCCL transport: counts and payloads as one group of per-peer
// ncclSend/ncclRecv (ncclGroupStart .. ncclGroupEnd) on a communication
// stream, host buffers staged through device buffers, the self part copied
// locally. It moves opaque bytes; what they mean is comm.c's.
#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/nccl_util.h"
#include "comm/nccl/transport_nccl.h"

typedef struct {
    ncclComm_t comm; // borrowed from the ep_nccl
    int device;
    cudaStream_t stream;   // communication stream, owned
    int64_t *d_counts;     // [2 * world] device: send counts, then received counts
    void *d_send, *d_recv; // staging for host payloads
    size_t send_cap, recv_cap;
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

// Waits for the stream, then asks NCCL whether the communicator failed
// asynchronously (a peer died, a network error) while the group ran.
static ep_status ep_nccl_wait(ep_nccl_ctx *m)
{
    EP_CUDA_CHECK(cudaStreamSynchronize(m->stream));
    ncclResult_t async = ncclSuccess;
    EP_NCCL_CHECK(ncclCommGetAsyncError(m->comm, &async));
    EP_NCCL_CHECK(async);
    return EP_OK;
}

// ---- the vtable ---------------------------------------------------------------------------

static ep_status ep_nccl_exchange_counts(ep_transport *t, const int64_t *send, int64_t *recv)
{
    ep_nccl_ctx *m = t->ctx;
    const int W = t->world_size, me = t->rank;
    EP_CUDA_CHECK(cudaSetDevice(m->device));
    EP_CUDA_CHECK(cudaMemcpyAsync(m->d_counts, send, (size_t)W * sizeof(int64_t),
                                  cudaMemcpyHostToDevice, m->stream));
    EP_NCCL_CHECK(ncclGroupStart());
    for (int d = 0; d < W; d++) {
        if (d == me) continue;
        ep_status st = EP_NCCL_ST(ncclSend(m->d_counts + d, 1, ncclInt64, d, m->comm, m->stream));
        if (st == EP_OK)
            st = EP_NCCL_ST(ncclRecv(m->d_counts + W + d, 1, ncclInt64, d, m->comm, m->stream));
        if (st != EP_OK) {
            (void)ncclGroupEnd();
            return ep_error_prefix(st, "NCCL transport: counts with rank %d", d);
        }
    }
    EP_NCCL_CHECK(ncclGroupEnd());
    EP_CUDA_CHECK(cudaMemcpyAsync(recv, m->d_counts + W, (size_t)W * sizeof(int64_t),
                                  cudaMemcpyDeviceToHost, m->stream));
    ep_status st = ep_nccl_wait(m);
    if (st != EP_OK) return ep_error_prefix(st, "NCCL transport: exchanging counts");
    recv[me] = send[me];
    return EP_OK;
}

static ep_status ep_nccl_alltoallv(ep_transport *t, const void *sendbuf, const int64_t *send_bytes,
                                   const int64_t *send_off, void *recvbuf,
                                   const int64_t *recv_bytes, const int64_t *recv_off)
{
    ep_nccl_ctx *m = t->ctx;
    const int W = t->world_size, me = t->rank;
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
        if ((st = ep_cuda_grow(&m->d_send, &m->send_cap, send_ext, "NCCL transport send staging")))
            return st;
        for (int d = 0; d < W; d++)
            if (d != me && send_bytes[d] > 0)
                EP_CUDA_CHECK(cudaMemcpyAsync(
                    (char *)m->d_send + send_off[d], (const char *)sendbuf + send_off[d],
                    (size_t)send_bytes[d], cudaMemcpyHostToDevice, m->stream));
        sbase = m->d_send;
    }
    if (!recv_dev && recv_ext > 0) {
        if ((st = ep_cuda_grow(&m->d_recv, &m->recv_cap, recv_ext,
                               "NCCL transport receive staging")))
            return st;
        rbase = m->d_recv;
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
    if (!recv_dev && recv_ext > 0) {
        for (int d = 0; d < W; d++)
            if (d != me && recv_bytes[d] > 0)
                EP_CUDA_CHECK(
                    cudaMemcpyAsync((char *)recvbuf + recv_off[d], (char *)m->d_recv + recv_off[d],
                                    (size_t)recv_bytes[d], cudaMemcpyDeviceToHost, m->stream));
    }
    // The self part never touches NCCL (and is not counted as moved).
    if (send_bytes[me] > 0) {
        if (!send_dev && !recv_dev)
            memcpy((char *)recvbuf + recv_off[me], (const char *)sendbuf + send_off[me],
                   (size_t)send_bytes[me]);
        else
            EP_CUDA_CHECK(cudaMemcpyAsync((char *)recvbuf + recv_off[me],
                                          (const char *)sendbuf + send_off[me],
                                          (size_t)send_bytes[me], cudaMemcpyDefault, m->stream));
    }
    if ((st = ep_nccl_wait(m)) != EP_OK) return ep_error_prefix(st, "NCCL transport: payload");
    t->bytes_moved += remote;
    return EP_OK;
}

static void ep_nccl_tp_free(ep_transport *t)
{
    ep_nccl_ctx *m = t->ctx;
    if (m) {
        // Best effort: a failing device at shutdown leaves nothing to recover.
        (void)cudaSetDevice(m->device);
        if (m->stream) (void)cudaStreamSynchronize(m->stream);
        (void)cudaFree(m->d_counts);
        (void)cudaFree(m->d_send);
        (void)cudaFree(m->d_recv);
        if (m->stream) (void)cudaStreamDestroy(m->stream);
        free(m);
    }
    free(t);
}

static const ep_transport_vt ep_transport_nccl_vt = {
    .name = "nccl",
    .exchange_counts = ep_nccl_exchange_counts,
    .alltoallv = ep_nccl_alltoallv,
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
    ep_status st = EP_CUDA_ST(cudaSetDevice(m->device));
    if (st == EP_OK) st = EP_CUDA_ST(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
    if (st == EP_OK)
        st = EP_CUDA_ST(
            cudaMalloc((void **)&m->d_counts, 2 * (size_t)c->world_size * sizeof(int64_t)));
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
    return m->send_cap + m->recv_cap + 2 * (size_t)t->world_size * sizeof(int64_t);
}
