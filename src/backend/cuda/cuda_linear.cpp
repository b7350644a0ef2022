// Linear layers: per-token-group FP8 quantization (kernels/act_quant.py), the FP8 block-scaled
// and BF16 GEMMs (kernels/fp8_gemm.py, bf16_gemm.py), their tile choice and split-K.
#include <algorithm>
#include <cstdint>
#include <string>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/trident_kernels.h"
#include "core/error.h"

namespace trident::cuda {

namespace {

constexpr int64_t kGroup = LinearWeight::kBlock;
// Any-shape fallback tile, used when K, N or an address breaks the fast variants' assumptions.
constexpr const char* kAnyShapeTile = "m64n64_w4s3";
constexpr const char* kDefaultTile = "m128n128_w8s4";
// Split-K keeps at least this many K blocks per program, so each keeps its pipeline busy.
constexpr int64_t kMinKBlocksPerSplit = 4;
constexpr int64_t kMaxSplits = 16;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data) % 16 == 0; }
const char* out_suffix(DType d) { return d == DType::F32 ? "fp32" : "bf16"; }

// How many K slices make one wave of programs fill the GPU when there are too few output tiles.
int64_t choose_split(int64_t tiles, int64_t k_blocks, int sm_count) {
  if (tiles >= sm_count) return 1;
  const int64_t by_tiles = ceil_div(sm_count, tiles);
  const int64_t by_depth = std::max<int64_t>(1, k_blocks / kMinKBlocksPerSplit);
  return std::clamp<int64_t>(std::min(by_tiles, by_depth), 1, kMaxSplits);
}

struct GemmOperands {
  const char* kernel;
  int64_t M, N, K;
  int64_t block_k;
  bool aligned;  // K % block_k == 0, N and K multiples of 16, 16-byte aligned operands
};

struct GemmPlan {
  GemmChoice choice;
  const KernelVariant* direct = nullptr;   // writes `out` itself (split 1)
  const KernelVariant* partial = nullptr;  // writes f32 partial sums (split > 1)
  const KernelVariant* reduce = nullptr;
  unsigned tiles = 0;
  int32_t k_blocks_per_split = 0;
  int64_t slice_stride = 0;
};

GemmPlan plan_gemm(const OpContext& ctx, const GemmOperands& g, DType out_dtype,
                   const GemmChoice* forced) {
  const int arch = ctx.device.arch();
  GemmPlan plan;
  std::string tile;
  if (!g.aligned) {
    TRI_CHECK(!forced || forced->tile.empty() || forced->tile == kAnyShapeTile,
              "{}: tile {} needs K % {} == 0, N and K multiples of 16 and aligned operands; "
              "M={} N={} K={} does not fit",
              g.kernel, forced ? forced->tile : "", g.block_k, g.M, g.N, g.K);
    tile = kAnyShapeTile;
  } else if (forced && !forced->tile.empty()) {
    tile = forced->tile;
  } else {
    const char* tuned = tuned_variant(g.kernel, arch, g.M);
    tile = tuned ? tuned : kDefaultTile;
  }
  const std::string any_k = g.aligned ? "" : "_anyk";
  const KernelVariant& direct =
      find_variant(g.kernel, arch, tile + "_" + out_suffix(out_dtype) + any_k);
  const int64_t block_m = direct.tag("BLOCK_M"), block_n = direct.tag("BLOCK_N");
  const int64_t tiles = ceil_div(g.M, block_m) * ceil_div(g.N, block_n);
  const int64_t k_blocks = ceil_div(g.K, g.block_k);
  int64_t split = forced && forced->split_k > 0
                      ? forced->split_k
                      : choose_split(tiles, k_blocks, ctx.device.sm_count());
  split = std::clamp<int64_t>(split, 1, std::max<int64_t>(1, k_blocks));
  const int64_t per_split = ceil_div(k_blocks, split);
  split = ceil_div(k_blocks, per_split);
  TRI_CHECK(tiles < (int64_t(1) << 31), "{}: {} x {} output needs too many tiles", g.kernel, g.M,
            g.N);

  plan.choice = {tile, int(split)};
  plan.tiles = unsigned(tiles);
  plan.k_blocks_per_split = int32_t(per_split);
  if (split == 1) {
    plan.direct = &direct;
  } else {
    plan.partial = &find_variant(g.kernel, arch, tile + "_fp32" + any_k);
    plan.reduce = &select_variant(
        "split_k_reduce", arch,
        {{"OUT", int(out_dtype == DType::F32 ? KernelDType::F32 : KernelDType::BF16)}});
    plan.slice_stride = ceil_div(g.M * g.N, 16) * 16;
  }
  return plan;
}

void check_gemm_shapes(const char* op, const Tensor& a, const Tensor& b, const Tensor& out) {
  TRI_CHECK(a.row_size() == b.row_size(), "{}: input rows have {} features, weight {} has {}", op,
            a.row_size(), b.shape_str(), b.row_size());
  TRI_CHECK(out.dim(0) == a.dim(0) && out.row_size() == b.dim(0),
            "{}: out {} does not fit {} rows x {} features", op, out.shape_str(), a.dim(0),
            b.dim(0));
  TRI_CHECK(a.dim(0) < (int64_t(1) << 31) && b.dim(0) < (int64_t(1) << 31) &&
                a.row_size() < (int64_t(1) << 31),
            "{}: M={} N={} K={} exceed 32-bit sizes", op, a.dim(0), b.dim(0), a.row_size());
}

// Runs `launch_gemm(variant, c, grid)` directly or into a split-K workspace plus a reduction.
template <class LaunchGemm>
void run_gemm(const OpContext& ctx, const GemmPlan& plan, Tensor& out, LaunchGemm launch_gemm) {
  if (plan.direct) {
    launch_gemm(*plan.direct, device_ptr(out), Launch{ctx.device, ctx.stream, {plan.tiles, 1, 1}});
    return;
  }
  const unsigned splits = unsigned(plan.choice.split_k);
  Tensor partial = device_tensor(ctx.device, DType::F32, {splits * plan.slice_stride});
  launch_gemm(*plan.partial, device_ptr(partial),
              Launch{ctx.device, ctx.stream, {plan.tiles, splits, 1}});
  const int64_t numel = out.numel();
  const int64_t block = plan.reduce->tag("BLOCK");
  kernels::split_k_reduce({ctx.device, ctx.stream, {unsigned(ceil_div(numel, block)), 1, 1}},
                          *plan.reduce, device_ptr(partial), device_ptr(out), numel,
                          plan.slice_stride, int32_t(splits));
}

// An empty sum: out = 0.
void zero(const OpContext& ctx, Tensor& out) {
  check(cu().cuMemsetD8Async(device_ptr(out), 0, out.nbytes(), ctx.stream),
        "zeroing a GEMM output");
}

}  // namespace

void quantize_fp8(const OpContext& ctx, const Tensor& x, Tensor& q, Tensor& scales) {
  expect_device_tensor(ctx, x, "quantize_fp8", "x", {DType::BF16});
  expect_device_tensor(ctx, q, "quantize_fp8", "q", {DType::F8E4M3});
  expect_device_tensor(ctx, scales, "quantize_fp8", "scales", {DType::F32});
  const int64_t M = x.dim(0), K = x.row_size(), groups = ceil_div(K, kGroup);
  TRI_CHECK(q.dim(0) == M && q.row_size() == K, "quantize_fp8: q {} does not match x {}",
            q.shape_str(), x.shape_str());
  TRI_CHECK(scales.dim(0) == M && scales.row_size() == groups,
            "quantize_fp8: scales {} should be [{}, {}] for x {}", scales.shape_str(), M, groups,
            x.shape_str());
  TRI_CHECK(M < (int64_t(1) << 31) && K < (int64_t(1) << 31), "quantize_fp8: x {} is too large",
            x.shape_str());
  if (M == 0 || K == 0) return;
  const bool aligned = K % 16 == 0 && aligned16(x) && aligned16(q);
  const KernelVariant& variant =
      select_variant("act_quant", ctx.device.arch(), {{"ALIGNED", aligned ? 1 : 0}});
  const unsigned programs_per_row = unsigned(ceil_div(groups, variant.tag("GROUPS")));
  kernels::act_quant({ctx.device, ctx.stream, {unsigned(M), programs_per_row, 1}}, variant,
                     device_ptr(x), device_ptr(q), device_ptr(scales), int32_t(M), int32_t(K));
}

GemmChoice fp8_gemm(const OpContext& ctx, const Tensor& q, const Tensor& q_scales, const Tensor& w,
                    const Tensor& w_scales, Tensor& out, const GemmChoice* forced) {
  expect_device_tensor(ctx, q, "fp8_gemm", "activations", {DType::F8E4M3});
  expect_device_tensor(ctx, q_scales, "fp8_gemm", "activation scales", {DType::F32});
  expect_device_tensor(ctx, w, "fp8_gemm", "weight", {DType::F8E4M3});
  expect_device_tensor(ctx, w_scales, "fp8_gemm", "weight scales", {DType::F32});
  expect_device_tensor(ctx, out, "fp8_gemm", "out", {DType::BF16, DType::F32});
  check_gemm_shapes("fp8_gemm", q, w, out);
  const int64_t M = q.dim(0), N = w.dim(0), K = q.row_size();
  TRI_CHECK(q_scales.dim(0) == M && q_scales.row_size() == ceil_div(K, kGroup),
            "fp8_gemm: activation scales {} should be [{}, {}]", q_scales.shape_str(), M,
            ceil_div(K, kGroup));
  TRI_CHECK(w_scales.numel() == ceil_div(N, kGroup) * ceil_div(K, kGroup),
            "fp8_gemm: weight {} needs scales [{}, {}], got {}", w.shape_str(), ceil_div(N, kGroup),
            ceil_div(K, kGroup), w_scales.shape_str());
  if (M == 0 || N == 0) return {};
  if (K == 0) {
    zero(ctx, out);
    return {};
  }
  const bool aligned =
      K % kGroup == 0 && N % 16 == 0 && aligned16(q) && aligned16(w) && aligned16(out);
  const GemmPlan plan = plan_gemm(ctx, {"fp8_gemm", M, N, K, kGroup, aligned}, out.dtype, forced);
  run_gemm(ctx, plan, out, [&](const KernelVariant& v, CUdeviceptr c, const Launch& launch) {
    kernels::fp8_gemm(launch, v, device_ptr(q), device_ptr(q_scales), device_ptr(w),
                      device_ptr(w_scales), c, int32_t(M), int32_t(N), int32_t(K),
                      plan.k_blocks_per_split);
  });
  return plan.choice;
}

GemmChoice bf16_gemm(const OpContext& ctx, const Tensor& x, const Tensor& w, Tensor& out,
                     const GemmChoice* forced) {
  expect_device_tensor(ctx, x, "bf16_gemm", "x", {DType::BF16});
  expect_device_tensor(ctx, w, "bf16_gemm", "weight", {DType::BF16});
  expect_device_tensor(ctx, out, "bf16_gemm", "out", {DType::BF16, DType::F32});
  check_gemm_shapes("bf16_gemm", x, w, out);
  const int64_t M = x.dim(0), N = w.dim(0), K = x.row_size();
  if (M == 0 || N == 0) return {};
  if (K == 0) {
    zero(ctx, out);
    return {};
  }
  constexpr int64_t kBlockK = 64;
  const bool aligned =
      K % kBlockK == 0 && N % 16 == 0 && aligned16(x) && aligned16(w) && aligned16(out);
  const GemmPlan plan = plan_gemm(ctx, {"bf16_gemm", M, N, K, kBlockK, aligned}, out.dtype, forced);
  run_gemm(ctx, plan, out, [&](const KernelVariant& v, CUdeviceptr c, const Launch& launch) {
    kernels::bf16_gemm(launch, v, device_ptr(x), device_ptr(w), c, int32_t(M), int32_t(N),
                       int32_t(K), plan.k_blocks_per_split);
  });
  return plan.choice;
}

}  // namespace trident::cuda
