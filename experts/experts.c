// Routed experts of this rank's shard (fp32 or BF16) and the replicated
// shared experts of every MoE layer; the grouped SwiGLU over the records a
// rank received and the plain C reference. Routing, placement and the
// all-to-all live elsewhere: this file only computes what it is handed.
// An ep_experts is used by one thread at a time (the forward scratch is in it).
#include "experts/experts.h"
#include "experts/dense.h"
#include "experts/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// Rows (pairs) gathered per pass. Bounds the scratch whatever the step size
// (a prefill step can bring tens of thousands of pairs) while keeping each
// expert's product tall enough to run near peak.
#define EP_EXPERTS_CHUNK_ROWS 512
// Weight rows (output columns) per kernel task: one fp32 panel. 64 rows of
// 2048 fp32 are 512 KiB, enough work to amortise a hand-out, small enough to
// balance decode over the threads. Every expert, whatever its rows, runs on
// the experts' own kernels (an earlier OpenBLAS path for tall experts
// measured slower at every step size, docs/benchmarks.md).
#define EP_EXPERTS_TASK_ROWS EP_KERN_PANEL
// Ints per segment (one expert's run of rows in a pass) in ep_experts.seg.
#define EP_SEG 3

// One MoE layer. Dense layers keep an all-zero entry.
typedef struct {
    int n_local;    // routed experts held at this layer
    int *local_of;  // [n_experts] local index of global expert e, -1 when not held
    int *global_of; // [n_local] global id of each local expert
    // fp32 weights in column panels (ep_kern_f32_pack), each matrix packed
    // on its own: per expert gate_proj [I, H], then up_proj [I, H]; down_proj
    // [H, I]. 64-byte aligned. fp32 only.
    float *gate_up;      // [n_local, 2*I*H]
    float *down;         // [n_local, H*I]
    uint16_t *gate_up16; // [n_local, 2*I, H] the same in BF16; BF16 only
    uint16_t *down16;    // [n_local, H, I]; BF16 only
    // Shared experts, S = moe_inter * n_shared (empty without): gate_proj and
    // up_proj [S, H], down_proj [H, S], stored as the routed ones (BF16 mapped
    // from the checkpoint when it stores them so).
    ep_mat sh_gate, sh_up, sh_down;
    uint8_t *pending; // [n_local] 1 = awaiting ep_experts_import after a reshard; or NULL
} ep_experts_layer;

struct ep_experts {
    ep_model_cfg cfg;         // a copy: the caller's cfg need not outlive us
    int rank;                 // whose shard this is; -1 = every expert
    int hidden;               // H
    int inter;                // I = moe_inter
    int shared_inter;         // S = moe_inter * n_shared (0 without shared experts)
    ep_experts_layer *layers; // [n_layers]
    size_t weight_bytes;
    int64_t n_pending; // experts (over layers) a reshard left for ep_experts_import
    bool bf16;         // routed weights stored in BF16 (else fp32)

    // Forward scratch: sized on first use, grown only when a step needs more.
    int *start;      // [cnt_cap + 1] first sorted pair of each local expert
    int *fill;       // [cnt_cap] next free sorted slot of each local expert
    int cnt_cap;     // local experts the two arrays above cover
    int *order_pair; // [order_cap] pair index, sorted by local expert (stable)
    int *order_rec;  // [order_cap] record of that pair
    size_t order_cap;
    // Rows of a pass in these buffers, row-major, in sorted order: buffer
    // row q is the pass's sorted pair c0 + q (seg_row).
    float *xg;       // [chunk_cap, H] gathered input rows
    float *gu;       // [chunk_cap, 2 * max(I, S)] gate | up outputs
    float *act;      // [chunk_cap, max(I, S)] silu(gate) * up
    float *og;       // [chunk_cap, H] expert outputs before weighting
    uint16_t *xg16;  // [chunk_cap, H] gathered rows in BF16 (BF16 experts)
    uint16_t *act16; // [chunk_cap, I] act in BF16 (BF16 experts)
    int chunk_cap;   // rows the buffers above hold
    int *seg;        // [seg_cap * EP_SEG] per segment: local expert, first sorted pair, rows
    int seg_cap;
    int *task; // [task_cap * 2] per kernel task: segment, first weight row
    int task_cap;
    int *segord; // [segord_cap] a pass's segments, tallest first
    int segord_cap;
};

// ---- load ----------------------------------------------------------------

// 64-byte aligned (aligned_alloc wants a multiple of the alignment): each
// fp32 weight panel's rows then start on a cache line whenever the
// matrices' sizes are multiples of 16 floats, as in every real model.
static ep_status alloc_floats(float **out, size_t n, const char *what, int layer)
{
    const size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    *out = bytes ? aligned_alloc(64, bytes) : NULL;
    if (!*out && n)
        return ep_errorf(EP_ERR_NOMEM, "experts: layer %d: cannot allocate %zu bytes for %s", layer,
                         bytes, what);
    return EP_OK;
}

// Routed expert loc of L in the checkpoint's layout and fp32, to or from
// hf [gate [I, H] | up [I, H] | down [H, I]]: the panels packed or unpacked.
static void pack_expert(const ep_experts *e, ep_experts_layer *L, size_t loc, const float *hf)
{
    const int H = e->hidden, I = e->inter;
    const size_t ih = (size_t)I * H;
    float *gu = L->gate_up + 2 * ih * loc;
    ep_kern_f32_pack(I, H, hf, H, gu);
    ep_kern_f32_pack(I, H, hf + ih, H, gu + ih);
    ep_kern_f32_pack(H, I, hf + 2 * ih, I, L->down + ih * loc);
}

static void unpack_expert(const ep_experts *e, const ep_experts_layer *L, size_t loc, float *hf)
{
    const int H = e->hidden, I = e->inter;
    const size_t ih = (size_t)I * H;
    const float *gu = L->gate_up + 2 * ih * loc;
    ep_kern_f32_unpack(I, H, gu, hf, H);
    ep_kern_f32_unpack(I, H, gu + ih, hf + ih, H);
    ep_kern_f32_unpack(H, I, L->down + ih * loc, hf + 2 * ih, I);
}

// gate [I, H], up [I, H] and down [H, I] of routed expert g at layer.
static ep_status read_expert(ep_weights *w, int layer, int g, int I, int H, float *gate, float *up,
                             float *down)
{
    const int64_t gu_shape[2] = {I, H}, d_shape[2] = {H, I};
    char name[256];
    ep_status st;
    ep_name_expert(name, sizeof name, layer, g, "gate_proj");
    if ((st = ep_weights_read_f32(w, name, 2, gu_shape, gate))) return st;
    ep_name_expert(name, sizeof name, layer, g, "up_proj");
    if ((st = ep_weights_read_f32(w, name, 2, gu_shape, up))) return st;
    ep_name_expert(name, sizeof name, layer, g, "down_proj");
    return ep_weights_read_f32(w, name, 2, d_shape, down);
}

// The layout of `layer` for placement p (local ids, storage allocated but
// not filled). Storage: fp32 gate_up/down, or their BF16 twins.
static ep_status alloc_routed(ep_experts *e, const ep_placement *p, int layer)
{
    const int E = e->cfg.n_experts, H = e->hidden, I = e->inter;
    ep_experts_layer *L = &e->layers[layer];
    L->n_local = e->rank < 0 ? E : ep_placement_n_local(p, e->rank);
    L->local_of = ep_xmalloc((size_t)E * sizeof(int));
    L->global_of = ep_xmalloc((size_t)(L->n_local ? L->n_local : 1) * sizeof(int));
    for (int g = 0; g < E; g++)
        L->local_of[g] = -1;
    for (int s = 0; s < L->n_local; s++) {
        int g = e->rank < 0 ? s : p->local_expert[p->local_off[e->rank] + s];
        EP_ASSERT(g >= 0 && g < E && L->local_of[g] < 0); // placement lists each expert once
        L->local_of[g] = s;
        L->global_of[s] = g;
    }
    const size_t gu_n = (size_t)2 * I * H, d_n = (size_t)H * I;
    ep_status st;
    if (e->bf16) {
        L->gate_up16 = malloc(gu_n * L->n_local * sizeof(uint16_t));
        L->down16 = malloc(d_n * L->n_local * sizeof(uint16_t));
        if ((!L->gate_up16 || !L->down16) && L->n_local)
            return ep_errorf(EP_ERR_NOMEM,
                             "experts: layer %d: cannot allocate %zu bytes for BF16 experts", layer,
                             (gu_n + d_n) * L->n_local * sizeof(uint16_t));
        e->weight_bytes += (gu_n + d_n) * L->n_local * sizeof(uint16_t);
        return EP_OK;
    }
    if ((st = alloc_floats(&L->gate_up, gu_n * L->n_local, "routed gate_proj|up_proj", layer)))
        return st;
    if ((st = alloc_floats(&L->down, d_n * L->n_local, "routed down_proj", layer))) return st;
    e->weight_bytes += (gu_n + d_n) * L->n_local * sizeof(float);
    return EP_OK;
}

// One expert at a time read in fp32 into a staging buffer, then packed into
// panels or rounded to BF16: no second copy of the shard ever exists.
static ep_status load_routed(ep_experts *e, ep_weights *w, const ep_placement *p, int layer)
{
    const int H = e->hidden, I = e->inter;
    ep_experts_layer *L = &e->layers[layer];
    ep_status st;
    if ((st = alloc_routed(e, p, layer))) return st;
    const size_t gu_n = (size_t)2 * I * H, d_n = (size_t)H * I;
    float *stage;
    if ((st = alloc_floats(&stage, gu_n + d_n, "expert staging", layer))) return st;
    for (int s = 0; s < L->n_local; s++) {
        st = read_expert(w, layer, L->global_of[s], I, H, stage, stage + (size_t)I * H,
                         stage + gu_n);
        if (st) {
            free(stage);
            return ep_error_prefix(st, "experts: layer %d expert %d (rank %d)", layer,
                                   L->global_of[s], e->rank);
        }
        if (e->bf16) {
            ep_kern_to_bf16((int64_t)gu_n, stage, L->gate_up16 + gu_n * s);
            ep_kern_to_bf16((int64_t)d_n, stage + gu_n, L->down16 + d_n * s);
        } else {
            pack_expert(e, L, (size_t)s, stage);
        }
    }
    free(stage);
    return EP_OK;
}

static ep_status load_shared(ep_experts *e, ep_weights *w, int layer)
{
    const int H = e->hidden, S = e->shared_inter;
    ep_experts_layer *L = &e->layers[layer];
    const ep_dtype dt = e->bf16 ? EP_DTYPE_BF16 : EP_DTYPE_F32;
    char name[256];
    ep_status st;
    ep_name_shared(name, sizeof name, layer, "gate_proj");
    if ((st = ep_weights_read_mat(w, name, S, H, dt, &L->sh_gate))) goto fail;
    ep_name_shared(name, sizeof name, layer, "up_proj");
    if ((st = ep_weights_read_mat(w, name, S, H, dt, &L->sh_up))) goto fail;
    ep_name_shared(name, sizeof name, layer, "down_proj");
    if ((st = ep_weights_read_mat(w, name, H, S, dt, &L->sh_down))) goto fail;
    e->weight_bytes +=
        ep_mat_bytes(&L->sh_gate) + ep_mat_bytes(&L->sh_up) + ep_mat_bytes(&L->sh_down);
    return EP_OK;
fail:
    return ep_error_prefix(st, "experts: layer %d shared experts", layer);
}

ep_status ep_experts_load(const ep_model_cfg *cfg, ep_weights *w, const ep_placement *p, int rank,
                          ep_experts **out)
{
    return ep_experts_load_ex(cfg, w, p, rank, NULL, out);
}

ep_status ep_experts_load_ex(const ep_model_cfg *cfg, ep_weights *w, const ep_placement *p,
                             int rank, const ep_experts_opts *opts, ep_experts **out)
{
    *out = NULL;
    ep_dtype wdt = opts ? opts->weight_dtype : EP_DTYPE_F32;
    if (wdt != EP_DTYPE_F32 && wdt != EP_DTYPE_BF16 && wdt != EP_DTYPE_AUTO)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "experts: weight_dtype %s: expected auto, F32 or BF16 storage of routed "
                         "experts",
                         ep_dtype_name(wdt));
    ep_status rs = ep_weights_expert_dtype(w, &wdt);
    if (rs) return rs;
    if (cfg->n_experts > 0 && (cfg->hidden <= 0 || cfg->moe_inter <= 0 || cfg->n_shared < 0))
        return ep_errorf(EP_ERR_CONFIG,
                         "experts: %s: expected hidden > 0, moe_inter > 0, n_shared >= 0, found "
                         "hidden %d, moe_inter %d, n_shared %d",
                         cfg->name, cfg->hidden, cfg->moe_inter, cfg->n_shared);
    if (rank >= 0) {
        if (!p)
            return ep_errorf(EP_ERR_ARG, "experts: rank %d needs a placement, found none", rank);
        if (p->n_experts != cfg->n_experts)
            return ep_errorf(EP_ERR_ARG, "experts: placement covers %d experts, %s has %d",
                             p->n_experts, cfg->name, cfg->n_experts);
        if (rank >= p->world_size)
            return ep_errorf(EP_ERR_ARG, "experts: rank %d outside the placement's world of %d",
                             rank, p->world_size);
    }

    ep_experts *e = ep_xcalloc(1, sizeof *e);
    e->cfg = *cfg;
    e->bf16 = wdt == EP_DTYPE_BF16;
    e->rank = rank < 0 ? -1 : rank;
    e->hidden = cfg->hidden;
    e->inter = cfg->moe_inter;
    e->shared_inter = cfg->moe_inter * cfg->n_shared;
    e->layers = ep_xcalloc((size_t)(cfg->n_layers > 0 ? cfg->n_layers : 1), sizeof *e->layers);

    ep_status st = EP_OK;
    for (int l = 0; l < cfg->n_layers && !st; l++) {
        if (!ep_model_layer_is_moe(cfg, l)) continue;
        st = load_routed(e, w, p, l);
        if (!st && e->shared_inter > 0) st = load_shared(e, w, l);
    }
    if (st) {
        ep_experts_free(e);
        return st;
    }
    *out = e;
    return EP_OK;
}

void ep_experts_free(ep_experts *e)
{
    if (!e) return;
    for (int l = 0; l < e->cfg.n_layers; l++) {
        ep_experts_layer *L = &e->layers[l];
        free(L->local_of);
        free(L->global_of);
        free(L->gate_up);
        free(L->down);
        free(L->gate_up16);
        free(L->down16);
        ep_mat_free(&L->sh_gate);
        ep_mat_free(&L->sh_up);
        ep_mat_free(&L->sh_down);
        free(L->pending);
    }
    free(e->layers);
    free(e->start);
    free(e->fill);
    free(e->order_pair);
    free(e->order_rec);
    free(e->xg);
    free(e->gu);
    free(e->act);
    free(e->og);
    free(e->xg16);
    free(e->act16);
    free(e->seg);
    free(e->task);
    free(e->segord);
    free(e);
}

// ---- moving experts between shards (re-placement) -------------------------

size_t ep_experts_expert_bytes(const ep_experts *e)
{
    size_t n = (size_t)3 * e->inter * e->hidden; // gate, up [I, H] and down [H, I]
    return n * (e->bf16 ? sizeof(uint16_t) : sizeof(float));
}

// The local index of a held expert at a MoE layer, or an error naming both.
static ep_status held_index(const ep_experts *e, int layer, int expert, const char *what, int *loc)
{
    if (layer < 0 || layer >= e->cfg.n_layers || !ep_model_layer_is_moe(&e->cfg, layer) ||
        expert < 0 || expert >= e->cfg.n_experts || e->layers[layer].local_of[expert] < 0)
        return ep_errorf(EP_ERR_ARG,
                         "experts %s: layer %d expert %d: expected a routed expert this shard "
                         "(rank %d) holds at a MoE layer, found none",
                         what, layer, expert, e->rank);
    *loc = e->layers[layer].local_of[expert];
    return EP_OK;
}

ep_status ep_experts_export(const ep_experts *e, int layer, int expert, void *buf)
{
    int s = -1;
    ep_status st = held_index(e, layer, expert, "export", &s);
    if (st) return st;
    const ep_experts_layer *L = &e->layers[layer];
    if (L->pending && L->pending[s])
        return ep_errorf(EP_ERR_ARG, "experts export: layer %d expert %d not imported yet", layer,
                         expert);
    if (!e->bf16) {
        unpack_expert(e, L, (size_t)s, buf);
        return EP_OK;
    }
    const size_t gu_n = (size_t)2 * e->inter * e->hidden, d_n = (size_t)e->hidden * e->inter;
    memcpy(buf, L->gate_up16 + gu_n * s, gu_n * sizeof(uint16_t));
    memcpy((uint16_t *)buf + gu_n, L->down16 + d_n * s, d_n * sizeof(uint16_t));
    return EP_OK;
}

ep_status ep_experts_import(ep_experts *e, int layer, int expert, const void *buf)
{
    int s = -1;
    ep_status st = held_index(e, layer, expert, "import", &s);
    if (st) return st;
    ep_experts_layer *L = &e->layers[layer];
    if (!e->bf16) {
        pack_expert(e, L, (size_t)s, buf);
    } else {
        const size_t gu_n = (size_t)2 * e->inter * e->hidden, d_n = (size_t)e->hidden * e->inter;
        memcpy(L->gate_up16 + gu_n * s, buf, gu_n * sizeof(uint16_t));
        memcpy(L->down16 + d_n * s, (const uint16_t *)buf + gu_n, d_n * sizeof(uint16_t));
    }
    if (L->pending && L->pending[s]) {
        L->pending[s] = 0;
        e->n_pending--;
    }
    return EP_OK;
}

bool ep_experts_pending(const ep_experts *e, int layer, int expert)
{
    int s = -1;
    if (held_index(e, layer, expert, "pending", &s)) {
        ep_clear_error();
        return false;
    }
    return e->layers[layer].pending && e->layers[layer].pending[s];
}

// dst = src: a mapped matrix is shared (the mapping outlives both), an owned
// one copied.
static void mat_copy(const ep_mat *src, ep_mat *dst)
{
    *dst = *src;
    if (!src->owned) return;
    dst->owned = ep_xmalloc(ep_mat_bytes(src));
    memcpy(dst->owned, src->owned, ep_mat_bytes(src));
    dst->data = dst->owned;
}

ep_status ep_experts_reshard(const ep_experts *old, const ep_placement *p, int rank,
                             ep_experts **out)
{
    *out = NULL;
    const ep_model_cfg *cfg = &old->cfg;
    if (old->rank < 0 || rank < 0 || !p || p->n_experts != cfg->n_experts || rank >= p->world_size)
        return ep_errorf(EP_ERR_ARG,
                         "experts reshard: expected a shard (rank >= 0) and a placement of %d "
                         "experts holding rank %d, found shard rank %d, placement of %d experts "
                         "over %d ranks",
                         cfg->n_experts, rank, old->rank, p ? p->n_experts : 0,
                         p ? p->world_size : 0);
    ep_experts *e = ep_xcalloc(1, sizeof *e);
    e->cfg = old->cfg;
    e->bf16 = old->bf16;
    e->rank = rank;
    e->hidden = old->hidden;
    e->inter = old->inter;
    e->shared_inter = old->shared_inter;
    e->layers = ep_xcalloc((size_t)(cfg->n_layers > 0 ? cfg->n_layers : 1), sizeof *e->layers);
    const int S = e->shared_inter;
    const size_t eb = ep_experts_expert_bytes(e);
    void *tmp = ep_xmalloc(eb);
    ep_status st = EP_OK;
    for (int l = 0; l < cfg->n_layers && !st; l++) {
        if (!ep_model_layer_is_moe(cfg, l)) continue;
        if ((st = alloc_routed(e, p, l))) break;
        ep_experts_layer *L = &e->layers[l];
        const ep_experts_layer *O = &old->layers[l];
        L->pending = ep_xcalloc((size_t)(L->n_local ? L->n_local : 1), 1);
        for (int s = 0; s < L->n_local; s++) {
            int g = L->global_of[s];
            if (O->local_of[g] >= 0 && !(O->pending && O->pending[O->local_of[g]])) {
                ep_status x = ep_experts_export(old, l, g, tmp);
                EP_ASSERT(x == EP_OK);
                L->pending[s] = 1; // import clears it
                e->n_pending++;
                ep_experts_import(e, l, g, tmp);
            } else {
                L->pending[s] = 1;
                e->n_pending++;
            }
        }
        if (S > 0) { // shared experts are replicated: copy, never re-read
            mat_copy(&O->sh_gate, &L->sh_gate);
            mat_copy(&O->sh_up, &L->sh_up);
            mat_copy(&O->sh_down, &L->sh_down);
            e->weight_bytes +=
                ep_mat_bytes(&L->sh_gate) + ep_mat_bytes(&L->sh_up) + ep_mat_bytes(&L->sh_down);
        }
    }
    free(tmp);
    if (st) {
        ep_experts_free(e);
        return st;
    }
    *out = e;
    return EP_OK;
}

size_t ep_experts_bytes(const ep_experts *e)
{
    return e ? e->weight_bytes : 0;
}

// Held at every MoE layer (the placement is per model today, so a held
// expert is held everywhere; false when the model has no MoE layer).
bool ep_experts_has(const ep_experts *e, int expert)
{
    if (!e || expert < 0 || expert >= e->cfg.n_experts) return false;
    bool any = false;
    for (int l = 0; l < e->cfg.n_layers; l++) {
        if (!ep_model_layer_is_moe(&e->cfg, l)) continue;
        if (e->layers[l].local_of[expert] < 0) return false;
        any = true;
    }
    return any;
}

// ---- scratch -------------------------------------------------------------

static void grow_chunk(ep_experts *e, int rows)
{
    if (rows <= e->chunk_cap) return;
    const size_t H = (size_t)e->hidden, W = (size_t)EP_MAX(e->inter, e->shared_inter);
    free(e->xg);
    free(e->gu);
    free(e->act);
    free(e->og);
    free(e->xg16);
    free(e->act16);
    e->xg = ep_xmalloc((size_t)rows * H * sizeof(float));
    e->gu = ep_xmalloc((size_t)rows * 2 * W * sizeof(float));
    e->act = ep_xmalloc((size_t)rows * W * sizeof(float));
    e->og = ep_xmalloc((size_t)rows * H * sizeof(float));
    e->xg16 = e->bf16 ? ep_xmalloc((size_t)rows * H * sizeof(uint16_t)) : NULL;
    e->act16 = e->bf16 ? ep_xmalloc((size_t)rows * e->inter * sizeof(uint16_t)) : NULL;
    e->chunk_cap = rows;
}

static void grow_order(ep_experts *e, size_t n_pairs)
{
    if (n_pairs <= e->order_cap) return;
    e->order_pair = ep_xrealloc(e->order_pair, n_pairs * sizeof(int));
    e->order_rec = ep_xrealloc(e->order_rec, n_pairs * sizeof(int));
    e->order_cap = n_pairs;
}

static void grow_counts(ep_experts *e, int n_local)
{
    if (n_local <= e->cnt_cap) return;
    e->start = ep_xrealloc(e->start, (size_t)(n_local + 1) * sizeof(int));
    e->fill = ep_xrealloc(e->fill, (size_t)(n_local ? n_local : 1) * sizeof(int));
    e->cnt_cap = n_local;
}

static void grow_ints(int **p, int *cap, int n, int per)
{
    if (n <= *cap) return;
    *p = ep_xrealloc(*p, (size_t)n * per * sizeof(int));
    *cap = n;
}

// ---- grouped SwiGLU -------------------------------------------------------

static ep_status check_layer(const ep_experts *e, int layer, const char *what)
{
    if (layer < 0 || layer >= e->cfg.n_layers || !ep_model_layer_is_moe(&e->cfg, layer))
        return ep_errorf(EP_ERR_ARG,
                         "experts %s: layer %d is not a MoE layer of %s (MoE layers are %d..%d)",
                         what, layer, e->cfg.name, e->cfg.first_k_dense, e->cfg.n_layers - 1);
    return EP_OK;
}

// act[m, W] = silu(gu[:, :W]) * gu[:, W:] for the m rows of gu [m, 2W]. One
// call per row: the gate and up halves of a row are adjacent, not contiguous
// across rows, and gemm_nt has no output stride to split them.
static void swiglu_rows(int m, int W, const float *gu, float *act)
{
    for (int r = 0; r < m; r++) {
        const float *g = gu + (size_t)r * 2 * W;
        ep_kern_swiglu(W, g, g + W, act + (size_t)r * W);
    }
}

// One pass of the forward: the sorted pairs [c0, c0 + rows), made of
// segments (a local expert and a run of its rows), all in the scratch.
typedef struct {
    ep_experts *e;
    const ep_experts_layer *L;
    const float *x;           // [n_rec, H]
    const float *pair_weight; // [n_pairs]
    float *y;                 // [n_rec, H]
    int c0, rows;
    int *seg; // [n_seg * EP_SEG] local expert, first sorted pair, rows
    int n_seg;
} ep_fwd_pass;

// The scratch row of a segment's first pair: the pass's rows in order.
static int seg_row(const ep_fwd_pass *f, const int *sg)
{
    return sg[1] - f->c0;
}

#define EP_FWD_GATHER_ROWS  16
#define EP_FWD_COMBINE_COLS 256

// Pass rows [16 task, + 16) into the row-major scratch (fp32, or BF16 for
// BF16 experts): buffer row q is sorted pair c0 + q.
static void gather_task(void *ctx, int task, int thread)
{
    const ep_fwd_pass *f = ctx;
    ep_experts *e = f->e;
    const int H = e->hidden, q0 = task * EP_FWD_GATHER_ROWS;
    for (int q = q0; q < EP_MIN(f->rows, q0 + EP_FWD_GATHER_ROWS); q++) {
        const float *src = f->x + (size_t)e->order_rec[f->c0 + q] * H;
        if (e->bf16)
            ep_kern_to_bf16(H, src, e->xg16 + (size_t)q * H);
        else
            memcpy(e->xg + (size_t)q * H, src, (size_t)H * sizeof(float));
    }
}

// gate and up columns [n0, n0 + nb) of one segment's expert, SiLU*mul fused:
// the task writes act (and its BF16 copy) for exactly those columns.
static void gate_up_task(void *ctx, int task, int thread)
{
    const ep_fwd_pass *f = ctx;
    ep_experts *e = f->e;
    const int *sg = f->seg + EP_SEG * e->task[2 * task];
    const int n0 = e->task[2 * task + 1];
    const int H = e->hidden, I = e->inter, loc = sg[0], b0 = seg_row(f, sg), m = sg[2];
    const int nb = EP_MIN(EP_EXPERTS_TASK_ROWS, I - n0);
    float *gu = e->gu + (size_t)b0 * 2 * I;
    const size_t gu_n = (size_t)2 * I * H;
    if (e->bf16) {
        const uint16_t *w = f->L->gate_up16 + gu_n * loc, *xa = e->xg16 + (size_t)b0 * H;
        ep_kern_bf16_nt(m, nb, H, xa, H, w + (size_t)n0 * H, H, gu + n0, 2 * I);
        ep_kern_bf16_nt(m, nb, H, xa, H, w + (size_t)(I + n0) * H, H, gu + I + n0, 2 * I);
    } else {
        // Rows n0.. of the gate and of the up panels: n0 is a panel boundary.
        const float *w = f->L->gate_up + gu_n * loc, *xa = e->xg + (size_t)b0 * H;
        ep_kern_f32_panel(m, nb, H, xa, H, w + (size_t)n0 * H, gu + n0, 2 * I);
        ep_kern_f32_panel(m, nb, H, xa, H, w + (size_t)(I + n0) * H, gu + I + n0, 2 * I);
    }
    for (int r = 0; r < m; r++) {
        const float *g = gu + (size_t)r * 2 * I + n0;
        float *a = e->act + (size_t)(b0 + r) * I + n0;
        ep_kern_swiglu(nb, g, g + I, a);
        if (e->bf16) ep_kern_to_bf16(nb, a, e->act16 + (size_t)(b0 + r) * I + n0);
    }
}

// down columns [n0, n0 + nb) of one segment's expert.
static void down_task(void *ctx, int task, int thread)
{
    const ep_fwd_pass *f = ctx;
    ep_experts *e = f->e;
    const int *sg = f->seg + EP_SEG * e->task[2 * task];
    const int n0 = e->task[2 * task + 1];
    const int H = e->hidden, I = e->inter, loc = sg[0], b0 = seg_row(f, sg), m = sg[2];
    const int nb = EP_MIN(EP_EXPERTS_TASK_ROWS, H - n0);
    const size_t d_n = (size_t)H * I;
    float *o = e->og + (size_t)b0 * H + n0;
    if (e->bf16)
        ep_kern_bf16_nt(m, nb, I, e->act16 + (size_t)b0 * I, I,
                        f->L->down16 + d_n * loc + (size_t)n0 * I, I, o, H);
    else
        ep_kern_f32_panel(m, nb, I, e->act + (size_t)b0 * I, I,
                          f->L->down + d_n * loc + (size_t)n0 * I, o, H);
}

// y[rec, cols] += w * og[row, cols] over the pass's rows in sorted order, one
// column block per task: no two tasks touch the same y element, and the
// order of the sums does not depend on the number of threads.
static void combine_task(void *ctx, int task, int thread)
{
    const ep_fwd_pass *f = ctx;
    const ep_experts *e = f->e;
    const int H = e->hidden, k0 = task * EP_FWD_COMBINE_COLS;
    const int k1 = EP_MIN(H, k0 + EP_FWD_COMBINE_COLS);
    for (int i = 0; i < f->n_seg; i++) {
        const int *sg = f->seg + EP_SEG * i;
        for (int r = 0; r < sg[2]; r++) {
            const float wt = f->pair_weight[e->order_pair[sg[1] + r]];
            const float *o = e->og + (size_t)(seg_row(f, sg) + r) * H;
            float *yr = f->y + (size_t)e->order_rec[sg[1] + r] * H;
            ep_kern_axpy(k1 - k0, wt, o + k0, yr + k0);
        }
    }
}

// Kernel tasks of the pass: one per (segment, block of EP_EXPERTS_TASK_ROWS
// output columns), tallest segments first. The pool hands tasks out in
// order, so a big task left for last would keep one thread busy while the
// others wait at the end of the phase (a 512-row segment's task is ~2 ms);
// each task writes its own outputs, so the order changes no result. A
// stable counting sort on the height: decode's one-row experts stay in
// local order.
static int build_tasks(ep_experts *e, const ep_fwd_pass *f, int width)
{
    const int per = (width + EP_EXPERTS_TASK_ROWS - 1) / EP_EXPERTS_TASK_ROWS;
    grow_ints(&e->task, &e->task_cap, f->n_seg * per, 2);
    grow_ints(&e->segord, &e->segord_cap, f->n_seg, 1);
    int at[EP_EXPERTS_CHUNK_ROWS + 2] = {0}; // key (CHUNK_ROWS - rows) -> first slot
    for (int i = 0; i < f->n_seg; i++)
        at[EP_EXPERTS_CHUNK_ROWS - f->seg[EP_SEG * i + 2] + 1]++;
    for (int r = 0; r <= EP_EXPERTS_CHUNK_ROWS; r++)
        at[r + 1] += at[r];
    for (int i = 0; i < f->n_seg; i++)
        e->segord[at[EP_EXPERTS_CHUNK_ROWS - f->seg[EP_SEG * i + 2]]++] = i;
    int n = 0;
    for (int o = 0; o < f->n_seg; o++)
        for (int n0 = 0; n0 < width; n0 += EP_EXPERTS_TASK_ROWS) {
            e->task[2 * n] = e->segord[o];
            e->task[2 * n + 1] = n0;
            n++;
        }
    return n;
}

static void forward_pass(ep_fwd_pass *f)
{
    ep_experts *e = f->e;
    ep_par_for((f->rows + EP_FWD_GATHER_ROWS - 1) / EP_FWD_GATHER_ROWS, gather_task, f);
    // Every expert at once over the pool, so a decode step's many one-token
    // experts share the threads.
    ep_par_for(build_tasks(e, f, e->inter), gate_up_task, f);
    ep_par_for(build_tasks(e, f, e->hidden), down_task, f);
    ep_par_for((e->hidden + EP_FWD_COMBINE_COLS - 1) / EP_FWD_COMBINE_COLS, combine_task, f);
}

ep_status ep_experts_forward(ep_experts *e, int layer, int n_rec, const int *pair_off,
                             const int *pair_expert, const float *pair_weight, const float *x,
                             float *y)
{
    ep_status st = check_layer(e, layer, "forward");
    if (st) return st;
    if (e->n_pending > 0)
        return ep_errorf(EP_ERR_ARG,
                         "experts forward: rank %d still awaits %lld expert weights after a "
                         "reshard (ep_experts_import)",
                         e->rank, (long long)e->n_pending);
    if (n_rec < 0)
        return ep_errorf(EP_ERR_ARG, "experts forward: n_rec = %d, expected >= 0", n_rec);
    if (n_rec == 0) return EP_OK;
    const ep_experts_layer *L = &e->layers[layer];
    const int H = e->hidden, E = e->cfg.n_experts;

    // Pass 1: validate and count pairs per local expert (nothing is written
    // to y before every pair is known to be computable here).
    grow_counts(e, L->n_local);
    int *start = e->start, *fill = e->fill;
    memset(start, 0, (size_t)(L->n_local + 1) * sizeof(int));
    if (pair_off[0] < 0)
        return ep_errorf(EP_ERR_ARG, "experts forward: pair_off[0] = %d, expected >= 0",
                         pair_off[0]);
    for (int i = 0; i < n_rec; i++) {
        if (pair_off[i + 1] < pair_off[i])
            return ep_errorf(EP_ERR_ARG,
                             "experts forward: layer %d record %d: pair_off decreases (%d -> %d)",
                             layer, i, pair_off[i], pair_off[i + 1]);
        for (int j = pair_off[i]; j < pair_off[i + 1]; j++) {
            int g = pair_expert[j];
            if (g < 0 || g >= E)
                return ep_errorf(EP_ERR_ARG,
                                 "experts forward: layer %d record %d: expert %d outside [0, %d)",
                                 layer, i, g, E);
            int loc = L->local_of[g];
            if (loc < 0)
                return ep_errorf(EP_ERR_ARG,
                                 "experts forward: layer %d record %d: expert %d is not held by "
                                 "rank %d (it holds %d of %d experts)",
                                 layer, i, g, e->rank, L->n_local, E);
            start[loc + 1]++;
        }
    }
    for (int s = 0; s < L->n_local; s++) {
        start[s + 1] += start[s];
        fill[s] = start[s];
    }

    // Pass 2: stable counting sort, so each expert's rows keep record order.
    const size_t n_pairs = (size_t)(pair_off[n_rec] - pair_off[0]);
    grow_order(e, n_pairs);
    for (int i = 0; i < n_rec; i++)
        for (int j = pair_off[i]; j < pair_off[i + 1]; j++) {
            int pos = fill[L->local_of[pair_expert[j]]]++;
            e->order_pair[pos] = j;
            e->order_rec[pos] = i;
        }

    // Segments: each expert's rows cut into runs of at most a chunk.
    const int CH = EP_EXPERTS_CHUNK_ROWS;
    grow_chunk(e, (int)EP_MIN(n_pairs, (size_t)CH));
    grow_ints(&e->seg, &e->seg_cap, L->n_local + (int)(n_pairs / CH) + 1, EP_SEG);
    int n_seg = 0;
    for (int s = 0; s < L->n_local; s++)
        for (int c = start[s]; c < start[s + 1]; c += CH) {
            e->seg[EP_SEG * n_seg] = s;
            e->seg[EP_SEG * n_seg + 1] = c;
            e->seg[EP_SEG * n_seg + 2] = EP_MIN(CH, start[s + 1] - c);
            n_seg++;
        }
    memset(y, 0, (size_t)n_rec * H * sizeof(float));

    // Passes: consecutive segments while they fit in a chunk. Experts in
    // local order, rows in record order within each: the order in which y
    // accumulates depends on the inputs alone.
    for (int i = 0; i < n_seg;) {
        ep_fwd_pass f = {.e = e,
                         .L = L,
                         .x = x,
                         .pair_weight = pair_weight,
                         .y = y,
                         .c0 = e->seg[EP_SEG * i + 1],
                         .rows = 0,
                         .seg = e->seg + EP_SEG * i};
        int j = i;
        while (j < n_seg && f.rows + e->seg[EP_SEG * j + 2] <= CH)
            f.rows += e->seg[EP_SEG * j++ + 2];
        f.n_seg = j - i;
        forward_pass(&f);
        i = j;
    }
    return EP_OK;
}

ep_status ep_experts_shared_forward(ep_experts *e, int layer, const float *x, int T, float *y)
{
    ep_status st = check_layer(e, layer, "shared forward");
    if (st) return st;
    if (T < 0) return ep_errorf(EP_ERR_ARG, "experts shared forward: T = %d, expected >= 0", T);
    if (e->shared_inter == 0 || T == 0) return EP_OK;
    const ep_experts_layer *L = &e->layers[layer];
    const int H = e->hidden, S = e->shared_inter;
    grow_chunk(e, EP_MIN(T, EP_EXPERTS_CHUNK_ROWS));
    for (int c = 0; c < T; c += EP_EXPERTS_CHUNK_ROWS) {
        const int m = EP_MIN(EP_EXPERTS_CHUNK_ROWS, T - c);
        const float *xc = x + (size_t)c * H;
        ep_dense_mm(m, xc, H, &L->sh_gate, 0.0f, e->gu, 2 * S);
        ep_dense_mm(m, xc, H, &L->sh_up, 0.0f, e->gu + S, 2 * S);
        swiglu_rows(m, S, e->gu, e->act);
        // beta = 1: the shared output is added straight into y, unweighted.
        ep_dense_mm(m, e->act, S, &L->sh_down, 1.0f, y + (size_t)c * H, H);
    }
    return EP_OK;
}

// ---- reference ------------------------------------------------------------

// x * sigmoid(x), with exp() only of -|x| so that nothing overflows.
static double ref_silu(double v)
{
    if (v >= 0) return v / (1.0 + exp(-v));
    double t = exp(v);
    return v * (t / (1.0 + t));
}

// y[H] += w * down[H, W] . (silu(gate[W, H] . x) * (up[W, H] . x)); dot
// products in double, the hidden activation h[W] kept in fp32 as the model's.
static void ref_expert(const float *gate, const float *up, const float *down, int W, int H,
                       const float *x, float w, float *h, float *y)
{
    for (int i = 0; i < W; i++) {
        double g = 0, u = 0;
        for (int k = 0; k < H; k++) {
            g += (double)gate[(size_t)i * H + k] * x[k];
            u += (double)up[(size_t)i * H + k] * x[k];
        }
        h[i] = (float)(ref_silu(g) * u);
    }
    for (int o = 0; o < H; o++) {
        double s = 0;
        for (int i = 0; i < W; i++)
            s += (double)down[(size_t)o * W + i] * h[i];
        y[o] += (float)(w * s);
    }
}

void ep_experts_reference(const ep_experts *e, int layer, const ep_routes *r, const float *x,
                          float *y)
{
    EP_ASSERT(layer >= 0 && layer < e->cfg.n_layers && ep_model_layer_is_moe(&e->cfg, layer));
    const ep_experts_layer *L = &e->layers[layer];
    EP_ASSERT(L->n_local == e->cfg.n_experts); // the reference needs every expert (rank < 0)
    const int H = e->hidden, I = e->inter, S = e->shared_inter;
    float *h = ep_xmalloc((size_t)EP_MAX(I, S) * sizeof(float));
    // The stored weights in the checkpoint's layout: unpacked from the
    // panels (fp32), or widened (BF16: the rounded values the kernels use).
    const size_t gu_n = (size_t)2 * I * H, d_n = (size_t)H * I, sh_n = (size_t)S * H;
    float *wide = ep_xmalloc((gu_n + d_n) * sizeof(float));
    float *sh = ep_xmalloc((3 * sh_n + 1) * sizeof(float));
    for (int i = 0; S > 0 && i < S; i++) {
        ep_mat_row_f32(&L->sh_gate, i, sh + (size_t)i * H);
        ep_mat_row_f32(&L->sh_up, i, sh + sh_n + (size_t)i * H);
    }
    for (int o = 0; S > 0 && o < H; o++)
        ep_mat_row_f32(&L->sh_down, o, sh + 2 * sh_n + (size_t)o * S);
    for (int t = 0; t < r->n_tokens; t++) {
        const float *xt = x + (size_t)t * H;
        float *yt = y + (size_t)t * H;
        for (int k = 0; k < H; k++)
            yt[k] = 0.0f;
        for (int j = r->offsets[t]; j < r->offsets[t + 1]; j++) {
            const int g = r->expert[j];
            EP_ASSERT(g >= 0 && g < e->cfg.n_experts);
            const size_t loc = (size_t)L->local_of[g];
            if (e->bf16) {
                for (size_t i = 0; i < gu_n; i++)
                    wide[i] = ep_bf16_to_f32(L->gate_up16[gu_n * loc + i]);
                for (size_t i = 0; i < d_n; i++)
                    wide[gu_n + i] = ep_bf16_to_f32(L->down16[d_n * loc + i]);
            } else {
                unpack_expert(e, L, loc, wide);
            }
            const float *gate = wide, *down = wide + gu_n;
            ref_expert(gate, gate + (size_t)I * H, down, I, H, xt, r->weight[j], h, yt);
        }
        if (S > 0) ref_expert(sh, sh + sh_n, sh + 2 * sh_n, S, H, xt, 1.0f, h, yt);
    }
    free(sh);
    free(wide);
    free(h);
}
