// The expert backend: where one rank's routed and shared experts live and
// run, as a table of functions over a context, one static const table per
// backend: cpu over ep_experts (experts/cpu/backend_cpu.c), cuda over
// ep_experts_cuda (experts/cuda/backend_cuda.c, EP_CUDA=ON builds only).
// Callers (model/) go through the wrappers below and never ask which table
// they hold. Loading is each backend's own (its constructor takes a loaded
// shard); the reference path is not here (it is the CPU ep_experts always).
#ifndef EP_EXPERT_BACKEND_H
#define EP_EXPERT_BACKEND_H

#include "experts/experts.h"

// Every array is a host array, whatever the backend: x [n_rec, H] in and
// y [n_rec, H] out (written whole), pairs as ep_experts_forward takes them.
typedef struct {
    const char *name; // "cpu", "cuda": what error messages call the backend
    // ep_experts_forward's contract.
    ep_status (*forward)(void *ctx, int layer, int n_rec, const int *pair_off,
                         const int *pair_expert, const float *pair_weight, const float *x,
                         float *y);
    // y[T, H] += shared experts(x[T, H]) (ep_experts_shared_forward).
    ep_status (*shared)(void *ctx, int layer, const float *x, int T, float *y);
    size_t (*bytes)(const void *ctx); // routed + shared weight bytes held
    // Moving experts between ranks (re-placement), ep_experts.h's reshard /
    // export / import contract: a new context for placement p with the
    // experts it newly needs pending, the bytes of one exported expert, one
    // expert out of or into a buffer of those bytes, and whether one is still
    // pending. NULL, all five, in a backend that cannot move its experts yet:
    // the wrappers then refuse with EP_ERR_UNSUPPORTED naming it.
    ep_status (*reshard)(const void *ctx, const ep_placement *p, int rank, void **out);
    size_t (*expert_bytes)(const void *ctx);
    ep_status (*export_expert)(const void *ctx, int layer, int expert, void *buf);
    ep_status (*import_expert)(void *ctx, int layer, int expert, const void *buf);
    bool (*pending)(const void *ctx, int layer, int expert);
    void (*free)(void *ctx);
} ep_expert_backend_i;

typedef struct ep_expert_backend {
    const ep_expert_backend_i *iface;
    void *ctx; // owned: freed by iface->free in ep_expert_backend_free
} ep_expert_backend;

// A backend over ctx (taken over: ep_expert_backend_free frees it).
ep_expert_backend *ep_expert_backend_new(const ep_expert_backend_i *iface, void *ctx);
void ep_expert_backend_free(ep_expert_backend *b); // NULL ok
// The cpu table over a loaded CPU shard (taken over).
ep_expert_backend *ep_expert_backend_cpu(ep_experts *e);

const char *ep_expert_backend_name(const ep_expert_backend *b);
ep_status ep_expert_backend_forward(ep_expert_backend *b, int layer, int n_rec, const int *pair_off,
                                    const int *pair_expert, const float *pair_weight,
                                    const float *x, float *y);
ep_status ep_expert_backend_shared(ep_expert_backend *b, int layer, const float *x, int T,
                                   float *y);
size_t ep_expert_backend_bytes(const ep_expert_backend *b);

// ---- moving experts between ranks -------------------------------------------
// EP_OK when b can move its experts (reshard, export, import); otherwise
// EP_ERR_UNSUPPORTED naming b. The calls below refuse alike.
ep_status ep_expert_backend_can_move(const ep_expert_backend *b);
// A new backend of b's kind holding what placement p gives `rank`: experts b
// holds are copied, the others pending until imported. b is unchanged.
ep_status ep_expert_backend_reshard(const ep_expert_backend *b, const ep_placement *p, int rank,
                                    ep_expert_backend **out);
size_t ep_expert_backend_expert_bytes(const ep_expert_backend *b); // 0 when it cannot move
ep_status ep_expert_backend_export(const ep_expert_backend *b, int layer, int expert, void *buf);
ep_status ep_expert_backend_import(ep_expert_backend *b, int layer, int expert, const void *buf);
bool ep_expert_backend_pending(const ep_expert_backend *b, int layer, int expert);

#endif
