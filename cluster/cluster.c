// The process group over MPI: bootstrap (MPI_Init when nobody did), a private
// duplicate of MPI_COMM_WORLD that returns errors instead of aborting, local
// rank per host, logical nodes, and the small collectives used for statistics.
// Payload all-to-alls are not here: they are comm/'s transports.
#include "cluster/cluster.h"

#include <stdlib.h>
#include <string.h>

#include "cluster/mpi_util.h"

struct ep_cluster_impl {
    MPI_Comm comm;     // dup of MPI_COMM_WORLD, MPI_ERRORS_RETURN
    bool own_mpi;      // we called MPI_Init, so we call MPI_Finalize
    int *host_node_of; // [world] node numbered by hostname, first appearance first
    int n_hosts;
};

ep_status ep_mpi_error(int rc, const char *call, const char *file, int line)
{
    char msg[MPI_MAX_ERROR_STRING + 1];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
    msg[len] = '\0';
    return ep_errorf(EP_ERR_COMM, "%s failed at %s:%d: %s (MPI error %d)", call, file, line,
                     len ? msg : "unknown error", rc);
}

// ---- nodes ----------------------------------------------------------------

// Hostnames from every rank, numbered in order of first appearance, so that
// node 0 is the node of rank 0 and the numbering is the same on every rank.
static ep_status ep_cluster_hosts(ep_cluster *c)
{
    int world = c->world_size;
    char name[MPI_MAX_PROCESSOR_NAME];
    memset(name, 0, sizeof name);
    int len = 0;
    EP_MPI_CHECK(MPI_Get_processor_name(name, &len));
    char *all = ep_xcalloc((size_t)world, MPI_MAX_PROCESSOR_NAME);
    int rc = MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all, MPI_MAX_PROCESSOR_NAME,
                           MPI_CHAR, c->impl->comm);
    if (rc != MPI_SUCCESS) {
        free(all);
        return ep_mpi_error(rc, "MPI_Allgather(processor names)", __FILE__, __LINE__);
    }
    int *node_of = c->impl->host_node_of;
    int n_hosts = 0;
    for (int r = 0; r < world; r++) {
        const char *hr = all + (size_t)r * MPI_MAX_PROCESSOR_NAME;
        node_of[r] = -1;
        for (int q = 0; q < r; q++) {
            if (!strncmp(hr, all + (size_t)q * MPI_MAX_PROCESSOR_NAME, MPI_MAX_PROCESSOR_NAME)) {
                node_of[r] = node_of[q];
                break;
            }
        }
        if (node_of[r] < 0) node_of[r] = n_hosts++;
    }
    c->impl->n_hosts = n_hosts;
    free(all);
    return EP_OK;
}

void ep_cluster_set_ranks_per_node(ep_cluster *c, int ranks_per_node)
{
    EP_ASSERT(c && ranks_per_node >= 0);
    c->ranks_per_node = ranks_per_node;
    if (ranks_per_node > 0) {
        for (int r = 0; r < c->world_size; r++)
            c->node_of[r] = r / ranks_per_node;
        c->n_nodes = (c->world_size + ranks_per_node - 1) / ranks_per_node;
    } else {
        memcpy(c->node_of, c->impl->host_node_of, (size_t)c->world_size * sizeof(int));
        c->n_nodes = c->impl->n_hosts;
    }
    c->node = c->node_of[c->rank];
}

// ---- init / free ------------------------------------------------------------

ep_status ep_cluster_init(int *argc, char ***argv, int ranks_per_node, ep_cluster **out)
{
    *out = NULL;
    if (ranks_per_node < 0)
        return ep_errorf(EP_ERR_ARG,
                         "cluster: ranks_per_node: expected >= 0 (0 = from hostnames), found %d",
                         ranks_per_node);
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (finalized)
        return ep_errorf(EP_ERR_COMM, "cluster: MPI was already finalized in this process; "
                                      "expected one cluster per process lifetime");
    bool own_mpi = false;
    if (!inited) {
        // FUNNELED: the HTTP front end has threads, but only the main thread calls MPI.
        int provided = 0;
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return ep_mpi_error(rc, "MPI_Init_thread", __FILE__, __LINE__);
        own_mpi = true;
    }

    ep_cluster *c = ep_xcalloc(1, sizeof *c);
    c->impl = ep_xcalloc(1, sizeof *c->impl);
    c->impl->comm = MPI_COMM_NULL;
    c->impl->own_mpi = own_mpi;
    ep_status st = EP_OK;
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &c->impl->comm);
    if (rc != MPI_SUCCESS) {
        st = ep_mpi_error(rc, "MPI_Comm_dup(MPI_COMM_WORLD)", __FILE__, __LINE__);
        goto err;
    }
    rc = MPI_Comm_set_errhandler(c->impl->comm, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS) {
        st = ep_mpi_error(rc, "MPI_Comm_set_errhandler", __FILE__, __LINE__);
        goto err;
    }
    MPI_Comm_rank(c->impl->comm, &c->rank);
    MPI_Comm_size(c->impl->comm, &c->world_size);
    ep_log_set_rank(c->rank);

    MPI_Comm shared = MPI_COMM_NULL;
    rc = MPI_Comm_split_type(c->impl->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &shared);
    if (rc != MPI_SUCCESS) {
        st = ep_mpi_error(rc, "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)", __FILE__, __LINE__);
        goto err;
    }
    MPI_Comm_rank(shared, &c->local_rank);
    MPI_Comm_size(shared, &c->local_size);
    MPI_Comm_free(&shared);

    c->node_of = ep_xcalloc((size_t)c->world_size, sizeof(int));
    c->impl->host_node_of = ep_xcalloc((size_t)c->world_size, sizeof(int));
    st = ep_cluster_hosts(c);
    if (st != EP_OK) goto err;
    ep_cluster_set_ranks_per_node(c, ranks_per_node);
    *out = c;
    return EP_OK;

err:
    ep_error_prefix(st, "cluster init");
    ep_cluster_free(c);
    return st;
}

void ep_cluster_free(ep_cluster *c)
{
    if (!c) return;
    bool own_mpi = false;
    if (c->impl) {
        if (c->impl->comm != MPI_COMM_NULL) MPI_Comm_free(&c->impl->comm);
        own_mpi = c->impl->own_mpi;
        free(c->impl->host_node_of);
        free(c->impl);
    }
    free(c->node_of);
    free(c);
    if (own_mpi) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
    }
}

// ---- collectives --------------------------------------------------------------

MPI_Op ep_mpi_op(ep_reduce_op op)
{
    switch (op) {
    case EP_REDUCE_SUM:
        return MPI_SUM;
    case EP_REDUCE_MAX:
        return MPI_MAX;
    case EP_REDUCE_MIN:
        return MPI_MIN;
    }
    EP_ASSERT(!"unknown ep_reduce_op");
    return MPI_OP_NULL;
}

ep_status ep_cluster_allreduce_f64(ep_cluster *c, double *v, int n, ep_reduce_op op)
{
    if (n < 0) return ep_errorf(EP_ERR_ARG, "cluster allreduce_f64: count %d, expected >= 0", n);
    EP_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, ep_mpi_op(op), c->impl->comm));
    return EP_OK;
}

ep_status ep_cluster_allreduce_i64(ep_cluster *c, int64_t *v, int n, ep_reduce_op op)
{
    if (n < 0) return ep_errorf(EP_ERR_ARG, "cluster allreduce_i64: count %d, expected >= 0", n);
    EP_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, ep_mpi_op(op), c->impl->comm));
    return EP_OK;
}

ep_status ep_cluster_allgather_f64(ep_cluster *c, const double *v, int n, double *out)
{
    if (n < 0) return ep_errorf(EP_ERR_ARG, "cluster allgather_f64: count %d, expected >= 0", n);
    EP_MPI_CHECK(MPI_Allgather(v, n, MPI_DOUBLE, out, n, MPI_DOUBLE, c->impl->comm));
    return EP_OK;
}

ep_status ep_cluster_bcast(ep_cluster *c, void *buf, size_t bytes, int root)
{
    if (root < 0 || root >= c->world_size)
        return ep_errorf(EP_ERR_ARG, "cluster bcast: root %d outside [0, %d)", root, c->world_size);
    // MPI counts are int: large buffers go in 1 GiB pieces (every rank passes
    // the same size, so every rank cuts the same pieces).
    const size_t chunk = (size_t)1 << 30;
    char *p = buf;
    for (size_t off = 0; off < bytes; off += chunk) {
        int n = (int)EP_MIN(chunk, bytes - off);
        EP_MPI_CHECK(MPI_Bcast(p + off, n, MPI_BYTE, root, c->impl->comm));
    }
    return EP_OK;
}

ep_status ep_cluster_barrier(ep_cluster *c)
{
    EP_MPI_CHECK(MPI_Barrier(c->impl->comm));
    return EP_OK;
}

void ep_cluster_abort(ep_cluster *c, int code)
{
    MPI_Abort(c && c->impl ? c->impl->comm : MPI_COMM_WORLD, code);
    abort(); // MPI_Abort should not return; make sure of it
}

void *ep_cluster_mpi_comm(ep_cluster *c)
{
    return &c->impl->comm;
}
