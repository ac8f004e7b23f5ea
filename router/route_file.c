// The logic of `epserve route`: raw little-endian float32 gate logits of one
// layer in, one JSON object per token out (kept experts in score order and
// the combine weights), written atomically. Needs only the architecture;
// app/route.c only parses the command line.
#include "router/policy.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// Tokens routed per pass: bounds memory for any input size.
#define EP_ROUTE_CHUNK 4096

static bool host_is_little_endian(void)
{
    const uint32_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static void bswap32_all(float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        u = (u >> 24) | ((u >> 8) & 0xff00u) | ((u << 8) & 0xff0000u) | (u << 24);
        memcpy(&v[i], &u, 4);
    }
}

static ep_status write_chunk(FILE *f, const ep_routes *r, int64_t first)
{
    for (int i = 0; i < r->n_tokens; i++) {
        int b = r->offsets[i], k = ep_routes_k(r, i);
        fprintf(f, "{\"token\":%lld,\"k\":%d,\"experts\":[", (long long)(first + i), k);
        for (int j = 0; j < k; j++)
            fprintf(f, "%s%d", j ? "," : "", r->expert[b + j]);
        fprintf(f, "],\"weights\":[");
        for (int j = 0; j < k; j++)
            fprintf(f, "%s%.9g", j ? "," : "", r->weight[b + j]);
        fprintf(f, "]}\n");
    }
    return ferror(f) ? ep_errorf(EP_ERR_IO, "writing routes failed: %s", strerror(errno)) : EP_OK;
}

ep_status ep_route_file(const ep_model_cfg *m, const ep_policy *p, int layer, const char *input,
                        int64_t T, const char *out_path)
{
    const int E = m->n_experts;
    if (T < 0)
        return ep_errorf(EP_ERR_ARG, "--tokens: expected an integer >= 0, found %lld",
                         (long long)T);
    if (layer < 0 || layer >= m->n_layers || !ep_model_layer_is_moe(m, layer))
        return ep_errorf(EP_ERR_ARG, "--layer: expected a MoE layer of %s in [%d, %d], found %d",
                         m->name, m->first_k_dense, m->n_layers - 1, layer);
    FILE *in = fopen(input, "rb");
    if (!in) return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", input, strerror(errno));
    struct stat sb;
    if (fstat(fileno(in), &sb) != 0) {
        int err = errno;
        fclose(in);
        return ep_errorf(EP_ERR_IO, "%s: cannot stat: %s", input, strerror(err));
    }
    if (T > INT64_MAX / ((int64_t)E * 4)) {
        fclose(in);
        return ep_errorf(EP_ERR_ARG,
                         "--tokens: %lld tokens x %d experts x 4 bytes overflows a file size",
                         (long long)T, E);
    }
    int64_t want = T * E * 4;
    if ((int64_t)sb.st_size != want) {
        fclose(in);
        return ep_errorf(EP_ERR_ARG,
                         "%s: expected %lld tokens x %d experts x 4 bytes = %lld bytes of float32 "
                         "logits, found %lld bytes",
                         input, (long long)T, E, (long long)want, (long long)sb.st_size);
    }

    int chunk = (int)EP_MIN(T, (int64_t)EP_ROUTE_CHUNK);
    ep_router *r = NULL;
    ep_routes routes = {0};
    float *buf = NULL;
    FILE *out = NULL;
    char tmp[1200];
    ep_status st;
    if (strlen(out_path) + 16 > sizeof tmp) {
        fclose(in);
        return ep_errorf(EP_ERR_ARG, "--out: path too long (max %zu characters)", sizeof tmp - 16);
    }
    if ((st = ep_router_init(m, chunk, &r))) goto done;
    ep_routes_init(&routes, chunk > 0 ? chunk : 1, ep_policy_max_k(p), m->k_base);
    buf = ep_xmalloc((size_t)(chunk > 0 ? chunk : 1) * E * sizeof(float));
    if ((st = ep_file_atomic_open(out_path, tmp, sizeof tmp, &out))) goto done;
    for (int64_t t0 = 0; t0 < T && !st; t0 += chunk) {
        int n = (int)EP_MIN((int64_t)chunk, T - t0);
        size_t cnt = (size_t)n * E;
        if (fread(buf, sizeof(float), cnt, in) != cnt) {
            st = ep_errorf(EP_ERR_IO, "%s: short read at token %lld", input, (long long)t0);
            break;
        }
        if (!host_is_little_endian()) bswap32_all(buf, cnt);
        for (size_t i = 0; i < cnt; i++)
            if (!isfinite(buf[i])) {
                st = ep_errorf(EP_ERR_FORMAT,
                               "%s: token %lld expert %zu: expected a finite logit, found %g",
                               input, (long long)(t0 + (int64_t)(i / E)), i % E, buf[i]);
                break;
            }
        if (!st) st = ep_router_route_logits(r, p, NULL, layer, buf, n, &routes);
        if (!st) st = write_chunk(out, &routes, t0);
    }
    {
        ep_status cs = ep_file_atomic_commit(out, tmp, out_path, st == EP_OK);
        out = NULL;
        if (!st) st = cs;
    }
done:
    if (out) fclose(out);
    fclose(in);
    free(buf);
    ep_routes_free(&routes);
    ep_router_free(r);
    return st;
}
