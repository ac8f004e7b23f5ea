// MPI helpers private to the MPI side of epserve (cluster/ and the MPI
// transport in comm/): the EP_MPI_CHECK macro, access to the cluster's
// communicator, and the liveness watch's wait for an MPI request. Only .c
// files that link MPI include this; public headers never do.
#ifndef EP_MPI_UTIL_H
#define EP_MPI_UTIL_H

#include <mpi.h>

#include "cluster/cluster.h"

// Formats "<call> failed at <file>:<line>: <MPI error string>" into the
// last-error message and returns EP_ERR_COMM.
ep_status ep_mpi_error(int rc, const char *call, const char *file, int line);

// Evaluates an MPI call; on failure returns EP_ERR_COMM from the enclosing
// function with the call quoted. Needs MPI_ERRORS_RETURN on the communicator
// (the cluster sets it on its own), otherwise MPI aborts before we see rc.
#define EP_MPI_CHECK(call)                                                                         \
    do {                                                                                           \
        int ep_mpi_rc_ = (call);                                                                   \
        if (ep_mpi_rc_ != MPI_SUCCESS) return ep_mpi_error(ep_mpi_rc_, #call, __FILE__, __LINE__); \
    } while (0)

// The MPI operation of an ep_reduce_op.
MPI_Op ep_mpi_op(ep_reduce_op op);

// The cluster's communicator (a duplicate of MPI_COMM_WORLD with
// MPI_ERRORS_RETURN). ep_cluster_mpi_comm() returns a pointer to it, because
// MPI_Comm is a pointer in Open MPI but an int in MPICH.
static inline MPI_Comm ep_cluster_comm(ep_cluster *c)
{
    return *(MPI_Comm *)ep_cluster_mpi_comm(c);
}

// Waits for rq: MPI_Wait without the liveness watch; with it, the watched
// wait of cluster/liveness.h (heartbeats; rank 0 gives up at the deadline,
// or on a check that finds a silent rank, naming the ranks and call).
ep_status ep_cluster_watch_wait_mpi(MPI_Request *rq, const char *call);

#endif
