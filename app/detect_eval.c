// `epserve detect-eval`: measures the automatic Pick domain's classifier
// (router/detect.h) where the true domain is known, and prints confusion
// tables. Two sources (docs/routing.md §4a):
//  * --synthetic MODEL: the synthetic model's domains. Profiles come from
//    the model's own top-k_base over ep_synth_hidden inputs of each domain
//    (stream 1, every MoE layer); requests are fresh tokens of a known
//    domain (stream 2), routed the same way.
//  * --qwen3 DIR: the real Qwen3-30B-A3B per-task activation frequencies
//    (../shared/data/routing/qwen3-30b-a3b). Profiles from one language's
//    rows, requests sampled from the other's (--test-lang): each token's
//    top-8 at each layer is drawn by systematic sampling in a random expert
//    order, so its inclusion probabilities are exactly the file's. Tokens and
//    layers are drawn independently (the files hold averages only).
// Loads no weights beyond the synthetic gates; no MPI.
#include "app/args.h"
#include "app/commands.h"
#include "common/model_cfg.h"
#include "common/weights.h"
#include "router/detect.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: epserve detect-eval (--synthetic MODEL | --qwen3 DIR) [options]\n"
            "  --synthetic MODEL    synthetic model preset (domains general, math, code, chat)\n"
            "  --qwen3 DIR          qwen3-30b-a3b/ of ../shared/data/routing (tasks arc, copa,\n"
            "                       gsm, mmlu, nli, ted)\n"
            "  --profile-lang L     qwen3: rows the profiles come from (English | Hebrew,\n"
            "                       default English)\n"
            "  --test-lang L        qwen3: rows the requests are sampled from (default Hebrew)\n"
            "  --profile-tasks LIST qwen3: tasks that get a profile (default all); requests of\n"
            "                       the others are right when no domain is chosen\n"
            "  --calib-tokens N     synthetic: tokens per domain for the profiles (default 512)\n"
            "  --requests N         requests per domain (default 200)\n"
            "  --tokens LIST        prompt lengths, comma-separated (default 4,16,64)\n"
            "  --method M           cosine | centered | loglik | mixture: the method of the\n"
            "                       confusion tables (default: the serving one); the\n"
            "                       summary has all four\n"
            "  --min-margin X       confidence margin of --method (default: the serving one)\n"
            "  --max-gap X          loglik: none when the best domain scores more than X nats\n"
            "                       per pair below its own tokens' mean (default: serving's, off)\n"
            "  --signal W           share of a request's tokens drawn from its own domain, the\n"
            "                       rest from any domain alike, per token (default 1)\n"
            "  --seed S             request stream (default 2)\n");
}

// ---- the two sources ---------------------------------------------------------

typedef struct {
    const ep_model_cfg *m;
    int n_domains;
    char names[8][64];
    // synthetic
    float **gate;  // [n_layers] [E * H] or NULL for dense layers
    float *x, *lg; // [H], [E]
    int *idx;      // [E]
    // qwen3
    float *test_freq; // [n_domains * L * E] rows the requests are sampled from
} eval_src;

// The model's own top-k_base of one synthetic token at layer l: hist += 1.
static void synth_route(eval_src *s, int l, uint64_t seed, int d, int64_t tok, float *hist)
{
    const ep_model_cfg *m = s->m;
    const int E = m->n_experts, H = m->hidden;
    ep_synth_hidden(m, seed, l, d, tok, s->x);
    ep_router_gate_logits(s->x, 1, H, s->gate[l], E, s->lg);
    ep_router_softmax(s->lg, E);
    uint8_t allowed[1024];
    const uint8_t *al = NULL;
    if (m->topk_method == EP_TOPK_GROUP_LIMITED) {
        ep_router_group_mask(s->lg, E, m->n_group, m->topk_group, allowed);
        al = allowed;
    }
    int n = ep_router_topk(s->lg, E, m->k_base, al, s->idx);
    for (int j = 0; j < n; j++)
        hist[(size_t)l * E + s->idx[j]] += 1.0f;
}

// Madow's systematic sampling: k distinct experts, expert e with
// probability f[e] (f sums to k, each <= 1), in a random order.
static void sample_topk(ep_rng *rng, const float *f, int E, int k, int *perm, float *hist_l)
{
    for (int i = 0; i < E; i++)
        perm[i] = i;
    for (int i = E - 1; i > 0; i--) {
        int j = (int)(ep_rng_uniform(rng) * (i + 1));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    double u = ep_rng_uniform(rng), c = 0.0;
    int next = 0;
    for (int i = 0; i < E && next < k; i++) {
        c += f[perm[i]];
        while (next < k && c > u + next) {
            hist_l[perm[i]] += 1.0f;
            next++;
        }
    }
}

// Reads <dir>/<task>_avg_activation.csv rows of language lang into f [L * E],
// each row clamped to [0, 1] and rescaled to sum k.
static ep_status read_qwen3(const char *dir, const char *task, const char *lang,
                            const ep_model_cfg *m, float *f)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s_avg_activation.csv", dir, task);
    FILE *in = fopen(path, "r");
    if (!in) return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    const int L = m->n_layers, E = m->n_experts;
    char *line = NULL;
    size_t cap = 0;
    int rows = 0, lineno = 0;
    ep_status st = EP_OK;
    memset(f, 0, (size_t)L * E * sizeof(float));
    while (getline(&line, &cap, in) != -1 && !st) {
        if (lineno++ == 0) continue; // header
        char *p = line, *end;
        long l = strtol(p, &end, 10);
        if (end == p || *end != ',' || l < 0 || l >= L) {
            st = ep_errorf(EP_ERR_FORMAT, "%s:%d: expected a layer in [0, %d)", path, lineno, L);
            break;
        }
        p = end + 1;
        char *comma = strchr(p, ',');
        if (!comma) {
            st = ep_errorf(EP_ERR_FORMAT, "%s:%d: expected a language column", path, lineno);
            break;
        }
        if ((size_t)(comma - p) != strlen(lang) || strncmp(p, lang, strlen(lang))) continue;
        p = comma + 1;
        double sum = 0.0;
        float *row = f + (size_t)l * E;
        for (int e = 0; e < E; e++) {
            double v = strtod(p, &end);
            if (end == p) {
                st = ep_errorf(EP_ERR_FORMAT, "%s:%d: expected %d expert columns, found %d", path,
                               lineno, E, e);
                break;
            }
            row[e] = (float)fmin(fmax(v, 0.0), 1.0);
            sum += row[e];
            p = *end == ',' ? end + 1 : end;
        }
        for (int e = 0; e < E && sum > 0; e++)
            row[e] = (float)(row[e] * m->k_base / sum);
        rows++;
    }
    free(line);
    fclose(in);
    if (!st && rows != L)
        st = ep_errorf(EP_ERR_FORMAT, "%s: expected %d rows of language '%s', found %d", path, L,
                       lang, rows);
    return st;
}

// ---- the evaluation ----------------------------------------------------------

typedef struct {
    const char *synthetic, *qwen3, *profile_lang, *test_lang, *profile_tasks;
    int calib_tokens, requests;
    int *tokens, n_tokens;
    ep_detect_method method;
    bool margin_set;
    double min_margin, max_gap;
    double signal; // share of a request's tokens from its own domain
    uint64_t seed;
} eval_args;

// The domain token t of request q (domain d) is drawn from: d with
// probability --signal, else any test domain alike (d included), the same
// at every layer. A pure function of (seed, d, q, t).
static int token_domain(const eval_src *s, const eval_args *a, int d, int q, int t)
{
    if (a->signal >= 1.0) return d;
    uint64_t key[4] = {a->seed, (uint64_t)d, (uint64_t)q, (uint64_t)t};
    ep_rng rng;
    ep_rng_seed(&rng, ep_hash64(key, sizeof key, 0x5167));
    if (ep_rng_uniform(&rng) < a->signal) return d;
    return (int)(ep_rng_uniform(&rng) * s->n_domains);
}

// One request's histogram: n tokens of domain d, request q.
static void request_hist(eval_src *s, const eval_args *a, int d, int q, int n, float *hist,
                         int *perm)
{
    const ep_model_cfg *m = s->m;
    const int L = m->n_layers, E = m->n_experts;
    memset(hist, 0, (size_t)L * E * sizeof(float));
    if (s->gate) {
        for (int l = 0; l < L; l++)
            if (s->gate[l])
                for (int t = 0; t < n; t++)
                    synth_route(s, l, a->seed, token_domain(s, a, d, q, t), (int64_t)q * 4096 + t,
                                hist);
        return;
    }
    ep_rng rng;
    ep_rng_seed(&rng, a->seed * 1000003u + (uint64_t)d * 7919u + (uint64_t)q * 104729u);
    for (int t = 0; t < n; t++) {
        int src = token_domain(s, a, d, q, t);
        for (int l = 0; l < L; l++)
            sample_topk(&rng, s->test_freq + ((size_t)src * L + l) * E, E, m->k_base, perm,
                        hist + (size_t)l * E);
    }
}

static int run_eval(eval_src *s, const ep_routing_cfg *rc, const eval_args *a)
{
    const ep_model_cfg *m = s->m;
    // Rows: the test domains; columns: the profile's domains, then none. A
    // test domain without a profile (held out) is right when none is chosen.
    const int D = s->n_domains, P = rc->pick.n_domains, L = m->n_layers, E = m->n_experts;
    int truth[8];
    int64_t with_profile = 0;
    for (int d = 0; d < D; d++) {
        truth[d] = ep_routing_cfg_find_domain(rc, s->names[d]);
        with_profile += truth[d] >= 0;
    }
    float *hist = ep_xmalloc((size_t)L * E * sizeof(float));
    int *perm = ep_xmalloc((size_t)E * sizeof(int));
    // conf[method][true][pred + 1] (pred -1 = none) at the confidence rule;
    // argmax[method] correct without it (rows with a profile only).
    int64_t *conf = ep_xmalloc((size_t)EP_DETECT_COUNT * D * (P + 1) * sizeof(int64_t));
    int64_t argmax[EP_DETECT_COUNT];
    ep_detect_opts o[EP_DETECT_COUNT];
    for (int k = 0; k < EP_DETECT_COUNT; k++) {
        ep_detect_opts_default(&o[k]);
        o[k].method = (ep_detect_method)k;
        // The serving margin is in cosine units; loglik and mixture score in
        // nats per pair, where 0.02 is their margin here.
        if (k == EP_DETECT_LOGLIK || k == EP_DETECT_MIXTURE) o[k].min_margin = 0.02;
        if (k == (int)a->method && a->margin_set) o[k].min_margin = a->min_margin;
        if (a->max_gap >= 0) o[k].max_gap = a->max_gap;
    }
    printf("# signal %.2f: a request's tokens come from its own domain with that probability, "
           "else from any alike\n",
           a->signal);
    printf("# loglik gap rule: %s\n", o[EP_DETECT_LOGLIK].max_gap > 0 ? "on" : "off");
    if (o[EP_DETECT_LOGLIK].max_gap > 0)
        printf("#   max_gap %.3f nats per pair\n", o[EP_DETECT_LOGLIK].max_gap);
    printf("# accuracy: argmax right / requests of profiled domains; covered: a domain chosen;\n"
           "# precision: right / chosen; held-out none: requests of unprofiled domains left on\n"
           "# none (both at the margin and the %lld-token minimum)\n",
           (long long)o[0].min_tokens);
    printf("# %-8s %6s %8s %8s %8s %9s %13s\n", "method", "tokens", "margin", "accuracy", "covered",
           "precision", "held-out none");
    for (int ti = 0; ti < a->n_tokens; ti++) {
        int n = a->tokens[ti];
        memset(conf, 0, (size_t)EP_DETECT_COUNT * D * (P + 1) * sizeof(int64_t));
        memset(argmax, 0, sizeof argmax);
        for (int d = 0; d < D; d++)
            for (int q = 0; q < a->requests; q++) {
                request_hist(s, a, d, q, n, hist, perm);
                for (int k = 0; k < EP_DETECT_COUNT; k++) {
                    ep_detect_result r;
                    int got = ep_domain_detect(rc, hist, n, &o[k], &r);
                    conf[((size_t)k * D + d) * (P + 1) + got + 1]++;
                    argmax[k] += truth[d] >= 0 && r.best == truth[d];
                }
            }
        int64_t total = (int64_t)D * a->requests, profiled = with_profile * a->requests;
        for (int k = 0; k < EP_DETECT_COUNT; k++) {
            int64_t chosen = 0, right = 0, held_none = 0;
            for (int d = 0; d < D; d++) {
                const int64_t *row = conf + ((size_t)k * D + d) * (P + 1);
                if (truth[d] < 0) held_none += row[0];
                for (int p = 0; p < P; p++) {
                    chosen += row[p + 1];
                    if (p == truth[d]) right += row[p + 1];
                }
            }
            printf("  %-8s %6d %8.3f %8.3f %8.3f %9.3f", ep_detect_method_name(k), n,
                   o[k].min_margin, profiled ? (double)argmax[k] / profiled : 0.0,
                   (double)chosen / total, chosen ? (double)right / chosen : 0.0);
            if (profiled < total)
                printf(" %13.3f\n", (double)held_none / (total - profiled));
            else
                printf(" %13s\n", "-");
        }
        int k = (int)a->method;
        printf("# confusion, %s, margin %.3f, %d-token prompts, %d requests per row: true \\ "
               "detected\n# %-8s",
               ep_detect_method_name(k), o[k].min_margin, n, a->requests, "");
        for (int p = 0; p < P; p++)
            printf(" %7s", rc->pick.domains[p].name);
        printf(" %7s\n", "none");
        for (int d = 0; d < D; d++) {
            printf("  %-8s", s->names[d]);
            for (int p = 0; p < P; p++)
                printf(" %7lld", (long long)conf[((size_t)k * D + d) * (P + 1) + p + 1]);
            printf(" %7lld\n", (long long)conf[((size_t)k * D + d) * (P + 1)]);
        }
    }
    free(hist);
    free(perm);
    free(conf);
    return 0;
}

static int eval_synthetic(const eval_args *a)
{
    ep_model_cfg m;
    ep_status st = ep_model_cfg_load(a->synthetic, &m);
    if (st) {
        fprintf(stderr, "epserve detect-eval: %s\n", ep_last_error());
        return 1;
    }
    const int L = m.n_layers, E = m.n_experts, H = m.hidden, D = EP_SYNTH_N_DOMAINS;
    static const char *const names[EP_SYNTH_N_DOMAINS] = {"general", "math", "code", "chat"};
    if (E > 1024) {
        fprintf(stderr, "epserve detect-eval: %d experts, at most 1024 supported\n", E);
        return 1;
    }
    eval_src s = {.m = &m, .n_domains = D};
    s.gate = ep_xcalloc((size_t)L, sizeof *s.gate);
    s.x = ep_xmalloc((size_t)H * sizeof(float));
    s.lg = ep_xmalloc((size_t)E * sizeof(float));
    s.idx = ep_xmalloc((size_t)E * sizeof(int));
    for (int l = 0; l < L; l++) {
        if (!ep_model_layer_is_moe(&m, l)) continue;
        char name[128];
        ep_name_gate(name, sizeof name, l);
        const int64_t shape[2] = {E, H};
        s.gate[l] = ep_xmalloc((size_t)E * H * sizeof(float));
        ep_synth_tensor(&m, name, 2, shape, s.gate[l]);
    }
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BANPICK);
    float *hist = ep_xmalloc((size_t)L * E * sizeof(float));
    for (int d = 0; d < D; d++) {
        snprintf(s.names[d], sizeof s.names[d], "%s", names[d]);
        int di = ep_routing_cfg_add_domain(&rc, names[d]);
        float *f = rc.pick.domains[di].frequency = ep_xcalloc((size_t)L * E, sizeof(float));
        memset(hist, 0, (size_t)L * E * sizeof(float));
        for (int l = 0; l < L; l++)
            if (s.gate[l])
                for (int t = 0; t < a->calib_tokens; t++)
                    synth_route(&s, l, 1, d, t, hist);
        for (size_t i = 0; i < (size_t)L * E; i++)
            f[i] = hist[i] / (float)a->calib_tokens;
    }
    printf("# detect-eval: synthetic %s (%d MoE layers, %d experts, top-%d); profiles: %d tokens "
           "per domain (stream 1), requests: stream %llu\n",
           m.name, L - m.first_k_dense, E, m.k_base, a->calib_tokens, (unsigned long long)a->seed);
    int rcode = run_eval(&s, &rc, a);
    free(hist);
    ep_routing_cfg_free(&rc);
    for (int l = 0; l < L; l++)
        free(s.gate[l]);
    free(s.gate);
    free(s.x);
    free(s.lg);
    free(s.idx);
    return rcode;
}

// Whether task is in the comma-separated list (NULL: every task).
static bool profiled(const char *list, const char *task)
{
    if (!list) return true;
    size_t n = strlen(task);
    for (const char *p = list; *p;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len == n && !strncmp(p, task, n)) return true;
        if (!c) break;
        p = c + 1;
    }
    return false;
}

static int eval_qwen3(const eval_args *a)
{
    static const char *const tasks[] = {"arc", "copa", "gsm", "mmlu", "nli", "ted"};
    const int D = 6;
    ep_model_cfg m;
    ep_status st = ep_model_cfg_load("qwen3-30b-a3b", &m);
    if (st) {
        fprintf(stderr, "epserve detect-eval: %s\n", ep_last_error());
        return 1;
    }
    const int L = m.n_layers, E = m.n_experts;
    eval_src s = {.m = &m, .n_domains = D};
    s.test_freq = ep_xmalloc((size_t)D * L * E * sizeof(float));
    ep_routing_cfg rc;
    ep_routing_cfg_default(&rc, &m, EP_POLICY_BANPICK);
    for (int d = 0; d < D && !st; d++) {
        snprintf(s.names[d], sizeof s.names[d], "%s", tasks[d]);
        if (profiled(a->profile_tasks, tasks[d])) {
            int di = ep_routing_cfg_add_domain(&rc, tasks[d]);
            float *f = rc.pick.domains[di].frequency = ep_xcalloc((size_t)L * E, sizeof(float));
            st = read_qwen3(a->qwen3, tasks[d], a->profile_lang, &m, f);
        }
        if (!st)
            st = read_qwen3(a->qwen3, tasks[d], a->test_lang, &m, s.test_freq + (size_t)d * L * E);
    }
    if (!st && rc.pick.n_domains == 0)
        st = ep_errorf(EP_ERR_ARG,
                       "--profile-tasks '%s': expected some of arc, copa, gsm, mmlu, "
                       "nli, ted, found none",
                       a->profile_tasks);
    int rcode = 1;
    if (st) {
        fprintf(stderr, "epserve detect-eval: %s\n", ep_last_error());
    } else {
        printf("# detect-eval: Qwen3-30B-A3B per-task activation (%s); profiles: %s rows, "
               "requests: top-8 sets sampled from %s rows (stream %llu)\n",
               a->qwen3, a->profile_lang, a->test_lang, (unsigned long long)a->seed);
        rcode = run_eval(&s, &rc, a);
    }
    ep_routing_cfg_free(&rc);
    free(s.test_freq);
    return rcode;
}

int ep_cmd_detect_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"synthetic", required_argument, 0, 's'},
        {"qwen3", required_argument, 0, 'q'},
        {"profile-lang", required_argument, 0, 'P'},
        {"test-lang", required_argument, 0, 'T'},
        {"calib-tokens", required_argument, 0, 'c'},
        {"requests", required_argument, 0, 'r'},
        {"tokens", required_argument, 0, 't'},
        {"method", required_argument, 0, 'M'},
        {"min-margin", required_argument, 0, 'g'},
        {"seed", required_argument, 0, 'S'},
        {"profile-tasks", required_argument, 0, 'K'},
        {"max-gap", required_argument, 0, 'G'},
        {"signal", required_argument, 0, 'W'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    eval_args a = {.profile_lang = "English",
                   .test_lang = "Hebrew",
                   .calib_tokens = 512,
                   .requests = 200,
                   .method = EP_DETECT_COUNT, // the serving one
                   .max_gap = -1,
                   .signal = 1.0,
                   .seed = 2};
    int *toks = NULL, rc = 2;
    optind = 1;
    int c;
    long v;
    float x;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            a.synthetic = optarg;
            break;
        case 'q':
            a.qwen3 = optarg;
            break;
        case 'P':
            a.profile_lang = optarg;
            break;
        case 'T':
            a.test_lang = optarg;
            break;
        case 'K':
            a.profile_tasks = optarg;
            break;
        case 'W':
            if (!ep_arg_float(optarg, &x) || x < 0 || x > 1) goto bad;
            a.signal = x;
            break;
        case 'G':
            if (!ep_arg_float(optarg, &x) || x < 0) goto bad;
            a.max_gap = x;
            break;
        case 'c':
            if (!ep_arg_int(optarg, 1, 1 << 20, &a.calib_tokens)) goto bad;
            break;
        case 'r':
            if (!ep_arg_int(optarg, 1, 1 << 20, &a.requests)) goto bad;
            break;
        case 't':
            free(toks);
            toks = NULL;
            if (ep_arg_ids("--tokens", optarg, 1, &toks, &a.n_tokens)) {
                fprintf(stderr, "epserve detect-eval: %s\n", ep_last_error());
                goto out;
            }
            for (int i = 0; i < a.n_tokens; i++)
                if (toks[i] > 4096) goto bad;
            a.tokens = toks;
            break;
        case 'M':
            if (ep_detect_method_parse(optarg, &a.method)) {
                fprintf(stderr, "epserve detect-eval: --method: %s\n", ep_last_error());
                goto out;
            }
            break;
        case 'g':
            if (!ep_arg_float(optarg, &x) || x < 0) goto bad;
            a.min_margin = x;
            a.margin_set = true;
            break;
        case 'S':
            if (!ep_arg_long(optarg, 0, 1L << 40, &v)) goto bad;
            a.seed = (uint64_t)v;
            break;
        case 'h':
            usage(stdout);
            rc = 0;
            goto out;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc || !a.synthetic == !a.qwen3) {
        fprintf(stderr, "epserve detect-eval: expected exactly one of --synthetic and --qwen3\n");
        usage(stderr);
        goto out;
    }
    if (a.method == EP_DETECT_COUNT) {
        ep_detect_opts so;
        ep_detect_opts_default(&so);
        a.method = so.method;
    }
    static int def_tokens[] = {4, 16, 64};
    if (!a.tokens) {
        a.tokens = def_tokens;
        a.n_tokens = 3;
    }
    rc = a.synthetic ? eval_synthetic(&a) : eval_qwen3(&a);
    goto out;
bad:
    fprintf(stderr, "epserve detect-eval: bad option value '%s'\n", optarg);
    usage(stderr);
out:
    free(toks);
    return rc;
}
