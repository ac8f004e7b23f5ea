// Option values the subcommands share: an integer in a range, a finite real,
// and a comma-separated list of token ids. Syntax and range only; what a
// value means (a token id inside the vocab, ...) is the caller's to check.
#ifndef EP_APP_ARGS_H
#define EP_APP_ARGS_H

#include "common/ep.h"

// The whole of s is a decimal integer in [lo, hi].
bool ep_arg_long(const char *s, long lo, long hi, long *out);
bool ep_arg_int(const char *s, long lo, long hi, int *out); // lo, hi within int
// The whole of s is a finite real.
bool ep_arg_float(const char *s, float *out);
// "1,2,3" -> *ids (malloc'ed, *n >= 1), each in [lo, INT_MAX]. EP_ERR_ARG
// names opt, the item's index and what was found.
ep_status ep_arg_ids(const char *opt, const char *s, long lo, int **ids, int *n);
// Row name of a --routing entry: the policy name, or a routing file's base
// name without .yaml/.yml (two files of one policy kind stay apart).
void ep_arg_policy_label(const char *spec, char *out, size_t n);
// --cuda-graph (generate, serve, bench model; ep_model_opts.cuda_graph): off
// | buckets | capture, or 0 | 1 | 2.
#define EP_ARG_CUDA_GRAPH 0x4347 // getopt_long's value for it
bool ep_arg_cuda_graph(const char *s, int *out);
#define EP_ARG_CUDA_GRAPH_HELP                                                                     \
    "  --cuda-graph M       backend cuda: off (default) | buckets: a decode step runs at\n"        \
    "                       its batch bucket (1, 2, 4, ...) | capture: also replays each\n"        \
    "                       dense segment as a CUDA Graph (real GPUs only; docs/cuda.md)\n"

#endif
