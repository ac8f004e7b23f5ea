// `epserve logits`: the logits of one token sequence, every position, for
// checks against other references (tests/numpy/ref_forward.py). Rank 0 holds
// the sequence; every other rank joins each MoE layer with an empty batch.
// Output: [n, vocab] float32 little-endian (--out, atomic) or JSON. Not a
// serving path: no sampling, no KV reuse, one step.
#include "app/args.h"
#include "app/commands.h"
#include "common/json_util.h"
#include "common/weights.h"
#include "model/model.h"
#include "router/policy.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// --reference fails when the fast path and the C reference differ by more.
#define LOGITS_REF_TOL 1e-3
// BF16 experts (--backend cuda, or --expert-dtype bf16 on the CPU): about
// 1.5e-2 of a row's largest value per MoE layer (docs/cuda.md); a bound for
// the logits.
#define LOGITS_REF_TOL_BF16 5e-2

static void usage(FILE *f)
{
    fprintf(f,
            "usage: epserve logits --model M --tokens 1,2,3 [options]\n"
            "  --model M        model preset name, model YAML or checkpoint directory\n"
            "  --tokens IDS     comma-separated token ids (positions 0..n-1 of one sequence)\n"
            "  --out F          write the logits to F: [n, vocab] float32 little-endian,\n"
            "                   row per position, no header (atomic)\n"
            "  --json           print {\"model\", \"tokens\", \"vocab\", \"logits\": [[...]]} on "
            "stdout\n"
            "                   (the default when --out is not given)\n"
            "  --routing R      routing policy or routing YAML (default baseline)\n"
            "  --reference      also run the plain C reference (ep_model_reference) on rank 0\n"
            "                   and print the max relative error on stderr (row-wise\n"
            "                   max|a-b| / max|b|, max over rows); exit 1 above %g\n"
            "  --backend B      cpu | cuda: where the MoE experts run (default cpu); cuda:\n"
            "                   BF16 experts on one GPU per rank, NCCL (EP_CUDA builds);\n"
            "                   --reference then allows %g\n"
            "  --dtype D        auto | f32 | bf16: storage of the replicated weights (default\n"
            "                   auto: the checkpoint's when BF16, BF16 for FP8, else f32)\n"
            "  --expert-dtype D auto | f32 | bf16: how the CPU backend stores the experts\n"
            "                   (default auto; any BF16 storage: --reference allows the same\n"
            "                   as cuda)\n"
            "  --dispatch MODE  hier | flat all-to-all (default hier with more than one\n"
            "                   node on the cpu backend, else flat; docs/cluster.md)\n"
            "  --progress       loading progress on stderr even when it is not a terminal\n"
            "  --help           this text\n"
            "Runs under mpirun: rank 0 holds the sequence, every rank joins every MoE layer.\n",
            LOGITS_REF_TOL, LOGITS_REF_TOL_BF16);
}

// Writes rows x cols floats as little-endian float32, whatever the host order.
static ep_status write_bin(const char *path, const float *x, size_t count)
{
    const uint16_t probe = 1;
    bool little = *(const uint8_t *)&probe == 1;
    uint8_t *swapped = NULL;
    const void *buf = x;
    if (!little) {
        swapped = ep_xmalloc(count * 4);
        for (size_t i = 0; i < count; i++) {
            const uint8_t *b = (const uint8_t *)&x[i];
            for (int j = 0; j < 4; j++)
                swapped[i * 4 + j] = b[3 - j];
        }
        buf = swapped;
    }
    size_t len = count * 4;
    ep_status st = ep_file_write_atomic(path, &buf, &len, 1);
    free(swapped);
    return st;
}

static int print_json(const ep_model_cfg *cfg, const int *tok, int n, const float *logits,
                      double ref_err)
{
    json_t *root = json_object(), *jt = json_array(), *rows = json_array();
    json_object_set_new(root, "model", json_string(cfg->name));
    for (int i = 0; i < n; i++)
        json_array_append_new(jt, json_integer(tok[i]));
    json_object_set_new(root, "tokens", jt);
    json_object_set_new(root, "vocab", json_integer(cfg->vocab));
    for (int i = 0; i < n; i++) {
        json_t *r = json_array();
        for (int v = 0; v < cfg->vocab; v++)
            json_array_append_new(r, json_real(ep_json_float(logits[(size_t)i * cfg->vocab + v])));
        json_array_append_new(rows, r);
    }
    json_object_set_new(root, "logits", rows);
    if (ref_err >= 0) json_object_set_new(root, "reference_max_rel_err", json_real(ref_err));
    int rc = json_dumpf(root, stdout, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(root);
    if (rc || fputc('\n', stdout) == EOF || fflush(stdout)) {
        fprintf(stderr, "epserve logits: writing JSON to stdout failed\n");
        return 1;
    }
    return 0;
}

int ep_cmd_logits(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},
        {"tokens", required_argument, 0, 't'},
        {"out", required_argument, 0, 'o'},
        {"json", no_argument, 0, 'j'},
        {"routing", required_argument, 0, 'r'},
        {"reference", no_argument, 0, 'R'},
        {"progress", no_argument, 0, 'p'},
        {"help", no_argument, 0, 'h'},
        {"backend", required_argument, 0, 'b'},
        {"expert-dtype", required_argument, 0, 'D'},
        {"dtype", required_argument, 0, 'Y'},
        {"dispatch", required_argument, 0, 'A'},
        {0, 0, 0, 0},
    };
    const char *model = NULL, *tokens = NULL, *out = NULL, *routing = "baseline";
    bool json = false, reference = false, progress = false;
    ep_moe_backend backend = EP_MOE_BACKEND_CPU;
    ep_dtype expert_dtype = EP_DTYPE_AUTO, dense_dtype = EP_DTYPE_AUTO;
    int dispatch = EP_MOE_DISPATCH_AUTO;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "m:t:o:jr:Rpb:D:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 't':
            tokens = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'r':
            routing = optarg;
            break;
        case 'R':
            reference = true;
            break;
        case 'p':
            progress = true;
            break;
        case 'b':
            if (ep_moe_backend_parse(optarg, &backend)) {
                fprintf(stderr, "epserve logits: --%s\n", ep_last_error());
                return 2;
            }
            break;
        case 'D':
        case 'Y':
            if (ep_weight_dtype_parse(optarg, c == 'D' ? &expert_dtype : &dense_dtype)) {
                fprintf(stderr, "epserve logits: --%s: %s\n", c == 'D' ? "expert-dtype" : "dtype",
                        ep_last_error());
                return 2;
            }
            break;
        case 'A': {
            ep_dispatch_mode dm;
            if (ep_dispatch_mode_parse("--dispatch", optarg, &dm)) {
                fprintf(stderr, "epserve logits: %s\n", ep_last_error());
                return 2;
            }
            dispatch = (int)dm;
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "epserve logits: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!model || !tokens) {
        fprintf(stderr, "epserve logits: --model and --tokens are required\n");
        usage(stderr);
        return 2;
    }
    if (!out) json = true;
    int *tok = NULL, n = 0;
    if (ep_arg_ids("--tokens", tokens, 0, &tok, &n)) {
        fprintf(stderr, "epserve logits: %s\n", ep_last_error());
        return 2;
    }

    ep_cluster *cl = NULL;
    ep_status st = ep_cluster_init(&argc, &argv, 0, &cl);
    if (st) {
        fprintf(stderr, "epserve logits: %s\n", ep_last_error());
        free(tok);
        return 1;
    }
    ep_log_set_rank(cl->rank);
    const bool root = cl->rank == 0;
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_policy *pol = NULL;
    ep_model *m = NULL;
    float *logits = NULL, *ref = NULL;
    double ref_err = -1.0;
    int code = 0;

    // Set-up: every rank alike (the same files), except memory and I/O.
    if ((st = ep_model_cfg_load(model, &cfg))) goto setup_done;
    for (int i = 0; i < n; i++)
        if (tok[i] >= cfg.vocab) {
            st = ep_errorf(EP_ERR_ARG,
                           "--tokens: token %d is id %d, expected 0..%d (vocab_size of %s)", i,
                           tok[i], cfg.vocab - 1, cfg.name);
            goto setup_done;
        }
    if (n > cfg.max_pos) {
        st = ep_errorf(EP_ERR_ARG,
                       "--tokens: %d tokens, %s holds at most %d "
                       "(max_position_embeddings)",
                       n, cfg.name, cfg.max_pos);
        goto setup_done;
    }
    if ((st = ep_policy_create(&cfg, routing, &pol))) goto setup_done;
    ep_model_opts mo;
    ep_model_opts_default(&mo, &cfg);
    // One sequence of n tokens in one step; only rank 0 holds it.
    mo.moe.cap_tokens = n;
    mo.moe.max_k = EP_MAX(mo.moe.max_k, ep_policy_max_k(pol));
    mo.moe.with_reference = reference && root; // every expert, rank 0 only
    mo.moe.backend = backend;
    mo.moe.expert_dtype = expert_dtype;
    mo.moe.dispatch = dispatch;
    mo.dtype = dense_dtype;
    mo.max_seqs = 1;
    mo.max_ctx = n;
    mo.kv_blocks = (n + mo.kv_block_tokens - 1) / mo.kv_block_tokens;
    mo.progress = progress || isatty(STDERR_FILENO);
    if ((st = ep_weights_open(&cfg, &w))) goto setup_done;
    // The storage auto stands for, known before the model: it sets the bound.
    if ((st = ep_weights_expert_dtype(w, &mo.moe.expert_dtype)) ||
        (st = ep_weights_dense_dtype(w, &mo.dtype)))
        goto setup_done;
    if ((st = ep_model_init(&cfg, cl, w, &mo, &m))) goto setup_done;
    if (root) {
        logits = malloc((size_t)n * cfg.vocab * sizeof(float));
        if (!logits)
            st = ep_errorf(EP_ERR_NOMEM,
                           "logits: cannot allocate %zu bytes for "
                           "[%d, %d] logits",
                           (size_t)n * cfg.vocab * sizeof(float), n, cfg.vocab);
    }
setup_done:;
    // Agree before the first collective of the step, so no rank waits
    // forever. Rank 0's message stands for all (config errors are alike).
    int64_t v[2] = {st != EP_OK, root && st != EP_OK};
    if (ep_cluster_allreduce_i64(cl, v, 2, EP_REDUCE_MAX) != EP_OK || v[0]) {
        if (st != EP_OK && root)
            fprintf(stderr, "epserve logits: %s\n", ep_last_error());
        else if (st != EP_OK && !v[1])
            fprintf(stderr, "epserve logits (rank %d): %s\n", cl->rank, ep_last_error());
        code = st == EP_ERR_ARG ? 2 : 1;
        goto done;
    }

    int seq = -1;
    if (root && (st = ep_model_seq_new(m, &seq))) goto run_done;
    int n_new = n;
    ep_batch b = {
        .n_seqs = root ? 1 : 0, .seq = &seq, .n_new = &n_new, .tokens = tok, .all_logits = true};
    st = ep_model_forward(m, pol, &b, logits, NULL);
    if (!st && root && reference) {
        ref = malloc((size_t)n * cfg.vocab * sizeof(float));
        if (!ref)
            st = ep_errorf(EP_ERR_NOMEM, "logits: cannot allocate %zu bytes for the reference",
                           (size_t)n * cfg.vocab * sizeof(float));
        else if (!(st = ep_model_reference(m, pol, tok, n, ref))) {
            int64_t wrong = 0;
            const bool b16 = backend == EP_MOE_BACKEND_CUDA ||
                             mo.moe.expert_dtype == EP_DTYPE_BF16 || mo.dtype == EP_DTYPE_BF16;
            const double tol = b16 ? LOGITS_REF_TOL_BF16 : LOGITS_REF_TOL;
            ref_err = ep_moe_rel_err(logits, ref, n, cfg.vocab, tol, &wrong);
            fprintf(stderr,
                    "logits: reference max relative error %.3g (row-wise max|a-b| / max|b|, "
                    "%lld of %d rows above %g)\n",
                    ref_err, (long long)wrong, n, tol);
            if (wrong) code = 1;
        }
    }
    if (!st && root && out && (st = write_bin(out, logits, (size_t)n * cfg.vocab))) goto run_done;
    if (!st && root && json && print_json(&cfg, tok, n, logits, ref_err)) code = 1;
run_done:
    if (st) code = st == EP_ERR_ARG ? 2 : 1;
    {
        // Every rank exits alike: the worst code of any rank. A failed step
        // fails on every rank (the others only say another rank rejected its
        // batch): rank 0's message stands when it has one.
        int64_t r[2] = {code, root && st != EP_OK};
        if (ep_cluster_allreduce_i64(cl, r, 2, EP_REDUCE_MAX) == EP_OK) code = (int)r[0];
        if (st && (root || !r[1]))
            fprintf(stderr, "epserve logits%s: %s\n", root ? "" : " (another rank)",
                    ep_last_error());
    }
done:
    free(ref);
    free(logits);
    ep_model_free(m);
    ep_policy_free(pol);
    ep_weights_free(w);
    ep_cluster_free(cl);
    free(tok);
    return code;
}
