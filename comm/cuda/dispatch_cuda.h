// The dispatch layout on a CUDA device: from one layer's CSR routes and
// where each pair goes (its expert's home rank, or the replica choice's
// pair_rank), per token its destination ranks with the pairs each receives
// (comm/dispatch_group.h's rule, the one ep_dispatch_plan uses); per
// destination rank the records and payload bytes; and the byte offset at
// which a packing kernel would write each record. Host routine and kernels
// equal ep_dispatch_plan_build for the same routes (tests/cuda). It does not
// pack, move or unpack anything, and model/moe.c does not call it yet
// (comm/comm.c packs from the host plan). No CUDA types; EP_CUDA=ON only.
#ifndef EP_DISPATCH_CUDA_H
#define EP_DISPATCH_CUDA_H

#include "cluster/gpu.h"
#include "cluster/placement.h"
#include "common/dtype.h"
#include "common/routes.h"

// What the layout is computed for (plain data, passed to the kernels).
typedef struct {
    int world, rank;     // destinations [0, world); rank = the source (its records carry no bytes)
    int max_k;           // row stride of dest / dest_pairs: every token's K <= max_k
    int64_t fixed_bytes; // ep_comm_dispatch_record_bytes(0, hidden, wire): header + row
    int64_t pair_bytes;  // added per pair (expert id + weight)
} ep_dispatch_shape;

// Fills s from the wire rule of comm/comm.h. EP_ERR_ARG names what is out of range.
ep_status ep_dispatch_shape_init(ep_dispatch_shape *s, int world, int rank, int max_k, int hidden,
                                 ep_dtype wire);

// The layout of T tokens, in host memory (ep_dispatch_layout_init sizes it
// for cap_tokens tokens of s; ep_dispatch_layout_free releases it).
typedef struct {
    int cap_tokens, max_k, world;
    int T;
    int *n_dest;         // [cap] distinct destination ranks of each token (own rank incl.)
    int *dest;           // [cap, max_k] those ranks, in the order of their first pair; -1 after
    int *dest_pairs;     // [cap, max_k] pairs each of them receives; 0 after
    int *rec_idx;        // [cap, world] index of token t's record among rank d's records
                         // (token order, own-rank groups counted as comm's send_rec); -1 none
    int64_t *rec_off;    // [cap, world] byte offset of that record in the packed send buffer;
                         // -1 when none or d == rank (own groups are not sent)
    int *send_rec;       // [world] records per destination (own rank incl.)
    int64_t *send_bytes; // [world] payload bytes per destination (0 for the own rank)
    int64_t *send_off;   // [world] exclusive prefix of send_bytes: where rank d's part starts
} ep_dispatch_layout;

void ep_dispatch_layout_init(ep_dispatch_layout *l, int cap_tokens, const ep_dispatch_shape *s);
void ep_dispatch_layout_free(ep_dispatch_layout *l); // zeroes; twice is a no-op

// The kernels' routine run on the host for r's tokens: the reference the
// device is compared with. pair_rank NULL: every pair to p->rank_of of its
// expert; else [nnz] the rank of each pair. Errors (EP_ERR_ARG) name the
// token or pair and what was expected: more tokens than the layout holds, a
// K above max_k, an expert outside the placement, a rank outside [0, world).
ep_status ep_dispatch_layout_host(const ep_dispatch_shape *s, const ep_routes *r,
                                  const ep_placement *p, const int *pair_rank,
                                  ep_dispatch_layout *out);

typedef struct ep_dispatch_cuda ep_dispatch_cuda;
// Device buffers for cap_tokens tokens of s and p->n_experts experts, sized
// once. g is borrowed.
ep_status ep_dispatch_cuda_init(const ep_dispatch_shape *s, int cap_tokens, int n_experts,
                                ep_gpu *g, ep_dispatch_cuda **out);
void ep_dispatch_cuda_free(ep_dispatch_cuda *d); // NULL ok
// As ep_dispatch_layout_host with the work on the device: uploads the routes
// and ranks (validated on the host first), runs the kernels, downloads the
// layout into out. s must equal the one d was made for.
ep_status ep_dispatch_cuda_layout(ep_dispatch_cuda *d, const ep_dispatch_shape *s,
                                  const ep_routes *r, const ep_placement *p, const int *pair_rank,
                                  ep_dispatch_layout *out);

#endif
