// The router's per-token routine, compiled for both the device (one thread
// per token) and the host (for tests without a device): softmax, group mask,
// candidates, Ban's K, Pick's additions or swaps, kept set, weights. Same
// arithmetic, in the same order, as router/router.c, router/policy_ban.c and
// router/policy_pick.c, so the two agree bit for bit on the host and up to
// expf's last bits on the device.
#include <math.h>

#include "cluster/cuda/launch.h"
#include "router/cuda/route_token.h"

#define EP_HD __host__ __device__

// a ranks before b: higher score, or equal score and lower id (router.c's rule).
static EP_HD inline bool ep_rt_before(float sa, int a, float sb, int b)
{
    return sa > sb || (sa == sb && a < b);
}

// Insertion top-k over ids [0, n) whose group is selected (gsel NULL: all).
static EP_HD int ep_rt_topk(const float *score, int n, int k, const unsigned char *gsel, int gsize,
                            int *idx)
{
    int m = 0;
    if (k <= 0) return 0;
    for (int e = 0; e < n; e++) {
        if (gsel && !gsel[e / gsize]) continue;
        const float s = score[e];
        if (m == k && !ep_rt_before(s, e, score[idx[k - 1]], idx[k - 1])) continue;
        int j = m < k ? m++ : k - 1;
        while (j > 0 && ep_rt_before(s, e, score[idx[j - 1]], idx[j - 1])) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = e;
    }
    return m;
}

static EP_HD void ep_rt_weights(const ep_route_params *p, const float *score, const int *idx, int k,
                                float *w)
{
    if (p->renorm) {
        float sum = 0.0f;
        for (int j = 0; j < k; j++)
            sum += score[idx[j]];
        if (p->deepseek) sum += 1e-20f;
        for (int j = 0; j < k; j++)
            w[j] = score[idx[j]] / sum;
    } else {
        for (int j = 0; j < k; j++)
            w[j] = score[idx[j]] * p->scale;
    }
}

// Ban's K from the sorted candidate scores (policy_ban.c's ep_ban_k).
static EP_HD int ep_rt_ban_k(const ep_route_params *p, const float *score, const int *cand,
                             int n_cand)
{
    const int kb = p->k_base < n_cand ? p->k_base : n_cand;
    double top3 = 0.0, topk = 0.0;
    for (int j = 0; j < kb; j++) {
        topk += score[cand[j]];
        if (j < 3) top3 += score[cand[j]];
    }
    const double R = topk > 0.0 ? top3 / topk : 1.0;
    double tterm = 0.0;
    if (p->r_max > p->r_min) {
        tterm = (p->r_max - R) / ((double)p->r_max - p->r_min);
        tterm = tterm < 0.0 ? 0.0 : tterm > 1.0 ? 1.0 : tterm;
    }
    const double S = p->beta * (double)p->lterm + (1.0 - p->beta) * tterm;
    const double x = p->k_min + (double)(p->k_base - p->k_min) * p->lambda * S;
    int K = (int)floor(x + 1e-6); // policy_ban.c's EP_BAN_FLOOR_EPS
    K = K > p->k_base ? p->k_base : K;
    K = K < p->k_min ? p->k_min : K;
    return K < n_cand ? K : n_cand;
}

// ---- Pick (policy_pick.c) -----------------------------------------------------

static EP_HD bool ep_rt_in(const int *a, int n, int v)
{
    for (int i = 0; i < n; i++)
        if (a[i] == v) return true;
    return false;
}

// router.c's sort_by_score: insertion sort, score descending, ties lower id.
static EP_HD void ep_rt_sort(const float *score, int *ids, int k)
{
    for (int i = 1; i < k; i++) {
        const int v = ids[i];
        int j = i;
        while (j > 0 && ep_rt_before(score[v], v, score[ids[j - 1]], ids[j - 1])) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = v;
    }
}

// Index in kept[0..K) of the weakest expert that is not a key expert, or -1.
static EP_HD int ep_rt_weakest_non_key(const float *score, const int *kept, int K, const int *keys,
                                       int nk)
{
    int w = -1;
    for (int i = 0; i < K; i++) {
        if (ep_rt_in(keys, nk, kept[i])) continue;
        if (w < 0 || ep_rt_before(score[kept[w]], kept[w], score[kept[i]], kept[i])) w = i;
    }
    return w;
}

// Strategy E (pick_bias): key experts the group mask allows compete with the
// kept set, their scores raised by 20 % of the kept set's mean score.
static EP_HD int ep_rt_pick_bias(const ep_route_params *p, const float *score,
                                 const unsigned char *gsel, int gsize, int *kept, int K)
{
    const int nk = p->n_keys;
    const int *keys = p->keys;
    double mean = 0.0;
    for (int i = 0; i < K; i++)
        mean += score[kept[i]];
    const float bias = (float)(0.2 * mean / K);
    int pool[EP_ROUTE_MAX_CAND + EP_ROUTE_MAX_KEYS], n = 0;
    for (int i = 0; i < K; i++)
        pool[n++] = kept[i];
    for (int i = 0; i < nk; i++)
        if (!ep_rt_in(kept, K, keys[i]) && (!gsel || gsel[keys[i] / gsize])) pool[n++] = keys[i];
    for (int j = 0; j < K; j++) {
        int b = j;
        for (int i = j + 1; i < n; i++) {
            const float si = score[pool[i]] + (ep_rt_in(keys, nk, pool[i]) ? bias : 0.0f);
            const float sb = score[pool[b]] + (ep_rt_in(keys, nk, pool[b]) ? bias : 0.0f);
            if (ep_rt_before(si, pool[i], sb, pool[b])) b = i;
        }
        const int tmp = pool[j];
        pool[j] = pool[b];
        pool[b] = tmp;
    }
    for (int j = 0; j < K; j++)
        kept[j] = pool[j];
    return K;
}

// ep_pick_apply: strategies A (add), B (swap for the weakest non-key), C and
// D (the same, only for keys among the candidates), E (bias). Returns K.
static EP_HD int ep_rt_pick(const ep_route_params *p, const float *score, const int *cand,
                            int n_cand, const unsigned char *gsel, int gsize, int *kept, int K)
{
    const int nk = p->n_keys, s = p->pick_strategy;
    if (nk == 0) return K;
    if (s == 4) return ep_rt_pick_bias(p, score, gsel, gsize, kept, K);
    // Strongest key expert first, so that when slots run out the best wins.
    int ord[EP_ROUTE_MAX_KEYS];
    for (int i = 0; i < nk; i++) {
        const int v = p->keys[i];
        int j = i;
        while (j > 0 && ep_rt_before(score[v], v, score[ord[j - 1]], ord[j - 1])) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = v;
    }
    const bool in_range_only = s == 2 || s == 3, add = s == 0 || s == 2;
    for (int i = 0; i < nk; i++) {
        const int key = ord[i];
        if (ep_rt_in(kept, K, key)) continue;
        if (in_range_only && !ep_rt_in(cand, n_cand, key)) continue;
        if (add) {
            if (K < p->pick_max_k) kept[K++] = key;
        } else {
            const int w = ep_rt_weakest_non_key(score, kept, K, p->keys, nk);
            if (w >= 0) kept[w] = key;
        }
    }
    return K;
}

static EP_HD void ep_route_one(const ep_route_params *p, float *row, int *k_out, int *kept,
                               float *weight, int *base, float *base_w)
{
    const int E = p->n_experts;
    // Softmax exactly as ep_router_softmax: fp32 exp, double sum, one reciprocal.
    float mx = row[0];
    for (int i = 1; i < E; i++)
        if (row[i] > mx) mx = row[i];
    double sum = 0.0;
    for (int i = 0; i < E; i++) {
        row[i] = expf(row[i] - mx);
        sum += row[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < E; i++)
        row[i] *= inv;

    unsigned char gsel[EP_ROUTE_MAX_GROUPS];
    int gsize = E;
    if (p->grouped) {
        gsize = E / p->n_group;
        float gscore[EP_ROUTE_MAX_GROUPS];
        int gidx[EP_ROUTE_MAX_GROUPS];
        for (int g = 0; g < p->n_group; g++) {
            float m = row[g * gsize];
            for (int i = 1; i < gsize; i++)
                if (row[g * gsize + i] > m) m = row[g * gsize + i];
            gscore[g] = m;
            gsel[g] = 0;
        }
        const int n = ep_rt_topk(gscore, p->n_group, p->topk_group, NULL, 1, gidx);
        for (int j = 0; j < n; j++)
            gsel[gidx[j]] = 1;
    }
    int cand[EP_ROUTE_MAX_CAND];
    const int n_cand = ep_rt_topk(row, E, p->want, p->grouped ? gsel : NULL, gsize, cand);

    for (int j = 0; j < p->k_base; j++)
        base[j] = cand[j];
    ep_rt_weights(p, row, cand, p->k_base, base_w);

    // Candidates are sorted, so the kept prefix is sorted as the router sorts
    // it; only Pick's changes need the router's sort again.
    int K = p->ban ? ep_rt_ban_k(p, row, cand, n_cand) : p->k_base;
    for (int j = 0; j < K; j++)
        kept[j] = cand[j];
    if (p->pick) {
        K = ep_rt_pick(p, row, cand, n_cand, p->grouped ? gsel : NULL, gsize, kept, K);
        ep_rt_sort(row, kept, K);
    }
    ep_rt_weights(p, row, kept, K, weight);
    *k_out = K;
}

__global__ void ep_route_tokens_kernel(ep_route_params p, float *logits, int T, int *k, int *kept,
                                       float *weight, int *base, float *base_w)
{
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < T; t += gridDim.x * blockDim.x)
        ep_route_one(&p, logits + (size_t)t * p.n_experts, k + t, kept + (size_t)t * p.max_k,
                     weight + (size_t)t * p.max_k, base + (size_t)t * p.k_base,
                     base_w + (size_t)t * p.k_base);
}

extern "C" cudaError_t ep_route_tokens_launch(const ep_route_params *p, float *logits, int T,
                                              int *k, int *kept, float *weight, int *base,
                                              float *base_w, cudaStream_t stream)
{
    if (T <= 0) return cudaSuccess;
    const int threads = 128;
    const int blocks = (T + threads - 1) / threads;
    EP_LAUNCH(ep_route_tokens_kernel, blocks, threads, 0, stream, *p, logits, T, k, kept, weight,
              base, base_w);
    return cudaGetLastError();
}

extern "C" void ep_route_tokens_host(const ep_route_params *p, float *logits, int T, int *k,
                                     int *kept, float *weight, int *base, float *base_w)
{
    for (int t = 0; t < T; t++)
        ep_route_one(p, logits + (size_t)t * p->n_experts, k + t, kept + (size_t)t * p->max_k,
                     weight + (size_t)t * p->max_k, base + (size_t)t * p->k_base,
                     base_w + (size_t)t * p->k_base);
}
