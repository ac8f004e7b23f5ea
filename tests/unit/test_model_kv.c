// The paged KV cache: sequences of odd lengths (5, 11, 13) growing one token
// at a time in turn, so their blocks interleave in the pool, keep their own
// rows (every row tagged and read back); block counts are ceil(len / block);
// freed blocks return and are reused; the context limit, an empty pool and
// full sequence slots are errors that name what ran out.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/kv_cache.h"

enum { LAYERS = 3, ROW = 7, BLOCK = 4 };

static float tag(int seq, int layer, int pos, int i)
{
    return (float)(seq * 100000 + layer * 1000 + pos * 10 + i);
}

static ep_kv *make(int n_blocks, int max_seqs, int max_tokens)
{
    ep_kv_opts o = {.n_layers = LAYERS,
                    .row_floats = ROW,
                    .block_tokens = BLOCK,
                    .n_blocks = n_blocks,
                    .max_seqs = max_seqs,
                    .max_seq_tokens = max_tokens};
    ep_kv *kv = NULL;
    assert_int_equal(ep_kv_init(&o, &kv), EP_OK);
    return kv;
}

static void append(ep_kv *kv, int s)
{
    int pos = ep_kv_seq_len(kv, s);
    assert_int_equal(ep_kv_reserve(kv, s, 1), EP_OK);
    for (int l = 0; l < LAYERS; l++) {
        float *r = ep_kv_row(kv, s, l, pos);
        for (int i = 0; i < ROW; i++)
            r[i] = tag(s, l, pos, i);
    }
    int tok = s * 1000 + pos;
    ep_kv_commit(kv, s, 1, &tok);
}

static void check_seq(ep_kv *kv, int s)
{
    for (int p = 0; p < ep_kv_seq_len(kv, s); p++)
        for (int l = 0; l < LAYERS; l++) {
            const float *r = ep_kv_row(kv, s, l, p);
            for (int i = 0; i < ROW; i++)
                assert_float_equal(r[i], tag(s, l, p, i), 0.0);
        }
}

static void test_interleaved_growth(void **state)
{
    ep_kv *kv = make(11, 5, 16);
    const int want[3] = {5, 11, 13};
    int seq[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(ep_kv_seq_new(kv, &seq[i]), EP_OK);
    for (int p = 0; p < 13; p++)
        for (int i = 0; i < 3; i++)
            if (p < want[i]) append(kv, seq[i]);
    int used = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ep_kv_seq_len(kv, seq[i]), want[i]);
        assert_int_equal(ep_kv_seq_blocks(kv, seq[i]), (want[i] + BLOCK - 1) / BLOCK);
        used += ep_kv_seq_blocks(kv, seq[i]);
        check_seq(kv, seq[i]);
    }
    assert_int_equal(ep_kv_free_blocks(kv), 11 - used);

    // Free the 11-token sequence; a new one of 9 tokens reuses its 3 blocks.
    ep_kv_seq_free(kv, seq[1]);
    assert_false(ep_kv_seq_valid(kv, seq[1]));
    assert_int_equal(ep_kv_free_blocks(kv), 11 - used + 3);
    int s4;
    assert_int_equal(ep_kv_seq_new(kv, &s4), EP_OK);
    for (int p = 0; p < 9; p++)
        append(kv, s4);
    check_seq(kv, seq[0]);
    check_seq(kv, seq[2]);
    check_seq(kv, s4);
    assert_int_equal(ep_kv_free_blocks(kv), 11 - used);
    ep_kv_seq_free(kv, seq[0]);
    ep_kv_seq_free(kv, seq[2]);
    ep_kv_seq_free(kv, s4);
    ep_kv_seq_free(kv, 4242); // unknown: ignored
    assert_int_equal(ep_kv_free_blocks(kv), 11);
    ep_kv_free(kv);
}

static void test_limits(void **state)
{
    ep_kv *kv = make(5, 2, 13);
    int a, b, c;
    assert_int_equal(ep_kv_seq_new(kv, &a), EP_OK);
    assert_int_equal(ep_kv_seq_new(kv, &b), EP_OK);
    assert_int_equal(ep_kv_seq_new(kv, &c), EP_ERR_NOMEM);
    assert_non_null(strstr(ep_last_error(), "max_seqs"));
    // 14 tokens exceed the context of 13
    assert_int_equal(ep_kv_reserve(kv, a, 14), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "context is 13"));
    assert_int_equal(ep_kv_seq_blocks(kv, a), 0);
    // 13 tokens take 4 of the 5 blocks; b then fits 4 tokens but not 5
    assert_int_equal(ep_kv_reserve(kv, a, 13), EP_OK);
    assert_int_equal(ep_kv_seq_blocks(kv, a), 4);
    assert_int_equal(ep_kv_reserve(kv, b, 5), EP_ERR_NOMEM);
    assert_non_null(strstr(ep_last_error(), "n_blocks"));
    assert_int_equal(ep_kv_reserve(kv, b, 4), EP_OK);
    assert_int_equal(ep_kv_free_blocks(kv), 0);
    // reserving again what is already held takes nothing
    assert_int_equal(ep_kv_reserve(kv, b, 3), EP_OK);
    ep_kv_free(kv);
    ep_kv_free(NULL);

    ep_kv_opts bad = {.n_layers = 2,
                      .row_floats = 0,
                      .block_tokens = 4,
                      .n_blocks = 1,
                      .max_seqs = 1,
                      .max_seq_tokens = 4};
    ep_kv *none = NULL;
    assert_int_equal(ep_kv_init(&bad, &none), EP_ERR_ARG);
    assert_null(none);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interleaved_growth),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
