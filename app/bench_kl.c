// `epserve bench kl`: what a routing policy costs in output quality, as the
// top-N KL divergence of the next-token distribution from baseline routing
// (the measure calibration uses, ep_calib_kl_topn), averaged over every
// position of random token sequences. One process: the plain C reference
// forward (ep_model_reference) holds every expert, so the numbers do not
// depend on the world size; policies that look at placement (comm-aware Ban,
// laser) are given a contiguous placement over --ranks ranks, routing as
// rank 0 would. Also the mean experts per token (from the reference's routes)
// and, per token and layer, the sends rank 0 would make with them: other
// nodes (a node-level dispatch's inter-node sends) and ranks on other nodes
// (a flat dispatch's), and the share of each that the policy saves against
// the same tokens' top-k_base.
#include "app/args.h"
#include "app/commands.h"
#include "cluster/cluster.h"
#include "common/json_util.h"
#include "common/weights.h"
#include "model/model.h"
#include "router/calibrate.h"
#include "router/policy.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: epserve bench kl --model M --routing P1,P2,... [options]\n"
               "  --model M          model preset name, model YAML or checkpoint directory\n"
               "  --routing LIST     policies or routing YAML files, compared with baseline\n"
               "  --seqs N           random sequences (default 8)\n"
               "  --len L            tokens per sequence (default 64)\n"
               "  --seed S           token generator seed (default 12345)\n"
               "  --top N            tokens of the baseline distribution kept (default 1000)\n"
               "  --ranks W          ranks of the contiguous placement placement-aware\n"
               "                     policies see (default 4)\n"
               "  --ranks-per-node R ranks per node of that placement (default 2)\n"
               "  --json F           also write the results to F (atomic)\n"
               "  --help             this text\n"
               "Runs in one process (not under mpirun with several ranks).\n");
}

// An integer option in [lo, 2^24], or a message naming it.
static bool opt_int(const char *opt, const char *s, int lo, int *out)
{
    if (ep_arg_int(s, lo, 1 << 24, out)) return true;
    fprintf(stderr, "epserve bench kl: %s: expected an integer >= %d, found '%s'\n", opt, lo, s);
    return false;
}

typedef struct {
    const char *name;
    ep_policy *pol; // created once
    double kl_mean, kl_max, avg_k;
    ep_route_sends sends; // of this policy's run
} kl_row;

// Reference logits of every sequence under policy p; also its mean K.
static ep_status run_policy(const ep_model_cfg *cfg, ep_model *m, const ep_policy *p,
                            const int *tok, int n_seqs, int len, float *logits, double *avg_k,
                            ep_route_sends *sends)
{
    ep_status st = EP_OK;
    int64_t p0, t0, p1, t1;
    ep_route_sends s0, s1;
    ep_moe_reference_counts(ep_model_moe(m), &p0, &t0);
    ep_moe_reference_sends(ep_model_moe(m), &s0);
    for (int s = 0; s < n_seqs && !st; s++)
        st = ep_model_reference(m, p, tok + (size_t)s * len, len,
                                logits + (size_t)s * len * cfg->vocab);
    ep_moe_reference_counts(ep_model_moe(m), &p1, &t1);
    ep_moe_reference_sends(ep_model_moe(m), &s1);
    *avg_k = t1 > t0 ? (double)(p1 - p0) / (double)(t1 - t0) : 0.0;
    for (int i = 0; i < 2; i++) {
        sends->ranks[i] = s1.ranks[i] - s0.ranks[i];
        sends->inter_ranks[i] = s1.inter_ranks[i] - s0.inter_ranks[i];
        sends->nodes[i] = s1.nodes[i] - s0.nodes[i];
    }
    sends->token_layers = s1.token_layers - s0.token_layers;
    return st;
}

static double saved_pct(int64_t act, int64_t base)
{
    return base > 0 ? 100.0 * (1.0 - (double)act / (double)base) : 0.0;
}

static void print_row(const char *name, double avg_k, double kl_mean, double kl_max,
                      const ep_route_sends *s)
{
    double tl = s->token_layers > 0 ? (double)s->token_layers : 1.0;
    printf("  %-40s %8.3f %12.6f %12.6f %8.4f %7.2f %8.4f %7.2f\n", name, avg_k, kl_mean, kl_max,
           (double)s->nodes[0] / tl, saved_pct(s->nodes[0], s->nodes[1]),
           (double)s->inter_ranks[0] / tl, saved_pct(s->inter_ranks[0], s->inter_ranks[1]));
}

int ep_cmd_bench_kl(int argc, char **argv)
{
    const char *model = NULL, *routing = NULL, *json_out = NULL;
    int n_seqs = 8, len = 64, top = 1000, W = 4, rpn = 2, seed = 12345;
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"routing", required_argument, 0, 'r'},
                                         {"seqs", required_argument, 0, 's'},
                                         {"len", required_argument, 0, 'l'},
                                         {"seed", required_argument, 0, 'S'},
                                         {"top", required_argument, 0, 't'},
                                         {"ranks", required_argument, 0, 'w'},
                                         {"ranks-per-node", required_argument, 0, 'n'},
                                         {"json", required_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'r':
            routing = optarg;
            break;
        case 's':
            if (!opt_int("--seqs", optarg, 1, &n_seqs)) return 2;
            break;
        case 'l':
            if (!opt_int("--len", optarg, 1, &len)) return 2;
            break;
        case 'S':
            if (!opt_int("--seed", optarg, 0, &seed)) return 2;
            break;
        case 't':
            if (!opt_int("--top", optarg, 1, &top)) return 2;
            break;
        case 'w':
            if (!opt_int("--ranks", optarg, 1, &W)) return 2;
            break;
        case 'n':
            if (!opt_int("--ranks-per-node", optarg, 1, &rpn)) return 2;
            break;
        case 'j':
            json_out = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || !model || !routing) {
        fprintf(stderr, "epserve bench kl: --model and --routing are required%s%s\n",
                optind < argc ? "; unexpected argument " : "", optind < argc ? argv[optind] : "");
        usage(stderr);
        return 2;
    }

    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl)) {
        fprintf(stderr, "epserve bench kl: %s\n", ep_last_error());
        return 1;
    }
    if (cl->world_size > 1) {
        fprintf(stderr,
                "epserve bench kl: runs in one process (the reference holds every "
                "expert), found %d ranks\n",
                cl->world_size);
        ep_cluster_free(cl);
        return 2;
    }
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_model *m = NULL;
    char *list = ep_xstrdup(routing);
    int n_pol = 0;
    kl_row rows[64];
    float *base = NULL, *q = NULL;
    int *tok = NULL, *idx = NULL;
    ep_status st = ep_model_cfg_load(model, &cfg);
    if (!st) {
        if (len > cfg.max_pos)
            st = ep_errorf(EP_ERR_ARG, "--len %d: %s holds at most %d tokens", len, cfg.name,
                           cfg.max_pos);
        else if (top > cfg.vocab)
            top = cfg.vocab;
    }
    if (!st) {
        for (char *save = NULL, *t = strtok_r(list, ",", &save); t;
             t = strtok_r(NULL, ",", &save)) {
            if (n_pol == (int)EP_ARRAY_LEN(rows)) {
                st = ep_errorf(EP_ERR_ARG, "--routing: at most %d policies",
                               (int)EP_ARRAY_LEN(rows));
                break;
            }
            rows[n_pol++] = (kl_row){.name = t};
        }
    }
    // Every policy is created once, up front: bad names fail before any
    // loading, and the MoE is sized for the most experts any of them keeps.
    ep_policy *base_pol = NULL;
    int max_k = cfg.k_base;
    if (!st) st = ep_policy_create(&cfg, "baseline", &base_pol);
    for (int i = 0; i < n_pol && !st; i++)
        if (!(st = ep_policy_create(&cfg, rows[i].name, &rows[i].pol)))
            max_k = EP_MAX(max_k, ep_policy_max_k(rows[i].pol));
    if (!st) {
        ep_model_opts mo;
        ep_model_opts_default(&mo, &cfg);
        mo.moe.cap_tokens = len;
        mo.moe.with_reference = true;
        mo.moe.max_k = EP_MAX(mo.moe.max_k, max_k);
        mo.max_seqs = 1;
        mo.max_ctx = len;
        mo.kv_blocks = (len + mo.kv_block_tokens - 1) / mo.kv_block_tokens;
        if (!(st = ep_weights_open(&cfg, &w))) st = ep_model_init(&cfg, cl, w, &mo, &m);
    }
    // Placement-aware policies see the contiguous placement over W ranks (rpn
    // per node), routing as rank 0 of it.
    ep_placement kl_place = {0};
    int *kl_node_of = ep_xmalloc((size_t)W * sizeof(int));
    for (int r = 0; r < W; r++)
        kl_node_of[r] = r / rpn;
    if (!st && !(st = ep_placement_init(&kl_place, EP_PLACE_CONTIGUOUS, cfg.n_experts, W))) {
        const ep_route_ctx kl_ctx = {.place = &kl_place, .node_of = kl_node_of, .rank = 0};
        ep_moe_set_reference_ctx(ep_model_moe(m), &kl_ctx);
    }
    size_t rows_total = (size_t)n_seqs * len;
    if (!st) {
        base = malloc(rows_total * cfg.vocab * sizeof(float));
        q = malloc(rows_total * cfg.vocab * sizeof(float));
        idx = malloc((size_t)cfg.vocab * sizeof(int));
        tok = ep_xmalloc(rows_total * sizeof(int));
        if (!base || !q || !idx)
            st = ep_errorf(EP_ERR_NOMEM, "bench kl: cannot allocate 2 x %zu bytes of logits",
                           rows_total * cfg.vocab * sizeof(float));
    }
    double base_k = 0;
    ep_route_sends base_sends = {0};
    if (!st) {
        ep_rng rng;
        ep_rng_seed(&rng, (uint64_t)seed);
        for (size_t i = 0; i < rows_total; i++)
            tok[i] = (int)(ep_rng_next(&rng) % (uint64_t)cfg.vocab);
        st = run_policy(&cfg, m, base_pol, tok, n_seqs, len, base, &base_k, &base_sends);
    }
    for (int i = 0; i < n_pol && !st; i++) {
        if ((st = run_policy(&cfg, m, rows[i].pol, tok, n_seqs, len, q, &rows[i].avg_k,
                             &rows[i].sends)))
            break;
        double sum = 0, mx = 0;
        for (size_t r = 0; r < rows_total; r++) {
            double kl =
                ep_calib_kl_topn(base + r * cfg.vocab, q + r * cfg.vocab, cfg.vocab, top, idx);
            sum += kl;
            mx = kl > mx ? kl : mx;
        }
        rows[i].kl_mean = sum / (double)rows_total;
        rows[i].kl_max = mx;
    }
    int code = 0;
    if (st) {
        fprintf(stderr, "epserve bench kl: %s\n", ep_last_error());
        code = st == EP_ERR_ARG ? 2 : 1;
    } else {
        printf("# %s: top-%d KL(baseline || policy) of the next-token distribution, %d random "
               "sequences x %d tokens (seed %d), placement-aware policies on %d ranks "
               "contiguous, %d per node\n",
               cfg.name, top, n_seqs, len, seed, W, rpn);
        printf("# sends per token and layer from rank 0: 'nodes' = other nodes (node-level "
               "dispatch), 'xranks' = ranks on other nodes (flat); saved = vs the same tokens' "
               "top-k_base\n");
        printf("# %-40s %8s %12s %12s %8s %7s %8s %7s\n", "policy", "avg K", "KL mean", "KL max",
               "nodes", "saved%", "xranks", "saved%");
        print_row("baseline", base_k, 0.0, 0.0, &base_sends);
        for (int i = 0; i < n_pol; i++)
            print_row(rows[i].name, rows[i].avg_k, rows[i].kl_mean, rows[i].kl_max, &rows[i].sends);
        if (json_out) {
            json_t *root = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:f}", "model", cfg.name,
                                     "top", top, "seqs", n_seqs, "len", len, "seed", seed, "ranks",
                                     W, "ranks_per_node", rpn, "baseline_avg_k", base_k);
            json_t *arr = json_array();
            for (int i = 0; i < n_pol; i++) {
                const ep_route_sends *q = &rows[i].sends;
                json_array_append_new(
                    arr,
                    json_pack("{s:s, s:f, s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "policy",
                              rows[i].name, "avg_k", rows[i].avg_k, "kl_mean", rows[i].kl_mean,
                              "kl_max", rows[i].kl_max, "token_layers", (json_int_t)q->token_layers,
                              "node_sends", (json_int_t)q->nodes[0], "base_node_sends",
                              (json_int_t)q->nodes[1], "inter_rank_sends",
                              (json_int_t)q->inter_ranks[0], "base_inter_rank_sends",
                              (json_int_t)q->inter_ranks[1], "rank_sends", (json_int_t)q->ranks[0],
                              "base_rank_sends", (json_int_t)q->ranks[1]));
            }
            json_object_set_new(root, "policies", arr);
            if (ep_json_write_atomic(json_out, root, JSON_INDENT(2))) {
                fprintf(stderr, "epserve bench kl: %s\n", ep_last_error());
                code = 1;
            }
            json_decref(root);
        }
    }
    ep_policy_free(base_pol);
    for (int i = 0; i < n_pol; i++)
        ep_policy_free(rows[i].pol);
    free(base);
    free(q);
    free(idx);
    free(tok);
    free(list);
    ep_model_free(m);
    ep_placement_free(&kl_place);
    free(kl_node_of);
    ep_weights_free(w);
    ep_cluster_free(cl);
    return code;
}
