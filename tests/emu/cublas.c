// Emulated cuBLAS: the GEMMs epserve calls (cublasSgemm, cublasGemmEx,
// cublasGemmStridedBatchedEx, cublasGemmGroupedBatchedEx) and the handle calls around them, run on
// the host at once (emulated streams are synchronous). Column-major, fp32 accumulation in k order,
// BF16 rounded as CUDA does (cuda_bf16.h's conversions, the kernels' own). Arguments cuBLAS rejects
// get its status and a message through emu_warn; operands the device could not read (a host
// pointer, a buffer smaller than the extent m, n, k and ld imply) are faults, as the device's MMU
// would make them. Pointer mode is host only.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu.h"

#define EMU_CUBLAS_MAGIC 0x63624c53u // "cbLS"

struct cublasContext {
    uint32_t magic; // EMU_CUBLAS_MAGIC while alive
    cudaStream_t stream;
    cublasMath_t math;
};

// One GEMM problem with its scalars read from the host.
typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k;
    float alpha, beta;
    const void *A, *B;
    void *C;
    int lda, ldb, ldc;
} gemm_problem;

static size_t type_size(cudaDataType t)
{
    return t == CUDA_R_32F ? 4 : 2;
}

static float load(const void *p, cudaDataType t, size_t i)
{
    if (t == CUDA_R_32F) return ((const float *)p)[i];
    return __bfloat162float((__nv_bfloat16){((const uint16_t *)p)[i]});
}

static void store(void *p, cudaDataType t, size_t i, float v)
{
    if (t == CUDA_R_32F)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = emu_f32_to_bf16_bits(v);
}

// ---- checks -------------------------------------------------------------------------------

static const char *op_name(cublasOperation_t op)
{
    switch (op) {
    case CUBLAS_OP_N:
        return "N";
    case CUBLAS_OP_T:
        return "T";
    case CUBLAS_OP_C:
        return "C";
    default:
        return "invalid";
    }
}

static const char *type_name(cudaDataType t)
{
    switch (t) {
    case CUDA_R_32F:
        return "CUDA_R_32F";
    case CUDA_R_16BF:
        return "CUDA_R_16BF";
    case CUDA_R_16F:
        return "CUDA_R_16F";
    case CUDA_R_64F:
        return "CUDA_R_64F";
    case CUDA_R_8F_E4M3:
        return "CUDA_R_8F_E4M3";
    case CUDA_R_8F_E5M2:
        return "CUDA_R_8F_E5M2";
    default:
        return "an unknown cudaDataType";
    }
}

static cublasStatus_t check_handle(const char *call, cublasHandle_t h)
{
    if (!h) {
        emu_warn("cublas", "%s: handle is NULL (cublasCreate not called?)", call);
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (h->magic != EMU_CUBLAS_MAGIC) {
        emu_warn("cublas", "%s: handle %p is not a live cublasHandle_t", call, (void *)h);
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

static int max1(int x)
{
    return x > 1 ? x : 1;
}

// cuBLAS's (and BLAS's) argument checks of one problem. `where` names the
// problem in the grouped call ("" otherwise).
static cublasStatus_t check_shape(const char *call, const char *where, const gemm_problem *p)
{
    if (p->ta != CUBLAS_OP_N && p->ta != CUBLAS_OP_T && p->ta != CUBLAS_OP_C) {
        emu_warn("cublas", "%s%s: transa = %d, expected CUBLAS_OP_N, _T or _C", call, where,
                 (int)p->ta);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (p->tb != CUBLAS_OP_N && p->tb != CUBLAS_OP_T && p->tb != CUBLAS_OP_C) {
        emu_warn("cublas", "%s%s: transb = %d, expected CUBLAS_OP_N, _T or _C", call, where,
                 (int)p->tb);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (p->m < 0 || p->n < 0 || p->k < 0) {
        emu_warn("cublas", "%s%s: expected m, n, k >= 0, found %d, %d, %d", call, where, p->m, p->n,
                 p->k);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    // Rows of A and B as stored, before op.
    const int rows_a = p->ta == CUBLAS_OP_N ? p->m : p->k;
    const int rows_b = p->tb == CUBLAS_OP_N ? p->k : p->n;
    if (p->lda < max1(rows_a)) {
        emu_warn("cublas", "%s%s: lda = %d, expected >= max(1, %s) = %d (transa %s)", call, where,
                 p->lda, p->ta == CUBLAS_OP_N ? "m" : "k", max1(rows_a), op_name(p->ta));
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (p->ldb < max1(rows_b)) {
        emu_warn("cublas", "%s%s: ldb = %d, expected >= max(1, %s) = %d (transb %s)", call, where,
                 p->ldb, p->tb == CUBLAS_OP_N ? "k" : "n", max1(rows_b), op_name(p->tb));
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (p->ldc < max1(p->m)) {
        emu_warn("cublas", "%s%s: ldc = %d, expected >= max(1, m) = %d", call, where, p->ldc,
                 max1(p->m));
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    return CUBLAS_STATUS_SUCCESS;
}

// Faults unless the column-major rows x cols matrix at p with leading
// dimension ld lies inside one device allocation.
static void check_matrix(const char *call, const char *where, const char *arg, const void *p,
                         int rows, int cols, int ld, cudaDataType t)
{
    if (rows == 0 || cols == 0) return;
    const size_t esz = type_size(t);
    const size_t elems = (size_t)(cols - 1) * (size_t)ld + (size_t)rows;
    if (elems > SIZE_MAX / esz)
        emu_fault("%s%s: %s: the extent of %d columns at ld %d overflows size_t", call, where, arg,
                  cols, ld);
    const size_t bytes = elems * esz;
    if (emu_is_device(p, bytes)) return;
    const char *why = !p                     ? "NULL"
                      : emu_is_pinned(p)     ? "pinned host memory, not device memory"
                      : !emu_is_device(p, 0) ? "not device memory (a host pointer or freed)"
                                             : "the allocation is smaller than that";
    emu_fault("%s%s: %s = %p: %d x %d %s at ld %d spans %zu bytes; %s", call, where, arg, p, rows,
              cols, type_name(t), ld, bytes, why);
}

// The device-side reads and writes of one problem, checked before it runs.
static void check_operands(const char *call, const char *where, const gemm_problem *p,
                           cudaDataType ab, cudaDataType c)
{
    if (p->m == 0 || p->n == 0) return;
    if (p->k > 0 && p->alpha != 0.0f) {
        if (p->ta == CUBLAS_OP_N)
            check_matrix(call, where, "A", p->A, p->m, p->k, p->lda, ab);
        else
            check_matrix(call, where, "A", p->A, p->k, p->m, p->lda, ab);
        if (p->tb == CUBLAS_OP_N)
            check_matrix(call, where, "B", p->B, p->k, p->n, p->ldb, ab);
        else
            check_matrix(call, where, "B", p->B, p->n, p->k, p->ldb, ab);
    }
    check_matrix(call, where, "C", p->C, p->m, p->n, p->ldc, c);
}

// Pointer mode host: the scalars are read by the host, so they must be
// host memory; a device pointer there would crash the real library.
static cublasStatus_t read_scalars(const char *call, const void *alpha, const void *beta,
                                   size_t count, float *a, float *b, size_t i)
{
    if (!alpha || !beta) {
        emu_warn("cublas", "%s: %s is NULL, expected a host pointer", call,
                 !alpha ? "alpha" : "beta");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (emu_is_device(alpha, count * sizeof(float)) || emu_is_device(beta, count * sizeof(float)))
        emu_fault("%s: %s is a device pointer, but the pointer mode is host", call,
                  emu_is_device(alpha, 1) ? "alpha" : "beta");
    *a = ((const float *)alpha)[i];
    *b = ((const float *)beta)[i];
    return CUBLAS_STATUS_SUCCESS;
}

// cuBLAS answers a NULL C that beta would scale with INVALID_VALUE; a NULL
// C that is only written faults in check_operands, as on the device.
static cublasStatus_t check_c_null(const char *call, const gemm_problem *p)
{
    if (p->C || p->m == 0 || p->n == 0 || p->beta == 0.0f) return CUBLAS_STATUS_SUCCESS;
    emu_warn("cublas", "%s: C is NULL, but beta = %g scales it", call, p->beta);
    return CUBLAS_STATUS_INVALID_VALUE;
}

// The compute types taken for fp32 accumulation; the fast ones would round
// the inputs on a GPU and are refused rather than emulated wrongly.
static cublasStatus_t check_compute(const char *call, cublasComputeType_t ct)
{
    if (ct == CUBLAS_COMPUTE_32F || ct == CUBLAS_COMPUTE_32F_PEDANTIC) return CUBLAS_STATUS_SUCCESS;
    emu_warn("cublas",
             "%s: computeType %d not emulated, expected CUBLAS_COMPUTE_32F (%d) or "
             "CUBLAS_COMPUTE_32F_PEDANTIC (%d)",
             call, (int)ct, (int)CUBLAS_COMPUTE_32F, (int)CUBLAS_COMPUTE_32F_PEDANTIC);
    return CUBLAS_STATUS_NOT_SUPPORTED;
}

// ---- compute ------------------------------------------------------------------------------

// C = alpha * op(A) op(B) + beta * C, accumulated in fp32 in k order; with
// beta == 0 C is not read, with alpha == 0 or k == 0 A and B are not.
static void gemm_run(const gemm_problem *p, cudaDataType ab, cudaDataType c)
{
    const bool use_ab = p->k > 0 && p->alpha != 0.0f;
    const size_t lda = (size_t)p->lda, ldb = (size_t)p->ldb, ldc = (size_t)p->ldc;
    for (int j = 0; j < p->n; j++) {
        for (int i = 0; i < p->m; i++) {
            float acc = 0.0f;
            for (int l = 0; use_ab && l < p->k; l++) {
                const size_t ia = p->ta == CUBLAS_OP_N ? (size_t)i + (size_t)l * lda
                                                       : (size_t)l + (size_t)i * lda;
                const size_t ib = p->tb == CUBLAS_OP_N ? (size_t)l + (size_t)j * ldb
                                                       : (size_t)j + (size_t)l * ldb;
                const float prod = load(p->A, ab, ia) * load(p->B, ab, ib);
                acc += prod;
            }
            const size_t ic = (size_t)i + (size_t)j * ldc;
            float v = use_ab ? p->alpha * acc : 0.0f;
            if (p->beta != 0.0f) {
                const float old = p->beta * load(p->C, c, ic);
                v += old;
            }
            store(p->C, c, ic, v);
        }
    }
}

// ---- API ----------------------------------------------------------------------------------

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle)
{
    if (!handle) {
        emu_warn("cublas", "cublasCreate: handle is NULL, expected a place to store it");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    struct cublasContext *h = calloc(1, sizeof *h);
    if (!h) return CUBLAS_STATUS_ALLOC_FAILED;
    h->magic = EMU_CUBLAS_MAGIC;
    h->math = CUBLAS_DEFAULT_MATH;
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle)
{
    cublasStatus_t rc = check_handle("cublasDestroy", handle);
    if (rc != CUBLAS_STATUS_SUCCESS) return rc;
    handle->magic = 0;
    free(handle);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId)
{
    cublasStatus_t rc = check_handle("cublasSetStream", handle);
    if (rc != CUBLAS_STATUS_SUCCESS) return rc;
    handle->stream = streamId;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    cublasStatus_t rc = check_handle("cublasSetMathMode", handle);
    if (rc != CUBLAS_STATUS_SUCCESS) return rc;
    const int base = (int)mode & ~(int)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base < CUBLAS_DEFAULT_MATH || base > CUBLAS_TF32_TENSOR_OP_MATH) {
        emu_warn("cublas",
                 "cublasSetMathMode: mode = %d, expected CUBLAS_DEFAULT_MATH, _TENSOR_OP_MATH, "
                 "_PEDANTIC_MATH or _TF32_TENSOR_OP_MATH, optionally | 16",
                 (int)mode);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS:
        return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR:
        return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR:
        return "error detected trying to check the license";
    default:
        return "unknown error";
    }
}

// One GEMM (cublasSgemm, cublasGemmEx) or a strided batch of them
// (cublasGemmStridedBatchedEx: batch b reads A + b * sa, B + b * sb and
// writes C + b * sc, in elements): the checks in cuBLAS's order, then the
// products; `call` names the entry point in messages.
static cublasStatus_t gemm_batch(const char *call, cublasHandle_t handle, cublasOperation_t transa,
                                 cublasOperation_t transb, int m, int n, int k, const void *alpha,
                                 const void *A, cudaDataType Atype, int lda, long long sa,
                                 const void *B, cudaDataType Btype, int ldb, long long sb,
                                 const void *beta, void *C, cudaDataType Ctype, int ldc,
                                 long long sc, int batch, cublasComputeType_t computeType)
{
    cublasStatus_t rc = check_handle(call, handle);
    if (rc != CUBLAS_STATUS_SUCCESS) return rc;
    gemm_problem p = {.ta = transa,
                      .tb = transb,
                      .m = m,
                      .n = n,
                      .k = k,
                      .A = A,
                      .B = B,
                      .C = C,
                      .lda = lda,
                      .ldb = ldb,
                      .ldc = ldc};
    if ((rc = check_shape(call, "", &p)) != CUBLAS_STATUS_SUCCESS) return rc;
    if (batch < 0) {
        emu_warn("cublas", "%s: batchCount = %d, expected >= 0", call, batch);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if ((rc = check_compute(call, computeType)) != CUBLAS_STATUS_SUCCESS) return rc;
    const bool ok =
        Atype == Btype && ((Atype == CUDA_R_32F && Ctype == CUDA_R_32F) ||
                           (Atype == CUDA_R_16BF && (Ctype == CUDA_R_16BF || Ctype == CUDA_R_32F)));
    if (!ok) {
        emu_warn("cublas",
                 "%s: Atype, Btype, Ctype = %s, %s, %s not emulated, expected 32F, 32F, 32F or "
                 "16BF, 16BF, 16BF or 16BF, 16BF, 32F",
                 call, type_name(Atype), type_name(Btype), type_name(Ctype));
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if ((rc = read_scalars(call, alpha, beta, 1, &p.alpha, &p.beta, 0)) != CUBLAS_STATUS_SUCCESS)
        return rc;
    if ((rc = check_c_null(call, &p)) != CUBLAS_STATUS_SUCCESS) return rc;
    // Every problem's operands are checked before any runs, as a fault
    // would stop the kernel before it wrote.
    const size_t ea = type_size(Atype), ec = type_size(Ctype);
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < batch; b++) {
            gemm_problem q = p;
            q.A = (const char *)A + (ptrdiff_t)(b * sa) * (ptrdiff_t)ea;
            q.B = (const char *)B + (ptrdiff_t)(b * sb) * (ptrdiff_t)ea;
            q.C = (char *)C + (ptrdiff_t)(b * sc) * (ptrdiff_t)ec;
            char where[32] = "";
            if (batch > 1 || sa || sb || sc) snprintf(where, sizeof where, " (batch %d)", b);
            if (pass == 0)
                check_operands(call, where, &q, Atype, Ctype);
            else
                gemm_run(&q, Atype, Ctype);
        }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                              cublasOperation_t transb, int m, int n, int k, const float *alpha,
                              const float *A, int lda, const float *B, int ldb, const float *beta,
                              float *C, int ldc)
{
    return gemm_batch("cublasSgemm", handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, 0,
                      B, CUDA_R_32F, ldb, 0, beta, C, CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void *alpha,
                            const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                            cublasGemmAlgo_t algo)
{
    (void)algo; // every algorithm computes the same here
    return gemm_batch("cublasGemmEx", handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B,
                      Btype, ldb, 0, beta, C, Ctype, ldc, 0, 1, computeType);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                          cublasOperation_t transb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long int strideA, const void *B,
                                          cudaDataType Btype, int ldb, long long int strideB,
                                          const void *beta, void *C, cudaDataType Ctype, int ldc,
                                          long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t algo)
{
    (void)algo;
    return gemm_batch("cublasGemmStridedBatchedEx", handle, transa, transb, m, n, k, alpha, A,
                      Atype, lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype, ldc, strideC,
                      batchCount, computeType);
}

// EP_EMU_CUBLAS_GROUPED=0 makes the grouped call answer NOT_SUPPORTED, as a
// cuBLAS without BF16 grouped GEMMs does, so callers' fallbacks run in tests.
static bool grouped_enabled(void)
{
    const char *v = getenv("EP_EMU_CUBLAS_GROUPED");
    return !v || strcmp(v, "0") != 0;
}

// Group g's shape from the grouped call's per-group arrays.
#define GROUP_PROBLEM(g)                                                                           \
    ((gemm_problem){.ta = transa_array[g],                                                         \
                    .tb = transb_array[g],                                                         \
                    .m = m_array[g],                                                               \
                    .n = n_array[g],                                                               \
                    .k = k_array[g],                                                               \
                    .lda = lda_array[g],                                                           \
                    .ldb = ldb_array[g],                                                           \
                    .ldc = ldc_array[g]})

cublasStatus_t cublasGemmGroupedBatchedEx(
    cublasHandle_t handle, const cublasOperation_t transa_array[],
    const cublasOperation_t transb_array[], const int m_array[], const int n_array[],
    const int k_array[], const void *alpha_array, const void *const Aarray[], cudaDataType_t Atype,
    const int lda_array[], const void *const Barray[], cudaDataType_t Btype, const int ldb_array[],
    const void *beta_array, void *const Carray[], cudaDataType_t Ctype, const int ldc_array[],
    int group_count, const int group_size[], cublasComputeType_t computeType)
{
    static const char call[] = "cublasGemmGroupedBatchedEx";
    cublasStatus_t rc = check_handle(call, handle);
    if (rc != CUBLAS_STATUS_SUCCESS) return rc;
    if (!grouped_enabled()) {
        emu_warn("cublas", "%s: NOT_SUPPORTED because EP_EMU_CUBLAS_GROUPED=0", call);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (group_count < 0) {
        emu_warn("cublas", "%s: group_count = %d, expected >= 0", call, group_count);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (group_count == 0) return CUBLAS_STATUS_SUCCESS;
    if (!transa_array || !transb_array || !m_array || !n_array || !k_array || !lda_array ||
        !ldb_array || !ldc_array || !group_size) {
        emu_warn("cublas", "%s: a host array of the %d groups is NULL", call, group_count);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if ((rc = check_compute(call, computeType)) != CUBLAS_STATUS_SUCCESS) return rc;
    const bool ok =
        Atype == Btype && Btype == Ctype && (Atype == CUDA_R_32F || Atype == CUDA_R_16BF);
    if (!ok) {
        emu_warn("cublas",
                 "%s: Atype, Btype, Ctype = %s, %s, %s not emulated, expected all CUDA_R_32F or "
                 "all CUDA_R_16BF",
                 call, type_name(Atype), type_name(Btype), type_name(Ctype));
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }

    // Arguments first, for every group, as the library checks them before
    // launching anything.
    size_t total = 0;
    char where[64];
    for (int g = 0; g < group_count; g++) {
        snprintf(where, sizeof where, " (group %d)", g);
        if (group_size[g] < 0) {
            emu_warn("cublas", "%s%s: group_size = %d, expected >= 0", call, where, group_size[g]);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
        gemm_problem p = GROUP_PROBLEM(g);
        if ((rc = check_shape(call, where, &p)) != CUBLAS_STATUS_SUCCESS) return rc;
        total += (size_t)group_size[g];
    }
    float a, b;
    if ((rc = read_scalars(call, alpha_array, beta_array, (size_t)group_count, &a, &b, 0)) !=
        CUBLAS_STATUS_SUCCESS)
        return rc;
    if (total == 0) return CUBLAS_STATUS_SUCCESS;

    // The pointer arrays are read by the device.
    const void *const *arr[3] = {Aarray, Barray, (const void *const *)Carray};
    static const char *arr_name[3] = {"Aarray", "Barray", "Carray"};
    for (int i = 0; i < 3; i++)
        if (!emu_is_device(arr[i], total * sizeof(void *)))
            emu_fault("%s: %s = %p: %zu pointers (%zu bytes) are not inside one device allocation",
                      call, arr_name[i], (const void *)arr[i], total, total * sizeof(void *));

    size_t q = 0;
    for (int g = 0; g < group_count; g++) {
        gemm_problem p = GROUP_PROBLEM(g);
        (void)read_scalars(call, alpha_array, beta_array, (size_t)group_count, &p.alpha, &p.beta,
                           (size_t)g);
        for (int s = 0; s < group_size[g]; s++, q++) {
            snprintf(where, sizeof where, " (group %d, problem %zu)", g, q);
            p.A = Aarray[q];
            p.B = Barray[q];
            p.C = Carray[q];
            check_operands(call, where, &p, Atype, Ctype);
            gemm_run(&p, Atype, Ctype);
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}
#undef GROUP_PROBLEM
