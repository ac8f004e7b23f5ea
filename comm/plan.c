// Dispatch planning as pure accounting: record sizes of the wire format and
// ep_comm_count, which prices a layer's routes (and the fixed-k_base
// counterfactual) on a placement without communicating. Moving bytes is comm.c's.
#include <string.h>

#include "comm/comm_impl.h"

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
    acc->planned_bytes += s->planned_bytes;
    acc->measured_bytes += s->measured_bytes;
    acc->recv_pairs += s->recv_pairs;
    acc->recv_tokens += s->recv_tokens;
}

// What one token's row costs: its pairs experts[0..n) go to prank[j] when
// the scheduler chose ranks (replicas), else to each expert's home rank. Pairs
// are grouped by destination rank; each remote rank gets one dispatch record
// carrying all its pairs and returns one combine record.
typedef struct {
    int64_t sends, dest_ranks, dispatch, combine, dispatch_inter, combine_inter;
} ep_row_cost;

static inline int ep_row_dest(const ep_placement *p, const int *experts, const int *prank, int j)
{
    int d = prank ? prank[j] : p->rank_of[experts[j]];
    EP_ASSERT(d >= 0 && d < p->world_size);
    return d;
}

static void ep_count_row(const ep_placement *p, const int *experts, const int *prank, int n,
                         int rank, const int *node_of, int64_t row_bytes, int64_t crow_bytes,
                         ep_row_cost *acc)
{
    for (int j = 0; j < n; j++) {
        EP_ASSERT(experts[j] >= 0 && experts[j] < p->n_experts);
        int d = ep_row_dest(p, experts, prank, j);
        bool first = true;
        for (int q = 0; q < j && first; q++)
            first = ep_row_dest(p, experts, prank, q) != d;
        if (!first) continue; // this rank was counted with its first pair
        acc->dest_ranks++;
        if (d == rank) continue; // computed where it lives: no bytes
        int n_d = 1;
        for (int q = j + 1; q < n; q++)
            n_d += ep_row_dest(p, experts, prank, q) == d;
        int64_t db = EP_COMM_REC_HEADER_BYTES + (int64_t)n_d * EP_COMM_REC_PAIR_BYTES + row_bytes;
        acc->sends++;
        acc->dispatch += db;
        acc->combine += crow_bytes;
        if (node_of[d] != node_of[rank]) {
            acc->dispatch_inter += db;
            acc->combine_inter += crow_bytes;
        }
    }
}

void ep_comm_count(const ep_routes *r, const ep_placement *p, const int *pair_rank, int rank,
                   const int *node_of, int hidden, ep_dtype wire, ep_comm_stats *st)
{
    EP_ASSERT(r && p && node_of && st);
    EP_ASSERT(rank >= 0 && rank < p->world_size);
    memset(st, 0, sizeof *st);
    const int64_t row_bytes = ep_comm_row_bytes(hidden, wire);
    const int64_t crow_bytes = ep_comm_combine_record_bytes(hidden, wire);
    const int T = r->n_tokens;

    ep_row_cost act = {0}, base = {0};
    for (int i = 0; i < T; i++) {
        int b = r->offsets[i], n = r->offsets[i + 1] - b;
        EP_ASSERT(n >= 0);
        ep_count_row(p, r->expert + b, pair_rank ? pair_rank + b : NULL, n, rank, node_of,
                     row_bytes, crow_bytes, &act);
        // Counterfactual: static top-k_base, each expert at its home rank
        // (a replica choice follows the actual routes, not this one).
        ep_count_row(p, r->base_expert + (size_t)i * r->k_base, NULL, r->k_base, rank, node_of,
                     row_bytes, crow_bytes, &base);
    }

    st->tokens = T;
    st->pairs = T > 0 ? r->offsets[T] - r->offsets[0] : 0;
    st->sends = act.sends;
    st->dest_ranks = act.dest_ranks;
    st->dispatch_bytes = act.dispatch;
    st->combine_bytes = act.combine;
    st->dispatch_bytes_inter = act.dispatch_inter;
    st->combine_bytes_inter = act.combine_inter;
    st->base_pairs = (int64_t)T * r->k_base;
    st->base_sends = base.sends;
    st->base_dest_ranks = base.dest_ranks;
    st->base_dispatch_bytes = base.dispatch;
    st->base_combine_bytes = base.combine;
    st->base_dispatch_bytes_inter = base.dispatch_inter;
    st->base_combine_bytes_inter = base.combine_inter;
    st->planned_bytes = act.dispatch + act.combine;
}
