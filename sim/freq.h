// Routing from real per-layer expert frequencies (a Qwen3-30B-A3B
// <task>_avg_activation.csv of ../shared/data/routing: per layer and
// language, the fraction of tokens whose top-8 holds each expert). The files
// hold no per-token scores, so a token's logits are drawn as
// (log f_e + Gumbel) / temp: their top-k is a Plackett-Luce sample weighted
// by the frequencies and their softmax is what Ban sees. This score model is
// ours, not measured. Used by `epserve bench sched --freq` and
// `epserve simulate --routes-freq`.
#ifndef EP_SIM_FREQ_H
#define EP_SIM_FREQ_H

#include "common/ep.h"

// Reads the rows of `language` (layers 0.. in order) from an activation
// CSV: *freq [*n_rows * E] (malloc'd). Errors name the file and line.
ep_status ep_freq_load(const char *path, const char *language, int E, double **freq, int *n_rows);
// splitmix64: the stream the Gumbel draws take.
uint64_t ep_freq_rng(uint64_t *s);
// T rows of E logits (log(f_e + 1e-6) + Gumbel) / temp from row fq [E].
void ep_freq_logits(const double *fq, int E, int T, double temp, uint64_t *rng, float *logits);
// The file row standing for MoE layer m of n_moe when the file has n_rows
// layers: round(m * (n_rows - 1) / (n_moe - 1)) (the first and last layers
// match; 48 -> 94 layers: layer m takes row round(m * 47 / 93)).
int ep_freq_row(int m, int n_moe, int n_rows);

#endif
