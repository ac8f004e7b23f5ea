// The GPU router object: device buffers sized once for cap_tokens, the
// policy translated into plain parameters (Pick's keys of the layer
// included), the gate GEMM through cuBLAS (gates uploaded once per layer),
// one routing kernel launch per call, and the compaction of the padded
// per-token rows into CSR routes on the host. Which policies qualify is
// decided here; the routine itself is in router_kernels.cu.
#include "router/cuda/router_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "cluster/cuda/cuda_util.h"
#include "router/cuda/route_token.h"
#include "router/policy.h"

struct ep_router_cuda {
    ep_model_cfg cfg;
    int cap_tokens, device;
    int row_k; // row stride of the kept arrays (largest max_k of any policy: E)
    cudaStream_t stream;
    float *d_logits;   // [cap, E] logits in, softmax scores out
    int *d_k;          // [cap]
    int *d_kept;       // [cap, row_k]
    float *d_w;        // [cap, row_k]
    int *d_base;       // [cap, k_base]
    float *d_base_w;   // [cap, k_base]
    int *h_k, *h_kept; // host copies of the above
    float *h_w;
    // The gate GEMM (ep_router_cuda_route), set up by the first set_gate.
    cublasHandle_t blas;
    float *d_x;     // [cap, hidden] hidden states in
    float **d_gate; // [n_layers] each [n_experts, hidden] once uploaded, else NULL
};

// ep_route_params.pick_strategy numbers the strategies as the enum does.
_Static_assert(EP_PICK_A == 0 && EP_PICK_B == 1 && EP_PICK_C == 2 && EP_PICK_D == 3 &&
                   EP_PICK_E == 4,
               "router_kernels.cu numbers Pick's strategies A..E as 0..4");

// Pick's key lists must fit the parameter block for every domain and MoE
// layer: the domain can change between calls (ep_policy_set_domain).
static bool keys_fit(const ep_policy *p)
{
    const ep_routing_cfg *rc = &p->cfg;
    for (int d = 0; d < rc->pick.n_domains; d++)
        for (int l = rc->first_k_dense; l < rc->n_layers; l++)
            if (p->params.keys[d].off[l + 1] - p->params.keys[d].off[l] > EP_ROUTE_MAX_KEYS)
                return false;
    return true;
}

bool ep_router_cuda_supports(const ep_policy *p)
{
    const ep_routing_cfg *rc = &p->cfg;
    const bool ban = rc->policy == EP_POLICY_BAN || rc->policy == EP_POLICY_BANPICK;
    const bool pick = rc->policy == EP_POLICY_PICK || rc->policy == EP_POLICY_BANPICK;
    if (rc->policy != EP_POLICY_BASELINE && !ban && !pick) return false;
    // No routing context reaches the device router: comm-aware Ban routes
    // here as plain Ban, as the host router does without a placement.
    if (pick && !keys_fit(p)) return false;
    // The group count is checked against the model when routing (params()).
    const int want = EP_MIN(rc->n_experts, ep_policy_range(p) * rc->k_base);
    return want <= EP_ROUTE_MAX_CAND && ep_policy_max_k(p) <= EP_ROUTE_MAX_CAND;
}

static ep_status params(const ep_model_cfg *c, const ep_policy *p, int layer, int row_k,
                        ep_route_params *o)
{
    if (!ep_router_cuda_supports(p))
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "cuda router: policy '%s' (range %d x k_base %d, max_k %d%s) cannot run "
                         "on the GPU: expected baseline, ban, pick or banpick without locality, "
                         "at most %d candidates and kept experts and at most %d pick keys per "
                         "layer; use the CPU router",
                         ep_policy_name(p), ep_policy_range(p), c->k_base, ep_policy_max_k(p),
                         p->cfg.ban.locality ? ", comm-aware" : "", EP_ROUTE_MAX_CAND,
                         EP_ROUTE_MAX_KEYS);
    if (layer < 0 || layer >= c->n_layers || !ep_model_layer_is_moe(c, layer))
        return ep_errorf(EP_ERR_ARG,
                         "cuda router: layer %d is not a MoE layer of %s (layers %d..%d)", layer,
                         c->name, c->first_k_dense, c->n_layers - 1);
    if (p->cfg.n_experts != c->n_experts || p->cfg.k_base != c->k_base ||
        p->cfg.n_layers != c->n_layers)
        return ep_errorf(EP_ERR_ARG,
                         "cuda router: policy '%s' was made for %d layers x %d experts, top-%d; "
                         "model %s has %d x %d, top-%d",
                         ep_policy_name(p), p->cfg.n_layers, p->cfg.n_experts, p->cfg.k_base,
                         c->name, c->n_layers, c->n_experts, c->k_base);
    const bool grouped = c->topk_method == EP_TOPK_GROUP_LIMITED;
    if (grouped &&
        (c->n_group < 1 || c->n_group > EP_ROUTE_MAX_GROUPS || c->n_experts % c->n_group != 0 ||
         c->topk_group < 1 || c->topk_group > c->n_group ||
         c->topk_group * (c->n_experts / c->n_group) < c->k_base))
        return ep_errorf(EP_ERR_CONFIG,
                         "cuda router: %s: n_group %d, topk_group %d: expected n_experts (%d) "
                         "divisible by n_group <= %d and topk_group groups holding >= k_base %d",
                         c->name, c->n_group, c->topk_group, c->n_experts, EP_ROUTE_MAX_GROUPS,
                         c->k_base);
    memset(o, 0, sizeof *o);
    o->n_experts = c->n_experts;
    o->k_base = c->k_base;
    o->want = EP_MAX(c->k_base, EP_MIN(c->n_experts, ep_policy_range(p) * c->k_base));
    o->max_k = row_k;
    o->grouped = grouped;
    o->n_group = c->n_group;
    o->topk_group = c->topk_group;
    o->renorm = c->norm_topk_prob && (c->arch == EP_ARCH_QWEN3_MOE || c->k_base > 1);
    o->deepseek = c->arch == EP_ARCH_DEEPSEEK_V2;
    o->scale = c->routed_scaling_factor;
    const ep_policy_kind kind = p->cfg.policy;
    o->ban = kind == EP_POLICY_BAN || kind == EP_POLICY_BANPICK;
    o->k_min = p->cfg.ban.k_min;
    o->lambda = p->cfg.ban.lambda;
    o->beta = p->cfg.ban.beta;
    o->r_min = p->cfg.ban.r_min;
    o->r_max = p->cfg.ban.r_max;
    o->lterm = p->params.ban_lterm[layer];
    o->pick = kind == EP_POLICY_PICK || kind == EP_POLICY_BANPICK;
    o->pick_strategy = (int)p->cfg.pick.strategy; // EP_PICK_A..E = 0..4
    o->pick_max_k = ep_policy_max_k(p);
    const int d = p->cfg.pick.domain;
    if (o->pick && d >= 0) {
        const ep_pick_keys *k = &p->params.keys[d];
        o->n_keys = k->off[layer + 1] - k->off[layer];
        EP_ASSERT(o->n_keys <= EP_ROUTE_MAX_KEYS); // keys_fit() said so
        memcpy(o->keys, k->ids + k->off[layer], (size_t)o->n_keys * sizeof(int));
    }
    return EP_OK;
}

static ep_status check_out(const ep_policy *p, int T, const ep_routes *out, int k_base)
{
    if (T < 0 || T > out->cap_tokens || out->max_k < ep_policy_max_k(p) || out->k_base != k_base)
        return ep_errorf(EP_ERR_ARG,
                         "cuda router: %d tokens into routes of capacity %d, max_k %d, k_base %d; "
                         "expected T <= capacity, max_k >= %d, k_base %d",
                         T, out->cap_tokens, out->max_k, out->k_base, ep_policy_max_k(p), k_base);
    return EP_OK;
}

// Padded rows [T, row_k] -> CSR.
static void compact(const int *k, const int *kept, const float *w, int T, int row_k, ep_routes *out)
{
    out->n_tokens = T;
    out->offsets[0] = 0;
    for (int t = 0; t < T; t++) {
        const int o = out->offsets[t];
        memcpy(out->expert + o, kept + (size_t)t * row_k, (size_t)k[t] * sizeof(int));
        memcpy(out->weight + o, w + (size_t)t * row_k, (size_t)k[t] * sizeof(float));
        out->offsets[t + 1] = o + k[t];
    }
}

ep_status ep_router_cuda_route_logits_host(const ep_model_cfg *cfg, const ep_policy *p, int layer,
                                           const float *logits, int T, ep_routes *out)
{
    const int E = cfg->n_experts, row_k = EP_MAX(1, ep_policy_max_k(p));
    ep_route_params rp;
    ep_status st = params(cfg, p, layer, row_k, &rp);
    if (st == EP_OK) st = check_out(p, T, out, cfg->k_base);
    if (st != EP_OK) return st;
    float *scores = ep_xmalloc(((size_t)T * E + 1) * sizeof(float));
    int *k = ep_xmalloc(((size_t)T + 1) * sizeof(int));
    int *kept = ep_xmalloc(((size_t)T * row_k + 1) * sizeof(int));
    float *w = ep_xmalloc(((size_t)T * row_k + 1) * sizeof(float));
    memcpy(scores, logits, (size_t)T * E * sizeof(float));
    ep_route_tokens_host(&rp, scores, T, k, kept, w, out->base_expert, out->base_weight);
    compact(k, kept, w, T, row_k, out);
    free(scores);
    free(k);
    free(kept);
    free(w);
    return EP_OK;
}

ep_status ep_router_cuda_init(const ep_model_cfg *cfg, int cap_tokens, ep_gpu *g,
                              ep_router_cuda **out)
{
    *out = NULL;
    if (cap_tokens < 0 || cfg->n_experts < 1 || cfg->k_base < 1 || cfg->k_base > cfg->n_experts)
        return ep_errorf(EP_ERR_ARG,
                         "cuda router: cap_tokens %d, n_experts %d, k_base %d: expected "
                         "cap_tokens >= 0 and 1 <= k_base <= n_experts",
                         cap_tokens, cfg->n_experts, cfg->k_base);
    ep_status st = ep_gpu_make_current(g);
    if (st != EP_OK) return st;
    ep_router_cuda *r = ep_xcalloc(1, sizeof *r);
    r->cfg = *cfg;
    r->cap_tokens = cap_tokens;
    r->device = ep_gpu_device(g);
    r->row_k = EP_MIN(cfg->n_experts, EP_ROUTE_MAX_CAND); // kept <= candidates
    const size_t cap = (size_t)(cap_tokens > 0 ? cap_tokens : 1), E = (size_t)cfg->n_experts;
    const size_t rk = (size_t)r->row_k, kb = (size_t)cfg->k_base;
    if ((st = EP_CUDA_ST(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking)))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&r->d_logits, cap * E * sizeof(float))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&r->d_k, cap * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&r->d_kept, cap * rk * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&r->d_w, cap * rk * sizeof(float))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&r->d_base, cap * kb * sizeof(int))))) goto err;
    if ((st = EP_CUDA_ST(cudaMalloc((void **)&r->d_base_w, cap * kb * sizeof(float))))) goto err;
    r->h_k = ep_xmalloc(cap * sizeof(int));
    r->h_kept = ep_xmalloc(cap * rk * sizeof(int));
    r->h_w = ep_xmalloc(cap * rk * sizeof(float));
    r->d_gate = ep_xcalloc((size_t)cfg->n_layers, sizeof(float *));
    *out = r;
    return EP_OK;
err:
    ep_router_cuda_free(r);
    return ep_error_prefix(st, "cuda router init (%d tokens of %d experts)", cap_tokens,
                           cfg->n_experts);
}

void ep_router_cuda_free(ep_router_cuda *r)
{
    if (!r) return;
    (void)cudaSetDevice(r->device);
    if (r->stream) (void)cudaStreamSynchronize(r->stream);
    (void)cudaFree(r->d_logits);
    (void)cudaFree(r->d_k);
    (void)cudaFree(r->d_kept);
    (void)cudaFree(r->d_w);
    (void)cudaFree(r->d_base);
    (void)cudaFree(r->d_base_w);
    (void)cudaFree(r->d_x);
    for (int l = 0; r->d_gate && l < r->cfg.n_layers; l++)
        (void)cudaFree(r->d_gate[l]);
    free(r->d_gate);
    if (r->blas) (void)cublasDestroy(r->blas);
    if (r->stream) (void)cudaStreamDestroy(r->stream);
    free(r->h_k);
    free(r->h_kept);
    free(r->h_w);
    free(r);
}

// Checks a call, then (when T > 0) makes the device current and leaves the
// parameters in rp; *done is set when there is nothing to route.
static ep_status begin_call(ep_router_cuda *r, const ep_policy *p, int layer, int T, ep_routes *out,
                            ep_route_params *rp, bool *done)
{
    const ep_model_cfg *c = &r->cfg;
    ep_status st = params(c, p, layer, r->row_k, rp);
    if (st == EP_OK) st = check_out(p, T, out, c->k_base);
    if (st != EP_OK) return st;
    if (T > r->cap_tokens)
        return ep_errorf(EP_ERR_ARG, "cuda router: %d tokens, capacity is %d (cap_tokens)", T,
                         r->cap_tokens);
    out->n_tokens = T;
    out->offsets[0] = 0;
    *done = T == 0;
    if (!*done) EP_CUDA_CHECK(cudaSetDevice(r->device));
    return EP_OK;
}

// d_logits holds T rows: routes them on the stream and brings the routes home.
static ep_status route_device(ep_router_cuda *r, const ep_route_params *rp, int T, ep_routes *out)
{
    const size_t rk = (size_t)r->row_k, kb = (size_t)r->cfg.k_base;
    cudaStream_t q = r->stream;
    EP_CUDA_CHECK(ep_route_tokens_launch(rp, r->d_logits, T, r->d_k, r->d_kept, r->d_w, r->d_base,
                                         r->d_base_w, q));
    // The routes are control data (META): the host plans the dispatch from them.
    const enum cudaMemcpyKind d2h = cudaMemcpyDeviceToHost;
    const ep_copy_class meta = EP_COPY_META;
    ep_status st;
    if ((st = ep_cuda_copy_cls(r->h_k, r->d_k, (size_t)T * sizeof(int), d2h, q, meta,
                               "routes: experts per token")) ||
        (st = ep_cuda_copy_cls(r->h_kept, r->d_kept, (size_t)T * rk * sizeof(int), d2h, q, meta,
                               "routes: kept experts")) ||
        (st = ep_cuda_copy_cls(r->h_w, r->d_w, (size_t)T * rk * sizeof(float), d2h, q, meta,
                               "routes: weights")) ||
        (st = ep_cuda_copy_cls(out->base_expert, r->d_base, (size_t)T * kb * sizeof(int), d2h, q,
                               meta, "routes: top-k_base experts")) ||
        (st = ep_cuda_copy_cls(out->base_weight, r->d_base_w, (size_t)T * kb * sizeof(float), d2h,
                               q, meta, "routes: top-k_base weights")))
        return st;
    EP_CUDA_CHECK(cudaStreamSynchronize(q));
    compact(r->h_k, r->h_kept, r->h_w, T, (int)rk, out);
    return EP_OK;
}

ep_status ep_router_cuda_route_logits(ep_router_cuda *r, const ep_policy *p, int layer,
                                      const float *logits, int T, ep_routes *out)
{
    ep_route_params rp;
    bool done = false;
    ep_status st = begin_call(r, p, layer, T, out, &rp, &done);
    if (st != EP_OK || done) return st;
    if ((st = ep_cuda_copy_cls(r->d_logits, logits, (size_t)T * r->cfg.n_experts * sizeof(float),
                               cudaMemcpyHostToDevice, r->stream, EP_COPY_ACT, "router logits")))
        return st;
    return route_device(r, &rp, T, out);
}

// ---- the gate GEMM -------------------------------------------------------------------------

ep_router_gate_gemm ep_router_cuda_gate_gemm(int T, int hidden, int n_experts)
{
    ep_router_gate_gemm g = {
        .m = n_experts, .n = T, .k = hidden, .lda = hidden, .ldb = hidden, .ldc = n_experts};
    return g;
}

ep_status ep_router_cuda_set_gate(ep_router_cuda *r, int layer, const float *gate_w)
{
    const ep_model_cfg *c = &r->cfg;
    if (layer < 0 || layer >= c->n_layers || !ep_model_layer_is_moe(c, layer))
        return ep_errorf(EP_ERR_ARG,
                         "cuda router: gate of layer %d: not a MoE layer of %s (layers %d..%d)",
                         layer, c->name, c->first_k_dense, c->n_layers - 1);
    const size_t E = (size_t)c->n_experts, H = (size_t)c->hidden;
    EP_CUDA_CHECK(cudaSetDevice(r->device));
    // The handle and the input rows are made on the first gate, so a router
    // that only routes logits never pays for them.
    if (!r->blas) {
        cublasHandle_t h;
        EP_CUBLAS_CHECK(cublasCreate(&h));
        ep_status st = EP_CUBLAS_ST(cublasSetStream(h, r->stream));
        // Plain fp32 GEMM: no TF32 tensor-op rounding of the inputs.
        if (st == EP_OK) st = EP_CUBLAS_ST(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
        if (st != EP_OK) {
            (void)cublasDestroy(h);
            return st;
        }
        r->blas = h;
    }
    const size_t cap = (size_t)(r->cap_tokens > 0 ? r->cap_tokens : 1);
    if (!r->d_x) EP_CUDA_CHECK(cudaMalloc((void **)&r->d_x, cap * H * sizeof(float)));
    if (!r->d_gate[layer])
        EP_CUDA_CHECK(cudaMalloc((void **)&r->d_gate[layer], E * H * sizeof(float)));
    ep_status st = ep_cuda_copy_cls(r->d_gate[layer], gate_w, E * H * sizeof(float),
                                    cudaMemcpyHostToDevice, r->stream, EP_COPY_LOAD, "router gate");
    if (st != EP_OK) return st;
    EP_CUDA_CHECK(cudaStreamSynchronize(r->stream)); // gate_w is the caller's again
    return EP_OK;
}

// logits [T, E] = x_dev . gate^T into d_logits, on the router's stream.
static ep_status gate_gemm(ep_router_cuda *r, int layer, const float *x_dev, int T)
{
    if (!r->d_gate[layer])
        return ep_errorf(EP_ERR_ARG,
                         "cuda router: the gate of layer %d was not uploaded "
                         "(ep_router_cuda_set_gate)",
                         layer);
    if (T == 0) return EP_OK;
    const ep_model_cfg *c = &r->cfg;
    const ep_router_gate_gemm g = ep_router_cuda_gate_gemm(T, c->hidden, c->n_experts);
    const float one = 1.0f, zero = 0.0f;
    EP_CUBLAS_CHECK(cublasSgemm(r->blas, CUBLAS_OP_T, CUBLAS_OP_N, g.m, g.n, g.k, &one,
                                r->d_gate[layer], g.lda, x_dev, g.ldb, &zero, r->d_logits, g.ldc));
    return EP_OK;
}

ep_status ep_router_cuda_route(ep_router_cuda *r, const ep_policy *p, int layer, const float *x,
                               int T, ep_routes *out)
{
    ep_route_params rp;
    bool done = false;
    ep_status st = begin_call(r, p, layer, T, out, &rp, &done);
    if (st == EP_OK) st = gate_gemm(r, layer, NULL, 0); // names a missing gate, computes nothing
    if (st != EP_OK || done) return st;
    if ((st = ep_cuda_copy_cls(r->d_x, x, (size_t)T * r->cfg.hidden * sizeof(float),
                               cudaMemcpyHostToDevice, r->stream, EP_COPY_ACT, "router input")))
        return st;
    if ((st = gate_gemm(r, layer, r->d_x, T))) return st;
    return route_device(r, &rp, T, out);
}

ep_status ep_router_cuda_route_dev(ep_router_cuda *r, const ep_policy *p, int layer,
                                   const float *x_dev, int T, ep_routes *out)
{
    ep_route_params rp;
    bool done = false;
    ep_status st = begin_call(r, p, layer, T, out, &rp, &done);
    if (st == EP_OK) st = gate_gemm(r, layer, x_dev, done ? 0 : T);
    if (st != EP_OK || done) return st;
    return route_device(r, &rp, T, out);
}

ep_status ep_router_cuda_logits_dev(ep_router_cuda *r, int layer, const float *x_dev, int T,
                                    float *logits)
{
    const ep_model_cfg *c = &r->cfg;
    if (layer < 0 || layer >= c->n_layers || !ep_model_layer_is_moe(c, layer))
        return ep_errorf(EP_ERR_ARG, "cuda router: logits of layer %d: not a MoE layer of %s",
                         layer, c->name);
    if (T < 0 || T > r->cap_tokens)
        return ep_errorf(EP_ERR_ARG, "cuda router: %d tokens, capacity is %d (cap_tokens)", T,
                         r->cap_tokens);
    EP_CUDA_CHECK(cudaSetDevice(r->device));
    ep_status st = gate_gemm(r, layer, x_dev, T);
    if (st != EP_OK || T == 0) return st;
    // Logits are activations (ACT): a host policy needs them whole.
    if ((st = ep_cuda_copy_cls(logits, r->d_logits, (size_t)T * c->n_experts * sizeof(float),
                               cudaMemcpyDeviceToHost, r->stream, EP_COPY_ACT, "router logits")))
        return st;
    EP_CUDA_CHECK(cudaStreamSynchronize(r->stream));
    return EP_OK;
}

size_t ep_router_cuda_device_bytes(const ep_router_cuda *r)
{
    if (!r) return 0;
    const ep_model_cfg *c = &r->cfg;
    const size_t cap = (size_t)(r->cap_tokens > 0 ? r->cap_tokens : 1), E = (size_t)c->n_experts;
    const size_t rk = (size_t)r->row_k, kb = (size_t)c->k_base;
    size_t b = cap * (E * sizeof(float) + sizeof(int) + rk * (sizeof(int) + sizeof(float)) +
                      kb * (sizeof(int) + sizeof(float)));
    if (r->d_x) b += cap * (size_t)c->hidden * sizeof(float);
    for (int l = 0; l < c->n_layers; l++)
        if (r->d_gate[l]) b += E * (size_t)c->hidden * sizeof(float);
    return b;
}
