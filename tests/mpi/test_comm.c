// Dispatch/combine over MPI against a single-process reference. Every rank
// regenerates every rank's routes and activations from fixed seeds, so it
// knows exactly which records it must receive and in which order (by source
// rank, then token). Fake experts y = Σ_j w_j x (e_j + 1) make the combined
// output checkable without weights. Sweeps both placements, hostname and
// --ranks-per-node 1/2 nodes, 16 and 64 experts, hidden 13, 64 and 200 (two
// fp8 groups, the second short), f32, bf16 and fp8 wire (fp8 dispatch, bf16
// combine), home ranks and scheduler-chosen ranks (replicas), K from 1 to 8,
// different T per rank and T = 0 on some ranks. Also checks planned bytes ==
// measured bytes per rank, that Σ over ranks matches what the transports
// sent, and that fp8 dispatch saves exactly the row bytes it should over bf16.
// Flat and hier dispatch (two stages through forwarding ranks) at 1, 2 and 4
// ranks per node; hier: the same outputs, per-stage bytes planned == measured
// (inter-node part too), never more inter-node combine rows than flat.
// `--subset` (the np 5-8 entries) runs every fifth configuration.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "mpi_check.h"

#define MAX_K    8
#define K_BASE   4
#define N_LAYERS 3

typedef struct {
    ep_place_kind kind;
    int rpn; // ranks per node, 0 = hostnames
    int E, H;
    ep_dtype wire;
    bool replicas; // pair_rank chosen at random instead of home ranks
    ep_dispatch_mode mode;
    int id;
} cfg;

// ---- deterministic data ----------------------------------------------------------

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static int rng_int(uint64_t *s, int n)
{
    return (int)(rng_next(s) % (uint64_t)n);
}
static float rng_unit(uint64_t *s)
{
    return (float)(rng_next(s) >> 40) / (float)(1 << 24);
}

// Tokens of rank src at a layer: different on every rank; layer 0 leaves the
// last rank empty, layer 1 the first, layer 2 every rank (all must still join).
static int tokens_of(const cfg *c, int layer, int src, int W)
{
    if (layer == 2) return 0;
    if (layer == 0) return W > 1 && src == W - 1 ? 0 : 3 + 4 * src + c->id % 5;
    return W > 1 && src == 0 ? 0 : 9 + 3 * src + c->id % 3;
}

typedef struct {
    ep_routes r;
    float *x;       // [T, H]
    int *pair_rank; // [nnz] when replicas
} rank_data;

static void gen(const cfg *c, int layer, int src, int W, rank_data *d)
{
    uint64_t s =
        0x5EEDull + (uint64_t)c->id * 1000003u + (uint64_t)layer * 101u + (uint64_t)src * 7919u;
    int T = tokens_of(c, layer, src, W);
    ep_routes_init(&d->r, T, MAX_K, K_BASE);
    d->r.n_tokens = T;
    int nz = 0;
    for (int i = 0; i < T; i++) {
        d->r.offsets[i] = nz;
        int K = 1 + rng_int(&s, MAX_K);
        for (int j = 0; j < K; j++) {
            int e, dup;
            do {
                e = rng_int(&s, c->E);
                dup = 0;
                for (int q = d->r.offsets[i]; q < nz; q++)
                    dup |= d->r.expert[q] == e;
            } while (dup);
            d->r.expert[nz] = e;
            d->r.weight[nz] = 0.05f + rng_unit(&s);
            nz++;
        }
        for (int j = 0; j < K_BASE; j++) {
            int e, dup;
            do {
                e = rng_int(&s, c->E);
                dup = 0;
                for (int q = 0; q < j; q++)
                    dup |= d->r.base_expert[i * K_BASE + q] == e;
            } while (dup);
            d->r.base_expert[i * K_BASE + j] = e;
            d->r.base_weight[i * K_BASE + j] = 1.0f / K_BASE;
        }
    }
    d->r.offsets[T] = nz;
    d->x = malloc(((size_t)T * c->H + 1) * sizeof(float));
    for (size_t i = 0; i < (size_t)T * c->H; i++)
        d->x[i] = 2.0f * rng_unit(&s) - 1.0f;
    d->pair_rank = NULL;
    if (c->replicas) {
        d->pair_rank = malloc(((size_t)nz + 1) * sizeof(int));
        for (int j = 0; j < nz; j++)
            d->pair_rank[j] = rng_int(&s, W);
    }
}

static void gen_free(rank_data *d)
{
    ep_routes_free(&d->r);
    free(d->x);
    free(d->pair_rank);
}

static int dest_of(const cfg *c, const rank_data *d, const ep_placement *p, int j)
{
    return c->replicas ? d->pair_rank[j] : p->rank_of[d->r.expert[j]];
}

// ---- checks -----------------------------------------------------------------------

// The records this rank must receive, in order: sources ascending, each
// source's tokens ascending, a token's pairs for this rank in row order.
// Hier: the work of this rank holds, per (token, this rank), its pairs here
// with the source row: checked as counts and by the outputs (check_out).
static void check_work_hier(const cfg *c, const rank_data *all, const ep_placement *p, int me,
                            int W, const ep_comm_work *w, const char *tag)
{
    int k = 0, pk = 0;
    for (int s = 0; s < W; s++)
        for (int i = 0; i < all[s].r.n_tokens; i++) {
            int n = 0;
            for (int j = all[s].r.offsets[i]; j < all[s].r.offsets[i + 1]; j++)
                n += dest_of(c, &all[s], p, j) == me;
            k += n > 0;
            pk += n;
        }
    CHECK(w->n_rec == k && w->pair_off[w->n_rec] == pk,
          "%s: hier: %d records with %d pairs received, expected %d with %d", tag, w->n_rec,
          w->pair_off[w->n_rec], k, pk);
    if (!c->replicas) {
        int foreign = 0;
        for (int q = 0; q < w->pair_off[w->n_rec]; q++)
            foreign += p->rank_of[w->pair_expert[q]] != me;
        CHECK(foreign == 0, "%s: %d received pairs name experts of other ranks", tag, foreign);
    }
}

static void check_work(const cfg *c, const rank_data *all, const ep_placement *p, int me, int W,
                       const ep_comm_work *w, const char *tag)
{
    if (c->mode == EP_DISPATCH_HIER) {
        check_work_hier(c, all, p, me, W, w, tag);
        return;
    }
    int k = 0, pk = 0, bad_pairs = 0, bad_x = 0;
    // fp8: the row as the codec decodes it (the codec itself is checked
    // bit for bit against a plain reference in tests/unit/test_dtype.c).
    uint8_t *enc = malloc((size_t)ep_fp8_row_bytes(c->H));
    float *dec = malloc((size_t)c->H * sizeof(float));
    for (int s = 0; s < W; s++) {
        const rank_data *d = &all[s];
        for (int i = 0; i < d->r.n_tokens; i++) {
            int n = 0;
            for (int j = d->r.offsets[i]; j < d->r.offsets[i + 1]; j++) {
                if (dest_of(c, d, p, j) != me) continue;
                if (k < w->n_rec && pk < w->pair_off[w->n_rec]) {
                    bad_pairs += w->pair_expert[pk] != d->r.expert[j];
                    bad_pairs += w->pair_weight[pk] != d->r.weight[j];
                }
                n++;
                pk++;
            }
            if (!n) continue;
            if (k < w->n_rec) {
                bad_pairs += w->pair_off[k + 1] - w->pair_off[k] != n;
                // Own records skip the wire; others carry x in the wire dtype.
                if (c->wire == EP_DTYPE_F8_E4M3) {
                    ep_fp8_row_encode(d->x + (size_t)i * c->H, c->H, enc);
                    ep_fp8_row_decode(enc, c->H, dec);
                }
                for (int h = 0; h < c->H; h++) {
                    float src = d->x[(size_t)i * c->H + h];
                    float want = s == me || c->wire == EP_DTYPE_F32 ? src
                                 : c->wire == EP_DTYPE_BF16         ? ep_bf16_round(src)
                                                                    : dec[h];
                    bad_x += w->x[(size_t)k * c->H + h] != want;
                }
            }
            k++;
        }
    }
    free(enc);
    free(dec);
    CHECK(w->n_rec == k, "%s: %d records received, expected %d", tag, w->n_rec, k);
    CHECK(w->pair_off[0] == 0 && w->pair_off[w->n_rec] == pk, "%s: %d pairs received, expected %d",
          tag, w->pair_off[w->n_rec], pk);
    CHECK(bad_pairs == 0, "%s: %d pair ids/weights/counts differ from the expected order", tag,
          bad_pairs);
    CHECK(bad_x == 0, "%s: %d activations differ from the source rows", tag, bad_x);
    if (!c->replicas) {
        int foreign = 0;
        for (int q = 0; q < w->pair_off[w->n_rec]; q++)
            foreign += p->rank_of[w->pair_expert[q]] != me;
        CHECK(foreign == 0, "%s: %d received pairs name experts of other ranks", tag, foreign);
    }
}

// The fake experts: what experts/ would do on the work, without weights.
static void fake_experts(const ep_comm_work *w, int H)
{
    for (int i = 0; i < w->n_rec; i++) {
        float *y = w->y + (size_t)i * H;
        const float *x = w->x + (size_t)i * H;
        for (int h = 0; h < H; h++)
            y[h] = 0.0f;
        for (int q = w->pair_off[i]; q < w->pair_off[i + 1]; q++) {
            float f = w->pair_weight[q] * (float)(w->pair_expert[q] + 1);
            for (int h = 0; h < H; h++)
                y[h] += f * x[h];
        }
    }
}

// out against Σ_j w_j x (e_j + 1) in double, relative to Σ |terms|: f32 may
// only reorder the sum; bf16 (8 significant bits, unit roundoff 2^-8) rounds
// x once and each partial sum once, so 2 * 2^-8 of Σ |terms| bounds it. fp8
// rounds x by at most (2^-4 + 2^-20) |x| + 2^-10 s with s = amax / 448 <=
// 1/448 here (|x| < 1), i.e. < 2^-18 per unit coefficient, and the bf16
// combine adds 2^-8 (1 + 2^-4): 2^-4 + 2^-7 of Σ |terms| + 2^-17 Σ |coefficients|.
static void check_out(const cfg *c, const rank_data *d, const float *out, const char *tag)
{
    // Hier rounds a forwarded partial sum twice (stage-2 return, then the
    // node's sum): one more 2^-8 for bf16 and fp8 (bf16 combine rows).
    const double extra = c->mode == EP_DISPATCH_HIER && c->wire != EP_DTYPE_F32 ? 1.0 / 256.0 : 0;
    double rel = (c->wire == EP_DTYPE_F32    ? 2e-6
                  : c->wire == EP_DTYPE_BF16 ? 2.0 / 256.0
                                             : 0x1p-4 + 0x1p-7) +
                 extra;
    double abs_per_coef = c->wire == EP_DTYPE_F8_E4M3 ? 0x1p-17 : 0;
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < d->r.n_tokens; i++) {
        for (int h = 0; h < c->H; h++) {
            double ref = 0, mag = 0, coef = 0;
            for (int j = d->r.offsets[i]; j < d->r.offsets[i + 1]; j++) {
                double f = (double)d->r.weight[j] * (d->r.expert[j] + 1);
                double t = f * d->x[(size_t)i * c->H + h];
                ref += t;
                mag += fabs(t);
                coef += fabs(f);
            }
            double err = fabs(out[(size_t)i * c->H + h] - ref);
            if (err > rel * mag + abs_per_coef * coef + 1e-7) bad++;
            if (mag > 0 && err / mag > worst) worst = err / mag;
        }
    }
    CHECK(bad == 0, "%s: %d outputs off the reference (worst relative %.3g, bound %.3g)", tag, bad,
          worst, rel);
}

// ---- one configuration ----------------------------------------------------------------

static void run_cfg(ep_cluster *cl, ep_transport *t, const cfg *c)
{
    const int W = cl->world_size, me = cl->rank;
    char tag[160];
    ep_cluster_set_ranks_per_node(cl, c->rpn);
    ep_placement p;
    CHECK_OK(ep_placement_init(&p, c->kind, c->E, W));
    ep_comm *m = NULL;
    // A small capacity, so that later layers make the buffers grow.
    CHECK_OK(ep_comm_init(cl, t, c->H, c->wire, 4, MAX_K, &m));
    if (!m) {
        ep_placement_free(&p);
        return;
    }
    CHECK_OK(ep_comm_set_mode(m, c->mode));
    rank_data *all = calloc((size_t)W, sizeof *all);
    for (int layer = 0; layer < N_LAYERS; layer++) {
        snprintf(tag, sizeof tag, "cfg %d (%s, %s, rpn %d, E %d, H %d, %s%s) layer %d rank %d",
                 c->id, ep_dispatch_mode_name(c->mode), ep_place_kind_name(c->kind), c->rpn, c->E,
                 c->H, ep_dtype_name(c->wire), c->replicas ? ", replicas" : "", layer, me);
        for (int s = 0; s < W; s++)
            gen(c, layer, s, W, &all[s]);
        const rank_data *mine = &all[me];
        int T = mine->r.n_tokens;

        ep_comm_stats st;
        ep_comm_work w;
        memset(&w, 0, sizeof w);
        int64_t moved0 = t->bytes_moved + ep_comm_node_bytes_moved(m);
        int64_t node0 = ep_comm_node_bytes_moved(m);
        ep_status rc = ep_comm_dispatch(m, &mine->r, &p, mine->pair_rank, mine->x, &w, &st);
        CHECK(rc == EP_OK, "%s: dispatch: %s", tag, ep_last_error());
        if (rc != EP_OK) break;
        check_work(c, all, &p, me, W, &w, tag);
        fake_experts(&w, c->H);
        float *out = malloc(((size_t)T * c->H + 1) * sizeof(float));
        for (size_t i = 0; i < (size_t)T * c->H; i++)
            out[i] = NAN; // combine must write every row
        rc = ep_comm_combine(m, &w, out, &st);
        CHECK(rc == EP_OK, "%s: combine: %s", tag, ep_last_error());
        if (rc != EP_OK) {
            free(out);
            break;
        }
        check_out(c, mine, out, tag);
        free(out);

        CHECK(st.tokens == T && st.pairs == ep_routes_nnz(&mine->r), "%s: tokens %lld pairs %lld",
              tag, (long long)st.tokens, (long long)st.pairs);
        CHECK(st.base_pairs == (int64_t)T * K_BASE, "%s: base_pairs %lld", tag,
              (long long)st.base_pairs);
        CHECK(st.planned_bytes == st.dispatch_bytes + st.combine_bytes, "%s: planned %lld", tag,
              (long long)st.planned_bytes);
        CHECK(st.recv_tokens == w.n_rec && st.recv_pairs == w.pair_off[w.n_rec],
              "%s: recv_tokens %lld recv_pairs %lld", tag, (long long)st.recv_tokens,
              (long long)st.recv_pairs);
        if (c->rpn == 1)
            CHECK(st.dispatch_bytes_inter == st.dispatch_bytes &&
                      st.combine_bytes_inter == st.combine_bytes,
                  "%s: one rank per node, yet intra-node bytes", tag);
        if (cl->n_nodes == 1)
            CHECK(st.dispatch_bytes_inter == 0 && st.combine_bytes_inter == 0 &&
                      st.base_dispatch_bytes_inter == 0,
                  "%s: one node, yet inter-node bytes", tag);
        CHECK(st.dispatch_bytes_inter <= st.dispatch_bytes, "%s: inter > total", tag);
        CHECK(st.dispatch_bytes_intra + st.dispatch_bytes_inter == st.dispatch_bytes &&
                  st.combine_bytes_intra + st.combine_bytes_inter == st.combine_bytes,
              "%s: intra + inter != total", tag);
        if (c->mode == EP_DISPATCH_FLAT) CHECK(st.fwd_sends == 0, "%s: flat forwards", tag);
        // Hier's stage 2 runs on the node transport, never on the world one.
        CHECK(ep_comm_mode(m) == EP_DISPATCH_HIER || ep_comm_node_bytes_moved(m) == 0,
              "%s: a node transport without hier", tag);
        {
            // The same routes priced by the plan alone, in both modes: this
            // dispatch's stats are the plan's; hier never returns more
            // combine rows across nodes than flat.
            ep_comm_stats pm, pf;
            ep_comm_count_mode(&mine->r, &p, mine->pair_rank, me, cl->node_of, c->H, c->wire,
                               c->mode, &pm);
            ep_comm_count_mode(&mine->r, &p, mine->pair_rank, me, cl->node_of, c->H, c->wire,
                               EP_DISPATCH_FLAT, &pf);
            CHECK(pm.dispatch_bytes == st.dispatch_bytes && pm.fwd_sends == st.fwd_sends &&
                      pm.dispatch_bytes_inter == st.dispatch_bytes_inter,
                  "%s: ep_comm_count_mode differs from the dispatch's plan", tag);
            CHECK(st.combine_bytes_inter <= pf.combine_bytes_inter &&
                      st.dispatch_bytes_inter <= pf.dispatch_bytes_inter + 4 * st.pairs,
                  "%s: %s inter-node bytes %lld + %lld, flat %lld + %lld", tag,
                  ep_dispatch_mode_name(c->mode), (long long)st.dispatch_bytes_inter,
                  (long long)st.combine_bytes_inter, (long long)pf.dispatch_bytes_inter,
                  (long long)pf.combine_bytes_inter);
        }
        if (W == 1) CHECK(st.planned_bytes == 0 && st.sends == 0, "%s: bytes on one rank", tag);

        // Over all ranks: every pair computed once, every (token, rank) group
        // received once, the transports sent exactly the planned bytes, and
        // the bytes decoded where they arrived are the planned ones.
        int64_t g[11] = {st.pairs,
                         st.recv_pairs,
                         st.dest_ranks,
                         st.recv_tokens,
                         st.planned_bytes,
                         t->bytes_moved + ep_comm_node_bytes_moved(m) - moved0,
                         st.measured_bytes,
                         st.dispatch_bytes_inter + st.combine_bytes_inter,
                         st.measured_bytes_inter,
                         st.fwd_sends,
                         ep_comm_node_bytes_moved(m) - node0};
        CHECK_OK(ep_cluster_allreduce_i64(cl, g, 11, EP_REDUCE_SUM));
        if (c->mode == EP_DISPATCH_HIER && cl->n_nodes > 1 && c->rpn >= 2 && layer == 1 &&
            !c->replicas)
            CHECK(g[9] > 0 && g[10] > 0,
                  "%s: hier forwarded %lld records, %lld bytes on the node transport (the test "
                  "would prove nothing)",
                  tag, (long long)g[9], (long long)g[10]);
        CHECK(g[7] == g[8], "%s: Σ planned inter-node %lld, Σ measured inter-node %lld", tag,
              (long long)g[7], (long long)g[8]);
        CHECK(g[0] == g[1], "%s: Σ pairs %lld, Σ recv_pairs %lld", tag, (long long)g[0],
              (long long)g[1]);
        CHECK(g[2] == g[3], "%s: Σ dest_ranks %lld, Σ recv_tokens %lld", tag, (long long)g[2],
              (long long)g[3]);
        CHECK(g[4] == g[5], "%s: Σ planned %lld, Σ sent by transports %lld", tag, (long long)g[4],
              (long long)g[5]);
        CHECK(g[4] == g[6], "%s: Σ planned %lld, Σ measured where they arrived %lld", tag,
              (long long)g[4], (long long)g[6]);
        if (W > 1 && layer < 2 && c->E >= W)
            CHECK(g[4] > 0, "%s: nothing crossed ranks (the test would prove nothing)", tag);

        // fp8 against bf16 on the same routes: the same records, each
        // dispatch row 4 ceil(H/128) + round4(H) bytes instead of round4(2H),
        // and the same (bf16) combine rows.
        if (c->wire == EP_DTYPE_F8_E4M3) {
            ep_comm_stats b;
            ep_comm_count_mode(&mine->r, &p, mine->pair_rank, me, cl->node_of, c->H, EP_DTYPE_BF16,
                               c->mode, &b);
            int64_t row8 = 4 * ((c->H + 127) / 128) + ((c->H + 3) & ~3);
            int64_t row16 = (2 * c->H + 3) & ~3;
            int64_t inter_sends = b.combine_bytes_inter / row16; // one combine row each
            CHECK(b.sends == st.sends && b.fwd_sends == st.fwd_sends &&
                      st.dispatch_bytes ==
                          b.dispatch_bytes - (st.sends + st.fwd_sends) * (row16 - row8) &&
                      st.dispatch_bytes_inter ==
                          b.dispatch_bytes_inter - inter_sends * (row16 - row8) &&
                      st.combine_bytes == b.combine_bytes &&
                      st.combine_bytes_inter == b.combine_bytes_inter,
                  "%s: fp8 dispatch %lld bytes, bf16 %lld, %lld records of %lld vs %lld bytes; "
                  "combine %lld vs %lld",
                  tag, (long long)st.dispatch_bytes, (long long)b.dispatch_bytes,
                  (long long)st.sends, (long long)row8, (long long)row16,
                  (long long)st.combine_bytes, (long long)b.combine_bytes);
        }

        for (int s = 0; s < W; s++)
            gen_free(&all[s]);
    }
    free(all);
    ep_comm_free(m);
    ep_placement_free(&p);
}

static void test_errors(ep_cluster *cl, ep_transport *t)
{
    ep_comm *m = NULL;
    CHECK(ep_comm_init(cl, t, 13, EP_DTYPE_F8_E5M2, 4, 2, &m) == EP_ERR_UNSUPPORTED && !m,
          "e5m2 wire accepted");
    CHECK(ep_comm_init(cl, t, 13, EP_DTYPE_I32, 4, 2, &m) == EP_ERR_UNSUPPORTED && !m,
          "int32 wire accepted");
    CHECK(ep_comm_init(cl, t, 0, EP_DTYPE_F32, 4, 2, &m) == EP_ERR_ARG, "hidden 0 accepted");
    CHECK_OK(ep_comm_init(cl, t, 13, EP_DTYPE_F32, 4, 2, &m));
    ep_comm_work w;
    memset(&w, 0, sizeof w);
    ep_comm_stats st;
    // Local checks, before any collective: safe when every rank makes them.
    ep_status rc = ep_comm_combine(m, &w, NULL, &st);
    CHECK(rc == EP_ERR_ARG && strstr(ep_last_error(), "dispatch"), "combine before dispatch: %d %s",
          rc, ep_last_error());
    ep_comm_free(m);
    ep_comm_free(NULL);
    ep_transport_free(NULL);
}

int main(int argc, char **argv)
{
    ep_cluster *cl = NULL;
    if (ep_cluster_init(&argc, &argv, 0, &cl) != EP_OK) {
        fprintf(stderr, "cluster init: %s\n", ep_last_error());
        return 1;
    }
    ep_transport *t = NULL;
    CHECK_OK(ep_transport_mpi_init(cl, &t));
    if (!t) return mpi_check_finish(cl, "test_comm");
    test_errors(cl, t);

    static const int shapes[][2] = {{16, 13}, {64, 64}, {16, 200}};
    static const ep_dtype wires[] = {EP_DTYPE_F32, EP_DTYPE_BF16, EP_DTYPE_F8_E4M3};
    static const int rpns[] = {0, 1, 2, 4};
    const bool subset = argc > 1 && !strcmp(argv[1], "--subset");
    int id = 0;
    for (int k = 0; k < 2; k++)
        for (int ri = 0; ri < 4; ri++)
            for (int mode = 0; mode < 2; mode++)
                for (int sh = 0; sh < 3; sh++)
                    for (int wi = 0; wi < 3; wi++)
                        for (int rep = 0; rep < 2; rep++) {
                            // hidden 200 is there for fp8's short second group
                            if (sh == 2 && wires[wi] != EP_DTYPE_F8_E4M3) continue;
                            // Hostname nodes are one node here: hier is flat.
                            if (rpns[ri] == 0 && mode) continue;
                            cfg c = {.kind = k ? EP_PLACE_ROUND_ROBIN : EP_PLACE_CONTIGUOUS,
                                     .rpn = rpns[ri],
                                     .E = shapes[sh][0],
                                     .H = shapes[sh][1],
                                     .wire = wires[wi],
                                     .replicas = rep,
                                     .mode = mode ? EP_DISPATCH_HIER : EP_DISPATCH_FLAT,
                                     .id = id++};
                            if (subset && c.id % 5) continue;
                            run_cfg(cl, t, &c);
                        }
    ep_transport_free(t);
    int rc = mpi_check_finish(cl, "test_comm");
    ep_cluster_free(cl);
    return rc;
}
