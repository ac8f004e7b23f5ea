// The NCCL transport against the MPI transport, and the whole EP layer on
// GPUs against the reference. Counts: every rank receives what every peer
// announced. Payloads: random sizes (zero included) at offsets with gaps,
// from host buffers and from device buffers; results bit-identical to MPI's,
// gaps untouched, bytes_moved equal and equal to the bytes sent to others;
// odd byte sizes too (NCCL moves bytes, MPI words); two exchanges in flight
// with async start/wait, waited for in reverse order. ep_comm dispatch/combine
// over NCCL gives the same bits as over MPI, Σ planned == Σ measured. Finally
// dispatch (NCCL) -> CUDA experts -> combine -> shared experts vs
// ep_experts_reference, both test models, tolerance CUDA_TEST_BF16_TOL.
// Skips (77 on every rank) unless every rank has a device of its own.
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/nccl/transport_nccl.h"
#include "cuda_test_util.h"
#include "experts/cuda/experts_cuda.h"
#include "mpi_check.h"

#define GAP  8 // bytes left between peers' parts, which must stay untouched
#define FILL 0xAB

static uint64_t mix(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t k[3] = {a, b, c};
    return ep_hash64(k, sizeof k, 0x9e3779b97f4a7c15ull);
}

// Bytes rank s sends to rank d in round `round` (unit = 4 for MPI-compatible sizes).
static int64_t part_bytes(int s, int d, int round, int unit)
{
    return unit * (int64_t)(mix(s, d, round) % 7); // 0 .. 6 units, zero included
}
static uint8_t payload(int s, int d, int64_t i)
{
    return (uint8_t)(mix(s, d, 1000 + i) >> 11);
}

// ---- counts -------------------------------------------------------------------------

static void test_counts(ep_transport *t, const char *tag)
{
    const int W = t->world_size, me = t->rank;
    int64_t *send = malloc(sizeof(int64_t) * W), *recv = malloc(sizeof(int64_t) * W);
    for (int d = 0; d < W; d++) {
        send[d] = (int64_t)(mix(me, d, 7) >> 20) - (1ll << 40); // negative and large too
        recv[d] = -1;
    }
    CHECK_OK(t->vt->exchange_counts(t, send, recv));
    int bad = 0;
    for (int s = 0; s < W; s++)
        bad += recv[s] != (int64_t)(mix(s, me, 7) >> 20) - (1ll << 40);
    CHECK(bad == 0, "%s: exchange_counts: %d of %d counts wrong on rank %d", tag, bad, W, me);
    free(send);
    free(recv);
}

// ---- payloads ---------------------------------------------------------------------------

typedef struct {
    int64_t *sb, *so, *rb, *ro; // [W] sizes and offsets, in bytes
    int64_t send_len, recv_len, remote;
    uint8_t *send, *recv; // host
} parts;

static void parts_make(parts *p, int W, int me, int round, int unit)
{
    p->sb = calloc(W, sizeof(int64_t));
    p->so = calloc(W, sizeof(int64_t));
    p->rb = calloc(W, sizeof(int64_t));
    p->ro = calloc(W, sizeof(int64_t));
    int64_t so = GAP, ro = GAP;
    p->remote = 0;
    for (int d = 0; d < W; d++) {
        p->sb[d] = part_bytes(me, d, round, unit);
        p->rb[d] = part_bytes(d, me, round, unit);
        p->so[d] = so;
        p->ro[d] = ro;
        so += p->sb[d] + GAP;
        ro += p->rb[d] + GAP;
        if (d != me) p->remote += p->sb[d];
    }
    p->send_len = so;
    p->recv_len = ro;
    p->send = malloc((size_t)so);
    p->recv = malloc((size_t)ro);
    memset(p->send, 0x5A, (size_t)so);
    for (int d = 0; d < W; d++)
        for (int64_t i = 0; i < p->sb[d]; i++)
            p->send[p->so[d] + i] = payload(me, d, i);
    memset(p->recv, FILL, (size_t)ro);
}

static void parts_free(parts *p)
{
    free(p->sb);
    free(p->so);
    free(p->rb);
    free(p->ro);
    free(p->send);
    free(p->recv);
}

// Every part holds what its sender wrote; every gap still holds FILL.
static int parts_wrong(const parts *p, const uint8_t *recv, int W, int me)
{
    int bad = 0;
    int64_t pos = 0;
    for (int s = 0; s < W; s++) {
        for (; pos < p->ro[s]; pos++)
            bad += recv[pos] != FILL;
        for (int64_t i = 0; i < p->rb[s]; i++)
            bad += recv[p->ro[s] + i] != payload(s, me, i);
        pos = p->ro[s] + p->rb[s];
    }
    for (; pos < p->recv_len; pos++)
        bad += recv[pos] != FILL;
    return bad;
}

static void test_payloads(ep_transport *nccl, ep_transport *mpi)
{
    const int W = nccl->world_size, me = nccl->rank;
    for (int round = 0; round < 3; round++) {
        parts a, b;
        parts_make(&a, W, me, round, 4);
        parts_make(&b, W, me, round, 4);
        int64_t m0 = nccl->bytes_moved, q0 = mpi->bytes_moved;
        CHECK_OK(ep_transport_alltoallv(nccl, a.send, a.sb, a.so, a.recv, a.rb, a.ro));
        CHECK_OK(ep_transport_alltoallv(mpi, b.send, b.sb, b.so, b.recv, b.rb, b.ro));
        int bad = parts_wrong(&a, a.recv, W, me);
        CHECK(bad == 0, "round %d: NCCL host payload: %d bytes wrong on rank %d", round, bad, me);
        CHECK(memcmp(a.recv, b.recv, (size_t)a.recv_len) == 0,
              "round %d: NCCL and MPI received different bytes on rank %d", round, me);
        CHECK(nccl->bytes_moved - m0 == a.remote && mpi->bytes_moved - q0 == a.remote,
              "round %d: bytes_moved NCCL %lld, MPI %lld, expected %lld (sent to others)", round,
              (long long)(nccl->bytes_moved - m0), (long long)(mpi->bytes_moved - q0),
              (long long)a.remote);
        parts_free(&a);
        parts_free(&b);
    }

    // Odd byte sizes, which the MPI transport (4-byte words) refuses.
    parts o;
    parts_make(&o, W, me, 9, 3);
    CHECK_OK(ep_transport_alltoallv(nccl, o.send, o.sb, o.so, o.recv, o.rb, o.ro));
    CHECK(parts_wrong(&o, o.recv, W, me) == 0, "odd sizes: wrong bytes on rank %d", me);
    parts_free(&o);

    // Device buffers go to NCCL as they are.
    parts d;
    parts_make(&d, W, me, 4, 4);
    void *dsend = NULL, *drecv = NULL;
    CHECK(cudaMalloc(&dsend, (size_t)d.send_len) == cudaSuccess, "cudaMalloc");
    CHECK(cudaMalloc(&drecv, (size_t)d.recv_len) == cudaSuccess, "cudaMalloc");
    cudaMemcpy(dsend, d.send, (size_t)d.send_len, cudaMemcpyHostToDevice);
    cudaMemset(drecv, FILL, (size_t)d.recv_len);
    int64_t m0 = nccl->bytes_moved;
    CHECK_OK(ep_transport_alltoallv(nccl, dsend, d.sb, d.so, drecv, d.rb, d.ro));
    cudaMemcpy(d.recv, drecv, (size_t)d.recv_len, cudaMemcpyDeviceToHost);
    CHECK(parts_wrong(&d, d.recv, W, me) == 0, "device buffers: wrong bytes on rank %d", me);
    CHECK(nccl->bytes_moved - m0 == d.remote, "device buffers: bytes_moved %lld, expected %lld",
          (long long)(nccl->bytes_moved - m0), (long long)d.remote);
    cudaFree(dsend);
    cudaFree(drecv);
    parts_free(&d);

    // The caller's mistakes are reported, not sent.
    parts e;
    parts_make(&e, W, me, 5, 4);
    e.rb[me] += 4;
    CHECK(ep_transport_alltoallv(nccl, e.send, e.sb, e.so, e.recv, e.rb, e.ro) == EP_ERR_COMM &&
              strstr(ep_last_error(), "self part"),
          "a self-size mismatch must be EP_ERR_COMM, got: %s", ep_last_error());
    parts_free(&e);
}

// Two exchanges in flight (host buffers and device buffers), a counts
// exchange between the starts and the waits, waits in reverse order; a
// third start is refused before anything is posted, a second wait too.
static void test_async(ep_transport *nccl)
{
    const int W = nccl->world_size, me = nccl->rank;
    parts a, b, c;
    parts_make(&a, W, me, 6, 4);
    parts_make(&b, W, me, 7, 3); // odd sizes
    parts_make(&c, W, me, 8, 4);
    void *dsend = NULL, *drecv = NULL;
    CHECK(cudaMalloc(&dsend, (size_t)b.send_len) == cudaSuccess, "cudaMalloc");
    CHECK(cudaMalloc(&drecv, (size_t)b.recv_len) == cudaSuccess, "cudaMalloc");
    cudaMemcpy(dsend, b.send, (size_t)b.send_len, cudaMemcpyHostToDevice);
    cudaMemset(drecv, FILL, (size_t)b.recv_len);
    int64_t m0 = nccl->bytes_moved, ma = 0, mb = 0;
    ep_transport_req *qa = NULL, *qb = NULL, *qc = NULL;
    CHECK_OK(nccl->vt->alltoallv_start(nccl, a.send, a.sb, a.so, a.recv, a.rb, a.ro, &qa));
    CHECK_OK(nccl->vt->alltoallv_start(nccl, dsend, b.sb, b.so, drecv, b.rb, b.ro, &qb));
    CHECK(nccl->vt->alltoallv_start(nccl, c.send, c.sb, c.so, c.recv, c.rb, c.ro, &qc) ==
                  EP_ERR_ARG &&
              !qc,
          "a third exchange in flight must be refused: %s", ep_last_error());
    test_counts(nccl, "nccl (two payloads in flight)");
    if (qb) CHECK_OK(nccl->vt->alltoallv_wait(nccl, qb, &mb));
    if (qa) CHECK_OK(nccl->vt->alltoallv_wait(nccl, qa, &ma));
    CHECK(nccl->vt->alltoallv_wait(nccl, qa, NULL) == EP_ERR_ARG, "a second wait must be refused");
    cudaMemcpy(b.recv, drecv, (size_t)b.recv_len, cudaMemcpyDeviceToHost);
    CHECK(parts_wrong(&a, a.recv, W, me) == 0, "async host exchange: wrong bytes on rank %d", me);
    CHECK(parts_wrong(&b, b.recv, W, me) == 0, "async device exchange: wrong bytes on rank %d", me);
    CHECK(ma == a.remote && mb == b.remote && nccl->bytes_moved - m0 == a.remote + b.remote,
          "async: moved %lld + %lld (transport %lld), expected %lld + %lld", (long long)ma,
          (long long)mb, (long long)(nccl->bytes_moved - m0), (long long)a.remote,
          (long long)b.remote);
    cudaFree(dsend);
    cudaFree(drecv);
    parts_free(&a);
    parts_free(&b);
    parts_free(&c);
}

// ---- dispatch / combine, and the EP layer ---------------------------------------------------

// Fake experts: y = Σ_j w_j (e_j + 1) x, exact in fp32 for these sizes.
static void fake_experts(const ep_comm_work *w, int H)
{
    for (int i = 0; i < w->n_rec; i++)
        for (int h = 0; h < H; h++) {
            float acc = 0;
            for (int j = w->pair_off[i]; j < w->pair_off[i + 1]; j++)
                acc += w->pair_weight[j] * (float)(w->pair_expert[j] + 1) * w->x[(size_t)i * H + h];
            w->y[(size_t)i * H + h] = acc;
        }
}

static int tokens_of(int rank, int W, int layer)
{
    return W > 1 && rank == (layer % W) ? 0 : 7 + 2 * rank + layer; // one rank idle per layer
}

static void test_comm_same_bits(ep_cluster *c, ep_transport *nccl, ep_transport *mpi)
{
    ep_model_cfg cfg;
    cuda_test_cfg_qwen(&cfg);
    const int H = cfg.hidden, E = cfg.n_experts, maxk = 4, cap = 64;
    const ep_dtype wires[] = {EP_DTYPE_F32, EP_DTYPE_BF16};
    ep_placement p;
    CHECK_OK(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, E, c->world_size));
    for (size_t wi = 0; wi < EP_ARRAY_LEN(wires); wi++) {
        ep_comm *cn = NULL, *cm = NULL;
        CHECK_OK(ep_comm_init(c, nccl, H, wires[wi], cap, maxk, &cn));
        CHECK_OK(ep_comm_init(c, mpi, H, wires[wi], cap, maxk, &cm));
        if (!cn || !cm) break;
        for (int layer = 0; layer < 3; layer++) {
            const int T = tokens_of(c->rank, c->world_size, layer);
            ep_routes r;
            ep_routes_init(&r, cap, maxk, cfg.k_base);
            cuda_test_routes(&r, T, maxk, E, 1000 + 10 * c->rank + layer);
            float *x = malloc(sizeof(float) * (T * H + 1));
            float *yn = malloc(sizeof(float) * (T * H + 1)),
                  *ym = malloc(sizeof(float) * (T * H + 1));
            cuda_test_fill(x, (size_t)T * H, 2000 + c->rank, 1.0f);
            ep_comm_stats sn, sm;
            memset(&sn, 0, sizeof sn);
            memset(&sm, 0, sizeof sm);
            ep_comm_work wn, wm;
            CHECK_OK(ep_comm_dispatch(cn, &r, &p, NULL, x, &wn, &sn));
            fake_experts(&wn, H);
            CHECK_OK(ep_comm_combine(cn, &wn, yn, &sn));
            CHECK_OK(ep_comm_dispatch(cm, &r, &p, NULL, x, &wm, &sm));
            fake_experts(&wm, H);
            CHECK_OK(ep_comm_combine(cm, &wm, ym, &sm));
            CHECK(wn.n_rec == wm.n_rec, "layer %d: %d records over NCCL, %d over MPI", layer,
                  wn.n_rec, wm.n_rec);
            CHECK(T == 0 || memcmp(yn, ym, sizeof(float) * T * H) == 0,
                  "%s wire, layer %d: NCCL and MPI outputs differ on rank %d",
                  ep_dtype_name(wires[wi]), layer, c->rank);
            int64_t pm[3] = {sn.planned_bytes, sn.measured_bytes, sm.measured_bytes};
            CHECK_OK(ep_cluster_allreduce_i64(c, pm, 3, EP_REDUCE_SUM));
            CHECK(pm[1] == pm[0] && pm[2] == pm[0],
                  "layer %d: Σ measured NCCL %lld / MPI %lld, Σ planned %lld", layer,
                  (long long)pm[1], (long long)pm[2], (long long)pm[0]);
            ep_routes_free(&r);
            free(x);
            free(yn);
            free(ym);
        }
        ep_comm_free(cn);
        ep_comm_free(cm);
    }
    ep_placement_free(&p);
}

static void test_ep_layer(ep_cluster *c, ep_transport *nccl, ep_gpu *gpu,
                          void (*make)(ep_model_cfg *))
{
    ep_model_cfg cfg;
    make(&cfg);
    const int H = cfg.hidden, maxk = 5, cap = 64;
    ep_weights *w = NULL;
    ep_experts *all = NULL;
    ep_experts_cuda *mine = NULL;
    ep_comm *cm = NULL;
    ep_placement p;
    CHECK_OK(ep_weights_open(&cfg, &w));
    CHECK_OK(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, cfg.n_experts, c->world_size));
    CHECK_OK(ep_experts_load(&cfg, w, NULL, -1, &all));
    CHECK_OK(ep_experts_cuda_load(&cfg, w, &p, c->rank, gpu, &mine));
    // fp32 wire: the BF16 budget of CUDA_TEST_BF16_TOL covers the experts alone.
    CHECK_OK(ep_comm_init(c, nccl, H, EP_DTYPE_F32, cap, maxk, &cm));
    // Every rank must join every dispatch: go on only if all ranks are ready.
    int64_t ready = mine && cm && all;
    CHECK_OK(ep_cluster_allreduce_i64(c, &ready, 1, EP_REDUCE_MIN));
    double worst = 0;
    for (int layer = cfg.first_k_dense; layer < cfg.n_layers && ready; layer++) {
        const int T = tokens_of(c->rank, c->world_size, layer);
        ep_routes r;
        ep_routes_init(&r, cap, maxk, cfg.k_base);
        cuda_test_routes(&r, T, maxk, cfg.n_experts, 3000 + 10 * c->rank + layer);
        float *x = malloc(sizeof(float) * (T * H + 1)), *y = malloc(sizeof(float) * (T * H + 1));
        float *ref = malloc(sizeof(float) * (T * H + 1));
        cuda_test_fill(x, (size_t)T * H, 4000 + c->rank + layer, 1.0f);
        ep_comm_stats st;
        memset(&st, 0, sizeof st);
        ep_comm_work work;
        CHECK_OK(ep_comm_dispatch(cm, &r, &p, NULL, x, &work, &st));
        CHECK_OK(ep_experts_cuda_forward(mine, layer, work.n_rec, work.pair_off, work.pair_expert,
                                         work.pair_weight, work.x, work.y));
        CHECK_OK(ep_comm_combine(cm, &work, y, &st));
        CHECK_OK(ep_experts_cuda_shared_forward(mine, layer, x, T, y));
        ep_experts_reference(all, layer, &r, x, ref);
        double err = T ? cuda_test_rel_err(y, ref, T, H) : 0;
        worst = EP_MAX(worst, isnan(err) ? INFINITY : err);
        CHECK(err <= CUDA_TEST_BF16_TOL,
              "%s layer %d rank %d: EP on GPUs vs reference: rel err %.3e > %.0e", cfg.name, layer,
              c->rank, err, CUDA_TEST_BF16_TOL);
        int64_t pm[2] = {st.planned_bytes, st.measured_bytes};
        CHECK_OK(ep_cluster_allreduce_i64(c, pm, 2, EP_REDUCE_SUM));
        CHECK(pm[1] == pm[0], "layer %d: Σ measured %lld, Σ planned %lld", layer, (long long)pm[1],
              (long long)pm[0]);
        ep_routes_free(&r);
        free(x);
        free(y);
        free(ref);
    }
    ep_cluster_allreduce_f64(c, &worst, 1, EP_REDUCE_MAX);
    if (c->rank == 0)
        printf("# %s, %d GPUs: EP layer vs reference, max rel err %.2e (tol %.0e)\n", cfg.name,
               c->world_size, worst, CUDA_TEST_BF16_TOL);
    ep_comm_free(cm);
    ep_experts_cuda_free(mine);
    ep_experts_free(all);
    ep_placement_free(&p);
    ep_weights_free(w);
}

// ---- main -------------------------------------------------------------------------------------

int main(int argc, char **argv)
{
    ep_cluster *c = NULL;
    const int run = cuda_test_mpi_begin(&argc, &argv, "test_mpi_nccl", &c);
    if (run <= 0) return run < 0 ? 1 : CUDA_TEST_SKIP;

    ep_gpu *gpu = NULL;
    ep_nccl *nc = NULL;
    ep_transport *nccl = NULL, *mpi = NULL;
    // Each step is collective, so every rank goes on only when all succeeded.
    CHECK_OK(ep_gpu_init(c, &gpu));
    int64_t ok = gpu != NULL;
    CHECK_OK(ep_cluster_allreduce_i64(c, &ok, 1, EP_REDUCE_MIN));
    if (ok) CHECK_OK(ep_nccl_init(c, gpu, &nc));
    if (nc) CHECK_OK(ep_transport_nccl_init(c, nc, &nccl));
    CHECK_OK(ep_transport_mpi_init(c, &mpi));
    ok = nccl && mpi;
    CHECK_OK(ep_cluster_allreduce_i64(c, &ok, 1, EP_REDUCE_MIN));
    if (ok) {
        if (c->rank == 0) {
            char vs[32];
            ep_nccl_version_str(ep_nccl_version(nc), vs, sizeof vs);
            printf("# %d ranks, NCCL %s, rank 0 on %s\n", c->world_size, vs, ep_gpu_name(gpu));
        }
        test_counts(nccl, "nccl");
        test_counts(mpi, "mpi");
        test_payloads(nccl, mpi);
        test_async(nccl);
        test_comm_same_bits(c, nccl, mpi);
        test_ep_layer(c, nccl, gpu, cuda_test_cfg_qwen);
        test_ep_layer(c, nccl, gpu, cuda_test_cfg_deepseek);
    }
    ep_transport_free(nccl);
    ep_transport_free(mpi);
    ep_nccl_free(nc);
    ep_gpu_free(gpu);
    int rc = mpi_check_finish(c, "test_mpi_nccl");
    ep_cluster_free(c);
    return rc;
}
