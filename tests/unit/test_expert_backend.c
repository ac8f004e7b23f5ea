// The expert backend's table and wrappers (experts/backend.h): the cpu table
// gives the same bits as the shard's own functions (routed records, shared
// experts, bytes); moving experts through it (reshard, export, import,
// pending) gives a shard whose forward has the bits of one loaded from the
// checkpoint; a table without the move methods is refused by every move
// wrapper with EP_ERR_UNSUPPORTED naming it. tiny-deepseek-v2 (a dense
// layer, shared experts), a shard of rank 0 of 2; one process, no MPI.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "experts/backend.h"

enum { W = 2, N_REC = 7, K = 3 };

typedef struct {
    ep_model_cfg cfg;
    ep_weights *w;
} fixture;

static int setup(void **state)
{
    static fixture f;
    memset(&f, 0, sizeof f);
    if (ep_model_cfg_load("tiny-deepseek-v2", &f.cfg) || ep_weights_open(&f.cfg, &f.w)) {
        fprintf(stderr, "setup: %s\n", ep_last_error());
        return -1;
    }
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    ep_weights_free(f->w);
    return 0;
}

// N_REC records of K pairs each on experts rank 0 holds under p (repeats
// allowed), x [N_REC, H] in [-1, 1). Fixed seed.
typedef struct {
    int off[N_REC + 1], expert[N_REC * K];
    float weight[N_REC * K];
    float *x, *y;
} records;

static void records_make(records *r, const ep_model_cfg *c, const ep_placement *p, uint64_t seed)
{
    ep_rng g;
    ep_rng_seed(&g, seed);
    int held[256], n_held = 0;
    for (int e = 0; e < c->n_experts; e++)
        if (ep_placement_holds(p, 0, e)) held[n_held++] = e;
    assert_true(n_held > 0);
    for (int i = 0; i <= N_REC; i++)
        r->off[i] = i * K;
    for (int j = 0; j < N_REC * K; j++) {
        r->expert[j] = held[ep_rng_next(&g) % (uint64_t)n_held];
        r->weight[j] = (float)ep_rng_uniform(&g);
    }
    r->x = malloc(sizeof(float) * N_REC * c->hidden);
    r->y = malloc(sizeof(float) * N_REC * c->hidden);
    for (int i = 0; i < N_REC * c->hidden; i++)
        r->x[i] = (float)(2 * ep_rng_uniform(&g) - 1);
}

static void records_free(records *r)
{
    free(r->x);
    free(r->y);
}

// y of the routed records and of the shared experts on top, through b.
static void run(ep_expert_backend *b, int layer, const records *r, const ep_model_cfg *c, float *y)
{
    assert_int_equal(
        ep_expert_backend_forward(b, layer, N_REC, r->off, r->expert, r->weight, r->x, y), EP_OK);
    assert_int_equal(ep_expert_backend_shared(b, layer, r->x, N_REC, y), EP_OK);
}

static void test_cpu_same_bits(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, c->n_experts, W), EP_OK);
    ep_experts *direct = NULL, *wrapped = NULL;
    assert_int_equal(ep_experts_load(c, f->w, &p, 0, &direct), EP_OK);
    assert_int_equal(ep_experts_load(c, f->w, &p, 0, &wrapped), EP_OK);
    ep_expert_backend *b = ep_expert_backend_cpu(wrapped);
    assert_string_equal(ep_expert_backend_name(b), "cpu");
    assert_int_equal(ep_expert_backend_bytes(b), ep_experts_bytes(direct));
    assert_int_equal(ep_expert_backend_can_move(b), EP_OK);
    assert_int_equal(ep_expert_backend_expert_bytes(b), ep_experts_expert_bytes(direct));
    records r;
    records_make(&r, c, &p, 11);
    const size_t n = (size_t)N_REC * c->hidden;
    float *want = malloc(sizeof(float) * n);
    for (int l = c->first_k_dense; l < c->n_layers; l++) {
        assert_int_equal(ep_experts_forward(direct, l, N_REC, r.off, r.expert, r.weight, r.x, want),
                         EP_OK);
        assert_int_equal(ep_experts_shared_forward(direct, l, r.x, N_REC, want), EP_OK);
        run(b, l, &r, c, r.y);
        assert_memory_equal(r.y, want, sizeof(float) * n);
    }
    free(want);
    records_free(&r);
    ep_expert_backend_free(b);
    ep_experts_free(direct);
    ep_placement_free(&p);
}

// Contiguous -> round-robin for rank 0: reshard keeps what rank 0 held, the
// rest is pending until imported from a full set; then the same bits as a
// round-robin shard loaded from the checkpoint.
static void test_cpu_move(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    ep_placement op, np;
    assert_int_equal(ep_placement_init(&op, EP_PLACE_CONTIGUOUS, c->n_experts, W), EP_OK);
    assert_int_equal(ep_placement_init(&np, EP_PLACE_ROUND_ROBIN, c->n_experts, W), EP_OK);
    ep_experts *old = NULL, *all = NULL, *loaded = NULL;
    assert_int_equal(ep_experts_load(c, f->w, &op, 0, &old), EP_OK);
    assert_int_equal(ep_experts_load(c, f->w, NULL, -1, &all), EP_OK);
    assert_int_equal(ep_experts_load(c, f->w, &np, 0, &loaded), EP_OK);
    ep_expert_backend *b = ep_expert_backend_cpu(old), *nb = NULL;
    assert_int_equal(ep_expert_backend_reshard(b, &np, 0, &nb), EP_OK);
    assert_non_null(nb);
    assert_string_equal(ep_expert_backend_name(nb), "cpu");
    const size_t eb = ep_expert_backend_expert_bytes(nb);
    void *buf = malloc(eb);
    int imported = 0;
    for (int l = c->first_k_dense; l < c->n_layers; l++)
        for (int e = 0; e < c->n_experts; e++) {
            const bool fresh = ep_placement_holds(&np, 0, e) && !ep_placement_holds(&op, 0, e);
            assert_int_equal(ep_expert_backend_pending(nb, l, e), fresh);
            if (!fresh) continue;
            assert_int_equal(ep_experts_export(all, l, e, buf), EP_OK);
            assert_int_equal(ep_expert_backend_import(nb, l, e, buf), EP_OK);
            assert_false(ep_expert_backend_pending(nb, l, e));
            imported++;
        }
    assert_true(imported > 0);
    // What was imported exports as the loaded shard's own export.
    void *buf2 = malloc(eb);
    const int l0 = c->first_k_dense;
    int e0 = 0;
    while (!ep_placement_holds(&np, 0, e0) || ep_placement_holds(&op, 0, e0))
        e0++;
    assert_int_equal(ep_expert_backend_export(nb, l0, e0, buf), EP_OK);
    assert_int_equal(ep_experts_export(loaded, l0, e0, buf2), EP_OK);
    assert_memory_equal(buf, buf2, eb);

    records r;
    records_make(&r, c, &np, 12);
    const size_t n = (size_t)N_REC * c->hidden;
    float *want = malloc(sizeof(float) * n);
    ep_expert_backend *lb = ep_expert_backend_cpu(loaded);
    for (int l = c->first_k_dense; l < c->n_layers; l++) {
        run(lb, l, &r, c, want);
        run(nb, l, &r, c, r.y);
        assert_memory_equal(r.y, want, sizeof(float) * n);
    }
    assert_int_equal(ep_expert_backend_bytes(nb), ep_expert_backend_bytes(lb));
    free(want);
    free(buf);
    free(buf2);
    records_free(&r);
    ep_expert_backend_free(lb);
    ep_expert_backend_free(nb);
    ep_expert_backend_free(b);
    ep_experts_free(all);
    ep_placement_free(&op);
    ep_placement_free(&np);
}

// A table that runs but cannot move its experts (as the cuda one today).
static ep_status fake_forward(void *ctx, int layer, int n_rec, const int *pair_off,
                              const int *pair_expert, const float *pair_weight, const float *x,
                              float *y)
{
    return ep_experts_forward(ctx, layer, n_rec, pair_off, pair_expert, pair_weight, x, y);
}

static ep_status fake_shared(void *ctx, int layer, const float *x, int T, float *y)
{
    return ep_experts_shared_forward(ctx, layer, x, T, y);
}

static size_t fake_bytes(const void *ctx)
{
    return ep_experts_bytes(ctx);
}

static void fake_free(void *ctx)
{
    ep_experts_free(ctx);
}

static const ep_expert_backend_i fake_table = {
    .name = "fake",
    .forward = fake_forward,
    .shared = fake_shared,
    .bytes = fake_bytes,
    .free = fake_free,
};

static void test_move_refused(void **state)
{
    fixture *f = *state;
    const ep_model_cfg *c = &f->cfg;
    ep_placement p;
    assert_int_equal(ep_placement_init(&p, EP_PLACE_CONTIGUOUS, c->n_experts, W), EP_OK);
    ep_experts *e = NULL;
    assert_int_equal(ep_experts_load(c, f->w, &p, 0, &e), EP_OK);
    ep_expert_backend *b = ep_expert_backend_new(&fake_table, e);
    records r;
    records_make(&r, c, &p, 13);
    run(b, c->first_k_dense, &r, c, r.y); // it still runs

    assert_int_equal(ep_expert_backend_can_move(b), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "backend fake"));
    ep_expert_backend *nb = (ep_expert_backend *)b; // must be reset to NULL
    assert_int_equal(ep_expert_backend_reshard(b, &p, 0, &nb), EP_ERR_UNSUPPORTED);
    assert_null(nb);
    assert_non_null(strstr(ep_last_error(), "backend fake"));
    char buf[16];
    ep_clear_error();
    assert_int_equal(ep_expert_backend_export(b, c->first_k_dense, 0, buf), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "backend fake"));
    ep_clear_error();
    assert_int_equal(ep_expert_backend_import(b, c->first_k_dense, 0, buf), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "backend fake"));
    assert_int_equal(ep_expert_backend_expert_bytes(b), 0);
    assert_false(ep_expert_backend_pending(b, c->first_k_dense, 0));

    records_free(&r);
    ep_expert_backend_free(b);
    ep_expert_backend_free(NULL);
    ep_placement_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_same_bits),
        cmocka_unit_test(test_cpu_move),
        cmocka_unit_test(test_move_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
