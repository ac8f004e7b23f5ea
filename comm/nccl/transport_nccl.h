// The NCCL transport: the ep_transport interface (comm/comm.h) over an NCCL
// communicator, for GPU clusters. Declared without NCCL or CUDA types; built
// into ep_comm_cuda only when EP_CUDA=ON.
#ifndef EP_TRANSPORT_NCCL_H
#define EP_TRANSPORT_NCCL_H

#include "cluster/gpu.h"
#include "comm/comm.h"

// A transport over n (borrowed; must outlive the transport), with its own
// communication stream on n's device. Buffers handed to alltoallv may be
// device memory (sent as they are) or host memory (staged through device
// and pinned host buffers, per in-flight exchange, that grow only when a
// step is larger than any before). exchange_counts and alltoallv return
// when the data has arrived; alltoallv_start returns once the group is on
// the stream and alltoallv_wait waits for that exchange's event only, so
// two exchanges can be in flight. Byte accounting as the MPI transport:
// bytes_moved counts the bytes sent to other ranks, never the self part.
ep_status ep_transport_nccl_init(ep_cluster *c, ep_nccl *n, ep_transport **out);

// Device staging bytes the transport holds now (send + receive + counts).
size_t ep_transport_nccl_staging_bytes(const ep_transport *t);

#endif
