// safetensors: writer/reader round trip of every float dtype, sharded
// checkpoints with an index (lazy shard opening), and every malformed-input
// case the reader must reject with a message naming file, tensor and values.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/safetensors.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static int setup_tmp(void **state)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ep_test_safetensors_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *tpath(const char *name)
{
    static char paths[8][512];
    static int slot;
    char *p = paths[slot++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static void expect_msg(const char *first, ...)
{
    const char *msg = ep_last_error();
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *)) {
        if (!strstr(msg, s)) {
            fprintf(stderr, "message: %s\nmissing: %s\n", msg, s);
            fail();
        }
    }
    va_end(ap);
}

// Writes a raw safetensors file: 8-byte LE length `hlen` (may lie), the header
// text, then `data_len` bytes of 0x11.
static const char *write_raw(const char *name, uint64_t hlen, const char *header, size_t data_len)
{
    const char *p = tpath(name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    unsigned char lb[8];
    for (int i = 0; i < 8; i++)
        lb[i] = (unsigned char)(hlen >> (8 * i));
    fwrite(lb, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data_len; i++)
        fputc(0x11, f);
    fclose(f);
    return p;
}

static const char *write_hdr(const char *name, const char *header, size_t data_len)
{
    return write_raw(name, strlen(header), header, data_len);
}

static void open_fails(const char *path, ep_status st, const char *n1, const char *n2)
{
    ep_st_file *f = (ep_st_file *)0x1;
    ep_status got = ep_st_open(path, &f);
    if (got != st) fprintf(stderr, "status %d: %s\n", got, ep_last_error());
    assert_int_equal(got, st);
    assert_null(f);
    expect_msg(path, n1, n2, NULL);
}

// ---- round trip --------------------------------------------------------------

static float vals[5 * 7 * 2];

static void fill_vals(void)
{
    uint32_t s = 12345;
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) {
        s = s * 1664525u + 1013904223u;
        vals[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 20.0f;
    }
}

static void test_round_trip(void **state)
{
    fill_vals();
    const ep_dtype types[] = {EP_DTYPE_F32, EP_DTYPE_F16, EP_DTYPE_BF16, EP_DTYPE_F8_E4M3,
                              EP_DTYPE_F64};
    const char *names[] = {"w.f32", "w.f16", "w.bf16", "w.e4m3", "w.f64"};
    const int64_t shapes[][3] = {{5, 7, 0}, {11, 0, 0}, {13, 1, 3}, {7, 5, 0}, {5, 7, 0}};
    const int ndims[] = {2, 1, 3, 2, 2};
    unsigned char bufs[6][5 * 7 * 8];
    ep_st_entry e[8];
    int n = 0;
    for (int i = 0; i < 5; i++) {
        size_t numel = 1;
        for (int d = 0; d < ndims[i]; d++)
            numel *= (size_t)shapes[i][d];
        assert_int_equal(ep_dtype_from_f32(types[i], vals, bufs[i], numel), EP_OK);
        e[n] =
            (ep_st_entry){.name = names[i], .dtype = types[i], .ndim = ndims[i], .data = bufs[i]};
        memcpy(e[n].shape, shapes[i], sizeof shapes[i]);
        n++;
    }
    const uint8_t e5[3] = {0x3c, 0xc0, 0x01}; // 1, -2, 2^-16
    e[n++] = (ep_st_entry){
        .name = "w.e5m2", .dtype = EP_DTYPE_F8_E5M2, .ndim = 1, .shape = {3}, .data = e5};
    const int32_t ids[3] = {-1, 7, 1 << 30};
    e[n++] =
        (ep_st_entry){.name = "ids", .dtype = EP_DTYPE_I32, .ndim = 1, .shape = {3}, .data = ids};
    e[n++] = (ep_st_entry){
        .name = "empty", .dtype = EP_DTYPE_BF16, .ndim = 2, .shape = {0, 5}, .data = NULL};
    const char *meta[] = {"format", "pt", "producer", "epserve test", NULL};

    char dir[512];
    snprintf(dir, sizeof dir, "%s/single", tmpdir);
    mkdir(dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(ep_st_write(path, e, n, meta), EP_OK);

    // The header is space-padded so that data starts 8-aligned.
    FILE *fp = fopen(path, "rb");
    unsigned char lb[8];
    assert_int_equal(fread(lb, 1, 8, fp), 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | lb[i];
    assert_int_equal(hlen % 8, 0);
    char *hdr = calloc(1, hlen + 1);
    assert_int_equal(fread(hdr, 1, hlen, fp), hlen);
    fclose(fp);
    assert_int_equal(hdr[0], '{');
    assert_non_null(strstr(hdr, "\"dtype\":\"BF16\""));
    free(hdr);

    ep_st_file *f;
    assert_int_equal(ep_st_open(path, &f), EP_OK);
    assert_int_equal(ep_st_count(f), n);
    assert_string_equal(ep_st_metadata(f, "format"), "pt");
    assert_string_equal(ep_st_metadata(f, "producer"), "epserve test");
    assert_null(ep_st_metadata(f, "nope"));
    assert_null(ep_st_find(f, "w.f33"));
    for (int i = 0; i < n; i++) {
        const ep_st_tensor *t = ep_st_find(f, e[i].name);
        assert_non_null(t);
        assert_string_equal(t->name, e[i].name);
        assert_int_equal(t->dtype, e[i].dtype);
        assert_int_equal(t->ndim, e[i].ndim);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            assert_int_equal(t->shape[d], e[i].shape[d]);
            numel *= (size_t)t->shape[d];
        }
        assert_int_equal(t->nbytes, numel * ep_dtype_size(t->dtype));
        if (t->nbytes) assert_memory_equal(t->data, e[i].data, t->nbytes);
    }
    // ep_st_get walks file order (by offset), which is the order written.
    for (int i = 0; i < n; i++)
        assert_string_equal(ep_st_get(f, i)->name, e[i].name);
    ep_st_close(f);
    ep_st_close(NULL);

    // Reading through a checkpoint directory converts to fp32.
    ep_ckpt *c;
    assert_int_equal(ep_ckpt_open(dir, &c), EP_OK);
    float out[64];
    for (int i = 0; i < 5; i++) {
        size_t numel = 1;
        for (int d = 0; d < ndims[i]; d++)
            numel *= (size_t)shapes[i][d];
        assert_int_equal(ep_ckpt_read_f32(c, names[i], ndims[i], shapes[i], out), EP_OK);
        for (size_t k = 0; k < numel; k++) {
            float want = vals[k];
            if (types[i] == EP_DTYPE_F16) want = ep_f16_to_f32(ep_f32_to_f16(vals[k]));
            if (types[i] == EP_DTYPE_BF16) want = ep_bf16_round(vals[k]);
            if (types[i] == EP_DTYPE_F8_E4M3)
                want = ep_fp8_e4m3_to_f32(ep_f32_to_fp8_e4m3(vals[k]));
            assert_true(out[k] == want);
            if (types[i] != EP_DTYPE_F32 && types[i] != EP_DTYPE_F64)
                // within half an ulp: 2^-4 relative for e4m3 (the coarsest), plus
                // half its smallest subnormal step for values near zero
                assert_true(fabsf(out[k] - vals[k]) <= 0.0625f * fabsf(vals[k]) + 0x1p-10f);
        }
    }
    const int64_t s3[1] = {3};
    assert_int_equal(ep_ckpt_read_f32(c, "w.e5m2", 1, s3, out), EP_OK);
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0x1p-16f);

    // Wrong shape and wrong dtype name the tensor, the file, expected and found.
    const int64_t bad_shape[2] = {7, 5};
    assert_int_equal(ep_ckpt_read_f32(c, "w.f32", 2, bad_shape, out), EP_ERR_FORMAT);
    expect_msg("tensor w.f32 in ", path, ": expected shape [7, 5], found [5, 7]", NULL);
    assert_int_equal(ep_ckpt_read_f32(c, "w.f16", 2, bad_shape, out), EP_ERR_FORMAT);
    expect_msg("expected shape [7, 5], found [11]", NULL);
    assert_int_equal(ep_ckpt_read_f32(c, "ids", 1, s3, out), EP_ERR_FORMAT);
    expect_msg("tensor ids", path, "I32", "float", NULL);
    const ep_st_tensor *t;
    assert_int_equal(ep_ckpt_find(c, "missing.weight", &t), EP_ERR_FORMAT);
    expect_msg("missing.weight", path, NULL);
    ep_ckpt_free(c);
    ep_ckpt_free(NULL);
}

// ---- sharded checkpoints -----------------------------------------------------------

static void write_shard(const char *dir, const char *file, const char *const *names, int n,
                        float base)
{
    float data[4][6];
    ep_st_entry e[4];
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 6; k++)
            data[i][k] = base + (float)(10 * i + k);
        e[i] = (ep_st_entry){
            .name = names[i], .dtype = EP_DTYPE_F32, .ndim = 2, .shape = {2, 3}, .data = data[i]};
    }
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    assert_int_equal(ep_st_write(p, e, n, NULL), EP_OK);
}

static void test_sharded(void **state)
{
    char dir[512], index[600];
    snprintf(dir, sizeof dir, "%s/sharded", tmpdir);
    mkdir(dir, 0755);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    const char *a[] = {"a.0", "a.1"}, *b[] = {"b.0", "b.1", "b.2"};
    write_shard(dir, "model-00001-of-00002.safetensors", a, 2, 100.0f);
    write_shard(dir, "model-00002-of-00002.safetensors", b, 3, 200.0f);
    const char *names[] = {"a.0", "a.1", "b.0", "b.1", "b.2", "ghost"};
    const char *files[] = {"model-00001-of-00002.safetensors", "model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors", "model-00002-of-00002.safetensors",
                           "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"};
    assert_int_equal(ep_st_write_index(index, names, files, 6, 5 * 24), EP_OK);

    ep_ckpt *c;
    assert_int_equal(ep_ckpt_open(dir, &c), EP_OK);
    float out[6];
    const int64_t shape[2] = {2, 3};
    assert_int_equal(ep_ckpt_read_f32(c, "b.2", 2, shape, out), EP_OK);
    assert_true(out[0] == 220.0f && out[5] == 225.0f);
    assert_int_equal(ep_ckpt_read_f32(c, "a.1", 2, shape, out), EP_OK);
    assert_true(out[0] == 110.0f && out[4] == 114.0f);

    // Listed in the index but absent from the shard.
    const ep_st_tensor *t;
    assert_int_equal(ep_ckpt_find(c, "ghost", &t), EP_ERR_FORMAT);
    expect_msg("'ghost'", index, "model-00001-of-00002.safetensors", NULL);
    // Not in the index at all.
    assert_int_equal(ep_ckpt_find(c, "c.0", &t), EP_ERR_FORMAT);
    expect_msg("'c.0'", index, NULL);
    ep_ckpt_free(c);

    // Shards open lazily: with shard 2 gone, shard 1's tensors still load and
    // the first use of a shard-2 tensor reports the shard, tensor and index.
    char s2[600];
    snprintf(s2, sizeof s2, "%s/model-00002-of-00002.safetensors", dir);
    assert_int_equal(unlink(s2), 0);
    assert_int_equal(ep_ckpt_open(dir, &c), EP_OK);
    assert_int_equal(ep_ckpt_find(c, "a.0", &t), EP_OK);
    assert_true(((const float *)t->data)[2] == 102.0f);
    assert_int_equal(ep_ckpt_find(c, "b.1", &t), EP_ERR_IO);
    expect_msg("model-00002-of-00002.safetensors", "'b.1'", index, "No such file", NULL);
    ep_ckpt_free(c);

    // Index pointing outside the directory, and malformed indexes.
    const char *evil[] = {"../model.safetensors"};
    assert_int_equal(ep_st_write_index(index, names, evil, 1, 0), EP_ERR_ARG);
    FILE *f = fopen(index, "w");
    fputs("{\"metadata\": {}, \"weight_map\": {\"a.0\": \"../../etc/passwd\"}}", f);
    fclose(f);
    assert_int_equal(ep_ckpt_open(dir, &c), EP_ERR_FORMAT);
    expect_msg(index, "'a.0'", "../../etc/passwd", NULL);
    f = fopen(index, "w");
    fputs("{\"metadata\": {}, \"weight_map\": {\"a.0\": 5}}", f);
    fclose(f);
    assert_int_equal(ep_ckpt_open(dir, &c), EP_ERR_FORMAT);
    expect_msg(index, "'a.0'", "an integer", NULL);
    f = fopen(index, "w");
    fputs("{\"metadata\": {}}", f);
    fclose(f);
    assert_int_equal(ep_ckpt_open(dir, &c), EP_ERR_FORMAT);
    expect_msg(index, "weight_map", NULL);
    f = fopen(index, "w");
    fputs("{\"weight_map\": ", f);
    fclose(f);
    assert_int_equal(ep_ckpt_open(dir, &c), EP_ERR_FORMAT);
    expect_msg(index, "not valid JSON", NULL);

    // Neither an index nor model.safetensors.
    char empty[512];
    snprintf(empty, sizeof empty, "%s/empty-ckpt", tmpdir);
    mkdir(empty, 0755);
    assert_int_equal(ep_ckpt_open(empty, &c), EP_ERR_IO);
    expect_msg("model.safetensors.index.json", "/empty-ckpt/model.safetensors", NULL);
}

// ---- malformed files ---------------------------------------------------------------

static void test_bad_sizes(void **state)
{
    FILE *f = fopen(tpath("zero.st"), "wb");
    fclose(f);
    open_fails(tpath("zero.st"), EP_ERR_FORMAT, "is 0 bytes", "at least 8");
    f = fopen(tpath("three.st"), "wb");
    fputs("abc", f);
    fclose(f);
    open_fails(tpath("three.st"), EP_ERR_FORMAT, "3 bytes", NULL);
    open_fails(write_raw("hlen0.st", 0, "", 16), EP_ERR_FORMAT, "header length is 0", NULL);
    open_fails(write_raw("past.st", 1000, "{}", 10), EP_ERR_FORMAT, "header length 1000",
               "past the end");
    open_fails(write_raw("huge.st", 200ull * 1024 * 1024, "{}", 0), EP_ERR_FORMAT,
               "header length 209715200", "exceeds");
    open_fails(write_raw("max.st", UINT64_MAX, "{}", 0), EP_ERR_FORMAT, "exceeds", NULL);
    open_fails(tpath("no-such-file.st"), EP_ERR_IO, "No such file", NULL);

    // A valid file cut short: the last tensor's bytes are gone.
    float d[7] = {0};
    ep_st_entry e[2] = {
        {.name = "x", .dtype = EP_DTYPE_F32, .ndim = 1, .shape = {7}, .data = d},
        {.name = "y", .dtype = EP_DTYPE_F32, .ndim = 2, .shape = {1, 5}, .data = d},
    };
    const char *p = tpath("trunc.st");
    assert_int_equal(ep_st_write(p, e, 2, NULL), EP_OK);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(truncate(p, sb.st_size - 3), 0);
    open_fails(p, EP_ERR_FORMAT, "tensor 'y'", "out of range");
    // Cut inside the header.
    assert_int_equal(truncate(p, 20), 0);
    open_fails(p, EP_ERR_FORMAT, "past the end", NULL);
}

static void test_bad_headers(void **state)
{
    open_fails(write_hdr("notjson.st", "{not json}", 0), EP_ERR_FORMAT, "not valid JSON", NULL);
    open_fails(write_hdr("array.st", "[1, 2]", 0), EP_ERR_FORMAT, "expected a JSON object",
               "an array");
    open_fails(write_hdr("dup.st",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                         8),
               EP_ERR_FORMAT, "duplicate", "a");
    open_fails(write_hdr("overlap.st",
                         "{\"first\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"second\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                         12),
               EP_ERR_FORMAT, "'second' data_offsets [4, 12] overlap", "'first' [0, 8]");
    open_fails(write_hdr("range.st",
                         "{\"w\":{\"dtype\":\"BF16\",\"shape\":[5,7],\"data_offsets\":[0,70]}}",
                         69),
               EP_ERR_FORMAT, "tensor 'w'", "[0, 70] out of range: the data section holds 69");
    open_fails(
        write_hdr("size.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8),
        EP_ERR_FORMAT, "tensor 'w'", "shape [3] needs 12 bytes");
    open_fails(write_hdr("size2.st",
                         "{\"w\":{\"dtype\":\"F16\",\"shape\":[13,11],\"data_offsets\":[0,143]}}",
                         143),
               EP_ERR_FORMAT, "needs 286 bytes", "span 143 bytes");
    open_fails(write_hdr("dtype.st",
                         "{\"w\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
               EP_ERR_FORMAT, "tensor 'w'", "unknown dtype 'F17'");
    open_fails(
        write_hdr("dtype2.st", "{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
        EP_ERR_FORMAT, "'dtype'", "an integer");
    open_fails(write_hdr("neg.st",
                         "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", 4),
               EP_ERR_FORMAT, "tensor 'w'", "shape[1]");
    open_fails(write_hdr("dims.st",
                         "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                         "\"data_offsets\":[0,1]}}",
                         1),
               EP_ERR_FORMAT, "9 dimensions", "at most 8");
    open_fails(
        write_hdr("order.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}}", 4),
        EP_ERR_FORMAT, "[4, 2]", "begin <= end");
    open_fails(
        write_hdr("offs.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1),
        EP_ERR_FORMAT, "'data_offsets'", NULL);
    open_fails(write_hdr("noshape.st", "{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1),
               EP_ERR_FORMAT, "'shape'", "nothing");
    open_fails(write_hdr("entry.st", "{\"w\":[1,2]}", 0), EP_ERR_FORMAT, "tensor 'w'", "an array");
    open_fails(write_hdr("overflow.st",
                         "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                         "\"data_offsets\":[0,8]}}",
                         8),
               EP_ERR_FORMAT, "more than 2^64", NULL);
    open_fails(write_hdr("meta.st", "{\"__metadata__\":{\"format\":5}}", 0), EP_ERR_FORMAT,
               "__metadata__ key 'format'", "an integer");

    // Accepted: empty object, zero-size tensors sharing an offset, trailing spaces.
    ep_st_file *f;
    assert_int_equal(ep_st_open(write_hdr("empty.st", "{}      ", 0), &f), EP_OK);
    assert_int_equal(ep_st_count(f), 0);
    ep_st_close(f);
    assert_int_equal(
        ep_st_open(write_hdr("zeros.st",
                             "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                             "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                             4),
                   &f),
        EP_OK);
    assert_int_equal(ep_st_count(f), 2);
    assert_int_equal(ep_st_find(f, "b")->nbytes, 4);
    ep_st_close(f);
}

static void test_writer_errors(void **state)
{
    float d[2] = {1, 2};
    ep_st_entry e[2] = {
        {.name = "same", .dtype = EP_DTYPE_F32, .ndim = 1, .shape = {2}, .data = d},
        {.name = "same", .dtype = EP_DTYPE_F32, .ndim = 1, .shape = {1}, .data = d},
    };
    const char *p = tpath("dupw.st");
    assert_int_equal(ep_st_write(p, e, 2, NULL), EP_ERR_ARG);
    expect_msg(p, "'same'", "twice", NULL);
    assert_int_equal(access(p, F_OK), -1); // nothing written
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    assert_int_equal(access(tmp, F_OK), -1);

    e[1].name = "other";
    e[1].shape[0] = -1;
    assert_int_equal(ep_st_write(p, e, 2, NULL), EP_ERR_ARG);
    expect_msg("'other'", "negative", NULL);

    char nodir[512];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/x.safetensors", tmpdir);
    e[1].shape[0] = 1;
    assert_int_equal(ep_st_write(nodir, e, 2, NULL), EP_ERR_IO);
    expect_msg(nodir, NULL);

    // A rewrite replaces the old file whole (atomic rename).
    assert_int_equal(ep_st_write(p, e, 2, NULL), EP_OK);
    assert_int_equal(ep_st_write(p, e, 1, NULL), EP_OK);
    ep_st_file *f;
    assert_int_equal(ep_st_open(p, &f), EP_OK);
    assert_int_equal(ep_st_count(f), 1);
    ep_st_close(f);
    assert_int_equal(access(tmp, F_OK), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_bad_sizes),     cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_writer_errors),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
