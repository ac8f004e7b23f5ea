// Writes a synthetic checkpoint directory in the Hugging Face layout (what
// `epserve make-model` produces): sharded safetensors, the index, config.json
// (make-model adds the tokenizer files and generation_config.json).
// The values come from ep_synth_tensor; the file format from safetensors.c.
#include "common/safetensors.h"
#include "common/weights.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *name;
    int ndim;
    int64_t shape[EP_ST_MAX_DIMS];
    ep_dtype dtype;  // as written
    uint64_t numel;  // values
    uint64_t nbytes; // in dtype
    bool is_scale;   // the FP8 block scales of the entry before it (same shard)
    int shard;
} ckpt_tensor;

typedef struct {
    ckpt_tensor *t;
    int64_t n, cap;
    ep_dtype dtype;  // the checkpoint's: F32, BF16, or F8_E4M3 (FP8 + BF16 + F32 scales)
    int block[2];    // FP8 weight_block_size
    int64_t n_model; // tensors of the model layout (scales not counted)
    int64_t n_scales;
    uint64_t total_bytes;
} ckpt_layout;

static ckpt_tensor *layout_push(ckpt_layout *L, const char *name, int ndim, const int64_t *shape,
                                ep_dtype dtype)
{
    EP_ASSERT(ndim >= 1 && ndim <= EP_ST_MAX_DIMS);
    if (L->n == L->cap) {
        L->cap = L->cap ? 2 * L->cap : 256;
        L->t = ep_xrealloc(L->t, (size_t)L->cap * sizeof *L->t);
    }
    ckpt_tensor *t = &L->t[L->n++];
    memset(t, 0, sizeof *t);
    t->name = ep_xstrdup(name);
    t->ndim = ndim;
    t->dtype = dtype;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= (uint64_t)shape[i];
    }
    t->nbytes = t->numel * ep_dtype_size(dtype);
    L->total_bytes += t->nbytes;
    return t;
}

// One tensor of the model layout; in an FP8 checkpoint the quantized Linear
// weights (ep_model_tensor_is_fp8) are F8_E4M3 followed by their
// `_scale_inv` (F32), everything else BF16, as the published ones.
static int collect(void *user, const char *name, int ndim, const int64_t *shape)
{
    ckpt_layout *L = user;
    L->n_model++;
    if (L->dtype != EP_DTYPE_F8_E4M3) {
        layout_push(L, name, ndim, shape, L->dtype);
        return 0;
    }
    if (!ep_model_tensor_is_fp8(name, ndim)) {
        layout_push(L, name, ndim, shape, EP_DTYPE_BF16);
        return 0;
    }
    layout_push(L, name, ndim, shape, EP_DTYPE_F8_E4M3);
    char sname[320];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    const int64_t sshape[2] = {ep_fp8_blocks(shape[0], L->block[0]),
                               ep_fp8_blocks(shape[1], L->block[1])};
    layout_push(L, sname, 2, sshape, EP_DTYPE_F32)->is_scale = true;
    L->n_scales++;
    return 0;
}

static void layout_free(ckpt_layout *L)
{
    for (int64_t i = 0; i < L->n; i++)
        free(L->t[i].name);
    free(L->t);
    memset(L, 0, sizeof *L);
}

// dtype F8_E4M3 takes its blocks from cfg->quant_block (128 x 128 when unset).
static void layout_build(const ep_model_cfg *cfg, ep_dtype dtype, ckpt_layout *L)
{
    memset(L, 0, sizeof *L);
    L->dtype = dtype;
    L->block[0] = cfg->quant_block[0] > 0 ? cfg->quant_block[0] : 128;
    L->block[1] = cfg->quant_block[1] > 0 ? cfg->quant_block[1] : 128;
    ep_model_for_each_tensor(cfg, collect, L);
}

void ep_synth_checkpoint_size(const ep_model_cfg *cfg, ep_dtype dtype, ep_synth_ckpt_info *info)
{
    ckpt_layout L;
    layout_build(cfg, dtype, &L);
    info->n_tensors = L.n_model;
    info->n_scales = L.n_scales;
    info->total_bytes = L.total_bytes;
    info->n_shards = 0;
    layout_free(&L);
}

// Contiguous shards in layout order, balanced by bytes: a tensor goes to the
// next shard when its midpoint passes that shard's share of the total, and
// every shard gets at least one tensor. FP8 block scales stay with their
// weight (counted as part of it for "at least one").
static void assign_shards(ckpt_layout *L, int n_shards)
{
    int s = 0;
    int64_t in_shard = 0, left = L->n_model; // model tensors from i on
    uint64_t acc = 0;
    for (int64_t i = 0; i < L->n; i++) {
        ckpt_tensor *t = &L->t[i];
        if (t->is_scale) {
            t->shard = s;
            acc += t->nbytes;
            continue;
        }
        if (in_shard > 0 && s < n_shards - 1) {
            // Share of shards 0..s, compared with the tensor's midpoint (in
            // long double: byte totals times a shard count can pass 2^64).
            long double target = (long double)L->total_bytes * (s + 1) / n_shards;
            bool past = (long double)acc + t->nbytes / 2.0L > target;
            bool forced = left <= n_shards - 1 - s;
            if (past || forced) {
                s++;
                in_shard = 0;
            }
        }
        t->shard = s;
        acc += t->nbytes;
        in_shard++;
        left--;
    }
}

// ---- directory helpers -------------------------------------------------------

// 1 when path is a directory holding anything, 0 when absent or an empty
// directory, -1 (error set) when it is something else or unreadable.
static int dir_state(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (errno == ENOENT) return 0;
        ep_errorf(EP_ERR_IO, "checkpoint directory '%s': cannot stat: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(sb.st_mode)) {
        ep_errorf(EP_ERR_IO, "checkpoint directory '%s': exists and is not a directory", path);
        return -1;
    }
    DIR *d = opendir(path);
    if (!d) {
        ep_errorf(EP_ERR_IO, "checkpoint directory '%s': cannot open: %s", path, strerror(errno));
        return -1;
    }
    int used = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            used = 1;
            break;
        }
    closedir(d);
    return used;
}

// mkdir -p of the directory that will hold `path`.
static ep_status make_parents(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return ep_errorf(EP_ERR_ARG, "checkpoint directory '%s': path longer than %zu bytes", path,
                         sizeof buf - 1);
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf) return EP_OK;
    *slash = '\0';
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ep_errorf(EP_ERR_IO, "synthetic checkpoint: cannot create directory '%s': %s",
                             buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return ep_errorf(EP_ERR_IO, "synthetic checkpoint: cannot create directory '%s': %s", buf,
                         strerror(errno));
    return EP_OK;
}

// Removes the temp directory and the plain files in it (all that we write).
static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        char path[4400];
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

// Removes "<out>.tmp.<pid>" directories whose process is gone: what an
// interrupted run (killed, out of disk) left beside out. Live ones (a run in
// progress) are left alone.
static void remove_stale_tmp(const char *out)
{
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", out);
    char *slash = strrchr(parent, '/');
    const char *base = out;
    if (slash) {
        base = out + (slash - parent) + 1;
        if (slash == parent)
            slash[1] = '\0';
        else
            *slash = '\0';
    } else {
        snprintf(parent, sizeof parent, ".");
    }
    DIR *d = opendir(parent);
    if (!d) return;
    size_t bl = strlen(base);
    struct dirent *de;
    char path[8300];
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (strncmp(n, base, bl) || strncmp(n + bl, ".tmp.", 5)) continue;
        char *end;
        long pid = strtol(n + bl + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        snprintf(path, sizeof path, "%s/%s", parent, n);
        remove_tree(path);
    }
    closedir(d);
}

static void shard_name(char *buf, size_t n, int s, int n_shards)
{
    snprintf(buf, n, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
}

// ---- config.json ---------------------------------------------------------------

void ep_synth_special_ids_of(const ep_model_cfg *cfg, ep_synth_special_ids *ids)
{
    if (cfg->arch == EP_ARCH_DEEPSEEK_V2)
        *ids = (ep_synth_special_ids){
            .bos = cfg->vocab - 2, .eos = cfg->vocab - 1, .pad = cfg->vocab - 1, .im_start = -1};
    else
        *ids = (ep_synth_special_ids){.bos = cfg->vocab - 3,
                                      .eos = cfg->vocab - 1,
                                      .pad = cfg->vocab - 3,
                                      .im_start = cfg->vocab - 2};
}

// config.json as the published ones: torch_dtype of the weights written,
// bos / eos ids of the tokenizer make-model writes beside them.
static ep_status write_config(const ep_model_cfg *cfg, ep_dtype dtype, const char *path)
{
    ep_synth_special_ids ids;
    ep_synth_special_ids_of(cfg, &ids);
    ep_hf_json_extra x = {.torch_dtype = dtype == EP_DTYPE_F32 ? "float32" : "bfloat16",
                          .bos_token_id = ids.bos,
                          .eos_token_id = ids.eos};
    return ep_model_cfg_write_hf_json_ex(cfg, &x, path);
}

// ---- writing -----------------------------------------------------------------

// Generates and writes shard s (tensors [lo, hi) of the layout).
static ep_status write_shard(const ep_model_cfg *cfg, const ckpt_layout *L, int64_t lo, int64_t hi,
                             const char *path)
{
    int64_t n = hi - lo;
    ep_st_entry *ent = ep_xcalloc((size_t)n, sizeof *ent);
    void **data = ep_xcalloc((size_t)n, sizeof *data);
    uint64_t max_numel = 1;
    for (int64_t i = lo; i < hi; i++)
        max_numel = EP_MAX(max_numel, L->t[i].numel);
    float *f32 = malloc(max_numel * sizeof(float));
    ep_status st = EP_OK;
    if (!f32) {
        st = ep_errorf(EP_ERR_NOMEM,
                       "synthetic checkpoint: %s: no memory for a tensor of %llu floats", path,
                       (unsigned long long)max_numel);
        goto out;
    }
    for (int64_t i = lo; i < hi; i++) {
        const ckpt_tensor *t = &L->t[i];
        ep_st_entry *e = &ent[i - lo];
        e->name = t->name;
        e->dtype = t->dtype;
        e->ndim = t->ndim;
        memcpy(e->shape, t->shape, (size_t)t->ndim * sizeof *t->shape);
        data[i - lo] = malloc(t->nbytes ? t->nbytes : 1);
        if (!data[i - lo]) {
            st = ep_errorf(EP_ERR_NOMEM,
                           "synthetic checkpoint: %s: no memory for tensor '%s' (%llu bytes)", path,
                           t->name, (unsigned long long)t->nbytes);
            goto out;
        }
        e->data = data[i - lo];
    }
    for (int64_t i = lo; i < hi; i++) {
        const ckpt_tensor *t = &L->t[i];
        if (t->is_scale) continue; // filled with its weight, the entry before
        ep_synth_tensor(cfg, t->name, t->ndim, t->shape, f32);
        if (t->dtype == EP_DTYPE_F8_E4M3) {
            // The scales are the next entry, in this shard (assign_shards).
            EP_ASSERT(i + 1 < hi && L->t[i + 1].is_scale);
            ep_fp8_block_quant(f32, t->shape[0], t->shape[1], L->block[0], L->block[1],
                               data[i - lo], data[i + 1 - lo]);
            continue;
        }
        if ((st = ep_dtype_from_f32(t->dtype, f32, data[i - lo], (size_t)t->numel))) goto out;
    }
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)cfg->seed);
    const char *meta[] = {"format", "pt", "epserve_seed", seed, NULL};
    st = ep_st_write(path, ent, (int)n, meta);
out:
    for (int64_t i = 0; i < n; i++)
        free(data[i]);
    free(data);
    free(ent);
    free(f32);
    return st;
}

ep_status ep_synth_write_checkpoint_ex(const ep_model_cfg *cfg, const char *dir, int n_shards,
                                       ep_dtype dtype, uint64_t max_bytes, ep_synth_ckpt_info *info)
{
    if (info) memset(info, 0, sizeof *info);
    if (dtype != EP_DTYPE_BF16 && dtype != EP_DTYPE_F32 && dtype != EP_DTYPE_F8_E4M3)
        return ep_errorf(EP_ERR_UNSUPPORTED,
                         "synthetic checkpoint: dtype %s: expected BF16, F32 or F8_E4M3",
                         ep_dtype_name(dtype));
    // config.json is written from cfg: its quantization_config must say what
    // the files hold.
    if ((dtype == EP_DTYPE_F8_E4M3) != (cfg->quant == EP_QUANT_FP8_BLOCK))
        return ep_errorf(EP_ERR_ARG,
                         "synthetic checkpoint: dtype %s with model '%s' quantization %s: "
                         "expected F8_E4M3 exactly when the config is block-quantized FP8",
                         ep_dtype_name(dtype), cfg->name,
                         cfg->quant == EP_QUANT_FP8_BLOCK ? "fp8" : "none");
    if (n_shards < 1)
        return ep_errorf(EP_ERR_ARG, "synthetic checkpoint: shards must be >= 1, found %d",
                         n_shards);
    if (!dir || !dir[0])
        return ep_errorf(EP_ERR_ARG, "synthetic checkpoint: empty output directory");

    // "<dir>" without trailing slashes, so that "<dir>.tmp.<pid>" is a sibling.
    char out[4096], tmp[4200], path[4400];
    if (snprintf(out, sizeof out, "%s", dir) >= (int)sizeof out)
        return ep_errorf(EP_ERR_ARG, "checkpoint directory '%s': path longer than %zu bytes", dir,
                         sizeof out - 1);
    for (size_t n = strlen(out); n > 1 && out[n - 1] == '/'; n--)
        out[n - 1] = '\0';

    ckpt_layout L;
    layout_build(cfg, dtype, &L);
    ep_status st = EP_OK;
    bool tmp_made = false;
    const char **names = NULL, **files = NULL;
    char(*file_names)[64] = NULL;

    if (L.n == 0) {
        st = ep_errorf(EP_ERR_CONFIG, "synthetic checkpoint: model '%s' has no tensors", cfg->name);
        goto out;
    }
    if (max_bytes && L.total_bytes > max_bytes) {
        st = ep_errorf(
            EP_ERR_ARG,
            "synthetic checkpoint: model '%s' in %s is %llu bytes (%.2f GiB), above the limit "
            "of %llu bytes",
            cfg->name, ep_dtype_name(dtype), (unsigned long long)L.total_bytes,
            L.total_bytes / (1024.0 * 1024 * 1024), (unsigned long long)max_bytes);
        goto out;
    }
    if (n_shards > L.n_model) {
        st = ep_errorf(EP_ERR_ARG,
                       "synthetic checkpoint: %d shards for model '%s' with only %lld tensors",
                       n_shards, cfg->name, (long long)L.n_model);
        goto out;
    }
    int used = dir_state(out);
    if (used < 0) {
        st = EP_ERR_IO;
        goto out;
    }
    if (used) {
        st = ep_errorf(EP_ERR_IO,
                       "checkpoint directory '%s': exists and is not empty (expected a "
                       "new or empty directory; remove it or pick another directory)",
                       out);
        goto out;
    }
    if ((st = make_parents(out))) goto out;
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    remove_tree(tmp); // a leftover of a crashed run with our pid
    remove_stale_tmp(out);
    if (mkdir(tmp, 0755) != 0) {
        st = ep_errorf(EP_ERR_IO, "synthetic checkpoint: cannot create '%s': %s", tmp,
                       strerror(errno));
        goto out;
    }
    tmp_made = true;

    assign_shards(&L, n_shards);
    names = ep_xcalloc((size_t)L.n, sizeof *names);
    files = ep_xcalloc((size_t)L.n, sizeof *files);
    file_names = ep_xcalloc((size_t)n_shards, sizeof *file_names);
    for (int s = 0; s < n_shards; s++)
        shard_name(file_names[s], sizeof file_names[s], s, n_shards);
    for (int64_t lo = 0; lo < L.n;) {
        int s = L.t[lo].shard;
        int64_t hi = lo;
        while (hi < L.n && L.t[hi].shard == s)
            hi++;
        snprintf(path, sizeof path, "%s/%s", tmp, file_names[s]);
        if ((st = write_shard(cfg, &L, lo, hi, path))) goto out;
        lo = hi;
    }
    for (int64_t i = 0; i < L.n; i++) {
        names[i] = L.t[i].name;
        files[i] = file_names[L.t[i].shard];
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp);
    if ((st = ep_st_write_index(path, names, files, (int)L.n, L.total_bytes))) goto out;
    snprintf(path, sizeof path, "%s/config.json", tmp);
    if ((st = write_config(cfg, dtype, path))) goto out;

    // rename() replaces an empty directory atomically and fails on a full one
    // (someone wrote into dir meanwhile): the check above is not relied on.
    if (rename(tmp, out) != 0) {
        st = ep_errorf(EP_ERR_IO, "synthetic checkpoint: cannot move '%s' to '%s': %s", tmp, out,
                       strerror(errno));
        goto out;
    }
    tmp_made = false;
    if (info) {
        info->n_tensors = L.n_model;
        info->n_scales = L.n_scales;
        info->total_bytes = L.total_bytes;
        info->n_shards = n_shards;
    }
out:
    if (tmp_made) remove_tree(tmp);
    free(names);
    free(files);
    free(file_names);
    layout_free(&L);
    return st;
}

ep_status ep_synth_write_checkpoint(const ep_model_cfg *cfg, const char *dir, int n_shards,
                                    ep_dtype dtype)
{
    return ep_synth_write_checkpoint_ex(cfg, dir, n_shards, dtype, 0, NULL);
}
