// dtype conversions against hand-computed bit patterns (ties to even,
// overflow, subnormals, NaN/Inf), exhaustive decode->encode round trips,
// a nearest-neighbour property check on random floats, and bulk conversion.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/dtype.h"

#include <math.h>
#include <stdio.h>
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_sizes), cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_f16),         cmocka_unit_test(test_f16_nearest_random),
        cmocka_unit_test(test_fp8_e4m3),    cmocka_unit_test(test_fp8_e5m2),
        cmocka_unit_test(test_bulk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
