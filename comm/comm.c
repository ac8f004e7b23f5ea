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
    ep_cluster *cluster; // borrowed
    ep_transport *t;     // borrowed
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

    int T;           // tokens of the last dispatch: rows of combine's out
    int64_t arrived; // dispatch payload bytes the last unpack decoded from other ranks

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

static inline void ep_put_i32(uint8_t *p, int32_t v)
{
    memcpy(p, &v, 4);
}
static inline int32_t ep_get_i32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

// ---- dispatch ---------------------------------------------------------------------

// Packs every record of the plan at the offset the plan gave it.
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
        uint8_t *rec = m->sendbuf + pl->rec_off[g];
        ep_put_i32(rec, i);
        ep_put_i32(rec + 4, n);
        uint8_t *ids = rec + EP_COMM_REC_HEADER_BYTES, *wts = ids + 4 * (size_t)n;
        for (int k = 0; k < n; k++) {
            int j = pl->grp_pair[b + k];
            ep_put_i32(ids + 4 * (size_t)k, r->expert[j]);
            memcpy(wts + 4 * (size_t)k, &r->weight[j], 4);
        }
        ep_comm_encode_row(m, m->wire, x + (size_t)i * H, wts + 4 * (size_t)n);
        m->cursor[d] += ep_comm_dispatch_record_bytes(n, m->hidden, m->wire);
    }
    for (int d = 0; d < m->world; d++)
        EP_ASSERT(m->cursor[d] == pl->send_bytes[d]);
}

// Counts the records and pairs a source rank sent, checking that its payload
// is a whole number of well-formed records.
static ep_status ep_comm_walk(const ep_comm *m, int src, int *n_rec, int64_t *n_pairs)
{
    const uint8_t *buf = m->recvbuf + m->recv_off[src];
    const int64_t len = m->recv_bytes[src];
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
        int64_t rb = n >= 1 ? ep_comm_dispatch_record_bytes(n, m->hidden, m->wire) : 0;
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

// Fills the work arrays: records by source rank, each source's records in
// the order it packed them (its token order); own groups straight from the routes.
static ep_status ep_comm_unpack(ep_comm *m, const ep_routes *r, const ep_placement *p,
                                const int *pair_rank, const float *x)
{
    const size_t H = (size_t)m->hidden;
    int64_t total_pairs = 0;
    m->recv_rec_off[0] = 0;
    for (int s = 0; s < m->world; s++) {
        int n_rec;
        int64_t n_pairs;
        if (s == m->rank) {
            n_rec = ep_dispatch_plan_n_rec(&m->plan, s);
            n_pairs = m->plan.own_pairs;
        } else {
            ep_status st = ep_comm_walk(m, s, &n_rec, &n_pairs);
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
    m->arrived = 0;
    for (int s = 0; s < m->world; s++) {
        if (s == m->rank) {
            const ep_dispatch_plan *pl = &m->plan;
            for (int c = pl->dest_off[s]; c < pl->dest_off[s + 1]; c++) {
                const int g = pl->dest_grp[c];
                m->pair_off[k] = pk;
                for (int q = pl->grp_off[g]; q < pl->grp_off[g + 1]; q++) {
                    int j = pl->grp_pair[q];
                    m->pair_expert[pk] = r->expert[j];
                    m->pair_weight[pk] = r->weight[j];
                    pk++;
                }
                memcpy(m->x + (size_t)k * H, x + (size_t)pl->grp_tok[g] * H, H * sizeof(float));
                k++;
            }
            continue;
        }
        const uint8_t *rec = m->recvbuf + m->recv_off[s];
        for (int c = m->recv_rec_off[s]; c < m->recv_rec_off[s + 1]; c++) {
            int n = ep_get_i32(rec + 4);
            const uint8_t *ids = rec + EP_COMM_REC_HEADER_BYTES, *wts = ids + 4 * (size_t)n;
            m->pair_off[k] = pk;
            for (int q = 0; q < n; q++) {
                int e = ep_get_i32(ids + 4 * (size_t)q);
                // With home placement every expert must live here; with replicas
                // the sender chose the rank, so only the id range can be checked.
                if (e < 0 || e >= p->n_experts || (!pair_rank && p->rank_of[e] != m->rank))
                    return ep_errorf(
                        EP_ERR_COMM,
                        "dispatch from rank %d: record %d names expert %d, expected an "
                        "expert of rank %d among %d (placements differ between ranks?)",
                        s, c - m->recv_rec_off[s], e, m->rank, p->n_experts);
                m->pair_expert[pk] = e;
                memcpy(&m->pair_weight[pk], wts + 4 * (size_t)q, 4);
                pk++;
            }
            ep_comm_decode_row(m, m->wire, wts + 4 * (size_t)n, m->x + (size_t)k * H);
            const int64_t rb = ep_comm_dispatch_record_bytes(n, m->hidden, m->wire);
            rec += rb;
            m->arrived += rb;
            k++;
        }
    }
    m->pair_off[k] = pk;
    EP_ASSERT(k == m->n_rec && pk == total_pairs);
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
    s = ep_comm_unpack(m, m->d_r, m->d_p, m->d_pair_rank, m->d_x);
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

    // Reverse path: one row back per record received, one row in per record sent.
    int64_t so = 0, ro = 0;
    for (int d = 0; d < m->world; d++) {
        bool self = d == m->rank;
        m->c_send_bytes[d] = self ? 0 : (m->recv_rec_off[d + 1] - m->recv_rec_off[d]) * rb;
        m->c_recv_bytes[d] = self ? 0 : ep_dispatch_plan_n_rec(&m->plan, d) * rb;
        m->c_send_off[d] = so;
        m->c_recv_off[d] = ro;
        so += m->c_send_bytes[d];
        ro += m->c_recv_bytes[d];
    }
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
    // A failed start leaves the dispatch done: the caller may not combine again.
    m->phase = EP_COMM_IDLE;
    ep_status rc = m->t->vt->alltoallv_start(m->t, m->recvbuf, m->c_send_bytes, m->c_send_off,
                                             m->sendbuf, m->c_recv_bytes, m->c_recv_off, &m->req);
    if (rc != EP_OK) return ep_error_prefix(rc, "comm combine");
    m->c_y = work->y;
    m->phase = EP_COMM_COMBINE_POSTED;
    return EP_OK;
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
    rc = m->t->vt->alltoallv_wait(m->t, m->req, NULL);
    m->req = NULL;
    if (rc != EP_OK) return ep_error_prefix(rc, "comm combine");
    // Sum in rank order (own records at position `rank`) for reproducible
    // results. The combine rows decoded here are measured where they arrive:
    // the token's rank, which the plan bills them to as well.
    const ep_dispatch_plan *pl = &m->plan;
    int64_t incoming = 0;
    if (m->T > 0) memset(out, 0, (size_t)m->T * H * sizeof(float));
    for (int d = 0; d < m->world; d++) {
        for (int k = 0; k < ep_dispatch_plan_n_rec(pl, d); k++) {
            const float *src;
            if (d == m->rank) {
                src = m->c_y + (size_t)(m->recv_rec_off[d] + k) * H;
            } else {
                ep_comm_decode_row(m, m->cwire, m->sendbuf + m->c_recv_off[d] + (int64_t)k * rb,
                                   m->row);
                incoming += rb;
                src = m->row;
            }
            float *o = out + (size_t)pl->grp_tok[pl->dest_grp[pl->dest_off[d] + k]] * H;
            for (size_t h = 0; h < H; h++)
                o[h] += src[h];
        }
    }
    st->measured_bytes += incoming;
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
