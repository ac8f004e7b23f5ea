// Option values the subcommands share (app/args.h).
#include "app/args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool ep_arg_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool ep_arg_int(const char *s, long lo, long hi, int *out)
{
    long v;
    if (!ep_arg_long(s, EP_MAX(lo, (long)INT_MIN), EP_MIN(hi, (long)INT_MAX), &v)) return false;
    *out = (int)v;
    return true;
}

bool ep_arg_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v)) return false;
    *out = (float)v;
    return true;
}

ep_status ep_arg_ids(const char *opt, const char *s, long lo, int **ids, int *n)
{
    *ids = NULL;
    *n = 0;
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int *v = ep_xmalloc(cap * sizeof(int));
    int k = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < lo || x > INT_MAX || (*end && *end != ',')) {
            size_t l = strcspn(p, ",");
            free(v);
            return ep_errorf(EP_ERR_ARG,
                             "%s: item %d: expected an integer in [%ld, %d] (comma-separated "
                             "ids like 1,2,3), found '%.*s'",
                             opt, k, lo, INT_MAX, (int)EP_MIN(l, 40), p);
        }
        v[k++] = (int)x;
        if (!*end) break;
        p = end + 1;
    }
    *ids = v;
    *n = k;
    return EP_OK;
}

void ep_arg_policy_label(const char *spec, char *out, size_t n)
{
    const char *base = strrchr(spec, '/');
    base = base ? base + 1 : spec;
    size_t len = strlen(base);
    const char *dot = strrchr(base, '.');
    if (dot && (!strcmp(dot, ".yaml") || !strcmp(dot, ".yml"))) len = (size_t)(dot - base);
    snprintf(out, n, "%.*s", (int)len, base);
}

bool ep_arg_cuda_graph(const char *s, int *out)
{
    static const char *names[] = {"off", "buckets", "capture"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return true;
        }
    return ep_arg_int(s, 0, 2, out);
}
