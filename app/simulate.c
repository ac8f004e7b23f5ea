// `epserve simulate`: projects a model's step time, throughput and
// all-to-all bytes on a cluster preset under several routing policies, from
// the real router and dispatch planner (sim/). Prints a table and writes
// JSON; it runs in one process and never touches MPI or a GPU.
#include "app/commands.h"
#include "router/policy.h"
#include "sim/freq.h"
#include "sim/sim.h"
#include "sim/trace.h"

#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_util.h"

typedef struct {
    const char *model, *cluster, *routing, *mode, *placement, *wire, *json_path, *routes_from;
    const char *dispatch, *routes_freq, *freq_lang;
    double freq_temp;
    int tokens, sample_tokens, layers, context, replicas, quiet;
    uint64_t seed;
} sim_args;

static void usage(FILE *f)
{
    fprintf(
        f, "usage: epserve simulate --model M --cluster C [options]\n"
           "  --model M            preset name, model YAML, or checkpoint directory\n"
           "  --cluster C          preset name (configs/clusters: 1x8-h100 ... 8x8-h200) or YAML\n"
           "  --routing P[,P...]   policies or routing YAML files (defaults: see the last lines);\n"
           "                       the first one is the speedup reference\n"
           "  --mode M             prefill | decode (default prefill)\n"
           "  --tokens T           tokens per GPU per step (prefill default 4096; decode:\n"
           "                       sequences per GPU, default 64)\n"
           "  --context N          prefill: prompt length (default 2048); decode: cached\n"
           "                       tokens per sequence (default 2048)\n"
           "  --sample-tokens S    tokens per GPU actually routed, volumes scaled by T/S\n"
           "                       (default: 8192 over all GPUs, at least 32 per GPU); 0: all T\n"
           "  --layers N           MoE layers routed, evenly spaced (default 6); 0: all\n"
           "  --placement KIND     contiguous | round_robin (default contiguous)\n"
           "  --replicas N         also price EPLB placements with N redundant slots per layer\n"
           "                       (rows '<policy>+eplb'); default: the cluster's\n"
           "                       redundant_experts (0 in the shipped presets)\n"
           "  --wire DTYPE         bf16 | f16 | f32 | fp8 dispatch/combine payload (default\n"
           "                       bf16); fp8: e4m3 dispatch + a scale per 128 channels,\n"
           "                       bf16 combine\n"
           "  --routes-from FILE   replay a routing trace (JSON lines or CSV, as bench) instead\n"
           "                       of routing; one row named 'replay'\n"
           "  --routes-freq CSV    route logits drawn from real per-layer expert frequencies\n"
           "                       (a Qwen3-30B-A3B <task>_avg_activation.csv; the model must\n"
           "                       have as many experts) instead of the synthetic gate; file\n"
           "                       layers are stretched over the model's MoE layers\n"
           "  --freq-lang L        language rows of --routes-freq (default English)\n"
           "  --freq-temp X        score temperature of --routes-freq (default 1)\n"
           "  --dispatch D         hier | flat (default hier on more than one node, else flat):\n"
           "                       hier = once per node over RDMA, then NVLink (DeepEP normal\n"
           "                       kernels); flat = once per destination GPU\n"
           "  --seed S             input stream seed (default 1)\n"
           "  --json FILE          write the results as JSON\n"
           "  --quiet              no progress line\n");
    fprintf(f, "default routing: baseline and the model's shipped calibrated Ban and Ban&Pick\n"
               "profiles (calibrated/<model>-ban-calibrated, calibrated/<model>-calibrated;\n"
               "docs/synthetic.md), else baseline,ban,banpick\n");
}

static int parse_int(const char *opt, const char *s, int *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!end || *end || v < 0 || v > 1 << 28) {
        fprintf(stderr, "epserve simulate: option --%s: expected an integer >= 0, found '%s'\n",
                opt, s);
        return 2;
    }
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv, sim_args *a)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"cluster", required_argument, 0, 'c'},
                                         {"routing", required_argument, 0, 'r'},
                                         {"mode", required_argument, 0, 'M'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"context", required_argument, 0, 'x'},
                                         {"sample-tokens", required_argument, 0, 's'},
                                         {"layers", required_argument, 0, 'l'},
                                         {"placement", required_argument, 0, 'p'},
                                         {"replicas", required_argument, 0, 'R'},
                                         {"wire", required_argument, 0, 'W'},
                                         {"seed", required_argument, 0, 'S'},
                                         {"json", required_argument, 0, 'j'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"routes-from", required_argument, 0, 'F'},
                                         {"routes-freq", required_argument, 0, 'f'},
                                         {"freq-lang", required_argument, 0, 'L'},
                                         {"freq-temp", required_argument, 0, 'T'},
                                         {"dispatch", required_argument, 0, 'D'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->routing = NULL; // default_routing() once the model is known
    a->mode = "prefill";
    a->placement = "contiguous";
    a->wire = "bf16";
    a->tokens = a->context = a->sample_tokens = a->layers = -1;
    a->replicas = -1; // -1: the cluster's redundant_experts
    a->seed = 1;
    a->freq_temp = -1; // unset: 1
    optind = 1;
    int c, li = 0, rc = 0;
    while ((c = getopt_long(argc, argv, "", opts, &li)) != -1) {
        switch (c) {
        case 'm':
            a->model = optarg;
            break;
        case 'c':
            a->cluster = optarg;
            break;
        case 'r':
            a->routing = optarg;
            break;
        case 'M':
            a->mode = optarg;
            break;
        case 't':
            rc = parse_int("tokens", optarg, &a->tokens);
            break;
        case 'x':
            rc = parse_int("context", optarg, &a->context);
            break;
        case 's':
            rc = parse_int("sample-tokens", optarg, &a->sample_tokens);
            break;
        case 'l':
            rc = parse_int("layers", optarg, &a->layers);
            break;
        case 'p':
            a->placement = optarg;
            break;
        case 'R':
            rc = parse_int("replicas", optarg, &a->replicas);
            break;
        case 'W':
            a->wire = optarg;
            break;
        case 'S': {
            char *end = NULL;
            a->seed = strtoull(optarg, &end, 10);
            if (!end || *end) {
                fprintf(stderr,
                        "epserve simulate: option --seed: expected an integer, found '%s'\n",
                        optarg);
                return 2;
            }
            break;
        }
        case 'j':
            a->json_path = optarg;
            break;
        case 'F':
            a->routes_from = optarg;
            break;
        case 'q':
            a->quiet = 1;
            break;
        case 'f':
            a->routes_freq = optarg;
            break;
        case 'L':
            a->freq_lang = optarg;
            break;
        case 'D':
            a->dispatch = optarg;
            break;
        case 'T': {
            char *end = NULL;
            a->freq_temp = strtod(optarg, &end);
            if (!end || *end || !(a->freq_temp > 0) || !isfinite(a->freq_temp)) {
                fprintf(stderr,
                        "epserve simulate: option --freq-temp: expected a number > 0, found "
                        "'%s'\n",
                        optarg);
                return 2;
            }
            break;
        }
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return 2;
        }
        if (rc) return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "epserve simulate: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!a->model || !a->cluster) {
        fprintf(stderr, "epserve simulate: --model and --cluster are required\n\n");
        usage(stderr);
        return 2;
    }
    if (strcmp(a->mode, "prefill") && strcmp(a->mode, "decode")) {
        fprintf(stderr, "epserve simulate: --mode: expected prefill or decode, found '%s'\n",
                a->mode);
        return 2;
    }
    if (a->dispatch && strcmp(a->dispatch, "hier") && strcmp(a->dispatch, "flat")) {
        fprintf(stderr, "epserve simulate: --dispatch: expected hier or flat, found '%s'\n",
                a->dispatch);
        return 2;
    }
    if (!a->routes_freq && (a->freq_lang || a->freq_temp > 0)) {
        fprintf(stderr, "epserve simulate: --freq-lang and --freq-temp need --routes-freq\n");
        return 2;
    }
    if (!a->freq_lang) a->freq_lang = "English";
    if (!(a->freq_temp > 0)) a->freq_temp = 1.0;
    if (a->routes_from && a->routes_freq) {
        fprintf(stderr, "epserve simulate: --routes-from and --routes-freq exclude each other "
                        "(a trace has its own routes)\n");
        return 2;
    }
    if (a->tokens == 0 || a->context == 0) {
        fprintf(stderr, "epserve simulate: --tokens and --context must be >= 1\n");
        return 2;
    }
    return 0;
}

// Splits "a,b,c" into at most cap entries (pointers into buf).
static int split_list(char *buf, const char **out, int cap)
{
    int n = 0;
    for (char *tok = strtok(buf, ","); tok && n < cap; tok = strtok(NULL, ","))
        if (*tok) out[n++] = tok;
    return n;
}

static void print_table(const ep_model_cfg *cfg, const ep_sim_cluster *cl, const sim_args *a,
                        const ep_sim_opts *o, const ep_sim_report *rep)
{
    const int W = ep_sim_cluster_gpus(cl);
    int S = ep_sim_sample_tokens(o, W);
    printf("# epserve simulate: model %s (%d MoE of %d layers, %d experts, top-%d) on %s "
           "(%d GPUs, %d nodes x %d, %s)\n",
           cfg->name, ep_model_n_moe_layers(cfg), cfg->n_layers, cfg->n_experts, cfg->k_base,
           cl->name, W, cl->n_nodes, cl->gpus_per_node, cl->gpu);
    printf("# mode %s: %d %s per GPU per step, context %d; %s %d tokens per GPU (volumes x%.3g);"
           " wire %s; placement %s%s\n",
           a->mode, o->tokens, o->decode ? "sequences" : "tokens", o->context,
           a->routes_from ? "replayed" : "routed", S, (double)o->tokens / S, a->wire, a->placement,
           o->n_redundant ? " (+eplb rows)" : "");
    if (a->routes_from) printf("# routes replayed from %s\n", a->routes_from);
    if (a->routes_freq)
        printf("# logits drawn from the frequencies of %s (%s, temperature %g; file layers "
               "stretched over the MoE layers)\n",
               a->routes_freq, a->freq_lang, a->freq_temp);
    printf("# dispatch %s: %s\n", o->hier ? "hier" : "flat",
           o->hier ? "dispatch/combine times from the two-stage model (RDMA once per node, then "
                     "NVLink; table below)"
                   : "one copy per destination GPU");
    printf("# MoE layers routed (%d):", rep->n_sampled);
    for (int i = 0; i < rep->n_sampled; i++)
        printf(" %d", rep->layers[i]);
    printf("; the MoE part of the other layers is their mean; routing took %.1f s\n", rep->route_s);
    printf("# %-22s %6s %10s %10s %10s %7s %7s %6s %9s %9s %9s %9s %9s %10s %7s\n", "policy",
           "avg_k", "bytes", "inter", "base", "saved", "saved_i", "imbal", "dense", "dispatch",
           "experts", "combine", "step", "tokens/s", "speedup");
    printf("# %-22s %6s %10s %10s %10s %7s %7s %6s %9s %9s %9s %9s %9s %10s %7s\n", "(name)", "(K)",
           "(B/tok/l)", "(B/tok/l)", "(B/tok/l)", "(%)", "(%)", "(x)", "(ms)", "(ms)", "(ms)",
           "(ms)", "(ms)", "(per GPU)", "(x)");
    for (int i = 0; i < rep->n_pol; i++) {
        const ep_sim_result *r = &rep->res[i];
        printf("  %-22s %6.2f %10.0f %10.0f %10.0f %7.1f %7.1f %6.2f %9.2f %9.2f %9.2f %9.2f "
               "%9.2f %10.0f %7.3f\n",
               r->label, r->avg_k, r->bytes_per_token_layer, r->inter_bytes_per_token_layer,
               r->base_bytes_per_token_layer, r->saved_pct, r->saved_inter_pct, r->load_imbalance,
               (r->dense_us + r->head_us) * 1e-3, r->dispatch_us * 1e-3, r->experts_us * 1e-3,
               r->combine_us * 1e-3, r->step_us * 1e-3, r->tokens_per_s_gpu, r->speedup);
    }
    if (cl->n_nodes > 1 || o->hier) {
        printf("# two-stage (hier) model of the same routes: bytes per routed token per MoE layer, "
               "ms per step\n");
        printf("# %-22s %10s %10s %10s %10s %7s %9s %9s %9s %9s\n", "policy", "rdma", "nvlink",
               "flat_inter", "rdma_base", "saved_r", "d_rdma", "d_nvlink", "c_nvlink", "c_rdma");
        for (int i = 0; i < rep->n_pol; i++) {
            const ep_sim_result *r = &rep->res[i];
            printf("  %-22s %10.0f %10.0f %10.0f %10.0f %7.1f %9.2f %9.2f %9.2f %9.2f\n", r->label,
                   r->hier_rdma_bytes_per_token_layer, r->hier_nvlink_bytes_per_token_layer,
                   r->inter_bytes_per_token_layer, r->hier_base_rdma_bytes_per_token_layer,
                   r->hier_saved_rdma_pct, r->stage_us[0][EP_SIM_STAGE_RDMA] * 1e-3,
                   r->stage_us[0][EP_SIM_STAGE_NVLINK] * 1e-3,
                   r->stage_us[1][EP_SIM_STAGE_NVLINK] * 1e-3,
                   r->stage_us[1][EP_SIM_STAGE_RDMA] * 1e-3);
        }
    }
    if (cl->n_nodes > 1 || o->hier)
        printf("# rdma / nvlink: the two-stage model's stage-1 (inter-node) and stage-2 bytes, "
               "from the planner's hier mode; flat_inter: the flat inter column; rdma_base / "
               "saved_r: static top-%d two-stage and the RDMA bytes saved vs it; d_*, c_*: "
               "dispatch and combine stage times\n",
               cfg->k_base);
    printf("# bytes: dispatch + combine to other GPUs per routed token per MoE layer; inter: the "
           "part crossing nodes; base: static top-%d on the same placement; saved / saved_i: vs "
           "base, all / inter-node; imbal: max/mean pairs per GPU; times per step, all layers "
           "(dense incl. lm-head)\n",
           cfg->k_base);
}

static ep_status write_json(const char *path, const ep_model_cfg *cfg, const ep_sim_cluster *cl,
                            const sim_args *a, const ep_sim_opts *o, const ep_sim_report *rep)
{
    json_t *root = json_object();
    json_object_set_new(root, "model", json_string(cfg->name));
    json_object_set_new(root, "cluster", json_string(cl->name));
    json_object_set_new(root, "gpus", json_integer(ep_sim_cluster_gpus(cl)));
    json_object_set_new(root, "nodes", json_integer(cl->n_nodes));
    json_object_set_new(root, "mode", json_string(a->mode));
    json_object_set_new(root, "tokens_per_gpu", json_integer(o->tokens));
    json_object_set_new(root, "context", json_integer(o->context));
    json_object_set_new(root, "sample_tokens_per_gpu",
                        json_integer(ep_sim_sample_tokens(o, ep_sim_cluster_gpus(cl))));
    json_object_set_new(root, "wire", json_string(a->wire));
    json_object_set_new(root, "placement", json_string(a->placement));
    json_object_set_new(root, "dispatch", json_string(o->hier ? "hier" : "flat"));
    json_object_set_new(root, "routing_source",
                        json_string(a->routes_from   ? a->routes_from
                                    : a->routes_freq ? a->routes_freq
                                                     : "synthetic"));
    json_object_set_new(root, "redundant_slots", json_integer(o->n_redundant));
    json_t *layers = json_array();
    for (int i = 0; i < rep->n_sampled; i++)
        json_array_append_new(layers, json_integer(rep->layers[i]));
    json_object_set_new(root, "layers_routed", layers);
    json_t *res = json_array();
    for (int i = 0; i < rep->n_pol; i++) {
        const ep_sim_result *r = &rep->res[i];
        json_t *o1 = json_object();
        json_object_set_new(o1, "policy", json_string(r->label));
        json_object_set_new(o1, "avg_k", json_real(r->avg_k));
        json_object_set_new(o1, "bytes_per_token_layer", json_real(r->bytes_per_token_layer));
        json_object_set_new(o1, "inter_bytes_per_token_layer",
                            json_real(r->inter_bytes_per_token_layer));
        json_object_set_new(o1, "base_bytes_per_token_layer",
                            json_real(r->base_bytes_per_token_layer));
        json_object_set_new(o1, "bytes_saved_pct", json_real(r->saved_pct));
        json_object_set_new(o1, "inter_bytes_saved_pct", json_real(r->saved_inter_pct));
        json_object_set_new(o1, "load_imbalance", json_real(r->load_imbalance));
        json_object_set_new(o1, "dense_ms", json_real((r->dense_us + r->head_us) * 1e-3));
        json_object_set_new(o1, "dispatch_ms", json_real(r->dispatch_us * 1e-3));
        json_object_set_new(o1, "experts_ms", json_real(r->experts_us * 1e-3));
        json_object_set_new(o1, "combine_ms", json_real(r->combine_us * 1e-3));
        json_object_set_new(o1, "step_ms", json_real(r->step_us * 1e-3));
        json_object_set_new(o1, "tokens_per_s_per_gpu", json_real(r->tokens_per_s_gpu));
        json_object_set_new(o1, "speedup", json_real(r->speedup));
        json_object_set_new(o1, "dispatch_bytes", json_integer(r->total.dispatch_bytes));
        json_object_set_new(o1, "combine_bytes", json_integer(r->total.combine_bytes));
        json_object_set_new(o1, "base_dispatch_bytes", json_integer(r->total.base_dispatch_bytes));
        json_object_set_new(o1, "base_combine_bytes", json_integer(r->total.base_combine_bytes));
        json_object_set_new(o1, "hier_rdma_bytes_per_token_layer",
                            json_real(r->hier_rdma_bytes_per_token_layer));
        json_object_set_new(o1, "hier_nvlink_bytes_per_token_layer",
                            json_real(r->hier_nvlink_bytes_per_token_layer));
        json_object_set_new(o1, "hier_base_rdma_bytes_per_token_layer",
                            json_real(r->hier_base_rdma_bytes_per_token_layer));
        json_object_set_new(o1, "hier_rdma_bytes_saved_pct", json_real(r->hier_saved_rdma_pct));
        json_t *sg = json_object();
        json_object_set_new(sg, "dispatch_rdma_ms",
                            json_real(r->stage_us[0][EP_SIM_STAGE_RDMA] * 1e-3));
        json_object_set_new(sg, "dispatch_nvlink_ms",
                            json_real(r->stage_us[0][EP_SIM_STAGE_NVLINK] * 1e-3));
        json_object_set_new(sg, "combine_nvlink_ms",
                            json_real(r->stage_us[1][EP_SIM_STAGE_NVLINK] * 1e-3));
        json_object_set_new(sg, "combine_rdma_ms",
                            json_real(r->stage_us[1][EP_SIM_STAGE_RDMA] * 1e-3));
        json_object_set_new(sg, "dispatch_rdma_bytes",
                            json_integer(r->hier_bytes[0][EP_SIM_STAGE_RDMA]));
        json_object_set_new(sg, "dispatch_nvlink_bytes",
                            json_integer(r->hier_bytes[0][EP_SIM_STAGE_NVLINK]));
        json_object_set_new(sg, "combine_nvlink_bytes",
                            json_integer(r->hier_bytes[1][EP_SIM_STAGE_NVLINK]));
        json_object_set_new(sg, "combine_rdma_bytes",
                            json_integer(r->hier_bytes[1][EP_SIM_STAGE_RDMA]));
        json_object_set_new(o1, "hier_stages", sg);
        json_t *lt = json_array();
        for (int l = 0; l < rep->n_sampled; l++)
            json_array_append_new(lt, json_real(r->layer_step_us[l] * 1e-3));
        json_object_set_new(o1, "layer_moe_ms", lt);
        json_array_append_new(res, o1);
    }
    json_object_set_new(root, "results", res);
    ep_status st = ep_json_write_atomic(path, root, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    json_decref(root);
    return st;
}

typedef struct {
    const ep_trace *trace;
    const ep_model_cfg *cfg;
} replay_ctx;

static void replay_fill(void *user, int layer, int64_t first, int T, ep_routes *r)
{
    const replay_ctx *rc = user;
    ep_trace_fill(rc->trace, rc->cfg, layer, first, T, r);
}

// --routes-freq: the file's rows stretched over the model's MoE layers; each
// (layer, rank) draws from its own stream, so a run is reproducible.
typedef struct {
    const ep_model_cfg *cfg;
    const double *freq; // [n_rows * E]
    int n_rows, n_moe, world;
    double temp;
    uint64_t seed;
} freq_ctx;

static void freq_fill(void *user, int layer, int rank, int T, float *logits)
{
    const freq_ctx *fc = user;
    const int E = fc->cfg->n_experts;
    int m = 0; // MoE index of `layer`
    for (int l = 0; l < layer; l++)
        m += ep_model_layer_is_moe(fc->cfg, l);
    const double *fq = fc->freq + (size_t)ep_freq_row(m, fc->n_moe, fc->n_rows) * E;
    uint64_t rng =
        fc->seed * 0x100000001B3ull + (uint64_t)layer * (uint64_t)fc->world + (uint64_t)rank;
    ep_freq_logits(fq, E, T, fc->temp, &rng, logits);
}

// The rows without --routing: the model's shipped calibrated Ban and
// Ban&Pick profiles (`epserve calibrate` at the paper's settings,
// docs/synthetic.md §7) when both load for it, else the uncalibrated
// defaults. Writes into buf (n bytes).
static const char *default_routing(const ep_model_cfg *cfg, char *buf, size_t n)
{
    char ban[160], banpick[160];
    snprintf(ban, sizeof ban, "calibrated/%s-ban-calibrated", cfg->name);
    snprintf(banpick, sizeof banpick, "calibrated/%s-calibrated", cfg->name);
    const char *specs[2] = {ban, banpick};
    for (int i = 0; i < 2; i++) {
        ep_policy *p = NULL;
        if (ep_policy_create(cfg, specs[i], &p)) {
            ep_clear_error();
            return "baseline,ban,banpick";
        }
        ep_policy_free(p);
    }
    snprintf(buf, n, "baseline,%s,%s", ban, banpick);
    return buf;
}

int ep_cmd_simulate(int argc, char **argv)
{
    sim_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;

    ep_model_cfg cfg;
    ep_sim_cluster cl;
    ep_sim_opts o;
    ep_sim_opts_default(&o);
    ep_status st;
    if ((st = ep_model_cfg_load(a.model, &cfg)) || (st = ep_sim_cluster_load(a.cluster, &cl))) {
        fprintf(stderr, "epserve simulate: %s\n", ep_last_error());
        return st == EP_ERR_ARG ? 2 : 1;
    }
    o.decode = !strcmp(a.mode, "decode");
    o.tokens = a.tokens > 0 ? a.tokens : (o.decode ? 64 : 4096);
    o.context = a.context > 0 ? a.context : 2048;
    if (a.sample_tokens >= 0) o.sample_tokens = a.sample_tokens;
    if (a.layers >= 0) o.sample_layers = a.layers;
    o.n_redundant = a.replicas >= 0 ? a.replicas : cl.redundant_experts;
    o.seed = a.seed;
    o.quiet = a.quiet;
    o.hier = a.dispatch ? !strcmp(a.dispatch, "hier") : cl.n_nodes > 1;
    if ((st = ep_place_kind_parse(a.placement, &o.placement)) || o.placement == EP_PLACE_EPLB) {
        fprintf(stderr,
                "epserve simulate: --placement: expected contiguous or round_robin, found "
                "'%s' (EPLB: --replicas N)\n",
                a.placement);
        return 2;
    }
    if ((st = ep_comm_wire_parse("--wire", a.wire, &o.wire))) {
        fprintf(stderr, "epserve simulate: %s\n", ep_last_error());
        return 2;
    }

    ep_trace *trace = NULL;
    replay_ctx rctx = {NULL, &cfg};
    if (a.routes_from) {
        // rows up to 2·k_base: `epserve route` output of any policy fits
        o.replay_max_k = 2 * cfg.k_base;
        if ((st = ep_trace_load(a.routes_from, &cfg, o.replay_max_k, &trace))) {
            fprintf(stderr, "epserve simulate: %s\n", ep_last_error());
            return st == EP_ERR_ARG ? 2 : 1;
        }
        rctx.trace = trace;
        o.replay = replay_fill;
        o.replay_user = &rctx;
    }
    double *freq = NULL;
    freq_ctx fctx = {.cfg = &cfg,
                     .n_moe = ep_model_n_moe_layers(&cfg),
                     .world = ep_sim_cluster_gpus(&cl),
                     .temp = a.freq_temp,
                     .seed = a.seed};
    if (a.routes_freq) {
        if ((st = ep_freq_load(a.routes_freq, a.freq_lang, cfg.n_experts, &freq, &fctx.n_rows))) {
            fprintf(stderr, "epserve simulate: --routes-freq: %s\n", ep_last_error());
            ep_trace_free(trace);
            return 2;
        }
        fctx.freq = freq;
        o.logits_fn = freq_fill;
        o.logits_user = &fctx;
    }
    char defbuf[400];
    if (!a.routing) a.routing = default_routing(&cfg, defbuf, sizeof defbuf);
    char *rbuf = ep_xstrdup(a.routing);
    const char *pols[32];
    int n_pol = split_list(rbuf, pols, (int)EP_ARRAY_LEN(pols));
    ep_sim_report rep;
    st = ep_sim_run(&cfg, &cl, pols, n_pol, &o, &rep);
    if (st) {
        fprintf(stderr, "epserve simulate: %s\n", ep_last_error());
        free(rbuf);
        free(freq);
        ep_trace_free(trace);
        return st == EP_ERR_ARG || st == EP_ERR_CONFIG ? 2 : 1;
    }
    print_table(&cfg, &cl, &a, &o, &rep);
    if (a.json_path && (st = write_json(a.json_path, &cfg, &cl, &a, &o, &rep)))
        fprintf(stderr, "epserve simulate: %s\n", ep_last_error());
    ep_sim_report_free(&rep);
    free(rbuf);
    free(freq);
    ep_trace_free(trace);
    return st ? 1 : 0;
}
