// Reference linear layers: y = x W^T with W in BF16/F16/F32, or FP8 e4m3 with 128x128 block scales
// and activations quantized per token per 128 channels (DeepSeek's fp8_gemm: each 128-wide partial
// sum is scaled by act_scale * weight_scale before it is added).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace trident::cpu {

namespace {
constexpr int64_t kBlock = LinearWeight::kBlock;

int64_t n_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }
}  // namespace

void quantize_row_fp8(const float* x, int64_t n, float* q, float* scales) {
  for (int64_t b = 0; b < n_blocks(n); ++b) {
    const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    float amax = 0;
    for (int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(x[i]));
    float s = std::max(amax, 1e-10f) / kFp8E4M3Max;
    scales[b] = s;
    for (int64_t i = lo; i < hi; ++i) q[i] = fp8e4m3_to_f32(f32_to_fp8e4m3(x[i] / s));
  }
}

static void check_linear(const Tensor& x, const LinearWeight& w, const Tensor& out) {
  TRI_CHECK(x.row_size() == w.in_features(), "linear: input rows have {} features, weight {} wants {}",
            x.row_size(), w.weight.shape_str(), w.in_features());
  TRI_CHECK(out.dim(0) == x.dim(0) && out.row_size() == w.out_features(),
            "linear: output {} does not fit {} rows x {} features", out.shape_str(), x.dim(0),
            w.out_features());
  if (w.fp8()) {
    TRI_CHECK(w.scale_inv.defined() && w.scale_inv.dim(0) == n_blocks(w.out_features()) &&
                  w.scale_inv.dim(1) == n_blocks(w.in_features()),
              "linear: FP8 weight {} needs scales [{}, {}], got {}", w.weight.shape_str(),
              n_blocks(w.out_features()), n_blocks(w.in_features()),
              w.scale_inv.defined() ? w.scale_inv.shape_str() : "none");
  }
}

void linear(const Tensor& x, const LinearWeight& w, Tensor& out) {
  check_linear(x, w, out);
  const int64_t T = x.dim(0), K = w.in_features(), N = w.out_features();
  const int64_t KB = n_blocks(K);
  // Inputs once in f32 (and quantized for FP8 weights).
  std::vector<float> xs(T * K), xscale(w.fp8() ? T * KB : 0);
  for (int64_t t = 0; t < T; ++t) {
    read_row(x, t, &xs[t * K]);
    if (w.fp8()) quantize_row_fp8(&xs[t * K], K, &xs[t * K], &xscale[t * KB]);
  }
  std::vector<float> ys(T * N);
  // Each weight row is decoded once and used for every token.
#pragma omp parallel
  {
    std::vector<float> wrow(K);
#pragma omp for schedule(static)
    for (int64_t o = 0; o < N; ++o) {
      read_row(w.weight, o, wrow.data());
      if (!w.fp8()) {
        for (int64_t t = 0; t < T; ++t) {
          const float* xr = &xs[t * K];
          float acc = 0;
          for (int64_t i = 0; i < K; ++i) acc += xr[i] * wrow[i];
          ys[t * N + o] = acc;
        }
        continue;
      }
      const float* wscale = w.scale_inv.ptr<float>() + (o / kBlock) * KB;
      for (int64_t t = 0; t < T; ++t) {
        const float* xr = &xs[t * K];
        float acc = 0;
        for (int64_t b = 0; b < KB; ++b) {
          float part = 0;
          for (int64_t i = b * kBlock; i < std::min(K, (b + 1) * kBlock); ++i) part += xr[i] * wrow[i];
          acc += part * (xscale[t * KB + b] * wscale[b]);
        }
        ys[t * N + o] = acc;
      }
    }
  }
  for (int64_t t = 0; t < T; ++t) write_row(out, t, &ys[t * N]);
}

}  // namespace trident::cpu
