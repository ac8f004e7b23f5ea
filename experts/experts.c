// Routed experts of this rank's shard and the replicated shared experts of
// every MoE layer; the grouped SwiGLU over the records a rank received (gemms
// through the backend) and the plain C reference. Routing, placement and the
// all-to-all live elsewhere: this file only computes what it is handed.
// An ep_experts is used by one thread at a time (the forward scratch is in it).
#include "experts/experts.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// Rows gathered per gemm. Bounds the float scratch whatever the step size
// (a prefill step can bring tens of thousands of pairs) while keeping the
// gemms tall enough for BLAS to run near its peak.
#define EP_EXPERTS_CHUNK_ROWS 256

// One MoE layer. Dense layers keep an all-zero entry.
typedef struct {
    int n_local;       // routed experts held at this layer
    int *local_of;     // [n_experts] local index of global expert e, -1 when not held
    int *global_of;    // [n_local] global id of each local expert
    float *gate_up;    // [n_local, 2*I, H]: rows [0, I) gate_proj, rows [I, 2I) up_proj
    float *down;       // [n_local, H, I] down_proj
    float *sh_gate_up; // [2*S, H] shared gate_proj | up_proj, S = moe_inter * n_shared; or NULL
    float *sh_down;    // [H, S]
} ep_experts_layer;

struct ep_experts {
    ep_model_cfg cfg;         // a copy: the caller's cfg need not outlive us
    ep_backend *be;           // borrowed; NULL allows only the reference
    int rank;                 // whose shard this is; -1 = every expert
    int hidden;               // H
    int inter;                // I = moe_inter
    int shared_inter;         // S = moe_inter * n_shared (0 without shared experts)
    ep_experts_layer *layers; // [n_layers]
    size_t weight_bytes;

    // Forward scratch: sized on first use, grown only when a step needs more.
    int *start;      // [cnt_cap + 1] first sorted pair of each local expert
    int *fill;       // [cnt_cap] next free sorted slot of each local expert
    int cnt_cap;     // local experts the two arrays above cover
    int *order_pair; // [order_cap] pair index, sorted by local expert (stable)
    int *order_rec;  // [order_cap] record of that pair
    size_t order_cap;
    float *xg;     // [chunk_cap, H] gathered input rows
    float *gu;     // [chunk_cap, 2 * max(I, S)] gate | up outputs
    float *act;    // [chunk_cap, max(I, S)] silu(gate) * up
    float *og;     // [chunk_cap, H] expert outputs before weighting
    int chunk_cap; // rows the four float buffers hold
};

// ---- load ----------------------------------------------------------------

static ep_status alloc_floats(float **out, size_t n, const char *what, int layer)
{
    *out = malloc(n * sizeof(float));
    if (!*out && n)
        return ep_errorf(EP_ERR_NOMEM, "experts: layer %d: cannot allocate %zu bytes for %s", layer,
                         n * sizeof(float), what);
    return EP_OK;
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

static ep_status load_routed(ep_experts *e, ep_weights *w, const ep_placement *p, int layer)
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
    if ((st = alloc_floats(&L->gate_up, gu_n * L->n_local, "routed gate_proj|up_proj", layer)))
        return st;
    if ((st = alloc_floats(&L->down, d_n * L->n_local, "routed down_proj", layer))) return st;

    for (int s = 0; s < L->n_local; s++) {
        float *gate = L->gate_up + gu_n * s;
        if ((st = read_expert(w, layer, L->global_of[s], I, H, gate, gate + (size_t)I * H,
                              L->down + d_n * s)))
            return ep_error_prefix(st, "experts: layer %d expert %d (rank %d)", layer,
                                   L->global_of[s], e->rank);
    }
    e->weight_bytes += (gu_n + d_n) * L->n_local * sizeof(float);
    return EP_OK;
}

static ep_status load_shared(ep_experts *e, ep_weights *w, int layer)
{
    const int H = e->hidden, S = e->shared_inter;
    ep_experts_layer *L = &e->layers[layer];
    ep_status st;
    if ((st = alloc_floats(&L->sh_gate_up, (size_t)2 * S * H, "shared gate_proj|up_proj", layer)))
        return st;
    if ((st = alloc_floats(&L->sh_down, (size_t)H * S, "shared down_proj", layer))) return st;

    const int64_t gu_shape[2] = {S, H}, d_shape[2] = {H, S};
    char name[256];
    ep_name_shared(name, sizeof name, layer, "gate_proj");
    if ((st = ep_weights_read_f32(w, name, 2, gu_shape, L->sh_gate_up))) goto fail;
    ep_name_shared(name, sizeof name, layer, "up_proj");
    if ((st = ep_weights_read_f32(w, name, 2, gu_shape, L->sh_gate_up + (size_t)S * H))) goto fail;
    ep_name_shared(name, sizeof name, layer, "down_proj");
    if ((st = ep_weights_read_f32(w, name, 2, d_shape, L->sh_down))) goto fail;
    e->weight_bytes += (size_t)3 * S * H * sizeof(float);
    return EP_OK;
fail:
    return ep_error_prefix(st, "experts: layer %d shared experts", layer);
}

ep_status ep_experts_load(const ep_model_cfg *cfg, ep_weights *w, const ep_placement *p, int rank,
                          ep_backend *be, ep_experts **out)
{
    *out = NULL;
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
    e->be = be;
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
        free(L->sh_gate_up);
        free(L->sh_down);
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
    free(e);
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
    e->xg = ep_xmalloc((size_t)rows * H * sizeof(float));
    e->gu = ep_xmalloc((size_t)rows * 2 * W * sizeof(float));
    e->act = ep_xmalloc((size_t)rows * W * sizeof(float));
    e->og = ep_xmalloc((size_t)rows * H * sizeof(float));
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

// ---- grouped SwiGLU -------------------------------------------------------

static ep_status check_layer(const ep_experts *e, int layer, const char *what)
{
    if (layer < 0 || layer >= e->cfg.n_layers || !ep_model_layer_is_moe(&e->cfg, layer))
        return ep_errorf(EP_ERR_ARG,
                         "experts %s: layer %d is not a MoE layer of %s (MoE layers are %d..%d)",
                         what, layer, e->cfg.name, e->cfg.first_k_dense, e->cfg.n_layers - 1);
    if (!e->be)
        return ep_errorf(EP_ERR_ARG, "experts %s: loaded without a backend (reference only)", what);
    return EP_OK;
}

// act[m, W] = silu(gu[:, :W]) * gu[:, W:] for the m rows of gu [m, 2W]. One
// backend call per row: the gate and up halves of a row are adjacent, not
// contiguous across rows, and gemm_nt has no output stride to split them.
static void swiglu_rows(ep_backend *be, int m, int W, const float *gu, float *act)
{
    for (int r = 0; r < m; r++) {
        const float *g = gu + (size_t)r * 2 * W;
        be->vt->swiglu(be, W, g, g + W, act + (size_t)r * W);
    }
}

ep_status ep_experts_forward(ep_experts *e, int layer, int n_rec, const int *pair_off,
                             const int *pair_expert, const float *pair_weight, const float *x,
                             float *y)
{
    ep_status st = check_layer(e, layer, "forward");
    if (st) return st;
    if (n_rec < 0)
        return ep_errorf(EP_ERR_ARG, "experts forward: n_rec = %d, expected >= 0", n_rec);
    if (n_rec == 0) return EP_OK;
    const ep_experts_layer *L = &e->layers[layer];
    const int H = e->hidden, I = e->inter, E = e->cfg.n_experts;

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

    grow_chunk(e, (int)EP_MIN(n_pairs, (size_t)EP_EXPERTS_CHUNK_ROWS));
    memset(y, 0, (size_t)n_rec * H * sizeof(float));

    // Experts in local order, rows in record order within each: the order
    // in which y accumulates depends on the inputs alone.
    ep_backend *be = e->be;
    const size_t gu_n = (size_t)2 * I * H, d_n = (size_t)H * I;
    for (int s = 0; s < L->n_local; s++) {
        const float *w_gu = L->gate_up + gu_n * s, *w_d = L->down + d_n * s;
        for (int c = start[s]; c < start[s + 1]; c += EP_EXPERTS_CHUNK_ROWS) {
            const int m = EP_MIN(EP_EXPERTS_CHUNK_ROWS, start[s + 1] - c);
            for (int r = 0; r < m; r++)
                memcpy(e->xg + (size_t)r * H, x + (size_t)e->order_rec[c + r] * H,
                       (size_t)H * sizeof(float));
            be->vt->gemm_nt(be, m, 2 * I, H, e->xg, w_gu, 0.0f, e->gu);
            swiglu_rows(be, m, I, e->gu, e->act);
            be->vt->gemm_nt(be, m, H, I, e->act, w_d, 0.0f, e->og);
            for (int r = 0; r < m; r++) {
                const float wt = pair_weight[e->order_pair[c + r]];
                const float *o = e->og + (size_t)r * H;
                float *yr = y + (size_t)e->order_rec[c + r] * H;
                for (int k = 0; k < H; k++)
                    yr[k] += wt * o[k];
            }
        }
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
    ep_backend *be = e->be;
    grow_chunk(e, EP_MIN(T, EP_EXPERTS_CHUNK_ROWS));
    for (int c = 0; c < T; c += EP_EXPERTS_CHUNK_ROWS) {
        const int m = EP_MIN(EP_EXPERTS_CHUNK_ROWS, T - c);
        be->vt->gemm_nt(be, m, 2 * S, H, x + (size_t)c * H, L->sh_gate_up, 0.0f, e->gu);
        swiglu_rows(be, m, S, e->gu, e->act);
        // beta = 1: the shared output is added straight into y, unweighted.
        be->vt->gemm_nt(be, m, H, S, e->act, L->sh_down, 1.0f, y + (size_t)c * H);
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
    for (int t = 0; t < r->n_tokens; t++) {
        const float *xt = x + (size_t)t * H;
        float *yt = y + (size_t)t * H;
        for (int k = 0; k < H; k++)
            yt[k] = 0.0f;
        for (int j = r->offsets[t]; j < r->offsets[t + 1]; j++) {
            const int g = r->expert[j];
            EP_ASSERT(g >= 0 && g < e->cfg.n_experts);
            const float *gate = L->gate_up + (size_t)2 * I * H * L->local_of[g];
            const float *down = L->down + (size_t)H * I * L->local_of[g];
            ref_expert(gate, gate + (size_t)I * H, down, I, H, xt, r->weight[j], h, yt);
        }
        if (S > 0)
            ref_expert(L->sh_gate_up, L->sh_gate_up + (size_t)S * H, L->sh_down, S, H, xt, 1.0f, h,
                       yt);
    }
    free(h);
}
