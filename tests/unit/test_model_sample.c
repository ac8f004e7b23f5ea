// Sampling on hand-made logits: greedy and its ties, top-k = 1 is greedy at
// any temperature, probabilities of temperature / top-k / top-p against
// values worked out by hand, draw frequencies against those probabilities
// (fixed seed, 20000 draws, 4 sigma), seeds reproduce, bad parameters, the
// logits processors (min_tokens, logit_bias, repetition / presence /
// frequency penalties: values worked out by hand), the stop rule, and the
// hand-off to device sampling (ep_sampler_device_draw: the uniform
// ep_sampler_sample would draw, the RNG left where that call leaves it).
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/weights.h"
#include "model/sample.h"

// 7 tokens with logits ln 4, ln 2, 0, ln 0.5 (ids 3, 0, 5, 1), the rest -inf:
// their softmax is easy to write down.
static const float L7[7] = {0.6931472f, -0.6931472f, -INFINITY, 2.0f * 0.6931472f,
                            -INFINITY,  0.0f,        -INFINITY};
// probabilities at T = 1 over the four finite tokens: 4, 2, 1, 0.5 / 7.5

static ep_sampler *make(float temp, int top_k, float top_p, uint64_t seed, int V)
{
    ep_sample_params p = {.temperature = temp, .top_k = top_k, .top_p = top_p, .seed = seed};
    ep_sampler *s = NULL;
    assert_int_equal(ep_sampler_init(&p, V, &s), EP_OK);
    return s;
}

static void test_greedy(void **state)
{
    ep_sampler *s = make(0.0f, 0, 1.0f, 1, 7);
    assert_int_equal(ep_sampler_sample(s, L7), 3);
    float ties[5] = {0.5f, 3.0f, NAN, 3.0f, -1.0f};
    ep_sampler *s5 = make(0.0f, 0, 1.0f, 1, 5);
    assert_int_equal(ep_sampler_sample(s5, ties), 1); // lowest id of the tie, NaN ignored
    float pr[5];
    ep_sampler_probs(s5, ties, pr);
    assert_float_equal(pr[1], 1.0f, 0.0f);
    assert_float_equal(pr[3], 0.0f, 0.0f);
    ep_sampler_free(s);
    ep_sampler_free(s5);
    // top-k 1 is greedy even when hot
    ep_sampler *hot = make(5.0f, 1, 1.0f, 42, 7);
    for (int i = 0; i < 50; i++)
        assert_int_equal(ep_sampler_sample(hot, L7), 3);
    ep_sampler_free(hot);
}

static void check_probs(ep_sampler *s, const float *want)
{
    float got[7];
    ep_sampler_probs(s, L7, got);
    for (int i = 0; i < 7; i++)
        assert_float_equal(got[i], want[i], 1e-6);
}

static void test_probs(void **state)
{
    // T = 1: 4, 2, 1, 0.5 over 7.5 for ids 3, 0, 5, 1
    ep_sampler *s = make(1.0f, 0, 1.0f, 0, 7);
    float t1[7] = {2 / 7.5f, 0.5f / 7.5f, 0, 4 / 7.5f, 0, 1 / 7.5f, 0};
    check_probs(s, t1);
    ep_sampler_free(s);
    // T = 0.5 squares the ratios: 16, 4, 1, 0.25 over 21.25
    s = make(0.5f, 0, 1.0f, 0, 7);
    float t05[7] = {4 / 21.25f, 0.25f / 21.25f, 0, 16 / 21.25f, 0, 1 / 21.25f, 0};
    check_probs(s, t05);
    ep_sampler_free(s);
    // top-k 2: 4, 2 over 6
    s = make(1.0f, 2, 1.0f, 0, 7);
    float k2[7] = {2 / 6.0f, 0, 0, 4 / 6.0f, 0, 0, 0};
    check_probs(s, k2);
    ep_sampler_free(s);
    // top-p 0.85: cumulative 0.533, 0.8, 0.933 -> three tokens, 4, 2, 1 over 7
    s = make(1.0f, 0, 0.85f, 0, 7);
    float p85[7] = {2 / 7.0f, 0, 0, 4 / 7.0f, 0, 1 / 7.0f, 0};
    check_probs(s, p85);
    ep_sampler_free(s);
    // top-p 0.5: the first token alone already has 0.533
    s = make(1.0f, 0, 0.5f, 0, 7);
    float p50[7] = {0, 0, 0, 1, 0, 0, 0};
    check_probs(s, p50);
    ep_sampler_free(s);
    // top-k 3 then top-p 0.9 of the renormalised 4/7, 2/7, 1/7: cumulative
    // 0.571, 0.857, 1 -> all three stay
    s = make(1.0f, 3, 0.9f, 0, 7);
    check_probs(s, p85);
    ep_sampler_free(s);
}

static void test_draw_frequencies(void **state)
{
    enum { N = 20000 };
    ep_sampler *s = make(1.0f, 0, 0.85f, 12345, 7);
    int count[7] = {0};
    for (int i = 0; i < N; i++)
        count[ep_sampler_sample(s, L7)]++;
    float want[7];
    ep_sampler_probs(s, L7, want);
    for (int i = 0; i < 7; i++) {
        double sd = sqrt(N * want[i] * (1 - want[i]));
        assert_true(fabs(count[i] - N * want[i]) <= 4 * sd + 1e-9);
    }
    assert_int_equal(count[1], 0); // outside top-p
    assert_true(count[5] > 0);
    ep_sampler_free(s);
}

static void test_seed(void **state)
{
    ep_sampler *a = make(1.3f, 0, 1.0f, 77, 7), *b = make(1.3f, 0, 1.0f, 77, 7);
    ep_sampler *c = make(1.3f, 0, 1.0f, 78, 7);
    int same = 0, differ = 0;
    for (int i = 0; i < 200; i++) {
        int x = ep_sampler_sample(a, L7), y = ep_sampler_sample(b, L7),
            z = ep_sampler_sample(c, L7);
        same += x == y;
        differ += x != z;
    }
    assert_int_equal(same, 200);
    assert_true(differ > 0);
    ep_sampler_free(a);
    ep_sampler_free(b);
    ep_sampler_free(c);
}

// A sampler that skips the draws of n samples continues the stream of one
// that sampled them (a preempted request recomputed on another rank).
static void test_skip(void **state)
{
    (void)state;
    ep_sampler *a = make(1.3f, 0, 1.0f, 5, 7), *b = make(1.3f, 0, 1.0f, 5, 7);
    for (int i = 0; i < 13; i++)
        (void)ep_sampler_sample(a, L7);
    ep_sampler_skip(b, 13);
    for (int i = 0; i < 50; i++)
        assert_int_equal(ep_sampler_sample(b, L7), ep_sampler_sample(a, L7));
    ep_sampler_free(a);
    ep_sampler_free(b);
}

static void test_bad_params(void **state)
{
    ep_sampler *s = NULL;
    ep_sample_params p;
    ep_sample_params_default(&p);
    p.temperature = -1.0f;
    assert_int_equal(ep_sampler_init(&p, 7, &s), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "temperature"));
    ep_sample_params_default(&p);
    p.top_p = 0.0f;
    assert_int_equal(ep_sampler_init(&p, 7, &s), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "top_p"));
    ep_sample_params_default(&p);
    p.top_k = -2;
    assert_int_equal(ep_sampler_init(&p, 7, &s), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "top_k"));
    assert_null(s);
    ep_sampler_free(NULL);
}

// The processors on 4 tokens, greedy and through ep_sampler_probs.
static void test_processors(void **state)
{
    (void)state;
    const float L[4] = {2.0f, 1.0f, -1.0f, 0.5f};
    ep_sample_params p;
    ep_sampler *s = NULL;
    float pr[4];

    // min_tokens: the stop id (0, the argmax) is masked for the first 2 samples.
    ep_sample_params_default(&p);
    p.min_tokens = 2;
    assert_int_equal(ep_sampler_init(&p, 4, &s), EP_OK);
    const int eos = 0;
    ep_sampler_set_stop_ids(s, &eos, 1);
    assert_int_equal(ep_sampler_sample(s, L), 1);
    assert_int_equal(ep_sampler_sample(s, L), 1);
    assert_int_equal(ep_sampler_sample(s, L), 0); // the third may stop
    ep_sampler_free(s);

    // logit_bias: -100 on token 0, +2 on token 2 (-1 + 2 = 1 ties token 1: lower id wins).
    ep_sample_params_default(&p);
    p.n_bias = 2;
    p.bias_tok[0] = 0, p.bias_val[0] = -100.0f;
    p.bias_tok[1] = 2, p.bias_val[1] = 2.5f; // 1.5: now the largest
    assert_int_equal(ep_sampler_init(&p, 4, &s), EP_OK);
    assert_int_equal(ep_sampler_sample(s, L), 2);
    ep_sampler_free(s);

    // repetition_penalty 2: seen tokens 0 (2 -> 1) and 2 (-1 -> -2); then T = 1
    // softmax over {1, 1, -2, 0.5}.
    ep_sample_params_default(&p);
    p.repetition_penalty = 2.0f;
    p.temperature = 1.0f;
    assert_int_equal(ep_sampler_init(&p, 4, &s), EP_OK);
    const int ctx[3] = {0, 2, 99}; // 99: outside the vocabulary, ignored
    ep_sampler_observe(s, ctx, 3);
    ep_sampler_probs(s, L, pr);
    const double z = 2 * exp(1.0) + exp(-2.0) + exp(0.5);
    assert_float_equal(pr[0], exp(1.0) / z, 1e-6);
    assert_float_equal(pr[2], exp(-2.0) / z, 1e-6);
    assert_float_equal(pr[3], exp(0.5) / z, 1e-6);
    ep_sampler_free(s);

    // presence 0.5, frequency 0.25 over the output only, greedy: token 0 at
    // 2, then 2 - 0.5 - 0.25 = 1.25, then 2 - 0.5 - 0.5 = 1.0 (ties token 1:
    // the lower id), then 0.75 < 1: token 1. Then 0 (0.75) beats 1 (0.25)
    // and 3 (0.5).
    ep_sample_params_default(&p);
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    assert_int_equal(ep_sampler_init(&p, 4, &s), EP_OK);
    ep_sampler_observe(s, ctx, 2); // context does not count for these
    assert_int_equal(ep_sampler_sample(s, L), 0);
    assert_int_equal(ep_sampler_sample(s, L), 0);
    assert_int_equal(ep_sampler_sample(s, L), 0);
    assert_int_equal(ep_sampler_sample(s, L), 1);
    ep_sampler_probs(s, L, pr);
    assert_float_equal(pr[0], 1.0f, 0.0f);
    ep_sampler_free(s);

    // Refusals name the field.
    const struct {
        ep_sample_params p;
        const char *what;
    } bad[] = {
        {.p = {.top_p = 1, .repetition_penalty = -1}, .what = "repetition_penalty"},
        {.p = {.top_p = 1, .presence_penalty = 3}, .what = "presence_penalty"},
        {.p = {.top_p = 1, .frequency_penalty = -2.5f}, .what = "frequency_penalty"},
        {.p = {.top_p = 1, .min_tokens = -1}, .what = "min_tokens"},
        {.p = {.top_p = 1, .n_bias = 1, .bias_tok = {4}}, .what = "logit_bias token 4"},
        {.p = {.top_p = 1, .n_bias = EP_SAMPLE_MAX_BIAS + 1}, .what = "logit_bias entries"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        s = NULL;
        assert_int_equal(ep_sampler_init(&bad[i].p, 4, &s), EP_ERR_ARG);
        assert_null(s);
        if (!strstr(ep_last_error(), bad[i].what))
            fail_msg("error '%s' does not name %s", ep_last_error(), bad[i].what);
    }
}

// ep_sampler_device_draw hands out what ep_sampler_sample would use: the
// parameters and the stream's next uniform, advancing the RNG alike, so a
// sampler that drew on the device and one that sampled on the host go on
// with the same tokens; when it says no (a processor, top_k 0 or above the
// device's limit) nothing moves.
static void test_device_draw(void **state)
{
    (void)state;
    ep_sampler *a = make(0.8f, 5, 0.9f, 9, 7), *b = make(0.8f, 5, 0.9f, 9, 7);
    ep_sampler_draw d;
    assert_true(ep_sampler_device_draw(a, 256, &d));
    ep_rng r;
    ep_rng_seed(&r, 9);
    assert_true(d.u == ep_rng_uniform(&r));
    assert_true(d.temperature == 0.8f && d.top_k == 5 && d.top_p == 0.9f);
    ep_sampler_accept(a, 3);
    (void)ep_sampler_sample(b, L7);
    for (int i = 0; i < 20; i++)
        assert_int_equal(ep_sampler_sample(a, L7), ep_sampler_sample(b, L7));
    ep_sampler_free(a);
    ep_sampler_free(b);
    // Greedy (top_k 0 at temperature 0 too) draws nothing: u 0, top_k 1.
    a = make(0.0f, 0, 1.0f, 4, 7);
    assert_true(ep_sampler_device_draw(a, 256, &d));
    assert_true(d.u == 0.0 && d.top_k == 1);
    ep_sampler_free(a);
    // Refusals leave the sampler as it was.
    const ep_sample_params no[3] = {
        {.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 5},
        {.temperature = 1.0f, .top_k = 300, .top_p = 1.0f, .seed = 5},
        {.temperature = 1.0f, .top_k = 5, .top_p = 1.0f, .seed = 5, .repetition_penalty = 1.2f},
    };
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ep_sampler_init(&no[i], 7, &a), EP_OK);
        assert_int_equal(ep_sampler_init(&no[i], 7, &b), EP_OK);
        assert_false(ep_sampler_device_draw(a, 256, &d));
        for (int j = 0; j < 10; j++)
            assert_int_equal(ep_sampler_sample(a, L7), ep_sampler_sample(b, L7));
        ep_sampler_free(a);
        ep_sampler_free(b);
    }
}

static void test_stop(void **state)
{
    int eos[2] = {11, 5};
    ep_stop_params p = {.eos = eos, .n_eos = 2, .max_tokens = 3};
    assert_int_equal(ep_stop_check(&p, 7, 1), EP_STOP_NONE);
    assert_int_equal(ep_stop_check(&p, 5, 1), EP_STOP_EOS);
    assert_int_equal(ep_stop_check(&p, 7, 3), EP_STOP_LENGTH);
    assert_int_equal(ep_stop_check(&p, 11, 3), EP_STOP_EOS);
    assert_string_equal(ep_stop_reason_str(EP_STOP_EOS), "stop");
    assert_string_equal(ep_stop_reason_str(EP_STOP_LENGTH), "length");
    assert_null(ep_stop_reason_str(EP_STOP_NONE));
    // a generation loop on fixed logits: greedy emits 3 until max_tokens
    ep_sampler *s = make(0.0f, 0, 1.0f, 0, 7);
    int n = 0;
    ep_stop_reason r = EP_STOP_NONE;
    while (r == EP_STOP_NONE)
        r = ep_stop_check(&p, ep_sampler_sample(s, L7), ++n);
    assert_int_equal(n, 3);
    assert_int_equal(r, EP_STOP_LENGTH);
    int eos3 = 3;
    ep_stop_params q = {.eos = &eos3, .n_eos = 1, .max_tokens = 100};
    n = 0;
    r = EP_STOP_NONE;
    while (r == EP_STOP_NONE)
        r = ep_stop_check(&q, ep_sampler_sample(s, L7), ++n);
    assert_int_equal(n, 1);
    assert_int_equal(r, EP_STOP_EOS);
    ep_sampler_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_probs),
        cmocka_unit_test(test_draw_frequencies),
        cmocka_unit_test(test_seed),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_skip),
        cmocka_unit_test(test_processors),
        cmocka_unit_test(test_device_draw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
