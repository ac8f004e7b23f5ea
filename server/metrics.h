// Prometheus text (format 0.0.4) for /metrics: latency histograms the server
// measures from event times, and the engine's counters and MoE statistics,
// every name with the `epserve:` prefix in vLLM's style. Pure formatting and
// bucket arithmetic; the locking lives in server/http.c.
#ifndef EP_SERVER_METRICS_H
#define EP_SERVER_METRICS_H

#include "scheduler/engine.h"
#include "server/sbuf.h"

enum { EP_HIST_MAX_BUCKETS = 32 };

typedef struct {
    const double *le; // [n] upper bounds, increasing (+Inf implied)
    int n;
    int64_t count[EP_HIST_MAX_BUCKETS + 1]; // per bucket (not cumulative); [n] is +Inf
    double sum;
    int64_t total;
} ep_hist;

// The bucket sets vLLM uses for the same metrics (seconds).
void ep_hist_init_ttft(ep_hist *h);
void ep_hist_init_itl(ep_hist *h);
void ep_hist_init_e2e(ep_hist *h);
// Counts v in the first bucket with v <= le (Prometheus buckets are inclusive).
void ep_hist_observe(ep_hist *h, double v);

// Routing profiles whose latencies are kept apart (serve loads at most 64).
enum { EP_SRV_MAX_ROUTINGS = 64 };

// What the server measures itself.
typedef struct {
    ep_hist ttft, itl, e2e;
    // The same per routing profile (the engine's index), for the routing label.
    ep_hist ttft_r[EP_SRV_MAX_ROUTINGS], itl_r[EP_SRV_MAX_ROUTINGS];
    int64_t success[3]; // requests ended: stop, length, abort
    int64_t errors;     // requests answered with an engine error
    int64_t rejected;   // refused before the engine: 4xx/5xx answers
} ep_srv_stats;
void ep_srv_stats_init(ep_srv_stats *s);

// The whole /metrics page. em may be NULL (engine counters left out).
void ep_metrics_format(ep_sbuf *b, const char *model, const ep_srv_stats *s,
                       const ep_engine_metrics *em);

#endif
