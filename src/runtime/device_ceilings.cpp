#include "runtime/device_ceilings.h"


#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include <fmt/format.h>

#include "backend/stage_timer.h"
#include "core/error.h"
#ifdef TRIDENT_CUDA
#include <cuda.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/device_context.h"
#endif

namespace trident {

namespace {

constexpr int kWarmup = 2;
constexpr int kReps = 10;

// Median seconds of `run`, each repetition timed on the device by the stage timer.
double median_seconds(Backend& backend, const std::function<void()>& run) {
  for (int i = 0; i < kWarmup; ++i) run();
  std::unique_ptr<StageTimer> timer = make_stage_timer(backend);
  for (int i = 0; i < kReps; ++i) {
    timer->mark(Stage::Rest, -1);
    run();
  }
  std::vector<double> s;
  for (const StageTimer::Interval& i : timer->finish()) s.push_back(i.seconds);
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

struct GemmShape {
  int64_t M, N, K;
  double flops() const { return 2.0 * double(M) * double(N) * double(K); }
};

Tensor random_scales(int64_t rows, int64_t cols) {
  Tensor t = cpu_tensor(DType::F32, {rows, cols});
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = (0.5f + float(i % 7) / 14.0f) / 448;
  return t;
}

// BF16 GEMM through the backend's linear (activation dtype in and out).
double bf16_rate(Backend& backend, RandomWeights& random, const GemmShape& g) {
  const DType act = backend.activation_dtype();
  Tensor x = backend.alloc(act, {g.M, g.K});
  random.fill(x, 1.0f);
  LinearWeight w{backend.alloc(DType::BF16, {g.N, g.K}), {}};
  random.fill(w.weight, 0.01f);
  Tensor out = backend.alloc(act, {g.M, g.N});
  return g.flops() / median_seconds(backend, [&] { backend.linear(x, w, out); });
}

#ifdef TRIDENT_CUDA
MeasuredCeilings measure_cuda(cuda::CudaBackend& backend, RandomWeights& random) {
  MeasuredCeilings m;
  {
    constexpr int64_t kBytes = int64_t(1) << 30;
    Tensor a = backend.alloc(DType::U8, {kBytes}), b = backend.alloc(DType::U8, {kBytes});
    const CUstream stream = backend.context().stream();
    const double s = median_seconds(backend, [&] {
      cuda::check(cuda::cu().cuMemcpyDtoDAsync(cuda::device_ptr(b), cuda::device_ptr(a),
                                               size_t(kBytes), stream),
                  "copying between device buffers");
    });
    m.ceilings.copy_bytes_per_s = 2.0 * double(kBytes) / s;
    m.copy_how = "cuMemcpyDtoDAsync of 1 GiB, bytes read + written";
  }
  {
    const GemmShape g{8192, 18432, 7168};  // DeepSeek-V3's dense gate/up at 8192 tokens
    Tensor q = backend.alloc(DType::F8E4M3, {g.M, g.K});
    random.fill_fp8_codes(q);
    const Tensor q_scales = backend.upload(random_scales(g.M, g.K / 128));
    LinearWeight w{backend.alloc(DType::F8E4M3, {g.N, g.K}),
                   backend.upload(random_scales(g.N / 128, g.K / 128))};
    random.fill_fp8_codes(w.weight);
    Tensor out = backend.alloc(DType::BF16, {g.M, g.N});
    m.ceilings.fp8_flops_per_s =
        g.flops() / median_seconds(backend, [&] { backend.fp8_gemm(q, q_scales, w, out); });
    m.fp8_how = fmt::format("our FP8 block-scaled GEMM (fp8_gemm), M={} N={} K={}", g.M, g.N, g.K);
  }
  const GemmShape g{8192, 7168, 7168};
  m.ceilings.bf16_flops_per_s = bf16_rate(backend, random, g);
  m.bf16_how = fmt::format("our BF16 GEMM (linear), M={} N={} K={}", g.M, g.N, g.K);
  return m;
}
#endif

MeasuredCeilings measure_cpu(Backend& backend, RandomWeights& random) {
  MeasuredCeilings m;
  constexpr size_t kBytes = size_t(64) << 20;
  std::vector<char> a(kBytes, 1), b(kBytes);
  m.ceilings.copy_bytes_per_s =
      2.0 * double(kBytes) / median_seconds(backend, [&] { std::memcpy(b.data(), a.data(), kBytes); });
  m.copy_how = "memcpy of 64 MiB, bytes read + written";
  const GemmShape g{64, 256, 1024};
  LinearWeight w{backend.alloc(DType::F8E4M3, {g.N, g.K}),
                 backend.upload(random_scales(g.N / 128, g.K / 128))};
  random.fill_fp8_codes(w.weight);
  Tensor x = backend.alloc(backend.activation_dtype(), {g.M, g.K});
  random.fill(x, 1.0f);
  Tensor out = backend.alloc(backend.activation_dtype(), {g.M, g.N});
  m.ceilings.fp8_flops_per_s =
      g.flops() / median_seconds(backend, [&] { backend.linear(x, w, out); });
  m.fp8_how = fmt::format("the reference FP8 linear, M={} N={} K={}", g.M, g.N, g.K);
  m.ceilings.bf16_flops_per_s = bf16_rate(backend, random, g);
  m.bf16_how = fmt::format("the reference BF16 linear, M={} N={} K={}", g.M, g.N, g.K);
  return m;
}

}  // namespace

MeasuredCeilings measure_ceilings(Backend& backend, RandomWeights& random) {
#ifdef TRIDENT_CUDA
  if (backend.device() == Device::CUDA)
    return measure_cuda(static_cast<cuda::CudaBackend&>(backend), random);
#endif
  return measure_cpu(backend, random);
}

}  // namespace trident
