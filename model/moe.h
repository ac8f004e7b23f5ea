// One expert-parallel MoE layer on this rank: route this rank's tokens with a
// policy (before any communication, so a banned expert is neither sent nor
// computed), dispatch, grouped SwiGLU on this rank's experts, combine, add
// the shared experts. Also the single-process reference of the same layer.
// Owns the per-rank MoE state of every MoE layer; no attention here.
#ifndef EP_MOE_H
#define EP_MOE_H

#include "comm/comm.h"
#include "experts/experts.h"
#include "router/router.h"

// Where this rank's experts run. CPU: the reference backend (experts/cpu),
// MPI transport. CUDA: BF16 experts on this rank's GPU (experts/cuda) and the
// NCCL transport; needs a build with EP_CUDA=ON and one visible device per
// rank. The reference path (with_reference) is the CPU one either way.
typedef enum { EP_MOE_BACKEND_CPU, EP_MOE_BACKEND_CUDA } ep_moe_backend;
const char *ep_moe_backend_name(ep_moe_backend b); // "cpu", "cuda"
// "cpu" or "cuda" (a command line's --backend); EP_ERR_ARG names what was found.
ep_status ep_moe_backend_parse(const char *s, ep_moe_backend *out);
// Whether this build has the backend: CPU always, CUDA when built with EP_CUDA=ON
// (a device is still needed at run time).
bool ep_moe_backend_built(ep_moe_backend b);

typedef struct {
    ep_moe_backend backend;  // default CPU
    ep_place_kind placement; // expert placement across ranks
    ep_dtype wire;           // payload dtype on the wire (F32, BF16, F16, F8_E4M3)
    ep_dtype expert_dtype;   // CPU backend: experts stored AUTO (default: the checkpoint's
                             // dtype when BF16, else F32), F32 or BF16 (experts/experts.h)
    int cap_tokens;          // most tokens one rank routes in one call
    int max_k;               // most experts a token may keep (>= k_base; policies may add)
    bool with_reference;     // also hold every expert, for ep_moe_reference()
    // EPLB (placement == EP_PLACE_EPLB): a placement per MoE layer from
    // expert_load, with redundant_experts extra slots per layer. This rank
    // loads the union of its experts over the layers (experts/ takes one
    // placement for all layers), so layers may place experts differently.
    int redundant_experts;     // extra physical slots per layer (default 0)
    int eplb_groups;           // expert groups for hierarchical EPLB (0: the model's n_group)
    const double *expert_load; // [n_layers * n_experts] loads, or NULL (uniform); read at init
    bool home_only;            // send every pair to the expert's home rank (no replica choice)
    // 1 (default): dispatch, experts, combine of the whole batch. 2: the
    // routed batch is cut into two token ranges whose all-to-alls overlap
    // the other range's expert compute (docs/architecture.md); the same
    // stats and bytes, the same output up to the last bits where an
    // expert's kernel changes with its row count. Same value on every rank.
    int micro_batches;
    // A barrier of every rank before dispatch and before combine, outside
    // the timed phases, so dispatch_us and combine_us are transfer time
    // rather than the wait for the slowest rank (docs/scale.md §6). Off by
    // default (it costs the overlap of a rank's skew); micro_batches 1 only.
    bool phase_barrier;
    // EP_MOE_DISPATCH_AUTO (default): hier when the job has more than one
    // node and the backend is the CPU one, else flat; or an ep_dispatch_mode
    // (comm/comm.h). Hier with the CUDA backend is refused (its NCCL path
    // is not tested with two stages). Same value on every rank.
    int dispatch;
} ep_moe_opts;
#define EP_MOE_DISPATCH_AUTO (-1)
// The mode ep_moe_init resolves o->dispatch to on cluster cl, or EP_ERR_ARG
// naming --dispatch (hier with the CUDA backend, an unknown value).
ep_status ep_moe_dispatch_mode(const ep_moe_opts *o, const ep_cluster *cl, ep_dispatch_mode *out);
void ep_moe_opts_default(ep_moe_opts *o, const ep_model_cfg *cfg);

// Per-layer timings of one forward call on this rank, microseconds.
typedef struct {
    double route_us, dispatch_us, experts_us, combine_us, shared_us;
} ep_moe_times;

typedef struct ep_moe ep_moe;
// Switches the dispatch mode (and takes the cluster's current node map) for
// the next forwards: o->dispatch's rules, EP_ERR_ARG/UNSUPPORTED naming
// --dispatch. Every rank must make the same call.
ep_status ep_moe_set_dispatch(ep_moe *m, int dispatch);
// Reads this rank's experts, the replicated gates and shared experts from w.
// cfg, cluster and w are borrowed and must outlive the ep_moe. Collective.
// Backend CUDA: EP_ERR_UNSUPPORTED naming EP_CUDA on a CPU-only build, and on
// every rank when some rank has no usable device (the failing rank names it).
ep_status ep_moe_init(const ep_model_cfg *cfg, ep_cluster *cl, ep_weights *w, const ep_moe_opts *o,
                      ep_moe **out);
void ep_moe_free(ep_moe *m); // NULL ok
// The experts this rank holds over all layers (the per-layer placements'
// union; without EPLB the one placement every layer uses).
const ep_placement *ep_moe_placement(const ep_moe *m);
// The placement MoE layer `layer` dispatches with.
const ep_placement *ep_moe_layer_placement(const ep_moe *m, int layer);
// The rank each pair of the last forward went to ([nnz] of its routes; valid
// until the next call). Replica choice fills it; without replicas the home rank.
const int *ep_moe_last_pair_rank(const ep_moe *m);
size_t ep_moe_expert_bytes(const ep_moe *m); // routed + shared weights held by this rank
// The same split: one routed expert at one layer (gate, up, down) as stored,
// the shared experts of every MoE layer, and the router gates (fp32).
typedef struct {
    uint64_t expert, shared, gates;
} ep_moe_bytes;
void ep_moe_get_bytes(const ep_moe *m, ep_moe_bytes *out);

// The routing context of MoE layer `layer` on this rank: that layer's
// placement (the one dispatch uses), the node map, this rank. Valid until
// the next re-placement.
ep_route_ctx ep_moe_route_ctx(const ep_moe *m, int layer);

// y[T, H] = MoE_layer(x[T, H]) for this rank's T tokens (T may be 0; every
// rank must call it for every layer: it joins collectives). Adds this call's
// counters to *st and times to *tm (either may be NULL). Routes with
// ep_moe_route_ctx(m, layer).
ep_status ep_moe_forward(ep_moe *m, const ep_policy *p, int layer, const float *x, int T, float *y,
                         ep_comm_stats *st, ep_moe_times *tm);
// The same with routes decided elsewhere (a replayed trace, a test): r holds
// this rank's T = r->n_tokens tokens; routing is skipped, the rest is as above.
ep_status ep_moe_forward_routes(ep_moe *m, int layer, const ep_routes *r, const float *x, float *y,
                                ep_comm_stats *st, ep_moe_times *tm);
// The same with x [T, hidden] and y [T, hidden] in this rank's device memory
// (backend cuda only; EP_ERR_UNSUPPORTED naming the backend otherwise, and
// in a build without CUDA): no hidden row crosses host memory. The gate GEMM
// and, for baseline, Ban, Pick and Ban&Pick (ep_router_cuda_supports, not
// comm-aware, no per-token Pick domains), the routing kernel run on the
// device; the CSR routes come to the host (META) for ep_moe_last_routes and
// the dispatch plan. Other policies (top-p, DES, laser, comm-aware Ban):
// the [T, n_experts] fp32 logits come to the host (counted as ACT) and the
// host router routes them. Dispatch plans on the host with the common plan
// (the same stats and bytes as ep_moe_forward for the same routes), sends
// each record's header (token, pairs, ids, weights) over MPI and its row,
// packed on the device in the wire dtype (f32 or bf16; f16 and fp8 are
// EP_ERR_UNSUPPORTED naming --wire), over NCCL from device buffers; the
// experts, the combine (per token in rank order, as the host combine) and
// the shared experts run on device arrays. micro_batches 2, hier dispatch
// and phase_barrier are EP_ERR_UNSUPPORTED. x_dev must be ready (no work
// on it in flight); y_dev is written when it returns. docs/cuda.md.
ep_status ep_moe_forward_dev(ep_moe *m, const ep_policy *p, int layer, const float *x_dev, int T,
                             float *y_dev, ep_comm_stats *st, ep_moe_times *tm);
// Device bytes the MoE part holds on this rank now (backend cuda; zeros and
// EP_ERR_UNSUPPORTED otherwise): routed + shared expert weights, the experts'
// step scratch, the device router (scratch and uploaded gates), the device
// path's exchange and work buffers, the NCCL transport's staging. Grows
// with the largest step so far; measured, not predicted.
typedef struct {
    uint64_t experts, expert_scratch, router, exchange, transport;
    uint64_t total;
} ep_moe_dev_mem;
ep_status ep_moe_device_bytes(const ep_moe *m, ep_moe_dev_mem *out);
// The same predicted without a device (pure arithmetic, every build; for
// `epserve plan`): what a rank holding n_local routed experts per MoE layer
// allocates once ep_moe_forward_dev has run every MoE layer with steps no
// larger than the reservations (cap_tokens tokens, cap_tokens * max_k pairs,
// cap_tokens * min(max_k, world) records in and out); a larger step grows
// the buffers past it. The NCCL staging of ep_moe_forward (host arrays) is
// not in it.
void ep_moe_dev_mem_predict(const ep_model_cfg *cfg, const ep_moe_opts *o, int world, int n_local,
                            ep_moe_dev_mem *out);

// The routes of the last ep_moe_forward (valid until the next call).
const ep_routes *ep_moe_last_routes(const ep_moe *m);

// ---- re-placement between steps ---------------------------------------------
// Every forward adds its pairs per (layer, expert) to this rank's window.
// Collective (every rank calls it between the same two steps): sums the
// window over ranks, computes EPLB placements per layer from it (with
// opts.redundant_experts), predicts the mean over layers of max/mean rank
// load before and after, and re-places only when (before - after) / before
// >= min_gain; then every expert a rank newly holds is sent to it over MPI
// (one alltoallv of the stored weight bytes per MoE layer) by a rank that
// holds it under the old placement, never read from the ep_weights; experts
// a rank keeps are copied locally, the others dropped. The window restarts
// either way. No request state lives here, so nothing in flight is lost or
// mixed. before/after/moved may be NULL. A backend that cannot move its
// experts (cuda: the device experts cannot be exported or imported yet):
// EP_ERR_UNSUPPORTED naming it, before any collective; nothing changes.
ep_status ep_moe_replace(ep_moe *m, double min_gain, double *before, double *after, bool *moved);
// What the last re-placement that moved weights did on this rank (zero
// before any): (layer, expert) weights received, stored bytes sent and
// received, and the bytes the transport counted as sent to other ranks.
typedef struct {
    int64_t experts_recv;
    int64_t bytes_sent, bytes_recv;
    int64_t bytes_moved;
} ep_moe_move_stats;
const ep_moe_move_stats *ep_moe_last_move(const ep_moe *m);
// Forwards of the first MoE layer since the window began.
int64_t ep_moe_window_steps(const ep_moe *m);

// The reference path (needs opts.with_reference): the same routing, then a
// plain loop over each token's kept experts, no placement, no communication.
ep_status ep_moe_reference(ep_moe *m, const ep_policy *p, int layer, const float *x, int T,
                           float *y);

// The reference routes with ep_moe_route_ctx(m, layer), so that it keeps
// the forward's routes. A caller pricing routes on another placement (bench
// kl: one process standing for rank 0 of W) sets that context here for every
// layer (borrowed: its placement and node map must outlive the calls); NULL
// restores the default.
void ep_moe_set_reference_ctx(ep_moe *m, const ep_route_ctx *ctx);
// The Pick domain of each token of the following routing calls ([T],
// borrowed, ep_route_ctx.token_domain), or NULL: the policy's own.
void ep_moe_set_token_domain(ep_moe *m, const int *token_domain);

// What the reference routes would send (ep_route_sends, home ranks) from
// the rank of the context a caller set (rank >= 0), summed over every
// ep_moe_reference call since; zero without such a context.
void ep_moe_reference_sends(const ep_moe *m, ep_route_sends *out);
// The reference with given routes (needs opts.with_reference).
// (pairs kept, tokens routed) summed over every ep_moe_reference call so far:
// pairs / tokens is the mean experts per token of the reference routes.
void ep_moe_reference_counts(const ep_moe *m, int64_t *pairs, int64_t *token_layers);
ep_status ep_moe_reference_routes(ep_moe *m, int layer, const ep_routes *r, const float *x,
                                  float *y);

// Relative error of a against the reference b, row by row:
// max over rows of max|a - b| / max(max|b|, 1e-6). *n_wrong counts rows above tol.
double ep_moe_rel_err(const float *a, const float *b, int rows, int cols, double tol,
                      int64_t *n_wrong);

#endif
