// Emulated NCCL over MPI (tests only): the unique id, communicators, groups
// and point-to-point send/recv that epserve calls, on host memory that the
// emulated runtime calls device memory. Where the real NCCL would hang or
// corrupt memory (a peer posting a different count or datatype, a peer whose
// call was rejected), the emulation fails on every rank involved and says
// why. No collectives, no config or split API, no thread-safety beyond a
// per-thread group.
#define _POSIX_C_SOURCE 200809L

#include <mpi.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "emu.h"
#include "nccl.h"

struct ncclComm {
    MPI_Comm mpi; // split from MPI_COMM_WORLD by id; MPI rank == NCCL rank
    int rank, nranks;
    // Sticky: a group gave up waiting, so messages may be left unmatched and
    // the communicator cannot be trusted any more.
    ncclResult_t async;
};

// ---- errors -------------------------------------------------------------------------------

static char emu_nccl_last[1024];

static ncclResult_t emu_nccl_fail(ncclResult_t rc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static ncclResult_t emu_nccl_fail(ncclResult_t rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(emu_nccl_last, sizeof emu_nccl_last, fmt, ap);
    va_end(ap);
    emu_warn("nccl", "%s", emu_nccl_last);
    return rc;
}

static ncclResult_t emu_nccl_mpi(int rc, const char *call)
{
    if (rc == MPI_SUCCESS) return ncclSuccess;
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", rc);
    return emu_nccl_fail(ncclSystemError, "%s failed: %s", call, s);
}
#define EMU_MPI(call) emu_nccl_mpi((call), #call)

const char *ncclGetErrorString(ncclResult_t result)
{
    switch (result) {
    case ncclSuccess:
        return "no error";
    case ncclUnhandledCudaError:
        return "unhandled cuda error";
    case ncclSystemError:
        return "unhandled system error";
    case ncclInternalError:
        return "internal error";
    case ncclInvalidArgument:
        return "invalid argument";
    case ncclInvalidUsage:
        return "invalid usage";
    case ncclRemoteError:
        return "remote process exited or there was a network error";
    case ncclInProgress:
        return "NCCL operation in progress";
    default:
        return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t comm)
{
    (void)comm;
    return emu_nccl_last;
}

ncclResult_t ncclGetVersion(int *version)
{
    if (!version) return emu_nccl_fail(ncclInvalidArgument, "ncclGetVersion: version is NULL");
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

// ---- datatypes ----------------------------------------------------------------------------

static size_t emu_nccl_type_size(ncclDataType_t t)
{
    switch (t) {
    case ncclInt8:
    case ncclUint8:
    case ncclFloat8e4m3:
    case ncclFloat8e5m2:
        return 1;
    case ncclFloat16:
    case ncclBfloat16:
        return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
        return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
        return 8;
    default:
        return 0;
    }
}

static const char *emu_nccl_type_name(int t)
{
    static const char *const names[ncclNumTypes] = {
        "ncclInt8",    "ncclUint8",    "ncclInt32",      "ncclUint32",
        "ncclInt64",   "ncclUint64",   "ncclFloat16",    "ncclFloat32",
        "ncclFloat64", "ncclBfloat16", "ncclFloat8e4m3", "ncclFloat8e5m2"};
    return t >= 0 && t < ncclNumTypes ? names[t] : "an invalid datatype";
}

// ---- unique id and communicators ------------------------------------------------------------

static const char emu_nccl_magic[16] = "epserve-emu-nccl";

ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId)
{
    if (!uniqueId) return emu_nccl_fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
    // Unique within one MPI job is enough: the id only groups ranks there.
    static uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t words[4] = {(uint64_t)getpid(), ++counter, (uint64_t)ts.tv_sec, (uint64_t)ts.tv_nsec};
    memset(uniqueId, 0, sizeof *uniqueId);
    memcpy(uniqueId->internal, emu_nccl_magic, sizeof emu_nccl_magic);
    memcpy(uniqueId->internal + sizeof emu_nccl_magic, words, sizeof words);
    return ncclSuccess;
}

// What each rank brings to ncclCommInitRank, gathered so that every rank
// checks everyone's arguments and all fail together instead of waiting.
typedef struct {
    int32_t nranks, rank, ok, world_rank;
    ncclUniqueId id;
} emu_nccl_join;

static int emu_nccl_color(const ncclUniqueId *id)
{
    uint32_t h = 2166136261u; // FNV-1a
    for (size_t i = 0; i < sizeof id->internal; i++)
        h = (h ^ (uint8_t)id->internal[i]) * 16777619u;
    return (int)(h & 0x7fffffff);
}

// The first problem with the gathered arguments, or ncclSuccess; msg gets it in words.
static ncclResult_t emu_nccl_check_join(const emu_nccl_join *all, int size, char *msg, size_t n)
{
    for (int i = 0; i < size; i++) {
        const emu_nccl_join *j = &all[i];
        if (!j->ok) {
            snprintf(msg, n, "the process of world rank %d rejected its arguments (see its error)",
                     j->world_rank);
            return ncclInvalidArgument;
        }
        if (memcmp(&j->id, &all[0].id, sizeof j->id) != 0) {
            snprintf(msg, n, "world ranks %d and %d passed different ids that hash alike",
                     all[0].world_rank, j->world_rank);
            return ncclInternalError;
        }
        if (j->nranks != size) {
            snprintf(msg, n,
                     "expected nranks == %d (the processes calling with this id), found %d on "
                     "world rank %d",
                     size, j->nranks, j->world_rank);
            return ncclInvalidArgument;
        }
        // Split orders by rank, so a clean set of ranks is 0..size-1 in
        // place; the first one out of place is a duplicate or follows a gap.
        if (j->rank != i) {
            if (i > 0 && j->rank == all[i - 1].rank)
                snprintf(msg, n,
                         "expected each rank in [0, %d) once, found rank %d on world ranks %d "
                         "and %d",
                         size, j->rank, all[i - 1].world_rank, j->world_rank);
            else
                snprintf(msg, n,
                         "expected each rank in [0, %d) once, found no process with rank %d", size,
                         i);
            return ncclInvalidArgument;
        }
    }
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)
{
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    if (inited) MPI_Finalized(&finalized);
    if (!inited || finalized)
        return emu_nccl_fail(
            ncclSystemError,
            "ncclCommInitRank: the emulated NCCL runs over MPI, expected MPI to be "
            "initialised, found it %s",
            inited ? "finalized" : "not initialised");
    if (comm) *comm = NULL;

    // Local checks first, but this rank still takes part in the split and
    // the gather: the others must learn it failed rather than wait for it.
    emu_nccl_join me = {.nranks = nranks, .rank = rank, .ok = 1, .id = commId};
    MPI_Comm_rank(MPI_COMM_WORLD, &me.world_rank);
    ncclResult_t local = ncclSuccess;
    if (!comm)
        local = emu_nccl_fail(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
    else if (nranks < 1)
        local = emu_nccl_fail(ncclInvalidArgument,
                              "ncclCommInitRank: expected nranks >= 1, found %d", nranks);
    else if (rank < 0 || rank >= nranks)
        local = emu_nccl_fail(ncclInvalidArgument,
                              "ncclCommInitRank: expected rank in [0, %d), found %d", nranks, rank);
    else if (memcmp(commId.internal, emu_nccl_magic, sizeof emu_nccl_magic) != 0)
        local = emu_nccl_fail(ncclInvalidArgument,
                              "ncclCommInitRank: expected an id from ncclGetUniqueId, found bytes "
                              "it never makes");
    me.ok = local == ncclSuccess;

    MPI_Comm mpi;
    ncclResult_t rc =
        EMU_MPI(MPI_Comm_split(MPI_COMM_WORLD, emu_nccl_color(&commId), me.ok ? rank : 0, &mpi));
    if (rc != ncclSuccess) return rc;
    // MPI failures come back as ncclSystemError with MPI's words, as the
    // project's own communicator does, instead of aborting the job.
    MPI_Comm_set_errhandler(mpi, MPI_ERRORS_RETURN);
    int size = 0;
    MPI_Comm_size(mpi, &size);
    emu_nccl_join *all = malloc((size_t)size * sizeof *all);
    if (!all) {
        MPI_Comm_free(&mpi);
        return emu_nccl_fail(ncclSystemError, "ncclCommInitRank: out of host memory");
    }
    rc = EMU_MPI(MPI_Allgather(&me, (int)sizeof me, MPI_BYTE, all, (int)sizeof me, MPI_BYTE, mpi));
    if (rc != ncclSuccess) {
        free(all);
        MPI_Comm_free(&mpi);
        return rc;
    }
    char msg[512];
    ncclResult_t grc = emu_nccl_check_join(all, size, msg, sizeof msg);
    free(all);
    if (local != ncclSuccess || grc != ncclSuccess) {
        MPI_Comm_free(&mpi);
        if (local != ncclSuccess) return local; // its own message says more
        return emu_nccl_fail(grc, "ncclCommInitRank (rank %d of %d): %s", rank, nranks, msg);
    }

    struct ncclComm *c = calloc(1, sizeof *c);
    if (!c) {
        MPI_Comm_free(&mpi);
        return emu_nccl_fail(ncclSystemError, "ncclCommInitRank: out of host memory");
    }
    c->mpi = mpi;
    c->rank = rank;
    c->nranks = nranks;
    c->async = ncclSuccess;
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError)
{
    if (!comm) return emu_nccl_fail(ncclInvalidArgument, "ncclCommGetAsyncError: comm is NULL");
    if (!asyncError)
        return emu_nccl_fail(ncclInvalidArgument, "ncclCommGetAsyncError: asyncError is NULL");
    *asyncError = comm->async;
    return ncclSuccess;
}

// ---- groups and point-to-point --------------------------------------------------------------

// One side of a transfer as the two peers tell each other before any
// payload moves: both decide from the same pair whether it goes ahead.
typedef struct {
    uint64_t count;
    int32_t datatype;
    int32_t ok; // 0: the call was rejected on its rank
} emu_nccl_hdr;

typedef struct {
    bool send;
    void *buf;
    size_t count;
    ncclDataType_t type;
    int peer;
    ncclComm_t comm;
    emu_nccl_hdr mine, theirs;
} emu_nccl_op;

// Per thread, as NCCL's group state. The queue keeps its capacity.
static _Thread_local struct {
    int depth;
    emu_nccl_op *ops;
    size_t n, cap;
    ncclResult_t err; // the first call rejected inside the group
} emu_nccl_group;

enum { EMU_TAG_SEND_HDR = 7301, EMU_TAG_RECV_HDR = 7302, EMU_TAG_DATA = 7303 };
#define EMU_NCCL_CHUNK ((size_t)1 << 30) // bytes per MPI message (MPI counts are int)

static double emu_nccl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double emu_nccl_timeout_s(void)
{
    const char *s = getenv("EMU_NCCL_TIMEOUT_S");
    double t = s ? atof(s) : 0.0;
    return t > 0.0 ? t : 60.0;
}

// Waits for all n requests, or gives up after EMU_NCCL_TIMEOUT_S (a peer
// that never posts the matching call would otherwise hang the test run).
// Returns the index of a request still pending on timeout, -1 when done.
static long emu_nccl_wait(MPI_Request *req, size_t n, ncclResult_t *rc)
{
    const double deadline = emu_nccl_now() + emu_nccl_timeout_s();
    *rc = ncclSuccess;
    for (;;) {
        int done = 0;
        *rc = EMU_MPI(MPI_Testall((int)n, req, &done, MPI_STATUSES_IGNORE));
        if (*rc != ncclSuccess || done) return -1;
        if (emu_nccl_now() > deadline) {
            for (size_t i = 0; i < n; i++)
                if (req[i] != MPI_REQUEST_NULL) {
                    int flag = 0;
                    MPI_Test(&req[i], &flag, MPI_STATUS_IGNORE);
                    if (!flag) return (long)i;
                }
            return -1;
        }
        struct timespec nap = {0, 20000};
        nanosleep(&nap, NULL);
    }
}

// Queues given up on (below), kept reachable so that LeakSanitizer does not
// report them; a process gives up a few times at most.
static emu_nccl_op *emu_nccl_abandoned[64];
static int emu_nccl_n_abandoned;

// A wait gave up: the requests stay posted (MPI may still write into the
// headers), so the queue is never freed or reused, and the communicators
// are marked failed.
static ncclResult_t emu_nccl_timed_out(emu_nccl_op *ops, size_t n, const emu_nccl_op *stuck,
                                       const char *phase)
{
    for (size_t i = 0; i < n; i++)
        ops[i].comm->async = ncclRemoteError;
    if (emu_nccl_n_abandoned < (int)(sizeof emu_nccl_abandoned / sizeof *emu_nccl_abandoned))
        emu_nccl_abandoned[emu_nccl_n_abandoned++] = emu_nccl_group.ops;
    emu_nccl_group.ops = NULL;
    emu_nccl_group.cap = 0;
    return emu_nccl_fail(ncclRemoteError,
                         "ncclGroupEnd: rank %d waited %.0f s (EMU_NCCL_TIMEOUT_S) for rank %d to "
                         "%s the %s matching its %s of %zu elements of %s; the communicator is "
                         "unusable now",
                         stuck->comm->rank, emu_nccl_timeout_s(), stuck->peer, phase,
                         stuck->send ? "recv" : "send", stuck->send ? "send" : "recv", stuck->count,
                         emu_nccl_type_name(stuck->type));
}

// Runs a queue of sends and recvs: the headers of all of them, then the
// payloads both peers agreed on, in queue order (per pair of ranks that is
// the order NCCL matches them in, and MPI does not overtake).
static ncclResult_t emu_nccl_run(emu_nccl_op *ops, size_t n)
{
    if (n == 0) return ncclSuccess;
    ncclResult_t rc = ncclSuccess, wrc;
    MPI_Request *req = malloc(2 * n * sizeof *req);
    if (!req) return emu_nccl_fail(ncclSystemError, "ncclGroupEnd: out of host memory");
    for (size_t i = 0; i < n && rc == ncclSuccess; i++) {
        emu_nccl_op *o = &ops[i];
        int tx = o->send ? EMU_TAG_SEND_HDR : EMU_TAG_RECV_HDR;
        int rx = o->send ? EMU_TAG_RECV_HDR : EMU_TAG_SEND_HDR;
        rc = EMU_MPI(MPI_Isend(&o->mine, (int)sizeof o->mine, MPI_BYTE, o->peer, tx, o->comm->mpi,
                               &req[2 * i]));
        if (rc == ncclSuccess)
            rc = EMU_MPI(MPI_Irecv(&o->theirs, (int)sizeof o->theirs, MPI_BYTE, o->peer, rx,
                                   o->comm->mpi, &req[2 * i + 1]));
    }
    if (rc != ncclSuccess) return rc; // MPI itself failed: nothing sane is left to do
    long stuck = emu_nccl_wait(req, 2 * n, &wrc);
    if (wrc != ncclSuccess) return wrc;
    if (stuck >= 0) {
        free(req);
        return emu_nccl_timed_out(ops, n, &ops[stuck / 2], "post");
    }

    // Decide, and count the payload messages.
    size_t nmsg = 0;
    for (size_t i = 0; i < n; i++) {
        emu_nccl_op *o = &ops[i];
        const emu_nccl_hdr *s = o->send ? &o->mine : &o->theirs;
        const emu_nccl_hdr *r = o->send ? &o->theirs : &o->mine;
        const int src = o->send ? o->comm->rank : o->peer;
        const int dst = o->send ? o->peer : o->comm->rank;
        ncclResult_t orc = ncclSuccess;
        if (!o->mine.ok) {
            orc = ncclInvalidArgument; // reported by the call itself
        } else if (!o->theirs.ok) {
            orc = emu_nccl_fail(ncclRemoteError,
                                "ncclGroupEnd: rank %d's %s matching rank %d's %s was rejected on "
                                "rank %d (see its error); nothing moved",
                                o->peer, o->send ? "recv" : "send", o->comm->rank,
                                o->send ? "send" : "recv", o->peer);
        } else if (s->count != r->count || s->datatype != r->datatype) {
            orc = emu_nccl_fail(ncclInvalidUsage,
                                "ncclGroupEnd: rank %d sent %llu elements of %s to rank %d, which "
                                "posted a recv of %llu elements of %s (the real NCCL would hang "
                                "or corrupt memory); nothing moved",
                                src, (unsigned long long)s->count, emu_nccl_type_name(s->datatype),
                                dst, (unsigned long long)r->count, emu_nccl_type_name(r->datatype));
        }
        if (orc != ncclSuccess) {
            o->count = 0; // moves nothing
            if (rc == ncclSuccess) rc = orc;
        }
        const size_t bytes = o->count * emu_nccl_type_size(o->type);
        nmsg += (bytes + EMU_NCCL_CHUNK - 1) / EMU_NCCL_CHUNK;
    }

    if (nmsg > 2 * n) {
        MPI_Request *more = realloc(req, nmsg * sizeof *req);
        if (!more) {
            free(req);
            return emu_nccl_fail(ncclSystemError, "ncclGroupEnd: out of host memory");
        }
        req = more;
    }
    size_t m = 0;
    ncclResult_t prc = ncclSuccess;
    for (size_t i = 0; i < n && prc == ncclSuccess; i++) {
        emu_nccl_op *o = &ops[i];
        const size_t bytes = o->count * emu_nccl_type_size(o->type);
        for (size_t off = 0; off < bytes && prc == ncclSuccess; off += EMU_NCCL_CHUNK) {
            const int len = (int)(bytes - off < EMU_NCCL_CHUNK ? bytes - off : EMU_NCCL_CHUNK);
            char *p = (char *)o->buf + off;
            prc = o->send ? EMU_MPI(MPI_Isend(p, len, MPI_BYTE, o->peer, EMU_TAG_DATA, o->comm->mpi,
                                              &req[m]))
                          : EMU_MPI(MPI_Irecv(p, len, MPI_BYTE, o->peer, EMU_TAG_DATA, o->comm->mpi,
                                              &req[m]));
            m++;
        }
    }
    if (prc != ncclSuccess) return prc;
    stuck = emu_nccl_wait(req, m, &wrc);
    free(req);
    if (wrc != ncclSuccess) return wrc;
    if (stuck >= 0) {
        // Map the message back to its op for the message.
        size_t k = 0;
        const emu_nccl_op *o = &ops[0];
        for (size_t i = 0; i < n; i++) {
            size_t bytes = ops[i].count * emu_nccl_type_size(ops[i].type);
            size_t c = (bytes + EMU_NCCL_CHUNK - 1) / EMU_NCCL_CHUNK;
            if ((size_t)stuck < k + c) {
                o = &ops[i];
                break;
            }
            k += c;
        }
        return emu_nccl_timed_out(ops, n, o, "complete");
    }
    return rc;
}

ncclResult_t ncclGroupStart(void)
{
    emu_nccl_group.depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
    if (emu_nccl_group.depth == 0)
        return emu_nccl_fail(ncclInvalidUsage,
                             "ncclGroupEnd: expected a matching ncclGroupStart, found none");
    if (--emu_nccl_group.depth > 0) return ncclSuccess;
    // Rejected calls are still in the queue, marked: their peers learn of
    // the rejection from the header instead of waiting for them.
    ncclResult_t rc = emu_nccl_run(emu_nccl_group.ops, emu_nccl_group.n);
    if (emu_nccl_group.err != ncclSuccess) rc = emu_nccl_group.err;
    emu_nccl_group.n = 0;
    emu_nccl_group.err = ncclSuccess;
    return rc;
}

// Checks one send or recv; inside a group queues it (a rejected one too, if
// its peer can be told), outside runs it alone.
static ncclResult_t emu_nccl_p2p(bool send, void *buf, size_t count, ncclDataType_t type, int peer,
                                 ncclComm_t comm)
{
    const char *fn = send ? "ncclSend" : "ncclRecv";
    const char *bufname = send ? "sendbuff" : "recvbuff";
    if (!comm) return emu_nccl_fail(ncclInvalidArgument, "%s: comm is NULL", fn);
    if (comm->async != ncclSuccess)
        return emu_nccl_fail(comm->async, "%s: the communicator failed earlier (%s)", fn,
                             ncclGetErrorString(comm->async));
    if (peer < 0 || peer >= comm->nranks)
        return emu_nccl_fail(ncclInvalidArgument, "%s: expected peer in [0, %d), found %d", fn,
                             comm->nranks, peer);

    ncclResult_t rc = ncclSuccess;
    const size_t esz = emu_nccl_type_size(type);
    if (esz == 0)
        rc = emu_nccl_fail(ncclInvalidArgument, "%s: expected a datatype in [0, %d), found %d", fn,
                           (int)ncclNumTypes, (int)type);
    else if (count > (size_t)PTRDIFF_MAX / esz)
        rc = emu_nccl_fail(ncclInvalidArgument,
                           "%s: count %zu of %s overflows (a negative count converted to "
                           "size_t?)",
                           fn, count, emu_nccl_type_name(type));
    else if (count > 0 && !emu_is_device(buf, count * esz))
        rc = emu_nccl_fail(ncclInvalidArgument,
                           "%s: expected %s %p to hold %zu bytes (%zu elements of %s) of one "
                           "device allocation, found %s",
                           fn, bufname, buf, count * esz, count, emu_nccl_type_name(type),
                           buf ? "host memory or a range past the allocation's end" : "NULL");

    if (emu_nccl_group.depth == 0) {
        if (rc != ncclSuccess) return rc; // nothing posted, as in NCCL
        if (peer == comm->rank)
            return emu_nccl_fail(ncclInvalidUsage,
                                 "%s: rank %d to itself outside ncclGroupStart/ncclGroupEnd (the "
                                 "real NCCL would wait forever for the matching call)",
                                 fn, peer);
    }
    if (emu_nccl_group.n == emu_nccl_group.cap) {
        size_t cap = emu_nccl_group.cap ? 2 * emu_nccl_group.cap : 16;
        emu_nccl_op *ops = realloc(emu_nccl_group.ops, cap * sizeof *ops);
        if (!ops) return emu_nccl_fail(ncclSystemError, "%s: out of host memory", fn);
        emu_nccl_group.ops = ops;
        emu_nccl_group.cap = cap;
    }
    emu_nccl_op *op = &emu_nccl_group.ops[emu_nccl_group.n++];
    *op = (emu_nccl_op){
        .send = send, .buf = buf, .count = count, .type = type, .peer = peer, .comm = comm};
    op->mine = (emu_nccl_hdr){.count = count, .datatype = (int32_t)type, .ok = rc == ncclSuccess};
    if (emu_nccl_group.depth > 0) {
        if (rc != ncclSuccess && emu_nccl_group.err == ncclSuccess) emu_nccl_group.err = rc;
        return rc;
    }
    // Outside a group a call runs alone, as a group of one (the queue
    // outlives a timed-out wait; a local would not).
    emu_nccl_group.depth = 1;
    return ncclGroupEnd();
}

ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream)
{
    (void)stream; // synchronous
    return emu_nccl_p2p(true, (void *)sendbuff, count, datatype, peer, comm);
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream)
{
    (void)stream;
    return emu_nccl_p2p(false, recvbuff, count, datatype, peer, comm);
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    if (!comm) return ncclSuccess;
    for (size_t i = 0; i < emu_nccl_group.n; i++)
        if (emu_nccl_group.ops[i].comm == comm)
            return emu_nccl_fail(ncclInvalidUsage,
                                 "ncclCommDestroy: expected no calls queued on the communicator, "
                                 "found some in an open group (ncclGroupEnd is missing)");
    int finalized = 0;
    MPI_Finalized(&finalized);
    // A communicator that timed out keeps requests posted: leave it to MPI.
    if (!finalized && comm->async == ncclSuccess) MPI_Comm_free(&comm->mpi);
    free(comm);
    return ncclSuccess;
}
