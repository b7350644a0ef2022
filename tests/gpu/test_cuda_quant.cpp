// Per-token-group FP8 activation quantization on the GPU against the CPU reference, bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "gpu_test_support.h"

namespace trident::gpu_test {
namespace {

struct QuantCase {
  int64_t rows, cols;
};

// DeepSeek widths, a ragged last group (300, 129), odd and tiny rows, unaligned rows (300, 5).
const QuantCase kCases[] = {{1, 7168}, {5, 2048}, {256, 1536}, {33, 300},
                            {4, 129},  {7, 5},    {100, 512},  {3, 16384}};

TEST(CudaQuantizeFp8, MatchesCpuCodesAndScalesExactly) {
  SCOPED_TRACE(seed_note());
  for (const QuantCase& c : kCases) {
    SCOPED_TRACE(fmt::format("x [{}, {}]", c.rows, c.cols));
    const int64_t groups = (c.cols + 127) / 128;
    Tensor x = random_host(DType::BF16, {c.rows, c.cols});
    // Groups of very different magnitudes, and one all-zero group, which takes the 1e-10 floor.
    std::uniform_real_distribution<float> log_scale(-6.0f, 6.0f);
    for (int64_t r = 0; r < c.rows; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const float s = std::exp2(log_scale(rng()));
        for (int64_t j = g * 128; j < std::min(c.cols, (g + 1) * 128); ++j) {
          uint16_t& v = x.ptr<uint16_t>()[r * c.cols + j];
          v = (r == 0 && g == groups - 1) ? 0 : f32_to_bf16(bf16_to_f32(v) * s);
        }
      }
    }

    Tensor q = poisoned(DType::F8E4M3, {c.rows, c.cols});
    Tensor scales = poisoned(DType::F32, {c.rows, groups});
    gpu().quantize_fp8(gpu().upload(x), q, scales);
    Tensor q_host = download(q), scales_host = download(scales);

    std::vector<float> row(c.cols), want_q(c.cols), want_s(groups);
    int64_t code_mismatches = 0, scale_mismatches = 0, first = -1;
    for (int64_t r = 0; r < c.rows; ++r) {
      for (int64_t j = 0; j < c.cols; ++j) row[j] = bf16_to_f32(x.ptr<uint16_t>()[r * c.cols + j]);
      cpu::quantize_row_fp8(row.data(), c.cols, want_q.data(), want_s.data());
      for (int64_t j = 0; j < c.cols; ++j) {
        if (q_host.ptr<uint8_t>()[r * c.cols + j] != f32_to_fp8e4m3(want_q[j])) {
          ++code_mismatches;
          if (first < 0) first = r * c.cols + j;
        }
      }
      for (int64_t g = 0; g < groups; ++g) {
        const float got = scales_host.ptr<float>()[r * groups + g];
        if (std::memcmp(&got, &want_s[g], 4) != 0) ++scale_mismatches;
      }
    }
    EXPECT_EQ(code_mismatches, 0) << "first at element " << first;
    EXPECT_EQ(scale_mismatches, 0);
  }
}

TEST(CudaQuantizeFp8, RejectsWrongScaleShape) {
  Tensor x = gpu().upload(random_host(DType::BF16, {2, 256}));
  Tensor q = gpu().alloc(DType::F8E4M3, {2, 256});
  Tensor scales = gpu().alloc(DType::F32, {2, 3});
  EXPECT_THROW(gpu().quantize_fp8(x, q, scales), Error);
}

}  // namespace
}  // namespace trident::gpu_test
