// The CUDA Graph buckets of the device forward (ep_model_opts.cuda_graph 1,
// model/forward_cuda.c; docs/cuda.md "CUDA Graph buckets"): a decode step
// of T tokens runs its dense ops at the bucket B >= T (1, 2, 4, 8 = cap)
// with B - T padding rows on a scratch KV block. Against the same model
// without buckets (cuda_graph 0), on both tiny presets, every rank holding
// its own sequences:
//  - decode steps of T = 1 (bucket 1), 3 (bucket 4) and 5 (bucket 8) give
//    bit-identical logits (memcmp), and later steps stay identical (the
//    padding wrote no real KV row);
//  - greedy ids drawn on the device are the same;
//  - the device bytes measured equal ep_model_dev_mem_plan's (one more KV
//    block and table row);
//  - cuda_graph 2 (capture) is refused on the emulated device, by name.
// Skips (77) without a device per rank.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/gpu.h"
#include "common/weights.h"
#include "cuda_test_util.h"
#include "model/model.h"
#include "mpi_check.h"
#include "router/policy.h"

enum { NS = 5, CAP = 8 };
static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};

static void opts(const ep_model_cfg *cfg, int graph, ep_model_opts *o)
{
    ep_model_opts_default(o, cfg);
    o->moe.cap_tokens = CAP;
    o->max_seqs = 9;
    o->max_ctx = 64;
    o->kv_blocks = 24;
    o->kv_block_tokens = 4; // the decode crosses block boundaries
    o->moe.backend = EP_MOE_BACKEND_CUDA;
    o->cuda_graph = graph;
}

static ep_model *open_model(ep_cluster *cl, const ep_model_cfg *cfg, ep_weights *w, int graph)
{
    ep_model_opts o;
    opts(cfg, graph, &o);
    ep_model *m = NULL;
    CHECK_OK(ep_model_init(cfg, cl, w, &o, &m));
    if (!m) return NULL;
    ep_model_dev_mem plan, got;
    ep_model_dev_mem_plan(cfg, &o, &plan);
    CHECK_OK(ep_model_dev_mem_get(m, &got));
    CHECK(got.kv == plan.kv && got.workspace == plan.workspace && got.total == plan.total,
          "%s cuda_graph %d: device bytes kv %llu, workspace %llu, total %llu; planned %llu, "
          "%llu, %llu",
          cfg->name, graph, (unsigned long long)got.kv, (unsigned long long)got.workspace,
          (unsigned long long)got.total, (unsigned long long)plan.kv,
          (unsigned long long)plan.workspace, (unsigned long long)plan.total);
    return m;
}

// One decode step of the first n sequences: logits [n, V] or, with
// samplers, ids [n] drawn on the device.
static void decode(ep_model *m, const ep_policy *pol, const int *seqs, int n, const int *tok,
                   float *logits, ep_sampler *const *smp, int *ids)
{
    int one[NS];
    for (int i = 0; i < NS; i++)
        one[i] = 1;
    ep_batch b = {.n_seqs = n, .seq = seqs, .n_new = one, .tokens = tok};
    if (smp)
        CHECK_OK(ep_model_forward_sample(m, pol, &b, smp, ids, NULL, NULL, NULL));
    else
        CHECK_OK(ep_model_forward(m, pol, &b, logits, NULL));
}

static void run_preset(ep_cluster *cl, const char *preset)
{
    ep_model_cfg cfg;
    ep_weights *w = NULL;
    ep_policy *pol = NULL;
    CHECK_OK(ep_model_cfg_load(preset, &cfg));
    CHECK_OK(ep_weights_open(&cfg, &w));
    if (!w) return;
    CHECK_OK(ep_policy_create(&cfg, "baseline", &pol));

    // Capture is refused on the emulated device, naming the option.
    {
        ep_model_opts o;
        opts(&cfg, 2, &o);
        ep_model *m = NULL;
        const ep_status st = ep_model_init(&cfg, cl, w, &o, &m);
        CHECK(st != EP_OK && strstr(ep_last_error(), "cuda_graph 2"),
              "%s: cuda_graph 2 on the emulated device: status %d, '%s'", preset, (int)st,
              st ? ep_last_error() : "");
        ep_model_free(m);
    }

    ep_model *ref = open_model(cl, &cfg, w, 0), *bkt = open_model(cl, &cfg, w, 1);
    int64_t ready = ref && bkt;
    CHECK_OK(ep_cluster_allreduce_i64(cl, &ready, 1, EP_REDUCE_MIN));
    if (!ready) goto out;
    const int V = cfg.vocab;
    int sr[NS], sb[NS];
    for (int i = 0; i < NS; i++) {
        CHECK_OK(ep_model_seq_new(ref, &sr[i]));
        CHECK_OK(ep_model_seq_new(bkt, &sb[i]));
    }
    // A first token per sequence, then 3 more of the first alone (not a
    // decode step: no bucket), then decode steps of 1, 3, 5 and again 5
    // sequences.
    {
        int first[NS], three = 3, tok[3] = {4, 1, 5};
        for (int i = 0; i < NS; i++)
            first[i] = 3 + i + cl->rank;
        decode(ref, pol, sr, NS, first, NULL, NULL, NULL);
        decode(bkt, pol, sb, NS, first, NULL, NULL, NULL);
        ep_batch b = {.n_seqs = 1, .n_new = &three, .tokens = tok};
        b.seq = sr;
        CHECK_OK(ep_model_forward(ref, pol, &b, NULL, NULL));
        b.seq = sb;
        CHECK_OK(ep_model_forward(bkt, pol, &b, NULL, NULL));
    }
    float *lr = malloc(sizeof(float) * NS * V), *lb = malloc(sizeof(float) * NS * V);
    const int steps[] = {1, 3, 5, 5};
    for (size_t k = 0; k < EP_ARRAY_LEN(steps); k++) {
        const int n = steps[k];
        int tok[NS];
        for (int i = 0; i < n; i++)
            tok[i] = (int)(11 * k + 5 * i + 2) % V;
        memset(lb, 0xff, sizeof(float) * NS * V);
        decode(ref, pol, sr, n, tok, lr, NULL, NULL);
        decode(bkt, pol, sb, n, tok, lb, NULL, NULL);
        CHECK(memcmp(lr, lb, sizeof(float) * n * V) == 0,
              "%s, rank %d: decode of %d sequences: bucketed logits differ from unpadded", preset,
              cl->rank, n);
    }
    // Greedy ids drawn on the device (argmax over the bucket's real rows).
    {
        ep_sample_params sp;
        ep_sample_params_default(&sp);
        ep_sampler *smp[NS];
        for (int i = 0; i < NS; i++)
            CHECK_OK(ep_sampler_init(&sp, V, &smp[i]));
        int tok[NS] = {1, 2, 3, 4, 5}, ir[NS], ib[NS];
        decode(ref, pol, sr, 3, tok, NULL, smp, ir);
        decode(bkt, pol, sb, 3, tok, NULL, smp, ib);
        for (int i = 0; i < 3; i++)
            CHECK(ir[i] == ib[i] && ir[i] >= 0, "%s: row %d: bucketed id %d, unpadded %d", preset,
                  i, ib[i], ir[i]);
        for (int i = 0; i < NS; i++)
            ep_sampler_free(smp[i]);
    }
    if (cl->rank == 0)
        printf("# %s, %d ranks: decode of 1, 3, 5, 5 sequences at buckets 1, 4, 8, 8: logits "
               "bit-identical to the unpadded step; device greedy ids identical\n",
               preset, cl->world_size);
    free(lr);
    free(lb);
out:
    ep_model_free(bkt);
    ep_model_free(ref);
    ep_policy_free(pol);
    ep_weights_free(w);
}

int main(int argc, char **argv)
{
    ep_cluster *c = NULL;
    const int run = cuda_test_mpi_begin(&argc, &argv, "test_cuda_graph", &c);
    if (run <= 0) return run < 0 ? 1 : CUDA_TEST_SKIP;
    for (size_t i = 0; i < EP_ARRAY_LEN(presets); i++)
        run_preset(c, presets[i]);
    int rc = mpi_check_finish(c, "test_cuda_graph");
    ep_cluster_free(c);
    return rc;
}
