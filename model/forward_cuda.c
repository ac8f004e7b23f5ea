// The model backend cuda (model/backend.h; EP_CUDA=ON builds only): the
// forward on this rank's GPU with the device ops of model/cuda/ops.h. At
// open the replicated weights go up once (matrices BF16, norm vectors and
// the rotary table fp32; EP_COPY_LOAD), the paged KV pool is made on the
// device (its block ids from the host ep_kv's bookkeeping, which keeps no
// rows: every write goes to the device pool, so prefix caching works as on
// the host), and the workspace is sized for cap tokens. A step then moves,
// host -> device, only its token ids, positions, sequence slots and block
// tables (EP_COPY_META); activations stay on the device (the MoE layers
// too: ep_moe_forward_dev) except the logits a host sampler or a caller
// asks for (EP_COPY_ACT). Every device allocation goes through dev_alloc,
// which counts it by part (ep_model_dev_mem, planned by model/dev_mem.c).
// docs/cuda.md, "The device forward". forward_cuda_off.c stands in for it
// in CPU-only builds.
#include "model/backend.h"

#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/cuda_util.h"
#include "model/cuda/ops.h"

_Static_assert(sizeof(ep_mops_sample_row) == 24, "model/dev_mem.c plans 24 bytes per row");

// cuBLAS's workspace under capture (cuda_graph 2): 32 MiB, what the cuBLAS
// docs recommend for Hopper (4 MiB before it).
#define EP_CUDA_GRAPH_BLAS_WS ((size_t)32 << 20)

#define TRY(call)                                                                                  \
    do {                                                                                           \
        ep_status try_st_ = (call);                                                                \
        if (try_st_) return try_st_;                                                               \
    } while (0)

// One layer's weights on the device; NULL where the layer has none.
typedef struct {
    uint16_t *wq, *wk, *wv, *wo, *wq_a, *wq_b, *wkv_a, *wkv_b, *w_gate, *w_up, *w_down;
    float *in_norm, *post_norm, *q_norm, *k_norm, *q_a_norm, *kv_a_norm;
} dev_layer;

typedef struct {
    ep_gpu *gpu;
    cublasHandle_t blas;
    cudaStream_t stream;
    ep_model_dev_mem mem; // what dev_alloc allocated, by part
    void **allocs;        // [n_allocs] every allocation, freed by close
    int n_allocs;
    dev_layer *L; // [n_layers]
    uint16_t *embed, *lm_head;
    float *final_norm;
    ep_mops_rope rope;
    ep_mops_kv kv;
    int max_blocks; // per sequence: the table's row
    // Workspace for cap tokens (model_impl.h names the same buffers on the host).
    float *x, *xn, *y, *q, *k, *v, *qa, *att, *qabs, *olat, *mg, *mu, *logits;
    uint16_t *abf;           // a product's input rounded to BF16
    int *meta;               // [3 cap]: ids | positions | sequence slots of the step's
                             // rows at 0, cap and 2 cap (fixed, so a captured segment's
                             // pointers hold every step)
    const int *pos, *slot;   // meta + cap, meta + 2 cap
    int *ids_out;            // [cap] sampled ids
    ep_mops_sample_row *prm; // [cap] sampling rows
    int *h_meta;             // [3 cap] host staging of meta
    int *h_table;            // [max_seqs * max_blocks] host staging of the block table
    ep_mops_sample_row *h_prm;
    int *h_ids;
    bool *h_host_row; // [cap] rows sampled on the host
    int T;            // tokens of the current step
    // opts.cuda_graph (docs/cuda.md "CUDA Graph buckets"): 0 off; 1 a decode
    // step runs at its bucket's row count B (rows [T, B) padding on the
    // scratch slot); 2 also captures the dense segments per bucket.
    int graph;
    int B;         // rows the dense ops run on: T, or the bucket of a decode step
    int scratch;   // the block table's row for padding (max_seqs), -1 when graph is 0
    bool bucketed; // this step runs at a bucket (B >= T)
    // Capture (cuda_graph 2, real CUDA only): one graph per (bucket,
    // segment); segment k of a step is the dense work after MoE layer k - 1
    // up to MoE layer k's input (k 0 starts at the embedding, the last ends
    // at the logits). A replayed segment's ops are skipped (replay).
    int n_segs, n_buckets, seg;
    bool replay, capturing;
    void *blas_ws; // cuBLAS workspace set for capture
#if !defined(EP_CUDA_EMU)
    cudaGraphExec_t *exec; // [n_buckets * n_segs], NULL until captured
#endif
} cuda_fwd;

// ---- device memory -------------------------------------------------------------------

// cudaMalloc of bytes counted in *part (a field of d->mem) and the total;
// 0 bytes: NULL, nothing counted.
static ep_status dev_alloc(cuda_fwd *d, void *pp, size_t bytes, uint64_t *part, const char *what)
{
    void **p = pp;
    *p = NULL;
    if (bytes == 0) return EP_OK;
    ep_status st = EP_CUDA_ST(cudaMalloc(p, bytes));
    if (st) return ep_error_prefix(st, "model: backend cuda: %zu bytes for %s", bytes, what);
    d->allocs = ep_xrealloc(d->allocs, (size_t)(d->n_allocs + 1) * sizeof *d->allocs);
    d->allocs[d->n_allocs++] = *p;
    *part += bytes;
    d->mem.total += bytes;
    return EP_OK;
}

static ep_status upload(cuda_fwd *d, void *pp, const void *src, size_t bytes, uint64_t *part,
                        const char *what)
{
    TRY(dev_alloc(d, pp, bytes, part, what));
    return ep_cuda_copy_cls(*(void **)pp, src, bytes, cudaMemcpyHostToDevice, d->stream,
                            EP_COPY_LOAD, what);
}

// A matrix as BF16 on the device (the host read it so: ep_model_init asks
// for BF16 storage with this backend; an fp32 one is rounded here).
static ep_status upload_mat(cuda_fwd *d, uint16_t **dst, const ep_mat *m, const char *what)
{
    *dst = NULL;
    if (!m->data) return EP_OK;
    const size_t n = (size_t)m->rows * (size_t)m->cols;
    if (m->dtype == EP_DTYPE_BF16)
        return upload(d, dst, m->data, n * 2, &d->mem.weights_bf16, what);
    uint16_t *tmp = ep_xmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        tmp[i] = ep_f32_to_bf16(((const float *)m->data)[i]);
    ep_status st = upload(d, dst, tmp, n * 2, &d->mem.weights_bf16, what);
    cudaStreamSynchronize(d->stream); // tmp is read by the copy
    free(tmp);
    return st;
}

static ep_status upload_vec(cuda_fwd *d, float **dst, const float *v, int64_t n, const char *what)
{
    *dst = NULL;
    if (!v) return EP_OK;
    return upload(d, dst, v, (size_t)n * sizeof(float), &d->mem.weights_f32, what);
}

// MLA's kv_b_proj (fp32 on the host, model_impl.h) as BF16.
static ep_status upload_f32_as_bf16(cuda_fwd *d, uint16_t **dst, const float *v, int64_t rows,
                                    int64_t cols, const char *what)
{
    const ep_mat m = {.dtype = EP_DTYPE_F32, .rows = rows, .cols = cols, .data = v};
    return upload_mat(d, dst, &m, what);
}

// ---- open / close --------------------------------------------------------------------

static void cuda_close(ep_model *m)
{
    cuda_fwd *d = m->dev;
    if (!d) return;
    if (d->gpu) (void)ep_gpu_make_current(d->gpu); // the frees are the device's
    if (d->blas) cublasDestroy(d->blas);
#if !defined(EP_CUDA_EMU)
    for (int i = 0; d->exec && i < d->n_buckets * d->n_segs; i++)
        if (d->exec[i]) cudaGraphExecDestroy(d->exec[i]);
    free(d->exec);
    if (d->stream) cudaStreamDestroy(d->stream);
#endif
    for (int i = 0; i < d->n_allocs; i++)
        cudaFree(d->allocs[i]);
    free(d->allocs);
    free(d->L);
    free(d->h_meta);
    free(d->h_table);
    free(d->h_prm);
    free(d->h_ids);
    free(d->h_host_row);
    ep_gpu_free(d->gpu);
    free(d);
    m->dev = NULL;
}

static double mib(uint64_t b)
{
    return (double)b / (1024.0 * 1024.0);
}

// The plan against the device's free memory (the MoE layers' experts are
// already there); the message gives both, by part.
static ep_status check_fits(const ep_model *m, const ep_model_dev_mem *plan)
{
    size_t free_b = 0, total_b = 0;
    TRY(EP_CUDA_ST(cudaMemGetInfo(&free_b, &total_b)));
    if (plan->total <= free_b) return EP_OK;
    return ep_errorf(EP_ERR_NOMEM,
                     "the GPU is too small for %s: needs %.1f MiB "
                     "(weights bf16 %.1f, fp32 %.1f, KV cache %.1f, workspace %.1f), %.1f MiB "
                     "free of %.1f (the experts, %.1f MiB, already loaded); expected a larger "
                     "device, more ranks, or fewer KV blocks, sequences or tokens per step "
                     "(--max-num-seqs, --max-model-len)",
                     m->cfg->name, mib(plan->total), mib(plan->weights_bf16),
                     mib(plan->weights_f32), mib(plan->kv), mib(plan->workspace), mib(free_b),
                     mib(total_b), mib(ep_moe_expert_bytes(m->moe)));
}

static ep_status upload_layer(cuda_fwd *d, const ep_model *m, int l)
{
    const ep_model_cfg *c = m->cfg;
    const ep_layer_w *L = &m->L[l];
    dev_layer *D = &d->L[l];
    const int64_t H = c->hidden;
    TRY(upload_vec(d, &D->in_norm, L->in_norm, H, "input_layernorm"));
    TRY(upload_vec(d, &D->post_norm, L->post_norm, H, "post_attention_layernorm"));
    TRY(upload_mat(d, &D->wq, &L->wq, "q_proj"));
    TRY(upload_mat(d, &D->wk, &L->wk, "k_proj"));
    TRY(upload_mat(d, &D->wv, &L->wv, "v_proj"));
    TRY(upload_mat(d, &D->wo, &L->wo, "o_proj"));
    TRY(upload_mat(d, &D->wq_a, &L->wq_a, "q_a_proj"));
    TRY(upload_mat(d, &D->wq_b, &L->wq_b, "q_b_proj"));
    TRY(upload_mat(d, &D->wkv_a, &L->wkv_a, "kv_a_proj_with_mqa"));
    TRY(upload_mat(d, &D->w_gate, &L->w_gate, "mlp.gate_proj"));
    TRY(upload_mat(d, &D->w_up, &L->w_up, "mlp.up_proj"));
    TRY(upload_mat(d, &D->w_down, &L->w_down, "mlp.down_proj"));
    if (c->arch == EP_ARCH_QWEN3_MOE && c->qk_norm) {
        TRY(upload_vec(d, &D->q_norm, L->q_norm, c->head_dim, "q_norm"));
        TRY(upload_vec(d, &D->k_norm, L->k_norm, c->head_dim, "k_norm"));
    }
    if (c->arch == EP_ARCH_DEEPSEEK_V2) {
        if (c->q_lora_rank > 0)
            TRY(upload_vec(d, &D->q_a_norm, L->q_a_norm, c->q_lora_rank, "q_a_layernorm"));
        TRY(upload_vec(d, &D->kv_a_norm, L->kv_a_norm, c->kv_lora_rank, "kv_a_layernorm"));
        TRY(upload_f32_as_bf16(d, &D->wkv_b, L->wkv_b,
                               (int64_t)c->n_heads * (c->qk_nope_dim + c->v_head_dim),
                               c->kv_lora_rank, "kv_b_proj"));
    }
    return EP_OK;
}

// Frees what the host no longer needs once the device has it: owned
// matrices (a mapped BF16 checkpoint stays mapped) and fp32 vectors. Kept
// with opts.moe.with_reference (ep_model_reference reads them).
static void drop_mat(ep_mat *w)
{
    if (!w->owned) return;
    free(w->owned);
    w->owned = NULL;
    w->data = NULL;
}

static void drop_host_weights(ep_model *m)
{
    for (int l = 0; l < m->cfg->n_layers; l++) {
        ep_layer_w *L = &m->L[l];
        float **vec[] = {&L->in_norm,  &L->post_norm, &L->q_norm, &L->k_norm,
                         &L->q_a_norm, &L->kv_a_norm, &L->wkv_b};
        for (size_t i = 0; i < EP_ARRAY_LEN(vec); i++) {
            free(*vec[i]);
            *vec[i] = NULL;
        }
        ep_mat *mat[] = {&L->wq,   &L->wk,    &L->wv,     &L->wo,   &L->wq_a,
                         &L->wq_b, &L->wkv_a, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < EP_ARRAY_LEN(mat); i++)
            drop_mat(mat[i]);
    }
    drop_mat(&m->lm_head);
    drop_mat(&m->embed);
    if (m->cfg->tie_embeddings) m->lm_head.data = m->embed.data;
    free(m->final_norm);
    m->final_norm = NULL;
}

static ep_status open_local(ep_model *m, cuda_fwd *d)
{
    const ep_model_cfg *c = m->cfg;
    const ep_model_opts *o = &m->opts;
    const bool mla = c->arch == EP_ARCH_DEEPSEEK_V2;
    if (o->cuda_graph == 2 && ep_gpu_emulated())
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "cuda_graph 2 (capture) needs a real GPU: the emulated device has no "
                         "CUDA Graph API; expected cuda_graph 0 or 1 (buckets only)");
    TRY(ep_gpu_init(m->cl, &d->gpu));
    ep_model_dev_mem plan;
    ep_model_dev_mem_plan(c, o, &plan);
    TRY(check_fits(m, &plan));
    TRY(EP_CUBLAS_ST(cublasCreate(&d->blas)));
#if !defined(EP_CUDA_EMU)
    if (o->cuda_graph == 2) {
        // Capture needs a stream of its own (not the legacy default one)
        // and cuBLAS a workspace of ours (no allocation inside a capture).
        const int n_moe = ep_model_n_moe_layers(c);
        d->n_segs = n_moe + 1;
        d->n_buckets = 1;
        while ((1 << (d->n_buckets - 1)) < o->moe.cap_tokens)
            d->n_buckets++;
        d->exec = ep_xcalloc((size_t)d->n_buckets * d->n_segs, sizeof *d->exec);
        TRY(EP_CUDA_ST(cudaStreamCreate(&d->stream)));
        TRY(dev_alloc(d, &d->blas_ws, EP_CUDA_GRAPH_BLAS_WS, &d->mem.workspace,
                      "cuBLAS workspace for capture"));
        TRY(EP_CUBLAS_ST(cublasSetStream(d->blas, d->stream)));
        TRY(EP_CUBLAS_ST(cublasSetWorkspace(d->blas, d->blas_ws, EP_CUDA_GRAPH_BLAS_WS)));
    }
#endif

    // Weights.
    TRY(upload_mat(d, &d->embed, &m->embed, "embed_tokens"));
    d->lm_head = d->embed;
    if (!c->tie_embeddings) TRY(upload_mat(d, &d->lm_head, &m->lm_head, "lm_head"));
    TRY(upload_vec(d, &d->final_norm, m->final_norm, c->hidden, "model.norm"));
    d->L = ep_xcalloc((size_t)c->n_layers, sizeof *d->L);
    for (int l = 0; l < c->n_layers; l++) {
        ep_status st = upload_layer(d, m, l);
        if (st) return ep_error_prefix(st, "layer %d", l);
    }
    const size_t rope_b = (size_t)(m->rope.dim / 2) * sizeof(float);
    TRY(upload(d, &d->rope.inv_freq, m->rope.inv_freq, rope_b, &d->mem.weights_f32, "rope table"));
    d->rope.dim = m->rope.dim;
    d->rope.interleaved = m->rope.interleaved;
    d->rope.cs_scale = m->rope.cs_scale;

    // The KV pool in the host ep_kv's layout and block ids.
    const ep_kv_opts *ko = ep_kv_options(m->kv);
    d->max_blocks = (ko->max_seq_tokens + ko->block_tokens - 1) / ko->block_tokens;
    ep_mops_kv *kv = &d->kv;
    kv->n_layers = ko->n_layers;
    kv->row = ko->row_floats;
    kv->block_tokens = ko->block_tokens;
    // With buckets one more block and one more table row: the scratch
    // sequence the padding rows of a decode step write and attend to, so
    // they touch no real sequence's KV.
    d->graph = o->cuda_graph;
    const int extra = d->graph > 0;
    d->scratch = extra ? ko->max_seqs : -1;
    kv->n_blocks = ko->n_blocks + extra;
    kv->max_seqs = ko->max_seqs + extra;
    kv->max_blocks = d->max_blocks;
    TRY(dev_alloc(d, &kv->pool,
                  (size_t)kv->n_blocks * ko->n_layers * ko->block_tokens * ko->row_floats * 2,
                  &d->mem.kv, "KV pool"));
    TRY(dev_alloc(d, &kv->table, (size_t)kv->max_seqs * d->max_blocks * sizeof(int), &d->mem.kv,
                  "KV block table"));

    // Workspace.
    const size_t cap = (size_t)o->moe.cap_tokens, F = sizeof(float);
    const int H = c->hidden, nh = c->n_heads;
    const int kvw = mla ? m->kv_row : c->n_kv_heads * c->head_dim;
    const int R = c->kv_lora_rank, rope = c->qk_rope_dim;
    const bool dense = c->first_k_dense > 0 || c->n_experts == 0;
    uint64_t *ws = &d->mem.workspace;
    TRY(dev_alloc(d, &d->x, cap * H * F, ws, "x"));
    TRY(dev_alloc(d, &d->xn, cap * H * F, ws, "xn"));
    TRY(dev_alloc(d, &d->y, cap * H * F, ws, "y"));
    TRY(dev_alloc(d, &d->q, cap * m->q_dim * F, ws, "q"));
    TRY(dev_alloc(d, &d->k, cap * kvw * F, ws, "k"));
    if (!mla) TRY(dev_alloc(d, &d->v, cap * kvw * F, ws, "v"));
    TRY(dev_alloc(d, &d->att, cap * m->attn_out * F, ws, "attention output"));
    int kmax = EP_MAX(EP_MAX(H, m->attn_out), m->q_dim);
    if (mla) {
        TRY(dev_alloc(d, &d->qa, cap * c->q_lora_rank * F, ws, "q_a"));
        TRY(dev_alloc(d, &d->qabs, cap * nh * (R + rope) * F, ws, "absorbed q"));
        TRY(dev_alloc(d, &d->olat, cap * nh * R * F, ws, "output latent"));
        kmax = EP_MAX(EP_MAX(kmax, nh * R), c->q_lora_rank);
    }
    if (dense) {
        TRY(dev_alloc(d, &d->mg, cap * c->intermediate * F, ws, "mlp gate"));
        TRY(dev_alloc(d, &d->mu, cap * c->intermediate * F, ws, "mlp up"));
        kmax = EP_MAX(kmax, c->intermediate);
    }
    TRY(dev_alloc(d, &d->logits, cap * c->vocab * F, ws, "logits"));
    TRY(dev_alloc(d, &d->abf, cap * kmax * sizeof(uint16_t), ws, "bf16 product input"));
    TRY(dev_alloc(d, &d->meta, 3 * cap * sizeof(int), ws, "step ids, positions, slots"));
    TRY(dev_alloc(d, &d->ids_out, cap * sizeof(int), ws, "sampled ids"));
    TRY(dev_alloc(d, &d->prm, cap * sizeof(ep_mops_sample_row), ws, "sampling rows"));
    d->h_meta = ep_xmalloc(3 * cap * sizeof(int));
    d->h_table = ep_xmalloc((size_t)kv->max_seqs * d->max_blocks * sizeof(int));
    d->h_prm = ep_xmalloc(cap * sizeof *d->h_prm);
    d->h_ids = ep_xmalloc(cap * sizeof(int));
    d->h_host_row = ep_xmalloc(cap * sizeof(bool));
    d->pos = d->meta + cap;
    d->slot = d->meta + 2 * cap;
    if (extra) {
        // The scratch row: every entry the scratch block (the pool's last).
        int *row = d->h_table + (size_t)d->scratch * d->max_blocks;
        for (int j = 0; j < d->max_blocks; j++)
            row[j] = ko->n_blocks;
        TRY(ep_cuda_copy_cls(kv->table + (size_t)d->scratch * d->max_blocks, row,
                             (size_t)d->max_blocks * sizeof(int), cudaMemcpyHostToDevice, d->stream,
                             EP_COPY_META, "scratch block table row"));
        // y's padding rows are never written by a MoE layer; zero, so the
        // padding rows stay finite.
        TRY(EP_CUDA_ST(cudaMemsetAsync(d->y, 0, cap * H * F, d->stream)));
    }
    TRY(EP_CUDA_ST(cudaStreamSynchronize(d->stream)));
    return EP_OK;
}

static ep_status cuda_open(ep_model *m)
{
    cuda_fwd *d = ep_xcalloc(1, sizeof *d);
    m->dev = d;
    ep_status st = open_local(m, d);
    if (st) st = ep_error_prefix(st, "model: backend cuda: rank %d", m->cl->rank);
    // Every rank learns whether every rank opened, so none goes on to a
    // step whose collectives a failed rank never joins.
    int64_t bad = st != EP_OK;
    ep_status ast = ep_cluster_allreduce_i64(m->cl, &bad, 1, EP_REDUCE_MAX);
    if (!st && ast) st = ast;
    if (!st && bad)
        st = ep_errorf(EP_ERR_UNSUPPORTED, "model: backend cuda: another rank failed to open its "
                                           "GPU forward (see its message)");
    if (st) return st;
    if (!m->opts.moe.with_reference) drop_host_weights(m);
    return EP_OK;
}

static ep_status cuda_dev_mem(const ep_model *m, ep_model_dev_mem *out)
{
    const cuda_fwd *d = m->dev;
    *out = d->mem;
    return EP_OK;
}

// ---- one step ------------------------------------------------------------------------

// The bucket of a decode step of T tokens: the smallest of 1, 2, 4, ...
// at least T, at most cap (cap itself when it is no power of two).
static int bucket_rows(int T, int cap)
{
    int B = 1;
    while (B < T)
        B *= 2;
    return EP_MIN(B, cap);
}

// Whether the step runs at a bucket: buckets on and a decode step (every
// sequence adds one token); prefill and mixed steps run at T rows.
static bool bucketed(const cuda_fwd *d, const ep_batch *b, int T)
{
    if (d->graph == 0 || T == 0) return false;
    for (int i = 0; i < b->n_seqs; i++)
        if (b->n_new[i] != 1) return false;
    return true;
}

#if !defined(EP_CUDA_EMU)
// The bucket's index: log2 B, or the last for a cap that is no power of two.
static int bucket_index(const cuda_fwd *d)
{
    int i = 0;
    while ((1 << i) < d->B)
        i++;
    return EP_MIN(i, d->n_buckets - 1);
}
#endif

// Starts segment d->seg of a bucketed step with capture on: replays its
// graph (the segment's ops are then skipped: d->replay) or begins its
// capture on the forward's stream. Nothing inside a segment syncs with the
// host. Off, on the emulated device, or for an unbucketed step: nothing.
static ep_status seg_begin(cuda_fwd *d)
{
    d->replay = d->capturing = false;
#if !defined(EP_CUDA_EMU)
    if (!d->exec || !d->bucketed) return EP_OK;
    cudaGraphExec_t g = d->exec[bucket_index(d) * d->n_segs + d->seg];
    if (g) {
        d->replay = true;
        return EP_CUDA_ST(cudaGraphLaunch(g, d->stream));
    }
    d->capturing = true;
    return EP_CUDA_ST(cudaStreamBeginCapture(d->stream, cudaStreamCaptureModeThreadLocal));
#else
    return EP_OK;
#endif
}

// Ends the segment: a capture becomes the bucket's graph, launched now (the
// captured ops did not run). Then the next segment's index.
static ep_status seg_end(cuda_fwd *d)
{
    ep_status st = EP_OK;
#if !defined(EP_CUDA_EMU)
    if (d->capturing) {
        cudaGraph_t g = NULL;
        cudaGraphExec_t *e = &d->exec[bucket_index(d) * d->n_segs + d->seg];
        st = EP_CUDA_ST(cudaStreamEndCapture(d->stream, &g));
        if (!st) st = EP_CUDA_ST(cudaGraphInstantiate(e, g, 0));
        if (g) cudaGraphDestroy(g);
        if (!st) st = EP_CUDA_ST(cudaGraphLaunch(*e, d->stream));
        if (st) st = ep_error_prefix(st, "CUDA Graph of bucket %d, segment %d", d->B, d->seg);
    }
#endif
    d->replay = d->capturing = false;
    d->seg++;
    return st;
}

// Host syncs of a step (none inside a segment, see seg_begin): the MoE
// layers (moe_layer: routes and counts to the host) and the end (the
// logits or sampled ids to the host).
static ep_status cuda_begin(ep_model *m, const ep_batch *b, int T)
{
    cuda_fwd *d = m->dev;
    const int cap = m->opts.moe.cap_tokens;
    // The step may run on another thread than open (serve's engine thread),
    // and CUDA's current device is per thread.
    TRY(ep_gpu_make_current(d->gpu));
    d->T = T;
    d->bucketed = bucketed(d, b, T);
    d->B = d->bucketed ? bucket_rows(T, cap) : T;
    if (T == 0) return EP_OK;
    const int B = d->B;
    int *ids = d->h_meta, *pos = d->h_meta + cap, *slot = d->h_meta + 2 * cap;
    for (int i = 0, t = 0; i < b->n_seqs; i++) {
        const int n = ep_kv_seq_blocks(m->kv, b->seq[i]);
        for (int j = 0; j < n; j++)
            d->h_table[(size_t)i * d->max_blocks + j] = ep_kv_seq_block(m->kv, b->seq[i], j);
        for (int j = 0; j < b->n_new[i]; j++, t++) {
            ids[t] = b->tokens[t];
            pos[t] = m->tok_pos[t];
            slot[t] = i; // the table's row of this step
        }
    }
    // Padding rows: token 0 at position 0 of the scratch sequence.
    for (int t = T; t < B; t++) {
        ids[t] = 0;
        pos[t] = 0;
        slot[t] = d->scratch;
    }
    for (int k = 0; k < 3; k++)
        TRY(ep_cuda_copy_cls(d->meta + (size_t)k * cap, d->h_meta + (size_t)k * cap,
                             (size_t)B * sizeof(int), cudaMemcpyHostToDevice, d->stream,
                             EP_COPY_META, "step ids, positions and slots"));
    TRY(ep_cuda_copy_cls(d->kv.table, d->h_table, (size_t)b->n_seqs * d->max_blocks * sizeof(int),
                         cudaMemcpyHostToDevice, d->stream, EP_COPY_META, "block tables"));
    // Segment 0 starts after the step's inputs are in their fixed buffers.
    d->seg = 0;
    TRY(seg_begin(d));
    if (d->replay) return EP_OK;
    return ep_mops_embed(d->embed, m->cfg->vocab, m->cfg->hidden, d->meta, B, d->x, d->stream);
}

static ep_status qwen3_attention(ep_model *m, cuda_fwd *d, const dev_layer *L, int l, int T)
{
    const ep_model_cfg *c = m->cfg;
    const int H = c->hidden, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
    const int kvw = nkv * hd;
    const int *pos = d->pos, *slot = d->slot;
    cudaStream_t s = d->stream;
    TRY(ep_mops_linear(d->blas, T, nh * hd, H, d->xn, L->wq, 0.0f, d->q, nh * hd, d->abf, s));
    TRY(ep_mops_linear(d->blas, T, kvw, H, d->xn, L->wk, 0.0f, d->k, kvw, d->abf, s));
    TRY(ep_mops_linear(d->blas, T, kvw, H, d->xn, L->wv, 0.0f, d->v, kvw, d->abf, s));
    if (L->q_norm) {
        TRY(ep_mops_rmsnorm(d->q, hd, L->q_norm, T * nh, hd, c->rms_eps, d->q, hd, s));
        TRY(ep_mops_rmsnorm(d->k, hd, L->k_norm, T * nkv, hd, c->rms_eps, d->k, hd, s));
    }
    TRY(ep_mops_rope_apply(&d->rope, d->q, T, nh * hd, nh, 0, hd, pos, s));
    TRY(ep_mops_rope_apply(&d->rope, d->k, T, kvw, nkv, 0, hd, pos, s));
    // The new tokens' rows first, so a prefill token sees its chunk's earlier ones.
    TRY(ep_mops_kv_write(&d->kv, l, d->k, kvw, kvw, 0, T, slot, pos, s));
    TRY(ep_mops_kv_write(&d->kv, l, d->v, kvw, kvw, kvw, T, slot, pos, s));
    const ep_mops_attn_shape as = {.heads = nh,
                                   .group = nh / nkv,
                                   .dk = hd,
                                   .dv = hd,
                                   .koff = 0,
                                   .kstride = hd,
                                   .voff = kvw,
                                   .vstride = hd,
                                   .scale = m->attn_scale};
    TRY(ep_mops_attention(&d->kv, l, &as, d->q, nh * hd, T, slot, pos, d->att, m->attn_out, s));
    // o_proj with the residual add as beta 1: x += att . W_o^T.
    return ep_mops_linear(d->blas, T, H, m->attn_out, d->att, L->wo, 1.0f, d->x, H, d->abf, s);
}

// DeepSeek-V2 MLA in the absorbed form for prefill and decode alike
// (model/attn.c's mla_attention): the cache row is [kv_a_layernorm(latent)
// | roped k_pe]; q_nope is folded into W_UK, the output latent unfolded
// with W_UV.
static ep_status mla_attention(ep_model *m, cuda_fwd *d, const dev_layer *L, int l, int T)
{
    const ep_model_cfg *c = m->cfg;
    const int H = c->hidden, nh = c->n_heads, R = c->kv_lora_rank, rope = c->qk_rope_dim;
    const int nope = c->qk_nope_dim, row = R + rope;
    const int *pos = d->pos, *slot = d->slot;
    cudaStream_t s = d->stream;
    if (c->q_lora_rank > 0) {
        const int ql = c->q_lora_rank;
        TRY(ep_mops_linear(d->blas, T, ql, H, d->xn, L->wq_a, 0.0f, d->qa, ql, d->abf, s));
        TRY(ep_mops_rmsnorm(d->qa, ql, L->q_a_norm, T, ql, c->rms_eps, d->qa, ql, s));
        TRY(ep_mops_linear(d->blas, T, m->q_dim, ql, d->qa, L->wq_b, 0.0f, d->q, m->q_dim, d->abf,
                           s));
    } else {
        TRY(ep_mops_linear(d->blas, T, m->q_dim, H, d->xn, L->wq, 0.0f, d->q, m->q_dim, d->abf, s));
    }
    TRY(ep_mops_linear(d->blas, T, row, H, d->xn, L->wkv_a, 0.0f, d->k, row, d->abf, s));
    TRY(ep_mops_rmsnorm(d->k, row, L->kv_a_norm, T, R, c->rms_eps, d->k, row, s));
    TRY(ep_mops_rope_apply(&d->rope, d->k, T, row, 1, R, rope, pos, s));
    TRY(ep_mops_rope_apply(&d->rope, d->q, T, m->q_dim, nh, nope, nope + rope, pos, s));
    TRY(ep_mops_kv_write(&d->kv, l, d->k, row, row, 0, T, slot, pos, s));
    const ep_mops_mla ms = {
        .heads = nh, .nope = nope, .rope = rope, .v = c->v_head_dim, .kv_lora = R};
    TRY(ep_mops_mla_absorb_q(d->blas, &ms, T, d->q, L->wkv_b, d->qabs, d->abf, s));
    const ep_mops_attn_shape as = {
        .heads = nh, .group = nh, .dk = row, .dv = R, .scale = m->attn_scale};
    TRY(ep_mops_attention(&d->kv, l, &as, d->qabs, nh * row, T, slot, pos, d->olat, nh * R, s));
    TRY(ep_mops_mla_unabsorb(d->blas, &ms, T, d->olat, L->wkv_b, d->att, m->attn_out, d->abf, s));
    return ep_mops_linear(d->blas, T, H, m->attn_out, d->att, L->wo, 1.0f, d->x, H, d->abf, s);
}

// Runs at d->B rows (T, or the decode step's bucket).
static ep_status cuda_attention(ep_model *m, int l, int T_real)
{
    cuda_fwd *d = m->dev;
    const ep_model_cfg *c = m->cfg;
    const dev_layer *L = &d->L[l];
    const int T = d->B;
    if (T_real == 0 || d->replay) return EP_OK;
    TRY(ep_mops_rmsnorm(d->x, c->hidden, L->in_norm, T, c->hidden, c->rms_eps, d->xn, c->hidden,
                        d->stream));
    if (c->arch == EP_ARCH_DEEPSEEK_V2) return mla_attention(m, d, L, l, T);
    return qwen3_attention(m, d, L, l, T);
}

// One MoE layer on device arrays (ep_moe_forward_dev, model/moe_dev.c):
// routing, dispatch packing, NCCL, the experts and combine on the device;
// only control data (routes, counts, record headers) crosses PCIe. It runs
// on the MoE part's own streams, so the forward's work on xn must be done
// first; y is written when it returns.
static ep_status moe_layer(ep_model *m, cuda_fwd *d, const ep_policy *p, int l, int T,
                           ep_comm_stats *ls)
{
    TRY(EP_CUDA_ST(cudaStreamSynchronize(d->stream)));
    return ep_moe_forward_dev(m->moe, p, l, T > 0 ? d->xn : NULL, T, T > 0 ? d->y : NULL, ls, NULL);
}

// The dense ops at d->B rows; the MoE layer sees the T real rows only (x,
// y rows [0, T)), and the residual add after it runs at B rows again (y's
// padding rows are zero or an earlier step's: finite, read by padding only).
static ep_status cuda_ffn(ep_model *m, const ep_policy *p, int l, int T_real, ep_comm_stats *ls)
{
    cuda_fwd *d = m->dev;
    const ep_model_cfg *c = m->cfg;
    const dev_layer *L = &d->L[l];
    const int H = c->hidden, I = c->intermediate, T = d->B;
    cudaStream_t s = d->stream;
    if (T > 0 && !d->replay)
        TRY(ep_mops_rmsnorm(d->x, H, L->post_norm, T, H, c->rms_eps, d->xn, H, s));
    if (ep_model_layer_is_moe(c, l)) {
        // The segment ends at the MoE input and the next starts at the add.
        TRY(seg_end(d));
        // Joined even with T == 0: the layer's collectives need every rank.
        TRY(moe_layer(m, d, p, l, T_real, ls));
        TRY(seg_begin(d));
        return T > 0 && !d->replay ? ep_mops_add(d->x, d->y, (int64_t)T * H, s) : EP_OK;
    }
    if (T == 0 || d->replay) return EP_OK;
    TRY(ep_mops_linear(d->blas, T, I, H, d->xn, L->w_gate, 0.0f, d->mg, I, d->abf, s));
    TRY(ep_mops_linear(d->blas, T, I, H, d->xn, L->w_up, 0.0f, d->mu, I, d->abf, s));
    TRY(ep_mops_silu_mul(d->mg, d->mu, (int64_t)T * I, d->mg, s));
    return ep_mops_linear(d->blas, T, H, I, d->mg, L->w_down, 1.0f, d->x, H, d->abf, s);
}

static ep_status cuda_final(ep_model *m, const ep_batch *b, int T, float *logits, int *rows_out)
{
    cuda_fwd *d = m->dev;
    const ep_model_cfg *c = m->cfg;
    const int H = c->hidden;
    cudaStream_t s = d->stream;
    int rows = 0;
    if (d->bucketed) {
        // A bucketed decode step: one row per sequence, the first T of the
        // B the norm and lm_head run on (padding rows' logits dropped).
        rows = T;
        if (!d->replay) {
            TRY(ep_mops_rmsnorm(d->x, H, d->final_norm, d->B, H, c->rms_eps, d->xn, H, s));
            TRY(ep_mops_linear(d->blas, d->B, c->vocab, H, d->xn, d->lm_head, 0.0f, d->logits,
                               c->vocab, d->abf, s));
        }
        TRY(seg_end(d)); // the last segment ends at the logits
    } else if (b->all_logits) {
        rows = T;
        if (T > 0) TRY(ep_mops_rmsnorm(d->x, H, d->final_norm, T, H, c->rms_eps, d->xn, H, s));
    } else {
        for (int i = 0, end = 0; i < b->n_seqs; i++, rows++) {
            end += b->n_new[i];
            TRY(ep_mops_rmsnorm(d->x + (size_t)(end - 1) * H, H, d->final_norm, 1, H, c->rms_eps,
                                d->xn + (size_t)rows * H, H, s));
        }
    }
    *rows_out = rows;
    if (!d->bucketed)
        TRY(ep_mops_linear(d->blas, rows, c->vocab, H, d->xn, d->lm_head, 0.0f, d->logits, c->vocab,
                           d->abf, s));
    if (!logits) return EP_OK;
    TRY(ep_cuda_copy_cls(logits, d->logits, (size_t)rows * c->vocab * sizeof(float),
                         cudaMemcpyDeviceToHost, s, EP_COPY_ACT, "logits"));
    return EP_CUDA_ST(cudaStreamSynchronize(s));
}

// Rows whose sampler qualifies (ep_sampler_device_draw: no logits
// processor, top_k within EP_MOPS_TOPK_MAX) are drawn on the device from
// the device logits with the u the sampler's RNG gives; the others from a
// copy of the logits (EP_COPY_ACT) on the host. Rows without a sampler get
// -1. A host logits buffer (the caller asked for the logits) means host
// sampling throughout.
static ep_status cuda_sample(ep_model *m, int rows, ep_sampler *const *samplers,
                             const float *host_logits, int *ids)
{
    cuda_fwd *d = m->dev;
    const int V = m->cfg->vocab;
    cudaStream_t s = d->stream;
    if (host_logits) {
        ep_model_sample_host(rows, V, samplers, host_logits, ids);
        return EP_OK;
    }
    bool any_host = false, any_dev = false, greedy = true;
    for (int r = 0; r < rows; r++) {
        ep_sampler_draw dr;
        ep_mops_sample_row *p = &d->h_prm[r];
        memset(p, 0, sizeof *p);
        p->top_p = 1.0f;
        d->h_host_row[r] = false;
        if (!samplers[r]) continue;
        if (!ep_sampler_device_draw(samplers[r], EP_MOPS_TOPK_MAX, &dr)) {
            d->h_host_row[r] = any_host = true;
            continue;
        }
        any_dev = true;
        *p = (ep_mops_sample_row){
            .temperature = dr.temperature, .top_k = dr.top_k, .top_p = dr.top_p, .u = dr.u};
        greedy = greedy && dr.temperature == 0.0f;
        TRY(ep_mops_sample_row_check(p));
    }
    if (any_dev) {
        if (greedy) {
            TRY(ep_mops_argmax(d->logits, rows, V, V, d->ids_out, s));
        } else {
            TRY(ep_cuda_copy_cls(d->prm, d->h_prm, (size_t)rows * sizeof *d->prm,
                                 cudaMemcpyHostToDevice, s, EP_COPY_META, "sampling rows"));
            TRY(ep_mops_sample_topk(d->logits, rows, V, V, d->prm, d->ids_out, s));
        }
        TRY(ep_cuda_copy_cls(d->h_ids, d->ids_out, (size_t)rows * sizeof(int),
                             cudaMemcpyDeviceToHost, s, EP_COPY_META, "sampled ids"));
    }
    float *hl = NULL;
    if (any_host) {
        hl = ep_model_host_logits(m, NULL, rows);
        TRY(ep_cuda_copy_cls(hl, d->logits, (size_t)rows * V * sizeof(float),
                             cudaMemcpyDeviceToHost, s, EP_COPY_ACT, "logits for host sampling"));
    }
    TRY(EP_CUDA_ST(cudaStreamSynchronize(s)));
    for (int r = 0; r < rows; r++) {
        if (!samplers[r]) {
            ids[r] = -1;
        } else if (d->h_host_row[r]) {
            ids[r] = ep_sampler_sample(samplers[r], hl + (size_t)r * V);
        } else {
            ids[r] = d->h_ids[r];
            if (ids[r] < 0 || ids[r] >= V)
                return ep_errorf(EP_ERR_IO,
                                 "model: backend cuda: row %d sampled id %d on the "
                                 "device, expected 0..%d",
                                 r, ids[r], V - 1);
            ep_sampler_accept(samplers[r], ids[r]);
        }
    }
    return EP_OK;
}

const ep_model_backend_i ep_model_backend_cuda_table = {
    .name = "cuda",
    .built = true,
    .dtype = EP_DTYPE_BF16,
    .host_kv_rows = false,
    .open = cuda_open,
    .close = cuda_close,
    .begin = cuda_begin,
    .attention = cuda_attention,
    .ffn = cuda_ffn,
    .final = cuda_final,
    .sample = cuda_sample,
    .dev_mem = cuda_dev_mem,
};
