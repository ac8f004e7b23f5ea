// FP8 block-quantized checkpoints: config.json's quantization_config (the
// published form read, written and read back; every unsupported value of
// each key refused naming the key and the value), which layout tensors are
// quantized, the loader (dequantized values equal code * scale of the
// element's block on odd shapes and non-square blocks, BF16 storage rounds
// them once; a missing, misshapen, non-finite or FP8 scale tensor, an e5m2
// or 1-D FP8 tensor, FP8 tensors without a quantization_config: refused by
// name), and make-model's FP8 writer (which tensors, scales in the same
// shard, values within the e4m3 bound of the BF16 ones, sizes, refusals).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/safetensors.h"
#include "common/weights.h"

#include <dirent.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// ---- helpers -----------------------------------------------------------------

static char base[256]; // mkdtemp'd per test

static int setup(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(base, sizeof base, "%s/ep_test_fp8_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    return mkdtemp(base) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    return system(cmd) == 0 ? 0 : -1;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_true(fread(s, 1, (size_t)n, f) == (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

// A malloc'd copy of s with the first `from` replaced by `to` (must occur).
static char *subst(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    if (!at) fail_msg("'%s' not found in the config", from);
    size_t n = strlen(s) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
    return out;
}

static void expect_msg(const char *a, const char *b, const char *c)
{
    const char *msg = ep_last_error();
    const char *need[] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (need[i] && !strstr(msg, need[i])) fail_msg("message '%s' lacks '%s'", msg, need[i]);
}

static ep_model_cfg preset(const char *name)
{
    ep_model_cfg c;
    if (ep_model_cfg_load(name, &c)) fail_msg("load %s: %s", name, ep_last_error());
    return c;
}

// dir/config.json of tiny-qwen3-moe with quant FP8 [b0, b1] (b0 0: none).
static void write_config(const char *dir, int b0, int b1)
{
    ep_model_cfg c = preset("tiny-qwen3-moe");
    c.quant = b0 ? EP_QUANT_FP8_BLOCK : EP_QUANT_NONE;
    c.quant_block[0] = b0;
    c.quant_block[1] = b1;
    mkdir(dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (ep_model_cfg_write_hf_json(&c, path)) fail_msg("write %s: %s", path, ep_last_error());
}

// ---- which tensors ---------------------------------------------------------------

static int walk_is_fp8(void *user, const char *name, int ndim, const int64_t *shape)
{
    (void)shape;
    int *n = user;
    bool want = ndim == 2 && (strstr(name, ".self_attn.") || strstr(name, "_proj.weight"));
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "lm_head.weight") ||
        strstr(name, ".mlp.gate.weight") || strstr(name, "norm"))
        want = false;
    if (ep_model_tensor_is_fp8(name, ndim) != want)
        fail_msg("%s: is_fp8 %d, expected %d", name, !want, want);
    n[0] += want;
    n[1]++;
    return 0;
}

static void test_which_tensors(void **state)
{
    (void)state;
    const char *presets[] = {"tiny-qwen3-moe", "tiny-deepseek-v2", "deepseek-v2-lite"};
    for (int i = 0; i < 3; i++) {
        ep_model_cfg c = preset(presets[i]);
        int n[2] = {0, 0};
        ep_model_for_each_tensor(&c, walk_is_fp8, n);
        assert_true(n[0] > 0 && n[0] < n[1]);
    }
    assert_true(ep_model_tensor_is_fp8("model.layers.3.mlp.shared_experts.down_proj.weight", 2));
    assert_true(ep_model_tensor_is_fp8("model.layers.1.self_attn.kv_b_proj.weight", 2));
    assert_true(ep_model_tensor_is_fp8("model.layers.0.mlp.experts.7.up_proj.weight", 2));
    assert_false(ep_model_tensor_is_fp8("model.layers.2.mlp.gate.weight", 2));
    assert_false(ep_model_tensor_is_fp8("model.layers.0.self_attn.kv_a_layernorm.weight", 1));
    assert_false(ep_model_tensor_is_fp8("lm_head.weight", 2));
    assert_false(ep_model_tensor_is_fp8("model.embed_tokens.weight", 2));
}

// ---- config.json ----------------------------------------------------------------

static void test_config_good(void **state)
{
    (void)state;
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/q", base);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_config(dir, 128, 128);
    char *text = read_text(path);
    // The published keys and values, and the modules kept in BF16.
    json_t *r = json_loads(text, 0, NULL);
    json_t *q = json_object_get(r, "quantization_config");
    assert_string_equal(json_string_value(json_object_get(q, "quant_method")), "fp8");
    assert_string_equal(json_string_value(json_object_get(q, "fmt")), "e4m3");
    assert_string_equal(json_string_value(json_object_get(q, "activation_scheme")), "dynamic");
    json_t *b = json_object_get(q, "weight_block_size");
    assert_int_equal(json_integer_value(json_array_get(b, 0)), 128);
    assert_int_equal(json_integer_value(json_array_get(b, 1)), 128);
    json_t *keep = json_object_get(q, "modules_to_not_convert");
    assert_int_equal(json_array_size(keep), 2 + 4); // embed, lm_head, 4 layers' gates
    bool head = false;
    for (size_t i = 0; i < json_array_size(keep); i++)
        head |= !strcmp(json_string_value(json_array_get(keep, i)), "lm_head");
    assert_true(head);
    json_decref(r);

    ep_model_cfg c;
    if (ep_model_cfg_load(dir, &c)) fail_msg("%s", ep_last_error());
    assert_int_equal(c.quant, EP_QUANT_FP8_BLOCK);
    assert_int_equal(c.quant_block[0], 128);
    assert_int_equal(c.quant_block[1], 128);

    // DeepSeek-V3's form (no modules_to_not_convert), HF's (no fmt, no
    // activation_scheme: e4m3 and dynamic), a non-square block, null.
    const struct {
        const char *from, *to;
        int b0, b1;
        ep_quant q;
    } ok[] = {
        {"\"modules_to_not_convert\"", "\"x_unused\"", 128, 128, EP_QUANT_FP8_BLOCK},
        {"\"fmt\": \"e4m3\",", "", 128, 128, EP_QUANT_FP8_BLOCK},
        {"\"activation_scheme\": \"dynamic\",", "", 128, 128, EP_QUANT_FP8_BLOCK},
        {"128,\n      128", "64, 32", 64, 32, EP_QUANT_FP8_BLOCK},
    };
    for (size_t i = 0; i < EP_ARRAY_LEN(ok); i++) {
        char *t = subst(text, ok[i].from, ok[i].to);
        write_text(path, t);
        free(t);
        if (ep_model_cfg_load(dir, &c)) fail_msg("case %zu: %s", i, ep_last_error());
        assert_int_equal(c.quant, ok[i].q);
        assert_int_equal(c.quant_block[0], ok[i].b0);
        assert_int_equal(c.quant_block[1], ok[i].b1);
    }
    write_config(dir, 0, 0);
    char *plain = read_text(path);
    assert_null(strstr(plain, "quantization_config"));
    char *t = subst(plain, "\"vocab_size\"", "\"quantization_config\": null, \"vocab_size\"");
    write_text(path, t);
    free(t);
    free(plain);
    if (ep_model_cfg_load(dir, &c)) fail_msg("%s", ep_last_error());
    assert_int_equal(c.quant, EP_QUANT_NONE);
    free(text);
}

// Every unsupported value: refused, the message naming the file, the key and
// the value found.
static void test_config_refused(void **state)
{
    (void)state;
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/q", base);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_config(dir, 128, 128);
    char *text = read_text(path);
    const struct {
        const char *from, *to;
        ep_status st;
        const char *key, *found;
    } bad[] = {
        {"\"fp8\"", "\"awq\"", EP_ERR_UNSUPPORTED, "'quantization_config.quant_method'", "awq"},
        {"\"fp8\"", "\"compressed-tensors\"", EP_ERR_UNSUPPORTED,
         "'quantization_config.quant_method'", "compressed-tensors"},
        {"\"quant_method\": \"fp8\",", "", EP_ERR_UNSUPPORTED, "'quantization_config.quant_method'",
         "nothing"},
        {"\"e4m3\"", "\"e5m2\"", EP_ERR_UNSUPPORTED, "'quantization_config.fmt'", "e5m2"},
        {"\"dynamic\"", "\"static\"", EP_ERR_UNSUPPORTED, "'quantization_config.activation_scheme'",
         "static"},
        {"128,\n      128", "256, 256, 1", EP_ERR_UNSUPPORTED,
         "'quantization_config.weight_block_size'", "[256,256,1]"},
        {"128,\n      128", "0, 128", EP_ERR_UNSUPPORTED, "'quantization_config.weight_block_size'",
         "[0,128]"},
        {"128,\n      128", "128, \"x\"", EP_ERR_UNSUPPORTED,
         "'quantization_config.weight_block_size'", "[128,\"x\"]"},
        {"\"weight_block_size\"", "\"block\"", EP_ERR_UNSUPPORTED,
         "'quantization_config.weight_block_size'", "no such key"},
        {"\"quantization_config\": {", "\"quantization_config\": \"fp8\", \"x\": {", EP_ERR_CONFIG,
         "'quantization_config'", "fp8"},
    };
    for (size_t i = 0; i < EP_ARRAY_LEN(bad); i++) {
        char *t = subst(text, bad[i].from, bad[i].to);
        write_text(path, t);
        free(t);
        ep_model_cfg c;
        ep_status st = ep_model_cfg_load(dir, &c);
        if (st != bad[i].st) fail_msg("case %zu: status %d: %s", i, st, ep_last_error());
        expect_msg(path, bad[i].key, bad[i].found);
    }
    free(text);
}

// ---- the loader ------------------------------------------------------------------

typedef struct {
    const char *name;
    ep_dtype dtype;
    int ndim;
    int64_t shape[2];
} spec;

// Writes dir/model.safetensors with the given tensors: FP8 codes random (no
// NaN), scales a distinct value per block, other floats random. Returns the
// buffers (data[i]) for the caller to check against.
static void **write_tensors(const char *dir, const spec *s, int n)
{
    ep_st_entry *e = calloc((size_t)n, sizeof *e);
    void **data = calloc((size_t)n, sizeof *data);
    uint64_t x = 77;
    for (int i = 0; i < n; i++) {
        int64_t numel = s[i].shape[0] * (s[i].ndim > 1 ? s[i].shape[1] : 1);
        size_t bytes = (size_t)numel * ep_dtype_size(s[i].dtype);
        uint8_t *p = data[i] = malloc(bytes + 1);
        float *f = malloc((size_t)numel * sizeof *f);
        for (int64_t k = 0; k < numel; k++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            uint8_t c = (uint8_t)(x >> 56);
            if ((c & 0x7f) == 0x7f) c ^= 1; // no NaN codes
            if (s[i].dtype == EP_DTYPE_F8_E4M3 || s[i].dtype == EP_DTYPE_F8_E5M2)
                p[k] = c;
            else
                f[k] = strstr(s[i].name, "_scale_inv") ? 0.001f * (float)(k + 1) + 0.0137f
                                                       : (float)((int)c - 128) / 64.0f;
        }
        if (s[i].dtype != EP_DTYPE_F8_E4M3 && s[i].dtype != EP_DTYPE_F8_E5M2)
            assert_int_equal(ep_dtype_from_f32(s[i].dtype, f, p, (size_t)numel), EP_OK);
        free(f);
        e[i] = (ep_st_entry){.name = s[i].name, .dtype = s[i].dtype, .ndim = s[i].ndim};
        memcpy(e[i].shape, s[i].shape, sizeof s[i].shape);
        e[i].data = p;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (ep_st_write(path, e, n, NULL)) fail_msg("%s", ep_last_error());
    free(e);
    return data;
}

static const spec loader_tensors[] = {
    {"a.weight", EP_DTYPE_F8_E4M3, 2, {130, 257}}, // partial last block row and column
    {"a.weight_scale_inv", EP_DTYPE_F32, 2, {2, 3}},
    {"b.weight", EP_DTYPE_F8_E4M3, 2, {5, 7}}, // one partial block, BF16 scale
    {"b.weight_scale_inv", EP_DTYPE_BF16, 2, {1, 1}},
    {"c.weight", EP_DTYPE_F8_E4M3, 2, {5, 7}}, // no scales
    {"d.weight", EP_DTYPE_F8_E4M3, 2, {130, 257}},
    {"d.weight_scale_inv", EP_DTYPE_F32, 2, {1, 3}}, // wrong shape
    {"e.weight", EP_DTYPE_F8_E5M2, 2, {5, 7}},
    {"e.weight_scale_inv", EP_DTYPE_F32, 2, {1, 1}},
    {"f.weight", EP_DTYPE_F8_E4M3, 2, {5, 7}},
    {"f.weight_scale_inv", EP_DTYPE_F32, 2, {1, 1}}, // made Inf below
    {"g.weight", EP_DTYPE_F8_E4M3, 1, {10, 0}},
    {"g.weight_scale_inv", EP_DTYPE_F32, 2, {1, 1}},
    {"h.weight", EP_DTYPE_BF16, 2, {3, 4}},
    {"i.weight", EP_DTYPE_F8_E4M3, 2, {5, 7}},
    {"i.weight_scale_inv", EP_DTYPE_F8_E4M3, 2, {1, 1}}, // scales in FP8
};

// The weight `name` (index wi in loader_tensors, scales at si) read through w
// equals code * scale of its block, bit for bit; as BF16 storage, that value
// rounded once.
static void expect_dequant(ep_weights *w, void **data, int wi, int si, int b0, int b1)
{
    const spec *t = &loader_tensors[wi];
    const int64_t R = t->shape[0], C = t->shape[1], nbc = ep_fp8_blocks(C, b1);
    const int64_t ns = ep_fp8_blocks(R, b0) * nbc;
    float *sc = malloc((size_t)ns * sizeof *sc), *got = malloc((size_t)(R * C) * sizeof *got);
    assert_int_equal(ep_dtype_to_f32(loader_tensors[si].dtype, data[si], sc, (size_t)ns), EP_OK);
    ep_weights_stats before, after;
    ep_weights_get_stats(w, &before);
    if (ep_weights_read_f32(w, t->name, 2, t->shape, got)) fail_msg("%s", ep_last_error());
    ep_weights_get_stats(w, &after);
    // Bytes as stored: the codes and their scales.
    assert_true(after.bytes - before.bytes ==
                (uint64_t)(R * C) + (uint64_t)ns * ep_dtype_size(loader_tensors[si].dtype));
    const uint8_t *codes = data[wi];
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) {
            float want = ep_fp8_e4m3_to_f32(codes[r * C + c]) * sc[(r / b0) * nbc + c / b1];
            if (want != got[r * C + c])
                fail_msg("%s (%lld, %lld): %a, expected %a", t->name, (long long)r, (long long)c,
                         (double)got[r * C + c], (double)want);
        }
    ep_mat m;
    if (ep_weights_read_mat(w, t->name, R, C, EP_DTYPE_AUTO, &m)) fail_msg("%s", ep_last_error());
    assert_int_equal(m.dtype, EP_DTYPE_BF16); // auto: FP8 is stored as BF16
    assert_non_null(m.owned);
    float *row = malloc((size_t)C * sizeof *row);
    for (int64_t r = 0; r < R; r++) {
        ep_mat_row_f32(&m, r, row);
        for (int64_t c = 0; c < C; c++)
            assert_true(row[c] == ep_bf16_round(got[r * C + c]));
    }
    ep_mat_free(&m);
    if (ep_weights_read_mat(w, t->name, R, C, EP_DTYPE_F32, &m)) fail_msg("%s", ep_last_error());
    assert_memory_equal(m.data, got, (size_t)(R * C) * sizeof *got);
    ep_mat_free(&m);
    free(row);
    free(sc);
    free(got);
}

static ep_status read_named(ep_weights *w, const char *name)
{
    for (size_t i = 0; i < EP_ARRAY_LEN(loader_tensors); i++)
        if (!strcmp(loader_tensors[i].name, name)) {
            const spec *t = &loader_tensors[i];
            float *buf = malloc((size_t)(t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1)) * 4);
            ep_status st = ep_weights_read_f32(w, name, t->ndim, t->shape, buf);
            free(buf);
            return st;
        }
    fail_msg("no tensor %s", name);
    return EP_OK;
}

static void test_loader(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/ck", base);
    write_config(dir, 128, 128);
    const int n = (int)EP_ARRAY_LEN(loader_tensors);
    void **data = write_tensors(dir, loader_tensors, n);
    float inf = INFINITY; // f's scale: rewrite the file with it
    memcpy(data[10], &inf, 4);
    ep_st_entry *e = calloc((size_t)n, sizeof *e);
    for (int i = 0; i < n; i++) {
        e[i] = (ep_st_entry){.name = loader_tensors[i].name,
                             .dtype = loader_tensors[i].dtype,
                             .ndim = loader_tensors[i].ndim,
                             .data = data[i]};
        memcpy(e[i].shape, loader_tensors[i].shape, sizeof loader_tensors[i].shape);
    }
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    if (ep_st_write(path, e, n, NULL)) fail_msg("%s", ep_last_error());
    free(e);

    ep_model_cfg cfg;
    if (ep_model_cfg_load(dir, &cfg)) fail_msg("%s", ep_last_error());
    ep_weights *w;
    if (ep_weights_open(&cfg, &w)) fail_msg("%s", ep_last_error());
    expect_dequant(w, data, 0, 1, 128, 128);
    expect_dequant(w, data, 2, 3, 128, 128);
    assert_int_equal(read_named(w, "h.weight"), EP_OK);

    assert_int_equal(read_named(w, "c.weight"), EP_ERR_FORMAT);
    expect_msg("'c.weight_scale_inv'", "'c.weight'", "not found");
    assert_int_equal(read_named(w, "d.weight"), EP_ERR_FORMAT);
    expect_msg("d.weight_scale_inv", "expected shape [2, 3]", "found [1, 3]");
    assert_int_equal(read_named(w, "e.weight"), EP_ERR_UNSUPPORTED);
    expect_msg("'e.weight'", "F8_E5M2", "expected F8_E4M3");
    assert_int_equal(read_named(w, "f.weight"), EP_ERR_FORMAT);
    expect_msg("'f.weight_scale_inv'", "inf", "finite");
    assert_int_equal(read_named(w, "g.weight"), EP_ERR_FORMAT);
    expect_msg("'g.weight'", "1 dimensions", "2-D");
    assert_int_equal(read_named(w, "i.weight"), EP_ERR_FORMAT);
    expect_msg("'i.weight_scale_inv'", "F8_E4M3", "expected F32");
    ep_weights_free(w);

    // The same files read with [64, 32] blocks: a's scales should then be a
    // [3, 9] grid, its [2, 3] one is refused, naming the block size
    // (test_loader_block_shape reads a [3, 9] grid).
    write_config(dir, 64, 32);
    if (ep_model_cfg_load(dir, &cfg)) fail_msg("%s", ep_last_error());
    if (ep_weights_open(&cfg, &w)) fail_msg("%s", ep_last_error());
    assert_int_equal(read_named(w, "a.weight"), EP_ERR_FORMAT);
    expect_msg("a.weight_scale_inv", "expected shape [3, 9]", "weight_block_size [64, 32]");
    ep_weights_free(w);

    // No quantization_config: an FP8 tensor is refused, naming it and the
    // config; BF16 tensors still read.
    write_config(dir, 0, 0);
    if (ep_model_cfg_load(dir, &cfg)) fail_msg("%s", ep_last_error());
    if (ep_weights_open(&cfg, &w)) fail_msg("%s", ep_last_error());
    assert_int_equal(read_named(w, "a.weight"), EP_ERR_FORMAT);
    expect_msg("'a.weight' is F8_E4M3", "config.json has no quantization_config", "fp8");
    ep_mat m;
    assert_int_equal(ep_weights_read_mat(w, "a.weight", 130, 257, EP_DTYPE_AUTO, &m),
                     EP_ERR_FORMAT);
    assert_null(m.data);
    assert_int_equal(read_named(w, "h.weight"), EP_OK);
    ep_weights_free(w);
    for (int i = 0; i < n; i++)
        free(data[i]);
    free(data);
}

// A non-square block grid: a written with [64, 32] blocks reads with them.
static void test_loader_block_shape(void **state)
{
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/ck2", base);
    write_config(dir, 64, 32);
    static const spec t[] = {
        {"a.weight", EP_DTYPE_F8_E4M3, 2, {130, 257}},
        {"a.weight_scale_inv", EP_DTYPE_F32, 2, {3, 9}},
    };
    // expect_dequant reads loader_tensors: check by hand here.
    void **data = write_tensors(dir, t, 2);
    ep_model_cfg cfg;
    if (ep_model_cfg_load(dir, &cfg)) fail_msg("%s", ep_last_error());
    ep_weights *w;
    if (ep_weights_open(&cfg, &w)) fail_msg("%s", ep_last_error());
    float *got = malloc(130 * 257 * sizeof *got);
    if (ep_weights_read_f32(w, "a.weight", 2, t[0].shape, got)) fail_msg("%s", ep_last_error());
    const uint8_t *codes = data[0];
    const float *sc = data[1];
    for (int r = 0; r < 130; r++)
        for (int c = 0; c < 257; c++)
            assert_true(got[r * 257 + c] ==
                        ep_fp8_e4m3_to_f32(codes[r * 257 + c]) * sc[(r / 64) * 9 + c / 32]);
    free(got);
    ep_weights_free(w);
    free(data[0]);
    free(data[1]);
    free(data);
}

// ---- make-model's FP8 checkpoints -------------------------------------------------

typedef struct {
    ep_weights *w;
    const ep_model_cfg *cfg;
    json_t *wmap; // the index's weight_map
    int n_fp8, n_plain;
    double worst; // largest |decoded - x| / |x| over |x| >= 64 * scale
} synth_check;

static int check_tensor(void *user, const char *name, int ndim, const int64_t *shape)
{
    synth_check *sc = user;
    ep_dtype stored;
    if (ep_weights_stored_dtype(sc->w, name, &stored)) fail_msg("%s", ep_last_error());
    const bool fp8 = ep_model_tensor_is_fp8(name, ndim);
    assert_int_equal(stored, fp8 ? EP_DTYPE_F8_E4M3 : EP_DTYPE_BF16);
    char sname[320];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    json_t *shard = json_object_get(sc->wmap, name), *sshard = json_object_get(sc->wmap, sname);
    assert_non_null(shard);
    if (!fp8) {
        assert_null(sshard);
        sc->n_plain++;
        return 0;
    }
    assert_non_null(sshard); // listed, and in the weight's shard
    assert_string_equal(json_string_value(shard), json_string_value(sshard));
    sc->n_fp8++;
    // Within the e4m3 bound of the BF16 values, each block's scale its amax / 448.
    const int64_t R = shape[0], C = shape[1], nbc = ep_fp8_blocks(C, 128);
    const int64_t nb = ep_fp8_blocks(R, 128) * nbc;
    float *x = malloc((size_t)(R * C) * sizeof *x), *d = malloc((size_t)(R * C) * sizeof *d);
    double *amax = calloc((size_t)nb, sizeof *amax);
    ep_synth_tensor(sc->cfg, name, 2, shape, x);
    if (ep_weights_read_f32(sc->w, name, 2, shape, d)) fail_msg("%s", ep_last_error());
    for (int64_t i = 0; i < R * C; i++) {
        int64_t b = (i / C) / 128 * nbc + (i % C) / 128;
        amax[b] = fmax(amax[b], fabs(x[i]));
    }
    for (int64_t i = 0; i < R * C; i++) {
        double s = amax[(i / C) / 128 * nbc + (i % C) / 128] / 448.0;
        double err = fabs((double)d[i] - x[i]);
        if (err > (0x1p-4 + 0x1p-20) * fabs(x[i]) + 0x1p-10 * s * (1 + 0x1p-20))
            fail_msg("%s[%lld]: %g decoded as %g (block scale %g)", name, (long long)i,
                     (double)x[i], (double)d[i], s);
        if (fabs(x[i]) >= 64 * s && x[i] != 0) sc->worst = fmax(sc->worst, err / fabs(x[i]));
    }
    free(x);
    free(d);
    free(amax);
    return 0;
}

static void test_synth_checkpoint(void **state)
{
    (void)state;
    const char *presets[] = {"tiny-deepseek-v2", "tiny-qwen3-moe"};
    for (int p = 0; p < 2; p++) {
        ep_model_cfg cfg = preset(presets[p]);
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", base, presets[p]);
        // Inconsistent requests: refused before anything is written.
        assert_int_equal(ep_synth_write_checkpoint(&cfg, dir, 3, EP_DTYPE_F8_E4M3), EP_ERR_ARG);
        expect_msg("F8_E4M3", cfg.name, "quantization none");
        cfg.quant = EP_QUANT_FP8_BLOCK;
        cfg.quant_block[0] = cfg.quant_block[1] = 128;
        assert_int_equal(ep_synth_write_checkpoint(&cfg, dir, 3, EP_DTYPE_BF16), EP_ERR_ARG);
        expect_msg("BF16", "quantization fp8", NULL);
        struct stat sb;
        assert_int_not_equal(stat(dir, &sb), 0);

        ep_synth_ckpt_info size, info;
        ep_synth_checkpoint_size(&cfg, EP_DTYPE_F8_E4M3, &size);
        ep_status st = ep_synth_write_checkpoint_ex(&cfg, dir, 3, EP_DTYPE_F8_E4M3, 0, &info);
        if (st) fail_msg("%s", ep_last_error());
        assert_true(info.n_tensors == size.n_tensors && info.n_scales == size.n_scales);
        assert_true(info.total_bytes == size.total_bytes && info.n_shards == 3);

        ep_model_cfg back;
        if (ep_model_cfg_load(dir, &back)) fail_msg("%s", ep_last_error());
        assert_int_equal(back.quant, EP_QUANT_FP8_BLOCK);
        assert_true(back.quant_block[0] == 128 && back.quant_block[1] == 128);
        char path[600];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        json_t *index = json_load_file(path, 0, NULL);
        assert_non_null(index);
        assert_true((uint64_t)json_integer_value(json_object_get(
                        json_object_get(index, "metadata"), "total_size")) == info.total_bytes);
        synth_check sc = {.cfg = &cfg, .wmap = json_object_get(index, "weight_map")};
        assert_int_equal(json_object_size(sc.wmap), info.n_tensors + info.n_scales);
        if (ep_weights_open(&back, &sc.w)) fail_msg("%s", ep_last_error());
        ep_model_for_each_tensor(&back, check_tensor, &sc);
        assert_int_equal(sc.n_fp8, info.n_scales);
        assert_int_equal(sc.n_fp8 + sc.n_plain, info.n_tensors);
        // The bound is reached: e4m3 keeps 3 mantissa bits (half an ulp 2^-4).
        assert_true(sc.worst > 0.05 && sc.worst <= 0x1p-4 + 0x1p-20);
        // auto storage of an FP8 checkpoint: BF16 for experts and the rest.
        ep_dtype e = EP_DTYPE_AUTO, dn = EP_DTYPE_AUTO;
        assert_int_equal(ep_weights_expert_dtype(sc.w, &e), EP_OK);
        assert_int_equal(ep_weights_dense_dtype(sc.w, &dn), EP_OK);
        assert_int_equal(e, EP_DTYPE_BF16);
        assert_int_equal(dn, EP_DTYPE_BF16);
        ep_weights_free(sc.w);
        json_decref(index);
        // FP8 codes are 1 byte: the checkpoint is about half the BF16 one.
        ep_synth_checkpoint_size(&cfg, EP_DTYPE_BF16, &size);
        assert_true(info.total_bytes < 0.6 * size.total_bytes);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_which_tensors),
        cmocka_unit_test_setup_teardown(test_config_good, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loader_block_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_synth_checkpoint, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
