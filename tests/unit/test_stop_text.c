// Stop strings and text release on hand cases: a stop string split over
// pieces, a false start that is released once it cannot match, a UTF-8
// character split over pieces (held, never cut), several stop strings (the
// earliest match wins), a stop at the very start, nothing after a stop, the
// flush of held text and of an unfinished character (U+FFFD).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "scheduler/stop_text.h"

// Feeds pieces; returns the concatenated released text in out and whether a
// stop matched (and after which piece, in *at).
static bool feed(ep_stop_text *s, const char *const *pieces, int n, char *out, int *at)
{
    size_t k = 0;
    *at = -1;
    out[0] = 0;
    bool stopped = false;
    for (int i = 0; i < n; i++) {
        const char *t;
        size_t tl;
        bool hit = ep_stop_text_add(s, pieces[i], strlen(pieces[i]), &t, &tl);
        memcpy(out + k, t, tl);
        k += tl;
        out[k] = 0;
        if (hit && !stopped) {
            stopped = true;
            *at = i;
        }
    }
    return stopped;
}

static void test_split_stop(void **state)
{
    (void)state;
    const char *stop[] = {"END"};
    ep_stop_text s;
    assert_int_equal(ep_stop_text_init(&s, stop, 1), EP_OK);
    const char *pieces[] = {"hello E", "N", "D tail", " more"};
    char out[256];
    int at;
    assert_true(feed(&s, pieces, 4, out, &at));
    assert_int_equal(at, 2);
    assert_string_equal(out, "hello ");
    // Nothing after a stop, not even from flush.
    const char *t;
    size_t tl;
    ep_stop_text_flush(&s, &t, &tl);
    assert_int_equal(tl, 0);
    ep_stop_text_free(&s);
}

static void test_false_start_released(void **state)
{
    (void)state;
    const char *stop[] = {"END"};
    ep_stop_text s;
    assert_int_equal(ep_stop_text_init(&s, stop, 1), EP_OK);
    const char *t;
    size_t tl;
    assert_false(ep_stop_text_add(&s, "ab E", 4, &t, &tl));
    assert_int_equal(tl, 3); // "ab " out, "E" held
    assert_memory_equal(t, "ab ", 3);
    assert_false(ep_stop_text_add(&s, "N", 1, &t, &tl));
    assert_int_equal(tl, 0); // "EN" may still become END
    assert_false(ep_stop_text_add(&s, "x", 1, &t, &tl));
    assert_int_equal(tl, 3);
    assert_memory_equal(t, "ENx", 3);
    assert_false(ep_stop_text_add(&s, "E", 1, &t, &tl));
    assert_int_equal(tl, 0);
    ep_stop_text_flush(&s, &t, &tl); // ended by length: the held "E" is text
    assert_int_equal(tl, 1);
    assert_memory_equal(t, "E", 1);
    ep_stop_text_free(&s);
}

static void test_utf8_split(void **state)
{
    (void)state;
    ep_stop_text s;
    assert_int_equal(ep_stop_text_init(&s, NULL, 0), EP_OK);
    const char *t;
    size_t tl;
    // "é" = C3 A9, "€" = E2 82 AC, split across pieces.
    assert_false(ep_stop_text_add(&s, "caf\xC3", 4, &t, &tl));
    assert_int_equal(tl, 3);
    assert_false(ep_stop_text_add(&s, "\xA9 \xE2\x82", 4, &t, &tl));
    assert_int_equal(tl, 3);
    assert_memory_equal(t, "\xC3\xA9 ", 3);
    assert_false(ep_stop_text_add(&s, "\xAC!", 2, &t, &tl));
    assert_int_equal(tl, 4);
    assert_memory_equal(t, "\xE2\x82\xAC!", 4);
    // An unfinished character at the end becomes U+FFFD at flush.
    assert_false(ep_stop_text_add(&s, "\xF0\x9F", 2, &t, &tl));
    assert_int_equal(tl, 0);
    ep_stop_text_flush(&s, &t, &tl);
    assert_int_equal(tl, 3);
    assert_memory_equal(t, "\xEF\xBF\xBD", 3);
    assert_int_equal(ep_utf8_incomplete_tail("a\xE2\x82", 3), 2);
    assert_int_equal(ep_utf8_incomplete_tail("a\xE2\x82\xAC", 4), 0);
    assert_int_equal(ep_utf8_incomplete_tail("\x80\x80", 2), 0);
    ep_stop_text_free(&s);
}

static void test_several_stops(void **state)
{
    (void)state;
    const char *stop[] = {"world", "lo w", "\n\n"};
    ep_stop_text s;
    assert_int_equal(ep_stop_text_init(&s, stop, 3), EP_OK);
    const char *pieces[] = {"hel", "lo", " wor", "ld"};
    char out[256];
    int at;
    // "lo w" completes in piece 2 and starts before "world" would.
    assert_true(feed(&s, pieces, 4, out, &at));
    assert_int_equal(at, 2);
    assert_string_equal(out, "hel");
    ep_stop_text_free(&s);

    assert_int_equal(ep_stop_text_init(&s, stop, 3), EP_OK);
    const char *p2[] = {"a\n", "\nb"};
    assert_true(feed(&s, p2, 2, out, &at));
    assert_int_equal(at, 1);
    assert_string_equal(out, "a");
    ep_stop_text_free(&s);
}

static void test_stop_at_start(void **state)
{
    (void)state;
    const char *stop[] = {"<s>"};
    ep_stop_text s;
    assert_int_equal(ep_stop_text_init(&s, stop, 1), EP_OK);
    const char *pieces[] = {"<s>hi"};
    char out[64];
    int at;
    assert_true(feed(&s, pieces, 1, out, &at));
    assert_int_equal(at, 0);
    assert_string_equal(out, "");
    ep_stop_text_free(&s);
    const char *bad[] = {"x", ""};
    assert_int_equal(ep_stop_text_init(&s, bad, 2), EP_ERR_ARG);
    ep_stop_text_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_stop),    cmocka_unit_test(test_false_start_released),
        cmocka_unit_test(test_utf8_split),    cmocka_unit_test(test_several_stops),
        cmocka_unit_test(test_stop_at_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
