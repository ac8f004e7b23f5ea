// The cluster over MPI: rank/world/local rank, nodes from hostnames and
// from --ranks-per-node (and back), every rank agreeing on node_of, and the
// results of allreduce (sum/max/min, f64 and i64), allgather, bcast, barrier.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi_check.h"

// Every rank must hold the same node_of: gather each rank's own node and
// compare with the local table.
static void check_nodes_agree(ep_cluster *c, const char *mode)
{
    double mine = c->node;
    double *all = calloc((size_t)c->world_size, sizeof(double));
    CHECK_OK(ep_cluster_allgather_f64(c, &mine, 1, all));
    for (int r = 0; r < c->world_size; r++)
        CHECK((int)all[r] == c->node_of[r], "%s: rank %d says node %d, local table says %d", mode,
              r, (int)all[r], c->node_of[r]);
    free(all);
    // Nodes are numbered 0.. in order of first appearance, n_nodes of them.
    int max_node = -1;
    for (int r = 0; r < c->world_size; r++) {
        CHECK(c->node_of[r] >= 0 && c->node_of[r] <= max_node + 1,
              "%s: node_of[%d] = %d after max %d", mode, r, c->node_of[r], max_node);
        if (c->node_of[r] > max_node) max_node = c->node_of[r];
    }
    CHECK(max_node + 1 == c->n_nodes, "%s: n_nodes %d, nodes seen %d", mode, c->n_nodes,
          max_node + 1);
    CHECK(c->node == c->node_of[c->rank], "%s: node %d vs node_of[rank] %d", mode, c->node,
          c->node_of[c->rank]);
}

static void test_topology(ep_cluster *c)
{
    int W = c->world_size;
    CHECK(W >= 1 && c->rank >= 0 && c->rank < W, "rank %d of %d", c->rank, W);
    CHECK(c->local_rank >= 0 && c->local_rank < c->local_size, "local rank %d of %d", c->local_rank,
          c->local_size);
    CHECK(ep_cluster_mpi_comm(c) != NULL, "no MPI communicator");

    // Hostname mode: ranks sharing a host share a node, so this rank's node
    // holds exactly local_size ranks (the shared-memory domain is the host).
    CHECK(c->ranks_per_node == 0, "default ranks_per_node %d", c->ranks_per_node);
    check_nodes_agree(c, "hostnames");
    int same = 0;
    for (int r = 0; r < W; r++)
        same += c->node_of[r] == c->node;
    CHECK(same == c->local_size, "hostnames: %d ranks on my node, local_size %d", same,
          c->local_size);
    int host_nodes = c->n_nodes;

    ep_cluster_set_ranks_per_node(c, 1);
    check_nodes_agree(c, "rpn 1");
    CHECK(c->n_nodes == W, "rpn 1: n_nodes %d, expected %d", c->n_nodes, W);
    for (int r = 0; r < W; r++)
        CHECK(c->node_of[r] == r, "rpn 1: node_of[%d] = %d", r, c->node_of[r]);

    ep_cluster_set_ranks_per_node(c, 2);
    check_nodes_agree(c, "rpn 2");
    CHECK(c->n_nodes == (W + 1) / 2, "rpn 2: n_nodes %d, expected %d", c->n_nodes, (W + 1) / 2);
    for (int r = 0; r < W; r++)
        CHECK(c->node_of[r] == r / 2, "rpn 2: node_of[%d] = %d", r, c->node_of[r]);
    CHECK(c->ranks_per_node == 2, "ranks_per_node %d", c->ranks_per_node);

    ep_cluster_set_ranks_per_node(c, 3);
    CHECK(c->n_nodes == (W + 2) / 3, "rpn 3: n_nodes %d", c->n_nodes);
    CHECK(c->node == c->rank / 3, "rpn 3: node %d", c->node);

    ep_cluster_set_ranks_per_node(c, 0);
    CHECK(c->n_nodes == host_nodes, "back to hostnames: n_nodes %d, expected %d", c->n_nodes,
          host_nodes);
    check_nodes_agree(c, "hostnames again");
}

static void test_collectives(ep_cluster *c)
{
    int W = c->world_size, R = c->rank;
    double v[3] = {R + 1.0, 0.5 * R, -1.0 * R};
    CHECK_OK(ep_cluster_allreduce_f64(c, v, 3, EP_REDUCE_SUM));
    CHECK(v[0] == W * (W + 1) / 2.0, "sum f64[0] = %g", v[0]);
    CHECK(v[1] == 0.25 * W * (W - 1), "sum f64[1] = %g", v[1]);
    CHECK(v[2] == -0.5 * W * (W - 1), "sum f64[2] = %g", v[2]);

    double m[2] = {R * 1.5, 7.0 - R};
    CHECK_OK(ep_cluster_allreduce_f64(c, m, 2, EP_REDUCE_MAX));
    CHECK(m[0] == (W - 1) * 1.5 && m[1] == 7.0, "max f64 = %g %g", m[0], m[1]);
    double n[2] = {R * 1.5, 7.0 - R};
    CHECK_OK(ep_cluster_allreduce_f64(c, n, 2, EP_REDUCE_MIN));
    CHECK(n[0] == 0.0 && n[1] == 7.0 - (W - 1), "min f64 = %g %g", n[0], n[1]);

    // Values past 2^32 make sure 64 bits travel.
    const int64_t big = (int64_t)1 << 40;
    int64_t iv[3] = {big + R, -(int64_t)R * 13, R};
    CHECK_OK(ep_cluster_allreduce_i64(c, iv, 3, EP_REDUCE_SUM));
    CHECK(iv[0] == big * W + (int64_t)W * (W - 1) / 2, "sum i64[0] = %lld", (long long)iv[0]);
    CHECK(iv[1] == -13 * (int64_t)W * (W - 1) / 2, "sum i64[1] = %lld", (long long)iv[1]);
    int64_t im[2] = {big * R, -(int64_t)R};
    CHECK_OK(ep_cluster_allreduce_i64(c, im, 2, EP_REDUCE_MAX));
    CHECK(im[0] == big * (W - 1) && im[1] == 0, "max i64 = %lld %lld", (long long)im[0],
          (long long)im[1]);
    int64_t in[2] = {big * R, -(int64_t)R};
    CHECK_OK(ep_cluster_allreduce_i64(c, in, 2, EP_REDUCE_MIN));
    CHECK(in[0] == 0 && in[1] == -(W - 1), "min i64 = %lld %lld", (long long)in[0],
          (long long)in[1]);

    double g[3] = {R, R * R, -0.25 * R};
    double *all = calloc((size_t)W * 3, sizeof(double));
    CHECK_OK(ep_cluster_allgather_f64(c, g, 3, all));
    for (int r = 0; r < W; r++)
        CHECK(all[3 * r] == r && all[3 * r + 1] == r * r && all[3 * r + 2] == -0.25 * r,
              "allgather row %d = %g %g %g", r, all[3 * r], all[3 * r + 1], all[3 * r + 2]);
    free(all);

    // Broadcast an odd-sized buffer from the last rank, then a larger one from 0.
    unsigned char b13[13];
    for (int i = 0; i < 13; i++)
        b13[i] = R == W - 1 ? (unsigned char)(3 * i + 1) : 0xEE;
    CHECK_OK(ep_cluster_bcast(c, b13, sizeof b13, W - 1));
    int bad = 0;
    for (int i = 0; i < 13; i++)
        bad += b13[i] != (unsigned char)(3 * i + 1);
    CHECK(bad == 0, "bcast from %d: %d wrong bytes", W - 1, bad);
    size_t nb = 100003;
    unsigned char *big_buf = malloc(nb);
    for (size_t i = 0; i < nb; i++)
        big_buf[i] = R == 0 ? (unsigned char)(i * 7 + 5) : 0;
    CHECK_OK(ep_cluster_bcast(c, big_buf, nb, 0));
    bad = 0;
    for (size_t i = 0; i < nb; i++)
        bad += big_buf[i] != (unsigned char)(i * 7 + 5);
    CHECK(bad == 0, "bcast of %zu bytes: %d wrong", nb, bad);
    free(big_buf);
    CHECK_OK(ep_cluster_bcast(c, NULL, 0, 0));

    CHECK_OK(ep_cluster_barrier(c));

    // Errors every rank makes alike never enter MPI, so nothing hangs.
    ep_status st = ep_cluster_bcast(c, b13, 1, W);
    CHECK(st == EP_ERR_ARG && strstr(ep_last_error(), "root") != NULL, "bad root: %d %s", st,
          ep_last_error());
    st = ep_cluster_allreduce_f64(c, v, -1, EP_REDUCE_SUM);
    CHECK(st == EP_ERR_ARG, "negative count: %d", st);
}

int main(int argc, char **argv)
{
    ep_cluster *c = NULL;
    ep_status st = ep_cluster_init(&argc, &argv, 0, &c);
    if (st != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    ep_cluster *bad = (ep_cluster *)1;
    CHECK(ep_cluster_init(&argc, &argv, -2, &bad) == EP_ERR_ARG && bad == NULL,
          "ranks_per_node -2 accepted");
    ep_cluster_free(NULL);
    // A second cluster in the same job (MPI already up) must not finalize MPI
    // when freed: the first one keeps working below.
    ep_cluster *c2 = NULL;
    CHECK_OK(ep_cluster_init(&argc, &argv, 2, &c2));
    if (c2) {
        CHECK(c2->ranks_per_node == 2 && c2->node == c2->rank / 2, "second cluster: rpn %d node %d",
              c2->ranks_per_node, c2->node);
        CHECK(c2->rank == c->rank && c2->world_size == c->world_size, "second cluster: rank %d/%d",
              c2->rank, c2->world_size);
        ep_cluster_free(c2);
    }
    test_topology(c);
    test_collectives(c);
    int rc = mpi_check_finish(c, "test_cluster");
    ep_cluster_free(c);
    return rc;
}
