// The emulated NCCL (tests/emu/nccl.c) over MPI at any world size: an
// all-to-all of odd per-pair counts in one group against MPI_Alltoallv, zero
// counts, self send/recv, count and datatype mismatches failing on both
// ranks without hanging, rejected arguments, the version. Run with mpirun
// -np 2 and -np 4 (--oversubscribe on small machines).
//
// Built with -DEMU_NCCL_TEST_LOCAL_EMU, the test brings its own emu.h
// (a table of "device" allocations) and needs no emulated runtime; without
// it, device memory comes from the emulated runtime's cudaMalloc.
#define _POSIX_C_SOURCE 200809L

#include <mpi.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu.h"
#include "nccl.h"

static int g_rank, g_world, g_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "rank %d: %s:%d: check failed: %s\n", g_rank, __FILE__, __LINE__,      \
                    #cond);                                                                        \
            g_failed++;                                                                            \
        }                                                                                          \
    } while (0)

// The call must fail with rc and NCCL's last error must contain text.
#define CHECK_FAILS(call, rc, text)                                                                \
    do {                                                                                           \
        ncclResult_t got_ = (call);                                                                \
        if (got_ != (rc) || !strstr(ncclGetLastError(NULL), (text))) {                             \
            fprintf(stderr, "rank %d: %s:%d: %s: expected %s with \"%s\", found %s with \"%s\"\n", \
                    g_rank, __FILE__, __LINE__, #call, ncclGetErrorString(rc), (text),             \
                    ncclGetErrorString(got_), ncclGetLastError(NULL));                             \
            g_failed++;                                                                            \
        }                                                                                          \
    } while (0)

// ---- device memory ------------------------------------------------------------------------

#ifdef EMU_NCCL_TEST_LOCAL_EMU
// A few live "device" allocations, enough for emu_is_device.
static struct {
    char *p;
    size_t bytes;
} g_dev[64];

bool emu_is_device(const void *p, size_t bytes)
{
    const char *c = p;
    for (size_t i = 0; i < sizeof g_dev / sizeof g_dev[0]; i++) {
        const char *b = g_dev[i].p;
        if (b && c >= b && c <= b + g_dev[i].bytes && bytes <= (size_t)(b + g_dev[i].bytes - c))
            return true;
    }
    return false;
}

bool emu_is_pinned(const void *p)
{
    (void)p;
    return false;
}

void emu_warn(const char *lib, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda-emu: %s: ", lib);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void emu_fault(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda-emu: FAULT: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static void *dev_alloc(size_t bytes)
{
    for (size_t i = 0; i < sizeof g_dev / sizeof g_dev[0]; i++)
        if (!g_dev[i].p) {
            g_dev[i].p = malloc(bytes ? bytes : 1);
            g_dev[i].bytes = bytes;
            if (!g_dev[i].p) abort();
            return g_dev[i].p;
        }
    abort();
}

static void dev_free(void *p)
{
    for (size_t i = 0; i < sizeof g_dev / sizeof g_dev[0]; i++)
        if (p && g_dev[i].p == p) {
            free(p);
            g_dev[i].p = NULL;
        }
}
#else
#include <cuda_runtime.h>

static void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) abort();
    return p;
}

static void dev_free(void *p)
{
    (void)cudaFree(p);
}
#endif

// ---- cases --------------------------------------------------------------------------------

static ncclComm_t make_comm(void)
{
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (g_rank == 0) CHECK(ncclGetUniqueId(&id) == ncclSuccess);
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclComm_t comm = NULL;
    CHECK(ncclCommInitRank(&comm, g_world, id, g_rank) == ncclSuccess);
    return comm;
}

static void test_version(void)
{
    int v = 0;
    CHECK(ncclGetVersion(&v) == ncclSuccess);
    CHECK(v == NCCL_VERSION_CODE);
    CHECK(v == NCCL_VERSION(NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH));
    // epserve's rule (cluster/gpu.h): same major as the headers, 2.13.0 or newer.
    CHECK(v / 10000 == NCCL_MAJOR && v >= 21300);
    CHECK_FAILS(ncclGetVersion(NULL), ncclInvalidArgument, "version is NULL");
    CHECK(strcmp(ncclGetErrorString(ncclSuccess), "no error") == 0);
    CHECK(strlen(ncclGetErrorString(ncclInvalidUsage)) > 0);
}

// Elements rank s sends rank d: odd sizes, some zero, self included.
static int pair_count(int s, int d)
{
    int c = (s * 7 + d * 3 + 1) % 6;
    return c == 0 ? 0 : c * 5 + 2;
}

// The all-to-all as comm/nccl/transport_nccl.c posts it: one group, per
// peer a send and a recv, zero parts skipped on both sides; here the self
// part goes through NCCL as well.
static void test_alltoallv(ncclComm_t comm, ncclDataType_t type)
{
    const int W = g_world, me = g_rank;
    int *scount = calloc((size_t)W, sizeof(int)), *rcount = calloc((size_t)W, sizeof(int));
    int *soff = calloc((size_t)W, sizeof(int)), *roff = calloc((size_t)W, sizeof(int));
    int stot = 0, rtot = 0;
    for (int d = 0; d < W; d++) {
        scount[d] = pair_count(me, d);
        rcount[d] = pair_count(d, me);
        soff[d] = stot;
        roff[d] = rtot;
        stot += scount[d];
        rtot += rcount[d];
    }
    int32_t *h_send = malloc((size_t)stot * sizeof(int32_t) + 1);
    int32_t *h_ref = malloc((size_t)rtot * sizeof(int32_t) + 1);
    int32_t *h_got = malloc((size_t)rtot * sizeof(int32_t) + 1);
    for (int d = 0; d < W; d++)
        for (int i = 0; i < scount[d]; i++)
            h_send[soff[d] + i] = me * 1000000 + d * 1000 + i;
    MPI_Alltoallv(h_send, scount, soff, MPI_INT32_T, h_ref, rcount, roff, MPI_INT32_T,
                  MPI_COMM_WORLD);

    int32_t *d_send = dev_alloc((size_t)stot * sizeof(int32_t));
    int32_t *d_recv = dev_alloc((size_t)rtot * sizeof(int32_t));
    memcpy(d_send, h_send, (size_t)stot * sizeof(int32_t));
    memset(d_recv, 0xff, (size_t)rtot * sizeof(int32_t));
    // As bytes (the payloads) or as int32 elements.
    const size_t k = type == ncclUint8 ? sizeof(int32_t) : 1;
    CHECK(ncclGroupStart() == ncclSuccess);
    for (int d = 0; d < W; d++) {
        if (scount[d] > 0)
            CHECK(ncclSend(d_send + soff[d], (size_t)scount[d] * k, type, d, comm, NULL) ==
                  ncclSuccess);
        if (rcount[d] > 0)
            CHECK(ncclRecv(d_recv + roff[d], (size_t)rcount[d] * k, type, d, comm, NULL) ==
                  ncclSuccess);
    }
    CHECK(ncclGroupEnd() == ncclSuccess);
    memcpy(h_got, d_recv, (size_t)rtot * sizeof(int32_t));
    int wrong = 0;
    for (int i = 0; i < rtot; i++)
        wrong += h_got[i] != h_ref[i];
    CHECK(wrong == 0);
    ncclResult_t async = ncclInternalError;
    CHECK(ncclCommGetAsyncError(comm, &async) == ncclSuccess && async == ncclSuccess);
    dev_free(d_send);
    dev_free(d_recv);
    free(h_send);
    free(h_ref);
    free(h_got);
    free(scount);
    free(rcount);
    free(soff);
    free(roff);
}

// Zero-count calls still pair up (NULL buffers allowed), and a nested group
// runs at the outermost end.
static void test_zero_counts(ncclComm_t comm)
{
    const int next = (g_rank + 1) % g_world, prev = (g_rank + g_world - 1) % g_world;
    CHECK(ncclGroupStart() == ncclSuccess);
    CHECK(ncclGroupStart() == ncclSuccess);
    CHECK(ncclSend(NULL, 0, ncclFloat32, next, comm, NULL) == ncclSuccess);
    CHECK(ncclRecv(NULL, 0, ncclFloat32, prev, comm, NULL) == ncclSuccess);
    CHECK(ncclGroupEnd() == ncclSuccess);
    CHECK(ncclGroupEnd() == ncclSuccess);
}

static void test_self(ncclComm_t comm)
{
    double *a = dev_alloc(9 * sizeof(double)), *b = dev_alloc(9 * sizeof(double));
    for (int i = 0; i < 9; i++) {
        a[i] = g_rank + 0.25 * i;
        b[i] = -1.0;
    }
    CHECK(ncclGroupStart() == ncclSuccess);
    CHECK(ncclRecv(b, 9, ncclFloat64, g_rank, comm, NULL) == ncclSuccess);
    CHECK(ncclSend(a, 9, ncclFloat64, g_rank, comm, NULL) == ncclSuccess);
    CHECK(ncclGroupEnd() == ncclSuccess);
    CHECK(memcmp(a, b, 9 * sizeof(double)) == 0);
    // Alone, a send to oneself could never be matched.
    CHECK_FAILS(ncclSend(a, 9, ncclFloat64, g_rank, comm, NULL), ncclInvalidUsage,
                "to itself outside ncclGroupStart");
    dev_free(a);
    dev_free(b);
}

// A ring in one group where rank 1 expects one element too few from rank 0:
// ranks 0 and 1 fail with the same message, the others succeed, nobody hangs.
// Then a datatype mismatch outside a group, then the communicator still works.
static void test_mismatch(ncclComm_t comm)
{
    const int next = (g_rank + 1) % g_world, prev = (g_rank + g_world - 1) % g_world;
    int32_t *s = dev_alloc(5 * sizeof(int32_t)), *r = dev_alloc(5 * sizeof(int32_t));
    CHECK(ncclGroupStart() == ncclSuccess);
    CHECK(ncclSend(s, 5, ncclInt32, next, comm, NULL) == ncclSuccess);
    CHECK(ncclRecv(r, g_rank == 1 ? 4 : 5, ncclInt32, prev, comm, NULL) == ncclSuccess);
    if (g_rank <= 1)
        CHECK_FAILS(ncclGroupEnd(), ncclInvalidUsage,
                    "rank 0 sent 5 elements of ncclInt32 to rank 1, which posted a recv of 4 "
                    "elements of ncclInt32");
    else
        CHECK(ncclGroupEnd() == ncclSuccess);

    if (g_rank == 0)
        CHECK_FAILS(ncclSend(s, 4, ncclFloat32, 1, comm, NULL), ncclInvalidUsage,
                    "rank 0 sent 4 elements of ncclFloat32 to rank 1, which posted a recv of 4 "
                    "elements of ncclInt32");
    if (g_rank == 1)
        CHECK_FAILS(ncclRecv(r, 4, ncclInt32, 0, comm, NULL), ncclInvalidUsage,
                    "rank 0 sent 4 elements of ncclFloat32 to rank 1, which posted a recv of 4 "
                    "elements of ncclInt32");

    ncclResult_t async = ncclInternalError;
    CHECK(ncclCommGetAsyncError(comm, &async) == ncclSuccess && async == ncclSuccess);
    for (int i = 0; i < 5; i++)
        s[i] = 100 * g_rank + i;
    CHECK(ncclGroupStart() == ncclSuccess);
    CHECK(ncclSend(s, 5, ncclInt32, next, comm, NULL) == ncclSuccess);
    CHECK(ncclRecv(r, 5, ncclInt32, prev, comm, NULL) == ncclSuccess);
    CHECK(ncclGroupEnd() == ncclSuccess);
    for (int i = 0; i < 5; i++)
        CHECK(r[i] == 100 * prev + i);
    dev_free(s);
    dev_free(r);
}

static void test_bad_args(ncclComm_t comm)
{
    int32_t *d = dev_alloc(8 * sizeof(int32_t));
    int32_t host[8] = {0};
    const int next = (g_rank + 1) % g_world, prev = (g_rank + g_world - 1) % g_world;
    CHECK_FAILS(ncclSend(d, 8, ncclInt32, next, NULL, NULL), ncclInvalidArgument, "comm is NULL");
    CHECK_FAILS(ncclRecv(d, 8, ncclInt32, -1, comm, NULL), ncclInvalidArgument,
                "expected peer in [0,");
    CHECK_FAILS(ncclSend(d, 8, ncclInt32, g_world, comm, NULL), ncclInvalidArgument,
                "expected peer in [0,");
    CHECK_FAILS(ncclSend(host, 8, ncclInt32, next, comm, NULL), ncclInvalidArgument, "host memory");
    CHECK_FAILS(ncclRecv(NULL, 8, ncclInt32, next, comm, NULL), ncclInvalidArgument, "NULL");
    CHECK_FAILS(ncclSend(d, 9, ncclInt32, next, comm, NULL), ncclInvalidArgument,
                "past the allocation's end");
    CHECK_FAILS(ncclSend(d, (size_t)-1, ncclInt32, next, comm, NULL), ncclInvalidArgument,
                "overflows");
    CHECK_FAILS(ncclSend(d, (size_t)-8, ncclUint8, next, comm, NULL), ncclInvalidArgument,
                "overflows");
    CHECK_FAILS(ncclSend(d, 8, (ncclDataType_t)ncclNumTypes, next, comm, NULL), ncclInvalidArgument,
                "expected a datatype");
    CHECK_FAILS(ncclGroupEnd(), ncclInvalidUsage, "expected a matching ncclGroupStart");
    ncclResult_t async;
    CHECK_FAILS(ncclCommGetAsyncError(NULL, &async), ncclInvalidArgument, "comm is NULL");
    CHECK_FAILS(ncclCommGetAsyncError(comm, NULL), ncclInvalidArgument, "asyncError is NULL");
    CHECK_FAILS(ncclGetUniqueId(NULL), ncclInvalidArgument, "uniqueId is NULL");
    CHECK(ncclCommDestroy(NULL) == ncclSuccess);

    // Rejected inside a group: the call and the group fail on rank 0, and
    // rank 1, whose recv it would have matched, learns it instead of waiting.
    CHECK(ncclGroupStart() == ncclSuccess);
    if (g_rank == 0)
        CHECK_FAILS(ncclSend(host, 8, ncclInt32, 1, comm, NULL), ncclInvalidArgument,
                    "host memory");
    if (g_rank == 1) CHECK(ncclRecv(d, 8, ncclInt32, 0, comm, NULL) == ncclSuccess);
    if (g_rank == 0) CHECK(ncclGroupEnd() == ncclInvalidArgument);
    if (g_rank == 1)
        CHECK_FAILS(ncclGroupEnd(), ncclRemoteError,
                    "rank 0's send matching rank 1's recv was rejected on rank 0");
    if (g_rank > 1) CHECK(ncclGroupEnd() == ncclSuccess);
    (void)prev;

    // Init: every rank passes nranks one too many; rank 0 also fine locally.
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (g_rank == 0) CHECK(ncclGetUniqueId(&id) == ncclSuccess);
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclComm_t c2 = (ncclComm_t)&id; // must come back NULL
    CHECK_FAILS(ncclCommInitRank(&c2, g_world + 1, id, g_rank), ncclInvalidArgument,
                "expected nranks == ");
    CHECK(c2 == NULL);
    // Only the last rank passes a wrong rank: every rank fails.
    const int bad_rank = g_rank == g_world - 1 ? g_world : g_rank;
    CHECK_FAILS(ncclCommInitRank(&c2, g_world, id, bad_rank), ncclInvalidArgument,
                g_rank == g_world - 1 ? "expected rank in [0," : "rejected its arguments");
    // Two ranks claim rank 0.
    if (g_world >= 2)
        CHECK_FAILS(ncclCommInitRank(&c2, g_world, id, g_rank == 1 ? 0 : g_rank),
                    ncclInvalidArgument, "found rank 0 on world ranks 0 and 1");
    ncclUniqueId junk;
    memset(&junk, 0x5a, sizeof junk);
    CHECK_FAILS(ncclCommInitRank(&c2, g_world, junk, g_rank), ncclInvalidArgument,
                "expected an id from ncclGetUniqueId");
    CHECK_FAILS(ncclCommInitRank(NULL, g_world, id, g_rank), ncclInvalidArgument, "comm is NULL");
    // The same id still makes a working communicator afterwards.
    CHECK(ncclCommInitRank(&c2, g_world, id, g_rank) == ncclSuccess);
    CHECK(ncclCommDestroy(c2) == ncclSuccess);
    dev_free(d);
}

// Rank 1 never posts the recv for rank 0's send: rank 0 gives up after
// EMU_NCCL_TIMEOUT_S instead of hanging, and the communicator reports the
// failure as its async error from then on. Runs last, on a communicator of
// its own (the abandoned requests stay with it).
static void test_timeout(void)
{
    ncclComm_t comm = make_comm();
    if (!comm) return;
    int32_t *d = dev_alloc(4 * sizeof(int32_t));
    if (g_rank == 0) {
        setenv("EMU_NCCL_TIMEOUT_S", "1", 1);
        CHECK_FAILS(ncclSend(d, 4, ncclInt32, 1, comm, NULL), ncclRemoteError,
                    "rank 0 waited 1 s (EMU_NCCL_TIMEOUT_S) for rank 1 to post the recv matching "
                    "its send of 4 elements of ncclInt32");
        unsetenv("EMU_NCCL_TIMEOUT_S");
        ncclResult_t async = ncclSuccess;
        CHECK(ncclCommGetAsyncError(comm, &async) == ncclSuccess && async == ncclRemoteError);
        CHECK_FAILS(ncclSend(d, 4, ncclInt32, 1, comm, NULL), ncclRemoteError,
                    "the communicator failed earlier");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    CHECK(ncclCommDestroy(comm) == ncclSuccess);
    dev_free(d);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_world);
    if (g_world < 2) {
        if (g_rank == 0) fprintf(stderr, "test_emu_nccl: expected 2 or more ranks, found 1\n");
        MPI_Finalize();
        return 77; // skipped
    }
    test_version();
    ncclComm_t comm = make_comm();
    if (comm) {
        test_alltoallv(comm, ncclInt32);
        test_alltoallv(comm, ncclUint8);
        test_zero_counts(comm);
        test_self(comm);
        test_mismatch(comm);
        test_bad_args(comm);
        test_alltoallv(comm, ncclInt32); // still usable after all the failures
        CHECK(ncclCommDestroy(comm) == ncclSuccess);
        test_timeout();
    }
    int ok = g_failed == 0, all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (g_rank == 0)
        printf("test_emu_nccl: %d ranks: %s\n", g_world, all_ok ? "all passed" : "FAILED");
    MPI_Finalize();
    return all_ok ? 0 : 1;
}
