// Routed experts held by this rank (only its shard is read from the
// checkpoint) and the replicated shared experts, for every MoE layer; the
// grouped SwiGLU over the work a rank received; and the plain C reference
// that loops over each token's kept experts.
// Expert: down(silu(gate(x)) * up(x)); weights [out, in] as in HF.
#ifndef EP_EXPERTS_H
#define EP_EXPERTS_H

#include "cluster/placement.h"
#include "common/routes.h"
#include "common/weights.h"

typedef struct ep_experts ep_experts;
// rank >= 0: the experts placement p gives that rank; rank < 0: all experts
// (for the reference path; p may then be NULL).
ep_status ep_experts_load(const ep_model_cfg *cfg, ep_weights *w, const ep_placement *p, int rank,
                          ep_experts **out);
// Load options. Zeroed (or NULL) = the defaults ep_experts_load uses.
typedef struct {
    // Storage of the experts' weights: EP_DTYPE_F32 (the zeroed default; the
    // reference precision), EP_DTYPE_BF16 (half the memory and the bytes
    // streamed; values rounded to BF16 at load, exact for BF16 checkpoints;
    // activations rounded to BF16 for the products) or EP_DTYPE_AUTO (BF16
    // when the checkpoint stores the routed experts in BF16, else F32).
    // Shared experts are stored alike (BF16 ones mapped from the checkpoint).
    // fp32 is kept packed in column panels (experts/kernels.h), which
    // the fp32 kernels stream; export/import and the reference see the
    // checkpoint's layout.
    ep_dtype weight_dtype;
} ep_experts_opts;
ep_status ep_experts_load_ex(const ep_model_cfg *cfg, ep_weights *w, const ep_placement *p,
                             int rank, const ep_experts_opts *opts, ep_experts **out);
void ep_experts_free(ep_experts *e);          // NULL ok
size_t ep_experts_bytes(const ep_experts *e); // weight bytes held
bool ep_experts_has(const ep_experts *e, int expert);

// ---- moving experts between shards (re-placement, no checkpoint read) ----
// Bytes of one routed expert at one layer as export/import carry it, in the
// checkpoint's layout whatever the storage (fp32 panels are unpacked):
// gate_proj [I, H], then up_proj [I, H], then down_proj [H, I], in fp32 or
// BF16 as the shard holds them.
size_t ep_experts_expert_bytes(const ep_experts *e);
// Copies held expert `expert` of MoE layer `layer` to / from buf
// [ep_experts_expert_bytes]. EP_ERR_ARG when the shard does not hold it.
ep_status ep_experts_export(const ep_experts *e, int layer, int expert, void *buf);
ep_status ep_experts_import(ep_experts *e, int layer, int expert, const void *buf);
// A new shard for `rank` under placement p built from old without reading
// any weights: experts old holds are copied, the shared experts too; every
// other expert p gives the rank is *pending* until ep_experts_import fills
// it (ep_experts_forward refuses to run while any is). old is unchanged.
ep_status ep_experts_reshard(const ep_experts *old, const ep_placement *p, int rank,
                             ep_experts **out);
bool ep_experts_pending(const ep_experts *e, int layer, int expert); // false when not held

// Grouped SwiGLU over received records: for record i with pairs
// [pair_off[i], pair_off[i+1]): y[i, :] = Σ_j w_j * E_{expert_j}(x[i, :]).
// Pairs are grouped by expert, one product per expert and projection. Every
// expert named must be held (EP_ERR_ARG otherwise). Scratch grows only when a
// step is larger than any before.
ep_status ep_experts_forward(ep_experts *e, int layer, int n_rec, const int *pair_off,
                             const int *pair_expert, const float *pair_weight, const float *x,
                             float *y);
// y[T, H] += shared experts(x) (one MLP of width moe_inter * n_shared, added
// unweighted, as DeepSeek-V2). No-op when n_shared == 0.
ep_status ep_experts_shared_forward(ep_experts *e, int layer, const float *x, int T, float *y);

// Reference, plain C loops without the kernels: y[t, :] = Σ_{kept j}
// w_tj E_j(x[t, :]) + shared(x[t, :]). e must hold every expert (rank < 0).
void ep_experts_reference(const ep_experts *e, int layer, const ep_routes *r, const float *x,
                          float *y);

#endif
