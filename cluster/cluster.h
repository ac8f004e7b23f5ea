// The process group: MPI bootstrap, rank -> node mapping (from hostnames, or
// --ranks-per-node N so one machine can stand in for several nodes), local
// rank via MPI_Comm_split_type(SHARED), and the few collectives callers
// outside comm/ need (reductions of statistics, broadcasts). No MPI types
// leak into this header.
#ifndef EP_CLUSTER_H
#define EP_CLUSTER_H

#include "common/ep.h"

typedef struct ep_cluster_impl ep_cluster_impl;
typedef struct {
    int rank, world_size;
    int local_rank, local_size; // among ranks on this physical host (device choice)
    int node, n_nodes;          // logical node (honours ranks_per_node)
    int ranks_per_node;         // 0 when nodes come from hostnames
    int *node_of;               // [world_size] logical node of each rank
    ep_cluster_impl *impl;      // MPI communicator etc.
} ep_cluster;

// Initialises MPI when not yet initialised (then finalises it in free).
// ranks_per_node > 0 overrides the hostname-derived nodes: node = rank / N.
ep_status ep_cluster_init(int *argc, char ***argv, int ranks_per_node, ep_cluster **out);
void ep_cluster_free(ep_cluster *c); // NULL ok
// Re-derives nodes (tests sweep ranks_per_node in one MPI job). 0 = hostnames.
void ep_cluster_set_ranks_per_node(ep_cluster *c, int ranks_per_node);

typedef enum { EP_REDUCE_SUM, EP_REDUCE_MAX, EP_REDUCE_MIN } ep_reduce_op;
ep_status ep_cluster_allreduce_f64(ep_cluster *c, double *v, int n, ep_reduce_op op);
ep_status ep_cluster_allreduce_i64(ep_cluster *c, int64_t *v, int n, ep_reduce_op op);
// Gathers n doubles from every rank to all: out[rank * n + i].
ep_status ep_cluster_allgather_f64(ep_cluster *c, const double *v, int n, double *out);
ep_status ep_cluster_bcast(ep_cluster *c, void *buf, size_t bytes, int root);
ep_status ep_cluster_barrier(ep_cluster *c);
// Aborts every rank (after a fatal error on one).
void ep_cluster_abort(ep_cluster *c, int code) __attribute__((noreturn));
// The MPI_Comm (as void *) for transports in comm/ that need it.
void *ep_cluster_mpi_comm(ep_cluster *c);

#endif
