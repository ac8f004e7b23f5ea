// The emulated CUDA device's internal interface, shared by its runtime
// (runtime.c), cuBLAS (cublas.c) and NCCL (nccl.c). Device memory is host
// memory that the runtime tracks: every live allocation is known with its
// size, so the libraries can check a pointer argument the way the device's
// MMU would fault on it.
#ifndef EP_EMU_H
#define EP_EMU_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// True when [p, p + bytes) lies inside one live device allocation (bytes 0:
// p is inside one or one past its end).
bool emu_is_device(const void *p, size_t bytes);
// True when p was returned by cudaMallocHost and not freed yet.
bool emu_is_pinned(const void *p);
// Reports a misuse that the real library would answer with an error code:
// prints "cuda-emu: <lib>: <message>" to stderr (the error paths of the
// project run too); the caller then returns the library's error code.
void emu_warn(const char *lib, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// A fault the real device would turn into a sticky error or a crash (an
// out-of-bounds access in a kernel, a guard zone overwritten): prints
// "cuda-emu: FAULT: <message>" and aborts, so the test fails at once.
void emu_fault(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#ifdef __cplusplus
}
#endif

#endif
