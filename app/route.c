// `epserve route`: route gate logits offline with a policy and write JSON
// lines. Only the command line lives here; the work is ep_route_file()
// (router/route_file.c), which tests call directly. Loads no weights.
#include "app/commands.h"
#include "common/model_cfg.h"
#include "router/policy.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void route_usage(FILE *f)
{
    fprintf(
        f, "usage: epserve route --model M --routing R --layer L --input logits.f32 --tokens T "
           "--out routes.jsonl\n"
           "  --model M     model preset name, model YAML or checkpoint directory (architecture "
           "only)\n"
           "  --routing R   baseline | ban | pick | banpick | topp | des, or a routing YAML\n"
           "  --layer L     MoE layer index (0-based, as in the tensor names)\n"
           "  --input F     raw little-endian float32 gate logits, T rows x n_experts\n"
           "  --tokens T    number of rows in F (the file must hold exactly T*n_experts*4 bytes)\n"
           "  --out F       JSON lines: {\"token\":i,\"k\":K,\"experts\":[...],\"weights\":[...]}\n"
           "  --domain D    Pick domain to use (overrides the routing YAML's pick.domain)\n");
}

static bool parse_i64(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

int ep_cmd_route(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"routing", required_argument, 0, 'r'},
        {"layer", required_argument, 0, 'l'},
        {"input", required_argument, 0, 'i'},
        {"tokens", required_argument, 0, 't'},
        {"out", required_argument, 0, 'o'},
        {"domain", required_argument, 0, 'd'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model = NULL, *routing = NULL, *input = NULL, *out = NULL, *domain = NULL;
    long long layer = -1, tokens = -1;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "m:r:l:i:t:o:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'r':
            routing = optarg;
            break;
        case 'i':
            input = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'd':
            domain = optarg;
            break;
        case 'l':
            if (!parse_i64(optarg, 0, 1 << 20, &layer)) {
                fprintf(stderr, "epserve route: --layer: expected an integer >= 0, found '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case 't':
            if (!parse_i64(optarg, 0, (long long)1 << 40, &tokens)) {
                fprintf(stderr, "epserve route: --tokens: expected an integer >= 0, found '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case 'h':
            route_usage(stdout);
            return 0;
        default:
            route_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "epserve route: unexpected argument '%s'\n", argv[optind]);
        route_usage(stderr);
        return 2;
    }
    if (!model || !routing || !input || !out || layer < 0 || tokens < 0) {
        fprintf(stderr, "epserve route: --model, --routing, --layer, --input, --tokens and --out "
                        "are required\n");
        route_usage(stderr);
        return 2;
    }

    ep_model_cfg cfg;
    ep_policy *pol = NULL;
    ep_status st = ep_model_cfg_load(model, &cfg);
    if (!st) st = ep_policy_create(&cfg, routing, &pol);
    if (!st && domain) st = ep_policy_set_domain(pol, domain);
    if (!st) st = ep_route_file(&cfg, pol, (int)layer, input, tokens, out);
    ep_policy_free(pol);
    if (st) {
        fprintf(stderr, "epserve route: %s\n", ep_last_error());
        return st == EP_ERR_ARG ? 2 : 1;
    }
    return 0;
}
