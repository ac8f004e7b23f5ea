// The emulated CUDA device itself (EP_CUDA_EMU builds only): a kernel that
// writes one past its buffer dies naming the kernel (in a child process), so
// does one that reads through a wild index,
// a host write past a buffer is caught at cudaFree, copies of the wrong
// direction or size are refused with the real runtime's errors, the
// last-error rules, poisoned fresh memory, __syncthreads as a barrier, a
// missing barrier shown by a stale read, and
// the bf16 conversions bit-exact with common/dtype.h except NaN (CUDA makes
// every NaN 0x7fff, dtype.c keeps sign and payload), and event timing
// (host time between records; refused, as CUDA does, for an event never
// recorded or made with cudaEventDisableTiming).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/dtype.h"
#include "emu.h"
#include "test_emu_kernels.h"

#define CK(call) assert_int_equal((int)(call), (int)cudaSuccess)

// Runs fn in a child with stderr into a pipe; returns the child's stderr
// (at most cap - 1 bytes) and its wait status in *status.
static void run_child(void (*fn)(void), char *out, size_t cap, int *status)
{
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 2);
        fn();
        _exit(0);
    }
    close(fd[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fd[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(fd[0]);
    assert_int_equal(waitpid(pid, status, 0), pid);
}

static void kernel_past_end(void)
{
    float *p;
    if (cudaMalloc((void **)&p, 37 * sizeof(float))) _exit(3);
    emu_test_past_end(p, 37);
    _exit(0); // not reached: the launch faults
}

static void test_kernel_past_end_named(void **state)
{
    char msg[4096];
    int st;
    run_child(kernel_past_end, msg, sizeof msg, &st);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    assert_non_null(strstr(msg, "cuda-emu: FAULT: kernel emu_test_past_end_kernel"));
    assert_non_null(strstr(msg, "guard zone after the 148-byte device allocation"));
    assert_non_null(strstr(msg, "byte 0 past its end"));
}

// A kernel that reads far outside every allocation (an index gone wrong)
// dies naming the kernel: the emulation's SIGSEGV handler, or under ASan its
// report, whose stack holds the kernel's frame.
static void kernel_wild_read(void)
{
    float *x, *y;
    int *idx;
    const int h_idx[2] = {0, 1 << 30}; // 4 GiB past x
    if (cudaMalloc((void **)&x, 2 * sizeof(float)) || cudaMalloc((void **)&y, 2 * sizeof(float)) ||
        cudaMalloc((void **)&idx, sizeof h_idx) ||
        cudaMemcpy(idx, h_idx, sizeof h_idx, cudaMemcpyHostToDevice))
        _exit(3);
    emu_test_gather(x, idx, y, 2);
    _exit(0); // not reached: the read faults
}

static void test_kernel_wild_read_named(void **state)
{
    char msg[16384];
    int st;
    run_child(kernel_wild_read, msg, sizeof msg, &st);
    if (!strstr(msg, "emu_test_gather_kernel")) fprintf(stderr, "the child said:\n%s\n", msg);
    assert_true(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 3));
    assert_non_null(strstr(msg, "emu_test_gather_kernel"));
}

static void host_past_end(void)
{
    unsigned char *p;
    if (cudaMalloc((void **)&p, 10)) _exit(3);
    p[-1] = 0; // the host writes device memory here only because it is emulated
    cudaFree(p);
    _exit(0);
}

static void test_free_checks_guard(void **state)
{
    char msg[4096];
    int st;
    run_child(host_past_end, msg, sizeof msg, &st);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    assert_non_null(strstr(msg, "cudaFree: the guard zone before the 10-byte device allocation"));
}

static void test_kernel_in_bounds(void **state)
{
    float *p;
    CK(cudaMalloc((void **)&p, 38 * sizeof(float)));
    CK(emu_test_past_end(p, 37)); // writes p[0..37]: in bounds of 38
    float h[38];
    CK(cudaMemcpy(h, p, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 38; i++)
        assert_true(h[i] == 1.0f);
    CK(cudaFree(p));
}

static void test_memcpy_kinds(void **state)
{
    float host[16] = {0}, *dev;
    CK(cudaMalloc((void **)&dev, sizeof host));
    assert_true(emu_is_device(dev, sizeof host) && !emu_is_device(dev, sizeof host + 1));
    assert_false(emu_is_device(host, 4));
    // Fresh device memory is poisoned: NaN as fp32.
    CK(cudaMemcpy(host, dev, sizeof host, cudaMemcpyDeviceToHost));
    assert_true(isnan(host[0]) && isnan(host[15]));
    // Host and device swapped, for each direction.
    assert_int_equal(cudaMemcpy(host, dev, sizeof host, cudaMemcpyHostToDevice),
                     cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(dev, host, sizeof host, cudaMemcpyDeviceToHost),
                     cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(host, host + 8, 8 * sizeof(float), cudaMemcpyDeviceToDevice),
                     cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToHost),
                     cudaErrorInvalidValue);
    // Past the allocation's end, a bad kind, a NULL source, memset of host memory.
    assert_int_equal(cudaMemcpy(dev + 1, host, sizeof host, cudaMemcpyHostToDevice),
                     cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(dev, host, sizeof host, (enum cudaMemcpyKind)7),
                     cudaErrorInvalidMemcpyDirection);
    assert_int_equal(cudaMemcpy(dev, NULL, 4, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    assert_int_equal(cudaMemset(host, 0, sizeof host), cudaErrorInvalidValue);
    // The last error is the latest failure until cudaGetLastError reads it.
    assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidValue);
    assert_int_equal(cudaPeekAtLastError(), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidValue);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    // The right ones work; cudaMemcpyDefault infers the direction.
    for (int i = 0; i < 16; i++)
        host[i] = (float)i;
    CK(cudaMemcpy(dev, host, sizeof host, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dev, dev + 8, 8 * sizeof(float), cudaMemcpyDefault));
    CK(cudaMemcpy(host, dev, sizeof host, cudaMemcpyDefault));
    assert_true(host[0] == 8.0f && host[7] == 15.0f && host[8] == 8.0f);
    struct cudaPointerAttributes a;
    CK(cudaPointerGetAttributes(&a, dev + 3));
    assert_int_equal(a.type, cudaMemoryTypeDevice);
    CK(cudaPointerGetAttributes(&a, host));
    assert_int_equal(a.type, cudaMemoryTypeUnregistered);
    void *pin;
    CK(cudaMallocHost(&pin, 64));
    assert_true(emu_is_pinned(pin) && !emu_is_pinned(host));
    CK(cudaPointerGetAttributes(&a, pin));
    assert_int_equal(a.type, cudaMemoryTypeHost);
    assert_int_equal(cudaFree(pin), cudaErrorInvalidValue);
    assert_int_equal(cudaFreeHost(dev), cudaErrorInvalidValue);
    CK(cudaFreeHost(pin));
    assert_int_equal(cudaFree(host), cudaErrorInvalidValue);
    CK(cudaFree(dev));
    (void)cudaGetLastError();
}

static void test_device_and_launch_config(void **state)
{
    int n = 0;
    CK(cudaGetDeviceCount(&n));
    assert_true(n >= 1);
    struct cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    assert_string_equal(p.name, "epserve emulated device");
    assert_int_equal(p.major * 10 + p.minor, 90);
    assert_int_equal(cudaSetDevice(n), cudaErrorInvalidDevice);
    assert_string_equal(cudaGetErrorName(cudaGetLastError()), "cudaErrorInvalidDevice");
    int *out;
    CK(cudaMalloc((void **)&out, 64 * sizeof(int)));
    // 2000 threads per block: refused, nothing runs, the last error says so.
    assert_int_equal(emu_test_barrier(out, 1, 2000, 2000), cudaErrorInvalidConfiguration);
    assert_string_equal(cudaGetErrorString(cudaErrorInvalidConfiguration),
                        "invalid configuration argument");
    CK(cudaFree(out));
}

static void test_event_elapsed(void **state)
{
    cudaEvent_t a, b, off;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaEventCreateWithFlags(&off, cudaEventDisableTiming));
    float ms = -1;
    // b never recorded yet: an invalid handle, as CUDA says.
    CK(cudaEventRecord(a, NULL));
    assert_int_equal(cudaEventElapsedTime(&ms, a, b), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);
    usleep(20000);
    CK(cudaEventRecord(b, NULL));
    CK(cudaEventElapsedTime(&ms, a, b));
    assert_true(ms >= 19.0f && ms < 5000.0f);
    CK(cudaEventElapsedTime(&ms, b, a)); // the other way round: negative, as CUDA gives
    assert_true(ms <= -19.0f);
    CK(cudaEventRecord(off, NULL));
    assert_int_equal(cudaEventElapsedTime(&ms, a, off), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaEventElapsedTime(NULL, a, b), cudaErrorInvalidValue);
    (void)cudaGetLastError();
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    CK(cudaEventDestroy(off));
}

static void test_syncthreads(void **state)
{
    enum { B = 5, T = 64 };
    int *dout, out[B * T];
    CK(cudaMalloc((void **)&dout, sizeof out));
    for (int quit = T; quit >= T - 7; quit -= 7) {
        CK(emu_test_barrier(dout, B, T, quit));
        CK(cudaMemcpy(out, dout, sizeof out, cudaMemcpyDeviceToHost));
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                assert_int_equal(out[b * T + t], t < quit ? b * 1000 + (t + 1) % quit : -1);
    }
    CK(cudaFree(dout));
}

// A kernel that reads its neighbours' slots without a barrier after
// writing its own: the emulator runs a block's threads in turns, ascending
// and descending from one round to the next, so in one launch every thread
// but the last to run reads its upper neighbour's slot before it is
// written, and in the next the lower one's (on a GPU some thread may; here
// the stale value shows the missing barrier every time).
static void test_race_shows(void **state)
{
    enum { T = 32 };
    int *dbuf, *dout, out[2 * T], stale_up[2] = {0}, stale_down[2] = {0};
    CK(cudaMalloc((void **)&dbuf, T * sizeof(int)));
    CK(cudaMalloc((void **)&dout, sizeof out));
    for (int r = 0; r < 2; r++) {
        CK(cudaMemset(dbuf, 0xFF, T * sizeof(int))); // -1
        CK(emu_test_race(dbuf, dout, T));
        CK(cudaMemcpy(out, dout, sizeof out, cudaMemcpyDeviceToHost));
        for (int t = 0; t < T; t++) {
            const int up = out[2 * t], down = out[2 * t + 1];
            assert_true(up == -1 || up == (t + 1) % T);
            assert_true(down == -1 || down == (t + T - 1) % T);
            stale_up[r] += up == -1;
            stale_down[r] += down == -1;
        }
        // T - 1 one way, and the wrap-around read of the first thread to run
        assert_int_equal(stale_up[r] + stale_down[r], T);
        assert_true(stale_up[r] == 1 || stale_up[r] == T - 1);
    }
    assert_int_not_equal(stale_up[0], stale_up[1]); // one launch each way
    CK(cudaFree(dbuf));
    CK(cudaFree(dout));
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

// The nearest e5m2 code to a finite |a| below the overflow point, by
// search over every code's value (common/dtype.h decodes them): ties go to
// the even code, as round-to-nearest-even does.
static unsigned char e5m2_nearest(double a)
{
    unsigned char best = 0;
    double bd = INFINITY;
    for (unsigned c = 0; c < 0x7C; c++) { // the finite non-negative codes
        const double d = fabs((double)ep_fp8_e5m2_to_f32((uint8_t)c) - a);
        if (d < bd || (d == bd && !(c & 1u))) bd = d, best = (unsigned char)c;
    }
    return best;
}

static void test_fp8_bit_exact(void **state)
{
    // Decoding: every code, against common/dtype.h.
    for (unsigned c = 0; c < 256; c++) {
        const float a = emu_fp8_to_float((unsigned char)c, __NV_E4M3);
        const float b = ep_fp8_e4m3_to_f32((uint8_t)c);
        assert_true(isnan(a) ? isnan(b) : f32_bits(a) == f32_bits(b));
        const float x = emu_fp8_to_float((unsigned char)c, __NV_E5M2);
        const float y = ep_fp8_e5m2_to_f32((uint8_t)c);
        assert_true(isnan(x) ? isnan(y) : f32_bits(x) == f32_bits(y));
    }
    // Encoding: fp32 patterns across every exponent (top 16 bits) with low
    // halves around e4m3's and e5m2's rounding points.
    static const uint32_t lows[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff};
    static const uint32_t mids[] = {0x00000, 0x0ffff, 0x10000, 0x10001, 0x1ffff, 0x3ffff};
    long n = 0;
    for (uint32_t hi = 0; hi < 0x10000; hi++)
        for (size_t j = 0; j < 6; j++) {
            const uint32_t u = (hi << 16 | lows[j]) ^ (hi & 1u ? mids[j] : 0u);
            float f;
            memcpy(&f, &u, sizeof f);
            const unsigned char sign = (unsigned char)(u >> 24 & 0x80u);
            const unsigned char e4 = __nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
            const unsigned char e5 = __nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E5M2);
            const double a = fabs((double)f);
            if (isnan(f)) { // CUDA keeps the sign; e5m2 keeps two payload bits, quiet
                assert_int_equal(e4, sign | 0x7F);
                assert_int_equal(e5, sign | 0x7E | (u >> 21 & 3u));
                continue;
            }
            assert_int_equal(e4, ep_f32_to_fp8_e4m3(f)); // saturating, as __NV_SATFINITE
            if (a >= 61440.0) {                          // past 57344 + half an ulp
                assert_int_equal(e5, sign | 0x7B);
                assert_int_equal(__nv_cvt_float_to_fp8(f, __NV_NOSAT, __NV_E5M2), sign | 0x7C);
            } else {
                assert_int_equal(e5, sign | e5m2_nearest(a));
            }
            if (a > 464.0)
                assert_int_equal(__nv_cvt_float_to_fp8(f, __NV_NOSAT, __NV_E4M3), sign | 0x7F);
            n++;
        }
    assert_true(n > 300000);
}

static void test_bf16_bit_exact(void **state)
{
    // Every bf16-sized top half with low halves around the rounding points:
    // zeros, subnormals, normals, ties to even, carries into inf, inf, NaN.
    static const uint32_t lows[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff};
    long nan = 0;
    for (uint32_t hi = 0; hi < 0x10000; hi++)
        for (size_t j = 0; j < sizeof lows / sizeof lows[0]; j++) {
            const uint32_t u = hi << 16 | lows[j];
            float f;
            memcpy(&f, &u, sizeof f);
            const unsigned short got = __float2bfloat16_rn(f).x;
            if (isnan(f)) {
                assert_int_equal(got, 0x7fff); // CUDA's canonical NaN
                assert_true(isnan(ep_bf16_to_f32(ep_f32_to_bf16(f))));
                nan++;
            } else {
                assert_int_equal(got, ep_f32_to_bf16(f));
            }
        }
    assert_true(nan > 0);
    for (uint32_t h = 0; h < 0x10000; h++) {
        const __nv_bfloat16 b = {(unsigned short)h};
        const float f = __bfloat162float(b);
        if (isnan(f))
            assert_true(isnan(ep_bf16_to_f32((uint16_t)h)));
        else
            assert_int_equal(f32_bits(f), f32_bits(ep_bf16_to_f32((uint16_t)h)));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernel_past_end_named),
        cmocka_unit_test(test_kernel_wild_read_named),
        cmocka_unit_test(test_free_checks_guard),
        cmocka_unit_test(test_kernel_in_bounds),
        cmocka_unit_test(test_memcpy_kinds),
        cmocka_unit_test(test_device_and_launch_config),
        cmocka_unit_test(test_syncthreads),
        cmocka_unit_test(test_race_shows),
        cmocka_unit_test(test_event_elapsed),
        cmocka_unit_test(test_bf16_bit_exact),
        cmocka_unit_test(test_fp8_bit_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
