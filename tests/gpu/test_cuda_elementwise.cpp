// Embedding rows, SiLU-mul and the in-place add on the GPU against the CPU backend.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "gpu_test_support.h"

namespace trident::gpu_test {
namespace {

// Widths on and off the 16-element alignment and the 1024-column program block.
const int64_t kWidths[] = {1, 7, 100, 1024, 1025, 7168};

Tensor random_ids(int64_t n, int32_t vocab) {
  Tensor ids = cpu_tensor(DType::I32, {n});
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  for (int64_t i = 0; i < n; ++i) ids.ptr<int32_t>()[i] = pick(rng());
  ids.ptr<int32_t>()[n - 1] = vocab - 1;  // the last row of the table
  return ids;
}

TEST(CudaEmbedding, CopiesTableRowsExactly) {
  SCOPED_TRACE(seed_note());
  for (DType table_dtype : {DType::BF16, DType::F32}) {
    for (int64_t width : kWidths) {
      SCOPED_TRACE(fmt::format("table {} width {}", dtype_name(table_dtype), width));
      const int32_t vocab = 301;
      Tensor table = random_host(table_dtype, {vocab, width});
      Tensor ids = random_ids(37, vocab);
      Tensor want = cpu_tensor(DType::BF16, {37, width});
      cpu().embedding(ids, table, want);
      Tensor out = poisoned(DType::BF16, {37, width});
      gpu().embedding(gpu().upload(ids), gpu().upload(table), out);
      // A copy, or one round-to-nearest-even from f32 on both sides.
      const Diff d = compare(download(out), want, 0.0);
      EXPECT_EQ(d.nan + d.over_ulps, 0) << describe(d);
    }
  }
}

TEST(CudaEmbedding, WritesNanRowsForIdsOutsideTheTable) {
  Tensor table = random_host(DType::BF16, {10, 64});
  Tensor ids = cpu_tensor(DType::I32, {3});
  ids.ptr<int32_t>()[0] = 2;
  ids.ptr<int32_t>()[1] = 10;
  ids.ptr<int32_t>()[2] = -1;
  Tensor out = gpu().alloc(DType::BF16, {3, 64});
  gpu().embedding(gpu().upload(ids), gpu().upload(table), out);
  Tensor got = download(out);
  for (int64_t i = 0; i < 64; ++i) {
    EXPECT_EQ(load_f32(got, i), load_f32(table, 2 * 64 + i));
    EXPECT_TRUE(std::isnan(load_f32(got, 64 + i)));
    EXPECT_TRUE(std::isnan(load_f32(got, 128 + i)));
  }
}

TEST(CudaSiluMul, MatchesCpuWithinOneBf16Ulp) {
  SCOPED_TRACE(seed_note());
  for (int64_t rows : {1, 3, 64}) {
    for (int64_t width : kWidths) {
      SCOPED_TRACE(fmt::format("[{}, {}]", rows, width));
      Tensor gate = random_host(DType::BF16, {rows, width}, 4.0f);
      Tensor up = random_host(DType::BF16, {rows, width});
      Tensor want = cpu_tensor(DType::BF16, {rows, width});
      cpu().silu_mul(gate, up, want);
      Tensor out = poisoned(DType::BF16, {rows, width});
      gpu().silu_mul(gpu().upload(gate), gpu().upload(up), out);
      const Diff d = compare(download(out), want);
      EXPECT_EQ(d.nan + d.over_ulps, 0) << describe(d);
    }
  }
}

TEST(CudaSiluMul, WorksInPlaceAsTheDenseMlpCallsIt) {
  SCOPED_TRACE(seed_note());
  Tensor gate = random_host(DType::BF16, {5, 768}, 3.0f);
  Tensor up = random_host(DType::BF16, {5, 768});
  Tensor want = cpu_tensor(DType::BF16, {5, 768});
  cpu().silu_mul(gate, up, want);
  Tensor g = gpu().upload(gate);
  gpu().silu_mul(g, gpu().upload(up), g);
  const Diff d = compare(download(g), want);
  EXPECT_EQ(d.nan + d.over_ulps, 0) << describe(d);
}

TEST(CudaAdd, IsOneCorrectlyRoundedAdd) {
  SCOPED_TRACE(seed_note());
  for (int64_t rows : {1, 17}) {
    for (int64_t width : kWidths) {
      SCOPED_TRACE(fmt::format("[{}, {}]", rows, width));
      Tensor a = random_host(DType::BF16, {rows, width}, 3.0f);
      Tensor b = random_host(DType::BF16, {rows, width});
      Tensor want = cpu_tensor(DType::BF16, {rows, width});
      std::memcpy(want.data, a.data, a.nbytes());
      cpu().add(want, b);
      Tensor a_gpu = gpu().upload(a);
      gpu().add(a_gpu, gpu().upload(b));
      const Diff d = compare(download(a_gpu), want, 0.0);
      EXPECT_EQ(d.nan + d.over_ulps, 0) << describe(d);
    }
  }
}

TEST(CudaAdd, RejectsMismatchedShapes) {
  Tensor a = gpu().alloc(DType::BF16, {2, 64});
  Tensor b = gpu().alloc(DType::BF16, {2, 63});
  EXPECT_THROW(gpu().add(a, b), Error);
}

}  // namespace
}  // namespace trident::gpu_test
