// The router and the routed experts on the GPU: the gate (kernels/moe_gate.py); the route of a
// step's (token, slot) pairs to the experts held here, in expert-sorted order (moe_route.py);
// the grouped expert GEMMs with SiLU-mul and the FP8 quantization fused between them
// (moe_gemm.py); and the combine back to token order with the routing weights. Every launch has a
// grid the host knows without reading the routing back, so a step never waits for the GPU.
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/cuda/cuda_driver.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/trident_kernels.h"
#include "core/error.h"

namespace trident::cuda {

namespace {

constexpr int64_t kBlock = LinearWeight::kBlock;
// kernels/moe_route.py: pairs per counting program, rows of the warp-specialized tiles.
constexpr int64_t kChunk = 512;
constexpr int64_t kMapBlockM = 128;
// kernels/moe_gemm.py: columns of the weight table.
constexpr int kTableWidth = 6;
// kernels/moe_gate.py: G_BLOCK and K_BLOCK.
constexpr int kMaxGroups = 16;
constexpr int kMaxTopK = 16;
constexpr int64_t kI32Limit = int64_t(1) << 31;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t address(const Tensor& t) { return t.defined() ? int64_t(device_ptr(t)) : 0; }

// The variant of `kernel` with the smallest `tag` block that holds n.
const KernelVariant& smallest_block(const OpContext& ctx, std::string_view kernel,
                                    const char* tag, int64_t n, const char* what,
                                    const char* source) {
  const KernelVariant* best = nullptr;
  int largest = 0;
  for (const KernelVariant& v : compiled_kernel_variants()) {
    if (v.arch != ctx.device.arch() || kernel != v.kernel) continue;
    largest = std::max(largest, v.tag(tag));
    if (v.tag(tag) >= n && (!best || v.tag(tag) < best->tag(tag))) best = &v;
  }
  TRI_CHECK(best != nullptr,
            "{}: {} {} exceed the largest compiled {} of kernel {} ({}); add a larger one to "
            "kernels/{}",
            kernel, n, what, tag, kernel, largest, source);
  return *best;
}

Tensor upload_bytes(const OpContext& ctx, const void* data, DType dtype,
                    std::initializer_list<int64_t> shape) {
  Tensor t = device_tensor(ctx.device, dtype, shape);
  check(cu().cuMemcpyHtoDAsync(device_ptr(t), data, t.nbytes(), ctx.stream),
        fmt::format("uploading a {} table to CUDA device {}", t.shape_str(), ctx.device.ordinal()));
  return t;
}

void expect_weight(const OpContext& ctx, size_t e, const char* name, const LinearWeight& w,
                   DType dtype, int64_t rows, int64_t cols) {
  const std::string what = fmt::format("expert {} {} weight", e, name);
  expect_device_tensor(ctx, w.weight, "moe_experts", what.c_str(), {dtype});
  TRI_CHECK(w.out_features() == rows && w.in_features() == cols,
            "moe_experts: expert {} {} weight is {}, the first expert's is [{}, {}]; every "
            "expert must have the same shape",
            e, name, w.weight.shape_str(), rows, cols);
  TRI_CHECK(address(w.weight) % 16 == 0, "moe_experts: expert {} {} weight is not 16-byte aligned",
            e, name);
  if (dtype != DType::F8E4M3) return;
  const std::string scales = fmt::format("expert {} {} weight scales", e, name);
  expect_device_tensor(ctx, w.scale_inv, "moe_experts", scales.c_str(), {DType::F32});
  TRI_CHECK(w.scale_inv.numel() == ceil_div(rows, kBlock) * ceil_div(cols, kBlock),
            "moe_experts: expert {} {} weight {} needs [{}, {}] scales, got {}", e, name,
            w.weight.shape_str(), ceil_div(rows, kBlock), ceil_div(cols, kBlock),
            w.scale_inv.shape_str());
  TRI_CHECK(address(w.scale_inv) % 16 == 0,
            "moe_experts: expert {} {} weight scales are not 16-byte aligned", e, name);
}

// Expert-row tiles of BLOCK_M rows, an upper bound: each expert with rows has at most one
// partial tile, and at most min(experts, pairs) experts have rows.
int64_t max_tiles(const MoeRoute& route, int64_t block_m) {
  return (route.pairs + std::min<int64_t>(route.n_local, route.pairs) * (block_m - 1)) / block_m;
}

// Rows per expert the routing should give on average: what the default tiles are chosen by.
int64_t rows_per_expert(const MoeRoute& route, const ExpertTables::Entry& e) {
  return ceil_div(route.pairs, std::max<int64_t>(1, e.global_to_local.numel()));
}

// Default tiles by rows per expert: (most rows, kernel, variant); the last is for any number.
// From the sweep on an H200 (bench/RESULTS.md): transposed tiles while the weights' bytes bound
// the time (up to ~64 rows), then 64-row tiles. The warp-specialized down kernel is faster from a
// few hundred rows (735 against 602 TFLOPS at 2048 rows) but gave wrong results at DeepSeek-V3's
// shapes with 144 rows per expert (tests/gpu/test_cuda_moe.cpp), so no default takes it.
struct TileStep {
  int64_t max_rows;
  const char* kernel;
  const char* variant;
};
constexpr TileStep kGateUpFp8[] = {{16, "moe_gate_up", "fp8_m16n128_swap_w4s4"},
                                   {32, "moe_gate_up", "fp8_m32n128_swap_w4s3"},
                                   {-1, "moe_gate_up", "fp8_m64n128_w8s3"}};
constexpr TileStep kGateUpBf16[] = {{16, "moe_gate_up", "bf16_m16n64_swap_w4s5"},
                                    {32, "moe_gate_up", "bf16_m32n64_swap_w4s4"},
                                    {64, "moe_gate_up", "bf16_m64n64_w4s4"},
                                    {-1, "moe_gate_up", "bf16_m128n64_w8s4"}};
constexpr TileStep kDownFp8[] = {{16, "moe_down", "fp8_m16n64_swap_w4s6"},
                                 {32, "moe_down", "fp8_m32n64_swap_w4s6"},
                                 {128, "moe_down", "fp8_m64n128_swap_w4s4"},
                                 {-1, "moe_down", "fp8_m64n128_w4s3"}};
constexpr TileStep kDownBf16[] = {{16, "moe_down", "bf16_m16n64_swap_w4s6"},
                                  {32, "moe_down", "bf16_m32n64_swap_w4s6"},
                                  {64, "moe_down", "bf16_m64n128_w4s4"},
                                  {-1, "moe_down", "bf16_m128n128_w8s4"}};
// Where the arch has no warp-specialized kernel (compiled for sm_90 only; only down's defaults
// take one).
constexpr TileStep kDownFp8Fallback{-1, "moe_down", "fp8_m64n128_w4s3"};

bool has_variant(int arch, std::string_view kernel, std::string_view name) {
  for (const KernelVariant& v : compiled_kernel_variants())
    if (v.arch == arch && kernel == v.kernel && name == v.name) return true;
  return false;
}

struct GemmVariant {
  const KernelVariant* variant;
  bool warp_specialized;
};

// The variant of a grouped GEMM: forced ("kernel/variant") or the default for the rows per
// expert; K off the BLOCK_K grid takes the masked-K variant.
GemmVariant grouped_variant(const OpContext& ctx, std::string_view kernel, const std::string& forced,
                            std::span<const TileStep> steps, const char* any_k, bool fp8, int64_t K,
                            int64_t rows) {
  const int arch = ctx.device.arch();
  const int64_t block_k = fp8 ? kBlock : 64;
  if (forced.empty()) {
    TileStep pick{-1, kernel.data(), any_k};
    if (K % block_k == 0) {
      for (const TileStep& s : steps) {
        if (s.max_rows < 0 || rows <= s.max_rows) {
          pick = s;
          break;
        }
      }
    }
    const bool ws = pick.kernel != kernel;
    if (ws && !has_variant(arch, pick.kernel, pick.variant)) pick = kDownFp8Fallback;
    return {&find_variant(pick.kernel, arch, pick.variant), pick.kernel != kernel};
  }
  const size_t slash = forced.find('/');
  const std::string forced_kernel = forced.substr(0, slash);
  TRI_CHECK(slash != std::string::npos &&
                (forced_kernel == kernel || forced_kernel == std::string(kernel) + "_ws"),
            "{}: forced variant '{}' is not {}/<variant> or {}_ws/<variant>", kernel, forced,
            kernel, kernel);
  const KernelVariant& v = find_variant(forced_kernel, arch, forced.substr(slash + 1));
  TRI_CHECK(v.tag("FP8") == int(fp8), "{}: variant {} is for {} experts, these are {}", kernel,
            v.label(), v.tag("FP8") ? "FP8" : "BF16", fp8 ? "FP8" : "BF16");
  const bool ws = forced_kernel != kernel;
  TRI_CHECK(ws || v.tag("EVEN_K") == 0 || K % block_k == 0,
            "{}: variant {} needs K % {} == 0, K is {}", kernel, v.label(), block_k, K);
  TRI_CHECK(!ws || v.tag("BLOCK_M") == kMapBlockM,
            "{}: warp-specialized variant {} has {}-row tiles, the tile map is made for {}",
            kernel, v.label(), v.tag("BLOCK_M"), kMapBlockM);
  return {&v, ws};
}

unsigned gemm_programs(const char* op, int64_t tiles_m, int64_t N, int64_t block_n) {
  const int64_t programs = tiles_m * ceil_div(N, block_n);
  TRI_CHECK(programs < kI32Limit, "{}: {} programs are too many for one launch", op, programs);
  return unsigned(programs);
}

}  // namespace

const ExpertTables::Entry& ExpertTables::get(const OpContext& ctx, const ExpertWeights& experts) {
  const size_t n = experts.gate.size();
  TRI_CHECK(experts.up.size() == n && experts.down.size() == n,
            "moe_experts: {} gate, {} up and {} down weights; each expert needs all three", n,
            experts.up.size(), experts.down.size());
  std::vector<int64_t> key;
  key.reserve(n * (kTableWidth + 9) + experts.global_to_local.size());
  for (size_t e = 0; e < n; ++e) {
    for (const LinearWeight* w : {&experts.gate[e], &experts.up[e], &experts.down[e]}) {
      key.push_back(address(w->weight));
      key.push_back(address(w->scale_inv));
    }
  }
  // Shapes and dtypes too: memory freed and taken again can hold other weights at the same
  // addresses.
  for (const std::vector<LinearWeight>* ws : {&experts.gate, &experts.up, &experts.down}) {
    for (const LinearWeight& w : *ws) {
      key.push_back(int64_t(w.weight.dtype));
      key.push_back(w.weight.defined() ? w.out_features() : -1);
      key.push_back(w.weight.defined() ? w.in_features() : -1);
    }
  }
  key.insert(key.end(), experts.global_to_local.begin(), experts.global_to_local.end());
  const int64_t first = n > 0 ? key[0] : -int64_t(experts.global_to_local.size());
  auto it = cache_.find(first);
  if (it != cache_.end() && it->second.key == key) return it->second.entry;

  Entry entry;
  entry.n_local = int(n);
  if (n > 0) {
    const LinearWeight& g0 = experts.gate[0];
    entry.fp8 = g0.fp8();
    entry.intermediate = g0.out_features();
    entry.hidden = g0.in_features();
    const DType dtype = g0.weight.dtype;
    TRI_CHECK(dtype == DType::F8E4M3 || dtype == DType::BF16,
              "moe_experts: expert weights are {}; the CUDA experts take FP8 or BF16 (convert "
              "them when loading)",
              dtype_name(dtype));
    TRI_CHECK(entry.hidden % 16 == 0 && entry.intermediate % 16 == 0,
              "moe_experts: hidden size {} and expert intermediate size {} must be multiples of "
              "16 on CUDA",
              entry.hidden, entry.intermediate);
    for (size_t e = 0; e < n; ++e) {
      expect_weight(ctx, e, "gate", experts.gate[e], dtype, entry.intermediate, entry.hidden);
      expect_weight(ctx, e, "up", experts.up[e], dtype, entry.intermediate, entry.hidden);
      expect_weight(ctx, e, "down", experts.down[e], dtype, entry.hidden, entry.intermediate);
    }
  }
  for (size_t g = 0; g < experts.global_to_local.size(); ++g) {
    const int32_t local = experts.global_to_local[g];
    TRI_CHECK(local >= -1 && local < int64_t(n),
              "moe_experts: global expert {} maps to local slot {}, outside [-1, {})", g, local,
              n);
  }
  TRI_CHECK(!experts.global_to_local.empty() && experts.global_to_local.size() < size_t(kI32Limit),
            "moe_experts: the global-to-local expert map has {} entries",
            experts.global_to_local.size());
  std::vector<int64_t> table(key.begin(), key.begin() + int64_t(n) * kTableWidth);
  table.resize(std::max<size_t>(table.size(), kTableWidth), 0);
  entry.weights = upload_bytes(ctx, table.data(), DType::I64,
                               {int64_t(table.size()) / kTableWidth, kTableWidth});
  entry.global_to_local = upload_bytes(ctx, experts.global_to_local.data(), DType::I32,
                                       {int64_t(experts.global_to_local.size())});
  Cached& slot = cache_[first];
  slot.key = std::move(key);
  slot.entry = std::move(entry);
  return slot.entry;
}

void moe_gate(const OpContext& ctx, const Tensor& logits, const Tensor& bias, const GateParams& p,
              Tensor& topk_ids, Tensor& topk_weights) {
  expect_device_tensor(ctx, logits, "moe_gate", "logits", {DType::F32});
  expect_device_tensor(ctx, topk_ids, "moe_gate", "topk_ids", {DType::I32});
  expect_device_tensor(ctx, topk_weights, "moe_gate", "topk_weights", {DType::F32});
  const int64_t T = logits.dim(0), E = p.n_experts, K = p.top_k;
  TRI_CHECK(logits.row_size() == E, "moe_gate: logits {} do not have {} experts",
            logits.shape_str(), E);
  TRI_CHECK(topk_ids.numel() == T * K && topk_weights.numel() == T * K,
            "moe_gate: topk_ids {} and topk_weights {} must be [{}, {}]", topk_ids.shape_str(),
            topk_weights.shape_str(), T, K);
  TRI_CHECK(K >= 1 && K <= std::min<int64_t>(E, kMaxTopK),
            "moe_gate: top_k {} must be in [1, min(experts {}, {})]", K, E, kMaxTopK);
  const bool grouped = p.method != TopkMethod::Greedy && p.n_group > 1;
  TRI_CHECK(p.n_group >= 1 && p.n_group <= kMaxGroups && E % p.n_group == 0 &&
                p.topk_group >= 1 && p.topk_group <= p.n_group,
            "moe_gate: {} experts in {} groups keeping {}: groups must divide the experts, be at "
            "most {} and keep between 1 and all of them",
            E, p.n_group, p.topk_group, kMaxGroups);
  TRI_CHECK(!grouped || p.method != TopkMethod::NoauxTc || E / p.n_group >= 2,
            "moe_gate: noaux_tc scores a group by its two best experts; groups of {} have fewer",
            E / p.n_group);
  if (bias.defined()) {
    expect_device_tensor(ctx, bias, "moe_gate", "bias", {DType::F32});
    TRI_CHECK(bias.numel() == E, "moe_gate: bias {} should have {} elements", bias.shape_str(), E);
  }
  TRI_CHECK(T < kI32Limit, "moe_gate: {} tokens are too many for one launch", T);
  if (T == 0) return;
  const KernelVariant& variant =
      smallest_block(ctx, "moe_gate", "E_BLOCK", E, "experts", "moe_gate.py");
  const bool normalize = p.norm_topk_prob && (p.method == TopkMethod::NoauxTc || K > 1);
  kernels::moe_gate({ctx.device, ctx.stream, {unsigned(T), 1, 1}}, variant, device_ptr(logits),
                    bias.defined() ? device_ptr(bias) : device_ptr(logits), device_ptr(topk_ids),
                    device_ptr(topk_weights), int32_t(E), int32_t(E / p.n_group),
                    int32_t(p.n_group), int32_t(p.topk_group), int32_t(K), int32_t(p.scoring),
                    int32_t(p.method), int32_t(normalize), int32_t(bias.defined()),
                    p.routed_scaling_factor);
}

MoeRoute moe_route(const OpContext& ctx, const Tensor& topk_ids, const ExpertTables::Entry& e) {
  expect_device_tensor(ctx, topk_ids, "moe_experts", "topk_ids", {DType::I32});
  MoeRoute route;
  route.tokens = topk_ids.dim(0);
  route.top_k = topk_ids.row_size();
  route.pairs = route.tokens * route.top_k;
  route.n_local = e.n_local;
  TRI_CHECK(route.pairs < kI32Limit / kChunk, "moe_experts: {} tokens x {} experts are too many",
            route.tokens, route.top_k);
  const int arch = ctx.device.arch();
  const KernelVariant& count =
      smallest_block(ctx, "moe_count", "E_BLOCK", e.n_local, "local experts", "moe_route.py");
  const int e_block = count.tag("E_BLOCK");
  const KernelVariant& offsets = select_variant("moe_offsets", arch, {{"E_BLOCK", e_block}});
  const KernelVariant& scatter = select_variant("moe_scatter", arch, {{"E_BLOCK", e_block}});
  const int64_t chunks = ceil_div(route.pairs, kChunk);
  route.map_tiles = max_tiles(route, kMapBlockM);
  Tensor counts = device_tensor(ctx.device, DType::I32, {chunks, e_block});
  Tensor chunk_base = device_tensor(ctx.device, DType::I32, {chunks, e_block});
  route.offsets = device_tensor(ctx.device, DType::I32, {e.n_local + 1});
  route.tile_map = device_tensor(ctx.device, DType::I32, {2, std::max<int64_t>(1, route.map_tiles)});
  route.sorted_pairs = device_tensor(ctx.device, DType::I32, {route.pairs});
  route.pair_rows = device_tensor(ctx.device, DType::I32, {route.pairs});
  const int32_t n_global = int32_t(e.global_to_local.numel());
  kernels::moe_count({ctx.device, ctx.stream, {unsigned(chunks), 1, 1}}, count,
                     device_ptr(topk_ids), device_ptr(e.global_to_local), device_ptr(counts),
                     int32_t(route.pairs), n_global);
  kernels::moe_offsets({ctx.device, ctx.stream, {1, 1, 1}}, offsets, device_ptr(counts),
                       device_ptr(chunk_base), device_ptr(route.offsets),
                       device_ptr(route.tile_map), int32_t(chunks), int32_t(e.n_local),
                       int32_t(route.map_tiles));
  kernels::moe_scatter({ctx.device, ctx.stream, {unsigned(chunks), 1, 1}}, scatter,
                       device_ptr(topk_ids), device_ptr(e.global_to_local), device_ptr(chunk_base),
                       device_ptr(route.sorted_pairs), device_ptr(route.pair_rows),
                       int32_t(route.pairs), n_global);
  return route;
}

void moe_permute(const OpContext& ctx, const MoeRoute& route, const ExpertTables::Entry& e,
                 const Tensor& x, Tensor& a, Tensor& a_scales) {
  const KernelVariant& variant =
      select_variant("moe_permute", ctx.device.arch(), {{"FP8", e.fp8 ? 1 : 0}});
  const int64_t per_program = variant.tag("GROUPS") * kBlock;
  kernels::moe_permute(
      {ctx.device, ctx.stream, {unsigned(route.pairs), unsigned(ceil_div(e.hidden, per_program)), 1}},
      variant, device_ptr(x), device_ptr(route.sorted_pairs), device_ptr(route.offsets),
      device_ptr(a), e.fp8 ? device_ptr(a_scales) : 0, int32_t(e.n_local), int32_t(e.hidden),
      int32_t(route.top_k));
}

std::string moe_gate_up(const OpContext& ctx, const MoeRoute& route, const ExpertTables::Entry& e,
                        const Tensor& a, const Tensor& a_scales, Tensor& h, Tensor& h_scales,
                        const std::string& forced) {
  const int64_t N = e.intermediate, K = e.hidden;
  const GemmVariant g = grouped_variant(
      ctx, "moe_gate_up", forced, e.fp8 ? std::span<const TileStep>(kGateUpFp8) : std::span<const TileStep>(kGateUpBf16),
      e.fp8 ? "fp8_m64n128_w8s3_anyk" : "bf16_m64n128_w8s3_anyk", e.fp8, K,
      rows_per_expert(route, e));
  const KernelVariant& v = *g.variant;
  const int64_t tiles_m = g.warp_specialized ? route.map_tiles : max_tiles(route, v.tag("BLOCK_M"));
  const Launch launch{
      ctx.device, ctx.stream, {gemm_programs("moe_gate_up", tiles_m, N, v.tag("BLOCK_N")), 1, 1}};
  const CUdeviceptr a_s = e.fp8 ? device_ptr(a_scales) : 0, h_s = e.fp8 ? device_ptr(h_scales) : 0;
  if (g.warp_specialized) {
    kernels::moe_gate_up_ws(launch, v, device_ptr(a), a_s, device_ptr(route.offsets),
                            device_ptr(route.tile_map), device_ptr(e.weights), device_ptr(h), h_s,
                            e.n_local, int32_t(route.pairs), int32_t(tiles_m), int32_t(N),
                            int32_t(K));
  } else {
    kernels::moe_gate_up(launch, v, device_ptr(a), a_s, device_ptr(route.offsets),
                         device_ptr(e.weights), device_ptr(h), h_s, e.n_local,
                         int32_t(route.pairs), int32_t(tiles_m), int32_t(N), int32_t(K));
  }
  return std::string(v.kernel) + "/" + v.name;
}

std::string moe_down(const OpContext& ctx, const MoeRoute& route, const ExpertTables::Entry& e,
                     const Tensor& h, const Tensor& h_scales, Tensor& y,
                     const std::string& forced) {
  const int64_t N = e.hidden, K = e.intermediate;
  const GemmVariant g = grouped_variant(
      ctx, "moe_down", forced, e.fp8 ? std::span<const TileStep>(kDownFp8) : std::span<const TileStep>(kDownBf16),
      e.fp8 ? "fp8_m64n64_w4s3_anyk" : "bf16_m64n64_w4s3_anyk", e.fp8, K,
      rows_per_expert(route, e));
  const KernelVariant& v = *g.variant;
  const int64_t tiles_m = g.warp_specialized ? route.map_tiles : max_tiles(route, v.tag("BLOCK_M"));
  const Launch launch{
      ctx.device, ctx.stream, {gemm_programs("moe_down", tiles_m, N, v.tag("BLOCK_N")), 1, 1}};
  const CUdeviceptr h_s = e.fp8 ? device_ptr(h_scales) : 0;
  if (g.warp_specialized) {
    kernels::moe_down_ws(launch, v, device_ptr(h), h_s, device_ptr(route.offsets),
                         device_ptr(route.tile_map), device_ptr(e.weights), device_ptr(y),
                         e.n_local, int32_t(route.pairs), int32_t(tiles_m), int32_t(N),
                         int32_t(K));
  } else {
    kernels::moe_down(launch, v, device_ptr(h), h_s, device_ptr(route.offsets),
                      device_ptr(e.weights), device_ptr(y), e.n_local, int32_t(route.pairs),
                      int32_t(tiles_m), int32_t(N), int32_t(K));
  }
  return std::string(v.kernel) + "/" + v.name;
}

void moe_combine(const OpContext& ctx, const MoeRoute& route, const Tensor& y,
                 const Tensor& topk_weights, Tensor& out) {
  const KernelVariant& variant = select_variant("moe_combine", ctx.device.arch(), {});
  const int64_t H = out.row_size();
  kernels::moe_combine(
      {ctx.device, ctx.stream,
       {unsigned(route.tokens), unsigned(ceil_div(H, variant.tag("BLOCK"))), 1}},
      variant, device_ptr(y), device_ptr(route.pair_rows), device_ptr(topk_weights),
      device_ptr(out), int32_t(H), int32_t(route.top_k));
}

MoeChoice moe_experts(const OpContext& ctx, ExpertTables& tables, const Tensor& x,
                      const Tensor& topk_ids, const Tensor& topk_weights,
                      const ExpertWeights& experts, Tensor& out, const MoeChoice* forced) {
  expect_device_tensor(ctx, x, "moe_experts", "x", {DType::BF16});
  expect_device_tensor(ctx, topk_ids, "moe_experts", "topk_ids", {DType::I32});
  expect_device_tensor(ctx, topk_weights, "moe_experts", "topk_weights", {DType::F32});
  expect_device_tensor(ctx, out, "moe_experts", "out", {DType::BF16});
  const int64_t T = x.dim(0), H = x.row_size();
  TRI_CHECK(topk_ids.dim(0) == T && topk_weights.numel() == topk_ids.numel(),
            "moe_experts: topk_ids {} and topk_weights {} do not match {} tokens",
            topk_ids.shape_str(), topk_weights.shape_str(), T);
  TRI_CHECK(out.dim(0) == T && out.row_size() == H, "moe_experts: out {} does not match x {}",
            out.shape_str(), x.shape_str());
  const ExpertTables::Entry& e = tables.get(ctx, experts);
  if (T == 0) return {};
  if (e.n_local == 0) {
    check(cu().cuMemsetD8Async(device_ptr(out), 0, out.nbytes(), ctx.stream),
          "zeroing the output of a rank that holds no experts");
    return {};
  }
  TRI_CHECK(H == e.hidden, "moe_experts: x rows have {} features, the experts take {}", H,
            e.hidden);
  const MoeRoute route = moe_route(ctx, topk_ids, e);
  const int64_t I = e.intermediate, P = route.pairs;
  const DType act = e.fp8 ? DType::F8E4M3 : DType::BF16;
  Tensor a = device_tensor(ctx.device, act, {P, H});
  Tensor a_scales = e.fp8 ? device_tensor(ctx.device, DType::F32, {P, ceil_div(H, kBlock)}) : Tensor();
  moe_permute(ctx, route, e, x, a, a_scales);
  Tensor h = device_tensor(ctx.device, act, {P, I});
  Tensor h_scales = e.fp8 ? device_tensor(ctx.device, DType::F32, {P, ceil_div(I, kBlock)}) : Tensor();
  MoeChoice used;
  used.gate_up = moe_gate_up(ctx, route, e, a, a_scales, h, h_scales, forced ? forced->gate_up : "");
  Tensor y = device_tensor(ctx.device, DType::BF16, {P, H});
  used.down = moe_down(ctx, route, e, h, h_scales, y, forced ? forced->down : "");
  moe_combine(ctx, route, y, topk_weights, out);
  return used;
}

}  // namespace trident::cuda
