// `epserve bench`: runs every MoE layer of a model over T tokens per rank for
// S steps under each routing policy, all on the same inputs and weights in
// one process, and reports avg K, throughput, all-to-all bytes (actual and
// the fixed-k_base counterfactual), balance and, with --check, the error
// against the single-process reference. Table in the nccl-tests style; JSON.
#include "app/args.h"
#include "app/bench_plot.h"
#include "app/commands.h"
#include "common/json_util.h"
#include "common/weights.h"
#include "model/moe.h"
#include "router/policy.h"
#include "sim/trace.h"

#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    const char *model, *routing, *json_path, *plot_dir, *placement, *wire, *domain, *mode,
        *routes_from, *backend, *expert_dtype, *save_routes, *dispatch;
    const char *dispatch_used; // the mode ep_moe resolved (flat | hier), for the table
    int tokens, steps, warmup, ranks_per_node, quiet, check, per_layer;
    int redundant_experts, home_only;
    int micro_batches, phase_barrier;
    uint64_t seed;
} bench_args;

// What one policy accumulates over the timed steps, on this rank.
typedef struct {
    ep_policy *pol;           // NULL when replaying a trace (--routes-from)
    char label[64];           // row name: the policy, or a routing file's base name
    ep_comm_stats total;      // summed over layers and timed steps
    ep_comm_stats *per_layer; // [n_layers], summed over timed steps
    double *step_ms;          // [steps] max over ranks
    double *phase_ms;         // [steps][2] dispatch, combine of a step, max over ranks
    double imbalance_sum;     // Σ over (layer, step) of max/mean received pairs
    int64_t imbalance_n;
    double *layer_imb; // [n_layers] Σ over steps
    int64_t *k_hist;   // [max_k + 1] tokens by K
    double *rank_load; // [world] pairs computed per rank, timed steps
    double max_rel_err;
    int64_t n_wrong, n_checked;
    ep_moe_times times;
} bench_policy;

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: epserve bench --model M [options]     (run under mpirun -np N for N ranks)\n"
        "  --model M            preset name, model YAML, or checkpoint directory\n"
        "  --routing P[,P...]   policies or routing YAML files (default baseline)\n"
        "  --tokens T           tokens per rank per step (default 64)\n"
        "  --steps S            timed steps (default 5)\n"
        "  --warmup W           untimed steps first (default 1)\n"
        "  --placement KIND     contiguous | round_robin | eplb (default contiguous); eplb\n"
        "                       places each layer from the pairs the warm-up steps route\n"
        "  --redundant-experts N  eplb: extra expert slots per layer (default 0)\n"
        "  --home-only          eplb: no replica choice (every pair to the home slot)\n"
        "  --wire DTYPE         f32 | bf16 | f16 | fp8 payload (default f32); fp8: e4m3\n"
        "                       dispatch with a scale per 128 channels, bf16 combine\n"
        "  --backend B          cpu | cuda: where the experts run (default cpu); cuda: BF16\n"
        "                       experts on one GPU per rank, NCCL transport (EP_CUDA builds)\n"
        "  --expert-dtype D     cpu backend: auto | f32 | bf16 storage of the experts\n"
        "                       (default auto: bf16 for a BF16 checkpoint, else f32)\n"
        "  --dispatch MODE      hier | flat: hier sends a token once per other node, to\n"
        "                       the rank there with its local index, which forwards it\n"
        "                       within the node (default hier with more than one node\n"
        "                       on the cpu backend, else flat; cuda: flat only)\n"
        "  --micro-batches N    1 | 2: with 2, each MoE layer runs as two half-batches, one's\n"
        "                       all-to-all overlapping the other's experts (default 1)\n"
        "  --phase-barrier      a barrier before dispatch and before combine, outside the\n"
        "                       phase times: they are then transfer time (micro-batches 1)\n"
        "  --ranks-per-node N   treat every N consecutive ranks as one node\n"
        "  --domain D           general | math | code | chat | mix (default mix)\n"
        "  --mode M             prefill (a domain per 64-token prompt) | decode (a domain\n"
        "                       per sequence, one token per sequence per step); default prefill\n"
        "  --routes-from FILE   replay routing decisions (JSON lines or CSV trace) instead\n"
        "                       of routing; one row named 'replay'\n"
        "  --save-routes FILE   write the first row's routes of the first timed step (rank 0,\n"
        "                       JSON lines, every MoE layer, rank by rank) for --routes-from\n"
        "  --seed S             input stream seed (default 1)\n"
        "  --check              compare every layer with the single-process reference\n"
        "  --per-layer          also print a per-layer table\n"
        "  --json FILE          write the results as JSON (rank 0)\n"
        "  --plot DIR           write PNG charts (gnuplot) into DIR (rank 0)\n"
        "  --quiet              no progress line\n"
        "`epserve bench sched --help`: the trace-driven scheduler check (no MPI)\n"
        "`epserve bench model --help`: the whole model's forward against the bandwidth and\n"
        "GEMM limits measured in the same run\n");
}

static int parse_args(int argc, char **argv, bench_args *a)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"routing", required_argument, 0, 'r'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"steps", required_argument, 0, 's'},
                                         {"warmup", required_argument, 0, 'w'},
                                         {"placement", required_argument, 0, 'p'},
                                         {"wire", required_argument, 0, 'W'},
                                         {"ranks-per-node", required_argument, 0, 'n'},
                                         {"domain", required_argument, 0, 'd'},
                                         {"seed", required_argument, 0, 'S'},
                                         {"check", no_argument, 0, 'c'},
                                         {"per-layer", no_argument, 0, 'L'},
                                         {"json", required_argument, 0, 'j'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"plot", required_argument, 0, 'P'},
                                         {"mode", required_argument, 0, 'M'},
                                         {"routes-from", required_argument, 0, 'R'},
                                         {"redundant-experts", required_argument, 0, 'X'},
                                         {"home-only", no_argument, 0, 'H'},
                                         {"backend", required_argument, 0, 'B'},
                                         {"expert-dtype", required_argument, 0, 'E'},
                                         {"micro-batches", required_argument, 0, 'U'},
                                         {"phase-barrier", no_argument, 0, 'G'},
                                         {"save-routes", required_argument, 0, 'O'},
                                         {"dispatch", required_argument, 0, 'D'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->routing = "baseline";
    a->tokens = 64;
    a->steps = 5;
    a->warmup = 1;
    a->placement = "contiguous";
    a->wire = "f32";
    a->backend = "cpu";
    a->expert_dtype = "auto";
    a->micro_batches = 1;
    a->domain = "mix";
    a->mode = "prefill";
    a->seed = 1;
    optind = 1;
    int c, li = 0;
    while ((c = getopt_long(argc, argv, "", opts, &li)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'm':
            a->model = optarg;
            break;
        case 'r':
            a->routing = optarg;
            break;
        case 't':
            a->tokens = (int)strtol(optarg, &end, 10);
            break;
        case 's':
            a->steps = (int)strtol(optarg, &end, 10);
            break;
        case 'w':
            a->warmup = (int)strtol(optarg, &end, 10);
            break;
        case 'p':
            a->placement = optarg;
            break;
        case 'W':
            a->wire = optarg;
            break;
        case 'D':
            a->dispatch = optarg;
            break;
        case 'B':
            a->backend = optarg;
            break;
        case 'E':
            a->expert_dtype = optarg;
            break;
        case 'U':
            a->micro_batches = (int)strtol(optarg, &end, 10);
            break;
        case 'G':
            a->phase_barrier = 1;
            break;
        case 'O':
            a->save_routes = optarg;
            break;
        case 'n':
            a->ranks_per_node = (int)strtol(optarg, &end, 10);
            break;
        case 'd':
            a->domain = optarg;
            break;
        case 'S':
            a->seed = strtoull(optarg, &end, 10);
            break;
        case 'c':
            a->check = 1;
            break;
        case 'L':
            a->per_layer = 1;
            break;
        case 'j':
            a->json_path = optarg;
            break;
        case 'P':
            a->plot_dir = optarg;
            break;
        case 'M':
            a->mode = optarg;
            break;
        case 'R':
            a->routes_from = optarg;
            break;
        case 'X':
            a->redundant_experts = (int)strtol(optarg, &end, 10);
            break;
        case 'H':
            a->home_only = 1;
            break;
        case 'q':
            a->quiet = 1;
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return 2;
        }
        if (end && *end) {
            fprintf(stderr, "epserve bench: option --%s: expected an integer, found '%s'\n",
                    opts[li].name, optarg);
            return 2;
        }
    }
    if (a->micro_batches != 1 && a->micro_batches != 2) {
        fprintf(stderr, "epserve bench: --micro-batches: expected 1 or 2, found %d\n",
                a->micro_batches);
        return 2;
    }
    if (a->phase_barrier && a->micro_batches != 1) {
        fprintf(stderr,
                "epserve bench: --phase-barrier: needs --micro-batches 1 (two overlap the "
                "phases), found %d\n",
                a->micro_batches);
        return 2;
    }
    if (strcmp(a->mode, "prefill") && strcmp(a->mode, "decode")) {
        fprintf(stderr, "epserve bench: --mode: expected prefill or decode, found '%s'\n", a->mode);
        return 2;
    }
    if (!a->model) {
        fprintf(stderr, "epserve bench: --model is required\n");
        usage(stderr);
        return 2;
    }
    if (a->tokens < 0 || a->steps < 1 || a->warmup < 0 || a->ranks_per_node < 0 ||
        a->redundant_experts < 0) {
        fprintf(stderr,
                "epserve bench: expected --tokens >= 0, --steps >= 1, --warmup >= 0, "
                "--ranks-per-node >= 0, --redundant-experts >= 0; "
                "found %d, %d, %d, %d, %d\n",
                a->tokens, a->steps, a->warmup, a->ranks_per_node, a->redundant_experts);
        return 2;
    }
    return 0;
}

// The input domain of a token: fixed, or under "mix" that of its prompt
// (prefill: 64-token prompts) or of its sequence (decode).
static int domain_of(const char *d, int64_t unit)
{
    static const char *names[EP_SYNTH_N_DOMAINS] = {"general", "math", "code", "chat"};
    for (int i = 0; i < EP_SYNTH_N_DOMAINS; i++)
        if (!strcmp(d, names[i])) return i;
    return (int)(unit % EP_SYNTH_N_DOMAINS);
}

static bool domain_valid(const char *d)
{
    return !strcmp(d, "mix") || !strcmp(d, "general") || !strcmp(d, "math") || !strcmp(d, "code") ||
           !strcmp(d, "chat");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(const double *v, int n, double q)
{
    double *s = ep_xmalloc((size_t)n * sizeof(double));
    memcpy(s, v, (size_t)n * sizeof(double));
    qsort(s, (size_t)n, sizeof(double), cmp_double);
    int idx = (int)ceil(q * n) - 1;
    double r = s[idx < 0 ? 0 : (idx >= n ? n - 1 : idx)];
    free(s);
    return r;
}

// Sums n stats records over every rank in one collective (ep_comm_stats is
// all int64 fields).
static ep_status reduce_stats(ep_cluster *cl, ep_comm_stats *s, int n)
{
    EP_ASSERT(sizeof *s % sizeof(int64_t) == 0);
    return ep_cluster_allreduce_i64(cl, (int64_t *)s, n * (int)(sizeof *s / sizeof(int64_t)),
                                    EP_REDUCE_SUM);
}

static double pct_saved(int64_t actual, int64_t base)
{
    return base > 0 ? 100.0 * (1.0 - (double)actual / (double)base) : 0.0;
}

// Tokens through every MoE layer per second, from the mean step time
// (a step's time is the slowest rank's).
static double policy_tps(const bench_policy *bp, int steps, int64_t tokens_total)
{
    double mean_ms = 0;
    for (int s = 0; s < steps; s++)
        mean_ms += bp->step_ms[s];
    mean_ms /= steps;
    return mean_ms > 0 ? tokens_total / (mean_ms * 1e-3) : 0;
}

static json_t *policy_json(const bench_policy *bp, const ep_model_cfg *cfg, int steps,
                           int64_t tokens_total, double base_tps, bool check, int max_k, int world)
{
    const ep_comm_stats *t = &bp->total;
    double p50 = percentile(bp->step_ms, steps, 0.5);
    double tps = policy_tps(bp, steps, tokens_total);
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(bp->label));
    json_object_set_new(o, "avg_k", json_real(t->tokens ? (double)t->pairs / t->tokens : 0));
    json_object_set_new(o, "tokens_per_s", json_real(tps));
    json_object_set_new(o, "step_ms_p50", json_real(p50));
    json_object_set_new(o, "step_ms_p99", json_real(percentile(bp->step_ms, steps, 0.99)));
    json_object_set_new(o, "speedup", json_real(base_tps > 0 ? tps / base_tps : 0));
    json_object_set_new(o, "dispatch_bytes", json_integer(t->dispatch_bytes));
    json_object_set_new(o, "combine_bytes", json_integer(t->combine_bytes));
    json_object_set_new(o, "baseline_dispatch_bytes", json_integer(t->base_dispatch_bytes));
    json_object_set_new(o, "baseline_combine_bytes", json_integer(t->base_combine_bytes));
    json_object_set_new(o, "inter_node_bytes",
                        json_integer(t->dispatch_bytes_inter + t->combine_bytes_inter));
    json_object_set_new(o, "baseline_inter_node_bytes",
                        json_integer(t->base_dispatch_bytes_inter + t->base_combine_bytes_inter));
    json_object_set_new(o, "intra_node_bytes",
                        json_integer(t->dispatch_bytes_intra + t->combine_bytes_intra));
    json_object_set_new(o, "baseline_intra_node_bytes",
                        json_integer(t->base_dispatch_bytes_intra + t->base_combine_bytes_intra));
    json_object_set_new(o, "measured_inter_node_bytes", json_integer(t->measured_bytes_inter));
    json_object_set_new(o, "forwards", json_integer(t->fwd_sends));
    json_object_set_new(o, "planned_bytes", json_integer(t->planned_bytes));
    json_object_set_new(o, "measured_bytes", json_integer(t->measured_bytes));
    json_object_set_new(o, "bytes_saved_pct",
                        json_real(pct_saved(t->dispatch_bytes + t->combine_bytes,
                                            t->base_dispatch_bytes + t->base_combine_bytes)));
    json_object_set_new(o, "pairs", json_integer(t->pairs));
    json_object_set_new(o, "baseline_pairs", json_integer(t->base_pairs));
    json_object_set_new(o, "dest_ranks_per_token",
                        json_real(t->tokens ? (double)t->dest_ranks / t->tokens : 0));
    json_object_set_new(o, "load_imbalance",
                        json_real(bp->imbalance_n ? bp->imbalance_sum / bp->imbalance_n : 0));
    if (check) {
        json_object_set_new(o, "max_rel_err", json_real(bp->max_rel_err));
        json_object_set_new(o, "wrong", json_integer(bp->n_wrong));
        json_object_set_new(o, "checked_tokens", json_integer(bp->n_checked));
    }
    // Time per step by phase (slowest rank), and the all-to-all bandwidth:
    // algbw = payload bytes sent per rank / dispatch+combine time, busbw = algbw (n-1)/n.
    const ep_moe_times *tm = &bp->times;
    json_t *ph = json_object();
    json_object_set_new(ph, "route", json_real(tm->route_us * 1e-3 / steps));
    json_object_set_new(ph, "dispatch", json_real(tm->dispatch_us * 1e-3 / steps));
    json_object_set_new(ph, "experts", json_real(tm->experts_us * 1e-3 / steps));
    json_object_set_new(ph, "combine", json_real(tm->combine_us * 1e-3 / steps));
    json_object_set_new(ph, "shared", json_real(tm->shared_us * 1e-3 / steps));
    json_object_set_new(o, "phase_ms_per_step", ph);
    // Median and minimum over the steps: robust to steps a shared machine
    // descheduled (the minimum: the step least disturbed).
    double *col = ep_xmalloc((size_t)steps * sizeof(double));
    json_t *pm = json_object(), *pmin = json_object();
    for (int k = 0; k < 2; k++) {
        for (int s = 0; s < steps; s++)
            col[s] = bp->phase_ms[2 * s + k];
        json_object_set_new(pm, k ? "combine" : "dispatch", json_real(percentile(col, steps, 0.5)));
        json_object_set_new(pmin, k ? "combine" : "dispatch", json_real(percentile(col, steps, 0)));
    }
    free(col);
    json_object_set_new(o, "phase_ms_p50", pm);
    json_object_set_new(o, "phase_ms_min", pmin);
    double comm_s = (tm->dispatch_us + tm->combine_us) * 1e-6;
    double algbw = comm_s > 0 ? (double)t->planned_bytes / world / comm_s / 1e9 : 0;
    json_object_set_new(o, "algbw_gbps", json_real(algbw));
    json_object_set_new(o, "busbw_gbps", json_real(world > 1 ? algbw * (world - 1) / world : 0));
    json_t *hist = json_array();
    for (int k = 0; k <= max_k; k++)
        json_array_append_new(hist, json_integer(bp->k_hist[k]));
    json_object_set_new(o, "k_hist", hist);
    json_t *load = json_array();
    for (int r = 0; r < world; r++)
        json_array_append_new(load, json_integer((json_int_t)bp->rank_load[r]));
    json_object_set_new(o, "rank_load", load);

    json_t *pl = json_object();
    json_t *a_k = json_array(), *a_d = json_array(), *a_c = json_array(), *a_bd = json_array(),
           *a_bc = json_array(), *a_imb = json_array(), *a_l = json_array();
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!ep_model_layer_is_moe(cfg, l)) continue;
        const ep_comm_stats *s = &bp->per_layer[l];
        json_array_append_new(a_l, json_integer(l));
        json_array_append_new(a_k, json_real(s->tokens ? (double)s->pairs / s->tokens : 0));
        json_array_append_new(a_d, json_integer(s->dispatch_bytes));
        json_array_append_new(a_c, json_integer(s->combine_bytes));
        json_array_append_new(a_bd, json_integer(s->base_dispatch_bytes));
        json_array_append_new(a_bc, json_integer(s->base_combine_bytes));
        json_array_append_new(a_imb, json_real(bp->layer_imb[l] / steps));
    }
    json_object_set_new(pl, "layer", a_l);
    json_object_set_new(pl, "avg_k", a_k);
    json_object_set_new(pl, "dispatch_bytes", a_d);
    json_object_set_new(pl, "combine_bytes", a_c);
    json_object_set_new(pl, "baseline_dispatch_bytes", a_bd);
    json_object_set_new(pl, "baseline_combine_bytes", a_bc);
    json_object_set_new(pl, "load_imbalance", a_imb);
    json_object_set_new(o, "per_layer", pl);
    return o;
}

static void print_table(const ep_model_cfg *cfg, const ep_cluster *cl, const bench_args *a,
                        bench_policy *bp, int n_pol, json_t *jpol)
{
    int nw = 10; // name column: as wide as the longest row name
    for (int i = 0; i < n_pol; i++)
        nw = EP_MAX(nw, (int)strlen(bp[i].label));
    printf("# epserve bench\n");
    printf("# model: %s (%s, %d MoE layers, %d experts, top-%d, hidden %d)\n", cfg->name,
           cfg->arch == EP_ARCH_QWEN3_MOE ? "qwen3_moe" : "deepseek_v2", ep_model_n_moe_layers(cfg),
           cfg->n_experts, cfg->k_base, cfg->hidden);
    printf("# ranks: %d  nodes: %d  ranks/node: %s  tokens/rank: %d  steps: %d (+%d warm-up)\n",
           cl->world_size, cl->n_nodes, cl->ranks_per_node ? "fixed" : "from hostnames", a->tokens,
           a->steps, a->warmup);
    bool cuda = !strcmp(a->backend, "cuda");
    const char *be = cuda                               ? "cuda (BF16 experts)"
                     : !strcmp(a->expert_dtype, "bf16") ? "cpu (BF16 experts)"
                                                        : "cpu (fp32)";
    printf("# backend: %s  transport: %s  wire: %s  placement: %s", be, cuda ? "nccl" : "mpi",
           a->wire, a->placement);
    if (!strcmp(a->placement, "eplb"))
        printf(" (+%d redundant, %s)", a->redundant_experts,
               a->home_only ? "home slots" : "replica choice");
    printf("  domain: %s  micro-batches: %d  dispatch: %s%s\n", a->domain, a->micro_batches,
           a->dispatch_used, a->phase_barrier ? "  phase barrier" : "");
    printf("# bytes: payload to other ranks, all layers and timed steps, summed over ranks;\n"
           "# inter/intra: across/within nodes (hier: stage 1 / stage 2 and direct), "
           "base_*: top-k_base\n#\n");
    printf("# %-*s %6s %10s %8s %8s %7s %10s %10s %9s %9s %10s %10s %7s %6s %9s", nw, "policy",
           "avg_k", "tokens/s", "p50_ms", "p99_ms", "speedup", "dispatch", "combine", "inter",
           "intra", "base_inter", "base_intra", "saved", "dests", "imbalance");
    if (a->check) printf(" %11s %6s", "max_rel_err", "#wrong");
    printf("\n# %-*s %6s %10s %8s %8s %7s %10s %10s %9s %9s %10s %10s %7s %6s %9s", nw, "(name)",
           "(K)", "(tok/s)", "(ms)", "(ms)", "(x)", "(MB)", "(MB)", "(MB)", "(MB)", "(MB)", "(MB)",
           "(%)", "(rank)", "(max/mean)");
    if (a->check) printf(" %11s %6s", "", "");
    printf("\n");
    for (int i = 0; i < n_pol; i++) {
        json_t *o = json_array_get(jpol, (size_t)i);
#define JR(k) json_real_value(json_object_get(o, k))
#define JI(k) (double)json_integer_value(json_object_get(o, k))
        printf("  %-*s %6.2f %10.0f %8.2f %8.2f %7.2f %10.3f %10.3f %9.3f %9.3f %10.3f %10.3f "
               "%7.2f %6.2f %9.3f",
               nw, bp[i].label, JR("avg_k"), JR("tokens_per_s"), JR("step_ms_p50"),
               JR("step_ms_p99"), JR("speedup"), JI("dispatch_bytes") / 1e6,
               JI("combine_bytes") / 1e6, JI("inter_node_bytes") / 1e6,
               JI("intra_node_bytes") / 1e6, JI("baseline_inter_node_bytes") / 1e6,
               JI("baseline_intra_node_bytes") / 1e6, JR("bytes_saved_pct"),
               JR("dest_ranks_per_token"), JR("load_imbalance"));
        if (a->check) printf(" %11.3e %6.0f", JR("max_rel_err"), JI("wrong"));
        printf("\n");
    }
    if (a->per_layer) {
        printf("#\n# per layer\n# %-*s %5s %6s %10s %10s %10s %10s %9s\n", nw, "policy", "layer",
               "avg_k", "dispatch", "combine", "base_disp", "base_comb", "imbalance");
        printf("# %-*s %5s %6s %10s %10s %10s %10s %9s\n", nw, "(name)", "", "(K)", "(MB)", "(MB)",
               "(MB)", "(MB)", "(max/mean)");
        for (int i = 0; i < n_pol; i++) {
            json_t *pl = json_object_get(json_array_get(jpol, (size_t)i), "per_layer");
            size_t n = json_array_size(json_object_get(pl, "layer"));
            for (size_t j = 0; j < n; j++) {
#define PL(k) json_array_get(json_object_get(pl, k), j)
                printf("  %-*s %5lld %6.2f %10.3f %10.3f %10.3f %10.3f %9.3f\n", nw, bp[i].label,
                       (long long)json_integer_value(PL("layer")), json_real_value(PL("avg_k")),
                       json_integer_value(PL("dispatch_bytes")) / 1e6,
                       json_integer_value(PL("combine_bytes")) / 1e6,
                       json_integer_value(PL("baseline_dispatch_bytes")) / 1e6,
                       json_integer_value(PL("baseline_combine_bytes")) / 1e6,
                       json_real_value(PL("load_imbalance")));
#undef PL
            }
        }
    }
#undef JR
#undef JI
    fflush(stdout);
}

// Generates the MoE-layer inputs of one step: x[l][T, H] for every MoE layer.
static void make_inputs(const ep_model_cfg *cfg, const ep_cluster *cl, const bench_args *a,
                        int step, float **x)
{
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!x[l]) continue;
        for (int i = 0; i < a->tokens; i++) {
            int64_t g = ((int64_t)step * cl->world_size + cl->rank) * a->tokens + i;
            int64_t seq = (int64_t)cl->rank * a->tokens + i; // decode: one sequence per slot
            int dom = !strcmp(a->mode, "decode") ? domain_of(a->domain, seq)
                                                 : domain_of(a->domain, g / 64);
            ep_synth_hidden(cfg, a->seed, l, dom, g, x[l] + (size_t)i * cfg->hidden);
        }
    }
}

// One MoE layer for one row of the table: routed by the policy, or replayed
// from the trace. *routes_out gets the routes used.
static ep_status run_layer(ep_moe *moe, const bench_policy *bp, const ep_trace *trace,
                           ep_routes *trace_routes, const ep_model_cfg *cfg, const ep_cluster *cl,
                           const bench_args *a, int step, int layer, const float *x, float *y,
                           ep_comm_stats *st, ep_moe_times *tm, const ep_routes **routes_out)
{
    if (bp->pol) {
        ep_status s = ep_moe_forward(moe, bp->pol, layer, x, a->tokens, y, st, tm);
        *routes_out = ep_moe_last_routes(moe);
        return s;
    }
    int64_t first = ((int64_t)step * cl->world_size + cl->rank) * a->tokens;
    ep_trace_fill(trace, cfg, layer, first, a->tokens, trace_routes);
    *routes_out = trace_routes;
    return ep_moe_forward_routes(moe, layer, trace_routes, x, y, st, tm);
}

// --save-routes: the first row's routes of the first timed step, run again
// outside the timing. Every rank sends rank 0 its routes of each MoE layer
// (allgather of a fixed-size block: T, offsets, ids, weights, the top-k_base
// ids of the counterfactual); rank 0 writes
// them as JSON lines, rank by rank, so that rank r's tokens are rows r*T..
// of each layer: what `bench --routes-from` on as many ranks and `simulate
// --routes-from --sample-tokens 0` replay.
static ep_status save_routes(ep_moe *moe, const bench_policy *bp, const ep_trace *trace,
                             ep_routes *trace_routes, const ep_model_cfg *cfg, ep_cluster *cl,
                             const bench_args *a, int max_k, float **x, float *y)
{
    const int T = a->tokens, W = cl->world_size, kb = cfg->k_base;
    const int blk = 1 + (T + 1) + 2 * T * max_k + T * kb;
    const int o_e = 2 + T, o_w = o_e + T * max_k, o_b = o_w + T * max_k; // block offsets
    double *mine = ep_xmalloc((size_t)blk * sizeof(double));
    double *all = ep_xmalloc((size_t)blk * W * sizeof(double));
    FILE *f = NULL;
    ep_status st = EP_OK, open_st = EP_OK;
    if (cl->rank == 0 && !(f = fopen(a->save_routes, "w")))
        open_st = ep_errorf(EP_ERR_IO, "--save-routes: cannot write '%s'", a->save_routes);
    make_inputs(cfg, cl, a, a->warmup, x);
    for (int l = 0; l < cfg->n_layers && !st; l++) {
        if (!x[l]) continue;
        const ep_routes *r;
        if ((st = run_layer(moe, bp, trace, trace_routes, cfg, cl, a, a->warmup, l, x[l], y, NULL,
                            NULL, &r)))
            break;
        const int nnz = ep_routes_nnz(r);
        mine[0] = r->n_tokens;
        for (int t = 0; t <= r->n_tokens; t++)
            mine[1 + t] = r->offsets[t];
        for (int j = 0; j < nnz; j++) {
            mine[o_e + j] = r->expert[j];
            mine[o_w + j] = r->weight[j];
        }
        for (int j = 0; j < r->n_tokens * kb; j++)
            mine[o_b + j] = r->base_expert[j];
        if ((st = ep_cluster_allgather_f64(cl, mine, blk, all))) break;
        for (int q = 0; f && q < W; q++) {
            const double *b = all + (size_t)q * blk;
            for (int t = 0; t < (int)b[0]; t++) {
                fprintf(f, "{\"layer\": %d, \"experts\": [", l);
                for (int j = (int)b[1 + t]; j < (int)b[2 + t]; j++)
                    fprintf(f, "%s%d", j > (int)b[1 + t] ? ", " : "", (int)b[o_e + j]);
                fprintf(f, "], \"weights\": [");
                for (int j = (int)b[1 + t]; j < (int)b[2 + t]; j++)
                    fprintf(f, "%s%.9g", j > (int)b[1 + t] ? ", " : "", b[o_w + j]);
                fprintf(f, "], \"base_experts\": [");
                for (int j = 0; j < kb; j++)
                    fprintf(f, "%s%d", j ? ", " : "", (int)b[o_b + t * kb + j]);
                fprintf(f, "]}\n");
            }
        }
    }
    if (f && fclose(f) && !open_st)
        open_st = ep_errorf(EP_ERR_IO, "--save-routes: writing '%s' failed", a->save_routes);
    free(mine);
    free(all);
    return st ? st : open_st;
}

// EPLB needs loads: route the warm-up inputs (at least one step) with every
// row's policy on the first placement, sum the pairs per (layer, expert)
// over ranks and rows, then re-place (the experts are read again).
static ep_status eplb_observe(ep_moe **moe, ep_weights *w, ep_cluster *cl, const ep_model_cfg *cfg,
                              const bench_args *a, bench_policy *bp, int n_pol,
                              const ep_trace *trace, ep_routes *trace_routes, ep_moe_opts *mo,
                              float **x, float *y)
{
    const size_t LE = (size_t)cfg->n_layers * cfg->n_experts;
    double *load = ep_xcalloc(LE, sizeof(double));
    ep_status st = EP_OK;
    for (int step = 0; step < EP_MAX(a->warmup, 1) && !st; step++) {
        make_inputs(cfg, cl, a, step, x);
        for (int i = 0; i < n_pol && !st; i++)
            for (int l = 0; l < cfg->n_layers && !st; l++) {
                if (!x[l]) continue;
                const ep_routes *r;
                if ((st = run_layer(*moe, &bp[i], trace, trace_routes, cfg, cl, a, step, l, x[l], y,
                                    NULL, NULL, &r)))
                    break;
                for (int j = 0; j < ep_routes_nnz(r); j++)
                    load[(size_t)l * cfg->n_experts + r->expert[j]] += 1;
            }
    }
    if (!st) st = ep_cluster_allreduce_f64(cl, load, (int)LE, EP_REDUCE_SUM);
    if (!st) {
        ep_moe_free(*moe);
        *moe = NULL;
        mo->placement = EP_PLACE_EPLB;
        mo->expert_load = load;
        st = ep_moe_init(cfg, cl, w, mo, moe);
        mo->expert_load = NULL;
    }
    free(load);
    return st;
}

int ep_cmd_bench(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "comm")) return ep_cmd_bench_comm(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "kernels")) return ep_cmd_bench_kernels(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "sched")) return ep_cmd_bench_sched(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "serve")) return ep_cmd_bench_serve(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "kl")) return ep_cmd_bench_kl(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "model")) return ep_cmd_bench_model(argc - 1, argv + 1);
    bench_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;

    ep_cluster *cl = NULL;
    ep_weights *w = NULL;
    ep_moe *moe = NULL;
    bench_policy *bp = NULL;
    float **x = NULL, *y = NULL, *yref = NULL;
    int64_t *recv_max = NULL, *recv_sum = NULL; // [n_layers] received pairs, max/sum over ranks
    ep_comm_stats *lst = NULL;                  // [n_layers] counters of one step
    ep_trace *trace = NULL;                     // --routes-from
    ep_routes trace_routes;                     // this rank's replayed routes of one layer
    memset(&trace_routes, 0, sizeof trace_routes);
    int n_pol = 0;
    bool eplb = false; // --placement eplb: re-placed after observing the warm-up
    ep_model_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    ep_status st = EP_OK;
    rc = 1;

    if ((st = ep_cluster_init(&argc, &argv, a.ranks_per_node, &cl))) {
        fprintf(stderr, "epserve bench: %s\n", ep_last_error());
        return 1;
    }
    bool root = cl->rank == 0;
    bool progress = !a.quiet && root && isatty(STDERR_FILENO);

    ep_moe_opts mo;
    if ((st = ep_model_cfg_load(a.model, &cfg))) goto setup_done;
    ep_moe_opts_default(&mo, &cfg);
    mo.cap_tokens = a.tokens;
    mo.with_reference = a.check;
    if ((st = ep_moe_backend_parse(a.backend, &mo.backend))) goto setup_done;
    if ((st = ep_place_kind_parse(a.placement, &mo.placement))) goto setup_done;
    // EPLB starts contiguous, observes the warm-up loads, then re-places.
    eplb = mo.placement == EP_PLACE_EPLB;
    if (eplb) mo.placement = EP_PLACE_CONTIGUOUS;
    mo.redundant_experts = a.redundant_experts;
    mo.home_only = a.home_only;
    mo.micro_batches = a.micro_batches;
    mo.phase_barrier = a.phase_barrier;
    if ((st = ep_comm_wire_parse("--wire", a.wire, &mo.wire))) goto setup_done;
    if (a.dispatch) {
        ep_dispatch_mode dm;
        if ((st = ep_dispatch_mode_parse("--dispatch", a.dispatch, &dm))) goto setup_done;
        mo.dispatch = (int)dm;
    }
    {
        ep_dispatch_mode dm;
        if ((st = ep_moe_dispatch_mode(&mo, cl, &dm))) goto setup_done;
        a.dispatch_used = ep_dispatch_mode_name(dm);
    }
    if ((st = ep_weight_dtype_parse(a.expert_dtype, &mo.expert_dtype))) {
        st = ep_error_prefix(st, "--expert-dtype");
        goto setup_done;
    }
    if (!domain_valid(a.domain)) {
        st = ep_errorf(EP_ERR_ARG,
                       "--domain: expected general, math, code, chat or mix, found '%s'", a.domain);
        goto setup_done;
    }

    if (a.routes_from) {
        // Replay: the trace decides; one row, no policy.
        n_pol = 1;
        bp = ep_xcalloc(1, sizeof *bp);
        snprintf(bp[0].label, sizeof bp[0].label, "replay");
        mo.max_k = EP_MAX(mo.max_k, 2 * cfg.k_base);
        if ((st = ep_trace_load(a.routes_from, &cfg, mo.max_k, &trace))) goto setup_done;
        ep_routes_init(&trace_routes, EP_MAX(a.tokens, 1), mo.max_k, cfg.k_base);
    } else {
        // Policies: one per comma-separated entry.
        char *list = ep_xstrdup(a.routing), *save = NULL;
        for (char *p = list; *p; p++)
            n_pol += *p == ',';
        n_pol++;
        bp = ep_xcalloc((size_t)n_pol, sizeof *bp);
        int i = 0;
        for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if ((st = ep_policy_create(&cfg, tok, &bp[i].pol))) {
                free(list);
                n_pol = i;
                goto setup_done;
            }
            ep_arg_policy_label(tok, bp[i].label, sizeof bp[i].label);
            if (ep_policy_max_k(bp[i].pol) > mo.max_k) mo.max_k = ep_policy_max_k(bp[i].pol);
            i++;
        }
        n_pol = i;
        free(list);
        if (n_pol == 0) {
            st = ep_errorf(EP_ERR_ARG, "--routing: no policy named in '%s'", a.routing);
            goto setup_done;
        }
    }

    if ((st = ep_weights_open(&cfg, &w))) goto setup_done;
    // What auto stands for, for the header, the JSON and the bound below.
    if ((st = ep_weights_expert_dtype(w, &mo.expert_dtype))) goto setup_done;
    a.expert_dtype = mo.expert_dtype == EP_DTYPE_BF16 ? "bf16" : "f32";
    // Comm-aware Ban and laser see each layer's placement through the
    // routing context ep_moe_forward builds (ep_moe_route_ctx).
    if ((st = ep_moe_init(&cfg, cl, w, &mo, &moe))) goto setup_done;
setup_done:
    // Set-up can fail on some ranks only (a missing shard, memory): agree on
    // it before the first collective of the run, so no rank waits forever.
    {
        // v[0]: some rank failed; v[1]: rank 0 failed (then its message stands
        // for all, as a config error fails every rank alike).
        int64_t v[2] = {st != EP_OK, root && st != EP_OK};
        if (ep_cluster_allreduce_i64(cl, v, 2, EP_REDUCE_MAX) != EP_OK || v[0]) {
            if (st != EP_OK && root)
                fprintf(stderr, "epserve bench: %s\n", ep_last_error());
            else if (st != EP_OK && !v[1])
                fprintf(stderr, "epserve bench (rank %d): %s\n", cl->rank, ep_last_error());
            goto done;
        }
    }

    x = ep_xcalloc((size_t)cfg.n_layers, sizeof(float *));
    for (int l = 0; l < cfg.n_layers; l++)
        if (ep_model_layer_is_moe(&cfg, l))
            x[l] = ep_xmalloc(((size_t)a.tokens * cfg.hidden + 1) * sizeof(float));
    y = ep_xmalloc(((size_t)a.tokens * cfg.hidden + 1) * sizeof(float));
    yref = ep_xmalloc(((size_t)a.tokens * cfg.hidden + 1) * sizeof(float));
    recv_max = ep_xcalloc((size_t)cfg.n_layers, sizeof(int64_t));
    recv_sum = ep_xcalloc((size_t)cfg.n_layers, sizeof(int64_t));
    lst = ep_xcalloc((size_t)cfg.n_layers, sizeof *lst);
    for (int i = 0; i < n_pol; i++) {
        bp[i].per_layer = ep_xcalloc((size_t)cfg.n_layers, sizeof(ep_comm_stats));
        bp[i].step_ms = ep_xcalloc((size_t)a.steps, sizeof(double));
        bp[i].phase_ms = ep_xcalloc((size_t)a.steps * 2, sizeof(double));
        bp[i].layer_imb = ep_xcalloc((size_t)cfg.n_layers, sizeof(double));
        bp[i].k_hist = ep_xcalloc((size_t)mo.max_k + 1, sizeof(int64_t));
        bp[i].rank_load = ep_xcalloc((size_t)cl->world_size, sizeof(double));
    }

    if (eplb &&
        (st = eplb_observe(&moe, w, cl, &cfg, &a, bp, n_pol, trace, &trace_routes, &mo, x, y)))
        goto fail;

    int total_steps = a.warmup + a.steps;
    for (int step = 0; step < total_steps; step++) {
        bool timed = step >= a.warmup;
        make_inputs(&cfg, cl, &a, step, x);
        // Policies take turns inside each step, so drift of a shared machine
        // touches all of them alike.
        for (int i = 0; i < n_pol; i++) {
            memset(lst, 0, (size_t)cfg.n_layers * sizeof *lst);
            const ep_moe_times before = bp[i].times;
            if ((st = ep_cluster_barrier(cl))) goto fail;
            double t0 = ep_now_us();
            for (int l = 0; l < cfg.n_layers; l++) {
                if (!x[l]) continue;
                const ep_routes *r;
                if ((st = run_layer(moe, &bp[i], trace, &trace_routes, &cfg, cl, &a, step, l, x[l],
                                    y, &lst[l], timed ? &bp[i].times : NULL, &r)))
                    goto fail;
                if (timed)
                    for (int t = 0; t < r->n_tokens; t++)
                        bp[i].k_hist[ep_routes_k(r, t)]++;
            }
            // This step's time and phases, each the slowest rank's.
            double ms[3] = {(ep_now_us() - t0) * 1e-3,
                            (bp[i].times.dispatch_us - before.dispatch_us) * 1e-3,
                            (bp[i].times.combine_us - before.combine_us) * 1e-3};
            if ((st = ep_cluster_allreduce_f64(cl, ms, 3, EP_REDUCE_MAX))) goto fail;
            if (timed) {
                bp[i].step_ms[step - a.warmup] = ms[0];
                memcpy(&bp[i].phase_ms[2 * (step - a.warmup)], &ms[1], 2 * sizeof(double));
                for (int l = 0; l < cfg.n_layers; l++) {
                    ep_comm_stats_add(&bp[i].per_layer[l], &lst[l]);
                    ep_comm_stats_add(&bp[i].total, &lst[l]);
                    recv_max[l] = recv_sum[l] = lst[l].recv_pairs;
                }
                if ((st = ep_cluster_allreduce_i64(cl, recv_max, cfg.n_layers, EP_REDUCE_MAX)))
                    goto fail;
                if ((st = ep_cluster_allreduce_i64(cl, recv_sum, cfg.n_layers, EP_REDUCE_SUM)))
                    goto fail;
                for (int l = 0; l < cfg.n_layers; l++) {
                    if (!x[l] || recv_sum[l] == 0) continue;
                    double imb = (double)recv_max[l] / ((double)recv_sum[l] / cl->world_size);
                    bp[i].layer_imb[l] += imb;
                    bp[i].imbalance_sum += imb;
                    bp[i].imbalance_n++;
                }
            }
            if (progress)
                fprintf(stderr, "\rbench: step %d/%d (%s) policy %s        ", step + 1, total_steps,
                        timed ? "timed" : "warm-up", bp[i].label);
        }
        // Correctness pass, outside the timing: the same layers against the reference.
        if (timed && a.check) {
            for (int i = 0; i < n_pol; i++)
                for (int l = 0; l < cfg.n_layers; l++) {
                    if (!x[l]) continue;
                    const ep_routes *r;
                    if ((st = run_layer(moe, &bp[i], trace, &trace_routes, &cfg, cl, &a, step, l,
                                        x[l], y, NULL, NULL, &r)))
                        goto fail;
                    st = bp[i].pol ? ep_moe_reference(moe, bp[i].pol, l, x[l], a.tokens, yref)
                                   : ep_moe_reference_routes(moe, l, r, x[l], yref);
                    if (st) goto fail;
                    // BF16 experts (GPU, or CPU with --expert-dtype bf16) against the
                    // fp32 reference: the BF16 budget of docs/cuda.md.
                    bool b16 =
                        mo.backend == EP_MOE_BACKEND_CUDA || mo.expert_dtype == EP_DTYPE_BF16;
                    double tol = b16 ? 3e-2 : 1e-4;
                    // A lossy wire has its own budget (docs/wire-format.md):
                    // bf16/f16 rows the BF16 one, fp8 dispatch 0.15.
                    if (mo.wire == EP_DTYPE_F8_E4M3)
                        tol = EP_MAX(tol, 0.15);
                    else if (mo.wire != EP_DTYPE_F32)
                        tol = EP_MAX(tol, 3e-2);
                    double e = ep_moe_rel_err(y, yref, a.tokens, cfg.hidden, tol, &bp[i].n_wrong);
                    if (e > bp[i].max_rel_err) bp[i].max_rel_err = e;
                    bp[i].n_checked += a.tokens;
                }
        }
    }
    if (progress) fprintf(stderr, "\r%60s\r", "");
    if (a.save_routes &&
        (st = save_routes(moe, &bp[0], trace, &trace_routes, &cfg, cl, &a, mo.max_k, x, y)))
        goto fail;

    // Reduce to rank 0's view: counters summed, errors maxed.
    for (int i = 0; i < n_pol; i++) {
        double my_load = (double)bp[i].total.recv_pairs;
        if ((st = ep_cluster_allgather_f64(cl, &my_load, 1, bp[i].rank_load))) goto fail;
        if ((st = reduce_stats(cl, &bp[i].total, 1))) goto fail;
        EP_ASSERT(sizeof bp[i].times == 5 * sizeof(double));
        if ((st = ep_cluster_allreduce_f64(cl, &bp[i].times.route_us, 5, EP_REDUCE_MAX))) goto fail;
        if ((st = reduce_stats(cl, bp[i].per_layer, cfg.n_layers))) goto fail;
        if ((st = ep_cluster_allreduce_i64(cl, bp[i].k_hist, mo.max_k + 1, EP_REDUCE_SUM)))
            goto fail;
        int64_t cnt[2] = {bp[i].n_wrong, bp[i].n_checked};
        if ((st = ep_cluster_allreduce_i64(cl, cnt, 2, EP_REDUCE_SUM))) goto fail;
        bp[i].n_wrong = cnt[0];
        bp[i].n_checked = cnt[1];
        if ((st = ep_cluster_allreduce_f64(cl, &bp[i].max_rel_err, 1, EP_REDUCE_MAX))) goto fail;
    }

    if (root) {
        int64_t tokens_total = (int64_t)a.tokens * cl->world_size;
        json_t *jpol = json_array();
        // Speedups are against the first policy listed (baseline by convention).
        double base_tps = policy_tps(&bp[0], a.steps, tokens_total);
        for (int i = 0; i < n_pol; i++)
            json_array_append_new(jpol, policy_json(&bp[i], &cfg, a.steps, tokens_total, base_tps,
                                                    a.check, mo.max_k, cl->world_size));
        print_table(&cfg, cl, &a, bp, n_pol, jpol);
        json_t *res = json_object();
        json_object_set_new(res, "model", json_string(cfg.name));
        json_object_set_new(res, "world_size", json_integer(cl->world_size));
        json_object_set_new(res, "n_nodes", json_integer(cl->n_nodes));
        json_object_set_new(
            res, "ranks_per_node",
            json_integer(cl->ranks_per_node ? cl->ranks_per_node : cl->world_size / cl->n_nodes));
        json_object_set_new(res, "tokens_per_rank", json_integer(a.tokens));
        json_object_set_new(res, "steps", json_integer(a.steps));
        json_object_set_new(res, "warmup", json_integer(a.warmup));
        json_object_set_new(res, "backend", json_string(ep_moe_backend_name(mo.backend)));
        json_object_set_new(res, "transport",
                            json_string(mo.backend == EP_MOE_BACKEND_CUDA ? "nccl" : "mpi"));
        json_object_set_new(res, "wire_dtype", json_string(a.wire));
        json_object_set_new(res, "micro_batches", json_integer(a.micro_batches));
        json_object_set_new(res, "phase_barrier", json_boolean(a.phase_barrier));
        json_object_set_new(res, "dispatch", json_string(a.dispatch_used));
        json_object_set_new(
            res, "expert_dtype",
            json_string(mo.backend == EP_MOE_BACKEND_CUDA ? "bf16" : a.expert_dtype));
        json_object_set_new(res, "placement", json_string(a.placement));
        json_object_set_new(res, "redundant_experts", json_integer(a.redundant_experts));
        json_object_set_new(res, "replica_choice", json_boolean(!a.home_only));
        json_object_set_new(res, "domain", json_string(a.domain));
        json_object_set_new(res, "k_base", json_integer(cfg.k_base));
        json_object_set_new(res, "n_experts", json_integer(cfg.n_experts));
        json_object_set_new(res, "policies", jpol);
        st = EP_OK;
        if (a.json_path)
            st = ep_json_write_atomic(a.json_path, res, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
        if (!st && a.plot_dir) st = ep_bench_plot(res, a.plot_dir);
        json_decref(res);
        if (st) goto fail_root;
    }
    rc = 0;
    goto done;

fail:
    fprintf(stderr, "epserve bench (rank %d): %s\n", cl ? cl->rank : 0, ep_last_error());
    // A failure on one rank would leave the others waiting in a collective.
    if (cl && cl->world_size > 1) ep_cluster_abort(cl, 1);
    goto done;
fail_root:
    fprintf(stderr, "epserve bench: %s\n", ep_last_error());
done:
    if (bp)
        for (int i = 0; i < n_pol; i++) {
            ep_policy_free(bp[i].pol);
            free(bp[i].per_layer);
            free(bp[i].step_ms);
            free(bp[i].phase_ms);
            free(bp[i].layer_imb);
            free(bp[i].k_hist);
            free(bp[i].rank_load);
        }
    free(bp);
    if (x)
        for (int l = 0; l < cfg.n_layers; l++)
            free(x[l]);
    free(x);
    free(y);
    free(yref);
    free(recv_max);
    free(recv_sum);
    ep_trace_free(trace);
    ep_routes_free(&trace_routes);
    free(lst);
    ep_moe_free(moe);
    ep_weights_free(w);
    ep_cluster_free(cl);
    return rc;
}
