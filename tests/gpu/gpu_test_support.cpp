#include "gpu_test_support.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace trident::gpu_test {

namespace {
uint64_t g_seed = 0;

// Fresh seed per test, from the clock and the test's name.
class SeedListener : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo& info) override {
    g_seed = std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32) ^
             std::hash<std::string>{}(info.name());
    rng().seed(g_seed);
  }
};

const bool g_listener_installed = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new SeedListener);
  return true;
}();

float bf16_ulp(float v) {
  int e = 0;
  std::frexp(std::max(std::fabs(v), 1e-30f), &e);  // v = m * 2^e, m in [0.5, 1)
  return std::ldexp(1.0f, e - 8);                  // 8 significant bits
}
}  // namespace

cuda::CudaBackend& gpu() {
  static cuda::CudaBackend backend(0);
  return backend;
}

Backend& cpu() {
  static std::unique_ptr<Backend> backend = make_cpu_backend();
  return *backend;
}

std::mt19937_64& rng() {
  static std::mt19937_64 generator;
  return generator;
}

std::string seed_note() { return "random seed " + std::to_string(g_seed); }

Tensor random_host(DType dtype, std::initializer_list<int64_t> shape, float stddev) {
  Tensor t = cpu_tensor(dtype, shape);
  std::normal_distribution<float> normal(0.0f, stddev);
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    const float v = normal(rng());
    switch (dtype) {
      case DType::F32: t.ptr<float>()[i] = v; break;
      case DType::BF16: t.ptr<uint16_t>()[i] = f32_to_bf16(v); break;
      default: fail("random_host: unsupported dtype {}", dtype_name(dtype));
    }
  }
  return t;
}

LinearWeight random_fp8_weight(int64_t n, int64_t k, float stddev) {
  constexpr int64_t B = LinearWeight::kBlock;
  const int64_t nb = (n + B - 1) / B, kb = (k + B - 1) / B;
  Tensor values = random_host(DType::F32, {n, k}, stddev);
  LinearWeight w{cpu_tensor(DType::F8E4M3, {n, k}), cpu_tensor(DType::F32, {nb, kb})};
  for (int64_t bi = 0; bi < nb; ++bi) {
    for (int64_t bj = 0; bj < kb; ++bj) {
      float amax = 0;
      for (int64_t i = bi * B; i < std::min(n, (bi + 1) * B); ++i)
        for (int64_t j = bj * B; j < std::min(k, (bj + 1) * B); ++j)
          amax = std::max(amax, std::fabs(values.ptr<float>()[i * k + j]));
      const float scale = std::max(amax, 1e-10f) / kFp8E4M3Max;
      w.scale_inv.ptr<float>()[bi * kb + bj] = scale;
      for (int64_t i = bi * B; i < std::min(n, (bi + 1) * B); ++i)
        for (int64_t j = bj * B; j < std::min(k, (bj + 1) * B); ++j)
          w.weight.ptr<uint8_t>()[i * k + j] =
              f32_to_fp8e4m3(values.ptr<float>()[i * k + j] / scale);
    }
  }
  return w;
}

Tensor poisoned(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t = gpu().alloc(dtype, shape);
  cuda::check(
      cuda::cu().cuMemsetD8Async(cuda::device_ptr(t), 0xff, t.nbytes(), gpu().context().stream()),
      "poisoning a test output");
  return t;
}

Tensor download(const Tensor& device) {
  Tensor host = cpu_tensor(device.dtype, {device.numel()});
  host.ndim = device.ndim;
  host.shape = device.shape;
  gpu().to_host(device, host.data);
  return host;
}

Diff compare(const Tensor& got, const Tensor& want, double ulps) {
  EXPECT_EQ(got.numel(), want.numel());
  Diff d;
  double err2 = 0, ref2 = 0;
  for (int64_t i = 0; i < std::min(got.numel(), want.numel()); ++i) {
    const float g = load_f32(got, i), w = load_f32(want, i);
    if (std::isnan(g) && !std::isnan(w)) {
      ++d.nan;
      if (d.first_bad < 0) d.first_bad = i;
      continue;
    }
    const double e = double(g) - double(w);
    err2 += e * e;
    ref2 += double(w) * w;
    d.max_abs = std::max(d.max_abs, std::fabs(e));
    if (std::fabs(e) > ulps * bf16_ulp(w)) {
      ++d.over_ulps;
      if (d.first_bad < 0) d.first_bad = i;
    }
  }
  d.rel_l2 = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  return d;
}

std::string describe(const Diff& d) {
  return fmt::format(
      "rel_l2 {:.3g}, max_abs {:.3g}, {} NaN, {} beyond the ulp bound, first bad "
      "element {}",
      d.rel_l2, d.max_abs, d.nan, d.over_ulps, d.first_bad);
}

}  // namespace trident::gpu_test
