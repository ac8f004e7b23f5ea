// The paged KV cache: sequences of odd lengths (5, 11, 13) growing one token
// at a time in turn, so their blocks interleave in the pool, keep their own
// rows (every row tagged and read back); block counts are ceil(len / block);
// freed blocks return and are reused; the context limit, an empty pool and
// full sequence slots are errors that name what ran out. Prefix caching:
// full blocks are found by their token prefix (tokens compared, salts kept
// apart), mapped by reference (the same rows, counted once), kept after their
// sequences end and evicted least recently freed first (a sequence's last
// block before its first); a rows-less mirror given the same calls hands out
// the same block ids; with caching off nothing is found.
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

static ep_kv *make_pc(int n_blocks, bool prefix, bool no_rows)
{
    ep_kv_opts o = {.n_layers = LAYERS,
                    .row_floats = ROW,
                    .block_tokens = BLOCK,
                    .n_blocks = n_blocks,
                    .max_seqs = 4,
                    .max_seq_tokens = 32,
                    .prefix_caching = prefix,
                    .no_rows = no_rows};
    ep_kv *kv = NULL;
    assert_int_equal(ep_kv_init(&o, &kv), EP_OK);
    return kv;
}

// Grows seq by tokens[0..n) in steps of `step` tokens (reserve, write rows
// tagged with the token, commit), as the model does.
static void grow(ep_kv *kv, int s, const int *tokens, int n, int step)
{
    for (int i = 0; i < n; i += step) {
        int m = i + step <= n ? step : n - i;
        int pos = ep_kv_seq_len(kv, s);
        assert_int_equal(ep_kv_reserve(kv, s, m), EP_OK);
        if (!ep_kv_options(kv)->no_rows)
            for (int j = 0; j < m; j++)
                for (int l = 0; l < LAYERS; l++)
                    ep_kv_row(kv, s, l, pos + j)[0] = (float)(tokens[i + j] * 10 + l);
        ep_kv_commit(kv, s, m, tokens + i);
    }
}

static void test_prefix_cache(void **state)
{
    (void)state;
    int tok[14];
    for (int i = 0; i < 14; i++)
        tok[i] = 100 + i;
    ep_kv *kv = make_pc(8, true, false);
    int a;
    assert_int_equal(ep_kv_seq_new(kv, &a), EP_OK);
    grow(kv, a, tok, 14, 3); // 3 full blocks + 2 tokens, committed in odd steps
    assert_int_equal(ep_kv_seq_blocks(kv, a), 4);
    uint64_t h[4], h2[4];
    int unref = -1;
    // Cached while a holds them (referenced), at most max_blocks.
    assert_int_equal(ep_kv_prefix_match(kv, 0, tok, 14, 4, h, &unref), 3);
    assert_int_equal(unref, 0);
    assert_int_equal(ep_kv_prefix_match(kv, 0, tok, 14, 2, h, NULL), 2);
    assert_int_equal(ep_kv_prefix_match(kv, 0, tok, 11, 4, h, NULL), 2); // only full blocks
    assert_int_equal(ep_kv_prefix_match(kv, 7, tok, 14, 4, h, NULL), 0); // another salt
    int other[14];
    memcpy(other, tok, sizeof other);
    other[5] = 1; // block 1 differs: block 2 has another prefix too
    assert_int_equal(ep_kv_prefix_match(kv, 0, other, 14, 4, h2, NULL), 1);
    assert_true(h2[0] == h[0]);

    // b maps a's three full blocks: the same ids, rows counted once.
    assert_int_equal(ep_kv_free_blocks(kv), 4);
    assert_int_equal(ep_kv_prefix_match(kv, 0, tok, 14, 4, h, NULL), 3);
    int b;
    assert_int_equal(ep_kv_seq_new_prefix(kv, 0, h, 3, &b), EP_OK);
    assert_int_equal(ep_kv_seq_len(kv, b), 12);
    assert_int_equal(ep_kv_free_blocks(kv), 4);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ep_kv_seq_block(kv, b, i), ep_kv_seq_block(kv, a, i));
    assert_float_equal(ep_kv_row(kv, b, 2, 9)[0], 109 * 10 + 2, 0);
    // b appends to a fresh block (never into a shared one).
    int nb[2] = {900, 901};
    grow(kv, b, nb, 2, 2);
    assert_int_not_equal(ep_kv_seq_block(kv, b, 3), ep_kv_seq_block(kv, a, 3));
    assert_int_equal(ep_kv_free_blocks(kv), 3);
    // A hash that is not cached is refused by name.
    uint64_t bad = h[0] ^ 1;
    int c;
    assert_int_equal(ep_kv_seq_new_prefix(kv, 0, &bad, 1, &c), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "not cached"));

    // a ends: its shared blocks stay with b, its partial block is free.
    ep_kv_seq_free(kv, a);
    assert_int_equal(ep_kv_free_blocks(kv), 4);
    assert_int_equal(ep_kv_cached_blocks(kv), 0);
    // b ends: its 3 full blocks stay cached (unreferenced), counted as free.
    ep_kv_seq_free(kv, b);
    assert_int_equal(ep_kv_free_blocks(kv), 8);
    assert_int_equal(ep_kv_cached_blocks(kv), 3);
    assert_int_equal(ep_kv_prefix_match(kv, 0, tok, 14, 4, h, &unref), 3);
    assert_int_equal(unref, 3);

    // Pressure: a new 24-token sequence takes the 5 free blocks, then evicts
    // the cached ones from the prefix's end: block 2 first, then block 1.
    int d, fill[24];
    for (int i = 0; i < 24; i++)
        fill[i] = 500 + i;
    assert_int_equal(ep_kv_seq_new(kv, &d), EP_OK);
    grow(kv, d, fill, 20, 4);
    assert_int_equal(ep_kv_cached_blocks(kv), 3);
    grow(kv, d, fill + 20, 4, 4);
    assert_int_equal(ep_kv_cached_blocks(kv), 2);
    assert_int_equal(ep_kv_prefix_match(kv, 0, tok, 14, 4, h, NULL), 2);
    assert_int_equal(ep_kv_reserve(kv, d, 4), EP_OK); // 28 tokens: evicts block 1
    assert_int_equal(ep_kv_prefix_match(kv, 0, tok, 14, 4, h, NULL), 1);
    assert_int_equal(ep_kv_free_blocks(kv), 1);
    assert_int_equal(ep_kv_reserve(kv, d, 8), EP_OK); // the last one: the first block
    assert_int_equal(ep_kv_prefix_match(kv, 0, tok, 14, 4, h, NULL), 0);
    assert_int_equal(ep_kv_reserve(kv, d, 9), EP_ERR_ARG); // 33 > context 32
    ep_kv_seq_free(kv, d);
    assert_int_equal(ep_kv_free_blocks(kv), 8);
    ep_kv_free(kv);
}

// The same calls on a cache with rows and a rows-less mirror give the same
// block ids, free counts and matches; with caching off nothing is found.
static void test_mirror_and_off(void **state)
{
    (void)state;
    ep_kv *kv = make_pc(9, true, false), *mir = make_pc(9, true, true),
          *off = make_pc(9, false, false);
    int tok[20];
    for (int i = 0; i < 20; i++)
        tok[i] = i % 7;
    ep_kv *all[3] = {kv, mir, off};
    int s[3][3];
    for (int round = 0; round < 4; round++) {
        for (int k = 0; k < 3; k++) {
            uint64_t h[8];
            int hit = ep_kv_prefix_match(all[k], 3, tok, 10 + round, 2, h, NULL);
            assert_int_equal(ep_kv_seq_new_prefix(all[k], 3, h, hit, &s[k][0]), EP_OK);
            grow(all[k], s[k][0], tok + hit * BLOCK, 10 + round - hit * BLOCK, 3);
            assert_int_equal(ep_kv_seq_new(all[k], &s[k][1]), EP_OK);
            grow(all[k], s[k][1], tok + round, 9, 2);
            if (round % 2) ep_kv_seq_free(all[k], s[k][1]);
            ep_kv_seq_free(all[k], s[k][0]);
            if (!(round % 2)) ep_kv_seq_free(all[k], s[k][1]);
        }
        assert_int_equal(ep_kv_free_blocks(kv), ep_kv_free_blocks(mir));
        assert_int_equal(ep_kv_cached_blocks(kv), ep_kv_cached_blocks(mir));
        assert_int_equal(ep_kv_cached_blocks(off), 0);
        uint64_t h[8];
        assert_int_equal(ep_kv_prefix_match(off, 3, tok, 20, 4, h, NULL), 0);
        assert_int_equal(ep_kv_prefix_match(kv, 3, tok, 20, 4, h, NULL),
                         ep_kv_prefix_match(mir, 3, tok, 20, 4, h, NULL));
    }
    // The same ids under the same growth.
    int a, b;
    assert_int_equal(ep_kv_seq_new(kv, &a), EP_OK);
    assert_int_equal(ep_kv_seq_new(mir, &b), EP_OK);
    grow(kv, a, tok, 20, 5);
    grow(mir, b, tok, 20, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(ep_kv_seq_block(kv, a, i), ep_kv_seq_block(mir, b, i));
    ep_kv_free(kv);
    ep_kv_free(mir);
    ep_kv_free(off);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interleaved_growth),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_prefix_cache),
        cmocka_unit_test(test_mirror_and_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
