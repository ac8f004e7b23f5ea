// Synthetic weights and MoE-layer inputs: the RNG and hash every generated
// value in epserve comes from, ep_synth_tensor (a pure function of the model
// seed, the tensor name and its shape, BF16-rounded; gates also of k_base and
// the top-k method) and ep_synth_hidden.
// It writes no files (common/synth_ckpt.c does) and knows no checkpoint.
//
// Gates and hidden states share one geometry (docs/synthetic.md): an
// orthonormal basis {u, v_0..v_3, q_1..q_m} drawn from the model seed. A gate
// row is  gamma * (bias_c[e] u + sum_d bias_d[d][e] v_d + sum_j b[e][j] q_j)
// + noise; a hidden state of domain d is  sqrt(H) * (sqrt(f) y + sqrt(1-f) z)
// with y = (u + v_d + eta) / sqrt(3) (eta a random unit vector in span q) and
// z a unit vector orthogonal to the basis. So a token's logit for expert e is
// G * (bias_c[e] + bias_d[d][e] + N_e) + small noise, where N_e ~ N(0,1) is
// the token's own preference and G = kappa * sqrt(f / 3) its concentration.
#include "common/dtype.h"
#include "common/weights.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- RNG and hash ---------------------------------------------------------

static uint64_t splitmix64_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void ep_rng_seed(ep_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) {
        x += 0x9e3779b97f4a7c15ull;
        r->s[i] = splitmix64_mix(x);
    }
    // xoshiro must not start from the all-zero state (it would stay there).
    if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3])) r->s[0] = 0x9e3779b97f4a7c15ull;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t ep_rng_next(ep_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double ep_rng_uniform(ep_rng *r)
{
    return (double)(ep_rng_next(r) >> 11) * 0x1.0p-53;
}

double ep_rng_normal(ep_rng *r)
{
    // Box-Muller; 1 - u keeps the log argument in (0, 1].
    double u1 = 1.0 - ep_rng_uniform(r), u2 = ep_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint64_t ep_hash64(const void *data, size_t n, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull ^ splitmix64_mix(seed + 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return splitmix64_mix(h ^ (uint64_t)n);
}

// Hash of a few integers (used for hidden-state streams).
static uint64_t hash_u64s(const uint64_t *v, size_t n, uint64_t seed)
{
    unsigned char buf[8 * 8];
    EP_ASSERT(n <= 8);
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 8; b++)
            buf[i * 8 + b] = (unsigned char)(v[i] >> (8 * b));
    return ep_hash64(buf, n * 8, seed);
}

// n standard normals scaled by `scale` plus `offset`, two per Box-Muller
// draw (tensors are large; this halves the transcendental calls).
static void fill_normal(ep_rng *r, float *dst, size_t n, double scale, double offset)
{
    size_t i = 0;
    for (; i + 1 < n; i += 2) {
        double u1 = 1.0 - ep_rng_uniform(r), u2 = ep_rng_uniform(r);
        double rad = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
        dst[i] = (float)(offset + scale * rad * cos(th));
        dst[i + 1] = (float)(offset + scale * rad * sin(th));
    }
    if (i < n) dst[i] = (float)(offset + scale * ep_rng_normal(r));
}

// ---- constants of the routing structure -----------------------------------
// Measured effects of each are in docs/synthetic.md; the unit of every bias
// is the standard deviation of a token's own preference N_e.

enum {
    SYNTH_Q_DIMS = 16, // dimension of the token-preference subspace
    SYNTH_N_HOT_COMMON = 2,
    SYNTH_N_HOT_DOMAIN = 3,
};
static const double synth_kappa = 12.0;        // G = kappa * sqrt(f / 3)
static const double synth_logit_noise = 0.1;   // std of the isotropic gate-noise logit
static const double synth_sigma_common = 0.35; // spread of per-expert popularity, all domains
static const double synth_sigma_domain = 0.35; // spread of per-expert popularity, per domain
// Hot experts: target share of tokens as a multiple of the uniform share k/E,
// capped (a share above ~0.9 would make the expert always-on).
static const double synth_hot_common_mult[SYNTH_N_HOT_COMMON] = {5.0, 3.0};
static const double synth_hot_domain_mult[SYNTH_N_HOT_DOMAIN] = {8.0, 4.0, 2.5};
static const double synth_hot_cap = 0.85;
// Concentration: log G = log(median) + token part + (token, layer) part;
// per model (cfg->synth_conc_*, YAML `synth:`), EP_SYNTH_CONC_* by default.
static const double synth_f_max = 0.9; // keep some isotropic part in every hidden

// Upper-tail quantile: z with P(N(0,1) > z) = p, p in (0, 1).
static double upper_quantile(double p)
{
    double lo = -12.0, hi = 12.0;
    for (int i = 0; i < 100; i++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * erfc(mid / M_SQRT2) > p)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

// ---- the shared basis -----------------------------------------------------
// Depends on (model seed, hidden) only. Gram-Schmidt of Gaussian vectors, in
// double. Cached because every hidden state needs it; entries are immutable
// once published and live for the process.

typedef struct synth_basis {
    uint64_t seed;
    int H;
    int n_dirs;  // 0 u, 1..4 v_d, then q_j; fewer when H is tiny
    int n_q;     // directions q_j (n_dirs - 5, or 0)
    double *dir; // [n_dirs, H], orthonormal rows
    struct synth_basis *next;
} synth_basis;

static pthread_mutex_t basis_lock = PTHREAD_MUTEX_INITIALIZER;
static synth_basis *basis_head;
static int basis_count;
enum { SYNTH_BASIS_CACHE_MAX = 32 };

static void basis_build(synth_basis *b, uint64_t seed, int H)
{
    b->seed = seed;
    b->H = H;
    // Leave at least half of the space to the isotropic part of hidden states.
    int n = EP_MIN(5 + SYNTH_Q_DIMS, H / 2);
    if (n < 1) n = H >= 1 ? 1 : 0;
    b->n_dirs = n;
    b->n_q = n > 5 ? n - 5 : 0;
    b->dir = ep_xmalloc((size_t)(n > 0 ? n : 1) * (size_t)(H > 0 ? H : 1) * sizeof(double));
    static const char tag[] = "epserve.synth.basis";
    ep_rng r;
    ep_rng_seed(&r, ep_hash64(tag, sizeof tag - 1, seed) ^ splitmix64_mix((uint64_t)H));
    for (int i = 0; i < n; i++) {
        double *d = b->dir + (size_t)i * H;
        for (;;) {
            for (int h = 0; h < H; h++)
                d[h] = ep_rng_normal(&r);
            // Two passes of modified Gram-Schmidt keep rows orthogonal to
            // rounding even when H is small.
            for (int pass = 0; pass < 2; pass++)
                for (int j = 0; j < i; j++) {
                    const double *o = b->dir + (size_t)j * H;
                    double dot = 0;
                    for (int h = 0; h < H; h++)
                        dot += d[h] * o[h];
                    for (int h = 0; h < H; h++)
                        d[h] -= dot * o[h];
                }
            double nrm = 0;
            for (int h = 0; h < H; h++)
                nrm += d[h] * d[h];
            nrm = sqrt(nrm);
            if (nrm > 1e-6) {
                for (int h = 0; h < H; h++)
                    d[h] /= nrm;
                break;
            }
        }
    }
}

// Returns the cached basis, or builds it into *tmp (caller frees tmp->dir)
// when the cache is full.
static const synth_basis *basis_get(uint64_t seed, int H, synth_basis *tmp)
{
    pthread_mutex_lock(&basis_lock);
    for (synth_basis *b = basis_head; b; b = b->next)
        if (b->seed == seed && b->H == H) {
            pthread_mutex_unlock(&basis_lock);
            return b;
        }
    const synth_basis *out;
    if (basis_count < SYNTH_BASIS_CACHE_MAX) {
        synth_basis *b = ep_xcalloc(1, sizeof *b);
        basis_build(b, seed, H);
        b->next = basis_head;
        basis_head = b;
        basis_count++;
        out = b;
    } else {
        basis_build(tmp, seed, H);
        out = tmp;
    }
    pthread_mutex_unlock(&basis_lock);
    return out;
}

// ---- tensor kinds ---------------------------------------------------------

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static int64_t shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    return n;
}

// N(0,1) clamped to [-2.5, 2].
static double trunc_normal(ep_rng *r)
{
    double v = ep_rng_normal(r);
    return v < -2.5 ? -2.5 : v > 2.0 ? 2.0 : v;
}

// The planted hot experts of one layer, most important first: the common
// ones, then each domain's top, second, third. Without groups they are a
// random choice. Under group_limited_greedy two hot experts in one group make
// the whole group hot (it is kept nearly always, so its other members win
// more often too), so there they go round-robin over a random group order,
// as a trained, group-balanced model would have them.
static void pick_hot(const ep_model_cfg *cfg, ep_rng *r, int E, int *hot, int n_hot)
{
    int *perm = ep_xmalloc((size_t)E * sizeof(int));
    for (int e = 0; e < E; e++)
        perm[e] = e;
    for (int e = E - 1; e > 0; e--) {
        int j = (int)(ep_rng_next(r) % (uint64_t)(e + 1));
        int t = perm[e];
        perm[e] = perm[j];
        perm[j] = t;
    }
    int G = cfg->n_group;
    bool grouped = cfg->topk_method == EP_TOPK_GROUP_LIMITED && G > 1 && E % G == 0 && n_hot <= E;
    if (!grouped) {
        for (int i = 0; i < n_hot; i++)
            hot[i] = perm[i % E];
    } else {
        // perm doubles as a random order inside each group: walk it and take
        // the first unused expert of the wanted group.
        int gs = E / G;
        int *gperm = ep_xmalloc((size_t)G * sizeof(int));
        bool *used = ep_xcalloc((size_t)E, sizeof(bool));
        for (int g = 0; g < G; g++)
            gperm[g] = g;
        for (int g = G - 1; g > 0; g--) {
            int j = (int)(ep_rng_next(r) % (uint64_t)(g + 1));
            int t = gperm[g];
            gperm[g] = gperm[j];
            gperm[j] = t;
        }
        for (int i = 0; i < n_hot; i++) {
            int want = gperm[i % G], pick = -1;
            for (int j = 0; j < E && pick < 0; j++)
                if (!used[perm[j]] && perm[j] / gs == want) pick = perm[j];
            for (int j = 0; j < E && pick < 0; j++) // the group is full
                if (!used[perm[j]]) pick = perm[j];
            used[pick] = true;
            hot[i] = pick;
        }
        free(used);
        free(gperm);
    }
    free(perm);
}

// Per-expert biases of one MoE layer, in units of a token's preference std.
// bias[0][e] is the all-domain part, bias[1 + d][e] the part of domain d.
static void gate_biases(const ep_model_cfg *cfg, ep_rng *r, int E, double *bias /* [1 + D, E] */)
{
    const int k = cfg->k_base;
    const int D = EP_SYNTH_N_DOMAINS;
    int hot[SYNTH_N_HOT_COMMON + EP_SYNTH_N_DOMAINS * SYNTH_N_HOT_DOMAIN];
    pick_hot(cfg, r, E, hot, (int)EP_ARRAY_LEN(hot));

    // Popularity of the other experts: truncated at +2 sigma so that chance
    // alone never makes an expert hotter than the planted hot ones (tests
    // and benchmarks rely on a domain's hottest expert being its own).
    for (int e = 0; e < E; e++)
        bias[e] = synth_sigma_common * trunc_normal(r);
    for (int d = 0; d < D; d++)
        for (int e = 0; e < E; e++)
            bias[(size_t)(1 + d) * E + e] = synth_sigma_domain * trunc_normal(r);

    // The top-k threshold of bias + N over E experts is about the (1 - k/E)
    // quantile of N(0, 1 + sigma^2); a hot expert with share p needs
    // bias = threshold - upper_quantile(p). (group_limited_greedy makes hot
    // experts somewhat hotter than p: see docs/synthetic.md.)
    double q = (double)EP_MAX(1, EP_MIN(k, E)) / E;
    double sig2 = synth_sigma_common * synth_sigma_common + synth_sigma_domain * synth_sigma_domain;
    double thr = q < 1.0 ? sqrt(1.0 + sig2) * upper_quantile(q) : -10.0;
    for (int i = 0; i < SYNTH_N_HOT_COMMON; i++) {
        int e = hot[i];
        double p = EP_MIN(synth_hot_cap, synth_hot_common_mult[i] * q);
        bias[e] = thr - upper_quantile(p);
        // Hot for everyone: no domain makes it colder or hotter.
        for (int d = 0; d < D; d++)
            bias[(size_t)(1 + d) * E + e] = 0.0;
    }
    for (int i = 0; i < SYNTH_N_HOT_DOMAIN; i++)
        for (int d = 0; d < D; d++) {
            int e = hot[SYNTH_N_HOT_COMMON + i * D + d];
            double p = EP_MIN(synth_hot_cap, synth_hot_domain_mult[i] * q);
            // Its share comes from its domain alone; other domains use it
            // less than a typical expert (real math experts: 27 % of GSM8K
            // tokens, 3 % of MMLU, 0.3 % of ARC).
            for (int d2 = 0; d2 < D; d2++)
                bias[(size_t)(1 + d2) * E + e] =
                    d2 == d ? thr - upper_quantile(p) : -synth_sigma_domain;
            bias[e] = 0.0;
        }
}

// model.layers.L.mlp.gate.weight [E, H]: see the file comment.
static void synth_gate(const ep_model_cfg *cfg, ep_rng *r, int E, int H, float *dst)
{
    const int D = EP_SYNTH_N_DOMAINS;
    synth_basis tmp = {0};
    const synth_basis *B = basis_get(cfg->seed, H, &tmp);
    double *bias = ep_xmalloc((size_t)(1 + D) * E * sizeof(double));
    gate_biases(cfg, r, E, bias);

    double *bq = ep_xmalloc((size_t)E * (B->n_q > 0 ? B->n_q : 1) * sizeof(double));
    // Each expert's preference direction has norm sqrt(m): b.eta ~ N(0, 1)
    // for every expert, so popularity comes from the biases alone.
    for (int e = 0; e < E; e++) {
        double *b = bq + (size_t)e * B->n_q, n2 = 0;
        for (int j = 0; j < B->n_q; j++) {
            b[j] = ep_rng_normal(r);
            n2 += b[j] * b[j];
        }
        double s = n2 > 0 ? sqrt(B->n_q / n2) : 0.0;
        for (int j = 0; j < B->n_q; j++)
            b[j] *= s;
    }
    // Isotropic noise first (in dst), then the structured part on top.
    fill_normal(r, dst, (size_t)E * H, synth_logit_noise / sqrt((double)H), 0.0);

    double gamma = synth_kappa / sqrt((double)H);
    double *row = ep_xmalloc((size_t)H * sizeof(double));
    for (int e = 0; e < E; e++) {
        for (int h = 0; h < H; h++)
            row[h] = 0.0;
        for (int i = 0; i < B->n_dirs; i++) {
            double c;
            if (i == 0)
                c = bias[e];
            else if (i <= D)
                c = bias[(size_t)i * E + e];
            else
                c = bq[(size_t)e * B->n_q + (i - 1 - D)];
            const double *d = B->dir + (size_t)i * H;
            for (int h = 0; h < H; h++)
                row[h] += c * d[h];
        }
        float *w = dst + (size_t)e * H;
        for (int h = 0; h < H; h++)
            w[h] += (float)(gamma * row[h]);
    }
    free(row);
    free(bq);
    free(bias);
    free(tmp.dir);
}

void ep_synth_tensor(const ep_model_cfg *cfg, const char *name, int ndim, const int64_t *shape,
                     float *dst)
{
    EP_ASSERT(ndim >= 1);
    size_t n = (size_t)shape_numel(ndim, shape);
    ep_rng r;
    ep_rng_seed(&r, ep_hash64(name, strlen(name), cfg->seed));

    if (ndim == 2 && ends_with(name, ".mlp.gate.weight") && shape[0] > 0 && shape[1] > 0) {
        synth_gate(cfg, &r, (int)shape[0], (int)shape[1], dst);
    } else if (ndim == 1 && strstr(name, "norm")) {
        // RMSNorm weights sit near 1, as trained ones do.
        fill_normal(&r, dst, n, 0.02, 1.0);
    } else if (ndim == 2 && ends_with(name, "embed_tokens.weight")) {
        // Rows are token vectors: RMS 1, the scale of the residual stream.
        fill_normal(&r, dst, n, 1.0, 0.0);
    } else if (ndim >= 2) {
        // Linear [out, in]: 1/sqrt(in) keeps outputs O(1) for O(1) inputs.
        double in = (double)shape[ndim - 1];
        fill_normal(&r, dst, n, 1.0 / sqrt(in > 0 ? in : 1.0), 0.0);
    } else {
        fill_normal(&r, dst, n, 0.02, 0.0); // biases and other vectors
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = ep_bf16_round(dst[i]);
}

// ---- hidden states --------------------------------------------------------

void ep_synth_hidden(const ep_model_cfg *cfg, uint64_t seed, int layer, int domain, int64_t token,
                     float *x)
{
    EP_ASSERT(domain >= 0 && domain < EP_SYNTH_N_DOMAINS);
    const int H = cfg->hidden;
    if (H <= 0) return;
    synth_basis tmp = {0};
    const synth_basis *B = basis_get(cfg->seed, H, &tmp);

    // Token part (shared by all layers) and (token, layer) part of the draw.
    uint64_t key[4] = {seed, (uint64_t)domain, (uint64_t)token, 0};
    ep_rng rt, rl;
    ep_rng_seed(&rt, hash_u64s(key, 3, cfg->seed));
    key[3] = (uint64_t)(int64_t)layer;
    ep_rng_seed(&rl, hash_u64s(key, 4, cfg->seed ^ 0x5851f42d4c957f2dull));

    const bool cs = cfg->synth_conc_set;
    double median = cs ? cfg->synth_conc_median : EP_SYNTH_CONC_MEDIAN;
    double sig_t = cs ? cfg->synth_conc_sigma_token : EP_SYNTH_CONC_SIGMA_TOKEN;
    double sig_l = cs ? cfg->synth_conc_sigma_layer : EP_SYNTH_CONC_SIGMA_LAYER;
    double logG = log(median) + sig_t * ep_rng_normal(&rt) + sig_l * ep_rng_normal(&rl);
    double f = 3.0 * exp(2.0 * logG) / (synth_kappa * synth_kappa);
    if (f > synth_f_max) f = synth_f_max;

    // y = (u + v_domain + eta) / sqrt(3), eta a unit vector in span q.
    double c_eta[SYNTH_Q_DIMS];
    double eta2 = 0;
    for (int j = 0; j < B->n_q; j++) {
        c_eta[j] = ep_rng_normal(&rl);
        eta2 += c_eta[j] * c_eta[j];
    }
    double eta_n = eta2 > 0 ? 1.0 / sqrt(eta2) : 0.0;
    int n_parts = 1 + (B->n_dirs > 1 + domain ? 1 : 0) + (B->n_q > 0 ? 1 : 0);
    double cy = sqrt(f / n_parts) * sqrt((double)H);

    // z: Gaussian, projected off the basis, unit norm; built in x itself
    // (no scratch: callers generate token after token), sums in double.
    // As the basis is orthonormal, one pass gives every projection and
    // |z_perp|^2 = |z|^2 - sum dot^2, and one more pass writes the result.
    double zz = 0;
    for (int h = 0; h < H; h += 2) {
        double u1 = 1.0 - ep_rng_uniform(&rl), u2 = ep_rng_uniform(&rl);
        double rad = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
        x[h] = (float)(rad * cos(th));
        zz += (double)x[h] * x[h];
        if (h + 1 < H) {
            x[h + 1] = (float)(rad * sin(th));
            zz += (double)x[h + 1] * x[h + 1];
        }
    }
    double coef[5 + SYNTH_Q_DIMS];
    EP_ASSERT(B->n_dirs <= (int)EP_ARRAY_LEN(coef));
    for (int i = 0; i < B->n_dirs; i++) {
        const double *d = B->dir + (size_t)i * H;
        double dot = 0;
        for (int h = 0; h < H; h++)
            dot += x[h] * d[h];
        coef[i] = dot;
        zz -= dot * dot;
    }
    double cz = zz > 1e-12 ? sqrt((1.0 - f) * H / zz) : 0.0;
    for (int i = 0; i < B->n_dirs; i++) {
        double c = 0.0;
        if (i == 0 || i == 1 + domain)
            c = cy;
        else if (i > EP_SYNTH_N_DOMAINS)
            c = cy * c_eta[i - 1 - EP_SYNTH_N_DOMAINS] * eta_n;
        coef[i] = c - cz * coef[i];
    }
    for (int h = 0; h < H; h++)
        x[h] = (float)(x[h] * cz);
    for (int i = 0; i < B->n_dirs; i++) {
        const double *d = B->dir + (size_t)i * H;
        for (int h = 0; h < H; h++)
            x[h] = (float)(x[h] + coef[i] * d[h]);
    }
    free(tmp.dir);
}
