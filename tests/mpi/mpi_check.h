// A minimal check harness for MPI tests: every rank counts its checks, the
// verdict is reduced over ranks (a failure anywhere fails the run) and rank
// 0 prints "N passed, N failed". Use CHECK(cond, fmt, ...) in test bodies.
#ifndef EP_MPI_CHECK_H
#define EP_MPI_CHECK_H

#include "cluster/cluster.h"

void mpi_check_record(bool ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define CHECK(cond, ...) mpi_check_record((cond), __FILE__, __LINE__, __VA_ARGS__)
// Checks status == EP_OK, printing ep_last_error() otherwise.
#define CHECK_OK(st)                                                                               \
    mpi_check_record((st) == EP_OK, __FILE__, __LINE__, "%s: %s", #st, ep_last_error())
// Reduces the counts over ranks, prints the summary on rank 0 and returns
// the process exit code (0 when nothing failed anywhere).
int mpi_check_finish(ep_cluster *c, const char *test_name);

#endif
