// Emulated CUDA device (EP_CUDA_EMU=ON, tests only): the NCCL subset epserve
// calls, with NCCL's names, signatures and numeric values, implemented over
// MPI in tests/emu/nccl.c. Streams are synchronous in the emulation, so
// ncclGroupEnd returns with the transfers done. Not a general NCCL: no
// collectives (the project uses none), no config or split API.
#ifndef NCCL_H_
#define NCCL_H_

#include <stddef.h>

#include "driver_types.h"

// The emulation reports itself as NCCL 2.21.5: epserve needs 2.13 or newer
// (ncclGetLastError) and the same major as its headers.
#define NCCL_MAJOR  2
#define NCCL_MINOR  21
#define NCCL_PATCH  5
#define NCCL_SUFFIX "-emu"

#define NCCL_VERSION_CODE 22105
#define NCCL_VERSION(X, Y, Z)                                                                      \
    (((X) <= 2 && (Y) <= 8) ? (X)*1000 + (Y)*100 + (Z) : (X)*10000 + (Y)*100 + (Z))

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ncclComm *ncclComm_t;
#define NCCL_COMM_NULL NULL

#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
    ncclNumResults = 8
} ncclResult_t;

typedef enum {
    ncclInt8 = 0,
    ncclChar = 0,
    ncclUint8 = 1,
    ncclInt32 = 2,
    ncclInt = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6,
    ncclHalf = 6,
    ncclFloat32 = 7,
    ncclFloat = 7,
    ncclFloat64 = 8,
    ncclDouble = 8,
    ncclBfloat16 = 9,
    ncclFloat8e4m3 = 10,
    ncclFloat8e5m2 = 11,
    ncclNumTypes = 12
} ncclDataType_t;

// NCCL_VERSION_CODE of the library.
ncclResult_t ncclGetVersion(int *version);
// A fresh id; any rank makes it, every rank of the communicator passes it on.
ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId);
// Collective: in the emulation every rank of MPI_COMM_WORLD must call it at
// the same time (ranks are grouped by id). MPI must be initialised.
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm); // NULL ok

const char *ncclGetErrorString(ncclResult_t result);
// The message of the last error on this process (comm is not used, as in NCCL).
const char *ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError);

// Peers must post matching calls (same count and datatype, in the same order
// per pair); the emulation checks it and fails both sides instead of hanging.
ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream);

ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);

#ifdef __cplusplus
}
#endif

#endif
