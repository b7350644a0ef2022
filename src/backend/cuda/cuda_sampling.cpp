// Next-token sampling on the GPU (kernels/sampling.py): one program per row of logits, the CPU
// sampler's rules, a counter-based random stream per row (Philox keyed by the seed, at the row's
// step), so a draw depends only on (seed, step) and not on what else ran.
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/trident_kernels.h"
#include "core/error.h"

namespace trident::cuda {

namespace {

template <class T>
Tensor upload_row_params(const OpContext& ctx, const std::vector<T>& values, DType dtype) {
  Tensor t = device_tensor(ctx.device, dtype, {int64_t(values.size())});
  check(cu().cuMemcpyHtoDAsync(device_ptr(t), values.data(), t.nbytes(), ctx.stream),
        "uploading sampling parameters");
  return t;
}

}  // namespace

void sample_tokens(const OpContext& ctx, const Tensor& logits, std::span<const SampleRow> rows,
                   Tensor& ids) {
  expect_device_tensor(ctx, logits, "sample", "logits", {DType::F32, DType::BF16});
  expect_device_tensor(ctx, ids, "sample", "ids", {DType::I32});
  const int64_t B = logits.dim(0), V = logits.row_size();
  TRI_CHECK(int64_t(rows.size()) == B && ids.numel() == B,
            "sample: logits {} have {} rows, given {} rows of parameters and ids {}",
            logits.shape_str(), B, rows.size(), ids.shape_str());
  TRI_CHECK(V >= 1 && V < (int64_t(1) << 31) && B < (int64_t(1) << 31),
            "sample: logits {} must have 1 to 2^31 - 1 columns", logits.shape_str());
  if (B == 0) return;
  std::vector<float> temperature(B), top_p(B);
  std::vector<int32_t> top_k(B);
  std::vector<int64_t> seed(B), step(B);
  for (int64_t b = 0; b < B; ++b) {
    const SampleRow& r = rows[b];
    TRI_CHECK(r.temperature >= 0 && std::isfinite(r.temperature),
              "sample: row {} temperature must be >= 0, got {}", b, r.temperature);
    TRI_CHECK(r.top_p > 0 && r.top_p <= 1, "sample: row {} top_p must be in (0, 1], got {}", b,
              r.top_p);
    TRI_CHECK(r.top_k >= 0, "sample: row {} top_k must be >= 0, got {}", b, r.top_k);
    temperature[b] = r.temperature;
    top_k[b] = r.top_k;
    top_p[b] = r.top_p;
    seed[b] = int64_t(r.seed);
    step[b] = r.step;
  }
  const Tensor t_dev = upload_row_params(ctx, temperature, DType::F32);
  const Tensor k_dev = upload_row_params(ctx, top_k, DType::I32);
  const Tensor p_dev = upload_row_params(ctx, top_p, DType::F32);
  const Tensor seed_dev = upload_row_params(ctx, seed, DType::I64);
  const Tensor step_dev = upload_row_params(ctx, step, DType::I64);
  const KernelVariant& variant = select_variant(
      "sample_tokens", ctx.device.arch(),
      {{"LOGITS", int(logits.dtype == DType::F32 ? KernelDType::F32 : KernelDType::BF16)}});
  kernels::sample_tokens({ctx.device, ctx.stream, {unsigned(B), 1, 1}}, variant,
                         device_ptr(logits), device_ptr(t_dev), device_ptr(k_dev),
                         device_ptr(p_dev), device_ptr(seed_dev), device_ptr(step_dev),
                         device_ptr(ids), int32_t(V));
}

}  // namespace trident::cuda
