// Shared helpers of the GPU tests (see cuda_test_util.h).
#include "cuda_test_util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cluster/gpu.h"
#include "common/weights.h"

int cuda_test_devices(const char *test)
{
    char why[512] = "";
    int n = ep_gpu_count(why, sizeof why);
    if (n == 0) printf("# SKIP %s: no CUDA device visible (%s)\n", test, why);
    fflush(stdout);
    return n;
}

int cuda_test_mpi_devices(ep_cluster *c, const char *test)
{
    char why[512] = "";
    int n = ep_gpu_count(why, sizeof why), dev = -1;
    int64_t can = n > 0;
    if (can && ep_gpu_choose(c->local_rank, c->local_size, n, &dev) != EP_OK) {
        snprintf(why, sizeof why, "%s", ep_last_error());
        can = 0;
    }
    if (can && n == 1 && c->local_size > 1) { // NCCL refuses two ranks on one GPU
        snprintf(why, sizeof why, "%d ranks on this host share its one visible GPU", c->local_size);
        can = 0;
    }
    int64_t all_can = can;
    if (ep_cluster_allreduce_i64(c, &all_can, 1, EP_REDUCE_MIN) != EP_OK) return -1;
    if (!all_can && !can)
        printf("# SKIP %s (rank %d of %d): %s\n", test, c->rank, c->world_size, why);
    fflush(stdout);
    return all_can ? 1 : 0;
}

int cuda_test_mpi_begin(int *argc, char ***argv, const char *test, ep_cluster **out)
{
    *out = NULL;
    ep_cluster *c = NULL;
    if (ep_cluster_init(argc, argv, 0, &c) != EP_OK) {
        fprintf(stderr, "ep_cluster_init: %s\n", ep_last_error());
        return -1;
    }
    // The skip is collective: one rank without a device of its own skips all.
    int run = cuda_test_mpi_devices(c, test);
    if (run < 0) return -1;
    if (!run) {
        ep_cluster_free(c);
        return 0;
    }
    *out = c;
    return 1;
}

void cuda_test_cfg_qwen(ep_model_cfg *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "cuda-test-qwen3-odd");
    c->arch = EP_ARCH_QWEN3_MOE;
    c->hidden = 13;
    c->n_layers = 2;
    c->n_heads = 1;
    c->n_kv_heads = 1;
    c->head_dim = 13;
    c->vocab = 17;
    c->intermediate = 19;
    c->max_pos = 64;
    c->rms_eps = 1e-6f;
    c->rope_theta = 10000.0f;
    c->qk_norm = true;
    c->n_experts = 11;
    c->k_base = 3;
    c->moe_inter = 7;
    c->n_shared = 0;
    c->first_k_dense = 0;
    c->topk_method = EP_TOPK_GREEDY;
    c->n_group = 1;
    c->topk_group = 1;
    c->norm_topk_prob = true;
    c->routed_scaling_factor = 1.0f;
    c->seed = 5711;
}

void cuda_test_cfg_deepseek(ep_model_cfg *c)
{
    cuda_test_cfg_qwen(c);
    snprintf(c->name, sizeof c->name, "cuda-test-deepseek-odd");
    c->arch = EP_ARCH_DEEPSEEK_V2;
    c->n_layers = 3;
    c->first_k_dense = 1;
    c->n_shared = 2;
    c->qk_norm = false;
    c->head_dim = 0;
    c->norm_topk_prob = false;
    c->routed_scaling_factor = 2.5f;
    c->kv_lora_rank = 5;
    c->qk_nope_dim = 4;
    c->qk_rope_dim = 2;
    c->v_head_dim = 4;
    c->seed = 1313;
}

void cuda_test_fill(float *x, size_t n, uint64_t seed, float scale)
{
    ep_rng r;
    ep_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((2.0 * ep_rng_uniform(&r) - 1.0) * scale);
}

// k distinct picks among n_allowed ids (partial Fisher-Yates on a copy).
static int pick_distinct(ep_rng *r, const int *allowed, int n_allowed, int k, int *out)
{
    int pool[256];
    EP_ASSERT(n_allowed <= 256);
    memcpy(pool, allowed, (size_t)n_allowed * sizeof(int));
    k = EP_MIN(k, n_allowed);
    for (int i = 0; i < k; i++) {
        int j = i + (int)(ep_rng_next(r) % (uint64_t)(n_allowed - i));
        int t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
        out[i] = pool[i];
    }
    return k;
}

void cuda_test_records(int n_rec, int max_k, const int *allowed, int n_allowed, int base,
                       uint64_t seed, int *pair_off, int *pair_expert, float *pair_weight)
{
    ep_rng r;
    ep_rng_seed(&r, seed);
    int np = base;
    for (int i = 0; i < n_rec; i++) {
        pair_off[i] = np;
        int k = (int)(ep_rng_next(&r) % (uint64_t)(max_k + 1)); // 0 pairs too
        np += pick_distinct(&r, allowed, n_allowed, k, pair_expert + np);
        for (int j = pair_off[i]; j < np; j++)
            pair_weight[j] = (float)(0.05 + ep_rng_uniform(&r));
    }
    pair_off[n_rec] = np;
}

void cuda_test_routes(ep_routes *rt, int T, int max_k, int E, uint64_t seed)
{
    ep_rng r;
    ep_rng_seed(&r, seed);
    int all[256];
    EP_ASSERT(E <= 256 && T <= rt->cap_tokens && max_k <= rt->max_k);
    for (int e = 0; e < E; e++)
        all[e] = e;
    rt->n_tokens = T;
    rt->offsets[0] = 0;
    for (int t = 0; t < T; t++) {
        int k = 1 + (int)(ep_rng_next(&r) % (uint64_t)max_k);
        int o = rt->offsets[t];
        k = pick_distinct(&r, all, E, k, rt->expert + o);
        for (int j = o; j < o + k; j++)
            rt->weight[j] = (float)(0.05 + ep_rng_uniform(&r));
        for (int j = 0; j < rt->k_base; j++) {
            rt->base_expert[t * rt->k_base + j] = rt->expert[o + j % k];
            rt->base_weight[t * rt->k_base + j] = rt->weight[o + j % k];
        }
        rt->offsets[t + 1] = o + k;
    }
}

void cuda_test_gemm_tn(int m, int n, int k, const float *A, int lda, const float *B, int ldb,
                       float *C, int ldc)
{
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += (double)A[p + (size_t)i * lda] * B[p + (size_t)j * ldb];
            C[i + (size_t)j * ldc] = (float)s;
        }
}

double cuda_test_rel_err(const float *a, const float *b, int rows, int cols)
{
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        double num = 0, den = 0;
        for (int c = 0; c < cols; c++) {
            double d = fabs((double)a[(size_t)r * cols + c] - b[(size_t)r * cols + c]);
            if (!(d <= num)) num = d; // NaN wins
            den = EP_MAX(den, fabs((double)b[(size_t)r * cols + c]));
        }
        worst = EP_MAX(worst, num / EP_MAX(den, 1e-6));
        if (isnan(num)) return NAN;
    }
    return worst;
}

ep_policy *cuda_test_pick_policy(const ep_model_cfg *c, ep_policy_kind kind, ep_pick_strategy s,
                                 int max_keys, uint64_t seed)
{
    EP_ASSERT(kind == EP_POLICY_PICK || kind == EP_POLICY_BANPICK);
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, c, kind);
    rc.pick.strategy = s;
    const int E = c->n_experts, d = ep_routing_cfg_add_domain(&rc, "keys");
    ep_rng r;
    ep_rng_seed(&r, seed);
    for (int l = c->first_k_dense; l < c->n_layers; l++) {
        const int n = EP_MIN(E, (int)((l * 7 + seed) % (uint64_t)(max_keys + 1)));
        for (int got = 0; got < n;) {
            const int e = (int)(ep_rng_next(&r) % (uint64_t)E);
            got += !rc.pick.domains[d].key[(size_t)l * E + e];
            rc.pick.domains[d].key[(size_t)l * E + e] = 1;
        }
    }
    rc.pick.domain = d;
    if (kind == EP_POLICY_BANPICK) {
        rc.ban.layer_sensitivity = ep_xmalloc(sizeof(float) * (size_t)c->n_layers);
        for (int l = 0; l < c->n_layers; l++)
            rc.ban.layer_sensitivity[l] = (float)ep_rng_uniform(&r);
    }
    ep_policy *p;
    EP_ASSERT(ep_policy_create_cfg(&rc, &p) == EP_OK);
    ep_routing_cfg_free(&rc);
    return p;
}
