// Small helpers shared by the safetensors writer and the config.json writer:
// atomic file replacement (temp file, fsync, rename) and JSON dumping.
// No parsing lives here; readers use jansson directly with their own messages.
#ifndef EP_JSON_UTIL_H
#define EP_JSON_UTIL_H

#include "common/ep.h"

#include <jansson.h>
#include <stdio.h>

// Writes the concatenation of n buffers to `path` atomically: the bytes go
// to "<path>.tmp.<pid>", are fsynced, then renamed over `path`. On any
// failure the temp file is removed and `path` is left untouched (EP_ERR_IO,
// message names the path and the failing call).
ep_status ep_file_write_atomic(const char *path, const void *const *bufs, const size_t *lens,
                               int n);

// The same for output written as it is produced: opens a temporary file
// next to path (tmp receives its name, n >= strlen(path) + 16) ...
ep_status ep_file_atomic_open(const char *path, char *tmp, size_t n, FILE **f);
// ... then, ok: flush, sync and rename tmp over path; !ok (or any failure):
// remove tmp. Closes f either way. EP_ERR_IO naming path when writing failed.
ep_status ep_file_atomic_commit(FILE *f, const char *tmp, const char *path, bool ok);

// Dumps `root` with jansson `flags` plus a trailing newline, atomically.
ep_status ep_json_write_atomic(const char *path, const json_t *root, size_t flags);

// The double closest to the shortest decimal that reads back as `f`, so that
// 1e-6f is written as 1e-06 and not 9.9999999747524271e-07. Use with
// JSON_REAL_PRECISION(9) when dumping.
double ep_json_float(float f);

// "an integer", "a string", ... for messages about a JSON value's type.
const char *ep_json_type_name(const json_t *v);

#endif
