// The backend-neutral part of the ep_backend interface: releasing a backend
// through its own table. Constructors live with each backend (cpu/, cuda/);
// this file knows none of them.
#include "experts/backend.h"

void ep_backend_free(ep_backend *b)
{
    if (!b) return;
    EP_ASSERT(b->vt && b->vt->free);
    b->vt->free(b);
}
