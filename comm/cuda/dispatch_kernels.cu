// Dispatch counts and layout, compiled for the device and (the same
// routines) for the host: per token its destination groups by
// ep_dispatch_group_row (comm/dispatch_group.h, the rule ep_dispatch_plan
// uses) and a row of the [T, world] record matrices, then per destination a
// scan over the tokens (record index, byte offset, totals), then where each
// destination's part starts. Integer arithmetic only, so host and device
// agree exactly. Packing itself is not here.
#include "cluster/cuda/launch.h"
#include "comm/cuda/dispatch_layout.h"
#include "comm/dispatch_group.h"

#define EP_HD __host__ __device__

enum { EP_DL_SCAN_THREADS = 256 };

// Token t: its groups (one per destination rank, in the order of the
// rank's first pair in the row, with its pair count) straight into its rows
// of dest / dest_pairs, and its row of the record matrices: rec_idx 1 where
// it has a group, rec_off that record's bytes (0 for its own rank, which is
// not sent). The scan below turns both into positions. dest has room for
// max_k >= K groups (the host checks K before any launch).
static EP_HD void ep_dl_token(const ep_dl_params *p, const ep_dl_bufs *b, int t)
{
    const int W = p->world;
    int *dest = b->dest + (size_t)t * p->max_k, *np = b->dest_pairs + (size_t)t * p->max_k;
    int *cnt = b->rec_idx + (size_t)t * W;
    int64_t *bytes = b->rec_off + (size_t)t * W;
    for (int d = 0; d < W; d++) {
        cnt[d] = 0;
        bytes[d] = 0;
    }
    const int n = ep_dispatch_group_row(b->expert, b->pair_rank, b->rank_of, b->offsets[t],
                                        b->offsets[t + 1], dest, np, NULL);
    for (int g = 0; g < n; g++) {
        const int d = dest[g];
        cnt[d] = 1;
        bytes[d] = d == p->rank ? 0 : p->fixed_bytes + (int64_t)np[g] * p->pair_bytes;
    }
    b->n_dest[t] = n;
    for (int g = n; g < p->max_k; g++) {
        dest[g] = -1;
        np[g] = 0;
    }
}

// Entry (t, d) after the scan: c / v its own count and bytes, before / at
// the records and bytes of earlier tokens to d.
static EP_HD inline void ep_dl_place(const ep_dl_params *p, int d, int c, int before, int64_t at,
                                     int *rec_idx, int64_t *rec_off)
{
    *rec_idx = c ? before : -1;
    *rec_off = c && d != p->rank ? at : -1;
}

static EP_HD void ep_dl_starts(const ep_dl_params *p, const ep_dl_bufs *b)
{
    int64_t s = 0;
    for (int d = 0; d < p->world; d++) {
        b->send_off[d] = s;
        s += b->send_bytes[d];
    }
}

// ---- device -----------------------------------------------------------------------------

__global__ void ep_dl_token_kernel(ep_dl_params p, ep_dl_bufs b, int T)
{
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < T; t += gridDim.x * blockDim.x)
        ep_dl_token(&p, &b, t);
}

// One block per destination d: an exclusive scan of column d over the tokens
// in chunks of the block's width (Hillis-Steele in shared memory), carrying
// the running totals between chunks; the totals are d's records and bytes.
__global__ void ep_dl_scan_kernel(ep_dl_params p, ep_dl_bufs b, int T)
{
    __shared__ int sc[EP_DL_SCAN_THREADS];
    __shared__ int64_t sb[EP_DL_SCAN_THREADS];
    const int d = blockIdx.x, tid = threadIdx.x, n = blockDim.x;
    int carry_c = 0;
    int64_t carry_b = 0;
    for (int t0 = 0; t0 < T; t0 += n) {
        const int t = t0 + tid;
        const size_t i = (size_t)t * p.world + d;
        const int c = t < T ? b.rec_idx[i] : 0;
        const int64_t v = t < T ? b.rec_off[i] : 0;
        sc[tid] = c;
        sb[tid] = v;
        __syncthreads();
        for (int s = 1; s < n; s <<= 1) {
            const int ac = tid >= s ? sc[tid - s] : 0;
            const int64_t ab = tid >= s ? sb[tid - s] : 0;
            __syncthreads();
            sc[tid] += ac;
            sb[tid] += ab;
            __syncthreads();
        }
        if (t < T)
            ep_dl_place(&p, d, c, carry_c + sc[tid] - c, carry_b + sb[tid] - v, &b.rec_idx[i],
                        &b.rec_off[i]);
        carry_c += sc[n - 1];
        carry_b += sb[n - 1];
        __syncthreads(); // the next chunk overwrites sc, sb
    }
    if (tid == 0) {
        b.send_rec[d] = carry_c;
        b.send_bytes[d] = carry_b;
    }
}

__global__ void ep_dl_starts_kernel(ep_dl_params p, ep_dl_bufs b)
{
    ep_dl_starts(&p, &b);
}

__global__ void ep_dl_shift_kernel(ep_dl_params p, ep_dl_bufs b, int T)
{
    const size_t n = (size_t)T * p.world;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        if (b.rec_off[i] >= 0) b.rec_off[i] += b.send_off[i % p.world];
}

extern "C" cudaError_t ep_dispatch_layout_launch(const ep_dl_params *p, const ep_dl_bufs *b, int T,
                                                 cudaStream_t stream)
{
    if (p->world < 1 || T < 0) return cudaErrorInvalidValue;
    const int threads = 128;
    if (T > 0) {
        const int blocks = (T + threads - 1) / threads;
        EP_LAUNCH(ep_dl_token_kernel, blocks, threads, 0, stream, *p, *b, T);
    }
    EP_LAUNCH(ep_dl_scan_kernel, p->world, EP_DL_SCAN_THREADS, 0, stream, *p, *b, T);
    EP_LAUNCH(ep_dl_starts_kernel, 1, 1, 0, stream, *p, *b);
    if (T > 0) {
        const size_t nb = ((size_t)T * p->world + threads - 1) / threads;
        const int blocks = (int)(nb < 4096 ? nb : 4096); // grid-stride beyond
        EP_LAUNCH(ep_dl_shift_kernel, blocks, threads, 0, stream, *p, *b, T);
    }
    return cudaGetLastError();
}

// ---- host ---------------------------------------------------------------------------------

extern "C" void ep_dispatch_layout_run_host(const ep_dl_params *p, const ep_dl_bufs *b, int T)
{
    for (int t = 0; t < T; t++)
        ep_dl_token(p, b, t);
    for (int d = 0; d < p->world; d++) {
        int before = 0;
        int64_t at = 0;
        for (int t = 0; t < T; t++) {
            const size_t i = (size_t)t * p->world + d;
            const int c = b->rec_idx[i];
            const int64_t v = b->rec_off[i];
            ep_dl_place(p, d, c, before, at, &b->rec_idx[i], &b->rec_off[i]);
            before += c;
            at += v;
        }
        b->send_rec[d] = before;
        b->send_bytes[d] = at;
    }
    ep_dl_starts(p, b);
    for (size_t i = 0; i < (size_t)T * p->world; i++)
        if (b->rec_off[i] >= 0) b->rec_off[i] += b->send_off[i % p->world];
}
