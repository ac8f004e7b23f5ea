// The full model forward at world sizes 1-4 (ctest), both tiny presets (and
// DeepSeek with q_proj instead of q LoRA, as V2-Lite):
// data-parallel attention (each rank owns some sequences, rank 1 none when
// there are several ranks) with EP MoE layers equals the single-process
// reference forward within 1e-4 relative per logits row (seen: ~1e-6), through a chunked
// prefill (two chunks of different sequences' lengths in one batch) and four
// decode steps on the paged KV cache; decode logits equal a fresh one-shot
// prefill of the whole sequence on the EP path (1e-4); a bad batch on one
// rank fails the step on every rank and leaves every cache as it was.
#include "common/weights.h"
#include "model/model.h"
#include "mpi_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The third entry is tiny-deepseek-v2 with q_lora_rank 0: q_proj as in V2-Lite.
static const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2", "tiny-deepseek-v2"};
static const char *policies[] = {"baseline", "ban"};
enum { N_SEQ = 6, N_DEC = 4, CAP = 80, MAX_LEN = 13 + N_DEC };
static const int prompt_len[N_SEQ] = {5, 7, 11, 13, 3, 9};
static const double tol_ref = 1e-4, tol_self = 1e-4;

static int owner(int i, int world)
{
    if (world == 1) return 0;
    int r = i % world;
    return r == 1 ? 0 : r; // rank 1 owns nothing: it only joins the MoE layers
}

static void seq_tokens(int i, int vocab, int *tok)
{
    ep_rng r;
    ep_rng_seed(&r, 9901 + (uint64_t)i);
    for (int t = 0; t < MAX_LEN; t++)
        tok[t] = (int)(ep_rng_next(&r) % (uint64_t)vocab);
}

typedef struct {
    int n;                   // sequences this rank owns
    int gid[N_SEQ];          // their global index
    int seq[N_SEQ];          // kv sequence ids
    int tok[N_SEQ][MAX_LEN]; // tokens
    float *ref[N_SEQ];       // [prompt + N_DEC, vocab] reference logits
} owned;

static void check_rows(const ep_model_cfg *cfg, const char *what, const float *got,
                       const float *want, int rows, double tol, int gid, int pos0)
{
    int64_t wrong = 0;
    double err = ep_moe_rel_err(got, want, rows, cfg->vocab, tol, &wrong);
    CHECK(err <= tol, "%s: %s seq %d positions %d..%d: max rel err %.3e > %.0e", cfg->name, what,
          gid, pos0, pos0 + rows - 1, err, tol);
}

static void run_policy(ep_cluster *cl, const ep_model_cfg *cfg, ep_model *m, const ep_policy *pol)
{
    const int V = cfg->vocab;
    owned o = {0};
    for (int i = 0; i < N_SEQ; i++) {
        if (owner(i, cl->world_size) != cl->rank) continue;
        int k = o.n++;
        o.gid[k] = i;
        seq_tokens(i, V, o.tok[k]);
        CHECK_OK(ep_model_seq_new(m, &o.seq[k]));
        int n = prompt_len[i] + N_DEC;
        o.ref[k] = ep_xmalloc((size_t)n * V * sizeof(float));
        CHECK_OK(ep_model_reference(m, pol, o.tok[k], n, o.ref[k]));
    }
    float *logits = ep_xmalloc((size_t)CAP * V * sizeof(float));
    int n_new[N_SEQ], tokens[CAP];
    ep_batch b = {.n_seqs = o.n, .seq = o.seq, .n_new = n_new, .tokens = tokens};

    // Prefill in two chunks: the first half of every prompt, then the rest.
    for (int chunk = 0; chunk < 2; chunk++) {
        int T = 0;
        for (int k = 0; k < o.n; k++) {
            int L = prompt_len[o.gid[k]], h = (L + 1) / 2;
            int from = chunk ? h : 0, to = chunk ? L : h;
            n_new[k] = to - from;
            for (int t = from; t < to; t++)
                tokens[T++] = o.tok[k][t];
        }
        b.all_logits = true;
        ep_status s = ep_model_forward(m, pol, &b, logits, NULL);
        CHECK(s == EP_OK, "%s %s prefill chunk %d: %s", cfg->name, ep_policy_name(pol), chunk,
              ep_last_error());
        if (s) goto out;
        T = 0;
        for (int k = 0; k < o.n; k++) {
            int L = prompt_len[o.gid[k]], from = chunk ? (L + 1) / 2 : 0;
            check_rows(cfg, "prefill vs reference", logits + (size_t)T * V,
                       o.ref[k] + (size_t)from * V, n_new[k], tol_ref, o.gid[k], from);
            T += n_new[k];
        }
    }

    // Decode steps: one token per sequence, last logits only.
    float *dec = ep_xmalloc((size_t)N_SEQ * N_DEC * V * sizeof(float));
    for (int step = 0; step < N_DEC; step++) {
        for (int k = 0; k < o.n; k++) {
            n_new[k] = 1;
            tokens[k] = o.tok[k][prompt_len[o.gid[k]] + step];
        }
        b.all_logits = false;
        ep_status s = ep_model_forward(m, pol, &b, logits, NULL);
        CHECK(s == EP_OK, "%s decode step %d: %s", cfg->name, step, ep_last_error());
        if (s) break;
        for (int k = 0; k < o.n; k++) {
            int pos = prompt_len[o.gid[k]] + step;
            CHECK(ep_model_seq_len(m, o.seq[k]) == pos + 1, "seq %d holds %d tokens, expected %d",
                  o.gid[k], ep_model_seq_len(m, o.seq[k]), pos + 1);
            check_rows(cfg, "decode vs reference", logits + (size_t)k * V,
                       o.ref[k] + (size_t)pos * V, 1, tol_ref, o.gid[k], pos);
            memcpy(dec + ((size_t)k * N_DEC + step) * V, logits + (size_t)k * V, V * sizeof(float));
        }
    }

    // The same sequences again, each prefilled whole in one step on fresh
    // cache sequences: the decode logits must come back.
    int fresh[N_SEQ];
    int T = 0;
    for (int k = 0; k < o.n; k++) {
        CHECK_OK(ep_model_seq_new(m, &fresh[k]));
        n_new[k] = prompt_len[o.gid[k]] + N_DEC;
        for (int t = 0; t < n_new[k]; t++)
            tokens[T++] = o.tok[k][t];
    }
    b.seq = fresh;
    b.all_logits = true;
    ep_status s = ep_model_forward(m, pol, &b, logits, NULL);
    CHECK(s == EP_OK, "%s one-shot prefill: %s", cfg->name, ep_last_error());
    T = 0;
    for (int k = 0; k < o.n && !s; k++) {
        int L = prompt_len[o.gid[k]];
        check_rows(cfg, "decode vs one-shot prefill", dec + (size_t)k * N_DEC * V,
                   logits + (size_t)(T + L) * V, N_DEC, tol_self, o.gid[k], L);
        T += n_new[k];
    }
    for (int k = 0; k < o.n; k++)
        ep_model_seq_free(m, fresh[k]);
    b.seq = o.seq;

    // A bad batch on rank 0 only (an unknown token id): every rank's step
    // fails and no cache moves.
    for (int k = 0; k < o.n; k++) {
        n_new[k] = 1;
        tokens[k] = cl->rank == 0 && k == 0 ? V + 3 : 0;
    }
    int before = o.n ? ep_model_seq_len(m, o.seq[0]) : 0;
    s = ep_model_forward(m, pol, &b, logits, NULL);
    CHECK(s == EP_ERR_ARG, "bad batch on rank 0: rank %d got status %d", cl->rank, s);
    if (o.n)
        CHECK(ep_model_seq_len(m, o.seq[0]) == before, "a failed step moved seq %d from %d to %d",
              o.gid[0], before, ep_model_seq_len(m, o.seq[0]));
    free(dec);
out:
    for (int k = 0; k < o.n; k++) {
        ep_model_seq_free(m, o.seq[k]);
        free(o.ref[k]);
    }
    free(logits);
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    for (size_t pi = 0; pi < EP_ARRAY_LEN(presets); pi++) {
        ep_model_cfg cfg;
        ep_weights *w = NULL;
        ep_model *m = NULL;
        ep_policy *pol[EP_ARRAY_LEN(policies)] = {0};
        CHECK_OK(ep_model_cfg_load(presets[pi], &cfg));
        if (pi == 2) {
            cfg.q_lora_rank = 0;
            snprintf(cfg.name, sizeof cfg.name, "tiny-deepseek-v2 (q_proj)");
        }
        CHECK_OK(ep_weights_open(&cfg, &w));
        if (!w) continue;
        ep_model_opts o;
        ep_model_opts_default(&o, &cfg);
        o.moe.cap_tokens = CAP;
        o.moe.with_reference = true;
        o.kv_block_tokens = 5;
        o.kv_blocks = 48;
        o.max_seqs = 2 * N_SEQ;
        o.max_ctx = 32;
        for (size_t i = 0; i < EP_ARRAY_LEN(policies); i++) {
            CHECK_OK(ep_policy_create(&cfg, policies[i], &pol[i]));
            if (pol[i] && ep_policy_max_k(pol[i]) > o.moe.max_k)
                o.moe.max_k = ep_policy_max_k(pol[i]);
        }
        CHECK_OK(ep_model_init(&cfg, cl, w, &o, &m));
        if (m) {
            int free0 = ep_kv_free_blocks(ep_model_kv(m));
            for (size_t i = 0; i < EP_ARRAY_LEN(policies); i++)
                if (pol[i]) run_policy(cl, &cfg, m, pol[i]);
            CHECK(ep_kv_free_blocks(ep_model_kv(m)) == free0,
                  "%s: %d KV blocks free after freeing every sequence, %d before", cfg.name,
                  ep_kv_free_blocks(ep_model_kv(m)), free0);
        }
        ep_model_free(m);
        for (size_t i = 0; i < EP_ARRAY_LEN(policies); i++)
            ep_policy_free(pol[i]);
        ep_weights_free(w);
    }
    int rc = mpi_check_finish(cl, "model_forward");
    ep_cluster_free(cl);
    return rc;
}
