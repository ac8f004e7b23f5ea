// The MoE layer's backends by name: the table of each ep_moe_backend (cpu
// here; cuda in moe_cuda.c or moe_cuda_off.c), and the command-line options
// that choose one (--backend) and the CPU experts' storage (--expert-dtype).
#include "model/moe_backend.h"

#include <string.h>

// ---- cpu: ep_experts in host memory over the MPI transport -----------------

static void cpu_close(ep_moe_parts *parts)
{
    ep_expert_backend_free(parts->experts);
    ep_transport_free(parts->tp);
    memset(parts, 0, sizeof *parts);
}

static ep_status cpu_open(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w,
                          const ep_placement *p, const ep_moe_opts *o, int cap_tokens,
                          ep_moe_parts *out)
{
    memset(out, 0, sizeof *out);
    ep_status st = ep_transport_mpi_init(cl, &out->tp);
    if (st) return st;
    ep_experts_opts eo = {.weight_dtype = o->expert_dtype};
    ep_experts *e = NULL;
    if ((st = ep_experts_load_ex(cfg, w, p, cl->rank, &eo, &e))) {
        cpu_close(out);
        return st;
    }
    out->experts = ep_expert_backend_cpu(e);
    return EP_OK;
}

static const ep_moe_backend_i cpu_table = {
    .name = "cpu",
    .built = true,
    .open = cpu_open,
    .close = cpu_close,
};

// Indexed by ep_moe_backend.
static const ep_moe_backend_i *const tables[] = {
    [EP_MOE_BACKEND_CPU] = &cpu_table,
    [EP_MOE_BACKEND_CUDA] = &ep_moe_backend_cuda_table,
};

static const ep_moe_backend_i *lookup(ep_moe_backend b)
{
    return (int)b >= 0 && (size_t)b < EP_ARRAY_LEN(tables) ? tables[b] : NULL;
}

ep_status ep_moe_backend_table(ep_moe_backend b, const ep_moe_backend_i **out)
{
    if (!(*out = lookup(b)))
        return ep_errorf(EP_ERR_ARG,
                         "backend %d: expected EP_MOE_BACKEND_CPU or EP_MOE_BACKEND_CUDA", (int)b);
    return EP_OK;
}

// ---- options ---------------------------------------------------------------

const char *ep_moe_backend_name(ep_moe_backend b)
{
    const ep_moe_backend_i *t = lookup(b);
    return t ? t->name : "?";
}

ep_status ep_moe_backend_parse(const char *s, ep_moe_backend *out)
{
    for (size_t i = 0; i < EP_ARRAY_LEN(tables); i++)
        if (!strcmp(s, tables[i]->name)) {
            *out = (ep_moe_backend)i;
            return EP_OK;
        }
    return ep_errorf(EP_ERR_ARG, "backend: expected cpu or cuda, found '%s'", s);
}

bool ep_moe_backend_built(ep_moe_backend b)
{
    const ep_moe_backend_i *t = lookup(b);
    return t && t->built;
}
