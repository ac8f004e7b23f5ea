// /metrics text (see metrics.h). Histograms are cumulative on output only.
#include "server/metrics.h"

#include <string.h>

static const double ttft_le[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                 0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                 20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double itl_le[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double e2e_le[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

static void hist_init(ep_hist *h, const double *le, int n)
{
    EP_ASSERT(n <= EP_HIST_MAX_BUCKETS);
    memset(h, 0, sizeof *h);
    h->le = le;
    h->n = n;
}
void ep_hist_init_ttft(ep_hist *h)
{
    hist_init(h, ttft_le, (int)EP_ARRAY_LEN(ttft_le));
}
void ep_hist_init_itl(ep_hist *h)
{
    hist_init(h, itl_le, (int)EP_ARRAY_LEN(itl_le));
}
void ep_hist_init_e2e(ep_hist *h)
{
    hist_init(h, e2e_le, (int)EP_ARRAY_LEN(e2e_le));
}

void ep_hist_observe(ep_hist *h, double v)
{
    int i = 0;
    while (i < h->n && !(v <= h->le[i]))
        i++;
    h->count[i]++;
    h->sum += v;
    h->total++;
}

void ep_srv_stats_init(ep_srv_stats *s)
{
    memset(s, 0, sizeof *s);
    ep_hist_init_ttft(&s->ttft);
    ep_hist_init_itl(&s->itl);
    ep_hist_init_e2e(&s->e2e);
    for (int i = 0; i < EP_SRV_MAX_ROUTINGS; i++) {
        ep_hist_init_ttft(&s->ttft_r[i]);
        ep_hist_init_itl(&s->itl_r[i]);
    }
}

static void head(ep_sbuf *b, const char *name, const char *type, const char *help)
{
    ep_sbuf_addf(b, "# HELP epserve:%s %s\n# TYPE epserve:%s %s\n", name, help, name, type);
}

// Label values escape \, " and newline (model names come from config files).
static void label(ep_sbuf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            ep_sbuf_addf(b, "\\%c", *v);
        else if (*v == '\n')
            ep_sbuf_adds(b, "\\n");
        else
            ep_sbuf_add(b, v, 1);
    }
}

static void sample_i(ep_sbuf *b, const char *name, const char *model, int64_t v)
{
    ep_sbuf_addf(b, "epserve:%s{model_name=\"", name);
    label(b, model);
    ep_sbuf_addf(b, "\"} %lld\n", (long long)v);
}

static void sample_d(ep_sbuf *b, const char *name, const char *model, double v)
{
    ep_sbuf_addf(b, "epserve:%s{model_name=\"", name);
    label(b, model);
    ep_sbuf_addf(b, "\"} %.17g\n", v);
}

// Opens a sample: epserve:<name><suffix>{model_name="<model>" and, with a
// routing profile, ,routing="<routing>" (both escaped by label()); the
// caller adds any further labels and closes the braces.
static void open_sample(ep_sbuf *b, const char *name, const char *suffix, const char *model,
                        const char *routing)
{
    ep_sbuf_addf(b, "epserve:%s%s{model_name=\"", name, suffix);
    label(b, model);
    if (routing) {
        ep_sbuf_adds(b, "\",routing=\"");
        label(b, routing);
    }
    ep_sbuf_adds(b, "\"");
}

// The samples of one histogram, with a routing label when routing is not NULL.
static void hist_samples(ep_sbuf *b, const char *name, const char *model, const char *routing,
                         const ep_hist *h)
{
    int64_t cum = 0;
    for (int i = 0; i <= h->n; i++) {
        cum += h->count[i];
        open_sample(b, name, "_bucket", model, routing);
        if (i < h->n)
            ep_sbuf_addf(b, ",le=\"%g\"} %lld\n", h->le[i], (long long)cum);
        else
            ep_sbuf_addf(b, ",le=\"+Inf\"} %lld\n", (long long)cum);
    }
    open_sample(b, name, "_sum", model, routing);
    ep_sbuf_addf(b, "} %.17g\n", h->sum);
    open_sample(b, name, "_count", model, routing);
    ep_sbuf_addf(b, "} %lld\n", (long long)h->total);
}

static void hist(ep_sbuf *b, const char *name, const char *help, const char *model,
                 const ep_hist *h)
{
    head(b, name, "histogram", help);
    hist_samples(b, name, model, NULL, h);
}

// Per routing profile: what each step of that profile admitted and did.
enum {
    PF_STEPS,
    PF_TOKENS,
    PF_SLOTS,
    PF_PAIRS,
    PF_TOKEN_LAYERS,
    PF_TOKENS_PER_STEP,
    PF_SLOTS_PER_STEP,
    PF_AVG_K,
    PF_DISPATCH,
    PF_COMBINE,
    PF_SAVED,
    PF_FORWARD_S,
    PF_MOE_S,
    PF_N
};

static double profile_value(int f, const ep_engine_profile_metrics *p)
{
    const double steps = (double)p->steps;
    // MoE layers a token passes through (token_layers / tokens).
    const double n_moe = p->tokens > 0 ? (double)p->token_layers / (double)p->tokens : 0;
    const double slots = n_moe > 0 ? p->slots / n_moe : 0; // per MoE layer
    switch (f) {
    case PF_STEPS:
        return steps;
    case PF_TOKENS:
        return (double)p->tokens;
    case PF_SLOTS:
        return slots;
    case PF_PAIRS:
        return (double)p->pairs;
    case PF_TOKEN_LAYERS:
        return (double)p->token_layers;
    case PF_TOKENS_PER_STEP:
        return steps > 0 ? (double)p->tokens / steps : 0;
    case PF_SLOTS_PER_STEP:
        return steps > 0 ? slots / steps : 0;
    case PF_AVG_K:
        return p->token_layers > 0 ? (double)p->pairs / (double)p->token_layers : 0;
    case PF_DISPATCH:
        return (double)p->dispatch_bytes;
    case PF_COMBINE:
        return (double)p->combine_bytes;
    case PF_FORWARD_S:
        return p->forward_s;
    case PF_MOE_S:
        return p->moe_s;
    default:
        return (double)(p->base_dispatch_bytes + p->base_combine_bytes - p->dispatch_bytes -
                        p->combine_bytes);
    }
}

static void profile_samples(ep_sbuf *b, const char *model, const ep_srv_stats *s,
                            const ep_engine_metrics *em)
{
    static const struct {
        const char *name, *type, *help;
    } fam[PF_N] = {
        [PF_STEPS] = {"routing_steps_total", "counter",
                      "Engine steps run with this routing profile."},
        [PF_TOKENS] = {"routing_tokens_total", "counter", "Tokens those steps ran, all ranks."},
        [PF_SLOTS] = {"routing_slots_total", "counter",
                      "Predicted (token, expert) pairs per MoE layer admitted, over steps."},
        [PF_PAIRS] = {"routing_pairs_total", "counter", "(token, expert) pairs, all MoE layers."},
        [PF_TOKEN_LAYERS] = {"routing_token_layers_total", "counter", "Tokens x MoE layers."},
        [PF_TOKENS_PER_STEP] = {"routing_tokens_per_step", "gauge",
                                "Mean tokens per step of this profile."},
        [PF_SLOTS_PER_STEP] = {"routing_slots_per_step", "gauge",
                               "Mean predicted pairs per MoE layer admitted per step."},
        [PF_AVG_K] = {"routing_avg_k", "gauge",
                      "Mean experts per token per MoE layer of this profile."},
        [PF_DISPATCH] = {"routing_dispatch_bytes_total", "counter",
                         "MoE dispatch bytes of this profile."},
        [PF_COMBINE] = {"routing_combine_bytes_total", "counter",
                        "MoE combine bytes of this profile."},
        [PF_SAVED] = {"routing_bytes_saved_total", "counter",
                      "Dispatch + combine bytes saved against top-k_base routing."},
        [PF_FORWARD_S] = {"routing_forward_seconds_total", "counter",
                          "Rank 0's forward time of this profile's steps."},
        [PF_MOE_S] = {"routing_moe_seconds_total", "counter",
                      "The part of it in MoE layers (waits for other ranks included)."},
    };
    for (int f = 0; f < PF_N; f++) {
        head(b, fam[f].name, fam[f].type, fam[f].help);
        for (int i = 0; i < em->n_routings; i++) {
            open_sample(b, fam[f].name, "", model, em->routing_names[i]);
            ep_sbuf_addf(b, "} %.17g\n", profile_value(f, &em->profile[i]));
        }
    }
    static const char *const hname[2] = {"routing_time_to_first_token_seconds",
                                         "routing_inter_token_latency_seconds"};
    for (int k = 0; k < 2; k++) {
        head(b, hname[k], "histogram",
             k ? "Time between tokens, per routing profile."
               : "Time to first token, per routing profile.");
        for (int i = 0; i < em->n_routings && i < EP_SRV_MAX_ROUTINGS; i++) {
            hist_samples(b, hname[k], model, em->routing_names[i],
                         k ? &s->itl_r[i] : &s->ttft_r[i]);
        }
    }
}

void ep_metrics_format(ep_sbuf *b, const char *model, const ep_srv_stats *s,
                       const ep_engine_metrics *em)
{
    if (em) {
        head(b, "num_requests_running", "gauge", "Requests in a running batch.");
        sample_i(b, "num_requests_running", model, em->running);
        head(b, "num_requests_waiting", "gauge", "Requests waiting to be scheduled.");
        sample_i(b, "num_requests_waiting", model, em->waiting);
        head(b, "kv_cache_usage_perc", "gauge",
             "KV-cache usage over all ranks (1 means 100 percent).");
        sample_d(b, "kv_cache_usage_perc", model,
                 em->kv_blocks_total ? (double)em->kv_blocks_used / (double)em->kv_blocks_total
                                     : 0);
        head(b, "prompt_tokens_total", "counter",
             "Prompt tokens of admitted requests (cache hits included, counted once).");
        sample_i(b, "prompt_tokens_total", model, em->prompt_tokens);
        head(b, "prefill_tokens_computed_total", "counter",
             "Prefill tokens computed (recomputes after preemption included, cache hits not).");
        sample_i(b, "prefill_tokens_computed_total", model, em->prefill_tokens);
        head(b, "num_preemptions_total", "counter",
             "Running requests preempted for KV blocks (recomputed later).");
        sample_i(b, "num_preemptions_total", model, em->preemptions);
        head(b, "prefix_cache_queries_total", "counter",
             "Tokens looked up in the prefix cache at admission.");
        sample_i(b, "prefix_cache_queries_total", model, em->prefix_query_tokens);
        head(b, "prefix_cache_hits_total", "counter",
             "Tokens found in the prefix cache at admission (their prefill skipped).");
        sample_i(b, "prefix_cache_hits_total", model, em->prefix_hit_tokens);
        head(b, "prefix_cache_hit_rate", "gauge",
             "prefix_cache_hits_total / prefix_cache_queries_total (0 before any query).");
        sample_d(b, "prefix_cache_hit_rate", model,
                 em->prefix_query_tokens
                     ? (double)em->prefix_hit_tokens / (double)em->prefix_query_tokens
                     : 0);
        head(b, "kv_cache_cached_blocks", "gauge",
             "Unreferenced KV blocks kept for prefix reuse (free for new tokens), all ranks.");
        sample_i(b, "kv_cache_cached_blocks", model, em->kv_blocks_cached);
        head(b, "generation_tokens_total", "counter", "Generation tokens processed.");
        sample_i(b, "generation_tokens_total", model, em->generation_tokens);
        head(b, "num_steps_total", "counter", "Engine steps run.");
        sample_i(b, "num_steps_total", model, em->steps);
    }
    static const char *const reasons[3] = {"stop", "length", "abort"};
    head(b, "request_success_total", "counter", "Requests finished, by finish reason.");
    for (int i = 0; i < 3; i++) {
        ep_sbuf_adds(b, "epserve:request_success_total{model_name=\"");
        label(b, model);
        ep_sbuf_addf(b, "\",finished_reason=\"%s\"} %lld\n", reasons[i], (long long)s->success[i]);
    }
    head(b, "request_errors_total", "counter",
         "Accepted requests that ended with an engine error.");
    sample_i(b, "request_errors_total", model, s->errors);
    head(b, "request_rejected_total", "counter", "Requests refused with a 4xx or 5xx status.");
    sample_i(b, "request_rejected_total", model, s->rejected);
    hist(b, "time_to_first_token_seconds", "Time to first token in seconds.", model, &s->ttft);
    hist(b, "inter_token_latency_seconds", "Time between consecutive tokens in seconds.", model,
         &s->itl);
    hist(b, "e2e_request_latency_seconds", "End-to-end request latency in seconds.", model,
         &s->e2e);
    if (!em) return;

    head(b, "moe_avg_k", "gauge",
         "Mean experts per token of each MoE layer since start (0 for dense layers).");
    for (int l = 0; l < em->n_layers; l++) {
        ep_sbuf_adds(b, "epserve:moe_avg_k{model_name=\"");
        label(b, model);
        ep_sbuf_addf(b, "\",layer=\"%d\"} %.17g\n", l, em->layer_avg_k ? em->layer_avg_k[l] : 0);
    }
    head(b, "moe_dispatch_bytes_total", "counter", "Bytes sent by MoE dispatch over all ranks.");
    sample_i(b, "moe_dispatch_bytes_total", model, em->dispatch_bytes);
    head(b, "moe_combine_bytes_total", "counter", "Bytes sent by MoE combine over all ranks.");
    sample_i(b, "moe_combine_bytes_total", model, em->combine_bytes);
    head(b, "moe_bytes_saved_total", "counter",
         "Dispatch + combine bytes saved against fixed top-k_base routing on the same placement.");
    sample_i(b, "moe_bytes_saved_total", model,
             em->base_dispatch_bytes + em->base_combine_bytes - em->dispatch_bytes -
                 em->combine_bytes);
    head(b, "moe_inter_node_bytes_total", "counter",
         "Dispatch + combine bytes that crossed nodes, over all ranks (--dispatch hier: stage 1).");
    sample_i(b, "moe_inter_node_bytes_total", model, em->inter_bytes);
    head(b, "moe_intra_node_bytes_total", "counter",
         "Dispatch + combine bytes between ranks of one node, over all ranks (hier: stage 2).");
    sample_i(b, "moe_intra_node_bytes_total", model, em->intra_bytes);
    head(b, "moe_baseline_inter_node_bytes_total", "counter",
         "Inter-node bytes fixed top-k_base routing would have moved on the same placement.");
    sample_i(b, "moe_baseline_inter_node_bytes_total", model, em->base_inter_bytes);
    head(b, "moe_baseline_intra_node_bytes_total", "counter",
         "Intra-node bytes fixed top-k_base routing would have moved on the same placement.");
    sample_i(b, "moe_baseline_intra_node_bytes_total", model, em->base_intra_bytes);
    head(b, "moe_load_imbalance", "gauge",
         "Max over mean of the pairs ranks received, per MoE layer.");
    for (int l = 0; l < em->n_layers; l++) {
        ep_sbuf_adds(b, "epserve:moe_load_imbalance{model_name=\"");
        label(b, model);
        ep_sbuf_addf(b, "\",layer=\"%d\"} %.17g\n", l,
                     em->layer_load_imbalance ? em->layer_load_imbalance[l] : 0);
    }
    head(b, "moe_expert_load_total", "counter", "Token-expert pairs routed to each expert.");
    if (em->expert_load)
        for (int l = 0; l < em->n_layers; l++)
            for (int x = 0; x < em->n_experts; x++) {
                ep_sbuf_adds(b, "epserve:moe_expert_load_total{model_name=\"");
                label(b, model);
                ep_sbuf_addf(b, "\",layer=\"%d\",expert=\"%d\"} %lld\n", l, x,
                             (long long)em->expert_load[(size_t)l * em->n_experts + x]);
            }
    head(b, "moe_replacements_total", "counter",
         "Expert re-placements that moved weights between ranks (--rebalance-interval).");
    sample_i(b, "moe_replacements_total", model, em->replace_moves);
    head(b, "moe_replacement_checks_total", "counter",
         "Re-placement checks run (moved or kept under --rebalance-min-gain).");
    sample_i(b, "moe_replacement_checks_total", model, em->replace_checks);
    head(b, "moe_replacement_imbalance_before", "gauge",
         "Predicted max/mean rank load of the last check, current placement.");
    sample_d(b, "moe_replacement_imbalance_before", model, em->replace_imbalance_before);
    head(b, "moe_replacement_imbalance_after", "gauge",
         "Predicted max/mean rank load of the last check, EPLB placement.");
    sample_d(b, "moe_replacement_imbalance_after", model, em->replace_imbalance_after);
    if (em->n_auto > 0) {
        head(b, "pick_domain_auto_total", "counter",
             "Requests of a pick.domain auto profile by the Pick domain detected from their "
             "prompt (none: no domain was clear).");
        for (int i = 0; i < em->n_auto; i++) {
            open_sample(b, "pick_domain_auto_total", "", model, em->auto_routing[i]);
            ep_sbuf_adds(b, ",domain=\"");
            label(b, em->auto_domain[i][0] ? em->auto_domain[i] : "none");
            ep_sbuf_addf(b, "\"} %lld\n", (long long)em->auto_requests[i]);
        }
    }
    if (em->profile) profile_samples(b, model, s, em);
}
