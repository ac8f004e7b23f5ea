// What the dispatch-layout kernels need, as plain data (dispatch_cuda.h's
// types hold host-only headers), and their launchers. Shared by
// dispatch_cuda.c and dispatch_kernels.cu; private to ep_comm_cuda.
#ifndef EP_DISPATCH_LAYOUT_H
#define EP_DISPATCH_LAYOUT_H

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ep_dispatch_shape's fields (see dispatch_cuda.h).
typedef struct {
    int world, rank, max_k;
    int64_t fixed_bytes, pair_bytes;
} ep_dl_params;

// One call's arrays, all device memory for the launcher and host memory for
// the host run; shapes as ep_dispatch_layout's. pair_rank NULL: rank_of.
typedef struct {
    const int *offsets;   // [T + 1]
    const int *expert;    // [offsets[T]]
    const int *pair_rank; // [offsets[T]] or NULL
    const int *rank_of;   // [n_experts]
    int *n_dest, *dest, *dest_pairs, *rec_idx;
    int64_t *rec_off;
    int *send_rec;
    int64_t *send_bytes, *send_off;
} ep_dl_bufs;

// Three kernels on stream: per token (groups, its row of counts and bytes),
// per destination (scan over tokens, totals), then the destinations' starts.
// Inputs must be valid (the host checks them before uploading).
cudaError_t ep_dispatch_layout_launch(const ep_dl_params *p, const ep_dl_bufs *b, int T,
                                      cudaStream_t stream);
// The same steps on the host.
void ep_dispatch_layout_run_host(const ep_dl_params *p, const ep_dl_bufs *b, int T);

#ifdef __cplusplus
}
#endif

#endif
