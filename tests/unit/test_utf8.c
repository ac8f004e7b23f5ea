// common/utf8.h against the well-formed byte sequences of the Unicode
// standard (Table 3-7, written out here independently of utf8.c), every code
// point encoded and decoded back, and the invalid cases one by one: stray
// continuation bytes, overlongs, surrogates, above U+10FFFF, cut-off input.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/utf8.h"

#include <stdbool.h>
#include <string.h>

// Table 3-7 of the Unicode standard: the ranges each byte of a well-formed
// 1- to 4-byte sequence may take. Returns the sequence length at s[0..n), 0
// when ill-formed.
static size_t table37_len(const unsigned char *s, size_t n)
{
    static const struct {
        unsigned char lo[4], hi[4];
        size_t len;
    } rows[] = {
        {{0x00}, {0x7F}, 1},
        {{0xC2, 0x80}, {0xDF, 0xBF}, 2},
        {{0xE0, 0xA0, 0x80}, {0xE0, 0xBF, 0xBF}, 3},
        {{0xE1, 0x80, 0x80}, {0xEC, 0xBF, 0xBF}, 3},
        {{0xED, 0x80, 0x80}, {0xED, 0x9F, 0xBF}, 3},
        {{0xEE, 0x80, 0x80}, {0xEF, 0xBF, 0xBF}, 3},
        {{0xF0, 0x90, 0x80, 0x80}, {0xF0, 0xBF, 0xBF, 0xBF}, 4},
        {{0xF1, 0x80, 0x80, 0x80}, {0xF3, 0xBF, 0xBF, 0xBF}, 4},
        {{0xF4, 0x80, 0x80, 0x80}, {0xF4, 0x8F, 0xBF, 0xBF}, 4},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        if (n < rows[r].len) continue;
        bool ok = true;
        for (size_t i = 0; i < rows[r].len && ok; i++)
            ok = s[i] >= rows[r].lo[i] && s[i] <= rows[r].hi[i];
        if (ok) return rows[r].len;
    }
    return 0;
}

// The code point of a well-formed sequence, by the bit layout of RFC 3629.
static uint32_t decode_ref(const unsigned char *s, size_t len)
{
    static const unsigned char lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
    uint32_t v = s[0] & lead_mask[len];
    for (size_t i = 1; i < len; i++)
        v = v << 6 | (s[i] & 0x3F);
    return v;
}

static void check_seq(const unsigned char *s, size_t n)
{
    uint32_t cp = 0xDEADBEEF;
    size_t want = table37_len(s, n);
    size_t got = ep_utf8_next(s, n, &cp);
    if (got != want)
        fail_msg("%02x %02x %02x %02x (n %zu): length %zu, expected %zu", s[0], n > 1 ? s[1] : 0,
                 n > 2 ? s[2] : 0, n > 3 ? s[3] : 0, n, got, want);
    if (want)
        assert_int_equal(cp, decode_ref(s, want));
    else
        assert_int_equal(cp, 0xDEADBEEF); // untouched on failure
}

// Every first and second byte, with the continuation bytes after them taking
// the edges of their range (0x80, 0xBF) and two bytes outside it.
static void test_next_against_table(void **state)
{
    static const unsigned char tail[] = {0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0x7F, 0xC0};
    unsigned char s[4];
    for (int b0 = 0; b0 < 256; b0++)
        for (int b1 = 0; b1 < 256; b1++)
            for (size_t i2 = 0; i2 < sizeof tail; i2++)
                for (size_t i3 = 0; i3 < sizeof tail; i3++) {
                    s[0] = (unsigned char)b0, s[1] = (unsigned char)b1;
                    s[2] = tail[i2], s[3] = tail[i3];
                    for (size_t n = 1; n <= 4; n++)
                        check_seq(s, n);
                }
}

static void test_next_cases(void **state)
{
    uint32_t cp = 7;
    assert_int_equal(ep_utf8_next((const unsigned char *)"", 0, &cp), 0);
    assert_int_equal(cp, 7);
    const struct {
        const char *s;
        size_t len;
        uint32_t cp;
    } ok[] = {
        {"A", 1, 'A'},
        {"\x00", 1, 0}, // NUL is a character like any other
        {"\xC2\x80", 2, 0x80},
        {"\xDF\xBF", 2, 0x7FF},
        {"\xE0\xA0\x80", 3, 0x800},
        {"\xED\x9F\xBF", 3, 0xD7FF},
        {"\xEE\x80\x80", 3, 0xE000},
        {"\xEF\xBF\xBF", 3, 0xFFFF},
        {"\xF0\x90\x80\x80", 4, 0x10000},
        {"\xF0\x9F\x98\x80", 4, 0x1F600}, // an emoji
        {"\xF4\x8F\xBF\xBF", 4, 0x10FFFF},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        assert_int_equal(ep_utf8_next((const unsigned char *)ok[i].s, ok[i].len, &cp), ok[i].len);
        assert_int_equal(cp, ok[i].cp);
    }
    const char *bad[] = {
        "\x80",
        "\xBF", // continuation without a lead
        "\xC0\x80",
        "\xC1\xBF", // overlong 2-byte
        "\xE0\x80\x80",
        "\xE0\x9F\xBF", // overlong 3-byte
        "\xF0\x80\x80\x80",
        "\xF0\x8F\xBF\xBF", // overlong 4-byte
        "\xED\xA0\x80",
        "\xED\xBF\xBF", // surrogates
        "\xF4\x90\x80\x80",
        "\xF7\xBF\xBF\xBF", // above U+10FFFF
        "\xF8\x88\x80\x80",
        "\xFE",
        "\xFF", // no such lead byte
        "\xE2\x28\xA1",
        "\xC3\x41", // a lead byte followed by ASCII
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cp = 7;
        size_t n = strlen(bad[i]);
        if (ep_utf8_next((const unsigned char *)bad[i], n, &cp) != 0)
            fail_msg("case %zu accepted", i);
        assert_int_equal(cp, 7);
    }
    // Cut off by n: every proper prefix of a valid 4-byte character.
    const unsigned char smile[] = {0xF0, 0x9F, 0x98, 0x80};
    for (size_t n = 1; n < 4; n++)
        assert_int_equal(ep_utf8_next(smile, n, &cp), 0);
}

// Every code point: encode, check the length by its range, decode back.
static void test_encode_roundtrip(void **state)
{
    char out[4];
    uint32_t cp;
    for (uint32_t c = 0; c <= 0x110000 + 16; c++) {
        memset(out, 0x55, sizeof out);
        size_t len = ep_utf8_encode(c, out);
        size_t want = (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF ? 0
                      : c < 0x80                                   ? 1
                      : c < 0x800                                  ? 2
                      : c < 0x10000                                ? 3
                                                                   : 4;
        if (len != want) fail_msg("U+%04X: length %zu, expected %zu", c, len, want);
        if (!len) {
            for (int i = 0; i < 4; i++) // nothing written
                assert_int_equal((unsigned char)out[i], 0x55);
            continue;
        }
        assert_int_equal(table37_len((const unsigned char *)out, len), len);
        assert_int_equal(ep_utf8_next((const unsigned char *)out, len, &cp), len);
        assert_int_equal(cp, c);
    }
    assert_int_equal(ep_utf8_encode(0xFFFFFFFFu, out), 0);
    // One by hand: U+20AC EURO SIGN is E2 82 AC.
    assert_int_equal(ep_utf8_encode(0x20AC, out), 3);
    assert_memory_equal(out, "\xE2\x82\xAC", 3);
}

static void test_check(void **state)
{
    const struct {
        const char *s;
        size_t n, bad;
    } cases[] = {
        {"", 0, 0},
        {"plain ascii", 11, 11},
        {"a\xE2\x82\xAC"
         "b\xF0\x9F\x98\x80",
         9, 9},
        {"ab\x80"
         "cd",
         5, 2},
        {"\xE2\x82\xAC\xE2\x82", 5, 3}, // cut off at the end
        {"x\xED\xA0\x80y", 5, 1},       // a surrogate
        {"\xC3\xA9\xC0\xAF", 4, 2},     // é then an overlong '/'
        {"nul\x00inside", 10, 10},      // NUL is valid
        {"ok\xF4\x90\x80\x80", 6, 2},   // above U+10FFFF
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (ep_utf8_check(cases[i].s, cases[i].n) != cases[i].bad)
            fail_msg("case %zu: %zu, expected %zu", i, ep_utf8_check(cases[i].s, cases[i].n),
                     cases[i].bad);
}

static void test_prev(void **state)
{
    // Walking back over valid text gives its characters in reverse.
    const char s[] = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80z";
    const uint32_t cps[] = {'a', 0xE9, 0x20AC, 0x1F600, 'z'};
    const size_t starts[] = {0, 1, 3, 6, 10};
    size_t end = sizeof s - 1, st;
    for (int i = 4; i >= 0; i--) {
        assert_int_equal(ep_utf8_prev(s, end, &st), cps[i]);
        assert_int_equal(st, starts[i]);
        end = st;
    }
    assert_int_equal(end, 0);
    // Bytes that do not end one character: the last byte alone, U+FFFD.
    const struct {
        const char *s;
        size_t end;
    } bad[] = {
        {"a\x80", 2},                // a continuation after ASCII
        {"\x80\x80\x80\x80\x80", 5}, // more continuations than a character has
        {"\xE2\x82", 2},             // a cut-off character
        {"\xC3\xA9\x80", 3},         // one continuation too many
        {"\xFF", 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ep_utf8_prev(bad[i].s, bad[i].end, &st), 0xFFFD);
        assert_int_equal(st, bad[i].end - 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_against_table),
        cmocka_unit_test(test_next_cases),
        cmocka_unit_test(test_encode_roundtrip),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_prev),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
