// Routed and shared experts against an independent naive computation: the
// test reads the weights itself (ep_weights_read_f32) and evaluates
// Σ_j w_j down(silu(gate x) * up x) in double. Covers the full set, the shards
// of a contiguous placement over 3 ranks, the reference path, the shared MLP,
// determinism across scratch growth, segments of many heights in one step
// (the same bits as two calls), and the errors a caller can cause.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/safetensors.h"
#include "experts/experts.h"
#include "experts/kernels.h"

// Per row: max|y - ref| <= TOL * max|ref| (fp32 gemms vs a double reference).
#define TOL 1e-5

// ---- fixture ---------------------------------------------------------------

typedef struct {
    ep_model_cfg cfg;
    ep_weights *w;
    ep_experts *all; // every expert (rank -1)
    // The test's own copy of the weights, per layer (NULL for dense layers).
    float **gate, **up, **down;          // [n_layers][E * I * H], [.. I * H], [.. H * I]
    float **sh_gate, **sh_up, **sh_down; // [n_layers][S * H], [S * H], [H * S]
    double nmse_num, nmse_den;           // accumulated over every comparison
} fixture;

// Qwen3-like: every layer MoE, no shared experts. Sizes are odd on purpose.
static void cfg_qwen_like(ep_model_cfg *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "test-qwen3-odd");
    c->arch = EP_ARCH_QWEN3_MOE;
    c->hidden = 13;
    c->n_layers = 2;
    c->n_heads = 1;
    c->n_kv_heads = 1;
    c->head_dim = 13;
    c->vocab = 17;
    c->intermediate = 19;
    c->max_pos = 64;
    c->rms_eps = 1e-6f;
    c->rope_theta = 10000.0f;
    c->qk_norm = true;
    c->n_experts = 11;
    c->k_base = 3;
    c->moe_inter = 7;
    c->n_shared = 0;
    c->first_k_dense = 0;
    c->topk_method = EP_TOPK_GREEDY;
    c->n_group = 1;
    c->topk_group = 1;
    c->norm_topk_prob = true;
    c->routed_scaling_factor = 1.0f;
    c->checkpoint[0] = '\0';
    c->seed = 20250917;
}

// DeepSeek-V2-like: layer 0 dense, 2 shared experts (shared width 14).
static void cfg_deepseek_like(ep_model_cfg *c)
{
    cfg_qwen_like(c);
    snprintf(c->name, sizeof c->name, "test-deepseek-odd");
    c->arch = EP_ARCH_DEEPSEEK_V2;
    c->n_layers = 3;
    c->first_k_dense = 1;
    c->n_shared = 2;
    c->qk_norm = false;
    c->head_dim = 0;
    c->norm_topk_prob = false;
    c->routed_scaling_factor = 2.5f;
    c->q_lora_rank = 0;
    c->kv_lora_rank = 5;
    c->qk_nope_dim = 4;
    c->qk_rope_dim = 2;
    c->v_head_dim = 4;
    c->seed = 77;
}

static float *read_tensor(fixture *f, const char *name, int64_t rows, int64_t cols)
{
    const int64_t shape[2] = {rows, cols};
    float *dst = malloc(sizeof(float) * rows * cols);
    ep_status st = ep_weights_read_f32(f->w, name, 2, shape, dst);
    if (st) fail_msg("reading %s: %s", name, ep_last_error());
    return dst;
}

static int fixture_setup(void **state, void (*make_cfg)(ep_model_cfg *))
{
    fixture *f = calloc(1, sizeof *f);
    make_cfg(&f->cfg);
    ep_status st = ep_weights_open(&f->cfg, &f->w);
    if (st) {
        fprintf(stderr, "ep_weights_open: %s\n", ep_last_error());
        return -1;
    }
    if ((st = ep_experts_load(&f->cfg, f->w, NULL, -1, &f->all))) {
        fprintf(stderr, "ep_experts_load: %s\n", ep_last_error());
        return -1;
    }
    const ep_model_cfg *c = &f->cfg;
    const int E = c->n_experts, I = c->moe_inter, H = c->hidden, S = c->moe_inter * c->n_shared;
    f->gate = calloc(c->n_layers, sizeof(float *));
    f->up = calloc(c->n_layers, sizeof(float *));
    f->down = calloc(c->n_layers, sizeof(float *));
    f->sh_gate = calloc(c->n_layers, sizeof(float *));
    f->sh_up = calloc(c->n_layers, sizeof(float *));
    f->sh_down = calloc(c->n_layers, sizeof(float *));
    char name[256];
    for (int l = 0; l < c->n_layers; l++) {
        if (!ep_model_layer_is_moe(c, l)) continue;
        f->gate[l] = malloc(sizeof(float) * E * I * H);
        f->up[l] = malloc(sizeof(float) * E * I * H);
        f->down[l] = malloc(sizeof(float) * E * H * I);
        for (int e = 0; e < E; e++) {
            float *t;
            ep_name_expert(name, sizeof name, l, e, "gate_proj");
            t = read_tensor(f, name, I, H);
            memcpy(f->gate[l] + (size_t)e * I * H, t, sizeof(float) * I * H);
            free(t);
            ep_name_expert(name, sizeof name, l, e, "up_proj");
            t = read_tensor(f, name, I, H);
            memcpy(f->up[l] + (size_t)e * I * H, t, sizeof(float) * I * H);
            free(t);
            ep_name_expert(name, sizeof name, l, e, "down_proj");
            t = read_tensor(f, name, H, I);
            memcpy(f->down[l] + (size_t)e * H * I, t, sizeof(float) * H * I);
            free(t);
        }
        if (S > 0) {
            ep_name_shared(name, sizeof name, l, "gate_proj");
            f->sh_gate[l] = read_tensor(f, name, S, H);
            ep_name_shared(name, sizeof name, l, "up_proj");
            f->sh_up[l] = read_tensor(f, name, S, H);
            ep_name_shared(name, sizeof name, l, "down_proj");
            f->sh_down[l] = read_tensor(f, name, H, S);
        }
    }
    *state = f;
    return 0;
}

static int setup_qwen(void **state)
{
    return fixture_setup(state, cfg_qwen_like);
}

static int setup_deepseek(void **state)
{
    return fixture_setup(state, cfg_deepseek_like);
}

static int fixture_teardown(void **state)
{
    fixture *f = *state;
    if (!f) return 0;
    if (f->nmse_den > 0)
        printf("# %s: NMSE of forward/reference vs naive double = %.3e\n", f->cfg.name,
               f->nmse_num / f->nmse_den);
    for (int l = 0; l < f->cfg.n_layers; l++) {
        free(f->gate[l]);
        free(f->up[l]);
        free(f->down[l]);
        free(f->sh_gate[l]);
        free(f->sh_up[l]);
        free(f->sh_down[l]);
    }
    free(f->gate);
    free(f->up);
    free(f->down);
    free(f->sh_gate);
    free(f->sh_up);
    free(f->sh_down);
    ep_experts_free(f->all);
    ep_weights_free(f->w);
    free(f);
    return 0;
}

// ---- naive computation (double throughout) ----------------------------------

static double silu_d(double v)
{
    return v / (1.0 + exp(-v));
}

// y[H] += w * down . (silu(gate . x) * (up . x)) for one MLP of width W.
static void naive_mlp(const float *gate, const float *up, const float *down, int W, int H,
                      const float *x, double w, double *y)
{
    double *h = malloc(sizeof(double) * W);
    for (int i = 0; i < W; i++) {
        double g = 0, u = 0;
        for (int k = 0; k < H; k++) {
            g += (double)gate[i * H + k] * x[k];
            u += (double)up[i * H + k] * x[k];
        }
        h[i] = silu_d(g) * u;
    }
    for (int o = 0; o < H; o++) {
        double s = 0;
        for (int i = 0; i < W; i++)
            s += (double)down[o * W + i] * h[i];
        y[o] += w * s;
    }
    free(h);
}

// y[H] = Σ_j w_j E_j(x) over the given pairs (+ shared when with_shared).
static void naive_record(const fixture *f, int layer, int n, const int *ex, const float *wt,
                         const float *x, bool with_shared, double *y)
{
    const int I = f->cfg.moe_inter, H = f->cfg.hidden, S = f->cfg.moe_inter * f->cfg.n_shared;
    for (int k = 0; k < H; k++)
        y[k] = 0;
    for (int j = 0; j < n; j++) {
        size_t e = (size_t)ex[j];
        naive_mlp(f->gate[layer] + e * I * H, f->up[layer] + e * I * H, f->down[layer] + e * H * I,
                  I, H, x, wt[j], y);
    }
    if (with_shared && S > 0)
        naive_mlp(f->sh_gate[layer], f->sh_up[layer], f->sh_down[layer], S, H, x, 1.0, y);
}

// Row check with the stated tolerance; accumulates the NMSE.
static void check_row(fixture *f, const char *what, int row, const float *got, const double *ref)
{
    const int H = f->cfg.hidden;
    double diff = 0, mag = 0;
    for (int k = 0; k < H; k++) {
        double d = fabs(got[k] - ref[k]);
        if (!(d <= diff)) diff = d; // NaN sticks
        if (fabs(ref[k]) > mag) mag = fabs(ref[k]);
        f->nmse_num += (got[k] - ref[k]) * (got[k] - ref[k]);
        f->nmse_den += ref[k] * ref[k];
    }
    if (!(diff <= TOL * mag + 1e-30))
        fail_msg("%s: row %d: max|diff| %.3e > %.0e * max|ref| %.3e", what, row, diff, TOL, mag);
}

// ---- random records ----------------------------------------------------------

static uint64_t rng_state;
static double urand(void) // [0, 1), xorshift64*
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

typedef struct {
    int n_rec;
    int *off;  // [n_rec + 1]
    int *ex;   // [n_rec * k]
    float *wt; // [n_rec * k]
    float *x;  // [n_rec, H]
    float *y;  // [n_rec, H]
} records;

// n_rec records of 1..k distinct experts drawn from allowed[0..n_allowed),
// weights in (0.05, 1], inputs in [-1, 1). The first record has k pairs.
static void records_make(records *r, int n_rec, int k, const int *allowed, int n_allowed, int H,
                         uint64_t seed)
{
    rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
    r->n_rec = n_rec;
    r->off = malloc(sizeof(int) * (n_rec + 1));
    r->ex = malloc(sizeof(int) * (n_rec * k + 1));
    r->wt = malloc(sizeof(float) * (n_rec * k + 1));
    r->x = malloc(sizeof(float) * (n_rec * H + 1));
    r->y = malloc(sizeof(float) * (n_rec * H + 1));
    int *pool = malloc(sizeof(int) * n_allowed);
    r->off[0] = 0;
    for (int i = 0; i < n_rec; i++) {
        int kk = i == 0 ? k : 1 + (int)(urand() * k);
        if (kk > n_allowed) kk = n_allowed;
        memcpy(pool, allowed, sizeof(int) * n_allowed);
        for (int j = 0; j < kk; j++) { // partial Fisher-Yates: distinct experts
            int pick = j + (int)(urand() * (n_allowed - j));
            int t = pool[j];
            pool[j] = pool[pick];
            pool[pick] = t;
            r->ex[r->off[i] + j] = pool[j];
            r->wt[r->off[i] + j] = (float)(0.05 + 0.95 * urand());
        }
        r->off[i + 1] = r->off[i] + kk;
    }
    for (int i = 0; i < n_rec * H; i++)
        r->x[i] = (float)(2.0 * urand() - 1.0);
    for (int i = 0; i < n_rec * H; i++)
        r->y[i] = NAN; // forward must overwrite
    free(pool);
}

static void records_free(records *r)
{
    free(r->off);
    free(r->ex);
    free(r->wt);
    free(r->x);
    free(r->y);
}

static void check_records(fixture *f, const char *what, int layer, const records *r)
{
    const int H = f->cfg.hidden;
    double *ref = malloc(sizeof(double) * H);
    for (int i = 0; i < r->n_rec; i++) {
        naive_record(f, layer, r->off[i + 1] - r->off[i], r->ex + r->off[i], r->wt + r->off[i],
                     r->x + (size_t)i * H, false, ref);
        check_row(f, what, i, r->y + (size_t)i * H, ref);
    }
    free(ref);
}

static int all_experts[64];

// ---- tests -------------------------------------------------------------------

// The whole expert set: every MoE layer, 37 records of 1..k pairs.
static void test_forward_full(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    for (int l = 0; l < c->n_layers; l++) {
        if (!ep_model_layer_is_moe(c, l)) continue;
        records r;
        records_make(&r, 37, c->k_base, all_experts, c->n_experts, c->hidden, 100 + l);
        ep_status st = ep_experts_forward(f->all, l, r.n_rec, r.off, r.ex, r.wt, r.x, r.y);
        assert_int_equal(st, EP_OK);
        check_records(f, "forward (all experts)", l, &r);
        records_free(&r);
    }
    // One expert per record, weight 1: the output is that expert alone, so a
    // swapped gate/up or a wrong local index cannot hide in a sum.
    const int H = c->hidden, l = c->n_layers - 1;
    records r;
    records_make(&r, c->n_experts, 1, all_experts, c->n_experts, H, 5);
    for (int i = 0; i < c->n_experts; i++) {
        r.ex[i] = i;
        r.wt[i] = 1.0f;
    }
    assert_int_equal(ep_experts_forward(f->all, l, r.n_rec, r.off, r.ex, r.wt, r.x, r.y), EP_OK);
    check_records(f, "forward (one expert each)", l, &r);
    records_free(&r);
}

// Records with no pairs get a zero row; n_rec 0 touches nothing.
static void test_forward_empty(void **state)
{
    fixture *f = *state;
    const int H = f->cfg.hidden, l = f->cfg.n_layers - 1;
    int off[4] = {0, 0, 2, 2};
    int ex[2] = {3, 9};
    float wt[2] = {0.5f, 0.25f};
    float *x = calloc((size_t)3 * H, sizeof(float)), *y = calloc((size_t)3 * H, sizeof(float));
    for (int i = 0; i < 3 * H; i++) {
        x[i] = (float)sin(0.7 * i);
        y[i] = NAN;
    }
    assert_int_equal(ep_experts_forward(f->all, l, 3, off, ex, wt, x, y), EP_OK);
    for (int k = 0; k < H; k++) {
        assert_true(y[k] == 0.0f);
        assert_true(y[2 * H + k] == 0.0f);
    }
    double *ref = malloc(sizeof(double) * H);
    naive_record(f, l, 2, ex, wt, x + H, false, ref);
    check_row(f, "forward (empty records)", 1, y + H, ref);
    y[0] = 42.0f;
    assert_int_equal(ep_experts_forward(f->all, l, 0, off, ex, wt, x, y), EP_OK);
    assert_true(y[0] == 42.0f);
    free(ref);
    free(x);
    free(y);
}

// Contiguous placement over 3 ranks (11 experts: 3, 4, 4): each shard holds
// exactly its experts, and computes the same rows for records of its experts.
static void test_forward_shards(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    const int W = 3, H = c->hidden, l = c->n_layers - 1;
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, c->n_experts, W), EP_OK);
    size_t shard_bytes = 0;
    const size_t shared_bytes =
        sizeof(float) * 3 * (size_t)c->moe_inter * c->n_shared * H * ep_model_n_moe_layers(c);
    for (int rank = 0; rank < W; rank++) {
        ep_experts *sh = NULL;
        ep_status st = ep_experts_load(&f->cfg, f->w, &p, rank, &sh);
        assert_int_equal(st, EP_OK);
        int held[64], n_held = 0;
        for (int e = 0; e < c->n_experts; e++) {
            assert_int_equal(ep_experts_has(sh, e), p.rank_of[e] == rank);
            if (p.rank_of[e] == rank) held[n_held++] = e;
        }
        assert_int_equal(n_held, ep_placement_n_local(&p, rank));
        assert_false(ep_experts_has(sh, -1));
        assert_false(ep_experts_has(sh, c->n_experts));
        shard_bytes += ep_experts_bytes(sh);

        records r;
        records_make(&r, 29, c->k_base, held, n_held, H, 300 + rank);
        assert_int_equal(ep_experts_forward(sh, l, r.n_rec, r.off, r.ex, r.wt, r.x, r.y), EP_OK);
        check_records(f, "forward (shard)", l, &r);
        // The full set gives the same bits (the same rows per expert, and
        // an expert's kernel does not depend on what else the rank holds).
        float *y_all = malloc(sizeof(float) * r.n_rec * H);
        assert_int_equal(ep_experts_forward(f->all, l, r.n_rec, r.off, r.ex, r.wt, r.x, y_all),
                         EP_OK);
        assert_memory_equal(y_all, r.y, sizeof(float) * r.n_rec * H);
        free(y_all);
        records_free(&r);
        ep_experts_free(sh);
    }
    // Routed experts are split, shared experts replicated on every rank.
    assert_int_equal(shard_bytes, ep_experts_bytes(f->all) + (W - 1) * shared_bytes);
    assert_true(ep_experts_bytes(f->all) >
                sizeof(float) * 3 * (size_t)c->moe_inter * H * c->n_experts);
    ep_placement_free(&p);
}

// Reference over routes == forward over one record per token (+ shared),
// and both == the naive computation.
static void test_reference_vs_forward(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    const int H = c->hidden, T = 23;
    for (int l = 0; l < c->n_layers; l++) {
        if (!ep_model_layer_is_moe(c, l)) continue;
        records r;
        records_make(&r, T, c->k_base + 1, all_experts, c->n_experts, H, 700 + l);
        ep_routes rt;
        ep_routes_init(&rt, T, c->k_base + 1, c->k_base);
        rt.n_tokens = T;
        memcpy(rt.offsets, r.off, sizeof(int) * (T + 1));
        memcpy(rt.expert, r.ex, sizeof(int) * r.off[T]);
        memcpy(rt.weight, r.wt, sizeof(float) * r.off[T]);
        assert_int_equal(ep_routes_check(&rt, c->n_experts), EP_OK);

        float *y_ref = malloc(sizeof(float) * T * H);
        for (int i = 0; i < T * H; i++)
            y_ref[i] = NAN;
        ep_experts_reference(f->all, l, &rt, r.x, y_ref);
        assert_int_equal(
            ep_experts_forward(f->all, l, T, rt.offsets, rt.expert, rt.weight, r.x, r.y), EP_OK);
        assert_int_equal(ep_experts_shared_forward(f->all, l, r.x, T, r.y), EP_OK);

        double *ref = malloc(sizeof(double) * H);
        for (int t = 0; t < T; t++) {
            naive_record(f, l, r.off[t + 1] - r.off[t], r.ex + r.off[t], r.wt + r.off[t],
                         r.x + (size_t)t * H, true, ref);
            check_row(f, "reference vs naive", t, y_ref + (size_t)t * H, ref);
            check_row(f, "forward+shared vs naive", t, r.y + (size_t)t * H, ref);
            for (int k = 0; k < H; k++)
                ref[k] = y_ref[(size_t)t * H + k];
            check_row(f, "forward+shared vs reference", t, r.y + (size_t)t * H, ref);
        }
        free(ref);
        free(y_ref);
        ep_routes_free(&rt);
        records_free(&r);
    }
}

// shared_forward adds the shared MLP to whatever y holds; without shared
// experts it leaves y bit for bit alone.
static void test_shared_forward(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    const int H = c->hidden, T = 11, l = c->n_layers - 1;
    float *x = malloc(sizeof(float) * T * H), *y = malloc(sizeof(float) * T * H);
    float *y0 = malloc(sizeof(float) * T * H);
    rng_state = 99;
    for (int i = 0; i < T * H; i++) {
        x[i] = (float)(2 * urand() - 1);
        y0[i] = y[i] = (float)(urand() - 0.5);
    }
    assert_int_equal(ep_experts_shared_forward(f->all, l, x, T, y), EP_OK);
    if (c->n_shared == 0) {
        assert_memory_equal(y, y0, sizeof(float) * T * H);
    } else {
        double *ref = malloc(sizeof(double) * H);
        int none = 0;
        for (int t = 0; t < T; t++) {
            naive_record(f, l, 0, &none, NULL, x + (size_t)t * H, true, ref);
            for (int k = 0; k < H; k++)
                ref[k] += y0[(size_t)t * H + k];
            check_row(f, "shared forward", t, y + (size_t)t * H, ref);
        }
        free(ref);
    }
    assert_int_equal(ep_experts_shared_forward(f->all, l, x, 0, y), EP_OK);
    free(x);
    free(y);
    free(y0);
}

// Same inputs -> same bits, whatever the scratch went through in between;
// a step bigger than any before (one expert with 600 rows, past one pass
// of 512) grows the scratch and is still right.
static void test_deterministic_growth(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    const int H = c->hidden, l = c->n_layers - 1;
    records small, big;
    records_make(&small, 5, c->k_base, all_experts, c->n_experts, H, 11);
    records_make(&big, 600, c->k_base, all_experts, c->n_experts, H, 13);
    for (int i = 0; i < big.n_rec; i++) { // expert 5 in every record
        bool has = false;
        for (int j = big.off[i]; j < big.off[i + 1]; j++)
            has |= big.ex[j] == 5;
        if (!has) big.ex[big.off[i]] = 5;
    }
    ep_experts *e = NULL;
    assert_int_equal(ep_experts_load(c, f->w, NULL, -1, &e), EP_OK);
    float *first = malloc(sizeof(float) * small.n_rec * H);
    assert_int_equal(
        ep_experts_forward(e, l, small.n_rec, small.off, small.ex, small.wt, small.x, first),
        EP_OK);
    assert_int_equal(ep_experts_forward(e, l, big.n_rec, big.off, big.ex, big.wt, big.x, big.y),
                     EP_OK);
    check_records(f, "forward (600 records)", l, &big);
    assert_int_equal(
        ep_experts_forward(e, l, small.n_rec, small.off, small.ex, small.wt, small.x, small.y),
        EP_OK);
    assert_memory_equal(first, small.y, sizeof(float) * small.n_rec * H);
    check_records(f, "forward (after growth)", l, &small);
    free(first);
    ep_experts_free(e);
    records_free(&small);
    records_free(&big);
}

// Segments of many heights in one step: expert 0 in all 600 records (past
// one pass of 512 rows), then experts 1..10 with 1, 2, 5, 6, 7, 13, 63, 64,
// 65 and 374 rows (both sides of the 6-row register tile and of 64). The
// forward matches the naive computation and ep_experts_reference within TOL,
// 1 and 2 threads give the same bits, and so does the step run as two calls
// of records [0, 300) and [300, 600) (fp32: one kernel whatever the rows).
static void test_forward_heights(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    const int H = c->hidden, l = c->n_layers - 1, T = 600, half = 300;
    // Records [cut[i], cut[i + 1]) also use expert i + 1.
    const int cut[] = {0, 1, 3, 8, 14, 21, 34, 97, 161, 226, 600};
    assert_true(c->n_experts >= (int)EP_ARRAY_LEN(cut));
    records r;
    records_make(&r, T, 2, all_experts, c->n_experts, H, 31);
    ep_routes rt;
    ep_routes_init(&rt, T, 2, 2);
    rt.n_tokens = T;
    for (int t = 0, seg = 0; t < T; t++) {
        while (t >= cut[seg + 1])
            seg++;
        r.off[t] = 2 * t;
        r.ex[2 * t] = 0;
        r.ex[2 * t + 1] = seg + 1;
        r.wt[2 * t] = (float)(0.05 + 0.95 * urand());
        r.wt[2 * t + 1] = 1.0f - r.wt[2 * t] * 0.5f;
    }
    r.off[T] = 2 * T;
    memcpy(rt.offsets, r.off, sizeof(int) * (T + 1));
    memcpy(rt.expert, r.ex, sizeof(int) * 2 * T);
    memcpy(rt.weight, r.wt, sizeof(float) * 2 * T);
    assert_int_equal(ep_routes_check(&rt, c->n_experts), EP_OK);
    float *y_ref = malloc(sizeof(float) * T * H), *y1 = malloc(sizeof(float) * T * H);
    float *y_split = malloc(sizeof(float) * T * H);
    ep_experts_reference(f->all, l, &rt, r.x, y_ref);
    double *ref = malloc(sizeof(double) * H);
    for (int threads = 1; threads <= 2; threads++) {
        ep_par_set_threads(threads);
        assert_int_equal(ep_experts_forward(f->all, l, T, r.off, r.ex, r.wt, r.x, r.y), EP_OK);
        check_records(f, "forward (segments of many heights)", l, &r);
        if (threads == 1)
            memcpy(y1, r.y, sizeof(float) * T * H);
        else
            assert_memory_equal(y1, r.y, sizeof(float) * T * H);
        // The same records as two calls (offsets of the second rebased).
        int *off2 = malloc(sizeof(int) * (T - half + 1));
        for (int t = half; t <= T; t++)
            off2[t - half] = r.off[t] - r.off[half];
        assert_int_equal(ep_experts_forward(f->all, l, half, r.off, r.ex, r.wt, r.x, y_split),
                         EP_OK);
        assert_int_equal(ep_experts_forward(f->all, l, T - half, off2, r.ex + r.off[half],
                                            r.wt + r.off[half], r.x + (size_t)half * H,
                                            y_split + (size_t)half * H),
                         EP_OK);
        free(off2);
        for (size_t i = 0; i < (size_t)T * H; i++)
            if (memcmp(&y_split[i], &r.y[i], sizeof(float)))
                fail_msg("%s, %d threads: record %zu [%zu]: two calls %.9g, one call %.9g", c->name,
                         threads, i / H, i % H, y_split[i], r.y[i]);
        // The reference includes the shared experts, if any.
        assert_int_equal(ep_experts_shared_forward(f->all, l, r.x, T, r.y), EP_OK);
        for (int t = 0; t < T; t++) {
            for (int k = 0; k < H; k++)
                ref[k] = y_ref[(size_t)t * H + k];
            check_row(f, "forward vs reference (segments of many heights)", t, r.y + (size_t)t * H,
                      ref);
        }
    }
    ep_par_set_threads(1);
    free(ref);
    free(y_ref);
    free(y1);
    free(y_split);
    ep_routes_free(&rt);
    records_free(&r);
}

// An expert this rank does not hold, an id outside the model, a dense layer:
// EP_ERR_ARG naming layer and expert, and y is left as it was.
static void test_forward_errors(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    const int H = c->hidden, l = c->n_layers - 1;
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, c->n_experts, 3), EP_OK);
    ep_experts *sh = NULL;
    assert_int_equal(ep_experts_load(c, f->w, &p, 0, &sh), EP_OK);
    assert_int_equal(p.rank_of[10], 2);
    int off[3] = {0, 1, 3};
    int ex[3] = {0, 1, 10};
    float wt[3] = {1, 1, 1};
    float x[2 * 13], y[2 * 13];
    assert_true(H <= 13);
    for (int i = 0; i < 2 * H; i++) {
        x[i] = 0.5f;
        y[i] = 7.0f;
    }
    ep_clear_error();
    assert_int_equal(ep_experts_forward(sh, l, 2, off, ex, wt, x, y), EP_ERR_ARG);
    char want[64];
    snprintf(want, sizeof want, "layer %d", l);
    assert_non_null(strstr(ep_last_error(), want));
    assert_non_null(strstr(ep_last_error(), "expert 10"));
    assert_non_null(strstr(ep_last_error(), "not held"));
    for (int i = 0; i < 2 * H; i++)
        assert_true(y[i] == 7.0f);

    ex[2] = c->n_experts; // outside the model
    assert_int_equal(ep_experts_forward(f->all, l, 2, off, ex, wt, x, y), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "expert 11"));
    ex[2] = -1;
    assert_int_equal(ep_experts_forward(f->all, l, 2, off, ex, wt, x, y), EP_ERR_ARG);
    for (int i = 0; i < 2 * H; i++)
        assert_true(y[i] == 7.0f);

    ex[2] = 2;
    assert_int_equal(ep_experts_forward(f->all, c->n_layers, 2, off, ex, wt, x, y), EP_ERR_ARG);
    assert_int_equal(ep_experts_shared_forward(f->all, -1, x, 2, y), EP_ERR_ARG);
    if (c->first_k_dense > 0) { // a dense layer has no experts
        assert_int_equal(ep_experts_forward(f->all, 0, 2, off, ex, wt, x, y), EP_ERR_ARG);
        assert_non_null(strstr(ep_last_error(), "layer 0"));
        assert_int_equal(ep_experts_shared_forward(f->all, 0, x, 2, y), EP_ERR_ARG);
    }
    ep_experts_free(sh);
    ep_placement_free(&p);
}

static void test_load_errors(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    ep_experts *e = (ep_experts *)1;
    assert_int_equal(ep_experts_load(c, f->w, NULL, 0, &e), EP_ERR_ARG);
    assert_null(e);
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, c->n_experts + 2, 3), EP_OK);
    assert_int_equal(ep_experts_load(c, f->w, &p, 1, &e), EP_ERR_ARG);
    assert_non_null(strstr(ep_last_error(), "13"));
    ep_placement_free(&p);
    assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, c->n_experts, 3), EP_OK);
    assert_int_equal(ep_experts_load(c, f->w, &p, 3, &e), EP_ERR_ARG);
    // Round-robin shard: experts 1, 4, 7, 10 on rank 1, right values.
    assert_int_equal(ep_experts_load(c, f->w, &p, 1, &e), EP_OK);
    for (int x = 0; x < c->n_experts; x++)
        assert_int_equal(ep_experts_has(e, x), x % 3 == 1);
    const int held[4] = {1, 4, 7, 10}, l = c->n_layers - 1;
    records r;
    records_make(&r, 9, c->k_base, held, 4, c->hidden, 17);
    assert_int_equal(ep_experts_forward(e, l, r.n_rec, r.off, r.ex, r.wt, r.x, r.y), EP_OK);
    check_records(f, "forward (round-robin shard)", l, &r);
    records_free(&r);
    ep_experts_free(e);
    ep_placement_free(&p);
    ep_experts_free(NULL);
    assert_int_equal(ep_experts_bytes(NULL), 0);
}

// A checkpoint whose expert 3 at layer 0 has a wrong shape: the load fails
// and the message names the layer and the expert.
static void test_load_bad_checkpoint(void **state)
{
    fixture *f = *state;
    ep_model_cfg c = f->cfg;
    c.n_layers = 1;
    c.first_k_dense = 0;
    c.n_shared = 0;
    c.n_experts = 5;
    char dir[] = "/tmp/ep_test_experts_XXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(c.checkpoint, sizeof c.checkpoint, "%s", dir);
    const int I = c.moe_inter, H = c.hidden;
    enum { N = 15 };
    ep_st_entry ent[N];
    char names[N][128];
    float *data = calloc((size_t)(I + 1) * H, sizeof(float));
    const char *proj[3] = {"gate_proj", "up_proj", "down_proj"};
    for (int e = 0; e < 5; e++)
        for (int k = 0; k < 3; k++) {
            ep_st_entry *t = &ent[e * 3 + k];
            memset(t, 0, sizeof *t);
            ep_name_expert(names[e * 3 + k], sizeof names[0], 0, e, proj[k]);
            t->name = names[e * 3 + k];
            t->dtype = EP_DTYPE_F32;
            t->ndim = 2;
            t->shape[0] = k < 2 ? I : H;
            t->shape[1] = k < 2 ? H : I;
            if (e == 3 && k == 1) t->shape[0] = I + 1; // the bad one
            t->data = data;
        }
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(ep_st_write(path, ent, N, NULL), EP_OK);
    ep_weights *w = NULL;
    ep_status st = ep_weights_open(&c, &w);
    if (st) fail_msg("ep_weights_open(%s): %s", dir, ep_last_error());
    ep_experts *e = NULL;
    assert_int_not_equal(ep_experts_load(&c, w, NULL, -1, &e), EP_OK);
    assert_null(e);
    assert_non_null(strstr(ep_last_error(), "layer 0 expert 3"));
    // A shard without expert 3 never reads it, so it loads.
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, 5, 2), EP_OK);
    assert_int_equal(p.rank_of[3], 1);
    assert_int_equal(ep_experts_load(&c, w, &p, 0, &e), EP_OK);
    assert_true(ep_experts_has(e, 0) && !ep_experts_has(e, 3));
    ep_experts_free(e);
    assert_int_not_equal(ep_experts_load(&c, w, &p, 1, &e), EP_OK);
    ep_placement_free(&p);
    ep_weights_free(w);
    unlink(path);
    rmdir(dir);
    free(data);
}

// The tiny presets (the real architectures shrunk: 64 experts, hidden 256,
// top-8 / top-6 + 2 shared): forward + shared of the whole set and of a
// round-robin shard against the reference, on ep_synth_hidden inputs.
static void check_preset(const char *preset)
{
    ep_model_cfg c;
    ep_status st = ep_model_cfg_load(preset, &c);
    if (st) fail_msg("%s: %s", preset, ep_last_error());
    c.n_layers = c.first_k_dense + 2; // two MoE layers are enough; halves the load time
    const int H = c.hidden, T = 31, W = 4, shard_rank = 2;
    ep_weights *w = NULL;
    ep_experts *all = NULL, *sh = NULL;
    assert_int_equal(ep_weights_open(&c, &w), EP_OK);
    assert_int_equal(ep_experts_load(&c, w, NULL, -1, &all), EP_OK);
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_ROUND_ROBIN, c.n_experts, W), EP_OK);
    assert_int_equal(ep_experts_load(&c, w, &p, shard_rank, &sh), EP_OK);

    float *x = malloc(sizeof(float) * T * H), *y = malloc(sizeof(float) * T * H);
    float *y_ref = malloc(sizeof(float) * T * H), *y_sh = malloc(sizeof(float) * T * H);
    float *y_all = malloc(sizeof(float) * T * H);
    int *soff = malloc(sizeof(int) * (T + 1)), *sex = malloc(sizeof(int) * T * c.k_base);
    float *swt = malloc(sizeof(float) * T * c.k_base);
    double num = 0, den = 0;
    for (int l = c.first_k_dense; l < c.n_layers; l++) {
        records r;
        records_make(&r, T, c.k_base, all_experts, c.n_experts, H, 900 + l);
        for (int t = 0; t < T; t++)
            ep_synth_hidden(&c, 5, l, t % EP_SYNTH_N_DOMAINS, t, x + (size_t)t * H);
        ep_routes rt;
        ep_routes_init(&rt, T, c.k_base, c.k_base);
        rt.n_tokens = T;
        memcpy(rt.offsets, r.off, sizeof(int) * (T + 1));
        memcpy(rt.expert, r.ex, sizeof(int) * r.off[T]);
        memcpy(rt.weight, r.wt, sizeof(float) * r.off[T]);
        ep_experts_reference(all, l, &rt, x, y_ref);
        assert_int_equal(ep_experts_forward(all, l, T, r.off, r.ex, r.wt, x, y), EP_OK);
        assert_int_equal(ep_experts_shared_forward(all, l, x, T, y), EP_OK);
        for (int t = 0; t < T; t++) {
            double diff = 0, mag = 0;
            for (int k = 0; k < H; k++) {
                double a = y[(size_t)t * H + k], b = y_ref[(size_t)t * H + k];
                if (!(fabs(a - b) <= diff)) diff = fabs(a - b);
                if (fabs(b) > mag) mag = fabs(b);
                num += (a - b) * (a - b);
                den += b * b;
            }
            if (!(diff <= TOL * mag) || mag == 0)
                fail_msg("%s layer %d token %d: max|diff| %.3e, max|ref| %.3e", preset, l, t, diff,
                         mag);
        }
        // The shard's pairs of each token, against the whole set on the same pairs.
        soff[0] = 0;
        for (int t = 0; t < T; t++) {
            soff[t + 1] = soff[t];
            for (int j = r.off[t]; j < r.off[t + 1]; j++)
                if (p.rank_of[r.ex[j]] == shard_rank) {
                    sex[soff[t + 1]] = r.ex[j];
                    swt[soff[t + 1]++] = r.wt[j];
                }
        }
        assert_true(soff[T] > 0);
        assert_int_equal(ep_experts_forward(sh, l, T, soff, sex, swt, x, y_sh), EP_OK);
        assert_int_equal(ep_experts_forward(all, l, T, soff, sex, swt, x, y_all), EP_OK);
        for (int i = 0; i < T * H; i++)
            if (!(fabsf(y_sh[i] - y_all[i]) <= 1e-5f * (1e-3f + fabsf(y_all[i]))))
                fail_msg("%s layer %d shard: [%d] %.9g vs %.9g", preset, l, i, y_sh[i], y_all[i]);
        ep_routes_free(&rt);
        records_free(&r);
    }
    printf("# %s: NMSE of forward+shared vs reference = %.3e (%zu bytes all, %zu shard %d/%d)\n",
           preset, num / den, ep_experts_bytes(all), ep_experts_bytes(sh), shard_rank, W);
    free(x);
    free(y);
    free(y_ref);
    free(y_sh);
    free(y_all);
    free(soff);
    free(sex);
    free(swt);
    ep_placement_free(&p);
    ep_experts_free(sh);
    ep_experts_free(all);
    ep_weights_free(w);
}

static void test_preset_tiny_qwen3(void **state)
{
    check_preset("tiny-qwen3-moe");
}

static void test_preset_tiny_deepseek(void **state)
{
    check_preset("tiny-deepseek-v2");
}

int main(void)
{
    for (int i = 0; i < 64; i++)
        all_experts[i] = i;
#define T(fn) cmocka_unit_test(fn)
    const struct CMUnitTest qwen[] = {
        T(test_forward_full),         T(test_forward_empty),  T(test_forward_shards),
        T(test_reference_vs_forward), T(test_shared_forward), T(test_deterministic_growth),
        T(test_forward_errors),       T(test_load_errors),    T(test_load_bad_checkpoint),
        T(test_forward_heights),
    };
    const struct CMUnitTest deepseek[] = {
        T(test_forward_full),    T(test_forward_shards),       T(test_reference_vs_forward),
        T(test_shared_forward),  T(test_deterministic_growth), T(test_forward_errors),
        T(test_forward_heights),
    };
#undef T
    int fails =
        cmocka_run_group_tests_name("experts_qwen3_like", qwen, setup_qwen, fixture_teardown);
    fails += cmocka_run_group_tests_name("experts_deepseek_like", deepseek, setup_deepseek,
                                         fixture_teardown);
    const struct CMUnitTest presets[] = {
        cmocka_unit_test(test_preset_tiny_qwen3),
        cmocka_unit_test(test_preset_tiny_deepseek),
    };
    fails += cmocka_run_group_tests_name("experts_presets", presets, NULL, NULL);
    return fails;
}
