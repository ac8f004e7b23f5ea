// Atomic file writes (temp + fsync + rename: whole buffers, or a FILE written
// as it goes) and JSON dump helpers used by every writer. Readers do not use this file.
#include "common/json_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static ep_status write_all(int fd, const void *buf, size_t len, const char *tmp)
{
    const char *p = buf;
    while (len > 0) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : len;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return ep_errorf(EP_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
        }
        p += w;
        len -= (size_t)w;
    }
    return EP_OK;
}

ep_status ep_file_write_atomic(const char *path, const void *const *bufs, const size_t *lens, int n)
{
    size_t tlen = strlen(path) + 32;
    char *tmp = ep_xmalloc(tlen);
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        ep_status st =
            ep_errorf(EP_ERR_IO, "%s: cannot create temp file %s: %s", path, tmp, strerror(errno));
        free(tmp);
        return st;
    }
    ep_status st = EP_OK;
    for (int i = 0; i < n && st == EP_OK; i++)
        st = write_all(fd, bufs[i], lens[i], tmp);
    if (st == EP_OK && fsync(fd) != 0)
        st = ep_errorf(EP_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == EP_OK)
        st = ep_errorf(EP_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (st == EP_OK && rename(tmp, path) != 0)
        st = ep_errorf(EP_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (st != EP_OK) unlink(tmp);
    free(tmp);
    return st;
}

ep_status ep_json_write_atomic(const char *path, const json_t *root, size_t flags)
{
    char *text = json_dumps(root, flags);
    if (!text) return ep_errorf(EP_ERR_NOMEM, "%s: cannot serialise JSON", path);
    const void *bufs[2] = {text, "\n"};
    size_t lens[2] = {strlen(text), 1};
    ep_status st = ep_file_write_atomic(path, bufs, lens, 2);
    free(text);
    return st;
}

double ep_json_float(float f)
{
    char buf[64];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) return strtod(buf, NULL);
    }
    return (double)f;
}

const char *ep_json_type_name(const json_t *v)
{
    if (!v) return "nothing";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "an unknown JSON value";
}

// ---- streamed atomic files (the writer picks the bytes as it goes) -------

ep_status ep_file_atomic_open(const char *path, char *tmp, size_t n, FILE **f)
{
    *f = NULL;
    int w = snprintf(tmp, n, "%s.tmp.XXXXXX", path);
    EP_ASSERT(w > 0 && (size_t)w < n);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return ep_errorf(EP_ERR_IO, "%s: cannot create a temporary file next to it: %s", path,
                         strerror(errno));
    *f = fdopen(fd, "w");
    if (!*f) {
        int err = errno;
        close(fd);
        unlink(tmp);
        return ep_errorf(EP_ERR_IO, "%s: cannot open %s for writing: %s", path, tmp, strerror(err));
    }
    return EP_OK;
}

ep_status ep_file_atomic_commit(FILE *f, const char *tmp, const char *path, bool ok)
{
    int err = 0;
    if (ok && (ferror(f) || fflush(f) != 0 || fsync(fileno(f)) != 0)) err = errno ? errno : EIO;
    if (fclose(f) != 0 && ok && !err) err = errno;
    if (!ok || err) {
        unlink(tmp);
        if (!ok) return EP_OK;
        return ep_errorf(EP_ERR_IO, "%s: writing failed: %s", path, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        err = errno;
        unlink(tmp);
        return ep_errorf(EP_ERR_IO, "%s: cannot rename %s over it: %s", path, tmp, strerror(err));
    }
    return EP_OK;
}
