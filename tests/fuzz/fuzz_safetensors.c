// libFuzzer target: one safetensors file (8-byte header length, JSON header,
// data). Whatever ep_st_open accepts must describe tensors that lie inside
// the file and whose byte counts match shape x dtype; every accepted tensor
// is read end to end. Does not cover the sharded index (fuzz_st_index.c).
#include "common/safetensors.h"
#include "fuzz_util.h"

#include <stdlib.h>
#include <string.h>

static float g_buf[1024];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = ep_fuzz_file("model.safetensors", data, size);
    ep_st_file *f = NULL;
    if (ep_st_open(path, &f) != EP_OK) {
        EP_FUZZ_CHECK(f == NULL && ep_last_error()[0] != '\0');
        return 0;
    }
    const uint8_t *lo = NULL, *hi = NULL; // the span every tensor must lie in
    if (size >= 8) {
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--)
            hlen = hlen << 8 | data[i];
        EP_FUZZ_CHECK(hlen <= size - 8);
    }
    int n = ep_st_count(f);
    EP_FUZZ_CHECK(n >= 0);
    for (int i = 0; i < n; i++) {
        const ep_st_tensor *t = ep_st_get(f, i);
        EP_FUZZ_CHECK(t && t->name && t->ndim >= 0 && t->ndim <= EP_ST_MAX_DIMS);
        EP_FUZZ_CHECK(ep_st_find(f, t->name) == t);
        uint64_t elems = 1;
        for (int d = 0; d < t->ndim; d++) {
            EP_FUZZ_CHECK(t->shape[d] >= 0);
            EP_FUZZ_CHECK(t->shape[d] == 0 || elems <= UINT64_MAX / (uint64_t)t->shape[d]);
            elems *= (uint64_t)t->shape[d];
        }
        size_t es = ep_dtype_size(t->dtype);
        EP_FUZZ_CHECK(es > 0 && elems <= SIZE_MAX / es && elems * es == t->nbytes);
        EP_FUZZ_CHECK(t->nbytes <= size);
        // Every byte is read: a tensor that runs past the mapping faults here.
        const uint8_t *p = t->data;
        unsigned acc = 0;
        for (size_t b = 0; b < t->nbytes; b++)
            acc += p[b];
        if (t->nbytes) {
            if (!lo || p < lo) lo = p;
            if (!hi || p + t->nbytes > hi) hi = p + t->nbytes;
        }
        if (ep_dtype_is_float(t->dtype) && elems <= sizeof g_buf / sizeof g_buf[0]) {
            EP_FUZZ_CHECK(ep_dtype_to_f32(t->dtype, t->data, g_buf, (size_t)elems) == EP_OK);
        }
        (void)acc;
    }
    if (lo) EP_FUZZ_CHECK((size_t)(hi - lo) <= size);
    (void)ep_st_metadata(f, "format");
    (void)ep_st_find(f, "model.layers.0.mlp.gate.weight");
    ep_st_close(f);
    ep_fuzz_accepted();
    return 0;
}
