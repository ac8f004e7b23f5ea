// The cluster-scale simulator: cluster presets (configs/clusters/*.yaml), a
// cost model (alpha-beta links, roofline kernels), a driver that routes a
// synthetic batch with the real router and prices it with each GPU's dispatch
// plan (ep_dispatch_plan, the one dispatch uses), and the memory plan behind `epserve plan`.
// Nothing here communicates or runs a GPU kernel: transport and kernels are
// modelled, routing, placement and planning are the production code.
#ifndef EP_SIM_H
#define EP_SIM_H

#include "cluster/placement.h"
#include "comm/comm.h"
#include "comm/dispatch_plan.h"
#include "common/dtype.h"
#include "common/model_cfg.h"
#include "common/routes.h"

// ---- cluster presets (sim/cluster_cfg.c) -----------------------------------
// Bandwidths are per GPU and per direction, in decimal GB/s (1e9 bytes/s);
// FLOP/s are dense (no sparsity); memory in decimal GB as datasheets state it.
typedef struct {
    char name[64]; // "4x8-h100"
    char gpu[64];  // "h100-sxm"
    int n_nodes, gpus_per_node;
    double mem_gb;      // HBM capacity per GPU
    double hbm_GBps;    // HBM bandwidth per GPU
    double bf16_tflops; // dense bf16 tensor-core peak per GPU
    double nvlink_GBps; // intra-node, per GPU per direction
    double nvlink_latency_us;
    double inter_GBps; // inter-node (NIC), per GPU per direction
    double inter_latency_us;
    // The two-stage (hier) dispatch's links, as *achieved* rates (no
    // efficiency applied): stage 1 over RDMA, stage 2 forwarding over NVLink.
    // Absent from a preset: GBps = the flat link's GBps x efficiency,
    // latency = the flat link's (ep_sim_cluster_load fills them; a GBps of 0
    // in a hand-built cluster means the same, see ep_sim_hier_stage_us).
    double hier_rdma_GBps, hier_rdma_latency_us;
    double hier_nvlink_GBps, hier_nvlink_latency_us;
    // Achievable fraction of each peak (defaults in sim/cluster_cfg.c).
    double gemm_eff, hbm_eff, nvlink_eff, inter_eff;
    double mem_usable;     // fraction of HBM the server may use (default 0.9)
    int redundant_experts; // EPLB replica slots per MoE layer (key redundant_experts, default 0)
    char source[4096];     // the file it was read from (PATH_MAX)
} ep_sim_cluster;

static inline int ep_sim_cluster_gpus(const ep_sim_cluster *c)
{
    return c->n_nodes * c->gpus_per_node;
}

// spec: a YAML file, or a preset name looked up as configs/clusters/<spec>.yaml
// (in $EP_CONFIG_DIR/../clusters, ./configs/clusters, then the source tree).
// Unknown, missing or out-of-range keys are EP_ERR_CONFIG naming file and key.
ep_status ep_sim_cluster_load(const char *spec, ep_sim_cluster *c);
ep_status ep_sim_cluster_validate(const ep_sim_cluster *c);
// The preset files of configs/clusters/ (sorted by name): *paths is an array
// of n malloc'd strings; free with ep_sim_free_list.
ep_status ep_sim_cluster_presets(char ***paths, int *n);
void ep_sim_free_list(char **list, int n);

// ---- cost model (sim/cost.c) ------------------------------------------------
// What one rank sends and receives in one all-to-all phase (dispatch or
// combine), split by link class, and how many distinct peers it talks to.
typedef struct {
    double send_intra, send_inter; // bytes to other ranks of its node / of other nodes
    double recv_intra, recv_inter;
    int peers_intra, peers_inter; // distinct remote ranks it sends to (not in the time model)
} ep_sim_traffic;

// One rank's time for one phase (us): the links of the two classes run in
// parallel; each class costs its latency (once per phase, when it carries
// anything: transfers to all peers are issued together) plus the larger of
// its send and receive volume over its effective bandwidth.
double ep_sim_a2a_rank_us(const ep_sim_cluster *c, const ep_sim_traffic *t);

// One rank's time (us) for one stage of a two-stage (DeepEP-style, "hier")
// phase: stage 1 is the RDMA exchange between same-local-index ranks of
// different nodes (t->send_inter / recv_inter), stage 2 the NVLink exchange
// inside a node (t->send_intra / recv_intra): the stage's latency plus the
// larger of send and receive volume over its achieved bandwidth
// (hier_rdma_* / hier_nvlink_*), 0 when the stage carries nothing.
typedef enum { EP_SIM_STAGE_RDMA = 0, EP_SIM_STAGE_NVLINK = 1 } ep_sim_stage;
double ep_sim_hier_stage_us(const ep_sim_cluster *c, const ep_sim_traffic *t, ep_sim_stage stage);

// Routed experts of one rank (us), roofline: FLOPs 6·H·I per pair (gate, up,
// down), bytes = weights of the active local experts + activations in bf16.
double ep_sim_experts_us(const ep_sim_cluster *c, int hidden, int moe_inter, double pairs,
                         int active_experts);

// Parameter counts of the HF layout (from ep_model_for_each_tensor).
typedef struct ep_sim_params {
    int64_t embed, head;  // embed_tokens, lm_head (+ final norm)
    int64_t *layer_dense; // [n_layers] everything of layer l but routed experts
    int64_t *layer_attn;  // [n_layers] attention + its norms (part of layer_dense)
    int64_t expert;       // one routed expert (gate + up + down)
    int64_t total;
} ep_sim_params;
void ep_sim_params_count(const ep_model_cfg *cfg, ep_sim_params *p);
void ep_sim_params_free(ep_sim_params *p); // NULL-safe fields
// The replicated, data-parallel part of one layer on one rank (us): norms,
// attention projections, attention itself, the gate and the shared experts
// (or the dense MLP of a dense layer), roofline. tokens: this rank's tokens
// in the step; ctx: context length each token attends to (decode: the
// cached length; prefill: the prompt length, causal -> ctx/2 on average);
// decode: the KV cache of `tokens` sequences is read once per layer.
double ep_sim_dense_us(const ep_sim_cluster *c, const ep_model_cfg *cfg, const ep_sim_params *p,
                       int layer, double tokens, double ctx, bool decode);
// lm-head + final norm of `tokens` rows (decode samples every row; prefill
// only the last row of each prompt: pass the number of prompts).
double ep_sim_head_us(const ep_sim_cluster *c, const ep_model_cfg *cfg, double rows);

// KV-cache bytes per token per layer in bf16: 2·kv_heads·head_dim·2 (GQA), or
// (kv_lora_rank + qk_rope_dim)·2 for MLA's compressed cache.
int64_t ep_sim_kv_bytes_per_token_layer(const ep_model_cfg *cfg);

// ---- one layer, priced with the real planner (sim/sim.c) ---------------------
// The routes of every rank at one layer, the placement and, optionally, the
// replica each pair uses. Builds each rank's ep_dispatch_plan (the one the
// MoE layer would pack from), sums their stats into `sum` and takes each
// rank's dispatch/combine traffic per destination from its plan.
typedef struct {
    int world;
    ep_sim_traffic *dispatch;                   // [world]
    ep_sim_traffic *combine;                    // [world]
    int64_t *recv_pairs;                        // [world] pairs each rank computes
    int *active_experts;                        // [world] distinct local experts with >= 1 pair
    double dispatch_us, combine_us, experts_us; // max over ranks (flat model)
    double imbalance;                           // max / mean of recv_pairs (1 when no pairs)
    // The two-stage (hier) model of the same routes, from each rank's plan in
    // EP_DISPATCH_HIER mode (comm/comm.h): each token goes once per remote
    // node over RDMA to the rank of that node with the sender's local index
    // (the forwarder), which forwards over NVLink to the ranks computing its
    // pairs; to its own node's ranks it goes over NVLink directly. Combine
    // in reverse: partial sums reduced at the forwarder, one row back per
    // (token, remote node). Stage traffic per rank (inter fields: RDMA stage,
    // intra fields: NVLink stage), stage times (max over ranks; a phase is
    // its two stages in sequence), the unscaled bytes of each [phase][stage]
    // summed over ranks, and the hier plans' stats summed (unscaled).
    ep_sim_traffic *hdispatch; // [world]
    ep_sim_traffic *hcombine;  // [world]
    double hier_us[2][2];      // [0 dispatch, 1 combine][ep_sim_stage]
    int64_t hier_bytes[2][2];  // [0 dispatch, 1 combine][ep_sim_stage]
    ep_comm_stats hier_sum;
    // scratch (sized on first use, grown only when a layer is bigger)
    ep_dispatch_plan *plans;  // [world] rank r's plan (made on first use)
    int64_t *pair_dest_bytes; // [world * world] dispatch bytes src -> dst
    int64_t *pair_comb_bytes; // [world * world] combine bytes dst -> src of those records
    uint8_t *seen;            // [world * n_experts]
    int n_experts;
    ep_dispatch_plan *hplans; // [world] rank r's hier plan (made on first use)
    int *fwd_n;               // [world] one group's pairs per computing rank
} ep_sim_layer;

void ep_sim_layer_init(ep_sim_layer *L, int world);
void ep_sim_layer_free(ep_sim_layer *L);
// routes [world] (rank r's tokens), pair_rank NULL or [world] (each NULL or
// [nnz] ranks). scale multiplies every volume and pair count (the routed
// tokens stand for `scale` times as many). Fills L and sum (ep_comm_stats
// summed over ranks, unscaled).
void ep_sim_layer_price(ep_sim_layer *L, const ep_sim_cluster *c, const ep_model_cfg *cfg,
                        const ep_placement *p, const int *node_of, const ep_routes *routes,
                        const int *const *pair_rank, ep_dtype wire, double scale,
                        ep_comm_stats *sum);

// ---- the whole run ------------------------------------------------------------
typedef struct {
    int tokens;        // tokens per GPU per step (decode: sequences per GPU)
    int sample_tokens; // tokens per GPU actually routed (volumes scaled); 0: = tokens;
                       // < 0: auto, 8192 over all GPUs (at least 32 per GPU)
    int sample_layers; // MoE layers routed, evenly spaced; 0: all
    bool decode;
    bool hier;               // step time from the two-stage dispatch (simulate --dispatch hier)
    int context;             // decode: cached tokens per sequence; prefill: prompt length
    ep_dtype wire;           // dispatch/combine payload (bf16 by default)
    ep_place_kind placement; // contiguous or round_robin (home placement)
    int n_redundant;         // > 0: EPLB placement with this many replica slots per layer
    uint64_t seed;           // input stream (ep_synth_hidden)
    bool quiet;
    // Replay instead of routing (a recorded trace): fills r with T tokens of
    // MoE layer `layer`, `first` = the global index of the rank's first token.
    // Set: one row "replay", the policies are not used; replay_max_k sizes rows.
    void (*replay)(void *user, int layer, int64_t first, int T, ep_routes *r);
    void *replay_user;
    int replay_max_k;
    // Logits from elsewhere (simulate --routes-freq) instead of the synthetic
    // inputs and gate; the policies still route them. Fills logits [T, E]
    // for rank `rank`'s T tokens at model layer `layer`.
    void (*logits_fn)(void *user, int layer, int rank, int T, float *logits);
    void *logits_user;
} ep_sim_opts;
void ep_sim_opts_default(ep_sim_opts *o);
// The tokens per GPU that are routed under o on `world` GPUs.
int ep_sim_sample_tokens(const ep_sim_opts *o, int world);

typedef struct {
    char label[64]; // the --routing entry or a YAML's base name (+ "+eplb")
    double avg_k;   // pairs per token
    double dense_us, dispatch_us, experts_us, combine_us, head_us; // per step, all layers
    double step_us;
    double tokens_per_s_gpu;
    double bytes_per_token_layer;       // dispatch + combine, per routed token per MoE layer
    double inter_bytes_per_token_layer; // the part crossing nodes
    // The two-stage model of the same routes (whatever o->hier): bytes of the
    // RDMA and NVLink stages per routed token per MoE layer, dispatch +
    // combine, and the time of each [phase][stage] per step, all layers. With
    // o->hier, dispatch_us = stage_us[0][0] + stage_us[0][1] (combine alike).
    double hier_rdma_bytes_per_token_layer, hier_nvlink_bytes_per_token_layer;
    double stage_us[2][2];                       // [0 dispatch, 1 combine][ep_sim_stage]
    int64_t hier_bytes[2][2];                    // unscaled, sampled layers, all ranks
    double hier_base_rdma_bytes_per_token_layer; // static top-k_base, two-stage
    double hier_saved_rdma_pct;                  // RDMA-stage bytes saved vs that
    ep_comm_stats hier_total; // the hier plans' counters, sampled layers, all ranks (unscaled)
    double base_bytes_per_token_layer; // static top-k_base on the home placement
    double saved_pct, saved_inter_pct; // vs the counterfactual of the same routes
    double load_imbalance;             // mean over sampled layers of max/mean pairs per rank
    double speedup;                    // step time of the first policy / this one
    ep_comm_stats total;               // planner counters, sampled layers, all ranks (unscaled)
    double *layer_step_us;             // [n_sampled] MoE-part time of each sampled layer
} ep_sim_result;

typedef struct {
    int n_sampled;
    int *layers; // [n_sampled] sampled MoE layer ids
    int n_pol;
    ep_sim_result *res; // [n_pol]
    double route_s;     // wall time spent generating and routing
} ep_sim_report;
void ep_sim_report_free(ep_sim_report *r);

// Routes the batch of every GPU at the sampled layers under every policy
// (specs as --routing takes them; comm-aware Ban gets each rank's placement)
// and prices it. The first policy is the speedup reference. With o->replay
// the routes come from it instead (policies: ignored, may be NULL; n_pol 1).
ep_status ep_sim_run(const ep_model_cfg *cfg, const ep_sim_cluster *c, const char *const *policies,
                     int n_pol, const ep_sim_opts *o, ep_sim_report *out);

// ---- memory plan (sim/cost.c) --------------------------------------------------
typedef struct {
    int experts_per_gpu;     // routed experts on the fullest GPU (replicas incl.)
    double replicated_bytes; // embed + lm_head + attention + norms + gates + shared/dense MLP
    double attn_bytes, gate_bytes, shared_bytes, embed_head_bytes; // parts of it
    double routed_bytes;    // this GPU's routed-expert shard, all MoE layers
    double kv_bytes;        // batch sequences x context x layers
    double workspace_bytes; // activations + dispatch/combine buffers + runtime reserve
    double total_bytes;
    double usable_bytes; // mem_gb x mem_usable
    bool fits;
} ep_sim_mem;
// Weights as the checkpoint stores them (ep_sim_tensor_bytes): BF16, or for
// cfg->quant FP8 the quantized Linear weights at 1 byte a value plus an fp32
// scale per block. batch: concurrent sequences per GPU (attention is data
// parallel: each GPU holds its own sequences' KV cache); chunk: prefill tokens
// per GPU per step (sizes the workspace); n_redundant: replica slots per layer.
void ep_sim_plan_memory(const ep_model_cfg *cfg, const ep_sim_cluster *c, int context, int batch,
                        int chunk, int n_redundant, ep_sim_mem *m);
// Bytes of one tensor of the layout as stored: 2 a value (BF16), or, when
// cfg->quant is EP_QUANT_FP8_BLOCK and ep_model_tensor_is_fp8(name), 1 a
// value + 4 per quant_block block (F8_E4M3 codes and F32 weight_scale_inv).
double ep_sim_tensor_bytes(const ep_model_cfg *cfg, const char *name, int ndim,
                           const int64_t *shape);

#endif
