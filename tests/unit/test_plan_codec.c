// The engine's step plan (scheduler/plan_codec.c): a plan written entry by
// entry has exactly the words of the documented layout (header, domain
// padded with NULs, frees / news / runs each a count and its entries, a
// section left out written empty, sampling parameters as f32 bits and a
// split seed), and reads back to the same header and entries; a stop plan
// ends after its frees with two empty counts; the largest plan fits the
// capacity ep_eng_plan_words gives (new sequences' cached-block hashes included).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/engine_impl.h"

static int32_t bits(float f)
{
    int32_t w;
    memcpy(&w, &f, sizeof w);
    return w;
}

static void test_words_and_back(void **state)
{
    (void)state;
    int32_t w[128];
    ep_eng_plan_head h = {.step = 41, .routing = 2};
    snprintf(h.domain, sizeof h.domain, "code");
    ep_eng_plan_writer p;
    ep_eng_plan_begin(&p, w, 128, &h);
    ep_eng_plan_put_free(&p, 3, 1);
    ep_sample_params sp = {
        .temperature = 0.7f, .top_k = 5, .top_p = 0.9f, .seed = 0x123456789abcdef0ull};
    // No news but one run: the news section is written empty.
    const int prompt[3] = {11, 12, 13};
    ep_eng_plan_put_run(&p, 4, 0, 3, true, prompt);
    ep_eng_plan_put_run(&p, 6, 1, 1, false, prompt + 2);
    size_t n = ep_eng_plan_end(&p);

    int32_t want[64] = {41, 0, 2, 4};
    char dom[EP_ENG_DOMAIN_MAX] = "code";
    memcpy(want + 4, dom, sizeof dom);
    size_t k = EP_ENG_PLAN_HEAD_WORDS;
    assert_int_equal(k, 20);
    const int32_t tail[] = {1, 3, 1, 0, 2, 4, 0, 3, 1, 11, 12, 13, 6, 1, 1, 0, 13};
    memcpy(want + k, tail, sizeof tail);
    k += sizeof tail / sizeof tail[0];
    assert_int_equal(n, k);
    assert_memory_equal(w, want, k * sizeof(int32_t));

    ep_eng_plan_reader r;
    ep_eng_plan_head g;
    ep_eng_plan_read(&r, w, n, &g);
    assert_int_equal(g.step, 41);
    assert_false(g.stop);
    assert_false(g.failed);
    assert_int_equal(g.routing, 2);
    assert_string_equal(g.domain, "code");
    int slot, owner, m;
    bool sample;
    const int32_t *tok;
    assert_int_equal(ep_eng_plan_count(&r, EP_ENG_PLAN_FREES), 1);
    ep_eng_plan_get_free(&r, &slot, &owner);
    assert_int_equal(slot, 3);
    assert_int_equal(owner, 1);
    assert_int_equal(ep_eng_plan_count(&r, EP_ENG_PLAN_NEWS), 0);
    assert_int_equal(ep_eng_plan_count(&r, EP_ENG_PLAN_RUNS), 2);
    ep_eng_plan_get_run(&r, &slot, &owner, &m, &sample, &tok);
    assert_int_equal(slot, 4);
    assert_int_equal(m, 3);
    assert_true(sample);
    assert_memory_equal(tok, prompt, sizeof prompt);
    ep_eng_plan_get_run(&r, &slot, &owner, &m, &sample, &tok);
    assert_int_equal(slot, 6);
    assert_int_equal(owner, 1);
    assert_int_equal(m, 1);
    assert_false(sample);
    assert_int_equal(tok[0], 13);

    // A new sequence: its sampling parameters as f32 bits, the seed in two
    // halves, the logits processors with one logit_bias entry.
    sp.repetition_penalty = 1.25f;
    sp.presence_penalty = 0.5f;
    sp.frequency_penalty = -0.25f;
    sp.min_tokens = 4;
    sp.n_bias = 1;
    sp.bias_tok[0] = 17;
    sp.bias_val[0] = -2.5f;
    ep_eng_plan_begin(&p, w, 128, &(ep_eng_plan_head){.step = 7});
    const uint64_t hit[2] = {0x0123456789abcdefULL, 0xfedcba9876543210ULL};
    ep_eng_plan_put_new(&p, 9, 2, &sp, 3, 2, hit);
    n = ep_eng_plan_end(&p);
    const int32_t lo = (int32_t)0x9abcdef0u, hi = 0x12345678;
    // clang-format off
    // 0 frees, 1 new: slot 9, owner 2, the sampling parameters, the
    // processors (1 bias: token 17, -2.5), 3 sampled, 2 cached blocks (each
    // hash lo, hi); 0 runs.
    const int32_t news[] = {0, 1, 9, 2, bits(0.7f), 5, bits(0.9f), lo, hi,
                            bits(1.25f), bits(0.5f), bits(-0.25f), 4, 1, 17, bits(-2.5f), 3, 2,
                            (int32_t)0x89abcdefu, 0x01234567, 0x76543210, (int32_t)0xfedcba98u,
                            0};
    // clang-format on
    assert_int_equal(n, EP_ENG_PLAN_HEAD_WORDS + sizeof news / sizeof news[0]);
    assert_memory_equal(w + EP_ENG_PLAN_HEAD_WORDS, news, sizeof news);
    assert_int_equal(w[3], 0); // no domain
    ep_eng_plan_read(&r, w, n, &g);
    assert_string_equal(g.domain, "");
    assert_int_equal(ep_eng_plan_count(&r, EP_ENG_PLAN_NEWS), 1);
    ep_sample_params back;
    uint64_t hback[4];
    int n_hit = -1, sampled = -1;
    ep_eng_plan_get_new(&r, &slot, &owner, &back, &sampled, &n_hit, hback, 4);
    assert_int_equal(sampled, 3);
    assert_int_equal(n_hit, 2);
    assert_true(hback[0] == hit[0] && hback[1] == hit[1]);
    assert_int_equal(slot, 9);
    assert_int_equal(owner, 2);
    assert_memory_equal(&back.temperature, &sp.temperature, sizeof(float));
    assert_int_equal(back.top_k, 5);
    assert_memory_equal(&back.top_p, &sp.top_p, sizeof(float));
    assert_true(back.seed == sp.seed);
    assert_true(back.repetition_penalty == 1.25f && back.presence_penalty == 0.5f &&
                back.frequency_penalty == -0.25f && back.min_tokens == 4);
    assert_true(back.n_bias == 1 && back.bias_tok[0] == 17 && back.bias_val[0] == -2.5f);
}

static void test_stop_plan(void **state)
{
    (void)state;
    int32_t w[64];
    ep_eng_plan_writer p;
    ep_eng_plan_begin(&p, w, 64, &(ep_eng_plan_head){.step = 5, .stop = true, .failed = true});
    ep_eng_plan_put_free(&p, 0, 0);
    ep_eng_plan_put_free(&p, 2, 3);
    size_t n = ep_eng_plan_end(&p);
    const int32_t tail[] = {2, 0, 0, 2, 3, 0, 0};
    assert_int_equal(n, EP_ENG_PLAN_HEAD_WORDS + 7);
    assert_int_equal(w[1], 3); // stop | failed
    assert_memory_equal(w + EP_ENG_PLAN_HEAD_WORDS, tail, sizeof tail);
    ep_eng_plan_reader r;
    ep_eng_plan_head g;
    ep_eng_plan_read(&r, w, n, &g);
    assert_true(g.stop && g.failed);

    // An empty plan is the smallest one.
    ep_eng_plan_begin(&p, w, 64, &(ep_eng_plan_head){.step = 0});
    assert_int_equal(ep_eng_plan_end(&p), EP_ENG_PLAN_MIN_WORDS);
}

// The capacity formula holds the largest plan: every slot freed, new and
// running, with all tokens of the step.
static void test_capacity(void **state)
{
    (void)state;
    const int slots = 5, tokens = 9;
    size_t cap = ep_eng_plan_words(slots, tokens, 7);
    const uint64_t hit[7] = {1, 2, 3, 4, 5, 6, 7};
    int32_t *w = calloc(cap, sizeof *w);
    int tok[9] = {0};
    ep_eng_plan_writer p;
    ep_eng_plan_head h = {.step = 1};
    memset(h.domain, 'd', EP_ENG_DOMAIN_MAX - 1);
    ep_eng_plan_begin(&p, w, cap, &h);
    ep_sample_params sp = {.top_p = 1, .n_bias = EP_SAMPLE_MAX_BIAS}; // the largest entry
    for (int s = 0; s < slots; s++)
        ep_eng_plan_put_free(&p, s, 0);
    for (int s = 0; s < slots; s++)
        ep_eng_plan_put_new(&p, s, 0, &sp, 0, s == 1 ? 7 : 0, hit);
    for (int s = 0; s < slots; s++)
        ep_eng_plan_put_run(&p, s, 0, s == 0 ? tokens - (slots - 1) : 1, true, tok);
    assert_int_equal(ep_eng_plan_end(&p), cap);
    ep_eng_plan_reader r;
    ep_eng_plan_head g;
    ep_eng_plan_read(&r, w, cap, &g);
    assert_int_equal(strlen(g.domain), EP_ENG_DOMAIN_MAX - 1);
    free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_words_and_back),
        cmocka_unit_test(test_stop_plan),
        cmocka_unit_test(test_capacity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
