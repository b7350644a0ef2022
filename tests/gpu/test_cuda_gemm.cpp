// The FP8 block-scaled and BF16 linear layers on the GPU against the CPU backend: the tuned path
// at decode and prefill sizes, every compiled tile, split-K, and ragged shapes.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backend/cuda/device_context.h"
#include "backend/cuda/kernel_launch.h"
#include "gpu_test_support.h"

namespace trident::gpu_test {
namespace {

struct GemmCase {
  int64_t m, n, k;
};

// Decode-sized and prefill-sized M across the tuned buckets, DeepSeek's narrow kv_a (576) and
// deep K (7168), and ragged shapes: M, N and K off every tile and group boundary, odd K.
const GemmCase kCases[] = {{1, 256, 512},    {16, 576, 7168},  {17, 1536, 1024}, {33, 384, 2048},
                           {64, 1024, 1024}, {100, 200, 300},  {129, 512, 1024}, {256, 768, 512},
                           {257, 384, 1024}, {1024, 256, 512}, {2048, 128, 256}, {5, 129, 257},
                           {3, 16, 16}};

// Tolerances against the CPU's f32 result from the same quantized inputs: FP8 products summed
// by the tensor cores in reduced precision over 128 terms, or bf16 rounding of the output. Seen
// on an H200: at most 1.3e-4 (FP8, f32 out), 1.6e-6 (BF16, f32 out), 1.8e-3 (bf16 out).
double tolerance(DType out, bool fp8) {
  if (out == DType::BF16) return 4e-3;
  return fp8 ? 1e-3 : 2e-5;
}

Tensor cpu_linear(const Tensor& x, const LinearWeight& w) {
  Tensor want = cpu_tensor(DType::F32, {x.dim(0), w.out_features()});
  cpu().linear(x, w, want);
  return want;
}

LinearWeight upload(const LinearWeight& w) {
  return {gpu().upload(w.weight), w.scale_inv.defined() ? gpu().upload(w.scale_inv) : Tensor{}};
}

LinearWeight random_weight(bool fp8, int64_t n, int64_t k) {
  if (fp8) return random_fp8_weight(n, k);
  return {random_host(DType::BF16, {n, k}, 0.05f), {}};
}

// The largest relative error seen in the current test, per output dtype, recorded in the test
// report (--gtest_output=xml) so the margin under each bound stays visible.
double g_worst[2] = {0, 0};

void expect_linear_matches(const Tensor& x, const LinearWeight& w, const Tensor& want,
                           DType out_dtype, const std::string& what) {
  Tensor out = poisoned(out_dtype, {x.dim(0), w.out_features()});
  gpu().linear(gpu().upload(x), upload(w), out);
  const Diff d = compare(download(out), want);
  EXPECT_EQ(d.nan, 0) << what << ": " << describe(d);
  EXPECT_LT(d.rel_l2, tolerance(out_dtype, w.fp8())) << what << ": " << describe(d);
  double& worst = g_worst[out_dtype == DType::F32];
  if (d.rel_l2 > worst) {
    worst = d.rel_l2;
    ::testing::Test::RecordProperty(
        out_dtype == DType::F32 ? "worst_rel_l2_f32" : "worst_rel_l2_bf16",
        fmt::format("{:.3g} ({})", worst, what));
  }
}

class CudaLinear : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { g_worst[0] = g_worst[1] = 0; }
};

TEST_P(CudaLinear, MatchesCpuAtDecodePrefillAndRaggedShapes) {
  SCOPED_TRACE(seed_note());
  const bool fp8 = GetParam();
  for (const GemmCase& c : kCases) {
    Tensor x = random_host(DType::BF16, {c.m, c.k});
    LinearWeight w = random_weight(fp8, c.n, c.k);
    Tensor want = cpu_linear(x, w);
    for (DType out : {DType::BF16, DType::F32}) {
      expect_linear_matches(x, w, want, out,
                            fmt::format("M={} N={} K={} out {}", c.m, c.n, c.k, dtype_name(out)));
    }
  }
}

TEST_P(CudaLinear, EveryTileAndSplitMatchesCpu) {
  SCOPED_TRACE(seed_note());
  const bool fp8 = GetParam();
  const char* kernel = fp8 ? "fp8_gemm" : "bf16_gemm";
  const int arch = gpu().context().arch();
  // M and N off every tile boundary; K deep enough for three splits of four blocks.
  const int64_t M = 70, N = 336, K = 1536;
  Tensor x = random_host(DType::BF16, {M, K});
  LinearWeight w = random_weight(fp8, N, K);
  Tensor want = cpu_linear(x, w);
  int tiles = 0;
  for (const cuda::KernelVariant& v : cuda::compiled_kernel_variants()) {
    const std::string name = v.name;
    if (v.arch != arch || kernel != std::string(v.kernel) || v.tag("EVEN_K") != 1 ||
        !name.ends_with("_bf16"))
      continue;
    ++tiles;
    const std::string tile = name.substr(0, name.size() - 5);
    for (int split : {1, 3}) {
      gpu().set_gemm_override(cuda::GemmChoice{tile, split});
      for (DType out : {DType::BF16, DType::F32}) {
        expect_linear_matches(x, w, want, out,
                              fmt::format("{} split {} out {}", tile, split, dtype_name(out)));
        EXPECT_EQ(gpu().last_gemm().tile, tile);
        EXPECT_EQ(gpu().last_gemm().split_k, split);
      }
    }
  }
  gpu().set_gemm_override(std::nullopt);
  EXPECT_GE(tiles, 4) << "expected several compiled tiles of " << kernel;
}

TEST_P(CudaLinear, SplitsKWhenTilesCannotFillTheGpu) {
  SCOPED_TRACE(seed_note());
  const bool fp8 = GetParam();
  // Four tokens through kv_a's 576 outputs: a handful of tiles over 7168-deep K.
  Tensor x = random_host(DType::BF16, {4, 7168});
  LinearWeight w = random_weight(fp8, 576, 7168);
  Tensor want = cpu_linear(x, w);
  expect_linear_matches(x, w, want, DType::BF16, "M=4 N=576 K=7168");
  EXPECT_GT(gpu().last_gemm().split_k, 1);
}

INSTANTIATE_TEST_SUITE_P(Weights, CudaLinear, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Fp8" : "Bf16"; });

TEST(CudaLinearErrors, RejectsF32ActivationsAndUnsupportedWeights) {
  Tensor x32 = gpu().upload(random_host(DType::F32, {2, 128}));
  LinearWeight w = upload(random_weight(false, 64, 128));
  Tensor out = gpu().alloc(DType::BF16, {2, 64});
  EXPECT_THROW(gpu().linear(x32, w, out), Error);
  Tensor x = gpu().upload(random_host(DType::BF16, {2, 128}));
  LinearWeight w32{gpu().upload(random_host(DType::F32, {64, 128})), {}};
  try {
    gpu().linear(x, w32, out);
    ADD_FAILURE() << "an F32 weight should be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not implemented on CUDA yet"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace trident::gpu_test
