// The MPI transport (CPU backend): counts with MPI_Alltoall, payloads with
// MPI_Alltoallv over 4-byte words, the self part by memcpy. It moves opaque
// bytes; what the records mean is comm.c's. NCCL lives in its own file.
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/mpi_util.h"
#include "comm/comm.h"

// Every record of the wire format is a multiple of 4 bytes, so payloads move
// as 4-byte words: counts stay in int range up to 8 GiB per peer, and every
// rank uses the same datatype whatever it sends (MPI needs matching type
// signatures, so the unit cannot be chosen per rank from local sizes).
#define EP_MPI_WORD 4

typedef struct {
    MPI_Comm comm;                          // borrowed from the cluster
    MPI_Datatype word;                      // 4 contiguous bytes, no conversion
    int *scount, *sdispl, *rcount, *rdispl; // [world] in words
} ep_mpi_ctx;

static ep_status ep_mpi_exchange_counts(ep_transport *t, const int64_t *send, int64_t *recv)
{
    ep_mpi_ctx *m = t->ctx;
    EP_MPI_CHECK(MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, m->comm));
    return EP_OK;
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

static ep_status ep_mpi_alltoallv(ep_transport *t, const void *sendbuf, const int64_t *send_bytes,
                                  const int64_t *send_off, void *recvbuf, const int64_t *recv_bytes,
                                  const int64_t *recv_off)
{
    ep_mpi_ctx *m = t->ctx;
    const int me = t->rank;
    int64_t remote = 0;
    ep_status st;
    for (int d = 0; d < t->world_size; d++) {
        if ((st = ep_mpi_words(send_bytes[d], "send size", d, &m->scount[d])) != EP_OK) return st;
        if ((st = ep_mpi_words(send_off[d], "send offset", d, &m->sdispl[d])) != EP_OK) return st;
        if ((st = ep_mpi_words(recv_bytes[d], "receive size", d, &m->rcount[d])) != EP_OK)
            return st;
        if ((st = ep_mpi_words(recv_off[d], "receive offset", d, &m->rdispl[d])) != EP_OK)
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
    m->scount[me] = m->rcount[me] = 0;
    EP_MPI_CHECK(MPI_Alltoallv(sendbuf, m->scount, m->sdispl, m->word, recvbuf, m->rcount,
                               m->rdispl, m->word, m->comm));
    t->bytes_moved += remote;
    return EP_OK;
}

static void ep_mpi_free(ep_transport *t)
{
    ep_mpi_ctx *m = t->ctx;
    if (m) {
        if (m->word != MPI_DATATYPE_NULL) MPI_Type_free(&m->word);
        free(m->scount);
        free(m->sdispl);
        free(m->rcount);
        free(m->rdispl);
        free(m);
    }
    free(t);
}

static const ep_transport_vt ep_transport_mpi_vt = {
    .name = "mpi",
    .exchange_counts = ep_mpi_exchange_counts,
    .alltoallv = ep_mpi_alltoallv,
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
    m->scount = ep_xcalloc(w, sizeof(int));
    m->sdispl = ep_xcalloc(w, sizeof(int));
    m->rcount = ep_xcalloc(w, sizeof(int));
    m->rdispl = ep_xcalloc(w, sizeof(int));
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
