// dtype conversions against hand-computed bit patterns (ties to even,
// overflow, subnormals, NaN/Inf), exhaustive decode->encode round trips,
// a nearest-neighbour property check on random floats, and bulk conversion.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/dtype.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float fbits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t bitsf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_names_sizes(void **state)
{
    const struct {
        ep_dtype t;
        const char *name;
        size_t size;
        bool fl;
    } want[] = {
        {EP_DTYPE_F32, "F32", 4, true},         {EP_DTYPE_F16, "F16", 2, true},
        {EP_DTYPE_BF16, "BF16", 2, true},       {EP_DTYPE_F8_E4M3, "F8_E4M3", 1, true},
        {EP_DTYPE_F8_E5M2, "F8_E5M2", 1, true}, {EP_DTYPE_F64, "F64", 8, true},
        {EP_DTYPE_I64, "I64", 8, false},        {EP_DTYPE_I32, "I32", 4, false},
        {EP_DTYPE_I16, "I16", 2, false},        {EP_DTYPE_I8, "I8", 1, false},
        {EP_DTYPE_U8, "U8", 1, false},          {EP_DTYPE_BOOL, "BOOL", 1, false},
    };
    assert_int_equal(sizeof want / sizeof *want, EP_DTYPE_COUNT);
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        assert_string_equal(ep_dtype_name(want[i].t), want[i].name);
        assert_int_equal(ep_dtype_size(want[i].t), want[i].size);
        assert_int_equal(ep_dtype_is_float(want[i].t), want[i].fl);
        ep_dtype p = EP_DTYPE_COUNT;
        assert_true(ep_dtype_parse(want[i].name, &p));
        assert_int_equal(p, want[i].t);
    }
    ep_dtype p;
    assert_false(ep_dtype_parse("bf16", &p));
    assert_false(ep_dtype_parse("FP32", &p));
    assert_false(ep_dtype_parse("", &p));
    assert_false(ep_dtype_parse(NULL, &p));
}

static void test_bf16(void **state)
{
    const struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x3f800000, 0x3f80}, // 1.0
        {0x3f808000, 0x3f80}, // tie, kept bit even -> down
        {0x3f818000, 0x3f82}, // tie, kept bit odd -> up
        {0x3f808001, 0x3f81}, // just above the tie
        {0x3f807fff, 0x3f80}, // just below the tie
        {0xbf818000, 0xbf82}, // negative tie, odd -> away from zero
        {0x7f7fffff, 0x7f80}, // FLT_MAX overflows to +Inf
        {0x7f7f7fff, 0x7f7f}, // below the overflow tie
        {0x7f800000, 0x7f80}, // +Inf
        {0xff800000, 0xff80}, // -Inf
        {0x80000000, 0x8000}, // -0
        {0x00000001, 0x0000}, // smallest fp32 subnormal
        {0x00008000, 0x0000}, // subnormal tie, even -> 0
        {0x00018000, 0x0002}, // subnormal tie, odd -> up
        {0x007fffff, 0x0080}, // largest subnormal rounds to smallest normal
        {0x40490fdb, 0x4049}, // pi
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint16_t got = ep_f32_to_bf16(fbits(cases[i].in));
        if (got != cases[i].out)
            fprintf(stderr, "bf16(0x%08x) = 0x%04x, expected 0x%04x\n", cases[i].in, got,
                    cases[i].out);
        assert_int_equal(got, cases[i].out);
    }
    // NaNs stay NaN even when the payload sits only in the dropped bits.
    uint16_t n1 = ep_f32_to_bf16(fbits(0x7f800001)), n2 = ep_f32_to_bf16(fbits(0xff800100));
    assert_int_equal(n1 & 0x7f80, 0x7f80);
    assert_true((n1 & 0x7f) != 0);
    assert_int_equal(n2 & 0xff80, 0xff80);
    assert_true((n2 & 0x7f) != 0);
    assert_true(ep_bf16_to_f32(0x4049) == 3.140625f);
    assert_true(ep_bf16_to_f32(0xc000) == -2.0f);
    assert_true(ep_bf16_round(1.00390625f) == 1.0f); // 1 + 2^-8: tie to even
    // Exhaustive: every bf16 value decodes and re-encodes to itself.
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ep_bf16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        assert_int_equal(ep_f32_to_bf16(f), h);
    }
}

static void test_f16(void **state)
{
    const struct {
        float in;
        uint16_t out;
    } cases[] = {
        {1.0f, 0x3c00},
        {-2.0f, 0xc000},
        {0.1f, 0x2e66},
        {65504.0f, 0x7bff}, // max
        {65519.0f, 0x7bff}, // below the overflow tie
        {65520.0f, 0x7c00}, // the tie goes to the even neighbour: Inf
        {1e9f, 0x7c00},
        {-1e9f, 0xfc00},
        {0x1p-14f, 0x0400},            // smallest normal
        {0x1p-24f, 0x0001},            // smallest subnormal
        {0x1p-25f, 0x0000},            // half of it: tie to even (0)
        {0x1.8p-25f, 0x0001},          // above that tie
        {0x1.8p-24f, 0x0002},          // 1.5 units: tie between 1 and 2 -> 2
        {1023.0f * 0x1p-24f, 0x03ff},  // largest subnormal
        {1023.5f * 0x1p-24f, 0x0400},  // tie, odd -> up into the normals
        {1.0f + 0x1p-11f, 0x3c00},     // tie, even -> down
        {1.0f + 3 * 0x1p-11f, 0x3c02}, // tie, odd -> up
        {-0.0f, 0x8000},
        {0x1p-130f, 0x0000}, // fp32 subnormal
        {-0x1p-30f, 0x8000}, // underflow keeps the sign
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint16_t got = ep_f32_to_f16(cases[i].in);
        if (got != cases[i].out)
            fprintf(stderr, "f16(%a) = 0x%04x, expected 0x%04x\n", (double)cases[i].in, got,
                    cases[i].out);
        assert_int_equal(got, cases[i].out);
    }
    assert_int_equal(ep_f32_to_f16(INFINITY), 0x7c00);
    assert_int_equal(ep_f32_to_f16(-INFINITY), 0xfc00);
    uint16_t n = ep_f32_to_f16(fbits(0x7f800001));
    assert_int_equal(n & 0x7c00, 0x7c00);
    assert_true((n & 0x3ff) != 0);
    assert_true(ep_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(ep_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(ep_f16_to_f32(0xfc00) == -INFINITY);
    assert_true(isnan(ep_f16_to_f32(0x7e00)));
    assert_true(signbit(ep_f16_to_f32(0x8000)) && ep_f16_to_f32(0x8000) == 0.0f);
    assert_true(ep_f16_to_f32(0x83ff) == -1023.0f * 0x1p-24f);
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ep_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        assert_int_equal(ep_f32_to_f16(f), h);
    }
}

// Property: the encoding is the nearest representable value, ties to even,
// checked against both neighbours on random floats across the whole range.
static void test_f16_nearest_random(void **state)
{
    uint64_t s = 0x243f6a8885a308d3ull;
    for (int i = 0; i < 200000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        // exponents from 2^-27 to 2^17 cover subnormals, normals and overflow
        float x =
            ldexpf(1.0f + (float)((s >> 40) & 0xffffff) / 16777216.0f, (int)((s >> 20) % 45) - 27);
        if (s & 1) x = -x;
        uint16_t h = ep_f32_to_f16(x);
        double v = ep_f16_to_f32(h);
        double ax = fabs((double)x);
        if (isinf(v)) {
            assert_true(ax >= 65520.0);
            continue;
        }
        uint16_t mag = h & 0x7fff;
        double err = fabs(ax - fabs(v));
        if (mag < 0x7bff) {
            double up = ep_f16_to_f32((uint16_t)(mag + 1));
            assert_true(err <= fabs(up - ax));
            if (err == fabs(up - ax)) assert_int_equal(mag & 1, 0);
        } else {
            assert_true(ax < 65520.0);
        }
        if (mag > 0) {
            double dn = ep_f16_to_f32((uint16_t)(mag - 1));
            assert_true(err <= fabs(ax - dn));
            if (err == fabs(ax - dn)) assert_int_equal(mag & 1, 0);
        }
    }
}

static void test_fp8_e4m3(void **state)
{
    const struct {
        float in;
        uint8_t out;
    } cases[] = {
        {1.0f, 0x38},          {-1.0f, 0xb8},   {448.0f, 0x7e}, // max
        {-448.0f, 0xfe},       {500.0f, 0x7e},                  // saturates
        {464.0f, 0x7e},                         // the tie above 448 saturates too (never NaN)
        {-1e30f, 0xfe},        {0x1p-9f, 0x01}, // smallest subnormal
        {7 * 0x1p-9f, 0x07},                    // largest subnormal
        {0x1p-6f, 0x08},                        // smallest normal
        {0x1p-10f, 0x00},                       // half of the smallest subnormal: tie to even (0)
        {3 * 0x1p-10f, 0x02},                   // 1.5 units: tie -> 2
        {15 * 0x1p-10f, 0x08},                  // 7.5 units: tie, odd -> up into the normals
        {1.0625f, 0x38},                        // tie between 1.0 and 1.125 -> even (1.0)
        {1.1875f, 0x3a},                        // tie between 1.125 and 1.25 -> even (1.25)
        {1.2f, 0x3a},          {0.3f, 0x2a},    // 0.3 = 1.2 * 2^-2 -> 1.25 * 2^-2 (exp 5, mant 2)
        {240.0f, 0x77},                         // 1.875 * 2^7
        {-0.0f, 0x80},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint8_t got = ep_f32_to_fp8_e4m3(cases[i].in);
        if (got != cases[i].out)
            fprintf(stderr, "e4m3(%a) = 0x%02x, expected 0x%02x\n", (double)cases[i].in, got,
                    cases[i].out);
        assert_int_equal(got, cases[i].out);
    }
    assert_int_equal(ep_f32_to_fp8_e4m3(INFINITY), 0x7e);
    assert_int_equal(ep_f32_to_fp8_e4m3(-INFINITY), 0xfe);
    assert_int_equal(ep_f32_to_fp8_e4m3(NAN) & 0x7f, 0x7f);
    assert_true(isnan(ep_fp8_e4m3_to_f32(0x7f)));
    assert_true(isnan(ep_fp8_e4m3_to_f32(0xff)));
    assert_true(ep_fp8_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(ep_fp8_e4m3_to_f32(0x78) == 256.0f); // S.1111.000 is a number (no Inf)
    assert_true(ep_fp8_e4m3_to_f32(0x01) == 0x1p-9f);
    assert_true(ep_fp8_e4m3_to_f32(0x3a) == 1.25f);
    assert_true(ep_fp8_e4m3_to_f32(0xb8) == -1.0f);
    assert_true(signbit(ep_fp8_e4m3_to_f32(0x80)));
    int nans = 0;
    for (int v = 0; v < 256; v++) {
        float f = ep_fp8_e4m3_to_f32((uint8_t)v);
        if (isnan(f)) {
            nans++;
            continue;
        }
        assert_int_equal(ep_f32_to_fp8_e4m3(f), v);
    }
    assert_int_equal(nans, 2);
}

static void test_fp8_e5m2(void **state)
{
    assert_true(ep_fp8_e5m2_to_f32(0x3c) == 1.0f);
    assert_true(ep_fp8_e5m2_to_f32(0xc0) == -2.0f);
    assert_true(ep_fp8_e5m2_to_f32(0x7b) == 57344.0f); // max
    assert_true(ep_fp8_e5m2_to_f32(0x7c) == INFINITY);
    assert_true(ep_fp8_e5m2_to_f32(0xfc) == -INFINITY);
    assert_true(isnan(ep_fp8_e5m2_to_f32(0x7d)));
    assert_true(isnan(ep_fp8_e5m2_to_f32(0xff)));
    assert_true(ep_fp8_e5m2_to_f32(0x01) == 0x1p-16f); // smallest subnormal
    assert_true(ep_fp8_e5m2_to_f32(0x03) == 3 * 0x1p-16f);
    assert_true(ep_fp8_e5m2_to_f32(0x04) == 0x1p-14f); // smallest normal
    assert_true(ep_fp8_e5m2_to_f32(0x3d) == 1.25f);
    assert_true(signbit(ep_fp8_e5m2_to_f32(0x80)));
}

static void test_bulk(void **state)
{
    const float src[7] = {1.0f, -2.5f, 0.1f, 448.0f, 0x1p-9f, 65504.0f, -0.0f};
    // +1: unaligned buffers, as tensors inside a safetensors mapping can be.
    unsigned char raw[64 + 1];
    float back[7];
    const ep_dtype types[] = {EP_DTYPE_F32, EP_DTYPE_F64, EP_DTYPE_F16, EP_DTYPE_BF16,
                              EP_DTYPE_F8_E4M3};
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        memset(raw, 0xa5, sizeof raw);
        assert_int_equal(ep_dtype_from_f32(types[t], src, raw + 1, 7), EP_OK);
        assert_int_equal(raw[0], 0xa5); // wrote only its own bytes
        assert_int_equal(raw[1 + 7 * ep_dtype_size(types[t])], 0xa5);
        assert_int_equal(ep_dtype_to_f32(types[t], raw + 1, back, 7), EP_OK);
        for (int i = 0; i < 7; i++) {
            float want = src[i];
            switch (types[t]) {
            case EP_DTYPE_F16:
                want = ep_f16_to_f32(ep_f32_to_f16(src[i]));
                break;
            case EP_DTYPE_BF16:
                want = ep_bf16_round(src[i]);
                break;
            case EP_DTYPE_F8_E4M3:
                want = ep_fp8_e4m3_to_f32(ep_f32_to_fp8_e4m3(src[i]));
                break;
            default:
                break;
            }
            assert_true(bitsf(back[i]) == bitsf(want));
        }
    }
    // Spot-check the bytes for one type (little-endian bf16 of 1.0 = 80 3f).
    assert_int_equal(ep_dtype_from_f32(EP_DTYPE_BF16, src, raw, 1), EP_OK);
    assert_int_equal(raw[0], 0x80);
    assert_int_equal(raw[1], 0x3f);
    // e5m2 decodes in bulk too
    const uint8_t e5[3] = {0x3c, 0xc0, 0x01};
    assert_int_equal(ep_dtype_to_f32(EP_DTYPE_F8_E5M2, e5, back, 3), EP_OK);
    assert_true(back[0] == 1.0f && back[1] == -2.0f && back[2] == 0x1p-16f);

    assert_int_equal(ep_dtype_to_f32(EP_DTYPE_I32, raw, back, 1), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "I32"));
    assert_int_equal(ep_dtype_to_f32(EP_DTYPE_BOOL, raw, back, 1), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "BOOL"));
    assert_int_equal(ep_dtype_from_f32(EP_DTYPE_U8, src, raw, 1), EP_ERR_UNSUPPORTED);
    assert_non_null(strstr(ep_last_error(), "U8"));
}

// ---- fp8 rows ----------------------------------------------------------------

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_sym(uint64_t *s) // uniform in [-1, 1)
{
    return (float)(rng_next(s) >> 40) / (float)(1 << 23) - 1.0f;
}

// The row codec written plainly from its definition in dtype.h, one
// element at a time, with the slow scalar ep_f32_to_fp8_e4m3 (floorf/ldexpf),
// which test_fp8_e4m3 pins to hand-computed codes. The fast codec must match
// it bit for bit. out: ep_fp8_row_bytes(H) bytes, zeroed by the caller.
static void ref_encode(const float *x, int H, uint8_t *out)
{
    int G = (H + 127) / 128;
    for (int g = 0; g < G; g++) {
        int b = g * 128, e = b + 128 < H ? b + 128 : H;
        float amax = 0;
        for (int h = b; h < e; h++)
            if (isfinite(x[h]) && fabsf(x[h]) > amax) amax = fabsf(x[h]);
        float scale = 0, inv = 0;
        if (amax > 0) {
            scale = amax / 448.0f;
            if (scale < FLT_MIN) scale = FLT_MIN;
            inv = 1.0f / scale;
        }
        memcpy(out + 4 * g, &scale, 4);
        for (int h = b; h < e; h++) {
            float q = x[h] * inv;
            out[4 * G + h] =
                isfinite(q) ? ep_f32_to_fp8_e4m3(q) : (uint8_t)(signbit(q) ? 0xff : 0x7f);
        }
    }
}

static void ref_decode(const uint8_t *in, int H, float *x)
{
    int G = (H + 127) / 128;
    for (int h = 0; h < H; h++) {
        float scale;
        memcpy(&scale, in + 4 * (h / 128), 4);
        x[h] = ep_fp8_e4m3_to_f32(in[4 * G + h]) * scale;
    }
}

static bool same_float(float a, float b)
{
    return (isnan(a) && isnan(b)) || bitsf(a) == bitsf(b);
}

// Random rows, each 128-group at its own magnitude (2^-40 .. 2^40), some
// groups with zeros, NaN, Inf, tiny or huge values: bytes and decoded
// values identical to the reference, padding zero.
static void test_fp8_row_vs_reference(void **state)
{
    (void)state;
    static const int hs[] = {1, 3, 13, 127, 128, 129, 200, 300, 2048, 2053};
    uint64_t s = 42;
    enum { HMAX = 2053 };
    float x[HMAX], d1[HMAX], d2[HMAX];
    uint8_t b1[HMAX + 96], b2[HMAX + 96];
    for (size_t k = 0; k < sizeof hs / sizeof *hs; k++) {
        for (int rep = 0; rep < 40; rep++) {
            int H = hs[k];
            for (int h = 0; h < H; h++) {
                int g = h / 128;
                float mag = ldexpf(1.0f, (int)((g * 7919 + rep * 13) % 81) - 40);
                x[h] = rng_sym(&s) * mag;
            }
            switch (rep % 8) { // a special value somewhere in the row
            case 1:
                x[rng_next(&s) % H] = NAN;
                break;
            case 2:
                x[rng_next(&s) % H] = -INFINITY;
                break;
            case 3:
                x[rng_next(&s) % H] = INFINITY;
                break;
            case 4: // a whole group of zeros (signed)
                for (int h = 0; h < H && h < 128; h++)
                    x[h] = h & 1 ? -0.0f : 0.0f;
                break;
            case 5: // tiny: fp32 subnormals, amax below 448 * 2^-126
                for (int h = 0; h < H && h < 128; h++)
                    x[h] = rng_sym(&s) * 0x1p-140f;
                break;
            case 6: // huge
                for (int h = 0; h < H && h < 128; h++)
                    x[h] = rng_sym(&s) * 0x1p127f;
                break;
            case 7: // exact powers of two and ties of e4m3 after scaling by 1 (amax 448)
                for (int h = 0; h < H && h < 128; h++)
                    x[h] = (float)(h % 29) * 0.5625f;
                x[0] = 448.0f;
                break;
            default:
                break;
            }
            int64_t rb = ep_fp8_row_bytes(H);
            memset(b1, 0xcd, sizeof b1); // the codec must write the padding
            memset(b2, 0, sizeof b2);
            ep_fp8_row_encode(x, H, b1);
            ref_encode(x, H, b2);
            if (memcmp(b1, b2, (size_t)rb) != 0) {
                for (int64_t i = 0; i < rb; i++)
                    if (b1[i] != b2[i]) {
                        fprintf(stderr, "H %d rep %d: byte %lld is 0x%02x, reference 0x%02x\n", H,
                                rep, (long long)i, b1[i], b2[i]);
                        break;
                    }
                fail();
            }
            ep_fp8_row_decode(b1, H, d1);
            ref_decode(b2, H, d2);
            for (int h = 0; h < H; h++) {
                if (!same_float(d1[h], d2[h]))
                    fprintf(stderr, "H %d rep %d h %d: decoded %a, reference %a\n", H, rep, h,
                            (double)d1[h], (double)d2[h]);
                assert_true(same_float(d1[h], d2[h]));
                // Non-finite in, NaN out; finite in, finite out.
                assert_true(isfinite(x[h]) ? isfinite(d1[h]) : isnan(d1[h]));
            }
        }
    }
}

// Scale 1 (a group whose amax is 448): the codes are e4m3(x) itself, so a
// sweep over fp32 bit patterns in [0, 448] plus every tie and its two
// neighbours checks the fast scalar rounding against ep_f32_to_fp8_e4m3.
// All 256 codes decode as ep_fp8_e4m3_to_f32 does.
static void test_fp8_row_scalar_sweep(void **state)
{
    (void)state;
    enum { N = 127 };
    float x[N + 1], d[N + 1];
    uint8_t b[4 + N + 1];
    int n = 0;
    int64_t checked = 0;
    float vals[N];
    // Every 37th bit pattern from 0 up to 448, then ties.
    for (uint32_t u = 0; u <= 0x43e00000u; u += 37) {
        vals[n++] = fbits(u);
        if (n == N || u + 37 > 0x43e00000u) {
            x[0] = 448.0f;
            for (int i = 0; i < n; i++)
                x[1 + i] = (checked + i) & 1 ? -vals[i] : vals[i];
            ep_fp8_row_encode(x, n + 1, b);
            float sc;
            memcpy(&sc, b, 4);
            assert_true(sc == 1.0f);
            for (int i = 0; i < n; i++) {
                uint8_t want = ep_f32_to_fp8_e4m3(x[1 + i]);
                if (b[4 + 1 + i] != want)
                    fprintf(stderr, "e4m3(%a): fast 0x%02x, reference 0x%02x\n", (double)x[1 + i],
                            b[4 + 1 + i], want);
                assert_int_equal(b[4 + 1 + i], want);
            }
            checked += n;
            n = 0;
        }
    }
    assert_true(checked > 30000000);
    // Ties: midpoints between neighbouring non-negative codes, and one ulp either side.
    for (int c = 0; c < 0x7e; c++) {
        float lo = ep_fp8_e4m3_to_f32((uint8_t)c), hi = ep_fp8_e4m3_to_f32((uint8_t)(c + 1));
        float mid = 0.5f * (lo + hi);
        float t[3] = {nextafterf(mid, 0.0f), mid, nextafterf(mid, 1e9f)};
        x[0] = 448.0f;
        for (int i = 0; i < 3; i++)
            x[1 + i] = t[i];
        ep_fp8_row_encode(x, 4, b);
        for (int i = 0; i < 3; i++)
            assert_int_equal(b[4 + 1 + i], ep_f32_to_fp8_e4m3(t[i]));
        assert_int_equal(b[4 + 1], c);                 // below the tie: down
        assert_int_equal(b[4 + 3], c + 1);             // above: up
        assert_int_equal(b[4 + 2], c & 1 ? c + 1 : c); // tie: to even
    }
    // Decode of every code at scale 1 (two groups of 128).
    uint8_t row[8 + 256];
    float one = 1.0f, dd[256];
    memcpy(row, &one, 4);
    memcpy(row + 4, &one, 4);
    for (int c = 0; c < 256; c++)
        row[8 + c] = (uint8_t)c;
    ep_fp8_row_decode(row, 256, dd);
    for (int c = 0; c < 256; c++)
        assert_true(same_float(dd[c], ep_fp8_e4m3_to_f32((uint8_t)c)));
    (void)d;
}

// The error bound of docs/wire-format.md on random rows: for finite x in a
// group of scale s, |decoded - x| <= (2^-4 + 2^-20) |x| + 2^-10 s (1 + 2^-20)
// (+ 2^-149 where the product lands among fp32 subnormals). e4m3 keeps 3
// mantissa bits, so round-to-nearest is off by at most half an ulp, 2^-4 of
// the value, in the normals and 2^-10 (half of 2^-9) below 2^-6; the rest is
// fp32 rounding. The worst ratio must come close to 2^-4 (an fp8 codec that
// rounds at all), and each group's amax must come back to within 2^-21.
static void test_fp8_row_error_bound(void **state)
{
    (void)state;
    uint64_t s = 7;
    enum { H = 1000 };
    static float x[H], d[H];
    static uint8_t b[H + 64];
    double worst = 0;
    for (int rep = 0; rep < 200; rep++) {
        for (int h = 0; h < H; h++) {
            // Heavy-tailed: most values small against their group's amax.
            float u = rng_sym(&s);
            x[h] = u * u * u * ldexpf(1.0f, (int)(rng_next(&s) % 41) - 20);
        }
        ep_fp8_row_encode(x, H, b);
        ep_fp8_row_decode(b, H, d);
        for (int h = 0; h < H; h++) {
            float sc;
            memcpy(&sc, b + 4 * (h / 128), 4);
            double err = fabs((double)d[h] - x[h]);
            double bound =
                (0x1p-4 + 0x1p-20) * fabs(x[h]) + 0x1p-10 * sc * (1 + 0x1p-20) + 0x1p-149;
            if (err > bound)
                fprintf(stderr, "x %a decoded %a (scale %a): error %g > bound %g\n", (double)x[h],
                        (double)d[h], (double)sc, err, bound);
            assert_true(err <= bound);
            if (fabs(x[h]) >= 64 * sc && err / fabs(x[h]) > worst) worst = err / fabs(x[h]);
        }
        for (int g = 0; g < (H + 127) / 128; g++) {
            int e = (g + 1) * 128 < H ? (g + 1) * 128 : H, at = g * 128;
            for (int h = g * 128; h < e; h++)
                if (fabsf(x[h]) > fabsf(x[at])) at = h;
            assert_true(fabs((double)d[at] - x[at]) <= 0x1p-21 * fabs(x[at]));
            assert_int_equal(b[4 * ((H + 127) / 128) + at] & 0x7f, 0x7e); // the max code, 448
        }
    }
    assert_true(worst > 0.9 * 0x1p-4 && worst <= 0x1p-4 + 0x1p-20);
}

// Edge cases of dtype.h, one by one.
static void test_fp8_row_edges(void **state)
{
    (void)state;
    float x[130], d[130];
    uint8_t b[8 + 132];
    float sc;
    // All zero (one group of 130 -> two groups; both zero): scale 0, zeros back.
    for (int h = 0; h < 130; h++)
        x[h] = h % 3 ? 0.0f : -0.0f;
    ep_fp8_row_encode(x, 130, b);
    memcpy(&sc, b, 4);
    assert_true(sc == 0.0f);
    memcpy(&sc, b + 4, 4);
    assert_true(sc == 0.0f);
    ep_fp8_row_decode(b, 130, d);
    for (int h = 0; h < 130; h++)
        assert_true(d[h] == 0.0f && !!signbit(d[h]) == !!signbit(x[h]));
    assert_int_equal(b[8 + 130], 0); // padding
    assert_int_equal(b[8 + 131], 0);

    // NaN and Inf in a group of zeros (scale 0): NaN out, zeros stay zero.
    x[5] = NAN;
    x[6] = INFINITY;
    x[7] = -INFINITY;
    ep_fp8_row_encode(x, 130, b);
    ep_fp8_row_decode(b, 130, d);
    assert_true(isnan(d[5]) && isnan(d[6]) && isnan(d[7]));
    assert_true(d[4] == 0.0f && d[8] == 0.0f);

    // NaN / Inf next to finite values: left out of amax, the rest keeps full precision.
    for (int h = 0; h < 130; h++)
        x[h] = 0.001f * (float)(h + 1);
    x[3] = NAN;
    x[9] = INFINITY;
    ep_fp8_row_encode(x, 130, b);
    memcpy(&sc, b, 4);
    assert_true(sc == 0.128f / 448.0f); // amax 0.128 = x[127]
    ep_fp8_row_decode(b, 130, d);
    assert_true(isnan(d[3]) && isnan(d[9]));
    assert_true(fabsf(d[127] - 0.128f) <= 0x1p-21f * 0.128f);
    for (int h = 10; h < 130; h++)
        assert_true(fabsf(d[h] - x[h]) <= 0x1p-4f * x[h] * 1.0001f);

    // Tiny: amax 2^-140 (< 448 * 2^-126) uses scale 2^-126; 2^-140 = code
    // value 2^-14, below e4m3's smallest subnormal 2^-9 -> 0 here.
    for (int h = 0; h < 130; h++)
        x[h] = h == 0 ? 0x1p-140f : 0.0f;
    x[1] = 0x1p-130f; // 2^-4 in code units: exact
    ep_fp8_row_encode(x, 2, b);
    memcpy(&sc, b, 4);
    assert_true(sc == FLT_MIN);
    ep_fp8_row_decode(b, 2, d);
    assert_true(d[1] == 0x1p-130f && d[0] == 0.0f);
    // Smallest normal fp32 amax that keeps scale = amax / 448: exact to fp32.
    x[0] = 448.0f * FLT_MIN;
    x[1] = -x[0];
    ep_fp8_row_encode(x, 2, b);
    ep_fp8_row_decode(b, 2, d);
    assert_true(d[0] == x[0] && d[1] == x[1]);

    // Huge: amax FLT_MAX keeps a finite scale and comes back.
    x[0] = FLT_MAX;
    x[1] = -0.5f * FLT_MAX;
    ep_fp8_row_encode(x, 2, b);
    ep_fp8_row_decode(b, 2, d);
    assert_true(isfinite(d[0]) && fabsf(d[0] - FLT_MAX) <= 0x1p-21f * FLT_MAX);
    assert_true(fabsf(d[1] - x[1]) <= 0x1p-4f * fabsf(x[1]));

    // Saturation: every group maps its amax to 448 (code 0x7e); one fp32
    // rounding of the scale may put it just above 448 after scaling, which
    // must saturate to 0x7e, not round to 0x7f (NaN). Sweep amaxes.
    uint64_t s = 99;
    for (int rep = 0; rep < 20000; rep++) {
        x[0] = fbits((uint32_t)(0x30000000u + rng_next(&s) % 0x20000000u));
        x[1] = -x[0];
        ep_fp8_row_encode(x, 2, b);
        assert_int_equal(b[4], 0x7e);
        assert_int_equal(b[5], 0xfe);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_sizes),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_f16),
        cmocka_unit_test(test_f16_nearest_random),
        cmocka_unit_test(test_fp8_e4m3),
        cmocka_unit_test(test_fp8_e5m2),
        cmocka_unit_test(test_bulk),
        cmocka_unit_test(test_fp8_row_vs_reference),
        cmocka_unit_test(test_fp8_row_scalar_sweep),
        cmocka_unit_test(test_fp8_row_error_bound),
        cmocka_unit_test(test_fp8_row_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
