#include "core/dtype.h"

#include <array>

namespace trident {

namespace {
// All 127 non-negative finite e4m3fn values, ascending (code i decodes to table[i]).
std::array<float, 127> make_fp8_table() {
  std::array<float, 127> t{};
  for (int i = 0; i < 127; ++i) t[i] = fp8e4m3_to_f32(uint8_t(i));
  return t;
}
}  // namespace

uint8_t f32_to_fp8e4m3(float f) {
  static const std::array<float, 127> table = make_fp8_table();
  if (std::isnan(f)) return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= kFp8E4M3Max) return sign | 126;
  // Binary search for the first code whose value is >= a, then pick the nearer neighbour,
  // ties to the even code.
  int lo = 0, hi = 126;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (table[mid] < a)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == 0) return sign;
  float up = table[lo], down = table[lo - 1];
  int code;
  if (a - down < up - a)
    code = lo - 1;
  else if (up - a < a - down)
    code = lo;
  else
    code = (lo % 2 == 0) ? lo : lo - 1;
  return sign | uint8_t(code);
}

}  // namespace trident
