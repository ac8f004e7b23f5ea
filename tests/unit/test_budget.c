// Expert-slot budget admission on hand cases: the same budget admits more
// tokens when K is lower (Ban), new sequences count at k_base, the token and
// KV limits bind, a prefill is chunked to fit, first come first served stops
// at the first sequence that does not fit, the first always progresses, and
// the mean-K estimate follows observations.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "scheduler/budget.h"

enum { KB = 8, NL = 5 };

static void decode_queue(ep_sched_seq *q, int n, double mean_k)
{
    for (int i = 0; i < n; i++)
        q[i] = (ep_sched_seq){.want_tokens = 1, .kv_need = 1, .mean_k = mean_k};
}

static void test_ban_admits_more(void **state)
{
    ep_sched_budget b;
    ep_sched_budget_default(&b, KB, NL, 13); // 13 tokens at k_base: 13 * 8 * 5 = 520 slots
    assert_int_equal(b.slot_budget, 520);
    ep_sched_seq q[40];
    decode_queue(q, 40, 0); // new sequences: k_base
    ep_sched_step s = ep_sched_admit(&b, q, 40);
    assert_int_equal(s.tokens, 13);
    assert_int_equal(s.n_seqs, 13);
    assert_true(fabs(s.slots - 520) < 1e-9);
    decode_queue(q, 40, 4.82); // Ban's K on Qwen3-30B: 520 / (4.82 * 5) = 21.58 -> 21
    s = ep_sched_admit(&b, q, 40);
    assert_int_equal(s.tokens, 21);
    assert_true(fabs(s.slots - 21 * 4.82 * 5) < 1e-9);
}

static void test_limits(void **state)
{
    ep_sched_budget b;
    ep_sched_budget_default(&b, KB, NL, 100);
    ep_sched_seq q[40];
    decode_queue(q, 40, 3.0);
    b.max_tokens = 11;
    assert_int_equal(ep_sched_admit(&b, q, 40).tokens, 11);
    b.max_tokens = 0;
    b.kv_free = 7;
    ep_sched_step s = ep_sched_admit(&b, q, 40);
    assert_int_equal(s.tokens, 7);
    assert_int_equal(s.n_seqs, 7);
    b.kv_free = -1;
    assert_int_equal(ep_sched_admit(&b, q, 40).tokens, 40); // the queue runs out first
}

static void test_chunked_prefill_and_fcfs(void **state)
{
    ep_sched_budget b;
    ep_sched_budget_default(&b, KB, NL, 30); // 1200 slots = 30 new tokens
    ep_sched_seq q[3] = {
        {.want_tokens = 1, .kv_need = 1, .mean_k = 4.0},   // 20 slots
        {.want_tokens = 50, .kv_need = 50, .mean_k = 0.0}, // prefill: 40 slots per token
        {.want_tokens = 1, .kv_need = 1, .mean_k = 4.0},   // behind it: must wait
    };
    ep_sched_step s = ep_sched_admit(&b, q, 3);
    // 1200 - 20 = 1180 -> 29 prefill tokens (1160), partial, and the third waits.
    assert_int_equal(s.n_seqs, 2);
    assert_int_equal(s.tokens, 30);
    assert_int_equal(s.last_partial_tokens, 29);
    assert_true(fabs(s.slots - (20 + 29 * 40)) < 1e-9);
    // A budget below one token still runs the first sequence's first token.
    b.slot_budget = 3;
    s = ep_sched_admit(&b, q + 1, 2);
    assert_int_equal(s.tokens, 1);
    assert_int_equal(s.n_seqs, 1);
    assert_int_equal(s.last_partial_tokens, 1);
    // Nothing to run: an empty step.
    s = ep_sched_admit(&b, q, 0);
    assert_int_equal(s.tokens, 0);
    assert_true(s.slots == 0);
}

static void test_observe(void **state)
{
    ep_sched_budget b;
    ep_sched_budget_default(&b, KB, NL, 10);
    ep_sched_seq s = {.want_tokens = 1, .kv_need = 1, .mean_k = 0};
    assert_true(ep_sched_predict_slots(&b, &s, 3) == 3 * KB * NL);
    ep_sched_observe(&b, &s, 7 * 20, 7 * 5); // K 4.0 over 7 tokens x 5 layers
    assert_true(fabs(s.mean_k - 4.0) < 1e-12);
    ep_sched_observe(&b, &s, 8 * 5, 5); // K 8 -> 0.75 * 4 + 0.25 * 8 = 5
    assert_true(fabs(s.mean_k - 5.0) < 1e-12);
    ep_sched_observe(&b, &s, 100, 0); // no tokens: unchanged
    assert_true(fabs(s.mean_k - 5.0) < 1e-12);
    assert_true(fabs(ep_sched_predict_slots(&b, &s, 3) - 75) < 1e-9);
}

// A new sequence counts at its profile's mean K (prior_k) until its own
// first observation, which then replaces the prior outright.
static void test_prior(void **state)
{
    ep_sched_budget b;
    ep_sched_budget_default(&b, KB, NL, 13); // 520 slots: 13 tokens at k_base
    ep_sched_seq q[40];
    for (int i = 0; i < 40; i++)
        q[i] = (ep_sched_seq){.want_tokens = 1, .kv_need = 1, .prior_k = 4.0};
    ep_sched_step a = ep_sched_admit(&b, q, 40);
    assert_int_equal(a.tokens, 26); // 520 / (4 * 5)
    ep_sched_seq s = {.want_tokens = 1, .prior_k = 4.0};
    assert_true(fabs(ep_sched_predict_slots(&b, &s, 2) - 40) < 1e-9);
    ep_sched_observe(&b, &s, 6 * 5, 5); // first observation K 6: taken as is
    assert_true(fabs(s.mean_k - 6.0) < 1e-12);
    assert_true(fabs(ep_sched_predict_slots(&b, &s, 2) - 60) < 1e-9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ban_admits_more),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_chunked_prefill_and_fcfs),
        cmocka_unit_test(test_observe),
        cmocka_unit_test(test_prior),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
