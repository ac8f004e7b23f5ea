// The threaded, vectorised attention (model/attn.c) through the model
// forward, against the reference forward (ep_model_reference: no KV cache,
// keys and values expanded, double sums): both families (tiny-qwen3-moe,
// GQA; tiny-deepseek-v2, MLA), every ISA this CPU runs (ep_kern_isa_cap) and
// 1 and 3 pool threads, on KV blocks of 16 tokens. Steps: one prefilling
// five sequences of 1, 15, 17, 33 and 70 tokens at once (one token; just
// before, just past and well past block boundaries); a decode of all five;
// a mixed one (a 20-token chunk after cached tokens, across a block
// boundary, beside decodes, one sequence left out); a decode of all five;
// one token of one sequence alone. Every new position's logits within 1e-4
// relative per row of the reference (the tolerance of test_model_forward),
// and the logits of 3 threads equal those of 1 bit for bit (each attention
// output is one task's, in an order fixed by the step's shape).
// One MPI process (ep_model_init takes a cluster). Fixed seeds.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/weights.h"
#include "experts/kernels.h"
#include "model/model.h"

enum { N_SEQ = 5, N_STEP = 5, MAX_LEN = 80, CAP = 160 };
// New tokens of each sequence in each step (0: not in the step).
static const int step_new[N_STEP][N_SEQ] = {
    {1, 15, 17, 33, 70}, // prefill, all five in one step
    {1, 1, 1, 1, 1},     // decode
    {20, 1, 0, 1, 1},    // a prefill chunk beside decodes, sequence 2 left out
    {1, 1, 1, 1, 1},     // decode
    {0, 0, 1, 0, 0},     // one token alone
};
static const double tol_ref = 1e-4;

static ep_cluster *g_cl;

typedef struct {
    ep_model_cfg cfg;
    ep_weights *w;
    ep_policy *pol;
    ep_model *m;
    int len[N_SEQ];          // tokens over all steps
    int tok[N_SEQ][MAX_LEN]; // the tokens
    float *ref[N_SEQ];       // [len, vocab] reference logits
    float *got[N_SEQ];       // [len, vocab] the fast path's, this run
    float *got1[N_SEQ];      // [len, vocab] the fast path's at 1 thread, this ISA
} fixture;

static void fixture_free(fixture *f)
{
    ep_model_free(f->m);
    ep_policy_free(f->pol);
    ep_weights_free(f->w);
    for (int i = 0; i < N_SEQ; i++) {
        free(f->ref[i]);
        free(f->got[i]);
        free(f->got1[i]);
    }
}

static void fixture_init(fixture *f, const char *preset)
{
    memset(f, 0, sizeof *f);
    assert_int_equal(ep_model_cfg_load(preset, &f->cfg), EP_OK);
    assert_int_equal(ep_weights_open(&f->cfg, &f->w), EP_OK);
    assert_int_equal(ep_policy_create(&f->cfg, "baseline", &f->pol), EP_OK);
    ep_model_opts o;
    ep_model_opts_default(&o, &f->cfg);
    o.moe.cap_tokens = CAP;
    o.moe.with_reference = true;
    if (ep_policy_max_k(f->pol) > o.moe.max_k) o.moe.max_k = ep_policy_max_k(f->pol);
    o.kv_block_tokens = 16;
    o.max_ctx = MAX_LEN;
    o.max_seqs = N_SEQ;
    o.kv_blocks = N_SEQ * (MAX_LEN / 16);
    assert_int_equal(ep_model_init(&f->cfg, g_cl, f->w, &o, &f->m), EP_OK);
    const int V = f->cfg.vocab;
    ep_rng r;
    ep_rng_seed(&r, 4242);
    for (int i = 0; i < N_SEQ; i++) {
        for (int s = 0; s < N_STEP; s++)
            f->len[i] += step_new[s][i];
        assert_true(f->len[i] <= MAX_LEN);
        for (int t = 0; t < f->len[i]; t++)
            f->tok[i][t] = (int)(ep_rng_next(&r) % (uint64_t)V);
        const size_t bytes = (size_t)f->len[i] * V * sizeof(float);
        f->ref[i] = malloc(bytes);
        f->got[i] = malloc(bytes);
        f->got1[i] = malloc(bytes);
        assert_int_equal(ep_model_reference(f->m, f->pol, f->tok[i], f->len[i], f->ref[i]), EP_OK);
    }
}

// The steps on fresh sequences; every new row's logits into f->got.
static void run_steps(fixture *f)
{
    const int V = f->cfg.vocab;
    int seq[N_SEQ], at[N_SEQ] = {0};
    for (int i = 0; i < N_SEQ; i++)
        assert_int_equal(ep_model_seq_new(f->m, &seq[i]), EP_OK);
    float *logits = malloc((size_t)CAP * V * sizeof(float));
    for (int s = 0; s < N_STEP; s++) {
        int bseq[N_SEQ], n_new[N_SEQ], tokens[CAP], nb = 0, T = 0;
        for (int i = 0; i < N_SEQ; i++) {
            if (!step_new[s][i]) continue;
            bseq[nb] = seq[i];
            n_new[nb++] = step_new[s][i];
            for (int j = 0; j < step_new[s][i]; j++)
                tokens[T++] = f->tok[i][at[i] + j];
        }
        ep_batch b = {
            .n_seqs = nb, .seq = bseq, .n_new = n_new, .tokens = tokens, .all_logits = true};
        assert_int_equal(ep_model_forward(f->m, f->pol, &b, logits, NULL), EP_OK);
        T = 0;
        for (int i = 0; i < N_SEQ; i++) {
            const size_t n = (size_t)step_new[s][i] * V;
            memcpy(f->got[i] + (size_t)at[i] * V, logits + (size_t)T * V, n * sizeof(float));
            T += step_new[s][i];
            at[i] += step_new[s][i];
        }
    }
    for (int i = 0; i < N_SEQ; i++) {
        assert_int_equal(ep_model_seq_len(f->m, seq[i]), f->len[i]);
        ep_model_seq_free(f->m, seq[i]);
    }
    free(logits);
}

static void check_family(const char *preset)
{
    static fixture f;
    fixture_init(&f, preset);
    const int V = f.cfg.vocab;
    static const int threads[] = {1, 3};
    for (int isa = 0; isa <= (int)ep_kern_isa_best(); isa++) {
        ep_kern_isa_cap((ep_kern_isa)isa);
        for (size_t ti = 0; ti < EP_ARRAY_LEN(threads); ti++) {
            ep_par_set_threads(threads[ti]);
            run_steps(&f);
            for (int i = 0; i < N_SEQ; i++) {
                for (int t = 0; t < f.len[i]; t++) {
                    int64_t wrong = 0;
                    const size_t off = (size_t)t * V;
                    const double err =
                        ep_moe_rel_err(f.got[i] + off, f.ref[i] + off, 1, V, tol_ref, &wrong);
                    if (err > tol_ref)
                        fail_msg("%s isa %s %d threads: sequence %d (of %d tokens) position %d: "
                                 "rel err %.3e > %.0e against the reference",
                                 preset, ep_kern_isa_name((ep_kern_isa)isa), threads[ti], i,
                                 f.len[i], t, err, tol_ref);
                }
                const size_t bytes = (size_t)f.len[i] * V * sizeof(float);
                if (ti == 0)
                    memcpy(f.got1[i], f.got[i], bytes);
                else if (memcmp(f.got1[i], f.got[i], bytes))
                    fail_msg("%s isa %s: sequence %d's logits at %d threads differ from 1 "
                             "thread's",
                             preset, ep_kern_isa_name((ep_kern_isa)isa), i, threads[ti]);
            }
        }
    }
    fixture_free(&f);
}

static void test_qwen3_gqa(void **state)
{
    (void)state;
    check_family("tiny-qwen3-moe");
}

static void test_deepseek_mla(void **state)
{
    (void)state;
    check_family("tiny-deepseek-v2");
}

static int restore(void **state)
{
    (void)state;
    ep_kern_isa_cap(EP_KERN_ISA_AVX512_BF16);
    ep_par_set_threads(1);
    return 0;
}

int main(int argc, char **argv)
{
    if (ep_cluster_init(&argc, &argv, 0, &g_cl) != EP_OK) {
        fprintf(stderr, "ep_cluster_init: %s\n", ep_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_qwen3_gqa, restore),
        cmocka_unit_test_teardown(test_deepseek_mla, restore),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ep_cluster_free(g_cl);
    return rc;
}
