// Which CUDA device a rank drives, and the error reporting every CUDA file
// shares (EP_CUDA_CHECK, EP_CUBLAS_CHECK). Creates no streams or handles:
// the experts and the transport own theirs. NCCL is in nccl_boot.c.
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/cuda_util.h"

// ---- errors -----------------------------------------------------------------------

ep_status ep_cuda_status(cudaError_t rc, const char *call, const char *file, int line)
{
    if (rc == cudaSuccess) return EP_OK;
    ep_status st = EP_ERR_IO;
    switch (rc) {
    case cudaErrorMemoryAllocation:
        st = EP_ERR_NOMEM;
        break;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
        st = EP_ERR_UNSUPPORTED;
        break;
    default:
        break;
    }
    // The sticky-error state stays for the caller to see; only clear the
    // non-sticky last error so that the next call reports its own failure.
    (void)cudaGetLastError();
    return ep_errorf(st, "%s failed at %s:%d: %s: %s", call, file, line, cudaGetErrorName(rc),
                     cudaGetErrorString(rc));
}

ep_status ep_cublas_status(cublasStatus_t rc, const char *call, const char *file, int line)
{
    if (rc == CUBLAS_STATUS_SUCCESS) return EP_OK;
    ep_status st = EP_ERR_IO;
    if (rc == CUBLAS_STATUS_ALLOC_FAILED) st = EP_ERR_NOMEM;
    if (rc == CUBLAS_STATUS_NOT_SUPPORTED || rc == CUBLAS_STATUS_ARCH_MISMATCH)
        st = EP_ERR_UNSUPPORTED;
    return ep_errorf(st, "%s failed at %s:%d: %s (cuBLAS status %d)", call, file, line,
                     cublasGetStatusString(rc), (int)rc);
}

ep_status ep_cuda_grow(void **p, size_t *cap, size_t need, const char *what)
{
    if (need <= *cap) return EP_OK;
    size_t n = EP_MAX(need, *cap + *cap / 2);
    if (*p) {
        cudaError_t rc = cudaFree(*p);
        *p = NULL;
        *cap = 0;
        if (rc != cudaSuccess) return EP_CUDA_ST(rc);
    }
    cudaError_t rc = cudaMalloc(p, n);
    if (rc != cudaSuccess) {
        *p = NULL;
        ep_cuda_status(rc, "cudaMalloc", __FILE__, __LINE__);
        return ep_error_prefix(rc == cudaErrorMemoryAllocation ? EP_ERR_NOMEM : EP_ERR_IO,
                               "%s: %zu bytes of device memory", what, n);
    }
    *cap = n;
    return EP_OK;
}

// ---- device choice --------------------------------------------------------------------

int ep_gpu_count(char *why, size_t why_len)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        if (why && why_len)
            snprintf(why, why_len, "cudaGetDeviceCount: %s: %s", cudaGetErrorName(rc),
                     cudaGetErrorString(rc));
        (void)cudaGetLastError();
        return 0;
    }
    if (n == 0 && why && why_len) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        snprintf(why, why_len, "the driver reports 0 CUDA devices (CUDA_VISIBLE_DEVICES=%s)",
                 vis ? vis : "unset");
    }
    return n;
}

ep_status ep_gpu_choose(int local_rank, int local_size, int n_visible, int *device)
{
    EP_ASSERT(local_rank >= 0 && local_rank < local_size);
    if (n_visible <= 0)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "gpu: local rank %d: expected at least 1 visible CUDA device, found %d",
                         local_rank, n_visible);
    if (n_visible == 1) {
        *device = 0;
        return EP_OK;
    }
    if (local_rank >= n_visible)
        return ep_errorf(EP_ERR_CONFIG,
                         "gpu: local rank %d of %d on this host, but only %d CUDA devices are "
                         "visible: expected at most %d ranks per host (one per GPU), or one "
                         "device per rank through CUDA_VISIBLE_DEVICES",
                         local_rank, local_size, n_visible, n_visible);
    *device = local_rank;
    return EP_OK;
}

ep_status ep_gpu_open(int device, ep_gpu **out)
{
    *out = NULL;
    char why[256] = "";
    int n = ep_gpu_count(why, sizeof why);
    if (device < 0 || device >= n)
        return ep_errorf(n ? EP_ERR_ARG : EP_ERR_UNSUPPORTED,
                         "gpu: device %d: expected one of the %d visible CUDA devices%s%s", device,
                         n, n ? "" : ": ", why);
    EP_CUDA_CHECK(cudaSetDevice(device));
    struct cudaDeviceProp prop;
    EP_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    // A context now, so that a broken device fails here rather than in the first layer.
    EP_CUDA_CHECK(cudaFree(NULL));
    int cc = prop.major * 10 + prop.minor;
    if (cc < 80)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "gpu: device %d (%s) has compute capability %d.%d, expected 8.0 or newer "
                         "(BF16 kernels, built for sm_80/sm_90)",
                         device, prop.name, prop.major, prop.minor);
    ep_gpu *g = ep_xcalloc(1, sizeof *g);
    g->device = device;
    g->cc = cc;
    g->mem_bytes = prop.totalGlobalMem;
    snprintf(g->name, sizeof g->name, "%s", prop.name);
    *out = g;
    return EP_OK;
}

ep_status ep_gpu_init(ep_cluster *c, ep_gpu **out)
{
    *out = NULL;
    char why[256] = "";
    int n = ep_gpu_count(why, sizeof why);
    if (n == 0)
        return ep_errorf(EP_ERR_UNSUPPORTED, "gpu: rank %d: no CUDA device visible (%s)", c->rank,
                         why);
    int dev = 0;
    ep_status st = ep_gpu_choose(c->local_rank, c->local_size, n, &dev);
    if (st != EP_OK) return st;
    if ((st = ep_gpu_open(dev, out)) != EP_OK) return ep_error_prefix(st, "rank %d", c->rank);
    const ep_gpu *g = *out;
    EP_DEBUG("gpu: rank %d (local %d of %d) -> device %d of %d: %s, sm_%d, %.1f GiB", c->rank,
             c->local_rank, c->local_size, dev, n, g->name, g->cc,
             (double)g->mem_bytes / (1024.0 * 1024.0 * 1024.0));
    return EP_OK;
}

void ep_gpu_free(ep_gpu *g)
{
    free(g);
}

int ep_gpu_device(const ep_gpu *g)
{
    return g->device;
}

const char *ep_gpu_name(const ep_gpu *g)
{
    return g->name;
}

int ep_gpu_compute_capability(const ep_gpu *g)
{
    return g->cc;
}

size_t ep_gpu_mem_bytes(const ep_gpu *g)
{
    return g->mem_bytes;
}

ep_status ep_gpu_make_current(const ep_gpu *g)
{
    EP_CUDA_CHECK(cudaSetDevice(g->device));
    return EP_OK;
}

// ---- device memory bandwidth ---------------------------------------------------------

bool ep_gpu_emulated(void)
{
#ifdef EP_CUDA_EMU
    return true;
#else
    return false;
#endif
}

ep_status ep_gpu_measure_bandwidth(const ep_gpu *g, size_t bytes, int reps, double *gbps)
{
    *gbps = 0;
    if (bytes == 0 || reps < 1)
        return ep_errorf(EP_ERR_ARG,
                         "gpu bandwidth probe: bytes %zu, reps %d: expected at least 1 of each",
                         bytes, reps);
    ep_status st = ep_gpu_make_current(g);
    if (st) return st;
    void *src = NULL, *dst = NULL;
    size_t cap_src = 0, cap_dst = 0;
    cudaStream_t s = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    if ((st = ep_cuda_grow(&src, &cap_src, bytes, "gpu bandwidth probe: source")) ||
        (st = ep_cuda_grow(&dst, &cap_dst, bytes, "gpu bandwidth probe: destination")) ||
        (st = EP_CUDA_ST(cudaMemset(src, 0x5a, bytes))) ||
        (st = EP_CUDA_ST(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking))) ||
        (st = EP_CUDA_ST(cudaEventCreate(&e0))) || (st = EP_CUDA_ST(cudaEventCreate(&e1))))
        goto out;
    float best_ms = 0;
    for (int r = 0; r <= reps && !st; r++) { // r == 0: untimed (clocks, TLB, first touch)
        float ms = 0;
        if ((st = EP_CUDA_ST(cudaEventRecord(e0, s))) ||
            (st = ep_cuda_copy(dst, src, bytes, cudaMemcpyDeviceToDevice, s,
                               "gpu bandwidth probe")) ||
            (st = EP_CUDA_ST(cudaEventRecord(e1, s))) ||
            (st = EP_CUDA_ST(cudaEventSynchronize(e1))) ||
            (st = EP_CUDA_ST(cudaEventElapsedTime(&ms, e0, e1))))
            break;
        if (r > 0 && ms > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;
    }
    if (!st && best_ms <= 0)
        st = ep_errorf(EP_ERR_IO,
                       "gpu bandwidth probe: %d copies of %zu bytes timed at 0 ms: expected a "
                       "positive time (a clock too coarse for the size?)",
                       reps, bytes);
    if (!st) *gbps = 2.0 * (double)bytes / (best_ms * 1e-3) / 1e9;
out:
    if (e0) (void)cudaEventDestroy(e0);
    if (e1) (void)cudaEventDestroy(e1);
    if (s) (void)cudaStreamDestroy(s);
    if (src) (void)cudaFree(src);
    if (dst) (void)cudaFree(dst);
    return st;
}

// ---- host <-> device traffic ------------------------------------------------------
// Relaxed atomics: the counts are read between steps, not to order anything.

static _Atomic uint64_t copy_calls[2], copy_bytes[EP_COPY_N_CLASSES][2]; // [.][0 h2d, 1 d2h]

const char *ep_copy_class_name(ep_copy_class c)
{
    static const char *names[EP_COPY_N_CLASSES] = {"act", "meta", "load"};
    return c >= 0 && c < EP_COPY_N_CLASSES ? names[c] : "?";
}

ep_status ep_cuda_copy_cls(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                           cudaStream_t stream, ep_copy_class cls, const char *what)
{
    if (bytes == 0) return EP_OK;
    if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToHost &&
        kind != cudaMemcpyDeviceToDevice)
        return ep_errorf(EP_ERR_ARG,
                         "%s: copy kind %d, expected host to device, device to host or device to "
                         "device",
                         what, (int)kind);
    if (cls < 0 || cls >= EP_COPY_N_CLASSES)
        return ep_errorf(EP_ERR_ARG, "%s: copy class %d, expected act, meta or load", what,
                         (int)cls);
    ep_status st = EP_CUDA_ST(cudaMemcpyAsync(dst, src, bytes, kind, stream));
    if (st) return ep_error_prefix(st, "%s (%zu bytes)", what, bytes);
    if (kind != cudaMemcpyDeviceToDevice) {
        int dir = kind == cudaMemcpyDeviceToHost;
        atomic_fetch_add_explicit(&copy_bytes[cls][dir], bytes, memory_order_relaxed);
        atomic_fetch_add_explicit(&copy_calls[dir], 1, memory_order_relaxed);
    }
    return EP_OK;
}

ep_status ep_cuda_copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                       cudaStream_t stream, const char *what)
{
    return ep_cuda_copy_cls(dst, src, bytes, kind, stream, EP_COPY_ACT, what);
}

void ep_gpu_copy_stats_get(ep_gpu_copy_stats *out)
{
    memset(out, 0, sizeof *out);
    for (int c = 0; c < EP_COPY_N_CLASSES; c++) {
        out->h2d[c] = atomic_load_explicit(&copy_bytes[c][0], memory_order_relaxed);
        out->d2h[c] = atomic_load_explicit(&copy_bytes[c][1], memory_order_relaxed);
        out->h2d_bytes += out->h2d[c];
        out->d2h_bytes += out->d2h[c];
    }
    out->h2d_copies = atomic_load_explicit(&copy_calls[0], memory_order_relaxed);
    out->d2h_copies = atomic_load_explicit(&copy_calls[1], memory_order_relaxed);
}

void ep_gpu_copy_stats_reset(void)
{
    for (int d = 0; d < 2; d++) {
        atomic_store_explicit(&copy_calls[d], 0, memory_order_relaxed);
        for (int c = 0; c < EP_COPY_N_CLASSES; c++)
            atomic_store_explicit(&copy_bytes[c][d], 0, memory_order_relaxed);
    }
}

void ep_gpu_copy_stats_diff(const ep_gpu_copy_stats *after, const ep_gpu_copy_stats *before,
                            ep_gpu_copy_stats *out)
{
    out->h2d_bytes = after->h2d_bytes - before->h2d_bytes;
    out->d2h_bytes = after->d2h_bytes - before->d2h_bytes;
    out->h2d_copies = after->h2d_copies - before->h2d_copies;
    out->d2h_copies = after->d2h_copies - before->d2h_copies;
    for (int c = 0; c < EP_COPY_N_CLASSES; c++) {
        out->h2d[c] = after->h2d[c] - before->h2d[c];
        out->d2h[c] = after->d2h[c] - before->d2h[c];
    }
}
