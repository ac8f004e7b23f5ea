// A weight matrix as the CPU products read it: [rows, cols] row-major (HF's
// [out, in]) in fp32 or BF16, either owned or pointing into a checkpoint's
// mapping (ep_weights_read_mat), so a BF16 checkpoint is used where it lies.
#ifndef EP_MAT_H
#define EP_MAT_H

#include "common/dtype.h"

typedef struct {
    ep_dtype dtype; // EP_DTYPE_F32 or EP_DTYPE_BF16
    int64_t rows, cols;
    const void *data; // [rows, cols] row-major; NULL for an absent matrix
    void *owned;      // what ep_mat_free frees; NULL when data lies in a mapping
                      // that the ep_weights it came from keeps alive
} ep_mat;

static inline size_t ep_mat_bytes(const ep_mat *m)
{
    return m->data ? (size_t)m->rows * (size_t)m->cols * ep_dtype_size(m->dtype) : 0;
}
void ep_mat_free(ep_mat *m); // frees what it owns and clears it; NULL ok
// out[cols] = row r widened to fp32 (exact for both dtypes).
void ep_mat_row_f32(const ep_mat *m, int64_t r, float *out);

#endif
