// The CUDA experts: BF16 weights of this rank's shard in device memory, and
// one step of the grouped SwiGLU: upload the records, gather them by expert
// (plan.c's layout), gate|up and down as grouped GEMMs, SiLU * up, then the
// weighted per-record reduction, download. Routing, placement and the
// all-to-all live elsewhere; one thread uses an ep_experts_cuda at a time.
#include "experts/cuda/experts_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/cuda_util.h"
#include "common/dtype.h"
#include "experts/cuda/kernels.h"
#include "experts/cuda/plan.h"

#if defined(CUBLAS_VERSION) && CUBLAS_VERSION >= 120500
#define EP_HAVE_GROUPED_GEMM 1
#else
#define EP_HAVE_GROUPED_GEMM 0
#endif

// One MoE layer. Dense layers keep an all-zero entry.
typedef struct {
    int n_local;          // routed experts held at this layer
    int *local_of;        // [n_experts] (host) local index of global expert e, -1 when not held
    uint16_t *gate_up;    // device [n_local, 2I, H] bf16: rows [0, I) gate_proj, [I, 2I) up_proj
    uint16_t *down;       // device [n_local, H, I] bf16
    uint16_t *sh_gate_up; // device [2S, H] bf16, or NULL without shared experts
    uint16_t *sh_down;    // device [H, S] bf16
} ep_cuda_layer;

// Device scratch of one step, grown only when a step is larger than any before.
typedef struct {
    float *x, *y;   // [rec_cap, H] fp32: records in, partial sums out
    uint16_t *xg;   // [row_cap, H] bf16 gathered inputs
    uint16_t *gu;   // [row_cap, 2W] bf16 gate | up, W = max(I, S)
    uint16_t *act;  // [row_cap, W] bf16 silu(gate) * up
    uint16_t *og;   // [row_cap, H] bf16 expert outputs
    int *row_rec;   // [row_cap]
    int *pair_row;  // [row_cap]
    float *pair_w;  // [row_cap]
    int *rec_off;   // [rec_cap + 1]
    void **ptr;     // [6 * grp_cap] A|B|C pointer arrays of the two grouped GEMMs
    size_t cap[11]; // bytes held by each of the above, in order
} ep_cuda_scratch;

struct ep_experts_cuda {
    ep_model_cfg cfg; // a copy
    int rank;         // whose shard; -1 = every expert
    int device;
    int hidden, inter, shared_inter; // H, I, S
    ep_cuda_layer *layers;           // [n_layers]
    size_t weight_bytes;
    cudaStream_t stream;
    cublasHandle_t blas;
    ep_cuda_gemm_mode mode, used;

    ep_cuda_plan plan;
    ep_cuda_gemm_list gl;
    // Host arrays of the grouped call, [grp_cap] each.
    cublasOperation_t *op_a, *op_b;
    float *alpha, *beta;
    int *group_size;
    int grp_cap;
    ep_cuda_scratch s;
};

// ---- load --------------------------------------------------------------------------------

static ep_status upload_bf16(uint16_t *dst, const float *src, size_t n, uint16_t *stage)
{
    for (size_t i = 0; i < n; i++)
        stage[i] = ep_f32_to_bf16(src[i]);
    ep_status st = ep_cuda_copy_cls(dst, stage, n * sizeof(uint16_t), cudaMemcpyHostToDevice, 0,
                                    EP_COPY_LOAD, "expert weights");
    if (st == EP_OK) st = EP_CUDA_ST(cudaStreamSynchronize(0)); // stage is reused at once
    return st;
}

static ep_status dev_alloc(void **p, size_t bytes, const char *what, int layer)
{
    ep_status st = EP_CUDA_ST(cudaMalloc(p, bytes ? bytes : 1));
    if (st != EP_OK) {
        *p = NULL;
        return ep_error_prefix(st, "cuda experts: layer %d: %zu bytes of device memory for %s",
                               layer, bytes, what);
    }
    return EP_OK;
}

// Weight bytes this rank will hold, to refuse a device too small up front.
static size_t planned_bytes(const ep_model_cfg *cfg, const ep_placement *p, int rank)
{
    const size_t I = (size_t)cfg->moe_inter, H = (size_t)cfg->hidden;
    const size_t S = (size_t)cfg->moe_inter * (size_t)cfg->n_shared;
    const size_t n_local =
        rank < 0 ? (size_t)cfg->n_experts : (size_t)ep_placement_n_local(p, rank);
    size_t per_layer = (n_local * 3 * I * H + 3 * S * H) * sizeof(uint16_t);
    return per_layer * (size_t)ep_model_n_moe_layers(cfg);
}

static ep_status load_layer(ep_experts_cuda *e, ep_weights *w, const ep_placement *p, int layer,
                            float *f32, uint16_t *stage)
{
    const int E = e->cfg.n_experts, H = e->hidden, I = e->inter, S = e->shared_inter;
    ep_cuda_layer *L = &e->layers[layer];
    L->n_local = e->rank < 0 ? E : ep_placement_n_local(p, e->rank);
    L->local_of = ep_xmalloc((size_t)E * sizeof(int));
    for (int g = 0; g < E; g++)
        L->local_of[g] = -1;

    const size_t gu_n = (size_t)2 * I * H, d_n = (size_t)H * I;
    ep_status st;
    if ((st = dev_alloc((void **)&L->gate_up, gu_n * L->n_local * 2, "routed gate|up", layer)))
        return st;
    if ((st = dev_alloc((void **)&L->down, d_n * L->n_local * 2, "routed down", layer))) return st;

    const int64_t gu_shape[2] = {I, H}, d_shape[2] = {H, I};
    char name[256];
    for (int s = 0; s < L->n_local; s++) {
        const int g = e->rank < 0 ? s : p->local_expert[p->local_off[e->rank] + s];
        EP_ASSERT(g >= 0 && g < E && L->local_of[g] < 0); // placement lists each expert once
        L->local_of[g] = s;
        ep_name_expert(name, sizeof name, layer, g, "gate_proj");
        if ((st = ep_weights_read_f32(w, name, 2, gu_shape, f32))) goto fail_expert;
        ep_name_expert(name, sizeof name, layer, g, "up_proj");
        if ((st = ep_weights_read_f32(w, name, 2, gu_shape, f32 + (size_t)I * H))) goto fail_expert;
        if ((st = upload_bf16(L->gate_up + gu_n * s, f32, gu_n, stage))) goto fail_expert;
        ep_name_expert(name, sizeof name, layer, g, "down_proj");
        if ((st = ep_weights_read_f32(w, name, 2, d_shape, f32))) goto fail_expert;
        if ((st = upload_bf16(L->down + d_n * s, f32, d_n, stage))) goto fail_expert;
        continue;
    fail_expert:
        return ep_error_prefix(st, "cuda experts: layer %d expert %d (rank %d)", layer, g, e->rank);
    }
    e->weight_bytes += (gu_n + d_n) * L->n_local * sizeof(uint16_t);
    if (S == 0) return EP_OK;

    const size_t sgu_n = (size_t)2 * S * H, sd_n = (size_t)H * S;
    const int64_t sgu_shape[2] = {S, H}, sd_shape[2] = {H, S};
    if ((st = dev_alloc((void **)&L->sh_gate_up, sgu_n * 2, "shared gate|up", layer))) return st;
    if ((st = dev_alloc((void **)&L->sh_down, sd_n * 2, "shared down", layer))) return st;
    ep_name_shared(name, sizeof name, layer, "gate_proj");
    if ((st = ep_weights_read_f32(w, name, 2, sgu_shape, f32))) goto fail_shared;
    ep_name_shared(name, sizeof name, layer, "up_proj");
    if ((st = ep_weights_read_f32(w, name, 2, sgu_shape, f32 + (size_t)S * H))) goto fail_shared;
    if ((st = upload_bf16(L->sh_gate_up, f32, sgu_n, stage))) goto fail_shared;
    ep_name_shared(name, sizeof name, layer, "down_proj");
    if ((st = ep_weights_read_f32(w, name, 2, sd_shape, f32))) goto fail_shared;
    if ((st = upload_bf16(L->sh_down, f32, sd_n, stage))) goto fail_shared;
    e->weight_bytes += (sgu_n + sd_n) * sizeof(uint16_t);
    return EP_OK;
fail_shared:
    return ep_error_prefix(st, "cuda experts: layer %d shared experts", layer);
}

static ep_status check_args(const ep_model_cfg *cfg, const ep_placement *p, int rank)
{
    if (cfg->n_experts > 0 && (cfg->hidden <= 0 || cfg->moe_inter <= 0 || cfg->n_shared < 0))
        return ep_errorf(EP_ERR_CONFIG,
                         "cuda experts: %s: expected hidden > 0, moe_inter > 0, n_shared >= 0, "
                         "found hidden %d, moe_inter %d, n_shared %d",
                         cfg->name, cfg->hidden, cfg->moe_inter, cfg->n_shared);
    if (rank < 0) return EP_OK;
    if (!p)
        return ep_errorf(EP_ERR_ARG, "cuda experts: rank %d needs a placement, found none", rank);
    if (p->n_experts != cfg->n_experts)
        return ep_errorf(EP_ERR_ARG, "cuda experts: placement covers %d experts, %s has %d",
                         p->n_experts, cfg->name, cfg->n_experts);
    if (rank >= p->world_size)
        return ep_errorf(EP_ERR_ARG, "cuda experts: rank %d outside the placement's world of %d",
                         rank, p->world_size);
    return EP_OK;
}

ep_status ep_experts_cuda_load(const ep_model_cfg *cfg, ep_weights *w, const ep_placement *p,
                               int rank, ep_gpu *g, ep_experts_cuda **out)
{
    *out = NULL;
    ep_status st = check_args(cfg, p, rank);
    if (st != EP_OK) return st;
    if ((st = ep_gpu_make_current(g)) != EP_OK) return st;

    const size_t need = planned_bytes(cfg, p, rank);
    size_t free_b = 0, total_b = 0;
    EP_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    if (need > free_b)
        return ep_errorf(EP_ERR_NOMEM,
                         "cuda experts: %s rank %d: expected %.2f GiB of BF16 expert weights to "
                         "fit on device %d (%s), found %.2f GiB free of %.2f GiB",
                         cfg->name, rank, need / 1073741824.0, ep_gpu_device(g), ep_gpu_name(g),
                         free_b / 1073741824.0, total_b / 1073741824.0);

    ep_experts_cuda *e = ep_xcalloc(1, sizeof *e);
    e->cfg = *cfg;
    e->rank = rank < 0 ? -1 : rank;
    e->device = ep_gpu_device(g);
    e->hidden = cfg->hidden;
    e->inter = cfg->moe_inter;
    e->shared_inter = cfg->moe_inter * cfg->n_shared;
    e->mode = EP_CUDA_GEMM_AUTO;
    e->used = EP_CUDA_GEMM_AUTO;
    e->layers = ep_xcalloc((size_t)(cfg->n_layers > 0 ? cfg->n_layers : 1), sizeof *e->layers);
    if ((st = EP_CUDA_ST(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking)))) goto err;
    if ((st = EP_CUBLAS_ST(cublasCreate(&e->blas)))) goto err;
    if ((st = EP_CUBLAS_ST(cublasSetStream(e->blas, e->stream)))) goto err;

    // Host staging of one expert (or the shared MLP, whichever is larger).
    const size_t I = (size_t)e->inter, H = (size_t)e->hidden, S = (size_t)e->shared_inter;
    const size_t stage_n = 2 * EP_MAX(I, S) * H;
    float *f32 = ep_xmalloc((stage_n ? stage_n : 1) * sizeof(float));
    uint16_t *stage = ep_xmalloc((stage_n ? stage_n : 1) * sizeof(uint16_t));
    for (int l = 0; l < cfg->n_layers && st == EP_OK; l++)
        if (ep_model_layer_is_moe(cfg, l)) st = load_layer(e, w, p, l, f32, stage);
    free(f32);
    free(stage);
    if (st != EP_OK) goto err;
    *out = e;
    return EP_OK;
err:
    ep_experts_cuda_free(e);
    return st;
}

void ep_experts_cuda_free(ep_experts_cuda *e)
{
    if (!e) return;
    // Best effort: nothing can be recovered from a device failing at shutdown.
    (void)cudaSetDevice(e->device);
    if (e->stream) (void)cudaStreamSynchronize(e->stream);
    for (int l = 0; l < e->cfg.n_layers; l++) {
        ep_cuda_layer *L = &e->layers[l];
        free(L->local_of);
        (void)cudaFree(L->gate_up);
        (void)cudaFree(L->down);
        (void)cudaFree(L->sh_gate_up);
        (void)cudaFree(L->sh_down);
    }
    free(e->layers);
    void *bufs[] = {e->s.x,       e->s.y,        e->s.xg,     e->s.gu,      e->s.act, e->s.og,
                    e->s.row_rec, e->s.pair_row, e->s.pair_w, e->s.rec_off, e->s.ptr};
    for (size_t i = 0; i < EP_ARRAY_LEN(bufs); i++)
        (void)cudaFree(bufs[i]);
    if (e->blas) (void)cublasDestroy(e->blas);
    if (e->stream) (void)cudaStreamDestroy(e->stream);
    ep_cuda_plan_free(&e->plan);
    ep_cuda_gemm_list_free(&e->gl);
    free(e->op_a);
    free(e->op_b);
    free(e->alpha);
    free(e->beta);
    free(e->group_size);
    free(e);
}

size_t ep_experts_cuda_bytes(const ep_experts_cuda *e)
{
    return e ? e->weight_bytes : 0;
}

bool ep_experts_cuda_has(const ep_experts_cuda *e, int expert)
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

void ep_experts_cuda_set_gemm(ep_experts_cuda *e, ep_cuda_gemm_mode mode)
{
    e->mode = mode;
}

ep_cuda_gemm_mode ep_experts_cuda_gemm_used(const ep_experts_cuda *e)
{
    return e->used;
}

// ---- scratch ------------------------------------------------------------------------------

// Grows the step buffers for n_rec records (or tokens) and n_rows GEMM rows.
static ep_status grow_scratch(ep_experts_cuda *e, size_t n_rec, size_t n_rows, size_t n_groups)
{
    const size_t H = (size_t)e->hidden, W = (size_t)EP_MAX(e->inter, e->shared_inter);
    ep_cuda_scratch *s = &e->s;
    void **bufs[] = {(void **)&s->x,       (void **)&s->y,        (void **)&s->xg,
                     (void **)&s->gu,      (void **)&s->act,      (void **)&s->og,
                     (void **)&s->row_rec, (void **)&s->pair_row, (void **)&s->pair_w,
                     (void **)&s->rec_off, (void **)&s->ptr};
    const size_t need[] = {n_rec * H * sizeof(float),
                           n_rec * H * sizeof(float),
                           n_rows * H * 2,
                           n_rows * 2 * W * 2,
                           n_rows * W * 2,
                           n_rows * H * 2,
                           n_rows * sizeof(int),
                           n_rows * sizeof(int),
                           n_rows * sizeof(float),
                           (n_rec + 1) * sizeof(int),
                           6 * n_groups * sizeof(void *)};
    static const char *what[] = {"records in",     "partial sums",       "gathered rows",
                                 "gate|up",        "activations",        "expert outputs",
                                 "row records",    "pair rows",          "pair weights",
                                 "record offsets", "GEMM pointer arrays"};
    EP_ASSERT(EP_ARRAY_LEN(bufs) == EP_ARRAY_LEN(s->cap) &&
              EP_ARRAY_LEN(need) == EP_ARRAY_LEN(s->cap));
    for (size_t i = 0; i < EP_ARRAY_LEN(bufs); i++) {
        ep_status st = ep_cuda_grow(bufs[i], &s->cap[i], need[i], what[i]);
        if (st != EP_OK) return ep_error_prefix(st, "cuda experts scratch");
    }
    if ((int)n_groups > e->grp_cap) {
        size_t c = n_groups;
        e->op_a = ep_xrealloc(e->op_a, c * sizeof *e->op_a);
        e->op_b = ep_xrealloc(e->op_b, c * sizeof *e->op_b);
        e->alpha = ep_xrealloc(e->alpha, c * sizeof *e->alpha);
        e->beta = ep_xrealloc(e->beta, c * sizeof *e->beta);
        e->group_size = ep_xrealloc(e->group_size, c * sizeof *e->group_size);
        for (size_t q = 0; q < c; q++) {
            e->op_a[q] = CUBLAS_OP_T;
            e->op_b[q] = CUBLAS_OP_N;
            e->alpha[q] = 1.0f;
            e->beta[q] = 0.0f;
            e->group_size[q] = 1;
        }
        e->grp_cap = (int)c;
    }
    return EP_OK;
}

ep_status ep_experts_cuda_reserve(ep_experts_cuda *e, int n_rec, int n_pairs)
{
    if (n_rec < 0 || n_pairs < 0)
        return ep_errorf(EP_ERR_ARG,
                         "cuda experts reserve: expected n_rec, n_pairs >= 0, found %d, %d", n_rec,
                         n_pairs);
    int max_local = 0;
    for (int l = 0; l < e->cfg.n_layers; l++)
        max_local = EP_MAX(max_local, e->layers[l].n_local);
    EP_CUDA_CHECK(cudaSetDevice(e->device));
    return grow_scratch(e, (size_t)n_rec, (size_t)EP_MAX(n_pairs, n_rec), (size_t)max_local);
}

size_t ep_experts_cuda_scratch_bytes(const ep_experts_cuda *e)
{
    size_t b = 0;
    for (size_t i = 0; i < EP_ARRAY_LEN(e->s.cap); i++)
        b += e->s.cap[i];
    return b;
}

// ---- GEMMs ---------------------------------------------------------------------------------

// One projection of every non-empty expert: out rows = in rows . W_s^T, BF16
// in and out, FP32 accumulation. `slot` (0 or 1) picks the device pointer
// arrays, so the second projection never overwrites what the first may still read.
static ep_status run_gemms(ep_experts_cuda *e, int slot, int N, int K, const uint16_t *w,
                           const uint16_t *in, uint16_t *out)
{
    ep_cuda_gemm_list *g = &e->gl;
    ep_cuda_gemm_list_fill(g, &e->plan, N, K, sizeof(uint16_t), w, in, out);
    const int n = g->n;
    if (n == 0) return EP_OK;
#if EP_HAVE_GROUPED_GEMM
    if (e->mode != EP_CUDA_GEMM_LOOP) {
        void **d_ptr = e->s.ptr + (size_t)slot * 3 * e->grp_cap;
        ep_status st =
            ep_cuda_copy_cls(d_ptr, g->ptr, 3 * (size_t)n * sizeof(void *), cudaMemcpyHostToDevice,
                             e->stream, EP_COPY_META, "grouped GEMM pointers");
        if (st != EP_OK) return st;
        cublasStatus_t rc = cublasGemmGroupedBatchedEx(
            e->blas, e->op_a, e->op_b, g->m, g->nn, g->k, e->alpha, (const void *const *)d_ptr,
            CUDA_R_16BF, g->lda, (const void *const *)(d_ptr + n), CUDA_R_16BF, g->ldb, e->beta,
            (void *const *)(d_ptr + 2 * n), CUDA_R_16BF, g->ldc, n, e->group_size,
            CUBLAS_COMPUTE_32F);
        if (rc == CUBLAS_STATUS_SUCCESS) {
            e->used = EP_CUDA_GEMM_GROUPED;
            return EP_OK;
        }
        if (rc != CUBLAS_STATUS_NOT_SUPPORTED || e->mode == EP_CUDA_GEMM_GROUPED)
            return EP_CUBLAS_ST(rc);
        EP_WARN("cuda experts: cublasGemmGroupedBatchedEx: BF16 not supported here, using one "
                "cublasGemmEx per expert from now on");
        e->mode = EP_CUDA_GEMM_LOOP;
    }
#else
    (void)slot;
    if (e->mode == EP_CUDA_GEMM_GROUPED)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "cuda experts: grouped GEMM requested, but cuBLAS %d has no "
                         "cublasGemmGroupedBatchedEx (12.5 or newer needed)",
                         CUBLAS_VERSION);
#endif
    const float one = 1.0f, zero = 0.0f;
    for (int q = 0; q < n; q++)
        EP_CUBLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, g->m[q], g->nn[q], g->k[q],
                                     &one, g->ptr[q], CUDA_R_16BF, g->lda[q], g->ptr[n + q],
                                     CUDA_R_16BF, g->ldb[q], &zero, g->ptr[2 * n + q], CUDA_R_16BF,
                                     g->ldc[q], CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    e->used = EP_CUDA_GEMM_LOOP;
    return EP_OK;
}

// One dense SwiGLU MLP over T rows (the shared experts): plain cublasGemmEx.
static ep_status run_dense(ep_experts_cuda *e, int N, int K, const uint16_t *w, const uint16_t *in,
                           uint16_t *out, int T)
{
    const float one = 1.0f, zero = 0.0f;
    EP_CUBLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, w, CUDA_R_16BF,
                                 K, in, CUDA_R_16BF, K, &zero, out, CUDA_R_16BF, N,
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return EP_OK;
}

// ---- forward --------------------------------------------------------------------------------

static ep_status check_layer(const ep_experts_cuda *e, int layer, const char *what)
{
    if (layer < 0 || layer >= e->cfg.n_layers || !ep_model_layer_is_moe(&e->cfg, layer))
        return ep_errorf(EP_ERR_ARG,
                         "cuda experts %s: layer %d is not a MoE layer of %s (MoE layers are "
                         "%d..%d)",
                         what, layer, e->cfg.name, e->cfg.first_k_dense, e->cfg.n_layers - 1);
    return EP_OK;
}

// The routed experts over records already in device memory: x_dev [n_rec, H]
// fp32 in, y_dev [n_rec, H] fp32 out (written whole). The pair metadata is
// the host's (its plan is built here) and goes up as META. Returns when y_dev
// is filled.
static ep_status forward_dev(ep_experts_cuda *e, int layer, int n_rec, const int *pair_off,
                             const int *pair_expert, const float *pair_weight, const float *x_dev,
                             float *y_dev)
{
    const ep_cuda_layer *L = &e->layers[layer];
    const int H = e->hidden, I = e->inter;
    ep_status st = ep_cuda_plan_build(&e->plan, layer, e->cfg.n_experts, L->n_local, L->local_of,
                                      n_rec, pair_off, pair_expert);
    if (st != EP_OK || n_rec == 0) return st;
    const ep_cuda_plan *pl = &e->plan;
    const size_t rows = (size_t)pl->n_rows;

    EP_CUDA_CHECK(cudaSetDevice(e->device));
    if ((st = grow_scratch(e, (size_t)n_rec, rows, (size_t)pl->n_groups)) != EP_OK) return st;
    ep_cuda_scratch *s = &e->s;
    cudaStream_t q = e->stream;
    const ep_copy_class meta = EP_COPY_META;
    if ((st = ep_cuda_copy_cls(s->rec_off, pl->rec_off, (size_t)(n_rec + 1) * sizeof(int),
                               cudaMemcpyHostToDevice, q, meta, "expert record offsets")))
        return st;
    if (rows > 0) {
        if ((st = ep_cuda_copy_cls(s->row_rec, pl->row_rec, rows * sizeof(int),
                                   cudaMemcpyHostToDevice, q, meta, "expert row records")) ||
            (st = ep_cuda_copy_cls(s->pair_row, pl->pair_row, rows * sizeof(int),
                                   cudaMemcpyHostToDevice, q, meta, "expert pair rows")) ||
            (st = ep_cuda_copy_cls(s->pair_w, pair_weight + pair_off[0], rows * sizeof(float),
                                   cudaMemcpyHostToDevice, q, meta, "expert pair weights")))
            return st;
        EP_CUDA_CHECK(ep_cuda_gather_bf16(x_dev, s->row_rec, pl->n_rows, H, s->xg, q));
        if ((st = run_gemms(e, 0, 2 * I, H, L->gate_up, s->xg, s->gu)) != EP_OK) return st;
        EP_CUDA_CHECK(ep_cuda_swiglu_bf16(s->gu, pl->n_rows, I, s->act, q));
        if ((st = run_gemms(e, 1, H, I, L->down, s->act, s->og)) != EP_OK) return st;
    }
    EP_CUDA_CHECK(
        ep_cuda_combine_rows(s->og, H, s->rec_off, s->pair_row, s->pair_w, n_rec, y_dev, q));
    EP_CUDA_CHECK(cudaStreamSynchronize(q));
    return EP_OK;
}

ep_status ep_experts_cuda_forward_dev(ep_experts_cuda *e, int layer, int n_rec, const int *pair_off,
                                      const int *pair_expert, const float *pair_weight,
                                      const float *x_dev, float *y_dev)
{
    ep_status st = check_layer(e, layer, "forward");
    if (st != EP_OK) return st;
    return forward_dev(e, layer, n_rec, pair_off, pair_expert, pair_weight, x_dev, y_dev);
}

// The host-array form: the records go up into the scratch, the partial
// sums come down (both ACT), the rest is forward_dev.
ep_status ep_experts_cuda_forward(ep_experts_cuda *e, int layer, int n_rec, const int *pair_off,
                                  const int *pair_expert, const float *pair_weight, const float *x,
                                  float *y)
{
    ep_status st = check_layer(e, layer, "forward");
    if (st != EP_OK || n_rec == 0) {
        if (st == EP_OK) // still checks and builds the (empty) plan, as before
            st = forward_dev(e, layer, 0, pair_off, pair_expert, pair_weight, NULL, NULL);
        return st;
    }
    const size_t n = (size_t)n_rec * e->hidden * sizeof(float);
    EP_CUDA_CHECK(cudaSetDevice(e->device));
    if ((st = grow_scratch(e, (size_t)n_rec, 0, 0)) != EP_OK) return st;
    if ((st = ep_cuda_copy_cls(e->s.x, x, n, cudaMemcpyHostToDevice, e->stream, EP_COPY_ACT,
                               "expert records")))
        return st;
    if ((st = forward_dev(e, layer, n_rec, pair_off, pair_expert, pair_weight, e->s.x, e->s.y)))
        return st;
    if ((st = ep_cuda_copy_cls(y, e->s.y, n, cudaMemcpyDeviceToHost, e->stream, EP_COPY_ACT,
                               "expert partial sums")))
        return st;
    EP_CUDA_CHECK(cudaStreamSynchronize(e->stream));
    return EP_OK;
}

// y_dev[T, H] += shared experts(x_dev[T, H]), device arrays, synchronous.
static ep_status shared_dev(ep_experts_cuda *e, int layer, const float *x_dev, int T, float *y_dev)
{
    const ep_cuda_layer *L = &e->layers[layer];
    const int H = e->hidden, S = e->shared_inter;
    const size_t n = (size_t)T * H;
    ep_status st;
    if ((st = grow_scratch(e, (size_t)T, (size_t)T, 0)) != EP_OK) return st;
    ep_cuda_scratch *s = &e->s;
    cudaStream_t q = e->stream;
    EP_CUDA_CHECK(ep_cuda_gather_bf16(x_dev, NULL, T, H, s->xg, q));
    if ((st = run_dense(e, 2 * S, H, L->sh_gate_up, s->xg, s->gu, T)) != EP_OK) return st;
    EP_CUDA_CHECK(ep_cuda_swiglu_bf16(s->gu, T, S, s->act, q));
    if ((st = run_dense(e, H, S, L->sh_down, s->act, s->og, T)) != EP_OK) return st;
    EP_CUDA_CHECK(ep_cuda_add_bf16(s->og, (int64_t)n, y_dev, q));
    EP_CUDA_CHECK(cudaStreamSynchronize(q));
    return EP_OK;
}

static ep_status check_shared(const ep_experts_cuda *e, int layer, int T)
{
    ep_status st = check_layer(e, layer, "shared forward");
    if (st == EP_OK && T < 0)
        return ep_errorf(EP_ERR_ARG, "cuda experts shared forward: T = %d, expected >= 0", T);
    return st;
}

ep_status ep_experts_cuda_shared_forward_dev(ep_experts_cuda *e, int layer, const float *x_dev,
                                             int T, float *y_dev)
{
    ep_status st = check_shared(e, layer, T);
    if (st != EP_OK || e->shared_inter == 0 || T == 0) return st;
    EP_CUDA_CHECK(cudaSetDevice(e->device));
    return shared_dev(e, layer, x_dev, T, y_dev);
}

ep_status ep_experts_cuda_shared_forward(ep_experts_cuda *e, int layer, const float *x, int T,
                                         float *y)
{
    ep_status st = check_shared(e, layer, T);
    if (st != EP_OK || e->shared_inter == 0 || T == 0) return st;
    const size_t n = (size_t)T * e->hidden * sizeof(float);
    EP_CUDA_CHECK(cudaSetDevice(e->device));
    if ((st = grow_scratch(e, (size_t)T, (size_t)T, 0)) != EP_OK) return st;
    ep_cuda_scratch *s = &e->s;
    if ((st = ep_cuda_copy_cls(s->x, x, n, cudaMemcpyHostToDevice, e->stream, EP_COPY_ACT,
                               "shared expert input")) ||
        (st = ep_cuda_copy_cls(s->y, y, n, cudaMemcpyHostToDevice, e->stream, EP_COPY_ACT,
                               "shared expert output")))
        return st;
    if ((st = shared_dev(e, layer, s->x, T, s->y)) != EP_OK) return st;
    if ((st = ep_cuda_copy_cls(y, s->y, n, cudaMemcpyDeviceToHost, e->stream, EP_COPY_ACT,
                               "shared expert output")))
        return st;
    EP_CUDA_CHECK(cudaStreamSynchronize(e->stream));
    return EP_OK;
}
