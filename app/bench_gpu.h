// What `bench model --backend cuda` reports of the device path: the bytes a
// step copies between host and device (the copy counter of cluster/gpu.h,
// by class and direction) and the floor the weight reads of a step set on
// the device's memory bandwidth (ep_gpu_measure_bandwidth). The formulas
// are pure; the parts that need a device say so in a build without CUDA.
#ifndef EP_BENCH_GPU_H
#define EP_BENCH_GPU_H

#include "cluster/gpu.h"

#include <jansson.h>

// This rank's device as the bench reports it.
typedef struct {
    char name[256];     // cudaDeviceProp.name
    bool emulated;      // EP_CUDA_EMU: host memory and host time, no GPU number
    size_t probe_bytes; // bytes of each timed copy
    double gbps;        // device memory bandwidth, GB/s, best of the probe's copies
} ep_bench_device;

// Opens this rank's device (ep_gpu_init) and measures its bandwidth with
// `reps` copies of EP_GPU_BW_BYTES (EP_GPU_BW_BYTES_EMU emulated).
// EP_ERR_UNSUPPORTED in a build without CUDA.
ep_status ep_bench_device_probe(ep_cluster *c, int reps, ep_bench_device *out);

// The process's copy counter now; all zero in a build without CUDA.
void ep_bench_copies_now(ep_gpu_copy_stats *s);
// sum += after - before, field by field.
void ep_bench_copies_add(ep_gpu_copy_stats *sum, const ep_gpu_copy_stats *before,
                         const ep_gpu_copy_stats *after);
// Sums s over the cluster's ranks, in place (every rank gets the sum).
ep_status ep_bench_copies_allreduce(ep_cluster *c, ep_gpu_copy_stats *s);
// {"act": {"h2d": B, "d2h": B}, "meta": {..}, "load": {..}, "h2d_calls": N,
// "d2h_calls": N, "h2d": B, "d2h": B}: the bytes and calls of `sum` per step
// (sum / steps, 0 for 0 steps). Needs a build with CUDA (the class names).
json_t *ep_bench_copy_json(const ep_gpu_copy_stats *sum, int64_t steps);

// The shortest time in ms a step can take that reads `bytes` of weights from
// memory of `gbps` GB/s: bytes / (gbps 1e9) in ms; 0 (no floor) when either
// is not positive.
double ep_bench_floor_ms(double bytes, double gbps);
// How many floors a step of step_ms took: step_ms / floor_ms; 0 without a floor.
double ep_bench_x_floor(double step_ms, double floor_ms);

#endif
