// The emulated CUDA device's runtime (EP_CUDA_EMU=ON, tests only): the
// cuda* calls epserve makes, on the host, with the real runtime's
// signatures, error codes and last-error rules, plus the kernel launcher
// behind EP_LAUNCH and the memory checks of emu.h.
//
// Device memory is host memory: each allocation sits between two guard
// zones filled with a pattern, which are checked on cudaFree, on every
// memcpy / memset that touches the allocation and before and after every
// kernel; fresh device memory is 0xFF bytes (a NaN as fp32 and bf16), so a
// kernel that reads what nobody wrote shows it. Streams and events are
// synchronous: work is done when the call returns.
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "emu.h"
#include "include/cuda_runtime.h"

#define EMU_GUARD      256 // bytes before and after each device allocation
#define EMU_GUARD_BYTE 0xA5
#define EMU_POISON     0xFF
#define EMU_MAX_DEVS   64

// ---- messages -----------------------------------------------------------------------

void emu_warn(const char *lib, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cuda-emu: %s: %s\n", lib, msg);
    fflush(stderr);
}

void emu_fault(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cuda-emu: FAULT: %s\n", msg);
    fflush(stderr);
    abort();
}

// ---- state --------------------------------------------------------------------------

struct emu_alloc {
    char *p;     // what cudaMalloc returned; the guards are around it
    size_t size; // bytes asked for
    int device;
};

struct emu_pinned {
    char *p;
    size_t size;
};

struct CUstream_st {
    int device;
    unsigned flags;
    struct CUstream_st *next;
};

struct CUevent_st {
    unsigned flags;
    bool recorded;    // cudaEventRecord was called
    double record_ms; // host monotonic clock when it was (the work before it is done by then)
    struct CUevent_st *next;
};

static pthread_mutex_t emu_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t emu_once = PTHREAD_ONCE_INIT;
static int emu_n_devs;
static size_t emu_mem_total;
static size_t emu_mem_used[EMU_MAX_DEVS];
// Live device allocations sorted by address, for lookups by pointer.
static struct emu_alloc *emu_allocs;
static size_t emu_n_allocs, emu_cap_allocs;
static struct emu_pinned *emu_pins;
static size_t emu_n_pins, emu_cap_pins;
static struct CUstream_st *emu_streams;
static struct CUevent_st *emu_events;

static __thread int emu_cur_dev;
static __thread cudaError_t emu_last_error = cudaSuccess;

static void emu_init_once(void)
{
    emu_n_devs = 1;
    const char *s = getenv("EP_EMU_DEVICES");
    if (s && *s) {
        char *end;
        long n = strtol(s, &end, 10);
        if (*end || n < 0 || n > EMU_MAX_DEVS)
            emu_fault("EP_EMU_DEVICES=%s: expected a device count from 0 to %d", s, EMU_MAX_DEVS);
        emu_n_devs = (int)n;
    }
    double gb = 80.0;
    s = getenv("EP_EMU_MEM_GB");
    if (s && *s) {
        char *end;
        gb = strtod(s, &end);
        if (*end || !(gb > 0.0) || gb > 1e6)
            emu_fault("EP_EMU_MEM_GB=%s: expected a positive number of GiB", s);
    }
    emu_mem_total = (size_t)(gb * 1024.0 * 1024.0 * 1024.0);
}

static void emu_init(void)
{
    pthread_once(&emu_once, emu_init_once);
}

// Every failing call sets the thread's last error, as the real runtime does.
static cudaError_t emu_err(cudaError_t e)
{
    if (e != cudaSuccess) emu_last_error = e;
    return e;
}

static cudaError_t emu_need_device(void)
{
    emu_init();
    if (emu_n_devs == 0) return emu_err(cudaErrorNoDevice);
    return cudaSuccess;
}

// ---- errors ---------------------------------------------------------------------------

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = emu_last_error;
    emu_last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void)
{
    return emu_last_error;
}

static const struct {
    cudaError_t code;
    const char *name, *text; // the real runtime's strings
} emu_error_table[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection",
     "invalid copy direction for memcpy"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration",
     "invalid configuration argument"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorNoKernelImageForDevice, "cudaErrorNoKernelImageForDevice",
     "no kernel image is available for execution on the device"},
    {cudaErrorUnsupportedPtxVersion, "cudaErrorUnsupportedPtxVersion",
     "the provided PTX was compiled with an unsupported toolchain."},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress",
     "an illegal memory access was encountered"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorUnknown, "cudaErrorUnknown", "unknown error"},
};

const char *cudaGetErrorName(cudaError_t error)
{
    for (size_t i = 0; i < sizeof emu_error_table / sizeof emu_error_table[0]; i++)
        if (emu_error_table[i].code == error) return emu_error_table[i].name;
    return "unrecognized error code";
}

const char *cudaGetErrorString(cudaError_t error)
{
    for (size_t i = 0; i < sizeof emu_error_table / sizeof emu_error_table[0]; i++)
        if (emu_error_table[i].code == error) return emu_error_table[i].text;
    return "unrecognized error code";
}

// ---- devices --------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int *count)
{
    emu_init();
    if (!count) return emu_err(cudaErrorInvalidValue);
    *count = emu_n_devs;
    return emu_n_devs ? cudaSuccess : emu_err(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (device < 0 || device >= emu_n_devs) {
        emu_warn("cudart", "cudaSetDevice(%d): expected a device from 0 to %d", device,
                 emu_n_devs - 1);
        return emu_err(cudaErrorInvalidDevice);
    }
    emu_cur_dev = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!device) return emu_err(cudaErrorInvalidValue);
    *device = emu_cur_dev;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!prop) return emu_err(cudaErrorInvalidValue);
    if (device < 0 || device >= emu_n_devs) return emu_err(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "epserve emulated device");
    prop->totalGlobalMem = emu_mem_total;
    prop->sharedMemPerBlock = 48 * 1024;
    prop->regsPerBlock = 65536;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = 1024;
    prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = INT_MAX;
    prop->maxGridSize[1] = 65535;
    prop->maxGridSize[2] = 65535;
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = 132;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    return emu_need_device();
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!free_b || !total) return emu_err(cudaErrorInvalidValue);
    pthread_mutex_lock(&emu_mu);
    *total = emu_mem_total;
    *free_b = emu_mem_total - emu_mem_used[emu_cur_dev];
    pthread_mutex_unlock(&emu_mu);
    return cudaSuccess;
}

// ---- the allocation table ---------------------------------------------------------------

// Index of the allocation whose guarded span [p - EMU_GUARD, p + size +
// EMU_GUARD) holds q, or -1. Caller holds emu_mu.
static long emu_find_locked(const void *q)
{
    const char *c = q;
    size_t lo = 0, hi = emu_n_allocs;
    while (lo < hi) { // first allocation whose start is above c
        size_t mid = (lo + hi) / 2;
        if (emu_allocs[mid].p - EMU_GUARD <= c)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0) return -1;
    const struct emu_alloc *a = &emu_allocs[lo - 1];
    return c < a->p + a->size + EMU_GUARD ? (long)(lo - 1) : -1;
}

bool emu_is_device(const void *p, size_t bytes)
{
    if (!p) return false;
    pthread_mutex_lock(&emu_mu);
    long i = emu_find_locked(p);
    bool ok = false;
    if (i >= 0) {
        const struct emu_alloc *a = &emu_allocs[i];
        const char *c = p;
        ok = c >= a->p && bytes <= a->size && (size_t)(c - a->p) <= a->size - bytes;
    }
    pthread_mutex_unlock(&emu_mu);
    return ok;
}

bool emu_is_pinned(const void *p)
{
    bool ok = false;
    pthread_mutex_lock(&emu_mu);
    for (size_t i = 0; i < emu_n_pins && !ok; i++)
        ok = emu_pins[i].p == p;
    pthread_mutex_unlock(&emu_mu);
    return ok;
}

// Pinned host memory holding [p, p + bytes)?
static bool emu_in_pinned(const void *p, size_t bytes)
{
    const char *c = p;
    bool ok = false;
    pthread_mutex_lock(&emu_mu);
    for (size_t i = 0; i < emu_n_pins && !ok; i++)
        ok = c >= emu_pins[i].p && (size_t)(c - emu_pins[i].p) <= emu_pins[i].size &&
             bytes <= emu_pins[i].size - (size_t)(c - emu_pins[i].p);
    pthread_mutex_unlock(&emu_mu);
    return ok;
}

// Faults when a guard byte of a has changed; `when` says what found it.
static void emu_check_alloc(const struct emu_alloc *a, const char *when)
{
    for (size_t i = 0; i < EMU_GUARD; i++) {
        if ((unsigned char)a->p[-(long)EMU_GUARD + (long)i] != EMU_GUARD_BYTE)
            emu_fault("%s: the guard zone before the %zu-byte device allocation at %p was "
                      "overwritten (byte %ld before its start, 0x%02x instead of 0x%02x)",
                      when, a->size, (void *)a->p, (long)(EMU_GUARD - i),
                      (unsigned char)a->p[-(long)EMU_GUARD + (long)i], EMU_GUARD_BYTE);
        if ((unsigned char)a->p[a->size + i] != EMU_GUARD_BYTE)
            emu_fault("%s: the guard zone after the %zu-byte device allocation at %p was "
                      "overwritten (byte %zu past its end, 0x%02x instead of 0x%02x)",
                      when, a->size, (void *)a->p, i, (unsigned char)a->p[a->size + i],
                      EMU_GUARD_BYTE);
    }
}

static void emu_check_all(const char *when)
{
    pthread_mutex_lock(&emu_mu);
    for (size_t i = 0; i < emu_n_allocs; i++)
        emu_check_alloc(&emu_allocs[i], when);
    pthread_mutex_unlock(&emu_mu);
}

// Checks the guards of the allocation holding p, if any.
static void emu_check_at(const void *p, const char *when)
{
    pthread_mutex_lock(&emu_mu);
    long i = emu_find_locked(p);
    if (i >= 0) emu_check_alloc(&emu_allocs[i], when);
    pthread_mutex_unlock(&emu_mu);
}

// ---- memory ---------------------------------------------------------------------------

cudaError_t cudaMalloc(void **devPtr, size_t size)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!devPtr) return emu_err(cudaErrorInvalidValue);
    *devPtr = NULL;
    if (size == 0) return cudaSuccess; // as the real runtime: success, a NULL pointer
    pthread_mutex_lock(&emu_mu);
    const int dev = emu_cur_dev;
    if (size > emu_mem_total - emu_mem_used[dev]) {
        pthread_mutex_unlock(&emu_mu);
        emu_warn("cudart", "cudaMalloc(%zu bytes): device %d has %zu of %zu bytes free", size, dev,
                 emu_mem_total - emu_mem_used[dev], emu_mem_total);
        return emu_err(cudaErrorMemoryAllocation);
    }
    // 256-byte aligned, as cudaMalloc's pointers are.
    const size_t span = (EMU_GUARD + size + EMU_GUARD + 255) / 256 * 256;
    char *raw = aligned_alloc(256, span);
    if (!raw) {
        pthread_mutex_unlock(&emu_mu);
        emu_warn("cudart", "cudaMalloc(%zu bytes): host allocation failed", size);
        return emu_err(cudaErrorMemoryAllocation);
    }
    if (emu_n_allocs == emu_cap_allocs) {
        emu_cap_allocs = emu_cap_allocs ? 2 * emu_cap_allocs : 64;
        emu_allocs = realloc(emu_allocs, emu_cap_allocs * sizeof *emu_allocs);
        if (!emu_allocs) emu_fault("cudaMalloc: out of host memory for the allocation table");
    }
    struct emu_alloc a = {raw + EMU_GUARD, size, dev};
    memset(raw, EMU_GUARD_BYTE, EMU_GUARD);
    memset(a.p, EMU_POISON, size);
    memset(a.p + size, EMU_GUARD_BYTE, span - EMU_GUARD - size);
    size_t at = 0;
    while (at < emu_n_allocs && emu_allocs[at].p < a.p)
        at++;
    memmove(&emu_allocs[at + 1], &emu_allocs[at], (emu_n_allocs - at) * sizeof *emu_allocs);
    emu_allocs[at] = a;
    emu_n_allocs++;
    emu_mem_used[dev] += size;
    pthread_mutex_unlock(&emu_mu);
    *devPtr = a.p;
    return cudaSuccess;
}

cudaError_t cudaFree(void *devPtr)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!devPtr) return cudaSuccess;
    pthread_mutex_lock(&emu_mu);
    long i = emu_find_locked(devPtr);
    if (i < 0 || emu_allocs[i].p != devPtr) {
        pthread_mutex_unlock(&emu_mu);
        emu_warn("cudart", "cudaFree(%p): expected a pointer cudaMalloc returned, found %s", devPtr,
                 i < 0 ? (emu_is_pinned(devPtr) ? "pinned host memory (cudaFreeHost frees it)"
                                                : "a host or already freed pointer")
                       : "a pointer inside a device allocation");
        return emu_err(cudaErrorInvalidValue);
    }
    struct emu_alloc a = emu_allocs[i];
    emu_check_alloc(&a, "cudaFree");
    memmove(&emu_allocs[i], &emu_allocs[i + 1],
            (emu_n_allocs - (size_t)i - 1) * sizeof *emu_allocs);
    emu_n_allocs--;
    emu_mem_used[a.device] -= a.size;
    pthread_mutex_unlock(&emu_mu);
    free(a.p - EMU_GUARD);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t size)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!ptr) return emu_err(cudaErrorInvalidValue);
    *ptr = NULL;
    if (size == 0) return cudaSuccess;
    char *p = malloc(size);
    if (!p) return emu_err(cudaErrorMemoryAllocation);
    memset(p, EMU_POISON, size); // page-locked memory is not zeroed either
    pthread_mutex_lock(&emu_mu);
    if (emu_n_pins == emu_cap_pins) {
        emu_cap_pins = emu_cap_pins ? 2 * emu_cap_pins : 16;
        emu_pins = realloc(emu_pins, emu_cap_pins * sizeof *emu_pins);
        if (!emu_pins) emu_fault("cudaMallocHost: out of host memory for the pinned table");
    }
    emu_pins[emu_n_pins++] = (struct emu_pinned){p, size};
    pthread_mutex_unlock(&emu_mu);
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *ptr)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!ptr) return cudaSuccess;
    pthread_mutex_lock(&emu_mu);
    for (size_t i = 0; i < emu_n_pins; i++) {
        if (emu_pins[i].p != ptr) continue;
        emu_pins[i] = emu_pins[--emu_n_pins];
        pthread_mutex_unlock(&emu_mu);
        free(ptr);
        return cudaSuccess;
    }
    pthread_mutex_unlock(&emu_mu);
    emu_warn("cudart", "cudaFreeHost(%p): expected a pointer cudaMallocHost returned, found %s",
             ptr, emu_is_device(ptr, 0) ? "device memory (cudaFree frees it)" : "another pointer");
    return emu_err(cudaErrorInvalidValue);
}

static bool emu_stream_ok(cudaStream_t s)
{
    // NULL, cudaStreamLegacy and cudaStreamPerThread are always valid.
    if ((uintptr_t)s <= 2) return true;
    bool ok = false;
    pthread_mutex_lock(&emu_mu);
    for (struct CUstream_st *t = emu_streams; t && !ok; t = t->next)
        ok = t == s;
    pthread_mutex_unlock(&emu_mu);
    return ok;
}

// What [p, p + n) is: 0 host memory, 1 inside one device allocation, -1 a
// device pointer whose range leaves its allocation (an error everywhere).
static int emu_classify(const void *p, size_t n, const char *fn, const char *what)
{
    pthread_mutex_lock(&emu_mu);
    long i = emu_find_locked(p);
    struct emu_alloc a = i >= 0 ? emu_allocs[i] : (struct emu_alloc){0};
    pthread_mutex_unlock(&emu_mu);
    if (i < 0) return 0;
    const char *c = p;
    if (c >= a.p && n <= a.size && (size_t)(c - a.p) <= a.size - n) return 1;
    emu_warn("cudart",
             "%s: %s [%p, +%zu bytes) leaves the %zu-byte device allocation at %p (it starts at "
             "offset %ld)",
             fn, what, p, n, a.size, (void *)a.p, (long)(c - a.p));
    return -1;
}

static const char *emu_kind_name(enum cudaMemcpyKind k)
{
    static const char *names[] = {"cudaMemcpyHostToHost", "cudaMemcpyHostToDevice",
                                  "cudaMemcpyDeviceToHost", "cudaMemcpyDeviceToDevice",
                                  "cudaMemcpyDefault"};
    return (unsigned)k <= 4 ? names[k] : "an unknown kind";
}

static cudaError_t emu_memcpy(const char *fn, void *dst, const void *src, size_t n,
                              enum cudaMemcpyKind kind, cudaStream_t stream)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if ((unsigned)kind > cudaMemcpyDefault) {
        emu_warn("cudart", "%s: kind %d: expected a cudaMemcpyKind from 0 to 4", fn, (int)kind);
        return emu_err(cudaErrorInvalidMemcpyDirection);
    }
    if (!emu_stream_ok(stream)) {
        emu_warn("cudart", "%s: stream %p: expected a live stream", fn, (void *)stream);
        return emu_err(cudaErrorInvalidResourceHandle);
    }
    if (n == 0) return cudaSuccess;
    if (!dst || !src) {
        emu_warn("cudart", "%s(%p, %p, %zu bytes): a NULL pointer", fn, dst, src, n);
        return emu_err(cudaErrorInvalidValue);
    }
    const int dd = emu_classify(dst, n, fn, "destination"), sd = emu_classify(src, n, fn, "source");
    if (dd < 0 || sd < 0) return emu_err(cudaErrorInvalidValue);
    if (kind != cudaMemcpyDefault) {
        const int want_d = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
        const int want_s = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
        if (dd != want_d || sd != want_s) {
            emu_warn("cudart",
                     "%s(%zu bytes, %s): expected a %s destination and a %s source, found "
                     "%s %p and %s %p",
                     fn, n, emu_kind_name(kind), want_d ? "device" : "host",
                     want_s ? "device" : "host", dd ? "device" : "host", dst,
                     sd ? "device" : "host", src);
            return emu_err(cudaErrorInvalidValue);
        }
    }
    if (dd) emu_check_at(dst, fn);
    if (sd) emu_check_at(src, fn);
    memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind)
{
    return emu_memcpy("cudaMemcpy", dst, src, count, kind, NULL);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream)
{
    return emu_memcpy("cudaMemcpyAsync", dst, src, count, kind, stream);
}

static cudaError_t emu_memset(const char *fn, void *p, int value, size_t n, cudaStream_t stream)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!emu_stream_ok(stream)) {
        emu_warn("cudart", "%s: stream %p: expected a live stream", fn, (void *)stream);
        return emu_err(cudaErrorInvalidResourceHandle);
    }
    if (n == 0) return cudaSuccess;
    const int d = p ? emu_classify(p, n, fn, "destination") : 0;
    if (d != 1) {
        if (d == 0)
            emu_warn("cudart", "%s(%p, %zu bytes): expected device memory, found a host pointer",
                     fn, p, n);
        return emu_err(cudaErrorInvalidValue);
    }
    emu_check_at(p, fn);
    memset(p, value, n);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *devPtr, int value, size_t count)
{
    return emu_memset("cudaMemset", devPtr, value, count, NULL);
}

cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream)
{
    return emu_memset("cudaMemsetAsync", devPtr, value, count, stream);
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attributes, const void *ptr)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!attributes) return emu_err(cudaErrorInvalidValue);
    memset(attributes, 0, sizeof *attributes);
    attributes->device = -2; // what CUDA reports for memory it does not know
    pthread_mutex_lock(&emu_mu);
    long i = emu_find_locked(ptr);
    bool dev = i >= 0 && (const char *)ptr >= emu_allocs[i].p &&
               (const char *)ptr < emu_allocs[i].p + emu_allocs[i].size;
    int device = dev ? emu_allocs[i].device : 0;
    pthread_mutex_unlock(&emu_mu);
    if (dev) {
        attributes->type = cudaMemoryTypeDevice;
        attributes->device = device;
        attributes->devicePointer = (void *)ptr;
    } else if (ptr && emu_in_pinned(ptr, 0)) {
        attributes->type = cudaMemoryTypeHost;
        attributes->device = emu_cur_dev;
        attributes->devicePointer = (void *)ptr; // mapped, as with UVA
        attributes->hostPointer = (void *)ptr;
    } else {
        attributes->type = cudaMemoryTypeUnregistered;
    }
    return cudaSuccess;
}

// ---- streams and events -------------------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!pStream || flags > cudaStreamNonBlocking) return emu_err(cudaErrorInvalidValue);
    struct CUstream_st *s = calloc(1, sizeof *s);
    if (!s) return emu_err(cudaErrorMemoryAllocation);
    s->device = emu_cur_dev;
    s->flags = flags;
    pthread_mutex_lock(&emu_mu);
    s->next = emu_streams;
    emu_streams = s;
    pthread_mutex_unlock(&emu_mu);
    *pStream = s;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *pStream)
{
    return cudaStreamCreateWithFlags(pStream, cudaStreamDefault);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    pthread_mutex_lock(&emu_mu);
    for (struct CUstream_st **t = &emu_streams; *t; t = &(*t)->next) {
        if (*t != stream) continue;
        *t = stream->next;
        pthread_mutex_unlock(&emu_mu);
        free(stream);
        return cudaSuccess;
    }
    pthread_mutex_unlock(&emu_mu);
    emu_warn("cudart", "cudaStreamDestroy(%p): expected a live stream", (void *)stream);
    return emu_err(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!emu_stream_ok(stream)) {
        emu_warn("cudart", "cudaStreamSynchronize(%p): expected a live stream", (void *)stream);
        return emu_err(cudaErrorInvalidResourceHandle);
    }
    return cudaSuccess;
}

static bool emu_event_ok(cudaEvent_t ev)
{
    bool ok = false;
    pthread_mutex_lock(&emu_mu);
    for (struct CUevent_st *t = emu_events; t && !ok; t = t->next)
        ok = t == ev;
    pthread_mutex_unlock(&emu_mu);
    return ok;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!event || flags > 0x0f) return emu_err(cudaErrorInvalidValue);
    struct CUevent_st *ev = calloc(1, sizeof *ev);
    if (!ev) return emu_err(cudaErrorMemoryAllocation);
    ev->flags = flags;
    pthread_mutex_lock(&emu_mu);
    ev->next = emu_events;
    emu_events = ev;
    pthread_mutex_unlock(&emu_mu);
    *event = ev;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event)
{
    return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    pthread_mutex_lock(&emu_mu);
    for (struct CUevent_st **t = &emu_events; *t; t = &(*t)->next) {
        if (*t != event) continue;
        *t = event->next;
        pthread_mutex_unlock(&emu_mu);
        free(event);
        return cudaSuccess;
    }
    pthread_mutex_unlock(&emu_mu);
    emu_warn("cudart", "cudaEventDestroy(%p): expected a live event", (void *)event);
    return emu_err(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!emu_event_ok(event) || !emu_stream_ok(stream)) {
        emu_warn("cudart", "cudaEventRecord(%p, %p): expected a live event and stream",
                 (void *)event, (void *)stream);
        return emu_err(cudaErrorInvalidResourceHandle);
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    pthread_mutex_lock(&emu_mu);
    event->recorded = true;
    event->record_ms = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
    pthread_mutex_unlock(&emu_mu);
    return cudaSuccess;
}

// The stream work an event waits for is done when it is recorded.
cudaError_t cudaEventQuery(cudaEvent_t event)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!emu_event_ok(event)) {
        emu_warn("cudart", "cudaEventQuery(%p): expected a live event", (void *)event);
        return emu_err(cudaErrorInvalidResourceHandle);
    }
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    return cudaEventQuery(event);
}

// Host time between the two records: the emulated work runs inside the
// calls, so this is the host's time for it, not a GPU's. As CUDA: an event
// made with cudaEventDisableTiming, or never recorded, is an invalid handle.
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    cudaError_t e = emu_need_device();
    if (e) return e;
    if (!ms) return emu_err(cudaErrorInvalidValue);
    if (!emu_event_ok(start) || !emu_event_ok(end)) {
        emu_warn("cudart", "cudaEventElapsedTime(%p, %p): expected two live events", (void *)start,
                 (void *)end);
        return emu_err(cudaErrorInvalidResourceHandle);
    }
    pthread_mutex_lock(&emu_mu);
    const bool timed =
        !(start->flags & cudaEventDisableTiming) && !(end->flags & cudaEventDisableTiming);
    const bool recorded = start->recorded && end->recorded;
    const double d = end->record_ms - start->record_ms;
    pthread_mutex_unlock(&emu_mu);
    if (!timed || !recorded) {
        emu_warn("cudart",
                 "cudaEventElapsedTime(%p, %p): expected two recorded events made "
                 "without cudaEventDisableTiming, found %s",
                 (void *)start, (void *)end,
                 timed ? "one not recorded" : "one made with cudaEventDisableTiming");
        return emu_err(cudaErrorInvalidResourceHandle);
    }
    *ms = (float)d;
    return cudaSuccess;
}

// ---- kernel launches ------------------------------------------------------------------------

__thread uint3 emu_thread_idx, emu_block_idx, emu_block_dim, emu_grid_dim;

// A launch runs on the calling thread: each CUDA thread of a block is a
// fiber with a stack of its own, and the block's fibers take turns. A
// round resumes every fiber that has not finished the block; each runs
// until its next __syncthreads or until it returns from the kernel, so when
// a round ends every live thread sits at the same barrier, which the next
// round releases (the barrier waits only for threads that have not
// returned, as before). No host thread is created and nothing waits on a
// futex: a block costs two context switches per thread. (One host thread
// per CUDA thread cost a thread start per launch and a wake-up per thread
// per block and barrier: a tiny-qwen3-moe decode step took 2358 ms that
// way and takes 19 ms this way.)
//
// The switch: on x86-64 a few instructions of our own (the callee-saved
// registers, the SSE and x87 control words, the stack pointer), as
// swapcontext's signal-mask system call per switch took most of the time;
// elsewhere, or with -DEP_EMU_UCONTEXT, ucontext. The x86-64 switch does
// not support a CET shadow stack (not enabled for user programs on the
// systems this runs on; glibc's swapcontext does).
#define EMU_STACK     (128u << 10) // per CUDA thread: kernels keep small locals
#define EMU_MAX_FIBER 1024u

enum { EMU_FIB_RUN, EMU_FIB_BARRIER, EMU_FIB_DONE };

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#if defined(__x86_64__) && !defined(EP_EMU_UCONTEXT)
struct emu_ctx {
    void *sp; // where the switch saved the registers
};
// Saves the callee-saved registers on the current stack, *save = the stack
// pointer, then restores those of `to` and returns into it.
void ep_emu_ctx_switch(void **save, void *to) __attribute__((visibility("hidden")));
__asm__(".text\n"
        ".p2align 4\n"
        ".globl ep_emu_ctx_switch\n"
        ".hidden ep_emu_ctx_switch\n"
        ".type ep_emu_ctx_switch, @function\n"
        "ep_emu_ctx_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size ep_emu_ctx_switch, .-ep_emu_ctx_switch\n");

// A context that starts fn on [stack, stack + size): the frame
// ep_emu_ctx_switch pops (control words as now, registers 0), fn as the
// return address and a null one above it, so fn starts with the stack
// aligned as after a call.
static void emu_ctx_make(struct emu_ctx *c, char *stack, size_t size, void (*fn)(void))
{
    uint64_t *p = (uint64_t *)(((uintptr_t)(stack + size)) & ~(uintptr_t)15);
    *--p = 0;
    *--p = (uint64_t)(uintptr_t)fn;
    for (int i = 0; i < 6; i++)
        *--p = 0;
    uint32_t csr;
    uint16_t cw;
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr), "=m"(cw));
    *--p = 0;
    memcpy(p, &csr, 4);
    memcpy((char *)p + 4, &cw, 2);
    c->sp = p;
}

static void emu_ctx_swap(struct emu_ctx *save, struct emu_ctx *to)
{
    ep_emu_ctx_switch(&save->sp, to->sp);
}
#else
struct emu_ctx {
    ucontext_t uc;
};

static void emu_ctx_make(struct emu_ctx *c, char *stack, size_t size, void (*fn)(void))
{
    if (getcontext(&c->uc)) emu_fault("getcontext: %s", strerror(errno));
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = NULL; // fn never returns
    makecontext(&c->uc, fn, 0);
}

static void emu_ctx_swap(struct emu_ctx *save, struct emu_ctx *to)
{
    if (swapcontext(&save->uc, &to->uc)) emu_fault("swapcontext: %s", strerror(errno));
}
#endif

struct emu_fiber {
    struct emu_ctx ctx;
    char *stack; // EMU_STACK bytes above a guard page
    int state;
};

struct emu_launch {
    const char *kernel;
    uint3 grid, block;
    unsigned long long n_blocks;
    void (*run)(void *);
    void *ctx;
    unsigned n;   // threads per block
    unsigned cur; // the fiber running
};

static pthread_mutex_t emu_launch_mu = PTHREAD_MUTEX_INITIALIZER;
static struct emu_launch *emu_cur_launch;   // the one running (launches are serialized)
static volatile const char *emu_cur_kernel; // for the SIGSEGV message
static struct emu_ctx emu_sched;            // the launching thread's context
static struct emu_fiber *emu_fibers;        // EMU_MAX_FIBER, stacks mapped on first use
static unsigned long long emu_rounds;       // rounds run, all launches

#ifdef EMU_ASAN
// AddressSanitizer's fiber annotations (sanitizer/common_interface_defs.h):
// told of each switch, it keeps the right stack bounds and fake stacks.
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                     size_t *size_old);
static const void *emu_sched_bottom;
static size_t emu_sched_size;
#define EMU_TO_FIBER(f)                                                                            \
    void *fake_;                                                                                   \
    __sanitizer_start_switch_fiber(&fake_, (f)->stack, EMU_STACK)
#define EMU_BACK_FROM_FIBER() __sanitizer_finish_switch_fiber(fake_, NULL, NULL)
#define EMU_TO_SCHED()                                                                             \
    void *fake_;                                                                                   \
    __sanitizer_start_switch_fiber(&fake_, emu_sched_bottom, emu_sched_size)
#define EMU_IN_FIBER() __sanitizer_finish_switch_fiber(NULL, &emu_sched_bottom, &emu_sched_size)
#define EMU_RESUMED_FIBER()                                                                        \
    __sanitizer_finish_switch_fiber(fake_, &emu_sched_bottom, &emu_sched_size)
#else
#define EMU_TO_FIBER(f)       (void)0
#define EMU_BACK_FROM_FIBER() (void)0
#define EMU_TO_SCHED()        (void)0
#define EMU_IN_FIBER()        (void)0
#define EMU_RESUMED_FIBER()   (void)0
#endif

void emu_syncthreads(void)
{
    struct emu_launch *l = emu_cur_launch;
    if (!l) emu_fault("__syncthreads outside a kernel");
    struct emu_fiber *f = &emu_fibers[l->cur];
    f->state = EMU_FIB_BARRIER;
    EMU_TO_SCHED();
    emu_ctx_swap(&f->ctx, &emu_sched);
    EMU_RESUMED_FIBER();
}

// A fiber's life: the kernel for each block of each launch it is resumed
// for, back to the scheduler after each. Fibers live as long as the
// process (made once, parked between launches), so AddressSanitizer's
// per-fiber state is made once too.
static void emu_fiber_main(void)
{
    EMU_IN_FIBER();
    for (;;) {
        struct emu_launch *l = emu_cur_launch;
        struct emu_fiber *f = &emu_fibers[l->cur];
        l->run(l->ctx);
        f->state = EMU_FIB_DONE;
        EMU_TO_SCHED();
        emu_ctx_swap(&f->ctx, &emu_sched);
        EMU_RESUMED_FIBER();
    }
}

// Maps the fibers' stacks once, each above a PROT_NONE page (an overflow
// faults instead of writing into the next stack).
static void emu_fibers_init(void)
{
    if (emu_fibers) return;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), one = EMU_STACK + page;
    emu_fibers = calloc(EMU_MAX_FIBER, sizeof *emu_fibers);
    void *m = mmap(NULL, one * EMU_MAX_FIBER, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!emu_fibers || m == MAP_FAILED)
        emu_fault("out of host memory for %u kernel thread stacks of %u KiB", EMU_MAX_FIBER,
                  EMU_STACK >> 10);
    for (unsigned i = 0; i < EMU_MAX_FIBER; i++) {
        char *g = (char *)m + (size_t)i * one;
        if (mprotect(g, page, PROT_NONE))
            emu_fault("mprotect of a kernel thread stack's guard page: %s", strerror(errno));
        emu_fibers[i].stack = g + page;
        emu_ctx_make(&emu_fibers[i].ctx, emu_fibers[i].stack, EMU_STACK, emu_fiber_main);
    }
}

// Runs the launch's blocks one after another, each as rounds of its fibers.
static void emu_run_blocks(struct emu_launch *l)
{
    emu_fibers_init();
    emu_block_dim = l->block;
    emu_grid_dim = l->grid;
    for (unsigned long long b = 0; b < l->n_blocks; b++) {
        emu_block_idx = (uint3){(unsigned)(b % l->grid.x), (unsigned)(b / l->grid.x % l->grid.y),
                                (unsigned)(b / ((unsigned long long)l->grid.x * l->grid.y))};
        for (unsigned i = 0; i < l->n; i++)
            emu_fibers[i].state = EMU_FIB_RUN;
        for (bool again = true; again;) {
            again = false;
            // Rounds alternate between ascending and descending thread
            // index, so a thread that reads what another writes without a
            // barrier between them runs before the writer in one of two
            // rounds (or launches) and sees the stale value.
            const bool down = emu_rounds++ & 1;
            for (unsigned k = 0; k < l->n; k++) {
                const unsigned i = down ? l->n - 1 - k : k;
                struct emu_fiber *f = &emu_fibers[i];
                if (f->state == EMU_FIB_DONE) continue;
                l->cur = i; // the fiber sets its state before it switches back
                emu_thread_idx = (uint3){i % l->block.x, i / l->block.x % l->block.y,
                                         i / (l->block.x * l->block.y)};
                EMU_TO_FIBER(f);
                emu_ctx_swap(&emu_sched, &f->ctx);
                EMU_BACK_FROM_FIBER();
                if (f->state == EMU_FIB_BARRIER) again = true;
            }
        }
    }
}

static void emu_segv(int sig)
{
    const char *k = (const char *)emu_cur_kernel;
    static const char a[] = "cuda-emu: FAULT: kernel ",
                      b[] = ": invalid memory access (SIGSEGV or SIGBUS)\n";
    if (k) {
        ssize_t r = write(2, a, sizeof a - 1);
        r = write(2, k, strlen(k));
        r = write(2, b, sizeof b - 1);
        (void)r;
    }
    signal(sig, SIG_DFL); // the default action: the process dies of sig
    raise(sig);
}

// A SIGSEGV or SIGBUS while a kernel runs names the kernel: the handler is
// installed for the launch and the previous one restored after it (a test
// framework's handler cannot unwind out of a kernel's thread, and one
// installed after ASan's would hide ASan's report too).
static void emu_segv_swap(bool on, struct sigaction old[2])
{
    if (on) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = emu_segv;
        sigaction(SIGSEGV, &sa, &old[0]);
        sigaction(SIGBUS, &sa, &old[1]);
    } else {
        sigaction(SIGSEGV, &old[0], NULL);
        sigaction(SIGBUS, &old[1], NULL);
    }
}

void emu_launch_grid(const char *kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                     void (*run)(void *ctx), void *ctx)
{
    if (emu_need_device()) return;
    if (!emu_stream_ok(stream)) {
        emu_warn("cudart", "launch of %s: stream %p: expected a live stream", kernel,
                 (void *)stream);
        emu_err(cudaErrorInvalidResourceHandle);
        return;
    }
    const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !nt || block.x > 1024 || block.y > 1024 || block.z > 64 ||
        nt > 1024 || grid.x > INT_MAX || grid.y > 65535 || grid.z > 65535) {
        emu_warn("cudart",
                 "launch of %s: grid (%u, %u, %u), block (%u, %u, %u): expected grid dimensions "
                 "from 1 to (2^31-1, 65535, 65535) and 1 to 1024 threads per block",
                 kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        emu_err(cudaErrorInvalidConfiguration);
        return;
    }
    if (smem > 0)
        emu_fault("launch of %s: %zu bytes of dynamic shared memory: not emulated (only static "
                  "__shared__ arrays are)",
                  kernel, smem);

    char when[256];
    pthread_mutex_lock(&emu_launch_mu);
    snprintf(when, sizeof when, "before kernel %s", kernel);
    emu_check_all(when);
    struct emu_launch l = {kernel,
                           {grid.x, grid.y, grid.z},
                           {block.x, block.y, block.z},
                           (unsigned long long)grid.x * grid.y * grid.z,
                           run,
                           ctx,
                           (unsigned)nt,
                           0};
    emu_cur_launch = &l;
    emu_cur_kernel = kernel;
    struct sigaction old_sig[2];
    emu_segv_swap(true, old_sig);

    emu_run_blocks(&l);

    emu_segv_swap(false, old_sig);
    snprintf(when, sizeof when, "kernel %s", kernel);
    emu_check_all(when);
    emu_cur_kernel = NULL;
    emu_cur_launch = NULL;
    pthread_mutex_unlock(&emu_launch_mu);
}
