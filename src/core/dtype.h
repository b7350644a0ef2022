// Element types and scalar conversions. FP8 is e4m3fn (the "fn" variant: no infinities, one NaN
// encoding per sign, max finite 448), as DeepSeek-V3 stores its weights.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace trident {

enum class DType : uint8_t { F32, F16, BF16, F8E4M3, I32, I64, U8 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::F8E4M3: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F8E4M3: return "F8_E4M3";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}

constexpr float kFp8E4M3Max = 448.0f;

inline float bits_to_f32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t f32_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(uint32_t(h) << 16); }

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t b = f32_to_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40);
  b += 0x7fffu + ((b >> 16) & 1u);
  return uint16_t(b >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  if (exp == 0) {
    float v = std::ldexp(float(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_f32(sign | 0x7f800000u | (man << 13));
  return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}

// e4m3fn: bias 7, subnormals down to 2^-9, 0x7f/0xff are NaN.
inline float fp8e4m3_to_f32(uint8_t v) {
  uint32_t sign = v & 0x80;
  uint32_t exp = (v >> 3) & 0xf;
  uint32_t man = v & 0x7;
  float mag;
  if (exp == 0xf && man == 0x7) return std::nanf("");
  if (exp == 0)
    mag = std::ldexp(float(man), -9);
  else
    mag = std::ldexp(1.0f + float(man) / 8.0f, int(exp) - 7);
  return sign ? -mag : mag;
}

// Round to nearest even, saturating at ±448 (callers scale into range first, as DeepSeek's
// quantizers do, so saturation only guards against rounding at the edge).
uint8_t f32_to_fp8e4m3(float f);

}  // namespace trident
