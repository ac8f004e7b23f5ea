// Dispatch and combine of one MoE layer: groups each token's pairs by
// destination rank, packs one record per (token, remote rank) in the wire
// format (docs/wire-format.md), moves them with a transport, decodes them into
// the work the experts compute, and sends the partial sums back. Own-rank
// records never touch the wire. Which experts compute, and how, is experts/'.
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"
#include "comm/dispatch_plan.h"

struct ep_comm {
    ep_cluster *cluster;  // borrowed
    ep_transport *t;      // borrowed
    ep_transport *t_node; // owned: hier's stage 2 over this node's ranks (MPI), or NULL
    ep_transport *req_t;  // the transport m->req is on
    int hidden, rank, world;
    ep_dtype wire;      // dispatch rows
    ep_dtype cwire;     // combine rows: wire, or BF16 for an F8_E4M3 wire
    int64_t row_bytes;  // one dispatch row on the wire, a multiple of 4
    int64_t crow_bytes; // one combine row on the wire, a multiple of 4

    // Per peer ([world]). Dispatch sizes in bytes (what this rank sends is
    // the plan's send_bytes / send_off); combine reverses them.
    int64_t *recv_bytes, *recv_off;
    int64_t *c_send_bytes, *c_send_off, *c_recv_bytes, *c_recv_off;
    int64_t *cursor;   // [world] packing position per destination (checks the plan)
    int *recv_rec_off; // [world + 1] work records that came from each source rank

    // The plan of the last dispatch (comm/dispatch_plan.h): the groups, one
    // record per (token, destination rank), and where each is packed.
    ep_dispatch_plan plan;

    // Wire buffers in bytes. Combine packs into recvbuf and receives into
    // sendbuf (grown if needed: with an fp8 wire a bf16 combine row is larger
    // than the dispatch record it answers).
    uint8_t *sendbuf;
    size_t sendbuf_cap;
    uint8_t *recvbuf;
    size_t recvbuf_cap;

    // The work handed to the experts.
    int n_rec;
    size_t rec_cap;
    int *pair_off; // [rec_cap + 1]
    float *x, *y;  // [rec_cap, hidden]
    size_t pair_cap;
    int *pair_expert;   // [pair_cap]
    float *pair_weight; // [pair_cap]
    float *row;         // [hidden] decode scratch

    int T;                 // tokens of the last dispatch: rows of combine's out
    int64_t arrived;       // dispatch payload bytes the last unpack decoded from other ranks
    int64_t arrived_inter; // the part of it that came from another node

    // Hier (EP_DISPATCH_HIER, comm/dispatch_plan.h): the stage-1 records
    // received from other ranks, sources ascending, arrival order within one
    // (s1_off[s]..s1_off[s+1] from rank s; none from this rank). A record
    // from another node was sent here to forward: its pairs of this rank
    // become work record s1_work[c] (-1: none), the others stage-2 records.
    int *s1_off; // [world + 1]
    size_t s1_cap;
    int *s1_work;  // [s1_cap]
    float *s1_sum; // [s1_cap, hidden] combine: the node's partial sum per record
    int n_work1;   // work records from stage 1 (own, direct, local parts)
    int own_work0; // work record of this rank's first own group
    // Stage 2: records this rank forwards, by destination rank (s2_dst_off
    // CSR), each the part of stage-1 record s2_rec[k] for that rank; sizes
    // and offsets per peer of the forward and of the stage-2 records
    // received (work records n_work1.. by source, s2_recv_rec_off CSR).
    size_t s2_cap;
    int *s2_rec;                                                        // [s2_cap]
    int *s2_dst_off;                                                    // [world + 1]
    int *s2_recv_rec_off;                                               // [world + 1]
    int64_t *s2_send_bytes, *s2_send_off, *s2_recv_bytes, *s2_recv_off; // [world]
    uint8_t *s2_sendbuf, *s2_recvbuf;
    size_t s2_sendbuf_cap, s2_recvbuf_cap;

    // Where the ep_comm is between the halves of dispatch and combine
    // (comm.h): each phase admits only the next call.
    enum {
        EP_COMM_IDLE,            // dispatch_start next
        EP_COMM_DISPATCH_POSTED, // dispatch_finish next
        EP_COMM_DISPATCHED,      // combine_start next
        EP_COMM_COMBINE_POSTED,  // combine_finish next
    } phase;
    ep_transport_req *req; // the payload exchange in flight (POSTED phases)
    // Borrowed from dispatch_start until dispatch_finish.
    const ep_routes *d_r;
    const ep_placement *d_p;
    const int *d_pair_rank;
    const float *d_x;
    const float *c_y; // work->y from combine_start until combine_finish
};

// ---- buffers ----------------------------------------------------------------

// The capacity to grow to for `need` elements, or 0 when `cap` suffices.
// Growth is by at least half again, so a slowly growing step reallocates
// O(log) times and a steady one never.
static size_t ep_grown(size_t cap, size_t need)
{
    return need <= cap ? 0 : EP_MAX(need, cap + cap / 2);
}

static void ep_comm_grow_bytes(uint8_t **buf, size_t *cap, size_t need)
{
    size_t n = ep_grown(*cap, need);
    if (!n) return;
    *buf = ep_xrealloc(*buf, n);
    *cap = n;
}

static void ep_comm_grow_work(ep_comm *m, size_t n_rec, size_t n_pairs)
{
    size_t n = ep_grown(m->rec_cap, n_rec);
    if (n) {
        m->pair_off = ep_xrealloc(m->pair_off, (n + 1) * sizeof(int));
        m->x = ep_xrealloc(m->x, n * (size_t)m->hidden * sizeof(float));
        m->y = ep_xrealloc(m->y, n * (size_t)m->hidden * sizeof(float));
        m->rec_cap = n;
    }
    n = ep_grown(m->pair_cap, n_pairs);
    if (n) {
        m->pair_expert = ep_xrealloc(m->pair_expert, n * sizeof(int));
        m->pair_weight = ep_xrealloc(m->pair_weight, n * sizeof(float));
        m->pair_cap = n;
    }
}

ep_status ep_comm_init(ep_cluster *c, ep_transport *t, int hidden, ep_dtype wire, int cap_tokens,
                       int max_k, ep_comm **out)
{
    *out = NULL;
    if (hidden < 1) return ep_errorf(EP_ERR_ARG, "comm: hidden: expected >= 1, found %d", hidden);
    if (cap_tokens < 0 || max_k < 1)
        return ep_errorf(EP_ERR_ARG,
                         "comm: capacity: expected cap_tokens >= 0 and max_k >= 1, found %d and %d",
                         cap_tokens, max_k);
    if (wire != EP_DTYPE_F32 && wire != EP_DTYPE_BF16 && wire != EP_DTYPE_F16 &&
        wire != EP_DTYPE_F8_E4M3)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "comm: wire dtype: expected F32, BF16, F16 or F8_E4M3, found %s",
                         ep_dtype_name(wire));
    if (t->world_size != c->world_size || t->rank != c->rank)
        return ep_errorf(EP_ERR_ARG,
                         "comm: transport '%s' is rank %d of %d, cluster is rank %d of %d",
                         t->vt->name, t->rank, t->world_size, c->rank, c->world_size);

    ep_comm *m = ep_xcalloc(1, sizeof *m);
    m->cluster = c;
    m->t = t;
    m->hidden = hidden;
    m->wire = wire;
    m->rank = c->rank;
    m->world = c->world_size;
    m->cwire = ep_comm_combine_wire(wire);
    m->row_bytes = ep_comm_row_bytes(hidden, wire);
    m->crow_bytes = ep_comm_combine_record_bytes(hidden, wire);
    size_t w = (size_t)m->world;
    m->recv_bytes = ep_xcalloc(w, sizeof(int64_t));
    m->recv_off = ep_xcalloc(w, sizeof(int64_t));
    m->c_send_bytes = ep_xcalloc(w, sizeof(int64_t));
    m->c_send_off = ep_xcalloc(w, sizeof(int64_t));
    m->c_recv_bytes = ep_xcalloc(w, sizeof(int64_t));
    m->c_recv_off = ep_xcalloc(w, sizeof(int64_t));
    m->cursor = ep_xcalloc(w, sizeof(int64_t));
    m->recv_rec_off = ep_xcalloc(w + 1, sizeof(int));
    m->row = ep_xcalloc((size_t)hidden, sizeof(float));
    m->s1_off = ep_xcalloc(w + 1, sizeof(int));
    m->s2_dst_off = ep_xcalloc(w + 1, sizeof(int));
    m->s2_recv_rec_off = ep_xcalloc(w + 1, sizeof(int));
    m->s2_send_bytes = ep_xcalloc(w, sizeof(int64_t));
    m->s2_send_off = ep_xcalloc(w, sizeof(int64_t));
    m->s2_recv_bytes = ep_xcalloc(w, sizeof(int64_t));
    m->s2_recv_off = ep_xcalloc(w, sizeof(int64_t));
    ep_status st = ep_dispatch_plan_init(&m->plan, m->world, m->rank, c->node_of, hidden, wire);
    EP_ASSERT(st == EP_OK);                   // its arguments were checked above
    m->pair_off = ep_xcalloc(1, sizeof(int)); // rec_cap + 1 entries, rec_cap = 0 so far

    // Sized for a balanced step: cap_tokens tokens out, each reaching at most
    // min(max_k, world) ranks, and about as many records and pairs coming in.
    size_t pairs = (size_t)cap_tokens * (size_t)max_k;
    size_t recs = (size_t)cap_tokens * (size_t)EP_MIN(max_k, m->world);
    ep_dispatch_plan_reserve(&m->plan, pairs);
    ep_comm_grow_work(m, recs, pairs);
    size_t wire_bytes =
        recs * (size_t)EP_MAX(EP_COMM_REC_HEADER_BYTES + m->row_bytes, m->crow_bytes) +
        pairs * EP_COMM_REC_PAIR_BYTES;
    ep_comm_grow_bytes(&m->sendbuf, &m->sendbuf_cap, wire_bytes);
    ep_comm_grow_bytes(&m->recvbuf, &m->recvbuf_cap, wire_bytes);
    *out = m;
    return EP_OK;
}

void ep_comm_free(ep_comm *m)
{
    if (!m) return;
    free(m->recv_bytes);
    free(m->recv_off);
    free(m->c_send_bytes);
    free(m->c_send_off);
    free(m->c_recv_bytes);
    free(m->c_recv_off);
    free(m->cursor);
    free(m->recv_rec_off);
    ep_dispatch_plan_free(&m->plan);
    free(m->sendbuf);
    free(m->recvbuf);
    free(m->pair_off);
    free(m->x);
    free(m->y);
    free(m->pair_expert);
    free(m->pair_weight);
    free(m->row);
    free(m->s1_off);
    free(m->s1_work);
    free(m->s1_sum);
    free(m->s2_rec);
    free(m->s2_dst_off);
    free(m->s2_recv_rec_off);
    free(m->s2_send_bytes);
    free(m->s2_send_off);
    free(m->s2_recv_bytes);
    free(m->s2_recv_off);
    free(m->s2_sendbuf);
    free(m->s2_recvbuf);
    ep_transport_free(m->t_node);
    free(m);
}

void ep_transport_free(ep_transport *t)
{
    if (t && t->vt && t->vt->free) t->vt->free(t);
}

ep_status ep_transport_alltoallv(ep_transport *t, const void *sendbuf, const int64_t *send_bytes,
                                 const int64_t *send_off, void *recvbuf, const int64_t *recv_bytes,
                                 const int64_t *recv_off)
{
    ep_transport_req *q;
    ep_status st =
        t->vt->alltoallv_start(t, sendbuf, send_bytes, send_off, recvbuf, recv_bytes, recv_off, &q);
    return st != EP_OK ? st : t->vt->alltoallv_wait(t, q, NULL);
}

// ---- rows on the wire -----------------------------------------------------------

// One row in dtype t (m->wire for dispatch, m->cwire for combine).
static void ep_comm_encode_row(const ep_comm *m, ep_dtype t, const float *src, uint8_t *dst)
{
    if (t == EP_DTYPE_F8_E4M3) { // scales + codes, padding zeroed by the codec
        ep_fp8_row_encode(src, m->hidden, dst);
        return;
    }
    size_t vb = (size_t)m->hidden * ep_dtype_size(t);
    if (t == EP_DTYPE_F32) {
        memcpy(dst, src, vb);
    } else {
        ep_status st = ep_dtype_from_f32(t, src, dst, (size_t)m->hidden);
        EP_ASSERT(st == EP_OK); // init admitted only convertible wire dtypes
    }
    // The rounding to 4 bytes leaves padding: zero it so payloads are reproducible.
    size_t rb = (size_t)(t == m->cwire ? m->crow_bytes : m->row_bytes);
    if (rb > vb) memset(dst + vb, 0, rb - vb);
}

static void ep_comm_decode_row(const ep_comm *m, ep_dtype t, const uint8_t *src, float *dst)
{
    if (t == EP_DTYPE_F8_E4M3) {
        ep_fp8_row_decode(src, m->hidden, dst);
    } else if (t == EP_DTYPE_F32) {
        memcpy(dst, src, (size_t)m->hidden * sizeof(float));
    } else {
        ep_status st = ep_dtype_to_f32(t, src, dst, (size_t)m->hidden);
        EP_ASSERT(st == EP_OK);
    }
}

// ---- dispatch ---------------------------------------------------------------------

// Packs every record of the plan at the offset the plan gave it (a hier
// stage-1 record with the rank of each pair after the weights).
static void ep_comm_pack(ep_comm *m, const ep_routes *r, const float *x)
{
    const ep_dispatch_plan *pl = &m->plan;
    const size_t H = (size_t)m->hidden;
    for (int d = 0; d < m->world; d++)
        m->cursor[d] = 0;
    for (int g = 0; g < pl->n_grp; g++) {
        int d = pl->grp_dest[g];
        if (d == m->rank) continue;
        int i = pl->grp_tok[g], b = pl->grp_off[g], n = pl->grp_off[g + 1] - b;
        const int64_t rb = ep_dispatch_plan_rec_bytes(pl, d, n);
        const bool ranks = rb != ep_comm_dispatch_record_bytes(n, m->hidden, m->wire);
        uint8_t *rec = m->sendbuf + pl->rec_off[g];
        ep_put_i32(rec, i);
        ep_put_i32(rec + 4, n);
        uint8_t *ids = rec + EP_COMM_REC_HEADER_BYTES, *wts = ids + 4 * (size_t)n;
        uint8_t *row = wts + 4 * (size_t)n;
        for (int k = 0; k < n; k++) {
            int j = pl->grp_pair[b + k];
            ep_put_i32(ids + 4 * (size_t)k, r->expert[j]);
            memcpy(wts + 4 * (size_t)k, &r->weight[j], 4);
            if (ranks) ep_put_i32(row + 4 * (size_t)k, pl->grp_prank[b + k]);
        }
        if (ranks) row += 4 * (size_t)n;
        ep_comm_encode_row(m, m->wire, x + (size_t)i * H, row);
        m->cursor[d] += rb;
    }
    for (int d = 0; d < m->world; d++)
        EP_ASSERT(m->cursor[d] == pl->send_bytes[d]);
}

// Whether records from rank s are hier stage-1 records (to forward).
static bool ep_comm_forwarded(const ep_comm *m, int s)
{
    return m->plan.mode == EP_DISPATCH_HIER && m->plan.node_of[s] != m->plan.node_of[m->rank];
}

static int64_t ep_comm_rec_bytes(const ep_comm *m, bool hier, int n)
{
    return hier ? ep_comm_hier_record_bytes(n, m->hidden, m->wire)
                : ep_comm_dispatch_record_bytes(n, m->hidden, m->wire);
}

// Counts the records and pairs a source rank sent (len bytes at buf; hier:
// stage-1 records), checking that its payload is a whole number of
// well-formed records.
static ep_status ep_comm_walk(const ep_comm *m, int src, const uint8_t *buf, int64_t len, bool hier,
                              int *n_rec, int64_t *n_pairs)
{
    int64_t pos = 0;
    *n_rec = 0;
    *n_pairs = 0;
    while (pos < len) {
        if (len - pos < EP_COMM_REC_HEADER_BYTES)
            return ep_errorf(
                EP_ERR_COMM,
                "dispatch from rank %d: record header at byte %lld: expected %d bytes, "
                "found %lld left of %lld",
                src, (long long)pos, EP_COMM_REC_HEADER_BYTES, (long long)(len - pos),
                (long long)len);
        int32_t tok = ep_get_i32(buf + pos), n = ep_get_i32(buf + pos + 4);
        int64_t rb = n >= 1 ? ep_comm_rec_bytes(m, hier, n) : 0;
        if (tok < 0 || n < 1 || rb > len - pos)
            return ep_errorf(EP_ERR_COMM,
                             "dispatch from rank %d: record at byte %lld: expected token >= 0 and "
                             "1 <= n pairs fitting the %lld bytes left, found token %d, n %d",
                             src, (long long)pos, (long long)(len - pos), tok, n);
        pos += rb;
        (*n_rec)++;
        *n_pairs += n;
    }
    return EP_OK;
}

// Work record k from this rank's own groups of the plan, straight from the
// routes (fp32, no wire); advances *k and *pk.
static void ep_comm_take_own(ep_comm *m, const ep_routes *r, const float *x, int *k, int *pk)
{
    const size_t H = (size_t)m->hidden;
    const ep_dispatch_plan *pl = &m->plan;
    for (int c = pl->dest_off[m->rank]; c < pl->dest_off[m->rank + 1]; c++) {
        const int g = pl->dest_grp[c];
        m->pair_off[*k] = *pk;
        for (int q = pl->grp_off[g]; q < pl->grp_off[g + 1]; q++) {
            int j = pl->grp_pair[q];
            m->pair_expert[*pk] = r->expert[j];
            m->pair_weight[*pk] = r->weight[j];
            (*pk)++;
        }
        memcpy(m->x + (size_t)*k * H, x + (size_t)pl->grp_tok[g] * H, H * sizeof(float));
        (*k)++;
    }
}

// Work record k from a plain record (walked already) of rank s, its
// idx-th; returns its size. An expert of another rank is EP_ERR_COMM.
static ep_status ep_comm_take_record(ep_comm *m, const ep_placement *p, const int *pair_rank, int s,
                                     int idx, const uint8_t *rec, int *k, int *pk, int64_t *bytes)
{
    int n = ep_get_i32(rec + 4);
    const uint8_t *ids = rec + EP_COMM_REC_HEADER_BYTES, *wts = ids + 4 * (size_t)n;
    m->pair_off[*k] = *pk;
    for (int q = 0; q < n; q++) {
        int e = ep_get_i32(ids + 4 * (size_t)q);
        // With home placement every expert must live here; with replicas
        // the sender chose the rank, so only the id range can be checked.
        if (e < 0 || e >= p->n_experts || (!pair_rank && p->rank_of[e] != m->rank))
            return ep_errorf(EP_ERR_COMM,
                             "dispatch from rank %d: record %d names expert %d, expected an "
                             "expert of rank %d among %d (placements differ between ranks?)",
                             s, idx, e, m->rank, p->n_experts);
        m->pair_expert[*pk] = e;
        memcpy(&m->pair_weight[*pk], wts + 4 * (size_t)q, 4);
        (*pk)++;
    }
    ep_comm_decode_row(m, m->wire, wts + 4 * (size_t)n, m->x + (size_t)*k * (size_t)m->hidden);
    (*k)++;
    *bytes = ep_comm_dispatch_record_bytes(n, m->hidden, m->wire);
    return EP_OK;
}

// Fills the work arrays: records by source rank, each source's records in
// the order it packed them (its token order); own groups straight from the routes.
static ep_status ep_comm_unpack(ep_comm *m, const ep_routes *r, const ep_placement *p,
                                const int *pair_rank, const float *x)
{
    int64_t total_pairs = 0;
    m->recv_rec_off[0] = 0;
    for (int s = 0; s < m->world; s++) {
        int n_rec;
        int64_t n_pairs;
        if (s == m->rank) {
            n_rec = ep_dispatch_plan_n_rec(&m->plan, s);
            n_pairs = m->plan.own_pairs;
        } else {
            ep_status st = ep_comm_walk(m, s, m->recvbuf + m->recv_off[s], m->recv_bytes[s], false,
                                        &n_rec, &n_pairs);
            if (st != EP_OK) return st;
        }
        m->recv_rec_off[s + 1] = m->recv_rec_off[s] + n_rec;
        total_pairs += n_pairs;
    }
    if (total_pairs > INT32_MAX)
        return ep_errorf(EP_ERR_COMM, "dispatch: %lld pairs received, expected at most %d",
                         (long long)total_pairs, INT32_MAX);
    m->n_rec = m->recv_rec_off[m->world];
    ep_comm_grow_work(m, (size_t)m->n_rec, (size_t)total_pairs);

    int k = 0, pk = 0;
    m->arrived = m->arrived_inter = 0;
    for (int s = 0; s < m->world; s++) {
        if (s == m->rank) {
            ep_comm_take_own(m, r, x, &k, &pk);
            continue;
        }
        const uint8_t *rec = m->recvbuf + m->recv_off[s];
        const bool inter = m->plan.node_of[s] != m->plan.node_of[m->rank];
        for (int c = m->recv_rec_off[s]; c < m->recv_rec_off[s + 1]; c++) {
            int64_t rb;
            ep_status st =
                ep_comm_take_record(m, p, pair_rank, s, c - m->recv_rec_off[s], rec, &k, &pk, &rb);
            if (st != EP_OK) return st;
            rec += rb;
            m->arrived += rb;
            if (inter) m->arrived_inter += rb;
        }
    }
    m->pair_off[k] = pk;
    EP_ASSERT(k == m->n_rec && pk == total_pairs);
    return EP_OK;
}

// ---- hier: forward within the node (stage 2) ----------------------------------

static void ep_comm_grow_hier(ep_comm *m, size_t n_s1, size_t n_fwd)
{
    size_t n = ep_grown(m->s1_cap, n_s1);
    if (n) {
        m->s1_work = ep_xrealloc(m->s1_work, n * sizeof(int));
        m->s1_sum = ep_xrealloc(m->s1_sum, n * (size_t)m->hidden * sizeof(float));
        m->s1_cap = n;
    }
    n = ep_grown(m->s2_cap, n_fwd);
    if (n) {
        m->s2_rec = ep_xrealloc(m->s2_rec, n * sizeof(int));
        m->s2_cap = n;
    }
}

// The pairs of one stage-1 record for rank rk, counted (only the first
// pair of rk in the record asks: *first).
static int ep_comm_rank_pairs(const uint8_t *rks, int n, int q, bool *first)
{
    const int rk = ep_get_i32(rks + 4 * (size_t)q);
    *first = true;
    for (int b = 0; b < q && *first; b++)
        *first = ep_get_i32(rks + 4 * (size_t)b) != rk;
    int c = 0;
    for (int b = q; b < n; b++)
        c += ep_get_i32(rks + 4 * (size_t)b) == rk;
    return c;
}

// After stage 1 arrived: work from own groups, direct records and the local
// pairs of forwarded records; the other pairs forwarded (stage 2, blocking:
// counts, then payload) and decoded as work after them.
static ep_status ep_comm_unpack_hier(ep_comm *m, const ep_routes *r, const ep_placement *p,
                                     const int *pair_rank, const float *x)
{
    const int W = m->world, me = m->rank, my_node = m->plan.node_of[me];
    const size_t H = (size_t)m->hidden;
    ep_status st;
    // Pass 1: count, check the forwarded records, size the forward.
    int n_s1 = 0, n_work = 0, n_fwd = 0;
    int64_t n_pairs = 0;
    memset(m->s2_send_bytes, 0, (size_t)W * sizeof(int64_t));
    memset(m->s2_dst_off, 0, ((size_t)W + 1) * sizeof(int));
    m->s1_off[0] = 0;
    for (int s = 0; s < W; s++) {
        if (s == me) {
            n_work += ep_dispatch_plan_n_rec(&m->plan, s);
            n_pairs += m->plan.own_pairs;
            m->s1_off[s + 1] = n_s1;
            continue;
        }
        const bool fwd = ep_comm_forwarded(m, s);
        const uint8_t *rec = m->recvbuf + m->recv_off[s];
        int nr;
        int64_t np;
        if ((st = ep_comm_walk(m, s, rec, m->recv_bytes[s], fwd, &nr, &np)) != EP_OK) return st;
        m->s1_off[s + 1] = n_s1 + nr;
        n_s1 += nr;
        if (!fwd) {
            n_work += nr;
            n_pairs += np;
            continue;
        }
        for (int c = 0; c < nr; c++) {
            const int n = ep_get_i32(rec + 4);
            const uint8_t *rks = rec + EP_COMM_REC_HEADER_BYTES + 8 * (size_t)n;
            int local = 0;
            for (int q = 0; q < n; q++) {
                const int rk = ep_get_i32(rks + 4 * (size_t)q);
                if (rk < 0 || rk >= W || m->plan.node_of[rk] != my_node)
                    return ep_errorf(EP_ERR_COMM,
                                     "dispatch from rank %d: stage-1 record %d pair %d names rank "
                                     "%d, expected a rank of node %d (node maps differ?)",
                                     s, c, q, rk, my_node);
                bool first;
                const int cnt = ep_comm_rank_pairs(rks, n, q, &first);
                if (rk == me) {
                    local++;
                } else if (first) {
                    m->s2_dst_off[rk + 1]++;
                    m->s2_send_bytes[rk] += ep_comm_dispatch_record_bytes(cnt, m->hidden, m->wire);
                    n_fwd++;
                }
            }
            if (local) {
                n_work++;
                n_pairs += local;
            }
            rec += ep_comm_rec_bytes(m, true, n);
        }
    }
    if (n_pairs > INT32_MAX)
        return ep_errorf(EP_ERR_COMM, "dispatch: %lld pairs received, expected at most %d",
                         (long long)n_pairs, INT32_MAX);
    ep_comm_grow_hier(m, (size_t)n_s1, (size_t)n_fwd);
    ep_comm_grow_work(m, (size_t)n_work, (size_t)n_pairs);
    int64_t so = 0;
    for (int d = 0; d < W; d++) {
        m->s2_send_off[d] = so;
        so += m->s2_send_bytes[d];
        m->s2_dst_off[d + 1] += m->s2_dst_off[d];
        m->cursor[d] = 0;
        m->recv_rec_off[d] = 0; // stage-2 records packed per destination so far
    }
    ep_comm_grow_bytes(&m->s2_sendbuf, &m->s2_sendbuf_cap, (size_t)so);

    // Pass 2: work from stage 1, the forward packed per destination.
    int k = 0, pk = 0;
    m->arrived = m->arrived_inter = 0;
    for (int s = 0; s < W; s++) {
        if (s == me) {
            m->own_work0 = k;
            ep_comm_take_own(m, r, x, &k, &pk);
            continue;
        }
        const bool fwd = ep_comm_forwarded(m, s);
        const uint8_t *rec = m->recvbuf + m->recv_off[s];
        for (int c = m->s1_off[s]; c < m->s1_off[s + 1]; c++) {
            int64_t rb;
            if (!fwd) {
                m->s1_work[c] = k;
                st = ep_comm_take_record(m, p, pair_rank, s, c - m->s1_off[s], rec, &k, &pk, &rb);
                if (st != EP_OK) return st;
                rec += rb;
                m->arrived += rb;
                continue;
            }
            const int n = ep_get_i32(rec + 4);
            const uint8_t *ids = rec + EP_COMM_REC_HEADER_BYTES, *wts = ids + 4 * (size_t)n;
            const uint8_t *rks = wts + 4 * (size_t)n, *row = rks + 4 * (size_t)n;
            rb = ep_comm_rec_bytes(m, true, n);
            m->s1_work[c] = -1;
            for (int q = 0; q < n; q++) {
                const int rk = ep_get_i32(rks + 4 * (size_t)q);
                bool first;
                const int cnt = ep_comm_rank_pairs(rks, n, q, &first);
                if (rk == me) {
                    const int e = ep_get_i32(ids + 4 * (size_t)q);
                    if (e < 0 || e >= p->n_experts || (!pair_rank && p->rank_of[e] != me))
                        return ep_errorf(EP_ERR_COMM,
                                         "dispatch from rank %d: stage-1 record %d names expert "
                                         "%d for rank %d, expected one of its experts among %d",
                                         s, c - m->s1_off[s], e, me, p->n_experts);
                    if (m->s1_work[c] < 0) {
                        m->s1_work[c] = k;
                        m->pair_off[k] = pk;
                        ep_comm_decode_row(m, m->wire, row, m->x + (size_t)k * H);
                        k++;
                    }
                    m->pair_expert[pk] = e;
                    memcpy(&m->pair_weight[pk], wts + 4 * (size_t)q, 4);
                    pk++;
                    continue;
                }
                if (!first) continue;
                // Stage-2 record to rk: its pairs in row order, the row as it
                // came (never re-encoded: one rounding, as flat).
                uint8_t *o = m->s2_sendbuf + m->s2_send_off[rk] + m->cursor[rk];
                ep_put_i32(o, c);
                ep_put_i32(o + 4, cnt);
                uint8_t *oid = o + EP_COMM_REC_HEADER_BYTES, *owt = oid + 4 * (size_t)cnt;
                for (int b = q, w = 0; b < n; b++) {
                    if (ep_get_i32(rks + 4 * (size_t)b) != rk) continue;
                    memcpy(oid + 4 * (size_t)w, ids + 4 * (size_t)b, 4);
                    memcpy(owt + 4 * (size_t)w, wts + 4 * (size_t)b, 4);
                    w++;
                }
                memcpy(owt + 4 * (size_t)cnt, row, (size_t)m->row_bytes);
                m->cursor[rk] += ep_comm_dispatch_record_bytes(cnt, m->hidden, m->wire);
                m->s2_rec[m->s2_dst_off[rk] + m->recv_rec_off[rk]++] = c;
            }
            rec += rb;
            m->arrived += rb;
            m->arrived_inter += rb;
        }
    }
    m->n_work1 = k;
    for (int d = 0; d < W; d++)
        EP_ASSERT(m->cursor[d] == m->s2_send_bytes[d]);

    // Stage 2 over the same transport: only ranks of this node exchange.
    ep_transport *tn = m->t_node ? m->t_node : m->t;
    st = tn->vt->exchange_counts(tn, m->s2_send_bytes, m->s2_recv_bytes);
    if (st != EP_OK) return ep_error_prefix(st, "comm dispatch: stage-2 sizes");
    int64_t ro = 0;
    for (int d = 0; d < W; d++) {
        const int64_t b = m->s2_recv_bytes[d];
        if (b < 0 || ((d == me || m->plan.node_of[d] != my_node) && b != 0))
            return ep_errorf(EP_ERR_COMM,
                             "comm dispatch: stage 2: rank %d announces %lld bytes, expected %s", d,
                             (long long)b,
                             d == me ? "0 (self)"
                             : b < 0 ? ">= 0"
                                     : "0 (another node)");
        m->s2_recv_off[d] = ro;
        ro += b;
    }
    ep_comm_grow_bytes(&m->s2_recvbuf, &m->s2_recvbuf_cap, (size_t)ro);
    st = ep_transport_alltoallv(tn, m->s2_sendbuf, m->s2_send_bytes, m->s2_send_off, m->s2_recvbuf,
                                m->s2_recv_bytes, m->s2_recv_off);
    if (st != EP_OK) return ep_error_prefix(st, "comm dispatch: stage 2");
    m->s2_recv_rec_off[0] = 0;
    for (int s = 0; s < W; s++) {
        int nr;
        int64_t np;
        if ((st = ep_comm_walk(m, s, m->s2_recvbuf + m->s2_recv_off[s], m->s2_recv_bytes[s], false,
                               &nr, &np)) != EP_OK)
            return ep_error_prefix(st, "stage 2");
        m->s2_recv_rec_off[s + 1] = m->s2_recv_rec_off[s] + nr;
        n_pairs += np;
    }
    if (n_pairs > INT32_MAX)
        return ep_errorf(EP_ERR_COMM, "dispatch: %lld pairs received, expected at most %d",
                         (long long)n_pairs, INT32_MAX);
    m->n_rec = m->n_work1 + m->s2_recv_rec_off[W];
    ep_comm_grow_work(m, (size_t)m->n_rec, (size_t)n_pairs);
    for (int s = 0; s < W; s++) {
        const uint8_t *rec = m->s2_recvbuf + m->s2_recv_off[s];
        for (int c = m->s2_recv_rec_off[s]; c < m->s2_recv_rec_off[s + 1]; c++) {
            int64_t rb;
            st = ep_comm_take_record(m, p, pair_rank, s, c - m->s2_recv_rec_off[s], rec, &k, &pk,
                                     &rb);
            if (st != EP_OK) return ep_error_prefix(st, "stage 2");
            rec += rb;
            m->arrived += rb;
        }
    }
    m->pair_off[k] = pk;
    EP_ASSERT(k == m->n_rec && pk == n_pairs);
    return EP_OK;
}

static const char *ep_comm_phase_next(int phase)
{
    switch (phase) {
    case EP_COMM_IDLE:
        return "dispatch_start";
    case EP_COMM_DISPATCH_POSTED:
        return "dispatch_finish";
    case EP_COMM_DISPATCHED:
        return "combine_start";
    default:
        return "combine_finish";
    }
}

static ep_status ep_comm_expect(const ep_comm *m, int phase, const char *call)
{
    if ((int)m->phase == phase) return EP_OK;
    return ep_errorf(EP_ERR_ARG, "comm %s: expected it after %s, found %s due next", call,
                     phase == EP_COMM_IDLE ? "combine_finish (or nothing)"
                                           : ep_comm_phase_next(phase - 1),
                     ep_comm_phase_next(m->phase));
}

ep_status ep_comm_dispatch_start(ep_comm *m, const ep_routes *r, const ep_placement *p,
                                 const int *pair_rank, const float *x, ep_comm_stats *st)
{
    ep_status s = ep_comm_expect(m, EP_COMM_IDLE, "dispatch");
    if (s != EP_OK) return s;
    if (p->world_size != m->world)
        return ep_errorf(EP_ERR_ARG, "comm dispatch: placement is for %d ranks, the cluster has %d",
                         p->world_size, m->world);
    if (r->n_tokens < 0 || (r->n_tokens > 0 && !x))
        return ep_errorf(EP_ERR_ARG, "comm dispatch: %d tokens with %s activations", r->n_tokens,
                         x ? "some" : "no");
    ep_dispatch_plan_build(&m->plan, r, p, pair_rank);
    *st = m->plan.stats;
    const int64_t *send_bytes = m->plan.send_bytes;

    s = m->t->vt->exchange_counts(m->t, send_bytes, m->recv_bytes);
    if (s != EP_OK) return ep_error_prefix(s, "comm dispatch: exchanging sizes");
    int64_t so = 0, ro = 0;
    for (int d = 0; d < m->world; d++) {
        if (m->recv_bytes[d] < 0 || (d == m->rank && m->recv_bytes[d] != 0))
            return ep_errorf(EP_ERR_COMM,
                             "comm dispatch: rank %d announces %lld bytes, expected %s", d,
                             (long long)m->recv_bytes[d], d == m->rank ? "0 (self)" : ">= 0");
        EP_ASSERT(m->plan.send_off[d] == so);
        m->recv_off[d] = ro;
        so += send_bytes[d];
        ro += m->recv_bytes[d];
    }
    ep_comm_grow_bytes(&m->sendbuf, &m->sendbuf_cap, (size_t)so);
    ep_comm_grow_bytes(&m->recvbuf, &m->recvbuf_cap, (size_t)ro);
    ep_comm_pack(m, r, x);

    s = m->t->vt->alltoallv_start(m->t, m->sendbuf, send_bytes, m->plan.send_off, m->recvbuf,
                                  m->recv_bytes, m->recv_off, &m->req);
    if (s != EP_OK) return ep_error_prefix(s, "comm dispatch");
    m->d_r = r;
    m->d_p = p;
    m->d_pair_rank = pair_rank;
    m->d_x = x;
    m->phase = EP_COMM_DISPATCH_POSTED;
    return EP_OK;
}

ep_status ep_comm_dispatch_finish(ep_comm *m, ep_comm_work *work, ep_comm_stats *st)
{
    ep_status s = ep_comm_expect(m, EP_COMM_DISPATCH_POSTED, "dispatch_finish");
    if (s != EP_OK) return s;
    s = m->t->vt->alltoallv_wait(m->t, m->req, NULL);
    if (s != EP_OK) return ep_error_prefix(s, "comm dispatch");
    m->req = NULL;
    // The exchange is over: whatever unpack finds, the next call is a new dispatch.
    m->phase = EP_COMM_IDLE;
    s = m->plan.mode == EP_DISPATCH_HIER
            ? ep_comm_unpack_hier(m, m->d_r, m->d_p, m->d_pair_rank, m->d_x)
            : ep_comm_unpack(m, m->d_r, m->d_p, m->d_pair_rank, m->d_x);
    if (s != EP_OK) return s;
    m->T = m->d_r->n_tokens;
    m->phase = EP_COMM_DISPATCHED;

    work->n_rec = m->n_rec;
    work->pair_off = m->pair_off;
    work->pair_expert = m->pair_expert;
    work->pair_weight = m->pair_weight;
    work->x = m->x;
    work->y = m->y;
    // Measured where it arrived: the records this rank decoded. Per rank it
    // differs from the plan (which counts what the rank sends); summed over
    // ranks the two must be equal.
    st->measured_bytes += m->arrived;
    st->measured_bytes_inter += m->arrived_inter;
    st->recv_pairs = m->pair_off[m->n_rec];
    st->recv_tokens = m->n_rec;
    return EP_OK;
}

ep_status ep_comm_dispatch(ep_comm *m, const ep_routes *r, const ep_placement *p,
                           const int *pair_rank, const float *x, ep_comm_work *work,
                           ep_comm_stats *st)
{
    ep_status s = ep_comm_dispatch_start(m, r, p, pair_rank, x, st);
    return s != EP_OK ? s : ep_comm_dispatch_finish(m, work, st);
}

// ---- combine ----------------------------------------------------------------------

// The combine's byte offsets: exclusive prefix sums of c_send_bytes and
// c_recv_bytes into c_send_off and c_recv_off; their totals in *send_total
// and *recv_total.
static void ep_comm_combine_offsets(ep_comm *m, int64_t *send_total, int64_t *recv_total)
{
    int64_t so = 0, ro = 0;
    for (int d = 0; d < m->world; d++) {
        m->c_send_off[d] = so;
        m->c_recv_off[d] = ro;
        so += m->c_send_bytes[d];
        ro += m->c_recv_bytes[d];
    }
    *send_total = so;
    *recv_total = ro;
}

// Stage A of a hier combine: each stage-2 record's partial sum back to the
// rank that forwarded it (combine_finish adds them up per stage-1 record).
static void ep_comm_combine_layout_hier(ep_comm *m, const ep_comm_work *work)
{
    const size_t H = (size_t)m->hidden;
    const int64_t rb = m->crow_bytes;
    for (int d = 0; d < m->world; d++) {
        m->c_send_bytes[d] = (m->s2_recv_rec_off[d + 1] - m->s2_recv_rec_off[d]) * rb;
        m->c_recv_bytes[d] = (m->s2_dst_off[d + 1] - m->s2_dst_off[d]) * rb;
    }
    int64_t so, ro;
    ep_comm_combine_offsets(m, &so, &ro);
    // The stage-2 payloads are decoded already: their buffers are free.
    ep_comm_grow_bytes(&m->s2_recvbuf, &m->s2_recvbuf_cap, (size_t)so);
    ep_comm_grow_bytes(&m->s2_sendbuf, &m->s2_sendbuf_cap, (size_t)ro);
    uint8_t *dst = m->s2_recvbuf;
    for (int c = m->n_work1; c < m->n_rec; c++, dst += rb)
        ep_comm_encode_row(m, m->cwire, work->y + (size_t)c * H, dst);
}

ep_status ep_comm_combine_start(ep_comm *m, const ep_comm_work *work)
{
    if (m->phase != EP_COMM_DISPATCHED)
        return ep_errorf(EP_ERR_ARG, "comm combine: expected a dispatch before it, found %s",
                         m->phase == EP_COMM_IDLE ? "none" : "one not finished (dispatch_finish)");
    if (work->n_rec != m->n_rec || (m->n_rec > 0 && !work->y))
        return ep_errorf(EP_ERR_ARG,
                         "comm combine: work has %d records (y %s), the dispatch made %d",
                         work->n_rec, work->y ? "set" : "missing", m->n_rec);
    const size_t H = (size_t)m->hidden;
    const int64_t rb = m->crow_bytes;
    const bool hier = m->plan.mode == EP_DISPATCH_HIER;
    const void *sbuf = m->recvbuf;
    void *rbuf = m->sendbuf;
    ep_transport *t = m->t;
    if (hier) {
        ep_comm_combine_layout_hier(m, work);
        sbuf = m->s2_recvbuf;
        rbuf = m->s2_sendbuf;
        if (m->t_node) t = m->t_node;
    } else {
        // Reverse path: one row back per record received, one row in per record sent.
        for (int d = 0; d < m->world; d++) {
            bool self = d == m->rank;
            m->c_send_bytes[d] = self ? 0 : (m->recv_rec_off[d + 1] - m->recv_rec_off[d]) * rb;
            m->c_recv_bytes[d] = self ? 0 : ep_dispatch_plan_n_rec(&m->plan, d) * rb;
        }
        int64_t so, ro;
        ep_comm_combine_offsets(m, &so, &ro);
        // The dispatch payload in recvbuf is decoded into work already, so both
        // buffers are free; they only grow when a combine row outweighs the
        // dispatch record (an fp8 wire) and then stay grown.
        ep_comm_grow_bytes(&m->recvbuf, &m->recvbuf_cap, (size_t)so);
        ep_comm_grow_bytes(&m->sendbuf, &m->sendbuf_cap, (size_t)ro);
        for (int s = 0; s < m->world; s++) {
            if (s == m->rank) continue;
            uint8_t *dst = m->recvbuf + m->c_send_off[s];
            for (int c = m->recv_rec_off[s]; c < m->recv_rec_off[s + 1]; c++, dst += rb)
                ep_comm_encode_row(m, m->cwire, work->y + (size_t)c * H, dst);
        }
        sbuf = m->recvbuf;
        rbuf = m->sendbuf;
    }
    // A failed start leaves the dispatch done: the caller may not combine again.
    m->phase = EP_COMM_IDLE;
    ep_status rc = t->vt->alltoallv_start(t, sbuf, m->c_send_bytes, m->c_send_off, rbuf,
                                          m->c_recv_bytes, m->c_recv_off, &m->req);
    if (rc != EP_OK) return ep_error_prefix(rc, "comm combine");
    m->req_t = t;
    m->c_y = work->y;
    m->phase = EP_COMM_COMBINE_POSTED;
    return EP_OK;
}

// Hier, after stage A arrived: each stage-1 record's node sum (its own
// partial sum, then the forwarded ones by rank), returned with the direct
// records' rows in one exchange (stage B, blocking), laid out as flat's
// combine so ep_comm_sum_out reads it the same way. *incoming: stage-A
// bytes decoded here.
static ep_status ep_comm_combine_hier_return(ep_comm *m, int64_t *incoming)
{
    const size_t H = (size_t)m->hidden;
    const int64_t rb = m->crow_bytes;
    const int W = m->world;
    const int n_s1 = m->s1_off[W];
    for (int c = 0; c < n_s1; c++) {
        float *o = m->s1_sum + (size_t)c * H;
        if (m->s1_work[c] >= 0)
            memcpy(o, m->c_y + (size_t)m->s1_work[c] * H, H * sizeof(float));
        else
            memset(o, 0, H * sizeof(float));
    }
    for (int d = 0; d < W; d++)
        for (int k = m->s2_dst_off[d]; k < m->s2_dst_off[d + 1]; k++) {
            ep_comm_decode_row(
                m, m->cwire,
                m->s2_sendbuf + m->c_recv_off[d] + (int64_t)(k - m->s2_dst_off[d]) * rb, m->row);
            *incoming += rb;
            float *o = m->s1_sum + (size_t)m->s2_rec[k] * H;
            for (size_t h = 0; h < H; h++)
                o[h] += m->row[h];
        }
    for (int d = 0; d < W; d++) {
        m->c_send_bytes[d] = (m->s1_off[d + 1] - m->s1_off[d]) * rb;
        m->c_recv_bytes[d] = d == m->rank ? 0 : ep_dispatch_plan_n_rec(&m->plan, d) * rb;
    }
    int64_t so, ro;
    ep_comm_combine_offsets(m, &so, &ro);
    ep_comm_grow_bytes(&m->recvbuf, &m->recvbuf_cap, (size_t)so);
    ep_comm_grow_bytes(&m->sendbuf, &m->sendbuf_cap, (size_t)ro);
    for (int s = 0; s < W; s++) {
        const bool fwd = ep_comm_forwarded(m, s);
        uint8_t *dst = m->recvbuf + m->c_send_off[s];
        for (int c = m->s1_off[s]; c < m->s1_off[s + 1]; c++, dst += rb)
            ep_comm_encode_row(m, m->cwire,
                               fwd ? m->s1_sum + (size_t)c * H : m->c_y + (size_t)m->s1_work[c] * H,
                               dst);
    }
    ep_status rc = ep_transport_alltoallv(m->t, m->recvbuf, m->c_send_bytes, m->c_send_off,
                                          m->sendbuf, m->c_recv_bytes, m->c_recv_off);
    return rc != EP_OK ? ep_error_prefix(rc, "comm combine: stage B") : EP_OK;
}

ep_status ep_comm_combine_finish(ep_comm *m, float *out, ep_comm_stats *st)
{
    ep_status rc = ep_comm_expect(m, EP_COMM_COMBINE_POSTED, "combine_finish");
    if (rc != EP_OK) return rc;
    if (m->T > 0 && !out)
        return ep_errorf(EP_ERR_ARG, "comm combine: %d tokens to write and no output", m->T);
    const size_t H = (size_t)m->hidden;
    const int64_t rb = m->crow_bytes;
    m->phase = EP_COMM_IDLE;
    rc = m->req_t->vt->alltoallv_wait(m->req_t, m->req, NULL);
    m->req = NULL;
    if (rc != EP_OK) return ep_error_prefix(rc, "comm combine");
    int64_t incoming = 0, incoming_inter = 0;
    const bool hier = m->plan.mode == EP_DISPATCH_HIER;
    if (hier && (rc = ep_comm_combine_hier_return(m, &incoming)) != EP_OK) return rc;
    // Sum in rank order (own records at position `rank`) for reproducible
    // results. The combine rows decoded here are measured where they arrive:
    // the token's rank, which the plan bills them to as well.
    const ep_dispatch_plan *pl = &m->plan;
    const float *own_y = m->c_y + (size_t)(hier ? m->own_work0 : m->recv_rec_off[m->rank]) * H;
    if (m->T > 0) memset(out, 0, (size_t)m->T * H * sizeof(float));
    for (int d = 0; d < m->world; d++) {
        const bool inter = pl->node_of[d] != pl->node_of[m->rank];
        for (int k = 0; k < ep_dispatch_plan_n_rec(pl, d); k++) {
            const float *src;
            if (d == m->rank) {
                src = own_y + (size_t)k * H;
            } else {
                ep_comm_decode_row(m, m->cwire, m->sendbuf + m->c_recv_off[d] + (int64_t)k * rb,
                                   m->row);
                incoming += rb;
                if (inter) incoming_inter += rb;
                src = m->row;
            }
            float *o = out + (size_t)pl->grp_tok[pl->dest_grp[pl->dest_off[d] + k]] * H;
            for (size_t h = 0; h < H; h++)
                o[h] += src[h];
        }
    }
    st->measured_bytes += incoming;
    st->measured_bytes_inter += incoming_inter;
    return EP_OK;
}

ep_status ep_comm_combine(ep_comm *m, const ep_comm_work *work, float *out, ep_comm_stats *st)
{
    // Checked before anything is posted, as a blocking combine always did.
    if (m->phase == EP_COMM_DISPATCHED && m->T > 0 && !out)
        return ep_errorf(EP_ERR_ARG, "comm combine: %d tokens to write and no output", m->T);
    ep_status s = ep_comm_combine_start(m, work);
    return s != EP_OK ? s : ep_comm_combine_finish(m, out, st);
}

ep_status ep_comm_set_mode(ep_comm *m, ep_dispatch_mode mode)
{
    if (m->phase != EP_COMM_IDLE)
        return ep_errorf(EP_ERR_ARG, "comm set_mode: expected no exchange under way, found %s due",
                         ep_comm_phase_next(m->phase));
    // The cluster's node map now (tests and bench re-derive it between layers).
    memcpy(m->plan.node_of, m->cluster->node_of, (size_t)m->world * sizeof(int));
    // On one node hier plans exactly as flat (test_dispatch_plan): skip its
    // empty stage-2 exchanges.
    bool one_node = true;
    for (int d = 1; d < m->world; d++)
        one_node &= m->plan.node_of[d] == m->plan.node_of[0];
    if (one_node && mode == EP_DISPATCH_HIER) mode = EP_DISPATCH_FLAT;
    ep_status st = ep_dispatch_plan_set_mode(&m->plan, mode);
    if (st != EP_OK) return st;
    // Stage 2 over this node's ranks only (a sub-communicator, split for the
    // node map of now): the MPI transport's; others carry it themselves.
    ep_transport_free(m->t_node);
    m->t_node = NULL;
    if (mode == EP_DISPATCH_HIER && !strcmp(m->t->vt->name, "mpi"))
        st = ep_transport_mpi_init_node(m->cluster, &m->t_node);
    return st;
}

int64_t ep_comm_node_bytes_moved(const ep_comm *m)
{
    return m->t_node ? m->t_node->bytes_moved : 0;
}

ep_dispatch_mode ep_comm_mode(const ep_comm *m)
{
    return m->plan.mode;
}
