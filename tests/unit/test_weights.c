// Weight sources: a make-model checkpoint (2 shards, BF16; 1 shard, F32) of
// both tiny presets reads back exactly the in-memory synthetic values through
// ep_model_cfg_load(dir) + ep_weights_*; the writer refuses a non-empty
// directory, leaves nothing behind on failure; shape and name errors name
// the tensor.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/weights.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// ---- temp directories -------------------------------------------------------

static void rm_rf(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        char sub[1024];
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
            rm_rf(sub);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(d);
    return n;
}

static long long file_size(const char *dir, const char *name)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat sb;
    return stat(p, &sb) == 0 ? (long long)sb.st_size : -1;
}

typedef struct {
    char base[256]; // mkdtemp'd, removed after each test
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->base, sizeof f->base, "%s/ep_test_weights_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(f->base)) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    rm_rf(f->base);
    free(f);
    return 0;
}

// ---- round trip -----------------------------------------------------------------

// Reads `name` through w and compares it bit for bit with ep_synth_tensor(cfg).
static void expect_same(const ep_model_cfg *cfg, ep_weights *w, const char *name, int64_t rows,
                        int64_t cols)
{
    const int64_t shape[2] = {rows, cols};
    size_t n = (size_t)(rows * cols);
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    memset(a, 0xff, n * sizeof *a);
    ep_synth_tensor(cfg, name, 2, shape, b);
    ep_status st = ep_weights_read_f32(w, name, 2, shape, a);
    if (st) fail_msg("read %s: %s", name, ep_last_error());
    if (memcmp(a, b, n * sizeof *a)) {
        size_t i = 0;
        while (a[i] == b[i])
            i++;
        fail_msg("%s: element %zu is %g from the checkpoint, %g in memory", name, i, a[i], b[i]);
    }
    free(a);
    free(b);
}

// Reads `name` as an ep_mat in `want` and checks dtype, where the data lies
// (mapped: inside the checkpoint, nothing owned; else an owned copy) and the
// values, widened, bit for bit against ep_synth_tensor (BF16-exact values).
static void expect_mat(const ep_model_cfg *cfg, ep_weights *w, const char *name, int64_t rows,
                       int64_t cols, ep_dtype want, ep_dtype want_stored, bool want_mapped)
{
    const int64_t shape[2] = {rows, cols};
    float *b = malloc((size_t)(rows * cols) * sizeof *b), *row = malloc((size_t)cols * sizeof *row);
    ep_synth_tensor(cfg, name, 2, shape, b);
    ep_mat m;
    if (ep_weights_read_mat(w, name, rows, cols, want, &m))
        fail_msg("read_mat %s: %s", name, ep_last_error());
    assert_int_equal(m.dtype, want_stored);
    assert_true(m.rows == rows && m.cols == cols);
    if (want_mapped != (m.owned == NULL))
        fail_msg("%s as %s: expected %s", name, ep_dtype_name(want_stored),
                 want_mapped ? "mapped from the checkpoint" : "an owned copy");
    for (int64_t r = 0; r < rows; r++) {
        ep_mat_row_f32(&m, r, row);
        if (memcmp(row, b + r * cols, (size_t)cols * sizeof *row))
            fail_msg("%s as %s: row %lld differs", name, ep_dtype_name(want_stored), (long long)r);
    }
    assert_true(ep_mat_bytes(&m) == (size_t)(rows * cols) * ep_dtype_size(want_stored));
    ep_mat_free(&m);
    assert_null(m.data);
    free(row);
    free(b);
}

static void round_trip(fixture *f, const char *preset, int n_shards, ep_dtype dtype)
{
    ep_model_cfg cfg;
    if (ep_model_cfg_load(preset, &cfg)) fail_msg("load %s: %s", preset, ep_last_error());
    assert_string_equal(cfg.checkpoint, "");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s-%d", f->base, preset, n_shards);

    ep_synth_ckpt_info info;
    ep_status st = ep_synth_write_checkpoint_ex(&cfg, dir, n_shards, dtype, 0, &info);
    if (st) fail_msg("write %s: %s", dir, ep_last_error());
    assert_int_equal(info.n_shards, n_shards);
    ep_synth_ckpt_info size;
    ep_synth_checkpoint_size(&cfg, dtype, &size);
    assert_int_equal(info.n_tensors, size.n_tensors);
    assert_true(info.total_bytes == size.total_bytes);

    // Exactly the shards, the index and config.json; no temp dir beside it.
    assert_int_equal(count_entries(dir), n_shards + 2);
    assert_true(file_size(dir, "model.safetensors.index.json") > 0);
    assert_true(file_size(dir, "config.json") > 0);
    long long sum = 0, smallest = -1, largest = 0;
    for (int s = 0; s < n_shards; s++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        long long sz = file_size(dir, name);
        if (sz <= 0) fail_msg("%s/%s missing", dir, name);
        sum += sz;
        smallest = smallest < 0 ? sz : EP_MIN(smallest, sz);
        largest = EP_MAX(largest, sz);
    }
    // Data plus headers; shards balanced by bytes within 10 % of the total.
    assert_true(sum > (long long)info.total_bytes);
    assert_true(largest - smallest < sum / 10);
    int siblings = count_entries(f->base);

    // The directory is a checkpoint ep_model_cfg_load understands, with the seed.
    ep_model_cfg ck;
    if (ep_model_cfg_load(dir, &ck)) fail_msg("load %s: %s", dir, ep_last_error());
    assert_string_not_equal(ck.checkpoint, "");
    assert_true(ck.seed == cfg.seed);
    assert_int_equal(ck.arch, cfg.arch);
    assert_int_equal(ck.n_experts, cfg.n_experts);
    assert_int_equal(ck.hidden, cfg.hidden);
    assert_int_equal(ck.n_shared, cfg.n_shared);

    ep_weights *wc = NULL, *ws = NULL;
    if (ep_weights_open(&ck, &wc)) fail_msg("open %s: %s", dir, ep_last_error());
    if (ep_weights_open(&cfg, &ws)) fail_msg("open synthetic: %s", ep_last_error());
    const int H = cfg.hidden, E = cfg.n_experts, I = cfg.moe_inter;
    const int L = cfg.n_layers - 1, L0 = cfg.first_k_dense;
    char name[128];
    for (int src = 0; src < 2; src++) {
        ep_weights *w = src ? ws : wc;
        // First and last tensors of the layout: both shards are read.
        expect_same(&cfg, w, "model.embed_tokens.weight", cfg.vocab, H);
        expect_same(&cfg, w, "lm_head.weight", cfg.vocab, H);
        ep_name_gate(name, sizeof name, L0);
        expect_same(&cfg, w, name, E, H);
        ep_name_gate(name, sizeof name, L);
        expect_same(&cfg, w, name, E, H);
        ep_name_expert(name, sizeof name, L, E - 1, "down_proj");
        expect_same(&cfg, w, name, H, I);
        ep_name_expert(name, sizeof name, L0, 5, "gate_proj");
        expect_same(&cfg, w, name, I, H);
        if (cfg.n_shared) {
            ep_name_shared(name, sizeof name, L, "up_proj");
            expect_same(&cfg, w, name, (int64_t)I * cfg.n_shared, H);
            ep_name_shared(name, sizeof name, L0, "down_proj");
            expect_same(&cfg, w, name, H, (int64_t)I * cfg.n_shared);
        }
    }

    // Matrices: a BF16 checkpoint's BF16 tensor is used where it lies (auto
    // or bf16); anything converted is owned. Synthetic weights are fp32.
    const bool bf = dtype == EP_DTYPE_BF16;
    ep_name_expert(name, sizeof name, L, 1, "up_proj");
    expect_mat(&cfg, wc, name, I, H, EP_DTYPE_AUTO, dtype, true);
    expect_mat(&cfg, wc, name, I, H, EP_DTYPE_BF16, EP_DTYPE_BF16, bf);
    expect_mat(&cfg, wc, name, I, H, EP_DTYPE_F32, EP_DTYPE_F32, !bf);
    expect_mat(&cfg, ws, "lm_head.weight", cfg.vocab, H, EP_DTYPE_AUTO, EP_DTYPE_F32, false);
    expect_mat(&cfg, ws, "lm_head.weight", cfg.vocab, H, EP_DTYPE_BF16, EP_DTYPE_BF16, false);
    ep_dtype d = EP_DTYPE_AUTO, e = EP_DTYPE_AUTO;
    assert_int_equal(ep_weights_dense_dtype(wc, &d), EP_OK);
    assert_int_equal(ep_weights_expert_dtype(wc, &e), EP_OK);
    assert_true(d == (bf ? EP_DTYPE_BF16 : EP_DTYPE_F32) && e == d);
    d = e = EP_DTYPE_AUTO;
    assert_int_equal(ep_weights_dense_dtype(ws, &d), EP_OK);
    assert_int_equal(ep_weights_expert_dtype(ws, &e), EP_OK);
    assert_true(d == EP_DTYPE_F32 && e == EP_DTYPE_F32);
    // A wrong shape as a matrix too.
    ep_mat bad;
    assert_int_not_equal(ep_weights_read_mat(wc, name, I + 1, H, EP_DTYPE_AUTO, &bad), EP_OK);
    if (!strstr(ep_last_error(), name))
        fail_msg("shape error does not name '%s': %s", name, ep_last_error());

    // A wrong shape is refused, naming the tensor, from either source.
    ep_name_expert(name, sizeof name, L, 3, "up_proj");
    const int64_t wrong[2] = {I + 1, H};
    float *buf = malloc((size_t)(I + 1) * H * sizeof *buf);
    for (int src = 0; src < 2; src++) {
        st = ep_weights_read_f32(src ? ws : wc, name, 2, wrong, buf);
        assert_int_not_equal(st, EP_OK);
        if (!strstr(ep_last_error(), name))
            fail_msg("shape error does not name '%s': %s", name, ep_last_error());
    }
    // An unknown tensor too.
    const char *bogus = "model.layers.0.mlp.experts.9999.up_proj.weight";
    const int64_t sh[2] = {I, H};
    for (int src = 0; src < 2; src++) {
        st = ep_weights_read_f32(src ? ws : wc, bogus, 2, sh, buf);
        assert_int_not_equal(st, EP_OK);
        if (!strstr(ep_last_error(), bogus))
            fail_msg("missing-tensor error does not name '%s': %s", bogus, ep_last_error());
    }
    free(buf);
    ep_weights_free(wc);
    ep_weights_free(ws);

    // Writing into the existing (non-empty) directory fails, naming it, and
    // changes nothing there or beside it.
    st = ep_synth_write_checkpoint(&cfg, dir, n_shards, dtype);
    assert_int_not_equal(st, EP_OK);
    if (!strstr(ep_last_error(), dir))
        fail_msg("error does not name '%s': %s", dir, ep_last_error());
    assert_int_equal(count_entries(dir), n_shards + 2);
    assert_int_equal(count_entries(f->base), siblings);
}

static void test_qwen3_two_shards(void **state)
{
    round_trip(*state, "tiny-qwen3-moe", 2, EP_DTYPE_BF16);
}

static void test_deepseek_two_shards(void **state)
{
    round_trip(*state, "tiny-deepseek-v2", 2, EP_DTYPE_BF16);
}

static void test_deepseek_f32_one_shard(void **state)
{
    round_trip(*state, "tiny-deepseek-v2", 1, EP_DTYPE_F32);
}

// ---- failures leave nothing behind ------------------------------------------------

static void test_refusals(void **state)
{
    fixture *f = *state;
    ep_model_cfg cfg;
    if (ep_model_cfg_load("tiny-qwen3-moe", &cfg)) fail_msg("load: %s", ep_last_error());
    char dir[512];
    snprintf(dir, sizeof dir, "%s/out", f->base);

    // Above the size limit, an unsupported dtype, zero shards, more shards
    // than tensors: errors, and no directory appears.
    assert_int_not_equal(ep_synth_write_checkpoint_ex(&cfg, dir, 2, EP_DTYPE_BF16, 1000, NULL),
                         EP_OK);
    assert_non_null(strstr(ep_last_error(), cfg.name));
    assert_int_not_equal(ep_synth_write_checkpoint(&cfg, dir, 2, EP_DTYPE_F16), EP_OK);
    assert_non_null(strstr(ep_last_error(), "F16"));
    assert_int_not_equal(ep_synth_write_checkpoint(&cfg, dir, 0, EP_DTYPE_BF16), EP_OK);
    assert_int_not_equal(ep_synth_write_checkpoint(&cfg, dir, 100000, EP_DTYPE_BF16), EP_OK);
    assert_int_equal(count_entries(f->base), 0);

    // A file where the directory should go: refused, naming it.
    FILE *fp = fopen(dir, "w");
    assert_non_null(fp);
    fputs("x", fp);
    fclose(fp);
    assert_int_not_equal(ep_synth_write_checkpoint(&cfg, dir, 1, EP_DTYPE_BF16), EP_OK);
    assert_non_null(strstr(ep_last_error(), dir));
    assert_int_equal(count_entries(f->base), 1);
    unlink(dir);

    // An existing empty directory is fine (and a trailing slash too).
    assert_int_equal(mkdir(dir, 0755), 0);
    char slash[520];
    snprintf(slash, sizeof slash, "%s/", dir);
    ep_status st = ep_synth_write_checkpoint(&cfg, slash, 3, EP_DTYPE_BF16);
    if (st) fail_msg("write into empty %s: %s", slash, ep_last_error());
    assert_int_equal(count_entries(dir), 5);
    assert_int_equal(count_entries(f->base), 1);

    // Missing parents are created; the leftover of an interrupted run (a
    // "<dir>.tmp.<pid>" whose process is gone) is cleared, a live one kept.
    char stale[600], live[600];
    snprintf(dir, sizeof dir, "%s/a/b/c", f->base);
    snprintf(stale, sizeof stale, "%s.tmp.2147483000", dir); // above any pid_max
    snprintf(live, sizeof live, "%s.tmp.%ld", dir, (long)getppid());
    char parent[600];
    snprintf(parent, sizeof parent, "%s/a", f->base);
    assert_int_equal(mkdir(parent, 0755), 0);
    snprintf(parent, sizeof parent, "%s/a/b", f->base);
    assert_int_equal(mkdir(parent, 0755), 0);
    assert_int_equal(mkdir(stale, 0755), 0);
    assert_int_equal(mkdir(live, 0755), 0);
    char junk[700];
    snprintf(junk, sizeof junk, "%s/model-00001-of-00002.safetensors", stale);
    fp = fopen(junk, "w");
    assert_non_null(fp);
    fclose(fp);
    st = ep_synth_write_checkpoint(&cfg, dir, 1, EP_DTYPE_BF16);
    if (st) fail_msg("write %s: %s", dir, ep_last_error());
    assert_int_equal(count_entries(dir), 3);
    assert_int_equal(count_entries(stale), -1);
    assert_int_equal(count_entries(live), 0);
    assert_int_equal(count_entries(parent), 2); // c and the live temp dir
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_qwen3_two_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deepseek_two_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deepseek_f32_one_shard, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
