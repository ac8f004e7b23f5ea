// The expert backend's wrappers: each calls its table's function, and the
// optional ones (moving experts) refuse by the backend's name where the
// table has none. Nothing here knows a backend.
#include "experts/backend.h"

#include <stdlib.h>

ep_expert_backend *ep_expert_backend_new(const ep_expert_backend_i *iface, void *ctx)
{
    EP_ASSERT(iface && iface->name && iface->forward && iface->shared && iface->bytes &&
              iface->free);
    ep_expert_backend *b = ep_xmalloc(sizeof *b);
    b->iface = iface;
    b->ctx = ctx;
    return b;
}

void ep_expert_backend_free(ep_expert_backend *b)
{
    if (!b) return;
    b->iface->free(b->ctx);
    free(b);
}

const char *ep_expert_backend_name(const ep_expert_backend *b)
{
    return b->iface->name;
}

ep_status ep_expert_backend_forward(ep_expert_backend *b, int layer, int n_rec, const int *pair_off,
                                    const int *pair_expert, const float *pair_weight,
                                    const float *x, float *y)
{
    return b->iface->forward(b->ctx, layer, n_rec, pair_off, pair_expert, pair_weight, x, y);
}

ep_status ep_expert_backend_shared(ep_expert_backend *b, int layer, const float *x, int T, float *y)
{
    return b->iface->shared(b->ctx, layer, x, T, y);
}

size_t ep_expert_backend_bytes(const ep_expert_backend *b)
{
    return b->iface->bytes(b->ctx);
}

// ---- moving experts between ranks -------------------------------------------

ep_status ep_expert_backend_can_move(const ep_expert_backend *b)
{
    const ep_expert_backend_i *f = b->iface;
    if (f->reshard && f->expert_bytes && f->export_expert && f->import_expert && f->pending)
        return EP_OK;
    return ep_errorf(EP_ERR_UNSUPPORTED,
                     "experts: backend %s cannot move its experts between ranks (no reshard, "
                     "export or import: not built yet); expected a backend that can, such as cpu",
                     f->name);
}

ep_status ep_expert_backend_reshard(const ep_expert_backend *b, const ep_placement *p, int rank,
                                    ep_expert_backend **out)
{
    *out = NULL;
    ep_status st = ep_expert_backend_can_move(b);
    if (st) return st;
    void *ctx = NULL;
    if ((st = b->iface->reshard(b->ctx, p, rank, &ctx))) return st;
    *out = ep_expert_backend_new(b->iface, ctx);
    return EP_OK;
}

size_t ep_expert_backend_expert_bytes(const ep_expert_backend *b)
{
    return b->iface->expert_bytes ? b->iface->expert_bytes(b->ctx) : 0;
}

ep_status ep_expert_backend_export(const ep_expert_backend *b, int layer, int expert, void *buf)
{
    ep_status st = ep_expert_backend_can_move(b);
    return st ? st : b->iface->export_expert(b->ctx, layer, expert, buf);
}

ep_status ep_expert_backend_import(ep_expert_backend *b, int layer, int expert, const void *buf)
{
    ep_status st = ep_expert_backend_can_move(b);
    return st ? st : b->iface->import_expert(b->ctx, layer, expert, buf);
}

bool ep_expert_backend_pending(const ep_expert_backend *b, int layer, int expert)
{
    return b->iface->pending && b->iface->pending(b->ctx, layer, expert);
}
