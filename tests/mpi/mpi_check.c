// Check counting for the MPI tests (see mpi_check.h).
#include "mpi_check.h"

#include <stdarg.h>
#include <stdio.h>

static int64_t n_pass, n_fail;

void mpi_check_record(bool ok, const char *file, int line, const char *fmt, ...)
{
    if (ok) {
        n_pass++;
        return;
    }
    n_fail++;
    if (n_fail > 20) return; // the first failures tell the story
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "FAIL %s:%d: %s\n", file, line, msg);
}

int mpi_check_finish(ep_cluster *c, const char *test_name)
{
    int64_t v[2] = {n_pass, n_fail};
    if (ep_cluster_allreduce_i64(c, v, 2, EP_REDUCE_SUM) != EP_OK) {
        fprintf(stderr, "%s: allreduce of the verdict failed: %s\n", test_name, ep_last_error());
        return 1;
    }
    if (c->rank == 0) {
        printf("%s (world %d): %lld passed, %lld failed\n", test_name, c->world_size,
               (long long)v[0], (long long)v[1]);
        fflush(stdout);
    }
    return v[1] == 0 && v[0] > 0 ? 0 : 1;
}
