// Helpers shared by the GPU tests: the skip protocol (exit 77 with the
// reason when no device is visible), the odd-shaped test models, random
// records and routes from fixed seeds, and the emulation of what cuBLAS
// computes for one column-major problem (to check layouts on the CPU).
#ifndef EP_CUDA_TEST_UTIL_H
#define EP_CUDA_TEST_UTIL_H

#include "cluster/cluster.h"
#include "common/model_cfg.h"
#include "common/routes.h"
#include "router/policy.h"

#define CUDA_TEST_SKIP 77 // ctest SKIP_RETURN_CODE

// Per row, max|gpu - cpu| <= TOL * max|cpu|: the CUDA experts store inputs,
// gate|up, activations and outputs in BF16 (8-bit mantissa) while the CPU
// reference is fp32. test_cuda_plan checks this bound against a CPU
// emulation of the same rounding (1.5e-2 measured there; the rest is headroom
// for the device's own accumulation order).
#define CUDA_TEST_BF16_TOL 3e-2

// Visible devices; when none, prints "# SKIP <test>: <why>" and returns 0.
int cuda_test_devices(const char *test);
// The MPI tests' skip, collective: 1 when every rank has a device of its own
// (NCCL refuses two ranks on one GPU); otherwise 0, each rank lacking one
// printing "# SKIP <test> (rank r of n): <why>"; -1 when the agreement failed.
int cuda_test_mpi_devices(ep_cluster *c, const char *test);
// The start of an MPI GPU test's main: ep_cluster_init, then the collective
// skip. Returns -1 (exit 1: the cluster or the agreement failed; the reason
// printed), 0 with the cluster freed (exit CUDA_TEST_SKIP on every rank) or
// 1 with *out the cluster to run on.
int cuda_test_mpi_begin(int *argc, char ***argv, const char *test, ep_cluster **out);

// Qwen3-like: 2 MoE layers, hidden 13, moe_inter 7, 11 experts, top-3.
void cuda_test_cfg_qwen(ep_model_cfg *c);
// DeepSeek-V2-like: layer 0 dense, 2 shared experts (width 14), x2.5 weights.
void cuda_test_cfg_deepseek(ep_model_cfg *c);

// n values uniform in [-scale, scale) from seed.
void cuda_test_fill(float *x, size_t n, uint64_t seed, float scale);
// n_rec records of 0..max_k distinct experts drawn from `allowed` (n_allowed
// ids), positive weights; pair_off [n_rec + 1] starts at `base` (to check
// that callers honour pair_off[0] != 0). Arrays sized n_rec * max_k + base.
void cuda_test_records(int n_rec, int max_k, const int *allowed, int n_allowed, int base,
                       uint64_t seed, int *pair_off, int *pair_expert, float *pair_weight);
// Routes of T tokens with K_i in [1, max_k] distinct experts of [0, E).
void cuda_test_routes(ep_routes *r, int T, int max_k, int E, uint64_t seed);

// Pick (kind EP_POLICY_PICK) or Ban&Pick with strategy s and one active
// domain, "keys", whose key experts are drawn from seed: per MoE layer
// 0..max_keys of them (some layers none, so the no-key path runs too).
// Ban&Pick also gets random layer sensitivities (Ban's layer term != 0).
ep_policy *cuda_test_pick_policy(const ep_model_cfg *c, ep_policy_kind kind, ep_pick_strategy s,
                                 int max_keys, uint64_t seed);

// What cublasGemmEx(CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, 1, A, lda, B, ldb, 0,
// C, ldc) computes, column-major, in fp32 with double accumulation:
// C[i + j*ldc] = Σ_p A[p + i*lda] * B[p + j*ldb].
void cuda_test_gemm_tn(int m, int n, int k, const float *A, int lda, const float *B, int ldb,
                       float *C, int ldc);

// max over rows of max|a - b| / max(max|b|, 1e-6).
double cuda_test_rel_err(const float *a, const float *b, int rows, int cols);

#endif
