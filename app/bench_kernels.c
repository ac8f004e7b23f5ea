// `epserve bench kernels`: the grouped SwiGLU of routed experts (gate|up,
// SiLU*mul, down, weighting) on real model shapes at decode and prefill step
// sizes, against limits measured in the same run: OpenBLAS dense sgemm on
// the same per-expert shapes, the DRAM triad and read-only bandwidth, and the
// BF16 GEMM peak of the experts' kernel (app/bench_limits.h). One rank, no MPI
// traffic; routing is synthetic (Zipf-hot experts), not the model's router.
#include "app/bench_limits.h"
#include "app/commands.h"
#include "experts/experts.h"
#include "experts/kernels.h"

#include <cblas.h>
#undef I // <complex.h>, pulled in by cblas.h, defines it
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BK_MAX_LIST    16
#define BK_MAX_REPEATS 100

// What runs the grouped SwiGLU: fp32 weights with the kernels (the default:
// the outer-product path for experts of >= --nn-min-rows rows in a pass, the
// dot-product kernels below), fp32 with the dot-product kernels only (the
// path before the outer-product one), fp32 with OpenBLAS for experts of >= 16
// rows in a pass and the kernels below, BF16 weights with the kernels.
typedef enum { BK_F32, BK_BF16 } bk_variant;
static const char *const bk_variant_name[] = {"f32", "bf16"};

typedef struct {
    const char *models[BK_MAX_LIST];
    int n_models;
    int tokens[BK_MAX_LIST];
    int n_tokens;
    int variants[BK_MAX_LIST]; // bk_variant
    int n_variants;
    int repeats, warmup, threads;
    int peak_size; // square BF16 GEMM of the peak; 0: not measured
    double zipf;
    uint64_t seed;
    const char *json_path;
    bool no_dense;
} bk_args;

// One step's routing: T tokens, k distinct experts each.
typedef struct {
    int T, n_pairs;
    int *pair_off;      // [T + 1]
    int *pair_expert;   // [T * k]
    float *pair_weight; // [T * k]
    int *m_of;          // [E] pairs per expert
    int active, max_m;  // experts with m > 0; the largest m
} bk_step;

typedef struct {
    double ms, gflops, gbs;
    int pairs, active, max_m;
} bk_result;

// ---- arguments -------------------------------------------------------------

static int split_list(char *s, const char **out, int max)
{
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < max; tok = strtok(NULL, ","))
        out[n++] = tok;
    return n;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: epserve bench kernels [--models M1,M2] [--tokens 1,8,32,...]\n"
               "                             [--variants f32,bf16]\n"
               "                             [--repeats N] [--warmup N] [--threads N] [--zipf S]\n"
               "                             [--seed N] [--no-dense] [--peak-size N]\n"
               "                             [--json FILE]\n"
               "  models: presets or YAML files (default qwen3-30b-a3b,deepseek-v2-lite); one MoE\n"
               "  layer of routed experts is held, all experts resident in DRAM; every variant's\n"
               "  copy is held at once and the variants take turns within each repeat\n"
               "  tokens: tokens per step (default 1,8,32,128,512,2048), top-k routing with\n"
               "  expert popularity ~ 1/rank^S (--zipf, default 0.8) over a shuffled order\n"
               "  variants: f32 (fp32 weights in column panels; the default), bf16 (BF16\n"
               "  weights)\n"
               "  threads: kernel threads and OpenBLAS threads (default EP_NUM_THREADS,\n"
               "  OPENBLAS_NUM_THREADS or all CPUs)\n"
               "  peak-size: N x N x N BF16 GEMM through ep_kern_bf16_nt on the pool, best of\n"
               "  5, GFLOP/s = 2 N^3 / time (default 2048; 0 skips it); JSON frac_bf16_peak = "
               "GFLOP/s / it\n");
}

static int parse_args(int argc, char **argv, bk_args *a)
{
    static const struct option opts[] = {{"models", required_argument, 0, 'm'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"variants", required_argument, 0, 'd'},
                                         {"repeats", required_argument, 0, 'r'},
                                         {"warmup", required_argument, 0, 'w'},
                                         {"threads", required_argument, 0, 'p'},
                                         {"zipf", required_argument, 0, 'z'},
                                         {"seed", required_argument, 0, 's'},
                                         {"no-dense", no_argument, 0, 'D'},
                                         {"json", required_argument, 0, 'j'},
                                         {"peak-size", required_argument, 0, 'P'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    static char models_buf[1024], tokens_buf[256], variants_buf[256];
    snprintf(models_buf, sizeof models_buf, "qwen3-30b-a3b,deepseek-v2-lite");
    snprintf(tokens_buf, sizeof tokens_buf, "1,8,32,128,512,2048");
    snprintf(variants_buf, sizeof variants_buf, "f32,bf16");
    *a = (bk_args){.repeats = 5, .warmup = 1, .zipf = 0.8, .seed = 1, .peak_size = 2048};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:d:r:w:p:z:s:Dj:P:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            snprintf(models_buf, sizeof models_buf, "%s", optarg);
            break;
        case 't':
            snprintf(tokens_buf, sizeof tokens_buf, "%s", optarg);
            break;
        case 'd':
            snprintf(variants_buf, sizeof variants_buf, "%s", optarg);
            break;
        case 'r':
            a->repeats = atoi(optarg);
            break;
        case 'w':
            a->warmup = atoi(optarg);
            break;
        case 'p':
            a->threads = atoi(optarg);
            break;
        case 'z':
            a->zipf = atof(optarg);
            break;
        case 's':
            a->seed = strtoull(optarg, NULL, 10);
            break;
        case 'D':
            a->no_dense = true;
            break;
        case 'P':
            a->peak_size = atoi(optarg);
            break;
        case 'j':
            a->json_path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "epserve bench kernels: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    a->n_models = split_list(models_buf, a->models, BK_MAX_LIST);
    const char *items[BK_MAX_LIST];
    a->n_tokens = split_list(tokens_buf, items, BK_MAX_LIST);
    for (int i = 0; i < a->n_tokens; i++) {
        a->tokens[i] = atoi(items[i]);
        if (a->tokens[i] < 1) {
            fprintf(stderr, "epserve bench kernels: --tokens: expected integers >= 1, found '%s'\n",
                    items[i]);
            return 2;
        }
    }
    a->n_variants = split_list(variants_buf, items, BK_MAX_LIST);
    for (int i = 0; i < a->n_variants; i++) {
        a->variants[i] = -1;
        for (int v = 0; v < (int)EP_ARRAY_LEN(bk_variant_name); v++)
            if (!strcmp(items[i], bk_variant_name[v])) a->variants[i] = v;
        if (a->variants[i] < 0) {
            fprintf(stderr, "epserve bench kernels: --variants: expected f32 or bf16, found '%s'\n",
                    items[i]);
            return 2;
        }
    }
    if (a->n_models < 1 || a->n_tokens < 1 || a->n_variants < 1 || a->repeats < 1 ||
        a->repeats >= BK_MAX_REPEATS || a->warmup < 0 || a->threads < 0 || a->zipf < 0 ||
        a->peak_size < 0) {
        fprintf(stderr, "epserve bench kernels: expected non-empty lists, 1 <= --repeats < 100, "
                        "--warmup >= 0, --threads >= 0, --zipf >= 0, --peak-size >= 0\n");
        return 2;
    }
    return -1; // go on
}

// ---- statistics, routing ---------------------------------------------------

// Expert popularity: p_e ~ 1 / (1 + rank(e))^zipf, ranks a seeded shuffle, so
// the hot experts are scattered over the ids as in trained models.
static void make_popularity(int E, double zipf, ep_rng *rng, double *p)
{
    int *perm = ep_xmalloc((size_t)E * sizeof(int));
    for (int e = 0; e < E; e++)
        perm[e] = e;
    for (int e = E - 1; e > 0; e--) {
        int j = (int)(ep_rng_next(rng) % (uint64_t)(e + 1));
        int t = perm[e];
        perm[e] = perm[j];
        perm[j] = t;
    }
    for (int r = 0; r < E; r++)
        p[perm[r]] = 1.0 / pow(1.0 + r, zipf);
    free(perm);
}

// k distinct experts per token drawn by popularity (without replacement),
// combine weights positive and summing to 1 as after top-k renormalisation.
static void make_step(int T, int E, int k, const double *pop, ep_rng *rng, bk_step *s)
{
    s->T = T;
    s->n_pairs = T * k;
    s->pair_off = ep_xmalloc((size_t)(T + 1) * sizeof(int));
    s->pair_expert = ep_xmalloc((size_t)T * k * sizeof(int));
    s->pair_weight = ep_xmalloc((size_t)T * k * sizeof(float));
    s->m_of = ep_xcalloc((size_t)E, sizeof(int));
    double *w = ep_xmalloc((size_t)E * sizeof(double));
    for (int t = 0; t < T; t++) {
        s->pair_off[t] = t * k;
        memcpy(w, pop, (size_t)E * sizeof(double));
        double total = 0, wsum = 0;
        for (int e = 0; e < E; e++)
            total += w[e];
        for (int j = 0; j < k; j++) {
            double u = ep_rng_uniform(rng) * total, acc = 0;
            int pick = E - 1;
            for (int e = 0; e < E; e++) {
                acc += w[e];
                if (w[e] > 0 && u < acc) {
                    pick = e;
                    break;
                }
            }
            while (w[pick] == 0) // rounding at the top end: the last expert still free
                pick--;
            total -= w[pick];
            w[pick] = 0;
            s->pair_expert[t * k + j] = pick;
            s->pair_weight[t * k + j] = (float)(0.1 + ep_rng_uniform(rng));
            wsum += s->pair_weight[t * k + j];
            s->m_of[pick]++;
        }
        for (int j = 0; j < k; j++)
            s->pair_weight[t * k + j] = (float)(s->pair_weight[t * k + j] / wsum);
    }
    s->pair_off[T] = T * k;
    s->active = s->max_m = 0;
    for (int e = 0; e < E; e++) {
        if (s->m_of[e]) s->active++;
        s->max_m = EP_MAX(s->max_m, s->m_of[e]);
    }
    free(w);
}

static void free_step(bk_step *s)
{
    free(s->pair_off);
    free(s->pair_expert);
    free(s->pair_weight);
    free(s->m_of);
}

// ---- the dense twin ----------------------------------------------------------

// OpenBLAS sgemm on each active expert's shapes (m_e x 2I x H, then m_e x H x
// I), contiguous inputs, its own threads: what the grouped SwiGLU would take
// if grouping, gathering, SiLU and weighting were free.
typedef struct {
    int E, H, I;
    float *w;   // [E, 3 * I * H]: gate|up [2I, H] then down [H, I] per expert
    float *x;   // [max_m, H]
    float *gu;  // [max_m, 2I]
    float *out; // [max_m, H]
    int cap_m;
} bk_dense;

static void dense_init(bk_dense *d, int E, int H, int I, ep_rng *rng)
{
    *d = (bk_dense){.E = E, .H = H, .I = I};
    const size_t n = (size_t)E * 3 * I * H;
    d->w = ep_xmalloc(n * sizeof(float));
    uint64_t s = ep_rng_next(rng) | 1;
    for (size_t i = 0; i < n; i++) { // xorshift: 600M values must not take minutes
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        d->w[i] = (float)((int64_t)(s >> 40) - (1 << 23)) * (1.0f / (1 << 28));
    }
}

static double dense_step_us(bk_dense *d, const bk_step *s)
{
    if (s->max_m > d->cap_m) {
        free(d->x);
        free(d->gu);
        free(d->out);
        d->cap_m = s->max_m;
        d->x = ep_xcalloc((size_t)d->cap_m * d->H, sizeof(float));
        d->gu = ep_xcalloc((size_t)d->cap_m * 2 * d->I, sizeof(float));
        d->out = ep_xcalloc((size_t)d->cap_m * d->H, sizeof(float));
    }
    const int H = d->H, I = d->I;
    double t0 = ep_now_us();
    for (int e = 0; e < d->E; e++) {
        const int m = s->m_of[e];
        if (!m) continue;
        const float *w = d->w + (size_t)e * 3 * I * H;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, 2 * I, H, 1.0f, d->x, H, w, H, 0.0f,
                    d->gu, 2 * I);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, H, I, 1.0f, d->gu, 2 * I,
                    w + (size_t)2 * I * H, I, 0.0f, d->out, H);
    }
    return ep_now_us() - t0;
}

// OpenBLAS's pthreads workers spin for about 2^28 cycles (~0.1 s here) after
// each call before they sleep, and a spinning worker takes a core (on a
// 2-core machine, about half of one) from whatever the bench times next. So
// after each OpenBLAS phase the bench waits them out, untimed.
static void blas_quiesce(void)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 150 * 1000 * 1000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void dense_free(bk_dense *d)
{
    free(d->w);
    free(d->x);
    free(d->gu);
    free(d->out);
}

// ---- the grouped SwiGLU ----------------------------------------------------

static double flops_of(const ep_model_cfg *cfg, int pairs)
{
    return 6.0 * cfg->hidden * cfg->moe_inter * pairs; // 2*m*k*n over gate, up and down
}

static double active_bytes(const ep_model_cfg *cfg, const bk_step *s, size_t elem)
{
    return (double)s->active * 3 * cfg->hidden * cfg->moe_inter * elem;
}

static ep_status load_experts(const ep_model_cfg *cfg, bk_variant v, ep_experts **out)
{
    ep_weights *w = NULL;
    ep_status st = ep_weights_open(cfg, &w);
    if (!st) {
        ep_experts_opts o = {.weight_dtype = v == BK_BF16 ? EP_DTYPE_BF16 : EP_DTYPE_F32};
        st = ep_experts_load_ex(cfg, w, NULL, -1, &o, out);
    }
    ep_weights_free(w);
    return st;
}

static void print_header(const bk_args *a, double triad, double readbw, double peak)
{
    printf("# epserve bench kernels: grouped SwiGLU of routed experts, one MoE layer, 1 rank\n");
    printf("# threads: %d (kernels), OpenBLAS %d; kernels ISA: %s; zipf %.2f; median of %d "
           "(+%d warm-up), a new routing each step\n",
           ep_par_threads(), openblas_get_num_threads(), ep_kern_isa_name(ep_kern_isa_get()),
           a->zipf, a->repeats, a->warmup);
    printf("# triad %.1f GB/s, read-only %.1f GB/s (same run); GFLOP/s counts 2*m*k*n per pair;"
           " GB/s = weights of active experts / time;\n# xf32 = tokens/s / f32's on the same"
           " steps, the variants taking turns within each repeat;\n# xdense = GFLOP/s / OpenBLAS"
           " dense on the same per-expert shapes; triad measured beside each row, xtriad = GB/s"
           " / triad\n",
           triad, readbw);
    if (peak > 0)
        printf("# BF16 GEMM peak %.1f GFLOP/s (%d^3 through ep_kern_bf16_nt on the pool, best of 5,"
               " same run); JSON frac_bf16_peak = GFLOP/s / peak\n",
               peak, a->peak_size);
    printf("#\n");
    printf("# %-17s %7s %6s %6s %4s %5s %9s %9s %8s %5s %9s %7s %6s %7s %6s %6s\n", "model", "var",
           "tokens", "pairs", "act", "max_m", "time", "GFLOP/s", "GB/s", "xf32", "dense", "xdense",
           "triad", "xtriad", "read", "xread");
    printf("# %-17s %7s %6s %6s %4s %5s %9s %9s %8s %5s %9s %7s %6s %7s %6s %6s\n", "", "", "", "",
           "", "", "(ms)", "", "", "", "(GFLOP/s)", "", "(GB/s)", "", "(GB/s)", "");
    fflush(stdout);
}

int ep_cmd_bench_kernels(int argc, char **argv)
{
    bk_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    if (a.threads > 0) {
        ep_par_set_threads(a.threads);
        openblas_set_num_threads(a.threads);
    }
    ep_bench_bw *bw = ep_bench_bw_init(true);
    double triad = 0, readbw = 0;
    {
        double tv[BK_MAX_REPEATS], rv[BK_MAX_REPEATS];
        for (int r = 0; r <= a.repeats; r++) // r = 0 warms up (page faults, threads)
            ep_bench_bw_once(bw, &tv[r], &rv[r]);
        triad = ep_bench_median(tv + 1, a.repeats);
        readbw = ep_bench_median(rv + 1, a.repeats);
    }
    const double peak = a.peak_size ? ep_bench_bf16_gemm_gflops(a.peak_size, 5) : 0;
    print_header(&a, triad, readbw, peak);

    json_t *jrows = json_array();
    const int n_steps = a.warmup + a.repeats;
    for (int mi = 0; mi < a.n_models && rc < 0; mi++) {
        ep_model_cfg cfg;
        if (ep_model_cfg_load(a.models[mi], &cfg)) {
            fprintf(stderr, "epserve bench kernels: %s\n", ep_last_error());
            rc = 1;
            break;
        }
        // One MoE layer of routed experts from the synthetic generator.
        cfg.n_layers = 1;
        cfg.first_k_dense = 0;
        cfg.n_shared = 0;
        cfg.checkpoint[0] = '\0';
        const int E = cfg.n_experts, H = cfg.hidden, k = cfg.k_base;

        ep_rng rng;
        ep_rng_seed(&rng, a.seed);
        double *pop = ep_xmalloc((size_t)E * sizeof(double));
        make_popularity(E, a.zipf, &rng, pop);
        bk_step *steps = ep_xcalloc((size_t)a.n_tokens * n_steps, sizeof *steps);
        int max_T = 0;
        for (int ti = 0; ti < a.n_tokens; ti++) {
            max_T = EP_MAX(max_T, a.tokens[ti]);
            for (int r = 0; r < n_steps; r++)
                make_step(a.tokens[ti], E, k, pop, &rng, &steps[ti * n_steps + r]);
        }
        float *x = ep_xmalloc((size_t)max_T * H * sizeof(float));
        float *y = ep_xmalloc((size_t)max_T * H * sizeof(float));
        for (size_t i = 0; i < (size_t)max_T * H; i++)
            x[i] = (float)ep_rng_normal(&rng);

        // All variants of a model are held at once and take turns within each
        // repeat (the same routing, the order rotated), so the xf32 ratios
        // compare steps taken at the same moment of a shared machine, not
        // minutes apart. The dense pool stays allocated beside them: each
        // repeat of a row runs its dense twin and a bandwidth pass too.
        double *us = ep_xmalloc((size_t)a.n_variants * n_steps * sizeof(double));
        double *dus = ep_xmalloc((size_t)n_steps * sizeof(double));
        ep_experts *ex[BK_MAX_LIST] = {0};
        int f32_di = -1; // which variant the xf32 column divides by
        for (int di = 0; di < a.n_variants && rc < 0; di++) {
            const bk_variant var = (bk_variant)a.variants[di];
            if (var == BK_F32 && f32_di < 0) f32_di = di;
            if (load_experts(&cfg, var, &ex[di])) {
                fprintf(stderr, "epserve bench kernels: %s: %s\n", cfg.name, ep_last_error());
                rc = 1;
            }
        }
        bk_dense d = {0};
        if (!a.no_dense && rc < 0) dense_init(&d, E, H, cfg.moe_inter, &rng);
        for (int ti = 0; ti < a.n_tokens && rc < 0; ti++) {
            double pairs = 0, act = 0, maxm = 0, bytes1 = 0; // bytes1: one byte per weight
            double tv[BK_MAX_REPEATS], rv[BK_MAX_REPEATS];
            for (int r = 0; r < n_steps && rc < 0; r++) {
                const bk_step *s = &steps[ti * n_steps + r];
                if (r >= a.warmup) ep_bench_bw_once(bw, &tv[r - a.warmup], &rv[r - a.warmup]);
                dus[r] = 0;
                if (!a.no_dense) {
                    dus[r] = dense_step_us(&d, s);
                    blas_quiesce();
                }
                for (int vi = 0; vi < a.n_variants; vi++) {
                    const int di = (vi + r) % a.n_variants;
                    double t0 = ep_now_us();
                    if (ep_experts_forward(ex[di], 0, s->T, s->pair_off, s->pair_expert,
                                           s->pair_weight, x, y)) {
                        fprintf(stderr, "epserve bench kernels: %s\n", ep_last_error());
                        rc = 1;
                        break;
                    }
                    us[di * n_steps + r] = ep_now_us() - t0;
                }
                if (r >= a.warmup) {
                    pairs += s->n_pairs;
                    act += s->active;
                    maxm = EP_MAX(maxm, s->max_m);
                    bytes1 += active_bytes(&cfg, s, 1);
                }
            }
            if (rc >= 0) break;
            const double n = a.repeats;
            const double row_triad = ep_bench_median(tv, a.repeats),
                         row_read = ep_bench_median(rv, a.repeats);
            const double dg = a.no_dense ? 0
                                         : flops_of(&cfg, 1) * (pairs / n) /
                                               (ep_bench_median(dus + a.warmup, a.repeats) * 1e3);
            double med[BK_MAX_LIST];
            for (int di = 0; di < a.n_variants; di++)
                med[di] = ep_bench_median(us + di * n_steps + a.warmup, a.repeats);
            for (int di = 0; di < a.n_variants; di++) {
                const bk_variant var = (bk_variant)a.variants[di];
                const double elem = var == BK_BF16 ? 2 : 4;
                bk_result res = {.ms = med[di] / 1e3,
                                 .gflops = flops_of(&cfg, 1) * (pairs / n) / (med[di] * 1e3),
                                 .gbs = elem * bytes1 / n / (med[di] * 1e3),
                                 .pairs = (int)lround(pairs / n),
                                 .active = (int)lround(act / n),
                                 .max_m = (int)maxm};
                const double xf32 = f32_di >= 0 ? med[f32_di] / med[di] : 0;
                printf("  %-17s %7s %6d %6d %4d %5d %9.3f %9.1f %8.1f %5.2f %9.1f %7.2f %6.1f "
                       "%7.2f %6.1f %6.2f\n",
                       cfg.name, bk_variant_name[var], a.tokens[ti], res.pairs, res.active,
                       res.max_m, res.ms, res.gflops, res.gbs, xf32, dg,
                       dg > 0 ? res.gflops / dg : 0, row_triad, res.gbs / row_triad, row_read,
                       res.gbs / row_read);
                fflush(stdout);
                json_t *o = json_object();
                json_object_set_new(o, "model", json_string(cfg.name));
                json_object_set_new(o, "variant", json_string(bk_variant_name[var]));
                json_object_set_new(o, "tokens", json_integer(a.tokens[ti]));
                json_object_set_new(o, "pairs", json_integer(res.pairs));
                json_object_set_new(o, "active_experts", json_integer(res.active));
                json_object_set_new(o, "max_tokens_per_expert", json_integer(res.max_m));
                json_object_set_new(o, "time_ms", json_real(res.ms));
                json_object_set_new(o, "gflops", json_real(res.gflops));
                json_object_set_new(o, "weight_gbs", json_real(res.gbs));
                json_object_set_new(o, "tokens_per_s", json_real(a.tokens[ti] / (res.ms / 1e3)));
                json_object_set_new(o, "x_f32", json_real(xf32));
                json_object_set_new(o, "dense_gflops", json_real(dg));
                json_object_set_new(o, "frac_dense", json_real(dg > 0 ? res.gflops / dg : 0));
                json_object_set_new(o, "triad_gbs", json_real(row_triad));
                json_object_set_new(o, "read_gbs", json_real(row_read));
                json_object_set_new(o, "frac_triad", json_real(res.gbs / row_triad));
                json_object_set_new(o, "frac_read", json_real(res.gbs / row_read));
                json_object_set_new(o, "frac_bf16_peak",
                                    json_real(peak > 0 ? res.gflops / peak : 0));
                json_array_append_new(jrows, o);
            }
        }
        for (int di = 0; di < a.n_variants; di++)
            ep_experts_free(ex[di]);
        for (int i = 0; i < a.n_tokens * n_steps; i++)
            free_step(&steps[i]);
        free(steps);
        free(pop);
        free(x);
        free(y);
        free(us);
        free(dus);
        if (!a.no_dense) dense_free(&d);
    }
    ep_bench_bw_free(bw);
    if (rc < 0 && a.json_path) {
        json_t *root = json_object();
        json_object_set_new(root, "bench", json_string("kernels"));
        json_object_set_new(root, "threads", json_integer(ep_par_threads()));
        json_object_set_new(root, "isa", json_string(ep_kern_isa_name(ep_kern_isa_get())));
        json_object_set_new(root, "triad_gbs", json_real(triad));
        json_object_set_new(root, "read_gbs", json_real(readbw));
        json_object_set_new(root, "bf16_gemm_peak_gflops", json_real(peak));
        json_object_set_new(root, "bf16_gemm_peak_size", json_integer(a.peak_size));
        json_object_set_new(root, "rows", jrows);
        jrows = NULL;
        if (json_dump_file(root, a.json_path, JSON_INDENT(2))) {
            fprintf(stderr, "epserve bench kernels: --json %s: cannot write the file\n",
                    a.json_path);
            rc = 1;
        }
        json_decref(root);
    }
    json_decref(jrows);
    return rc < 0 ? 0 : rc;
}
