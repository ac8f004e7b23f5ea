// Dispatch and combine of one MoE layer across ranks, and the byte
// accounting. A token is sent once per destination rank however many of its
// experts live there (flat), or once per other node and forwarded inside it
// (hier, ep_dispatch_mode); a token whose experts are all on its own rank
// costs no bytes. The plan is pure (no communication) so the simulator can reuse it;
// the payload moves through an ep_transport (MPI here; NCCL on GPUs).
#ifndef EP_COMM_H
#define EP_COMM_H

#include "cluster/cluster.h"
#include "cluster/placement.h"
#include "common/dtype.h"
#include "common/routes.h"

// Wire format of one dispatch record (token i -> rank r), 4-byte aligned:
//   int32 token (index on the source rank), int32 n (pairs for rank r),
//   n x int32 expert id, n x float32 weight, hidden x wire-dtype values
// (bf16 wire rounds the row up to a multiple of 2 elements; the F8_E4M3
// wire sends the fp8 row of common/dtype.h: one fp32 scale per 128
// channels, then hidden e4m3 codes, padded to 4 bytes).
// One combine record (rank r -> token i's rank): hidden values of the
// weighted partial sum in the combine dtype (the wire dtype, except BF16 for
// an F8_E4M3 wire: partial sums never travel in fp8), in the order the
// dispatch records arrived.
int64_t ep_comm_dispatch_record_bytes(int n_pairs, int hidden, ep_dtype wire);
// Under hier dispatch a stage-1 record (token -> the forwarding rank of
// another node) also carries n x int32 destination rank after the weights,
// so the forwarder needs no placement lookup and replicas work:
// ep_comm_dispatch_record_bytes + 4n. Stage-2 and direct records are plain.
int64_t ep_comm_hier_record_bytes(int n_pairs, int hidden, ep_dtype wire);
int64_t ep_comm_combine_record_bytes(int hidden, ep_dtype wire);
ep_dtype ep_comm_combine_wire(ep_dtype wire); // F8_E4M3 -> BF16, others unchanged
// Wire dtype from its command-line name (f32, bf16, f16, fp8); EP_ERR_ARG
// naming `option` and what was found. ep_comm_wire_name is the inverse.
ep_status ep_comm_wire_parse(const char *option, const char *s, ep_dtype *out);
const char *ep_comm_wire_name(ep_dtype wire);

// How a layer's tokens reach the ranks of their experts.
// FLAT: one record per (token, destination rank), straight there.
// HIER (DeepEP's normal kernels): a token goes once per other node, to the
// forwarding rank there (the rank of that node with the sender's local index,
// or local index mod the node's size when the node is smaller), carrying its
// pairs for that whole node; stage 2 forwards within the node to the ranks
// holding those experts. Pairs on the sender's own node go straight there.
// Combine mirrors it: the forwarder sums its node's partial sums, then sends
// one row per (token, node) back.
typedef enum { EP_DISPATCH_FLAT, EP_DISPATCH_HIER } ep_dispatch_mode;
// "flat" or "hier"; EP_ERR_ARG naming `option` and what was found.
ep_status ep_dispatch_mode_parse(const char *option, const char *s, ep_dispatch_mode *out);
const char *ep_dispatch_mode_name(ep_dispatch_mode mode);

// Counters for one layer on one rank (sum them over layers and ranks).
// "bytes" are payload bytes to *other* ranks; intra = total - inter. All are
// billed to the token's rank, the hier stage 2 (forwarder -> expert rank) and
// its combine return included.
typedef struct {
    int64_t tokens;     // tokens routed on this rank
    int64_t pairs;      // (token, expert) pairs kept, Σ K_i
    int64_t sends;      // (token, remote rank) records sent
    int64_t dest_ranks; // Σ over tokens of distinct ranks holding its experts (own incl.)
    int64_t dispatch_bytes, combine_bytes;
    int64_t dispatch_bytes_inter, combine_bytes_inter; // part crossing nodes
    // The fixed-k_base counterfactual (routes->base_expert) on the same placement.
    int64_t base_pairs, base_sends, base_dest_ranks;
    int64_t base_dispatch_bytes, base_combine_bytes;
    int64_t base_dispatch_bytes_inter, base_combine_bytes_inter;
    // Per stage: bytes that stay inside a node (flat: every send to a rank of
    // this node; hier: direct sends on this node, stage-2 forwards and their
    // combine returns) = total - inter. Inter-node bytes are the *_inter
    // above (hier: stage 1 and the one combine row per (token, node) back).
    int64_t dispatch_bytes_intra, combine_bytes_intra;
    int64_t base_dispatch_bytes_intra, base_combine_bytes_intra;
    int64_t fwd_sends, base_fwd_sends; // hier stage-2 records (0 under flat)
    int64_t planned_bytes;             // dispatch_bytes + combine_bytes, from the plan
    // Bytes counted where they arrived: dispatch records this rank decoded
    // from other ranks, plus combine rows it decoded for its own tokens.
    // Per rank it differs from planned_bytes (dispatch is planned at the
    // sender); summed over ranks the two are equal.
    int64_t measured_bytes;
    int64_t measured_bytes_inter; // the part of it that came from another node
    int64_t recv_pairs;           // (token, expert) pairs computed on this rank (its load)
    int64_t recv_tokens;          // records computed on this rank (own local ones incl.)
} ep_comm_stats;
void ep_comm_stats_add(ep_comm_stats *acc, const ep_comm_stats *s);

// Pure accounting: what dispatching `r` under placement `p` from `rank`
// costs, actual and counterfactual (fills every field but measured_bytes,
// recv_*). node_of: [world] node of each rank. pair_rank: NULL (home rank of
// each expert) or [nnz] the rank chosen for each pair (replicas). A one-off
// ep_dispatch_plan (comm/dispatch_plan.h); a caller pricing every layer keeps
// a plan of its own instead, which allocates nothing once grown.
void ep_comm_count(const ep_routes *r, const ep_placement *p, const int *pair_rank, int rank,
                   const int *node_of, int hidden, ep_dtype wire, ep_comm_stats *st);
// The same under a dispatch mode (ep_comm_count is EP_DISPATCH_FLAT).
void ep_comm_count_mode(const ep_routes *r, const ep_placement *p, const int *pair_rank, int rank,
                        const int *node_of, int hidden, ep_dtype wire, ep_dispatch_mode mode,
                        ep_comm_stats *st);

// ---- transport -----------------------------------------------------------
typedef struct ep_transport ep_transport;
// One payload exchange in flight (owned by the transport, a fixed pool).
typedef struct ep_transport_req ep_transport_req;
// Payload exchanges one transport can have in flight at once: two
// micro-batches, each with a dispatch or a combine between start and wait.
#define EP_TRANSPORT_MAX_INFLIGHT 2
typedef struct {
    const char *name;
    // One int64 to and from every peer (index = rank). Blocking; may run
    // while payload exchanges are in flight (every rank keeps one order).
    ep_status (*exchange_counts)(ep_transport *t, const int64_t *send, int64_t *recv);
    // Posts byte payloads per peer at the given offsets and returns (the
    // self part is copied locally, already);
    // the size and offset arrays are read before it returns, the buffers
    // must stay untouched until the wait. Every rank posts the same
    // exchanges in the same order. EP_ERR_ARG when EP_TRANSPORT_MAX_INFLIGHT
    // are in flight already.
    ep_status (*alltoallv_start)(ep_transport *t, const void *sendbuf, const int64_t *send_bytes,
                                 const int64_t *send_off, void *recvbuf, const int64_t *recv_bytes,
                                 const int64_t *recv_off, ep_transport_req **req);
    // Returns when req's data has arrived and frees req; adds the bytes it
    // sent to other ranks to t->bytes_moved and to *moved (NULL ok). Waits
    // may come in any order.
    ep_status (*alltoallv_wait)(ep_transport *t, ep_transport_req *req, int64_t *moved);
    void (*free)(ep_transport *t);
} ep_transport_vt;
struct ep_transport {
    const ep_transport_vt *vt;
    void *ctx;
    int rank, world_size;
    int64_t bytes_moved; // payload bytes sent to other ranks, since creation
};
ep_status ep_transport_mpi_init(ep_cluster *c, ep_transport **out);
// The MPI transport over the ranks of this rank's logical node only (an
// MPI_Comm_split of the cluster's communicator by c->node; collective over
// every rank). Still indexed by world rank: ranks of other nodes must have 0
// bytes. Hier's stage 2 runs on it.
ep_status ep_transport_mpi_init_node(ep_cluster *c, ep_transport **out);
void ep_transport_free(ep_transport *t); // NULL ok
// The blocking exchange: alltoallv_start then alltoallv_wait, for any
// transport. Adds the bytes sent to other ranks to t->bytes_moved.
ep_status ep_transport_alltoallv(ep_transport *t, const void *sendbuf, const int64_t *send_bytes,
                                 const int64_t *send_off, void *recvbuf, const int64_t *recv_bytes,
                                 const int64_t *recv_off);
// The reference `bench comm` times the transport against: one blocking
// MPI_Alltoallv on the cluster's communicator, counts and offsets in 4-byte
// words, the self part through MPI too, no watch. Collective.
ep_status ep_comm_raw_alltoallv(ep_cluster *c, const void *sendbuf, const int *send_words,
                                const int *send_off_words, void *recvbuf, const int *recv_words,
                                const int *recv_off_words);

// ---- dispatch / combine --------------------------------------------------
// The work one rank receives: records (token from some rank, its pairs for
// this rank's experts), own local tokens included (no bytes).
typedef struct {
    int n_rec;
    const int *pair_off;      // [n_rec + 1]
    const int *pair_expert;   // [pairs] global expert ids (all on this rank)
    const float *pair_weight; // [pairs]
    const float *x;           // [n_rec, hidden] fp32 (decoded from the wire)
    float *y;                 // [n_rec, hidden] filled by the experts: Σ_j w_j E_j(x)
} ep_comm_work;

typedef struct ep_comm ep_comm;
// Buffers are sized for cap_tokens tokens of at most max_k pairs and grow
// only when a step receives more than ever before. The transport is borrowed.
ep_status ep_comm_init(ep_cluster *c, ep_transport *t, int hidden, ep_dtype wire, int cap_tokens,
                       int max_k, ep_comm **out);
void ep_comm_free(ep_comm *m); // NULL ok
// Flat (the default) or hier dispatch for the next layers; EP_ERR_ARG
// between the halves of an exchange or for an unknown mode. Every rank must
// use the same mode. It takes the cluster's node map of the moment (init
// took the one of then). Hier: stage 1 (the plan's records, forwarded ones to
// the forwarding rank of another node) is the posted exchange; stage 2 (the
// forward within the node: counts, payload) runs blocking in
// dispatch_finish; combine_start posts the stage-2 returns, combine_finish
// sums them per (token, node) and returns those rows blocking. Stage 2 and
// its returns move bytes between ranks of one node only, on a
// node transport (ep_transport_mpi_init_node) when the transport is MPI's,
// else on the transport itself. Collective (the node transport's split).
// On one node hier is flat, and ep_comm_mode says so.
ep_status ep_comm_set_mode(ep_comm *m, ep_dispatch_mode mode);
ep_dispatch_mode ep_comm_mode(const ep_comm *m);
// Payload bytes the node transport moved (0 without one): stage 2 and its
// returns, which the transport given to ep_comm_init does not count then.
int64_t ep_comm_node_bytes_moved(const ep_comm *m);
// Plans (an ep_dispatch_plan; its stats into st), exchanges counts, sends x [T, hidden] and
// fills `work`. Every rank must call it for every layer, even with T = 0.
ep_status ep_comm_dispatch(ep_comm *m, const ep_routes *r, const ep_placement *p,
                           const int *pair_rank, const float *x, ep_comm_work *work,
                           ep_comm_stats *st);
// Returns work->y to the source ranks and writes out[T, hidden] = Σ of the
// partial sums of each token (0 rows for none). Adds measured bytes to st.
ep_status ep_comm_combine(ep_comm *m, const ep_comm_work *work, float *out, ep_comm_stats *st);

// The same in halves, so that other work runs while a payload is on the
// wire (two micro-batches: each with an ep_comm of its own, since an
// ep_comm holds the buffers of one exchange; both on one transport).
// ep_comm_dispatch is dispatch_start then dispatch_finish, ep_comm_combine
// combine_start then combine_finish; an ep_comm goes dispatch_start ->
// dispatch_finish -> combine_start -> combine_finish, and every rank makes
// the same calls in the same order. A call out of that order is EP_ERR_ARG.
// dispatch_start: plans (an ep_dispatch_plan into st), exchanges the counts
// (blocking), packs and posts the payload; r, p, pair_rank and x are
// borrowed until dispatch_finish. dispatch_finish: waits, decodes and fills
// `work`; adds the measured bytes and sets recv_* in st.
ep_status ep_comm_dispatch_start(ep_comm *m, const ep_routes *r, const ep_placement *p,
                                 const int *pair_rank, const float *x, ep_comm_stats *st);
ep_status ep_comm_dispatch_finish(ep_comm *m, ep_comm_work *work, ep_comm_stats *st);
// combine_start: packs work->y and posts it; work->y is read again by
// combine_finish (the own rank's partial sums). combine_finish: waits and writes out[T, hidden] as
// ep_comm_combine; adds the measured bytes to st.
ep_status ep_comm_combine_start(ep_comm *m, const ep_comm_work *work);
ep_status ep_comm_combine_finish(ep_comm *m, float *out, ep_comm_stats *st);

#endif
