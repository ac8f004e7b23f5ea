// `epserve bench model`: the whole forward of the model (ep_model_forward_ex:
// embeddings, attention on the KV cache, dense MLPs and the EP MoE layers,
// lm_head) at prefill and decode shapes, under baseline routing and each
// policy given, set against limits measured in the same run: the read
// bandwidth over the weight bytes a step reads per token (decode) and the
// BF16 GEMM peak (prefill). One rank, or every rank under mpirun running the
// same shapes on its own sequences (attention data-parallel, MoE
// expert-parallel). Token ids are random: no tokenizer, no sampling.
// With --backend cuda (the MoE experts on the device, as `bench` runs them)
// each row also reports the host<->device bytes a step copied, by class,
// and the floor a step's weight reads set on the device's memory bandwidth
// (app/bench_gpu.c).
#include "app/args.h"
#include "app/bench_gpu.h"
#include "app/bench_limits.h"
#include "app/commands.h"
#include "common/dtype.h"
#include "common/json_util.h"
#include "common/weights.h"
#include "experts/kernels.h"
#include "model/model.h"
#include "model/moe.h"
#include "router/policy.h"

#include <cblas.h>
#undef I // <complex.h>, pulled in by cblas.h, defines it
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BM_MAX_POLICIES 16
#define BM_BW_PASSES    5 // bandwidth passes before the rows (median)
#define BM_DEV_REPS     5 // timed copies of the device bandwidth probe (best of)

typedef struct {
    const char *model, *routing, *json_path;
    ep_dtype dtype, expert_dtype;
    bool dtype_set, expert_dtype_set;
    int *prefill, n_prefill; // tokens of the one sequence of each prefill shape
    int *decode, n_decode;   // sequences of each decode shape
    int steps, prefill_steps, warmup, threads, context, peak_size;
    uint64_t seed;
    bool quiet;
    ep_moe_backend backend;
    int cuda_graph; // --cuda-graph: ep_model_opts.cuda_graph
} bm_args;

typedef enum { BM_PREFILL, BM_DECODE } bm_mode;
static const char *const bm_mode_name[] = {"prefill", "decode"};

// One row: a shape under one policy. The first block accumulates this
// rank's timed steps; the second is the same on every rank (from loads
// summed over ranks); the last is filled once every rank is done.
typedef struct {
    bm_mode mode;
    int tokens; // prefill: tokens of the sequence; decode: sequences (one token each)
    int pol;    // index into the policies
    double us, flops;
    int64_t steps, tokens_run, pairs;
    double bytes;       // weight bytes all ranks read over the timed steps
    int64_t tokens_all; // tokens of all ranks over the timed steps
    int64_t distinct;   // Σ over timed steps and MoE layers of distinct experts touched
    double read_gbs;    // read bandwidth beside this shape's steps, summed over ranks
    double peak_gflops; // prefill: BF16 GEMM peak beside this shape's steps, summed over ranks
    double tps, tps_min, gflops, step_ms, flops_sum;
    int64_t pairs_sum;
    double *rank_tps;         // [world]
    ep_gpu_copy_stats copies; // host<->device copies of the timed steps; all ranks once reduced
} bm_row;

// What a token passes through, from the tensor list of cfg (not from the
// stored bytes: the count does not depend on the dtype).
typedef struct {
    double dense;   // matrix parameters every token multiplies by: attention, dense MLPs,
                    // router gates, shared experts (embedding and lm_head apart)
    double expert;  // one routed expert (gate, up, down)
    double lm_head; // [vocab, hidden], multiplied by once per sequence of a step
    double attn;    // FLOPs of attention's own products per (query, key) pair
} bm_params;

// Everything a step needs, sized once for the largest shape.
typedef struct {
    const ep_model_cfg *cfg;
    ep_cluster *cl;
    ep_model *m;
    ep_model_bytes bytes;
    double dense_all_bytes; // Σ over ranks of bytes.dense: every rank reads its copy
    bm_params par;
    int n_moe;
    // Greedy samplers, one per sequence, and the ids they pick: a step ends
    // as a serving step does (ep_model_forward_sample; the cuda backend
    // takes the argmax on the device and moves only the ids).
    ep_sampler **samplers; // [max rows]
    int *ids;              // [max rows]
    int64_t *load;         // [n_layers * n_experts + 1]: pairs per expert, then the step's tokens
    int *seq, *n_new, *tok;
    ep_bench_bw *bw;
    uint64_t seed;
    bool cuda;           // --backend cuda: copies counted, device floor
    ep_bench_device dev; // rank 0's device; dev.gbps summed over ranks
} bm_ctx;

// ---- arguments -------------------------------------------------------------------

static void usage(FILE *f)
{
    fprintf(
        f, "usage: epserve bench model --model M [options]   (mpirun -np N: every rank runs\n"
           "       the same shapes on its own sequences; one kernel thread per rank is usual)\n"
           "  --model M          preset name, model YAML or checkpoint directory\n"
           "  --routing LIST     policies or routing YAML files (default baseline,ban); baseline\n"
           "                     is added first when missing\n"
           "  --prefill LIST     tokens of the one sequence of each prefill row (default 128,512;\n"
           "                     'none': no prefill rows)\n"
           "  --decode LIST      sequences of each decode row, one new token each per step\n"
           "                     (default 1,8,32; 'none': no decode rows)\n"
           "  --context C        tokens prefilled into each decode sequence first, untimed\n"
           "                     (default 32)\n"
           "  --steps N          timed decode steps per row (default 8)\n"
           "  --prefill-steps N  timed prefills per row, a new sequence each (default 1)\n"
           "  --warmup W         untimed steps of the same shape before each row's (default 1)\n"
           "  --dtype D          auto | f32 | bf16: replicated weights (ep_model_opts.dtype;\n"
           "                     default auto)\n"
           "  --expert-dtype D   auto | f32 | bf16: routed experts (moe.expert_dtype; default\n"
           "                     the model's default, f32)\n"
           "  --backend B        cpu | cuda: where the MoE experts run (default cpu); cuda:\n"
           "                     BF16 experts on one GPU per rank (EP_CUDA builds), and the\n"
           "                     rows add the host<->device copies per step and the floor\n"
           "  --cuda-graph M     backend cuda: off (default) | buckets | capture\n"
           "                     (docs/cuda.md \"CUDA Graph buckets\")\n"
           "  --threads N        kernel pool and OpenBLAS threads (default EP_NUM_THREADS,\n"
           "                     OPENBLAS_NUM_THREADS or all CPUs)\n"
           "  --peak-size N      N^3 BF16 GEMM of the peak (default 2048)\n"
           "  --seed S           token ids (default 1)\n"
           "  --json FILE        every number of the table, the command line, bandwidth, peak\n"
           "  --quiet            no progress line\n"
           "Columns: MB/tok = (ranks x dense + tokens x embedding row + distinct routed experts\n"
           "the step's tokens touched, union over ranks, per MoE layer x one expert's bytes) /\n"
           "tokens of the step (ep_model_get_bytes); limit = read bandwidth / MB/tok; xlimit =\n"
           "tok/s / limit; xbytes = baseline MB/tok / the row's. GFLOP/s = (2 x (dense params x\n"
           "tokens + expert params x kept pairs + lm_head params x sequences) + attention) /\n"
           "time; attention per (query, key) pair: GQA 4 heads head_dim (QK^T and PV), MLA\n"
           "(absorbed) 2 heads (2 kv_lora + rope) (latent scores, rope scores, latent PV; the\n"
           "absorption products are kv_b's params, in dense); xpeak = GFLOP/s / BF16 peak.\n"
           "--backend cuda adds: floor = MB/step / device bandwidth (device-to-device copies,\n"
           "best of 5, summed over ranks), xfloor = ms / floor; KB per step copied host->device\n"
           "(h2d) and device->host (d2h) by class, act (activations) and meta (ids, positions,\n"
           "routes), all ranks (cluster/gpu.h). On the emulated device these mean nothing.\n");
}

// A list option: integers >= 1, or "none".
static bool parse_list(const char *opt, const char *s, int **out, int *n)
{
    free(*out);
    *out = NULL;
    *n = 0;
    if (!strcmp(s, "none")) return true;
    if (ep_arg_ids(opt, s, 1, out, n)) {
        fprintf(stderr, "epserve bench model: %s\n", ep_last_error());
        return false;
    }
    return true;
}

static bool parse_int(const char *opt, const char *s, int lo, int *out)
{
    if (ep_arg_int(s, lo, 1 << 24, out)) return true;
    fprintf(stderr, "epserve bench model: %s: expected an integer >= %d, found '%s'\n", opt, lo, s);
    return false;
}

// 0: go on; 1: --help printed; 2: usage error.
static int parse_args(int argc, char **argv, bm_args *a)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"routing", required_argument, 0, 'r'},
                                         {"prefill", required_argument, 0, 'P'},
                                         {"decode", required_argument, 0, 'D'},
                                         {"context", required_argument, 0, 'c'},
                                         {"steps", required_argument, 0, 's'},
                                         {"prefill-steps", required_argument, 0, 'S'},
                                         {"warmup", required_argument, 0, 'w'},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"expert-dtype", required_argument, 0, 'e'},
                                         {"backend", required_argument, 0, 'B'},
                                         {"cuda-graph", required_argument, 0, EP_ARG_CUDA_GRAPH},
                                         {"threads", required_argument, 0, 't'},
                                         {"peak-size", required_argument, 0, 'k'},
                                         {"seed", required_argument, 0, 'z'},
                                         {"json", required_argument, 0, 'j'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    *a = (bm_args){.routing = "baseline,ban",
                   .steps = 8,
                   .prefill_steps = 1,
                   .warmup = 1,
                   .context = 32,
                   .peak_size = 2048,
                   .seed = 1};
    int seed = 1;
    bool ok = parse_list("--prefill", "128,512", &a->prefill, &a->n_prefill) &&
              parse_list("--decode", "1,8,32", &a->decode, &a->n_decode);
    optind = 1;
    int c;
    while (ok && (c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            a->model = optarg;
            break;
        case 'r':
            a->routing = optarg;
            break;
        case 'P':
            ok = parse_list("--prefill", optarg, &a->prefill, &a->n_prefill);
            break;
        case 'D':
            ok = parse_list("--decode", optarg, &a->decode, &a->n_decode);
            break;
        case 'c':
            ok = parse_int("--context", optarg, 0, &a->context);
            break;
        case 's':
            ok = parse_int("--steps", optarg, 1, &a->steps);
            break;
        case 'S':
            ok = parse_int("--prefill-steps", optarg, 1, &a->prefill_steps);
            break;
        case 'w':
            ok = parse_int("--warmup", optarg, 0, &a->warmup);
            break;
        case 't':
            ok = parse_int("--threads", optarg, 1, &a->threads);
            break;
        case 'k':
            ok = parse_int("--peak-size", optarg, 1, &a->peak_size);
            break;
        case 'z':
            ok = parse_int("--seed", optarg, 0, &seed);
            a->seed = (uint64_t)seed;
            break;
        case 'd':
        case 'e': {
            ep_dtype *dt = c == 'd' ? &a->dtype : &a->expert_dtype;
            if (ep_weight_dtype_parse(optarg, dt)) {
                fprintf(stderr, "epserve bench model: --%s: %s\n",
                        c == 'd' ? "dtype" : "expert-dtype", ep_last_error());
                ok = false;
            }
            *(c == 'd' ? &a->dtype_set : &a->expert_dtype_set) = true;
            break;
        }
        case 'B':
            if (ep_moe_backend_parse(optarg, &a->backend)) {
                fprintf(stderr, "epserve bench model: --backend: %s\n", ep_last_error());
                ok = false;
            }
            break;
        case EP_ARG_CUDA_GRAPH:
            if (!ep_arg_cuda_graph(optarg, &a->cuda_graph)) {
                fprintf(stderr,
                        "epserve bench model: --cuda-graph '%s', expected off, buckets or "
                        "capture\n",
                        optarg);
                ok = false;
            }
            break;
        case 'j':
            a->json_path = optarg;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!ok) return 2;
    if (optind < argc) {
        fprintf(stderr, "epserve bench model: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!a->model) {
        fprintf(stderr, "epserve bench model: --model is required\n");
        usage(stderr);
        return 2;
    }
    if (a->n_prefill + a->n_decode == 0) {
        fprintf(stderr, "epserve bench model: --prefill none and --decode none leave no row\n");
        return 2;
    }
    return 0;
}

// ---- counts ------------------------------------------------------------------------

typedef struct {
    const ep_model_cfg *cfg;
    bm_params *p;
    double expert_total;
} param_walk;

static int count_tensor(void *user, const char *name, int ndim, const int64_t *shape)
{
    param_walk *w = user;
    const double n = ndim == 2 ? (double)shape[0] * (double)shape[1] : 0;
    if (ndim != 2) return 0; // norms: element-wise, not products
    if (!strcmp(name, "model.embed_tokens.weight")) {
        if (w->cfg->tie_embeddings) w->p->lm_head = n; // the lookup is no product
    } else if (!strcmp(name, "lm_head.weight")) {
        w->p->lm_head = n;
    } else if (strstr(name, ".mlp.experts.")) {
        w->expert_total += n;
    } else {
        w->p->dense += n;
    }
    return 0;
}

static void count_params(const ep_model_cfg *cfg, bm_params *p)
{
    *p = (bm_params){0};
    param_walk w = {.cfg = cfg, .p = p};
    ep_model_for_each_tensor(cfg, count_tensor, &w);
    const int n_moe = ep_model_n_moe_layers(cfg);
    p->expert = n_moe > 0 && cfg->n_experts > 0 ? w.expert_total / n_moe / cfg->n_experts : 0;
    if (cfg->arch == EP_ARCH_DEEPSEEK_V2) // latent scores, rope scores, latent P.V
        p->attn = 2.0 * cfg->n_heads * (2.0 * cfg->kv_lora_rank + cfg->qk_rope_dim);
    else // q.k and p.v per head
        p->attn = 4.0 * cfg->n_heads * cfg->head_dim;
    p->attn *= cfg->n_layers;
}

// Token id of (rank, what, i, j): the same for every policy, so the rows of
// a shape run the same inputs.
static int token_of(const bm_ctx *c, int what, int i, int j)
{
    const uint64_t key[5] = {c->seed, (uint64_t)c->cl->rank, (uint64_t)what, (uint64_t)i,
                             (uint64_t)j};
    return (int)(ep_hash64(key, sizeof key, 0x6265) % (uint64_t)c->cfg->vocab);
}

// ---- one step ----------------------------------------------------------------------

// Runs the batch of the n sequences in c->seq / c->n_new / c->tok. With a
// row, the step is timed and counted: this rank's time, FLOPs and pairs,
// and, from the loads summed over ranks, the weight bytes all ranks read.
static ep_status run_step(bm_ctx *c, const ep_policy *pol, int n, bm_row *row)
{
    const ep_model_cfg *cfg = c->cfg;
    const size_t LE = (size_t)cfg->n_layers * cfg->n_experts;
    const ep_batch b = {.n_seqs = n, .seq = c->seq, .n_new = c->n_new, .tokens = c->tok};
    memset(c->load, 0, (LE + 1) * sizeof(int64_t));
    ep_forward_stats fs = {.expert_load = c->load};
    ep_gpu_copy_stats cp0, cp1;
    ep_status st = ep_cluster_barrier(c->cl);
    if (st) return st;
    ep_bench_copies_now(&cp0);
    const double t0 = ep_now_us();
    if ((st = ep_model_forward_sample(c->m, pol, &b, c->samplers, c->ids, NULL, NULL, &fs)))
        return st;
    const double us = ep_now_us() - t0;
    ep_bench_copies_now(&cp1);
    if (!row) return EP_OK;
    ep_bench_copies_add(&row->copies, &cp0, &cp1);

    int64_t T = 0, pairs = 0;
    double qk = 0; // (query, key) pairs: each new token attends to its prefix and itself
    for (int i = 0; i < n; i++) {
        const int len1 = ep_model_seq_len(c->m, c->seq[i]), len0 = len1 - c->n_new[i];
        T += c->n_new[i];
        qk += ((double)len1 * (len1 + 1) - (double)len0 * (len0 + 1)) / 2;
    }
    for (size_t i = 0; i < LE; i++)
        pairs += c->load[i];
    row->us += us;
    row->steps++;
    row->tokens_run += T;
    row->pairs += pairs;
    row->flops +=
        2 * (c->par.dense * T + c->par.expert * pairs + c->par.lm_head * n) + c->par.attn * qk;

    c->load[LE] = T;
    if ((st = ep_cluster_allreduce_i64(c->cl, c->load, (int)LE + 1, EP_REDUCE_SUM))) return st;
    int64_t distinct = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (!ep_model_layer_is_moe(cfg, l)) continue;
        for (int e = 0; e < cfg->n_experts; e++)
            distinct += c->load[(size_t)l * cfg->n_experts + e] > 0;
    }
    const double embed_row = (double)c->bytes.embed / cfg->vocab;
    row->distinct += distinct;
    row->tokens_all += c->load[LE];
    row->bytes += c->dense_all_bytes + (double)c->load[LE] * embed_row +
                  (double)distinct * (double)c->bytes.expert;
    return EP_OK;
}

// One read pass on every rank at once; GB/s summed over ranks.
static ep_status bw_pass(bm_ctx *c, double *gbs)
{
    ep_status st = ep_cluster_barrier(c->cl);
    if (st) return st;
    ep_bench_bw_once(c->bw, NULL, gbs);
    return ep_cluster_allreduce_f64(c->cl, gbs, 1, EP_REDUCE_SUM);
}

static void progress(bool on, const char *what, int shape, const char *pol, int step, int n)
{
    if (on)
        fprintf(stderr, "\rbench model: %s %d, %s, step %d/%d        ", what, shape, pol, step, n);
}

// ---- rows ---------------------------------------------------------------------------

typedef struct {
    ep_policy *pol;
    char label[64];
} bm_policy;

// The BF16 GEMM peak on every rank at once; GFLOP/s summed over ranks.
static ep_status peak_pass(bm_ctx *c, int size, int repeats, double *gflops)
{
    ep_status st = ep_cluster_barrier(c->cl);
    if (st) return st;
    *gflops = ep_bench_bf16_gemm_gflops(size, repeats);
    return ep_cluster_allreduce_f64(c->cl, gflops, 1, EP_REDUCE_SUM);
}

// Prefill rows of T tokens: for each repeat, each policy in turn prefills a
// new sequence of T tokens in one step (then frees it); a read pass and a
// peak pass after each timed repeat (the peak drifts with the machine as
// the bandwidth does: a row is compared with the peak of its own minutes).
static ep_status prefill_rows(bm_ctx *c, const bm_args *a, bm_policy *pols, int n_pol, int T,
                              bm_row *rows, bool prog)
{
    const int n_rep = a->warmup + a->prefill_steps;
    double gbs[64], pk[64];
    int n_gbs = 0;
    ep_status st = EP_OK;
    for (int r = 0; r < n_rep && !st; r++) {
        for (int q = 0; q < n_pol && !st; q++) {
            const int p = (q + r) % n_pol; // the order rotates: no policy always goes first
            progress(prog, "prefill", T, pols[p].label, r + 1, n_rep);
            if ((st = ep_model_seq_new(c->m, &c->seq[0]))) break;
            c->n_new[0] = T;
            for (int i = 0; i < T; i++)
                c->tok[i] = token_of(c, 0, r, i);
            st = run_step(c, pols[p].pol, 1, r >= a->warmup ? &rows[p] : NULL);
            ep_model_seq_free(c->m, c->seq[0]);
        }
        if (!st && r >= a->warmup && n_gbs < (int)EP_ARRAY_LEN(gbs)) {
            st = bw_pass(c, &gbs[n_gbs]);
            if (!st) st = peak_pass(c, a->peak_size, 3, &pk[n_gbs]);
            n_gbs++;
        }
    }
    if (!st)
        for (int p = 0; p < n_pol; p++) {
            rows[p].read_gbs = ep_bench_median(gbs, n_gbs);
            rows[p].peak_gflops = ep_bench_median(pk, n_gbs);
        }
    return st;
}

// Decode rows of B sequences: each policy gets B sequences with --context
// tokens prefilled (packed into steps of at most cap tokens, untimed), then
// the policies take turns, one step of one new token per sequence each.
static ep_status decode_rows(bm_ctx *c, const bm_args *a, bm_policy *pols, int n_pol, int B,
                             int cap, bm_row *rows, bool prog)
{
    int *seqs = ep_xmalloc((size_t)n_pol * B * sizeof(int));
    int made = 0;
    double gbs[64];
    int n_gbs = 0;
    ep_status st = EP_OK;
    for (int i = 0; i < n_pol * B && !st; i++)
        if (!(st = ep_model_seq_new(c->m, &seqs[i]))) made++;
    for (int p = 0; p < n_pol && !st && a->context > 0; p++) {
        const int per = EP_MAX(1, cap / a->context);
        for (int b0 = 0; b0 < B && !st; b0 += per) {
            const int n = EP_MIN(per, B - b0);
            for (int i = 0; i < n; i++) {
                c->seq[i] = seqs[p * B + b0 + i];
                c->n_new[i] = a->context;
                for (int j = 0; j < a->context; j++)
                    c->tok[i * a->context + j] = token_of(c, 1, b0 + i, j);
            }
            progress(prog, "decode", B, "context", b0 + n, B);
            st = run_step(c, pols[p].pol, n, NULL);
        }
    }
    const int n_steps = a->warmup + a->steps;
    for (int s = 0; s < n_steps && !st; s++) {
        for (int q = 0; q < n_pol && !st; q++) {
            const int p = (q + s) % n_pol; // the order rotates: no policy always goes first
            progress(prog, "decode", B, pols[p].label, s + 1, n_steps);
            for (int i = 0; i < B; i++) {
                c->seq[i] = seqs[p * B + i];
                c->n_new[i] = 1;
                c->tok[i] = token_of(c, 1, i, a->context + s);
            }
            st = run_step(c, pols[p].pol, B, s >= a->warmup ? &rows[p] : NULL);
        }
        if (!st && s >= a->warmup && n_gbs < (int)EP_ARRAY_LEN(gbs)) st = bw_pass(c, &gbs[n_gbs++]);
    }
    for (int i = 0; i < made; i++)
        ep_model_seq_free(c->m, seqs[i]);
    free(seqs);
    if (!st)
        for (int p = 0; p < n_pol; p++)
            rows[p].read_gbs = ep_bench_median(gbs, n_gbs);
    return st;
}

// Every rank's figures of a row into the row, the same on every rank.
static ep_status reduce_row(bm_ctx *c, bm_row *r)
{
    const int W = c->cl->world_size;
    double mine = r->us > 0 ? r->tokens_run / (r->us * 1e-6) : 0;
    ep_status st = ep_cluster_allgather_f64(c->cl, &mine, 1, r->rank_tps);
    if (st) return st;
    r->tps = 0;
    r->tps_min = r->rank_tps[0];
    for (int i = 0; i < W; i++) {
        r->tps += r->rank_tps[i];
        r->tps_min = EP_MIN(r->tps_min, r->rank_tps[i]);
    }
    double v[2] = {r->us > 0 ? r->flops / (r->us * 1e3) : 0, r->flops / EP_MAX(r->steps, 1)};
    if ((st = ep_cluster_allreduce_f64(c->cl, v, 2, EP_REDUCE_SUM))) return st;
    r->gflops = v[0];
    r->flops_sum = v[1];
    double ms = r->us * 1e-3 / EP_MAX(r->steps, 1);
    if ((st = ep_cluster_allreduce_f64(c->cl, &ms, 1, EP_REDUCE_MAX))) return st;
    r->step_ms = ms;
    r->pairs_sum = r->pairs;
    if ((st = ep_cluster_allreduce_i64(c->cl, &r->pairs_sum, 1, EP_REDUCE_SUM))) return st;
    return ep_bench_copies_allreduce(c->cl, &r->copies);
}

// ---- report ---------------------------------------------------------------------------

typedef struct {
    double bpt, limit, frac_limit, frac_peak, avg_k, distinct, speedup, x_bytes;
    double floor_ms, x_floor; // --backend cuda: weight bytes per step / device bandwidth
} bm_derived;

static bm_derived derive(const bm_ctx *c, const bm_row *r, const bm_row *base, double peak)
{
    bm_derived d = {0};
    d.bpt = r->tokens_all ? r->bytes / r->tokens_all : 0;
    d.limit = d.bpt > 0 ? r->read_gbs * 1e9 / d.bpt : 0;
    d.frac_limit = d.limit > 0 ? r->tps / d.limit : 0;
    if (r->peak_gflops > 0) peak = r->peak_gflops; // the row's own minutes
    d.frac_peak = peak > 0 ? r->gflops / peak : 0;
    d.avg_k = r->tokens_all && c->n_moe ? (double)r->pairs_sum / r->tokens_all / c->n_moe : 0;
    d.distinct = r->steps && c->n_moe ? (double)r->distinct / r->steps / c->n_moe : 0;
    d.speedup = base->tps > 0 ? r->tps / base->tps : 0;
    const double base_bpt = base->tokens_all ? base->bytes / base->tokens_all : 0;
    d.x_bytes = d.bpt > 0 ? base_bpt / d.bpt : 0;
    if (c->cuda) {
        d.floor_ms = ep_bench_floor_ms(r->bytes / EP_MAX(r->steps, 1), c->dev.gbps);
        d.x_floor = ep_bench_x_floor(r->step_ms, d.floor_ms);
    }
    return d;
}

static json_t *row_json(const bm_ctx *c, const bm_row *r, const bm_derived *d, const char *label)
{
    json_t *o = json_object();
    json_object_set_new(o, "mode", json_string(bm_mode_name[r->mode]));
    json_object_set_new(o, "tokens_per_step", json_integer(r->tokens));
    json_object_set_new(o, "sequences", json_integer(r->mode == BM_PREFILL ? 1 : r->tokens));
    json_object_set_new(o, "policy", json_string(label));
    json_object_set_new(o, "avg_k", json_real(d->avg_k));
    json_object_set_new(o, "tokens_per_s", json_real(r->tps));
    json_object_set_new(o, "min_rank_tokens_per_s", json_real(r->tps_min));
    json_t *rt = json_array();
    for (int i = 0; i < c->cl->world_size; i++)
        json_array_append_new(rt, json_real(r->rank_tps[i]));
    json_object_set_new(o, "rank_tokens_per_s", rt);
    json_object_set_new(o, "step_ms", json_real(r->step_ms));
    json_object_set_new(o, "timed_steps", json_integer(r->steps));
    json_object_set_new(o, "tokens_timed", json_integer(r->tokens_all));
    json_object_set_new(o, "distinct_experts_per_layer", json_real(d->distinct));
    json_object_set_new(o, "bytes_per_step", json_real(r->bytes / EP_MAX(r->steps, 1)));
    json_object_set_new(o, "bytes_per_token", json_real(d->bpt));
    json_object_set_new(o, "read_gbs", json_real(r->read_gbs));
    if (r->peak_gflops > 0) json_object_set_new(o, "peak_gflops", json_real(r->peak_gflops));
    json_object_set_new(o, "limit_tokens_per_s", json_real(d->limit));
    json_object_set_new(o, "frac_limit", json_real(d->frac_limit));
    json_object_set_new(o, "x_bytes", json_real(d->x_bytes));
    json_object_set_new(o, "flops_per_step", json_real(r->flops_sum));
    json_object_set_new(o, "gflops", json_real(r->gflops));
    json_object_set_new(o, "frac_peak", json_real(d->frac_peak));
    json_object_set_new(o, "speedup", json_real(d->speedup));
    if (c->cuda) {
        json_object_set_new(o, "floor_ms", json_real(d->floor_ms));
        json_object_set_new(o, "x_floor", json_real(d->x_floor));
        json_object_set_new(o, "copy_bytes_per_step", ep_bench_copy_json(&r->copies, r->steps));
    }
    return o;
}

static const char *dtype_label(ep_dtype t, bool set)
{
    if (!set) return "default";
    return t == EP_DTYPE_AUTO ? "auto" : t == EP_DTYPE_BF16 ? "bf16" : "f32";
}

static void print_header(const bm_ctx *c, const bm_args *a, double read, double peak)
{
    const ep_model_cfg *cfg = c->cfg;
    printf("# epserve bench model: the whole forward (embeddings, attention, dense and MoE "
           "layers, lm_head) on %d rank(s)\n",
           c->cl->world_size);
    printf("# model: %s (%s, %d layers, %d MoE, %d experts, top-%d, hidden %d); dtype %s, "
           "expert dtype %s\n",
           cfg->name, cfg->arch == EP_ARCH_QWEN3_MOE ? "qwen3_moe" : "deepseek_v2", cfg->n_layers,
           c->n_moe, cfg->n_experts, cfg->k_base, cfg->hidden, dtype_label(a->dtype, a->dtype_set),
           dtype_label(a->expert_dtype, a->expert_dtype_set));
    printf("# threads per rank: %d (kernels), OpenBLAS %d; kernels ISA: %s; warm-up %d; decode: "
           "%d context tokens, %d timed steps; prefill: %d timed step(s), a new sequence each\n",
           ep_par_threads(), openblas_get_num_threads(), ep_kern_isa_name(ep_kern_isa_get()),
           a->warmup, a->context, a->steps, a->prefill_steps);
    printf("# weights per rank (ep_model_get_bytes): dense %.1f MB read whole each step, embedding"
           " row %.0f B, one expert %.2f MB; params: dense %.1f M/token, expert %.2f M, lm_head "
           "%.1f M/sequence\n",
           c->bytes.dense / 1e6, (double)c->bytes.embed / cfg->vocab, c->bytes.expert / 1e6,
           c->par.dense / 1e6, c->par.expert / 1e6, c->par.lm_head / 1e6);
    printf("# read-only bandwidth %.1f GB/s (median of %d, summed over ranks), BF16 GEMM peak "
           "%.1f GFLOP/s (%d^3, ep_kern_bf16_nt, best of 5, summed over ranks), same run\n",
           read, BM_BW_PASSES, peak, a->peak_size);
    printf("# MB/tok = (ranks x dense + tokens x embedding row + distinct experts touched (union "
           "over ranks) per MoE layer x expert) / tokens; read = bandwidth beside the row's "
           "steps;\n# limit = read / MB/tok, xlimit = tok/s / limit; xbytes = baseline MB/tok / "
           "MB/tok; speedup = tok/s / baseline's;\n# GFLOP/s = (2 x (dense params x tokens + "
           "expert params x kept pairs + lm_head x sequences) + (query, key) pairs x %.0f) / time,"
           " xpeak = GFLOP/s / the peak measured beside the row's steps;\n#   %.0f = layers x %s "
           "per pair\n"
           "# tok/s = sum over ranks of each rank's tokens / its time; min_rank = the slowest "
           "rank's; ms = step time of the slowest rank\n#\n",
           c->par.attn, c->par.attn,
           cfg->arch == EP_ARCH_DEEPSEEK_V2
               ? "2 heads (2 kv_lora + rope) (MLA absorbed: latent and rope scores, latent P.V)"
               : "4 heads head_dim (QK^T and PV)");
    if (c->cuda) {
        const ep_bench_device *d = &c->dev;
        printf("# backend cuda: MoE experts on the device (BF16); attention, dense layers and "
               "lm_head on the host%s\n",
               d->emulated ? "" : " (docs/cuda.md)");
        if (d->emulated)
            printf("# device: %s -- EMULATED (EP_CUDA_EMU): host memory and host time, no GPU; "
                   "its bandwidth, floor and xfloor are NOT GPU numbers\n",
                   d->name);
        else
            printf("# device (rank 0): %s\n", d->name);
        printf("# device bandwidth %.1f GB/s (device-to-device copies of %.0f MiB, 2 x bytes "
               "each, best of %d, summed over ranks); floor = weight MB/step (as MB/tok x tokens) "
               "/ it; xfloor = ms / floor\n",
               d->gbps, (double)d->probe_bytes / (1 << 20), BM_DEV_REPS);
        printf("# host<->device copies per step, KB, all ranks (cluster/gpu.h copy counter): "
               "act = activations (hidden rows, logits), meta = ids, positions, routes, counts; "
               "h2d = host->device, d2h = device->host\n");
    } else {
        printf("# backend cpu: no host<->device copies and no device floor (--backend cuda adds "
               "them)\n");
    }
    printf("# %-7s %6s %-12s %5s %9s %9s %9s %8s %6s %9s %6s %6s %8s %6s %7s", "mode", "tokens",
           "policy", "avg_k", "tok/s", "min_rank", "ms", "MB/tok", "read", "limit", "xlimit",
           "xbytes", "GFLOP/s", "xpeak", "speedup");
    if (c->cuda)
        printf(" %9s %7s %9s %9s %9s %9s", "floor", "xfloor", "act_h2d", "act_d2h", "meta_h2d",
               "meta_d2h");
    printf("\n# %-7s %6s %-12s %5s %9s %9s %9s %8s %6s %9s %6s %6s %8s %6s %7s", "", "(T|B)",
           "(name)", "(K)", "(tok/s)", "(tok/s)", "(ms)", "(MB)", "(GB/s)", "(tok/s)", "", "(x)",
           "", "", "(x)");
    if (c->cuda) printf(" %9s %7s %9s %9s %9s %9s", "(ms)", "(x)", "(KB)", "(KB)", "(KB)", "(KB)");
    printf("\n");
    fflush(stdout);
}

static void print_row(const bm_ctx *c, const bm_row *r, const bm_derived *d, const char *label)
{
    printf("  %-7s %6d %-12s %5.2f %9.1f %9.1f %9.2f %8.2f %6.1f %9.1f %6.3f %6.2f %8.2f %6.3f "
           "%7.2f",
           bm_mode_name[r->mode], r->tokens, label, d->avg_k, r->tps, r->tps_min, r->step_ms,
           d->bpt / 1e6, r->read_gbs, d->limit, d->frac_limit, d->x_bytes, r->gflops, d->frac_peak,
           d->speedup);
    if (c->cuda) {
        const double kb = 1e-3 / (double)EP_MAX(r->steps, 1);
        printf(" %9.4f %7.1f %9.1f %9.1f %9.2f %9.2f", d->floor_ms, d->x_floor,
               (double)r->copies.h2d[EP_COPY_ACT] * kb, (double)r->copies.d2h[EP_COPY_ACT] * kb,
               (double)r->copies.h2d[EP_COPY_META] * kb, (double)r->copies.d2h[EP_COPY_META] * kb);
    }
    printf("\n");
    fflush(stdout);
}

// ---- the command ---------------------------------------------------------------------

static ep_status make_policies(const ep_model_cfg *cfg, const char *routing, bm_policy *pols,
                               int *n_pol)
{
    char *list = ep_xstrdup(routing), *save = NULL;
    ep_status st = EP_OK;
    bool has_base = false;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
        has_base |= !strcmp(t, "baseline");
    free(list);
    list = ep_xstrdup(routing);
    save = NULL;
    *n_pol = 0;
    if (!has_base) {
        if ((st = ep_policy_create(cfg, "baseline", &pols[0].pol))) goto out;
        snprintf(pols[0].label, sizeof pols[0].label, "baseline");
        *n_pol = 1;
    }
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*n_pol == BM_MAX_POLICIES) {
            st = ep_errorf(EP_ERR_ARG, "--routing: at most %d policies, found more in '%s'",
                           BM_MAX_POLICIES, routing);
            goto out;
        }
        bm_policy *p = &pols[*n_pol];
        if ((st = ep_policy_create(cfg, t, &p->pol))) goto out;
        ep_arg_policy_label(t, p->label, sizeof p->label);
        ++*n_pol;
    }
    // Baseline first: speedups and xbytes are against it.
    for (int i = 1; i < *n_pol; i++)
        if (!strcmp(pols[i].label, "baseline")) {
            bm_policy t = pols[0];
            pols[0] = pols[i];
            pols[i] = t;
            break;
        }
out:
    free(list);
    return st;
}

static char *command_line(int argc, char **argv)
{
    size_t n = strlen("epserve bench") + 1;
    for (int i = 0; i < argc; i++)
        n += strlen(argv[i]) + 1;
    char *s = ep_xmalloc(n);
    strcpy(s, "epserve bench");
    for (int i = 0; i < argc; i++) {
        strcat(s, " ");
        strcat(s, argv[i]);
    }
    return s;
}

static int max_of(const int *v, int n)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        m = EP_MAX(m, v[i]);
    return m;
}

int ep_cmd_bench_model(int argc, char **argv)
{
    bm_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) {
        free(a.prefill);
        free(a.decode);
        return rc == 1 ? 0 : rc;
    }
    char *cmd = command_line(argc, argv);
    // The pool is the only threads: it sets OpenBLAS to one when it starts.
    if (a.threads) ep_par_set_threads(a.threads);

    ep_cluster *cl = NULL;
    ep_weights *w = NULL;
    ep_model_cfg cfg;
    bm_ctx c = {.cfg = &cfg, .seed = a.seed, .cuda = a.backend == EP_MOE_BACKEND_CUDA};
    bm_policy pols[BM_MAX_POLICIES] = {0};
    bm_row *rows = NULL;
    int n_pol = 0, n_rows = 0;
    rc = 1;
    if (ep_cluster_init(&argc, &argv, 0, &cl)) {
        fprintf(stderr, "epserve bench model: %s\n", ep_last_error());
        free(cmd);
        free(a.prefill);
        free(a.decode);
        return 1;
    }
    c.cl = cl;
    const bool root = cl->rank == 0;
    const bool prog = root && !a.quiet && isatty(STDERR_FILENO);

    const int T_max = max_of(a.prefill, a.n_prefill), B_max = max_of(a.decode, a.n_decode);
    const int dec_len = a.n_decode ? a.context + a.warmup + a.steps : 0;
    const int cap = EP_MAX(EP_MAX(T_max, B_max), a.n_decode ? a.context : 0);
    ep_status st = ep_model_cfg_load(a.model, &cfg);
    if (!st && EP_MAX(T_max, dec_len) > cfg.max_pos)
        st = ep_errorf(EP_ERR_ARG,
                       "%s holds %d positions; --prefill %d or --context + --warmup + --steps "
                       "= %d exceeds it",
                       cfg.name, cfg.max_pos, T_max, dec_len);
    if (!st) st = make_policies(&cfg, a.routing, pols, &n_pol);
    if (!st) {
        ep_model_opts mo;
        ep_model_opts_default(&mo, &cfg);
        if (a.dtype_set) mo.dtype = a.dtype;
        if (a.expert_dtype_set) mo.moe.expert_dtype = a.expert_dtype;
        mo.moe.backend = a.backend;
        mo.cuda_graph = a.cuda_graph;
        mo.moe.cap_tokens = cap;
        for (int p = 0; p < n_pol; p++)
            mo.moe.max_k = EP_MAX(mo.moe.max_k, ep_policy_max_k(pols[p].pol));
        mo.max_ctx = EP_MAX(T_max, dec_len);
        mo.max_seqs = n_pol * B_max + 1;
        const int blk = mo.kv_block_tokens;
        mo.kv_blocks = n_pol * B_max * ((dec_len + blk - 1) / blk) + (T_max + blk - 1) / blk + 1;
        mo.progress = prog;
        if (!(st = ep_weights_open(&cfg, &w))) st = ep_model_init(&cfg, cl, w, &mo, &c.m);
    }
    // Set-up can fail on some ranks only (memory, a shard): agree first.
    {
        int64_t bad = st != EP_OK;
        if (ep_cluster_allreduce_i64(cl, &bad, 1, EP_REDUCE_MAX) || bad) {
            if (st)
                fprintf(stderr, "epserve bench model (rank %d): %s\n", cl->rank, ep_last_error());
            goto done;
        }
    }

    ep_model_get_bytes(c.m, &c.bytes);
    c.dense_all_bytes = (double)c.bytes.dense;
    if ((st = ep_cluster_allreduce_f64(cl, &c.dense_all_bytes, 1, EP_REDUCE_SUM))) goto fail;
    count_params(&cfg, &c.par);
    c.n_moe = ep_model_n_moe_layers(&cfg);
    c.samplers = ep_xcalloc((size_t)EP_MAX(B_max, 1), sizeof *c.samplers);
    c.ids = ep_xmalloc((size_t)EP_MAX(B_max, 1) * sizeof(int));
    {
        ep_sample_params sp;
        ep_sample_params_default(&sp); // temperature 0: greedy
        for (int i = 0; i < EP_MAX(B_max, 1); i++)
            if ((st = ep_sampler_init(&sp, cfg.vocab, &c.samplers[i]))) goto fail;
    }
    c.load = ep_xmalloc(((size_t)cfg.n_layers * cfg.n_experts + 1) * sizeof(int64_t));
    c.seq = ep_xmalloc((size_t)EP_MAX(B_max, 1) * sizeof(int));
    c.n_new = ep_xmalloc((size_t)EP_MAX(B_max, 1) * sizeof(int));
    c.tok = ep_xmalloc((size_t)EP_MAX(cap, 1) * sizeof(int));
    c.bw = ep_bench_bw_init(false);
    n_rows = (a.n_prefill + a.n_decode) * n_pol;
    rows = ep_xcalloc((size_t)n_rows, sizeof *rows);
    for (int i = 0; i < n_rows; i++)
        rows[i].rank_tps = ep_xcalloc((size_t)cl->world_size, sizeof(double));

    // The limits, every rank at once (they share the node's memory).
    double read = 0, peak = 0;
    {
        double v[BM_BW_PASSES + 1];
        for (int i = 0; i <= BM_BW_PASSES && !st; i++) // pass 0 warms up
            st = bw_pass(&c, &v[i]);
        if (!st) read = ep_bench_median(v + 1, BM_BW_PASSES);
        if (!st) st = peak_pass(&c, a.peak_size, 5, &peak);
        if (st) goto fail;
    }
    // The device's bandwidth, every rank its own device at once; summed.
    if (c.cuda) {
        if ((st = ep_cluster_barrier(cl)) ||
            (st = ep_bench_device_probe(cl, BM_DEV_REPS, &c.dev)) ||
            (st = ep_cluster_allreduce_f64(cl, &c.dev.gbps, 1, EP_REDUCE_SUM)))
            goto fail;
    }
    if (root) print_header(&c, &a, read, peak);

    json_t *jrows = json_array();
    for (int s = 0; s < a.n_prefill + a.n_decode; s++) {
        const bool pre = s < a.n_prefill;
        const int shape = pre ? a.prefill[s] : a.decode[s - a.n_prefill];
        bm_row *r = &rows[s * n_pol];
        for (int p = 0; p < n_pol; p++) {
            r[p].mode = pre ? BM_PREFILL : BM_DECODE;
            r[p].tokens = shape;
            r[p].pol = p;
        }
        st = pre ? prefill_rows(&c, &a, pols, n_pol, shape, r, prog)
                 : decode_rows(&c, &a, pols, n_pol, shape, cap, r, prog);
        for (int p = 0; p < n_pol && !st; p++)
            st = reduce_row(&c, &r[p]);
        if (prog) fprintf(stderr, "\r%70s\r", "");
        if (st) {
            json_decref(jrows);
            goto fail;
        }
        for (int p = 0; p < n_pol && root; p++) {
            const bm_derived d = derive(&c, &r[p], &r[0], peak);
            print_row(&c, &r[p], &d, pols[p].label);
            json_array_append_new(jrows, row_json(&c, &r[p], &d, pols[p].label));
        }
    }

    rc = 0;
    if (root && a.json_path) {
        json_t *o = json_object();
        json_object_set_new(o, "bench", json_string("model"));
        json_object_set_new(o, "command", json_string(cmd));
        json_object_set_new(o, "model", json_string(cfg.name));
        json_object_set_new(
            o, "arch", json_string(cfg.arch == EP_ARCH_QWEN3_MOE ? "qwen3_moe" : "deepseek_v2"));
        json_object_set_new(o, "world_size", json_integer(cl->world_size));
        json_object_set_new(o, "threads", json_integer(ep_par_threads()));
        json_object_set_new(o, "openblas_threads", json_integer(openblas_get_num_threads()));
        json_object_set_new(o, "isa", json_string(ep_kern_isa_name(ep_kern_isa_get())));
        json_object_set_new(o, "dtype", json_string(dtype_label(a.dtype, a.dtype_set)));
        json_object_set_new(o, "expert_dtype",
                            json_string(dtype_label(a.expert_dtype, a.expert_dtype_set)));
        json_object_set_new(o, "n_layers", json_integer(cfg.n_layers));
        json_object_set_new(o, "n_moe_layers", json_integer(c.n_moe));
        json_object_set_new(o, "n_experts", json_integer(cfg.n_experts));
        json_object_set_new(o, "k_base", json_integer(cfg.k_base));
        json_object_set_new(o, "context", json_integer(a.context));
        json_object_set_new(o, "steps", json_integer(a.steps));
        json_object_set_new(o, "prefill_steps", json_integer(a.prefill_steps));
        json_object_set_new(o, "warmup", json_integer(a.warmup));
        json_object_set_new(o, "read_gbs", json_real(read));
        json_object_set_new(o, "bf16_gemm_peak_gflops", json_real(peak));
        json_object_set_new(o, "bf16_gemm_peak_size", json_integer(a.peak_size));
        json_object_set_new(o, "backend", json_string(ep_moe_backend_name(a.backend)));
        // The copy fields are in the rows only when they were counted.
        json_object_set_new(o, "copies_counted", json_boolean(c.cuda));
        if (c.cuda) {
            json_t *dj = json_object();
            json_object_set_new(dj, "name", json_string(c.dev.name));
            json_object_set_new(dj, "emulated", json_boolean(c.dev.emulated));
            json_object_set_new(dj, "bandwidth_gbs", json_real(c.dev.gbps));
            json_object_set_new(dj, "probe_bytes", json_integer((json_int_t)c.dev.probe_bytes));
            json_object_set_new(dj, "probe_reps", json_integer(BM_DEV_REPS));
            if (c.dev.emulated)
                json_object_set_new(dj, "note",
                                    json_string("emulated device (EP_CUDA_EMU): host memory and "
                                                "host time; bandwidth, floor_ms and x_floor are "
                                                "not GPU numbers"));
            json_object_set_new(o, "device", dj);
        } else {
            json_object_set_new(o, "copies_note",
                                json_string("backend cpu: no host<->device copies, no device "
                                            "floor"));
        }
        json_t *b = json_object();
        json_object_set_new(b, "dense", json_integer((json_int_t)c.bytes.dense));
        json_object_set_new(b, "embed", json_integer((json_int_t)c.bytes.embed));
        json_object_set_new(b, "embed_row", json_real((double)c.bytes.embed / cfg.vocab));
        json_object_set_new(b, "expert", json_integer((json_int_t)c.bytes.expert));
        json_object_set_new(b, "experts", json_integer((json_int_t)c.bytes.experts));
        json_object_set_new(o, "weight_bytes", b);
        json_t *pj = json_object();
        json_object_set_new(pj, "dense", json_real(c.par.dense));
        json_object_set_new(pj, "expert", json_real(c.par.expert));
        json_object_set_new(pj, "lm_head", json_real(c.par.lm_head));
        json_object_set_new(pj, "attn_flops_per_pair", json_real(c.par.attn));
        json_object_set_new(o, "params", pj);
        json_object_set_new(o, "rows", jrows);
        jrows = NULL;
        if (ep_json_write_atomic(a.json_path, o, JSON_INDENT(2) | JSON_REAL_PRECISION(10))) {
            fprintf(stderr, "epserve bench model: %s\n", ep_last_error());
            rc = 1;
        }
        json_decref(o);
    }
    json_decref(jrows);
    goto done;

fail:
    fprintf(stderr, "epserve bench model (rank %d): %s\n", cl->rank, ep_last_error());
    if (cl->world_size > 1) ep_cluster_abort(cl, 1);
done:
    for (int i = 0; i < n_rows; i++)
        free(rows[i].rank_tps);
    free(rows);
    for (int p = 0; p < n_pol; p++)
        ep_policy_free(pols[p].pol);
    ep_bench_bw_free(c.bw);
    for (int i = 0; c.samplers && i < EP_MAX(B_max, 1); i++)
        ep_sampler_free(c.samplers[i]);
    free(c.samplers);
    free(c.ids);
    free(c.load);
    free(c.seq);
    free(c.n_new);
    free(c.tok);
    ep_model_free(c.m);
    ep_weights_free(w);
    ep_cluster_free(cl);
    free(cmd);
    free(a.prefill);
    free(a.decode);
    return rc;
}
