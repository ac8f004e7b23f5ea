// common/strmap.h: keys as bytes (NUL inside, empty, prefixes of each
// other), the first value put wins, growth keeping every key at the size
// documented, and keys built to collide in the slots (probe chains that wrap
// around the end of the table, then survive a growth).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/strmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_basic(void **state)
{
    ep_strmap_free(NULL);
    ep_strmap *m = ep_strmap_init(0);
    int v = 42;
    assert_false(ep_strmap_get(m, "a", 1, &v));
    assert_int_equal(v, 42); // untouched when absent
    assert_true(ep_strmap_put(m, "a", 1, 1));
    assert_true(ep_strmap_put(m, "ab", 2, 2));
    assert_true(ep_strmap_put(m, "a\0b", 3, 3));
    assert_true(ep_strmap_put(m, "a\0c", 3, 4));
    assert_true(ep_strmap_put(m, "", 0, 5));
    assert_true(ep_strmap_put(m, "neg", 3, -1)); // any int is a value
    assert_int_equal(ep_strmap_count(m), 6);
    // The first value put wins; put says the key was there.
    assert_false(ep_strmap_put(m, "ab", 2, 99));
    assert_int_equal(ep_strmap_count(m), 6);
    const struct {
        const char *k;
        size_t len;
        int v;
    } want[] = {{"a", 1, 1},    {"ab", 2, 2},  {"a\0b", 3, 3}, {"a\0c", 3, 4}, {"", 0, 5},
                {"neg", 3, -1}, {"abc", 3, 0}, {"a\0", 2, 0},  {"b", 1, 0},    {"A", 1, 0}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        v = 12345;
        bool found = ep_strmap_get(m, want[i].k, want[i].len, &v);
        if (found != (want[i].v != 0)) fail_msg("key %zu: found %d", i, found);
        if (found) assert_int_equal(v, want[i].v);
    }
    // The map keeps its own copy: the caller's buffer may change.
    char buf[8] = "temp";
    assert_true(ep_strmap_put(m, buf, 4, 7));
    memcpy(buf, "XXXX", 4);
    assert_true(ep_strmap_get(m, "temp", 4, &v));
    assert_int_equal(v, 7);
    assert_false(ep_strmap_get(m, "XXXX", 4, &v));
    ep_strmap_free(m);
}

// Capacity stays the smallest power of two >= 16 holding 2 * count, and
// every key put so far is found with its value after each growth.
static void test_growth(void **state)
{
    ep_strmap *m = ep_strmap_init(0);
    assert_int_equal(ep_strmap_cap(m), 16);
    char k[32];
    const int n = 20000;
    int v;
    for (int i = 0; i < n; i++) {
        int kl = snprintf(k, sizeof k, "key-%d", i);
        assert_true(ep_strmap_put(m, k, (size_t)kl, 3 * i));
        size_t want_cap = 16;
        while (want_cap < 2 * (size_t)(i + 1))
            want_cap *= 2;
        assert_int_equal(ep_strmap_cap(m), want_cap);
        if ((i & (i + 1)) == 0 || i == n - 1) // after each doubling: all keys still there
            for (int j = 0; j <= i; j++) {
                kl = snprintf(k, sizeof k, "key-%d", j);
                assert_true(ep_strmap_get(m, k, (size_t)kl, &v));
                assert_int_equal(v, 3 * j);
            }
    }
    assert_int_equal(ep_strmap_count(m), n);
    for (int i = n; i < n + 1000; i++) {
        int kl = snprintf(k, sizeof k, "key-%d", i);
        assert_false(ep_strmap_get(m, k, (size_t)kl, &v));
    }
    ep_strmap_free(m);

    // Sized by the hint: no growth up to it.
    m = ep_strmap_init(1000);
    assert_int_equal(ep_strmap_cap(m), 2048);
    for (int i = 0; i < 1000; i++) {
        int kl = snprintf(k, sizeof k, "%d", i);
        assert_true(ep_strmap_put(m, k, (size_t)kl, i));
    }
    assert_int_equal(ep_strmap_cap(m), 2048);
    ep_strmap_free(m);
}

// Keys longer than the map's first key buffer, and many of them.
static void test_long_keys(void **state)
{
    ep_strmap *m = ep_strmap_init(0);
    size_t len = 100000;
    char *k = malloc(len);
    int v;
    for (int i = 0; i < 40; i++) {
        memset(k, 'a' + i % 26, len);
        k[len - 1] = (char)i; // keys differ only in their last byte, or length
        assert_true(ep_strmap_put(m, k, len - (size_t)(i % 3), i));
    }
    for (int i = 0; i < 40; i++) {
        memset(k, 'a' + i % 26, len);
        k[len - 1] = (char)i;
        assert_true(ep_strmap_get(m, k, len - (size_t)(i % 3), &v));
        assert_int_equal(v, i);
    }
    free(k);
    ep_strmap_free(m);
}

// Keys whose hash falls in the last slot of a 16-slot table: each probe
// chain runs off the end and wraps to slot 0.
static void test_collisions(void **state)
{
    enum { N = 8, PROBE = 4 }; // 8 fit in 16 slots without growth
    char keys[N + PROBE][16];
    size_t lens[N + PROBE];
    int found = 0;
    for (int i = 0; found < N + PROBE; i++) {
        int kl = snprintf(keys[found], sizeof keys[found], "c%d", i);
        if ((ep_strmap_hash(keys[found], (size_t)kl) & 15) == 15) lens[found++] = (size_t)kl;
    }
    ep_strmap *m = ep_strmap_init(0);
    int v;
    for (int i = 0; i < N; i++) {
        assert_true(ep_strmap_put(m, keys[i], lens[i], 100 + i));
        assert_int_equal(ep_strmap_cap(m), 16);
        for (int j = 0; j <= i; j++) {
            assert_true(ep_strmap_get(m, keys[j], lens[j], &v));
            assert_int_equal(v, 100 + j);
        }
        // Absent keys of the same home slot walk the whole chain.
        for (int j = N; j < N + PROBE; j++)
            assert_false(ep_strmap_get(m, keys[j], lens[j], &v));
        assert_false(ep_strmap_put(m, keys[i], lens[i], -5));
    }
    // Growth re-places the chain; nothing is lost.
    for (int j = N; j < N + PROBE; j++)
        assert_true(ep_strmap_put(m, keys[j], lens[j], 100 + j));
    assert_int_equal(ep_strmap_cap(m), 32);
    for (int j = 0; j < N + PROBE; j++) {
        assert_true(ep_strmap_get(m, keys[j], lens[j], &v));
        assert_int_equal(v, 100 + j);
    }
    ep_strmap_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_long_keys),
        cmocka_unit_test(test_collisions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
