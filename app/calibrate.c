// `epserve calibrate`: runs the model over calibration sequences (JSON lines
// of token ids) and writes a banpick routing profile. Only the command line
// and the output header live here; the sweeps are model/calibrate.c and the
// pure parts router/calibrate.c. Rank 0 writes; every rank computes.
#include "app/args.h"
#include "app/commands.h"
#include "common/weights.h"
#include "model/calibrate.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void calibrate_usage(FILE *f)
{
    fprintf(f,
            "usage: epserve calibrate --model M --data calib.jsonl --out profile.yaml [options]\n"
            "  --model M            model preset name, model YAML or checkpoint directory\n"
            "  --data F             JSON lines: {\"tokens\": [ids...], \"domain\": \"math\"} "
            "(domain optional)\n"
            "  --out F              routing YAML to write (policy banpick; atomic)\n"
            "  --domain NAME        domain of lines without one (default general) and the\n"
            "                       profile's active Pick domain (default: the only domain,\n"
            "                       or auto when the data has several); `auto` forces auto\n"
            "  --k-min N            K_min of the layer sweeps and of the profile (default 3)\n"
            "  --top-keys N         key experts kept per domain (default ceil(MoE layers/4))\n"
            "  --key-candidates N   most frequent experts tried per layer and domain (default 2)\n"
            "  --top-tokens N       N of the top-N KL (default 1000; whole vocab if smaller)\n"
            "  --quiet              no progress lines on stderr\n");
}

// Comment lines on top of the profile: how it was made. Nothing that changes
// between identical runs (no time, no world size, no paths but the data's name).
static void make_header(char *h, size_t n, const ep_model_cfg *cfg, const char *data_path,
                        const ep_calib_data *d, const ep_calib_summary *s)
{
    const char *base = strrchr(data_path, '/');
    base = base ? base + 1 : data_path;
    size_t k = 0;
    k += (size_t)snprintf(h + k, n - k,
                          "# Calibrated by `epserve calibrate --model %s --data %s` from %d "
                          "sequences, %lld tokens;\n# domains:",
                          cfg->name, base, d->n_seqs, (long long)s->n_tokens);
    for (int i = 0; i < d->n_domains && k < n; i++) {
        int c = 0;
        for (int q = 0; q < d->n_seqs; q++)
            c += d->domain[q] == i;
        k += (size_t)snprintf(h + k, n - k, " %s (%d)", d->names[i], c);
    }
    if (k >= n) return;
    k += (size_t)snprintf(
        h + k, n - k,
        ".\n# layer_sensitivity: mean top-%d KL of the next-token distributions when only that "
        "layer\n# keeps K_min = %d experts%s; r_min/r_max: min/max of R over every token and MoE "
        "layer;\n# frequency: share of tokens whose top-k_base set holds the expert; key experts: "
        "at most\n# %d per domain, one per layer, the frequent experts whose removal moves the "
        "KL most;\n# des.median_ratio: per MoE layer, the median of r_(j)/r_(j+1) over every "
        "token.\n# See docs/routing.md, \"Calibration\".\n",
        s->top_tokens, s->k_min, s->top_tokens >= cfg->vocab ? " (N is the whole vocabulary)" : "",
        s->top_keys);
}

int ep_cmd_calibrate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"data", required_argument, 0, 'D'},
        {"out", required_argument, 0, 'o'},
        {"domain", required_argument, 0, 'd'},
        {"k-min", required_argument, 0, 'k'},
        {"top-keys", required_argument, 0, 'n'},
        {"key-candidates", required_argument, 0, 'c'},
        {"top-tokens", required_argument, 0, 't'},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model = NULL, *data = NULL, *out = NULL;
    ep_calib_opts co;
    ep_calib_opts_default(&co);
    co.progress = true;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "m:D:o:d:k:n:c:t:qh", opts, NULL)) != -1) {
        int *dst = NULL;
        const char *name = NULL;
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'D':
            data = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'd':
            // `auto`: the profile picks its domain per request (docs/routing.md §4).
            co.auto_domain = !strcmp(optarg, "auto");
            co.active = co.auto_domain ? NULL : optarg;
            break;
        case 'k':
            dst = &co.k_min, name = "--k-min";
            break;
        case 'n':
            dst = &co.top_keys, name = "--top-keys";
            break;
        case 'c':
            dst = &co.key_candidates, name = "--key-candidates";
            break;
        case 't':
            dst = &co.top_tokens, name = "--top-tokens";
            break;
        case 'q':
            co.progress = false;
            break;
        case 'h':
            calibrate_usage(stdout);
            return 0;
        default:
            calibrate_usage(stderr);
            return 2;
        }
        if (dst && !ep_arg_int(optarg, 1, 1 << 20, dst)) {
            fprintf(stderr, "epserve calibrate: %s: expected an integer >= 1, found '%s'\n", name,
                    optarg);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "epserve calibrate: unexpected argument '%s'\n", argv[optind]);
        calibrate_usage(stderr);
        return 2;
    }
    if (!model || !data || !out) {
        fprintf(stderr, "epserve calibrate: --model, --data and --out are required\n");
        calibrate_usage(stderr);
        return 2;
    }

    ep_cluster *cl = NULL;
    ep_status st = ep_cluster_init(&argc, &argv, 0, &cl);
    if (st) {
        {
            // Library messages start with "calibrate: " for API callers; say it once.
            const char *msg = ep_last_error();
            if (!strncmp(msg, "calibrate: ", 11)) msg += 11;
            fprintf(stderr, "epserve calibrate: %s\n", msg);
        }
        return 1;
    }
    ep_log_set_rank(cl->rank);
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_model *m = NULL;
    ep_calib_data d = {0};
    ep_routing_cfg rc = {0};
    ep_calib_summary sum = {0};
    // Every rank reads the model and the data: all of them know every
    // sequence's length, which sets the rounds of each sweep.
    if (!(st = ep_model_cfg_load(model, &cfg)) && !(st = ep_weights_open(&cfg, &w)) &&
        !(st = ep_calib_data_load(data, cfg.vocab, co.active, &d))) {
        if (co.progress && cl->rank == 0)
            fprintf(stderr, "calibrate: %s, %d sequences (%lld tokens, %d domains) on %d rank%s\n",
                    cfg.name, d.n_seqs, (long long)d.off[d.n_seqs], d.n_domains, cl->world_size,
                    cl->world_size > 1 ? "s" : "");
        ep_model_opts mo;
        ep_calib_model_opts(&cfg, &d, &mo);
        if (!(st = ep_model_init(&cfg, cl, w, &mo, &m)))
            st = ep_calibrate(&cfg, cl, m, &d, &co, &rc, &sum);
    }
    // Errors of the inputs are the same on every rank; rank 0 reports them.
    if (!st && cl->rank == 0) {
        char header[4096];
        make_header(header, sizeof header, &cfg, data, &d, &sum);
        st = ep_calib_write(&rc, &cfg, header, out);
        if (!st && co.progress)
            fprintf(stderr, "calibrate: wrote %s (%d sweeps, r_min %.4f r_max %.4f)\n", out,
                    sum.n_sweeps, sum.r_min, sum.r_max);
    }
    int code = st ? (st == EP_ERR_ARG ? 2 : 1) : 0;
    // Input errors are the same on every rank: rank 0 reports them. Another
    // rank reports only what rank 0 did not see. Every rank exits alike.
    int rank0_code = code;
    ep_cluster_bcast(cl, &rank0_code, sizeof rank0_code, 0);
    if (st && (cl->rank == 0 || rank0_code == 0)) {
        // Library messages start with "calibrate: " for API callers; say it once.
        const char *msg = ep_last_error();
        if (!strncmp(msg, "calibrate: ", 11)) msg += 11;
        fprintf(stderr, "epserve calibrate: %s\n", msg);
    }
    int64_t worst = code;
    if (ep_cluster_allreduce_i64(cl, &worst, 1, EP_REDUCE_MAX) == EP_OK) code = (int)worst;
    ep_calib_summary_free(&sum);
    ep_routing_cfg_free(&rc);
    ep_calib_data_free(&d);
    ep_model_free(m);
    ep_weights_free(w);
    ep_cluster_free(cl);
    return code;
}
