// Helpers shared by the files of comm/ (plan.c, comm.c and the transports),
// not part of the public interface: how wide a wire row is, and the
// liveness watch's wait for a transport. Where a pair goes is
// comm/dispatch_group.h's.
#ifndef EP_COMM_IMPL_H
#define EP_COMM_IMPL_H

#include "comm/comm.h"

// Bytes of one hidden row in the wire dtype, rounded up to 4 so that every
// record stays 4-byte aligned (bf16/f16: an even element count).
int64_t ep_comm_row_bytes(int hidden, ep_dtype wire);

// Fixed part of a dispatch record: int32 token + int32 n.
#define EP_COMM_REC_HEADER_BYTES 8
// Per pair: int32 expert id + float32 weight.
#define EP_COMM_REC_PAIR_BYTES 8

// ---- the liveness watch for transports (comm/watch.h; transport_mpi.c) ----
// Counts one MoE exchange entered by this rank (a no-op without the watch):
// a transport calls it once per collective it posts, so ranks compare.
void ep_comm_watch_enter(void);
// The watch's polled wait, for any transport (needs the watch on): calls
// test(arg, &done) until done or an error, sending or reading heartbeats
// meanwhile; rank 0 gives up at the step deadline (or on a check that finds
// a silent rank) with EP_ERR_COMM naming the ranks and `call`.
ep_status ep_comm_watch_wait(ep_status (*test)(void *arg, bool *done), void *arg, const char *call);

#endif
