// The GPU side of the process group: which CUDA device this rank drives
// (by local rank; device 0 when only one is visible) and the NCCL
// communicator over the cluster's ranks (ncclUniqueId from rank 0, broadcast
// over MPI). Declared here without CUDA or NCCL types; defined in
// ep_cluster_cuda (cluster/cuda/device.c, nccl_boot.c), which exists only
// when the build has EP_CUDA=ON.
#ifndef EP_GPU_H
#define EP_GPU_H

#include "cluster/cluster.h"

// Visible CUDA devices; 0 when there is none or no usable driver. why (may
// be NULL) receives the reason in words when the answer is 0.
int ep_gpu_count(char *why, size_t why_len);

// The device a rank drives, from its place on the host (pure, no CUDA):
// one visible device -> 0 (the launcher pinned one per rank, or one rank);
// otherwise the local rank, which must be below the number visible.
// EP_ERR_UNSUPPORTED when none is visible, EP_ERR_CONFIG when the host runs
// more ranks than it shows devices.
ep_status ep_gpu_choose(int local_rank, int local_size, int n_visible, int *device);

typedef struct ep_gpu ep_gpu;
// Chooses this rank's device, makes it current (cudaSetDevice) and checks it
// can run the kernels (compute capability 8.0 or newer, for BF16).
ep_status ep_gpu_init(ep_cluster *c, ep_gpu **out);
// The same for a given device ordinal (single-process tools and tests).
ep_status ep_gpu_open(int device, ep_gpu **out);
void ep_gpu_free(ep_gpu *g); // NULL ok
int ep_gpu_device(const ep_gpu *g);
const char *ep_gpu_name(const ep_gpu *g);
int ep_gpu_compute_capability(const ep_gpu *g); // major * 10 + minor
size_t ep_gpu_mem_bytes(const ep_gpu *g);       // total device memory
// Makes the device current on the calling thread (CUDA state is per thread).
ep_status ep_gpu_make_current(const ep_gpu *g);

// ---- device memory bandwidth -------------------------------------------------
// Whether this build runs the CUDA code on the emulated device (EP_CUDA_EMU,
// tests only): its "device" is host memory and its times are the host's, so
// a bandwidth or a step time measured there is no GPU number.
bool ep_gpu_emulated(void);
// What the bandwidth probe moves per copy by default: far beyond any L2
// (50 MiB on an H100), so the copies stream from and to HBM. The emulated
// device gets a small one (its memory is the host's; the number means
// nothing there anyway).
#define EP_GPU_BW_BYTES     ((size_t)512 << 20)
#define EP_GPU_BW_BYTES_EMU ((size_t)8 << 20)
// Device memory bandwidth of g in GB/s (1e9 B/s): one untimed, then `reps`
// timed device-to-device copies of `bytes` on a stream of its own, each
// timed by a pair of cudaEvents; the best of them, counting 2 x bytes per
// copy (each byte is read once and written once). What a step that streams
// its weights from device memory can read at most; a read-only kernel may
// do a little better than a copy. Makes g current; allocates 2 x bytes of
// device memory for the call. EP_ERR_ARG names bytes or reps when they are
// 0; EP_ERR_NOMEM names the allocation.
ep_status ep_gpu_measure_bandwidth(const ep_gpu *g, size_t bytes, int reps, double *gbps);

// ---- host <-> device traffic -------------------------------------------------
// Bytes and calls of the copies made through ep_cuda_copy / ep_cuda_copy_cls
// (cluster/cuda), process-wide, since start or the last reset, by class:
// what proves that a device step moves no activation through host memory.
// ACT: activations (hidden rows, logits) - a device decode step should
// move none but the logits a host sampler asks for. META: control data
// (token ids, positions, block tables, routes, counts, sampling parameters,
// sampled ids). LOAD: weights and tables uploaded once at load. Device-to-
// device copies are not host traffic and are not counted. Copies made with
// cudaMemcpy directly are not counted: GPU code moves host data only
// through these two calls.
typedef enum { EP_COPY_ACT, EP_COPY_META, EP_COPY_LOAD, EP_COPY_N_CLASSES } ep_copy_class;
const char *ep_copy_class_name(ep_copy_class c); // "act", "meta", "load"
typedef struct {
    uint64_t h2d_bytes, d2h_bytes;   // host -> device, device -> host, every class
    uint64_t h2d_copies, d2h_copies; // calls, every class
    uint64_t h2d[EP_COPY_N_CLASSES], d2h[EP_COPY_N_CLASSES]; // bytes by class
} ep_gpu_copy_stats;
void ep_gpu_copy_stats_get(ep_gpu_copy_stats *out);
void ep_gpu_copy_stats_reset(void);
// after - before, field by field (the traffic of what ran between two gets).
void ep_gpu_copy_stats_diff(const ep_gpu_copy_stats *after, const ep_gpu_copy_stats *before,
                            ep_gpu_copy_stats *out);

// ---- NCCL ------------------------------------------------------------------
typedef struct ep_nccl ep_nccl;
// Collective over the cluster: every rank calls it with its own gpu. Checks
// that the NCCL library matches the headers epserve was built with and that
// every rank runs the same NCCL version, then rank 0 creates the unique id,
// broadcasts it and every rank joins with ncclCommInitRank.
ep_status ep_nccl_init(ep_cluster *c, ep_gpu *g, ep_nccl **out);
void ep_nccl_free(ep_nccl *n);         // NULL ok
int ep_nccl_version(const ep_nccl *n); // NCCL_VERSION_CODE of the library in use

// Pure: whether NCCL library version `runtime` can serve code built against
// headers of version `header` (both NCCL_VERSION_CODE values): same major,
// and at least EP_NCCL_MIN_VERSION. EP_ERR_UNSUPPORTED names both versions.
#define EP_NCCL_MIN_VERSION 21300 // 2.13.0: ncclGetLastError
ep_status ep_nccl_version_check(int header, int runtime);
// Formats an NCCL_VERSION_CODE as "2.28.9" into buf.
void ep_nccl_version_str(int code, char *buf, size_t n);

#endif
