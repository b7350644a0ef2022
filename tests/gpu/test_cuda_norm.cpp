// RMSNorm and the fused residual-add RMSNorm on the GPU against the CPU backend.
#include <gtest/gtest.h>

#include <cstring>

#include "gpu_test_support.h"

namespace trident::gpu_test {
namespace {

struct NormCase {
  int64_t rows, cols;
};

// Aligned single-pass blocks, the aligned looping kernel (9216 > 8192), and unaligned rows.
const NormCase kCases[] = {{1, 7168}, {3, 1536}, {17, 512}, {64, 7168}, {1000, 576},
                           {2, 9216}, {5, 100},  {7, 9000}, {1, 1},     {33, 7}};

TEST(CudaRmsNorm, MatchesCpuWithinOneBf16Ulp) {
  SCOPED_TRACE(seed_note());
  for (DType w_dtype : {DType::BF16, DType::F32}) {
    for (const NormCase& c : kCases) {
      SCOPED_TRACE(fmt::format("x [{}, {}], w {}", c.rows, c.cols, dtype_name(w_dtype)));
      Tensor x = random_host(DType::BF16, {c.rows, c.cols}, 2.0f);
      Tensor w = random_host(w_dtype, {c.cols});
      Tensor want = cpu_tensor(DType::BF16, {c.rows, c.cols});
      cpu().rms_norm(x, w, 1e-6f, want);

      Tensor out = poisoned(DType::BF16, {c.rows, c.cols});
      gpu().rms_norm(gpu().upload(x), gpu().upload(w), 1e-6f, out);
      const Diff d = compare(download(out), want);
      EXPECT_EQ(d.nan, 0) << describe(d);
      EXPECT_EQ(d.over_ulps, 0) << describe(d);
      EXPECT_LT(d.rel_l2, 2e-3) << describe(d);
    }
  }
}

TEST(CudaRmsNorm, WorksInPlace) {
  SCOPED_TRACE(seed_note());
  Tensor x = random_host(DType::BF16, {9, 1536});
  Tensor w = random_host(DType::BF16, {1536});
  Tensor want = cpu_tensor(DType::BF16, {9, 1536});
  cpu().rms_norm(x, w, 1e-6f, want);
  Tensor xd = gpu().upload(x);
  gpu().rms_norm(xd, gpu().upload(w), 1e-6f, xd);
  const Diff d = compare(download(xd), want);
  EXPECT_EQ(d.nan + d.over_ulps, 0) << describe(d);
}

TEST(CudaAddRmsNorm, UpdatesResidualExactlyAndNormalizesIt) {
  SCOPED_TRACE(seed_note());
  for (DType w_dtype : {DType::BF16, DType::F32}) {
    for (const NormCase& c : kCases) {
      SCOPED_TRACE(fmt::format("x [{}, {}], w {}", c.rows, c.cols, dtype_name(w_dtype)));
      Tensor x = random_host(DType::BF16, {c.rows, c.cols});
      Tensor residual = random_host(DType::BF16, {c.rows, c.cols}, 4.0f);
      Tensor w = random_host(w_dtype, {c.cols});
      Tensor residual_gpu = gpu().upload(residual);
      Tensor want_residual = cpu_tensor(DType::BF16, {c.rows, c.cols});
      std::memcpy(want_residual.data, residual.data, residual.nbytes());
      Tensor want = cpu_tensor(DType::BF16, {c.rows, c.cols});
      cpu().add_rms_norm(x, want_residual, w, 1e-6f, want);

      Tensor out = poisoned(DType::BF16, {c.rows, c.cols});
      gpu().add_rms_norm(gpu().upload(x), residual_gpu, gpu().upload(w), 1e-6f, out);
      // bf16(residual + x) is one correctly rounded add on both sides.
      const Diff r = compare(download(residual_gpu), want_residual, 0.0);
      EXPECT_EQ(r.nan + r.over_ulps, 0) << "residual: " << describe(r);
      const Diff d = compare(download(out), want);
      EXPECT_EQ(d.nan + d.over_ulps, 0) << "out: " << describe(d);
    }
  }
}

TEST(CudaRmsNorm, RejectsMismatchedWeight) {
  Tensor x = gpu().upload(random_host(DType::BF16, {2, 64}));
  Tensor w = gpu().upload(random_host(DType::BF16, {63}));
  Tensor out = gpu().alloc(DType::BF16, {2, 64});
  EXPECT_THROW(gpu().rms_norm(x, w, 1e-6f, out), Error);
}

}  // namespace
}  // namespace trident::gpu_test
