// safetensors: the reader (mmap, header parsed with jansson, every entry
// bounds-checked before any byte of data is touched), checkpoint directories
// (model.safetensors or a sharded index, shards opened lazily) and the atomic
// writer. Converting data to fp32 is dtype.c's job; this file only locates it.
#include "common/safetensors.h"

#include "common/json_util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct ep_st_file {
    char *path;
    void *map;       // whole file, read-only; NULL for an empty mapping
    size_t size;     // file size in bytes
    int n;           // tensors
    ep_st_tensor *t; // [n], in data-offset order
    int *by_name;    // [n] indices into t, sorted by name (for bsearch)
    int n_meta;
    char **meta_key; // [n_meta]
    char **meta_val; // [n_meta]
};

// ---- reader --------------------------------------------------------------

typedef struct {
    uint64_t begin, end;
    int idx;
} st_span;

static int span_cmp(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

typedef struct {
    const char *name;
    int idx;
} st_name_idx;

static int name_idx_cmp(const void *a, const void *b)
{
    return strcmp(((const st_name_idx *)a)->name, ((const st_name_idx *)b)->name);
}

// Formats a shape as "[a, b, c]" into buf.
static const char *fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

// Reads a non-negative JSON integer; false when `v` is anything else.
static bool json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static ep_status parse_metadata(ep_st_file *f, json_t *meta)
{
    if (!json_is_object(meta))
        return ep_errorf(EP_ERR_FORMAT, "%s: __metadata__: expected an object of strings, found %s",
                         f->path, ep_json_type_name(meta));
    size_t n = json_object_size(meta);
    f->meta_key = ep_xcalloc(n, sizeof(char *));
    f->meta_val = ep_xcalloc(n, sizeof(char *));
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v)
    {
        if (!json_is_string(v))
            return ep_errorf(EP_ERR_FORMAT,
                             "%s: __metadata__ key '%s': expected a string, found %s", f->path, k,
                             ep_json_type_name(v));
        f->meta_key[f->n_meta] = ep_xstrdup(k);
        f->meta_val[f->n_meta] = ep_xstrdup(json_string_value(v));
        f->n_meta++;
    }
    return EP_OK;
}

// Parses one header entry into t (name already set). data_size is the byte
// count after the header; offsets are checked against it.
static ep_status parse_entry(const ep_st_file *f, const char *name, json_t *e, uint64_t data_size,
                             ep_st_tensor *t, st_span *span)
{
    if (!json_is_object(e))
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: tensor '%s': expected an object with dtype, shape, data_offsets, "
                         "found %s",
                         f->path, name, ep_json_type_name(e));
    json_t *dt = json_object_get(e, "dtype");
    if (!json_is_string(dt))
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: tensor '%s': field 'dtype': expected a string, found %s", f->path,
                         name, ep_json_type_name(dt));
    if (!ep_dtype_parse(json_string_value(dt), &t->dtype))
        return ep_errorf(
            EP_ERR_FORMAT,
            "%s: tensor '%s': unknown dtype '%s' (expected one of F64, F32, F16, BF16, "
            "F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL)",
            f->path, name, json_string_value(dt));

    json_t *sh = json_object_get(e, "shape");
    if (!json_is_array(sh))
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: tensor '%s': field 'shape': expected an array, found %s", f->path,
                         name, ep_json_type_name(sh));
    size_t nd = json_array_size(sh);
    if (nd > EP_ST_MAX_DIMS)
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: tensor '%s': shape has %zu dimensions, at most %d allowed", f->path,
                         name, nd, EP_ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        json_t *dv = json_array_get(sh, i);
        if (!json_u64(dv, &d) || d > (uint64_t)INT64_MAX) {
            char tmp[64] = "";
            if (json_is_integer(dv))
                snprintf(tmp, sizeof tmp, " (%lld)", (long long)json_integer_value(dv));
            return ep_errorf(
                EP_ERR_FORMAT,
                "%s: tensor '%s': shape[%zu]: expected a non-negative integer, found %s%s", f->path,
                name, i, ep_json_type_name(dv), tmp);
        }
        t->shape[i] = (int64_t)d;
        if (__builtin_mul_overflow(numel, d, &numel)) overflow = true;
    }

    json_t *off = json_object_get(e, "data_offsets");
    uint64_t b, en;
    if (!json_is_array(off) || json_array_size(off) != 2 || !json_u64(json_array_get(off, 0), &b) ||
        !json_u64(json_array_get(off, 1), &en))
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: tensor '%s': field 'data_offsets': expected [begin, end] of two "
                         "non-negative integers, found %s",
                         f->path, name,
                         json_is_array(off) ? "a malformed array" : ep_json_type_name(off));
    if (b > en)
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: tensor '%s': data_offsets [%llu, %llu]: expected begin <= end",
                         f->path, name, (unsigned long long)b, (unsigned long long)en);
    if (en > data_size)
        return ep_errorf(
            EP_ERR_FORMAT,
            "%s: tensor '%s': data_offsets [%llu, %llu] out of range: the data section "
            "holds %llu bytes",
            f->path, name, (unsigned long long)b, (unsigned long long)en,
            (unsigned long long)data_size);
    uint64_t want = 0;
    char sbuf[256], wbuf[32];
    if (__builtin_mul_overflow(numel, (uint64_t)ep_dtype_size(t->dtype), &want)) overflow = true;
    if (overflow || want != en - b)
        return ep_errorf(
            EP_ERR_FORMAT,
            "%s: tensor '%s': dtype %s shape %s needs %s bytes, but data_offsets "
            "[%llu, %llu] span %llu bytes",
            f->path, name, ep_dtype_name(t->dtype), fmt_shape(sbuf, sizeof sbuf, t->ndim, t->shape),
            overflow ? "more than 2^64"
                     : (snprintf(wbuf, sizeof wbuf, "%llu", (unsigned long long)want), wbuf),
            (unsigned long long)b, (unsigned long long)en, (unsigned long long)(en - b));
    t->nbytes = (size_t)(en - b);
    span->begin = b;
    span->end = en;
    return EP_OK;
}

static ep_status parse_header(ep_st_file *f)
{
    if (f->size < 8)
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: file is %zu bytes, expected at least 8 (the header length)", f->path,
                         f->size);
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    if (hlen > EP_ST_MAX_HEADER)
        return ep_errorf(EP_ERR_FORMAT, "%s: header length %llu exceeds the limit of %u bytes",
                         f->path, (unsigned long long)hlen, EP_ST_MAX_HEADER);
    if (hlen > f->size - 8)
        return ep_errorf(EP_ERR_FORMAT,
                         "%s: header length %llu runs past the end of the file (%zu bytes, so at "
                         "most %zu)",
                         f->path, (unsigned long long)hlen, f->size, f->size - 8);
    if (hlen == 0)
        return ep_errorf(EP_ERR_FORMAT, "%s: header length is 0, expected a JSON object", f->path);
    uint64_t data_size = f->size - 8 - hlen;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (strstr(jerr.text, "duplicate"))
            return ep_errorf(EP_ERR_FORMAT, "%s: duplicate tensor name in header: %s", f->path,
                             jerr.text);
        return ep_errorf(EP_ERR_FORMAT, "%s: header is not valid JSON (line %d, column %d): %s",
                         f->path, jerr.line, jerr.column, jerr.text);
    }
    ep_status st = EP_OK;
    if (!json_is_object(root)) {
        st = ep_errorf(EP_ERR_FORMAT, "%s: header: expected a JSON object, found %s", f->path,
                       ep_json_type_name(root));
        goto out;
    }
    size_t cap = json_object_size(root);
    f->t = ep_xcalloc(cap, sizeof *f->t);
    st_span *spans = ep_xcalloc(cap, sizeof *spans);
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "__metadata__") == 0) {
            if ((st = parse_metadata(f, val)) != EP_OK) break;
            continue;
        }
        ep_st_tensor *t = &f->t[f->n];
        t->name = ep_xstrdup(key);
        f->n++; // counted before parsing so that close() frees the name on error
        if ((st = parse_entry(f, key, val, data_size, t, &spans[f->n - 1])) != EP_OK) break;
        spans[f->n - 1].idx = f->n - 1;
    }
    if (st == EP_OK) {
        qsort(spans, (size_t)f->n, sizeof *spans, span_cmp);
        for (int i = 1; i < f->n; i++) {
            if (spans[i].begin < spans[i - 1].end) {
                st = ep_errorf(EP_ERR_FORMAT,
                               "%s: tensor '%s' data_offsets [%llu, %llu] overlap tensor '%s' "
                               "[%llu, %llu]",
                               f->path, f->t[spans[i].idx].name, (unsigned long long)spans[i].begin,
                               (unsigned long long)spans[i].end, f->t[spans[i - 1].idx].name,
                               (unsigned long long)spans[i - 1].begin,
                               (unsigned long long)spans[i - 1].end);
                break;
            }
        }
    }
    if (st == EP_OK) {
        // Reorder tensors by offset (file order) and point them into the mapping.
        ep_st_tensor *sorted = ep_xcalloc(cap ? cap : 1, sizeof *sorted);
        const unsigned char *data = p + 8 + hlen;
        for (int i = 0; i < f->n; i++) {
            sorted[i] = f->t[spans[i].idx];
            sorted[i].data = data + spans[i].begin;
        }
        free(f->t);
        f->t = sorted;
        st_name_idx *ni = ep_xcalloc((size_t)(f->n ? f->n : 1), sizeof *ni);
        for (int i = 0; i < f->n; i++)
            ni[i] = (st_name_idx){f->t[i].name, i};
        qsort(ni, (size_t)f->n, sizeof *ni, name_idx_cmp);
        f->by_name = ep_xcalloc((size_t)(f->n ? f->n : 1), sizeof(int));
        for (int i = 0; i < f->n; i++)
            f->by_name[i] = ni[i].idx;
        free(ni);
    }
    free(spans);
out:
    json_decref(root);
    return st;
}

ep_status ep_st_open(const char *path, ep_st_file **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ep_errorf(EP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        ep_status st = ep_errorf(EP_ERR_IO, "%s: fstat failed: %s", path, strerror(errno));
        close(fd);
        return st;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return ep_errorf(EP_ERR_IO, "%s: expected a regular file", path);
    }
    ep_st_file *f = ep_xcalloc(1, sizeof *f);
    f->path = ep_xstrdup(path);
    f->size = (size_t)sb.st_size;
    if (f->size > 0) {
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            ep_status st = ep_errorf(EP_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, f->size,
                                     strerror(errno));
            close(fd);
            ep_st_close(f);
            return st;
        }
    }
    close(fd);
    ep_status st = parse_header(f);
    if (st != EP_OK) {
        ep_st_close(f);
        return st;
    }
    *out = f;
    return EP_OK;
}

void ep_st_close(ep_st_file *f)
{
    if (!f) return;
    if (f->map) munmap(f->map, f->size);
    for (int i = 0; i < f->n; i++)
        free((char *)f->t[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_key[i]);
        free(f->meta_val[i]);
    }
    free(f->meta_key);
    free(f->meta_val);
    free(f->t);
    free(f->by_name);
    free(f->path);
    free(f);
}

int ep_st_count(const ep_st_file *f)
{
    return f->n;
}

const ep_st_tensor *ep_st_get(const ep_st_file *f, int i)
{
    EP_ASSERT(i >= 0 && i < f->n);
    return &f->t[i];
}

const ep_st_tensor *ep_st_find(const ep_st_file *f, const char *name)
{
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->t[f->by_name[mid]].name);
        if (c == 0) return &f->t[f->by_name[mid]];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *ep_st_metadata(const ep_st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_key[i], key) == 0) return f->meta_val[i];
    return NULL;
}

// ---- checkpoint directory ------------------------------------------------
// Lazily opened shards are not thread-safe: callers load weights from one
// thread per process (each rank loads its own shard set).

typedef struct {
    char *name;
    int shard;
} ckpt_map_entry;

struct ep_ckpt {
    char *dir;
    char *index_path; // NULL when the directory has a single model.safetensors
    int n_shards;
    char **shard_name;  // [n_shards] file names inside dir
    ep_st_file **shard; // [n_shards], NULL until first used
    int n_map;
    ckpt_map_entry *map; // [n_map] sorted by name (index only)
};

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = ep_xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static int map_cmp(const void *a, const void *b)
{
    return strcmp(((const ckpt_map_entry *)a)->name, ((const ckpt_map_entry *)b)->name);
}

static bool plain_file_name(const char *s)
{
    return s[0] != '\0' && !strchr(s, '/') && !strstr(s, "..") && strcmp(s, ".") != 0;
}

static ep_status ckpt_parse_index(ep_ckpt *c)
{
    json_error_t jerr;
    json_t *root = json_load_file(c->index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return ep_errorf(EP_ERR_FORMAT, "%s: not valid JSON (line %d, column %d): %s",
                         c->index_path, jerr.line, jerr.column, jerr.text);
    ep_status st = EP_OK;
    json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        st = ep_errorf(EP_ERR_FORMAT, "%s: key 'weight_map': expected an object, found %s",
                       c->index_path, json_is_object(root) ? ep_json_type_name(wm) : "no object");
        goto out;
    }
    size_t n = json_object_size(wm);
    c->map = ep_xcalloc(n ? n : 1, sizeof *c->map);
    const char *name;
    json_t *v;
    json_object_foreach(wm, name, v)
    {
        if (!json_is_string(v)) {
            st = ep_errorf(EP_ERR_FORMAT,
                           "%s: weight_map['%s']: expected a shard file name, found %s",
                           c->index_path, name, ep_json_type_name(v));
            goto out;
        }
        const char *file = json_string_value(v);
        if (!plain_file_name(file)) {
            st = ep_errorf(EP_ERR_FORMAT,
                           "%s: weight_map['%s']: expected a plain file name in the checkpoint "
                           "directory (no '/' or '..'), found '%s'",
                           c->index_path, name, file);
            goto out;
        }
        int s = 0;
        while (s < c->n_shards && strcmp(c->shard_name[s], file) != 0)
            s++;
        if (s == c->n_shards) {
            c->shard_name = ep_xrealloc(c->shard_name, (size_t)(s + 1) * sizeof(char *));
            c->shard_name[s] = ep_xstrdup(file);
            c->n_shards++;
        }
        c->map[c->n_map].name = ep_xstrdup(name);
        c->map[c->n_map].shard = s;
        c->n_map++;
    }
    qsort(c->map, (size_t)c->n_map, sizeof *c->map, map_cmp);
    c->shard = ep_xcalloc((size_t)(c->n_shards ? c->n_shards : 1), sizeof(ep_st_file *));
out:
    json_decref(root);
    return st;
}

ep_status ep_ckpt_open(const char *dir, ep_ckpt **out)
{
    *out = NULL;
    ep_ckpt *c = ep_xcalloc(1, sizeof *c);
    c->dir = ep_xstrdup(dir);
    char *index = path_join(dir, "model.safetensors.index.json");
    struct stat sb;
    ep_status st = EP_OK;
    if (stat(index, &sb) == 0) {
        c->index_path = index;
        st = ckpt_parse_index(c);
    } else {
        free(index);
        char *single = path_join(dir, "model.safetensors");
        if (stat(single, &sb) != 0) {
            st = ep_errorf(EP_ERR_IO,
                           "checkpoint %s: found neither %s/model.safetensors.index.json nor %s",
                           dir, dir, single);
        } else {
            c->n_shards = 1;
            c->shard_name = ep_xcalloc(1, sizeof(char *));
            c->shard_name[0] = ep_xstrdup("model.safetensors");
            c->shard = ep_xcalloc(1, sizeof(ep_st_file *));
            st = ep_st_open(single, &c->shard[0]);
        }
        free(single);
    }
    if (st != EP_OK) {
        ep_ckpt_free(c);
        return st;
    }
    *out = c;
    return EP_OK;
}

void ep_ckpt_free(ep_ckpt *c)
{
    if (!c) return;
    for (int i = 0; i < c->n_shards; i++) {
        free(c->shard_name[i]);
        if (c->shard) ep_st_close(c->shard[i]);
    }
    for (int i = 0; i < c->n_map; i++)
        free(c->map[i].name);
    free(c->map);
    free(c->shard_name);
    free(c->shard);
    free(c->index_path);
    free(c->dir);
    free(c);
}

// Like ep_ckpt_find, also returning the file the tensor lives in (for messages).
static ep_status ckpt_find(ep_ckpt *c, const char *name, const ep_st_tensor **out,
                           const ep_st_file **file)
{
    *out = NULL;
    int s = 0;
    if (c->index_path) {
        ckpt_map_entry key = {.name = (char *)name};
        ckpt_map_entry *e = bsearch(&key, c->map, (size_t)c->n_map, sizeof *c->map, map_cmp);
        if (!e)
            return ep_errorf(EP_ERR_FORMAT, "tensor '%s' is not in the weight_map of %s", name,
                             c->index_path);
        s = e->shard;
        if (!c->shard[s]) {
            char *p = path_join(c->dir, c->shard_name[s]);
            ep_status st = ep_st_open(p, &c->shard[s]);
            free(p);
            if (st != EP_OK)
                return ep_error_prefix(st, "shard '%s' (listed in %s for tensor '%s')",
                                       c->shard_name[s], c->index_path, name);
        }
    }
    const ep_st_tensor *t = ep_st_find(c->shard[s], name);
    if (!t) {
        if (c->index_path)
            return ep_errorf(EP_ERR_FORMAT,
                             "tensor '%s' is listed in %s under shard '%s' but is absent from %s",
                             name, c->index_path, c->shard_name[s], c->shard[s]->path);
        return ep_errorf(EP_ERR_FORMAT, "tensor '%s' not found in %s", name, c->shard[s]->path);
    }
    *out = t;
    if (file) *file = c->shard[s];
    return EP_OK;
}

ep_status ep_ckpt_find(ep_ckpt *c, const char *name, const ep_st_tensor **out)
{
    return ckpt_find(c, name, out, NULL);
}

ep_status ep_ckpt_find_float(ep_ckpt *c, const char *name, int ndim, const int64_t *shape,
                             const ep_st_tensor **out)
{
    const ep_st_tensor *t;
    const ep_st_file *f = NULL;
    *out = NULL;
    ep_status st = ckpt_find(c, name, &t, &f);
    if (st != EP_OK) return st;
    if (!ep_dtype_is_float(t->dtype))
        return ep_errorf(EP_ERR_FORMAT,
                         "tensor %s in %s: expected a float dtype (F32, F64, F16, BF16, F8_E4M3, "
                         "F8_E5M2), found %s",
                         name, f->path, ep_dtype_name(t->dtype));
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char a[256], b[256];
        return ep_errorf(EP_ERR_FORMAT, "tensor %s in %s: expected shape %s, found %s", name,
                         f->path, fmt_shape(a, sizeof a, ndim, shape),
                         fmt_shape(b, sizeof b, t->ndim, t->shape));
    }
    *out = t;
    return EP_OK;
}

ep_status ep_ckpt_read_f32(ep_ckpt *c, const char *name, int ndim, const int64_t *shape, float *dst)
{
    const ep_st_tensor *t;
    ep_status st = ep_ckpt_find_float(c, name, ndim, shape, &t);
    if (st != EP_OK) return st;
    size_t n = t->nbytes / ep_dtype_size(t->dtype);
    return ep_dtype_to_f32(t->dtype, t->data, dst, n);
}

// The pages are read-only and never written, so dropping them only makes a
// later read fault them in again from the page cache (or the file).
void ep_st_release(const ep_st_tensor *t)
{
    if (!t || !t->nbytes) return;
    static size_t page;
    if (!page) page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data & ~(uintptr_t)(page - 1);
    uintptr_t b = ((uintptr_t)t->data + t->nbytes + page - 1) & ~(uintptr_t)(page - 1);
    (void)madvise((void *)a, b - a, MADV_DONTNEED);
}

// ---- writer ----------------------------------------------------------------

static int str_ptr_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// Rejects duplicate names (safetensors forbids them; jansson would keep one).
static ep_status check_unique(const char *path, const char *const *names, int n)
{
    const char **s = ep_xcalloc((size_t)(n ? n : 1), sizeof(char *));
    for (int i = 0; i < n; i++)
        s[i] = names[i];
    qsort(s, (size_t)n, sizeof(char *), str_ptr_cmp);
    ep_status st = EP_OK;
    for (int i = 1; i < n; i++)
        if (strcmp(s[i], s[i - 1]) == 0) {
            st = ep_errorf(EP_ERR_ARG, "%s: tensor name '%s' given twice", path, s[i]);
            break;
        }
    free(s);
    return st;
}

ep_status ep_st_write(const char *path, const ep_st_entry *entries, int n,
                      const char *const *metadata)
{
    EP_ASSERT(n >= 0);
    const char **names = ep_xcalloc((size_t)(n ? n : 1), sizeof(char *));
    size_t *nbytes = ep_xcalloc((size_t)(n ? n : 1), sizeof(size_t));
    json_t *root = json_object();
    char *text = NULL;
    const void **bufs = NULL;
    size_t *lens = NULL;
    ep_status st = EP_OK;

    if (metadata && metadata[0]) {
        json_t *meta = json_object();
        for (int i = 0; metadata[i]; i += 2) {
            if (!metadata[i + 1]) {
                json_decref(meta);
                st = ep_errorf(EP_ERR_ARG, "%s: metadata key '%s' has no value", path, metadata[i]);
                goto out;
            }
            json_object_set_new(meta, metadata[i], json_string(metadata[i + 1]));
        }
        json_object_set_new(root, "__metadata__", meta);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const ep_st_entry *e = &entries[i];
        names[i] = e->name;
        if (!e->name || !e->name[0] || strcmp(e->name, "__metadata__") == 0) {
            st = ep_errorf(EP_ERR_ARG, "%s: entry %d: invalid tensor name '%s'", path, i,
                           e->name ? e->name : "(null)");
            goto out;
        }
        if ((unsigned)e->dtype >= EP_DTYPE_COUNT || e->ndim < 0 || e->ndim > EP_ST_MAX_DIMS) {
            st = ep_errorf(EP_ERR_ARG, "%s: tensor '%s': bad dtype %d or ndim %d (0..%d)", path,
                           e->name, (int)e->dtype, e->ndim, EP_ST_MAX_DIMS);
            goto out;
        }
        uint64_t numel = 1;
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] < 0) {
                json_decref(shape);
                st = ep_errorf(EP_ERR_ARG, "%s: tensor '%s': shape[%d] = %lld is negative", path,
                               e->name, d, (long long)e->shape[d]);
                goto out;
            }
            numel *= (uint64_t)e->shape[d];
            json_array_append_new(shape, json_integer(e->shape[d]));
        }
        nbytes[i] = (size_t)(numel * ep_dtype_size(e->dtype));
        if (nbytes[i] > 0 && !e->data) {
            json_decref(shape);
            st = ep_errorf(EP_ERR_ARG, "%s: tensor '%s': data is NULL for %zu bytes", path, e->name,
                           nbytes[i]);
            goto out;
        }
        json_t *ent = json_object();
        json_object_set_new(ent, "dtype", json_string(ep_dtype_name(e->dtype)));
        json_object_set_new(ent, "shape", shape);
        json_object_set_new(ent, "data_offsets",
                            json_pack("[II]", (json_int_t)off, (json_int_t)(off + nbytes[i])));
        json_object_set_new(root, e->name, ent);
        off += nbytes[i];
    }
    if ((st = check_unique(path, names, n)) != EP_OK) goto out;

    text = json_dumps(root, JSON_COMPACT);
    if (!text) {
        st = ep_errorf(EP_ERR_NOMEM, "%s: cannot serialise the header", path);
        goto out;
    }
    // Pad with spaces so that 8 + header length is a multiple of 8 and every
    // tensor's data starts 8-aligned, as the reference writer does.
    size_t hlen = strlen(text);
    size_t padded = (hlen + 7) & ~(size_t)7;
    text = ep_xrealloc(text, padded + 1);
    memset(text + hlen, ' ', padded - hlen);
    text[padded] = '\0';
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (unsigned char)((uint64_t)padded >> (8 * i));

    bufs = ep_xcalloc((size_t)n + 2, sizeof(void *));
    lens = ep_xcalloc((size_t)n + 2, sizeof(size_t));
    bufs[0] = lenbuf;
    lens[0] = 8;
    bufs[1] = text;
    lens[1] = padded;
    for (int i = 0; i < n; i++) {
        bufs[2 + i] = entries[i].data ? entries[i].data : "";
        lens[2 + i] = nbytes[i];
    }
    st = ep_file_write_atomic(path, bufs, lens, n + 2);
out:
    free(bufs);
    free(lens);
    free(text);
    json_decref(root);
    free(names);
    free(nbytes);
    return st;
}

ep_status ep_st_write_index(const char *path, const char *const *names, const char *const *files,
                            int n, uint64_t total_size)
{
    ep_status st = check_unique(path, names, n);
    if (st != EP_OK) return st;
    json_t *wm = json_object();
    for (int i = 0; i < n; i++) {
        if (!plain_file_name(files[i])) {
            json_decref(wm);
            return ep_errorf(
                EP_ERR_ARG, "%s: tensor '%s': shard '%s' is not a plain file name (no '/' or '..')",
                path, names[i], files[i]);
        }
        json_object_set_new(wm, names[i], json_string(files[i]));
    }
    json_t *root = json_object();
    json_object_set_new(root, "metadata", json_pack("{sI}", "total_size", (json_int_t)total_size));
    json_object_set_new(root, "weight_map", wm);
    st = ep_json_write_atomic(path, root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    return st;
}
