// `epserve plan`: memory per GPU of a model on a cluster preset (replicated
// weights, routed-expert shard, KV cache, workspace), whether it fits, and
// the smallest preset in configs/clusters that fits. Sizes only (sim/cost.c);
// throughput is `epserve simulate`'s. --backend cuda adds, per preset, the
// exact bytes the device path allocates on the fullest rank, by part
// (ep_model_dev_footprint: what ep_model_init checks at start-up).
#include "app/commands.h"
#include "common/json_util.h"
#include "model/model.h"
#include "sim/sim.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *model, *cluster, *json_path;
    const char *weights; // auto | bf16 | fp8
    int context, batch, chunk, replicas;
    bool cuda; // --backend cuda: also what the device path allocates, exactly
} plan_args;

static void usage(FILE *f)
{
    fprintf(
        f, "usage: epserve plan --model M [--cluster C] [options]\n"
           "  --model M       preset name, model YAML, or checkpoint directory\n"
           "  --cluster C     preset name or YAML (default: every preset in configs/clusters)\n"
           "  --context N     tokens per sequence held in the KV cache (default 4096)\n"
           "  --batch B       concurrent sequences per GPU (default 16)\n"
           "  --chunk T       prefill tokens per GPU per step, sizes the workspace (default 4096)\n"
           "  --replicas N    redundant expert slots per layer (EPLB), default 0\n"
           "  --weights W     auto | bf16 | fp8: how the weights are counted (default auto:\n"
           "                  as the checkpoint stores them, FP8 when its config.json has an\n"
           "                  fp8 quantization_config, else BF16); fp8: the Linear weights of\n"
           "                  attention, dense MLPs and experts at 1 byte + an fp32 scale per\n"
           "                  128x128 block, the rest BF16. epserve's own backends dequantize\n"
           "                  FP8 to BF16 at load: bf16 is what they hold today\n"
           "  --backend B     estimate (default) | cuda: also the exact bytes `--backend cuda`\n"
           "                  allocates per GPU, by part (ep_model_dev_mem_plan +\n"
           "                  ep_moe_dev_mem_predict) for a run with --max-model-len\n"
           "                  CONTEXT, BATCH sequences per rank, a KV pool of BATCH x\n"
           "                  CONTEXT tokens, --max-num-batched-tokens CHUNK\n"
           "  --json FILE     write the results as JSON\n");
}

static int parse_args(int argc, char **argv, plan_args *a)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"cluster", required_argument, 0, 'c'},
                                         {"context", required_argument, 0, 'x'},
                                         {"batch", required_argument, 0, 'b'},
                                         {"chunk", required_argument, 0, 'T'},
                                         {"replicas", required_argument, 0, 'R'},
                                         {"json", required_argument, 0, 'j'},
                                         {"weights", required_argument, 0, 'w'},
                                         {"backend", required_argument, 0, 'B'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->context = 4096;
    a->batch = 16;
    a->chunk = 4096;
    a->weights = "auto";
    optind = 1;
    int c, li = 0;
    while ((c = getopt_long(argc, argv, "", opts, &li)) != -1) {
        int *dst = NULL;
        switch (c) {
        case 'm':
            a->model = optarg;
            break;
        case 'c':
            a->cluster = optarg;
            break;
        case 'x':
            dst = &a->context;
            break;
        case 'b':
            dst = &a->batch;
            break;
        case 'T':
            dst = &a->chunk;
            break;
        case 'R':
            dst = &a->replicas;
            break;
        case 'j':
            a->json_path = optarg;
            break;
        case 'w':
            if (strcmp(optarg, "auto") && strcmp(optarg, "bf16") && strcmp(optarg, "fp8")) {
                fprintf(stderr,
                        "epserve plan: option --weights: expected auto, bf16 or fp8, found "
                        "'%s'\n",
                        optarg);
                return 2;
            }
            a->weights = optarg;
            break;
        case 'B':
            if (strcmp(optarg, "estimate") && strcmp(optarg, "cuda")) {
                fprintf(stderr,
                        "epserve plan: option --backend: expected estimate or cuda, found '%s'\n",
                        optarg);
                return 2;
            }
            a->cuda = !strcmp(optarg, "cuda");
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return 2;
        }
        if (dst) {
            char *end = NULL;
            long v = strtol(optarg, &end, 10);
            if (!end || *end || v < 0 || v > 1 << 28) {
                fprintf(stderr, "epserve plan: option --%s: expected an integer >= 0, found '%s'\n",
                        opts[li].name, optarg);
                return 2;
            }
            *dst = (int)v;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "epserve plan: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!a->model) {
        fprintf(stderr, "epserve plan: --model is required\n\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

static double gib(double b)
{
    return b / (1024.0 * 1024.0 * 1024.0);
}

static void print_row(const ep_sim_cluster *cl, const ep_sim_mem *m)
{
    printf("  %-12s %4d %7.1f %8.2f %8.2f %7.2f %8.2f %7.2f %8.2f %8.2f %9.2f  %s\n", cl->name,
           ep_sim_cluster_gpus(cl), cl->mem_gb, gib(m->attn_bytes),
           gib(m->gate_bytes + m->shared_bytes), gib(m->embed_head_bytes), gib(m->routed_bytes),
           gib(m->kv_bytes), gib(m->workspace_bytes), gib(m->total_bytes), gib(m->usable_bytes),
           m->fits ? "fits" : "does not fit");
}

static json_t *mem_json(const ep_sim_cluster *cl, const ep_sim_mem *m)
{
    json_t *o = json_object();
    json_object_set_new(o, "cluster", json_string(cl->name));
    json_object_set_new(o, "gpus", json_integer(ep_sim_cluster_gpus(cl)));
    json_object_set_new(o, "experts_per_gpu", json_integer(m->experts_per_gpu));
    json_object_set_new(o, "attention_gib", json_real(gib(m->attn_bytes)));
    json_object_set_new(o, "gate_gib", json_real(gib(m->gate_bytes)));
    json_object_set_new(o, "shared_and_dense_mlp_gib", json_real(gib(m->shared_bytes)));
    json_object_set_new(o, "embed_head_gib", json_real(gib(m->embed_head_bytes)));
    json_object_set_new(o, "replicated_gib", json_real(gib(m->replicated_bytes)));
    json_object_set_new(o, "routed_experts_gib", json_real(gib(m->routed_bytes)));
    json_object_set_new(o, "kv_cache_gib", json_real(gib(m->kv_bytes)));
    json_object_set_new(o, "workspace_gib", json_real(gib(m->workspace_bytes)));
    json_object_set_new(o, "total_gib", json_real(gib(m->total_bytes)));
    json_object_set_new(o, "usable_gib", json_real(gib(m->usable_bytes)));
    json_object_set_new(o, "fits", json_boolean(m->fits));
    return o;
}

// The options a `serve --backend cuda` run with these sizes gives the model:
// the engine's defaults, then context, sequences, KV pool, step tokens and
// redundant slots from plan's options.
static void cuda_opts(const ep_model_cfg *cfg, const plan_args *a, ep_model_opts *o)
{
    ep_model_opts_default(o, cfg);
    o->moe.backend = EP_MOE_BACKEND_CUDA;
    o->max_ctx = EP_MAX(a->context, 1);
    o->max_seqs = EP_MAX(a->batch, 1);
    o->kv_blocks = o->max_seqs * ((o->max_ctx + o->kv_block_tokens - 1) / o->kv_block_tokens);
    o->moe.cap_tokens = EP_MAX(a->chunk, 1);
    o->moe.redundant_experts = a->replicas;
}

typedef struct {
    int experts_per_gpu;
    ep_model_dev_mem model;
    ep_moe_dev_mem moe;
    uint64_t total;
    double usable;
    bool fits;
} dev_plan;

static void dev_plan_get(const ep_model_cfg *cfg, const ep_model_opts *o, const ep_sim_cluster *cl,
                         const ep_sim_mem *est, dev_plan *d)
{
    const int W = ep_sim_cluster_gpus(cl);
    ep_model_dev_footprint(cfg, o, W, &d->model, &d->moe);
    d->experts_per_gpu = ep_model_dev_n_local(cfg, &o->moe, W);
    d->total = d->model.total + d->moe.total;
    d->usable = est->usable_bytes;
    d->fits = (double)d->total <= d->usable;
}

static double mib(uint64_t b)
{
    return (double)b / (1024.0 * 1024.0);
}

static void print_dev_row(const ep_sim_cluster *cl, const dev_plan *d)
{
    printf("  %-12s %4d %5d %9.1f %7.1f %9.1f %8.1f %9.1f %8.1f %7.1f %8.1f %6.2f %10.1f %10.1f  "
           "%s\n",
           cl->name, ep_sim_cluster_gpus(cl), d->experts_per_gpu, mib(d->model.weights_bf16),
           mib(d->model.weights_f32), mib(d->model.kv), mib(d->model.workspace),
           mib(d->moe.experts), mib(d->moe.expert_scratch), mib(d->moe.router),
           mib(d->moe.exchange), mib(d->moe.transport), mib(d->total), d->usable / 1048576.0,
           d->fits ? "fits" : "does not fit");
}

static json_t *dev_json(const dev_plan *d)
{
    return json_pack(
        "{s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:b}", "experts_per_gpu",
        d->experts_per_gpu, "weights_bf16", (json_int_t)d->model.weights_bf16, "weights_f32",
        (json_int_t)d->model.weights_f32, "kv", (json_int_t)d->model.kv, "workspace",
        (json_int_t)d->model.workspace, "experts", (json_int_t)d->moe.experts, "expert_scratch",
        (json_int_t)d->moe.expert_scratch, "router", (json_int_t)d->moe.router, "exchange",
        (json_int_t)d->moe.exchange, "transport", (json_int_t)d->moe.transport, "total",
        (json_int_t)d->total, "usable_bytes", d->usable, "fits", d->fits);
}

int ep_cmd_plan(int argc, char **argv)
{
    plan_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;
    ep_model_cfg cfg;
    ep_status st;
    if ((st = ep_model_cfg_load(a.model, &cfg))) {
        fprintf(stderr, "epserve plan: %s\n", ep_last_error());
        return st == EP_ERR_ARG ? 2 : 1;
    }
    if (!strcmp(a.weights, "bf16")) {
        cfg.quant = EP_QUANT_NONE;
    } else if (!strcmp(a.weights, "fp8") && cfg.quant != EP_QUANT_FP8_BLOCK) {
        cfg.quant = EP_QUANT_FP8_BLOCK; // the published checkpoints' blocks
        cfg.quant_block[0] = cfg.quant_block[1] = 128;
    }
    char wdesc[64] = "bf16 weights";
    if (cfg.quant == EP_QUANT_FP8_BLOCK)
        snprintf(wdesc, sizeof wdesc, "fp8 weights (%dx%d blocks, fp32 scales; rest bf16)",
                 cfg.quant_block[0], cfg.quant_block[1]);
    char **paths = NULL;
    int n = 0;
    if (a.cluster) {
        paths = ep_xmalloc(sizeof *paths);
        paths[0] = ep_xstrdup(a.cluster);
        n = 1;
    } else if ((st = ep_sim_cluster_presets(&paths, &n))) {
        fprintf(stderr, "epserve plan: %s\n", ep_last_error());
        return 1;
    }

    printf("# epserve plan: model %s, %s, context %d, %d sequences per GPU, prefill "
           "chunk %d, %d redundant slots\n",
           cfg.name, wdesc, a.context, a.batch, a.chunk, a.replicas);
    printf("# %-12s %4s %7s %8s %8s %7s %8s %7s %8s %8s %9s  %s\n", "cluster", "gpus", "mem_GB",
           "attn", "gate+shr", "emb+lm", "experts", "kv", "work", "total", "usable", "verdict");
    printf("# %-12s %4s %7s %8s %8s %7s %8s %7s %8s %8s %9s\n", "", "", "", "GiB", "GiB", "GiB",
           "GiB", "GiB", "GiB", "GiB", "GiB");
    json_t *arr = json_array();
    int rc_out = 0;
    ep_model_opts mo;
    cuda_opts(&cfg, &a, &mo);
    dev_plan *devs = ep_xcalloc((size_t)EP_MAX(n, 1), sizeof *devs);
    ep_sim_cluster *cls = ep_xcalloc((size_t)EP_MAX(n, 1), sizeof *cls);
    // Smallest fitting preset: fewest GPUs, then least memory per GPU.
    ep_sim_cluster best = {0};
    bool have_best = false;
    for (int i = 0; i < n; i++) {
        ep_sim_cluster cl;
        if ((st = ep_sim_cluster_load(paths[i], &cl))) {
            fprintf(stderr, "epserve plan: %s\n", ep_last_error());
            rc_out = st == EP_ERR_ARG ? 2 : 1;
            break;
        }
        ep_sim_mem m;
        ep_sim_plan_memory(&cfg, &cl, a.context, a.batch, a.chunk, a.replicas, &m);
        print_row(&cl, &m);
        json_t *row = mem_json(&cl, &m);
        if (a.cuda) {
            dev_plan_get(&cfg, &mo, &cl, &m, &devs[i]);
            json_object_set_new(row, "cuda", dev_json(&devs[i]));
        }
        json_array_append_new(arr, row);
        cls[i] = cl;
        int g = ep_sim_cluster_gpus(&cl);
        if (m.fits && (!have_best || g < ep_sim_cluster_gpus(&best) ||
                       (g == ep_sim_cluster_gpus(&best) && cl.mem_gb < best.mem_gb))) {
            best = cl;
            have_best = true;
        }
    }
    if (!rc_out) {
        if (have_best)
            printf("# smallest %s that fits: %s (%d GPUs of %.0f GB)\n",
                   a.cluster ? "given cluster" : "preset", best.name, ep_sim_cluster_gpus(&best),
                   best.mem_gb);
        else
            printf("# no %s fits: lower --context / --batch, or add GPUs\n",
                   a.cluster ? "given cluster" : "preset");
    }
    if (!rc_out && a.cuda) {
        printf("#\n# what --backend cuda allocates per GPU (MiB; the fullest rank): KV pool %d "
               "blocks of %d tokens, %d sequences, context %d, %d tokens per step, wire %s\n",
               mo.kv_blocks, mo.kv_block_tokens, mo.max_seqs, mo.max_ctx, mo.moe.cap_tokens,
               ep_dtype_name(mo.moe.wire));
        printf("# %-12s %4s %5s %9s %7s %9s %8s %9s %8s %7s %8s %6s %10s %10s  %s\n", "cluster",
               "gpus", "exp", "w_bf16", "w_f32", "kv", "work", "experts", "exp_scr", "router",
               "exchange", "nccl", "total", "usable", "verdict");
        for (int i = 0; i < n; i++)
            print_dev_row(&cls[i], &devs[i]);
        printf("# vs the estimate above: weights are BF16 on the device (fp8 checkpoints are\n"
               "# dequantized; the router gates fp32), the KV pool is whole blocks of BF16 rows,\n"
               "# the workspace is the model's fp32 activations and logits for every step token\n"
               "# (the estimate: ~6 bf16 activations, logits of BATCH rows, a runtime reserve),\n"
               "# the expert scratch, router and exchange are sized for CHUNK tokens (the\n"
               "# estimate's a2a buffers per pair); CUDA context and cuBLAS are not in it\n");
    }
    if (!rc_out && a.json_path) {
        json_t *root = json_object();
        json_object_set_new(root, "model", json_string(cfg.name));
        json_object_set_new(root, "weights",
                            json_string(cfg.quant == EP_QUANT_FP8_BLOCK ? "fp8" : "bf16"));
        if (cfg.quant == EP_QUANT_FP8_BLOCK)
            json_object_set_new(root, "weight_block_size",
                                json_pack("[ii]", cfg.quant_block[0], cfg.quant_block[1]));
        json_object_set_new(root, "context", json_integer(a.context));
        json_object_set_new(root, "batch_per_gpu", json_integer(a.batch));
        json_object_set_new(root, "chunk", json_integer(a.chunk));
        json_object_set_new(root, "redundant_slots", json_integer(a.replicas));
        if (a.cuda)
            json_object_set_new(root, "cuda_opts",
                                json_pack("{s:i, s:i, s:i, s:i, s:i, s:s}", "kv_blocks",
                                          mo.kv_blocks, "kv_block_tokens", mo.kv_block_tokens,
                                          "max_seqs", mo.max_seqs, "max_ctx", mo.max_ctx,
                                          "cap_tokens", mo.moe.cap_tokens, "wire",
                                          ep_dtype_name(mo.moe.wire)));
        json_object_set_new(root, "clusters", json_incref(arr));
        json_object_set_new(root, "smallest_fit", have_best ? json_string(best.name) : json_null());
        if ((st = ep_json_write_atomic(a.json_path, root,
                                       JSON_INDENT(2) | JSON_REAL_PRECISION(6)))) {
            fprintf(stderr, "epserve plan: %s\n", ep_last_error());
            rc_out = 1;
        }
        json_decref(root);
    }
    json_decref(arr);
    free(devs);
    free(cls);
    ep_sim_free_list(paths, n);
    return rc_out;
}
