// /metrics of `epserve serve`: histogram buckets (inclusive upper bounds,
// cumulative output, +Inf, sum, count), and the whole page from hand-made
// engine metrics: every name with the epserve: prefix and a TYPE line,
// bytes saved = base - actual, per-layer and per-expert series, KV usage,
// label escaping.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/metrics.h"

// The value of the sample line that starts with `prefix` (name and labels), NAN if none.
static double value(const char *page, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = page; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, prefix, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}

static int count_lines(const char *page, const char *prefix)
{
    int c = 0;
    size_t n = strlen(prefix);
    for (const char *p = page; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        c += !strncmp(p, prefix, n);
    return c;
}

static void test_hist(void **state)
{
    ep_hist h;
    ep_hist_init_itl(&h);      // 0.01, 0.025, 0.05, ...
    ep_hist_observe(&h, 0.01); // on the bound: that bucket
    ep_hist_observe(&h, 0.0100001);
    ep_hist_observe(&h, 0.0);
    ep_hist_observe(&h, 1e9); // +Inf
    assert_int_equal(h.count[0], 2);
    assert_int_equal(h.count[1], 1);
    assert_int_equal(h.count[h.n], 1);
    assert_int_equal(h.total, 4);
    assert_true(fabs(h.sum - (0.01 + 0.0100001 + 1e9)) < 1e-3);

    ep_srv_stats s;
    ep_srv_stats_init(&s);
    s.itl = h;
    ep_hist_observe(&s.ttft, 0.3);
    ep_sbuf b = {0};
    ep_metrics_format(&b, "m", &s, NULL);
    const char *p = b.p;
    assert_true(
        value(p, "epserve:inter_token_latency_seconds_bucket{model_name=\"m\",le=\"0.01\"}") == 2);
    assert_true(
        value(p, "epserve:inter_token_latency_seconds_bucket{model_name=\"m\",le=\"0.025\"}") == 3);
    assert_true(
        value(p, "epserve:inter_token_latency_seconds_bucket{model_name=\"m\",le=\"80\"}") == 3);
    assert_true(
        value(p, "epserve:inter_token_latency_seconds_bucket{model_name=\"m\",le=\"+Inf\"}") == 4);
    assert_true(value(p, "epserve:inter_token_latency_seconds_count{model_name=\"m\"}") == 4);
    assert_true(
        value(p, "epserve:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.25\"}") == 0);
    assert_true(
        value(p, "epserve:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.5\"}") == 1);
    assert_true(fabs(value(p, "epserve:time_to_first_token_seconds_sum{model_name=\"m\"}") - 0.3) <
                1e-12);
    assert_int_equal(count_lines(p, "# TYPE epserve:e2e_request_latency_seconds histogram"), 1);
    // Without engine metrics the engine's series are absent.
    assert_int_equal(count_lines(p, "epserve:num_requests_running"), 0);
    ep_sbuf_free(&b);
}

static void test_page(void **state)
{
    enum { L = 3, E = 4 };
    double avg_k[L] = {0, 5.5, 4.25}, imb[L] = {0, 1.5, 1.25};
    int64_t load[L * E];
    for (int i = 0; i < L * E; i++)
        load[i] = 100 + i;
    ep_engine_metrics em = {.running = 3,
                            .waiting = 2,
                            .prompt_tokens = 640,
                            .generation_tokens = 77,
                            .steps = 9,
                            .kv_blocks_used = 16,
                            .kv_blocks_total = 64,
                            .kv_blocks_cached = 5,
                            .prefill_tokens = 512,
                            .preemptions = 4,
                            .prefix_hit_tokens = 160,
                            .prefix_query_tokens = 640,
                            .dispatch_bytes = 1000,
                            .combine_bytes = 900,
                            .base_dispatch_bytes = 1500,
                            .base_combine_bytes = 1300,
                            .inter_bytes = 1100,
                            .intra_bytes = 800,
                            .base_inter_bytes = 1700,
                            .base_intra_bytes = 1100,
                            .n_layers = L,
                            .n_experts = E,
                            .world_size = 2,
                            .layer_avg_k = avg_k,
                            .layer_load_imbalance = imb,
                            .expert_load = load};
    // Two routing profiles; the second's name needs escaping. 2 MoE layers:
    // token_layers = 2 x tokens.
    const char *const names[2] = {"baseline", "my\"ban"};
    ep_engine_profile_metrics prof[2] = {{.steps = 4,
                                          .tokens = 40,
                                          .token_layers = 80,
                                          .pairs = 640,
                                          .slots = 640,
                                          .dispatch_bytes = 700,
                                          .combine_bytes = 600,
                                          .base_dispatch_bytes = 700,
                                          .base_combine_bytes = 600},
                                         {.steps = 2,
                                          .tokens = 50,
                                          .token_layers = 100,
                                          .pairs = 400,
                                          .slots = 300,
                                          .dispatch_bytes = 300,
                                          .combine_bytes = 300,
                                          .base_dispatch_bytes = 800,
                                          .base_combine_bytes = 700}};
    em.n_routings = 2;
    em.routing_names = names;
    em.profile = prof;
    ep_srv_stats s;
    ep_srv_stats_init(&s);
    s.success[1] = 5;
    ep_hist_observe(&s.ttft_r[1], 0.03);
    ep_hist_observe(&s.itl_r[0], 0.02);
    ep_sbuf b = {0};
    ep_metrics_format(&b, "q\"3", &s, &em);
    const char *p = b.p;
    // The model label escapes its quote.
    assert_true(value(p, "epserve:num_requests_running{model_name=\"q\\\"3\"}") == 3);
    assert_true(value(p, "epserve:num_requests_waiting{model_name=\"q\\\"3\"}") == 2);
    assert_true(value(p, "epserve:kv_cache_usage_perc{model_name=\"q\\\"3\"}") == 0.25);
    assert_true(value(p, "epserve:prompt_tokens_total{model_name=\"q\\\"3\"}") == 640);
    assert_true(value(p, "epserve:generation_tokens_total{model_name=\"q\\\"3\"}") == 77);
    assert_true(value(p, "epserve:prefill_tokens_computed_total{model_name=\"q\\\"3\"}") == 512);
    assert_true(value(p, "epserve:num_preemptions_total{model_name=\"q\\\"3\"}") == 4);
    assert_true(value(p, "epserve:prefix_cache_queries_total{model_name=\"q\\\"3\"}") == 640);
    assert_true(value(p, "epserve:prefix_cache_hits_total{model_name=\"q\\\"3\"}") == 160);
    assert_true(value(p, "epserve:prefix_cache_hit_rate{model_name=\"q\\\"3\"}") == 0.25);
    assert_true(value(p, "epserve:kv_cache_cached_blocks{model_name=\"q\\\"3\"}") == 5);
    assert_true(value(p, "epserve:moe_dispatch_bytes_total{model_name=\"q\\\"3\"}") == 1000);
    assert_true(value(p, "epserve:moe_combine_bytes_total{model_name=\"q\\\"3\"}") == 900);
    assert_true(value(p, "epserve:moe_bytes_saved_total{model_name=\"q\\\"3\"}") == 2800 - 1900);
    assert_true(value(p, "epserve:moe_inter_node_bytes_total{model_name=\"q\\\"3\"}") == 1100);
    assert_true(value(p, "epserve:moe_intra_node_bytes_total{model_name=\"q\\\"3\"}") == 800);
    assert_true(value(p, "epserve:moe_baseline_inter_node_bytes_total{model_name=\"q\\\"3\"}") ==
                1700);
    assert_true(value(p, "epserve:moe_baseline_intra_node_bytes_total{model_name=\"q\\\"3\"}") ==
                1100);
    assert_true(value(p, "epserve:moe_avg_k{model_name=\"q\\\"3\",layer=\"1\"}") == 5.5);
    assert_true(value(p, "epserve:moe_avg_k{model_name=\"q\\\"3\",layer=\"2\"}") == 4.25);
    assert_true(value(p, "epserve:moe_load_imbalance{model_name=\"q\\\"3\",layer=\"2\"}") == 1.25);
    assert_int_equal(count_lines(p, "epserve:moe_expert_load_total{"), L * E);
    assert_true(
        value(p, "epserve:moe_expert_load_total{model_name=\"q\\\"3\",layer=\"2\",expert=\"3\"}") ==
        100 + 2 * E + 3);
    assert_true(
        value(p,
              "epserve:request_success_total{model_name=\"q\\\"3\",finished_reason=\"length\"}") ==
        5);
    // Per routing profile: a routing label (escaped), tokens and slots per
    // step (slots per MoE layer), avg K, bytes saved; latencies apart.
    const char *b0 = "{model_name=\"q\\\"3\",routing=\"baseline\"}";
    const char *b1 = "{model_name=\"q\\\"3\",routing=\"my\\\"ban\"}";
    char key[256];
#define PROF(name, lab) (snprintf(key, sizeof key, "epserve:%s%s", name, lab), value(p, key))
    assert_true(PROF("routing_steps_total", b0) == 4);
    assert_true(PROF("routing_tokens_per_step", b0) == 10);
    assert_true(PROF("routing_tokens_per_step", b1) == 25);
    assert_true(PROF("routing_slots_per_step", b0) == 80); // 640 / 2 layers / 4 steps
    assert_true(PROF("routing_slots_total", b0) == 320 && PROF("routing_pairs_total", b1) == 400);
    assert_true(PROF("routing_token_layers_total", b1) == 100);
    assert_true(PROF("routing_slots_per_step", b1) == 75);
    assert_true(PROF("routing_avg_k", b0) == 8);
    assert_true(PROF("routing_avg_k", b1) == 4);
    assert_true(PROF("routing_bytes_saved_total", b0) == 0);
    assert_true(PROF("routing_bytes_saved_total", b1) == 900);
    assert_true(PROF("routing_time_to_first_token_seconds_count", b1) == 1 &&
                PROF("routing_time_to_first_token_seconds_count", b0) == 0 &&
                PROF("routing_inter_token_latency_seconds_count", b0) == 1);
#undef PROF
    // Every sample line's metric has exactly one TYPE line, and every line is
    // a comment or starts with the prefix.
    for (const char *l = p; *l; l = strchr(l, '\n') + 1) {
        assert_true(!strncmp(l, "# HELP epserve:", 15) || !strncmp(l, "# TYPE epserve:", 15) ||
                    !strncmp(l, "epserve:", 8));
        if (!strncmp(l, "epserve:", 8)) {
            char name[128];
            size_t n = strcspn(l, "{ ");
            snprintf(name, sizeof name, "%.*s", (int)n, l);
            char *suffix;
            if ((suffix = strstr(name, "_bucket")) || (suffix = strstr(name, "_sum")) ||
                (suffix = strstr(name, "_count")))
                *suffix = 0;
            char type_line[160];
            snprintf(type_line, sizeof type_line, "# TYPE %s ", name);
            assert_int_equal(count_lines(p, type_line), 1);
        }
    }
    ep_sbuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist),
        cmocka_unit_test(test_page),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
