// `epserve bench sched`: the trace-driven scheduler check. Routing (the real
// router and policies), EPLB placement, replica choice, dispatch planning and
// the expert-slot budget for a simulated world, in one process; no experts
// run, no MPI. Kept apart from bench_trace.c, whose trace reader the fuzz
// targets build alone.
#include "app/commands.h"

#include "cluster/placement.h"
#include "comm/comm.h"
#include "router/policy.h"
#include "scheduler/budget.h"
#include "sim/freq.h"
#include "sim/sim.h"
#include "sim/trace.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- `epserve bench sched` -------------------------------------------------
// A simulated world of `ranks` ranks routes `tokens` tokens each per step.
// Routes come from real per-layer activation frequencies (a Qwen3-30B-A3B
// <task>_avg_activation.csv: per layer the fraction of tokens whose top-8
// holds each expert) or from a per-token trace (--trace). Frequency mode
// draws each token's logits as log(freq_e) + Gumbel noise, divided by a
// temperature: the top-k of that is a Plackett-Luce sample weighted by the
// frequencies (top-8 marginals close to the file's), and the softmax of it
// gives Ban scores to work on. This score model is ours, not measured.
// EPLB places each layer from the pairs observed in the first `window`
// steps; load_imbalance (max/mean pairs received per rank, per layer and
// step) is measured on the following `steps` steps. Policies that look at
// the placement (laser, comm-aware Ban) route once per placement row with
// that row's per-layer home ranks (contiguous during the window).
// tokens/s is modelled, not timed: each measured MoE layer costs the
// slowest rank's dispatch, routed experts and combine (each phase waits for
// its last rank), priced with a cluster preset's GPU and link numbers
// (sim/cost.c), all layers in sequence.

typedef struct {
    const char *label;
    bool eplb, choice;
    int redundant;
} sched_variant;

typedef struct {
    char source[64], policy[32], placement[48];
    double imb_sum, imb_max;
    int64_t imb_n;
    double *layer_imb; // [n_layers] Σ over steps
    double moe_us;     // modelled MoE time of the measured steps (all layers)
    ep_comm_stats st;
    ep_route_sends sends; // per (token, layer): other ranks / nodes it is sent to
    ep_comm_stats hier;   // the same routes under a node-level (hier) dispatch
} sched_row;

typedef struct {
    const char *model, *freq, *trace, *language, *routing, *json_path, *cluster;
    int ranks, ranks_per_node, tokens, steps, window, redundant;
    bool set_ranks, set_rpn, set_redundant; // given on the command line
    ep_sim_cluster hw;                      // prices tokens/s
    double temp;
    uint64_t seed;
} sched_args;

static void sched_usage(FILE *f)
{
    fprintf(f,
            "usage: epserve bench sched [options]     (one process; simulates the ranks)\n"
            "  --model M              model preset or YAML (default qwen3-30b-a3b)\n"
            "  --freq F[,F...]        per-layer activation CSVs (default GSM8K and MMLU of\n"
            "                         ../shared/data/routing/qwen3-30b-a3b)\n"
            "  --language L           CSV rows to use (default English)\n"
            "  --trace FILE           replay per-token expert ids instead (CSV or JSON lines)\n"
            "  --routing P[,P...]     policies for --freq (default baseline,ban,laser,laser-ban)\n"
            "  --cluster C            cluster preset or YAML: its ranks (nodes x gpus_per_node),\n"
            "                         ranks per node and redundant_experts become the defaults,\n"
            "                         its GPU and links price tokens/s (default: 8 ranks, 4\n"
            "                         per node, priced with 2x8-h100's numbers)\n"
            "  --ranks N              simulated ranks (default 8)\n"
            "  --ranks-per-node N     ranks per node (default 4)\n"
            "  --tokens T             tokens per rank per step (default 256)\n"
            "  --window W             steps observed before EPLB places (default 4)\n"
            "  --steps S              measured steps (default 8)\n"
            "  --redundant-experts R  EPLB extra slots per layer (default 16; with --cluster\n"
            "                         its redundant_experts)\n"
            "  --temp X               score temperature of frequency sampling (default 1)\n"
            "  --seed S               sampling seed (default 1)\n"
            "  --json FILE            write the rows as JSON\n");
}

static int sched_parse(int argc, char **argv, sched_args *a)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"freq", required_argument, 0, 'f'},
                                         {"language", required_argument, 0, 'l'},
                                         {"trace", required_argument, 0, 'T'},
                                         {"routing", required_argument, 0, 'r'},
                                         {"cluster", required_argument, 0, 'c'},
                                         {"ranks", required_argument, 0, 'n'},
                                         {"ranks-per-node", required_argument, 0, 'N'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"window", required_argument, 0, 'w'},
                                         {"steps", required_argument, 0, 's'},
                                         {"redundant-experts", required_argument, 0, 'R'},
                                         {"temp", required_argument, 0, 'x'},
                                         {"seed", required_argument, 0, 'S'},
                                         {"json", required_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->model = "qwen3-30b-a3b";
    a->language = "English";
    a->routing = "baseline,ban,laser,laser-ban";
    a->ranks = 8;
    a->ranks_per_node = 4;
    a->tokens = 256;
    a->window = 4;
    a->steps = 8;
    a->redundant = 16;
    a->temp = 1.0;
    a->seed = 1;
    optind = 1;
    int c, li = 0;
    while ((c = getopt_long(argc, argv, "", opts, &li)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'm':
            a->model = optarg;
            break;
        case 'f':
            a->freq = optarg;
            break;
        case 'l':
            a->language = optarg;
            break;
        case 'T':
            a->trace = optarg;
            break;
        case 'r':
            a->routing = optarg;
            break;
        case 'c':
            a->cluster = optarg;
            break;
        case 'n':
            a->ranks = (int)strtol(optarg, &end, 10);
            a->set_ranks = true;
            break;
        case 'N':
            a->ranks_per_node = (int)strtol(optarg, &end, 10);
            a->set_rpn = true;
            break;
        case 't':
            a->tokens = (int)strtol(optarg, &end, 10);
            break;
        case 'w':
            a->window = (int)strtol(optarg, &end, 10);
            break;
        case 's':
            a->steps = (int)strtol(optarg, &end, 10);
            break;
        case 'R':
            a->redundant = (int)strtol(optarg, &end, 10);
            a->set_redundant = true;
            break;
        case 'x':
            a->temp = strtod(optarg, &end);
            break;
        case 'S':
            a->seed = strtoull(optarg, &end, 10);
            break;
        case 'j':
            a->json_path = optarg;
            break;
        case 'h':
            sched_usage(stdout);
            return 1;
        default:
            sched_usage(stderr);
            return 2;
        }
        if (end && *end) {
            fprintf(stderr, "epserve bench sched: option --%s: expected a number, found '%s'\n",
                    opts[li].name, optarg);
            return 2;
        }
    }
    // The hardware that prices tokens/s; a named cluster also sets the world.
    ep_status st = ep_sim_cluster_load(a->cluster ? a->cluster : "2x8-h100", &a->hw);
    if (st) {
        fprintf(stderr, "epserve bench sched: --cluster: %s\n", ep_last_error());
        return 2;
    }
    if (a->cluster) {
        if (!a->set_ranks) a->ranks = ep_sim_cluster_gpus(&a->hw);
        if (!a->set_rpn) a->ranks_per_node = a->hw.gpus_per_node;
        if (!a->set_redundant) a->redundant = a->hw.redundant_experts;
    }
    if (a->ranks < 1 || a->ranks_per_node < 1 || a->tokens < 1 || a->window < 1 || a->steps < 1 ||
        a->redundant < 0 || !(a->temp > 0)) {
        fprintf(stderr, "epserve bench sched: expected --ranks, --ranks-per-node, --tokens, "
                        "--window, --steps >= 1, --redundant-experts >= 0, --temp > 0\n");
        return 2;
    }
    return 0;
}

// One source (a frequency file or the trace): every policy x placement row.
typedef struct {
    const ep_model_cfg *cfg;
    const sched_args *a;
    int n_pol;
    ep_policy **pol;    // [n_pol] (NULL entries: trace replay)
    const double *freq; // [n_freq_layers * E] or NULL
    int n_freq_layers;
    const ep_trace *trace;
    const char *source;
} sched_source;

// Policies whose choice depends on the placement route once per row.
static bool sched_uses_placement(const ep_policy *p)
{
    return p && (p->cfg.policy == EP_POLICY_LASER || p->cfg.ban.locality);
}

// Per rank of one layer-step of one row: what the cost model needs.
typedef struct {
    int64_t *recv;             // [W] pairs received
    double *disp, *disp_inter; // [W] dispatch bytes sent (all, crossing nodes)
    double *comb, *comb_inter; // [W] combine bytes sent
} sched_step_load;

// The slowest rank's dispatch + experts + combine of one layer (us). A rank
// receives in dispatch the records it returns in combine and the other way
// round, so its combine sends stand for its dispatch receives (and back).
static double sched_layer_us(const sched_args *a, const ep_model_cfg *cfg, const ep_placement *q,
                             const sched_step_load *sl)
{
    double td = 0, tc = 0, te = 0;
    for (int r = 0; r < a->ranks; r++) {
        ep_sim_traffic d = {.send_intra = sl->disp[r] - sl->disp_inter[r],
                            .send_inter = sl->disp_inter[r],
                            .recv_intra = sl->comb[r] - sl->comb_inter[r],
                            .recv_inter = sl->comb_inter[r]};
        ep_sim_traffic c = {.send_intra = d.recv_intra,
                            .send_inter = d.recv_inter,
                            .recv_intra = d.send_intra,
                            .recv_inter = d.send_inter};
        td = fmax(td, ep_sim_a2a_rank_us(&a->hw, &d));
        tc = fmax(tc, ep_sim_a2a_rank_us(&a->hw, &c));
        int active = (int)EP_MIN(sl->recv[r], (int64_t)ep_placement_n_local(q, r));
        te = fmax(te, ep_sim_experts_us(&a->hw, cfg->hidden, cfg->moe_inter, (double)sl->recv[r],
                                        active));
    }
    return td + te + tc;
}

static ep_status sched_run_source(const sched_source *src, const sched_variant *var, int n_var,
                                  sched_row *rows)
{
    const ep_model_cfg *cfg = src->cfg;
    const sched_args *a = src->a;
    const int E = cfg->n_experts, L = cfg->n_layers, W = a->ranks, T = a->tokens;
    int max_k = cfg->k_base;
    for (int p = 0; p < src->n_pol; p++)
        if (src->pol[p] && ep_policy_max_k(src->pol[p]) > max_k)
            max_k = ep_policy_max_k(src->pol[p]);
    int n_nodes = (W + a->ranks_per_node - 1) / a->ranks_per_node;
    int *node_of = ep_xmalloc((size_t)W * sizeof(int));
    for (int r = 0; r < W; r++)
        node_of[r] = r / a->ranks_per_node;
    int groups = cfg->n_group > 0 ? cfg->n_group : 1;

    ep_router *router = NULL;
    ep_placement contig;
    memset(&contig, 0, sizeof contig);
    ep_status st = ep_router_init(cfg, T, &router);
    if (!st) st = ep_placement_init(&contig, EP_PLACE_CONTIGUOUS, E, W);
    if (st) {
        ep_router_free(router);
        free(node_of);
        return st;
    }
    // Routes per [policy][row][rank]; a policy blind to the placement fills
    // row 0 only and every row reads it.
    const size_t n_rt = (size_t)src->n_pol * n_var * W;
    ep_routes *rt = ep_xcalloc(n_rt, sizeof(ep_routes));
    for (size_t i = 0; i < n_rt; i++)
        ep_routes_init(&rt[i], T, max_k, cfg->k_base);
#define RT(p, v, r) (&rt[((size_t)(p)*n_var + (v)) * W + (r)])
    double *load = ep_xcalloc((size_t)src->n_pol * L * E, sizeof(double)); // observed window
    // [n_pol][n_var][L] placements, made after the window
    ep_placement *pl = ep_xcalloc((size_t)src->n_pol * n_var * L, sizeof(ep_placement));
    float *logits = ep_xmalloc((size_t)T * E * sizeof(float));
    int *pair_rank = ep_xmalloc((size_t)T * max_k * sizeof(int));
    int64_t *sent = ep_xcalloc((size_t)W, sizeof(int64_t));
    sched_step_load sl = {.recv = ep_xcalloc((size_t)W, sizeof(int64_t)),
                          .disp = ep_xcalloc((size_t)W * 4, sizeof(double))};
    sl.disp_inter = sl.disp + W;
    sl.comb = sl.disp + 2 * W;
    sl.comb_inter = sl.disp + 3 * W;
    int *visit = ep_xmalloc((size_t)W * sizeof(int));
    uint64_t rng = a->seed * 0x100000001B3ull + 17;

    for (int step = 0; step < a->window + a->steps && !st; step++) {
        bool measure = step >= a->window;
        if (step == a->window) {
            for (int p = 0; p < src->n_pol && !st; p++)
                for (int v = 0; v < n_var && !st; v++)
                    for (int l = 0; l < L && !st; l++) {
                        if (!ep_model_layer_is_moe(cfg, l)) continue;
                        ep_placement *q = &pl[((size_t)p * n_var + v) * L + l];
                        st = var[v].eplb
                                 ? ep_placement_init_eplb(q, load + ((size_t)p * L + l) * E, E,
                                                          var[v].redundant, groups, n_nodes, W)
                                 : ep_placement_init(q, EP_PLACE_CONTIGUOUS, E, W);
                    }
            if (st) break;
        }
        for (int l = 0; l < L && !st; l++) {
            if (!ep_model_layer_is_moe(cfg, l)) continue;
            int moe_l = l - cfg->first_k_dense;
            for (int r = 0; r < W && !st; r++) {
                if (src->freq) {
                    const double *fq = src->freq + (size_t)(moe_l % src->n_freq_layers) * E;
                    ep_freq_logits(fq, E, T, a->temp, &rng, logits);
                }
                for (int p = 0; p < src->n_pol && !st; p++) {
                    ep_policy *pol = src->pol[p];
                    int n_rows = measure && sched_uses_placement(pol) ? n_var : 1;
                    for (int v = 0; v < n_rows && !st; v++) {
                        ep_routes *rr = RT(p, v, r);
                        if (src->freq) {
                            // Placement-aware policies route on the variant's
                            // placement; laser sees every slot when replica
                            // choice is on, else only home ranks.
                            const ep_placement *q =
                                measure ? &pl[((size_t)p * n_var + v) * L + l] : &contig;
                            const ep_route_ctx ctx = {.place = q,
                                                      .node_of = node_of,
                                                      .rank = r,
                                                      .home_only = !(measure && var[v].choice)};
                            st = ep_router_route_logits(router, pol, &ctx, l, logits, T, rr);
                        } else {
                            int64_t first = ((int64_t)step * W + r) * T;
                            ep_trace_fill(src->trace, cfg, l, first, T, rr);
                        }
                    }
                    if (!st && !measure) {
                        const ep_routes *rr = RT(p, 0, r);
                        for (int j = 0; j < ep_routes_nnz(rr); j++)
                            load[((size_t)p * L + l) * E + rr->expert[j]] += 1;
                    }
                }
            }
            if (!measure || st) continue;
            for (int p = 0; p < src->n_pol; p++)
                for (int v = 0; v < n_var; v++) {
                    const ep_placement *q = &pl[((size_t)p * n_var + v) * L + l];
                    const int rv = sched_uses_placement(src->pol[p]) ? v : 0;
                    sched_row *row = &rows[p * n_var + v];
                    memset(sl.recv, 0, (size_t)W * sizeof(int64_t));
                    for (int r = 0; r < W; r++) {
                        const ep_routes *rr = RT(p, rv, r);
                        const int *prk = NULL;
                        if (var[v].choice && q->n_phy > q->n_experts) {
                            memset(sent, 0, (size_t)W * sizeof(int64_t));
                            ep_placement_choose(q, rr, r, sent, visit, pair_rank);
                            prk = pair_rank;
                        }
                        ep_placement_rank_load(q, rr, prk, sl.recv);
                        for (int t = 0; t < rr->n_tokens; t++) {
                            int o = rr->offsets[t];
                            ep_route_sends_add(rr->expert + o, ep_routes_k(rr, t), q->rank_of,
                                               prk ? prk + o : NULL, r, node_of, &row->sends, 0);
                            ep_route_sends_add(rr->base_expert + (size_t)t * rr->k_base, rr->k_base,
                                               q->rank_of, NULL, r, node_of, &row->sends, 1);
                        }
                        row->sends.token_layers += rr->n_tokens;
                        ep_comm_stats cs;
                        memset(&cs, 0, sizeof cs);
                        ep_comm_count(rr, q, prk, r, node_of, cfg->hidden, EP_DTYPE_BF16, &cs);
                        ep_comm_stats_add(&row->st, &cs);
                        ep_comm_stats ch; // priced as before (flat); hier is reported
                        memset(&ch, 0, sizeof ch);
                        ep_comm_count_mode(rr, q, prk, r, node_of, cfg->hidden, EP_DTYPE_BF16,
                                           EP_DISPATCH_HIER, &ch);
                        ep_comm_stats_add(&row->hier, &ch);
                        sl.disp[r] = (double)cs.dispatch_bytes;
                        sl.disp_inter[r] = (double)cs.dispatch_bytes_inter;
                        sl.comb[r] = (double)cs.combine_bytes;
                        sl.comb_inter[r] = (double)cs.combine_bytes_inter;
                    }
                    int64_t mx = 0, sum = 0;
                    for (int r = 0; r < W; r++) {
                        sum += sl.recv[r];
                        if (sl.recv[r] > mx) mx = sl.recv[r];
                    }
                    double imb = sum ? (double)mx * W / (double)sum : 1.0;
                    row->imb_sum += imb;
                    row->imb_n++;
                    if (imb > row->imb_max) row->imb_max = imb;
                    row->layer_imb[l] += imb;
                    row->moe_us += sched_layer_us(a, cfg, q, &sl);
                }
        }
    }
#undef RT
    for (size_t i = 0; i < (size_t)src->n_pol * n_var * L; i++)
        ep_placement_free(&pl[i]);
    for (size_t i = 0; i < n_rt; i++)
        ep_routes_free(&rt[i]);
    ep_placement_free(&contig);
    free(pl);
    free(rt);
    free(load);
    free(logits);
    free(pair_rank);
    free(sent);
    free(sl.recv);
    free(sl.disp);
    free(visit);
    free(node_of);
    ep_router_free(router);
    return st;
}

// Tokens one step admits under the expert-slot budget that the baseline's
// step (tokens_per_step at k_base) fills, every sequence at the row's mean K.
static ep_sched_step sched_budget_step(const sched_row *row, const ep_model_cfg *cfg,
                                       int tokens_per_step)
{
    ep_sched_budget b;
    ep_sched_budget_default(&b, cfg->k_base, ep_model_n_moe_layers(cfg), tokens_per_step);
    double k = row->st.tokens ? (double)row->st.pairs / row->st.tokens : cfg->k_base;
    int n = 4 * tokens_per_step; // a queue long enough that the budget binds
    ep_sched_seq *q = ep_xmalloc((size_t)n * sizeof *q);
    for (int i = 0; i < n; i++)
        q[i] = (ep_sched_seq){.want_tokens = 1, .kv_need = 1, .mean_k = k};
    ep_sched_step st = ep_sched_admit(&b, q, n);
    free(q);
    return st;
}

// Modelled MoE-layer throughput of a row: tokens through all MoE layers per
// second of modelled time (st.tokens counts a token once per layer).
static double sched_tokens_per_s(const sched_row *row, const ep_model_cfg *cfg)
{
    double tokens = (double)row->st.tokens / EP_MAX(1, ep_model_n_moe_layers(cfg));
    return row->moe_us > 0 ? tokens / (row->moe_us * 1e-6) : 0;
}

// Inter-node bytes of s (dispatch + combine): actual (base 0) or top-k_base (1).
static double sched_inter(const ep_comm_stats *s, int base)
{
    return base ? (double)(s->base_dispatch_bytes_inter + s->base_combine_bytes_inter)
                : (double)(s->dispatch_bytes_inter + s->combine_bytes_inter);
}

static double sched_saved(double act, double base)
{
    return base > 0 ? 100.0 * (1.0 - act / base) : 0.0;
}

static json_t *sched_row_json(const sched_row *row, const ep_model_cfg *cfg, int steps,
                              int tokens_per_step)
{
    const ep_comm_stats *t = &row->st;
    json_t *o = json_object();
    json_object_set_new(o, "source", json_string(row->source));
    json_object_set_new(o, "policy", json_string(row->policy));
    json_object_set_new(o, "placement", json_string(row->placement));
    json_object_set_new(o, "avg_k", json_real(t->tokens ? (double)t->pairs / t->tokens : 0));
    json_object_set_new(o, "load_imbalance", json_real(row->imb_n ? row->imb_sum / row->imb_n : 0));
    json_object_set_new(o, "load_imbalance_max", json_real(row->imb_max));
    json_object_set_new(o, "dispatch_bytes", json_integer(t->dispatch_bytes));
    json_object_set_new(o, "combine_bytes", json_integer(t->combine_bytes));
    json_object_set_new(o, "inter_node_bytes",
                        json_integer(t->dispatch_bytes_inter + t->combine_bytes_inter));
    json_object_set_new(o, "base_inter_node_bytes", json_real(sched_inter(t, 1)));
    json_object_set_new(o, "hier_inter_node_bytes", json_real(sched_inter(&row->hier, 0)));
    json_object_set_new(o, "hier_base_inter_node_bytes", json_real(sched_inter(&row->hier, 1)));
    json_object_set_new(o, "node_sends", json_integer(row->sends.nodes[0]));
    json_object_set_new(o, "base_node_sends", json_integer(row->sends.nodes[1]));
    json_object_set_new(o, "inter_rank_sends", json_integer(row->sends.inter_ranks[0]));
    json_object_set_new(o, "base_inter_rank_sends", json_integer(row->sends.inter_ranks[1]));
    json_object_set_new(o, "tokens", json_integer(t->tokens));
    json_object_set_new(o, "pairs", json_integer(t->pairs));
    json_object_set_new(o, "tokens_per_s", json_real(sched_tokens_per_s(row, cfg)));
    ep_sched_step bs = sched_budget_step(row, cfg, tokens_per_step);
    json_object_set_new(o, "tokens_per_step_at_budget", json_integer(bs.tokens));
    json_object_set_new(o, "slots_per_step_at_budget", json_real(bs.slots));
    json_t *li = json_array();
    for (int l = 0; l < cfg->n_layers; l++)
        if (ep_model_layer_is_moe(cfg, l))
            json_array_append_new(li, json_real(row->layer_imb[l] / steps));
    json_object_set_new(o, "layer_load_imbalance", li);
    return o;
}

int ep_cmd_bench_sched(int argc, char **argv)
{
    sched_args a;
    int rc = sched_parse(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;
    ep_model_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    ep_status st = ep_model_cfg_load(a.model, &cfg);
    if (st) {
        fprintf(stderr, "epserve bench sched: %s\n", ep_last_error());
        return 1;
    }
    char defaults[4200];
    if (!a.freq && !a.trace) {
        const char *shared = getenv("EP_SHARED_DIR");
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/data/routing/qwen3-30b-a3b",
                 shared ? shared : EP_SOURCE_DIR "/../shared");
        snprintf(defaults, sizeof defaults, "%s/gsm_avg_activation.csv,%s/mmlu_avg_activation.csv",
                 dir, dir);
        a.freq = defaults;
    }
    const sched_variant var[] = {
        {"contiguous", false, false, 0},
        {"eplb", true, false, 0},
        {"eplb+R", true, false, a.redundant},
        {"eplb+R+choice", true, true, a.redundant},
    };
    const int n_var = a.redundant > 0 ? 4 : 2;

    // Policies (frequency mode) or the one trace row.
    ep_policy **pol = NULL;
    char(*label)[32] = NULL; // row names: the --routing entry (a YAML's base name)
    int n_pol = 0;
    char *list = ep_xstrdup(a.trace ? "trace" : a.routing), *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok && !st; tok = strtok_r(NULL, ",", &save)) {
        pol = ep_xrealloc(pol, (size_t)(n_pol + 1) * sizeof *pol);
        label = ep_xrealloc(label, (size_t)(n_pol + 1) * sizeof *label);
        pol[n_pol] = NULL;
        const char *b = strrchr(tok, '/') ? strrchr(tok, '/') + 1 : tok;
        size_t len = strlen(b);
        if (len > 5 && !strcmp(b + len - 5, ".yaml")) len -= 5;
        snprintf(label[n_pol], sizeof label[n_pol], "%.*s", (int)len, b);
        if (!a.trace) st = ep_policy_create(&cfg, tok, &pol[n_pol]);
        if (!st) n_pol++;
    }
    sched_row *rows = NULL;
    int n_rows = 0;
    char *files = ep_xstrdup(a.trace ? a.trace : a.freq), *fsave = NULL;
    for (char *path = strtok_r(files, ",", &fsave); path && !st;
         path = strtok_r(NULL, ",", &fsave)) {
        sched_source src = {.cfg = &cfg, .a = &a, .n_pol = n_pol, .pol = pol};
        double *freq = NULL;
        ep_trace *trace = NULL;
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        src.source = base;
        if (a.trace) {
            st = ep_trace_load(path, &cfg, cfg.k_base, &trace);
            src.trace = trace;
        } else {
            st = ep_freq_load(path, a.language, cfg.n_experts, &freq, &src.n_freq_layers);
            src.freq = freq;
        }
        if (!st) {
            rows = ep_xrealloc(rows, (size_t)(n_rows + n_pol * n_var) * sizeof *rows);
            sched_row *mine = rows + n_rows;
            memset(mine, 0, (size_t)n_pol * n_var * sizeof *mine);
            for (int p = 0; p < n_pol; p++)
                for (int v = 0; v < n_var; v++) {
                    sched_row *row = &mine[p * n_var + v];
                    snprintf(row->source, sizeof row->source, "%.*s", (int)strcspn(base, "."),
                             base);
                    snprintf(row->policy, sizeof row->policy, "%s", label[p]);
                    if (var[v].redundant > 0)
                        snprintf(row->placement, sizeof row->placement, "eplb+%d%s",
                                 var[v].redundant, var[v].choice ? "+choice" : "");
                    else
                        snprintf(row->placement, sizeof row->placement, "%s", var[v].label);
                    row->layer_imb = ep_xcalloc((size_t)cfg.n_layers, sizeof(double));
                }
            n_rows += n_pol * n_var;
            st = sched_run_source(&src, var, n_var, mine);
        }
        free(freq);
        ep_trace_free(trace);
    }
    free(files);
    free(list);

    if (!st) {
        printf("# epserve bench sched: routing, EPLB placement, replica choice and dispatch "
               "planning on real routing data (no experts run)\n");
        printf("# model: %s (%d experts, top-%d)  ranks: %d (%d per node)  tokens/rank/step: %d  "
               "window: %d  steps: %d  source: %s\n",
               cfg.name, cfg.n_experts, cfg.k_base, a.ranks, a.ranks_per_node, a.tokens, a.window,
               a.steps, a.trace ? "per-token trace" : "frequencies (Gumbel top-k)");
        printf(
            "# tok@budget: tokens one step admits under the slot budget the baseline's %d-token\n"
            "# step fills (%d x k_base x %d MoE layers), every sequence at the row's avg_k\n",
            a.tokens * a.ranks, a.tokens * a.ranks, ep_model_n_moe_layers(&cfg));
        printf("# tokens/s: modelled MoE layers only (slowest rank's dispatch + experts + combine\n"
               "# per layer, bf16), priced with %s (%s); not a timing\n",
               a.hw.name, a.hw.gpu);
        printf("# bytes, inter, saved: flat dispatch (a token once per rank); hier: node-level\n"
               "# (once per other node, then forwarded inside it), inter-node bytes and the\n"
               "# share saved vs the same tokens' top-k_base; nodes: other nodes a token is\n"
               "# sent to per MoE layer\n");
        printf("# %-26s %-10s %-18s %6s %9s %9s %12s %12s %6s %10s %10s %12s %6s %7s\n", "source",
               "policy", "placement", "avg_k", "imb_mean", "imb_max", "bytes/token", "inter/token",
               "saved", "tok@budget", "tokens/s", "hier inter", "saved", "nodes");
        printf("# %-26s %-10s %-18s %6s %9s %9s %12s %12s %6s %10s %10s %12s %6s %7s\n", "", "", "",
               "", "max/mean", "max/mean", "B", "B", "%", "tokens", "model", "B/token", "%",
               "/token");
        for (int i = 0; i < n_rows; i++) {
            const ep_comm_stats *t = &rows[i].st;
            double tok = t->tokens ? (double)t->tokens : 1;
            const ep_route_sends *ns = &rows[i].sends;
            const ep_comm_stats *h = &rows[i].hier;
            printf("  %-26s %-10s %-18s %6.2f %9.3f %9.3f %12.0f %12.0f %6.2f %10d %10.0f %12.0f "
                   "%6.2f %7.4f\n",
                   rows[i].source, rows[i].policy, rows[i].placement, t->pairs / tok,
                   rows[i].imb_n ? rows[i].imb_sum / rows[i].imb_n : 0, rows[i].imb_max,
                   (t->dispatch_bytes + t->combine_bytes) / tok, sched_inter(t, 0) / tok,
                   sched_saved(sched_inter(t, 0), sched_inter(t, 1)),
                   sched_budget_step(&rows[i], &cfg, a.tokens * a.ranks).tokens,
                   sched_tokens_per_s(&rows[i], &cfg), sched_inter(h, 0) / tok,
                   sched_saved(sched_inter(h, 0), sched_inter(h, 1)),
                   (double)ns->nodes[0] / (double)EP_MAX(1, ns->token_layers));
        }
        if (a.json_path) {
            json_t *root = json_object(), *arr = json_array();
            json_object_set_new(root, "model", json_string(cfg.name));
            json_object_set_new(root, "ranks", json_integer(a.ranks));
            json_object_set_new(root, "ranks_per_node", json_integer(a.ranks_per_node));
            json_object_set_new(root, "tokens_per_rank", json_integer(a.tokens));
            json_object_set_new(root, "window", json_integer(a.window));
            json_object_set_new(root, "steps", json_integer(a.steps));
            json_object_set_new(root, "redundant_experts", json_integer(a.redundant));
            json_object_set_new(root, "cluster", json_string(a.hw.name));
            json_object_set_new(root, "tokens_per_s_model",
                                json_string("MoE layers only: slowest rank's dispatch + experts + "
                                            "combine per layer, priced with the cluster preset"));
            for (int i = 0; i < n_rows; i++)
                json_array_append_new(arr,
                                      sched_row_json(&rows[i], &cfg, a.steps, a.tokens * a.ranks));
            json_object_set_new(root, "rows", arr);
            if (json_dump_file(root, a.json_path, JSON_INDENT(2)) != 0)
                st = ep_errorf(EP_ERR_IO, "%s: cannot write the JSON results", a.json_path);
            json_decref(root);
        }
    }
    if (st) fprintf(stderr, "epserve bench sched: %s\n", ep_last_error());
    for (int i = 0; i < n_rows; i++)
        free(rows[i].layer_imb);
    free(rows);
    for (int p = 0; p < n_pol; p++)
        ep_policy_free(pol[p]);
    free(pol);
    free(label);
    return st ? 1 : 0;
}
