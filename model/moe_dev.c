// The MoE layer with its activations on the device (ep_moe_forward_dev,
// backend cuda): x and y are device memory and no hidden row crosses host
// memory. The gate GEMM and the routing kernel run on the device (router/
// cuda); the CSR routes come to the host (META), which plans the dispatch
// with the common ep_dispatch_plan (so stats and bytes are ep_comm's), sends
// each record's header (token, pairs, expert ids, weights) over MPI and its
// row, packed on the device in the wire dtype, over NCCL from device
// buffers; the experts read the received rows in place, the partial sums go
// back over NCCL and are summed per token on the device in the host
// combine's order. docs/cuda.md "The MoE layer on the device" has the data
// flow and what crosses PCIe. EP_CUDA=ON builds only (moe_cuda_off.c refuses).
#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/cuda_util.h"
#include "comm/comm_impl.h"
#include "comm/cuda/wire_cuda.h"
#include "comm/dispatch_plan.h"
#include "model/moe_cuda_impl.h"
#include "router/cuda/route_token.h"
#include "router/cuda/router_cuda.h"
#include "router/policy.h"

_Static_assert(EP_ROUTE_MAX_CAND == 64, "moe_dev_mem.c predicts the router's rows of 64");

// Host arrays grow like the device ones (ep_cuda_grow): by half again at least.
#define EP_DEV_GROW(p, cap, need)                                                                  \
    do {                                                                                           \
        size_t need_ = (size_t)(need);                                                             \
        if (need_ > (cap)) {                                                                       \
            (cap) = EP_MAX(need_, (cap) + (cap) / 2);                                              \
            (p) = ep_xrealloc((p), (cap) * sizeof *(p));                                           \
        }                                                                                          \
    } while (0)

struct ep_moe_dev {
    int H, W, rank, n_experts;
    ep_dtype wire, cwire;          // dispatch rows, combine rows (comm.h's rule)
    ep_wire_row row, crow;         // the same for the kernels
    int64_t row_bytes, crow_bytes; // one row on the wire (ep_comm_row_bytes)
    int device;
    cudaStream_t stream;

    ep_router_cuda *router;
    bool *gate_up; // [n_layers] whether the router holds that layer's gate
    float *logits; // [cap_tokens, n_experts] host: a host-routed policy's logits
    ep_dispatch_plan plan;

    // Per peer ([W]): headers (MPI, host), rows (NCCL, device), combine rows.
    int64_t *h_send, *h_soff, *h_recv, *h_roff;
    int64_t *r_send, *r_soff, *r_recv, *r_roff;
    int64_t *c_send, *c_soff, *c_recv, *c_roff;
    int *src_rec; // [W + 1] work records from each source rank (own at `rank`)
    int *src_row; // [W + 1] received rows before each source (own rank: none)

    // Host control data, grown to the largest step.
    uint8_t *hdr_out, *hdr_in;
    size_t hdr_out_cap, hdr_in_cap;
    int *send_tok; // [sent records] the token of each row packed, in send order
    size_t send_tok_cap;
    int *work_idx; // [n_rec] received row, or -(token + 1) for own records
    int *pair_off; // [n_rec + 1]
    size_t work_cap;
    int *pair_expert;
    float *pair_weight;
    size_t pair_cap;
    int *back_idx; // [records back] work records whose partial sums go back
    size_t back_cap;
    int *tok_off; // [T + 1] combine entries per token
    size_t tok_cap;
    int *tok_ent; // [groups] combine row, or -(work record + 1) for own records
    int *tok_cur; // [T] fill cursor
    size_t ent_cap;

    // Device buffers (bytes held in cap[]).
    uint8_t *d_send, *d_recv, *d_csend, *d_crecv;
    float *d_wx, *d_wy; // [n_rec, H] work rows in, partial sums out
    int *d_idx, *d_off, *d_ent;
    size_t cap[EP_MOE_DEV_N_BUFS]; // in the order above (ep_moe_dev_reserve's)
};

// ---- state --------------------------------------------------------------------------------

void ep_moe_dev_free(ep_moe_dev *d)
{
    if (!d) return;
    (void)cudaSetDevice(d->device);
    if (d->stream) (void)cudaStreamSynchronize(d->stream);
    void *dev[] = {d->d_send, d->d_recv, d->d_csend, d->d_crecv, d->d_wx,
                   d->d_wy,   d->d_idx,  d->d_off,   d->d_ent};
    for (size_t i = 0; i < EP_ARRAY_LEN(dev); i++)
        (void)cudaFree(dev[i]);
    if (d->stream) (void)cudaStreamDestroy(d->stream);
    ep_router_cuda_free(d->router);
    ep_dispatch_plan_free(&d->plan);
    void *host[] = {d->gate_up,  d->logits,   d->h_send,  d->h_soff,      d->h_recv,
                    d->h_roff,   d->r_send,   d->r_soff,  d->r_recv,      d->r_roff,
                    d->c_send,   d->c_soff,   d->c_recv,  d->c_roff,      d->src_rec,
                    d->src_row,  d->hdr_out,  d->hdr_in,  d->send_tok,    d->work_idx,
                    d->pair_off, d->back_idx, d->tok_off, d->pair_expert, d->pair_weight,
                    d->tok_ent,  d->tok_cur};
    for (size_t i = 0; i < EP_ARRAY_LEN(host); i++)
        free(host[i]);
    free(d);
}

void ep_moe_dev_bytes(const ep_moe_dev *d, uint64_t *router, uint64_t *exchange)
{
    *router = d ? ep_router_cuda_device_bytes(d->router) : 0;
    *exchange = 0;
    for (size_t i = 0; d && i < EP_ARRAY_LEN(d->cap); i++)
        *exchange += d->cap[i];
}

// The wire rows the kernels encode (comm_init admits no other wire).
static ep_status wire_row(ep_dtype t, ep_wire_row *out)
{
    switch (t) {
    case EP_DTYPE_F32:
        *out = EP_WIRE_ROW_F32;
        return EP_OK;
    case EP_DTYPE_BF16:
        *out = EP_WIRE_ROW_BF16;
        return EP_OK;
    case EP_DTYPE_F16:
        *out = EP_WIRE_ROW_F16;
        return EP_OK;
    case EP_DTYPE_F8_E4M3:
        *out = EP_WIRE_ROW_FP8;
        return EP_OK;
    default:
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "moe forward_dev: --wire %s: expected f32, bf16, f16 or fp8",
                         ep_comm_wire_name(t));
    }
}

static ep_status dev_open(ep_moe *m, ep_moe_cuda_dev *cd, ep_moe_dev **out)
{
    const ep_model_cfg *c = m->cfg;
    ep_moe_dev *d = ep_xcalloc(1, sizeof *d);
    d->H = c->hidden;
    d->W = m->cl->world_size;
    d->rank = m->cl->rank;
    d->n_experts = c->n_experts;
    d->wire = m->opts.wire;
    d->cwire = ep_comm_combine_wire(d->wire);
    d->row_bytes = ep_comm_row_bytes(d->H, d->wire);
    d->crow_bytes = ep_comm_combine_record_bytes(d->H, d->wire);
    d->device = ep_gpu_device(cd->gpu);
    ep_status st;
    if ((st = wire_row(d->wire, &d->row)) || (st = wire_row(d->cwire, &d->crow))) goto err;
    if ((st = ep_gpu_make_current(cd->gpu))) goto err;
    if ((st = EP_CUDA_ST(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking)))) goto err;
    const int cap = m->opts.cap_tokens > 0 ? m->opts.cap_tokens : 1;
    if ((st = ep_router_cuda_init(c, cap, cd->gpu, &d->router))) goto err;
    d->gate_up = ep_xcalloc((size_t)c->n_layers, sizeof(bool));
    d->logits = ep_xmalloc((size_t)cap * c->n_experts * sizeof(float));
    if ((st = ep_dispatch_plan_init(&d->plan, d->W, d->rank, m->cl->node_of, d->H, d->wire)))
        goto err;
    const size_t W = (size_t)d->W;
    int64_t **per_peer[] = {&d->h_send, &d->h_soff, &d->h_recv, &d->h_roff, &d->r_send, &d->r_soff,
                            &d->r_recv, &d->r_roff, &d->c_send, &d->c_soff, &d->c_recv, &d->c_roff};
    for (size_t i = 0; i < EP_ARRAY_LEN(per_peer); i++)
        *per_peer[i] = ep_xcalloc(W, sizeof(int64_t));
    d->src_rec = ep_xcalloc(W + 1, sizeof(int));
    d->src_row = ep_xcalloc(W + 1, sizeof(int));
    // Reserved for a balanced step once (ep_moe_dev_mem_predict prices it).
    size_t need[EP_MOE_DEV_N_BUFS];
    ep_moe_dev_reserve(c, &m->opts, d->W, need);
    void **bufs[EP_MOE_DEV_N_BUFS] = {
        (void **)&d->d_send,  (void **)&d->d_recv, (void **)&d->d_csend,
        (void **)&d->d_crecv, (void **)&d->d_wx,   (void **)&d->d_wy,
        (void **)&d->d_idx,   (void **)&d->d_off,  (void **)&d->d_ent};
    for (int i = 0; i < EP_MOE_DEV_N_BUFS; i++)
        if ((st = ep_cuda_grow(bufs[i], &d->cap[i], need[i], "moe forward_dev reservation")))
            goto err;
    *out = d;
    return EP_OK;
err:
    ep_moe_dev_free(d);
    return ep_error_prefix(st, "moe forward_dev: setting up the device path");
}

// ---- dispatch -----------------------------------------------------------------------------

// Offsets of per-peer sizes; returns the total.
static int64_t prefix(const int64_t *bytes, int64_t *off, int W)
{
    int64_t o = 0;
    for (int d = 0; d < W; d++) {
        off[d] = o;
        o += bytes[d];
    }
    return o;
}

// The headers of the plan's records to other ranks (destinations ascending,
// token order within one: the order of the plan's send buffer) into
// hdr_out, the token of each into send_tok; h_send and r_send per peer.
// Returns the records sent.
static int pack_headers(ep_moe_dev *d, const ep_routes *r)
{
    const ep_dispatch_plan *pl = &d->plan;
    int64_t hdr = 0;
    int n_sent = 0;
    for (int g = 0; g < pl->n_grp; g++)
        if (pl->grp_dest[g] != d->rank) {
            hdr += EP_COMM_REC_HEADER_BYTES +
                   (int64_t)EP_COMM_REC_PAIR_BYTES * (pl->grp_off[g + 1] - pl->grp_off[g]);
            n_sent++;
        }
    EP_DEV_GROW(d->hdr_out, d->hdr_out_cap, hdr + 1);
    EP_DEV_GROW(d->send_tok, d->send_tok_cap, n_sent + 1);
    uint8_t *p = d->hdr_out;
    int k = 0;
    for (int dst = 0; dst < d->W; dst++) {
        const uint8_t *p0 = p;
        if (dst != d->rank)
            for (int c = pl->dest_off[dst]; c < pl->dest_off[dst + 1]; c++) {
                const int g = pl->dest_grp[c], b = pl->grp_off[g], n = pl->grp_off[g + 1] - b;
                ep_put_i32(p, pl->grp_tok[g]);
                ep_put_i32(p + 4, n);
                for (int q = 0; q < n; q++) {
                    const int j = pl->grp_pair[b + q];
                    ep_put_i32(p + EP_COMM_REC_HEADER_BYTES + 4 * (size_t)q, r->expert[j]);
                    memcpy(p + EP_COMM_REC_HEADER_BYTES + 4 * (size_t)(n + q), &r->weight[j], 4);
                }
                p += EP_COMM_REC_HEADER_BYTES + EP_COMM_REC_PAIR_BYTES * (size_t)n;
                d->send_tok[k++] = pl->grp_tok[g];
            }
        d->h_send[dst] = p - p0;
        d->r_send[dst] = dst == d->rank ? 0 : ep_dispatch_plan_n_rec(pl, dst) * d->row_bytes;
        // Header + row is the record the plan priced.
        EP_ASSERT(d->h_send[dst] + d->r_send[dst] == pl->send_bytes[dst]);
    }
    EP_ASSERT(k == n_sent);
    return n_sent;
}

// Counts the records and pairs rank s's headers hold (len bytes at buf),
// checking they are whole, well-formed and name experts of this rank.
static ep_status walk_headers(const ep_moe_dev *d, const ep_placement *p, const int *pair_rank,
                              int s, const uint8_t *buf, int64_t len, int *n_rec, int64_t *n_pairs)
{
    int64_t pos = 0;
    *n_rec = 0;
    *n_pairs = 0;
    while (pos < len) {
        const int32_t tok = len - pos >= 8 ? ep_get_i32(buf + pos) : -1;
        const int32_t n = len - pos >= 8 ? ep_get_i32(buf + pos + 4) : 0;
        const int64_t hb = EP_COMM_REC_HEADER_BYTES + (int64_t)EP_COMM_REC_PAIR_BYTES * n;
        if (tok < 0 || n < 1 || hb > len - pos)
            return ep_errorf(EP_ERR_COMM,
                             "moe forward_dev: headers from rank %d: record at byte %lld of %lld: "
                             "expected token >= 0 and 1 <= n pairs fitting, found token %d, n %d",
                             s, (long long)pos, (long long)len, tok, n);
        for (int q = 0; q < n; q++) {
            const int e = ep_get_i32(buf + pos + EP_COMM_REC_HEADER_BYTES + 4 * (size_t)q);
            if (e < 0 || e >= p->n_experts || (!pair_rank && p->rank_of[e] != d->rank))
                return ep_errorf(EP_ERR_COMM,
                                 "moe forward_dev: headers from rank %d: record %d names expert "
                                 "%d, expected an expert of rank %d among %d",
                                 s, *n_rec, e, d->rank, p->n_experts);
        }
        pos += hb;
        (*n_rec)++;
        *n_pairs += n;
    }
    return EP_OK;
}

// The work records by source rank (own groups at `rank`, straight from the
// routes; the others from their headers, in arrival order): pair arrays and
// where each record's row is. Sets src_rec, src_row, r_recv; returns n_rec.
static ep_status build_work(ep_moe_dev *d, const ep_routes *r, const ep_placement *p,
                            const int *pair_rank, int *n_rec_out)
{
    const ep_dispatch_plan *pl = &d->plan;
    int64_t total_pairs = 0;
    d->src_rec[0] = d->src_row[0] = 0;
    for (int s = 0; s < d->W; s++) {
        int n_rec = 0;
        int64_t n_pairs = 0;
        if (s == d->rank) {
            n_rec = ep_dispatch_plan_n_rec(pl, s);
            n_pairs = pl->own_pairs;
        } else {
            ep_status st = walk_headers(d, p, pair_rank, s, d->hdr_in + d->h_roff[s], d->h_recv[s],
                                        &n_rec, &n_pairs);
            if (st != EP_OK) return st;
        }
        d->src_rec[s + 1] = d->src_rec[s] + n_rec;
        d->src_row[s + 1] = d->src_row[s] + (s == d->rank ? 0 : n_rec);
        d->r_recv[s] = s == d->rank ? 0 : n_rec * d->row_bytes;
        total_pairs += n_pairs;
    }
    if (total_pairs > INT32_MAX)
        return ep_errorf(EP_ERR_COMM, "moe forward_dev: %lld pairs received, expected at most %d",
                         (long long)total_pairs, INT32_MAX);
    const int n_rec = d->src_rec[d->W];
    EP_DEV_GROW(d->work_idx, d->work_cap, n_rec + 1);
    d->pair_off = ep_xrealloc(d->pair_off, d->work_cap * sizeof(int));
    EP_DEV_GROW(d->pair_expert, d->pair_cap, total_pairs + 1);
    d->pair_weight = ep_xrealloc(d->pair_weight, d->pair_cap * sizeof(float));
    int k = 0, pk = 0;
    for (int s = 0; s < d->W; s++) {
        if (s == d->rank) {
            for (int c = pl->dest_off[s]; c < pl->dest_off[s + 1]; c++, k++) {
                const int g = pl->dest_grp[c];
                d->pair_off[k] = pk;
                for (int q = pl->grp_off[g]; q < pl->grp_off[g + 1]; q++, pk++) {
                    d->pair_expert[pk] = r->expert[pl->grp_pair[q]];
                    d->pair_weight[pk] = r->weight[pl->grp_pair[q]];
                }
                d->work_idx[k] = -(pl->grp_tok[g] + 1);
            }
            continue;
        }
        const uint8_t *rec = d->hdr_in + d->h_roff[s];
        for (int i = 0; i < d->src_rec[s + 1] - d->src_rec[s]; i++, k++) {
            const int n = ep_get_i32(rec + 4);
            d->pair_off[k] = pk;
            for (int q = 0; q < n; q++, pk++) {
                d->pair_expert[pk] = ep_get_i32(rec + EP_COMM_REC_HEADER_BYTES + 4 * (size_t)q);
                memcpy(&d->pair_weight[pk], rec + EP_COMM_REC_HEADER_BYTES + 4 * (size_t)(n + q),
                       4);
            }
            d->work_idx[k] = d->src_row[s] + i;
            rec += EP_COMM_REC_HEADER_BYTES + EP_COMM_REC_PAIR_BYTES * (size_t)n;
        }
    }
    d->pair_off[k] = pk;
    EP_ASSERT(k == n_rec && pk == total_pairs);
    *n_rec_out = n_rec;
    return EP_OK;
}

// Uploads n ints of control data to *dst (grown; slot i of d->cap).
static ep_status upload_idx(ep_moe_dev *d, int **dst, int i, const int *src, size_t n,
                            const char *what)
{
    ep_status st = ep_cuda_grow((void **)dst, &d->cap[i], (n + 1) * sizeof(int), what);
    if (st == EP_OK && n > 0)
        st = ep_cuda_copy_cls(*dst, src, n * sizeof(int), cudaMemcpyHostToDevice, d->stream,
                              EP_COPY_META, what);
    return st;
}

// Bytes that arrived from other ranks (and the part from other nodes).
static void arrived(const ep_moe_dev *d, const int *node_of, const int64_t *a, const int64_t *b,
                    int64_t *all, int64_t *inter)
{
    for (int s = 0; s < d->W; s++) {
        if (s == d->rank) continue;
        const int64_t v = a[s] + (b ? b[s] : 0);
        *all += v;
        if (node_of[s] != node_of[d->rank]) *inter += v;
    }
}

// Plan, headers over MPI, rows over NCCL, work rows into d_wx. *n_rec: work records.
static ep_status dispatch(ep_moe *m, ep_moe_cuda_dev *cd, ep_moe_dev *d, const ep_routes *r,
                          const ep_placement *p, const int *pair_rank, const float *x_dev,
                          ep_comm_stats *ls, int *n_rec)
{
    ep_dispatch_plan_build(&d->plan, r, p, pair_rank);
    *ls = d->plan.stats;
    const int n_sent = pack_headers(d, r);
    ep_transport *ht = cd->hdr, *nt = m->be.tp;
    ep_status st = ht->vt->exchange_counts(ht, d->h_send, d->h_recv);
    if (st != EP_OK) return ep_error_prefix(st, "moe forward_dev: header sizes");
    for (int s = 0; s < d->W; s++)
        if (d->h_recv[s] < 0 || (s == d->rank && d->h_recv[s] != 0))
            return ep_errorf(EP_ERR_COMM, "moe forward_dev: rank %d announces %lld header bytes", s,
                             (long long)d->h_recv[s]);
    prefix(d->h_send, d->h_soff, d->W);
    EP_DEV_GROW(d->hdr_in, d->hdr_in_cap, prefix(d->h_recv, d->h_roff, d->W) + 1);
    if ((st = ep_transport_alltoallv(ht, d->hdr_out, d->h_send, d->h_soff, d->hdr_in, d->h_recv,
                                     d->h_roff)))
        return ep_error_prefix(st, "moe forward_dev: headers");
    if ((st = build_work(d, r, p, pair_rank, n_rec))) return st;

    // Rows: packed on the device in the plan's send order, then NCCL from
    // device buffers (the transport sends them as they are).
    const int64_t so = prefix(d->r_send, d->r_soff, d->W), ro = prefix(d->r_recv, d->r_roff, d->W);
    if ((st = ep_cuda_grow((void **)&d->d_send, &d->cap[0], (size_t)so, "dispatch rows out")) ||
        (st = ep_cuda_grow((void **)&d->d_recv, &d->cap[1], (size_t)ro, "dispatch rows in")) ||
        (st = upload_idx(d, &d->d_idx, 6, d->send_tok, (size_t)n_sent, "dispatch row tokens")))
        return st;
    EP_CUDA_CHECK(ep_cuda_wire_pack(x_dev, d->d_idx, n_sent, d->H, d->row, d->row_bytes, d->d_send,
                                    d->stream));
    EP_CUDA_CHECK(cudaStreamSynchronize(d->stream)); // NCCL's stream reads d_send next
    if ((st = ep_transport_alltoallv(nt, d->d_send, d->r_send, d->r_soff, d->d_recv, d->r_recv,
                                     d->r_roff)))
        return ep_error_prefix(st, "moe forward_dev: dispatch rows");
    arrived(d, d->plan.node_of, d->h_recv, d->r_recv, &ls->measured_bytes,
            &ls->measured_bytes_inter);
    ls->recv_pairs = d->pair_off[*n_rec];
    ls->recv_tokens = *n_rec;

    const size_t rows = (size_t)(*n_rec > 0 ? *n_rec : 1) * d->H * sizeof(float);
    if ((st = ep_cuda_grow((void **)&d->d_wx, &d->cap[4], rows, "work rows")) ||
        (st = ep_cuda_grow((void **)&d->d_wy, &d->cap[5], rows, "partial sums")) ||
        (st = upload_idx(d, &d->d_idx, 6, d->work_idx, (size_t)*n_rec, "work row sources")))
        return st;
    EP_CUDA_CHECK(ep_cuda_wire_gather(d->d_recv, x_dev, d->d_idx, *n_rec, d->H, d->row,
                                      d->row_bytes, d->d_wx, d->stream));
    EP_CUDA_CHECK(cudaStreamSynchronize(d->stream)); // the experts' stream reads d_wx
    return EP_OK;
}

// ---- combine ------------------------------------------------------------------------------

// Partial sums back to the token ranks over NCCL (device buffers), then
// y_dev[t] = Σ in rank order (own records at `rank`), as ep_comm_combine_finish.
static ep_status combine(ep_moe *m, ep_moe_dev *d, int T, float *y_dev, ep_comm_stats *ls)
{
    const ep_dispatch_plan *pl = &d->plan;
    const int me = d->rank, n_back = d->src_rec[d->W] - ep_dispatch_plan_n_rec(pl, me);
    EP_DEV_GROW(d->back_idx, d->back_cap, n_back + 1);
    int b = 0;
    for (int s = 0; s < d->W; s++) {
        const int n = d->src_rec[s + 1] - d->src_rec[s];
        d->c_send[s] = s == me ? 0 : n * d->crow_bytes;
        d->c_recv[s] = s == me ? 0 : ep_dispatch_plan_n_rec(pl, s) * d->crow_bytes;
        for (int k = d->src_rec[s]; s != me && k < d->src_rec[s + 1]; k++)
            d->back_idx[b++] = k;
    }
    EP_ASSERT(b == n_back);
    const int64_t so = prefix(d->c_send, d->c_soff, d->W), ro = prefix(d->c_recv, d->c_roff, d->W);
    ep_status st;
    if ((st = ep_cuda_grow((void **)&d->d_csend, &d->cap[2], (size_t)so, "combine rows out")) ||
        (st = ep_cuda_grow((void **)&d->d_crecv, &d->cap[3], (size_t)ro, "combine rows in")) ||
        (st = upload_idx(d, &d->d_idx, 6, d->back_idx, (size_t)n_back, "combine row records")))
        return st;
    EP_CUDA_CHECK(ep_cuda_wire_pack(d->d_wy, d->d_idx, n_back, d->H, d->crow, d->crow_bytes,
                                    d->d_csend, d->stream));
    EP_CUDA_CHECK(cudaStreamSynchronize(d->stream));
    if ((st = ep_transport_alltoallv(m->be.tp, d->d_csend, d->c_send, d->c_soff, d->d_crecv,
                                     d->c_recv, d->c_roff)))
        return ep_error_prefix(st, "moe forward_dev: combine rows");
    arrived(d, pl->node_of, d->c_recv, NULL, &ls->measured_bytes, &ls->measured_bytes_inter);

    // Per token its rows in rank order: one group per (token, rank), so
    // walking ranks ascending appends each token's entries in that order.
    EP_DEV_GROW(d->tok_off, d->tok_cap, (size_t)T + 1);
    d->tok_cur = ep_xrealloc(d->tok_cur, d->tok_cap * sizeof(int));
    EP_DEV_GROW(d->tok_ent, d->ent_cap, (size_t)pl->n_grp + 1);
    memset(d->tok_off, 0, ((size_t)T + 1) * sizeof(int));
    for (int g = 0; g < pl->n_grp; g++)
        d->tok_off[pl->grp_tok[g] + 1]++;
    for (int t = 0; t < T; t++) {
        d->tok_off[t + 1] += d->tok_off[t];
        d->tok_cur[t] = d->tok_off[t];
    }
    int row = 0;
    for (int s = 0; s < d->W; s++)
        for (int k = 0; k < ep_dispatch_plan_n_rec(pl, s); k++) {
            const int t = pl->grp_tok[pl->dest_grp[pl->dest_off[s] + k]];
            d->tok_ent[d->tok_cur[t]++] = s == me ? -(d->src_rec[me] + k + 1) : row++;
        }
    if ((st = upload_idx(d, &d->d_off, 7, d->tok_off, (size_t)T + 1, "combine token offsets")) ||
        (st = upload_idx(d, &d->d_ent, 8, d->tok_ent, (size_t)pl->n_grp, "combine entries")))
        return st;
    EP_CUDA_CHECK(ep_cuda_wire_sum(d->d_crecv, d->d_wy, d->d_off, d->d_ent, T, d->H, d->crow,
                                   d->crow_bytes, y_dev, d->stream));
    EP_CUDA_CHECK(cudaStreamSynchronize(d->stream)); // the shared experts add to y_dev next
    return EP_OK;
}

// ---- the layer ----------------------------------------------------------------------------

// Whether the device router runs p for this call: its policies, without a
// routing context it would need (comm-aware Ban, per-token Pick domains).
static bool routes_on_device(const ep_moe *m, const ep_policy *p)
{
    return ep_router_cuda_supports(p) && !p->cfg.ban.locality && !m->token_domain;
}

static ep_status route(ep_moe *m, ep_moe_dev *d, const ep_policy *p, int layer, const float *x_dev,
                       int T)
{
    ep_status st;
    if (!d->gate_up[layer]) { // once per layer, the first time it runs
        if ((st = ep_router_cuda_set_gate(d->router, layer, m->gate_w[layer]))) return st;
        d->gate_up[layer] = true;
    }
    if (routes_on_device(m, p))
        return ep_router_cuda_route_dev(d->router, p, layer, x_dev, T, &m->routes);
    // The host router from device logits: [T, n_experts] fp32 cross as ACT.
    if ((st = ep_router_cuda_logits_dev(d->router, layer, x_dev, T, d->logits))) return st;
    const ep_route_ctx ctx = ep_moe_route_ctx(m, layer);
    return ep_router_route_logits(m->router, p, &ctx, layer, d->logits, T, &m->routes);
}

static ep_status check_dev_call(const ep_moe *m)
{
    if (m->opts.backend != EP_MOE_BACKEND_CUDA)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "moe forward_dev: expected --backend cuda (activations in device "
                         "memory), found --backend %s",
                         ep_moe_backend_name(m->opts.backend));
    if (m->opts.micro_batches > 1)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "moe forward_dev: --micro-batches %d: expected 1 (the device path "
                         "runs the batch as one exchange)",
                         m->opts.micro_batches);
    if (ep_comm_mode(m->comm[0]) != EP_DISPATCH_FLAT)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "moe forward_dev: --dispatch hier: expected flat (the device path "
                         "exchanges in one stage)");
    if (m->opts.phase_barrier)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "moe forward_dev: phase_barrier: expected off (the device path does not "
                         "time its phases apart)");
    return EP_OK;
}

ep_status ep_moe_forward_dev(ep_moe *m, const ep_policy *p, int layer, const float *x_dev, int T,
                             float *y_dev, ep_comm_stats *st, ep_moe_times *tm)
{
    ep_status s = check_dev_call(m);
    if (s == EP_OK) s = ep_moe_check_call(m, p, layer, T);
    if (s != EP_OK) return s;
    if (T > 0 && (!x_dev || !y_dev))
        return ep_errorf(EP_ERR_ARG,
                         "moe forward_dev: %d tokens, expected device x and y, found "
                         "x %s, y %s",
                         T, x_dev ? "set" : "NULL", y_dev ? "set" : "NULL");
    ep_moe_cuda_dev *cd = m->be.dev;
    if (!cd->dev && (s = dev_open(m, cd, &cd->dev))) return s;
    ep_moe_dev *d = cd->dev;
    EP_CUDA_CHECK(cudaSetDevice(d->device));

    double t0 = ep_now_us();
    if ((s = route(m, d, p, layer, x_dev, T))) return ep_error_prefix(s, "moe forward_dev");
    double t1 = ep_now_us();
    const ep_placement *pl = ep_moe_layer_placement(m, layer);
    const int *pair_rank = ep_moe_choose_ranks(m, layer, &m->routes);
    ep_comm_stats ls;
    int n_rec = 0;
    if ((s = dispatch(m, cd, d, &m->routes, pl, pair_rank, x_dev, &ls, &n_rec))) return s;
    double t2 = ep_now_us();
    if ((s = ep_experts_cuda_forward_dev(cd->experts, layer, n_rec, d->pair_off, d->pair_expert,
                                         d->pair_weight, d->d_wx, d->d_wy)))
        return ep_error_prefix(s, "moe forward_dev");
    double t3 = ep_now_us();
    if ((s = combine(m, d, T, y_dev, &ls))) return s;
    double t4 = ep_now_us();
    if ((s = ep_experts_cuda_shared_forward_dev(cd->experts, layer, x_dev, T, y_dev)))
        return ep_error_prefix(s, "moe forward_dev");
    if (st) ep_comm_stats_add(st, &ls);
    if (tm) {
        tm->route_us += t1 - t0;
        tm->dispatch_us += t2 - t1;
        tm->experts_us += t3 - t2;
        tm->combine_us += t4 - t3;
        tm->shared_us += ep_now_us() - t4;
    }
    return EP_OK;
}
