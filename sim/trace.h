// Routing traces: decisions made elsewhere (a real model's top-k ids, or
// `epserve route` output) read from a file and replayed as ep_routes, for
// `epserve bench --routes-from`, `bench sched` and `simulate`. Reads and
// replays only; what the routes then go through is the caller's.
#ifndef EP_TRACE_H
#define EP_TRACE_H

#include "common/model_cfg.h"
#include "common/routes.h"

typedef struct ep_trace ep_trace;
// Reads FILE: JSON lines ({"layer"?, "experts": [...], "weights"?: [...],
// "base_experts"?: [...]}, the `epserve route` output shape) or CSV with a
// header naming layer and e0..eN columns (the DeepSeek-V2-Lite Puffin trace).
// Expert ids must be < cfg->n_experts; K <= max_k.
ep_status ep_trace_load(const char *path, const ep_model_cfg *cfg, int max_k, ep_trace **out);
void ep_trace_free(ep_trace *t);
int ep_trace_rows(const ep_trace *t);   // rows of the largest layer
int ep_trace_layers(const ep_trace *t); // distinct trace layers
// Fills r with T tokens for model layer `layer`: token i takes row
// (first + i) mod rows of trace layer (MoE layer index mod trace layers).
void ep_trace_fill(const ep_trace *t, const ep_model_cfg *cfg, int layer, int64_t first, int T,
                   ep_routes *r);

#endif
