// PNG charts of one `epserve bench` result (gnuplot): bytes per layer,
// the histogram of K per token, and the load of each rank, per policy.
#ifndef EP_BENCH_PLOT_H
#define EP_BENCH_PLOT_H

#include "common/ep.h"

#include <jansson.h>

// results: the JSON object bench writes. Creates dir if needed, writes
// bytes_per_layer.png, k_hist.png, rank_load.png and their .dat/.gp inputs.
ep_status ep_bench_plot(const json_t *results, const char *dir);

#endif
