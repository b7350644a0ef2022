#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"

using namespace trident;

TEST(Fp8E4M3, DecodesKnownCodes) {
  EXPECT_EQ(fp8e4m3_to_f32(0x00), 0.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x38), 1.0f);        // exponent 7 = bias
  EXPECT_EQ(fp8e4m3_to_f32(0x7e), 448.0f);      // largest finite
  EXPECT_EQ(fp8e4m3_to_f32(0xfe), -448.0f);
  EXPECT_EQ(fp8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(0x7f)));
}

TEST(Fp8E4M3, EncodeRoundTripsEveryFiniteCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    float v = fp8e4m3_to_f32(uint8_t(c));
    uint8_t back = f32_to_fp8e4m3(v);
    EXPECT_EQ(fp8e4m3_to_f32(back), v) << "code " << c;
  }
}

TEST(Fp8E4M3, RoundsToNearestEvenAndSaturates) {
  // Between 1.0 (0x38) and 1.125 (0x39) the midpoint goes to the even code 0x38.
  EXPECT_EQ(f32_to_fp8e4m3(1.0625f), 0x38);
  EXPECT_EQ(f32_to_fp8e4m3(1.07f), 0x39);
  // Between 1.125 (0x39) and 1.25 (0x3a) the midpoint goes to 0x3a.
  EXPECT_EQ(f32_to_fp8e4m3(1.1875f), 0x3a);
  EXPECT_EQ(f32_to_fp8e4m3(1000.0f), 0x7e);
  EXPECT_EQ(f32_to_fp8e4m3(-1000.0f), 0xfe);
  EXPECT_EQ(f32_to_fp8e4m3(std::ldexp(1.0f, -11)), 0x00);  // a quarter of the smallest subnormal
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly between 1.0 and the next bf16 value: ties to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(bf16_to_f32(0xc040), -3.0f);
}

TEST(F16, DecodesNormalsAndSubnormals) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
}
