// The wire format's record sizes and names, the stats' arithmetic, and
// ep_comm_count: the price of a layer's routes (and the fixed-k_base
// counterfactual) from a one-off ep_dispatch_plan. Moving bytes is comm.c's.
#include <string.h>

#include "comm/comm_impl.h"
#include "comm/dispatch_plan.h"

int64_t ep_comm_row_bytes(int hidden, ep_dtype wire)
{
    EP_ASSERT(hidden >= 0 && ep_dtype_is_float(wire));
    if (wire == EP_DTYPE_F8_E4M3) return ep_fp8_row_bytes(hidden); // scales + codes
    int64_t b = (int64_t)hidden * (int64_t)ep_dtype_size(wire);
    return (b + 3) & ~(int64_t)3;
}

ep_dtype ep_comm_combine_wire(ep_dtype wire)
{
    // Partial sums are added up at the token's rank; DeepEP returns them in
    // BF16, since fp8 with per-group scales would add a second, coarser rounding.
    return wire == EP_DTYPE_F8_E4M3 ? EP_DTYPE_BF16 : wire;
}

// The command-line names of the wire dtypes, shared by bench and simulate.
static const struct {
    const char *name;
    ep_dtype dtype;
} ep_wire_names[] = {
    {"f32", EP_DTYPE_F32},
    {"bf16", EP_DTYPE_BF16},
    {"f16", EP_DTYPE_F16},
    {"fp8", EP_DTYPE_F8_E4M3},
};

ep_status ep_comm_wire_parse(const char *option, const char *s, ep_dtype *out)
{
    for (size_t i = 0; s && i < EP_ARRAY_LEN(ep_wire_names); i++) {
        if (!strcmp(s, ep_wire_names[i].name)) {
            *out = ep_wire_names[i].dtype;
            return EP_OK;
        }
    }
    return ep_errorf(EP_ERR_ARG, "%s: expected f32, bf16, f16 or fp8, found '%s'", option,
                     s ? s : "(none)");
}

const char *ep_comm_wire_name(ep_dtype wire)
{
    for (size_t i = 0; i < EP_ARRAY_LEN(ep_wire_names); i++)
        if (ep_wire_names[i].dtype == wire) return ep_wire_names[i].name;
    return ep_dtype_name(wire);
}

int64_t ep_comm_dispatch_record_bytes(int n_pairs, int hidden, ep_dtype wire)
{
    EP_ASSERT(n_pairs >= 0);
    return EP_COMM_REC_HEADER_BYTES + (int64_t)n_pairs * EP_COMM_REC_PAIR_BYTES +
           ep_comm_row_bytes(hidden, wire);
}

int64_t ep_comm_hier_record_bytes(int n_pairs, int hidden, ep_dtype wire)
{
    return ep_comm_dispatch_record_bytes(n_pairs, hidden, wire) + 4 * (int64_t)n_pairs;
}

ep_status ep_dispatch_mode_parse(const char *option, const char *s, ep_dispatch_mode *out)
{
    if (s && !strcmp(s, "flat")) {
        *out = EP_DISPATCH_FLAT;
        return EP_OK;
    }
    if (s && !strcmp(s, "hier")) {
        *out = EP_DISPATCH_HIER;
        return EP_OK;
    }
    return ep_errorf(EP_ERR_ARG, "%s: expected flat or hier, found '%s'", option, s ? s : "(none)");
}

const char *ep_dispatch_mode_name(ep_dispatch_mode mode)
{
    return mode == EP_DISPATCH_HIER ? "hier" : "flat";
}

int64_t ep_comm_combine_record_bytes(int hidden, ep_dtype wire)
{
    return ep_comm_row_bytes(hidden, ep_comm_combine_wire(wire));
}

void ep_comm_stats_add(ep_comm_stats *acc, const ep_comm_stats *s)
{
    acc->tokens += s->tokens;
    acc->pairs += s->pairs;
    acc->sends += s->sends;
    acc->dest_ranks += s->dest_ranks;
    acc->dispatch_bytes += s->dispatch_bytes;
    acc->combine_bytes += s->combine_bytes;
    acc->dispatch_bytes_inter += s->dispatch_bytes_inter;
    acc->combine_bytes_inter += s->combine_bytes_inter;
    acc->base_pairs += s->base_pairs;
    acc->base_sends += s->base_sends;
    acc->base_dest_ranks += s->base_dest_ranks;
    acc->base_dispatch_bytes += s->base_dispatch_bytes;
    acc->base_combine_bytes += s->base_combine_bytes;
    acc->base_dispatch_bytes_inter += s->base_dispatch_bytes_inter;
    acc->base_combine_bytes_inter += s->base_combine_bytes_inter;
    acc->dispatch_bytes_intra += s->dispatch_bytes_intra;
    acc->combine_bytes_intra += s->combine_bytes_intra;
    acc->base_dispatch_bytes_intra += s->base_dispatch_bytes_intra;
    acc->base_combine_bytes_intra += s->base_combine_bytes_intra;
    acc->fwd_sends += s->fwd_sends;
    acc->base_fwd_sends += s->base_fwd_sends;
    acc->planned_bytes += s->planned_bytes;
    acc->measured_bytes += s->measured_bytes;
    acc->measured_bytes_inter += s->measured_bytes_inter;
    acc->recv_pairs += s->recv_pairs;
    acc->recv_tokens += s->recv_tokens;
}

void ep_comm_count(const ep_routes *r, const ep_placement *p, const int *pair_rank, int rank,
                   const int *node_of, int hidden, ep_dtype wire, ep_comm_stats *st)
{
    ep_comm_count_mode(r, p, pair_rank, rank, node_of, hidden, wire, EP_DISPATCH_FLAT, st);
}

void ep_comm_count_mode(const ep_routes *r, const ep_placement *p, const int *pair_rank, int rank,
                        const int *node_of, int hidden, ep_dtype wire, ep_dispatch_mode mode,
                        ep_comm_stats *st)
{
    EP_ASSERT(r && p && node_of && st);
    ep_dispatch_plan pl;
    ep_status s = ep_dispatch_plan_init(&pl, p->world_size, rank, node_of, hidden, wire);
    EP_ASSERT(s == EP_OK);
    s = ep_dispatch_plan_set_mode(&pl, mode);
    EP_ASSERT(s == EP_OK);
    ep_dispatch_plan_build(&pl, r, p, pair_rank);
    *st = pl.stats;
    ep_dispatch_plan_free(&pl);
}
