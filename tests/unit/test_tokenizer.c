// The tokenizer on small tokenizer.json files built here (all 256 byte
// tokens, a few merges and added tokens): merge order, added and special
// tokens, lstrip/rstrip, NFC, byte-exact decode, the bad inputs with their
// messages; the synthetic tokenizer of the tiny presets (size, determinism,
// round trips of random UTF-8) and the chat templates. Parity with the real
// Qwen3 tokenizer is tests/e2e/tokenizer_parity.sh.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/model_cfg.h"
#include "model/tokenizer.h"
#include "model/tokenizer_impl.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

static const char QWEN3_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// Extra tokens after the 256 bytes (id = byte value), as raw bytes.
enum { ID_AB = 256, ID_AA, ID_BC, ID_ABC, ID_SP_AB, ID_SPECIAL = 300, ID_TOOL, ID_L, ID_R };
static const char *const EXTRA[] = {"ab", "aa", "bc", "abc", " ab"};

typedef struct {
    bool nfc;
    bool pair_merges; // ["a", "b"] instead of "a b"
    bool swap_ab_aa;  // rank "a a" before "a b"
    const char *model_type;
    const char *regex;
    const char *bad_merge; // appended as a merge
} hand_opts;

static json_t *bkey(const char *s)
{
    char k[64];
    size_t n = ep_tk_byte_key((const unsigned char *)s, strlen(s), k);
    return json_stringn(k, n);
}

static void add_merge(json_t *merges, const char *a, const char *b, bool pair)
{
    json_t *ka = bkey(a), *kb = bkey(b);
    if (pair) {
        json_array_append_new(merges, json_pack("[OO]", ka, kb));
    } else {
        char m[128];
        snprintf(m, sizeof m, "%s %s", json_string_value(ka), json_string_value(kb));
        json_array_append_new(merges, json_string(m));
    }
    json_decref(ka);
    json_decref(kb);
}

static char *hand_json(hand_opts o)
{
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        unsigned char ub = (unsigned char)b;
        char key[4];
        key[ep_tk_byte_key(&ub, 1, key)] = 0;
        json_object_set_new(vocab, key, json_integer(b));
    }
    for (size_t i = 0; i < sizeof EXTRA / sizeof *EXTRA; i++) {
        json_t *k = bkey(EXTRA[i]);
        json_object_set_new(vocab, json_string_value(k), json_integer(256 + (int)i));
        json_decref(k);
    }
    json_t *merges = json_array();
    add_merge(merges, "b", "c", o.pair_merges);
    if (o.swap_ab_aa) add_merge(merges, "a", "a", o.pair_merges);
    add_merge(merges, "a", "b", o.pair_merges);
    if (!o.swap_ab_aa) add_merge(merges, "a", "a", o.pair_merges);
    add_merge(merges, "ab", "c", o.pair_merges);
    add_merge(merges, " ", "ab", o.pair_merges);
    if (o.bad_merge) json_array_append_new(merges, json_string(o.bad_merge));
    json_t *added =
        json_pack("[{s:i, s:s, s:b}, {s:i, s:s, s:b}, {s:i, s:s, s:b, s:b}, {s:i, s:s, s:b, s:b}]",
                  "id", ID_SPECIAL, "content", "<|s|>", "special", 1, "id", ID_TOOL, "content",
                  "<tool>", "special", 0, "id", ID_L, "content", "[L]", "special", 1, "lstrip", 1,
                  "id", ID_R, "content", "[R]", "special", 1, "rstrip", 1);
    json_t *root = json_pack(
        "{s:o, s:o, s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b}]}, s:{s:s}, "
        "s:{s:s, s:o, s:o}}",
        "added_tokens", added, "normalizer",
        o.nfc ? json_pack("{s:s}", "type", "NFC") : json_null(), "pre_tokenizer", "type",
        "Sequence", "pretokenizers", "type", "Split", "pattern", "Regex",
        o.regex ? o.regex : QWEN3_REGEX, "behavior", "Isolated", "invert", 0, "type", "ByteLevel",
        "add_prefix_space", 0, "use_regex", 0, "decoder", "type", "ByteLevel", "model", "type",
        o.model_type ? o.model_type : "BPE", "vocab", vocab, "merges", merges);
    assert_non_null(root);
    char *s = json_dumps(root, 0);
    json_decref(root);
    return s;
}

static ep_tokenizer *hand(hand_opts o)
{
    char *j = hand_json(o);
    ep_tokenizer *t;
    ep_status st = ep_tokenizer_load_json(j, strlen(j), "hand.json", &t);
    if (st) fprintf(stderr, "%s\n", ep_last_error());
    assert_int_equal(st, EP_OK);
    free(j);
    return t;
}

// Encodes s and compares with want[0..n).
static void expect_ids(const ep_tokenizer *t, const char *s, bool special, const int *want, int n)
{
    int *ids, m;
    assert_int_equal(ep_tokenizer_encode(t, s, strlen(s), special, &ids, &m), EP_OK);
    if (m != n || memcmp(ids, want, sizeof(int) * (size_t)n)) {
        fprintf(stderr, "encode \"%s\": got", s);
        for (int i = 0; i < m; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, ", expected");
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
        fail();
    }
    free(ids);
}
#define EXPECT(t, s, sp, ...)                                                                      \
    do {                                                                                           \
        const int w_[] = {__VA_ARGS__};                                                            \
        expect_ids(t, s, sp, w_, (int)(sizeof w_ / sizeof *w_));                                   \
    } while (0)

// decode(encode(s)) == want
static void round_trip(const ep_tokenizer *t, const char *s, size_t n, const char *want, size_t wn)
{
    int *ids, m;
    assert_int_equal(ep_tokenizer_encode(t, s, n, true, &ids, &m), EP_OK);
    char *d;
    size_t dl;
    assert_int_equal(ep_tokenizer_decode(t, ids, m, false, &d, &dl), EP_OK);
    assert_int_equal(dl, wn);
    assert_memory_equal(d, want, wn);
    free(d);
    free(ids);
}

// ---- hand-written tokenizer ----------------------------------------------------

static void test_merge_order(void **state)
{
    ep_tokenizer *t = hand((hand_opts){0});
    assert_int_equal(ep_tokenizer_n_ids(t), ID_R + 1);
    EXPECT(t, "abc", true, 'a', ID_BC); // "b c" ranks first; "ab c" then has no "ab"
    EXPECT(t, "aab", true, 'a', ID_AB); // "a b" ranks before "a a"
    EXPECT(t, "aaa", true, ID_AA, 'a'); // equal ranks: leftmost first
    EXPECT(t, "aaaa", true, ID_AA, ID_AA);
    EXPECT(t, "ab ab", true, ID_AB, ID_SP_AB); // merges across the Ġ of the pre-token
    EXPECT(t, "xyz", true, 'x', 'y', 'z');
    ep_tokenizer_free(t);

    t = hand((hand_opts){.swap_ab_aa = true});
    EXPECT(t, "aab", true, ID_AA, 'b');
    ep_tokenizer_free(t);

    // ["a", "b"] pairs mean the same as "a b" strings
    t = hand((hand_opts){.pair_merges = true});
    EXPECT(t, "aab abc", true, 'a', ID_AB, ' ', 'a', ID_BC);
    ep_tokenizer_free(t);
}

// Merging the first pair found (or the pairs left to right) would give
// [ab, c, ab]; ranks give [a, bc, ab].
static void test_merge_rank_not_greedy(void **state)
{
    ep_tokenizer *t = hand((hand_opts){0});
    EXPECT(t, "abcab", true, 'a', ID_BC, ID_AB);
    ep_tokenizer_free(t);
}

static void test_added_tokens(void **state)
{
    ep_tokenizer *t = hand((hand_opts){0});
    EXPECT(t, "x<|s|>y", true, 'x', ID_SPECIAL, 'y');
    EXPECT(t, "x<|s|>y", false, 'x', '<', '|', 's', '|', '>', 'y');
    EXPECT(t, "<tool>", false, ID_TOOL); // not special: always recognised
    EXPECT(t, "<|s|><|s|>", true, ID_SPECIAL, ID_SPECIAL);
    EXPECT(t, "<|s", true, '<', '|', 's');
    EXPECT(t, "q  [L]z", true, 'q', ID_L, 'z');      // lstrip eats the spaces before
    EXPECT(t, "[R] \t z", true, ID_R, 'z');          // rstrip eats those after
    EXPECT(t, "q [R] z", true, 'q', ' ', ID_R, 'z'); // but not before
    assert_true(ep_tokenizer_is_special(t, ID_SPECIAL));
    assert_false(ep_tokenizer_is_special(t, ID_TOOL));
    assert_false(ep_tokenizer_is_special(t, 'a'));
    assert_int_equal(ep_tokenizer_find(t, "<tool>"), ID_TOOL);
    assert_int_equal(ep_tokenizer_find(t, "\xc4\xa0"
                                          "ab"),
                     ID_SP_AB); // vocab key form
    assert_int_equal(ep_tokenizer_find(t, "nope"), -1);
    int eos[4];
    assert_int_equal(ep_tokenizer_eos_ids(t, eos, 4), 0);

    size_t n;
    const char *p = ep_tokenizer_piece(t, ID_SP_AB, &n);
    assert_int_equal(n, 3);
    assert_memory_equal(p, " ab", 3);
    p = ep_tokenizer_piece(t, ID_SPECIAL, &n);
    assert_int_equal(n, 5);
    assert_memory_equal(p, "<|s|>", 5);
    assert_null(ep_tokenizer_piece(t, ID_R + 1, &n));
    assert_null(ep_tokenizer_piece(t, 290, &n)); // a gap: no token
    assert_null(ep_tokenizer_piece(t, -1, &n));

    // skip_special drops special tokens only
    int ids[] = {'a', ID_SPECIAL, ID_TOOL, 'b'};
    char *d;
    size_t dl;
    assert_int_equal(ep_tokenizer_decode(t, ids, 4, true, &d, &dl), EP_OK);
    assert_string_equal(d, "a<tool>b");
    free(d);
    assert_int_equal(ep_tokenizer_decode(t, ids, 4, false, &d, &dl), EP_OK);
    assert_string_equal(d, "a<|s|><tool>b");
    free(d);
    ep_tokenizer_free(t);
}

static void test_nfc(void **state)
{
    ep_tokenizer *t = hand((hand_opts){.nfc = true});
    EXPECT(t, "e\xcc\x81", true, 0xc3, 0xa9); // e + U+0301 -> é (C3 A9)
    round_trip(t, "cafe\xcc\x81", 6, "caf\xc3\xa9", 5);
    ep_tokenizer_free(t);
    t = hand((hand_opts){0});
    EXPECT(t, "e\xcc\x81", true, 'e', 0xcc, 0x81);
    ep_tokenizer_free(t);
}

static void test_bytes_round_trip(void **state)
{
    ep_tokenizer *t = hand((hand_opts){0});
    // every byte of valid UTF-8, including NUL and controls
    const char s[] = "\x00\x01\x7f\t\n\r a\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf\xf0\x90\x80"
                     "\x80\xf4\x8f\xbf\xbf";
    round_trip(t, s, sizeof s - 1, s, sizeof s - 1);
    round_trip(t, "", 0, "", 0);

    // decode is byte-exact even when ids split a character
    int half[] = {0xe4}, rest[] = {0xbd, 0xa0}, all[] = {0xe4, 0xbd, 0xa0};
    char *a, *b, *c;
    size_t al, bl, cl;
    assert_int_equal(ep_tokenizer_decode(t, half, 1, false, &a, &al), EP_OK);
    assert_int_equal(ep_tokenizer_decode(t, rest, 2, false, &b, &bl), EP_OK);
    assert_int_equal(ep_tokenizer_decode(t, all, 3, false, &c, &cl), EP_OK);
    assert_int_equal(al, 1);
    assert_int_equal((unsigned char)a[0], 0xe4);
    assert_int_equal(al + bl, cl);
    assert_memory_equal(c, a, al);
    assert_memory_equal(c + al, b, bl);
    assert_string_equal(c, "\xe4\xbd\xa0");
    free(a);
    free(b);
    free(c);

    // invalid UTF-8 in the input: ARG naming the offset
    int *ids, n;
    assert_int_equal(ep_tokenizer_encode(t, "abc\xff", 4, true, &ids, &n), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "offset 3"));
    assert_int_equal(ep_tokenizer_encode(t, "\xc0\xaf", 2, true, &ids, &n), EP_ERR_ARG); // overlong
    assert_int_equal(ep_tokenizer_encode(t, "\xed\xa0\x80", 3, true, &ids, &n), EP_ERR_ARG);
    ep_tokenizer_free(t);
}

static void test_long_input(void **state)
{
    ep_tokenizer *t = hand((hand_opts){0});
    // one pre-token of ~100k letters: the heap merge loop, not a quadratic one
    size_t n = 99999;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = "aab"[i % 3];
    s[n] = 0;
    int *ids, m;
    assert_int_equal(ep_tokenizer_encode(t, s, n, true, &ids, &m), EP_OK);
    assert_int_equal(m, 2 * (int)(n / 3));
    for (int i = 0; i < m; i += 2) {
        assert_int_equal(ids[i], 'a');
        assert_int_equal(ids[i + 1], ID_AB);
    }
    free(ids);
    free(s);
    ep_tokenizer_free(t);
}

static void expect_load_error(hand_opts o, ep_status want, const char *s1, const char *s2)
{
    char *j = hand_json(o);
    ep_tokenizer *t = (ep_tokenizer *)1;
    assert_int_equal(ep_tokenizer_load_json(j, strlen(j), "hand.json", &t), want);
    assert_null(t);
    const char *msg = ep_last_error();
    if (!strstr(msg, "hand.json") || !strstr(msg, s1) || (s2 && !strstr(msg, s2))) {
        fprintf(stderr, "message \"%s\" lacks \"%s\" / \"%s\"\n", msg, s1, s2 ? s2 : "");
        fail();
    }
    free(j);
}

static void test_bad_inputs(void **state)
{
    expect_load_error((hand_opts){.model_type = "Unigram"}, EP_ERR_UNSUPPORTED, "model.type",
                      "Unigram");
    expect_load_error((hand_opts){.model_type = "WordPiece"}, EP_ERR_UNSUPPORTED, "model.type",
                      "WordPiece");
    expect_load_error((hand_opts){.regex = "(\\p{L}+"}, EP_ERR_FORMAT, "pretokenizers[0]",
                      "(\\p{L}+");
    expect_load_error((hand_opts){.bad_merge = "a zz"}, EP_ERR_FORMAT, "model.merges[5]", "zz");
    expect_load_error((hand_opts){.bad_merge = "abc"}, EP_ERR_FORMAT, "model.merges[5]",
                      "expected \"a b\"");

    ep_tokenizer *t;
    const char *bad[] = {"{", "[]", "{\"model\": 3}", ""};
    const char *want[] = {"line 1", "top", "'model'", "line"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(ep_tokenizer_load_json(bad[i], strlen(bad[i]), "bad.json", &t),
                         EP_ERR_FORMAT);
        assert_non_null(strstr(ep_last_error(), "bad.json"));
        assert_non_null(strstr(ep_last_error(), want[i]));
    }
    const char *unsup = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                        " \"normalizer\": {\"type\": \"Lowercase\"},"
                        " \"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": "
                        "\"ByteLevel\"}}";
    assert_int_equal(ep_tokenizer_load_json(unsup, strlen(unsup), "n.json", &t),
                     EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "Lowercase"));
    const char *nobl = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
                       " \"pre_tokenizer\": {\"type\": \"Whitespace\"}}";
    assert_int_equal(ep_tokenizer_load_json(nobl, strlen(nobl), "p.json", &t), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "Whitespace"));

    assert_int_equal(ep_tokenizer_load("/nonexistent/tokenizer.json", &t), EP_ERR_IO);
    assert_non_null(strstr(ep_last_error(), "/nonexistent/tokenizer.json"));

    // unknown ids in decode name the id and its index
    t = hand((hand_opts){0});
    int ids[] = {'a', 99999, 'b'};
    char *d;
    size_t dl;
    assert_int_equal(ep_tokenizer_decode(t, ids, 3, false, &d, &dl), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "ids[1]"));
    assert_non_null(strstr(ep_last_error(), "99999"));
    ids[1] = 290; // inside the range, but no token has it
    assert_int_equal(ep_tokenizer_decode(t, ids, 3, false, &d, &dl), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "290"));
    ids[1] = -1;
    assert_int_equal(ep_tokenizer_decode(t, ids, 3, false, &d, &dl), EP_ERR_ARG);
    ep_tokenizer_free(t);
}

// ---- the synthetic tokenizer ------------------------------------------------------

static ep_tokenizer *synth(const char *preset, ep_model_cfg *cfg)
{
    assert_int_equal(ep_model_cfg_load(preset, cfg), EP_OK);
    ep_tokenizer *t;
    ep_status st = ep_tokenizer_for_model(cfg, &t);
    if (st) fprintf(stderr, "%s\n", ep_last_error());
    assert_int_equal(st, EP_OK);
    return t;
}

// A random valid UTF-8 string of about n bytes drawn from several scripts.
static size_t random_utf8(uint64_t *seed, char *out, size_t n)
{
    static const uint32_t ranges[][2] = {
        {0x20, 0x7e},   {0x09, 0x0d},     {0xa0, 0x17f},    {0x300, 0x36f},     {0x391, 0x3c9},
        {0x410, 0x44f}, {0x4e00, 0x9fff}, {0xac00, 0xd7a3}, {0x1f600, 0x1f64f}, {0x0, 0x10ffff}};
    size_t k = 0;
    while (k + 4 < n) {
        *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t r = *seed >> 16;
        const uint32_t *rg = ranges[r % 10];
        uint32_t cp = rg[0] + (uint32_t)((r >> 8) % (rg[1] - rg[0] + 1));
        if (cp >= 0xd800 && cp <= 0xdfff) continue;
        k += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)out + k);
    }
    out[k] = 0;
    return k;
}

static void test_synth(void **state)
{
    const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2"};
    for (int p = 0; p < 2; p++) {
        ep_model_cfg cfg;
        ep_tokenizer *t = synth(presets[p], &cfg);
        assert_int_equal(ep_tokenizer_n_ids(t), cfg.vocab);
        assert_int_equal(cfg.vocab, 1024);
        size_t n;
        for (int id = 0; id < cfg.vocab; id++)
            assert_non_null(ep_tokenizer_piece(t, id, &n));
        int eos[4];
        int ne = ep_tokenizer_eos_ids(t, eos, 4);
        if (p == 0) {
            assert_int_equal(ne, 2);
            assert_int_equal(eos[0], 1023); // <|im_end|>
            assert_int_equal(eos[1], 1021); // <|endoftext|>
            assert_int_equal(ep_tokenizer_find(t, "<|im_start|>"), 1022);
        } else {
            assert_int_equal(ne, 1);
            assert_int_equal(eos[0], 1023);
            assert_true(ep_tokenizer_is_special(t, 1022));
        }
        // learned merges compress English: fewer tokens than bytes
        const char *en = "The server sends every token to the experts it chose.";
        int *ids, m;
        assert_int_equal(ep_tokenizer_encode(t, en, strlen(en), true, &ids, &m), EP_OK);
        assert_true(m < (int)strlen(en) / 2);
        free(ids);

        // random UTF-8 round-trips to its NFC form
        uint64_t seed = 12345 + (uint64_t)p;
        char buf[512];
        for (int i = 0; i < 300; i++) {
            size_t len = random_utf8(&seed, buf, 1 + (size_t)(i * 7) % sizeof buf);
            utf8proc_uint8_t *nfc;
            utf8proc_ssize_t nl = utf8proc_map((const utf8proc_uint8_t *)buf, (utf8proc_ssize_t)len,
                                               &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            assert_true(nl >= 0);
            round_trip(t, buf, len, (const char *)nfc, (size_t)nl);
            free(nfc);
        }
        ep_tokenizer_free(t);

        // deterministic: the same JSON every time
        char *a, *b;
        size_t al, bl;
        assert_int_equal(ep_tokenizer_synth_json(&cfg, &a, &al), EP_OK);
        assert_int_equal(ep_tokenizer_synth_json(&cfg, &b, &bl), EP_OK);
        assert_int_equal(al, bl);
        assert_memory_equal(a, b, al);
        free(a);
        free(b);
    }
    ep_model_cfg cfg;
    assert_int_equal(ep_model_cfg_load("tiny-qwen3-moe", &cfg), EP_OK);
    cfg.vocab = 258;
    char *j;
    size_t jl;
    assert_int_equal(ep_tokenizer_synth_json(&cfg, &j, &jl), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "258"));
    // a vocabulary larger than the corpus fills: every id still decodes
    cfg.vocab = 6000;
    ep_tokenizer *t;
    assert_int_equal(ep_tokenizer_for_model(&cfg, &t), EP_OK);
    assert_int_equal(ep_tokenizer_n_ids(t), 6000);
    size_t n;
    for (int id = 0; id < 6000; id++)
        assert_non_null(ep_tokenizer_piece(t, id, &n));
    ep_tokenizer_free(t);

    // a checkpoint directory without tokenizer.json: IO naming the path
    char dir[] = "/tmp/ep_tok_XXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(cfg.checkpoint, sizeof cfg.checkpoint, "%s", dir);
    assert_int_equal(ep_tokenizer_for_model(&cfg, &t), EP_ERR_IO);
    assert_non_null(strstr(ep_last_error(), dir));
    assert_non_null(strstr(ep_last_error(), "tokenizer.json"));
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_order),      cmocka_unit_test(test_merge_rank_not_greedy),
        cmocka_unit_test(test_added_tokens),     cmocka_unit_test(test_nfc),
        cmocka_unit_test(test_bytes_round_trip), cmocka_unit_test(test_long_input),
        cmocka_unit_test(test_bad_inputs),       cmocka_unit_test(test_synth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
