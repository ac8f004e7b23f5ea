// The device side of `bench model`'s report (app/bench_gpu.h). Every use of
// CUDA is here, behind EP_CUDA, so that bench_model.c reads the same in
// both builds.
#include "app/bench_gpu.h"

#include <stdio.h>
#include <string.h>

ep_status ep_bench_device_probe(ep_cluster *c, int reps, ep_bench_device *out)
{
    memset(out, 0, sizeof *out);
#ifdef EP_CUDA
    ep_gpu *g = NULL;
    ep_status st = ep_gpu_init(c, &g);
    if (st) return ep_error_prefix(st, "device bandwidth probe");
    snprintf(out->name, sizeof out->name, "%s", ep_gpu_name(g));
    out->emulated = ep_gpu_emulated();
    out->probe_bytes = out->emulated ? EP_GPU_BW_BYTES_EMU : EP_GPU_BW_BYTES;
    st = ep_gpu_measure_bandwidth(g, out->probe_bytes, reps, &out->gbps);
    ep_gpu_free(g);
    return st;
#else
    (void)c;
    (void)reps;
    return ep_errorf(EP_ERR_UNSUPPORTED,
                     "device bandwidth probe: this epserve was built without CUDA (EP_CUDA=OFF)");
#endif
}

void ep_bench_copies_now(ep_gpu_copy_stats *s)
{
#ifdef EP_CUDA
    ep_gpu_copy_stats_get(s);
#else
    memset(s, 0, sizeof *s);
#endif
}

void ep_bench_copies_add(ep_gpu_copy_stats *sum, const ep_gpu_copy_stats *before,
                         const ep_gpu_copy_stats *after)
{
    sum->h2d_bytes += after->h2d_bytes - before->h2d_bytes;
    sum->d2h_bytes += after->d2h_bytes - before->d2h_bytes;
    sum->h2d_copies += after->h2d_copies - before->h2d_copies;
    sum->d2h_copies += after->d2h_copies - before->d2h_copies;
    for (int k = 0; k < EP_COPY_N_CLASSES; k++) {
        sum->h2d[k] += after->h2d[k] - before->h2d[k];
        sum->d2h[k] += after->d2h[k] - before->d2h[k];
    }
}

ep_status ep_bench_copies_allreduce(ep_cluster *c, ep_gpu_copy_stats *s)
{
    // Only the sums the report prints travel; the totals follow from them.
    enum { N = 2 + 2 * EP_COPY_N_CLASSES };
    int64_t v[N] = {(int64_t)s->h2d_copies, (int64_t)s->d2h_copies};
    for (int k = 0; k < EP_COPY_N_CLASSES; k++) {
        v[2 + k] = (int64_t)s->h2d[k];
        v[2 + EP_COPY_N_CLASSES + k] = (int64_t)s->d2h[k];
    }
    ep_status st = ep_cluster_allreduce_i64(c, v, N, EP_REDUCE_SUM);
    if (st) return st;
    memset(s, 0, sizeof *s);
    s->h2d_copies = (uint64_t)v[0];
    s->d2h_copies = (uint64_t)v[1];
    for (int k = 0; k < EP_COPY_N_CLASSES; k++) {
        s->h2d[k] = (uint64_t)v[2 + k];
        s->d2h[k] = (uint64_t)v[2 + EP_COPY_N_CLASSES + k];
        s->h2d_bytes += s->h2d[k];
        s->d2h_bytes += s->d2h[k];
    }
    return EP_OK;
}

#ifdef EP_CUDA
json_t *ep_bench_copy_json(const ep_gpu_copy_stats *sum, int64_t steps)
{
    const double per = steps > 0 ? 1.0 / (double)steps : 0;
    json_t *o = json_object();
    for (int k = 0; k < EP_COPY_N_CLASSES; k++) {
        json_t *c = json_object();
        json_object_set_new(c, "h2d", json_real((double)sum->h2d[k] * per));
        json_object_set_new(c, "d2h", json_real((double)sum->d2h[k] * per));
        json_object_set_new(o, ep_copy_class_name((ep_copy_class)k), c);
    }
    json_object_set_new(o, "h2d", json_real((double)sum->h2d_bytes * per));
    json_object_set_new(o, "d2h", json_real((double)sum->d2h_bytes * per));
    json_object_set_new(o, "h2d_calls", json_real((double)sum->h2d_copies * per));
    json_object_set_new(o, "d2h_calls", json_real((double)sum->d2h_copies * per));
    return o;
}
#else
json_t *ep_bench_copy_json(const ep_gpu_copy_stats *sum, int64_t steps)
{
    (void)sum;
    (void)steps;
    return json_null(); // no counter without CUDA: bench model asks only on backend cuda
}
#endif

double ep_bench_floor_ms(double bytes, double gbps)
{
    return bytes > 0 && gbps > 0 ? bytes / (gbps * 1e9) * 1e3 : 0;
}

double ep_bench_x_floor(double step_ms, double floor_ms)
{
    return floor_ms > 0 ? step_ms / floor_ms : 0;
}
