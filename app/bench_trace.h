// Routing traces replayed by `epserve bench --routes-from FILE`: decisions
// made elsewhere (a real model's top-k ids, or `epserve route` output) are
// pushed through the real placement, dispatch, experts and combine.
#ifndef EP_BENCH_TRACE_H
#define EP_BENCH_TRACE_H

#include "common/model_cfg.h"
#include "common/routes.h"

typedef struct bench_trace bench_trace;
// Reads FILE: JSON lines ({"layer"?, "experts": [...], "weights"?: [...],
// "base_experts"?: [...]}, the `epserve route` output shape) or CSV with a
// header naming layer and e0..eN columns (the DeepSeek-V2-Lite Puffin trace).
// Expert ids must be < cfg->n_experts; K <= max_k.
ep_status bench_trace_load(const char *path, const ep_model_cfg *cfg, int max_k, bench_trace **out);
void bench_trace_free(bench_trace *t);
int bench_trace_rows(const bench_trace *t);      // rows of the largest layer
int bench_trace_layers(const bench_trace *t);    // distinct trace layers
// Fills r with T tokens for model layer `layer`: token i takes row
// (first + i) mod rows of trace layer (MoE layer index mod trace layers).
void bench_trace_fill(const bench_trace *t, const ep_model_cfg *cfg, int layer, int64_t first,
                      int T, ep_routes *r);

// `epserve bench sched`: the trace-driven scheduler check (app/bench_trace.c).
// Routes sampled from real per-layer expert frequencies (or replayed from a
// per-token trace) go through placement, replica choice and dispatch
// planning for a simulated world; no experts run, no MPI is needed.
int ep_cmd_bench_sched(int argc, char **argv);

#endif
