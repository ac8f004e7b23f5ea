// safetensors checkpoints: one file (mmapped, header parsed with jansson,
// every entry bounds-checked) and a checkpoint directory that follows
// model.safetensors.index.json (shards opened lazily, on first use).
// The writer emits the same format atomically (temp file + rename).
#ifndef EP_SAFETENSORS_H
#define EP_SAFETENSORS_H

#include "common/dtype.h"

#define EP_ST_MAX_DIMS   8
#define EP_ST_MAX_HEADER (100u * 1024 * 1024) // as the reference implementation

typedef struct {
    const char *name; // owned by the file
    ep_dtype dtype;
    int ndim;
    int64_t shape[EP_ST_MAX_DIMS];
    const void *data; // into the mapping; read-only
    size_t nbytes;
} ep_st_tensor;

typedef struct ep_st_file ep_st_file;
ep_status ep_st_open(const char *path, ep_st_file **out);
void ep_st_close(ep_st_file *f); // NULL ok
int ep_st_count(const ep_st_file *f);
const ep_st_tensor *ep_st_get(const ep_st_file *f, int i);
const ep_st_tensor *ep_st_find(const ep_st_file *f, const char *name); // NULL when absent
const char *ep_st_metadata(const ep_st_file *f, const char *key);      // NULL when absent

// A checkpoint directory: model.safetensors.index.json when present (shard
// names read from its weight_map, never guessed), else model.safetensors.
typedef struct ep_ckpt ep_ckpt;
ep_status ep_ckpt_open(const char *dir, ep_ckpt **out);
void ep_ckpt_free(ep_ckpt *c);
// Finds a tensor, opening its shard on first use. Missing -> EP_ERR_FORMAT
// naming the tensor and the index/file.
ep_status ep_ckpt_find(ep_ckpt *c, const char *name, const ep_st_tensor **out);
// Finds, checks dtype is a float type and the shape equals `shape`
// (message names the tensor, expected and found shape).
ep_status ep_ckpt_find_float(ep_ckpt *c, const char *name, int ndim, const int64_t *shape,
                             const ep_st_tensor **out);
// ep_ckpt_find_float, then converts the stored values to fp32. F8 tensors
// give their codes' values without any block scale: model weights are read
// through ep_weights_read_f32, which dequantizes FP8 checkpoints (weights.h).
ep_status ep_ckpt_read_f32(ep_ckpt *c, const char *name, int ndim, const int64_t *shape,
                           float *dst);

// Drops a tensor's mapped pages from this process's resident memory (they
// stay in the page cache; a later read faults them in again): for a tensor
// the caller copied and will not read through the mapping soon. Pages it
// shares with its neighbours go too, which costs them nothing but a fault.
void ep_st_release(const ep_st_tensor *t);

// Writer: tensors are given whole; `data` is copied as-is (already in dtype).
typedef struct {
    const char *name;
    ep_dtype dtype;
    int ndim;
    int64_t shape[EP_ST_MAX_DIMS];
    const void *data;
} ep_st_entry;
// Writes path atomically; metadata is NULL or NULL-terminated key,value pairs.
ep_status ep_st_write(const char *path, const ep_st_entry *entries, int n,
                      const char *const *metadata);
// Writes model.safetensors.index.json: weight_map name -> file, total_size.
ep_status ep_st_write_index(const char *path, const char *const *names, const char *const *files,
                            int n, uint64_t total_size);

#endif
