// Status strings, the per-thread last-error message, logging, assertions and
// checked allocation. Nothing here knows about MPI: the rank is only a label.
#include "common/ep.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char ep_errbuf[2048];
static int ep_log_rank = -1;
static ep_log_level ep_log_min = EP_LOG_INFO;

const char *ep_status_str(ep_status st)
{
    switch (st) {
    case EP_OK:
        return "ok";
    case EP_ERR_IO:
        return "I/O error";
    case EP_ERR_FORMAT:
        return "format error";
    case EP_ERR_CONFIG:
        return "config error";
    case EP_ERR_ARG:
        return "bad argument";
    case EP_ERR_NOMEM:
        return "out of memory";
    case EP_ERR_COMM:
        return "communication error";
    case EP_ERR_UNSUPPORTED:
        return "unsupported";
    case EP_ERR_BUSY:
        return "busy";
    case EP_ERR_UNAVAILABLE:
        return "unavailable";
    }
    return "unknown status";
}

ep_status ep_errorf(ep_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ep_errbuf, sizeof ep_errbuf, fmt, ap);
    va_end(ap);
    return st;
}

ep_status ep_error_prefix(ep_status st, const char *fmt, ...)
{
    char prefix[512], old[sizeof ep_errbuf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, ep_errbuf, sizeof old);
    // Bounded concatenation "prefix: old" (a long message is cut, never overrun).
    size_t n = 0, cap = sizeof ep_errbuf - 1;
    for (const char *p = prefix; *p && n < cap; p++)
        ep_errbuf[n++] = *p;
    for (const char *p = ": "; *p && n < cap; p++)
        ep_errbuf[n++] = *p;
    for (const char *p = old; *p && n < cap; p++)
        ep_errbuf[n++] = *p;
    ep_errbuf[n] = '\0';
    return st;
}

const char *ep_last_error(void)
{
    return ep_errbuf;
}

void ep_clear_error(void)
{
    ep_errbuf[0] = '\0';
}

void ep_log_set_rank(int rank)
{
    ep_log_rank = rank;
}

void ep_log_set_level(ep_log_level lvl)
{
    ep_log_min = lvl;
}

void ep_log(ep_log_level lvl, const char *fmt, ...)
{
    static const char *tag[] = {"debug", "info", "warn", "error"};
    if (lvl < ep_log_min) return;
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (ep_log_rank >= 0)
        fprintf(stderr, "[epserve r%d] %s: %s\n", ep_log_rank, tag[lvl], line);
    else
        fprintf(stderr, "[epserve] %s: %s\n", tag[lvl], line);
}

void ep_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "[epserve r%d] assertion failed: %s (%s:%d)\n", ep_log_rank, expr, file, line);
    fflush(stderr);
    abort();
}

void *ep_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "[epserve r%d] out of memory allocating %zu bytes\n", ep_log_rank, n);
        abort();
    }
    return p;
}

void *ep_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "[epserve r%d] out of memory allocating %zu x %zu bytes\n", ep_log_rank, n,
                size);
        abort();
    }
    return p;
}

void *ep_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "[epserve r%d] out of memory reallocating %zu bytes\n", ep_log_rank, n);
        abort();
    }
    return q;
}

char *ep_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = ep_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

double ep_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}
