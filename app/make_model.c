// `epserve make-model`: writes a synthetic checkpoint (HF layout: sharded
// safetensors, index, config.json, generation_config.json, tokenizer.json,
// tokenizer_config.json) for a preset or model YAML. Argument handling and the report only; the
// writers are common/synth_ckpt.c and model/tokenizer_synth.c.
#include "app/commands.h"
#include "cluster/cluster.h"
#include "common/json_util.h"
#include "common/weights.h"
#include "model/gen_config.h"
#include "model/tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Shards are about this size when --shards is not given (HF uses ~5 GB;
// smaller keeps make-model's memory, one shard at a time, modest).
#define MAKE_MODEL_SHARD_BYTES (2ull << 30)

static void usage(FILE *f)
{
    fprintf(
        f, "usage: epserve make-model (--preset NAME | --model SPEC) --out DIR [options]\n"
           "  --preset NAME     a preset of configs/models/ (tiny-qwen3-moe, tiny-deepseek-v2,\n"
           "                    ...)\n"
           "  --model SPEC      a model YAML file, preset name or checkpoint directory\n"
           "  --out DIR         new (or empty) directory to create\n"
           "  --seed S          generator seed (default: the model's `seed`)\n"
           "  --shards N        number of safetensors files (default: one per ~2 GiB, at least 2)\n"
           "  --dtype D         bf16 (default), f32, or fp8: block-quantized FP8 as the\n"
           "                    published FP8 checkpoints (e4m3 Linear weights with fp32\n"
           "                    weight_scale_inv per 128x128 block, the rest BF16,\n"
           "                    quantization_config in config.json; docs/model.md)\n"
           "  --max-gib G       refuse checkpoints larger than G GiB (default 4; 0: no limit);\n"
           "                    the full presets are 30-470 GB: mind the disk\n"
           "  --help            this text\n"
           "Writes model-0000S-of-0000N.safetensors, model.safetensors.index.json,\n"
           "config.json (torch_dtype of --dtype, bos / eos ids), generation_config.json\n"
           "(the family's published sampling defaults), tokenizer.json and\n"
           "tokenizer_config.json (the synthetic tokenizer, docs/tokenizer.md).\n"
           "The values equal what ranks generate in memory from the same model and seed\n"
           "(see docs/synthetic.md).\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "epserve make-model: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see epserve make-model --help)\n");
    return 2;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (!s[0] || s[0] == '-') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end) return false;
    *out = v;
    return true;
}

typedef struct {
    const char *spec, *out;
    bool have_seed;
    uint64_t seed, shards, max_gib; // shards 0: one per MAKE_MODEL_SHARD_BYTES
    ep_dtype dtype;
} make_model_opts;

// tokenizer_config.json and generation_config.json, as a published
// checkpoint has them beside tokenizer.json (model/tokenizer_synth.c,
// model/gen_config.c).
static ep_status write_hf_extras(const ep_model_cfg *cfg, const char *out)
{
    char path[1200], *text;
    size_t len;
    ep_status st = ep_tokenizer_synth_config_json(cfg, &text, &len);
    if (st) return st;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", out);
    const void *bufs[] = {text, "\n"};
    const size_t lens[] = {len, 1};
    st = ep_file_write_atomic(path, bufs, lens, 2);
    free(text);
    if (st) return st;
    ep_gen_config g;
    ep_gen_config_synth(cfg, &g);
    snprintf(path, sizeof path, "%s/generation_config.json", out);
    return ep_gen_config_write(&g, path);
}

// Loads the model, checks the size, writes the checkpoint, reports. Runs on
// one rank: the output is one directory whatever the world size.
static int write_model(const make_model_opts *o)
{
    ep_model_cfg cfg;
    ep_status st = ep_model_cfg_load(o->spec, &cfg);
    if (st) {
        fprintf(stderr, "epserve make-model: %s\n", ep_last_error());
        return 1;
    }
    if (o->have_seed) cfg.seed = o->seed;
    // The checkpoint holds the values themselves; it must not point elsewhere.
    cfg.checkpoint[0] = '\0';
    // FP8 blocks as the published checkpoints; a model read from an FP8
    // checkpoint is written as asked (BF16 / F32: no quantization).
    cfg.quant = o->dtype == EP_DTYPE_F8_E4M3 ? EP_QUANT_FP8_BLOCK : EP_QUANT_NONE;
    cfg.quant_block[0] = cfg.quant_block[1] = o->dtype == EP_DTYPE_F8_E4M3 ? 128 : 0;

    ep_synth_ckpt_info size;
    ep_synth_checkpoint_size(&cfg, o->dtype, &size);
    if (o->max_gib && size.total_bytes > (o->max_gib << 30)) {
        fprintf(stderr,
                "epserve make-model: model '%s' in %s is %.2f GiB (%" PRId64 " tensors), above "
                "--max-gib %" PRIu64 "; pass a larger --max-gib (0: no limit) if you mean it\n",
                cfg.name, ep_dtype_name(o->dtype), size.total_bytes / (1024.0 * 1024 * 1024),
                size.n_tensors, o->max_gib);
        return 1;
    }
    uint64_t shards = o->shards;
    if (!shards) {
        // At least two, so even a tiny checkpoint exercises the sharded
        // layout (index + several files) that real checkpoints have.
        shards =
            EP_MAX(2, (size.total_bytes + MAKE_MODEL_SHARD_BYTES - 1) / MAKE_MODEL_SHARD_BYTES);
        if ((int64_t)shards > size.n_tensors) shards = (uint64_t)EP_MAX(1, size.n_tensors);
    }

    ep_synth_ckpt_info info;
    double t0 = ep_now_us();
    st = ep_synth_write_checkpoint_ex(&cfg, o->out, (int)shards, o->dtype, o->max_gib << 30, &info);
    if (st) {
        fprintf(stderr, "epserve make-model: %s\n", ep_last_error());
        return 1;
    }
    // The tokenizer too, so that the checkpoint is complete: serving it reads
    // <dir>/tokenizer.json like a real checkpoint's.
    char *tok;
    size_t tok_len;
    st = ep_tokenizer_synth_json(&cfg, &tok, &tok_len);
    if (!st) {
        char path[1200];
        snprintf(path, sizeof path, "%s/tokenizer.json", o->out);
        const void *bufs[] = {tok};
        st = ep_file_write_atomic(path, bufs, &tok_len, 1);
        free(tok);
    }
    if (!st) st = write_hf_extras(&cfg, o->out);
    if (st) {
        fprintf(stderr, "epserve make-model: %s\n", ep_last_error());
        return 1;
    }
    char first[64], last[64];
    snprintf(first, sizeof first, "model-%05d-of-%05d.safetensors", 1, info.n_shards);
    snprintf(last, sizeof last, "model-%05d-of-%05d.safetensors", info.n_shards, info.n_shards);
    printf("wrote %s (model %s, %s, seed %" PRIu64 ", %s) in %.2f s\n", o->out, cfg.name,
           cfg.arch == EP_ARCH_DEEPSEEK_V2 ? "deepseek_v2" : "qwen3_moe", cfg.seed,
           ep_dtype_name(o->dtype), (ep_now_us() - t0) / 1e6);
    char scales[64] = "";
    if (info.n_scales)
        snprintf(scales, sizeof scales, " + %" PRId64 " FP8 block scales", info.n_scales);
    printf("  %" PRId64 " tensors%s, %" PRIu64 " bytes (%.1f MiB) in %d shard(s): %s%s%s\n",
           info.n_tensors, scales, info.total_bytes, info.total_bytes / (1024.0 * 1024.0),
           info.n_shards, first, info.n_shards > 1 ? " .. " : "", info.n_shards > 1 ? last : "");
    printf("  + model.safetensors.index.json, config.json, generation_config.json, "
           "tokenizer.json, tokenizer_config.json\n");
    return 0;
}

int ep_cmd_make_model(int argc, char **argv)
{
    static const struct option opts[] = {
        {"preset", required_argument, NULL, 'p'},
        {"model", required_argument, NULL, 'm'},
        {"out", required_argument, NULL, 'o'},
        {"seed", required_argument, NULL, 's'},
        {"shards", required_argument, NULL, 'n'},
        {"dtype", required_argument, NULL, 'd'},
        {"max-gib", required_argument, NULL, 'g'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    make_model_opts o = {.max_gib = 4, .dtype = EP_DTYPE_BF16};

    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
        case 'm':
            if (o.spec) return usage_error("give one of --preset / --model (second: '%s')", optarg);
            o.spec = optarg;
            break;
        case 'o':
            o.out = optarg;
            break;
        case 's':
            if (!parse_u64(optarg, &o.seed))
                return usage_error("--seed: expected an unsigned integer, found '%s'", optarg);
            o.have_seed = true;
            break;
        case 'n':
            if (!parse_u64(optarg, &o.shards) || o.shards < 1 || o.shards > 99999)
                return usage_error("--shards: expected an integer in 1..99999, found '%s'", optarg);
            break;
        case 'd':
            if (!strcmp(optarg, "bf16") || !strcmp(optarg, "BF16"))
                o.dtype = EP_DTYPE_BF16;
            else if (!strcmp(optarg, "f32") || !strcmp(optarg, "F32"))
                o.dtype = EP_DTYPE_F32;
            else if (!strcmp(optarg, "fp8") || !strcmp(optarg, "FP8"))
                o.dtype = EP_DTYPE_F8_E4M3;
            else
                return usage_error("--dtype: expected bf16, f32 or fp8, found '%s'", optarg);
            break;
        case 'g':
            if (!parse_u64(optarg, &o.max_gib) || o.max_gib > (1ull << 20))
                return usage_error("--max-gib: expected an integer in 0..1048576, found '%s'",
                                   optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            return usage_error("option '%s' needs a value",
                               optind > 0 && optind <= argc ? argv[optind - 1] : "?");
        default:
            return usage_error("unknown option '%s'",
                               optind > 0 && optind <= argc ? argv[optind - 1] : "?");
        }
    }
    if (optind < argc) return usage_error("unexpected argument '%s'", argv[optind]);
    if (!o.spec) return usage_error("%s", "missing --preset NAME or --model SPEC");
    if (!o.out) return usage_error("%s", "missing --out DIR");

    // Under mpirun every rank runs the command; rank 0 alone writes (one
    // directory), the others wait and exit with its code.
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl)) {
        fprintf(stderr, "epserve make-model: %s\n", ep_last_error());
        return 1;
    }
    int32_t rc = cl->rank == 0 ? write_model(&o) : 0;
    fflush(stdout);
    if (ep_cluster_bcast(cl, &rc, sizeof rc, 0)) {
        fprintf(stderr, "epserve make-model: rank %d: %s\n", cl->rank, ep_last_error());
        rc = 1;
    }
    ep_cluster_free(cl);
    return rc;
}
