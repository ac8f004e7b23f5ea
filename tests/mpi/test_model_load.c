// What each rank reads while ep_model_init loads (issue 6, "every rank maps
// only what it needs"), at world sizes 1-4: through the ep_weights read hook,
// every routed expert tensor a rank reads belongs to an expert its placement
// gives it, each of its experts is read exactly once per projection and MoE
// layer, every replicated tensor of the layout (embeddings, norms, attention,
// dense MLP, gates, shared experts, lm_head) is read exactly once, and the
// byte counter equals the sum of those tensors' sizes (fp32 for synthetic
// weights, stored BF16 bytes for a make-model checkpoint). Over all ranks the
// experts are read once each. Contiguous and round-robin placement.
#include "common/weights.h"
#include "model/model.h"
#include "mpi_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_READS = 4096 };

typedef struct {
    const ep_model_cfg *cfg;
    int n;                 // reads seen
    char *name[MAX_READS]; // in order
    int *expert_reads;     // [n_layers * n_experts] routed expert tensors read
    int64_t other_reads;   // every other tensor
    ep_weights_stats last; // totals the hook saw last
} read_log;

static void on_read(void *user, const char *name, const ep_weights_stats *tot)
{
    read_log *lg = user;
    int l, e;
    if (sscanf(name, "model.layers.%d.mlp.experts.%d.", &l, &e) == 2 && l >= 0 &&
        l < lg->cfg->n_layers && e >= 0 && e < lg->cfg->n_experts)
        lg->expert_reads[(size_t)l * lg->cfg->n_experts + e]++;
    else
        lg->other_reads++;
    if (lg->n < MAX_READS) lg->name[lg->n] = ep_xstrdup(name);
    lg->n++;
    lg->last = *tot;
}

typedef struct {
    const read_log *lg;
    int elem_bytes;
    int64_t n_other, missing;  // replicated tensors of the layout, and those not read once
    uint64_t other_bytes;      // their bytes
    const char *first_missing; // one of them, for the message
} layout_walk;

static int times_read(const read_log *lg, const char *name)
{
    int c = 0;
    for (int i = 0; i < lg->n && i < MAX_READS; i++)
        c += !strcmp(lg->name[i], name);
    return c;
}

static int walk_layout(void *user, const char *name, int ndim, const int64_t *shape)
{
    layout_walk *w = user;
    if (strstr(name, ".mlp.experts.")) return 0;
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (uint64_t)shape[i];
    w->n_other++;
    w->other_bytes += n * (uint64_t)w->elem_bytes;
    if (times_read(w->lg, name) != 1) {
        w->missing++;
        if (!w->first_missing) w->first_missing = name;
    }
    return 0;
}

static void run(ep_cluster *cl, const char *preset, const char *ckpt, ep_place_kind place)
{
    ep_model_cfg cfg;
    ep_status st = ckpt ? ep_model_cfg_load(ckpt, &cfg) : ep_model_cfg_load(preset, &cfg);
    CHECK_OK(st);
    if (st) return;
    const char *what = ckpt ? "checkpoint" : "synthetic";
    ep_weights *w = NULL;
    CHECK_OK(ep_weights_open(&cfg, &w));
    if (!w) return;
    read_log lg = {.cfg = &cfg};
    lg.expert_reads = ep_xcalloc((size_t)cfg.n_layers * cfg.n_experts, sizeof(int));
    ep_weights_set_read_hook(w, on_read, &lg, NULL, NULL);

    ep_model_opts o;
    ep_model_opts_default(&o, &cfg);
    o.moe.cap_tokens = 8;
    o.moe.placement = place;
    o.kv_blocks = 4;
    o.max_seqs = 2;
    ep_model *m = NULL;
    CHECK_OK(ep_model_init(&cfg, cl, w, &o, &m));
    if (!m) goto out;
    CHECK(lg.n <= MAX_READS, "%s: %d reads, the log holds %d", cfg.name, lg.n, MAX_READS);

    const ep_placement *p = ep_moe_placement(ep_model_moe(m));
    const int E = cfg.n_experts, I = cfg.moe_inter, H = cfg.hidden;
    int64_t foreign = 0, wrong_count = 0, mine = 0, total_expert = 0;
    for (int l = 0; l < cfg.n_layers; l++)
        for (int e = 0; e < E; e++) {
            int c = lg.expert_reads[(size_t)l * E + e];
            total_expert += c;
            bool held = ep_model_layer_is_moe(&cfg, l) && ep_placement_holds(p, cl->rank, e);
            if (c && !held) foreign++;
            if (held && c != 3) wrong_count++;
            mine += held;
        }
    CHECK(foreign == 0, "%s %s %s rank %d: read %lld (layer, expert) pairs it does not hold",
          cfg.name, what, ep_place_kind_name(place), cl->rank, (long long)foreign);
    CHECK(wrong_count == 0, "%s %s rank %d: %lld held experts not read exactly 3 times", cfg.name,
          what, cl->rank, (long long)wrong_count);

    ep_weights_stats tot;
    ep_weights_get_stats(w, &tot);
    // BF16 checkpoint: 2 bytes a value as stored; synthetic: the fp32 generated.
    int eb = ckpt ? 2 : 4;
    layout_walk lw = {.lg = &lg, .elem_bytes = eb};
    ep_model_for_each_tensor(&cfg, walk_layout, &lw);
    CHECK(lw.missing == 0, "%s %s rank %d: %lld replicated tensors not read exactly once (e.g. %s)",
          cfg.name, what, cl->rank, (long long)lw.missing,
          lw.first_missing ? lw.first_missing : "-");
    CHECK(lg.other_reads == lw.n_other, "%s %s rank %d: %lld non-expert reads, layout has %lld",
          cfg.name, what, cl->rank, (long long)lg.other_reads, (long long)lw.n_other);
    uint64_t want = lw.other_bytes + (uint64_t)mine * 3 * (uint64_t)I * H * eb;
    CHECK(tot.bytes == want && tot.tensors == lg.n,
          "%s %s rank %d: counter %llu bytes / %lld tensors, expected %llu / %d", cfg.name, what,
          cl->rank, (unsigned long long)tot.bytes, (long long)tot.tensors, (unsigned long long)want,
          lg.n);
    CHECK(lg.last.bytes == tot.bytes, "%s: the hook saw %llu bytes last, the counter says %llu",
          cfg.name, (unsigned long long)lg.last.bytes, (unsigned long long)tot.bytes);

    // Over all ranks every expert of every MoE layer is read once (no replicas here).
    int64_t sum = total_expert;
    CHECK_OK(ep_cluster_allreduce_i64(cl, &sum, 1, EP_REDUCE_SUM));
    int64_t expect = (int64_t)ep_model_n_moe_layers(&cfg) * E * 3;
    CHECK(sum == expect, "%s %s %s: %lld expert tensors read over all ranks, expected %lld",
          cfg.name, what, ep_place_kind_name(place), (long long)sum, (long long)expect);
    if (cl->rank == 0)
        printf("%s %s %s: rank 0 read %lld tensors, %.2f MB (%lld of %lld expert tensors)\n",
               cfg.name, what, ep_place_kind_name(place), (long long)tot.tensors,
               (double)tot.bytes / 1e6, (long long)total_expert, (long long)expect);
out:
    ep_model_free(m);
    ep_weights_free(w);
    for (int i = 0; i < lg.n && i < MAX_READS; i++)
        free(lg.name[i]);
    free(lg.expert_reads);
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl)) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    ep_log_set_rank(cl->rank);
    const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
    for (int i = 0; i < 2; i++) {
        run(cl, presets[i], NULL, EP_PLACE_CONTIGUOUS);
        run(cl, presets[i], NULL, EP_PLACE_ROUND_ROBIN);
    }

    // A BF16 make-model checkpoint (rank 0 writes, everyone reads): the
    // counter is in stored bytes and the same tensors are read.
    char dir[64] = "";
    int ok = 1;
    if (cl->rank == 0) {
        char tmpl[] = "/tmp/ep_test_load.XXXXXX";
        ep_model_cfg cfg;
        ok = mkdtemp(tmpl) && !ep_model_cfg_load("tiny-deepseek-v2", &cfg);
        if (ok) {
            snprintf(dir, sizeof dir, "%s/ckpt", tmpl);
            ok = ep_synth_write_checkpoint(&cfg, dir, 2, EP_DTYPE_BF16) == EP_OK;
        }
        CHECK(ok, "writing a tiny-deepseek-v2 checkpoint under /tmp: %s", ep_last_error());
    }
    CHECK_OK(ep_cluster_bcast(cl, &ok, sizeof ok, 0));
    CHECK_OK(ep_cluster_bcast(cl, dir, sizeof dir, 0));
    if (ok) run(cl, "tiny-deepseek-v2", dir, EP_PLACE_CONTIGUOUS);
    CHECK_OK(ep_cluster_barrier(cl));
    if (cl->rank == 0 && dir[0]) {
        // Remove what make-model wrote: the shards, the index, config.json.
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%.*s'", (int)(strrchr(dir, '/') - dir), dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    int code = mpi_check_finish(cl, "test_model_load");
    ep_cluster_free(cl);
    return code;
}
