// Helpers shared by the files of comm/ (plan.c, comm.c and the transports),
// not part of the public interface: how wide a wire row is. Where a pair goes
// is comm/dispatch_group.h's; the transports' polled waits are
// cluster/liveness.h's.
#ifndef EP_COMM_IMPL_H
#define EP_COMM_IMPL_H

#include <string.h>

#include "comm/comm.h"

// Bytes of one hidden row in the wire dtype, rounded up to 4 so that every
// record stays 4-byte aligned (bf16/f16: an even element count).
int64_t ep_comm_row_bytes(int hidden, ep_dtype wire);

// Fixed part of a dispatch record: int32 token + int32 n.
#define EP_COMM_REC_HEADER_BYTES 8
// Per pair: int32 expert id + float32 weight.
#define EP_COMM_REC_PAIR_BYTES 8

// int32 fields of a record, at any alignment.
static inline void ep_put_i32(uint8_t *p, int32_t v)
{
    memcpy(p, &v, 4);
}
static inline int32_t ep_get_i32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

#endif
